//! The store: arena + allocator + object table + spiller, and the object state machine.
//!
//! # Standalone or on a node arena
//! [`Store::new`] makes a store with an arena of its own: all of it is the allocator's, one
//! extent per NUMA region. [`Store::on_node`] makes a store on the node's shared arena
//! (`node.rs`): it starts with no space; its allocator is a growable list of extents, each a
//! run of granules the node granted it, tagged with the NUMA span it lies in. Step 5 then
//! first asks the node for a grant (a shared `node_extent` for small objects, a large one's
//! size in whole granules; on the caller's NUMA node if it can) before spilling its own
//! objects, and an extent left wholly free is given back (all but one spare of at most
//! `node_extent`). The state machine below is the same in both modes:
//! it never depends on where a block came from. On a node arena the proactive threshold of
//! step 5 is node-wide (the node's granted bytes against `spill_threshold` of its capacity, as
//! of the latest reply from the node). A dropped store gives nothing back explicitly: closing
//! its connection makes its granules dead-held, and the node frees them once no reader in
//! another process read-locks them (`node.rs`, "Why read locks").
//!
//! # The object state machine
//!
//! ```text
//!            create                 seal                   last unpin
//!   (none) ────────▶ Created ────────────▶ Sealed, pinned ◀─────────▶ Sealed, released
//!                      │  drop unsealed /        ▲  get / pin             │      │
//!                      ▼  delete if detached     │                 spill  │      │ evict (secondary)
//!                   (none)                 Restoring ◀──── get ── Spilled ◀─┘      ▼ / delete
//!                                                                    │           (none)
//!                                                                    └─ delete ─▶ (none)
//! ```
//!
//! 1. **Create.** `create(key, size)` reserves a block (step 5 if none is free), inserts the
//!    entry as `Created` and returns the only [`Created`] handle. A `Created` object is invisible:
//!    `get`/`pin` answer `NotSealed`, eviction and spilling skip it, `delete` refuses it unless
//!    its writer detached to another process. Its bytes belong to the handle alone.
//! 2. **Seal.** `Created::seal` (consuming the handle) or `Store::seal(key)` (detached writers)
//!    turns it `Sealed` and makes it most recently used. From here its bytes never change until
//!    its block is freed.
//! 3. **Pin / release.** `get` (guard) and `pin` (by key, for other processes) add a pin; the
//!    guard's drop and `release` remove one. While `pins > 0` the block is neither freed nor
//!    spilled nor evicted, so a view's slice stays valid. `release` with no pin is `NotPinned`.
//!    A sealed object with no pins is *released*: a candidate for step 5.
//! 4. **Delete.** Only a released (or spilled) object can be deleted; its block returns to the
//!    allocator, its spill slot (if any) is dropped.
//! 5. **Pressure.** When a block cannot be had (on a node arena: nor granted by the node), or
//!    use exceeds `spill_threshold`, the policy (`pressure`) picks released objects in LRU
//!    order (past the threshold: enough to bring use `spill_min_batch` below it, so that the
//!    next puts spill nothing; a batch that spills writes at least `spill_min_batch`):
//!    secondary copies are evicted (removed, like a delete), primaries are spilled: (a) under
//!    the lock they are marked `spilling`;
//!    (b) outside it their blocks are written to disk (readers may still pin them: the bytes
//!    are immutable); (c) under the lock, each object still unpinned becomes `Spilled` and its
//!    block is freed; one pinned meanwhile stays `Sealed` and its copy on disk is dropped. If
//!    nothing can be freed the creator waits (condition variable, woken by every unpin, delete,
//!    abort and spill; on a node arena also re-asking the node every 20 ms, since other
//!    processes' give-backs wake nobody here) until `create_timeout`, then fails with
//!    `ObjectStoreFull`. Extents emptied by frees go back to the node after the table lock is
//!    released (a round trip to the node is never made under it).
//! 6. **Restore.** `get` of a `Spilled` object marks it `Restoring` (other getters wait),
//!    reserves a block (step 5; on the getter's NUMA region if it has room), reads the file
//!    into it outside the lock, then makes it `Sealed` with the getter's pin. On failure it goes
//!    back to `Spilled`.
//!
//! # Why it is correct
//! Every transition happens under the table lock, so each entry is in exactly one state and the
//! checks in steps 3–6 see a consistent pin count. The only accesses to arena bytes outside the
//! lock are the writer's (`Created`: nobody else may touch), readers' (`pins > 0`: the block
//! cannot be freed), the spiller's (reads bytes of an immutable object whose entry cannot be
//! deleted while `spilling`, and whose block is only freed in (c), after the I/O completed) and
//! the restorer's (`Restoring`: the block is not yet reachable by anyone else). On a node
//! arena an extent is given back only while no block of it is allocated (checked and removed
//! under the allocator's exclusive lock, so no alloc races it), hence never under any of
//! these accesses. Lock order: table, then allocator; the spill ring's lock and the closer's are never held with the
//! table's. A restored or deleted object's spill slot goes back to the spiller after the table
//! lock is released, which keeps its emptied file for reuse or closes it on its closer thread:
//! closing an unlinked file frees its blocks, which takes milliseconds (`spill.rs`).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::alloc::{Allocator, Block, Regions};
use crate::arena::{Arena, PageKind};
use crate::config::StoreConfig;
use crate::error::{PutError, StoreError};
use crate::handle::{Created, CreatedOwned, Pinned, Sealed, SharedPin, View};
use crate::key::{CopyKind, Location, ObjectKey};
use crate::node::NodeClient;
use crate::numa;
use crate::pressure;
use crate::spill::{SpillItem, SpillSlot, Spiller};
use crate::table::{Entry, IoTotals, State, Table};

/// One node's object store. Shared by reference between threads (`Store: Sync`).
#[derive(Debug)]
pub struct Store {
    backing: Backing,
    alloc: Regions,
    table: Mutex<Table>,
    /// Signalled after every change that can free space or finish a restore.
    changed: Condvar,
    spiller: Spiller,
    config: StoreConfig,
    /// The NUMA node each allocator region is bound to (empty: one unbound region).
    region_nodes: Vec<u32>,
}

/// Where the store's arena comes from.
#[derive(Debug)]
enum Backing {
    /// Its own arena, all of it its allocator's.
    Own(Arena),
    /// The node's arena, in the extents granted through the client.
    Node(NodeClient),
}

/// A snapshot of the store's use, for `manta status`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StoreStats {
    /// Arena size in bytes; on a node arena, the bytes granted to this store now.
    pub capacity: usize,
    /// Bytes allocated to objects (created, sealed, restoring).
    pub used: usize,
    /// Largest block that could be allocated now.
    pub largest_free: usize,
    /// Objects known (any state).
    pub objects: usize,
    /// Objects currently on disk only.
    pub spilled_objects: usize,
    /// Bytes on disk for them.
    pub spilled_bytes: usize,
    /// Spills performed since start (objects).
    pub spills: u64,
    /// Restores performed since start.
    pub restores: u64,
    /// Secondary copies evicted since start.
    pub evictions: u64,
    /// Pages backing the arena.
    pub page_kind: PageKind,
    /// On a node arena: the node's capacity in bytes (whole granules); `None` standalone.
    pub node_capacity: Option<usize>,
    /// On a node arena: bytes the node has granted to all its processes, as of this store's
    /// latest exchange with the node; `None` standalone.
    pub node_granted: Option<usize>,
    /// NUMA nodes the arena spans (1 without the `hwloc` feature).
    pub numa_nodes: usize,
    /// Blocks (creates and restores) placed on the NUMA region asked for, the caller's.
    pub numa_near: u64,
    /// Blocks placed on another region because the one asked for had no room.
    pub numa_far: u64,
    /// Bytes written to spill files since start, and the time those writes took (the I/O of
    /// step 5 (b), no lock held): their quotient is the spill throughput.
    pub spill_io: IoTotals,
    /// Bytes read back from spill files since start, and the time those reads took.
    pub restore_io: IoTotals,
}

impl Store {
    /// Creates the arena (pre-faulted if configured) and an empty table.
    pub fn new(config: StoreConfig) -> Result<Store, StoreError> {
        let mut arena = Arena::create(config.capacity, config.pages)?;
        // Bind before touching: NUMA policy applies to pages when they are first faulted.
        let placement = numa::place(&arena, config.numa_nodes.as_deref());
        if config.prefault {
            arena.prefault();
        }
        let alloc = Regions::new(&placement.spans);
        let spiller = Spiller::new(&config);
        info!(capacity = arena.len(), pages = %arena.page_kind(), spill_dir = %config.spill_dir.display(), "object store ready");
        Ok(Store {
            backing: Backing::Own(arena),
            alloc,
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            spiller,
            config,
            region_nodes: placement.nodes,
        })
    }

    /// A store whose blocks come from the node's arena through `client`: it starts with no
    /// space and asks the node for granules as objects need them (step 5), giving wholly free
    /// ones back. `config`'s capacity, pages, prefault, NUMA nodes and granule are the node's
    /// business and ignored here; its spill and timeout settings apply.
    pub fn on_node(client: NodeClient, config: StoreConfig) -> Result<Store, StoreError> {
        let alloc = Regions::growable(client.regions());
        let region_nodes = client.region_nodes();
        let spiller = Spiller::new(&config);
        info!(node_capacity = client.capacity(), granule = client.granule(), pages = %client.page_kind(), spill_dir = %config.spill_dir.display(), "object store on the node arena ready");
        Ok(Store {
            backing: Backing::Node(client),
            alloc,
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            spiller,
            config,
            region_nodes,
        })
    }

    /// The node client when this store lives on a node arena.
    pub fn node(&self) -> Option<&NodeClient> {
        match &self.backing {
            Backing::Own(_) => None,
            Backing::Node(client) => Some(client),
        }
    }

    /// The NUMA region (an index below [`StoreStats::numa_nodes`]) of the calling thread's
    /// node, for [`Store::create_near`]: `Some(0)` when the arena is one region (no system
    /// call then), `None` when the thread's node holds no region. Costs one `getcpu` otherwise.
    pub fn local_region(&self) -> Option<usize> {
        numa::region_for(&self.region_nodes, numa::current_node)
    }

    /// The NUMA node each region of the arena is bound to, in region order; empty when the
    /// arena is one region bound to no node.
    pub fn region_nodes(&self) -> &[u32] {
        &self.region_nodes
    }

    /// The arena (its memfd to send to other processes, its page kind): the store's own, or
    /// the node's as this process maps it.
    pub fn arena(&self) -> &Arena {
        match &self.backing {
            Backing::Own(arena) => arena,
            Backing::Node(client) => client.arena(),
        }
    }

    /// The configuration the store was made with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub(crate) fn arena_ptr(&self, offset: usize) -> *mut u8 {
        let arena = self.arena();
        debug_assert!(offset <= arena.len());
        arena.base().wrapping_add(offset)
    }

    /// The table lock. A panic under it cannot leave an entry half-changed (each transition
    /// mutates after its checks, and the allocator call it makes does not panic), so poisoning
    /// is ignored.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 1 for a primary copy.
    pub fn create(&self, key: ObjectKey, size: usize) -> Result<Created<'_>, StoreError> {
        self.create_with(key, size, CopyKind::Primary)
    }

    /// Step 1: a writable handle on a new object of `size` bytes.
    ///
    /// Waits up to `create_timeout` for space (evicting, spilling, waiting for releases).
    pub fn create_with(
        &self,
        key: ObjectKey,
        size: usize,
        copy: CopyKind,
    ) -> Result<Created<'_>, StoreError> {
        self.create_near(key, size, copy, None)
    }

    /// Step 1, placing the object on NUMA region `numa` (the consumer's node, as an index
    /// below [`StoreStats::numa_nodes`]) when it has room, else on any region.
    pub fn create_near(
        &self,
        key: ObjectKey,
        size: usize,
        copy: CopyKind,
        numa: Option<usize>,
    ) -> Result<Created<'_>, StoreError> {
        if size == 0 {
            return Err(StoreError::ZeroSize { key });
        }
        let max_object = self.max_object();
        if Allocator::round_up(size) > max_object {
            return Err(StoreError::TooLarge {
                key,
                size,
                capacity: max_object,
            });
        }
        if self.lock().entries.contains_key(&key) {
            return Err(StoreError::AlreadyExists { key });
        }
        let block = self.reserve(key, size, numa)?;
        let offset = block.offset();
        {
            let mut table = self.lock();
            if table.entries.contains_key(&key) {
                self.alloc.free(block);
                drop(table);
                self.trim();
                return Err(StoreError::AlreadyExists { key });
            }
            self.count_placement(&mut table, offset, numa);
            table.entries.insert(key, Entry::new(size, copy, block));
        }
        self.relieve_threshold();
        Ok(Created::new(self, key, offset, size))
    }

    /// [`Store::create_near`], returning a handle that owns an `Arc` of the store.
    pub fn create_owned(
        self: &Arc<Self>,
        key: ObjectKey,
        size: usize,
        copy: CopyKind,
        numa: Option<usize>,
    ) -> Result<CreatedOwned, StoreError> {
        let created = self.create_near(key, size, copy, numa)?;
        Ok(created.into_owned(self.clone()))
    }

    /// Counts whether the block at `offset` landed on the region `asked` for.
    fn count_placement(&self, table: &mut Table, offset: usize, asked: Option<usize>) {
        if let Some(asked) = asked {
            if self.alloc.region_of(offset) == Some(asked) {
                table.counters.numa_near += 1;
            } else {
                table.counters.numa_far += 1;
            }
        }
    }

    /// create + copy + seal. On failure the value is handed back.
    pub fn put<B: AsRef<[u8]>>(&self, key: ObjectKey, value: B) -> Result<Sealed, PutError<B>> {
        let mut created = match self.create(key, value.as_ref().len()) {
            Ok(c) => c,
            Err(error) => return Err(PutError { error, value }),
        };
        created.write(value.as_ref());
        created.seal().map_err(|error| PutError { error, value })
    }

    /// Step 2 by key, for a writer that [detached](Created::detach).
    pub fn seal(&self, key: ObjectKey) -> Result<(), StoreError> {
        let mut table = self.lock();
        let entry = table
            .entries
            .get_mut(&key)
            .ok_or(StoreError::NotFound { key })?;
        let State::Created { .. } = entry.state else {
            return Err(StoreError::AlreadySealed { key });
        };
        let State::Created { block, .. } = std::mem::replace(&mut entry.state, State::Restoring)
        else {
            unreachable!("checked just above under the same lock")
        };
        entry.state = State::Sealed {
            block,
            spilling: false,
        };
        table.touch(key);
        Ok(())
    }

    pub(crate) fn mark_detached(&self, key: ObjectKey) {
        if let Some(Entry {
            state: State::Created { detached, .. },
            ..
        }) = self.lock().entries.get_mut(&key)
        {
            *detached = true;
        }
    }

    /// A `Created` handle dropped unsealed: forget the object, free its block.
    pub(crate) fn abort_created(&self, key: ObjectKey) {
        let mut table = self.lock();
        if let Some(Entry {
            state: State::Created { .. },
            ..
        }) = table.entries.get(&key)
            && let Some(Entry {
                state: State::Created { block, .. },
                ..
            }) = table.remove(key)
        {
            self.alloc.free(block);
            self.changed.notify_all();
            drop(table);
            self.trim();
        }
    }

    /// Step 3: a pinned zero-copy view of a sealed object, restoring it from disk if spilled
    /// (step 6).
    pub fn get(&self, key: ObjectKey) -> Result<Pinned<'_>, StoreError> {
        let mut table = self.lock();
        loop {
            let entry = table
                .entries
                .get_mut(&key)
                .ok_or(StoreError::NotFound { key })?;
            match &entry.state {
                State::Created { .. } => return Err(StoreError::NotSealed { key }),
                State::Sealed { block, .. } => {
                    let (offset, size) = (block.offset(), entry.size);
                    entry.pins += 1;
                    table.touch(key);
                    return Ok(Pinned::new(self, key, offset, size));
                }
                State::Restoring => {
                    table = self.changed.wait(table).unwrap_or_else(|p| p.into_inner());
                }
                State::Spilled { .. } => {
                    let State::Spilled { slot } =
                        std::mem::replace(&mut entry.state, State::Restoring)
                    else {
                        unreachable!("matched Spilled just above under the same lock")
                    };
                    let size = entry.size;
                    drop(table);
                    return self.restore(key, size, slot);
                }
            }
        }
    }

    /// [`Store::get`] returning a guard that owns an `Arc` of the store (no lifetime), for
    /// views kept in values.
    pub fn get_shared(self: &Arc<Self>, key: ObjectKey) -> Result<SharedPin, StoreError> {
        let pin = self.get(key)?;
        Ok(SharedPin::new(self.clone(), pin))
    }

    /// [`Store::get`] as a slice of plain-old-data `T` (no copy).
    pub fn get_view<T: bytemuck::Pod>(&self, key: ObjectKey) -> Result<View<'_, T>, StoreError> {
        View::new(self.get(key)?)
    }

    /// Step 3 by key, for a reader in another process: pins the object (restoring it if
    /// spilled) and says where it lies. Undo with [`Store::release`].
    pub fn pin(&self, key: ObjectKey) -> Result<Location, StoreError> {
        Ok(self.get(key)?.leak())
    }

    /// Step 3: drops one pin taken with [`Store::pin`] (or leaked from a guard).
    pub fn release(&self, key: ObjectKey) -> Result<(), StoreError> {
        let mut table = self.lock();
        let entry = table
            .entries
            .get_mut(&key)
            .ok_or(StoreError::NotFound { key })?;
        if entry.pins == 0 {
            return Err(StoreError::NotPinned { key });
        }
        entry.pins -= 1;
        if entry.pins == 0 {
            self.changed.notify_all();
        }
        Ok(())
    }

    /// A guard's drop: its pin exists, so release cannot fail.
    pub(crate) fn unpin(&self, key: ObjectKey) {
        let released = self.release(key);
        debug_assert!(released.is_ok(), "a guard's pin vanished: {released:?}");
    }

    /// Step 4: removes a released (or spilled) object.
    pub fn delete(&self, key: ObjectKey) -> Result<(), StoreError> {
        let mut table = self.lock();
        let entry = table
            .entries
            .get(&key)
            .ok_or(StoreError::NotFound { key })?;
        if entry.pins > 0 {
            return Err(StoreError::StillPinned {
                key,
                pins: entry.pins,
            });
        }
        match entry.state {
            State::Created {
                detached: false, ..
            } => return Err(StoreError::NotSealed { key }),
            State::Restoring | State::Sealed { spilling: true, .. } => {
                return Err(StoreError::Busy { key });
            }
            _ => {}
        }
        let mut spilled = None;
        if let Some(entry) = table.remove(key) {
            match entry.state {
                State::Created { block, .. } | State::Sealed { block, .. } => {
                    self.alloc.free(block)
                }
                State::Spilled { slot } => spilled = Some(slot),
                State::Restoring => {}
            }
        }
        self.changed.notify_all();
        drop(table);
        // Outside the lock: the spiller reuses the file or closes it off this thread (closing an
        // unlinked file frees its blocks: milliseconds).
        if let Some(slot) = spilled {
            self.spiller.release(slot);
        }
        self.trim();
        Ok(())
    }

    /// Whether the store holds `key` (in any state).
    pub fn contains(&self, key: ObjectKey) -> bool {
        self.lock().entries.contains_key(&key)
    }

    /// Whether `key` is on disk only.
    pub fn is_spilled(&self, key: ObjectKey) -> bool {
        matches!(
            self.lock().entries.get(&key),
            Some(Entry {
                state: State::Spilled { .. },
                ..
            })
        )
    }

    /// A snapshot of use and counters.
    pub fn stats(&self) -> StoreStats {
        let table = self.lock();
        let (mut spilled_objects, mut spilled_bytes) = (0, 0);
        for e in table.entries.values() {
            if let State::Spilled { slot } = &e.state {
                spilled_objects += 1;
                spilled_bytes += slot.len();
            }
        }
        StoreStats {
            capacity: self.alloc.capacity(),
            used: self.alloc.used_bytes(),
            largest_free: self.alloc.largest_free(),
            objects: table.entries.len(),
            spilled_objects,
            spilled_bytes,
            spills: table.counters.spilled,
            restores: table.counters.restored,
            evictions: table.counters.evicted,
            page_kind: self.arena().page_kind(),
            node_capacity: self.node().map(|c| c.node_usage().1),
            node_granted: self.node().map(|c| c.node_usage().0),
            numa_nodes: self.alloc.len(),
            numa_near: table.counters.numa_near,
            numa_far: table.counters.numa_far,
            spill_io: table.counters.spill_io,
            restore_io: table.counters.restore_io,
        }
    }

    /// A block of `size` bytes, making room (step 5) and waiting for it up to `create_timeout`.
    fn reserve(
        &self,
        key: ObjectKey,
        size: usize,
        numa: Option<usize>,
    ) -> Result<Block, StoreError> {
        let start = Instant::now();
        let deadline = start + self.config.create_timeout;
        loop {
            if let Some(block) = self.alloc.alloc(size, numa) {
                return Ok(block);
            }
            if Instant::now() < deadline && self.grow(size, numa) {
                continue;
            }
            let free = self.alloc.free_bytes();
            // Short of bytes: free the shortfall. Enough bytes but fragmented: free `size` more.
            let to_free = if free >= size { size } else { size - free };
            let (freed, failed) = self.relieve_or_fail(to_free);
            if let Some(source) = failed
                && freed == 0
            {
                return Err(StoreError::SpillFailed {
                    key,
                    size,
                    dir: self.config.spill_dir.display().to_string(),
                    source,
                });
            }
            if freed > 0 {
                // On a node arena, extents emptied by the spill go back, so that the next
                // grant can make one run of them (and other processes can have them).
                self.trim();
                continue;
            }
            let table = self.lock();
            // Re-checked under the lock: every free happens under it and notifies after, so no
            // wake-up can be lost between this check and the wait.
            if let Some(block) = self.alloc.alloc(size, numa) {
                return Ok(block);
            }
            let now = Instant::now();
            if now >= deadline {
                // On a node arena this store's own extents say nothing of the node's room.
                let (used, capacity, scope) = match self.node() {
                    Some(client) => {
                        let (granted, capacity) = client.node_usage();
                        (granted, capacity, "node arena")
                    }
                    None => (self.alloc.used_bytes(), self.alloc.capacity(), "store"),
                };
                return Err(StoreError::ObjectStoreFull {
                    key,
                    size,
                    waited: now - start,
                    used,
                    pinned: table.stuck_bytes(),
                    capacity,
                    scope,
                });
            }
            // On a node arena, space freed by other processes wakes nobody here: poll the node.
            let round = if self.node().is_some() {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(100)
            };
            let wait = (deadline - now).min(round);
            drop(
                self.changed
                    .wait_timeout(table, wait)
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
    }

    /// The largest object the store could ever hold: its arena's largest region, or on a node
    /// arena the largest grant the node can make (its largest span's whole granules).
    fn max_object(&self) -> usize {
        match &self.backing {
            Backing::Own(_) => self.alloc.max_object(),
            Backing::Node(client) => client.max_grant(),
        }
    }

    /// On a node arena, asks for an extent that holds `size` bytes, on the NUMA node of region
    /// `numa` (else of the calling thread), and adds it. An object under half of
    /// `node_extent` asks for a whole `node_extent` first (small objects share it: one round
    /// trip to the node per many puts), else, or when the node has no such run, for its size
    /// in whole granules (a large object wastes less than one granule, so objects just over a
    /// granule, or half an extent, do not leave half the arena unused). False standalone,
    /// when the node has no room, or when the channel to it failed.
    fn grow(&self, size: usize, numa: Option<usize>) -> bool {
        let Backing::Node(client) = &self.backing else {
            return false;
        };
        let granule = client.granule();
        let exact = Allocator::round_up(size)
            .max(granule)
            .next_multiple_of(granule);
        let extent = self.config.node_extent.next_multiple_of(granule);
        // The region asked for, else the calling thread's (no system call with one region).
        let prefer = numa
            .or_else(|| self.local_region())
            .and_then(|i| self.region_nodes.get(i).copied());
        let shared = (exact < extent / 2).then_some(extent);
        for want in shared.into_iter().chain([exact]) {
            if let Some((offset, len, region)) = client.grant(want, prefer) {
                self.alloc.add(offset, len, region);
                debug!(offset, len, region, "node arena: extent granted");
                return true;
            }
        }
        false
    }

    /// On a node arena, gives back every wholly free extent but one spare of at most
    /// `node_extent` (hysteresis: a store that frees and creates around an extent boundary
    /// does not ask the node each time; larger extents go back at once). Never called with the table lock
    /// held: it may wait for a round trip to the node.
    fn trim(&self) {
        let Backing::Node(client) = &self.backing else {
            return;
        };
        let spare = self.config.node_extent.next_multiple_of(client.granule());
        for (offset, len) in self.alloc.take_free(spare) {
            if client.give_back(offset, len) {
                debug!(offset, len, "node arena: extent given back");
            } else {
                // Still ours as far as the node knows (or the channel is gone): keep using it.
                self.alloc
                    .add(offset, len, self.region_of_span(client, offset));
            }
        }
    }

    /// The region (span index) of `offset` in a node arena.
    fn region_of_span(&self, client: &NodeClient, offset: usize) -> usize {
        client.span_of(offset).unwrap_or(0)
    }

    /// The policy's marks for an arena of `capacity` bytes and this store's configuration.
    fn marks(&self, capacity: usize) -> pressure::Marks {
        pressure::Marks::new(
            capacity,
            self.config.spill_threshold,
            self.config.spill_min_batch,
        )
    }

    /// Spills primaries once use is above `spill_threshold`, down to the low mark below it
    /// (step 5, proactive). On a node arena the threshold is node-wide: when the node's granted
    /// bytes (as of the latest reply) exceed `spill_threshold` of its capacity, this store
    /// spills its own released objects, as much as brings the node to the low mark or all it
    /// uses, and gives the emptied extents back.
    fn relieve_threshold(&self) {
        if let Backing::Node(client) = &self.backing {
            let (granted, capacity) = client.node_usage();
            let excess = self
                .marks(capacity)
                .over_threshold(granted)
                .min(self.alloc.used_bytes());
            if excess > 0 && self.relieve(excess) > 0 {
                self.trim();
            }
            return;
        }
        let to_free = self
            .marks(self.alloc.capacity())
            .over_threshold(self.alloc.used_bytes());
        if to_free > 0 {
            self.relieve(to_free);
        }
    }

    /// Step 5 for everything eligible: evicts every released secondary copy and spills every
    /// released primary now, in one batch, through the very path pressure takes. Returns the
    /// number of objects freed from the arena. For benchmarks and tests; the store spills by
    /// itself under pressure.
    #[doc(hidden)]
    pub fn spill_all(&self) -> usize {
        self.relieve(usize::MAX)
    }

    /// Step 5: evicts and spills released objects to free `to_free` bytes, spilling at least
    /// `spill_min_batch` if it spills at all. Returns the number of objects freed (evicted or
    /// spilled).
    fn relieve(&self, to_free: usize) -> usize {
        self.relieve_or_fail(to_free).0
    }

    /// [`Store::relieve`], also returning the error of a spill that failed (its objects stay
    /// in memory).
    fn relieve_or_fail(&self, to_free: usize) -> (usize, Option<std::io::Error>) {
        let mut victims = Vec::new();
        let mut items = Vec::new();
        let evicted;
        {
            let mut table = self.lock();
            let plan = pressure::plan(to_free, self.config.spill_min_batch, &table.candidates());
            if plan.is_empty() {
                return (0, None);
            }
            evicted = plan.evict.len();
            for key in plan.evict {
                if let Some(Entry {
                    state: State::Sealed { block, .. },
                    ..
                }) = table.remove(key)
                {
                    self.alloc.free(block);
                    table.counters.evicted += 1;
                }
            }
            // (a) mark the primaries.
            for key in plan.spill {
                if let Some(Entry {
                    state: State::Sealed { block, spilling },
                    ..
                }) = table.entries.get_mut(&key)
                {
                    *spilling = true;
                    items.push(SpillItem {
                        ptr: self.arena_ptr(block.offset()),
                        len: block.len(),
                    });
                    victims.push(key);
                }
            }
            if evicted > 0 {
                debug!(evicted, "evicted secondary copies");
                self.changed.notify_all();
            }
        }
        if victims.is_empty() {
            return (evicted, None);
        }
        // (b) write them out, no lock held.
        let started = Instant::now();
        // SAFETY: each item is the block of a sealed object marked `spilling`: its bytes never
        // change, and its block is not freed before (c) below, which runs after this returns.
        let written = unsafe { self.spiller.spill(&items) };
        let took = started.elapsed();
        let bytes: usize = items.iter().map(|i| i.len).sum();
        // (c) free the blocks of those still unpinned.
        let mut table = self.lock();
        let mut spilled = 0;
        let mut failure = None;
        match written {
            Ok(slots) => {
                table.counters.spill_io.add(bytes, took);
                for (key, slot) in victims.into_iter().zip(slots) {
                    let Some(entry) = table.entries.get_mut(&key) else {
                        continue;
                    };
                    let State::Sealed { spilling, .. } = &mut entry.state else {
                        continue;
                    };
                    *spilling = false;
                    if entry.pins > 0 {
                        continue;
                    }
                    if let State::Sealed { block, .. } =
                        std::mem::replace(&mut entry.state, State::Spilled { slot })
                    {
                        self.alloc.free(block);
                    }
                    table.untrack(key);
                    table.counters.spilled += 1;
                    spilled += 1;
                }
                debug!(
                    objects = spilled,
                    bytes,
                    ?took,
                    gbps = bytes as f64 / took.as_secs_f64().max(1e-9) / 1e9,
                    "spilled"
                );
            }
            Err(e) => {
                table.counters.spill_failures += 1;
                // Once, then every 100th: a full disk fails every spill until it has room.
                if table.counters.spill_failures % 100 == 1 {
                    warn!(
                        error = %e,
                        dir = %self.config.spill_dir.display(),
                        objects = victims.len(),
                        failures = table.counters.spill_failures,
                        "spill failed; objects stay in memory"
                    );
                }
                failure = Some(e);
                for key in victims {
                    if let Some(Entry {
                        state: State::Sealed { spilling, .. },
                        ..
                    }) = table.entries.get_mut(&key)
                    {
                        *spilling = false;
                    }
                }
            }
        }
        self.changed.notify_all();
        (evicted + spilled, failure)
    }

    /// Step 6, after `get` marked `key` Restoring and took its slot.
    fn restore(
        &self,
        key: ObjectKey,
        size: usize,
        slot: SpillSlot,
    ) -> Result<Pinned<'_>, StoreError> {
        let put_back = |slot: SpillSlot| {
            let mut table = self.lock();
            if let Some(entry) = table.entries.get_mut(&key) {
                entry.state = State::Spilled { slot };
            }
            self.changed.notify_all();
        };
        // The getter is the consumer: restore onto its NUMA node.
        let near = self.local_region();
        let block = match self.reserve(key, size, near) {
            Ok(b) => b,
            Err(e) => {
                put_back(slot);
                return Err(e);
            }
        };
        debug_assert_eq!(block.len(), slot.len());
        let started = Instant::now();
        // SAFETY: the block was just allocated and is reachable from no entry yet: only this
        // thread touches it until the entry becomes Sealed below.
        let read = unsafe { self.spiller.restore(&slot, self.arena_ptr(block.offset())) };
        let took = started.elapsed();
        if let Err(source) = read {
            self.alloc.free(block);
            put_back(slot);
            self.trim();
            return Err(StoreError::Restore { key, source });
        }
        let offset = block.offset();
        let mut table = self.lock();
        // A Restoring entry cannot be deleted (`Busy`), so it is still here.
        let Some(entry) = table.entries.get_mut(&key) else {
            self.alloc.free(block);
            return Err(StoreError::NotFound { key });
        };
        entry.state = State::Sealed {
            block,
            spilling: false,
        };
        entry.pins += 1;
        table.touch(key);
        table.counters.restored += 1;
        table.counters.restore_io.add(slot.len(), took);
        self.count_placement(&mut table, offset, near);
        self.changed.notify_all();
        drop(table);
        self.spiller.release(slot);
        Ok(Pinned::new(self, key, offset, size))
    }
}
