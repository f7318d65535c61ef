//! Ray's reference-counting cases, across processes: a driver and one or two nodes' worker
//! processes. An object lives while any reference to it lives anywhere (the owner's handles, a
//! task in flight, a value or actor holding it, a borrower in another process), and is freed in
//! every store once none is left. An actor likewise lives while any handle to it lives
//! anywhere, and is killed once none is left, unless it is named.

mod common;

use std::time::Duration;

use common::cluster::{
    LocalCluster, NodeSpec, Tally, eventually, serve_if_worker, store_objects, worker_store_objects,
};
use manta::{ActorHandle, ObjectRef};

/// How long a free, an unpin or a kill may take to reach every process.
const SETTLE: Duration = Duration::from_secs(10);

#[manta::remote]
fn slow_sum(pause_ms: u64, v: Vec<u8>) -> u64 {
    std::thread::sleep(Duration::from_millis(pause_ms));
    v.iter().map(|x| *x as u64).sum()
}

#[manta::remote]
fn sum_inner(outer: Vec<ObjectRef<Vec<u8>>>) -> u64 {
    outer
        .iter()
        .map(|r| {
            r.get()
                .expect("inner")
                .iter()
                .map(|x| *x as u64)
                .sum::<u64>()
        })
        .sum()
}

#[manta::remote]
fn make_and_return_ref(n: usize) -> Vec<ObjectRef<Vec<u8>>> {
    vec![manta::put(vec![3u8; n]).expect("put in a worker")]
}

#[manta::remote]
fn make_vec(n: usize) -> Vec<u8> {
    vec![1u8; n]
}

#[manta::remote]
fn sum_u8(v: Vec<u8>) -> u64 {
    v.iter().map(|x| *x as u64).sum()
}

/// This worker's store objects after deserialising `refs` (a borrow pulls nothing), then
/// after reading the first one.
#[manta::remote]
fn lazy_refs(refs: Vec<ObjectRef<Vec<u8>>>) -> (usize, usize) {
    let before = store_objects();
    assert_eq!(refs[0].get().expect("the first ref").len(), BIG);
    (before, store_objects())
}

/// Returns the refs it was given: its result holds them (and its executor holds the result
/// for its owner until the owner frees it).
#[manta::remote]
fn return_refs(v: Vec<ObjectRef<Vec<u8>>>) -> Vec<ObjectRef<Vec<u8>>> {
    v
}

#[manta::actor]
struct Keeper {
    kept: Option<ObjectRef<Vec<u8>>>,
    /// A result that holds the kept ref, computed on the node with resource `b`.
    held: Option<ObjectRef<Vec<ObjectRef<Vec<u8>>>>>,
}

#[manta::actor]
impl Keeper {
    fn new() -> Self {
        Keeper {
            kept: None,
            held: None,
        }
    }
    fn keep(&mut self, r: Vec<ObjectRef<Vec<u8>>>) -> usize {
        self.kept = r.into_iter().next();
        1
    }
    fn sum(&self) -> u64 {
        let r = self.kept.as_ref().expect("a kept ref");
        r.get().expect("kept value").iter().map(|x| *x as u64).sum()
    }
    fn drop_it(&mut self) -> usize {
        self.kept = None;
        0
    }
    /// Passes the kept ref, nested in a value, to a task on the node with resource `b`.
    fn forward_nested(&self) -> u64 {
        let r = self.kept.clone().expect("a kept ref");
        sum_inner::options()
            .resource("b", 1.0)
            .remote(vec![r])
            .get()
            .expect("the forwarded ref")
    }
    /// Passes the kept ref as a task argument to a task on the node with resource `b`.
    fn forward_by_ref(&self) -> u64 {
        let r = self.kept.as_ref().expect("a kept ref");
        sum_u8::options()
            .resource("b", 1.0)
            .remote(r)
            .get()
            .expect("the forwarded argument")
    }
    /// Ends this actor's worker process.
    fn exit_process(&self) -> usize {
        std::process::exit(1)
    }
    /// Trades the kept ref for the result of a task on the node with resource `b` that
    /// returns it: that task's worker holds the result, and so the ref, for this process.
    fn hold_result_on_b(&mut self) -> usize {
        let r = self.kept.take().expect("a kept ref");
        let res = return_refs::options().resource("b", 1.0).remote(vec![r]);
        assert_eq!(res.get().expect("the returned refs").len(), 1);
        self.held = Some(res);
        1
    }
}

fn driver_store_objects() -> usize {
    manta::status()
        .unwrap()
        .object_store
        .map_or(0, |s| s.objects)
}

const BIG: usize = 4 << 20;

#[test]
fn reference_counting_across_processes() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            ..NodeSpec::default()
        },
        &[],
    );
    manta::init_with(cluster.config()).expect("the driver joins");
    let worker_objects = || worker_store_objects::remote().get().unwrap();
    assert_eq!(worker_objects(), 0);

    // 1. A task's arguments stay alive while it is in flight, though the owner dropped them.
    let arg = manta::put(vec![1u8; BIG]).unwrap();
    let r = slow_sum::remote(200u64, &arg);
    drop(arg);
    assert_eq!(r.get().unwrap(), BIG as u64);
    eventually(
        "driver store after the task",
        0,
        SETTLE,
        driver_store_objects,
    );

    // 2. A reference inside a value keeps its object alive while the value lives.
    let inner = manta::put(vec![2u8; BIG]).unwrap();
    let outer = manta::put(vec![inner.clone()]).unwrap();
    drop(inner);
    assert_eq!(sum_inner::remote(&outer).get().unwrap(), 2 * BIG as u64);
    drop(outer);
    eventually(
        "driver store after the nested case",
        0,
        SETTLE,
        driver_store_objects,
    );

    // 3. A worker's object, returned by reference, outlives the task that made it (the
    //    driver borrows it from its owner).
    let refs = make_and_return_ref::remote(BIG).get().unwrap();
    let sum: u64 = refs[0].get().unwrap().iter().map(|x| *x as u64).sum();
    assert_eq!(sum, 3 * BIG as u64);
    drop(refs);

    // 4. An actor keeps a reference in its state after the driver dropped its own.
    let keeper = Keeper::options().num_cpus(1.0).remote();
    let kept = manta::put(vec![5u8; BIG]).unwrap();
    keeper.keep(vec![kept.clone()]).get().unwrap();
    drop(kept);
    assert_eq!(keeper.sum().get().unwrap(), 5 * BIG as u64);
    keeper.drop_it().get().unwrap();

    // 5. A result held by the worker for the driver is freed there when the driver drops it.
    let made = make_vec::remote(BIG);
    assert_eq!(made.get_view().unwrap().len(), BIG);
    drop(made);

    // Nothing is left anywhere.
    eventually("driver store at the end", 0, SETTLE, driver_store_objects);
    eventually("worker store at the end", 0, SETTLE, worker_objects);
    drop(keeper);
    manta::shutdown();
}

/// The borrower protocol with two worker processes (nodes with resources `a` and `b`): refs
/// are pulled only when read, a borrower can pass a ref on after its owner dropped its own
/// handles, refs nested in results outlive the result, and a borrower that dies releases what
/// it borrowed.
#[test]
fn borrowers_across_processes() {
    serve_if_worker();
    let node = NodeSpec::with_resources;
    let cluster = LocalCluster::start(node("a=1"), &[node("b=1")]);
    manta::init_with(cluster.config()).expect("the driver joins");
    let on_b = || {
        worker_store_objects::options()
            .resource("b", 1.0)
            .remote()
            .get()
            .unwrap()
    };
    assert_eq!(on_b(), 0);

    // 1. A value holding many refs pulls none of them when deserialised; the one read is
    //    read in place from the driver's arena (same host: zero-copy), so b's store stays
    //    empty (`tests/cluster_zero_copy.rs` has the copy path, which would store that one).
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..8)
        .map(|i| manta::put(vec![i as u8; BIG]).unwrap())
        .collect();
    let (before, after) = lazy_refs::options()
        .resource("b", 1.0)
        .remote(refs.clone())
        .get()
        .unwrap();
    assert_eq!(
        (before, after),
        (0, 0),
        "store objects before and after a read"
    );
    drop(refs);
    eventually(
        "driver store after the lazy refs",
        0,
        SETTLE,
        driver_store_objects,
    );
    eventually("store on b after the lazy refs", 0, SETTLE, on_b);

    // 2. A borrower passes the ref on after its owner dropped its handle (Ray's "borrower
    //    forwards the ref"): the owner keeps the object for its borrower.
    let keeper = Keeper::options().num_cpus(1.0).resource("a", 1.0).remote();
    let x = manta::put(vec![7u8; BIG]).unwrap();
    keeper.keep(vec![x.clone()]).get().unwrap();
    drop(x);
    assert_eq!(keeper.forward_nested().get().unwrap(), 7 * BIG as u64);
    assert_eq!(keeper.forward_by_ref().get().unwrap(), 7 * BIG as u64);
    assert_eq!(driver_store_objects(), 1, "the borrowed object is kept");
    // The last borrower drops it: freed at the owner.
    keeper.drop_it().get().unwrap();
    eventually(
        "driver store after the borrower dropped",
        0,
        SETTLE,
        driver_store_objects,
    );

    // 3. Refs owned by a worker, returned nested in its result (held, and inline), outlive
    //    the result and are lent on to a third process.
    let refs = make_and_return_ref::options()
        .resource("b", 1.0)
        .remote(BIG)
        .get()
        .unwrap();
    keeper.keep(refs.clone()).get().unwrap();
    drop(refs);
    assert_eq!(keeper.sum().get().unwrap(), 3 * BIG as u64);
    assert_eq!(on_b(), 1, "the worker keeps its object for the actor");
    keeper.drop_it().get().unwrap();
    eventually("store on b after the actor dropped", 0, SETTLE, on_b);
    let small = make_and_return_ref::options()
        .resource("b", 1.0)
        .remote(16usize)
        .get()
        .unwrap();
    assert_eq!(small[0].get().unwrap(), vec![3u8; 16]);
    assert_eq!(sum_inner::remote(small.clone()).get().unwrap(), 48);
    drop(small);

    // 4. A borrower whose process dies releases its borrows.
    let y = manta::put(vec![9u8; BIG]).unwrap();
    keeper.keep(vec![y.clone()]).get().unwrap();
    drop(y);
    assert_eq!(driver_store_objects(), 1, "the borrowed object is kept");
    assert!(keeper.exit_process().get().is_err());
    eventually(
        "driver store after the borrower died",
        0,
        SETTLE,
        driver_store_objects,
    );

    drop(keeper);
    manta::shutdown();
}

/// A result held for an owner that dies is freed, and so are the refs in it: a worker on `b`
/// holds, for the actor's process, a result holding the driver's object; the actor's process
/// dies; the object is freed.
#[test]
fn results_held_for_a_dead_owner_are_freed() {
    serve_if_worker();
    let node = NodeSpec::with_resources;
    let cluster = LocalCluster::start(node("a=1"), &[node("b=1")]);
    manta::init_with(cluster.config()).expect("the driver joins");
    let keeper = Keeper::options().num_cpus(1.0).resource("a", 1.0).remote();
    let y = manta::put(vec![4u8; BIG]).unwrap();
    keeper.keep(vec![y.clone()]).get().unwrap();
    assert_eq!(keeper.hold_result_on_b().get().unwrap(), 1);
    drop(y);
    assert_eq!(
        driver_store_objects(),
        1,
        "the object is held in b's result"
    );
    assert!(keeper.exit_process().get().is_err());
    eventually(
        "driver store after the result's owner died",
        0,
        SETTLE,
        driver_store_objects,
    );
    drop(keeper);
    manta::shutdown();
}

/// Adds `k` through a handle it was given (run on the node with resource `a`).
#[manta::remote]
fn add_through(t: ActorHandle<Tally>, k: u64) -> u64 {
    t.add(k).get().expect("the tally answers a task")
}

/// Keeps a handle to a `Tally` it was given, by value or nested in an object.
#[manta::actor]
struct HandleKeeper {
    kept: Option<ActorHandle<Tally>>,
}

#[manta::actor]
impl HandleKeeper {
    fn new() -> Self {
        HandleKeeper { kept: None }
    }
    fn keep(&mut self, t: ActorHandle<Tally>) -> usize {
        self.kept = Some(t);
        1
    }
    /// Keeps the first handle of the value `r[0]` refers to (a borrowed object).
    fn keep_nested(&mut self, r: Vec<ObjectRef<Vec<ActorHandle<Tally>>>>) -> usize {
        self.kept = r[0].get().expect("the handles").into_iter().next();
        1
    }
    fn add(&self, k: u64) -> u64 {
        let t = self.kept.as_ref().expect("a kept handle");
        t.add(k).get().expect("the tally answers its borrower")
    }
    /// Passes the kept handle on to a task on the node with resource `a`.
    fn forward(&self, k: u64) -> u64 {
        let t = self.kept.clone().expect("a kept handle");
        add_through::options()
            .resource("a", 1.0)
            .remote(t, k)
            .get()
            .expect("the forwarded handle")
    }
    fn drop_it(&mut self) -> usize {
        self.kept = None;
        0
    }
    /// Ends this actor's worker process.
    fn exit_process(&self) -> usize {
        std::process::exit(1)
    }
}

/// Whether the GCS's directory lists actor `id` alive (`manta list actors`).
fn listed_alive(cluster: &LocalCluster, id: manta::ActorId) -> usize {
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    let row = state.actors.iter().find(|a| a.actor_id == id.as_u64());
    usize::from(row.expect("the actor is in the directory").alive)
}

/// The borrower protocol for actor handles, with two worker processes (nodes with resources
/// `a`, hosting the actors, and `b`, hosting their borrower): an actor lives while a handle to
/// it lives in any process, and is killed when the last one goes or its holder dies; a named
/// actor lives until it is killed.
#[test]
fn actor_handles_are_borrowed_across_processes() {
    serve_if_worker();
    let node = NodeSpec::with_resources;
    // Each live tally holds one `a`; `add_through` takes one more.
    let cluster = LocalCluster::start(node("a=4"), &[node("b=1")]);
    manta::init_with(cluster.config()).expect("the driver joins");
    let tally = || Tally::options().resource("a", 1.0).remote();
    let keeper = HandleKeeper::options().resource("b", 1.0).remote();

    // 1. A handle that never left its owner: the actor goes with it (as before).
    let t = tally();
    let id = t.id();
    assert_eq!(t.add(1).get().unwrap(), 1);
    drop(t);
    eventually("an unshared actor after its drop", 0, SETTLE, || {
        listed_alive(&cluster, id)
    });

    // 2. A borrower keeps the actor after its owner dropped its handle, and passes the handle
    //    on (to a task in the actor's own process); the actor goes when the borrower drops it.
    let t = tally();
    let id = t.id();
    assert_eq!(keeper.keep(t.clone()).get().unwrap(), 1);
    drop(t);
    assert_eq!(keeper.add(2).get().unwrap(), 2);
    assert_eq!(keeper.forward(3).get().unwrap(), 5);
    assert_eq!(keeper.add(4).get().unwrap(), 9);
    assert_eq!(listed_alive(&cluster, id), 1, "the borrowed actor lives");
    keeper.drop_it().get().unwrap();
    eventually("the actor after its borrower dropped it", 0, SETTLE, || {
        listed_alive(&cluster, id)
    });

    // 3. A handle nested in an object: the process that reads it borrows the actor.
    let t = tally();
    let id = t.id();
    let handles = manta::put(vec![t.clone()]).unwrap();
    assert_eq!(keeper.keep_nested(vec![handles.clone()]).get().unwrap(), 1);
    drop(handles);
    drop(t);
    eventually(
        "driver store after the nested handles",
        0,
        SETTLE,
        driver_store_objects,
    );
    assert_eq!(keeper.add(5).get().unwrap(), 5);
    assert_eq!(
        listed_alive(&cluster, id),
        1,
        "the nested handle's actor lives"
    );
    keeper.drop_it().get().unwrap();
    eventually(
        "the actor after its nested handle dropped",
        0,
        SETTLE,
        || listed_alive(&cluster, id),
    );

    // 4. A detached named actor lives with no handle left, until it is killed.
    let named = Tally::options()
        .name("tally")
        .lifetime_detached()
        .resource("a", 1.0)
        .remote();
    let id = named.id();
    assert_eq!(keeper.keep(named.clone()).get().unwrap(), 1);
    drop(named);
    keeper.drop_it().get().unwrap();
    let found = manta::get_actor::<Tally>("tally").expect("the named actor lives");
    assert_eq!(found.add(6).get().unwrap(), 6);
    assert!(manta::kill(&found).unwrap());
    eventually("the named actor after its kill", 0, SETTLE, || {
        listed_alive(&cluster, id)
    });
    drop(found);

    // 4b. One that is not detached goes with its last handle anywhere, name and all.
    let named = Tally::options().name("tally2").resource("a", 1.0).remote();
    let id = named.id();
    assert_eq!(keeper.keep(named.clone()).get().unwrap(), 1);
    drop(named);
    assert_eq!(
        manta::get_actor::<Tally>("tally2")
            .unwrap()
            .add(1)
            .get()
            .unwrap(),
        1,
        "a borrower's handle keeps it"
    );
    keeper.drop_it().get().unwrap();
    eventually("the named actor after its last handle", 0, SETTLE, || {
        listed_alive(&cluster, id)
    });
    assert!(matches!(
        manta::get_actor::<Tally>("tally2"),
        Err(manta::Error::ActorNotFound { .. })
    ));

    // 5. A borrower whose process dies releases the actor.
    let t = tally();
    let id = t.id();
    assert_eq!(keeper.keep(t.clone()).get().unwrap(), 1);
    drop(t);
    assert_eq!(keeper.add(7).get().unwrap(), 7);
    assert!(keeper.exit_process().get().is_err());
    eventually("the actor after its borrower died", 0, SETTLE, || {
        listed_alive(&cluster, id)
    });

    drop(keeper);
    manta::shutdown();
}
