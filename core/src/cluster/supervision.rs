//! Actor supervision by the owner (Ray's model): where a remote actor lives, and what happens
//! when its worker process dies — the actor is restarted on a live worker up to
//! `max_restarts` times, with its constructor run again on its original arguments, or it dies
//! for good.
//!
//! # The restart protocol
//!
//! The owner (the process that created the actor) keeps an [`OwnedActor`] record with the
//! constructor's arguments, and every proxy of the actor reaches it through a
//! [`RemoteActor`], whose [`Location`] is either `At` a worker or `Restarting`.
//!
//! 1. The owner sees the actor's worker die (its connection closes, or its node dies:
//!    `worker_lost`). First, under the location's lock, every actor it owns there with
//!    restarts left turns `Restarting` (a restart is counted), and the GCS directory lists it
//!    RESTARTING; one without restarts left dies (`ActorDied`, naming the worker's death and
//!    the exhausted `max_restarts`), and the directory lists it DEAD.
//! 2. Then the calls that were in flight there are taken out of the in-flight table: a call
//!    with `max_task_retries` left, to an actor that is restarting, is parked (ahead of the
//!    calls parked since, in submission order); any other fails with `ActorDied`.
//! 3. Calls made while the actor is `Restarting` are parked, not sent (`call_remote`).
//! 4. A thread places the actor (the raylet starts a replacement worker, or another node
//!    takes it) and sends `CreateActor` with the original arguments; the creation is in flight
//!    like a task. If that worker dies too, step 1 runs again for it. A placement that fails
//!    for a reason that may pass (a replacement worker process that exited before it was
//!    ready, a raylet that did not answer) is tried again a bounded number of times
//!    (`place_again`); `Infeasible`, or the last failure, kills the actor for good.
//! 5. When the constructor has run, under the location's lock the location becomes `At` the
//!    new worker and the parked calls are sent in order before any later call can be (a later
//!    call takes the same lock), and the directory lists the actor ALIVE with its restart
//!    count. A constructor that fails on restart kills the actor for good.
//!
//! Step 1 happening before step 2 is what makes every call end: a call either took the
//! location's lock before the actor turned `Restarting` — then it is in the in-flight table
//! before step 2 drains it — or after, and is parked.
//!
//! Only the owner restarts an actor. A process that merely holds a handle (a proxy) follows
//! it: when it sees the actor's worker die, its proxy turns `Restarting` too (before its
//! in-flight calls are drained, which fail with `ActorDied`: only the owner knows
//! `max_task_retries`), and a thread polls the GCS directory until the actor is ALIVE on a
//! live worker — then the parked calls are sent as in step 5 — or is gone from it for more
//! than [`GONE_GRACE`] (the directory may list it dead for a moment before its owner reports
//! the restart), or [`call_timeout()`] passes: then the proxy dies with `ActorDied`.

use crate::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::call_timeout;
use super::peer::Peer;
use super::placement::{request_pairs, request_resources};
use super::proto::{ActorInfo, Msg};
use super::submit::{ActorFlight, InFlight, KeepActor, WireArgs};
use super::worker::Cluster;
use crate::actor::ActorCell;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{ObjectCell, Waiter};
use crate::remote::ActorPlace;
use crate::resources::ResourceRequest;
use crate::sync::lock;
use crate::task::ArgSlot;

/// Where a restart goes: a node slot, a worker and its connection (`Cluster::place`).
type Placed = (usize, u64, Arc<Peer>);

/// How long a proxy waits for an actor missing from the directory to reappear (as restarting)
/// before it takes it for dead.
const GONE_GRACE: Duration = Duration::from_secs(1);

/// Where a remote actor lives, shared by its proxy cell and (at its owner) its record.
#[derive(Clone, Debug)]
pub(crate) struct RemoteActor(Arc<RemoteInner>);

#[derive(Debug)]
struct RemoteInner {
    location: Mutex<Location>,
    /// How many times a call in flight at a worker's death is run again.
    max_task_retries: u32,
    /// Whether `fence` holds calls (read before taking its lock).
    fenced: crate::sync::AtomicBool,
    /// The last call sent to the actor on its own (0: none): a group call, relayed, must not
    /// overtake it while it is unanswered (`group_call.rs`).
    last_direct: crate::sync::AtomicU64,
    /// Group calls relayed to the actor and not answered yet (`group_call.rs`), and the
    /// calls made since, which wait for them so that they cannot overtake them.
    fence: Mutex<Fence>,
}

/// See `RemoteInner::fence`.
#[derive(Debug, Default)]
struct Fence {
    /// Group calls sent and not answered.
    pending: usize,
    /// The route they took (a later group call by another route waits too).
    route: u64,
    /// Calls made since, in order.
    parked: Vec<Parked>,
}

/// A remote actor's location.
#[derive(Debug)]
pub(super) enum Location {
    /// Hosted by worker `worker`.
    At { worker: u64, peer: Arc<Peer> },
    /// Its worker died and its owner is starting it again: calls wait here.
    Restarting { parked: Vec<Parked> },
    /// Dead for good: a call made now fails at once with this error (a call that raced the
    /// death must not park where nothing would ever complete it).
    Dead(Error),
}

impl Location {
    /// Marks the actor dead with `error`, returning the calls that were parked.
    fn kill(&mut self, error: Error) -> Vec<Parked> {
        match std::mem::replace(self, Location::Dead(error)) {
            Location::Restarting { parked } => parked,
            Location::At { .. } | Location::Dead(_) => Vec::new(),
        }
    }

    /// Points at `worker`, returning the calls parked for it (none unless it was restarting;
    /// a dead actor stays dead and `None` says so).
    fn arrive(&mut self, worker: u64, peer: &Arc<Peer>) -> Option<Vec<Parked>> {
        if let Location::Dead(_) = self {
            return None;
        }
        let old = std::mem::replace(
            self,
            Location::At {
                worker,
                peer: peer.clone(),
            },
        );
        Some(match old {
            Location::Restarting { parked } => parked,
            Location::At { .. } | Location::Dead(_) => Vec::new(),
        })
    }
}

/// A call waiting for its actor's restart.
pub(super) struct Parked {
    pub(super) method: &'static str,
    pub(super) cell: Arc<ObjectCell>,
    pub(super) args: Box<[ArgSlot]>,
    /// Retries left after a worker death.
    pub(super) left: u32,
    /// What keeps the actor alive while the call is in flight (`InFlight::keep`).
    pub(super) keep: Option<KeepActor>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("method", &self.method)
            .field("call", &self.cell.id())
            .finish_non_exhaustive()
    }
}

impl ActorPlace for RemoteActor {
    fn worker(&self) -> Option<u64> {
        self.target().map(|(w, _)| w)
    }
}

impl RemoteActor {
    /// The record behind a proxy's place (every place is one: only the cluster makes them).
    pub(super) fn of(place: &dyn ActorPlace) -> Option<&RemoteActor> {
        (place as &dyn std::any::Any).downcast_ref()
    }

    /// The record behind proxy `cell`, if it is one.
    pub(super) fn of_cell(cell: &ActorCell) -> Option<&RemoteActor> {
        cell.remote().and_then(|p| RemoteActor::of(&**p))
    }

    pub(super) fn at(worker: u64, peer: Arc<Peer>, max_task_retries: u32) -> RemoteActor {
        RemoteActor(Arc::new(RemoteInner {
            location: Mutex::new(Location::At { worker, peer }),
            max_task_retries,
            fenced: crate::sync::AtomicBool::new(false),
            last_direct: crate::sync::AtomicU64::new(0),
            fence: Mutex::new(Fence::default()),
        }))
    }

    /// An actor not placed yet (its placement group is pending): calls park until it is
    /// created ([`Cluster::first_arrival`]) or never will be ([`Cluster::never_placed`]).
    pub(super) fn waiting(max_task_retries: u32) -> RemoteActor {
        RemoteActor(Arc::new(RemoteInner {
            location: Mutex::new(Location::Restarting { parked: Vec::new() }),
            max_task_retries,
            fenced: crate::sync::AtomicBool::new(false),
            last_direct: crate::sync::AtomicU64::new(0),
            fence: Mutex::new(Fence::default()),
        }))
    }

    /// The last call sent to the actor on its own, if any (its id).
    pub(super) fn last_direct(&self) -> Option<u64> {
        Some(self.0.last_direct.load(crate::sync::Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// How many times a call in flight at its worker's death is run again.
    pub(super) fn max_task_retries(&self) -> u32 {
        self.0.max_task_retries
    }

    /// A group call by `route` is about to be sent: later calls wait for its answer. False
    /// (nothing changed) if group calls by another route are still unanswered, or calls
    /// wait behind them: that one could overtake them.
    pub(super) fn fence_enter(&self, route: u64) -> bool {
        let mut fence = lock(&self.0.fence);
        if fence.pending > 0 && (fence.route != route || !fence.parked.is_empty()) {
            return false;
        }
        fence.pending += 1;
        fence.route = route;
        self.0.fenced.store(true, crate::sync::Ordering::SeqCst);
        true
    }

    /// The hosting worker, unless the actor is restarting.
    pub(crate) fn worker(&self) -> Option<u64> {
        self.target().map(|(w, _)| w)
    }

    /// Sends `msg` to the hosting worker; nothing while the actor is restarting.
    pub(super) fn send_to_host(&self, msg: Msg) {
        if let Some((_, peer)) = self.target() {
            peer.send(msg);
        }
    }

    /// The hosting worker and its connection, unless the actor is restarting.
    pub(super) fn target(&self) -> Option<(u64, Arc<Peer>)> {
        match &*lock(&self.0.location) {
            Location::At { worker, peer } => Some((*worker, peer.clone())),
            Location::Restarting { .. } | Location::Dead(_) => None,
        }
    }
}

/// An actor this process created and runs elsewhere: what it takes to restart it.
pub(super) struct OwnedActor {
    cell: Weak<ActorCell>,
    remote: RemoteActor,
    class: &'static str,
    /// The constructor's arguments (kept only when the actor may restart).
    args: Box<[ArgSlot]>,
    request: ResourceRequest,
    name: Option<String>,
    max_concurrency: u32,
    /// What runs a call again after a panic (`CreateActor`).
    exception_retries: super::proto::ActorRetries,
    max_restarts: u32,
    restarts_left: u32,
    num_restarts: u32,
    /// The worker hosting it (or being asked to), and its node slot.
    worker: u64,
    node: usize,
}

impl OwnedActor {
    /// Whether its proxy cell still lives.
    pub(super) fn is_live(&self) -> bool {
        self.cell.strong_count() > 0
    }

    /// The error its calls get once it is dead for good (as `ActorCell::died`).
    fn died(&self, id: u64, why: &str) -> Error {
        Error::ActorDied {
            actor: crate::id::ActorId::from_u64(id),
            class: self.class.to_owned(),
            reason: why.to_owned(),
        }
    }
}

/// What `OwnedActor` needs at creation.
pub(super) struct NewOwned<'a> {
    pub(super) cell: &'a Arc<ActorCell>,
    pub(super) remote: RemoteActor,
    pub(super) args: &'a [ArgSlot],
    pub(super) request: &'a ResourceRequest,
    pub(super) name: Option<&'a str>,
    pub(super) max_concurrency: u32,
    pub(super) exception_retries: super::proto::ActorRetries,
    pub(super) max_restarts: u32,
    pub(super) worker: u64,
    pub(super) node: usize,
}

impl Cluster {
    /// Records an actor this process created elsewhere (step 0: what a restart needs).
    pub(super) fn own_actor(&self, new: NewOwned<'_>) {
        let record = OwnedActor {
            cell: Arc::downgrade(new.cell),
            remote: new.remote,
            class: new.cell.class_name(),
            args: if new.max_restarts > 0 {
                new.args.to_vec().into_boxed_slice()
            } else {
                Box::default()
            },
            request: new.request.clone(),
            name: new.name.map(str::to_owned),
            max_concurrency: new.max_concurrency,
            exception_retries: new.exception_retries,
            max_restarts: new.max_restarts,
            restarts_left: new.max_restarts,
            num_restarts: 0,
            worker: new.worker,
            node: new.node,
        };
        self.actors.own(new.cell.id().as_u64(), record);
    }

    /// Sends a call to a remote actor, or parks it while the actor restarts (step 3); a call
    /// sent to a worker known dead fails at once with `ActorDied`.
    pub(super) fn send_call(
        &self,
        remote: &RemoteActor,
        actor_id: u64,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        keep: Option<KeepActor>,
    ) {
        if remote.0.fenced.load(crate::sync::Ordering::SeqCst) {
            let mut fence = lock(&remote.0.fence);
            if fence.pending > 0 {
                fence.parked.push(Parked {
                    method,
                    cell,
                    args,
                    left: call_retries(remote, method),
                    keep,
                });
                return;
            }
        }
        self.send_call_now(remote, actor_id, method, cell, args, keep);
    }

    /// A waiting actor ([`RemoteActor::waiting`]) was sent to `worker` (its `CreateActor`
    /// first on `peer`): the calls parked meanwhile follow it, in order, before any later one.
    pub(super) fn first_arrival(
        &self,
        remote: &RemoteActor,
        actor_id: u64,
        worker: u64,
        peer: &Arc<Peer>,
    ) {
        let mut location = lock(&remote.0.location);
        if let Some(parked) = location.arrive(worker, peer) {
            for call in parked {
                self.push_call(remote, worker, peer, actor_id, call);
            }
        }
    }

    /// A waiting actor will never be placed (its group removed, or its placement failed):
    /// the calls parked meanwhile fail with `error`, as will any later one.
    pub(super) fn never_placed(&self, remote: &RemoteActor, error: &Error) {
        let parked = lock(&remote.0.location).kill(error.clone());
        for call in parked {
            call.cell.complete(Err(error.clone()));
        }
    }

    /// A group call to `remote`'s actor was answered (or failed): with none left, the calls
    /// that waited for it go, in order, before any later one.
    pub(super) fn fence_leave(&self, remote: &RemoteActor, actor_id: u64) {
        let mut fence = lock(&remote.0.fence);
        if fence.pending > 1 {
            fence.pending -= 1;
            return;
        }
        for p in std::mem::take(&mut fence.parked) {
            self.send_call_now(remote, actor_id, p.method, p.cell, p.args, p.keep);
        }
        fence.pending = 0;
        remote.0.fenced.store(false, crate::sync::Ordering::SeqCst);
    }

    /// [`Cluster::send_call`] past the fence.
    fn send_call_now(
        &self,
        remote: &RemoteActor,
        actor_id: u64,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        keep: Option<KeepActor>,
    ) {
        let left = call_retries(remote, method);
        let mut location = lock(&remote.0.location);
        let (worker, peer) = match &mut *location {
            Location::Restarting { parked } => {
                parked.push(Parked {
                    method,
                    cell,
                    args,
                    left,
                    keep,
                });
                return;
            }
            Location::Dead(error) => {
                cell.complete(Err(error.clone()));
                return;
            }
            Location::At { worker, peer } => (*worker, peer.clone()),
        };
        self.push_call(
            remote,
            worker,
            &peer,
            actor_id,
            Parked {
                method,
                cell,
                args,
                left,
                keep,
            },
        );
        drop(location);
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
    }

    /// Enters a call in the in-flight table and sends it (under its actor's location lock).
    fn push_call(
        &self,
        remote: &RemoteActor,
        worker: u64,
        peer: &Arc<Peer>,
        actor_id: u64,
        call: Parked,
    ) {
        let Some(rt) = self.runtime() else {
            call.cell.complete(Err(Error::ShutDown));
            return;
        };
        let call_id = call.cell.id().as_u64();
        remote
            .0
            .last_direct
            .store(call_id, crate::sync::Ordering::Relaxed);
        let WireArgs {
            args: wire_args,
            held: held_args,
            ..
        } = self.wire_args(&rt, &call.args);
        self.tasks.pushed(
            call_id,
            InFlight {
                cell: call.cell,
                name: call.method,
                worker,
                node: None,
                load: Vec::new(),
                args: call.args,
                retry: None,
                actor: Some(ActorFlight::Call {
                    actor_id,
                    method: call.method,
                    left: call.left,
                }),
                keep: call.keep,
                held_args,
            },
        );
        peer.send(Msg::ActorCall {
            actor_id,
            call_id,
            method: call.method.to_owned(),
            args: wire_args,
        });
    }

    /// Step 1 for worker `index`: every actor this process owns there restarts (if it has
    /// restarts left) or dies.
    pub(super) fn actors_lost(&self, index: u64, reason: &str) {
        let mut restart = Vec::new();
        let mut dead = Vec::new();
        // Handles taken here are dropped after the lock: the last one's drop takes it too.
        let mut held: Vec<Arc<ActorCell>> = Vec::new();
        self.actors.with_owned(|owned| {
            owned.retain(|_, a| match a.cell.upgrade() {
                Some(c) => {
                    let alive = !c.is_dead();
                    held.push(c);
                    alive
                }
                None => false,
            });
            for (id, a) in owned.iter_mut().filter(|(_, a)| a.worker == index) {
                let mut location = lock(&a.remote.0.location);
                if a.restarts_left > 0 {
                    a.restarts_left -= 1;
                    a.num_restarts += 1;
                    if let Location::At { .. } = &*location {
                        *location = Location::Restarting { parked: Vec::new() };
                    }
                    a.worker = 0;
                    restart.push((*id, self.actor_info(*id, a, true)));
                } else {
                    let why = if a.max_restarts == 0 {
                        format!("its worker process {index} died ({reason}); max_restarts is 0")
                    } else {
                        format!(
                            "its worker process {index} died ({reason}) after {} restarts, all \
                             that max_restarts allows",
                            a.num_restarts
                        )
                    };
                    let parked = location.kill(a.died(*id, &why));
                    let node_id = self.node_id_of(a.node);
                    dead.push((*id, a.cell.clone(), parked, why, node_id));
                }
            }
            for (id, ..) in &dead {
                owned.remove(id);
            }
        });
        drop(held);
        for (id, cell, parked, why, node_id) in dead {
            self.actor_dead(id, &cell, parked, &why, (index, node_id));
        }
        for (id, info) in restart {
            tracing::info!(actor = id, "restarting an actor whose worker died");
            self.tell_gcs(info);
            let me = self.me.get().cloned().unwrap_or_default();
            std::thread::spawn(move || {
                if let Some(c) = me.upgrade() {
                    c.restart_actor(id);
                }
            });
        }
    }

    /// Step 1 for the proxies here of actors other processes own that lived on worker
    /// `index`: each waits for its actor to come back.
    pub(super) fn proxies_lost(&self, index: u64) {
        let Some(rt) = self.runtime() else { return };
        let cells = rt.actor_cells();
        for cell in &cells {
            if cell.id().owner().as_u64() == self.index || cell.is_dead() {
                continue;
            }
            if RemoteActor::of_cell(cell)
                .and_then(RemoteActor::target)
                .is_some_and(|(worker, _)| worker == index)
            {
                self.follow_restart(cell, index);
            }
        }
        drop(cells);
    }

    /// Parks the calls of proxy `cell` until the GCS directory shows its actor alive on a
    /// live worker other than `old` (or it is gone: the proxy dies).
    pub(crate) fn follow_restart(&self, cell: &Arc<ActorCell>, old: u64) {
        let Some(remote) = RemoteActor::of_cell(cell).cloned() else {
            return;
        };
        {
            let mut location = lock(&remote.0.location);
            if let Location::At { .. } = &*location {
                *location = Location::Restarting { parked: Vec::new() };
            } else {
                return; // already followed
            }
        }
        let me = self.me.get().cloned().unwrap_or_default();
        let weak = Arc::downgrade(cell);
        std::thread::spawn(move || {
            if let Some(c) = me.upgrade() {
                c.follow(&weak, &remote, old);
            }
        });
    }

    fn follow(&self, cell: &Weak<ActorCell>, remote: &RemoteActor, old: u64) {
        let deadline = Instant::now() + call_timeout();
        let mut gone_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(5);
        let why = loop {
            let Some(c) = cell.upgrade().filter(|c| !c.is_dead()) else {
                break None;
            };
            let id = c.id().as_u64();
            drop(c);
            match self.locate_actor(id, "") {
                Ok(info)
                    if info.alive
                        && !info.restarting
                        && info.worker != 0
                        && info.worker != old
                        && !self.placement.is_dead(info.worker) =>
                {
                    let peer = self.peer(info.worker);
                    let mut location = lock(&remote.0.location);
                    let parked = location.arrive(info.worker, &peer).unwrap_or_default();
                    for call in parked {
                        self.push_call(remote, info.worker, &peer, id, call);
                    }
                    return;
                }
                Err(Error::ActorNotFound { .. }) => {
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GONE_GRACE {
                        break Some(format!(
                            "its worker process {old} died and it was not restarted"
                        ));
                    }
                }
                _ => gone_since = None,
            }
            if Instant::now() > deadline {
                break Some(format!(
                    "its worker process {old} died and it was not back within {:?}",
                    call_timeout()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        match cell.upgrade() {
            Some(c) => {
                let error = match why {
                    Some(why) if !c.is_dead() => c.died(&why),
                    _ => c.died("dead"),
                };
                let parked = lock(&remote.0.location).kill(error.clone());
                for p in parked {
                    p.cell.complete(Err(error.clone()));
                }
                c.die(error);
            }
            None => {
                for p in lock(&remote.0.location).kill(Error::ShutDown) {
                    p.cell.complete(Err(Error::ShutDown));
                }
            }
        }
    }

    /// The directory row of owned actor `id` as this owner knows it.
    fn actor_info(&self, id: u64, a: &OwnedActor, restarting: bool) -> ActorInfo {
        ActorInfo {
            actor_id: id,
            name: a.name.clone().unwrap_or_default(),
            class_name: a.class.to_owned(),
            worker: a.worker,
            node_id: self.node_id_of(a.node),
            alive: true,
            death: String::new(),
            restarting,
            num_restarts: a.num_restarts,
        }
    }

    /// The id of node slot `slot`.
    fn node_id_of(&self, slot: usize) -> u64 {
        self.placement.node_id_at(slot).unwrap_or(0)
    }

    /// Records an actor's row in the GCS directory (no answer awaited).
    fn tell_gcs(&self, actor: ActorInfo) {
        let _guard = self.io.enter();
        drop(
            self.gcs
                .request(|request_id| Msg::RegisterActor { request_id, actor }),
        );
    }

    /// An owned actor is dead for good: its cell, its parked calls and the directory say why.
    fn actor_dead(
        &self,
        id: u64,
        cell: &Weak<ActorCell>,
        parked: Vec<Parked>,
        why: &str,
        (worker, node_id): (u64, u64),
    ) {
        let Some(cell) = cell.upgrade() else { return };
        let error = cell.died(why);
        for p in parked {
            p.cell.complete(Err(error.clone()));
        }
        tracing::warn!(actor = id, why, "actor dead");
        self.tell_gcs(ActorInfo {
            actor_id: id,
            name: cell.name().unwrap_or_default().to_owned(),
            class_name: cell.class_name().to_owned(),
            worker,
            node_id,
            alive: false,
            death: why.to_owned(),
            restarting: false,
            num_restarts: 0,
        });
        cell.die(error);
    }

    /// Step 2 for one call in flight on a dead worker: parked for the restart if it may be
    /// retried, else failed with `ActorDied`. Returns the call if it was parked... never: it
    /// either parks or completes it.
    pub(super) fn actor_call_lost(&self, index: u64, reason: &str, f: InFlight) {
        let Some(ActorFlight::Call {
            actor_id,
            method,
            left,
        }) = f.actor
        else {
            return;
        };
        let mut call = Some(Parked {
            method,
            cell: f.cell,
            args: f.args,
            left: left.saturating_sub(1),
            keep: f.keep,
        });
        if left > 0 {
            self.actors.with_record(actor_id, |a| {
                let mut location = lock(&a.remote.0.location);
                if let Location::Restarting { parked } = &mut *location
                    && let Some(call) = call.take()
                {
                    // Ahead of calls made since the death was seen, in submission order.
                    let at = parked
                        .iter()
                        .position(|p| p.cell.id().as_u64() > call.cell.id().as_u64())
                        .unwrap_or(parked.len());
                    parked.insert(at, call);
                }
            });
        }
        // Not parked: it fails (its arguments and keep-alive held until then).
        let Some(Parked {
            method,
            cell,
            args: _args,
            keep,
            ..
        }) = call
        else {
            return;
        };
        let (class, actor) = self
            .actors
            .with_record(actor_id, |a| (a.class, a.cell.upgrade()))
            .unwrap_or(("actor", None));
        // Its record may be gone already (dead for good): the call's own hold on the proxy.
        let actor = actor.or_else(|| keep.map(|(cell, _)| cell));
        let reason = format!(
            "its worker process {index} died while the call to {method} was in flight \
             ({reason})"
        );
        // An actor group's member names its rank and node (`ActorCell::died`).
        cell.complete(Err(match actor {
            Some(actor) => actor.died(&reason),
            None => Error::ActorDied {
                actor: crate::id::ActorId::from_u64(actor_id),
                class: class.to_owned(),
                reason,
            },
        }));
    }

    /// Whether owned actor `actor_id` is being restarted (its creation on a dead worker is
    /// then dropped, not failed: the restart re-creates it).
    pub(super) fn is_restarting(&self, actor_id: u64) -> bool {
        self.actors
            .with_record(actor_id, |a| {
                matches!(&*lock(&a.remote.0.location), Location::Restarting { .. })
            })
            .unwrap_or(false)
    }

    /// Step 4: places owned actor `id` on a live worker and creates it there again.
    fn restart_actor(&self, id: u64) {
        let Some((request, args, name, class, max_concurrency, restarts_left, old, exceptions)) =
            self.actors.with_record(id, |a| {
                (
                    a.request.clone(),
                    a.args.clone(),
                    a.name.clone(),
                    a.class,
                    a.max_concurrency,
                    a.restarts_left,
                    a.node,
                    a.exception_retries.clone(),
                )
            })
        else {
            return;
        };
        // A group member comes back with its rank (in its bundle: the same request).
        let group = self
            .actors
            .with_record(id, |a| a.cell.upgrade())
            .flatten()
            .and_then(|c| c.member())
            .map_or((0, 0), |m| (m.rank, m.world_size));
        let Some(rt) = self.runtime() else { return };
        let (node, worker, peer) = match self.place_again(id, &request) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                return self.restart_failed(id, &format!("it could not be placed again: {e}"));
            }
            None => return, // killed or dropped meanwhile
        };
        let pairs = request_pairs(&request);
        let Some(info) = self.actors.with_record(id, |a| {
            a.worker = worker;
            a.node = node;
            self.actor_info(id, a, true)
        }) else {
            return;
        };
        self.release_load(Some(old), 0, &pairs);
        self.take_load(node, worker, &pairs);
        self.tell_gcs(info);
        let created = Arc::new(ObjectCell::pending(ObjectId::from_u64(id), None));
        let WireArgs {
            args: wire_args,
            held: held_args,
            ..
        } = self.wire_args(&rt, &args);
        self.tasks.pushed(
            id,
            InFlight {
                cell: created.clone(),
                name: class,
                worker,
                node: None,
                load: Vec::new(),
                args,
                retry: None,
                actor: Some(ActorFlight::Create(id)),
                keep: None,
                held_args,
            },
        );
        let me = self.me.get().cloned().unwrap_or_default();
        let c2 = created.clone();
        let peer2 = peer.clone();
        let on_created = move || {
            let Some(c) = me.upgrade() else { return };
            match c2.get() {
                Some(Ok(_)) => c.restarted(id, worker, &peer2),
                Some(Err(e)) => {
                    c.restart_failed(id, &format!("its constructor failed on restart: {e}"))
                }
                None => {}
            }
        };
        if let Err(Waiter::Callback(f)) = created.register(Waiter::Callback(Box::new(on_created))) {
            f();
        }
        peer.send(Msg::CreateActor {
            actor_id: id,
            class_name: class.to_owned(),
            args: wire_args,
            resources: request_resources(&request),
            name: name.unwrap_or_default(),
            max_concurrency,
            max_restarts: restarts_left,
            group,
            exception_retries: exceptions,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
    }

    /// Step 4's placement (a node slot, a worker and its connection), as a task's
    /// (`Cluster::place_task`): a failure that may pass (`Error::Cluster`: a worker process
    /// that exited before it was ready, say while the head restarts, or a raylet that did not
    /// answer) is tried again, 6 times with a pause doubling from 50 ms (about 3 s in all),
    /// while the actor is still wanted; any other (`Infeasible`) is final at once. `None`:
    /// the actor is no longer this process's to restart.
    fn place_again(&self, id: u64, request: &ResourceRequest) -> Option<Result<Placed, Error>> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..6 {
            match self.place(request, None) {
                Err(e @ Error::Cluster { .. }) => {
                    tracing::info!(actor = id, error = %e, ?pause, "an actor's restart could not be placed: trying again");
                    std::thread::sleep(pause);
                    pause *= 2;
                    if self.stopped.load(crate::sync::Ordering::Acquire)
                        || self.actors.with_record(id, |_| ()).is_none()
                    {
                        return None;
                    }
                }
                other => return Some(other),
            }
        }
        Some(self.place(request, None))
    }

    /// Step 5: the constructor ran again on `worker`: send the parked calls, in order.
    fn restarted(&self, id: u64, worker: u64, peer: &Arc<Peer>) {
        // An instance nobody wants any more (the actor was killed or dropped while it
        // restarted, or this restart was overtaken by another) is killed at once.
        let unwanted = || {
            peer.send(Msg::KillActor {
                actor_id: id,
                restart: false,
            })
        };
        let Some(weak) = self
            .actors
            .with_record(id, |a| (a.worker == worker).then(|| a.cell.clone()))
            .flatten()
        else {
            return unwanted();
        };
        // Held across the lock below and dropped after it (a last handle's drop takes it).
        let Some(_cell) = weak.upgrade().filter(|c| !c.is_dead()) else {
            return unwanted();
        };
        let info = self
            .actors
            .with_record(id, |a| {
                if a.worker != worker {
                    return None;
                }
                let mut location = lock(&a.remote.0.location);
                let parked = location.arrive(worker, peer)?;
                for call in parked {
                    self.push_call(&a.remote, worker, peer, id, call);
                }
                drop(location);
                Some(self.actor_info(id, a, false))
            })
            .flatten();
        let Some(info) = info else {
            return unwanted();
        };
        tracing::info!(actor = id, worker, "actor restarted");
        self.tell_gcs(info);
    }

    /// A restart could not be done: the actor dies for good.
    fn restart_failed(&self, id: u64, why: &str) {
        let Some(a) = self.actors.disown(id) else {
            return;
        };
        let parked = lock(&a.remote.0.location).kill(a.died(id, why));
        self.actor_dead(
            id,
            &a.cell,
            parked,
            why,
            (a.worker, self.node_id_of(a.node)),
        );
    }

    /// Asks the actor's worker to kill (and maybe restart) it; a kill makes the owner forget
    /// it and gives back its placement load. An actor killed while it restarts has no worker to ask: its owner lists it dead
    /// (and kills the new instance if its constructor finishes: step 5).
    pub(crate) fn kill_remote(&self, remote: &RemoteActor, actor_id: u64, restart: bool) {
        let record = if restart {
            None
        } else {
            // A kill for good gives back the placement load its creation counted (`cancel.rs`).
            self.release_actor_load(actor_id);
            self.actors.disown(actor_id)
        };
        match remote.target() {
            Some((_, peer)) => peer.send(Msg::KillActor { actor_id, restart }),
            None => {
                if let Some(a) = &record {
                    self.tell_gcs(ActorInfo {
                        alive: false,
                        death: "killed (manta::kill, or no handle to it was left) while it \
                                restarted"
                            .into(),
                        ..self.actor_info(actor_id, a, false)
                    });
                } else if !restart {
                    // Not placed yet (its placement group pending), or restarting at an
                    // owner this process is not: what waits for it here fails now.
                    self.never_placed(
                        remote,
                        &Error::ActorDied {
                            actor: crate::id::ActorId::from_u64(actor_id),
                            class: "?".into(),
                            reason: "killed (manta::kill, or no handle to it was left) before \
                                     it was placed"
                                .into(),
                        },
                    );
                }
            }
        }
        drop(record);
    }

    /// `manta::restart` of a remote actor. The owner restarts it in place (its host runs the
    /// constructor again) if it has restarts left, kills it if not; if its worker died, it
    /// waits for the automatic restart. Another holder can only ask the host. Returns whether
    /// the actor was alive and is now restarted or, without restarts left, killed.
    pub(crate) fn restart_remote(&self, cell: &Arc<ActorCell>, remote: &RemoteActor) -> bool {
        let id = cell.id().as_u64();
        let reachable =
            |worker: u64, peer: &Arc<Peer>| !peer.is_closed() && !self.placement.is_dead(worker);
        // `Err(answer)`: not owned here; `Ok(None)`: its worker is gone; `Ok(Some(..))`: asked.
        let decided = self.actors.with_owned(|owned| match owned.get_mut(&id) {
            None => Err(match remote.target() {
                Some((worker, peer)) if reachable(worker, &peer) => {
                    peer.send(Msg::KillActor {
                        actor_id: id,
                        restart: true,
                    });
                    true
                }
                _ => false,
            }),
            Some(a) => Ok(match remote.target() {
                Some((worker, peer)) if reachable(worker, &peer) => {
                    let restart = a.restarts_left > 0;
                    if restart {
                        a.restarts_left -= 1;
                        a.num_restarts += 1;
                    }
                    peer.send(Msg::KillActor {
                        actor_id: id,
                        restart,
                    });
                    Some((restart, self.actor_info(id, a, false)))
                }
                _ => None,
            }),
        });
        let decided = match decided {
            Ok(d) => d,
            Err(answer) => return answer,
        };
        match decided {
            Some((true, info)) => {
                self.tell_gcs(info);
                true
            }
            Some((false, _)) => {
                self.actors.disown(id);
                cell.die(cell.died("killed by manta::restart: no restarts left"));
                true
            }
            // Its worker died: the restart under way (or the death) decides.
            None => {
                let deadline = Instant::now() + call_timeout();
                while Instant::now() < deadline {
                    if cell.is_dead() {
                        return false;
                    }
                    if remote
                        .target()
                        .is_some_and(|(worker, peer)| reachable(worker, &peer))
                    {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                false
            }
        }
    }
}

/// The retries a call of `method` to `remote`'s actor has: the method's own
/// `max_task_retries` (`#[method(...)]`) over the actor's.
fn call_retries(remote: &RemoteActor, method: &str) -> u32 {
    crate::actor::method_by_name(method).map_or(remote.0.max_task_retries, |m| {
        m.task_retries(remote.0.max_task_retries)
    })
}
