//! The object table: one entry per object the store knows, plus the LRU order of the objects
//! whose bytes are in the arena. Pure data; the transitions are [`Store`](crate::Store)'s.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::alloc::Block;
use crate::key::{CopyKind, ObjectKey};
use crate::pressure::Candidate;
use crate::spill::SpillSlot;

/// Where an object's bytes are and who may touch them.
#[derive(Debug)]
pub(crate) enum State {
    /// Being written by the holder of its [`Created`](crate::Created) handle (or, if
    /// `detached`, by another process that will seal it by key). Invisible to readers.
    Created { block: Block, detached: bool },
    /// Immutable, in the arena. `spilling`: a copy to disk is in progress.
    Sealed { block: Block, spilling: bool },
    /// On disk only; the arena holds nothing for it.
    Spilled { slot: SpillSlot },
    /// Being read back from disk by one thread; others wait.
    Restoring,
}

/// One object.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Length in bytes as created (the block may be longer).
    pub(crate) size: usize,
    pub(crate) copy: CopyKind,
    pub(crate) state: State,
    /// Pins held by readers (guards and remote pins together).
    pub(crate) pins: u32,
    /// This object's position in [`Table::lru`], if it is sealed in the arena.
    lru_tick: Option<u64>,
}

impl Entry {
    pub(crate) fn new(size: usize, copy: CopyKind, block: Block) -> Self {
        Entry {
            size,
            copy,
            state: State::Created {
                block,
                detached: false,
            },
            pins: 0,
            lru_tick: None,
        }
    }
}

/// Counters for `manta status`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) spilled: u64,
    pub(crate) restored: u64,
    pub(crate) evicted: u64,
    /// Blocks (creates and restores) placed on the NUMA region asked for.
    pub(crate) numa_near: u64,
    /// Blocks placed on another region because the one asked for had no room.
    pub(crate) numa_far: u64,
    pub(crate) spill_io: IoTotals,
    pub(crate) restore_io: IoTotals,
    /// Spill batches that failed (their objects stayed in memory).
    pub(crate) spill_failures: u64,
}

/// Bytes moved to or from spill files and the time it took, summed since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoTotals {
    /// Bytes transferred.
    pub bytes: u64,
    /// Time spent transferring them (wall-clock, per batch, I/O only).
    pub time: Duration,
}

impl IoTotals {
    pub(crate) fn add(&mut self, bytes: usize, time: Duration) {
        self.bytes += bytes as u64;
        self.time += time;
    }

    /// Bytes per second, 0 before any transfer.
    pub fn bytes_per_sec(&self) -> f64 {
        let secs = self.time.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }
}

/// All entries and their LRU order.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) entries: HashMap<ObjectKey, Entry>,
    /// tick → key, oldest first, over sealed objects in the arena (pinned ones included; the
    /// policy's candidate list skips them).
    lru: BTreeMap<u64, ObjectKey>,
    tick: u64,
    pub(crate) counters: Counters,
}

impl Table {
    /// Marks `key` most recently used (entering the LRU order if it was not in it).
    pub(crate) fn touch(&mut self, key: ObjectKey) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if let Some(old) = entry.lru_tick.take() {
            self.lru.remove(&old);
        }
        self.tick += 1;
        entry.lru_tick = Some(self.tick);
        self.lru.insert(self.tick, key);
    }

    /// Takes `key` out of the LRU order (its bytes are leaving the arena).
    pub(crate) fn untrack(&mut self, key: ObjectKey) {
        if let Some(tick) = self.entries.get_mut(&key).and_then(|e| e.lru_tick.take()) {
            self.lru.remove(&tick);
        }
    }

    /// Removes `key` entirely, returning its entry.
    pub(crate) fn remove(&mut self, key: ObjectKey) -> Option<Entry> {
        self.untrack(key);
        self.entries.remove(&key)
    }

    /// Objects eligible for eviction or spilling, least recently used first: sealed in the
    /// arena, unpinned, not being spilled.
    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        self.lru
            .values()
            .filter_map(|key| {
                let e = self.entries.get(key)?;
                match &e.state {
                    State::Sealed {
                        block,
                        spilling: false,
                    } if e.pins == 0 => Some(Candidate {
                        key: *key,
                        bytes: block.len(),
                        copy: e.copy,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// Bytes of the arena that nothing can free now: pinned, being written, or being spilled.
    pub(crate) fn stuck_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| match &e.state {
                State::Created { block, .. } => block.len(),
                State::Sealed { block, spilling } if e.pins > 0 || *spilling => block.len(),
                _ => 0,
            })
            .sum()
    }
}
