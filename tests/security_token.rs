//! The cluster token never appears in a command line (`/proc/PID/cmdline` is readable by every
//! local user, and the token lets its holder run code as the cluster's user): `--token` is
//! refused, and a head and a second node started in the background from `MANTA_TOKEN` and
//! `--token-file`, their raylets and the worker processes they start keep it out of argv.
//! `manta stop` then removes the token from the session directory.

mod common;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cluster::serve_if_worker;

#[manta::remote]
fn pause(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::env::var("MANTA_NODE_ID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn manta_bin() -> String {
    std::env::var("MANTA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_manta").to_owned())
}

/// `manta <args>` with the session root `root`, no inherited address or token, and `env`.
fn manta(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(manta_bin())
        .args(args)
        .env("MANTA_SESSION_ROOT", root)
        .env_remove("MANTA_SESSION_DIR")
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running manta")
}

/// Pids of the processes whose command line contains `needle`.
fn argv_holders(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            out.push((pid, line));
        }
    }
    out
}

/// Stops what a test started, even when it failed: `manta stop`, then any process left with
/// the token in its command line.
struct Cleanup {
    root: PathBuf,
    address: Option<String>,
    token: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(a) = &self.address {
            let _ = manta(
                &self.root,
                &["stop", "--address", a],
                &[("MANTA_TOKEN", &self.token)],
            );
        }
        // A process that still holds the token in argv (the bug) is killed here.
        for (pid, _) in argv_holders(&self.token) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn scratch_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("manta-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&root)
        .unwrap();
    root
}

fn unique_token(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sec{tag}{nanos:x}{}", std::process::id())
}

#[test]
fn a_token_in_argv_is_refused() {
    let root = scratch_root("argv");
    let token = unique_token("argv");
    let _cleanup = Cleanup {
        root: root.clone(),
        address: None,
        token: token.clone(),
    };
    let out = manta(
        &root,
        &[
            "start",
            "--head",
            "--port",
            "0",
            "--num-cpus",
            "1",
            "--token",
            &token,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let holders = argv_holders(&token);
    assert!(
        holders.is_empty(),
        "the token is in these command lines: {holders:?}"
    );
    assert!(!out.status.success(), "`manta start --token` must fail");
    assert!(
        stderr.contains("MANTA_TOKEN") && stderr.contains("--token-file"),
        "the error says what to use instead: {stderr}"
    );
}

#[test]
fn no_process_of_a_cluster_has_the_token_in_argv() {
    serve_if_worker();
    let root = scratch_root("cluster");
    let token = unique_token("cluster");
    let mut cleanup = Cleanup {
        root: root.clone(),
        address: None,
        token: token.clone(),
    };
    // The head, in the background (its re-exec with --block), from MANTA_TOKEN.
    let out = manta(
        &root,
        &["start", "--head", "--port", "0", "--num-cpus", "1"],
        &[("MANTA_TOKEN", &token)],
    );
    assert!(
        out.status.success(),
        "head: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = root.join("session_latest");
    let address = std::fs::read_to_string(latest.join("address"))
        .unwrap()
        .trim()
        .to_owned();
    cleanup.address = Some(address.clone());
    // A second node from a token file of mode 0600.
    let file = root.join("token-for-node");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, token.as_bytes()).unwrap();
    let out = manta(
        &root,
        &[
            "start",
            "--address",
            &address,
            "--token-file",
            file.to_str().unwrap(),
            "--num-cpus",
            "1",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "node: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A driver whose tasks start a worker process on each node.
    manta::init_with(
        manta::Config::default()
            .address(address.clone())
            .token(token.clone()),
    )
    .expect("the driver joins");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut nodes = std::collections::BTreeSet::new();
    while nodes.len() < 2 && Instant::now() < deadline {
        let refs: Vec<_> = (0..4).map(|_| pause::remote(300u64)).collect();
        nodes.extend(manta::get_all(&refs).expect("tasks run"));
    }
    assert_eq!(nodes.len(), 2, "tasks ran on both nodes: {nodes:?}");
    let holders = argv_holders(&token);
    assert!(
        holders.is_empty(),
        "the token is in these command lines: {holders:?}"
    );
    manta::shutdown();
    // `manta stop` finds the cluster through the session and removes its token.
    let session = std::fs::read_link(&latest).unwrap();
    assert!(session.join("token").exists());
    let out = manta(&root, &["stop"], &[]);
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cleanup.address = None;
    assert!(
        !session.join("token").exists(),
        "`manta stop` leaves no token on disk"
    );
}
