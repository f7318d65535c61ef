//! Placement groups, actor groups and a group communicator under `mpirun -np 4`: this test
//! binary, started by Open MPI's launcher, brings up a cluster from `manta::init()` (rank 0 the
//! head and driver, every rank a worker process); the driver reserves a group of four bundles
//! spread over the ranks, spawns an actor group in it whose members join the group's
//! communicator, allreduces through it, and calls every member as one group call; a task in
//! another rank given the group's handle runs work in a bundle (in the rank holding it), and
//! once the group is removed a handle passed again is refused as at the creator.
//!
//! Needs Open MPI (`scripts/setup --mpi`); where `mpirun` is missing the test prints why and
//! passes.

use std::process::Command;
use std::time::Duration;

use manta::{ActorGroup, Bundle, PlacementStrategy};

/// Set on the processes the launcher starts.
const JOB_ENV: &str = "MANTA_TEST_GROUPS_JOB";

const LONG: Duration = Duration::from_secs(60);

/// A member that reduces across its group through the group's communicator.
#[manta::actor]
pub(crate) struct Reducer {
    comm: manta::collective::Communicator,
}

#[manta::actor]
impl Reducer {
    pub(crate) fn new(group: String) -> Self {
        let comm = manta::collective::Communicator::join_group(&group).expect("join the group");
        Reducer { comm }
    }
    /// The sum over the group of `(rank + 1) * x`, and this member's rank and pid.
    pub(crate) fn sum(&self, x: f64) -> (f64, usize, u32) {
        let mut v = [(self.comm.rank() + 1) as f64 * x; 3];
        self.comm
            .allreduce(&mut v, manta::collective::ReduceOp::Sum)
            .expect("allreduce");
        (v[0], self.comm.rank(), std::process::id())
    }
}

#[manta::remote]
fn pid() -> u32 {
    std::process::id()
}

/// Given the group's handle in another rank: the pid of a task run there in bundle `i`, and
/// this task's own pid.
#[manta::remote]
fn via_handle(pg: manta::PlacementGroup, i: usize) -> Result<(u32, u32), String> {
    let there = pid::options()
        .num_cpus(0.0)
        .placement_group(&pg, Some(i))
        .remote()
        .get_timeout(LONG)
        .map_err(|e| format!("{e:?}"))?;
    Ok((there, std::process::id()))
}

/// Rank 0's job (the other ranks serve inside `init`).
fn job() {
    manta::init().expect("init under mpirun");
    let n = 4;
    let pg = manta::placement_group(
        (0..n).map(|_| Bundle::cpus(0.1)).collect(),
        PlacementStrategy::Spread,
    )
    .unwrap();
    pg.ready().get_timeout(LONG).expect("the group placed");
    let group = ActorGroup::spawn(&pg, |m| {
        Reducer::options()
            .group_member(&m)
            .remote(m.collective_name())
    })
    .unwrap();
    let want = (1..=n).map(|r| r as f64).sum::<f64>();
    // Twice: the second call goes as one tree once every member is created.
    for x in [1.0, 2.0] {
        let sums = manta::get_all(&group.call(|m| m.sum(x))).expect("the group call");
        for (rank, s) in sums.iter().enumerate() {
            assert_eq!((s.0, s.1), (want * x, rank), "rank {rank}: {sums:?}");
        }
        let pids: std::collections::BTreeSet<u32> = sums.iter().map(|s| s.2).collect();
        println!(
            "groups-job: ok x={x} members={} processes={}",
            sums.len(),
            pids.len()
        );
    }
    // The handle in another rank: a task in bundle 0's rank schedules into bundle 3, which
    // runs in bundle 3's rank (the member's process).
    let members = manta::get_all(&group.call(|m| m.sum(1.0))).unwrap();
    let (there, here) = via_handle::options()
        .num_cpus(0.0)
        .placement_group(&pg, Some(0))
        .remote(pg.clone(), 3)
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(here, members[0].2, "the task ran in bundle 0's rank");
    assert_eq!(there, members[3].2, "its task ran in bundle 3's rank");
    println!("groups-job: ok handle in another rank");
    manta::remove_placement_group(&pg).unwrap();
    // Removed: a handle passed now is refused as the creator is.
    match via_handle::options()
        .num_cpus(0.0)
        .remote(pg.clone(), 1)
        .get_timeout(LONG)
    {
        Err(manta::Error::Task(e)) if e.to_string().contains("PlacementGroupRemoved") => {}
        other => panic!("a removed group through a passed handle: {other:?}"),
    }
    println!("groups-job: ok removed handle refused");
    manta::shutdown();
}

#[test]
fn mpirun_four_ranks_run_an_actor_group_with_its_communicator() {
    if std::env::var_os(JOB_ENV).is_some() {
        return job();
    }
    let have = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("skipped: no mpirun (run scripts/setup --mpi)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args([
        "120",
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "4",
    ])
    .arg(exe)
    .args([
        "mpirun_four_ranks_run_an_actor_group_with_its_communicator",
        "--exact",
        "--nocapture",
    ])
    .env(JOB_ENV, "1");
    // The job runs as its own cluster: nothing of ours leaks in.
    for k in ["MANTA_ADDRESS", "MANTA_TOKEN", "MANTA_WORKER_RAYLET"] {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("running mpirun");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "mpirun failed: {}\n{text}",
        out.status
    );
    for x in ["1", "2"] {
        assert!(
            text.contains(&format!("groups-job: ok x={x} members=4 processes=")),
            "{text}"
        );
    }
    assert!(
        text.contains("groups-job: ok handle in another rank"),
        "{text}"
    );
    assert!(
        text.contains("groups-job: ok removed handle refused"),
        "{text}"
    );
}
