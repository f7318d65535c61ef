//! The core worker: this process's membership in a cluster — owner of what it submits,
//! executor of what others push to it, server of the objects it holds.
//!
//! [`Cluster`] is one value whose methods are split by concern across sibling modules:
//!
//! - here: joining (registration with the GCS, listeners), connections to other members
//!   (`peer`, made on first use, over shared memory on the same host), a worker process's
//!   serve loop, leaving, and [`WorkerHandler`], which dispatches every connection's messages;
//! - `placement.rs`: the node table and the choice of a node for a task or actor;
//! - `submit.rs`: work this process owns that runs elsewhere, and its fate when a worker dies;
//! - `execute.rs`: work other processes push here, and listings;
//! - `objects.rs`: the object manager (pulls, serving pulls, held results, `FreeObject`);
//! - `attach.rs`: zero-copy reads on one host (attaching another process's arena, the pins
//!   its holder keeps for a reader);
//! - `borrow.rs`: Ray's borrower protocol (borrowed references, the owner's `lent` table),
//!   with its numbered steps and the argument for their correctness.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use manta_transport::{Address, Listener};

use super::attach::{ArenaSlot, PinTable};
use super::borrow::{BorrowEntry, Lent};
use super::objects::{PendingPull, PullQueue};
use super::peer::{Handler, Peer};
use super::placement::NodeSlot;
use super::proto::{Msg, Resource};
use super::submit::InFlight;
use super::supervision::OwnedActor;
use super::{CALL_TIMEOUT, INDEX_SHIFT, cluster_error, host_id, wait_reply};
use crate::error::Error;
use crate::object::{ObjectCell, ObjectValue};
use crate::runtime::RuntimeInner;
use crate::store::StoredObject;
use crate::sync::lock;

/// How this process joined.
#[derive(Clone, Debug)]
pub(crate) enum Role {
    /// The job's driver: owns work, runs none of it.
    Driver,
    /// A worker process a raylet started.
    Worker {
        raylet: String,
        job_id: u64,
        node_id: u64,
    },
}

/// The name of the cluster's I/O thread.
pub(super) const IO_THREAD: &str = "manta-io";

/// This process's cluster membership.
pub(crate) struct Cluster {
    pub(crate) io: IoRuntime,
    pub(crate) role: Role,
    pub(crate) index: u64,
    pub(crate) job_id: u64,
    pub(crate) token: String,
    pub(crate) gcs_address: String,
    pub(crate) address: String,
    pub(crate) gcs: Arc<Peer>,
    pub(super) rt: OnceLock<Weak<RuntimeInner>>,
    pub(super) me: OnceLock<Weak<Cluster>>,
    pub(super) peers: Mutex<HashMap<u64, Arc<Peer>>>,
    pub(super) raylets: Mutex<HashMap<u64, Arc<Peer>>>,
    pub(super) nodes: Mutex<Vec<NodeSlot>>,
    pub(super) nodes_loaded: AtomicBool,
    pub(super) in_flight: Mutex<HashMap<u64, InFlight>>,
    /// Worker processes known dead (their connection closed, or their node died): never
    /// chosen again, even while a raylet still names them.
    pub(super) dead_workers: Mutex<HashSet<u64>>,
    /// Actors this process created in worker processes, with what a restart needs.
    pub(super) owned_actors: Mutex<HashMap<u64, OwnedActor>>,
    /// Results this process computed for remote owners, until they free them.
    pub(super) held: Mutex<HashMap<u64, ObjectValue>>,
    /// Work pushed here and not yet done: id -> (name, owner's worker index, result), for
    /// listings and `CancelTask`.
    pub(super) executing: Mutex<HashMap<u64, super::cancel::Executing>>,
    pub(super) pulls: Mutex<HashMap<u64, PendingPull>>,
    pub(super) pull_queue: Mutex<PullQueue>,
    pub(super) next_pull: AtomicU64,
    /// Task arguments of other processes pulled (or being pulled) here, so that every task
    /// reading one shares one transfer and one copy.
    pub(super) fetched: Mutex<HashMap<u64, Weak<ObjectCell>>>,
    /// Size of `fetched` at which dead entries are next swept (doubles with the live ones, so
    /// sweeping stays amortised O(1) per pull).
    pub(super) fetched_sweep_at: AtomicUsize,
    /// References owned elsewhere that were deserialised here: one registration with the
    /// owner per object while any handle here lives (see "Borrowers" below).
    pub(super) borrowed: Mutex<HashMap<u64, BorrowEntry>>,
    /// Size of `borrowed` at which dead entries are next swept.
    pub(super) borrowed_sweep_at: AtomicUsize,
    /// Objects this process owns that other processes borrow: a strong handle on each, and
    /// the borrowing workers' indices.
    pub(super) lent: Mutex<HashMap<u64, Lent>>,
    pub(super) executable: (String, Vec<String>, String),
    pub(super) stop: tokio::sync::Notify,
    pub(super) stopped: AtomicBool,
    pub(super) max_inline: usize,
    /// Our shared-memory listener's (abstract) socket.
    pub(super) shm_path: Option<std::path::PathBuf>,
    pub(super) host_id: String,
    /// Whether reads of objects held by processes of this host go through their attached
    /// arenas (`zero_copy_node`).
    pub(super) zero_copy: bool,
    /// Arenas of other processes of this host, attached (or being attached) for zero-copy
    /// reads, by worker index.
    pub(super) arenas: Mutex<HashMap<u64, ArenaSlot>>,
    /// Pins this process holds on objects of its store for readers in other processes.
    pub(super) pins: Mutex<PinTable>,
    /// Whether a failed attach was logged at warning level already (once per process).
    pub(super) attach_warned: AtomicBool,
    /// What each remote actor this process created counts on its placement: (node slot,
    /// worker, load), given back when it is killed (`cancel.rs`).
    pub(super) actor_loads: Mutex<HashMap<u64, super::cancel::ActorLoad>>,
    /// The other returns of tasks with `num_returns > 1` this process owns, by object id,
    /// until their `TaskDone` (`returns.rs`).
    pub(super) returns: Mutex<HashMap<u64, Arc<ObjectCell>>>,
    /// Detached actors this worker hosts (`lifetime.rs`).
    pub(super) detached: Mutex<std::collections::HashSet<u64>>,
    /// A worker's connection to its raylet (set by `serve_as_worker`).
    pub(super) raylet_peer: OnceLock<Arc<Peer>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("role", &self.role)
            .field("index", &self.index)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The I/O runtime; dropping it never blocks (the last handle on a cluster may go away on
/// one of its own I/O threads, where a blocking shutdown would panic).
pub(crate) struct IoRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for IoRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the I/O runtime lives until drop")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What `join` needs.
pub(crate) struct JoinOptions {
    pub(crate) gcs_address: String,
    pub(crate) token: String,
    pub(crate) role: Role,
    pub(crate) max_inline: usize,
    /// Also accept (and make) shared-memory connections with processes of this host.
    pub(crate) shm: bool,
    /// Read objects held by processes of this host in place, through their attached arenas.
    pub(crate) zero_copy: bool,
}

/// The path of the abstract Unix socket `name` (a leading NUL byte: no file exists for it).
fn abstract_socket(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("\0{name}"))
}

/// An abstract socket's path as advertised (`@name`), and back.
fn advertised(path: &std::path::Path) -> String {
    path.display().to_string().replacen('\0', "@", 1)
}

fn from_advertised(s: &str) -> std::path::PathBuf {
    match s.strip_prefix('@') {
        Some(name) => abstract_socket(name),
        None => std::path::PathBuf::from(s),
    }
}

impl Cluster {
    /// Joins the cluster: starts the I/O runtime, listens, registers with the GCS.
    pub(crate) fn join(opts: JoinOptions) -> Result<Arc<Cluster>, Error> {
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(IO_THREAD)
            .enable_all()
            .build()
            .map_err(|e| Error::Os {
                what: "starting the cluster I/O thread",
                message: e.to_string(),
            })?;
        let gcs_sock = super::parse_address(&opts.gcs_address)?;
        let ip = match std::env::var("MANTA_NODE_IP") {
            Ok(ip) if !ip.is_empty() => ip.parse().map_err(|_| Error::Config {
                key: "MANTA_NODE_IP".into(),
                message: format!("{ip:?} is not an IP address"),
            })?,
            _ => super::local_ip_towards(gcs_sock),
        };
        let token = opts.token.clone();
        let listener = io.block_on(async {
            Listener::bind(
                &Address::Tcp(std::net::SocketAddr::new(ip, 0)),
                super::transport_config(&token, "worker".into()),
            )
            .await
        });
        let listener = listener.map_err(|e| cluster_error("listening", e.to_string()))?;
        let address = match listener.local_addr() {
            Ok(Address::Tcp(a)) => a.to_string(),
            Ok(other) => other.to_string(),
            Err(e) => return Err(cluster_error("listening", e.to_string())),
        };
        // The shared-memory listener: a Unix socket in a directory of the system's temp dir.
        let shm = if opts.shm {
            // An abstract Unix socket (Linux): no file to leave behind if the process is killed.
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = abstract_socket(&format!("manta-w-{}-{stamp}", std::process::id()));
            let bound = io.block_on(async {
                Listener::bind(
                    &Address::Shm(path.clone()),
                    super::transport_config(&token, "worker".into()),
                )
                .await
            });
            match bound {
                Ok(l) => {
                    // The arena socket beside it (`attach.rs`), for zero-copy reads.
                    let arena = match super::attach::bind(&path) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::warn!(error = %e, "no arena attach socket: processes of this host read this one's objects by copy");
                            None
                        }
                    };
                    Some((l, path, arena))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no shared-memory transport: processes of this host use TCP");
                    None
                }
            }
        } else {
            None
        };
        let shm_path = shm
            .as_ref()
            .map(|(_, p, _)| advertised(p))
            .unwrap_or_default();
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let cwd = std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (node_id, job_id) = match &opts.role {
            Role::Driver => (0, 0),
            Role::Worker {
                node_id, job_id, ..
            } => (*node_id, *job_id),
        };
        // The GCS connection is made first; its handler needs the cluster, so it reaches it
        // through a cell filled right after.
        let slot: Arc<OnceLock<Weak<Cluster>>> = Arc::new(OnceLock::new());
        let handler: Arc<dyn Handler> = Arc::new(WorkerHandler {
            cluster: slot.clone(),
        });
        let gcs = io.block_on(async {
            let conn = super::connect(&opts.gcs_address, &token, "worker".into()).await?;
            Ok::<_, Error>(Peer::spawn(conn, "gcs".into(), handler.clone()))
        })?;
        let _guard = io.enter();
        let rx = gcs.request(|request_id| Msg::RegisterWorker {
            request_id,
            node_id,
            job_id,
            address: address.clone(),
            pid: std::process::id(),
            executable: exe.clone(),
            args: args.clone(),
            cwd: cwd.clone(),
            shm_path: shm_path.clone(),
            host_id: host_id(),
        });
        let (index, job_id) = match wait_reply(rx, CALL_TIMEOUT, "registering with the GCS")? {
            Msg::Registered {
                id, job_id, error, ..
            } => {
                if !error.is_empty() {
                    return Err(cluster_error("registering with the GCS", error));
                }
                (id, job_id)
            }
            other => {
                return Err(cluster_error(
                    "registering with the GCS",
                    format!("unexpected reply {other:?}"),
                ));
            }
        };
        if index == 0 || index >= 1 << (64 - INDEX_SHIFT) {
            return Err(cluster_error(
                "registering with the GCS",
                format!("bad worker index {index}"),
            ));
        }
        let cluster = Arc::new(Cluster {
            io: IoRuntime(Some(io)),
            role: opts.role,
            index,
            job_id,
            token,
            gcs_address: opts.gcs_address,
            address,
            gcs,
            rt: OnceLock::new(),
            me: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            raylets: Mutex::new(HashMap::new()),
            nodes: Mutex::new(Vec::new()),
            nodes_loaded: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            dead_workers: Mutex::new(HashSet::new()),
            owned_actors: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            executing: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            pull_queue: Mutex::new(PullQueue::default()),
            next_pull: AtomicU64::new(1),
            fetched: Mutex::new(HashMap::new()),
            fetched_sweep_at: AtomicUsize::new(1024),
            borrowed: Mutex::new(HashMap::new()),
            borrowed_sweep_at: AtomicUsize::new(1024),
            lent: Mutex::new(HashMap::new()),
            executable: (exe, args, cwd),
            stop: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            max_inline: opts.max_inline,
            shm_path: shm.as_ref().map(|(_, p, _)| p.clone()),
            host_id: host_id(),
            zero_copy: opts.zero_copy,
            arenas: Mutex::new(HashMap::new()),
            pins: Mutex::new(PinTable::default()),
            attach_warned: AtomicBool::new(false),
            actor_loads: Mutex::new(HashMap::new()),
            returns: Mutex::new(HashMap::new()),
            detached: Mutex::new(std::collections::HashSet::new()),
            raylet_peer: OnceLock::new(),
        });
        let _ = slot.set(Arc::downgrade(&cluster));
        super::borrow::enable_borrows();
        super::remote::enable();
        let _ = cluster.me.set(Arc::downgrade(&cluster));
        // Node deaths and joins reach the placement view.
        cluster.gcs.send(Msg::Subscribe { request_id: 0 });
        if let Some((shm_listener, _, arena_listener)) = shm {
            if let Some(l) = arena_listener {
                let weak = Arc::downgrade(&cluster);
                cluster.io.spawn(super::attach::serve(l, weak));
            }
            let weak = Arc::downgrade(&cluster);
            cluster.io.spawn(async move {
                loop {
                    let conn = match shm_listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            // Logged by the transport, rate-limited.
                            tracing::debug!(error = %e, "refused a shared-memory connection");
                            continue;
                        }
                    };
                    let Some(c) = weak.upgrade() else { return };
                    c.adopt(conn);
                }
            });
        }
        // Accept other members.
        let weak = Arc::downgrade(&cluster);
        cluster.io.spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Logged by the transport, rate-limited.
                        tracing::debug!(error = %e, "refused a connection");
                        continue;
                    }
                };
                let Some(c) = weak.upgrade() else { return };
                c.adopt(conn);
            }
        });
        Ok(cluster)
    }

    /// Gives the cluster its runtime (right after the runtime is made).
    pub(crate) fn set_runtime(&self, rt: &Arc<RuntimeInner>) {
        let _ = self.rt.set(Arc::downgrade(rt));
    }

    /// A request to the GCS and its reply (from a non-I/O thread).
    pub(crate) fn gcs_call(&self, make: impl FnOnce(u64) -> Msg) -> Result<Msg, Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(make);
        wait_reply(rx, CALL_TIMEOUT, "a request to the GCS")
    }

    pub(super) fn runtime(&self) -> Option<Arc<RuntimeInner>> {
        self.rt.get().and_then(Weak::upgrade)
    }

    fn handler(&self) -> Arc<dyn Handler> {
        let slot = Arc::new(OnceLock::new());
        if let Some(me) = self.me.get() {
            let _ = slot.set(me.clone());
        }
        Arc::new(WorkerHandler { cluster: slot })
    }

    /// The name this process gives itself in handshakes.
    fn my_name(&self) -> String {
        format!("w{}", self.index)
    }

    /// An accepted connection: if it is a worker we do not know yet, remember it as that
    /// worker's peer.
    fn adopt(&self, conn: manta_transport::Connection) {
        let name = conn.peer_name().to_owned();
        let _guard = self.io.enter();
        let peer = Peer::spawn(conn, name.clone(), self.handler());
        if let Some(index) = name.strip_prefix('w').and_then(|i| i.parse::<u64>().ok()) {
            lock(&self.peers).entry(index).or_insert(peer);
        }
    }

    /// The first id this process hands out.
    pub(crate) fn first_id(&self) -> u64 {
        (self.index << INDEX_SHIFT) | 1
    }

    /// The node this process works on (`None` for a driver).
    pub(crate) fn node_id(&self) -> Option<u64> {
        match &self.role {
            Role::Driver => None,
            Role::Worker { node_id, .. } => Some(*node_id),
        }
    }

    /// Whether this process runs no work of its own.
    pub(crate) fn is_driver(&self) -> bool {
        matches!(self.role, Role::Driver)
    }

    // ----- peers ------------------------------------------------------------------------

    /// The connection to worker `index`, made on first use (its address from the GCS).
    pub(crate) fn peer(&self, index: u64) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(&index)
            && !p.is_closed()
        {
            return p.clone();
        }
        let (peer, pending) = Peer::pending(format!("w{index}"));
        peers.insert(index, peer.clone());
        drop(peers);
        let gcs = self.gcs.clone();
        let token = self.token.clone();
        let name = self.my_name();
        let handler = self.handler();
        let my_host = if self.shm_path.is_some() {
            self.host_id.clone()
        } else {
            String::new()
        };
        let _guard = self.io.enter();
        let rx = gcs.request(|request_id| Msg::GetWorker { request_id, index });
        self.io.spawn(async move {
            let (address, shm) = match rx.await {
                Ok(Ok(Msg::WorkerInfo {
                    address,
                    alive: true,
                    shm_path,
                    host_id,
                    ..
                })) => {
                    let shm = (!shm_path.is_empty() && host_id == my_host).then_some(shm_path);
                    (address, shm)
                }
                Ok(Ok(_)) => return pending.fail(handler, &format!("worker {index} is not alive")),
                Ok(Err(e)) => return pending.fail(handler, &e.to_string()),
                Err(_) => return pending.fail(handler, "the GCS connection closed"),
            };
            // Same host and namespace: shared-memory rings; else (or if that fails) TCP.
            if let Some(path) = shm.filter(|_| !my_host.is_empty()) {
                let config = super::transport_config(&token, name.clone());
                match manta_transport::Connection::connect(
                    &Address::Shm(from_advertised(&path)),
                    &config,
                )
                .await
                {
                    Ok(conn) => return pending.attach(conn, handler),
                    Err(e) => {
                        tracing::debug!(error = %e, %path, "shared-memory connect failed: using TCP");
                    }
                }
            }
            match super::connect(&address, &token, name).await {
                Ok(conn) => pending.attach(conn, handler),
                Err(e) => pending.fail(handler, &e.to_string()),
            }
        });
        peer
    }

    /// The connection to the raylet of node slot `node` (made on first use).
    pub(super) fn raylet(&self, node_id: u64, address: &str) -> Arc<Peer> {
        let mut raylets = lock(&self.raylets);
        if let Some(p) = raylets.get(&node_id)
            && !p.is_closed()
        {
            return p.clone();
        }
        let (peer, pending) = Peer::pending(format!("raylet:{node_id}"));
        raylets.insert(node_id, peer.clone());
        drop(raylets);
        let token = self.token.clone();
        let name = self.my_name();
        let handler = self.handler();
        let address = address.to_owned();
        self.io.spawn(async move {
            match super::connect(&address, &token, name).await {
                Ok(conn) => pending.attach(conn, handler),
                Err(e) => pending.fail(handler, &e.to_string()),
            }
        });
        peer
    }

    // ----- lifetime ---------------------------------------------------------------------

    /// A worker process: tell the raylet we are ready, then serve until told to stop.
    pub(crate) fn serve_as_worker(&self) -> ! {
        let Role::Worker {
            raylet,
            job_id,
            node_id,
        } = &self.role
        else {
            std::process::exit(2);
        };
        let token = self.token.clone();
        let name = self.my_name();
        let handler = self.handler();
        let raylet = raylet.clone();
        let node_id = *node_id;
        // What this worker holds, for owners choosing among a node's workers.
        let resources = match self.load_report(node_id) {
            Msg::Heartbeat { resources, .. } => resources
                .into_iter()
                .filter(|r| r.name != "object_store_memory")
                .collect(),
            _ => Vec::new(),
        };
        let ready = Msg::WorkerReady {
            job_id: *job_id,
            index: self.index,
            address: self.address.clone(),
            pid: std::process::id(),
            resources,
        };
        let r = self.io.block_on(async move {
            let conn = super::connect(&raylet, &token, name).await?;
            let peer = Peer::spawn(conn, format!("raylet:{node_id}"), handler);
            let _ = self.raylet_peer.set(peer.clone());
            peer.send(ready);
            Ok::<_, Error>(peer)
        });
        let raylet_peer = match r {
            Ok(p) => p,
            Err(e) => {
                eprintln!("manta worker: cannot reach its raylet: {e}");
                std::process::exit(1);
            }
        };
        self.io.block_on(async {
            loop {
                tokio::select! {
                    _ = self.stop.notified() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                        if raylet_peer.is_closed() || self.gcs.is_closed() {
                            break;
                        }
                        raylet_peer.send(self.load_report(node_id));
                    }
                }
            }
        });
        if raylet_peer.is_closed() || self.gcs.is_closed() {
            // Our node is gone (or cut off): a worker shares its raylet's fate, as in Ray.
            // Exit now rather than wait for running tasks (`shutdown` joins them), so that
            // our connections close and owners fail what they had in flight here.
            let lost = if self.gcs.is_closed() {
                format!("the cluster's head at {}", self.gcs_address)
            } else {
                "this node's raylet".to_owned()
            };
            // One line on stderr whatever the application's logging (under srun/mpirun this
            // is what the user sees from the ranks that outlived the head).
            eprintln!(
                "manta: worker {} (pid {}) lost {lost}; exiting",
                self.index,
                std::process::id()
            );
            std::process::exit(1);
        }
        tracing::debug!(index = self.index, "worker stopping");
        crate::runtime::shutdown();
        std::process::exit(0);
    }

    /// What this worker uses of its node: its scheduler's free resources and its store.
    fn load_report(&self, node_id: u64) -> Msg {
        let Some(rt) = self.runtime() else {
            return Msg::Heartbeat {
                node_id,
                resources: Vec::new(),
                store_used: 0,
                store_pages: String::new(),
            };
        };
        let mut resources: Vec<Resource> = rt
            .scheduler
            .resources
            .snapshot()
            .into_iter()
            .chain(rt.scheduler.resources.dynamic_snapshot())
            .map(|(name, available, total)| Resource {
                name,
                total,
                available,
            })
            .collect();
        let mut store_used = 0;
        let mut store_pages = String::new();
        if let Some(store) = &rt.store {
            let s = store.status();
            store_used = s.used as u64;
            store_pages = s.page_kind.to_string();
            resources.push(Resource {
                name: "object_store_memory".into(),
                total: s.capacity as f64,
                available: s.capacity.saturating_sub(s.used) as f64,
            });
        }
        Msg::Heartbeat {
            node_id,
            resources,
            store_used,
            store_pages,
        }
    }

    /// Leaves the cluster (at `shutdown`): closes connections.
    pub(crate) fn leave(&self) {
        self.stopped.store(true, Ordering::Release);
        self.gcs.shutdown("shutdown");
        for p in lock(&self.peers).drain().map(|(_, p)| p) {
            p.shutdown("shutdown");
        }
        for p in lock(&self.raylets).drain().map(|(_, p)| p) {
            p.shutdown("shutdown");
        }
        let in_flight: Vec<InFlight> = lock(&self.in_flight).drain().map(|(_, f)| f).collect();
        for f in in_flight {
            f.cell.complete(Err(Error::ShutDown));
        }
        let lent: Vec<Lent> = lock(&self.lent).drain().map(|(_, l)| l).collect();
        drop(lent);
        self.attach_leave();
    }
}

/// Handles messages on every connection of a core worker.
struct WorkerHandler {
    cluster: Arc<OnceLock<Weak<Cluster>>>,
}

impl Handler for WorkerHandler {
    fn on_message(self: Arc<Self>, peer: &Arc<Peer>, msg: Msg) {
        let Some(c) = self.cluster.get().and_then(Weak::upgrade) else {
            return;
        };
        match msg {
            Msg::PushTask {
                task_id,
                function,
                args,
                resources,
                name,
                max_retries,
            } => c.run_pushed_task(peer, task_id, &function, args, resources, name, max_retries),
            Msg::CreateActor {
                actor_id,
                class_name,
                args,
                resources,
                name,
                max_concurrency,
                max_restarts,
                group,
            } => c.create_pushed_actor(
                peer,
                actor_id,
                &class_name,
                args,
                resources,
                name,
                (max_concurrency, max_restarts),
                group,
            ),
            Msg::ActorCall {
                actor_id,
                call_id,
                method,
                args,
            } => c.call_pushed_actor(peer, actor_id, call_id, &method, args),
            Msg::KillActor { actor_id, restart } => c.kill_pushed_actor(actor_id, restart),
            Msg::CancelTask {
                request_id,
                task_id,
                force,
                recursive,
            } => c.cancel_pushed(
                peer,
                request_id,
                task_id,
                crate::cancel::CancelOptions { force, recursive },
            ),
            Msg::DetachActor { actor_id } => c.detach_pushed_actor(actor_id),
            Msg::Pg {
                op,
                group,
                request_id: 0,
                ..
            } => c.pg_notice(peer, op, group),
            Msg::JobEvent {
                job_id,
                finished: true,
            } if c.raylet_peer.get().is_some_and(|r| Arc::ptr_eq(r, peer)) => c.job_ended(job_id),
            Msg::ReleaseActor { actor_id } => c.release_pushed_actor(actor_id),
            Msg::TaskDone { task_id, outcome } => c.task_done(peer, task_id, outcome),
            Msg::PullObject {
                request_id,
                object_id,
                pin,
                ..
            } => c.serve_pull(peer, request_id, object_id, pin),
            Msg::ObjectPinned {
                request_id,
                pin_id,
                offset,
                len,
                arena,
            } => c.object_pinned(peer, request_id, pin_id, offset, len, arena),
            Msg::UnpinObject { pin_id } => c.unpin_object(peer, pin_id),
            Msg::ObjectFailed {
                request_id,
                kind,
                task,
                message,
                cause,
            } => c.object_failed(request_id, kind, task, message, cause),
            Msg::ObjectData {
                request_id,
                found,
                len,
                inline,
                error,
                redirect,
            } => c.object_data(peer, request_id, found, len, inline, error, redirect),
            Msg::FreeObject { object_id } => {
                let freed = lock(&c.held).remove(&object_id);
                drop(freed);
            }
            Msg::AddBorrowers {
                request_id,
                objects,
            } => c.add_borrowers(peer, request_id, objects),
            Msg::RemoveBorrower { object_id } => c.remove_borrower(peer, object_id),
            Msg::BorrowersAdded { request_id, .. } => {
                tracing::debug!(request_id, "late answer to a borrower registration ignored");
            }
            Msg::ListWork { request_id } => peer.send(c.work(request_id)),
            Msg::NodeEvent { node } if !node.alive => c.node_died(node.node_id),
            Msg::NodeEvent { .. } => {
                c.nodes_loaded.store(false, Ordering::Release);
            }
            Msg::Stop { reason } => {
                tracing::debug!(%reason, "told to stop");
                c.stop.notify_one();
                c.stop.notify_waiters();
            }
            other => {
                tracing::warn!(peer = %peer.name, message = ?other, "unexpected message for a worker: ignored");
            }
        }
    }

    fn on_close(self: Arc<Self>, peer: &Arc<Peer>, reason: &str) {
        let Some(c) = self.cluster.get().and_then(Weak::upgrade) else {
            return;
        };
        // Names are the remote's own choice: act only on the connection recorded for a worker
        // (a member closing some other connection that calls itself `w<N>` changes nothing).
        // A worker's raylet connection is watched by `serve_as_worker`.
        if let Some(index) = peer
            .name
            .strip_prefix('w')
            .and_then(|i| i.parse::<u64>().ok())
        {
            let recorded = {
                let mut peers = lock(&c.peers);
                let is = peers.get(&index).is_some_and(|p| Arc::ptr_eq(p, peer));
                if is {
                    peers.remove(&index);
                }
                is
            };
            if recorded {
                c.worker_lost(index, reason);
            }
        }
    }
}

#[allow(unused)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Cluster>();
    is::<StoredObject>();
}
