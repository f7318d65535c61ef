//! GPU smoke check: tasks and an actor holding GPUs open the devices `manta::gpu_ids()` names
//! and copy a buffer through each, byte-exact. Embedded by default; as a cluster's driver when
//! `MANTA_ADDRESS` is set (the raylet's workers then see the node's GPUs).
//!
//! ```text
//! cargo run --release --features cuda --example gpu_smoke [-- --require]
//! ```
//!
//! Without a CUDA driver or device it prints why and exits 0, or 1 with `--require` (what
//! `scripts/gpu-check` runs on a GPU machine).

use std::time::Instant;

use manta::gpu::{Gpu, GpuError, devices};

/// Copies `bytes` through the first device the task holds; returns (devices held, ordinal used,
/// microseconds of the round trip).
/// A failure is the task's error (`get` returns it).
#[manta::remote]
fn round_trip(bytes: usize) -> (Vec<usize>, usize, u128) {
    let ids = manta::gpu_ids();
    let first = *ids.first().expect("the task holds a GPU");
    let gpu = Gpu::open(first).expect("the task's device opens");
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let back = gpu
        .round_trip(&data)
        .expect("a round trip through the device");
    let us = start.elapsed().as_micros();
    assert!(back == data, "device {first}: the bytes came back changed");
    (ids, first, us)
}

#[manta::actor]
struct Holder {
    gpu: Gpu,
}

#[manta::actor]
impl Holder {
    fn new() -> Self {
        let ids = manta::gpu_ids();
        let gpu = Gpu::open(ids[0]).expect("the actor's device opens");
        Holder { gpu }
    }

    fn check(&self, bytes: usize) -> usize {
        let data = vec![0x5au8; bytes];
        let back = self.gpu.round_trip(&data).expect("a round trip");
        assert!(back == data, "the bytes came back changed");
        self.gpu.ordinal()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let require = std::env::args().any(|a| a == "--require");
    let list = match devices() {
        Ok(list) => list,
        Err(e @ (GpuError::NotBuilt | GpuError::NoDriver | GpuError::NoDevice)) => {
            println!("gpu_smoke: skipped: {e}");
            std::process::exit(i32::from(require));
        }
        Err(e) => return Err(e.into()),
    };
    for d in &list {
        println!(
            "gpu_smoke: device {} {} {} MiB sm_{}{} pci {}",
            d.ordinal,
            d.name,
            d.total_memory >> 20,
            d.compute_capability.0,
            d.compute_capability.1,
            d.pci_bus_id
        );
    }
    let cluster = std::env::var_os("MANTA_ADDRESS").is_some();
    let config = if cluster {
        manta::Config::default()
    } else {
        manta::Config::default().num_gpus(list.len() as f64)
    };
    manta::init_with(config)?;
    let mut failures = 0;
    for bytes in [0usize, 1, 4096, 64 << 20] {
        match round_trip::options().num_gpus(1.0).remote(bytes).get() {
            Ok((ids, used, us)) => {
                println!("gpu_smoke: task {bytes} B on device {used} (holds {ids:?}): {us} µs")
            }
            Err(e) => {
                failures += 1;
                println!("gpu_smoke: FAILED task {bytes} B: {e}");
            }
        }
    }
    // Fractions share a device: two halves at once.
    let halves: Vec<_> = (0..2)
        .map(|_| round_trip::options().num_gpus(0.5).remote(1 << 20))
        .collect();
    for r in halves {
        match r.get() {
            Ok((ids, ..)) => println!("gpu_smoke: half a GPU holds {ids:?}"),
            Err(e) => {
                failures += 1;
                println!("gpu_smoke: FAILED half a GPU: {e}");
            }
        }
    }
    let holder = Holder::options().num_gpus(1.0).remote();
    match holder.check(16 << 20).get() {
        Ok(ordinal) => println!("gpu_smoke: actor on device {ordinal}: ok"),
        Err(e) => {
            failures += 1;
            println!("gpu_smoke: FAILED actor: {e}");
        }
    }
    manta::shutdown();
    let mode = if cluster { "cluster" } else { "embedded" };
    if failures > 0 {
        println!("gpu_smoke: {mode}: {failures} FAILED");
        std::process::exit(1);
    }
    println!("gpu_smoke: {mode}: all passed");
    Ok(())
}
