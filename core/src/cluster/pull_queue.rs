//! The pull queue, sans I/O (Ray's `PullManager` admission): which of the queued pulls of
//! objects held elsewhere start now. The object manager (`object_manager.rs`) keeps one
//! behind a lock, feeds it events and performs what it answers; nothing here sends, waits or
//! reads a clock, so the policy is tested deterministically below.
//!
//! # Protocol
//!
//! 1. **Request** ([`PullQueue::push`]): a pull joins the queue with its priority — a `get`
//!    (0) before a `wait` (1) before a task argument (2) — and its size; a size of 0
//!    (unknown) counts as `unknown_bytes`. Within a priority, first come first served.
//! 2. **Admit** ([`PullQueue::next`]): the head of the queue starts if its bytes fit in what
//!    `limit` leaves beside the pulls in flight, or if nothing is in flight (one pull always
//!    may run, however large). The caller asks again until the answer is `None`; the head
//!    that does not fit blocks the pulls behind it (no smaller pull of a lower priority
//!    overtakes it, so a `get` is never starved by task arguments). A head whose reader is
//!    gone (the caller's `abandoned` says so) is dropped without counting.
//! 3. **Finish** ([`PullQueue::finished`]): a started pull's bytes leave the budget (whether
//!    it succeeded or failed); the caller admits again.
//!
//! Why it is correct: bytes in flight only grow in step 2, by a pull that fits or that runs
//! alone, so they never exceed `limit` unless one pull does by itself; and they shrink by
//! exactly what was counted at admission, since the caller hands back the `bytes` of the
//! [`Start`] it got.

use std::collections::BTreeMap;

/// A pull to start now, with the bytes it counts until [`PullQueue::finished`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Start<T> {
    pub(super) bytes: u64,
    pub(super) item: T,
}

/// Queued pulls and the bytes in flight.
#[derive(Debug)]
pub(super) struct PullQueue<T> {
    /// Bytes of pulls in flight at once (more wait).
    limit: u64,
    /// What a pull of unknown size counts.
    unknown_bytes: u64,
    in_flight: u64,
    seq: u64,
    /// By (priority, arrival): the first entry is the head.
    waiting: BTreeMap<(u8, u64), Start<T>>,
}

impl<T> PullQueue<T> {
    /// An empty queue admitting `limit` bytes at once; a pull of unknown size counts
    /// `unknown_bytes`.
    pub(super) fn new(limit: u64, unknown_bytes: u64) -> Self {
        PullQueue {
            limit,
            unknown_bytes,
            in_flight: 0,
            seq: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Step 1: a pull of `len` bytes (0: unknown) with `priority` (0 first) joins the queue.
    pub(super) fn push(&mut self, priority: u8, len: u64, item: T) {
        let seq = self.seq;
        self.seq += 1;
        let bytes = len.max(self.unknown_bytes);
        self.waiting.insert((priority, seq), Start { bytes, item });
    }

    /// Step 2: the next pull to start, if the head fits (or nothing is in flight); heads
    /// for which `abandoned` holds are dropped on the way.
    pub(super) fn next(&mut self, abandoned: impl Fn(&T) -> bool) -> Option<Start<T>> {
        loop {
            let (_, head) = self.waiting.first_key_value()?;
            if self.in_flight > 0 && self.in_flight + head.bytes > self.limit {
                return None;
            }
            let (_, head) = self.waiting.pop_first()?;
            if abandoned(&head.item) {
                continue;
            }
            self.in_flight += head.bytes;
            return Some(head);
        }
    }

    /// Step 3: a started pull that counted `bytes` is done.
    pub(super) fn finished(&mut self, bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// Bytes of the pulls in flight.
    #[cfg(test)]
    fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Pulls waiting.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: u8 = 0;
    const WAIT: u8 = 1;
    const ARG: u8 = 2;

    /// Admits until the queue says no: the started items.
    fn drain(q: &mut PullQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.next(|_| false).map(|s| s.item)).collect()
    }

    #[test]
    fn gets_before_waits_before_arguments() {
        let mut q = PullQueue::new(1000, 1);
        q.push(ARG, 10, "arg");
        q.push(WAIT, 10, "wait");
        q.push(GET, 10, "get");
        assert_eq!(drain(&mut q), ["get", "wait", "arg"]);
    }

    #[test]
    fn first_come_first_served_within_a_priority() {
        let mut q = PullQueue::new(1000, 1);
        for item in ["a", "b", "c"] {
            q.push(ARG, 10, item);
        }
        q.push(GET, 10, "g");
        assert_eq!(drain(&mut q), ["g", "a", "b", "c"]);
    }

    #[test]
    fn bytes_in_flight_stay_within_the_limit() {
        let mut q = PullQueue::new(100, 1);
        q.push(GET, 60, "a");
        q.push(GET, 60, "b");
        assert_eq!(drain(&mut q), ["a"]);
        assert_eq!(q.in_flight(), 60);
        q.finished(60);
        assert_eq!(drain(&mut q), ["b"]);
    }

    #[test]
    fn pulls_that_fit_together_start_together() {
        let mut q = PullQueue::new(100, 1);
        for item in ["a", "b", "c"] {
            q.push(ARG, 30, item);
        }
        q.push(ARG, 30, "d");
        assert_eq!(drain(&mut q), ["a", "b", "c"]);
        assert_eq!(q.in_flight(), 90);
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn one_pull_always_runs_however_large() {
        let mut q = PullQueue::new(100, 1);
        q.push(GET, 5000, "huge");
        q.push(GET, 1, "small");
        assert_eq!(drain(&mut q), ["huge"]);
        q.finished(5000);
        assert_eq!(drain(&mut q), ["small"]);
        assert_eq!(q.in_flight(), 1);
    }

    #[test]
    fn an_unknown_size_counts_the_default() {
        let mut q = PullQueue::new(100, 40);
        q.push(ARG, 0, "a");
        q.push(ARG, 0, "b");
        q.push(ARG, 0, "c");
        assert_eq!(drain(&mut q), ["a", "b"]);
        assert_eq!(q.in_flight(), 80);
        // A small known size counts the default too: it is a floor.
        q.finished(40);
        q.push(GET, 5, "d");
        let start = q.next(|_| false);
        assert_eq!(
            start,
            Some(Start {
                bytes: 40,
                item: "d"
            })
        );
    }

    #[test]
    fn a_head_that_does_not_fit_is_not_overtaken() {
        let mut q = PullQueue::new(100, 1);
        q.push(ARG, 90, "running");
        assert_eq!(drain(&mut q), ["running"]);
        q.push(GET, 50, "get");
        q.push(ARG, 5, "small arg");
        assert_eq!(drain(&mut q), Vec::<&str>::new());
        q.finished(90);
        assert_eq!(drain(&mut q), ["get", "small arg"]);
    }

    #[test]
    fn abandoned_pulls_are_dropped_without_counting() {
        let mut q = PullQueue::new(100, 1);
        q.push(GET, 60, "gone");
        q.push(GET, 60, "wanted");
        let started: Vec<_> =
            std::iter::from_fn(|| q.next(|item| *item == "gone").map(|s| s.item)).collect();
        assert_eq!(started, ["wanted"]);
        assert_eq!(q.in_flight(), 60);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn finishing_more_than_in_flight_saturates() {
        let mut q: PullQueue<&str> = PullQueue::new(100, 1);
        q.finished(10);
        assert_eq!(q.in_flight(), 0);
        q.push(GET, 100, "a");
        assert_eq!(drain(&mut q), ["a"]);
    }

    /// Seeded interleavings of requests and completions: bytes in flight never exceed the
    /// limit unless one pull runs alone, return to zero when all finish, and every pull
    /// starts exactly once, in priority order among those waiting together.
    #[test]
    fn random_interleavings_keep_the_invariants() {
        for seed in 1..=200u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let limit = 100;
            let mut q: PullQueue<u64> = PullQueue::new(limit, 8);
            let mut running: Vec<Start<u64>> = Vec::new();
            let mut started = Vec::new();
            let mut pushed = 0u64;
            for _ in 0..300 {
                if next() % 3 != 0 && pushed < 150 {
                    let priority = (next() % 3) as u8;
                    let len = next() % 70;
                    q.push(priority, len, pushed);
                    pushed += 1;
                } else if !running.is_empty() {
                    let i = (next() % running.len() as u64) as usize;
                    let done = running.swap_remove(i);
                    q.finished(done.bytes);
                }
                while let Some(s) = q.next(|_| false) {
                    started.push(s.item);
                    running.push(s);
                }
                let bytes: u64 = running.iter().map(|s| s.bytes).sum();
                assert_eq!(q.in_flight(), bytes, "seed {seed}");
                assert!(bytes <= limit || running.len() == 1, "seed {seed}");
            }
            for s in running.drain(..) {
                q.finished(s.bytes);
                while let Some(s) = q.next(|_| false) {
                    started.push(s.item);
                    q.finished(s.bytes);
                }
            }
            assert_eq!(q.in_flight(), 0, "seed {seed}");
            assert_eq!(q.waiting(), 0, "seed {seed}");
            started.sort_unstable();
            assert_eq!(started, (0..pushed).collect::<Vec<_>>(), "seed {seed}");
        }
    }
}
