//! Store semantics that need a node with a small object store, so a cluster of their own
//! (the semantics matrix's nodes have default stores): results a worker holds for a remote
//! owner are primaries like any other — spilled under pressure, restored when pulled.
//! Real processes: one `manta start` node with a 75 MiB store, the test as driver.

mod common;

use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

const MIB: usize = 1 << 20;
/// A 40 MB result: two of them do not fit the node's 75 MiB store together.
const N: usize = 5_000_000;

#[manta::remote]
fn make(seed: u8) -> Vec<u8> {
    let mut v = vec![seed; 8 * N];
    v[0] = seed.wrapping_add(1);
    v
}

#[manta::remote]
fn check(v: Vec<u8>) -> (usize, u8, u8) {
    (v.len(), v[0], v[v.len() - 1])
}

/// Ray: a second 40 MB result on a node whose store holds one spills the first (held for the
/// driver, not read by anyone) rather than failing with `ObjectStoreFull`; the first is
/// restored when it is read.
#[test]
fn results_held_for_a_remote_owner_spill_and_restore() {
    serve_if_worker();
    let spec = NodeSpec {
        env: vec![
            ("MANTA_OBJECT_STORE_MEMORY".into(), (75 * MIB).to_string()),
            ("MANTA_OBJECT_STORE_PUT_TIMEOUT_US".into(), "5000000".into()),
        ],
        ..NodeSpec::with_resources("")
    };
    let cluster = LocalCluster::start(spec, &[]);
    let _rt = common::start(cluster.config());
    let long = Duration::from_secs(60);
    let first = make::remote(1);
    // Read by the driver (in place, on this host) and by a task.
    let v = first.get_timeout(long).unwrap();
    assert_eq!((v.len(), v[0]), (8 * N, 2));
    drop(v);
    assert_eq!(
        check::remote(&first).get_timeout(long).unwrap(),
        (8 * N, 2, 1)
    );
    let second = make::remote(2);
    assert_eq!(
        check::remote(&second).get_timeout(long).unwrap(),
        (8 * N, 3, 2)
    );
    let third = make::remote(3);
    assert_eq!(
        check::remote(&third).get_timeout(long).unwrap(),
        (8 * N, 4, 3)
    );
    // The first comes back from disk.
    assert_eq!(
        check::remote(&first).get_timeout(long).unwrap(),
        (8 * N, 2, 1)
    );
    drop((first, second, third));
}
