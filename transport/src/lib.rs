//! Message and bulk-data transport for Manta.
//!
//! This crate will own everything that moves bytes between processes and nodes, and nothing
//! else: a narrow `Transport` trait (connect, send/recv of framed messages, registration of
//! memory, one-sided get/put, progress) with private backends chosen statically — shared-memory
//! rings between processes of one node, TCP (tokio) between nodes, RDMA (ibverbs, feature `rdma`)
//! — plus the framing of flatbuffers control messages.
//!
//! **Status:** the embedded single-node runtime needs no transport, so the crate is empty until
//! the cluster work lands (see `ARCHITECTURE.md`). It must never learn about tasks or objects.
