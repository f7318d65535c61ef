//! loom models of `manta-core`'s lock-free parts.
//!
//! Built only under `--cfg manta_loom` (`scripts/loom`); otherwise this crate is empty. The
//! modules below are `manta-core`'s own source files, compiled here with loom's atomics,
//! locks and threads (`core/src/sync.rs` switches under the cfg): the models run the
//! production code, not a copy. Each file stands alone, reaching only `crate::sync`, which is
//! what lets it be built outside the rest of `manta-core`.
//!
//! - `models::sleep_wake`: the scheduler's sleep/wake protocol (`scheduler/sleep.rs`).
//! - `models::publish`: slot publication (`scheduler/publish.rs`).
//! - `models::wait_cell`: the object cell's wake-up (`object/wait_cell.rs`).
//!
//! Run them with `scripts/loom` (`--quick` for the smoke subset); `LOOM_MAX_PREEMPTIONS`
//! bounds the search (the script sets 3), and a failure prints the interleaving with
//! `LOOM_LOG=trace LOOM_LOCATION=1`.
#![cfg(manta_loom)]
#![deny(unsafe_code)]
// The modules come from `manta-core`, where the rest of the crate uses what a model here
// does not.
#![allow(dead_code, unreachable_pub)]

#[allow(unsafe_code)] // loom's `OnceLock` stand-in, argued there
#[path = "../../src/sync.rs"]
mod sync;

#[path = "../../src/scheduler/publish.rs"]
mod publish;
#[path = "../../src/scheduler/sleep.rs"]
mod sleep;
#[allow(unsafe_code)] // the cell's state word and value, argued there
#[path = "../../src/object/wait_cell.rs"]
mod wait_cell;

#[cfg(test)]
mod models {
    mod publish;
    mod sleep_wake;
    mod wait_cell;
}
