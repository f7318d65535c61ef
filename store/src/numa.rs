//! NUMA placement of the arena: which slice of it lives on which NUMA node.
//!
//! The nodes come from the configuration when it names them ([`StoreConfig::numa_nodes`]: the
//! launcher passes the NUMA nodes of the CPUs the node's workers run on, so a rank of an SPMD
//! launch keeps its arena on its own NUMA node), else, with the `hwloc` feature, from hwloc's
//! topology (the root object's nodeset: PLATFORM.md notes that hwloc2's
//! `objects_with_type(NUMANode)` panics). The arena is cut into one page-aligned span per
//! node, and each span is bound to its node with `mbind(MPOL_BIND)` before the arena is
//! touched, so pre-faulting places every page. The hwloc2 crate has no memory-binding wrapper;
//! `mbind` is what `hwloc_set_area_membind` does on Linux, and being a plain system call it
//! serves configured nodes in builds without hwloc too. hwloc's list is bound only when it has
//! several nodes; a configured list even when it has one.
//!
//! Allocation then prefers the consumer's span ([`Store::create_near`]). Without configured
//! nodes and without the feature there is one span, the whole arena, placed by the kernel's
//! first-touch policy, and the log says "NUMA placement off: built without hwloc". A failed
//! `mbind` (a node outside the cpuset's memory nodes, say) is a warning and one unbound span.
//!
//! # Finding the consumer's region
//! [`Store::local_region`] maps the calling thread's NUMA node to the index of the span bound to
//! it: `getcpu(2)` gives the node the thread runs on now ([`current_node`]), and the placement
//! kept, per span, the node it was bound to ([`Placement::nodes`]), so the index is a position
//! in that list ([`region_for`]). With one span there is nothing to choose: region 0, and no
//! system call. A thread can migrate right after asking; the answer is a preference, never a
//! correctness matter (any region serves any reader).
//!
//! [`Store::create_near`]: crate::Store::create_near
//! [`StoreConfig::numa_nodes`]: crate::StoreConfig::numa_nodes
//! [`Store::local_region`]: crate::Store::local_region

use tracing::{info, warn};

use crate::arena::Arena;

/// Where the arena lies: its spans and the NUMA node each is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// `(offset, length)` in address order, one per region.
    pub(crate) spans: Vec<(usize, usize)>,
    /// The NUMA node (OS index) of each span, same order; empty when the arena is one unbound
    /// span.
    pub(crate) nodes: Vec<u32>,
}

impl Placement {
    /// The whole arena as one region, bound to no node.
    fn whole(arena: &Arena) -> Self {
        Placement {
            spans: vec![(0, arena.len())],
            nodes: Vec::new(),
        }
    }
}

/// The region index for the calling thread, given each region's node (`nodes`, as in
/// [`Placement::nodes`]) and a way to learn the thread's node (`current`, called only when there
/// is a choice). `Some(0)` with at most one region; `None` when the thread's node is unknown or
/// holds no region (then any region will do).
pub(crate) fn region_for(nodes: &[u32], current: impl FnOnce() -> Option<u32>) -> Option<usize> {
    if nodes.len() <= 1 {
        return Some(0);
    }
    let node = current()?;
    nodes.iter().position(|&n| n == node)
}

/// The NUMA node the calling thread runs on now, from `getcpu(2)`; `None` if the call fails.
pub(crate) fn current_node() -> Option<u32> {
    let (mut cpu, mut node): (libc::c_uint, libc::c_uint) = (0, 0);
    // SAFETY: getcpu writes one `unsigned int` through each of its first two pointers, which
    // point to live locals of that type; the third argument (a cache, unused since Linux
    // 2.6.24) may be null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    (rc == 0).then_some(node)
}

/// The arena's regions: one span per NUMA node of `configured` (the store's configuration),
/// else of the machine (hwloc), each bound to its node; one unbound span when there is nothing
/// to place.
pub(crate) fn place(arena: &Arena, configured: Option<&[u32]>) -> Placement {
    match configured {
        Some(nodes) if !nodes.is_empty() => split(arena, nodes),
        _ => place_by_machine(arena),
    }
}

#[cfg(not(feature = "hwloc"))]
fn place_by_machine(arena: &Arena) -> Placement {
    info!(len = arena.len(), "NUMA placement off: built without hwloc");
    Placement::whole(arena)
}

#[cfg(feature = "hwloc")]
fn place_by_machine(arena: &Arena) -> Placement {
    let Some(topology) = hwloc2::Topology::new() else {
        warn!("NUMA placement off: hwloc could not load the topology");
        return Placement::whole(arena);
    };
    let nodes: Vec<u32> = topology
        .object_at_root()
        .nodeset()
        .map(|set| set.into_iter().collect())
        .unwrap_or_default();
    if nodes.len() <= 1 {
        info!(
            numa_nodes = nodes.len(),
            "NUMA placement: one NUMA node, nothing to place"
        );
        return Placement::whole(arena);
    }
    split(arena, &nodes)
}

/// One span per node of `nodes`, in that order, each bound to its node.
fn split(arena: &Arena, nodes: &[u32]) -> Placement {
    let whole = Placement::whole(arena);
    let page = arena.page_kind().page_size();
    let per = (arena.len() / nodes.len()) / page * page;
    if per == 0 {
        warn!(
            numa_nodes = nodes.len(),
            "NUMA placement off: arena smaller than one page per node"
        );
        return whole;
    }
    let mut spans = Vec::with_capacity(nodes.len());
    for (i, &node) in nodes.iter().enumerate() {
        let offset = i * per;
        let len = if i + 1 == nodes.len() {
            arena.len() - offset
        } else {
            per
        };
        if let Err(e) = bind(arena, offset, len, node) {
            warn!(node, error = %e, "NUMA placement off: mbind failed");
            return whole;
        }
        spans.push((offset, len));
    }
    info!(
        numa_nodes = nodes.len(),
        span = per,
        "NUMA placement: arena split per NUMA node"
    );
    Placement {
        spans,
        nodes: nodes.to_vec(),
    }
}

/// Binds the arena's bytes `[offset, offset + len)` to NUMA node `node`.
fn bind(arena: &Arena, offset: usize, len: usize, node: u32) -> std::io::Result<()> {
    const MPOL_BIND: libc::c_long = 2;
    // Far above any kernel's MAX_NUMNODES; keeps the mask below small.
    if node > u32::from(u16::MAX) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("NUMA node {node} out of range"),
        ));
    }
    let bits = libc::c_ulong::BITS;
    let mut mask = vec![0 as libc::c_ulong; node as usize / bits as usize + 1];
    mask[(node / bits) as usize] |= 1 << (node % bits);
    let maxnode = (mask.len() * bits as usize + 1) as libc::c_ulong;
    // SAFETY: mbind only changes the memory policy of the range, which lies inside the arena's
    // mapping (offset + len <= arena.len(), offset page-aligned); `mask` is valid for
    // `maxnode - 1` bits for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            arena.base().add(offset),
            len as libc::c_ulong,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Option<u32> {
        panic!("with one region the thread's node is not asked for")
    }

    #[test]
    fn one_region_is_region_zero_without_a_system_call() {
        assert_eq!(region_for(&[], never), Some(0));
        assert_eq!(region_for(&[3], never), Some(0));
    }

    #[test]
    fn the_threads_node_maps_to_its_span() {
        // A fake topology: spans bound to nodes 0, 2 and 1 (OS indexes need not be dense or
        // sorted).
        let nodes = [0, 2, 1];
        assert_eq!(region_for(&nodes, || Some(0)), Some(0));
        assert_eq!(region_for(&nodes, || Some(2)), Some(1));
        assert_eq!(region_for(&nodes, || Some(1)), Some(2));
        assert_eq!(region_for(&nodes, || Some(7)), None, "a node with no span");
        assert_eq!(region_for(&nodes, || None), None, "getcpu failed");
    }

    #[test]
    fn getcpu_answers_on_this_machine() {
        let node = current_node().expect("getcpu works on Linux");
        assert!(node < 1024, "a plausible node index: {node}");
    }
}
