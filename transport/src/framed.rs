//! The frame code, as two independent sides: [`FrameReader`] (headers, payloads, bulk chunks,
//! discarding unread transfers) and [`FrameWriter`] (messages, batches, bulk transfers).
//! [`Connection`](crate::Connection) composes one of each; [`RecvHalf`](crate::RecvHalf) and
//! [`SendHalf`](crate::SendHalf) each own one.
//!
//! Each side has its own `broken` flag: it is set before a frame is started and cleared when
//! the frame is complete, so an operation dropped mid-frame leaves it set and every later call
//! on that side returns [`TransportError::Broken`].

use crate::config::TransportConfig;
use crate::connection::{Message, Tag, TransferId};
use crate::error::{FrameError, Result, TransportError};
use crate::frame::{self, FrameKind, HEADER_LEN, Header, PROTOCOL_VERSION};
use crate::link::{LinkReader, LinkWriter};
use crate::wire;
use flatbuffers::FlatBufferBuilder;
use std::io::{self, IoSlice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) fn malformed(peer: &str, problem: FrameError) -> TransportError {
    TransportError::Malformed {
        peer: peer.to_owned(),
        problem,
    }
}

fn kind_name(k: FrameKind) -> &'static str {
    match k {
        FrameKind::Hello => "Hello",
        FrameKind::HelloAck => "HelloAck",
        FrameKind::Challenge => "Challenge",
        FrameKind::Proof => "Proof",
        FrameKind::Refused => "Refused",
        FrameKind::Message => "Message",
        FrameKind::BulkBegin => "BulkBegin",
        FrameKind::BulkChunk => "BulkChunk",
        FrameKind::ReadRequest => "ReadRequest",
        FrameKind::ReadResponse => "ReadResponse",
    }
}

pub(crate) fn unexpected(peer: &str, k: FrameKind, context: &'static str) -> TransportError {
    malformed(
        peer,
        FrameError::Unexpected {
            kind: kind_name(k),
            context,
        },
    )
}

/// A complete frame after the handshake, as the reading side decoded it.
pub(crate) enum Frame {
    Message(Message),
    /// A bulk transfer was announced; its chunks follow (see `FrameReader::bulk_remaining`).
    Bulk(TransferId, u64),
    ReadRequest(wire::ReadRequest),
    ReadResponse(wire::ReadResponse),
}

/// The reading side of a connection.
#[derive(Debug)]
pub(crate) struct FrameReader {
    link: LinkReader,
    pub(crate) peer: String,
    max_frame_len: u32,
    chunk_len: usize,
    max_bulk_len: u64,
    /// Header bytes of the next frame read so far (kept across cancellation).
    hdr: [u8; HEADER_LEN],
    hdr_filled: usize,
    /// Bytes of chunks to discard before the next frame (an unread bulk transfer).
    pub(crate) bulk_remaining: u64,
    pub(crate) broken: bool,
}

impl FrameReader {
    pub(crate) fn new(link: LinkReader, peer: String, cfg: &TransportConfig) -> Self {
        Self {
            link,
            peer,
            max_frame_len: cfg.max_frame_len,
            chunk_len: cfg.chunk_len(),
            max_bulk_len: cfg.max_bulk_len,
            hdr: [0; HEADER_LEN],
            hdr_filled: 0,
            bulk_remaining: 0,
            broken: false,
        }
    }

    pub(crate) fn guard(&self) -> Result<()> {
        if self.broken {
            return Err(TransportError::Broken {
                peer: self.peer.clone(),
            });
        }
        Ok(())
    }

    /// Largest bulk transfer or one-sided read accepted.
    pub(crate) fn max_bulk_len(&self) -> u64 {
        self.max_bulk_len
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

    /// Reads the next header; cancel-safe (bytes so far are kept in `self.hdr`).
    pub(crate) async fn read_header(&mut self) -> Result<Header> {
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

    /// Starts a frame without waiting: `Ok(true)` if header bytes are (or were already)
    /// buffered, `Ok(false)` if nothing has arrived.
    pub(crate) fn try_start_frame(&mut self) -> Result<bool> {
        if self.hdr_filled > 0 {
            return Ok(true);
        }
        match self.link.try_read(&mut self.hdr) {
            Ok(0) => {
                self.broken = true;
                Err(TransportError::Closed {
                    peer: self.peer.clone(),
                })
            }
            Ok(n) => {
                self.hdr_filled = n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => {
                self.broken = true;
                Err(self.recv_err(e, HEADER_LEN, 0))
            }
        }
    }

    pub(crate) async fn read_payload(&mut self, len: u32) -> Result<Vec<u8>> {
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

    /// Reads the header of a frame that must be a version-matching `BulkChunk`.
    async fn expect_chunk(&mut self) -> Result<Header> {
        let h = self.read_header().await?;
        self.check_version(&h)?;
        if h.kind != FrameKind::BulkChunk {
            return Err(unexpected(&self.peer, h.kind, "inside a bulk transfer"));
        }
        Ok(h)
    }

    /// Receives `BulkChunk` frames until `dst` is full. Leaves `broken` set: the caller
    /// clears it once the whole operation is complete.
    pub(crate) async fn read_chunks_into(&mut self, dst: &mut [u8]) -> Result<()> {
        self.broken = true;
        let mut filled = 0;
        while filled < dst.len() {
            let h = self.expect_chunk().await?;
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
    pub(crate) async fn drain_bulk(&mut self) -> Result<()> {
        let mut scratch = vec![0u8; (self.bulk_remaining.min(self.chunk_len as u64)) as usize];
        while self.bulk_remaining > 0 {
            self.broken = true;
            let h = self.expect_chunk().await?;
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

    /// Decodes one frame whose header has been read. A `Bulk` frame leaves its chunks on the
    /// wire for the caller.
    pub(crate) async fn read_body(&mut self, h: Header) -> Result<Frame> {
        self.broken = true;
        self.check_version(&h)?;
        if h.kind == FrameKind::BulkChunk {
            return Err(unexpected(&self.peer, h.kind, "outside a bulk transfer"));
        }
        let payload = self.read_payload(h.len).await?;
        let peer = &self.peer;
        let frame = match h.kind {
            FrameKind::Message => {
                let (tag, payload) =
                    wire::parse_envelope(&payload).map_err(|p| malformed(peer, p))?;
                Frame::Message(Message {
                    tag: Tag(tag),
                    payload,
                })
            }
            FrameKind::BulkBegin => {
                let (id, len) = wire::parse_bulk_begin(&payload).map_err(|p| malformed(peer, p))?;
                if len > self.max_bulk_len {
                    return Err(malformed(
                        peer,
                        FrameError::BulkOversize {
                            len,
                            max: self.max_bulk_len,
                        },
                    ));
                }
                Frame::Bulk(TransferId(id), len)
            }
            FrameKind::ReadRequest => Frame::ReadRequest(
                wire::parse_read_request(&payload).map_err(|p| malformed(peer, p))?,
            ),
            FrameKind::ReadResponse => Frame::ReadResponse(
                wire::parse_read_response(&payload).map_err(|p| malformed(peer, p))?,
            ),
            k => return Err(unexpected(peer, k, "after the handshake")),
        };
        self.broken = false;
        Ok(frame)
    }

    /// Discards any unread bulk transfer, then reads the next frame. Cancel-safe while it
    /// waits for the first byte of the frame.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame> {
        self.guard()?;
        self.drain_bulk().await?;
        let h = self.read_header().await?;
        self.read_body(h).await
    }
}

/// The writing side of a connection.
pub(crate) struct FrameWriter {
    link: LinkWriter,
    pub(crate) peer: String,
    max_frame_len: u32,
    chunk_len: usize,
    max_bulk_len: u64,
    pub(crate) fbb: FlatBufferBuilder<'static>,
    /// Reused buffer of [`FrameWriter::send_batch`].
    batch: Vec<u8>,
    pub(crate) broken: bool,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("link", &self.link)
            .field("peer", &self.peer)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Largest batch buffer kept between calls of `send_batch`.
const BATCH_KEEP: usize = 1 << 20;

impl FrameWriter {
    pub(crate) fn new(link: LinkWriter, peer: String, cfg: &TransportConfig) -> Self {
        Self {
            link,
            peer,
            max_frame_len: cfg.max_frame_len,
            chunk_len: cfg.chunk_len(),
            max_bulk_len: cfg.max_bulk_len,
            fbb: FlatBufferBuilder::with_capacity(256),
            batch: Vec::new(),
            broken: false,
        }
    }

    pub(crate) fn guard(&self) -> Result<()> {
        if self.broken {
            return Err(TransportError::Broken {
                peer: self.peer.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn send_err(&self, source: io::Error) -> TransportError {
        TransportError::Send {
            peer: self.peer.clone(),
            source,
        }
    }

    fn too_large(&self, len: u64, max: u64) -> TransportError {
        TransportError::TooLarge {
            peer: self.peer.clone(),
            len,
            max,
        }
    }

    /// Writes header and payload with as few copies and syscalls as the link allows.
    pub(crate) async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        let hdr = frame::encode(kind, payload.len() as u32);
        self.write_two(&hdr, payload).await
    }

    async fn write_two(&mut self, a: &[u8], b: &[u8]) -> Result<()> {
        write_two(&mut self.link, &self.peer, a, b).await
    }

    pub(crate) async fn write_chunks(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(self.chunk_len) {
            let hdr = frame::encode(FrameKind::BulkChunk, chunk.len() as u32);
            self.write_two(&hdr, chunk).await?;
        }
        Ok(())
    }

    /// Sends one message (see [`Connection::send`](crate::Connection::send)).
    pub(crate) async fn send(&mut self, tag: Tag, payload: &[u8]) -> Result<()> {
        self.guard()?;
        let env = wire::build_envelope(&mut self.fbb, tag.0, payload);
        if env.len() > self.max_frame_len as usize {
            return Err(self.too_large(payload.len() as u64, u64::from(self.max_frame_len)));
        }
        let hdr = frame::encode(FrameKind::Message, env.len() as u32);
        self.broken = true;
        write_two(&mut self.link, &self.peer, &hdr, self.fbb.finished_data()).await?;
        self.broken = false;
        Ok(())
    }

    /// Sends several messages as consecutive frames assembled in one buffer and written with
    /// as few syscalls as the link allows. Every message is checked against `max_frame_len`
    /// before anything is written, so a too-large one sends none of them.
    pub(crate) async fn send_batch(&mut self, msgs: &[(Tag, &[u8])]) -> Result<()> {
        self.guard()?;
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for (tag, payload) in msgs {
            let env = wire::build_envelope(&mut self.fbb, tag.0, payload);
            if env.len() > self.max_frame_len as usize {
                self.batch = batch;
                return Err(self.too_large(payload.len() as u64, u64::from(self.max_frame_len)));
            }
            batch.extend_from_slice(&frame::encode(FrameKind::Message, env.len() as u32));
            batch.extend_from_slice(env);
        }
        self.broken = true;
        let r = write_two(&mut self.link, &self.peer, &batch, &[]).await;
        batch.clear();
        batch.shrink_to(BATCH_KEEP);
        self.batch = batch;
        r?;
        self.broken = false;
        Ok(())
    }

    /// Sends `data` as one bulk transfer, streamed from `data` in chunks.
    pub(crate) async fn send_bulk(&mut self, id: TransferId, data: &[u8]) -> Result<()> {
        self.guard()?;
        if data.len() as u64 > self.max_bulk_len {
            return Err(self.too_large(data.len() as u64, self.max_bulk_len));
        }
        let begin = wire::build_bulk_begin(&mut self.fbb, id.0, data.len() as u64).to_vec();
        self.broken = true;
        self.write_frame(FrameKind::BulkBegin, &begin).await?;
        self.write_chunks(data).await?;
        self.broken = false;
        Ok(())
    }

    /// Shuts the writing direction down: the peer's next receive reports `Closed`.
    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        self.link.shutdown().await.map_err(|e| self.send_err(e))
    }
}

/// Writes `a` then `b` completely, vectored where the link supports it.
async fn write_two(link: &mut LinkWriter, peer: &str, a: &[u8], b: &[u8]) -> Result<()> {
    let send_err = |source| TransportError::Send {
        peer: peer.to_owned(),
        source,
    };
    let total = a.len() + b.len();
    let mut done = 0;
    while done < total {
        let bufs = if done < a.len() {
            [IoSlice::new(&a[done..]), IoSlice::new(b)]
        } else {
            [IoSlice::new(&b[done - a.len()..]), IoSlice::new(&[])]
        };
        let n = link.write_vectored(&bufs).await.map_err(send_err)?;
        if n == 0 {
            return Err(send_err(io::ErrorKind::WriteZero.into()));
        }
        done += n;
    }
    Ok(())
}
