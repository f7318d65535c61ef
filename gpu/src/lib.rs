//! GPU support for Manta.
//!
//! This crate will own every use of CUDA (through cudarc with dynamic loading, features `cuda`
//! and `nccl`): device discovery, registering the store arena as pinned memory, device-resident
//! objects shared by CUDA IPC, and NCCL communicators and collectives for actor groups.
//!
//! **Status:** empty until the GPU work lands. Today a task may request `num_gpus`, which the
//! scheduler accounts for, but nothing binds devices (see `ARCHITECTURE.md`).
