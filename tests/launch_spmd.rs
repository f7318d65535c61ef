//! SPMD launch under the real launchers: this test binary, started by `srun -n 3` or
//! `mpirun -np 3`, brings up a whole cluster from `manta::init()` (rank 0 head and driver, one
//! node for the machine, every rank a worker process of it) and runs tasks, actors and object
//! transfers across ranks. Also: each rank's worker pinned to its own CPUs, two jobs at once on
//! one node, a job whose rank dies (non-zero exit, nothing left), and four ranks on two hosts
//! (network namespaces) started with the environment `srun -N 2 -n 4` gives them.
//!
//! Needs a running single-node Slurm (`scripts/slurm-up`) and Open MPI (`scripts/setup --mpi`);
//! `scripts/test` brings both up; the two-host test needs root and `ip` (iproute2). Where
//! these are missing the tests print why and pass, so a developer machine without them can
//! still run the rest of the suite.

mod common;
mod netns;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cluster::Tally;
use common::thread_cpus;

/// Set on the processes the launchers start: which job body to run.
const JOB_ENV: &str = "MANTA_TEST_SPMD_JOB";

fn rank_var() -> Option<u32> {
    ["SLURM_PROCID", "OMPI_COMM_WORLD_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The node and the worker process a task ran in.
#[manta::remote]
fn where_am_i(pause_ms: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    let node = manta::status()
        .unwrap()
        .node_id
        .expect("tasks run on a node");
    (node, std::process::id())
}

/// The size of the node arena this process's store allocates in (`None`: an arena of its own).
fn my_node_arena() -> Option<usize> {
    manta::status()
        .ok()
        .and_then(|s| s.object_store)
        .and_then(|s| s.node_capacity)
}

/// A worker's pid and the node arena its store allocates in.
#[manta::remote]
fn node_arena_of(pause_ms: u64) -> (u32, Option<usize>) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (std::process::id(), my_node_arena())
}

/// The worker process a task ran in and the CPUs its slot thread may use.
#[manta::remote]
fn worker_and_cpus(pause_ms: u64) -> (u32, String) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (std::process::id(), thread_cpus())
}

/// Each rank's worker got its own CPUs: disjoint sets when the node has a CPU per rank; with
/// fewer CPUs than ranks (this 2-CPU machine runs 3), one CPU each, shared, all allowed ones.
fn check_rank_cpus(ranks: usize) {
    let allowed: manta::CpuList = thread_cpus().parse().expect("the kernel's CPU list");
    let refs: Vec<_> = (0..24).map(|_| worker_and_cpus::remote(50u64)).collect();
    let mut per_node: std::collections::BTreeMap<u32, BTreeSet<usize>> = Default::default();
    for (pid, cpus) in manta::get_all(&refs).unwrap() {
        let cpus: manta::CpuList = cpus.parse().expect("the kernel's CPU list");
        per_node.entry(pid).or_default().extend(cpus.0);
    }
    let sets: Vec<&BTreeSet<usize>> = per_node.values().collect();
    for set in &sets {
        assert!(
            !set.is_empty() && set.iter().all(|c| allowed.0.contains(c)),
            "{per_node:?}"
        );
    }
    if allowed.0.len() >= ranks {
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: BTreeSet<usize> = sets.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(total, union.len(), "ranks' CPUs overlap: {per_node:?}");
    } else {
        assert!(sets.iter().all(|s| s.len() == 1), "{per_node:?}");
    }
    println!("spmd-job: rank cpus {per_node:?} of {allowed}");
}

#[manta::remote]
fn sum(v: Vec<u32>) -> u64 {
    v.iter().map(|x| u64::from(*x)).sum()
}

#[manta::remote]
fn fill(n: usize) -> Vec<u8> {
    vec![9u8; n]
}

/// What a rank does when a launcher started it for this test.
fn job(kind: &str) {
    if kind == "dies" && rank_var() == Some(2) && std::env::var_os("MANTA_WORKER_RAYLET").is_none()
    {
        // Rank 2 dies a while after joining, while the driver is waiting on work.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            std::process::abort();
        });
    }
    manta::init().expect("init under the launcher");
    // Only rank 0 (the driver) gets here; the other ranks serve inside `init` and exit.
    let status = manta::status().unwrap();
    assert!(
        status.cluster.is_some(),
        "rank 0 is the driver of a cluster"
    );
    match kind {
        "driver" => {
            // A driver of a cluster started with `manta start`: one node here.
            let refs: Vec<_> = (0..8).map(|_| where_am_i::remote(10u64)).collect();
            assert_eq!(manta::get_all(&refs).unwrap().len(), 8);
            println!("spmd-job: ok driver");
        }
        "work" => {
            let ran = manta::get_all(
                &(0..24)
                    .map(|_| where_am_i::remote(100u64))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            let nodes: BTreeSet<u64> = ran.iter().map(|(n, _)| *n).collect();
            let workers: BTreeSet<u32> = ran.iter().map(|(_, p)| *p).collect();
            // What `manta status` shows: one node per machine, every rank a worker of it.
            let state = manta_launcher::spmd_cluster_state()
                .expect("rank 0 holds the head")
                .expect("the node table");
            let alive: Vec<_> = state.nodes.iter().filter(|n| n.alive).collect();
            assert_eq!(alive.len(), nodes.len(), "{alive:?}");
            assert_eq!(
                alive.iter().map(|n| n.workers).sum::<u32>() as usize,
                workers.len(),
                "{alive:?}"
            );
            // Every rank allocates in its node's one arena, the driver too (one machine here).
            let arenas = manta::get_all(
                &(0..12)
                    .map(|_| node_arena_of::remote(50u64))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            let node_store = alive[0]
                .resources
                .iter()
                .find(|(k, _, _)| k == "object_store_memory")
                .map(|(_, _, total)| *total as usize);
            assert!(node_store.is_some(), "{:?}", alive[0].resources);
            assert!(
                arenas.iter().all(|(_, a)| *a == node_store),
                "{arenas:?} vs {node_store:?}"
            );
            assert_eq!(my_node_arena(), node_store, "the driver's store");
            // Before the actor below takes a node's only CPU for the rest of the job.
            check_rank_cpus(3);
            let data: Vec<u32> = (0..(8u32 << 20)).collect();
            let expected: u64 = data.iter().map(|x| u64::from(*x)).sum();
            let big = manta::put(data).unwrap();
            let sums: Vec<_> = (0..3).map(|_| sum::remote(&big)).collect();
            for s in manta::get_all(&sums).unwrap() {
                assert_eq!(s, expected);
            }
            let filled = fill::remote(16usize << 20);
            assert!(filled.get_view().unwrap().iter().all(|b| *b == 9));
            let tally = Tally::options().num_cpus(1.0).remote();
            let calls: Vec<_> = (1..=10u64).map(|i| tally.add(i)).collect();
            assert_eq!(calls[9].get().unwrap(), 55);
            println!(
                "spmd-job: ok nodes={} workers={} exchange={}",
                nodes.len(),
                workers.len(),
                manta_launcher::spmd::exchange().unwrap_or("none")
            );
        }
        "hosts" => hosts_job(),
        "dies" => {
            // Long enough for rank 2 to die under us: the step must then end non-zero.
            let refs: Vec<_> = (0..60).map(|_| where_am_i::remote(200u64)).collect();
            let r = manta::get_all(&refs);
            println!("spmd-job: finished {:?}", r.map(|v| v.len()));
        }
        other => panic!("unknown job {other}"),
    }
    manta::shutdown();
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs this test binary (filtered to `test`) under a launcher as job `kind`.
fn launch(launcher: &[&str], test: &str, kind: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut argv: Vec<String> = launcher.iter().map(|s| s.to_string()).collect();
    argv.push(exe.display().to_string());
    argv.extend([test.to_owned(), "--exact".into(), "--nocapture".into()]);
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .args(&argv)
        .env(JOB_ENV, kind)
        .env(TAG_ENV, tag(test));
    // The job runs as its own cluster: nothing of ours leaks in.
    for k in ["MANTA_ADDRESS", "MANTA_TOKEN", "MANTA_WORKER_RAYLET"] {
        cmd.env_remove(k);
    }
    cmd.output().expect("running the launcher")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `srun -n 3` with MPI plugin `mpi` (`none`: no PMIx server, the environment route).
fn srun(mpi: &'static str) -> Option<Vec<&'static str>> {
    if !have("srun") {
        eprintln!("skipped: no srun (run scripts/slurm-up)");
        return None;
    }
    let plugin = match mpi {
        "pmix" => "--mpi=pmix",
        _ => "--mpi=none",
    };
    Some(vec!["srun", plugin, "-n", "3", "--kill-on-bad-exit=1"])
}

/// The route `exchange` a job of this build takes with a PMIx server.
fn with_pmix() -> &'static str {
    if cfg!(feature = "mpi") {
        "exchange=mpi"
    } else {
        "exchange=environment"
    }
}

fn mpirun() -> Option<Vec<&'static str>> {
    if !have("mpirun") {
        eprintln!("skipped: no mpirun (run scripts/setup --mpi)");
        return None;
    }
    Some(vec![
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "3",
    ])
}

/// Marks every process of one test's jobs (launchers pass the environment on).
const TAG_ENV: &str = "MANTA_TEST_SPMD_TAG";

fn tag(test: &str) -> String {
    format!("{}-{test}", std::process::id())
}

/// Processes of `test`'s jobs still running.
fn leftovers(test: &str) -> Vec<u32> {
    let needle = format!("{TAG_ENV}={}", tag(test));
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn no_leftovers(test: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(test);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn srun_three_ranks_run_tasks_actors_and_objects() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let Some(srun) = srun("none") else { return };
    let out = launch(
        &srun,
        "srun_three_ranks_run_tasks_actors_and_objects",
        "work",
    );
    let t = text(&out);
    assert!(out.status.success(), "srun failed: {}\n{t}", out.status);
    assert!(
        t.contains("spmd-job: ok nodes=1 workers=3 exchange=environment"),
        "{t}"
    );
    no_leftovers("srun_three_ranks_run_tasks_actors_and_objects");
}

#[test]
fn srun_with_pmix_exchanges_through_mpi() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let Some(srun) = srun("pmix") else { return };
    let name = "srun_with_pmix_exchanges_through_mpi";
    let out = launch(&srun, name, "work");
    let t = text(&out);
    assert!(out.status.success(), "srun failed: {}\n{t}", out.status);
    assert!(
        t.contains(&format!("spmd-job: ok nodes=1 workers=3 {}", with_pmix())),
        "{t}"
    );
    no_leftovers(name);
}

#[test]
fn mpirun_three_ranks_run_tasks_actors_and_objects() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let Some(mpirun) = mpirun() else { return };
    let out = launch(
        &mpirun,
        "mpirun_three_ranks_run_tasks_actors_and_objects",
        "work",
    );
    let t = text(&out);
    assert!(out.status.success(), "mpirun failed: {}\n{t}", out.status);
    assert!(
        t.contains(&format!("spmd-job: ok nodes=1 workers=3 {}", with_pmix())),
        "{t}"
    );
    no_leftovers("mpirun_three_ranks_run_tasks_actors_and_objects");
}

#[test]
fn two_srun_jobs_at_once_do_not_collide() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    // The environment route, whose head ports derive from the job's identity.
    let Some(srun) = srun("none") else { return };
    let name = "two_srun_jobs_at_once_do_not_collide";
    let a = {
        let srun = srun.clone();
        std::thread::spawn(move || launch(&srun, name, "work"))
    };
    let b = launch(&srun, name, "work");
    let a = a.join().unwrap();
    for out in [a, b] {
        let t = text(&out);
        assert!(out.status.success(), "srun failed: {}\n{t}", out.status);
        assert!(t.contains("spmd-job: ok"), "{t}");
    }
    no_leftovers(name);
}

/// One rank as `srun` describes it, for tests that start the ranks themselves (to know the
/// job's identity in advance, or to place ranks in network namespaces).
struct SrunRank<'a> {
    test: &'a str,
    kind: &'a str,
    job_id: u32,
    rank: u32,
    local: u32,
    node: u32,
    ntasks: u32,
    tasks_per_node: &'a str,
    nodelist: &'a str,
    cpus_on_node: &'a str,
}

impl SrunRank<'_> {
    /// Points `cmd` (a `timeout` wrapper) at this test binary with the rank's environment,
    /// and nothing of the caller's cluster, MPI or GPU settings.
    fn apply(&self, cmd: &mut Command) {
        cmd.arg("120")
            .arg(std::env::current_exe().unwrap())
            .args([self.test, "--exact", "--nocapture"])
            .env(JOB_ENV, self.kind)
            .env(TAG_ENV, tag(self.test))
            .env("SLURM_PROCID", self.rank.to_string())
            .env("SLURM_LOCALID", self.local.to_string())
            .env("SLURM_NODEID", self.node.to_string())
            .env("SLURM_NTASKS", self.ntasks.to_string())
            .env("SLURM_STEP_TASKS_PER_NODE", self.tasks_per_node)
            .env("SLURM_JOB_ID", self.job_id.to_string())
            .env("SLURM_STEP_ID", "0")
            .env("SLURM_STEP_NODELIST", self.nodelist)
            .env("SLURM_CPUS_ON_NODE", self.cpus_on_node)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for k in [
            "MANTA_ADDRESS",
            "MANTA_TOKEN",
            "MANTA_WORKER_RAYLET",
            "MANTA_CPU_AFFINITY",
            "PMIX_RANK",
            "SLURM_STEP_GPUS",
            "SLURM_JOB_GPUS",
        ] {
            cmd.env_remove(k);
        }
    }
}

/// Waits for every rank and checks each exited 0; returns their outputs.
fn all_succeed(ranks: Vec<std::process::Child>) -> Vec<Output> {
    let outs: Vec<Output> = ranks
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (rank, out) in outs.iter().enumerate() {
        assert!(
            out.status.success(),
            "rank {rank}: {}\n{}",
            out.status,
            text(out)
        );
    }
    outs
}

/// Three ranks started as `srun -n 3` starts them on one node (its environment, set by hand,
/// so the job's identity and hence its head's port are known in advance) while another
/// service holds that port: the head moves to the job's next port and the ranks find it.
#[test]
fn a_taken_head_port_moves_the_head_on() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let name = "a_taken_head_port_moves_the_head_on";
    // A job whose head port is free for the squatter to take (another process may hold the
    // first one tried: the suite runs in parallel).
    let (job_id, squatter) = (0..32u32)
        .find_map(|k| {
            let job_id = 900_000_000u32.wrapping_add(std::process::id().wrapping_mul(32)) + k;
            let port = manta_launcher::spmd::port_for(&format!("slurm-{job_id}.0"));
            std::net::TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|l| (job_id, l))
        })
        .expect("taking a job's head port");
    // The squatter accepts and hangs up, as a foreign service would.
    std::thread::spawn(move || {
        for conn in squatter.incoming() {
            drop(conn);
        }
    });
    let ranks: Vec<_> = (0..3)
        .map(|rank| {
            let mut cmd = Command::new("timeout");
            SrunRank {
                test: name,
                kind: "work",
                job_id,
                rank,
                local: rank,
                node: 0,
                ntasks: 3,
                tasks_per_node: "3",
                nodelist: "localhost",
                cpus_on_node: "3",
            }
            .apply(&mut cmd);
            cmd.spawn().expect("starting a rank")
        })
        .collect();
    let outs = all_succeed(ranks);
    let t = text(&outs[0]);
    assert!(
        t.contains("spmd-job: ok nodes=1 workers=3 exchange=environment"),
        "{t}"
    );
    no_leftovers(name);
}

#[test]
fn a_dead_rank_ends_the_step_with_an_error_and_leaves_nothing() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let Some(srun) = srun("pmix") else { return };
    let t0 = Instant::now();
    let out = launch(
        &srun,
        "a_dead_rank_ends_the_step_with_an_error_and_leaves_nothing",
        "dies",
    );
    let t = text(&out);
    assert!(!out.status.success(), "the step should fail:\n{t}");
    assert_ne!(
        out.status.code(),
        Some(124),
        "the step hung until timeout:\n{t}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    no_leftovers("a_dead_rank_ends_the_step_with_an_error_and_leaves_nothing");
}

/// Submits `script` with `sbatch --wait`, this test binary as the job's `APP`.
fn sbatch(script: &str, test: &str, kind: &str) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let out_file = std::env::temp_dir().join(format!("{}.out", tag(test)));
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("timeout")
        .args(["180", "sbatch", "--wait", "--quiet", "-o"])
        .arg(&out_file)
        .arg(format!("{root}/scripts/sbatch/{script}"))
        .args([test, "--exact", "--nocapture"])
        .env("APP", &exe)
        .env("MANTA", env!("CARGO_BIN_EXE_manta"))
        .env(JOB_ENV, kind)
        .env(TAG_ENV, tag(test))
        .current_dir(root)
        .status()
        .expect("running sbatch");
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    (status.success(), text)
}

#[test]
fn sbatch_templates_run_both_routes() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    if !have("sbatch") {
        eprintln!("skipped: no sbatch (run scripts/slurm-up)");
        return;
    }
    let name = "sbatch_templates_run_both_routes";
    let (ok, text) = sbatch("spmd.sh", name, "work");
    assert!(ok, "the SPMD template failed:\n{text}");
    assert!(text.contains("spmd-job: ok nodes=1 workers=3"), "{text}");
    // Route 2: `manta start` through srun, then this binary as the driver (MANTA_ADDRESS).
    let (ok, text) = sbatch("ray-style.sh", name, "driver");
    assert!(ok, "the Ray-style template failed:\n{text}");
    assert!(text.contains("spmd-job: ok"), "{text}");
    no_leftovers(name);
}

/// Where an actor lives: its node and worker process.
#[manta::actor]
struct Resident {}

#[manta::actor]
impl Resident {
    fn new() -> Self {
        Resident {}
    }
    fn place(&self) -> (u64, u32) {
        let node = manta::status()
            .unwrap()
            .node_id
            .expect("actors live on a node");
        (node, std::process::id())
    }
}

/// Whether `r` failed as infeasible (no worker anywhere holds what it asks).
fn infeasible<T: std::fmt::Debug>(r: Result<T, manta::Error>) -> bool {
    match r {
        Err(manta::Error::Infeasible { .. }) => true,
        other => {
            eprintln!("spmd-job: expected an infeasible request, got {other:?}");
            false
        }
    }
}

/// The driver of the two-host job: 4 ranks, 2 per host, `SLURM_CPUS_ON_NODE=4` (2 CPUs per
/// rank), host B with two (count-only) GPUs, one per rank there.
fn hosts_job() {
    // Host B's node: the one with GPUs (its raylet registered both ranks' shares).
    let b = {
        let state = manta_launcher::spmd_cluster_state()
            .expect("rank 0 holds the head")
            .expect("the node table");
        state
            .nodes
            .into_iter()
            .find(|n| n.resources.iter().any(|r| r.0 == "GPU" && r.2 == 2.0))
            .expect("host B's node has its two GPUs")
    };

    // A node's totals are not one worker's: 3 CPUs or 2 GPUs fit no single rank's share.
    assert!(infeasible(
        where_am_i::options().num_cpus(3.0).remote(0u64).get()
    ));
    assert!(infeasible(
        where_am_i::options().num_gpus(2.0).remote(0u64).get()
    ));
    // GPU work goes to the GPU host only; objects move both ways between the hosts.
    let (node, _) = where_am_i::options()
        .num_gpus(1.0)
        .remote(0u64)
        .get()
        .unwrap();
    assert_eq!(node, b.node_id, "GPU work ran on the GPU-less host");
    let data: Vec<u32> = (0..(4u32 << 20)).collect();
    let expected: u64 = data.iter().map(|x| u64::from(*x)).sum();
    let big = manta::put(data).unwrap();
    let remote_sum = sum::options().num_gpus(1.0).remote(&big);
    assert_eq!(remote_sum.get().unwrap(), expected, "host A -> host B");
    let filled = fill::options().num_gpus(1.0).remote(16usize << 20);
    let view = filled.get_view().unwrap();
    assert!(
        view.len() == 16 << 20 && view.iter().all(|x| *x == 9),
        "host B -> host A"
    );
    drop(view);

    // Two GPU actors: one on each of host B's workers (each has one GPU).
    let gpu_actors: Vec<_> = (0..2)
        .map(|_| Resident::options().num_cpus(0.0).num_gpus(1.0).remote())
        .collect();
    let gpu_places: Vec<(u64, u32)> = gpu_actors
        .iter()
        .map(|r| r.place().get().unwrap())
        .collect();
    assert!(
        gpu_places.iter().all(|(n, _)| *n == b.node_id),
        "{gpu_places:?}"
    );
    assert_ne!(gpu_places[0].1, gpu_places[1].1, "{gpu_places:?}");
    // Four actors of 2 CPUs each (a whole rank's share): one in every worker process.
    let cpu_actors: Vec<_> = (0..4)
        .map(|_| Resident::options().num_cpus(2.0).remote())
        .collect();
    let places: Vec<(u64, u32)> = cpu_actors
        .iter()
        .map(|r| r.place().get().unwrap())
        .collect();
    let pids: BTreeSet<u32> = places.iter().map(|(_, p)| *p).collect();
    let nodes: BTreeSet<u64> = places.iter().map(|(n, _)| *n).collect();
    assert_eq!((pids.len(), nodes.len()), (4, 2), "{places:?}");
    for (_, pid) in &gpu_places {
        assert!(pids.contains(pid), "{gpu_places:?} vs {places:?}");
    }
    let state = manta_launcher::spmd_cluster_state()
        .expect("rank 0 holds the head")
        .expect("the node table");
    let alive: Vec<_> = state.nodes.iter().filter(|n| n.alive).collect();
    let total = |resources: &[(String, f64, f64)], name: &str| {
        resources.iter().find(|r| r.0 == name).map_or(0.0, |r| r.2)
    };
    // What `manta status` shows: one node per host, each with its two ranks' shares together
    // and two worker processes (rank 0's started by its raylet at the first placement).
    assert_eq!(alive.len(), 2, "{alive:?}");
    assert!(alive.iter().all(|n| n.workers == 2), "{alive:?}");
    assert!(
        alive.iter().all(|n| total(&n.resources, "CPU") == 4.0),
        "{alive:?}"
    );
    let gpus: Vec<f64> = alive.iter().map(|n| total(&n.resources, "GPU")).collect();
    assert!(gpus.contains(&0.0) && gpus.contains(&2.0), "{alive:?}");
    assert_ne!(alive[0].host_id, alive[1].host_id, "{alive:?}");

    println!(
        "spmd-job: ok hosts nodes={} workers={}",
        nodes.len(),
        pids.len()
    );
}

/// Four ranks on two hosts (network namespaces), started as `srun -N 2 -n 4 --mpi=none`
/// starts them: its environment, set by hand, host A first in the node list. Host A's
/// first rank is the head and driver, host B's first rank hosts B's raylet, the second rank
/// on each host joins its host's raylet as a worker.
#[test]
fn two_hosts_four_ranks_one_node_per_host() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let name = "two_hosts_four_ranks_one_node_per_host";
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let job_id = 910_000_000 + std::process::id();
    let nodelist = format!("{},{}", hosts.host(0).ip(), hosts.host(1).ip());
    let ranks: Vec<_> = (0..4u32)
        .map(|rank| {
            let (node, local) = (rank / 2, rank % 2);
            let mut cmd = hosts.command(node as usize, "timeout");
            SrunRank {
                test: name,
                kind: "hosts",
                job_id,
                rank,
                local,
                node,
                ntasks: 4,
                tasks_per_node: "2(x2)",
                nodelist: &nodelist,
                cpus_on_node: "4",
            }
            .apply(&mut cmd);
            // Host B has two GPUs (named by UUID: counted, not looked up on the PCI bus).
            if node == 1 {
                cmd.env("CUDA_VISIBLE_DEVICES", "GPU-manta-test-0,GPU-manta-test-1");
            } else {
                cmd.env_remove("CUDA_VISIBLE_DEVICES");
            }
            cmd.spawn().expect("starting a rank")
        })
        .collect();
    let outs = all_succeed(ranks);
    let t = text(&outs[0]);
    assert!(t.contains("spmd-job: ok hosts nodes=2 workers=4"), "{t}");
    no_leftovers(name);
    drop(hosts);
}
