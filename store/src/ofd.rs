//! Open-file-description byte-range locks (`fcntl` `F_OFD_SETLK` / `F_OFD_GETLK`) on an arena
//! memfd: how a reader tells the node's arena server that it still reads a range in place.
//!
//! OFD locks belong to the open file description, not to the process (as classic POSIX locks
//! do) nor to the fd: every fd that shares a description (a `dup`, or one received over
//! `SCM_RIGHTS`) shares its locks, and a description's own locks never conflict with each
//! other. So a reader locks on a description of its own ([`AttachedArena::attach`] reopens the
//! memfd), and the server asks on its own. The kernel drops a description's locks when its last
//! fd closes, which happens at the latest when its process dies: nothing leaks.
//!
//! [`AttachedArena::attach`]: crate::AttachedArena::attach

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What [`set`] does to a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockOp {
    /// Take a shared (read) lock.
    Read,
    /// Drop whatever lock this description holds on the range.
    Unlock,
}

/// A `flock` describing `[offset, offset + len)` with lock type `kind`. `len` must not be 0
/// (to the kernel, 0 means "to the end of the file, however it grows").
fn flock(kind: libc::c_int, offset: u64, len: u64) -> io::Result<libc::flock> {
    let out_of_range = || io::Error::new(io::ErrorKind::InvalidInput, "lock range out of range");
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty lock range means the whole file",
        ));
    }
    // SAFETY: flock is a plain C struct for which all-zero is a valid value (and OFD commands
    // require l_pid to be 0).
    let mut fl: libc::flock = unsafe { zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = libc::off_t::try_from(offset).map_err(|_| out_of_range())?;
    fl.l_len = libc::off_t::try_from(len).map_err(|_| out_of_range())?;
    Ok(fl)
}

/// Takes or drops this description's lock on `[offset, offset + len)`, without waiting.
pub(crate) fn set(fd: BorrowedFd<'_>, op: LockOp, offset: u64, len: u64) -> io::Result<()> {
    let kind = match op {
        LockOp::Read => libc::F_RDLCK,
        LockOp::Unlock => libc::F_UNLCK,
    };
    let fl = flock(kind, offset, len)?;
    // SAFETY: F_OFD_SETLK reads one `struct flock` through the pointer, which points to a live
    // local for the duration of the call; `fd` is open (borrowed).
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl as *const libc::flock) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether any *other* open file description holds a lock on part of `[offset, offset + len)`
/// (a write-lock probe: any read lock there conflicts with it).
pub(crate) fn locked_by_others(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, offset, len)?;
    // SAFETY: F_OFD_GETLK reads and writes one `struct flock` through the pointer, which points
    // to a live, exclusively borrowed local for the duration of the call; `fd` is open.
    let rc = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_OFD_GETLK,
            &mut fl as *mut libc::flock,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_second_description_sees_the_first_ones_read_lock() {
        let file = tempfile::tempfile().expect("tempfile");
        file.set_len(1 << 20).expect("size");
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let other = std::fs::File::open(&path).expect("reopen");
        set(other.as_fd(), LockOp::Read, 4096, 4096).expect("lock");
        assert!(locked_by_others(file.as_fd(), 0, 8192).expect("probe"));
        assert!(!locked_by_others(file.as_fd(), 8192, 4096).expect("probe"));
        assert!(
            !locked_by_others(other.as_fd(), 0, 8192).expect("probe"),
            "a description's own locks do not conflict"
        );
        set(other.as_fd(), LockOp::Unlock, 4096, 4096).expect("unlock");
        assert!(!locked_by_others(file.as_fd(), 0, 8192).expect("probe"));
        drop(other);
        assert!(
            set(file.as_fd(), LockOp::Read, 0, 0).is_err(),
            "empty range"
        );
    }
}
