//! Objects: the in-process memory store's cells and the typed [`ObjectRef`] users hold.
//!
//! An object is written once and then immutable. Its [`ObjectCell`] is shared by every handle
//! (`Arc`), so on one node a reference *is* the object's location: `get` never looks anything up.
//!
//! # The cell protocol
//!
//! 1. A cell is created pending, by `put` (and at once completed) or by submitting a task.
//! 2. Exactly one completion wins (it claims the cell's state word first): the task's result,
//!    its failure, a cancellation or the runtime's shutdown. Later completions are ignored.
//! 3. The completer writes the value, publishes it, then takes the waiter list from the same
//!    word and wakes every waiter.
//! 4. A waiter registers by pushing itself onto the list with a compare-and-swap that fails
//!    once the value is published. So either the push lands before step 3's take (and is
//!    woken), or it sees the value: no wake-up is lost. Waiters are threads parked in `get`,
//!    futures' wakers, tasks and actors waiting for their arguments, and `wait` latches.
//!
//! Steps 2–4 are `object/wait_cell.rs` (`WaitCell`), which stands alone so that its loom model
//! (`core/loom`, `scripts/loom`) runs it.
//!
//! # Ownership and lifetime
//!
//! The process that created an object owns it (Ray's ownership model). Its lifetime is its
//! handles' lifetime: the `Arc` count is the local reference count. A reference serialised into
//! another object or into task arguments is *escaped*: it is entered into the runtime's escape
//! table (id → weak cell) so deserialisation can find it, and the containing object or task
//! keeps a strong handle to it (`nested`), so a reference inside an object keeps its referent
//! alive exactly as long as the container, as in Ray. The cell leaves the table when dropped.
//! In a cluster, a reference deserialised in another process makes that process a borrower,
//! registered with the owner, which keeps the object until every borrower has dropped it (the
//! protocol is in `cluster/borrow.rs`).
//!
//! # Where the bytes live
//!
//! An [`ObjectValue`]'s encoding is either inline (`Bytes`, at most `max_inline_object_bytes`)
//! or a [`StoredObject`] in the runtime's shared-memory store (larger values). The cell holds
//! the value, so the cell's lifetime is the stored object's lifetime: when the last handle on
//! the cell (and the last task argument slot sharing its value) drops, the object is deleted
//! from the store. Readers pin a stored object only while they decode it, or while a
//! [`View`](crate::View) of it lives; an object nobody reads may be spilled to disk and is
//! restored by the next read (the stored-object protocol is in [`store`](crate::store)).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::actor::ActorCell;
use crate::codec::{self, Nested};
use crate::error::Error;
use crate::id::ObjectId;
use crate::remote::RemoteValue;
use crate::runtime::{self, RuntimeInner};
use crate::store::StoredObject;
use crate::sync::{Arc, AtomicU8, AtomicUsize, OnceLock, Ordering, Weak, thread};
use crate::task::Task;
use crate::view::{Element, View};

mod wait_cell;

use wait_cell::{WaitCell, Wake};

/// An object's sealed contents: encoded bytes plus the objects referenced from inside them.
#[derive(Clone, Debug)]
#[doc(hidden)]
pub struct ObjectValue {
    pub(crate) data: Payload,
    /// Strong handles on the objects and actors whose references are serialised in `bytes`;
    /// held only so that they live as long as this value.
    pub(crate) nested: NestedRefs,
}

/// The objects and actors referenced from inside a value, kept alive with it. One word (most
/// values reference nothing), so that a value and its cell stay small (see [`ObjectCell`]).
#[derive(Clone, Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: one word where a `Vec` is three
pub(crate) struct NestedRefs(#[allow(dead_code)] Option<Box<Vec<Nested>>>);

impl NestedRefs {
    pub(crate) fn new(nested: Vec<Nested>) -> Self {
        NestedRefs((!nested.is_empty()).then(|| Box::new(nested)))
    }

    /// Whether the value references nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// Where an object's encoded bytes are.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// Small values: in the process (the smallest in the value itself, no allocation).
    Inline(InlineBytes),
    /// Values above `max_inline_object_bytes`: in the shared-memory store.
    Stored(Arc<StoredObject>),
    /// Held by another worker process of the cluster; pulled on first read.
    Remote(Arc<dyn RemoteValue>),
}

/// The bytes of an inline value: encodings of up to [`InlineBytes::SMALL`] bytes (a number,
/// a short string, a small struct: most results of small tasks and actor calls) live in the
/// value itself, so encoding them allocates nothing; longer ones share a [`Bytes`].
#[derive(Clone)]
pub(crate) enum InlineBytes {
    Small {
        len: u8,
        buf: [u8; InlineBytes::SMALL],
    },
    Shared(Bytes),
}

impl InlineBytes {
    /// The longest encoding kept in the value itself.
    pub(crate) const SMALL: usize = 22;

    /// Encodes `size` bytes with `fill`, in the value itself when they fit.
    pub(crate) fn filled(
        size: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<Self, Error> {
        if size <= Self::SMALL {
            let mut buf = [0; Self::SMALL];
            fill(&mut buf[..size])?;
            // `size <= SMALL < 256`.
            let len = size as u8;
            return Ok(InlineBytes::Small { len, buf });
        }
        let mut buf = vec![0; size];
        fill(&mut buf)?;
        Ok(InlineBytes::Shared(Bytes::from(buf)))
    }

    /// The bytes as a [`Bytes`] whose address stays put (a copy for a small value).
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            InlineBytes::Small { .. } => Bytes::copy_from_slice(self),
            InlineBytes::Shared(b) => b.clone(),
        }
    }
}

impl std::ops::Deref for InlineBytes {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            InlineBytes::Small { len, buf } => &buf[..usize::from(*len)],
            InlineBytes::Shared(b) => b,
        }
    }
}

impl From<Bytes> for InlineBytes {
    fn from(b: Bytes) -> Self {
        InlineBytes::Shared(b)
    }
}

impl fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineBytes({} bytes)", self.len())
    }
}

impl ObjectValue {
    /// Runs `f` on the encoded bytes (pinned in the store for the duration, if stored there).
    pub(crate) fn read<R>(
        &self,
        object: ObjectId,
        f: impl FnOnce(&[u8]) -> Result<R, Error>,
    ) -> Result<R, Error> {
        match &self.data {
            Payload::Inline(bytes) => f(bytes),
            Payload::Stored(stored) => stored.read(object, f),
            Payload::Remote(remote) => match remote.fetch()? {
                Payload::Inline(bytes) => f(&bytes),
                Payload::Stored(stored) => stored.read(object, f),
                Payload::Remote(_) => Err(Error::ObjectStore {
                    object,
                    message: "a pulled object is still remote".into(),
                }),
            },
        }
    }

    /// A value of inline bytes with no nested references.
    pub(crate) fn inline(bytes: Bytes) -> Self {
        ObjectValue {
            data: Payload::Inline(bytes.into()),
            nested: NestedRefs::default(),
        }
    }

    /// A value held by another worker process.
    pub(crate) fn remote(remote: Arc<dyn RemoteValue>) -> Self {
        ObjectValue {
            data: Payload::Remote(remote),
            nested: NestedRefs::default(),
        }
    }

    /// Decodes the value as a `T`.
    pub(crate) fn decode<T: DeserializeOwned + 'static>(
        &self,
        object: ObjectId,
    ) -> Result<T, Error> {
        self.read(object, |bytes| codec::decode(object, bytes))
    }

    /// The encoding's length in bytes.
    pub fn len(&self) -> usize {
        match &self.data {
            Payload::Inline(bytes) => bytes.len(),
            Payload::Stored(stored) => stored.len(),
            Payload::Remote(remote) => remote.size() as usize,
        }
    }

    /// Whether the encoding is empty (never: every encoding has at least one byte, except `()`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes live in the shared-memory store.
    pub fn is_stored(&self) -> bool {
        matches!(self.data, Payload::Stored(_))
    }
}

/// Something to wake when a cell completes.
pub(crate) enum Waiter {
    Thread(thread::Thread),
    Waker(Waker),
    Task(Arc<Task>),
    Actor(Arc<ActorCell>),
    Latch(Arc<Latch>),
    /// Runs on the completing thread (the cluster's replies to remote owners and pullers).
    Callback(Box<dyn FnOnce() + Send>),
}

impl Wake for Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Waker(w) => w.wake(),
            Waiter::Task(task) => task.dependency_ready(),
            Waiter::Actor(actor) => actor.dependency_ready(),
            Waiter::Latch(latch) => latch.count_down(),
            Waiter::Callback(f) => f(),
        }
    }
}

/// Failures, for `get_all`: it fails as soon as any of its objects has failed, as Ray's `get`
/// of a list does, so a thread parked in it for one object must wake when another fails.
/// Registering on each of a thousand objects would cost a lock per object and per get; instead
/// every failure anywhere bumps a counter and unparks the (few) threads listening.
///
/// A listener (1) joins the list and raises `LISTENERS`, (2) reads `FAILURES`, (3) looks at
/// its objects, then parks until `FAILURES` moves. A failing completion sets its value, then
/// bumps `FAILURES` and reads `LISTENERS`, unparking everyone listed if it is not zero. All
/// four atomics are `SeqCst`: either the completion's bump comes before (2), and (3) sees its
/// value; or (1) comes before the completion's read of `LISTENERS`, and it unparks the listener.
pub(crate) mod failures {
    use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock, thread};

    static FAILURES: AtomicU64 = AtomicU64::new(0);
    static LISTENERS: AtomicUsize = AtomicUsize::new(0);
    static LIST: Mutex<Vec<thread::Thread>> = Mutex::new(Vec::new());

    /// An object failed (its value is set).
    pub(crate) fn failed() {
        FAILURES.fetch_add(1, Ordering::SeqCst);
        if LISTENERS.load(Ordering::SeqCst) > 0 {
            for t in lock(&LIST).iter() {
                t.unpark();
            }
        }
    }

    /// Failures so far.
    pub(crate) fn count() -> u64 {
        FAILURES.load(Ordering::SeqCst)
    }

    /// The calling thread, listening for failures while this lives.
    #[derive(Debug)]
    pub(crate) struct Listener(thread::ThreadId);

    impl Listener {
        pub(crate) fn new() -> Self {
            let me = thread::current();
            let id = me.id();
            lock(&LIST).push(me);
            LISTENERS.fetch_add(1, Ordering::SeqCst);
            Listener(id)
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let mut list = lock(&LIST);
            if let Some(i) = list.iter().position(|t| t.id() == self.0) {
                list.swap_remove(i);
            }
            LISTENERS.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Counts completions for `wait(refs, n)`; unparks its thread when the count reaches zero.
#[derive(Debug)]
pub(crate) struct Latch {
    remaining: AtomicUsize,
    thread: thread::Thread,
}

impl Latch {
    pub(crate) fn new(count: usize) -> Arc<Self> {
        Arc::new(Latch {
            remaining: AtomicUsize::new(count),
            thread: thread::current(),
        })
    }
    pub(crate) fn count_down(&self) {
        // Saturating: more completions than the count may arrive; only the one reaching 0 wakes.
        let prev = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
        if prev == Ok(1) {
            self.thread.unpark();
        }
    }
    pub(crate) fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}

/// What produces a pending object on this node.
enum Producer {
    /// A `put`, a remote result, or a call whose producer does not matter here.
    None,
    /// A task of this node's scheduler.
    Task(Weak<Task>),
    /// A call of an actor hosted on this node.
    Actor(Weak<ActorCell>),
}

/// One object of the in-process memory store (see the module docs for the protocol).
///
/// A cell is allocated for every task and actor call, and freed in bursts as results are
/// read: it is kept at most 104 bytes, so that with its `Arc` counts it stays in the
/// allocator's fast bins (glibc serves chunks up to 128 bytes from them without coalescing).
/// Hence the boxed error (errors are rare and large) and the one-word waiter list.
#[doc(hidden)]
pub struct ObjectCell {
    id: ObjectId,
    /// The value and its waiters (steps 2–4 of the protocol: `object/wait_cell.rs`).
    value: WaitCell<Result<ObjectValue, Box<Error>>, Waiter>,
    /// What will produce this object, for `cancel` and for running it inline in `get`.
    producer: Producer,
    /// The runtime whose escape table the cell is entered in, once it is.
    escape_table: OnceLock<Weak<RuntimeInner>>,
    /// For the result of an actor call run here: whether the call started or was cancelled
    /// first (`CALL_*`; the one compare-and-swap that leaves `CALL_QUEUED` wins).
    call: AtomicU8,
}

/// Not an actor call's result.
const CALL_NONE: u8 = 0;
/// An actor call's result, the call not yet started.
const CALL_QUEUED: u8 = 1;
/// The call started: it runs to its end.
const CALL_STARTED: u8 = 2;
/// The call was cancelled before it started: it never runs.
const CALL_CANCELLED: u8 = 3;

impl fmt::Debug for ObjectCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectCell")
            .field("id", &self.id)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl ObjectCell {
    pub(crate) fn pending(id: ObjectId, producer: Option<Weak<Task>>) -> Self {
        Self::pending_from(id, producer.map_or(Producer::None, Producer::Task))
    }

    /// A pending result of a call of `actor`, hosted on this node.
    pub(crate) fn pending_call(id: ObjectId, actor: Weak<ActorCell>) -> Self {
        let cell = Self::pending_from(id, Producer::Actor(actor));
        cell.call.store(CALL_QUEUED, Ordering::Relaxed);
        cell
    }

    fn pending_from(id: ObjectId, producer: Producer) -> Self {
        ObjectCell {
            id,
            value: WaitCell::new(),
            producer,
            escape_table: OnceLock::new(),
            call: AtomicU8::new(CALL_NONE),
        }
    }

    /// The actor is about to run the call: false if it was cancelled first.
    pub(crate) fn start_call(&self) -> bool {
        self.call
            .compare_exchange(
                CALL_QUEUED,
                CALL_STARTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_or_else(|now| now != CALL_CANCELLED, |_| true)
    }

    /// Cancels the actor call producing this cell if it has not started; returns whether it
    /// did (false too if this is not an actor call's result).
    pub(crate) fn cancel_call(&self) -> bool {
        self.call
            .compare_exchange(
                CALL_QUEUED,
                CALL_CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub(crate) fn ready(id: ObjectId, value: Result<ObjectValue, Error>) -> Self {
        let cell = Self::pending(id, None);
        cell.value.set(value.map_err(Box::new));
        cell
    }

    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.value.is_ready()
    }

    /// The value or the failure, once the cell is complete.
    pub(crate) fn get(&self) -> Option<Result<&ObjectValue, &Error>> {
        self.value.get().map(|r| r.as_ref().map_err(|e| &**e))
    }

    pub(crate) fn producer(&self) -> Option<Arc<Task>> {
        match &self.producer {
            Producer::Task(task) => task.upgrade(),
            _ => None,
        }
    }

    /// Whether this object and `other` are results of calls of one actor hosted here.
    pub(crate) fn same_actor_call(&self, other: &ObjectCell) -> bool {
        matches!(
            (&self.producer, &other.producer),
            (Producer::Actor(a), Producer::Actor(b)) if Weak::ptr_eq(a, b)
        )
    }

    /// The actor hosted here whose call produces this object, if it is one.
    pub(crate) fn producer_actor(&self) -> Option<Arc<ActorCell>> {
        match &self.producer {
            Producer::Actor(actor) => actor.upgrade(),
            _ => None,
        }
    }

    /// Step 2–3 of the protocol. Returns whether this call completed the cell.
    pub(crate) fn complete(&self, value: Result<ObjectValue, Error>) -> bool {
        if !self.value.set(value.map_err(Box::new)) {
            return false;
        }
        if matches!(self.value.get(), Some(Err(_))) {
            failures::failed();
        }
        self.value.wake_waiters();
        true
    }

    /// Step 4: registers `waiter` unless the cell is already complete, in which case the waiter
    /// is handed back so the caller can act on the value at once.
    pub(crate) fn register(&self, waiter: Waiter) -> Result<(), Waiter> {
        self.value.register(waiter)
    }

    /// Enters the cell in `rt`'s escape table (once) so a serialised reference can be resolved.
    pub(crate) fn escape(self: &Arc<Self>, rt: &Arc<RuntimeInner>) {
        if self.escape_table.get().is_none() && self.escape_table.set(Arc::downgrade(rt)).is_ok() {
            rt.escape(self);
        }
    }
}

// The size argued in the struct's docs.
const _: () = assert!(std::mem::size_of::<ObjectCell>() <= 104);

impl Drop for ObjectCell {
    fn drop(&mut self) {
        if let Some(rt) = self.escape_table.get().and_then(Weak::upgrade) {
            rt.unescape(self.id);
        }
    }
}

/// A future value of type `T`: the result of a task or actor call, or a `put` value.
///
/// Cheap to clone (a reference count). Pass it to another task wherever that task takes a `T`:
/// Manta resolves it before the task runs. `.await` it, or block with [`ObjectRef::get`].
pub struct ObjectRef<T> {
    pub(crate) cell: Arc<ObjectCell>,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_cell(cell: Arc<ObjectCell>) -> Self {
        ObjectRef {
            cell,
            _type: PhantomData,
        }
    }

    /// A reference that is already failed with `error` (used when submission itself fails).
    pub(crate) fn failed(error: Error) -> Self {
        Self::from_cell(Arc::new(ObjectCell::ready(
            ObjectId::from_u64(0),
            Err(error),
        )))
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.cell.id()
    }

    /// Whether the value (or its failure) is available without waiting.
    pub fn is_ready(&self) -> bool {
        self.cell.is_ready()
    }
}

impl<T: DeserializeOwned + 'static> ObjectRef<T> {
    /// Blocks until the value is available and returns a copy of it.
    pub fn get(&self) -> Result<T, Error> {
        runtime::wait_cell(&self.cell, None)?;
        self.decode_ready()
    }

    /// Like [`ObjectRef::get`], failing with [`Error::Timeout`] after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        runtime::wait_cell(&self.cell, Some(Instant::now() + timeout)).map_err(|e| match e {
            Error::Timeout { object, .. } => Error::Timeout {
                object,
                waited: timeout,
            },
            other => other,
        })?;
        self.decode_ready()
    }

    fn decode_ready(&self) -> Result<T, Error> {
        match self.cell.get() {
            Some(Ok(v)) => v.decode(self.cell.id()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Error::ShutDown),
        }
    }
}

impl<T: Element> ObjectRef<Vec<T>> {
    /// Blocks until the vector is available and returns a zero-copy view of its elements: on
    /// this node the slice points into the shared-memory store (or the inline bytes of a small
    /// object). The object stays pinned in memory while the view lives.
    ///
    /// ```
    /// manta_core::init()?;
    /// let r = manta_core::put(vec![1.5f32; 1 << 20])?;
    /// let v: manta_core::View<f32> = r.get_view()?;
    /// assert_eq!(v.iter().sum::<f32>(), 1.5 * (1 << 20) as f32);
    /// # drop(v);
    /// # manta_core::shutdown();
    /// # Ok::<(), manta_core::Error>(())
    /// ```
    pub fn get_view(&self) -> Result<View<T>, Error> {
        runtime::wait_cell(&self.cell, None)?;
        match self.cell.get() {
            Some(Ok(v)) => View::new(self.cell.id(), v),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Error::ShutDown),
        }
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self::from_cell(self.cell.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.cell.id()
        )
    }
}

impl<T: DeserializeOwned + 'static> Future for ObjectRef<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.cell.is_ready()
            && self
                .cell
                .register(Waiter::Waker(cx.waker().clone()))
                .is_ok()
        {
            return Poll::Pending;
        }
        Poll::Ready(self.decode_ready())
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        codec::note_nested(&self.cell);
        serializer.serialize_u64(self.cell.id().as_u64())
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = ObjectId::from_u64(u64::deserialize(deserializer)?);
        runtime::resolve_escaped(id)
            .map(Self::from_cell)
            .map_err(serde::de::Error::custom)
    }
}
