//! Owning remote work: tasks, actor creations and actor calls this process submits to worker
//! processes (`PushTask`, `CreateActor`, `ActorCall`), their completion (`TaskDone`), and what
//! happens to them when the worker running them dies: a task is retried elsewhere while it
//! has retries, else fails with `WorkerCrashed`; an actor call or creation fails with
//! `ActorDied`; a pull from that worker with `OwnerDied` or `ObjectLost`, and a stored task
//! result lost there is rebuilt from its lineage (`lineage.rs`).

use crate::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::object_manager::{PullDone, RemoteObject};
use super::peer::Peer;
use super::placement::{request_pairs, request_resources};
use super::proto::{Arg, ErrorKind, Msg, Outcome};
use super::supervision::{NewOwned, RemoteActor};
use super::task_manager::Completion;
use super::worker::Cluster;
use super::{call_timeout, cluster_error, wait_reply};
use crate::actor::{ActorCell, ActorOptions};
use crate::error::{Error, TaskError};
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectValue, Payload};
use crate::remote::RemoteValue;
use crate::resources::ResourceRequest;
use crate::runtime::RuntimeInner;
use crate::task::ArgSlot;

/// A task or actor call this process owns that runs elsewhere.
pub(super) struct InFlight {
    pub(super) cell: Arc<ObjectCell>,
    /// The function, method or actor class (for listings).
    pub(super) name: &'static str,
    /// Worker index it was pushed to.
    pub(super) worker: u64,
    /// Node slot it counts against, and what it holds there (released when done).
    pub(super) node: Option<usize>,
    pub(super) load: Vec<(String, f64)>,
    /// Kept alive until the task is done (argument cells the executor may pull).
    pub(super) args: Box<[ArgSlot]>,
    /// How to run a task again elsewhere if its worker dies (tasks only, not actor calls).
    pub(super) retry: Option<Retry>,
    /// What it is to an actor (its creation, or a call), for `supervision.rs`.
    pub(super) actor: Option<ActorFlight>,
    /// An actor call's actor (its proxy cell) and the caller's borrow of it, if any: the
    /// owner releases an actor when its cell goes (and a borrower's registration when its
    /// borrow goes), and Ray lets the calls already submitted finish first.
    pub(super) keep: Option<KeepActor>,
    /// Arguments held here for the executor to pull ([`WireArgs`]), freed when it is done.
    pub(super) held_args: Vec<u64>,
}

/// What keeps an actor alive while a call to it is in flight: its proxy cell, and the
/// caller's registration as a borrower of it, if any.
pub(super) type KeepActor = (Arc<ActorCell>, Option<Arc<dyn RemoteValue>>);

impl InFlight {
    /// The actor this is a call of, if it is one (failed at once when this process kills
    /// the actor).
    pub(super) fn call_of(&self) -> Option<u64> {
        match self.actor {
            Some(ActorFlight::Call { actor_id, .. }) => Some(actor_id),
            _ => None,
        }
    }
}

/// A task's arguments as they go on the wire. Values travel inline in the task's message up
/// to `max_inline_args_bytes` in all (Ray's `task_rpc_inlined_bytes_limit`), so a spec always
/// fits in one transport frame; past that, and for stored values given by value, they are
/// held here under fresh ids (`held`) and pulled by the executor like any argument.
pub(super) struct WireArgs {
    pub(super) args: Vec<Arg>,
    /// Ids held in `Cluster::held` for this task until it is done.
    pub(super) held: Vec<u64>,
    /// Inline bytes still allowed in the message.
    inline_left: usize,
}

/// An actor's creation or call in flight.
pub(super) enum ActorFlight {
    /// The creation of actor `.0` (first, or a restart).
    Create(u64),
    /// A call of `method` on actor `actor_id`, which may run `left` more times if the
    /// actor's worker dies (`max_task_retries`).
    Call {
        actor_id: u64,
        method: &'static str,
        left: u32,
    },
}

/// A task's submission, kept to run it again after its worker process died.
pub(super) struct Retry {
    pub(super) function: &'static str,
    pub(super) request: ResourceRequest,
    pub(super) name: Option<String>,
    /// Retries after an application error, done by the executor (sent with the task).
    pub(super) max_retries: u32,
    /// Which application errors those are for (sent with the task).
    pub(super) retry_on: crate::task::RetryOn,
    /// Retries after a worker death this task may still take, and how many it had.
    pub(super) left: u32,
    pub(super) system: u32,
    /// The cells of its other returns (a task with several, `returns.rs`), while in flight;
    /// taken out when its specification is kept for lineage (`lineage.rs`).
    pub(super) extra: Box<[Arc<ObjectCell>]>,
}

/// The longest pause before retrying a task whose worker died (the first is
/// `task_retry_delay`, doubled at each retry up to this).
const RETRY_DELAY_CAP: Duration = Duration::from_secs(1);

/// The pause before retry number `done + 1` of a task whose worker died.
fn retry_delay(first: Duration, done: u32) -> Duration {
    first
        .checked_mul(1u32 << done.min(16))
        .unwrap_or(RETRY_DELAY_CAP)
        .min(RETRY_DELAY_CAP)
}

impl Cluster {
    /// Turns a task's argument slots into their wire form (see [`WireArgs`]).
    pub(super) fn wire_args(&self, rt: &Arc<RuntimeInner>, slots: &[ArgSlot]) -> WireArgs {
        let mut w = WireArgs {
            args: Vec::with_capacity(slots.len()),
            held: Vec::new(),
            inline_left: rt.config.max_inline_args_bytes,
        };
        for slot in slots {
            let arg = self.wire_arg(rt, slot, &mut w);
            w.args.push(arg);
        }
        w
    }

    /// Turns an argument slot into its wire form, entering local objects in the escape table
    /// so the executor can pull them.
    fn wire_arg(&self, rt: &Arc<RuntimeInner>, slot: &ArgSlot, w: &mut WireArgs) -> Arg {
        match slot {
            ArgSlot::Value(v) => self.value_arg(v, None, w),
            ArgSlot::Ref(cell) => match cell.get() {
                Some(Ok(v)) => self.value_arg(v, Some(cell), w),
                _ => {
                    cell.escape(rt);
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: 0,
                    }
                }
            },
        }
    }

    fn value_arg(&self, v: &ObjectValue, cell: Option<&Arc<ObjectCell>>, w: &mut WireArgs) -> Arg {
        match &v.data {
            Payload::Inline(b)
                if (v.nested.is_empty() || cell.is_none()) && b.len() <= w.inline_left =>
            {
                w.inline_left -= b.len();
                Arg::Inline(b.to_vec())
            }
            // Pulled from its holder; one known dead is asked of this owner, which rebuilds
            // it (`lineage.rs`, step 3). So is one the executor finds dead (`pull_arg`): the
            // owner's cell is entered in the escape table to be found then.
            Payload::Remote(r) if cell.is_none() || !self.placement.is_dead(r.holder()) => {
                if let Some(cell) = cell
                    && super::owner_of(r.id()) == self.index
                    && let Some(rt) = self.runtime()
                {
                    cell.escape(&rt);
                }
                Arg::Ref {
                    object_id: r.id(),
                    holder: r.holder(),
                    len: r.size(),
                }
            }
            _ => match cell {
                Some(cell) => {
                    if let Some(rt) = self.runtime() {
                        cell.escape(&rt);
                    }
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
                // A stored value given by value, or an inline one past the spec's inline
                // budget: held under a fresh id to be pulled, until the task is done.
                None => {
                    let id = self
                        .runtime()
                        .map(|rt| rt.next_object_id().as_u64())
                        .unwrap_or(0);
                    self.objects.hold(id, v.clone());
                    w.held.push(id);
                    Arg::Ref {
                        object_id: id,
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
            },
        }
    }

    /// Frees the arguments held for a task that is done (or whose worker is gone).
    pub(super) fn release_held_args(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        self.objects.free(ids);
    }

    /// Submits a task to a worker process elsewhere; completes `cell` when it is done. The
    /// executor runs it again after an application error `retry_on` covers, `max_retries`
    /// times; if the worker dies, the task runs again on a live worker, up to
    /// `system_retries` times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        function: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_retries: u32,
        system_retries: u32,
        retry_on: crate::task::RetryOn,
    ) {
        let extra = self.tasks.take_stashed(cell.id().as_u64());
        self.push_task(
            rt,
            cell,
            args,
            Retry {
                function,
                request: request.clone(),
                name: name.map(str::to_owned),
                max_retries,
                retry_on,
                left: system_retries,
                system: system_retries,
                extra,
            },
        );
    }

    /// Places and pushes a task (a first attempt, a retry or a rebuild).
    pub(super) fn push_task(
        &self,
        rt: &Arc<RuntimeInner>,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        retry: Retry,
    ) {
        let function = retry.function;
        let request = &retry.request;
        let max_retries = retry.max_retries;
        let retry_on: Vec<String> = retry
            .retry_on
            .iter()
            .flat_map(|types| types.iter().map(|t| t.to_string()))
            .collect();
        let name = retry.name.clone();
        let name = name.as_deref();
        let WireArgs {
            args: wire_args,
            held: held_args,
            ..
        } = self.wire_args(rt, &args);
        // Prefer the worker that holds the largest argument (Ray's locality-aware leasing),
        // as long as its node is not busy.
        let preferred = wire_args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref { holder, len, .. } if *holder != self.index && *len > 0 => {
                    Some((*len, *holder))
                }
                _ => None,
            })
            .max()
            .map(|(_, holder)| holder);
        let (node, worker, peer) = match self.place_task(request, preferred, &cell) {
            Ok(p) => p,
            Err(e) => {
                self.release_held_args(&held_args);
                cell.complete(Err(e));
                return;
            }
        };
        let task_id = cell.id().as_u64();
        let load = request_pairs(request);
        let resources = request_resources(request);
        self.take_load(node, worker, &load);
        self.tasks.pushed(
            task_id,
            InFlight {
                cell,
                name: function,
                worker,
                node: Some(node),
                load,
                args,
                retry: Some(retry),
                actor: None,
                keep: None,
                held_args,
            },
        );
        peer.send(Msg::PushTask {
            task_id,
            function: function.to_owned(),
            args: wire_args,
            resources,
            name: name.unwrap_or_default().to_owned(),
            max_retries,
            retry_on,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
    }

    /// Places task `cell`: a failure that may pass (`Error::Cluster`: a worker process that
    /// exited before it was ready, say while the head restarts, or a raylet that did not
    /// answer) is tried again, 6 times with a pause doubling from 50 ms (about 3 s in all),
    /// while the task is not done (cancelled); any other (`Infeasible`) is final at once.
    fn place_task(
        &self,
        request: &ResourceRequest,
        preferred: Option<u64>,
        cell: &ObjectCell,
    ) -> Result<(usize, u64, Arc<Peer>), Error> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..6 {
            match self.place(request, preferred) {
                Err(e @ Error::Cluster { .. })
                    if cell.get().is_none()
                        && !self.stopped.load(crate::sync::Ordering::Acquire) =>
                {
                    tracing::info!(task = %cell.id(), error = %e, ?pause, "a task could not be placed: trying again");
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.place(request, preferred)
    }

    /// Creates an actor in a worker process elsewhere; `created` completes when its
    /// constructor has run there.
    pub(crate) fn create_actor_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
    ) -> Result<(), Error> {
        self.create_actor_placed(rt, actor, created, args, options)
            .map(drop)
    }

    /// [`Cluster::create_actor_remote`], returning the worker it was sent to.
    pub(super) fn create_actor_placed(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
    ) -> Result<(u64, Arc<Peer>), Error> {
        let request = &options.resources;
        let name = options.name.as_deref();
        let max_concurrency = options.max_concurrency as u32;
        let max_restarts = options.max_restarts;
        let exception_retries = super::proto::ActorRetries::of(options);
        // Placed where its placement request fits (a default actor needs 1 CPU), holding
        // `request`.
        let (node, worker, peer) = self.place(&options.placement(), None)?;
        let actor_id = actor.id().as_u64();
        let node_id = self.placement.node_id_at(node).unwrap_or(0);
        // The directory first, so a taken name fails before anything runs.
        self.register_actor(super::proto::ActorInfo {
            actor_id,
            name: name.unwrap_or_default().to_owned(),
            class_name: actor.class_name().to_owned(),
            worker,
            node_id,
            alive: true,
            ..Default::default()
        })?;
        let remote = match RemoteActor::of_cell(actor) {
            // Made while its placement group was pending (`pending_actor.rs`).
            Some(waiting) => waiting.clone(),
            None => {
                let remote = RemoteActor::at(worker, peer.clone(), options.max_task_retries);
                actor.set_remote(Arc::new(remote.clone()));
                remote
            }
        };
        self.own_actor(NewOwned {
            cell: actor,
            remote,
            args: &args,
            request,
            name,
            max_concurrency,
            exception_retries: exception_retries.clone(),
            max_restarts,
            worker,
            node,
        });
        let WireArgs {
            args: wire_args,
            held: held_args,
            ..
        } = self.wire_args(rt, &args);
        // An actor holds what it asked for on its worker while it lives (until killed).
        let load = request_pairs(request);
        self.take_load(node, worker, &load);
        self.actors.count_load(actor_id, (node, worker, load));
        self.tasks.pushed(
            actor_id,
            InFlight {
                cell: created,
                name: actor.class_name(),
                worker,
                node: None,
                load: Vec::new(),
                args: args.into_boxed_slice(),
                retry: None,
                actor: Some(ActorFlight::Create(actor_id)),
                keep: None,
                held_args,
            },
        );
        peer.send(Msg::CreateActor {
            actor_id,
            class_name: actor.class_name().to_owned(),
            args: wire_args,
            resources: request_resources(request),
            name: name.unwrap_or_default().to_owned(),
            max_concurrency,
            max_restarts,
            group: actor.member().map_or((0, 0), |m| (m.rank, m.world_size)),
            exception_retries,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
        Ok((worker, peer))
    }

    /// Enters an actor in the GCS's directory (a taken name is `ActorNameTaken`).
    fn register_actor(&self, actor: super::proto::ActorInfo) -> Result<(), Error> {
        let name = actor.name.clone();
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| Msg::RegisterActor { request_id, actor });
        if let Msg::ActorReply { error, .. } =
            wait_reply(rx, call_timeout(), "registering an actor")?
            && !error.is_empty()
        {
            return Err(if !name.is_empty() && error.contains("taken") {
                Error::ActorNameTaken {
                    name: crate::runtime::display_name(&name),
                }
            } else {
                cluster_error("registering an actor", error)
            });
        }
        Ok(())
    }

    /// Enters an actor this worker process created and hosts itself (its own resources
    /// sufficed) in the GCS's directory, under its id only (a name stays this process's), so
    /// a handle to it can be decoded, called and killed in any process. Its death is
    /// recorded by [`Cluster::hosted_actor_died`].
    pub(crate) fn register_hosted_actor(&self, actor_id: u64, class: &str) -> Result<(), Error> {
        self.register_actor(super::proto::ActorInfo {
            actor_id,
            name: String::new(),
            class_name: class.to_owned(),
            worker: self.index,
            node_id: self.node_id().unwrap_or(0),
            alive: true,
            death: String::new(),
            ..Default::default()
        })
    }

    /// Records in the GCS's directory that an actor this process created and hosts is dead
    /// (`manta list actors`; a lookup of its id then finds it dead).
    pub(crate) fn hosted_actor_died(&self, actor_id: u64, class: &str, death: &str) {
        let actor = super::proto::ActorInfo {
            actor_id,
            name: String::new(),
            class_name: class.to_owned(),
            worker: self.index,
            node_id: self.node_id().unwrap_or(0),
            alive: false,
            death: death.to_owned(),
            ..Default::default()
        };
        let _guard = self.io.enter();
        // The answer is of no use: the receiver is dropped.
        drop(
            self.gcs
                .request(|request_id| Msg::RegisterActor { request_id, actor }),
        );
    }

    /// Sends a call to a remote actor (parked while it restarts); completes `cell` with its
    /// result.
    pub(crate) fn call_remote(
        &self,
        actor: &Arc<ActorCell>,
        borrow: Option<&Arc<dyn RemoteValue>>,
        remote: &RemoteActor,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
    ) {
        let actor_id = actor.id().as_u64();
        self.send_call(
            remote,
            actor_id,
            method,
            cell,
            args,
            Some((actor.clone(), borrow.cloned())),
        );
    }

    /// Looks up where actor `actor_id` lives (the GCS directory).
    pub(crate) fn locate_actor(
        &self,
        actor_id: u64,
        name: &str,
    ) -> Result<super::proto::ActorInfo, Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::LookupActor {
            request_id,
            name: name.to_owned(),
            actor_id,
        });
        match wait_reply(rx, call_timeout(), "looking up an actor")? {
            Msg::ActorReply {
                found: true, actor, ..
            } => Ok(actor),
            _ => Err(Error::ActorNotFound {
                name: if name.is_empty() {
                    format!("{actor_id:#x}")
                } else {
                    name.to_owned()
                },
            }),
        }
    }

    /// A remote actor's proxy target (an actor another process owns).
    pub(crate) fn remote_actor(&self, worker: u64) -> RemoteActor {
        RemoteActor::at(worker, self.peer(worker), 0)
    }

    /// Tells the actor's worker that no handle to it is left (it goes once its submitted
    /// calls are done).
    /// An actor that is restarting has no worker to tell: the restart finds it unwanted and
    /// kills the new instance (`supervision.rs`, step 5).
    pub(crate) fn release_remote(&self, remote: &RemoteActor, actor_id: u64) {
        if let Some((_, peer)) = remote.target() {
            peer.send(Msg::ReleaseActor { actor_id });
        }
    }

    /// A task or call we own finished elsewhere.
    pub(super) fn task_done(&self, from: &Arc<Peer>, task_id: u64, outcome: Outcome) {
        let f = match self.tasks.complete(task_id, from.worker) {
            Completion::Done(f) => f,
            Completion::OtherAttempt => {
                tracing::debug!(task_id, from = %from.name, "completion from a previous attempt's worker ignored");
                return;
            }
            // Another return of a task with several (`returns.rs`), or unknown.
            Completion::Unknown => return self.return_done(from, task_id, outcome),
        };
        self.release_load(f.node, f.worker, &f.load);
        self.release_held_args(&f.held_args);
        let InFlight {
            cell,
            worker,
            args,
            retry,
            ..
        } = f;
        let value = self.outcome_value(task_id, worker, outcome);
        // A task's stored outputs keep its specification to rebuild them (`lineage.rs`, step
        // 1), recorded before its cell completes (whose drop forgets it); so is a rebuild's,
        // even failed (step 6), whose TaskDone adopts the lost outputs (step 7).
        if let Some(mut retry) = retry {
            let extra = std::mem::take(&mut retry.extra);
            let held = |i: usize, v: Option<Result<&ObjectValue, &Error>>| match v {
                Some(Ok(v)) => super::lineage::held_result(&v.data)
                    .map(|o| (task_id + i as u64, Arc::downgrade(&o))),
                _ => None,
            };
            let outputs: super::lineage::Outputs = held(0, Some(value.as_ref()))
                .into_iter()
                .chain(
                    extra
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| held(i + 1, c.get())),
                )
                .collect();
            if (!outputs.is_empty() || self.lineage.is_running(task_id))
                && let Some(rebuilt) =
                    self.lineage
                        .record(task_id, super::lineage::Spec::new(retry, args), outputs)
            {
                self.adopt_rebuilt(task_id, rebuilt, &value, &extra);
            }
        }
        cell.complete(value);
    }

    /// The value of object `id` that worker `holder` reports with `outcome`: inline bytes, a
    /// lazy payload pulled from the holder on first read, or the error it failed with (a task
    /// error keeps its typed cause).
    pub(super) fn outcome_value(
        &self,
        id: u64,
        holder: u64,
        outcome: Outcome,
    ) -> Result<ObjectValue, Error> {
        match outcome {
            Outcome::Inline(bytes) => Ok(ObjectValue::inline(Bytes::from(bytes))),
            Outcome::Stored { len } => Ok(ObjectValue::remote(RemoteObject::new(
                id,
                holder,
                len,
                self.me.get().cloned().unwrap_or_default(),
            ))),
            Outcome::Failed {
                kind,
                task,
                message,
                cause,
            } => Err(match kind {
                ErrorKind::Panic => Error::Task(TaskError::unpack(&task, &message, &cause)),
                _ => wire_error(kind, task, message, id),
            }),
        }
    }

    /// Worker `index` is gone: its actors restart or die (`supervision.rs`), its tasks are
    /// retried or fail, and so are the calls in flight there.
    pub(super) fn worker_lost(&self, index: u64, reason: &str) {
        if testing_late_death(self, index, reason) {
            return;
        }
        self.placement.worker_died(index);
        // Before the in-flight table is drained: see the restart protocol's argument.
        self.actors_lost(index, reason);
        self.proxies_lost(index);
        self.owner_died(index);
        self.group_relay_lost(index, reason);
        let lost: Vec<(u64, InFlight)> = self.tasks.take_on_worker(index);
        let death = format!("worker process {index} died or became unreachable ({reason})");
        let first_delay = self
            .runtime()
            .map_or(Duration::from_millis(50), |rt| rt.config.task_retry_delay);
        let mut again = Vec::new();
        let mut lost = lost;
        // Calls park for a restart in submission order.
        lost.sort_by_key(|(id, _)| *id);
        for (id, f) in lost {
            self.release_load(f.node, f.worker, &f.load);
            self.release_held_args(&f.held_args);
            match &f.actor {
                Some(ActorFlight::Call { .. }) => {
                    self.actor_call_lost(index, reason, f);
                    continue;
                }
                // A restart re-creates it.
                Some(ActorFlight::Create(id)) if self.is_restarting(*id) => continue,
                _ => {}
            }
            match f.retry {
                Some(mut r) if r.left > 0 => {
                    let delay = retry_delay(first_delay, r.system - r.left);
                    r.left -= 1;
                    again.push((delay, f.cell, f.args, r));
                }
                // A task out of retries: Ray's WorkerCrashedError.
                Some(_) => {
                    f.cell.complete(Err(Error::WorkerCrashed {
                        task: f.name.to_owned(),
                        reason: death.clone(),
                    }));
                }
                // An actor's creation (the id is the actor's).
                None => {
                    f.cell.complete(Err(Error::ActorDied {
                        actor: crate::id::ActorId::from_u64(id),
                        class: f.name.to_owned(),
                        reason: death.clone(),
                    }));
                }
            }
        }
        if !again.is_empty() {
            // Placing may wait on the GCS and a raylet (which starts a replacement worker):
            // never on an I/O thread. Each retry waits its backoff first.
            again.sort_by_key(|(delay, ..)| *delay);
            let me = self.me.get().cloned().unwrap_or_default();
            let since = Instant::now();
            std::thread::spawn(move || {
                for (delay, cell, args, r) in again {
                    if let Some(pause) = delay.checked_sub(since.elapsed()) {
                        std::thread::sleep(pause);
                    }
                    let Some((c, rt)) = me
                        .upgrade()
                        .and_then(|c| c.runtime().map(|rt| (c, rt)))
                        .filter(|(c, _)| !c.stopped.load(crate::sync::Ordering::Acquire))
                    else {
                        cell.complete(Err(Error::ShutDown));
                        continue;
                    };
                    tracing::info!(task = %cell.id(), left = r.left, ?delay, "retrying a task whose worker died");
                    c.push_task(&rt, cell, args, r);
                }
            });
        }
        self.placement.forget_worker(index);
        self.drop_borrower(index);
        self.objects.free_results_of(index);
        self.attach_worker_lost(index);
        let failed: Vec<(u64, PullDone)> = self.objects.take_pulls_from(&format!("w{index}"));
        for (object_id, done) in failed {
            done(Err(lost_with(object_id, index, &death)));
        }
    }
}

/// Test hook: with `MANTA_TESTING_DEATH_NOTICE_DELAY_MS=<ms>`, this process learns of each
/// worker's death that long late (the first notice is put off; those meanwhile are dropped),
/// so a test can have others reach a dead worker before this owner knows. Whether the
/// notice was put off.
fn testing_late_death(c: &Cluster, index: u64, reason: &str) -> bool {
    static DELAY: crate::sync::OnceLock<Option<Duration>> = crate::sync::OnceLock::new();
    /// Workers whose death notice is put off (`false`) or was (`true`).
    static LATE: crate::sync::Mutex<Vec<(u64, bool)>> = crate::sync::Mutex::new(Vec::new());
    let Some(delay) = *DELAY.get_or_init(|| {
        std::env::var("MANTA_TESTING_DEATH_NOTICE_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
    }) else {
        return false;
    };
    {
        let mut late = crate::sync::lock(&LATE);
        match late.iter().find(|(i, _)| *i == index) {
            Some((_, true)) => return false,
            Some((_, false)) => return true,
            None => late.push((index, false)),
        }
    }
    let me = c.me.get().cloned().unwrap_or_default();
    let reason = reason.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut late = crate::sync::lock(&LATE);
        if let Some(entry) = late.iter_mut().find(|(i, _)| *i == index) {
            entry.1 = true;
        }
        drop(late);
        if let Some(c) = me.upgrade() {
            c.worker_lost(index, &reason);
        }
    });
    true
}

/// The error of a pull of `object_id` from worker `index`, which died: its owner's death
/// when it owned the object (Ray's `OwnerDiedError`), else the object's loss
/// (`ObjectLostError`).
pub(super) fn lost_with(object_id: u64, index: u64, death: &str) -> Error {
    let object = ObjectId::from_u64(object_id);
    if super::owner_of(object_id) == index {
        Error::OwnerDied {
            object,
            reason: death.to_owned(),
        }
    } else {
        Error::ObjectLost {
            object,
            reason: death.to_owned(),
        }
    }
}

/// An error from the wire (`TaskDone` of task `id`, or `ObjectFailed`), as
/// `execute::error_to_wire` sent it.
pub(super) fn wire_error(kind: ErrorKind, task: String, message: String, id: u64) -> Error {
    match kind {
        ErrorKind::WorkerCrashed => Error::WorkerCrashed {
            task,
            reason: message,
        },
        ErrorKind::ObjectLost
        | ErrorKind::OwnerDied
        | ErrorKind::ReconstructionMaxAttempts
        | ErrorKind::LineageEvicted => {
            let object = ObjectId::from_u64(task.parse().unwrap_or(id));
            let reason = message;
            match kind {
                ErrorKind::ObjectLost => Error::ObjectLost { object, reason },
                ErrorKind::OwnerDied => Error::OwnerDied { object, reason },
                ErrorKind::ReconstructionMaxAttempts => {
                    Error::ObjectReconstructionFailedMaxAttemptsExceeded { object, reason }
                }
                _ => Error::ObjectReconstructionFailedLineageEvicted { object, reason },
            }
        }
        ErrorKind::Panic => Error::Task(TaskError::remote_panic(&task, &message)),
        ErrorKind::ActorDied => Error::ActorDied {
            actor: crate::id::ActorId::from_u64(id),
            class: task,
            reason: message,
        },
        ErrorKind::Cancelled => Error::Cancelled {
            object: ObjectId::from_u64(id),
            task,
        },
        ErrorKind::Infeasible | ErrorKind::Store
            if let Some(e) = typed_wire_error(kind, &task, &message) =>
        {
            e
        }
        // A placement group's removal, packed by `execute::error_to_wire`.
        ErrorKind::Other if task == PG_REMOVED => Error::PlacementGroupRemoved { group: message },
        ErrorKind::Infeasible | ErrorKind::Store | ErrorKind::Other => Error::Cluster {
            what: if task.is_empty() {
                "remote task".into()
            } else {
                task
            },
            message,
        },
    }
}

/// The `task` field of a wire error that is `Error::PlacementGroupRemoved` (its message is
/// the group).
pub(super) const PG_REMOVED: &str = "\u{1f}placement group removed";

/// `Infeasible` and the store's errors, whose fields `execute::error_to_wire` packed.
fn typed_wire_error(kind: ErrorKind, task: &str, message: &str) -> Option<Error> {
    use super::execute::SEP;
    if kind == ErrorKind::Infeasible {
        let (request, total) = message.split_once(SEP)?;
        return Some(Error::Infeasible {
            what: task.to_owned(),
            request: request.to_owned(),
            total: total.to_owned(),
        });
    }
    let fields: Vec<&str> = task.split(SEP).collect();
    match fields.as_slice() {
        ["full", object, size, used, pinned, capacity, waited] => Some(Error::ObjectStoreFull {
            object: ObjectId::from_u64(object.parse().ok()?),
            size: size.parse().ok()?,
            used: used.parse().ok()?,
            pinned: pinned.parse().ok()?,
            capacity: capacity.parse().ok()?,
            waited: std::time::Duration::from_micros(waited.parse().ok()?),
        }),
        [object] => Some(Error::ObjectStore {
            object: ObjectId::from_u64(object.parse().ok()?),
            message: message.to_owned(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute::error_to_wire;
    use super::*;

    /// Every error a task or a pulled object can fail with keeps its kind across the wire.
    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        let object = ObjectId::from_u64(0x2000_0000_0042);
        let errors = [
            Error::Task(TaskError::remote_panic("m::f", "boom")),
            Error::ActorDied {
                actor: crate::id::ActorId::from_u64(7),
                class: "m::A".into(),
                reason: "killed".into(),
            },
            Error::Infeasible {
                what: "task m::f".into(),
                request: "{CPU: 4}".into(),
                total: "{CPU: 2}".into(),
            },
            Error::ObjectStoreFull {
                object,
                size: 40,
                used: 70,
                pinned: 30,
                capacity: 75,
                waited: Duration::from_micros(1234),
            },
            Error::ObjectStore {
                object,
                message: "larger than the store".into(),
            },
            Error::WorkerCrashed {
                task: "m::f".into(),
                reason: "worker process 3 died".into(),
            },
            Error::ObjectLost {
                object,
                reason: "worker process 3 died".into(),
            },
            Error::OwnerDied {
                object,
                reason: "worker process 3 died".into(),
            },
            Error::ObjectReconstructionFailedMaxAttemptsExceeded {
                object,
                reason: "m::f has no retries left".into(),
            },
            Error::ObjectReconstructionFailedLineageEvicted {
                object,
                reason: "worker process 3 died".into(),
            },
        ];
        for e in errors {
            let (kind, task, message) = error_to_wire(&e);
            let back = wire_error(kind, task, message, 7);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} came back as {back:?}"
            );
            assert_eq!(back.to_string(), e.to_string());
        }
    }

    #[test]
    fn retry_delays_double_up_to_a_second() {
        let first = Duration::from_millis(50);
        let delays: Vec<u64> = (0..7)
            .map(|done| retry_delay(first, done).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry_delay(first, u32::MAX), RETRY_DELAY_CAP);
        assert_eq!(retry_delay(Duration::ZERO, 3), Duration::ZERO);
    }
}
