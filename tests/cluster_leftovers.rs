//! What a finished job leaves behind: nothing in the nodes' temporary directory (no
//! per-process spill directory: spill files are unlinked from birth, so none is needed), and
//! next to nothing in the head's memory (the GCS forgets workers whose connection closed).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

#[manta::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Entries of `dir` whose name starts with `manta-spill`.
fn spill_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("manta-spill"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn worker_processes_leave_no_spill_directory() {
    serve_if_worker();
    let tmp = std::env::temp_dir().join(format!("manta-leftovers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut spec = NodeSpec::with_resources("");
    spec.env.push(("TMPDIR".into(), tmp.display().to_string()));
    let cluster = LocalCluster::start(spec, &[]);
    manta::init_with(cluster.config()).expect("the driver joins");
    let refs: Vec<_> = (0..8u64).map(square::remote).collect();
    assert_eq!(manta::get_all(&refs).unwrap().iter().sum::<u64>(), 140);
    let live = spill_entries(&tmp);
    manta::shutdown();
    // The job's worker process exits after its driver leaves; then nothing of it is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = spill_entries(&tmp);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = spill_entries(&tmp);
    }
    drop(cluster);
    let after_stop = spill_entries(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        live.is_empty() && left.is_empty() && after_stop.is_empty(),
        "spill directories in the nodes' TMPDIR: while running {live:?}, after the job {left:?}, \
         after stop {after_stop:?}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// One short job: a driver that runs a few tasks and a named actor, then leaves.
fn one_job(cluster: &LocalCluster, i: usize) {
    manta::init_with(cluster.config()).expect("the driver joins");
    let refs: Vec<_> = (0..4u64).map(square::remote).collect();
    assert_eq!(manta::get_all(&refs).unwrap().iter().sum::<u64>(), 14);
    let t = common::cluster::Tally::options()
        .name(format!("tally-{i}"))
        .remote();
    assert_eq!(t.add(2).get().unwrap(), 2);
    manta::shutdown();
}

#[test]
fn the_gcs_gives_back_what_finished_jobs_held() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    // The node process is the head itself (`manta start --block`, no wrapper).
    let pid = cluster.node_pid(0);
    // Warm up: the first jobs size the head's pools and caches.
    for i in 0..5 {
        one_job(&cluster, i);
    }
    let before = rss_kib(pid);
    let jobs = 150;
    for i in 5..5 + jobs {
        one_job(&cluster, i);
    }
    let after = rss_kib(pid);
    let per_job = (after.saturating_sub(before) * 1024) / jobs as u64;
    eprintln!("head RSS {before} → {after} KiB over {jobs} jobs: {per_job} B per job");
    assert!(
        per_job < 8192,
        "the head kept {per_job} bytes per finished job (RSS {before} → {after} KiB)"
    );
}

/// The worker log files in a node's log directory.
fn worker_logs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("worker-job"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn worker_logs_are_kept_for_the_latest_jobs_only() {
    serve_if_worker();
    let mut spec = NodeSpec::with_resources("");
    spec.env.push(("MANTA_WORKER_LOG_JOBS".into(), "3".into()));
    let cluster = LocalCluster::start(spec, &[]);
    for i in 0..7 {
        one_job(&cluster, i);
    }
    // The next job's worker start prunes: the logs of the 3 latest jobs (its own included).
    manta::init_with(cluster.config()).expect("the driver joins");
    assert_eq!(square::remote(3u64).get().unwrap(), 9);
    let logs = worker_logs(&cluster.root.join("node-0").join("logs"));
    manta::shutdown();
    assert_eq!(
        logs,
        [
            "worker-job6-node1.log",
            "worker-job7-node1.log",
            "worker-job8-node1.log"
        ],
        "worker logs kept"
    );
}
