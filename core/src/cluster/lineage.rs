//! Lineage reconstruction (Ray's lineage pinning in `TaskManager` and its
//! `ObjectRecoveryManager`): the owner of a task's stored result keeps the task's
//! specification while the result is referenced, and runs the task again when every copy of
//! the result is lost.
//!
//! Protocol (owner side; numbered steps referred to in the code):
//!
//! 1. **Record.** A task's `TaskDone` with a stored result (`Outcome::Stored`: the value stays
//!    in the executor's store) moves its specification — function, resources, options,
//!    retries left and argument slots — from the in-flight table into [`Lineage`]
//!    (`submit.rs`). Inline results need none: their bytes are in the owner. Actor calls are
//!    not recorded (an actor's state is not rebuilt by running one call again, as in Ray),
//!    nor tasks of several returns (not built: their lost outputs are `ObjectLost`).
//!    The specifications count against `max_lineage_bytes` (an argument's value counts, as
//!    it is kept alive with them); past it the oldest are evicted and their ids remembered.
//! 2. **Forget.** The owner's last handle on the result drops (`RemoteObject`'s drop frees
//!    it at its holder): the specification goes, and with it the arguments it kept.
//! 3. **Detect.** A pull of the result fails with `ObjectLost` (its holder died), in the
//!    owner's own `get` (`fetch_remote`), or the owner is asked for it (a borrower, or an
//!    executor reading it as an argument) while its holder is known dead (`serve_lost`). A
//!    transfer cut off by the holder's death counts as a loss (`object_manager.rs`).
//!    A borrower or an executor whose pull from the holder failed asks the owner again (a
//!    bounded number of times, with a pause: the owner may not have seen the death yet).
//! 4. **Begin.** [`Lineage::begin`] under the table's lock: an attempt under way is joined;
//!    else the specification is taken out, one retry is spent (`max_retries`, shared with
//!    worker deaths, as in Ray), and a fresh cell is registered as the attempt. Out of
//!    retries: `ObjectReconstructionFailedMaxAttemptsExceeded`; evicted:
//!    `ObjectReconstructionFailedLineageEvicted`; never recorded (an actor call's result, a
//!    value held for an argument): `ObjectLost`.
//! 5. **Arguments first.** Each argument that is a stored result this process owns, whose
//!    holder is known dead, is rebuilt first (recursively, steps 3–7).
//! 6. **Run.** The task is pushed as any retry is (`push_task`: a live worker, never one seen
//!    dead). Its `TaskDone` records the specification again (step 1) and completes the
//!    attempt's cell. A worker death during the attempt retries it while retries are left.
//! 7. **Adopt.** The original result's `RemoteObject` takes the new holder (or the inline
//!    bytes); the attempt's own `RemoteObject` is marked adopted, so its drop frees nothing.
//!    Every waiter then pulls from the new holder.
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

/// Step 4's answer.
pub(super) enum Begin {
    /// An attempt is under way: wait for its cell.
    Join(Arc<ObjectCell>),
    /// Run `spec` again, completing `attempt`.
    Run {
        spec: Spec,
        attempt: Arc<ObjectCell>,
    },
    /// It cannot be rebuilt.
    Fail(Unrecoverable),
}

/// The lineage table (no I/O: the owner's protocol above drives it).
#[derive(Debug)]
pub(super) struct Lineage(Mutex<Table>);

#[derive(Default)]
struct Table {
    specs: HashMap<u64, Spec>,
    /// Recording order, for eviction (ids forgotten since are skipped).
    order: VecDeque<u64>,
    bytes: usize,
    budget: usize,
    /// Ids whose specification was evicted, until their object is freed.
    evicted: HashSet<u64>,
    /// Attempts under way, by object id.
    running: HashMap<u64, Arc<ObjectCell>>,
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

    /// Step 1: keeps `spec`, the task of stored result `id`; evicts the oldest past the
    /// budget.
    pub(super) fn record(&self, id: u64, spec: Spec) {
        let evicted: Vec<Spec> = {
            let mut t = lock(&self.0);
            t.bytes += spec.bytes;
            if let Some(old) = t.specs.insert(id, spec) {
                t.bytes -= old.bytes;
            }
            t.evicted.remove(&id);
            t.order.push_back(id);
            let mut out = Vec::new();
            while t.bytes > t.budget {
                let Some(oldest) = t.order.pop_front() else {
                    break;
                };
                if let Some(s) = t.specs.remove(&oldest) {
                    t.bytes -= s.bytes;
                    t.evicted.insert(oldest);
                    out.push(s);
                }
            }
            // Ids forgotten since they were recorded: compact now and then.
            if t.order.len() > 2 * t.specs.len() + 1024 {
                let Table { specs, order, .. } = &mut *t;
                order.retain(|id| specs.contains_key(id));
            }
            out
        };
        // Dropped outside the lock: an argument's drop may free objects.
        drop(evicted);
    }

    /// Step 2: result `id` was freed.
    pub(super) fn forget(&self, id: u64) {
        let spec = {
            let mut t = lock(&self.0);
            t.evicted.remove(&id);
            let spec = t.specs.remove(&id);
            if let Some(s) = &spec {
                t.bytes -= s.bytes;
            }
            spec
        };
        drop(spec);
    }

    /// Step 4 for lost result `id`.
    pub(super) fn begin(&self, id: u64) -> Begin {
        let mut t = lock(&self.0);
        if let Some(cell) = t.running.get(&id) {
            return Begin::Join(cell.clone());
        }
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
        let attempt = Arc::new(ObjectCell::pending(ObjectId::from_u64(id), None));
        t.running.insert(id, attempt.clone());
        Begin::Run { spec, attempt }
    }

    /// Whether an attempt to rebuild `id` is under way (its `TaskDone` records it again,
    /// even failed, so a lost argument can be rebuilt and the task tried once more).
    pub(super) fn is_running(&self, id: u64) -> bool {
        lock(&self.0).running.contains_key(&id)
    }

    /// The attempt `attempt` for `id` is over.
    pub(super) fn finished(&self, id: u64, attempt: &Arc<ObjectCell>) {
        let mut t = lock(&self.0);
        if t.running.get(&id).is_some_and(|c| Arc::ptr_eq(c, attempt)) {
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
        Some(r) => r.clone(),
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

    /// Steps 4–7: rebuilds `obj` (a result this process owns) lost with its holder `failed`
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
                return Ok(()); // rebuilt already, by another reader
            }
            let attempt = match self.lineage.begin(id) {
                Begin::Join(cell) => cell,
                Begin::Fail(why) => return Err(why.error(id, cause)),
                Begin::Run { spec, attempt } => {
                    let Some(rt) = self.runtime() else {
                        self.lineage.finished(id, &attempt);
                        return Err(Error::ShutDown);
                    };
                    tracing::info!(object = %ObjectId::from_u64(id), task = spec.retry.function,
                        left = spec.retry.left, "rebuilding a lost task output");
                    self.recover_args(&spec.args);
                    self.push_task(&rt, attempt.clone(), spec.args, spec.retry);
                    attempt
                }
            };
            let outcome = wait_for(&attempt);
            self.lineage.finished(id, &attempt);
            match outcome {
                Ok(v) => {
                    self.adopt_rebuilt(obj, &v);
                    return Ok(());
                }
                // An argument was lost too, and not yet known lost when the task was pushed:
                // its spec was recorded again, so try once more (a retry is spent).
                Err(Error::ObjectLost { object, .. }) if object.as_u64() != id => continue,
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

    /// Step 7: `obj` takes the copy that the attempt's value `v` points to.
    fn adopt_rebuilt(&self, obj: &RemoteObject, v: &ObjectValue) {
        match held_result(&v.data) {
            Some(new) => {
                new.mark_adopted();
                obj.set_holder(new.holder());
            }
            None => {
                if let Payload::Remote(r) = &v.data {
                    obj.set_holder(r.holder());
                } else {
                    obj.set_local(v.data.clone());
                }
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
            },
            args,
        )
    }

    #[test]
    fn a_rebuild_spends_a_retry_and_is_joined_while_it_runs() {
        let l = Lineage::new(1 << 20);
        l.record(7, spec("m::f", 1, 10));
        let attempt = match l.begin(7) {
            Begin::Run { spec, attempt } => {
                assert_eq!(spec.retry.left, 0);
                l.record(7, spec); // its TaskDone records it again
                attempt
            }
            _ => panic!("expected a run"),
        };
        assert!(l.is_running(7));
        assert!(matches!(l.begin(7), Begin::Join(c) if Arc::ptr_eq(&c, &attempt)));
        l.finished(7, &attempt);
        assert!(!l.is_running(7));
        // Out of retries now.
        assert!(matches!(
            l.begin(7),
            Begin::Fail(Unrecoverable::NoAttempts("m::f", 1))
        ));
        // Never recorded: not a task output.
        assert!(matches!(l.begin(8), Begin::Fail(Unrecoverable::NotATask)));
    }

    #[test]
    fn the_oldest_specs_are_evicted_past_the_budget_and_freed_ones_are_forgotten() {
        let one = spec("m::f", 3, 1000).bytes;
        let l = Lineage::new(2 * one);
        l.record(1, spec("m::f", 3, 1000));
        l.record(2, spec("m::f", 3, 1000));
        assert_eq!(l.usage(), (2 * one, 2));
        l.record(3, spec("m::f", 3, 1000));
        assert_eq!(l.usage(), (2 * one, 2));
        assert!(matches!(l.begin(1), Begin::Fail(Unrecoverable::Evicted)));
        l.forget(1);
        assert!(matches!(l.begin(1), Begin::Fail(Unrecoverable::NotATask)));
        l.forget(2);
        assert_eq!(l.usage(), (one, 1));
        assert!(matches!(l.begin(3), Begin::Run { .. }));
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
