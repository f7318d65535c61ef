//! The hierarchical backend: a group spanning nodes with several members on a node.
//!
//! The members of each node share a segment (the shm backend, under their local indices);
//! the lowest rank of each node is its leader. Every collective but send/recv crosses the
//! network only between leaders, over TCP:
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

use super::element::Reducer;
use super::shared::SharedBackend;
use super::tcp::TcpBackend;
use super::{Backend, Fault, Header, ReduceOp};

pub(crate) struct HierBackend {
    pub(crate) local: SharedBackend,
    pub(crate) tcp: TcpBackend,
    /// The leaders (each node's lowest rank), in rank order.
    pub(crate) leaders: Vec<usize>,
    pub(crate) leader: bool,
    /// This member's group rank.
    pub(crate) rank: usize,
    /// The group ranks of this node's members, in order (their local indices).
    pub(crate) members: Vec<usize>,
    /// Each group rank's node leader.
    pub(crate) leader_of: Vec<usize>,
}

/// A zeroed buffer of `n` bytes, aligned for every element type.
fn aligned(n: usize) -> Vec<u64> {
    vec![0u64; n.div_ceil(8)]
}

impl HierBackend {
    /// A leader's failure among the leaders, told to its node's members (who wait for it in
    /// the segment) with the member at fault.
    fn pass_on(&self, r: Result<(), Fault>) -> Result<(), Fault> {
        if let Err(Fault::Peer { rank, .. } | Fault::Timeout { rank, .. }) = &r {
            self.local.report_remote(*rank);
        }
        r
    }

    /// A leader's sum of `data` with the other leaders' (bytewise: a copy where the others
    /// give zeros).
    fn leaders_sum(&mut self, h: &Header, data: &mut [u8], red: &Reducer) -> Result<(), Fault> {
        if !self.leader {
            return Ok(());
        }
        let r = self.tcp.allreduce_among(h, data, red, &self.leaders);
        self.pass_on(r)
    }

    /// Whether this node holds group rank `r`.
    fn here(&self, r: usize) -> bool {
        self.leader_of.get(r) == Some(&self.members[0])
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
        if let Some(input) = input {
            out.copy_from_slice(input);
        }
        self.local.reduce(h, out, 0, red)?;
        self.leaders_sum(h, out, red)?;
        self.local.broadcast(h, out, 0)
    }

    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
        let n = input.len();
        if n == 0 {
            return self.barrier(h);
        }
        let mut node = aligned(n * self.members.len());
        let node = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut node)[..n * self.members.len()];
        self.local.allgather(h, input, node)?;
        if self.leader {
            out.fill(0);
            for (k, &r) in self.members.iter().enumerate() {
                out[r * n..(r + 1) * n].copy_from_slice(&node[k * n..(k + 1) * n]);
            }
            let bytes = Reducer::of::<u8>(ReduceOp::Sum);
            self.leaders_sum(h, out, &bytes)?;
        }
        self.local.broadcast(h, out, 0)
    }

    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let n = out.len();
        let mut all = aligned(input.len());
        let all = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut all)[..input.len()];
        all.copy_from_slice(input);
        self.local.reduce(h, all, 0, red)?;
        self.leaders_sum(h, all, red)?;
        self.local.broadcast(h, all, 0)?;
        out.copy_from_slice(&all[self.rank * n..(self.rank + 1) * n]);
        Ok(())
    }

    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault> {
        let ours = self.here(root);
        if ours {
            let from = self.members.iter().position(|&m| m == root).unwrap_or(0);
            self.local.broadcast(h, data, from)?;
        }
        if self.leader {
            if !ours {
                data.fill(0);
            }
            let bytes = Reducer::of::<u8>(ReduceOp::Sum);
            self.leaders_sum(h, data, &bytes)?;
        }
        if !ours {
            self.local.broadcast(h, data, 0)?;
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
        self.local.reduce(h, buf, 0, red)?;
        self.leaders_sum(h, buf, red)?;
        // The root's leader has the result: it passes it on if the root is another member.
        if self.here(root) && self.members[0] != root {
            self.local.broadcast(h, buf, 0)?;
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
        self.local.barrier(h)?;
        if self.leader {
            let r = self.tcp.barrier_among(h, &self.leaders);
            self.pass_on(r)?;
        }
        self.local.barrier(h)
    }

    fn leave(&mut self, mismatch: bool) {
        self.local.leave(mismatch);
        self.tcp.leave(mismatch);
    }
}
