//! Spill files and the io_uring that writes and reads them.
//!
//! # Files
//! Every spill file is created unlinked (`O_TMPFILE`, or created and removed at once where the
//! filesystem lacks it): it has no name, so nothing is left in the spill directory when the
//! store drops it, nor when the process is killed. A file lives as long as some [`SpillSlot`]
//! refers to it (an `Arc`); objects of at least `spill_fuse_below` bytes get a file each, the
//! smaller ones of one spill batch share one file.
//!
//! # I/O
//! Objects are written straight from their arena blocks and read straight back into new ones:
//! blocks are 4 KiB aligned and whole 4 KiB units long, so files are opened `O_DIRECT` where
//! the filesystem allows (no page-cache copy). Each object is cut into `spill_chunk`-sized
//! writes, all submitted to one io_uring up to its queue depth: large sequential writes with
//! many in flight. Short transfers are resubmitted for their remainder. Where io_uring cannot be
//! set up (e.g. a seccomp filter), positional `pwrite`/`pread` take over, and the log says so.
//!
//! # Reuse, then closing
//! Closing the last descriptor of an unlinked file makes the filesystem free its blocks there
//! and then: about 5 ms for a 16 MiB file on ext4 here, as long as reading it back, and on a
//! filesystem mounted with `discard` the freeing sends discards to the device that compete with
//! the reads and writes around them (measured: a stream of restores ran at 0.7–0.8× of the
//! disk's read rate while the previous restores' files were being closed, at the full rate while
//! they were kept open). So a restore hands its slot to [`Spiller::release`], which keeps the
//! emptied file in a pool for a later spill to overwrite in place (its blocks are already
//! allocated and written: the overwrite allocates nothing, frees nothing and extends nothing),
//! up to `spill_reuse_bytes` and `spill_reuse_files` (each pooled file holds a descriptor: many
//! small fused files must not exhaust the process's limit); only files beyond that are dropped, on a closer thread (started on
//! first use, joined when the spiller drops, so every file is closed when the store is gone).
//! A spill takes the smallest pooled file at least as large as what it writes and at most twice
//! that (so a small object never pins a large file's disk space); otherwise it opens a new one.
//! Stale bytes past the new contents are never read (a slot knows its length) and the file is
//! unlinked and private to this process.
//!
//! # The soundness rule
//! The kernel reads and writes the arena asynchronously. [`Spiller::spill`] and
//! [`Spiller::restore`] therefore return only when every operation they submitted has
//! completed, on success and on error alike: after they return, no kernel access to the
//! caller's buffers remains, and the caller may free or reuse the blocks.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, types};
use tracing::{debug, info, warn};

use crate::config::StoreConfig;

/// An unlinked spill file.
pub(crate) struct SpillFile {
    file: File,
    direct: bool,
    /// Bytes written to it so far (its extent on disk): what a reuse may overwrite in place.
    size: u64,
}

impl fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpillFile")
            .field("fd", &self.file.as_raw_fd())
            .field("direct", &self.direct)
            .field("size", &self.size)
            .finish()
    }
}

/// Where one spilled object lies on disk.
#[derive(Debug)]
pub(crate) struct SpillSlot {
    file: Arc<SpillFile>,
    offset: u64,
    /// Bytes on disk: the object's block length (a multiple of 4 KiB).
    len: usize,
}

impl SpillSlot {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One object to spill: its block in the arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpillItem {
    pub(crate) ptr: *const u8,
    /// Block length, a multiple of 4 KiB.
    pub(crate) len: usize,
}

/// Which way an operation moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Write,
    Read,
}

/// One positional transfer: `len` bytes between `buf` and `fd` at `off`.
#[derive(Debug, Clone, Copy)]
struct Op {
    fd: i32,
    buf: *mut u8,
    len: usize,
    off: u64,
}

/// The ring, created on first use; `None` after a failed set-up means "use pwrite/pread".
#[derive(Default)]
struct RingSlot {
    tried: bool,
    ring: Option<IoUring>,
}

/// Writes objects to spill files and reads them back.
pub(crate) struct Spiller {
    dir: PathBuf,
    fuse_below: usize,
    chunk: usize,
    entries: u32,
    ring: Mutex<RingSlot>,
    seq: AtomicU64,
    reuse_cap: u64,
    reuse_files: usize,
    pool: Mutex<Pool>,
    closer: Mutex<Option<Closer>>,
}

/// Emptied spill files kept for reuse (see "Reuse, then closing").
#[derive(Default)]
struct Pool {
    files: Vec<SpillFile>,
    bytes: u64,
}

impl Pool {
    /// Takes the smallest file of at least `len` bytes and at most twice that.
    fn take(&mut self, len: u64) -> Option<SpillFile> {
        let (i, _) = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.size >= len && f.size / 2 <= len)
            .min_by_key(|(_, f)| f.size)?;
        let file = self.files.swap_remove(i);
        self.bytes -= file.size;
        Some(file)
    }
}

/// The thread that closes files, and the channel to it.
struct Closer {
    tx: Sender<SpillFile>,
    thread: JoinHandle<()>,
}

impl fmt::Debug for Spiller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spiller")
            .field("dir", &self.dir)
            .field("fuse_below", &self.fuse_below)
            .finish()
    }
}

impl Spiller {
    pub(crate) fn new(config: &StoreConfig) -> Self {
        Spiller {
            dir: config.spill_dir.clone(),
            fuse_below: config.spill_fuse_below,
            chunk: config.spill_chunk.max(4096) / 4096 * 4096,
            entries: config.io_uring_entries.max(1),
            ring: Mutex::new(RingSlot::default()),
            seq: AtomicU64::new(0),
            reuse_cap: config.spill_reuse_bytes as u64,
            reuse_files: config.spill_reuse_files,
            pool: Mutex::new(Pool::default()),
            closer: Mutex::new(None),
        }
    }

    /// Drops `slot`. If it was the last slot of its file, the file goes to the reuse pool, or
    /// (pool full) is closed on the closer thread, off the caller's path.
    pub(crate) fn release(&self, slot: SpillSlot) {
        let Ok(file) = Arc::try_unwrap(slot.file) else {
            // Other slots still use the file: dropping this reference closes nothing.
            return;
        };
        let overflow = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.bytes + file.size <= self.reuse_cap && pool.files.len() < self.reuse_files {
                pool.bytes += file.size;
                pool.files.push(file);
                None
            } else {
                Some(file)
            }
        };
        if let Some(file) = overflow {
            self.close(file);
        }
    }

    /// Closes `file` on the closer thread; inline if that thread cannot be had.
    fn close(&self, file: SpillFile) {
        let mut closer = self.closer.lock().unwrap_or_else(|p| p.into_inner());
        if closer.is_none() {
            let (tx, rx) = mpsc::channel::<SpillFile>();
            let spawned = std::thread::Builder::new()
                .name("manta-spill-close".into())
                .spawn(move || rx.into_iter().for_each(drop));
            match spawned {
                Ok(thread) => *closer = Some(Closer { tx, thread }),
                Err(e) => debug!(error = %e, "spill: no closer thread; closing inline"),
            }
        }
        let unsent = match closer.as_ref() {
            Some(c) => c.tx.send(file).err().map(|e| e.0),
            None => Some(file),
        };
        drop(closer);
        drop(unsent);
    }

    /// Opens a new unlinked file in the spill directory, `O_DIRECT` if the filesystem allows.
    fn open(&self) -> io::Result<SpillFile> {
        let tmpfile = |extra: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE | extra)
                .open(&self.dir)
        };
        if let Ok(file) = tmpfile(libc::O_DIRECT) {
            return Ok(SpillFile {
                file,
                direct: true,
                size: 0,
            });
        }
        if let Ok(file) = tmpfile(0) {
            return Ok(SpillFile {
                file,
                direct: false,
                size: 0,
            });
        }
        let name = format!(
            ".manta-spill-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let path: PathBuf = Path::new(&self.dir).join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(SpillFile {
            file,
            direct: false,
            size: 0,
        })
    }

    /// A file to write `len` bytes to from offset 0: a pooled one that fits, else a new one.
    fn file_for(&self, len: usize) -> io::Result<SpillFile> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(len as u64);
        let mut file = match pooled {
            Some(f) => f,
            None => self.open()?,
        };
        file.size = file.size.max(len as u64);
        Ok(file)
    }

    /// Writes `items` to new spill files; returns one slot per item, in order.
    ///
    /// # Safety
    /// Each item's `ptr` must be valid for reads of `len` bytes, and those bytes must not be
    /// written by anyone, until this call returns.
    pub(crate) unsafe fn spill(&self, items: &[SpillItem]) -> io::Result<Vec<SpillSlot>> {
        let mut fused: Option<(Arc<SpillFile>, u64)> = None;
        let fused_len: usize = items
            .iter()
            .filter(|i| i.len < self.fuse_below)
            .map(|i| i.len)
            .sum();
        let mut slots = Vec::with_capacity(items.len());
        let mut ops = Vec::new();
        for item in items {
            let (file, offset) = if item.len >= self.fuse_below {
                (Arc::new(self.file_for(item.len)?), 0)
            } else {
                if fused.is_none() {
                    fused = Some((Arc::new(self.file_for(fused_len)?), 0));
                }
                let (file, at) = fused
                    .as_mut()
                    .ok_or_else(|| io::Error::other("fused spill file missing"))?;
                let offset = *at;
                *at += item.len as u64;
                (Arc::clone(file), offset)
            };
            self.chunks(
                &mut ops,
                file.file.as_raw_fd(),
                item.ptr.cast_mut(),
                item.len,
                offset,
            );
            slots.push(SpillSlot {
                file,
                offset,
                len: item.len,
            });
        }
        // SAFETY: every op reads from an item's buffer, valid and unwritten until we return (our
        // caller's contract); the files are kept open by `slots`, alive across the call.
        unsafe { self.run(Dir::Write, ops)? };
        Ok(slots)
    }

    /// Reads the object in `slot` into `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `slot.len()` bytes, and nothing else may read or write
    /// them, until this call returns.
    pub(crate) unsafe fn restore(&self, slot: &SpillSlot, dst: *mut u8) -> io::Result<()> {
        let mut ops = Vec::new();
        self.chunks(
            &mut ops,
            slot.file.file.as_raw_fd(),
            dst,
            slot.len,
            slot.offset,
        );
        // SAFETY: the ops write into `dst`, which our caller guarantees; `slot` keeps the file
        // open across the call.
        unsafe { self.run(Dir::Read, ops) }
    }

    fn chunks(&self, ops: &mut Vec<Op>, fd: i32, buf: *mut u8, len: usize, off: u64) {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.chunk);
            ops.push(Op {
                fd,
                buf: buf.wrapping_add(done),
                len: n,
                off: off + done as u64,
            });
            done += n;
        }
    }

    /// Performs `ops`, through io_uring when available.
    ///
    /// # Safety
    /// Every op's buffer must be valid for its direction (reads for `Write`, writes for `Read`)
    /// and its fd open, until this call returns.
    unsafe fn run(&self, dir: Dir, ops: Vec<Op>) -> io::Result<()> {
        let mut slot = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.tried {
            slot.tried = true;
            match IoUring::new(self.entries) {
                Ok(ring) => {
                    info!(entries = self.entries, dir = %self.dir.display(), "spill: io_uring ready");
                    slot.ring = Some(ring);
                }
                Err(e) => warn!(error = %e, "spill: io_uring unavailable; using pwrite/pread"),
            }
        }
        match slot.ring.as_mut() {
            // SAFETY: forwarded from our caller.
            Some(ring) => unsafe { run_uring(ring, dir, ops) },
            // SAFETY: forwarded from our caller.
            None => unsafe { run_sync(dir, &ops) },
        }
    }
}

impl Drop for Spiller {
    fn drop(&mut self) {
        // Pooled files close here, before the closer is joined (no I/O is left to disturb).
        self.pool
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .clear();
        let closer = self.closer.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(Closer { tx, thread }) = closer.take() {
            drop(tx);
            if thread.join().is_err() {
                warn!("spill: the closer thread panicked");
            }
        }
    }
}

/// `ops` with positional syscalls, one after another.
///
/// # Safety
/// As [`Spiller::run`].
unsafe fn run_sync(dir: Dir, ops: &[Op]) -> io::Result<()> {
    for op in ops {
        // SAFETY: the fd is open for the call (caller's contract); we borrow it without owning.
        let file = std::mem::ManuallyDrop::new(unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(op.fd)
        });
        match dir {
            Dir::Write => {
                // SAFETY: op.buf is valid for reads of op.len bytes (caller's contract).
                let buf = unsafe { std::slice::from_raw_parts(op.buf, op.len) };
                file.write_all_at(buf, op.off)?;
            }
            Dir::Read => {
                // SAFETY: op.buf is valid for exclusive writes of op.len bytes (caller's contract).
                let buf = unsafe { std::slice::from_raw_parts_mut(op.buf, op.len) };
                file.read_exact_at(buf, op.off)?;
            }
        }
    }
    Ok(())
}

/// `ops` through `ring`, keeping up to its queue depth in flight. Returns only when nothing
/// submitted is still in flight (the module's soundness rule).
///
/// # Safety
/// As [`Spiller::run`].
unsafe fn run_uring(ring: &mut IoUring, dir: Dir, ops: Vec<Op>) -> io::Result<()> {
    let mut pending: VecDeque<Op> = ops.into();
    let mut slab: Vec<Option<Op>> = Vec::new();
    let mut in_flight = 0usize;
    let mut failure: Option<io::Error> = None;
    let mut submit_failures = 0u32;
    loop {
        // 1. Fill the submission queue (unless an op has failed: then only drain).
        while failure.is_none() {
            let Some(op) = pending.pop_front() else { break };
            let len = u32::try_from(op.len).unwrap_or(!4095);
            let idx = slab.iter().position(Option::is_none).unwrap_or_else(|| {
                slab.push(None);
                slab.len() - 1
            });
            let entry = match dir {
                Dir::Write => opcode::Write::new(types::Fd(op.fd), op.buf, len)
                    .offset(op.off)
                    .build(),
                Dir::Read => opcode::Read::new(types::Fd(op.fd), op.buf, len)
                    .offset(op.off)
                    .build(),
            }
            .user_data(idx as u64);
            // SAFETY: the entry's buffer stays valid until its completion is reaped: the caller
            // guarantees validity until we return, and we return only with in_flight == 0.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                pending.push_front(op);
                break;
            }
            slab[idx] = Some(op);
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        // 2. Submit and wait for at least one completion.
        if let Err(e) = ring.submit_and_wait(1) {
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            );
            if !transient {
                submit_failures += 1;
                failure.get_or_insert(e);
                if submit_failures > 1000 {
                    // Returning now would let the kernel write into blocks our caller is about
                    // to reuse; there is no sound way out but to stop the process.
                    eprintln!(
                        "manta-store: io_uring keeps failing with operations in flight; aborting"
                    );
                    std::process::abort();
                }
            }
        }
        // 3. Reap completions; resubmit the remainder of short or interrupted transfers.
        for cqe in ring.completion() {
            let Some(op) = slab
                .get_mut(cqe.user_data() as usize)
                .and_then(Option::take)
            else {
                continue;
            };
            in_flight -= 1;
            let res = cqe.result();
            if res == -libc::EINTR || res == -libc::EAGAIN {
                pending.push_front(op);
            } else if res < 0 {
                failure.get_or_insert(io::Error::from_raw_os_error(-res));
            } else if res == 0 {
                failure.get_or_insert(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spill transfer made no progress",
                ));
            } else if (res as usize) < op.len {
                let n = res as usize;
                pending.push_front(Op {
                    fd: op.fd,
                    buf: op.buf.wrapping_add(n),
                    len: op.len - n,
                    off: op.off + n as u64,
                });
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            debug!(?dir, "spill: io_uring batch done");
            Ok(())
        }
    }
}
