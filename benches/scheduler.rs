//! The scheduler's hot paths against raw thread hand-offs, measured in the same run.
//!
//! - `round_trip`: `get(f.remote())` of a no-op task, with `inline_get` on (the caller runs a
//!   still-queued task itself) and off (a slot runs it: the cross-thread path), against a raw
//!   round trip to a spinning worker thread (two atomics: the floor for any cross-thread hand-off
//!   on this machine) and through a pair of `std::sync::mpsc` channels (park/unpark).
//! - `batch`: submitting 1,000 no-op tasks and getting them all, against sending 1,000 boxed
//!   closures to a worker thread over a channel and receiving 1,000 results.
//!
//! After criterion's report, an interleaved loop prints the ratios. `cargo bench --bench
//! scheduler -- --test` smoke-runs everything once.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;

#[manta::remote]
fn noop() -> u8 {
    1
}

/// A worker thread that answers each request number by echoing it, spinning on atomics.
struct SpinPeer {
    request: Arc<AtomicU64>,
    reply: Arc<AtomicU64>,
    n: u64,
    handle: Option<thread::JoinHandle<()>>,
}

impl SpinPeer {
    fn start() -> Self {
        let (request, reply) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (rq, rp) = (request.clone(), reply.clone());
        let handle = thread::spawn(move || {
            loop {
                let r = rq.load(Ordering::Acquire);
                if r == u64::MAX {
                    return;
                }
                if r != rp.load(Ordering::Relaxed) {
                    rp.store(r, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        });
        SpinPeer {
            request,
            reply,
            n: 0,
            handle: Some(handle),
        }
    }

    fn round_trip(&mut self) {
        self.n += 1;
        self.request.store(self.n, Ordering::Release);
        while self.reply.load(Ordering::Acquire) != self.n {
            std::hint::spin_loop();
        }
    }
}

impl Drop for SpinPeer {
    fn drop(&mut self) {
        self.request.store(u64::MAX, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type Job = Box<dyn FnOnce() -> u8 + Send>;

/// A worker thread fed boxed closures over a channel, answering on another.
struct ChannelPeer {
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<u8>,
    handle: Option<thread::JoinHandle<()>>,
}

impl ChannelPeer {
    fn start() -> Self {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel();
        let handle = thread::spawn(move || {
            for job in job_rx {
                if result_tx.send(job()).is_err() {
                    return;
                }
            }
        });
        ChannelPeer {
            jobs: Some(jobs),
            results,
            handle: Some(handle),
        }
    }

    fn run(&self, n: usize) {
        let jobs = self.jobs.as_ref().expect("peer running");
        for _ in 0..n {
            jobs.send(Box::new(|| black_box(1))).expect("peer alive");
        }
        for _ in 0..n {
            black_box(self.results.recv().expect("peer alive"));
        }
    }
}

impl Drop for ChannelPeer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn with_runtime<R>(inline_get: bool, f: impl FnOnce() -> R) -> R {
    manta::init_with(manta::Config::default().inline_get(inline_get)).expect("init");
    let r = f();
    manta::shutdown();
    r
}

fn task_round_trip() {
    black_box(noop::remote().get().expect("task"));
}

fn task_batch() {
    let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
    black_box(manta::get_all(&refs).expect("tasks"));
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    for inline in [true, false] {
        with_runtime(inline, || {
            let name = if inline {
                "manta task, inline get"
            } else {
                "manta task, on a slot"
            };
            group.bench_function(name, |b| b.iter(task_round_trip));
        });
    }
    let mut spin = SpinPeer::start();
    group.bench_function("raw spin hand-off", |b| b.iter(|| spin.round_trip()));
    drop(spin);
    let chan = ChannelPeer::start();
    group.bench_function("raw mpsc hand-off", |b| b.iter(|| chan.run(1)));
    group.finish();

    let mut group = c.benchmark_group("batch of 1000");
    with_runtime(true, || {
        group.bench_function("manta tasks", |b| b.iter(task_batch))
    });
    group.bench_function("raw mpsc closures", |b| b.iter(|| chan.run(1000)));
    group.finish();
}

/// Median seconds per call of `f` over `rounds` rounds of `per_round` calls.
fn median(rounds: usize, per_round: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed().as_secs_f64() / per_round as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn ratios(quick: bool) {
    let (rounds, per) = if quick { (3, 10) } else { (15, 2000) };
    let slot = with_runtime(false, || median(rounds, per, task_round_trip));
    let inline = with_runtime(true, || median(rounds, per, task_round_trip));
    let mut spin = SpinPeer::start();
    let floor = median(rounds, per, || spin.round_trip());
    drop(spin);
    let chan = ChannelPeer::start();
    let mpsc_rt = median(rounds, per, || chan.run(1));
    let batch_per = if quick { 1 } else { 20 };
    let manta_batch = with_runtime(true, || median(rounds, batch_per, task_batch));
    let mpsc_batch = median(rounds, batch_per, || chan.run(1000));
    let us = |s: f64| s * 1e6;
    println!("\nsame-run medians (this machine):");
    println!(
        "  task round trip: inline {:.2} µs, on a slot {:.2} µs; raw spin hand-off {:.2} µs, raw mpsc {:.2} µs",
        us(inline),
        us(slot),
        us(floor),
        us(mpsc_rt)
    );
    println!(
        "  slot round trip / spin floor = {:.2}×; mpsc / slot round trip = {:.2}×",
        slot / floor,
        mpsc_rt / slot
    );
    println!(
        "  1000 tasks: {:.1} µs vs 1000 mpsc closures {:.1} µs: ratio {:.2}×",
        us(manta_batch),
        us(mpsc_batch),
        mpsc_batch / manta_batch
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(2));
    bench(&mut c);
    c.final_summary();
    ratios(quick);
}
