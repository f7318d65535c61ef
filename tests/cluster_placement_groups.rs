//! Placement groups on real multi-process clusters (Ray's placement-group tests): STRICT_SPREAD
//! over three nodes and pending with more bundles than nodes, placed when a node joins
//! (`manta start --address`); a bundle larger than any node is infeasible at once; the
//! two-phase reservation leaves nothing behind when a raylet dies between prepare and
//! commit; a group's lifetime follows its creator unless detached (and `manta list
//! placement-groups` shows it); an actor group's member whose worker is killed restarts in its
//! bundle, with its rank; bundles of GPUs hold devices of their own (embedded and cluster).
//!
//! The test binary re-executes itself as a first driver for the lifetime test ([`ROLE`]).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};
use manta::{Bundle, Error, PlacementGroupState, PlacementStrategy as S};

const ROLE: &str = "PG_TEST_FIRST_DRIVER";
const LONG: Duration = Duration::from_secs(30);

fn node(cpus: f64) -> NodeSpec {
    NodeSpec {
        num_cpus: cpus,
        ..NodeSpec::default()
    }
}

fn cpus(n: usize, each: f64) -> Vec<Bundle> {
    (0..n).map(|_| Bundle::cpus(each)).collect()
}

#[manta::remote]
fn where_am_i() -> u64 {
    manta::status().ok().and_then(|s| s.node_id).unwrap_or(0)
}

/// Waits until `f` holds, at most `within`.
fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn strict_spread_over_three_nodes_then_a_fourth_joins() {
    serve_if_worker();
    let mut cluster = LocalCluster::start(node(1.0), &[node(1.0), node(1.0)]);
    let _rt = common::start(cluster.config());

    let pg = manta::placement_group(cpus(3, 1.0), S::StrictSpread).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let mut nodes = pg.bundle_nodes();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(
        nodes.len(),
        3,
        "one node per bundle: {:?}",
        pg.bundle_nodes()
    );
    // Work in bundle i runs on bundle i's node.
    for (i, want) in pg.bundle_nodes().iter().enumerate() {
        let at = where_am_i::options()
            .placement_group(&pg, Some(i))
            .remote()
            .get_timeout(LONG)
            .unwrap();
        assert_eq!(at, *want, "bundle {i}'s task ran on its node");
    }
    let listed = manta::cluster::list_placement_groups(&cluster.address, &cluster.token).unwrap();
    let row = listed.iter().find(|g| g.id == pg.id()).unwrap();
    assert_eq!(row.state, PlacementGroupState::Created);
    assert_eq!(row.bundle_nodes, pg.bundle_nodes());

    // A bundle larger than any node: infeasible at once.
    match manta::placement_group(vec![Bundle::cpus(4.0)], S::Pack) {
        Err(Error::Infeasible { .. }) => {}
        other => panic!("a bundle larger than any node: {other:?}"),
    }
    // One bundle more than nodes: pending, then placed when a fourth node joins.
    manta::remove_placement_group(&pg).unwrap();
    let four = manta::placement_group(cpus(4, 1.0), S::StrictSpread).unwrap();
    match four.ready().get_timeout(Duration::from_secs(1)) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("4 bundles on 3 nodes: {other:?}"),
    }
    assert_eq!(four.state(), PlacementGroupState::Pending);
    cluster.add_node(&node(1.0));
    four.ready()
        .get_timeout(LONG)
        .expect("placed once a fourth node joined");
    let mut nodes = four.bundle_nodes();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), 4);
    manta::remove_placement_group(&four).unwrap();
    let listed = manta::cluster::list_placement_groups(&cluster.address, &cluster.token).unwrap();
    assert!(
        listed
            .iter()
            .any(|g| g.id == four.id() && g.state == PlacementGroupState::Removed),
        "removed groups are listed as REMOVED: {listed:?}"
    );
}

#[test]
fn a_raylet_dying_mid_reservation_leaks_nothing() {
    serve_if_worker();
    // Node 1's raylet answers a prepare 3 s late: the window in which it is killed.
    let slow = NodeSpec {
        num_cpus: 2.0,
        env: vec![("MANTA_TESTING_PG_PREPARE_DELAY_MS".into(), "3000".into())],
        ..NodeSpec::default()
    };
    let mut cluster = LocalCluster::start(node(2.0), &[slow]);
    let _rt = common::start(cluster.config());
    let pg = manta::placement_group(cpus(2, 2.0), S::StrictSpread).unwrap();
    // The head prepared at once; the slow node has not answered yet.
    std::thread::sleep(Duration::from_millis(1000));
    cluster.kill_node(1);
    match pg.ready().get_timeout(Duration::from_secs(8)) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("a group half of whose nodes died: {other:?}"),
    }
    assert_eq!(pg.state(), PlacementGroupState::Pending);
    // Everything the head prepared was rolled back: a group needing all of it fits.
    let whole = manta::placement_group(vec![Bundle::cpus(2.0)], S::StrictPack).unwrap();
    whole
        .ready()
        .get_timeout(LONG)
        .expect("the head's reservation was rolled back");
    manta::remove_placement_group(&whole).unwrap();
    manta::remove_placement_group(&pg).unwrap();
}

/// The first job: a plain and a detached group, both created, then exit.
fn first_driver() -> ! {
    manta::init().expect("the first driver joins");
    let plain = manta::placement_group_builder(cpus(1, 0.5), S::Pack)
        .name("plain")
        .create()
        .unwrap();
    let kept = manta::placement_group_builder(cpus(1, 0.5), S::Pack)
        .name("kept")
        .lifetime_detached()
        .create()
        .unwrap();
    plain.ready().get_timeout(LONG).unwrap();
    kept.ready().get_timeout(LONG).unwrap();
    manta::shutdown();
    std::process::exit(0);
}

#[test]
fn a_groups_lifetime_follows_its_creator_unless_detached() {
    serve_if_worker();
    if std::env::var_os(ROLE).is_some() {
        first_driver();
    }
    let cluster = LocalCluster::start(node(2.0), &[]);
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(exe)
        .args(std::env::args().skip(1))
        .env(ROLE, "1")
        .env("MANTA_ADDRESS", &cluster.address)
        .env("MANTA_TOKEN", &cluster.token)
        .stdin(Stdio::null())
        .status()
        .expect("starting the first driver");
    assert!(status.success(), "the first driver failed: {status}");
    let state_of = |name: &str| {
        manta::cluster::list_placement_groups(&cluster.address, &cluster.token)
            .unwrap()
            .into_iter()
            .find(|g| g.name.as_deref() == Some(name))
            .map(|g| g.state)
    };
    eventually("the plain group removed with its driver", LONG, || {
        state_of("plain") == Some(PlacementGroupState::Removed)
    });
    assert_eq!(state_of("kept"), Some(PlacementGroupState::Created));
    // The CLI shows them.
    let out = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["list", "placement-groups", "--address", &cluster.address])
        .env("MANTA_TOKEN", &cluster.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("kept") && text.contains("CREATED"), "{text}");
    assert!(text.contains("plain") && text.contains("REMOVED"), "{text}");
    assert!(text.contains("PACK"), "{text}");
    // `manta status` shows what the kept group reserves (from the node's heartbeats).
    let kept = manta::cluster::list_placement_groups(&cluster.address, &cluster.token)
        .unwrap()
        .into_iter()
        .find(|g| g.name.as_deref() == Some("kept"))
        .unwrap();
    let wanted = format!("CPU_group_{}: 0 used of 0.5", kept.id);
    let status_text = || {
        let out = Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(["status", "--address", &cluster.address])
            .env("MANTA_TOKEN", &cluster.token)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("manta status showing the reservation", LONG, || {
        status_text().contains(&wanted)
    });
    assert!(status_text().contains("reserved by placement groups"));
}

#[manta::actor]
pub(crate) struct Member {
    calls: u64,
}

#[manta::actor]
impl Member {
    pub(crate) fn new() -> Self {
        Member { calls: 0 }
    }
    /// Its pid, rank and world size, and how many calls it took since it was constructed.
    pub(crate) fn probe(&mut self) -> (u32, Option<usize>, Option<usize>, u64) {
        self.calls += 1;
        (
            std::process::id(),
            manta::group_rank(),
            manta::group_world_size(),
            self.calls,
        )
    }
}

#[test]
fn a_member_whose_worker_dies_restarts_in_its_bundle() {
    serve_if_worker();
    let cluster = LocalCluster::start(node(2.0), &[]);
    let _rt = common::start(cluster.config());
    let pg = manta::placement_group(cpus(2, 0.5), S::Pack).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let group = manta::ActorGroup::spawn(&pg, |m| {
        Member::options()
            .group_member(&m)
            .num_cpus(0.5)
            .max_restarts(1)
            .remote()
    })
    .unwrap();
    let before = manta::get_all(&group.call(|m| m.probe())).unwrap();
    assert_eq!((before[1].1, before[1].2), (Some(1), Some(2)));
    common::cluster::signal(before[1].0, libc::SIGKILL);
    let killed = Instant::now();
    let after = loop {
        match group.member(1).unwrap().probe().get_timeout(LONG) {
            Ok(v) => break v,
            // A call that reached the dead worker names the member's rank.
            Err(Error::ActorDied { reason, .. }) if killed.elapsed() < LONG => {
                assert!(reason.contains("rank 1 of 2"), "{reason}");
            }
            Err(e) => panic!("the member did not come back: {e}"),
        }
    };
    assert_ne!(after.0, before[1].0, "a replacement worker process");
    assert_eq!(
        (after.1, after.2, after.3),
        (Some(1), Some(2), 1),
        "same rank, new state"
    );
    manta::remove_placement_group(&pg).unwrap();
}

#[manta::actor]
pub(crate) struct Placed {
    calls: u64,
}

#[manta::actor]
impl Placed {
    pub(crate) fn new() -> Self {
        Placed { calls: 0 }
    }
    /// Its worker's pid and node, and how many calls it took since it was constructed.
    pub(crate) fn probe(&mut self) -> (u32, u64, u64) {
        self.calls += 1;
        (std::process::id(), where_am_i(), self.calls)
    }
}

/// An actor keeping a group's handle in a worker process (not the group's owner).
#[manta::actor]
pub(crate) struct Keeper {
    pg: manta::PlacementGroup,
}

#[manta::actor]
impl Keeper {
    pub(crate) fn new(pg: manta::PlacementGroup) -> Self {
        Keeper { pg }
    }
    /// The group's state and bundles' nodes as this handle sees them.
    pub(crate) fn seen(&self) -> (String, Vec<u64>) {
        (self.pg.state().to_string(), self.pg.bundle_nodes())
    }
    /// Runs a task in bundle `i`: the node it ran on.
    pub(crate) fn run_in(&self, i: usize) -> u64 {
        where_am_i::options()
            .num_cpus(0.0)
            .placement_group(&self.pg, Some(i))
            .remote()
            .get_timeout(LONG)
            .unwrap()
    }
}

/// Ray's RESCHEDULING: a node holding a bundle of a created group dies (its raylet and
/// worker killed); the group shows it, work for that bundle waits, and once a fresh node
/// joins the bundle is reserved there (two-phase, as at creation), the member restarts in it
/// and the waiting task runs there. A handle kept in another process (an actor on the head)
/// follows: it sees RESCHEDULING, then the bundle's new node, and its work lands there.
#[test]
fn a_bundle_whose_node_died_is_placed_again_on_a_fresh_node() {
    serve_if_worker();
    let head = NodeSpec {
        resources: "head=1".into(),
        ..node(1.0)
    };
    let mut cluster = LocalCluster::start(head, &[node(1.0)]);
    let _rt = common::start(cluster.config());
    let pg = manta::placement_group(cpus(2, 1.0), S::StrictSpread).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let group = manta::ActorGroup::spawn(&pg, |m| {
        Placed::options()
            .group_member(&m)
            .num_cpus(1.0)
            .max_restarts(1)
            .remote()
    })
    .unwrap();
    let before = manta::get_all(&group.call(|m| m.probe())).unwrap();
    let nodes = pg.bundle_nodes();
    assert_eq!((before[0].1, before[1].1), (nodes[0], nodes[1]));
    let head_node = where_am_i::options()
        .num_cpus(0.0)
        .remote()
        .get_timeout(LONG);
    // The rank whose bundle is on node 1 (the second node process).
    let dying = (0..2)
        .find(|&r| Some(nodes[r]) != head_node.as_ref().ok().copied())
        .unwrap_or(1);
    let keeper = Keeper::options()
        .num_cpus(0.0)
        .resource("head", 0.5)
        .remote(pg.clone());
    assert_eq!(
        keeper.seen().get_timeout(LONG).unwrap(),
        ("CREATED".to_string(), nodes.clone())
    );
    cluster.kill_node(1);
    common::cluster::signal(before[dying].0, libc::SIGKILL);
    eventually("the group rescheduling", LONG, || {
        pg.state() == PlacementGroupState::Rescheduling
    });
    eventually("the kept handle seeing it rescheduling", LONG, || {
        keeper.seen().get_timeout(LONG).unwrap().0 == "RESCHEDULING"
    });
    // STRICT_SPREAD: the head holds the other bundle, so the lost one waits for a new node.
    let waiting = where_am_i::options()
        .num_cpus(0.0)
        .placement_group(&pg, Some(dying))
        .remote();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.get_timeout(Duration::ZERO).is_err(),
        "work for a lost bundle waits"
    );
    assert_eq!(pg.state(), PlacementGroupState::Rescheduling);
    cluster.add_node(&node(1.0));
    eventually("the group created again", LONG, || {
        pg.state() == PlacementGroupState::Created
    });
    let moved = pg.bundle_nodes();
    assert_eq!(moved[1 - dying], nodes[1 - dying], "the other bundle stays");
    assert!(
        moved[dying] != nodes[dying] && moved[dying] != moved[1 - dying],
        "placed on the fresh node: {nodes:?} -> {moved:?}"
    );
    assert_eq!(waiting.get_timeout(LONG).unwrap(), moved[dying]);
    eventually("the kept handle seeing the new node", LONG, || {
        keeper.seen().get_timeout(LONG).unwrap() == ("CREATED".to_string(), moved.clone())
    });
    assert_eq!(
        keeper.run_in(dying).get_timeout(LONG).unwrap(),
        moved[dying]
    );
    let after = group
        .member(dying)
        .unwrap()
        .probe()
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(after.1, moved[dying], "the member serves in its new bundle");
    assert_eq!(after.2, 1, "restarted: new state");
    let other = group
        .member(1 - dying)
        .unwrap()
        .probe()
        .get_timeout(LONG)
        .unwrap();
    assert_eq!((other.0, other.2), (before[1 - dying].0, 2), "untouched");
    manta::remove_placement_group(&pg).unwrap();
}

#[manta::remote]
fn gpus_here() -> Vec<usize> {
    manta::gpu_ids()
}

/// On a node of three GPUs, two bundles of one GPU each get a device each: their work's
/// `gpu_ids()` names the bundle's device (the topology's choice: on a node without a reported
/// topology, in order), a task in any bundle sees both, and work outside the group gets the
/// third. The devices come back on removal.
fn gpu_bundles_hold_their_devices() {
    let bundle = || Bundle::cpus(1.0).num_gpus(1.0);
    let pg = manta::placement_group(vec![bundle(), bundle()], S::StrictPack).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let gpus = pg.bundle_gpus();
    let mut all: Vec<usize> = gpus.concat();
    all.sort_unstable();
    assert_eq!(all, [0, 1], "a device each: {gpus:?}");
    for (i, want) in gpus.iter().enumerate() {
        let got = gpus_here::options()
            .num_gpus(1.0)
            .placement_group(&pg, Some(i))
            .remote()
            .get_timeout(LONG)
            .unwrap();
        assert_eq!(&got, want, "bundle {i}");
    }
    let any = gpus_here::options()
        .num_gpus(1.0)
        .placement_group(&pg, None)
        .remote()
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(any, [0, 1]);
    // Work outside the group gets the node's third device, not a bundle's.
    let outside = gpus_here::options()
        .num_gpus(1.0)
        .remote()
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(outside, [2], "a bundle's device given to other work");
    manta::remove_placement_group(&pg).unwrap();
    let again = manta::placement_group(vec![bundle(), bundle()], S::StrictPack).unwrap();
    again.ready().get_timeout(LONG).unwrap();
    assert_eq!(again.bundle_gpus().concat().len(), 2, "given back");
    manta::remove_placement_group(&again).unwrap();
}

#[test]
fn gpu_bundles_hold_their_devices_embedded() {
    let _rt = common::start(manta::Config::default().num_cpus(3.0).num_gpus(3.0));
    gpu_bundles_hold_their_devices();
}

#[test]
fn gpu_bundles_hold_their_devices_in_a_cluster() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 3.0,
            num_gpus: Some(3.0),
            env: vec![("CUDA_VISIBLE_DEVICES".into(), "0,1,2".into())],
            ..NodeSpec::default()
        },
        &[],
    );
    let _rt = common::start(cluster.config());
    gpu_bundles_hold_their_devices();
    // The CLI lists a group's CPU sets and GPUs.
    let bundle = || Bundle::cpus(1.0).num_gpus(1.0);
    let pg = manta::placement_group(vec![bundle(), bundle()], S::StrictPack).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["list", "placement-groups", "--address", &cluster.address])
        .env("MANTA_TOKEN", &cluster.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&pg.id().to_string()))
        .unwrap_or_else(|| panic!("the group is listed: {text}"));
    for (cpus, gpus) in pg.bundle_cpus().iter().zip(pg.bundle_gpus()) {
        let want = format!("cpus [{cpus}] gpus [{}]", manta::CpuList(gpus));
        assert!(line.contains(&want), "{want} in {line}");
    }
    manta::remove_placement_group(&pg).unwrap();
}

/// An actor holding one GPU for its life.
#[manta::actor]
pub(crate) struct GpuHolder;

#[manta::actor]
impl GpuHolder {
    pub(crate) fn new() -> Self {
        GpuHolder
    }
    pub(crate) fn gpus(&self) -> Vec<usize> {
        manta::gpu_ids()
    }
}

/// On a machine of 2 NUMA nodes × 2 PCIe switches × 2 GPUs (the test hook
/// `MANTA_TESTING_GPU_TOPOLOGY` stands in for it), with device 0 held, a bundle of two GPUs
/// gets both of one switch (2, 3), not the two lowest free (1, 2) across switches; a bundle of
/// four then gets NUMA node 1's.
#[test]
fn gpu_bundles_follow_the_topology_embedded() {
    // SAFETY: this test's own process (nextest runs each test in one), before the runtime
    // starts any thread that could read the environment.
    unsafe {
        std::env::set_var(
            "MANTA_TESTING_GPU_TOPOLOGY",
            "0:a,0:a,0:b,0:b,1:c,1:c,1:d,1:d",
        )
    };
    let _rt = common::start(manta::Config::default().num_cpus(2.0).num_gpus(8.0));
    let holder = GpuHolder::options().num_gpus(1.0).remote();
    assert_eq!(holder.gpus().get_timeout(LONG).unwrap(), [0]);
    let two = manta::placement_group(vec![Bundle::new().num_gpus(2.0)], S::Pack).unwrap();
    two.ready().get_timeout(LONG).unwrap();
    assert_eq!(two.bundle_gpus(), [vec![2, 3]], "one switch");
    let four = manta::placement_group(vec![Bundle::new().num_gpus(4.0)], S::Pack).unwrap();
    four.ready().get_timeout(LONG).unwrap();
    assert_eq!(four.bundle_gpus(), [vec![4, 5, 6, 7]], "one NUMA node");
    manta::remove_placement_group(&two).unwrap();
    manta::remove_placement_group(&four).unwrap();
}

/// The same choice by a node's raylet: its launcher's machine has 2 NUMA nodes × 2 switches ×
/// 2 GPUs (the test hook in the node's environment); a bundle of one GPU takes device 0, then
/// a bundle of two takes switch b's (2, 3), not 1 and 2 across switches.
#[test]
fn gpu_bundles_follow_the_topology_in_a_cluster() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            num_gpus: Some(8.0),
            env: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3,4,5,6,7".into()),
                (
                    "MANTA_TESTING_GPU_TOPOLOGY".into(),
                    "0:a,0:a,0:b,0:b,1:c,1:c,1:d,1:d".into(),
                ),
            ],
            ..NodeSpec::default()
        },
        &[],
    );
    let _rt = common::start(cluster.config());
    let one = manta::placement_group(vec![Bundle::new().num_gpus(1.0)], S::Pack).unwrap();
    one.ready().get_timeout(LONG).unwrap();
    assert_eq!(one.bundle_gpus(), [vec![0]]);
    let two = manta::placement_group(vec![Bundle::new().num_gpus(2.0)], S::Pack).unwrap();
    two.ready().get_timeout(LONG).unwrap();
    assert_eq!(two.bundle_gpus(), [vec![2, 3]], "one switch");
    let got = gpus_here::options()
        .num_cpus(0.0)
        .num_gpus(2.0)
        .placement_group(&two, Some(0))
        .remote()
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(got, [2, 3], "its work holds them");
    manta::remove_placement_group(&one).unwrap();
    manta::remove_placement_group(&two).unwrap();
}

/// A handle kept in another process follows its group across a restart of the head: the
/// restarted GCS does not keep its watchers, so the process watches again when it rejoins, and
/// sees the group removed afterwards.
#[test]
fn a_kept_handle_follows_removal_across_a_head_restart() {
    serve_if_worker();
    let head = NodeSpec {
        env: vec![("MANTA_NODE_TIMEOUT_US".into(), "3000000".into())],
        ..NodeSpec::with_resources("")
    };
    let mut cluster = LocalCluster::start(head, &[NodeSpec::with_resources("side=1")]);
    let _rt = common::start(cluster.config());
    let pg =
        manta::placement_group(vec![Bundle::cpus(0.5).resource("side", 0.25)], S::Pack).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let keeper = Keeper::options()
        .num_cpus(0.0)
        .resource("side", 0.5)
        .remote(pg.clone());
    assert_eq!(keeper.seen().get_timeout(LONG).unwrap().0, "CREATED");
    cluster.kill_head();
    std::thread::sleep(Duration::from_millis(300));
    cluster.restart_head();
    // The driver's removal waits for its own rejoin; the keeper's process rejoins by itself.
    std::thread::sleep(Duration::from_millis(1500));
    manta::remove_placement_group(&pg).unwrap();
    eventually("the kept handle seeing the removal", LONG, || {
        keeper.seen().get_timeout(LONG).unwrap().0 == "REMOVED"
    });
}
