//! Spill and restore throughput against sequential disk I/O on the same kind of files, measured
//! in the same run, in the same directory.
//!
//! Set-up: a store whose arena holds [`OBJECTS`] objects of [`OBJECT`] bytes (pre-faulted, so
//! neither side pays first-touch faults; spill threshold 1.0, so nothing spills by itself). Its
//! spill directory is a fresh directory under the system temp dir, removed at the end (spill
//! files are unlinked from birth anyway).
//!
//! - `spill/store`: put the objects (not timed), then [`Store::spill_all`] (timed): the pressure
//!   path of step 5 with every object a victim, in one batch. Bytes of primaries written / time.
//! - `restore/store`: `get` of every spilled object, one after another (each restores its object
//!   into the arena before returning), timed. The restored objects' files go to the spiller's
//!   reuse pool, so from the second round on `spill/store` overwrites them in place.
//! - `spill/disk-<chunk>x<depth>[-falloc|-overwrite]`, `restore/disk-...`: the baseline. One new file per
//!   object, same sizes, same directory, opened the way the spiller opens them (`O_TMPFILE`,
//!   `O_DIRECT` where the filesystem allows), written then read sequentially through io_uring
//!   with `<chunk>`-byte transfers, `<depth>` in flight across all files, as `fio --rw=write
//!   --direct=1 --ioengine=io_uring --bs=<chunk> --iodepth=<depth>` would (`-falloc`: each file
//!   laid out with `fallocate` first, as fio does by default; `-overwrite`: files written once
//!   beforehand, untimed, then written again in place, which is what a spill into a file the
//!   spiller kept for reuse does — so neither side is compared with an easier kind of write
//!   than its own). The memory is one block of the same store's arena: the very pages the
//!   spiller moves (with `O_DIRECT` the kernel pins them page by page, so 4 KiB pages against
//!   huge ones would skew the comparison by ~1.5×). Four settings are measured; each ratio is taken against the fastest, so the baseline is the
//!   best this disk did in this run.
//! - Under pressure (printed only): a second store whose arena holds 8 objects, default spill
//!   threshold (0.8) and `spill_min_batch` (64 MiB: 4 objects), gets 3× that many objects put,
//!   then every one read back: the store spills by itself, one batch each time a `put` takes
//!   use past the threshold (down to 64 MiB below it), and restores on `get` (spilling others,
//!   again 64 MiB at a time, to make room). Its rates come from [`StoreStats::spill_io`] and
//!   [`StoreStats::restore_io`] (bytes and time of the spill I/O alone, not the puts' copies).
//!
//! **Page cache.** With `O_DIRECT` (ext4, xfs, ...) neither side goes through the page cache, so
//! nothing needs dropping and the bench needs no root: this is what it uses here. Where the
//! filesystem refuses `O_DIRECT` (tmpfs), the baseline writes with `pwrite` + `fdatasync` and
//! drops each file's clean pages with `posix_fadvise(DONTNEED)` (no root needed either) before
//! reading; the report then says the spill files were buffered, and the ratios compare
//! page-cache spills with a synced disk, which is not the target's question.
//! `/proc/sys/vm/drop_caches` is never used.
//!
//! After criterion's report, an interleaved loop (so every side sees the same machine state)
//! prints the medians as `spill/disk-write = x.xx×` and `restore/disk-read = x.xx×` (throughput
//! ratios; the target is ≥ 0.80).
//!
//! `cargo bench -p manta-store --bench spill -- --test` smoke-runs everything once.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use io_uring::{IoUring, opcode, types};
use manta_store::{Created, IoTotals, ObjectKey, PageRequest, Store, StoreConfig, StoreStats};

const MIB: usize = 1 << 20;
/// Bytes per object (and per baseline file).
const OBJECT: usize = 16 * MIB;
/// Objects per round: 256 MiB in all.
const OBJECTS: usize = 16;
/// How the baseline's files are laid out before its timed writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// New, empty files.
    Fresh,
    /// New files laid out with `fallocate` first, as fio does by default.
    Falloc,
    /// Files already written once: the timed write overwrites them in place.
    Overwrite,
}

/// One baseline setting: (transfer size, transfers in flight, layout).
type Method = (usize, usize, Layout);

/// The baseline's settings.
const BASELINES: [Method; 4] = [
    (MIB, 32, Layout::Falloc),
    (8 * MIB, 8, Layout::Falloc),
    (8 * MIB, 32, Layout::Fresh),
    (8 * MIB, 32, Layout::Overwrite),
];

fn keys() -> Vec<ObjectKey> {
    (0..OBJECTS as u128).map(ObjectKey::from_u128).collect()
}

/// Puts every object (not part of any timing).
fn fill(store: &Store, data: &[u8]) {
    for key in keys() {
        store.put(key, data).expect("put");
    }
}

/// Deletes every object, spilled or not.
fn clear(store: &Store) {
    for key in keys() {
        store.delete(key).expect("delete");
    }
}

/// Time of spilling every object (put first, not timed). Leaves them spilled.
fn time_spill(store: &Store, data: &[u8]) -> Duration {
    fill(store, data);
    let start = Instant::now();
    let freed = store.spill_all();
    let took = start.elapsed();
    assert_eq!(freed, OBJECTS, "every object was spilled");
    took
}

/// Time of restoring every (spilled) object; checks their bytes after, untimed. Leaves the store
/// empty.
fn time_restore(store: &Store, data: &[u8]) -> Duration {
    assert_eq!(store.stats().spilled_objects, OBJECTS);
    let start = Instant::now();
    for key in keys() {
        black_box(store.get(key).expect("restore").len());
    }
    let took = start.elapsed();
    for key in keys() {
        let pin = store.get(key).expect("get");
        assert!(pin[..] == data[..], "restored bytes differ");
    }
    clear(store);
    took
}

/// Objects the pressure store's arena holds.
const PRESSURE_ARENA_OBJECTS: usize = 8;

/// Spill and restore I/O of one pressure round: put 3× the arena, get everything back, delete.
/// Returns the spill and restore rates in bytes per second.
fn pressure_round(store: &Store, data: &[u8]) -> (f64, f64) {
    let before = store.stats();
    let n = 3 * PRESSURE_ARENA_OBJECTS as u128;
    for key in (0..n).map(ObjectKey::from_u128) {
        store.put(key, data).expect("put under pressure");
    }
    for key in (0..n).map(ObjectKey::from_u128) {
        let pin = store.get(key).expect("get under pressure");
        assert!(pin[..] == data[..], "restored bytes differ");
    }
    for key in (0..n).map(ObjectKey::from_u128) {
        store.delete(key).expect("delete");
    }
    let after = store.stats();
    (
        delta(&before, &after, |s| s.spill_io),
        delta(&before, &after, |s| s.restore_io),
    )
}

/// Bytes per second moved between two snapshots of one of the store's I/O totals.
fn delta(before: &StoreStats, after: &StoreStats, f: impl Fn(&StoreStats) -> IoTotals) -> f64 {
    let (b, a) = (f(before), f(after));
    (a.bytes - b.bytes) as f64 / (a.time - b.time).as_secs_f64().max(1e-9)
}

/// One baseline file.
struct DiskFile {
    file: File,
    direct: bool,
}

/// A new unlinked file in `dir`, opened as the spiller opens its files.
fn open(dir: &Path) -> DiskFile {
    let tmpfile = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | extra)
            .open(dir)
    };
    if let Ok(file) = tmpfile(libc::O_DIRECT) {
        return DiskFile { file, direct: true };
    }
    let file = tmpfile(0).expect("O_TMPFILE in the spill directory");
    DiskFile {
        file,
        direct: false,
    }
}

/// One transfer: `len` bytes between `buf` and `fd` at `off`.
#[derive(Clone, Copy)]
struct Op {
    fd: i32,
    buf: *mut u8,
    len: usize,
    off: u64,
}

/// Every file's `[0, OBJECT)` cut into `chunk`-sized transfers, file after file, file `i` to or
/// from `buf[i * OBJECT..]`.
fn ops(files: &[DiskFile], buf: *mut u8, chunk: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    for (i, f) in files.iter().enumerate() {
        for off in (0..OBJECT).step_by(chunk) {
            ops.push(Op {
                fd: f.file.as_raw_fd(),
                buf: buf.wrapping_add(i * OBJECT + off),
                len: chunk.min(OBJECT - off),
                off: off as u64,
            });
        }
    }
    ops
}

/// Performs `ops` through `ring`, at most `depth` in flight, in order of submission; returns
/// when all have completed. Aborts the process on an I/O error (returning early would leave
/// the kernel writing into memory the caller may free).
///
/// # Safety
/// Every op's buffer must be valid for its direction and its fd open until this returns.
unsafe fn run_ops(ring: &mut IoUring, ops: Vec<Op>, write: bool, depth: usize) {
    let mut pending: std::collections::VecDeque<Op> = ops.into();
    let mut slab: Vec<Option<Op>> = Vec::new();
    let mut in_flight = 0;
    loop {
        while in_flight < depth {
            let Some(op) = pending.pop_front() else { break };
            let idx = slab.iter().position(Option::is_none).unwrap_or_else(|| {
                slab.push(None);
                slab.len() - 1
            });
            let len = u32::try_from(op.len).expect("transfers below 4 GiB");
            let entry = if write {
                opcode::Write::new(types::Fd(op.fd), op.buf, len)
                    .offset(op.off)
                    .build()
            } else {
                opcode::Read::new(types::Fd(op.fd), op.buf, len)
                    .offset(op.off)
                    .build()
            }
            .user_data(idx as u64);
            // SAFETY: the buffer and fd stay valid until this function returns (our caller's
            // contract), and it returns only once every submitted entry has completed.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                pending.push_front(op);
                break;
            }
            slab[idx] = Some(op);
            in_flight += 1;
        }
        if in_flight == 0 {
            return;
        }
        if let Err(e) = ring.submit_and_wait(1)
            && !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            )
        {
            eprintln!("baseline io_uring submit failed: {e}");
            std::process::abort();
        }
        for cqe in ring.completion() {
            let Some(op) = slab[cqe.user_data() as usize].take() else {
                continue;
            };
            in_flight -= 1;
            let res = cqe.result();
            if res == -libc::EINTR || res == -libc::EAGAIN {
                pending.push_front(op);
            } else if res <= 0 {
                eprintln!(
                    "baseline transfer failed: {}",
                    io::Error::from_raw_os_error(-res)
                );
                std::process::abort();
            } else if (res as usize) < op.len {
                let n = res as usize;
                pending.push_front(Op {
                    buf: op.buf.wrapping_add(n),
                    len: op.len - n,
                    off: op.off + n as u64,
                    ..op
                });
            }
        }
    }
}

/// A block of the store's arena as large as all the objects: the baseline's memory, so that both
/// sides move the very same kind of pages (O_DIRECT pins them page by page: 4 KiB pages cost
/// far more than huge ones). The store must be empty; dropping the handle frees the block.
fn arena_block(store: &Store) -> Created<'_> {
    store
        .create(ObjectKey::from_u128(u128::MAX), OBJECTS * OBJECT)
        .expect("the store is empty between rounds")
}

/// The disk side: a ring of the spiller's queue depth.
struct Disk {
    ring: IoUring,
}

impl Disk {
    fn new() -> Disk {
        Disk {
            ring: IoUring::new(64).expect("io_uring"),
        }
    }

    /// Time of writing `OBJECTS` new files of `OBJECT` bytes (open included, as the spiller's
    /// open is in its time). Returns the files, written and durable (on the device, or synced).
    ///
    /// With [`Layout::Overwrite`] the files are first written once, untimed, and the time is
    /// that of writing them again in place (no open, no allocation: what a spill into a reused
    /// file does).
    fn write(
        &mut self,
        dir: &Path,
        buf: &mut [u8],
        (chunk, depth, layout): Method,
    ) -> (Duration, Vec<DiskFile>) {
        if layout == Layout::Overwrite {
            let (_, files) = self.write(dir, buf, (chunk, depth, Layout::Falloc));
            let start = Instant::now();
            self.write_files(&files, buf, chunk, depth);
            return (start.elapsed(), files);
        }
        let start = Instant::now();
        let files: Vec<DiskFile> = (0..OBJECTS).map(|_| open(dir)).collect();
        for f in files.iter().filter(|_| layout == Layout::Falloc) {
            // Lay the file out first, as fio does by default (`fallocate=native`).
            // SAFETY: fallocate only reads its integer arguments; the fd is open.
            let rc = unsafe { libc::fallocate(f.file.as_raw_fd(), 0, 0, OBJECT as libc::off_t) };
            assert_eq!(rc, 0, "fallocate: {}", io::Error::last_os_error());
        }
        self.write_files(&files, buf, chunk, depth);
        (start.elapsed(), files)
    }

    /// Writes `buf` to `files` (file `i` from `buf[i * OBJECT..]`), durably.
    fn write_files(&mut self, files: &[DiskFile], buf: &mut [u8], chunk: usize, depth: usize) {
        if files[0].direct {
            let ops = ops(files, buf.as_mut_ptr(), chunk);
            // SAFETY: the ops read `buf`, borrowed for this whole call, and write files that
            // `files` keeps open.
            unsafe { run_ops(&mut self.ring, ops, true, depth) };
        } else {
            for (i, f) in files.iter().enumerate() {
                f.file
                    .write_all_at(&buf[i * OBJECT..(i + 1) * OBJECT], 0)
                    .expect("write");
                f.file.sync_data().expect("fdatasync");
            }
        }
    }

    /// Time of reading `files` back, sequentially.
    fn read(&mut self, files: &[DiskFile], buf: &mut [u8], (chunk, depth, _): Method) -> Duration {
        if !files[0].direct {
            for f in files {
                // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
                let rc = unsafe {
                    libc::posix_fadvise(f.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                assert_eq!(rc, 0, "posix_fadvise(DONTNEED)");
            }
        }
        let start = Instant::now();
        if files[0].direct {
            let ops = ops(files, buf.as_mut_ptr(), chunk);
            // SAFETY: the ops write into `buf`, borrowed exclusively for this whole call,
            // and read files that `files` keeps open.
            unsafe { run_ops(&mut self.ring, ops, false, depth) };
        } else {
            for (i, f) in files.iter().enumerate() {
                f.file
                    .read_exact_at(&mut buf[i * OBJECT..(i + 1) * OBJECT], 0)
                    .expect("read");
            }
        }
        start.elapsed()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn gbps(d: Duration) -> f64 {
    (OBJECTS * OBJECT) as f64 / d.as_secs_f64() / 1e9
}

fn label((chunk, depth, layout): Method) -> String {
    format!(
        "disk-{}MiBx{depth}{}",
        chunk / MIB,
        match layout {
            Layout::Fresh => "",
            Layout::Falloc => "-falloc",
            Layout::Overwrite => "-overwrite",
        }
    )
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let dir = tempfile::Builder::new()
        .prefix("manta-spill-bench-")
        .tempdir_in(std::env::temp_dir())
        .expect("spill directory");
    let store = Store::new(StoreConfig {
        pages: PageRequest::Auto,
        prefault: true,
        spill_threshold: 1.0,
        spill_dir: dir.path().to_path_buf(),
        create_timeout: Duration::from_secs(30),
        ..StoreConfig::with_capacity(OBJECTS * OBJECT)
    })
    .expect("store");
    let page_kind = store.stats().page_kind;
    let data: Vec<u8> = (0..OBJECT).map(|i| (i * 7 % 253) as u8).collect();
    let mut disk = Disk::new();
    let direct = open(dir.path()).direct;

    let mut group = c.benchmark_group("spill");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes((OBJECTS * OBJECT) as u64));
    group.bench_function("store", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let took = time_spill(&store, &data);
                    clear(&store);
                    took
                })
                .sum()
        })
    });
    for method in BASELINES {
        group.bench_function(BenchmarkId::from_parameter(label(method)), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let mut block = arena_block(&store);
                        disk.write(dir.path(), block.as_mut_slice(), method).0
                    })
                    .sum()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("restore");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes((OBJECTS * OBJECT) as u64));
    group.bench_function("store", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    time_spill(&store, &data);
                    time_restore(&store, &data)
                })
                .sum()
        })
    });
    for method in BASELINES {
        group.bench_function(BenchmarkId::from_parameter(label(method)), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let mut block = arena_block(&store);
                        let (_, files) = disk.write(dir.path(), block.as_mut_slice(), method);
                        disk.read(&files, block.as_mut_slice(), method)
                    })
                    .sum()
            })
        });
    }
    group.finish();

    // Interleaved, so every side sees the same machine state.
    let pressure = Store::new(StoreConfig {
        pages: PageRequest::Auto,
        prefault: true,
        spill_dir: dir.path().to_path_buf(),
        create_timeout: Duration::from_secs(30),
        ..StoreConfig::with_capacity(PRESSURE_ARENA_OBJECTS * OBJECT)
    })
    .expect("pressure store");
    let reps = if smoke { 1 } else { 7 };
    let (mut spills, mut restores) = (Vec::new(), Vec::new());
    let (mut pressure_spills, mut pressure_restores) = (Vec::new(), Vec::new());
    let mut writes = vec![Vec::new(); BASELINES.len()];
    let mut reads = vec![Vec::new(); BASELINES.len()];
    for _ in 0..reps {
        spills.push(time_spill(&store, &data));
        restores.push(time_restore(&store, &data));
        let (ps, pr) = pressure_round(&pressure, &data);
        pressure_spills.push(ps);
        pressure_restores.push(pr);
        for (i, method) in BASELINES.into_iter().enumerate() {
            let mut block = arena_block(&store);
            let (w, files) = disk.write(dir.path(), block.as_mut_slice(), method);
            writes[i].push(w);
            reads[i].push(disk.read(&files, block.as_mut_slice(), method));
        }
    }
    let (spill, restore) = (median(spills), median(restores));
    let writes: Vec<Duration> = writes.into_iter().map(median).collect();
    let reads: Vec<Duration> = reads.into_iter().map(median).collect();
    let best_write = *writes.iter().min().expect("a baseline");
    let best_read = *reads.iter().min().expect("a baseline");
    let median_rate = |mut v: Vec<f64>| {
        v.sort_unstable_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (pressure_spill, pressure_restore) =
        (median_rate(pressure_spills), median_rate(pressure_restores));

    println!(
        "\n== manta-store spill/restore vs the disk (same run; {OBJECTS} x {} MiB; arena on {page_kind}; {} in {}) ==",
        OBJECT / MIB,
        if direct {
            "O_DIRECT files"
        } else {
            "BUFFERED files (no O_DIRECT here: ratios are not the target's)"
        },
        dir.path().display(),
    );
    println!(
        "store: spill {:.2} GB/s, restore {:.2} GB/s",
        gbps(spill),
        gbps(restore)
    );
    for (i, method) in BASELINES.into_iter().enumerate() {
        println!(
            "{}: write {:.2} GB/s, read {:.2} GB/s",
            label(method),
            gbps(writes[i]),
            gbps(reads[i])
        );
    }
    println!(
        "spill/disk-write = {:.2}×  (target >= 0.80)",
        best_write.as_secs_f64() / spill.as_secs_f64()
    );
    println!(
        "restore/disk-read = {:.2}×  (target >= 0.80)",
        best_read.as_secs_f64() / restore.as_secs_f64()
    );
    println!(
        "under pressure: spill {:.2} GB/s = {:.2}× disk-write, restore {:.2} GB/s = {:.2}× disk-read (the store spilling by itself)",
        pressure_spill / 1e9,
        pressure_spill / 1e9 / gbps(best_write),
        pressure_restore / 1e9,
        pressure_restore / 1e9 / gbps(best_read),
    );
    drop(pressure);
    drop(store);
    drop(dir);
    c.final_summary();
}
