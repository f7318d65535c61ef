//! The hierarchical backend: a group spanning nodes with several members on a node.
//!
//! The members of each node share a segment (the shm backend, under their group ranks); the
//! lowest rank of each node is its leader. An allreduce reduces within each node into its
//! leader, allreduces among the leaders over TCP, and broadcasts within each node, so only
//! one member per node crosses the network. A barrier goes the same way. Every other
//! operation runs on the whole group's TCP mesh.

use super::element::Reducer;
use super::shared::SharedBackend;
use super::tcp::TcpBackend;
use super::{Backend, Fault, Header};

pub(crate) struct HierBackend {
    pub(crate) local: SharedBackend,
    pub(crate) tcp: TcpBackend,
    /// The leaders (each node's lowest rank), in rank order.
    pub(crate) leaders: Vec<usize>,
    pub(crate) leader: bool,
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
        if self.leader {
            let r = self.tcp.allreduce_among(h, out, red, &self.leaders);
            self.pass_on(r)?;
        }
        self.local.broadcast(h, out, 0)
    }

    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
        self.tcp.allgather(h, input, out)
    }

    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        self.tcp.reduce_scatter(h, input, out, red)
    }

    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault> {
        self.tcp.broadcast(h, data, root)
    }

    fn reduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        root: usize,
        red: &Reducer,
    ) -> Result<(), Fault> {
        self.tcp.reduce(h, data, root, red)
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
