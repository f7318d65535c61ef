//! The node table as this owner sees it and placement: Ray's hybrid policy (`policy.rs`, sans
//! I/O) over the owner's own in-flight load per node, and the job's worker process on each
//! node, started through that node's raylet on first use.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::peer::Peer;
use super::policy::{self, NodeLoad};
use super::proto::{Msg, Resource};
use super::worker::Cluster;
use super::{CALL_TIMEOUT, cluster_error, wait_reply};
use crate::error::Error;
use crate::resources::ResourceRequest;
use crate::sync::lock;

/// A node of the cluster as this owner sees it.
pub(super) struct NodeSlot {
    pub(super) node_id: u64,
    pub(super) address: String,
    pub(super) alive: bool,
    pub(super) totals: Vec<(String, f64)>,
    pub(super) busy_cpus: f64,
    /// The job's worker process there (a pending peer while it starts).
    pub(super) worker: Option<(u64, Arc<Peer>)>,
    pub(super) starting: Option<Arc<Peer>>,
}

impl Cluster {
    /// Refreshes the node table from the GCS.
    pub(crate) fn refresh_nodes(&self) -> Result<(), Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::GetNodes { request_id });
        let Msg::Nodes { nodes, .. } = wait_reply(rx, CALL_TIMEOUT, "reading the node table")?
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
                    s.totals = totals;
                }
                None => slots.push(NodeSlot {
                    node_id: n.node_id,
                    address: n.address,
                    alive: n.alive,
                    totals,
                    busy_cpus: 0.0,
                    worker: None,
                    starting: None,
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
                if let Some((index, _)) = s.worker.take() {
                    lost.push(index);
                }
            }
        }
        for index in lost {
            if let Some(p) = lock(&self.peers).remove(&index) {
                p.shutdown("its node died");
            }
            self.worker_lost(index, &format!("node {node_id} died"));
        }
    }

    /// Chooses a node for `request` and returns its slot index and the job worker's peer.
    pub(super) fn place(
        &self,
        request: &ResourceRequest,
        preferred_worker: Option<u64>,
    ) -> Result<(usize, u64, Arc<Peer>), Error> {
        if !self.nodes_loaded.load(Ordering::Acquire) {
            self.refresh_nodes()?;
        }
        let wanted = request_pairs(request);
        let pick = |slots: &Vec<NodeSlot>| {
            let loads: Vec<NodeLoad> = slots
                .iter()
                .map(|s| NodeLoad {
                    totals: s.totals.clone(),
                    busy_cpus: s.busy_cpus,
                    alive: s.alive,
                })
                .collect();
            let preferred = preferred_worker.and_then(|w| {
                slots
                    .iter()
                    .position(|s| s.worker.as_ref().is_some_and(|(i, _)| *i == w))
            });
            policy::pick(&loads, &wanted, preferred, 0.5)
        };
        let mut chosen = pick(&lock(&self.nodes));
        if chosen.is_none() {
            // A node may have joined since: look again once.
            self.refresh_nodes()?;
            chosen = pick(&lock(&self.nodes));
        }
        let Some(i) = chosen else {
            let totals: Vec<String> = lock(&self.nodes)
                .iter()
                .filter(|s| s.alive)
                .map(|s| format!("node {}: {:?}", s.node_id, s.totals))
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
        let (worker, peer) = self.node_worker(i)?;
        Ok((i, worker, peer))
    }

    /// The job's worker on node slot `i`, started through that node's raylet on first use.
    fn node_worker(&self, i: usize) -> Result<(u64, Arc<Peer>), Error> {
        let (node_id, address) = {
            let slots = lock(&self.nodes);
            let s = &slots[i];
            if let Some((index, p)) = &s.worker
                && !p.is_closed()
            {
                return Ok((*index, p.clone()));
            }
            (s.node_id, s.address.clone())
        };
        let raylet = self.raylet(node_id, &address);
        let (exe, args, cwd) = self.executable.clone();
        let job_id = self.job_id;
        let _guard = self.io.enter();
        let rx = raylet.request(|request_id| Msg::StartWorker {
            request_id,
            job_id,
            executable: exe,
            args,
            cwd,
            env: forwarded_env(),
        });
        let what = format!("starting a worker on node {node_id}");
        let Msg::WorkerStarted { index, error, .. } = wait_reply(rx, CALL_TIMEOUT, &what)? else {
            return Err(cluster_error(what, "unexpected reply"));
        };
        if !error.is_empty() {
            return Err(cluster_error(what, error));
        }
        let peer = self.peer(index);
        let mut slots = lock(&self.nodes);
        slots[i].worker = Some((index, peer.clone()));
        Ok((index, peer))
    }

    pub(super) fn release_load(&self, node: Option<usize>, cpus: f64) {
        if let Some(i) = node
            && let Some(s) = lock(&self.nodes).get_mut(i)
        {
            s.busy_cpus = (s.busy_cpus - cpus).max(0.0);
        }
    }
}

/// Environment a driver forwards to its workers (their configuration), less what describes the
/// driver's own node (its address, resources and CPUs), which each raylet sets for its node.
fn forwarded_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("MANTA_")
                && !matches!(
                    k.as_str(),
                    "MANTA_ADDRESS"
                        | "MANTA_TOKEN"
                        | "MANTA_NUM_CPUS"
                        | "MANTA_NUM_GPUS"
                        | "MANTA_RESOURCES"
                        | "MANTA_CPU_AFFINITY"
                        | "MANTA_OBJECT_STORE_NUMA_NODES"
                        | "MANTA_NODE_IP"
                ))
                || k == "RUST_LOG"
                || k == "RUST_BACKTRACE"
        })
        .collect()
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
