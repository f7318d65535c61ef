//! Collective communication among the members of a group: allreduce, allgather,
//! reduce-scatter, broadcast, reduce, send/recv and barrier on slices of numbers.
//!
//! A group is named; each member calls [`Communicator::join`] with the name, its rank and the
//! group's size. Members meet through the runtime's key-value store (the GCS's in a cluster,
//! an in-process one embedded): each publishes its host, process and a listening address, and
//! the group picks its backend by topology — no addresses or ports for the user:
//!
//! * **threads** — every member in one process: a heap segment all of them share;
//! * **shm** — every member on one node: a shared-memory segment (a `memfd`, never a file in
//!   a world-readable place) that rank 0 creates and the others map through
//!   `/proc/<pid>/fd`, which the kernel opens only for processes allowed to inspect rank 0
//!   (its own user);
//! * **tcp** — members on several nodes: a full mesh of TCP connections, each proving the
//!   cluster's token before the listener keeps it; ring algorithms for large messages and
//!   recursive doubling for small ones;
//! * **hierarchical** — members on several nodes, some with several members: within each
//!   node through its shared segment, across nodes over TCP, either by the leaders (each
//!   node's lowest rank) alone or, for large vectors where every node has as many members,
//!   by every member with its share on a ring of its own (see `hier.rs`); send/recv use the
//!   TCP mesh of all members.
//!
//! The threads and shm backends run one algorithm on one segment layout, NCCL-SHM style: a
//! message is processed in chunks of `collective_chunk_bytes`; each member stages the others'
//! slices of its chunk in its slot, and every member reduces its own slice of the chunk from
//! its input and all other slots at once, writing it to its output and to a result area the
//! others copy from.
//!
//! Every operation carries a small header (kind, element type, reduce op, count, root) that
//! each member checks against the others': mismatched calls fail with
//! [`Error::InvalidArgument`] on the members that see the mismatch (and with
//! [`Error::Collective`] on the others), never with a silently wrong result. A member that
//! dies, or drops its communicator, fails the operation on every other member with an
//! [`Error::Collective`] naming its rank, at once (or, for a member that hangs, after
//! `collective_timeout`). After a failure the communicator is unusable: every later call
//! returns the error; join a new group to go on.
//!
//! Calls on one communicator run one at a time, in the order they are made, and every member
//! must make the same sequence of collective calls. `send` returns once the message is staged
//! (shm, threads: up to one chunk is buffered; tcp: once the kernel took it), so two members
//! that both send more than that to each other before receiving wait on each other until the
//! timeout fails them, as with MPI's synchronous sends.
#![allow(unsafe_code)] // shared segments and raw socket calls, each argued where it is

mod element;
mod hier;
mod shared;
mod tcp;

pub use element::{Element, ReduceOp};
/// The 16-bit float types collectives take (from the `half` crate).
pub use half::{bf16, f16};

use crate::sync::mpsc;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::error::Error;
use crate::object::ObjectRef;
use crate::sync::{Arc, Mutex, lock};
use element::Reducer;

/// The kinds of operation, as carried in headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Allreduce = 1,
    Allgather = 2,
    ReduceScatter = 3,
    Broadcast = 4,
    Reduce = 5,
    SendRecv = 6,
    Barrier = 7,
}

impl Kind {
    fn name(code: u8) -> &'static str {
        match code {
            1 => "allreduce",
            2 => "allgather",
            3 => "reduce_scatter",
            4 => "broadcast",
            5 => "reduce",
            6 => "send/recv",
            7 => "barrier",
            _ => "an unknown operation",
        }
    }
}

/// What a member says it is doing: compared across members before any data is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u8,
    pub(crate) dtype: u8,
    pub(crate) op: u8,
    pub(crate) root: u32,
    pub(crate) count: u64,
}

impl Header {
    fn new<T: Element>(kind: Kind, count: usize, op: Option<ReduceOp>, root: usize) -> Self {
        Header {
            kind: kind as u8,
            dtype: T::DTYPE,
            op: op.map_or(0, ReduceOp::code),
            root: root as u32,
            count: count as u64,
        }
    }

    fn barrier() -> Self {
        Header {
            kind: Kind::Barrier as u8,
            dtype: 0,
            op: 0,
            root: 0,
            count: 0,
        }
    }

    pub(crate) fn pack(&self) -> [u64; 2] {
        [
            self.kind as u64
                | (self.dtype as u64) << 8
                | (self.op as u64) << 16
                | (self.root as u64) << 32,
            self.count,
        ]
    }

    pub(crate) fn unpack(w: [u64; 2]) -> Self {
        Header {
            kind: w[0] as u8,
            dtype: (w[0] >> 8) as u8,
            op: (w[0] >> 16) as u8,
            root: (w[0] >> 32) as u32,
            count: w[1],
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Kind::name(self.kind))?;
        if self.kind != Kind::Barrier as u8 {
            write!(f, " of {} {}", self.count, element::dtype_name(self.dtype))?;
        }
        if self.op != 0 {
            write!(f, " ({})", ReduceOp::name_of(self.op))?;
        }
        if self.kind == Kind::Broadcast as u8 || self.kind == Kind::Reduce as u8 {
            write!(f, " with root {}", self.root)?;
        }
        Ok(())
    }
}

/// How an operation failed inside a backend; [`Communicator`] turns it into an [`Error`].
#[derive(Debug)]
pub(crate) enum Fault {
    /// A member failed: died, left, closed its connection, or reported a failure.
    Peer { rank: usize, message: String },
    /// A member did not arrive within the timeout.
    Timeout { rank: usize, waited: Duration },
    /// The members disagree about the operation.
    Mismatch(String),
    /// The operating system failed a call.
    Os(String),
}

/// Describes the first member whose header differs from `mine`, if any.
pub(crate) fn mismatch(me: usize, mine: &Header, others: &[(usize, Header)]) -> Option<Fault> {
    let (rank, theirs) = others.iter().find(|(_, h)| h != mine)?;
    Some(Fault::Mismatch(format!(
        "rank {me} called {mine} but rank {rank} called {theirs}"
    )))
}

/// One way of moving and reducing the members' bytes (threads, shared memory, TCP; the GPU
/// backend adds NCCL). Byte slices hold whole elements of the header's type; an `input` of
/// `None` means the operation is in place on `out`.
pub(crate) trait Backend: Send {
    /// The backend's name (`threads`, `shm`, `tcp`).
    fn name(&self) -> &'static str;
    fn allreduce(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault>;
    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault>;
    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault>;
    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault>;
    fn reduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        root: usize,
        red: &Reducer,
    ) -> Result<(), Fault>;
    fn send(&mut self, h: &Header, data: &[u8], dst: usize) -> Result<(), Fault>;
    fn recv(&mut self, h: &Header, data: &mut [u8], src: usize) -> Result<(), Fault>;
    fn barrier(&mut self, h: &Header) -> Result<(), Fault>;
    /// Tells the other members that this one is gone (its communicator dropped, or failed;
    /// `mismatch`: because the members' arguments disagree).
    fn leave(&mut self, mismatch: bool);
}

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    name: String,
    rank: usize,
    world: usize,
    /// Rank 0's join nonce: names this incarnation of the group.
    nonce: u64,
    backend_name: &'static str,
    backend: Mutex<Box<dyn Backend>>,
    failed: Mutex<Option<Error>>,
    splits: Mutex<HashMap<Vec<usize>, u32>>,
    /// The thread running this member's asynchronous operations in order.
    executor: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.backend).leave(false);
    }
}

/// A member's handle on a collective group: `Send + Sync`, cheap to clone (clones are the same
/// member). Dropping the last clone leaves the group (the other members' next operation
/// fails naming this rank).
#[derive(Clone)]
pub struct Communicator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Communicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Communicator")
            .field("group", &self.inner.name)
            .field("rank", &self.inner.rank)
            .field("world_size", &self.inner.world)
            .field("backend", &self.inner.backend_name)
            .finish()
    }
}

fn invalid(what: &str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what: what.to_owned(),
        message: message.into(),
    }
}

impl Communicator {
    /// [`Communicator::join`] from inside an actor-group member (its constructor or a method):
    /// the rank and size are the member's own (`manta::group_rank`, `group_world_size`), so
    /// the group needs no rank bookkeeping; `name` is the group's
    /// [`GroupMember::collective_name`](crate::placement_group::GroupMember::collective_name).
    /// Outside a member it is an [`Error::InvalidArgument`].
    pub fn join_group(name: &str) -> Result<Communicator, Error> {
        match (
            crate::placement_group::group_rank(),
            crate::placement_group::group_world_size(),
        ) {
            (Some(rank), Some(world_size)) => Communicator::join(name, rank, world_size),
            _ => Err(invalid(
                "Communicator::join_group",
                "called outside an actor group's member (use Communicator::join)",
            )),
        }
    }

    /// Rendezvous through the key-value store (the GCS's in a cluster, in-process embedded);
    /// blocks until all `world_size` ranks joined `name`, bounded by the collective timeout
    /// (`collective_timeout`), and picks the group's backend by where its members run.
    ///
    /// Every member calls it with the same `name` and `world_size` and a distinct `rank` below
    /// `world_size`. A name may be reused once the group that had it has finished joining.
    pub fn join(name: &str, rank: usize, world_size: usize) -> Result<Communicator, Error> {
        if name.trim().is_empty() {
            return Err(invalid("Communicator::join: name", "the name is empty"));
        }
        if world_size == 0 || rank >= world_size {
            return Err(invalid(
                "Communicator::join: rank",
                format!("rank {rank} is not below world_size {world_size}"),
            ));
        }
        let rt = crate::runtime::current_inner().ok_or(Error::NotInitialized)?;
        let settings = shared::Settings::from_config(&rt.config)?;
        let token = rt.cluster.as_ref().map(|c| c.token().to_owned());
        let bind_host = rt
            .cluster
            .as_ref()
            .and_then(|c| c.address().rsplit_once(':').map(|(h, _)| h.to_owned()));
        drop(rt);
        let joined = rendezvous::join(name, rank, world_size, &settings, token, bind_host)
            .map_err(|fault| fault_error(name, "join", fault))?;
        Ok(Communicator {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                rank,
                world: world_size,
                nonce: joined.nonce,
                backend_name: joined.backend.name(),
                backend: Mutex::new(joined.backend),
                failed: Mutex::new(None),
                splits: Mutex::new(HashMap::new()),
                executor: Mutex::new(None),
            }),
        })
    }

    /// This member's rank in `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// The number of members.
    pub fn world_size(&self) -> usize {
        self.inner.world
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The backend the group chose: `threads`, `shm`, `tcp` or `hierarchical`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend_name
    }

    fn run(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn Backend) -> Result<(), Fault>,
    ) -> Result<(), Error> {
        let mut backend = lock(&self.inner.backend);
        if let Some(e) = lock(&self.inner.failed).clone() {
            return Err(Error::Collective {
                group: self.inner.name.clone(),
                op,
                rank: None,
                message: format!("the communicator failed earlier and cannot be used: {e}"),
            });
        }
        match f(&mut **backend) {
            Ok(()) => Ok(()),
            Err(fault) => {
                let mismatch = matches!(fault, Fault::Mismatch(_));
                let e = fault_error(&self.inner.name, op, fault);
                *lock(&self.inner.failed) = Some(e.clone());
                backend.leave(mismatch);
                Err(e)
            }
        }
    }

    fn check_root(&self, what: &str, root: usize) -> Result<(), Error> {
        if root >= self.inner.world {
            return Err(invalid(
                what,
                format!("rank {root} is not below world_size {}", self.inner.world),
            ));
        }
        Ok(())
    }

    /// Reduces `data` element-wise across the members, in place: every member ends with the
    /// result. Every member passes the same length.
    pub fn allreduce<T: Element>(&self, data: &mut [T], op: ReduceOp) -> Result<(), Error> {
        let h = Header::new::<T>(Kind::Allreduce, data.len(), Some(op), 0);
        let red = Reducer::of::<T>(op);
        self.run("allreduce", |b| {
            b.allreduce(&h, None, bytemuck::cast_slice_mut(data), &red)
        })?;
        self.finish_avg(op, data);
        Ok(())
    }

    /// [`allreduce`](Self::allreduce) of `input` into `output` (of the same length).
    pub fn allreduce_into<T: Element>(
        &self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<(), Error> {
        if input.len() != output.len() {
            return Err(invalid(
                "allreduce_into: output",
                format!(
                    "output holds {} elements, input {}",
                    output.len(),
                    input.len()
                ),
            ));
        }
        let h = Header::new::<T>(Kind::Allreduce, input.len(), Some(op), 0);
        let red = Reducer::of::<T>(op);
        self.run("allreduce", |b| {
            b.allreduce(
                &h,
                Some(bytemuck::cast_slice(input)),
                bytemuck::cast_slice_mut(output),
                &red,
            )
        })?;
        self.finish_avg(op, output);
        Ok(())
    }

    fn finish_avg<T: Element>(&self, op: ReduceOp, data: &mut [T]) {
        if op == ReduceOp::Avg {
            let n = self.inner.world;
            data.iter_mut().for_each(|x| *x = T::divide(*x, n));
        }
    }

    /// Gathers every member's `input` (all of one length `n`) into `output` (`n ×
    /// world_size` elements), in rank order, on every member.
    pub fn allgather<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<(), Error> {
        if output.len() != input.len() * self.inner.world {
            return Err(invalid(
                "allgather: output",
                format!(
                    "output holds {} elements, not input's {} × {} members",
                    output.len(),
                    input.len(),
                    self.inner.world
                ),
            ));
        }
        let h = Header::new::<T>(Kind::Allgather, input.len(), None, 0);
        self.run("allgather", |b| {
            b.allgather(
                &h,
                bytemuck::cast_slice(input),
                bytemuck::cast_slice_mut(output),
            )
        })
    }

    /// Reduces `input` (`n × world_size` elements) element-wise across the members and leaves
    /// block `rank` of the result (`n` elements) in `output`.
    pub fn reduce_scatter<T: Element>(
        &self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<(), Error> {
        if input.len() != output.len() * self.inner.world {
            return Err(invalid(
                "reduce_scatter: input",
                format!(
                    "input holds {} elements, not output's {} × {} members",
                    input.len(),
                    output.len(),
                    self.inner.world
                ),
            ));
        }
        let h = Header::new::<T>(Kind::ReduceScatter, output.len(), Some(op), 0);
        let red = Reducer::of::<T>(op);
        self.run("reduce_scatter", |b| {
            b.reduce_scatter(
                &h,
                bytemuck::cast_slice(input),
                bytemuck::cast_slice_mut(output),
                &red,
            )
        })?;
        self.finish_avg(op, output);
        Ok(())
    }

    /// Copies `root`'s `data` into every other member's `data` (of the same length).
    pub fn broadcast<T: Element>(&self, data: &mut [T], root: usize) -> Result<(), Error> {
        self.check_root("broadcast: root", root)?;
        let h = Header::new::<T>(Kind::Broadcast, data.len(), None, root);
        self.run("broadcast", |b| {
            b.broadcast(&h, bytemuck::cast_slice_mut(data), root)
        })
    }

    /// Reduces `data` element-wise across the members into `root`'s `data`; the other
    /// members' `data` is left as it was.
    pub fn reduce<T: Element>(
        &self,
        data: &mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<(), Error> {
        self.check_root("reduce: root", root)?;
        let h = Header::new::<T>(Kind::Reduce, data.len(), Some(op), root);
        let red = Reducer::of::<T>(op);
        self.run("reduce", |b| {
            b.reduce(&h, bytemuck::cast_slice_mut(data), root, &red)
        })?;
        if self.inner.rank == root {
            self.finish_avg(op, data);
        }
        Ok(())
    }

    fn check_peer(&self, what: &str, peer: usize) -> Result<(), Error> {
        self.check_root(what, peer)?;
        if peer == self.inner.rank {
            return Err(invalid(what, format!("rank {peer} is this member itself")));
        }
        Ok(())
    }

    /// Sends `data` to member `dst`, which receives it with [`recv`](Self::recv) (same type
    /// and length). Messages between two members arrive in the order sent.
    pub fn send<T: Element>(&self, data: &[T], dst: usize) -> Result<(), Error> {
        self.check_peer("send: dst", dst)?;
        let h = Header::new::<T>(Kind::SendRecv, data.len(), None, 0);
        self.run("send", |b| b.send(&h, bytemuck::cast_slice(data), dst))
    }

    /// Receives into `data` what member `src` sends with [`send`](Self::send).
    pub fn recv<T: Element>(&self, data: &mut [T], src: usize) -> Result<(), Error> {
        self.check_peer("recv: src", src)?;
        let h = Header::new::<T>(Kind::SendRecv, data.len(), None, 0);
        self.run("recv", |b| b.recv(&h, bytemuck::cast_slice_mut(data), src))
    }

    /// Returns once every member called it.
    pub fn barrier(&self) -> Result<(), Error> {
        self.run("barrier", |b| b.barrier(&Header::barrier()))
    }

    /// A sub-communicator of the given ranks of this group (every listed rank calls it with
    /// the same list; the others do not). This member's rank in it is its index in `ranks`.
    pub fn split(&self, ranks: &[usize]) -> Result<Communicator, Error> {
        let what = "split: ranks";
        if ranks.is_empty() {
            return Err(invalid(what, "the list is empty"));
        }
        let mut seen = vec![false; self.inner.world];
        for &r in ranks {
            if r >= self.inner.world || std::mem::replace(&mut seen[r], true) {
                return Err(invalid(
                    what,
                    format!(
                        "{ranks:?} must be distinct ranks below {}",
                        self.inner.world
                    ),
                ));
            }
        }
        let Some(new_rank) = ranks.iter().position(|&r| r == self.inner.rank) else {
            return Err(invalid(
                what,
                format!(
                    "{ranks:?} does not list this member's rank {}",
                    self.inner.rank
                ),
            ));
        };
        if let Some(e) = lock(&self.inner.failed).clone() {
            return Err(e);
        }
        let n = {
            let mut splits = lock(&self.inner.splits);
            let n = splits.entry(ranks.to_vec()).or_insert(0);
            *n += 1;
            *n
        };
        let list: Vec<String> = ranks.iter().map(ToString::to_string).collect();
        let name = format!(
            "{}#{:x}/split{n}:{}",
            self.inner.name,
            self.inner.nonce,
            list.join(",")
        );
        Communicator::join(&name, new_rank, ranks.len())
    }

    /// Runs `job` on this member's executor thread, after the asynchronous operations
    /// submitted before it.
    fn submit<R: Send + 'static>(
        &self,
        job: impl FnOnce(&Communicator) -> Result<R, Error> + Send + 'static,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let job: Job = Box::new(move || {
            let _ = tx.send(job(&me));
        });
        let queued = {
            let mut executor = lock(&self.inner.executor);
            let sender = match executor.as_ref() {
                Some(s) => Ok(s.clone()),
                None => {
                    let (s, r) = mpsc::channel::<Job>();
                    std::thread::Builder::new()
                        .name(format!("manta-coll-{}", self.inner.rank))
                        .spawn(move || {
                            while let Ok(job) = r.recv() {
                                job();
                            }
                        })
                        .map(|_| {
                            *executor = Some(s.clone());
                            s
                        })
                }
            };
            match sender {
                Ok(s) => s
                    .send(job)
                    .map_err(|_| "the executor thread is gone".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        let group = self.inner.name.clone();
        async move {
            if let Err(message) = queued {
                return Err(Error::Collective {
                    group,
                    op: "async",
                    rank: None,
                    message,
                });
            }
            rx.await.map_err(|_| Error::Collective {
                group,
                op: "async",
                rank: None,
                message: "the operation was dropped before it finished".into(),
            })?
        }
    }

    /// [`allreduce`](Self::allreduce) as a future: runs on this member's executor thread,
    /// after the asynchronous operations submitted before it, and resolves to the result.
    pub fn allreduce_async<T: Element>(
        &self,
        mut data: Vec<T>,
        op: ReduceOp,
    ) -> impl Future<Output = Result<Vec<T>, Error>> + Send + 'static {
        self.submit(move |c| c.allreduce(&mut data, op).map(|()| data))
    }

    /// [`allgather`](Self::allgather) as a future (see [`allreduce_async`](Self::allreduce_async)).
    pub fn allgather_async<T: Element>(
        &self,
        input: Vec<T>,
    ) -> impl Future<Output = Result<Vec<T>, Error>> + Send + 'static {
        self.submit(move |c| {
            let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); input.len() * c.world_size()];
            c.allgather(&input, &mut out).map(|()| out)
        })
    }

    /// [`reduce_scatter`](Self::reduce_scatter) as a future (see
    /// [`allreduce_async`](Self::allreduce_async)).
    pub fn reduce_scatter_async<T: Element>(
        &self,
        input: Vec<T>,
        op: ReduceOp,
    ) -> impl Future<Output = Result<Vec<T>, Error>> + Send + 'static {
        self.submit(move |c| {
            let mut out =
                vec![<T as bytemuck::Zeroable>::zeroed(); input.len() / c.world_size().max(1)];
            c.reduce_scatter(&input, &mut out, op).map(|()| out)
        })
    }

    /// [`broadcast`](Self::broadcast) as a future (see
    /// [`allreduce_async`](Self::allreduce_async)).
    pub fn broadcast_async<T: Element>(
        &self,
        mut data: Vec<T>,
        root: usize,
    ) -> impl Future<Output = Result<Vec<T>, Error>> + Send + 'static {
        self.submit(move |c| c.broadcast(&mut data, root).map(|()| data))
    }

    /// [`barrier`](Self::barrier) as a future (see [`allreduce_async`](Self::allreduce_async)).
    pub fn barrier_async(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.submit(|c| c.barrier())
    }

    /// [`allreduce`](Self::allreduce) of a stored vector: reads `input` in place (zero-copy,
    /// [`get_view`](crate::get_view)) and returns a new object holding the result, itself
    /// read zero-copy with `get_view`.
    pub fn allreduce_ref<T>(
        &self,
        input: &ObjectRef<Vec<T>>,
        op: ReduceOp,
    ) -> Result<ObjectRef<Vec<T>>, Error>
    where
        T: Element + crate::view::Element + serde::Serialize,
    {
        let view = input.get_view()?;
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); view.len()];
        self.allreduce_into(&view, &mut out, op)?;
        drop(view);
        crate::api::put(out).map_err(|e| e.error)
    }

    /// [`allgather`](Self::allgather) of a stored vector (see
    /// [`allreduce_ref`](Self::allreduce_ref)).
    pub fn allgather_ref<T>(&self, input: &ObjectRef<Vec<T>>) -> Result<ObjectRef<Vec<T>>, Error>
    where
        T: Element + crate::view::Element + serde::Serialize,
    {
        let view = input.get_view()?;
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); view.len() * self.world_size()];
        self.allgather(&view, &mut out)?;
        drop(view);
        crate::api::put(out).map_err(|e| e.error)
    }

    /// [`reduce_scatter`](Self::reduce_scatter) of a stored vector (see
    /// [`allreduce_ref`](Self::allreduce_ref)).
    pub fn reduce_scatter_ref<T>(
        &self,
        input: &ObjectRef<Vec<T>>,
        op: ReduceOp,
    ) -> Result<ObjectRef<Vec<T>>, Error>
    where
        T: Element + crate::view::Element + serde::Serialize,
    {
        let view = input.get_view()?;
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); view.len() / self.world_size()];
        self.reduce_scatter(&view, &mut out, op)?;
        drop(view);
        crate::api::put(out).map_err(|e| e.error)
    }
}

/// The error a backend's fault becomes.
fn fault_error(group: &str, op: &'static str, fault: Fault) -> Error {
    let collective = |rank, message| Error::Collective {
        group: group.to_owned(),
        op,
        rank,
        message,
    };
    match fault {
        Fault::Peer { rank, message } => collective(Some(rank), message),
        Fault::Timeout { rank, waited } => collective(
            Some(rank),
            format!("rank {rank} did not arrive within {waited:?} (collective_timeout)"),
        ),
        Fault::Mismatch(message) => invalid(&format!("{op} on group {group:?}"), message),
        Fault::Os(message) => collective(None, message),
    }
}

mod rendezvous;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communicators_are_send_sync_and_clone() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Communicator>();
    }

    #[test]
    fn headers_round_trip_and_describe_the_call() {
        let h = Header::new::<f32>(Kind::Broadcast, 123, None, 3);
        assert_eq!(Header::unpack(h.pack()), h);
        assert_eq!(h.to_string(), "broadcast of 123 float with root 3");
        let h = Header::new::<half::bf16>(Kind::Allreduce, 9, Some(ReduceOp::Avg), 0);
        assert_eq!(Header::unpack(h.pack()), h);
        assert_eq!(h.to_string(), "allreduce of 9 bfloat16 (avg)");
        assert_eq!(Header::barrier().to_string(), "barrier");
    }

    #[test]
    fn a_mismatch_names_both_ranks_and_calls() {
        let mine = Header::new::<i32>(Kind::Allreduce, 4, Some(ReduceOp::Sum), 0);
        let theirs = Header::new::<i32>(Kind::Allreduce, 5, Some(ReduceOp::Sum), 0);
        assert!(mismatch(0, &mine, &[(0, mine), (1, mine)]).is_none());
        match mismatch(0, &mine, &[(0, mine), (1, theirs)]) {
            Some(Fault::Mismatch(m)) => assert_eq!(
                m,
                "rank 0 called allreduce of 4 int32 (sum) but rank 1 called allreduce of 5 \
                 int32 (sum)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reductions_of_every_type() {
        let mut a = [1.0f32, 5.0, -2.0];
        f32::reduce_slice(ReduceOp::Max, &mut a, &[3.0, 4.0, -1.0]);
        assert_eq!(a, [3.0, 5.0, -1.0]);
        let mut b = [250u8, 3];
        u8::reduce_slice(ReduceOp::Sum, &mut b, &[10, 4]);
        assert_eq!(b, [4, 7], "integer sums wrap");
        let mut c = [half::f16::from_f32(1.5)];
        half::f16::reduce_slice(ReduceOp::Prod, &mut c, &[half::f16::from_f32(2.0)]);
        assert_eq!(c[0].to_f32(), 3.0);
        assert_eq!(i64::divide(-9, 2), -4);
        // The type-erased form, on unaligned bytes too.
        let red = Reducer::of::<i32>(ReduceOp::Min);
        let mut raw = [0u8; 9];
        raw[1..5].copy_from_slice(&7i32.to_le_bytes());
        raw[5..9].copy_from_slice(&(-3i32).to_le_bytes());
        let src: Vec<u8> = [5i32, 5].iter().flat_map(|x| x.to_le_bytes()).collect();
        red.apply(&mut raw[1..9], &src);
        assert_eq!(&raw[1..5], &5i32.to_le_bytes());
        assert_eq!(&raw[5..9], &(-3i32).to_le_bytes());
    }
}
