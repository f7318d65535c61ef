//! One shared-memory arena per node, handed out in granules.
//!
//! The node's raylet creates a [`NodeArena`] (one memfd, NUMA-placed and pre-faulted as a
//! standalone store's arena is) and [serves](NodeArena::serve) it on an abstract Unix socket.
//! Every process of the node connects a [`NodeClient`], proves the cluster token (and has the
//! server prove it in turn: `manta_auth`, so the token never crosses the socket), receives the
//! memfd and maps it read-write; its [`Store::on_node`](crate::Store::on_node) then allocates
//! its objects inside *granules* (fixed-size extents, [`StoreConfig::node_granule`]) that the
//! server grants it. Node-wide use is bounded by the one arena, and any process reads any
//! object of the node zero-copy through one mapping ([`NodeClient::reader`]).
//!
//! # Granules
//! The arena is cut into granules per NUMA span (`numa.rs`); a span's tail shorter than a
//! granule stays unused, so capacity = granules × granule. A grant is a run of contiguous free
//! granules of one span (first fit, on the preferred NUMA node's span if it has one), never
//! straddling two spans. The table is the sans-I/O [`Granules`](granules) type.
//!
//! # Protocol (wire formats in `node/wire.rs`)
//! 1. The client connects and writes `b"MNOD"` and its nonce.
//! 2. The server reads them, answers its own nonce, and reads the client's proof, all within
//!    5 s and without blocking (`node/pending.rs`); it checks the proof in constant time, and
//!    on a mismatch logs and closes: no fd is sent.
//! 3. The server sends its own proof, then the memfd (`SCM_RIGHTS`, [`crate::fdpass`]) with the
//!    hello: magic, version, page kind, arena length, granule, and the NUMA spans (node,
//!    offset, length). The client checks the server's proof before it takes the fd (a server
//!    that cannot prove the token gets nothing mapped), that the fd is size-sealed and exactly
//!    the hello's length, and maps it.
//! 4. Then fixed-size request/reply frames, one request in flight per connection: grant (bytes
//!    wanted, preferred node) and give back (offset, length). Every reply carries the node's
//!    granted bytes and capacity, which drive the store's node-wide spill threshold. A
//!    malformed request is refused (status 2) and logged; the connection stays open, since
//!    closing it would reclaim memory the client still uses.
//! 5. When the connection closes (EOF or error: the process left or died), the client's
//!    granules become *dead-held*, and are freed as the next section says.
//!
//! # Why read locks
//! A reader in process R may read in place an object that holder H keeps pinned for it (core's
//! zero-copy pin protocol). The pin lives in H's store, so it protects the bytes only while H
//! lives.
//! 1. While H lives, a pinned object's block is not freed (store state machine, step 3), so
//!    its extent is not wholly free and H never gives it back (H gives back only wholly free
//!    extents). A live give-back therefore never pulls bytes from under a reader, and the
//!    server frees it without further checks.
//! 2. When H dies, its pins die with it, and its granules would be free for the next grant:
//!    a new owner could overwrite bytes R is still reading. So a closed connection's granules
//!    are not freed but dead-held.
//! 3. R, for as long as it reads another process's object in place, holds an OFD read lock on
//!    the object's bytes ([`AttachedArena::hold`](crate::AttachedArena::hold)), taken on an open
//!    file description of R's own ([`AttachedArena::attach`](crate::AttachedArena::attach)
//!    reopens the memfd: a received fd shares the sender's description, and OFD locks belong
//!    to descriptions). R takes it while H still lives (before it starts reading), so by 1 the
//!    bytes are H's object's at that moment. R learns the location from H's reply, and H may
//!    die between replying and R's lock; so R checks, after locking, that H has not exited
//!    ([`PeerLife`](crate::PeerLife), a pidfd: a process cannot come back, so alive after the
//!    lock means alive when it was taken), and does not read in place otherwise.
//! 4. The server frees a dead-held granule only when `fcntl(F_OFD_GETLK)` with a write-lock
//!    probe over the granule, on the server's own description, reports no conflicting lock.
//!    Any read lock by another description on any byte of it conflicts, so no granule that a
//!    reader still holds is ever regranted; its bytes stay as H left them.
//! 5. It re-checks dead-held granules on every grant request and every 100 ms from a sweeper
//!    thread (which sleeps while there are none). The kernel drops R's locks when R unlocks,
//!    closes its description or dies, so every dead-held granule is freed at most ~100 ms
//!    after its last reader lets go: nothing leaks.
//!
//! The clients' read-write fds share the server's description (they were sent over
//! `SCM_RIGHTS`), so they must not lock through it — their locks would be invisible to the
//! probe. Only [`AttachedArena`](crate::AttachedArena)s lock, on their own descriptions.
//!
//! # Threads
//! [`NodeArena::serve`] runs an acceptor, one thread per client that proved the token (blocking
//! reads of its requests), and the sweeper. The acceptor `poll`s the listener and the clients
//! still proving the token (every 100 ms at least, for the stop flag and their 5 s deadlines)
//! and reads their proofs without blocking (`node/pending.rs`): an unauthenticated connection
//! costs no thread (a flood of 1,100 idle ones made 506 threads when each had its own), and at
//! most [`MAX_PENDING`] may be pending at once (one beyond that is closed at once). Warnings
//! about refused connections are rate-limited (10 lines per 10 s, then a count of those
//! suppressed).
//! Dropping the [`NodeServer`] stops accepting, shuts every connection down (which ends the
//! client threads' reads, and their clients' granules become dead-held as in step 5) and joins
//! the threads, waiting at most a few seconds.

mod granules;
mod log_limit;
mod pending;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use manta_auth::{self as auth, Role};
use tracing::{debug, info, warn};

use crate::arena::{self, Arena, AttachedArena, PageKind};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::fdpass;
use crate::numa;
use crate::ofd;
use granules::{ClientId, Granules};
use log_limit::LogLimit;
use pending::{Pending, Progress};
use wire::{Hello, Reply, Request, Status};

/// How long a client has to prove the token, and the client's timeout for every exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often dead-held granules are re-checked while any exist.
const SWEEP_PERIOD: Duration = Duration::from_millis(100);
/// How often the acceptor looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// How long dropping a [`NodeServer`] waits for its threads.
const JOIN_LIMIT: Duration = Duration::from_secs(7);
/// Most clients in the handshake (token not yet proven) at once.
const MAX_PENDING: usize = 64;

/// The node's arena, on the raylet's side: the memfd and who holds which granule.
pub struct NodeArena {
    arena: Arena,
    granule: usize,
    /// The NUMA node of each span, as placed; empty: one unbound span.
    nodes: Vec<u32>,
    /// `(offset, len)` of each span.
    spans: Vec<(usize, usize)>,
    state: Mutex<ServerState>,
    /// Wakes the sweeper: dead-held granules appeared, or a server stops.
    wake: Condvar,
}

#[derive(Debug)]
struct ServerState {
    granules: Granules,
    /// Live (token-proven) connections.
    clients: usize,
    next_client: ClientId,
}

impl fmt::Debug for NodeArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeArena")
            .field("arena", &self.arena)
            .field("granule", &self.granule)
            .field("spans", &self.spans)
            .finish()
    }
}

/// A snapshot of the node arena's use, for `manta status` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeArenaStats {
    /// Bytes in whole granules.
    pub capacity: usize,
    /// Bytes granted to live clients, or dead-held.
    pub granted: usize,
    /// Live client connections.
    pub clients: usize,
    /// Bytes of dead clients' granules kept because a reader still read-locks them.
    pub held_back: usize,
    /// Pages backing the arena.
    pub page_kind: PageKind,
    /// The NUMA node of each span, in address order; empty when the arena is one unbound span.
    pub numa_nodes: Vec<u32>,
}

impl NodeArena {
    /// Creates the node's arena: [`Arena::create`] with `config.capacity` and `config.pages`,
    /// NUMA placement along `config.numa_nodes` as [`Store::new`](crate::Store::new) does,
    /// pre-faulted if `config.prefault`, cut into granules of `config.node_granule` (adjusted
    /// as [`StoreConfig::node_granule`] says).
    pub fn create(config: &StoreConfig) -> Result<Arc<NodeArena>, StoreError> {
        let mut arena = Arena::create(config.capacity, config.pages)?;
        // Bind before touching: NUMA policy applies to pages when they are first faulted.
        let placement = numa::place(&arena, config.numa_nodes.as_deref());
        if config.prefault {
            arena.prefault();
        }
        let page = arena.page_kind().page_size();
        let granule = granules::granule_size(config.node_granule, arena.len(), page);
        let table = Granules::new(&placement.spans, &placement.nodes, granule);
        info!(
            len = arena.len(),
            pages = %arena.page_kind(),
            granule,
            granules = table.capacity() / granule,
            "node arena ready"
        );
        Ok(Arc::new(NodeArena {
            arena,
            granule,
            nodes: placement.nodes,
            spans: placement.spans,
            state: Mutex::new(ServerState {
                granules: table,
                clients: 0,
                next_client: 1,
            }),
            wake: Condvar::new(),
        }))
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The granule in bytes.
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// A snapshot of use.
    pub fn stats(&self) -> NodeArenaStats {
        let state = self.lock();
        NodeArenaStats {
            capacity: state.granules.capacity(),
            granted: state.granules.granted(),
            clients: state.clients,
            held_back: state.granules.held_back(),
            page_kind: self.arena.page_kind(),
            numa_nodes: self.nodes.clone(),
        }
    }

    /// The state lock. Every change to the state is complete before anything that can panic,
    /// so a poisoned lock is still consistent.
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hello(&self) -> Hello {
        Hello {
            page_kind: self.arena.page_kind(),
            arena_len: self.arena.len() as u64,
            granule: self.granule as u64,
            spans: self
                .spans
                .iter()
                .enumerate()
                .map(|(i, &(offset, len))| (self.nodes.get(i).copied(), offset as u64, len as u64))
                .collect(),
        }
    }

    /// Frees the dead-held granules that no other description read-locks (step 4). A failed
    /// probe counts as locked: the granule is re-checked on the next sweep.
    fn sweep(&self, state: &mut ServerState) -> usize {
        let fd = self.arena.fd();
        let freed = state.granules.sweep(|offset, len| {
            ofd::locked_by_others(fd, offset as u64, len as u64).unwrap_or_else(|e| {
                warn!(offset, len, error = %e, "node arena: lock probe failed; granule kept");
                true
            })
        });
        if freed > 0 {
            debug!(
                freed,
                held_back = state.granules.held_back(),
                "node arena: dead granules freed"
            );
        }
        freed
    }

    /// Answers one request of `client`.
    fn handle(&self, client: ClientId, request: Request) -> Reply {
        let mut state = self.lock();
        let (status, offset, len) = match request {
            Request::Grant { bytes, prefer } => {
                if state.granules.any_dead() {
                    self.sweep(&mut state);
                }
                let n = usize::try_from(bytes.div_ceil(self.granule as u64)).unwrap_or(usize::MAX);
                match state.granules.claim(client, n, prefer) {
                    Some((offset, len)) => (Status::Ok, offset, len),
                    None => (Status::NoRoom, 0, 0),
                }
            }
            Request::GiveBack { offset, len } => {
                let released = match (usize::try_from(offset), usize::try_from(len)) {
                    (Ok(o), Ok(l)) => state.granules.release(client, o, l).map(|()| (o, l)),
                    _ => Err(granules::Refusal::NotGranules),
                };
                match released {
                    Ok((o, l)) => (Status::Ok, o, l),
                    Err(why) => {
                        warn!(client, offset, len, ?why, "node arena: give-back refused");
                        (Status::Refused, 0, 0)
                    }
                }
            }
        };
        Reply {
            status,
            offset: offset as u64,
            len: len as u64,
            node_granted: state.granules.granted() as u64,
            node_capacity: state.granules.capacity() as u64,
        }
    }

    /// The reply to a malformed request.
    fn refusal(&self) -> Reply {
        let state = self.lock();
        Reply {
            status: Status::Refused,
            offset: 0,
            len: 0,
            node_granted: state.granules.granted() as u64,
            node_capacity: state.granules.capacity() as u64,
        }
    }

    /// A new connection's id.
    fn next_client(&self) -> ClientId {
        let mut state = self.lock();
        state.next_client += 1;
        state.next_client - 1
    }

    /// `client`'s connection closed: its granules become dead-held and are swept at once.
    fn client_gone(&self, client: ClientId, proven: bool) {
        let mut state = self.lock();
        if proven {
            state.clients -= 1;
        }
        let dead = state.granules.client_gone(client);
        if dead > 0 {
            self.sweep(&mut state);
            info!(
                client,
                granules = dead,
                held_back = state.granules.held_back(),
                "node arena: client gone; its granules reclaimed"
            );
            if state.granules.any_dead() {
                self.wake.notify_all();
            }
        }
    }

    /// Serves clients on `listener` (a bound Unix socket, abstract or not) with std threads:
    /// an acceptor, one thread per client, and the dead-granule sweeper. Only a client that
    /// proves `token` gets the memfd. Dropping the returned guard stops it.
    pub fn serve(self: &Arc<Self>, listener: UnixListener, token: &str) -> io::Result<NodeServer> {
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Serving {
            node: self.clone(),
            token: token.as_bytes().to_vec(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
            log: LogLimit::default(),
        });
        let mut server = NodeServer {
            shared: shared.clone(),
            acceptor: None,
            sweeper: None,
        };
        let s = shared.clone();
        server.sweeper = Some(
            std::thread::Builder::new()
                .name("manta-node-sweep".into())
                .spawn(move || s.sweep_loop())?,
        );
        // On an error here, `server`'s drop stops the sweeper.
        server.acceptor = Some(
            std::thread::Builder::new()
                .name("manta-node-accept".into())
                .spawn(move || shared.accept_loop(listener))?,
        );
        Ok(server)
    }
}

/// What a server's threads share.
struct Serving {
    node: Arc<NodeArena>,
    token: Vec<u8>,
    stop: AtomicBool,
    /// A second handle on every open connection, to shut it down at stop.
    conns: Mutex<HashMap<ClientId, UnixStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    log: LogLimit,
}

/// Waits until one of `fds` is ready or `timeout` passes; their `revents` say which.
fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes exactly `fds.len()` pollfds through the pointer, a live
    // slice exclusively borrowed for the call; each fd is open (owned by the caller's
    // listener and streams, alive across the call). On an error (EINTR) no revents are set,
    // and the caller simply polls again.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

fn pollfd(fd: BorrowedFd<'_>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits for `handle` until `deadline`, then leaves it running (logged).
fn join_by(handle: JoinHandle<()>, deadline: Instant) {
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if handle.is_finished() {
        let _ = handle.join();
    } else {
        warn!("node arena: a server thread did not stop in time; left running");
    }
}

impl Serving {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Accepts connections and reads their proofs (steps 1–2) without blocking, then hands
    /// each proven client to a thread of its own.
    fn accept_loop(self: Arc<Self>, listener: UnixListener) {
        let mut pending: Vec<Pending> = Vec::new();
        while !self.stopping() {
            let now = Instant::now();
            pending.retain(|p| {
                let alive = p.deadline > now;
                if !alive && let Some(suppressed) = self.log.check() {
                    warn!(
                        client = p.id,
                        suppressed, "node arena: connection refused: no proof within 5 s"
                    );
                }
                alive
            });
            let wait = pending
                .iter()
                .map(|p| p.deadline.saturating_duration_since(now))
                .fold(ACCEPT_POLL, Duration::min);
            let mut fds: Vec<libc::pollfd> = std::iter::once(pollfd(listener.as_fd()))
                .chain(pending.iter().map(|p| pollfd(p.stream.as_fd())))
                .collect();
            poll_fds(&mut fds, wait);
            // Pending clients first (indices match `fds[1..]`), last to first for swap_remove.
            for i in (0..pending.len()).rev() {
                if fds[i + 1].revents == 0 {
                    continue;
                }
                match pending[i].read() {
                    Progress::More => {}
                    Progress::Proof {
                        theirs,
                        mine,
                        proof,
                    } => {
                        let p = pending.swap_remove(i);
                        self.proven(p, &theirs, &mine, &proof);
                    }
                    Progress::Refused(why) => {
                        let p = pending.swap_remove(i);
                        if let Some(suppressed) = self.log.check() {
                            warn!(
                                client = p.id,
                                why, suppressed, "node arena: connection refused"
                            );
                        }
                    }
                }
            }
            loop {
                match listener.accept() {
                    Ok((stream, _)) => self.admit(&mut pending, stream),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of fds, say: back off instead of spinning.
                        if let Some(suppressed) = self.log.check() {
                            warn!(error = %e, suppressed, "node arena: accept failed");
                        }
                        std::thread::sleep(ACCEPT_POLL);
                        break;
                    }
                }
            }
        }
    }

    /// Step 1: a new connection joins the pending ones, unless [`MAX_PENDING`] already are.
    fn admit(&self, pending: &mut Vec<Pending>, stream: UnixStream) {
        if pending.len() >= MAX_PENDING {
            drop(stream);
            if let Some(suppressed) = self.log.check() {
                warn!(
                    suppressed,
                    "node arena: connection refused: too many handshakes under way"
                );
            }
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(error = %e, "node arena: socket setup failed; connection dropped");
            return;
        }
        let id = self.node.next_client();
        pending.push(Pending::new(id, stream, Instant::now() + EXCHANGE_TIMEOUT));
    }

    /// Step 2's verdict on a client's proof: a client that proved the token gets a thread of
    /// its own, which starts with this server's proof (step 3).
    fn proven(self: &Arc<Self>, p: Pending, theirs: &[u8], mine: &[u8], proof: &[u8]) {
        if !auth::verify(&self.token, Role::Connector, theirs, mine, proof) {
            if let Some(suppressed) = self.log.check() {
                warn!(
                    client = p.id,
                    suppressed, "node arena: connection refused: wrong token"
                );
            }
            return;
        }
        if let Err(e) = p.stream.set_nonblocking(false) {
            warn!(client = p.id, error = %e, "node arena: socket setup failed; connection dropped");
            return;
        }
        let (id, stream) = (p.id, p.stream);
        let answer = auth::prove(&self.token, Role::Listener, theirs, mine);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("manta-node-client-{id}"))
            .spawn(move || me.serve_client(id, stream, &answer));
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|h| !h.is_finished());
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => warn!(error = %e, "node arena: no thread for a client; connection dropped"),
        }
    }

    /// Registers `stream` for shutdown at stop; false if the server is stopping already.
    fn register(&self, id: ClientId, stream: &UnixStream) -> bool {
        let Ok(second) = stream.try_clone() else {
            return false;
        };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that stop's shutdown pass takes: a connection is either seen
        // by that pass or sees the flag here.
        if self.stopping() {
            return false;
        }
        conns.insert(id, second);
        true
    }

    /// A client that proved the token, on its own thread: step 3, then step 4 until it closes.
    fn serve_client(self: Arc<Self>, id: ClientId, stream: UnixStream, answer: &[u8]) {
        if !self.register(id, &stream) {
            return;
        }
        self.attach(id, &stream, answer);
        self.requests(id, &stream);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.node.client_gone(id, true);
    }

    /// Step 3: this server's proof, then the memfd and hello, to a client that proved the
    /// token (counted as a client from here on, even if the send fails: `client_gone` counts
    /// it down).
    fn attach(&self, id: ClientId, stream: &UnixStream, answer: &[u8]) {
        self.node.lock().clients += 1;
        let sent = stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .and_then(|()| (&*stream).write_all(answer))
            .and_then(|()| {
                fdpass::send_fd(stream, self.node.arena.fd(), &self.node.hello().encode())
            });
        match sent {
            Ok(()) => debug!(client = id, "node arena: client attached"),
            Err(e) => warn!(client = id, error = %e, "node arena: sending the arena failed"),
        }
    }

    /// Step 4 until the connection closes.
    fn requests(&self, id: ClientId, stream: &UnixStream) {
        if let Err(e) = stream.set_read_timeout(None) {
            warn!(client = id, error = %e, "node arena: socket setup failed");
            return;
        }
        let mut frame = [0u8; wire::REQUEST_LEN];
        loop {
            if (&*stream).read_exact(&mut frame).is_err() {
                return;
            }
            let reply = match Request::decode(&frame) {
                Ok(request) => self.node.handle(id, request),
                Err(why) => {
                    warn!(client = id, why, "node arena: bad request refused");
                    self.node.refusal()
                }
            };
            if (&*stream).write_all(&reply.encode()).is_err() {
                return;
            }
        }
    }

    fn sweep_loop(self: Arc<Self>) {
        let node = &self.node;
        let mut state = node.lock();
        loop {
            // Checked under the state lock, which stop takes before notifying: no lost wake-up.
            if self.stopping() {
                return;
            }
            if state.granules.any_dead() {
                node.sweep(&mut state);
                state = node
                    .wake
                    .wait_timeout(state, SWEEP_PERIOD)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else {
                state = node.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// A running [`NodeArena::serve`]; dropping it stops accepting, closes the client connections
/// and joins the server's threads (waiting a few seconds at most).
pub struct NodeServer {
    shared: Arc<Serving>,
    acceptor: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for NodeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeServer")
            .field("stopping", &self.shared.stopping())
            .finish()
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.stop.store(true, Ordering::Release);
        for conn in shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        {
            let _state = shared.node.lock();
            shared.node.wake.notify_all();
        }
        let deadline = Instant::now() + JOIN_LIMIT;
        let workers: Vec<_> =
            std::mem::take(&mut *shared.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in self.acceptor.take().into_iter().chain(self.sweeper.take()) {
            join_by(handle, deadline);
        }
        // The acceptor has stopped: no worker is added after this.
        let late: Vec<_> =
            std::mem::take(&mut *shared.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in workers.into_iter().chain(late) {
            join_by(handle, deadline);
        }
    }
}

/// A process's connection to its node's arena: the arena mapped read-write, and the channel
/// on which its store asks for granules and gives them back.
pub struct NodeClient {
    conn: Mutex<UnixStream>,
    /// Set after the first I/O error: the channel may be out of step, so it is not used again.
    broken: AtomicBool,
    arena: Arena,
    reader: Arc<AttachedArena>,
    id: (u64, u64),
    granule: usize,
    spans: Vec<(usize, usize)>,
    span_nodes: Vec<Option<u32>>,
    node_granted: AtomicUsize,
    node_capacity: AtomicUsize,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClient")
            .field("arena", &self.arena)
            .field("granule", &self.granule)
            .field("spans", &self.spans)
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish()
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl NodeClient {
    /// Connects to the node's arena server at `addr`, proves `token`, receives the memfd and
    /// the arena's description, checks them and maps the arena read-write (and, for
    /// [`NodeClient::reader`], read-only on a description of its own).
    pub fn connect(addr: &SocketAddr, token: &str) -> io::Result<NodeClient> {
        let stream = UnixStream::connect_addr(addr)?;
        stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
        stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
        let token = token.as_bytes();
        let mine = auth::nonce()?;
        let mut request = pending::MAGIC.to_vec();
        request.extend_from_slice(&mine);
        (&stream).write_all(&request)?;
        let mut theirs = [0u8; auth::NONCE_LEN];
        (&stream).read_exact(&mut theirs)?;
        (&stream).write_all(&auth::prove(token, Role::Connector, &mine, &theirs))?;
        let mut proof = [0u8; auth::PROOF_LEN];
        (&stream).read_exact(&mut proof)?;
        if !auth::verify(token, Role::Listener, &mine, &theirs, &proof) {
            return Err(invalid(
                "the node arena's server did not prove the cluster token",
            ));
        }
        let mut buf = vec![0u8; wire::HELLO_MAX];
        let (mut got, fd) = fdpass::recv_fd(&stream, &mut buf)?;
        if got < Hello::HEAD_LEN {
            (&stream).read_exact(&mut buf[got..Hello::HEAD_LEN])?;
            got = Hello::HEAD_LEN;
        }
        let total = Hello::total_len(&buf[..Hello::HEAD_LEN])
            .ok_or_else(|| invalid("node arena hello: bad span count"))?;
        if got > total {
            return Err(invalid("node arena hello: trailing bytes"));
        }
        (&stream).read_exact(&mut buf[got..total])?;
        let hello = Hello::decode(&buf[..total]).map_err(invalid)?;
        let len = usize::try_from(hello.arena_len).map_err(|_| invalid("arena too large"))?;
        let granule = usize::try_from(hello.granule).map_err(|_| invalid("granule too large"))?;
        let (id, _) = arena::identity_and_len(fd.as_fd())?;
        let reader_fd = fd.try_clone()?;
        let arena = Arena::map_shared(fd, hello.page_kind, len)?;
        let reader = AttachedArena::attach(reader_fd)?;
        if reader.len() != len {
            return Err(invalid("the read-only mapping differs in length"));
        }
        let spans = hello
            .spans
            .iter()
            .map(|&(_, offset, len)| (offset as usize, len as usize))
            .collect();
        let span_nodes = hello.spans.iter().map(|&(node, _, _)| node).collect();
        let client = NodeClient {
            conn: Mutex::new(stream),
            broken: AtomicBool::new(false),
            arena,
            reader: Arc::new(reader),
            id,
            granule,
            spans,
            span_nodes,
            node_granted: AtomicUsize::new(0),
            node_capacity: AtomicUsize::new(0),
        };
        client
            .node_capacity
            .store(client.capacity(), Ordering::Relaxed);
        info!(len, granule, pages = %hello.page_kind, "node arena attached");
        Ok(client)
    }

    /// A read-only mapping of the arena on this process's own open file description, for
    /// reading other processes' objects in place under [`AttachedArena::hold`] read locks.
    /// Made once at connect; every call shares it.
    pub fn reader(&self) -> Arc<AttachedArena> {
        self.reader.clone()
    }

    /// `(st_dev, st_ino)` of the arena memfd: the same arena received from another process has
    /// the same identity ([`arena_identity`]).
    pub fn arena_id(&self) -> (u64, u64) {
        self.id
    }

    /// Pages backing the arena.
    pub fn page_kind(&self) -> PageKind {
        self.arena.page_kind()
    }

    /// The arena, mapped read-write (its fd shares the server's open file description: never
    /// lock through it).
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The granule in bytes.
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// Bytes in whole granules, the node's capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.spans
            .iter()
            .map(|&(_, len)| len / self.granule * self.granule)
            .sum()
    }

    /// The largest grant possible: the largest span's whole granules.
    pub(crate) fn max_grant(&self) -> usize {
        self.spans
            .iter()
            .map(|&(_, len)| len / self.granule * self.granule)
            .max()
            .unwrap_or(0)
    }

    /// The NUMA node of each span when every span is bound (a region index below this list's
    /// length names a span); empty otherwise.
    pub(crate) fn region_nodes(&self) -> Vec<u32> {
        self.span_nodes
            .iter()
            .copied()
            .collect::<Option<Vec<u32>>>()
            .unwrap_or_default()
    }

    /// The span (region) holding `offset`.
    pub(crate) fn span_of(&self, offset: usize) -> Option<usize> {
        self.spans
            .iter()
            .position(|&(o, l)| offset >= o && offset - o < l)
    }

    /// Number of spans (the store's regions).
    pub(crate) fn regions(&self) -> usize {
        self.spans.len()
    }

    /// The node's granted bytes and capacity, as of the latest reply.
    pub(crate) fn node_usage(&self) -> (usize, usize) {
        (
            self.node_granted.load(Ordering::Relaxed),
            self.node_capacity.load(Ordering::Relaxed),
        )
    }

    /// One round trip; `None` (warned once) on any I/O error, after which the channel is not
    /// used again.
    fn exchange(&self, request: Request) -> Option<Reply> {
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let result = (&*conn).write_all(&request.encode()).and_then(|()| {
            let mut frame = [0u8; wire::REPLY_LEN];
            (&*conn).read_exact(&mut frame)?;
            Reply::decode(&frame).map_err(invalid)
        });
        match result {
            Ok(reply) => {
                self.node_granted
                    .store(reply.node_granted as usize, Ordering::Relaxed);
                self.node_capacity
                    .store(reply.node_capacity as usize, Ordering::Relaxed);
                Some(reply)
            }
            Err(e) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "node arena: connection to the server lost; no more grants");
                }
                None
            }
        }
    }

    /// A grant of at least `bytes` (whole granules), on NUMA node `prefer` if it has room:
    /// `(offset, len, span index)`, or `None` when the node has no room or the channel failed.
    pub(crate) fn grant(&self, bytes: usize, prefer: Option<u32>) -> Option<(usize, usize, usize)> {
        let reply = self.exchange(Request::Grant {
            bytes: bytes as u64,
            prefer,
        })?;
        if reply.status != Status::Ok {
            return None;
        }
        let (offset, len) = (
            usize::try_from(reply.offset).ok()?,
            usize::try_from(reply.len).ok()?,
        );
        let span = self.spans.iter().position(|&(o, l)| {
            offset >= o && offset.checked_add(len).is_some_and(|end| end <= o + l)
        });
        // A run never straddles spans: the span that holds its start holds all of it.
        match span {
            Some(span) if len >= bytes && len.is_multiple_of(self.granule) => {
                Some((offset, len, span))
            }
            _ => {
                warn!(
                    offset,
                    len, bytes, "node arena: the server granted a bad extent; ignored"
                );
                None
            }
        }
    }

    /// Gives `[offset, offset + len)` back to the node; false if refused or the channel failed.
    pub(crate) fn give_back(&self, offset: usize, len: usize) -> bool {
        self.exchange(Request::GiveBack {
            offset: offset as u64,
            len: len as u64,
        })
        .is_some_and(|r| r.status == Status::Ok)
    }

    /// Sends a raw request frame (tests of the server's refusal path).
    #[cfg(test)]
    fn raw(&self, frame: &[u8; wire::REQUEST_LEN]) -> io::Result<Reply> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        (&*conn).write_all(frame)?;
        let mut reply = [0u8; wire::REPLY_LEN];
        (&*conn).read_exact(&mut reply)?;
        Reply::decode(&reply).map_err(invalid)
    }
}

/// `(st_dev, st_ino)` of `fd` (`fstat`), to compare with [`NodeClient::arena_id`].
pub fn arena_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    Ok(arena::identity_and_len(fd)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PageRequest;
    use std::os::linux::net::SocketAddrExt;

    fn node(capacity: usize, granule: usize) -> Arc<NodeArena> {
        NodeArena::create(&StoreConfig {
            pages: PageRequest::Small,
            prefault: false,
            node_granule: granule,
            ..StoreConfig::with_capacity(capacity)
        })
        .expect("node arena")
    }

    fn serve(node: &Arc<NodeArena>, name: &str) -> (NodeServer, SocketAddr) {
        let name = format!("manta-test-{name}-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixListener::bind_addr(&addr).expect("bind");
        (node.serve(listener, "secret").expect("serve"), addr)
    }

    #[test]
    fn granule_is_adjusted_and_capacity_is_whole_granules() {
        let n = node(16 << 20, 64 << 20);
        assert_eq!(n.granule(), 2 << 20, "lowered to an eighth");
        assert_eq!(n.stats().capacity, 16 << 20);
        assert_eq!(n.stats().granted, 0);
    }

    #[test]
    fn grants_give_backs_and_refusals_over_the_socket() {
        let n = node(16 << 20, 1 << 20);
        let (_server, addr) = serve(&n, "grants");
        let c = NodeClient::connect(&addr, "secret").expect("connect");
        assert_eq!(c.granule(), 1 << 20);
        assert_eq!(c.capacity(), 16 << 20);
        let (off, len, span) = c.grant(3 << 20, None).expect("granted");
        assert_eq!((len, span), (3 << 20, 0));
        assert_eq!(n.stats().granted, 3 << 20);
        assert_eq!(c.node_usage(), (3 << 20, 16 << 20));
        assert!(c.grant(14 << 20, None).is_none(), "no room");
        assert!(!c.give_back(off + 1, 1 << 20), "not a granule");
        // Garbage gets status 2 and the connection stays usable.
        let reply = c.raw(&[0xff; wire::REQUEST_LEN]).expect("reply");
        assert_eq!(reply.status, Status::Refused);
        assert!(c.give_back(off, len));
        assert_eq!(n.stats().granted, 0);
        assert_eq!(n.stats().clients, 1);
        assert_eq!(arena_identity(n.arena().fd()).expect("fstat"), c.arena_id());
    }

    #[test]
    fn another_clients_extent_cannot_be_given_back() {
        let n = node(16 << 20, 1 << 20);
        let (_server, addr) = serve(&n, "foreign");
        let a = NodeClient::connect(&addr, "secret").expect("connect");
        let b = NodeClient::connect(&addr, "secret").expect("connect");
        let (off, len, _) = a.grant(1, None).expect("granted");
        assert!(!b.give_back(off, len));
        assert_eq!(n.stats().granted, 1 << 20);
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.stats().granted != 0 {
            assert!(
                Instant::now() < deadline,
                "a closed client's granule is freed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
