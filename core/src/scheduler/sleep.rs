//! The slots' sleep/wake protocol: who searches for work, who sleeps, and who wakes whom.
//!
//! Waking a parked thread costs 40–150 µs on the machines we run on, far more than a task, so
//! an idle slot first *searches* (spins looking for work) and only then *sleeps* (parks). At
//! most [`MAX_SEARCHING`] slots search at once; the rest go straight to sleep.
//!
//! # The protocol
//!
//! A *pusher* makes a job visible (pushes it to a deque), then calls [`Sleep::notify`]:
//! (P1) `fence(SeqCst)`; (P2) if a slot is searching, return — the searcher will see the job;
//! (P3) otherwise, if a slot sleeps, wake one ([`Sleep::wake_one`]: pop it off the sleepers
//! list, unpark it); if none sleeps, the pool may grow ([`Notified::NoneAsleep`]).
//!
//! An idle slot runs [`Sleep::search`], then, having found nothing, [`Sleep::sleep`]:
//!
//! - (S1) raise `searching` (or give up at once if `MAX_SEARCHING` already search); look for
//!   work until the spin budget runs out; (S2) lower `searching`, then `fence(SeqCst)`;
//!   (S3) if it found a job, was the last searcher and more work is queued, notify (hand the
//!   searching role on: a burst may be arriving).
//! - (Z1) under the sleepers lock, add itself to the list and raise `num_sleeping`;
//!   (Z2) `fence(SeqCst)`; (Z3) look for work in every queue, and park only if there is none;
//!   (Z4) leave the list (unless a waker already took it off); (Z5) take a job, and if it got
//!   one: `fence(SeqCst)`, and notify if more work is queued.
//!
//! # Invariants
//!
//! 1. `num_sleeping` equals the length of the sleepers list whenever its lock is free (both
//!    change together under it).
//! 2. *No lost wake-up*: after a job is made visible and the pusher's `notify` returns, some
//!    slot is awake that will look for work after the job became visible — so a queued job
//!    is never left while every slot that could take it parks. By the SeqCst fences (P1, S2,
//!    Z2, Z5), for each pusher and each idle slot, either the pusher sees the slot counted
//!    (searching at P2, or asleep at P3), or the slot sees the job (at S1's last look, Z3 or
//!    Z5). A slot seen searching at P2 looks again at Z3 before it parks.
//! 3. *One job per awake slot is all a look guarantees*, so every path on which a slot
//!    takes a job that another slot might have been counted on hands the role on: a searcher
//!    that found a job (S3), and a slot leaving sleep with a job (Z5). Several pushes may
//!    have skipped waking on the strength of one searcher (P2), or one sleeper's look at Z3
//!    may have seen several jobs, or a pusher may have taken a slot off the list (P3) that
//!    had already seen work at Z3 and did not park: each time one awake slot stands for
//!    several jobs, and it wakes the next one when it takes its own.
//! 4. `thread::park` keeps an unpark token, so an unpark that lands before the park is not
//!    lost; a spurious return from `park` only costs a look for work.
//!
//! Invariant 3's Z5 is the fix of the one lost wake-up found in this protocol (two serial
//! actors meeting at a `Barrier` on 2 slots stalled about once in 1,000 rounds):
//! two pushes both skipped waking because one slot was searching (P2); that slot had just
//! looked for the last time, gave up, and at Z3 saw the jobs, so it did not park — and took
//! one. The other slot slept on, the second job queued, while the first job waited for it.
//! The loom model `sleep_wake::barrier_pair_on_two_workers` (`core/loom`, run by
//! `scripts/loom`) finds that interleaving without Z5 and none with it. On the real runtime,
//! with the monitor's repair off (`MANTA_TESTING_NO_WAKEUP_REPAIR=1`), the barrier test
//! (`actor_semantics::serial_actors_meeting_at_a_barrier_never_stall`, 2,000 rounds) stalled
//! in 8 of 10 runs without Z5, and in none of 250 with it.
//!
//! The scheduler's monitor still wakes a slot it sees asleep beside queued work on two looks
//! in a row, as a backstop only (it counts each such wake in `lost_wakeups`): the model
//! checks this protocol, not crossbeam's deques behind [`Pool::find`], nor the other places
//! that notify (a slot that steals a batch, or blocks with jobs in its deque).

use crate::sync::{AtomicUsize, Mutex, Ordering, fence, lock, thread};

/// At most this many slots spin for work at once; the rest park. One is enough to take a
/// burst's first job at once; it wakes another when it finds work.
pub(crate) const MAX_SEARCHING: usize = 1;

/// What the protocol needs from the pool of slots it puts to sleep.
pub(crate) trait Pool {
    /// A unit of work.
    type Job;
    /// Takes a job from any queue the calling slot may take from.
    fn find(&self) -> Option<Self::Job>;
    /// Whether any queue a slot could take from holds a job.
    fn has_work(&self) -> bool;
    /// Wakes a slot for queued work: [`Sleep::notify`], and whatever the pool does when
    /// nobody sleeps.
    fn notify(&self);
    /// Whether the pool is shutting down (an idle slot then neither spins nor parks).
    fn is_shut_down(&self) -> bool;
}

/// What [`Sleep::notify`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notified {
    /// A slot is searching: it will see the work.
    Searching,
    /// A sleeping slot was woken (or left the list meanwhile, awake).
    Sleeper,
    /// No slot searches or sleeps: every slot is busy.
    NoneAsleep,
}

/// The searching and sleeping slots of one pool (see the module docs).
pub(crate) struct Sleep {
    /// Slots searching (S1–S2); briefly more than `MAX_SEARCHING` while a slot is turned away.
    searching: AtomicUsize,
    /// Slots asleep (Z1–Z4), to unpark.
    sleepers: Mutex<Vec<thread::Thread>>,
    /// The length of `sleepers`, readable without its lock.
    num_sleeping: AtomicUsize,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("searching", &self.searching.load(Ordering::Relaxed))
            .field("sleeping", &self.num_sleeping.load(Ordering::Relaxed))
            .finish()
    }
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            searching: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
            num_sleeping: AtomicUsize::new(0),
        }
    }

    /// Slots searching now.
    pub(crate) fn searching(&self) -> usize {
        self.searching.load(Ordering::SeqCst)
    }

    /// Slots asleep now.
    pub(crate) fn num_sleeping(&self) -> usize {
        self.num_sleeping.load(Ordering::SeqCst)
    }

    /// P1–P3: wakes a slot for work the caller made visible, unless one is searching.
    pub(crate) fn notify(&self) -> Notified {
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) != 0 {
            return Notified::Searching;
        }
        if self.num_sleeping.load(Ordering::SeqCst) > 0 {
            self.wake_one();
            Notified::Sleeper
        } else {
            Notified::NoneAsleep
        }
    }

    /// Takes one sleeper off the list and unparks it; false if none was listed.
    pub(crate) fn wake_one(&self) -> bool {
        let sleeper = {
            let mut sleepers = lock(&self.sleepers);
            let t = sleepers.pop();
            if t.is_some() {
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            t
        };
        match sleeper {
            Some(t) => {
                t.unpark();
                true
            }
            None => false,
        }
    }

    /// Wakes every sleeper (shutdown).
    pub(crate) fn wake_all(&self) {
        let sleepers = std::mem::take(&mut *lock(&self.sleepers));
        self.num_sleeping.store(0, Ordering::SeqCst);
        for t in sleepers {
            t.unpark();
        }
    }

    /// The idle path of a slot that found no work: [`Sleep::search`] while `more()` says so,
    /// then [`Sleep::sleep`] if that found nothing. Returns the job found, if any.
    pub(crate) fn idle<P: Pool>(&self, pool: &P, more: impl FnMut() -> bool) -> Option<P::Job> {
        self.search(pool, more).or_else(|| self.sleep(pool))
    }

    /// S1–S3: searches for work while `more()` says so (the spin budget; it is called between
    /// looks), if fewer than [`MAX_SEARCHING`] slots already search.
    pub(crate) fn search<P: Pool>(
        &self,
        pool: &P,
        mut more: impl FnMut() -> bool,
    ) -> Option<P::Job> {
        if self.searching.fetch_add(1, Ordering::SeqCst) >= MAX_SEARCHING {
            self.searching.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let found = loop {
            if let Some(job) = pool.find() {
                break Some(job);
            }
            if pool.is_shut_down() || !more() {
                break None;
            }
        };
        let was_last = self.searching.fetch_sub(1, Ordering::SeqCst) == 1;
        if found.is_some() && was_last {
            fence(Ordering::SeqCst);
            if pool.has_work() {
                // A burst may be arriving: hand the searching role on.
                pool.notify();
            }
        }
        found
    }

    /// Z1–Z5: parks the calling slot until woken, unless it sees work after registering;
    /// then takes a job, handing the role on if more work is queued (invariant 3).
    pub(crate) fn sleep<P: Pool>(&self, pool: &P) -> Option<P::Job> {
        let me = thread::current();
        {
            let mut sleepers = lock(&self.sleepers);
            sleepers.push(me.clone());
            self.num_sleeping.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        if !(pool.has_work() || pool.is_shut_down()) {
            thread::park();
        }
        {
            let mut sleepers = lock(&self.sleepers);
            if let Some(i) = sleepers.iter().position(|t| t.id() == me.id()) {
                sleepers.swap_remove(i);
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let job = pool.find()?;
        fence(Ordering::SeqCst);
        if pool.has_work() {
            pool.notify();
        }
        Some(job)
    }
}
