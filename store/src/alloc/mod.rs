//! The arena's block allocator: address-ordered best fit over 4 KiB units, with immediate
//! coalescing. A value, not a global; thread-safe behind one short mutex; no unsafe code.
//!
//! The allocator hands out byte ranges (offsets from the arena's start), never pointers: turning
//! a [`Block`] into memory is the arena's business. The design, its invariants and why it was
//! chosen are in `README.md` beside this file.
//!
//! # Invariants (checked by [`Allocator::check`] in tests)
//! 1. Free blocks and live blocks partition the allocator's range: no overlap, no gap.
//! 2. No two free blocks are adjacent (coalescing is immediate and complete).
//! 3. `by_addr` and `by_size` describe the same set of free blocks.
//! 4. `free_units` is the sum of the free blocks' lengths.

mod regions;

pub(crate) use regions::Regions;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;

/// Allocation granularity and alignment in bytes: every block starts and ends on a multiple.
///
/// 4 KiB is the base page: blocks are aligned for any plain-old-data type and for `O_DIRECT`
/// spill I/O straight from the arena.
pub const UNIT: usize = 4096;

/// A live allocation: `len` bytes at `offset` from the arena's start, both multiples of
/// [`UNIT`]. Not `Clone`: a block is returned to its allocator exactly once, by value.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    offset: usize,
    len: usize,
}

impl Block {
    /// Byte offset from the start of the arena.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length in bytes (the request rounded up to [`UNIT`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: blocks are at least one unit long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Free blocks, twice indexed. Units, not bytes.
#[derive(Debug, Default)]
struct FreeLists {
    /// start → length of each free block; finds neighbours for coalescing.
    by_addr: BTreeMap<usize, usize>,
    /// (length, start) of each free block; the first entry ≥ (n, 0) is the best fit, lowest
    /// address first among equals.
    by_size: BTreeSet<(usize, usize)>,
    free_units: usize,
}

impl FreeLists {
    fn insert(&mut self, start: usize, len: usize) {
        self.by_addr.insert(start, len);
        self.by_size.insert((len, start));
        self.free_units += len;
    }

    fn remove(&mut self, start: usize, len: usize) {
        self.by_addr.remove(&start);
        self.by_size.remove(&(len, start));
        self.free_units -= len;
    }
}

/// A best-fit, coalescing allocator over `units` blocks of [`UNIT`] bytes starting at unit
/// `first` of the arena (one allocator per NUMA region; `first` is 0 for a whole arena).
pub struct Allocator {
    first: usize,
    units: usize,
    free: Mutex<FreeLists>,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("capacity", &self.capacity())
            .field("free", &self.free_bytes())
            .finish()
    }
}

impl Allocator {
    /// An allocator for `capacity` bytes (rounded down to whole units) from offset 0, all free.
    pub fn new(capacity: usize) -> Self {
        Allocator::with_range(0, capacity)
    }

    /// An allocator for the `len` bytes at `base` (`base` rounded up, `len` down, to whole
    /// units), all free. Blocks' offsets are from the arena's start, not from `base`.
    pub fn with_range(base: usize, len: usize) -> Self {
        let first = base.div_ceil(UNIT);
        let units = (base + len).saturating_sub(first * UNIT) / UNIT;
        let mut free = FreeLists::default();
        if units > 0 {
            free.insert(first, units);
        }
        Allocator {
            first,
            units,
            free: Mutex::new(free),
        }
    }

    /// The offset of the first byte managed.
    pub(crate) fn base(&self) -> usize {
        self.first * UNIT
    }

    /// Whether `offset` lies in this allocator's range.
    pub fn contains(&self, offset: usize) -> bool {
        (self.first * UNIT..(self.first + self.units) * UNIT).contains(&offset)
    }

    /// Total bytes managed.
    pub fn capacity(&self) -> usize {
        self.units * UNIT
    }

    /// The smallest multiple of [`UNIT`] that holds `bytes`.
    pub fn round_up(bytes: usize) -> usize {
        bytes.div_ceil(UNIT) * UNIT
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeLists> {
        // A panic while holding this lock leaves the lists consistent (each method mutates them
        // only after all fallible steps), so a poisoned lock is still safe to use.
        self.free
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A block of at least `bytes` bytes, or `None` when no free block is large enough.
    /// `bytes == 0` gets `None`: there are no empty blocks.
    pub fn alloc(&self, bytes: usize) -> Option<Block> {
        if bytes == 0 {
            return None;
        }
        let want = bytes.div_ceil(UNIT);
        let mut free = self.lock();
        let &(len, start) = free.by_size.range((want, 0)..).next()?;
        free.remove(start, len);
        if len > want {
            free.insert(start + want, len - want);
        }
        Some(Block {
            offset: start * UNIT,
            len: want * UNIT,
        })
    }

    /// Returns `block` and merges it with its free neighbours.
    ///
    /// The block must have come from this allocator (a block from another one is a logic error
    /// caught by a debug assertion).
    pub fn free(&self, block: Block) {
        let mut start = block.offset / UNIT;
        let mut len = block.len / UNIT;
        debug_assert!(
            start >= self.first && start + len <= self.first + self.units,
            "block outside this allocator"
        );
        let mut free = self.lock();
        if let Some((&prev, &prev_len)) = free.by_addr.range(..start).next_back() {
            debug_assert!(prev + prev_len <= start, "double free or foreign block");
            if prev + prev_len == start {
                free.remove(prev, prev_len);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(&next_len) = free.by_addr.get(&(start + len)) {
            free.remove(start + len, next_len);
            len += next_len;
        }
        debug_assert!(
            free.by_addr.range(start..start + len).next().is_none(),
            "double free or foreign block"
        );
        free.insert(start, len);
    }

    /// Free bytes, in all blocks together.
    pub fn free_bytes(&self) -> usize {
        self.lock().free_units * UNIT
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> usize {
        self.capacity() - self.free_bytes()
    }

    /// The largest block that [`Allocator::alloc`] could hand out now, in bytes.
    pub fn largest_free(&self) -> usize {
        self.lock().by_size.last().map_or(0, |&(len, _)| len * UNIT)
    }

    /// Number of free blocks (1 when everything is free: full coalescing).
    pub fn free_blocks(&self) -> usize {
        self.lock().by_addr.len()
    }

    /// Checks invariants 1–4 against the caller's list of live blocks; panics on a violation.
    #[cfg(test)]
    pub(crate) fn check(&self, live: &[(usize, usize)]) {
        let free = self.lock();
        assert_eq!(free.by_addr.len(), free.by_size.len(), "invariant 3");
        let mut sum = 0;
        for (&start, &len) in &free.by_addr {
            assert!(free.by_size.contains(&(len, start)), "invariant 3");
            sum += len;
        }
        assert_eq!(sum, free.free_units, "invariant 4");
        let mut all: Vec<(usize, usize, bool)> =
            free.by_addr.iter().map(|(&s, &l)| (s, l, true)).collect();
        all.extend(
            live.iter()
                .map(|&(off, len)| (off / UNIT, len / UNIT, false)),
        );
        all.sort_unstable();
        let mut at = self.first;
        let mut prev_free = false;
        for (start, len, is_free) in all {
            assert_eq!(start, at, "invariant 1: gap or overlap at unit {at}");
            assert!(
                !(prev_free && is_free),
                "invariant 2: adjacent free blocks at unit {start}"
            );
            at = start + len;
            prev_free = is_free;
        }
        assert_eq!(
            at,
            self.first + self.units,
            "invariant 1: blocks do not cover the range"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn rounds_to_units_and_aligns() {
        let a = Allocator::new(1 << 20);
        let b = a.alloc(1).expect("fits");
        assert_eq!((b.offset(), b.len()), (0, UNIT));
        let c = a.alloc(UNIT + 1).expect("fits");
        assert_eq!((c.offset(), c.len()), (UNIT, 2 * UNIT));
        assert!(a.alloc(0).is_none());
        a.check(&[(0, UNIT), (UNIT, 2 * UNIT)]);
    }

    #[test]
    fn best_fit_prefers_the_smallest_hole() {
        let a = Allocator::new(64 * UNIT);
        let blocks: Vec<Block> = (0..8).map(|_| a.alloc(8 * UNIT).expect("fits")).collect();
        let mut it = blocks.into_iter();
        let b0 = it.next().expect("8 blocks");
        let b1 = it.next().expect("8 blocks");
        let _b2 = it.next();
        let b3 = it.next().expect("8 blocks");
        // Free a 16-unit hole (b0 + b1 coalesce) and an 8-unit hole (b3).
        a.free(b0);
        a.free(b1);
        a.free(b3);
        let small = a.alloc(8 * UNIT).expect("fits");
        assert_eq!(
            small.offset(),
            24 * UNIT,
            "the exact 8-unit hole, not the 16-unit one"
        );
        assert!(a.alloc(17 * UNIT).is_none(), "no hole of 17 units");
    }

    #[test]
    fn a_range_hands_out_offsets_inside_it() {
        let a = Allocator::with_range(8 * UNIT, 4 * UNIT);
        let b = a.alloc(UNIT).expect("fits");
        assert_eq!(b.offset(), 8 * UNIT);
        assert!(a.contains(b.offset()) && !a.contains(12 * UNIT) && !a.contains(0));
        a.check(&[(8 * UNIT, UNIT)]);
        a.free(b);
        a.check(&[]);
    }

    #[test]
    fn exhaustion_and_too_large() {
        let a = Allocator::new(4 * UNIT);
        assert!(a.alloc(5 * UNIT).is_none());
        let all = a.alloc(4 * UNIT).expect("exact fit");
        assert!(a.alloc(1).is_none());
        assert_eq!(a.free_bytes(), 0);
        a.free(all);
        assert_eq!(a.largest_free(), 4 * UNIT);
    }

    /// Random allocs and frees: live blocks never overlap, invariants hold after every step, and
    /// freeing everything coalesces back into the one block we started with.
    #[test]
    fn randomized_no_overlap_and_full_coalescing() {
        let units = 4096;
        let a = Allocator::new(units * UNIT);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<Block> = Vec::new();
        for step in 0..20_000 {
            let r = rng.next();
            if live.is_empty() || !r.is_multiple_of(3) {
                // Sizes from sub-unit to 1/16 of the arena, skewed small.
                let size = 1 + (rng.next() as usize % (UNIT << (rng.next() % 9)));
                if let Some(b) = a.alloc(size) {
                    assert!(b.len() >= size && b.offset() % UNIT == 0);
                    live.push(b);
                }
            } else {
                let i = rng.next() as usize % live.len();
                a.free(live.swap_remove(i));
            }
            if step % 97 == 0 {
                let spans: Vec<_> = live.iter().map(|b| (b.offset(), b.len())).collect();
                a.check(&spans);
            }
        }
        let used: usize = live.iter().map(Block::len).sum();
        assert_eq!(a.used_bytes(), used);
        for b in live.drain(..) {
            a.free(b);
        }
        a.check(&[]);
        assert_eq!(a.free_blocks(), 1, "everything free must be one block");
        assert_eq!(a.largest_free(), units * UNIT);
    }

    #[test]
    fn thread_safe_under_contention() {
        let a = Allocator::new(1024 * UNIT);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let a = &a;
                s.spawn(move || {
                    let mut rng = Rng(t + 1);
                    let mut mine = Vec::new();
                    for _ in 0..5_000 {
                        if mine.len() < 16 && rng.next().is_multiple_of(2) {
                            if let Some(b) = a.alloc(1 + rng.next() as usize % (8 * UNIT)) {
                                mine.push(b);
                            }
                        } else if let Some(b) = mine.pop() {
                            a.free(b);
                        }
                    }
                    for b in mine {
                        a.free(b);
                    }
                });
            }
        });
        a.check(&[]);
        assert_eq!(a.free_blocks(), 1);
    }
}
