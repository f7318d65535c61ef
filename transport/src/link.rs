//! The private enums of backends (crossbeam's channel-flavour pattern): every public type holds
//! a [`LinkReader`] and a [`LinkWriter`] and dispatches by `match`, so the choice is static and
//! adding a backend (RDMA) is one variant per enum plus its match arms, behind its cargo
//! feature. Every link is full-duplex and split from the start (TCP by
//! `TcpStream::into_split`, shm by giving each ring to its own half), so a connection's
//! reading and writing sides can move into different tasks.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The reading side of the byte pipe under a connection.
#[derive(Debug)]
pub(crate) enum LinkReader {
    /// TCP between nodes.
    Tcp(OwnedReadHalf),
    /// Shared-memory rings between processes of one node.
    #[cfg(feature = "shm")]
    Shm(Box<crate::shm::ShmReader>),
}

/// The writing side of the byte pipe under a connection.
#[derive(Debug)]
pub(crate) enum LinkWriter {
    /// TCP between nodes.
    Tcp(OwnedWriteHalf),
    /// Shared-memory rings between processes of one node.
    #[cfg(feature = "shm")]
    Shm(Box<crate::shm::ShmWriter>),
}

/// Splits a TCP stream into link halves.
pub(crate) fn tcp(s: TcpStream) -> (LinkReader, LinkWriter) {
    let (r, w) = s.into_split();
    (LinkReader::Tcp(r), LinkWriter::Tcp(w))
}

/// Wraps shm halves.
#[cfg(feature = "shm")]
pub(crate) fn shm((r, w): crate::shm::ShmHalves) -> (LinkReader, LinkWriter) {
    (LinkReader::Shm(Box::new(r)), LinkWriter::Shm(Box::new(w)))
}

impl LinkReader {
    /// Non-blocking read: `WouldBlock` when nothing is ready.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LinkReader::Tcp(s) => s.try_read(buf),
            #[cfg(feature = "shm")]
            LinkReader::Shm(s) => s.try_read(buf),
        }
    }
}

impl AsyncRead for LinkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkReader::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "shm")]
            LinkReader::Shm(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWriter::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "shm")]
            LinkWriter::Shm(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWriter::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "shm")]
            LinkWriter::Shm(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LinkWriter::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "shm")]
            LinkWriter::Shm(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWriter::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "shm")]
            LinkWriter::Shm(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWriter::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "shm")]
            LinkWriter::Shm(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
