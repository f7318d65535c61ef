//! Other processes on the node: they attach the arena by receiving its memfd over a Unix socket
//! (SCM_RIGHTS) and read objects in place; a killed store process leaves nothing behind.
//!
//! The children are this test binary re-executed with `MANTA_STORE_CHILD` set, running only
//! the `child_entry` test, which does the child's part and is a no-op in a normal run.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use manta_store::{AttachedArena, Location, ObjectKey, PageRequest, Store, StoreConfig, fdpass};

const CHILD_ENV: &str = "MANTA_STORE_CHILD";

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn spawn_child(mode: &str, arg: &std::path::Path) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", arg.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Waits for `child` at most `limit`, killing it if it overruns.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("child overran {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child's side; does nothing unless re-executed by a parent test.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, arg) = spec.split_once(':').expect("mode:arg");
    match mode {
        "reader" => reader_child(arg),
        "store" => store_child(arg),
        other => panic!("unknown child mode {other}"),
    }
}

/// Connects to the parent, receives the arena fd and a location, reads the object in place
/// and answers with its checksum and the sum of its f32 view.
fn reader_child(sock_path: &str) {
    let sock = UnixStream::connect(sock_path).expect("connect");
    let mut buf = [0u8; Location::WIRE_LEN];
    let (n, fd) = fdpass::recv_fd(&sock, &mut buf).expect("recv fd");
    assert_eq!(n, Location::WIRE_LEN);
    let loc = Location::from_bytes(buf);
    let arena = AttachedArena::attach(fd).expect("attach");
    let bytes = arena.bytes(loc).expect("location inside the arena");
    let floats: &[f32] = arena.view(loc).expect("f32 view");
    let sum: f64 = floats.iter().map(|&x| x as f64).sum();
    let mut w = &sock;
    writeln!(w, "{} {} {}", checksum(bytes), sum, bytes.as_ptr() as usize).expect("answer");
    // Wait for the parent's go-ahead so both children overlap in reading.
    let mut done = [0u8; 1];
    let _ = (&sock).read(&mut done);
}

/// Runs a store that spills into `dir`, announces itself, and waits to be killed.
fn store_child(dir: &str) {
    let store = Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: true,
        spill_dir: dir.into(),
        ..StoreConfig::with_capacity(4 << 20)
    })
    .expect("store");
    for n in 0..12u128 {
        store
            .put(ObjectKey::from_u128(n), vec![n as u8; 1 << 20])
            .expect("put");
    }
    assert!(store.stats().spilled_objects > 0);
    println!("READY {}", std::process::id());
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn two_processes_read_one_object_in_place() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let store = Store::new(StoreConfig {
        pages: PageRequest::Small,
        prefault: false,
        ..StoreConfig::with_capacity(32 << 20)
    })
    .expect("store");
    let floats: Vec<f32> = (0..2_000_000).map(|i| (i % 1000) as f32).collect();
    let bytes: &[u8] = bytemuck::cast_slice(&floats);
    let key = ObjectKey::from_u128(42);
    store.put(key, bytes).expect("put");
    let pinned = store.get(key).expect("pinned for the readers");
    let expected_sum: f64 = floats.iter().map(|&x| x as f64).sum();

    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("store.sock");
    let listener = UnixListener::bind(&sock_path).expect("bind");
    let mut children: Vec<Child> = (0..2).map(|_| spawn_child("reader", &sock_path)).collect();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        fdpass::send_fd(&conn, store.arena().fd(), &pinned.location().to_bytes()).expect("send fd");
        conns.push(conn);
    }
    for conn in &conns {
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).expect("answer");
        let mut parts = line.split_whitespace();
        let sum: u64 = parts.next().and_then(|s| s.parse().ok()).expect("checksum");
        let fsum: f64 = parts.next().and_then(|s| s.parse().ok()).expect("f32 sum");
        assert_eq!(sum, checksum(bytes), "the child read the same bytes");
        assert_eq!(fsum, expected_sum, "the child's typed view matches");
    }
    for conn in &conns {
        let _ = (&*conn).write_all(b"x");
    }
    for child in &mut children {
        assert!(wait_bounded(child, Duration::from_secs(30)).success());
    }
    drop(pinned);
}

#[test]
fn a_killed_store_leaves_no_segment_or_spill_file() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let shm_before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child("store", dir.path());
    let stdout = child.stdout.take().expect("stdout");
    // The test harness prints its own text first, on the same line as ours.
    let ready = BufReader::new(stdout)
        .lines()
        .take(20)
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("READY ")
                .and_then(|(_, p)| p.trim().parse::<u32>().ok())
        });
    let Some(pid) = ready else {
        let _ = child.kill();
        panic!("child did not start");
    };
    // While it runs: its arena is a memfd and its spill files are open but nameless.
    let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("child fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    assert!(
        targets.iter().any(|t| t.starts_with("/memfd:manta-arena")),
        "{targets:?}"
    );
    assert!(
        targets
            .iter()
            .any(|t| t.starts_with(&dir.path().display().to_string())),
        "{targets:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

    child.kill().expect("SIGKILL");
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert!(!status.success());
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no spill file left"
    );
    let shm_after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    let new: Vec<_> = shm_after
        .iter()
        .filter(|n| !shm_before.contains(n))
        .collect();
    assert!(
        new.iter().all(|n| !n.to_string_lossy().contains("manta")),
        "no segment in /dev/shm: {new:?}"
    );
}
