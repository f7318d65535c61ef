//! The store's errors: one variant per failing operation, each with the object involved.

use std::io;
use std::time::Duration;

use crate::key::ObjectKey;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` of a key the store already holds (in any state).
    #[error("object {key} already exists in the store")]
    AlreadyExists {
        /// The key.
        key: ObjectKey,
    },
    /// The key is not in the store (never created, deleted, or an evicted secondary copy).
    #[error("object {key} is not in the store")]
    NotFound {
        /// The key.
        key: ObjectKey,
    },
    /// `get`/`pin` of an object that is still being written.
    #[error("object {key} is not sealed yet")]
    NotSealed {
        /// The key.
        key: ObjectKey,
    },
    /// `seal` by key of an object that is sealed already (the typed [`Created`](crate::Created)
    /// handle makes this impossible in-process).
    #[error("object {key} is already sealed")]
    AlreadySealed {
        /// The key.
        key: ObjectKey,
    },
    /// `release` of an object nobody has pinned.
    #[error("release of object {key}, which is not pinned")]
    NotPinned {
        /// The key.
        key: ObjectKey,
    },
    /// `delete` of an object that is still pinned.
    #[error("delete of object {key}, which is pinned {pins} time(s)")]
    StillPinned {
        /// The key.
        key: ObjectKey,
        /// How many pins are held.
        pins: u32,
    },
    /// `delete` of an object the store is spilling or restoring at this moment; retry.
    #[error("object {key} is being spilled or restored")]
    Busy {
        /// The key.
        key: ObjectKey,
    },
    /// `create` with size 0. Values this small travel inline (core's inline threshold), so a
    /// zero-size object reaching the store is a caller bug, reported rather than stored.
    #[error("object {key} has size 0; empty values travel inline, not through the store")]
    ZeroSize {
        /// The key.
        key: ObjectKey,
    },
    /// `create` of an object that could never fit, however much were spilled.
    #[error("object {key} of {size} bytes is larger than the arena ({capacity} bytes)")]
    TooLarge {
        /// The key.
        key: ObjectKey,
        /// Requested size in bytes.
        size: usize,
        /// Arena size in bytes.
        capacity: usize,
    },
    /// `create` found no room after evicting, spilling and waiting for pins to be released.
    #[error(
        "object store full: no room for object {key} ({size} bytes) after {waited:?}; \
         {used} of the {scope}'s {capacity} bytes in use, {pinned} bytes pinned here"
    )]
    ObjectStoreFull {
        /// The key.
        key: ObjectKey,
        /// Requested size in bytes.
        size: usize,
        /// How long the create waited.
        waited: Duration,
        /// Bytes allocated when it gave up.
        used: usize,
        /// Bytes pinned (not evictable or spillable) when it gave up.
        pinned: usize,
        /// Arena size in bytes.
        capacity: usize,
        /// What `used` and `capacity` count: `"store"` (an arena of its own) or `"node
        /// arena"` (every process's grants on the node's shared arena).
        scope: &'static str,
    },
    /// A typed view whose element type does not divide the object's length.
    #[error("object {key}: {len} bytes is not a whole number of {type_name} ({elem} bytes each)")]
    BadView {
        /// The key.
        key: ObjectKey,
        /// Object length in bytes.
        len: usize,
        /// Element type requested.
        type_name: &'static str,
        /// Its size in bytes.
        elem: usize,
    },
    /// Creating or mapping the arena failed.
    #[error("arena: {op}: {source}")]
    Arena {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// No room for an object, and spilling others to disk to make room failed (a full or
    /// unwritable spill directory): nothing in memory was lost, the objects that were to be
    /// spilled stay in memory. Returned at once rather than after waiting, since only a
    /// delete (or the disk) can make room now.
    #[error(
        "object store full: no room for object {key} ({size} bytes), and spilling to {dir} \
         failed: {source}"
    )]
    SpillFailed {
        /// The key.
        key: ObjectKey,
        /// Requested size in bytes.
        size: usize,
        /// The spill directory.
        dir: String,
        /// The OS error of the failed spill.
        source: io::Error,
    },
    /// Reading a spilled object back failed; the object stays spilled.
    #[error("restore of object {key} from its spill file: {source}")]
    Restore {
        /// The key.
        key: ObjectKey,
        /// The OS error.
        source: io::Error,
    },
}

/// A failed [`Store::put`](crate::Store::put): the error and the caller's value, handed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PutError<B> {
    /// Why the put failed.
    #[source]
    pub error: StoreError,
    /// The value that was not stored.
    pub value: B,
}

impl<B> PutError<B> {
    /// The value that was not stored.
    pub fn into_value(self) -> B {
        self.value
    }
}
