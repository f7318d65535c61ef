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

/// One node as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeLoad {
    /// `(resource name, total)`.
    pub(crate) totals: Vec<(String, f64)>,
    /// In-flight CPU demand of this owner on the node.
    pub(crate) busy_cpus: f64,
    pub(crate) alive: bool,
}

impl NodeLoad {
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
        let cpus = self.total("CPU");
        if cpus <= 0.0 {
            return if self.busy_cpus > 0.0 { 1.0 } else { 0.0 };
        }
        self.busy_cpus / cpus
    }
}

/// Picks a node for `request` (`(resource, amount)` pairs), or `None` if no node can ever
/// run it.
pub(crate) fn pick(
    nodes: &[NodeLoad],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus: f64, busy: f64) -> NodeLoad {
        NodeLoad {
            totals: vec![("CPU".into(), cpus)],
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
}
