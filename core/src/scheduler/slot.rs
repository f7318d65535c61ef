//! Slot threads: their main loop, thread-local state, and accounting for slots that block.
//!
//! Each slot thread owns a FIFO `Worker` deque (thread-local here, its `Stealer` published in
//! the scheduler) and remembers how much CPU the task it is running holds, so that blocking in
//! `get` can give exactly that back. A slot starting with a configured `cpu_affinity` pins
//! itself to the list's CPUs in turn (slot `i` to the `i`-th, round-robin), before it takes
//! any work.

use std::cell::{Cell, OnceCell};
use std::time::Instant;

use crossbeam_deque::Worker;

use super::{Job, MAX_SEARCHING, Scheduler, fail_job};
use crate::error::Error;
use crate::resources::Demand;
use crate::runtime::RuntimeInner;
use crate::sync::{Arc, Ordering, fence, lock, thread};

thread_local! {
    /// The slot's own deque; unset on threads that are not slots.
    static LOCAL: OnceCell<Worker<Job>> = const { OnceCell::new() };
    /// CPU (thousandths) held by the task this thread is running, 0 when none.
    static HELD_CPU: Cell<i64> = const { Cell::new(0) };
    /// Whether this slot is counted in the scheduler's `blocked` (so it is counted once).
    static COUNTED_BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a slot.
pub(crate) fn in_slot() -> bool {
    LOCAL.with(|l| l.get().is_some())
}

/// Pushes onto the calling slot's own deque, or hands the job back if this is not a slot.
pub(super) fn push_local(job: Job) -> Result<(), Job> {
    LOCAL.with(|l| match l.get() {
        Some(worker) => {
            worker.push(job);
            Ok(())
        }
        None => Err(job),
    })
}

/// Runs `f` recording that the current thread holds `demand`'s CPU (and its GPUs, for
/// `gpu_ids`).
pub(super) fn holding<R>(demand: &Demand, f: impl FnOnce() -> R) -> R {
    let prev = HELD_CPU.with(|h| h.replace(demand.cpu()));
    let r = crate::gpus::holding(demand.gpus(), f);
    HELD_CPU.with(|h| h.set(prev));
    r
}

/// Whether the task the calling thread runs holds enough to cover `demand` on its own: a
/// demand of CPU only, no more than the CPU held (an empty demand always fits).
pub(super) fn can_lend(demand: &Demand) -> bool {
    demand.is_cpu_only() && demand.cpu() <= HELD_CPU.with(Cell::get)
}

/// Starts one more slot thread.
pub(super) fn spawn(rt: &Arc<RuntimeInner>) -> Result<(), Error> {
    let scheduler = &rt.scheduler;
    let mut handles = lock(&scheduler.handles);
    if scheduler.is_shut_down() {
        return Ok(());
    }
    let index = scheduler.slots.load(Ordering::Acquire);
    if index >= scheduler.stealers.len() {
        return Err(Error::Os {
            what: "adding a slot",
            message: "max_slots reached".into(),
        });
    }
    let worker = Worker::new_fifo();
    let _ = scheduler.stealers[index].set(worker.stealer());
    let rt2 = rt.clone();
    let handle = thread::Builder::new()
        .name(format!("manta-slot-{index}"))
        .spawn(move || main_loop(rt2, index, worker))
        .map_err(|e| Error::Os {
            what: "starting a slot thread",
            message: e.to_string(),
        })?;
    // Publish only after the thread exists: stealers[..slots] are always set.
    scheduler.slots.store(index + 1, Ordering::Release);
    handles.push(handle);
    Ok(())
}

fn main_loop(rt: Arc<RuntimeInner>, me: usize, worker: Worker<Job>) {
    LOCAL.with(|l| {
        let _ = l.set(worker);
    });
    let s = &rt.scheduler;
    // Take no work before `spawn` has published this slot: jobs this slot pushed to its deque
    // meanwhile would be invisible to `has_work` (it scans `stealers[..slots]`), so a slot
    // going to sleep, or this one blocking in `get`, could miss them — every other slot
    // asleep or blocked, and the job never taken (the `fib(15)`-on-one-CPU hang).
    while s.slots.load(Ordering::Acquire) <= me {
        thread::yield_now();
    }
    pin(s, me);
    loop {
        if let Some(job) = LOCAL.with(|l| l.get().and_then(|w| s.find_work(w, me))) {
            s.run_job(job);
            continue;
        }
        if s.is_shut_down() {
            break;
        }
        if let Some(job) = search(s, me) {
            s.run_job(job);
            continue;
        }
        sleep(s);
    }
    LOCAL.with(|l| {
        if let Some(w) = l.get() {
            while let Some(job) = w.pop() {
                fail_job(job);
            }
        }
    });
}

/// Pins the calling slot `me` to its CPU of the configured list (round-robin); a refusal is
/// logged once per scheduler and the slot runs unpinned.
fn pin(s: &Scheduler, me: usize) {
    let Some(cpu) = crate::affinity::cpu_for_slot(&s.affinity, me) else {
        return;
    };
    if let Err(e) = crate::affinity::pin_current_thread(&[cpu])
        && !s.pin_warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            slot = me,
            cpu,
            error = %e,
            "could not pin a slot thread to its CPU: it runs unpinned (logged once)"
        );
    }
}

/// Spins for work for the configured time, if fewer than `MAX_SEARCHING` slots already do.
fn search(s: &Scheduler, me: usize) -> Option<Job> {
    if s.searching.fetch_add(1, Ordering::SeqCst) >= MAX_SEARCHING {
        s.searching.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let until = Instant::now() + s.spin;
    let found = loop {
        if let Some(job) = LOCAL.with(|l| l.get().and_then(|w| s.find_work(w, me))) {
            break Some(job);
        }
        if s.is_shut_down() || Instant::now() >= until {
            break None;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    };
    let was_last = s.searching.fetch_sub(1, Ordering::SeqCst) == 1;
    if found.is_some() && was_last && s.has_work() {
        // A burst may be arriving: hand the searching role on.
        s.notify();
    }
    found
}

/// Parks until woken; re-checks for work after registering (README, "No lost wake-ups").
fn sleep(s: &Scheduler) {
    let me = thread::current();
    {
        let mut sleepers = lock(&s.sleepers);
        sleepers.push(me.clone());
        s.num_sleeping.fetch_add(1, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
    if !(s.has_work() || s.is_shut_down()) {
        thread::park();
    }
    let mut sleepers = lock(&s.sleepers);
    if let Some(i) = sleepers.iter().position(|t| t.id() == me.id()) {
        sleepers.swap_remove(i);
        s.num_sleeping.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks the calling thread as waiting (in `get`, `wait` or `block_on`) for its lifetime, or
/// as running calls of a threaded actor (`max_concurrency > 1`; see `ActorCell::drain_until`).
/// A slot is counted once however deeply these nest.
///
/// The CPU held by the task the thread runs is given back meanwhile, so other tasks — often the
/// very ones waited for — can run; on a slot the scheduler may add a slot if blocked ones leave
/// too few to run work. Dropping the guard takes the CPU back, even if that oversubscribes.
#[derive(Debug)]
pub(crate) struct Blocked<'a> {
    s: &'a Scheduler,
    held: i64,
    slot: bool,
}

impl<'a> Blocked<'a> {
    pub(crate) fn enter(s: &'a Scheduler) -> Self {
        let held = HELD_CPU.with(|h| h.replace(0));
        if held > 0 {
            s.resources.release_cpu(held);
            s.drain_pending();
        }
        let slot = in_slot() && !COUNTED_BLOCKED.with(|c| c.replace(true));
        if slot {
            s.blocked.fetch_add(1, Ordering::SeqCst);
            // Jobs may sit in this slot's deque (pushed by the task, or stolen in a batch) while
            // the other slots sleep: make sure someone takes them, adding a slot if all block.
            if s.has_work() {
                s.notify();
            }
        }
        Blocked { s, held, slot }
    }

    /// While the returned guard lives, a blocked slot counts as running again (it is running
    /// the task it waits for).
    pub(crate) fn suspend(s: &'a Scheduler) -> Suspended<'a> {
        let slot = in_slot() && COUNTED_BLOCKED.with(|c| c.replace(false));
        if slot {
            s.blocked.fetch_sub(1, Ordering::SeqCst);
        }
        Suspended { s, slot }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if self.slot {
            self.s.blocked.fetch_sub(1, Ordering::SeqCst);
            COUNTED_BLOCKED.with(|c| c.set(false));
        }
        if self.held > 0 {
            self.s.resources.force_acquire_cpu(self.held);
        }
        HELD_CPU.with(|h| h.set(self.held));
    }
}

/// See [`Blocked::suspend`].
#[derive(Debug)]
pub(crate) struct Suspended<'a> {
    s: &'a Scheduler,
    slot: bool,
}

impl Drop for Suspended<'_> {
    fn drop(&mut self) {
        if self.slot {
            self.s.blocked.fetch_add(1, Ordering::SeqCst);
            COUNTED_BLOCKED.with(|c| c.set(true));
        }
    }
}
