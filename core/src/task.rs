//! Task specifications: registered remote functions, arguments, options and the task record.
//!
//! # Task states
//!
//! ```text
//! Waiting (for argument objects) ──► Queued ──► Running ──► Done
//!              │                        │
//!              └──────► Cancelled ◄─────┘
//! ```
//!
//! 1. A task is born `Waiting` with a count of unresolved argument objects plus one guard.
//!    Each argument's completion decrements the count (it registered as a waiter on the cell);
//!    the submitter drops the guard after registering all of them. Whoever brings the count to
//!    zero moves the task to `Queued` and hands it to the scheduler — exactly once.
//! 2. `Queued → Running` is a compare-and-swap (`claim`): a slot that popped the task and a
//!    caller that wants to run it inline in `get` may race; one wins, the other drops its copy.
//! 3. `cancel` moves `Waiting` or `Queued` to `Cancelled` and completes the result with
//!    [`Error::Cancelled`]; a running task is *interrupted* instead (`cancel.rs`): its result
//!    is completed with `Cancelled` first (cells are written once, so what its body returns
//!    later is discarded) and its next Manta call fails with `Cancelled`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actor::ActorCell;
use crate::codec;
use crate::error::Error;
use crate::id::{ObjectId, TaskId};
use crate::object::{ObjectCell, ObjectRef, ObjectValue};
use crate::resources::{Demand, ResourceRequest};
use crate::runtime;
use crate::sync::{Arc, AtomicBool, AtomicU8, AtomicUsize, Mutex, Ordering, Weak, lock, thread};

/// A remote function, registered at link time by `#[manta::remote]` under a stable name.
#[derive(Debug)]
pub struct RemoteFunction {
    name: &'static str,
    body: Body,
}

/// Runs a function body on decoded arguments and encodes its result.
pub type Invoke = fn(&mut ArgReader<'_>) -> Result<ObjectValue, Error>;

/// Runs a function body that returns several objects (`num_returns`), each encoded on its own.
pub type InvokeReturns = fn(&mut ArgReader<'_>) -> Result<Vec<ObjectValue>, Error>;

#[derive(Debug)]
enum Body {
    One(Invoke),
    Several(usize, InvokeReturns),
}

impl RemoteFunction {
    /// Declares a function (used by the `#[remote]` macro).
    pub const fn new(name: &'static str, invoke: Invoke) -> Self {
        RemoteFunction {
            name,
            body: Body::One(invoke),
        }
    }

    /// Declares a function returning `num_returns` objects, each its own object (used by
    /// `#[remote(num_returns = N)]`).
    pub const fn with_returns(
        name: &'static str,
        num_returns: usize,
        invoke: InvokeReturns,
    ) -> Self {
        RemoteFunction {
            name,
            body: Body::Several(num_returns, invoke),
        }
    }

    /// The stable name every process of a job uses for this function.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How many objects a call returns (1 unless declared with `num_returns`).
    pub fn num_returns(&self) -> usize {
        match self.body {
            Body::One(_) => 1,
            Body::Several(n, _) => n,
        }
    }

    /// Runs the body. The first return is handed back; the others (`num_returns > 1`) complete
    /// `extra`, the task's other return cells, in order.
    pub(crate) fn invoke(
        &self,
        args: &mut ArgReader<'_>,
        extra: &[Arc<ObjectCell>],
    ) -> Result<ObjectValue, Error> {
        match self.body {
            Body::One(invoke) => invoke(args),
            Body::Several(n, invoke) => {
                let mut values = invoke(args)?.into_iter();
                let first = values.next();
                if values.len() + 1 != n || extra.len() + 1 != n {
                    return Err(Error::Cluster {
                        what: format!("task {}", self.name),
                        message: format!("declared {n} returns, produced {}", values.len() + 1),
                    });
                }
                for (cell, value) in extra.iter().zip(values) {
                    cell.complete(Ok(value));
                }
                first.ok_or(Error::ShutDown)
            }
        }
    }
}

/// A link-time registration of a remote function (collected with `inventory`).
#[derive(Debug)]
pub struct Registration(pub &'static RemoteFunction);

inventory::collect!(Registration);

/// Every remote function linked into this binary.
pub fn registered_functions() -> impl Iterator<Item = &'static RemoteFunction> {
    inventory::iter::<Registration>.into_iter().map(|r| r.0)
}

/// The function registered under `name`.
pub(crate) fn function_by_name(name: &str) -> Option<&'static RemoteFunction> {
    static MAP: crate::sync::OnceLock<
        rustc_hash::FxHashMap<&'static str, &'static RemoteFunction>,
    > = crate::sync::OnceLock::new();
    MAP.get_or_init(|| registered_functions().map(|f| (f.name(), f)).collect())
        .get(name)
        .copied()
}

/// Copies a failure of `first` (a call's first return) to its other returns `extra`; a
/// success leaves them to whoever completes them (the body, or a `TaskDone` per return).
pub(crate) fn fail_extra_with(first: &Arc<ObjectCell>, extra: &[Arc<ObjectCell>]) {
    if extra.is_empty() {
        return;
    }
    let weak: Vec<_> = extra.iter().map(Arc::downgrade).collect();
    // Weak both ways: a callback on a cell that never completes must not keep it alive.
    let first2 = Arc::downgrade(first);
    let copy = move || {
        let Some(first) = first2.upgrade() else {
            return;
        };
        let Some(Err(e)) = first.get() else { return };
        for cell in weak.iter().filter_map(crate::sync::Weak::upgrade) {
            cell.complete(Err(e.clone().for_object(cell.id())));
        }
    };
    if let Err(crate::object::Waiter::Callback(f)) =
        first.register(crate::object::Waiter::Callback(Box::new(copy)))
    {
        f();
    }
}

/// One argument of a task: a value encoded at submission, or an object to resolve first.
#[derive(Clone, Debug)]
#[doc(hidden)]
pub enum ArgSlot {
    /// An encoded value.
    Value(ObjectValue),
    /// An object that must be ready before the task runs.
    Ref(Arc<ObjectCell>),
}

/// Something a task may take where its parameter is a `T`: a `T` itself, or an
/// [`ObjectRef<T>`] (by value or by reference) that Manta resolves before the task runs.
pub trait IntoArg<T> {
    #[doc(hidden)]
    fn into_slot(self) -> Result<ArgSlot, Error>;
}

impl<T: Serialize + Send + 'static> IntoArg<T> for T {
    fn into_slot(self) -> Result<ArgSlot, Error> {
        codec::encode(&self).map(ArgSlot::Value)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_slot(self) -> Result<ArgSlot, Error> {
        Ok(ArgSlot::Ref(self.cell))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_slot(self) -> Result<ArgSlot, Error> {
        Ok(ArgSlot::Ref(self.cell.clone()))
    }
}

/// Hands a task body its arguments one by one, decoded.
#[derive(Debug)]
pub struct ArgReader<'a> {
    slots: &'a [ArgSlot],
    next: usize,
}

impl<'a> ArgReader<'a> {
    pub(crate) fn new(slots: &'a [ArgSlot]) -> Self {
        ArgReader { slots, next: 0 }
    }

    /// Decodes the next argument. Fails with the argument object's own error if it failed.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned + 'static>(&mut self) -> Result<T, Error> {
        let slot = self.slots.get(self.next).ok_or(Error::Decode {
            object: ObjectId::from_u64(0),
            type_name: std::any::type_name::<T>(),
            message: format!(
                "the task was given {} arguments, it takes more",
                self.slots.len()
            ),
        })?;
        self.next += 1;
        match slot {
            ArgSlot::Value(v) => v.decode(ObjectId::from_u64(0)),
            ArgSlot::Ref(cell) => match cell.get() {
                Some(Ok(v)) => v.decode(cell.id()),
                Some(Err(e)) => Err(e.clone()),
                // Arguments are resolved before a task runs; only a shutdown gets here.
                None => Err(Error::ShutDown),
            },
        }
    }
}

/// Whether `retry_on` covers an application error: a panic (`returned` is `None`) or an `Err`
/// the body returned.
pub(crate) fn retry_covers(retry_on: &RetryOn, returned: Option<&crate::TaskError>) -> bool {
    match (retry_on, returned) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(types), Some(e)) => e
            .cause_type_name()
            .is_some_and(|t| types.iter().any(|x| &**x == t)),
    }
}

/// Which application errors a task runs again for (Ray's `retry_exceptions`): `None`, any
/// (a panic or an `Err`); else only an `Err` of one of these types (their Rust type names).
pub(crate) type RetryOn = Option<Arc<[Box<str>]>>;

/// The types of `retry_exceptions_of` so far (`current`) with `E` added: the list a task's
/// or an actor's options hold.
pub(crate) fn with_retry_type<E: 'static>(current: Option<RetryOn>) -> Arc<[Box<str>]> {
    let mut types: Vec<Box<str>> = match current {
        Some(Some(list)) => list.iter().cloned().collect(),
        _ => Vec::new(),
    };
    types.push(std::any::type_name::<E>().into());
    types.into()
}

/// Per-call options of a task (Ray's `.options(...)`).
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) resources: ResourceRequest,
    pub(crate) max_retries: Option<u32>,
    /// `None`: not set (application errors are retried only by the config's
    /// `max_task_retries`); `Some(on)`: retried up to `max_retries` times when they match.
    pub(crate) retry_exceptions: Option<RetryOn>,
    pub(crate) name: Option<String>,
    /// The placement group (and bundle) the task runs in.
    pub(crate) placement: Option<crate::placement_group::InGroup>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            resources: ResourceRequest::task_default(),
            max_retries: None,
            retry_exceptions: None,
            name: None,
            placement: None,
        }
    }
}

impl TaskOptions {
    /// CPUs the task holds while it runs (default 1; may be fractional or 0).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources.num_cpus = n;
        self
    }
    /// GPUs the task holds while it runs (default 0).
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.resources.num_gpus = n;
        self
    }
    /// An amount of a custom resource the task holds while it runs.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set_custom(name, amount);
        self
    }
    /// How many times to run the task again after a failure that is retried (Ray's
    /// `max_retries`; default: the config's `max_task_system_retries`, 3): its worker process
    /// dying, always; an application error (a panic, or an `Err` returned) only with
    /// [`retry_exceptions`](Self::retry_exceptions) or
    /// [`retry_exceptions_of`](Self::retry_exceptions_of), as in Ray.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Whether an application error — the body panicking or returning `Err` — runs the task
    /// again, up to `max_retries` times (Ray's `retry_exceptions=True`). Without it (or
    /// [`retry_exceptions_of`](Self::retry_exceptions_of)), the first application error is
    /// the task's result, unless the config's `max_task_retries` says otherwise.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes.then_some(None);
        self
    }
    /// Runs the task again when its body returns `Err` of type `E` (Ray's
    /// `retry_exceptions=[E]`), up to `max_retries` times; may be given for several types.
    /// Other errors, and panics, are its result at once.
    pub fn retry_exceptions_of<E: 'static>(mut self) -> Self {
        self.retry_exceptions = Some(Some(crate::task::with_retry_type::<E>(
            self.retry_exceptions.take(),
        )));
        self
    }
    /// A name for the task in errors and listings (default: the function's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Runs the task in bundle `bundle` of placement group `pg` (`None`: any bundle): what it
    /// asks for comes out of the bundle's reservation; asking more than the bundle holds is
    /// refused ([`crate::Error::Infeasible`]), and it fails with
    /// [`crate::Error::PlacementGroupRemoved`] if the group is removed before it runs.
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
    pub(crate) fn is_default_shape(&self) -> bool {
        self.resources == ResourceRequest::task_default() && self.placement.is_none()
    }
}

/// What a task runs.
pub(crate) enum TaskBody {
    Function(&'static RemoteFunction),
    /// Runs an actor's constructor; the demand is then held for the actor's life.
    CreateActor(Arc<ActorCell>),
}

pub(crate) const WAITING: u8 = 0;
pub(crate) const QUEUED: u8 = 1;
pub(crate) const RUNNING: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const CANCELLED: u8 = 4;

/// A submitted task (see the module docs for its states).
pub(crate) struct Task {
    pub(crate) id: TaskId,
    pub(crate) body: TaskBody,
    pub(crate) args: Box<[ArgSlot]>,
    pub(crate) result: Arc<ObjectCell>,
    /// The other return objects of a function with `num_returns > 1` (ids `id + 1 ..`), in
    /// order; empty otherwise. Every failure of `result` fails them too (see `with_returns`).
    pub(crate) extra: Box<[Arc<ObjectCell>]>,
    pub(crate) demand: Demand,
    pub(crate) name: Option<Box<str>>,
    state: AtomicU8,
    unresolved: AtomicUsize,
    pub(crate) retries_left: AtomicU8,
    /// Which application errors use up `retries_left` to run again.
    pub(crate) retry_on: RetryOn,
    /// Set when the task was cancelled while running (`cancel.rs`, step 2).
    interrupted: AtomicBool,
    /// What cancelling it needs while it runs: the results of the tasks it submitted (for a
    /// recursive cancel) and the thread its body is parked in, if it is.
    cancel_state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    /// Boxed when there is one: most tasks submit none, and a task is allocated per call, so
    /// one word here instead of three keeps it in the allocator's next smaller size class.
    #[allow(clippy::box_collection)]
    children: Option<Box<Vec<Weak<ObjectCell>>>>,
    parked: Option<thread::Thread>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("name", &self.name())
            .finish()
    }
}

impl Task {
    pub(crate) fn new(
        id: TaskId,
        object: ObjectId,
        body: TaskBody,
        args: Box<[ArgSlot]>,
        demand: Demand,
        name: Option<Box<str>>,
        retries: (u32, RetryOn),
    ) -> Arc<Task> {
        Self::build(id, object, body, args, demand, name, retries, 1)
    }

    /// A task whose results are `object` and the `returns - 1` ids after it.
    #[allow(clippy::too_many_arguments)]
    fn build(
        id: TaskId,
        object: ObjectId,
        body: TaskBody,
        args: Box<[ArgSlot]>,
        demand: Demand,
        name: Option<Box<str>>,
        (retries, retry_on): (u32, RetryOn),
        returns: usize,
    ) -> Arc<Task> {
        Arc::new_cyclic(|me: &crate::sync::Weak<Task>| Task {
            id,
            body,
            args,
            result: Arc::new(ObjectCell::pending(object, Some(me.clone()))),
            extra: (1..returns as u64)
                .map(|i| {
                    Arc::new(ObjectCell::pending(
                        ObjectId::from_u64(object.as_u64() + i),
                        Some(me.clone()),
                    ))
                })
                .collect(),
            demand,
            name,
            state: AtomicU8::new(WAITING),
            unresolved: AtomicUsize::new(1),
            retries_left: AtomicU8::new(retries.min(u8::MAX as u32) as u8),
            retry_on,
            interrupted: AtomicBool::new(false),
            cancel_state: Mutex::new(CancelState::default()),
        })
    }

    /// A task of a function with `num_returns > 1`: `result` is its first return (id
    /// `object`), `extra` the others (ids `object + 1 ..`), each its own object, freed on its
    /// own. The body completes `extra` before `result` (`RemoteFunction::invoke`); every other
    /// completion of `result` — a failure, cancel, shutdown — is copied to `extra` by a
    /// callback registered here, before anyone else can register, so an owner waking on
    /// `result` finds every return complete.
    pub(crate) fn with_returns(
        id: TaskId,
        object: ObjectId,
        function: &'static RemoteFunction,
        args: Box<[ArgSlot]>,
        demand: Demand,
        name: Option<Box<str>>,
        retries: (u32, RetryOn),
    ) -> Arc<Task> {
        let task = Self::build(
            id,
            object,
            TaskBody::Function(function),
            args,
            demand,
            name,
            retries,
            function.num_returns(),
        );
        fail_extra_with(&task.result, &task.extra);
        task
    }

    /// Whether application error `e` of its body (a panic: `None`) runs it again, retries
    /// left aside.
    pub(crate) fn retries_error(&self, returned: Option<&crate::TaskError>) -> bool {
        retry_covers(&self.retry_on, returned)
    }

    pub(crate) fn name(&self) -> &str {
        if let Some(n) = &self.name {
            return n;
        }
        match &self.body {
            TaskBody::Function(f) => f.name(),
            TaskBody::CreateActor(a) => a.class_name(),
        }
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Step 1: registers the task on each unresolved argument, then drops the guard.
    /// Returns whether the task is ready to queue now.
    pub(crate) fn resolve_arguments(self: &Arc<Self>) -> bool {
        for slot in self.args.iter() {
            if let ArgSlot::Ref(cell) = slot {
                if cell.is_ready() {
                    continue;
                }
                self.unresolved.fetch_add(1, Ordering::AcqRel);
                if cell
                    .register(crate::object::Waiter::Task(self.clone()))
                    .is_err()
                {
                    self.unresolved.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        self.release_one()
    }

    fn release_one(&self) -> bool {
        self.unresolved.fetch_sub(1, Ordering::AcqRel) == 1
            && self
                .state
                .compare_exchange(WAITING, QUEUED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// An argument completed (called from the completing thread).
    pub(crate) fn dependency_ready(self: Arc<Self>) {
        if self.release_one() {
            runtime::enqueue_ready(self);
        }
    }

    /// Step 2: the one winner runs the task.
    pub(crate) fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Returns a claimed task to `Queued` (its resources were not available).
    pub(crate) fn unclaim(&self) {
        self.state.store(QUEUED, Ordering::Release);
    }

    pub(crate) fn finish(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    /// Whether the task was cancelled while it ran.
    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// The error of this task's cancellation.
    pub(crate) fn cancelled_error(&self) -> Error {
        Error::Cancelled {
            object: self.result.id(),
            task: self.name().to_string(),
        }
    }

    /// Interrupts the running task (`cancel.rs`, step 2): sets the flag, wakes its body if it
    /// is parked.
    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        let parked = lock(&self.cancel_state).parked.take();
        if let Some(t) = parked {
            t.unpark();
        }
    }

    /// Records the thread the body is about to park in (`cancel.rs`, step 3).
    pub(crate) fn park_here(&self, t: thread::Thread) {
        lock(&self.cancel_state).parked = Some(t);
    }

    /// Notes the result of a task this one submitted; finished children are swept now and
    /// then, so a long-running task that submits many keeps a short list.
    pub(crate) fn add_child(&self, cell: &Arc<ObjectCell>) {
        let mut state = lock(&self.cancel_state);
        let children = state.children.get_or_insert_with(Box::default);
        if children.len() >= 64 && children.len().is_power_of_two() {
            children.retain(|c| c.upgrade().is_some_and(|c| !c.is_ready()));
        }
        children.push(Arc::downgrade(cell));
    }

    /// The live, unfinished children (taken: a task is cancelled once).
    pub(crate) fn take_children(&self) -> Vec<Arc<ObjectCell>> {
        let children = lock(&self.cancel_state).children.take().unwrap_or_default();
        children
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.is_ready())
            .collect()
    }

    /// Step 3: cancels a task that has not started. Returns whether it was cancelled.
    pub(crate) fn cancel(&self) -> bool {
        for from in [WAITING, QUEUED] {
            if self
                .state
                .compare_exchange(from, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
        false
    }
}
