//! An actor group's call to every member as a tree on a real three-node cluster (one worker
//! process per node): the caller sends one message to the worker hosting rank 0, which
//! relays it to the others. So a stopped root worker (SIGSTOP) holds back every member's
//! call, not only its own (a fan-out from the caller would reach the others at once);
//! results come back in rank order; a direct call made after the group call does not
//! overtake it, nor it a direct call made before; a relay that dies fails the calls it had to forward with `WorkerCrashed`,
//! within a bound, never a hang.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker, signal};
use manta::{Bundle, Error, PlacementStrategy as S};

const LONG: Duration = Duration::from_secs(30);

fn node(cpus: f64) -> NodeSpec {
    NodeSpec {
        num_cpus: cpus,
        ..NodeSpec::default()
    }
}

#[manta::actor]
pub(crate) struct Member {
    log: Vec<u64>,
}

#[manta::actor]
impl Member {
    pub(crate) fn new() -> Self {
        Member { log: Vec::new() }
    }
    /// Its worker's pid and its rank.
    pub(crate) fn probe(&self) -> (u32, Option<usize>) {
        (std::process::id(), manta::group_rank())
    }
    /// Appends `x` to its log and returns the log.
    pub(crate) fn push(&mut self, x: u64) -> Vec<u64> {
        self.log.push(x);
        self.log.clone()
    }
}

/// Stops process `pid` (SIGSTOP) and waits until the kernel shows it stopped: the signal is
/// delivered asynchronously, and a process spinning on a shared-memory ring could otherwise
/// still take a message sent right after.
fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name's closing parenthesis.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if matches!(state, Some(Some('T' | 't'))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop: {stat}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Six members spread over the three nodes' workers, and each member's worker pid.
fn six_members() -> (
    LocalCluster,
    common::Runtime,
    manta::PlacementGroup,
    manta::ActorGroup<Member>,
    Vec<u32>,
) {
    let cluster = LocalCluster::start(node(2.0), &[node(2.0), node(2.0)]);
    let rt = common::start(cluster.config());
    let pg =
        manta::placement_group((0..6).map(|_| Bundle::cpus(0.25)).collect(), S::Spread).unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let group = manta::ActorGroup::spawn(&pg, |m| {
        Member::options().group_member(&m).num_cpus(0.25).remote()
    })
    .unwrap();
    let probes = manta::get_all(&group.call(|m| m.probe())).unwrap();
    let ranks: Vec<Option<usize>> = probes.iter().map(|p| p.1).collect();
    assert_eq!(ranks, (0..6).map(Some).collect::<Vec<_>>(), "rank order");
    let pids: Vec<u32> = probes.iter().map(|p| p.0).collect();
    assert_eq!(
        pids.iter().collect::<BTreeSet<_>>().len(),
        3,
        "one worker process per node: {pids:?}"
    );
    (cluster, rt, pg, group, pids)
}

#[test]
fn a_group_call_is_relayed_by_the_root_worker_in_rank_order() {
    serve_if_worker();
    let (_cluster, _rt, pg, group, pids) = six_members();
    let root = pids[0];
    stop(root);
    let refs = group.call(|m| m.push(1));
    // Members on the other workers get nothing while the root cannot relay.
    std::thread::sleep(Duration::from_millis(800));
    for (rank, r) in refs.iter().enumerate() {
        assert!(
            r.get_timeout(Duration::ZERO).is_err(),
            "rank {rank} (worker {}) answered while the root {root} was stopped",
            pids[rank]
        );
    }
    // A direct call made now waits for the group call's answer: it cannot overtake it.
    let direct: Vec<_> = group.members().iter().map(|m| m.push(2)).collect();
    signal(root, libc::SIGCONT);
    let logs = manta::get_all(&refs).unwrap();
    assert!(logs.iter().all(|l| l == &[1]), "{logs:?}");
    let logs = manta::get_all(&direct).unwrap();
    assert!(logs.iter().all(|l| l == &[1, 2]), "{logs:?}");
    // Again, with the results checked in rank order, many times (one route: no waiting).
    for i in 3..50u64 {
        let logs = manta::get_all(&group.call(|m| m.push(i))).unwrap();
        assert!(
            logs.iter()
                .all(|l| l.last() == Some(&i) && l.len() == i as usize)
        );
    }
    // Direct calls still on their way, then a group call: it does not overtake them (a
    // stopped worker finds both waiting, on two connections, when it resumes).
    let other = pids.iter().copied().find(|&p| p != root).unwrap();
    for round in 0..5u64 {
        stop(other);
        for i in 0..20u64 {
            for m in group.members() {
                drop(m.push(1000 * (round + 1) + i));
            }
        }
        let mark = 1000 * (round + 1) + 999;
        let refs = group.call(|m| m.push(mark));
        std::thread::sleep(Duration::from_millis(200));
        signal(other, libc::SIGCONT);
        let logs = manta::get_all(&refs).unwrap();
        for (rank, l) in logs.iter().enumerate() {
            let tail: Vec<u64> = l[l.len() - 21..].to_vec();
            let want: Vec<u64> = (0..20u64)
                .map(|i| 1000 * (round + 1) + i)
                .chain([mark])
                .collect();
            assert_eq!(tail, want, "rank {rank}: the group call after direct ones");
        }
    }
    manta::remove_placement_group(&pg).unwrap();
}

#[test]
fn a_relay_that_dies_fails_the_calls_below_it_within_a_bound() {
    serve_if_worker();
    let (_cluster, _rt, pg, group, pids) = six_members();
    let root = pids[0];
    stop(root);
    let refs = group.call(|m| m.push(1));
    std::thread::sleep(Duration::from_millis(300));
    signal(root, libc::SIGKILL);
    let killed = Instant::now();
    for (rank, r) in refs.iter().enumerate() {
        match r.get_timeout(LONG) {
            Err(Error::ActorDied { reason, .. }) if pids[rank] == root => {
                assert!(reason.contains(&format!("rank {rank} of 6")), "{reason}");
            }
            Err(Error::WorkerCrashed { reason, .. }) if pids[rank] != root => {
                assert!(reason.contains("relayed"), "{reason}");
            }
            other => panic!("rank {rank} on {}: {other:?}", pids[rank]),
        }
    }
    assert!(killed.elapsed() < LONG);
    // The members on live workers still serve, directly and by a new group call of theirs.
    let alive: Vec<usize> = (0..6).filter(|&r| pids[r] != root).collect();
    for &r in &alive {
        assert_eq!(
            group.member(r).unwrap().push(7).get_timeout(LONG).unwrap(),
            vec![7]
        );
    }
    // Two live members on different workers (ranks are spread over the nodes in turn).
    let pair = alive
        .windows(2)
        .find(|w| w[1] == w[0] + 1 && pids[w[0]] != pids[w[1]])
        .expect("two consecutive ranks on two live workers");
    let survivors = group.slice(pair[0]..=pair[1]).unwrap();
    assert_eq!(
        manta::get_all(&survivors.call(|m| m.push(8))).unwrap(),
        vec![vec![7, 8], vec![7, 8]]
    );
    manta::remove_placement_group(&pg).unwrap();
}
