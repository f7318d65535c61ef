//! The shared-memory backend for processes of one node.
//!
//! Rendezvous (numbered as the code runs them):
//!
//! 1. The listener binds a Unix socket at a path the caller chose (removed again when the
//!    listener drops).
//! 2. The connector creates a memfd of [`ring::segment_len`] bytes, seals it against
//!    shrinking and growing, maps it, writes the segment header, and creates four eventfds
//!    (data and space for each ring).
//! 3. The connector sends a 12-byte `b"MSHM"` + capacity message carrying the memfd and the
//!    eventfds (`SCM_RIGHTS`).
//! 4. The listener checks the message, the fd count, the seals, the file size and the
//!    segment header before trusting the mapping; any failure closes the socket.
//! 5. Both sides speak the ordinary framed protocol (handshake first) over the rings; the
//!    Unix socket stays open only to notice a peer's death.
//!
//! The segment lives as long as either process maps it; nothing is left in `/dev/shm`.

mod ring;
mod stream;
pub(crate) mod sys;

pub(crate) use stream::{ShmReader, ShmWriter};

use crate::config::TransportConfig;
use crate::error::{Result, TransportError};
use ring::Side;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use sys::EventFd;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

const SETUP_MAGIC: &[u8; 4] = b"MSHM";

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

    /// Accepts one socket; [`setup`] then runs steps 3–4 on it.
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

/// Sets up the segment of an accepted socket (steps 3–4, listener side); `path` is the
/// listener's.
pub(crate) async fn setup(
    sock: UnixStream,
    path: &Path,
    cfg: &TransportConfig,
) -> Result<(ShmHalves, String)> {
    let peer = format!("shm:{}#peer", path.display());
    let setup = async {
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
        Ok::<_, io::Error>((n, buf, fds))
    };
    let (n, buf, fds) = tokio::time::timeout(cfg.handshake_timeout, setup)
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            peer: peer.clone(),
            timeout: cfg.handshake_timeout,
        })?
        .map_err(|e| setup_err(&peer, e))?;
    if n != buf.len() || &buf[..4] != SETUP_MAGIC || fds.len() != 5 {
        return Err(setup_err(&peer, "bad setup message"));
    }
    let capacity = u64::from_le_bytes(buf[4..12].try_into().unwrap_or([0; 8]));
    let mut fds = fds.into_iter();
    let (Some(mem), Some(a_data), Some(a_space), Some(b_data), Some(b_space)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(setup_err(&peer, "missing fds"));
    };
    let file = File::from(mem);
    if !sys::is_size_sealed(&file).map_err(|e| setup_err(&peer, e))? {
        return Err(setup_err(&peer, "segment is not sealed against resizing"));
    }
    let (tx, rx) = ring::open(&file, capacity, Side::Listener).map_err(|e| setup_err(&peer, e))?;
    // Listener writes ring B and reads ring A.
    let stream = build(tx, rx, [a_data, b_space, b_data, a_space], sock, cfg)
        .map_err(|e| setup_err(&peer, e))?;
    Ok((stream, peer))
}

/// The two halves of this process's end of a shm connection.
pub(crate) type ShmHalves = (ShmReader, ShmWriter);

/// `waits` = [our rx data, our tx space, peer's rx data, peer's tx space].
fn build(
    tx: ring::Producer,
    rx: ring::Consumer,
    fds: [OwnedFd; 4],
    sock: UnixStream,
    cfg: &TransportConfig,
) -> io::Result<ShmHalves> {
    stream::split_stream(stream::StreamParts {
        tx,
        rx,
        waits: fds.map(EventFd::from_owned),
        sock,
        spin: cfg.shm_spin,
    })
}

/// Connects to a listener's socket and sets up a fresh segment (steps 2–3).
pub(crate) async fn connect(path: &Path, cfg: &TransportConfig) -> Result<(ShmHalves, String)> {
    let peer = format!("shm:{}", path.display());
    let sock = tokio::time::timeout(cfg.handshake_timeout, UnixStream::connect(path))
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
    let stream = build(tx, rx, [b_data, a_space, a_data, b_space], sock, cfg)
        .map_err(|e| setup_err(&peer, e))?;
    Ok((stream, peer))
}
