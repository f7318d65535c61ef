//! One arena per node: the test process plays the raylet (creates a [`NodeArena`] and serves
//! it), child processes put objects through [`Store::on_node`], and everyone reads everyone's
//! objects in place through [`NodeClient::reader`].
//!
//! The children are this test binary re-executed with `MANTA_NODE_CHILD` set, running only the
//! `child_entry` test, which does the child's part and is a no-op in a normal run. A child
//! prints its answers as lines tagged `@@` (the harness may print on the same line first) and
//! takes commands on stdin. Every wait is bounded; children are killed when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use manta_auth as auth;
use manta_store::{
    Location, NodeArena, NodeClient, NodeServer, ObjectKey, PageRequest, Store, StoreConfig, fdpass,
};

const CHILD_ENV: &str = "MANTA_NODE_CHILD";
const TOKEN: &str = "node-test-token";
const MIB: usize = 1 << 20;
/// Longest any single step of a test waits.
const STEP: Duration = Duration::from_secs(60);

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The content of object `key` of `len` bytes: little-endian words derived from key and index.
fn pattern(key: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&(key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn abstract_addr(name: &str) -> SocketAddr {
    let name = format!("manta-node-test-{}-{name}", std::process::id());
    SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address")
}

/// A node arena of `capacity` bytes in granules of `granule`, served at a fresh address.
fn node(name: &str, capacity: usize, granule: usize) -> (Arc<NodeArena>, NodeServer, String) {
    let arena = NodeArena::create(&StoreConfig {
        pages: PageRequest::Small,
        prefault: false,
        node_granule: granule,
        ..StoreConfig::with_capacity(capacity)
    })
    .expect("node arena");
    let addr = abstract_addr(name);
    let listener = UnixListener::bind_addr(&addr).expect("bind");
    let server = arena.serve(listener, TOKEN).expect("serve");
    (
        arena,
        server,
        format!("manta-node-test-{}-{name}", std::process::id()),
    )
}

/// A child process, killed on drop unless it exited.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Kid {
    fn spawn(mode: &str, sock: &str, arg: &str, dir: &std::path::Path) -> Kid {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{mode}|{sock}|{arg}|{}", dir.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, tagged)) = line.split_once("@@")
                    && tx.send(tagged.trim().to_owned()).is_err()
                {
                    return;
                }
            }
        });
        Kid {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// The next tagged line, within [`STEP`].
    fn line(&self) -> String {
        self.lines
            .recv_timeout(STEP)
            .expect("the child answered in time")
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush");
    }

    /// The `OBJ` lines up to `READY`.
    fn objects(&self) -> Vec<Obj> {
        let mut out = Vec::new();
        loop {
            let line = self.line();
            if line == "READY" {
                return out;
            }
            out.push(Obj::parse(&line));
        }
    }

    fn wait(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < STEP, "child overran {STEP:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An object a child reported: key, location, checksum.
#[derive(Clone, Copy, Debug)]
struct Obj {
    key: u64,
    loc: Location,
    sum: u64,
}

impl Obj {
    fn parse(line: &str) -> Obj {
        let f: Vec<u64> = line
            .strip_prefix("OBJ ")
            .unwrap_or_else(|| panic!("an OBJ line: {line}"))
            .split_whitespace()
            .map(|s| s.parse().expect("number"))
            .collect();
        Obj {
            key: f[0],
            loc: Location {
                offset: f[1],
                len: f[2],
            },
            sum: f[3],
        }
    }

    fn line(&self) -> String {
        format!(
            "CHECK {} {} {} {}",
            self.key, self.loc.offset, self.loc.len, self.sum
        )
    }
}

/// Reads `obj` in place under a read hold and compares its checksum.
fn check_in_place(client: &NodeClient, obj: &Obj) -> bool {
    let reader = client.reader();
    let Some(_hold) = reader.hold(obj.loc) else {
        return false;
    };
    reader.bytes(obj.loc).map(checksum) == Some(obj.sum)
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A store on the node at `sock`; `exact`: every grant just the object's granules (no shared
/// `node_extent`), so that a test can count granules per object.
fn child_store(sock: &str, dir: &str, exact: bool) -> Store {
    let addr = SocketAddr::from_abstract_name(sock.as_bytes()).expect("addr");
    let client = NodeClient::connect(&addr, TOKEN).expect("connect to the node arena");
    Store::on_node(
        client,
        StoreConfig {
            spill_dir: dir.into(),
            create_timeout: Duration::from_secs(30),
            node_extent: if exact {
                0
            } else {
                StoreConfig::default().node_extent
            },
            ..StoreConfig::default()
        },
    )
    .expect("store on the node")
}

/// The child's side; does nothing unless re-executed by a parent test.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [mode, sock, arg, dir] = parts[..] else {
        panic!("bad child spec {spec}");
    };
    match mode {
        "writer" => writer_child(sock, arg, dir, false),
        "writer-exact" => writer_child(sock, arg, dir, true),
        "churn" => churn_child(sock, arg, dir),
        other => panic!("unknown child mode {other}"),
    }
}

/// Puts `count` objects of `size` bytes (`arg` = `first_key count size`), pins each, reports
/// them, then answers `CHECK` commands on stdin by reading in place, until stdin closes.
fn writer_child(sock: &str, arg: &str, dir: &str, exact: bool) {
    let nums: Vec<u64> = arg.split(',').map(|s| s.parse().expect("number")).collect();
    let [first, count, size] = nums[..] else {
        panic!("bad writer arg {arg}");
    };
    let store = child_store(sock, dir, exact);
    for key in first..first + count {
        let value = pattern(key, size as usize);
        store
            .put(ObjectKey::from_u128(key.into()), &value)
            .expect("put");
        let loc = store
            .pin(ObjectKey::from_u128(key.into()))
            .expect("pinned for readers");
        println!(
            "@@OBJ {key} {} {} {}",
            loc.offset,
            loc.len,
            checksum(&value)
        );
    }
    let stats = store.stats();
    assert_eq!(stats.node_capacity.map(|c| c > 0), Some(true));
    println!("@@READY");
    std::io::stdout().flush().expect("flush");
    let client = store.node().expect("on a node");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let Some(rest) = line.strip_prefix("CHECK ") else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|s| s.parse().expect("number"))
            .collect();
        let obj = Obj {
            key: f[0],
            loc: Location {
                offset: f[1],
                len: f[2],
            },
            sum: f[3],
        };
        let ok = check_in_place(client, &obj);
        println!("@@CHECKED {} {}", obj.key, if ok { "ok" } else { "bad" });
        std::io::stdout().flush().expect("flush");
    }
}

/// Puts `total` bytes in objects of varied sizes (`arg` = `seed total`), none kept pinned,
/// then gets every one back (restoring the spilled) and compares it byte for byte.
fn churn_child(sock: &str, arg: &str, dir: &str) {
    let (seed, total) = arg.split_once(',').expect("seed,total");
    let seed: u64 = seed.parse().expect("seed");
    let total: usize = total.parse().expect("total");
    let store = child_store(sock, dir, false);
    let sizes = [MIB, 3 * MIB + 12_345, 6 * MIB, 2 * MIB - 1];
    let mut keys = Vec::new();
    let mut put = 0;
    let mut peak = 0;
    while put < total {
        let key = seed * 1_000_000 + keys.len() as u64;
        let size = sizes[keys.len() % sizes.len()];
        store
            .put(ObjectKey::from_u128(key.into()), pattern(key, size))
            .expect("put");
        let s = store.stats();
        peak = peak.max(s.node_granted.unwrap_or(0));
        assert!(
            s.node_granted <= s.node_capacity,
            "the node never over-grants"
        );
        keys.push((key, size));
        put += size;
    }
    for &(key, size) in &keys {
        let got = store.get(ObjectKey::from_u128(key.into())).expect("get");
        assert!(got[..] == pattern(key, size)[..], "object {key} byte-exact");
    }
    let s = store.stats();
    println!(
        "@@VERIFIED {} {} {} {}",
        keys.len(),
        s.spills,
        s.restores,
        peak
    );
}

#[test]
fn two_processes_put_on_one_node_arena_and_read_each_other_in_place() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (arena, _server, sock) = node("share", 128 * MIB, 8 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let capacity = arena.stats().capacity;
    assert_eq!(capacity, 128 * MIB);
    let mut a = Kid::spawn("writer", &sock, &format!("1,5,{}", 3 * MIB), dir.path());
    let mut b = Kid::spawn("writer", &sock, &format!("100,4,{}", 5 * MIB), dir.path());
    let objs_a = a.objects();
    let objs_b = b.objects();
    assert_eq!((objs_a.len(), objs_b.len()), (5, 4));
    let stats = arena.stats();
    assert_eq!(stats.clients, 2);
    assert!(stats.granted <= stats.capacity);
    assert!(stats.granted >= (5 * 3 + 4 * 5) * MIB, "{stats:?}");

    // No two objects overlap: they all live in one arena.
    let mut spans: Vec<(u64, u64)> = objs_a
        .iter()
        .chain(&objs_b)
        .map(|o| (o.loc.offset, o.loc.offset + o.loc.len))
        .collect();
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");

    // The parent reads all of them in place.
    let me = NodeClient::connect(&abstract_addr("share"), TOKEN).expect("connect");
    for obj in objs_a.iter().chain(&objs_b) {
        assert!(check_in_place(&me, obj), "parent reads {obj:?}");
    }
    let reader = me.reader();
    let (o1, o2) = (objs_a[0], objs_b[0]);
    assert!(reader.bytes(o1.loc).map(|b| b.as_ptr()) != reader.bytes(o2.loc).map(|b| b.as_ptr()));

    // Each child reads the other's.
    for obj in &objs_b {
        a.send(&obj.line());
    }
    for obj in &objs_a {
        b.send(&obj.line());
    }
    for (kid, objs) in [(&a, &objs_b), (&b, &objs_a)] {
        for obj in objs.iter() {
            assert_eq!(kid.line(), format!("CHECKED {} ok", obj.key));
        }
    }
    assert!(arena.stats().granted <= capacity);
    assert!(a.wait().success());
    assert!(b.wait().success());
    drop(me);
    assert!(
        eventually(STEP, || arena.stats().granted == 0
            && arena.stats().clients == 0),
        "everything back after the children left: {:?}",
        arena.stats()
    );
}

#[test]
fn three_times_the_node_arena_across_two_processes_stays_byte_exact() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let capacity = 64 * MIB;
    let (arena, _server, sock) = node("churn", capacity, 4 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let per_child = 3 * capacity / 2;
    let kids: Vec<Kid> = (1..=2u64)
        .map(|seed| Kid::spawn("churn", &sock, &format!("{seed},{per_child}"), dir.path()))
        .collect();
    let mut spills = 0;
    for kid in &kids {
        let line = kid.line();
        eprintln!("churn child: {line} (objects spills restores peak-granted)");
        let f: Vec<u64> = line
            .strip_prefix("VERIFIED ")
            .unwrap_or_else(|| panic!("{line}"))
            .split_whitespace()
            .map(|s| s.parse().expect("number"))
            .collect();
        assert!(f[0] > 0);
        assert!(f[3] as usize <= capacity, "peak granted within the node");
        spills += f[1];
        assert!(f[2] > 0, "some objects came back from disk: {line}");
        let stats = arena.stats();
        assert!(stats.granted <= stats.capacity);
    }
    assert!(spills > 0);
    for kid in kids {
        assert!(kid.wait().success());
    }
    assert!(eventually(STEP, || arena.stats().granted == 0));
}

#[test]
fn a_killed_holders_granules_come_back_unless_read_locked() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let granule = 4 * MIB;
    let (arena, _server, sock) = node("kill", 64 * MIB, granule);
    let dir = tempfile::tempdir().expect("tempdir");
    // Three objects of 3 MiB: one granule each.
    let kid = Kid::spawn(
        "writer-exact",
        &sock,
        &format!("7,3,{}", 3 * MIB),
        dir.path(),
    );
    let objs = kid.objects();
    assert_eq!(arena.stats().granted, 3 * granule);

    let me = NodeClient::connect(&abstract_addr("kill"), TOKEN).expect("connect");
    let reader = me.reader();
    let held = objs[1];
    let hold = reader.hold(held.loc).expect("read hold");
    let again = reader
        .hold(held.loc)
        .expect("a second hold on the same range");
    assert_eq!(reader.held(), vec![(held.loc, 2)]);
    drop(again);

    let mut kid = kid;
    kid.child.kill().expect("SIGKILL");
    let _ = kid.child.wait();
    assert!(
        eventually(STEP, || arena.stats().granted == granule),
        "the unlocked granules come back: {:?}",
        arena.stats()
    );
    let stats = arena.stats();
    assert_eq!(stats.held_back, granule, "{stats:?}");
    assert_eq!(stats.clients, 1, "only the parent's connection");
    // Nobody can be granted the held granule: ask for everything else and then some.
    let other = NodeClient::connect(&abstract_addr("kill"), TOKEN).expect("connect");
    let store = Store::on_node(
        other,
        StoreConfig {
            spill_dir: dir.path().into(),
            create_timeout: Duration::from_millis(200),
            ..StoreConfig::default()
        },
    )
    .expect("store");
    let mut keys = 0u128;
    while store
        .put(ObjectKey::from_u128(1000 + keys), vec![0xee; 3 * MIB])
        .map(|s| store.pin(s.key()).expect("pin"))
        .is_ok()
    {
        keys += 1;
        assert!(keys < 64, "the node is bounded");
    }
    assert_eq!(keys as usize, 15, "every granule but the held one");
    assert!(
        reader.bytes(held.loc).map(checksum) == Some(held.sum),
        "the dead holder's object is intact under the hold"
    );
    drop(hold);
    assert!(reader.held().is_empty());
    assert!(
        eventually(STEP, || arena.stats().held_back == 0),
        "freed once the hold dropped: {:?}",
        arena.stats()
    );
    assert_eq!(
        arena.stats().granted,
        15 * granule,
        "the held one is free now"
    );
    drop(store);
    assert!(eventually(STEP, || arena.stats().granted == 0));
}

#[test]
fn a_wrong_token_or_a_plaintext_one_gets_no_fd() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (arena, _server, _) = node("token", 16 * MIB, MIB);
    let addr = abstract_addr("token");
    assert!(NodeClient::connect(&addr, "not-the-token").is_err());

    // By hand: a proof made with another token is answered by a close, with no fd.
    let sock = UnixStream::connect_addr(&addr).expect("connect");
    sock.set_read_timeout(Some(STEP)).expect("timeout");
    let mine = [1u8; auth::NONCE_LEN];
    let mut request = b"MNOD".to_vec();
    request.extend_from_slice(&mine);
    (&sock).write_all(&request).expect("write");
    let mut theirs = [0u8; auth::NONCE_LEN];
    (&sock).read_exact(&mut theirs).expect("the server's nonce");
    let wrong = auth::prove(b"wrong", auth::Role::Connector, &mine, &theirs);
    (&sock).write_all(&wrong).expect("write");
    let mut buf = [0u8; 64];
    let err = fdpass::recv_fd(&sock, &mut buf).expect_err("no fd");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "closed: {err}");

    // The plaintext token of the protocol before is closed at once, at its first bytes.
    let sock = UnixStream::connect_addr(&addr).expect("connect");
    sock.set_read_timeout(Some(STEP)).expect("timeout");
    let mut old = (TOKEN.len() as u32).to_le_bytes().to_vec();
    old.extend_from_slice(TOKEN.as_bytes());
    (&sock).write_all(&old).expect("write");
    let started = Instant::now();
    let err = fdpass::recv_fd(&sock, &mut buf).expect_err("no fd");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "closed: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not the 5 s timeout"
    );

    let good = NodeClient::connect(&addr, TOKEN).expect("the right token works");
    assert_eq!(arena.stats().clients, 1);
    drop(good);
    assert!(eventually(STEP, || arena.stats().clients == 0));
}

/// A server that cannot prove the token (a local user on a name the raylet held) gets no
/// token from a client, and the client maps nothing of it.
#[test]
fn an_impostor_server_never_sees_the_token_and_is_refused() {
    let name = format!("manta-test-impostor-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let listener = UnixListener::bind_addr(&addr).expect("bind");
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut seen = vec![0u8; 4 + auth::NONCE_LEN];
        s.read_exact(&mut seen).expect("request");
        s.write_all(&[2u8; auth::NONCE_LEN]).expect("nonce");
        let mut proof = [0u8; auth::PROOF_LEN];
        s.read_exact(&mut proof).expect("proof");
        seen.extend_from_slice(&proof);
        s.write_all(&[7u8; auth::PROOF_LEN])
            .expect("a made-up proof");
        seen
    });
    let err = NodeClient::connect(&addr, TOKEN).expect_err("an impostor is refused");
    assert!(err.to_string().contains("did not prove"), "{err}");
    let seen = fake.join().unwrap();
    assert!(!seen.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
}

/// Objects just over a granule's half (or whole) fill the node arena, not half of it: on a
/// 256 MiB node arena, 32 MiB objects kept pinned fit 7 times (one granule of slack each at
/// most), and the error for the next one reports the node as full. Granules of 32 MiB (the
/// old default there) gave each object two of them: 4 fit, and the error said half was free.
#[test]
fn pinned_objects_just_over_a_granule_fill_the_node_arena() {
    let (_arena, _server, sock) = node("fill", 256 * MIB, StoreConfig::default().node_granule);
    let dir = tempfile_dir("fill");
    let addr = SocketAddr::from_abstract_name(sock.as_bytes()).expect("addr");
    let client = NodeClient::connect(&addr, TOKEN).expect("connect to the node arena");
    let store = Store::on_node(
        client,
        StoreConfig {
            spill_dir: dir.clone(),
            create_timeout: Duration::from_millis(200),
            ..StoreConfig::default()
        },
    )
    .expect("store on the node");
    // A value of 32 MiB and its encoding's few bytes of header.
    let size = 32 * MIB + 64;
    let mut kept = 0u64;
    let error = loop {
        let key = ObjectKey::from_u128(1000 + u128::from(kept));
        match store.put(key, &pattern(kept, size)) {
            Ok(_) => {
                store.pin(key).expect("pin");
                kept += 1;
            }
            Err(e) => break e.error,
        }
        assert!(kept < 16, "more objects than the arena holds");
    };
    assert!(
        kept >= 7,
        "only {kept} pinned objects of 32 MiB fit in a 256 MiB node arena ({error})"
    );
    let text = error.to_string();
    assert!(
        text.contains("node arena"),
        "the error names the node arena: {text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("manta-store-node-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("spill dir");
    dir
}
