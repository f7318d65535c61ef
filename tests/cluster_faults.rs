//! Faults with real processes (Ray's fault-tolerance model): a worker process killed with
//! SIGKILL under retriable tasks, under an actor with `max_restarts`, and a node process
//! stalled (SIGSTOP) past its missed-heartbeat count (declared dead after about
//! `heartbeat_interval` × `health_check_failure_threshold`, both set by the test). Each
//! prints what it measured (detection and recovery times); only the stalled node's detection
//! is bounded, loosely (well below the default it must not fall back to), as the machine may
//! be loaded.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, eventually_that, serve_if_worker, signal};
use manta::{ActorHandle, Error};

const LONG: Duration = Duration::from_secs(60);

#[manta::remote]
fn slow_square(x: u64, pause_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(pause_ms));
    x * x
}

/// Live workers the GCS counts on the node whose raylet is at `raylet`.
fn live_workers(cluster: &LocalCluster, raylet: &str) -> u32 {
    manta::cluster::query(&cluster.address, &cluster.token)
        .ok()
        .and_then(|s| s.nodes.into_iter().find(|n| n.address == raylet))
        .map_or(u32::MAX, |n| n.workers)
}

#[test]
fn tasks_whose_worker_is_killed_run_again_on_a_live_worker() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec::with_resources(""),
        &[NodeSpec::with_resources("")],
    );
    let _rt = common::start(cluster.config());
    // No max_retries: worker deaths are retried 3 times by default, as in Ray.
    let refs: Vec<_> = (0..200u64).map(|i| slow_square::remote(i, 20)).collect();
    let workers = eventually_that(
        "a worker process on each node",
        LONG,
        || cluster.worker_pids(),
        |w| w.len() == 2,
    );
    assert_eq!(refs[0].get_timeout(LONG).unwrap(), 0);
    let (victim, raylet) = workers[0].clone();
    assert_eq!(cluster.kill_worker(Some(&raylet)), Some(victim));
    let killed = Instant::now();
    eventually_that(
        "the GCS counting the killed worker out",
        LONG,
        || live_workers(&cluster, &raylet),
        |n| *n == 0 || *n == 1 && !cluster.worker_pids().iter().any(|(p, _)| *p == victim),
    );
    let detected = killed.elapsed();
    for (i, r) in refs.iter().enumerate() {
        let i = i as u64;
        match r.get_timeout(LONG) {
            Ok(v) => assert_eq!(v, i * i, "task {i}"),
            Err(e) => panic!("task {i} was not recovered: {e}"),
        }
    }
    let recovered = killed.elapsed();
    // The node has a replacement worker, and new work runs on both nodes.
    let replacement = eventually_that(
        "a replacement worker on the killed worker's node",
        LONG,
        || cluster.worker_pids(),
        |w| w.iter().any(|(p, r)| *r == raylet && *p != victim),
    );
    let more: Vec<_> = (0..20u64).map(|i| slow_square::remote(i, 1)).collect();
    for (i, r) in more.iter().enumerate() {
        assert_eq!(r.get_timeout(LONG).unwrap(), (i * i) as u64);
    }
    eprintln!(
        "worker {victim} killed: GCS detection {detected:?}, all 200 results {recovered:?} \
         after the kill; workers now {replacement:?}"
    );
}

#[test]
fn a_task_that_kills_its_worker_is_retried_then_fails_clearly() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    let _rt = common::start(cluster.config());
    let started = Instant::now();
    let r = abort_worker::options().max_retries(2).remote(7);
    match r.get_timeout(LONG) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("died"), "{text}");
        }
        Ok(v) => panic!("a task that aborts its process returned {v}"),
    }
    // Three attempts, each on a fresh worker process.
    let took = started.elapsed();
    assert_eq!(slow_square::remote(3, 0).get_timeout(LONG).unwrap(), 9);
    eprintln!("3 attempts of an aborting task failed after {took:?}");
}

#[manta::remote]
fn abort_worker(x: u64) -> u64 {
    if x > 0 {
        std::process::abort();
    }
    x
}

#[manta::actor]
struct Keeper {
    n: u64,
}

#[manta::actor]
impl Keeper {
    fn new(start: u64) -> Self {
        Keeper { n: start }
    }
    fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// The GCS directory's row of actor `name`.
fn actor_row(cluster: &LocalCluster, name: &str) -> Option<manta::cluster::ActorRow> {
    manta::cluster::query(&cluster.address, &cluster.token)
        .ok()
        .and_then(|s| s.actors.into_iter().find(|a| a.name == name))
}

#[test]
fn an_actor_whose_worker_is_killed_restarts_up_to_max_restarts() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    let _rt = common::start(cluster.config());
    let a = Keeper::options().name("keeper").max_restarts(1).remote(10);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 11);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 12);
    let pid = a.pid().get_timeout(LONG).unwrap();
    signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    // Calls made while it restarts wait for it; the state is the constructor's again.
    let first = loop {
        match a.incr().get_timeout(LONG) {
            Ok(v) => break v,
            // A call that reached the dead worker before its death was known fails.
            Err(Error::ActorDied { .. }) if killed.elapsed() < LONG => continue,
            Err(e) => panic!("the actor did not come back: {e}"),
        }
    };
    let back = killed.elapsed();
    assert_eq!(first, 11, "a restarted actor runs its constructor again");
    let pid2 = a.pid().get_timeout(LONG).unwrap();
    assert_ne!(pid, pid2, "the actor runs in a replacement worker process");
    let row = eventually_that(
        "the directory showing the actor alive after a restart",
        LONG,
        || actor_row(&cluster, "keeper"),
        |r| r.as_ref().is_some_and(|r| r.alive && r.num_restarts == 1),
    );
    eprintln!("actor restarted after kill -9: serving again {back:?} after the kill; {row:?}");
    // Killed again with no restart left: every call fails with ActorDied, naming why.
    signal(pid2, libc::SIGKILL);
    // (A call in flight at the death fails with ActorDied too, saying so.)
    loop {
        match a.incr().get_timeout(LONG) {
            Err(Error::ActorDied { .. }) => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("expected ActorDied, got {e}"),
        }
    }
    match a.incr().get_timeout(LONG) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("max_restarts"), "{reason}")
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert_eq!(
        manta::restart(&a).ok(),
        Some(false),
        "nothing was restarted"
    );
    eventually_that(
        "the directory showing the actor dead",
        LONG,
        || actor_row(&cluster, "keeper"),
        |r| r.as_ref().is_some_and(|r| !r.alive),
    );
}

/// An actor whose constructor takes a while.
#[manta::actor]
struct SlowStart {
    calls: u64,
}

#[manta::actor]
impl SlowStart {
    fn new(pause_ms: u64) -> Self {
        std::thread::sleep(Duration::from_millis(pause_ms));
        SlowStart { calls: 0 }
    }
    fn pid(&mut self) -> u32 {
        self.calls += 1;
        std::process::id()
    }
}

/// In a worker process of the test below: exits at once, as a worker that failed to start
/// (status 3), when the test armed it (`<dir>/armed` exists, `<dir>` from
/// `TEST_FAIL_ONE_WORKER_START`) and it is the first to take `<dir>/fired`.
fn fail_one_start_if_armed() {
    if std::env::var_os("MANTA_WORKER_RAYLET").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("TEST_FAIL_ONE_WORKER_START").map(std::path::PathBuf::from)
    else {
        return;
    };
    if dir.join("armed").exists() && std::fs::File::create_new(dir.join("fired")).is_ok() {
        std::process::exit(3);
    }
}

/// A one-node cluster whose worker starts run `fail_one_start_if_armed` with the directory
/// returned (empty: not armed yet).
fn cluster_failing_one_start() -> (std::path::PathBuf, LocalCluster) {
    let dir = std::env::temp_dir().join(format!("manta-fail-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let head = NodeSpec {
        env: vec![(
            "TEST_FAIL_ONE_WORKER_START".into(),
            dir.display().to_string(),
        )],
        ..NodeSpec::with_resources("")
    };
    let cluster = LocalCluster::start(head, &[]);
    (dir, cluster)
}

#[test]
fn an_actor_restart_outlives_a_worker_that_fails_to_start() {
    fail_one_start_if_armed();
    serve_if_worker();
    let (dir, cluster) = cluster_failing_one_start();
    let _rt = common::start(cluster.config());
    let a = Keeper::options().max_restarts(1).remote(10);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 11);
    let pid = a.pid().get_timeout(LONG).unwrap();
    // The next worker process started (the restart's) exits before it is ready.
    std::fs::write(dir.join("armed"), b"").unwrap();
    signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let first = loop {
        match a.incr().get_timeout(LONG) {
            Ok(v) => break v,
            Err(Error::ActorDied { reason, .. }) if reason.contains("could not be placed") => {
                panic!("the restart gave up: {reason}")
            }
            // A call that reached the dead worker before its death was known fails.
            Err(Error::ActorDied { .. }) if killed.elapsed() < LONG => continue,
            Err(e) => panic!("the actor did not come back: {e}"),
        }
    };
    let fired = dir.join("fired").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(fired, "no worker start failed: nothing was tested");
    assert_eq!(first, 11, "restarted, its constructor run again");
}

#[test]
fn a_task_outlives_a_worker_that_fails_to_start() {
    fail_one_start_if_armed();
    serve_if_worker();
    let (dir, cluster) = cluster_failing_one_start();
    let _rt = common::start(cluster.config());
    // The job's first worker process exits before it is ready.
    std::fs::write(dir.join("armed"), b"").unwrap();
    let got = slow_square::remote(7, 0).get_timeout(LONG);
    let fired = dir.join("fired").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(fired, "no worker start failed: nothing was tested");
    assert_eq!(got.expect("placed on the next worker started"), 49);
}

#[test]
fn an_actor_killed_while_it_restarts_stays_dead() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    let _rt = common::start(cluster.config());
    let a = SlowStart::options()
        .name("slow")
        .max_restarts(1)
        .remote(500);
    let pid = a.pid().get_timeout(LONG).unwrap();
    signal(pid, libc::SIGKILL);
    eventually_that(
        "the directory showing the actor restarting",
        LONG,
        || actor_row(&cluster, "slow"),
        |r| r.as_ref().is_some_and(|r| r.restarting),
    );
    // Killed while its constructor runs again on a replacement worker.
    assert!(manta::kill(&a).unwrap());
    assert!(matches!(
        a.pid().get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
    // The new instance does not outlive the kill: the directory ends up listing it dead.
    let row = eventually_that(
        "the directory showing the actor dead",
        LONG,
        || actor_row(&cluster, "slow"),
        |r| r.as_ref().is_some_and(|r| !r.alive),
    );
    eprintln!("killed while restarting: {row:?}");
}

/// Calls a `Keeper` it was handed (a handle it does not own).
#[manta::actor]
struct Caller {
    keeper: ActorHandle<Keeper>,
}

#[manta::actor]
impl Caller {
    fn new(keeper: ActorHandle<Keeper>) -> Self {
        Caller { keeper }
    }
    fn poke(&self) -> Result<u64, String> {
        self.keeper
            .incr()
            .get_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())
    }
}

#[test]
fn a_handle_held_elsewhere_follows_the_restarted_actor() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec::with_resources("main=1"),
        &[NodeSpec::with_resources("side=1")],
    );
    let _rt = common::start(cluster.config());
    let keeper = Keeper::options()
        .resource("side", 1.0)
        .max_restarts(1)
        .remote(10);
    let pid = keeper.pid().get_timeout(LONG).unwrap();
    let caller = Caller::options()
        .resource("main", 1.0)
        .remote(keeper.clone());
    assert_eq!(caller.poke().get_timeout(LONG).unwrap(), Ok(11));
    signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let first = loop {
        match caller.poke().get_timeout(LONG).unwrap() {
            Ok(v) => break v,
            Err(e) if e.contains("ActorDied") || e.contains("died") => {
                assert!(killed.elapsed() < LONG, "{e}");
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(first, 11, "the restarted actor, from its constructor");
    assert_ne!(keeper.pid().get_timeout(LONG).unwrap(), pid);
    assert_eq!(caller.poke().get_timeout(LONG).unwrap(), Ok(12));
    eprintln!(
        "a handle held by another worker served again {:?} after the kill",
        killed.elapsed()
    );
}

#[manta::actor]
struct Sleeper {
    calls: u64,
}

#[manta::actor]
impl Sleeper {
    fn new() -> Self {
        Sleeper { calls: 0 }
    }
    fn nap(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.calls += 1;
        self.calls
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[test]
fn calls_in_flight_at_an_actor_death_are_retried_with_max_task_retries() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    let _rt = common::start(cluster.config());
    let plain = Sleeper::options().max_restarts(1).remote();
    let retried = Sleeper::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote();
    let pid = plain.pid().get_timeout(LONG).unwrap();
    assert_eq!(retried.pid().get_timeout(LONG).unwrap(), pid);
    let lost = plain.nap(2_000);
    let kept = retried.nap(2_000);
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGKILL);
    match lost.get_timeout(LONG) {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("a call in flight at the death, without retries: {other:?}"),
    }
    assert_eq!(
        kept.get_timeout(LONG).unwrap(),
        1,
        "retried on the restarted actor"
    );
    assert_eq!(plain.nap(0).get_timeout(LONG).unwrap(), 1);
}

#[manta::remote]
fn node_of_task() -> u64 {
    std::env::var("MANTA_NODE_ID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Heartbeats every 200 ms, dead after 3 missed (Ray's `health_check_failure_threshold`):
/// declared dead about 0.6 s after it stalls — not after 2 s (the default count of 10), 3 s
/// (the default interval of 1 s) or the default 10 s.
const HEARTBEAT_US: u64 = 200_000;
const MISSED: u64 = 3;

#[test]
fn a_node_stalled_past_the_heartbeat_timeout_leaves_the_cluster() {
    serve_if_worker();
    let health = vec![
        (
            "MANTA_HEARTBEAT_INTERVAL_US".into(),
            HEARTBEAT_US.to_string(),
        ),
        (
            "MANTA_HEALTH_CHECK_FAILURE_THRESHOLD".into(),
            MISSED.to_string(),
        ),
    ];
    let head = NodeSpec {
        env: health.clone(),
        ..NodeSpec::with_resources("")
    };
    let side = NodeSpec {
        env: health,
        ..NodeSpec::with_resources("side=1")
    };
    let mut cluster = LocalCluster::start(head, &[side]);
    let _rt = common::start(cluster.config());
    let side = node_of_task::options()
        .resource("side", 1.0)
        .remote()
        .get_timeout(LONG)
        .unwrap();
    let side_raylet = manta::cluster::query(&cluster.address, &cluster.token)
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.node_id == side)
        .unwrap()
        .address;
    assert!(cluster.worker_pids().iter().any(|(_, r)| *r == side_raylet));
    // Tasks longer than the timeout, some of them on the node about to stall: those run again
    // on the head once the node is declared dead.
    let long: Vec<_> = (0..8u64).map(|i| slow_square::remote(i, 3_000)).collect();
    let on_side = eventually_that(
        "some of the long tasks placed on the side node",
        LONG,
        || {
            manta::cluster::list_work(&cluster.address, &cluster.token)
                .map(|w| {
                    w.tasks
                        .iter()
                        .filter(|t| t.node_id == side && t.state == "SUBMITTED")
                        .count()
                })
                .unwrap_or(0)
        },
        |n| *n > 0,
    );
    let pid = cluster.node_pid(1);
    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    let dead = |c: &LocalCluster| {
        manta::cluster::query(&c.address, &c.token)
            .ok()
            .and_then(|s| s.nodes.into_iter().find(|n| n.node_id == side))
            .is_some_and(|n| !n.alive)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dead(&cluster) {
        if Instant::now() > deadline {
            signal(pid, libc::SIGCONT);
            panic!("the stalled node was not declared dead within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let declared = stopped.elapsed();
    // Interval × count of silence, checked once an interval: not before about the count of
    // heartbeats was missed, and before either default would have declared it (a margin of
    // 1.2 s for a loaded machine).
    let expected = Duration::from_micros(HEARTBEAT_US * MISSED);
    assert!(
        declared >= expected / 2 && declared < expected + Duration::from_millis(1_200),
        "declared dead {declared:?} after SIGSTOP; expected about {expected:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, libc::SIGCONT);
    let resumed = Instant::now();
    // It learns it was declared dead and leaves, with its workers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.node_exited(1) {
        assert!(
            Instant::now() < deadline,
            "the stalled node process did not exit within 30 s of SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = resumed.elapsed();
    eventually_that(
        "the stalled node's workers exiting",
        Duration::from_secs(30),
        || cluster.worker_pids(),
        |w| !w.iter().any(|(_, r)| *r == side_raylet),
    );
    assert!(
        dead(&cluster),
        "a node declared dead stays dead in the table"
    );
    for (i, r) in long.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.get_timeout(LONG).unwrap(), i * i, "long task {i}");
    }
    assert_eq!(slow_square::remote(5, 0).get_timeout(LONG).unwrap(), 25);
    eprintln!(
        "node stalled: declared dead {declared:?} after SIGSTOP, exited {left:?} after SIGCONT; \
         {on_side} of 8 tasks in flight there ran again on the head"
    );
}

/// Creates a `Keeper` on the node with the `far` resource and hands back its handle: the
/// task's worker process owns it.
#[manta::remote]
fn make_far_keeper() -> (ActorHandle<Keeper>, u32) {
    let k = Keeper::options().resource("far", 0.5).remote(100);
    k.ready().get_timeout(LONG).expect("the far actor starts");
    let d = Keeper::options()
        .resource("far", 0.5)
        .name("far-detached")
        .lifetime_detached()
        .remote(200);
    d.ready()
        .get_timeout(LONG)
        .expect("the detached actor starts");
    (k, std::process::id())
}

/// As in Ray, an actor that is not detached dies with its owner: a task on one node creates
/// an actor on another and returns its handle; when the task's worker process is killed, the
/// actor dies, and calls from the driver (a borrower) fail with `ActorDied` naming the owner.
#[test]
fn an_actor_dies_with_its_owner_unless_detached() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec::with_resources("near=1"),
        &[NodeSpec::with_resources("far=1")],
    );
    let _rt = common::start(cluster.config());
    let (keeper, owner_pid) = make_far_keeper::options()
        .resource("near", 1.0)
        .remote()
        .get_timeout(LONG)
        .expect("the owner task");
    assert_eq!(keeper.incr().get_timeout(LONG).unwrap(), 101);
    let host_pid = keeper.pid().get_timeout(LONG).unwrap();
    assert_ne!(host_pid, owner_pid, "the actor lives in another process");
    signal(owner_pid, libc::SIGKILL);
    let reason = eventually_that(
        "calls to the actor failing after its owner died",
        LONG,
        || match keeper.incr().get_timeout(LONG) {
            Err(Error::ActorDied { reason, .. }) => Some(reason),
            _ => None,
        },
        Option::is_some,
    )
    .unwrap();
    assert!(reason.contains("owner"), "{reason}");
    // The detached one lives on.
    let detached = manta::get_actor::<Keeper>("far-detached").expect("the detached actor");
    assert_eq!(detached.incr().get_timeout(LONG).unwrap(), 201);
    manta::kill(&detached).expect("kill the detached actor");
}
