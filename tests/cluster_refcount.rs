//! Ray's reference-counting cases, across processes: a driver and one node's worker process.
//! An object lives while any reference to it lives anywhere (the owner's handles, a task in
//! flight, a value or actor holding it), and is freed in every store once none is left.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};
use manta::ObjectRef;

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

/// Objects in this worker process's store.
#[manta::remote]
fn store_objects() -> usize {
    manta::status()
        .ok()
        .and_then(|s| s.object_store)
        .map_or(0, |s| s.objects)
}

#[manta::actor]
struct Keeper {
    kept: Option<ObjectRef<Vec<u8>>>,
}

#[manta::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { kept: None }
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
}

fn driver_store_objects() -> usize {
    manta::status()
        .unwrap()
        .object_store
        .map_or(0, |s| s.objects)
}

/// Polls `f` until it returns `want` (objects are freed by messages: eventually, not at once).
fn eventually(what: &str, want: usize, f: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let worker_objects = || store_objects::remote().get().unwrap();
    assert_eq!(worker_objects(), 0);

    // 1. A task's arguments stay alive while it is in flight, though the owner dropped them.
    let arg = manta::put(vec![1u8; BIG]).unwrap();
    let r = slow_sum::remote(200u64, &arg);
    drop(arg);
    assert_eq!(r.get().unwrap(), BIG as u64);
    eventually("driver store after the task", 0, driver_store_objects);

    // 2. A reference inside a value keeps its object alive while the value lives.
    let inner = manta::put(vec![2u8; BIG]).unwrap();
    let outer = manta::put(vec![inner.clone()]).unwrap();
    drop(inner);
    assert_eq!(sum_inner::remote(&outer).get().unwrap(), 2 * BIG as u64);
    drop(outer);
    eventually(
        "driver store after the nested case",
        0,
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
    eventually("driver store at the end", 0, driver_store_objects);
    eventually("worker store at the end", 0, worker_objects);
    drop(keeper);
    manta::shutdown();
}
