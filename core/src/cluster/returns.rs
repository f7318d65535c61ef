//! Tasks with several returns (`#[remote(num_returns = N)]`) across processes: each return is
//! its own object with its own id, completed, held, pulled and freed on its own.
//!
//! # Protocol
//!
//! 1. The owner takes ids `t, t + 1, .., t + n - 1` for a task `t` with `n` returns. Before it
//!    sends `PushTask { t }` it enters the cells of returns `1..n` in its `returns` table
//!    (`expect_returns`), and registers a callback on return 0's cell: when that completes,
//!    any other return still in the table leaves it, completed with return 0's failure (or, if
//!    return 0 succeeded, with an error saying the executor sent nothing for it).
//! 2. The executor finds the function's `num_returns` in its own registry (same binary) and
//!    runs it as one task holding every return cell (`Task::with_returns`). When return 0
//!    completes, every other return is complete: the body completes them first, and a
//!    failure of return 0 is copied to them by a callback registered when the task was made.
//! 3. On success the executor sends `TaskDone { t + i }` for `i = 1..n`, each value inline or
//!    held here under its own id exactly as a single result is (`outcome_of`), then
//!    `TaskDone { t }`. On failure it sends only `TaskDone { t }` with the error.
//! 4. The owner completes return `i`'s cell from its `TaskDone` (`return_done`): a held value
//!    becomes a `RemoteObject` whose holder is the sender, freed there when the owner's last
//!    reference drops. Messages on one connection keep their order, so the other returns are
//!    complete before return 0, which is the in-flight task (retried, failed with its worker,
//!    listed) as any single-return task is.
//!
//! The cells of returns `1..n` also travel with the task's retry record (`Retry::extra`), so
//! that return 0's `TaskDone` keeps the task's lineage for every stored return
//! (`lineage.rs`, step 1), and a rebuild expects its returns as step 1 does.
//!
//! 5. A return's `TaskDone` that finds no cell in the table (`late_return`) comes from a
//!    retry of a task whose worker died after sending that return and before return 0: the
//!    cell, written once, points at the dead worker's store. If the task is in flight at the
//!    sender and the return's copy is at a dead worker, it takes the sender's copy instead
//!    (as a rebuild's output is adopted, `lineage.rs`); else nobody waits for it (its task
//!    was cancelled, or failed meanwhile) and the sender's copy is freed.
//!
//! No message is new: a return is answered as a task of its own id would be.

use crate::sync::{Arc, Weak};

use super::peer::Peer;
use super::proto::{Msg, Outcome};
use super::worker::Cluster;
use crate::error::Error;
use crate::object::{ObjectCell, Waiter};

impl Cluster {
    /// Step 1 for a first run, before `submit_remote`: the other returns of task `first`
    /// wait in the table for their `TaskDone`, and go with the task's retry record (for its
    /// lineage: `lineage.rs`, step 1).
    pub(crate) fn expect_returns(&self, first: &Arc<ObjectCell>, extra: &[Arc<ObjectCell>]) {
        self.tasks.stash_returns(first.id().as_u64(), extra);
        self.await_returns(first, extra);
    }

    /// Step 1: the other returns of task `first` wait in the table for their `TaskDone`.
    pub(super) fn await_returns(&self, first: &Arc<ObjectCell>, extra: &[Arc<ObjectCell>]) {
        self.tasks.expect_returns(extra);
        let ids: Vec<u64> = extra.iter().map(|c| c.id().as_u64()).collect();
        let me = self.me.get().cloned().unwrap_or_default();
        let first2 = Arc::downgrade(first);
        let settle = move || {
            let (Some(c), Some(first)) = (me.upgrade(), first2.upgrade()) else {
                return;
            };
            let left: Vec<Arc<ObjectCell>> = c.tasks.take_returns(&ids);
            for cell in left {
                let e = match first.get() {
                    Some(Err(e)) => e.clone(),
                    _ => Error::Cluster {
                        what: format!("return {} of task {}", cell.id(), first.id()),
                        message: "the executor sent no value for it".into(),
                    },
                };
                cell.complete(Err(e));
            }
        };
        if let Err(Waiter::Callback(f)) = first.register(Waiter::Callback(Box::new(settle))) {
            f();
        }
    }

    /// Step 4: a `TaskDone` for no in-flight task may be another return of one.
    pub(super) fn return_done(&self, from: &Arc<Peer>, id: u64, outcome: Outcome) {
        let Some(cell) = self.tasks.take_return(id) else {
            return self.late_return(from, id, outcome);
        };
        cell.complete(self.outcome_value(id, from.worker.unwrap_or(0), outcome));
    }

    /// Step 5: return `id` came again, from a retry (or for nobody).
    fn late_return(&self, from: &Arc<Peer>, id: u64, outcome: Outcome) {
        let sender = from.worker.unwrap_or(0);
        let original = self
            .tasks
            .extra_return(id, sender)
            .and_then(|cell| match cell.get() {
                Some(Ok(v)) => super::lineage::held_result(&v.data),
                _ => None,
            })
            .filter(|o| o.local_copy().is_none() && self.placement.is_dead(o.holder()));
        match (original, outcome) {
            (Some(o), Outcome::Stored { .. }) => o.set_holder(sender),
            (Some(o), Outcome::Inline(bytes)) => o.set_local(crate::object::Payload::Inline(
                bytes::Bytes::from(bytes).into(),
            )),
            (None, Outcome::Stored { .. }) => self.free_remote(sender, id),
            _ => tracing::debug!(task_id = id, "completion of an unknown task ignored"),
        }
    }

    /// Steps 2–3, on the executor: when return 0 completes, sends every return to the owner.
    pub(super) fn reply_returns_when_done(
        &self,
        peer: &Arc<Peer>,
        task_id: u64,
        name: &str,
        cell: &Arc<ObjectCell>,
        extra: Box<[Arc<ObjectCell>]>,
    ) {
        self.tasks
            .executing(task_id, name, peer.worker.unwrap_or(0), cell);
        let me: Weak<Cluster> = self.me.get().cloned().unwrap_or_default();
        let peer = peer.clone();
        let first = Arc::downgrade(cell);
        let respond = move || {
            let (Some(c), Some(first)) = (me.upgrade(), first.upgrade()) else {
                return;
            };
            c.tasks.executed(task_id);
            let outcome = match first.get() {
                Some(Ok(v)) => {
                    for cell in extra.iter() {
                        let id = cell.id().as_u64();
                        let outcome = match cell.get() {
                            Some(Ok(v)) => c.outcome_of(id, v),
                            Some(Err(e)) => super::execute::failed_outcome(e),
                            None => super::execute::failed_outcome(&Error::Cluster {
                                what: format!("return {id:#x}"),
                                message: "the task completed without it".into(),
                            }),
                        };
                        peer.send(Msg::TaskDone {
                            task_id: id,
                            outcome,
                        });
                    }
                    testing_exit_between_returns();
                    c.outcome_of(task_id, v)
                }
                Some(Err(e)) => super::execute::failed_outcome(e),
                None => return,
            };
            peer.send(Msg::TaskDone { task_id, outcome });
        };
        if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(respond))) {
            f();
        }
    }
}

/// Test hook: with `MANTA_TESTING_EXIT_BETWEEN_RETURNS=<path>`, the first process to create
/// `<path>` exits after sending a task's other returns and before its return 0 (once the
/// writer had a moment to send them), as a worker dying at that point would.
fn testing_exit_between_returns() {
    let Some(path) = std::env::var_os("MANTA_TESTING_EXIT_BETWEEN_RETURNS") else {
        return;
    };
    if std::fs::File::create_new(path).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::process::exit(101);
    }
}
