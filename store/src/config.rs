//! The store's configuration: one plain value, filled by core's configuration catalogue.
//!
//! The store reads no environment variables; every default here is the catalogue's default and
//! is documented where it is declared.

use std::path::PathBuf;
use std::time::Duration;

/// Which pages to back the arena with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PageRequest {
    /// 1 GiB huge pages when the arena is large enough (its size rounded down to whole GiB keeps
    /// at least 7/8 of it; see `arena.rs`) and the node's 1 GiB pool has enough free; else 2 MiB
    /// huge pages (hugetlb) when that pool has enough free; else 4 KiB pages with transparent
    /// huge pages advised.
    #[default]
    Auto,
    /// 1 GiB pages whenever the node's 1 GiB pool has enough free (the size rounded up to whole
    /// GiB), else as [`PageRequest::Auto`].
    Gigantic,
    /// 4 KiB pages with transparent huge pages advised, whatever the node has (tests, and nodes
    /// whose huge-page pool belongs to someone else).
    Small,
}

/// Everything the store can be told.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Arena size in bytes; rounded up to the page size used. Default: 30% of physical memory,
    /// as Ray's object store.
    pub capacity: usize,
    /// Which pages back the arena. Default: [`PageRequest::Auto`].
    pub pages: PageRequest,
    /// Touch every page of the arena at start, so no object pays first-touch faults (on these
    /// VMs first touch, not page size, dominates copy cost). Default: on.
    pub prefault: bool,
    /// Fraction of the arena above which primaries are spilled (after secondaries are evicted).
    /// Past it the store spills down to `spill_min_batch` below it (hysteresis). Default: 0.8.
    pub spill_threshold: f64,
    /// Least bytes one spill batch writes, when that many are eligible, whether it spills for
    /// the threshold or to make room for a `create` or a restore; also the hysteresis: past
    /// `spill_threshold` the store frees down to this far below it. Large batches keep the disk
    /// busy with large sequential writes; one object per batch left it idle between batches
    /// (`pressure.rs`). Evictions of secondary copies are never padded to it. `0`: free just
    /// what is needed. Default: 64 MiB.
    pub spill_min_batch: usize,
    /// Directory for spill files (created unlinked: nothing is left there even on a crash).
    /// Default: the system's temporary directory.
    pub spill_dir: PathBuf,
    /// Spilled objects smaller than this are fused into one file per spill batch; larger ones
    /// get a file each. Default: 1 MiB.
    pub spill_fuse_below: usize,
    /// Bytes of emptied spill files kept open for reuse by later spills (a restored object's
    /// file is overwritten in place instead of being closed: closing an unlinked file frees its
    /// disk blocks, which competes with the spill and restore I/O around it). The disk space
    /// these files hold stays allocated until the store drops; files beyond this are closed.
    /// Default: 1 GiB.
    pub spill_reuse_bytes: usize,
    /// Most emptied spill files kept for reuse, whatever their bytes (each holds a file
    /// descriptor). Default: 64.
    pub spill_reuse_files: usize,
    /// Largest single write or read submitted to io_uring (a multiple of 4 KiB). Default: 8 MiB.
    pub spill_chunk: usize,
    /// Submission queue depth of the spill ring. Default: 64.
    pub io_uring_entries: u32,
    /// How long a `create` that does not fit waits for space before failing with
    /// `ObjectStoreFull`. Default: 10 s.
    pub create_timeout: Duration,
    /// The NUMA nodes (OS indexes) to split the arena across, one span bound to each, even
    /// when there is one (a rank on NUMA node 1 gets its arena there). `None` (the default):
    /// every NUMA node of the machine as hwloc finds them (feature `hwloc`; one node means one
    /// unbound span), else one unbound span. The launcher passes the nodes of the CPUs the
    /// node's (or rank's) workers run on.
    pub numa_nodes: Option<Vec<u32>>,
    /// The granule of a node arena ([`NodeArena`](crate::NodeArena)): the unit in which the
    /// node's raylet grants its arena to the processes of the node. Raised to a multiple of the
    /// arena's page size, lowered (not below one page) so that the arena holds at least 8
    /// granules. Only the node arena's creator reads it. Default: 4 MiB (a large object's
    /// grant is its size in whole granules, so it wastes less than one).
    pub node_granule: usize,
    /// What a store on a node arena asks the node for when an object smaller than half of it
    /// does not fit its extents (small objects then share one grant), and the most it keeps
    /// wholly free (one such extent) instead of giving it back. Default: 64 MiB.
    pub node_extent: usize,
}

impl StoreConfig {
    /// The defaults with an arena of `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        StoreConfig {
            capacity,
            ..StoreConfig::default()
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity: default_capacity(),
            pages: PageRequest::Auto,
            prefault: true,
            spill_threshold: 0.8,
            spill_min_batch: 64 << 20,
            spill_dir: std::env::temp_dir(),
            spill_fuse_below: 1 << 20,
            spill_reuse_bytes: 1 << 30,
            spill_reuse_files: 64,
            spill_chunk: 8 << 20,
            io_uring_entries: 64,
            create_timeout: Duration::from_secs(10),
            numa_nodes: None,
            node_granule: 4 << 20,
            node_extent: 64 << 20,
        }
    }
}

/// 30% of physical memory, or 1 GiB when the OS will not say.
fn default_capacity() -> usize {
    // SAFETY: sysconf only reads system parameters; these names are valid on Linux.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 1 << 30;
    }
    let total = (pages as u128) * (page as u128);
    usize::try_from(total * 3 / 10).unwrap_or(usize::MAX)
}
