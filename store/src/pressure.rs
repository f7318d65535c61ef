//! The eviction and spilling policy, sans I/O: given how many bytes must be freed and the
//! eligible objects in LRU order, say which to evict and which to spill.
//!
//! The store gathers the inputs under its table lock, applies the evictions there, and performs
//! the spills (I/O) outside it. Keeping the decision a pure function makes it testable without
//! an arena, a disk or threads.
//!
//! # Policy
//! 1. Secondary copies go first, least recently used first: dropping them costs no I/O, and the
//!    primary still lives on another node.
//! 2. Then primaries, least recently used first, are spilled.
//! 3. Stop as soon as the chosen objects' blocks add up to `to_free` bytes and, if any primary
//!    was chosen, the primaries' blocks to `min_spill` bytes: a batch that writes to disk at all
//!    writes at least that much (evictions cost no I/O, so they are never padded).
//!
//! Only sealed, unpinned objects that are not already being spilled are eligible; the caller
//! filters them.
//!
//! # How much
//! 1. **Batches.** A batch that spills writes at least `spill_min_batch` bytes (when that many
//!    are eligible), whatever the shortfall that triggered it (`min_spill` above).
//! 2. **Hysteresis.** Once use exceeds the threshold (the high mark), the store frees down to
//!    the low mark, `spill_min_batch` below it, not merely to the threshold ([`Marks`]); the
//!    next puts then find room below the threshold and spill nothing until use crosses it again.
//!
//! Why: one batch is one io_uring submission that the store waits on in full, and its I/O is
//! all the disk gets until the next batch. Sized by the shortfall alone, a put just above the
//! threshold (or a restore into a full arena) spilled one object per batch: with 16 MiB objects
//! and 8 MiB transfers, two transfers in flight, then an idle device while the next put copied
//! its value. Measured per batch with `benches/spill.rs` (opening files took ~40 µs, not a
//! factor): one-object batches wrote at ~0.9× the rate of 16-object ones into reused files
//! (3.4 against 3.7 GB/s) and ~0.8× into new ones (1.6 against 2.0 GB/s), and the threshold
//! case, all of whose spills were such batches, ran at 0.60–0.92× of the disk over 12 runs;
//! with 64 MiB batches, at 0.84–1.07×.

use crate::key::{CopyKind, ObjectKey};

/// One eligible object, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) key: ObjectKey,
    /// Bytes its block occupies in the arena.
    pub(crate) bytes: usize,
    pub(crate) copy: CopyKind,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Secondary copies to drop.
    pub(crate) evict: Vec<ObjectKey>,
    /// Primary copies to write to disk and then free.
    pub(crate) spill: Vec<ObjectKey>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.evict.is_empty() && self.spill.is_empty()
    }
}

/// The byte marks that size spill batches (see "How much").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marks {
    /// Use above which the store spills by itself: `spill_threshold` of the capacity.
    high: usize,
    /// Use that spilling past the high mark brings the store down to.
    low: usize,
    /// Least bytes one batch frees.
    min_batch: usize,
}

impl Marks {
    /// The marks of an arena of `capacity` bytes spilling above `threshold` (a fraction of it,
    /// clamped to `[0, 1]`) in batches of at least `min_batch` bytes.
    pub(crate) fn new(capacity: usize, threshold: f64, min_batch: usize) -> Marks {
        let high = (capacity as f64 * threshold.clamp(0.0, 1.0)) as usize;
        Marks {
            high,
            low: high.saturating_sub(min_batch),
            min_batch,
        }
    }

    /// Bytes to free by spilling at `used` bytes in use: none up to the high mark, else down to
    /// the low mark.
    pub(crate) fn over_threshold(&self, used: usize) -> usize {
        if used > self.high { used - self.low } else { 0 }
    }
}

/// Chooses objects to free at least `to_free` bytes from `lru` (least recently used first),
/// spilling at least `min_spill` bytes if it spills at all; frees as much as it can when the
/// candidates do not add up.
pub(crate) fn plan(to_free: usize, min_spill: usize, lru: &[Candidate]) -> Plan {
    let mut plan = Plan::default();
    let mut freed = 0;
    for c in lru.iter().filter(|c| c.copy == CopyKind::Secondary) {
        if freed >= to_free {
            return plan;
        }
        freed += c.bytes;
        plan.evict.push(c.key);
    }
    if freed >= to_free {
        return plan;
    }
    let mut spilled = 0;
    for c in lru.iter().filter(|c| c.copy == CopyKind::Primary) {
        if freed >= to_free && spilled >= min_spill {
            break;
        }
        freed += c.bytes;
        spilled += c.bytes;
        plan.spill.push(c.key);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u128, bytes: usize, copy: CopyKind) -> Candidate {
        Candidate {
            key: ObjectKey::from_u128(n),
            bytes,
            copy,
        }
    }

    #[test]
    fn nothing_to_free_means_nothing_to_do() {
        let lru = [c(1, 10, CopyKind::Primary)];
        assert!(plan(0, 0, &lru).is_empty());
        assert!(plan(0, 100, &lru).is_empty());
    }

    #[test]
    fn secondaries_before_primaries_in_lru_order() {
        let lru = [
            c(1, 10, CopyKind::Primary),
            c(2, 10, CopyKind::Secondary),
            c(3, 10, CopyKind::Primary),
            c(4, 10, CopyKind::Secondary),
        ];
        let p = plan(30, 0, &lru);
        assert_eq!(
            p.evict,
            vec![ObjectKey::from_u128(2), ObjectKey::from_u128(4)]
        );
        assert_eq!(p.spill, vec![ObjectKey::from_u128(1)]);
    }

    #[test]
    fn stops_once_enough_is_chosen() {
        let lru = [c(1, 100, CopyKind::Primary), c(2, 100, CopyKind::Primary)];
        let p = plan(50, 0, &lru);
        assert_eq!(p.spill, vec![ObjectKey::from_u128(1)]);
        assert!(p.evict.is_empty());
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn nothing_spills_up_to_the_threshold() {
        let m = Marks::new(1000 * MIB, 0.8, 64 * MIB);
        assert_eq!(m.over_threshold(0), 0);
        assert_eq!(m.over_threshold(800 * MIB), 0);
    }

    #[test]
    fn past_the_threshold_spills_down_to_the_low_mark() {
        let m = Marks::new(1000 * MIB, 0.8, 64 * MIB);
        // Just above: a whole batch, not the excess alone.
        assert_eq!(m.over_threshold(800 * MIB + 1), 64 * MIB + 1);
        // Far above: everything down to the low mark.
        assert_eq!(m.over_threshold(1000 * MIB), 264 * MIB);
        // Once there, puts up to the threshold spill nothing.
        assert_eq!(m.over_threshold(736 * MIB), 0);
    }

    #[test]
    fn without_a_minimum_batch_only_the_excess_spills() {
        let m = Marks::new(1000 * MIB, 0.8, 0);
        assert_eq!(m.over_threshold(800 * MIB + 1), 1);
    }

    #[test]
    fn a_small_arena_spills_down_to_empty() {
        let m = Marks::new(100 * MIB, 0.8, 64 * MIB);
        assert_eq!(m.over_threshold(90 * MIB), 74 * MIB);
        let m = Marks::new(10 * MIB, 0.8, 64 * MIB);
        assert_eq!(m.over_threshold(9 * MIB), 9 * MIB);
    }

    #[test]
    fn the_threshold_is_clamped_to_the_arena() {
        assert_eq!(Marks::new(100, 1.5, 10).over_threshold(100), 0);
        assert_eq!(Marks::new(100, -1.0, 10).over_threshold(1), 1);
    }

    #[test]
    fn a_spilling_batch_writes_at_least_the_minimum() {
        let lru: Vec<Candidate> = (0..8).map(|n| c(n, 16 * MIB, CopyKind::Primary)).collect();
        let p = plan(MIB, 64 * MIB, &lru);
        let want: Vec<ObjectKey> = (0..4).map(ObjectKey::from_u128).collect();
        assert_eq!(p.spill, want);
        // Past the minimum, what is needed.
        assert_eq!(plan(80 * MIB, 64 * MIB, &lru).spill.len(), 5);
        // Short of candidates: all of them.
        assert_eq!(plan(MIB, 1 << 30, &lru).spill.len(), 8);
    }

    #[test]
    fn evictions_are_not_padded_to_a_batch() {
        let lru = [
            c(1, 10, CopyKind::Secondary),
            c(2, 10, CopyKind::Primary),
            c(3, 10, CopyKind::Secondary),
        ];
        let p = plan(15, 1000, &lru);
        assert_eq!(
            p.evict,
            vec![ObjectKey::from_u128(1), ObjectKey::from_u128(3)]
        );
        assert!(p.spill.is_empty(), "the evictions sufficed: no I/O");
        // Once a primary must go, the batch floor applies to the spill.
        let p = plan(25, 1000, &lru);
        assert_eq!((p.evict.len(), p.spill.len()), (2, 1));
    }

    #[test]
    fn frees_everything_it_can_when_short() {
        let lru = [c(1, 10, CopyKind::Secondary), c(2, 10, CopyKind::Primary)];
        let p = plan(1000, 0, &lru);
        assert_eq!((p.evict.len(), p.spill.len()), (1, 1));
    }
}
