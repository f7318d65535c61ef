//! A handshaken connection: framed messages, bulk transfers, registered regions and one-sided
//! reads, and progress. The protocol logic here is shared by every backend; a backend only
//! supplies the byte pipe ([`Link`]).
//!
//! # Handshake
//!
//! Both sides prove the cluster token; it never travels (`auth.rs`).
//!
//! 1. The connector sends `Hello { protocol_version, peer_name, nonce }`.
//! 2. The listener reads one frame within `handshake_timeout`. Garbage (bad magic, unknown
//!    kind, a length over [`MAX_HELLO_LEN`] — checked before any payload is read, so an
//!    unauthenticated peer makes the listener hold no more than that — failed verification)
//!    gets a (rate-limited) log line and a closed connection. A `Hello` of another protocol
//!    version gets `Refused { reason }`. Otherwise the listener answers
//!    `Challenge { nonce }`, its own fresh nonce.
//! 3. The connector answers `Proof`, its MAC of the token over both nonces.
//! 4. A wrong proof gets `Refused { WrongToken }` (compared in constant time), a log line and
//!    a closed connection. A right one gets `HelloAck { protocol_version, peer_name, proof }`
//!    with the listener's own proof, which the connector checks: a listener that cannot make
//!    it does not hold the token ([`TransportError::Unproven`]), and the connector closes
//!    without having sent anything it holds.
//! 5. Both sides may send anything.
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
//! One task drives a connection (`&mut self`); to read and write from two tasks at once,
//! [`Connection::into_split`] it into a [`RecvHalf`](crate::RecvHalf) and a
//! [`SendHalf`](crate::SendHalf). A bulk send completes only as the peer
//! receives; two peers that both send large transfers (or serve large one-sided reads) to each
//! other at the same instant without receiving can stall on full buffers, as with any
//! blocking stream: split such traffic over two connections.

use crate::config::TransportConfig;
use crate::error::{FrameError, RefusalReason, Result, TransportError};
use crate::frame::{FrameKind, PROTOCOL_VERSION};
use crate::framed::{Frame, FrameReader, FrameWriter, malformed, unexpected};
use crate::link::{LinkReader, LinkWriter};
use crate::wire;
use manta_auth::{self as auth, Role};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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

/// What [`Connection::recv`] and [`RecvHalf::recv`](crate::RecvHalf::recv) return.
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
    reader: &'c mut FrameReader,
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
        self.reader.bulk_remaining = 0;
        self.reader.guard()?;
        self.reader.read_chunks_into(dst).await?;
        self.reader.broken = false;
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

/// Received messages and transfers held back for `recv`: those that arrived while a
/// one-sided read waited for its response, and a transfer `progress` stopped at.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queued: VecDeque<Queued>,
    /// A bulk transfer announced to `progress` but not yet handed to `recv`.
    pending_bulk: Option<(TransferId, u64)>,
}

#[derive(Debug)]
pub(crate) enum Queued {
    Message(Message),
    Bulk(TransferId, Vec<u8>),
}

/// An item taken from the [`Inbox`], not yet bound to the reader.
pub(crate) enum Held {
    Queued(Queued),
    OnWire(TransferId, u64),
}

impl Inbox {
    /// Takes the oldest held-back item, if any.
    pub(crate) fn take(&mut self) -> Option<Held> {
        if let Some(q) = self.queued.pop_front() {
            return Some(Held::Queued(q));
        }
        let (id, len) = self.pending_bulk.take()?;
        Some(Held::OnWire(id, len))
    }
}

impl Held {
    /// Hands the item out as `recv` returns it.
    pub(crate) fn into_incoming(self, reader: &mut FrameReader) -> Incoming<'_> {
        match self {
            Held::Queued(Queued::Message(m)) => Incoming::Message(m),
            Held::Queued(Queued::Bulk(id, data)) => Incoming::Bulk(BulkIncoming {
                id,
                len: data.len() as u64,
                buffered: Some(data),
                reader,
            }),
            Held::OnWire(id, len) => bulk_on_wire(reader, id, len),
        }
    }
}

/// Hands out a bulk transfer whose chunks are next on the wire.
pub(crate) fn bulk_on_wire(reader: &mut FrameReader, id: TransferId, len: u64) -> Incoming<'_> {
    reader.bulk_remaining = len;
    Incoming::Bulk(BulkIncoming {
        reader,
        id,
        len,
        buffered: None,
    })
}

/// A connection to one peer, after a successful handshake.
#[derive(Debug)]
pub struct Connection {
    reader: FrameReader,
    writer: FrameWriter,
    peer_name: String,
    inbox: Inbox,
    regions: HashMap<u64, Registered>,
    next_region: u64,
    next_request: u64,
}

/// Registered bytes (a newtype so the connection can be `Debug`).
#[derive(Clone)]
struct Registered(RegionBytes);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} registered bytes>", (*self.0).as_ref().len())
    }
}

/// Largest `Hello` payload a listener reads from a peer not yet authenticated (a token and a
/// name fit in a few hundred bytes; `max_frame_len` applies only after the handshake).
pub const MAX_HELLO_LEN: u32 = 4096;

impl Connection {
    fn new((r, w): (LinkReader, LinkWriter), peer: String, cfg: &TransportConfig) -> Self {
        Self {
            reader: FrameReader::new(r, peer.clone(), cfg),
            writer: FrameWriter::new(w, peer, cfg),
            peer_name: String::new(),
            inbox: Inbox::default(),
            regions: HashMap::new(),
            next_region: 1,
            next_request: 1,
        }
    }

    /// The peer's address (`ip:port`, or `shm:<path>`).
    pub fn peer_addr(&self) -> &str {
        &self.reader.peer
    }

    /// The name the peer gave in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Splits the connection into a receiving and a sending half that can be driven
    /// concurrently from different tasks (both are `Send + 'static`).
    ///
    /// Messages and transfers already received but not yet handed out stay with the
    /// [`RecvHalf`](crate::RecvHalf). Registered regions are dropped: a split connection does
    /// not serve the peer's one-sided reads (a `ReadRequest` arriving at the `RecvHalf` is a
    /// [`TransportError::Malformed`] error), and has no [`read`](Connection::read) of its own.
    /// A side already broken stays broken in its half.
    pub fn into_split(self) -> (crate::RecvHalf, crate::SendHalf) {
        crate::split::halves(self.reader, self.inbox, self.writer, self.peer_name)
    }

    fn guard(&self) -> Result<()> {
        self.reader.guard()?;
        self.writer.guard()
    }

    // ----- handshake -------------------------------------------------------------------

    /// Connector side of the handshake (steps 1, 3 and the check of step 4).
    pub(crate) async fn client_handshake(
        link: (LinkReader, LinkWriter),
        peer: String,
        cfg: &TransportConfig,
    ) -> Result<Self> {
        let mut c = Self::new(link, peer, cfg);
        let fut = async {
            let mine = auth::nonce().map_err(|e| TransportError::Nonce {
                peer: c.peer_addr().to_owned(),
                source: e,
            })?;
            let hello =
                wire::build_hello(&mut c.writer.fbb, PROTOCOL_VERSION, &cfg.local_name, &mine)
                    .to_vec();
            c.writer.write_frame(FrameKind::Hello, &hello).await?;
            let theirs = match c.handshake_reply().await? {
                (FrameKind::Challenge, payload) => {
                    wire::parse_challenge(&payload).map_err(|p| malformed(c.peer_addr(), p))?
                }
                (k, _) => return Err(unexpected(c.peer_addr(), k, "in reply to Hello")),
            };
            let proof = auth::prove(&cfg.cluster_token, Role::Connector, &mine, &theirs);
            let msg = wire::build_proof(&mut c.writer.fbb, &proof).to_vec();
            c.writer.write_frame(FrameKind::Proof, &msg).await?;
            match c.handshake_reply().await? {
                (FrameKind::HelloAck, payload) => {
                    let (version, name, proof) =
                        wire::parse_hello_ack(&payload).map_err(|p| malformed(c.peer_addr(), p))?;
                    if version != PROTOCOL_VERSION {
                        return Err(malformed(
                            c.peer_addr(),
                            FrameError::VersionMismatch {
                                found: version,
                                expected: PROTOCOL_VERSION,
                            },
                        ));
                    }
                    if !auth::verify(&cfg.cluster_token, Role::Listener, &mine, &theirs, &proof) {
                        tracing::warn!(peer = %c.peer_addr(), "the listener did not prove the cluster token: closing");
                        return Err(TransportError::Unproven {
                            peer: c.peer_addr().to_owned(),
                        });
                    }
                    c.peer_name = name;
                    Ok(())
                }
                (k, _) => Err(unexpected(c.peer_addr(), k, "in reply to Proof")),
            }
        };
        match tokio::time::timeout(cfg.handshake_timeout, fut).await {
            Ok(Ok(())) => Ok(c),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::HandshakeTimeout {
                peer: c.peer_addr().to_owned(),
                timeout: cfg.handshake_timeout,
            }),
        }
    }

    /// The listener's next handshake frame: `Refused` becomes the error it reports, any other
    /// kind is returned with its payload. The listener is not trusted yet, so a frame over
    /// [`MAX_HELLO_LEN`] is refused at its header, and one of another version is an error.
    async fn handshake_reply(&mut self) -> Result<(FrameKind, Vec<u8>)> {
        let h = self.reader.read_header().await?;
        let payload = self.unauthenticated_payload(h.len).await?;
        if h.kind == FrameKind::Refused {
            let (reason, detail) =
                wire::parse_refused(&payload).map_err(|p| malformed(self.peer_addr(), p))?;
            tracing::warn!(peer = %self.peer_addr(), %reason, %detail, "handshake refused by peer");
            return Err(TransportError::Refused {
                peer: self.peer_addr().to_owned(),
                reason,
                detail,
            });
        }
        if h.version != PROTOCOL_VERSION {
            return Err(malformed(
                self.peer_addr(),
                FrameError::VersionMismatch {
                    found: h.version,
                    expected: PROTOCOL_VERSION,
                },
            ));
        }
        Ok((h.kind, payload))
    }

    /// Listener side of the handshake (step 2 and 3); failures are logged through `log`.
    pub(crate) async fn server_handshake(
        link: (LinkReader, LinkWriter),
        peer: String,
        cfg: &TransportConfig,
        log: &crate::LogLimiter,
    ) -> Result<Self> {
        let mut c = Self::new(link, peer, cfg);
        let timeout = cfg.handshake_timeout;
        let result = tokio::time::timeout(timeout, c.answer_hello(cfg)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => Err(TransportError::HandshakeTimeout {
                peer: c.peer_addr().to_owned(),
                timeout,
            }),
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(peer = %c.peer_addr(), name = %c.peer_name, "handshake accepted");
                Ok(c)
            }
            Err(e) => {
                if let Some(suppressed) = log.check() {
                    tracing::warn!(peer = %c.peer_addr(), error = %e, suppressed, "closing connection: handshake failed");
                }
                let _ = tokio::time::timeout(timeout, c.writer.shutdown()).await;
                Err(e)
            }
        }
    }

    async fn answer_hello(&mut self, cfg: &TransportConfig) -> Result<()> {
        let (h, payload) = self.unauthenticated_frame(FrameKind::Hello).await?;
        if h.version != PROTOCOL_VERSION {
            return self.refuse(RefusalReason::WrongVersion, h.version).await;
        }
        let hello = match wire::parse_hello(&payload) {
            Ok(hello) => hello,
            Err(p) => {
                let detail = p.to_string();
                let _ = self.send_refused(RefusalReason::Malformed, &detail).await;
                return Err(malformed(self.peer_addr(), p));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return self
                .refuse(RefusalReason::WrongVersion, hello.protocol_version)
                .await;
        }
        let theirs = hello.nonce;
        let mine = auth::nonce().map_err(|e| TransportError::Nonce {
            peer: self.peer_addr().to_owned(),
            source: e,
        })?;
        let challenge = wire::build_challenge(&mut self.writer.fbb, &mine).to_vec();
        self.writer
            .write_frame(FrameKind::Challenge, &challenge)
            .await?;
        let (_, payload) = self.unauthenticated_frame(FrameKind::Proof).await?;
        let proof = match wire::parse_proof(&payload) {
            Ok(p) => p,
            Err(p) => {
                let detail = p.to_string();
                let _ = self.send_refused(RefusalReason::Malformed, &detail).await;
                return Err(malformed(self.peer_addr(), p));
            }
        };
        // A short connector nonce would let a peer steer the MAC: refuse it like a wrong proof.
        if theirs.len() != auth::NONCE_LEN
            || !auth::verify(&cfg.cluster_token, Role::Connector, &theirs, &mine, &proof)
        {
            return self
                .refuse(RefusalReason::WrongToken, PROTOCOL_VERSION)
                .await;
        }
        self.peer_name = hello.peer_name;
        let proof = auth::prove(&cfg.cluster_token, Role::Listener, &theirs, &mine);
        let ack = wire::build_hello_ack(
            &mut self.writer.fbb,
            PROTOCOL_VERSION,
            &cfg.local_name,
            &proof,
        )
        .to_vec();
        self.writer.write_frame(FrameKind::HelloAck, &ack).await
    }

    /// A frame of `kind` from a peer that has not proven the token: its length is checked
    /// against [`MAX_HELLO_LEN`] before any payload is read.
    async fn unauthenticated_frame(
        &mut self,
        kind: FrameKind,
    ) -> Result<(crate::frame::Header, Vec<u8>)> {
        let h = self.reader.read_header().await?;
        if h.kind != kind {
            return Err(unexpected(
                self.peer_addr(),
                h.kind,
                match kind {
                    FrameKind::Hello => "as the first frame",
                    _ => "in place of Proof",
                },
            ));
        }
        let payload = self.unauthenticated_payload(h.len).await?;
        Ok((h, payload))
    }

    /// A handshake frame's payload of `len` bytes from a peer not trusted yet: over
    /// [`MAX_HELLO_LEN`] it is refused at its header, before any byte is read.
    async fn unauthenticated_payload(&mut self, len: u32) -> Result<Vec<u8>> {
        if len > MAX_HELLO_LEN {
            self.reader.broken = true;
            return Err(malformed(
                self.peer_addr(),
                FrameError::Oversize {
                    len,
                    max: MAX_HELLO_LEN,
                },
            ));
        }
        self.reader.read_payload(len).await
    }

    async fn send_refused(&mut self, reason: RefusalReason, detail: &str) -> Result<()> {
        let msg = wire::build_refused(&mut self.writer.fbb, reason, detail).to_vec();
        self.writer.write_frame(FrameKind::Refused, &msg).await
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
            peer: self.peer_addr().to_owned(),
            reason,
        })
    }

    // ----- receiving -------------------------------------------------------------------

    /// Reads frames until a message, a bulk transfer or a read response, serving the peer's
    /// one-sided reads on the way.
    async fn next_event(&mut self) -> Result<Frame> {
        self.guard()?;
        loop {
            match self.reader.next_frame().await? {
                Frame::ReadRequest(req) => self.serve_read(req).await?,
                f => return Ok(f),
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
        let w = &mut self.writer;
        w.broken = true;
        let (Some(region), Some(range)) = (region, range) else {
            let detail = if self.regions.contains_key(&req.region_id) {
                "range outside the region"
            } else {
                "no such region"
            };
            let msg =
                wire::build_read_response(&mut w.fbb, req.request_id, false, 0, detail).to_vec();
            w.write_frame(FrameKind::ReadResponse, &msg).await?;
            w.broken = false;
            return Ok(());
        };
        let msg = wire::build_read_response(&mut w.fbb, req.request_id, true, req.len, "").to_vec();
        w.write_frame(FrameKind::ReadResponse, &msg).await?;
        w.write_chunks(&(*region.0).as_ref()[range]).await?;
        w.broken = false;
        Ok(())
    }

    // ----- public operations -----------------------------------------------------------

    /// Sends a message. Payloads are limited by `max_frame_len` (less a few bytes of
    /// envelope); send larger data with [`Connection::send_bulk`].
    pub async fn send(&mut self, tag: Tag, payload: &[u8]) -> Result<()> {
        self.reader.guard()?;
        self.writer.send(tag, payload).await
    }

    /// Sends several messages, in order, as consecutive frames assembled in one buffer and
    /// written with as few syscalls as the link allows: for throughput when many small
    /// messages are queued. Each is limited as in [`Connection::send`]; all are checked
    /// before any is written, so a too-large one sends none.
    pub async fn send_batch(&mut self, msgs: &[(Tag, &[u8])]) -> Result<()> {
        self.reader.guard()?;
        self.writer.send_batch(msgs).await
    }

    /// Sends `data` as one bulk transfer, streamed from `data` in chunks of
    /// `bulk_chunk_len` (no copy into a frame buffer).
    pub async fn send_bulk(&mut self, id: TransferId, data: &[u8]) -> Result<()> {
        self.reader.guard()?;
        self.writer.send_bulk(id, data).await
    }

    /// Receives the next message or bulk transfer, serving the peer's one-sided reads on the
    /// way. Cancel-safe while no frame has started arriving.
    pub async fn recv(&mut self) -> Result<Incoming<'_>> {
        self.guard()?;
        if let Some(h) = self.inbox.take() {
            return Ok(h.into_incoming(&mut self.reader));
        }
        match self.next_event().await? {
            Frame::Message(m) => Ok(Incoming::Message(m)),
            Frame::Bulk(id, len) => Ok(bulk_on_wire(&mut self.reader, id, len)),
            _ => {
                self.reader.broken = true;
                Err(unexpected(
                    self.peer_addr(),
                    FrameKind::ReadResponse,
                    "unsolicited",
                ))
            }
        }
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
        if len > self.reader.max_bulk_len() {
            return Err(TransportError::TooLarge {
                peer: self.peer_addr().to_owned(),
                len,
                max: self.reader.max_bulk_len(),
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
        let w = &mut self.writer;
        let msg = wire::build_read_request(&mut w.fbb, req).to_vec();
        w.broken = true;
        w.write_frame(FrameKind::ReadRequest, &msg).await?;
        w.broken = false;
        loop {
            if let Some((id, len)) = self.inbox.pending_bulk.take() {
                self.queue_bulk(id, len).await?;
            }
            match self.next_event().await? {
                Frame::Message(m) => self.inbox.queued.push_back(Queued::Message(m)),
                Frame::Bulk(id, len) => self.queue_bulk(id, len).await?,
                Frame::ReadRequest(_) => {}
                Frame::ReadResponse(r) => {
                    if r.request_id != request_id || (r.ok && r.len != len) {
                        self.reader.broken = true;
                        return Err(unexpected(
                            self.peer_addr(),
                            FrameKind::ReadResponse,
                            "not matching the outstanding read",
                        ));
                    }
                    if !r.ok {
                        return Err(TransportError::RemoteRead {
                            peer: self.peer_addr().to_owned(),
                            region: remote.id,
                            offset,
                            len,
                            detail: r.detail,
                        });
                    }
                    self.reader.read_chunks_into(dst).await?;
                    self.reader.broken = false;
                    return Ok(());
                }
            }
        }
    }

    async fn queue_bulk(&mut self, id: TransferId, len: u64) -> Result<()> {
        let mut data = vec![0u8; len as usize];
        self.reader.read_chunks_into(&mut data).await?;
        self.reader.broken = false;
        self.inbox.queued.push_back(Queued::Bulk(id, data));
        Ok(())
    }

    /// Handles every frame that has already started to arrive, without waiting for new ones:
    /// serves the peer's one-sided reads and queues messages for [`recv`](Connection::recv)
    /// (it stops at a bulk transfer, which `recv` hands out). Returns the frames handled.
    /// A process that registered memory must call this (or `recv`) for reads to be served.
    pub async fn progress(&mut self) -> Result<usize> {
        self.guard()?;
        self.reader.drain_bulk().await?;
        let mut handled = 0;
        while self.inbox.pending_bulk.is_none() && self.reader.try_start_frame()? {
            let h = self.reader.read_header().await?;
            handled += 1;
            match self.reader.read_body(h).await? {
                Frame::ReadRequest(req) => self.serve_read(req).await?,
                Frame::Message(m) => self.inbox.queued.push_back(Queued::Message(m)),
                Frame::Bulk(id, len) => self.inbox.pending_bulk = Some((id, len)),
                Frame::ReadResponse(_) => {
                    self.reader.broken = true;
                    return Err(unexpected(
                        self.peer_addr(),
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
        self.writer.shutdown().await
    }
}
