//! Unauthenticated floods against a running head (GCS + raylet in one process): what a peer
//! that never proves the token can make the process hold is bounded — memory (`VmRSS`) under
//! many connections each sending a 4 MiB `Hello`, threads under many idle connections to the
//! node arena socket — and its log stays small under many garbage connections.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

#[manta::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// A field of `/proc/PID/status` (the number before any unit).
fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A frame header: `MNTA`, the protocol's version, kind 1 (Hello), no flags, `len`, reserved
/// zeros.
fn hello_header(len: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(b"MNTA");
    h[4..6].copy_from_slice(&manta_transport::PROTOCOL_VERSION.to_le_bytes());
    h[6] = 1;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

fn assert_answers(what: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(square::remote(9u64).get());
    });
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("after {what}, get() did not answer within 30 s"));
    assert_eq!(got.expect("the call succeeds"), 81, "{what}");
}

#[test]
fn unauthenticated_floods_are_bounded() {
    serve_if_worker();
    let cluster = LocalCluster::start(NodeSpec::with_resources(""), &[]);
    manta::init_with(cluster.config()).expect("the driver joins");
    assert_answers("start-up");
    // The node process is the head itself (`manta start --block`, no wrapper).
    let pid = cluster.node_pid(0);

    // 1. Memory: 100 connections each sending a Hello of 4 MiB less one byte and holding on
    // (before the fix each made the head buffer 4 MiB until the handshake timed out).
    let rss_before = status_field(pid, "VmRSS");
    let frame_len = 4u32 << 20;
    let body = vec![0x5Au8; frame_len as usize - 1];
    let mut held = Vec::new();
    for _ in 0..100 {
        let Ok(mut s) = TcpStream::connect(&cluster.address) else {
            continue;
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // A listener that refuses at the header closes the socket: writes then fail.
        let _ = s.write_all(&hello_header(frame_len));
        let _ = s.write_all(&body);
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_during = status_field(pid, "VmRSS");
    let grown_mib = rss_during.saturating_sub(rss_before) / 1024;
    drop(held);
    eprintln!("4 MiB Hello flood: head RSS {rss_before} → {rss_during} KiB");
    assert!(
        grown_mib < 64,
        "100 unauthenticated 4 MiB Hellos grew the head by {grown_mib} MiB (RSS {rss_before} → {rss_during} KiB)"
    );
    assert_answers("the 4 MiB Hello flood");

    // 2. Threads: 300 idle connections to the node arena socket.
    let prefix = format!("@manta-arena-{pid}-");
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let arena = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .find(|p| p.starts_with(&prefix))
        .map(|p| p[1..].to_owned())
        .expect("the head serves a node arena");
    let threads_before = status_field(pid, "Threads");
    let addr = SocketAddr::from_abstract_name(arena.as_bytes()).unwrap();
    let idle: Vec<_> = (0..300)
        .filter_map(|_| UnixStream::connect_addr(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let threads_during = status_field(pid, "Threads");
    drop(idle);
    eprintln!("idle arena connections: head threads {threads_before} → {threads_during}");
    let grown = threads_during.saturating_sub(threads_before);
    assert!(
        grown <= 4,
        "300 idle arena connections made {grown} threads ({threads_before} → {threads_during})"
    );

    // 3. The log: 600 connections of garbage to the GCS port.
    let log = cluster.root.join("node-0").join("node.log");
    let log_before = std::fs::metadata(&log).unwrap().len();
    for _ in 0..600 {
        if let Ok(mut s) = TcpStream::connect(&cluster.address) {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let log_grown = std::fs::metadata(&log).unwrap().len() - log_before;
    eprintln!("garbage flood: {log_grown} bytes of log");
    assert!(
        log_grown < 32 << 10,
        "600 garbage connections wrote {log_grown} bytes of log"
    );
    assert_answers("the floods");
    manta::shutdown();
}
