//! Nested tasks that block: tasks that `get` the tasks they submit, chains of them by the
//! thousand, on a finite pool of slots (issue 11, item 2), and `get_all` over an actor's
//! failing call beside a blocking one (item 3).

use std::time::{Duration, Instant};

use manta::Error;

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "nesting::f_g_h_chains_from_the_driver",
        chains_from_the_driver,
    ),
    Case::new("nesting::f_g_h_chains_inside_a_task", chains_inside_a_task),
    Case::new(
        "nesting::get_all_fails_at_once_beside_a_blocking_call",
        get_all_failing_and_blocking,
    ),
];

/// How long the chains may take before the case calls them a deadlock.
const BOUND: Duration = Duration::from_secs(40);

#[manta::remote]
fn nest_h(x: u64) -> u64 {
    x + 1
}

#[manta::remote]
fn nest_g(x: u64) -> u64 {
    nest_h::remote(x).get().expect("h") + 1
}

#[manta::remote]
fn nest_f(x: u64) -> u64 {
    nest_g::remote(x).get().expect("g") + 1
}

/// Submits `n` chains `f → g → h` and gets them all, failing (not hanging) after `bound`.
fn run_chains(n: u64, bound: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + bound;
    let refs: Vec<_> = (0..n).map(nest_f::remote).collect();
    let mut sum = 0;
    for (done, r) in refs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        sum += r
            .get_timeout(left)
            .map_err(|e| format!("{done} of {n} chains done after {bound:?}: {e}"))?;
    }
    Ok(sum)
}

fn expected(n: u64) -> u64 {
    (0..n).map(|x| x + 3).sum()
}

/// A task that runs `n` chains itself (in a cluster: inside the worker process, where its
/// nested tasks stay), failing with how far it got instead of hanging.
#[manta::remote]
fn chains_in_task(n: u64, bound_ms: u64) -> Result<u64, String> {
    run_chains(n, Duration::from_millis(bound_ms))
}

fn chains_from_the_driver(_: &Ctx) {
    let n = 1000;
    assert_eq!(run_chains(n, BOUND), Ok(expected(n)));
}

fn chains_inside_a_task(_: &Ctx) {
    let n = 1000;
    let bound = BOUND.as_millis() as u64;
    let r = chains_in_task::remote(n, bound).get_timeout(BOUND + Duration::from_secs(10));
    assert_eq!(r.expect("the chains finish"), expected(n));
}

#[manta::remote]
fn occupy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[manta::actor]
pub(crate) struct Blocker {
    calls: u64,
}

#[manta::actor]
impl Blocker {
    pub(crate) fn new() -> Self {
        Blocker { calls: 0 }
    }
    pub(crate) fn fail(&mut self) -> u64 {
        self.calls += 1;
        panic!("failing call")
    }
    /// Stands for a call that waits for something its caller does after `get_all` returns.
    pub(crate) fn block(&mut self, ms: u64) -> u64 {
        self.calls += 1;
        std::thread::sleep(Duration::from_millis(ms));
        self.calls
    }
}

/// `get_all([a.fail(), a.block()])` fails as soon as the failing call has failed: the caller
/// must not end up running the blocking call itself. `get_all([b.block(), a.fail()])` too: a
/// failure ends the `get_all` whatever its place in the list (as in Ray). With the slots busy, the driver used to
/// drain the actor on its own thread past its call, into `block` (a third of runs, embedded;
/// every run with the slots taken, as here).
fn get_all_failing_and_blocking(ctx: &Ctx) {
    const BLOCK_MS: u64 = 2_000;
    for round in 0..2 {
        let a = Blocker::remote();
        let b = Blocker::remote();
        a.ready().get_timeout(BOUND).expect("the actor starts");
        b.ready()
            .get_timeout(BOUND)
            .expect("the second actor starts");
        // Take every CPU for a moment, so only the caller could take the actor's job.
        let busy: Vec<_> = (0..ctx.cpus as usize)
            .map(|_| occupy::remote(300))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        // In round 1 the blocking call comes first: `get_all` still fails at once (Ray's
        // `get` of a list raises as soon as any object failed).
        let (calls, blocking) = match round {
            0 => (vec![a.fail(), a.block(BLOCK_MS)], 1),
            _ => (vec![b.block(BLOCK_MS), a.fail()], 0),
        };
        match manta::get_all(&calls) {
            Err(Error::Task(e)) => assert!(e.to_string().contains("failing call"), "{e}"),
            other => panic!("round {round}: expected the failing call's error, got {other:?}"),
        }
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(BLOCK_MS * 3 / 4),
            "round {round}: get_all took {took:?}: it waited for the blocking call"
        );
        let blocked = calls[blocking]
            .get_timeout(BOUND)
            .expect("the blocking call");
        assert!(blocked >= 1, "{blocked}");
        manta::get_all(&busy).expect("the busy tasks");
    }
}
