//! Lineage reconstruction with real processes (Ray's `test_reconstruction.py`): a large task
//! result lives in the store of the worker that computed it; when that worker's node is
//! killed, its owner runs the task again (recursively rebuilding lost arguments first), and
//! `get` returns the right value. What cannot be rebuilt fails with its own kind.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, eventually_that, serve_if_worker};
use manta::{Error, ObjectRef};

const LONG: Duration = Duration::from_secs(60);
/// Above the inline threshold (100 KiB): kept in the executor's store.
const BIG: usize = 1 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

#[manta::remote]
fn large_object(seed: u64) -> Vec<u8> {
    pattern(seed, BIG)
}

/// Past the shared-memory ring (4 MiB): a transfer of it can be cut off midway.
const HUGE: usize = 32 << 20;

#[manta::remote]
fn huge_object(seed: u64) -> Vec<u8> {
    pattern(seed, HUGE)
}

/// Waits (at most 50 s) until `path` exists.
fn wait_file(path: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(50);
    while !std::path::Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(format!("{path} never came"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Holds a reference (a borrow), says so (`<dir>/borrowing`), and reads it once `<dir>/go`
/// exists.
#[manta::remote]
fn borrow_when_told(refs: Vec<ObjectRef<Vec<u8>>>, dir: String) -> Result<u64, String> {
    std::fs::write(format!("{dir}/borrowing"), b"").map_err(|e| e.to_string())?;
    wait_file(&format!("{dir}/go"))?;
    refs[0]
        .get_timeout(Duration::from_secs(50))
        .map(|v| v.iter().map(|b| u64::from(*b)).sum())
        .map_err(|e| format!("the borrower: {e}"))
}

/// Owns a large object computed on a `holder` node, lends it to a borrower on the `reader`
/// node, says it is ready (`<dir>/ready`) and, once told to (`<dir>/go`: its holder was
/// killed meanwhile), has it read there as a task's argument too. Both byte sums.
#[manta::remote]
fn own_and_lend(dir: String) -> Result<(u64, u64), String> {
    let obj = large_object::options().resource("holder", 1.0).remote(13);
    let deadline = Instant::now() + Duration::from_secs(50);
    while !obj.is_ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let borrower = borrow_when_told::options()
        .resource("reader", 1.0)
        .remote(vec![obj.clone()], dir.clone());
    wait_file(&format!("{dir}/borrowing"))?;
    std::fs::write(format!("{dir}/ready"), b"").map_err(|e| e.to_string())?;
    wait_file(&format!("{dir}/go"))?;
    // Sent with its argument's holder as this owner knows it: the dead one.
    let s = sum::options().resource("reader", 1.0).remote(&obj);
    let arg = s
        .get_timeout(Duration::from_secs(50))
        .map_err(|e| format!("the argument: {e}"))?;
    let borrowed = borrower
        .get_timeout(Duration::from_secs(50))
        .map_err(|e| e.to_string())?;
    Ok((arg, borrowed))
}

/// Two large outputs, each its own object.
#[manta::remote(num_returns = 2)]
fn two_large(seed: u64) -> (Vec<u8>, Vec<u8>) {
    (pattern(seed, BIG), pattern(seed + 1, BIG))
}

/// A large result computed from a large argument.
#[manta::remote]
fn grow(x: Vec<u8>) -> Vec<u8> {
    x.iter().map(|b| b.wrapping_add(1)).collect()
}

/// Returns its argument (Ray's `dependent_task`).
#[manta::remote]
fn dependent_task(x: Vec<u8>) -> Vec<u8> {
    x
}

/// A byte sum of a large argument.
#[manta::remote]
fn sum(x: Vec<u8>) -> u64 {
    x.iter().map(|b| u64::from(*b)).sum()
}

/// Reads a reference it holds (it borrows it) after `pause_ms`.
#[manta::remote]
fn borrow_and_sum(refs: Vec<ObjectRef<Vec<u8>>>, pause_ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(pause_ms));
    refs[0]
        .get_timeout(Duration::from_secs(50))
        .map(|v| v.iter().map(|b| u64::from(*b)).sum())
        .map_err(|e| e.to_string())
}

#[manta::actor]
struct Maker;

#[manta::actor]
impl Maker {
    fn new() -> Self {
        Maker
    }
    fn make(&self, seed: u64) -> Vec<u8> {
        pattern(seed, BIG)
    }
}

/// A head (`main`) and one node (`node1`) that the test kills.
fn two_nodes() -> LocalCluster {
    LocalCluster::start(
        NodeSpec::with_resources("main=2"),
        &[NodeSpec::with_resources("node1=2")],
    )
}

/// Waits until `r` is computed (its result is not read here: the only copy stays put).
fn computed<T>(r: &ObjectRef<T>) {
    eventually_that("the result computed", LONG, || r.is_ready(), |ready| *ready);
}

/// Kills the node with `node1` (node process `*victim`) and starts a replacement with the
/// same resources, as Ray's tests do; `*victim` becomes the replacement. Returns once the
/// GCS lists the old node dead and the new one alive.
fn replace_node1(cluster: &mut LocalCluster, victim: &mut usize) -> Instant {
    cluster.kill_node(*victim);
    let killed = Instant::now();
    *victim = cluster.add_node(&NodeSpec::with_resources("node1=2"));
    let dead_want = *victim - 1;
    eventually_that(
        "the killed node dead and its replacement alive",
        LONG,
        || {
            manta::cluster::query(&cluster.address, &cluster.token)
                .map(|s| {
                    let alive = s.nodes.iter().filter(|n| n.alive).count();
                    (alive, s.nodes.len() - alive)
                })
                .unwrap_or((0, 0))
        },
        |(alive, dead)| *alive == 2 && *dead == dead_want,
    );
    killed
}

#[test]
fn test_basic_reconstruction() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    let obj = large_object::options().resource("node1", 1.0).remote(7);
    computed(&obj);
    let killed = replace_node1(&mut cluster, &mut node1);
    let v = obj.get_timeout(LONG).expect("the lost result rebuilt");
    assert!(v == pattern(7, BIG), "the rebuilt value differs");
    eprintln!(
        "rebuilt a lost 1 MiB result {:?} after the kill",
        killed.elapsed()
    );
}

#[test]
fn a_lost_result_whose_argument_is_lost_too_is_rebuilt_recursively() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    let a = large_object::options().resource("node1", 1.0).remote(3);
    let b = grow::options().resource("node1", 1.0).remote(&a);
    computed(&b);
    // The owner's only hold on `a` is now `b`'s lineage.
    drop(a);
    replace_node1(&mut cluster, &mut node1);
    let v = b.get_timeout(LONG).expect("rebuilt with its argument");
    let want: Vec<u8> = pattern(3, BIG).iter().map(|x| x.wrapping_add(1)).collect();
    assert!(v == want, "the rebuilt value differs");
    // A chain once more, read by a task on the surviving node this time.
    let s = sum::options().resource("main", 1.0).remote(&b);
    assert_eq!(
        s.get_timeout(LONG).unwrap(),
        want.iter().map(|x| u64::from(*x)).sum::<u64>()
    );
}

#[test]
fn test_basic_reconstruction_put() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    // A put object lives in its owner (the driver): a result computed from it is rebuilt
    // from the put, which the result's lineage keeps though the driver dropped it.
    let x = manta::put(pattern(11, BIG)).unwrap();
    let result = dependent_task::options().resource("node1", 1.0).remote(&x);
    computed(&result);
    drop(x);
    replace_node1(&mut cluster, &mut node1);
    let v = result.get_timeout(LONG).expect("rebuilt from the put");
    assert!(v == pattern(11, BIG));
    // What is not a task output cannot be rebuilt: an actor call's result, lost with its
    // actor's node, is ObjectLost (as in Ray).
    let maker = Maker::options().resource("node1", 1.0).remote();
    let made = maker.make(5);
    computed(&made);
    replace_node1(&mut cluster, &mut node1);
    match made.get_timeout(LONG) {
        Err(Error::ObjectLost { .. }) => {}
        other => panic!("expected ObjectLost, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn a_lost_result_of_a_task_with_no_retries_fails_with_max_attempts() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    let obj = large_object::options()
        .resource("node1", 1.0)
        .max_retries(0)
        .remote(1);
    computed(&obj);
    replace_node1(&mut cluster, &mut node1);
    match obj.get_timeout(LONG) {
        Err(Error::ObjectReconstructionFailedMaxAttemptsExceeded { reason, .. }) => {
            assert!(reason.contains("max_retries"), "{reason}")
        }
        other => panic!(
            "expected ObjectReconstructionFailedMaxAttemptsExceeded, got {:?}",
            other.map(|v| v.len())
        ),
    }
    // With one retry the same loss is rebuilt, once.
    let once = large_object::options()
        .resource("node1", 1.0)
        .max_retries(1)
        .remote(2);
    computed(&once);
    replace_node1(&mut cluster, &mut node1);
    assert!(once.get_timeout(LONG).unwrap() == pattern(2, BIG));
}

#[test]
fn a_borrower_and_a_task_argument_read_a_rebuilt_result() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    let obj = large_object::options().resource("node1", 1.0).remote(9);
    computed(&obj);
    let want: u64 = pattern(9, BIG).iter().map(|b| u64::from(*b)).sum();
    // A task on the surviving node holds a reference (a borrow) and reads it after the kill.
    let borrower = borrow_and_sum::options()
        .resource("main", 1.0)
        .remote(vec![obj.clone()], 2_000);
    std::thread::sleep(Duration::from_millis(300));
    replace_node1(&mut cluster, &mut node1);
    assert_eq!(borrower.get_timeout(LONG).unwrap(), want);
    // Lost again: a task given it as an argument reads the rebuilt value.
    replace_node1(&mut cluster, &mut node1);
    let s = sum::options().resource("main", 1.0).remote(&obj);
    assert_eq!(s.get_timeout(LONG).unwrap(), want);
}

#[test]
fn a_lost_result_whose_lineage_was_evicted_fails_with_its_kind() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    // A budget no specification fits in: each is evicted as soon as it is recorded.
    let _rt = common::start(cluster.config().max_lineage_bytes(1));
    let obj = large_object::options().resource("node1", 1.0).remote(4);
    computed(&obj);
    replace_node1(&mut cluster, &mut node1);
    match obj.get_timeout(LONG) {
        Err(Error::ObjectReconstructionFailedLineageEvicted { reason, .. }) => {
            assert!(reason.contains("max_lineage_bytes"), "{reason}")
        }
        other => panic!(
            "expected ObjectReconstructionFailedLineageEvicted, got {:?}",
            other.map(|v| v.len())
        ),
    }
}

#[test]
fn a_results_lineage_and_the_arguments_it_keeps_go_with_the_result() {
    serve_if_worker();
    let cluster = two_nodes();
    let _rt = common::start(cluster.config());
    let on_node1 = || {
        common::cluster::worker_store_objects::options()
            .resource("node1", 1.0)
            .remote()
            .get_timeout(LONG)
            .unwrap()
    };
    let a = large_object::options().resource("node1", 1.0).remote(5);
    let b = grow::options().resource("node1", 1.0).remote(&a);
    computed(&b);
    // `a` is kept by `b`'s lineage, though the driver dropped it.
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    assert!(on_node1() >= 2, "the argument kept for a rebuild");
    // `b` freed: its lineage goes, and with it `a`.
    drop(b);
    common::cluster::eventually("objects left on node1", 0, LONG, on_node1);
}

#[test]
fn both_outputs_of_a_task_with_two_returns_are_rebuilt_by_one_run() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    // One retry: both outputs must come back from one run.
    let (a, b) = two_large::options()
        .resource("node1", 1.0)
        .max_retries(1)
        .remote(20);
    computed(&a);
    computed(&b);
    replace_node1(&mut cluster, &mut node1);
    // The second output's loss rebuilds the task; the first adopts the same run's copy.
    assert!(b.get_timeout(LONG).expect("output 1 rebuilt") == pattern(21, BIG));
    assert!(a.get_timeout(LONG).expect("output 0 rebuilt") == pattern(20, BIG));
    // A task on the surviving node reads both as arguments.
    let s = sum::options().resource("main", 1.0).remote(&a);
    assert_eq!(
        s.get_timeout(LONG).unwrap(),
        pattern(20, BIG).iter().map(|x| u64::from(*x)).sum::<u64>()
    );
}

#[test]
fn one_output_of_a_task_with_two_returns_is_rebuilt_and_the_other_dropped_again() {
    serve_if_worker();
    let mut cluster = two_nodes();
    let mut node1 = 1;
    let _rt = common::start(cluster.config());
    let on_node1 = || {
        common::cluster::worker_store_objects::options()
            .resource("node1", 1.0)
            .remote()
            .get_timeout(LONG)
            .unwrap()
    };
    let (a, b) = two_large::options().resource("node1", 1.0).remote(30);
    computed(&b);
    // Only output 1 is referenced: the task's lineage stays for it.
    drop(a);
    replace_node1(&mut cluster, &mut node1);
    assert!(b.get_timeout(LONG).expect("output 1 rebuilt") == pattern(31, BIG));
    // The run made output 0 again, which nobody holds: it is freed on the new node.
    common::cluster::eventually("objects left on the new node1", 1, LONG, on_node1);
    drop(b);
    common::cluster::eventually("objects left on the new node1", 0, LONG, on_node1);
    // Out of retries: its kind.
    let (c, d) = two_large::options()
        .resource("node1", 1.0)
        .max_retries(0)
        .remote(40);
    computed(&d);
    replace_node1(&mut cluster, &mut node1);
    for (i, r) in [c, d].into_iter().enumerate() {
        match r.get_timeout(LONG) {
            Err(Error::ObjectReconstructionFailedMaxAttemptsExceeded { reason, .. }) => {
                assert!(reason.contains("max_retries"), "{reason}")
            }
            other => panic!(
                "output {i}: expected ObjectReconstructionFailedMaxAttemptsExceeded, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }
}

/// A fresh path for a test hook's files, none of them there.
fn hook_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("manta-hook-{}-{name}", std::process::id()));
    for ext in ["paused", "go"] {
        let _ = std::fs::remove_file(p.with_extension(ext));
    }
    p
}

#[manta::remote]
fn node_of_task() -> u64 {
    std::env::var("MANTA_NODE_ID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The worker processes of the node that runs tasks needing `resource` (the only one).
fn workers_of(cluster: &LocalCluster, resource: &str) -> Vec<u32> {
    let node = node_of_task::options()
        .resource(resource, 1.0)
        .remote()
        .get_timeout(LONG)
        .unwrap();
    let raylet = manta::cluster::query(&cluster.address, &cluster.token)
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.node_id == node)
        .unwrap()
        .address;
    let pids: Vec<u32> = cluster
        .worker_pids()
        .into_iter()
        .filter(|(_, r)| *r == raylet)
        .map(|(p, _)| p)
        .collect();
    assert!(!pids.is_empty(), "no worker found on the {resource} node");
    pids
}

/// Kills node process `i` and `workers` (its worker processes) at once, as a machine's
/// crash would (a worker outlives its raylet by a moment otherwise).
fn crash_node(cluster: &mut LocalCluster, i: usize, workers: &[u32]) {
    for pid in workers {
        common::cluster::signal(*pid, libc::SIGKILL);
    }
    cluster.kill_node(i);
}

/// Waits until the GCS lists `alive` nodes alive.
fn nodes_alive(cluster: &LocalCluster, alive: usize) {
    eventually_that(
        "nodes alive",
        LONG,
        || {
            manta::cluster::query(&cluster.address, &cluster.token)
                .map(|s| s.nodes.iter().filter(|n| n.alive).count())
                .unwrap_or(0)
        },
        |n| *n == alive,
    );
}

#[test]
fn a_transfer_cut_off_by_the_holders_death_is_rebuilt() {
    serve_if_worker();
    // The reader's first large transfer stops unread until told to go on: its sender is
    // killed meanwhile, partway through (the object is larger than what the link buffers).
    let hook = hook_path("bulk");
    let mut reader = NodeSpec::with_resources("reader=2");
    reader.env.push((
        "MANTA_TESTING_BULK_PAUSE".into(),
        hook.display().to_string(),
    ));
    let mut cluster = LocalCluster::start(
        NodeSpec::with_resources("main=2"),
        &[NodeSpec::with_resources("holder=2"), reader],
    );
    // Copies, not reads in place: a transfer.
    let _rt = common::start(cluster.config().zero_copy_node(false));
    let obj = huge_object::options().resource("holder", 1.0).remote(5);
    computed(&obj);
    let holders = workers_of(&cluster, "holder");
    // Where the rebuild runs.
    cluster.add_node(&NodeSpec::with_resources("holder=2"));
    nodes_alive(&cluster, 4);
    let s = sum::options().resource("reader", 1.0).remote(&obj);
    let paused = hook.with_extension("paused");
    eventually_that("the transfer under way", LONG, || paused.exists(), |p| *p);
    crash_node(&mut cluster, 1, &holders);
    std::fs::write(hook.with_extension("go"), b"").unwrap();
    let want: u64 = pattern(5, HUGE).iter().map(|b| u64::from(*b)).sum();
    let got = s.get_timeout(LONG);
    let _ = std::fs::remove_file(&paused);
    let _ = std::fs::remove_file(hook.with_extension("go"));
    assert_eq!(got.expect("read from the rebuilt copy"), want);
}

#[test]
fn readers_that_reach_a_dead_holder_before_its_owner_knows_ask_again() {
    serve_if_worker();
    // The owner (a task on the head node) learns of a worker's death 0.6 s late; its
    // readers, on another node, at once.
    let mut head = NodeSpec::with_resources("main=2");
    head.env
        .push(("MANTA_TESTING_DEATH_NOTICE_DELAY_MS".into(), "600".into()));
    let mut cluster = LocalCluster::start(
        head,
        &[
            NodeSpec::with_resources("holder=2"),
            NodeSpec::with_resources("reader=2"),
        ],
    );
    let _rt = common::start(cluster.config());
    // The reader node's worker process, started for this driver: without the hook (a
    // process hands its MANTA_* variables to the workers started for it).
    sum::options()
        .resource("reader", 1.0)
        .remote(vec![1u8])
        .get_timeout(LONG)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("manta-late-owner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let owner = own_and_lend::options()
        .resource("main", 1.0)
        .remote(dir.display().to_string());
    eventually_that(
        "the object lent",
        LONG,
        || dir.join("ready").exists(),
        |r| *r,
    );
    let holders = workers_of(&cluster, "holder");
    // Where the rebuild runs.
    cluster.add_node(&NodeSpec::with_resources("holder=2"));
    nodes_alive(&cluster, 4);
    crash_node(&mut cluster, 1, &holders);
    std::fs::write(dir.join("go"), b"").unwrap();
    let got = owner.get_timeout(LONG);
    let _ = std::fs::remove_dir_all(&dir);
    let want: u64 = pattern(13, BIG).iter().map(|b| u64::from(*b)).sum();
    assert_eq!(got.expect("both reads rebuilt"), (want, want));
}

#[test]
fn a_return_sent_before_its_worker_died_is_taken_from_the_retry() {
    serve_if_worker();
    // The first worker to run a task of two returns sends the second and exits before the
    // first: the task runs again, and its second return comes twice.
    let hook = hook_path("returns");
    let _ = std::fs::remove_file(&hook);
    let mut node1 = NodeSpec::with_resources("node1=2");
    node1.env.push((
        "MANTA_TESTING_EXIT_BETWEEN_RETURNS".into(),
        hook.display().to_string(),
    ));
    let cluster = LocalCluster::start(NodeSpec::with_resources("main=2"), &[node1]);
    let _rt = common::start(cluster.config());
    // Its one retry goes to the worker's death: the second return must not need a rebuild.
    let (a, b) = two_large::options()
        .resource("node1", 1.0)
        .max_retries(1)
        .remote(60);
    // The first return, from the retry; then the second, whose first copy died.
    let got_a = a.get_timeout(LONG);
    let got_b = b.get_timeout(LONG);
    assert!(
        hook.exists(),
        "the first worker did not exit between the returns"
    );
    let _ = std::fs::remove_file(&hook);
    assert!(got_b.expect("the second return, from the retry") == pattern(61, BIG));
    assert!(got_a.expect("the first return") == pattern(60, BIG));
    // Both freed: nothing left on the node (the retry's copies were not leaked).
    drop((a, b));
    let on_node1 = || {
        common::cluster::worker_store_objects::options()
            .resource("node1", 1.0)
            .remote()
            .get_timeout(LONG)
            .unwrap()
    };
    common::cluster::eventually("objects left on node1", 0, LONG, on_node1);
}
