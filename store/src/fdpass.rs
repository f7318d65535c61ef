//! Passing the arena's memfd to another process over a Unix socket (`SCM_RIGHTS`).
//!
//! std's ancillary-data API (`UnixStream::send_vectored_with_ancillary`) is still unstable
//! (feature `unix_socket_ancillary_data`), so this leaf module calls `sendmsg`/`recvmsg`
//! directly. Each message carries one fd and a non-empty payload (a socket message with
//! ancillary data must carry at least one byte), e.g. a [`Location`](crate::Location) to read.

use std::io::{self, Write};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Control-message buffer for one fd, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// `CMSG_SPACE` for one fd.
fn space_for_one_fd() -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize }
}

/// Sends `fd` and `payload` (at least one byte) on `sock`.
pub fn send_fd(sock: &UnixStream, fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    if payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_fd needs a non-empty payload",
        ));
    }
    let mut cbuf = CmsgBuf([0; 64]);
    let space = space_for_one_fd();
    debug_assert!(space <= cbuf.0.len());
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
    // SAFETY: msg_control points to `space` bytes (≥ CMSG_SPACE of one fd), aligned for
    // cmsghdr, so CMSG_FIRSTHDR returns a non-null header inside cbuf, and CMSG_DATA points
    // to room for one fd after it; write_unaligned needs no alignment.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: msg points to iov (payload, alive for the call) and cbuf, both valid for the call.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The fd travelled with the first byte; the rest of a short send is plain data.
    let mut rest = &payload[sent as usize..];
    let mut s = sock;
    while !rest.is_empty() {
        let n = s.write(rest)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receives one fd and up to `buf.len()` payload bytes from `sock`; returns the byte count and
/// the fd (close-on-exec). Fails if the message carried no fd.
pub fn recv_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, OwnedFd)> {
    let mut cbuf = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space_for_one_fd() as _;
    // SAFETY: msg points to buf and cbuf, both valid for writes of the lengths given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsgs;
    // CMSG_FIRSTHDR/NXTHDR walk them within that length, and an SCM_RIGHTS header's data
    // holds whole fds (read unaligned), each newly installed in this process and owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    // The first fd is the answer; any extra is closed by dropping it.
                    if received.is_none() {
                        received = Some(fd);
                    }
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
    let fd = received
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message carried no fd"))?;
    Ok((n as usize, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    #[test]
    fn passes_an_fd_and_payload_in_process() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"shared bytes").expect("write");
        send_fd(&a, std::os::fd::AsFd::as_fd(&file), b"hello").expect("send");
        let mut buf = [0u8; 16];
        let (n, fd) = recv_fd(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        let mut received = std::fs::File::from(fd);
        received.seek(SeekFrom::Start(0)).expect("seek");
        let mut s = String::new();
        received.read_to_string(&mut s).expect("read");
        assert_eq!(s, "shared bytes");
    }

    #[test]
    fn plain_data_without_fd_is_an_error() {
        let (mut a, b) = UnixStream::pair().expect("socketpair");
        a.write_all(b"x").expect("write");
        let mut buf = [0u8; 4];
        assert!(recv_fd(&b, &mut buf).is_err());
    }
}
