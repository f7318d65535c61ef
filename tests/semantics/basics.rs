//! Basics every mode must agree on: dependencies resolved before a task runs, nested tasks,
//! actor call order, objects through `put`/`get`, `wait`, errors as values.

use std::time::Duration;

use manta::ObjectRef;

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new("basics::refs_resolve_before_the_task_runs", refs_resolve),
    Case::new("basics::nested_tasks", nested_tasks),
    Case::new("basics::actor_calls_run_in_order", actor_order),
    Case::new("basics::put_get_small_and_large", put_get),
    Case::new("basics::wait_splits_ready_and_pending", wait_splits),
    Case::new("basics::a_panicking_task_is_an_error_value", panicking_task),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[manta::remote]
fn boom(msg: String) -> i64 {
    panic!("{msg}")
}

#[manta::remote]
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let a = fib::remote(n - 1);
    let b = fib::remote(n - 2);
    a.get().expect("fib(n-1)") + b.get().expect("fib(n-2)")
}

#[manta::remote]
fn sum_len(v: Vec<u64>) -> (u64, usize) {
    (v.iter().sum(), v.len())
}

#[manta::actor]
pub(crate) struct Log {
    seen: Vec<u64>,
}

#[manta::actor]
impl Log {
    pub(crate) fn new() -> Self {
        Log { seen: Vec::new() }
    }
    pub(crate) fn push(&mut self, x: u64) -> usize {
        self.seen.push(x);
        self.seen.len()
    }
    pub(crate) fn all(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

fn refs_resolve(_: &Ctx) {
    let a = add::remote(1, 2);
    let b = add::remote(&a, 10);
    let c = add::remote(b, a.clone());
    assert_eq!(c.get_timeout(LONG).unwrap(), 16);
    let p = manta::put(100i64).unwrap();
    assert_eq!(add::remote(&p, &p).get_timeout(LONG).unwrap(), 200);
}

fn nested_tasks(_: &Ctx) {
    assert_eq!(fib::remote(10).get_timeout(LONG).unwrap(), 55);
}

fn actor_order(_: &Ctx) {
    let log = Log::remote();
    let calls: Vec<ObjectRef<usize>> = (0..200u64).map(|i| log.push(i)).collect();
    assert_eq!(calls[199].get_timeout(LONG).unwrap(), 200);
    assert_eq!(
        log.all().get_timeout(LONG).unwrap(),
        (0..200).collect::<Vec<u64>>()
    );
}

fn put_get(_: &Ctx) {
    let small = manta::put(vec![7u64; 16]).unwrap();
    assert_eq!(
        sum_len::remote(&small).get_timeout(LONG).unwrap(),
        (112, 16)
    );
    let n = 1usize << 20; // 8 MiB: through the store
    let big = manta::put((0..n as u64).collect::<Vec<u64>>()).unwrap();
    let want = (n as u64 * (n as u64 - 1) / 2, n);
    assert_eq!(sum_len::remote(&big).get_timeout(LONG).unwrap(), want);
    assert_eq!(big.get_view().unwrap().len(), n);
}

fn wait_splits(_: &Ctx) {
    let fast = sleep_ms::remote(0);
    let slow = sleep_ms::remote(3_000);
    fast.get_timeout(LONG).unwrap();
    let refs = vec![slow.clone(), fast.clone()];
    let (ready, pending) = manta::wait(refs, 1, Some(Duration::from_millis(500))).unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(pending.len(), 1);
    assert_eq!(ready[0].id(), fast.id());
}

fn panicking_task(_: &Ctx) {
    let r = boom::remote("kaput".to_string());
    match r.get_timeout(LONG) {
        Err(manta::Error::Task(e)) => assert!(e.to_string().contains("kaput"), "{e}"),
        other => panic!("expected a task error, got {other:?}"),
    }
    // The failure flows into dependents as an error too.
    let dep = add::remote(&r, 1);
    assert!(dep.get_timeout(LONG).is_err());
}
