//! The per-node shared-memory object store.
//!
//! This crate will own the node's object arena: huge-page backed shared memory (memfd), its
//! allocator, the object table (create → seal → get → release), pinning, eviction of secondary
//! copies, spilling of primaries with io_uring, NUMA placement (hwloc) and chunked pull/push
//! between nodes. Object ids are opaque keys to it.
//!
//! **Status:** empty until the store work lands; the embedded runtime keeps every object in the
//! in-process memory store of `manta-core` meanwhile (see `ARCHITECTURE.md`).
