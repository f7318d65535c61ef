//! Sharded training: a small character-level language model trained with tensor parallelism
//! (Megatron-style column- then row-parallel layers in each block, allreduces in forward and
//! backward) times data parallelism (gradients averaged across replicas), with one actor per
//! shard and replica exchanging tensors through Manta's collectives.
//!
//! The same program runs on the embedded runtime, as the driver of a `manta start` cluster
//! (`MANTA_ADDRESS` set) and under `srun -n 4` / `mpirun -np 4` (rank 0 drives):
//!
//! ```sh
//! cargo run --release --example sharded_training -- --tp 2 --dp 1 --steps 100
//! ```
//!
//! It shows step, loss and tokens/s, prints the share of step time spent in collectives, and
//! replays the run unsharded in this process from the same seed and batches, exiting non-zero
//! when the two loss curves differ by more than `--tolerance` (relative) over the first
//! `--strict-steps` steps or by more than `--drift-tolerance` at any step (rounding differs
//! between sharded and unsharded sums, and training amplifies it).

mod data;
mod driver;
mod member;
mod model;
mod train;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = driver::Options::parse();
    if let Err(e) = manta::init() {
        eprintln!("sharded_training: starting the runtime failed: {e}");
        return ExitCode::FAILURE;
    }
    let result = driver::train(&opts);
    manta::shutdown();
    match result {
        Ok(report) if opts.no_check || report.matches(&opts) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("sharded_training: the loss curve does not match the unsharded run");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sharded_training failed: {e}");
            ExitCode::FAILURE
        }
    }
}
