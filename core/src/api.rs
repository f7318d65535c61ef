//! The user-facing calls: `put`, `get`, `wait`, `cancel`, actor lookup and kill, status.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::actor::exit_actor;
use crate::actor::{Actor, ActorHandle, ActorOptions, RawActorHandle};
use crate::codec;
use crate::error::{Error, PutError};
use crate::object::{Latch, ObjectCell, ObjectRef, Waiter};
use crate::runtime::{self, with_current};
use crate::scheduler::Blocked;
use crate::store::ObjectStoreStatus;
use crate::sync::{Arc, Ordering, thread};
use crate::task::{ArgSlot, RemoteFunction, TaskOptions};

/// Stores `value` as an immutable object and returns a reference to it.
///
/// A value whose encoding is larger than `max_inline_object_bytes` is encoded straight into the
/// node's shared-memory object store (vectors of numbers with one `memcpy`). If the store is
/// full, the put waits up to `object_store_put_timeout` for space (spilling, releases), then
/// fails with [`Error::ObjectStoreFull`]. On failure the value is handed back inside the
/// [`PutError`].
pub fn put<T: Serialize + Send + 'static>(value: T) -> Result<ObjectRef<T>, PutError<T>> {
    if let Err(error) = crate::cancel::check() {
        return Err(PutError { value, error });
    }
    let id = match with_current(|rt| rt.next_object_id()) {
        Ok(id) => id,
        Err(error) => return Err(PutError { value, error }),
    };
    match codec::encode(&value) {
        Ok(encoded) => Ok(ObjectRef::from_cell(Arc::new(ObjectCell::ready(
            id,
            Ok(encoded),
        )))),
        Err(error) => Err(PutError {
            value,
            error: error.for_object(id),
        }),
    }
}

/// Stores a copy of `*value` as an immutable object, leaving the caller its value (Ray's
/// `ray.put(x)`, which does not consume `x`): the one copy is the encoding into the object.
/// Fails as [`put`] does, with the error alone since nothing was taken.
pub fn put_ref<T: Serialize + Send + 'static>(value: &T) -> Result<ObjectRef<T>, Error> {
    crate::cancel::check()?;
    let id = with_current(|rt| rt.next_object_id())?;
    let encoded = codec::encode(value).map_err(|e| e.for_object(id))?;
    Ok(ObjectRef::from_cell(Arc::new(ObjectCell::ready(
        id,
        Ok(encoded),
    ))))
}

/// Blocks until the object is available and returns a copy of its value.
pub fn get<T: DeserializeOwned + 'static>(object: &ObjectRef<T>) -> Result<T, Error> {
    object.get()
}

/// Like [`get`], failing with [`Error::Timeout`] after `timeout`.
pub fn get_timeout<T: DeserializeOwned + 'static>(
    object: &ObjectRef<T>,
    timeout: Duration,
) -> Result<T, Error> {
    object.get_timeout(timeout)
}

/// Gets every object, in order. Fails as soon as any object has failed, as Ray's `get` of a
/// list does, without waiting for the objects before it: with the error of the first failed
/// object in the list's order among those complete by then. (A task it waits for that was
/// still queued may run on the calling thread, as in [`get`]; a failure is then seen when that
/// task returns.)
pub fn get_all<T: DeserializeOwned + 'static>(objects: &[ObjectRef<T>]) -> Result<Vec<T>, Error> {
    use crate::object::failures;
    // Listening for failures starts only once this call is about to park, so a `get_all`
    // whose objects complete while it spins or helps costs nothing more (`failures`).
    let listener = std::cell::RefCell::new(None);
    let seen = std::cell::Cell::new(0);
    let found = std::cell::Cell::new(false);
    // Calls of one actor that runs one call at a time complete in order, and a later one
    // cannot fail before an earlier one is done (a kill fails them all): waiting for each in
    // turn loses no failure, and lets this thread drain the actor up to its call (`1:1 actor
    // calls async`), which the failure listener's path does not.
    let serial = objects.first().is_some_and(|first| {
        first
            .cell
            .producer_actor()
            .is_some_and(|a| a.max_concurrency() == 1)
            && objects.iter().all(|o| o.cell.same_actor_call(&first.cell))
    });
    if serial && let Some(actor) = objects.first().and_then(|o| o.cell.producer_actor()) {
        // Drain the actor here up to the last call at once, not call by call (each stop
        // hands the actor back to a slot, and the next wait takes it again), stopping early
        // at the first call that failed. Calls complete in order: `next` only moves forward.
        let next = std::cell::Cell::new(0);
        let done = || {
            let mut i = next.get();
            while let Some(o) = objects.get(i) {
                match o.cell.get() {
                    Some(Ok(_)) => i += 1,
                    Some(Err(_)) => break,
                    None => {
                        next.set(i);
                        return false;
                    }
                }
            }
            next.set(i);
            true
        };
        let rt = with_current(|rt| rt.clone())?;
        rt.scheduler.drain_actor_until(&actor, &done);
    }
    // The next object whose task the injector may hold: tasks are queued in the order they
    // were submitted, which is usually the order of `objects`.
    let ahead = std::cell::Cell::new(0);
    let mut wanted = |cell: &ObjectCell| {
        let from = ahead.get();
        let window = &objects[from..objects.len().min(from + 64)];
        match window.iter().position(|o| std::ptr::eq(&*o.cell, cell)) {
            Some(k) => {
                ahead.set(from + k + 1);
                true
            }
            None => false,
        }
    };
    for (i, o) in objects.iter().enumerate() {
        // Every object before `o` is complete and did not fail.
        let rest = &objects[i + 1..];
        if !serial && !rest.is_empty() && !o.cell.is_ready() {
            ahead.set(ahead.get().max(i));
            with_current(|rt| rt.scheduler.help_wanted(&mut wanted))?;
        }
        loop {
            match o.cell.get() {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(_)) => break,
                None => {}
            }
            if rest.is_empty() || serial {
                runtime::wait_cell(&o.cell, None)?;
                continue;
            }
            let arm = || {
                if listener.borrow().is_none() {
                    *listener.borrow_mut() = Some(failures::Listener::new());
                    seen.set(failures::count());
                    // Failures before listening: once per call.
                    found.set(first_failure(rest).is_some());
                }
            };
            let moved =
                || found.get() || (listener.borrow().is_some() && failures::count() != seen.get());
            let rt = with_current(|rt| rt.clone())?;
            let abort = crate::scheduler::Scheduler::abort_when(&moved, &arm);
            rt.scheduler.wait_for_or(&o.cell, None, Some(abort))?;
            // Some object failed somewhere since we last looked: one of ours?
            let now = failures::count();
            if found.get() || (listener.borrow().is_some() && now != seen.get()) {
                seen.set(now);
                if let Some(e) = first_failure(rest) {
                    return Err(e);
                }
            }
        }
    }
    drop(listener);
    objects.iter().map(ObjectRef::get).collect()
}

/// The error of the first complete, failed object of `objects`, in order.
fn first_failure<T>(objects: &[ObjectRef<T>]) -> Option<Error> {
    objects.iter().find_map(|o| match o.cell.get() {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    })
}

/// `(ready, not_ready)`, as returned by [`wait`].
pub type Split<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `objects` are ready or `timeout` passes, and splits them into
/// `(ready, not_ready)`, each in the input order. `ready` holds at most `num_returns`; a
/// timeout is not an error (Ray's `ray.wait`).
///
/// Fails with [`Error::InvalidArgument`] (as Ray's `ValueError`) when `objects` holds the same
/// object twice, or `num_returns` is 0 or more than `objects.len()`.
pub fn wait<T>(
    objects: Vec<ObjectRef<T>>,
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Split<T>, Error> {
    check_wait(&objects, num_returns)?;
    crate::cancel::check()?;
    let already = objects.iter().filter(|o| o.is_ready()).count();
    if already < num_returns {
        let rt = with_current(|rt| rt.clone())?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let s = &rt.scheduler;
        let _blocked = Blocked::enter(s);
        let enough = || objects.iter().filter(|o| o.is_ready()).count() >= num_returns;
        if !s.spin_until(enough, deadline) {
            // Every object counts once: found ready at registration, or woken later.
            let latch = Latch::new(num_returns);
            for o in &objects {
                if o.cell.register(Waiter::Latch(latch.clone())).is_err() {
                    latch.count_down();
                }
            }
            // A timeout here is not an error: report what is ready.
            let cancelled = crate::cancel::blocking();
            if s.park_until(|| latch.is_done() || cancelled(), deadline)
                .is_err()
                && s.is_shut_down()
            {
                return Err(Error::ShutDown);
            }
            crate::cancel::check()?;
        }
    }
    let mut ready = Vec::with_capacity(num_returns);
    let mut not_ready = Vec::new();
    for o in objects {
        if ready.len() < num_returns && o.is_ready() {
            ready.push(o);
        } else {
            not_ready.push(o);
        }
    }
    Ok((ready, not_ready))
}

/// `wait`'s argument checks (see [`wait`]).
fn check_wait<T>(objects: &[ObjectRef<T>], num_returns: usize) -> Result<(), Error> {
    let invalid = |what: &str, message: String| {
        Err(Error::InvalidArgument {
            what: format!("wait: {what}"),
            message,
        })
    };
    if num_returns == 0 {
        return invalid("num_returns", "must be at least 1".into());
    }
    if num_returns > objects.len() {
        return invalid(
            "num_returns",
            format!(
                "{num_returns} is more than the {} references given",
                objects.len()
            ),
        );
    }
    if objects.len() > 1 {
        // One object is one cell: compare cells, not ids (refs that failed at submit share
        // id 0). Sorted addresses in a reused buffer: no hashing, no allocation per call.
        thread_local! {
            static SEEN: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let duplicate = SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            seen.clear();
            seen.extend(objects.iter().map(|o| Arc::as_ptr(&o.cell) as usize));
            seen.sort_unstable();
            seen.windows(2).any(|w| w[0] == w[1])
        });
        if duplicate {
            return invalid(
                "objects",
                "the same object is given more than once (Ray: the references must be unique)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Cancels the task or actor call producing `object` (Ray's `ray.cancel(ref)`: not forced,
/// recursive); see [`cancel_with`].
pub fn cancel<T>(object: &ObjectRef<T>) -> bool {
    cancel_with(object, CancelOptions::default())
}

/// How [`cancel_with`] cancels (Ray's `ray.cancel(ref, force=..., recursive=...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CancelOptions {
    /// Kill the worker process running the task (cluster only; see [`cancel_with`]).
    pub force: bool,
    /// Cancel the tasks the cancelled task submitted, and theirs, too.
    pub recursive: bool,
}

impl Default for CancelOptions {
    fn default() -> Self {
        CancelOptions {
            force: false,
            recursive: true,
        }
    }
}

impl CancelOptions {
    /// With `force` set or not.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// With `recursive` set or not.
    pub fn recursive(mut self, recursive: bool) -> Self {
        self.recursive = recursive;
        self
    }
}

/// Cancels the task or actor call producing `object`, as `options` say (Ray's
/// `ray.cancel(ref, force, recursive)`). Returns whether it was cancelled: false if the object
/// is complete, is not the result of a task or call this process submitted, or is the result
/// of an actor call already running.
///
/// - A task not yet running never runs. A running task is interrupted: its next Manta call
///   (`get`, `wait`, `put`, submitting a task or calling an actor) returns
///   [`Error::Cancelled`], so it can unwind; a `get` or `wait` it is blocked in returns at
///   once. Its result fails with `Cancelled` at once, and it is not retried.
/// - `recursive` (the default) cancels the tasks it submitted in the same way.
/// - An actor call not yet started never runs; a running one is not interrupted.
/// - `force`: in a cluster, the worker process running the task is ended (every other task
///   and actor of that process fails as if it crashed; a task with retries left runs again).
///   Embedded, and in the worker processes of an `srun`/`mpirun` job (ranks the launcher
///   cannot restart), a thread cannot be killed: force acts as a plain cancel.
///
/// A task whose argument was cancelled fails with `Cancelled` too.
pub fn cancel_with<T>(object: &ObjectRef<T>, options: CancelOptions) -> bool {
    crate::cancel::cancel_cell(&object.cell, options)
}

/// Kills an actor: queued calls fail with [`Error::ActorDied`], its state is dropped, its
/// resources are released and its name freed. Returns whether it was alive.
pub fn kill<A: Actor>(actor: &ActorHandle<A>) -> Result<bool, Error> {
    with_current(|rt| {
        let cell = actor_cell(actor);
        match &rt.cluster {
            // Hosted here for another process: killed here, and its death recorded.
            Some(cluster) if rt.hosts_actor(cell.id()) => cluster.kill_hosted(cell.id().as_u64()),
            _ => cell.kill(false, rt),
        }
    })
}

/// Kills an actor and, if it has restarts left (`max_restarts`), starts it again with its
/// original constructor arguments; calls queued meanwhile run on the new instance.
pub fn restart<A: Actor>(actor: &ActorHandle<A>) -> Result<bool, Error> {
    with_current(|rt| actor_cell(actor).kill(true, rt))
}

fn actor_cell<A: Actor>(actor: &ActorHandle<A>) -> &Arc<crate::actor::ActorCell> {
    let raw: &RawActorHandle = actor.as_raw();
    &raw.cell
}

/// Looks up a live named actor of class `A` in the job's namespace (`Config::namespace`).
/// A named actor that is not detached is found only while a handle to it lives (Ray's rule).
pub fn get_actor<A: Actor>(name: &str) -> Result<ActorHandle<A>, Error> {
    let namespace = with_current(|rt| rt.config.namespace.clone())?;
    get_actor_in(name, &namespace)
}

/// Looks up a live named actor of class `A` in `namespace` (Ray's
/// `ray.get_actor(name, namespace=...)`; `""` is the default namespace).
pub fn get_actor_in<A: Actor>(name: &str, namespace: &str) -> Result<ActorHandle<A>, Error> {
    let key = crate::actor::name_key(namespace, name)?;
    let shown = || crate::runtime::display_name(&key);
    let cell = with_current(|rt| rt.named_actor_anywhere(&key))??
        .ok_or_else(|| Error::ActorNotFound { name: shown() })?;
    if cell.class_name() != A::CLASS.name() {
        return Err(Error::ActorClassMismatch {
            name: shown(),
            wanted: A::CLASS.name().to_string(),
            found: cell.class_name().to_string(),
        });
    }
    // In a process other than the owner the handle is a borrow, registered with the owner
    // like a deserialised one, so it keeps a non-detached actor alive (Ray's rule).
    let borrow = with_current(|rt| rt.actor_borrow(cell.id()))?;
    Ok(ActorHandle::from_raw(RawActorHandle { cell, borrow }))
}

/// A waker that unparks the thread it was made on (for polling futures on a plain thread).
pub(crate) struct ThreadWaker(pub(crate) thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the calling thread (async actor methods and async tasks run
/// this way). While the future waits, the thread counts as blocked, as in `get`.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
        return v;
    }
    let rt = runtime::current_inner();
    let _blocked = rt.as_ref().map(|rt| Blocked::enter(&rt.scheduler));
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// A snapshot of the node's state, for `manta status` and tests.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeStatus {
    /// `(name, available, total)` per resource.
    pub resources: Vec<(String, f64, f64)>,
    /// `(name, available, total)` per resource of a placement group's bundles (reserved:
    /// the total; used: total minus available), named `CPU_group_<i>_<group>` per bundle and
    /// `CPU_group_<group>` for the whole group.
    pub reserved: Vec<(String, f64, f64)>,
    /// Slot threads started (base slots plus those added for blocked tasks).
    pub slots: usize,
    /// Tasks waiting for resources.
    pub pending_tasks: usize,
    /// Tasks completed since start.
    pub finished_tasks: usize,
    /// Actors alive or being created.
    pub actors: usize,
    /// Objects whose references were serialised and are still alive.
    pub escaped_objects: usize,
    /// Time since `init`.
    pub uptime: Duration,
    /// The shared-memory object store (`None` if it could not be created at `init`).
    pub object_store: Option<ObjectStoreStatus>,
    /// The GCS address of the cluster this process joined (`None`: the embedded runtime).
    pub cluster: Option<String>,
    /// The cluster node this process works on (`None`: a driver, or the embedded runtime).
    pub node_id: Option<u64>,
}

/// The current node's status.
pub fn status() -> Result<NodeStatus, Error> {
    with_current(|rt| NodeStatus {
        resources: rt.scheduler.resources.snapshot(),
        reserved: rt.scheduler.resources.dynamic_snapshot(),
        slots: rt.scheduler.num_slots(),
        pending_tasks: rt.scheduler.num_pending(),
        finished_tasks: rt.scheduler.finished.load(Ordering::Relaxed),
        actors: rt.actor_count(),
        escaped_objects: rt.escaped_count(),
        uptime: rt.started.elapsed(),
        object_store: rt.store.as_ref().map(|s| s.status()),
        cluster: rt.cluster.as_ref().map(|c| c.gcs_address().to_owned()),
        node_id: rt.cluster.as_ref().and_then(|c| c.node_id()),
    })
}

/// Submits a task (generated `f::remote` calls this). Options are checked first: a bad one
/// gives a reference that fails with [`Error::InvalidArgument`], and nothing runs.
pub fn submit<R>(
    function: &'static RemoteFunction,
    args: Vec<Result<ArgSlot, Error>>,
    options: &TaskOptions,
) -> ObjectRef<R> {
    if !options.is_default_shape()
        && let Err((option, message)) = options.resources.validate()
    {
        let name = options.name.as_deref().unwrap_or(function.name());
        return ObjectRef::failed(Error::InvalidArgument {
            what: format!("task {name}: {option}"),
            message,
        });
    }
    if let Some(placement) = &options.placement {
        return match in_group(function, options) {
            // In a cluster, work for a group still pending is submitted once it is created
            // (embedded, the scheduler's pending queue holds it).
            Ok(grouped) => with_current(|rt| match placement.group.pending_ready(rt) {
                Some(ready) => rt.submit_after(function, args, &grouped, ready),
                None => rt.submit(function, args, &grouped),
            })
            .unwrap_or_else(ObjectRef::failed),
            Err(e) => ObjectRef::failed(e),
        };
    }
    with_current(|rt| rt.submit(function, args, options)).unwrap_or_else(ObjectRef::failed)
}

/// A task's options with its placement group's bundle in place of its resources.
fn in_group(function: &RemoteFunction, options: &TaskOptions) -> Result<TaskOptions, Error> {
    let Some(placement) = &options.placement else {
        return Ok(options.clone());
    };
    let name = options.name.as_deref().unwrap_or(function.name());
    let resources = placement.group.rewrite(
        &format!("task {name}"),
        &options.resources,
        placement.bundle,
    )?;
    Ok(TaskOptions {
        resources,
        placement: None,
        ..options.clone()
    })
}

/// Submits a task of a function with several returns (generated `f::remote` of a
/// `#[remote(num_returns = N)]` function calls this); [`Returns::next`] hands them out in order.
pub fn submit_returns(
    function: &'static RemoteFunction,
    args: Vec<Result<ArgSlot, Error>>,
    options: &TaskOptions,
) -> Returns {
    let n = function.num_returns();
    let placed = in_group(function, options).and_then(|grouped| match &options.placement {
        Some(p) if with_current(|rt| p.group.pending_ready(rt).is_some())? => {
            Err(p.group.not_created("a task with several returns"))
        }
        _ => Ok(grouped),
    });
    let (first, extra) = placed
        .and_then(|options| with_current(|rt| rt.submit_returns(function, args, &options)))
        .unwrap_or_else(|e| {
            let cell = || {
                Arc::new(ObjectCell::ready(
                    crate::id::ObjectId::from_u64(0),
                    Err(e.clone()),
                ))
            };
            (cell(), (1..n).map(|_| cell()).collect())
        });
    let mut cells = Vec::with_capacity(n);
    cells.push(first);
    cells.extend(extra.into_vec());
    Returns(cells.into_iter())
}

/// The return objects of one call of a function with several returns, in order.
#[derive(Debug)]
pub struct Returns(std::vec::IntoIter<Arc<ObjectCell>>);

impl Returns {
    /// The next return object, typed as the generated code declares it.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T>(&mut self) -> ObjectRef<T> {
        match self.0.next() {
            Some(cell) => ObjectRef::from_cell(cell),
            None => ObjectRef::failed(Error::Cluster {
                what: "a task's returns".into(),
                message: "more returns taken than the function declares".into(),
            }),
        }
    }
}

/// Creates an actor (generated `A::remote` calls this). Options are checked first: with a bad
/// one the handle is dead with [`Error::InvalidArgument`] (its `ready()` and every call give
/// it), and no actor is created.
pub fn create_actor<A: Actor>(
    args: Vec<Result<ArgSlot, Error>>,
    options: &ActorOptions,
) -> ActorHandle<A> {
    if let Err((option, message)) = options.validate() {
        return ActorHandle::dead(Error::InvalidArgument {
            what: format!("actor {}: {option}", A::CLASS.name()),
            message,
        });
    }
    let Some(placement) = member_placement::<A>(options) else {
        return match with_current(|rt| rt.create_actor::<A>(args, options)) {
            Ok(handle) => handle,
            Err(e) => ActorHandle::dead(e),
        };
    };
    let placement = match placement {
        Ok(p) => p,
        Err(e) => return ActorHandle::dead(e),
    };
    let what = format!("actor {}", A::CLASS.name());
    // Without explicit resources an actor in a bundle takes only the bundle's marker (Ray's
    // default actor holds nothing once placed).
    let asked = if options.explicit_resources {
        options.resources.clone()
    } else {
        crate::resources::ResourceRequest::none()
    };
    let resources = match placement.group.rewrite(&what, &asked, placement.bundle) {
        Ok(r) => r,
        Err(e) => return ActorHandle::dead(e),
    };
    let options = ActorOptions {
        resources,
        explicit_resources: true,
        placement: None,
        ..options.clone()
    };
    match with_current(|rt| {
        // In a cluster, an actor for a group still pending is created once the group is
        // (embedded, the scheduler's pending queue holds its constructor).
        let handle = rt.create_actor_after::<A>(args, &options, placement.group.pending_ready(rt));
        placement.group.add_actor(actor_cell(&handle), rt);
        handle
    }) {
        Ok(handle) => handle,
        Err(e) => ActorHandle::dead(e),
    }
}

/// Where an actor goes in its placement group: its own `placement_group` option, or its
/// actor group's bundle (the member's rank); `None` for neither.
fn member_placement<A: Actor>(
    options: &ActorOptions,
) -> Option<Result<crate::placement_group::InGroup, Error>> {
    match (&options.placement, &options.member) {
        (None, None) => None,
        (None, Some(m)) => Some(Ok(crate::placement_group::InGroup {
            group: m.group.clone(),
            bundle: Some(m.rank()),
        })),
        (Some(p), None) => Some(Ok(p.clone())),
        (Some(_), Some(_)) => Some(Err(Error::InvalidArgument {
            what: format!("actor {}: group_member", A::CLASS.name()),
            message: "an actor group's member is placed in its own bundle: \
                      do not also give it a placement_group"
                .into(),
        })),
    }
}
