//! What a finished job leaves behind on its nodes: nothing in the temporary directory (no
//! per-process spill directory: spill files are unlinked from birth, so none is needed).

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
