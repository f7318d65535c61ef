//! Errors are values: every failing operation has a variant carrying the ids involved.
//!
//! [`Error`] is what every public call returns. A task's own failure is the opaque
//! [`TaskError`] (task name and panic message, with `is_*` predicates, as tokio's `JoinError`);
//! it is stored in the task's result object and handed to every `get` of it.

use crate::sync::Arc;
use std::fmt;
use std::time::Duration;

use crate::id::{ActorId, ObjectId};

/// Every way a Manta call can fail.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API was used before `manta::init()`.
    #[error("manta is not initialised: call manta::init() first")]
    NotInitialized,
    /// `init` was called while a runtime is already running in this process.
    #[error("manta is already initialised in this process: call manta::shutdown() first")]
    AlreadyInitialized,
    /// The runtime shut down before the operation could complete.
    #[error("the manta runtime has shut down")]
    ShutDown,
    /// The task that produces the object failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The request can never be satisfied by this cluster's resources.
    #[error("{what} can never be scheduled: it requests {request}, but the cluster has {total}")]
    Infeasible {
        /// The task or actor that asked.
        what: String,
        /// What it asked for.
        request: String,
        /// What the cluster has in total.
        total: String,
    },
    /// A `get` or `wait` with a timeout ran out of time; the object may still arrive later.
    #[error("timed out after {waited:?} waiting for {object}")]
    Timeout {
        /// The object waited for.
        object: ObjectId,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The task producing the object was cancelled.
    #[error("task {task} producing {object} was cancelled")]
    Cancelled {
        /// The object the cancelled task would have produced.
        object: ObjectId,
        /// The task's name.
        task: String,
    },
    /// The actor is dead: killed, failed in its constructor, or gone out of scope.
    #[error("actor {actor} ({class}) is dead: {reason}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Its class (the Rust type name).
        class: String,
        /// Why it died.
        reason: String,
    },
    /// No live actor is registered under this name.
    #[error("no actor named {name:?}")]
    ActorNotFound {
        /// The name looked up.
        name: String,
    },
    /// A named actor exists but is of another class than the one asked for.
    #[error("actor {name:?} is a {found}, not a {wanted}")]
    ActorClassMismatch {
        /// The name looked up.
        name: String,
        /// The class asked for.
        wanted: String,
        /// The class found.
        found: String,
    },
    /// A live actor already holds this name.
    #[error("an actor named {name:?} already exists")]
    ActorNameTaken {
        /// The contested name.
        name: String,
    },
    /// A value could not be serialised.
    #[error("could not encode a {type_name}: {message}")]
    Encode {
        /// The Rust type.
        type_name: &'static str,
        /// The serialiser's message.
        message: String,
    },
    /// Stored bytes could not be decoded as the requested type.
    #[error("could not decode {object} as a {type_name}: {message}")]
    Decode {
        /// The object, when known.
        object: ObjectId,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The deserialiser's message.
        message: String,
    },
    /// A reference was deserialised after every handle to its object was dropped.
    #[error("{object} was freed: no reference to it was left")]
    ObjectFreed {
        /// The freed object.
        object: ObjectId,
    },
    /// The object store had no room for an object after waiting `object_store_put_timeout`
    /// (everything in it pinned, or spilling impossible). A failed `put` hands its value back
    /// in the [`PutError`]; a task whose result cannot be stored fails that result with this.
    #[error(
        "object store full: no room for {object} ({size} bytes) after {waited:?}; \
         {used} of {capacity} bytes in use, {pinned} bytes pinned"
    )]
    ObjectStoreFull {
        /// The object that could not be stored (`ObjectId` 0 for a task argument).
        object: ObjectId,
        /// Its encoded size in bytes.
        size: usize,
        /// Bytes in use in the store when the put gave up.
        used: usize,
        /// Bytes pinned by readers (neither spillable nor evictable) then.
        pinned: usize,
        /// The store's capacity in bytes.
        capacity: usize,
        /// How long the put waited for space.
        waited: Duration,
    },
    /// Any other object store failure (an object larger than the whole store, a failed
    /// restore from disk, the store could not be created).
    #[error("object store: {object}: {message}")]
    ObjectStore {
        /// The object concerned (`ObjectId` 0 when none).
        object: ObjectId,
        /// What went wrong.
        message: String,
    },
    /// A typed view could not be made over an object's bytes (misaligned, or a length that is
    /// not a whole number of elements).
    #[error("cannot view {object} as a slice of {type_name}: {reason}")]
    View {
        /// The object.
        object: ObjectId,
        /// The element type asked for.
        type_name: &'static str,
        /// Why not.
        reason: String,
    },
    /// A configuration value is malformed.
    #[error("invalid configuration {key}: {message}")]
    Config {
        /// The `MANTA_*` key or builder field.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A cluster operation failed: a member died or could not be reached, or answered
    /// something unexpected.
    #[error("{what}: {message}")]
    Cluster {
        /// What was being done.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The operating system refused a resource the runtime needs (a thread, say).
    #[error("{what}: {message}")]
    Os {
        /// What the runtime was doing.
        what: &'static str,
        /// The OS error.
        message: String,
    },
    /// A call was given an argument it cannot accept, and nothing was done: `wait` with
    /// duplicate references or a `num_returns` of 0 or above the list's length; an empty or
    /// blank actor name; a resource amount that is negative, not finite, 0 for a custom
    /// resource, or fractional above 1 (Ray: quantities over 1 must be whole); a
    /// `max_concurrency` of 0. Checked when the call is made, the same in every mode; where the
    /// call returns a reference (`f::remote`), its `get` gives this error at once and the task
    /// never runs.
    #[error("invalid argument to {what}: {message}")]
    InvalidArgument {
        /// The call and the argument (`wait: num_returns`, `task m::f: num_cpus`).
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The placement group the call names was removed (`manta::remove_placement_group`):
    /// its queued tasks fail with this, and so does any later use of it.
    #[error("placement group {group} was removed")]
    PlacementGroupRemoved {
        /// The group's id (and name, if it has one).
        group: String,
    },
    /// The worker process running the task died (it crashed, was killed, or became
    /// unreachable) before the task finished, and the task had no retries left (Ray's
    /// `WorkerCrashedError`). Only in a cluster: embedded, tasks run in the caller's process,
    /// so a task that crashes ends that process.
    #[error("task {task} failed: its worker process died ({reason})")]
    WorkerCrashed {
        /// The task's name.
        task: String,
        /// The worker process and why it is considered dead.
        reason: String,
    },
    /// The object's value is gone: the only process holding it died (Ray's
    /// `ObjectLostError`), and it cannot be rebuilt: it is not the output of a task (an actor
    /// call's result, or a value held for a task's argument). A lost task output is rebuilt
    /// from its lineage instead, or fails with one of the two kinds below.
    #[error("{object} was lost: {reason}")]
    ObjectLost {
        /// The lost object.
        object: ObjectId,
        /// Which process held it and what became of it.
        reason: String,
    },
    /// A lost task output could not be rebuilt: its task had no retries left (`max_retries`;
    /// each rebuild counts as one), or a rebuild itself failed (Ray's
    /// `ObjectReconstructionFailedMaxAttemptsExceededError`).
    #[error("{object} was lost and could not be rebuilt: {reason}")]
    ObjectReconstructionFailedMaxAttemptsExceeded {
        /// The lost object.
        object: ObjectId,
        /// Its task, and why no attempt is left.
        reason: String,
    },
    /// A lost task output could not be rebuilt: its task's specification was dropped to keep
    /// the owner's lineage under `max_lineage_bytes` (Ray's
    /// `ObjectReconstructionFailedLineageEvictedError`).
    #[error("{object} was lost and its lineage was evicted: {reason}")]
    ObjectReconstructionFailedLineageEvicted {
        /// The lost object.
        object: ObjectId,
        /// Which process held it and what became of it.
        reason: String,
    },
    /// A collective operation failed on a communicator (`manta::collective`): a member died,
    /// left or did not arrive in time, or an earlier failure left the communicator unusable.
    /// Mismatched arguments across members are [`Error::InvalidArgument`] instead.
    #[error("collective {op} on group {group:?} failed{}: {message}", rank.map(|r| format!(" (rank {r})")).unwrap_or_default())]
    Collective {
        /// The group's name (as given to `Communicator::join`).
        group: String,
        /// The operation (`allreduce`, `join`, ...).
        op: &'static str,
        /// The member at fault, when known.
        rank: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// The owner of a borrowed object died, and with it the object's value and the
    /// knowledge of where it lives (Ray's `OwnerDiedError`).
    #[error("{object} is gone with its owner: {reason}")]
    OwnerDied {
        /// The object.
        object: ObjectId,
        /// The owner process and what became of it.
        reason: String,
    },
}

impl Error {
    /// Names `object` in a store error raised before the object's id was known (encoding a
    /// task's result happens in generated code that does not know the result's id).
    pub(crate) fn for_object(self, object: ObjectId) -> Self {
        match self {
            Error::ObjectStoreFull {
                object: unknown,
                size,
                used,
                pinned,
                capacity,
                waited,
            } if unknown.as_u64() == 0 => Error::ObjectStoreFull {
                object,
                size,
                used,
                pinned,
                capacity,
                waited,
            },
            Error::ObjectStore {
                object: unknown,
                message,
            } if unknown.as_u64() == 0 => Error::ObjectStore { object, message },
            other => other,
        }
    }
}

/// The failure of a task or actor method: its name and what went wrong.
///
/// Opaque by design; ask it questions with the `is_*` predicates. A failure with a typed
/// cause — a remote function that returned `Err(e)`, or a task that panicked with
/// `std::panic::panic_any(e)` for an `e` of a registered error type — keeps that cause, in
/// every mode: [`TaskError::downcast_ref`] gives it back as its own type, on the caller's side
/// of the cluster too (it travels serialised with its type name and is decoded when asked for).
#[derive(Clone)]
pub struct TaskError {
    task: Arc<str>,
    message: Arc<str>,
    kind: TaskErrorKind,
    cause: Option<Arc<Cause>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskErrorKind {
    Panic,
    /// The function returned `Err`.
    Returned,
}

/// A task error's typed cause: its Rust type name and its value, serialised with Manta's
/// codec; decoded (once) by the first [`TaskError::downcast_ref`] for its type.
pub(crate) struct Cause {
    type_name: Box<str>,
    bytes: bytes::Bytes,
    decoded: crate::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Cause {
    pub(crate) fn new(type_name: &str, bytes: bytes::Bytes) -> Self {
        Cause {
            type_name: type_name.into(),
            bytes,
            decoded: crate::sync::OnceLock::new(),
        }
    }
}

/// An error type a panic payload may carry and keep across processes (`panic_any(e)`):
/// registered by [`register_error!`](crate::register_error) or, for the `E` of a remote
/// function returning `Result<T, E>`, by `#[manta::remote]`.
#[derive(Debug)]
#[doc(hidden)]
pub struct ErrorType {
    type_id: fn() -> std::any::TypeId,
    type_name: fn() -> &'static str,
    encode: EncodePayload,
}

/// Encodes a panic payload of one error type: its message and its serialised value.
type EncodePayload = fn(&(dyn std::any::Any + Send)) -> Option<(String, Vec<u8>)>;

impl ErrorType {
    /// The registration of `E`.
    pub const fn of<E>() -> Self
    where
        E: serde::Serialize + fmt::Display + Send + 'static,
    {
        ErrorType {
            type_id: std::any::TypeId::of::<E>,
            type_name: std::any::type_name::<E>,
            encode: encode_payload::<E>,
        }
    }
}

/// A link-time registration of an [`ErrorType`].
#[derive(Debug)]
#[doc(hidden)]
pub struct ErrorTypeRegistration(pub &'static ErrorType);

inventory::collect!(ErrorTypeRegistration);

fn encode_payload<E>(payload: &(dyn std::any::Any + Send)) -> Option<(String, Vec<u8>)>
where
    E: serde::Serialize + fmt::Display + Send + 'static,
{
    let e = payload.downcast_ref::<E>()?;
    Some((e.to_string(), crate::codec::encode_bytes(e).ok()?))
}

impl TaskError {
    pub(crate) fn panic(task: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let typed = || {
            let id = payload.type_id();
            inventory::iter::<ErrorTypeRegistration>
                .into_iter()
                .find(|r| (r.0.type_id)() == id)
                .and_then(|r| {
                    let (message, bytes) = (r.0.encode)(payload)?;
                    Some((message, Cause::new((r.0.type_name)(), bytes.into())))
                })
        };
        let (message, cause): (String, Option<Cause>) =
            if let Some(s) = payload.downcast_ref::<&'static str>() {
                (s.to_string(), None)
            } else if let Some(s) = payload.downcast_ref::<String>() {
                (s.clone(), None)
            } else if let Some((message, cause)) = typed() {
                (message, Some(cause))
            } else {
                ("non-string panic payload".into(), None)
            };
        TaskError {
            task: task.into(),
            message: message.into(),
            kind: TaskErrorKind::Panic,
            cause: cause.map(Arc::new),
        }
    }

    /// A function's `Err(error)` (generated code, through `__private::returned_error`).
    pub(crate) fn returned<E>(task: &str, error: &E) -> Self
    where
        E: serde::Serialize + fmt::Display + 'static,
    {
        let cause = crate::codec::encode_bytes(error)
            .ok()
            .map(|b| Arc::new(Cause::new(std::any::type_name::<E>(), b.into())));
        TaskError {
            task: task.into(),
            message: error.to_string().into(),
            kind: TaskErrorKind::Returned,
            cause,
        }
    }

    /// A panic reported by another process of the cluster.
    pub(crate) fn remote_panic(task: &str, message: &str) -> Self {
        Self::unpack(task, message, &[])
    }

    /// The typed cause as it crosses the wire (`TaskDone`'s failed outcome): whether the
    /// function returned `Err`, the cause's type name and serialised value, encoded together;
    /// empty for a panic without a typed cause.
    pub(crate) fn pack_cause(&self) -> Vec<u8> {
        let returned = self.kind == TaskErrorKind::Returned;
        if !returned && self.cause.is_none() {
            return Vec::new();
        }
        let (name, bytes) = match self.cause.as_deref() {
            Some(c) => (&*c.type_name, c.bytes.as_ref()),
            None => ("", &[][..]),
        };
        crate::codec::encode_bytes(&(returned, name, bytes)).unwrap_or_default()
    }

    /// A failure reported by another process, with its cause packed by
    /// [`TaskError::pack_cause`] (a cause that does not decode is dropped, the message kept).
    pub(crate) fn unpack(task: &str, message: &str, packed: &[u8]) -> Self {
        let (returned, cause) = match crate::codec::decode_bytes::<(bool, String, Vec<u8>)>(packed)
        {
            Ok((returned, name, bytes)) if !name.is_empty() => {
                (returned, Some(Arc::new(Cause::new(&name, bytes.into()))))
            }
            Ok((returned, _, _)) => (returned, None),
            Err(_) => (false, None),
        };
        TaskError {
            task: task.into(),
            message: message.into(),
            kind: if returned {
                TaskErrorKind::Returned
            } else {
                TaskErrorKind::Panic
            },
            cause,
        }
    }

    /// Whether the task's body panicked.
    pub fn is_panic(&self) -> bool {
        self.kind == TaskErrorKind::Panic
    }

    /// Whether the remote function returned `Err` (its value is the [cause](Self::downcast_ref)).
    pub fn is_returned_error(&self) -> bool {
        self.kind == TaskErrorKind::Returned
    }

    /// The Rust type name of the typed cause, if the failure has one.
    pub fn cause_type_name(&self) -> Option<&str> {
        self.cause.as_deref().map(|c| &*c.type_name)
    }

    /// The typed cause as an `E`, if it is one: the `Err(e)` a remote function returned, or the
    /// payload of `panic_any(e)` for a registered error type. Decoded on first use (it may come
    /// from another process); `None` if the cause is of another type, or there is none.
    ///
    /// ```
    /// # fn check(r: Result<u64, manta_core::Error>) {
    /// #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// struct NotFound { key: String }
    /// if let Err(manta_core::Error::Task(e)) = r {
    ///     if let Some(nf) = e.downcast_ref::<NotFound>() {
    ///         println!("no {}", nf.key);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn downcast_ref<E>(&self) -> Option<&E>
    where
        E: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let cause = self.cause.as_deref()?;
        if *cause.type_name != *std::any::type_name::<E>() {
            return None;
        }
        if cause.decoded.get().is_none() {
            let value: E = crate::codec::decode_bytes(&cause.bytes).ok()?;
            let _ = cause.decoded.set(Box::new(value));
        }
        cause.decoded.get()?.downcast_ref::<E>()
    }

    /// The typed cause as an `E`, owned (see [`TaskError::downcast_ref`]).
    pub fn cause<E>(&self) -> Option<E>
    where
        E: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let cause = self.cause.as_deref()?;
        if *cause.type_name != *std::any::type_name::<E>() {
            return None;
        }
        crate::codec::decode_bytes(&cause.bytes).ok()
    }

    /// The failed task's or method's name (`module::function` or `Class::method`).
    pub fn task_name(&self) -> &str {
        &self.task
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("task", &self.task)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("cause", &self.cause_type_name())
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TaskErrorKind::Panic => write!(f, "task {} panicked: {}", self.task, self.message),
            TaskErrorKind::Returned => {
                write!(f, "task {} returned an error: {}", self.task, self.message)
            }
        }
    }
}

/// Registers an error type for panic payloads, so that `std::panic::panic_any(e)` in a task
/// keeps `e` as the failure's typed cause ([`TaskError::downcast_ref`]) in every mode. The
/// type must be `Serialize + DeserializeOwned + Display + Send + Sync + 'static`. The error
/// type `E` of a remote function returning `Result<T, E>` is registered already.
///
/// ```
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct Overheated { celsius: u32 }
/// impl std::fmt::Display for Overheated {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "overheated at {} °C", self.celsius)
///     }
/// }
/// manta_core::register_error!(Overheated);
/// ```
#[macro_export]
macro_rules! register_error {
    ($ty:ty) => {
        $crate::__private::inventory::submit! {
            $crate::__private::ErrorTypeRegistration(&$crate::__private::ErrorType::of::<$ty>())
        }
    };
}

impl std::error::Error for TaskError {}

/// The failure of a remote function that returned `Err(error)` (generated code calls this).
#[doc(hidden)]
pub fn returned_error<E>(task: &str, error: &E) -> Error
where
    E: serde::Serialize + fmt::Display + 'static,
{
    Error::Task(TaskError::returned(task, error))
}

/// A failed `put`: the error, with the value handed back so nothing is lost.
pub struct PutError<T> {
    /// The value that was not stored.
    pub value: T,
    /// Why.
    pub error: Error,
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put failed: {}", self.error)
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Self {
        e.error
    }
}
