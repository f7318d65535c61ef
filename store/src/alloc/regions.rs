//! The arena's allocators, one per NUMA region: an allocation tries the region the caller
//! prefers (the consumer's NUMA node), then the others in order.
//!
//! Without NUMA placement there is one region, the whole arena, and this is a thin wrapper.
//! An object must fit in one region: regions never share a block.

use std::fmt;

use super::{Allocator, Block};

/// One [`Allocator`] per region, regions in address order.
pub(crate) struct Regions {
    parts: Vec<Allocator>,
}

impl fmt::Debug for Regions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.parts).finish()
    }
}

impl Regions {
    /// Regions over `spans` (offset, length), in address order, non-overlapping.
    pub(crate) fn new(spans: &[(usize, usize)]) -> Self {
        Regions {
            parts: spans
                .iter()
                .map(|&(base, len)| Allocator::with_range(base, len))
                .collect(),
        }
    }

    /// A block of `bytes`, from region `prefer` if it has room, else from the first that does.
    pub(crate) fn alloc(&self, bytes: usize, prefer: Option<usize>) -> Option<Block> {
        let first = prefer.and_then(|i| self.parts.get(i));
        first
            .into_iter()
            .chain(&self.parts)
            .find_map(|part| part.alloc(bytes))
    }

    /// The index of the region holding `offset`.
    pub(crate) fn region_of(&self, offset: usize) -> Option<usize> {
        self.parts.iter().position(|p| p.contains(offset))
    }

    /// Returns `block` to the region it came from.
    pub(crate) fn free(&self, block: Block) {
        match self.parts.iter().find(|p| p.contains(block.offset())) {
            Some(part) => part.free(block),
            None => debug_assert!(false, "block {block:?} from no region"),
        }
    }

    /// Bytes managed, all regions together.
    pub(crate) fn capacity(&self) -> usize {
        self.parts.iter().map(Allocator::capacity).sum()
    }

    /// The largest object any region can hold.
    pub(crate) fn max_object(&self) -> usize {
        self.parts
            .iter()
            .map(Allocator::capacity)
            .max()
            .unwrap_or(0)
    }

    /// Free bytes, all regions together.
    pub(crate) fn free_bytes(&self) -> usize {
        self.parts.iter().map(Allocator::free_bytes).sum()
    }

    /// Bytes in use, all regions together.
    pub(crate) fn used_bytes(&self) -> usize {
        self.capacity() - self.free_bytes()
    }

    /// The largest block any region could hand out now.
    pub(crate) fn largest_free(&self) -> usize {
        self.parts
            .iter()
            .map(Allocator::largest_free)
            .max()
            .unwrap_or(0)
    }

    /// Number of regions.
    pub(crate) fn len(&self) -> usize {
        self.parts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::UNIT;

    #[test]
    fn prefers_the_asked_region_then_falls_back() {
        let r = Regions::new(&[(0, 4 * UNIT), (4 * UNIT, 4 * UNIT)]);
        let b = r.alloc(UNIT, Some(1)).expect("fits");
        assert_eq!(b.offset(), 4 * UNIT, "from region 1");
        assert_eq!(r.region_of(b.offset()), Some(1));
        let big = r.alloc(4 * UNIT, Some(1)).expect("region 0 has room");
        assert_eq!(big.offset(), 0);
        assert!(
            r.alloc(4 * UNIT, None).is_none(),
            "no region holds 4 units now"
        );
        assert_eq!(r.max_object(), 4 * UNIT);
        r.free(b);
        r.free(big);
        assert_eq!(r.free_bytes(), 8 * UNIT);
        assert_eq!(r.largest_free(), 4 * UNIT);
    }
}
