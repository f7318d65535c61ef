//! The GCS (head) as a process sees it: the shell around its tables. The tables and their
//! protocol — node table with health checks, worker and job tables, the actor directory with
//! named actors, a key-value store, placement groups, pub/sub of node and job events — are
//! `gcs_tables.rs`, a state machine without I/O. Here each connection's messages and closes,
//! a tick every second, the raylets' answers to placement prepares and the timers it asks for
//! become its events, and what it returns is sent.
//!
//! All state sits behind one mutex, and what an event returns is sent under it, so every
//! connection sees the GCS's messages in the order of its state changes. The GCS handles
//! registrations and lookups, never the per-task path, so contention is not a concern.
//!
//! With a session directory (`manta start --head`), an event that changed what is saved
//! saves the tables there (`gcs_store.rs`) before its answers are sent, and a GCS started on
//! a session that has saved tables restores them and serves on the port it had.
//!
//! With `gcs_sync`, the saves are also synced to the disk before their answers go, as a
//! group commit: an event's save is written under the lock, and its answers wait in a queue
//! ([`Unsynced`]) for a thread of its own (the syncer) to sync the journal; one sync covers
//! every save written before it, so while one runs the I/O thread goes on handling events
//! and their saves share the next. Answers leave the queue in the order of their events, and
//! an event that saved nothing answers at once only when nothing waits before it: every
//! connection still sees the GCS's messages in the order of its state changes. A queued
//! answer always waits for a sync still to come; an event whose save the syncer already
//! synced (between the save and its answer) answers at once like one that saved nothing.

use crate::sync::{Arc, Mutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::gcs_store::GcsStore;
use super::gcs_tables::{Event, GcsTables, Out};
use super::peer::{Handler, Peer};
use super::pg;
use super::proto::{Msg, PgOp};
use crate::sync::lock;

pub(crate) use super::gcs_tables::DECLARED_DEAD;

/// The GCS's state and message handling.
pub(crate) struct Gcs {
    tables: Mutex<GcsTables<Arc<Peer>>>,
    /// Where the tables are saved (`None`: nowhere), and whether the last save failed.
    store: Mutex<Option<(GcsStore, bool)>>,
    /// Set when `manta stop` asked the cluster to stop.
    pub(crate) stop: tokio::sync::Notify,
    /// Answers waiting for their saves to be synced (`None`: saves are not synced).
    unsynced: Option<Unsynced>,
    /// The I/O runtime, on which the syncer sends the answers.
    io: crate::sync::OnceLock<tokio::runtime::Handle>,
}

/// The group commit's state (module doc).
struct Unsynced {
    queue: Mutex<Queue>,
    /// Wakes the syncer: a save was written.
    wake: crate::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    /// Answers in the order of their events, each with the save it waits for.
    answers: VecDeque<(u64, Vec<Out<Arc<Peer>>>)>,
    /// Saves written, and synced.
    written: u64,
    synced: u64,
    /// The journal to sync (a handle on the file last written).
    file: Option<std::fs::File>,
    /// The GCS is gone: the syncer ends.
    closed: bool,
}

impl std::fmt::Debug for Gcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gcs")
    }
}

impl Gcs {
    /// A GCS; with `store`, its tables restored from what was saved there, if anything was.
    pub(crate) fn new(
        node_timeout: Duration,
        store: Option<GcsStore>,
    ) -> Result<Arc<Gcs>, crate::error::Error> {
        let what = "restoring the GCS's saved tables";
        let tables = match store.as_ref().map(GcsStore::load).transpose() {
            Ok(Some(Some(records))) => {
                let t = GcsTables::restore(node_timeout, records, Instant::now())
                    .map_err(|e| super::cluster_error(what, e))?;
                tracing::info!(
                    address = t.address(),
                    "GCS tables restored: members may rejoin"
                );
                t
            }
            Ok(_) => GcsTables::new(node_timeout),
            Err(e) => return Err(super::cluster_error(what, e.to_string())),
        };
        let mut tables = tables;
        tables.set_saves(store.is_some());
        let mut store = store;
        let synced = store.as_mut().is_some_and(GcsStore::defer_append_sync);
        let gcs = Arc::new(Gcs {
            tables: Mutex::new(tables),
            store: Mutex::new(store.map(|s| (s, false))),
            stop: tokio::sync::Notify::new(),
            unsynced: synced.then(|| Unsynced {
                queue: Mutex::new(Queue::default()),
                wake: crate::sync::Condvar::new(),
            }),
            io: crate::sync::OnceLock::new(),
        });
        if synced {
            let me = Arc::downgrade(&gcs);
            std::thread::Builder::new()
                .name("manta-gcs-sync".into())
                .spawn(move || syncer(&me))
                .map_err(|e| super::cluster_error("starting the GCS's syncer", e.to_string()))?;
        }
        Ok(gcs)
    }

    /// The port of the address the restored tables were served on (`None`: not restored).
    pub(crate) fn saved_port(&self) -> Option<u16> {
        let t = lock(&self.tables);
        t.address()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
    }

    /// Records the address the GCS serves on (saved with the tables).
    pub(crate) fn set_address(self: &Arc<Self>, address: String) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let _ = self.io.set(h);
        }
        let mut t = lock(&self.tables);
        t.set_address(address);
        let saved = self.save(&mut t);
        self.answer(saved, Vec::new());
    }

    /// Saves the tables if they changed (under the tables' lock: before any answer goes).
    /// Whether a save was written that is yet to be synced (the group commit's).
    fn save(&self, tables: &mut GcsTables<Arc<Peer>>) -> bool {
        let changes = tables.take_changes();
        if changes.is_empty() {
            return false;
        }
        let mut store = lock(&self.store);
        let Some((store, failing)) = store.as_mut() else {
            return false;
        };
        let saved = if store.needs_rewrite() {
            store.rewrite(&tables.snapshot())
        } else {
            store.append(&changes)
        };
        if saved.is_ok()
            && let Some(u) = &self.unsynced
        {
            let mut q = lock(&u.queue);
            q.written += 1;
            q.file = store.sync_handle();
        }
        let wrote = saved.is_ok() && self.unsynced.is_some();
        match saved {
            Ok(()) if *failing => {
                *failing = false;
                tracing::info!(path = %store.path().display(), "GCS tables saved again");
            }
            Ok(()) => {}
            Err(e) if !*failing => {
                // Logged once per streak: the GCS serves on, but a restart would lose what
                // changed meanwhile.
                *failing = true;
                tracing::error!(path = %store.path().display(), error = %e, "cannot save the GCS tables");
            }
            Err(_) => {}
        }
        wrote
    }

    /// Feeds `event` to the tables and does what they return (on the I/O runtime).
    fn run(self: &Arc<Self>, event: Event<Arc<Peer>>) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let _ = self.io.set(h);
        }
        let mut tables = lock(&self.tables);
        let outs = tables.handle(Instant::now(), event);
        let saved = self.save(&mut tables);
        self.answer(saved, outs);
    }

    /// Does `outs` (under the tables' lock): at once, unless answers wait to be synced before
    /// them or `saved` (a save of theirs was written and is not synced yet), when they queue
    /// behind those for the syncer (module doc).
    fn answer(self: &Arc<Self>, saved: bool, outs: Vec<Out<Arc<Peer>>>) {
        let Some(u) = &self.unsynced else {
            return self.act(outs);
        };
        let mut q = lock(&u.queue);
        let after = q.written;
        // Every queued answer waits for a sync still to come (`after > synced`): the syncer
        // sends all those a sync covers as it records it. So a save the syncer already
        // synced (it took the lock between `save` and here) has nothing left to wait for;
        // queued, its answers would wait for the next save, which may never come.
        if (!saved || after <= q.synced) && q.answers.is_empty() {
            // In order: nothing waits before them (the lock keeps it so while they go).
            self.act(outs);
            return;
        }
        if !outs.is_empty() {
            q.answers.push_back((after, outs));
        }
        if saved {
            u.wake.notify_one();
        }
    }

    fn act(self: &Arc<Self>, outs: Vec<Out<Arc<Peer>>>) {
        for out in outs {
            match out {
                Out::Send(peer, msg) => peer.send(msg),
                Out::Prepare {
                    to,
                    pg_id,
                    node_id,
                    row,
                } => {
                    let rx = to.request(move |id| pg::msg(PgOp::Prepare, id, row, ""));
                    let me = self.clone();
                    self.spawn(async move {
                        let error = match tokio::time::timeout(pg::PREPARE_TIMEOUT, rx).await {
                            Ok(Ok(Ok(Msg::Pg { error, group, .. }))) if error.is_empty() => {
                                // The CPU sets and GPUs the raylet gave the bundles, first.
                                if group.bundles.iter().any(|b| {
                                    !b.cpus.is_empty()
                                        || !b.gpus.is_empty()
                                        || !b.cpu_note.is_empty()
                                }) {
                                    me.run(Event::BundleCpus {
                                        pg_id,
                                        bundles: group.bundles,
                                    });
                                }
                                None
                            }
                            Ok(Ok(Ok(Msg::Pg { error, .. }))) => Some(error),
                            Ok(Ok(Ok(other))) => {
                                Some(format!("unexpected answer {}", other.name()))
                            }
                            Ok(Ok(Err(e))) => Some(e.to_string()),
                            Ok(Err(_)) => Some("its connection closed".into()),
                            Err(_) => Some(format!("no answer within {:?}", pg::PREPARE_TIMEOUT)),
                        };
                        me.run(Event::Prepared {
                            pg_id,
                            node_id,
                            error,
                        });
                    });
                }
                Out::Later(after, event) => {
                    let me = self.clone();
                    self.spawn(async move {
                        tokio::time::sleep(after).await;
                        me.run(event);
                    });
                }
                Out::StopRequested => self.stop.notify_one(),
            }
        }
    }

    /// Runs `f` on the I/O runtime (from it, or from the syncer).
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.io.get().cloned())
        {
            Some(h) => drop(h.spawn(f)),
            None => tracing::error!("the GCS has no I/O runtime to run a timer on"),
        }
    }

    /// Declares silent nodes dead (called every second).
    pub(crate) fn check_health(self: &Arc<Self>) {
        self.run(Event::Tick);
    }

    /// Tells every live node to stop.
    pub(crate) fn stop_all(self: &Arc<Self>, reason: &str) {
        let tables = lock(&self.tables);
        let outs = tables.stop_all(reason);
        self.answer(false, outs);
    }
}

impl Drop for Gcs {
    fn drop(&mut self) {
        if let Some(u) = &self.unsynced {
            lock(&u.queue).closed = true;
            u.wake.notify_one();
        }
    }
}

/// The syncer (module doc): syncs the journal whenever saves were written since the last
/// sync, then sends the answers that waited for them, in order. Ends with the GCS.
fn syncer(gcs: &crate::sync::Weak<Gcs>) {
    loop {
        let Some(g) = gcs.upgrade() else { return };
        let Some(u) = &g.unsynced else { return };
        let (target, file) = {
            let mut q = lock(&u.queue);
            while q.written == q.synced && !q.closed {
                // Bounded: the GCS's end is seen within a second even without a wake-up.
                q = u
                    .wake
                    .wait_timeout(q, Duration::from_secs(1))
                    .map_or_else(|e| e.into_inner().0, |(q, _)| q);
                if Arc::strong_count(&g) == 1 {
                    return;
                }
            }
            if q.closed {
                return;
            }
            (q.written, q.file.as_ref().and_then(|f| f.try_clone().ok()))
        };
        // Outside every lock: events go on being handled and saved meanwhile.
        let synced = file.map(|f| f.sync_data());
        if let Some(Err(e)) = &synced {
            tracing::error!(error = %e, "cannot sync the GCS tables to the disk");
        }
        let _guard = g.io.get().map(tokio::runtime::Handle::enter);
        let mut q = lock(&u.queue);
        q.synced = target;
        while q.answers.front().is_some_and(|(after, _)| *after <= target) {
            if let Some((_, outs)) = q.answers.pop_front() {
                g.act(outs);
            }
        }
    }
}

/// The GCS's connection handler.
pub(crate) struct GcsHandler(pub(crate) Arc<Gcs>);

impl Handler for GcsHandler {
    fn on_message(self: Arc<Self>, peer: &Arc<Peer>, msg: Msg) {
        self.0.run(Event::Message(peer.clone(), msg));
    }
    fn on_close(self: Arc<Self>, peer: &Arc<Peer>, _reason: &str) {
        self.0.run(Event::Closed(peer.clone()));
    }
}
