//! Errors are values: every failing operation has a variant carrying the ids involved.
//!
//! [`Error`] is what every public call returns. A task's own failure is the opaque
//! [`TaskError`] (task name and panic message, with `is_*` predicates, as tokio's `JoinError`);
//! it is stored in the task's result object and handed to every `get` of it.

use std::fmt;
use std::sync::Arc;
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
    /// `ObjectLostError`). Its owner is alive; lineage reconstruction is not done.
    #[error("{object} was lost: {reason}")]
    ObjectLost {
        /// The lost object.
        object: ObjectId,
        /// Which process held it and what became of it.
        reason: String,
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
/// Opaque by design; ask it questions with the `is_*` predicates.
#[derive(Clone)]
pub struct TaskError {
    task: Arc<str>,
    message: Arc<str>,
    kind: TaskErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskErrorKind {
    Panic,
}

impl TaskError {
    pub(crate) fn panic(task: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let message: &str = if let Some(s) = payload.downcast_ref::<&'static str>() {
            s
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s
        } else {
            "non-string panic payload"
        };
        TaskError {
            task: task.into(),
            message: message.into(),
            kind: TaskErrorKind::Panic,
        }
    }

    /// A panic reported by another process of the cluster.
    pub(crate) fn remote_panic(task: &str, message: &str) -> Self {
        TaskError {
            task: task.into(),
            message: message.into(),
            kind: TaskErrorKind::Panic,
        }
    }

    /// Whether the task's body panicked.
    pub fn is_panic(&self) -> bool {
        self.kind == TaskErrorKind::Panic
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
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} panicked: {}", self.task, self.message)
    }
}

impl std::error::Error for TaskError {}

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
