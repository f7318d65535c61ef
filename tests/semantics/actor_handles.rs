//! Actor handles and placement: a handle returned by an actor method, calls that outlive the
//! handle they were made on, and where a default actor may be placed.

use std::time::Duration;

use manta::{ActorHandle, ObjectRef};

use crate::harness::{Case, Ctx, Mode};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "actor_handles::handle_returned_by_a_method",
        handle_returned_by_a_method,
    ),
    Case::new(
        "actor_handles::calls_outlive_a_dropped_handle",
        calls_outlive_a_dropped_handle,
    ),
    Case::new(
        "actor_handles::calls_outlive_a_dropped_borrowed_handle",
        calls_outlive_a_dropped_borrowed_handle,
    ),
    Case::new(
        "actor_handles::default_actor_needs_a_cpu_to_be_placed",
        default_actor_placement,
    ),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::actor]
pub(crate) struct Tally {
    n: u64,
}

#[manta::actor]
impl Tally {
    pub(crate) fn new(start: u64) -> Self {
        Tally { n: start }
    }
    pub(crate) fn add(&mut self, x: u64) -> u64 {
        self.n += x;
        self.n
    }
    pub(crate) fn slow_add(&mut self, x: u64, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.n += x;
        self.n
    }
    /// The node this actor runs on (`None` embedded).
    pub(crate) fn node(&self) -> Option<u64> {
        manta::status().ok().and_then(|s| s.node_id)
    }
}

#[manta::actor]
pub(crate) struct Maker {
    made: Vec<ActorHandle<Tally>>,
}

#[manta::actor]
impl Maker {
    pub(crate) fn new() -> Self {
        Maker { made: Vec::new() }
    }
    /// Creates a `Tally` (in this actor's process) and hands its handle out.
    pub(crate) fn make(&mut self, start: u64) -> ActorHandle<Tally> {
        let t = Tally::remote(start);
        self.made.push(t.clone());
        t
    }
    /// The same, keeping no handle of its own.
    pub(crate) fn make_and_forget(&self, start: u64) -> ActorHandle<Tally> {
        Tally::remote(start)
    }
}

/// Ray: an actor handle is a value like any other; one an actor returns is usable by the
/// caller, wherever the actor it names was created.
fn handle_returned_by_a_method(_: &Ctx) {
    let maker = Maker::remote();
    let t: ActorHandle<Tally> = maker.make(10).get_timeout(LONG).unwrap();
    assert_eq!(t.add(5).get_timeout(LONG).unwrap(), 15);
    assert_eq!(t.add(1).get_timeout(LONG).unwrap(), 16);
    let u: ActorHandle<Tally> = maker.make_and_forget(100).get_timeout(LONG).unwrap();
    assert_eq!(u.add(1).get_timeout(LONG).unwrap(), 101);
    // Only the caller holds `u` now: it lives while the caller's handle does.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(u.add(1).get_timeout(LONG).unwrap(), 102);
}

/// Ray: an actor goes once its last handle is gone AND the calls already submitted are done;
/// dropping the handle does not cancel what was submitted on it.
fn calls_outlive_a_dropped_handle(_: &Ctx) {
    let r = Tally::remote(1).slow_add(2, 300);
    assert_eq!(r.get_timeout(LONG).unwrap(), 3);
    let t = Tally::remote(0);
    let calls: Vec<_> = (1..=5u64).map(|i| t.slow_add(i, 50)).collect();
    drop(t);
    let got: Vec<u64> = calls.iter().map(|c| c.get_timeout(LONG).unwrap()).collect();
    assert_eq!(got, vec![1, 3, 6, 10, 15]);
}

#[manta::remote]
fn call_and_return(h: ActorHandle<Tally>) -> ObjectRef<u64> {
    // The task's handle (a borrow) goes when it returns; the first call is still running,
    // the second queued behind it.
    let _running = h.slow_add(5, 300);
    h.slow_add(1, 0)
}

/// The same through a borrowed handle: a task calls the actor, drops the only handles left
/// (its own, and with the task the caller's), and hands back the call's result.
fn calls_outlive_a_dropped_borrowed_handle(_: &Ctx) {
    let t = Tally::remote(1);
    let inner: ObjectRef<u64> = call_and_return::remote(t).get_timeout(LONG).unwrap();
    assert_eq!(inner.get_timeout(LONG).unwrap(), 7);
}

/// Ray: a default actor needs 1 CPU to be placed and holds none while it runs, so it never
/// lands on a node without CPUs; an explicit `num_cpus` is what it holds.
fn default_actor_placement(ctx: &Ctx) {
    // Every CPU busy first, so a placement that ignored CPUs would pick the idle node.
    let busy: Vec<_> = (0..4).map(|_| nap::remote(800)).collect();
    let actors: Vec<ActorHandle<Tally>> = (0..6).map(Tally::remote).collect();
    let nodes: Vec<Option<u64>> = actors
        .iter()
        .map(|a| a.node().get_timeout(LONG).unwrap())
        .collect();
    if ctx.mode == Mode::ThreeNodes {
        // The node of resource `zero` is the one without CPUs.
        let zero = Tally::options()
            .resource("zero", 0.5)
            .num_cpus(0.0)
            .remote(0);
        let zero_node = zero.node().get_timeout(LONG).unwrap();
        assert!(zero_node.is_some());
        assert!(
            !nodes.contains(&zero_node),
            "a default actor was placed on the 0-CPU node {zero_node:?}: {nodes:?}"
        );
    }
    // They hold no CPU while they run: tasks still get both CPUs of a node.
    let t = Tally::options().num_cpus(ctx.cpus).remote(0);
    assert_eq!(t.add(1).get_timeout(LONG).unwrap(), 1);
    drop(actors);
    for b in busy {
        b.get_timeout(LONG).unwrap();
    }
}

#[manta::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
