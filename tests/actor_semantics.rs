//! Actor semantics that need a runtime of their own (embedded): named actors, kill,
//! max_concurrency on 4 CPUs, resources freed with the last handle, a long call on 1 CPU. The rest runs in every mode
//! in the semantics matrix (`tests/semantics/actors.rs`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manta::Error;

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

/// Ray: a default actor needs 1 CPU to be placed (and holds none while it runs), so a runtime
/// without CPUs cannot place one; one that asks for no CPU explicitly is placed.
#[test]
fn a_default_actor_needs_a_cpu_to_be_placed() {
    let _rt = common::start(manta::Config::default().num_cpus(0.0));
    let e = Log::remote().seen().get_timeout(Duration::from_secs(10));
    assert!(matches!(e, Err(Error::Infeasible { .. })), "{e:?}");
    let explicit = Log::options().num_cpus(0.0).remote();
    assert_eq!(
        explicit
            .push(0, 0)
            .get_timeout(Duration::from_secs(10))
            .unwrap(),
        1
    );
}

/// An actor whose call can take a while.
#[manta::actor]
struct Napper;

#[manta::actor]
impl Napper {
    fn new() -> Self {
        Napper
    }
    fn sleep(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    fn quick(&self) -> u32 {
        7
    }
}

#[manta::remote]
fn quick_task() -> u32 {
    8
}

/// As in Ray, where each actor runs on a worker of its own, an actor's calls take no CPU: on
/// a 1-CPU runtime a long call of one actor holds back neither another actor's call nor a task
/// (before the monitor counted every actor's drainers, both waited for the long call).
#[test]
fn a_long_actor_call_holds_back_no_other_actor_or_task() {
    const LONG_MS: u64 = 3_000;
    let _rt = common::start(manta::Config::default().num_cpus(1.0));
    let a = Napper::remote();
    let b = Napper::remote();
    a.ready().get().unwrap();
    b.ready().get().unwrap();
    let t = Instant::now();
    let long = a.sleep(LONG_MS);
    std::thread::sleep(Duration::from_millis(50));
    // With a timeout, `get` leaves the work to the slots (it does not run it on this thread).
    let bound = Duration::from_secs(20);
    assert_eq!(b.quick().get_timeout(bound).unwrap(), 7);
    assert_eq!(quick_task::remote().get_timeout(bound).unwrap(), 8);
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(LONG_MS / 2),
        "waited {took:?} for the other actor's call and the task: the long call held them back"
    );
    assert_eq!(long.get().unwrap(), LONG_MS);
}

static MEETING: std::sync::OnceLock<std::sync::Barrier> = std::sync::OnceLock::new();

/// An actor whose calls meet another actor's at a barrier (as collectives inside actor
/// methods do).
#[manta::actor]
struct Meeter {
    id: u32,
}

#[manta::actor]
impl Meeter {
    fn new(id: u32) -> Self {
        Meeter { id }
    }
    fn meet(&mut self, round: u32) -> u32 {
        MEETING.get().expect("the barrier").wait();
        self.id + round
    }
}

/// Two serial actors whose calls meet at a barrier, 2,000 rounds on 2 CPUs: every round's
/// calls must both run. A wake-up went missing about once in 1,000 rounds (a slot asleep
/// beside the queued call, the other blocked at the barrier: the round never ended); the
/// scheduler's monitor now wakes a slot that sleeps beside queued work on two looks in a row.
#[test]
fn serial_actors_meeting_at_a_barrier_never_stall() {
    let _rt = common::start(manta::Config::default().num_cpus(2.0));
    MEETING.get_or_init(|| std::sync::Barrier::new(2));
    let actors: Vec<_> = (0..2u32).map(Meeter::remote).collect();
    for round in 0..2_000u32 {
        let calls: Vec<_> = actors.iter().map(|m| m.meet(round)).collect();
        for (id, c) in (0u32..).zip(&calls) {
            match c.get_timeout(Duration::from_secs(20)) {
                Ok(v) => assert_eq!(v, id + round),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
}
