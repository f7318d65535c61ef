//! The task manager (Ray's `TaskManager`): the work this process owns that runs elsewhere,
//! until its `TaskDone`, and the work others pushed here, until it is done.
//!
//! Three tables, each behind its own lock, none held while another is taken:
//!
//! - in flight (owner side): a task, actor creation or actor call pushed to a worker, by the
//!   id of its result, with what a retry needs (`submit.rs` pushes, `supervision.rs` pushes
//!   restarts and parked calls, `cancel.rs` cancels);
//! - returns (owner side): the other returns of tasks with several, by object id, until their
//!   own `TaskDone` (`returns.rs`);
//! - executing (executor side): work pushed here and not yet done, for listings and
//!   `CancelTask` (`execute.rs`, `returns.rs`).
//!
//! The methods take and give back records; the protocols that decide what to do with them
//! stay with their files.

use crate::sync::{Arc, Mutex, Weak};
use rustc_hash::FxHashMap as HashMap;

use super::submit::InFlight;
use crate::object::ObjectCell;
use crate::sync::lock;

/// Work pushed to this process and not yet done: its name, its owner's worker index and its
/// result.
struct Executing {
    name: Box<str>,
    owner: u64,
    result: Weak<ObjectCell>,
}

/// What a `TaskDone` finds in the in-flight table.
#[allow(clippy::large_enum_variant)] // moved out once per completion: boxing would allocate
pub(super) enum Completion {
    /// The attempt it completes, taken out of the table.
    Done(InFlight),
    /// An attempt pushed to another worker: the sender's answer is stale and ignored.
    OtherAttempt,
    /// Nothing in flight under that id (another return of a task with several, or unknown).
    Unknown,
}

/// An in-flight entry being cancelled (`cancel.rs`, step 1).
pub(super) struct Cancelling {
    /// The worker it was pushed to.
    pub(super) worker: u64,
    /// Whether it is an actor call (else a task).
    pub(super) call: bool,
    pub(super) name: &'static str,
}

/// The task manager's tables.
#[derive(Default)]
pub(super) struct TaskManager {
    in_flight: Mutex<HashMap<u64, InFlight>>,
    returns: Mutex<HashMap<u64, Arc<ObjectCell>>>,
    /// The other returns of a task with several, from `expect_returns` to its
    /// `submit_remote`, by the task's id.
    stashed: Mutex<HashMap<u64, Box<[Arc<ObjectCell>]>>>,
    executing: Mutex<HashMap<u64, Executing>>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("in_flight", &lock(&self.in_flight).len())
            .field("returns", &lock(&self.returns).len())
            .field("executing", &lock(&self.executing).len())
            .finish()
    }
}

impl TaskManager {
    // ----- in flight (owner) --------------------------------------------------------------

    /// Work pushed to a worker: in flight until its `TaskDone` (or its worker's death).
    pub(super) fn pushed(&self, id: u64, f: InFlight) {
        lock(&self.in_flight).insert(id, f);
    }

    /// Whether work `id` is in flight (pushed, not answered).
    pub(super) fn is_in_flight(&self, id: u64) -> bool {
        lock(&self.in_flight).contains_key(&id)
    }

    /// A `TaskDone` for `id` from worker `from` (only the worker the attempt was pushed to
    /// completes it: a worker declared dead, its node cut off, may still answer for an
    /// attempt since retried elsewhere).
    pub(super) fn complete(&self, id: u64, from: Option<u64>) -> Completion {
        let mut in_flight = lock(&self.in_flight);
        match in_flight.get(&id) {
            Some(f) if from != Some(f.worker) => Completion::OtherAttempt,
            Some(_) => in_flight
                .remove(&id)
                .map_or(Completion::Unknown, Completion::Done),
            None => Completion::Unknown,
        }
    }

    /// Step 1 of a cancel: finds work `id`, and stops a task's retries. `None` if it is not
    /// in flight, or is an actor's creation (not cancellable).
    pub(super) fn begin_cancel(&self, id: u64) -> Option<Cancelling> {
        let mut in_flight = lock(&self.in_flight);
        let f = in_flight.get_mut(&id)?;
        let call = f.call_of().is_some();
        if !call && f.retry.is_none() {
            return None; // an actor's creation
        }
        if !call {
            f.retry = None;
        }
        Some(Cancelling {
            worker: f.worker,
            call,
            name: f.name,
        })
    }

    /// Takes out the calls in flight to actor `actor_id`: their results.
    pub(super) fn take_calls_to(&self, actor_id: u64) -> Vec<Arc<ObjectCell>> {
        let mut in_flight = lock(&self.in_flight);
        let ids: Vec<u64> = in_flight
            .iter()
            .filter(|(_, f)| f.call_of() == Some(actor_id))
            .map(|(id, _)| *id)
            .collect();
        ids.iter()
            .filter_map(|id| in_flight.remove(id).map(|f| f.cell))
            .collect()
    }

    /// Takes out everything in flight at worker `index` (it died).
    pub(super) fn take_on_worker(&self, index: u64) -> Vec<(u64, InFlight)> {
        let mut in_flight = lock(&self.in_flight);
        let ids: Vec<u64> = in_flight
            .iter()
            .filter(|(_, f)| f.worker == index)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| in_flight.remove(&id).map(|f| (id, f)))
            .collect()
    }

    /// Takes out everything in flight (the process leaves).
    pub(super) fn take_all(&self) -> Vec<InFlight> {
        lock(&self.in_flight).drain().map(|(_, f)| f).collect()
    }

    /// What is in flight, for listings: `(id, name, worker, node slot)`.
    pub(super) fn in_flight_rows(&self) -> Vec<(u64, &'static str, u64, Option<usize>)> {
        lock(&self.in_flight)
            .iter()
            .map(|(id, f)| (*id, f.name, f.worker, f.node))
            .collect()
    }

    // ----- other returns (owner) ----------------------------------------------------------

    /// The other returns of a task with several, before it is pushed.
    pub(super) fn expect_returns(&self, extra: &[Arc<ObjectCell>]) {
        let mut returns = lock(&self.returns);
        for cell in extra {
            returns.insert(cell.id().as_u64(), cell.clone());
        }
    }

    /// Keeps the other returns `extra` of task `first` for its submission to take.
    pub(super) fn stash_returns(&self, first: u64, extra: &[Arc<ObjectCell>]) {
        lock(&self.stashed).insert(first, extra.into());
    }

    /// The other returns of task `first` stashed for its submission (none for a task of one).
    pub(super) fn take_stashed(&self, first: u64) -> Box<[Arc<ObjectCell>]> {
        let mut stashed = lock(&self.stashed);
        if stashed.is_empty() {
            return Box::new([]);
        }
        stashed.remove(&first).unwrap_or_default()
    }

    /// The cell of return `id` of a task in flight at worker `worker` (its retry record has
    /// it), if there is one: a scan, for the rare return that comes again (`returns.rs`).
    pub(super) fn extra_return(&self, id: u64, worker: u64) -> Option<Arc<ObjectCell>> {
        lock(&self.in_flight)
            .values()
            .filter(|f| f.worker == worker)
            .filter_map(|f| f.retry.as_ref())
            .find_map(|r| r.extra.iter().find(|c| c.id().as_u64() == id).cloned())
    }

    /// Return `id` arrived (or its task failed): its cell, if it was expected.
    pub(super) fn take_return(&self, id: u64) -> Option<Arc<ObjectCell>> {
        lock(&self.returns).remove(&id)
    }

    /// Returns `ids` that never arrived, once their task is done: their cells.
    pub(super) fn take_returns(&self, ids: &[u64]) -> Vec<Arc<ObjectCell>> {
        let mut returns = lock(&self.returns);
        ids.iter().filter_map(|id| returns.remove(id)).collect()
    }

    // ----- executing (executor) -----------------------------------------------------------

    /// Work `id` of worker `owner` starts here; its result is `result`.
    pub(super) fn executing(&self, id: u64, name: &str, owner: u64, result: &Arc<ObjectCell>) {
        lock(&self.executing).insert(
            id,
            Executing {
                name: name.into(),
                owner,
                result: Arc::downgrade(result),
            },
        );
    }

    /// Work `id` is done here.
    pub(super) fn executed(&self, id: u64) {
        lock(&self.executing).remove(&id);
    }

    /// The result of work `id` executing here, while it lives.
    pub(super) fn executing_result(&self, id: u64) -> Option<Arc<ObjectCell>> {
        lock(&self.executing)
            .get(&id)
            .and_then(|e| e.result.upgrade())
    }

    /// What executes here, for listings: `(id, name, owner)`.
    pub(super) fn executing_rows(&self) -> Vec<(u64, String, u64)> {
        lock(&self.executing)
            .iter()
            .map(|(id, e)| (*id, e.name.to_string(), e.owner))
            .collect()
    }
}
