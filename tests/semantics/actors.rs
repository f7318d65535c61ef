//! Ray's actor semantics, in every mode: per-caller ordering, a failing method, handles passed
//! to tasks, restart, a failing constructor, infeasible actors, async methods.

use std::time::Duration;

use manta::{ActorHandle, Error};

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "actors::calls_from_each_caller_run_in_order",
        per_caller_order,
    ),
    Case::new(
        "actors::a_panicking_method_fails_that_call_only",
        failing_method,
    ),
    Case::new("actors::handles_pass_to_tasks", handles_to_tasks),
    Case::new("actors::restart_reruns_the_constructor", restart),
    Case::new(
        "actors::a_failed_constructor_kills_the_actor",
        failed_constructor,
    ),
    Case::new("actors::infeasible_actors_fail_fast", infeasible),
    Case::new("actors::async_methods_run_and_return", async_methods),
    Case::new(
        "actors::retry_exceptions_runs_a_failed_call_again",
        retry_exceptions,
    ),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::actor]
pub(crate) struct Pairs {
    seen: Vec<(u32, u32)>,
}

#[manta::actor]
impl Pairs {
    pub(crate) fn new() -> Self {
        Pairs { seen: Vec::new() }
    }
    pub(crate) fn push(&mut self, caller: u32, seq: u32) -> usize {
        self.seen.push((caller, seq));
        self.seen.len()
    }
    pub(crate) fn seen(&self) -> Vec<(u32, u32)> {
        self.seen.clone()
    }
    pub(crate) fn fail(&mut self) -> u32 {
        panic!("method failed")
    }
}

#[manta::remote]
fn push_from_task(log: ActorHandle<Pairs>, caller: u32) -> usize {
    log.push(caller, 0).get().unwrap()
}

#[manta::actor]
pub(crate) struct Counter {
    n: i64,
}

#[manta::actor]
impl Counter {
    pub(crate) fn new(start: i64) -> Self {
        Counter { n: start }
    }
    pub(crate) fn incr(&mut self) -> i64 {
        self.n += 1;
        self.n
    }
}

#[manta::actor]
pub(crate) struct Fragile;

#[manta::actor]
impl Fragile {
    pub(crate) fn new(ok: bool) -> Self {
        assert!(ok, "constructor refused");
        Fragile
    }
    pub(crate) fn ping(&self) -> u8 {
        1
    }
    pub(crate) async fn async_echo(&self, x: u32) -> u32 {
        x
    }
}

/// Fails its first `fails` runs (counted over the actor's life), then returns the run count.
#[manta::actor]
pub(crate) struct Flaky {
    runs: u32,
}

#[manta::actor]
impl Flaky {
    pub(crate) fn new() -> Self {
        Flaky { runs: 0 }
    }
    pub(crate) fn attempt(&mut self, fails: u32) -> u32 {
        self.runs += 1;
        assert!(self.runs > fails, "run {} failed", self.runs);
        self.runs
    }
    /// As `attempt`, failing with a typed panic.
    pub(crate) fn typed(&mut self, fails: u32) -> u32 {
        self.runs += 1;
        if self.runs <= fails {
            std::panic::panic_any(crate::errors::Meltdown { core: 1 });
        }
        self.runs
    }
    /// Its own options (Ray's `@ray.method`): retried whatever the actor's.
    #[method(retry_exceptions = true, max_task_retries = 2)]
    pub(crate) fn sturdy(&mut self, fails: u32) -> u32 {
        self.attempt(fails)
    }
    /// Never retried on a panic, whatever the actor's options.
    #[method(retry_exceptions = false)]
    pub(crate) fn once(&mut self, fails: u32) -> u32 {
        self.attempt(fails)
    }
    pub(crate) fn runs(&self) -> u32 {
        self.runs
    }
}

/// Ray's `retry_exceptions` with `max_task_retries` on an actor and on a method
/// (`@ray.method`): a call whose method panics runs again on the same actor (its state as the
/// failed run left it), before the caller's next call, only when `retry_exceptions` covers
/// the panic, up to `max_task_retries` times.
fn retry_exceptions(_: &Ctx) {
    // max_task_retries alone is for the actor's process dying: a panic is the result.
    let a = Flaky::options().max_task_retries(2).remote();
    assert!(matches!(
        a.attempt(1).get_timeout(LONG),
        Err(Error::Task(_))
    ));
    assert_eq!(a.runs().get_timeout(LONG).unwrap(), 1);
    // Too few retries, then enough; the call after it sees the retried state.
    let a = Flaky::options()
        .max_task_retries(1)
        .retry_exceptions(true)
        .remote();
    assert!(
        matches!(a.attempt(2).get_timeout(LONG), Err(Error::Task(e)) if e.message() == "run 2 failed")
    );
    let a = Flaky::options()
        .max_task_retries(2)
        .retry_exceptions(true)
        .remote();
    let r = a.attempt(2);
    let after = a.runs();
    assert_eq!(r.get_timeout(LONG).unwrap(), 3);
    assert_eq!(
        after.get_timeout(LONG).unwrap(),
        3,
        "retried before the next call"
    );
    // A typed panic of a type named is retried; an untyped one is not.
    let a = Flaky::options()
        .max_task_retries(2)
        .retry_exceptions_of::<crate::errors::Meltdown>()
        .remote();
    assert_eq!(a.typed(2).get_timeout(LONG).unwrap(), 3);
    let b = Flaky::options()
        .max_task_retries(2)
        .retry_exceptions_of::<crate::errors::Meltdown>()
        .remote();
    assert!(b.attempt(1).get_timeout(LONG).is_err());
    assert_eq!(b.runs().get_timeout(LONG).unwrap(), 1);
    // A method's own `#[method(...)]` options win over the actor's.
    let plain = Flaky::remote();
    assert_eq!(plain.sturdy(2).get_timeout(LONG).unwrap(), 3);
    let retried = Flaky::options()
        .max_task_retries(3)
        .retry_exceptions(true)
        .remote();
    assert!(retried.once(1).get_timeout(LONG).is_err());
    assert_eq!(retried.runs().get_timeout(LONG).unwrap(), 1);
}

fn per_caller_order(_: &Ctx) {
    let log = Pairs::remote();
    let callers: Vec<_> = (0..4u32)
        .map(|c| {
            let log = log.clone();
            std::thread::spawn(move || {
                let refs: Vec<_> = (0..500u32).map(|s| log.push(c, s)).collect();
                manta::get_all(&refs).unwrap();
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    let seen = log.seen().get_timeout(LONG).unwrap();
    assert_eq!(seen.len(), 2000);
    for c in 0..4 {
        let mine: Vec<u32> = seen
            .iter()
            .filter(|(who, _)| *who == c)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            mine,
            (0..500).collect::<Vec<_>>(),
            "caller {c} saw its calls reordered"
        );
    }
}

fn failing_method(_: &Ctx) {
    let log = Pairs::remote();
    assert!(
        matches!(log.fail().get_timeout(LONG), Err(Error::Task(e)) if e.message() == "method failed")
    );
    assert_eq!(
        log.push(0, 0).get_timeout(LONG).unwrap(),
        1,
        "the actor keeps its state and keeps serving"
    );
}

fn handles_to_tasks(_: &Ctx) {
    let log = Pairs::remote();
    let n = push_from_task::remote(log.clone(), 7)
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(log.seen().get_timeout(LONG).unwrap(), vec![(7, 0)]);
}

fn restart(_: &Ctx) {
    let c = Counter::options().max_restarts(1).remote(100);
    assert_eq!(c.incr().get_timeout(LONG).unwrap(), 101);
    assert!(manta::restart(&c).unwrap());
    assert_eq!(
        c.incr().get_timeout(LONG).unwrap(),
        101,
        "state starts over from the constructor"
    );
    assert!(
        manta::restart(&c).unwrap(),
        "no restarts left: this kill is final"
    );
    assert!(matches!(
        c.incr().get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
}

fn failed_constructor(_: &Ctx) {
    let f = Fragile::remote(false);
    match f.ping().get_timeout(LONG) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("constructor refused"), "{reason}")
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert!(f.ready().get_timeout(LONG).is_err());
    let ok = Fragile::remote(true);
    ok.ready().get_timeout(LONG).unwrap();
    assert_eq!(ok.ping().get_timeout(LONG).unwrap(), 1);
}

fn infeasible(_: &Ctx) {
    let c = Counter::options().num_gpus(1.0).remote(0);
    assert!(matches!(
        c.incr().get_timeout(LONG),
        Err(Error::Infeasible { .. })
    ));
}

fn async_methods(_: &Ctx) {
    let s = Fragile::remote(true);
    let refs: Vec<_> = (0..100).map(|i| s.async_echo(i)).collect();
    assert_eq!(manta::get_all(&refs).unwrap(), (0..100).collect::<Vec<_>>());
}
