//! The per-node shared-memory object store.
//!
//! A [`Store`] owns an [`Arena`] of shared memory (a memfd, backed by huge pages when the node
//! has them), an [`Allocator`] that hands out page-aligned blocks of it, and the object
//! table that takes every object through the state machine described in [`store`](crate::Store):
//! created (writable, invisible) → sealed (immutable, readable zero-copy while pinned) → released
//! (unpinned, evictable or spillable) → spilled (bytes on disk, restored on the next `get`).
//!
//! Object ids are opaque [`ObjectKey`]s here: the store knows nothing of tasks, owners or
//! lineage (dependency direction `store ← core`). Its tunables arrive as one [`StoreConfig`]
//! value, filled by core's configuration catalogue; the store reads no environment variables.
//!
//! Other processes on the node attach by receiving the arena's memfd over a Unix socket
//! ([`fdpass`]) and mapping it ([`AttachedArena`]): they read the very bytes the store holds.
//!
//! Or the node has one arena for all its processes: the raylet creates a [`NodeArena`] and
//! [serves](NodeArena::serve) it; each process connects a [`NodeClient`] (which maps it
//! read-write) and runs [`Store::on_node`], whose blocks come from granules the raylet grants.
//! Node-wide use is then bounded by the one arena, and every process reads every object in
//! place through [`NodeClient::reader`], under [`ReadHold`] read locks that keep a dead
//! process's granules from being reused while read.
//!
//! # Module map
//! - [`arena`](Arena): the memfd mapping, page kind, pre-faulting, attached read-only
//!   mappings and their read holds (unsafe: raw mapping).
//! - `node`: the node arena — [`NodeArena`] and its server, [`NodeClient`], the granule table
//!   (sans-I/O) and the wire format; the read-lock argument is its module doc (unsafe: one
//!   `poll`).
//! - `ofd`: open-file-description byte-range locks (unsafe: `fcntl`).
//! - [`PeerLife`]: a pidfd of a Unix socket's peer, to know it has not exited (unsafe:
//!   `getsockopt`, `pidfd_open`, `poll`).
//! - `alloc`: the block allocator, a value, and the store's extents (fixed per NUMA region, or
//!   growing by node grants); design in `src/alloc/README.md` (no unsafe).
//! - `table`: object entries, LRU order and the object state machine (no unsafe).
//! - `handle`: the typed handles [`Created`], [`Sealed`], [`Pinned`], [`SharedPin`], [`View`]
//!   (unsafe: slices into the mapping, argued from the state machine).
//! - `pressure`: the sans-I/O eviction/spill policy.
//! - `spill`: io_uring spill files (unsafe: buffers handed to the kernel).
//! - [`fdpass`]: SCM_RIGHTS over a Unix socket (unsafe: `sendmsg`/`recvmsg`).
//! - [`advise_huge_pages`]: numpy's huge-page advice for memory outside the arena, for
//!   benchmarks that allocate source arrays as numpy does (unsafe: `madvise`).
//! - `numa`: NUMA placement along the configured nodes or hwloc's (feature `hwloc`) and the
//!   calling thread's node
//!   (unsafe: `mbind`, `getcpu`).
#![deny(unsafe_op_in_unsafe_fn)]

mod advice;
mod alloc;
mod arena;
mod config;
mod error;
pub mod fdpass;
mod handle;
mod key;
mod life;
mod node;
mod numa;
mod ofd;
mod pressure;
mod spill;
mod store;
mod table;

pub use advice::{NUMPY_HUGEPAGE_THRESHOLD, advise_huge_pages};
pub use alloc::{Allocator, Block, UNIT};
pub use arena::{Arena, AttachedArena, PageKind, ReadHold};
pub use config::{PageRequest, StoreConfig};
pub use error::{PutError, StoreError};
pub use handle::{Created, CreatedOwned, Pinned, Sealed, SharedPin, View};
pub use key::{CopyKind, Location, ObjectKey};
pub use life::PeerLife;
pub use node::{NodeArena, NodeArenaStats, NodeClient, NodeServer, arena_identity};
pub use store::{Store, StoreStats};
pub use table::IoTotals;
