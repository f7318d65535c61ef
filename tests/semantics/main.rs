//! Ray's semantics in every mode: one matrix of cases (tasks, actors, objects, wait/get,
//! cancel, kill, errors, nesting, resources), each run embedded, as the driver of a one-node
//! `manta start` cluster, as the driver of a three-node cluster (processes), and under
//! `srun -n 3`. One runtime or cluster per mode, reused across its cases; each case bounded in
//! time (`harness.rs`). A behaviour that differs between modes is a bug unless the README says
//! why; a case skipped in a mode names its reason, printed in the table.
//!
//! `MANTA_TEST_CASE=<substring>[,<substring>…]` runs only the cases whose name contains one.
//!
//! Cases live in one module per area; each module's `CASES` joins [`all_cases`].

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod actor_handles;
mod actors;
mod actors_concurrency;
mod api;
mod basics;
mod cancel;
mod cluster_objects;
mod error_kinds;
mod errors;
mod faults;
mod kill;
mod nesting;
mod placement_groups;
mod tasks;
mod validation;

use harness::{Case, Ctx, Mode, run_cases, start_cluster};

/// Every case of the matrix, in the order they run (one module a line).
#[rustfmt::skip]
fn all_cases() -> Vec<Case> {
    [
        basics::CASES,
        tasks::CASES,
        actors::CASES,
        actor_handles::CASES,
        actors_concurrency::CASES,
        api::CASES,
        cancel::CASES,
        cluster_objects::CASES,
        error_kinds::CASES,
        errors::CASES,
        faults::CASES,
        kill::CASES,
        nesting::CASES,
        placement_groups::CASES,
        validation::CASES,
    ]
    .concat()
}

/// Set on the ranks `srun` starts for the matrix.
const SRUN_ENV: &str = "MANTA_TEST_MATRIX_SRUN";

#[test]
fn embedded() {
    let rt = common::start(manta::Config::default().num_cpus(2.0));
    let ok = run_cases(
        Ctx {
            mode: Mode::Embedded,
            cpus: 2.0,
        },
        &all_cases(),
    );
    finish(ok, rt, None);
}

#[test]
fn one_node() {
    common::cluster::serve_if_worker();
    cluster_mode(Mode::OneNode);
}

#[test]
fn three_nodes() {
    common::cluster::serve_if_worker();
    cluster_mode(Mode::ThreeNodes);
}

fn cluster_mode(mode: Mode) {
    let cluster = start_cluster(mode);
    let rt = common::start(cluster.config());
    let ok = run_cases(Ctx { mode, cpus: 2.0 }, &all_cases());
    finish(ok, rt, Some(cluster));
}

/// Ends a mode: shuts the runtime down and stops the cluster when every case returned; when a
/// case hung, stops the cluster and leaves the process without a shutdown that could hang too.
fn finish(clean: bool, rt: common::Runtime, cluster: Option<common::cluster::LocalCluster>) {
    if clean {
        drop(rt);
        drop(cluster);
        return;
    }
    if let Some(c) = &cluster {
        c.dump_logs();
    }
    drop(cluster);
    eprintln!("semantics matrix: failures above");
    std::process::exit(1);
}

/// The matrix under `srun -n 3`: this binary, filtered to [`srun_rank`], on three ranks.
#[test]
fn srun() {
    if std::env::var_os(SRUN_ENV).is_some() {
        return;
    }
    let have_srun = std::process::Command::new("srun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_srun {
        eprintln!("skipped: no srun (run scripts/slurm-up)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("timeout")
        .args([
            "300",
            "srun",
            "--mpi=none",
            "-n",
            "3",
            "--kill-on-bad-exit=1",
        ])
        .arg(&exe)
        .args(["srun_rank", "--exact", "--nocapture"])
        .env(SRUN_ENV, "1")
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN")
        .env_remove("MANTA_WORKER_RAYLET")
        .output()
        .expect("running srun");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "srun matrix failed: {}", out.status);
    assert!(text.contains("==== srun:"), "rank 0 printed no table");
}

/// One rank of the srun matrix: rank 0 runs the cases as the driver; the others serve inside
/// `init` and exit there.
#[test]
fn srun_rank() {
    if std::env::var_os(SRUN_ENV).is_none() {
        return;
    }
    manta::init().expect("init under srun");
    // Three ranks on this 2-core machine: one CPU each (`launch_spmd` checks the shares).
    let ok = run_cases(
        Ctx {
            mode: Mode::Srun,
            cpus: 1.0,
        },
        &all_cases(),
    );
    if !ok {
        std::process::exit(1);
    }
    manta::shutdown();
}

/// The kill-mid-call scenario in a loop, for `scripts/stress-actor-kill` (not CI):
/// `MANTA_STRESS_MODE` (`embedded` or `one_node`), `MANTA_STRESS_CPUS`,
/// `MANTA_STRESS_ITERATIONS` (200), `MANTA_STRESS_ITERATION_TIMEOUT_S` (20). Fails on any hang or
/// failed iteration.
#[test]
#[ignore = "a stress loop: scripts/stress-actor-kill runs it"]
fn stress_actor_kill() {
    common::cluster::serve_if_worker();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let cpus: f64 = env("MANTA_STRESS_CPUS", "2")
        .parse()
        .expect("MANTA_STRESS_CPUS");
    let iterations: usize = env("MANTA_STRESS_ITERATIONS", "200")
        .parse()
        .expect("iterations");
    let bound: u64 = env("MANTA_STRESS_ITERATION_TIMEOUT_S", "20")
        .parse()
        .expect("timeout");
    let mode = env("MANTA_STRESS_MODE", "embedded");
    let cluster = match mode.as_str() {
        "embedded" => None,
        "one_node" => Some(common::cluster::LocalCluster::start(
            common::cluster::NodeSpec {
                num_cpus: cpus,
                ..Default::default()
            },
            &[],
        )),
        other => panic!("MANTA_STRESS_MODE={other}: embedded or one_node"),
    };
    let config = match &cluster {
        Some(c) => c.config(),
        None => manta::Config::default().num_cpus(cpus),
    };
    let rt = common::start(config);
    let started = std::time::Instant::now();
    let (hangs, failures) = kill::stress(iterations, 200, std::time::Duration::from_secs(bound));
    eprintln!(
        "stress-actor-kill {mode} on {cpus} CPUs: {iterations} iterations in {:.1} s, \
         {hangs} hangs, {failures} failures",
        started.elapsed().as_secs_f64()
    );
    if hangs > 0 {
        // The hung iteration's thread may hold the runtime: leave without a shutdown.
        drop(cluster);
        std::process::exit(1);
    }
    drop(rt);
    drop(cluster);
    assert_eq!(failures, 0, "failed iterations");
}
