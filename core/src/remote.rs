//! The seam between the local runtime and the cluster: the one way the runtime reaches
//! other processes.
//!
//! The local runtime (runtime, objects, codec, actors, tasks, scheduler, placement groups,
//! collectives) never names `cluster`. It holds what it needs through the types defined here,
//! which `cluster` implements:
//!
//! - [`Remote`]: this process's membership in a cluster (Ray's core worker, seen from the
//!   runtime). `RuntimeInner::cluster` is an `Option<Arc<dyn Remote>>`: `None` embedded.
//! - [`RemoteValue`]: an object held by another process, pulled on first read
//!   (`Payload::Remote`).
//! - [`ActorPlace`]: where an actor another process hosts lives, held by its proxy cell.
//! - [`DecodeScope`]: the borrow registration around one decode, through a hook the cluster
//!   installs when the process joins ([`set_borrow_hook`]).
//!
//! Only [`join`] names `cluster`: it is where a process becomes a member. So the import graph
//! has one direction: `cluster` depends on the runtime, the runtime on this module alone.
//! `scripts/check-layering` keeps it so.
//!
//! The cost: a call through `dyn Remote` is an indirect call, made only in a cluster (the
//! embedded runtime finds `None` and goes on), and never more than once per submission.

use std::any::Any;

use crate::actor::{ActorCell, ActorOptions};
use crate::cancel::CancelOptions;
use crate::config::Resolved;
use crate::error::Error;
use crate::id::{ActorId, ObjectId};
use crate::object::{ObjectCell, Payload};
use crate::placement_group::{PlacementGroupInfo, PlacementStrategy};
use crate::resources::ResourceRequest;
use crate::runtime::RuntimeInner;
use crate::sync::{Arc, AtomicBool, OnceLock, Ordering};
use crate::task::ArgSlot;

/// This process's membership in a cluster, as the local runtime uses it.
///
/// Every method is the runtime asking the cluster to do something for it; the cluster calls
/// back into the runtime through `RuntimeInner` (never through this trait).
pub(crate) trait Remote: Send + Sync + std::fmt::Debug {
    // ----- identity ---------------------------------------------------------------------

    /// Whether this process runs no work of its own (a driver).
    fn is_driver(&self) -> bool;
    /// Whether this process created (and so owns) object or actor `id`.
    fn owns(&self, id: u64) -> bool;
    /// The first id this process hands out.
    fn first_id(&self) -> u64;
    /// The node this process works on (`None` for a driver).
    fn node_id(&self) -> Option<u64>;
    /// The GCS's address.
    fn gcs_address(&self) -> &str;
    /// This process's address (`ip:port`).
    fn address(&self) -> &str;
    /// The cluster's token.
    fn token(&self) -> &str;

    // ----- lifetime ---------------------------------------------------------------------

    /// Gives the cluster its runtime (right after the runtime is made).
    fn set_runtime(&self, rt: &Arc<RuntimeInner>);
    /// The node's shared arena, when its raylet has one.
    fn node_arena(&self) -> Option<manta_store::NodeClient>;
    /// A worker process: serves until told to stop, then exits.
    fn serve_as_worker(&self) -> !;
    /// Leaves the cluster (at `shutdown`): closes connections, fails what is in flight.
    fn leave(&self);

    // ----- tasks ------------------------------------------------------------------------

    /// Runs task `function` on another process; its result completes `cell`.
    #[allow(clippy::too_many_arguments)]
    fn submit_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        function: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_retries: u32,
        max_system_retries: u32,
        retry_on: crate::task::RetryOn,
    );
    /// The other returns of a task with several, before it is pushed.
    fn expect_returns(&self, first: &Arc<ObjectCell>, extra: &[Arc<ObjectCell>]);
    /// Cancels the work this process owns whose result is `cell`, if it runs elsewhere;
    /// returns whether it did.
    fn cancel_remote(&self, cell: &Arc<ObjectCell>, options: CancelOptions) -> bool;

    // ----- actors -----------------------------------------------------------------------

    /// Creates actor `actor` in another process; `created` completes when it is up.
    fn create_actor_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
    ) -> Result<(), Error>;
    /// Creates actor `actor` in another process once `ready` (its placement group's, pending
    /// now) completes; calls made meanwhile wait for it.
    fn create_actor_remote_after(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
        ready: Arc<ObjectCell>,
    );
    /// Marks a remote actor detached at its host.
    fn detach_remote(&self, cell: &ActorCell);
    /// Lists an actor this worker hosts in the cluster's directory.
    fn register_hosted_actor(&self, actor_id: u64, class: &str) -> Result<(), Error>;
    /// Records the death of an actor this worker hosts.
    fn hosted_actor_died(&self, actor_id: u64, class: &str, death: &str);
    /// Records that hosted actor `cell` ended itself.
    fn record_actor_death(&self, cell: &ActorCell, reason: &str);
    /// Calls `method` of the remote actor `actor` at `place`; its result completes `cell`.
    /// `borrow` (this process's borrow of the actor, if any) lives until the call is done.
    fn call_remote(
        &self,
        actor: &Arc<ActorCell>,
        borrow: Option<&Arc<dyn RemoteValue>>,
        place: &dyn ActorPlace,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
    );
    /// Calls `method` with `args` on every actor of `members` (each hosted by another
    /// process) as one message relayed by their workers as a tree; their results in order,
    /// or `None` where it cannot (then each member is called on its own).
    fn group_call(
        &self,
        members: &[&crate::actor::RawActorHandle],
        method: &'static str,
        args: &[ArgSlot],
    ) -> Option<Vec<Arc<ObjectCell>>>;
    /// Where actor `actor_id` (or, with id 0, the actor named `name`) lives.
    fn locate_actor(&self, actor_id: u64, name: &str) -> Result<ActorLocation, Error>;
    /// The place of an actor hosted by worker `worker`.
    fn actor_at(&self, worker: u64) -> Arc<dyn ActorPlace>;
    /// Proxy `cell`'s actor is restarting: its calls wait until it is back at a worker
    /// other than `old`.
    fn follow_restart(&self, cell: &Arc<ActorCell>, old: u64);
    /// The owner's last handle on the actor at `place` went away.
    fn release_remote(&self, place: &dyn ActorPlace, actor_id: u64);
    /// Gives back the placement load actor `actor_id`'s creation counted.
    fn release_actor_load(&self, actor_id: u64);
    /// Kills actor `actor_id` hosted here for another process; returns whether it was alive.
    fn kill_hosted(&self, actor_id: u64) -> bool;
    /// Kills (or, with `restart`, restarts at its host) the remote actor at `place`.
    fn kill_remote(&self, place: &dyn ActorPlace, actor_id: u64, restart: bool);
    /// Restarts the remote actor of proxy `cell`; returns whether it will.
    fn restart_remote(&self, cell: &Arc<ActorCell>, place: &dyn ActorPlace) -> bool;
    /// Fails the calls in flight to actor `actor_id` with `error`.
    fn fail_calls_to(&self, actor_id: u64, error: &Error);
    /// Records in the directory that actor `actor_id` was killed.
    fn record_killed_actor(&self, actor_id: u64, class_name: &str, worker: u64);
    /// The node of worker `index`, as this process knows it.
    fn node_of_worker(&self, index: u64) -> Option<u64>;

    // ----- objects ----------------------------------------------------------------------

    /// A reference to object `id`, owned by another process, deserialised here: a cell
    /// whose value is pulled on first read, registered with the owner as borrowed.
    fn borrow(&self, id: ObjectId) -> Arc<ObjectCell>;
    /// This process's borrow of actor `id`, owned by another process.
    fn borrow_actor(&self, id: ActorId) -> Arc<dyn RemoteValue>;

    // ----- key-value store, placement groups --------------------------------------------

    /// Stores `value` under `key` in the GCS's key-value store; returns whether it replaced
    /// a value.
    fn kv_put(&self, key: &str, value: &[u8]) -> Result<bool, Error>;
    /// The value under `key` in the GCS's key-value store.
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Asks the GCS to place a group: `Ok` once it is listed (pending).
    fn pg_create(&self, group: GroupRequest<'_>) -> Result<(), Error>;
    /// Removes group `pg_id` at the GCS and from the workers that hold its bundles.
    fn pg_remove(&self, pg_id: u64, workers: &[u64]) -> Result<(), Error>;
    /// Every placement group the GCS knows.
    fn pg_list(&self) -> Result<Vec<PlacementGroupInfo>, Error>;
    /// Follows group `pg_id` (a handle to it arrived here, its owner is elsewhere): returns it
    /// as it stands (state `Removed` if the GCS knows no such group); its later changes come
    /// as notices ([`crate::placement_group`]'s `follow`).
    fn pg_watch(&self, pg_id: u64) -> Result<PlacementGroupInfo, Error>;
}

/// A placement group to create in the cluster.
#[derive(Debug)]
pub(crate) struct GroupRequest<'a> {
    pub(crate) pg_id: u64,
    pub(crate) name: Option<&'a str>,
    pub(crate) strategy: PlacementStrategy,
    pub(crate) detached: bool,
    /// Each bundle's `(resource, amount)` entries.
    pub(crate) bundles: &'a [Vec<(String, f64)>],
}

/// Where the cluster's directory says an actor is.
#[derive(Clone, Debug)]
pub(crate) struct ActorLocation {
    pub(crate) actor_id: u64,
    pub(crate) class_name: String,
    /// The worker hosting it.
    pub(crate) worker: u64,
    /// Its worker died and its owner is starting it again.
    pub(crate) restarting: bool,
}

/// An object held by another worker process (or a borrow of one owned there): its bytes are
/// pulled into this process on first read. Dropping the last handle tells the other side.
pub(crate) trait RemoteValue: Any + Send + Sync + std::fmt::Debug {
    /// The object's id.
    fn id(&self) -> u64;
    /// The worker that holds it (or, borrowed, its owner, which redirects a pull).
    fn holder(&self) -> u64;
    /// The encoding's length in bytes.
    fn size(&self) -> u64;
    /// The bytes, pulled from the holder on first call.
    fn fetch(&self) -> Result<Payload, Error>;
    /// The local copy, if it was already pulled.
    fn local_copy(&self) -> Option<Payload>;
}

/// Where an actor another process hosts lives, as its proxy cell holds it. The cluster's
/// type behind it is opaque here; the cluster gets it back with [`Any`] (`as &dyn Any`).
pub(crate) trait ActorPlace: Any + Send + Sync + std::fmt::Debug {
    /// The hosting worker, unless the actor is restarting.
    fn worker(&self) -> Option<u64>;
}

/// Joins the cluster the configuration (or a raylet's environment) names, if any.
///
/// The one place the local runtime's side names `cluster`: where a process becomes a member.
pub(crate) fn join(config: &mut Resolved) -> Result<Option<Arc<dyn Remote>>, Error> {
    Ok(crate::cluster::join_from_env(config)?.map(|c| c as Arc<dyn Remote>))
}

/// This host and network namespace (`<boot id>/net:[<inode>]`): processes with equal ids can
/// meet over shared memory.
pub(crate) fn host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let net = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}/{net}", boot.trim())
}

// ----- borrow registration around a decode ---------------------------------------------

/// What decoding a value needs from the cluster: references owned by other processes met
/// while decoding are noted by the cluster (`cluster/borrow.rs`, "Borrowers") and registered
/// with their owners when the decode ends, before the value reaches its reader.
pub(crate) trait BorrowHook: Send + Sync {
    /// A decode that began with `start` borrows noted on this thread ends with more noted:
    /// register those past `start`.
    fn finish(&self, start: usize);
}

/// The hook, installed when this process joins a cluster.
static BORROW_HOOK: OnceLock<&'static dyn BorrowHook> = OnceLock::new();

/// Whether a hook is installed: only then can a decode meet a reference owned by another
/// process, so only then does a decode open a scope (one relaxed load otherwise).
static MAY_BORROW: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Decodes under way on this thread (nested: a value decoded while decoding another) and
    /// the number of borrows the cluster noted during them. No destructor: the cheapest kind
    /// of thread-local, and a decode that meets no reference touches nothing else.
    static SCOPES: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Installs the cluster's borrow hook (once per process; later calls change nothing).
pub(crate) fn set_borrow_hook(hook: &'static dyn BorrowHook) {
    let _ = BORROW_HOOK.set(hook);
    MAY_BORROW.store(true, Ordering::Release);
}

/// Whether this thread is decoding (a borrow noted now waits for the decode's end).
pub(crate) fn decoding() -> bool {
    SCOPES.with(|s| s.get().0 > 0)
}

/// The cluster noted a borrow: `len` are noted on this thread in all.
pub(crate) fn set_noted(len: usize) {
    SCOPES.with(|s| s.set((s.get().0, len)));
}

/// The borrow registration around one decode: begun before a value is deserialised, ended
/// (and the borrows noted during it registered) when dropped. A decode that meets no
/// reference makes no call into the cluster.
#[derive(Debug)]
pub(crate) struct DecodeScope {
    /// The number of borrows noted on this thread when the decode began.
    start: usize,
}

impl DecodeScope {
    /// A scope for one decode; `None` in a process that never joined a cluster.
    #[inline]
    pub(crate) fn begin() -> Option<DecodeScope> {
        if !MAY_BORROW.load(Ordering::Relaxed) {
            return None;
        }
        let start = SCOPES.with(|s| {
            let (depth, len) = s.get();
            s.set((depth + 1, len));
            len
        });
        Some(DecodeScope { start })
    }
}

impl Drop for DecodeScope {
    fn drop(&mut self) {
        let len = SCOPES.with(|s| {
            let (depth, len) = s.get();
            s.set((depth.saturating_sub(1), len.min(self.start)));
            len
        });
        if len > self.start
            && let Some(hook) = BORROW_HOOK.get()
        {
            hook.finish(self.start);
        }
    }
}

/// An actor's retries of its calls after a panic, as `CreateActor` carries them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ActorRetries {
    /// `ActorOptions::max_task_retries`.
    pub(crate) max_task_retries: u32,
    /// Whether `retry_exceptions` is set.
    pub(crate) retry_exceptions: bool,
    /// The typed panics it covers (empty: all).
    pub(crate) retry_on: Vec<String>,
}

impl ActorRetries {
    /// What `options` say.
    pub(crate) fn of(options: &crate::actor::ActorOptions) -> ActorRetries {
        ActorRetries {
            max_task_retries: options.max_task_retries,
            retry_exceptions: options.retry_exceptions.is_some(),
            retry_on: options
                .retry_exceptions
                .iter()
                .flatten()
                .flat_map(|types| types.iter().map(|t| t.to_string()))
                .collect(),
        }
    }

    /// Sets them on `options` (the host's copy of the actor's).
    pub(crate) fn apply(self, options: &mut crate::actor::ActorOptions) {
        options.max_task_retries = self.max_task_retries;
        options.retry_exceptions = self.retry_exceptions.then(|| {
            (!self.retry_on.is_empty()).then(|| self.retry_on.into_iter().map(Box::from).collect())
        });
    }
}
