//! Pressure: a workload putting 3× the arena's size stays byte-exact, with objects spilled to
//! disk (io_uring, unlinked files) and restored on `get`; nothing is left in the spill directory.

use std::time::Duration;

use manta_store::{ObjectKey, PageRequest, Store, StoreConfig};

/// Deterministic contents for object `n` of `len` bytes (no need to keep a copy).
fn contents(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// This process's open fds whose target lies in `dir` (spill files show as `dir/#ino (deleted)`).
fn fds_in(dir: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Shows the store's logs (`RUST_LOG`, default info) in test output.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("manta_store=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn store_in(dir: &std::path::Path, capacity: usize) -> Store {
    let defaults = StoreConfig::default();
    store_reusing(
        dir,
        capacity,
        defaults.spill_reuse_bytes,
        defaults.spill_reuse_files,
    )
}

/// A store that keeps at most `reuse` bytes and `files` files of emptied spill files for reuse.
fn store_reusing(dir: &std::path::Path, capacity: usize, reuse: usize, files: usize) -> Store {
    init_logs();
    Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: true,
        spill_dir: dir.to_path_buf(),
        create_timeout: Duration::from_secs(5),
        spill_reuse_bytes: reuse,
        spill_reuse_files: files,
        ..StoreConfig::with_capacity(capacity)
    })
    .expect("store")
}

/// Waits (up to 10 s) until at most `n` fds of this process point into `dir`; returns the
/// count seen last. Files beyond the reuse pool are closed on the spiller's closer thread.
fn fds_settle(dir: &std::path::Path, n: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds_in(dir);
        if now <= n || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sizes cycling through fused-small (< 1 MiB) and own-file large objects.
fn size_of_object(n: u64) -> usize {
    [150_000, 700_000, 2 << 20, 333_333, 3 << 20, 100 * 1024][n as usize % 6]
}

#[test]
fn three_times_the_arena_stays_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let capacity = 16 << 20;
        let store = store_in(dir.path(), capacity);
        let mut total = 0;
        let mut n = 0u64;
        while total < 3 * capacity {
            let len = size_of_object(n);
            store
                .put(ObjectKey::from_u128(n.into()), contents(n, len))
                .expect("put never fails while objects can spill");
            total += len;
            n += 1;
        }
        let stats = store.stats();
        eprintln!("{n} objects, {total} bytes put; {stats:?}");
        assert!(
            stats.spills > 0 && stats.spilled_objects > 0,
            "some objects were spilled"
        );
        assert!(stats.used <= capacity);
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("spill dir").collect();
        assert!(names.is_empty(), "spill files are unlinked: {names:?}");
        assert!(fds_in(dir.path()) > 0, "yet open while objects are spilled");

        // Read everything back, oldest (spilled) first, twice: restores evict/spill others.
        for round in 0..2 {
            for i in 0..n {
                let key = ObjectKey::from_u128(i.into());
                let pinned = store.get(key).expect("get restores spilled objects");
                assert!(
                    pinned[..] == contents(i, size_of_object(i))[..],
                    "object {i} byte-exact (round {round})"
                );
            }
        }
        let stats = store.stats();
        assert!(stats.restores > 0, "some objects were restored: {stats:?}");
        eprintln!("after reading back: {stats:?}");
    }
    assert_eq!(fds_in(dir.path()), 0, "spill files are closed on drop");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn concurrent_writers_and_readers_under_pressure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path(), 8 << 20);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..24u64 {
                    let n = t * 1000 + i;
                    let len = 300_000 + (n as usize % 5) * 100_000;
                    store
                        .put(ObjectKey::from_u128(n.into()), contents(n, len))
                        .expect("put");
                    let back = n - i + i / 2;
                    let len_back = 300_000 + (back as usize % 5) * 100_000;
                    let view = store.get(ObjectKey::from_u128(back.into())).expect("get");
                    assert!(view[..] == contents(back, len_back)[..], "object {back}");
                }
            });
        }
    });
    assert!(store.stats().spills > 0);
}

#[test]
fn deleting_spilled_objects_frees_their_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No reuse pool: every emptied file is closed.
    let store = store_reusing(dir.path(), 4 << 20, 0, 0);
    for n in 0..12u64 {
        store
            .put(ObjectKey::from_u128(n.into()), contents(n, 1 << 20))
            .expect("put");
    }
    let fds_spilling = fds_in(dir.path());
    let spilled: Vec<u64> = (0..12)
        .filter(|&n| store.is_spilled(ObjectKey::from_u128(n.into())))
        .collect();
    assert!(!spilled.is_empty());
    for &n in &spilled {
        store
            .delete(ObjectKey::from_u128(n.into()))
            .expect("delete a spilled object");
    }
    assert!(fds_spilling > 0);
    assert_eq!(
        fds_settle(dir.path(), 0),
        0,
        "each spilled object's file is closed with it"
    );
    assert_eq!(store.stats().spilled_objects, 0);
}

#[test]
fn emptied_spill_files_are_reused_up_to_the_byte_cap() {
    // 1 MiB objects (a file each); the pool keeps at most 3 MiB of files.
    reuse_round(3 << 20, 64, 3);
}

#[test]
fn emptied_spill_files_are_reused_up_to_the_file_cap() {
    reuse_round(1 << 30, 2, 2);
}

/// Spills 1 MiB objects from a 4 MiB arena, empties their files, checks that `kept` of them
/// stay open and that the next spills reuse them.
fn reuse_round(reuse_bytes: usize, reuse_files: usize, kept: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_reusing(dir.path(), 4 << 20, reuse_bytes, reuse_files);
    let put_round = |first: u64| -> Vec<u64> {
        for n in first..first + 12 {
            store
                .put(ObjectKey::from_u128(n.into()), contents(n, 1 << 20))
                .expect("put");
        }
        (first..first + 12)
            .filter(|&n| store.is_spilled(ObjectKey::from_u128(n.into())))
            .collect()
    };
    let spilled = put_round(0);
    let files = fds_in(dir.path());
    assert!(
        spilled.len() > kept && files == spilled.len(),
        "{files} files"
    );
    // Read back two (their files go to the pool), delete the rest (pool up to the cap).
    for &n in &spilled[..2] {
        let view = store.get(ObjectKey::from_u128(n.into())).expect("restore");
        assert!(view[..] == contents(n, 1 << 20)[..], "object {n}");
    }
    for n in 0..12u64 {
        store
            .delete(ObjectKey::from_u128(n.into()))
            .expect("delete");
    }
    assert_eq!(store.stats().spilled_objects, 0);
    assert_eq!(
        fds_settle(dir.path(), kept),
        kept,
        "{kept} emptied 1 MiB files kept, the others closed"
    );
    // The next spills overwrite the kept files before opening new ones, byte-exact.
    let spilled = put_round(100);
    assert!(spilled.len() > kept);
    assert_eq!(fds_in(dir.path()), spilled.len(), "kept files were reused");
    for n in 100..112u64 {
        let view = store.get(ObjectKey::from_u128(n.into())).expect("get");
        assert!(view[..] == contents(n, 1 << 20)[..], "object {n}");
    }
    drop(store);
    assert_eq!(fds_in(dir.path()), 0, "every file is closed with the store");
}

#[test]
fn spill_all_writes_every_released_primary_and_counts_the_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path(), 16 << 20);
    // Large objects (a file each) and small ones (fused into one file).
    let sizes = [3 << 20, 200_000, 2 << 20, 150_000];
    for (n, &len) in sizes.iter().enumerate() {
        store
            .put(ObjectKey::from_u128(n as u128), contents(n as u64, len))
            .expect("put");
    }
    let pinned = store.get(ObjectKey::from_u128(0)).expect("get");
    assert_eq!(store.spill_all(), 3, "all but the pinned object");
    drop(pinned);
    let stats = store.stats();
    let on_disk: usize = sizes[1..].iter().map(|&s| s.div_ceil(4096) * 4096).sum();
    assert_eq!((stats.spilled_objects, stats.spilled_bytes), (3, on_disk));
    assert_eq!(stats.spill_io.bytes, on_disk as u64);
    assert!(stats.spill_io.time > Duration::ZERO);
    for (n, &len) in sizes.iter().enumerate() {
        let view = store.get(ObjectKey::from_u128(n as u128)).expect("get");
        assert!(view[..] == contents(n as u64, len)[..], "object {n}");
    }
    let stats = store.stats();
    assert_eq!(stats.restore_io.bytes, on_disk as u64);
    assert!(stats.restore_io.bytes_per_sec() > 0.0);
    assert_eq!(
        store.spill_all(),
        4,
        "nothing pinned now: everything spills again"
    );
}

/// A tmpfs of `size` bytes mounted at a fresh directory, unmounted on drop; `None` (and the
/// reason printed) where this process may not mount (not root, no mount namespace rights).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: usize) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("manta-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir)),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a small tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(e) => {
                eprintln!("skipped: no mount command: {e}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A full spill disk loses nothing and says so (issue 13, item 8): with the spill directory on
/// a 2 MiB tmpfs and an 8 MiB arena, puts go on while spilling has room; then a put that needs
/// a spill fails at once (not after the create timeout) with an error naming the spill
/// directory and the full disk, and hands the value back. Every object put before stays
/// readable, byte for byte — in memory, or spilled and restored once deletes made room.
#[test]
fn a_full_spill_disk_fails_the_put_at_once_and_loses_nothing() {
    const MIB: usize = 1 << 20;
    let Some(disk) = SmallDisk::mount(2 * MIB) else {
        return;
    };
    init_logs();
    let store = Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: true,
        spill_dir: disk.0.clone(),
        create_timeout: Duration::from_secs(30),
        ..StoreConfig::with_capacity(8 * MIB)
    })
    .expect("store");
    let len = MIB - 4096;
    let mut kept = Vec::new();
    let failed = loop {
        let n = kept.len() as u64;
        let started = std::time::Instant::now();
        match store.put(ObjectKey::from_u128(n.into()), contents(n, len)) {
            Ok(_) => kept.push(n),
            Err(e) => break (e, started.elapsed()),
        }
        assert!(
            kept.len() < 64,
            "an 8 MiB arena and a 2 MiB disk hold no 64 MiB"
        );
    };
    let (error, took) = failed;
    assert!(
        kept.len() >= 8,
        "the arena and the disk hold at least 8 objects: {} ({})",
        kept.len(),
        error.error
    );
    let text = error.error.to_string();
    assert!(
        text.contains("spilling to") && text.contains("No space left on device"),
        "the error says the spill disk is full: {text}"
    );
    assert!(
        took < Duration::from_secs(15),
        "failed after {took:?}: it waited for room that only a delete can make"
    );
    assert_eq!(error.value.len(), len, "the value is handed back");
    // Deletes make room: every object still there reads back exact (restoring the spilled).
    let in_memory: Vec<u64> = kept
        .iter()
        .copied()
        .filter(|&n| !store.is_spilled(ObjectKey::from_u128(n.into())))
        .collect();
    for &n in in_memory.iter().take(3) {
        store
            .delete(ObjectKey::from_u128(n.into()))
            .expect("delete an object in memory");
    }
    for &n in kept.iter().filter(|n| !in_memory[..3].contains(n)) {
        let pinned = store
            .get(ObjectKey::from_u128(n.into()))
            .unwrap_or_else(|e| panic!("object {n} unreadable: {e}"));
        assert!(*pinned == *contents(n, len), "object {n} changed");
    }
}
