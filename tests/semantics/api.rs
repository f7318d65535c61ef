//! The API a Ray user reaches for beyond the basics: tasks with several returns
//! (`num_returns`), named actors' lifetimes (non-detached and detached), namespaces, and
//! `exit_actor` from inside an actor.

use std::time::{Duration, Instant};

use manta::ObjectRef;

use crate::harness::{Case, Ctx, Mode};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "api::num_returns_are_separate_objects",
        num_returns_separate,
    ),
    Case::new(
        "api::num_returns_large_through_the_store",
        num_returns_large,
    ),
    Case::new(
        "api::num_returns_failure_fails_every_return",
        num_returns_failure,
    ),
    Case::new(
        "api::named_actor_dies_with_its_last_handle",
        named_dies_with_handles,
    ),
    Case::new(
        "api::detached_actor_outlives_its_handles",
        detached_outlives_handles,
    ),
    Case::new(
        "api::get_actor_handles_keep_a_named_actor",
        looked_up_handles_keep,
    ),
    Case::new("api::namespaces_keep_names_apart", namespaces),
    Case::new("api::exit_actor_ends_the_actor", exit_actor),
];

const LONG: Duration = Duration::from_secs(30);

/// `(n, n * 10, "n")`: three returns of three types.
#[manta::remote(num_returns = 3)]
fn three(n: u64) -> (u64, u64, String) {
    (n, n * 10, n.to_string())
}

#[manta::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// A small return and a large one (8 MiB: above the inline threshold, so through the store).
#[manta::remote(num_returns = 2)]
fn small_and_large(n: usize) -> (usize, Vec<u64>) {
    (n, (0..n as u64).collect())
}

#[manta::remote]
fn sum(v: Vec<u64>) -> u64 {
    v.iter().sum()
}

#[manta::remote(num_returns = 2)]
fn two_or_panic(fail: bool) -> (u64, u64) {
    if fail {
        panic!("no returns today");
    }
    (1, 2)
}

/// Calls a function with several returns from inside a task (nested submission).
#[manta::remote]
fn nested_three(n: u64) -> u64 {
    let (a, b, _) = three::remote(n);
    a.get().expect("first return") + b.get().expect("second return")
}

fn num_returns_separate(_: &Ctx) {
    let (a, b, c) = three::remote(4);
    assert_ne!(a.id(), b.id());
    assert_ne!(b.id(), c.id());
    // Each is usable on its own, in any order, as an argument or by `get`.
    assert_eq!(c.get_timeout(LONG).unwrap(), "4");
    let later = add::remote(&b, 1);
    drop(b);
    assert_eq!(later.get_timeout(LONG).unwrap(), 41);
    drop(c);
    assert_eq!(a.get_timeout(LONG).unwrap(), 4);
    // Options and nesting.
    let (x, _, _) = three::options().name("three-opts").remote(7);
    assert_eq!(x.get_timeout(LONG).unwrap(), 7);
    assert_eq!(nested_three::remote(5).get_timeout(LONG).unwrap(), 55);
    // An argument given as the return of another such task.
    let (m, _, _) = three::remote(2);
    let (_, n10, _) = three::remote(&m);
    assert_eq!(n10.get_timeout(LONG).unwrap(), 20);
}

fn store_objects() -> usize {
    manta::status()
        .ok()
        .and_then(|s| s.object_store)
        .map_or(0, |s| s.objects)
}

fn num_returns_large(ctx: &Ctx) {
    let n = 1usize << 20;
    let (len, big) = small_and_large::remote(n);
    assert_eq!(len.get_timeout(LONG).unwrap(), n);
    let want = n as u64 * (n as u64 - 1) / 2;
    // Consumed by a task first (wherever it runs), then read by the caller.
    assert_eq!(sum::remote(&big).get_timeout(LONG).unwrap(), want);
    assert_eq!(big.get_view().unwrap().len(), n);
    // The small return is freed alone; the large one stays readable.
    drop(len);
    assert_eq!(big.get_timeout(LONG).unwrap().len(), n);
    // The large one is freed alone, with the small one still held (embedded, where the
    // caller's store holds it; in a cluster the executor's does).
    if ctx.mode == Mode::Embedded {
        let (len, big) = small_and_large::remote(n);
        assert_eq!(len.get_timeout(LONG).unwrap(), n);
        big.get_timeout(LONG).unwrap();
        let with_big = store_objects();
        drop(big);
        // The slot that ran the task may still be letting go of it.
        assert!(
            eventually(LONG, || store_objects() == with_big - 1),
            "the large return is freed alone"
        );
        assert_eq!(len.get_timeout(LONG).unwrap(), n);
    }
    // Many at once, each freed as it goes.
    let pairs: Vec<(ObjectRef<usize>, ObjectRef<Vec<u64>>)> =
        (0..4).map(|_| small_and_large::remote(n / 4)).collect();
    for (l, v) in pairs {
        drop(v);
        assert_eq!(l.get_timeout(LONG).unwrap(), n / 4);
    }
}

fn num_returns_failure(_: &Ctx) {
    let (a, b) = two_or_panic::remote(true);
    for r in [&b, &a] {
        match r.get_timeout(LONG) {
            Err(manta::Error::Task(e)) => assert!(e.to_string().contains("no returns"), "{e}"),
            other => panic!("expected the task's error, got {other:?}"),
        }
    }
    let (a, b) = two_or_panic::remote(false);
    assert_eq!(
        (a.get_timeout(LONG).unwrap(), b.get_timeout(LONG).unwrap()),
        (1, 2)
    );
    // A failed return flows into its dependents as an error.
    let (a, _) = two_or_panic::remote(true);
    assert!(add::remote(&a, 1).get_timeout(LONG).is_err());
}

#[manta::actor]
pub(crate) struct Cell {
    n: u64,
}

#[manta::actor]
impl Cell {
    pub(crate) fn new(n: u64) -> Self {
        Cell { n }
    }
    pub(crate) fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
    pub(crate) fn quit(&mut self) -> u64 {
        self.n = 1_000;
        manta::exit_actor()
    }
}

/// Holds a handle it looked up by name (in a cluster: in a worker process).
#[manta::actor]
pub(crate) struct Holder {
    held: Option<manta::ActorHandle<Cell>>,
}

#[manta::actor]
impl Holder {
    pub(crate) fn new() -> Self {
        Holder { held: None }
    }
    pub(crate) fn hold(&mut self, name: String) -> u64 {
        let c = manta::get_actor::<Cell>(&name).expect("found by the holder");
        let n = c.incr().get().expect("called by the holder");
        self.held = Some(c);
        n
    }
    pub(crate) fn poke(&self) -> u64 {
        let c = self.held.as_ref().expect("holding");
        c.incr().get().expect("poked by the holder")
    }
    pub(crate) fn release(&mut self) {
        self.held = None;
    }
}

/// Looks an actor up from inside a task (in a cluster: a worker process).
#[manta::remote]
fn incr_by_name(name: String, namespace: String) -> u64 {
    let c = manta::get_actor_in::<Cell>(&name, &namespace).expect("found from a task");
    c.incr().get().expect("called from a task")
}

#[manta::remote]
fn exit_outside_an_actor() -> u64 {
    manta::exit_actor()
}

fn not_found(name: &str) -> bool {
    matches!(
        manta::get_actor::<Cell>(name),
        Err(manta::Error::ActorNotFound { .. })
    )
}

fn named_dies_with_handles(_: &Ctx) {
    let name = "api-named-last-handle";
    let a = Cell::options().name(name).remote(0);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 1);
    let b = manta::get_actor::<Cell>(name).unwrap();
    assert_eq!(b.incr().get_timeout(LONG).unwrap(), 2);
    drop(a);
    // Another handle keeps it.
    assert_eq!(b.incr().get_timeout(LONG).unwrap(), 3);
    drop(b);
    assert!(
        eventually(LONG, || not_found(name)),
        "a named actor without handles is found"
    );
    // The name is free again.
    let c = Cell::options().name(name).remote(10);
    assert_eq!(c.incr().get_timeout(LONG).unwrap(), 11);
    assert!(manta::kill(&c).unwrap());
}

fn looked_up_handles_keep(_: &Ctx) {
    let name = "api-looked-up-keeps";
    let a = Cell::options().name(name).remote(0);
    let holder = Holder::remote();
    assert_eq!(holder.hold(name.to_string()).get_timeout(LONG).unwrap(), 1);
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        holder.poke().get_timeout(LONG).unwrap(),
        2,
        "a handle from get_actor keeps the actor"
    );
    assert!(!not_found(name));
    holder.release().get_timeout(LONG).unwrap();
    assert!(
        eventually(LONG, || not_found(name)),
        "found with no handle left"
    );
}

fn detached_outlives_handles(_: &Ctx) {
    let name = "api-detached-outlives";
    let a = Cell::options().name(name).lifetime_detached().remote(0);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 1);
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let b = manta::get_actor::<Cell>(name).expect("a detached actor outlives its handles");
    assert_eq!(b.incr().get_timeout(LONG).unwrap(), 2);
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let c = manta::get_actor::<Cell>(name).expect("still there");
    assert!(manta::kill(&c).unwrap());
    assert!(eventually(LONG, || not_found(name)), "killed, yet found");
}

fn namespaces(_: &Ctx) {
    let name = "api-same-name";
    let a = Cell::options().name(name).namespace("api-a").remote(100);
    let b = Cell::options().name(name).namespace("api-b").remote(200);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 101);
    assert_eq!(b.incr().get_timeout(LONG).unwrap(), 201);
    let found = manta::get_actor_in::<Cell>(name, "api-b").unwrap();
    assert_eq!(found.incr().get_timeout(LONG).unwrap(), 202);
    assert!(not_found(name), "the default namespace has no such name");
    assert!(matches!(
        manta::get_actor_in::<Cell>(name, "api-c"),
        Err(manta::Error::ActorNotFound { .. })
    ));
    // From a task (in a cluster, another process).
    let via_task = incr_by_name::remote(name.to_string(), "api-a".to_string());
    assert_eq!(via_task.get_timeout(LONG).unwrap(), 102);
    // The same name twice in one namespace is refused.
    let dup = Cell::options().name(name).namespace("api-a").remote(0);
    assert!(matches!(
        dup.incr().get_timeout(LONG),
        Err(manta::Error::ActorNameTaken { .. })
    ));
    let bad = Cell::options()
        .name(name)
        .namespace("bad\u{1f}ns")
        .remote(0);
    assert!(bad.incr().get_timeout(LONG).is_err());
    drop((a, b, found));
}

fn exit_actor(_: &Ctx) {
    let name = "api-exit-actor";
    let a = Cell::options().name(name).remote(0);
    assert_eq!(a.incr().get_timeout(LONG).unwrap(), 1);
    let quit = a.quit();
    let after = a.incr();
    match quit.get_timeout(LONG) {
        Err(manta::Error::ActorDied { .. }) => {}
        other => panic!("the exiting call: expected ActorDied, got {other:?}"),
    }
    match after.get_timeout(LONG) {
        Err(manta::Error::ActorDied { .. }) => {}
        other => panic!("a call queued behind exit_actor: expected ActorDied, got {other:?}"),
    }
    assert!(matches!(
        a.incr().get_timeout(LONG),
        Err(manta::Error::ActorDied { .. })
    ));
    assert!(
        eventually(LONG, || not_found(name)),
        "an exited actor is found"
    );
    // Outside an actor it is an error of the task that called it.
    match exit_outside_an_actor::remote().get_timeout(LONG) {
        Err(manta::Error::Task(e)) => assert!(e.to_string().contains("outside an actor"), "{e}"),
        other => panic!("expected a task error, got {other:?}"),
    }
}

/// Polls `f` until it holds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
