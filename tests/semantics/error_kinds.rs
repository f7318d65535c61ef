//! Error kinds a Ray user matches on, the same in every mode: a failed argument is the
//! dependent task's cause, a dead actor is `ActorDied`, a crashed worker process is
//! `WorkerCrashed`, an object lost with its holder is `ObjectLost`, one whose owner died is
//! `OwnerDied`.

use std::time::Duration;

use manta::{Error, ObjectRef};

use crate::harness::{Case, Ctx, Mode};

const CRASH_SKIP: &[(Mode, &str)] = &[
    (
        Mode::Embedded,
        "tasks run in the caller's process: a task that aborts ends it (README: errors)",
    ),
    (
        Mode::Srun,
        "an aborting worker is an srun rank: its death ends the job step",
    ),
];

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "error_kinds::a_failed_argument_is_the_cause",
        failed_argument,
    ),
    Case::new("error_kinds::a_killed_actor_is_actor_died", killed_actor),
    Case::new("error_kinds::a_crashed_worker", crashed_worker).skip(CRASH_SKIP),
    Case::new("error_kinds::an_actor_whose_process_crashed", crashed_actor).skip(CRASH_SKIP),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn fail_with(msg: String) -> Vec<u8> {
    panic!("{msg}")
}

#[manta::remote]
fn length(v: Vec<u8>) -> usize {
    v.len()
}

#[manta::remote]
fn sleepy_fail(msg: String, ms: u64) -> Vec<u8> {
    std::thread::sleep(Duration::from_millis(ms));
    panic!("{msg}")
}

#[manta::remote]
fn abort_now() -> u64 {
    std::process::abort()
}

#[manta::actor]
pub(crate) struct Fragile {
    kept: Vec<ObjectRef<Vec<u8>>>,
}

#[manta::actor]
impl Fragile {
    pub(crate) fn new() -> Self {
        Fragile { kept: Vec::new() }
    }
    pub(crate) fn ping(&self) -> u32 {
        1
    }
    /// A result above the inline limit: held by this actor's process.
    pub(crate) fn big(&self, n: usize) -> Vec<u8> {
        vec![7; n]
    }
    /// An object this actor's process owns, handed out by reference.
    pub(crate) fn owned(&mut self, n: usize) -> ObjectRef<Vec<u8>> {
        let r = manta::put(vec![9u8; n]).expect("put");
        self.kept.push(r.clone());
        r
    }
    pub(crate) fn crash(&self) -> u32 {
        std::process::abort()
    }
}

fn is_cause(e: &Error, msg: &str) -> bool {
    matches!(e, Error::Task(t) if t.is_panic() && t.message().contains(msg) && t.task_name().contains("fail"))
}

/// Ray: a task whose argument failed does not run; its result is the argument's error.
fn failed_argument(_: &Ctx) {
    // Failed before the dependent is submitted, and failing after it was.
    let early = fail_with::remote("early cause".to_string());
    assert!(early.get_timeout(LONG).is_err());
    let e = length::remote(&early).get_timeout(LONG).unwrap_err();
    assert!(is_cause(&e, "early cause"), "{e:?}");
    let late = sleepy_fail::remote("late cause".to_string(), 300);
    let e = length::remote(&late).get_timeout(LONG).unwrap_err();
    assert!(is_cause(&e, "late cause"), "{e:?}");
}

/// Ray: a call on a killed actor fails with `ActorDiedError`.
fn killed_actor(_: &Ctx) {
    let a = Fragile::remote();
    assert_eq!(a.ping().get_timeout(LONG).unwrap(), 1);
    manta::kill(&a).unwrap();
    let e = a.ping().get_timeout(LONG).unwrap_err();
    assert!(matches!(e, Error::ActorDied { .. }), "{e:?}");
}

/// Ray: a task whose worker process dies fails with `WorkerCrashedError` (no retries asked).
fn crashed_worker(_: &Ctx) {
    let e = abort_now::options()
        .max_retries(0)
        .remote()
        .get_timeout(LONG)
        .unwrap_err();
    assert!(matches!(e, Error::WorkerCrashed { .. }), "{e:?}");
}

/// Ray: calls on an actor whose process died fail with `ActorDiedError`; an object only that
/// process held is lost (`ObjectLostError`), and one it owned is gone with its owner
/// (`OwnerDiedError`).
fn crashed_actor(_: &Ctx) {
    let a = Fragile::remote();
    let big = a.big(1 << 20);
    let owned: ObjectRef<Vec<u8>> = a.owned(1 << 20).get_timeout(LONG).unwrap();
    manta::wait(vec![big.clone()], 1, Some(LONG)).unwrap();
    let e = a.crash().get_timeout(LONG).unwrap_err();
    assert!(matches!(e, Error::ActorDied { .. }), "{e:?}");
    let e = a.ping().get_timeout(LONG).unwrap_err();
    assert!(matches!(e, Error::ActorDied { .. }), "{e:?}");
    let e = big.get_timeout(LONG).unwrap_err();
    assert!(matches!(e, Error::ObjectLost { .. }), "{e:?}");
    let e = owned.get_timeout(LONG).unwrap_err();
    assert!(matches!(e, Error::OwnerDied { .. }), "{e:?}");
    // The cluster carries on: new work gets a new worker process.
    assert_eq!(length::remote(vec![1u8; 3]).get_timeout(LONG).unwrap(), 3);
}
