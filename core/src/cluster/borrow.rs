//! Borrowers (Ray's distributed reference counting): references deserialised here that other
//! processes own, their registration with those owners, and the owner's table of what it lent.
//!
//! # The protocol
//!
//! The process whose worker index is in an object's id owns it. Another process that
//! deserialises a reference to it is a *borrower*; the object lives while its owner's handles
//! or any borrower's handles live, and is freed (locally, or `FreeObject` to the worker that
//! holds it) when the last of them goes.
//!
//! The state of the protocol — the tables `borrowed` and `lent` below — is the
//! [`ReferenceCounter`] (`reference_counter.rs`), a state machine without I/O; the methods
//! here feed it what happens and send the messages it returns.
//!
//! 1. Deserialising a foreign-owned id ([`Cluster::borrow`]) hands out the process's one live
//!    cell for it (table `borrowed`), or makes one: already complete, its value a lazy
//!    [`RemoteObject`] pointing at the owner, pulled on first read (the owner redirects the
//!    pull to the worker holding the bytes). Deserialising pulls nothing.
//! 2. A new borrowed `RemoteObject` is the process's registration: it is noted in the
//!    decoding thread's decode scope (`crate::remote::DecodeScope`, one per `codec::decode`). A cell found whose
//!    registration another thread still has in flight is noted too, to wait for.
//! 3. When the scope ends, before the decoded value is returned, the thread sends one
//!    `AddBorrowers{objects}` per owner for the borrows it made and waits for every
//!    `BorrowersAdded` (with `call_timeout()`), then waits for the registrations of other
//!    threads it found in flight. An object the owner does not know, or an owner that does
//!    not answer, fails the borrow: its reads return the error.
//! 4. The owner ([`Cluster::add_borrowers`]) keeps a strong handle on each object in `lent`
//!    with the set of borrowing workers, so dropping its own handles no longer frees it.
//! 5. When the borrowed `RemoteObject` drops (the last cell and value here holding it), the
//!    borrower sends `RemoveBorrower` (queued, batched by the writer) — only if it is still
//!    the registration in `borrowed` (each registration has an epoch) and was acknowledged.
//!    The owner removes the borrower and drops its handle when the set is empty. A
//!    borrower's death (`worker_lost`) removes it from every set; an owner's death fails its
//!    borrowers' reads, and frees the results other workers hold for it.
//!
//! Why it is safe: a reference crosses processes only inside something its sender keeps
//! alive until the receiver is done with it — task arguments (the owner's `InFlight` holds
//! them until `TaskDone`), values nested in a stored object (the object holds them), or a
//! result (the executor holds every result with nested references until its owner frees it,
//! however small). The receiver deserialises on a user thread or a slot, and step 3 completes
//! before the value is handed over, so before the receiving task can finish and before its
//! `TaskDone` (or its free of the container) can reach the sender: by the time the sender may
//! drop its own handle, the owner has already counted the receiver. Step 5's sends are made
//! under the reference counter's lock, so a later registration of the same object by this
//! process always reaches the owner after the RemoveBorrower of an earlier one.
//!
//! # Actor handles
//!
//! An actor is owned by the process that created it, and an actor handle is a reference like
//! any other: deserialising one whose actor another process owns ([`Cluster::borrow_actor`])
//! gives the handle this process's registration, a borrowed `RemoteObject` under the actor's
//! id with no cell and nothing to pull (actor and object ids come from one counter per owner,
//! so an id names one or the other). Steps 2, 3 and 5 are the same; in step 4 the owner's
//! `lent` entry holds the actor's cell there (its proxy), so the actor outlives the owner's
//! own handles; each actor call in flight holds the cell too, and a borrower's call its
//! registration. When that cell drops — the owner's handles, its containers, every borrower
//! and every call in flight gone — it sends `ReleaseActor` to the host, which lets the calls
//! already submitted finish, then the actor goes (Ray's out of scope; `manta::kill` is
//! `KillActor`, at once), and records the death in the GCS's directory. The argument above carries over: a serialised handle is held by the container it
//! travels in (`codec::Nested::Actor` holds the whole handle, registration included). The host
//! deserialising a handle of an actor it runs is a borrower too. A named actor ends the same
//! way (Ray's rule); a detached one is held by the owner's name table until it is killed, so
//! borrows never decide its end. A handle `get_actor` returns in a process other than the
//! owner is a borrow registered the same way (`RuntimeInner::actor_borrow`), before it is
//! returned.

use crate::sync::Ordering;
use crate::sync::{Arc, AtomicU64, OnceLock, Weak};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::object_manager::{RemoteKind, RemoteObject};
use super::peer::Peer;
use super::proto::Msg;
use super::reference_counter::{Answer, BorrowHandle, Out, ReferenceCounter};
use super::worker::{Cluster, IO_THREAD};
use super::{call_timeout, cluster_error, owner_of, wait_reply};
use crate::actor::ActorCell;
use crate::error::Error;
use crate::id::{ActorId, ObjectId};
use crate::object::{ObjectCell, ObjectValue};
use crate::sync::lock;

impl Cluster {
    /// A reference to an object owned elsewhere was deserialised here: a cell that is already
    /// complete with a lazy payload pointing at the owner (the bytes are pulled on first read),
    /// shared with every other handle on it in this process. A new borrow is registered with
    /// the owner before the deserialisation that made it returns (steps 1–3 of "Borrowers").
    pub(crate) fn borrow(&self, id: ObjectId) -> Arc<ObjectCell> {
        let object_id = id.as_u64();
        let mut refs = lock(&self.refs);
        // Every handle taken under the lock is returned or kept past it: dropping the last
        // handle on a `RemoteObject` takes this lock (`end_borrow`).
        let remote = refs.borrowed(object_id).and_then(|e| e.remote.upgrade());
        let (cell, remote, mine) = match remote {
            Some(remote) => {
                let live = refs.borrowed(object_id).and_then(|e| e.cell.upgrade());
                let cell = live.unwrap_or_else(|| {
                    let cell = lazy_cell(object_id, &remote);
                    if let Some(e) = refs.borrowed_mut(object_id) {
                        e.cell = Arc::downgrade(&cell);
                    }
                    cell
                });
                (cell, remote, false)
            }
            None => {
                let remote = self.new_borrow(&mut refs, object_id);
                let cell = lazy_cell(object_id, &remote);
                if let Some(e) = refs.borrowed_mut(object_id) {
                    e.cell = Arc::downgrade(&cell);
                }
                (cell, remote, true)
            }
        };
        drop(refs);
        if remote.registered.get().is_none() {
            note_borrow(&remote, mine);
        }
        cell
    }

    /// A handle to actor `id`, owned elsewhere, was deserialised here: this process's one
    /// registration as a borrower of the actor, shared by every handle on it here (each
    /// [`RawActorHandle`](crate::actor::RawActorHandle) holds it). It is made, noted and
    /// registered as an object's borrow is (steps 1–3; actor and object ids come from one
    /// counter per owner, so an id names one or the other) and ends the same way (step 5).
    /// Calls do not depend on it: they go to the actor's host through its proxy cell.
    pub(crate) fn borrow_actor(&self, id: ActorId) -> Arc<RemoteObject> {
        let actor_id = id.as_u64();
        let mut refs = lock(&self.refs);
        let found = refs.borrowed(actor_id).and_then(|e| e.remote.upgrade());
        let (remote, mine) = match found {
            Some(remote) => (remote, false),
            None => (self.new_borrow(&mut refs, actor_id), true),
        };
        drop(refs);
        if remote.registered.get().is_none() {
            note_borrow(&remote, mine);
        }
        remote
    }

    /// A new registration for `id` in `borrowed`, with no cell yet.
    fn new_borrow(&self, refs: &mut References, id: u64) -> Arc<RemoteObject> {
        refs.begin_borrow(id, |epoch| {
            let remote = Arc::new(RemoteObject {
                id,
                holder: AtomicU64::new(owner_of(id)),
                len: 0,
                kind: RemoteKind::Borrowed {
                    registrar: std::thread::current().id(),
                    epoch,
                },
                registered: OnceLock::new(),
                local: OnceLock::new(),
                cluster: self.me.get().cloned().unwrap_or_default(),
                adopted: crate::sync::AtomicU8::new(super::object_manager::OWN),
            });
            let entry = BorrowEntry {
                cell: Weak::new(),
                remote: Arc::downgrade(&remote),
            };
            (entry, remote)
        })
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
            let borrows: Vec<(u64, u64)> = remotes.iter().map(|r| (r.id, r.epoch())).collect();
            let send = lock(&self.refs).register(owner, &borrows);
            let Some(Out::AddBorrowers { owner, objects }) = send else {
                // Owned here, or by no process: registered at once.
                for r in remotes {
                    let _ = r.registered.set(true);
                }
                continue;
            };
            let peer = self.peer(owner);
            let rx = peer.request(|request_id| Msg::AddBorrowers {
                request_id,
                objects,
            });
            if on_io {
                tracing::debug!(
                    owner,
                    "borrow registered from an I/O thread without waiting"
                );
                lock(&self.refs).registered(&borrows, Answer::Added { missing: &[] });
                for r in remotes {
                    let _ = r.registered.set(true);
                }
                continue;
            }
            waiting.push((owner, remotes, borrows, rx));
        }
        for (owner, remotes, borrows, rx) in waiting {
            let unreachable = |e: &dyn std::fmt::Display| {
                cluster_error(
                    format!("worker process {owner} (the object's owner)"),
                    format!("it died or became unreachable ({e})"),
                )
            };
            let e = match wait_reply(rx, call_timeout(), "registering as a borrower") {
                Ok(Msg::BorrowersAdded { missing, .. }) => {
                    let answer = Answer::Added { missing: &missing };
                    let acked = lock(&self.refs).registered(&borrows, answer);
                    for (r, ok) in remotes.iter().zip(acked) {
                        if ok {
                            let _ = r.registered.set(true);
                        } else {
                            r.fail(Error::ObjectFreed {
                                object: ObjectId::from_u64(r.id),
                            });
                        }
                    }
                    continue;
                }
                Ok(other) => unreachable(&format!("unexpected reply {}", other.name())),
                Err(e) => unreachable(&e),
            };
            lock(&self.refs).registered(&borrows, Answer::Unreachable);
            for r in remotes {
                r.fail(e.clone());
            }
        }
    }

    /// The last handle here on borrowed object `r` dropped: tell its owner (step 5).
    pub(super) fn end_borrow(&self, r: &RemoteObject) {
        let mut refs = lock(&self.refs);
        // (A registration a newer one replaced sends nothing: the newer one does.)
        let send = refs.end_borrow(r.id, r.epoch());
        let Some(Out::RemoveBorrower { owner, object_id }) = send else {
            return;
        };
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // Sent under the lock: a newer borrow's AddBorrowers can only follow it.
        self.peers
            .send_queued(owner, Msg::RemoveBorrower { object_id });
        drop(refs);
    }

    // ----- lending (the owner's side of borrowing) ----------------------------------------

    /// AddBorrowers from `peer`: keeps each object it names (owned here) alive until that
    /// worker removes itself or dies; answers which it does not know (step 4).
    pub(super) fn add_borrowers(&self, peer: &Arc<Peer>, request_id: u64, objects: Vec<u64>) {
        let rt = self.runtime();
        let borrower = peer_index(peer).filter(|_| rt.is_some());
        if borrower.is_none() {
            tracing::debug!(peer = %peer.name, "AddBorrowers from a connection that is no worker: ignored");
        }
        // An id names an object or an actor (one counter per owner).
        let lookup = |id: u64| {
            let rt = rt.as_ref()?;
            rt.lookup_escaped(ObjectId::from_u64(id))
                .map(Loan::Object)
                .or_else(|| rt.owned_actor(ActorId::from_u64(id)).map(Loan::Actor))
        };
        let missing = lock(&self.refs).add_borrowers(borrower, objects, lookup);
        peer.send(Msg::BorrowersAdded {
            request_id,
            missing,
        });
    }

    /// RemoveBorrower from `peer`: it dropped its last handle on `object_id`.
    pub(super) fn remove_borrower(&self, peer: &Arc<Peer>, object_id: u64) {
        let Some(b) = peer_index(peer) else {
            tracing::debug!(peer = %peer.name, "RemoveBorrower from a connection that is no worker: ignored");
            return;
        };
        let freed = lock(&self.refs).remove_borrower(b, object_id);
        // Dropped outside the lock: freeing may send FreeObject or end borrows of nested refs.
        drop(freed);
    }

    /// Worker `index` died: it borrows nothing any more.
    pub(super) fn drop_borrower(&self, index: u64) {
        let freed = lock(&self.refs).borrower_died(index);
        drop(freed);
    }
}

/// The reference counter of a cluster process: borrowed entries hold weak pointers to the
/// registration and its cell; loans hold the object or actor.
pub(crate) type References = ReferenceCounter<BorrowEntry, Loan>;

/// A borrowed object's entry in the reference counter.
#[derive(Debug)]
pub(crate) struct BorrowEntry {
    /// The cell handed to deserialisers (re-made around `remote` if it died first).
    pub(super) cell: Weak<ObjectCell>,
    /// The registration: its drop ends the borrow.
    pub(super) remote: Weak<RemoteObject>,
}

impl BorrowHandle for BorrowEntry {
    fn is_live(&self) -> bool {
        self.remote.strong_count() > 0
    }
}

/// What a loan keeps alive: dropping the last strong handle on an object frees it; on an
/// actor's cell, kills the actor (`ActorCell`'s drop, unless it is detached).
#[derive(Debug)]
pub(crate) enum Loan {
    Object(Arc<ObjectCell>),
    Actor(Arc<ActorCell>),
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
    /// The borrows of the decodes under way on this thread; the innermost decode's are those
    /// past the count at its start (the decodes and that count: `crate::remote::DecodeScope`).
    static NOTED: RefCell<Vec<Noted>> = const { RefCell::new(Vec::new()) };
}

/// Defers `remote`'s registration to the end of the current decode, or registers it now.
fn note_borrow(remote: &Arc<RemoteObject>, mine: bool) {
    let noted = (Arc::downgrade(remote), mine);
    let deferred = crate::remote::decoding()
        && NOTED.with(|n| match n.try_borrow_mut() {
            Ok(mut v) => {
                v.push(noted.clone());
                crate::remote::set_noted(v.len());
                true
            }
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
            mine.entry(r.holder()).or_default().push(r);
        } else if !matches!(r.kind, RemoteKind::Borrowed { registrar, .. } if registrar == me) {
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

/// A decode that began with `start` borrows noted on this thread ended with more: registers
/// those past `start` with their owners (the runtime's `DecodeScope` calls this through the
/// borrow hook, before the decoded value reaches its reader).
pub(super) fn finish_decode(start: usize) {
    let noted = NOTED.with(|n| match n.try_borrow_mut() {
        Ok(mut v) if v.len() > start => v.split_off(start),
        _ => Vec::new(),
    });
    if !noted.is_empty() {
        finish_borrows(noted);
    }
}
