//! Fault benchmarks, each on a local cluster of real processes (a head, raylets and the worker
//! processes they start, this binary re-executed), printed with what they are compared to:
//!
//! - **worker death seen by an owner**: a task running in a worker process that is killed
//!   (SIGKILL) with no retry left fails with `WorkerCrashed`; time from the kill to that error.
//! - **actor restart**: an actor with `max_restarts` whose worker process is killed; time from
//!   the kill to the first call answered by its new instance (target: ≤ 100 ms on one host).
//! - **raylet death**: a second node's raylet killed; time until the GCS lists the node dead.
//! - **lost result rebuilt**: a 1 MiB task result whose holder (the worker process that
//!   computed it) is killed; time from the kill to the right value back at the owner (the
//!   task run again from its lineage, in a replacement worker process), beside the same task
//!   computed and fetched fresh in the same run; and both 1 MiB results of a task of two
//!   returns, rebuilt by one run of it.
//! - **head restart**: the head process (GCS and its raylet) killed and at once started again
//!   on its session, under a driver with a named actor on a second node; time from the kill
//!   until the cluster serves again: the named actor found through the GCS and answering, and
//!   a new task run.
//! - **GCS writes, synced or not**: a driver's `kv_put`s one after another, from one thread
//!   and from 8 at once (each a change the head saves, and syncs to the disk with
//!   `gcs_sync`, before it answers; syncs are shared by the saves written meanwhile), on a one-node
//!   cluster whose head syncs and on one whose head does not, alternating, in the same run:
//!   the cost of the head's durability across a machine crash.
//! - **throughput under kills**: 2 ms tasks for `--seconds` (30) with the job's worker process
//!   killed every 10 s, against the same run without kills, in the same run (target ≥ 0.8×);
//!   every result is checked, none may be lost (system retries are left at Ray's default, 3).
//!
//! Run with `cargo bench --bench faults [-- --seconds N] [-- --rounds N]`. Times are printed as
//! the median (and the worst) of `--rounds` (5) kills; nothing is asserted on time.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster::{LocalCluster, NodeSpec, serve_if_worker, signal};
use manta::Error;

/// Longest any single wait of the benchmark.
const BOUND: Duration = Duration::from_secs(60);

#[manta::remote]
fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[manta::remote]
fn square_after(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// A 1 MiB result: kept in the executor's store, not sent inline.
#[manta::remote]
fn large_result(seed: u64) -> Vec<u8> {
    (0..1u64 << 20).map(|i| (i ^ seed) as u8).collect()
}

/// Two 1 MiB results, each its own object.
#[manta::remote(num_returns = 2)]
fn large_pair(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let one = |s: u64| (0..1u64 << 20).map(|i| (i ^ s) as u8).collect();
    (one(seed), one(!seed))
}

#[manta::actor]
struct Phoenix {
    calls: u64,
}

#[manta::actor]
impl Phoenix {
    fn new() -> Self {
        Phoenix { calls: 0 }
    }
    fn pid(&mut self) -> u32 {
        self.calls += 1;
        std::process::id()
    }
}

struct Args {
    seconds: u64,
    rounds: usize,
}

fn args() -> Args {
    let mut out = Args {
        seconds: 30,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => out.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(30),
            "--rounds" => out.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            _ => {}
        }
    }
    out
}

fn main() -> Result<()> {
    serve_if_worker();
    let args = args();
    println!("== fault benchmarks ({} rounds per time)", args.rounds);
    let one = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    manta::init_with(one.config()).context("joining the one-node cluster")?;
    let crash = worker_death_seen(args.rounds)?;
    report("worker SIGKILL -> owner gets WorkerCrashed", &crash, None);
    let restart = actor_restart(args.rounds)?;
    report(
        "worker SIGKILL -> restarted actor serving",
        &restart,
        Some(Duration::from_millis(100)),
    );
    let (rebuilt, fresh) = lost_result_rebuilt(args.rounds)?;
    report(
        "holder SIGKILL -> rebuilt value at the owner",
        &rebuilt,
        None,
    );
    report("  (same task computed and fetched fresh)", &fresh, None);
    let pair = lost_pair_rebuilt(args.rounds)?;
    report("holder SIGKILL -> both of 2 returns rebuilt", &pair, None);
    let (with, without) = throughput(&one, args.seconds)?;
    println!(
        "{:<44} {:>10.0} tasks/s with a kill every 10 s, {:>10.0} without: {:.2}x (target >= 0.80x)",
        "throughput of 2 ms tasks under worker kills",
        with,
        without,
        with / without
    );
    manta::shutdown();
    drop(one);
    let raylet = raylet_death_seen(args.rounds)?;
    report("raylet SIGKILL -> GCS lists the node dead", &raylet, None);
    let head = head_restart(args.rounds)?;
    report("head SIGKILL + restart -> serving again", &head, None);
    let (synced, unsynced) = gcs_writes(args.rounds, 1)?;
    report("GCS kv_put answered, gcs_sync on", &synced, None);
    report("  (same, gcs_sync off, same run)", &unsynced, None);
    let (synced, unsynced) = gcs_writes(args.rounds, 8)?;
    report("  8 threads at once, gcs_sync on", &synced, None);
    report("  8 threads at once, gcs_sync off", &unsynced, None);
    Ok(())
}

/// Time per `kv_put` of 200 one after another from each of `threads` threads, on a one-node
/// cluster whose head syncs its saved tables, and on one whose head does not: one of each
/// per round, alternating which first.
fn gcs_writes(rounds: usize, threads: u32) -> Result<(Vec<Duration>, Vec<Duration>)> {
    const PUTS: u32 = 200;
    let (mut synced, mut unsynced) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for sync in [round % 2 == 0, round % 2 == 1] {
            let head = NodeSpec {
                env: vec![("MANTA_GCS_SYNC".into(), sync.to_string())],
                ..NodeSpec::with_resources("")
            };
            let c = LocalCluster::start(head, &[]);
            manta::init_with(c.config()).context("joining the cluster")?;
            let started = Instant::now();
            let putters: Vec<_> = (0..threads)
                .map(|t| {
                    std::thread::spawn(move || -> Result<()> {
                        let value = vec![7u8; 64];
                        for i in 0..PUTS {
                            manta::cluster::kv_put(&format!("k{t}-{}", i % 16), &value)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for p in putters {
                p.join()
                    .map_err(|_| anyhow::anyhow!("a putter panicked"))??;
            }
            let per_put = started.elapsed() / (PUTS * threads);
            manta::shutdown();
            drop(c);
            if sync {
                synced.push(per_put);
            } else {
                unsynced.push(per_put);
            }
        }
    }
    Ok((synced, unsynced))
}

/// Kills the head and starts it again on its session, `rounds` times; each time, how long
/// until the cluster serves again (module doc).
fn head_restart(rounds: usize) -> Result<Vec<Duration>> {
    let mut c = LocalCluster::start(
        NodeSpec::with_resources(""),
        &[NodeSpec::with_resources("side=1")],
    );
    manta::init_with(c.config()).context("joining the two-node cluster")?;
    let keeper = Phoenix::options()
        .resource("side", 0.5)
        .name("phoenix")
        .remote();
    keeper.pid().get_timeout(BOUND)?;
    let mut out = Vec::new();
    for round in 0..rounds as u64 {
        if square_after::remote(round, 0).get_timeout(BOUND)? != round * round {
            bail!("a task before the kill returned a wrong value");
        }
        c.kill_head();
        let killed = Instant::now();
        c.restart_head();
        loop {
            let found = manta::get_actor::<Phoenix>("phoenix")
                .ok()
                .and_then(|a| a.pid().get_timeout(BOUND).ok())
                .is_some();
            if found && square_after::remote(7, 0).get_timeout(BOUND).ok() == Some(49) {
                break;
            }
            if killed.elapsed() > BOUND {
                bail!("the cluster did not serve again after the head's restart");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(killed.elapsed());
    }
    manta::shutdown();
    drop(c);
    Ok(out)
}

fn report(what: &str, times: &[Duration], target: Option<Duration>) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let worst = sorted[sorted.len() - 1];
    let target = target.map_or(String::new(), |t| {
        format!(
            " (target <= {t:?}: {})",
            if median <= t { "met" } else { "missed" }
        )
    });
    println!("{what:<44} median {median:>10.1?}, worst {worst:>10.1?}{target}");
}

/// The pid of the job's worker process (the one running tasks), once it runs one.
fn worker_pid() -> Result<u32> {
    Ok(sleep_ms::options()
        .max_retries(0)
        .remote(0)
        .get_timeout(BOUND)?)
}

fn worker_death_seen(rounds: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let pid = worker_pid()?;
        let running = sleep_ms::options().max_retries(0).remote(60_000);
        // Let it start there.
        std::thread::sleep(Duration::from_millis(100));
        signal(pid, libc::SIGKILL);
        let killed = Instant::now();
        match running.get_timeout(BOUND) {
            Err(Error::WorkerCrashed { .. }) => out.push(killed.elapsed()),
            other => bail!("expected WorkerCrashed, got {other:?}"),
        }
    }
    Ok(out)
}

fn actor_restart(rounds: usize) -> Result<Vec<Duration>> {
    let a = Phoenix::options()
        .max_restarts(u32::try_from(rounds).unwrap_or(u32::MAX))
        .remote();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let pid = a.pid().get_timeout(BOUND)?;
        signal(pid, libc::SIGKILL);
        let killed = Instant::now();
        loop {
            match a.pid().get_timeout(BOUND) {
                Ok(new) if new != pid => break,
                // A call that reached the dead process before its death was known.
                Ok(_) | Err(Error::ActorDied { .. }) if killed.elapsed() < BOUND => {}
                other => bail!("the actor did not come back: {other:?}"),
            }
        }
        out.push(killed.elapsed());
    }
    Ok(out)
}

/// Times from the kill of a large result's holder to its value back at the owner (rebuilt
/// from lineage), and of the same task computed and fetched fresh.
fn lost_result_rebuilt(rounds: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut rebuilt, mut fresh) = (Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        let want: Vec<u8> = (0..1u64 << 20).map(|i| (i ^ round) as u8).collect();
        let started = Instant::now();
        let first = large_result::remote(round).get_timeout(BOUND)?;
        fresh.push(started.elapsed());
        if first != want {
            bail!("round {round}: wrong value computed");
        }
        let pid = worker_pid()?;
        let lost = large_result::remote(round);
        while !lost.is_ready() {
            std::thread::sleep(Duration::from_millis(1));
        }
        signal(pid, libc::SIGKILL);
        let killed = Instant::now();
        let got = lost.get_timeout(BOUND)?;
        rebuilt.push(killed.elapsed());
        if got != want {
            bail!("round {round}: wrong value rebuilt");
        }
    }
    Ok((rebuilt, fresh))
}

/// Times from the kill of the holder of a task's two large results to both values back at
/// the owner (one run of the task rebuilds both).
fn lost_pair_rebuilt(rounds: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for round in 0..rounds as u64 {
        let one = |s: u64| -> Vec<u8> { (0..1u64 << 20).map(|i| (i ^ s) as u8).collect() };
        let pid = worker_pid()?;
        let (a, b) = large_pair::remote(round);
        while !(a.is_ready() && b.is_ready()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        signal(pid, libc::SIGKILL);
        let killed = Instant::now();
        let (got_b, got_a) = (b.get_timeout(BOUND)?, a.get_timeout(BOUND)?);
        out.push(killed.elapsed());
        if got_a != one(round) || got_b != one(!round) {
            bail!("round {round}: wrong values rebuilt");
        }
    }
    Ok(out)
}

/// Tasks per second over `seconds`, with and without a worker kill every 10 s.
fn throughput(cluster: &LocalCluster, seconds: u64) -> Result<(f64, f64)> {
    let with = task_rate(cluster, seconds, true)?;
    let without = task_rate(cluster, seconds, false)?;
    Ok((with, without))
}

fn task_rate(cluster: &LocalCluster, seconds: u64, kill: bool) -> Result<f64> {
    const BATCH: u64 = 200;
    let start = Instant::now();
    let mut next_kill = start + Duration::from_secs(10);
    let mut done = 0u64;
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let refs: Vec<_> = (i..i + BATCH).map(|x| square_after::remote(x, 2)).collect();
        if kill && Instant::now() >= next_kill {
            next_kill += Duration::from_secs(10);
            // Mid-batch: tasks in flight die with it and run again.
            std::thread::sleep(Duration::from_millis(20));
            cluster.kill_worker(None);
        }
        for (x, r) in (i..).zip(&refs) {
            let v = r
                .get_timeout(BOUND)
                .with_context(|| format!("task {x} lost"))?;
            if v != x * x {
                bail!("task {x} returned {v}");
            }
        }
        done += BATCH;
        i += BATCH;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn raylet_death_seen(rounds: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut c = LocalCluster::start(
            NodeSpec::with_resources(""),
            &[NodeSpec::with_resources("")],
        );
        let state = manta::cluster::query(&c.address, &c.token)?;
        // The node that joined last: the second one.
        let victim = state
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.node_id)
            .max()
            .context("a second node")?;
        let pid = c.node_pid(1);
        signal(pid, libc::SIGKILL);
        let killed = Instant::now();
        loop {
            let state = manta::cluster::query(&c.address, &c.token)?;
            if state.nodes.iter().any(|n| n.node_id == victim && !n.alive) {
                break;
            }
            if killed.elapsed() > BOUND {
                bail!("the killed raylet was never listed dead");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(killed.elapsed());
        let _ = c.node_exited(1);
    }
    Ok(out)
}
