//! The object cell's wake-up (`object/wait_cell.rs`): a getter registers and parks while a
//! setter (or two racing) completes the cell. The getter always wakes (loom fails a model in
//! which every thread is blocked), sees the winning value, and exactly one completion wins;
//! and a waiter that never looks at the cell again (a task waiting for an argument, a future's
//! waker) is woken exactly once if `register` took it, never if it handed it back.

use loom::sync::Arc;

use crate::sync::{AtomicUsize, Ordering, thread};
use crate::wait_cell::{WaitCell, Wake};

/// A parked getter, as `Waiter::Thread`.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self) {
        self.0.unpark();
    }
}

/// What `get` does on a pending cell: register, then park until the value is there.
fn get(cell: &WaitCell<usize, Unpark>) -> usize {
    if cell.register(Unpark(thread::current())).is_ok() {
        while !cell.is_ready() {
            thread::park();
        }
    }
    *cell.get().expect("woken or handed back, the cell is set")
}

/// What `complete` does: set, then wake the registered waiters.
fn complete(cell: &WaitCell<usize, Unpark>, value: usize, wins: &AtomicUsize) {
    if cell.set(value) {
        wins.fetch_add(1, Ordering::Relaxed);
        cell.wake_waiters();
    }
}

#[test]
fn getter_parks_while_setter_completes() {
    loom::model(|| {
        let cell = Arc::new(WaitCell::new());
        let wins = Arc::new(AtomicUsize::new(0));
        let setter = {
            let (cell, wins) = (cell.clone(), wins.clone());
            thread::spawn(move || complete(&cell, 7, &wins))
        };
        assert_eq!(get(&cell), 7);
        setter.join().unwrap();
        assert_eq!(wins.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn two_completions_race_one_getter() {
    loom::model(|| {
        let cell = Arc::new(WaitCell::new());
        let wins = Arc::new(AtomicUsize::new(0));
        let setters: Vec<_> = [1, 2]
            .into_iter()
            .map(|v| {
                let (cell, wins) = (cell.clone(), wins.clone());
                thread::spawn(move || complete(&cell, v, &wins))
            })
            .collect();
        let got = get(&cell);
        for s in setters {
            s.join().unwrap();
        }
        assert!(got == 1 || got == 2);
        assert_eq!(*cell.get().unwrap(), got);
        assert_eq!(wins.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn two_getters_one_setter() {
    loom::model(|| {
        let cell = Arc::new(WaitCell::new());
        let wins = Arc::new(AtomicUsize::new(0));
        let getter = {
            let cell = cell.clone();
            thread::spawn(move || get(&cell))
        };
        let setter = {
            let (cell, wins) = (cell.clone(), wins.clone());
            thread::spawn(move || complete(&cell, 3, &wins))
        };
        assert_eq!(get(&cell), 3);
        assert_eq!(getter.join().unwrap(), 3);
        setter.join().unwrap();
    });
}

/// A waiter that does not look at the cell again (a task or actor waiting for an argument, a
/// future's waker): it must be woken exactly once if `register` took it.
struct Count(Arc<AtomicUsize>);

impl Wake for Count {
    fn wake(self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn every_registered_waiter_is_woken_once() {
    loom::model(|| {
        let cell: Arc<WaitCell<usize, Count>> = Arc::new(WaitCell::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (cell, woken) = (cell.clone(), woken.clone());
            thread::spawn(move || cell.register(Count(woken)).is_ok())
        };
        if cell.set(5) {
            cell.wake_waiters();
        }
        let registered = waiter.join().unwrap();
        let woken = woken.load(Ordering::Relaxed);
        assert_eq!(woken, usize::from(registered), "registered: {registered}");
    });
}

/// Two waiters push onto the list at once while the cell is claimed, set and drained: each
/// is woken exactly once if it was taken, and none is lost between the claim and the take.
#[test]
fn two_registrations_race_a_completion() {
    loom::model(|| {
        let cell: Arc<WaitCell<usize, Count>> = Arc::new(WaitCell::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (cell, woken) = (cell.clone(), woken.clone());
                thread::spawn(move || cell.register(Count(woken)).is_ok())
            })
            .collect();
        if cell.set(5) {
            cell.wake_waiters();
        }
        let registered: usize = waiters
            .into_iter()
            .map(|w| usize::from(w.join().unwrap()))
            .sum();
        assert_eq!(woken.load(Ordering::Relaxed), registered);
    });
}
