//! The one door through which `manta-core` reaches synchronisation primitives.
//!
//! Every lock, atomic and thread primitive the scheduler and object table use comes from here,
//! so that a model-checking build (`--cfg loom`, as tokio's `src/loom/` does) can substitute
//! loom's versions here alone. The loom build itself is not wired up yet; until it is, this
//! module only keeps that door single. Code elsewhere in the crate must not name `std::sync`.

pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence,
};
pub(crate) use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
pub(crate) use std::thread;

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
///
/// Task bodies run under `catch_unwind`, so a panic never unwinds through a runtime lock; a
/// poisoned lock therefore only means a bug in the runtime itself, and the protected data is
/// still structurally valid (every critical section here leaves it consistent at each step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
