//! The object manager ([`ObjectManager`], Ray's `ObjectManager` with its `PullManager`):
//! pulls of objects held by other processes (admitted by the pull queue, `pull_queue.rs`:
//! get > wait > task argument, at most `pull_window_bytes` (the configuration catalogue) in
//! flight; redirects from an owner
//! to the worker holding a result), serving other processes' pulls (inline, or a bulk
//! transfer straight into the reader's store), task arguments pulled once per process,
//! results held for remote owners and `FreeObject`, and [`RemoteObject`], the lazy payload of
//! an object held elsewhere.
//!
//! A pull is answered with `ObjectData` (found: the value, or a bulk transfer after it; not
//! found: a redirect to the holder, which may be the puller itself, or a message), with
//! `ObjectPinned` (`attach.rs`), or, when the object failed, with `ObjectFailed` carrying the
//! error as `TaskDone` does, so a task whose argument failed fails with that cause. A pull
//! from a worker that died fails with `OwnerDied` when that worker owned the object, else
//! `ObjectLost`.
//!
//! Its state (pending and queued pulls, results held for remote owners, arguments fetched
//! here) is edited in this file only; other files go through [`ObjectManager`]'s methods.
//! Same-host reads keep theirs in [`Attachments`] (`attach.rs`).

use crate::sync::{Arc, AtomicU8, AtomicU64, AtomicUsize, Mutex, OnceLock, Ordering, Weak};
use std::collections::HashMap;

use bytes::Bytes;

use super::attach::Attachments;
use super::peer::{BulkArrival, BulkData, Peer};
use super::proto::Msg;
use super::pull_queue::{PullQueue, Start};
use super::wait_reply;
use super::worker::Cluster;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{NestedRefs, ObjectCell, ObjectValue, Payload, Waiter};
use crate::remote::RemoteValue;
use crate::sync::lock;

/// A pending pull: who holds the object, and what to do with it.
pub(super) type PullDone = Box<dyn FnOnce(Result<Payload, Error>) + Send>;

/// What an object of unknown size counts as against the pull window (`pull_window_bytes`).
const UNKNOWN_PULL_BYTES: u64 = 1 << 20;

/// A pull waiting for room in the pull queue (`pull_queue.rs`).
struct QueuedPull {
    priority: u8,
    holder: u64,
    object_id: u64,
    done: PullDone,
    /// The cell this pull fills, when nothing else needs it: a pull whose cell every reader
    /// dropped before it started is skipped.
    wanted: Option<Weak<ObjectCell>>,
}

impl QueuedPull {
    /// Whether every reader of its cell is gone (the pull need not start).
    fn abandoned(&self) -> bool {
        self.wanted.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// A pull about to be sent (or waiting for its holder's arena to be attached).
pub(super) struct PullReq {
    pub(super) holder: u64,
    pub(super) object_id: u64,
    pub(super) priority: u8,
    /// Redirects followed so far.
    pub(super) hops: u8,
    pub(super) done: PullDone,
    /// Whether to ask for a pin when the holder's arena is attached (`attach.rs`); false to
    /// copy.
    pub(super) try_pin: bool,
}

/// A pull sent, waiting for its ObjectData (or ObjectPinned).
pub(super) struct PendingPull {
    pub(super) peer: String,
    /// The worker asked.
    pub(super) holder: u64,
    /// Whether a pin was asked for.
    pub(super) pin: bool,
    pub(super) object_id: u64,
    pub(super) priority: u8,
    /// Redirects followed so far.
    pub(super) hops: u8,
    pub(super) done: PullDone,
}

/// The reply to a pull of an object that failed: its error, kind and all.
fn failed(request_id: u64, e: &Error) -> Msg {
    let (kind, task, message) = super::execute::error_to_wire(e);
    let cause = match e {
        Error::Task(t) => t.pack_cause(),
        _ => Vec::new(),
    };
    Msg::ObjectFailed {
        request_id,
        kind,
        task,
        message,
        cause,
    }
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

/// The object manager's state.
pub(super) struct ObjectManager {
    /// Results this process computed for remote owners, until they free them.
    held: Mutex<HashMap<u64, ObjectValue>>,
    /// Pulls sent, by request id.
    pulls: Mutex<HashMap<u64, PendingPull>>,
    /// Get > wait > task argument, at most `pull_window_bytes` in flight (`pull_queue.rs`).
    pull_queue: Mutex<PullQueue<QueuedPull>>,
    next_pull: AtomicU64,
    /// Task arguments of other processes pulled (or being pulled) here, so that every task
    /// reading one shares one transfer and one copy.
    fetched: Mutex<HashMap<u64, Weak<ObjectCell>>>,
    /// Size of `fetched` at which dead entries are next swept (doubles with the live ones, so
    /// sweeping stays amortised O(1) per pull).
    fetched_sweep_at: AtomicUsize,
    /// Results up to this size travel inline in `TaskDone`.
    max_inline: usize,
    /// Zero-copy reads of objects held by processes of this host (`attach.rs`).
    pub(super) attach: Attachments,
}

impl std::fmt::Debug for ObjectManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectManager")
            .field("held", &lock(&self.held).len())
            .field("pulls", &lock(&self.pulls).len())
            .finish_non_exhaustive()
    }
}

impl ObjectManager {
    pub(super) fn new(max_inline: usize, zero_copy: bool) -> ObjectManager {
        ObjectManager {
            held: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            pull_queue: Mutex::new(PullQueue::new(
                crate::config::current().pull_window_bytes,
                UNKNOWN_PULL_BYTES,
            )),
            next_pull: AtomicU64::new(1),
            fetched: Mutex::new(HashMap::new()),
            fetched_sweep_at: AtomicUsize::new(1024),
            max_inline,
            attach: Attachments::new(zero_copy),
        }
    }

    /// Keeps `v` under `id` for its owner, unless `owner_dead` says the owner is known dead
    /// (checked under the table's lock, so a result is either freed by
    /// [`ObjectManager::free_results_of`] or never kept).
    pub(super) fn hold_unless(&self, id: u64, v: ObjectValue, owner_dead: impl FnOnce() -> bool) {
        let mut held = lock(&self.held);
        if !owner_dead() {
            held.insert(id, v);
        }
    }

    /// Worker `owner` died: the results held for it go, and with them the references in them
    /// (nobody can read them any more: a read of a result goes through its owner). Called
    /// after the death is recorded, so [`ObjectManager::hold_unless`] keeps no more.
    pub(super) fn free_results_of(&self, owner: u64) {
        let freed: Vec<ObjectValue> = {
            let mut held = lock(&self.held);
            let ids: Vec<u64> = held
                .keys()
                .copied()
                .filter(|id| super::owner_of(*id) == owner)
                .collect();
            ids.into_iter().filter_map(|id| held.remove(&id)).collect()
        };
        // Dropped outside the lock: freeing ends borrows of nested refs.
        drop(freed);
    }

    /// Keeps `v` under `id` for a remote owner (or an executor) to pull, until freed.
    pub(super) fn hold(&self, id: u64, v: ObjectValue) {
        lock(&self.held).insert(id, v);
    }

    /// Frees held objects `ids` (`FreeObject`, or a task's arguments once it is done).
    pub(super) fn free(&self, ids: &[u64]) {
        let freed: Vec<ObjectValue> = {
            let mut held = lock(&self.held);
            ids.iter().filter_map(|id| held.remove(id)).collect()
        };
        // Dropped outside the lock: a stored value's drop frees its store space.
        drop(freed);
    }

    /// What is held here, for listings.
    pub(super) fn held_rows(&self) -> Vec<(u64, ObjectValue)> {
        lock(&self.held)
            .iter()
            .map(|(id, v)| (*id, v.clone()))
            .collect()
    }

    /// The live arguments fetched here, for listings.
    pub(super) fn fetched_cells(&self) -> Vec<Arc<ObjectCell>> {
        lock(&self.fetched)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The pull sent under `request_id`, taken out (its answer arrived).
    pub(super) fn take_pull(&self, request_id: u64) -> Option<PendingPull> {
        lock(&self.pulls).remove(&request_id)
    }

    /// Takes out the pulls sent to the connection named `peer` (its worker died): each
    /// object's id and completion.
    pub(super) fn take_pulls_from(&self, peer: &str) -> Vec<(u64, PullDone)> {
        let mut pulls = lock(&self.pulls);
        let ids: Vec<u64> = pulls
            .iter()
            .filter(|(_, p)| p.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pulls.remove(&id).map(|p| (p.object_id, p.done)))
            .collect()
    }
}

impl Cluster {
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
            return done(self.local_payload(object_id));
        }
        lock(&self.objects.pull_queue).push(
            priority,
            len,
            QueuedPull {
                priority,
                holder,
                object_id,
                done,
                wanted,
            },
        );
        self.dispatch_pulls();
    }

    /// Starts queued pulls while there is room.
    fn dispatch_pulls(&self) {
        loop {
            let next = lock(&self.objects.pull_queue).next(QueuedPull::abandoned);
            match next {
                Some(Start { bytes, item }) => self.start_pull(item, bytes),
                None => return,
            }
        }
    }

    fn start_pull(&self, p: QueuedPull, bytes: u64) {
        let QueuedPull {
            priority,
            holder,
            object_id,
            done,
            ..
        } = p;
        let me = self.me.get().cloned().unwrap_or_default();
        let done: PullDone = Box::new(move |r| {
            if let Some(c) = me.upgrade() {
                lock(&c.objects.pull_queue).finished(bytes);
                c.dispatch_pulls();
            }
            done(r);
        });
        self.send_pull(holder, object_id, priority, 0, done);
    }

    fn send_pull(&self, holder: u64, object_id: u64, priority: u8, hops: u8, done: PullDone) {
        self.send_pull_req(PullReq {
            holder,
            object_id,
            priority,
            hops,
            done,
            try_pin: true,
        });
    }

    /// Sends a pull: asking for a pin when the holder's arena is attached here, waiting for
    /// an attach under way (`attach.rs`), else for a copy.
    pub(super) fn send_pull_req(&self, req: PullReq) {
        let Some((req, pin)) = self.pin_gate(req) else {
            return;
        };
        let PullReq {
            holder,
            object_id,
            priority,
            hops,
            done,
            ..
        } = req;
        let peer = self.peer(holder);
        let request_id = self.objects.next_pull.fetch_add(1, Ordering::Relaxed);
        lock(&self.objects.pulls).insert(
            request_id,
            PendingPull {
                peer: peer.name.clone(),
                holder,
                pin,
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
            pin,
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

    /// The payload of an object this process holds (see [`Cluster::local_value`]).
    fn local_payload(&self, object_id: u64) -> Result<Payload, Error> {
        self.local_value(object_id).and_then(|v| match v {
            Some(v) => Ok(v.data.clone()),
            None => Err(Error::ObjectFreed {
                object: ObjectId::from_u64(object_id),
            }),
        })
    }

    /// A value this process holds under `id`: a result kept for a remote owner, or an object
    /// of its own entered in the escape table (`Ok(None)` if neither, or not ready yet).
    fn local_value(&self, id: u64) -> Result<Option<ObjectValue>, Error> {
        if let Some(v) = lock(&self.objects.held).get(&id) {
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

    /// Serves a pull: replies when the object is ready (waiting for a pending one). With
    /// `pin`, a stored object is pinned for the puller rather than sent (`attach.rs`).
    pub(super) fn serve_pull(&self, peer: &Arc<Peer>, request_id: u64, object_id: u64, pin: bool) {
        if let Some(v) = lock(&self.objects.held).get(&object_id).cloned() {
            return self.send_value(peer, request_id, object_id, v, pin);
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
                Some(Ok(v)) => c.send_value(&peer2, request_id, object_id, v.clone(), pin),
                Some(Err(e)) => peer2.send(failed(request_id, e)),
                None => {}
            }
        };
        if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(respond))) {
            f();
        }
    }

    /// Sends a ready value to a puller: inline in the reply, or as a bulk transfer after it,
    /// or (an object another worker holds for us) a redirect to that worker, or (`pin`, an
    /// object of this process's store) a pin for the puller to read it in place.
    fn send_value(
        &self,
        peer: &Arc<Peer>,
        request_id: u64,
        object_id: u64,
        v: ObjectValue,
        pin: bool,
    ) {
        let data = match &v.data {
            Payload::Remote(r) => match r.local_copy() {
                Some(local) => local,
                // A result of ours whose holder died: rebuilt first (`lineage.rs`, step 3).
                None if r.id() == object_id
                    && self.placement.is_dead(r.holder())
                    && let Some(obj) = super::lineage::held_result(&v.data) =>
                {
                    let peer = peer.clone();
                    return self.serve_lost(obj, move |c, r| match r {
                        Ok(()) => c.send_value(&peer, request_id, object_id, v, pin),
                        Err(e) => peer.send(failed(request_id, &e)),
                    });
                }
                None if r.id() == object_id => {
                    return peer.send(Msg::ObjectData {
                        request_id,
                        found: false,
                        len: r.size(),
                        inline: Vec::new(),
                        error: String::new(),
                        redirect: r.holder(),
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
                                    nested: NestedRefs::default(),
                                },
                                pin,
                            ),
                            Err(e) => peer.send(failed(request_id, &e)),
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
                if pin && let Some(pinned) = self.pin_for_reader(peer, request_id, object_id, &s) {
                    return peer.send(pinned);
                }
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
    pub(super) fn object_data(
        &self,
        peer: &Arc<Peer>,
        request_id: u64,
        found: bool,
        len: u64,
        inline: Vec<u8>,
        error: String,
        redirect: u64,
    ) {
        let Some(pending) = lock(&self.objects.pulls).remove(&request_id) else {
            return;
        };
        let done = pending.done;
        if !found && redirect != 0 && redirect == self.index {
            // The owner points back here: this process holds the object itself (a result it
            // computed for that owner, now an argument of a task it runs).
            return done(self.local_payload(pending.object_id));
        }
        if !found && redirect != 0 && pending.hops < 4 {
            return self.send_pull(
                redirect,
                pending.object_id,
                pending.priority,
                pending.hops + 1,
                done,
            );
        }
        if !found {
            return done(Err(super::cancel::pull_error(pending.object_id, error)));
        }
        if len == 0 || !inline.is_empty() {
            return done(Ok(Payload::Inline(Bytes::from(inline).into())));
        }
        let store = self.runtime().and_then(|rt| rt.store.clone());
        let max_inline = self.objects.max_inline;
        let (object_id, holder, sender) = (pending.object_id, pending.holder, peer.clone());
        peer.expect_bulk(
            request_id,
            Box::new(move |n| match store {
                Some(store) if n as usize > max_inline => store.create(n as usize).map(Some),
                _ => Ok(None),
            }),
            Box::new(move |arrival| match arrival {
                BulkArrival::Stored(s) => done(Ok(Payload::Stored(s))),
                BulkArrival::Heap(b) => done(Ok(Payload::Inline(b.into()))),
                // Cut off by the holder's death: the object is lost with it (and may be
                // rebuilt: `lineage.rs`).
                BulkArrival::Failed(e) if sender.is_closed() => done(Err(
                    super::submit::lost_with(object_id, holder, &e.to_string()),
                )),
                BulkArrival::Failed(e) => done(Err(e)),
            }),
        );
    }

    /// The answer to one of our pulls: the object failed.
    pub(super) fn object_failed(
        &self,
        request_id: u64,
        kind: super::proto::ErrorKind,
        task: String,
        message: String,
        cause: Vec<u8>,
    ) {
        let Some(pending) = lock(&self.objects.pulls).remove(&request_id) else {
            return;
        };
        (pending.done)(Err(match kind {
            super::proto::ErrorKind::Panic => {
                crate::error::Error::Task(crate::error::TaskError::unpack(&task, &message, &cause))
            }
            _ => super::submit::wire_error(kind, task, message, pending.object_id),
        }));
    }

    /// A pulled copy of `object_id` made for a task argument, if one is here.
    fn fetched_copy(&self, object_id: u64) -> Option<Payload> {
        let cell = lock(&self.objects.fetched)
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
    pub(super) fn pulled(&self, object_id: u64, holder: u64, len: u64) -> Arc<ObjectCell> {
        // A borrowed copy already pulled here serves as well.
        let remote = lock(&self.refs)
            .borrowed(object_id)
            .and_then(|e| e.remote.upgrade());
        if let Some(data) = remote.as_ref().and_then(|r| r.local_copy()) {
            return Arc::new(ObjectCell::ready(
                ObjectId::from_u64(object_id),
                Ok(ObjectValue {
                    data,
                    nested: NestedRefs::default(),
                }),
            ));
        }
        drop(remote);
        let mut fetched = lock(&self.objects.fetched);
        if let Some(cell) = fetched.get(&object_id).and_then(Weak::upgrade) {
            return cell;
        }
        if fetched.len() >= self.objects.fetched_sweep_at.load(Ordering::Relaxed) {
            fetched.retain(|_, w| w.strong_count() > 0);
            self.objects
                .fetched_sweep_at
                .store((fetched.len() * 2).max(1024), Ordering::Relaxed);
        }
        let cell = Arc::new(ObjectCell::pending(ObjectId::from_u64(object_id), None));
        fetched.insert(object_id, Arc::downgrade(&cell));
        drop(fetched);
        self.pull_arg(object_id, holder, len, Arc::downgrade(&cell), 0);
        cell
    }

    /// Pulls task argument `object_id` from `holder` into `cell`. Lost with a holder that is
    /// not its owner, it is asked of its owner again (which rebuilds it: `lineage.rs`, step
    /// 3), a bounded number of times.
    fn pull_arg(&self, object_id: u64, holder: u64, len: u64, cell: Weak<ObjectCell>, asked: u32) {
        let me = self.me.get().cloned().unwrap_or_default();
        let wanted = Some(cell.clone());
        self.pull(
            holder,
            object_id,
            2,
            len,
            Box::new(move |r| {
                let owner = super::owner_of(object_id);
                if let Err(Error::ObjectLost { .. }) = &r
                    && asked < super::lineage::ASK_OWNER_AGAIN
                    && let Some(c) = me.upgrade()
                    && owner != c.index
                    && !c.placement.is_dead(owner)
                    && cell.strong_count() > 0
                {
                    // Off the I/O thread: the pause lets the owner see the death.
                    std::thread::spawn(move || {
                        std::thread::sleep(super::lineage::ASK_OWNER_PAUSE * (1 << asked));
                        c.pull_arg(object_id, owner, len, cell, asked + 1);
                    });
                    return;
                }
                if let Some(c) = cell.upgrade() {
                    c.complete(r.map(|data| ObjectValue {
                        data,
                        nested: NestedRefs::default(),
                    }));
                }
            }),
            wanted,
        );
    }

    /// The owner dropped a result we hold.
    pub(crate) fn free_remote(&self, holder: u64, object_id: u64) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        if holder == self.index {
            lock(&self.objects.held).remove(&object_id);
            return;
        }
        self.peers
            .send_queued(holder, Msg::FreeObject { object_id });
    }
}

/// What a [`RemoteObject`] stands for, and so what dropping it tells the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RemoteKind {
    /// A result `holder` computed for this process, its owner: FreeObject on drop.
    Held,
    /// A reference (or actor handle) owned by `holder` and deserialised here: RemoveBorrower
    /// on drop, once registered. `registrar` is the thread that registers it; `epoch`, the
    /// registration's in the reference counter.
    Borrowed {
        registrar: std::thread::ThreadId,
        epoch: u64,
    },
}

/// An object held by another worker process (or, borrowed, by its owner, which redirects a
/// pull to the actual holder): pulled into this process on first read. A borrow of an actor
/// handle is one too, under the actor's id, never read (`borrow.rs`, "Actor handles").
#[derive(Debug)]
pub(crate) struct RemoteObject {
    pub(crate) id: u64,
    /// The worker holding it; a held result's moves when it is rebuilt (`lineage.rs`).
    pub(super) holder: AtomicU64,
    pub(crate) len: u64,
    pub(super) kind: RemoteKind,
    /// Borrowed only: set once the owner acknowledged the registration (`true`) or it failed
    /// (`false`, and `local` holds the error).
    pub(super) registered: OnceLock<bool>,
    pub(super) local: OnceLock<Result<Payload, Error>>,
    pub(super) cluster: Weak<Cluster>,
    /// A rebuilt output's copy (`lineage.rs`, step 7): [`OWN`] if not one,
    /// [`ADOPTED`] (taken over by the original reference: dropping this one frees nothing) or
    /// [`SPARE`] (nobody adopted it: dropping it frees the copy and leaves the lineage).
    pub(super) adopted: AtomicU8,
}

/// [`RemoteObject::adopted`]: an object of its own.
pub(super) const OWN: u8 = 0;
/// [`RemoteObject::adopted`]: a copy the original reference took over.
const ADOPTED: u8 = 1;
/// [`RemoteObject::adopted`]: a copy nobody took over.
const SPARE: u8 = 2;

impl RemoteObject {
    /// A result `holder` keeps for this process (which owns it).
    pub(crate) fn new(id: u64, holder: u64, len: u64, cluster: Weak<Cluster>) -> Arc<Self> {
        Arc::new(RemoteObject {
            id,
            holder: AtomicU64::new(holder),
            len,
            kind: RemoteKind::Held,
            registered: OnceLock::new(),
            local: OnceLock::new(),
            cluster,
            adopted: AtomicU8::new(OWN),
        })
    }

    /// The worker holding it (or, borrowed, its owner).
    pub(crate) fn holder(&self) -> u64 {
        self.holder.load(Ordering::Acquire)
    }

    /// A rebuilt copy lives at `holder` now (`lineage.rs`, step 7).
    pub(super) fn set_holder(&self, holder: u64) {
        self.holder.store(holder, Ordering::Release);
    }

    /// A rebuild came back inline: its bytes are this object's local copy.
    pub(super) fn set_local(&self, data: Payload) {
        let _ = self.local.set(Ok(data));
    }

    /// Another reference took over this copy: dropping this one frees nothing.
    pub(super) fn mark_adopted(&self) {
        self.adopted.store(ADOPTED, Ordering::Release);
    }

    /// A rebuilt copy nobody took over: dropping it frees the copy, and only that.
    pub(super) fn mark_spare(&self) {
        self.adopted.store(SPARE, Ordering::Release);
    }

    /// A borrow's registration epoch (0 for a held result).
    pub(super) fn epoch(&self) -> u64 {
        match self.kind {
            RemoteKind::Borrowed { epoch, .. } => epoch,
            RemoteKind::Held => 0,
        }
    }

    /// The local copy, if it was already pulled.
    pub(crate) fn local_copy(&self) -> Option<Payload> {
        self.local.get().and_then(|r| r.as_ref().ok()).cloned()
    }

    /// The bytes, pulled from the holder on first call. A copy is kept for later reads; an
    /// object read in place in the holder's arena (`attach.rs`) is not: its pin holds the
    /// holder's primary in memory, so it lives only as long as this read's payload (and any
    /// view of it), leaving the holder free to spill it once nobody reads it. A later read
    /// pins it again (restored from disk if it was spilled).
    pub(crate) fn fetch(&self) -> Result<Payload, Error> {
        if let Some(r) = self.local.get() {
            return r.clone();
        }
        let r = match self.cluster.upgrade() {
            Some(c) => match c.fetched_copy(self.id) {
                Some(copy) => Ok(copy),
                // A lost result this process owns is rebuilt (`lineage.rs`).
                None => c.fetch_remote(self),
            },
            None => Err(Error::ShutDown),
        };
        if let Ok(Payload::Stored(s)) = &r
            && s.is_attached()
        {
            return r;
        }
        self.local.get_or_init(|| r).clone()
    }

    /// A borrow whose registration failed: every read returns `e`.
    pub(super) fn fail(&self, e: Error) {
        let _ = self.local.set(Err(e));
        let _ = self.registered.set(false);
    }
}

impl RemoteValue for RemoteObject {
    fn id(&self) -> u64 {
        self.id
    }

    fn holder(&self) -> u64 {
        RemoteObject::holder(self)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn fetch(&self) -> Result<Payload, Error> {
        RemoteObject::fetch(self)
    }

    fn local_copy(&self) -> Option<Payload> {
        RemoteObject::local_copy(self)
    }
}

impl Drop for RemoteObject {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.upgrade() {
            match self.kind {
                RemoteKind::Held => match self.adopted.load(Ordering::Acquire) {
                    ADOPTED => {}
                    SPARE => c.free_remote(self.holder(), self.id),
                    _ => {
                        c.lineage.forget(self.id);
                        c.free_remote(self.holder(), self.id);
                    }
                },
                RemoteKind::Borrowed { .. } => c.end_borrow(self),
            }
        }
    }
}
