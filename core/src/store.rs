//! The runtime's shared-memory object store: one [`manta_store::Store`] per runtime, and the
//! handle that ties a store object's lifetime to the object cells holding it.
//!
//! Values whose encoding is larger than `max_inline_object_bytes` live here instead of in an
//! inline `Bytes` (see [`codec`](crate::codec) for the choice and the one-copy write). The store
//! knows nothing of Manta's ids: every stored object gets a fresh [`ObjectKey`] from this
//! runtime's counter, so a task retried or an argument encoded twice can never collide.
//!
//! # The stored-object protocol
//!
//! 1. **Write.** [`ObjectStore::write`] creates an object of the exact encoded size on the
//!    writing thread's NUMA region ([`Store::local_region`]; the store falls back to another
//!    region when that one is full), waiting up to `object_store_put_timeout` for space (the
//!    store evicts, spills and waits for pins to be released), lets the encoder fill the buffer in place, and seals it. An encoder error drops
//!    the unsealed `Created` handle, which aborts the object. The result is one
//!    [`StoredObject`], shared by `Arc` between the cell's value and any task argument slots.
//! 2. **Read.** [`StoredObject::read`] pins the object for the duration of one closure (a
//!    decode) and unpins it after; [`StoredObject::pin`] returns a [`SharedPin`] that the typed
//!    [`View`](crate::View) keeps, together with an `Arc` of the `StoredObject`, for as long as
//!    the view lives. No pin outlives its reader, so an object nobody is reading can be spilled
//!    and is restored transparently by the next read.
//! 3. **Delete.** When the last `Arc<StoredObject>` drops, the object is deleted from the store.
//!    No pin of this process can exist then: every pin is held by a reader that holds (or
//!    borrows) that same `Arc`. The store answers `Busy` only while a spill batch is writing the
//!    object out; the drop waits for that bounded I/O to finish, then deletes.
//! 4. **Shutdown.** Each `StoredObject` holds an `Arc` of its [`ObjectStore`], so the arena
//!    outlives every object and every view, even past `shutdown`. Nothing is left on disk:
//!    spill files are unlinked from birth (`manta_store`'s `spill.rs`), straight in the spill
//!    directory (`object_spilling_directory`, default the system's temporary directory), so
//!    no per-process directory is made that a killed process could leave behind.
//!
//! # Objects in another process's arena
//!
//! A `StoredObject` may also stand for an object of another process of this host whose arena
//! this process attached ([`StoredObject::attached`], made by the cluster's object manager):
//! the holder pinned the object for this process, and the [`AttachedPin`] releases that pin
//! (through a callback: a one-way message to the holder) when the last `Arc` of the
//! `StoredObject` and the last view of it drop. Reads are slices of the read-only mapping,
//! bounds-checked when the pin arrives; such an object is never deleted from this process's
//! store (it is not in it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use manta_store::{
    AttachedArena, CopyKind, Location, ObjectKey, PageKind, PageRequest, ReadHold, SharedPin,
    Store, StoreConfig, StoreError,
};

use crate::config::Resolved;
use crate::error::Error;
use crate::id::ObjectId;
use crate::sync::{Arc, AtomicU64, Ordering, thread};

/// How long dropping an object waits for a spill batch that is writing it out.
const DELETE_BUSY_WAIT: Duration = Duration::from_secs(30);

/// A runtime's object store: the arena and a key counter.
#[derive(Debug)]
pub(crate) struct ObjectStore {
    store: Arc<Store>,
    next_key: AtomicU64,
}

/// The store's part of [`NodeStatus`](crate::NodeStatus).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ObjectStoreStatus {
    /// Arena size in bytes; on a node's shared arena, the bytes granted to this process now.
    pub capacity: usize,
    /// The size of the node's shared arena this store allocates in (`None`: the store has an
    /// arena of its own).
    pub node_capacity: Option<usize>,
    /// Bytes allocated to objects now.
    pub used: usize,
    /// Objects in the store (in memory or spilled).
    pub objects: usize,
    /// Objects currently on disk only.
    pub spilled_objects: usize,
    /// Bytes on disk for them.
    pub spilled_bytes: usize,
    /// Objects spilled since start.
    pub spills: u64,
    /// Objects restored from disk since start.
    pub restores: u64,
    /// The pages backing the arena.
    pub page_kind: PageKind,
    /// NUMA nodes the arena spans.
    pub numa_nodes: usize,
    /// The NUMA node each span of the arena is bound to (empty: one span bound to no node).
    pub numa_node_ids: Vec<u32>,
    /// Objects created (or restored) on the NUMA region of the thread that wrote (or read) them.
    pub numa_near: u64,
    /// Objects placed on another region because that thread's region was full.
    pub numa_far: u64,
}

impl ObjectStore {
    /// Creates the store from the configuration catalogue's `object_store_*` entries: on the
    /// node's shared arena when `node` (a connection to the raylet's arena) is given, else an
    /// arena of its own. Falls back to 4 KiB pages where the node has no (or too few) huge pages.
    pub(crate) fn open(
        config: &Resolved,
        node: Option<manta_store::NodeClient>,
    ) -> Result<ObjectStore, Error> {
        // Spill files are unlinked from birth: they need no directory of their own.
        let spill_dir = if config.object_spilling_directory.is_empty() {
            std::env::temp_dir()
        } else {
            PathBuf::from(&config.object_spilling_directory)
        };
        let store_config = store_config(config, Some(spill_dir));
        let store = match node {
            Some(client) => Store::on_node(client, store_config),
            None => Store::new(store_config),
        };
        let store = store.map_err(|e| Error::ObjectStore {
            object: ObjectId::from_u64(0),
            message: format!("creating the object store: {e}"),
        })?;
        Ok(ObjectStore {
            store: Arc::new(store),
            next_key: AtomicU64::new(1),
        })
    }

    /// Step 1: an object of `size` bytes, filled in place by `fill`, sealed.
    pub(crate) fn write(
        self: &Arc<Self>,
        size: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<Arc<StoredObject>, Error> {
        let key = ObjectKey::from_u128(self.next_key.fetch_add(1, Ordering::Relaxed) as u128);
        let near = self.store.local_region();
        let mut created = self
            .store
            .create_near(key, size, CopyKind::Primary, near)
            .map_err(|e| store_error(ObjectId::from_u64(0), e))?;
        fill(created.as_mut_slice())?;
        created
            .seal()
            .map_err(|e| store_error(ObjectId::from_u64(0), e))?;
        Ok(Arc::new(StoredObject::Local {
            store: self.clone(),
            key,
            len: size,
        }))
    }

    /// Step 1 for bytes that arrive over time (a transfer from another node): an object of
    /// `size` bytes to fill through [`Writing::as_mut_slice`] and then [`Writing::seal`].
    pub(crate) fn create(self: &Arc<Self>, size: usize) -> Result<Writing, Error> {
        let key = ObjectKey::from_u128(self.next_key.fetch_add(1, Ordering::Relaxed) as u128);
        let near = self.store.local_region();
        let created = self
            .store
            .create_owned(key, size, CopyKind::Primary, near)
            .map_err(|e| store_error(ObjectId::from_u64(0), e))?;
        Ok(Writing {
            store: self.clone(),
            created,
        })
    }

    /// The node arena's read-only mapping (on this process's own file description, for read
    /// locks) and its identity, when this store allocates in its node's shared arena.
    pub(crate) fn node_reader(&self) -> Option<(Arc<AttachedArena>, (u64, u64))> {
        let node = self.store.node()?;
        Some((node.reader(), node.arena_id()))
    }

    /// The arena (its memfd and length), to hand to another process of this host that
    /// attaches it.
    pub(crate) fn arena(&self) -> &manta_store::Arena {
        self.store.arena()
    }

    pub(crate) fn status(&self) -> ObjectStoreStatus {
        let s = self.store.stats();
        ObjectStoreStatus {
            capacity: s.capacity,
            node_capacity: s.node_capacity,
            used: s.used,
            objects: s.objects,
            spilled_objects: s.spilled_objects,
            spilled_bytes: s.spilled_bytes,
            spills: s.spills,
            restores: s.restores,
            page_kind: s.page_kind,
            numa_nodes: s.numa_nodes,
            numa_node_ids: self.store.region_nodes().to_vec(),
            numa_near: s.numa_near,
            numa_far: s.numa_far,
        }
    }
}

/// The store's configuration from the catalogue's `object_store_*` entries (`spill_dir`: the
/// directory to spill to; `None` leaves the store's default, for an arena that never spills).
pub(crate) fn store_config(config: &Resolved, spill_dir: Option<PathBuf>) -> StoreConfig {
    let defaults = StoreConfig::default();
    StoreConfig {
        capacity: config.object_store_memory,
        pages: if config.object_store_huge_pages {
            PageRequest::Auto
        } else {
            PageRequest::Small
        },
        prefault: config.object_store_prefault,
        spill_threshold: config.object_spilling_threshold,
        spill_dir: spill_dir.unwrap_or(defaults.spill_dir.clone()),
        create_timeout: config.object_store_put_timeout,
        // A node past u32 (only a hand-made CpuList has one) becomes u32::MAX, which the store
        // refuses to bind (a warning, one unbound span).
        numa_nodes: (!config.object_store_numa_nodes.is_empty()).then(|| {
            config
                .object_store_numa_nodes
                .0
                .iter()
                .map(|&n| u32::try_from(n).unwrap_or(u32::MAX))
                .collect()
        }),
        ..defaults
    }
}

/// An object being written by [`ObjectStore::create`]; dropping it unsealed aborts it.
#[derive(Debug)]
pub(crate) struct Writing {
    store: Arc<ObjectStore>,
    created: manta_store::CreatedOwned,
}

impl Writing {
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        self.created.as_mut_slice()
    }

    pub(crate) fn seal(self) -> Result<Arc<StoredObject>, Error> {
        let key = self.created.key();
        let len = self.created.len();
        self.created
            .seal()
            .map_err(|e| store_error(ObjectId::from_u64(0), e))?;
        Ok(Arc::new(StoredObject::Local {
            store: self.store,
            key,
            len,
        }))
    }
}

/// One sealed object: in this process's store (deleted from it when the last `Arc` of this
/// drops), or pinned for this process in another process's arena that it attached.
#[derive(Debug)]
pub(crate) enum StoredObject {
    /// In this runtime's own store.
    Local {
        store: Arc<ObjectStore>,
        key: ObjectKey,
        len: usize,
    },
    /// In the attached arena of another process of this host, pinned there for this process.
    Attached(Arc<AttachedPin>),
}

/// A pin on an object of another process's arena, held for this process: the mapping, where
/// the object lies in it (checked to be inside it), and what releases the pin at its holder.
pub(crate) struct AttachedPin {
    arena: Arc<AttachedArena>,
    location: Location,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// On the node's shared arena, a read lock on the object's range of the memfd while this
    /// pin lives: should the holder die, the node's raylet does not hand the range to another
    /// process before it is dropped (`None` elsewhere — a holder's own arena stays mapped
    /// here whatever becomes of the holder — or if the lock could not be taken; logged by the
    /// store).
    _hold: Option<ReadHold>,
}

impl std::fmt::Debug for AttachedPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedPin")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl AttachedPin {
    /// The pin the holder took on `location` of `arena`, read-locked there if `node_arena`;
    /// `release` runs when it drops. `None` (and `release` is run at once) if `location` is not
    /// inside the arena.
    pub(crate) fn new(
        arena: Arc<AttachedArena>,
        location: Location,
        node_arena: bool,
        release: Box<dyn FnOnce() + Send + Sync>,
    ) -> Option<Arc<AttachedPin>> {
        if location.len == 0 || arena.bytes(location).is_none() {
            release();
            return None;
        }
        let hold = if node_arena {
            arena.hold(location)
        } else {
            None
        };
        Some(Arc::new(AttachedPin {
            arena,
            location,
            release: Some(release),
            _hold: hold,
        }))
    }

    fn bytes(&self) -> &[u8] {
        // Checked in `new` against the same mapping, which never shrinks (its memfd is sealed).
        self.arena.bytes(self.location).unwrap_or(&[])
    }
}

impl Drop for AttachedPin {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A stored object's bytes, pinned while this guard lives (typed views keep one).
pub(crate) enum StoredPin {
    Local(SharedPin),
    Attached(Arc<AttachedPin>),
}

impl std::ops::Deref for StoredPin {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StoredPin::Local(pin) => pin,
            StoredPin::Attached(pin) => pin.bytes(),
        }
    }
}

impl StoredObject {
    /// An object pinned for this process in another process's attached arena.
    pub(crate) fn attached(pin: Arc<AttachedPin>) -> Arc<StoredObject> {
        Arc::new(StoredObject::Attached(pin))
    }

    /// The object's encoded length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            StoredObject::Local { len, .. } => *len,
            StoredObject::Attached(pin) => pin.location.len as usize,
        }
    }

    /// Whether the bytes lie in another process's arena.
    pub(crate) fn is_attached(&self) -> bool {
        matches!(self, StoredObject::Attached(_))
    }

    /// Step 2: runs `f` on the object's bytes, pinned (restored from disk first if spilled).
    pub(crate) fn read<R>(
        &self,
        object: ObjectId,
        f: impl FnOnce(&[u8]) -> Result<R, Error>,
    ) -> Result<R, Error> {
        f(&self.pin(object)?)
    }

    /// Step 2: a pin that lives as long as the returned guard (for views).
    pub(crate) fn pin(&self, object: ObjectId) -> Result<StoredPin, Error> {
        match self {
            StoredObject::Local { store, key, .. } => store
                .store
                .get_shared(*key)
                .map(StoredPin::Local)
                .map_err(|e| store_error(object, e)),
            StoredObject::Attached(pin) => Ok(StoredPin::Attached(pin.clone())),
        }
    }

    /// A pin of this process's own store on the object, with its place in the arena, to hold
    /// on behalf of another process that attached the arena (`None` for an attached object).
    pub(crate) fn pin_for_peer(&self, object: ObjectId) -> Option<Result<SharedPin, Error>> {
        match self {
            StoredObject::Local { store, key, .. } => Some(
                store
                    .store
                    .get_shared(*key)
                    .map_err(|e| store_error(object, e)),
            ),
            StoredObject::Attached(_) => None,
        }
    }
}

impl Drop for StoredObject {
    fn drop(&mut self) {
        // Step 3 (an attached object releases its holder's pin by dropping its `AttachedPin`).
        let StoredObject::Local { store, key, .. } = self else {
            return;
        };
        let deadline = Instant::now() + DELETE_BUSY_WAIT;
        loop {
            match store.store.delete(*key) {
                Ok(()) | Err(StoreError::NotFound { .. }) => return,
                Err(StoreError::Busy { .. }) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "could not delete a stored object");
                    return;
                }
            }
        }
    }
}

/// Core's error for a store failure concerning `object` (`ObjectId 0` when not yet known; see
/// [`Error::for_object`]).
fn store_error(object: ObjectId, e: StoreError) -> Error {
    match e {
        StoreError::ObjectStoreFull {
            size,
            waited,
            used,
            pinned,
            capacity,
            ..
        } => Error::ObjectStoreFull {
            object,
            size,
            used,
            pinned,
            capacity,
            waited,
        },
        other => Error::ObjectStore {
            object,
            message: other.to_string(),
        },
    }
}
