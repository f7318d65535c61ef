//! Raw-TCP baseline between two emulated hosts (network namespaces on one bridge): a
//! 256 MiB stream from host 0 into a buffer on host 1, and 8-byte ping-pongs. The cluster's
//! object-transfer benchmark compares against these figures, printed as one line:
//!
//! ```text
//! netns-baseline: tcp_stream_gbps=<GB/s> tcp_rtt_p50_us=<µs> tcp_rtt_p99_us=<µs>
//! ```
//!
//! (`gbps` is gigabytes per second, 1e9 B/s.) Only byte counts and checksums are asserted.
//!
//! Both ends are this test binary re-executed inside a namespace (`ip netns exec`) with
//! `MANTA_NETNS_CHILD=recv:<addr>` or `send:<addr>`, filtered to this one test. Skipped
//! (with a line on stderr) where namespaces can't be made: not root, or no `ip`.

mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// This test's name: the filter a child runs under.
const TEST: &str = "tcp_baseline_between_two_netns_hosts";
/// Set in a child to `recv:<addr>` or `send:<addr>`.
const CHILD_ENV: &str = "MANTA_NETNS_CHILD";
/// The port the receiver listens on (each run has its own addresses, so no clashes).
const PORT: u16 = 47_000;
/// Bytes streamed from host 0 to host 1.
const STREAM_BYTES: usize = 256 << 20;
/// The sender's write size (one pattern buffer, sent over and over).
const CHUNK: usize = 1 << 20;
/// Ping-pongs timed, after as many untimed ones to warm up.
const PINGS: usize = 10_000;
/// How long a child may take.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// The parent reads a child's report from this marker on (libtest's `test <name> ... `
/// may precede it on the same line).
const REPORT: &str = "netns-child:";

#[test]
fn tcp_baseline_between_two_netns_hosts() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
        return;
    }
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let addr = SocketAddr::new(hosts[1].ip().into(), PORT);
    // Declared after `hosts`, so dropped (killed) first if anything below panics.
    let recv = Proc::spawn(&hosts, 1, &format!("recv:{addr}"));
    let send = Proc::spawn(&hosts, 0, &format!("send:{addr}"));
    let sent = send.finish();
    let received = recv.finish();

    let expected = {
        let pattern = pattern();
        let mut sum = Checksum::default();
        for _ in 0..STREAM_BYTES / CHUNK {
            sum.update(&pattern);
        }
        sum.value()
    };
    assert_eq!(
        field(&received, "bytes"),
        STREAM_BYTES as f64,
        "{received:?}"
    );
    assert_eq!(field(&sent, "bytes"), STREAM_BYTES as f64, "{sent:?}");
    assert_eq!(field_u64(&received, "checksum"), expected, "{received:?}");
    assert_eq!(field_u64(&sent, "checksum"), expected, "{sent:?}");
    assert_eq!(field(&sent, "pings"), PINGS as f64, "{sent:?}");

    let gbps = STREAM_BYTES as f64 / field(&sent, "secs") / 1e9;
    println!(
        "netns-baseline: tcp_stream_gbps={gbps:.3} tcp_rtt_p50_us={:.1} tcp_rtt_p99_us={:.1}",
        field(&sent, "p50_us"),
        field(&sent, "p99_us"),
    );
}

/// Runs one end inside its namespace and prints a `netns-child:` line for the parent.
fn child(mode: &str) {
    let (role, addr) = mode
        .split_once(':')
        .expect("MANTA_NETNS_CHILD=<role>:<addr>");
    let addr: SocketAddr = addr.parse().expect("child address");
    match role {
        "recv" => receiver(addr),
        "send" => sender(addr),
        _ => panic!("unknown child role {role:?}"),
    }
}

/// Host 1: takes the stream into one buffer, acks its length at EOF, then sends its
/// checksum (computed after the ack, so off the timed path); then echoes ping-pongs.
fn receiver(addr: SocketAddr) {
    // The destination buffer, touched up front so page faults stay out of the transfer
    // (an object transfer writes into a preallocated object the same way). Before the
    // bind: the sender's clock starts once the kernel accepts its connection.
    let mut buf = vec![0xa5_u8; STREAM_BYTES + 1];
    let listener = TcpListener::bind(addr).expect("bind");
    let (mut s, _) = listener.accept().expect("accept stream");
    let mut n = 0;
    loop {
        let end = (n + CHUNK).min(buf.len());
        match s.read(&mut buf[n..end]).expect("read stream") {
            0 => break,
            k => n += k,
        }
    }
    s.write_all(&(n as u64).to_le_bytes()).expect("ack");
    let mut sum = Checksum::default();
    sum.update(&buf[..n]);
    s.write_all(&sum.value().to_le_bytes()).expect("checksum");
    println!("{REPORT} bytes={n} checksum={}", sum.value());
    drop(s);

    let (mut s, _) = listener.accept().expect("accept ping");
    s.set_nodelay(true).expect("nodelay");
    let mut msg = [0u8; 8];
    while s.read_exact(&mut msg).is_ok() {
        s.write_all(&msg).expect("pong");
    }
}

/// Host 0: streams, timing from connect to the receiver's ack; then times ping-pongs.
fn sender(addr: SocketAddr) {
    let pattern = pattern();
    let mut s = connect(addr);
    let t0 = Instant::now();
    for _ in 0..STREAM_BYTES / CHUNK {
        s.write_all(&pattern).expect("write stream");
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut word = [0u8; 8];
    s.read_exact(&mut word).expect("read ack");
    let secs = t0.elapsed().as_secs_f64();
    let bytes = u64::from_le_bytes(word);
    s.read_exact(&mut word).expect("read checksum");
    let checksum = u64::from_le_bytes(word);

    let mut s = connect(addr);
    s.set_nodelay(true).expect("nodelay");
    let mut rtts = Vec::with_capacity(PINGS);
    let mut echo = [0u8; 8];
    for i in 0..2 * PINGS as u64 {
        let msg = i.to_le_bytes();
        let t = Instant::now();
        s.write_all(&msg).expect("ping");
        s.read_exact(&mut echo).expect("pong");
        let rtt = t.elapsed();
        assert_eq!(echo, msg, "echo of ping {i}");
        if i >= PINGS as u64 {
            rtts.push(rtt);
        }
    }
    rtts.sort();
    let us = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{REPORT} bytes={bytes} checksum={checksum} secs={secs} pings={} p50_us={} p99_us={}",
        rtts.len(),
        us(0.5),
        us(0.99),
    );
}

/// Connects, retrying while the receiver is not listening yet.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

/// The sender's buffer: pseudo-random words (xorshift64).
fn pattern() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// An order-sensitive checksum over 8-byte little-endian words (a short tail is
/// zero-padded).
#[derive(Default)]
struct Checksum {
    sum: u64,
    words: u64,
}

impl Checksum {
    fn update(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for w in &mut chunks {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut w = [0u8; 8];
            w[..tail.len()].copy_from_slice(tail);
            self.word(u64::from_le_bytes(w));
        }
    }

    fn word(&mut self, w: u64) {
        self.sum = self
            .sum
            .wrapping_add((w ^ self.words).wrapping_mul(0xff51_afd7_ed55_8ccd));
        self.words += 1;
    }

    fn value(&self) -> u64 {
        self.sum ^ self.words
    }
}

/// A child test process inside a namespace; killed if dropped before it finished.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(hosts: &netns::Hosts, i: usize, mode: &str) -> Proc {
        let exe = std::env::current_exe().expect("current_exe");
        let child = hosts
            .command(i, exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child in namespace");
        Proc {
            name: format!("{mode} in {}", hosts[i].netns()),
            child: Some(child),
        }
    }

    /// Waits for a clean exit (up to [`CHILD_DEADLINE`]) and returns its report line.
    fn finish(mut self) -> String {
        let mut child = self.child.take().expect("child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| Some(l[l.find(REPORT)?..].to_string()))
                // Reads to the end: a closed pipe would fail the child's later output.
                .last()
        });
        let deadline = Instant::now() + CHILD_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: still running after {CHILD_DEADLINE:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{}: {status}", self.name);
        let line = reader.join().expect("reader");
        line.unwrap_or_else(|| panic!("{}: no {REPORT} line", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `key=<number>` in a report line.
fn field(line: &str, key: &str) -> f64 {
    field_str(line, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

/// `key=<u64>` in a report line, exactly.
fn field_u64(line: &str, key: &str) -> u64 {
    field_str(line, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

fn field_str<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
