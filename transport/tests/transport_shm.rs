//! Shared-memory backend: byte-exact small and 64 MiB transfers and ordering in one process,
//! then across two real processes (this test binary re-executed with an env var), including a
//! peer process that dies mid-transfer.

use manta_transport::{
    Address, Connection, Incoming, Listener, Tag, TransferId, TransportConfig, TransportError,
};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const CHILD_ENV: &str = "MANTA_TRANSPORT_TEST_CHILD";

fn cfg(name: &str) -> TransportConfig {
    let mut c = TransportConfig::new(b"cluster-secret".to_vec(), name);
    c.handshake_timeout = Duration::from_secs(5);
    c.shm_ring_capacity = 1 << 20;
    c
}

fn sock_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "manta-transport-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn pair() -> (Listener, Connection, Connection) {
    let path = sock_path();
    let l = Listener::bind(&Address::Shm(path.clone()), cfg("server"))
        .await
        .unwrap();
    let c = cfg("client");
    let addr = Address::Shm(path);
    let (a, b) = tokio::join!(l.accept(), Connection::connect(&addr, &c));
    (l, a.unwrap(), b.unwrap())
}

#[tokio::test]
async fn in_process_messages_in_order_and_64_mib_bulk() {
    tokio::time::timeout(LIMIT, async {
        let (_l, mut server, mut client) = pair().await;
        assert_eq!(server.peer_name(), "client");
        let big = pattern(64 << 20, 9);
        let sender = async {
            for i in 0..5000u32 {
                client
                    .send(Tag(u64::from(i)), &pattern((i as usize * 13) % 3000, i))
                    .await
                    .unwrap();
            }
            client.send_bulk(TransferId(7), &big).await.unwrap();
            client
        };
        let receiver = async {
            for i in 0..5000u32 {
                let Incoming::Message(m) = server.recv().await.unwrap() else {
                    panic!()
                };
                assert_eq!(m.tag, Tag(u64::from(i)));
                assert_eq!(m.payload, pattern((i as usize * 13) % 3000, i));
            }
            let Incoming::Bulk(b) = server.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!((b.id(), b.len()), (TransferId(7), 64 << 20));
            let mut dst = vec![0u8; 64 << 20];
            b.read_into(&mut dst).await.unwrap();
            assert!(dst == big, "bulk bytes differ");
        };
        let (client, ()) = tokio::join!(sender, receiver);
        client.close().await.unwrap();
        assert!(matches!(
            server.recv().await.unwrap_err(),
            TransportError::Closed { .. }
        ));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn listener_removes_its_socket_and_refuses_wrong_token() {
    tokio::time::timeout(LIMIT, async {
        let path = sock_path();
        let l = Listener::bind(&Address::Shm(path.clone()), cfg("server"))
            .await
            .unwrap();
        let mut bad = cfg("x");
        bad.cluster_token = b"other".to_vec();
        let addr = Address::Shm(path.clone());
        let (a, c) = tokio::join!(l.accept(), Connection::connect(&addr, &bad));
        assert!(matches!(a.unwrap_err(), TransportError::Rejected { .. }));
        assert!(matches!(c.unwrap_err(), TransportError::Refused { .. }));
        assert!(path.exists());
        drop(l);
        assert!(!path.exists(), "socket file left behind");
    })
    .await
    .expect("test timed out");
}

/// A socket that cannot prove the token (a local user on a path a listener held) gets no
/// token and no memory from a connector: it sees only nonces and a MAC, and the connector,
/// checking its made-up proof, fails with `Unproven` before it passes any fd.
#[tokio::test]
async fn an_impostor_shm_listener_never_sees_the_token_or_an_fd() {
    use std::io::{Read, Write};
    let path = sock_path();
    let impostor = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = impostor.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut seen = vec![0u8; 4 + 32];
        s.read_exact(&mut seen).unwrap();
        s.write_all(&[2u8; 32]).unwrap();
        let mut proof = [0u8; 32];
        s.read_exact(&mut proof).unwrap();
        seen.extend_from_slice(&proof);
        let mut verdict = vec![1u8];
        verdict.extend_from_slice(&[9u8; 32]);
        s.write_all(&verdict).unwrap();
        // Whatever comes next (nothing: the connector closes) is read too.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        seen.extend_from_slice(&rest);
        seen
    });
    let err = tokio::time::timeout(
        LIMIT,
        Connection::connect(&Address::Shm(path.clone()), &cfg("victim")),
    )
    .await
    .expect("test timed out")
    .expect_err("an impostor is refused");
    assert!(matches!(err, TransportError::Unproven { .. }), "{err}");
    let seen = fake.join().unwrap();
    assert_eq!(
        seen.len(),
        4 + 32 + 32,
        "nothing after the proof: no setup message"
    );
    assert!(!seen.windows(14).any(|w| w == b"cluster-secret"));
    let _ = std::fs::remove_file(&path);
}

fn spawn_child(mode: &str, path: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}:{}", path.display()))
        // The child's own libtest summary would read like a second result of this run.
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn reap(mut child: Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child failed: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("child did not exit");
}

/// The child side: a no-op in a normal test run; with the env var set, connects and plays
/// its mode ("echo": echo everything until closed; "die": exit mid-transfer).
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, path) = spec.split_once(':').unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Connection::connect(&Address::Shm(path.into()), &cfg("child"))
            .await
            .unwrap();
        if mode == "die" {
            let data = pattern(16 << 20, 1);
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                c.send_bulk(TransferId(1), &data),
            )
            .await;
            // Exit without running destructors: the ring's `closed` flag is never set.
            std::process::exit(0);
        }
        loop {
            match c.recv().await {
                Ok(Incoming::Message(m)) => c.send(m.tag, &m.payload).await.unwrap(),
                Ok(Incoming::Bulk(b)) => {
                    let id = b.id();
                    let v = b.into_vec().await.unwrap();
                    c.send_bulk(id, &v).await.unwrap();
                }
                Ok(_) => unreachable!(),
                Err(TransportError::Closed { .. }) => break,
                Err(e) => panic!("child: {e}"),
            }
        }
    });
}

#[tokio::test]
async fn two_processes_echo_messages_and_64_mib() {
    let path = sock_path();
    let l = Listener::bind(&Address::Shm(path.clone()), cfg("parent"))
        .await
        .unwrap();
    let child = spawn_child("echo", &path);
    tokio::time::timeout(LIMIT, async {
        let mut conn = l.accept().await.unwrap();
        assert_eq!(conn.peer_name(), "child");
        for i in 0..500u32 {
            let m = pattern((i as usize * 101) % 4000, i);
            conn.send(Tag(u64::from(i)), &m).await.unwrap();
            let Incoming::Message(got) = conn.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!((got.tag, got.payload), (Tag(u64::from(i)), m));
        }
        let big = pattern(64 << 20, 3);
        conn.send_bulk(TransferId(5), &big)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Incoming::Bulk(b) = conn.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(b.id(), TransferId(5));
        assert!(b.into_vec().await.unwrap() == big, "echoed bulk differs");
        conn.close().await.unwrap();
    })
    .await
    .expect("test timed out");
    tokio::task::spawn_blocking(move || reap(child))
        .await
        .unwrap();
}

#[tokio::test]
async fn peer_process_dying_mid_transfer_is_an_error() {
    let path = sock_path();
    let l = Listener::bind(&Address::Shm(path.clone()), cfg("parent"))
        .await
        .unwrap();
    let child = spawn_child("die", &path);
    tokio::time::timeout(LIMIT, async {
        let mut conn = l.accept().await.unwrap();
        // Let the child fill the 1 MiB ring with part of a 16 MiB transfer and die.
        tokio::task::spawn_blocking(move || reap(child))
            .await
            .unwrap();
        let Incoming::Bulk(b) = conn.recv().await.unwrap() else {
            panic!()
        };
        match b.into_vec().await {
            Err(TransportError::Malformed { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
            Ok(v) => panic!("a dead peer's transfer completed with {} bytes", v.len()),
        }
    })
    .await
    .expect("a dead peer must not hang the reader");
}
