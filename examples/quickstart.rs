//! Manta's quickstart job: tasks, an actor and a large object, on the embedded runtime or, with
//! `MANTA_ADDRESS` set, on a running cluster (unchanged).
//!
//! It puts a 64 MiB array into the shared-memory object store, sums it in parallel with remote
//! tasks (each is handed a reference to the array and reads its own slice through a zero-copy
//! view, so the array is never copied), streams the partial sums into an actor as they finish,
//! shows progress, and checks the total against the closed form.
//! Run it with `scripts/quickstart` (or `cargo run --release --example quickstart`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use manta::ObjectRef;

const LEN: u64 = 16 * 1024 * 1024; // 16 Mi u32 values = 64 MiB
const CHUNKS: u64 = 32;

/// Sums slice `chunk` of `CHUNKS` of the array. The task takes the reference itself (not the
/// value), so it can read the array in place with `get_view` instead of decoding a copy.
#[manta::remote]
fn partial_sum(data: ObjectRef<Vec<u32>>, chunk: u64) -> Result<u64, String> {
    let data = data.get_view().map_err(|e| e.to_string())?;
    let size = data.len() as u64 / CHUNKS;
    let (lo, hi) = ((chunk * size) as usize, ((chunk + 1) * size) as usize);
    Ok(data[lo..hi].iter().map(|&x| x as u64).sum())
}

/// Collects partial sums in the order they are sent.
#[manta::actor]
struct Accumulator {
    total: u64,
    parts: u64,
}

#[manta::actor]
impl Accumulator {
    fn new() -> Self {
        Accumulator { total: 0, parts: 0 }
    }
    fn add(&mut self, part: u64) -> u64 {
        self.total += part;
        self.parts += 1;
        self.parts
    }
    fn total(&self) -> (u64, u64) {
        (self.total, self.parts)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    manta::init()?;
    let status = manta::status()?;
    match &status.cluster {
        Some(address) => println!("manta: driver of the cluster at {address}"),
        None => println!(
            "manta: embedded runtime with {} slots, resources {:?}",
            status.slots, status.resources
        ),
    }

    let data: Vec<u32> = (0..LEN as u32).collect();
    let array = manta::put(data)?;
    println!("put a {} MiB array as {}", (LEN * 4) >> 20, array.id());

    let mut pending: Vec<ObjectRef<u64>> = (0..CHUNKS)
        .map(|c| partial_sum::remote(array.clone(), c))
        .collect();
    let acc = Accumulator::remote();
    let bar = ProgressBar::new(CHUNKS);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} partial sums {msg}",
    )?);
    while !pending.is_empty() {
        let (ready, rest) = manta::wait(pending, 1, Some(Duration::from_secs(60)))?;
        if ready.is_empty() {
            return Err("no partial sum finished within 60 s".into());
        }
        for part in ready {
            acc.add(part.get()?);
            bar.inc(1);
        }
        pending = rest;
    }
    let (total, parts) = acc.total().get()?;
    bar.finish_with_message("done");

    let expected = LEN * (LEN - 1) / 2;
    println!(
        "sum of 0..{LEN} = {total} from {parts} parts in {:.1?}",
        start.elapsed()
    );
    manta::shutdown();
    if total != expected || parts != CHUNKS {
        return Err(format!(
            "wrong result: {total} from {parts} parts, expected {expected} from {CHUNKS}"
        )
        .into());
    }
    println!("checked: matches n(n-1)/2");
    Ok(())
}
