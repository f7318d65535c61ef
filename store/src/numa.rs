//! NUMA placement of the arena: which slice of it lives on which NUMA node.
//!
//! With the `hwloc` feature, the node's NUMA nodes are read from hwloc's topology (the root
//! object's nodeset: PLATFORM.md notes that hwloc2's `objects_with_type(NUMANode)` panics), the
//! arena is cut into one page-aligned span per NUMA node, and each span is bound to its node
//! with `mbind(MPOL_BIND)` before the arena is touched, so pre-faulting places every page. The
//! hwloc2 crate has no memory-binding wrapper; `mbind` is what `hwloc_set_area_membind` does on
//! Linux. Allocation then prefers the consumer's span ([`Store::create_near`]).
//!
//! Without the feature there is one span, the whole arena, placed by the kernel's first-touch
//! policy, and the log says "NUMA placement off: built without hwloc".
//!
//! [`Store::create_near`]: crate::Store::create_near

use tracing::info;

use crate::arena::Arena;

/// The arena's spans, `(offset, length)` in address order, one per NUMA node.
#[cfg(not(feature = "hwloc"))]
pub(crate) fn place(arena: &Arena) -> Vec<(usize, usize)> {
    info!(len = arena.len(), "NUMA placement off: built without hwloc");
    vec![(0, arena.len())]
}

/// The arena's spans, `(offset, length)` in address order, one per NUMA node.
#[cfg(feature = "hwloc")]
pub(crate) fn place(arena: &Arena) -> Vec<(usize, usize)> {
    use tracing::warn;

    let whole = vec![(0, arena.len())];
    let Some(topology) = hwloc2::Topology::new() else {
        warn!("NUMA placement off: hwloc could not load the topology");
        return whole;
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
        return whole;
    }
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
    spans
}

/// Binds the arena's bytes `[offset, offset + len)` to NUMA node `node`.
#[cfg(feature = "hwloc")]
fn bind(arena: &Arena, offset: usize, len: usize, node: u32) -> std::io::Result<()> {
    const MPOL_BIND: libc::c_long = 2;
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
