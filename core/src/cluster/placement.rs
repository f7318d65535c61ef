//! The node table as this owner sees it and placement: Ray's hybrid policy (`policy.rs`, sans
//! I/O) over the owner's own in-flight load per node, then a worker of the job on the chosen
//! node that can take the request (`policy::pick_worker`, over the owner's in-flight load per
//! worker). A node's workers are named by its raylet on first use: the one it starts
//! (`manta start`), or the SPMD ranks of the node, each with its share.

use crate::sync::Arc;
use crate::sync::Ordering;
use std::time::{Duration, Instant};

use super::peer::Peer;
use super::policy::{self, NodeLoad};
use super::proto::{Msg, Resource};
use super::worker::Cluster;
use super::{call_timeout, cluster_error, wait_reply};
use crate::error::Error;
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

impl Cluster {
    /// Refreshes the node table from the GCS.
    pub(crate) fn refresh_nodes(&self) -> Result<(), Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::GetNodes { request_id });
        let Msg::Nodes { nodes, .. } = wait_reply(rx, call_timeout(), "reading the node table")?
        else {
            return Err(cluster_error("reading the node table", "unexpected reply"));
        };
        let mut slots = lock(&self.nodes);
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
        self.nodes_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks a node dead (a NodeEvent from the GCS) and fails what this process had in flight
    /// on the job's worker there: its connection may never report the loss (an unreachable
    /// host sends no FIN), and no new work may be placed there.
    pub(super) fn node_died(&self, node_id: u64) {
        let mut lost = Vec::new();
        for s in lock(&self.nodes).iter_mut() {
            if s.node_id == node_id {
                s.alive = false;
                lost.extend(s.workers.drain(..).map(|w| w.index));
            }
        }
        for index in lost {
            if let Some(p) = lock(&self.peers).remove(&index) {
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
        if !self.nodes_loaded.load(Ordering::Acquire) {
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
        loop {
            let mut chosen = pick(&lock(&self.nodes), &passed);
            if chosen.is_none() && !refreshed {
                // A node may have joined since: look again once.
                self.refresh_nodes()?;
                refreshed = true;
                chosen = pick(&lock(&self.nodes), &passed);
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
            let Some(i) = chosen else {
                let totals: Vec<String> = lock(&self.nodes)
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
            self.node_workers(i)?;
            let slots = lock(&self.nodes);
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
            let mut slots = lock(&self.nodes);
            let s = &mut slots[i];
            let dead = lock(&self.dead_workers);
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
            let dead = lock(&self.dead_workers);
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
        let mut slots = lock(&self.nodes);
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
        let (exe, args, cwd) = self.executable.clone();
        let job_id = self.job_id;
        let config = self
            .runtime()
            .map_or_else(crate::config::current, |rt| Arc::new(rt.config.clone()));
        let mut env = crate::config::forwarded_env(&config);
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
        let Msg::WorkerStarted {
            index,
            error,
            workers,
            ..
        } = wait_reply(rx, call_timeout(), what)?
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

    /// Counts `load` against worker `worker` on node slot `node` (until `release_load`).
    pub(super) fn take_load(&self, node: usize, worker: u64, load: &[(String, f64)]) {
        let mut slots = lock(&self.nodes);
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
        let mut slots = lock(&self.nodes);
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
        v.push(("CPU".to_string(), r.num_cpus));
    }
    if r.num_gpus > 0.0 {
        v.push(("GPU".to_string(), r.num_gpus));
    }
    for (name, amount) in r.custom() {
        v.push((name.to_string(), amount));
    }
    v
}

/// The CPUs among request pairs.
fn cpus_of(load: &[(String, f64)]) -> f64 {
    load.iter()
        .filter(|(n, _)| n == "CPU")
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
            "CPU" => r.num_cpus = res.total,
            "GPU" => r.num_gpus = res.total,
            other => r.set_custom(other, res.total),
        }
    }
    r
}
