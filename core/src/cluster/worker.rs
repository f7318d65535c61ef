//! The core worker: this process's membership in a cluster — owner of what it submits,
//! executor of what others push to it, server of the objects it holds.
//!
//! # Borrowers (Ray's distributed reference counting)
//!
//! The process whose worker index is in an object's id owns it. Another process that
//! deserialises a reference to it is a *borrower*; the object lives while its owner's handles
//! or any borrower's handles live, and is freed (locally, or `FreeObject` to the worker that
//! holds it) when the last of them goes.
//!
//! 1. Deserialising a foreign-owned id ([`Cluster::borrow`]) hands out the process's one live
//!    cell for it (table `borrowed`), or makes one: already complete, its value a lazy
//!    [`RemoteObject`] pointing at the owner, pulled on first read (the owner redirects the
//!    pull to the worker holding the bytes). Deserialising pulls nothing.
//! 2. A new borrowed `RemoteObject` is the process's registration: it is noted in the
//!    decoding thread's [`BorrowScope`] (one per `codec::decode`). A cell found whose
//!    registration another thread still has in flight is noted too, to wait for.
//! 3. When the scope ends, before the decoded value is returned, the thread sends one
//!    `AddBorrowers{objects}` per owner for the borrows it made and waits for every
//!    `BorrowersAdded` (with `CALL_TIMEOUT`), then waits for the registrations of other
//!    threads it found in flight. An object the owner does not know, or an owner that does
//!    not answer, fails the borrow: its reads return the error.
//! 4. The owner ([`Cluster::add_borrowers`]) keeps a strong handle on each object in `lent`
//!    with the set of borrowing workers, so dropping its own handles no longer frees it.
//! 5. When the borrowed `RemoteObject` drops (the last cell and value here holding it), the
//!    borrower sends `RemoveBorrower` (queued, batched by the writer) — only if it is still
//!    the registration in `borrowed` and was acknowledged. The owner removes the borrower and
//!    drops its handle when the set is empty. A borrower's death (`worker_lost`) removes it
//!    from every set; an owner's death fails its borrowers' reads.
//!
//! Why it is safe: a reference crosses processes only inside something its sender keeps
//! alive until the receiver is done with it — task arguments (the owner's `InFlight` holds
//! them until `TaskDone`), values nested in a stored object (the object holds them), or a
//! result (the executor holds every result with nested references until its owner frees it,
//! however small). The receiver deserialises on a user thread or a slot, and step 3 completes
//! before the value is handed over, so before the receiving task can finish and before its
//! `TaskDone` (or its free of the container) can reach the sender: by the time the sender may
//! drop its own handle, the owner has already counted the receiver. Step 5's sends are made
//! under the `borrowed` lock, so a later registration of the same object by this process
//! always reaches the owner after the RemoveBorrower of an earlier one.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use manta_transport::{Address, Listener};

use super::peer::{BulkArrival, BulkData, Handler, Peer};
use super::policy::{self, NodeLoad};
use super::proto::{Arg, ErrorKind, Msg, Outcome, Resource};
use super::{CALL_TIMEOUT, INDEX_SHIFT, cluster_error, host_id, owner_of, wait_reply};
use crate::actor::{ActorCell, RemoteActor};
use crate::error::{Error, TaskError};
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectValue, Payload, Waiter};
use crate::resources::ResourceRequest;
use crate::runtime::RuntimeInner;
use crate::store::StoredObject;
use crate::sync::lock;
use crate::task::ArgSlot;

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

/// A task or actor call this process owns that runs elsewhere.
struct InFlight {
    cell: Arc<ObjectCell>,
    /// The function, method or actor class (for listings).
    name: &'static str,
    /// Worker index it was pushed to.
    worker: u64,
    /// Node slot it counts against, and what it holds there (released when done).
    node: Option<usize>,
    load: Vec<(String, f64)>,
    /// Kept alive until the task is done (argument cells the executor may pull).
    args: Box<[ArgSlot]>,
    /// How to run a task again elsewhere if its worker dies (tasks only, not actor calls).
    retry: Option<Retry>,
}

/// A task's submission, kept to run it again after its worker process died.
struct Retry {
    function: &'static str,
    request: ResourceRequest,
    name: Option<String>,
    max_retries: u32,
    left: u32,
}

/// A node of the cluster as this owner sees it.
struct NodeSlot {
    node_id: u64,
    address: String,
    alive: bool,
    totals: Vec<(String, f64)>,
    busy_cpus: f64,
    /// The job's worker processes there (empty until its raylet has named them).
    workers: Vec<NodeWorker>,
}

/// One of the job's worker processes on a node, as this owner sees it.
struct NodeWorker {
    index: u64,
    peer: Arc<Peer>,
    /// `(resource, total)` its scheduler holds.
    totals: Vec<(String, f64)>,
    /// This owner's demand in flight there, per resource.
    busy: Vec<(String, f64)>,
}

impl NodeWorker {
    fn load(&self) -> policy::WorkerLoad {
        policy::WorkerLoad {
            totals: self.totals.clone(),
            busy: self.busy.clone(),
        }
    }
}

/// The name of the cluster's I/O thread.
const IO_THREAD: &str = "manta-io";

/// A pending pull: who holds the object, and what to do with it.
type PullDone = Box<dyn FnOnce(Result<Payload, Error>) + Send>;

/// Bytes of pulls in flight at once (more wait, highest priority first).
const MAX_PULL_BYTES: u64 = 256 << 20;
/// What an object of unknown size counts as against [`MAX_PULL_BYTES`].
const UNKNOWN_PULL_BYTES: u64 = 1 << 20;

/// A pull waiting for room.
struct QueuedPull {
    priority: u8,
    seq: u64,
    holder: u64,
    object_id: u64,
    bytes: u64,
    done: PullDone,
    /// The cell this pull fills, when nothing else needs it: a pull whose cell every reader
    /// dropped before it started is skipped.
    wanted: Option<Weak<ObjectCell>>,
}

/// The object manager's pull queue: get (0) before wait (1) before task arguments (2), FIFO
/// within a priority, and at most [`MAX_PULL_BYTES`] in flight (one pull always may run).
#[derive(Default)]
struct PullQueue {
    in_flight: u64,
    waiting: std::collections::BTreeMap<(u8, u64), QueuedPull>,
    seq: u64,
}

/// A pull sent, waiting for its ObjectData.
struct PendingPull {
    peer: String,
    object_id: u64,
    priority: u8,
    /// Redirects followed so far.
    hops: u8,
    done: PullDone,
}

fn not_found(request_id: u64, error: String) -> Msg {
    Msg::ObjectData {
        request_id,
        found: false,
        len: 0,
        inline: Vec::new(),
        error,
        redirect: 0,
    }
}

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
    rt: OnceLock<Weak<RuntimeInner>>,
    me: OnceLock<Weak<Cluster>>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    raylets: Mutex<HashMap<u64, Arc<Peer>>>,
    nodes: Mutex<Vec<NodeSlot>>,
    nodes_loaded: AtomicBool,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    /// Results this process computed for remote owners, until they free them.
    held: Mutex<HashMap<u64, ObjectValue>>,
    /// Work pushed here and not yet done: id -> (name, owner's worker index), for listings.
    executing: Mutex<HashMap<u64, (Box<str>, u64)>>,
    pulls: Mutex<HashMap<u64, PendingPull>>,
    pull_queue: Mutex<PullQueue>,
    next_pull: AtomicU64,
    /// Task arguments of other processes pulled (or being pulled) here, so that every task
    /// reading one shares one transfer and one copy.
    fetched: Mutex<HashMap<u64, Weak<ObjectCell>>>,
    /// Size of `fetched` at which dead entries are next swept (doubles with the live ones, so
    /// sweeping stays amortised O(1) per pull).
    fetched_sweep_at: AtomicUsize,
    /// References owned elsewhere that were deserialised here: one registration with the
    /// owner per object while any handle here lives (see "Borrowers" below).
    borrowed: Mutex<HashMap<u64, BorrowEntry>>,
    /// Size of `borrowed` at which dead entries are next swept.
    borrowed_sweep_at: AtomicUsize,
    /// Objects this process owns that other processes borrow: a strong handle on each, and
    /// the borrowing workers' indices.
    lent: Mutex<HashMap<u64, Lent>>,
    executable: (String, Vec<String>, String),
    stop: tokio::sync::Notify,
    stopped: AtomicBool,
    max_inline: usize,
    /// Our shared-memory listener's (abstract) socket.
    shm_path: Option<std::path::PathBuf>,
    host_id: String,
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
                Ok(l) => Some((l, path)),
                Err(e) => {
                    tracing::warn!(error = %e, "no shared-memory transport: processes of this host use TCP");
                    None
                }
            }
        } else {
            None
        };
        let shm_path = shm.as_ref().map(|(_, p)| advertised(p)).unwrap_or_default();
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
            shm_path: shm.as_ref().map(|(_, p)| p.clone()),
            host_id: host_id(),
        });
        let _ = slot.set(Arc::downgrade(&cluster));
        let _ = cluster.me.set(Arc::downgrade(&cluster));
        // Node deaths and joins reach the placement view.
        cluster.gcs.send(Msg::Subscribe { request_id: 0 });
        if let Some((shm_listener, _)) = shm {
            let weak = Arc::downgrade(&cluster);
            cluster.io.spawn(async move {
                loop {
                    let conn = match shm_listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "refused a shared-memory connection");
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
                        tracing::warn!(error = %e, "refused a connection");
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

    fn runtime(&self) -> Option<Arc<RuntimeInner>> {
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
    fn raylet(&self, node_id: u64, address: &str) -> Arc<Peer> {
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

    // ----- nodes and placement ----------------------------------------------------------

    /// Refreshes the node table from the GCS.
    pub(crate) fn refresh_nodes(&self) -> Result<(), Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::GetNodes { request_id });
        let Msg::Nodes { nodes, .. } = wait_reply(rx, CALL_TIMEOUT, "reading the node table")?
        else {
            return Err(cluster_error("reading the node table", "unexpected reply"));
        };
        let mut slots = lock(&self.nodes);
        for n in nodes {
            let totals: Vec<(String, f64)> = n
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.total))
                .collect();
            match slots.iter_mut().find(|s| s.node_id == n.node_id) {
                Some(s) => {
                    s.alive = n.alive;
                    s.totals = totals;
                }
                None => slots.push(NodeSlot {
                    node_id: n.node_id,
                    address: n.address,
                    alive: n.alive,
                    totals,
                    busy_cpus: 0.0,
                    workers: Vec::new(),
                }),
            }
        }
        self.nodes_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks a node dead (a NodeEvent from the GCS) and fails what this process had in flight
    /// on the job's worker there: its connection may never report the loss (an unreachable
    /// host sends no FIN), and no new work may be placed there.
    fn node_died(&self, node_id: u64) {
        let mut lost = Vec::new();
        for s in lock(&self.nodes).iter_mut() {
            if s.node_id == node_id {
                s.alive = false;
                lost.extend(s.workers.drain(..).map(|w| w.index));
            }
        }
        for index in lost {
            if let Some(p) = lock(&self.peers).remove(&index) {
                p.shutdown("its node died");
            }
            self.worker_lost(index, &format!("node {node_id} died"));
        }
    }

    /// Chooses a node for `request` (Ray's hybrid policy) and, among the job's workers there,
    /// one that can take it (`policy::pick_worker`); returns the node's slot index and the
    /// worker's index and peer. A node whose totals cover the request but none of whose
    /// workers does (SPMD ranks each hold a share of their node) is passed over.
    fn place(
        &self,
        request: &ResourceRequest,
        preferred_worker: Option<u64>,
    ) -> Result<(usize, u64, Arc<Peer>), Error> {
        if !self.nodes_loaded.load(Ordering::Acquire) {
            self.refresh_nodes()?;
        }
        let wanted = request_pairs(request);
        let mut passed: Vec<usize> = Vec::new();
        let pick = |slots: &Vec<NodeSlot>, passed: &[usize]| {
            let loads: Vec<NodeLoad> = slots
                .iter()
                .enumerate()
                .map(|(i, s)| NodeLoad {
                    totals: s.totals.clone(),
                    busy_cpus: s.busy_cpus,
                    alive: s.alive && !passed.contains(&i),
                })
                .collect();
            let preferred = preferred_worker.and_then(|w| {
                slots
                    .iter()
                    .position(|s| s.workers.iter().any(|x| x.index == w))
            });
            policy::pick(&loads, &wanted, preferred, 0.5)
        };
        let mut refreshed = false;
        loop {
            let mut chosen = pick(&lock(&self.nodes), &passed);
            if chosen.is_none() && !refreshed {
                // A node may have joined since: look again once.
                self.refresh_nodes()?;
                refreshed = true;
                chosen = pick(&lock(&self.nodes), &passed);
            }
            let Some(i) = chosen else {
                let totals: Vec<String> = lock(&self.nodes)
                    .iter()
                    .filter(|s| s.alive)
                    .map(|s| {
                        let workers: Vec<String> = s
                            .workers
                            .iter()
                            .map(|w| format!("{:?}", w.totals))
                            .collect();
                        if workers.len() > 1 {
                            format!(
                                "node {}: {:?} in workers {}",
                                s.node_id,
                                s.totals,
                                workers.join(", ")
                            )
                        } else {
                            format!("node {}: {:?}", s.node_id, s.totals)
                        }
                    })
                    .collect();
                return Err(Error::Infeasible {
                    what: "the task or actor".into(),
                    request: request.to_string(),
                    total: if totals.is_empty() {
                        "no live nodes".into()
                    } else {
                        totals.join("; ")
                    },
                });
            };
            self.node_workers(i)?;
            let slots = lock(&self.nodes);
            let workers = &slots[i].workers;
            let loads: Vec<policy::WorkerLoad> = workers.iter().map(NodeWorker::load).collect();
            let preferred =
                preferred_worker.and_then(|w| workers.iter().position(|x| x.index == w));
            match policy::pick_worker(&loads, &wanted, preferred) {
                Some(j) => return Ok((i, workers[j].index, workers[j].peer.clone())),
                None => passed.push(i),
            }
        }
    }

    /// Makes sure the job's workers on node slot `i` are known: asks that node's raylet for
    /// them on first use (it starts one, or names those that joined by themselves).
    fn node_workers(&self, i: usize) -> Result<(), Error> {
        let (node_id, address, totals) = {
            let mut slots = lock(&self.nodes);
            let s = &mut slots[i];
            s.workers.retain(|w| !w.peer.is_closed());
            if !s.workers.is_empty() {
                return Ok(());
            }
            (s.node_id, s.address.clone(), s.totals.clone())
        };
        let raylet = self.raylet(node_id, &address);
        let (exe, args, cwd) = self.executable.clone();
        let job_id = self.job_id;
        let _guard = self.io.enter();
        let rx = raylet.request(|request_id| Msg::StartWorker {
            request_id,
            job_id,
            executable: exe,
            args,
            cwd,
            env: forwarded_env(),
        });
        let what = format!("starting a worker on node {node_id}");
        let Msg::WorkerStarted {
            index,
            error,
            workers,
            ..
        } = wait_reply(rx, CALL_TIMEOUT, &what)?
        else {
            return Err(cluster_error(what, "unexpected reply"));
        };
        if !error.is_empty() {
            return Err(cluster_error(what, error));
        }
        // A raylet that names no list started one worker holding the whole node.
        let named: Vec<(u64, Vec<(String, f64)>)> = if workers.is_empty() {
            vec![(index, totals)]
        } else {
            workers
                .into_iter()
                .map(|w| {
                    let totals = w.resources.into_iter().map(|r| (r.name, r.total)).collect();
                    (w.index, totals)
                })
                .collect()
        };
        let found: Vec<NodeWorker> = named
            .into_iter()
            .map(|(index, totals)| NodeWorker {
                index,
                peer: self.peer(index),
                totals,
                busy: Vec::new(),
            })
            .collect();
        let mut slots = lock(&self.nodes);
        // Another thread may have asked at the same time: keep its list (and its load).
        if slots[i].workers.is_empty() {
            slots[i].workers = found;
        }
        Ok(())
    }

    /// Counts `load` against worker `worker` on node slot `node` (until `release_load`).
    fn take_load(&self, node: usize, worker: u64, load: &[(String, f64)]) {
        let mut slots = lock(&self.nodes);
        let Some(s) = slots.get_mut(node) else { return };
        s.busy_cpus += cpus_of(load);
        if let Some(w) = s.workers.iter_mut().find(|w| w.index == worker) {
            for (name, amount) in load {
                match w.busy.iter_mut().find(|(n, _)| n == name) {
                    Some((_, busy)) => *busy += amount,
                    None => w.busy.push((name.clone(), *amount)),
                }
            }
        }
    }

    fn release_load(&self, node: Option<usize>, worker: u64, load: &[(String, f64)]) {
        let Some(i) = node else { return };
        let mut slots = lock(&self.nodes);
        let Some(s) = slots.get_mut(i) else { return };
        s.busy_cpus = (s.busy_cpus - cpus_of(load)).max(0.0);
        if let Some(w) = s.workers.iter_mut().find(|w| w.index == worker) {
            for (name, amount) in load {
                if let Some((_, busy)) = w.busy.iter_mut().find(|(n, _)| n == name) {
                    *busy = (*busy - amount).max(0.0);
                }
            }
        }
    }

    // ----- owning remote work -----------------------------------------------------------

    /// Turns an argument slot into its wire form, entering local objects in the escape table
    /// so the executor can pull them.
    fn wire_arg(&self, rt: &Arc<RuntimeInner>, slot: &ArgSlot) -> Arg {
        match slot {
            ArgSlot::Value(v) => self.value_arg(v, None),
            ArgSlot::Ref(cell) => match cell.get() {
                Some(Ok(v)) => self.value_arg(v, Some(cell)),
                _ => {
                    cell.escape(rt);
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: 0,
                    }
                }
            },
        }
    }

    fn value_arg(&self, v: &ObjectValue, cell: Option<&Arc<ObjectCell>>) -> Arg {
        match &v.data {
            Payload::Inline(b) if v.nested.is_empty() || cell.is_none() => Arg::Inline(b.to_vec()),
            Payload::Remote(r) => Arg::Ref {
                object_id: r.id,
                holder: r.holder,
                len: r.len,
            },
            _ => match cell {
                Some(cell) => {
                    if let Some(rt) = self.runtime() {
                        cell.escape(&rt);
                    }
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
                // A stored value given by value: hold it under a fresh id to be pulled.
                None => {
                    let id = self
                        .runtime()
                        .map(|rt| rt.next_object_id().as_u64())
                        .unwrap_or(0);
                    lock(&self.held).insert(id, v.clone());
                    Arg::Ref {
                        object_id: id,
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
            },
        }
    }

    /// Submits a task to a worker process elsewhere; completes `cell` when it is done.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        function: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_retries: u32,
        retries_left: u32,
    ) {
        let wire_args: Vec<Arg> = args.iter().map(|a| self.wire_arg(rt, a)).collect();
        // Prefer the worker that holds the largest argument (Ray's locality-aware leasing),
        // as long as its node is not busy.
        let preferred = wire_args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref { holder, len, .. } if *holder != self.index && *len > 0 => {
                    Some((*len, *holder))
                }
                _ => None,
            })
            .max()
            .map(|(_, holder)| holder);
        let (node, worker, peer) = match self.place(request, preferred) {
            Ok(p) => p,
            Err(e) => {
                cell.complete(Err(e));
                return;
            }
        };
        let task_id = cell.id().as_u64();
        let load = request_pairs(request);
        self.take_load(node, worker, &load);
        lock(&self.in_flight).insert(
            task_id,
            InFlight {
                cell,
                name: function,
                worker,
                node: Some(node),
                load,
                args,
                retry: Some(Retry {
                    function,
                    request: request.clone(),
                    name: name.map(str::to_owned),
                    max_retries,
                    left: retries_left,
                }),
            },
        );
        peer.send(Msg::PushTask {
            task_id,
            function: function.to_owned(),
            args: wire_args,
            resources: request_resources(request),
            name: name.unwrap_or_default().to_owned(),
            max_retries,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
    }

    /// Creates an actor in a worker process elsewhere; `created` completes when its
    /// constructor has run there. Returns the actor's location.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_actor_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_concurrency: usize,
        max_restarts: u32,
    ) -> Result<(), Error> {
        let (node, worker, peer) = self.place(request, None)?;
        let actor_id = actor.id().as_u64();
        let node_id = lock(&self.nodes).get(node).map(|s| s.node_id).unwrap_or(0);
        // The directory first, so a taken name fails before anything runs.
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::RegisterActor {
            request_id,
            actor: super::proto::ActorInfo {
                actor_id,
                name: name.unwrap_or_default().to_owned(),
                class_name: actor.class_name().to_owned(),
                worker,
                node_id,
                alive: true,
                death: String::new(),
            },
        });
        if let Msg::ActorReply { error, .. } = wait_reply(rx, CALL_TIMEOUT, "registering an actor")?
            && !error.is_empty()
        {
            return Err(match name {
                Some(n) if error.contains("taken") => Error::ActorNameTaken { name: n.to_owned() },
                _ => cluster_error("registering an actor", error),
            });
        }
        actor.set_remote(RemoteActor {
            worker,
            peer: peer.clone(),
        });
        let wire_args: Vec<Arg> = args.iter().map(|a| self.wire_arg(rt, a)).collect();
        // An actor holds what it asked for on its worker while it lives.
        self.take_load(node, worker, &request_pairs(request));
        lock(&self.in_flight).insert(
            actor_id,
            InFlight {
                cell: created,
                name: actor.class_name(),
                worker,
                node: None,
                load: Vec::new(),
                args: args.into_boxed_slice(),
                retry: None,
            },
        );
        peer.send(Msg::CreateActor {
            actor_id,
            class_name: actor.class_name().to_owned(),
            args: wire_args,
            resources: request_resources(request),
            name: name.unwrap_or_default().to_owned(),
            max_concurrency: max_concurrency as u32,
            max_restarts,
        });
        Ok(())
    }

    /// Sends a call to a remote actor; completes `cell` with its result.
    pub(crate) fn call_remote(
        &self,
        remote: &RemoteActor,
        actor_id: u64,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
    ) {
        let Some(rt) = self.runtime() else {
            cell.complete(Err(Error::ShutDown));
            return;
        };
        let call_id = cell.id().as_u64();
        let wire_args: Vec<Arg> = args.iter().map(|a| self.wire_arg(&rt, a)).collect();
        lock(&self.in_flight).insert(
            call_id,
            InFlight {
                cell,
                name: method,
                worker: remote.worker,
                node: None,
                load: Vec::new(),
                args,
                retry: None,
            },
        );
        remote.peer.send(Msg::ActorCall {
            actor_id,
            call_id,
            method: method.to_owned(),
            args: wire_args,
        });
        if remote.peer.is_closed() {
            self.worker_lost(remote.worker, &remote.peer.closed_error().to_string());
        }
    }

    /// Looks up where actor `actor_id` lives (the GCS directory).
    pub(crate) fn locate_actor(
        &self,
        actor_id: u64,
        name: &str,
    ) -> Result<super::proto::ActorInfo, Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::LookupActor {
            request_id,
            name: name.to_owned(),
            actor_id,
        });
        match wait_reply(rx, CALL_TIMEOUT, "looking up an actor")? {
            Msg::ActorReply {
                found: true, actor, ..
            } => Ok(actor),
            _ => Err(Error::ActorNotFound {
                name: if name.is_empty() {
                    format!("{actor_id:#x}")
                } else {
                    name.to_owned()
                },
            }),
        }
    }

    /// A remote actor's proxy target.
    pub(crate) fn remote_actor(&self, worker: u64) -> RemoteActor {
        RemoteActor {
            worker,
            peer: self.peer(worker),
        }
    }

    /// Asks the actor's worker to kill (and maybe restart) it.
    pub(crate) fn kill_remote(&self, remote: &RemoteActor, actor_id: u64, restart: bool) {
        remote.peer.send(Msg::KillActor { actor_id, restart });
    }

    /// A task or call we own finished elsewhere.
    fn task_done(&self, from: &Arc<Peer>, task_id: u64, outcome: Outcome) {
        let Some(f) = lock(&self.in_flight).remove(&task_id) else {
            tracing::debug!(task_id, "completion of an unknown task ignored");
            return;
        };
        self.release_load(f.node, f.worker, &f.load);
        let value = match outcome {
            Outcome::Inline(bytes) => Ok(ObjectValue::inline(Bytes::from(bytes))),
            Outcome::Stored { len } => Ok(ObjectValue::remote(RemoteObject::new(
                task_id,
                f.worker,
                len,
                self.me.get().cloned().unwrap_or_default(),
            ))),
            Outcome::Failed {
                kind,
                task,
                message,
            } => Err(wire_error(kind, task, message, task_id)),
        };
        let _ = from;
        f.cell.complete(value);
    }

    /// Worker `index` is gone: fail everything in flight there.
    fn worker_lost(&self, index: u64, reason: &str) {
        let lost: Vec<(u64, InFlight)> = {
            let mut m = lock(&self.in_flight);
            let ids: Vec<u64> = m
                .iter()
                .filter(|(_, f)| f.worker == index)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| m.remove(&id).map(|f| (id, f)))
                .collect()
        };
        let mut again = Vec::new();
        for (_, f) in lost {
            self.release_load(f.node, f.worker, &f.load);
            match f.retry {
                Some(r) if r.left > 0 => again.push((f.cell, f.args, r)),
                _ => {
                    f.cell.complete(Err(cluster_error(
                        format!("worker process {index}"),
                        format!("it died or became unreachable ({reason})"),
                    )));
                }
            }
        }
        if !again.is_empty() {
            // Placing may wait on the GCS and a raylet: never on an I/O thread.
            let me = self.me.get().cloned().unwrap_or_default();
            std::thread::spawn(move || {
                let Some(c) = me.upgrade() else { return };
                let Some(rt) = c.runtime() else { return };
                for (cell, args, r) in again {
                    tracing::info!(task = %cell.id(), left = r.left, "retrying a task whose worker died");
                    c.submit_remote(
                        &rt,
                        r.function,
                        cell,
                        args,
                        &r.request,
                        r.name.as_deref(),
                        r.max_retries,
                        r.left - 1,
                    );
                }
            });
        }
        for s in lock(&self.nodes).iter_mut() {
            s.workers.retain(|w| w.index != index);
        }
        self.drop_borrower(index);
        let failed: Vec<PullDone> = {
            let mut pulls = lock(&self.pulls);
            let name = format!("w{index}");
            let ids: Vec<u64> = pulls
                .iter()
                .filter(|(_, p)| p.peer == name)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pulls.remove(&id).map(|p| p.done))
                .collect()
        };
        for done in failed {
            done(Err(cluster_error(
                format!("worker process {index}"),
                format!("unreachable ({reason})"),
            )));
        }
    }

    // ----- objects ----------------------------------------------------------------------

    /// Pulls object `object_id` (about `len` bytes, 0 if unknown) from worker `holder` with
    /// `priority` (0 get, 1 wait, 2 task argument); `done` gets its bytes.
    pub(crate) fn pull(
        &self,
        holder: u64,
        object_id: u64,
        priority: u8,
        len: u64,
        done: PullDone,
        wanted: Option<Weak<ObjectCell>>,
    ) {
        if holder == self.index {
            done(self.local_value(object_id).and_then(|v| match v {
                Some(v) => Ok(v.data.clone()),
                None => Err(Error::ObjectFreed {
                    object: ObjectId::from_u64(object_id),
                }),
            }));
            return;
        }
        {
            let mut q = lock(&self.pull_queue);
            let seq = q.seq;
            q.seq += 1;
            q.waiting.insert(
                (priority, seq),
                QueuedPull {
                    priority,
                    seq,
                    holder,
                    object_id,
                    bytes: len.max(UNKNOWN_PULL_BYTES),
                    done,
                    wanted,
                },
            );
        }
        self.dispatch_pulls();
    }

    /// Starts queued pulls while there is room.
    fn dispatch_pulls(&self) {
        loop {
            let next = {
                let mut q = lock(&self.pull_queue);
                let Some((_, first)) = q.waiting.first_key_value() else {
                    return;
                };
                if q.in_flight > 0 && q.in_flight + first.bytes > MAX_PULL_BYTES {
                    return;
                }
                let (_, p) = q.waiting.pop_first().expect("checked above");
                if p.wanted.as_ref().is_some_and(|w| w.strong_count() == 0) {
                    continue;
                }
                q.in_flight += p.bytes;
                p
            };
            self.start_pull(next);
        }
    }

    fn start_pull(&self, p: QueuedPull) {
        let QueuedPull {
            priority,
            holder,
            object_id,
            bytes,
            done,
            ..
        } = p;
        let me = self.me.get().cloned().unwrap_or_default();
        let done: PullDone = Box::new(move |r| {
            if let Some(c) = me.upgrade() {
                {
                    let mut q = lock(&c.pull_queue);
                    q.in_flight = q.in_flight.saturating_sub(bytes);
                }
                c.dispatch_pulls();
            }
            done(r);
        });
        self.send_pull(holder, object_id, priority, 0, done);
    }

    fn send_pull(&self, holder: u64, object_id: u64, priority: u8, hops: u8, done: PullDone) {
        let peer = self.peer(holder);
        let request_id = self.next_pull.fetch_add(1, Ordering::Relaxed);
        lock(&self.pulls).insert(
            request_id,
            PendingPull {
                peer: peer.name.clone(),
                object_id,
                priority,
                hops,
                done,
            },
        );
        // Queued, not written here: pulls come in bursts (every reference deserialised from
        // one value), which the writer task sends in one batch.
        peer.send_queued(Msg::PullObject {
            request_id,
            object_id,
            priority,
        });
        if peer.is_closed() {
            self.worker_lost(holder, &peer.closed_error().to_string());
        }
    }

    /// Pulls and waits (from a non-tokio thread).
    pub(crate) fn pull_blocking(
        &self,
        holder: u64,
        object_id: u64,
        len: u64,
    ) -> Result<Payload, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pull(
            holder,
            object_id,
            0,
            len,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            None,
        );
        wait_reply(
            rx,
            std::time::Duration::from_secs(3600),
            "pulling an object",
        )
    }

    /// A value this process holds under `id`: a result kept for a remote owner, or an object
    /// of its own entered in the escape table (`Ok(None)` if neither, or not ready yet).
    fn local_value(&self, id: u64) -> Result<Option<ObjectValue>, Error> {
        if let Some(v) = lock(&self.held).get(&id) {
            return Ok(Some(v.clone()));
        }
        let Some(rt) = self.runtime() else {
            return Ok(None);
        };
        match rt.lookup_escaped(ObjectId::from_u64(id)) {
            Some(cell) => match cell.get() {
                Some(Ok(v)) => Ok(Some(v.clone())),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Serves a pull: replies when the object is ready (waiting for a pending one).
    fn serve_pull(&self, peer: &Arc<Peer>, request_id: u64, object_id: u64) {
        if let Some(v) = lock(&self.held).get(&object_id).cloned() {
            return self.send_value(peer, request_id, object_id, v);
        }
        let cell = self
            .runtime()
            .and_then(|rt| rt.lookup_escaped(ObjectId::from_u64(object_id)));
        let Some(cell) = cell else {
            return peer.send(not_found(
                request_id,
                format!(
                    "{} was freed: no reference to it was left",
                    ObjectId::from_u64(object_id)
                ),
            ));
        };
        let me = self.me.get().cloned().unwrap_or_default();
        let peer2 = peer.clone();
        let c2 = cell.clone();
        let respond = move || {
            let Some(c) = me.upgrade() else { return };
            match c2.get() {
                Some(Ok(v)) => c.send_value(&peer2, request_id, object_id, v.clone()),
                Some(Err(e)) => peer2.send(not_found(request_id, e.to_string())),
                None => {}
            }
        };
        if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(respond))) {
            f();
        }
    }

    /// Sends a ready value to a puller: inline in the reply, or as a bulk transfer after it,
    /// or (an object another worker holds for us) a redirect to that worker.
    fn send_value(&self, peer: &Arc<Peer>, request_id: u64, object_id: u64, v: ObjectValue) {
        let data = match &v.data {
            Payload::Remote(r) => match r.local_copy() {
                Some(local) => local,
                None if r.id == object_id => {
                    return peer.send(Msg::ObjectData {
                        request_id,
                        found: false,
                        len: r.len,
                        inline: Vec::new(),
                        error: String::new(),
                        redirect: r.holder,
                    });
                }
                None => {
                    // Held under another id: fetch it here first, off the I/O thread.
                    let r = r.clone();
                    let peer = peer.clone();
                    let me = self.me.get().cloned().unwrap_or_default();
                    std::thread::spawn(move || {
                        let Some(c) = me.upgrade() else { return };
                        match r.fetch() {
                            Ok(data) => c.send_value(
                                &peer,
                                request_id,
                                object_id,
                                ObjectValue {
                                    data,
                                    nested: Box::new([]),
                                },
                            ),
                            Err(e) => peer.send(not_found(request_id, e.to_string())),
                        }
                    });
                    return;
                }
            },
            other => other.clone(),
        };
        match data {
            Payload::Inline(b) => peer.send(Msg::ObjectData {
                request_id,
                found: true,
                len: b.len() as u64,
                inline: b.to_vec(),
                error: String::new(),
                redirect: 0,
            }),
            Payload::Stored(s) => {
                peer.send(Msg::ObjectData {
                    request_id,
                    found: true,
                    len: s.len() as u64,
                    inline: Vec::new(),
                    error: String::new(),
                    redirect: 0,
                });
                peer.send_bulk(request_id, BulkData::Stored(s));
            }
            Payload::Remote(_) => peer.send(not_found(
                request_id,
                "a pulled object is still remote".into(),
            )),
        }
    }

    /// The answer to one of our pulls.
    #[allow(clippy::too_many_arguments)]
    fn object_data(
        &self,
        peer: &Arc<Peer>,
        request_id: u64,
        found: bool,
        len: u64,
        inline: Vec<u8>,
        error: String,
        redirect: u64,
    ) {
        let Some(pending) = lock(&self.pulls).remove(&request_id) else {
            return;
        };
        let done = pending.done;
        if !found && redirect != 0 && redirect != self.index && pending.hops < 4 {
            return self.send_pull(
                redirect,
                pending.object_id,
                pending.priority,
                pending.hops + 1,
                done,
            );
        }
        if !found {
            return done(Err(cluster_error("pulling an object", error)));
        }
        if len == 0 || !inline.is_empty() {
            return done(Ok(Payload::Inline(Bytes::from(inline))));
        }
        let store = self.runtime().and_then(|rt| rt.store.clone());
        let max_inline = self.max_inline;
        peer.expect_bulk(
            request_id,
            Box::new(move |n| match store {
                Some(store) if n as usize > max_inline => store.create(n as usize).map(Some),
                _ => Ok(None),
            }),
            Box::new(move |arrival| match arrival {
                BulkArrival::Stored(s) => done(Ok(Payload::Stored(s))),
                BulkArrival::Heap(b) => done(Ok(Payload::Inline(b))),
                BulkArrival::Failed(e) => done(Err(e)),
            }),
        );
    }

    /// A reference to an object owned elsewhere was deserialised here: a cell that is already
    /// complete with a lazy payload pointing at the owner (the bytes are pulled on first read),
    /// shared with every other handle on it in this process. A new borrow is registered with
    /// the owner before the deserialisation that made it returns (steps 1–3 of "Borrowers").
    pub(crate) fn borrow(&self, id: ObjectId) -> Arc<ObjectCell> {
        let object_id = id.as_u64();
        let mut borrowed = lock(&self.borrowed);
        // Every handle taken under the lock is returned or kept past it: dropping the last
        // handle on a `RemoteObject` takes this lock (`end_borrow`).
        let remote = borrowed.get(&object_id).and_then(|e| e.remote.upgrade());
        let (cell, remote, mine) = match remote {
            Some(remote) => {
                let live = borrowed.get(&object_id).and_then(|e| e.cell.upgrade());
                let cell = live.unwrap_or_else(|| {
                    let cell = lazy_cell(object_id, &remote);
                    if let Some(e) = borrowed.get_mut(&object_id) {
                        e.cell = Arc::downgrade(&cell);
                    }
                    cell
                });
                (cell, remote, false)
            }
            None => {
                if borrowed.len() >= self.borrowed_sweep_at.load(Ordering::Relaxed) {
                    borrowed.retain(|_, e| e.remote.strong_count() > 0);
                    self.borrowed_sweep_at
                        .store((borrowed.len() * 2).max(1024), Ordering::Relaxed);
                }
                let remote = Arc::new(RemoteObject {
                    id: object_id,
                    holder: owner_of(object_id),
                    len: 0,
                    kind: RemoteKind::Borrowed {
                        registrar: std::thread::current().id(),
                    },
                    registered: OnceLock::new(),
                    local: OnceLock::new(),
                    cluster: self.me.get().cloned().unwrap_or_default(),
                });
                let cell = lazy_cell(object_id, &remote);
                borrowed.insert(
                    object_id,
                    BorrowEntry {
                        cell: Arc::downgrade(&cell),
                        remote: Arc::downgrade(&remote),
                    },
                );
                (cell, remote, true)
            }
        };
        drop(borrowed);
        if remote.registered.get().is_none() {
            note_borrow(&remote, mine);
        }
        cell
    }

    /// Registers this process as a borrower of `remotes` (grouped by owner) and waits for each
    /// owner's answer; a remote the owner does not know, or whose owner cannot answer, is
    /// failed (its reads return the error).
    fn register_borrows(&self, by_owner: HashMap<u64, Vec<Arc<RemoteObject>>>) {
        // An I/O thread must never block: it registers without waiting for the answer. (Values
        // are decoded by user threads and slots; this is a guard, not a path in use.)
        let on_io = std::thread::current().name() == Some(IO_THREAD);
        let _guard = (!on_io).then(|| self.io.enter());
        let mut waiting = Vec::new();
        for (owner, remotes) in by_owner {
            if owner == self.index || owner == 0 {
                for r in remotes {
                    let _ = r.registered.set(true);
                }
                continue;
            }
            let peer = self.peer(owner);
            let objects: Vec<u64> = remotes.iter().map(|r| r.id).collect();
            let rx = peer.request(|request_id| Msg::AddBorrowers {
                request_id,
                objects,
            });
            if on_io {
                tracing::debug!(
                    owner,
                    "borrow registered from an I/O thread without waiting"
                );
                for r in remotes {
                    let _ = r.registered.set(true);
                }
                continue;
            }
            waiting.push((owner, remotes, rx));
        }
        for (owner, remotes, rx) in waiting {
            let unreachable = |e: &dyn std::fmt::Display| {
                cluster_error(
                    format!("worker process {owner} (the object's owner)"),
                    format!("it died or became unreachable ({e})"),
                )
            };
            match wait_reply(rx, CALL_TIMEOUT, "registering as a borrower") {
                Ok(Msg::BorrowersAdded { missing, .. }) => {
                    let missing: HashSet<u64> = missing.into_iter().collect();
                    for r in remotes {
                        if missing.contains(&r.id) {
                            r.fail(Error::ObjectFreed {
                                object: ObjectId::from_u64(r.id),
                            });
                        } else {
                            let _ = r.registered.set(true);
                        }
                    }
                }
                Ok(other) => {
                    let e = unreachable(&format!("unexpected reply {}", other.name()));
                    for r in remotes {
                        r.fail(e.clone());
                    }
                }
                Err(e) => {
                    let e = unreachable(&e);
                    for r in remotes {
                        r.fail(e.clone());
                    }
                }
            }
        }
    }

    /// The last handle here on borrowed object `r` dropped: tell its owner (step 5).
    fn end_borrow(&self, r: &RemoteObject) {
        let mut borrowed = lock(&self.borrowed);
        let ours = borrowed
            .get(&r.id)
            .is_none_or(|e| std::ptr::eq(e.remote.as_ptr(), r));
        if !ours {
            // A newer borrow of the same object already registered again (the owner keeps one
            // entry per borrowing process): it sends the RemoveBorrower when it ends.
            return;
        }
        borrowed.remove(&r.id);
        if r.registered.get() != Some(&true) || self.stopped.load(Ordering::Acquire) {
            return;
        }
        // Sent under the lock: a newer borrow's AddBorrowers can only follow it.
        if let Some(p) = lock(&self.peers).get(&r.holder) {
            p.send_queued(Msg::RemoveBorrower { object_id: r.id });
        }
    }

    /// A pulled copy of `object_id` made for a task argument, if one is here.
    fn fetched_copy(&self, object_id: u64) -> Option<Payload> {
        let cell = lock(&self.fetched)
            .get(&object_id)
            .and_then(Weak::upgrade)?;
        match cell.get() {
            Some(Ok(v)) if !matches!(v.data, Payload::Remote(_)) => Some(v.data.clone()),
            _ => None,
        }
    }

    /// The local cell of task argument `object_id` held by worker `holder`: shared with every
    /// other task reading it here, pulled once. (Not a borrow: the task's owner keeps the
    /// argument alive until the task is done.)
    fn pulled(&self, object_id: u64, holder: u64, len: u64) -> Arc<ObjectCell> {
        // A borrowed copy already pulled here serves as well.
        let remote = lock(&self.borrowed)
            .get(&object_id)
            .and_then(|e| e.remote.upgrade());
        if let Some(data) = remote.as_ref().and_then(|r| r.local_copy()) {
            return Arc::new(ObjectCell::ready(
                ObjectId::from_u64(object_id),
                Ok(ObjectValue {
                    data,
                    nested: Box::new([]),
                }),
            ));
        }
        drop(remote);
        let mut fetched = lock(&self.fetched);
        if let Some(cell) = fetched.get(&object_id).and_then(Weak::upgrade) {
            return cell;
        }
        if fetched.len() >= self.fetched_sweep_at.load(Ordering::Relaxed) {
            fetched.retain(|_, w| w.strong_count() > 0);
            self.fetched_sweep_at
                .store((fetched.len() * 2).max(1024), Ordering::Relaxed);
        }
        let cell = Arc::new(ObjectCell::pending(ObjectId::from_u64(object_id), None));
        fetched.insert(object_id, Arc::downgrade(&cell));
        drop(fetched);
        let weak = Arc::downgrade(&cell);
        self.pull(
            holder,
            object_id,
            2,
            len,
            Box::new(move |r| {
                if let Some(c) = weak.upgrade() {
                    c.complete(r.map(|data| ObjectValue {
                        data,
                        nested: Box::new([]),
                    }));
                }
            }),
            Some(Arc::downgrade(&cell)),
        );
        cell
    }

    // ----- lending (the owner's side of borrowing) ----------------------------------------

    /// AddBorrowers from `peer`: keeps each object it names (owned here) alive until that
    /// worker removes itself or dies; answers which it does not know (step 4).
    fn add_borrowers(&self, peer: &Arc<Peer>, request_id: u64, objects: Vec<u64>) {
        let borrower = peer_index(peer).filter(|b| *b != self.index);
        let rt = self.runtime();
        let mut missing = Vec::new();
        match (borrower, rt) {
            (Some(b), Some(rt)) => {
                let mut lent = lock(&self.lent);
                for id in objects {
                    if let Some(l) = lent.get_mut(&id) {
                        l.borrowers.insert(b);
                        continue;
                    }
                    let cell = (owner_of(id) == self.index)
                        .then(|| rt.lookup_escaped(ObjectId::from_u64(id)))
                        .flatten();
                    match cell {
                        Some(cell) => {
                            lent.insert(
                                id,
                                Lent {
                                    cell,
                                    borrowers: HashSet::from([b]),
                                },
                            );
                        }
                        None => {
                            tracing::debug!(
                                object = id,
                                borrower = b,
                                "AddBorrowers for an object not owned here (or freed)"
                            );
                            missing.push(id);
                        }
                    }
                }
            }
            _ => {
                tracing::debug!(peer = %peer.name, "AddBorrowers from a connection that is no worker: ignored");
                missing = objects;
            }
        }
        peer.send(Msg::BorrowersAdded {
            request_id,
            missing,
        });
    }

    /// RemoveBorrower from `peer`: it dropped its last handle on `object_id`.
    fn remove_borrower(&self, peer: &Arc<Peer>, object_id: u64) {
        let Some(b) = peer_index(peer) else {
            tracing::debug!(peer = %peer.name, "RemoveBorrower from a connection that is no worker: ignored");
            return;
        };
        let freed = {
            let mut lent = lock(&self.lent);
            let was = lent.get_mut(&object_id).map(|l| {
                let removed = l.borrowers.remove(&b);
                (removed, l.borrowers.is_empty())
            });
            match was {
                Some((true, true)) => lent.remove(&object_id),
                Some((true, false)) => None,
                _ => {
                    tracing::debug!(
                        object = object_id,
                        borrower = b,
                        "RemoveBorrower from a worker that is not a borrower: ignored"
                    );
                    None
                }
            }
        };
        // Dropped outside the lock: freeing may send FreeObject or end borrows of nested refs.
        drop(freed);
    }

    /// Worker `index` died: it borrows nothing any more.
    fn drop_borrower(&self, index: u64) {
        let freed: Vec<Lent> = {
            let mut lent = lock(&self.lent);
            let mut emptied = Vec::new();
            for (id, l) in lent.iter_mut() {
                if l.borrowers.remove(&index) && l.borrowers.is_empty() {
                    emptied.push(*id);
                }
            }
            emptied
                .into_iter()
                .filter_map(|id| lent.remove(&id))
                .collect()
        };
        drop(freed);
    }

    /// The owner dropped a result we hold.
    pub(crate) fn free_remote(&self, holder: u64, object_id: u64) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        if holder == self.index {
            lock(&self.held).remove(&object_id);
            return;
        }
        if let Some(p) = lock(&self.peers).get(&holder) {
            p.send_queued(Msg::FreeObject { object_id });
        }
    }

    // ----- executing work pushed to us ---------------------------------------------------

    /// An argument from the wire as a local slot (a pending cell pulled from its holder).
    fn local_arg(&self, arg: Arg) -> ArgSlot {
        match arg {
            Arg::Inline(v) => ArgSlot::Value(ObjectValue::inline(Bytes::from(v))),
            Arg::Ref {
                object_id,
                holder,
                len,
            } => ArgSlot::Ref(self.pulled(object_id, holder, len)),
        }
    }

    /// When `cell` completes, tells `peer` (the owner) with TaskDone{task_id}.
    fn reply_when_done(&self, peer: &Arc<Peer>, task_id: u64, name: &str, cell: &Arc<ObjectCell>) {
        let owner = peer
            .name
            .strip_prefix('w')
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        lock(&self.executing).insert(task_id, (name.into(), owner));
        let me = self.me.get().cloned().unwrap_or_default();
        let peer = peer.clone();
        let c2 = cell.clone();
        let respond = move || {
            let Some(c) = me.upgrade() else { return };
            lock(&c.executing).remove(&task_id);
            let outcome = match c2.get() {
                Some(Ok(v)) => c.outcome_of(task_id, v),
                Some(Err(e)) => failed_outcome(e),
                None => return,
            };
            peer.send(Msg::TaskDone { task_id, outcome });
        };
        if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(respond))) {
            f();
        }
    }

    fn outcome_of(&self, task_id: u64, v: &ObjectValue) -> Outcome {
        match &v.data {
            Payload::Inline(b) if v.nested.is_empty() => Outcome::Inline(b.to_vec()),
            _ => {
                let len = v.len() as u64;
                lock(&self.held).insert(task_id, v.clone());
                Outcome::Stored { len }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_pushed_task(
        &self,
        peer: &Arc<Peer>,
        task_id: u64,
        function: &str,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_retries: u32,
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let request = resource_request(&resources);
        let cell = rt.submit_pushed(
            task_id,
            function,
            slots,
            &request,
            (!name.is_empty()).then_some(name),
            max_retries,
        );
        self.reply_when_done(peer, task_id, function, &cell);
    }

    #[allow(clippy::too_many_arguments)]
    fn create_pushed_actor(
        &self,
        peer: &Arc<Peer>,
        actor_id: u64,
        class_name: &str,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_concurrency: u32,
        max_restarts: u32,
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let request = resource_request(&resources);
        let created = rt.create_pushed_actor(
            actor_id,
            class_name,
            slots,
            &request,
            &name,
            max_concurrency as usize,
            max_restarts,
        );
        self.reply_when_done(peer, actor_id, class_name, &created);
    }

    fn call_pushed_actor(
        &self,
        peer: &Arc<Peer>,
        actor_id: u64,
        call_id: u64,
        method: &str,
        args: Vec<Arg>,
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let cell = rt.call_pushed(actor_id, call_id, method, slots);
        self.reply_when_done(peer, call_id, method, &cell);
    }

    // ----- listings ---------------------------------------------------------------------

    /// What this process knows of tasks and objects (`manta list tasks|objects`).
    fn work(&self, request_id: u64) -> Msg {
        use super::proto::{ObjectRow, TaskRow};
        let my_node = self.node_id().unwrap_or(0);
        let node_of_slot = |slot: Option<usize>| {
            slot.and_then(|i| lock(&self.nodes).get(i).map(|s| s.node_id))
                .unwrap_or(0)
        };
        let mut tasks: Vec<TaskRow> = Vec::new();
        let owned: Vec<(u64, &'static str, u64, Option<usize>)> = lock(&self.in_flight)
            .iter()
            .map(|(id, f)| (*id, f.name, f.worker, f.node))
            .collect();
        for (id, name, worker, slot) in owned {
            tasks.push(TaskRow {
                task_id: id,
                name: name.to_owned(),
                state: "SUBMITTED".into(),
                owner: self.index,
                worker,
                node_id: node_of_slot(slot),
            });
        }
        for (id, (name, owner)) in lock(&self.executing).iter() {
            tasks.push(TaskRow {
                task_id: *id,
                name: name.to_string(),
                state: "RUNNING".into(),
                owner: *owner,
                worker: self.index,
                node_id: my_node,
            });
        }
        let describe = |v: Option<&Result<ObjectValue, Error>>| match v {
            None => ("pending", 0, self.index),
            Some(Err(_)) => ("failed", 0, self.index),
            Some(Ok(v)) => match &v.data {
                Payload::Inline(b) => ("inline", b.len() as u64, self.index),
                Payload::Stored(s) => ("store", s.len() as u64, self.index),
                Payload::Remote(r) => ("remote", r.len, r.holder),
            },
        };
        let mut objects: Vec<ObjectRow> = Vec::new();
        for (id, v) in lock(&self.held).iter() {
            let (kind, size, holder) = describe(Some(&Ok(v.clone())));
            objects.push(ObjectRow {
                object_id: *id,
                size,
                kind: kind.into(),
                role: "held".into(),
                holder,
                owner: owner_of(*id),
            });
        }
        if let Some(rt) = self.runtime() {
            for cell in rt.escaped_cells() {
                let (kind, size, holder) = describe(cell.get());
                objects.push(ObjectRow {
                    object_id: cell.id().as_u64(),
                    size,
                    kind: kind.into(),
                    role: "shared".into(),
                    holder,
                    owner: owner_of(cell.id().as_u64()),
                });
            }
        }
        let mut borrowed: Vec<Arc<ObjectCell>> = lock(&self.fetched)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        borrowed.extend(
            lock(&self.borrowed)
                .values()
                .filter_map(|e| e.cell.upgrade()),
        );
        for cell in borrowed {
            let (kind, size, holder) = describe(cell.get());
            objects.push(ObjectRow {
                object_id: cell.id().as_u64(),
                size,
                kind: kind.into(),
                role: "borrowed".into(),
                holder,
                owner: owner_of(cell.id().as_u64()),
            });
        }
        Msg::Work {
            request_id,
            tasks,
            objects,
            partial: false,
        }
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
            };
        };
        let mut resources: Vec<Resource> = rt
            .scheduler
            .resources
            .snapshot()
            .into_iter()
            .map(|(name, available, total)| Resource {
                name,
                total,
                available,
            })
            .collect();
        let mut store_used = 0;
        if let Some(store) = &rt.store {
            let s = store.status();
            store_used = s.used as u64;
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
    }
}

/// Environment a driver forwards to its workers (their configuration), less what describes the
/// driver's own node (its address, resources and CPUs), which each raylet sets for its node.
fn forwarded_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("MANTA_")
                && !matches!(
                    k.as_str(),
                    "MANTA_ADDRESS"
                        | "MANTA_TOKEN"
                        | "MANTA_NUM_CPUS"
                        | "MANTA_NUM_GPUS"
                        | "MANTA_RESOURCES"
                        | "MANTA_CPU_AFFINITY"
                        | "MANTA_OBJECT_STORE_NUMA_NODES"
                        | "MANTA_NODE_IP"
                ))
                || k == "RUST_LOG"
                || k == "RUST_BACKTRACE"
        })
        .collect()
}

/// A request's non-zero amounts as `(name, amount)` pairs.
pub(crate) fn request_pairs(r: &ResourceRequest) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    if r.num_cpus > 0.0 {
        v.push(("CPU".to_string(), r.num_cpus));
    }
    if r.num_gpus > 0.0 {
        v.push(("GPU".to_string(), r.num_gpus));
    }
    for (name, amount) in r.custom() {
        v.push((name.to_string(), amount));
    }
    v
}

/// The CPUs among request pairs.
fn cpus_of(load: &[(String, f64)]) -> f64 {
    load.iter()
        .filter(|(n, _)| n == "CPU")
        .map(|(_, a)| *a)
        .sum()
}

fn request_resources(r: &ResourceRequest) -> Vec<Resource> {
    request_pairs(r)
        .into_iter()
        .map(|(name, total)| Resource {
            name,
            total,
            available: 0.0,
        })
        .collect()
}

fn resource_request(resources: &[Resource]) -> ResourceRequest {
    let mut r = ResourceRequest::none();
    for res in resources {
        match res.name.as_str() {
            "CPU" => r.num_cpus = res.total,
            "GPU" => r.num_gpus = res.total,
            other => r.set_custom(other, res.total),
        }
    }
    r
}

fn failed_outcome(e: &Error) -> Outcome {
    let (kind, task, message) = match e {
        Error::Task(t) => (
            ErrorKind::Panic,
            t.task_name().to_owned(),
            t.message().to_owned(),
        ),
        Error::ActorDied { class, reason, .. } => {
            (ErrorKind::ActorDied, class.clone(), reason.clone())
        }
        Error::Cancelled { task, .. } => (ErrorKind::Cancelled, task.clone(), String::new()),
        Error::Infeasible { what, .. } => (ErrorKind::Infeasible, what.clone(), e.to_string()),
        Error::ObjectStoreFull { .. } | Error::ObjectStore { .. } => {
            (ErrorKind::Store, String::new(), e.to_string())
        }
        other => (ErrorKind::Other, String::new(), other.to_string()),
    };
    Outcome::Failed {
        kind,
        task,
        message,
    }
}

fn wire_error(kind: ErrorKind, task: String, message: String, id: u64) -> Error {
    match kind {
        ErrorKind::Panic => Error::Task(TaskError::remote_panic(&task, &message)),
        ErrorKind::ActorDied => Error::ActorDied {
            actor: crate::id::ActorId::from_u64(id),
            class: task,
            reason: message,
        },
        ErrorKind::Cancelled => Error::Cancelled {
            object: ObjectId::from_u64(id),
            task,
        },
        ErrorKind::Infeasible | ErrorKind::Store | ErrorKind::Other => Error::Cluster {
            what: if task.is_empty() {
                "remote task".into()
            } else {
                task
            },
            message,
        },
    }
}

/// What a [`RemoteObject`] stands for, and so what dropping it tells the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteKind {
    /// A result `holder` computed for this process, its owner: FreeObject on drop.
    Held,
    /// A reference owned by `holder` and deserialised here: RemoveBorrower on drop, once
    /// registered. `registrar` is the thread that registers it.
    Borrowed { registrar: std::thread::ThreadId },
}

/// An object held by another worker process (or, borrowed, by its owner, which redirects a
/// pull to the actual holder): pulled into this process on first read.
#[derive(Debug)]
pub(crate) struct RemoteObject {
    pub(crate) id: u64,
    pub(crate) holder: u64,
    pub(crate) len: u64,
    kind: RemoteKind,
    /// Borrowed only: set once the owner acknowledged the registration (`true`) or it failed
    /// (`false`, and `local` holds the error).
    registered: OnceLock<bool>,
    local: OnceLock<Result<Payload, Error>>,
    cluster: Weak<Cluster>,
}

impl RemoteObject {
    /// A result `holder` keeps for this process (which owns it).
    pub(crate) fn new(id: u64, holder: u64, len: u64, cluster: Weak<Cluster>) -> Arc<Self> {
        Arc::new(RemoteObject {
            id,
            holder,
            len,
            kind: RemoteKind::Held,
            registered: OnceLock::new(),
            local: OnceLock::new(),
            cluster,
        })
    }

    /// The local copy, if it was already pulled.
    pub(crate) fn local_copy(&self) -> Option<Payload> {
        self.local.get().and_then(|r| r.as_ref().ok()).cloned()
    }

    /// The bytes, pulled from the holder on first call.
    pub(crate) fn fetch(&self) -> Result<Payload, Error> {
        self.local
            .get_or_init(|| match self.cluster.upgrade() {
                Some(c) => match c.fetched_copy(self.id) {
                    Some(copy) => Ok(copy),
                    None => c.pull_blocking(self.holder, self.id, self.len),
                },
                None => Err(Error::ShutDown),
            })
            .clone()
    }

    /// A borrow whose registration failed: every read returns `e`.
    fn fail(&self, e: Error) {
        let _ = self.local.set(Err(e));
        let _ = self.registered.set(false);
    }
}

impl Drop for RemoteObject {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.upgrade() {
            match self.kind {
                RemoteKind::Held => c.free_remote(self.holder, self.id),
                RemoteKind::Borrowed { .. } => c.end_borrow(self),
            }
        }
    }
}

/// A borrowed object's entry in [`Cluster::borrowed`].
struct BorrowEntry {
    /// The cell handed to deserialisers (re-made around `remote` if it died first).
    cell: Weak<ObjectCell>,
    /// The registration: its drop ends the borrow.
    remote: Weak<RemoteObject>,
}

/// An object of this process lent to other processes.
struct Lent {
    /// Keeps the object alive while anyone borrows it.
    cell: Arc<ObjectCell>,
    /// Worker indices of the borrowers.
    borrowers: HashSet<u64>,
}

/// A complete cell whose value is the lazy `remote`.
fn lazy_cell(object_id: u64, remote: &Arc<RemoteObject>) -> Arc<ObjectCell> {
    Arc::new(ObjectCell::ready(
        ObjectId::from_u64(object_id),
        Ok(ObjectValue::remote(remote.clone())),
    ))
}

/// The worker index a connection's peer gave in its handshake (`w<index>`).
fn peer_index(peer: &Peer) -> Option<u64> {
    peer.name.strip_prefix('w').and_then(|i| i.parse().ok())
}

/// A borrow noted during one decode: the remote, and whether this thread made it (and so
/// registers it) or found another thread's registration still in flight (and so waits).
type Noted = (Weak<RemoteObject>, bool);

thread_local! {
    /// The borrows of the value being decoded on this thread (`None` outside a decode).
    static BORROWS: RefCell<Option<Vec<Noted>>> = const { RefCell::new(None) };
}

/// Defers `remote`'s registration to the end of the current decode, or registers it now.
fn note_borrow(remote: &Arc<RemoteObject>, mine: bool) {
    let noted = (Arc::downgrade(remote), mine);
    let deferred = BORROWS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => match b.as_mut() {
            Some(v) => {
                v.push(noted.clone());
                true
            }
            None => false,
        },
        Err(_) => false,
    });
    if !deferred {
        finish_borrows(vec![noted]);
    }
}

/// Registers the borrows this thread made, grouped by owner (one AddBorrowers each), then
/// waits for those other threads are registering.
fn finish_borrows(noted: Vec<Noted>) {
    let me = std::thread::current().id();
    let mut mine: HashMap<u64, Vec<Arc<RemoteObject>>> = HashMap::new();
    let mut others = Vec::new();
    let mut seen = HashSet::new();
    for (weak, made_here) in noted {
        // Dead already (the decode failed and dropped it): nothing to register.
        let Some(r) = weak.upgrade() else { continue };
        if r.registered.get().is_some() || !seen.insert(Arc::as_ptr(&r)) {
            continue;
        }
        if made_here {
            mine.entry(r.holder).or_default().push(r);
        } else if !matches!(r.kind, RemoteKind::Borrowed { registrar } if registrar == me) {
            // (One this thread made in an enclosing decode is registered when that ends.)
            others.push(r);
        }
    }
    if !mine.is_empty() {
        let cluster = mine.values().flatten().find_map(|r| r.cluster.upgrade());
        match cluster {
            Some(c) => c.register_borrows(mine),
            None => mine
                .values()
                .flatten()
                .for_each(|r| r.fail(Error::ShutDown)),
        }
    }
    for r in others {
        r.registered.wait();
    }
}

/// The borrows of one decode (see [`Cluster::borrow`]): begun before a value is deserialised,
/// registered with their owners when dropped, so before the decoded value reaches its reader.
#[derive(Debug)]
pub(crate) struct BorrowScope {
    previous: Option<Vec<Noted>>,
}

impl BorrowScope {
    pub(crate) fn begin() -> BorrowScope {
        let previous = BORROWS.with(|b| b.try_borrow_mut().ok()?.replace(Vec::new()));
        BorrowScope { previous }
    }
}

impl Drop for BorrowScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let noted = BORROWS
            .with(|b| {
                b.try_borrow_mut()
                    .ok()
                    .and_then(|mut b| std::mem::replace(&mut *b, previous))
            })
            .unwrap_or_default();
        if !noted.is_empty() {
            finish_borrows(noted);
        }
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
            } => c.create_pushed_actor(
                peer,
                actor_id,
                &class_name,
                args,
                resources,
                name,
                max_concurrency,
                max_restarts,
            ),
            Msg::ActorCall {
                actor_id,
                call_id,
                method,
                args,
            } => c.call_pushed_actor(peer, actor_id, call_id, &method, args),
            Msg::KillActor { actor_id, restart } => {
                if let Some(rt) = c.runtime() {
                    rt.kill_pushed(actor_id, restart);
                }
            }
            Msg::TaskDone { task_id, outcome } => c.task_done(peer, task_id, outcome),
            Msg::PullObject {
                request_id,
                object_id,
                ..
            } => c.serve_pull(peer, request_id, object_id),
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
