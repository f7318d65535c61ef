//! A bounded chaos run (issue 13): a head and two more nodes of real processes, a driver
//! running a mixed load — tasks, actor calls, large task results (of tasks with one return
//! and with two, one of whose outputs is dropped unread in every other pair), large `put`s
//! read by tasks —
//! while a chaos thread SIGKILLs a random worker process about every 700 ms, stops one node
//! (SIGSTOP) for a moment below the heartbeat timeout, and kills one node's raylet for good;
//! and midway through a round the driver kills the head (SIGKILL) and starts it again on its
//! session, which restores the GCS's tables while the round's work is in flight.
//! Every result is checked: correct, or an error of a kind the fault model allows
//! (`WorkerCrashed` or `ObjectReconstructionFailedMaxAttemptsExceeded` once retries ran out,
//! `ActorDied`, `ObjectLost` for what cannot be rebuilt), never a wrong value and never a
//! hang (every wait is bounded; a timeout fails the run). A large task result lost with its
//! worker is rebuilt from its lineage: `ObjectLost` there is a failure. Afterwards no process
//! and no file of the cluster is left.
//!
//! `MANTA_CHAOS_SECONDS` (default 15) sets the length; the seed is printed
//! (`MANTA_CHAOS_SEED` replays one).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Rng;
use common::cluster::{LocalCluster, NodeSpec, serve_if_worker, signal, worker_pids_of};
use manta::{Error, ObjectRef};

/// Longest any one result may take, kills included.
const BOUND: Duration = Duration::from_secs(60);
const BIG: usize = 256 << 10;

#[manta::remote]
fn chaos_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(x % 3));
    x * x
}

/// A large result: it lives in the producing worker's store until read.
#[manta::remote]
fn chaos_big(seed: u64) -> Vec<u8> {
    pattern(seed, BIG)
}

/// Two large results, each its own object (a task of several returns).
#[manta::remote(num_returns = 2)]
fn chaos_pair(seed: u64) -> (Vec<u8>, Vec<u8>) {
    (pattern(seed, BIG), pattern(!seed, BIG))
}

/// Reads a large object the driver put.
#[manta::remote]
fn chaos_sum(data: Vec<u8>) -> u64 {
    checksum(&data)
}

#[manta::actor]
struct Echo;

#[manta::actor]
impl Echo {
    fn new() -> Self {
        Echo
    }
    fn echo(&self, x: u64) -> u64 {
        x
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The outputs of a [`chaos_pair`] task kept to be read (the first only in every other one).
type Pair = (Option<ObjectRef<Vec<u8>>>, ObjectRef<Vec<u8>>);

/// Outcomes by kind, for the report, with the first error of each kind.
#[derive(Default, Debug)]
struct Tally(BTreeMap<&'static str, u64>, BTreeMap<&'static str, String>);

impl Tally {
    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_default() += 1;
    }

    fn failed(&mut self, kind: &'static str, what: &str, e: &Error) {
        self.add(kind);
        self.1.entry(kind).or_insert_with(|| format!("{what}: {e}"));
    }
}

/// Whether a lost value may be reported lost: not for a task's result, which is rebuilt from
/// its lineage while its task has retries left.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    Rebuilt,
    MayBeLost,
}

/// Counts `got` if the fault model allows it (`want`, or a clear error of an allowed kind);
/// panics on a wrong value, a hang or an error of another kind.
fn judge<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Result<T, Error>,
    want: T,
    loss: Loss,
    tally: &mut Tally,
) {
    match got {
        Ok(v) if v == want => tally.add("ok"),
        Ok(v) => panic!("{what}: wrong value {v:?}, expected {want:?}"),
        Err(e @ Error::WorkerCrashed { .. }) => tally.failed("WorkerCrashed", what, &e),
        Err(e @ Error::ActorDied { .. }) => tally.failed("ActorDied", what, &e),
        Err(e @ Error::ObjectReconstructionFailedMaxAttemptsExceeded { .. }) => {
            tally.failed("ObjectReconstructionFailedMaxAttemptsExceeded", what, &e)
        }
        Err(e @ Error::ObjectLost { .. }) if loss == Loss::Rebuilt => {
            panic!("{what}: lost though it could be rebuilt: {e}")
        }
        Err(e @ Error::ObjectLost { .. }) => tally.failed("ObjectLost", what, &e),
        Err(e @ Error::Timeout { .. }) => panic!("{what}: a hang: {e}"),
        Err(e) => panic!("{what}: an error of the wrong kind: {e:?}"),
    }
}

#[test]
fn a_mixed_load_under_random_kills_gives_right_results_or_clear_errors() {
    serve_if_worker();
    let seconds: u64 = std::env::var("MANTA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("MANTA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos: {seconds} s, MANTA_CHAOS_SEED={seed}");
    let mut cluster = LocalCluster::start(
        NodeSpec::with_resources(""),
        &[NodeSpec::with_resources(""), NodeSpec::with_resources("")],
    );
    let root = cluster.root.clone();
    let rt = common::start(cluster.config());

    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let stop = stop.clone();
        let root = root.clone();
        let pids: Vec<u32> = (0..3).map(|i| cluster.node_pid(i)).collect();
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let start = Instant::now();
            let (mut stopped, mut raylet_killed) = (false, false);
            let mut kills = 0u32;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(400 + rng.below(600)));
                let t = start.elapsed().as_secs_f64() / seconds as f64;
                if !stopped && t > 0.3 {
                    // A stall shorter than the heartbeat timeout: the node stays in.
                    stopped = true;
                    signal(pids[1], libc::SIGSTOP);
                    std::thread::sleep(Duration::from_millis(300));
                    signal(pids[1], libc::SIGCONT);
                    continue;
                }
                if !raylet_killed && t > 0.6 {
                    raylet_killed = true;
                    signal(pids[2], libc::SIGKILL);
                    continue;
                }
                let workers: Vec<u32> = worker_pids_of(&root).into_iter().map(|(p, _)| p).collect();
                if !workers.is_empty() {
                    let victim = workers[rng.below(workers.len() as u64) as usize];
                    signal(victim, libc::SIGKILL);
                    kills += 1;
                }
            }
            kills
        })
    };

    let echo = Echo::options()
        .max_restarts(1_000)
        .max_task_retries(3)
        .remote();
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut round = 0u64;
    let mut head_restarted = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        let base = round * 1_000;
        let squares: Vec<_> = (base..base + 50).map(chaos_square::remote).collect();
        let calls: Vec<_> = (base..base + 20).map(|x| echo.echo(x)).collect();
        let bigs: Vec<ObjectRef<Vec<u8>>> = (base..base + 3).map(chaos_big::remote).collect();
        let pairs: Vec<Pair> = (base..base + 2)
            .map(|x| {
                let (a, b) = chaos_pair::remote(x);
                // Every other pair keeps only its second output.
                (Some(a).filter(|_| x % 2 == 0), b)
            })
            .collect();
        let put = manta::put(pattern(base, BIG)).expect("put");
        let sum = chaos_sum::remote(&put);
        if head_restarted.is_none() && start.elapsed().as_secs_f64() > 0.45 * seconds as f64 {
            // The head dies with this round in flight, and comes back on its session.
            cluster.kill_head();
            std::thread::sleep(Duration::from_millis(200));
            cluster.restart_head();
            head_restarted = Some(round);
        }
        for (x, r) in (base..).zip(&squares) {
            judge(
                "task",
                r.get_timeout(BOUND),
                x * x,
                Loss::Rebuilt,
                &mut tally,
            );
        }
        for (x, r) in (base..).zip(&calls) {
            judge(
                "actor call",
                r.get_timeout(BOUND),
                x,
                Loss::MayBeLost,
                &mut tally,
            );
        }
        for (x, r) in (base..).zip(&bigs) {
            let got = r.get_timeout(BOUND).map(|v| checksum(&v));
            let want = checksum(&pattern(x, BIG));
            judge("large result", got, want, Loss::Rebuilt, &mut tally);
        }
        for (x, (a, b)) in (base..).zip(&pairs) {
            if let Some(a) = a {
                let got = a.get_timeout(BOUND).map(|v| checksum(&v));
                let want = checksum(&pattern(x, BIG));
                judge("first of two results", got, want, Loss::Rebuilt, &mut tally);
            }
            let got = b.get_timeout(BOUND).map(|v| checksum(&v));
            let want = checksum(&pattern(!x, BIG));
            judge(
                "second of two results",
                got,
                want,
                Loss::Rebuilt,
                &mut tally,
            );
        }
        judge(
            "task reading a put",
            sum.get_timeout(BOUND),
            checksum(&pattern(base, BIG)),
            Loss::Rebuilt,
            &mut tally,
        );
        round += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let kills = chaos.join().expect("the chaos thread");
    eprintln!(
        "chaos: {round} rounds, {kills} worker kills, head restarted in round {head_restarted:?}, \
         outcomes {:?}, first errors {:?}",
        tally.0, tally.1
    );
    assert!(
        head_restarted.is_some(),
        "the run ended before the head's restart"
    );
    assert!(
        tally.0.get("ok").copied().unwrap_or(0) > 0,
        "nothing succeeded"
    );
    drop(echo);
    drop(rt);
    let _ = cluster.node_exited(2);
    drop(cluster);
    // Nothing left: no process of the cluster, no file under its root.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker_pids_of(&root).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(worker_pids_of(&root), Vec::new(), "worker processes left");
    assert!(
        !root.exists(),
        "the cluster's directory is left: {}",
        root.display()
    );
}
