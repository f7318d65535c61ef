//! NUMA placement of the arena.
//!
//! With the `hwloc` feature the arena's pages are spread over the node's NUMA nodes (see the
//! feature's implementation); without it the store says so once in its log and leaves placement
//! to the kernel's first-touch policy.

use tracing::info;

use crate::arena::Arena;

/// Places `arena`'s memory on the node's NUMA nodes; returns how many NUMA nodes it spans.
#[cfg(not(feature = "hwloc"))]
pub(crate) fn place(arena: &Arena) -> usize {
    info!(len = arena.len(), "NUMA placement off: built without hwloc");
    1
}
