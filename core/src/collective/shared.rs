//! The shared-segment backend: members in one process (a heap segment) or in processes of one
//! node (a `memfd` segment), NCCL-SHM style.
//!
//! # Segment layout
//!
//! ```text
//! line 0                      magic, world, chunk, nonce, broken
//! lines 1..=W                 per rank: seq, pid, left, headers[2] (by operation parity)
//! W×W pair entries (64 B)     send/recv: posted, taken, len, header
//! data (page-aligned)         W slots, one result, W outboxes; `chunk` bytes each
//! ```
//!
//! # Protocol
//!
//! Each member counts its synchronisation points (`seq`) and publishes the count with release
//! ordering; `sync` waits (acquire) until every member's count reached its own. Every
//! operation of a given header makes the same number of syncs on every member, so the counts
//! stay in step. Per chunk of an allreduce: each member copies the others' shares of its chunk
//! into its slot (its own share it reads in place), syncs, reduces its own 1/W of the chunk
//! from its input and the others' slots into the result and its output, syncs, and copies the
//! others' shares of the result out. A slot is written only after the sync that ended the
//! previous reads of it, and the result only after the sync that follows the last copy out of
//! it; those two facts are the whole of the data-race argument for the raw copies below.
//!
//! A member's header goes to the header slot of its operation's parity along with its first
//! chunk; after the first sync every member compares all headers, so a mismatch is seen by
//! all and fails them all before any data is used.
//!
//! A waiting member spins, then yields, then sleeps on a futex in the segment (`wake`) that a
//! member making progress possible (the last to arrive at a sync, a send, a receive, a
//! failure) bumps and wakes when anyone sleeps (`sleepers`), at most 1 ms at a time.
//! A waiting member checks, while it waits, that the members it waits for are still there: a
//! `left` flag (set when a member's communicator drops or fails) and, across processes, that
//! the member's process is alive. A failure is also published in `broken`, which ends every
//! other member's wait at once.

use crate::sync::interprocess::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use super::element::Reducer;
use super::{Backend, Fault, Header, mismatch};
use crate::config::Resolved;
use crate::error::Error;

const MAGIC: u64 = 0x4d41_4e54_4143_4f4c; // "MANTACOL"
const LINE: usize = 128;
const PAIR: usize = 64;
const PAGE: usize = 4096;

/// How long a waiting member spins before it yields its core, where the node has a core for
/// every member (a peer usually arrives within a few microseconds; spinning is what keeps
/// small collectives at memory latency: 8-byte allreduce 22 µs with a 256-poll spin, 1.1 µs
/// with this one, 2 processes on 2 cores).
const SPIN: Duration = Duration::from_micros(100);
/// How long a waiting member then yields its core before it sleeps until woken (a yield
/// hands the core to a member that shares it at once; a futex wake-up costs tens of µs).
const YIELD: Duration = Duration::from_micros(200);
/// The spin where members outnumber cores: a spinning member would keep the core from the
/// member it waits for.
const SPIN_OVERSUBSCRIBED: Duration = Duration::from_micros(2);
/// The bytes an allreduce reduces at a time: its writes of a block to the result and to the
/// member's own buffer read it from L1.
const REDUCE_BLOCK: usize = 16 << 10;

/// The collective settings of the runtime's configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) timeout: Duration,
    pub(crate) chunk: usize,
    pub(crate) choice: Choice,
}

/// Which backend a group should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    Auto,
    Threads,
    Shm,
    Tcp,
}

impl Settings {
    pub(crate) fn from_config(c: &Resolved) -> Result<Self, Error> {
        let choice = match c.collective_backend.trim() {
            "" | "auto" => Choice::Auto,
            "threads" => Choice::Threads,
            "shm" => Choice::Shm,
            "tcp" => Choice::Tcp,
            other => {
                return Err(Error::Config {
                    key: "MANTA_COLLECTIVE_BACKEND".into(),
                    message: format!("{other:?} is not one of auto, threads, shm, tcp"),
                });
            }
        };
        if c.collective_chunk_bytes < PAGE {
            return Err(Error::Config {
                key: "MANTA_COLLECTIVE_CHUNK_BYTES".into(),
                message: format!(
                    "{} is below the minimum of {PAGE}",
                    c.collective_chunk_bytes
                ),
            });
        }
        Ok(Settings {
            timeout: c.collective_timeout,
            // Whole pages, so that every slot is aligned for every element type.
            chunk: c.collective_chunk_bytes / PAGE * PAGE,
            choice,
        })
    }
}

/// Offsets of a segment for `world` members and `chunk`-byte slots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) world: usize,
    pub(crate) chunk: usize,
}

impl Layout {
    fn rank(&self, r: usize) -> usize {
        LINE * (1 + r)
    }
    fn pair(&self, src: usize, dst: usize) -> usize {
        LINE * (1 + self.world) + PAIR * (src * self.world + dst)
    }
    fn data(&self) -> usize {
        (LINE * (1 + self.world) + PAIR * self.world * self.world).div_ceil(PAGE) * PAGE
    }
    fn slot(&self, r: usize) -> usize {
        self.data() + r * self.chunk
    }
    fn result(&self) -> usize {
        self.data() + self.world * self.chunk
    }
    fn outbox(&self, r: usize) -> usize {
        self.data() + (self.world + 1 + r) * self.chunk
    }
    pub(crate) fn len(&self) -> usize {
        self.data() + (2 * self.world + 1) * self.chunk
    }
}

/// Where a segment's memory comes from.
enum Memory {
    Heap(std::alloc::Layout),
    Mapped,
}

/// A mapped segment.
pub(crate) struct Region {
    base: *mut u8,
    len: usize,
    memory: Memory,
    pub(crate) layout: Layout,
}

// SAFETY: the region is plain memory shared on purpose; every access to it goes through the
// methods below, whose protocol (atomics for control words, syncs between the raw copies of
// data) is argued in the module docs.
unsafe impl Send for Region {}
// SAFETY: as for `Send`.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        match self.memory {
            // SAFETY: allocated in `Region::heap` with this very layout, freed once.
            Memory::Heap(l) => unsafe { std::alloc::dealloc(self.base, l) },
            // SAFETY: mapped in `Region::map` with this length, unmapped once.
            Memory::Mapped => unsafe {
                libc::munmap(self.base.cast(), self.len);
            },
        }
    }
}

fn os(what: &str) -> Fault {
    Fault::Os(format!("{what}: {}", std::io::Error::last_os_error()))
}

impl Region {
    /// A zeroed heap segment (members in one process), initialised.
    pub(crate) fn heap(layout: Layout, nonce: u64) -> Result<Region, Fault> {
        let l = std::alloc::Layout::from_size_align(layout.len(), PAGE)
            .map_err(|e| Fault::Os(format!("segment layout: {e}")))?;
        // SAFETY: the layout has a non-zero size (at least one line).
        let base = unsafe { std::alloc::alloc_zeroed(l) };
        if base.is_null() {
            return Err(Fault::Os(format!(
                "allocating a {} byte collective segment failed",
                layout.len()
            )));
        }
        let region = Region {
            base,
            len: layout.len(),
            memory: Memory::Heap(l),
            layout,
        };
        region.init(nonce);
        Ok(region)
    }

    /// A new `memfd` segment (members in processes of one node), initialised; returns it with
    /// its file descriptor (which the caller closes once every member mapped it).
    pub(crate) fn create_memfd(layout: Layout, nonce: u64) -> Result<(Region, i32), Fault> {
        let name = c"manta-collective";
        // SAFETY: a valid C string; the flags are constants.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: `fd` is ours.
        if unsafe { libc::ftruncate(fd, layout.len() as libc::off_t) } != 0 {
            let e = os("sizing the collective segment");
            // SAFETY: `fd` is ours, closed once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        match Region::map(fd, layout) {
            Ok(r) => {
                r.init(nonce);
                Ok((r, fd))
            }
            Err(e) => {
                // SAFETY: `fd` is ours, closed once.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    /// Maps rank 0's segment through `/proc/<pid>/fd/<fd>` (the kernel lets only processes
    /// allowed to inspect `pid` open it) and checks it is the group's.
    pub(crate) fn attach(pid: u32, fd: i32, layout: Layout, nonce: u64) -> Result<Region, Fault> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Fault::Peer {
                rank: 0,
                message: format!("opening rank 0's segment {path}: {e}"),
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size != layout.len() as u64 {
            return Err(Fault::Peer {
                rank: 0,
                message: format!("rank 0's segment has {size} bytes, not {}", layout.len()),
            });
        }
        use std::os::fd::AsRawFd;
        let region = Region::map(file.as_raw_fd(), layout)?;
        let ok = region.word(0).load(Ordering::Acquire) == MAGIC
            && region.word(8).load(Ordering::Acquire) == layout.world as u64
            && region.word(16).load(Ordering::Acquire) == layout.chunk as u64
            && region.word(24).load(Ordering::Acquire) == nonce;
        if !ok {
            return Err(Fault::Peer {
                rank: 0,
                message: "rank 0's segment is not this group's".into(),
            });
        }
        Ok(region)
    }

    fn map(fd: i32, layout: Layout) -> Result<Region, Fault> {
        // SAFETY: a fresh shared mapping of a file we hold open; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mapping the collective segment"));
        }
        Ok(Region {
            base: base.cast(),
            len: layout.len(),
            memory: Memory::Mapped,
            layout,
        })
    }

    fn init(&self, nonce: u64) {
        self.word(8)
            .store(self.layout.world as u64, Ordering::Relaxed);
        self.word(16)
            .store(self.layout.chunk as u64, Ordering::Relaxed);
        self.word(24).store(nonce, Ordering::Relaxed);
        self.word(0).store(MAGIC, Ordering::Release);
    }

    /// The control word at byte `off`.
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.layout.data() && off.is_multiple_of(8));
        // SAFETY: in bounds (asserted), 8-aligned (the base is page-aligned), and the control
        // words are only ever accessed atomically; the memory lives as long as `self`.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    /// `len` data bytes at `off`, read.
    ///
    /// # Safety
    /// No member may write the range while the slice lives (the sync protocol).
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off >= self.layout.data() && off + len <= self.len);
        // SAFETY: in bounds (asserted); exclusion from writers is the caller's promise.
        unsafe { std::slice::from_raw_parts(self.base.add(off), len) }
    }

    /// `len` data bytes at `off`, written.
    ///
    /// # Safety
    /// No other member may access the range while the slice lives (the sync protocol).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off >= self.layout.data() && off + len <= self.len);
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) }
    }
}

// Control words of a rank's line.
const SEQ: usize = 0;
const PID: usize = 8;
const LEFT: usize = 16;
const HDR: usize = 24; // two headers of 16 bytes
// Words of a pair entry.
const POSTED: usize = 0;
const TAKEN: usize = 8;
const PLEN: usize = 16;
const PHDR: usize = 24;
// `broken`: 0, or (code << 32) | (rank + 1).
const BROKEN: usize = 32;
// The word sleeping members wait on (a futex), and how many sleep.
const WAKE: usize = 40;
const SLEEPERS: usize = 48;
const BROKEN_LEFT: u64 = 1;
const BROKEN_TIMEOUT: u64 = 2;
const BROKEN_MISMATCH: u64 = 3;
/// A member outside the segment (of a hierarchical group) failed; the rank is the group's.
const BROKEN_REMOTE: u64 = 4;

/// A member of a shared-segment group.
pub(crate) struct SharedBackend {
    region: crate::sync::Arc<Region>,
    rank: usize,
    world: usize,
    /// Other members' process ids (across processes), to see them die; `None` for threads.
    pids: Option<Vec<u32>>,
    timeout: Duration,
    seq: u64,
    ops: u64,
    /// A send whose last chunk may still sit in this member's outbox: (dst, posted count).
    pending: Option<(usize, u64)>,
    left: bool,
    name: &'static str,
    spin: Duration,
    /// The group's rank of each member of this segment (the identity, but in the local part
    /// of a hierarchical group), for naming members in errors.
    names: Vec<usize>,
}

impl SharedBackend {
    pub(crate) fn new(
        region: crate::sync::Arc<Region>,
        rank: usize,
        pids: Option<Vec<u32>>,
        timeout: Duration,
    ) -> Self {
        let world = region.layout.world;
        Self::named(region, rank, pids, timeout, (0..world).collect())
    }

    /// A member whose segment's members have the group ranks `names`.
    pub(crate) fn named(
        region: crate::sync::Arc<Region>,
        rank: usize,
        pids: Option<Vec<u32>>,
        timeout: Duration,
        names: Vec<usize>,
    ) -> Self {
        let world = region.layout.world;
        let name = if pids.is_some() { "shm" } else { "threads" };
        region
            .word(region.layout.rank(rank) + PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        SharedBackend {
            region,
            rank,
            world,
            pids,
            timeout,
            seq: 0,
            ops: 0,
            pending: None,
            left: false,
            name,
            spin: if world <= std::thread::available_parallelism().map_or(1, |n| n.get()) {
                SPIN
            } else {
                SPIN_OVERSUBSCRIBED
            },
            names,
        }
    }

    fn rank_word(&self, r: usize, off: usize) -> &AtomicU64 {
        self.region.word(self.region.layout.rank(r) + off)
    }

    fn pair_word(&self, src: usize, dst: usize, off: usize) -> &AtomicU64 {
        self.region.word(self.region.layout.pair(src, dst) + off)
    }

    fn chunk(&self) -> usize {
        self.region.layout.chunk
    }

    /// Publishes `code` (with the rank at fault) so every member's wait ends.
    fn break_group(&self, code: u64, rank: usize) {
        let _ = self.region.word(BROKEN).compare_exchange(
            0,
            (code << 32) | (rank as u64 + 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.notify();
    }

    fn broken(&self) -> Option<Fault> {
        let b = self.region.word(BROKEN).load(Ordering::Acquire);
        if b == 0 {
            return None;
        }
        let local = ((b & 0xffff_ffff) - 1) as usize;
        let rank = if b >> 32 == BROKEN_REMOTE {
            local
        } else {
            self.names.get(local).copied().unwrap_or(local)
        };
        let message = match b >> 32 {
            BROKEN_LEFT => format!(
                "rank {rank} left the group (its process died, or its communicator failed or was dropped)"
            ),
            BROKEN_TIMEOUT => format!("a member timed out waiting for rank {rank}"),
            BROKEN_MISMATCH => format!("rank {rank} saw mismatched arguments"),
            BROKEN_REMOTE => format!(
                "rank {rank}, on another node, failed or left the group (reported by this \
                 node's leader)"
            ),
            _ => format!("rank {rank} broke the group"),
        };
        Some(Fault::Peer { rank, message })
    }

    /// Ends every wait of this segment's members: `rank` (of the group, outside the segment)
    /// failed.
    pub(crate) fn report_remote(&self, rank: usize) {
        self.break_group(BROKEN_REMOTE, rank);
    }

    /// Whether member `r` is gone: left, or its process is dead (or a zombie).
    fn gone(&self, r: usize) -> bool {
        if self.rank_word(r, LEFT).load(Ordering::Acquire) != 0 {
            return true;
        }
        match &self.pids {
            Some(pids) => !process_alive(pids[r]),
            None => false,
        }
    }

    /// Waits until `ready()` gives `None` (else the rank it still waits for), with a bounded,
    /// backing-off poll that sees members leave and the group break.
    fn wait(&self, mut ready: impl FnMut() -> Option<usize>) -> Result<(), Fault> {
        let start = Instant::now();
        let mut polls = 0u32;
        let mut next_check = Duration::from_millis(1);
        loop {
            let Some(lagging) = ready() else {
                return Ok(());
            };
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            if let Some(f) = self.broken() {
                return Err(f);
            }
            let waited = start.elapsed();
            if waited < self.spin {
                continue;
            }
            if waited >= next_check {
                next_check = waited + Duration::from_millis(2);
                if self.gone(lagging) {
                    // Check once more: it may have arrived and then left.
                    if ready().is_none() {
                        return Ok(());
                    }
                    self.break_group(BROKEN_LEFT, lagging);
                    let rank = self.names[lagging];
                    return Err(self.broken().unwrap_or(Fault::Peer {
                        rank,
                        message: format!("rank {rank} left the group"),
                    }));
                }
                if waited >= self.timeout {
                    self.break_group(BROKEN_TIMEOUT, lagging);
                    return Err(Fault::Timeout {
                        rank: self.names[lagging],
                        waited,
                    });
                }
            }
            if waited < self.spin + YIELD {
                std::thread::yield_now();
                continue;
            }
            // Sleep on the segment's wake word until a member notifies (or 1 ms passes):
            // counted as a sleeper first, then the condition checked again, so that a
            // notifier either sees the sleeper or the sleeper sees its update (both sides
            // order through a SeqCst fence).
            let wake = self.wake_word();
            let seen = wake.load(Ordering::SeqCst);
            self.region.word(SLEEPERS).fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready().is_none() {
                self.region.word(SLEEPERS).fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            futex_wait(wake, seen, Duration::from_millis(1));
            self.region.word(SLEEPERS).fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The 32-bit word sleeping members wait on.
    fn wake_word(&self) -> &AtomicU32 {
        // SAFETY: in the control line (in bounds, 4-aligned), only ever accessed atomically
        // (and by the kernel's futex calls); lives as long as `self`.
        unsafe { &*self.region.base.add(WAKE).cast::<AtomicU32>() }
    }

    /// Wakes the members sleeping in `wait`, if any (after this member updated what they
    /// wait for).
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.region.word(SLEEPERS).load(Ordering::SeqCst) > 0 {
            let wake = self.wake_word();
            wake.fetch_add(1, Ordering::SeqCst);
            futex_wake(wake);
        }
    }

    /// One synchronisation point of the group.
    fn sync(&mut self) -> Result<(), Fault> {
        self.seq += 1;
        let target = self.seq;
        self.rank_word(self.rank, SEQ)
            .store(target, Ordering::SeqCst);
        let lagging =
            || (0..self.world).find(|&r| self.rank_word(r, SEQ).load(Ordering::Acquire) < target);
        if lagging().is_none() {
            // The last to arrive wakes the others.
            self.notify();
            return Ok(());
        }
        self.wait(lagging)
    }

    /// Publishes this member's header for the current operation.
    fn publish(&mut self, h: &Header) {
        self.ops += 1;
        let slot = HDR + 16 * (self.ops as usize % 2);
        let [a, b] = h.pack();
        self.rank_word(self.rank, slot).store(a, Ordering::Relaxed);
        self.rank_word(self.rank, slot + 8)
            .store(b, Ordering::Relaxed);
    }

    /// After the first sync of an operation: every member's header equals this one's.
    fn check_headers(&self, h: &Header) -> Result<(), Fault> {
        let slot = HDR + 16 * (self.ops as usize % 2);
        let others: Vec<(usize, Header)> = (0..self.world)
            .map(|r| {
                let w = [
                    self.rank_word(r, slot).load(Ordering::Relaxed),
                    self.rank_word(r, slot + 8).load(Ordering::Relaxed),
                ];
                (self.names[r], Header::unpack(w))
            })
            .collect();
        match mismatch(self.names[self.rank], h, &others) {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Waits until this member's outbox is free again (its last send was taken).
    fn drain_outbox(&mut self) -> Result<(), Fault> {
        if let Some((dst, posted)) = self.pending {
            let me = self.rank;
            self.wait(|| {
                (self.pair_word(me, dst, TAKEN).load(Ordering::Acquire) < posted).then_some(dst)
            })?;
            self.pending = None;
        }
        Ok(())
    }

    /// The chunks of `n` bytes: (offset, length), at least one (possibly empty).
    fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
        let count = n.div_ceil(chunk).max(1);
        (0..count).map(move |c| (c * chunk, chunk.min(n - (c * chunk).min(n))))
    }

    /// This member's share `[lo, hi)` in bytes of `len` bytes of `elem`-byte elements.
    fn share(&self, len: usize, elem: usize) -> (usize, usize) {
        self.share_of(self.rank, len, elem)
    }

    /// Member `r`'s share `[lo, hi)` in bytes of `len` bytes of `elem`-byte elements.
    fn share_of(&self, r: usize, len: usize, elem: usize) -> (usize, usize) {
        let m = len / elem;
        (m * r / self.world * elem, m * (r + 1) / self.world * elem)
    }

    /// Reduces this member's share of a chunk: every member's elements in rank order (this
    /// member's from `own`, or from `chunk` itself when `None`: in place; the others' from
    /// their slots) into the segment's result, and into `chunk`. A block at a time, so that
    /// each block is written to both while it is in the cache.
    fn reduce_own(&self, own: Option<&[u8]>, chunk: &mut [u8], red: &Reducer) {
        let l = self.region.layout;
        let (lo, hi) = self.share(chunk.len(), red.elem);
        let block = REDUCE_BLOCK / red.elem * red.elem;
        let mut b = lo;
        while b < hi {
            let n = block.min(hi - b);
            // SAFETY: between the sync after staging and the next one, slots are only read,
            // and this member alone writes its share of the result.
            let res = unsafe { self.region.bytes_mut(l.result() + b, n) };
            red.fold(
                res,
                (0..self.world).map(|r| {
                    if r == self.rank {
                        match own {
                            Some(own) => &own[b..b + n],
                            None => &chunk[b..b + n],
                        }
                    } else {
                        // SAFETY: as above.
                        unsafe { self.region.bytes(l.slot(r) + b, n) }
                    }
                }),
            );
            chunk[b..b + n].copy_from_slice(res);
            b += n;
        }
    }

    /// The reduction (into the result buffer) and sync of a chunk of `len` staged bytes.
    fn reduce_chunk(&mut self, len: usize, red: &Reducer) -> Result<(), Fault> {
        let l = self.region.layout;
        let (lo, hi) = self.share(len, red.elem);
        if hi > lo {
            // SAFETY: between the sync after staging and the next one, slots are only read,
            // and this member alone writes its share of the result.
            unsafe {
                red.fold(
                    self.region.bytes_mut(l.result() + lo, hi - lo),
                    (0..self.world).map(|r| self.region.bytes(l.slot(r) + lo, hi - lo)),
                );
            }
        }
        self.sync()
    }
}

/// Sleeps while `word` holds `seen`, at most `timeout` (a shared futex: the segment may be
/// mapped by several processes).
fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 32-bit word; the timespec outlives the call. A
    // spurious or early return is fine: the caller checks its condition again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes every member sleeping on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => false,
    }
}

impl Backend for SharedBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn allreduce(
        &mut self,
        h: &Header,
        input: Option<&[u8]>,
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let l = self.region.layout;
        let chunk = self.chunk() / red.elem * red.elem;
        for (i, (off, len)) in Self::chunks(out.len(), chunk).enumerate() {
            // Only the others' shares go through this member's slot: it reduces its own share
            // reading its input directly.
            for j in (0..self.world).filter(|&j| j != self.rank) {
                let (lo, hi) = self.share_of(j, len, red.elem);
                let src = match input {
                    Some(input) => &input[off + lo..off + hi],
                    None => &out[off + lo..off + hi],
                };
                // SAFETY: this member's slot; the others last read it before the previous sync.
                unsafe { self.region.bytes_mut(l.slot(self.rank) + lo, hi - lo) }
                    .copy_from_slice(src);
            }
            if i == 0 {
                self.publish(h);
            }
            self.sync()?;
            if i == 0 {
                self.check_headers(h)?;
            }
            let own = input.map(|input| &input[off..off + len]);
            self.reduce_own(own, &mut out[off..off + len], red);
            self.sync()?;
            for j in (0..self.world).filter(|&j| j != self.rank) {
                let (lo, hi) = self.share_of(j, len, red.elem);
                // SAFETY: the result is complete (synced) and written again only after the
                // next sync, which this member reaches only after this copy.
                out[off + lo..off + hi]
                    .copy_from_slice(unsafe { self.region.bytes(l.result() + lo, hi - lo) });
            }
        }
        Ok(())
    }

    fn allgather(&mut self, h: &Header, input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
        let l = self.region.layout;
        let n = input.len();
        for (i, (off, len)) in Self::chunks(n, self.chunk()).enumerate() {
            // SAFETY: this member's slot, free since the previous sync.
            unsafe { self.region.bytes_mut(l.slot(self.rank), len) }
                .copy_from_slice(&input[off..off + len]);
            if i == 0 {
                self.publish(h);
            }
            self.sync()?;
            if i == 0 {
                self.check_headers(h)?;
            }
            for r in 0..self.world {
                // SAFETY: slots are only read until the next sync.
                out[r * n + off..r * n + off + len]
                    .copy_from_slice(unsafe { self.region.bytes(l.slot(r), len) });
            }
            self.sync()?;
        }
        Ok(())
    }

    fn reduce_scatter(
        &mut self,
        h: &Header,
        input: &[u8],
        out: &mut [u8],
        red: &Reducer,
    ) -> Result<(), Fault> {
        let l = self.region.layout;
        let n = out.len();
        // Each slot holds one piece of every block.
        let piece = (self.chunk() / self.world / red.elem).max(1) * red.elem;
        for (i, (off, len)) in Self::chunks(n, piece).enumerate() {
            // The other members' blocks only: this member reduces its own from its input.
            for j in (0..self.world).filter(|&j| j != self.rank) {
                // SAFETY: this member's slot, free since the previous sync.
                unsafe { self.region.bytes_mut(l.slot(self.rank) + j * len, len) }
                    .copy_from_slice(&input[j * n + off..j * n + off + len]);
            }
            if i == 0 {
                self.publish(h);
            }
            self.sync()?;
            if i == 0 {
                self.check_headers(h)?;
            }
            let dst = &mut out[off..off + len];
            let mine = self.rank * len;
            let own = &input[self.rank * n + off..self.rank * n + off + len];
            red.fold(
                dst,
                (0..self.world).map(|r| {
                    if r == self.rank {
                        own
                    } else {
                        // SAFETY: slots are only read until the next sync.
                        unsafe { self.region.bytes(l.slot(r) + mine, len) }
                    }
                }),
            );
            self.sync()?;
        }
        Ok(())
    }

    fn broadcast(&mut self, h: &Header, data: &mut [u8], root: usize) -> Result<(), Fault> {
        let l = self.region.layout;
        for (i, (off, len)) in Self::chunks(data.len(), self.chunk()).enumerate() {
            if self.rank == root {
                // SAFETY: root's slot, free since the previous sync.
                unsafe { self.region.bytes_mut(l.slot(root), len) }
                    .copy_from_slice(&data[off..off + len]);
            }
            if i == 0 {
                self.publish(h);
            }
            self.sync()?;
            if i == 0 {
                self.check_headers(h)?;
            }
            if self.rank != root {
                // SAFETY: root's slot is only read until the next sync.
                data[off..off + len]
                    .copy_from_slice(unsafe { self.region.bytes(l.slot(root), len) });
            }
            self.sync()?;
        }
        Ok(())
    }

    fn reduce(
        &mut self,
        h: &Header,
        data: &mut [u8],
        root: usize,
        red: &Reducer,
    ) -> Result<(), Fault> {
        let l = self.region.layout;
        let chunk = self.chunk() / red.elem * red.elem;
        for (i, (off, len)) in Self::chunks(data.len(), chunk).enumerate() {
            // SAFETY: this member's slot, free since the previous sync.
            unsafe { self.region.bytes_mut(l.slot(self.rank), len) }
                .copy_from_slice(&data[off..off + len]);
            if i == 0 {
                self.publish(h);
            }
            self.sync()?;
            if i == 0 {
                self.check_headers(h)?;
            }
            self.reduce_chunk(len, red)?;
            if self.rank == root {
                // SAFETY: as in `allreduce`.
                data[off..off + len].copy_from_slice(unsafe { self.region.bytes(l.result(), len) });
            }
        }
        Ok(())
    }

    fn send(&mut self, h: &Header, data: &[u8], dst: usize) -> Result<(), Fault> {
        let l = self.region.layout;
        let me = self.rank;
        let mut first = true;
        for (off, len) in Self::chunks(data.len(), self.chunk()) {
            self.drain_outbox()?;
            // SAFETY: this member's outbox: its last chunk was taken (drained above).
            unsafe { self.region.bytes_mut(l.outbox(me), len) }
                .copy_from_slice(&data[off..off + len]);
            self.pair_word(me, dst, PLEN)
                .store(len as u64, Ordering::Relaxed);
            let [a, b] = h.pack();
            let a = a | if first { 1 << 31 } else { 0 };
            first = false;
            self.pair_word(me, dst, PHDR).store(a, Ordering::Relaxed);
            self.pair_word(me, dst, PHDR + 8)
                .store(b, Ordering::Relaxed);
            let posted = self
                .pair_word(me, dst, POSTED)
                .fetch_add(1, Ordering::Release)
                + 1;
            self.pending = Some((dst, posted));
        }
        Ok(())
    }

    fn recv(&mut self, h: &Header, data: &mut [u8], src: usize) -> Result<(), Fault> {
        let l = self.region.layout;
        let me = self.rank;
        let mut first = true;
        for (off, len) in Self::chunks(data.len(), self.chunk()) {
            let taken = self.pair_word(src, me, TAKEN).load(Ordering::Relaxed);
            self.wait(|| {
                (self.pair_word(src, me, POSTED).load(Ordering::Acquire) <= taken).then_some(src)
            })?;
            let a = self.pair_word(src, me, PHDR).load(Ordering::Relaxed);
            let b = self.pair_word(src, me, PHDR + 8).load(Ordering::Relaxed);
            let theirs = Header::unpack([a & !(1 << 31), b]);
            let plen = self.pair_word(src, me, PLEN).load(Ordering::Relaxed) as usize;
            let starts = a & (1 << 31) != 0;
            if theirs != *h || plen != len || starts != first {
                self.break_group(BROKEN_MISMATCH, me);
                return Err(Fault::Mismatch(format!(
                    "rank {me} called recv of {} {} from rank {src}, which sent {} {}",
                    h.count,
                    super::element::dtype_name(h.dtype),
                    theirs.count,
                    super::element::dtype_name(theirs.dtype),
                )));
            }
            first = false;
            // SAFETY: the posted chunk is not written again until this member takes it.
            data[off..off + len].copy_from_slice(unsafe { self.region.bytes(l.outbox(src), len) });
            self.pair_word(src, me, TAKEN)
                .store(taken + 1, Ordering::Release);
        }
        Ok(())
    }

    fn barrier(&mut self, h: &Header) -> Result<(), Fault> {
        self.publish(h);
        self.sync()?;
        self.check_headers(h)
    }

    fn leave(&mut self, _mismatch: bool) {
        if !self.left {
            self.left = true;
            self.rank_word(self.rank, LEFT).store(1, Ordering::Release);
            self.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_message_with_at_least_one() {
        let all: Vec<_> = SharedBackend::chunks(0, 4096).collect();
        assert_eq!(all, [(0, 0)]);
        let all: Vec<_> = SharedBackend::chunks(10_000, 4096).collect();
        assert_eq!(all, [(0, 4096), (4096, 4096), (8192, 1808)]);
    }

    #[test]
    fn the_layout_keeps_control_and_data_apart_and_aligned() {
        let l = Layout {
            world: 3,
            chunk: 8192,
        };
        assert!(l.pair(2, 2) + PAIR <= l.data());
        assert_eq!(l.data() % PAGE, 0);
        assert_eq!(l.slot(1), l.data() + 8192);
        assert_eq!(l.result(), l.data() + 3 * 8192);
        assert_eq!(l.outbox(2) + 8192, l.len());
    }

    #[test]
    fn a_segment_of_another_group_is_refused() {
        let l = Layout {
            world: 2,
            chunk: PAGE,
        };
        let (_mine, fd) = Region::create_memfd(l, 42).unwrap();
        assert!(Region::attach(std::process::id(), fd, l, 42).is_ok());
        assert!(Region::attach(std::process::id(), fd, l, 43).is_err());
        let other = Layout {
            world: 3,
            chunk: PAGE,
        };
        assert!(Region::attach(std::process::id(), fd, other, 42).is_err());
        // SAFETY: the test's own descriptor, closed once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn settings_refuse_unknown_backends_and_tiny_chunks() {
        let mut c = crate::Config::default().resolve().unwrap();
        c.collective_backend = "nccl".into();
        assert!(Settings::from_config(&c).is_err());
        c.collective_backend = "auto".into();
        c.collective_chunk_bytes = 100;
        assert!(Settings::from_config(&c).is_err());
        c.collective_chunk_bytes = 5000;
        assert_eq!(Settings::from_config(&c).unwrap().chunk, PAGE);
    }
}
