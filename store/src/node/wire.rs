//! The node arena's wire formats: the hello that travels with the memfd, and the fixed-size
//! little-endian request and reply frames after it. Pure functions; no I/O.
//!
//! # Hello (sent with the memfd, `SCM_RIGHTS`)
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"MNAR"` as a little-endian `u32` ([`MAGIC`]) |
//! | 4 | version ([`VERSION`], 1) |
//! | 1 | page kind: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB |
//! | 8 | arena length in bytes |
//! | 8 | granule in bytes |
//! | 4 | span count `n` (1 to [`MAX_SPANS`]) |
//! | 20 × n | per span: NUMA node `u32` (`u32::MAX`: unbound), offset `u64`, length `u64` |
//!
//! # Request (24 bytes)
//! op `u32` (1 = grant, 2 = give back), 4 zero bytes, `a: u64`, `b: u64`. Grant: `a` = bytes
//! wanted (> 0), `b` = preferred NUMA node or `u64::MAX`. Give back: `a` = offset, `b` = length.
//!
//! # Reply (40 bytes)
//! status `u32` (0 ok, 1 no room, 2 refused or bad request), 4 zero bytes, offset `u64`,
//! length `u64`, node granted bytes `u64`, node capacity bytes `u64` (the last two after the
//! request took effect, whatever the status).

use crate::arena::PageKind;

/// The hello's magic number.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"MNAR");
/// The protocol version this build speaks.
pub(crate) const VERSION: u32 = 1;
/// Most NUMA spans a hello describes.
pub(crate) const MAX_SPANS: usize = 256;
/// Hello bytes before the spans.
const HELLO_HEAD: usize = 4 + 4 + 1 + 8 + 8 + 4;
/// Bytes per span in the hello.
const HELLO_SPAN: usize = 4 + 8 + 8;
/// The largest hello.
pub(crate) const HELLO_MAX: usize = HELLO_HEAD + MAX_SPANS * HELLO_SPAN;
/// Request frame length.
pub(crate) const REQUEST_LEN: usize = 24;
/// Reply frame length.
pub(crate) const REPLY_LEN: usize = 40;

/// The node arena's description, as a client needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) page_kind: PageKind,
    pub(crate) arena_len: u64,
    pub(crate) granule: u64,
    /// `(node, offset, len)` per span, address order; node `None`: unbound.
    pub(crate) spans: Vec<(Option<u32>, u64, u64)>,
}

fn kind_byte(kind: PageKind) -> u8 {
    match kind {
        PageKind::Small4KiB => 0,
        PageKind::Huge2MiB => 1,
        PageKind::Huge1GiB => 2,
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Hello {
    /// The wire form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_HEAD + self.spans.len() * HELLO_SPAN);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(kind_byte(self.page_kind));
        out.extend_from_slice(&self.arena_len.to_le_bytes());
        out.extend_from_slice(&self.granule.to_le_bytes());
        out.extend_from_slice(&(self.spans.len() as u32).to_le_bytes());
        for &(node, offset, len) in &self.spans {
            out.extend_from_slice(&node.unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        out
    }

    /// How many bytes the hello whose first bytes are `head` has in all, once its head (the
    /// fixed part) has arrived.
    pub(crate) fn total_len(head: &[u8]) -> Option<usize> {
        let n = u32_at(head, HELLO_HEAD - 4)? as usize;
        (1..=MAX_SPANS)
            .contains(&n)
            .then_some(HELLO_HEAD + n * HELLO_SPAN)
    }

    /// Bytes of the fixed part.
    pub(crate) const HEAD_LEN: usize = HELLO_HEAD;

    /// Parses and validates a hello: known magic, version and page kind; a granule that is a
    /// non-zero multiple of the page; spans in address order, inside the arena, not
    /// overlapping.
    pub(crate) fn decode(b: &[u8]) -> Result<Hello, &'static str> {
        if u32_at(b, 0) != Some(MAGIC) {
            return Err("not a node arena hello (bad magic)");
        }
        if u32_at(b, 4) != Some(VERSION) {
            return Err("unsupported node arena protocol version");
        }
        let page_kind = match b.get(8) {
            Some(0) => PageKind::Small4KiB,
            Some(1) => PageKind::Huge2MiB,
            Some(2) => PageKind::Huge1GiB,
            _ => return Err("unknown page kind"),
        };
        let arena_len = u64_at(b, 9).ok_or("hello truncated")?;
        let granule = u64_at(b, 17).ok_or("hello truncated")?;
        let total = Hello::total_len(b).ok_or("bad span count")?;
        if b.len() != total {
            return Err("hello length does not match its span count");
        }
        let page = page_kind.page_size() as u64;
        if granule == 0 || !granule.is_multiple_of(page) || arena_len == 0 {
            return Err("granule is not a whole number of pages");
        }
        let mut spans = Vec::new();
        let mut end = 0u64;
        for i in 0..(total - HELLO_HEAD) / HELLO_SPAN {
            let at = HELLO_HEAD + i * HELLO_SPAN;
            let node = u32_at(b, at).ok_or("hello truncated")?;
            let offset = u64_at(b, at + 4).ok_or("hello truncated")?;
            let len = u64_at(b, at + 12).ok_or("hello truncated")?;
            let span_end = offset.checked_add(len).ok_or("span overflows")?;
            if offset < end || span_end > arena_len {
                return Err("spans overlap or leave the arena");
            }
            end = span_end;
            spans.push(((node != u32::MAX).then_some(node), offset, len));
        }
        Ok(Hello {
            page_kind,
            arena_len,
            granule,
            spans,
        })
    }
}

/// A client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// At least `bytes` bytes (whole granules), on NUMA node `prefer` if it has room.
    Grant { bytes: u64, prefer: Option<u32> },
    /// The granules `[offset, offset + len)` go back to the node.
    GiveBack { offset: u64, len: u64 },
}

impl Request {
    /// The wire form.
    pub(crate) fn encode(self) -> [u8; REQUEST_LEN] {
        let (op, a, b) = match self {
            Request::Grant { bytes, prefer } => (1u32, bytes, prefer.map_or(u64::MAX, u64::from)),
            Request::GiveBack { offset, len } => (2, offset, len),
        };
        let mut out = [0; REQUEST_LEN];
        out[..4].copy_from_slice(&op.to_le_bytes());
        out[8..16].copy_from_slice(&a.to_le_bytes());
        out[16..].copy_from_slice(&b.to_le_bytes());
        out
    }

    /// Parses a request frame; a malformed one is an error naming what is wrong.
    pub(crate) fn decode(frame: &[u8; REQUEST_LEN]) -> Result<Request, &'static str> {
        let op = u32_at(frame, 0).ok_or("short frame")?;
        if u32_at(frame, 4) != Some(0) {
            return Err("non-zero padding");
        }
        let a = u64_at(frame, 8).ok_or("short frame")?;
        let b = u64_at(frame, 16).ok_or("short frame")?;
        match op {
            1 if a == 0 => Err("grant of 0 bytes"),
            1 if b == u64::MAX => Ok(Request::Grant {
                bytes: a,
                prefer: None,
            }),
            1 => Ok(Request::Grant {
                bytes: a,
                prefer: Some(u32::try_from(b).map_err(|_| "NUMA node out of range")?),
            }),
            2 => Ok(Request::GiveBack { offset: a, len: b }),
            _ => Err("unknown op"),
        }
    }
}

/// A reply's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Done.
    Ok = 0,
    /// No run of free granules large enough.
    NoRoom = 1,
    /// A malformed request, or a give-back of granules the client does not own.
    Refused = 2,
}

/// The server's answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: Status,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) node_granted: u64,
    pub(crate) node_capacity: u64,
}

impl Reply {
    /// The wire form.
    pub(crate) fn encode(self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[..4].copy_from_slice(&(self.status as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..32].copy_from_slice(&self.node_granted.to_le_bytes());
        out[32..].copy_from_slice(&self.node_capacity.to_le_bytes());
        out
    }

    /// Parses a reply frame.
    pub(crate) fn decode(frame: &[u8; REPLY_LEN]) -> Result<Reply, &'static str> {
        let status = match u32_at(frame, 0) {
            Some(0) => Status::Ok,
            Some(1) => Status::NoRoom,
            Some(2) => Status::Refused,
            _ => return Err("unknown reply status"),
        };
        let field = |at| u64_at(frame, at).ok_or("short frame");
        Ok(Reply {
            status,
            offset: field(8)?,
            len: field(16)?,
            node_granted: field(24)?,
            node_capacity: field(32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Grant {
                bytes: 1 << 30,
                prefer: None,
            },
            Request::Grant {
                bytes: 1,
                prefer: Some(3),
            },
            Request::GiveBack {
                offset: 64 << 20,
                len: 128 << 20,
            },
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn garbage_requests_are_refused() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            let mut frame = [0u8; REQUEST_LEN];
            for b in &mut frame {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *b = rng as u8;
            }
            // Random frames have non-zero padding (or an unknown op) almost always; either way
            // decoding never panics, and a frame it accepts re-encodes to itself.
            if let Ok(r) = Request::decode(&frame) {
                assert_eq!(r.encode(), frame);
            }
        }
        let mut bad = Request::GiveBack { offset: 0, len: 0 }.encode();
        bad[0] = 9;
        assert_eq!(Request::decode(&bad), Err("unknown op"));
        let mut pad = Request::GiveBack { offset: 0, len: 0 }.encode();
        pad[5] = 1;
        assert!(Request::decode(&pad).is_err());
        let zero = Request::Grant {
            bytes: 1,
            prefer: None,
        }
        .encode();
        let mut zero = zero;
        zero[8] = 0;
        assert_eq!(Request::decode(&zero), Err("grant of 0 bytes"));
        let mut node = Request::Grant {
            bytes: 1,
            prefer: None,
        }
        .encode();
        node[16..].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(Request::decode(&node).is_err(), "node past u32");
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply {
            status: Status::NoRoom,
            offset: 1,
            len: 2,
            node_granted: 3,
            node_capacity: 4,
        };
        assert_eq!(Reply::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[0] = 7;
        assert!(Reply::decode(&bad).is_err());
    }

    #[test]
    fn hello_round_trips_and_is_validated() {
        let h = Hello {
            page_kind: PageKind::Huge2MiB,
            arena_len: 64 << 20,
            granule: 8 << 20,
            spans: vec![(Some(0), 0, 32 << 20), (Some(1), 32 << 20, 32 << 20)],
        };
        let wire = h.encode();
        assert_eq!(Hello::total_len(&wire[..Hello::HEAD_LEN]), Some(wire.len()));
        assert_eq!(Hello::decode(&wire), Ok(h.clone()));
        assert!(Hello::decode(&wire[..wire.len() - 1]).is_err(), "truncated");
        let mut magic = wire.clone();
        magic[0] ^= 1;
        assert!(Hello::decode(&magic).is_err());
        let odd = Hello {
            granule: (8 << 20) + 4096,
            ..h.clone()
        };
        assert!(
            Hello::decode(&odd.encode()).is_err(),
            "granule not in 2 MiB pages"
        );
        let outside = Hello {
            spans: vec![(None, 0, 128 << 20)],
            ..h.clone()
        };
        assert!(
            Hello::decode(&outside.encode()).is_err(),
            "span past the arena"
        );
        let overlap = Hello {
            spans: vec![(None, 0, 32 << 20), (None, 16 << 20, 16 << 20)],
            ..h
        };
        assert!(Hello::decode(&overlap.encode()).is_err());
    }
}
