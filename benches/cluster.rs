//! Cluster benchmarks, each printed beside a baseline measured in the same run:
//!
//! - **one host**: a head node on loopback and this process as the driver. Task and actor-call
//!   round trips to the worker process (p50/p99) beside a raw TCP ping-pong between two
//!   processes over loopback; tasks per second through the worker process; a 256 MiB object
//!   of the driver read by a task in the worker (since same-host reads are zero-copy, an
//!   in-place read of the driver's arena, unless `MANTA_ZERO_COPY_NODE=0` makes it a pull into
//!   the worker's store) beside a raw TCP stream of the same size over loopback; a 256 MiB object of the worker read by the driver (`get_view`) through the
//!   zero-copy path (the worker's arena attached and the object pinned there) and, with a
//!   second driver that sets `zero_copy_node(false)`, through the copy path, in the same run.
//!   The transport is shm rings unless `MANTA_SHM_TRANSPORT=0`; the I/O
//!   threads' spin follows the core count unless `MANTA_SHM_SPIN_US` is set.
//! - **two hosts** (network namespaces on a bridge; needs root, skipped otherwise): nodes A and
//!   B in their own namespaces. Round trips from the driver (root namespace) to B's worker
//!   over TCP; a 256 MiB object produced on A and pulled by a task on B beside a raw TCP stream
//!   from A's namespace to B's.
//!
//! Run with `cargo bench --bench cluster [-- one-host|two-hosts]` (or `scripts/bench`). The worker processes are this
//! binary, re-executed by the raylets.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "../tests/netns/mod.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster::{LocalCluster, NodeSpec, serve_if_worker};
use manta::ObjectRef;

const BYTES: usize = 256 << 20;
const ROUND_TRIPS: usize = 2000;
const CHILD_ENV: &str = "MANTA_BENCH_CHILD";

#[manta::remote]
fn noop() {}

#[manta::remote]
fn produce(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

/// Pulls the object into this worker's store and reports how long that took.
#[manta::remote]
fn pull_time(refs: Vec<ObjectRef<Vec<u8>>>) -> (usize, f64) {
    let t = Instant::now();
    let view = refs[0].get_view().expect("pull");
    (view.len(), t.elapsed().as_secs_f64())
}

#[manta::actor]
struct Echo;

#[manta::actor]
impl Echo {
    fn new() -> Self {
        Echo
    }
    fn ping(&self) {}
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn time_each(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    for _ in 0..n / 10 {
        f()?;
    }
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(percentiles(us))
}

/// Raw TCP: a receiver that reads `BYTES` into a buffer and acknowledges, and 8-byte echoes.
/// `buf` is touched memory (as the store's reused space is on the pulls timed), filled before
/// the listener was bound so that no sender starts its clock early.
fn raw_receiver(mut buf: Vec<u8>, listener: TcpListener) -> Result<()> {
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    s.read_exact(&mut buf)?;
    s.write_all(&[1])?;
    let mut b = [0u8; 8];
    while s.read_exact(&mut b).is_ok() {
        s.write_all(&b)?;
    }
    Ok(())
}

/// Raw TCP sender: returns (stream GB/s, ping p50 us, ping p99 us).
fn raw_sender(addr: SocketAddr) -> Result<(f64, f64, f64)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..BYTES / chunk.len() {
        s.write_all(&chunk)?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    let gbps = BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
    let mut b = [0u8; 8];
    let (p50, p99) = time_each(ROUND_TRIPS, || {
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        Ok(())
    })?;
    Ok((gbps, p50, p99))
}

/// The raw baselines over loopback between two processes: this one receives, a child (this
/// binary) sends and pings.
fn raw_loopback() -> Result<(f64, f64, f64)> {
    let buf = vec![1u8; BYTES];
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let rx = std::thread::spawn(move || raw_receiver(buf, listener));
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, format!("send:{addr}"))
        .output()?;
    rx.join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    parse_raw(&out.stdout)
}

/// Parses a raw sender's `gbps= p50= p99=` line.
fn parse_raw(stdout: &[u8]) -> Result<(f64, f64, f64)> {
    let line = String::from_utf8_lossy(stdout);
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("raw sender said {line:?}"))
    };
    Ok((field("gbps=")?, field("p50=")?, field("p99=")?))
}

/// The driver's measurements against a joined cluster.
struct Figures {
    task_rtt: (f64, f64),
    actor_rtt: (f64, f64),
    tasks_per_s: f64,
    pull_gbps: f64,
}

fn measure(pin: Option<&str>, produce_on: Option<&str>) -> Result<Figures> {
    let opts = |o: noop::Options| match pin {
        Some(r) => o.resource(r, 0.001),
        None => o,
    };
    let task_rtt = time_each(ROUND_TRIPS, || Ok(opts(noop::options()).remote().get()?))?;
    let echo = match pin {
        Some(r) => Echo::options().resource(r, 0.001).remote(),
        None => Echo::options().num_cpus(1.0).remote(),
    };
    echo.ready().get()?;
    let actor_rtt = time_each(ROUND_TRIPS, || Ok(echo.ping().get()?))?;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let refs: Vec<_> = (0..20_000)
            .map(|_| opts(noop::options()).remote())
            .collect();
        manta::get_all(&refs)?;
        best = best.max(20_000.0 / t.elapsed().as_secs_f64());
    }
    let mut pull_gbps = 0.0f64;
    for _ in 0..3 {
        let object = match produce_on {
            None => manta::put(vec![7u8; BYTES])?,
            Some(r) => {
                let o = produce::options().resource(r, 0.001).remote(BYTES);
                manta::wait(vec![o.clone()], 1, None)?;
                o
            }
        };
        let pull = pull_time::options();
        let pull = match pin {
            Some(r) => pull.resource(r, 0.001),
            None => pull,
        };
        let (len, secs) = pull.remote(vec![object]).get()?;
        if len != BYTES {
            bail!("pulled {len} bytes, expected {BYTES}");
        }
        pull_gbps = pull_gbps.max(BYTES as f64 / secs / 1e9);
    }
    Ok(Figures {
        task_rtt,
        actor_rtt,
        tasks_per_s: best,
        pull_gbps,
    })
}

/// The driver reads a 256 MiB object the worker process produced (`get_view`: in place when
/// this driver's `zero_copy_node` is on, else a copy into its store). Best of 3, in seconds.
fn same_node_read() -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let object = produce::remote(BYTES);
        manta::wait(vec![object.clone()], 1, None)?;
        let t = Instant::now();
        let view = object.get_view()?;
        let secs = t.elapsed().as_secs_f64();
        if view.len() != BYTES {
            bail!("read {} bytes, expected {BYTES}", view.len());
        }
        best = best.min(secs);
    }
    Ok(best)
}

fn one_host() -> Result<()> {
    let raw = raw_loopback()?;
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            ..NodeSpec::default()
        },
        &[],
    );
    // This driver reads in place whatever `MANTA_ZERO_COPY_NODE` says (its workers follow the
    // environment, which the driver forwards to them).
    manta::init_with(cluster.config().zero_copy_node(true))?;
    let f = measure(None, None)?;
    let zero_copy = same_node_read()?;
    manta::shutdown();
    manta::init_with(cluster.config().zero_copy_node(false))?;
    let copy = same_node_read()?;
    manta::shutdown();
    drop(cluster);
    let transport = if std::env::var("MANTA_SHM_TRANSPORT").as_deref() == Ok("0") {
        "loopback TCP"
    } else {
        "shared-memory rings"
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spin = std::env::var("MANTA_SHM_SPIN_US").unwrap_or_else(|_| "default".into());
    println!("one host ({transport}; {cores} cores, I/O spin {spin}), driver -> worker process:");
    println!(
        "  task round trip        p50 {:8.1} us  p99 {:8.1} us   (raw TCP ping-pong between processes p50 {:.1} us, p99 {:.1} us)",
        f.task_rtt.0, f.task_rtt.1, raw.1, raw.2
    );
    println!(
        "  actor call round trip  p50 {:8.1} us  p99 {:8.1} us",
        f.actor_rtt.0, f.actor_rtt.1
    );
    println!("  tasks per second       {:10.0}", f.tasks_per_s);
    let zero_copy_on = std::env::var("MANTA_ZERO_COPY_NODE").as_deref() != Ok("0");
    println!(
        "  256 MiB driver object read by a worker task ({}) {:8.2} GB/s   raw TCP stream {:.2} GB/s   ratio {:.2}",
        if zero_copy_on {
            "in place, zero-copy"
        } else {
            "pulled into its store"
        },
        f.pull_gbps,
        raw.0,
        f.pull_gbps / raw.0
    );
    let gbps = |secs: f64| BYTES as f64 / secs / 1e9;
    println!(
        "  256 MiB same-node read (worker's object, driver get_view): zero-copy {:.3} ms ({:.0} GB/s)   copy path {:.1} ms ({:.2} GB/s)   raw TCP stream {:.2} GB/s   copy/zero-copy time {:.0}x",
        zero_copy * 1e3,
        gbps(zero_copy),
        copy * 1e3,
        gbps(copy),
        raw.0,
        copy / zero_copy
    );
    Ok(())
}

fn two_hosts() -> Result<()> {
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            println!("two hosts: skipped ({e})");
            return Ok(());
        }
    };
    // Raw TCP from A's namespace to B's: this binary as receiver in B, sender in A.
    let exe = std::env::current_exe()?;
    let b_addr = SocketAddr::new(hosts[1].ip().into(), 47_100);
    let mut recv = hosts
        .command(1, &exe)
        .env(CHILD_ENV, format!("recv:{b_addr}"))
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = hosts
        .command(0, &exe)
        .env(CHILD_ENV, format!("send:{b_addr}"))
        .output()?;
    let _ = recv.wait();
    let (raw_gbps, raw_p50, raw_p99) = parse_raw(&out.stdout)?;

    let node = |i: usize, res: &str| NodeSpec {
        num_cpus: 2.0,
        resources: res.into(),
        wrapper: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            hosts.host(i).netns().to_owned(),
        ],
        ip: Some(hosts.host(i).ip().to_string()),
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(node(0, "a=1"), &[node(1, "b=1")]);
    manta::init_with(cluster.config())?;
    let f = measure(Some("b"), Some("a"))?;
    manta::shutdown();
    drop(cluster);
    println!("two hosts (network namespaces, TCP over a bridge):");
    println!(
        "  task round trip driver -> B   p50 {:8.1} us  p99 {:8.1} us   (raw TCP A->B p50 {:.1} us, p99 {:.1} us)",
        f.task_rtt.0, f.task_rtt.1, raw_p50, raw_p99
    );
    println!(
        "  actor call round trip -> B    p50 {:8.1} us  p99 {:8.1} us",
        f.actor_rtt.0, f.actor_rtt.1
    );
    println!("  tasks per second on B         {:10.0}", f.tasks_per_s);
    println!(
        "  256 MiB A -> B pull    {:8.2} GB/s   raw TCP stream A->B {:.2} GB/s   ratio {:.2}",
        f.pull_gbps,
        raw_gbps,
        f.pull_gbps / raw_gbps
    );
    Ok(())
}

fn child(mode: &str) -> Result<()> {
    if let Some(addr) = mode.strip_prefix("recv:") {
        let buf = vec![1u8; BYTES];
        let listener = TcpListener::bind(addr)?;
        return raw_receiver(buf, listener);
    }
    if let Some(addr) = mode.strip_prefix("send:") {
        let addr: SocketAddr = addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (gbps, p50, p99) = loop {
            match raw_sender(addr) {
                Ok(r) => break r,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e),
            }
        };
        println!("gbps={gbps:.3} p50={p50:.1} p99={p99:.1}");
        return Ok(());
    }
    bail!("unknown child mode {mode:?}")
}

fn main() -> Result<()> {
    serve_if_worker();
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child(&mode);
    }
    // `cargo bench -- --test` style smoke runs and criterion flags: ignored; `--list` lists.
    if std::env::args().any(|a| a == "--list") {
        println!("cluster: benchmark");
        return Ok(());
    }
    // `-- one-host` or `-- two-hosts` runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "one-host" || a == "two-hosts")
        .collect();
    if only.is_empty() || only.iter().any(|a| a == "one-host") {
        one_host()?;
    }
    if only.is_empty() || only.iter().any(|a| a == "two-hosts") {
        two_hosts()?;
    }
    Ok(())
}
