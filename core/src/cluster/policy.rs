//! Where a task goes: Ray's hybrid policy, sans I/O.
//!
//! Nodes are considered in a fixed order (the node table's, so every owner packs onto the same
//! nodes first). A node is *feasible* when its totals cover the request. Among feasible nodes:
//!
//! 1. the preferred node (the one holding the task's largest argument, else the owner's own
//!    node) is taken while its utilisation stays below `spread_threshold` (Ray: 0.5);
//! 2. otherwise the first node in order whose utilisation is below the threshold (pack);
//! 3. otherwise, every feasible node being at least that busy, the least utilised (spread).
//!
//! Utilisation is the owner's own view: the CPU (or, for CPU-less requests, GPU or custom)
//! demand it has in flight on the node over the node's total. One owner per job is the usual
//! shape, so this view is exact for it; several owners each see only their own load (Ray's
//! raylets exchange load instead — noted in ARCHITECTURE.md).
//!
//! Then a worker on the chosen node ([`pick_worker`]): a node may have several worker
//! processes of the job (the ranks of an SPMD launch, each holding its share of the node).
//! Among the workers whose totals cover the request:
//!
//! 1. the preferred worker (the one holding the task's largest argument) if the request fits
//!    in what it has free;
//! 2. otherwise the worker where it fits with the most free CPUs (so CPU tasks spread over
//!    the node's workers, and a GPU request goes to a worker with a free GPU);
//! 3. otherwise, none having room, the one with the most free CPUs (the task waits there).
//!
//! A node none of whose workers covers the request is passed over by the caller.

use crate::resources::CPU_NAME;
use std::borrow::Cow;

/// `(resource name, amount)` pairs, borrowed from the caller's tables on the submit path (no
/// copy per task), owned in tests.
pub(crate) type Amounts<'a> = Cow<'a, [(String, f64)]>;

/// One node as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeLoad<'a> {
    /// `(resource name, total)`.
    pub(crate) totals: Amounts<'a>,
    /// In-flight CPU demand of this owner on the node.
    pub(crate) busy_cpus: f64,
    pub(crate) alive: bool,
}

impl NodeLoad<'_> {
    fn total(&self, name: &str) -> f64 {
        self.totals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or(0.0)
    }

    fn feasible(&self, request: &[(String, f64)]) -> bool {
        self.alive
            && request
                .iter()
                .all(|(name, amount)| *amount <= 0.0 || self.total(name) + 1e-9 >= *amount)
    }

    fn utilisation(&self) -> f64 {
        let cpus = self.total(CPU_NAME);
        if cpus <= 0.0 {
            return if self.busy_cpus > 0.0 { 1.0 } else { 0.0 };
        }
        self.busy_cpus / cpus
    }
}

/// Picks a node for `request` (`(resource, amount)` pairs), or `None` if no node can ever
/// run it.
pub(crate) fn pick(
    nodes: &[NodeLoad<'_>],
    request: &[(String, f64)],
    preferred: Option<usize>,
    spread_threshold: f64,
) -> Option<usize> {
    let feasible = |i: &usize| nodes[*i].feasible(request);
    if let Some(p) = preferred.filter(|p| *p < nodes.len())
        && feasible(&p)
        && nodes[p].utilisation() < spread_threshold
    {
        return Some(p);
    }
    let mut best: Option<usize> = None;
    for i in (0..nodes.len()).filter(feasible) {
        if nodes[i].utilisation() < spread_threshold {
            return Some(i);
        }
        if best.is_none_or(|b| nodes[i].utilisation() < nodes[b].utilisation()) {
            best = Some(i);
        }
    }
    best
}

/// One worker process of a node as [`pick_worker`] sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerLoad<'a> {
    /// `(resource name, total)` its scheduler holds.
    pub(crate) totals: Amounts<'a>,
    /// This owner's demand in flight there, per resource.
    pub(crate) busy: Amounts<'a>,
}

impl WorkerLoad<'_> {
    fn total(&self, name: &str) -> f64 {
        self.totals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or(0.0)
    }

    fn free(&self, name: &str) -> f64 {
        let busy: f64 = self
            .busy
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .sum();
        self.total(name) - busy
    }

    fn feasible(&self, request: &[(String, f64)]) -> bool {
        request
            .iter()
            .all(|(name, amount)| *amount <= 0.0 || self.total(name) + 1e-9 >= *amount)
    }

    fn fits(&self, request: &[(String, f64)]) -> bool {
        request
            .iter()
            .all(|(name, amount)| *amount <= 0.0 || self.free(name) + 1e-9 >= *amount)
    }
}

/// Picks a worker of one node for `request`, or `None` if none of them can ever run it.
pub(crate) fn pick_worker(
    workers: &[WorkerLoad<'_>],
    request: &[(String, f64)],
    preferred: Option<usize>,
) -> Option<usize> {
    if let Some(p) = preferred.filter(|p| *p < workers.len())
        && workers[p].feasible(request)
        && workers[p].fits(request)
    {
        return Some(p);
    }
    let mut best: Option<(bool, f64, usize)> = None;
    for (i, w) in workers.iter().enumerate() {
        if !w.feasible(request) {
            continue;
        }
        let (fits, free) = (w.fits(request), w.free(CPU_NAME));
        // Room first, then free CPUs; the first worker wins ties.
        let better = best.is_none_or(|(best_fits, best_free, _)| {
            if fits == best_fits {
                free > best_free
            } else {
                fits
            }
        });
        if better {
            best = Some((fits, free, i));
        }
    }
    best.map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus: f64, busy: f64) -> NodeLoad<'static> {
        NodeLoad {
            totals: vec![("CPU".into(), cpus)].into(),
            busy_cpus: busy,
            alive: true,
        }
    }

    fn cpu(n: f64) -> Vec<(String, f64)> {
        vec![("CPU".into(), n)]
    }

    #[test]
    fn packs_until_half_busy_then_spreads() {
        let mut nodes = vec![node(4.0, 0.0), node(4.0, 0.0), node(4.0, 0.0)];
        let mut placed = Vec::new();
        for _ in 0..12 {
            let i = pick(&nodes, &cpu(1.0), None, 0.5).unwrap();
            nodes[i].busy_cpus += 1.0;
            placed.push(i);
        }
        // Two tasks fill node 0 to 50%, then node 1, then node 2; then least utilised.
        assert_eq!(&placed[..6], &[0, 0, 1, 1, 2, 2]);
        let counts: Vec<usize> = (0..3)
            .map(|n| placed.iter().filter(|&&p| p == n).count())
            .collect();
        assert_eq!(counts, vec![4, 4, 4]);
    }

    #[test]
    fn prefers_the_preferred_node_while_it_is_not_busy() {
        let nodes = vec![node(4.0, 0.0), node(4.0, 1.0)];
        assert_eq!(pick(&nodes, &cpu(1.0), Some(1), 0.5), Some(1));
        let nodes = vec![node(4.0, 0.0), node(4.0, 3.0)];
        assert_eq!(pick(&nodes, &cpu(1.0), Some(1), 0.5), Some(0));
    }

    #[test]
    fn infeasible_and_dead_nodes_are_skipped() {
        let mut nodes = vec![node(2.0, 0.0), node(8.0, 0.0)];
        assert_eq!(pick(&nodes, &cpu(4.0), None, 0.5), Some(1));
        nodes[1].alive = false;
        assert_eq!(pick(&nodes, &cpu(4.0), None, 0.5), None);
        let gpu = vec![("GPU".to_string(), 1.0)];
        assert_eq!(pick(&nodes, &gpu, None, 0.5), None);
    }

    fn worker(cpus: f64, gpus: f64) -> WorkerLoad<'static> {
        WorkerLoad {
            totals: vec![("CPU".into(), cpus), ("GPU".into(), gpus)].into(),
            busy: Vec::new().into(),
        }
    }

    fn take(w: &mut WorkerLoad<'_>, request: &[(String, f64)]) {
        let busy = w.busy.to_mut();
        for (name, amount) in request {
            match busy.iter_mut().find(|(n, _)| n == name) {
                Some((_, b)) => *b += amount,
                None => busy.push((name.clone(), *amount)),
            }
        }
    }

    #[test]
    fn cpu_tasks_spread_over_a_nodes_workers_by_free_cpus() {
        let mut workers = vec![worker(2.0, 0.0), worker(2.0, 0.0)];
        let mut placed = Vec::new();
        for _ in 0..4 {
            let i = pick_worker(&workers, &cpu(1.0), None).unwrap();
            take(&mut workers[i], &cpu(1.0));
            placed.push(i);
        }
        assert_eq!(placed, vec![0, 1, 0, 1]);
        // Every worker full: the one with the most free CPUs (the first on a tie) queues it.
        assert_eq!(pick_worker(&workers, &cpu(1.0), None), Some(0));
    }

    #[test]
    fn a_gpu_request_goes_to_a_worker_with_a_free_gpu() {
        let gpu = vec![("GPU".to_string(), 1.0)];
        let mut workers = vec![worker(4.0, 0.0), worker(1.0, 1.0), worker(1.0, 1.0)];
        let first = pick_worker(&workers, &gpu, None).unwrap();
        assert_eq!(first, 1, "the GPU-less worker never gets it");
        take(&mut workers[first], &gpu);
        assert_eq!(pick_worker(&workers, &gpu, None), Some(2));
        // Preferred but its GPU is taken: the free one instead.
        assert_eq!(pick_worker(&workers, &gpu, Some(1)), Some(2));
    }

    #[test]
    fn a_request_no_single_worker_covers_is_infeasible_on_the_node() {
        // Two workers of 2 CPUs each: the node has 4, but a 3-CPU task fits neither.
        let workers = vec![worker(2.0, 0.0), worker(2.0, 0.0)];
        assert_eq!(pick_worker(&workers, &cpu(3.0), None), None);
        assert_eq!(pick_worker(&[], &cpu(1.0), None), None);
        assert_eq!(pick_worker(&workers, &cpu(2.0), Some(1)), Some(1));
    }
}
