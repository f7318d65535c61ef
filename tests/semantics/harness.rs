//! The semantics matrix's harness: one runtime or cluster per mode, every case run against it in
//! turn, each bounded in time, one table of results at the end.
//!
//! A case is a plain function of the [`Ctx`] that panics when the semantics are wrong. It runs on
//! its own thread; the harness waits for it at most [`Case::timeout`]. A case that does not
//! return in time is a hang: the harness reports it, runs no further case on the (possibly
//! wedged) runtime, and fails the mode. A case that cannot mean anything in a mode names that mode
//! in [`Case::skip`] with the reason, and the table prints the reason.

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::cluster::{LocalCluster, NodeSpec};

/// Where the cases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `manta::init_with` in the test process: head, raylet and slots in one process.
    Embedded,
    /// A `manta start --head` node process (2 CPUs); the test process is its driver, the work
    /// runs in the node's worker process.
    OneNode,
    /// A head (2 CPUs), a second node (2 CPUs, resource `side=1`) and a third with no CPUs
    /// (resource `zero=1`), each its own process; the test process is their driver.
    ThreeNodes,
    /// The test binary under `srun -n 3`: rank 0 is head and driver, every rank a worker.
    Srun,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Embedded => "embedded",
            Mode::OneNode => "one-node",
            Mode::ThreeNodes => "three-nodes",
            Mode::Srun => "srun",
        })
    }
}

/// What a case knows of where it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    /// The mode.
    pub(crate) mode: Mode,
    /// CPUs of the node(s) that run CPU work (2 in every mode but srun, where it is the node's
    /// share of the machine).
    #[allow(dead_code)] // for cases that size their load by it
    pub(crate) cpus: f64,
}

impl Ctx {
    /// Whether work runs in other processes than the caller's.
    #[allow(dead_code)]
    pub(crate) fn is_cluster(&self) -> bool {
        self.mode != Mode::Embedded
    }
}

/// One semantic test case.
#[derive(Clone, Copy)]
pub(crate) struct Case {
    /// Its name in the table (`area::what`).
    pub(crate) name: &'static str,
    /// The case: panics when the semantics are wrong.
    pub(crate) run: fn(&Ctx),
    /// Modes it does not run in, each with the documented reason.
    pub(crate) skip: &'static [(Mode, &'static str)],
    /// How long it may take before it counts as a hang.
    pub(crate) timeout: Duration,
}

impl Case {
    /// A case that runs in every mode within 60 s.
    pub(crate) const fn new(name: &'static str, run: fn(&Ctx)) -> Case {
        Case {
            name,
            run,
            skip: &[],
            timeout: Duration::from_secs(60),
        }
    }

    /// The same case, not run in the modes listed (each with its reason).
    #[allow(dead_code)]
    pub(crate) const fn skip(mut self, skip: &'static [(Mode, &'static str)]) -> Case {
        self.skip = skip;
        self
    }

    /// The same case with another time bound.
    #[allow(dead_code)]
    pub(crate) const fn timeout(mut self, secs: u64) -> Case {
        self.timeout = Duration::from_secs(secs);
        self
    }
}

enum Outcome {
    Passed(Duration),
    Failed(String),
    Hung,
    Skipped(&'static str),
    NotRun,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs every case of `cases` selected by `MANTA_TEST_CASE` (substrings of the name, separated
/// by commas) in `ctx`'s mode; returns whether all ran clean, printing the table.
pub(crate) fn run_cases(ctx: Ctx, cases: &[Case]) -> bool {
    let only = std::env::var("MANTA_TEST_CASE").ok();
    let mut results: Vec<(&'static str, Outcome)> = Vec::new();
    let mut wedged = false;
    for case in cases {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| case.name.contains(o)))
        {
            continue;
        }
        if let Some((_, why)) = case.skip.iter().find(|(m, _)| *m == ctx.mode) {
            results.push((case.name, Outcome::Skipped(why)));
            continue;
        }
        if wedged {
            results.push((case.name, Outcome::NotRun));
            continue;
        }
        eprintln!("[{}] {} ...", ctx.mode, case.name);
        let (tx, rx) = mpsc::channel();
        let run = case.run;
        let started = Instant::now();
        std::thread::Builder::new()
            .name(case.name.into())
            .spawn(move || {
                let r = std::panic::catch_unwind(|| run(&ctx));
                let _ = tx.send(r.map_err(|p| panic_text(&*p)));
            })
            .expect("a thread for the case");
        let outcome = match rx.recv_timeout(case.timeout) {
            Ok(Ok(())) => Outcome::Passed(started.elapsed()),
            Ok(Err(msg)) => Outcome::Failed(msg),
            Err(_) => {
                wedged = true;
                Outcome::Hung
            }
        };
        results.push((case.name, outcome));
    }
    let mut clean = true;
    eprintln!("\n==== semantics matrix: {} ====", ctx.mode);
    for (name, outcome) in &results {
        let line = match outcome {
            Outcome::Passed(t) => format!("ok      {name} ({} ms)", t.as_millis()),
            Outcome::Failed(msg) => {
                clean = false;
                format!("FAILED  {name}: {msg}")
            }
            Outcome::Hung => {
                clean = false;
                format!("HUNG    {name}: no result within its bound; later cases not run")
            }
            Outcome::Skipped(why) => format!("skipped {name}: {why}"),
            Outcome::NotRun => {
                clean = false;
                format!("NOT RUN {name}: an earlier case hung")
            }
        };
        eprintln!("{line}");
    }
    let passed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Passed(_)))
        .count();
    eprintln!(
        "==== {}: {passed} of {} passed ====",
        ctx.mode,
        results.len()
    );
    if wedged {
        // The hung case's thread still holds the runtime: report and leave without a shutdown
        // that could hang too. The caller's cluster (if any) is stopped by its own guard first.
        eprintln!(
            "a case hung in mode {}: giving up on this runtime",
            ctx.mode
        );
    }
    clean
}

/// The cluster of a cluster mode.
pub(crate) fn start_cluster(mode: Mode) -> LocalCluster {
    match mode {
        Mode::OneNode => LocalCluster::start(NodeSpec::with_resources(""), &[]),
        Mode::ThreeNodes => LocalCluster::start(
            NodeSpec::with_resources(""),
            &[
                NodeSpec::with_resources("side=1"),
                NodeSpec {
                    num_cpus: 0.0,
                    resources: "zero=1".into(),
                    ..NodeSpec::default()
                },
            ],
        ),
        other => panic!("{other} has no LocalCluster"),
    }
}
