//! TCP bulk throughput over loopback: a 64 MiB transfer through the transport
//! (`send_bulk` → `read_into` a reused buffer, then a small ack message) against a raw
//! `std::net::TcpStream` `write_all`/`read_exact` loop of the same size with a 1-byte ack,
//! measured in the same run. Prints the transport/raw time ratio at the end.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manta_transport::{Address, Connection, Incoming, Listener, Tag, TransferId, TransportConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LEN: usize = 64 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn cfg(name: &str) -> TransportConfig {
    TransportConfig::new(b"bench".to_vec(), name)
}

/// (total time, iterations) per case, for the closing ratio.
type Tally = Arc<Mutex<[(Duration, u64); 2]>>;

fn bench(c: &mut Criterion) {
    let tally: Tally = Arc::new(Mutex::new([(Duration::ZERO, 0); 2]));
    let data = vec![0x5au8; LEN];
    let mut group = c.benchmark_group("tcp_bulk_64MiB");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);

    // Raw baseline.
    let raw = TcpListener::bind("127.0.0.1:0").expect("bind");
    let raw_addr = raw.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut s, _) = raw.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = vec![0u8; LEN];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&[1]).is_err() {
                break;
            }
        }
    });
    let mut client = TcpStream::connect(raw_addr).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let t = tally.clone();
    group.bench_function("raw_std_tcp", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                client.write_all(&data).expect("write");
                let mut ack = [0u8; 1];
                client.read_exact(&mut ack).expect("ack");
            }
            let el = start.elapsed();
            let mut t = t.lock().expect("tally");
            t[0].0 += el;
            t[0].1 += iters;
            el
        })
    });
    drop(client);

    // Through the transport.
    let runtime = rt();
    let listener = runtime
        .block_on(Listener::bind(
            &Address::Tcp("127.0.0.1:0".parse().expect("addr")),
            cfg("server"),
        ))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        rt().block_on(async move {
            let mut conn = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; LEN];
            loop {
                let Ok(Incoming::Bulk(b)) = conn.recv().await else {
                    break;
                };
                if b.read_into(&mut buf).await.is_err() || conn.send(Tag(0), b"ok").await.is_err() {
                    break;
                }
            }
        })
    });
    let mut conn = runtime
        .block_on(Connection::connect(&addr, &cfg("client")))
        .expect("connect");
    let t = tally.clone();
    group.bench_function("manta_transport_tcp", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = std::time::Instant::now();
                for i in 0..iters {
                    conn.send_bulk(TransferId(i), &data).await.expect("send");
                    conn.recv().await.expect("ack");
                }
                let el = start.elapsed();
                let mut t = t.lock().expect("tally");
                t[1].0 += el;
                t[1].1 += iters;
                el
            })
        })
    });
    group.finish();
    let t = tally.lock().expect("tally");
    let per = |(d, n): (Duration, u64)| d.as_secs_f64() / n.max(1) as f64;
    let (raw_s, manta_s) = (per(t[0]), per(t[1]));
    println!(
        "tcp_bulk_64MiB: raw {:.2} GB/s, transport {:.2} GB/s, transport/raw throughput ratio {:.3}",
        LEN as f64 / raw_s / 1e9,
        LEN as f64 / manta_s / 1e9,
        raw_s / manta_s
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
