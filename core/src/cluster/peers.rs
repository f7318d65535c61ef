//! The peers table: this process's connections to other workers, made on first use
//! (`Cluster::peer`, over shared memory on the same host), its raylet connection (a worker's),
//! and what it advertises for same-host connections.
//!
//! One lock over the table. A message queued through [`Peers::send_queued`] is queued under
//! it, so a message queued later through a connection taken from the table cannot overtake
//! it (the borrower protocol relies on it: a `RemoveBorrower` precedes a newer
//! `AddBorrowers`, `borrow.rs`).

use crate::sync::{Arc, Mutex, OnceLock};
use rustc_hash::FxHashMap as HashMap;
use std::path::{Path, PathBuf};

use super::peer::{Peer, PendingPeer};
use super::proto::Msg;
use crate::sync::lock;

/// This process's connections to other members.
pub(super) struct Peers {
    /// By worker index.
    table: Mutex<HashMap<u64, Arc<Peer>>>,
    /// A worker's connection to its raylet (set by `serve_as_worker`).
    raylet: OnceLock<Arc<Peer>>,
    /// Our shared-memory listener's (abstract) socket.
    shm_path: Option<PathBuf>,
    /// This host and network namespace (`host_id`).
    host_id: String,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("connected", &lock(&self.table).len())
            .field("shm_path", &self.shm_path)
            .finish_non_exhaustive()
    }
}

impl Peers {
    pub(super) fn new(shm_path: Option<PathBuf>, host_id: String) -> Peers {
        Peers {
            table: Mutex::new(HashMap::default()),
            raylet: OnceLock::new(),
            shm_path,
            host_id,
        }
    }

    /// The live connection to worker `index`, or a new one made by `make` (a pending peer
    /// and what completes it), put in the table under the same lock: one connection per
    /// worker even when threads race.
    pub(super) fn live_or_insert(
        &self,
        index: u64,
        make: impl FnOnce() -> (Arc<Peer>, PendingPeer),
    ) -> (Arc<Peer>, Option<PendingPeer>) {
        let mut table = lock(&self.table);
        if let Some(p) = table.get(&index)
            && !p.is_closed()
        {
            return (p.clone(), None);
        }
        let (peer, pending) = make();
        table.insert(index, peer.clone());
        (peer, Some(pending))
    }

    /// An accepted connection from worker `index`: remembered unless one is already.
    pub(super) fn adopt(&self, index: u64, peer: Arc<Peer>) {
        lock(&self.table).entry(index).or_insert(peer);
    }

    /// Queues `msg` to worker `index` if it is connected (under the table's lock).
    pub(super) fn send_queued(&self, index: u64, msg: Msg) {
        if let Some(p) = lock(&self.table).get(&index) {
            p.send_queued(msg);
        }
    }

    /// Takes worker `index`'s connection out of the table.
    pub(super) fn remove(&self, index: u64) -> Option<Arc<Peer>> {
        lock(&self.table).remove(&index)
    }

    /// Takes worker `index`'s connection out of the table if it is `peer`; returns whether
    /// it was (a connection that merely calls itself `w<index>` changes nothing).
    pub(super) fn remove_if(&self, index: u64, peer: &Arc<Peer>) -> bool {
        let mut table = lock(&self.table);
        let is = table.get(&index).is_some_and(|p| Arc::ptr_eq(p, peer));
        if is {
            table.remove(&index);
        }
        is
    }

    /// Closes every connection (the process leaves).
    pub(super) fn close_all(&self) {
        let all: Vec<Arc<Peer>> = lock(&self.table).drain().map(|(_, p)| p).collect();
        for p in all {
            p.shutdown("shutdown");
        }
    }

    /// A worker's raylet connection, once `serve_as_worker` made it.
    pub(super) fn raylet(&self) -> Option<&Arc<Peer>> {
        self.raylet.get()
    }

    pub(super) fn set_raylet(&self, peer: Arc<Peer>) {
        let _ = self.raylet.set(peer);
    }

    /// Our shared-memory listener's socket, if we have one.
    pub(super) fn shm_path(&self) -> Option<&Path> {
        self.shm_path.as_deref()
    }

    /// This host and network namespace.
    pub(super) fn host_id(&self) -> &str {
        &self.host_id
    }
}
