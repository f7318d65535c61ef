//! The head restarts without losing the cluster: its GCS saves its tables in the session
//! directory, and `manta start --head` on that session restores them; raylets, workers and
//! the driver rejoin, and the running job finishes with every result right.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, eventually_that, serve_if_worker};

const LONG: Duration = Duration::from_secs(60);

#[manta::remote]
fn slow_square(x: u64, pause_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(pause_ms));
    x * x
}

#[manta::actor]
struct Counter {
    n: u64,
}

#[manta::actor]
impl Counter {
    fn new(start: u64) -> Self {
        Counter { n: start }
    }
    fn add(&mut self, x: u64) -> u64 {
        self.n += x;
        self.n
    }
}

/// The GCS's view of node `id`: `Some(alive)`, `None` if it does not answer or list it.
fn node_alive(cluster: &LocalCluster, id: u64) -> Option<bool> {
    manta::cluster::query(&cluster.address, &cluster.token)
        .ok()?
        .nodes
        .into_iter()
        .find(|n| n.node_id == id)
        .map(|n| n.alive)
}

#[test]
fn a_job_survives_a_head_killed_and_restarted_on_its_session() {
    serve_if_worker();
    // A short node timeout: a node that does not come back is noticed soon after the restart.
    let head = NodeSpec {
        env: vec![("MANTA_NODE_TIMEOUT_US".into(), "3000000".into())],
        ..NodeSpec::with_resources("")
    };
    let mut cluster = LocalCluster::start(
        head,
        &[
            NodeSpec::with_resources("side=1"),
            NodeSpec::with_resources("doomed=1"),
        ],
    );
    let _rt = common::start(cluster.config());
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    let id_of = |res: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.resources.iter().any(|r| r.0 == res))
            .map(|n| n.node_id)
            .unwrap()
    };
    let (side, doomed) = (id_of("side"), id_of("doomed"));
    let old_head = state.nodes.iter().map(|n| n.node_id).min().unwrap();

    // A placement group reserved on the side node (committed there before the crash).
    let pg = manta::placement_group(
        vec![manta::Bundle::cpus(1.0).resource("side", 0.25)],
        manta::PlacementStrategy::Pack,
    )
    .unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    // A named actor on the side node, and a job of tasks and actor calls under way.
    let counter = Counter::options()
        .resource("side", 0.5)
        .name("survivor")
        .remote(0);
    assert_eq!(counter.add(1).get_timeout(LONG).unwrap(), 1);
    let tasks: Vec<_> = (0..120u64).map(|i| slow_square::remote(i, 25)).collect();
    let calls: Vec<_> = (0..40u64).map(|_| counter.add(1)).collect();
    assert_eq!(tasks[0].get_timeout(LONG).unwrap(), 0);

    // The head dies mid-job; while it is down, a node dies too.
    cluster.kill_head();
    let killed = Instant::now();
    cluster.kill_node(2);
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart_head();

    // Every result is right.
    for (i, r) in tasks.iter().enumerate() {
        let i = i as u64;
        match r.get_timeout(LONG) {
            Ok(v) => assert_eq!(v, i * i, "task {i}"),
            Err(e) => panic!("task {i} failed across the head's restart: {e}"),
        }
    }
    for (k, r) in calls.iter().enumerate() {
        assert_eq!(r.get_timeout(LONG).unwrap(), 2 + k as u64, "call {k}");
    }
    let finished = killed.elapsed();

    // The named actor registered before the crash is found after it, and serves.
    let found = manta::get_actor::<Counter>("survivor").expect("the named actor after the restart");
    assert_eq!(found.add(1).get_timeout(LONG).unwrap(), 42);

    // The side node rejoined under its id; the node that died while the head was down, and the
    // old head's raylet, are noticed dead.
    eventually_that(
        "the side node alive and the dead nodes noticed",
        LONG,
        || {
            (
                node_alive(&cluster, side),
                node_alive(&cluster, doomed),
                node_alive(&cluster, old_head),
            )
        },
        |v| *v == (Some(true), Some(false), Some(false)),
    );
    // The group is still created, on the side node, and work in its bundle runs.
    let groups = manta::list_placement_groups().unwrap();
    let row = groups
        .iter()
        .find(|g| g.id == pg.id())
        .expect("the group after the restart");
    assert_eq!(row.state, manta::PlacementGroupState::Created);
    assert_eq!(row.bundle_nodes, vec![side]);
    let in_bundle = slow_square::options()
        .placement_group(&pg, Some(0))
        .remote(9, 0);
    assert_eq!(in_bundle.get_timeout(LONG).unwrap(), 81);
    // New work runs (on the side node and the restarted head's node).
    let more: Vec<_> = (0..20u64).map(|i| slow_square::remote(i, 1)).collect();
    for (i, r) in more.iter().enumerate() {
        assert_eq!(r.get_timeout(LONG).unwrap(), (i * i) as u64);
    }
    eprintln!(
        "head killed and restarted: the job's 120 tasks and 40 calls done {finished:?} after the kill"
    );
}
