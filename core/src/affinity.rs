//! Pinning the calling thread to CPUs (`sched_setaffinity(2)`), for slot threads and for work
//! in a placement group's bundle (its CPU set, [`BundleCell`]), and reading the calling thread's
//! CPUs (`sched_getaffinity(2)`).
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

/// The CPUs the calling thread may run on (`sched_getaffinity(2)` of the thread), sorted.
pub(crate) fn current_thread_cpus() -> std::io::Result<Vec<usize>> {
    let bits = libc::c_ulong::BITS as usize;
    // Grown until the kernel's mask fits (EINVAL: too small), up to `CpuList::MAX` CPUs.
    let mut words = 1024 / bits;
    loop {
        let mut mask = vec![0 as libc::c_ulong; words];
        let len = mask.len() * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: sched_getaffinity(pid, len, mask) writes at most `len` bytes through `mask`,
        // which points to the live vector `mask` of exactly that many bytes; pid 0 names the
        // calling thread. On success it returns how many bytes it wrote (at most `len`).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0 as libc::pid_t,
                len,
                mask.as_mut_ptr(),
            )
        };
        if rc >= 0 {
            let mut out = Vec::new();
            for (w, word) in mask.iter().enumerate() {
                for b in 0..bits {
                    if word & (1 << b) != 0 {
                        out.push(w * bits + b);
                    }
                }
            }
            return Ok(out);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || words * bits > crate::CpuList::MAX {
            return Err(e);
        }
        words *= 2;
    }
}

/// Where work in a placement group's bundle runs on this node: the bundle's CPU set (empty: not
/// pinned) and its GPUs (ordinals; empty: none given).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BundlePlace {
    pub(crate) cpus: Vec<usize>,
    pub(crate) gpus: Vec<usize>,
}

impl BundlePlace {
    /// The GPUs as a mask (bit `d`: device `d`; devices past 63 are left out).
    pub(crate) fn gpu_mask(&self) -> u64 {
        self.gpus
            .iter()
            .filter(|&&d| d < 64)
            .fold(0, |m, &d| m | (1 << d))
    }
}

/// The place of a placement group's bundle on this node, shared by every demand that names the
/// bundle (`resources.rs`): set when the bundle is committed here.
#[derive(Debug, Default)]
pub(crate) struct BundleCell(crate::sync::Mutex<Option<crate::sync::Arc<BundlePlace>>>);

impl BundleCell {
    /// Sets the bundle's CPUs and GPUs (both empty: nothing to apply).
    pub(crate) fn set(&self, cpus: &[usize], gpus: &[usize]) {
        *crate::sync::lock(&self.0) = (!cpus.is_empty() || !gpus.is_empty()).then(|| {
            crate::sync::Arc::new(BundlePlace {
                cpus: cpus.to_vec(),
                gpus: gpus.to_vec(),
            })
        });
    }

    /// The place, if it has CPUs or GPUs.
    pub(crate) fn get(&self) -> Option<crate::sync::Arc<BundlePlace>> {
        crate::sync::lock(&self.0).clone()
    }
}

/// Runs `f` with the calling thread pinned to `cpus` (when not empty), then puts the thread's
/// previous CPUs back; nests. A pin the kernel refuses is logged once and `f` runs where the
/// thread runs.
pub(crate) fn pinned<R>(cpus: &[usize], f: impl FnOnce() -> R) -> R {
    if cpus.is_empty() {
        return f();
    }
    static WARNED: crate::sync::AtomicBool = crate::sync::AtomicBool::new(false);
    let warn = |what: &str, e: &std::io::Error| {
        if !WARNED.swap(true, crate::sync::Ordering::Relaxed) {
            tracing::warn!(?cpus, error = %e, "{what} (logged once)");
        }
    };
    let before = match current_thread_cpus() {
        Ok(before) => before,
        Err(e) => {
            warn(
                "could not read a thread's CPUs: a bundle's work runs unpinned",
                &e,
            );
            return f();
        }
    };
    if before.as_slice() == cpus {
        return f();
    }
    if let Err(e) = pin_current_thread(cpus) {
        warn(
            "could not pin a thread to its bundle's CPUs: it runs unpinned",
            &e,
        );
        return f();
    }
    // Put back even if `f` unwinds (a panicking task is caught further up the same thread).
    struct Restore(Vec<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Err(e) = pin_current_thread(&self.0) {
                tracing::warn!(cpus = ?self.0, error = %e, "could not restore a thread's CPUs");
            }
        }
    }
    let _restore = Restore(before);
    f()
}

/// Runs `f` in the place `cell` gives (pinned to its CPUs), passing its GPUs' mask (0: none).
pub(crate) fn in_bundle<R>(cell: Option<&BundleCell>, f: impl FnOnce(u64) -> R) -> R {
    match cell.and_then(BundleCell::get) {
        Some(place) => pinned(&place.cpus, || f(place.gpu_mask())),
        None => f(0),
    }
}

/// The CPU slot `slot` pins itself to: the list's entries in turn (`None`: no pinning).
pub(crate) fn cpu_for_slot(list: &[usize], slot: usize) -> Option<usize> {
    (!list.is_empty()).then(|| list[slot % list.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuList;

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
    fn a_bundles_cell_pins_for_the_call_and_puts_back() {
        let before = current_thread_cpus().unwrap();
        assert_eq!(
            CpuList(before.clone()).to_string(),
            my_cpus(),
            "sched_getaffinity agrees with the kernel's status"
        );
        let cell = BundleCell::default();
        // Nothing set: nothing changes.
        assert_eq!(
            in_bundle(Some(&cell), |g| (g, current_thread_cpus().unwrap())),
            (0, before.clone())
        );
        assert_eq!(in_bundle(None, |_| current_thread_cpus().unwrap()), before);
        let last = *before.last().unwrap();
        cell.set(&[last], &[1, 3]);
        let (inside, before) = std::thread::spawn(move || {
            let inside = in_bundle(Some(&cell), |gpus| {
                let here = current_thread_cpus().unwrap();
                let nested = pinned(&[before[0]], || current_thread_cpus().unwrap());
                assert_eq!(current_thread_cpus().unwrap(), here, "nested put back");
                (gpus, here, nested)
            });
            assert_eq!(current_thread_cpus().unwrap(), before, "put back");
            (inside, before)
        })
        .join()
        .unwrap();
        assert_eq!(inside, (0b1010, vec![last], vec![before[0]]));
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
