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

use std::cell::{Cell, RefCell};

use crate::error::Error;
use crate::object::ObjectCell;
use crate::runtime;
use crate::sync::{Arc, thread};
use crate::task::{RUNNING, Task};

pub(crate) use crate::api::CancelOptions;

thread_local! {
    /// The task this thread is executing, if any (step 1).
    static CURRENT: RefCell<Option<Arc<Task>>> = const { RefCell::new(None) };
    /// Whether `CURRENT` is set: a plain flag with no destructor, so that the check on every
    /// `get` of a thread running no task (the driver) costs one thread-local load.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as running `task` until dropped (step 1).
pub(crate) struct Running {
    previous: Option<Arc<Task>>,
}

impl Running {
    pub(crate) fn enter(task: &Arc<Task>) -> Running {
        let previous = CURRENT.with(|c| c.replace(Some(task.clone())));
        IN_TASK.with(|t| t.set(true));
        Running { previous }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let previous = self.previous.take();
        IN_TASK.with(|t| t.set(previous.is_some()));
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The error a cancelled task's Manta calls return, if the calling thread runs a task that was
/// cancelled.
#[inline]
pub(crate) fn check() -> Result<(), Error> {
    if !IN_TASK.with(Cell::get) {
        return Ok(());
    }
    CURRENT.with(
        |c| match c.try_borrow().ok().as_deref().and_then(Option::as_ref) {
            Some(task) if task.is_interrupted() => Err(task.cancelled_error()),
            _ => Ok(()),
        },
    )
}

/// The task the calling thread runs, if any.
pub(crate) fn current() -> Option<Arc<Task>> {
    if !IN_TASK.with(Cell::get) {
        return None;
    }
    CURRENT.with(|c| c.try_borrow().ok().and_then(|t| t.clone()))
}

/// Notes `cell` as a child of the task the calling thread runs (for recursive cancel).
pub(crate) fn note_child(cell: &Arc<ObjectCell>) {
    if !IN_TASK.with(Cell::get) {
        return;
    }
    CURRENT.with(|c| {
        if let Ok(t) = c.try_borrow()
            && let Some(task) = t.as_ref()
        {
            task.add_child(cell);
        }
    });
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
