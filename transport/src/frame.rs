//! The fixed frame header, encoded and decoded without I/O.
//!
//! Every frame on a connection (TCP stream or shm ring) is a 16-byte little-endian header
//! followed by `len` payload bytes:
//!
//! | bytes | field    | rule                                                        |
//! |-------|----------|-------------------------------------------------------------|
//! | 0..4  | magic    | `b"MNTA"`; anything else is garbage and closes the connection |
//! | 4..6  | version  | [`PROTOCOL_VERSION`]; a Hello of another version is refused   |
//! | 6     | kind     | a [`FrameKind`]; unknown kinds close the connection          |
//! | 7     | flags    | no flag is defined yet: must be 0                            |
//! | 8..12 | len      | payload length, at most the configured `max_frame_len`       |
//! | 12..16| reserved | must be 0                                                    |
//!
//! The length is checked before any payload buffer is allocated, so an oversize length costs
//! the receiver nothing but the 16 header bytes.

use crate::error::FrameError;

/// Version of the wire protocol spoken by this build. Peers must match exactly.
pub const PROTOCOL_VERSION: u16 = 2;

/// `b"MNTA"` read as a little-endian u32.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"MNTA");

/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 16;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameKind {
    /// Flatbuffer `Hello` (first frame of the connecting side).
    Hello = 1,
    /// Flatbuffer `HelloAck`.
    HelloAck = 2,
    /// Flatbuffer `Refused`; the connection closes after it.
    Refused = 3,
    /// Flatbuffer `Envelope` carrying an opaque message.
    Message = 4,
    /// Flatbuffer `BulkBegin`; `BulkChunk` frames follow.
    BulkBegin = 5,
    /// Raw bulk bytes (no flatbuffer).
    BulkChunk = 6,
    /// Flatbuffer `ReadRequest` (one-sided read emulation).
    ReadRequest = 7,
    /// Flatbuffer `ReadResponse`; when ok, `BulkChunk` frames follow.
    ReadResponse = 8,
    /// Flatbuffer `Challenge`: the listener's nonce, in answer to `Hello`.
    Challenge = 9,
    /// Flatbuffer `Proof`: the connector's proof of the token.
    Proof = 10,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Refused,
            4 => Self::Message,
            5 => Self::BulkBegin,
            6 => Self::BulkChunk,
            7 => Self::ReadRequest,
            8 => Self::ReadResponse,
            9 => Self::Challenge,
            10 => Self::Proof,
            _ => return None,
        })
    }
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The sender's protocol version (checked by the caller: the handshake answers a mismatch
    /// with `Refused`, later frames treat it as malformed).
    pub(crate) version: u16,
    pub(crate) kind: FrameKind,
    pub(crate) len: u32,
}

/// Encodes a header for a payload of `len` bytes.
pub(crate) fn encode(kind: FrameKind, len: u32) -> [u8; HEADER_LEN] {
    encode_raw(PROTOCOL_VERSION, kind as u8, 0, len)
}

/// Encodes arbitrary header fields (tests use it to forge bad headers).
pub(crate) fn encode_raw(version: u16, kind: u8, flags: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6] = kind;
    h[7] = flags;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Decodes and validates a header against `max_len`; the version is returned, not checked.
pub(crate) fn decode(h: &[u8; HEADER_LEN], max_len: u32) -> Result<Header, FrameError> {
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    let kind = FrameKind::from_u8(h[6]).ok_or(FrameError::UnknownKind { kind: h[6] })?;
    if h[7] != 0 {
        return Err(FrameError::UnknownFlags { flags: h[7] });
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len > max_len {
        return Err(FrameError::Oversize { len, max: max_len });
    }
    if h[12..16] != [0; 4] {
        return Err(FrameError::ReservedNonZero);
    }
    Ok(Header { version, kind, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_header() {
        let h = encode(FrameKind::Message, 42);
        let d = decode(&h, 100).expect("valid");
        assert_eq!(d.kind, FrameKind::Message);
        assert_eq!(d.len, 42);
        assert_eq!(d.version, PROTOCOL_VERSION);
    }

    #[test]
    fn rejects_each_bad_field() {
        let mut h = encode(FrameKind::Message, 1);
        h[0] = b'X';
        assert!(matches!(decode(&h, 10), Err(FrameError::BadMagic { .. })));
        let h = encode_raw(PROTOCOL_VERSION, 200, 0, 1);
        assert!(matches!(
            decode(&h, 10),
            Err(FrameError::UnknownKind { kind: 200 })
        ));
        let h = encode_raw(PROTOCOL_VERSION, 4, 1, 1);
        assert!(matches!(
            decode(&h, 10),
            Err(FrameError::UnknownFlags { flags: 1 })
        ));
        let h = encode(FrameKind::Message, 11);
        assert!(matches!(
            decode(&h, 10),
            Err(FrameError::Oversize { len: 11, max: 10 })
        ));
        let mut h = encode(FrameKind::Message, 1);
        h[15] = 1;
        assert!(matches!(decode(&h, 10), Err(FrameError::ReservedNonZero)));
    }
}
