//! The GCS (head): node table with health checks, worker and job tables, the actor directory
//! with named actors, a key-value store, and pub/sub of node and job events.
//!
//! All state sits behind one mutex: the GCS handles registrations and lookups, never the
//! per-task path, so contention is not a concern. Health: a node is dead when its connection
//! closes or it missed `health_check_failure_threshold` heartbeats in a row (the
//! configuration catalogue); its death is published, and the node is told
//! ([`DECLARED_DEAD`]): a stalled raylet that wakes up exits rather than run on, unseen,
//! holding its store. A job ends
//! when its driver's connection closes; raylets hear it and stop that job's workers.
//!
//! Retention: a worker whose connection closed leaves the worker table (a lookup of an unknown
//! index answers "not alive", as for a dead one), and at most `MAX_DEAD_ACTORS` dead actors
//! are kept for `manta list actors`, so finished jobs do not make the GCS grow.

use crate::sync::{Arc, Mutex};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::execute::SEP;
use super::peer::{Handler, Peer};
use super::pg;
use super::proto::{ActorInfo, Msg, Node, PgOp, PgRow};
use crate::sync::lock;

/// How a node learns that the GCS declared it dead: the reason of the `Stop` it is sent (at
/// once, and again in answer to any later heartbeat), which makes its raylet stop its workers
/// and exit with an error, releasing its store. A node declared dead never comes back under
/// its id; restarted, it joins as a new node.
pub(crate) const DECLARED_DEAD: &str = "declared dead by the GCS";

struct NodeEntry {
    node: Node,
    peer: Arc<Peer>,
    since: Instant,
    last_heard: Instant,
}

struct WorkerEntry {
    node_id: u64,
    job_id: u64,
    address: String,
    shm_path: String,
    host_id: String,
    alive: bool,
    peer: Arc<Peer>,
    is_driver: bool,
}

#[derive(Default)]
struct State {
    nodes: Vec<NodeEntry>,
    workers: HashMap<u64, WorkerEntry>,
    jobs: HashMap<u64, bool>,
    kv: HashMap<String, Vec<u8>>,
    actors: HashMap<u64, ActorInfo>,
    named: HashMap<String, u64>,
    subscribers: Vec<Arc<Peer>>,
    /// Listings being gathered from every worker, by the id sent to the workers.
    listings: HashMap<u64, Listing>,
    next_listing: u64,
    next_node: u64,
    next_worker: u64,
    next_job: u64,
    /// Placement groups (`pg.rs`).
    pgs: super::pg::GcsGroups,
}

/// A `manta list` answer being gathered.
struct Listing {
    asker: Arc<Peer>,
    request_id: u64,
    waiting: usize,
    tasks: Vec<super::proto::TaskRow>,
    objects: Vec<super::proto::ObjectRow>,
}

/// Dead actors the GCS keeps for `manta list actors` (as Ray's bounded cache of destroyed
/// actors); beyond that the oldest are forgotten.
const MAX_DEAD_ACTORS: usize = 1000;

/// How long the GCS waits for every worker's part of a listing.
const LISTING_TIMEOUT: Duration = Duration::from_secs(2);

/// The GCS's state and message handling.
#[derive(Default)]
pub(crate) struct Gcs {
    state: Mutex<State>,
    /// A node silent for this long is declared dead.
    node_timeout: Duration,
    /// Set when `manta stop` asked the cluster to stop.
    pub(crate) stop: tokio::sync::Notify,
}

impl std::fmt::Debug for Gcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gcs")
    }
}

fn node_view(e: &NodeEntry) -> Node {
    let mut n = e.node.clone();
    n.age_s = e.since.elapsed().as_secs_f64();
    n
}

impl Gcs {
    pub(crate) fn new(node_timeout: Duration) -> Arc<Gcs> {
        Arc::new(Gcs {
            node_timeout,
            state: Mutex::new(State {
                next_node: 1,
                next_listing: 1,
                next_worker: 1,
                next_job: 1,
                ..State::default()
            }),
            stop: tokio::sync::Notify::new(),
        })
    }

    fn publish(state: &mut State, msg: &Msg) {
        state.subscribers.retain(|p| !p.is_closed());
        for p in &state.subscribers {
            p.send(msg.clone());
        }
    }

    fn node_dead(state: &mut State, i: usize, why: &str) {
        let e = &mut state.nodes[i];
        if !e.node.alive {
            return;
        }
        e.node.alive = false;
        e.node.death = why.to_owned();
        tracing::warn!(node = e.node.node_id, address = %e.node.address, why, "node dead");
        let node = node_view(e);
        let node_id = node.node_id;
        for w in state.workers.values_mut() {
            if w.node_id == node_id {
                w.alive = false;
            }
        }
        for a in state.actors.values_mut() {
            if a.node_id == node_id && a.alive {
                a.alive = false;
                a.death = format!("its node {node_id} died ({why})");
            }
        }
        // A node merely silent may still run: tell it (it reads this when it wakes up).
        e.peer.send(Msg::Stop {
            reason: format!("{DECLARED_DEAD} ({why})"),
        });
        Self::publish(state, &Msg::NodeEvent { node });
        Self::pg_node_dead(state, node_id);
    }

    /// Node `node_id` died: the bundles of created groups it held are placed again
    /// (`pg.rs`, step 6).
    fn pg_node_dead(state: &mut State, node_id: u64) {
        let mut lost = Vec::new();
        for g in state.pgs.groups.values_mut() {
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
            tracing::warn!(
                pg = g.row.pg_id,
                node = node_id,
                "placement group rescheduling"
            );
            g.owner.send(pg::msg(PgOp::Reply, 0, g.row.clone(), ""));
        }
        for row in &lost {
            state.pgs.account(row, -1.0);
        }
        if !lost.is_empty() {
            state.pgs.retry_scheduled = true;
        }
    }

    /// Declares silent nodes dead (called periodically).
    pub(crate) fn check_health(&self) {
        let mut s = lock(&self.state);
        let silent: Vec<usize> = s
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, e)| e.node.alive && e.last_heard.elapsed() > self.node_timeout)
            .map(|(i, _)| i)
            .collect();
        for i in silent {
            Self::node_dead(&mut s, i, "no heartbeat");
        }
    }

    fn handle(&self, peer: &Arc<Peer>, msg: Msg) {
        let mut s = lock(&self.state);
        match msg {
            Msg::RegisterNode {
                request_id,
                mut node,
            } => {
                let id = s.next_node;
                s.next_node += 1;
                node.node_id = id;
                node.alive = true;
                tracing::info!(node = id, address = %node.address, "node joined");
                let now = Instant::now();
                s.nodes.push(NodeEntry {
                    node: node.clone(),
                    peer: peer.clone(),
                    since: now,
                    last_heard: now,
                });
                peer.send(Msg::Registered {
                    request_id,
                    id,
                    job_id: 0,
                    error: String::new(),
                });
                Self::publish(&mut s, &Msg::NodeEvent { node });
                s.pgs.retry_scheduled = true;
            }
            Msg::Heartbeat {
                node_id,
                resources,
                store_used,
                store_pages,
            } => {
                if let Some(e) = s.nodes.iter_mut().find(|e| e.node.node_id == node_id) {
                    if !e.node.alive {
                        // Declared dead: it must leave, not come back under this id.
                        peer.send(Msg::Stop {
                            reason: format!("{DECLARED_DEAD} ({})", e.node.death),
                        });
                        return;
                    }
                    e.last_heard = Instant::now();
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
                let index = s.next_worker;
                s.next_worker += 1;
                let is_driver = job_id == 0;
                let job_id = if is_driver {
                    let j = s.next_job;
                    s.next_job += 1;
                    s.jobs.insert(j, true);
                    tracing::info!(job = j, %executable, pid, "job started");
                    j
                } else {
                    job_id
                };
                s.workers.insert(
                    index,
                    WorkerEntry {
                        node_id,
                        job_id,
                        address,
                        shm_path,
                        host_id,
                        alive: true,
                        peer: peer.clone(),
                        is_driver,
                    },
                );
                peer.send(Msg::Registered {
                    request_id,
                    id: index,
                    job_id,
                    error: String::new(),
                });
            }
            Msg::GetNodes { request_id } => {
                let mut nodes: Vec<Node> = s.nodes.iter().map(node_view).collect();
                for n in &mut nodes {
                    n.workers = s
                        .workers
                        .values()
                        .filter(|w| {
                            w.node_id == n.node_id && w.alive && !w.is_driver && !w.peer.is_closed()
                        })
                        .count() as u32;
                }
                peer.send(Msg::Nodes { request_id, nodes });
            }
            Msg::GetWorker { request_id, index } => {
                let reply = match s.workers.get(&index) {
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
                peer.send(reply);
            }
            Msg::KvPut {
                request_id,
                key,
                value,
            } => {
                let old = s.kv.insert(key, value);
                peer.send(Msg::KvValue {
                    request_id,
                    found: old.is_some(),
                    value: old.unwrap_or_default(),
                });
            }
            Msg::KvGet { request_id, key } => {
                let v = s.kv.get(&key).cloned();
                peer.send(Msg::KvValue {
                    request_id,
                    found: v.is_some(),
                    value: v.unwrap_or_default(),
                });
            }
            Msg::RegisterActor { request_id, actor } => {
                let taken = actor.alive
                    && !actor.name.is_empty()
                    && s.named
                        .get(&actor.name)
                        .and_then(|id| s.actors.get(id))
                        .is_some_and(|a| a.alive && a.actor_id != actor.actor_id);
                if taken {
                    peer.send(Msg::ActorReply {
                        request_id,
                        found: false,
                        actor: ActorInfo::default(),
                        error: format!("the name {:?} is taken", actor.name),
                    });
                    return;
                }
                // A death report (alive: false) leaves the name table alone: the name may
                // already belong to a newer actor. A killer may not know the name or node
                // (a handle looked up by name): the directory keeps what it had.
                let mut actor = actor;
                if !actor.alive
                    && let Some(known) = s.actors.get(&actor.actor_id)
                {
                    if actor.name.is_empty() {
                        actor.name = known.name.clone();
                    }
                    if actor.node_id == 0 {
                        actor.node_id = known.node_id;
                    }
                }
                if !actor.name.is_empty() && actor.alive {
                    s.named.insert(actor.name.clone(), actor.actor_id);
                }
                s.actors.insert(actor.actor_id, actor.clone());
                peer.send(Msg::ActorReply {
                    request_id,
                    found: true,
                    actor,
                    error: String::new(),
                });
            }
            Msg::LookupActor {
                request_id,
                name,
                actor_id,
            } => {
                let id = if name.is_empty() {
                    Some(actor_id)
                } else {
                    s.named.get(&name).copied()
                };
                let found = id
                    .and_then(|id| s.actors.get(&id))
                    .filter(|a| a.alive)
                    .cloned();
                peer.send(Msg::ActorReply {
                    request_id,
                    found: found.is_some(),
                    actor: found.unwrap_or_default(),
                    error: String::new(),
                });
            }
            Msg::ListActors { request_id } => {
                let mut actors: Vec<ActorInfo> = s.actors.values().cloned().collect();
                actors.sort_by_key(|a| a.actor_id);
                peer.send(Msg::Actors { request_id, actors });
            }
            Msg::Subscribe { .. } => s.subscribers.push(peer.clone()),
            Msg::Stop { reason } => {
                tracing::info!(%reason, "cluster stop requested");
                Self::stop_nodes(&s, &reason);
                self.stop.notify_one();
            }
            other => {
                tracing::warn!(peer = %peer.name, message = other.name(), "unexpected message for the GCS: ignored");
            }
        }
    }

    /// Asks every live worker for its part of a listing; answers when all did, or after
    /// [`LISTING_TIMEOUT`] with what came (marked partial).
    fn start_listing(self: &Arc<Self>, asker: &Arc<Peer>, request_id: u64) {
        let mut s = lock(&self.state);
        let id = s.next_listing;
        s.next_listing += 1;
        let workers: Vec<Arc<Peer>> = s
            .workers
            .values()
            .filter(|w| w.alive && !w.peer.is_closed())
            .map(|w| w.peer.clone())
            .collect();
        if workers.is_empty() {
            asker.send(Msg::Work {
                request_id,
                tasks: Vec::new(),
                objects: Vec::new(),
                partial: false,
            });
            return;
        }
        s.listings.insert(
            id,
            Listing {
                asker: asker.clone(),
                request_id,
                waiting: workers.len(),
                tasks: Vec::new(),
                objects: Vec::new(),
            },
        );
        drop(s);
        for w in workers {
            w.send(Msg::ListWork { request_id: id });
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LISTING_TIMEOUT).await;
            me.finish_listing(id, true);
        });
    }

    fn listing_part(
        &self,
        id: u64,
        tasks: Vec<super::proto::TaskRow>,
        objects: Vec<super::proto::ObjectRow>,
    ) {
        let done = {
            let mut s = lock(&self.state);
            let Some(l) = s.listings.get_mut(&id) else {
                return;
            };
            l.tasks.extend(tasks);
            l.objects.extend(objects);
            l.waiting = l.waiting.saturating_sub(1);
            l.waiting == 0
        };
        if done {
            self.finish_listing(id, false);
        }
    }

    fn finish_listing(&self, id: u64, partial: bool) {
        let Some(mut l) = lock(&self.state).listings.remove(&id) else {
            return;
        };
        l.tasks.sort_by_key(|t| t.task_id);
        l.objects.sort_by_key(|o| o.object_id);
        l.asker.send(Msg::Work {
            request_id: l.request_id,
            tasks: l.tasks,
            objects: l.objects,
            partial,
        });
    }

    fn stop_nodes(s: &State, reason: &str) {
        for e in s.nodes.iter().filter(|e| e.node.alive) {
            e.peer.send(Msg::Stop {
                reason: reason.to_owned(),
            });
        }
    }

    /// Tells every live node to stop.
    pub(crate) fn stop_all(&self, reason: &str) {
        Self::stop_nodes(&lock(&self.state), reason);
    }

    fn closed(&self, peer: &Arc<Peer>) {
        let mut s = lock(&self.state);
        if let Some(i) = s.nodes.iter().position(|e| Arc::ptr_eq(&e.peer, peer)) {
            Self::node_dead(&mut s, i, "its connection closed");
        }
        let gone: Vec<(u64, u64, bool)> = s
            .workers
            .iter()
            .filter(|(_, w)| Arc::ptr_eq(&w.peer, peer))
            .map(|(i, w)| (*i, w.job_id, w.is_driver))
            .collect();
        for (index, job, driver) in gone {
            // Forgotten, not kept as dead: the entry held the closed connection (its buffers),
            // ≈ 19 KB per finished job. `GetWorker` of an unknown index answers "not alive".
            s.workers.remove(&index);
            for a in s.actors.values_mut() {
                if a.worker == index && a.alive {
                    a.alive = false;
                    a.death = format!("its worker process {index} exited");
                }
            }
            if driver && s.jobs.insert(job, false) == Some(true) {
                tracing::info!(job, "job finished (driver left)");
                Self::publish(
                    &mut s,
                    &Msg::JobEvent {
                        job_id: job,
                        finished: true,
                    },
                );
            }
        }
        s.subscribers.retain(|p| !Arc::ptr_eq(p, peer));
        Self::forget_dead_actors(&mut s);
        // A group's lifetime follows its creator's unless detached.
        let orphans: Vec<u64> = s
            .pgs
            .groups
            .values()
            .filter(|g| !g.row.detached && Arc::ptr_eq(&g.owner, peer))
            .map(|g| g.row.pg_id)
            .collect();
        for id in &orphans {
            tracing::info!(pg = id, "placement group removed with its creator");
            Self::pg_remove(&mut s, *id);
        }
        if !orphans.is_empty() {
            s.pgs.retry_scheduled = true;
        }
    }

    /// Keeps at most [`MAX_DEAD_ACTORS`] dead actors (the oldest are forgotten first, with
    /// their names), so the table does not grow with every finished job.
    fn forget_dead_actors(s: &mut State) {
        let mut dead: Vec<u64> = s
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
            if let Some(a) = s.actors.remove(id)
                && s.named.get(&a.name) == Some(id)
            {
                s.named.remove(&a.name);
            }
        }
    }
}

impl Gcs {
    /// A placement-group message (see `pg.rs` for the protocol).
    fn pg_message(self: &Arc<Self>, peer: &Arc<Peer>, op: PgOp, request_id: u64, group: PgRow) {
        let mut s = lock(&self.state);
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
                if !group.name.is_empty() && s.pgs.names.contains_key(&group.name) {
                    peer.send(reply(
                        pg::REMOVED,
                        format!(
                            "name: a placement group named {:?} exists already",
                            group.name
                        ),
                    ));
                    return;
                }
                let rooms = Self::rooms(&s);
                let bundles: Vec<Vec<(String, f64)>> = group
                    .bundles
                    .iter()
                    .map(|b| {
                        b.resources
                            .iter()
                            .map(|r| (r.name.clone(), r.total))
                            .collect()
                    })
                    .collect();
                if let pg::Choice::Infeasible(i) = pg::choose(&rooms, &bundles, group.strategy) {
                    let totals: Vec<String> = rooms
                        .iter()
                        .map(|r| format!("node {}: {:?}", r.node_id, r.totals))
                        .collect();
                    peer.send(reply(
                        pg::REMOVED,
                        format!("infeasible: bundle {i}{SEP}{}", totals.join("; ")),
                    ));
                    return;
                }
                let mut row = group.clone();
                row.state = pg::PENDING;
                if !row.name.is_empty() {
                    s.pgs.names.insert(row.name.clone(), row.pg_id);
                }
                s.pgs.groups.insert(
                    row.pg_id,
                    pg::GcsGroup {
                        row: row.clone(),
                        owner: peer.clone(),
                        placing: false,
                    },
                );
                peer.send(reply(pg::PENDING, String::new()));
                drop(s);
                self.pg_try_place();
            }
            PgOp::Remove => {
                let state = if Self::pg_remove(&mut s, group.pg_id) {
                    pg::REMOVED
                } else {
                    pg::PENDING
                };
                peer.send(pg::msg(
                    PgOp::Reply,
                    request_id,
                    PgRow { state, ..group },
                    String::new(),
                ));
                drop(s);
                self.pg_try_place();
            }
            PgOp::List => {
                let rows = s.pgs.rows();
                peer.send(Msg::Pg {
                    op: PgOp::Groups,
                    request_id,
                    group: PgRow::default(),
                    error: String::new(),
                    groups: rows,
                });
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
    fn rooms(s: &State) -> Vec<pg::NodeRoom> {
        s.nodes
            .iter()
            .filter(|e| e.node.alive)
            .map(|e| {
                let totals: Vec<(String, f64)> = e
                    .node
                    .resources
                    .iter()
                    .filter(|r| !r.name.contains("_group_") && r.name != "object_store_memory")
                    .map(|r| (r.name.clone(), r.total))
                    .collect();
                let mut free = totals.clone();
                if let Some(reserved) = s.pgs.reserved.get(&e.node.node_id) {
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
    fn pg_remove(s: &mut State, pg_id: u64) -> bool {
        let Some(g) = s.pgs.groups.remove(&pg_id) else {
            return false;
        };
        if s.pgs.names.get(&g.row.name) == Some(&pg_id) {
            s.pgs.names.remove(&g.row.name);
        }
        if g.placing || matches!(g.row.state, pg::CREATED | pg::RESCHEDULING) {
            s.pgs.account(&g.row, -1.0);
            Self::pg_cancel_at_raylets(s, &g.row);
        }
        let mut row = g.row;
        row.state = pg::REMOVED;
        s.pgs.removed.push_back(row);
        if s.pgs.removed.len() > pg::KEPT_REMOVED {
            s.pgs.removed.pop_front();
        }
        true
    }

    fn pg_cancel_at_raylets(s: &State, row: &PgRow) {
        let mut nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node_id in nodes {
            if let Some(e) = s.nodes.iter().find(|e| e.node.node_id == node_id) {
                e.peer
                    .send(pg::msg(PgOp::Cancel, 0, pg::row_on(row, node_id), ""));
            }
        }
    }

    /// Tries to place every pending group not being placed: chooses nodes, then runs the
    /// two-phase reservation for each group that has them.
    fn pg_try_place(self: &Arc<Self>) {
        let mut s = lock(&self.state);
        s.pgs.retry_scheduled = false;
        let mut ids: Vec<u64> = s
            .pgs
            .groups
            .values()
            .filter(|g| matches!(g.row.state, pg::PENDING | pg::RESCHEDULING) && !g.placing)
            .map(|g| g.row.pg_id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let rooms = Self::rooms(&s);
            let Some(g) = s.pgs.groups.get(&id) else {
                continue;
            };
            if g.row.state == pg::RESCHEDULING {
                let Ok(chosen) = pg::choose_missing(&rooms, &g.row) else {
                    continue;
                };
                let mut row = g.row.clone();
                for (index, node) in &chosen {
                    if let Some(b) = row.bundles.iter_mut().find(|b| b.index == *index) {
                        b.node_id = *node;
                    }
                }
                // Only the bundles placed again go to the raylets (and are counted).
                let fresh = PgRow {
                    bundles: row
                        .bundles
                        .iter()
                        .filter(|b| chosen.iter().any(|(i, _)| *i == b.index))
                        .cloned()
                        .collect(),
                    ..row.clone()
                };
                s.pgs.account(&fresh, 1.0);
                if let Some(g) = s.pgs.groups.get_mut(&id) {
                    g.row = row;
                    g.placing = true;
                }
                let mut distinct: Vec<u64> = chosen.iter().map(|(_, n)| *n).collect();
                distinct.sort_unstable();
                distinct.dedup();
                let targets: Vec<(u64, Arc<Peer>, PgRow)> = distinct
                    .into_iter()
                    .filter_map(|node_id| {
                        let peer = s
                            .nodes
                            .iter()
                            .find(|e| e.node.node_id == node_id)?
                            .peer
                            .clone();
                        Some((node_id, peer, pg::row_on(&fresh, node_id)))
                    })
                    .collect();
                let me = self.clone();
                tokio::spawn(async move { me.pg_two_phase(id, targets).await });
                continue;
            }
            let bundles: Vec<Vec<(String, f64)>> = g
                .row
                .bundles
                .iter()
                .map(|b| {
                    b.resources
                        .iter()
                        .map(|r| (r.name.clone(), r.total))
                        .collect()
                })
                .collect();
            let pg::Choice::Nodes(nodes) = pg::choose(&rooms, &bundles, g.row.strategy) else {
                continue;
            };
            let mut row = g.row.clone();
            for (b, n) in row.bundles.iter_mut().zip(&nodes) {
                b.node_id = *n;
            }
            s.pgs.account(&row, 1.0);
            if let Some(g) = s.pgs.groups.get_mut(&id) {
                g.row = row.clone();
                g.placing = true;
            }
            let mut targets = Vec::new();
            let mut distinct = nodes.clone();
            distinct.sort_unstable();
            distinct.dedup();
            for node_id in distinct {
                let peer = s
                    .nodes
                    .iter()
                    .find(|e| e.node.node_id == node_id)
                    .map(|e| e.peer.clone());
                if let Some(peer) = peer {
                    targets.push((node_id, peer, pg::row_on(&row, node_id)));
                }
            }
            let me = self.clone();
            tokio::spawn(async move { me.pg_two_phase(id, targets).await });
        }
    }

    /// Phase one (prepare at every chosen raylet), then commit or roll back everything.
    async fn pg_two_phase(self: Arc<Self>, pg_id: u64, targets: Vec<(u64, Arc<Peer>, PgRow)>) {
        let asks: Vec<_> = targets
            .iter()
            .map(|(_, peer, row)| {
                let row = row.clone();
                peer.request(move |id| pg::msg(PgOp::Prepare, id, row, ""))
            })
            .collect();
        let mut failure = None;
        for (rx, (node_id, _, _)) in asks.into_iter().zip(&targets) {
            let why = match tokio::time::timeout(pg::PREPARE_TIMEOUT, rx).await {
                Ok(Ok(Ok(Msg::Pg { error, .. }))) if error.is_empty() => continue,
                Ok(Ok(Ok(Msg::Pg { error, .. }))) => error,
                Ok(Ok(Ok(other))) => format!("unexpected answer {}", other.name()),
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(_)) => "its connection closed".into(),
                Err(_) => format!("no answer within {:?}", pg::PREPARE_TIMEOUT),
            };
            failure.get_or_insert(format!("node {node_id}: {why}"));
        }
        let mut s = lock(&self.state);
        let Some(g) = s.pgs.groups.get_mut(&pg_id) else {
            // Removed meanwhile (its reservations were taken off then): roll back.
            for (node_id, peer, row) in &targets {
                let _ = node_id;
                peer.send(pg::msg(PgOp::Cancel, 0, row.clone(), ""));
            }
            return;
        };
        g.placing = false;
        match failure {
            None => {
                g.row.state = pg::CREATED;
                let row = g.row.clone();
                let owner = g.owner.clone();
                for (_, peer, part) in &targets {
                    peer.send(pg::msg(PgOp::Commit, 0, part.clone(), ""));
                }
                tracing::info!(pg = pg_id, "placement group created");
                owner.send(pg::msg(PgOp::Reply, 0, row, ""));
            }
            Some(why) => {
                tracing::info!(pg = pg_id, %why, "placement group reservation rolled back");
                // Only this attempt's bundles (a rescheduling group keeps its others).
                let attempt: Vec<u32> = if g.row.state == pg::RESCHEDULING {
                    targets
                        .iter()
                        .flat_map(|(_, _, part)| part.bundles.iter().map(|b| b.index))
                        .collect()
                } else {
                    g.row.bundles.iter().map(|b| b.index).collect()
                };
                let row = PgRow {
                    bundles: g
                        .row
                        .bundles
                        .iter()
                        .filter(|b| attempt.contains(&b.index))
                        .cloned()
                        .collect(),
                    ..g.row.clone()
                };
                for b in &mut g.row.bundles {
                    if attempt.contains(&b.index) {
                        b.node_id = 0;
                    }
                }
                s.pgs.account(&row, -1.0);
                for (_, peer, part) in &targets {
                    peer.send(pg::msg(PgOp::Cancel, 0, part.clone(), ""));
                }
                if !s.pgs.retry_scheduled {
                    s.pgs.retry_scheduled = true;
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        me.pg_try_place();
                    });
                }
            }
        }
    }

    /// Runs a retry a node join or a driver's exit asked for.
    fn pg_retry_if_asked(self: &Arc<Self>) {
        if lock(&self.state).pgs.retry_scheduled {
            self.pg_try_place();
        }
    }
}

/// The GCS's connection handler.
pub(crate) struct GcsHandler(pub(crate) Arc<Gcs>);

impl Handler for GcsHandler {
    fn on_message(self: Arc<Self>, peer: &Arc<Peer>, msg: Msg) {
        match msg {
            Msg::ListWork { request_id } => self.0.start_listing(peer, request_id),
            Msg::Work {
                request_id,
                tasks,
                objects,
                ..
            } => self.0.listing_part(request_id, tasks, objects),
            Msg::Pg {
                op,
                request_id,
                group,
                ..
            } => self.0.pg_message(peer, op, request_id, group),
            other => {
                self.0.handle(peer, other);
                self.0.pg_retry_if_asked();
            }
        }
    }
    fn on_close(self: Arc<Self>, peer: &Arc<Peer>, _reason: &str) {
        self.0.closed(peer);
        self.0.pg_retry_if_asked();
    }
}
