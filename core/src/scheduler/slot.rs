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

use super::sleep::Pool;
use super::{Job, Scheduler, fail_job};
use crate::error::Error;
use crate::resources::Demand;
use crate::runtime::RuntimeInner;
use crate::sync::{Arc, Ordering, lock, thread};

/// Pauses between a searching slot's first looks for work (see the idle path of `run`).
const SEARCH_PAUSES: u32 = 64;

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
/// `gpu_ids`), pinned to its placement-group bundle's CPU set if it has one (and holding the
/// bundle's GPUs).
pub(super) fn holding<R>(demand: &Demand, f: impl FnOnce() -> R) -> R {
    let prev = HELD_CPU.with(|h| h.replace(demand.cpu()));
    let r = crate::affinity::in_bundle(demand.bundle(), |bundle_gpus| {
        crate::gpus::holding(demand.gpus(), bundle_gpus, f)
    });
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
    let index = scheduler.slots.len();
    if index >= scheduler.slots.capacity() {
        return Err(Error::Os {
            what: "adding a slot",
            message: "max_slots reached".into(),
        });
    }
    let worker = Worker::new_fifo();
    let stealer = worker.stealer();
    let rt2 = rt.clone();
    let handle = thread::Builder::new()
        .name(format!("manta-slot-{index}"))
        .spawn(move || main_loop(rt2, index, worker))
        .map_err(|e| Error::Os {
            what: "starting a slot thread",
            message: e.to_string(),
        })?;
    // Publish only once the thread exists (it waits for this before taking work).
    let published = scheduler.slots.publish(index, stealer);
    handles.push(handle);
    // Not expected: `handles` serialises spawns and `index` is the next one. The thread then
    // waits for shutdown, and is joined with the others.
    published.map_err(|_| Error::Os {
        what: "adding a slot",
        message: format!("slot {index} could not be published"),
    })
}

fn main_loop(rt: Arc<RuntimeInner>, me: usize, worker: Worker<Job>) {
    LOCAL.with(|l| {
        let _ = l.set(worker);
    });
    let s = &rt.scheduler;
    // Take no work before `spawn` has published this slot: jobs this slot pushed to its deque
    // meanwhile would be invisible to `has_work` (it scans the published slots), so a slot
    // going to sleep, or this one blocking in `get`, could miss them — every other slot
    // asleep or blocked, and the job never taken (the `fib(15)`-on-one-CPU hang).
    if !s.slots.wait_published(me, || s.is_shut_down()) {
        return;
    }
    pin(s, me);
    let pool = SlotPool { s, me };
    loop {
        if let Some(job) = pool.find() {
            s.run_job(job);
            continue;
        }
        if s.is_shut_down() {
            break;
        }
        // Idle: search for the configured time, then sleep (`sleep.rs`). The looks come
        // further apart the longer the search lasts (64 pauses, then 128, then 256): a job a
        // thread pushes and then waits for (a driver's call of an idle actor, which its `get`
        // drains itself) is then rarely taken by a slot in between, which would make the
        // waiter wait for the slot (`1:1 actor calls sync`: 0.84x -> 1.1x of the looks at a
        // fixed 64 pauses); a slot that keeps finding work keeps looking often.
        let until = Instant::now() + s.spin;
        let mut looks = 0u32;
        let spin = || {
            if Instant::now() >= until {
                return false;
            }
            looks += 1;
            for _ in 0..SEARCH_PAUSES << (looks / 8).min(2) {
                std::hint::spin_loop();
            }
            true
        };
        if let Some(job) = s.sleep.idle(&pool, spin) {
            s.run_job(job);
        }
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

/// Slot `me` of `s`, as the sleep/wake protocol sees it.
struct SlotPool<'a> {
    s: &'a Scheduler,
    me: usize,
}

impl Pool for SlotPool<'_> {
    type Job = Job;

    fn find(&self) -> Option<Job> {
        LOCAL.with(|l| l.get().and_then(|w| self.s.find_work(w, self.me)))
    }

    fn has_work(&self) -> bool {
        self.s.has_work()
    }

    fn notify(&self) {
        self.s.notify();
    }

    fn is_shut_down(&self) -> bool {
        self.s.is_shut_down()
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
