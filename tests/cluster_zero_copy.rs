//! Zero-copy reads between processes of one host: a reader maps the holder's store arena and
//! reads the object in place, pinned at the holder while any view of it lives (protocol in
//! `core/src/cluster/attach.rs`). Real processes: a driver and one or two nodes' workers.

mod common;

use std::time::Duration;

use common::cluster::{
    LocalCluster, NodeSpec, eventually, serve_if_worker, store_objects, worker_store_objects,
};
use manta::ObjectRef;

/// How long a free, an unpin or a kill may take to reach every process.
const SETTLE: Duration = Duration::from_secs(20);

const BIG: usize = 64 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[manta::remote]
fn make_bytes(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

/// Whether `bytes` are `make_bytes(BIG)`'s (every 4093rd byte and the last one checked).
fn is_pattern(bytes: &[u8]) -> bool {
    bytes.len() == BIG
        && (0..BIG)
            .step_by(4093)
            .chain([BIG - 1])
            .all(|i| bytes[i] == pattern(i))
}

/// Whether the argument has the pattern, and this worker's store objects while reading it.
#[manta::remote]
fn check_arg(v: Vec<u8>) -> (bool, usize) {
    (is_pattern(&v), store_objects())
}

/// Keeps a view of an object it read, in another worker process.
#[manta::actor]
struct Viewer {
    view: Option<manta::View<u8>>,
}

#[manta::actor]
impl Viewer {
    fn new() -> Self {
        Viewer { view: None }
    }
    /// Views the first ref and keeps the view (not the ref); returns whether the bytes are
    /// right and this worker's store objects.
    fn hold(&mut self, refs: Vec<ObjectRef<Vec<u8>>>) -> (bool, usize) {
        let view = refs[0].get_view().expect("a view");
        let ok = is_pattern(&view);
        self.view = Some(view);
        (ok, store_objects())
    }
    /// Ends this actor's worker process (with the view held).
    fn exit_process(&self) -> usize {
        std::process::exit(1)
    }
}

fn one_node() -> LocalCluster {
    LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            ..NodeSpec::default()
        },
        &[],
    )
}

#[test]
fn a_worker_object_is_read_in_place() {
    serve_if_worker();
    let cluster = one_node();
    manta::init_with(cluster.config()).expect("the driver joins");
    let worker_objects = || worker_store_objects::remote().get().unwrap();

    // get_view: the bytes are right, and the driver's store holds nothing.
    let r = make_bytes::remote(BIG);
    let view = r.get_view().expect("a view");
    assert!(view.is_stored());
    assert!(is_pattern(&view));
    assert_eq!(
        store_objects(),
        0,
        "the driver's store after a zero-copy view"
    );
    assert_eq!(worker_objects(), 1);

    // The owner drops its ref (the worker is told to free it): the view stays valid, and the
    // worker keeps the object while the view's pin lives. (FreeObject and the next task go
    // on one connection, in order, so the count below is taken after the free.)
    drop(r);
    assert_eq!(
        worker_objects(),
        1,
        "the pinned object outlives its owner's ref"
    );
    assert!(is_pattern(&view));
    drop(view);
    eventually(
        "worker store after the view dropped",
        0,
        SETTLE,
        worker_objects,
    );

    // get (decode) reads in place too: the driver's store stays empty.
    let r = make_bytes::remote(BIG);
    let v: Vec<u8> = r.get().expect("the value");
    assert!(is_pattern(&v));
    assert_eq!(
        store_objects(),
        0,
        "the driver's store after a zero-copy get"
    );
    drop(r);
    eventually("worker store at the end", 0, SETTLE, worker_objects);
    manta::shutdown();
}

#[test]
fn a_dead_reader_releases_its_pins() {
    serve_if_worker();
    let node = NodeSpec::with_resources;
    let cluster = LocalCluster::start(node("a=1"), &[node("b=1")]);
    manta::init_with(cluster.config()).expect("the driver joins");
    let on = |res: &str| {
        worker_store_objects::options()
            .resource(res, 0.01)
            .remote()
            .get()
            .unwrap()
    };
    let r = make_bytes::options().resource("a", 0.01).remote(BIG);
    manta::wait(vec![r.clone()], 1, None).unwrap();
    assert_eq!(on("a"), 1);

    // A task argument on b is read in place from a's store.
    let (ok, objects) = check_arg::options()
        .resource("b", 0.01)
        .remote(&r)
        .get()
        .unwrap();
    assert!(ok, "the argument's bytes");
    assert_eq!(objects, 0, "b's store while its task reads a's object");

    // An actor on b keeps a view of it (borrowed through the driver, redirected to a).
    let viewer = Viewer::options().resource("b", 0.01).remote();
    let (ok, objects) = viewer.hold(vec![r.clone()]).get().unwrap();
    assert!(ok, "the viewed bytes");
    assert_eq!(objects, 0, "b's store while it views a's object");
    drop(r);
    assert_eq!(on("a"), 1, "a keeps the object b views");

    // b's process dies with the view: a releases the pin, and the object is freed.
    assert!(viewer.exit_process().get().is_err());
    eventually("a's store after its reader died", 0, SETTLE, || on("a"));
    drop(viewer);
    manta::shutdown();
}

#[test]
fn with_the_switch_off_reads_copy() {
    serve_if_worker();
    let cluster = one_node();
    manta::init_with(cluster.config().zero_copy_node(false)).expect("the driver joins");
    let r = make_bytes::remote(BIG);
    let view = r.get_view().expect("a view");
    assert!(is_pattern(&view));
    assert_eq!(store_objects(), 1, "the driver's copy");
    drop(view);
    drop(r);
    eventually("the driver's store at the end", 0, SETTLE, store_objects);
    eventually("the worker's store at the end", 0, SETTLE, || {
        worker_store_objects::remote().get().unwrap()
    });
    manta::shutdown();
}
