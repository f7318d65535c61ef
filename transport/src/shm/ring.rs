//! Leaf module: a lock-free single-producer/single-consumer byte ring in a shared mapping.
//!
//! # Layout
//!
//! A segment is one sealed memfd mapped by both processes:
//!
//! ```text
//! 0      SegmentHeader { magic, version, capacity }           (64 bytes)
//! 64     RingControl of ring A (connector → listener)          (3 cache lines)
//! 256    RingControl of ring B (listener → connector)          (3 cache lines)
//! 4096   data of ring A (capacity bytes, a power of two)
//! 4096+c data of ring B
//! ```
//!
//! `RingControl` keeps `head` (total bytes ever written; stored only by the producer), `tail`
//! (total bytes ever read; stored only by the consumer) and the wake flags on separate cache
//! lines. Both counters are free-running `u64`s; `head - tail` is the fill level and byte `i`
//! lives at `data[i & (capacity - 1)]`. Each side also keeps its own counter in private memory
//! and never trusts the shared copy of it, so a peer scribbling on the segment can only make
//! us read wrong bytes (which the frame layer rejects) or report [`FrameError::RingCorrupt`]
//! (a fill level above capacity) — never read or write outside the mapping.
//!
//! # Memory ordering
//!
//! Transferring bytes (the classic SPSC protocol):
//!
//! 1. The producer loads `tail` with `Acquire`. This synchronises with the consumer's
//!    `Release` store in step 4, so the consumer's reads of the freed bytes happened before
//!    the producer overwrites them.
//! 2. The producer copies bytes into `[head, head + n)` (free space that only it may touch),
//!    then stores `head + n` with `Release`, publishing the bytes.
//! 3. The consumer loads `head` with `Acquire`, synchronising with step 2: the bytes below the
//!    loaded `head` are visible, and it copies them out.
//! 4. The consumer stores `tail + n` with `Release`, handing the space back (see step 1).
//!
//! Parking without losing a wake-up (a Dekker pair, hence `SeqCst` fences). Take a consumer
//! that found the ring empty and wants to sleep on its eventfd:
//!
//! 5. The consumer stores `data_waiter = 1`, issues a `SeqCst` fence, and loads `head` again.
//!    If data arrived meanwhile it clears the flag and does not sleep.
//! 6. The producer, after step 2, issues a `SeqCst` fence and swaps `data_waiter` to 0; if it
//!    was 1 it signals the consumer's eventfd.
//!
//! The two fences are totally ordered. If the consumer's fence comes first, the producer's
//! swap (after its own fence) sees `data_waiter = 1` and signals. If the producer's fence comes
//! first, the consumer's reload of `head` (after its fence) sees the new `head` and does not
//! sleep. Either way no byte is left unannounced while the consumer sleeps. The same pair,
//! with `space_waiter` and `tail`, lets a producer sleep on a full ring. An eventfd counter
//! remembers a signal sent before its waiter polls, so the order of "signal" and "sleep" does
//! not matter; spurious wake-ups just loop.
//!
//! Closing: 7. either side stores `closed = 1` with `Release` (the producer after its last
//! `head` store) and signals; a consumer that loads `closed` with `Acquire` and then finds no
//! data has seen every byte (step 2 precedes 7), so it reports end-of-stream.

use crate::error::FrameError;
use memmap2::MmapMut;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

const MAGIC: u64 = u64::from_le_bytes(*b"MNTARING");
const LAYOUT_VERSION: u32 = 1;
/// Offset of ring A's data; everything before it is headers.
pub(crate) const DATA_OFFSET: usize = 4096;
/// Largest ring accepted from a peer.
pub(crate) const MAX_CAPACITY: u64 = 1 << 30;

#[repr(C, align(64))]
struct CacheLine<T>(T);

#[repr(C)]
struct SegmentHeader {
    magic: AtomicU64,
    version: AtomicU32,
    capacity: AtomicU64,
}

#[repr(C)]
struct RingControl {
    head: CacheLine<AtomicU64>,
    tail: CacheLine<AtomicU64>,
    flags: CacheLine<Flags>,
}

#[repr(C)]
struct Flags {
    data_waiter: AtomicU32,
    space_waiter: AtomicU32,
    closed: AtomicU32,
}

const CONTROL_A: usize = 64;
const CONTROL_B: usize = 256;
const _: () = assert!(size_of::<SegmentHeader>() <= CONTROL_A);
const _: () = assert!(CONTROL_A + size_of::<RingControl>() <= CONTROL_B);
const _: () = assert!(CONTROL_B + size_of::<RingControl>() <= DATA_OFFSET);

/// Which end of the segment a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Created the segment; writes ring A, reads ring B.
    Connector,
    /// Received the segment; writes ring B, reads ring A.
    Listener,
}

/// Total segment length for a ring capacity.
pub(crate) fn segment_len(capacity: u64) -> u64 {
    DATA_OFFSET as u64 + 2 * capacity
}

/// A mapped segment; the rings keep it alive.
struct Segment {
    map: MmapMut,
    capacity: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Segment {
    fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is page-aligned and at least DATA_OFFSET long (checked by
        // `map`), SegmentHeader is all atomics (any bit pattern valid) and fits before
        // CONTROL_A; shared access from another process is through atomics only.
        unsafe { &*self.map.as_ptr().cast::<SegmentHeader>() }
    }

    fn control(&self, offset: usize) -> &RingControl {
        // SAFETY: as in `header`: offset is CONTROL_A or CONTROL_B (64-aligned), the control
        // block fits before DATA_OFFSET (const-asserted), and it is all atomics.
        unsafe { &*self.map.as_ptr().add(offset).cast::<RingControl>() }
    }

    fn data(&self, ring: usize) -> *mut u8 {
        let off = DATA_OFFSET + ring * self.capacity as usize;
        // SAFETY: the mapping is DATA_OFFSET + 2 * capacity bytes long (checked by `map`), so
        // the offset of either ring's data is in bounds. Writes through the pointer go to the
        // shared mapping, which `MmapMut` allows; the pointer is never turned into a reference
        // because the peer may write the same bytes concurrently.
        unsafe { self.map.as_ptr().cast_mut().add(off) }
    }
}

/// Maps a sealed memfd of [`segment_len`]`(capacity)` bytes and validates or writes its header.
fn map(file: &File, capacity: u64, init: bool) -> Result<Arc<Segment>, String> {
    if !capacity.is_power_of_two() || !(4096..=MAX_CAPACITY).contains(&capacity) {
        return Err(format!("bad ring capacity {capacity}"));
    }
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != segment_len(capacity) {
        return Err(format!(
            "segment is {len} bytes, expected {}",
            segment_len(capacity)
        ));
    }
    // SAFETY: the file is a memfd sealed against shrinking (checked by the caller or created
    // sealed by us), so the mapping can never be truncated under us (no SIGBUS). Its contents
    // are shared with the peer and are only accessed through atomics and raw-pointer copies.
    let map = unsafe { MmapMut::map_mut(file) }.map_err(|e| e.to_string())?;
    let seg = Segment { map, capacity };
    let h = seg.header();
    if init {
        h.capacity.store(capacity, Ordering::Relaxed);
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
    } else if h.magic.load(Ordering::Acquire) != MAGIC
        || h.version.load(Ordering::Relaxed) != LAYOUT_VERSION
        || h.capacity.load(Ordering::Relaxed) != capacity
    {
        return Err("segment header does not match".into());
    }
    Ok(Arc::new(seg))
}

/// Both ends of a process's half of a segment.
pub(crate) fn open(file: &File, capacity: u64, side: Side) -> Result<(Producer, Consumer), String> {
    let seg = map(file, capacity, side == Side::Connector)?;
    let (tx, rx) = match side {
        Side::Connector => ((CONTROL_A, 0), (CONTROL_B, 1)),
        Side::Listener => ((CONTROL_B, 1), (CONTROL_A, 0)),
    };
    let head = seg.control(tx.0).head.0.load(Ordering::Relaxed);
    let tail = seg.control(rx.0).tail.0.load(Ordering::Relaxed);
    Ok((
        Producer {
            seg: seg.clone(),
            ctl: tx.0,
            ring: tx.1,
            head,
        },
        Consumer {
            seg,
            ctl: rx.0,
            ring: rx.1,
            tail,
        },
    ))
}

/// The writing end of one ring.
#[derive(Debug)]
pub(crate) struct Producer {
    seg: Arc<Segment>,
    ctl: usize,
    ring: usize,
    /// Our authoritative copy of `head`.
    head: u64,
}

/// The reading end of one ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    seg: Arc<Segment>,
    ctl: usize,
    ring: usize,
    /// Our authoritative copy of `tail`.
    tail: u64,
}

const CORRUPT: FrameError = FrameError::RingCorrupt {
    detail: "fill level above capacity",
};

impl Producer {
    fn ctl(&self) -> &RingControl {
        self.seg.control(self.ctl)
    }

    /// Free bytes (step 1), or an error if the peer corrupted `tail`.
    pub(crate) fn free(&self) -> Result<u64, FrameError> {
        let tail = self.ctl().tail.0.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > self.seg.capacity {
            return Err(CORRUPT);
        }
        Ok(self.seg.capacity - used)
    }

    /// Copies as much of `src` as fits and publishes it (steps 1–2); returns the count.
    pub(crate) fn write(&mut self, src: &[u8]) -> Result<usize, FrameError> {
        let n = (self.free()?.min(src.len() as u64)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let cap = self.seg.capacity as usize;
        let start = (self.head as usize) & (cap - 1);
        let first = n.min(cap - start);
        let data = self.seg.data(self.ring);
        // SAFETY: start < cap and first ≤ cap - start, n - first ≤ start: both copies stay in
        // this ring's data. [head, head + n) is free space that the consumer does not read
        // until step 2 publishes it, and src is a distinct private buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, n - first);
        }
        self.head = self.head.wrapping_add(n as u64);
        self.ctl().head.0.store(self.head, Ordering::Release);
        Ok(n)
    }

    /// Step 6: after publishing, whether the consumer asked to be woken (clears the flag).
    pub(crate) fn take_data_waiter(&self) -> bool {
        fence(Ordering::SeqCst);
        let f = &self.ctl().flags.0.data_waiter;
        f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::Relaxed) != 0
    }

    /// Step 5 for a producer facing a full ring: announce the wait, then re-check. Returns
    /// true if the ring is still full (the caller may sleep) and false if space appeared.
    pub(crate) fn prepare_park(&self) -> Result<bool, FrameError> {
        let f = &self.ctl().flags.0.space_waiter;
        f.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.free()? > 0 || self.is_closed() {
            f.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether either side closed this ring (step 7).
    pub(crate) fn is_closed(&self) -> bool {
        self.ctl().flags.0.closed.load(Ordering::Acquire) != 0
    }

    /// Marks the ring closed (step 7); the caller then signals the consumer.
    pub(crate) fn close(&self) {
        self.ctl().flags.0.closed.store(1, Ordering::Release);
    }
}

impl Consumer {
    fn ctl(&self) -> &RingControl {
        self.seg.control(self.ctl)
    }

    /// Bytes ready to read (step 3), or an error if the peer corrupted `head`.
    pub(crate) fn available(&self) -> Result<u64, FrameError> {
        let head = self.ctl().head.0.load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.tail);
        if avail > self.seg.capacity {
            return Err(CORRUPT);
        }
        Ok(avail)
    }

    /// Copies up to `dst.len()` bytes out and frees their space (steps 3–4).
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> Result<usize, FrameError> {
        let n = (self.available()?.min(dst.len() as u64)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let cap = self.seg.capacity as usize;
        let start = (self.tail as usize) & (cap - 1);
        let first = n.min(cap - start);
        let data = self.seg.data(self.ring);
        // SAFETY: bounds as in `Producer::write`; [tail, tail + n) was published by step 2
        // and the producer does not overwrite it before step 4. dst is private memory.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), n - first);
        }
        self.tail = self.tail.wrapping_add(n as u64);
        self.ctl().tail.0.store(self.tail, Ordering::Release);
        Ok(n)
    }

    /// Step 6 mirrored: after freeing space, whether the producer asked to be woken.
    pub(crate) fn take_space_waiter(&self) -> bool {
        fence(Ordering::SeqCst);
        let f = &self.ctl().flags.0.space_waiter;
        f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::Relaxed) != 0
    }

    /// Step 5: announce the wait, then re-check. True means still empty and open: sleep.
    pub(crate) fn prepare_park(&self) -> Result<bool, FrameError> {
        let f = &self.ctl().flags.0.data_waiter;
        f.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.available()? > 0 || self.is_closed() {
            f.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether either side closed this ring (step 7).
    pub(crate) fn is_closed(&self) -> bool {
        self.ctl().flags.0.closed.load(Ordering::Acquire) != 0
    }

    /// Marks the ring closed: the reader is gone, so the writer's next write fails.
    pub(crate) fn close(&self) {
        self.ctl().flags.0.closed.store(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cap: u64) -> ((Producer, Consumer), (Producer, Consumer)) {
        let file = crate::shm::sys::sealed_memfd(segment_len(cap)).expect("memfd");
        let a = open(&file, cap, Side::Connector).expect("connector");
        let b = open(&file, cap, Side::Listener).expect("listener");
        (a, b)
    }

    #[test]
    fn wraps_around_byte_exact() {
        let ((mut tx, _), (_, mut rx)) = pair(4096);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 3000];
        for round in 0..50u32 {
            let chunk: Vec<u8> = (0..2500u32).map(|i| (i * 7 + round) as u8).collect();
            let mut off = 0;
            while off < chunk.len() {
                off += tx.write(&chunk[off..]).expect("write");
                let n = rx.read(&mut buf).expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            expected.extend_from_slice(&chunk);
        }
        loop {
            let n = rx.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn full_ring_and_corrupt_indices() {
        let ((mut tx, _), (_, rx)) = pair(4096);
        assert_eq!(tx.write(&[1u8; 5000]).expect("write"), 4096);
        assert_eq!(tx.write(&[1u8; 1]).expect("write"), 0);
        assert!(tx.prepare_park().expect("park"));
        // A peer scribbling a tail beyond head makes the fill level exceed capacity.
        rx.ctl().tail.0.store(u64::MAX / 2, Ordering::Release);
        assert!(tx.write(&[1]).is_err());
    }

    #[test]
    fn refuses_a_wrong_size_or_header() {
        let file = crate::shm::sys::sealed_memfd(segment_len(8192)).expect("memfd");
        assert!(open(&file, 4096, Side::Listener).is_err());
        assert!(
            open(&file, 8192, Side::Listener).is_err(),
            "header not written yet"
        );
    }
}
