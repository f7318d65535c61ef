//! The two halves of a split connection ([`Connection::into_split`]): a [`RecvHalf`] and a
//! [`SendHalf`], each owning one side of the frame code and one side of the link, so each can
//! move into its own task and the connection is read and written concurrently.
//!
//! A split connection serves no one-sided reads: it has no registered regions, and a
//! `ReadRequest` frame arriving at a [`RecvHalf`] is a [`TransportError::Malformed`] error
//! (an `Unexpected` problem "on a split connection") that breaks the half.

use crate::connection::{Connection, Inbox, Incoming, Tag, TransferId, bulk_on_wire};
use crate::error::Result;
use crate::frame::FrameKind;
use crate::framed::{Frame, FrameReader, FrameWriter, unexpected};

/// The sending half of a split [`Connection`]. Dropping it (or [`SendHalf::close`]) ends the
/// stream: the peer's next receive, once it has read everything sent, reports
/// [`TransportError::Closed`](crate::TransportError::Closed).
#[derive(Debug)]
pub struct SendHalf {
    writer: FrameWriter,
    peer_name: String,
}

/// The receiving half of a split [`Connection`].
#[derive(Debug)]
pub struct RecvHalf {
    reader: FrameReader,
    inbox: Inbox,
    peer_name: String,
}

pub(crate) fn halves(
    reader: FrameReader,
    inbox: Inbox,
    writer: FrameWriter,
    peer_name: String,
) -> (RecvHalf, SendHalf) {
    (
        RecvHalf {
            reader,
            inbox,
            peer_name: peer_name.clone(),
        },
        SendHalf { writer, peer_name },
    )
}

impl SendHalf {
    /// The peer's address (`ip:port`, or `shm:<path>`).
    pub fn peer_addr(&self) -> &str {
        &self.writer.peer
    }

    /// The name the peer gave in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Sends a message, as [`Connection::send`].
    pub async fn send(&mut self, tag: Tag, payload: &[u8]) -> Result<()> {
        self.writer.send(tag, payload).await
    }

    /// Sends several messages in one buffer and as few syscalls as possible, as
    /// [`Connection::send_batch`].
    pub async fn send_batch(&mut self, msgs: &[(Tag, &[u8])]) -> Result<()> {
        self.writer.send_batch(msgs).await
    }

    /// Sends one bulk transfer streamed from `data`, as [`Connection::send_bulk`].
    pub async fn send_bulk(&mut self, id: TransferId, data: &[u8]) -> Result<()> {
        self.writer.send_bulk(id, data).await
    }

    /// Ends the sending direction: the peer's next receive (after everything sent) reports
    /// [`TransportError::Closed`](crate::TransportError::Closed). The [`RecvHalf`] keeps
    /// receiving.
    pub async fn close(mut self) -> Result<()> {
        self.writer.shutdown().await
    }
}

impl RecvHalf {
    /// The peer's address (`ip:port`, or `shm:<path>`).
    pub fn peer_addr(&self) -> &str {
        &self.reader.peer
    }

    /// The name the peer gave in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Receives the next message or bulk transfer (read a transfer's bytes with
    /// [`BulkIncoming::read_into`](crate::BulkIncoming::read_into) or
    /// [`into_vec`](crate::BulkIncoming::into_vec); one dropped unread is discarded before the
    /// next frame). Cancel-safe while no frame has started arriving. A `ReadRequest` or
    /// `ReadResponse` from the peer is a [`TransportError::Malformed`](crate::TransportError)
    /// error: a split connection serves and issues no one-sided reads.
    pub async fn recv(&mut self) -> Result<Incoming<'_>> {
        self.reader.guard()?;
        if let Some(h) = self.inbox.take() {
            return Ok(h.into_incoming(&mut self.reader));
        }
        match self.reader.next_frame().await? {
            Frame::Message(m) => Ok(Incoming::Message(m)),
            Frame::Bulk(id, len) => Ok(bulk_on_wire(&mut self.reader, id, len)),
            Frame::ReadRequest(_) => {
                self.reader.broken = true;
                Err(unexpected(
                    self.peer_addr(),
                    FrameKind::ReadRequest,
                    "on a split connection",
                ))
            }
            Frame::ReadResponse(_) => {
                self.reader.broken = true;
                Err(unexpected(
                    self.peer_addr(),
                    FrameKind::ReadResponse,
                    "on a split connection",
                ))
            }
        }
    }
}

// Both halves (and the connection) can move into their own tokio tasks.
const _: () = {
    const fn is_send_static<T: Send + 'static>() {}
    is_send_static::<SendHalf>();
    is_send_static::<RecvHalf>();
    is_send_static::<Connection>();
};
