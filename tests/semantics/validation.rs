//! Bad arguments are refused when the call is made, with `Error::InvalidArgument`, the same
//! in every mode (issue 11, item 13): `wait` with duplicates or a bad `num_returns`, blank
//! actor names, resource amounts that are negative, not finite, 0 for a custom resource or
//! fractional above 1, `max_concurrency(0)`. Nothing is clamped; nothing runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manta::{Error, ObjectRef};

use crate::harness::{Case, Ctx, Mode};

pub(crate) const CASES: &[Case] = &[
    Case::new("validation::wait_arguments", wait_arguments),
    Case::new("validation::task_resource_amounts", task_resources),
    Case::new("validation::actor_names_and_options", actor_options),
];

const LONG: Duration = Duration::from_secs(30);

/// Runs of [`counted`] in this process (only meaningful where tasks run here: embedded).
static RUNS: AtomicUsize = AtomicUsize::new(0);

#[manta::remote]
fn counted(x: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    x
}

#[manta::actor]
pub(crate) struct Plain {
    n: u64,
}

#[manta::actor]
impl Plain {
    pub(crate) fn new() -> Self {
        Plain { n: 7 }
    }
    pub(crate) fn get(&self) -> u64 {
        self.n
    }
}

/// The error must be `InvalidArgument` naming `what`, and come at once.
fn expect_invalid<T: std::fmt::Debug>(
    r: Result<T, Error>,
    what: &str,
    started: Instant,
    case: &str,
) {
    match r {
        Err(Error::InvalidArgument { what: w, message }) => {
            assert!(w.contains(what), "{case}: names {w:?}, not {what:?}");
            assert!(!message.is_empty(), "{case}: no message");
        }
        other => panic!("{case}: expected InvalidArgument about {what}, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{case}: the error took {:?}",
        started.elapsed()
    );
}

fn wait_arguments(_: &Ctx) {
    let a = counted::remote(1);
    let b = counted::remote(2);
    let t = Instant::now();
    let dup = vec![a.clone(), b.clone(), a.clone()];
    expect_invalid(manta::wait(dup, 1, None), "wait", t, "duplicate refs");
    expect_invalid(
        manta::wait(vec![a.clone(), b.clone()], 0, None),
        "num_returns",
        t,
        "num_returns 0",
    );
    expect_invalid(
        manta::wait(vec![a.clone(), b.clone()], 3, None),
        "num_returns",
        t,
        "num_returns above the length",
    );
    expect_invalid(
        manta::wait(Vec::<ObjectRef<u64>>::new(), 0, None),
        "num_returns",
        t,
        "empty list",
    );
    // The same refs, well formed, still work.
    let (ready, rest) = manta::wait(vec![a.clone(), b.clone()], 2, Some(LONG)).unwrap();
    assert_eq!((ready.len(), rest.len()), (2, 0));
}

fn task_resources(ctx: &Ctx) {
    RUNS.store(0, Ordering::SeqCst);
    let bad: Vec<(&str, &str, ObjectRef<u64>)> = vec![
        (
            "num_cpus -1",
            "num_cpus",
            counted::options().num_cpus(-1.0).remote(1),
        ),
        (
            "num_cpus NaN",
            "num_cpus",
            counted::options().num_cpus(f64::NAN).remote(1),
        ),
        (
            "num_cpus inf",
            "num_cpus",
            counted::options().num_cpus(f64::INFINITY).remote(1),
        ),
        (
            "num_cpus 1.5",
            "num_cpus",
            counted::options().num_cpus(1.5).remote(1),
        ),
        (
            "num_gpus -0.5",
            "num_gpus",
            counted::options().num_gpus(-0.5).remote(1),
        ),
        (
            "num_gpus 2.5",
            "num_gpus",
            counted::options().num_gpus(2.5).remote(1),
        ),
        (
            "custom 0",
            "resource",
            counted::options().resource("side", 0.0).remote(1),
        ),
        (
            "custom -1",
            "resource",
            counted::options().resource("side", -1.0).remote(1),
        ),
        (
            "custom NaN",
            "resource",
            counted::options().resource("side", f64::NAN).remote(1),
        ),
        (
            "custom 1.25",
            "resource",
            counted::options().resource("side", 1.25).remote(1),
        ),
    ];
    for (case, what, r) in bad {
        let t = Instant::now();
        expect_invalid(r.get(), what, t, case);
    }
    if ctx.mode == Mode::Embedded {
        assert_eq!(RUNS.load(Ordering::SeqCst), 0, "a rejected task ran");
    }
    // Amounts Ray accepts are accepted: fractions up to 1, whole numbers, 0 CPUs.
    for r in [
        counted::options().num_cpus(0.5).remote(2),
        counted::options().num_cpus(0.0).remote(2),
        counted::options().num_cpus(1.0).remote(2),
    ] {
        assert_eq!(r.get_timeout(LONG).unwrap(), 2);
    }
}

fn actor_options(_: &Ctx) {
    let cases = [
        ("empty name", "name", Plain::options().name("").remote()),
        ("blank name", "name", Plain::options().name("  ").remote()),
        (
            "max_concurrency 0",
            "max_concurrency",
            Plain::options().max_concurrency(0).remote(),
        ),
        (
            "num_cpus -1",
            "num_cpus",
            Plain::options().num_cpus(-1.0).remote(),
        ),
        (
            "num_cpus 1.5",
            "num_cpus",
            Plain::options().num_cpus(1.5).remote(),
        ),
        (
            "num_gpus NaN",
            "num_gpus",
            Plain::options().num_gpus(f64::NAN).remote(),
        ),
        (
            "custom 0",
            "resource",
            Plain::options().resource("side", 0.0).remote(),
        ),
        (
            "custom inf",
            "resource",
            Plain::options().resource("side", f64::INFINITY).remote(),
        ),
    ];
    for (case, what, a) in cases {
        let t = Instant::now();
        expect_invalid(a.ready().get(), what, t, case);
        expect_invalid(a.get().get(), what, t, case);
    }
    // Nothing was registered under the blank names.
    assert!(matches!(
        manta::get_actor::<Plain>(""),
        Err(Error::ActorNotFound { .. })
    ));
    let ok = Plain::options()
        .name("validation-plain")
        .max_concurrency(2)
        .remote();
    assert_eq!(ok.get().get_timeout(LONG).unwrap(), 7);
    manta::kill(&ok).unwrap();
}
