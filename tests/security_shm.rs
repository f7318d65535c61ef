//! A hostile local process against a driver's shared-memory socket: whatever it sends (no
//! token, a wrong one, or the right one with a pipe in place of an eventfd or a segment too
//! small), the driver keeps answering — its `get()` returns within a bound.
//!
//! The hostile client speaks the raw rendezvous of `transport/src/shm/mod.rs` over a real Unix
//! socket to the driver's own abstract socket (found in `/proc/net/unix`).

mod common;

use manta_transport::auth;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

#[manta::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Bound on one `get()` after an attack (generous: the machine may be loaded).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The driver's own shared-memory socket name (`manta-w-<pid>-<stamp>`, abstract).
fn own_shm_socket() -> String {
    let prefix = format!("@manta-w-{}-", std::process::id());
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .find(|p| p.starts_with(&prefix) && !p.ends_with(".arena"))
        .map(|p| p[1..].to_owned())
        .expect("the driver listens on a shared-memory socket")
}

/// Asserts a remote call still answers within [`ANSWER_WITHIN`].
fn assert_answers(what: &str) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(square::remote(7u64).get());
    });
    match rx.recv_timeout(ANSWER_WITHIN) {
        Ok(r) => assert_eq!(r.expect("the call succeeds"), 49, "{what}"),
        Err(_) => {
            panic!("after {what}, the driver's get() did not answer within {ANSWER_WITHIN:?}")
        }
    }
}

fn check(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A memfd of `len` bytes, sealed against resizing, with a valid ring segment header for
/// `capacity`, garbage published in ring A and ring B's data-waiter flag set (so the
/// listener's first write to ring B signals the fd in the "peer data" slot).
fn hostile_segment(len: u64, capacity: u64) -> OwnedFd {
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_ALLOW_SEALING) };
    let fd = owned(check(fd, "memfd_create"));
    let file = std::fs::File::from(fd);
    file.set_len(len).unwrap();
    let mut bytes = vec![0u8; len as usize];
    if len >= 4096 + 64 {
        bytes[0..8].copy_from_slice(b"MNTARING");
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&capacity.to_le_bytes());
        // Ring A: 64 garbage bytes published (head at offset 64).
        bytes[64..72].copy_from_slice(&64u64.to_le_bytes());
        bytes[4096..4096 + 64].fill(0xAB);
        // Ring B's data_waiter (flags line at 256 + 128).
        bytes[384..388].copy_from_slice(&1u32.to_le_bytes());
    }
    (&file).write_all(&bytes).unwrap();
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: fcntl on an fd we own with a valid command and argument.
    check(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) },
        "seal",
    );
    OwnedFd::from(file)
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd creation.
    owned(check(
        unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) },
        "eventfd",
    ))
}

/// A pipe whose write end is full and blocking: writing 8 bytes to it blocks for good.
/// Returns (read end, write end); the caller keeps the read end open.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    check(unsafe { libc::pipe(p.as_mut_ptr()) }, "pipe");
    let (r, w) = (owned(p[0]), owned(p[1]));
    // SAFETY: fcntl on fds we own.
    unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    let chunk = [0u8; 4096];
    loop {
        // SAFETY: writes from a live buffer to an fd we own.
        let n = unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
        if n <= 0 {
            break;
        }
    }
    // SAFETY: as above; back to blocking.
    unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0);
    }
    (r, w)
}

/// Sends `payload` with `fds` (SCM_RIGHTS) in one message.
fn send_fds(sock: &UnixStream, payload: &[u8], fds: &[RawFd]) {
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as _;
    // SAFETY: the control buffer (128 bytes, 8-aligned) holds one cmsg of ≤ 8 fds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            std::mem::size_of_val(fds),
        );
    }
    // SAFETY: msg points to live buffers.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    // A listener that already closed the socket may refuse the send: that is fine.
    let _ = n;
}

/// What the hostile client presents before its fds.
enum Proof<'a> {
    /// Nothing: the setup message (with fds) comes first.
    None,
    /// The rendezvous proof made with this token.
    Token(&'a [u8]),
}

/// Connects to `name` and plays one hostile rendezvous; returns what the listener answered
/// before closing, and the fds to keep open.
fn attack(name: &str, proof: Proof<'_>, segment_len: u64) -> (Vec<u8>, Vec<OwnedFd>) {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixStream::connect_addr(&addr).expect("connecting to the driver's shm socket");
    let mut answer = Vec::new();
    if let Proof::Token(t) = proof {
        // The rendezvous proof: our nonce, the listener's nonce back, our MAC of the token.
        let mine = [3u8; auth::NONCE_LEN];
        let mut m = b"MSHA".to_vec();
        m.extend_from_slice(&mine);
        (&sock).write_all(&m).unwrap();
        let mut theirs = [0u8; auth::NONCE_LEN];
        std::io::Read::read_exact(&mut (&sock), &mut theirs).unwrap();
        let mac = auth::prove(t, auth::Role::Connector, &mine, &theirs);
        (&sock).write_all(&mac).unwrap();
        let mut verdict = [0u8; 1];
        std::io::Read::read_exact(&mut (&sock), &mut verdict).unwrap();
        answer.push(verdict[0]);
        if verdict[0] == 1 {
            let mut proof = [0u8; auth::PROOF_LEN];
            std::io::Read::read_exact(&mut (&sock), &mut proof).unwrap();
            assert!(
                auth::verify(t, auth::Role::Listener, &mine, &theirs, &proof),
                "the listener proves the token in turn"
            );
        }
    }
    let capacity = 4096u64;
    let mem = hostile_segment(segment_len, capacity);
    let (pipe_r, pipe_w) = full_pipe();
    let (a_data, a_space, b_space) = (eventfd(), eventfd(), eventfd());
    let mut msg = b"MSHM".to_vec();
    msg.extend_from_slice(&capacity.to_le_bytes());
    // Order as the connector sends: memfd, a_data, a_space, b_data, b_space.
    let fds = [
        mem.as_raw_fd(),
        a_data.as_raw_fd(),
        a_space.as_raw_fd(),
        pipe_w.as_raw_fd(),
        b_space.as_raw_fd(),
    ];
    send_fds(&sock, &msg, &fds);
    // The listener answers nothing more than the verdict (and its proof), then closes the
    // socket.
    sock.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    // Closing with our setup message unread resets the connection: also a close.
    if let Err(e) = std::io::Read::read_to_end(&mut (&sock), &mut answer) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the listener closes a hostile connection"
        );
    }
    let kept = vec![
        OwnedFd::from(sock),
        pipe_r,
        pipe_w,
        mem,
        a_data,
        a_space,
        b_space,
    ];
    (answer, kept)
}

#[test]
fn hostile_shm_peers_never_block_the_driver() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    manta::init_with(cluster.config()).expect("the driver joins");
    assert_answers("start-up");
    let name = own_shm_socket();
    let full = 4096 + 2 * 4096;
    let mut keep = Vec::new();
    // The attack of the report: no token at all, a blocking full pipe as an eventfd.
    let (answer, fds) = attack(&name, Proof::None, full);
    keep.push(fds);
    assert_answers("fds sent without a token");
    assert_eq!(answer, b"", "no proof: closed without a word");
    let (answer, fds) = attack(&name, Proof::Token(b"not-the-token"), full);
    keep.push(fds);
    assert_answers("a wrong token");
    assert_eq!(answer, [0], "a wrong token is refused");
    let token = cluster.token.as_bytes().to_vec();
    let (answer, fds) = attack(&name, Proof::Token(&token), full);
    keep.push(fds);
    assert_answers("the right token with a pipe for an eventfd");
    assert_eq!(answer, [1], "the token is proven, then the pipe refused");
    let (answer, fds) = attack(&name, Proof::Token(&token), 4096);
    keep.push(fds);
    assert_answers("the right token with a segment too small");
    assert_eq!(answer, [1], "the token is proven, then the segment refused");
    drop(keep);
    manta::shutdown();
}

/// Receives up to `buf.len()` bytes and the fds sent with them.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: msg points to live buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = usize::try_from(n).expect("recvmsg");
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer; CMSG_* walk it within its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    fds.push(owned(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    (n, fds)
}

/// Plays the arena attach (`core/src/cluster/attach.rs`) with `token`: what came back after
/// the proof (bytes, fds), or `None` if the holder closed before its nonce (`old_style`:
/// the plaintext token of the protocol before).
fn attach_arena(name: &str, token: &[u8], old_style: bool) -> (Vec<u8>, Vec<OwnedFd>) {
    let addr = SocketAddr::from_abstract_name(format!("{name}.arena").as_bytes()).unwrap();
    let sock = UnixStream::connect_addr(&addr).expect("connecting to the arena socket");
    sock.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mine = [5u8; auth::NONCE_LEN];
    if old_style {
        let mut m = (token.len() as u32).to_le_bytes().to_vec();
        m.extend_from_slice(token);
        let _ = (&sock).write_all(&m);
    } else {
        let mut m = b"MARN".to_vec();
        m.extend_from_slice(&mine);
        (&sock).write_all(&m).unwrap();
        let mut theirs = [0u8; auth::NONCE_LEN];
        std::io::Read::read_exact(&mut (&sock), &mut theirs).unwrap();
        let mac = auth::prove(token, auth::Role::Connector, &mine, &theirs);
        (&sock).write_all(&mac).unwrap();
        let mut reply = vec![0u8; auth::PROOF_LEN + 16];
        let (n, fds) = recv_with_fds(&sock, &mut reply);
        reply.truncate(n);
        if n > 0 {
            assert!(
                auth::verify(
                    token,
                    auth::Role::Listener,
                    &mine,
                    &theirs,
                    &reply[..auth::PROOF_LEN]
                ),
                "the holder proves the token with its fd"
            );
        }
        return (reply, fds);
    }
    let mut rest = Vec::new();
    let r = std::io::Read::read_to_end(&mut (&sock), &mut rest);
    assert!(r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    (rest, Vec::new())
}

/// The arena's fd goes only to a requester that proves the token, and the token itself never
/// crosses the socket (a plaintext token, the protocol before, gets nothing).
#[test]
fn the_arena_goes_only_to_a_requester_that_proves_the_token() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    manta::init_with(cluster.config()).expect("the driver joins");
    assert_answers("start-up");
    let name = own_shm_socket();
    let token = cluster.token.as_bytes().to_vec();
    let (reply, fds) = attach_arena(&name, &token, true);
    assert!(
        reply.is_empty() && fds.is_empty(),
        "a plaintext token gets nothing"
    );
    let (reply, fds) = attach_arena(&name, b"not-the-token", false);
    assert!(
        reply.is_empty() && fds.is_empty(),
        "a wrong proof gets nothing"
    );
    assert_answers("two refused attaches");
    let (reply, fds) = attach_arena(&name, &token, false);
    assert_eq!(reply.len(), auth::PROOF_LEN + 16, "proof, index and length");
    assert_eq!(fds.len(), 1, "the arena's memfd");
    manta::shutdown();
}
