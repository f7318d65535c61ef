//! One object-store arena per node: the raylet creates it, the node's processes (its worker,
//! the driver on the same host) allocate in extents it grants them, read each other's objects
//! through their one mapping, and a dead process's extents come back to the node — but not
//! while another process still reads an object in them (`core/src/cluster/node_store.rs`).
//! Real processes: `manta start` nodes, their workers and the test as driver.

mod common;

use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, eventually_that, serve_if_worker, store_objects};
use manta::ObjectRef;

/// How long the node's reports may take to show a change (heartbeats are once a second).
const HEARTBEATS: Duration = Duration::from_secs(20);

const MIB: usize = 1 << 20;
/// The node arena: 8 granules of the default 64 MiB.
const NODE_ARENA: usize = 512 * MIB;
/// Objects that fit one granule with their encoding's header.
const BIG: usize = 60 * MIB;

fn pattern(i: usize, seed: usize) -> u8 {
    ((i + seed) % 251) as u8
}

/// The bytes checked: every 4093rd and the last one (cheap to write in a debug build, unlike a
/// pattern over every byte, and spread over every page).
fn checked() -> impl Iterator<Item = usize> {
    (0..BIG).step_by(4093).chain([BIG - 1])
}

/// `BIG` bytes of `seed`, with the checked bytes set to the pattern.
fn bytes(seed: usize) -> Vec<u8> {
    let mut v = vec![seed as u8; BIG];
    for i in checked() {
        v[i] = pattern(i, seed);
    }
    v
}

#[manta::remote]
fn make_bytes(seed: usize) -> Vec<u8> {
    bytes(seed)
}

/// Whether `bytes` are `bytes(seed)` at the checked positions (and one byte between).
fn is_pattern(b: &[u8], seed: usize) -> bool {
    b.len() == BIG && b[1] == seed as u8 && checked().all(|i| b[i] == pattern(i, seed))
}

/// This process's store: (node arena size if it is on one, objects, spills).
fn my_store() -> (Option<usize>, usize, u64) {
    let s = manta::status()
        .ok()
        .and_then(|s| s.object_store)
        .expect("a store");
    (s.node_capacity, s.objects, s.spills)
}

#[manta::remote]
fn worker_store() -> (Option<usize>, usize, u64) {
    my_store()
}

/// Keeps objects it made in its own worker's store.
#[manta::actor]
struct Keeper {
    kept: Vec<ObjectRef<Vec<u8>>>,
}

#[manta::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { kept: Vec::new() }
    }
    /// Puts `n` objects into this worker's store and keeps them.
    fn keep(&mut self, n: usize) -> usize {
        for i in 0..n {
            self.kept.push(manta::put(bytes(100 + i)).expect("put"));
        }
        self.kept.len()
    }
    /// Ends this actor's worker process.
    fn exit_process(&self) -> usize {
        std::process::exit(1)
    }
}

/// One node whose raylet makes a 512 MiB arena of 4 KiB pages.
fn one_node() -> LocalCluster {
    LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            env: vec![
                ("MANTA_OBJECT_STORE_MEMORY".into(), NODE_ARENA.to_string()),
                ("MANTA_OBJECT_STORE_HUGE_PAGES".into(), "0".into()),
            ],
            ..NodeSpec::default()
        },
        &[],
    )
}

/// The node's `object_store_memory` as the GCS reports it: (granted, total).
fn node_store(cluster: &LocalCluster) -> (usize, usize) {
    let state = manta::cluster::query(&cluster.address, &cluster.token).expect("query");
    let node = &state.nodes[0];
    let (_, avail, total) = node
        .resources
        .iter()
        .find(|(k, _, _)| k == "object_store_memory")
        .cloned()
        .unwrap_or_default();
    ((total - avail) as usize, total as usize)
}

#[test]
fn the_node_processes_share_one_bounded_arena() {
    serve_if_worker();
    let cluster = one_node();
    manta::init_with(cluster.config()).expect("the driver joins");

    // Both the worker and the driver allocate in the raylet's arena.
    let (node, _, _) = worker_store::remote().get().unwrap();
    assert_eq!(node, Some(NODE_ARENA), "the worker's store");
    assert_eq!(my_store().0, Some(NODE_ARENA), "the driver's store");
    let (_, total) = node_store(&cluster);
    assert_eq!(total, NODE_ARENA, "the node's object_store_memory");

    // A worker's object is read in place through the driver's own mapping of the node arena.
    let r = make_bytes::remote(1);
    let view = r.get_view().expect("a view");
    assert!(view.is_stored());
    assert!(is_pattern(&view, 1));
    assert_eq!(store_objects(), 0, "the driver copied nothing");
    drop(view);

    // The bound is the node's: the driver putting more than the arena while the worker holds
    // one object spills (an arena of its own would be 30% of RAM and never spill here).
    let refs: Vec<_> = (0..10)
        .map(|i| manta::put(bytes(10 + i)).unwrap())
        .collect();
    let (_, objects, spills) = my_store();
    assert_eq!(objects, 10);
    assert!(spills > 0, "the driver's puts past the node arena spilled");
    for (i, r) in refs.iter().enumerate() {
        let v = r.get_view().expect("restored");
        assert!(is_pattern(&v, 10 + i), "object {i} byte-exact");
    }
    let (granted, total) = node_store(&cluster);
    assert!(granted <= total, "granted {granted} of {total}");
    assert!(is_pattern(&r.get_view().unwrap(), 1), "the worker's object");
    drop(refs);
    drop(r);
    manta::shutdown();
}

#[test]
fn a_dead_process_gives_its_extents_back_unless_they_are_read() {
    serve_if_worker();
    let cluster = one_node();
    manta::init_with(cluster.config()).expect("the driver joins");

    // The worker holds three objects; the driver views one of them in place.
    let keeper = Keeper::remote();
    assert_eq!(keeper.keep(3).get().unwrap(), 3);
    let r = make_bytes::remote(7);
    let view = r.get_view().expect("a view");
    assert!(is_pattern(&view, 7));
    let (granted, _) = eventually_that(
        "the worker's extents granted",
        HEARTBEATS,
        || node_store(&cluster),
        |(g, _)| *g >= 4 * BIG,
    );

    // The worker dies. Its extents come back, but the one the driver reads is held back:
    // the driver filling the node arena spills rather than overwrite it.
    assert!(keeper.exit_process().get().is_err());
    let (after, _) = eventually_that(
        "the dead worker's free extents back",
        HEARTBEATS,
        || node_store(&cluster),
        |(g, _)| *g < granted,
    );
    assert!(
        after >= BIG,
        "the viewed object's extent stays granted: {after}"
    );
    let refs: Vec<_> = (0..9).map(|i| manta::put(bytes(20 + i)).unwrap()).collect();
    assert!(
        is_pattern(&view, 7),
        "the dead worker's object, read in place, is intact"
    );
    for (i, r) in refs.iter().enumerate() {
        assert!(is_pattern(&r.get_view().unwrap(), 20 + i), "object {i}");
    }
    drop(refs);

    // The view drops: the extent comes back too.
    drop(view);
    drop(r);
    eventually_that(
        "every extent back once the view dropped",
        HEARTBEATS,
        || node_store(&cluster),
        |(g, _)| *g <= 2 * 64 * MIB,
    );
    drop(keeper);
    manta::shutdown();
}

#[test]
fn with_the_switch_off_each_process_keeps_its_own_arena() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            env: vec![
                ("MANTA_NODE_OBJECT_STORE".into(), "0".into()),
                ("MANTA_OBJECT_STORE_MEMORY".into(), NODE_ARENA.to_string()),
                ("MANTA_OBJECT_STORE_HUGE_PAGES".into(), "0".into()),
            ],
            ..NodeSpec::default()
        },
        &[],
    );
    manta::init_with(cluster.config()).expect("the driver joins");

    // The raylet serves no arena: the worker (started with the raylet's environment) and the
    // driver each have their own.
    let (node, _, _) = worker_store::remote().get().unwrap();
    assert_eq!(node, None, "the worker's store");
    assert_eq!(my_store().0, None, "the driver's store");

    // Reads in place still work, through the worker's own arena attached by the driver.
    let r = make_bytes::remote(3);
    let view = r.get_view().expect("a view");
    assert!(is_pattern(&view, 3));
    assert_eq!(store_objects(), 0, "the driver copied nothing");
    // The node's store is its worker's arena, as the worker reports it.
    let (_, total) = eventually_that(
        "the worker's arena in the node's resources",
        HEARTBEATS,
        || node_store(&cluster),
        |(_, t)| *t > 0,
    );
    assert_eq!(total, NODE_ARENA, "one worker's arena");
    drop(view);
    drop(r);
    manta::shutdown();
}
