//! Ray's fault-tolerance semantics where they do not depend on the mode: a task whose worker
//! process dies runs again (3 times by default), an actor whose worker dies restarts up to
//! `max_restarts`, and `manta::restart` of a dead actor restarts nothing.
//!
//! The cases that kill their worker process (`std::process::abort` in a task or method) are
//! skipped embedded, where the worker is the driver's own process, and under `srun`, where a
//! rank that dies ends the whole job step.

use std::time::Duration;

use manta::Error;

use crate::harness::{Case, Ctx, Mode};

/// Why a case that aborts its worker process cannot run in a mode.
const KILLS_ITS_PROCESS: &[(Mode, &str)] = &[
    (
        Mode::Embedded,
        "a task cannot kill the embedded worker without killing the driver: it is one process",
    ),
    (
        Mode::Srun,
        "the workers are the job's ranks: one that dies ends the srun step",
    ),
];

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "faults::a_task_whose_worker_dies_runs_again_by_default",
        task_runs_again,
    )
    .skip(KILLS_ITS_PROCESS),
    Case::new(
        "faults::a_task_with_several_returns_runs_again_too",
        returns_run_again,
    )
    .skip(KILLS_ITS_PROCESS),
    Case::new(
        "faults::a_task_that_kills_every_worker_fails_after_its_retries",
        task_out_of_retries,
    )
    .skip(KILLS_ITS_PROCESS),
    Case::new(
        "faults::an_actor_whose_worker_dies_restarts_up_to_max_restarts",
        actor_restarts,
    )
    .skip(KILLS_ITS_PROCESS),
    Case::new(
        "faults::restart_of_a_dead_actor_restarts_nothing",
        restart_dead_actor,
    ),
];

const LONG: Duration = Duration::from_secs(30);

/// A marker file unique to this call (the driver and workers share the host's /tmp).
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir()
        .join(format!(
            "manta-faults-{what}-{}-{nanos}",
            std::process::id()
        ))
        .display()
        .to_string()
}

/// Kills its worker process the first time it runs (the marker file says whether it ran).
#[manta::remote]
fn dies_once(marker: String, x: u64) -> u64 {
    if std::fs::File::create_new(&marker).is_ok() {
        std::process::abort();
    }
    x * 2
}

/// [`dies_once`] with two returns.
#[manta::remote(num_returns = 2)]
fn dies_once_twice(marker: String, x: u64) -> (u64, u64) {
    if std::fs::File::create_new(&marker).is_ok() {
        std::process::abort();
    }
    (x * 2, x * 3)
}

#[manta::remote]
fn always_dies() -> u64 {
    std::process::abort()
}

#[manta::remote]
fn triple(x: u64) -> u64 {
    x * 3
}

fn task_runs_again(_: &Ctx) {
    let m = marker("once");
    let r = dies_once::remote(m.clone(), 21).get_timeout(LONG);
    let _ = std::fs::remove_file(&m);
    assert_eq!(
        r.unwrap(),
        42,
        "retried on a live worker (3 retries by default)"
    );
    assert_eq!(triple::remote(5).get_timeout(LONG).unwrap(), 15);
}

fn returns_run_again(_: &Ctx) {
    let m = marker("once-returns");
    let (a, b) = dies_once_twice::remote(m.clone(), 7);
    let r = (a.get_timeout(LONG), b.get_timeout(LONG));
    let _ = std::fs::remove_file(&m);
    assert_eq!(
        (r.0.unwrap(), r.1.unwrap()),
        (14, 21),
        "retried on a live worker as a single-return task is"
    );
}

fn task_out_of_retries(_: &Ctx) {
    match always_dies::options()
        .max_retries(1)
        .remote()
        .get_timeout(LONG)
    {
        Err(Error::Timeout { .. }) => panic!("a task whose worker died hangs"),
        Err(e) => assert!(e.to_string().contains("died"), "{e}"),
        Ok(v) => panic!("returned {v}"),
    }
    // The node serves on, with a replacement worker.
    assert_eq!(triple::remote(7).get_timeout(LONG).unwrap(), 21);
}

#[manta::actor]
pub(crate) struct Phoenix {
    n: u64,
}

#[manta::actor]
impl Phoenix {
    pub(crate) fn new(start: u64) -> Self {
        Phoenix { n: start }
    }
    pub(crate) fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
    pub(crate) fn crash(&mut self) -> u64 {
        std::process::abort()
    }
}

fn actor_restarts(_: &Ctx) {
    let a = Phoenix::options().max_restarts(1).remote(10);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 11);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 12);
    assert!(
        matches!(a.crash().get_timeout(LONG), Err(Error::ActorDied { .. })),
        "the call that killed the worker fails with ActorDied"
    );
    assert_eq!(
        a.incr().get_timeout(LONG).unwrap(),
        11,
        "restarted: the constructor ran again on its original arguments"
    );
    assert!(matches!(
        a.crash().get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
    match a.incr().get_timeout(LONG) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("max_restarts"), "{reason}")
        }
        other => panic!("no restarts left: expected ActorDied, got {other:?}"),
    }
    assert!(
        !manta::restart(&a).unwrap(),
        "a dead actor is not restarted"
    );
}

fn restart_dead_actor(_: &Ctx) {
    let a = Phoenix::options().max_restarts(3).remote(0);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 1);
    assert!(manta::kill(&a).unwrap());
    assert!(
        !manta::restart(&a).unwrap(),
        "manta::restart of a killed actor restarts nothing"
    );
    assert!(matches!(
        a.incr().get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
}
