//! The multi-node cluster: its control messages and (to come) the GCS, raylets and workers.
#![allow(dead_code)] // Only the messages are written so far; the rest of the cluster uses them.

pub(crate) mod proto;
mod wire;
