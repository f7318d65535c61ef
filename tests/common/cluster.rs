//! A real multi-process cluster for tests: `manta start --head --block` and further
//! `manta start --address ... --block` node processes, each in its own session root, stopped
//! (and, failing that, killed) on drop.
//!
//! A cluster test's binary is also its job's worker binary: raylets re-execute it with the
//! test's own arguments, so the test must call [`serve_if_worker`] first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// In a worker process (started by a raylet), serves the job and never returns.
pub(crate) fn serve_if_worker() {
    if std::env::var_os("MANTA_WORKER_RAYLET").is_some() {
        let r = manta::init();
        // `init` only returns in a worker if it failed.
        eprintln!("worker failed to start: {r:?}");
        std::process::exit(3);
    }
}

/// One node to start: its CPUs, custom resources and the program wrapper (e.g. `ip netns
/// exec <ns>`) and address to listen on.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeSpec {
    pub(crate) num_cpus: f64,
    /// `--num-gpus`, when set (else the GPUs the node's launcher made visible).
    pub(crate) num_gpus: Option<f64>,
    pub(crate) resources: String,
    pub(crate) wrapper: Vec<String>,
    pub(crate) ip: Option<String>,
    /// Extra environment of the node process (its raylet reads the catalogue from it).
    pub(crate) env: Vec<(String, String)>,
}

impl NodeSpec {
    /// A node of 2 CPUs with custom `resources` (`"a=1"`), the rest as default.
    pub(crate) fn with_resources(resources: &str) -> NodeSpec {
        NodeSpec {
            num_cpus: 2.0,
            resources: resources.into(),
            ..NodeSpec::default()
        }
    }
}

/// A running cluster of node processes.
pub(crate) struct LocalCluster {
    pub(crate) address: String,
    pub(crate) token: String,
    pub(crate) root: PathBuf,
    nodes: Vec<Child>,
    head: NodeSpec,
}

/// The `manta` binary: cargo's, or `MANTA_BIN` where the tests run from a copy built elsewhere.
fn manta_bin() -> String {
    std::env::var("MANTA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_manta").to_owned())
}

/// Starts one node process; the token travels in its environment, never in its argv.
fn spawn_node(spec: &NodeSpec, root: &PathBuf, name: &str, args: &[String], token: &str) -> Child {
    let mut argv: Vec<String> = spec.wrapper.clone();
    argv.push(manta_bin());
    argv.push("start".into());
    argv.extend(args.iter().cloned());
    argv.push("--block".into());
    argv.push("--num-cpus".into());
    argv.push(spec.num_cpus.to_string());
    if let Some(gpus) = spec.num_gpus {
        argv.push("--num-gpus".into());
        argv.push(gpus.to_string());
    }
    if !spec.resources.is_empty() {
        argv.push("--resources".into());
        argv.push(spec.resources.clone());
    }
    if let Some(ip) = &spec.ip {
        argv.push("--ip".into());
        argv.push(ip.clone());
    }
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    // Appended to: a head started again on its session keeps the first run's log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("MANTA_SESSION_ROOT", root)
        .env("MANTA_SESSION_DIR", &dir)
        .env_remove("MANTA_ADDRESS")
        .env("MANTA_TOKEN", token)
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting a manta node process")
}

fn wait_for(path: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not come up within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl LocalCluster {
    /// Starts a head with `head` and one more node per entry of `others`; returns once every
    /// node has joined.
    pub(crate) fn start(head: NodeSpec, others: &[NodeSpec]) -> LocalCluster {
        let root = std::env::temp_dir().join(format!(
            "manta-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let token = "test-token-0123456789".to_owned();
        let head_args = vec!["--head".to_owned(), "--port".to_owned(), "0".to_owned()];
        let mut nodes = vec![spawn_node(&head, &root, "node-0", &head_args, &token)];
        let head_spec = head.clone();
        let head_dir = root.join("node-0");
        let address = wait_for(&head_dir.join("address"), "the head");
        for (i, spec) in others.iter().enumerate() {
            let args = vec!["--address".to_owned(), address.clone()];
            nodes.push(spawn_node(
                spec,
                &root,
                &format!("node-{}", i + 1),
                &args,
                &token,
            ));
        }
        let cluster = LocalCluster {
            address,
            token,
            root,
            nodes,
            head: head_spec,
        };
        cluster.wait_nodes(1 + others.len());
        cluster
    }

    /// Starts one more node (`manta start --address`) and returns its index; does not wait
    /// for it to join.
    #[allow(dead_code)]
    pub(crate) fn add_node(&mut self, spec: &NodeSpec) -> usize {
        let i = self.nodes.len();
        let args = vec!["--address".to_owned(), self.address.clone()];
        let child = spawn_node(spec, &self.root, &format!("node-{i}"), &args, &self.token);
        self.nodes.push(child);
        i
    }

    /// Kills the head process (SIGKILL), its GCS and its raylet.
    #[allow(dead_code)]
    pub(crate) fn kill_head(&mut self) {
        let _ = self.nodes[0].kill();
        let _ = self.nodes[0].wait();
    }

    /// Starts the head again on its session after [`kill_head`](Self::kill_head) (`manta
    /// start --head` with the same session directory): its GCS restores its saved tables and
    /// serves on the same port. Returns once the process runs, not once it serves.
    #[allow(dead_code)]
    pub(crate) fn restart_head(&mut self) {
        let args = vec!["--head".to_owned(), "--port".to_owned(), "0".to_owned()];
        self.nodes[0] = spawn_node(&self.head, &self.root, "node-0", &args, &self.token);
    }

    /// Waits until `n` nodes are alive in the GCS's table.
    pub(crate) fn wait_nodes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(state) = manta::cluster::query(&self.address, &self.token)
                && state.nodes.iter().filter(|x| x.alive).count() >= n
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} nodes did not join within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A configuration that joins this cluster as its driver.
    pub(crate) fn config(&self) -> manta::Config {
        manta::Config::default()
            .address(self.address.clone())
            .token(self.token.clone())
    }

    /// Kills node process `i` (0 is the head) at once.
    #[allow(dead_code)]
    pub(crate) fn kill_node(&mut self, i: usize) {
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
    }

    /// The process id of node process `i` (0 is the head).
    pub(crate) fn node_pid(&self, i: usize) -> u32 {
        self.nodes[i].id()
    }

    /// Whether node process `i` has exited (reaped here if so).
    pub(crate) fn node_exited(&mut self, i: usize) -> bool {
        matches!(self.nodes[i].try_wait(), Ok(Some(_)))
    }

    /// This cluster's worker processes as `(pid, raylet address)`, found by walking `/proc`:
    /// a raylet's workers inherit its `MANTA_SESSION_ROOT` (this cluster's root) and carry
    /// `MANTA_WORKER_RAYLET` (their raylet's address).
    pub(crate) fn worker_pids(&self) -> Vec<(u32, String)> {
        worker_pids_of(&self.root)
    }

    /// Kills (SIGKILL) a worker process of this cluster, one of raylet `raylet`'s if given;
    /// returns its pid, or `None` if there is none.
    pub(crate) fn kill_worker(&self, raylet: Option<&str>) -> Option<u32> {
        let (pid, _) = self
            .worker_pids()
            .into_iter()
            .find(|(_, r)| raylet.is_none_or(|want| want == r))?;
        signal(pid, libc::SIGKILL);
        Some(pid)
    }

    /// Prints every node's and worker's log (for a failing test).
    pub(crate) fn dump_logs(&self) {
        for entry in walk(&self.root) {
            if entry.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                eprintln!("===== {} =====\n{text}", entry.display());
            }
        }
    }
}

/// Sends `sig` to process `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn walk(dir: &PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = manta::cluster::stop_cluster(&self.address, &self.token);
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.nodes {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Objects in this process's store.
pub(crate) fn store_objects() -> usize {
    manta::status()
        .ok()
        .and_then(|s| s.object_store)
        .map_or(0, |s| s.objects)
}

/// Objects in the store of the worker process that runs it.
#[manta::remote]
pub(crate) fn worker_store_objects() -> usize {
    store_objects()
}

/// Polls `f` every 50 ms until `ok` holds of its value, for at most `within`, and returns that
/// value: what processes tell each other (frees, unpins, heartbeats) arrives eventually, not
/// at once.
pub(crate) fn eventually_that<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    f: impl Fn() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let got = f();
        if ok(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`eventually_that`] for a count that must reach `want`.
pub(crate) fn eventually(what: &str, want: usize, within: Duration, f: impl Fn() -> usize) {
    eventually_that(&format!("{what}, expected {want}"), within, f, |got| {
        *got == want
    });
}

/// A counter actor: `add(k)` returns the running sum.
#[manta::actor]
pub(crate) struct Tally {
    n: u64,
}

#[manta::actor]
impl Tally {
    pub(crate) fn new() -> Self {
        Tally { n: 0 }
    }
    pub(crate) fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
}

/// The worker processes of the cluster whose session root is `root`, as `(pid, raylet
/// address)`, found by walking `/proc` (see [`LocalCluster::worker_pids`]).
pub(crate) fn worker_pids_of(root: &std::path::Path) -> Vec<(u32, String)> {
    let root = format!("MANTA_SESSION_ROOT={}", root.display());
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if !vars.contains(&root.as_bytes()) {
            continue;
        }
        // A zombie (killed, not yet reaped by its raylet) has an empty environ.
        if let Some(raylet) = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"MANTA_WORKER_RAYLET".as_slice()))
            .and_then(|v| v.strip_prefix(b"=".as_slice()))
        {
            found.push((pid, String::from_utf8_lossy(raylet).into_owned()));
        }
    }
    found
}
