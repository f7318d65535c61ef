//! A value written once, with the waiters it wakes: the wake-up at the heart of an object cell.
//!
//! One word of state says everything but the value: two flag bits and the head of the list of
//! waiters registered so far (a stack of boxed nodes; a node is aligned to 8 bytes, so a
//! pointer to it leaves the low bits free). The protocol (steps 2–4 of the cell protocol in
//! `object.rs`):
//!
//! - A completion claims the cell by setting `CLAIMED` (exactly one wins; [`WaitCell::set`]),
//!   writes the value, then flips `CLAIMED` to `SET` in one atomic step (Release: the value is
//!   published with it). It then takes the list, leaving `SET` alone in the word, and wakes
//!   every waiter it held ([`WaitCell::wake_waiters`]).
//! - A waiter registers ([`WaitCell::register`]) by pushing its node with a compare-and-swap
//!   that expects the word without `SET`; if `SET` is there, the waiter is handed back.
//!
//! So a push either lands before the flip to `SET` (and the completion's take finds it, since
//! nothing but the take removes nodes), or it sees `SET` and the value: no wake-up is lost. A
//! thread that parks after registering is therefore always unparked (`thread::park` keeps the
//! token of an unpark that comes first). Nodes are only pushed until the one take, so the stack
//! has no ABA problem. The loom model `wait_cell` (`core/loom`, run by `scripts/loom`) checks
//! this on a getter that parks while one or two setters complete.
//!
//! The cell is a word plus the value: an object cell's state costs 8 bytes beside its value,
//! where a `OnceLock` and a `Mutex<Vec<_>>` cost 40 (a cell allocated for every task and
//! call, kept in the allocator's fastest size classes).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell, thread};

/// Something a completion wakes.
pub(crate) trait Wake {
    /// Wakes it (called once, on the completing thread).
    fn wake(self);
}

/// A completion has claimed the cell and is writing the value.
const CLAIMED: usize = 0b01;
/// The value is written and published.
const SET: usize = 0b10;
/// The bits of the word that are the list's head.
const LIST: usize = !(CLAIMED | SET);

/// One registered waiter.
struct Node<W> {
    waiter: W,
    next: *mut Node<W>,
}

/// A write-once value and the waiters registered before it was written (see module docs).
pub(crate) struct WaitCell<T, W> {
    /// `CLAIMED`, `SET` and the list's head (a `*mut Node<W>`, null when empty).
    state: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
    /// The cell owns the nodes on its list.
    _nodes: PhantomData<Box<Node<W>>>,
}

// SAFETY: the value is written once, by the completion that set `CLAIMED`, before the Release
// flip to `SET`; it is read only after an Acquire load saw `SET`, and never written again. So
// it is shared like a `&T` (needs `T: Sync`) and dropped where the cell is (`T: Send`). The
// waiters are moved in by `register` and out by `wake_waiters` on any thread (`W: Send`).
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync, W: Send> Sync for WaitCell<T, W> {}
// SAFETY: owning the cell is owning its value and its waiters.
#[allow(unsafe_code)]
unsafe impl<T: Send, W: Send> Send for WaitCell<T, W> {}

impl<T, W: Wake> WaitCell<T, W> {
    /// An empty cell.
    pub(crate) fn new() -> Self {
        WaitCell {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
            _nodes: PhantomData,
        }
    }

    /// The value, once set.
    #[allow(unsafe_code)]
    pub(crate) fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) & SET == 0 {
            return None;
        }
        // SAFETY: `SET` was published with Release after the only write, and the value is
        // never written again (see the `Sync` impl).
        Some(self.value.with(|p| unsafe { (*p).assume_init_ref() }))
    }

    /// Whether the value is set.
    pub(crate) fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) & SET != 0
    }

    /// Sets the value; false if it was set already (the first completion wins; a later one
    /// returns once the winner's value is visible). The caller then calls
    /// [`WaitCell::wake_waiters`].
    #[allow(unsafe_code)]
    pub(crate) fn set(&self, value: T) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (CLAIMED | SET) != 0 {
                // The winner writes a value and flips to `SET` with nothing in between.
                while !self.is_ready() {
                    thread::yield_now();
                }
                return false;
            }
            match self.state.compare_exchange_weak(
                s,
                s | CLAIMED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: claiming the cell makes this the only writer, and no reader looks before
        // `SET`.
        self.value.with_mut(|p| unsafe {
            (*p).write(value);
        });
        self.state.fetch_xor(CLAIMED | SET, Ordering::Release);
        true
    }

    /// Wakes every waiter registered so far (after [`WaitCell::set`]), in the order they came.
    #[allow(unsafe_code)]
    pub(crate) fn wake_waiters(&self) {
        let s = self.state.swap(SET, Ordering::Acquire);
        // The list is a stack: reverse it so that the first to register is woken first.
        let mut head = (s & LIST) as *mut Node<W>;
        let mut fifo: *mut Node<W> = ptr::null_mut();
        while !head.is_null() {
            // SAFETY: the nodes were pushed by `register` (boxed, published by its Release
            // exchange, seen by the Acquire swap above) and the swap took them all: they are
            // this thread's alone.
            let node = unsafe { &mut *head };
            head = node.next;
            node.next = fifo;
            fifo = node;
        }
        while !fifo.is_null() {
            // SAFETY: as above; each node is unboxed once, as it leaves the list.
            let node = unsafe { Box::from_raw(fifo) };
            fifo = node.next;
            node.waiter.wake();
        }
    }

    /// Registers `waiter` unless the value is set, in which case the waiter is handed back so
    /// the caller can act on the value at once.
    #[allow(unsafe_code)]
    pub(crate) fn register(&self, waiter: W) -> Result<(), W> {
        let mut s = self.state.load(Ordering::Relaxed);
        if s & SET != 0 {
            return Err(waiter);
        }
        let node = Box::into_raw(Box::new(Node {
            waiter,
            next: ptr::null_mut(),
        }));
        debug_assert_eq!(node as usize & !LIST, 0, "a node is aligned to 8 bytes");
        loop {
            if s & SET != 0 {
                // SAFETY: the node was never published; it is still this thread's box.
                let node = unsafe { Box::from_raw(node) };
                return Err(node.waiter);
            }
            // SAFETY: unpublished until the exchange below succeeds: this thread's alone.
            unsafe { (*node).next = (s & LIST) as *mut Node<W> };
            match self.state.compare_exchange_weak(
                s,
                (s & !LIST) | node as usize,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => s = now,
            }
        }
    }
}

impl<T, W> Drop for WaitCell<T, W> {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let s = self.state.load(Ordering::Acquire);
        if s & SET != 0 {
            // SAFETY: `SET`: the value was written; this is the cell's last use.
            self.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
        // Waiters of a cell dropped before it was set (or before `wake_waiters`) are dropped
        // unwoken, as a dropped waiter list would drop them.
        let mut head = (s & LIST) as *mut Node<W>;
        while !head.is_null() {
            // SAFETY: the cell owns the nodes still on its list, and nobody else can reach it.
            let node = unsafe { Box::from_raw(head) };
            head = node.next;
        }
    }
}
