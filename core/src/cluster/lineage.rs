//! Lineage reconstruction (Ray's lineage pinning in `TaskManager` and its
//! `ObjectRecoveryManager`): the owner of a task's stored result keeps the task's
//! specification while the result is referenced, and runs the task again when every copy of
//! the result is lost.
//!
//! Protocol (owner side; numbered steps referred to in the code):
//!
//! 1. **Record.** A task's `TaskDone` with a stored output (`Outcome::Stored`: the value
//!    stays in the executor's store) moves its specification — function, resources, options,
//!    retries left and argument slots — from the in-flight table into [`Lineage`]
//!    (`submit.rs`), keyed by the task's id, with the task's stored outputs: each one's id
//!    and a weak handle on its `RemoteObject`. A task of several returns (`returns.rs`) has
//!    one output per return held elsewhere (ids `task + i`; their `TaskDone`s came first), a
//!    single-return task one, of the task's own id. Inline outputs need none: their bytes
//!    are in the owner. Actor calls are not recorded (an actor's state is not rebuilt by
//!    running one call again, as in Ray). The specifications count against
//!    `max_lineage_bytes` (an argument's value counts, as it is kept alive with them); past
//!    it the oldest are evicted and their tasks remembered.
//! 2. **Forget.** The owner's last handle on an output drops (`RemoteObject`'s drop frees
//!    it at its holder): it leaves its task's outputs; with the last of them the
//!    specification goes, and with it the arguments it kept.
//! 3. **Detect.** A pull of the result fails with `ObjectLost` (its holder died), in the
//!    owner's own `get` (`fetch_remote`), or the owner is asked for it (a borrower, or an
//!    executor reading it as an argument) while its holder is known dead (`serve_lost`). A
//!    transfer cut off by the holder's death counts as a loss (`object_manager.rs`; the
//!    connection is marked closed before the transfer's reader hears of it, `peer.rs`).
//!    A borrower or an executor whose pull from the holder failed asks the owner again (a
//!    bounded number of times, with a pause: the owner may not have seen the death yet); an
//!    owner's result given as a task argument is entered in its escape table when the task
//!    is sent, so that the owner can answer that. Tested with real processes in
//!    `tests/cluster_reconstruction.rs`, the windows widened by two test hooks:
//!    `MANTA_TESTING_BULK_PAUSE` (`peer.rs`) and `MANTA_TESTING_DEATH_NOTICE_DELAY_MS`
//!    (`submit.rs`).
//! 4. **Begin.** [`Lineage::begin`] under the table's lock finds the output's task: an
//!    attempt under way is joined; else the specification is taken out, one retry is spent
//!    (`max_retries`, shared with worker deaths, as in Ray), and fresh cells, one per return
//!    of the task, are registered as the attempt (with the holder whose loss started it). Out of
//!    retries: `ObjectReconstructionFailedMaxAttemptsExceeded`; evicted:
//!    `ObjectReconstructionFailedLineageEvicted`; never recorded (an actor call's result, a
//!    value held for an argument): `ObjectLost`.
//! 5. **Arguments first.** Each argument that is a stored result this process owns, whose
//!    holder is known dead, is rebuilt first (recursively, steps 3–7).
//! 6. **Run.** The task is pushed as any retry is (`push_task`: a live worker, never one seen
//!    dead), the cells of its other returns expected as a first run's are. Its `TaskDone`
//!    records the specification again (step 1, keeping the original outputs still
//!    referenced, not the attempt's) and completes the attempt's first cell. A worker death
//!    during the attempt retries it while retries are left.
//! 7. **Adopt**, in that `TaskDone` before the attempt's first cell completes
//!    ([`Lineage::record`] hands back the original outputs still referenced): each one whose
//!    holder is the lost one (or known dead) takes the attempt's new holder (or its inline
//!    bytes), and the attempt's `RemoteObject` for it is marked adopted, so its drop frees
//!    nothing. Every other output of the attempt (nobody references it any more, or its
//!    original copy is still alive) is marked spare: its drop frees the new copy at its
//!    holder and leaves the lineage alone. The waiters wake after that, find their output
//!    adopted, and pull from the new holder.
//!
//! Why it terminates: every attempt spends one retry of a finite count, and every wait is
//! bounded (the attempt's cell completes when its task is done or has failed for good, and
//! a waiter gives up after `RECOVERY_WAIT`).

use crate::sync::{Arc, Mutex};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::object_manager::{RemoteKind, RemoteObject};
use super::submit::Retry;
use super::worker::Cluster;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectValue, Payload, Waiter};
use crate::sync::Weak;
use crate::sync::lock;
use crate::task::ArgSlot;

/// The longest a lost object's reader waits for its task to run again.
const RECOVERY_WAIT: Duration = Duration::from_secs(3600);

/// How often a reader that is not the owner asks the owner again for an object whose holder
/// died, and the first pause (doubled each time): the owner may not have seen the death yet.
pub(super) const ASK_OWNER_AGAIN: u32 = 4;
pub(super) const ASK_OWNER_PAUSE: Duration = Duration::from_millis(100);

/// What a specification costs beside its arguments' bytes (ids, options, bookkeeping).
const SPEC_OVERHEAD: usize = 256;

/// A task's specification, kept to run it again.
pub(super) struct Spec {
    pub(super) retry: Retry,
    pub(super) args: Box<[ArgSlot]>,
    bytes: usize,
}

impl Spec {
    pub(super) fn new(retry: Retry, args: Box<[ArgSlot]>) -> Spec {
        let bytes = SPEC_OVERHEAD
            + retry.function.len()
            + args
                .iter()
                .map(|a| match a {
                    ArgSlot::Value(v) => v.len(),
                    ArgSlot::Ref(cell) => match cell.get() {
                        Some(Ok(v)) => v.len(),
                        _ => 0,
                    },
                })
                .sum::<usize>();
        Spec { retry, args, bytes }
    }
}

/// Why a lost object cannot be rebuilt (step 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unrecoverable {
    /// Its task has no retries left: its name and how many it had.
    NoAttempts(&'static str, u32),
    /// Its specification was evicted (`max_lineage_bytes`).
    Evicted,
    /// It is not a recorded task output.
    NotATask,
}

impl Unrecoverable {
    /// The error a reader of lost object `id` gets; `cause` says how it was lost.
    pub(super) fn error(&self, id: u64, cause: &str) -> Error {
        let object = ObjectId::from_u64(id);
        match self {
            Unrecoverable::NoAttempts(task, had) => {
                Error::ObjectReconstructionFailedMaxAttemptsExceeded {
                    object,
                    reason: format!(
                        "task {task} has no retries left ({had} allowed, max_retries); \
                         last loss: {cause}"
                    ),
                }
            }
            Unrecoverable::Evicted => Error::ObjectReconstructionFailedLineageEvicted {
                object,
                reason: format!("{cause}; its task was dropped to stay under max_lineage_bytes"),
            },
            Unrecoverable::NotATask => Error::ObjectLost {
                object,
                reason: cause.to_owned(),
            },
        }
    }
}

/// A task's stored outputs its owner still references: each one's id and its original
/// `RemoteObject` (step 1).
pub(super) type Outputs = Vec<(u64, Weak<RemoteObject>)>;

/// Step 4's answer.
pub(super) enum Begin {
    /// An attempt to run task `.0` is under way: wait for its first cell.
    Join(u64, Arc<ObjectCell>),
    /// Run task `task`'s `spec` again, completing `cells` (one per return, in order).
    Run {
        task: u64,
        spec: Spec,
        cells: Box<[Arc<ObjectCell>]>,
    },
    /// It cannot be rebuilt.
    Fail(Unrecoverable),
}

/// Step 7's input: a rebuild's `TaskDone` arrived. The worker whose loss started it, and the
/// original outputs still referenced.
pub(super) struct Rebuilt {
    pub(super) failed: u64,
    pub(super) originals: Vec<Arc<RemoteObject>>,
}

/// An attempt under way: its first cell, and the worker whose loss started it.
struct Attempt {
    first: Arc<ObjectCell>,
    failed: u64,
}

/// The lineage table (no I/O: the owner's protocol above drives it).
#[derive(Debug)]
pub(super) struct Lineage(Mutex<Table>);

#[derive(Default)]
struct Table {
    /// Specifications, by task id.
    specs: HashMap<u64, Spec>,
    /// The outputs each task's owner still references (kept after an eviction too, so the
    /// last one's drop forgets the task).
    outputs: HashMap<u64, Outputs>,
    /// The task of each output whose id is not its task's (another return of a task with
    /// several).
    task_of: HashMap<u64, u64>,
    /// Recording order, for eviction (tasks forgotten since are skipped).
    order: VecDeque<u64>,
    bytes: usize,
    budget: usize,
    /// Tasks whose specification was evicted, until their last output is freed.
    evicted: HashSet<u64>,
    /// Attempts under way, by task id.
    running: HashMap<u64, Attempt>,
}

impl Table {
    /// The task whose output `id` is.
    fn task(&self, id: u64) -> u64 {
        self.task_of.get(&id).copied().unwrap_or(id)
    }

    /// Keeps task `id`'s specification.
    fn record(&mut self, id: u64, spec: Spec) {
        self.bytes += spec.bytes;
        if let Some(old) = self.specs.insert(id, spec) {
            self.bytes -= old.bytes;
        }
        self.evicted.remove(&id);
        self.order.push_back(id);
    }

    /// Evicts the oldest specifications past the budget: they are handed back, to be dropped
    /// outside the lock.
    fn evict(&mut self) -> Vec<Spec> {
        let mut out = Vec::new();
        while self.bytes > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(s) = self.specs.remove(&oldest) {
                self.bytes -= s.bytes;
                self.evicted.insert(oldest);
                out.push(s);
            }
        }
        // Tasks forgotten since they were recorded: compact now and then.
        if self.order.len() > 2 * self.specs.len() + 1024 {
            let Table { specs, order, .. } = self;
            order.retain(|id| specs.contains_key(id));
        }
        out
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("specs", &self.specs.len())
            .field("bytes", &self.bytes)
            .field("evicted", &self.evicted.len())
            .field("running", &self.running.len())
            .finish()
    }
}

impl Lineage {
    /// A table that keeps at most `budget` bytes of specifications.
    pub(super) fn new(budget: usize) -> Lineage {
        Lineage(Mutex::new(Table {
            budget,
            ..Table::default()
        }))
    }

    /// Step 1: keeps `spec`, the specification of task `id`, whose stored outputs are
    /// `outputs`; evicts the oldest past the budget. For a rebuild's `TaskDone` (an attempt
    /// runs), the original outputs stay, and those still referenced come back for step 7.
    pub(super) fn record(&self, id: u64, spec: Spec, outputs: Outputs) -> Option<Rebuilt> {
        let (evicted, rebuilt) = {
            let mut t = lock(&self.0);
            let rebuilt = match t.running.get(&id) {
                Some(a) => {
                    let failed = a.failed;
                    let originals = t
                        .outputs
                        .get(&id)
                        .map(|o| o.iter().filter_map(|(_, w)| w.upgrade()).collect())
                        .unwrap_or_default();
                    Some(Rebuilt { failed, originals })
                }
                None => {
                    for (output, _) in &outputs {
                        if *output != id {
                            t.task_of.insert(*output, id);
                        }
                    }
                    t.outputs.insert(id, outputs);
                    None
                }
            };
            if !t.outputs.contains_key(&id) {
                // Every output was freed while the attempt ran: nothing to keep it for.
                (vec![spec], rebuilt)
            } else {
                t.record(id, spec);
                (t.evict(), rebuilt)
            }
        };
        // Dropped outside the lock: an argument's drop may free objects.
        drop(evicted);
        rebuilt
    }

    /// Step 2: output `id` was freed.
    pub(super) fn forget(&self, id: u64) {
        let spec = {
            let mut t = lock(&self.0);
            let task = t.task_of.remove(&id).unwrap_or(id);
            if let Some(outputs) = t.outputs.get_mut(&task) {
                outputs.retain(|(output, _)| *output != id);
                if !outputs.is_empty() {
                    return;
                }
                t.outputs.remove(&task);
            }
            t.evicted.remove(&task);
            let spec = t.specs.remove(&task);
            if let Some(s) = &spec {
                t.bytes -= s.bytes;
            }
            spec
        };
        drop(spec);
    }

    /// Step 4 for output `id`, lost with worker `failed`.
    pub(super) fn begin(&self, id: u64, failed: u64) -> Begin {
        let mut t = lock(&self.0);
        let task = t.task(id);
        match t.running.get(&task) {
            // Its TaskDone came (the output adopted, or not, then): a new loss.
            Some(a) if a.first.get().is_some() => {
                t.running.remove(&task);
            }
            Some(a) => return Begin::Join(task, a.first.clone()),
            None => {}
        }
        let id = task;
        match t.specs.get(&id) {
            Some(s) if s.retry.left == 0 => {
                return Begin::Fail(Unrecoverable::NoAttempts(s.retry.function, s.retry.system));
            }
            Some(_) => {}
            None if t.evicted.contains(&id) => return Begin::Fail(Unrecoverable::Evicted),
            None => return Begin::Fail(Unrecoverable::NotATask),
        }
        let Some(mut spec) = t.specs.remove(&id) else {
            return Begin::Fail(Unrecoverable::NotATask);
        };
        t.bytes -= spec.bytes;
        spec.retry.left -= 1;
        let returns = crate::task::function_by_name(spec.retry.function)
            .map_or(1, |f| f.num_returns()) as u64;
        let cells: Box<[Arc<ObjectCell>]> = (0..returns)
            .map(|i| Arc::new(ObjectCell::pending(ObjectId::from_u64(id + i), None)))
            .collect();
        let first = cells[0].clone();
        t.running.insert(id, Attempt { first, failed });
        Begin::Run {
            task: id,
            spec,
            cells,
        }
    }

    /// Whether an attempt to rebuild `id` is under way (its `TaskDone` records it again,
    /// even failed, so a lost argument can be rebuilt and the task tried once more).
    pub(super) fn is_running(&self, id: u64) -> bool {
        lock(&self.0).running.contains_key(&id)
    }

    /// The attempt whose first cell is `first` for task `id` is over.
    pub(super) fn finished(&self, id: u64, first: &Arc<ObjectCell>) {
        let mut t = lock(&self.0);
        if t.running
            .get(&id)
            .is_some_and(|a| Arc::ptr_eq(&a.first, first))
        {
            t.running.remove(&id);
        }
    }

    /// Bytes of specifications kept, and how many.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let t = lock(&self.0);
        (t.bytes, t.specs.len())
    }
}

/// Waits (bounded) for `cell` to complete; its value.
fn wait_for(cell: &Arc<ObjectCell>) -> Result<ObjectValue, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), Error>>();
    if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(move || {
        let _ = tx.send(Ok(()));
    }))) {
        f();
    }
    super::wait_reply(rx, RECOVERY_WAIT, "rebuilding a lost object")?;
    match cell.get() {
        Some(r) => r.cloned().map_err(Error::clone),
        None => Err(Error::ShutDown),
    }
}

/// The cluster's `RemoteObject` behind a payload, if it is one this process owns as a held
/// result (so it may have lineage here).
pub(super) fn held_result(p: &Payload) -> Option<Arc<RemoteObject>> {
    let Payload::Remote(r) = p else { return None };
    let any: Arc<dyn std::any::Any + Send + Sync> = r.clone();
    any.downcast::<RemoteObject>()
        .ok()
        .filter(|o| o.kind == RemoteKind::Held)
}

impl Cluster {
    /// Reads a remote object's bytes, rebuilding a lost result this process owns (step 3),
    /// or asking the owner again when a copy it pointed to is lost.
    pub(super) fn fetch_remote(&self, obj: &RemoteObject) -> Result<Payload, Error> {
        let mut asked = 0;
        loop {
            if let Some(copy) = obj.local_copy() {
                return Ok(copy);
            }
            let holder = obj.holder();
            match self.pull_blocking(holder, obj.id, obj.len) {
                Err(Error::ObjectLost { reason, .. }) if obj.kind == RemoteKind::Held => {
                    self.recover(obj, holder, &reason)?;
                }
                Err(e @ Error::ObjectLost { .. })
                    if super::owner_of(obj.id) != self.index
                        && !self.placement.is_dead(super::owner_of(obj.id)) =>
                {
                    if asked >= ASK_OWNER_AGAIN {
                        return Err(e);
                    }
                    std::thread::sleep(ASK_OWNER_PAUSE * (1 << asked));
                    asked += 1;
                }
                other => return other,
            }
        }
    }

    /// Steps 4–7: rebuilds `obj` (an output this process owns) lost with its holder `failed`
    /// (`cause` says how). Returns once its new copy is known (or it failed for good).
    pub(super) fn recover(
        &self,
        obj: &RemoteObject,
        failed: u64,
        cause: &str,
    ) -> Result<(), Error> {
        let id = obj.id;
        loop {
            if obj.holder() != failed || obj.local_copy().is_some() {
                return Ok(()); // adopted a rebuilt copy (step 7)
            }
            let (task, first) = match self.lineage.begin(id, failed) {
                Begin::Join(task, first) => (task, first),
                Begin::Fail(why) => return Err(why.error(id, cause)),
                Begin::Run { task, spec, cells } => {
                    let first = cells[0].clone();
                    let Some(rt) = self.runtime() else {
                        self.lineage.finished(task, &first);
                        return Err(Error::ShutDown);
                    };
                    tracing::info!(object = %ObjectId::from_u64(id), task = spec.retry.function,
                        left = spec.retry.left, "rebuilding a lost task output");
                    self.recover_args(&spec.args);
                    let mut retry = spec.retry;
                    if cells.len() > 1 {
                        // Before the push, as for a first run (`returns.rs`, step 1).
                        self.expect_returns(&first, &cells[1..]);
                        retry.extra = cells[1..].into();
                    }
                    self.push_task(&rt, first.clone(), spec.args, retry);
                    (task, first)
                }
            };
            let outcome = wait_for(&first);
            self.lineage.finished(task, &first);
            match outcome {
                // Adopted in its TaskDone (step 7), unless its copy was not the lost one:
                // checked at the top.
                Ok(_) => {
                    if obj.holder() == failed && obj.local_copy().is_none() {
                        tracing::debug!(object = %ObjectId::from_u64(id),
                            "a rebuild did not replace this output; trying again");
                    }
                }
                // An argument was lost too, and not yet known lost when the task was pushed:
                // its spec was recorded again, so try once more (a retry is spent).
                Err(Error::ObjectLost { object, .. })
                    if object.as_u64() != id && object.as_u64() != task => {}
                Err(Error::WorkerCrashed { task, reason }) => {
                    return Err(Error::ObjectReconstructionFailedMaxAttemptsExceeded {
                        object: ObjectId::from_u64(id),
                        reason: format!("rebuilding it, task {task} ran out of retries: {reason}"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Step 7, in the `TaskDone` of a rebuild of task `task`: each original output in
    /// `rebuilt` lost with the attempt's failed holder (or another dead one) takes the copy
    /// that the attempt's value for it points to; the attempt's other copies are spare.
    /// `first` is the attempt's first value, `extra` the cells of its other returns (output
    /// `i`'s id is the task's `+ i`).
    pub(super) fn adopt_rebuilt(
        &self,
        task: u64,
        rebuilt: Rebuilt,
        first: &Result<ObjectValue, Error>,
        extra: &[Arc<ObjectCell>],
    ) {
        let values = std::iter::once(Some(first.as_ref())).chain(extra.iter().map(|c| c.get()));
        for (i, value) in values.enumerate() {
            let Some(Ok(v)) = value else { continue };
            let id = task + i as u64;
            let new = held_result(&v.data);
            let original = rebuilt.originals.iter().find(|o| {
                o.id == id
                    && o.local_copy().is_none()
                    && (o.holder() == rebuilt.failed || self.placement.is_dead(o.holder()))
            });
            match (original, new) {
                (Some(o), Some(new)) => {
                    new.mark_adopted();
                    o.set_holder(new.holder());
                }
                (Some(o), None) => match &v.data {
                    Payload::Remote(r) => o.set_holder(r.holder()),
                    data => o.set_local(data.clone()),
                },
                (None, Some(new)) => new.mark_spare(),
                (None, None) => {}
            }
        }
    }

    /// Step 5: rebuilds the arguments of a task about to run again that are results this
    /// process owns whose holder is known dead (their errors are left to the task, which
    /// fails with them).
    fn recover_args(&self, args: &[ArgSlot]) {
        for arg in args {
            let value = match arg {
                ArgSlot::Value(v) => Some(v.clone()),
                ArgSlot::Ref(cell) => match cell.get() {
                    Some(Ok(v)) => Some(v.clone()),
                    _ => None,
                },
            };
            let Some(obj) = value.and_then(|v| held_result(&v.data)) else {
                continue;
            };
            let holder = obj.holder();
            if obj.local_copy().is_none() && self.placement.is_dead(holder) {
                let _ = self.recover(&obj, holder, "its holder died");
            }
        }
    }

    /// Step 3 at the owner: another process asks for `obj`, a result this process owns whose
    /// holder is known dead. Rebuilds it off the I/O thread, then `answer` runs (with the
    /// error, if it cannot be rebuilt).
    pub(super) fn serve_lost(
        &self,
        obj: Arc<RemoteObject>,
        answer: impl FnOnce(&Cluster, Result<(), Error>) + Send + 'static,
    ) {
        let me = self.me.get().cloned().unwrap_or_default();
        std::thread::spawn(move || {
            let Some(c) = me.upgrade() else { return };
            let holder = obj.holder();
            let cause = format!("worker process {holder} holding it died");
            let r = c.recover(&obj, holder, &cause);
            answer(&c, r);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceRequest;

    fn spec(function: &'static str, left: u32, arg_bytes: usize) -> Spec {
        let args: Box<[ArgSlot]> = if arg_bytes == 0 {
            Box::new([])
        } else {
            Box::new([ArgSlot::Value(ObjectValue::inline(bytes::Bytes::from(
                vec![0u8; arg_bytes],
            )))])
        };
        Spec::new(
            Retry {
                function,
                request: ResourceRequest::task_default(),
                name: None,
                max_retries: 0,
                retry_on: None,
                left,
                system: left,
                extra: Box::new([]),
            },
            args,
        )
    }

    /// Outputs `ids` (their `RemoteObject`s are not needed here).
    fn outs(ids: &[u64]) -> Outputs {
        ids.iter().map(|id| (*id, Weak::new())).collect()
    }

    #[test]
    fn a_rebuild_spends_a_retry_and_is_joined_while_it_runs() {
        let l = Lineage::new(1 << 20);
        assert!(l.record(7, spec("m::f", 1, 10), outs(&[7])).is_none());
        let first = match l.begin(7, 3) {
            Begin::Run { task, spec, cells } => {
                assert_eq!((task, spec.retry.left, cells.len()), (7, 0, 1));
                // Its TaskDone records it again, and hands back what to adopt.
                let rebuilt = l.record(7, spec, outs(&[7])).expect("a rebuild");
                assert_eq!(rebuilt.failed, 3);
                cells[0].clone()
            }
            _ => panic!("expected a run"),
        };
        assert!(l.is_running(7));
        assert!(matches!(l.begin(7, 3), Begin::Join(7, c) if Arc::ptr_eq(&c, &first)));
        l.finished(7, &first);
        assert!(!l.is_running(7));
        // Out of retries now.
        assert!(matches!(
            l.begin(7, 3),
            Begin::Fail(Unrecoverable::NoAttempts("m::f", 1))
        ));
        // Never recorded: not a task output.
        assert!(matches!(
            l.begin(8, 3),
            Begin::Fail(Unrecoverable::NotATask)
        ));
    }

    #[test]
    fn a_task_of_several_outputs_is_kept_until_its_last_output_goes() {
        let one = spec("m::f", 2, 0).bytes;
        let l = Lineage::new(1 << 20);
        // Task 10's outputs 10 and 12 are stored (11 came back inline).
        l.record(10, spec("m::f", 2, 0), outs(&[10, 12]));
        l.forget(10);
        assert_eq!(l.usage(), (one, 1), "kept for output 12");
        // Output 12's loss runs task 10 again, once.
        let first = match l.begin(12, 5) {
            Begin::Run {
                task: 10,
                cells,
                spec,
            } => {
                assert_eq!(cells[0].id().as_u64(), 10);
                // The attempt's own outputs do not replace the originals still referenced.
                assert!(l.record(10, spec, outs(&[10, 11, 12])).is_some());
                cells[0].clone()
            }
            _ => panic!("expected a run of task 10"),
        };
        assert!(matches!(l.begin(12, 5), Begin::Join(10, c) if Arc::ptr_eq(&c, &first)));
        l.finished(10, &first);
        assert_eq!(l.usage(), (one, 1));
        l.forget(11); // not an output kept here: changes nothing
        assert_eq!(l.usage(), (one, 1));
        l.forget(12);
        assert_eq!(l.usage(), (0, 0), "freed with its last output");
        assert!(matches!(
            l.begin(12, 5),
            Begin::Fail(Unrecoverable::NotATask)
        ));
    }

    #[test]
    fn the_oldest_specs_are_evicted_past_the_budget_and_freed_ones_are_forgotten() {
        let one = spec("m::f", 3, 1000).bytes;
        let l = Lineage::new(2 * one);
        l.record(1, spec("m::f", 3, 1000), outs(&[1]));
        l.record(2, spec("m::f", 3, 1000), outs(&[2]));
        assert_eq!(l.usage(), (2 * one, 2));
        l.record(3, spec("m::f", 3, 1000), outs(&[3, 4]));
        assert_eq!(l.usage(), (2 * one, 2));
        assert!(matches!(l.begin(1, 9), Begin::Fail(Unrecoverable::Evicted)));
        l.forget(1);
        assert!(matches!(
            l.begin(1, 9),
            Begin::Fail(Unrecoverable::NotATask)
        ));
        l.forget(2);
        assert_eq!(l.usage(), (one, 1));
        assert!(matches!(l.begin(4, 9), Begin::Run { task: 3, .. }));
        assert_eq!(l.usage(), (0, 0));
    }

    #[test]
    fn errors_name_their_kind() {
        let e = Unrecoverable::NoAttempts("m::f", 0).error(5, "holder died");
        assert!(matches!(
            e,
            Error::ObjectReconstructionFailedMaxAttemptsExceeded { .. }
        ));
        assert!(matches!(
            Unrecoverable::Evicted.error(5, "x"),
            Error::ObjectReconstructionFailedLineageEvicted { .. }
        ));
        assert!(matches!(
            Unrecoverable::NotATask.error(5, "x"),
            Error::ObjectLost { .. }
        ));
    }
}
