//! Three nodes on three emulated hosts: the head in network namespace 0, raylets in 1 and 2,
//! each with its own address on one bridge (see `tests/netns`). The driver is this test, in
//! the root namespace, reaching the hosts through the bridge's address.
//!
//! Covers: tasks spread over all three hosts (each reports its node's address), an actor
//! pinned to host 2 by a custom resource, 64 MiB objects driver → host 1, host 2 → driver and
//! host 2 → host 1 (pulled worker to worker), and the death of host 2's raylet: the GCS marks
//! the node DEAD, work in flight there fails, work that needs it fails (no hang), and the
//! other hosts keep running tasks.
//!
//! Skipped (`skipped: ...` on stderr) where namespaces can't be made (not root, no `ip`).

mod common;
mod netns;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

/// Bytes in each large object.
const BIG: usize = 64 << 20;

/// The address of the node this code runs on (raylets give their workers MANTA_NODE_IP).
fn my_ip() -> String {
    std::env::var("MANTA_NODE_IP").unwrap_or_default()
}

/// Byte `i` of a large object: position-dependent, so a misplaced chunk shows.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// An order-sensitive digest of `bytes`.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        h = h.wrapping_add((*b as u64 ^ i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    h
}

#[manta::remote]
fn node_ip(pause_ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(pause_ms));
    my_ip()
}

#[manta::remote]
fn digest_bytes(v: Vec<u8>) -> (u64, u64, String) {
    (v.len() as u64, digest(&v), my_ip())
}

#[manta::remote]
fn make_bytes(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

#[manta::actor]
struct Pinned {
    calls: u64,
}

#[manta::actor]
impl Pinned {
    fn new() -> Self {
        Pinned { calls: 0 }
    }
    fn hello(&mut self) -> (u64, String) {
        self.calls += 1;
        (self.calls, my_ip())
    }
    fn nap(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// Asserts `r` failed, and not by running out of time (a hang would).
fn assert_failed_fast<T: std::fmt::Debug>(what: &str, r: Result<T, manta::Error>) {
    match r {
        Err(manta::Error::Timeout { .. }) => {
            panic!("{what}: still pending 20 s after its node died (a hang): {r:?}")
        }
        Err(e) => eprintln!("{what}: failed as expected: {e}"),
        Ok(v) => panic!("{what}: succeeded after its node died: {v:?}"),
    }
}

#[test]
fn three_hosts_in_network_namespaces() {
    serve_if_worker();
    let hosts = match netns::Hosts::create(3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let t0 = Instant::now();
    let ip = |i: usize| hosts.host(i).ip().to_string();
    let spec = |i: usize, resources: &str| NodeSpec {
        num_cpus: 2.0,
        resources: resources.into(),
        wrapper: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            hosts.host(i).netns().into(),
        ],
        ip: Some(ip(i)),
        ..NodeSpec::default()
    };
    // Host 2 has `host2=2`: one for the actor (held while it lives), one for a task there.
    // Declared after `hosts`: stopped before the namespaces go.
    let mut cluster = LocalCluster::start(spec(0, ""), &[spec(1, "host1=1"), spec(2, "host2=2")]);
    assert!(
        cluster.address.starts_with(&format!("{}:", ip(0))),
        "the GCS listens on host 0: {}",
        cluster.address
    );
    manta::init_with(cluster.config()).expect("the driver joins from the root namespace");

    // A burst of slow tasks lands on every host; each reports its node's address.
    let refs: Vec<_> = (0..24).map(|_| node_ip::remote(100u64)).collect();
    let seen: BTreeSet<String> = manta::get_all(&refs).unwrap().into_iter().collect();
    let all: BTreeSet<String> = (0..3).map(ip).collect();
    assert_eq!(
        seen, all,
        "24 tasks of 100 ms should run on all three hosts"
    );

    // Placement groups across the hosts, each strategy: the hosts a group's bundles ran on,
    // as tasks in each bundle report them.
    let hosts_of = |pg: &manta::PlacementGroup, n: usize| -> BTreeSet<String> {
        let refs: Vec<_> = (0..n)
            .map(|b| {
                node_ip::options()
                    .num_cpus(0.5)
                    .placement_group(pg, Some(b))
                    .remote(0u64)
            })
            .collect();
        manta::get_all(&refs).unwrap().into_iter().collect()
    };
    let group = |strategy| {
        let pg = manta::placement_group(vec![manta::Bundle::cpus(0.5); 3], strategy).unwrap();
        pg.ready().get_timeout(Duration::from_secs(30)).unwrap();
        pg
    };
    use manta::PlacementStrategy as S;
    let spread = group(S::StrictSpread);
    assert_eq!(
        hosts_of(&spread, 3),
        all,
        "STRICT_SPREAD: one bundle per host"
    );
    manta::remove_placement_group(&spread).unwrap();
    let pack = group(S::StrictPack);
    assert_eq!(
        hosts_of(&pack, 3).len(),
        1,
        "STRICT_PACK: every bundle on one host"
    );
    manta::remove_placement_group(&pack).unwrap();
    for strategy in [S::Pack, S::Spread] {
        let pg = group(strategy);
        assert!(!hosts_of(&pg, 3).is_empty(), "{strategy}");
        manta::remove_placement_group(&pg).unwrap();
    }
    // A bundle per host, and a fourth: the group cannot be placed on three hosts.
    let four = manta::placement_group(vec![manta::Bundle::cpus(0.5); 4], S::StrictSpread).unwrap();
    assert!(
        four.ready()
            .get_timeout(Duration::from_millis(500))
            .is_err(),
        "STRICT_SPREAD of 4 bundles placed on 3 hosts"
    );
    manta::remove_placement_group(&four).unwrap();

    // An actor that lives on host 2 (the only node with `host2`).
    let pinned = Pinned::options().resource("host2", 1.0).remote();
    for n in 1..=3u64 {
        assert_eq!(pinned.hello().get().unwrap(), (n, ip(2)));
    }

    // 64 MiB from the driver to a task on host 1.
    let bytes: Vec<u8> = (0..BIG).map(pattern).collect();
    let expected = digest(&bytes);
    let put = manta::put(bytes).unwrap();
    let on1 = digest_bytes::options()
        .resource("host1", 1.0)
        .remote(&put)
        .get()
        .unwrap();
    assert_eq!(on1, (BIG as u64, expected, ip(1)), "driver → host 1");
    drop(put);

    // 64 MiB made on host 2: pulled by a task on host 1 (worker to worker), and by the driver.
    let made = make_bytes::options().resource("host2", 1.0).remote(BIG);
    let w2w = digest_bytes::options()
        .resource("host1", 1.0)
        .remote(&made)
        .get()
        .unwrap();
    assert_eq!(w2w, (BIG as u64, expected, ip(1)), "host 2 → host 1");
    let view = made.get_view().unwrap();
    assert_eq!(view.len(), BIG, "host 2 → driver");
    if let Some(i) = (0..BIG).find(|&i| view[i] != pattern(i)) {
        panic!(
            "host 2 → driver: byte {i} is {} not {}",
            view[i],
            pattern(i)
        );
    }
    drop(view);
    drop(made);

    // Work in flight on host 2 when it dies: an actor call and a task, both long.
    let napping = pinned.nap(60_000);
    let sleeping = node_ip::options().resource("host2", 1.0).remote(60_000u64);
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    let host2 = state
        .nodes
        .iter()
        .find(|n| n.resources.iter().any(|(k, _, _)| k == "host2"))
        .expect("host 2's node in the table")
        .node_id;
    // Let both reach host 2 before it goes (a call only queued in the driver fails too).
    std::thread::sleep(Duration::from_millis(300));

    // Host 2's raylet dies; the GCS marks its node DEAD.
    cluster.kill_node(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (row, actors) = loop {
        let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
        let row = state
            .nodes
            .into_iter()
            .find(|n| n.node_id == host2)
            .unwrap();
        if !row.alive {
            break (row, state.actors);
        }
        assert!(
            Instant::now() < deadline,
            "node {host2} still ALIVE 15 s after its raylet was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("node {host2} DEAD: {}", row.death);
    let on_host2: Vec<_> = actors.iter().filter(|a| a.node_id == host2).collect();
    assert!(
        !on_host2.is_empty() && on_host2.iter().all(|a| !a.alive),
        "the actor on host 2 is DEAD with its node: {on_host2:?}"
    );

    let wait = Duration::from_secs(20);
    assert_failed_fast("an actor call in flight", napping.get_timeout(wait));
    assert_failed_fast("a task in flight", sleeping.get_timeout(wait));
    assert_failed_fast("a call to the dead actor", pinned.hello().get_timeout(wait));
    let needs_host2 = node_ip::options().resource("host2", 1.0).remote(0u64);
    assert_failed_fast("a task needing host2", needs_host2.get_timeout(wait));

    // The other hosts carry on.
    let refs: Vec<_> = (0..8).map(|_| node_ip::remote(50u64)).collect();
    let seen: BTreeSet<String> = manta::get_all(&refs).unwrap().into_iter().collect();
    assert!(
        !seen.is_empty() && !seen.contains(&ip(2)),
        "tasks after the death ran on {seen:?}"
    );

    manta::shutdown();
    eprintln!("three hosts: {:.1} s", t0.elapsed().as_secs_f64());
}
