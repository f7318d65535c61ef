//! Zero-copy reads between processes of one host: attaching another process's store arena,
//! and the pins its holder keeps for a reader while that reader's views live.
//!
//! Each worker process (and driver) allocates its objects in a store arena, a memfd: its
//! node's shared arena (`node_store.rs`) or, where the node has none, one of its own. A process
//! that reads an object held by another process of the same host and network namespace (the
//! condition under which the cluster already uses the shared-memory transport: equal host ids,
//! boot id + netns) maps the holder's arena read-only, once, and reads the object where it
//! lies. When the holder's arena is this process's node arena too (the fd it receives is the
//! same file: equal `(st_dev, st_ino)`), it reads through its own mapping of it instead of
//! mapping it again.
//!
//! # Attach (once per pair of processes)
//!
//! A process listening for shared-memory connections on the abstract Unix socket `@<name>`
//! (advertised through the GCS as its `shm_path`) also listens on `@<name>.arena`, so it is
//! advertised by the same entry. Abstract sockets are reachable by anyone in the network
//! namespace, so the fd goes only to a requester that proves the cluster token, and a
//! requester maps only an fd whose sender proved it too (an impostor on a freed name gets
//! neither the token nor a reader): both proofs are `manta_transport::auth`'s MACs over two
//! fresh nonces; the token never crosses the socket.
//!
//! 1. The requester connects and writes `b"MARN"` and its nonce.
//! 2. The holder reads them within [`ATTACH_TIMEOUT`] and answers its own nonce; the
//!    requester answers its proof; the holder checks it in constant time. A wrong or missing
//!    proof is logged (rate-limited) and the socket closed: no fd is sent. At most
//!    [`MAX_PENDING_ATTACHES`] requesters may be at this step at once; one beyond that is
//!    closed at once.
//! 3. The holder sends its arena's memfd (`SCM_RIGHTS`, [`manta_store::fdpass`]) with 48
//!    bytes: its own proof, its worker index and the arena's length (little-endian `u64`s).
//! 4. The requester checks the holder's proof, that the index is the holder it asked for and
//!    the length is the
//!    mapping's, maps the fd read-only ([`AttachedArena::attach`] refuses an fd not sealed
//!    against shrinking, so nobody can truncate it under the mapping), and caches it per holder
//!    (`Cluster::arenas`): each peer's arena is mapped at most once. Pulls issued while an
//!    attach is under way wait for it (they are queued in the slot). A holder that is on
//!    another host, or whose attach fails (logged once per process), is read by copy.
//! 5. When the holder is lost (`worker_lost`), its mapping leaves the cache; views still
//!    reading it keep it mapped through their `Arc` until they drop.
//!
//! # Pins (the numbered protocol of a zero-copy read)
//!
//! 1. A reader that attached the holder's arena sends `PullObject { pin: true }` (through the
//!    ordinary pull queue, redirects included).
//! 2. The holder answers a value in its own store by taking a store pin on it for the reader
//!    and keeping that pin *and a strong handle on the stored object* in its pin table under a
//!    fresh pin id, with the reader's worker index; it replies `ObjectPinned { pin_id, offset,
//!    len, arena }` (`arena`: its own index). Anything else (an inline value, an object it
//!    itself reads from a third process's arena) gets the ordinary reply: the copy path.
//! 3. The reader checks that `arena` is the holder it asked, that it has that arena mapped, and
//!    that `[offset, offset + len)` lies inside the mapping; its payload is then a
//!    [`StoredObject::attached`] slicing the mapping. A reply it cannot use is unpinned at once
//!    and the object is pulled again by copy (logged as an error: a holder never sends one).
//!    On the node's shared arena, while the payload lives, the reader also holds a read lock on
//!    the object's range of the memfd (`AttachedArena::hold`): a node's raylet does not hand a
//!    dead holder's extent to another process while any reader locks it (`manta_store`'s
//!    `node.rs`); a holder's own arena needs none, since the reader's mapping keeps it. The
//!    lock counts only if the holder was alive when it was taken, so right after taking it
//!    the reader checks the holder's pidfd (opened on the attach socket's peer, `PeerLife`):
//!    exited means the object is read by copy instead.
//! 4. When the reader's last handle on that payload (one read of a result or borrowed
//!    object — `RemoteObject::fetch` keeps no pinned payload, so the holder may spill an
//!    object nobody reads —, a task argument, a view) drops, it sends the one-way
//!    `UnpinObject { pin_id }`, queued on the holder's
//!    connection (batched by its writer). The holder drops the entry: first the pin, then the
//!    handle, which deletes the object from its store if nobody else holds it. An unknown pin
//!    id, or one held by another reader, is logged and ignored.
//! 5. When the reader is lost (`worker_lost`: its connection closed), the holder drops every
//!    pin that reader held.
//!
//! **Why the reader's bytes cannot change under it.** While the holder's table entry lives,
//! its store pin keeps the block from being spilled, evicted or freed (store state machine,
//! step 3), and its handle keeps the object from being deleted even when its owner frees it
//! (`FreeObject` drops only the `held` handle) or the holder's own references drop: the store
//! object is deleted only with the last handle (core's stored-object protocol, step 3). The
//! entry lives until the reader unpins (after its last view dropped) or dies. Sealed bytes are
//! never written, and the mapping cannot shrink (sealed memfd), so a checked location stays
//! valid for as long as the mapping is held.

use crate::sync::{Arc, AtomicBool, Mutex, Ordering, Weak};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use manta_store::{AttachedArena, Location, PeerLife, SharedPin, fdpass};
use manta_transport::LogLimiter;
use manta_transport::auth::{self, Role};

use super::object_manager::PullReq;
use super::peer::Peer;
use super::proto::Msg;
use super::worker::Cluster;
use crate::id::ObjectId;
use crate::object::Payload;
use crate::store::{AttachedPin, StoredObject};
use crate::sync::lock;

/// How long either side of an attach waits for the other.
pub(super) const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// The first bytes of an attach request (step 1).
const ATTACH_MAGIC: &[u8; 4] = b"MARN";

/// The holder's reply with its fd (step 3): its proof, worker index and arena length.
const ATTACH_REPLY: usize = auth::PROOF_LEN + 16;
/// Longest token a holder reads.
/// Most attaches a holder lets prove their token at once; a requester beyond that is closed
/// at once (so idle unauthenticated connections cannot pile up tasks and buffers).
const MAX_PENDING_ATTACHES: usize = 64;

/// Same-host reads as the object manager keeps them: attached arenas of other processes,
/// pins this process holds for readers, and whether a failed attach was logged already.
/// Edited in this file only.
pub(super) struct Attachments {
    /// Whether reads of objects held by processes of this host go through their attached
    /// arenas (`zero_copy_node`).
    zero_copy: bool,
    /// Arenas of other processes of this host, attached (or being attached) for zero-copy
    /// reads, by worker index.
    arenas: Mutex<HashMap<u64, ArenaSlot>>,
    /// Pins this process holds on objects of its store for readers in other processes.
    pins: Mutex<PinTable>,
    /// Whether a failed attach was logged at warning level already (once per process).
    warned: AtomicBool,
}

impl Attachments {
    pub(super) fn new(zero_copy: bool) -> Attachments {
        Attachments {
            zero_copy,
            arenas: Mutex::new(HashMap::new()),
            pins: Mutex::new(PinTable::default()),
            warned: AtomicBool::new(false),
        }
    }
}

/// Another process's arena as this process knows it.
enum ArenaSlot {
    /// Being attached; these pulls wait for the outcome.
    Attaching(Vec<PullReq>),
    /// Mapped read-only.
    Ready(Mapped),
    /// Another host, or the attach failed: read by copy.
    Unavailable,
}

/// A holder's arena as mapped here.
#[derive(Clone)]
pub(super) struct Mapped {
    arena: Arc<AttachedArena>,
    /// On this node's shared arena (read through this process's own mapping): the holder's
    /// pidfd, checked after each read lock is taken (pin step 3).
    node_holder: Option<Arc<PeerLife>>,
}

/// A pin this process holds on an object of its store for another process reading it in
/// place. Field order matters: the pin is released before the handle may delete the object.
struct HeldPin {
    reader: u64,
    _pin: SharedPin,
    _object: Arc<StoredObject>,
}

/// The pins this process holds for readers in other processes, by pin id.
#[derive(Default)]
struct PinTable {
    next: u64,
    pins: HashMap<u64, HeldPin>,
}

/// The abstract name of the arena socket that goes with the shared-memory socket `shm` (an
/// abstract path, with its leading NUL, or as advertised, with a leading `@`).
fn arena_socket(shm: &str) -> Option<SocketAddr> {
    let name = shm.strip_prefix('\0').or_else(|| shm.strip_prefix('@'))?;
    SocketAddr::from_abstract_name(format!("{name}.arena")).ok()
}

/// The worker index a connection's peer claims (`w<index>`).
fn peer_index(peer: &Peer) -> Option<u64> {
    peer.name.strip_prefix('w').and_then(|i| i.parse().ok())
}

/// Binds the arena socket beside the shared-memory socket at `shm` (non-blocking, for tokio).
pub(super) fn bind(shm: &Path) -> std::io::Result<UnixListener> {
    let addr = arena_socket(&shm.display().to_string()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an abstract socket")
    })?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves attaches on `listener` (on the I/O runtime) until the cluster is gone.
pub(super) async fn serve(listener: UnixListener, cluster: Weak<Cluster>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no arena attach: processes of this host read by copy");
            return;
        }
    };
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_ATTACHES));
    let log = Arc::new(LogLimiter::for_bad_peers());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(suppressed) = log.check() {
                    tracing::warn!(error = %e, suppressed, "arena attach: accept failed");
                }
                // Out of fds, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let weak = cluster.clone();
        if weak.strong_count() == 0 {
            return;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            drop(stream);
            if let Some(suppressed) = log.check() {
                tracing::warn!(
                    suppressed,
                    "arena attach refused: too many attaches under way"
                );
            }
            continue;
        };
        let log = log.clone();
        tokio::spawn(async move {
            serve_one(stream, weak, &log).await;
            drop(permit);
        });
    }
}

/// Steps 2 and 3 for one requester; refusals are logged through `log`.
async fn serve_one(mut stream: tokio::net::UnixStream, cluster: Weak<Cluster>, log: &LogLimiter) {
    use tokio::io::AsyncReadExt;
    let Some(c) = cluster.upgrade() else { return };
    let token = c.member.token.clone();
    drop(c);
    let proof = tokio::time::timeout(ATTACH_TIMEOUT, async {
        use tokio::io::AsyncWriteExt;
        let mut magic = [0u8; 4];
        stream.read_exact(&mut magic).await?;
        if &magic != ATTACH_MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no attach request",
            ));
        }
        let mut theirs = [0u8; auth::NONCE_LEN];
        stream.read_exact(&mut theirs).await?;
        let mine = auth::nonce()?;
        stream.write_all(&mine).await?;
        let mut proof = [0u8; auth::PROOF_LEN];
        stream.read_exact(&mut proof).await?;
        let token = token.as_bytes();
        Ok(auth::verify(token, Role::Connector, &theirs, &mine, &proof)
            .then(|| auth::prove(token, Role::Listener, &theirs, &mine)))
    })
    .await;
    let Some(c) = cluster.upgrade() else { return };
    let answer = match proof {
        Ok(Ok(Some(answer))) => answer,
        Ok(Ok(None)) => {
            if let Some(suppressed) = log.check() {
                tracing::warn!(suppressed, "arena attach refused: wrong cluster token");
            }
            return;
        }
        Ok(Err(e)) => {
            if let Some(suppressed) = log.check() {
                tracing::warn!(error = %e, suppressed, "arena attach refused: no proof read");
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) = log.check() {
                tracing::warn!(
                    suppressed,
                    "arena attach refused: no proof within the timeout"
                );
            }
            return;
        }
    };
    let Some(store) = c.runtime().and_then(|rt| rt.store.clone()) else {
        tracing::debug!("arena attach refused: this process has no store");
        return;
    };
    let sent = stream.into_std().and_then(|s| {
        s.set_nonblocking(false)?;
        s.set_write_timeout(Some(ATTACH_TIMEOUT))?;
        let mut payload = [0u8; ATTACH_REPLY];
        payload[..auth::PROOF_LEN].copy_from_slice(&answer);
        payload[auth::PROOF_LEN..][..8].copy_from_slice(&c.index.to_le_bytes());
        payload[auth::PROOF_LEN + 8..].copy_from_slice(&(store.arena().len() as u64).to_le_bytes());
        fdpass::send_fd(&s, store.arena().fd(), &payload)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "arena attach: sending the arena failed");
    }
}

impl Cluster {
    /// Whether a pull may ask its holder for a pin (`Some((req, true))`), must copy
    /// (`Some((req, false))`), or waits for an attach under way (`None`: `req` is queued and
    /// re-sent when the attach ends).
    pub(super) fn pin_gate(&self, req: PullReq) -> Option<(PullReq, bool)> {
        if !req.try_pin
            || !self.objects.attach.zero_copy
            || self.peers.shm_path().is_none()
            || req.holder == self.index
        {
            return Some((req, false));
        }
        let holder = req.holder;
        {
            let mut arenas = lock(&self.objects.attach.arenas);
            match arenas.get_mut(&holder) {
                Some(ArenaSlot::Ready(..)) => return Some((req, true)),
                Some(ArenaSlot::Unavailable) => return Some((req, false)),
                Some(ArenaSlot::Attaching(waiting)) => {
                    waiting.push(req);
                    return None;
                }
                None => {
                    arenas.insert(holder, ArenaSlot::Attaching(vec![req]));
                }
            }
        }
        // Step 1 blocks (a GCS look-up, a socket): never on an I/O thread.
        let me = self.me.get().cloned().unwrap_or_default();
        let spawned = std::thread::Builder::new()
            .name("manta-attach".into())
            .spawn(move || {
                if let Some(c) = me.upgrade() {
                    let slot = match c.attach(holder) {
                        Ok(Some(mapped)) => ArenaSlot::Ready(mapped),
                        Ok(None) => ArenaSlot::Unavailable,
                        Err(e) => {
                            c.attach_failed(holder, &e);
                            ArenaSlot::Unavailable
                        }
                    };
                    c.attach_done(holder, slot);
                }
            });
        if let Err(e) = spawned {
            self.attach_failed(holder, &e.to_string());
            self.attach_done(holder, ArenaSlot::Unavailable);
        }
        None
    }

    fn attach_failed(&self, holder: u64, error: &str) {
        if !self.objects.attach.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(holder, %error, "cannot attach the arena of a process on this host: its objects are read by copy (logged once)");
        } else {
            tracing::debug!(holder, %error, "cannot attach an arena: reading by copy");
        }
    }

    /// The end of an attach: records its outcome and sends the pulls that waited for it.
    fn attach_done(&self, holder: u64, slot: ArenaSlot) {
        let waiting = {
            let mut arenas = lock(&self.objects.attach.arenas);
            if !matches!(arenas.get(&holder), Some(ArenaSlot::Attaching(_))) {
                // The holder was lost meanwhile: its waiting pulls were re-sent then.
                return;
            }
            match arenas.insert(holder, slot) {
                Some(ArenaSlot::Attaching(waiting)) => waiting,
                _ => Vec::new(),
            }
        };
        for req in waiting {
            self.send_pull_req(req);
        }
    }

    /// Steps 1 and 4 of an attach: `Ok(None)` if `holder` is not on this host (and network
    /// namespace) or not reachable over shared memory.
    fn attach(&self, holder: u64) -> Result<Option<Mapped>, String> {
        let info = self
            .gcs_call(|request_id| Msg::GetWorker {
                request_id,
                index: holder,
            })
            .map_err(|e| e.to_string())?;
        let Msg::WorkerInfo {
            alive: true,
            shm_path,
            host_id,
            ..
        } = info
        else {
            return Ok(None);
        };
        if shm_path.is_empty() || host_id != self.peers.host_id() {
            return Ok(None);
        }
        let addr = arena_socket(&shm_path).ok_or("the shared-memory socket is not abstract")?;
        let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let mut sock = UnixStream::connect_addr(&addr).map_err(|e| fail("connecting", e))?;
        sock.set_read_timeout(Some(ATTACH_TIMEOUT))
            .and_then(|()| sock.set_write_timeout(Some(ATTACH_TIMEOUT)))
            .map_err(|e| fail("socket timeouts", e))?;
        let token = self.member.token.as_bytes();
        let mine = auth::nonce().map_err(|e| fail("a nonce", e))?;
        let mut hello = ATTACH_MAGIC.to_vec();
        hello.extend_from_slice(&mine);
        sock.write_all(&hello)
            .map_err(|e| fail("sending the request", e))?;
        let mut theirs = [0u8; auth::NONCE_LEN];
        (&sock)
            .read_exact(&mut theirs)
            .map_err(|e| fail("receiving the holder's nonce", e))?;
        sock.write_all(&auth::prove(token, Role::Connector, &mine, &theirs))
            .map_err(|e| fail("sending the proof", e))?;
        let mut reply = [0u8; ATTACH_REPLY];
        let (n, fd) =
            fdpass::recv_fd(&sock, &mut reply).map_err(|e| fail("receiving the arena", e))?;
        if n < reply.len() {
            // The payload may arrive split from the fd's first byte.
            (&sock)
                .read_exact(&mut reply[n..])
                .map_err(|e| fail("receiving the arena's size", e))?;
        }
        let (proof, rest) = reply.split_at(auth::PROOF_LEN);
        if !auth::verify(token, Role::Listener, &mine, &theirs, proof) {
            // `fd` drops unmapped.
            return Err(format!(
                "the arena socket of worker {holder} did not prove the cluster token"
            ));
        }
        let index = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(rest[8..].try_into().unwrap_or_default());
        if index != holder {
            return Err(format!(
                "the arena socket of worker {holder} answered as worker {index}"
            ));
        }
        // The holder allocates in the node's arena, as this process does: read through this
        // process's own mapping of it (node_store.rs, step 3).
        if let Some((reader, id)) = self.node_reader()
            && manta_store::arena_identity(fd.as_fd()).ok() == Some(id)
        {
            let life = PeerLife::of_peer(&sock).map_err(|e| fail("the holder's pidfd", e))?;
            tracing::debug!(holder, "the holder shares this node's arena");
            return Ok(Some(Mapped {
                arena: reader,
                node_holder: Some(Arc::new(life)),
            }));
        }
        let arena = AttachedArena::attach(fd).map_err(|e| fail("mapping the arena", e))?;
        if arena.len() as u64 != len {
            return Err(format!(
                "the arena of worker {holder} maps {} bytes, announced {len}",
                arena.len()
            ));
        }
        tracing::debug!(holder, len, "attached the arena of a process of this host");
        Ok(Some(Mapped {
            arena: Arc::new(arena),
            node_holder: None,
        }))
    }

    /// This process's own read-only mapping of its node's arena, if its store lives there.
    fn node_reader(&self) -> Option<(Arc<AttachedArena>, (u64, u64))> {
        let rt = self.rt.get()?.upgrade()?;
        rt.store.as_ref()?.node_reader()
    }

    /// Holder, step 2: pins the stored object `stored` for the reader at the other end of
    /// `peer`; `None` when it is not in this process's store (or the pin failed): copy then.
    pub(super) fn pin_for_reader(
        &self,
        peer: &Peer,
        request_id: u64,
        object_id: u64,
        stored: &Arc<StoredObject>,
    ) -> Option<Msg> {
        let reader = peer_index(peer)?;
        let pin = match stored.pin_for_peer(ObjectId::from_u64(object_id))? {
            Ok(pin) => pin,
            Err(e) => {
                tracing::warn!(error = %e, "could not pin an object for a reader: copying it");
                return None;
            }
        };
        let Location { offset, len } = pin.location();
        let mut table = lock(&self.objects.attach.pins);
        table.next += 1;
        let pin_id = table.next;
        table.pins.insert(
            pin_id,
            HeldPin {
                reader,
                _pin: pin,
                _object: stored.clone(),
            },
        );
        Some(Msg::ObjectPinned {
            request_id,
            pin_id,
            offset,
            len,
            arena: self.index,
        })
    }

    /// Holder, step 4: the reader at the other end of `peer` releases `pin_id`.
    pub(super) fn unpin_object(&self, peer: &Peer, pin_id: u64) {
        let reader = peer_index(peer);
        let released = {
            let mut table = lock(&self.objects.attach.pins);
            match table.pins.get(&pin_id) {
                Some(p) if Some(p.reader) == reader => table.pins.remove(&pin_id),
                Some(_) => {
                    tracing::error!(peer = %peer.name, pin_id, "unpin of a pin another reader holds: ignored");
                    None
                }
                None => {
                    tracing::error!(peer = %peer.name, pin_id, "unpin of an unknown pin: ignored");
                    None
                }
            }
        };
        // Outside the lock: dropping the last handle deletes the object from the store.
        drop(released);
    }

    /// Reader, step 3: the holder pinned what pull `request_id` asked for.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn object_pinned(
        &self,
        peer: &Arc<Peer>,
        request_id: u64,
        pin_id: u64,
        offset: u64,
        len: u64,
        arena: u64,
    ) {
        let unpin = {
            let peer = peer.clone();
            move || peer.send_queued(Msg::UnpinObject { pin_id })
        };
        let Some(pending) = self.objects.take_pull(request_id) else {
            // Nobody waits for it (the pull failed meanwhile): release it at once.
            return unpin();
        };
        let mapping = match lock(&self.objects.attach.arenas).get(&pending.holder) {
            Some(ArenaSlot::Ready(m)) if pending.pin && arena == pending.holder => Some(m.clone()),
            _ => None,
        };
        let again = PullReq {
            holder: pending.holder,
            object_id: pending.object_id,
            priority: pending.priority,
            hops: pending.hops,
            done: pending.done,
            try_pin: false,
        };
        let Some(mapping) = mapping else {
            tracing::error!(peer = %peer.name, pin_id, arena, "a pin in an arena not attached here: unpinned, copying instead");
            unpin();
            return self.send_pull_req(again);
        };
        let me = self.me.get().cloned().unwrap_or_default();
        let holder = pending.holder;
        // Step 4, when the payload's last handle drops: on the holder's current connection.
        let release = Box::new(move || {
            if let Some(c) = me.upgrade()
                && !c.stopped.load(Ordering::Acquire)
            {
                c.peers.send_queued(holder, Msg::UnpinObject { pin_id });
            }
        });
        let node_arena = mapping.node_holder.is_some();
        match AttachedPin::new(mapping.arena, Location { offset, len }, node_arena, release) {
            // The read lock is taken (in `new`); on the node arena it protects the bytes only
            // if the holder had not died before it (store's `life.rs`): else copy (which finds
            // the holder gone and fails or recovers as any pull from a dead holder does).
            Some(pin) if mapping.node_holder.as_ref().is_some_and(|h| !h.is_alive()) => {
                tracing::debug!(
                    holder,
                    pin_id,
                    "the holder died before the read lock: not reading in place"
                );
                drop(pin);
                self.send_pull_req(again);
            }
            Some(pin) => (again.done)(Ok(Payload::Stored(StoredObject::attached(pin)))),
            None => {
                // `AttachedPin::new` ran `release`: the pin is given back.
                tracing::error!(peer = %peer.name, pin_id, offset, len, "a pin outside the holder's arena: unpinned, copying instead");
                self.send_pull_req(again);
            }
        }
    }

    /// Both sides, step 5 and attach step 5: worker `index` is gone.
    pub(super) fn attach_worker_lost(&self, index: u64) {
        // Taken out first: re-sending may find the peer closed and come back here.
        let slot = lock(&self.objects.attach.arenas).remove(&index);
        if let Some(ArenaSlot::Attaching(waiting)) = slot {
            for mut req in waiting {
                req.try_pin = false;
                self.send_pull_req(req);
            }
        }
        let released: Vec<HeldPin> = {
            let mut table = lock(&self.objects.attach.pins);
            let ids: Vec<u64> = table
                .pins
                .iter()
                .filter(|(_, p)| p.reader == index)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| table.pins.remove(&id))
                .collect()
        };
        if !released.is_empty() {
            tracing::debug!(
                reader = index,
                pins = released.len(),
                "released the pins of a lost reader"
            );
        }
        drop(released);
    }

    /// At `leave`: every mapping and every pin held for readers.
    pub(super) fn attach_leave(&self) {
        lock(&self.objects.attach.arenas).clear();
        let pins = std::mem::take(&mut lock(&self.objects.attach.pins).pins);
        drop(pins);
    }
}
