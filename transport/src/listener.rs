//! Addresses, listening and connecting: the entry points that pick a backend.

use crate::config::TransportConfig;
use crate::connection::Connection;
use crate::error::{Result, TransportError};
use crate::limit::LogLimiter;
use crate::link;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// Where a listener listens. There is no default: the caller always chooses (never
/// `0.0.0.0` unless it asks for it, and then a warning is logged).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Address {
    /// TCP, between nodes.
    Tcp(SocketAddr),
    /// Shared-memory rings between processes of one node, met at this Unix-socket path.
    #[cfg(feature = "shm")]
    Shm(std::path::PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            #[cfg(feature = "shm")]
            Address::Shm(p) => write!(f, "shm:{}", p.display()),
        }
    }
}

#[derive(Debug)]
enum ListenerFlavor {
    Tcp(TcpListener),
    #[cfg(feature = "shm")]
    Shm(crate::shm::ShmListener),
}

/// Completed handshakes (or their errors) waiting for [`Listener::accept`].
const READY_QUEUE: usize = 64;
/// Pause after a failed `accept(2)` (say, out of descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum State {
    /// Bound; no accept yet.
    Idle(ListenerFlavor),
    /// The background accept task runs.
    Running {
        ready: mpsc::Receiver<Result<Connection>>,
        task: AbortHandle,
    },
    /// The background task could not be started or has ended.
    Stopped,
}

/// Accepts handshaken connections. Dropping it stops listening (and removes a shm socket),
/// abandoning handshakes in progress and connections not yet accepted.
///
/// # Concurrent handshakes
///
/// The first [`accept`](Listener::accept) spawns a background task on the caller's tokio
/// runtime that accepts sockets and runs each one's handshake in a task of its own, so a
/// slow or silent peer never delays another: it only holds its own task until
/// `handshake_timeout`. `accept` hands out results in the order the handshakes finish —
/// connections and, so the caller can see and count them, the errors of failed handshakes
/// (also logged with `tracing::warn`, at most 10 lines per 10 s per listener). Up to 64
/// finished results wait for `accept`; beyond that, finished handshakes wait for room.
///
/// What an unauthenticated peer can make a listener hold is bounded: at most
/// `max_pending_handshakes` handshakes run at once (a socket accepted beyond that is closed
/// at once), and each reads at most [`MAX_HELLO_LEN`](crate::MAX_HELLO_LEN) bytes of payload
/// before the token is proven (on a shm socket, at most 1 KiB and no fd).
#[derive(Debug)]
pub struct Listener {
    local: Address,
    config: Arc<TransportConfig>,
    state: tokio::sync::Mutex<State>,
}

fn set_nodelay(s: &TcpStream, peer: &str) -> Result<()> {
    s.set_nodelay(true)
        .map_err(|source| TransportError::Connect {
            addr: peer.to_owned(),
            source,
        })
}

impl Listener {
    /// Binds `addr`.
    pub async fn bind(addr: &Address, config: TransportConfig) -> Result<Self> {
        let (flavor, local) = match addr {
            Address::Tcp(a) => {
                if a.ip().is_unspecified() {
                    tracing::warn!(addr = %a, "listening on all interfaces, as asked");
                }
                let bind_err = |source| TransportError::Bind {
                    addr: addr.to_string(),
                    source,
                };
                let l = TcpListener::bind(a).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (ListenerFlavor::Tcp(l), Address::Tcp(local))
            }
            #[cfg(feature = "shm")]
            Address::Shm(p) => (
                ListenerFlavor::Shm(crate::shm::ShmListener::bind(p)?),
                addr.clone(),
            ),
        };
        Ok(Self {
            local,
            config: Arc::new(config),
            state: tokio::sync::Mutex::new(State::Idle(flavor)),
        })
    }

    /// The bound address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> Result<Address> {
        Ok(self.local.clone())
    }

    /// Returns the next connection whose handshake completed, or the error of the next one
    /// that failed (garbage, wrong token or version, timeout; the peer's socket is closed).
    /// Handshakes run concurrently in the background (see [`Listener`]), so one peer never
    /// stalls another; the listener stays usable after an error, so loop on `accept`.
    /// Cancel-safe: a result not returned stays queued for the next call.
    pub async fn accept(&self) -> Result<Connection> {
        let mut state = self.state.lock().await;
        if matches!(*state, State::Idle(_)) {
            let State::Idle(flavor) = std::mem::replace(&mut *state, State::Stopped) else {
                return Err(self.stopped());
            };
            let (tx, ready) = mpsc::channel(READY_QUEUE);
            let task = tokio::spawn(accept_loop(flavor, self.config.clone(), tx)).abort_handle();
            *state = State::Running { ready, task };
        }
        let State::Running { ready, .. } = &mut *state else {
            return Err(self.stopped());
        };
        match ready.recv().await {
            Some(r) => r,
            None => {
                *state = State::Stopped;
                Err(self.stopped())
            }
        }
    }

    fn stopped(&self) -> TransportError {
        TransportError::Accept {
            addr: self.local.to_string(),
            source: std::io::Error::other("the listener's accept task has ended"),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let State::Running { task, .. } = self.state.get_mut() {
            task.abort();
        }
        #[cfg(feature = "shm")]
        if let Address::Shm(p) = &self.local {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A socket accepted but not yet set up or handshaken.
enum Accepted {
    Tcp(TcpStream, String),
    #[cfg(feature = "shm")]
    Shm(tokio::net::UnixStream, std::path::PathBuf),
}

async fn accept_socket(flavor: &ListenerFlavor) -> Result<Accepted> {
    match flavor {
        ListenerFlavor::Tcp(l) => {
            let (s, peer) = l.accept().await.map_err(|source| TransportError::Accept {
                addr: l
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "tcp listener".into()),
                source,
            })?;
            Ok(Accepted::Tcp(s, peer.to_string()))
        }
        #[cfg(feature = "shm")]
        ListenerFlavor::Shm(l) => Ok(Accepted::Shm(l.accept().await?, l.path().to_owned())),
    }
}

/// Sets up (shm) and handshakes one accepted socket; failures are logged through `log`.
async fn handshake(sock: Accepted, cfg: &TransportConfig, log: &LogLimiter) -> Result<Connection> {
    match sock {
        Accepted::Tcp(s, peer) => {
            set_nodelay(&s, &peer)?;
            Connection::server_handshake(link::tcp(s), peer, cfg, log).await
        }
        #[cfg(feature = "shm")]
        Accepted::Shm(s, path) => {
            let (halves, peer) = crate::shm::setup(s, &path, cfg).await.inspect_err(|e| {
                if let Some(suppressed) = log.check() {
                    tracing::warn!(error = %e, suppressed, "closing connection: shm setup failed");
                }
            })?;
            Connection::server_handshake(link::shm(halves), peer, cfg, log).await
        }
    }
}

/// The background task of a [`Listener`]: accepts sockets and spawns one handshake task per
/// socket, at most `max_pending_handshakes` at once (a socket beyond that is closed at once);
/// every result goes to `ready`. Ends when the listener is dropped (aborted, which also
/// aborts the handshakes in its `JoinSet`). Warnings about bad peers share one
/// [`LogLimiter`].
async fn accept_loop(
    flavor: ListenerFlavor,
    cfg: Arc<TransportConfig>,
    ready: mpsc::Sender<Result<Connection>>,
) {
    let mut handshakes = JoinSet::new();
    let log = Arc::new(LogLimiter::for_bad_peers());
    // A permit per handshake under way, returned as soon as it ends (before its result waits
    // for room in `ready`): only peers still proving themselves count against the cap.
    let cap = cfg
        .max_pending_handshakes
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let pending = Arc::new(tokio::sync::Semaphore::new(cap));
    loop {
        let accepted = accept_socket(&flavor).await;
        while handshakes.try_join_next().is_some() {}
        match accepted {
            Ok(sock) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    drop(sock);
                    if let Some(suppressed) = log.check() {
                        tracing::warn!(
                            suppressed,
                            "closing connection: too many handshakes under way"
                        );
                    }
                    continue;
                };
                let (cfg, ready, log) = (cfg.clone(), ready.clone(), log.clone());
                handshakes.spawn(async move {
                    let result = handshake(sock, &cfg, &log).await;
                    drop(permit);
                    let _ = ready.send(result).await;
                });
            }
            Err(e) => {
                if let Some(suppressed) = log.check() {
                    tracing::warn!(error = %e, suppressed, "accept failed");
                }
                if ready.send(Err(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

impl Connection {
    /// Connects to a listener at `addr` and runs the handshake, all within
    /// `config.handshake_timeout`.
    pub async fn connect(addr: &Address, config: &TransportConfig) -> Result<Self> {
        match addr {
            Address::Tcp(a) => {
                let peer = a.to_string();
                let s = tokio::time::timeout(config.handshake_timeout, TcpStream::connect(a))
                    .await
                    .map_err(|_| TransportError::HandshakeTimeout {
                        peer: peer.clone(),
                        timeout: config.handshake_timeout,
                    })?
                    .map_err(|source| TransportError::Connect {
                        addr: peer.clone(),
                        source,
                    })?;
                set_nodelay(&s, &peer)?;
                Connection::client_handshake(link::tcp(s), peer, config).await
            }
            #[cfg(feature = "shm")]
            Address::Shm(p) => {
                let (s, peer) = crate::shm::connect(p, config).await?;
                Connection::client_handshake(link::shm(s), peer, config).await
            }
        }
    }
}
