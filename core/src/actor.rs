//! Actors: stateful workers whose method calls run one at a time, in submission order.
//!
//! An actor is a value of the user's type (its *state*) plus a mailbox of calls. It is not a
//! thread: when calls arrive, the actor is scheduled as a [`Job`] on the node's slots, and the
//! slot that picks it up *drains* the mailbox. `max_concurrency` bounds how many drainers run
//! at once (1 by default, which gives Ray's per-caller ordering — in fact a total order).
//!
//! # The mailbox protocol
//!
//! 1. A call is pushed onto the lock-free mailbox, then [`ActorCell::activate`] raises `active`
//!    by compare-and-swap unless it is already `max_concurrency`; the one that raises it pushes
//!    a drain job. So at most `max_concurrency` drainers exist.
//! 2. A drainer takes the stalled head (if any) or pops the next call. If one of the call's
//!    argument objects is not ready, the call becomes the stalled head and the actor registers
//!    as a waiter on that object; no later call overtakes it (ordering survives dependencies).
//! 3. A drainer leaves by lowering `active`, then re-checks for runnable calls and, if there
//!    are any, activates again. A push (or dependency completion) that raced with the leaving
//!    drainer either saw `active` already lowered and activated itself, or happened before the
//!    re-check and is found by it: no call is stranded. Both sides use `SeqCst`.
//! 4. With `max_concurrency > 1`, a drainer about to run a call activates once more if calls
//!    are still queued, so drainers fan out up to the bound (calls that arrived while the
//!    constructor ran found the actor not yet alive and activated nothing).
//! 5. After `DRAIN_BATCH` calls a drainer on a slot re-queues the actor as a fresh job, so one
//!    busy actor cannot monopolise a slot while other jobs wait.
//! 6. A thread that is not a slot and waits for a call's result (the driver in `get`) may take
//!    the actor's job from the injector and drain it itself, but stops before any call once
//!    its own result is complete, re-queuing the actor as in step 5. It must never run calls
//!    beyond its own: a later call may wait for something the caller does after its `get`
//!    (`get_all([a.fail(), a.block_until_signalled()])` ran the blocking call on the
//!    caller's thread, which then never sent the signal).
//! 7. An actor's calls take no CPU, as Ray's actors run each on a worker of its own: a long
//!    call must not keep other actors' calls or tasks from starting, and a *threaded* actor
//!    (`max_concurrency > 1`) runs up to `max_concurrency` calls at once whatever the node's
//!    CPU count. Drainers run on slots, and a slot draining an actor is counted
//!    (`Scheduler::actor_drain`) with each call it finishes; when such slots make no progress
//!    while work is queued and no slot is free, the scheduler's monitor adds a slot (scheduler
//!    README, "Actors and the monitor"). Three calls meeting at a barrier inside a
//!    `max_concurrency(3)` actor deadlocked a 2-CPU node when each drainer needed a free
//!    slot; on a 1-CPU node a 2 s call of one actor held back a call of another for 2 s.
//!
//! # Life
//!
//! `Creating → Alive → Dead`; a kill with restarts left goes `Alive → Creating` again and
//! re-runs the constructor with its original arguments. The constructor runs as a task, which
//! takes the actor's resources; they are held until the actor dies.
//!
//! # Kill
//!
//! A kill never waits for a running method (a thread cannot be interrupted): the runner of
//! each call lists its result in `running` before it checks that the actor is alive, and the
//! kill marks the actor dead before it takes that list, so every running call is either failed
//! by the kill with [`Error::ActorDied`] or sees the death and does not run. A method already
//! running goes on in the background; what it returns is discarded (its result was completed
//! first), and the last such runner drops the state. Queued calls fail too, the name is freed
//! and the resources go back at once. A slot left running a killed actor's method counts as
//! blocked until the method returns (`Scheduler::detach_slots`), so the pool grows a slot for
//! the work the freed resources admit, as if the actor's process had ended.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_queue::SegQueue;
use crossbeam_utils::atomic::AtomicCell;

use crate::codec;
use crate::error::{Error, TaskError};
use crate::id::ActorId;
use crate::object::{ObjectCell, ObjectRef, ObjectValue, Waiter};
use crate::remote::{ActorPlace, RemoteValue};
use crate::resources::{Demand, ResourceRequest};
use crate::runtime::{self, RuntimeInner};
use crate::scheduler::{Job, Scheduler};
use crate::sync::{
    Arc, AtomicBool, AtomicU8, AtomicUsize, Mutex, OnceLock, Ordering, RwLock, lock,
};
use crate::task::{ArgReader, ArgSlot, retry_covers};

/// A type usable as an actor (implemented by `#[manta::actor]`).
pub trait Actor: Send + Sync + 'static {
    /// The generated type carrying the actor's remote methods; an [`ActorHandle`] derefs to it.
    type Methods: From<RawActorHandle> + AsRef<RawActorHandle> + Clone + Send + Sync;
    /// The class descriptor.
    const CLASS: &'static ActorClass;
}

/// What an actor method unwinds with when it calls [`exit_actor`].
struct ExitActor;

std::thread_local! {
    /// Whether this thread is running an actor method (for [`exit_actor`]).
    static IN_ACTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the thread as running an actor method while it lives.
struct InActor(bool);

impl InActor {
    fn enter() -> Self {
        InActor(IN_ACTOR.with(|f| f.replace(true)))
    }
}

impl Drop for InActor {
    fn drop(&mut self) {
        IN_ACTOR.with(|f| f.set(self.0));
    }
}

/// Ends the actor whose method calls it (Ray's `ray.actor.exit_actor()`): the method stops
/// here, its caller gets [`Error::ActorDied`] instead of a result, calls not yet started fail
/// with `ActorDied`, calls already running beside it (`max_concurrency > 1`) finish first, its
/// name is freed and its resources go back. It is not restarted.
///
/// # Panics
///
/// Outside an actor method (Ray raises `TypeError` there).
pub fn exit_actor() -> ! {
    if !IN_ACTOR.with(std::cell::Cell::get) {
        panic!("manta::exit_actor called outside an actor method");
    }
    // `resume_unwind` skips the panic hook: an intended exit prints nothing.
    std::panic::resume_unwind(Box::new(ExitActor))
}

/// Type-erased actor state.
pub type BoxedState = Box<dyn Any + Send + Sync>;

/// An actor class: its name and constructor (registered by `#[manta::actor]`).
#[derive(Debug)]
pub struct ActorClass {
    name: &'static str,
    construct: fn(&mut ArgReader<'_>) -> Result<BoxedState, Error>,
}

impl ActorClass {
    /// Declares a class (used by the `#[actor]` macro).
    pub const fn new(
        name: &'static str,
        construct: fn(&mut ArgReader<'_>) -> Result<BoxedState, Error>,
    ) -> Self {
        ActorClass { name, construct }
    }
    /// The class name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// One remote method of an actor class.
#[derive(Debug)]
pub struct ActorMethod {
    name: &'static str,
    invoke: fn(&ActorState, &mut ArgReader<'_>) -> Result<ObjectValue, Error>,
    /// Its own `retry_exceptions` and `max_task_retries` (`#[method(...)]`), over the
    /// actor's.
    retry_exceptions: Option<bool>,
    max_task_retries: Option<u32>,
}

impl ActorMethod {
    /// Declares a method (used by the `#[actor]` macro).
    pub const fn new(
        name: &'static str,
        invoke: fn(&ActorState, &mut ArgReader<'_>) -> Result<ObjectValue, Error>,
    ) -> Self {
        ActorMethod {
            name,
            invoke,
            retry_exceptions: None,
            max_task_retries: None,
        }
    }
    /// The method's own retry options (`#[method(retry_exceptions = .., max_task_retries =
    /// ..)]`, Ray's `@ray.method`), each over the actor's when given.
    pub const fn with_retries(
        mut self,
        retry_exceptions: Option<bool>,
        max_task_retries: Option<u32>,
    ) -> Self {
        self.retry_exceptions = retry_exceptions;
        self.max_task_retries = max_task_retries;
        self
    }
    /// How many times a call of it whose actor's worker died runs again, given the actor's
    /// `max_task_retries`.
    pub(crate) fn task_retries(&self, actor: u32) -> u32 {
        self.max_task_retries.unwrap_or(actor)
    }
}

/// An actor's state behind a read-write lock: `&self` methods share it (and may run
/// concurrently under `max_concurrency`), `&mut self` methods hold it exclusively.
pub struct ActorState(RwLock<Option<BoxedState>>);

impl std::fmt::Debug for ActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorState")
    }
}

impl ActorState {
    /// Runs `f` on a shared borrow of the state.
    pub fn with_ref<A: 'static, R>(&self, f: impl FnOnce(&A) -> R) -> Result<R, Error> {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref().and_then(|s| s.downcast_ref::<A>()) {
            Some(state) => Ok(f(state)),
            None => Err(Error::ShutDown),
        }
    }

    /// Runs `f` on an exclusive borrow of the state.
    pub fn with_mut<A: 'static, R>(&self, f: impl FnOnce(&mut A) -> R) -> Result<R, Error> {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut().and_then(|s| s.downcast_mut::<A>()) {
            Some(state) => Ok(f(state)),
            None => Err(Error::ShutDown),
        }
    }

    fn replace(&self, state: Option<BoxedState>) -> Option<BoxedState> {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, state)
    }

    /// Drops the state unless a method holds it; that method's runner drops it when it
    /// returns (a kill never waits for a running method).
    fn try_clear(&self) {
        let taken = match self.0.try_write() {
            Ok(mut g) => g.take(),
            Err(crate::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(crate::sync::TryLockError::WouldBlock) => None,
        };
        drop(taken);
    }
}

/// Options of an actor (Ray's `.options(...)` on an actor class).
#[derive(Clone, Debug)]
pub struct ActorOptions {
    pub(crate) resources: ResourceRequest,
    pub(crate) max_concurrency: usize,
    pub(crate) max_restarts: u32,
    pub(crate) max_task_retries: u32,
    /// Which application errors of its calls run them again (`max_task_retries` times):
    /// `None` none, `Some(None)` all, `Some(Some(types))` `Err`s of those types.
    pub(crate) retry_exceptions: Option<crate::task::RetryOn>,
    pub(crate) name: Option<String>,
    /// Whether any resource was asked for explicitly (else Ray's default: 1 CPU to be
    /// placed, none held).
    pub(crate) explicit_resources: bool,
    /// The namespace of `name` (`None`: the job's, `Config::namespace`).
    pub(crate) namespace: Option<String>,
    /// Whether the actor outlives its handles and its owner (until `manta::kill`).
    pub(crate) detached: bool,
    /// The placement group (and bundle) it is created in.
    pub(crate) placement: Option<crate::placement_group::InGroup>,
    /// Its rank in an actor group.
    pub(crate) member: Option<crate::placement_group::GroupMember>,
    /// Its rank in an actor group, where only that travelled (an actor created here for
    /// an owner in another process).
    pub(crate) rank: Option<crate::placement_group::Rank>,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            resources: ResourceRequest::actor_default(),
            max_concurrency: 1,
            max_restarts: 0,
            max_task_retries: 0,
            retry_exceptions: None,
            name: None,
            explicit_resources: false,
            namespace: None,
            detached: false,
            placement: None,
            member: None,
            rank: None,
        }
    }
}

impl ActorOptions {
    /// CPUs the actor holds for its whole life. By default (no resource asked for) an actor
    /// needs 1 CPU to be placed and holds none while it runs, as Ray's; any explicit
    /// resource makes the request both what it is placed by and what it holds.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources.num_cpus = n;
        self.explicit_resources = true;
        self
    }
    /// GPUs the actor holds for its whole life (default 0).
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.resources.num_gpus = n;
        self.explicit_resources = true;
        self
    }
    /// An amount of a custom resource the actor holds for its whole life.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set_custom(name, amount);
        self.explicit_resources = true;
        self
    }

    /// What a node must have for the actor to be placed there: 1 CPU for a default actor
    /// (Ray's), else what it holds.
    pub(crate) fn placement(&self) -> ResourceRequest {
        if self.explicit_resources {
            return self.resources.clone();
        }
        ResourceRequest {
            num_cpus: 1.0,
            ..self.resources.clone()
        }
    }
    /// How many calls may run at once (default 1: one at a time, in submission order; 0 is
    /// an invalid argument).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }
    /// How many times the actor is brought back, with its constructor run again on its
    /// original arguments: after its worker process dies (in a cluster; Ray's rule), or by
    /// `manta::restart` (default 0).
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }
    /// How many times a call that was running when the actor's worker process died is run
    /// again on the restarted actor (default 0: it fails with `ActorDied`, as in Ray). Only
    /// with `max_restarts`, in a cluster. With [`retry_exceptions`](Self::retry_exceptions),
    /// also how many times a call whose method panics or returns `Err` is run again, in
    /// every mode.
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }
    /// Whether an application error of a call — its method panicking or returning `Err` —
    /// runs the call again on the same actor, up to `max_task_retries` times, before its
    /// next call (Ray's `retry_exceptions=True` with `max_task_retries` on an actor). The
    /// method runs on the state the failed attempt left.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes.then_some(None);
        self
    }
    /// Runs a call again when its method returns `Err` of type `E` (Ray's
    /// `retry_exceptions=[E]`), up to `max_task_retries` times; may be given for several
    /// types. Other errors, and panics, are its result at once.
    pub fn retry_exceptions_of<E: 'static>(mut self) -> Self {
        self.retry_exceptions = Some(Some(crate::task::with_retry_type::<E>(
            self.retry_exceptions.take(),
        )));
        self
    }

    /// Registers the actor under a name, for [`crate::get_actor`], in the job's namespace
    /// (unless [`ActorOptions::namespace`] says another). As in Ray, a named actor that is not
    /// detached still dies when its last handle goes (then `get_actor` finds nothing) or with
    /// its owner. An empty or blank name is an invalid argument.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the options before anything is created: the option at fault and why.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        if let Some(name) = &self.name
            && name.trim().is_empty()
        {
            return Err((
                "name".into(),
                format!("{name:?}: an actor name must not be empty or blank"),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(("max_concurrency".into(), "must be at least 1".into()));
        }
        self.resources.validate()
    }
    /// The namespace the actor's name is registered in (default: the job's,
    /// `Config::namespace`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
    /// Makes the actor detached (Ray's `lifetime="detached"`): it lives on with no handle
    /// left, and in a cluster after its driver exits, until `manta::kill`; give it a name so
    /// that `get_actor` can find it (an unnamed one is reached only through handles, so one
    /// without any is killed by nothing). Embedded, it lives until `shutdown`.
    pub fn lifetime_detached(mut self) -> Self {
        self.detached = true;
        self
    }
    /// Creates the actor in bundle `bundle` of placement group `pg` (`None`: any bundle): what
    /// it asks for comes out of the bundle's reservation (more than the bundle holds is
    /// refused), and it dies when the group is removed.
    pub fn placement_group(
        mut self,
        pg: &crate::placement_group::PlacementGroup,
        bundle: Option<usize>,
    ) -> Self {
        self.placement = Some(crate::placement_group::InGroup {
            group: pg.clone(),
            bundle,
        });
        self
    }
    /// Makes the actor `member` of an actor group: in its bundle of the group's placement
    /// group, knowing its rank (`manta::group_rank`). [`crate::ActorGroup::spawn`] hands
    /// the members out.
    pub fn group_member(mut self, member: &crate::placement_group::GroupMember) -> Self {
        self.member = Some(member.clone());
        self
    }

    /// The key the name is registered under: the name alone in the default namespace, else
    /// `namespace` + U+001F + `name` (a namespace may not contain U+001F).
    pub(crate) fn name_key(&self, default_namespace: &str) -> Result<Option<String>, Error> {
        let Some(name) = &self.name else {
            return Ok(None);
        };
        let ns = self.namespace.as_deref().unwrap_or(default_namespace);
        name_key(ns, name).map(Some)
    }
}

/// The separator of a namespace and a name in a registered name (`ActorOptions::name_key`).
pub(crate) const NAMESPACE_SEPARATOR: char = '\u{1f}';

/// The registered key of `name` in `namespace`.
pub(crate) fn name_key(namespace: &str, name: &str) -> Result<String, Error> {
    if namespace.contains(NAMESPACE_SEPARATOR) {
        return Err(Error::Config {
            key: "namespace".into(),
            message: format!("{namespace:?} contains U+001F"),
        });
    }
    Ok(if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}{NAMESPACE_SEPARATOR}{name}")
    })
}

struct ActorCall {
    method: &'static ActorMethod,
    args: Box<[ArgSlot]>,
    result: Arc<ObjectCell>,
}

impl ActorCall {
    fn first_unready(&self) -> Option<&Arc<ObjectCell>> {
        self.args.iter().find_map(|a| match a {
            ArgSlot::Ref(cell) if !cell.is_ready() => Some(cell),
            _ => None,
        })
    }
}

const CREATING: u8 = 0;
const ALIVE: u8 = 1;
const DEAD: u8 = 2;
const DRAIN_BATCH: usize = 256;

/// A live actor (see the module docs).
pub(crate) struct ActorCell {
    id: ActorId,
    class: &'static ActorClass,
    state: ActorState,
    mailbox: SegQueue<ActorCall>,
    stalled: Mutex<Option<ActorCall>>,
    has_stalled: AtomicBool,
    active: AtomicUsize,
    max_concurrency: usize,
    life: AtomicU8,
    death: OnceLock<Error>,
    name: Option<String>,
    demand: Demand,
    holds_resources: AtomicBool,
    restarts_left: AtomicUsize,
    ctor_args: OnceLock<Box<[ArgSlot]>>,
    created: OnceLock<Arc<ObjectCell>>,
    /// Set when the actor lives in another worker process: this cell is then its proxy.
    remote: OnceLock<Arc<dyn ActorPlace>>,
    /// Results of the calls running now, and whether each runs on a slot (failed by a kill;
    /// see "Kill" above).
    running: RunningCalls,
    /// Its rank in an actor group, if it is a member.
    member: Option<crate::placement_group::Rank>,
    /// Its `max_task_retries` and `retry_exceptions`, for calls whose method panics (a
    /// method's own `#[method(...)]` options override them).
    max_task_retries: u32,
    retry_exceptions: Option<crate::task::RetryOn>,
}

/// The results of an actor's running calls, which a kill fails at once. A serial actor
/// (`max_concurrency` 1) runs one call at a time: its result moves into an atomic cell and
/// back out, with no lock and no reference count (`1:1 actor calls` runs millions a second;
/// a mutex and a clone per call cost it a quarter of its rate); a threaded actor's results
/// are listed under a mutex. Whoever takes a result out — the call when it ends, or a kill —
/// completes it.
///
/// A kill that restarts the actor leaves the killed call's method running on in the
/// background, beside the new instance's calls: from the first kill on, every call is listed
/// (`fast` goes false before the kill takes the cell), so a late leaver of the cell can only
/// find its own result there, or nothing.
struct RunningCalls {
    fast: AtomicBool,
    one: AtomicCell<Option<Arc<ObjectCell>>>,
    /// Whether the call in `one` runs on a slot (stored before it enters `one`).
    one_on_slot: AtomicBool,
    many: Mutex<Vec<(Arc<ObjectCell>, bool)>>,
}

/// How a call was entered in [`RunningCalls`], for its leaving.
enum RunningToken {
    Fast,
    Listed(Arc<ObjectCell>),
}

impl std::fmt::Debug for RunningCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCalls")
            .field("many", &lock(&self.many).len())
            .finish_non_exhaustive()
    }
}

impl RunningCalls {
    fn new(serial: bool) -> Self {
        RunningCalls {
            fast: AtomicBool::new(serial),
            one: AtomicCell::new(None),
            one_on_slot: AtomicBool::new(false),
            many: Mutex::new(Vec::new()),
        }
    }

    /// Lists `result` as running.
    fn enter(&self, result: Arc<ObjectCell>, slot: bool) -> RunningToken {
        if self.fast.load(Ordering::SeqCst) {
            self.one_on_slot.store(slot, Ordering::SeqCst);
            let before = self.one.swap(Some(result));
            debug_assert!(before.is_none(), "two calls of a serial actor at once");
            RunningToken::Fast
        } else {
            lock(&self.many).push((result.clone(), slot));
            RunningToken::Listed(result)
        }
    }

    /// The call ended: its result, unless a kill took (and failed) it first.
    fn leave(&self, token: RunningToken) -> Option<Arc<ObjectCell>> {
        match token {
            RunningToken::Fast => self.one.take(),
            RunningToken::Listed(result) => {
                let mut many = lock(&self.many);
                let i = many.iter().position(|(r, _)| Arc::ptr_eq(r, &result))?;
                many.swap_remove(i);
                Some(result)
            }
        }
    }

    /// Takes every running call's result out (a kill), with whether it runs on a slot; from
    /// now on every call is listed.
    fn take_all(&self) -> Vec<(Arc<ObjectCell>, bool)> {
        self.fast.store(false, Ordering::SeqCst);
        let mut all = std::mem::take(&mut *lock(&self.many));
        if let Some(r) = self.one.take() {
            all.push((r, self.one_on_slot.load(Ordering::SeqCst)));
        }
        all
    }
}

/// A link-time registration of an actor class (for creation by name in another process).
#[derive(Debug)]
pub struct ClassRegistration(pub &'static ActorClass);

inventory::collect!(ClassRegistration);

/// A link-time registration of an actor method (for calls by name from another process).
#[derive(Debug)]
pub struct MethodRegistration(pub &'static ActorMethod);

inventory::collect!(MethodRegistration);

/// The class registered under `name`.
pub(crate) fn class_by_name(name: &str) -> Option<&'static ActorClass> {
    static MAP: crate::sync::OnceLock<
        std::collections::HashMap<&'static str, &'static ActorClass>,
    > = crate::sync::OnceLock::new();
    MAP.get_or_init(|| {
        inventory::iter::<ClassRegistration>
            .into_iter()
            .map(|r| (r.0.name, r.0))
            .collect()
    })
    .get(name)
    .copied()
}

/// The method registered under `name`.
pub(crate) fn method_by_name(name: &str) -> Option<&'static ActorMethod> {
    static MAP: crate::sync::OnceLock<rustc_hash::FxHashMap<&'static str, &'static ActorMethod>> =
        crate::sync::OnceLock::new();
    MAP.get_or_init(|| {
        inventory::iter::<MethodRegistration>
            .into_iter()
            .map(|r| (r.0.name, r.0))
            .collect()
    })
    .get(name)
    .copied()
}

impl std::fmt::Debug for ActorCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorCell")
            .field("id", &self.id)
            .field("class", &self.class.name)
            .finish()
    }
}

impl ActorCell {
    /// How many of its calls may run at once.
    pub(crate) fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    pub(crate) fn new(
        id: ActorId,
        class: &'static ActorClass,
        options: &ActorOptions,
        demand: Demand,
    ) -> Self {
        ActorCell {
            id,
            class,
            state: ActorState(RwLock::new(None)),
            mailbox: SegQueue::new(),
            stalled: Mutex::new(None),
            has_stalled: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            max_concurrency: options.max_concurrency.max(1),
            life: AtomicU8::new(CREATING),
            death: OnceLock::new(),
            name: options.name.clone(),
            demand,
            holds_resources: AtomicBool::new(false),
            restarts_left: AtomicUsize::new(options.max_restarts as usize),
            ctor_args: OnceLock::new(),
            created: OnceLock::new(),
            remote: OnceLock::new(),
            running: RunningCalls::new(options.max_concurrency <= 1),
            max_task_retries: options.max_task_retries,
            retry_exceptions: options.retry_exceptions.clone(),
            member: options.rank.or(options.member.as_ref().map(|m| m.rank)),
        }
    }

    /// Makes this cell the proxy of an actor living at `remote`.
    pub(crate) fn set_remote(&self, remote: Arc<dyn ActorPlace>) {
        let _ = self.remote.set(remote);
        let _ = self
            .life
            .compare_exchange(CREATING, ALIVE, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn remote(&self) -> Option<&Arc<dyn ActorPlace>> {
        self.remote.get()
    }

    #[allow(dead_code)] // unused for now
    pub(crate) fn class(&self) -> &'static ActorClass {
        self.class
    }

    pub(crate) fn id(&self) -> ActorId {
        self.id
    }

    pub(crate) fn class_name(&self) -> &'static str {
        self.class.name
    }

    /// Whether this cell is a proxy of an actor another process hosts.
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.get().is_some()
    }

    /// The name it was registered under, if any.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn demand(&self) -> &Demand {
        &self.demand
    }

    pub(crate) fn set_created(&self, cell: Arc<ObjectCell>) {
        let _ = self.created.set(cell);
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.life.load(Ordering::Acquire) == ALIVE
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.life.load(Ordering::Acquire) == DEAD
    }

    pub(crate) fn death_error(&self) -> Error {
        self.death
            .get()
            .cloned()
            .unwrap_or_else(|| self.died("dead"))
    }

    pub(crate) fn died(&self, reason: &str) -> Error {
        let reason = match self.member {
            // A group's member names its rank (and node) in every error of its death.
            Some(m) => {
                let place = match self.remote.get() {
                    Some(remote) => {
                        let worker = remote.worker();
                        let node = worker.and_then(|w| {
                            runtime::with_current(|rt| {
                                rt.cluster.as_ref().and_then(|c| c.node_of_worker(w))
                            })
                            .ok()
                            .flatten()
                        });
                        format!(
                            "on node {} in worker process {}",
                            node.map_or_else(|| "?".to_string(), |n| n.to_string()),
                            worker.map_or_else(|| "?".to_string(), |w| w.to_string())
                        )
                    }
                    None => runtime::with_current(|rt| {
                        rt.cluster
                            .as_ref()
                            .and_then(|c| c.node_id())
                            .map_or_else(|| "on this node".to_string(), |n| format!("on node {n}"))
                    })
                    .unwrap_or_else(|_| "on this node".into()),
                };
                format!(
                    "{reason} (actor group member rank {} of {}, {place})",
                    m.rank, m.world_size
                )
            }
            None => reason.to_string(),
        };
        Error::ActorDied {
            actor: self.id,
            class: self.class.name.to_string(),
            reason,
        }
    }

    /// Its rank in an actor group, if it is a member.
    pub(crate) fn member(&self) -> Option<crate::placement_group::Rank> {
        self.member
    }

    /// Runs the constructor (as the body of the actor's creation task).
    pub(crate) fn construct(self: &Arc<Self>, args: &[ArgSlot]) -> Result<ObjectValue, Error> {
        let state = {
            let _member = crate::placement_group::MemberGuard::enter(self.member);
            (self.class.construct)(&mut ArgReader::new(args))?
        };
        self.state.replace(Some(state));
        let _ = self.ctor_args.set(args.to_vec().into_boxed_slice());
        self.holds_resources
            .store(!self.demand.is_empty(), Ordering::Release);
        if self
            .life
            .compare_exchange(CREATING, ALIVE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Killed while its constructor ran.
            self.state.replace(None);
        }
        self.activate();
        codec::encode(&())
    }

    pub(crate) fn constructor_failed(&self, error: Error) {
        let reason = format!("its constructor failed: {error}");
        self.die(self.died(&reason));
    }

    /// Marks the actor dead with `error` and fails every running and queued call with it.
    pub(crate) fn die(&self, error: Error) {
        let _ = self.death.set(error);
        self.life.store(DEAD, Ordering::SeqCst);
        self.fail_running(self.death_error());
        self.state.try_clear();
        if self.holds_resources.swap(false, Ordering::AcqRel) {
            let _ = runtime::with_current(|rt| rt.scheduler.release(&self.demand));
        }
        if let Some(name) = &self.name {
            let _ = runtime::with_current(|rt| rt.unname_actor(name, self.id));
        }
        let _ = runtime::with_current(|rt| rt.release_detached(self.id));
        self.fail_all(self.death_error());
    }

    /// The runtime is shutting down: like [`ActorCell::die`] with [`Error::ShutDown`], but it
    /// never waits for a running call to drop the state (that call may be stuck in user code,
    /// and `shutdown` is bounded).
    pub(crate) fn shut_down(&self) {
        let _ = self.death.set(Error::ShutDown);
        self.life.store(DEAD, Ordering::Release);
        self.state.try_clear();
        if self.holds_resources.swap(false, Ordering::AcqRel) {
            let _ = runtime::with_current(|rt| rt.scheduler.release(&self.demand));
        }
        self.fail_all(self.death_error());
    }

    /// Kills the actor; with `restart` and restarts left, runs its constructor again.
    pub(crate) fn kill(self: &Arc<Self>, restart: bool, rt: &Arc<RuntimeInner>) -> bool {
        if self.is_dead() {
            return false;
        }
        if let (Some(remote), Some(cluster)) = (self.remote.get(), rt.cluster.as_ref()) {
            if restart {
                return cluster.restart_remote(self, &**remote);
            }
            cluster.kill_remote(&**remote, self.id.as_u64(), false);
            cluster.fail_calls_to(self.id.as_u64(), &self.died("killed by manta::kill"));
            self.die(self.died("killed by manta::kill"));
            cluster.record_killed_actor(
                self.id.as_u64(),
                self.class.name,
                remote.worker().unwrap_or(0),
            );
            return true;
        }
        let restarting = restart
            && self
                .restarts_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        if !restarting {
            self.die(self.died("killed by manta::kill"));
            return true;
        }
        self.life.store(CREATING, Ordering::SeqCst);
        self.fail_running(self.died("killed by manta::restart"));
        self.state.try_clear();
        if self.holds_resources.swap(false, Ordering::AcqRel) {
            rt.scheduler.release(&self.demand);
        }
        let args = self.ctor_args.get().cloned().unwrap_or_default();
        rt.start_actor(self.clone(), args.into_vec());
        true
    }

    /// Submits a method call (step 1 of the protocol); a remote call in flight keeps the
    /// actor's cell and the caller's `borrow` of it (if any) until it is done.
    pub(crate) fn call<R>(
        self: &Arc<Self>,
        method: &'static ActorMethod,
        args: Vec<Result<ArgSlot, Error>>,
        borrow: Option<&Arc<dyn RemoteValue>>,
    ) -> ObjectRef<R> {
        if self.is_dead() {
            return ObjectRef::failed(self.death_error());
        }
        if let Err(e) = crate::cancel::check() {
            return ObjectRef::failed(e);
        }
        let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(a) => a.into_boxed_slice(),
            Err(e) => return ObjectRef::failed(e),
        };
        let id = match runtime::with_current(|rt| rt.next_object_id()) {
            Ok(id) => id,
            Err(e) => return ObjectRef::failed(e),
        };
        if let Some(remote) = self.remote.get() {
            let result = Arc::new(ObjectCell::pending(id, None));
            if let Some(cluster) = runtime::current_inner().and_then(|rt| rt.cluster.clone()) {
                cluster.call_remote(self, borrow, &**remote, method.name, result.clone(), args);
            } else {
                result.complete(Err(Error::ShutDown));
            }
            return ObjectRef::from_cell(result);
        }
        let result = Arc::new(ObjectCell::pending_call(id, Arc::downgrade(self)));
        self.enqueue(method, args, result.clone());
        ObjectRef::from_cell(result)
    }

    /// A call whose result id was chosen by a remote caller.
    pub(crate) fn call_with_id(
        self: &Arc<Self>,
        method: &'static ActorMethod,
        args: Vec<ArgSlot>,
        id: crate::id::ObjectId,
    ) -> Arc<ObjectCell> {
        if self.is_dead() {
            return Arc::new(ObjectCell::ready(id, Err(self.death_error())));
        }
        let result = Arc::new(ObjectCell::pending_call(id, Arc::downgrade(self)));
        self.enqueue(method, args.into_boxed_slice(), result.clone());
        result
    }

    fn enqueue(
        self: &Arc<Self>,
        method: &'static ActorMethod,
        args: Box<[ArgSlot]>,
        result: Arc<ObjectCell>,
    ) {
        self.mailbox.push(ActorCall {
            method,
            args,
            result,
        });
        if self.is_dead() {
            self.fail_all(self.death_error());
        } else {
            self.activate();
        }
    }

    /// The cell completed when the constructor has run.
    pub(crate) fn created_cell(&self) -> Option<Arc<ObjectCell>> {
        self.created.get().cloned()
    }

    /// Schedules a drainer if fewer than `max_concurrency` run (step 1).
    pub(crate) fn activate(self: &Arc<Self>) {
        if !self.is_alive() {
            return;
        }
        let mut current = self.active.load(Ordering::SeqCst);
        while current < self.max_concurrency {
            match self.active.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    let me = self.clone();
                    if let Err(e) =
                        runtime::with_current(move |rt| rt.scheduler.push(Job::Actor(me)))
                    {
                        self.active.fetch_sub(1, Ordering::SeqCst);
                        self.fail_all(e);
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn dependency_ready(self: Arc<Self>) {
        self.activate();
    }

    fn next_call(&self) -> Option<ActorCall> {
        if self.has_stalled.load(Ordering::SeqCst) {
            let mut stalled = lock(&self.stalled);
            if let Some(call) = stalled.take() {
                self.has_stalled.store(false, Ordering::SeqCst);
                return Some(call);
            }
        }
        self.mailbox.pop()
    }

    fn stall(&self, call: ActorCall) {
        *lock(&self.stalled) = Some(call);
        self.has_stalled.store(true, Ordering::SeqCst);
    }

    fn has_runnable(&self) -> bool {
        if !self.is_alive() {
            return false;
        }
        if self.has_stalled.load(Ordering::SeqCst) {
            return lock(&self.stalled)
                .as_ref()
                .is_some_and(|c| c.first_unready().is_none());
        }
        !self.mailbox.is_empty()
    }

    /// Runs queued calls (steps 2–5), on a slot.
    pub(crate) fn drain(self: Arc<Self>, scheduler: &Scheduler) {
        self.drain_until(scheduler, || false);
    }

    /// Runs queued calls (steps 2–5) until `stop()` holds before a call: a thread that is not
    /// a slot (the driver) drains the actor it waits for only up to the call it waits for
    /// (step 6), then hands the actor back to the slots as a job.
    pub(crate) fn drain_until(self: Arc<Self>, scheduler: &Scheduler, stop: impl Fn() -> bool) {
        // Step 7: an actor's calls run beside the node's tasks, not in its CPU slots.
        let drain = scheduler.actor_drain();
        // The batch is for fairness among slots; a thread that is not a slot drains only up
        // to what it waits for (step 6), and handing the actor to a slot mid-way would make it
        // wait for the slot instead (`1:1 actor calls async`: 0.73× with the batch).
        let batch = if crate::scheduler::in_slot() {
            DRAIN_BATCH
        } else {
            usize::MAX
        };
        for _ in 0..batch {
            if !self.is_alive() || stop() {
                break;
            }
            let Some(call) = self.next_call() else { break };
            if let Some(dep) = call.first_unready().cloned() {
                self.stall(call);
                if dep.register(Waiter::Actor(self.clone())).is_ok() {
                    break;
                }
                continue;
            }
            if self.max_concurrency > 1 && !self.mailbox.is_empty() {
                // Fan out: more calls are waiting and more drainers are allowed.
                self.activate();
            }
            self.run(call);
            drain.call_done();
        }
        drop(drain);
        if self.is_alive() && self.has_runnable() && !self.has_stalled.load(Ordering::SeqCst) {
            // Step 5: batch exhausted with calls left; stay active and go to the back.
            scheduler.push(Job::Actor(self));
            return;
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.is_dead() {
            self.fail_all(self.death_error());
        } else if self.has_runnable() {
            self.activate();
        }
    }

    fn run(&self, call: ActorCall) {
        if !call.result.start_call() {
            return; // cancelled before it started
        }
        let ActorCall {
            method,
            args,
            result: cell,
        } = call;
        let id = cell.id();
        let slot = crate::scheduler::in_slot();
        let token = self.running.enter(cell, slot);
        if !self.is_alive() {
            // Killed since the drainer looked: the kill failed the calls it found, this one
            // is failed here.
            if let Some(cell) = self.leave_running(token, slot) {
                cell.complete(Err(self.death_error()));
            }
            return;
        }
        let all: crate::task::RetryOn = None;
        let retry_on = match method.retry_exceptions {
            Some(true) => Some(&all),
            Some(false) => None,
            None => self.retry_exceptions.as_ref(),
        };
        let mut retries = match retry_on {
            Some(_) => method.task_retries(self.max_task_retries),
            None => 0,
        };
        let retry_on = retry_on.unwrap_or(&all);
        let outcome = loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let _in_actor = InActor::enter();
                let _member = crate::placement_group::MemberGuard::enter(self.member);
                crate::affinity::in_bundle(self.demand.bundle(), |bundle_gpus| {
                    crate::gpus::holding(self.demand.gpus(), bundle_gpus, || {
                        (method.invoke)(&self.state, &mut ArgReader::new(&args))
                    })
                })
            }));
            // A panic its `retry_exceptions` cover (all, or a typed panic of a type named)
            // runs the call again, on the same actor before its next call, while retries are
            // left (never after a kill, `exit_actor` or a cancel). A method's `Err` is its
            // value, not an error.
            let covered = match &outcome {
                Err(payload) if payload.is::<ExitActor>() => false,
                Err(payload) if retries > 0 => {
                    let e = TaskError::panic(method.name, payload.as_ref());
                    retry_covers(retry_on, e.cause_type_name().is_some().then_some(&e))
                }
                _ => false,
            };
            if !covered || retries == 0 || !self.is_alive() || crate::cancel::check().is_err() {
                break outcome;
            }
            retries -= 1;
            tracing::warn!(call = %id, "actor method {} failed; retrying ({retries} left)", method.name);
        };
        let cell = self.leave_running(token, slot);
        if self.is_dead() {
            // Killed while the method ran: its result was failed by the kill (and is ignored
            // below); the last runner out drops the state.
            self.state.try_clear();
        }
        let result = match outcome {
            Ok(Err(Error::ShutDown)) if !self.is_alive() => Err(self.death_error()),
            Ok(r) => r.map_err(|e| e.for_object(id)),
            Err(payload) if payload.is::<ExitActor>() => {
                // Ray's `exit_actor`: the caller sees the actor's death, queued calls fail,
                // calls running beside this one (`max_concurrency`) finish first.
                self.die(self.died("it called manta::exit_actor"));
                let _ = runtime::with_current(|rt| rt.actor_exited(self));
                Err(self.death_error())
            }
            Err(payload) => Err(Error::Task(TaskError::panic(method.name, payload.as_ref()))),
        };
        if let Some(cell) = cell {
            cell.complete(result);
        }
    }

    /// The call ended: its result off the running calls, or, if a kill took it (and counted
    /// its slot as detached), its slot counts as running again and `None`.
    fn leave_running(&self, token: RunningToken, slot: bool) -> Option<Arc<ObjectCell>> {
        let cell = self.running.leave(token);
        if cell.is_none() && slot {
            let _ = runtime::with_current(|rt| rt.scheduler.reattach_slot());
        }
        cell
    }

    /// Fails every running call with `error` (their methods run on, their results ignored)
    /// and counts the slots running them as detached.
    fn fail_running(&self, error: Error) {
        let running = self.running.take_all();
        let slots = running.iter().filter(|(_, slot)| *slot).count();
        if slots > 0 {
            let _ = runtime::with_current(|rt| rt.scheduler.detach_slots(slots));
        }
        for (r, _) in running {
            r.complete(Err(error.clone()));
        }
    }

    /// Fails every queued call with `error`.
    pub(crate) fn fail_all(&self, error: Error) {
        if let Some(call) = lock(&self.stalled).take() {
            self.has_stalled.store(false, Ordering::SeqCst);
            call.result.complete(Err(error.clone()));
        }
        while let Some(call) = self.mailbox.pop() {
            call.result.complete(Err(error.clone()));
        }
    }
}

impl Drop for ActorCell {
    fn drop(&mut self) {
        // The owner's last handle went away, and with it every borrower (the owner's `lent`
        // table holds a handle for each process that deserialised one; `cluster/borrow.rs`):
        // the actor goes too (Ray's rule), named or not. A detached actor is held by the
        // owner's name table until it is killed, so it never gets here alive.
        if let Some(remote) = self.remote.get()
            && !self.is_dead()
            && let Some(cluster) = runtime::current_inner().and_then(|rt| rt.cluster.clone())
            && cluster.owns(self.id.as_u64())
        {
            cluster.release_remote(&**remote, self.id.as_u64());
        }
        // An actor a worker process created and hosts is in the cluster's directory: record
        // its death there (`cluster/submit.rs`, `register_hosted_actor`).
        if self.remote.get().is_none()
            && let Some(cluster) = runtime::current_inner().and_then(|rt| rt.cluster.clone())
            && !cluster.is_driver()
            && cluster.owns(self.id.as_u64())
        {
            cluster.hosted_actor_died(
                self.id.as_u64(),
                self.class.name,
                "no handle to it was left",
            );
        }
        if self.holds_resources.swap(false, Ordering::AcqRel) {
            let _ = runtime::with_current(|rt| rt.scheduler.release(&self.demand));
        }
        let _ = runtime::with_current(|rt| rt.forget_actor(self.id));
        if let Some(name) = &self.name {
            let _ = runtime::with_current(|rt| rt.unname_actor(name, self.id));
        }
        let err = self.died("it went out of scope");
        self.fail_all(err);
    }
}

/// The untyped part of an actor handle; generated method wrappers call through it.
#[derive(Clone, Debug)]
pub struct RawActorHandle {
    pub(crate) cell: Arc<ActorCell>,
    /// In a process that deserialised the handle of an actor another process owns: this
    /// process's registration as a borrower, shared by every handle here; its drop (with the
    /// last of them) tells the owner (`cluster/borrow.rs`).
    #[allow(dead_code)] // held for its drop
    pub(crate) borrow: Option<Arc<dyn RemoteValue>>,
}

/// A call recorded instead of submitted (see [`record_calls`]): its method, its arguments and
/// the placeholder result handed to the caller.
pub(crate) struct RecordedCall {
    pub(crate) method: &'static ActorMethod,
    pub(crate) args: Vec<Result<ArgSlot, Error>>,
    pub(crate) placeholder: Arc<ObjectCell>,
}

std::thread_local! {
    /// Whether this thread records actor calls instead of submitting them.
    static RECORDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The calls recorded so far.
    static RECORDED: std::cell::RefCell<Vec<RecordedCall>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the actor calls it makes recorded, not submitted: their results are
/// placeholders (failed refs). An actor group records its call once per member this way to
/// learn the method and arguments, and sends them as one tree (`ActorGroup::call`).
pub(crate) fn record_calls<T>(f: impl FnOnce() -> T) -> (T, Vec<RecordedCall>) {
    struct Stop(bool);
    impl Drop for Stop {
        fn drop(&mut self) {
            RECORDING.with(|r| r.set(self.0));
        }
    }
    let _stop = Stop(RECORDING.with(|r| r.replace(true)));
    let before = RECORDED.with(|r| std::mem::take(&mut *r.borrow_mut()));
    let out = f();
    let calls = RECORDED.with(|r| std::mem::replace(&mut *r.borrow_mut(), before));
    (out, calls)
}

impl RecordedCall {
    /// The placeholder's typed ref (what the recorded caller got).
    pub(crate) fn is<R>(&self, r: &ObjectRef<R>) -> bool {
        Arc::ptr_eq(&self.placeholder, &r.cell)
    }
}

impl RawActorHandle {
    /// Submits a call of `method` (used by generated code).
    pub fn call<R>(
        &self,
        method: &'static ActorMethod,
        args: Vec<Result<ArgSlot, Error>>,
    ) -> ObjectRef<R> {
        if RECORDING.with(std::cell::Cell::get) {
            let placeholder = ObjectRef::<R>::failed(Error::InvalidArgument {
                what: "ActorGroup::call".into(),
                message: "a call made while the group records its call was not sent".into(),
            });
            RECORDED.with(|r| {
                r.borrow_mut().push(RecordedCall {
                    method,
                    args,
                    placeholder: placeholder.cell.clone(),
                })
            });
            return placeholder;
        }
        self.cell.call(method, args, self.borrow.as_ref())
    }

    /// The method's registered name.
    pub(crate) fn method_name(method: &'static ActorMethod) -> &'static str {
        method.name
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.id
    }
}

/// A handle to an actor of type `A`: call its methods through it (it derefs to the generated
/// method set), clone it, pass it to tasks.
pub struct ActorHandle<A: Actor> {
    methods: A::Methods,
}

impl<A: Actor> ActorHandle<A> {
    pub(crate) fn from_raw(raw: RawActorHandle) -> Self {
        ActorHandle {
            methods: A::Methods::from(raw),
        }
    }

    /// The untyped handle (for generated code and the runtime).
    #[doc(hidden)]
    pub fn as_raw(&self) -> &RawActorHandle {
        self.methods.as_ref()
    }

    fn raw(&self) -> &RawActorHandle {
        self.as_raw()
    }

    /// A handle to an actor that could not be created: every call fails with `error`.
    pub(crate) fn dead(error: Error) -> Self {
        let cell = Arc::new(ActorCell::new(
            ActorId::from_u64(0),
            A::CLASS,
            &ActorOptions::default(),
            Demand::none(),
        ));
        cell.die(error);
        Self::from_raw(RawActorHandle { cell, borrow: None })
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.raw().cell.id
    }

    /// An object that becomes ready when the constructor has run (or fails if it failed).
    pub fn ready(&self) -> ObjectRef<()> {
        match self.raw().cell.created.get() {
            Some(cell) => ObjectRef::from_cell(cell.clone()),
            None => ObjectRef::failed(self.raw().cell.death_error()),
        }
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            methods: self.methods.clone(),
        }
    }
}

impl<A: Actor> std::ops::Deref for ActorHandle<A> {
    type Target = A::Methods;
    fn deref(&self) -> &A::Methods {
        &self.methods
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle<{}>({})", A::CLASS.name, self.id())
    }
}

impl<A: Actor> serde::Serialize for ActorHandle<A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        codec::note_nested_actor(self.raw());
        serializer.serialize_u64(self.id().as_u64())
    }
}

impl<'de, A: Actor> serde::Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = ActorId::from_u64(<u64 as serde::Deserialize>::deserialize(deserializer)?);
        let raw = runtime::with_current(|rt| rt.actor_handle(id))
            .and_then(|r| r)
            .map_err(serde::de::Error::custom)?;
        Ok(Self::from_raw(raw))
    }
}

#[cfg(test)]
mod running_tests {
    use super::*;

    /// The serial fast path is one atomic word: no hidden lock behind `AtomicCell`.
    #[test]
    fn a_serial_actors_running_cell_is_lock_free() {
        assert!(AtomicCell::<Option<Arc<ObjectCell>>>::is_lock_free());
    }
}
