//! One connection to another cluster member, as two tokio tasks: a writer that drains an
//! unbounded queue (batching every message already queued into one write) and a reader that
//! decodes messages and hands them to the connection's [`Handler`], answers pending requests,
//! and receives bulk transfers straight into the memory a [`BulkSink`] names.
//!
//! # Protocol of a peer
//! 1. Anyone may [`Peer::send`] at any time, from any thread: the message is queued (never
//!    blocks, never fails; a closed peer drops it and the close is reported once).
//! 2. A request carries a fresh `request_id` ([`Peer::request`]); the reader completes the
//!    matching waiter when the reply with that id arrives. A closed connection fails every
//!    waiter with the close reason.
//! 3. A bulk transfer is announced by a message first (e.g. `ObjectData`), whose handler
//!    registers a [`BulkSink`] under the transfer id *before* the reader reads the next frame,
//!    so the reader always knows where the bytes go. A transfer nobody expects is discarded.

use crate::sync::{Arc, Mutex};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::collections::HashMap;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use manta_transport::{Connection, Incoming, RecvHalf, SendHalf, Tag, TransferId};
use tokio::sync::{mpsc, oneshot};

use super::proto::{self, Msg};
use crate::error::Error;
use crate::store::StoredObject;
use crate::sync::lock;

/// What a connection's reader calls for each message that is not a reply.
pub(crate) trait Handler: Send + Sync + 'static {
    /// A message arrived from `peer`.
    fn on_message(self: Arc<Self>, peer: &Arc<Peer>, msg: Msg);
    /// The connection closed (`reason` says why).
    fn on_close(self: Arc<Self>, peer: &Arc<Peer>, reason: &str);
}

/// Bytes to send as one bulk transfer.
pub(crate) enum BulkData {
    Heap(Bytes),
    Stored(Arc<StoredObject>),
}

enum Out {
    Msg(Msg),
    Bulk(u64, BulkData),
}

/// Where the bytes of an expected bulk transfer go.
pub(crate) type BulkSink = Box<dyn FnOnce(BulkArrival) + Send>;

/// A bulk transfer's bytes, received into the store or the heap.
pub(crate) enum BulkArrival {
    Stored(Arc<StoredObject>),
    Heap(Bytes),
    Failed(Error),
}

/// Allocates the destination of an expected transfer (called on the reader, before reading).
pub(crate) type BulkAlloc =
    Box<dyn FnOnce(u64) -> Result<Option<crate::store::Writing>, Error> + Send>;

struct Expected {
    alloc: BulkAlloc,
    sink: BulkSink,
}

/// A connection to one member.
pub(crate) struct Peer {
    /// Who it is (`gcs`, `raylet:<node>`, `w<index>`, or the address).
    pub(crate) name: String,
    /// The worker index of a `w<index>` peer.
    pub(crate) worker: Option<u64>,
    tx: mpsc::UnboundedSender<Out>,
    next_request: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Msg, Error>>>>,
    expected: Mutex<HashMap<u64, Expected>>,
    closed: AtomicBool,
    close_reason: Mutex<Option<String>>,
    /// Wakes the writer when the peer closes, so it closes the socket at once.
    closing: tokio::sync::Notify,
    /// The send half while nobody writes with it (see "Direct writes" in the module docs).
    direct: Mutex<Option<SendHalf>>,
    /// Messages queued for the writer task and not yet written.
    queued: AtomicUsize,
    /// Wakes the writer task when a direct writer released the send half.
    released: tokio::sync::Notify,
}

thread_local! {
    static FBB: std::cell::RefCell<FlatBufferBuilder<'static>> =
        std::cell::RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.name).finish()
    }
}

impl Peer {
    fn new(name: String) -> (Arc<Peer>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let peer = Arc::new(Peer {
            worker: name.strip_prefix('w').and_then(|i| i.parse().ok()),
            name,
            tx,
            next_request: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            closing: tokio::sync::Notify::new(),
            direct: Mutex::new(None),
            queued: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
        });
        (peer, rx)
    }

    /// Starts the reader and writer tasks of `conn` on the current tokio runtime.
    pub(crate) fn spawn(conn: Connection, name: String, handler: Arc<dyn Handler>) -> Arc<Peer> {
        let (peer, rx) = Peer::new(name);
        let (recv, send) = conn.into_split();
        tokio::spawn(write_loop(peer.clone(), send, rx));
        tokio::spawn(read_loop(peer.clone(), recv, handler));
        peer
    }

    /// A peer whose connection is still being made: messages queue until `attach` (or fail
    /// with `fail`).
    pub(crate) fn pending(name: String) -> (Arc<Peer>, PendingPeer) {
        let (peer, rx) = Peer::new(name);
        (peer.clone(), PendingPeer { peer, rx })
    }

    /// Sends `msg` (step 1): written at once by this thread when it may, else queued.
    pub(crate) fn send(&self, msg: Msg) {
        match self.try_direct(&msg) {
            Direct::Sent => {}
            Direct::Failed(e) => {
                tracing::debug!(peer = %self.name, error = %e, "write failed");
                self.fail_write(&e);
            }
            Direct::Busy => self.enqueue(Out::Msg(msg)),
        }
    }

    /// Queues `msg` for the writer task, which batches everything queued into one write (for
    /// messages that come in bursts).
    pub(crate) fn send_queued(&self, msg: Msg) {
        self.enqueue(Out::Msg(msg));
    }

    /// Queues a bulk transfer with id `id` (always through the writer task).
    pub(crate) fn send_bulk(&self, id: u64, data: BulkData) {
        self.enqueue(Out::Bulk(id, data));
    }

    fn enqueue(&self, out: Out) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Writes `msg` on this thread if nothing is queued before it and nobody else is writing,
    /// and this is not an I/O thread (which must never block on a socket).
    fn try_direct(&self, msg: &Msg) -> Direct {
        if self.queued.load(Ordering::Acquire) != 0
            || self.is_closed()
            || tokio::runtime::Handle::try_current().is_ok()
        {
            return Direct::Busy;
        }
        let Ok(mut guard) = self.direct.try_lock() else {
            return Direct::Busy;
        };
        let Some(send) = guard.as_mut() else {
            return Direct::Busy;
        };
        // Re-checked under the lock: a message queued meanwhile must go first.
        if self.queued.load(Ordering::Acquire) != 0 {
            return Direct::Busy;
        }
        let result = FBB.with(|fbb| {
            let mut fbb = fbb.borrow_mut();
            let bytes = proto::encode(msg, &mut fbb);
            block_on_io(send.send(msg.tag(), bytes))
        });
        drop(guard);
        if self.queued.load(Ordering::Acquire) != 0 {
            self.released.notify_one();
        }
        match result {
            Ok(()) => Direct::Sent,
            Err(e) => Direct::Failed(e.to_string()),
        }
    }

    /// A direct write failed: the writer task closes the socket, and the reader then reports
    /// the close (once) to the handler and the waiters.
    fn fail_write(&self, reason: &str) {
        let mut r = lock(&self.close_reason);
        if r.is_none() {
            *r = Some(reason.to_owned());
        }
        drop(r);
        self.closing.notify_one();
    }

    /// A fresh request id for this connection.
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends the request `make(request_id)` and returns the receiver of its reply (step 2).
    pub(crate) fn request(
        &self,
        make: impl FnOnce(u64) -> Msg,
    ) -> oneshot::Receiver<Result<Msg, Error>> {
        let id = self.next_request_id();
        let (tx, rx) = oneshot::channel();
        if self.is_closed() {
            let _ = tx.send(Err(self.closed_error()));
            return rx;
        }
        lock(&self.waiting).insert(id, tx);
        self.send(make(id));
        rx
    }

    /// Registers where transfer `id`'s bytes go (step 3).
    pub(crate) fn expect_bulk(&self, id: u64, alloc: BulkAlloc, sink: BulkSink) {
        lock(&self.expected).insert(id, Expected { alloc, sink });
    }

    /// Whether the connection closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn closed_error(&self) -> Error {
        let reason = lock(&self.close_reason)
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        Error::Cluster {
            what: format!("connection to {}", self.name),
            message: reason,
        }
    }

    /// Marks the peer closed and fails every waiter (once).
    fn close(self: &Arc<Self>, reason: &str) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        lock(&self.close_reason).get_or_insert_with(|| reason.to_owned());
        // The writer holds the socket: without this it would wait for the next message
        // (forever, on a connection nobody sends to) before closing it.
        self.closing.notify_one();
        let waiting: Vec<_> = lock(&self.waiting).drain().collect();
        for (_, w) in waiting {
            let _ = w.send(Err(self.closed_error()));
        }
        let expected: Vec<_> = lock(&self.expected).drain().collect();
        for (_, e) in expected {
            (e.sink)(BulkArrival::Failed(self.closed_error()));
        }
        true
    }

    /// Closes the connection from this side: the writer stops, the peer sees it closed.
    pub(crate) fn shutdown(self: &Arc<Self>, reason: &str) {
        self.close(reason);
    }
}

/// The other half of [`Peer::pending`].
pub(crate) struct PendingPeer {
    peer: Arc<Peer>,
    rx: mpsc::UnboundedReceiver<Out>,
}

impl PendingPeer {
    /// The connection is up: start its tasks.
    pub(crate) fn attach(self, conn: Connection, handler: Arc<dyn Handler>) {
        let (recv, send) = conn.into_split();
        tokio::spawn(write_loop(self.peer.clone(), send, self.rx));
        tokio::spawn(read_loop(self.peer, recv, handler));
    }

    /// The connection could not be made.
    pub(crate) fn fail(self, handler: Arc<dyn Handler>, reason: &str) {
        if self.peer.close(reason) {
            handler.on_close(&self.peer, reason);
        }
    }
}

/// Whether a direct write happened.
enum Direct {
    Sent,
    Failed(String),
    Busy,
}

/// Polls a write to completion on a thread outside the I/O runtime. The socket is registered
/// with the I/O runtime's reactor, which keeps running on its own thread and wakes this one
/// if the socket is full.
fn block_on_io<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let waker = Waker::from(Arc::new(crate::api::ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Largest number of queued messages written in one batch.
const MAX_BATCH: usize = 256;

async fn write_loop(peer: Arc<Peer>, send: SendHalf, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut fbb = FlatBufferBuilder::with_capacity(1024);
    let mut encoded: Vec<(Tag, Vec<u8>)> = Vec::with_capacity(MAX_BATCH);
    let mut bulk: Option<(u64, BulkData)> = None;
    *lock(&peer.direct) = Some(send);
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = peer.closing.notified() => break,
            next = rx.recv() => match next {
                Some(o) => o,
                None => break,
            },
        };
        // Take the send half from the direct writers (waiting while one is writing).
        let mut send = loop {
            if peer.is_closed() {
                break 'outer;
            }
            if let Ok(mut g) = peer.direct.try_lock()
                && let Some(s) = g.take()
            {
                break s;
            }
            tokio::select! {
                _ = peer.released.notified() => {}
                _ = peer.closing.notified() => break 'outer,
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
        };
        let mut taken = 0usize;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Out::Msg(m)) => {
                    taken += 1;
                    let bytes = proto::encode(&m, &mut fbb).to_vec();
                    encoded.push((m.tag(), bytes));
                }
                Some(Out::Bulk(id, data)) => {
                    taken += 1;
                    bulk = Some((id, data));
                    break;
                }
                None => {}
            }
            if encoded.len() >= MAX_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(o) => next = Some(o),
                Err(_) => break,
            }
        }
        let mut failed = None;
        if !encoded.is_empty() {
            let batch: Vec<(Tag, &[u8])> = encoded.iter().map(|(t, b)| (*t, &b[..])).collect();
            let r = send.send_batch(&batch).await;
            drop(batch);
            encoded.clear();
            if let Err(e) = r {
                failed = Some(e.to_string());
            }
        }
        if failed.is_none()
            && let Some((id, data)) = bulk.take()
        {
            let r = match &data {
                BulkData::Heap(b) => send.send_bulk(TransferId(id), b).await,
                BulkData::Stored(s) => match s.pin(crate::id::ObjectId::from_u64(id)) {
                    Ok(pin) => send.send_bulk(TransferId(id), &pin).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read an object to send it");
                        send.send_bulk(TransferId(id), &[]).await
                    }
                },
            };
            if let Err(e) = r {
                failed = Some(e.to_string());
            }
        }
        // Written (or failed): direct writers may go again once the queue is empty.
        *lock(&peer.direct) = Some(send);
        peer.queued.fetch_sub(taken, Ordering::AcqRel);
        if let Some(e) = failed {
            peer.close(&e);
            break;
        }
    }
    let send = lock(&peer.direct).take();
    if let Some(send) = send {
        let _ = send.close().await;
    }
}

/// Test hook: with `MANTA_TESTING_BULK_PAUSE=<path>`, the first bulk transfer of 1 MiB or
/// more that this process receives (the first to create `<path>.paused`) waits, unread,
/// until `<path>.go` exists (at most a minute), so a test can kill its sender mid-transfer.
async fn testing_bulk_pause(len: u64) {
    if len < 1 << 20 {
        return;
    }
    static HOOK: crate::sync::OnceLock<Option<std::ffi::OsString>> = crate::sync::OnceLock::new();
    let Some(path) = HOOK
        .get_or_init(|| std::env::var_os("MANTA_TESTING_BULK_PAUSE"))
        .clone()
    else {
        return;
    };
    let mut paused = path.clone();
    paused.push(".paused");
    if std::fs::File::create_new(&paused).is_err() {
        return;
    }
    let mut go = path;
    go.push(".go");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(&go).exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn read_loop(peer: Arc<Peer>, mut recv: RecvHalf, handler: Arc<dyn Handler>) {
    let reason = loop {
        let incoming = match recv.recv().await {
            Ok(i) => i,
            Err(e) => break e.to_string(),
        };
        match incoming {
            Incoming::Message(m) => {
                let msg = match proto::decode(m.tag.0, &m.payload) {
                    Ok(msg) => msg,
                    Err(e) => {
                        tracing::warn!(peer = %peer.name, error = %e, "malformed cluster message: closing the connection");
                        break format!("malformed message: {e}");
                    }
                };
                if let Some(id) = reply_id(&msg) {
                    let waiter = lock(&peer.waiting).remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(Ok(msg));
                        continue;
                    }
                }
                handler.clone().on_message(&peer, msg);
            }
            Incoming::Bulk(b) => {
                let id = b.id().0;
                let len = b.len();
                let Some(expected) = lock(&peer.expected).remove(&id) else {
                    tracing::warn!(peer = %peer.name, transfer = id, "unexpected bulk transfer discarded");
                    continue;
                };
                testing_bulk_pause(len).await;
                let received: Result<BulkArrival, String> = match (expected.alloc)(len) {
                    Ok(Some(mut writing)) => b
                        .read_into(writing.as_mut_slice())
                        .await
                        .map_err(|e| e.to_string())
                        .map(|()| match writing.seal() {
                            Ok(s) => BulkArrival::Stored(s),
                            Err(e) => BulkArrival::Failed(e),
                        }),
                    Ok(None) => b
                        .into_vec()
                        .await
                        .map_err(|e| e.to_string())
                        .map(|v| BulkArrival::Heap(Bytes::from(v))),
                    Err(e) => {
                        // No room: the unread bytes are discarded so the stream stays in step.
                        drop(b);
                        Ok(BulkArrival::Failed(e))
                    }
                };
                match received {
                    Ok(arrival) => (expected.sink)(arrival),
                    Err(reason) => {
                        // The connection is done for: closed before the sink runs, so that it
                        // sees a transfer cut off by its sender's end as such (a pull of an
                        // object lost with its holder: `object_manager.rs`).
                        let first = peer.close(&reason);
                        (expected.sink)(BulkArrival::Failed(Error::Cluster {
                            what: format!("transfer from {}", peer.name),
                            message: reason.clone(),
                        }));
                        if first {
                            handler.on_close(&peer, &reason);
                        }
                        return;
                    }
                }
            }
            _ => break "unknown incoming frame".to_owned(),
        }
    };
    if peer.close(&reason) {
        handler.on_close(&peer, &reason);
    }
}

/// The request id a reply message answers, if it is a reply.
fn reply_id(msg: &Msg) -> Option<u64> {
    match msg {
        Msg::Registered { request_id, .. }
        | Msg::Nodes { request_id, .. }
        | Msg::WorkerInfo { request_id, .. }
        | Msg::KvValue { request_id, .. }
        | Msg::ActorReply { request_id, .. }
        | Msg::Actors { request_id, .. }
        | Msg::WorkerStarted { request_id, .. }
        | Msg::Work { request_id, .. }
        | Msg::BorrowersAdded { request_id, .. }
        | Msg::CancelReply { request_id, .. } => Some(*request_id),
        // Placement-group answers; a `PgReply` with request id 0 is an unasked notice.
        Msg::Pg {
            op:
                super::proto::PgOp::Reply | super::proto::PgOp::Prepared | super::proto::PgOp::Groups,
            request_id,
            ..
        } if *request_id != 0 => Some(*request_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::AtomicUsize;
    use manta_transport::{Address, Listener, TransportConfig};
    use std::time::Duration;

    /// Counts what the reader hands it.
    #[derive(Default)]
    struct Counting {
        messages: AtomicUsize,
        closes: AtomicUsize,
        reason: Mutex<String>,
        closed: tokio::sync::Notify,
    }

    impl Handler for Counting {
        fn on_message(self: Arc<Self>, _peer: &Arc<Peer>, _msg: Msg) {
            self.messages.fetch_add(1, Ordering::SeqCst);
        }
        fn on_close(self: Arc<Self>, _peer: &Arc<Peer>, reason: &str) {
            self.closes.fetch_add(1, Ordering::SeqCst);
            *lock(&self.reason) = reason.to_owned();
            self.closed.notify_one();
        }
    }

    fn config(name: &str) -> TransportConfig {
        TransportConfig::new(b"peer-test".to_vec(), name)
    }

    /// A peer (the accepting side) and a raw connection to it.
    async fn pair(handler: Arc<Counting>) -> (Arc<Peer>, Connection) {
        let l = Listener::bind(
            &Address::Tcp("127.0.0.1:0".parse().unwrap()),
            config("peer"),
        )
        .await
        .unwrap();
        let addr = l.local_addr().unwrap();
        let remote_config = config("remote");
        let (accepted, remote) =
            tokio::join!(l.accept(), Connection::connect(&addr, &remote_config));
        let peer = Peer::spawn(accepted.unwrap(), "remote".into(), handler);
        (peer, remote.unwrap())
    }

    fn get_nodes(request_id: u64) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        proto::encode(&Msg::GetNodes { request_id }, &mut fbb).to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_tag_closes_the_peer_and_reports_the_close_once() {
        let handler = Arc::new(Counting::default());
        let (peer, mut remote) = pair(handler.clone()).await;
        // A good message first: handed to the handler.
        remote
            .send(Tag(proto::TAG_GET_NODES), &get_nodes(1))
            .await
            .unwrap();
        // A waiter, failed by the close.
        let waiter = peer.request(|request_id| Msg::GetNodes { request_id });
        remote.send(Tag(999), b"whatever").await.unwrap();
        // More after the bad one: never read.
        remote
            .send(Tag(proto::TAG_GET_NODES), &get_nodes(2))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), handler.closed.notified())
            .await
            .expect("on_close within 5 s");
        assert!(peer.is_closed());
        assert!(
            lock(&handler.reason).contains("unknown cluster message tag 999"),
            "{}",
            lock(&handler.reason)
        );
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is failed");
        assert!(matches!(r, Ok(Err(Error::Cluster { .. }))), "{r:?}");
        // The remote sees the connection close (after the request the peer sent it).
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if remote.recv().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the remote end must see the close");
        // Closing again, from either side, reports nothing more.
        peer.shutdown("again");
        drop(remote);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(handler.closes.load(Ordering::SeqCst), 1);
        assert_eq!(handler.messages.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_payload_that_is_no_flatbuffer_closes_the_peer_once() {
        let handler = Arc::new(Counting::default());
        let (peer, mut remote) = pair(handler.clone()).await;
        remote
            .send(Tag(proto::TAG_PUSH_TASK), &[0xff; 64])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), handler.closed.notified())
            .await
            .expect("on_close within 5 s");
        assert!(peer.is_closed());
        assert!(lock(&handler.reason).contains("invalid PushTask message"));
        drop(remote);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(handler.closes.load(Ordering::SeqCst), 1);
        assert_eq!(handler.messages.load(Ordering::SeqCst), 0);
    }
}
