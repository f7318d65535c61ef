//! Retention of worker log files: a raylet writes one `worker-job<J>-node<N>.log` per job it
//! starts a worker process for, in its session's `logs/`. Before it starts one, it deletes
//! those of older jobs, keeping the logs of the `worker_log_jobs` latest jobs (by job id) and
//! of every job still running here, so a long-lived cluster does not accumulate them.

use std::path::Path;

/// The job id of a worker log file's name, if it is one.
fn job_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("worker-job")?.strip_suffix(".log")?;
    let (job, node) = rest.split_once("-node")?;
    node.parse::<u64>().ok()?;
    job.parse().ok()
}

/// Deletes the worker logs in `dir` of jobs older than the `keep` latest (counting the
/// `running` ones, whose logs are never deleted); returns how many files it deleted. Only regular files are touched.
pub(super) fn prune(dir: &Path, keep: usize, running: &[u64]) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let files: Vec<(u64, std::path::PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let job = job_of(&e.file_name().to_string_lossy())?;
            Some((job, e.path()))
        })
        .collect();
    // Running jobs count among the latest even before their log exists (the one starting).
    let mut jobs: Vec<u64> = files
        .iter()
        .map(|(j, _)| *j)
        .chain(running.iter().copied())
        .collect();
    jobs.sort_unstable();
    jobs.dedup();
    let old = &jobs[..jobs.len().saturating_sub(keep)];
    let mut deleted = 0;
    for (job, path) in &files {
        if old.binary_search(job).is_ok() && !running.contains(job) {
            match std::fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "old worker log kept")
                }
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_the_running_jobs_logs() {
        let dir = std::env::temp_dir().join(format!("manta-worker-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for j in 1..=6 {
            std::fs::write(dir.join(format!("worker-job{j}-node1.log")), "x").unwrap();
        }
        std::fs::write(dir.join("worker-job2-node2.log"), "x").unwrap();
        std::fs::write(dir.join("head.log"), "x").unwrap();
        std::fs::write(dir.join("worker-jobX-node1.log"), "x").unwrap();
        assert_eq!(prune(&dir, 2, &[2]), 3, "jobs 1, 3, 4 go; 2 runs");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "head.log",
                "worker-job2-node1.log",
                "worker-job2-node2.log",
                "worker-job5-node1.log",
                "worker-job6-node1.log",
                "worker-jobX-node1.log",
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
