//! Objects above the inline threshold live in the shared-memory object store: put/get
//! round-trips, task arguments and results, actor results, and freeing on drop.

mod common;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const MIB: usize = 1 << 20;

fn config() -> manta::Config {
    manta::Config::default()
        .num_cpus(2.0)
        .object_store_memory(256 * MIB)
}

fn store() -> manta::ObjectStoreStatus {
    manta::status()
        .expect("status")
        .object_store
        .expect("the runtime has an object store")
}

/// Polls `cond` for up to 5 s.
fn eventually(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Record {
    name: String,
    values: Vec<u32>,
    nested: Vec<(u8, Option<String>)>,
}

#[test]
fn large_values_round_trip_byte_exact_through_the_store() {
    let _rt = common::start(config());
    let bytes: Vec<u8> = (0..4 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let floats: Vec<f64> = (0..MIB).map(|i| i as f64 * 0.5 - 7.0).collect();
    let ints: Vec<i16> = (0..MIB).map(|i| (i as i16).wrapping_mul(3)).collect();
    let strings: Vec<String> = (0..50_000).map(|i| format!("object {i}")).collect();
    let records: Vec<Record> = (0..2_000)
        .map(|i| Record {
            name: format!("r{i}"),
            values: (0..64).map(|j| i * j).collect(),
            nested: vec![(i as u8, Some("x".repeat(i as usize % 7))), (0, None)],
        })
        .collect();

    let r_bytes = manta::put(bytes.clone()).unwrap();
    let r_floats = manta::put(floats.clone()).unwrap();
    let r_ints = manta::put(ints.clone()).unwrap();
    let r_strings = manta::put(strings.clone()).unwrap();
    let r_records = manta::put(records).unwrap();
    assert_eq!(
        store().objects,
        5,
        "every value above 100 KiB is in the store"
    );

    assert_eq!(r_bytes.get().unwrap(), bytes);
    assert_eq!(r_floats.get().unwrap(), floats);
    assert_eq!(r_ints.get().unwrap(), ints);
    assert_eq!(r_strings.get().unwrap(), strings);
    let back = r_records.get().unwrap();
    assert_eq!(back.len(), 2_000);
    assert_eq!(back[1234].values[63], 1234 * 63);
    assert_eq!(back[6].nested[0], (6, Some("x".repeat(6))));
    // Reading twice gives the same value (reads do not consume or keep pins).
    assert_eq!(r_bytes.get().unwrap(), bytes);
}

#[test]
fn small_values_stay_inline() {
    let _rt = common::start(config());
    let small = manta::put(vec![1u8; 1000]).unwrap();
    let at_threshold = manta::put(vec![2u8; 100 * 1024 - 8]).unwrap();
    assert_eq!(store().objects, 0);
    let above = manta::put(vec![3u8; 100 * 1024 - 7]).unwrap();
    assert_eq!(store().objects, 1);
    assert_eq!(small.get().unwrap(), vec![1u8; 1000]);
    assert_eq!(at_threshold.get().unwrap().len(), 100 * 1024 - 8);
    assert_eq!(above.get().unwrap().len(), 100 * 1024 - 7);
}

/// A task's view of the store while it runs: its own large argument must be there.
#[manta::remote]
fn sum_and_count(v: Vec<u8>) -> (u64, usize) {
    let objects = manta::status().unwrap().object_store.unwrap().objects;
    (v.iter().map(|&b| b as u64).sum(), objects)
}

#[manta::remote]
fn make(n: usize) -> Vec<u32> {
    (0..n as u32).collect()
}

#[manta::remote]
fn total(v: Vec<u32>) -> u64 {
    v.iter().map(|&x| x as u64).sum()
}

#[manta::actor]
struct Maker;

#[manta::actor]
impl Maker {
    fn new() -> Self {
        Maker
    }
    fn make(&self, n: usize) -> Vec<u64> {
        vec![n as u64; n]
    }
}

#[test]
fn task_arguments_and_results_above_the_threshold_go_through_the_store() {
    let _rt = common::start(config());
    // An argument passed by value.
    let (sum, seen) = sum_and_count::remote(vec![1u8; MIB]).get().unwrap();
    assert_eq!(sum, MIB as u64);
    assert!(
        seen >= 1,
        "the 1 MiB argument was in the store while the task ran"
    );
    // The slot that ran the task may still be letting go of it (and its arguments).
    eventually(
        || store().objects == 0,
        "the argument left the store with its task",
    );

    // A result, then that result passed by reference to another task.
    let big = make::remote(MIB);
    assert_eq!(big.get().unwrap().len(), MIB);
    assert_eq!(store().objects, 1);
    let n = MIB as u64;
    assert_eq!(total::remote(&big).get().unwrap(), n * (n - 1) / 2);
    let small = make::remote(10);
    assert_eq!(small.get().unwrap().len(), 10);
    assert_eq!(store().objects, 1, "a small result stays inline");

    // An actor method's result.
    let maker = Maker::remote();
    let r = maker.make(1 << 16);
    assert_eq!(r.get().unwrap(), vec![1u64 << 16; 1 << 16]);
    assert_eq!(store().objects, 2);
    drop((big, r));
    eventually(|| store().objects == 0, "every object left the store");
}

#[test]
fn dropping_the_last_reference_frees_store_space() {
    let _rt = common::start(config());
    let before = store().used;
    let a = manta::put(vec![5u64; 2 * MIB]).unwrap();
    let b = a.clone();
    let used = store().used;
    assert!(used >= before + 16 * MIB, "{used} bytes used");
    drop(a);
    assert_eq!(store().used, used, "a clone still holds the object");
    let view = b.get_view().unwrap();
    drop(b);
    assert_eq!(store().objects, 1, "a view keeps its object");
    assert!(view.iter().all(|&x| x == 5));
    drop(view);
    let after = store();
    assert_eq!((after.objects, after.used), (0, before));
}

#[test]
fn status_reports_the_store() {
    let _rt = common::start(config());
    let s = store();
    assert!(s.capacity >= 256 * MIB, "{s:?}");
    assert_eq!((s.objects, s.used, s.spilled_objects), (0, 0, 0));
    assert!(s.page_kind.page_size() >= 4096);
}

#[test]
fn objects_are_created_on_the_writers_numa_region() {
    let _rt = common::start(config());
    let before = store();
    assert!(before.numa_nodes >= 1, "{before:?}");
    let r = manta::put(vec![3u8; 4 * MIB]).expect("put");
    let after = store();
    // Whatever the machine, the write path asks for the writer's region; on one NUMA node that
    // is region 0, which always has room here.
    assert_eq!(after.numa_near, before.numa_near + 1, "{after:?}");
    assert_eq!(after.numa_far, before.numa_far, "{after:?}");
    drop(r);
}

#[test]
fn the_configured_numa_nodes_reach_the_store() {
    if !std::path::Path::new("/sys/devices/system/node/node0").exists() {
        eprintln!("skipped: this kernel shows no NUMA node 0");
        return;
    }
    // What the launcher passes a worker (MANTA_OBJECT_STORE_NUMA_NODES): here node 0, the one
    // NUMA node every Linux machine has. The arena is bound to it, in both builds.
    let _rt = common::start(config().object_store_numa_nodes(manta::CpuList(vec![0])));
    let s = store();
    assert_eq!(s.numa_node_ids, [0]);
    assert_eq!(s.numa_nodes, 1);
    let big = manta::put(vec![7u8; 2 * MIB]).unwrap();
    assert_eq!(manta::get(&big).unwrap().len(), 2 * MIB);
}
