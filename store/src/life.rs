//! Whether the process at the other end of a Unix socket still lives: a pidfd of it.
//!
//! A reader that reads another process's object in place on the node arena takes its read lock
//! (`AttachedArena::hold`) *after* the holder answered with the object's location. The lock
//! protects the bytes only if the holder was still alive when it was taken (`node.rs`, "Why
//! read locks", step 3): had the holder died first, the node could already have freed its
//! granule and granted it to another writer. So the reader checks, after locking, that the
//! holder has not exited: a process cannot come back, so "alive after the lock" implies "alive
//! when the lock was taken". A pidfd answers that without races on pid reuse: it refers to the
//! one process it was opened for, and becomes readable when that process exits (zombie or
//! not).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A pidfd of a socket's peer process.
#[derive(Debug)]
pub struct PeerLife {
    pidfd: OwnedFd,
}

impl PeerLife {
    /// The process at the other end of `sock` (its credentials as the kernel recorded them at
    /// `connect`/`listen`), as a pidfd. Call right after the peer answered on `sock`, so that
    /// its pid cannot have been reused yet.
    pub fn of_peer(sock: &UnixStream) -> io::Result<PeerLife> {
        // SAFETY: ucred is a plain C struct for which all-zero is a valid value.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large and
        // lives across the call; the fd is borrowed from a live socket.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if cred.pid <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the socket's peer has no pid in this namespace",
            ));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns (fds fit in c_int).
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(PeerLife { pidfd })
    }

    /// Whether the process has not exited yet. An error polling counts as exited (the
    /// cautious answer: the caller then copies instead of reading in place).
    pub fn is_alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes exactly the one pollfd passed, which lives across the
        // call; a timeout of 0 never blocks.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_peer_then_an_exited_one() {
        let (a, b) = UnixStream::pair().expect("pair");
        // Our own process is the peer of a socket pair: alive.
        let me = PeerLife::of_peer(&a).expect("pidfd of ourselves");
        assert!(me.is_alive());
        drop(b);

        // A child that exits: its socket end's credentials name it.
        let dir = std::env::temp_dir().join(format!("manta-life-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).expect("bind");
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(0.3)",
            ])
            .arg(&dir)
            .spawn()
            .expect("python3");
        let (conn, _) = listener.accept().expect("accept");
        let life = PeerLife::of_peer(&conn).expect("pidfd of the child");
        assert!(life.is_alive(), "the child sleeps");
        child.wait().expect("wait");
        assert!(!life.is_alive(), "the child exited");
        let _ = std::fs::remove_file(&dir);
    }
}
