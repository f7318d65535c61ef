//! The arena's allocators, one per extent: an allocation tries the extents of the region the
//! caller prefers (the consumer's NUMA node), then the others in order.
//!
//! A standalone store has one extent per NUMA region, fixed for its life (one, the whole arena,
//! without NUMA placement). A store on a node arena starts with none and grows: each grant
//! from the node is a new extent of the region (NUMA span) it lies in, and an extent left
//! wholly free can be taken out again ([`Regions::take_free`]) to be given back. An object must
//! fit in one extent: extents never share a block.

use std::fmt;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Allocator, Block};

/// One extent: its allocator and the region it lies in.
#[derive(Debug)]
struct Extent {
    alloc: Allocator,
    region: usize,
}

/// The store's extents, behind a read-write lock: allocs and frees share it (each extent's
/// allocator has its own mutex), adding and removing extents take it exclusively.
pub(crate) struct Regions {
    parts: RwLock<Vec<Extent>>,
    regions: usize,
}

impl fmt::Debug for Regions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.read().iter()).finish()
    }
}

impl Regions {
    /// One extent per span of `spans` (offset, length), region `i` for span `i`; in address
    /// order, non-overlapping.
    pub(crate) fn new(spans: &[(usize, usize)]) -> Self {
        Regions {
            parts: RwLock::new(
                spans
                    .iter()
                    .enumerate()
                    .map(|(region, &(base, len))| Extent {
                        alloc: Allocator::with_range(base, len),
                        region,
                    })
                    .collect(),
            ),
            regions: spans.len(),
        }
    }

    /// No extents yet, over `regions` regions (a node arena's spans).
    pub(crate) fn growable(regions: usize) -> Self {
        Regions {
            parts: RwLock::new(Vec::new()),
            regions,
        }
    }

    // Extents are added and removed whole, after every fallible step: a poisoned lock still
    // guards a consistent list.
    fn read(&self) -> RwLockReadGuard<'_, Vec<Extent>> {
        self.parts.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Extent>> {
        self.parts.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A block of `bytes`, from an extent of region `prefer` if one has room, else from the
    /// first that does.
    pub(crate) fn alloc(&self, bytes: usize, prefer: Option<usize>) -> Option<Block> {
        let parts = self.read();
        let preferred = parts
            .iter()
            .filter(|p| Some(p.region) == prefer)
            .find_map(|p| p.alloc.alloc(bytes));
        preferred.or_else(|| parts.iter().find_map(|p| p.alloc.alloc(bytes)))
    }

    /// The region of the extent holding `offset`.
    pub(crate) fn region_of(&self, offset: usize) -> Option<usize> {
        self.read()
            .iter()
            .find(|p| p.alloc.contains(offset))
            .map(|p| p.region)
    }

    /// Returns `block` to the extent it came from.
    pub(crate) fn free(&self, block: Block) {
        match self
            .read()
            .iter()
            .find(|p| p.alloc.contains(block.offset()))
        {
            Some(part) => part.alloc.free(block),
            None => debug_assert!(false, "block {block:?} from no extent"),
        }
    }

    /// Adds the `len` bytes at `offset` (granted from region `region`) as a new, free extent.
    pub(crate) fn add(&self, offset: usize, len: usize, region: usize) {
        let mut parts = self.write();
        debug_assert!(
            parts.iter().all(|p| !p.alloc.contains(offset)),
            "extent {offset} added twice"
        );
        parts.push(Extent {
            alloc: Allocator::with_range(offset, len),
            region,
        });
    }

    /// Takes out the extents in which nothing is allocated, except one of at most `spare`
    /// bytes (the first such), and returns their `(offset, len)`. The caller gives them back.
    pub(crate) fn take_free(&self, spare: usize) -> Vec<(usize, usize)> {
        let wholly_free = |p: &Extent| p.alloc.free_bytes() == p.alloc.capacity();
        // Most calls find nothing to do: look under the shared lock first.
        {
            let parts = self.read();
            let free = parts.iter().filter(|p| wholly_free(p)).count();
            let spares = parts
                .iter()
                .filter(|p| wholly_free(p) && p.alloc.capacity() <= spare)
                .count();
            if free == 0 || (free == 1 && spares == 1) {
                return Vec::new();
            }
        }
        // Under the exclusive lock no alloc runs, so a wholly free extent stays free until it
        // has left the list.
        let mut parts = self.write();
        let mut kept_spare = false;
        let mut out = Vec::new();
        parts.retain(|p| {
            if !wholly_free(p) {
                return true;
            }
            if !kept_spare && p.alloc.capacity() <= spare {
                kept_spare = true;
                return true;
            }
            out.push((p.alloc.base(), p.alloc.capacity()));
            false
        });
        out
    }

    /// Bytes managed, all extents together.
    pub(crate) fn capacity(&self) -> usize {
        self.read().iter().map(|p| p.alloc.capacity()).sum()
    }

    /// The largest object any extent can hold.
    pub(crate) fn max_object(&self) -> usize {
        self.read()
            .iter()
            .map(|p| p.alloc.capacity())
            .max()
            .unwrap_or(0)
    }

    /// Free bytes, all extents together.
    pub(crate) fn free_bytes(&self) -> usize {
        self.read().iter().map(|p| p.alloc.free_bytes()).sum()
    }

    /// Bytes in use, all extents together.
    pub(crate) fn used_bytes(&self) -> usize {
        self.read().iter().map(|p| p.alloc.used_bytes()).sum()
    }

    /// The largest block any extent could hand out now.
    pub(crate) fn largest_free(&self) -> usize {
        self.read()
            .iter()
            .map(|p| p.alloc.largest_free())
            .max()
            .unwrap_or(0)
    }

    /// Number of regions.
    pub(crate) fn len(&self) -> usize {
        self.regions
    }

    /// Number of extents.
    #[cfg(test)]
    pub(crate) fn extents(&self) -> usize {
        self.read().len()
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

    #[test]
    fn grown_extents_serve_their_region_and_free_ones_go_back_but_one() {
        let r = Regions::growable(2);
        assert!(r.alloc(UNIT, None).is_none(), "no extent yet");
        r.add(8 * UNIT, 4 * UNIT, 1);
        r.add(0, 4 * UNIT, 0);
        r.add(16 * UNIT, 8 * UNIT, 0);
        let b = r.alloc(UNIT, Some(0)).expect("room");
        assert_eq!(b.offset(), 0, "the first extent of region 0");
        assert_eq!(r.region_of(b.offset()), Some(0));
        assert_eq!(r.capacity(), 16 * UNIT);
        // Wholly free: the 4-unit extent of region 1 (kept as the spare) and the 8-unit one.
        assert_eq!(r.take_free(4 * UNIT), vec![(16 * UNIT, 8 * UNIT)]);
        assert_eq!(r.take_free(4 * UNIT), Vec::new(), "one spare stays");
        r.free(b);
        assert_eq!(r.take_free(4 * UNIT), vec![(0, 4 * UNIT)]);
        assert_eq!(r.extents(), 1);
        assert_eq!(
            r.take_free(0),
            vec![(8 * UNIT, 4 * UNIT)],
            "no spare of size 0"
        );
        assert_eq!(r.capacity(), 0);
    }
}
