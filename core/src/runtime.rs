//! The embedded single-node runtime: head, raylet and worker slots inside one process.
//!
//! [`RuntimeInner`] ties together the scheduler, the in-process memory store's escape table,
//! the node's shared-memory object store (for objects above the inline threshold) and the actor
//! directory. One runtime at a time is the process's *current* runtime (`init` sets
//! it, `shutdown` clears it), reached through a thread-local cache validated by a global
//! generation counter, so the hot path costs one atomic load, not a lock.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use crate::actor::{Actor, ActorCell, ActorClass, ActorHandle, ActorOptions, RawActorHandle};
use crate::config::{Config, Resolved};
use crate::error::Error;
use crate::id::{ActorId, ObjectId, TaskId};
use crate::object::{ObjectCell, ObjectRef};
use crate::remote::{ActorLocation, Remote, RemoteValue};
use crate::resources::{DemandError, NodeResources};
use crate::scheduler::{Job, Scheduler, fail_job};
use crate::store::ObjectStore;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, Weak, lock};
use crate::task::{ArgSlot, RemoteFunction, RetryOn, Task, TaskBody, TaskOptions};

/// Everything one running runtime owns.
#[derive(Debug)]
pub(crate) struct RuntimeInner {
    pub(crate) config: Resolved,
    pub(crate) scheduler: Scheduler,
    /// The shared-memory object store; `None` only if it could not be created (every object is
    /// then inline).
    pub(crate) store: Option<Arc<ObjectStore>>,
    next_id: AtomicU64,
    escaped: Mutex<FxHashMap<ObjectId, Weak<ObjectCell>>>,
    actors: Mutex<FxHashMap<ActorId, Weak<ActorCell>>>,
    /// Named actors this process created, by name key (`ActorOptions::name_key`).
    named: Mutex<HashMap<String, Named>>,
    /// Detached actors without a name this process created, held until killed.
    unnamed_detached: Mutex<HashMap<ActorId, Arc<ActorCell>>>,
    /// Actors created here by remote owners (held until killed).
    pushed_actors: Mutex<FxHashMap<ActorId, Arc<ActorCell>>>,
    /// Why the latest actors hosted here for remote owners died (at most `BURIED` of them), so
    /// that a call arriving after the death gets the reason, not just "not hosted here".
    buried: Mutex<std::collections::VecDeque<(ActorId, Error)>>,
    /// This process's cluster membership, if it joined one.
    pub(crate) cluster: Option<Arc<dyn Remote>>,
    /// The key-value store of the embedded runtime (a cluster's lives in its GCS).
    pub(crate) kv: Mutex<HashMap<String, Vec<u8>>>,
    default_demand: crate::resources::Demand,
    pub(crate) started: Instant,
}

/// How many hosted actors' deaths a worker remembers for late calls ([`RuntimeInner::bury`]).
const BURIED: usize = 1024;

/// An entry of the name table: a detached actor is held by it (until killed or shutdown), any
/// other named actor only referred to, so that it dies with its last handle (Ray's rule).
#[derive(Debug)]
struct Named {
    id: ActorId,
    weak: Weak<ActorCell>,
    #[allow(dead_code)] // held for its drop
    detached: Option<Arc<ActorCell>>,
}

impl Named {
    fn new(cell: &Arc<ActorCell>, detached: bool) -> Self {
        Named {
            id: cell.id(),
            weak: Arc::downgrade(cell),
            detached: detached.then(|| cell.clone()),
        }
    }
}

struct Global {
    current: Option<Arc<RuntimeInner>>,
    shut_down: bool,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    current: None,
    shut_down: false,
});
/// Bumped on every `init` and `shutdown`; thread-local caches compare against it.
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: RefCell<(u64, Option<Arc<RuntimeInner>>)> = const { RefCell::new((0, None)) };
}

fn global_current() -> Result<Arc<RuntimeInner>, Error> {
    let g = lock(&GLOBAL);
    match &g.current {
        Some(rt) => Ok(rt.clone()),
        None if g.shut_down => Err(Error::ShutDown),
        None => Err(Error::NotInitialized),
    }
}

/// Runs `f` with the current runtime.
pub(crate) fn with_current<R>(f: impl FnOnce(&Arc<RuntimeInner>) -> R) -> Result<R, Error> {
    let generation = GENERATION.load(Ordering::Acquire);
    CACHE.with(|cache| {
        if let Ok(c) = cache.try_borrow()
            && c.0 == generation
            && let Some(rt) = &c.1
        {
            return Ok(f(rt));
        }
        let fresh = global_current();
        if let Ok(mut c) = cache.try_borrow_mut() {
            *c = (generation, fresh.as_ref().ok().cloned());
        }
        fresh.map(|rt| f(&rt))
    })
}

/// The current runtime, if any.
pub(crate) fn current_inner() -> Option<Arc<RuntimeInner>> {
    with_current(|rt| rt.clone()).ok()
}

/// Starts the embedded runtime with configuration from the environment and defaults.
pub fn init() -> Result<(), Error> {
    init_with(Config::default())
}

/// Starts the embedded runtime with `config`.
pub fn init_with(config: Config) -> Result<(), Error> {
    init_joining(config, crate::remote::join)
}

/// Starts the runtime, joining the cluster `join` names (if any); a worker process serves
/// here and never returns.
pub(crate) fn init_joining(
    config: Config,
    join: impl FnOnce(&mut Resolved) -> Result<Option<Arc<dyn Remote>>, Error>,
) -> Result<(), Error> {
    let mut resolved = config.resolve()?;
    let mut g = lock(&GLOBAL);
    if g.current.is_some() {
        return Err(Error::AlreadyInitialized);
    }
    crate::config::install(&resolved);
    let unknown = crate::config::unknown_vars(std::env::vars().map(|(k, _)| k));
    if !unknown.is_empty() {
        tracing::warn!(variables = %unknown.join(", "), "unknown MANTA_* variables (see `manta config`)");
    }
    let cluster = join(&mut resolved)?;
    let rt = Arc::new(RuntimeInner::new(resolved, cluster.clone())?);
    if let Some(c) = &cluster {
        c.set_runtime(&rt);
    }
    let base = rt.scheduler.base_slots();
    for _ in 0..base {
        if let Err(e) = crate::scheduler::spawn_slot(&rt) {
            rt.scheduler.shutdown();
            return Err(e);
        }
    }
    if let Err(e) = crate::scheduler::spawn_monitor(&rt) {
        rt.scheduler.shutdown();
        return Err(e);
    }
    tracing::debug!(slots = base, resources = %rt.scheduler.resources.total_string(), "manta runtime started");
    g.current = Some(rt);
    g.shut_down = false;
    GENERATION.fetch_add(1, Ordering::AcqRel);
    drop(g);
    if let Some(c) = cluster
        && !c.is_driver()
    {
        // A worker process: serve until the raylet says stop, then exit.
        c.serve_as_worker();
    }
    Ok(())
}

/// Whether a runtime is running in this process.
pub fn is_initialized() -> bool {
    lock(&GLOBAL).current.is_some()
}

/// Stops the runtime: slots finish their current task and exit; queued tasks, pending actor
/// calls and unfinished objects fail with [`Error::ShutDown`]. Idempotent.
pub fn shutdown() {
    let rt = {
        let mut g = lock(&GLOBAL);
        let rt = g.current.take();
        if rt.is_some() {
            g.shut_down = true;
        }
        GENERATION.fetch_add(1, Ordering::AcqRel);
        rt
    };
    let Some(rt) = rt else { return };
    if let Some(c) = &rt.cluster {
        c.leave();
    }
    // Queued work fails first, and every actor dies (its queued calls fail), so that slots
    // blocked waiting for them wake up; then the slots are joined, within a bound.
    let pushed: Vec<_> = lock(&rt.pushed_actors).drain().map(|(_, a)| a).collect();
    rt.scheduler.begin_shutdown();
    let mut named: Vec<_> = lock(&rt.named)
        .drain()
        .filter_map(|(_, a)| a.weak.upgrade())
        .collect();
    named.extend(lock(&rt.unnamed_detached).drain().map(|(_, a)| a));
    let actors: Vec<_> = lock(&rt.actors)
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for actor in named.iter().chain(&actors).chain(&pushed) {
        actor.shut_down();
    }
    rt.scheduler.join_slots();
    drop(pushed);
    lock(&rt.escaped).clear();
}

impl RuntimeInner {
    /// How often a task submitted with `options` runs again, as in Ray: after its worker
    /// process dies, `max_retries` times (default `max_task_system_retries`, 3); after an
    /// application error (a panic, an `Err`), as often when `retry_exceptions` says so and for
    /// the errors it names, else the config's `max_task_retries` times (0 unless set).
    /// Returns `(application retries, system retries, which application errors)`.
    fn task_retries(&self, options: &TaskOptions) -> (u32, u32, RetryOn) {
        let system = options
            .max_retries
            .unwrap_or(self.config.max_task_system_retries);
        match &options.retry_exceptions {
            Some(on) => (system, system, on.clone()),
            None => (self.config.max_task_retries, system, None),
        }
    }

    fn new(config: Resolved, cluster: Option<Arc<dyn Remote>>) -> Result<Self, Error> {
        let resources = NodeResources::new(&config)?;
        let base_slots = match config.num_slots {
            0 => (config.num_cpus.ceil() as usize).max(1),
            n => n,
        };
        let default_demand =
            match resources.demand(&crate::resources::ResourceRequest::task_default()) {
                Ok(d) => d,
                Err(_) => crate::resources::Demand::none(),
            };
        let scheduler = Scheduler::new(
            resources,
            base_slots,
            config.max_slots,
            config.spin_before_park,
            config.inline_get,
            config.cpu_affinity.0.clone(),
            config.shutdown_timeout,
        );
        // A member of a cluster allocates in its node's shared arena when its raylet has one.
        let node = match &cluster {
            Some(c) if config.node_object_store => c.node_arena(),
            _ => None,
        };
        let store = match ObjectStore::open(&config, node) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                tracing::warn!(error = %e, "no object store: large objects will stay in the heap");
                None
            }
        };
        Ok(RuntimeInner {
            scheduler,
            store,
            next_id: AtomicU64::new(cluster.as_ref().map_or(1, |c| c.first_id())),
            pushed_actors: Mutex::new(FxHashMap::default()),
            buried: Mutex::new(std::collections::VecDeque::new()),
            cluster,
            kv: Mutex::new(HashMap::new()),
            escaped: Mutex::new(FxHashMap::default()),
            actors: Mutex::new(FxHashMap::default()),
            named: Mutex::new(HashMap::new()),
            unnamed_detached: Mutex::new(HashMap::new()),
            default_demand,
            started: Instant::now(),
            config,
        })
    }

    pub(crate) fn next_object_id(&self) -> ObjectId {
        ObjectId::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn escape(&self, cell: &Arc<ObjectCell>) {
        lock(&self.escaped).insert(cell.id(), Arc::downgrade(cell));
    }

    pub(crate) fn unescape(&self, id: ObjectId) {
        lock(&self.escaped).remove(&id);
    }

    /// Every live actor cell this process holds a handle to (its own and proxies).
    pub(crate) fn actor_cells(&self) -> Vec<Arc<ActorCell>> {
        lock(&self.actors)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The live cells of the escape table.
    pub(crate) fn escaped_cells(&self) -> Vec<Arc<ObjectCell>> {
        lock(&self.escaped)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub(crate) fn escaped_count(&self) -> usize {
        lock(&self.escaped).len()
    }

    fn infeasible(
        &self,
        what: String,
        request: &crate::resources::ResourceRequest,
        e: DemandError,
    ) -> Error {
        match e {
            DemandError::Infeasible => Error::Infeasible {
                what,
                request: request.to_string(),
                total: self.scheduler.resources.total_string(),
            },
            DemandError::Invalid(message) => Error::Config {
                key: "resources".into(),
                message,
            },
        }
    }

    /// Submits a task of `function` (one return: the hot path, kept apart from
    /// `submit_returns`).
    pub(crate) fn submit<R>(
        &self,
        function: &'static RemoteFunction,
        args: Vec<Result<ArgSlot, Error>>,
        options: &TaskOptions,
    ) -> ObjectRef<R> {
        if let Err(e) = crate::cancel::check() {
            return ObjectRef::failed(e);
        }
        debug_assert_eq!(
            function.num_returns(),
            1,
            "several returns go through submit_returns"
        );
        let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(a) => a.into_boxed_slice(),
            Err(e) => return ObjectRef::failed(e),
        };
        if let Some(cluster) = &self.cluster
            && (cluster.is_driver() || self.scheduler.resources.demand(&options.resources).is_err())
        {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let cell = Arc::new(ObjectCell::pending(ObjectId::from_u64(id), None));
            let me = self.me();
            let (retries, system, retry_on) = self.task_retries(options);
            cluster.submit_remote(
                &me,
                function.name(),
                cell.clone(),
                args,
                &options.resources,
                options.name.as_deref(),
                retries,
                system,
                retry_on,
            );
            crate::cancel::note_child(&cell);
            return ObjectRef::from_cell(cell);
        }
        let demand = if options.is_default_shape() {
            self.default_demand.clone()
        } else {
            match self.scheduler.resources.demand(&options.resources) {
                Ok(d) => d,
                Err(e) => {
                    let name = options.name.as_deref().unwrap_or(function.name());
                    return ObjectRef::failed(self.infeasible(
                        format!("task {name}"),
                        &options.resources,
                        e,
                    ));
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (retries, _, retry_on) = self.task_retries(options);
        let task = Task::new(
            TaskId::from_u64(id),
            ObjectId::from_u64(id),
            TaskBody::Function(function),
            args,
            demand,
            options.name.as_deref().map(Box::from),
            (retries, retry_on),
        );
        let result = ObjectRef::from_cell(task.result.clone());
        crate::cancel::note_child(&task.result);
        if task.resolve_arguments() {
            self.scheduler.push(Job::Task(task));
        }
        result
    }

    /// In a cluster, submits a task of `function` once `after` (a placement group's `ready()`)
    /// completes; if it fails, the task fails with its error. The result's cell exists now.
    pub(crate) fn submit_after<R>(
        &self,
        function: &'static RemoteFunction,
        args: Vec<Result<ArgSlot, Error>>,
        options: &TaskOptions,
        after: Arc<ObjectCell>,
    ) -> ObjectRef<R> {
        if let Err(e) = crate::cancel::check() {
            return ObjectRef::failed(e);
        }
        let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(a) => a.into_boxed_slice(),
            Err(e) => return ObjectRef::failed(e),
        };
        let Some(cluster) = self.cluster.clone() else {
            return self.submit(
                function,
                args.into_vec().into_iter().map(Ok).collect(),
                options,
            );
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(ObjectCell::pending(ObjectId::from_u64(id), None));
        let me = self.me();
        let (retries, system, retry_on) = self.task_retries(options);
        let (c2, a2) = (cell.clone(), after.clone());
        let resources = options.resources.clone();
        let name = options.name.clone();
        let submit = move || match a2.get() {
            Some(Ok(_)) => cluster.submit_remote(
                &me,
                function.name(),
                c2,
                args,
                &resources,
                name.as_deref(),
                retries,
                system,
                retry_on,
            ),
            Some(Err(e)) => {
                c2.complete(Err(e.clone()));
            }
            None => {}
        };
        if let Err(crate::object::Waiter::Callback(f)) =
            after.register(crate::object::Waiter::Callback(Box::new(submit)))
        {
            f();
        }
        crate::cancel::note_child(&cell);
        ObjectRef::from_cell(cell)
    }

    /// Submits a task of a function with `num_returns > 1`; returns its first return object
    /// and the others, in order, each with its own id (`first + i`).
    pub(crate) fn submit_returns(
        &self,
        function: &'static RemoteFunction,
        args: Vec<Result<ArgSlot, Error>>,
        options: &TaskOptions,
    ) -> (Arc<ObjectCell>, Box<[Arc<ObjectCell>]>) {
        let returns = function.num_returns();
        let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(a) => a.into_boxed_slice(),
            Err(e) => return failed_returns(returns, e),
        };
        if let Some(cluster) = &self.cluster
            && (cluster.is_driver() || self.scheduler.resources.demand(&options.resources).is_err())
        {
            let id = self.next_id.fetch_add(returns as u64, Ordering::Relaxed);
            let cell = Arc::new(ObjectCell::pending(ObjectId::from_u64(id), None));
            let extra: Box<[Arc<ObjectCell>]> = (1..returns as u64)
                .map(|i| Arc::new(ObjectCell::pending(ObjectId::from_u64(id + i), None)))
                .collect();
            if !extra.is_empty() {
                // Before the push: the executor's completions may come back at once.
                cluster.expect_returns(&cell, &extra);
            }
            let me = self.me();
            let (retries, system, retry_on) = self.task_retries(options);
            cluster.submit_remote(
                &me,
                function.name(),
                cell.clone(),
                args,
                &options.resources,
                options.name.as_deref(),
                retries,
                system,
                retry_on,
            );
            crate::cancel::note_child(&cell);
            return (cell, extra);
        }
        let demand = if options.is_default_shape() {
            self.default_demand.clone()
        } else {
            match self.scheduler.resources.demand(&options.resources) {
                Ok(d) => d,
                Err(e) => {
                    let name = options.name.as_deref().unwrap_or(function.name());
                    return failed_returns(
                        returns,
                        self.infeasible(format!("task {name}"), &options.resources, e),
                    );
                }
            }
        };
        let id = self.next_id.fetch_add(returns as u64, Ordering::Relaxed);
        let (retries, _, retry_on) = self.task_retries(options);
        let name = options.name.as_deref().map(Box::from);
        let task = Task::with_returns(
            TaskId::from_u64(id),
            ObjectId::from_u64(id),
            function,
            args,
            demand,
            name,
            (retries, retry_on),
        );
        let result = (task.result.clone(), task.extra.clone());
        if task.resolve_arguments() {
            self.scheduler.push(Job::Task(task));
        }
        result
    }

    /// Creates an actor of class `A`.
    pub(crate) fn create_actor<A: Actor>(
        self: &Arc<Self>,
        args: Vec<Result<ArgSlot, Error>>,
        options: &ActorOptions,
    ) -> ActorHandle<A> {
        self.create_actor_after(args, options, None)
    }

    /// [`RuntimeInner::create_actor`]; in a cluster, with `after` (a pending placement
    /// group's `ready()`), the actor is placed and created once it completes, and calls made
    /// meanwhile wait for it.
    pub(crate) fn create_actor_after<A: Actor>(
        self: &Arc<Self>,
        args: Vec<Result<ArgSlot, Error>>,
        options: &ActorOptions,
        after: Option<Arc<ObjectCell>>,
    ) -> ActorHandle<A> {
        let class: &'static ActorClass = A::CLASS;
        // A name is registered under its key in its namespace (`ActorOptions::name_key`).
        let keyed;
        let options = match options.name_key(&self.config.namespace) {
            Ok(None) => options,
            Ok(key) => {
                keyed = ActorOptions {
                    name: key,
                    namespace: None,
                    ..options.clone()
                };
                &keyed
            }
            Err(e) => return ActorHandle::dead(e),
        };
        let id = ActorId::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed));
        let placement = options.placement();
        if let Some(cluster) = &self.cluster
            && (cluster.is_driver() || self.scheduler.resources.demand(&placement).is_err())
        {
            let cell = Arc::new(ActorCell::new(
                id,
                class,
                options,
                crate::resources::Demand::none(),
            ));
            let handle = ActorHandle::from_raw(RawActorHandle {
                cell: cell.clone(),
                borrow: None,
            });
            let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(a) => a,
                Err(e) => {
                    cell.die(e);
                    return handle;
                }
            };
            let created = Arc::new(ObjectCell::pending(ObjectId::from_u64(id.as_u64()), None));
            cell.set_created(created.clone());
            match after {
                // Placed, created and detached once the group is.
                Some(ready) => cluster.create_actor_remote_after(
                    self,
                    &cell,
                    created.clone(),
                    args,
                    options,
                    ready,
                ),
                None => {
                    if let Err(e) =
                        cluster.create_actor_remote(self, &cell, created.clone(), args, options)
                    {
                        created.complete(Err(e.clone()));
                        cell.die(e);
                        return handle;
                    }
                    if options.detached {
                        cluster.detach_remote(&cell);
                    }
                }
            }
            let weak = Arc::downgrade(&cell);
            let c2 = created.clone();
            let on_created = move || {
                if let (Some(Err(e)), Some(cell)) = (c2.get(), weak.upgrade()) {
                    cell.constructor_failed(e.clone());
                }
            };
            if let Err(crate::object::Waiter::Callback(f)) =
                created.register(crate::object::Waiter::Callback(Box::new(on_created)))
            {
                f();
            }
            lock(&self.actors).insert(id, Arc::downgrade(&cell));
            if let Some(name) = options.name.clone() {
                // A detached actor is held by the owner's name table until it is killed; any
                // other dies with its last handle (its drop kills it; `die` unnames it).
                let old = lock(&self.named).insert(name, Named::new(&cell, options.detached));
                drop(old);
            } else if options.detached {
                lock(&self.unnamed_detached).insert(id, cell.clone());
            }
            return handle;
        }
        // Placed here only if this node could place it (a default actor needs a CPU), then
        // holding what it asked for.
        let demand = self
            .scheduler
            .resources
            .demand(&placement)
            .map_err(|e| (e, &placement))
            .and_then(|_| {
                self.scheduler
                    .resources
                    .demand(&options.resources)
                    .map_err(|e| (e, &options.resources))
            });
        let (demand, early_death) = match demand {
            Ok(d) => (d, None),
            Err((e, request)) => (
                crate::resources::Demand::none(),
                Some(self.infeasible(format!("actor {}", class.name()), request, e)),
            ),
        };
        let cell = Arc::new(ActorCell::new(id, class, options, demand));
        let handle = ActorHandle::from_raw(RawActorHandle {
            cell: cell.clone(),
            borrow: None,
        });
        let args = match args.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(a) => a,
            Err(e) => {
                cell.die(e);
                return handle;
            }
        };
        if let Some(e) = early_death {
            cell.die(e);
            return handle;
        }
        // A worker process hosts it: into the cluster's directory, so its handle works in
        // every process.
        if let Some(cluster) = &self.cluster
            && let Err(e) = cluster.register_hosted_actor(id.as_u64(), class.name())
        {
            cell.die(e);
            return handle;
        }
        if let Some(name) = options.name.clone() {
            let mut named = lock(&self.named);
            // Every cell reference taken under the lock is dropped after it: a last
            // reference's drop unnames the actor, which takes the lock again.
            let existing = named.get(&name).and_then(|n| n.weak.upgrade());
            if existing.as_ref().is_some_and(|a| !a.is_dead()) {
                drop(named);
                drop(existing);
                cell.die(Error::ActorNameTaken {
                    name: display_name(&name),
                });
                return handle;
            }
            let old = named.insert(name, Named::new(&cell, options.detached));
            drop(named);
            drop((old, existing));
        }
        if options.detached && options.name.is_none() {
            lock(&self.unnamed_detached).insert(id, cell.clone());
        }
        lock(&self.actors).insert(id, Arc::downgrade(&cell));
        self.start_actor(cell, args);
        handle
    }

    /// Submits the task that runs an actor's constructor.
    pub(crate) fn start_actor(&self, cell: Arc<ActorCell>, args: Vec<ArgSlot>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = Task::new(
            TaskId::from_u64(id),
            ObjectId::from_u64(id),
            TaskBody::CreateActor(cell.clone()),
            args.into_boxed_slice(),
            cell.demand().clone(),
            None,
            (0, None),
        );
        cell.set_created(task.result.clone());
        if task.resolve_arguments() {
            self.scheduler.push(Job::Task(task));
        }
    }

    pub(crate) fn lookup_actor(&self, id: ActorId) -> Result<Arc<ActorCell>, Error> {
        if let Some(cell) = lock(&self.actors).get(&id).and_then(Weak::upgrade) {
            return Ok(cell);
        }
        if let Some(cell) = lock(&self.pushed_actors).get(&id) {
            return Ok(cell.clone());
        }
        if let Some(cluster) = &self.cluster {
            let info = cluster.locate_actor(id.as_u64(), "")?;
            return self.actor_proxy(cluster, &info);
        }
        Err(Error::ActorDied {
            actor: id,
            class: "?".into(),
            reason: "no handle to it is left".into(),
        })
    }

    /// A handle to actor `id` being deserialised here: its cell and, in a cluster where
    /// another process owns the actor, this process's borrow of it (registered with the owner
    /// before the decode returns; `cluster/borrow.rs`).
    pub(crate) fn actor_handle(&self, id: ActorId) -> Result<RawActorHandle, Error> {
        let cell = self.lookup_actor(id)?;
        let borrow = self.actor_borrow(id);
        Ok(RawActorHandle { cell, borrow })
    }

    /// In a cluster, where another process owns actor `id`: this process's borrow of it
    /// (registered with the owner before it returns; `cluster/borrow.rs`).
    pub(crate) fn actor_borrow(&self, id: ActorId) -> Option<Arc<dyn RemoteValue>> {
        match &self.cluster {
            Some(c) if !c.owns(id.as_u64()) => Some(c.borrow_actor(id)),
            _ => None,
        }
    }

    /// A live actor this process created (its own cell or its proxy), by id.
    pub(crate) fn owned_actor(&self, id: ActorId) -> Option<Arc<ActorCell>> {
        lock(&self.actors).get(&id).and_then(Weak::upgrade)
    }

    /// A local proxy cell for an actor another process hosts.
    fn actor_proxy(
        &self,
        cluster: &Arc<dyn Remote>,
        info: &ActorLocation,
    ) -> Result<Arc<ActorCell>, Error> {
        let class =
            crate::actor::class_by_name(&info.class_name).ok_or_else(|| Error::Cluster {
                what: format!("actor {:#x}", info.actor_id),
                message: format!("class {} is not in this binary", info.class_name),
            })?;
        let id = ActorId::from_u64(info.actor_id);
        let cell = Arc::new(ActorCell::new(
            id,
            class,
            &ActorOptions::default(),
            crate::resources::Demand::none(),
        ));
        cell.set_remote(cluster.actor_at(info.worker));
        if info.restarting {
            // Its owner is restarting it: calls wait until it is back.
            cluster.follow_restart(&cell, info.worker);
        }
        let created = Arc::new(ObjectCell::ready(
            ObjectId::from_u64(info.actor_id),
            crate::codec::encode(&()),
        ));
        cell.set_created(created);
        lock(&self.actors).insert(id, Arc::downgrade(&cell));
        Ok(cell)
    }

    /// This runtime as an `Arc` (it is always reached through one).
    fn me(&self) -> Arc<RuntimeInner> {
        current_inner().expect("a runtime submitting work is the current one")
    }

    /// An escaped cell by id, if alive.
    pub(crate) fn lookup_escaped(&self, id: ObjectId) -> Option<Arc<ObjectCell>> {
        lock(&self.escaped).get(&id).and_then(Weak::upgrade)
    }

    /// Runs a task a remote owner pushed here (its result cells keep the owner's ids): its
    /// first return and, for `num_returns > 1`, the others (empty if it failed at once).
    pub(crate) fn submit_pushed(
        &self,
        task_id: u64,
        function: &str,
        args: Vec<ArgSlot>,
        request: &crate::resources::ResourceRequest,
        name: Option<String>,
        retries: (u32, RetryOn),
    ) -> (Arc<ObjectCell>, Box<[Arc<ObjectCell>]>) {
        let Some(function) = crate::task::function_by_name(function) else {
            let e = Error::Cluster {
                what: format!("task {function}"),
                message: "no such remote function in this binary".into(),
            };
            return (
                Arc::new(ObjectCell::ready(ObjectId::from_u64(task_id), Err(e))),
                Box::new([]),
            );
        };
        let demand = match self.scheduler.resources.demand(request) {
            Ok(d) => d,
            Err(e) => {
                let e = self.infeasible(format!("task {}", function.name()), request, e);
                return (
                    Arc::new(ObjectCell::ready(ObjectId::from_u64(task_id), Err(e))),
                    Box::new([]),
                );
            }
        };
        let task = if function.num_returns() == 1 {
            Task::new(
                TaskId::from_u64(task_id),
                ObjectId::from_u64(task_id),
                TaskBody::Function(function),
                args.into_boxed_slice(),
                demand,
                name.map(Box::from),
                retries.clone(),
            )
        } else {
            Task::with_returns(
                TaskId::from_u64(task_id),
                ObjectId::from_u64(task_id),
                function,
                args.into_boxed_slice(),
                demand,
                name.map(Box::from),
                retries.clone(),
            )
        };
        let result = (task.result.clone(), task.extra.clone());
        if task.resolve_arguments() {
            self.scheduler.push(Job::Task(task));
        }
        result
    }

    /// Creates an actor a remote owner asked for; returns the cell completed when its
    /// constructor has run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_pushed_actor(
        &self,
        actor_id: u64,
        class_name: &str,
        args: Vec<ArgSlot>,
        request: &crate::resources::ResourceRequest,
        name: &str,
        max_concurrency: usize,
        max_restarts: u32,
        rank: Option<crate::placement_group::Rank>,
        retries: crate::remote::ActorRetries,
    ) -> Arc<ObjectCell> {
        let fail = |e: Error| Arc::new(ObjectCell::ready(ObjectId::from_u64(actor_id), Err(e)));
        let Some(class) = crate::actor::class_by_name(class_name) else {
            return fail(Error::Cluster {
                what: format!("actor class {class_name}"),
                message: "not in this binary".into(),
            });
        };
        let demand = match self.scheduler.resources.demand(request) {
            Ok(d) => d,
            Err(e) => return fail(self.infeasible(format!("actor {class_name}"), request, e)),
        };
        let mut options = ActorOptions::default()
            .max_concurrency(max_concurrency)
            .max_restarts(max_restarts);
        if !name.is_empty() {
            options = options.name(name.to_owned());
        }
        options.rank = rank;
        retries.apply(&mut options);
        let id = ActorId::from_u64(actor_id);
        let cell = Arc::new(ActorCell::new(id, class, &options, demand));
        lock(&self.pushed_actors).insert(id, cell.clone());
        self.start_actor(cell.clone(), args);
        cell.created_cell().unwrap_or_else(|| fail(Error::ShutDown))
    }

    /// A call a remote caller made on an actor hosted here.
    pub(crate) fn call_pushed(
        &self,
        actor_id: u64,
        call_id: u64,
        method: &str,
        args: Vec<ArgSlot>,
    ) -> Arc<ObjectCell> {
        let fail = |e: Error| Arc::new(ObjectCell::ready(ObjectId::from_u64(call_id), Err(e)));
        let Some(method) = crate::actor::method_by_name(method) else {
            return fail(Error::Cluster {
                what: format!("actor method {method}"),
                message: "not in this binary".into(),
            });
        };
        let cell = self.hosted_actor(ActorId::from_u64(actor_id));
        let Some(cell) = cell else {
            let id = ActorId::from_u64(actor_id);
            if let Some((_, why)) = lock(&self.buried).iter().find(|(a, _)| *a == id) {
                return fail(why.clone());
            }
            return fail(Error::ActorDied {
                actor: ActorId::from_u64(actor_id),
                class: "?".into(),
                reason: "it is not hosted by this worker (killed or never created)".into(),
            });
        };
        cell.call_with_id(method, args, ObjectId::from_u64(call_id))
    }

    /// An actor this process hosts: for a remote owner, or created here by this worker
    /// process itself (a proxy of an actor hosted elsewhere is not one).
    fn hosted_actor(&self, id: ActorId) -> Option<Arc<ActorCell>> {
        if let Some(cell) = lock(&self.pushed_actors).get(&id) {
            return Some(cell.clone());
        }
        lock(&self.actors)
            .get(&id)
            .and_then(Weak::upgrade)
            .filter(|c| !c.is_remote())
    }

    /// Kills an actor hosted here (for a remote owner, or created here); returns the cell of
    /// an actor it killed for good (not restarted).
    pub(crate) fn kill_pushed(
        self: &Arc<Self>,
        actor_id: u64,
        restart: bool,
    ) -> Option<Arc<ActorCell>> {
        let id = ActorId::from_u64(actor_id);
        let cell = if restart {
            self.hosted_actor(id)
        } else {
            lock(&self.pushed_actors)
                .remove(&id)
                .or_else(|| self.hosted_actor(id))
        };
        let cell = cell?;
        (cell.kill(restart, self) && !restart).then_some(cell)
    }

    /// Actor `cell` ended itself (`exit_actor`): a worker stops hosting it and records its
    /// death in the cluster's directory, which frees its name there.
    pub(crate) fn actor_exited(&self, cell: &ActorCell) {
        let hosted = lock(&self.pushed_actors).remove(&cell.id());
        if hosted.is_some()
            && let Some(c) = &self.cluster
        {
            c.record_actor_death(cell, "it called manta::exit_actor");
        }
    }

    /// Remembers why actor `cell`, hosted here for a remote owner, died (the latest
    /// `BURIED` deaths are kept).
    pub(crate) fn bury(&self, cell: &ActorCell, why: Error) {
        let mut buried = lock(&self.buried);
        if buried.len() >= BURIED {
            buried.pop_front();
        }
        buried.push_back((cell.id(), why));
    }

    /// Whether this worker hosts actor `id` for a remote owner.
    pub(crate) fn hosts_actor(&self, id: ActorId) -> bool {
        lock(&self.pushed_actors).contains_key(&id)
    }

    /// The actors this worker hosts for remote owners.
    pub(crate) fn hosted_actors(&self) -> Vec<ActorId> {
        lock(&self.pushed_actors).keys().copied().collect()
    }

    /// Drops this host's hold on an actor it hosts for a remote owner (no handle to it is
    /// left): it goes when the calls already submitted to it are done.
    pub(crate) fn release_pushed(&self, actor_id: u64) -> Option<Arc<ActorCell>> {
        lock(&self.pushed_actors).remove(&ActorId::from_u64(actor_id))
    }

    pub(crate) fn forget_actor(&self, id: ActorId) {
        lock(&self.actors).remove(&id);
    }

    /// An actor died: a detached one without a name is no longer held.
    pub(crate) fn release_detached(&self, id: ActorId) {
        let held = lock(&self.unnamed_detached).remove(&id);
        // Dropped outside the lock (it may be the last reference).
        drop(held);
    }

    pub(crate) fn unname_actor(&self, name: &str, id: ActorId) {
        let mut named = lock(&self.named);
        let gone = if named.get(name).is_some_and(|a| a.id == id) {
            named.remove(name)
        } else {
            None
        };
        // Dropped outside the lock (it may hold the actor's last reference).
        drop(named);
        drop(gone);
    }

    pub(crate) fn named_actor(&self, name: &str) -> Option<Arc<ActorCell>> {
        // Upgraded under the lock, dropped (if dead) after it: see `create_actor`.
        let cell = lock(&self.named).get(name).and_then(|a| a.weak.upgrade());
        cell.filter(|a| !a.is_dead())
    }

    /// A live named actor: this process's, or (in a cluster) the GCS directory's.
    pub(crate) fn named_actor_anywhere(&self, name: &str) -> Result<Option<Arc<ActorCell>>, Error> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.named_actor(name));
        };
        if let Some(cell) = self.named_actor(name) {
            if cell.remote().is_none() {
                return Ok(Some(cell));
            }
            // Another process may have killed it (`manta::kill` through a handle it looked
            // up): the GCS's directory has the last word.
            match cluster.locate_actor(0, name) {
                Ok(info) if info.actor_id == cell.id().as_u64() => return Ok(Some(cell)),
                Ok(_) | Err(Error::ActorNotFound { .. }) => {
                    cluster.release_actor_load(cell.id().as_u64());
                    cell.die(Error::ActorDied {
                        actor: cell.id(),
                        class: cell.class_name().to_owned(),
                        reason: "killed by manta::kill in another process".into(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        match cluster.locate_actor(0, name) {
            Ok(info) => {
                let id = ActorId::from_u64(info.actor_id);
                if let Some(cell) = lock(&self.actors).get(&id).and_then(Weak::upgrade) {
                    return Ok(Some(cell));
                }
                if let Some(cell) = lock(&self.pushed_actors).get(&id) {
                    return Ok(Some(cell.clone()));
                }
                self.actor_proxy(cluster, &info).map(Some)
            }
            Err(Error::ActorNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn actor_count(&self) -> usize {
        lock(&self.actors).len()
    }
}

/// A registered name key as users wrote it: `namespace/name`, or the name alone in the default
/// namespace.
pub(crate) fn display_name(key: &str) -> String {
    key.replace(crate::actor::NAMESPACE_SEPARATOR, "/")
}

/// `n` return objects failed with `error` (a submission that failed before it was made).
fn failed_returns(n: usize, error: Error) -> (Arc<ObjectCell>, Box<[Arc<ObjectCell>]>) {
    let cell = || Arc::new(ObjectCell::ready(ObjectId::from_u64(0), Err(error.clone())));
    (cell(), (1..n).map(|_| cell()).collect())
}

/// Blocks until `cell` completes (or `deadline`), using the current runtime's scheduler.
#[inline]
pub(crate) fn wait_cell(cell: &Arc<ObjectCell>, deadline: Option<Instant>) -> Result<(), Error> {
    crate::cancel::check()?;
    if cell.is_ready() {
        return Ok(());
    }
    wait_pending(cell, deadline)
}

/// [`wait_cell`] of a cell not complete yet (out of line: a `get` of a ready value skips it).
#[inline(never)]
fn wait_pending(cell: &Arc<ObjectCell>, deadline: Option<Instant>) -> Result<(), Error> {
    let rt = with_current(|rt| rt.clone())?;
    rt.scheduler.wait_for(cell, deadline)
}

/// Queues a task whose arguments just became ready.
pub(crate) fn enqueue_ready(task: Arc<Task>) {
    if let Err(job) = with_current(|rt| rt.scheduler.push(Job::Task(task.clone()))) {
        tracing::debug!("dropping {task:?}: {job}");
        fail_job(Job::Task(task));
    }
}

/// The current runtime's inline threshold (`usize::MAX` without a runtime: all inline).
pub(crate) fn max_inline_object_bytes() -> usize {
    with_current(|rt| rt.config.max_inline_object_bytes).unwrap_or(usize::MAX)
}

/// The current runtime's object store, if there is a runtime and it has one.
pub(crate) fn object_store() -> Option<Arc<ObjectStore>> {
    with_current(|rt| rt.store.clone()).ok().flatten()
}

/// Stores `value` under `key` in the key-value store (Ray's internal KV), replacing any old
/// value; returns whether there was one. In a cluster the store is the GCS's, shared by every
/// process of the cluster; embedded, it is an in-process map with the same semantics, shared
/// by every task and actor of the runtime and emptied by `shutdown`.
pub(crate) fn kv_put(key: &str, value: &[u8]) -> Result<bool, Error> {
    let rt = current_inner().ok_or(Error::NotInitialized)?;
    match rt.cluster.clone() {
        Some(c) => c.kv_put(key, value),
        None => Ok(lock(&rt.kv)
            .insert(key.to_owned(), value.to_vec())
            .is_some()),
    }
}

/// The value stored under `key` in the key-value store (see [`kv_put`]), if any.
pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    let rt = current_inner().ok_or(Error::NotInitialized)?;
    match rt.cluster.clone() {
        Some(c) => c.kv_get(key),
        None => Ok(lock(&rt.kv).get(key).cloned()),
    }
}

/// Resolves a deserialised object reference.
pub(crate) fn resolve_escaped(id: ObjectId) -> Result<Arc<ObjectCell>, Error> {
    with_current(|rt| {
        if let Some(cell) = lock(&rt.escaped).get(&id).and_then(Weak::upgrade) {
            return Some(cell);
        }
        match &rt.cluster {
            Some(c) if !c.owns(id.as_u64()) => Some(c.borrow(id)),
            _ => None,
        }
    })?
    .ok_or(Error::ObjectFreed { object: id })
}
