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
use crossbeam_utils::CachePadded;

use crate::actor::ActorCell;
use crate::error::{Error, TaskError};
use crate::object::{ObjectCell, Waiter};
use crate::resources::{Demand, NodeResources};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering, lock, thread};
use crate::task::{ArgReader, QUEUED, Task, TaskBody};

mod publish;
mod sleep;
mod slot;

use publish::Published;
use sleep::{Notified, Sleep};
pub(crate) use slot::{Blocked, in_slot};

/// Starts one more slot thread for `rt`.
pub(crate) fn spawn_slot(rt: &Arc<crate::runtime::RuntimeInner>) -> Result<(), Error> {
    slot::spawn(rt)
}

/// Starts `rt`'s monitor thread (see [`monitor`]).
pub(crate) fn spawn_monitor(rt: &Arc<crate::runtime::RuntimeInner>) -> Result<(), Error> {
    let rt2 = rt.clone();
    let handle = thread::Builder::new()
        .name("manta-monitor".into())
        .spawn(move || monitor(&rt2))
        .map_err(|e| Error::Os {
            what: "starting the scheduler's monitor thread",
            message: e.to_string(),
        })?;
    lock(&rt.scheduler.handles).push(handle);
    Ok(())
}

/// How often the monitor looks at slots draining actors.
const MONITOR_TICK: Duration = Duration::from_millis(10);

/// The monitor: adds a slot when slots draining actors made no progress for a tick (no call
/// finished) while work is queued and no slot is idle (README, "Actors and the monitor").
/// Those slots hold no CPU: an actor's calls take none (as Ray's actors, each on a worker of
/// its own), so a long call must not keep another actor's calls or a task from starting, and
/// a threaded actor's calls may wait for each other (a barrier across `max_concurrency`
/// calls), which only another slot can release.
fn monitor(rt: &Arc<crate::runtime::RuntimeInner>) {
    let s = &rt.scheduler;
    let mut last = None;
    let mut asleep_beside_work = false;
    let repair = std::env::var_os("MANTA_TESTING_NO_WAKEUP_REPAIR").is_none();
    while !s.is_shut_down() {
        // A slot asleep while work is queued, on two looks in a row: a wake-up went missing.
        // The sleep/wake protocol loses none (`sleep.rs`, checked by its loom model); this
        // is a backstop for the paths the model does not cover, and counts what it repairs.
        // Waking a slot is harmless if none was lost.
        let queued = s.sleep.searching() == 0 && s.has_work();
        let asleep = s.sleep.num_sleeping() > 0;
        let now = queued && asleep;
        if now && asleep_beside_work && repair {
            s.lost_wakeups.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("a slot slept beside queued work: woken by the monitor");
            s.sleep.wake_one();
        }
        asleep_beside_work = now;
        if s.actor_drains.load(Ordering::SeqCst) == 0 {
            last = None;
            thread::park_timeout(SHUTDOWN_POLL);
            continue;
        }
        let done = s.actor_calls.load(Ordering::SeqCst);
        if last == Some(done)
            && queued
            && !asleep
            && s.num_slots() < s.slots.capacity()
            && let Err(e) = slot::spawn(rt)
        {
            tracing::warn!("could not add a slot beside slots running actor calls: {e}");
        }
        last = Some(done);
        thread::park_timeout(MONITOR_TICK);
    }
}

/// A slot draining an actor, counted while it lives (see [`Scheduler::actor_drain`]).
#[derive(Debug)]
pub(crate) struct ActorDrain<'a>(&'a Scheduler);

impl ActorDrain<'_> {
    /// A call finished: progress, for the monitor.
    pub(crate) fn call_done(&self) {
        self.0.actor_calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for ActorDrain<'_> {
    fn drop(&mut self) {
        self.0.actor_drains.fetch_sub(1, Ordering::SeqCst);
    }
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
    /// One stealer per started slot, published in slot order (`publish.rs`).
    slots: Published<Stealer<Job>>,
    /// Slots started with the runtime; more are added only while slots block in `get`.
    base_slots: usize,
    /// Slots waiting in `get`/`wait` (not running work).
    blocked: AtomicUsize,
    /// The searching and sleeping slots (`sleep.rs`).
    sleep: Sleep,
    pending: Mutex<VecDeque<Arc<Task>>>,
    num_pending: AtomicUsize,
    pub(crate) resources: NodeResources,
    /// The placement groups reserved (or waiting) on this node.
    pub(crate) groups: crate::placement_group::Groups,
    spin: Duration,
    inline_get: bool,
    /// CPUs the slots pin themselves to, round-robin (config `cpu_affinity`; empty: none).
    affinity: Vec<usize>,
    /// Whether a failed pin has been logged (once per scheduler, not once per slot).
    pin_warned: AtomicBool,
    shutdown: AtomicBool,
    /// How long `shutdown` waits for the slot threads.
    shutdown_timeout: Duration,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Tasks completed, for status listings.
    pub(crate) finished: AtomicUsize,
    /// Slots draining an actor, and calls they finished: the monitor's view of whether those
    /// slots make progress.
    /// (Each on a cache line of its own: slots bump them on every actor call, and the
    /// submitting thread reads `sleep`'s counters on every push.)
    actor_drains: CachePadded<AtomicUsize>,
    actor_calls: CachePadded<AtomicUsize>,
    /// Sleepers the monitor woke because work waited a tick with nobody waking them.
    pub(crate) lost_wakeups: AtomicUsize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("slots", &self.slots.len())
            .field("blocked", &self.blocked.load(Ordering::Relaxed))
            .field("pending", &self.num_pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How many pending tasks one pass over the pending queue examines.
const PENDING_SCAN: usize = 64;

impl Scheduler {
    /// The CPUs the slots pin themselves to (config `cpu_affinity`; empty: none): the node's
    /// CPUs for placement-group bundles' sets.
    pub(crate) fn affinity(&self) -> &[usize] {
        &self.affinity
    }

    pub(crate) fn new(
        resources: NodeResources,
        base_slots: usize,
        max_slots: usize,
        spin: Duration,
        inline_get: bool,
        affinity: Vec<usize>,
        shutdown_timeout: Duration,
    ) -> Self {
        let max_slots = max_slots.max(base_slots);
        Scheduler {
            injector: Injector::new(),
            slots: Published::new(max_slots),
            base_slots,
            blocked: AtomicUsize::new(0),
            sleep: Sleep::new(),
            pending: Mutex::new(VecDeque::new()),
            num_pending: AtomicUsize::new(0),
            resources,
            groups: Default::default(),
            spin,
            inline_get,
            affinity,
            pin_warned: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            shutdown_timeout,
            handles: Mutex::new(Vec::new()),
            finished: AtomicUsize::new(0),
            actor_drains: CachePadded::new(AtomicUsize::new(0)),
            actor_calls: CachePadded::new(AtomicUsize::new(0)),
            lost_wakeups: AtomicUsize::new(0),
        }
    }

    /// Counts the calling thread as draining an actor until the guard drops.
    pub(crate) fn actor_drain(&self) -> ActorDrain<'_> {
        self.actor_drains.fetch_add(1, Ordering::SeqCst);
        ActorDrain(self)
    }

    pub(crate) fn base_slots(&self) -> usize {
        self.base_slots
    }

    pub(crate) fn num_slots(&self) -> usize {
        self.slots.len()
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

    /// Wakes a slot if none is searching, or grows the pool if none sleeps and blocked
    /// slots leave too few to run work (`sleep.rs`, "The protocol").
    fn notify(&self) {
        if self.sleep.notify() == Notified::NoneAsleep {
            self.grow_if_starved();
        }
    }

    /// Starts another slot when blocked slots leave fewer than `base_slots` able to run work
    /// and there is work. This is what keeps nested `get`s from deadlocking the pool.
    fn grow_if_starved(&self) {
        let slots = self.slots.len();
        let runnable = slots.saturating_sub(self.blocked.load(Ordering::Acquire));
        if runnable < self.base_slots
            && slots < self.slots.capacity()
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
        self.slots.iter().any(|s| !s.is_empty())
    }

    /// Finds a job: own deque, then the injector, then the other slots' deques.
    fn find_work(&self, local: &Worker<Job>, me: usize) -> Option<Job> {
        if let Some(job) = local.pop() {
            return Some(job);
        }
        let n = self.slots.len();
        let found = steal(|| self.injector.steal_batch_and_pop(local)).or_else(|| {
            (1..n).find_map(|k| {
                let stealer = self.slots.get((me + k) % n)?;
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
        self.execute_holding(task, Holding::Own);
    }

    /// Executes a claimed task; `holding` says whose resources it runs on (see [`Holding`]).
    fn execute_holding(&self, task: Arc<Task>, holding: Holding) {
        let outcome = slot::holding(&task.demand, || {
            let _running = crate::cancel::Running::enter(&task);
            catch_unwind(AssertUnwindSafe(|| match &task.body {
                TaskBody::Function(f) => f.invoke(&mut ArgReader::new(&task.args), &task.extra),
                TaskBody::CreateActor(actor) => actor.construct(&task.args),
            }))
        });
        let keep_resources =
            matches!(&task.body, TaskBody::CreateActor(_)) && matches!(outcome, Ok(Ok(_)));
        // An application error runs the task again while it has retries and its
        // `retry_exceptions` cover the error (a cancelled task — whose body may fail on the
        // `Cancelled` its calls returned — never).
        let again = match &outcome {
            Err(_) => task.retries_error(None),
            Ok(Err(Error::Task(e))) if e.is_returned_error() => task.retries_error(Some(e)),
            Ok(_) => false,
        };
        let retries = task.retries_left.load(Ordering::Relaxed);
        if again && retries > 0 && !task.is_interrupted() {
            task.retries_left.store(retries - 1, Ordering::Relaxed);
            let what = if outcome.is_err() {
                "panicked"
            } else {
                "failed"
            };
            tracing::warn!(task = %task.id, "task {} {what}; retrying ({} left)", task.name(), retries - 1);
            if holding == Holding::Own {
                self.release(&task.demand);
            }
            task.unclaim();
            self.push(Job::Task(task));
            return;
        }
        let result = match outcome {
            Ok(result) => result,
            Err(payload) => Err(Error::Task(TaskError::panic(task.name(), payload.as_ref()))),
        };
        if let (TaskBody::CreateActor(actor), Err(e)) = (&task.body, &result) {
            actor.constructor_failed(e.clone());
        }
        // A result the object store had no room for fails this task's object, named.
        let result = result.map_err(|e| e.for_object(task.result.id()));
        task.finish();
        // Resources go back before the result is visible, so whoever the result wakes sees
        // them free (`status()` right after `get` reported a 2-CPU task's CPUs still held).
        if !keep_resources && holding == Holding::Own {
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
        if self.groups.any_pending() {
            crate::placement_group::retry_pending(self);
        }
    }

    /// Fails the pending tasks whose resources a removed placement group took with it.
    pub(crate) fn fail_removed_pending(&self) {
        let failed: Vec<(Arc<Task>, String)> = {
            let mut pending = lock(&self.pending);
            let mut out = Vec::new();
            let mut i = 0;
            while i < pending.len() {
                match self.resources.removed(&pending[i].demand) {
                    Some(group) => {
                        if let Some(task) = pending.remove(i) {
                            out.push((task, group));
                        }
                        self.num_pending.fetch_sub(1, Ordering::SeqCst);
                    }
                    None => i += 1,
                }
            }
            out
        };
        for (task, group) in failed {
            fail_task(task, Error::PlacementGroupRemoved { group });
        }
    }

    fn park_pending(&self, task: Arc<Task>) {
        if let Some(group) = self.resources.removed(&task.demand) {
            // Its placement group is gone: it can never run.
            fail_task(task, Error::PlacementGroupRemoved { group });
            return;
        }
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
        let mut removed = Vec::new();
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
                } else if let Some(group) = self.resources.removed(&pending[i].demand) {
                    // Its placement group was removed while it was being parked.
                    if let Some(task) = pending.remove(i) {
                        removed.push((task, group));
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
        for (task, group) in removed {
            fail_task(task, Error::PlacementGroupRemoved { group });
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
        self.wait_for_or(cell, deadline, None)
    }

    /// What else ends a [`Scheduler::wait_for_or`]: `done()` holds; `arm()` runs once, just
    /// before the thread parks, to arrange that it is unparked when `done()` comes to hold.
    pub(crate) fn abort_when<'a>(done: &'a dyn Fn() -> bool, arm: &'a dyn Fn()) -> Abort<'a> {
        Abort { done, arm }
    }

    /// [`Scheduler::wait_for`] that also returns (`Ok`) as soon as `abort.done()` holds (armed
    /// just before parking, so a wait that ends while spinning costs nothing more). With an
    /// `abort`, a thread that is not a slot does
    /// not drain the awaited call's actor itself (a pure shortcut there): it could not notice
    /// `abort` while inside that call. Running the awaited *task* (lending, helping) stays: a
    /// slot needs it to keep nested waits from starving the pool.
    pub(crate) fn wait_for_or(
        &self,
        cell: &Arc<ObjectCell>,
        deadline: Option<Instant>,
        abort: Option<Abort<'_>>,
    ) -> Result<(), Error> {
        let helps = deadline.is_none() && self.inline_get;
        let drains = helps && abort.is_none() && !slot::in_slot();
        // The call of an actor hosted here: drained on this thread at once, before a slot
        // polling the injector takes the actor's job (`1:1 actor calls sync`).
        if drains && let Some(actor) = cell.producer_actor() {
            let _blocked = slot::Blocked::enter(self);
            self.help_actor(cell, &actor);
            if cell.is_ready() {
                return Ok(());
            }
        }
        // The queued task producing `cell`, when this wait may run it itself (given up
        // before the thread parks).
        let producer = if helps { cell.producer() } else { None };
        let own_job = producer.as_ref().and_then(|task| self.take_own_job(task));
        if let Some(task) = &producer
            && self.help_lending(task)
            && cell.is_ready()
        {
            return Ok(());
        }
        let _blocked = slot::Blocked::enter(self);
        let ran = producer.is_some_and(|task| self.help(task));
        if !ran
            && let Some(Job::Task(task)) = own_job
            && task.state() == QUEUED
        {
            // It could not run here (its resources are taken): back to the slots.
            self.push(Job::Task(task));
        }
        let done = || cell.is_ready() || abort.as_ref().is_some_and(|a| (a.done)());
        if self.spin_until(done, deadline) {
            return Ok(());
        }
        if let Some(a) = &abort {
            (a.arm)();
        }
        if cell.register(Waiter::Thread(thread::current())).is_err() {
            return Ok(());
        }
        // A task cancelled while it waits here is woken and told so (`cancel.rs`, step 3).
        let cancelled = crate::cancel::blocking();
        self.park_until(|| done() || cancelled(), deadline)
            .map_err(|waited| match self.is_shut_down() {
                true => Error::ShutDown,
                false => Error::Timeout {
                    object: cell.id(),
                    waited,
                },
            })?;
        crate::cancel::check()
    }

    /// Runs a queued task on the calling thread with the CPU the caller's own task holds, if
    /// that covers the task's whole demand; returns whether it ran it.
    ///
    /// This is what keeps nested `get`s from needing the pool at all: `f` waiting for `g` runs
    /// `g` on its own thread and its own CPU, depth-first, as rayon's `join` does. Giving the
    /// CPU back first and then taking it again (what [`Scheduler::help`] does) lets a queued
    /// task take it in between — on one CPU, another top-level `f`, which blocks in turn: with
    /// enough of them every slot the pool may grow to is blocked, and the CPU is held by a job
    /// in a deque nobody runs (1,000 `f → g → h` chains on one CPU stopped with 27–195 done).
    fn help_lending(&self, task: &Arc<Task>) -> bool {
        if task.state() != QUEUED
            || !matches!(task.body, TaskBody::Function(_))
            || !slot::can_lend(&task.demand)
            || !task.claim()
        {
            return false;
        }
        self.execute_holding(task.clone(), Holding::Lent);
        true
    }

    /// A thread that is not a slot (the driver), waiting for a call of `actor`, drains that
    /// actor itself up to its call if the actor's job is next in the injector: the call then
    /// needs no slot to wake up, which is what a busy machine makes slow (`1:1 actor calls
    /// sync`). Any other job goes back to the injector: the caller runs nothing it does not
    /// wait for (an unrelated job may wait for what the caller does next), and no call after
    /// its own (`ActorCell::drain_until`). Slots do not do this, so helping never nests.
    fn help_actor(&self, cell: &Arc<ObjectCell>, actor: &Arc<ActorCell>) {
        self.drain_actor_until(actor, &|| cell.is_ready());
    }

    /// On a thread that is not a slot (the driver), with inline gets on: takes `actor`'s job
    /// while it is the next one queued and runs its calls here until `done()` holds before a
    /// call; then hands the actor back. `get_all` over the calls of one serial actor drains it
    /// up to the last of them this way, stopping at the first that fails.
    pub(crate) fn drain_actor_until(&self, actor: &Arc<ActorCell>, done: &dyn Fn() -> bool) {
        if !self.inline_get || slot::in_slot() {
            return;
        }
        while !done() {
            match steal(|| self.injector.steal()) {
                Some(Job::Actor(a)) if Arc::ptr_eq(&a, actor) => {
                    a.drain_until(self, done);
                }
                Some(other) => {
                    self.injector.push(other);
                    self.notify();
                    return;
                }
                None => return,
            }
        }
    }

    /// On a thread that is not a slot (the driver), about to run `task` itself: takes the
    /// task's job off the injector when it is the only job queued there, which is the case
    /// of a driver that submits and then waits (`single client tasks sync`).
    ///
    /// Left queued, that job would be popped by the slot the submit woke, found already run,
    /// and dropped there: often the task's last reference, so the slot frees memory the
    /// driver allocated while the driver allocates the next task, and the two contend for
    /// the allocator's arena lock (glibc's), a futex each time. This is what cost the
    /// one-client task cases a fifth of their rate. Another job, popped by a race with a
    /// pusher, goes back to the injector. The caller must push the job back if the task is
    /// still queued after its attempts to run it.
    fn take_own_job(&self, task: &Arc<Task>) -> Option<Job> {
        if slot::in_slot() || task.state() != QUEUED || self.injector.len() != 1 {
            return None;
        }
        match steal(|| self.injector.steal())? {
            Job::Task(t) if Arc::ptr_eq(&t, task) => Some(Job::Task(t)),
            other => {
                self.injector.push(other);
                self.notify();
                None
            }
        }
    }

    /// On a thread that is not a slot (the driver) waiting for several objects (`get_all`):
    /// runs here the queued tasks at the injector's front while each produces an object the
    /// caller waits for (`wanted`, given the task's result) and its resources are free, and
    /// drops on the way the jobs of tasks already run or cancelled. It stops at the first
    /// other job, which goes back to the injector: the caller runs nothing it does not wait
    /// for (an unrelated task may wait for what the caller does next).
    ///
    /// A driver that submits a batch and then waits for all of it so runs its share of the
    /// batch beside the slots, as rayon's `join` does, and frees on its own thread what it
    /// allocated (`single client tasks async`; see [`Scheduler::take_own_job`]).
    pub(crate) fn help_wanted(&self, wanted: &mut dyn FnMut(&ObjectCell) -> bool) {
        if !self.inline_get || slot::in_slot() {
            return;
        }
        let _blocked = slot::Blocked::enter(self);
        while let Some(job) = steal(|| self.injector.steal()) {
            match job {
                Job::Task(task) if task.state() != QUEUED => {}
                Job::Task(task) if wanted(&task.result) => {
                    if !self.help(task.clone()) {
                        if task.state() == QUEUED {
                            self.push(Job::Task(task));
                        }
                        return;
                    }
                    if matches!(task.result.get(), Some(Err(_))) {
                        return; // the caller fails at once
                    }
                }
                other => {
                    self.injector.push(other);
                    self.notify();
                    return;
                }
            }
        }
    }

    /// Runs a queued task on the calling thread, if it fits now; returns whether it ran it.
    fn help(&self, task: Arc<Task>) -> bool {
        if task.state() != QUEUED || !self.resources.try_acquire(&task.demand) {
            return false;
        }
        if task.claim() {
            let _running = slot::Blocked::suspend(self);
            self.execute(task);
            true
        } else {
            self.release(&task.demand);
            false
        }
    }

    /// Spins until `done` or the spin budget (or `deadline`) runs out. Returns `done()`.
    pub(crate) fn spin_until(&self, done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        // Most waits end before any spin (the driver ran the call itself): no clock read.
        if done() {
            return true;
        }
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

    /// Parks until `done` (the waker must unpark this thread) or `deadline`; on timeout, or
    /// when the scheduler shuts down first, returns how long it waited.
    ///
    /// A park without deadline still wakes every [`SHUTDOWN_POLL`] to look at the shutdown
    /// flag: a thread waiting for an object that shutdown left incomplete (one a task stuck in
    /// user code would have produced) must not keep `shutdown` from joining its slot.
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
            let now = Instant::now();
            if self.is_shut_down() {
                return Err(now - start);
            }
            match deadline {
                None => thread::park_timeout(SHUTDOWN_POLL),
                Some(d) => {
                    if now >= d {
                        return Err(now - start);
                    }
                    thread::park_timeout((d - now).min(SHUTDOWN_POLL));
                }
            }
        }
    }

    /// Stops the slots: fails every queued job with [`Error::ShutDown`] and wakes every slot,
    /// then waits for them, at most `shutdown_timeout` (see [`Scheduler::join_slots`]).
    ///
    /// Queued work is failed *before* the slots are joined: a slot blocked in `get` waits for
    /// an object that a queued task would have produced, and only its failure (or the
    /// shutdown flag, seen by its next poll) lets that slot finish its own task and exit.
    pub(crate) fn shutdown(&self) {
        self.begin_shutdown();
        self.join_slots();
    }

    /// Raises the shutdown flag, wakes sleeping slots and fails every queued job: the
    /// injector, every slot's deque (through its stealer) and the pending queue.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.sleep.wake_all();
        self.fail_queued();
        // Slots parked in `get` and the monitor look at the flag now rather than at their
        // next poll (a spurious unpark is allowed by `park`'s contract).
        for h in lock(&self.handles).iter() {
            h.thread().unpark();
        }
    }

    fn fail_queued(&self) {
        while let Some(job) = steal(|| self.injector.steal()) {
            fail_job(job);
        }
        for stealer in self.slots.iter() {
            while let Some(job) = steal(|| stealer.steal()) {
                fail_job(job);
            }
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        self.num_pending.store(0, Ordering::SeqCst);
        for task in pending {
            fail_job(Job::Task(task));
        }
    }

    /// Joins the slot threads, waiting at most `shutdown_timeout` in all: a slot whose task is
    /// stuck in user code is left running (detached), with a warning, rather than hanging the
    /// caller. Jobs queued meanwhile (by tasks finishing) are failed as well.
    pub(crate) fn join_slots(&self) {
        let handles = std::mem::take(&mut *lock(&self.handles));
        let me = thread::current().id();
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut left: Vec<_> = handles
            .into_iter()
            .filter(|h| h.thread().id() != me)
            .collect();
        while !left.is_empty() && Instant::now() < deadline {
            self.fail_queued();
            let (done, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|h| h.is_finished());
            for h in done {
                let _ = h.join();
            }
            left = running;
            if !left.is_empty() {
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.fail_queued();
        if !left.is_empty() {
            tracing::warn!(
                slots = left.len(),
                "shutdown: slot threads still running a task after {:?}; left running",
                self.shutdown_timeout
            );
        }
    }
}

/// How often a thread parked without a deadline looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// See [`Scheduler::abort_when`].
#[derive(Clone, Copy)]
pub(crate) struct Abort<'a> {
    done: &'a dyn Fn() -> bool,
    arm: &'a dyn Fn(),
}

/// Whose resources a task runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holding {
    /// Its own, taken from the node's counters; given back when it ends.
    Own,
    /// The CPU of the task that waits for it on the same thread (`help_lending`): nothing is
    /// taken or given back, the waiting task's hold simply covers it.
    Lent,
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

/// Completes a task that will never run with `error`.
fn fail_task(task: Arc<Task>, error: Error) {
    if task.cancel() || task.claim() {
        if let TaskBody::CreateActor(actor) = &task.body {
            actor.constructor_failed(error.clone());
        }
        task.result.complete(Err(error));
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
