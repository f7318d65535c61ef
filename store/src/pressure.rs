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
//! 3. Stop as soon as the chosen objects' blocks add up to `to_free` bytes.
//!
//! Only sealed, unpinned objects that are not already being spilled are eligible; the caller
//! filters them.

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

/// Chooses objects to free at least `to_free` bytes from `lru` (least recently used first);
/// frees as much as it can when the candidates do not add up.
pub(crate) fn plan(to_free: usize, lru: &[Candidate]) -> Plan {
    let mut plan = Plan::default();
    let mut freed = 0;
    for pass in [CopyKind::Secondary, CopyKind::Primary] {
        for c in lru.iter().filter(|c| c.copy == pass) {
            if freed >= to_free {
                return plan;
            }
            freed += c.bytes;
            match pass {
                CopyKind::Secondary => plan.evict.push(c.key),
                CopyKind::Primary => plan.spill.push(c.key),
            }
        }
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
        assert!(plan(0, &lru).is_empty());
    }

    #[test]
    fn secondaries_before_primaries_in_lru_order() {
        let lru = [
            c(1, 10, CopyKind::Primary),
            c(2, 10, CopyKind::Secondary),
            c(3, 10, CopyKind::Primary),
            c(4, 10, CopyKind::Secondary),
        ];
        let p = plan(30, &lru);
        assert_eq!(
            p.evict,
            vec![ObjectKey::from_u128(2), ObjectKey::from_u128(4)]
        );
        assert_eq!(p.spill, vec![ObjectKey::from_u128(1)]);
    }

    #[test]
    fn stops_once_enough_is_chosen() {
        let lru = [c(1, 100, CopyKind::Primary), c(2, 100, CopyKind::Primary)];
        let p = plan(50, &lru);
        assert_eq!(p.spill, vec![ObjectKey::from_u128(1)]);
        assert!(p.evict.is_empty());
    }

    #[test]
    fn frees_everything_it_can_when_short() {
        let lru = [c(1, 10, CopyKind::Secondary), c(2, 10, CopyKind::Primary)];
        let p = plan(1000, &lru);
        assert_eq!((p.evict.len(), p.spill.len()), (1, 1));
    }
}
