//! `manta::put` of large objects against `memcpy`, and `get_view` of a 1 GiB object, measured in
//! the same run.
//!
//! - `put/{64,256} MiB`: `manta::put_ref` and `manta::put` of a `Vec<u8>` (encoded straight into
//!   the runtime's shared-memory store with one `memcpy`), against a plain `memcpy` of the same
//!   bytes into an already-touched heap buffer placed at the same page offset as a stored
//!   vector's elements (8 bytes past a page boundary, so both copies have the same alignment). The store is pre-faulted
//!   (`object_store_prefault`), so neither side pays first-touch faults; both use 4 KiB pages
//!   unless the store got huge pages (printed). After criterion's report, an interleaved loop
//!   prints the median put/memcpy throughput ratio (target ≥ 0.90).
//! - `get_view/1 GiB`: a zero-copy view of a stored 1 GiB `Vec<f32>` (pin + header check +
//!   unpin; independent of size).
//!
//! `cargo bench --bench store_put -- --test` smoke-runs everything once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

fn source(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A touched buffer of `len` bytes starting 8 bytes past a page boundary, as the elements of a
/// stored vector do (after the 8-byte length header of a page-aligned block): the copy then has
/// the same source/destination alignment on both sides of the comparison.
fn destination(len: usize) -> (Vec<u8>, usize) {
    let buf = source(len + 2 * 4096);
    let start = (4096 + 8 - buf.as_ptr() as usize % 4096) % 4096;
    (buf, start)
}

fn bench_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.sample_size(10);
    for mib in [64, 256] {
        let len = mib * MIB;
        let src = source(len);
        let (mut buf, start) = destination(len);
        let dst = &mut buf[start..start + len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("memcpy", format!("{mib} MiB")), |b| {
            b.iter(|| {
                black_box(&mut *dst).copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        group.bench_function(BenchmarkId::new("put_ref", format!("{mib} MiB")), |b| {
            b.iter(|| drop(manta::put_ref(black_box(&src)).expect("put")))
        });
        group.bench_function(BenchmarkId::new("put", format!("{mib} MiB")), |b| {
            b.iter_batched(
                || src.clone(),
                |v| manta::put(v).expect("put"),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn bench_get_view(c: &mut Criterion) {
    let n = (GIB - 8) / 4;
    let object = manta::put(vec![1.0f32; n]).expect("put 1 GiB");
    c.bench_function("get_view/1 GiB", |b| {
        b.iter(|| {
            let view = object.get_view().expect("view");
            black_box(view.len())
        })
    });
}

/// Interleaved medians, so both sides see the same machine state.
fn ratio(len: usize, rounds: usize) {
    let src = source(len);
    let (mut buf, start) = destination(len);
    let dst = &mut buf[start..start + len];
    let (mut copy, mut put) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(&mut *dst).copy_from_slice(black_box(&src));
        black_box(&dst);
        copy.push(t.elapsed());
        let t = Instant::now();
        let r = manta::put_ref(black_box(&src)).expect("put");
        put.push(t.elapsed());
        drop(r);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (copy, put) = (median(&mut copy), median(&mut put));
    let gbps = |d: Duration| len as f64 / d.as_secs_f64() / 1e9;
    println!(
        "put_ref of {} MiB: {:.2} GB/s, memcpy {:.2} GB/s: ratio {:.3} (target >= 0.90)",
        len / MIB,
        gbps(put),
        gbps(copy),
        gbps(put) / gbps(copy)
    );
}

fn view_latency(rounds: usize) {
    let n = (GIB - 8) / 4;
    let object = manta::put(vec![1.0f32; n]).expect("put 1 GiB");
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let view = object.get_view().expect("view");
            black_box(view.len());
            drop(view);
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "get_view of 1 GiB: median {:?} (target <= 10 us; zero-copy)",
        times[times.len() / 2]
    );
}

fn main() {
    manta::init_with(
        manta::Config::default()
            .object_store_memory(2 * GIB)
            .object_store_prefault(true),
    )
    .expect("init");
    let store = manta::status()
        .expect("status")
        .object_store
        .expect("object store");
    println!(
        "object store: {} bytes, {}",
        store.capacity, store.page_kind
    );
    let mut c = Criterion::default().configure_from_args();
    bench_put(&mut c);
    bench_get_view(&mut c);
    c.final_summary();
    let smoke = std::env::args().any(|a| a == "--test");
    let rounds = if smoke { 1 } else { 21 };
    ratio(64 * MIB, rounds);
    ratio(256 * MIB, rounds);
    view_latency(if smoke { 1 } else { 1001 });
    manta::shutdown();
}
