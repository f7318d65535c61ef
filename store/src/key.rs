//! Opaque object keys, copy kinds and arena locations: the store's vocabulary for objects.
//!
//! The store never interprets a key; core maps its `ObjectId`s onto keys. A [`Location`] is
//! what another process on the node needs to read an object from an attached arena.

use std::fmt;

/// The store's name for one object: 16 opaque bytes chosen by the caller (core).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(pub [u8; 16]);

impl ObjectKey {
    /// A key from a 128-bit number (big-endian bytes, so keys sort as numbers do).
    pub const fn from_u128(n: u128) -> Self {
        ObjectKey(n.to_be_bytes())
    }

    /// The key as a 128-bit number; the inverse of [`ObjectKey::from_u128`].
    pub const fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl From<[u8; 16]> for ObjectKey {
    fn from(bytes: [u8; 16]) -> Self {
        ObjectKey(bytes)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({self})")
    }
}

/// Whether this node holds the object's primary copy or a secondary one.
///
/// Primary copies are never dropped under pressure, only spilled to disk; secondary copies
/// (pulled from another node, which still has the primary) are evicted in LRU order first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyKind {
    /// The copy the owner relies on: spilled under pressure, never lost.
    Primary,
    /// A cached copy of an object whose primary lives elsewhere: evicted under pressure.
    Secondary,
}

/// Where an object's bytes lie in the arena: what a process that attached the arena needs.
///
/// `offset` is a multiple of [`UNIT`](crate::UNIT), so any plain-old-data type is aligned there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Byte offset from the start of the arena.
    pub offset: u64,
    /// Length of the object in bytes (not rounded up to the block size).
    pub len: u64,
}

impl Location {
    /// Size of [`Location::to_bytes`]'s output.
    pub const WIRE_LEN: usize = 16;

    /// Little-endian wire form: offset then length.
    pub fn to_bytes(self) -> [u8; Self::WIRE_LEN] {
        let mut out = [0; Self::WIRE_LEN];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses [`Location::to_bytes`]'s form.
    pub fn from_bytes(bytes: [u8; Self::WIRE_LEN]) -> Self {
        let mut offset = [0; 8];
        let mut len = [0; 8];
        offset.copy_from_slice(&bytes[..8]);
        len.copy_from_slice(&bytes[8..]);
        Location {
            offset: u64::from_le_bytes(offset),
            len: u64::from_le_bytes(len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_prints_hex() {
        let k = ObjectKey::from_u128(0xabc);
        assert_eq!(k.as_u128(), 0xabc);
        assert_eq!(k.to_string(), format!("{:032x}", 0xabc));
    }

    #[test]
    fn location_wire_form_round_trips() {
        let l = Location {
            offset: 1 << 40,
            len: 12345,
        };
        assert_eq!(Location::from_bytes(l.to_bytes()), l);
    }
}
