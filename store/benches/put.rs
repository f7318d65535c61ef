//! Store put and get against their baselines, measured in the same run.
//!
//! - `put/{64,256} MiB`: create + copy + seal of an object, against `memcpy` of the same bytes
//!   into a block of the same arena (the same kind of pages, already touched). The arena is
//!   pre-faulted, so neither side pays first-touch faults. After criterion's report, an
//!   interleaved loop prints the median put/memcpy ratio (target ≥ 0.90 in throughput, i.e.
//!   put time ≤ 1.11× memcpy time).
//! - The same interleaved loop on a node arena (`NodeArena` served in this process, the store
//!   a `Store::on_node` client allocating in granted extents): a 64 MiB object fits the one
//!   spare granule the store keeps, a 256 MiB one asks the raylet's side for a 4-granule extent
//!   and gives it back at every delete, so its row includes two socket round trips per put.
//! - `get`: pin + unpin of a 1 GiB object and of a 1 MiB one (zero-copy: independent of size;
//!   target ≤ 10 µs).
//!
//! `cargo bench -p manta-store --bench put -- --test` smoke-runs everything once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use manta_store::{NodeArena, NodeClient, ObjectKey, PageRequest, Store, StoreConfig};

const MIB: usize = 1 << 20;

fn store(capacity: usize) -> Store {
    Store::new(StoreConfig {
        capacity,
        pages: PageRequest::Auto,
        prefault: true,
        spill_threshold: 1.0,
        ..StoreConfig::default()
    })
    .expect("store")
}

/// Time of one put of `src` (the delete that makes room again is not timed).
fn time_put(store: &Store, key: ObjectKey, src: &[u8]) -> Duration {
    let start = Instant::now();
    let sealed = store.put(key, src).expect("put");
    let took = start.elapsed();
    black_box(sealed);
    store.delete(key).expect("delete");
    took
}

/// A node arena of `capacity` served in this process, and a store allocating in it.
fn node_store(capacity: usize) -> (std::sync::Arc<NodeArena>, manta_store::NodeServer, Store) {
    let config = StoreConfig {
        capacity,
        pages: PageRequest::Auto,
        prefault: true,
        spill_threshold: 1.0,
        ..StoreConfig::default()
    };
    let arena = NodeArena::create(&config).expect("node arena");
    let name = format!("manta-bench-node-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(&name).expect("socket name");
    let listener = UnixListener::bind_addr(&addr).expect("bind");
    let server = arena.serve(listener, "bench").expect("serve");
    let client = NodeClient::connect(&addr, "bench").expect("connect");
    let store = Store::on_node(client, config).expect("node store");
    (arena, server, store)
}

/// Median put and memcpy times of `src`, interleaved, into `s` (the memcpy into a block of it).
fn interleaved(s: &Store, src: &[u8], reps: usize) -> (Duration, Duration) {
    let size = src.len();
    let mut baseline = s
        .create(ObjectKey::from_u128(u128::MAX), size)
        .expect("baseline block");
    let dst = baseline.as_mut_slice();
    let key = ObjectKey::from_u128(size as u128);
    let (mut puts, mut copies) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        copies.push(time_memcpy(dst, src));
        puts.push(time_put(s, key, src));
    }
    (median(puts), median(copies))
}

/// Time of one memcpy of `src` into `dst`.
fn time_memcpy(dst: &mut [u8], src: &[u8]) -> Duration {
    let start = Instant::now();
    dst.copy_from_slice(src);
    black_box(&dst[dst.len() - 1]);
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    // One arena for the put benches: room for the 256 MiB baseline block and one object.
    let s = store(2 * 256 * MIB + 4 * MIB);
    let page_kind = s.stats().page_kind;
    let mut ratios = Vec::new();
    {
        let mut group = c.benchmark_group("put");
        for size in [64 * MIB, 256 * MIB] {
            let src: Vec<u8> = (0..size).map(|i| (i * 31 % 255) as u8).collect();
            // The baseline's destination: a block of the same arena, touched at start.
            let mut baseline = s
                .create(ObjectKey::from_u128(u128::MAX), size)
                .expect("baseline block");
            let dst = baseline.as_mut_slice();
            let key = ObjectKey::from_u128(size as u128);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new("memcpy", size / MIB), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| time_memcpy(dst, &src)).sum())
            });
            group.bench_function(BenchmarkId::new("store_put", size / MIB), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| time_put(&s, key, &src)).sum())
            });
            drop(baseline);
            // Interleaved, so both see the same machine state.
            let (p, m) = interleaved(&s, &src, if smoke { 1 } else { 15 });
            ratios.push(("own arena", size, p, m));
        }
        group.finish();
    }
    drop(s);
    {
        let (_arena, _server, s) = node_store(2 * 256 * MIB + 64 * MIB);
        for size in [64 * MIB, 256 * MIB] {
            let src: Vec<u8> = (0..size).map(|i| (i * 31 % 255) as u8).collect();
            let (p, m) = interleaved(&s, &src, if smoke { 1 } else { 15 });
            ratios.push(("node arena", size, p, m));
        }
    }

    // get of the largest object that fits, and of a small one: pin + unpin, no copy.
    let big = 1024 * MIB;
    let s = store(big + 8 * MIB);
    {
        let mut created = s
            .create(ObjectKey::from_u128(1), big)
            .expect("1 GiB object");
        created.as_mut_slice().fill(7);
        created.seal().expect("seal");
    }
    s.put(ObjectKey::from_u128(2), vec![1u8; MIB])
        .expect("1 MiB object");
    let mut group = c.benchmark_group("get");
    for (name, key) in [("1GiB", 1u128), ("1MiB", 2)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let pinned = s.get(ObjectKey::from_u128(key)).expect("get");
                black_box(pinned.len())
            })
        });
    }
    group.finish();
    let reps = if smoke { 10 } else { 100_000 };
    let start = Instant::now();
    for _ in 0..reps {
        black_box(s.get(ObjectKey::from_u128(1)).expect("get").len());
    }
    let get_1g = start.elapsed() / reps;

    println!("\n== manta-store put/get vs baselines (same run, arena on {page_kind}) ==");
    for (arena, size, put, memcpy) in ratios {
        println!(
            "{arena:>10}: put {:>4} MiB: put {:>9.2?}  memcpy {:>9.2?}  put throughput = {:.3} x memcpy  ({:.2} vs {:.2} GB/s)",
            size / MIB,
            put,
            memcpy,
            memcpy.as_secs_f64() / put.as_secs_f64(),
            size as f64 / put.as_secs_f64() / 1e9,
            size as f64 / memcpy.as_secs_f64() / 1e9,
        );
    }
    println!("get 1 GiB (pin + unpin, zero-copy): {get_1g:.2?} per call (target <= 10 us)");
    c.final_summary();
}
