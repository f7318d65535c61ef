//! Ray's `ray.kill` of an actor in the middle of a call: the kill returns at once; the running
//! call and the queued ones fail with `ActorDied`; the name is free at once (`get_actor` fails,
//! a new actor may take it); the actor's resources go back to its node. A method's thread
//! cannot be interrupted: it runs on in the background and its result is discarded (README).

use std::time::{Duration, Instant};

use manta::Error;

use crate::cancel::{Napper, Probe};
use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "kill::mid_call_returns_at_once_and_fails_every_call",
        mid_call,
    ),
    Case::new(
        "kill::through_a_looked_up_handle_fails_the_owners_calls",
        by_lookup,
    ),
    Case::new("kill::mid_call_releases_the_actors_cpus", releases_cpus),
    Case::new(
        "kill::in_another_process_frees_the_name",
        in_another_process,
    ),
];

const LONG: Duration = Duration::from_secs(30);
/// How long a call may take to fail once its actor is killed.
const PROMPT: Duration = Duration::from_secs(2);
/// How long `kill` may take (it must not wait for the running call, which naps 3 s).
const KILL_BOUND: Duration = Duration::from_millis(1_000);

#[manta::remote]
fn hog(x: i64) -> i64 {
    x
}

/// Kills the actor named `name` through a handle looked up here.
#[manta::remote]
fn kill_by_name(name: String) -> String {
    match manta::get_actor::<Napper>(&name).and_then(|h| manta::kill(&h)) {
        Ok(true) => "killed".into(),
        other => format!("{other:?}"),
    }
}

#[track_caller]
fn assert_died<T: serde::de::DeserializeOwned + std::fmt::Debug + 'static>(
    what: &str,
    r: &manta::ObjectRef<T>,
) {
    match r.get_timeout(PROMPT) {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("{what}: expected ActorDied within {PROMPT:?}, got {other:?}"),
    }
}

/// The kill-mid-call scenario, also run in a loop by `scripts/stress-actor-kill`.
/// `step` is told where the scenario is (so a stress loop can say where a hung run stopped).
pub(crate) fn kill_mid_call(name: &str, nap_ms: u64, step: &dyn Fn(&'static str)) {
    step("creating the actor");
    let a = Napper::options().name(name).remote();
    a.ready().get_timeout(LONG).unwrap();
    step("waiting for the call to start");
    let probe = Probe::new("kill");
    let running = a.nap(nap_ms, probe.path());
    let queued = a.naps();
    probe.wait_for("started", LONG);
    step("killing the actor");
    let t = Instant::now();
    assert!(manta::kill(&a).unwrap(), "the actor was alive");
    let took = t.elapsed();
    assert!(
        took < KILL_BOUND,
        "kill waited {took:?} (for the running call?)"
    );
    step("getting the killed calls");
    assert_died("the running call", &running);
    assert_died("the queued call", &queued);
    assert_died("a call after the kill", &a.naps());
    step("looking the name up");
    match manta::get_actor::<Napper>(name) {
        Err(Error::ActorNotFound { .. }) => {}
        other => panic!("get_actor of a killed actor's name: {other:?}"),
    }
    step("calling a new actor of the name");
    let b = Napper::options().name(name).remote();
    assert_eq!(
        b.naps().get_timeout(LONG).unwrap(),
        0,
        "a new actor takes the name"
    );
    step("killing the new actor");
    assert!(manta::kill(&b).unwrap());
}

fn mid_call(ctx: &Ctx) {
    kill_mid_call(&format!("kill-mid-call-{}", ctx.mode), 3_000, &|_| {});
}

fn by_lookup(ctx: &Ctx) {
    let name = format!("kill-by-lookup-{}", ctx.mode);
    let a = Napper::options().name(&name).remote();
    a.ready().get_timeout(LONG).unwrap();
    let probe = Probe::new("kill-lookup");
    let running = a.nap(3_000, probe.path());
    let queued = a.naps();
    probe.wait_for("started", LONG);
    let looked_up = manta::get_actor::<Napper>(&name).unwrap();
    let t = Instant::now();
    assert!(manta::kill(&looked_up).unwrap());
    assert!(t.elapsed() < KILL_BOUND, "kill took {:?}", t.elapsed());
    assert_died("the owner's running call", &running);
    assert_died("the owner's queued call", &queued);
    assert_died("a call through the owner's handle", &a.naps());
}

fn releases_cpus(ctx: &Ctx) {
    let a = Napper::options().num_cpus(ctx.cpus).remote();
    a.ready().get_timeout(LONG).unwrap();
    let probe = Probe::new("kill-cpus");
    let running = a.nap(3_000, probe.path());
    probe.wait_for("started", LONG);
    let t = Instant::now();
    assert!(manta::kill(&a).unwrap());
    // A task that needs every CPU the actor held runs before the killed call's nap ends.
    let r = hog::options().num_cpus(ctx.cpus).remote(7);
    assert_eq!(r.get_timeout(LONG).unwrap(), 7);
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "the task waited {:?} for the killed actor's CPUs",
        t.elapsed()
    );
    assert_died("the running call", &running);
}

/// `scripts/stress-actor-kill`: [`kill_mid_call`] `iterations` times in the current runtime,
/// each bounded by `per_iteration`; returns (hangs, failures). It stops after three hangs
/// (a wedged runtime would make every later iteration hang too).
pub(crate) fn stress(iterations: usize, nap_ms: u64, per_iteration: Duration) -> (usize, usize) {
    let (mut hangs, mut failures) = (0, 0);
    for i in 0..iterations {
        let (tx, rx) = std::sync::mpsc::channel();
        let at = std::sync::Arc::new(std::sync::Mutex::new(""));
        let mark = at.clone();
        std::thread::spawn(move || {
            let step = |s: &'static str| *mark.lock().unwrap_or_else(|e| e.into_inner()) = s;
            let r = std::panic::catch_unwind(|| {
                kill_mid_call(
                    &format!("stress-kill-{}-{i}", std::process::id()),
                    nap_ms,
                    &step,
                )
            });
            let _ = tx.send(r.is_ok());
        });
        match rx.recv_timeout(per_iteration) {
            Ok(true) => {}
            Ok(false) => {
                failures += 1;
                eprintln!("stress: iteration {i} failed (its panic is above)");
            }
            Err(_) => {
                hangs += 1;
                let at = *at.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!("stress: iteration {i} HUNG (no end within {per_iteration:?}, {at})");
                // Whether it ends later (a wait that times out panics above) or never.
                let more = Duration::from_secs(60);
                let end = match rx.recv_timeout(more) {
                    Ok(true) => "it then ended",
                    Ok(false) => "it then failed (its panic is above)",
                    Err(_) => "it did not end",
                };
                eprintln!("stress: iteration {i}: {end} within {more:?} more");
                if hangs >= 3 {
                    break;
                }
            }
        }
        if (i + 1) % 50 == 0 {
            eprintln!(
                "stress: {} iterations, {hangs} hangs, {failures} failures",
                i + 1
            );
        }
    }
    (hangs, failures)
}

fn in_another_process(ctx: &Ctx) {
    let name = format!("kill-elsewhere-{}", ctx.mode);
    let a = Napper::options().name(&name).remote();
    a.ready().get_timeout(LONG).unwrap();
    assert_eq!(
        kill_by_name::remote(name.clone())
            .get_timeout(LONG)
            .unwrap(),
        "killed"
    );
    assert_died("a call through the owner's handle", &a.naps());
    match manta::get_actor::<Napper>(&name) {
        Err(Error::ActorNotFound { .. }) => {}
        other => panic!("get_actor of a name whose actor another process killed: {other:?}"),
    }
    let b = Napper::options().name(&name).remote();
    assert_eq!(
        b.naps().get_timeout(LONG).unwrap(),
        0,
        "a new actor takes the name"
    );
    assert!(manta::kill(&b).unwrap());
}
