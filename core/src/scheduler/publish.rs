//! Slot publication: how a new slot's stealer becomes visible to every other thread.
//!
//! The scheduler's slots live in a fixed array sized `max_slots`, so looking at them never
//! takes a lock. A slot is *published* in two steps: its entry is set (once), then `len` is
//! raised past it with `Release`. A reader loads `len` with `Acquire` and looks only at the
//! entries below it, so every entry it looks at is set and its contents visible. One
//! publisher at a time: the scheduler serialises `spawn` under its handles lock.
//!
//! A new slot's thread starts before it is published and waits to be
//! ([`Published::wait_published`]) before it takes work: a job pushed to its deque before that would be
//! invisible to `has_work`, which scans the published entries only (the `fib(15)`-on-one-CPU
//! hang). The loom model `publish` (`core/loom`, run by `scripts/loom`) checks that a reader
//! never sees a published entry unset, nor its contents stale.

use crate::sync::{AtomicUsize, OnceLock, Ordering, thread};

/// Entries published in index order, each set once (see the module docs).
pub(crate) struct Published<T> {
    entries: Box<[OnceLock<T>]>,
    len: AtomicUsize,
}

impl<T> Published<T> {
    /// Room for `capacity` entries, none published.
    pub(crate) fn new(capacity: usize) -> Self {
        Published {
            entries: (0..capacity).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// How many entries there is room for.
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Entries published so far; every entry below is set, its contents visible.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Publishes `value` as entry `index`, which must be the next one ([`Published::len`]);
    /// hands `value` back if it is not, or if there is no room. Callers serialise publishing.
    pub(crate) fn publish(&self, index: usize, value: T) -> Result<(), T> {
        if index != self.len.load(Ordering::Relaxed) {
            return Err(value);
        }
        let Some(entry) = self.entries.get(index) else {
            return Err(value);
        };
        entry.set(value)?;
        self.len.store(index + 1, Ordering::Release);
        Ok(())
    }

    /// Waits (yielding) until entry `index` is published; false if `stop()` came first.
    pub(crate) fn wait_published(&self, index: usize, stop: impl Fn() -> bool) -> bool {
        while self.len() <= index {
            if stop() {
                return false;
            }
            thread::yield_now();
        }
        true
    }

    /// Entry `index`, if published.
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index < self.len() {
            self.entries[index].get()
        } else {
            None
        }
    }

    /// The published entries, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let n = self.len();
        self.entries[..n].iter().filter_map(OnceLock::get)
    }
}
