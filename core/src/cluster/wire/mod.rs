//! The flatbuffers code of `core/schemas/cluster.fbs`.
//!
//! `cluster_generated.rs` is produced by `flatc --rust` 25.12.19 and committed byte-for-byte as
//! generated (`rustfmt::skip`, lints allowed); `scripts/check-flatbuffers` checks it against the
//! schema. Only [`super::proto`] uses it: every parse goes through `flatbuffers::root`, which
//! runs the verifier.

#[rustfmt::skip]
#[allow(
    unsafe_code,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    dead_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod cluster_generated;

pub(crate) use self::cluster_generated::manta::cluster::wire::*;
