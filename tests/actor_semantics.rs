//! Ray's actor semantics, ported: per-caller ordering, named actors, kill and restart,
//! handles passed to tasks, max_concurrency, constructor failure and async methods.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use manta::{ActorHandle, Error};

#[manta::actor]
struct Log {
    seen: Vec<(u32, u32)>,
}

#[manta::actor]
impl Log {
    fn new() -> Self {
        Log { seen: Vec::new() }
    }
    fn push(&mut self, caller: u32, seq: u32) -> usize {
        self.seen.push((caller, seq));
        self.seen.len()
    }
    fn seen(&self) -> Vec<(u32, u32)> {
        self.seen.clone()
    }
    fn fail(&mut self) -> u32 {
        panic!("method failed")
    }
}

#[test]
fn calls_from_each_caller_run_in_submission_order() {
    let _rt = common::start_default();
    let log = Log::remote();
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
    let seen = log.seen().get().unwrap();
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

#[test]
fn a_panicking_method_fails_that_call_only() {
    let _rt = common::start_default();
    let log = Log::remote();
    assert!(matches!(log.fail().get(), Err(Error::Task(e)) if e.message() == "method failed"));
    assert_eq!(
        log.push(0, 0).get().unwrap(),
        1,
        "the actor keeps its state and keeps serving"
    );
}

#[manta::remote]
fn push_from_task(log: ActorHandle<Log>, caller: u32) -> usize {
    log.push(caller, 0).get().unwrap()
}

#[test]
fn handles_can_be_passed_to_tasks() {
    let _rt = common::start_default();
    let log = Log::remote();
    let n = push_from_task::remote(log.clone(), 7).get().unwrap();
    assert_eq!(n, 1);
    assert_eq!(log.seen().get().unwrap(), vec![(7, 0)]);
}

#[test]
fn named_actors_are_found_by_name_and_class() {
    let _rt = common::start_default();
    let a = Log::options().name("log").remote();
    a.push(1, 1).get().unwrap();
    let b = manta::get_actor::<Log>("log").unwrap();
    assert_eq!(b.seen().get().unwrap(), vec![(1, 1)]);
    assert!(matches!(
        manta::get_actor::<Log>("nope"),
        Err(Error::ActorNotFound { .. })
    ));
    assert!(matches!(
        manta::get_actor::<Counter>("log"),
        Err(Error::ActorClassMismatch { .. })
    ));
    let dup = Log::options().name("log").remote();
    assert!(matches!(
        dup.push(0, 0).get(),
        Err(Error::ActorNameTaken { .. })
    ));
    // A named actor that is not detached dies with its last handle (Ray's rule), and its
    // name is free again.
    drop((a, b));
    assert!(matches!(
        manta::get_actor::<Log>("log"),
        Err(Error::ActorNotFound { .. })
    ));
    let again = Log::options().name("log").remote();
    assert_eq!(again.push(2, 2).get().unwrap(), 1);
    // A detached one outlives its handles, until killed.
    let d = Log::options().name("kept").lifetime_detached().remote();
    d.push(3, 3).get().unwrap();
    drop(d);
    let d = manta::get_actor::<Log>("kept").unwrap();
    assert_eq!(d.seen().get().unwrap(), vec![(3, 3)]);
    assert!(manta::kill(&d).unwrap());
    assert!(matches!(
        manta::get_actor::<Log>("kept"),
        Err(Error::ActorNotFound { .. })
    ));
}

#[manta::actor]
struct Counter {
    n: i64,
}

#[manta::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }
    fn incr(&mut self) -> i64 {
        self.n += 1;
        self.n
    }
}

#[test]
fn kill_fails_queued_and_later_calls_and_frees_the_name() {
    let _rt = common::start_default();
    let c = Counter::options().name("c").remote(10);
    assert_eq!(c.incr().get().unwrap(), 11);
    assert!(manta::kill(&c).unwrap());
    assert!(matches!(c.incr().get(), Err(Error::ActorDied { .. })));
    assert!(matches!(
        manta::get_actor::<Counter>("c"),
        Err(Error::ActorNotFound { .. })
    ));
    assert!(!manta::kill(&c).unwrap(), "already dead");
}

#[test]
fn restart_reruns_the_constructor_within_max_restarts() {
    let _rt = common::start_default();
    let c = Counter::options().max_restarts(1).remote(100);
    assert_eq!(c.incr().get().unwrap(), 101);
    assert!(manta::restart(&c).unwrap());
    assert_eq!(
        c.incr().get().unwrap(),
        101,
        "state starts over from the constructor"
    );
    assert!(
        manta::restart(&c).unwrap(),
        "no restarts left: this kill is final"
    );
    assert!(matches!(c.incr().get(), Err(Error::ActorDied { .. })));
}

#[manta::actor]
struct Fragile;

#[manta::actor]
impl Fragile {
    fn new(ok: bool) -> Self {
        assert!(ok, "constructor refused");
        Fragile
    }
    fn ping(&self) -> u8 {
        1
    }
}

#[test]
fn a_failed_constructor_kills_the_actor_with_the_reason() {
    let _rt = common::start_default();
    let f = Fragile::remote(false);
    match f.ping().get() {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("constructor refused"), "{reason}")
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert!(f.ready().get().is_err());
    let ok = Fragile::remote(true);
    ok.ready().get().unwrap();
    assert_eq!(ok.ping().get().unwrap(), 1);
}

#[test]
fn infeasible_actors_fail_fast() {
    let _rt = common::start_default();
    let c = Counter::options().num_gpus(1.0).remote(0);
    assert!(matches!(c.incr().get(), Err(Error::Infeasible { .. })));
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

#[manta::actor]
struct Sleeper;

#[manta::actor]
impl Sleeper {
    fn new() -> Self {
        Sleeper
    }
    fn nap(&self) {
        let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
    async fn async_echo(&self, x: u32) -> u32 {
        x
    }
}

#[test]
fn max_concurrency_bounds_concurrent_calls() {
    let _rt = common::start(manta::Config::default().num_cpus(4.0));
    MAX_IN_FLIGHT.store(0, Ordering::SeqCst);
    let serial = Sleeper::remote();
    manta::get_all(&(0..4).map(|_| serial.nap()).collect::<Vec<_>>()).unwrap();
    assert_eq!(MAX_IN_FLIGHT.load(Ordering::SeqCst), 1);
    MAX_IN_FLIGHT.store(0, Ordering::SeqCst);
    let wide = Sleeper::options().max_concurrency(3).remote();
    manta::get_all(&(0..9).map(|_| wide.nap()).collect::<Vec<_>>()).unwrap();
    let max = MAX_IN_FLIGHT.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "max in flight {max}");
}

#[test]
fn async_methods_run_and_return() {
    let _rt = common::start_default();
    let s = Sleeper::remote();
    let refs: Vec<_> = (0..100).map(|i| s.async_echo(i)).collect();
    assert_eq!(manta::get_all(&refs).unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn an_actor_dropped_with_no_handles_frees_its_resources() {
    let _rt = common::start(manta::Config::default().num_cpus(2.0));
    let c = Counter::options().num_cpus(2.0).remote(0);
    assert_eq!(c.incr().get().unwrap(), 1);
    let cpu = || {
        manta::status()
            .unwrap()
            .resources
            .iter()
            .find(|r| r.0 == "CPU")
            .unwrap()
            .1
    };
    assert_eq!(cpu(), 0.0, "the actor holds both CPUs");
    drop(c);
    // The slot that ran the last call may still be letting go of the actor: allow it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cpu() != 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(cpu(), 2.0, "released when the last handle went away");
    // A detached actor, even without a name, keeps them with no handle left (until killed,
    // or here, the shutdown).
    let d = Counter::options()
        .num_cpus(2.0)
        .lifetime_detached()
        .remote(0);
    assert_eq!(d.incr().get().unwrap(), 1);
    drop(d);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(cpu(), 0.0, "a detached actor outlives its handles");
}
