//! Addresses, listening and connecting: the entry points that pick a backend.

use crate::config::TransportConfig;
use crate::connection::Connection;
use crate::error::{Result, TransportError};
use crate::link;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

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

/// Accepts handshaken connections. Dropping it stops listening (and removes a shm socket).
#[derive(Debug)]
pub struct Listener {
    flavor: ListenerFlavor,
    config: Arc<TransportConfig>,
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
        let flavor = match addr {
            Address::Tcp(a) => {
                if a.ip().is_unspecified() {
                    tracing::warn!(addr = %a, "listening on all interfaces, as asked");
                }
                ListenerFlavor::Tcp(TcpListener::bind(a).await.map_err(|source| {
                    TransportError::Bind {
                        addr: addr.to_string(),
                        source,
                    }
                })?)
            }
            #[cfg(feature = "shm")]
            Address::Shm(p) => ListenerFlavor::Shm(crate::shm::ShmListener::bind(p)?),
        };
        Ok(Self {
            flavor,
            config: Arc::new(config),
        })
    }

    /// The bound address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> Result<Address> {
        match &self.flavor {
            ListenerFlavor::Tcp(l) => {
                l.local_addr()
                    .map(Address::Tcp)
                    .map_err(|source| TransportError::Accept {
                        addr: "tcp listener".into(),
                        source,
                    })
            }
            #[cfg(feature = "shm")]
            ListenerFlavor::Shm(l) => Ok(Address::Shm(l.path().to_owned())),
        }
    }

    /// Accepts one connection and runs the listener side of the handshake. A peer that fails
    /// it (garbage, wrong token or version, timeout) yields an error and a closed connection;
    /// the listener itself stays usable, so loop on `accept`.
    pub async fn accept(&self) -> Result<Connection> {
        let cfg = &self.config;
        match &self.flavor {
            ListenerFlavor::Tcp(l) => {
                let (s, peer) = l.accept().await.map_err(|source| TransportError::Accept {
                    addr: l
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "tcp listener".into()),
                    source,
                })?;
                let peer = peer.to_string();
                set_nodelay(&s, &peer)?;
                Connection::server_handshake(link::tcp(s), peer, cfg).await
            }
            #[cfg(feature = "shm")]
            ListenerFlavor::Shm(l) => {
                let (s, peer) = l.accept(cfg).await?;
                Connection::server_handshake(link::shm(s), peer, cfg).await
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
