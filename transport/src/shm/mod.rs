//! The shared-memory backend for processes of one node.
//!
//! Rendezvous (numbered as the code runs them):
//!
//! 1. The listener binds a Unix socket at a path the caller chose (removed again when the
//!    listener drops).
//! 2. The connector creates a memfd of [`ring::segment_len`] bytes, seals it against
//!    shrinking and growing, maps it, writes the segment header, and creates four eventfds
//!    (data and space for each ring).
//! 3. The connector sends `b"MSHA"` and its 32-byte nonce, with no fds.
//! 4. The listener reads them with plain reads (fds sent alongside are never installed: the
//!    kernel drops them) and answers its own nonce; the connector answers its proof of the
//!    token, HMAC-SHA256 over both nonces (`auth.rs`); the listener checks it in constant
//!    time, all within `handshake_timeout`, and answers one byte: 0 (wrong token: the
//!    connector reports [`TransportError::Refused`], and the socket closes), or 1 and its own
//!    proof, which the connector checks before it hands over anything: a listener that cannot
//!    prove the token ([`TransportError::Unproven`]) never gets the connector's memory. A
//!    wrong magic or a short read closes the socket: nothing of the peer's is kept, mapped or
//!    read further. The token itself never crosses the socket.
//! 5. The connector sends a 12-byte `b"MSHM"` + capacity message carrying the memfd and the
//!    eventfds (`SCM_RIGHTS`).
//! 6. The listener validates every fd before using it: the segment must be a memfd
//!    (`/proc/self/fd` names it `/memfd:…`) of exactly `segment_len(capacity)` bytes, sealed
//!    against resizing, with a valid header; each wake-up fd must be an eventfd
//!    (`anon_inode:[eventfd]`), and the listener sets `O_NONBLOCK` on it itself. So no fd a
//!    peer passes can block this process's I/O thread (a full blocking pipe in place of an
//!    eventfd would) or fault its mapping. Any failure closes the socket.
//! 7. Both sides speak the ordinary framed protocol (handshake first) over the rings; the
//!    Unix socket stays open only to notice a peer's death.
//!
//! The segment lives as long as either process maps it; nothing is left in `/dev/shm`.

mod ring;
mod stream;
pub(crate) mod sys;

pub(crate) use stream::{ShmReader, ShmWriter};

use crate::config::TransportConfig;
use crate::error::{RefusalReason, Result, TransportError};
use manta_auth::{self as auth, Role};
use ring::Side;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use sys::EventFd;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

const SETUP_MAGIC: &[u8; 4] = b"MSHM";
const PROOF_MAGIC: &[u8; 4] = b"MSHA";

fn setup_err(peer: &str, detail: impl std::fmt::Display) -> TransportError {
    TransportError::ShmSetup {
        peer: peer.to_owned(),
        detail: detail.to_string(),
    }
}

/// A bound rendezvous socket. Its path is removed by the owning
/// [`Listener`](crate::Listener) when that drops.
#[derive(Debug)]
pub(crate) struct ShmListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ShmListener {
    pub(crate) fn bind(path: &Path) -> Result<Self> {
        let listener = UnixListener::bind(path).map_err(|source| TransportError::Bind {
            addr: format!("shm:{}", path.display()),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one socket; [`setup`] then runs steps 4 and 6 on it.
    pub(crate) async fn accept(&self) -> Result<UnixStream> {
        let (sock, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| TransportError::Accept {
                addr: format!("shm:{}", self.path.display()),
                source,
            })?;
        Ok(sock)
    }
}

/// Checks the token proof and sets up the segment of an accepted socket (steps 4 and 6,
/// listener side); `path` is the listener's.
pub(crate) async fn setup(
    mut sock: UnixStream,
    path: &Path,
    cfg: &TransportConfig,
) -> Result<(ShmHalves, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer = format!("shm:{}#peer", path.display());
    let setup = async {
        // Step 4: the proof first, by plain reads (no fd is installed).
        let mut magic = [0u8; 4];
        sock.read_exact(&mut magic).await?;
        if &magic != PROOF_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no token proof before the setup message",
            ));
        }
        let mut nonce = [0u8; auth::NONCE_LEN];
        sock.read_exact(&mut nonce).await?;
        let theirs = &nonce[..];
        let mine = auth::nonce()?;
        sock.write_all(&mine).await?;
        let mut proof = [0u8; auth::PROOF_LEN];
        sock.read_exact(&mut proof).await?;
        let token = &cfg.cluster_token;
        if !auth::verify(token, Role::Connector, theirs, &mine, &proof) {
            sock.write_all(&[0]).await?;
            return Ok(None);
        }
        let mut answer = vec![1u8];
        answer.extend_from_slice(&auth::prove(token, Role::Listener, theirs, &mine));
        sock.write_all(&answer).await?;
        // Step 6 starts: only now are the peer's fds received.
        let mut buf = [0u8; 12];
        let (n, fds) = loop {
            sock.readable().await?;
            match sock.try_io(Interest::READABLE, || {
                sys::recv_fds(sock.as_raw_fd(), &mut buf)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        Ok::<_, io::Error>(Some((n, buf, fds)))
    };
    let received = tokio::time::timeout(cfg.handshake_timeout, setup)
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })?
        .map_err(|e| setup_err(&peer, e))?;
    let Some((n, buf, fds)) = received else {
        return Err(TransportError::Rejected {
            peer,
            reason: RefusalReason::WrongToken,
        });
    };
    if n != buf.len() || &buf[..4] != SETUP_MAGIC || fds.len() != 5 {
        return Err(setup_err(&peer, "bad setup message"));
    }
    let capacity = u64::from_le_bytes(buf[4..12].try_into().unwrap_or([0; 8]));
    if !capacity.is_power_of_two() || !(4096..=ring::MAX_CAPACITY).contains(&capacity) {
        return Err(setup_err(&peer, format!("bad ring capacity {capacity}")));
    }
    let mut fds = fds.into_iter();
    let (Some(mem), Some(a_data), Some(a_space), Some(b_data), Some(b_space)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(setup_err(&peer, "missing fds"));
    };
    let file = File::from(mem);
    sys::check_peer_segment(&file, ring::segment_len(capacity)).map_err(|e| setup_err(&peer, e))?;
    let waits = [a_data, b_space, b_data, a_space]
        .map(EventFd::from_peer)
        .into_iter()
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| setup_err(&peer, e))?;
    let Ok(waits) = <[EventFd; 4]>::try_from(waits) else {
        return Err(setup_err(&peer, "missing fds"));
    };
    let (tx, rx) = ring::open(&file, capacity, Side::Listener).map_err(|e| setup_err(&peer, e))?;
    // Listener writes ring B and reads ring A.
    let stream = build(tx, rx, waits, sock, cfg).map_err(|e| setup_err(&peer, e))?;
    Ok((stream, peer))
}

/// The two halves of this process's end of a shm connection.
pub(crate) type ShmHalves = (ShmReader, ShmWriter);

/// `waits` = [our rx data, our tx space, peer's rx data, peer's tx space].
fn build(
    tx: ring::Producer,
    rx: ring::Consumer,
    waits: [EventFd; 4],
    sock: UnixStream,
    cfg: &TransportConfig,
) -> io::Result<ShmHalves> {
    stream::split_stream(stream::StreamParts {
        tx,
        rx,
        waits,
        sock,
        spin: cfg.shm_spin,
    })
}

/// Connects to a listener's socket, proves the token and sets up a fresh segment (steps 2, 3
/// and 5).
pub(crate) async fn connect(path: &Path, cfg: &TransportConfig) -> Result<(ShmHalves, String)> {
    let peer = format!("shm:{}", path.display());
    let mut sock = tokio::time::timeout(cfg.handshake_timeout, UnixStream::connect(path))
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })?
        .map_err(|source| TransportError::Connect {
            addr: peer.clone(),
            source,
        })?;
    let capacity = (cfg.shm_ring_capacity as u64)
        .clamp(4096, ring::MAX_CAPACITY)
        .next_power_of_two();
    let file = sys::sealed_memfd(ring::segment_len(capacity)).map_err(|e| setup_err(&peer, e))?;
    let (tx, rx) = ring::open(&file, capacity, Side::Connector).map_err(|e| setup_err(&peer, e))?;
    let evs = (0..4)
        .map(|_| EventFd::new())
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| setup_err(&peer, e))?;
    let raw = [
        file.as_raw_fd(),
        evs[0].as_raw_fd(),
        evs[1].as_raw_fd(),
        evs[2].as_raw_fd(),
        evs[3].as_raw_fd(),
    ];
    let mine = auth::nonce().map_err(|e| setup_err(&peer, e))?;
    let mut hello = PROOF_MAGIC.to_vec();
    hello.extend_from_slice(&mine);
    let token = &cfg.cluster_token;
    let prove = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        sock.write_all(&hello).await?;
        let mut theirs = [0u8; auth::NONCE_LEN];
        sock.read_exact(&mut theirs).await?;
        sock.write_all(&auth::prove(token, Role::Connector, &mine, &theirs))
            .await?;
        let mut verdict = [0u8; 1];
        sock.read_exact(&mut verdict).await?;
        if verdict[0] != 1 {
            return Ok::<_, io::Error>(Err(()));
        }
        let mut proof = [0u8; auth::PROOF_LEN];
        sock.read_exact(&mut proof).await?;
        Ok(Ok(auth::verify(
            token,
            Role::Listener,
            &mine,
            &theirs,
            &proof,
        )))
    };
    let proven = tokio::time::timeout(cfg.handshake_timeout, prove)
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })?
        .map_err(|e| setup_err(&peer, e))?;
    match proven {
        Err(()) => {
            tracing::warn!(%peer, "shared-memory connection refused by peer: wrong cluster token");
            return Err(TransportError::Refused {
                peer,
                reason: RefusalReason::WrongToken,
                detail: "wrong cluster token".into(),
            });
        }
        Ok(false) => {
            tracing::warn!(%peer, "the shared-memory listener did not prove the cluster token: closing");
            return Err(TransportError::Unproven { peer });
        }
        Ok(true) => {}
    }
    let mut msg = [0u8; 12];
    msg[..4].copy_from_slice(SETUP_MAGIC);
    msg[4..].copy_from_slice(&capacity.to_le_bytes());
    let send = async {
        loop {
            sock.writable().await?;
            match sock.try_io(Interest::WRITABLE, || {
                sys::send_fds(sock.as_raw_fd(), &raw, &msg)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r,
            }
        }
    };
    tokio::time::timeout(cfg.handshake_timeout, send)
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })?
        .map_err(|e| setup_err(&peer, e))?;
    let owned = evs.into_iter().map(OwnedFd::from);
    let [a_data, a_space, b_data, b_space]: [OwnedFd; 4] = owned
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| setup_err(&peer, "eventfds"))?;
    // Connector writes ring A and reads ring B.
    let waits = [b_data, a_space, a_data, b_space].map(EventFd::from_owned);
    let stream = build(tx, rx, waits, sock, cfg).map_err(|e| setup_err(&peer, e))?;
    Ok((stream, peer))
}
