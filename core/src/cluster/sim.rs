//! A seeded simulated cluster for the sans-I/O protocol cores (tests only): one thread drives
//! several processes' state machines over a simulated network, with message delay, reordering
//! between connections (each connection is FIFO, as TCP is), connection loss and process
//! crash, and checks invariants after every step. A failing seed prints itself; replay it
//! with `MANTA_SIM_SEED=<seed>` (`MANTA_SIM_TRACE=<n>` shows its last `n` events), or run
//! more seeds with `MANTA_SIM_SEEDS=<count>`.
//!
//! # The model
//!
//! - [`Net`] is the network: one FIFO queue per ordered pair of processes, each message
//!   ready after a seeded delay (never before the one ahead of it on its connection). A step
//!   delivers the head of one ready connection chosen by the seed, so messages on different
//!   connections are reordered freely. Process 0 is the GCS: the real one
//!   (`gcs_tables.rs`), with every process registered as a node of one worker and
//!   subscribed; a crash closes the process's GCS connection, and the node death the GCS
//!   publishes is how the others learn it.
//! - A [`World`] holds the processes. Each is a worker: its [`ReferenceCounter`] (the real
//!   one, the code under test) and a model of the shell around it (`borrow.rs`, the task
//!   and object paths of the core worker): handles are `Rc`s whose drops are the events the
//!   shell feeds the counter, as `Arc`s are in the runtime; a task's owner holds its arguments
//!   until `TaskDone`; an executor holds a result with references in it until `FreeObject`;
//!   deserialising a reference owned elsewhere registers a borrow and waits for the owner's
//!   answer before the value is used. (One simplification: a read of a result goes to its
//!   owner, which answers with what `TaskDone` told it; the runtime redirects such a read to
//!   the executor holding the bytes, whose hold keeps the references in it alive the same.)
//! - What processes do is a small program of [`Op`]s per process (its driver code) and per
//!   task (a task's body): put, submit, get, read a value, drop, keep in an actor's state,
//!   return, exit. A program step that must wait (an answer, a result, a pulled value) is
//!   tried again later, so the seed interleaves programs with deliveries.
//! - Faults ([`Chaos`]): a process crashes (its messages are lost, and the GCS tells every
//!   other process, its notices delayed as any message); a connection is lost (each end takes the other for dead,
//!   as the core worker does when a connection closes). Besides, the work a handle's drop
//!   triggers (`end_borrow`, `FreeObject`) may come some steps late, as another thread may
//!   run between an `Arc`'s last drop and its `Drop`.
//! - Two ways to run: [`World::run`] interleaves everything as the seed says (the scenarios,
//!   and random programs, over hundreds of seeds); [`World::exec`] with [`World::settle`]
//!   and [`World::pause`] goes step by step, for tests that check the state between steps
//!   (Ray's cases in `reference_counter.rs`).
//!
//! # Invariants (checked after every step)
//!
//! 1. No object is freed while a live process holds an acknowledged borrow of it, unless
//!    one of the two took the other for dead.
//! 2. Without faults, no borrow registration fails, no read finds its object freed, and no
//!    owner deserialises a reference to an object of its own that is gone.
//! 3. Every program finishes (no wait without a bound): when nothing can move, the run fails.
//! 4. At the end (programs done, then the actors' state dropped as when the job ends, network
//!    quiet), every object of a live owner is freed, and the live processes' reference
//!    counters are empty; the GCS lists exactly the crashed processes' nodes dead.
//!
//! A message to a dead process is dropped on delivery: none matters.
//!
//! # Adding a state machine
//!
//! A process's state machines live in [`Proc`]; their messages are variants of [`Wire`].
//! To add one (the pull queue, the GCS's tables, a raylet's worker table):
//!
//! 1. add it as a field of [`Proc`] (or of a new node type next to it, driven by the same
//!    [`Net`]; the GCS is process 0),
//! 2. add its messages to [`Wire`] and handle them in `World::deliver`, calling the state
//!    machine and sending what it returns with `World::send`,
//! 3. feed it the deaths in `World::worker_lost` and the local events in `World::flush`,
//! 4. state its invariants in `World::check` (after every step) and `World::check_end`,
//! 5. write scenarios as programs ([`Op`]) and run them over seeds with [`run_seeds`].
//!
//! A state machine that talks to other parties than workers' reference counters can have a
//! world of its own on the same [`Net`] and [`Rng`]: the `raylet` module below drives the
//! raylet's worker table (`worker_table.rs`) with owners asking for workers, worker
//! processes that boot, crash and host detached actors, and the real GCS tables ending jobs
//! when their drivers leave, with its invariants after every step (one process per job at a
//! time, every request answered once with ready workers of its job and never one whose
//! connection closed, an assembled SPMD job answered at once, nothing kept past its job but
//! hosts of detached actors, nothing running at the end).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::{Rc, Weak};

use std::time::{Duration, Instant};

use super::INDEX_SHIFT;
use super::gcs_tables::{self, GcsTables};
use super::owner_of;
use super::proto::{Msg, Node};
use super::reference_counter::{Answer, BorrowHandle, Out, ReferenceCounter, Registration};
use super::worker_table::Conn;

/// A small seeded generator (SplitMix64): the same seed, the same run.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The network: FIFO connections between processes, each message ready after a delay.
#[derive(Debug)]
pub(crate) struct Net<M> {
    rng: Rng,
    /// The time, in steps.
    now: u64,
    /// The longest delay of a message, in steps.
    max_delay: u64,
    /// Per connection `(from, to)`: its messages and when each is ready.
    links: BTreeMap<(u64, u64), VecDeque<(u64, M)>>,
}

impl<M> Net<M> {
    pub(crate) fn new(seed: u64, max_delay: u64) -> Net<M> {
        Net {
            rng: Rng::new(seed ^ 0x5eed_0f4e),
            now: 0,
            max_delay,
            links: BTreeMap::new(),
        }
    }

    /// Queues `msg` on connection `from → to`.
    pub(crate) fn send(&mut self, from: u64, to: u64, msg: M) {
        let delay = self.rng.below(self.max_delay + 1);
        let q = self.links.entry((from, to)).or_default();
        let ready = q.back().map_or(0, |(r, _)| *r).max(self.now + delay);
        q.push_back((ready, msg));
    }

    /// The connections whose next message is ready.
    pub(crate) fn ready(&self) -> Vec<(u64, u64)> {
        self.links
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|(r, _)| *r <= self.now))
            .map(|(l, _)| *l)
            .collect()
    }

    /// The next message on connection `link`.
    pub(crate) fn pop(&mut self, link: (u64, u64)) -> Option<M> {
        let q = self.links.get_mut(&link)?;
        let m = q.pop_front().map(|(_, m)| m);
        if q.is_empty() {
            self.links.remove(&link);
        }
        m
    }

    /// Drops every message queued between `a` and `b`, both ways (a lost connection).
    pub(crate) fn cut(&mut self, a: u64, b: u64) {
        self.links.remove(&(a, b));
        self.links.remove(&(b, a));
    }

    /// Whether no message is queued.
    pub(crate) fn quiet(&self) -> bool {
        self.links.is_empty()
    }

    /// Time passes: the next message becomes ready.
    pub(crate) fn advance(&mut self) {
        let next = self
            .links
            .values()
            .filter_map(|q| q.front().map(|(r, _)| *r))
            .min();
        self.now = next.map_or(self.now + 1, |n| n.max(self.now + 1));
    }
}

/// How often faults strike, per step.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Chaos {
    /// The longest message delay, in steps.
    pub(crate) max_delay: u64,
    /// Probability that a worker process (not process 1, the driver) crashes.
    pub(crate) crash: f64,
    /// Probability that a connection between two processes is lost.
    pub(crate) cut: f64,
    /// Whether the end of a dropped handle (its `end_borrow`, its `FreeObject`) may come
    /// some steps after the drop: in the runtime another thread may run between a handle's
    /// last drop and its `Drop`'s work.
    pub(crate) late_drops: bool,
    /// Whether the GCS restarts once, from its saved tables: processes heartbeat, rejoin it
    /// after a delay, and one that crashed meanwhile is declared dead by the node timeout.
    pub(crate) gcs_restart: bool,
}

impl Chaos {
    /// Delays and reordering only.
    pub(crate) fn delays() -> Chaos {
        Chaos {
            max_delay: 6,
            late_drops: true,
            ..Chaos::default()
        }
    }

    /// Delays, crashes and lost connections.
    pub(crate) fn faults() -> Chaos {
        Chaos {
            max_delay: 6,
            crash: 0.01,
            cut: 0.01,
            late_drops: true,
            gcs_restart: false,
        }
    }

    /// Faults, and a restart of the GCS.
    pub(crate) fn head_restart() -> Chaos {
        Chaos {
            gcs_restart: true,
            ..Chaos::faults()
        }
    }
}

/// A name for a reference in a program (a variable of the user's code).
pub(crate) type Name = &'static str;

/// One step of a program (the user code of a process or the body of a task).
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// `name = put(value holding nested)`: a new object owned here.
    Put { name: Name, nested: Vec<Name> },
    /// `result = task.remote(args...)` on process `to`: the references `args` travel inline
    /// (the executor borrows them); each of `by_ref` is an argument passed by reference (the
    /// executor reads its value, not a borrow: the owner holds it until the task is done).
    Submit {
        to: u64,
        args: Vec<Name>,
        by_ref: Vec<Name>,
        body: Vec<Op>,
        result: Name,
    },
    /// `into = get(result)`: waits for the task, then deserialises the references in its
    /// value (a failed task gives none).
    Get { result: Name, into: Vec<Name> },
    /// `into = get(of)`: reads the value of object `of` (pulled from its owner) and
    /// deserialises the references in it.
    Unwrap { of: Name, into: Vec<Name> },
    /// Drops a reference.
    Drop(Name),
    /// Moves references into this process's actor state.
    Keep(Vec<Name>),
    /// Moves references back from the actor state.
    Take(Vec<Name>),
    /// Drops the whole actor state.
    DropKept,
    /// Ends the task: its result holds these references.
    Return(Vec<Name>),
    /// The process exits (crashes).
    Exit,
}

/// Shorthands for programs.
pub(crate) mod ops {
    use super::{Name, Op};

    pub(crate) fn put(name: Name, nested: &[Name]) -> Op {
        Op::Put {
            name,
            nested: nested.to_vec(),
        }
    }
    pub(crate) fn submit(to: u64, args: &[Name], body: Vec<Op>, result: Name) -> Op {
        Op::Submit {
            to,
            args: args.to_vec(),
            by_ref: Vec::new(),
            body,
            result,
        }
    }
    pub(crate) fn submit_by_ref(to: u64, by_ref: &[Name], body: Vec<Op>, result: Name) -> Op {
        Op::Submit {
            to,
            args: Vec::new(),
            by_ref: by_ref.to_vec(),
            body,
            result,
        }
    }
    pub(crate) fn get(result: Name, into: &[Name]) -> Op {
        Op::Get {
            result,
            into: into.to_vec(),
        }
    }
    pub(crate) fn unwrap(of: Name, into: &[Name]) -> Op {
        Op::Unwrap {
            of,
            into: into.to_vec(),
        }
    }
    pub(crate) fn drop(name: Name) -> Op {
        Op::Drop(name)
    }
    pub(crate) fn keep(names: &[Name]) -> Op {
        Op::Keep(names.to_vec())
    }
    pub(crate) fn take(names: &[Name]) -> Op {
        Op::Take(names.to_vec())
    }
    pub(crate) fn ret(names: &[Name]) -> Op {
        Op::Return(names.to_vec())
    }
    pub(crate) fn drop_kept() -> Op {
        Op::DropKept
    }
    pub(crate) fn exit() -> Op {
        Op::Exit
    }
}

/// The messages of the simulated cluster.
#[derive(Clone, Debug)]
pub(crate) enum Wire {
    AddBorrowers {
        request_id: u64,
        objects: Vec<u64>,
    },
    BorrowersAdded {
        request_id: u64,
        missing: Vec<u64>,
    },
    RemoveBorrower {
        object_id: u64,
    },
    /// A task whose result (and id) `task` the sender owns.
    PushTask {
        task: u64,
        args: Vec<u64>,
        by_ref: Vec<u64>,
        /// The program's names for `args` then `by_ref` (its body reads them).
        names: Vec<Name>,
        body: Vec<Op>,
    },
    /// The task's result: the references in it (held by the executor if any).
    TaskDone {
        task: u64,
        nested: Vec<u64>,
    },
    /// The owner dropped a result the receiver holds.
    FreeObject {
        object_id: u64,
    },
    /// Reads an object's value (to its owner, which answers for its results too).
    Pull {
        request_id: u64,
        object_id: u64,
    },
    /// The references in the value (`None`: not known here).
    Value {
        request_id: u64,
        nested: Option<Vec<u64>>,
    },
    /// From the GCS (its node death notices are the ones that matter).
    Gcs(Msg),
}

/// A connection to the simulated GCS: the process's index, and whether it closed.
#[derive(Clone, Debug)]
pub(crate) struct Link(u64, Rc<Cell<bool>>);

impl Conn for Link {
    fn same(&self, other: &Self) -> bool {
        self.0 == other.0
    }
    fn is_closed(&self) -> bool {
        self.1.get()
    }
}

/// The simulated GCS: the real tables, one connection per process, and its clock (a step is
/// a millisecond; no process heartbeats, so the node timeout is longer than any run).
#[derive(Debug)]
struct SimGcs {
    tables: GcsTables<Link>,
    links: Vec<Link>,
    t0: Instant,
    node_timeout: Duration,
    /// It restarted (once per run).
    restarted: bool,
    /// Processes that lost it, and the step at which each rejoins.
    rejoin_at: BTreeMap<u64, u64>,
    /// Processes that rejoined and wait for its answer (then they read its node table).
    rejoining: HashSet<u64>,
}

/// With [`Chaos::gcs_restart`]: the node timeout (in steps, a step being a millisecond), and
/// how often a process heartbeats.
const SIM_NODE_TIMEOUT: u64 = 200;
const SIM_HEARTBEAT: u64 = 20;

/// What the oracle knows of one process, shared with its handles' drops.
#[derive(Debug)]
struct Ctx {
    me: u64,
    /// Set when the process crashed: its drops are no events.
    dead: Cell<bool>,
    /// Ends of borrows and of results, for the shell to handle (as `Drop` calls it).
    events: RefCell<Vec<Event>>,
    /// Objects of this process freed since the last check.
    freed: RefCell<Vec<u64>>,
}

#[derive(Debug)]
enum Event {
    EndBorrow { id: u64, epoch: u64 },
    FreeResult { holder: u64, id: u64 },
}

/// An object owned here: dropping the last handle frees it (and its nested references).
#[derive(Debug)]
pub(crate) struct Owned {
    id: u64,
    nested: Vec<Ref>,
    ctx: Rc<Ctx>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.ctx.dead.get() {
            self.ctx.freed.borrow_mut().push(self.id);
        }
    }
}

/// A result owned here (the task's submitter owns it), held by its executor.
#[derive(Debug)]
pub(crate) struct ResultObj {
    id: u64,
    holder: u64,
    /// `None` until the task is done; then the references in its value (empty if it
    /// failed).
    nested: RefCell<Option<Vec<u64>>>,
    /// Whether the executor holds it (it has references in it).
    held: Cell<bool>,
    ctx: Rc<Ctx>,
}

impl Drop for ResultObj {
    fn drop(&mut self) {
        if self.ctx.dead.get() {
            return;
        }
        self.ctx.freed.borrow_mut().push(self.id);
        if self.held.get() {
            self.ctx.events.borrow_mut().push(Event::FreeResult {
                holder: self.holder,
                id: self.id,
            });
        }
    }
}

/// A borrowed reference's registration (the `RemoteObject` of `borrow.rs`).
#[derive(Debug)]
pub(crate) struct Remote {
    id: u64,
    epoch: u64,
    ctx: Rc<Ctx>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if !self.ctx.dead.get() {
            self.ctx.events.borrow_mut().push(Event::EndBorrow {
                id: self.id,
                epoch: self.epoch,
            });
        }
    }
}

/// A handle a program holds.
#[derive(Clone, Debug)]
pub(crate) enum Ref {
    Owned(Rc<Owned>),
    Result(Rc<ResultObj>),
    Borrowed(Rc<Remote>),
    /// An argument passed by reference: readable while the task runs, not a handle.
    Arg(u64),
}

impl Ref {
    fn id(&self) -> u64 {
        match self {
            Ref::Owned(o) => o.id,
            Ref::Result(r) => r.id,
            Ref::Borrowed(b) => b.id,
            Ref::Arg(id) => *id,
        }
    }
}

/// The borrowed-table entry of the simulated shell.
#[derive(Debug)]
pub(crate) struct Entry(Weak<Remote>);

impl BorrowHandle for Entry {
    fn is_live(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// An object owned here that other processes may look up (the runtime's escaped table).
#[derive(Debug)]
enum Escaped {
    Owned(Weak<Owned>),
    Result(Weak<ResultObj>),
}

/// A program running on a process.
#[derive(Debug)]
struct Frame {
    ops: VecDeque<Op>,
    vars: HashMap<Name, Ref>,
    /// The task this frame runs, with its owner, if it is one.
    task: Option<(u64, u64)>,
    /// References deserialised, waiting for their registrations (the decode not returned).
    decoding: Vec<(Option<Name>, Ref)>,
    /// A read in flight: its request and the names for what it brings.
    pulling: Option<(u64, Vec<Name>)>,
    /// A process's main program (`World::exec`): it stays, with its variables, when its ops
    /// run out, for the next ops a test gives it.
    main: bool,
}

impl Frame {
    fn new(ops: Vec<Op>, task: Option<(u64, u64)>, main: bool) -> Frame {
        Frame {
            ops: ops.into(),
            vars: HashMap::new(),
            task,
            decoding: Vec::new(),
            pulling: None,
            main,
        }
    }

    /// Whether it has nothing to do.
    fn idle(&self) -> bool {
        self.ops.is_empty() && self.decoding.is_empty() && self.pulling.is_none()
    }
}

/// A task this process submitted and is waiting for.
#[derive(Debug)]
struct InFlight {
    worker: u64,
    /// The arguments, held until `TaskDone`.
    args: Vec<Ref>,
    result: Weak<ResultObj>,
}

/// A read in flight: whom it asked, and the answer once it came (`Some(None)`: nothing
/// there, or the process asked died).
type Pull = (u64, Option<Option<Vec<u64>>>);

/// A registration waiting for its answer: the owner, the `(id, epoch)` pairs and the
/// registrations.
type Registering = (u64, Vec<(u64, u64)>, Vec<Rc<Remote>>);

/// One simulated worker process.
#[derive(Debug)]
pub(crate) struct Proc {
    ctx: Rc<Ctx>,
    alive: bool,
    pub(crate) rc: ReferenceCounter<Entry, Ref>,
    escaped: HashMap<u64, Escaped>,
    next_id: u64,
    next_request: u64,
    frames: Vec<Frame>,
    /// The actor state: references kept past the task that got them.
    kept: HashMap<Name, Ref>,
    in_flight: HashMap<u64, InFlight>,
    /// Results with references in them, held for their owners until `FreeObject`.
    held: HashMap<u64, Vec<Ref>>,
    /// Registrations waiting for an answer: the owner, the `(id, epoch)` pairs, and the
    /// registrations themselves, held until the answer (as the registering thread holds
    /// them in `register_borrows`).
    registering: HashMap<u64, Registering>,
    /// Reads in flight: the process asked, and the answer once it came.
    pulls: HashMap<u64, Pull>,
    /// Reads of results not done yet, answered at `TaskDone`: (reader, request).
    pull_waiters: HashMap<u64, Vec<(u64, u64)>>,
    /// Processes this one takes for dead.
    lost: HashSet<u64>,
}

/// The simulated cluster.
#[derive(Debug)]
pub(crate) struct World {
    seed: u64,
    rng: Rng,
    chaos: Chaos,
    net: Net<Wire>,
    /// Processes by worker index; 0 is the GCS (no worker).
    procs: Vec<Proc>,
    gcs: SimGcs,
    /// Object ids by the name their creator gave them (tests ask about them).
    names: HashMap<Name, u64>,
    /// Whether a fault struck (some invariants hold only without).
    faulted: bool,
    /// Whether programs may name what they do not have (generated ones): the step is skipped.
    pub(crate) lenient: bool,
    pub(crate) steps: u64,
    /// Processes a step-by-step test holds (`pause`).
    paused: HashSet<u64>,
    /// Broken invariants noticed while handling a message (reported by `check`).
    violations: Vec<String>,
    /// What happened, for the report of a failing seed.
    trace: Vec<String>,
}

/// Where a step got.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done,
    Blocked,
    Moved,
}

impl World {
    /// A cluster of `workers` processes (indices `1..=workers`; 1 is the driver).
    pub(crate) fn new(workers: u64, seed: u64, chaos: Chaos) -> World {
        let procs = (0..=workers)
            .map(|me| {
                let ctx = Rc::new(Ctx {
                    me,
                    dead: Cell::new(false),
                    events: RefCell::new(Vec::new()),
                    freed: RefCell::new(Vec::new()),
                });
                Proc {
                    ctx,
                    alive: me != 0,
                    rc: ReferenceCounter::new(me),
                    escaped: HashMap::new(),
                    next_id: 1,
                    next_request: 1,
                    frames: Vec::new(),
                    kept: HashMap::new(),
                    in_flight: HashMap::new(),
                    held: HashMap::new(),
                    registering: HashMap::new(),
                    pulls: HashMap::new(),
                    pull_waiters: HashMap::new(),
                    lost: HashSet::new(),
                }
            })
            .collect();
        let mut w = World {
            seed,
            rng: Rng::new(seed),
            chaos,
            net: Net::new(seed, chaos.max_delay),
            procs,
            gcs: {
                // Without restarts no process heartbeats: the timeout is longer than any run.
                let node_timeout = if chaos.gcs_restart {
                    Duration::from_millis(SIM_NODE_TIMEOUT)
                } else {
                    Duration::from_secs(3600)
                };
                SimGcs {
                    tables: GcsTables::new(node_timeout),
                    links: (0..=workers)
                        .map(|p| Link(p, Rc::new(Cell::new(false))))
                        .collect(),
                    t0: Instant::now(),
                    node_timeout,
                    restarted: false,
                    rejoin_at: BTreeMap::new(),
                    rejoining: HashSet::new(),
                }
            },
            names: HashMap::new(),
            faulted: false,
            lenient: false,
            steps: 0,
            paused: HashSet::new(),
            violations: Vec::new(),
            trace: Vec::new(),
        };
        // Every process joins as a node (node id = its index) and subscribes to the GCS.
        for p in 1..=workers {
            let node = Node {
                address: format!("w{p}"),
                ..Node::default()
            };
            w.tell_gcs(
                p,
                Msg::RegisterNode {
                    request_id: p,
                    node,
                },
            );
            w.tell_gcs(p, Msg::Subscribe { request_id: 0 });
        }
        w
    }

    /// Feeds the GCS `event` and sends what it returns to the live processes.
    fn gcs_event(&mut self, event: gcs_tables::Event<Link>) {
        let now = self.gcs.t0 + Duration::from_millis(self.steps);
        for out in self.gcs.tables.handle(now, event) {
            match out {
                gcs_tables::Out::Send(to, msg) => {
                    if self.procs[to.0 as usize].alive {
                        self.net.send(0, to.0, Wire::Gcs(msg));
                    }
                }
                other => self
                    .violations
                    .push(format!("unexpected GCS output {other:?}")),
            }
        }
    }

    /// With [`Chaos::gcs_restart`], what the GCS's life adds to a step: every live process
    /// connected to it heartbeats now and then; once, the GCS restarts from its saved tables
    /// (every connection to it lost; each live process rejoins after a delay); processes due
    /// rejoin.
    fn gcs_step(&mut self) {
        if !self.chaos.gcs_restart {
            return;
        }
        if self.steps.is_multiple_of(SIM_HEARTBEAT) {
            for p in 1..self.procs.len() as u64 {
                if self.procs[p as usize].alive && !self.gcs.rejoin_at.contains_key(&p) {
                    let hb = Msg::Heartbeat {
                        node_id: p,
                        resources: Vec::new(),
                        store_used: 0,
                        store_pages: String::new(),
                    };
                    self.tell_gcs(p, hb);
                }
            }
        }
        if !self.gcs.restarted && self.steps > 20 && self.rng.chance(0.02) {
            self.restart_gcs();
        }
        let due: Vec<u64> = self
            .gcs
            .rejoin_at
            .iter()
            .filter(|(_, at)| **at <= self.steps)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.gcs.rejoin_at.remove(&p);
            if !self.procs[p as usize].alive {
                continue;
            }
            self.note(format!("w{p} rejoins the GCS"));
            self.gcs.rejoining.insert(p);
            let node = Node {
                node_id: p,
                address: format!("w{p}"),
                ..Node::default()
            };
            self.tell_gcs(
                p,
                Msg::RegisterNode {
                    request_id: p,
                    node,
                },
            );
            self.tell_gcs(p, Msg::Subscribe { request_id: 0 });
        }
    }

    /// The GCS dies and starts again from its saved tables (the changes it noted, replayed
    /// over what it saved at first, as its file holds them).
    fn restart_gcs(&mut self) {
        self.faulted = true;
        self.gcs.restarted = true;
        self.note("the GCS restarts".into());
        let now = self.gcs.t0 + Duration::from_millis(self.steps);
        let records = self.gcs.tables.snapshot();
        match GcsTables::restore(self.gcs.node_timeout, records, now) {
            Ok(t) => self.gcs.tables = t,
            Err(e) => self
                .violations
                .push(format!("the GCS did not restore: {e}")),
        }
        for link in &self.gcs.links {
            link.1.set(true);
        }
        self.gcs.links = (0..self.procs.len() as u64)
            .map(|p| Link(p, Rc::new(Cell::new(false))))
            .collect();
        for p in 1..self.procs.len() as u64 {
            if self.procs[p as usize].alive {
                let at = self.steps + 5 + self.rng.below(SIM_NODE_TIMEOUT / 4);
                self.gcs.rejoin_at.insert(p, at);
            }
        }
    }

    /// Whether the GCS still has to notice something: a process rejoining, or one that
    /// crashed while it was down and that only its node timeout can find.
    fn gcs_pending(&self) -> bool {
        !self.gcs.rejoin_at.is_empty()
            || (1..self.procs.len())
                .any(|p| !self.procs[p].alive && self.gcs.tables.node_alive(p as u64) == Some(true))
    }

    /// Process `p` sends the GCS `msg` (at once: its connection to the GCS is not what the
    /// simulation varies).
    fn tell_gcs(&mut self, p: u64, msg: Msg) {
        let link = self.gcs.links[p as usize].clone();
        self.gcs_event(gcs_tables::Event::Message(link, msg));
    }

    /// Starts `ops` as user code on process `p`.
    pub(crate) fn spawn(&mut self, p: u64, ops: Vec<Op>) {
        self.procs[p as usize]
            .frames
            .push(Frame::new(ops, None, false));
    }

    /// Gives `ops` to process `p`'s main program (made on first use), whose variables stay
    /// between calls: for step-by-step tests, with [`settle`](Self::settle).
    pub(crate) fn exec(&mut self, p: u64, ops: Vec<Op>) {
        let frames = &mut self.procs[p as usize].frames;
        match frames.iter_mut().find(|f| f.main) {
            Some(f) => f.ops.extend(ops),
            None => frames.push(Frame::new(ops, None, true)),
        }
    }

    /// Process `p` neither runs nor receives until [`resume`](Self::resume)d (its messages
    /// wait on their connections): a test's way to hold one side of a race.
    pub(crate) fn pause(&mut self, p: u64) {
        self.paused.insert(p);
    }

    pub(crate) fn resume(&mut self, p: u64) {
        self.paused.remove(&p);
    }

    /// The id of the object created under `name`.
    pub(crate) fn id(&self, name: Name) -> u64 {
        self.names[name]
    }

    /// Whether the owner of object `name` still has it (Ray's `HasReference` on the owner).
    pub(crate) fn alive(&self, name: Name) -> bool {
        let id = self.id(name);
        let p = &self.procs[owner_of(id) as usize];
        p.alive
            && match p.escaped.get(&id) {
                Some(Escaped::Owned(w)) => w.strong_count() > 0,
                Some(Escaped::Result(w)) => w.strong_count() > 0,
                None => false,
            }
    }

    /// Whether process `p` borrows object `name` (a registration is recorded there).
    pub(crate) fn borrows(&self, p: u64, name: Name) -> bool {
        let id = self.id(name);
        self.procs[p as usize]
            .rc
            .borrowed(id)
            .is_some_and(BorrowHandle::is_live)
    }

    /// The workers object `name`'s owner lends it to.
    pub(crate) fn borrowers(&self, name: Name) -> Vec<u64> {
        let id = self.id(name);
        let mut b: Vec<u64> = self.procs[owner_of(id) as usize]
            .rc
            .borrowers(id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        b.sort_unstable();
        b
    }

    /// Process `p` crashes now.
    pub(crate) fn crash(&mut self, p: u64) {
        self.kill(p);
    }

    /// Runs programs and delivers messages, in the seed's order, until everything is done
    /// and the network is quiet; checks the invariants after every step.
    pub(crate) fn run(&mut self) -> Result<(), String> {
        let limit = 200_000;
        while self.steps < limit {
            self.steps += 1;
            self.gcs_event(gcs_tables::Event::Tick);
            self.gcs_step();
            self.fault();
            let moved = self.step();
            self.check()?;
            if !moved {
                if self.finished() {
                    if self.end_actors() {
                        continue;
                    }
                    if self.chaos.gcs_restart && !self.gcs.restarted {
                        // The programs were quicker: the GCS restarts at their end.
                        self.restart_gcs();
                        continue;
                    }
                    if self.gcs_pending() {
                        // Time passes until the GCS has noticed what it must.
                        continue;
                    }
                    return self.check_end();
                }
                if self.net.quiet() && !self.gcs_pending() {
                    return Err(self.fail("stuck: programs wait and no message is on its way"));
                }
                self.net.advance();
            }
        }
        Err(self.fail("no end after the step limit"))
    }

    /// Like [`run`](Self::run) but with every program run as far as it can and every
    /// message delivered in order (no delay, no fault): for step-by-step tests.
    pub(crate) fn settle(&mut self) {
        let saved = self.chaos;
        self.chaos = Chaos::default();
        loop {
            let mut moved = false;
            for p in 1..self.procs.len() as u64 {
                while !self.paused.contains(&p) && self.run_frames(p) {
                    moved = true;
                }
            }
            let mut ready = self.net.ready();
            ready.retain(|l| !self.paused.contains(&l.1));
            for link in ready {
                if let Some(m) = self.net.pop(link) {
                    self.deliver(link.0, link.1, m);
                    moved = true;
                }
            }
            if let Err(e) = self.check() {
                panic!("{e}");
            }
            if !moved {
                break;
            }
        }
        self.chaos = saved;
    }

    /// The job ends: every live process drops its actor state (what an actor kept, maybe
    /// from a task a fault made late). Whether there was any.
    fn end_actors(&mut self) -> bool {
        let mut any = false;
        for p in 1..self.procs.len() {
            if self.procs[p].alive && !self.procs[p].kept.is_empty() {
                any = true;
                let kept = std::mem::take(&mut self.procs[p].kept);
                drop(kept);
                self.flush(p as u64);
            }
        }
        any
    }

    /// Whether every program finished.
    fn finished(&self) -> bool {
        self.procs
            .iter()
            .all(|p| !p.alive || p.frames.iter().all(|f| f.main && f.idle()))
            && self.net.quiet()
            && (1..self.procs.len()).all(|p| !self.pending(p))
    }

    fn fail(&self, what: &str) -> String {
        let tail: Vec<&String> = self.trace.iter().rev().take(trace_len()).collect();
        format!(
            "seed {} (replay: MANTA_SIM_SEED={}): {what} after {} steps; last events, newest first:\n{}",
            self.seed,
            self.seed,
            self.steps,
            tail.iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    fn note(&mut self, s: String) {
        if self.trace.len() > 4096 {
            self.trace.drain(..2048);
        }
        self.trace.push(s);
    }

    /// One step chosen by the seed: a delivery or a program's step.
    fn step(&mut self) -> bool {
        let late: Vec<usize> = (1..self.procs.len()).filter(|p| self.pending(*p)).collect();
        if !late.is_empty() && self.rng.chance(0.3) {
            let p = late[self.rng.below(late.len() as u64) as usize];
            self.flush(p as u64);
            return true;
        }
        let ready = self.net.ready();
        let deliver = !ready.is_empty() && self.rng.chance(0.5);
        if deliver {
            let link = ready[self.rng.below(ready.len() as u64) as usize];
            if let Some(m) = self.net.pop(link) {
                self.deliver(link.0, link.1, m);
            }
            return true;
        }
        let n = self.procs.len() as u64 - 1;
        let first = 1 + self.rng.below(n);
        for k in 0..n {
            let p = 1 + (first - 1 + k) % n;
            if self.run_frames(p) {
                return true;
            }
        }
        if let Some(link) = ready.first().copied() {
            if let Some(m) = self.net.pop(link) {
                self.deliver(link.0, link.1, m);
            }
            return true;
        }
        if let Some(p) = late.first() {
            self.flush(*p as u64);
            return true;
        }
        false
    }

    /// Maybe a fault, as the chaos settings say.
    fn fault(&mut self) {
        let n = self.procs.len() as u64 - 1;
        if n < 2 {
            return;
        }
        if self.rng.chance(self.chaos.crash) {
            let p = 2 + self.rng.below(n - 1);
            if self.procs[p as usize].alive {
                self.kill(p);
            }
        }
        if self.rng.chance(self.chaos.cut) {
            let a = 1 + self.rng.below(n);
            let b = 1 + self.rng.below(n);
            if a != b && self.procs[a as usize].alive && self.procs[b as usize].alive {
                self.faulted = true;
                self.note(format!("connection {a}-{b} lost"));
                self.net.cut(a, b);
                self.worker_lost(a, b);
                self.worker_lost(b, a);
            }
        }
    }

    /// Process `p` dies: its state goes without a word, and the GCS tells the others.
    fn kill(&mut self, p: u64) {
        self.faulted = true;
        self.note(format!("w{p} crashed"));
        let proc = &mut self.procs[p as usize];
        proc.alive = false;
        proc.ctx.dead.set(true);
        proc.frames.clear();
        proc.kept.clear();
        proc.in_flight.clear();
        proc.held.clear();
        drop(proc.rc.leave());
        proc.escaped.clear();
        for q in 1..self.procs.len() as u64 {
            if q != p {
                self.net.cut(p, q);
            }
        }
        // Its GCS connection closes: the GCS declares its node dead to the others.
        let link = self.gcs.links[p as usize].clone();
        link.1.set(true);
        self.gcs_event(gcs_tables::Event::Closed(link));
    }

    fn send(&mut self, from: u64, to: u64, m: Wire) {
        if self.procs[from as usize].lost.contains(&to) {
            return;
        }
        self.net.send(from, to, m);
    }

    /// Delivers `m` from `from` to `to`.
    fn deliver(&mut self, from: u64, to: u64, m: Wire) {
        if !self.procs[to as usize].alive || self.procs[to as usize].lost.contains(&from) {
            return;
        }
        self.note(format!("w{from} -> w{to}: {m:?}"));
        let me = to;
        match m {
            Wire::AddBorrowers {
                request_id,
                objects,
            } => {
                let p = &mut self.procs[me as usize];
                let escaped = &p.escaped;
                let missing =
                    p.rc.add_borrowers(Some(from), objects, |id| match escaped.get(&id)? {
                        Escaped::Owned(w) => w.upgrade().map(Ref::Owned),
                        Escaped::Result(w) => w.upgrade().map(Ref::Result),
                    });
                self.send(
                    me,
                    from,
                    Wire::BorrowersAdded {
                        request_id,
                        missing,
                    },
                );
            }
            Wire::BorrowersAdded {
                request_id,
                missing,
            } => {
                let p = &mut self.procs[me as usize];
                if let Some((_, borrows, held)) = p.registering.remove(&request_id) {
                    let acked =
                        p.rc.registered(&borrows, Answer::Added { missing: &missing });
                    drop(held);
                    if acked.iter().any(|ok| !ok) && !self.faulted {
                        self.note(format!("w{me}: borrow of {missing:x?} failed: not known"));
                        self.violation_no_fault("a borrow registration failed");
                    }
                }
            }
            Wire::RemoveBorrower { object_id } => {
                let loan = self.procs[me as usize].rc.remove_borrower(from, object_id);
                drop(loan);
            }
            Wire::PushTask {
                task,
                args,
                by_ref,
                names,
                body,
            } => {
                let mut frame = Frame::new(body, Some((from, task)), false);
                let (inline, by_ref_names) = names.split_at(args.len().min(names.len()));
                let refs = self.deserialize(me, &args);
                frame.decoding = bind(inline.to_vec(), refs);
                for (name, id) in by_ref_names.iter().zip(by_ref) {
                    frame.vars.insert(name, Ref::Arg(id));
                }
                self.procs[me as usize].frames.push(frame);
            }
            Wire::TaskDone { task, nested } => {
                let p = &mut self.procs[me as usize];
                if let Some(f) = p.in_flight.remove(&task) {
                    match f.result.upgrade() {
                        Some(r) => {
                            r.held.set(!nested.is_empty());
                            *r.nested.borrow_mut() = Some(nested.clone());
                        }
                        None if !nested.is_empty() => {
                            self.send(me, from, Wire::FreeObject { object_id: task });
                        }
                        None => {}
                    }
                    drop(f.args);
                }
                self.answer_reads(me, task, &nested);
            }
            Wire::FreeObject { object_id } => {
                let held = self.procs[me as usize].held.remove(&object_id);
                drop(held);
            }
            Wire::Pull {
                request_id,
                object_id,
            } => {
                let p = &mut self.procs[me as usize];
                let nested = match p.escaped.get(&object_id) {
                    Some(Escaped::Owned(w)) => w
                        .upgrade()
                        .map(|o| o.nested.iter().map(Ref::id).collect::<Vec<_>>()),
                    Some(Escaped::Result(w)) => match w.upgrade() {
                        Some(r) => match r.nested.borrow().clone() {
                            Some(n) => Some(n),
                            None => {
                                p.pull_waiters
                                    .entry(object_id)
                                    .or_default()
                                    .push((from, request_id));
                                return;
                            }
                        },
                        None => None,
                    },
                    None => None,
                };
                self.send(me, from, Wire::Value { request_id, nested });
            }
            Wire::Value { request_id, nested } => {
                if let Some(slot) = self.procs[me as usize].pulls.get_mut(&request_id) {
                    slot.1 = Some(nested);
                }
            }
            Wire::Gcs(Msg::NodeEvent { node }) if !node.alive => {
                // Each process is a node of one worker: its node's death is its death.
                self.worker_lost(me, node.node_id);
            }
            Wire::Gcs(Msg::Registered { id, .. }) if id != me => {
                self.violations
                    .push(format!("w{me} registered as node {id}, not {me}"));
            }
            Wire::Gcs(Msg::Registered { error, .. }) if !error.is_empty() => {
                self.violations
                    .push(format!("w{me} was refused by the GCS: {error}"));
            }
            Wire::Gcs(Msg::Registered { .. }) if self.gcs.rejoining.remove(&me) => {
                // Rejoined: deaths published while it was away are in the node table
                // (`gcs_link.rs`, step 2).
                self.tell_gcs(me, Msg::GetNodes { request_id: 0 });
            }
            Wire::Gcs(Msg::Nodes { nodes, .. }) => {
                for n in nodes.iter().filter(|n| !n.alive && n.node_id != me) {
                    self.worker_lost(me, n.node_id);
                }
            }
            Wire::Gcs(_) => {}
        }
        self.maybe_flush(me);
    }

    /// Process `me` takes `worker` for dead (`worker_lost`).
    fn worker_lost(&mut self, me: u64, worker: u64) {
        let p = &mut self.procs[me as usize];
        if !p.alive || !p.lost.insert(worker) {
            return;
        }
        let loans = p.rc.borrower_died(worker);
        drop(loans);
        // The results held for it go (`free_results_of`).
        let orphans: Vec<u64> = p
            .held
            .keys()
            .copied()
            .filter(|id| owner_of(*id) == worker)
            .collect();
        for id in orphans {
            let held = p.held.remove(&id);
            drop(held);
        }
        let failed: Vec<u64> = p
            .registering
            .iter()
            .filter(|(_, (owner, ..))| *owner == worker)
            .map(|(r, _)| *r)
            .collect();
        for r in failed {
            if let Some((_, borrows, held)) = p.registering.remove(&r) {
                p.rc.registered(&borrows, Answer::Unreachable);
                drop(held);
            }
        }
        for (asked, answer) in p.pulls.values_mut() {
            if *asked == worker && answer.is_none() {
                *answer = Some(None);
            }
        }
        let lost: Vec<u64> = p
            .in_flight
            .iter()
            .filter(|(_, f)| f.worker == worker)
            .map(|(t, _)| *t)
            .collect();
        for t in lost {
            let p = &mut self.procs[me as usize];
            if let Some(r) = p.in_flight.remove(&t).and_then(|f| f.result.upgrade()) {
                *r.nested.borrow_mut() = Some(Vec::new());
            }
            self.answer_reads(me, t, &[]);
        }
        self.maybe_flush(me);
    }

    /// Result `task` of process `me` is known (`nested`; empty if it failed): the reads that
    /// waited for it are answered.
    fn answer_reads(&mut self, me: u64, task: u64, nested: &[u64]) {
        let waiters = self.procs[me as usize]
            .pull_waiters
            .remove(&task)
            .unwrap_or_default();
        for (reader, request_id) in waiters {
            let nested = Some(nested.to_vec());
            self.send(me, reader, Wire::Value { request_id, nested });
        }
    }

    /// Feeds process `me`'s local events now, or leaves them for a later step when the
    /// chaos says drops may be late (see [`Chaos::late_drops`]).
    fn maybe_flush(&mut self, me: u64) {
        if !(self.chaos.late_drops && self.rng.chance(0.5)) {
            self.flush(me);
        }
    }

    /// Whether process `p` has local events not fed to its shell yet.
    fn pending(&self, p: usize) -> bool {
        self.procs[p].alive && !self.procs[p].ctx.events.borrow().is_empty()
    }

    /// Feeds process `me`'s local events (ends of borrows, freed results) to its shell.
    fn flush(&mut self, me: u64) {
        loop {
            let events: Vec<Event> = self.procs[me as usize]
                .ctx
                .events
                .borrow_mut()
                .drain(..)
                .collect();
            if events.is_empty() {
                return;
            }
            for e in events {
                match e {
                    Event::EndBorrow { id, epoch } => {
                        let out = self.procs[me as usize].rc.end_borrow(id, epoch);
                        if let Some(Out::RemoveBorrower { owner, object_id }) = out {
                            self.send(me, owner, Wire::RemoveBorrower { object_id });
                        }
                    }
                    Event::FreeResult { holder, id } => {
                        if holder == me {
                            let held = self.procs[me as usize].held.remove(&id);
                            drop(held);
                        } else {
                            self.send(me, holder, Wire::FreeObject { object_id: id });
                        }
                    }
                }
            }
        }
    }

    /// Process `me` deserialises references `ids`: its own objects are looked up, others'
    /// are borrowed, the new borrows registered with their owners (answers awaited by the
    /// caller: see `decoded`).
    fn deserialize(&mut self, me: u64, ids: &[u64]) -> Vec<Ref> {
        // The drops before this decode may have ended their borrows, or not yet (another
        // thread's drop between its last handle and `end_borrow`).
        self.maybe_flush(me);
        let mut refs = Vec::new();
        // By owner: the new registrations' `(id, epoch)`, and the registrations.
        type New = (Vec<(u64, u64)>, Vec<Rc<Remote>>);
        let mut mine: BTreeMap<u64, New> = BTreeMap::new();
        for &id in ids {
            let owner = owner_of(id);
            let p = &mut self.procs[me as usize];
            if owner == me {
                let found = match p.escaped.get(&id) {
                    Some(Escaped::Owned(w)) => w.upgrade().map(Ref::Owned),
                    Some(Escaped::Result(w)) => w.upgrade().map(Ref::Result),
                    None => None,
                };
                match found {
                    Some(r) => refs.push(r),
                    None => {
                        self.note(format!("w{me}: own object {id:#x} is gone"));
                        self.violation_no_fault("an owner deserialised its own freed object");
                    }
                }
                continue;
            }
            let live = p.rc.borrowed(id).and_then(|e| e.0.upgrade());
            let remote = match live {
                Some(r) => r,
                None => {
                    let ctx = p.ctx.clone();
                    let r = p.rc.begin_borrow(id, |epoch| {
                        let r = Rc::new(Remote { id, epoch, ctx });
                        (Entry(Rc::downgrade(&r)), r)
                    });
                    let m = mine.entry(owner).or_default();
                    m.0.push((id, r.epoch));
                    m.1.push(r.clone());
                    r
                }
            };
            refs.push(Ref::Borrowed(remote));
        }
        for (owner, (borrows, held)) in mine {
            let p = &mut self.procs[me as usize];
            let out = p.rc.register(owner, &borrows);
            if let Some(Out::AddBorrowers { owner, objects }) = out {
                if p.lost.contains(&owner) {
                    p.rc.registered(&borrows, Answer::Unreachable);
                    continue;
                }
                let request_id = p.next_request;
                p.next_request += 1;
                p.registering.insert(request_id, (owner, borrows, held));
                self.send(
                    me,
                    owner,
                    Wire::AddBorrowers {
                        request_id,
                        objects,
                    },
                );
            }
        }
        refs
    }

    /// Whether every borrow among `refs` is answered (the decode may return).
    fn decoded(&self, me: u64, refs: &[(Option<Name>, Ref)]) -> bool {
        let rc = &self.procs[me as usize].rc;
        refs.iter().all(|(_, r)| match r {
            Ref::Borrowed(b) => rc.registration(b.id, b.epoch) != Some(Registration::Pending),
            _ => true,
        })
    }

    /// Runs process `p`'s programs one step each; whether any moved.
    fn run_frames(&mut self, p: u64) -> bool {
        if !self.procs[p as usize].alive {
            return false;
        }
        let mut moved = false;
        let mut i = 0;
        while i < self.procs[p as usize].frames.len() {
            match self.frame_step(p, i) {
                Progress::Done => {
                    let f = self.procs[p as usize].frames.remove(i);
                    self.end_frame(p, f, Vec::new());
                    moved = true;
                    continue;
                }
                Progress::Moved => moved = true,
                Progress::Blocked => {}
            }
            if !self.procs[p as usize].alive {
                return true;
            }
            i += 1;
        }
        moved
    }

    /// A frame ended (its ops ran out, or it returned `result`): a task reports to its owner.
    fn end_frame(&mut self, p: u64, f: Frame, result: Vec<Ref>) {
        if let Some((owner, task)) = f.task {
            let nested: Vec<u64> = result.iter().map(Ref::id).collect();
            // Not held for an owner known dead (`outcome_of`).
            if !result.is_empty() && !self.procs[p as usize].lost.contains(&owner) {
                self.procs[p as usize].held.insert(task, result);
            }
            self.send(p, owner, Wire::TaskDone { task, nested });
        }
        drop(f);
        self.maybe_flush(p);
    }

    /// One step of frame `i` of process `p`.
    fn frame_step(&mut self, p: u64, i: usize) -> Progress {
        let me = p;
        // A decode in progress returns once its borrows are answered.
        if !self.procs[p as usize].frames[i].decoding.is_empty() {
            let decoding = std::mem::take(&mut self.procs[p as usize].frames[i].decoding);
            if !self.decoded(me, &decoding) {
                self.procs[p as usize].frames[i].decoding = decoding;
                return Progress::Blocked;
            }
            let f = &mut self.procs[p as usize].frames[i];
            f.vars
                .extend(decoding.into_iter().filter_map(|(n, r)| n.map(|n| (n, r))));
            return Progress::Moved;
        }
        if let Some((request, into)) = self.procs[p as usize].frames[i].pulling.take() {
            let answer = self.procs[p as usize]
                .pulls
                .get(&request)
                .and_then(|(_, a)| a.clone());
            let Some(answer) = answer else {
                self.procs[p as usize].frames[i].pulling = Some((request, into));
                return Progress::Blocked;
            };
            self.procs[p as usize].pulls.remove(&request);
            let nested = match answer {
                Some(n) => n,
                None => {
                    if !self.faulted {
                        self.note(format!("w{me}: read of request {request} found nothing"));
                        self.violation_no_fault("a read found its object freed");
                    }
                    Vec::new()
                }
            };
            let refs = self.deserialize(me, &nested);
            self.procs[p as usize].frames[i].decoding = bind(into, refs);
            return Progress::Moved;
        }
        let Some(op) = self.procs[p as usize].frames[i].ops.pop_front() else {
            if self.procs[p as usize].frames[i].main {
                return Progress::Blocked;
            }
            return Progress::Done;
        };
        self.note(format!("w{me} runs {op:?}"));
        match op {
            Op::Put { name, nested } => {
                let nested = self.handles(p, i, nested);
                let proc = &mut self.procs[p as usize];
                let f = &proc.frames[i];
                let nested: Vec<Ref> = nested
                    .iter()
                    .filter_map(|n| f.vars.get(n).cloned())
                    .collect();
                let id = (me << INDEX_SHIFT) | proc.next_id;
                proc.next_id += 1;
                let o = Rc::new(Owned {
                    id,
                    nested,
                    ctx: proc.ctx.clone(),
                });
                proc.escaped.insert(id, Escaped::Owned(Rc::downgrade(&o)));
                proc.frames[i].vars.insert(name, Ref::Owned(o));
                self.names.insert(name, id);
            }
            Op::Submit {
                to,
                args,
                by_ref,
                body,
                result,
            } => {
                let args = self.handles(p, i, args);
                let by_ref = self.handles(p, i, by_ref);
                let proc = &mut self.procs[p as usize];
                let f = &proc.frames[i];
                let held: Vec<Ref> = args
                    .iter()
                    .chain(&by_ref)
                    .filter_map(|n| f.vars.get(n).cloned())
                    .collect();
                let arg_ids: Vec<u64> = args
                    .iter()
                    .filter_map(|n| f.vars.get(n))
                    .map(Ref::id)
                    .collect();
                let by_ref_ids: Vec<u64> = by_ref
                    .iter()
                    .filter_map(|n| f.vars.get(n))
                    .map(Ref::id)
                    .collect();
                let task = (me << INDEX_SHIFT) | proc.next_id;
                proc.next_id += 1;
                let r = Rc::new(ResultObj {
                    id: task,
                    holder: to,
                    nested: RefCell::new(None),
                    held: Cell::new(false),
                    ctx: proc.ctx.clone(),
                });
                proc.escaped
                    .insert(task, Escaped::Result(Rc::downgrade(&r)));
                if proc.lost.contains(&to) {
                    *r.nested.borrow_mut() = Some(Vec::new());
                } else {
                    proc.in_flight.insert(
                        task,
                        InFlight {
                            worker: to,
                            args: held,
                            result: Rc::downgrade(&r),
                        },
                    );
                    let mut names = args.clone();
                    names.extend(by_ref.iter().copied());
                    self.send(
                        me,
                        to,
                        Wire::PushTask {
                            task,
                            args: arg_ids,
                            by_ref: by_ref_ids,
                            names,
                            body,
                        },
                    );
                }
                self.procs[p as usize].frames[i]
                    .vars
                    .insert(result, Ref::Result(r));
                self.names.insert(result, task);
            }
            Op::Get { result, into } => {
                let r = match self.procs[p as usize].frames[i].vars.get(result) {
                    Some(Ref::Result(r)) => r.clone(),
                    _ => return self.bad_program(p, i, "get of no result"),
                };
                let nested = r.nested.borrow().clone();
                let Some(nested) = nested else {
                    self.procs[p as usize].frames[i]
                        .ops
                        .push_front(Op::Get { result, into });
                    return Progress::Blocked;
                };
                let refs = self.deserialize(me, &nested);
                self.procs[p as usize].frames[i].decoding = bind(into, refs);
            }
            Op::Unwrap { of, into } => {
                let Some(r) = self.procs[p as usize].frames[i].vars.get(of).cloned() else {
                    return self.bad_program(p, i, "unwrap of no reference");
                };
                let id = r.id();
                let owner = owner_of(id);
                let nested = match &r {
                    Ref::Owned(o) => Some(o.nested.iter().map(Ref::id).collect::<Vec<_>>()),
                    Ref::Result(res) => match res.nested.borrow().clone() {
                        Some(n) => Some(n),
                        None => {
                            self.procs[p as usize].frames[i]
                                .ops
                                .push_front(Op::Unwrap { of, into });
                            return Progress::Blocked;
                        }
                    },
                    _ => None,
                };
                match nested {
                    Some(n) => {
                        let refs = self.deserialize(me, &n);
                        self.procs[p as usize].frames[i].decoding = bind(into, refs);
                    }
                    None => {
                        let proc = &mut self.procs[p as usize];
                        let request = proc.next_request;
                        proc.next_request += 1;
                        let dead = proc.lost.contains(&owner);
                        proc.pulls.insert(request, (owner, dead.then_some(None)));
                        proc.frames[i].pulling = Some((request, into));
                        self.send(
                            me,
                            owner,
                            Wire::Pull {
                                request_id: request,
                                object_id: id,
                            },
                        );
                    }
                }
            }
            Op::Drop(name) => {
                let r = self.procs[p as usize].frames[i].vars.remove(name);
                drop(r);
            }
            Op::Keep(names) => {
                let proc = &mut self.procs[p as usize];
                for n in names {
                    if let Some(r) = proc.frames[i].vars.remove(n) {
                        if matches!(r, Ref::Arg(_)) {
                            return self.bad_program(p, i, "kept an argument passed by reference");
                        }
                        proc.kept.insert(n, r);
                    }
                }
            }
            Op::Take(names) => {
                let proc = &mut self.procs[p as usize];
                for n in names {
                    if let Some(r) = proc.kept.remove(n) {
                        proc.frames[i].vars.insert(n, r);
                    }
                }
            }
            Op::DropKept => {
                let kept = std::mem::take(&mut self.procs[p as usize].kept);
                drop(kept);
            }
            Op::Return(names) => {
                let f = self.procs[p as usize].frames.remove(i);
                let result: Vec<Ref> = names
                    .iter()
                    .filter_map(|n| f.vars.get(n).cloned())
                    .collect();
                if result.iter().any(|r| matches!(r, Ref::Arg(_))) {
                    self.procs[p as usize].frames.insert(i, f);
                    return self.bad_program(p, i, "returned an argument passed by reference");
                }
                self.end_frame(p, f, result);
                // The frame is gone: report it as done without a second end.
                self.procs[p as usize]
                    .frames
                    .insert(i, Frame::new(Vec::new(), None, false));
            }
            Op::Exit => {
                self.kill(p);
                return Progress::Moved;
            }
        }
        self.maybe_flush(p);
        Progress::Moved
    }

    /// The names among `names` that frame `i` of `p` holds a handle on (an argument passed
    /// by reference is none: a task gets its value, not the reference); naming anything else
    /// is a program error (see `bad_program`).
    fn handles(&mut self, p: u64, i: usize, names: Vec<Name>) -> Vec<Name> {
        let f = &self.procs[p as usize].frames[i];
        let (ok, bad): (Vec<Name>, Vec<Name>) = names
            .into_iter()
            .partition(|n| f.vars.get(n).is_some_and(|r| !matches!(r, Ref::Arg(_))));
        if !bad.is_empty() {
            self.bad_program(p, i, "no handle on a reference it passes");
        }
        ok
    }

    /// A program names what it does not have: after a fault that is expected (a failed task
    /// gives nothing), and the step is skipped; otherwise the program is wrong.
    fn bad_program(&mut self, p: u64, i: usize, what: &str) -> Progress {
        if self.faulted || self.lenient {
            return Progress::Moved;
        }
        panic!("program error on w{p} (frame {i}): {what}");
    }

    fn violation_no_fault(&mut self, what: &str) {
        if !self.faulted {
            self.violations.push(what.to_owned());
        }
    }

    /// The invariants that hold after every step.
    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.violations.first().cloned() {
            return Err(self.fail(&v));
        }
        for owner in 1..self.procs.len() {
            let freed: Vec<u64> = self.procs[owner].ctx.freed.borrow_mut().drain(..).collect();
            for id in freed {
                for q in 1..self.procs.len() {
                    let pq = &self.procs[q];
                    if q == owner || !pq.alive {
                        continue;
                    }
                    let o = owner as u64;
                    let mutual =
                        !pq.lost.contains(&o) && !self.procs[owner].lost.contains(&(q as u64));
                    // A live handle on an acknowledged registration.
                    let acked = pq
                        .rc
                        .borrowed(id)
                        .and_then(|e| e.0.upgrade())
                        .and_then(|r| pq.rc.registration(id, r.epoch))
                        == Some(Registration::Acked);
                    if mutual && acked {
                        return Err(
                            self.fail(&format!("w{owner} freed {id:#x} while w{q} borrows it"))
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The invariants of the end: everything of the live owners is freed.
    fn check_end(&mut self) -> Result<(), String> {
        for (i, p) in self.procs.iter().enumerate().skip(1) {
            let listed = self.gcs.tables.node_alive(i as u64);
            if listed != Some(p.alive) {
                let what = format!(
                    "at the end, the GCS lists w{i}'s node as alive: {listed:?}, but it is {}",
                    if p.alive { "alive" } else { "dead" }
                );
                return Err(self.fail(&what));
            }
            if !p.alive {
                continue;
            }
            let live: Vec<u64> = p
                .escaped
                .iter()
                .filter(|(_, e)| match e {
                    Escaped::Owned(w) => w.strong_count() > 0,
                    Escaped::Result(w) => w.strong_count() > 0,
                })
                .map(|(id, _)| *id)
                .collect();
            if !live.is_empty() {
                let what = format!("at the end, w{i} still has objects {live:x?}");
                return Err(self.fail(&what));
            }
            let (borrowed, lent) = p.rc.sizes();
            if borrowed != 0 || lent != 0 || !p.held.is_empty() || !p.kept.is_empty() {
                let what = format!(
                    "at the end, w{i} has {borrowed} borrowed, {lent} lent, {} held, {} kept",
                    p.held.len(),
                    p.kept.len()
                );
                return Err(self.fail(&what));
            }
        }
        Ok(())
    }
}

/// The references of a decode, the first named by `into` for the program (a decode waits for
/// every registration it made, named or not, as a decode scope does).
fn bind(into: Vec<Name>, refs: Vec<Ref>) -> Vec<(Option<Name>, Ref)> {
    into.into_iter()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(refs)
        .collect()
}

/// How many of the last events a failure shows: `MANTA_SIM_TRACE`, default 30.
fn trace_len() -> usize {
    std::env::var("MANTA_SIM_TRACE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Runs `scenario` (the world it sets up for a seed) over seeds `1..=seeds` (or
/// `MANTA_SIM_SEEDS` of them), or over the one seed `MANTA_SIM_SEED` names; panics with the
/// first failing seed. Returns the steps run.
pub(crate) fn run_seeds(seeds: u64, scenario: impl Fn(u64) -> World) -> u64 {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let (first, count) = match env("MANTA_SIM_SEED") {
        Some(s) => (s, 1),
        None => (1, env("MANTA_SIM_SEEDS").unwrap_or(seeds)),
    };
    let mut steps = 0;
    for seed in first..first + count {
        let mut w = scenario(seed);
        if let Err(e) = w.run() {
            panic!("{e}");
        }
        steps += w.steps;
    }
    steps
}

/// The cluster's reference-counting scenarios (`tests/cluster_refcount.rs`,
/// `tests/cluster_faults.rs`) as programs, over hundreds of seeds: process 1 is the driver,
/// 2–4 workers (2 often an actor, which keeps what it is given).
#[cfg(test)]
mod tests {
    use super::ops::*;
    use super::*;

    const SEEDS: u64 = 300;

    fn world(seed: u64, chaos: Chaos, driver: Vec<Op>) -> World {
        let mut w = World::new(4, seed, chaos);
        w.spawn(1, driver);
        w
    }

    /// Runs the driver program `driver` over the seeds, with delays only, then with faults.
    fn scenario(driver: impl Fn() -> Vec<Op>) {
        run_seeds(SEEDS, |seed| world(seed, Chaos::delays(), driver()));
        run_seeds(SEEDS, |seed| world(seed, Chaos::faults(), driver()));
    }

    #[test]
    fn task_arguments_live_while_the_task_is_in_flight() {
        scenario(|| {
            vec![
                put("arg", &[]),
                submit_by_ref(2, &["arg"], vec![unwrap("arg", &[])], "r"),
                drop("arg"),
                get("r", &[]),
                drop("r"),
            ]
        });
    }

    #[test]
    fn a_reference_inside_a_value_keeps_its_object() {
        scenario(|| {
            vec![
                put("inner", &[]),
                put("outer", &["inner"]),
                drop("inner"),
                submit_by_ref(
                    2,
                    &["outer"],
                    vec![unwrap("outer", &["inner"]), unwrap("inner", &[])],
                    "r",
                ),
                get("r", &[]),
                drop("r"),
                drop("outer"),
            ]
        });
    }

    #[test]
    fn a_returned_reference_outlives_its_task() {
        scenario(|| {
            vec![
                submit(3, &[], vec![put("x", &[]), ret(&["x"])], "r"),
                get("r", &["x"]),
                drop("r"),
                unwrap("x", &[]),
                drop("x"),
            ]
        });
    }

    #[test]
    fn an_actor_keeps_a_reference_after_the_driver_dropped_it() {
        scenario(|| {
            vec![
                put("k", &[]),
                submit(2, &["k"], vec![keep(&["k"])], "r1"),
                get("r1", &[]),
                drop("k"),
                drop("r1"),
                submit(
                    2,
                    &[],
                    vec![take(&["k"]), unwrap("k", &[]), keep(&["k"])],
                    "r2",
                ),
                get("r2", &[]),
                submit(2, &[], vec![drop_kept()], "r3"),
                get("r3", &[]),
                drop("r2"),
                drop("r3"),
            ]
        });
    }

    #[test]
    fn a_borrower_passes_the_reference_on_after_the_owner_dropped_it() {
        scenario(|| {
            vec![
                put("x", &[]),
                submit(2, &["x"], vec![keep(&["x"])], "r1"),
                get("r1", &[]),
                drop("x"),
                submit(
                    2,
                    &[],
                    vec![
                        take(&["x"]),
                        // By value, to a task elsewhere.
                        submit(3, &["x"], vec![unwrap("x", &[])], "f"),
                        get("f", &[]),
                        // Nested in an object of the borrower's, by reference.
                        put("o", &["x"]),
                        submit_by_ref(4, &["o"], vec![unwrap("o", &["x"]), unwrap("x", &[])], "g"),
                        drop("o"),
                        get("g", &[]),
                        drop("f"),
                        drop("g"),
                        keep(&["x"]),
                    ],
                    "r2",
                ),
                get("r2", &[]),
                submit(2, &[], vec![drop_kept()], "r3"),
                get("r3", &[]),
                drop("r1"),
                drop("r2"),
                drop("r3"),
            ]
        });
    }

    #[test]
    fn references_returned_in_a_result_are_lent_on_to_a_third_process() {
        scenario(|| {
            vec![
                submit(3, &[], vec![put("y", &[]), ret(&["y"])], "r"),
                get("r", &["y"]),
                submit(2, &["y"], vec![keep(&["y"])], "k"),
                get("k", &[]),
                drop("y"),
                drop("r"),
                submit(
                    2,
                    &[],
                    vec![take(&["y"]), unwrap("y", &[]), keep(&["y"])],
                    "s",
                ),
                get("s", &[]),
                submit(2, &[], vec![drop_kept()], "d"),
                get("d", &[]),
                drop("k"),
                drop("s"),
                drop("d"),
            ]
        });
    }

    #[test]
    fn a_borrowed_reference_returned_through_a_chain_of_tasks() {
        scenario(|| {
            vec![
                submit(3, &[], vec![put("z", &[]), ret(&["z"])], "made"),
                // A task elsewhere gets the result's value and returns the borrowed id.
                submit_by_ref(
                    4,
                    &["made"],
                    vec![unwrap("made", &["z"]), ret(&["z"])],
                    "back",
                ),
                drop("made"),
                get("back", &["z"]),
                drop("back"),
                unwrap("z", &[]),
                drop("z"),
            ]
        });
    }

    #[test]
    fn a_borrower_that_dies_releases_its_borrows() {
        scenario(|| {
            vec![
                put("z", &[]),
                submit(2, &["z"], vec![keep(&["z"])], "k"),
                get("k", &[]),
                drop("z"),
                submit(2, &[], vec![exit()], "e"),
                get("e", &[]),
                drop("k"),
                drop("e"),
            ]
        });
    }

    #[test]
    fn an_owner_that_dies_mid_protocol_fails_its_borrowers_cleanly() {
        scenario(|| {
            vec![
                submit(
                    2,
                    &[],
                    vec![
                        put("a", &[]),
                        submit(3, &["a"], vec![keep(&["a"])], "k"),
                        get("k", &[]),
                        exit(),
                    ],
                    "r",
                ),
                get("r", &[]),
                // The borrower drops what it kept of the dead owner.
                submit(
                    3,
                    &[],
                    vec![take(&["a"]), unwrap("a", &[]), drop_kept()],
                    "d",
                ),
                get("d", &[]),
                drop("r"),
                drop("d"),
            ]
        });
    }

    #[test]
    fn a_result_held_for_an_owner_that_dies_is_freed() {
        scenario(|| {
            vec![
                put("x", &[]),
                submit(
                    2,
                    &["x"],
                    vec![
                        // A result holding a reference of the driver's, held by w3 for w2.
                        submit(3, &["x"], vec![ret(&["x"])], "held"),
                        get("held", &[]),
                        exit(),
                    ],
                    "r",
                ),
                drop("x"),
                get("r", &[]),
                drop("r"),
            ]
        });
    }

    /// Names for generated programs.
    const NAMES: [Name; 24] = [
        "g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11", "g12", "g13",
        "g14", "g15", "g16", "g17", "g18", "g19", "g20", "g21", "g22", "g23",
    ];

    /// A random program: puts, tasks (nested `depth` deep) given references inline or by
    /// reference, reads, drops, an actor's state, returns and (with `exits`) crashes.
    /// `refs` are the references it starts with, `args` its arguments passed by reference.
    fn program(
        rng: &mut Rng,
        depth: u32,
        mut refs: Vec<Name>,
        args: Vec<Name>,
        in_task: bool,
        exits: bool,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let pick = |rng: &mut Rng, from: &[Name], most: u64| -> Vec<Name> {
            let n = rng.below(most + 1);
            let mut out: Vec<Name> = Vec::new();
            for _ in 0..n {
                if from.is_empty() {
                    break;
                }
                let x = from[rng.below(from.len() as u64) as usize];
                if !out.contains(&x) {
                    out.push(x);
                }
            }
            out
        };
        let fresh = |rng: &mut Rng, refs: &[Name]| loop {
            let n = NAMES[rng.below(NAMES.len() as u64) as usize];
            if !refs.contains(&n) {
                return n;
            }
        };
        for a in &args {
            if rng.chance(0.6) {
                let into = pick(rng, &NAMES, 2);
                ops.push(unwrap(a, &into));
                refs.extend(
                    into.iter()
                        .filter(|n| !refs.contains(n))
                        .collect::<Vec<_>>(),
                );
            }
        }
        let steps = 2 + rng.below(5);
        for _ in 0..steps {
            match rng.below(10) {
                0 | 1 => {
                    let name = fresh(rng, &refs);
                    let nested = pick(rng, &refs, 2);
                    ops.push(put(name, &nested));
                    refs.push(name);
                }
                2..=4 if depth > 0 => {
                    let to = 1 + rng.below(4);
                    let inline = pick(rng, &refs, 2);
                    let by_ref: Vec<Name> = pick(rng, &refs, 1)
                        .into_iter()
                        .filter(|n| !inline.contains(n))
                        .collect();
                    let body = program(rng, depth - 1, inline.clone(), by_ref.clone(), true, exits);
                    let result = fresh(rng, &refs);
                    ops.push(Op::Submit {
                        to,
                        args: inline,
                        by_ref,
                        body,
                        result,
                    });
                    refs.push(result);
                    if rng.chance(0.5) {
                        let into = pick(rng, &NAMES, 2);
                        ops.push(get(result, &into));
                        refs.extend(
                            into.iter()
                                .filter(|n| !refs.contains(n))
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                5 if !refs.is_empty() => {
                    let of = refs[rng.below(refs.len() as u64) as usize];
                    let into = pick(rng, &NAMES, 2);
                    ops.push(unwrap(of, &into));
                    refs.extend(
                        into.iter()
                            .filter(|n| !refs.contains(n))
                            .collect::<Vec<_>>(),
                    );
                }
                6 | 7 if !refs.is_empty() => {
                    let i = rng.below(refs.len() as u64) as usize;
                    ops.push(drop(refs.remove(i)));
                }
                8 if in_task && !refs.is_empty() => {
                    let i = rng.below(refs.len() as u64) as usize;
                    ops.push(keep(&[refs.remove(i)]));
                }
                9 if in_task && exits && rng.chance(0.1) => ops.push(exit()),
                _ => {}
            }
        }
        if in_task {
            let out = pick(rng, &refs, 2);
            ops.push(ret(&out));
        } else {
            ops.extend(refs.into_iter().map(drop));
        }
        ops
    }

    /// Random programs (tasks three deep, on every process, the driver's included) over the
    /// seeds: with delays, then with faults and tasks that crash their process.
    #[test]
    fn random_programs() {
        for (chaos, exits) in [(Chaos::delays(), false), (Chaos::faults(), true)] {
            run_seeds(SEEDS, |seed| {
                let mut w = World::new(4, seed, chaos);
                w.lenient = true;
                let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
                w.spawn(
                    1,
                    program(&mut rng, 3, Vec::new(), Vec::new(), false, exits),
                );
                w
            });
        }
    }

    #[test]
    fn random_programs_through_a_restart_of_the_gcs() {
        run_seeds(SEEDS, |seed| {
            let mut w = World::new(4, seed, Chaos::head_restart());
            w.lenient = true;
            let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            w.spawn(1, program(&mut rng, 3, Vec::new(), Vec::new(), false, true));
            w
        });
    }

    #[test]
    fn many_references_nested_and_passed_around_at_once() {
        scenario(|| {
            let mut d = Vec::new();
            let names: [Name; 6] = ["m0", "m1", "m2", "m3", "m4", "m5"];
            for n in names {
                d.push(put(n, &[]));
            }
            d.push(put("all", &names));
            for (i, to) in [2u64, 3, 4].into_iter().enumerate() {
                let r: Name = ["t2", "t3", "t4"][i];
                d.push(submit(
                    to,
                    &names,
                    vec![
                        unwrap("m0", &[]),
                        submit(
                            1 + (to % 3) + 1,
                            &["m1", "m2"],
                            vec![keep(&["m1"])],
                            "inner",
                        ),
                        get("inner", &[]),
                        drop("inner"),
                        ret(&["m3", "m4"]),
                    ],
                    r,
                ));
            }
            for n in names {
                d.push(drop(n));
            }
            for r in ["t2", "t3", "t4"] {
                d.push(get(r, &["a", "b"]));
                d.push(unwrap("a", &[]));
                d.push(drop("a"));
                d.push(drop("b"));
                d.push(drop(r));
            }
            d.push(drop("all"));
            for to in [2u64, 3, 4] {
                d.push(submit(to, &[], vec![drop_kept()], "end"));
                d.push(get("end", &[]));
                d.push(drop("end"));
            }
            d
        });
    }
}

/// The raylet's worker table (`worker_table.rs`, the real one) on the same simulated network:
/// a raylet, owners of jobs asking it for workers, the worker processes it starts (which boot,
/// report ready, host detached actors, crash before or after they are ready), and the GCS
/// ending jobs. It is the second state machine on the harness, added as its module doc says:
/// its own messages ([`RayletWire`]), its shell (`RayletWorld`, as `node.rs` is), its
/// invariants after every step and at the end.
#[cfg(test)]
mod raylet {
    use super::super::proto::Msg;
    use super::super::worker_table::{Action, Conn, Process, WorkerTable};
    use super::*;

    /// The raylet's node id; owners are `1..=jobs` (owner `j` runs job `j`); the GCS is
    /// `GCS`; worker processes are `WORKER + pid`.
    const RAYLET: u64 = 0;
    const GCS: u64 = 50;
    const WORKER: u64 = 100;

    /// The messages of the raylet's protocol (the node's side of it).
    #[derive(Clone, Debug)]
    pub(crate) enum RayletWire {
        StartWorker {
            request_id: u64,
            job_id: u64,
        },
        /// The answer: the ready workers (pids), or why there are none.
        WorkerStarted {
            request_id: u64,
            workers: Vec<u64>,
            error: String,
        },
        WorkerReady {
            job_id: u64,
            pid: u32,
        },
        WorkerDetached {
            count: u32,
        },
        /// The end of a worker's connection (after whatever it sent before).
        Closed,
        /// From the GCS: the job ended.
        JobEnded {
            job_id: u64,
        },
        /// From the raylet.
        Stop,
        JobEvent,
    }

    #[derive(Clone, Debug)]
    struct SimConn(u64, Rc<Cell<bool>>);

    impl Conn for SimConn {
        fn same(&self, other: &Self) -> bool {
            self.0 == other.0
        }
        fn is_closed(&self) -> bool {
            self.1.get()
        }
    }

    #[derive(Debug)]
    struct SimProc(u32, Rc<Cell<bool>>);

    impl Process for SimProc {
        fn pid(&self) -> u32 {
            self.0
        }
        fn exited(&mut self) -> Option<String> {
            self.1.get().then(|| "exit status: 1".to_owned())
        }
    }

    /// A worker process the raylet started, as the oracle sees it.
    #[derive(Debug)]
    struct Child {
        job_id: u64,
        /// It exited, crashed or was killed.
        gone: Rc<Cell<bool>>,
        /// Its connection to the raylet closed.
        closed: Rc<Cell<bool>>,
        ready: bool,
        /// Detached actors it reported.
        detached: u32,
        /// The count the raylet last received from it.
        reported: u32,
        /// The raylet sent it `Stop`.
        stopped: bool,
        /// It was told that its job ended.
        job_ended: bool,
    }

    struct RayletWorld {
        seed: u64,
        rng: Rng,
        net: Net<RayletWire>,
        table: WorkerTable<SimConn, SimProc>,
        children: BTreeMap<u32, Child>,
        next_pid: u32,
        /// Per owner: requests to make, and requests made and not answered.
        to_ask: BTreeMap<u64, u32>,
        asked: BTreeMap<u64, HashSet<u64>>,
        ended: HashSet<u64>,
        next_request: u64,
        trace: Vec<String>,
        steps: u64,
        /// The chance that a step crashes a worker process.
        crash: f64,
        /// A broken invariant noticed while acting.
        violation: Option<String>,
        /// Ranks join by themselves (no process is started).
        spmd: bool,
        /// Jobs whose owners got workers once.
        assembled: HashSet<u64>,
        /// The GCS (the real tables): the owners are its drivers, the raylet subscribes; a
        /// job ends when its driver's connection closes.
        gcs: GcsTables<Link>,
        t0: Instant,
    }

    impl RayletWorld {
        /// A raylet that starts one worker per job, or (`spmd`) a node whose two ranks per
        /// job join by themselves, as under `srun`.
        fn new(seed: u64, jobs: u64, crash: f64, spmd: bool) -> RayletWorld {
            let mut w = RayletWorld {
                seed,
                rng: Rng::new(seed),
                net: Net::new(seed, 6),
                table: if spmd {
                    WorkerTable::new(false, 2)
                } else {
                    WorkerTable::new(true, 0)
                },
                children: BTreeMap::new(),
                next_pid: 1,
                to_ask: (1..=jobs).map(|j| (j, 3)).collect(),
                asked: BTreeMap::new(),
                ended: HashSet::new(),
                next_request: 1,
                trace: Vec::new(),
                steps: 0,
                crash,
                violation: None,
                spmd,
                assembled: HashSet::new(),
                gcs: GcsTables::new(Duration::from_secs(3600)),
                t0: Instant::now(),
            };
            // The owners start their jobs (job `j` is owner `j`'s); the raylet subscribes.
            for o in 1..=jobs {
                let msg = Msg::RegisterWorker {
                    request_id: 1,
                    node_id: 0,
                    job_id: 0,
                    address: format!("o{o}"),
                    pid: o as u32,
                    executable: "app".into(),
                    args: Vec::new(),
                    cwd: String::new(),
                    shm_path: String::new(),
                    host_id: String::new(),
                };
                w.gcs_event(gcs_tables::Event::Message(Link(o, Rc::default()), msg));
            }
            let sub = Msg::Subscribe { request_id: 0 };
            w.gcs_event(gcs_tables::Event::Message(Link(RAYLET, Rc::default()), sub));
            if spmd {
                // The ranks start with the job and report ready by themselves.
                for job_id in 1..=jobs {
                    for _ in 0..2 {
                        let pid = w.new_child(job_id);
                        let ready = RayletWire::WorkerReady { job_id, pid };
                        w.net.send(WORKER + pid as u64, RAYLET, ready);
                    }
                }
            }
            w
        }

        /// Feeds the GCS `event`; sends its job events to the raylet.
        fn gcs_event(&mut self, event: gcs_tables::Event<Link>) {
            let now = self.t0 + Duration::from_millis(self.steps);
            for out in self.gcs.handle(now, event) {
                match out {
                    gcs_tables::Out::Send(
                        to,
                        Msg::JobEvent {
                            job_id,
                            finished: true,
                        },
                    ) if to.0 == RAYLET => {
                        self.net.send(GCS, RAYLET, RayletWire::JobEnded { job_id });
                    }
                    gcs_tables::Out::Send(to, Msg::Registered { job_id, .. }) if to.0 != job_id => {
                        let what = format!("owner {} got job {job_id}", to.0);
                        self.violation.get_or_insert(what);
                    }
                    gcs_tables::Out::Send(..) => {}
                    other => {
                        let what = format!("unexpected GCS output {other:?}");
                        self.violation.get_or_insert(what);
                    }
                }
            }
        }

        /// A new worker process of `job_id` (started, or a rank), booting.
        fn new_child(&mut self, job_id: u64) -> u32 {
            let pid = self.next_pid;
            self.next_pid += 1;
            self.children.insert(
                pid,
                Child {
                    job_id,
                    gone: Rc::new(Cell::new(false)),
                    closed: Rc::new(Cell::new(false)),
                    ready: false,
                    detached: 0,
                    reported: 0,
                    stopped: false,
                    job_ended: false,
                },
            );
            pid
        }

        fn fail(&self, what: &str) -> String {
            let tail: Vec<&String> = self.trace.iter().rev().take(trace_len()).collect();
            format!(
                "seed {} (replay: MANTA_SIM_SEED={}): {what} after {} steps; newest first:\n{}",
                self.seed,
                self.seed,
                self.steps,
                tail.iter()
                    .map(|s| format!("  {s}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }

        /// The raylet does what its table returned (as `Raylet::act`).
        fn act(&mut self, actions: Vec<Action<SimConn, SimProc>>) {
            for a in actions {
                match a {
                    Action::Send(c, msg) => {
                        let m = match *msg {
                            Msg::WorkerStarted {
                                request_id,
                                workers,
                                error,
                                ..
                            } => {
                                // Never a worker whose connection closed, as far as the
                                // raylet heard.
                                let closed = workers
                                    .iter()
                                    .find(|w| self.children[&(w.index as u32)].closed.get());
                                if let Some(w) = closed {
                                    self.violation = Some(format!(
                                        "answered with pid {} after its connection closed",
                                        w.index
                                    ));
                                }
                                if error.is_empty() {
                                    // (Owner `j` runs job `j`.)
                                    self.assembled.insert(c.0);
                                }
                                RayletWire::WorkerStarted {
                                    request_id,
                                    workers: workers.iter().map(|w| w.index).collect(),
                                    error,
                                }
                            }
                            Msg::Stop { .. } => RayletWire::Stop,
                            Msg::JobEvent { .. } => RayletWire::JobEvent,
                            other => panic!("the table sent {}", other.name()),
                        };
                        self.net.send(RAYLET, c.0, m);
                    }
                    Action::Reap(p) => self.kill(p.0),
                    Action::Stop(workers) => {
                        for w in workers {
                            if let Some(c) = &w.conn {
                                self.net.send(RAYLET, c.0, RayletWire::Stop);
                                if let Some(child) = self.children.get_mut(&(w.index as u32)) {
                                    child.stopped = true;
                                }
                            }
                            // SIGKILL a while later: at once, here.
                            if let Some(p) = w.child {
                                self.kill(p.0);
                            }
                        }
                    }
                }
            }
        }

        /// Process `pid` ends (killed, or crashed): its connection closes after what it sent.
        fn kill(&mut self, pid: u32) {
            let Some(c) = self.children.get_mut(&pid) else {
                return;
            };
            if c.gone.replace(true) {
                return;
            }
            self.trace.push(format!("pid {pid} ends"));
            if c.ready && !c.closed.get() {
                self.net
                    .send(WORKER + pid as u64, RAYLET, RayletWire::Closed);
            }
        }

        fn conn(&self, pid: u32) -> SimConn {
            SimConn(WORKER + pid as u64, self.children[&pid].closed.clone())
        }

        fn deliver(&mut self, from: u64, to: u64, m: RayletWire) -> Result<(), String> {
            self.trace.push(format!("{from} -> {to}: {m:?}"));
            if to == RAYLET {
                match m {
                    RayletWire::StartWorker { request_id, job_id } => {
                        let c = SimConn(from, Rc::new(Cell::new(false)));
                        let (spawn, mut actions) = self.table.start(c, request_id, job_id);
                        if spawn {
                            let pid = self.new_child(job_id);
                            let gone = self.children[&pid].gone.clone();
                            // It boots and reports ready on its own connection.
                            let ready = RayletWire::WorkerReady { job_id, pid };
                            self.net.send(WORKER + pid as u64, RAYLET, ready);
                            actions.extend(self.table.spawned(job_id, Ok(SimProc(pid, gone))));
                        } else {
                            actions.extend(self.table.answer(job_id));
                        }
                        // Once a job had its workers, a request is answered at once while
                        // any is alive as far as the raylet heard (a dead rank is not
                        // waited for).
                        let alive = self.children.values().any(|c| {
                            c.job_id == job_id && c.ready && !c.closed.get() && !c.stopped
                        });
                        let answered = actions.iter().any(|a| {
                            matches!(a, Action::Send(_, m) if matches!(**m,
                                Msg::WorkerStarted { request_id: r, .. } if r == request_id))
                        });
                        if self.spmd && self.assembled.contains(&job_id) && alive && !answered {
                            let what = format!("request {request_id} of an assembled job waits");
                            return Err(self.fail(&what));
                        }
                        self.act(actions);
                    }
                    RayletWire::WorkerReady { job_id, pid } => {
                        if self.children[&pid].gone.get() {
                            return Ok(());
                        }
                        if let Some(c) = self.children.get_mut(&pid) {
                            c.ready = true;
                        }
                        let c = self.conn(pid);
                        let a = self.table.ready(
                            &c,
                            job_id,
                            pid as u64,
                            String::new(),
                            pid,
                            Vec::new(),
                        );
                        self.act(a);
                    }
                    RayletWire::WorkerDetached { count } => {
                        let pid = (from - WORKER) as u32;
                        if let Some(c) = self.children.get_mut(&pid) {
                            c.reported = count;
                        }
                        let c = self.conn(pid);
                        let a = self.table.detached(&c, count);
                        self.act(a);
                    }
                    RayletWire::Closed => {
                        let pid = (from - WORKER) as u32;
                        self.children[&pid].closed.set(true);
                        let c = self.conn(pid);
                        let a = self.table.closed(&c);
                        self.act(a);
                    }
                    RayletWire::JobEnded { job_id } => {
                        let a = self.table.stop(Some(job_id));
                        self.act(a);
                        // Only workers hosting detached actors outlive their job.
                        let kept = self.children.iter().find(|(_, c)| {
                            c.job_id == job_id && !c.gone.get() && !c.stopped && c.reported == 0
                        });
                        if let Some((pid, _)) = kept {
                            let what =
                                format!("pid {pid} kept past its job with no detached actor");
                            return Err(self.fail(&what));
                        }
                    }
                    other => return Err(self.fail(&format!("the raylet got {other:?}"))),
                }
                return Ok(());
            }
            if to >= WORKER {
                let pid = (to - WORKER) as u32;
                let Some(c) = self.children.get_mut(&pid) else {
                    return Ok(());
                };
                if c.gone.get() {
                    return Ok(());
                }
                match m {
                    // A worker told to stop exits.
                    RayletWire::Stop => self.kill(pid),
                    RayletWire::JobEvent => c.job_ended = true,
                    other => return Err(self.fail(&format!("a worker got {other:?}"))),
                }
                return Ok(());
            }
            // An owner.
            let RayletWire::WorkerStarted {
                request_id,
                workers,
                error,
            } = m
            else {
                return Err(self.fail("an owner got something else"));
            };
            let asked = self.asked.entry(to).or_default();
            if !asked.remove(&request_id) {
                return Err(self.fail(&format!("request {request_id} answered twice")));
            }
            if error.is_empty() {
                for w in &workers {
                    let c = &self.children[&(*w as u32)];
                    if c.job_id != to || !c.ready {
                        return Err(
                            self.fail(&format!("answered with worker {w}, not ready for job {to}"))
                        );
                    }
                }
                if workers.is_empty() {
                    return Err(self.fail("an answer without workers or error"));
                }
            }
            Ok(())
        }

        /// Invariant: at most one started process of each job runs at any time (and the
        /// ones noticed while acting).
        fn check(&self) -> Result<(), String> {
            if let Some(v) = &self.violation {
                return Err(self.fail(v));
            }
            if self.spmd {
                return Ok(());
            }
            let mut running: HashMap<u64, u32> = HashMap::new();
            for c in self.children.values().filter(|c| !c.gone.get()) {
                *running.entry(c.job_id).or_default() += 1;
            }
            match running.iter().find(|(_, n)| **n > 1) {
                Some((job, n)) => Err(self.fail(&format!("{n} processes of job {job} run"))),
                None => Ok(()),
            }
        }

        /// One seeded step: a delivery, an owner's request, a job's end, a worker's detached
        /// count or crash, or the raylet's reaping.
        fn step(&mut self) -> Result<bool, String> {
            let ready = self.net.ready();
            if !ready.is_empty() && self.rng.chance(0.5) {
                let link = ready[self.rng.below(ready.len() as u64) as usize];
                if let Some(m) = self.net.pop(link) {
                    self.deliver(link.0, link.1, m)?;
                }
                return Ok(true);
            }
            match self.rng.below(5) {
                0 => {
                    let owners: Vec<u64> = self
                        .to_ask
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(o, _)| *o)
                        .collect();
                    if let Some(&o) = owners.get(self.rng.below(owners.len() as u64) as usize) {
                        self.to_ask.entry(o).and_modify(|n| *n -= 1);
                        let request_id = self.next_request;
                        self.next_request += 1;
                        self.asked.entry(o).or_default().insert(request_id);
                        let m = RayletWire::StartWorker {
                            request_id,
                            job_id: o,
                        };
                        self.net.send(o, RAYLET, m);
                        return Ok(true);
                    }
                }
                1 => {
                    // A job whose owner got every answer ends.
                    let done: Vec<u64> = self
                        .to_ask
                        .iter()
                        .filter(|(o, n)| {
                            **n == 0
                                && self.asked.get(o).is_none_or(HashSet::is_empty)
                                && !self.ended.contains(o)
                        })
                        .map(|(o, _)| *o)
                        .collect();
                    if let Some(&o) = done.first() {
                        // Its driver leaves: the GCS ends the job.
                        self.ended.insert(o);
                        let closed = Link(o, Rc::new(Cell::new(true)));
                        self.gcs_event(gcs_tables::Event::Closed(closed));
                        return Ok(true);
                    }
                }
                2 => {
                    let live: Vec<u32> = self
                        .children
                        .iter()
                        .filter(|(_, c)| !c.gone.get() && c.ready)
                        .map(|(p, _)| *p)
                        .collect();
                    if let Some(&pid) = live.get(self.rng.below(live.len() as u64) as usize) {
                        // Its job ended: it drops its detached actors; else it may make one.
                        let c = self.children.get_mut(&pid).expect("a live child");
                        let count = if c.job_ended || c.detached > 0 { 0 } else { 1 };
                        c.detached = count;
                        self.net.send(
                            WORKER + pid as u64,
                            RAYLET,
                            RayletWire::WorkerDetached { count },
                        );
                        return Ok(true);
                    }
                }
                3 if self.rng.chance(self.crash) => {
                    // (A rank that dies before it is ready leaves its job unassembled: the
                    // owners' requests end by their own timeout, which is not modelled.)
                    let live: Vec<u32> = self
                        .children
                        .iter()
                        .filter(|(_, c)| !c.gone.get() && (c.ready || !self.spmd))
                        .map(|(p, _)| *p)
                        .collect();
                    if let Some(&pid) = live.get(self.rng.below(live.len() as u64) as usize) {
                        self.trace.push(format!("pid {pid} crashes"));
                        self.kill(pid);
                        return Ok(true);
                    }
                }
                _ => {
                    let a = self.table.reap();
                    self.act(a);
                }
            }
            Ok(false)
        }

        fn run(&mut self) -> Result<(), String> {
            let mut idle = 0;
            while self.steps < 100_000 {
                self.steps += 1;
                let moved = self.step()?;
                self.check()?;
                if moved {
                    idle = 0;
                    continue;
                }
                if !self.net.quiet() {
                    self.net.advance();
                    continue;
                }
                idle += 1;
                if idle > 50 && self.spmd {
                    // A job whose every rank died is never assembled: its owners' requests
                    // end by their own timeout (`call_timeout()`), as they do in the runtime.
                    let dead: Vec<u64> = self
                        .asked
                        .iter()
                        .filter(|(o, a)| {
                            !a.is_empty()
                                && self
                                    .children
                                    .values()
                                    .filter(|c| c.job_id == **o)
                                    .all(|c| c.gone.get())
                        })
                        .map(|(o, _)| *o)
                        .collect();
                    for o in dead {
                        self.trace.push(format!("owner {o} times out"));
                        self.asked.insert(o, HashSet::new());
                    }
                }
                if idle > 50 {
                    let unanswered: usize = self.asked.values().map(HashSet::len).sum();
                    let left: u32 = self.to_ask.values().sum();
                    let all_ended = self.ended.len() == self.to_ask.len();
                    if left == 0 && unanswered == 0 && all_ended {
                        return self.check_end();
                    }
                    if left == 0 && unanswered > 0 {
                        return Err(self.fail(&format!("{unanswered} requests never answered")));
                    }
                }
            }
            Err(self.fail("no end after the step limit"))
        }

        /// At the end: every job ended, every worker that reported no detached actor left
        /// stopped, nothing left in the table but workers still hosting detached actors.
        fn check_end(&mut self) -> Result<(), String> {
            // The detached actors go.
            let live: Vec<u32> = self
                .children
                .iter()
                .filter(|(_, c)| !c.gone.get() && c.detached > 0)
                .map(|(p, _)| *p)
                .collect();
            for pid in live {
                if let Some(c) = self.children.get_mut(&pid) {
                    c.detached = 0;
                }
                let m = RayletWire::WorkerDetached { count: 0 };
                self.net.send(WORKER + pid as u64, RAYLET, m);
            }
            while !self.net.quiet() {
                for link in self.net.ready() {
                    if let Some(m) = self.net.pop(link) {
                        self.deliver(link.0, link.1, m)?;
                    }
                }
                self.net.advance();
            }
            let a = self.table.reap();
            self.act(a);
            // (Under `srun` the launcher, not the raylet, ends a rank that never got ready.)
            let running = self
                .children
                .iter()
                .find(|(_, c)| !c.gone.get() && (c.ready || !self.spmd));
            if let Some((pid, _)) = running {
                return Err(self.fail(&format!("pid {pid} still runs after its job ended")));
            }
            if self.table.jobs().count() > 0 || self.table.workers().count() > 0 {
                return Err(self.fail("the table still has jobs"));
            }
            Ok(())
        }
    }

    /// Owners of three jobs ask for workers while workers boot, crash before and after they
    /// are ready, host detached actors past their job's end, and jobs end: every request is
    /// answered once, with ready workers of its job (or an error), never two processes of a
    /// job run at once, and nothing runs once every job ended.
    #[test]
    fn the_worker_table_over_seeds() {
        let replay = std::env::var("MANTA_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok());
        let seeds = std::env::var("MANTA_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        let (first, count) = replay.map_or((1, seeds), |s| (s, 1));
        for seed in first..first + count {
            // Workers crash now and then, or often (many before they are ready); a raylet
            // that starts the workers, or a node of SPMD ranks.
            for (crash, spmd) in [(0.03, false), (0.3, false), (0.03, true), (0.3, true)] {
                if let Err(e) = RayletWorld::new(seed, 3, crash, spmd).run() {
                    panic!("{e}");
                }
            }
        }
    }
}
