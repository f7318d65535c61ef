//! SPMD launch under the real launchers: this test binary, started by `srun -n 3` or
//! `mpirun -np 3`, brings up a whole cluster from `manta::init()` (rank 0 head and driver, one
//! node for the machine, every rank a worker process of it) and runs tasks, actors and object
//! transfers across ranks. Also: each rank's worker pinned to its own CPUs, two jobs at once on
//! one node, and a job whose rank dies (non-zero exit, nothing left).
//!
//! Needs a running single-node Slurm (`scripts/slurm-up`) and Open MPI (`scripts/setup --mpi`);
//! `scripts/test` brings both up. Where `srun`/`mpirun` are missing the tests print why and
//! pass, so a developer machine without them can still run the rest of the suite.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// The calling thread's allowed CPUs as the kernel lists them (`0-3,8`).
fn thread_cpus() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
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

#[manta::actor]
struct Tally {
    n: u64,
}

#[manta::actor]
impl Tally {
    fn new() -> Self {
        Tally { n: 0 }
    }
    fn add(&mut self, x: u64) -> u64 {
        self.n += x;
        self.n
    }
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

/// Three ranks started as `srun -n 3` starts them on one node (its environment, set by hand,
/// so the job's identity and hence its head's port are known in advance) while another
/// service holds that port: the head moves to the job's next port and the ranks find it.
#[test]
fn a_taken_head_port_moves_the_head_on() {
    if let Ok(kind) = std::env::var(JOB_ENV) {
        return job(&kind);
    }
    let name = "a_taken_head_port_moves_the_head_on";
    let job_id = 900_000_000 + std::process::id();
    let port = manta_launcher::spmd::port_for(&format!("slurm-{job_id}.0"));
    // The squatter accepts and hangs up, as a foreign service would.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("taking the port");
    std::thread::spawn(move || {
        for conn in squatter.incoming() {
            drop(conn);
        }
    });
    let exe = std::env::current_exe().unwrap();
    let ranks: Vec<_> = (0..3)
        .map(|rank| {
            let mut cmd = Command::new("timeout");
            cmd.arg("120")
                .arg(&exe)
                .args([name, "--exact", "--nocapture"])
                .env(JOB_ENV, "work")
                .env(TAG_ENV, tag(name))
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_LOCALID", rank.to_string())
                .env("SLURM_NODEID", "0")
                .env("SLURM_NTASKS", "3")
                .env("SLURM_STEP_TASKS_PER_NODE", "3")
                .env("SLURM_JOB_ID", job_id.to_string())
                .env("SLURM_STEP_ID", "0")
                .env("SLURM_STEP_NODELIST", "localhost")
                .env("SLURM_CPUS_ON_NODE", "3");
            for k in ["MANTA_ADDRESS", "MANTA_TOKEN", "MANTA_WORKER_RAYLET"] {
                cmd.env_remove(k);
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting a rank")
        })
        .collect();
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
