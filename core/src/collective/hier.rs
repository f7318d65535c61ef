//! The hierarchical backend: a group spanning nodes with several members on a node.
//!
//! The members of each node share a segment (the shm backend, under their local indices);
//! the lowest rank of each node is its leader. Where every node has the same number `m` of
//! members, allreduce, reduce-scatter and allgather of a large enough vector (at least
//! [`SPLIT_MIN`] bytes) take the split path (as NCCL's and Horovod's hierarchical
//! algorithms): every member crosses the network with its own 1/m of the vector, on a ring
//! of its own with the members of the same local index on the other nodes (the rings share
//! no connection, and every member of a ring makes the same calls on it, so their sequence
//! numbers stay in step):
//!
//! - allreduce: reduce-scatter within each node (member `k` gets share `k` of the node's
//!   sum), allreduce of each share on its ring, allgather within each node; the last few
//!   elements (fewer than `m`, where the count is not a multiple of `m`) go the leaders' way;
//! - reduce_scatter: the input's blocks staged so that member `k`'s share holds, in ring
//!   order, the blocks of the members of local index `k`; reduce-scatter within each node,
//!   then reduce-scatter of each share on its ring (each member keeps its own block);
//! - allgather: allgather of each member's input on its ring, then within each node, the
//!   blocks placed by rank.
//!
//! Otherwise (uneven nodes, small vectors, and the other operations) only the leaders cross
//! the network, over TCP:
//!
//! - allreduce: reduce within each node into its leader, allreduce among the leaders,
//!   broadcast within each node;
//! - reduce: the same into each leader and among the leaders, then (when the root is not
//!   its node's leader) broadcast within the root's node; only the root's buffer changes;
//! - reduce_scatter: the full vector reduced as for allreduce, each member keeping its block;
//! - allgather: gather within each node, the leaders place their node's blocks at their
//!   ranks in a zeroed buffer and sum it among themselves (disjoint blocks: a bytewise sum
//!   with zeros is a copy), then broadcast within each node;
//! - broadcast: from the root within its node, then from its leader among the leaders (the
//!   same bytewise sum, the other leaders giving zeros), then within each other node;
//! - barrier: within each node, among the leaders, within each node.
//!
//! Failures cross between the two parts both ways: a member whose ring fails tells its
//! node's segment the rank at fault ([`SharedBackend::report_remote`]), so its node's
//! members waiting in the segment fail naming it; a member whose segment fails names the
//! member at fault in the abort frames it sends its TCP peers ([`TcpBackend::blame`]).

use super::element::Reducer;
use super::shared::SharedBackend;
use super::tcp::TcpBackend;
use super::{Backend, Fault, Header, ReduceOp};

/// The smallest vector (in bytes: allreduce's, reduce-scatter's input, allgather's output)
/// that takes the split path where the nodes are even (below it the leaders' path: fewer
/// rounds).
const SPLIT_MIN: usize = 64 << 10;

/// The most bytes of a split-path buffer kept for the next collective (a larger one is
/// freed after use, so that one huge call does not pin its buffers for the group's life).
const KEEP: usize = 64 << 20;

pub(crate) struct HierBackend {
    local: SharedBackend,
    tcp: TcpBackend,
    /// The leaders (each node's lowest rank), in rank order.
    leaders: Vec<usize>,
    leader: bool,
    /// This member's group rank.
    rank: usize,
    /// The group ranks of this node's members, in order (their local indices).
    members: Vec<usize>,
    /// Each group rank's node leader.
    leader_of: Vec<usize>,
    /// Where every node has as many members as this one: the split path's rings.
    split: Option<Split>,
    /// The split path's buffers, kept between collectives (touched once, not per call) up to
    /// [`KEEP`] bytes each.
    scratch: [Vec<u64>; 2],
}

/// The rings of the split path (every node with the same member count).
struct Split {
    /// Each node's members in rank order, the nodes in their leaders' order: `nodes[j][k]`
    /// is node `j`'s member of local index `k`.
    nodes: Vec<Vec<usize>>,
    /// This member's ring: the members of its local index, one per node (`nodes[j][k]`).
    peers: Vec<usize>,
}

impl Split {
    /// The rings of member `rank` of a group whose node leaders are `leaders`, whose node
    /// holds `members` and whose ranks have the leaders `leader_of`; `None` where the nodes
    /// hold different numbers of members.
    fn of(rank: usize, leaders: &[usize], members: &[usize], leader_of: &[usize]) -> Option<Split> {
        let nodes: Vec<Vec<usize>> = leaders
            .iter()
            .map(|&l| {
                (0..leader_of.len())
                    .filter(|&r| leader_of[r] == l)
                    .collect()
            })
            .collect();
        let k = members.iter().position(|&r| r == rank)?;
        nodes
            .iter()
            .all(|n| n.len() == members.len())
            .then(|| Split {
                peers: nodes.iter().map(|n| n[k]).collect(),
                nodes,
            })
    }
}

/// A zeroed buffer of `n` bytes, aligned for every element type.
fn aligned(n: usize) -> Vec<u64> {
    vec![0u64; n.div_ceil(8)]
}

/// The first `n` bytes of `buf`, grown (zeroed) to hold them if it is shorter.
fn bytes(buf: &mut Vec<u64>, n: usize) -> &mut [u8] {
    if buf.len() * 8 < n {
        *buf = aligned(n);
    }
    &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..n]
}

/// A failure on a ring (or among the leaders), told to this node's members (who wait for
/// this member in the segment) with the member at fault.
fn pass_on(local: &SharedBackend, r: Result<(), Fault>) -> Result<(), Fault> {
    if let Err(Fault::Peer { rank, .. } | Fault::Timeout { rank, .. }) = &r {
        local.report_remote(*rank);
    }
    r
}

/// A failure within the node, its member at fault named to this member's TCP peers.
fn blame(tcp: &mut TcpBackend, r: Result<(), Fault>) -> Result<(), Fault> {
    if let Err(Fault::Peer { rank, .. } | Fault::Timeout { rank, .. }) = &r {
        tcp.blame(*rank);
    }
    r
}

impl HierBackend {
    /// Member `rank` of a group whose node leaders are `leaders`, whose node holds `members`
    /// (this one among them) and whose ranks have the leaders `leader_of`.
    pub(crate) fn new(
        local: SharedBackend,
        tcp: TcpBackend,
        rank: usize,
        leaders: Vec<usize>,
        members: Vec<usize>,
        leader_of: Vec<usize>,
    ) -> HierBackend {
        let split = Split::of(rank, &leaders, &members, &leader_of);
        HierBackend {
            local,
            tcp,
            leader: leaders.contains(&rank),
            leaders,
            rank,
            members,
            leader_of,
            split,
            scratch: [Vec::new(), Vec::new()],
        }
    }

    /// A leader's sum of `data` with the other leaders' (bytewise: a copy where the others
    /// give zeros).
    fn leaders_sum(&mut self, h: &Header, data: &mut [u8], red: &Reducer) -> Result<(), Fault> {
        if !self.leader {
            return Ok(());
        }
        let r = self.tcp.allreduce_among(h, data, red, &self.leaders);
        pass_on(&self.local, r)
    }

    /// Allreduce in place the leaders' way: within the node into the leader, among the
    /// leaders, back within the node.
    fn leaders_allreduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let r = self.local.reduce(h, data, 0, red);
        blame(&mut self.tcp, r)?;
        self.leaders_sum(h, data, red)?;
        let r = self.local.broadcast(h, data, 0);
        blame(&mut self.tcp, r)
    }

    /// Puts back the split path's buffers, those within [`KEEP`] (an empty one keeps what
    /// was there).
    fn keep(&mut self, bufs: [Vec<u64>; 2]) {
        for (slot, buf) in self.scratch.iter_mut().zip(bufs) {
            if !buf.is_empty() && buf.len() * 8 <= KEEP {
                *slot = buf;
            }
        }
    }

    /// Whether an operation on `n` bytes takes the split path.
    fn splits(&self, n: usize) -> bool {
        self.split.is_some() && n >= SPLIT_MIN
    }

    /// Whether this node holds group rank `r`.
    fn here(&self, r: usize) -> bool {
        self.leader_of.get(r) == Some(&self.members[0])
    }

    /// The split path's allreduce of `input` (or, `None`, of `out` in place) into `out`, whose
    /// length is a whole number of elements per member of the node.
    fn split_allreduce(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let Some(split) = &self.split else {
            return Err(Fault::Os("the split path of uneven nodes".into()));
        };
        let share = out.len() / self.members.len();
        let mut buf = std::mem::take(&mut self.scratch[0]);
        let mine = bytes(&mut buf, share);
        let r = self
            .local
            .reduce_scatter(h, input.unwrap_or(&*out), mine, red);
        blame(&mut self.tcp, r)?;
        let r = self.tcp.allreduce_among(h, mine, red, &split.peers);
        pass_on(&self.local, r)?;
        let r = self.local.allgather(h, mine, out);
        blame(&mut self.tcp, r)?;
        self.keep([buf, Vec::new()]);
        Ok(())
    }
}

impl Backend for HierBackend {
    fn name(&self) -> &'static str {
        "hierarchical"
    }

    fn allreduce(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let n = out.len();
        let whole = red.elem * self.members.len();
        let main = n / whole * whole;
        if !self.splits(n) || main == 0 {
            if let Some(input) = input {
                out.copy_from_slice(input);
            }
            return self.leaders_allreduce(h, out, red);
        }
        let (head, tail) = out.split_at_mut(main);
        self.split_allreduce(h, input.map(|i| &i[..main]), head, red)?;
        if !tail.is_empty() {
            if let Some(input) = input {
                tail.copy_from_slice(&input[main..]);
            }
            self.leaders_allreduce(h, tail, red)?;
        }
        Ok(())
    }

    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
        let n = input.len();
        if n == 0 {
            return self.barrier(h);
        }
        if let Some(split) = &self.split
            && self.splits(out.len())
        {
            // On the ring: block j is node j's member of this local index.
            let nodes = split.nodes.len();
            let mut ring = std::mem::take(&mut self.scratch[0]);
            let mut node = std::mem::take(&mut self.scratch[1]);
            let ring_out = bytes(&mut ring, n * nodes);
            let r = self.tcp.allgather_among(h, input, ring_out, &split.peers);
            pass_on(&self.local, r)?;
            // Within the node: block k·nodes + j is node j's member of local index k.
            let all = bytes(&mut node, out.len());
            let r = self.local.allgather(h, ring_out, all);
            blame(&mut self.tcp, r)?;
            for (j, members) in split.nodes.iter().enumerate() {
                for (k, &r) in members.iter().enumerate() {
                    let from = (k * nodes + j) * n;
                    out[r * n..(r + 1) * n].copy_from_slice(&all[from..from + n]);
                }
            }
            self.keep([ring, node]);
            return Ok(());
        }
        let mut node = aligned(n * self.members.len());
        let node = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut node)[..n * self.members.len()];
        let r = self.local.allgather(h, input, node);
        blame(&mut self.tcp, r)?;
        if self.leader {
            out.fill(0);
            for (k, &r) in self.members.iter().enumerate() {
                out[r * n..(r + 1) * n].copy_from_slice(&node[k * n..(k + 1) * n]);
            }
            let bytes = Reducer::of::<u8>(ReduceOp::Sum);
            self.leaders_sum(h, out, &bytes)?;
        }
        let r = self.local.broadcast(h, out, 0);
        blame(&mut self.tcp, r)
    }

    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let n = out.len();
        if let Some(split) = &self.split
            && n > 0
            && self.splits(input.len())
        {
            // Staged so that share k holds, in ring order, the blocks of local index k.
            let nodes = split.nodes.len();
            let mut stage = std::mem::take(&mut self.scratch[1]);
            let mut share = std::mem::take(&mut self.scratch[0]);
            let staged = bytes(&mut stage, input.len());
            for (j, members) in split.nodes.iter().enumerate() {
                for (k, &r) in members.iter().enumerate() {
                    let to = (k * nodes + j) * n;
                    staged[to..to + n].copy_from_slice(&input[r * n..(r + 1) * n]);
                }
            }
            let mine = bytes(&mut share, n * nodes);
            let r = self.local.reduce_scatter(h, staged, mine, red);
            blame(&mut self.tcp, r)?;
            let r = self
                .tcp
                .reduce_scatter_among(h, mine, out, red, &split.peers);
            pass_on(&self.local, r)?;
            self.keep([share, stage]);
            return Ok(());
        }
        let mut all = aligned(input.len());
        let all = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut all)[..input.len()];
        all.copy_from_slice(input);
        self.leaders_allreduce(h, all, red)?;
        out.copy_from_slice(&all[self.rank * n..(self.rank + 1) * n]);
        Ok(())
    }

    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault> {
        let ours = self.here(root);
        if ours {
            let from = self.members.iter().position(|&m| m == root).unwrap_or(0);
            let r = self.local.broadcast(h, data, from);
            blame(&mut self.tcp, r)?;
        }
        if self.leader {
            if !ours {
                data.fill(0);
            }
            let bytes = Reducer::of::<u8>(ReduceOp::Sum);
            self.leaders_sum(h, data, &bytes)?;
        }
        if !ours {
            let r = self.local.broadcast(h, data, 0);
            blame(&mut self.tcp, r)?;
        }
        Ok(())
    }

    fn reduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        root: usize,
        red: &Reducer,
    ) -> Result<(), Fault> {
        let mut buf = aligned(data.len());
        let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..data.len()];
        buf.copy_from_slice(data);
        let r = self.local.reduce(h, buf, 0, red);
        blame(&mut self.tcp, r)?;
        self.leaders_sum(h, buf, red)?;
        // The root's leader has the result: it passes it on if the root is another member.
        if self.here(root) && self.members[0] != root {
            let r = self.local.broadcast(h, buf, 0);
            blame(&mut self.tcp, r)?;
        }
        if self.rank == root {
            data.copy_from_slice(buf);
        }
        Ok(())
    }

    fn send(&mut self, h: &Header, data: &[u8], dst: usize) -> Result<(), Fault> {
        self.tcp.send(h, data, dst)
    }

    fn recv(&mut self, h: &Header, data: &mut [u8], src: usize) -> Result<(), Fault> {
        self.tcp.recv(h, data, src)
    }

    fn barrier(&mut self, h: &Header) -> Result<(), Fault> {
        let r = self.local.barrier(h);
        blame(&mut self.tcp, r)?;
        if self.leader {
            let r = self.tcp.barrier_among(h, &self.leaders);
            pass_on(&self.local, r)?;
        }
        let r = self.local.barrier(h);
        blame(&mut self.tcp, r)
    }

    fn leave(&mut self, mismatch: bool) {
        self.local.leave(mismatch);
        self.tcp.leave(mismatch);
    }
}

#[cfg(test)]
mod tests {
    use super::Split;

    #[test]
    fn even_nodes_give_each_local_index_a_ring_and_uneven_ones_none() {
        // Ranks 0 and 2 on one node, 1 and 3 on the other.
        let leader_of = [0, 1, 0, 1];
        let s = Split::of(2, &[0, 1], &[0, 2], &leader_of).expect("even");
        assert_eq!(s.nodes, [vec![0, 2], vec![1, 3]]);
        assert_eq!(s.peers, [2, 3], "local index 1 on every node");
        let s = Split::of(1, &[0, 1], &[1, 3], &leader_of).expect("even");
        assert_eq!(s.peers, [0, 1], "local index 0: the leaders");
        // Three nodes of two, in rank order.
        let leader_of = [0, 0, 2, 2, 4, 4];
        let s = Split::of(5, &[0, 2, 4], &[4, 5], &leader_of).expect("even");
        assert_eq!(s.peers, [1, 3, 5]);
        // Two members on one node, one on the other.
        let leader_of = [0, 0, 2];
        assert!(Split::of(0, &[0, 2], &[0, 1], &leader_of).is_none());
        assert!(Split::of(2, &[0, 2], &[2], &leader_of).is_none());
    }
}
