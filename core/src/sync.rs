//! The one door through which `manta-core` reaches synchronisation primitives.
//!
//! Every lock, atomic and thread primitive of the crate comes from here (no other file names
//! `std::sync`; `scripts/check` enforces it), so that a model-checking build can substitute
//! loom's versions here alone, as tokio's `src/loom/` does.
//!
//! # The loom build
//!
//! Under `--cfg manta_loom` (a crate-specific name: tokio and other dependencies change
//! behaviour under plain `cfg(loom)`), the atomics, `fence`, `Mutex`, `RwLock`, `thread` and
//! `OnceLock` below are loom's, or built on loom's. That build is made by the `manta-loom`
//! package (`core/loom`, run by `scripts/loom`): it compiles the modelled modules from their
//! own source files — this one, `scheduler/sleep.rs` (the slots' sleep/wake protocol),
//! `scheduler/publish.rs` (slot publication) and `wait_cell.rs` (the object cell's wake-up) —
//! and explores their interleavings. The rest of the crate is not built under loom: it names
//! things loom has no model of (timed parks, thread builders, sockets).
//!
//! Kept std's in both builds, on purpose:
//! - `Arc` and `Weak`: loom's `Arc` has no `Weak` and no unsized coercion (`Arc<dyn Fn>`); the
//!   reference count is std's and not what the models check.
//! - [`LazyLock`], [`TryLockError`] and [`mpsc`]: no model needed (used outside the modelled
//!   modules only).
//! - [`interprocess`]: atomics placed in memory shared between processes (collectives). Loom
//!   cannot model another process, nor an atomic at a given address.
//!
//! Under loom, `OnceLock` is a small stand-in built on loom's atomics and `UnsafeCell` (loom
//! has none), with the part of std's API the modelled modules use: `new`, `get`, `set`; and
//! `thread::park`/`Thread::unpark` are a token under loom's `Mutex` and `Condvar`, as std's
//! parker is: loom's own `unpark` also wakes a thread blocked on a lock or in `join`, which
//! std's never does (the model then fails inside loom).

#[cfg(not(manta_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(manta_loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock};
#[cfg(not(manta_loom))]
pub(crate) use std::thread;

#[cfg(manta_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(manta_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard, RwLock};
#[cfg(manta_loom)]
pub(crate) use loom_once::OnceLock;
#[cfg(manta_loom)]
pub(crate) use loom_thread as thread;

#[allow(unused_imports)]
pub(crate) use std::sync::{Arc, LazyLock, TryLockError, Weak, mpsc};

/// `UnsafeCell` with loom's closure API (`with`, `with_mut`), so that a modelled module's
/// unsynchronised accesses are seen by the model: loom's under loom, std's (wrapped) otherwise.
#[cfg(manta_loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(not(manta_loom))]
pub(crate) use std_cell::UnsafeCell;

/// std's `UnsafeCell` behind loom's API (see [`UnsafeCell`]).
#[cfg(not(manta_loom))]
mod std_cell {
    /// A cell whose contents are reached through raw pointers, in a closure.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a pointer to read the contents through.
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with a pointer to write the contents through.
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Atomics in memory shared between processes (the collectives' shared regions): always
/// std's, in every build (see the module docs).
#[allow(unused_imports)]
pub(crate) mod interprocess {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

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

/// `std::thread` for the loom build: loom's threads, with a parker of our own (see the
/// module docs).
#[cfg(manta_loom)]
pub(crate) mod loom_thread {
    use loom::sync::{Arc, Condvar, Mutex};
    #[allow(unused_imports)]
    pub(crate) use loom::thread::{JoinHandle, ThreadId, spawn, yield_now};

    /// A thread's park token.
    #[derive(Debug, Default)]
    struct Parker {
        token: Mutex<bool>,
        unparked: Condvar,
    }

    loom::thread_local! {
        static PARKER: Arc<Parker> = Arc::new(Parker::default());
    }

    /// A handle to a thread, to unpark it.
    #[derive(Clone, Debug)]
    pub(crate) struct Thread {
        id: ThreadId,
        parker: Arc<Parker>,
    }

    impl Thread {
        pub(crate) fn id(&self) -> ThreadId {
            self.id
        }

        /// Makes the thread's token available, waking it if it is parked.
        pub(crate) fn unpark(&self) {
            let mut token = super::lock(&self.parker.token);
            *token = true;
            self.parker.unparked.notify_one();
        }
    }

    /// The calling thread.
    pub(crate) fn current() -> Thread {
        Thread {
            id: loom::thread::current().id(),
            parker: PARKER.with(Arc::clone),
        }
    }

    /// Blocks until the calling thread's token is available, and consumes it.
    pub(crate) fn park() {
        PARKER.with(|p| {
            let mut token = super::lock(&p.token);
            while !*token {
                token = match p.unparked.wait(token) {
                    Ok(t) => t,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            *token = false;
        });
    }
}

/// `OnceLock` for the loom build: loom has none, and std's would hide its synchronisation
/// from the model.
#[cfg(manta_loom)]
mod loom_once {
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU8, Ordering};

    const EMPTY: u8 = 0;
    const WRITING: u8 = 1;
    const SET: u8 = 2;

    /// A cell written at most once (see the parent module).
    #[derive(Debug)]
    pub(crate) struct OnceLock<T> {
        state: AtomicU8,
        value: UnsafeCell<Option<T>>,
    }

    // SAFETY: the value is written once, by the thread that moved `state` from EMPTY, before
    // it publishes SET with Release; it is read only after an Acquire load saw SET, and never
    // written again. So it is shared like a `&T` (needs `Sync`) and sent like a `T`.
    #[allow(unsafe_code)]
    unsafe impl<T: Send + Sync> Sync for OnceLock<T> {}
    // SAFETY: owning the cell is owning the `T`.
    #[allow(unsafe_code)]
    unsafe impl<T: Send> Send for OnceLock<T> {}

    impl<T> OnceLock<T> {
        pub(crate) fn new() -> Self {
            OnceLock {
                state: AtomicU8::new(EMPTY),
                value: UnsafeCell::new(None),
            }
        }

        #[allow(unsafe_code)]
        pub(crate) fn get(&self) -> Option<&T> {
            if self.state.load(Ordering::Acquire) != SET {
                return None;
            }
            // SAFETY: SET was published with Release after the only write (see `Sync`).
            self.value.with(|p| unsafe { (*p).as_ref() })
        }

        /// As std's: `Err(value)` if the cell was (or is being) set; once `set` returns, by
        /// either path, `get` sees a value.
        #[allow(unsafe_code)]
        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            if self
                .state
                .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
                .is_err()
            {
                while self.state.load(Ordering::Acquire) != SET {
                    loom::thread::yield_now();
                }
                return Err(value);
            }
            // SAFETY: winning the EMPTY → WRITING exchange makes this the only writer, and no
            // reader looks before SET.
            self.value.with_mut(|p| unsafe { *p = Some(value) });
            self.state.store(SET, Ordering::Release);
            Ok(())
        }
    }
}
