//! Ray's task semantics, in every mode: nested references, errors as values, retries,
//! infeasible requests, `wait` and `get` timeouts, futures, many small tasks, decode errors.

use std::time::{Duration, Instant};

use manta::{ActorHandle, Error, ObjectRef};

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new("tasks::refs_nested_in_objects_stay_alive", nested_refs),
    Case::new(
        "tasks::a_panic_is_an_error_with_name_and_message",
        panic_is_error,
    ),
    Case::new("tasks::max_retries_with_retry_exceptions", max_retries),
    Case::new("tasks::infeasible_requests_fail_fast", infeasible),
    Case::new("tasks::wait_keeps_order_and_honours_timeouts", wait_order),
    Case::new("tasks::get_timeout_then_the_object_arrives", get_timeout),
    Case::new("tasks::object_refs_are_futures", futures),
    Case::new("tasks::many_tasks_and_a_reduction_tree", reduction_tree),
    Case::new("tasks::a_type_mismatch_is_a_decode_error", type_mismatch),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn boom(msg: String) -> i64 {
    panic!("{msg}")
}

#[manta::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[manta::remote]
async fn async_double(x: i64) -> i64 {
    x * 2
}

#[manta::remote]
fn sum_refs(refs: Vec<ObjectRef<i64>>) -> i64 {
    refs.iter().map(|r| r.get().expect("nested ref")).sum()
}

/// Counts the runs of a task across processes (a task's statics live in whichever worker
/// process runs it; an actor is one place every attempt can reach).
#[manta::actor]
pub(crate) struct Runs {
    n: usize,
}

#[manta::actor]
impl Runs {
    pub(crate) fn new() -> Self {
        Runs { n: 0 }
    }
    pub(crate) fn next(&mut self) -> usize {
        self.n += 1;
        self.n
    }
}

/// Fails its first two runs.
#[manta::remote]
fn flaky(runs: ActorHandle<Runs>) -> usize {
    let n = runs.next().get().expect("counting runs");
    assert!(n > 2, "fails the first two runs");
    n
}

/// Returns `Err(Shortage)` on its first two runs.
#[manta::remote]
fn flaky_err(runs: ActorHandle<Runs>) -> Result<usize, crate::errors::Shortage> {
    let n = runs.next().get().expect("counting runs");
    if n > 2 {
        Ok(n)
    } else {
        Err(crate::errors::Shortage {
            item: "run".into(),
            missing: (3 - n) as u32,
        })
    }
}

fn nested_refs(_: &Ctx) {
    let inner: Vec<_> = (0..100).map(|i| manta::put(i as i64).unwrap()).collect();
    let outer = manta::put(inner).unwrap(); // `inner` moved in: only `outer` holds them now
    assert_eq!(sum_refs::remote(&outer).get_timeout(LONG).unwrap(), 4950);
    let back = outer.get().unwrap();
    assert_eq!(back[99].get_timeout(LONG).unwrap(), 99);
}

fn panic_is_error(_: &Ctx) {
    let r = boom::remote("it broke".to_string());
    match r.get_timeout(LONG) {
        Err(Error::Task(e)) => {
            assert!(e.is_panic());
            assert!(e.task_name().ends_with("boom"), "{}", e.task_name());
            assert_eq!(e.message(), "it broke");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    // The failure propagates to dependents, and the runtime keeps working.
    assert!(matches!(
        add::remote(&r, 1).get_timeout(LONG),
        Err(Error::Task(_))
    ));
    assert_eq!(add::remote(1, 1).get_timeout(LONG).unwrap(), 2);
}

/// Ray's `max_retries` with `retry_exceptions`: an application error runs the task again only
/// when `retry_exceptions` says so (all errors, or `Err`s of the types named), up to
/// `max_retries` times; without it, the first panic is the result.
fn max_retries(_: &Ctx) {
    let ran = |runs: &ActorHandle<Runs>| runs.next().get_timeout(LONG).unwrap() - 1;
    // No retry_exceptions: max_retries alone is for worker deaths (Ray's default).
    let runs = Runs::remote();
    let r = flaky::options().max_retries(2).remote(runs.clone());
    assert!(matches!(r.get_timeout(LONG), Err(Error::Task(_))));
    assert_eq!(
        ran(&runs),
        1,
        "a panic is not retried without retry_exceptions"
    );
    // retry_exceptions: too few retries, then enough.
    let runs = Runs::remote();
    let r = flaky::options()
        .max_retries(1)
        .retry_exceptions(true)
        .remote(runs.clone());
    assert!(r.get_timeout(LONG).is_err());
    assert_eq!(ran(&runs), 2);
    let runs = Runs::remote();
    let r = flaky::options()
        .max_retries(2)
        .retry_exceptions(true)
        .remote(runs);
    assert_eq!(r.get_timeout(LONG).unwrap(), 3);
    // An `Err` of a type named: retried (in any mode, the list travels with the task).
    let runs = Runs::remote();
    let r = flaky_err::options()
        .max_retries(2)
        .retry_exceptions_of::<crate::errors::Meltdown>()
        .retry_exceptions_of::<crate::errors::Shortage>()
        .remote(runs);
    assert_eq!(r.get_timeout(LONG).unwrap(), 3);
    // Another type named: the first `Err` is the result, and so is a panic.
    let runs = Runs::remote();
    let r = flaky_err::options()
        .max_retries(2)
        .retry_exceptions_of::<crate::errors::Meltdown>()
        .remote(runs.clone());
    match r.get_timeout(LONG) {
        Err(Error::Task(e)) => assert!(e.cause::<crate::errors::Shortage>().is_some(), "{e}"),
        other => panic!("expected the Shortage, got {other:?}"),
    }
    assert_eq!(ran(&runs), 1);
    let runs = Runs::remote();
    let r = flaky::options()
        .max_retries(2)
        .retry_exceptions_of::<crate::errors::Shortage>()
        .remote(runs.clone());
    assert!(r.get_timeout(LONG).is_err());
    assert_eq!(ran(&runs), 1, "a panic is not an Err of a type named");
}

fn infeasible(_: &Ctx) {
    let t = Instant::now();
    for r in [
        add::options().num_cpus(3.0).remote(1, 1),
        add::options().num_gpus(1.0).remote(1, 1),
        add::options().resource("missing", 1.0).remote(1, 1),
    ] {
        match r.get_timeout(LONG) {
            Err(Error::Infeasible { request, total, .. }) => {
                assert!(!request.is_empty() && total.contains("CPU"), "{total}");
            }
            other => panic!("expected Infeasible, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn wait_order(_: &Ctx) {
    let fast = sleep_ms::remote(0);
    fast.get_timeout(LONG).unwrap();
    let slow = sleep_ms::remote(400);
    let refs = vec![slow.clone(), fast.clone()];
    // num_returns = 1: the fast one is ready at once.
    let (ready, not_ready) = manta::wait(refs.clone(), 1, None).unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id(), fast.id());
    assert_eq!(not_ready[0].id(), slow.id());
    // num_returns = 2 with a short timeout: returns what is ready when time runs out.
    let t = Instant::now();
    let (ready, not_ready) = manta::wait(refs.clone(), 2, Some(Duration::from_millis(50))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!((ready.len(), not_ready.len()), (1, 1));
    // Without a timeout it waits for both, and keeps input order.
    let (ready, _) = manta::wait(refs, 2, Some(LONG)).unwrap();
    assert_eq!(
        ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![slow.id(), fast.id()]
    );
}

fn get_timeout(_: &Ctx) {
    let slow = sleep_ms::remote(300);
    match slow.get_timeout(Duration::from_millis(20)) {
        Err(Error::Timeout { object, waited }) => {
            assert_eq!(object, slow.id());
            assert_eq!(waited, Duration::from_millis(20));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(slow.get_timeout(LONG).unwrap(), 300);
}

fn futures(_: &Ctx) {
    let x = async_double::remote(21);
    let y = add::remote(&x, 0);
    let sum = manta::block_on(async { x.await.unwrap() + y.await.unwrap() });
    assert_eq!(sum, 84);
}

fn reduction_tree(_: &Ctx) {
    let mut level: Vec<ObjectRef<i64>> = (0..2000).map(|_| add::remote(0, 1)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    add::remote(&p[0], &p[1])
                } else {
                    p[0].clone()
                }
            })
            .collect();
    }
    assert_eq!(level[0].get_timeout(LONG).unwrap(), 2000);
}

fn type_mismatch(_: &Ctx) {
    let s = manta::put("text".to_string()).unwrap();
    // Re-type the reference through serde: ObjectRef<String> read as ObjectRef<Vec<u64>>.
    let bytes = serde_json::to_vec(&s).unwrap();
    let wrong: ObjectRef<Vec<u64>> = serde_json::from_slice(&bytes).unwrap();
    assert!(matches!(wrong.get_timeout(LONG), Err(Error::Decode { .. })));
}
