//! A worker's or driver's connection to the GCS, which outlives a restart of the head.
//!
//! 1. Joining registers on a first connection (`worker.rs`). When the GCS answered that it
//!    saves its tables (`Registered.saved`: a head with a session directory), the link then
//!    knows how to register again: a `RejoinWorker` with the process's index, job, node and
//!    addresses. Otherwise a GCS lost is lost for good, as it cannot come back.
//! 2. When that connection closes (not by [`GcsLink::shutdown`]), the link rejoins in the
//!    background: it connects again every `backoff` (20 ms, doubling to 500 ms), sends
//!    `RejoinWorker` and, once the GCS answered `Registered`, makes that connection the
//!    current one, subscribes to node and job events again, and sends what was held. Then it
//!    reads the node table and hands every dead node to the process as a `NodeEvent`: a node
//!    that died while the process was away was published before it subscribed again (as
//!    Ray's subscribers re-read the node table when they resubscribe). The simulated cluster
//!    (`sim.rs`) checks this over seeds.
//! 3. A restarted GCS that does not know the process (its tables were not saved, or it gave
//!    the process up) answers with an error: the link has failed, for good. So it has when
//!    `gcs_reconnect_timeout` passed without an answer.
//! 4. A request made through the link ([`GcsLink::request`]) whose connection closes before
//!    its reply is asked again on the next connection, once the link rejoined; its reply
//!    goes to the original receiver, so callers wait as before, within their own timeout.
//!    A message sent while the link is down is held (up to [`MAX_HELD`]) and sent after the
//!    rejoin, in order. A failed link fails every request with why.
//!
//! The requests the GCS answers are idempotent when asked again after a restart (a
//! registration of the same actor, a lookup, a placement group created under the same id),
//! but a `KvPut` asked again answers the value it wrote the first time as the previous one.

use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::peer::{Handler, Peer};
use super::proto::Msg;
use super::{call_timeout, cluster_error};
use crate::error::Error;
use crate::sync::lock;

/// Messages held while the link is down; beyond that they are dropped (and logged).
pub(crate) const MAX_HELD: usize = 10_000;

/// The state of the link.
enum State {
    Up,
    /// Rejoining since then; messages sent meanwhile.
    Down(Instant, Vec<Msg>),
    /// Failed for good (why), or shut down.
    Failed(String),
}

/// A member's link to the GCS (module doc).
pub(crate) struct GcsLink {
    peer: Mutex<Arc<Peer>>,
    state: Mutex<State>,
    address: String,
    token: String,
    /// The name this process gives itself in handshakes.
    name: String,
    handler: Arc<dyn Handler>,
    io: tokio::runtime::Handle,
    /// What registers this process again (`RejoinWorker`), once it registered.
    rejoin: Mutex<Option<Msg>>,
    /// Placement groups this process follows through handles (`PgWatch`): watched again
    /// after a rejoin, since a restarted GCS does not keep its watchers.
    watched_groups: Mutex<std::collections::BTreeSet<u64>>,
    shut: AtomicBool,
}

impl std::fmt::Debug for GcsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsLink")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl GcsLink {
    /// The link over `peer`, the first connection to the GCS at `address`.
    pub(crate) fn new(
        peer: Arc<Peer>,
        address: String,
        token: String,
        name: String,
        handler: Arc<dyn Handler>,
        io: tokio::runtime::Handle,
    ) -> Arc<GcsLink> {
        Arc::new(GcsLink {
            peer: Mutex::new(peer),
            state: Mutex::new(State::Up),
            address,
            token,
            name,
            handler,
            io,
            rejoin: Mutex::new(None),
            watched_groups: Mutex::new(Default::default()),
            shut: AtomicBool::new(false),
        })
    }

    /// Notes that this process follows group `pg_id` (`true`) or no longer does (`false`).
    pub(crate) fn note_watch(&self, pg_id: u64, watching: bool) {
        let mut watched = lock(&self.watched_groups);
        if watching {
            watched.insert(pg_id);
        } else {
            watched.remove(&pg_id);
        }
    }

    /// Step 1: how this process registers again (a `RejoinWorker`).
    pub(crate) fn set_rejoin(&self, msg: Msg) {
        *lock(&self.rejoin) = Some(msg);
    }

    fn current(&self) -> Arc<Peer> {
        lock(&self.peer).clone()
    }

    /// Whether `peer` is the link's current connection.
    pub(crate) fn is(&self, peer: &Arc<Peer>) -> bool {
        Arc::ptr_eq(&lock(&self.peer), peer)
    }

    /// Whether the link failed for good or was shut down (a rejoin under way is not closed).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*lock(&self.state), State::Failed(_))
    }

    /// Sends `msg`, or holds it while the link is down (step 4).
    pub(crate) fn send(&self, msg: Msg) {
        let mut state = lock(&self.state);
        match &mut *state {
            State::Up => self.current().send(msg),
            State::Down(_, held) if held.len() < MAX_HELD => held.push(msg),
            State::Down(..) => {
                tracing::warn!(message = msg.name(), "GCS link down: a message was dropped");
            }
            State::Failed(_) => {}
        }
    }

    /// Sends the request `make(request_id)` and returns the receiver of its reply, asked
    /// again after a rejoin if the connection closes first (step 4).
    pub(crate) fn request(
        self: &Arc<Self>,
        make: impl FnOnce(u64) -> Msg,
    ) -> oneshot::Receiver<Result<Msg, Error>> {
        let template = make(0);
        let (tx, rx) = oneshot::channel();
        if let State::Failed(why) = &*lock(&self.state) {
            let _ = tx.send(Err(cluster_error("a request to the GCS", why.clone())));
            return rx;
        }
        let mut peer = self.current();
        let m = template.clone();
        let mut attempt = peer.request(move |id| with_request_id(m, id));
        let me = self.clone();
        self.io.spawn(async move {
            loop {
                let closed = match attempt.await {
                    Ok(Ok(reply)) => {
                        let _ = tx.send(Ok(reply));
                        return;
                    }
                    Ok(Err(e)) if !peer.is_closed() => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => peer.closed_error(),
                };
                match me.wait_rejoined(&peer).await {
                    Some(next) => {
                        peer = next;
                        let m = template.clone();
                        attempt = peer.request(move |id| with_request_id(m, id));
                    }
                    None => {
                        let why = match &*lock(&me.state) {
                            State::Failed(why) => why.clone(),
                            _ => closed.to_string(),
                        };
                        let _ = tx.send(Err(cluster_error("a request to the GCS", why)));
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Waits until a connection other than `old` is current and up; `None` if the link
    /// failed (or the wait outlived the rejoin's bound).
    async fn wait_rejoined(&self, old: &Arc<Peer>) -> Option<Arc<Peer>> {
        let limit = crate::config::current().gcs_reconnect_timeout + call_timeout();
        let deadline = Instant::now() + limit;
        loop {
            match &*lock(&self.state) {
                State::Failed(_) => return None,
                State::Up => {
                    let p = self.current();
                    if !Arc::ptr_eq(&p, old) && !p.is_closed() {
                        return Some(p);
                    }
                }
                State::Down(..) => {}
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The current connection closed (step 2): rejoin in the background.
    pub(crate) fn lost(self: &Arc<Self>, peer: &Arc<Peer>, reason: &str) {
        if self.shut.load(Ordering::Acquire) || !self.is(peer) {
            return;
        }
        {
            let mut state = lock(&self.state);
            if !matches!(*state, State::Up) {
                return;
            }
            if lock(&self.rejoin).is_none() {
                *state = State::Failed(format!("the GCS connection closed ({reason})"));
                return;
            }
            *state = State::Down(Instant::now(), Vec::new());
        }
        tracing::warn!(address = %self.address, reason, "lost the GCS: rejoining");
        let me = self.clone();
        self.io.spawn(async move { me.rejoin_loop().await });
    }

    async fn rejoin_loop(self: Arc<Self>) {
        let limit = crate::config::current().gcs_reconnect_timeout;
        let since = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.shut.load(Ordering::Acquire) {
                return;
            }
            if since.elapsed() > limit {
                let why = format!(
                    "the GCS at {} was unreachable for {limit:?} (gcs_reconnect_timeout)",
                    self.address
                );
                self.fail(why);
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            let connect = super::connect(&self.address, &self.token, self.name.clone());
            let conn = match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(c)) => c,
                _ => continue,
            };
            let peer = Peer::spawn(conn, "gcs".into(), self.handler.clone());
            let Some(rejoin) = lock(&self.rejoin).clone() else {
                return;
            };
            let reply = peer.request(move |id| with_request_id(rejoin, id));
            match tokio::time::timeout(call_timeout(), reply).await {
                Ok(Ok(Ok(Msg::Registered { error, .. }))) if error.is_empty() => {
                    peer.send(Msg::Subscribe { request_id: 0 });
                    let held = {
                        let mut state = lock(&self.state);
                        *lock(&self.peer) = peer.clone();
                        match std::mem::replace(&mut *state, State::Up) {
                            State::Down(_, held) => held,
                            _ => Vec::new(),
                        }
                    };
                    for m in held {
                        peer.send(m);
                    }
                    // Follow the groups again: the answers come as notices (request id 0).
                    let watched: Vec<u64> = lock(&self.watched_groups).iter().copied().collect();
                    for pg_id in watched {
                        peer.send(Msg::PgWatch {
                            request_id: 0,
                            pg_id,
                        });
                    }
                    tracing::info!(address = %self.address, after = ?since.elapsed(), "rejoined the GCS");
                    let nodes = peer.request(|request_id| Msg::GetNodes { request_id });
                    if let Ok(Ok(Ok(Msg::Nodes { nodes, .. }))) =
                        tokio::time::timeout(call_timeout(), nodes).await
                    {
                        for node in nodes.into_iter().filter(|n| !n.alive) {
                            self.handler
                                .clone()
                                .on_message(&peer, Msg::NodeEvent { node });
                        }
                    }
                    return;
                }
                Ok(Ok(Ok(Msg::Registered { error, .. }))) => {
                    peer.shutdown("refused by the GCS");
                    self.fail(format!("the restarted GCS refused this process: {error}"));
                    return;
                }
                _ => peer.shutdown("no answer to rejoining"),
            }
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(%why, "the GCS link failed");
        *lock(&self.state) = State::Failed(why);
    }

    /// Closes the link for good (leaving the cluster).
    pub(crate) fn shutdown(&self, reason: &str) {
        self.shut.store(true, Ordering::Release);
        *lock(&self.state) = State::Failed(format!("left the cluster ({reason})"));
        self.current().shutdown(reason);
    }
}

/// `msg` with its request id set to `id` (the GCS's requests; others unchanged).
fn with_request_id(mut msg: Msg, id: u64) -> Msg {
    match &mut msg {
        Msg::RegisterNode { request_id, .. }
        | Msg::RegisterWorker { request_id, .. }
        | Msg::RejoinWorker { request_id, .. }
        | Msg::GetNodes { request_id }
        | Msg::GetWorker { request_id, .. }
        | Msg::KvPut { request_id, .. }
        | Msg::KvGet { request_id, .. }
        | Msg::RegisterActor { request_id, .. }
        | Msg::LookupActor { request_id, .. }
        | Msg::ListActors { request_id }
        | Msg::ListWork { request_id }
        | Msg::Subscribe { request_id }
        | Msg::Pg { request_id, .. }
        | Msg::PgWatch { request_id, .. } => *request_id = id,
        _ => {}
    }
    msg
}
