//! Pinning the calling thread to CPUs (`sched_setaffinity(2)`), for slot threads.
//!
//! This is one of the two modules of `manta-core` with hand-written `unsafe` (a single system
//! call; the other is `cluster/session.rs`'s `geteuid`), so the rest of the crate stays
//! `#![deny(unsafe_code)]`. The mask is built as a
//! vector of `c_ulong` words sized to the largest CPU asked for, so CPUs past glibc's fixed
//! 1,024-bit `cpu_set_t` work too; the raw system call (not glibc's wrapper) takes any length
//! that is a multiple of the word size.

/// Pins the calling thread (not the process) to the CPUs in `cpus`. An empty list changes
/// nothing. The error is the kernel's (`EINVAL` when none of the CPUs is online or in this
/// process's cpuset), or `InvalidInput` for a CPU above [`CpuList::MAX`], refused before a mask
/// that large is built (a `CpuList` can be made by hand, unchecked).
///
/// [`CpuList::MAX`]: crate::CpuList::MAX
pub(crate) fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    let Some(&max) = cpus.iter().max() else {
        return Ok(());
    };
    if max > crate::CpuList::MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CPU {max} is above {}", crate::CpuList::MAX),
        ));
    }
    let bits = libc::c_ulong::BITS as usize;
    let mut mask = vec![0 as libc::c_ulong; max / bits + 1];
    for &cpu in cpus {
        mask[cpu / bits] |= 1 << (cpu % bits);
    }
    let len = mask.len() * std::mem::size_of::<libc::c_ulong>();
    // SAFETY: sched_setaffinity(pid, len, mask) only reads `len` bytes through `mask`, which
    // points to the live vector `mask` of exactly that many bytes; pid 0 names the calling
    // thread. It changes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0 as libc::pid_t,
            len,
            mask.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU slot `slot` pins itself to: the list's entries in turn (`None`: no pinning).
pub(crate) fn cpu_for_slot(list: &[usize], slot: usize) -> Option<usize> {
    (!list.is_empty()).then(|| list[slot % list.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's CPUs, as the kernel reports them.
    fn my_cpus() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn slots_take_the_list_round_robin() {
        assert_eq!(cpu_for_slot(&[], 3), None);
        let list = [2, 5, 7];
        let got: Vec<_> = (0..5).map(|s| cpu_for_slot(&list, s)).collect();
        assert_eq!(got, [Some(2), Some(5), Some(7), Some(2), Some(5)]);
    }

    #[test]
    fn a_thread_pins_itself_and_only_itself() {
        let before = my_cpus();
        let first = crate::CpuList::parse(&before).unwrap().0[0];
        let pinned = std::thread::spawn(move || {
            pin_current_thread(&[first]).unwrap();
            my_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, first.to_string());
        assert_eq!(my_cpus(), before, "the spawning thread is untouched");
        // A CPU no machine has: the kernel refuses, nothing panics; one past the list's bound
        // is refused before any mask is built.
        for cpu in [crate::CpuList::MAX, usize::MAX] {
            let refused = std::thread::spawn(move || pin_current_thread(&[cpu]))
                .join()
                .unwrap();
            assert!(refused.is_err(), "{cpu}");
        }
    }
}
