//! Small-message round-trip latency between two threads: the shm ring transport (8-byte
//! message, echoed) against a Unix socket pair doing the same with `write_all`/`read_exact`,
//! measured in the same run. Prints the shm/socket time ratio at the end. Both peers run
//! in-process on separate threads; the ring spins up to `shm_spin` before parking. A third
//! line does the same over TCP loopback with split connections: on each side the
//! `RecvHalf` runs in its own tokio task and hands messages to the task holding the
//! `SendHalf`.

use criterion::{Criterion, criterion_group, criterion_main};
use manta_transport::{Address, Connection, Incoming, Listener, RecvHalf, Tag, TransportConfig};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

type Tally = Arc<Mutex<[(Duration, u64); 3]>>;

/// Drives a `RecvHalf` in its own task, forwarding each message's tag and payload.
fn forward(mut rx: RecvHalf) -> tokio::sync::mpsc::Receiver<(Tag, Vec<u8>)> {
    let (tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Incoming::Message(m)) = rx.recv().await {
            if tx.send((m.tag, m.payload)).await.is_err() {
                break;
            }
        }
    });
    out
}

fn bench(c: &mut Criterion) {
    let tally: Tally = Arc::new(Mutex::new([(Duration::ZERO, 0); 3]));
    let mut group = c.benchmark_group("round_trip_8B");

    let (mut a, mut b) = UnixStream::pair().expect("pair");
    std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let t = tally.clone();
    group.bench_function("unix_socket_pair", |bch| {
        bch.iter_custom(|iters| {
            let start = Instant::now();
            let mut buf = [0u8; 8];
            for i in 0..iters {
                a.write_all(&i.to_le_bytes()).expect("write");
                a.read_exact(&mut buf).expect("read");
            }
            let el = start.elapsed();
            let mut t = t.lock().expect("tally");
            t[0].0 += el;
            t[0].1 += iters;
            el
        })
    });
    drop(a);

    let path = std::env::temp_dir().join(format!("manta-bench-{}.sock", std::process::id()));
    let runtime = rt();
    let cfg = TransportConfig::new(b"bench".to_vec(), "bench");
    let listener = runtime
        .block_on(Listener::bind(&Address::Shm(path.clone()), cfg.clone()))
        .expect("bind");
    std::thread::spawn(move || {
        rt().block_on(async move {
            let mut conn = listener.accept().await.expect("accept");
            while let Ok(Incoming::Message(m)) = conn.recv().await {
                if conn.send(m.tag, &m.payload).await.is_err() {
                    break;
                }
            }
        })
    });
    let mut conn = runtime
        .block_on(Connection::connect(&Address::Shm(path), &cfg))
        .expect("connect");
    let t = tally.clone();
    group.bench_function("manta_shm_ring", |bch| {
        bch.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    conn.send(Tag(i), &i.to_le_bytes()).await.expect("send");
                    conn.recv().await.expect("recv");
                }
                let el = start.elapsed();
                let mut t = t.lock().expect("tally");
                t[1].0 += el;
                t[1].1 += iters;
                el
            })
        })
    });

    let tcp_listener = runtime
        .block_on(Listener::bind(
            &Address::Tcp("127.0.0.1:0".parse().expect("addr")),
            cfg.clone(),
        ))
        .expect("bind tcp");
    let tcp_addr = tcp_listener.local_addr().expect("tcp addr");
    std::thread::spawn(move || {
        rt().block_on(async move {
            let conn = tcp_listener.accept().await.expect("accept tcp");
            let (rx, mut tx) = conn.into_split();
            let mut msgs = forward(rx);
            while let Some((tag, payload)) = msgs.recv().await {
                if tx.send(tag, &payload).await.is_err() {
                    break;
                }
            }
        })
    });
    let (mut tcp_tx, mut tcp_rx) = runtime.block_on(async {
        let conn = Connection::connect(&tcp_addr, &cfg)
            .await
            .expect("connect tcp");
        let (rx, tx) = conn.into_split();
        (tx, forward(rx))
    });
    let t = tally.clone();
    group.bench_function("manta_tcp_split_halves", |bch| {
        bch.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    tcp_tx.send(Tag(i), &i.to_le_bytes()).await.expect("send");
                    tcp_rx.recv().await.expect("echo");
                }
                let el = start.elapsed();
                let mut t = t.lock().expect("tally");
                t[2].0 += el;
                t[2].1 += iters;
                el
            })
        })
    });
    group.finish();
    let t = tally.lock().expect("tally");
    let per = |(d, n): (Duration, u64)| d.as_secs_f64() / n.max(1) as f64;
    let (sock, shm, tcp) = (per(t[0]), per(t[1]), per(t[2]));
    println!(
        "round_trip_8B: unix socket {:.2} µs, shm ring {:.2} µs, shm/socket time ratio {:.3}",
        sock * 1e6,
        shm * 1e6,
        shm / sock
    );
    println!(
        "round_trip_8B: TCP loopback through split halves (one task per half) {:.2} µs",
        tcp * 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
