//! A value written once, with the waiters it wakes: the wake-up at the heart of an object cell.
//!
//! The protocol (steps 2–4 of the cell protocol in `object.rs`):
//!
//! - A completion sets the value ([`WaitCell::set`]: exactly one wins), then takes the waiter
//!   list under its lock and wakes every waiter it held ([`WaitCell::wake_waiters`]).
//! - A waiter registers ([`WaitCell::register`]) under the same lock, after re-checking the
//!   value under it; if the value is there, it is handed back instead.
//!
//! So either the registration takes the lock before the completion's take (and is woken), or
//! after it — and then, the value being set before that take, the re-check sees it: no wake-up
//! is lost. A thread that parks after registering is therefore always unparked (`thread::park`
//! keeps the token of an unpark that comes first). The loom model `wait_cell` (`core/loom`,
//! run by `scripts/loom`) checks this on a getter that parks while a setter completes.

use crate::sync::{Mutex, OnceLock, lock};

/// Something a completion wakes.
pub(crate) trait Wake {
    /// Wakes it (called once, on the completing thread, outside the cell's lock).
    fn wake(self);
}

/// A write-once value and the waiters registered before it was written (see module docs).
pub(crate) struct WaitCell<T, W> {
    value: OnceLock<T>,
    waiters: Mutex<Vec<W>>,
}

impl<T, W: Wake> WaitCell<T, W> {
    /// An empty cell.
    pub(crate) fn new() -> Self {
        WaitCell {
            value: OnceLock::new(),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The value, once set.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.get()
    }

    /// Whether the value is set.
    pub(crate) fn is_ready(&self) -> bool {
        self.value.get().is_some()
    }

    /// Sets the value; false if it was set already (the first completion wins). The caller
    /// then calls [`WaitCell::wake_waiters`].
    pub(crate) fn set(&self, value: T) -> bool {
        self.value.set(value).is_ok()
    }

    /// Wakes every waiter registered so far (after [`WaitCell::set`]).
    pub(crate) fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for w in waiters {
            w.wake();
        }
    }

    /// Registers `waiter` unless the value is set, in which case the waiter is handed back so
    /// the caller can act on the value at once.
    pub(crate) fn register(&self, waiter: W) -> Result<(), W> {
        let mut waiters = lock(&self.waiters);
        if self.is_ready() {
            return Err(waiter);
        }
        waiters.push(waiter);
        Ok(())
    }
}
