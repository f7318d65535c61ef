//! The GCS's tables as a state machine without I/O: nodes (with their health), workers, jobs,
//! the actor directory with its names, the key-value store, placement groups and the
//! subscribers of node and job events. [`GcsTables::handle`] takes one [`Event`] (a message on
//! a connection, a closed connection, a tick of the clock, the answer to a placement-group
//! prepare, a timer that fired) with the time it happened and returns what to do ([`Out`]:
//! messages to send, prepares to ask, timers to set). `gcs.rs` is the shell: it owns the
//! sockets and the clock and feeds this. `sim.rs` drives the same type over its simulated
//! network.
//!
//! # The protocol
//!
//! 1. **Nodes.** `RegisterNode` adds a node (a fresh id) and publishes `NodeEvent`. A node is
//!    dead when its connection closes or no `Heartbeat` came for `node_timeout` (the raylet
//!    computes it: `heartbeat_interval` × `health_check_failure_threshold`; checked on
//!    every [`Event::Tick`]): its workers and the actors on it are marked dead, the death is
//!    published, and the node is sent `Stop` with [`DECLARED_DEAD`] (and again in answer to
//!    any later heartbeat): a stalled raylet that wakes up leaves rather than runs on unseen.
//! 2. **Workers and jobs.** `RegisterWorker` with job 0 is a driver: it starts a job (a fresh
//!    id). A worker whose connection closes is forgotten (a lookup of an unknown index answers
//!    "not alive"), its actors are marked dead, and a driver's close ends its job
//!    (`JobEvent { finished }` to subscribers) and removes its placement groups that are not
//!    detached.
//! 3. **Actors.** `RegisterActor` records an actor (alive, restarting, or a death report); a
//!    live actor's name is refused while another live actor holds it; a death report keeps
//!    the name table as it is (the name may belong to a newer actor). `LookupActor` finds a
//!    live actor by name or id. At most [`MAX_DEAD_ACTORS`] dead actors are kept.
//! 4. **KV.** `KvPut` answers with the previous value, `KvGet` with the value.
//! 5. **Placement groups** (`pg.rs` has the protocol): a create is checked and listed PENDING;
//!    placing chooses nodes and emits [`Out::Prepare`] per node, whose answers come back as
//!    [`Event::Prepared`]; all yes commits, any no rolls back and retries 1 s later
//!    ([`Event::PgRetry`]).
//! 6. **Listings** (`manta list tasks|objects`): every live worker is asked; the answer goes
//!    when all answered or at [`Event::ListingDue`], [`LISTING_TIMEOUT`] later, partial.
//! 7. **Stop** (`manta stop`): every live node is sent `Stop`, and the shell told
//!    ([`Out::StopRequested`]).
//! 8. **Rejoining a restarted GCS.** A raylet that lost the GCS registers again with
//!    `RegisterNode` carrying its node id, a worker or driver with `RejoinWorker` carrying its
//!    index. A restored member without a connection takes the new one and is answered
//!    `Registered` (a worker with its job; a node after `PgCommit` of its created groups'
//!    parts, since a commit may have been lost with the old GCS, whereupon the raylet drops
//!    what it holds only prepared); a node declared dead meanwhile is answered with
//!    [`DECLARED_DEAD`], an id the tables do not hold with an error: the member then stops.
//! 9. **Saving.** Every change of a saved entry (a node's row, a live worker, a running job,
//!    a KV entry, an actor, a group, the next ids) notes its key; after the event the shell
//!    takes the changes ([`GcsTables::take_changes`]: each key's record now, or `None` if its
//!    entry is gone) and saves them before it sends the event's answers (or, now and then,
//!    the whole [`GcsTables::snapshot`]). Heartbeats, lookups and listings change nothing
//!    saved.
//! 10. **Restoring** ([`GcsTables::restore`]): every member is without a connection. Nodes
//!     get a full `node_timeout` from the restore to rejoin or heartbeat, then are declared
//!     dead as ever (published to the members that rejoined). Workers and drivers that did not
//!     rejoin within `node_timeout` are gone: their actors are dead, their jobs end; groups
//!     whose owner did not come back are removed unless detached.
//!
//! Every answer and notice is an [`Out::Send`] on the connection it is for, in the order the
//! events came; the shell sends them in that order.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::execute::SEP;
use super::gcs_store::Key;
use super::pg;
use super::proto::{ActorInfo, Msg, Node, ObjectRow, PgOp, PgRow, TaskRow};
use super::worker_table::Conn;

/// How a node learns that the GCS declared it dead: the reason of the `Stop` it is sent (at
/// once, and again in answer to any later heartbeat), which makes its raylet stop its workers
/// and exit with an error, releasing its store. A node declared dead never comes back under
/// its id; restarted, it joins as a new node.
pub(crate) const DECLARED_DEAD: &str = "declared dead by the GCS";

/// Dead actors the GCS keeps for `manta list actors` (as Ray's bounded cache of destroyed
/// actors); beyond that the oldest are forgotten.
pub(crate) const MAX_DEAD_ACTORS: usize = 1000;

/// How long the GCS waits for every worker's part of a listing.
pub(crate) const LISTING_TIMEOUT: Duration = Duration::from_secs(2);

/// The version of the saved tables' format ([`GcsTables::snapshot`]).
pub(crate) const SAVED_VERSION: u32 = 1;

/// How long after a failed placement attempt pending groups are tried again.
pub(crate) const PG_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What happens to the GCS.
#[derive(Debug)]
pub(crate) enum Event<C> {
    /// A message arrived on connection `C`.
    Message(C, Msg),
    /// Connection `C` closed.
    Closed(C),
    /// The clock moved (the shell ticks every second): silent nodes are declared dead.
    Tick,
    /// Node `node_id`'s answer to group `pg_id`'s prepare: `None` if it reserved, else why
    /// not (a refusal, no answer in time, a closed connection).
    Prepared {
        pg_id: u64,
        node_id: u64,
        error: Option<String>,
    },
    /// The CPU sets and GPUs a raylet gave group `pg_id`'s bundles it prepared (sent before
    /// their [`Event::Prepared`]).
    BundleCpus {
        pg_id: u64,
        bundles: Vec<super::proto::PgBundle>,
    },
    /// Listing `id`'s time is up.
    ListingDue { id: u64 },
    /// Try pending placement groups again.
    PgRetry,
}

/// What the shell must do.
#[derive(Debug)]
pub(crate) enum Out<C> {
    /// Send `Msg` on connection `C`.
    Send(C, Msg),
    /// Ask the raylet on `C` (node `node_id`) to prepare `row` for group `pg_id`, and feed its
    /// answer back as [`Event::Prepared`] (within [`pg::PREPARE_TIMEOUT`]).
    Prepare {
        to: C,
        pg_id: u64,
        node_id: u64,
        row: PgRow,
    },
    /// Feed `Event` back after `Duration`.
    Later(Duration, Event<C>),
    /// `manta stop` asked the cluster to stop (every live node was sent `Stop`).
    StopRequested,
}

struct NodeEntry<C> {
    node: Node,
    /// Its raylet's connection (`None`: restored from the saved tables, not rejoined yet).
    conn: Option<C>,
    since: Instant,
    last_heard: Instant,
}

struct WorkerEntry<C> {
    node_id: u64,
    job_id: u64,
    address: String,
    shm_path: String,
    host_id: String,
    alive: bool,
    /// Its connection (`None`: restored from the saved tables, not rejoined yet).
    conn: Option<C>,
    is_driver: bool,
}

/// A `manta list` answer being gathered.
struct Listing<C> {
    asker: C,
    request_id: u64,
    waiting: usize,
    tasks: Vec<TaskRow>,
    objects: Vec<ObjectRow>,
}

/// A two-phase placement attempt under way.
struct Attempt<C> {
    /// Each chosen node, its raylet's connection and its part of the group.
    targets: Vec<(u64, C, PgRow)>,
    /// Answers still to come.
    waiting: usize,
    /// The first refusal.
    failure: Option<String>,
}

/// The GCS's tables and their protocol (module doc).
pub(crate) struct GcsTables<C> {
    nodes: Vec<NodeEntry<C>>,
    workers: HashMap<u64, WorkerEntry<C>>,
    jobs: HashMap<u64, bool>,
    kv: HashMap<String, Vec<u8>>,
    actors: HashMap<u64, ActorInfo>,
    named: HashMap<String, u64>,
    subscribers: Vec<C>,
    listings: HashMap<u64, Listing<C>>,
    attempts: HashMap<u64, Attempt<C>>,
    next_listing: u64,
    next_node: u64,
    next_worker: u64,
    next_job: u64,
    pgs: pg::GcsGroups<C>,
    /// A node silent for this long is declared dead.
    node_timeout: Duration,
    /// The saved entries changed since [`take_changes`](Self::take_changes).
    changed: HashSet<Key>,
    /// When the tables were restored (until the restored workers rejoined or were given up).
    restored_at: Option<Instant>,
    /// The address the GCS serves on (saved, so a restart binds it again).
    address: String,
    /// The shell saves the tables: members are told to rejoin after a restart.
    saves: bool,
}

impl<C> std::fmt::Debug for GcsTables<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsTables")
            .field("nodes", &self.nodes.len())
            .field("workers", &self.workers.len())
            .field("actors", &self.actors.len())
            .finish_non_exhaustive()
    }
}

/// The outputs of one event, gathered while it is handled.
type Outs<C> = Vec<Out<C>>;

impl<C: Conn> GcsTables<C> {
    pub(crate) fn new(node_timeout: Duration) -> GcsTables<C> {
        GcsTables {
            nodes: Vec::new(),
            workers: HashMap::new(),
            jobs: HashMap::new(),
            kv: HashMap::new(),
            actors: HashMap::new(),
            named: HashMap::new(),
            subscribers: Vec::new(),
            listings: HashMap::new(),
            attempts: HashMap::new(),
            next_listing: 1,
            next_node: 1,
            next_worker: 1,
            next_job: 1,
            pgs: pg::GcsGroups::default(),
            node_timeout,
            changed: HashSet::new(),
            restored_at: None,
            address: String::new(),
            saves: false,
        }
    }

    /// Handles one event that happened at `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, now: Instant, event: Event<C>) -> Vec<Out<C>> {
        let mut out = Vec::new();
        match event {
            Event::Message(from, msg) => self.message(now, &from, msg, &mut out),
            Event::Closed(conn) => self.closed(now, &conn, &mut out),
            Event::Tick => self.check_health(now, &mut out),
            Event::Prepared {
                pg_id,
                node_id,
                error,
            } => self.prepared(pg_id, node_id, error, &mut out),
            Event::BundleCpus { pg_id, bundles } => {
                if let Some(g) = self.pgs.groups.get_mut(&pg_id) {
                    for b in &mut g.row.bundles {
                        if let Some(x) = bundles.iter().find(|x| x.index == b.index) {
                            b.cpus.clone_from(&x.cpus);
                            b.gpus.clone_from(&x.gpus);
                            b.cpu_note.clone_from(&x.cpu_note);
                        }
                    }
                }
            }
            Event::ListingDue { id } => self.finish_listing(id, true, &mut out),
            Event::PgRetry => {
                self.pgs.retry_scheduled = false;
                self.pg_try_place(&mut out);
            }
        }
        if self.pgs.retry_scheduled && !matches!(out.last(), Some(Out::StopRequested)) {
            // A node joined, a group went or a driver left: try pending groups now.
            self.pgs.retry_scheduled = false;
            self.pg_try_place(&mut out);
        }
        out
    }

    /// `Stop` for every live node (the head stopping).
    pub(crate) fn stop_all(&self, reason: &str) -> Vec<Out<C>> {
        let mut out = Vec::new();
        self.stop_nodes(reason, &mut out);
        out
    }

    /// Whether node `node_id` is listed alive.
    #[cfg(test)]
    pub(crate) fn node_alive(&self, node_id: u64) -> Option<bool> {
        self.nodes
            .iter()
            .find(|e| e.node.node_id == node_id)
            .map(|e| e.node.alive)
    }

    /// The number of workers in the table, of jobs running, and of actors kept.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (
            self.workers.len(),
            self.jobs.values().filter(|r| **r).count(),
            self.actors.len(),
        )
    }

    fn node_view(e: &NodeEntry<C>, now: Instant) -> Node {
        let mut n = e.node.clone();
        n.age_s = now.saturating_duration_since(e.since).as_secs_f64();
        n
    }

    fn publish(&mut self, msg: &Msg, out: &mut Outs<C>) {
        self.subscribers.retain(|p| !p.is_closed());
        for p in &self.subscribers {
            out.push(Out::Send(p.clone(), msg.clone()));
        }
    }

    fn node_dead(&mut self, i: usize, why: &str, now: Instant, out: &mut Outs<C>) {
        let e = &mut self.nodes[i];
        if !e.node.alive {
            return;
        }
        e.node.alive = false;
        e.node.death = why.to_owned();
        tracing::warn!(node = e.node.node_id, address = %e.node.address, why, "node dead");
        let node = Self::node_view(e, now);
        let conn = e.conn.clone();
        let node_id = node.node_id;
        self.changed.insert(Key::Node(node_id));
        for (i, w) in self.workers.iter_mut() {
            if w.node_id == node_id && w.alive {
                w.alive = false;
                self.changed.insert(Key::Worker(*i));
            }
        }
        for a in self.actors.values_mut() {
            if a.node_id == node_id && a.alive {
                a.alive = false;
                a.death = format!("its node {node_id} died ({why})");
                self.changed.insert(Key::Actor(a.actor_id));
            }
        }
        // A node merely silent may still run: tell it (it reads this when it wakes up).
        if let Some(conn) = conn {
            out.push(Out::Send(
                conn,
                Msg::Stop {
                    reason: format!("{DECLARED_DEAD} ({why})"),
                },
            ));
        }
        self.publish(&Msg::NodeEvent { node }, out);
        self.pg_node_dead(node_id, out);
    }

    /// Node `node_id` died: the bundles of created groups it held are placed again
    /// (`pg.rs`, step 6); their owners hear the group is RESCHEDULING.
    fn pg_node_dead(&mut self, node_id: u64, out: &mut Outs<C>) {
        let mut lost = Vec::new();
        let mut ids: Vec<u64> = self.pgs.groups.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(g) = self.pgs.groups.get_mut(&id) else {
                continue;
            };
            let created = matches!(g.row.state, pg::CREATED | pg::RESCHEDULING);
            if g.placing || !created || !g.row.bundles.iter().any(|b| b.node_id == node_id) {
                continue;
            }
            lost.push(pg::row_on(&g.row, node_id));
            for b in &mut g.row.bundles {
                if b.node_id == node_id {
                    b.node_id = 0;
                }
            }
            g.row.state = pg::RESCHEDULING;
            tracing::warn!(pg = id, node = node_id, "placement group rescheduling");
            if let Some(owner) = g.owner.clone() {
                out.push(Out::Send(owner, pg::msg(PgOp::Reply, 0, g.row.clone(), "")));
            }
            pg::tell_watchers(&mut g.watchers, &g.row, out);
            self.changed.insert(Key::Group(id));
        }
        for row in &lost {
            self.pgs.account(row, -1.0);
        }
        if !lost.is_empty() {
            self.pgs.retry_scheduled = true;
        }
    }

    fn check_health(&mut self, now: Instant, out: &mut Outs<C>) {
        let silent: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.node.alive && now.saturating_duration_since(e.last_heard) > self.node_timeout
            })
            .map(|(i, _)| i)
            .collect();
        for i in silent {
            self.node_dead(i, "no heartbeat", now, out);
        }
        // Restored workers that did not rejoin within a node timeout are gone.
        if let Some(at) = self.restored_at
            && now.saturating_duration_since(at) > self.node_timeout
        {
            self.restored_at = None;
            let lost: Vec<u64> = self
                .workers
                .iter()
                .filter(|(_, w)| w.conn.is_none())
                .map(|(i, _)| *i)
                .collect();
            for index in lost {
                tracing::warn!(worker = index, "worker did not rejoin the restarted GCS");
                self.worker_gone(index, out);
            }
            let orphans: Vec<u64> = self
                .pgs
                .groups
                .values()
                .filter(|g| !g.row.detached && g.owner.is_none())
                .map(|g| g.row.pg_id)
                .collect();
            for id in orphans {
                self.pg_remove(id, out);
            }
            self.forget_dead_actors();
        }
    }

    fn message(&mut self, now: Instant, peer: &C, msg: Msg, out: &mut Outs<C>) {
        let reply = |out: &mut Outs<C>, m: Msg| out.push(Out::Send(peer.clone(), m));
        match msg {
            Msg::RegisterNode { request_id, node } if node.node_id != 0 => {
                self.rejoin_node(now, peer, request_id, node, out);
            }
            Msg::RegisterNode {
                request_id,
                mut node,
            } => {
                let id = self.next_node;
                self.next_node += 1;
                node.node_id = id;
                node.alive = true;
                self.changed.insert(Key::Header);
                self.changed.insert(Key::Node(id));
                tracing::info!(node = id, address = %node.address, "node joined");
                self.nodes.push(NodeEntry {
                    node: node.clone(),
                    conn: Some(peer.clone()),
                    since: now,
                    last_heard: now,
                });
                reply(
                    out,
                    Msg::Registered {
                        request_id,
                        id,
                        job_id: 0,
                        error: String::new(),
                        saved: self.saves,
                    },
                );
                self.publish(&Msg::NodeEvent { node }, out);
                self.pgs.retry_scheduled = true;
            }
            Msg::Heartbeat {
                node_id,
                resources,
                store_used,
                store_pages,
            } => {
                let Some(e) = self.nodes.iter_mut().find(|e| e.node.node_id == node_id) else {
                    return;
                };
                if !e.node.alive {
                    // Declared dead: it must leave, not come back under this id.
                    let reason = format!("{DECLARED_DEAD} ({})", e.node.death);
                    reply(out, Msg::Stop { reason });
                    return;
                }
                e.last_heard = now;
                // A removed group's resources leave the node's row.
                e.node.resources.retain(|m| {
                    !m.name.contains("_group_") || resources.iter().any(|r| r.name == m.name)
                });
                for r in resources {
                    match e.node.resources.iter_mut().find(|m| m.name == r.name) {
                        Some(mine) => {
                            mine.available = r.available;
                            mine.total = r.total;
                        }
                        None => e.node.resources.push(r),
                    }
                }
                e.node.store_used = store_used;
                if !store_pages.is_empty() {
                    e.node.store_pages = store_pages;
                }
            }
            Msg::RegisterWorker {
                request_id,
                node_id,
                job_id,
                address,
                executable,
                pid,
                shm_path,
                host_id,
                ..
            } => {
                let index = self.next_worker;
                self.next_worker += 1;
                self.changed.insert(Key::Header);
                self.changed.insert(Key::Worker(index));
                let is_driver = job_id == 0;
                let job_id = if is_driver {
                    let j = self.next_job;
                    self.next_job += 1;
                    self.jobs.insert(j, true);
                    self.changed.insert(Key::Job(j));
                    tracing::info!(job = j, %executable, pid, "job started");
                    j
                } else {
                    job_id
                };
                self.workers.insert(
                    index,
                    WorkerEntry {
                        node_id,
                        job_id,
                        address,
                        shm_path,
                        host_id,
                        alive: true,
                        conn: Some(peer.clone()),
                        is_driver,
                    },
                );
                reply(
                    out,
                    Msg::Registered {
                        request_id,
                        id: index,
                        job_id,
                        error: String::new(),
                        saved: self.saves,
                    },
                );
            }
            Msg::RejoinWorker {
                request_id,
                index,
                address,
                shm_path,
                host_id,
                ..
            } => {
                let m = self.rejoin_worker(peer, request_id, index, address, shm_path, host_id);
                reply(out, m);
            }
            Msg::GetNodes { request_id } => {
                let mut nodes: Vec<Node> =
                    self.nodes.iter().map(|e| Self::node_view(e, now)).collect();
                for n in &mut nodes {
                    n.workers = self
                        .workers
                        .values()
                        .filter(|w| {
                            w.node_id == n.node_id
                                && w.alive
                                && !w.is_driver
                                && !w.conn.as_ref().is_some_and(Conn::is_closed)
                        })
                        .count() as u32;
                }
                reply(out, Msg::Nodes { request_id, nodes });
            }
            Msg::GetWorker { request_id, index } => {
                let m = match self.workers.get(&index) {
                    Some(w) => Msg::WorkerInfo {
                        request_id,
                        index,
                        node_id: w.node_id,
                        job_id: w.job_id,
                        address: w.address.clone(),
                        alive: w.alive,
                        shm_path: w.shm_path.clone(),
                        host_id: w.host_id.clone(),
                    },
                    None => Msg::WorkerInfo {
                        request_id,
                        index,
                        node_id: 0,
                        job_id: 0,
                        address: String::new(),
                        alive: false,
                        shm_path: String::new(),
                        host_id: String::new(),
                    },
                };
                reply(out, m);
            }
            Msg::KvPut {
                request_id,
                key,
                value,
            } => {
                self.changed.insert(Key::Kv(key.clone()));
                let old = self.kv.insert(key, value);
                reply(
                    out,
                    Msg::KvValue {
                        request_id,
                        found: old.is_some(),
                        value: old.unwrap_or_default(),
                    },
                );
            }
            Msg::KvGet { request_id, key } => {
                let v = self.kv.get(&key).cloned();
                reply(
                    out,
                    Msg::KvValue {
                        request_id,
                        found: v.is_some(),
                        value: v.unwrap_or_default(),
                    },
                );
            }
            Msg::RegisterActor { request_id, actor } => {
                let m = self.register_actor(request_id, actor);
                reply(out, m);
            }
            Msg::LookupActor {
                request_id,
                name,
                actor_id,
            } => {
                let id = if name.is_empty() {
                    Some(actor_id)
                } else {
                    self.named.get(&name).copied()
                };
                let found = id
                    .and_then(|id| self.actors.get(&id))
                    .filter(|a| a.alive)
                    .cloned();
                reply(
                    out,
                    Msg::ActorReply {
                        request_id,
                        found: found.is_some(),
                        actor: found.unwrap_or_default(),
                        error: String::new(),
                    },
                );
            }
            Msg::ListActors { request_id } => {
                let mut actors: Vec<ActorInfo> = self.actors.values().cloned().collect();
                actors.sort_by_key(|a| a.actor_id);
                reply(out, Msg::Actors { request_id, actors });
            }
            Msg::Subscribe { .. } => self.subscribers.push(peer.clone()),
            Msg::Stop { reason } => {
                tracing::info!(%reason, "cluster stop requested");
                self.stop_nodes(&reason, out);
                out.push(Out::StopRequested);
            }
            Msg::ListWork { request_id } => self.start_listing(peer, request_id, out),
            Msg::Work {
                request_id,
                tasks,
                objects,
                ..
            } => self.listing_part(request_id, tasks, objects, out),
            Msg::Pg {
                op,
                request_id,
                group,
                ..
            } => self.pg_message(peer, op, request_id, group, out),
            Msg::PgWatch { request_id, pg_id } => {
                let row = self.pgs.watch(peer, pg_id);
                out.push(Out::Send(
                    peer.clone(),
                    pg::msg(PgOp::Reply, request_id, row, ""),
                ));
            }
            other => {
                tracing::warn!(
                    message = other.name(),
                    "unexpected message for the GCS: ignored"
                );
            }
        }
    }

    /// A raylet that lost the GCS registers again under its node id (step 8).
    fn rejoin_node(
        &mut self,
        now: Instant,
        peer: &C,
        request_id: u64,
        node: Node,
        out: &mut Outs<C>,
    ) {
        let id = node.node_id;
        let saved = self.saves;
        let answer = |error: String| Msg::Registered {
            request_id,
            id,
            job_id: 0,
            error,
            saved,
        };
        let Some(e) = self.nodes.iter_mut().find(|e| e.node.node_id == id) else {
            let why = format!("node {id} is unknown to this GCS (its tables were not restored)");
            out.push(Out::Send(peer.clone(), answer(why)));
            return;
        };
        if !e.node.alive {
            let why = format!("{DECLARED_DEAD} ({})", e.node.death);
            out.push(Out::Send(peer.clone(), answer(why)));
            return;
        }
        if e.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            let why = format!("node {id} is connected already");
            out.push(Out::Send(peer.clone(), answer(why)));
            return;
        }
        tracing::info!(node = id, address = %node.address, "node rejoined");
        self.changed.insert(Key::Node(id));
        e.conn = Some(peer.clone());
        // Its created groups' parts, committed again before the answer (a commit may have been
        // lost with the old GCS; the raylet then drops what is only prepared).
        let mut created: Vec<&pg::GcsGroup<C>> = self
            .pgs
            .groups
            .values()
            .filter(|g| {
                matches!(g.row.state, pg::CREATED | pg::RESCHEDULING)
                    && g.row.bundles.iter().any(|b| b.node_id == id)
            })
            .collect();
        created.sort_by_key(|g| g.row.pg_id);
        for g in created {
            out.push(Out::Send(
                peer.clone(),
                pg::msg(PgOp::Commit, 0, pg::row_on(&g.row, id), ""),
            ));
        }
        e.last_heard = now;
        e.node.address = node.address;
        e.node.resources = node.resources;
        e.node.arena_socket = node.arena_socket;
        let view = Self::node_view(e, now);
        out.push(Out::Send(peer.clone(), answer(String::new())));
        self.publish(&Msg::NodeEvent { node: view }, out);
        self.pgs.retry_scheduled = true;
    }

    /// A worker or driver that lost the GCS registers again under its index (step 8).
    fn rejoin_worker(
        &mut self,
        peer: &C,
        request_id: u64,
        index: u64,
        address: String,
        shm_path: String,
        host_id: String,
    ) -> Msg {
        let mut answer = Msg::Registered {
            request_id,
            id: index,
            job_id: 0,
            error: String::new(),
            saved: self.saves,
        };
        let Some(w) = self.workers.get_mut(&index) else {
            if let Msg::Registered { error, .. } = &mut answer {
                *error = format!("worker {index} is unknown to this GCS (gone, or never saved)");
            }
            return answer;
        };
        if !w.alive || w.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            if let Msg::Registered { error, .. } = &mut answer {
                *error = format!("worker {index} is dead or connected already");
            }
            return answer;
        }
        tracing::info!(worker = index, job = w.job_id, "worker rejoined");
        self.changed.insert(Key::Worker(index));
        w.conn = Some(peer.clone());
        w.address = address;
        w.shm_path = shm_path;
        w.host_id = host_id;
        if let Msg::Registered { job_id, .. } = &mut answer {
            *job_id = w.job_id;
        }
        for g in self.pgs.groups.values_mut() {
            if g.owner_worker == index && g.owner.is_none() {
                g.owner = Some(peer.clone());
            }
        }
        answer
    }

    // ----- saving and restoring --------------------------------------------------------------

    /// The saved entries that changed since the last call, each with its record now (`None`:
    /// the entry is gone); empty if none did.
    pub(crate) fn take_changes(&mut self) -> Vec<(Key, Option<Msg>)> {
        let mut changed: Vec<Key> = self.changed.drain().collect();
        changed.sort_by_key(|k| matches!(k, Key::Header));
        changed
            .into_iter()
            .map(|k| {
                let m = self.record(&k);
                (k, m)
            })
            .collect()
    }

    /// The record saved for `key` now (`None`: nothing is saved under it).
    fn record(&self, key: &Key) -> Option<Msg> {
        match key {
            Key::Header => Some(Msg::GcsCounters {
                version: SAVED_VERSION,
                next_node: self.next_node,
                next_worker: self.next_worker,
                next_job: self.next_job,
                address: self.address.clone(),
            }),
            Key::Node(id) => {
                let e = self.nodes.iter().find(|e| e.node.node_id == *id)?;
                // What stays: not its age, store use or run-time resources, which a heartbeat
                // changes (a restored node's age counts from the restart).
                let mut row = e.node.clone();
                row.age_s = 0.0;
                row.store_used = 0;
                row.store_pages = String::new();
                row.workers = 0;
                row.resources.retain(|r| !r.name.contains("_group_"));
                for r in &mut row.resources {
                    r.available = r.total;
                }
                Some(Msg::Nodes {
                    request_id: 0,
                    nodes: vec![row],
                })
            }
            Key::Worker(index) => {
                let w = self.workers.get(index).filter(|w| w.alive)?;
                Some(Msg::RejoinWorker {
                    request_id: 0,
                    index: *index,
                    node_id: w.node_id,
                    job_id: w.job_id,
                    address: w.address.clone(),
                    shm_path: w.shm_path.clone(),
                    host_id: w.host_id.clone(),
                    driver: w.is_driver,
                })
            }
            // Only running jobs: a finished one's id is never handed out again.
            Key::Job(id) => self.jobs.get(id).filter(|r| **r).map(|_| Msg::JobEvent {
                job_id: *id,
                finished: false,
            }),
            Key::Kv(key) => self.kv.get(key).map(|value| Msg::KvPut {
                request_id: 0,
                key: key.clone(),
                value: value.clone(),
            }),
            Key::Actor(id) => self.actors.get(id).map(|a| Msg::RegisterActor {
                request_id: 0,
                actor: a.clone(),
            }),
            Key::Group(id) => {
                if let Some(g) = self.pgs.groups.get(id) {
                    let mut row = g.row.clone();
                    if g.placing {
                        // The attempt dies with this GCS and the group is placed again (its
                        // raylets drop what they prepared when they rejoin: step 8); a
                        // rescheduling group keeps the bundles placed before the attempt.
                        let trying: Vec<u32> = self
                            .attempts
                            .get(id)
                            .map(|a| {
                                a.targets
                                    .iter()
                                    .flat_map(|(_, _, part)| part.bundles.iter().map(|b| b.index))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let keep_others = row.state == pg::RESCHEDULING;
                        if !keep_others {
                            row.state = pg::PENDING;
                        }
                        for b in &mut row.bundles {
                            if !keep_others || trying.contains(&b.index) {
                                b.node_id = 0;
                            }
                        }
                    }
                    return Some(pg::msg(PgOp::Groups, g.owner_worker, row, ""));
                }
                let row = self.pgs.removed.iter().find(|r| r.pg_id == *id)?;
                Some(pg::msg(PgOp::Groups, 0, row.clone(), ""))
            }
        }
    }

    /// The shell saves the tables (members are told so, and rejoin after a restart).
    pub(crate) fn set_saves(&mut self, saves: bool) {
        self.saves = saves;
    }

    /// Records the address the GCS serves on (saved with the tables).
    pub(crate) fn set_address(&mut self, address: String) {
        self.address = address;
        self.changed.insert(Key::Header);
    }

    /// The tables to save, one record per entry (step 9; `gcs_store.rs` keys them and saves
    /// what changed): a `GcsCounters` header, a `Nodes` of one row per node (its age and
    /// store use left out: they change all the time, and a restored node's age counts from
    /// the restart), one `RejoinWorker` per live worker, one `JobEvent` per job, one `KvPut`
    /// per key, one `RegisterActor` per actor, one `Pg` per group (its owner's worker index as
    /// the request id). Connections, subscribers, listings and attempts under way are not
    /// saved.
    pub(crate) fn snapshot(&self) -> Vec<Msg> {
        let mut keys = vec![Key::Header];
        keys.extend(self.nodes.iter().map(|e| Key::Node(e.node.node_id)));
        let mut workers: Vec<u64> = self.workers.keys().copied().collect();
        workers.sort_unstable();
        keys.extend(workers.into_iter().map(Key::Worker));
        let mut jobs: Vec<u64> = self.jobs.keys().copied().collect();
        jobs.sort_unstable();
        keys.extend(jobs.into_iter().map(Key::Job));
        let mut kv: Vec<&String> = self.kv.keys().collect();
        kv.sort();
        keys.extend(kv.into_iter().map(|k| Key::Kv(k.clone())));
        let mut actors: Vec<u64> = self.actors.keys().copied().collect();
        actors.sort_unstable();
        keys.extend(actors.into_iter().map(Key::Actor));
        let mut groups: Vec<u64> = self.pgs.groups.keys().copied().collect();
        groups.extend(self.pgs.removed.iter().map(|r| r.pg_id));
        groups.sort_unstable();
        keys.extend(groups.into_iter().map(Key::Group));
        keys.iter().filter_map(|k| self.record(k)).collect()
    }

    /// Tables restored from `records` (what [`snapshot`](Self::snapshot) returned before a
    /// restart), at `now`: every node, worker and group owner is without a connection until
    /// it rejoins; a node that does not is declared dead after `node_timeout` (step 10).
    pub(crate) fn restore(
        node_timeout: Duration,
        records: Vec<Msg>,
        now: Instant,
    ) -> Result<GcsTables<C>, String> {
        let mut t = GcsTables::new(node_timeout);
        let mut records = records.into_iter();
        match records.next() {
            Some(Msg::GcsCounters {
                version,
                next_node,
                next_worker,
                next_job,
                address,
            }) => {
                if version != SAVED_VERSION {
                    return Err(format!(
                        "saved by format version {version}, this GCS reads {SAVED_VERSION}"
                    ));
                }
                t.next_node = next_node;
                t.next_worker = next_worker;
                t.next_job = next_job;
                t.address = address;
            }
            _ => return Err("no header".into()),
        }
        for m in records {
            match m {
                Msg::Nodes { nodes, .. } => {
                    for n in nodes {
                        let age = Duration::try_from_secs_f64(n.age_s).unwrap_or_default();
                        t.nodes.push(NodeEntry {
                            since: now.checked_sub(age).unwrap_or(now),
                            last_heard: now,
                            conn: None,
                            node: n,
                        });
                    }
                }
                Msg::RejoinWorker {
                    index,
                    node_id,
                    job_id,
                    address,
                    shm_path,
                    host_id,
                    driver,
                    ..
                } => {
                    t.workers.insert(
                        index,
                        WorkerEntry {
                            node_id,
                            job_id,
                            address,
                            shm_path,
                            host_id,
                            alive: true,
                            conn: None,
                            is_driver: driver,
                        },
                    );
                }
                Msg::JobEvent { job_id, finished } => {
                    t.jobs.insert(job_id, !finished);
                }
                Msg::KvPut { key, value, .. } => {
                    t.kv.insert(key, value);
                }
                Msg::RegisterActor { actor: a, .. } => {
                    if a.alive && !a.name.is_empty() {
                        t.named.insert(a.name.clone(), a.actor_id);
                    }
                    t.actors.insert(a.actor_id, a);
                }
                Msg::Pg {
                    request_id, group, ..
                } if group.state == pg::REMOVED => {
                    let _ = request_id;
                    t.pgs.removed.push_back(group);
                }
                Msg::Pg {
                    request_id, group, ..
                } => {
                    if !group.name.is_empty() {
                        t.pgs.names.insert(group.name.clone(), group.pg_id);
                    }
                    if matches!(group.state, pg::CREATED | pg::RESCHEDULING) {
                        // A rescheduling group's unplaced bundles (node 0) count nowhere.
                        t.pgs.account(&group, 1.0);
                    }
                    if group.state == pg::RESCHEDULING {
                        t.pgs.retry_scheduled = true;
                    }
                    t.pgs.groups.insert(
                        group.pg_id,
                        pg::GcsGroup {
                            row: group,
                            owner: None,
                            owner_worker: request_id,
                            placing: false,
                            watchers: Vec::new(),
                        },
                    );
                }
                other => return Err(format!("unexpected record {}", other.name())),
            }
        }
        t.nodes.sort_by_key(|e| e.node.node_id);
        t.restored_at = Some(now);
        Ok(t)
    }

    /// The address saved with the tables (empty if none).
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    fn register_actor(&mut self, request_id: u64, actor: ActorInfo) -> Msg {
        let taken = actor.alive
            && !actor.name.is_empty()
            && self
                .named
                .get(&actor.name)
                .and_then(|id| self.actors.get(id))
                .is_some_and(|a| a.alive && a.actor_id != actor.actor_id);
        if taken {
            return Msg::ActorReply {
                request_id,
                found: false,
                actor: ActorInfo::default(),
                error: format!("the name {:?} is taken", actor.name),
            };
        }
        // A death report (alive: false) leaves the name table alone: the name may already
        // belong to a newer actor. A killer may not know the name or node (a handle looked up
        // by name): the directory keeps what it had.
        let mut actor = actor;
        if !actor.alive
            && let Some(known) = self.actors.get(&actor.actor_id)
        {
            if actor.name.is_empty() {
                actor.name = known.name.clone();
            }
            if actor.node_id == 0 {
                actor.node_id = known.node_id;
            }
        }
        if !actor.name.is_empty() && actor.alive {
            self.named.insert(actor.name.clone(), actor.actor_id);
        }
        self.changed.insert(Key::Actor(actor.actor_id));
        self.actors.insert(actor.actor_id, actor.clone());
        Msg::ActorReply {
            request_id,
            found: true,
            actor,
            error: String::new(),
        }
    }

    /// Asks every live worker for its part of a listing; answers when all did, or at
    /// [`Event::ListingDue`] with what came (marked partial).
    fn start_listing(&mut self, asker: &C, request_id: u64, out: &mut Outs<C>) {
        let id = self.next_listing;
        self.next_listing += 1;
        let workers: Vec<C> = self
            .workers
            .values()
            .filter(|w| w.alive)
            .filter_map(|w| w.conn.clone())
            .filter(|c| !c.is_closed())
            .collect();
        if workers.is_empty() {
            out.push(Out::Send(
                asker.clone(),
                Msg::Work {
                    request_id,
                    tasks: Vec::new(),
                    objects: Vec::new(),
                    partial: false,
                },
            ));
            return;
        }
        self.listings.insert(
            id,
            Listing {
                asker: asker.clone(),
                request_id,
                waiting: workers.len(),
                tasks: Vec::new(),
                objects: Vec::new(),
            },
        );
        for w in workers {
            out.push(Out::Send(w, Msg::ListWork { request_id: id }));
        }
        out.push(Out::Later(LISTING_TIMEOUT, Event::ListingDue { id }));
    }

    fn listing_part(
        &mut self,
        id: u64,
        tasks: Vec<TaskRow>,
        objects: Vec<ObjectRow>,
        out: &mut Outs<C>,
    ) {
        let Some(l) = self.listings.get_mut(&id) else {
            return;
        };
        l.tasks.extend(tasks);
        l.objects.extend(objects);
        l.waiting = l.waiting.saturating_sub(1);
        if l.waiting == 0 {
            self.finish_listing(id, false, out);
        }
    }

    fn finish_listing(&mut self, id: u64, partial: bool, out: &mut Outs<C>) {
        let Some(mut l) = self.listings.remove(&id) else {
            return;
        };
        l.tasks.sort_by_key(|t| t.task_id);
        l.objects.sort_by_key(|o| o.object_id);
        out.push(Out::Send(
            l.asker,
            Msg::Work {
                request_id: l.request_id,
                tasks: l.tasks,
                objects: l.objects,
                partial,
            },
        ));
    }

    fn stop_nodes(&self, reason: &str, out: &mut Outs<C>) {
        for e in self.nodes.iter().filter(|e| e.node.alive) {
            if let Some(conn) = &e.conn {
                out.push(Out::Send(
                    conn.clone(),
                    Msg::Stop {
                        reason: reason.to_owned(),
                    },
                ));
            }
        }
    }

    fn closed(&mut self, now: Instant, peer: &C, out: &mut Outs<C>) {
        let is = |c: &Option<C>| c.as_ref().is_some_and(|c| c.same(peer));
        if let Some(i) = self.nodes.iter().position(|e| is(&e.conn)) {
            self.node_dead(i, "its connection closed", now, out);
        }
        let gone: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| is(&w.conn))
            .map(|(i, _)| *i)
            .collect();
        for index in gone {
            self.worker_gone(index, out);
        }
        self.subscribers.retain(|p| !p.same(peer));
        self.forget_dead_actors();
        // A group's lifetime follows its creator's unless detached.
        let orphans: Vec<u64> = self
            .pgs
            .groups
            .values()
            .filter(|g| !g.row.detached && is(&g.owner))
            .map(|g| g.row.pg_id)
            .collect();
        for id in &orphans {
            tracing::info!(pg = id, "placement group removed with its creator");
            self.pg_remove(*id, out);
        }
        if !orphans.is_empty() {
            self.pgs.retry_scheduled = true;
        }
    }

    /// Worker `index` is gone (its connection closed, or it did not rejoin after a restart).
    fn worker_gone(&mut self, index: u64, out: &mut Outs<C>) {
        // Forgotten, not kept as dead: the entry held the closed connection (its buffers),
        // ≈ 19 KB per finished job. `GetWorker` of an unknown index answers "not alive".
        let Some(w) = self.workers.remove(&index) else {
            return;
        };
        self.changed.insert(Key::Worker(index));
        for a in self.actors.values_mut() {
            if a.worker == index && a.alive {
                a.alive = false;
                a.death = format!("its worker process {index} exited");
                self.changed.insert(Key::Actor(a.actor_id));
            }
        }
        let job = w.job_id;
        if w.is_driver && self.jobs.insert(job, false) == Some(true) {
            self.changed.insert(Key::Job(job));
            tracing::info!(job, "job finished (driver left)");
            self.publish(
                &Msg::JobEvent {
                    job_id: job,
                    finished: true,
                },
                out,
            );
        }
    }

    /// Keeps at most [`MAX_DEAD_ACTORS`] dead actors (the oldest are forgotten first, with
    /// their names), so the table does not grow with every finished job.
    fn forget_dead_actors(&mut self) {
        let mut dead: Vec<u64> = self
            .actors
            .values()
            .filter(|a| !a.alive)
            .map(|a| a.actor_id)
            .collect();
        if dead.len() <= MAX_DEAD_ACTORS {
            return;
        }
        dead.sort_unstable();
        for id in &dead[..dead.len() - MAX_DEAD_ACTORS] {
            self.changed.insert(Key::Actor(*id));
            if let Some(a) = self.actors.remove(id)
                && self.named.get(&a.name) == Some(id)
            {
                self.named.remove(&a.name);
            }
        }
    }

    // ----- placement groups ----------------------------------------------------------------

    /// A placement-group message (see `pg.rs` for the protocol).
    fn pg_message(&mut self, peer: &C, op: PgOp, request_id: u64, group: PgRow, out: &mut Outs<C>) {
        match op {
            PgOp::Create => {
                let reply = |state: u8, error: String| {
                    pg::msg(
                        PgOp::Reply,
                        request_id,
                        PgRow {
                            state,
                            ..group.clone()
                        },
                        error,
                    )
                };
                if let Some(g) = self.pgs.groups.get(&group.pg_id) {
                    // Asked again (the owner's request outlived a restart of the GCS).
                    let state = g.row.state;
                    out.push(Out::Send(peer.clone(), reply(state, String::new())));
                    return;
                }
                if !group.name.is_empty() && self.pgs.names.contains_key(&group.name) {
                    let why = format!(
                        "name: a placement group named {:?} exists already",
                        group.name
                    );
                    out.push(Out::Send(peer.clone(), reply(pg::REMOVED, why)));
                    return;
                }
                let rooms = self.rooms();
                if let pg::Choice::Infeasible(i) =
                    pg::choose(&rooms, &bundle_needs(&group), group.strategy)
                {
                    let totals: Vec<String> = rooms
                        .iter()
                        .map(|r| format!("node {}: {:?}", r.node_id, r.totals))
                        .collect();
                    let why = format!("infeasible: bundle {i}{SEP}{}", totals.join("; "));
                    out.push(Out::Send(peer.clone(), reply(pg::REMOVED, why)));
                    return;
                }
                let mut row = group.clone();
                row.state = pg::PENDING;
                if !row.name.is_empty() {
                    self.pgs.names.insert(row.name.clone(), row.pg_id);
                }
                let owner_worker = self
                    .workers
                    .iter()
                    .find(|(_, w)| w.conn.as_ref().is_some_and(|c| c.same(peer)))
                    .map_or(0, |(i, _)| *i);
                self.changed.insert(Key::Group(row.pg_id));
                self.pgs.groups.insert(
                    row.pg_id,
                    pg::GcsGroup {
                        row: row.clone(),
                        owner: Some(peer.clone()),
                        owner_worker,
                        placing: false,
                        watchers: Vec::new(),
                    },
                );
                out.push(Out::Send(peer.clone(), reply(pg::PENDING, String::new())));
                self.pg_try_place(out);
            }
            PgOp::Remove => {
                let state = if self.pg_remove(group.pg_id, out) {
                    pg::REMOVED
                } else {
                    pg::PENDING
                };
                out.push(Out::Send(
                    peer.clone(),
                    pg::msg(PgOp::Reply, request_id, PgRow { state, ..group }, ""),
                ));
                self.pg_try_place(out);
            }
            PgOp::List => {
                let rows = self.pgs.rows();
                out.push(Out::Send(
                    peer.clone(),
                    Msg::Pg {
                        op: PgOp::Groups,
                        request_id,
                        group: PgRow::default(),
                        error: String::new(),
                        groups: rows,
                    },
                ));
            }
            other => {
                tracing::warn!(
                    ?other,
                    "unexpected placement-group message at the GCS: ignored"
                );
            }
        }
    }

    /// Every live node's room for groups: totals (of its own resources) and what groups
    /// leave free.
    fn rooms(&self) -> Vec<pg::NodeRoom> {
        self.nodes
            .iter()
            .filter(|e| e.node.alive && e.conn.is_some())
            .map(|e| {
                let totals: Vec<(String, f64)> = e
                    .node
                    .resources
                    .iter()
                    .filter(|r| !r.name.contains("_group_") && r.name != "object_store_memory")
                    .map(|r| (r.name.clone(), r.total))
                    .collect();
                let mut free = totals.clone();
                if let Some(reserved) = self.pgs.reserved.get(&e.node.node_id) {
                    for (name, amount) in reserved {
                        if let Some(f) = free.iter_mut().find(|(n, _)| n == name) {
                            f.1 -= amount;
                        }
                    }
                }
                pg::NodeRoom {
                    node_id: e.node.node_id,
                    totals,
                    free,
                }
            })
            .collect()
    }

    /// Removes a group: cancels its reservations at the raylets. Returns whether it existed.
    fn pg_remove(&mut self, pg_id: u64, out: &mut Outs<C>) -> bool {
        let Some(g) = self.pgs.groups.remove(&pg_id) else {
            return false;
        };
        self.changed.insert(Key::Group(pg_id));
        if self.pgs.names.get(&g.row.name) == Some(&pg_id) {
            self.pgs.names.remove(&g.row.name);
        }
        if g.placing || matches!(g.row.state, pg::CREATED | pg::RESCHEDULING) {
            self.pgs.account(&g.row, -1.0);
            self.pg_cancel_at_raylets(&g.row, out);
        }
        let (mut row, mut watchers) = (g.row, g.watchers);
        row.state = pg::REMOVED;
        pg::tell_watchers(&mut watchers, &row, out);
        self.pgs.removed.push_back(row);
        if self.pgs.removed.len() > pg::KEPT_REMOVED
            && let Some(old) = self.pgs.removed.pop_front()
        {
            self.changed.insert(Key::Group(old.pg_id));
        }
        true
    }

    fn pg_cancel_at_raylets(&self, row: &PgRow, out: &mut Outs<C>) {
        let mut nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node_id in nodes {
            if let Some(conn) = self
                .nodes
                .iter()
                .find(|e| e.node.node_id == node_id)
                .and_then(|e| e.conn.clone())
            {
                out.push(Out::Send(
                    conn,
                    pg::msg(PgOp::Cancel, 0, pg::row_on(row, node_id), ""),
                ));
            }
        }
    }

    /// Tries to place every pending group not being placed: chooses nodes, then starts the
    /// two-phase reservation for each group that has them.
    fn pg_try_place(&mut self, out: &mut Outs<C>) {
        let mut ids: Vec<u64> = self
            .pgs
            .groups
            .values()
            .filter(|g| matches!(g.row.state, pg::PENDING | pg::RESCHEDULING) && !g.placing)
            .map(|g| g.row.pg_id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let rooms = self.rooms();
            let Some(g) = self.pgs.groups.get(&id) else {
                continue;
            };
            // A rescheduling group places only the bundles its dead nodes held; the others stay.
            let (row, fresh, nodes) = if g.row.state == pg::RESCHEDULING {
                let Ok(chosen) = pg::choose_missing(&rooms, &g.row) else {
                    continue;
                };
                let mut row = g.row.clone();
                for (index, node) in &chosen {
                    if let Some(b) = row.bundles.iter_mut().find(|b| b.index == *index) {
                        b.node_id = *node;
                    }
                }
                let fresh = PgRow {
                    bundles: row
                        .bundles
                        .iter()
                        .filter(|b| chosen.iter().any(|(i, _)| *i == b.index))
                        .cloned()
                        .collect(),
                    ..row.clone()
                };
                let nodes: Vec<u64> = chosen.iter().map(|(_, n)| *n).collect();
                (row, fresh, nodes)
            } else {
                let pg::Choice::Nodes(nodes) =
                    pg::choose(&rooms, &bundle_needs(&g.row), g.row.strategy)
                else {
                    continue;
                };
                let mut row = g.row.clone();
                for (b, n) in row.bundles.iter_mut().zip(&nodes) {
                    b.node_id = *n;
                }
                (row.clone(), row, nodes)
            };
            // Only the bundles placed now go to the raylets (and are counted).
            self.pgs.account(&fresh, 1.0);
            if let Some(g) = self.pgs.groups.get_mut(&id) {
                g.row = row;
                g.placing = true;
                self.changed.insert(Key::Group(id));
            }
            let row = fresh;
            let mut distinct = nodes.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let mut targets = Vec::new();
            for node_id in distinct {
                if let Some(conn) = self
                    .nodes
                    .iter()
                    .find(|e| e.node.node_id == node_id)
                    .and_then(|e| e.conn.clone())
                {
                    targets.push((node_id, conn, pg::row_on(&row, node_id)));
                }
            }
            for (node_id, conn, part) in &targets {
                out.push(Out::Prepare {
                    to: conn.clone(),
                    pg_id: id,
                    node_id: *node_id,
                    row: part.clone(),
                });
            }
            let waiting = targets.len();
            self.attempts.insert(
                id,
                Attempt {
                    targets,
                    waiting,
                    failure: None,
                },
            );
            if waiting == 0 {
                self.attempt_done(id, out);
            }
        }
    }

    /// One raylet's answer to a prepare.
    fn prepared(&mut self, pg_id: u64, node_id: u64, error: Option<String>, out: &mut Outs<C>) {
        let Some(a) = self.attempts.get_mut(&pg_id) else {
            return;
        };
        if let Some(why) = error {
            a.failure.get_or_insert(format!("node {node_id}: {why}"));
        }
        a.waiting = a.waiting.saturating_sub(1);
        if a.waiting == 0 {
            self.attempt_done(pg_id, out);
        }
    }

    /// Every chosen raylet answered: commit everywhere, or roll back everywhere.
    fn attempt_done(&mut self, pg_id: u64, out: &mut Outs<C>) {
        let Some(attempt) = self.attempts.remove(&pg_id) else {
            return;
        };
        let cancel_all = |out: &mut Outs<C>| {
            for (_, conn, part) in &attempt.targets {
                out.push(Out::Send(
                    conn.clone(),
                    pg::msg(PgOp::Cancel, 0, part.clone(), ""),
                ));
            }
        };
        let Some(g) = self.pgs.groups.get_mut(&pg_id) else {
            // Removed meanwhile (its reservations were taken off then): roll back.
            cancel_all(out);
            return;
        };
        g.placing = false;
        self.changed.insert(Key::Group(pg_id));
        match attempt.failure {
            None => {
                g.row.state = pg::CREATED;
                let row = g.row.clone();
                let owner = g.owner.clone();
                for (_, conn, part) in &attempt.targets {
                    out.push(Out::Send(
                        conn.clone(),
                        pg::msg(PgOp::Commit, 0, part.clone(), ""),
                    ));
                }
                tracing::info!(pg = pg_id, "placement group created");
                pg::tell_watchers(&mut g.watchers, &row, out);
                if let Some(owner) = owner {
                    out.push(Out::Send(owner, pg::msg(PgOp::Reply, 0, row, "")));
                }
            }
            Some(why) => {
                tracing::info!(pg = pg_id, %why, "placement group reservation rolled back");
                // Only this attempt's bundles (a rescheduling group keeps its others).
                let attempt: Vec<u32> = attempt
                    .targets
                    .iter()
                    .flat_map(|(_, _, part)| part.bundles.iter().map(|b| b.index))
                    .collect();
                let all = g.row.state != pg::RESCHEDULING;
                let row = PgRow {
                    bundles: g
                        .row
                        .bundles
                        .iter()
                        .filter(|b| all || attempt.contains(&b.index))
                        .cloned()
                        .collect(),
                    ..g.row.clone()
                };
                for b in &mut g.row.bundles {
                    if all || attempt.contains(&b.index) {
                        b.node_id = 0;
                    }
                }
                self.pgs.account(&row, -1.0);
                cancel_all(out);
                out.push(Out::Later(PG_RETRY_AFTER, Event::PgRetry));
            }
        }
    }
}

/// A group's bundles as `(resource, amount)` lists, as `pg::choose` takes them.
fn bundle_needs(group: &PgRow) -> Vec<Vec<(String, f64)>> {
    group
        .bundles
        .iter()
        .map(|b| {
            b.resources
                .iter()
                .map(|r| (r.name.clone(), r.total))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::cluster::proto::Resource;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A connection: its number and whether it closed.
    #[derive(Clone, Debug)]
    pub(super) struct C(pub(super) u64, pub(super) Rc<Cell<bool>>);

    impl Conn for C {
        fn same(&self, other: &Self) -> bool {
            self.0 == other.0
        }
        fn is_closed(&self) -> bool {
            self.1.get()
        }
    }

    pub(super) struct T {
        pub(super) gcs: GcsTables<C>,
        pub(super) t0: Instant,
        pub(super) now: Duration,
        conns: HashMap<u64, C>,
    }

    impl T {
        pub(super) fn with(gcs: GcsTables<C>, t0: Instant, now: Duration) -> T {
            T {
                gcs,
                t0,
                now,
                conns: HashMap::new(),
            }
        }
        pub(super) fn new() -> T {
            T {
                gcs: GcsTables::new(Duration::from_secs(10)),
                t0: Instant::now(),
                now: Duration::ZERO,
                conns: HashMap::new(),
            }
        }
        pub(super) fn conn(&mut self, n: u64) -> C {
            self.conns
                .entry(n)
                .or_insert_with(|| C(n, Rc::new(Cell::new(false))))
                .clone()
        }
        pub(super) fn at(&self) -> Instant {
            self.t0 + self.now
        }
        pub(super) fn send(&mut self, from: u64, msg: Msg) -> Vec<Out<C>> {
            let c = self.conn(from);
            let at = self.at();
            self.gcs.handle(at, Event::Message(c, msg))
        }
        pub(super) fn close(&mut self, n: u64) -> Vec<Out<C>> {
            let c = self.conn(n);
            c.1.set(true);
            let at = self.at();
            self.gcs.handle(at, Event::Closed(c))
        }
        pub(super) fn tick(&mut self, after: Duration) -> Vec<Out<C>> {
            self.now += after;
            let at = self.at();
            self.gcs.handle(at, Event::Tick)
        }
        /// Registers node connection `n` with `cpus` CPUs and subscribes it; its id.
        pub(super) fn node(&mut self, n: u64, cpus: f64) -> u64 {
            let out = self.send(
                n,
                Msg::RegisterNode {
                    request_id: 1,
                    node: Node {
                        address: format!("10.0.0.{n}:1"),
                        resources: vec![Resource {
                            name: "CPU".into(),
                            total: cpus,
                            available: cpus,
                        }],
                        ..Node::default()
                    },
                },
            );
            self.send(n, Msg::Subscribe { request_id: 0 });
            match &out[0] {
                Out::Send(to, Msg::Registered { id, .. }) if to.0 == n => *id,
                other => panic!("no registration: {other:?}"),
            }
        }
        /// Registers worker connection `n` (a driver with job 0); its (index, job).
        pub(super) fn worker(&mut self, n: u64, node_id: u64, job_id: u64) -> (u64, u64) {
            let out = self.send(
                n,
                Msg::RegisterWorker {
                    request_id: 1,
                    node_id,
                    job_id,
                    address: format!("w{n}"),
                    pid: 1,
                    executable: "app".into(),
                    args: Vec::new(),
                    cwd: String::new(),
                    shm_path: String::new(),
                    host_id: String::new(),
                },
            );
            match &out[..] {
                [Out::Send(_, Msg::Registered { id, job_id, .. })] => (*id, *job_id),
                other => panic!("no registration: {other:?}"),
            }
        }
        pub(super) fn actor(&mut self, from: u64, actor: ActorInfo) -> Msg {
            match self
                .send(
                    from,
                    Msg::RegisterActor {
                        request_id: 7,
                        actor,
                    },
                )
                .pop()
            {
                Some(Out::Send(_, m)) => m,
                other => panic!("no answer: {other:?}"),
            }
        }
        pub(super) fn lookup(&mut self, name: &str) -> Option<ActorInfo> {
            let m = self.send(
                9,
                Msg::LookupActor {
                    request_id: 3,
                    name: name.into(),
                    actor_id: 0,
                },
            );
            match m.into_iter().next() {
                Some(Out::Send(_, Msg::ActorReply { found, actor, .. })) => found.then_some(actor),
                other => panic!("no answer: {other:?}"),
            }
        }
    }

    /// The messages sent to connection `n`.
    pub(super) fn to(out: &[Out<C>], n: u64) -> Vec<&Msg> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(c, m) if c.0 == n => Some(m),
                _ => None,
            })
            .collect()
    }

    pub(super) fn named(name: &str, id: u64, worker: u64, node_id: u64) -> ActorInfo {
        ActorInfo {
            actor_id: id,
            name: name.into(),
            class_name: "A".into(),
            worker,
            node_id,
            alive: true,
            ..ActorInfo::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::cluster::proto::{PgBundle, Resource};

    #[test]
    fn a_node_whose_connection_closes_is_declared_dead_to_every_subscriber() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let b = t.node(2, 2.0);
        assert_eq!((a, b), (1, 2));
        let (w, _) = t.worker(3, b, 1);
        t.actor(3, named("x", 100, w, b));
        let out = t.close(2);
        // Node 1 hears that node 2 died; node 2's own connection is closed (its `Stop` is
        // sent anyway, harmless).
        let notices = to(&out, 1);
        assert!(
            matches!(notices[..], [Msg::NodeEvent { node }] if node.node_id == b && !node.alive && node.death == "its connection closed"),
            "{notices:?}"
        );
        assert_eq!(t.gcs.node_alive(b), Some(false));
        assert_eq!(t.gcs.node_alive(a), Some(true));
        // Its worker is not alive, its actor is gone from lookups.
        let info = t.send(
            9,
            Msg::GetWorker {
                request_id: 1,
                index: w,
            },
        );
        assert!(matches!(
            to(&info, 9)[..],
            [Msg::WorkerInfo { alive: false, .. }]
        ));
        assert_eq!(t.lookup("x"), None);
    }

    #[test]
    fn a_silent_node_is_declared_dead_and_told_again_when_it_wakes_up() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let b = t.node(2, 2.0);
        t.tick(Duration::from_secs(6));
        let hb = |id| Msg::Heartbeat {
            node_id: id,
            resources: Vec::new(),
            store_used: 0,
            store_pages: String::new(),
        };
        assert!(t.send(1, hb(a)).is_empty());
        let out = t.tick(Duration::from_secs(6));
        // Node 2 was silent for 12 s: dead, told so, and node 1 hears it.
        assert_eq!(t.gcs.node_alive(b), Some(false));
        assert_eq!(t.gcs.node_alive(a), Some(true));
        assert!(
            matches!(to(&out, 2)[..], [Msg::Stop { reason }, ..] if reason.starts_with(DECLARED_DEAD)),
            "{out:?}"
        );
        assert!(matches!(to(&out, 1)[..], [Msg::NodeEvent { node }] if !node.alive));
        // It wakes up: its heartbeat is answered with `Stop`, and it stays dead.
        let out = t.send(2, hb(b));
        assert!(
            matches!(to(&out, 2)[..], [Msg::Stop { reason }] if reason.contains("no heartbeat"))
        );
        assert_eq!(t.gcs.node_alive(b), Some(false));
        // No second death notice.
        t.send(1, hb(a));
        assert!(to(&t.tick(Duration::from_secs(5)), 1).is_empty());
    }

    #[test]
    fn a_job_ends_when_its_driver_leaves_and_its_workers_are_forgotten() {
        let mut t = T::new();
        let n = t.node(1, 2.0);
        let (driver, job) = t.worker(5, 0, 0);
        let (other_driver, job2) = t.worker(6, 0, 0);
        assert_eq!((job, job2), (1, 2));
        assert_ne!(driver, other_driver);
        let (w, wjob) = t.worker(7, n, job);
        assert_eq!(wjob, job);
        t.actor(7, named("", 200, w, n));
        assert_eq!(t.gcs.sizes(), (3, 2, 1));
        let out = t.close(5);
        assert!(
            matches!(to(&out, 1)[..], [Msg::JobEvent { job_id, finished: true }] if *job_id == job),
            "{out:?}"
        );
        // The job's worker exits: forgotten, its actor listed dead with the reason.
        t.close(7);
        assert_eq!(t.gcs.sizes(), (1, 1, 1));
        let listed = t.send(9, Msg::ListActors { request_id: 1 });
        assert!(
            matches!(to(&listed, 9)[..], [Msg::Actors { actors, .. }] if !actors[0].alive && actors[0].death.contains("exited")),
            "{listed:?}"
        );
        // A worker closing ends no job; the second driver's job runs on.
        assert!(to(&t.close(7), 1).is_empty());
        assert_eq!(t.gcs.sizes().1, 1);
    }

    #[test]
    fn a_named_actor_holds_its_name_until_it_dies_then_the_name_is_free() {
        let mut t = T::new();
        let n = t.node(1, 2.0);
        assert!(matches!(
            t.actor(3, named("svc", 10, 4, n)),
            Msg::ActorReply { found: true, .. }
        ));
        assert_eq!(t.lookup("svc").map(|a| a.actor_id), Some(10));
        // Taken while the first lives.
        assert!(matches!(
            t.actor(3, named("svc", 11, 4, n)),
            Msg::ActorReply { found: false, error, .. } if error.contains("taken")
        ));
        // Re-registering itself (a restart) is fine.
        let mut again = named("svc", 10, 5, n);
        again.num_restarts = 1;
        assert!(matches!(
            t.actor(3, again),
            Msg::ActorReply { found: true, .. }
        ));
        // A death report that does not know the name keeps it, and the actor is not found.
        let death = ActorInfo {
            actor_id: 10,
            alive: false,
            death: "killed".into(),
            ..ActorInfo::default()
        };
        assert!(
            matches!(t.actor(3, death), Msg::ActorReply { actor, .. } if actor.name == "svc" && actor.node_id == n)
        );
        assert_eq!(t.lookup("svc"), None);
        // The name is free for a new actor; a late death report of the old one leaves it.
        assert!(matches!(
            t.actor(3, named("svc", 12, 4, n)),
            Msg::ActorReply { found: true, .. }
        ));
        let late = ActorInfo {
            actor_id: 10,
            alive: false,
            ..ActorInfo::default()
        };
        t.actor(3, late);
        assert_eq!(t.lookup("svc").map(|a| a.actor_id), Some(12));
    }

    #[test]
    fn dead_actors_beyond_the_bound_are_forgotten_with_their_names() {
        let mut t = T::new();
        let n = t.node(1, 2.0);
        let (w, _) = t.worker(3, n, 1);
        for id in 1..=(MAX_DEAD_ACTORS as u64 + 5) {
            t.actor(3, named(&format!("a{id}"), id, w, n));
        }
        t.close(3);
        assert_eq!(t.gcs.sizes().2, MAX_DEAD_ACTORS);
        assert!(!t.gcs.named.contains_key("a1"));
        assert!(
            t.gcs
                .named
                .contains_key(&format!("a{}", MAX_DEAD_ACTORS + 5))
        );
    }

    #[test]
    fn kv_put_answers_the_previous_value_and_get_the_current_one() {
        let mut t = T::new();
        let put = |t: &mut T, v: &[u8]| {
            t.send(
                1,
                Msg::KvPut {
                    request_id: 1,
                    key: "k".into(),
                    value: v.to_vec(),
                },
            )
        };
        assert!(matches!(
            to(&put(&mut t, b"a"), 1)[..],
            [Msg::KvValue { found: false, .. }]
        ));
        assert!(
            matches!(to(&put(&mut t, b"b"), 1)[..], [Msg::KvValue { found: true, value, .. }] if value == b"a")
        );
        let get = |t: &mut T, k: &str| {
            t.send(
                2,
                Msg::KvGet {
                    request_id: 2,
                    key: k.into(),
                },
            )
        };
        assert!(
            matches!(to(&get(&mut t, "k"), 2)[..], [Msg::KvValue { found: true, value, .. }] if value == b"b")
        );
        assert!(matches!(
            to(&get(&mut t, "nope"), 2)[..],
            [Msg::KvValue { found: false, .. }]
        ));
    }

    fn group(pg_id: u64, cpus: &[f64]) -> PgRow {
        PgRow {
            pg_id,
            strategy: 1,
            bundles: cpus
                .iter()
                .enumerate()
                .map(|(i, c)| PgBundle {
                    index: i as u32,
                    node_id: 0,
                    resources: vec![Resource {
                        name: "CPU".into(),
                        total: *c,
                        available: *c,
                    }],
                    ..PgBundle::default()
                })
                .collect(),
            ..PgRow::default()
        }
    }

    fn prepares(out: &[Out<C>]) -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Prepare { pg_id, node_id, .. } => Some((*pg_id, *node_id)),
                _ => None,
            })
            .collect()
    }

    /// A process holding a handle follows the group: `PgWatch` answers the row as it stands,
    /// then the watcher hears of the group's creation (with the CPU sets the raylet gave) and
    /// of its removal; a group the GCS never knew reads REMOVED.
    #[test]
    fn a_watcher_hears_of_creation_and_removal() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let pg_msg = |op, group| Msg::Pg {
            op,
            request_id: 4,
            group,
            error: String::new(),
            groups: Vec::new(),
        };
        t.send(5, pg_msg(PgOp::Create, group(1, &[1.0])));
        let out = t.send(
            7,
            Msg::PgWatch {
                request_id: 9,
                pg_id: 1,
            },
        );
        assert!(
            matches!(to(&out, 7)[..], [Msg::Pg { op: PgOp::Reply, request_id: 9, group, .. }] if group.state == pg::PENDING)
        );
        let at = t.at();
        let cpus = PgBundle {
            index: 0,
            cpus: vec![1],
            ..PgBundle::default()
        };
        t.gcs.handle(
            at,
            Event::BundleCpus {
                pg_id: 1,
                bundles: vec![cpus],
            },
        );
        let out = t.gcs.handle(
            at,
            Event::Prepared {
                pg_id: 1,
                node_id: a,
                error: None,
            },
        );
        assert!(
            matches!(to(&out, 7)[..], [Msg::Pg { op: PgOp::Reply, request_id: 0, group, .. }] if group.state == pg::CREATED && group.bundles[0].cpus == [1])
        );
        let gone = PgRow {
            pg_id: 1,
            ..PgRow::default()
        };
        let out = t.send(5, pg_msg(PgOp::Remove, gone));
        assert!(
            matches!(to(&out, 7)[..], [Msg::Pg { op: PgOp::Reply, request_id: 0, group, .. }] if group.state == pg::REMOVED)
        );
        let out = t.send(
            7,
            Msg::PgWatch {
                request_id: 10,
                pg_id: 99,
            },
        );
        assert!(
            matches!(to(&out, 7)[..], [Msg::Pg { op: PgOp::Reply, request_id: 10, group, .. }] if group.state == pg::REMOVED && group.pg_id == 99)
        );
    }

    #[test]
    fn a_group_is_committed_when_every_raylet_prepared_and_rolled_back_otherwise() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let b = t.node(2, 2.0);
        let create = |pg_id| Msg::Pg {
            op: PgOp::Create,
            request_id: 4,
            group: group(pg_id, &[1.0, 1.0]),
            error: String::new(),
            groups: Vec::new(),
        };
        let out = t.send(5, create(1));
        assert!(
            matches!(to(&out, 5)[..], [Msg::Pg { op: PgOp::Reply, group, .. }] if group.state == pg::PENDING)
        );
        // SPREAD: one bundle per node.
        assert_eq!(prepares(&out), vec![(1, a), (1, b)]);
        let at = t.at();
        assert!(
            t.gcs
                .handle(
                    at,
                    Event::Prepared {
                        pg_id: 1,
                        node_id: a,
                        error: None
                    }
                )
                .is_empty()
        );
        let out = t.gcs.handle(
            at,
            Event::Prepared {
                pg_id: 1,
                node_id: b,
                error: None,
            },
        );
        assert!(matches!(
            to(&out, 1)[..],
            [Msg::Pg {
                op: PgOp::Commit,
                ..
            }]
        ));
        assert!(matches!(
            to(&out, 2)[..],
            [Msg::Pg {
                op: PgOp::Commit,
                ..
            }]
        ));
        assert!(
            matches!(to(&out, 5)[..], [Msg::Pg { op: PgOp::Reply, group, .. }] if group.state == pg::CREATED)
        );
        // A second group: one raylet refuses; both cancel, and a retry is due.
        let out = t.send(5, create(2));
        assert_eq!(prepares(&out), vec![(2, a), (2, b)]);
        t.gcs.handle(
            at,
            Event::Prepared {
                pg_id: 2,
                node_id: a,
                error: None,
            },
        );
        let out = t.gcs.handle(
            at,
            Event::Prepared {
                pg_id: 2,
                node_id: b,
                error: Some("no room".into()),
            },
        );
        assert!(matches!(
            to(&out, 1)[..],
            [Msg::Pg {
                op: PgOp::Cancel,
                ..
            }]
        ));
        assert!(matches!(
            to(&out, 2)[..],
            [Msg::Pg {
                op: PgOp::Cancel,
                ..
            }]
        ));
        assert!(
            out.iter()
                .any(|o| matches!(o, Out::Later(_, Event::PgRetry)))
        );
        // The retry prepares again; the owner leaving removes the pending group (and cancels
        // what is being prepared).
        let out = t.gcs.handle(at, Event::PgRetry);
        assert_eq!(prepares(&out), vec![(2, a), (2, b)]);
        let out = t.close(5);
        assert_eq!(
            to(&out, 1).len(),
            2,
            "both groups cancelled at node 1: {out:?}"
        );
        assert!(t.gcs.pgs.groups.is_empty());
    }

    #[test]
    fn a_listing_answers_when_every_worker_did_or_partially_when_due() {
        let mut t = T::new();
        let n = t.node(1, 2.0);
        t.worker(3, n, 1);
        t.worker(4, n, 1);
        let out = t.send(9, Msg::ListWork { request_id: 8 });
        let id = match to(&out, 3)[..] {
            [Msg::ListWork { request_id }] => *request_id,
            _ => panic!("{out:?}"),
        };
        assert!(matches!(
            out.last(),
            Some(Out::Later(_, Event::ListingDue { .. }))
        ));
        let part = Msg::Work {
            request_id: id,
            tasks: vec![TaskRow {
                task_id: 1,
                ..TaskRow::default()
            }],
            objects: Vec::new(),
            partial: false,
        };
        assert!(t.send(3, part).is_empty());
        let at = t.at();
        let out = t.gcs.handle(at, Event::ListingDue { id });
        assert!(
            matches!(to(&out, 9)[..], [Msg::Work { request_id: 8, tasks, partial: true, .. }] if tasks.len() == 1)
        );
        // Late parts and timers of a finished listing change nothing.
        assert!(t.gcs.handle(at, Event::ListingDue { id }).is_empty());
    }

    #[test]
    fn stop_tells_every_live_node_and_the_shell() {
        let mut t = T::new();
        t.node(1, 2.0);
        t.node(2, 2.0);
        t.close(2);
        let out = t.send(
            9,
            Msg::Stop {
                reason: "manta stop".into(),
            },
        );
        assert_eq!(to(&out, 1).len(), 1);
        assert!(to(&out, 2).is_empty());
        assert!(matches!(out.last(), Some(Out::StopRequested)));
    }
}

#[cfg(test)]
mod restart_tests {
    use super::tests_support::*;
    use super::*;
    use crate::cluster::proto;

    /// The tables saved, through the wire encoding, and restored at `at`.
    fn restart(t: &T, at: Instant) -> GcsTables<C> {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let records: Vec<Msg> = t
            .gcs
            .snapshot()
            .iter()
            .map(|m| {
                fbb.reset();
                let bytes = proto::encode(m, &mut fbb).to_vec();
                proto::decode(m.tag_u64(), &bytes).expect("a saved record decodes")
            })
            .collect();
        GcsTables::restore(Duration::from_secs(10), records, at).expect("restored")
    }

    fn rejoin_worker(index: u64) -> Msg {
        Msg::RejoinWorker {
            request_id: 5,
            index,
            node_id: 0,
            job_id: 0,
            address: format!("w{index}-again"),
            shm_path: String::new(),
            host_id: String::new(),
            driver: false,
        }
    }

    #[test]
    fn restored_tables_take_their_members_back_and_give_up_the_missing() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let b = t.node(2, 2.0);
        let (driver, job) = t.worker(5, 0, 0);
        let (w, _) = t.worker(6, a, job);
        t.actor(6, named("svc", 77, w, a));
        t.send(
            5,
            Msg::KvPut {
                request_id: 1,
                key: "k".into(),
                value: b"v".to_vec(),
            },
        );
        assert!(!t.gcs.take_changes().is_empty());
        // Lookups and heartbeats change nothing saved.
        t.lookup("svc");
        t.send(
            1,
            Msg::Heartbeat {
                node_id: a,
                resources: Vec::new(),
                store_used: 0,
                store_pages: String::new(),
            },
        );
        assert!(t.gcs.take_changes().is_empty());

        // The head dies; restarted, its tables come back without connections.
        let mut r = T::with(restart(&t, t.at()), t.t0, t.now);
        assert_eq!(r.lookup("svc").map(|x| x.actor_id), Some(77));
        let got = r.send(
            9,
            Msg::KvGet {
                request_id: 2,
                key: "k".into(),
            },
        );
        assert!(
            matches!(to(&got, 9)[..], [Msg::KvValue { found: true, value, .. }] if value == b"v")
        );
        // New ids continue where the old GCS stopped.
        let (fresh, fresh_job) = r.worker(8, 0, 0);
        assert!(fresh > w && fresh_job > job, "{fresh} {fresh_job}");

        // Node a's raylet rejoins under its id (a new connection) and subscribes.
        let rejoined = r.send(
            11,
            Msg::RegisterNode {
                request_id: 3,
                node: Node {
                    node_id: a,
                    address: "10.0.0.1:2".into(),
                    ..Node::default()
                },
            },
        );
        assert!(
            matches!(to(&rejoined, 11)[..], [Msg::Registered { id, error, .. }] if *id == a && error.is_empty()),
            "{rejoined:?}"
        );
        r.send(11, Msg::Subscribe { request_id: 0 });
        // The driver and the worker rejoin; an unknown index is refused.
        let back = r.send(15, rejoin_worker(driver));
        assert!(
            matches!(to(&back, 15)[..], [Msg::Registered { id, job_id, error, .. }] if *id == driver && *job_id == job && error.is_empty())
        );
        r.send(16, rejoin_worker(w));
        let refused = r.send(17, rejoin_worker(999));
        assert!(
            matches!(to(&refused, 17)[..], [Msg::Registered { error, .. }] if error.contains("unknown"))
        );

        // Node b never comes back: dead after the node timeout, and the rejoined hear it.
        r.send(
            11,
            Msg::Heartbeat {
                node_id: a,
                resources: Vec::new(),
                store_used: 0,
                store_pages: String::new(),
            },
        );
        assert!(to(&r.tick(Duration::from_secs(5)), 11).is_empty());
        r.send(
            11,
            Msg::Heartbeat {
                node_id: a,
                resources: Vec::new(),
                store_used: 0,
                store_pages: String::new(),
            },
        );
        let out = r.tick(Duration::from_secs(6));
        assert!(
            matches!(to(&out, 11)[..], [Msg::NodeEvent { node }] if node.node_id == b && !node.alive),
            "{out:?}"
        );
        assert_eq!(r.gcs.node_alive(a), Some(true));
        // Too late to rejoin as b.
        let late = r.send(
            12,
            Msg::RegisterNode {
                request_id: 4,
                node: Node {
                    node_id: b,
                    ..Node::default()
                },
            },
        );
        assert!(
            matches!(to(&late, 12)[..], [Msg::Registered { error, .. }] if error.starts_with(DECLARED_DEAD))
        );
        // The rejoined driver leaving ends its job as before.
        let out = r.close(15);
        assert!(
            matches!(to(&out, 11)[..], [Msg::JobEvent { job_id, finished: true }] if *job_id == job)
        );
    }

    #[test]
    fn a_rejoining_node_is_sent_its_created_groups_commits_before_its_answer() {
        use crate::cluster::proto::{PgBundle, Resource};
        let mut t = T::new();
        t.node(1, 2.0);
        let b = t.node(2, 2.0);
        t.worker(5, 0, 0);
        let group = PgRow {
            pg_id: 7,
            strategy: 1,
            bundles: (0..2)
                .map(|i| PgBundle {
                    index: i,
                    node_id: 0,
                    resources: vec![Resource {
                        name: "CPU".into(),
                        total: 1.0,
                        available: 1.0,
                    }],
                    ..PgBundle::default()
                })
                .collect(),
            ..PgRow::default()
        };
        let out = t.send(
            5,
            Msg::Pg {
                op: PgOp::Create,
                request_id: 1,
                group,
                error: String::new(),
                groups: Vec::new(),
            },
        );
        let at = t.at();
        for o in out {
            if let Out::Prepare { pg_id, node_id, .. } = o {
                t.gcs.handle(
                    at,
                    Event::Prepared {
                        pg_id,
                        node_id,
                        error: None,
                    },
                );
            }
        }
        let mut r = T::with(restart(&t, t.at()), t.t0, t.now);
        let out = r.send(
            11,
            Msg::RegisterNode {
                request_id: 3,
                node: Node {
                    node_id: b,
                    ..Node::default()
                },
            },
        );
        let sent = to(&out, 11);
        assert!(
            matches!(sent[..], [Msg::Pg { op: PgOp::Commit, group, .. }, Msg::Registered { .. }] if group.pg_id == 7 && group.bundles.iter().all(|x| x.node_id == b)),
            "{sent:?}"
        );
    }

    #[test]
    fn a_driver_that_does_not_rejoin_ends_its_job_after_the_node_timeout() {
        let mut t = T::new();
        let a = t.node(1, 2.0);
        let (_, job) = t.worker(5, 0, 0);
        let mut r = T::with(restart(&t, t.at()), t.t0, t.now);
        r.send(
            11,
            Msg::RegisterNode {
                request_id: 3,
                node: Node {
                    node_id: a,
                    ..Node::default()
                },
            },
        );
        r.send(11, Msg::Subscribe { request_id: 0 });
        let hb = Msg::Heartbeat {
            node_id: a,
            resources: Vec::new(),
            store_used: 0,
            store_pages: String::new(),
        };
        r.send(11, hb.clone());
        assert!(to(&r.tick(Duration::from_secs(8)), 11).is_empty());
        r.send(11, hb);
        let out = r.tick(Duration::from_secs(3));
        assert!(
            matches!(to(&out, 11)[..], [Msg::JobEvent { job_id, finished: true }] if *job_id == job),
            "{out:?}"
        );
        assert_eq!(r.gcs.sizes(), (0, 0, 0));
    }

    #[test]
    fn members_are_told_whether_the_tables_are_saved() {
        let saved = |t: &mut T, n| match t
            .send(
                n,
                Msg::RegisterNode {
                    request_id: 1,
                    node: Node::default(),
                },
            )
            .into_iter()
            .next()
        {
            Some(Out::Send(_, Msg::Registered { saved, .. })) => saved,
            other => panic!("{other:?}"),
        };
        let mut t = T::new();
        assert!(!saved(&mut t, 1));
        t.gcs.set_saves(true);
        assert!(saved(&mut t, 2));
        let (w, _) = t.worker(4, 1, 1);
        let mut r = T::with(restart(&t, t.at()), t.t0, t.now);
        r.gcs.set_saves(true);
        let back = r.send(3, rejoin_worker(w));
        assert!(
            matches!(to(&back, 3)[..], [Msg::Registered { saved: true, error, .. }] if error.is_empty())
        );
    }

    /// The saved entries, keyed.
    fn keyed(records: Vec<Msg>) -> HashMap<Key, Msg> {
        records
            .into_iter()
            .map(|m| (Key::of(&m).expect("a saved record"), m))
            .collect()
    }

    #[test]
    fn the_changes_replayed_are_the_tables_saved_whole() {
        use crate::cluster::proto::{PgBundle, Resource};
        let dir = std::env::temp_dir().join(format!("manta-gcs-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rewrites = 0;
        for seed in 1..=300u64 {
            let mut rng = crate::cluster::sim::Rng::new(seed);
            let mut t = T::new();
            // What the file holds: the first save writes everything, then only changes.
            let mut saved = keyed(t.gcs.snapshot());
            t.gcs.take_changes();
            // And a real journal of the same saves, compacted often (not synced: the tests
            // cannot tell).
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut store = super::super::gcs_store::GcsStore::new(&dir)
                .synced(false)
                .compacting_from(2 << 10);
            store.rewrite(&t.gcs.snapshot()).unwrap();
            let mut nodes: Vec<(u64, u64)> = Vec::new();
            let mut workers: Vec<(u64, u64)> = Vec::new();
            let mut next_actor = 1u64;
            let mut next_pg = 1u64;
            let mut trace = Vec::new();
            for step in 0..80u64 {
                let op = rng.below(11);
                trace.push(op);
                // A fresh connection number for what joins at this step.
                let c = 101 + step;
                match op {
                    0 => nodes.push((c, t.node(c, 2.0))),
                    1 => workers.push((c, t.worker(c, 0, 0).0)),
                    2 if !nodes.is_empty() => {
                        let (_, n) = nodes[rng.below(nodes.len() as u64) as usize];
                        workers.push((c, t.worker(c, n, 1).0));
                    }
                    3 if !workers.is_empty() => {
                        let (wc, w) = workers[rng.below(workers.len() as u64) as usize];
                        let name = if rng.chance(0.5) {
                            format!("n{}", rng.below(4))
                        } else {
                            String::new()
                        };
                        let node_id = nodes.first().map_or(0, |n| n.1);
                        t.actor(wc, named(&name, next_actor, w, node_id));
                        next_actor += 1;
                    }
                    4 if next_actor > 1 => {
                        let death = ActorInfo {
                            actor_id: 1 + rng.below(next_actor - 1),
                            alive: false,
                            death: "killed".into(),
                            ..ActorInfo::default()
                        };
                        t.actor(c, death);
                    }
                    5 => {
                        let key = format!("k{}", rng.below(3));
                        let value = vec![rng.below(256) as u8];
                        t.send(
                            c,
                            Msg::KvPut {
                                request_id: 1,
                                key,
                                value,
                            },
                        );
                    }
                    6 if !workers.is_empty() || !nodes.is_empty() => {
                        let all: Vec<u64> = workers
                            .iter()
                            .chain(&nodes)
                            .map(|(conn, _)| *conn)
                            .collect();
                        let gone = all[rng.below(all.len() as u64) as usize];
                        t.close(gone);
                    }
                    7 => {
                        for (conn, id) in nodes.clone() {
                            if rng.chance(0.7) {
                                t.send(
                                    conn,
                                    Msg::Heartbeat {
                                        node_id: id,
                                        resources: Vec::new(),
                                        store_used: 1,
                                        store_pages: "4 KiB".into(),
                                    },
                                );
                            }
                        }
                        t.tick(Duration::from_secs(1 + rng.below(8)));
                    }
                    8 if !workers.is_empty() => {
                        let (wc, _) = workers[rng.below(workers.len() as u64) as usize];
                        let group = PgRow {
                            pg_id: next_pg,
                            strategy: 0,
                            bundles: vec![PgBundle {
                                index: 0,
                                node_id: 0,
                                resources: vec![Resource {
                                    name: "CPU".into(),
                                    total: 1.0,
                                    available: 1.0,
                                }],
                                ..PgBundle::default()
                            }],
                            ..PgRow::default()
                        };
                        next_pg += 1;
                        let out = t.send(
                            wc,
                            Msg::Pg {
                                op: PgOp::Create,
                                request_id: 1,
                                group,
                                error: String::new(),
                                groups: Vec::new(),
                            },
                        );
                        let at = t.at();
                        for o in out {
                            if let Out::Prepare { pg_id, node_id, .. } = o {
                                let error = rng.chance(0.3).then(|| "no room".to_owned());
                                t.gcs.handle(
                                    at,
                                    Event::Prepared {
                                        pg_id,
                                        node_id,
                                        error,
                                    },
                                );
                            }
                        }
                    }
                    9 if next_pg > 1 => {
                        let group = PgRow {
                            pg_id: 1 + rng.below(next_pg - 1),
                            ..PgRow::default()
                        };
                        t.send(
                            c,
                            Msg::Pg {
                                op: PgOp::Remove,
                                request_id: 1,
                                group,
                                error: String::new(),
                                groups: Vec::new(),
                            },
                        );
                    }
                    _ => {
                        let at = t.at();
                        t.gcs.handle(at, Event::PgRetry);
                    }
                }
                let changes = t.gcs.take_changes();
                if store.needs_rewrite() {
                    store.rewrite(&t.gcs.snapshot()).unwrap();
                    rewrites += 1;
                } else {
                    store.append(&changes).unwrap();
                }
                for (k, m) in changes {
                    match m {
                        Some(m) => saved.insert(k, m),
                        None => saved.remove(&k),
                    };
                }
                let whole = keyed(t.gcs.snapshot());
                assert!(
                    saved == whole,
                    "seed {seed}, step {step} (ops {trace:?}): the changes replayed differ from \
                     the tables:\n{saved:#?}\nvs\n{whole:#?}"
                );
            }
            // The journal, compacted on the way, reads back as the tables, and a head
            // restored from it saves the same tables.
            let loaded = store.load().unwrap().expect("saved tables");
            let whole = keyed(t.gcs.snapshot());
            assert!(
                keyed(loaded.clone()) == whole,
                "seed {seed}: the journal read back differs from the tables"
            );
            let restored = GcsTables::<C>::restore(Duration::from_secs(1), loaded, Instant::now())
                .expect("restored");
            assert!(
                keyed(restored.snapshot()) == whole,
                "seed {seed}: the restored tables differ"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(rewrites > 300, "the journal was compacted {rewrites} times");
    }

    #[test]
    fn a_saved_table_of_another_version_is_refused() {
        let records = vec![Msg::GcsCounters {
            version: SAVED_VERSION + 1,
            next_node: 1,
            next_worker: 1,
            next_job: 1,
            address: String::new(),
        }];
        let r = GcsTables::<C>::restore(Duration::from_secs(1), records, Instant::now());
        assert!(r.is_err_and(|e| e.contains("version")));
        let r = GcsTables::<C>::restore(Duration::from_secs(1), Vec::new(), Instant::now());
        assert!(r.is_err());
    }
}
