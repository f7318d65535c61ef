//! A handshaken connection: framed messages, bulk transfers, registered regions and one-sided
//! reads, and progress. The protocol logic here is shared by every backend; a backend only
//! supplies the byte pipe ([`Link`]).
//!
//! # Handshake
//!
//! 1. The connector sends `Hello { protocol_version, cluster_token, peer_name }`.
//! 2. The listener reads one frame within `handshake_timeout`. Garbage (bad magic, unknown
//!    kind, oversize length, failed verification) gets a log line and a closed connection.
//!    A frame or `Hello` of another protocol version, or another token (compared in constant
//!    time), gets `Refused { reason }`, a log line and a closed connection.
//! 3. Otherwise the listener answers `HelloAck` and both sides may send anything.
//!
//! # Cancellation
//!
//! [`Connection::recv`] is cancel-safe while it waits for the first byte of a frame (the
//! usual idle state in a `select!` loop): header bytes read so far are kept. Dropping any
//! operation in the middle of a frame leaves the stream mid-frame, so the connection marks
//! itself broken and every later call returns [`TransportError::Broken`].
//!
//! # Flow
//!
//! One task drives a connection (`&mut self`). A bulk send completes only as the peer
//! receives; two peers that both send large transfers (or serve large one-sided reads) to each
//! other at the same instant without receiving can stall on full buffers, as with any
//! blocking stream: split such traffic over two connections.

use crate::config::TransportConfig;
use crate::error::{FrameError, RefusalReason, Result, TransportError};
use crate::frame::{self, FrameKind, HEADER_LEN, Header, PROTOCOL_VERSION};
use crate::link::Link;
use crate::wire;
use flatbuffers::FlatBufferBuilder;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An opaque tag the layer above attaches to a message (a method id, a channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u64);

/// An opaque id naming a bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's tag.
    pub tag: Tag,
    /// The payload, byte-exact.
    pub payload: Vec<u8>,
}

/// Memory registered on this connection for the peer to [`Connection::read`].
///
/// With TCP and shm the bytes stay in this process and reads are served by its progress
/// (inside `recv`, `read` or `progress`); an RDMA backend would register them with the NIC
/// and serve reads without involving this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    id: u64,
    len: u64,
}

impl MemoryRegion {
    /// The descriptor to send to the peer (inside a message) so it can read this region.
    pub fn remote(&self) -> RemoteRegion {
        RemoteRegion {
            id: self.id,
            len: self.len,
        }
    }

    /// Registered length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A peer's registered region, as named in a message it sent; opaque bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRegion {
    id: u64,
    len: u64,
}

impl RemoteRegion {
    /// Encoded length of [`RemoteRegion::to_bytes`].
    pub const ENCODED_LEN: usize = 16;

    /// Encodes the descriptor for a message payload.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a descriptor; `None` if `b` has the wrong length.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (id, len) = b.split_at(8);
        Some(Self {
            id: u64::from_le_bytes(id.try_into().ok()?),
            len: u64::from_le_bytes(len.try_into().ok()?),
        })
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

type RegionBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// What [`Connection::recv`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming<'c> {
    /// A message.
    Message(Message),
    /// A bulk transfer whose bytes are still on the wire: read them into memory of your choice.
    Bulk(BulkIncoming<'c>),
}

/// An announced bulk transfer. Read its bytes with [`BulkIncoming::read_into`] or
/// [`BulkIncoming::into_vec`]; if dropped unread, the next receive discards them.
#[derive(Debug)]
pub struct BulkIncoming<'c> {
    conn: &'c mut Connection,
    id: TransferId,
    len: u64,
    buffered: Option<Vec<u8>>,
}

impl BulkIncoming<'_> {
    /// The transfer's id.
    pub fn id(&self) -> TransferId {
        self.id
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Receives the bytes straight into `dst`, whose length must equal [`Self::len`]
    /// (otherwise nothing is read and `dst` is handed back in the error's place: the bytes
    /// stay pending).
    pub async fn read_into(mut self, dst: &mut [u8]) -> Result<(), BulkLenMismatch> {
        if dst.len() as u64 != self.len {
            return Err(BulkLenMismatch::Length {
                expected: self.len,
                got: dst.len(),
            });
        }
        if let Some(b) = self.buffered.take() {
            dst.copy_from_slice(&b);
            return Ok(());
        }
        self.conn.bulk_remaining = 0;
        self.conn.guard()?;
        self.conn.read_chunks_into(dst).await?;
        self.conn.broken = false;
        Ok(())
    }

    /// Receives the bytes into a new vector.
    pub async fn into_vec(mut self) -> Result<Vec<u8>> {
        if let Some(b) = self.buffered.take() {
            return Ok(b);
        }
        let mut v = vec![0u8; self.len as usize];
        self.read_into(&mut v).await.map_err(|e| match e {
            BulkLenMismatch::Transport(t) => t,
            BulkLenMismatch::Length { .. } => unreachable_len(),
        })?;
        Ok(v)
    }
}

fn unreachable_len() -> TransportError {
    TransportError::Broken {
        peer: "length mismatch on a vector sized to the transfer".into(),
    }
}

/// Error of [`BulkIncoming::read_into`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkLenMismatch {
    /// `dst` has the wrong length; nothing was read.
    #[error("bulk transfer is {expected} bytes, destination is {got}")]
    Length {
        /// The transfer's length.
        expected: u64,
        /// The destination's length.
        got: usize,
    },
    /// Receiving failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What `next_event` found.
enum Event {
    Message(Message),
    Bulk(TransferId, u64),
    ReadResponse(wire::ReadResponse),
}

/// A connection to one peer, after a successful handshake.
pub struct Connection {
    link: Link,
    peer: String,
    peer_name: String,
    max_frame_len: u32,
    chunk_len: usize,
    max_bulk_len: u64,
    fbb: FlatBufferBuilder<'static>,
    /// Header bytes of the next frame read so far (kept across cancellation).
    hdr: [u8; HEADER_LEN],
    hdr_filled: usize,
    /// Messages and bulk transfers received while waiting for something else.
    inbox: VecDeque<Queued>,
    /// A bulk transfer announced to `progress` but not yet handed to `recv`.
    pending_bulk: Option<(TransferId, u64)>,
    /// Bytes of chunks to discard before the next frame (an unread bulk transfer).
    bulk_remaining: u64,
    regions: HashMap<u64, Registered>,
    next_region: u64,
    next_request: u64,
    broken: bool,
}

#[derive(Debug)]
enum Queued {
    Message(Message),
    Bulk(TransferId, Vec<u8>),
}

/// Registered bytes (a newtype so the connection can be `Debug`).
#[derive(Clone)]
struct Registered(RegionBytes);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} registered bytes>", (*self.0).as_ref().len())
    }
}

fn malformed(peer: &str, problem: FrameError) -> TransportError {
    TransportError::Malformed {
        peer: peer.to_owned(),
        problem,
    }
}

fn kind_name(k: FrameKind) -> &'static str {
    match k {
        FrameKind::Hello => "Hello",
        FrameKind::HelloAck => "HelloAck",
        FrameKind::Refused => "Refused",
        FrameKind::Message => "Message",
        FrameKind::BulkBegin => "BulkBegin",
        FrameKind::BulkChunk => "BulkChunk",
        FrameKind::ReadRequest => "ReadRequest",
        FrameKind::ReadResponse => "ReadResponse",
    }
}

fn unexpected(peer: &str, k: FrameKind, context: &'static str) -> TransportError {
    malformed(
        peer,
        FrameError::Unexpected {
            kind: kind_name(k),
            context,
        },
    )
}

/// Constant-time equality, so a token's prefix cannot be found by timing refusals.
fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("link", &self.link)
            .field("peer", &self.peer)
            .field("peer_name", &self.peer_name)
            .field("queued", &self.inbox.len())
            .field("regions", &self.regions.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(link: Link, peer: String, cfg: &TransportConfig) -> Self {
        Self {
            link,
            peer,
            peer_name: String::new(),
            max_frame_len: cfg.max_frame_len,
            chunk_len: cfg.chunk_len(),
            max_bulk_len: cfg.max_bulk_len,
            fbb: FlatBufferBuilder::with_capacity(256),
            hdr: [0; HEADER_LEN],
            hdr_filled: 0,
            inbox: VecDeque::new(),
            pending_bulk: None,
            bulk_remaining: 0,
            regions: HashMap::new(),
            next_region: 1,
            next_request: 1,
            broken: false,
        }
    }

    /// The peer's address (`ip:port`, or `shm:<path>`).
    pub fn peer_addr(&self) -> &str {
        &self.peer
    }

    /// The name the peer gave in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    // ----- handshake -------------------------------------------------------------------

    /// Connector side of the handshake (steps 1 and 3).
    pub(crate) async fn client_handshake(
        link: Link,
        peer: String,
        cfg: &TransportConfig,
    ) -> Result<Self> {
        let mut c = Self::new(link, peer, cfg);
        let fut = async {
            let hello = wire::build_hello(
                &mut c.fbb,
                PROTOCOL_VERSION,
                &cfg.cluster_token,
                &cfg.local_name,
            )
            .to_vec();
            c.write_frame(FrameKind::Hello, &hello).await?;
            let h = c.read_header().await?;
            let payload = c.read_payload(h.len).await?;
            match h.kind {
                FrameKind::HelloAck => {
                    let (version, name) =
                        wire::parse_hello_ack(&payload).map_err(|p| malformed(&c.peer, p))?;
                    if version != PROTOCOL_VERSION || h.version != PROTOCOL_VERSION {
                        return Err(malformed(
                            &c.peer,
                            FrameError::VersionMismatch {
                                found: version,
                                expected: PROTOCOL_VERSION,
                            },
                        ));
                    }
                    c.peer_name = name;
                    Ok(())
                }
                FrameKind::Refused => {
                    let (reason, detail) =
                        wire::parse_refused(&payload).map_err(|p| malformed(&c.peer, p))?;
                    tracing::warn!(peer = %c.peer, %reason, %detail, "handshake refused by peer");
                    Err(TransportError::Refused {
                        peer: c.peer.clone(),
                        reason,
                        detail,
                    })
                }
                k => Err(unexpected(&c.peer, k, "in reply to Hello")),
            }
        };
        match tokio::time::timeout(cfg.handshake_timeout, fut).await {
            Ok(Ok(())) => Ok(c),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::HandshakeTimeout {
                peer: c.peer,
                timeout: cfg.handshake_timeout,
            }),
        }
    }

    /// Listener side of the handshake (step 2 and 3).
    pub(crate) async fn server_handshake(
        link: Link,
        peer: String,
        cfg: &TransportConfig,
    ) -> Result<Self> {
        let mut c = Self::new(link, peer, cfg);
        let timeout = cfg.handshake_timeout;
        let result = tokio::time::timeout(timeout, c.answer_hello(cfg)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => Err(TransportError::HandshakeTimeout {
                peer: c.peer.clone(),
                timeout,
            }),
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(peer = %c.peer, name = %c.peer_name, "handshake accepted");
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(peer = %c.peer, error = %e, "closing connection: handshake failed");
                let _ = tokio::time::timeout(timeout, c.link.shutdown()).await;
                Err(e)
            }
        }
    }

    async fn answer_hello(&mut self, cfg: &TransportConfig) -> Result<()> {
        let h = self.read_header().await?;
        if h.kind != FrameKind::Hello {
            return Err(unexpected(&self.peer, h.kind, "as the first frame"));
        }
        let payload = self.read_payload(h.len).await?;
        if h.version != PROTOCOL_VERSION {
            return self.refuse(RefusalReason::WrongVersion, h.version).await;
        }
        let hello = match wire::parse_hello(&payload) {
            Ok(hello) => hello,
            Err(p) => {
                let detail = p.to_string();
                let _ = self.send_refused(RefusalReason::Malformed, &detail).await;
                return Err(malformed(&self.peer, p));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return self
                .refuse(RefusalReason::WrongVersion, hello.protocol_version)
                .await;
        }
        if !tokens_equal(&hello.cluster_token, &cfg.cluster_token) {
            return self
                .refuse(RefusalReason::WrongToken, PROTOCOL_VERSION)
                .await;
        }
        self.peer_name = hello.peer_name;
        let ack = wire::build_hello_ack(&mut self.fbb, PROTOCOL_VERSION, &cfg.local_name).to_vec();
        self.write_frame(FrameKind::HelloAck, &ack).await
    }

    async fn send_refused(&mut self, reason: RefusalReason, detail: &str) -> Result<()> {
        let msg = wire::build_refused(&mut self.fbb, reason, detail).to_vec();
        self.write_frame(FrameKind::Refused, &msg).await
    }

    async fn refuse(&mut self, reason: RefusalReason, their_version: u16) -> Result<()> {
        let detail = match reason {
            RefusalReason::WrongVersion => {
                format!("peer speaks version {their_version}, this node {PROTOCOL_VERSION}")
            }
            _ => reason.to_string(),
        };
        // Best effort: the peer may already be gone.
        let _ = self.send_refused(reason, &detail).await;
        Err(TransportError::Rejected {
            peer: self.peer.clone(),
            reason,
        })
    }

    // ----- framing -----------------------------------------------------------------------

    fn guard(&self) -> Result<()> {
        if self.broken {
            return Err(TransportError::Broken {
                peer: self.peer.clone(),
            });
        }
        Ok(())
    }

    fn send_err(&self, source: io::Error) -> TransportError {
        TransportError::Send {
            peer: self.peer.clone(),
            source,
        }
    }

    fn recv_err(&self, source: io::Error, expected: usize, got: usize) -> TransportError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return malformed(&self.peer, FrameError::Truncated { expected, got });
        }
        if source.kind() == io::ErrorKind::InvalidData
            && let Some(p) = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<FrameError>())
        {
            return malformed(&self.peer, p.clone());
        }
        TransportError::Recv {
            peer: self.peer.clone(),
            source,
        }
    }

    /// Writes header and payload with as few copies and syscalls as the link allows.
    async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        let hdr = frame::encode(kind, payload.len() as u32);
        self.write_two(&hdr, payload).await
    }

    async fn write_two(&mut self, a: &[u8], b: &[u8]) -> Result<()> {
        let total = a.len() + b.len();
        let mut done = 0;
        while done < total {
            let bufs = if done < a.len() {
                [IoSlice::new(&a[done..]), IoSlice::new(b)]
            } else {
                [IoSlice::new(&b[done - a.len()..]), IoSlice::new(&[])]
            };
            let n = self
                .link
                .write_vectored(&bufs)
                .await
                .map_err(|e| self.send_err(e))?;
            if n == 0 {
                return Err(self.send_err(io::ErrorKind::WriteZero.into()));
            }
            done += n;
        }
        Ok(())
    }

    /// Reads the next header; cancel-safe (bytes so far are kept in `self.hdr`).
    async fn read_header(&mut self) -> Result<Header> {
        while self.hdr_filled < HEADER_LEN {
            let n = match self.link.read(&mut self.hdr[self.hdr_filled..]).await {
                Ok(n) => n,
                Err(e) => {
                    self.broken = true;
                    return Err(self.recv_err(e, HEADER_LEN, self.hdr_filled));
                }
            };
            if n == 0 {
                self.broken = true;
                if self.hdr_filled == 0 {
                    return Err(TransportError::Closed {
                        peer: self.peer.clone(),
                    });
                }
                return Err(malformed(
                    &self.peer,
                    FrameError::Truncated {
                        expected: HEADER_LEN,
                        got: self.hdr_filled,
                    },
                ));
            }
            self.hdr_filled += n;
        }
        self.hdr_filled = 0;
        frame::decode(&self.hdr, self.max_frame_len).map_err(|p| {
            self.broken = true;
            malformed(&self.peer, p)
        })
    }

    async fn read_payload(&mut self, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.link.read(&mut buf[got..]).await {
                Ok(0) => {
                    return Err(malformed(
                        &self.peer,
                        FrameError::Truncated {
                            expected: buf.len(),
                            got,
                        },
                    ));
                }
                Ok(n) => got += n,
                Err(e) => return Err(self.recv_err(e, buf.len(), got)),
            }
        }
        Ok(())
    }

    /// Reads the header of a frame that must be a version-matching `want`.
    async fn expect_frame(&mut self, want: FrameKind, context: &'static str) -> Result<Header> {
        let h = self.read_header().await?;
        self.check_version(&h)?;
        if h.kind != want {
            return Err(unexpected(&self.peer, h.kind, context));
        }
        Ok(h)
    }

    fn check_version(&self, h: &Header) -> Result<()> {
        if h.version != PROTOCOL_VERSION {
            return Err(malformed(
                &self.peer,
                FrameError::VersionMismatch {
                    found: h.version,
                    expected: PROTOCOL_VERSION,
                },
            ));
        }
        Ok(())
    }

    /// Receives `BulkChunk` frames until `dst` is full.
    async fn read_chunks_into(&mut self, dst: &mut [u8]) -> Result<()> {
        self.broken = true;
        let mut filled = 0;
        while filled < dst.len() {
            let h = self
                .expect_frame(FrameKind::BulkChunk, "inside a bulk transfer")
                .await?;
            let n = h.len as usize;
            if n == 0 || n > dst.len() - filled {
                return Err(malformed(
                    &self.peer,
                    FrameError::Unexpected {
                        kind: "BulkChunk",
                        context: "of a length overrunning its transfer",
                    },
                ));
            }
            self.read_exact(&mut dst[filled..filled + n]).await?;
            filled += n;
        }
        Ok(())
    }

    /// Discards the chunks of a bulk transfer that was dropped unread.
    async fn drain_bulk(&mut self) -> Result<()> {
        let mut scratch = vec![0u8; (self.bulk_remaining.min(self.chunk_len as u64)) as usize];
        while self.bulk_remaining > 0 {
            self.broken = true;
            let h = self
                .expect_frame(FrameKind::BulkChunk, "inside a bulk transfer")
                .await?;
            if h.len == 0 || u64::from(h.len) > self.bulk_remaining {
                return Err(unexpected(&self.peer, h.kind, "overrunning its transfer"));
            }
            scratch.resize(h.len as usize, 0);
            self.read_exact(&mut scratch).await?;
            self.bulk_remaining -= u64::from(h.len);
        }
        self.broken = false;
        Ok(())
    }

    /// Handles one frame whose header has been read. Read requests are served here.
    async fn handle_frame(&mut self, h: Header) -> Result<Option<Event>> {
        self.broken = true;
        self.check_version(&h)?;
        let payload = if h.kind == FrameKind::BulkChunk {
            return Err(unexpected(&self.peer, h.kind, "outside a bulk transfer"));
        } else {
            self.read_payload(h.len).await?
        };
        let peer = self.peer.clone();
        let event = match h.kind {
            FrameKind::Message => {
                let (tag, payload) =
                    wire::parse_envelope(&payload).map_err(|p| malformed(&peer, p))?;
                Some(Event::Message(Message {
                    tag: Tag(tag),
                    payload,
                }))
            }
            FrameKind::BulkBegin => {
                let (id, len) =
                    wire::parse_bulk_begin(&payload).map_err(|p| malformed(&peer, p))?;
                if len > self.max_bulk_len {
                    return Err(malformed(
                        &peer,
                        FrameError::BulkOversize {
                            len,
                            max: self.max_bulk_len,
                        },
                    ));
                }
                Some(Event::Bulk(TransferId(id), len))
            }
            FrameKind::ReadRequest => {
                let req = wire::parse_read_request(&payload).map_err(|p| malformed(&peer, p))?;
                self.serve_read(req).await?;
                None
            }
            FrameKind::ReadResponse => Some(Event::ReadResponse(
                wire::parse_read_response(&payload).map_err(|p| malformed(&peer, p))?,
            )),
            k => return Err(unexpected(&peer, k, "after the handshake")),
        };
        self.broken = false;
        Ok(event)
    }

    async fn next_event(&mut self) -> Result<Event> {
        self.guard()?;
        loop {
            self.drain_bulk().await?;
            let h = self.read_header().await?;
            if let Some(ev) = self.handle_frame(h).await? {
                return Ok(ev);
            }
        }
    }

    async fn serve_read(&mut self, req: wire::ReadRequest) -> Result<()> {
        let region = self.regions.get(&req.region_id).cloned();
        let range = region.as_ref().and_then(|r| {
            let bytes = (*r.0).as_ref();
            let end = req.offset.checked_add(req.len)?;
            (end <= bytes.len() as u64).then_some(req.offset as usize..end as usize)
        });
        let (Some(region), Some(range)) = (region, range) else {
            let detail = if self.regions.contains_key(&req.region_id) {
                "range outside the region"
            } else {
                "no such region"
            };
            let msg =
                wire::build_read_response(&mut self.fbb, req.request_id, false, 0, detail).to_vec();
            return self.write_frame(FrameKind::ReadResponse, &msg).await;
        };
        let msg =
            wire::build_read_response(&mut self.fbb, req.request_id, true, req.len, "").to_vec();
        self.write_frame(FrameKind::ReadResponse, &msg).await?;
        self.write_chunks(&(*region.0).as_ref()[range]).await
    }

    async fn write_chunks(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(self.chunk_len) {
            let hdr = frame::encode(FrameKind::BulkChunk, chunk.len() as u32);
            self.write_two(&hdr, chunk).await?;
        }
        Ok(())
    }

    // ----- public operations -----------------------------------------------------------

    /// Sends a message. Payloads are limited by `max_frame_len` (less a few bytes of
    /// envelope); send larger data with [`Connection::send_bulk`].
    pub async fn send(&mut self, tag: Tag, payload: &[u8]) -> Result<()> {
        self.guard()?;
        let env = wire::build_envelope(&mut self.fbb, tag.0, payload);
        if env.len() > self.max_frame_len as usize {
            return Err(TransportError::TooLarge {
                peer: self.peer.clone(),
                len: payload.len() as u64,
                max: u64::from(self.max_frame_len),
            });
        }
        let hdr = frame::encode(FrameKind::Message, env.len() as u32);
        // Move the builder out so its bytes can be borrowed across the write.
        let fbb = std::mem::replace(&mut self.fbb, FlatBufferBuilder::new());
        self.broken = true;
        let r = self.write_two(&hdr, fbb.finished_data()).await;
        self.fbb = fbb;
        r?;
        self.broken = false;
        Ok(())
    }

    /// Sends `data` as one bulk transfer, streamed from `data` in chunks of
    /// `bulk_chunk_len` (no copy into a frame buffer).
    pub async fn send_bulk(&mut self, id: TransferId, data: &[u8]) -> Result<()> {
        self.guard()?;
        if data.len() as u64 > self.max_bulk_len {
            return Err(TransportError::TooLarge {
                peer: self.peer.clone(),
                len: data.len() as u64,
                max: self.max_bulk_len,
            });
        }
        let begin = wire::build_bulk_begin(&mut self.fbb, id.0, data.len() as u64).to_vec();
        self.broken = true;
        self.write_frame(FrameKind::BulkBegin, &begin).await?;
        self.write_chunks(data).await?;
        self.broken = false;
        Ok(())
    }

    /// Receives the next message or bulk transfer, serving the peer's one-sided reads on the
    /// way. Cancel-safe while no frame has started arriving.
    pub async fn recv(&mut self) -> Result<Incoming<'_>> {
        self.guard()?;
        if let Some(q) = self.inbox.pop_front() {
            return Ok(match q {
                Queued::Message(m) => Incoming::Message(m),
                Queued::Bulk(id, data) => Incoming::Bulk(BulkIncoming {
                    id,
                    len: data.len() as u64,
                    buffered: Some(data),
                    conn: self,
                }),
            });
        }
        let (id, len) = match self.pending_bulk.take() {
            Some(p) => p,
            None => match self.next_event().await? {
                Event::Message(m) => return Ok(Incoming::Message(m)),
                Event::Bulk(id, len) => (id, len),
                Event::ReadResponse(_) => {
                    self.broken = true;
                    return Err(unexpected(
                        &self.peer,
                        FrameKind::ReadResponse,
                        "unsolicited",
                    ));
                }
            },
        };
        self.bulk_remaining = len;
        Ok(Incoming::Bulk(BulkIncoming {
            conn: self,
            id,
            len,
            buffered: None,
        }))
    }

    /// Registers `bytes` so the peer can [`read`](Connection::read) them; they stay
    /// registered (and alive) until [`deregister`](Connection::deregister) or drop.
    pub fn register(&mut self, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> MemoryRegion {
        let id = self.next_region;
        self.next_region += 1;
        let len = (*bytes).as_ref().len() as u64;
        self.regions.insert(id, Registered(bytes));
        MemoryRegion { id, len }
    }

    /// Withdraws a registration; later reads of it fail on the peer's side. Returns whether
    /// it was registered.
    pub fn deregister(&mut self, region: MemoryRegion) -> bool {
        self.regions.remove(&region.id).is_some()
    }

    /// One-sided read: copies `dst.len()` bytes at `offset` of the peer's `remote` region
    /// into `dst`. TCP and shm implement it as a request the peer's progress answers; an RDMA
    /// backend would issue an RDMA READ. Messages and transfers that arrive meanwhile are
    /// queued for [`recv`](Connection::recv). Not cancel-safe.
    pub async fn read(&mut self, remote: &RemoteRegion, offset: u64, dst: &mut [u8]) -> Result<()> {
        self.guard()?;
        let len = dst.len() as u64;
        if len > self.max_bulk_len {
            return Err(TransportError::TooLarge {
                peer: self.peer.clone(),
                len,
                max: self.max_bulk_len,
            });
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let req = wire::ReadRequest {
            request_id,
            region_id: remote.id,
            offset,
            len,
        };
        let msg = wire::build_read_request(&mut self.fbb, req).to_vec();
        self.broken = true;
        self.write_frame(FrameKind::ReadRequest, &msg).await?;
        self.broken = false;
        loop {
            if let Some((id, len)) = self.pending_bulk.take() {
                self.queue_bulk(id, len).await?;
            }
            match self.next_event().await? {
                Event::Message(m) => self.inbox.push_back(Queued::Message(m)),
                Event::Bulk(id, len) => self.queue_bulk(id, len).await?,
                Event::ReadResponse(r) => {
                    if r.request_id != request_id || (r.ok && r.len != len) {
                        self.broken = true;
                        return Err(unexpected(
                            &self.peer,
                            FrameKind::ReadResponse,
                            "not matching the outstanding read",
                        ));
                    }
                    if !r.ok {
                        return Err(TransportError::RemoteRead {
                            peer: self.peer.clone(),
                            region: remote.id,
                            offset,
                            len,
                            detail: r.detail,
                        });
                    }
                    self.read_chunks_into(dst).await?;
                    self.broken = false;
                    return Ok(());
                }
            }
        }
    }

    async fn queue_bulk(&mut self, id: TransferId, len: u64) -> Result<()> {
        let mut data = vec![0u8; len as usize];
        self.read_chunks_into(&mut data).await?;
        self.broken = false;
        self.inbox.push_back(Queued::Bulk(id, data));
        Ok(())
    }

    /// Handles every frame that has already started to arrive, without waiting for new ones:
    /// serves the peer's one-sided reads and queues messages for [`recv`](Connection::recv)
    /// (it stops at a bulk transfer, which `recv` hands out). Returns the frames handled.
    /// A process that registered memory must call this (or `recv`) for reads to be served.
    pub async fn progress(&mut self) -> Result<usize> {
        self.guard()?;
        self.drain_bulk().await?;
        let mut handled = 0;
        while self.pending_bulk.is_none() {
            if self.hdr_filled == 0 {
                match self.link.try_read(&mut self.hdr) {
                    Ok(0) => {
                        self.broken = true;
                        return Err(TransportError::Closed {
                            peer: self.peer.clone(),
                        });
                    }
                    Ok(n) => self.hdr_filled = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.broken = true;
                        return Err(self.recv_err(e, HEADER_LEN, 0));
                    }
                }
            }
            let h = self.read_header().await?;
            handled += 1;
            match self.handle_frame(h).await? {
                None => {}
                Some(Event::Message(m)) => self.inbox.push_back(Queued::Message(m)),
                Some(Event::Bulk(id, len)) => self.pending_bulk = Some((id, len)),
                Some(Event::ReadResponse(_)) => {
                    self.broken = true;
                    return Err(unexpected(
                        &self.peer,
                        FrameKind::ReadResponse,
                        "unsolicited",
                    ));
                }
            }
        }
        Ok(handled)
    }

    /// Closes the connection: the peer's next receive reports [`TransportError::Closed`].
    pub async fn close(mut self) -> Result<()> {
        self.link.shutdown().await.map_err(|e| self.send_err(e))
    }
}
