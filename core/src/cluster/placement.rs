//! The node table as this owner sees it and placement: Ray's hybrid policy (`policy.rs`, sans
//! I/O) over the owner's own in-flight load per node, then a worker of the job on the chosen
//! node that can take the request (`policy::pick_worker`, over the owner's in-flight load per
//! worker). A node's workers are named by its raylet on first use: the one it starts
//! (`manta start`), or the SPMD ranks of the node, each with its share.

use crate::resources::{CPU_NAME, GPU_NAME};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::peer::Peer;
use super::pg::{bundles_on, entries, msg};
use super::policy::{self, NodeLoad};
use super::proto::{Msg, PgBundle, PgOp, PgRow, Resource};
use super::worker::Cluster;
use super::{call_timeout, cluster_error, wait_reply};
use crate::error::Error;
use crate::placement_group::group_resources;
use crate::resources::ResourceRequest;
use crate::sync::lock;

/// A worker a raylet named: its index and `(resource, total)` it holds.
type NamedWorker = (u64, Vec<(String, f64)>);

/// A node of the cluster as this owner sees it.
pub(super) struct NodeSlot {
    pub(super) node_id: u64,
    pub(super) address: String,
    pub(super) alive: bool,
    pub(super) totals: Vec<(String, f64)>,
    pub(super) busy_cpus: f64,
    /// The job's worker processes there (empty until its raylet has named them).
    pub(super) workers: Vec<NodeWorker>,
}

/// One of the job's worker processes on a node, as this owner sees it.
pub(super) struct NodeWorker {
    pub(super) index: u64,
    pub(super) peer: Arc<Peer>,
    /// `(resource, total)` its scheduler holds.
    pub(super) totals: Vec<(String, f64)>,
    /// This owner's demand in flight there, per resource.
    busy: Vec<(String, f64)>,
}

impl NodeWorker {
    fn load(&self) -> policy::WorkerLoad<'_> {
        policy::WorkerLoad {
            totals: self.totals.as_slice().into(),
            busy: self.busy.as_slice().into(),
        }
    }
}

/// The node directory as this owner sees it: the node table, its connections to raylets,
/// and the workers it saw die. Its state is edited here only; other files ask through the
/// methods below.
pub(super) struct Placement {
    nodes: Mutex<Vec<NodeSlot>>,
    /// Whether `nodes` was read from the GCS since the last node event.
    loaded: AtomicBool,
    /// Connections to raylets, by node id (made on first use).
    raylets: Mutex<HashMap<u64, Arc<Peer>>>,
    /// Worker processes known dead (their connection closed, or their node died): never
    /// chosen again, even while a raylet still names them.
    dead: Mutex<HashSet<u64>>,
    /// This job's binary, arguments and directory, for the workers raylets start.
    executable: (String, Vec<String>, String),
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("nodes", &lock(&self.nodes).len())
            .field("dead", &lock(&self.dead).len())
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// An empty directory (read from the GCS on first use).
    pub(super) fn new(executable: (String, Vec<String>, String)) -> Placement {
        Placement {
            nodes: Mutex::new(Vec::new()),
            loaded: AtomicBool::new(false),
            raylets: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashSet::new()),
            executable,
        }
    }

    /// A node joined or left: read the table again before the next placement.
    pub(super) fn invalidate(&self) {
        self.loaded.store(false, Ordering::Release);
    }

    /// The id of the node in slot `slot`.
    pub(super) fn node_id_at(&self, slot: usize) -> Option<u64> {
        lock(&self.nodes).get(slot).map(|s| s.node_id)
    }

    /// The node of one of the job's workers.
    pub(super) fn node_of_worker(&self, index: u64) -> Option<u64> {
        lock(&self.nodes)
            .iter()
            .find(|s| s.workers.iter().any(|w| w.index == index))
            .map(|s| s.node_id)
    }

    /// Forgets the resources of placement group `pg_id` in every node's and worker's view.
    pub(super) fn drop_group(&self, pg_id: u64) {
        let h = format!("_{pg_id:016x}");
        for s in lock(&self.nodes).iter_mut() {
            s.totals.retain(|(n, _)| !n.ends_with(&h));
            for w in &mut s.workers {
                w.totals.retain(|(n, _)| !n.ends_with(&h));
            }
        }
    }

    /// Worker `index` died: never chosen again, and gone from its node's list.
    pub(super) fn worker_died(&self, index: u64) {
        lock(&self.dead).insert(index);
    }

    /// Drops worker `index` from its node's list (its connection is gone).
    pub(super) fn forget_worker(&self, index: u64) {
        for s in lock(&self.nodes).iter_mut() {
            s.workers.retain(|w| w.index != index);
        }
    }

    /// Whether worker `index` is known dead.
    pub(super) fn is_dead(&self, index: u64) -> bool {
        lock(&self.dead).contains(&index)
    }

    /// The workers known dead.
    pub(super) fn dead_workers(&self) -> HashSet<u64> {
        lock(&self.dead).clone()
    }

    /// Closes the connections to raylets (the process leaves).
    pub(super) fn close_raylets(&self) {
        for p in lock(&self.raylets).drain().map(|(_, p)| p) {
            p.shutdown("shutdown");
        }
    }
}

impl Cluster {
    /// Refreshes the node table from the GCS.
    pub(crate) fn refresh_nodes(&self) -> Result<(), Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::GetNodes { request_id });
        let Msg::Nodes { nodes, .. } = wait_reply(rx, call_timeout(), "reading the node table")?
        else {
            return Err(cluster_error("reading the node table", "unexpected reply"));
        };
        let mut slots = lock(&self.placement.nodes);
        for n in nodes {
            let totals: Vec<(String, f64)> = n
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.total))
                .collect();
            match slots.iter_mut().find(|s| s.node_id == n.node_id) {
                Some(s) => {
                    s.alive = n.alive;
                    // Bundles this owner installed stay, even before the node's heartbeat
                    // lists them (`pg.rs`).
                    let installed: Vec<(String, f64)> = s
                        .totals
                        .iter()
                        .filter(|(name, _)| {
                            name.contains("_group_") && !totals.iter().any(|(t, _)| t == name)
                        })
                        .cloned()
                        .collect();
                    s.totals = totals;
                    s.totals.extend(installed);
                }
                None => slots.push(NodeSlot {
                    node_id: n.node_id,
                    address: n.address,
                    alive: n.alive,
                    totals,
                    busy_cpus: 0.0,
                    workers: Vec::new(),
                }),
            }
        }
        self.placement.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks a node dead (a NodeEvent from the GCS) and fails what this process had in flight
    /// on the job's worker there: its connection may never report the loss (an unreachable
    /// host sends no FIN), and no new work may be placed there.
    pub(super) fn node_died(&self, node_id: u64) {
        let mut lost = Vec::new();
        for s in lock(&self.placement.nodes).iter_mut() {
            if s.node_id == node_id {
                s.alive = false;
                lost.extend(s.workers.drain(..).map(|w| w.index));
            }
        }
        for index in lost {
            if let Some(p) = self.peers.remove(index) {
                p.shutdown("its node died");
            }
            self.worker_lost(index, &format!("node {node_id} died"));
        }
    }

    /// Chooses a node for `request` (Ray's hybrid policy) and, among the job's workers there,
    /// one that can take it (`policy::pick_worker`); returns the node's slot index and the
    /// worker's index and peer. A node whose totals cover the request but none of whose
    /// workers does (SPMD ranks each hold a share of their node) is passed over.
    pub(super) fn place(
        &self,
        request: &ResourceRequest,
        preferred_worker: Option<u64>,
    ) -> Result<(usize, u64, Arc<Peer>), Error> {
        if !self.placement.loaded.load(Ordering::Acquire) {
            self.refresh_nodes()?;
        }
        let wanted = request_pairs(request);
        let mut passed: Vec<usize> = Vec::new();
        let pick = |slots: &Vec<NodeSlot>, passed: &[usize]| {
            let loads: Vec<NodeLoad<'_>> = slots
                .iter()
                .enumerate()
                .map(|(i, s)| NodeLoad {
                    totals: s.totals.as_slice().into(),
                    busy_cpus: s.busy_cpus,
                    alive: s.alive && !passed.contains(&i),
                })
                .collect();
            let preferred = preferred_worker.and_then(|w| {
                slots
                    .iter()
                    .position(|s| s.workers.iter().any(|x| x.index == w))
            });
            policy::pick(&loads, &wanted, preferred, 0.5)
        };
        let mut refreshed = false;
        let mut reinstalled = false;
        let mut awaited = false;
        let mut followed = false;
        loop {
            let mut chosen = pick(&lock(&self.placement.nodes), &passed);
            if chosen.is_none() && !refreshed {
                // A node may have joined since: look again once.
                self.refresh_nodes()?;
                refreshed = true;
                chosen = pick(&lock(&self.placement.nodes), &passed);
            }
            if chosen.is_none() && !reinstalled && wanted.iter().any(|(n, _)| n.contains("_group_"))
            {
                // A placement group's bundles died with their worker: put them back in the
                // node's replacement worker (or wait for whoever is doing it), then look
                // again once (`pg.rs`).
                reinstalled = true;
                self.pg_reinstall_lost();
                passed.clear();
                continue;
            }
            let unreachable: Vec<u64> = {
                let slots = lock(&self.placement.nodes);
                passed
                    .iter()
                    .filter_map(|&k| slots.get(k).map(|s| s.node_id))
                    .collect()
            };
            if chosen.is_none() && !followed && self.await_followed(&wanted) {
                // A group this process follows through a handle was (re)placed: its nodes'
                // heartbeats now carry the bundles' resources.
                followed = true;
                refreshed = false;
                passed.clear();
                continue;
            }
            if chosen.is_none() && !awaited && self.await_rescheduled(&wanted, &unreachable) {
                // A bundle's node died and the GCS placed it again elsewhere: look again.
                awaited = true;
                refreshed = false;
                passed.clear();
                continue;
            }
            let Some(i) = chosen else {
                let totals: Vec<String> = lock(&self.placement.nodes)
                    .iter()
                    .filter(|s| s.alive)
                    .map(|s| {
                        let workers: Vec<String> = s
                            .workers
                            .iter()
                            .map(|w| format!("{:?}", w.totals))
                            .collect();
                        if workers.len() > 1 {
                            format!(
                                "node {}: {:?} in workers {}",
                                s.node_id,
                                s.totals,
                                workers.join(", ")
                            )
                        } else {
                            format!("node {}: {:?}", s.node_id, s.totals)
                        }
                    })
                    .collect();
                return Err(Error::Infeasible {
                    what: "the task or actor".into(),
                    request: request.to_string(),
                    total: if totals.is_empty() {
                        "no live nodes".into()
                    } else {
                        totals.join("; ")
                    },
                });
            };
            if let Err(e) = self.node_workers(i) {
                // Its raylet is unreachable: gone, whether or not the GCS has said so yet (it
                // may be restarting: its slot was marked dead), or a node a group's bundle left
                // (placed again elsewhere): look elsewhere.
                let gone = !lock(&self.placement.nodes)[i].alive;
                let bundle = wanted.iter().any(|(n, _)| n.contains("_group_"));
                if passed.contains(&i) || !(gone || bundle) {
                    return Err(e);
                }
                tracing::debug!(error = %e, "a node's raylet is unreachable: placing elsewhere");
                passed.push(i);
                if bundle {
                    let _ = self.refresh_nodes();
                }
                continue;
            }
            let slots = lock(&self.placement.nodes);
            let workers = &slots[i].workers;
            let loads: Vec<policy::WorkerLoad> = workers.iter().map(NodeWorker::load).collect();
            let preferred =
                preferred_worker.and_then(|w| workers.iter().position(|x| x.index == w));
            match policy::pick_worker(&loads, &wanted, preferred) {
                Some(j) => return Ok((i, workers[j].index, workers[j].peer.clone())),
                None => passed.push(i),
            }
        }
    }

    /// Makes sure the job's workers on node slot `i` are known: asks that node's raylet for
    /// them on first use (it starts one, or names those that joined by themselves).
    pub(super) fn node_workers(&self, i: usize) -> Result<(), Error> {
        let (node_id, address, totals) = {
            let mut slots = lock(&self.placement.nodes);
            let s = &mut slots[i];
            let dead = lock(&self.placement.dead);
            s.workers
                .retain(|w| !w.peer.is_closed() && !dead.contains(&w.index));
            drop(dead);
            if !s.workers.is_empty() {
                return Ok(());
            }
            (s.node_id, s.address.clone(), s.totals.clone())
        };
        let what = format!("starting a worker on node {node_id}");
        // A raylet may still name a worker whose death this owner saw first (the raylet
        // hears of it a moment later, then starts a replacement): ask again, with backoff.
        let deadline = Instant::now() + call_timeout();
        let mut pause = Duration::from_millis(5);
        let named = loop {
            let named = self.ask_raylet_for_workers(node_id, &address, &totals, &what)?;
            let dead = lock(&self.placement.dead);
            let live: Vec<NamedWorker> = named
                .into_iter()
                .filter(|(index, _)| !dead.contains(index))
                .collect();
            drop(dead);
            if !live.is_empty() {
                break live;
            }
            if Instant::now() + pause > deadline {
                return Err(cluster_error(
                    what,
                    "its raylet named only workers that died, and started no replacement in time",
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        };
        let found: Vec<NodeWorker> = named
            .into_iter()
            .map(|(index, totals)| NodeWorker {
                index,
                peer: self.peer(index),
                totals,
                busy: Vec::new(),
            })
            .collect();
        let mut slots = lock(&self.placement.nodes);
        // Another thread may have asked at the same time: keep its list (and its load).
        if slots[i].workers.is_empty() {
            slots[i].workers = found;
        }
        Ok(())
    }

    /// One `StartWorker` round trip: the job's workers on node `node_id` with what each holds.
    fn ask_raylet_for_workers(
        &self,
        node_id: u64,
        address: &str,
        totals: &[(String, f64)],
        what: &str,
    ) -> Result<Vec<NamedWorker>, Error> {
        let raylet = self.raylet(node_id, address);
        let (exe, args, cwd) = self.placement.executable.clone();
        let job_id = self.member.job_id;
        let rt = self.runtime();
        let installed;
        let config = match &rt {
            Some(rt) => &rt.config,
            None => {
                installed = crate::config::current();
                &*installed
            }
        };
        let mut env = crate::config::forwarded_env(config);
        // The job's namespace is its workers' (`get_actor` in a task), set in code or not.
        env.retain(|(k, _)| k != "MANTA_NAMESPACE");
        env.push(("MANTA_NAMESPACE".into(), config.namespace.clone()));
        let _guard = self.io.enter();
        let rx = raylet.request(|request_id| Msg::StartWorker {
            request_id,
            job_id,
            executable: exe,
            args,
            cwd,
            env,
        });
        let reply = wait_reply(rx, call_timeout(), what);
        if reply.is_err() && raylet.is_closed() {
            // Its connection failed: the node is dead to this owner until the GCS's node
            // table says otherwise (the next refresh).
            for slot in lock(&self.placement.nodes).iter_mut() {
                if slot.node_id == node_id {
                    slot.alive = false;
                }
            }
        }
        let Msg::WorkerStarted {
            index,
            error,
            workers,
            ..
        } = reply?
        else {
            return Err(cluster_error(what, "unexpected reply"));
        };
        if !error.is_empty() {
            return Err(cluster_error(what, error));
        }
        // A raylet that names no list started one worker holding the whole node.
        Ok(if workers.is_empty() {
            vec![(index, totals.to_vec())]
        } else {
            workers
                .into_iter()
                .map(|w| {
                    let totals = w.resources.into_iter().map(|r| (r.name, r.total)).collect();
                    (w.index, totals)
                })
                .collect()
        })
    }

    /// The connection to the raylet of node slot `node` (made on first use).
    pub(super) fn raylet(&self, node_id: u64, address: &str) -> Arc<Peer> {
        let mut raylets = lock(&self.placement.raylets);
        if let Some(p) = raylets.get(&node_id)
            && !p.is_closed()
        {
            return p.clone();
        }
        let (peer, pending) = Peer::pending(format!("raylet:{node_id}"));
        raylets.insert(node_id, peer.clone());
        drop(raylets);
        let token = self.member.token.clone();
        let name = self.my_name();
        let handler = self.handler();
        let address = address.to_owned();
        self.io.spawn(async move {
            match super::connect(&address, &token, name).await {
                Ok(conn) => pending.attach(conn, handler),
                Err(e) => pending.fail(handler, &e.to_string()),
            }
        });
        peer
    }

    /// Puts the bundles of `row` on node `node_id` in the job's workers there, each bundle
    /// in one that holds it (an SPMD node has several, each with its share); returns them.
    /// Waits (at most `call_timeout`) while a placement group that `wanted` names has bundles
    /// whose node died (or is `unreachable`), until the GCS has placed them again and this
    /// owner installed them; returns whether it waited for that and it happened.
    fn await_rescheduled(&self, wanted: &[(String, f64)], unreachable: &[u64]) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        let node_dead = |node_id: u64| {
            unreachable.contains(&node_id)
                || !lock(&self.placement.nodes)
                    .iter()
                    .any(|s| s.node_id == node_id && s.alive)
        };
        if !crate::placement_group::awaits_rescheduling(&rt, wanted, &node_dead) {
            return false;
        }
        let deadline = std::time::Instant::now() + call_timeout();
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            let _ = self.refresh_nodes();
            if !crate::placement_group::awaits_rescheduling(&rt, wanted, &node_dead) {
                return true;
            }
        }
        false
    }

    /// Waits (at most `call_timeout`) while `wanted` names a created group this process
    /// follows through a handle (not its owner) and no live node in this process's view has
    /// its resources yet: the GCS's notice that it was placed (again) runs ahead of the
    /// heartbeats of its new nodes. Returns whether the view then has them.
    fn await_followed(&self, wanted: &[(String, f64)]) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        if !crate::placement_group::follows_created(&rt, wanted) {
            return false;
        }
        let names: Vec<&str> = wanted
            .iter()
            .filter(|(n, _)| n.contains("_group_"))
            .map(|(n, _)| n.as_str())
            .collect();
        let has =
            |totals: &[(String, f64)]| names.iter().all(|n| totals.iter().any(|(t, _)| t == n));
        let deadline = std::time::Instant::now() + call_timeout();
        while std::time::Instant::now() < deadline {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = self.refresh_nodes();
            let nodes: Vec<usize> = lock(&self.placement.nodes)
                .iter()
                .enumerate()
                .filter(|(_, s)| s.alive && has(&s.totals))
                .map(|(i, _)| i)
                .collect();
            for i in nodes {
                // Workers named before the bundles reached them: ask the node's raylet again
                // (it names the same workers, with the bundles they last reported holding).
                {
                    let mut slots = lock(&self.placement.nodes);
                    if !slots[i].workers.iter().any(|w| has(&w.totals)) {
                        slots[i].workers.clear();
                    }
                }
                if self.node_workers(i).is_ok()
                    && lock(&self.placement.nodes)[i]
                        .workers
                        .iter()
                        .any(|w| has(&w.totals))
                {
                    return true;
                }
            }
            if !crate::placement_group::follows_created(&rt, wanted) {
                return false;
            }
        }
        false
    }

    pub(super) fn pg_install_on(
        &self,
        row: &PgRow,
        node_id: u64,
    ) -> Result<Vec<(u64, Vec<u32>)>, Error> {
        let what = format!(
            "installing placement group {:016x} on node {node_id}",
            row.pg_id
        );
        let mut slot = lock(&self.placement.nodes)
            .iter()
            .position(|s| s.node_id == node_id);
        if slot.is_none() {
            self.refresh_nodes()?;
            slot = lock(&self.placement.nodes)
                .iter()
                .position(|s| s.node_id == node_id);
        }
        let Some(i) = slot else {
            return Err(cluster_error(what, "the node is not in the node table"));
        };
        self.node_workers(i)?;
        let mut slots = lock(&self.placement.nodes);
        let s = &mut slots[i];
        // Which worker takes which bundle: the policy's choice, counting what it got already.
        let mut given: Vec<Vec<(String, f64)>> = vec![Vec::new(); s.workers.len()];
        let mut parts: Vec<Vec<PgBundle>> = vec![Vec::new(); s.workers.len()];
        for b in row.bundles.iter().filter(|b| b.node_id == node_id) {
            let want = entries(&b.resources);
            let loads: Vec<policy::WorkerLoad<'_>> = s
                .workers
                .iter()
                .zip(&given)
                .map(|(w, g)| policy::WorkerLoad {
                    totals: w.totals.as_slice().into(),
                    busy: g.as_slice().into(),
                })
                .collect();
            let fits = |j: usize| {
                want.iter().all(|(n, a)| {
                    let total = s.workers[j]
                        .totals
                        .iter()
                        .find(|(t, _)| t == n)
                        .map_or(0.0, |t| t.1);
                    let used: f64 = given[j].iter().filter(|(g, _)| g == n).map(|g| g.1).sum();
                    total - used + 1e-9 >= *a
                })
            };
            let Some(j) = policy::pick_worker(&loads, &want, None).filter(|&j| fits(j)) else {
                return Err(cluster_error(
                    what,
                    format!("no worker of the job there has room for bundle {}", b.index),
                ));
            };
            given[j].extend(want);
            parts[j].push(b.clone());
        }
        let mut out = Vec::new();
        for (j, bundles) in parts.into_iter().enumerate() {
            if bundles.is_empty() {
                continue;
            }
            let indices: Vec<u32> = bundles.iter().map(|b| b.index).collect();
            let part = PgRow {
                bundles,
                ..row.clone()
            };
            let resources = group_resources(row.pg_id, &bundles_on(&part, node_id));
            let w = &mut s.workers[j];
            w.peer.send(msg(PgOp::Commit, 0, part, ""));
            w.totals.extend(resources.iter().cloned());
            out.push((w.index, indices));
            // The node's view: the per-bundle names, and the group-wide ones summed.
            for (name, amount) in resources {
                match s.totals.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 += amount,
                    None => s.totals.push((name, amount)),
                }
            }
        }
        Ok(out)
    }

    /// Counts `load` against worker `worker` on node slot `node` (until `release_load`).
    pub(super) fn take_load(&self, node: usize, worker: u64, load: &[(String, f64)]) {
        let mut slots = lock(&self.placement.nodes);
        let Some(s) = slots.get_mut(node) else { return };
        s.busy_cpus += cpus_of(load);
        if let Some(w) = s.workers.iter_mut().find(|w| w.index == worker) {
            for (name, amount) in load {
                match w.busy.iter_mut().find(|(n, _)| n == name) {
                    Some((_, busy)) => *busy += amount,
                    None => w.busy.push((name.clone(), *amount)),
                }
            }
        }
    }

    pub(super) fn release_load(&self, node: Option<usize>, worker: u64, load: &[(String, f64)]) {
        let Some(i) = node else { return };
        let mut slots = lock(&self.placement.nodes);
        let Some(s) = slots.get_mut(i) else { return };
        s.busy_cpus = (s.busy_cpus - cpus_of(load)).max(0.0);
        if let Some(w) = s.workers.iter_mut().find(|w| w.index == worker) {
            for (name, amount) in load {
                if let Some((_, busy)) = w.busy.iter_mut().find(|(n, _)| n == name) {
                    *busy = (*busy - amount).max(0.0);
                }
            }
        }
    }
}

/// A request's non-zero amounts as `(name, amount)` pairs.
pub(crate) fn request_pairs(r: &ResourceRequest) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    if r.num_cpus > 0.0 {
        v.push((CPU_NAME.to_string(), r.num_cpus));
    }
    if r.num_gpus > 0.0 {
        v.push((GPU_NAME.to_string(), r.num_gpus));
    }
    for (name, amount) in r.custom() {
        v.push((name.to_string(), amount));
    }
    v
}

/// The CPUs among request pairs.
fn cpus_of(load: &[(String, f64)]) -> f64 {
    load.iter()
        .filter(|(n, _)| n == CPU_NAME)
        .map(|(_, a)| *a)
        .sum()
}

pub(super) fn request_resources(r: &ResourceRequest) -> Vec<Resource> {
    request_pairs(r)
        .into_iter()
        .map(|(name, total)| Resource {
            name,
            total,
            available: 0.0,
        })
        .collect()
}

pub(super) fn resource_request(resources: &[Resource]) -> ResourceRequest {
    let mut r = ResourceRequest::none();
    for res in resources {
        match res.name.as_str() {
            CPU_NAME => r.num_cpus = res.total,
            GPU_NAME => r.num_gpus = res.total,
            other => r.set_custom(other, res.total),
        }
    }
    r
}
