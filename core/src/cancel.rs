//! Cancellation (Ray's `ray.cancel`): the running task's context, the points where a running
//! task notices that it was cancelled, and cancelling the producer of an object.
//!
//! # What cancel does
//!
//! - A task not yet running (`Waiting` or `Queued`) never runs; its result fails with
//!   [`Error::Cancelled`] (`task.rs`, step 3).
//! - A running task cannot be stopped from outside its thread. It is *interrupted*: its result
//!   fails with `Cancelled` at once, and its next Manta call — `get`, `wait`, `put`, a task
//!   submission or actor call — returns `Cancelled` instead of doing anything, so the task
//!   unwinds (a `get` it is blocked in returns at once). Its CPUs go back when its body
//!   returns; a cancelled task is never retried.
//! - `recursive` (the default) cancels, the same way, every task the cancelled task submitted.
//! - An actor call not yet started is skipped by its actor; a running one is not interrupted
//!   (an actor's state would be left half-changed: Ray's rule for non-async actors).
//! - Work this process owns that runs in another process (a cluster) is cancelled there:
//!   `CancelTask` to the executing worker, answered by `CancelReply` (`cluster/submit.rs`).
//!   `force` there ends that worker process (`cluster/execute.rs`); embedded, force is a plain
//!   cancel, since a thread cannot be killed.
//!
//! # The interrupt protocol
//!
//! 1. A slot executing a task sets the thread's current task ([`Running`]) for the body's
//!    duration (nested executions, as a `get` running a queued task inline, save and restore
//!    it). Tasks the body submits are noted as its children.
//! 2. The canceller sets the task's `interrupted` flag (`SeqCst`), then takes the thread the task
//!    parked in (if any) under its mutex and unparks it.
//! 3. A body blocking in `get`/`wait` stores its thread under the same mutex before it parks,
//!    then checks the flag in its wake-up condition. Either the canceller's take came after the
//!    store (and unparks it), or the flag was set before the store's unlock and the check sees
//!    it: no interrupt is lost.

use std::cell::Cell;

use crate::error::Error;
use crate::object::ObjectCell;
use crate::runtime;
use crate::sync::{Arc, thread};
use crate::task::{RUNNING, Task};

pub(crate) use crate::api::CancelOptions;

thread_local! {
    /// The task this thread is executing, or null (step 1). A pointer borrowed from the
    /// `Arc<Task>` the executing frame holds for the guard's lifetime (no reference count
    /// taken per task: the hot path runs millions of tasks a second), and a plain `Cell`, so
    /// the check on every `get` of a thread running no task (the driver) is one load.
    static CURRENT: Cell<*const Task> = const { Cell::new(std::ptr::null()) };
}

/// Marks the calling thread as running `task` until dropped (step 1).
pub(crate) struct Running<'a> {
    previous: *const Task,
    /// `CURRENT` points into this `Arc`, alive as long as the borrow.
    _task: std::marker::PhantomData<&'a Arc<Task>>,
}

impl<'a> Running<'a> {
    pub(crate) fn enter(task: &'a Arc<Task>) -> Running<'a> {
        let previous = CURRENT.with(|c| c.replace(Arc::as_ptr(task)));
        Running {
            previous,
            _task: std::marker::PhantomData,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Runs `f` on the task the calling thread executes, if any.
#[inline]
fn with_current<R>(f: impl FnOnce(&Arc<Task>) -> R) -> Option<R> {
    let ptr = CURRENT.with(Cell::get);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a non-null `CURRENT` was set by a live `Running` guard on this thread (guards
    // nest, and each restores its predecessor when dropped), from `Arc::as_ptr` of an
    // `Arc<Task>` the guard borrows for its lifetime: the allocation is alive, and the
    // strong count is at least 1 for as long as it is set. `ManuallyDrop` keeps this
    // temporary `Arc` from giving up a count it never took.
    let task = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(ptr) });
    Some(f(&task))
}

/// The error a cancelled task's Manta calls return, if the calling thread runs a task that was
/// cancelled.
#[inline]
pub(crate) fn check() -> Result<(), Error> {
    match with_current(|task| task.is_interrupted().then(|| cancelled(task))) {
        Some(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// The cancelled task's error (out of line: every Manta call checks, few are cancelled).
#[cold]
#[inline(never)]
fn cancelled(task: &Arc<Task>) -> Error {
    task.cancelled_error()
}

/// The task the calling thread runs, if any.
pub(crate) fn current() -> Option<Arc<Task>> {
    with_current(Arc::clone)
}

/// Notes `cell` as a child of the task the calling thread runs (for recursive cancel).
pub(crate) fn note_child(cell: &Arc<ObjectCell>) {
    with_current(|task| task.add_child(cell));
}

/// Registers the calling thread to be unparked if its task is cancelled while it blocks
/// (step 3); returns a check for the wake-up condition: whether the task was cancelled.
pub(crate) fn blocking() -> impl Fn() -> bool {
    let task = current();
    if let Some(t) = &task {
        t.park_here(thread::current());
    }
    move || task.as_ref().is_some_and(|t| t.is_interrupted())
}

/// Cancels whatever produces `cell`, as `options` say; returns whether it was cancelled.
pub(crate) fn cancel_cell(cell: &Arc<ObjectCell>, options: CancelOptions) -> bool {
    if cell.is_ready() {
        return false;
    }
    if let Some(task) = cell.producer() {
        return cancel_task(&task, options);
    }
    if cell.cancel_call() {
        return cell.complete(Err(Error::Cancelled {
            object: cell.id(),
            task: "actor call".into(),
        }));
    }
    match runtime::with_current(|rt| rt.cluster.clone()) {
        Ok(Some(cluster)) => cluster.cancel_remote(cell, options),
        _ => false,
    }
}

/// Cancels `task`: queued, it never runs; running, it is interrupted (module docs).
pub(crate) fn cancel_task(task: &Arc<Task>, options: CancelOptions) -> bool {
    let was_queued = task.cancel();
    if !was_queued && task.state() != RUNNING {
        return false;
    }
    // The result first: a body that returns meanwhile (woken by the interrupt, say) must not
    // complete it with its own value before the cancel does.
    let cancelled = task.result.complete(Err(task.cancelled_error()));
    if cancelled && !was_queued {
        task.interrupt();
    }
    if options.recursive {
        for child in task.take_children() {
            cancel_cell(&child, options);
        }
    }
    if was_queued {
        let _ = runtime::with_current(|rt| rt.scheduler.drain_pending());
    }
    if cancelled {
        tracing::debug!(task = %task.id, "cancelled {}", task.name());
    }
    cancelled
}
