//! The raylet: a node process (`manta start`), plus the GCS on the head. The CLI's queries
//! of a running cluster are in `client.rs`.
//!
//! The raylet registers its node with the GCS (with its host identity, so SPMD ranks of the
//! machine find it), heartbeats every second, and keeps a job's worker processes on its node:
//!
//! - `manta start`: one per job. The first `StartWorker` of a job re-executes the job's
//!   binary (the path the driver registered; clusters share a filesystem, as HPC clusters do)
//!   with the node's resources (and the CPUs its slots pin themselves to, the NUMA nodes its
//!   store splits across) in its environment, and every later request of that job reuses it.
//! - SPMD (`srun`/`mpirun`): the node's ranks join by themselves (`joining_workers` of them,
//!   each with its share of the node), and on rank 0's node the raylet also starts one for
//!   rank 0's share (`worker_cpus`/`worker_gpus`).
//!
//! A `StartWorker` is answered once every worker the job has here is ready, with all of them
//! and what each holds (`WorkerStarted.workers`), so the owner chooses among them. What the
//! workers report in use is summed into the node's heartbeats. When the job's driver leaves,
//! or the cluster stops, the raylet stops its workers (a `Stop` message, then SIGKILL after a
//! grace period); a worker that joined by itself is forgotten when its connection closes. At
//! a job's end a worker that reported detached actors (`WorkerDetached`) is kept instead and
//! told `JobEvent { finished }`, and stopped once it reports none (`lifetime.rs`). That table
//! and its protocol are `worker_table.rs`, a state machine without I/O; the raylet here spawns,
//! polls and kills the processes and sends what it returns.

use crate::resources::{CPU_NAME, GPU_NAME};
use crate::sync::{Arc, Mutex, OnceLock, Weak};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use manta_transport::{Address, Listener};

use super::gcs::{DECLARED_DEAD, Gcs, GcsHandler};
use super::gcs_store::GcsStore;
use super::node_store::NodeStore;
use super::peer::{Handler, Peer};
use super::proto::{Msg, Node, PgOp, PgRow, Resource};
use super::worker_table::{Action, Conn, Process, Worker, WorkerTable};
use super::{call_timeout, cluster_error, transport_config};
use crate::config::{CpuList, vars};
use crate::error::Error;
use crate::sync::lock;

/// How a node process starts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeOptions {
    /// Also run the GCS here (`manta start --head`).
    pub head: bool,
    /// The GCS to join (for a non-head node).
    pub gcs_address: Option<String>,
    /// The address to listen on (never all interfaces unless asked).
    pub ip: IpAddr,
    /// The GCS port on the head (0: any free port); raylets use any free port.
    pub port: u16,
    /// The cluster's token.
    pub token: String,
    /// CPUs offered.
    pub num_cpus: f64,
    /// GPUs offered.
    pub num_gpus: f64,
    /// Custom resources offered.
    pub resources: Vec<(String, f64)>,
    /// Where worker processes' output goes (inherited when `None`).
    pub log_dir: Option<PathBuf>,
    /// Whether the raylet starts a worker process for each job itself (`manta start`; under
    /// SPMD, rank 0's raylet, for rank 0's share of its node).
    pub spawn_workers: bool,
    /// Worker processes that join this raylet by themselves for each job: the ranks of an
    /// `srun`/`mpirun` launch on this node (but rank 0, the driver). A job's first
    /// `StartWorker` is answered once the started one (if any) and all of these are ready.
    pub joining_workers: u32,
    /// CPUs a worker process this raylet starts holds (`None`: `num_cpus`, the whole node).
    pub worker_cpus: Option<f64>,
    /// GPUs a worker process this raylet starts holds (`None`: `num_gpus`, the whole node).
    pub worker_gpus: Option<f64>,
    /// The launcher's ids of the node's GPUs (`CUDA_VISIBLE_DEVICES` entries): its workers are
    /// started seeing these. Empty where the GPUs are only counted: the workers then inherit the
    /// raylet's `CUDA_VISIBLE_DEVICES`, if any.
    pub gpu_ids: Vec<String>,
    /// The ids a worker process this raylet starts sees (`None`: `gpu_ids`, the whole node).
    pub worker_gpu_ids: Option<Vec<String>>,
    /// The node's topology as found by the launcher, one line for `manta status`.
    pub topology: String,
    /// CPUs the slots of the worker processes this raylet starts pin themselves to
    /// (`MANTA_CPU_AFFINITY` in their environment); empty: the raylet sets nothing.
    pub cpu_affinity: CpuList,
    /// The node's CPUs that placement-group bundles' CPU sets are taken from (`topology.rs`);
    /// empty: `cpu_affinity`, or if that is empty too the raylet's own affinity mask. Under
    /// `srun`/`mpirun` the launcher sets the CPUs of all the node's ranks.
    pub bundle_cpus: CpuList,
    /// NUMA nodes the object stores of the worker processes this raylet starts split their
    /// arenas across (`MANTA_OBJECT_STORE_NUMA_NODES`); empty: the raylet sets nothing.
    pub numa_nodes: CpuList,
    /// Where the head's GCS saves its tables (the session directory), and restores them from
    /// when it starts again there; `None`: nowhere (a head that dies takes the cluster).
    pub gcs_state_dir: Option<PathBuf>,
}

impl NodeOptions {
    /// Options for a node listening on `ip`, with `token`.
    pub fn new(ip: IpAddr, token: impl Into<String>) -> Self {
        NodeOptions {
            head: false,
            gcs_address: None,
            ip,
            port: 0,
            token: token.into(),
            num_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
            num_gpus: 0.0,
            resources: Vec::new(),
            log_dir: None,
            spawn_workers: true,
            joining_workers: 0,
            worker_cpus: None,
            worker_gpus: None,
            gpu_ids: Vec::new(),
            worker_gpu_ids: None,
            topology: String::new(),
            cpu_affinity: CpuList::default(),
            bundle_cpus: CpuList::default(),
            numa_nodes: CpuList::default(),
            gcs_state_dir: None,
        }
    }
}

/// What a started node reports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeReady {
    /// The GCS address (`ip:port`) members join with.
    pub gcs_address: String,
    /// This node's raylet address.
    pub raylet_address: String,
    /// This node's id.
    pub node_id: u64,
}

/// The I/O runtime of a node process or a CLI query.
pub(super) fn io_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Os {
            what: "starting the I/O runtime",
            message: e.to_string(),
        })
}

/// The raylet's handle on a connection, for its worker table.
impl Conn for Arc<Peer> {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
    fn is_closed(&self) -> bool {
        Peer::is_closed(self)
    }
}

/// The raylet's handle on a worker process it started, for its worker table.
impl Process for Child {
    fn pid(&self) -> u32 {
        self.id()
    }
    fn exited(&mut self) -> Option<String> {
        self.try_wait().ok().flatten().map(|s| s.to_string())
    }
}

/// The worker table of a raylet: its connections and child processes.
type Workers = WorkerTable<Arc<Peer>, Child>;

/// The raylet of this node.
struct Raylet {
    node_id: OnceLock<u64>,
    gcs_address: String,
    address: String,
    opts: NodeOptions,
    /// Each job's worker processes here (`worker_table.rs`).
    workers: Mutex<Workers>,
    stop: tokio::sync::Notify,
    me: OnceLock<Weak<Raylet>>,
    /// This raylet's own connection to the GCS (a peer's self-declared name proves nothing);
    /// replaced when it rejoins a restarted GCS.
    gcs: Mutex<Option<Arc<Peer>>>,
    /// Its GCS connection closed: the main loop rejoins.
    gcs_lost: tokio::sync::Notify,
    /// The GCS said it saves its tables: one that is lost may come back (else the node stops).
    gcs_saves: crate::sync::AtomicBool,
    /// The node's object-store arena, shared by its processes (`None`: each keeps its own).
    store: Option<NodeStore>,
    /// Why the GCS declared this node dead, if it did (the node then exits with an error).
    declared_dead: OnceLock<String>,
    /// Placement-group bundles reserved here (`pg.rs`).
    ledger: Mutex<super::pg::Ledger>,
}

impl Raylet {
    /// Whether `peer` is this raylet's current GCS connection.
    fn is_gcs(&self, peer: &Arc<Peer>) -> bool {
        lock(&self.gcs)
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, peer))
    }

    /// Connects to the GCS and registers the node (as `node.node_id` when rejoining); the
    /// connection and the node's id. `Err((fatal, why))`: fatal when the GCS answered with a
    /// refusal (the node was declared dead, or is unknown to it), else worth another try.
    async fn register(
        self: &Arc<Self>,
        handler: &Arc<dyn Handler>,
        node: Node,
    ) -> Result<(Arc<Peer>, u64), (bool, Error)> {
        let what = "registering the node";
        let connect = super::connect(&self.gcs_address, &self.opts.token, "raylet".into());
        let conn = match tokio::time::timeout(call_timeout(), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err((false, e)),
            Err(_) => return Err((false, cluster_error(what, "no connection in time"))),
        };
        let gcs = Peer::spawn(conn, "gcs".into(), handler.clone());
        *lock(&self.gcs) = Some(gcs.clone());
        let rejoining = node.node_id != 0;
        let reply = gcs.request(|request_id| Msg::RegisterNode { request_id, node });
        let id = match tokio::time::timeout(call_timeout(), reply).await {
            Ok(Ok(Ok(Msg::Registered {
                id, error, saved, ..
            }))) if error.is_empty() => {
                self.gcs_saves.store(saved, crate::sync::Ordering::Release);
                id
            }
            Ok(Ok(Ok(Msg::Registered { error, .. }))) => {
                return Err((true, cluster_error(what, error)));
            }
            Ok(Ok(Err(e))) => return Err((false, e)),
            _ => return Err((false, cluster_error(what, "no reply from the GCS"))),
        };
        if rejoining {
            // The restarted GCS re-sent the commits of its created groups before answering;
            // what is only prepared belonged to attempts that died with the old one.
            let dropped = lock(&self.ledger).drop_prepared();
            if dropped > 0 {
                tracing::info!(
                    dropped,
                    "placement reservations of a lost GCS's attempts dropped"
                );
            }
        }
        gcs.send(Msg::Subscribe { request_id: 0 });
        Ok((gcs, id))
    }

    /// The node's resources with what its workers last reported in use subtracted, and the
    /// object store as the `object_store_memory` resource, as Ray reports it: the node arena
    /// (granted bytes in use), or where the node has none, every worker's own arena.
    fn resources(&self) -> Vec<Resource> {
        let mut v = self.totals();
        // Committed bundles: their resources, used as the workers holding them report.
        let node_id = self.node_id.get().copied().unwrap_or(0);
        let added = lock(&self.ledger).resources(node_id);
        v.extend(added.into_iter().map(|(name, total)| Resource {
            name,
            total,
            available: total,
        }));
        let workers = lock(&self.workers);
        let mut store = Resource {
            name: "object_store_memory".into(),
            total: 0.0,
            available: 0.0,
        };
        for w in workers.workers() {
            for r in &w.load {
                if r.name == "object_store_memory" {
                    store.total += r.total;
                    store.available += r.available;
                } else if let Some(mine) = v.iter_mut().find(|m| m.name == r.name) {
                    mine.available -= (r.total - r.available).max(0.0);
                }
            }
        }
        for r in &mut v {
            r.available = r.available.max(0.0);
        }
        if let Some(node) = &self.store {
            v.push(node.resource());
        } else if store.total > 0.0 {
            v.push(store);
        }
        v
    }

    /// The page kind of the node arena, or where the node has none, of its workers' arenas,
    /// e.g. "2 MiB huge pages", several joined with " + " when they differ (one worker got huge
    /// pages, the next not).
    fn store_pages(&self) -> String {
        if let Some(node) = &self.store {
            return node.pages();
        }
        let mut kinds: Vec<String> = lock(&self.workers)
            .workers()
            .filter(|w| !w.store_pages.is_empty())
            .map(|w| w.store_pages.clone())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds.join(" + ")
    }

    /// Store bytes in use on this node: granted in the node arena, or where the node has none,
    /// in every worker's own arena.
    fn store_used(&self) -> u64 {
        if let Some(node) = &self.store {
            return node.used();
        }
        lock(&self.workers)
            .workers()
            .flat_map(|w| w.load.iter())
            .filter(|r| r.name == "object_store_memory")
            .map(|r| (r.total - r.available).max(0.0) as u64)
            .sum()
    }

    fn totals(&self) -> Vec<Resource> {
        let mut v = vec![Resource {
            name: CPU_NAME.into(),
            total: self.opts.num_cpus,
            available: self.opts.num_cpus,
        }];
        if self.opts.num_gpus > 0.0 {
            v.push(Resource {
                name: GPU_NAME.into(),
                total: self.opts.num_gpus,
                available: self.opts.num_gpus,
            });
        }
        for (name, amount) in &self.opts.resources {
            v.push(Resource {
                name: name.clone(),
                total: *amount,
                available: *amount,
            });
        }
        v
    }

    /// Does what the worker table says.
    fn act(&self, actions: Vec<Action<Arc<Peer>, Child>>) {
        for a in actions {
            match a {
                Action::Send(peer, msg) => peer.send(*msg),
                Action::Reap(child) => reap(child),
                Action::Stop(workers) => self.stop_procs(workers),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_worker(
        &self,
        from: &Arc<Peer>,
        request_id: u64,
        job_id: u64,
        executable: String,
        args: Vec<String>,
        cwd: String,
        env: Vec<(String, String)>,
    ) {
        let mut workers = lock(&self.workers);
        if workers.will_spawn(job_id)
            && let Some(dir) = &self.opts.log_dir
        {
            // Retention: the logs of older jobs go before this job's is made.
            let keep = crate::Config::default()
                .resolve()
                .map_or(100, |c| c.worker_log_jobs);
            let running: Vec<u64> = workers.jobs().chain([job_id]).collect();
            super::worker_logs::prune(dir, keep.max(1), &running);
        }
        let (spawn, mut actions) = workers.start(from.clone(), request_id, job_id);
        // Started under the lock: one process per job, however many ask at once.
        actions.extend(if spawn {
            let child = self
                .spawn(job_id, &executable, args, cwd, env)
                .map_err(|e| format!("could not start {executable}: {e}"));
            workers.spawned(job_id, child)
        } else {
            workers.answer(job_id)
        });
        drop(workers);
        self.act(actions);
    }

    /// Starts a worker process of `job_id` with this node's share for it.
    fn spawn(
        &self,
        job_id: u64,
        executable: &str,
        args: Vec<String>,
        cwd: String,
        env: Vec<(String, String)>,
    ) -> std::io::Result<Child> {
        let node_id = self.node_id.get().copied().unwrap_or(0);
        let resources: Vec<String> = self
            .opts
            .resources
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect();
        let mut cmd = Command::new(executable);
        cmd.args(&args)
            .envs(env)
            .env("MANTA_ADDRESS", &self.gcs_address)
            .env("MANTA_TOKEN", &self.opts.token)
            .env(vars::WORKER_RAYLET, &self.address)
            .env(vars::JOB_ID, job_id.to_string())
            .env(vars::NODE_ID, node_id.to_string())
            .env(vars::NODE_IP, self.opts.ip.to_string())
            .env(
                "MANTA_NUM_CPUS",
                self.opts
                    .worker_cpus
                    .unwrap_or(self.opts.num_cpus)
                    .to_string(),
            )
            .env(
                "MANTA_NUM_GPUS",
                self.opts
                    .worker_gpus
                    .unwrap_or(self.opts.num_gpus)
                    .to_string(),
            )
            .env("MANTA_RESOURCES", resources.join(","))
            .stdin(Stdio::null());
        if !self.opts.cpu_affinity.is_empty() {
            cmd.env("MANTA_CPU_AFFINITY", self.opts.cpu_affinity.to_string());
        }
        let gpu_ids = self
            .opts
            .worker_gpu_ids
            .as_ref()
            .unwrap_or(&self.opts.gpu_ids);
        if !gpu_ids.is_empty() {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu_ids.join(","));
        }
        if !self.opts.numa_nodes.is_empty() {
            cmd.env(
                "MANTA_OBJECT_STORE_NUMA_NODES",
                self.opts.numa_nodes.to_string(),
            );
        }
        if !cwd.is_empty() {
            cmd.current_dir(&cwd);
        }
        if let Some(dir) = &self.opts.log_dir {
            let path = dir.join(format!("worker-job{job_id}-node{node_id}.log"));
            if let Ok(f) = std::fs::File::create(&path)
                && let Ok(f2) = f.try_clone()
            {
                cmd.stdout(f).stderr(f2);
            }
        }
        let child = cmd.spawn()?;
        tracing::info!(job = job_id, pid = child.id(), %executable, "worker process started");
        Ok(child)
    }

    fn worker_ready(
        &self,
        peer: &Arc<Peer>,
        job_id: u64,
        index: u64,
        address: String,
        pid: u32,
        resources: Vec<Resource>,
    ) {
        let actions = lock(&self.workers).ready(peer, job_id, index, address, pid, resources);
        self.act(actions);
    }

    /// A connection closed: the worker on it is gone (one this raylet started is killed if it
    /// still runs, and reaped; the job's next `StartWorker` starts a replacement).
    fn connection_closed(&self, peer: &Arc<Peer>) {
        let actions = lock(&self.workers).closed(peer);
        self.act(actions);
    }

    /// Reaps exited workers; fails requests waiting on a job whose worker died before it was
    /// ready.
    fn reap(&self) {
        let actions = lock(&self.workers).reap();
        self.act(actions);
    }

    /// Stops the workers of `job` (all jobs when `None`): a Stop message, SIGKILL later. At a
    /// job's end a worker hosting detached actors is kept and told the job ended instead
    /// (`cluster/lifetime.rs`, step 3).
    fn stop_workers(&self, job: Option<u64>) {
        let actions = lock(&self.workers).stop(job);
        self.act(actions);
    }

    /// A worker's count of detached actors (`WorkerDetached`, from its own connection); one
    /// kept past its job's end stops at 0.
    fn worker_detached(&self, peer: &Arc<Peer>, count: u32) {
        let actions = lock(&self.workers).detached(peer, count);
        self.act(actions);
    }

    /// Sends each worker `Stop`, and SIGKILLs a child that has not exited 2 s later.
    fn stop_procs(&self, stopping: Vec<Worker<Arc<Peer>, Child>>) {
        for mut w in stopping {
            if let Some(p) = &w.conn {
                p.send(Msg::Stop {
                    reason: "job finished".into(),
                });
            }
            let Some(mut child) = w.child.take() else {
                continue;
            };
            std::thread::spawn(move || {
                for _ in 0..40 {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            });
        }
    }
}

/// Kills (if it still runs) and waits for a worker process this raylet started, on a thread
/// of its own: an exited child is reaped at once, a live one within moments of SIGKILL.
fn reap(mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = child.kill();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

impl Raylet {
    /// The CPUs bundles' CPU sets come from (see [`NodeOptions::bundle_cpus`]).
    fn bundle_cpus(&self) -> &[usize] {
        if self.opts.bundle_cpus.is_empty() {
            &self.opts.cpu_affinity.0
        } else {
            &self.opts.bundle_cpus.0
        }
    }

    /// The GCS's two-phase reservation of placement-group bundles (`pg.rs`).
    fn pg_message(&self, peer: &Arc<Peer>, op: PgOp, request_id: u64, group: PgRow) {
        match op {
            PgOp::Prepare => {
                let totals: Vec<(String, f64)> = self
                    .totals()
                    .into_iter()
                    .map(|r| (r.name, r.total))
                    .collect();
                let pg_id = group.pg_id;
                let (bundles, error) =
                    match lock(&self.ledger).prepare(&totals, self.bundle_cpus(), group) {
                        Ok(bundles) => (bundles, String::new()),
                        Err(e) => (Vec::new(), e),
                    };
                // The bundles reserved now, with the CPU sets this node gave them.
                let reply = super::pg::msg(
                    PgOp::Prepared,
                    request_id,
                    PgRow {
                        pg_id,
                        bundles,
                        ..PgRow::default()
                    },
                    error,
                );
                // A test hook: a window between prepare and commit in which a test kills
                // this raylet (the reservation must not leak on the other nodes).
                match std::env::var("MANTA_TESTING_PG_PREPARE_DELAY_MS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    Some(ms) => {
                        let peer = peer.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            peer.send(reply);
                        });
                    }
                    None => peer.send(reply),
                }
            }
            PgOp::Commit => {
                if !lock(&self.ledger).commit(group.pg_id) {
                    tracing::warn!(pg = group.pg_id, "commit of a group not prepared here");
                }
            }
            PgOp::Cancel => lock(&self.ledger).cancel(&group),
            other => {
                tracing::warn!(
                    ?other,
                    "unexpected placement-group message at a raylet: ignored"
                );
            }
        }
    }
}

struct RayletHandler(Arc<Raylet>);

impl Handler for RayletHandler {
    fn on_message(self: Arc<Self>, peer: &Arc<Peer>, msg: Msg) {
        match msg {
            Msg::StartWorker {
                request_id,
                job_id,
                executable,
                args,
                cwd,
                env,
            } => self
                .0
                .start_worker(peer, request_id, job_id, executable, args, cwd, env),
            Msg::WorkerReady {
                job_id,
                index,
                address,
                pid,
                resources,
            } => self
                .0
                .worker_ready(peer, job_id, index, address, pid, resources),
            Msg::Heartbeat {
                resources,
                store_pages,
                ..
            } => lock(&self.0.workers).heartbeat(peer, resources, store_pages),
            Msg::JobEvent {
                job_id,
                finished: true,
            } => self.0.stop_workers(Some(job_id)),
            Msg::WorkerDetached { count, .. } => self.0.worker_detached(peer, count),
            Msg::Stop { reason } => {
                let from_gcs = self.0.is_gcs(peer);
                if from_gcs && reason.starts_with(DECLARED_DEAD) {
                    tracing::error!(%reason, "this node was declared dead: stopping its workers and leaving");
                    let _ = self.0.declared_dead.set(reason);
                } else {
                    tracing::info!(%reason, "node stopping");
                }
                self.0.stop.notify_one();
            }
            Msg::NodeEvent { .. } | Msg::JobEvent { .. } => {}
            Msg::Pg {
                op,
                request_id,
                group,
                ..
            } if self.0.is_gcs(peer) => self.0.pg_message(peer, op, request_id, group),
            other => {
                tracing::warn!(peer = %peer.name, message = other.name(), "unexpected message for a raylet: ignored");
            }
        }
    }

    fn on_close(self: Arc<Self>, peer: &Arc<Peer>, _reason: &str) {
        if self.0.is_gcs(peer) {
            if self.0.gcs_saves.load(crate::sync::Ordering::Acquire) {
                tracing::warn!("lost the GCS: rejoining");
                self.0.gcs_lost.notify_one();
            } else {
                // Its tables are not saved anywhere: it cannot come back.
                tracing::warn!("lost the GCS: node stopping");
                self.0.stop.notify_one();
            }
        }
        self.0.connection_closed(peer);
    }
}

async fn accept_loop(listener: Listener, handler: Arc<dyn Handler>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let name = conn.peer_name().to_owned();
                Peer::spawn(conn, name, handler.clone());
            }
            // The transport logged it already, rate-limited: a flood of bad peers must not
            // fill the log.
            Err(e) => tracing::debug!(error = %e, "refused a connection"),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Runs a node until the cluster is stopped (`manta stop`), the GCS is lost for longer than
/// `gcs_reconnect_timeout`, or SIGTERM/SIGINT.
/// `on_ready` is called once the node has joined.
pub fn run_node(opts: NodeOptions, on_ready: impl FnOnce(&NodeReady)) -> Result<(), Error> {
    let catalogue = crate::config::Config::default().resolve()?;
    crate::config::install(&catalogue);
    let heartbeat = catalogue.heartbeat_interval;
    let io = io_runtime()?;
    io.block_on(async move {
        let config = |name: &str| transport_config(&opts.token, name.to_owned());
        let mut gcs_state = None;
        let gcs_address = if opts.head {
            let store = opts
                .gcs_state_dir
                .as_deref()
                .map(|dir| GcsStore::new(dir).synced(catalogue.gcs_sync));
            // Dead after this many missed heartbeats in a row (Ray's health checks).
            let node_timeout =
                heartbeat.saturating_mul(catalogue.health_check_failure_threshold.max(1));
            let gcs = Gcs::new(node_timeout, store)?;
            // Restored: serve where the members look for it (unless a port was given).
            let port = match (opts.port, gcs.saved_port()) {
                (0, Some(p)) => p,
                (p, _) => p,
            };
            let listener = Listener::bind(
                &Address::Tcp(SocketAddr::new(opts.ip, port)),
                config("gcs"),
            )
            .await
            .map_err(|e| cluster_error("starting the GCS", e.to_string()))?;
            let addr = listener
                .local_addr()
                .map_err(|e| cluster_error("starting the GCS", e.to_string()))?
                .to_string();
            gcs.set_address(addr.clone());
            tokio::spawn(accept_loop(listener, Arc::new(GcsHandler(gcs.clone()))));
            let g2 = gcs.clone();
            tokio::spawn(async move {
                loop {
                    // At least once a heartbeat, so a short interval is checked as often.
                    tokio::time::sleep(heartbeat.min(Duration::from_secs(1))).await;
                    g2.check_health();
                }
            });
            gcs_state = Some(gcs);
            addr
        } else {
            opts.gcs_address.clone().ok_or_else(|| Error::Config {
                key: "address".into(),
                message: "a non-head node needs the GCS address (--address)".into(),
            })?
        };
        let listener = Listener::bind(
            &Address::Tcp(SocketAddr::new(opts.ip, 0)),
            config("raylet"),
        )
        .await
        .map_err(|e| cluster_error("starting the raylet", e.to_string()))?;
        let address = listener
            .local_addr()
            .map_err(|e| cluster_error("starting the raylet", e.to_string()))?
            .to_string();
        let store = NodeStore::start(&opts.token);
        let arena_socket = store.as_ref().map(|s| s.socket.clone()).unwrap_or_default();
        let raylet = Arc::new(Raylet {
            node_id: OnceLock::new(),
            gcs_address: gcs_address.clone(),
            address: address.clone(),
            opts: opts.clone(),
            workers: Mutex::new(WorkerTable::new(
                opts.spawn_workers,
                opts.joining_workers,
            )),
            stop: tokio::sync::Notify::new(),
            me: OnceLock::new(),
            gcs: Mutex::new(None),
            gcs_lost: tokio::sync::Notify::new(),
            gcs_saves: crate::sync::AtomicBool::new(false),
            store,
            declared_dead: OnceLock::new(),
            ledger: Mutex::new(Default::default()),
        });
        let _ = raylet.me.set(Arc::downgrade(&raylet));
        let handler: Arc<dyn Handler> = Arc::new(RayletHandler(raylet.clone()));
        tokio::spawn(accept_loop(listener, handler.clone()));
        let node_row = |node_id: u64| Node {
            node_id,
            address: address.clone(),
            hostname: hostname(),
            alive: true,
            resources: raylet.resources(),
            topology: opts.topology.clone(),
            host_id: super::host_id(),
            arena_socket: arena_socket.clone(),
            ..Node::default()
        };
        let node_id = match raylet.register(&handler, node_row(0)).await {
            Ok((_, id)) => id,
            Err((_, e)) => return Err(e),
        };
        let _ = raylet.node_id.set(node_id);
        on_ready(&NodeReady {
            gcs_address: gcs_address.clone(),
            raylet_address: address.clone(),
            node_id,
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Os {
                what: "installing a SIGTERM handler",
                message: e.to_string(),
            })?;
        // The GCS lost (its connection closed, not a `Stop`): rejoin under this node's id,
        // every `backoff` (doubling to 1 s), for at most `gcs_reconnect_timeout`.
        let reconnect_within = catalogue.gcs_reconnect_timeout;
        let mut lost_since: Option<std::time::Instant> = None;
        let mut backoff = Duration::from_millis(50);
        let mut failure = None;
        loop {
            let wait = if lost_since.is_some() { backoff } else { heartbeat };
            tokio::select! {
                _ = raylet.stop.notified() => break,
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = raylet.gcs_lost.notified() => {
                    lost_since.get_or_insert_with(std::time::Instant::now);
                }
                _ = tokio::time::sleep(wait) => {
                    raylet.reap();
                    let Some(since) = lost_since else {
                        let gcs = lock(&raylet.gcs).clone();
                        if let Some(gcs) = gcs {
                            gcs.send(Msg::Heartbeat { node_id, resources: raylet.resources(), store_used: raylet.store_used(), store_pages: raylet.store_pages() });
                        }
                        continue;
                    };
                    match raylet.register(&handler, node_row(node_id)).await {
                        Ok(_) => {
                            tracing::info!(node = node_id, "rejoined the GCS");
                            lost_since = None;
                            backoff = Duration::from_millis(50);
                        }
                        Err((true, e)) => {
                            tracing::error!(error = %e, "the GCS refused this node's return: stopping");
                            failure = Some(e);
                            break;
                        }
                        Err((false, e)) if since.elapsed() > reconnect_within => {
                            let why = format!(
                                "unreachable for {reconnect_within:?} (gcs_reconnect_timeout): {e}"
                            );
                            tracing::error!(%why, "lost the GCS: stopping");
                            failure = Some(cluster_error(format!("the GCS at {gcs_address}"), why));
                            break;
                        }
                        Err((false, e)) => {
                            tracing::debug!(error = %e, "the GCS is not back yet");
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
        }
        raylet.stop_workers(None);
        if let Some(g) = &gcs_state {
            // Tell the other nodes, then give the messages a moment to leave.
            g.stop_all("the head stopped");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Wait for this node's workers to exit (stop_workers kills them after 2 s).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(gcs) = lock(&raylet.gcs).take() {
            gcs.shutdown("node stopped");
        }
        if let Some(e) = failure {
            return Err(e);
        }
        match raylet.declared_dead.get() {
            Some(reason) => Err(cluster_error(format!("node {node_id}"), reason.clone())),
            None => Ok(()),
        }
    })
}
