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

use crate::sync::{Arc, Mutex};
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
        Ok(Arc::new(Gcs {
            tables: Mutex::new(tables),
            store: Mutex::new(store.map(|s| (s, false))),
            stop: tokio::sync::Notify::new(),
        }))
    }

    /// The port of the address the restored tables were served on (`None`: not restored).
    pub(crate) fn saved_port(&self) -> Option<u16> {
        let t = lock(&self.tables);
        t.address()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
    }

    /// Records the address the GCS serves on (saved with the tables).
    pub(crate) fn set_address(&self, address: String) {
        let mut t = lock(&self.tables);
        t.set_address(address);
        self.save(&mut t);
    }

    /// Saves the tables if they changed (under the tables' lock: before any answer goes).
    fn save(&self, tables: &mut GcsTables<Arc<Peer>>) {
        let changes = tables.take_changes();
        if changes.is_empty() {
            return;
        }
        let mut store = lock(&self.store);
        let Some((store, failing)) = store.as_mut() else {
            return;
        };
        let saved = if store.needs_rewrite() {
            store.rewrite(&tables.snapshot())
        } else {
            store.append(&changes)
        };
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
    }

    /// Feeds `event` to the tables and does what they return (on the I/O runtime).
    fn run(self: &Arc<Self>, event: Event<Arc<Peer>>) {
        let mut tables = lock(&self.tables);
        let outs = tables.handle(Instant::now(), event);
        self.save(&mut tables);
        self.act(outs);
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
                    tokio::spawn(async move {
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
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        me.run(event);
                    });
                }
                Out::StopRequested => self.stop.notify_one(),
            }
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
        self.act(outs);
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
