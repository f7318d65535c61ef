//! The lock-free local scheduler: worker slots, work-stealing deques and resource gating.
//!
//! A node runs a pool of *slots* — threads, one per CPU by default. Ready work ([`Job`]s: tasks
//! whose arguments are resolved, and actors with calls in their mailbox) travels through
//! crossbeam's work-stealing deques: jobs submitted from a slot go to that slot's own FIFO deque,
//! jobs from any other thread to the shared injector, and idle slots steal. Before a task runs,
//! its resource demand is taken from the node's atomic counters ([`NodeResources`]); a task that
//! does not fit waits in the *pending* queue, the one lock on this path, touched only when
//! resources are short (a 2-CPU task on a busy node, say).
//!
//! See `README.md` beside this file for the sleep/wake protocol, blocking in `get`, and why
//! no wake-up is lost.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use crate::actor::ActorCell;
use crate::error::{Error, TaskError};
use crate::object::{ObjectCell, Waiter};
use crate::resources::{Demand, NodeResources};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, OnceLock, Ordering, fence, lock, thread};
use crate::task::{ArgReader, QUEUED, Task, TaskBody};

mod slot;

pub(crate) use slot::{Blocked, in_slot};

/// Starts one more slot thread for `rt`.
pub(crate) fn spawn_slot(rt: &Arc<crate::runtime::RuntimeInner>) -> Result<(), Error> {
    slot::spawn(rt)
}

/// A unit of ready work.
pub(crate) enum Job {
    /// A task whose arguments are resolved; it takes its resources when a slot picks it up.
    Task(Arc<Task>),
    /// A task that already holds its resources (it came out of the pending queue).
    Reserved(Arc<Task>),
    /// An actor with calls to run.
    Actor(Arc<ActorCell>),
}

/// The scheduler of one node (see the module docs).
pub(crate) struct Scheduler {
    injector: Injector<Job>,
    /// One stealer per started slot; entries are set once, in slot order.
    stealers: Box<[OnceLock<Stealer<Job>>]>,
    /// Slots started so far (`stealers[..slots]` are set).
    slots: AtomicUsize,
    /// Slots started with the runtime; more are added only while slots block in `get`.
    base_slots: usize,
    /// Slots waiting in `get`/`wait` (not running work).
    blocked: AtomicUsize,
    /// Slots spinning for work before they park.
    searching: AtomicUsize,
    sleepers: Mutex<Vec<thread::Thread>>,
    num_sleeping: AtomicUsize,
    pending: Mutex<VecDeque<Arc<Task>>>,
    num_pending: AtomicUsize,
    pub(crate) resources: NodeResources,
    spin: Duration,
    inline_get: bool,
    /// CPUs the slots pin themselves to, round-robin (config `cpu_affinity`; empty: none).
    affinity: Vec<usize>,
    /// Whether a failed pin has been logged (once per scheduler, not once per slot).
    pin_warned: AtomicBool,
    shutdown: AtomicBool,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Tasks completed, for status listings.
    pub(crate) finished: AtomicUsize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("slots", &self.slots.load(Ordering::Relaxed))
            .field("blocked", &self.blocked.load(Ordering::Relaxed))
            .field("pending", &self.num_pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// At most this many slots spin for work at once; the rest park. One is enough to take a
/// burst's first job at once; it wakes another when it finds work (see README).
const MAX_SEARCHING: usize = 1;
/// How many pending tasks one pass over the pending queue examines.
const PENDING_SCAN: usize = 64;

impl Scheduler {
    pub(crate) fn new(
        resources: NodeResources,
        base_slots: usize,
        max_slots: usize,
        spin: Duration,
        inline_get: bool,
        affinity: Vec<usize>,
    ) -> Self {
        let max_slots = max_slots.max(base_slots);
        Scheduler {
            injector: Injector::new(),
            stealers: (0..max_slots).map(|_| OnceLock::new()).collect(),
            slots: AtomicUsize::new(0),
            base_slots,
            blocked: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
            num_sleeping: AtomicUsize::new(0),
            pending: Mutex::new(VecDeque::new()),
            num_pending: AtomicUsize::new(0),
            resources,
            spin,
            inline_get,
            affinity,
            pin_warned: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
            finished: AtomicUsize::new(0),
        }
    }

    pub(crate) fn base_slots(&self) -> usize {
        self.base_slots
    }

    pub(crate) fn num_slots(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    pub(crate) fn num_pending(&self) -> usize {
        self.num_pending.load(Ordering::Relaxed)
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Hands a ready job to the slots: to the caller's own deque when the caller is a slot.
    pub(crate) fn push(&self, job: Job) {
        if let Err(job) = slot::push_local(job) {
            self.injector.push(job);
        }
        self.notify();
    }

    /// Wakes a slot if none is searching (see README, "No lost wake-ups").
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) != 0 {
            return;
        }
        if self.num_sleeping.load(Ordering::SeqCst) > 0 {
            self.wake_one();
        } else {
            self.grow_if_starved();
        }
    }

    fn wake_one(&self) {
        let sleeper = {
            let mut sleepers = lock(&self.sleepers);
            let t = sleepers.pop();
            if t.is_some() {
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            t
        };
        if let Some(t) = sleeper {
            t.unpark();
        }
    }

    /// Starts another slot when blocked slots leave fewer than `base_slots` able to run work
    /// and there is work. This is what keeps nested `get`s from deadlocking the pool.
    fn grow_if_starved(&self) {
        let slots = self.slots.load(Ordering::Acquire);
        let runnable = slots.saturating_sub(self.blocked.load(Ordering::Acquire));
        if runnable < self.base_slots
            && slots < self.stealers.len()
            && self.has_work()
            && let Some(rt) = crate::runtime::current_inner()
            && let Err(e) = slot::spawn(&rt)
        {
            tracing::warn!("could not add a slot for blocked tasks: {e}");
        }
    }

    pub(crate) fn has_work(&self) -> bool {
        if !self.injector.is_empty() {
            return true;
        }
        let n = self.slots.load(Ordering::Acquire);
        self.stealers[..n]
            .iter()
            .any(|s| s.get().is_some_and(|s| !s.is_empty()))
    }

    /// Finds a job: own deque, then the injector, then the other slots' deques.
    fn find_work(&self, local: &Worker<Job>, me: usize) -> Option<Job> {
        if let Some(job) = local.pop() {
            return Some(job);
        }
        let n = self.slots.load(Ordering::Acquire);
        let found = steal(|| self.injector.steal_batch_and_pop(local)).or_else(|| {
            (1..n).find_map(|k| {
                let stealer = self.stealers[(me + k) % n].get()?;
                steal(|| stealer.steal_batch_and_pop(local))
            })
        });
        if found.is_some() && !local.is_empty() {
            // A batch came along with the job: this slot is busy with the first one, so let a
            // sleeping slot know there is more to steal.
            self.notify();
        }
        found
    }

    /// Runs one job on the current thread.
    pub(crate) fn run_job(&self, job: Job) {
        match job {
            Job::Task(task) => {
                if task.state() != QUEUED {
                    return; // cancelled, or run inline by a `get`
                }
                if !self.resources.try_acquire(&task.demand) {
                    self.park_pending(task);
                    return;
                }
                self.run_reserved(task);
            }
            Job::Reserved(task) => self.run_reserved(task),
            Job::Actor(actor) => actor.drain(self),
        }
    }

    /// Runs a task whose resources are held; gives them back if another runner won it.
    fn run_reserved(&self, task: Arc<Task>) {
        if task.claim() {
            self.execute(task);
        } else {
            self.release(&task.demand);
        }
    }

    /// Executes a claimed task holding its resources, then completes its result.
    pub(crate) fn execute(&self, task: Arc<Task>) {
        let outcome = slot::holding(&task.demand, || {
            let _running = crate::cancel::Running::enter(&task);
            catch_unwind(AssertUnwindSafe(|| match &task.body {
                TaskBody::Function(f) => f.invoke(&mut ArgReader::new(&task.args)),
                TaskBody::CreateActor(actor) => actor.construct(&task.args),
            }))
        });
        let keep_resources =
            matches!(&task.body, TaskBody::CreateActor(_)) && matches!(outcome, Ok(Ok(_)));
        let result = match outcome {
            Ok(result) => result,
            Err(payload) => {
                let retries = task.retries_left.load(Ordering::Relaxed);
                // A cancelled task (its body may panic on the `Cancelled` its calls returned)
                // is never run again.
                if retries > 0 && !task.is_interrupted() {
                    task.retries_left.store(retries - 1, Ordering::Relaxed);
                    tracing::warn!(task = %task.id, "task {} panicked; retrying ({} left)", task.name(), retries - 1);
                    self.release(&task.demand);
                    task.unclaim();
                    self.push(Job::Task(task));
                    return;
                }
                Err(Error::Task(TaskError::panic(task.name(), payload.as_ref())))
            }
        };
        if let (TaskBody::CreateActor(actor), Err(e)) = (&task.body, &result) {
            actor.constructor_failed(e.clone());
        }
        // A result the object store had no room for fails this task's object, named.
        let result = result.map_err(|e| e.for_object(task.result.id()));
        task.finish();
        // Resources go back before the result is visible, so whoever the result wakes sees
        // them free (`status()` right after `get` reported a 2-CPU task's CPUs still held).
        if !keep_resources {
            self.release(&task.demand);
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
        task.result.complete(result);
    }

    /// `n` slots go on running work that no longer counts (the methods of a killed actor):
    /// they count as blocked, so the pool grows a slot if they leave too few for the work
    /// there is, until [`Scheduler::reattach_slot`].
    pub(crate) fn detach_slots(&self, n: usize) {
        self.blocked.fetch_add(n, Ordering::SeqCst);
        if self.has_work() {
            self.notify();
        }
    }

    /// A detached slot's work ended: it counts as running again.
    pub(crate) fn reattach_slot(&self) {
        self.blocked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Gives resources back and lets pending tasks have them.
    pub(crate) fn release(&self, demand: &Demand) {
        if demand.is_empty() {
            return;
        }
        self.resources.release(demand);
        self.drain_pending();
    }

    fn park_pending(&self, task: Arc<Task>) {
        {
            let mut pending = lock(&self.pending);
            pending.push_back(task);
            self.num_pending.fetch_add(1, Ordering::SeqCst);
        }
        // Resources may have been released between our failed attempt and the push above;
        // that release saw an empty queue, so look again ourselves.
        self.drain_pending();
    }

    /// Moves pending tasks that now fit to the slots, holding their resources.
    pub(crate) fn drain_pending(&self) {
        if self.num_pending.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut ready = Vec::new();
        {
            let mut pending = lock(&self.pending);
            let mut i = 0;
            let mut scanned = 0;
            while i < pending.len() && scanned < PENDING_SCAN {
                if pending[i].state() != QUEUED {
                    // Run elsewhere meanwhile (a `get` ran it inline): dropped without counting
                    // against the scan, or a run of such entries could end the pass before the
                    // live task behind them — after the last release anyone would make.
                    pending.remove(i);
                    self.num_pending.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                scanned += 1;
                if self.resources.try_acquire(&pending[i].demand) {
                    if let Some(task) = pending.remove(i) {
                        ready.push(task);
                    }
                    self.num_pending.fetch_sub(1, Ordering::SeqCst);
                } else {
                    i += 1;
                }
            }
        }
        for task in ready {
            self.push(Job::Reserved(task));
        }
    }

    /// Blocks the calling thread until `cell` completes or `deadline` passes.
    ///
    /// A slot gives back its CPU while it waits (as Ray's blocked workers do), so nested tasks
    /// can run; a `get` without deadline first runs the producing task itself if it is still
    /// queued (config `inline_get`).
    pub(crate) fn wait_for(
        &self,
        cell: &Arc<ObjectCell>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let _blocked = slot::Blocked::enter(self);
        if deadline.is_none()
            && self.inline_get
            && let Some(task) = cell.producer()
        {
            self.help(task);
        }
        if deadline.is_none() && self.inline_get && !slot::in_slot() {
            // A thread that is not a slot (the driver) runs queued jobs itself while it waits,
            // as rayon's `join` does: an actor call it waits for then needs no slot to wake
            // up, which is what a busy machine makes slow. Slots do not do this, so helping
            // never nests beyond the targeted task above.
            while !cell.is_ready() {
                match steal(|| self.injector.steal()) {
                    Some(job) => self.run_job(job),
                    None => break,
                }
            }
        }
        if self.spin_until(|| cell.is_ready(), deadline) {
            return Ok(());
        }
        if cell.register(Waiter::Thread(thread::current())).is_err() {
            return Ok(());
        }
        // A task cancelled while it waits here is woken and told so (`cancel.rs`, step 3).
        let cancelled = crate::cancel::blocking();
        self.park_until(|| cell.is_ready() || cancelled(), deadline)
            .map_err(|waited| Error::Timeout {
                object: cell.id(),
                waited,
            })?;
        crate::cancel::check()
    }

    /// Runs a queued task on the calling thread, if it fits now.
    fn help(&self, task: Arc<Task>) {
        if task.state() != QUEUED || !self.resources.try_acquire(&task.demand) {
            return;
        }
        if task.claim() {
            let _running = slot::Blocked::suspend(self);
            self.execute(task);
        } else {
            self.release(&task.demand);
        }
    }

    /// Spins until `done` or the spin budget (or `deadline`) runs out. Returns `done()`.
    pub(crate) fn spin_until(&self, done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        let start = Instant::now();
        let mut until = start + self.spin;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        loop {
            for _ in 0..32 {
                if done() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return done();
            }
        }
    }

    /// Parks until `done` (the waker must unpark this thread) or `deadline`; on timeout returns
    /// how long it waited.
    pub(crate) fn park_until(
        &self,
        done: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> Result<(), Duration> {
        let start = Instant::now();
        loop {
            if done() {
                return Ok(());
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(now - start);
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    }

    /// Stops every slot, then fails whatever work is left with [`Error::ShutDown`].
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let sleepers = std::mem::take(&mut *lock(&self.sleepers));
        self.num_sleeping.store(0, Ordering::SeqCst);
        for t in sleepers {
            t.unpark();
        }
        let handles = std::mem::take(&mut *lock(&self.handles));
        let me = thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        loop {
            match self.injector.steal() {
                Steal::Success(job) => fail_job(job),
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        for task in pending {
            fail_job(Job::Task(task));
        }
    }
}

/// Retries a steal until it succeeds or finds nothing.
fn steal(mut attempt: impl FnMut() -> Steal<Job>) -> Option<Job> {
    loop {
        match attempt() {
            Steal::Success(job) => return Some(job),
            Steal::Retry => continue,
            Steal::Empty => return None,
        }
    }
}

/// Completes a job that will never run with [`Error::ShutDown`].
pub(crate) fn fail_job(job: Job) {
    match job {
        Job::Task(task) | Job::Reserved(task) => {
            if task.cancel() || task.claim() {
                if let TaskBody::CreateActor(actor) = &task.body {
                    actor.constructor_failed(Error::ShutDown);
                }
                task.result.complete(Err(Error::ShutDown));
            }
        }
        Job::Actor(actor) => actor.fail_all(Error::ShutDown),
    }
}
