//! The private enum of backends (crossbeam's channel-flavour pattern): every public type holds
//! a `Link` and dispatches by `match`, so the choice is static and adding a backend (RDMA) is
//! one variant plus its match arms, behind its cargo feature.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The byte pipe under a connection.
#[derive(Debug)]
pub(crate) enum Link {
    /// TCP between nodes.
    Tcp(TcpStream),
    /// Shared-memory rings between processes of one node.
    #[cfg(feature = "shm")]
    Shm(Box<crate::shm::ShmStream>),
}

impl Link {
    /// Non-blocking read: `WouldBlock` when nothing is ready.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tcp(s) => s.try_read(buf),
            #[cfg(feature = "shm")]
            Link::Shm(s) => s.try_read(buf),
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "shm")]
            Link::Shm(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "shm")]
            Link::Shm(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "shm")]
            Link::Shm(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Link::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "shm")]
            Link::Shm(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "shm")]
            Link::Shm(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "shm")]
            Link::Shm(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
