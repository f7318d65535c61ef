//! The crate's error type: one variant per failing operation, each naming the peer.

use std::io;
use std::time::Duration;

/// Result of transport operations.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// Why a handshake was refused (sent in the `Refused` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The peer presented another cluster token.
    WrongToken,
    /// The peer speaks another protocol version.
    WrongVersion,
    /// The peer's first frame was not a valid `Hello`.
    Malformed,
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WrongToken => "wrong cluster token",
            Self::WrongVersion => "protocol version mismatch",
            Self::Malformed => "malformed hello",
        })
    }
}

/// What was wrong with bytes received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header did not start with the magic bytes (garbage, or not a Manta peer).
    #[error("bad magic {found:#010x}")]
    BadMagic {
        /// The four bytes found, little-endian.
        found: u32,
    },
    /// The header's kind byte names no known frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The header has flag bits this version does not define.
    #[error("unknown flags {flags:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
    },
    /// The header's reserved bytes are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedNonZero,
    /// The declared payload length exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Declared length.
        len: u32,
        /// Configured `max_frame_len`.
        max: u32,
    },
    /// A bulk transfer declared more bytes than the configured maximum.
    #[error("bulk transfer of {len} bytes exceeds the maximum of {max}")]
    BulkOversize {
        /// Declared length.
        len: u64,
        /// Configured `max_bulk_len`.
        max: u64,
    },
    /// A frame after the handshake carried another protocol version.
    #[error("frame of protocol version {found}, expected {expected}")]
    VersionMismatch {
        /// The version found.
        found: u16,
        /// Our version.
        expected: u16,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed.
        expected: usize,
        /// Bytes received before the end.
        got: usize,
    },
    /// The payload failed flatbuffers verification.
    #[error("invalid {table} flatbuffer: {detail}")]
    InvalidFlatbuffer {
        /// The table expected.
        table: &'static str,
        /// The verifier's message.
        detail: String,
    },
    /// A valid frame arrived where the protocol does not allow it.
    #[error("unexpected {kind} frame {context}")]
    Unexpected {
        /// The frame kind found.
        kind: &'static str,
        /// Where it arrived.
        context: &'static str,
    },
    /// The shared-memory ring's indices are inconsistent (a misbehaving peer).
    #[error("shared-memory ring corrupt: {detail}")]
    RingCorrupt {
        /// Which check failed.
        detail: &'static str,
    },
}

/// A failed transport operation. Every variant names the peer; the connection it happened on
/// is closed (except [`TransportError::RemoteRead`], which leaves it usable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("accept on {addr} failed: {source}")]
    Accept {
        /// The listener's address.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// Connecting failed (refused, unreachable, timed out).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// Setting up the shared-memory segment with a peer failed.
    #[error("shared-memory setup with {peer} failed: {detail}")]
    ShmSetup {
        /// The peer's address.
        peer: String,
        /// What failed.
        detail: String,
    },
    /// The handshake did not complete in time.
    #[error("handshake with {peer} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        peer: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The peer refused our handshake.
    #[error("{peer} refused the handshake: {reason} ({detail})")]
    Refused {
        /// The peer's address.
        peer: String,
        /// The reason it gave.
        reason: RefusalReason,
        /// Its detail text.
        detail: String,
    },
    /// The listener did not prove the cluster token: another cluster's peer, or an impostor
    /// on a port a peer used to hold. Nothing the connector holds was sent to it.
    #[error("{peer} did not prove the cluster token: not a peer of this cluster (closed)")]
    Unproven {
        /// The listener's address.
        peer: String,
    },
    /// The OS gave no random bytes for a handshake nonce.
    #[error("handshake with {peer}: no random nonce from the OS: {source}")]
    Nonce {
        /// The peer's address.
        peer: String,
        /// The OS error.
        source: io::Error,
    },
    /// We refused the peer's handshake (it was told why, and the connection closed).
    #[error("refused handshake from {peer}: {reason}")]
    Rejected {
        /// The peer's address.
        peer: String,
        /// Why.
        reason: RefusalReason,
    },
    /// The peer sent bytes that break the protocol.
    #[error("malformed input from {peer}: {problem}")]
    Malformed {
        /// The peer's address.
        peer: String,
        /// What was wrong.
        problem: FrameError,
    },
    /// Sending to the peer failed.
    #[error("send to {peer} failed: {source}")]
    Send {
        /// The peer's address.
        peer: String,
        /// The OS error.
        source: io::Error,
    },
    /// Receiving from the peer failed.
    #[error("receive from {peer} failed: {source}")]
    Recv {
        /// The peer's address.
        peer: String,
        /// The OS error.
        source: io::Error,
    },
    /// The peer closed the connection cleanly, between frames.
    #[error("{peer} closed the connection")]
    Closed {
        /// The peer's address.
        peer: String,
    },
    /// A message or transfer we were asked to send exceeds the configured limits.
    #[error("cannot send {len} bytes to {peer}: limit is {max}")]
    TooLarge {
        /// The peer's address.
        peer: String,
        /// Length asked for.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The peer could not serve a one-sided read (unknown region, out of range).
    #[error("read of region {region} at {offset}+{len} from {peer} failed: {detail}")]
    RemoteRead {
        /// The peer's address.
        peer: String,
        /// The remote region id.
        region: u64,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The peer's reason.
        detail: String,
    },
    /// An earlier operation failed or was cancelled mid-frame; the connection is unusable.
    #[error("connection to {peer} is broken by an earlier error or cancellation")]
    Broken {
        /// The peer's address.
        peer: String,
    },
}
