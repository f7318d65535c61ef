//! Collective benchmarks in `nccl-tests`' table format (size, count, type, redop, time µs,
//! algbw, busbw), Manta beside Open MPI and Gloo in the same run, same ranks, same sizes:
//!
//! - **one-node**: 2 and 4 ranks, each a separate process on this host. Manta's ranks are
//!   actors of a local cluster, one per node process (so the group picks its shm backend);
//!   Open MPI's are `mpirun -np N` of this binary (`MPI_Allreduce`, `MPI_Allgather`,
//!   `MPI_Reduce_scatter_block`; needs the `mpi` feature, skipped otherwise); Gloo's are N
//!   processes of `scripts/gloo_collectives.py` in the venv `scripts/compare-collectives`
//!   makes (skipped where it has no torch).
//! - **two-hosts** (network namespaces on a bridge; needs root, skipped otherwise): one rank
//!   per namespace (Manta's tcp backend), or `--per-host N` (Manta's hierarchical backend),
//!   beside a raw TCP stream, a raw exchange both ways at once and a raw 2-rank allreduce by
//!   hand (plain sockets, pipelined per piece, no framing) between the same namespaces (each
//!   measured as the OS places the processes and with each host on its own core; the better
//!   figure counts) and Gloo across them.
//!
//! `busbw` follows nccl-tests: allreduce `algbw × 2(n-1)/n`, allgather and reduce-scatter
//! `algbw × (n-1)/n`, where `size` is the per-rank vector of allreduce and the whole (gathered,
//! or scattered) vector of the others. Every time is the slowest rank's mean over the
//! iterations (after 2 warm-up ones).
//!
//! Run with `cargo bench --all-features --bench collectives -- [one-node|two-hosts]
//! [--max-bytes N] [--ranks 2,4] [--per-host 1] [--ops allreduce,allgather,reduce_scatter]` (or
//! `scripts/compare-collectives`, which prints the ratios).

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "../tests/netns/mod.rs"]
mod netns;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster::{LocalCluster, NodeSpec, serve_if_worker};
use manta::collective::{Communicator, ReduceOp};

const CHILD_ENV: &str = "MANTA_BENCH_CHILD";
const OPS: [&str; 3] = ["allreduce", "allgather", "reduce_scatter"];

/// Iterations for a message of `bytes`: about 64 MiB moved, between 3 and 100.
fn iters(bytes: u64) -> u64 {
    ((64u64 << 20) / bytes.max(1)).clamp(3, 100)
}

/// Per-rank input elements (f32) of `op` for a table size of `bytes` with `n` ranks.
fn count(op: &str, bytes: u64, n: u64) -> u64 {
    match op {
        "allreduce" => (bytes / 4).max(1),
        _ => (bytes / 4 / n).max(1),
    }
}

/// The table size of `op` for a per-rank count.
fn size_of_count(op: &str, count: u64, n: u64) -> u64 {
    match op {
        "allreduce" => count * 4,
        _ => count * 4 * n,
    }
}

fn bus_factor(op: &str, n: f64) -> f64 {
    match op {
        "allreduce" => 2.0 * (n - 1.0) / n,
        _ => (n - 1.0) / n,
    }
}

/// Mean microseconds per call of `op` for each size, on this member.
fn time_manta(comm: &Communicator, op: &str, sizes: &[u64]) -> Vec<f64> {
    let n = comm.world_size() as u64;
    sizes
        .iter()
        .map(|&bytes| {
            let c = count(op, bytes, n) as usize;
            let input = vec![
                1.0f32;
                if op == "reduce_scatter" {
                    c * n as usize
                } else {
                    c
                }
            ];
            let mut out = vec![0.0f32; if op == "allgather" { c * n as usize } else { c }];
            let mut call = || match op {
                "allreduce" => comm.allreduce_into(&input, &mut out, ReduceOp::Sum),
                "allgather" => comm.allgather(&input, &mut out),
                _ => comm.reduce_scatter(&input, &mut out, ReduceOp::Sum),
            };
            for _ in 0..2 {
                call().expect("warm-up");
            }
            comm.barrier().expect("barrier");
            let k = iters(bytes);
            let t = Instant::now();
            for _ in 0..k {
                call().expect("collective");
            }
            t.elapsed().as_secs_f64() * 1e6 / k as f64
        })
        .collect()
}

/// A rank of the Manta side.
#[manta::actor]
struct Rank {
    comm: Option<Communicator>,
}

#[manta::actor]
impl Rank {
    fn new() -> Self {
        Rank { comm: None }
    }

    fn join(&mut self, name: String, rank: u64, world: u64) -> String {
        let c = Communicator::join(&name, rank as usize, world as usize).expect("join");
        let b = c.backend().to_owned();
        self.comm = Some(c);
        b
    }

    fn time(&self, op: String, sizes: Vec<u64>) -> Vec<f64> {
        time_manta(self.comm.as_ref().expect("joined"), &op, &sizes)
    }
}

/// `time µs` per op and size: the slowest rank's.
type Times = BTreeMap<String, Vec<f64>>;

fn slowest(per_rank: Vec<Vec<f64>>) -> Vec<f64> {
    let mut out = per_rank[0].clone();
    for r in &per_rank[1..] {
        for (o, t) in out.iter_mut().zip(r) {
            *o = o.max(*t);
        }
    }
    out
}

fn manta_times(
    cluster: &LocalCluster,
    n: usize,
    ops: &[String],
    sizes: &[u64],
) -> Result<(String, Times)> {
    manta::init_with(cluster.config())?;
    let ranks: Vec<_> = (0..n)
        .map(|i| {
            Rank::options()
                .num_cpus(0.0)
                .resource(&format!("rank{i}"), 1.0)
                .remote()
        })
        .collect();
    let name = format!("bench-{n}-{}", std::process::id());
    let joins: Vec<_> = ranks
        .iter()
        .enumerate()
        .map(|(i, r)| r.join(name.clone(), i as u64, n as u64))
        .collect();
    let backend = manta::get_all(&joins)?.remove(0);
    let mut times = Times::new();
    for op in ops {
        let refs: Vec<_> = ranks
            .iter()
            .map(|r| r.time(op.clone(), sizes.to_vec()))
            .collect();
        times.insert(op.clone(), slowest(manta::get_all(&refs)?));
    }
    drop(ranks);
    manta::shutdown();
    Ok((backend, times))
}

/// Parses `<impl> <op> <bytes> <time_us>` lines (the MPI child's and the Gloo script's).
fn parse_lines(text: &str, who: &str) -> Times {
    let mut per: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4
            && f[0] == who
            && let (Ok(b), Ok(t)) = (f[2].parse::<u64>(), f[3].parse::<f64>())
        {
            let e = per
                .entry(f[1].to_owned())
                .or_default()
                .entry(b)
                .or_insert(0.0);
            *e = e.max(t);
        }
    }
    per.into_iter()
        .map(|(op, m)| (op, m.into_values().collect()))
        .collect()
}

fn mpi_times(n: usize, ops: &[String], sizes: &[u64]) -> Result<Times> {
    if !cfg!(feature = "mpi") {
        bail!("built without the `mpi` feature");
    }
    let exe = std::env::current_exe()?;
    let sizes_arg: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let out = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
        ])
        .arg(n.to_string())
        .arg(&exe)
        .env(
            CHILD_ENV,
            format!("mpi:{}:{}", ops.join(","), sizes_arg.join(",")),
        )
        .env_remove("MANTA_ADDRESS")
        .output()
        .context("running mpirun")?;
    if !out.status.success() {
        bail!("mpirun failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_lines(&String::from_utf8_lossy(&out.stdout), "mpi"))
}

/// The Gloo venv's python, if `scripts/compare-collectives` made one.
fn gloo_python() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gloo-venv/bin/python");
    p.exists().then_some(p)
}

/// Gloo: `n` processes of the script, rank i started by `launch(i)` (a namespace wrapper or
/// none), meeting at `master`.
fn gloo_times(
    n: usize,
    ops: &[String],
    sizes: &[u64],
    master: &str,
    wrap: &dyn Fn(usize) -> Vec<String>,
) -> Result<Times> {
    let python = gloo_python().context("no Gloo venv (scripts/compare-collectives makes it)")?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gloo_collectives.py");
    let sizes_arg: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let port = 29_500 + (std::process::id() % 1000) as u16;
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut argv = wrap(i);
            argv.push(python.display().to_string());
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..])
                .arg(&script)
                .args(["--ops", &ops.join(","), "--sizes", &sizes_arg.join(",")])
                .env("MASTER_ADDR", master)
                .env("MASTER_PORT", port.to_string())
                .env("RANK", i.to_string())
                .env("WORLD_SIZE", n.to_string())
                .stdout(std::process::Stdio::piped());
            c.spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut text = String::new();
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!("a Gloo rank failed");
        }
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(parse_lines(&text, "gloo"))
}

fn gbps(bytes: u64, us: f64) -> f64 {
    bytes as f64 / us / 1e3
}

/// Prints one table: Manta's columns in nccl-tests' format, then each baseline's time and
/// busbw and Manta's busbw ratio to it.
fn print_table(
    title: &str,
    n: usize,
    op: &str,
    sizes: &[u64],
    manta: &[f64],
    baselines: &[(&str, Option<&Vec<f64>>)],
) {
    println!("\n# {title}: {op}, {n} ranks");
    print!(
        "#{:>12} {:>12} {:>6} {:>6} {:>10} {:>8} {:>8}",
        "size", "count", "type", "redop", "time(us)", "algbw", "busbw"
    );
    for (name, _) in baselines {
        print!(
            " | {:>10} {:>8} {:>6}",
            format!("{name} us"),
            "busbw",
            "ratio"
        );
    }
    println!();
    let f = bus_factor(op, n as f64);
    for (i, &bytes) in sizes.iter().enumerate() {
        let c = count(op, bytes, n as u64);
        let size = size_of_count(op, c, n as u64);
        let redop = if op == "allgather" { "none" } else { "sum" };
        let algbw = gbps(size, manta[i]);
        print!(
            " {:>12} {:>12} {:>6} {:>6} {:>10.1} {:>8.2} {:>8.2}",
            size,
            c,
            "float",
            redop,
            manta[i],
            algbw,
            algbw * f
        );
        for (_, times) in baselines {
            match times.and_then(|t| t.get(i)) {
                Some(&t) => {
                    let bus = gbps(size, t) * f;
                    print!(" | {:>10.1} {:>8.2} {:>6.2}", t, bus, algbw * f / bus);
                }
                None => print!(" | {:>10} {:>8} {:>6}", "-", "-", "-"),
            }
        }
        println!();
    }
}

struct Args {
    modes: Vec<String>,
    /// Ranks per host in two-hosts (2 or more: the hierarchical backend).
    per_host: usize,
    ranks: Vec<usize>,
    ops: Vec<String>,
    sizes: Vec<u64>,
}

fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    Ok(num
        .parse::<u64>()
        .with_context(|| format!("{s:?} is not a size"))?
        * mult)
}

fn args() -> Result<Args> {
    let mut a = Args {
        modes: Vec::new(),
        per_host: 1,
        ranks: vec![2, 4],
        ops: OPS.iter().map(|s| s.to_string()).collect(),
        sizes: Vec::new(),
    };
    let (mut min, mut max) = (8u64, 64u64 << 20);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "one-node" | "two-hosts" => a.modes.push(arg),
            "--max-bytes" => max = parse_bytes(&it.next().context("--max-bytes N")?)?,
            "--min-bytes" => min = parse_bytes(&it.next().context("--min-bytes N")?)?,
            "--ranks" => {
                a.ranks = it
                    .next()
                    .context("--ranks 2,4")?
                    .split(',')
                    .map(|r| r.parse().context("--ranks"))
                    .collect::<Result<_>>()?
            }
            "--per-host" => a.per_host = it.next().context("--per-host N")?.parse()?,
            "--ops" => {
                a.ops = it
                    .next()
                    .context("--ops")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            _ => {} // cargo bench's own flags (`--bench`)
        }
    }
    if max > 1 << 30 {
        bail!("--max-bytes is at most 1G");
    }
    let mut s = min.max(8);
    while s <= max {
        a.sizes.push(s);
        s *= 4;
    }
    // The largest size asked for is always measured (`--max-bytes 1G` ends at 1 GiB, not at
    // the last power of 4 below it).
    if max >= min.max(8) && a.sizes.last() != Some(&max) {
        a.sizes.push(max);
    }
    if a.modes.is_empty() {
        a.modes = vec!["one-node".into(), "two-hosts".into()];
    }
    Ok(a)
}

/// The collective settings of this process's environment, passed on to the nodes.
fn passed_env() -> impl Iterator<Item = (String, String)> {
    ["MANTA_COLLECTIVE_CHUNK_BYTES", "MANTA_COLLECTIVE_BACKEND"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
}

fn one_node(a: &Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &n in &a.ranks {
        // Each rank's worker on its own core (round-robin), as an SPMD launch places ranks;
        // a node's workers would otherwise all take its first CPU.
        let node = |i: usize| NodeSpec {
            num_cpus: 1.0,
            resources: format!("rank{i}=1"),
            env: passed_env()
                .chain([("MANTA_CPU_AFFINITY".into(), (i % cores).to_string())])
                .collect(),
            ..NodeSpec::default()
        };
        let others: Vec<NodeSpec> = (1..n).map(node).collect();
        let cluster = LocalCluster::start(node(0), &others);
        let (backend, manta) = manta_times(&cluster, n, &a.ops, &a.sizes)?;
        drop(cluster);
        let mpi = mpi_times(n, &a.ops, &a.sizes)
            .map_err(|e| println!("# Open MPI skipped: {e:#}"))
            .ok();
        let gloo = gloo_times(n, &a.ops, &a.sizes, "127.0.0.1", &|_| Vec::new())
            .map_err(|e| println!("# Gloo skipped: {e:#}"))
            .ok();
        for op in &a.ops {
            print_table(
                &format!("one node, manta {backend}"),
                n,
                op,
                &a.sizes,
                &manta[op],
                &[
                    ("mpi", mpi.as_ref().and_then(|m| m.get(op))),
                    ("gloo", gloo.as_ref().and_then(|g| g.get(op))),
                ],
            );
        }
    }
    Ok(())
}

fn two_hosts(a: &Args) -> Result<()> {
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            println!("\n# two hosts: skipped ({e})");
            return Ok(());
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The raw baselines, twice: as the OS places the processes, and with each host's process
    // pinned to its own core (as the ranks are, one per host); the better of the two counts.
    let (raw_free, both_free, ar_free) = raw_tcp(&hosts, None, 47_200)?;
    let (raw_pinned, both_pinned, ar_pinned) = raw_tcp(&hosts, Some(cores), 47_210)?;
    let (raw, both, by_hand) = (
        raw_free.max(raw_pinned),
        both_free.max(both_pinned),
        ar_free.max(ar_pinned),
    );
    let p = a.per_host;
    let n = 2 * p;
    // Host i runs ranks i*p .. (i+1)*p in its one worker process, whose slots take the cores
    // in turn (one rank per host: each host's rank on its own core).
    let node = |i: usize| NodeSpec {
        num_cpus: p as f64,
        resources: (i * p..(i + 1) * p)
            .map(|r| format!("rank{r}=1"))
            .collect::<Vec<_>>()
            .join(","),
        wrapper: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            hosts.host(i).netns().to_owned(),
        ],
        ip: Some(hosts.host(i).ip().to_string()),
        env: passed_env()
            .chain([(
                "MANTA_CPU_AFFINITY".into(),
                if p == 1 {
                    (i % cores).to_string()
                } else {
                    format!("0-{}", cores - 1)
                },
            )])
            .collect(),
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(node(0), &[node(1)]);
    let (backend, manta) = manta_times(&cluster, n, &a.ops, &a.sizes)?;
    drop(cluster);
    let master = hosts.host(0).ip().to_string();
    // Gloo finds its address from the host name (loopback in a namespace) unless told the
    // interface.
    let wrap = |r: usize| {
        vec![
            "ip".to_owned(),
            "netns".into(),
            "exec".into(),
            hosts.host(r / p).netns().to_owned(),
            "env".into(),
            "GLOO_SOCKET_IFNAME=eth0".into(),
        ]
    };
    let gloo = gloo_times(n, &a.ops, &a.sizes, &master, &wrap)
        .map_err(|e| println!("# Gloo skipped: {e:#}"))
        .ok();
    println!(
        "\n# two hosts: raw TCP stream A -> B {raw:.2} GB/s; both ways at once \
         {both:.2} GB/s each way (the better of: unplaced {raw_free:.2} and {both_free:.2}, \
         each host on its own core {raw_pinned:.2} and {both_pinned:.2})"
    );
    println!(
        "# two hosts: a raw 2-rank allreduce by hand (plain sockets, {} MiB float sum) \
         {by_hand:.2} GB/s busbw = {:.2} x the one-way stream (unplaced {ar_free:.2}, each \
         host on its own core {ar_pinned:.2})",
        RAW_AR_BYTES >> 20,
        by_hand / raw
    );
    for op in &a.ops {
        print_table(
            &format!("two hosts, {p} ranks each, manta {backend}"),
            n,
            op,
            &a.sizes,
            &manta[op],
            &[("gloo", gloo.as_ref().and_then(|g| g.get(op)))],
        );
        if op == "allreduce" {
            let last = a.sizes.len() - 1;
            let c = count(op, a.sizes[last], n as u64);
            let bus =
                gbps(size_of_count(op, c, n as u64), manta[op][last]) * bus_factor(op, n as f64);
            println!(
                "# allreduce busbw at the largest size / raw TCP stream: {:.2} one way, \
                 {:.2} both ways at once; / the raw allreduce by hand: {:.2}",
                bus / raw,
                bus / both,
                bus / by_hand
            );
        }
    }
    Ok(())
}

const RAW_BYTES: usize = 256 << 20;

/// A raw TCP stream from host 0 to host 1 and a raw exchange both ways at once, in GB/s (each
/// way), on ports from `port`; with `pin` (the cores), host `i`'s process runs on core
/// `i % cores` only (`taskset`).
fn raw_tcp(hosts: &netns::Hosts, pin: Option<usize>, port: u16) -> Result<(f64, f64, f64)> {
    let exe = std::env::current_exe()?;
    let command = |i: usize| {
        let mut c = match pin {
            Some(cores) => {
                let mut c = hosts.command(i, "taskset");
                c.arg("-c").arg((i % cores).to_string()).arg(&exe);
                c
            }
            None => hosts.command(i, &exe),
        };
        c.stdout(std::process::Stdio::piped());
        c
    };
    // A stream from A's namespace to B's.
    let b_addr = SocketAddr::new(hosts.host(1).ip().into(), port);
    let recv = command(1)
        .env(CHILD_ENV, format!("recv:{b_addr}"))
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = command(0)
        .env(CHILD_ENV, format!("send:{b_addr}"))
        .output()?;
    let _ = recv.wait_with_output();
    let raw = gbps_line(&out.stdout).context("raw stream figure")?;
    // Host 0 listens as `listen`, host 1 dials it as `dial`; the lower of their figures.
    let pair = |listen: &str, dial: &str, port: u16, what: &'static str| -> Result<f64> {
        let a_addr = SocketAddr::new(hosts.host(0).ip().into(), port);
        let listener = command(0)
            .env(CHILD_ENV, format!("{listen}:{a_addr}"))
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        let dialer = command(1)
            .env(CHILD_ENV, format!("{dial}:{a_addr}"))
            .output()?;
        let listened = listener.wait_with_output()?;
        gbps_line(&dialer.stdout)
            .zip(gbps_line(&listened.stdout))
            .map(|(a, b)| a.min(b))
            .context(what)
    };
    // Both ways at once, as a ring allreduce moves its bytes: each host sends to the other
    // while it receives from it. On a link that is full duplex in hardware this equals the
    // one-way stream; where the hosts' CPUs carry the link (namespaces on a bridge), both
    // directions share them.
    let both = pair("xchg-listen", "xchg-dial", port + 1, "raw exchange figure")?;
    // The minimal 2-rank allreduce by hand, on the same two hosts.
    let allreduce = pair("ar-listen", "ar-dial", port + 2, "raw allreduce figure")?;
    Ok((raw, both, allreduce))
}

/// The `gbps=` figure a raw-stream child printed.
fn gbps_line(out: &[u8]) -> Option<f64> {
    String::from_utf8_lossy(out)
        .trim()
        .strip_prefix("gbps=")
        .and_then(|v| v.parse().ok())
}

/// Sends [`RAW_BYTES`] on `s` while it receives as many; prints each way's rate.
fn exchange(s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let mut tx = s.try_clone()?;
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let buf = vec![7u8; 1 << 20];
        for _ in 0..RAW_BYTES >> 20 {
            tx.write_all(&buf)?;
        }
        Ok(())
    });
    let mut rx = &s;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < RAW_BYTES {
        let k = rx.read(&mut buf)?;
        if k == 0 {
            bail!("the peer closed early");
        }
        got += k;
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    println!(
        "gbps={:.3}",
        RAW_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9
    );
    Ok(())
}

/// Bytes per rank of the raw allreduce baseline, and its timed iterations (after one
/// warm-up).
const RAW_AR_BYTES: usize = 64 << 20;
const RAW_AR_ITERS: usize = 5;

/// The minimal 2-rank float-sum allreduce by hand on plain sockets (no framing, no header,
/// one connection): each side sends the half the other reduces while it receives the half
/// it reduces, summing each 256 KiB piece as it arrives (in cache) and sending the reduced
/// piece straight back (pipelined: piece `c` of the half it sends, then reduced piece
/// `c - 1`), while it receives the other's reduced pieces into place. Prints its busbw
/// (nccl-tests' for 2 ranks: the vector's bytes over the time), the median of
/// [`RAW_AR_ITERS`].
fn raw_allreduce(s: TcpStream, low: bool) -> Result<()> {
    use std::sync::{Condvar, Mutex};
    const PIECE: usize = (256 << 10) / 4;
    s.set_nodelay(true)?;
    let n = RAW_AR_BYTES / 4;
    let mut v = vec![1f32; n];
    let mut back = vec![0f32; n / 2];
    let mut piece = vec![0f32; PIECE];
    let mut tx = s.try_clone()?;
    let mut rx = &s;
    let mut rates = Vec::new();
    for it in 0..=RAW_AR_ITERS {
        let t = Instant::now();
        let (lo, hi) = v.split_at_mut(n / 2);
        let (mine, theirs) = if low { (lo, hi) } else { (hi, lo) };
        let mine: Vec<Mutex<&mut [f32]>> = mine.chunks_mut(PIECE).map(Mutex::new).collect();
        let theirs = &*theirs;
        let k = mine.len();
        let reduced = (Mutex::new(0usize), Condvar::new());
        std::thread::scope(|scope| -> Result<()> {
            let (tx, mine, reduced) = (&mut tx, &mine, &reduced);
            let sender = scope.spawn(move || -> Result<()> {
                for c in 0..=k {
                    if c < k {
                        let end = ((c + 1) * PIECE).min(theirs.len());
                        tx.write_all(bytemuck::cast_slice(&theirs[c * PIECE..end]))?;
                    }
                    if c >= 1 {
                        let mut done = reduced.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        while *done < c {
                            done = reduced
                                .1
                                .wait(done)
                                .map_err(|_| anyhow::anyhow!("poisoned"))?;
                        }
                        drop(done);
                        let m = mine[c - 1]
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?;
                        tx.write_all(bytemuck::cast_slice(&m[..]))?;
                    }
                }
                Ok(())
            });
            for c in 0..=k {
                if c < k {
                    let mut m = mine[c].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let got = &mut piece[..m.len()];
                    rx.read_exact(bytemuck::cast_slice_mut(got))?;
                    m.iter_mut().zip(got.iter()).for_each(|(a, b)| *a += b);
                    drop(m);
                    *reduced.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = c + 1;
                    reduced.1.notify_one();
                }
                if c >= 1 {
                    let end = (c * PIECE).min(back.len());
                    rx.read_exact(bytemuck::cast_slice_mut(&mut back[(c - 1) * PIECE..end]))?;
                }
            }
            sender
                .join()
                .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
            Ok(())
        })?;
        if it > 0 {
            rates.push(RAW_AR_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        // This side's reduced half in place, the other's received into `back`.
        let reduced_here = if low { &v[..n / 2] } else { &v[n / 2..] };
        if reduced_here.iter().chain(&back).any(|&x| x != 2.0) {
            bail!("the raw allreduce computed a wrong sum");
        }
        v.fill(1.0);
    }
    rates.sort_by(f64::total_cmp);
    println!("gbps={:.3}", rates[rates.len() / 2]);
    Ok(())
}

/// Connects to the child listening at `addr`, retrying for up to 10 s while it starts.
fn dial(addr: &str) -> Result<TcpStream> {
    let addr: SocketAddr = addr.parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.into()),
        }
    }
}

fn child(mode: &str) -> Result<()> {
    if let Some(addr) = mode.strip_prefix("recv:") {
        let listener = TcpListener::bind(addr)?;
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < RAW_BYTES {
            let k = s.read(&mut buf)?;
            if k == 0 {
                bail!("sender closed early");
            }
            got += k;
        }
        s.write_all(&[1])?;
        return Ok(());
    }
    if let Some(addr) = mode.strip_prefix("send:") {
        let mut s = dial(addr)?;
        let buf = vec![7u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..RAW_BYTES >> 20 {
            s.write_all(&buf)?;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        println!(
            "gbps={:.3}",
            RAW_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9
        );
        return Ok(());
    }
    if let Some(addr) = mode.strip_prefix("xchg-listen:") {
        let (s, _) = TcpListener::bind(addr)?.accept()?;
        return exchange(s);
    }
    if let Some(addr) = mode.strip_prefix("xchg-dial:") {
        return exchange(dial(addr)?);
    }
    if let Some(addr) = mode.strip_prefix("ar-listen:") {
        let (s, _) = TcpListener::bind(addr)?.accept()?;
        return raw_allreduce(s, true);
    }
    if let Some(addr) = mode.strip_prefix("ar-dial:") {
        return raw_allreduce(dial(addr)?, false);
    }
    if let Some(spec) = mode.strip_prefix("mpi:") {
        return mpi_child(spec);
    }
    bail!("unknown child mode {mode:?}")
}

#[cfg(feature = "mpi")]
fn mpi_child(spec: &str) -> Result<()> {
    use mpi::collective::SystemOperation;
    use mpi::traits::*;
    let (ops, sizes) = spec.split_once(':').context("mpi:<ops>:<sizes>")?;
    let sizes: Vec<u64> = sizes
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let universe = mpi::initialize().context("MPI_Init")?;
    let world = universe.world();
    let n = world.size() as u64;
    for op in ops.split(',') {
        for &bytes in &sizes {
            let c = count(op, bytes, n) as usize;
            let input = vec![
                1.0f32;
                if op == "reduce_scatter" {
                    c * n as usize
                } else {
                    c
                }
            ];
            let mut out = vec![0.0f32; if op == "allgather" { c * n as usize } else { c }];
            let mut call = || match op {
                "allreduce" => {
                    world.all_reduce_into(&input[..], &mut out[..], SystemOperation::sum())
                }
                "allgather" => world.all_gather_into(&input[..], &mut out[..]),
                _ => world.reduce_scatter_block_into(
                    &input[..],
                    &mut out[..],
                    SystemOperation::sum(),
                ),
            };
            call();
            call();
            world.barrier();
            let k = iters(bytes);
            let t = Instant::now();
            for _ in 0..k {
                call();
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / k as f64;
            println!("mpi {op} {bytes} {us:.3}");
        }
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn mpi_child(_spec: &str) -> Result<()> {
    bail!("built without the `mpi` feature")
}

fn main() -> Result<()> {
    serve_if_worker();
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child(&mode);
    }
    if std::env::args().any(|a| a == "--list") {
        println!("collectives: benchmark");
        return Ok(());
    }
    let a = args()?;
    println!(
        "# manta collectives beside Open MPI and Gloo, {} ({} cores)",
        std::env::var("MANTA_BENCH_DATE").unwrap_or_default(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if a.modes.iter().any(|m| m == "one-node") {
        one_node(&a)?;
    }
    if a.modes.iter().any(|m| m == "two-hosts") {
        two_hosts(&a)?;
    }
    Ok(())
}
