//! The core worker: this process's membership in a cluster — owner of what it submits,
//! executor of what others push to it, server of the objects it holds.
//!
//! [`Cluster`] keeps the process's identity (role, worker index, job, addresses, the GCS
//! connection, the I/O runtime) and holds one component per concern, each a type in its own
//! file that owns its state and its locks (Ray's core worker is made the same way):
//!
//! - `peers.rs` ([`Peers`]): connections to other workers, made on first use (`peer`, here),
//!   and a worker's raylet connection;
//! - `placement.rs` (`Placement`): the node directory, and the choice of a node and worker
//!   for a task or actor;
//! - `task_manager.rs` (`TaskManager`): work this process owns that runs elsewhere (pushed
//!   by `submit.rs`, restarted by `supervision.rs`, cancelled by `cancel.rs`), and work others
//!   pushed here (`execute.rs`);
//! - `object_manager.rs` (`ObjectManager`): pulls, serving pulls, held results, `FreeObject`,
//!   and same-host reads (`attach.rs`);
//! - `actor_manager.rs` (`ActorManager`): actors this process created elsewhere (restarted by
//!   `supervision.rs`), their placement loads, the detached actors it hosts (`lifetime.rs`);
//! - `borrow.rs`: Ray's borrower protocol (borrowed references, the owner's `lent` table),
//!   with its numbered steps and the argument for their correctness.
//!
//! Here: joining (registration with the GCS, listeners), a worker process's serve loop,
//! leaving, and [`WorkerHandler`], which dispatches every connection's messages. The
//! runtime reaches all of it through `crate::remote::Remote` (`remote.rs`).

use crate::sync::{Arc, AtomicBool, Mutex, OnceLock, Ordering, Weak};

use manta_transport::{Address, Listener};

use super::actor_manager::ActorManager;
use super::borrow::References;
use super::gcs_link::GcsLink;
use super::object_manager::ObjectManager;
use super::peer::{Handler, Peer};
use super::peers::Peers;
use super::placement::Placement;
use super::proto::{Msg, Resource};
use super::task_manager::TaskManager;
use super::{call_timeout, cluster_error, host_id, wait_reply};
use crate::error::Error;
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

/// Who this process is in the cluster, fixed when it joins.
#[derive(Debug)]
pub(super) struct Membership {
    pub(super) role: Role,
    pub(super) job_id: u64,
    /// The cluster's token, proved in every handshake.
    pub(super) token: String,
    pub(super) gcs_address: String,
    /// This process's address (`ip:port`).
    pub(super) address: String,
}

/// The name of the cluster's I/O thread.
pub(super) const IO_THREAD: &str = "manta-io";

/// This process's cluster membership.
pub(crate) struct Cluster {
    pub(super) io: IoRuntime,
    /// Who this process is in the cluster.
    pub(super) member: Membership,
    /// Its worker index: the top bits of every id it creates.
    pub(super) index: u64,
    /// The link to the GCS, which rejoins a restarted head (`gcs_link.rs`).
    pub(super) gcs: Arc<GcsLink>,
    pub(super) rt: OnceLock<Weak<RuntimeInner>>,
    pub(super) me: OnceLock<Weak<Cluster>>,
    /// Connections to other workers and to this worker's raylet (`peers.rs`).
    pub(super) peers: Peers,
    /// The node directory: nodes, raylets, dead workers (`placement.rs`).
    pub(super) placement: Placement,
    /// Work this process owns that runs elsewhere, and work others pushed here.
    pub(super) tasks: TaskManager,
    /// Specifications of tasks whose stored results are referenced, to rebuild them when
    /// lost (`lineage.rs`).
    pub(super) lineage: super::lineage::Lineage,
    /// Pulls, serving pulls, held results, same-host reads (`object_manager.rs`).
    pub(super) objects: ObjectManager,
    /// Actors this process created elsewhere, their placement loads, and the detached
    /// actors it hosts.
    pub(super) actors: ActorManager,
    /// The reference counter: references owned elsewhere that were deserialised here, and
    /// objects this process owns that other processes borrow (`borrow.rs`,
    /// `reference_counter.rs`).
    pub(super) refs: Mutex<References>,
    pub(super) stop: tokio::sync::Notify,
    pub(super) stopped: AtomicBool,
    /// The actor group calls this process relays through workers (`group_call.rs`).
    pub(super) group_relays: super::group_call::GroupRelays,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("role", &self.member.role)
            .field("index", &self.index)
            .field("address", &self.member.address)
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
        let ip = match std::env::var(crate::config::vars::NODE_IP) {
            Ok(ip) if !ip.is_empty() => ip.parse().map_err(|_| Error::Config {
                key: crate::config::vars::NODE_IP.into(),
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
        let (index, job_id, saved) =
            match wait_reply(rx, call_timeout(), "registering with the GCS")? {
                Msg::Registered {
                    id,
                    job_id,
                    error,
                    saved,
                    ..
                } => {
                    if !error.is_empty() {
                        return Err(cluster_error("registering with the GCS", error));
                    }
                    (id, job_id, saved)
                }
                other => {
                    return Err(cluster_error(
                        "registering with the GCS",
                        format!("unexpected reply {other:?}"),
                    ));
                }
            };
        if index == 0 || index > crate::WorkerId::MAX {
            return Err(cluster_error(
                "registering with the GCS",
                format!("bad worker index {index}"),
            ));
        }
        let gcs = GcsLink::new(
            gcs,
            opts.gcs_address.clone(),
            token.clone(),
            format!("w{index}"),
            handler.clone(),
            io.handle().clone(),
        );
        // A GCS that saves nothing cannot come back: losing it is final (`gcs_link.rs`).
        if saved {
            gcs.set_rejoin(Msg::RejoinWorker {
                request_id: 0,
                index,
                node_id,
                job_id,
                address: address.clone(),
                shm_path: shm_path.clone(),
                host_id: host_id(),
                driver: matches!(opts.role, Role::Driver),
            });
        }
        let cluster = Arc::new(Cluster {
            io: IoRuntime(Some(io)),
            member: Membership {
                role: opts.role,
                job_id,
                token,
                gcs_address: opts.gcs_address,
                address,
            },
            index,
            gcs,
            rt: OnceLock::new(),
            me: OnceLock::new(),
            peers: Peers::new(shm.as_ref().map(|(_, p, _)| p.clone()), host_id()),
            placement: Placement::new((exe, args, cwd)),
            tasks: TaskManager::default(),
            lineage: super::lineage::Lineage::new(crate::config::current().max_lineage_bytes),
            objects: ObjectManager::new(opts.max_inline, opts.zero_copy),
            actors: ActorManager::default(),
            refs: Mutex::new(References::new(index)),
            stop: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            group_relays: Default::default(),
        });
        let _ = slot.set(Arc::downgrade(&cluster));
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
        wait_reply(rx, call_timeout(), "a request to the GCS")
    }

    pub(super) fn runtime(&self) -> Option<Arc<RuntimeInner>> {
        self.rt.get().and_then(Weak::upgrade)
    }

    pub(super) fn handler(&self) -> Arc<dyn Handler> {
        let slot = Arc::new(OnceLock::new());
        if let Some(me) = self.me.get() {
            let _ = slot.set(me.clone());
        }
        Arc::new(WorkerHandler { cluster: slot })
    }

    /// The name this process gives itself in handshakes.
    pub(super) fn my_name(&self) -> String {
        format!("w{}", self.index)
    }

    /// An accepted connection: if it is a worker we do not know yet, remember it as that
    /// worker's peer.
    fn adopt(&self, conn: manta_transport::Connection) {
        let name = conn.peer_name().to_owned();
        let _guard = self.io.enter();
        let peer = Peer::spawn(conn, name.clone(), self.handler());
        if let Some(index) = name.strip_prefix('w').and_then(|i| i.parse::<u64>().ok()) {
            self.peers.adopt(index, peer);
        }
    }

    /// The first id this process hands out.
    pub(crate) fn first_id(&self) -> u64 {
        crate::WorkerId::from_u64(self.index).first_id()
    }

    /// The node this process works on (`None` for a driver).
    pub(crate) fn node_id(&self) -> Option<u64> {
        match &self.member.role {
            Role::Driver => None,
            Role::Worker { node_id, .. } => Some(*node_id),
        }
    }

    /// Whether this process runs no work of its own.
    pub(crate) fn is_driver(&self) -> bool {
        matches!(self.member.role, Role::Driver)
    }

    // ----- peers ------------------------------------------------------------------------

    /// The connection to worker `index`, made on first use (its address from the GCS).
    pub(crate) fn peer(&self, index: u64) -> Arc<Peer> {
        let (peer, pending) = self
            .peers
            .live_or_insert(index, || Peer::pending(format!("w{index}")));
        let Some(pending) = pending else {
            return peer;
        };
        let gcs = self.gcs.clone();
        let token = self.member.token.clone();
        let name = self.my_name();
        let handler = self.handler();
        let my_host = if self.peers.shm_path().is_some() {
            self.peers.host_id().to_owned()
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

    // ----- lifetime ---------------------------------------------------------------------

    /// A worker process: tell the raylet we are ready, then serve until told to stop.
    pub(crate) fn serve_as_worker(&self) -> ! {
        let Role::Worker {
            raylet,
            job_id,
            node_id,
        } = &self.member.role
        else {
            std::process::exit(2);
        };
        let token = self.member.token.clone();
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
            address: self.member.address.clone(),
            pid: std::process::id(),
            resources,
        };
        let r = self.io.block_on(async move {
            let conn = super::connect(&raylet, &token, name).await?;
            let peer = Peer::spawn(conn, format!("raylet:{node_id}"), handler);
            self.peers.set_raylet(peer.clone());
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
                format!("the cluster's head at {}", self.member.gcs_address)
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
        self.peers.close_all();
        self.placement.close_raylets();
        for f in self.tasks.take_all() {
            f.cell.complete(Err(Error::ShutDown));
        }
        let lent = lock(&self.refs).leave();
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
                retry_on,
            } => c.run_pushed_task(
                peer,
                task_id,
                &function,
                args,
                resources,
                name,
                (max_retries, retry_on),
            ),
            Msg::CreateActor {
                actor_id,
                class_name,
                args,
                resources,
                name,
                max_concurrency,
                max_restarts,
                group,
                exception_retries,
            } => c.create_pushed_actor(
                peer,
                actor_id,
                &class_name,
                args,
                resources,
                name,
                (max_concurrency, max_restarts),
                group,
                exception_retries,
            ),
            Msg::ActorCall {
                actor_id,
                call_id,
                method,
                args,
            } => c.call_pushed_actor(peer, actor_id, call_id, &method, args),
            Msg::GroupCall {
                caller,
                method,
                args,
                targets,
                fanout,
            } => c.group_call_pushed(caller, method, args, targets, fanout),
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
            } if c.peers.raylet().is_some_and(|r| Arc::ptr_eq(r, peer)) => c.job_ended(job_id),
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
                c.objects.free(&[object_id]);
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
                c.placement.invalidate();
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
        if c.gcs.is(peer) {
            c.gcs.lost(peer, reason);
            return;
        }
        if let Some(index) = peer
            .name
            .strip_prefix('w')
            .and_then(|i| i.parse::<u64>().ok())
            && c.peers.remove_if(index, peer)
        {
            c.worker_lost(index, reason);
        }
    }
}

#[allow(unused)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Cluster>();
    is::<StoredObject>();
}
