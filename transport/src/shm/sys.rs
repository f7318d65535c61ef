//! Leaf module of raw system calls for the shm backend: sealed memfds, eventfds, and passing
//! fds over a Unix socket with `SCM_RIGHTS`.
//!
//! std's ancillary-data API is unstable, so `sendmsg`/`recvmsg` are called through libc here
//! (the same small idea as `store`'s `fdpass`, written independently: `transport` depends on
//! no other Manta crate). Every function works on non-blocking sockets and reports
//! `WouldBlock` for the caller's readiness loop.

use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Most fds one message may carry.
pub(crate) const MAX_FDS: usize = 8;

/// Control-message buffer for up to [`MAX_FDS`] fds, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * size_of::<RawFd>()) as u32) as usize }
}

/// Creates a memfd of `len` bytes sealed against shrinking and growing, so a peer that maps it
/// can never be made to fault (SIGBUS) by a later truncation.
pub(crate) fn sealed_memfd(len: u64) -> io::Result<File> {
    let name = c"manta-transport-ring";
    // SAFETY: name is a valid NUL-terminated string; the flags are valid memfd flags.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh fd that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own with a valid command and integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Whether `file` is sealed against shrinking and growing (a receiver's check before mapping).
pub(crate) fn is_size_sealed(file: &File) -> io::Result<bool> {
    // SAFETY: fcntl F_GET_SEALS on a valid fd takes no argument.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    Ok(seals & need == need)
}

/// What `fd` is, as `/proc/self/fd` names it (`anon_inode:[eventfd]`, `pipe:[…]`,
/// `/memfd:… (deleted)`).
fn fd_kind(fd: RawFd) -> io::Result<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok(link.to_string_lossy().into_owned())
}

/// Sets `O_NONBLOCK` on `fd`'s open file description.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL on an fd the caller owns takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl F_SETFL with an integer flag word on an fd the caller owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that a segment fd received from a peer is a memfd of exactly `len` bytes sealed
/// against shrinking and growing (so mapping it can never fault), before it is mapped.
pub(crate) fn check_peer_segment(file: &File, len: u64) -> io::Result<()> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(bad(format!(
            "segment is not a regular file ({:?})",
            meta.file_type()
        )));
    }
    let kind = fd_kind(file.as_raw_fd())?;
    if !kind.starts_with("/memfd:") {
        return Err(bad(format!("segment is not a memfd ({kind:?})")));
    }
    if meta.len() != len {
        return Err(bad(format!(
            "segment is {} bytes, expected {len}",
            meta.len()
        )));
    }
    if !is_size_sealed(file)? {
        return Err(bad("segment is not sealed against resizing".into()));
    }
    Ok(())
}

/// A non-blocking eventfd used as a wake-up counter.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> Self {
        e.0
    }
}

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd with a zero initial value and valid flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a fresh fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wraps an eventfd this process created.
    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Wraps an fd received from a peer, after checking that it is an eventfd and making it
    /// non-blocking: anything else (a pipe, a socket, a file) could block the thread that
    /// signals or drains it, or never wake it.
    pub(crate) fn from_peer(fd: OwnedFd) -> io::Result<Self> {
        let kind = fd_kind(fd.as_raw_fd())?;
        if kind != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected an eventfd, got {kind:?}"),
            ));
        }
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Self(fd))
    }

    /// Adds one to the counter, waking a waiter.
    pub(crate) fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our fd.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // A saturated counter already guarantees a wake-up.
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Resets the counter to zero; `WouldBlock` (already zero) is not an error.
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(e)
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Sends `payload` (non-empty, small) with `fds` in one `sendmsg` on the socket `sock`.
/// A partial send is reported as an error: the payload is a dozen bytes on a fresh socket.
pub(crate) fn send_fds(sock: RawFd, fds: &[RawFd], payload: &[u8]) -> io::Result<()> {
    if payload.is_empty() || fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad send_fds arguments",
        ));
    }
    let mut cbuf = CmsgBuf([0; 128]);
    let space = cmsg_space(fds.len());
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` ≤ 128 bytes aligned for cmsghdr, so CMSG_FIRSTHDR
    // is non-null and CMSG_DATA has room for fds.len() fds; the copy is unaligned-safe.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            size_of_val(fds),
        );
    }
    // SAFETY: msg points to iov (payload) and cbuf, both alive for the call.
    let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short fd-passing send",
        ));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the fds sent with them (close-on-exec, owned).
pub(crate) fn recv_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cbuf = CmsgBuf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS) as _;
    // SAFETY: msg points to buf and cbuf, both valid for writes of the lengths given.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsgs;
    // CMSG_FIRSTHDR/NXTHDR walk them within that length, and an SCM_RIGHTS header's data holds
    // whole fds (read unaligned), each newly installed in this process and owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated",
        ));
    }
    Ok((n as usize, fds))
}

/// Registers an eventfd with tokio's reactor for readability.
pub(crate) fn async_eventfd(fd: EventFd) -> io::Result<tokio::io::unix::AsyncFd<EventFd>> {
    // SAFETY: `EventFd` owns its fd, keeps it open until it is dropped (which happens only
    // when the `AsyncFd` drops it) and `as_raw_fd` always returns that same fd.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0; 2];
        // SAFETY: pipe writes two fresh fds into the array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    #[test]
    fn a_peer_eventfd_must_be_an_eventfd_and_is_made_non_blocking() {
        let (r, w) = pipe();
        assert!(EventFd::from_peer(r).is_err());
        assert!(EventFd::from_peer(w).is_err());
        let file = sealed_memfd(4096).unwrap();
        assert!(EventFd::from_peer(OwnedFd::from(file)).is_err());
        // SAFETY: a blocking eventfd, owned by nothing else.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd.
        let ev = EventFd::from_peer(unsafe { OwnedFd::from_raw_fd(raw) }).unwrap();
        // SAFETY: F_GETFL on a live fd.
        let flags = unsafe { libc::fcntl(ev.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        // Draining an empty, now non-blocking eventfd returns at once.
        ev.drain().unwrap();
    }

    #[test]
    fn a_peer_segment_must_be_a_sealed_memfd_of_the_right_size() {
        let ok = sealed_memfd(8192).unwrap();
        check_peer_segment(&ok, 8192).unwrap();
        assert!(check_peer_segment(&ok, 16384).is_err(), "wrong size");
        let (r, _w) = pipe();
        assert!(check_peer_segment(&File::from(r), 0).is_err(), "a pipe");
        let tmp = std::env::temp_dir().join(format!("manta-seg-{}", std::process::id()));
        let plain = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tmp)
            .unwrap();
        let _ = std::fs::remove_file(&tmp);
        plain.set_len(8192).unwrap();
        assert!(check_peer_segment(&plain, 8192).is_err(), "not a memfd");
        // SAFETY: unsealed memfd with valid flags.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd.
        let unsealed = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        unsealed.set_len(8192).unwrap();
        assert!(check_peer_segment(&unsealed, 8192).is_err(), "unsealed");
    }
}
