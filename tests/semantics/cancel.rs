//! Ray's `ray.cancel`: a queued task never runs; a running task is interrupted at its next
//! Manta call (that call returns `Error::Cancelled`, so the task unwinds) and its result is
//! `Cancelled`; `recursive` (the default) cancels the tasks it submitted; an actor call not yet
//! started is cancelled, a running one is not; a task whose argument was cancelled fails with
//! `Cancelled`; `force` ends the worker process running the task (in a cluster; embedded it
//! acts as a plain cancel, as the README says).
//!
//! Tasks report what they saw through a small file (a [`Probe`]): once a task is cancelled,
//! every Manta call it makes fails, so it cannot report through Manta.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use manta::{CancelOptions, Error, ObjectRef};

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new("cancel::a_queued_task_never_runs", queued_task),
    Case::new(
        "cancel::a_running_task_is_interrupted_at_its_next_call",
        running_task,
    ),
    Case::new(
        "cancel::a_get_blocked_in_the_task_returns_cancelled",
        blocked_get,
    ),
    Case::new(
        "cancel::recursive_cancels_the_tasks_it_submitted",
        recursive,
    ),
    Case::new(
        "cancel::non_recursive_leaves_the_tasks_it_submitted",
        non_recursive,
    ),
    Case::new(
        "cancel::an_actor_call_not_yet_started_is_cancelled",
        actor_call,
    ),
    Case::new(
        "cancel::a_task_whose_argument_was_cancelled_fails_cancelled",
        cancelled_argument,
    ),
    Case::new("cancel::force_ends_the_task_and_work_goes_on", force),
];

const LONG: Duration = Duration::from_secs(30);
/// How long a cancelled task or call may take to report `Cancelled`.
const PROMPT: Duration = Duration::from_secs(5);

/// A file a task writes what it saw into (readable by the test whatever process ran it).
pub(crate) struct Probe(PathBuf);

impl Probe {
    pub(crate) fn new(what: &str) -> Probe {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Probe(
            std::env::temp_dir().join(format!("manta-probe-{what}-{}-{nanos}", std::process::id())),
        )
    }
    pub(crate) fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
    pub(crate) fn read(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
    /// Waits until the file says `want`.
    pub(crate) fn wait_for(&self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.read();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "probe {}: wanted {want:?} within {within:?}, found {got:?}",
                self.0.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn write(path: &str, what: &str) {
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, what).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

#[manta::remote]
fn add_one(x: i64) -> i64 {
    x + 1
}

#[manta::remote]
fn sleep_ms(ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms as i64
}

/// Runs until cancelled (a `put` then fails) or `max_ms` pass; says which in `path`.
#[manta::remote]
fn spinner(after: i64, path: String, max_ms: u64) -> i64 {
    let _ = after;
    write(&path, "started");
    let start = Instant::now();
    loop {
        match manta::put(0u8) {
            Err(e) if matches!(e.error, Error::Cancelled { .. }) => {
                write(&path, "cancelled");
                return 0;
            }
            Err(e) => {
                write(&path, &format!("put failed: {}", e.error));
                return -1;
            }
            Ok(_) => {}
        }
        if start.elapsed() > Duration::from_millis(max_ms) {
            write(&path, "timeout");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Submits a spinner and blocks in its `get`; says in `path` how that `get` ended.
#[manta::remote]
fn parent(path: String, child_path: String, max_ms: u64) -> i64 {
    // The child waits for an argument, so this `get` finds it not yet queued and blocks (see
    // `blocked_in_get`).
    let first = sleep_ms::remote(300);
    let child = spinner::remote(&first, child_path, max_ms);
    write(&path, "started");
    match child.get() {
        Err(Error::Cancelled { .. }) => write(&path, "cancelled"),
        Err(e) => write(&path, &format!("get failed: {e}")),
        Ok(_) => write(&path, "done"),
    }
    0
}

/// Sleeps `ms` once `after` is ready, then says "done" in `path`.
#[manta::remote]
fn nap_then_say(after: i64, path: String, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    write(&path, "done");
    after
}

/// Blocks in the `get` of a task that sleeps `ms`; says in `path` how that `get` ended.
#[manta::remote]
fn blocked_in_get(path: String, child_path: String, ms: u64) -> i64 {
    // The child waits for an argument, so this `get` finds it not yet queued and blocks (a
    // `get` of a queued task runs it on the caller's thread: see the README on cancel).
    let first = sleep_ms::remote(300);
    let child = nap_then_say::remote(&first, child_path, ms);
    write(&path, "started");
    match child.get() {
        Err(Error::Cancelled { .. }) => write(&path, "cancelled"),
        Err(e) => write(&path, &format!("get failed: {e}")),
        Ok(_) => write(&path, "done"),
    }
    0
}

#[manta::actor]
pub(crate) struct Napper {
    naps: u64,
}

#[manta::actor]
impl Napper {
    pub(crate) fn new() -> Self {
        Napper { naps: 0 }
    }
    /// Says "started" in `path`, sleeps `ms`, counts the nap.
    pub(crate) fn nap(&mut self, ms: u64, path: String) -> u64 {
        if !path.is_empty() {
            write(&path, "started");
        }
        std::thread::sleep(Duration::from_millis(ms));
        self.naps += 1;
        self.naps
    }
    pub(crate) fn naps(&self) -> u64 {
        self.naps
    }
}

/// Asserts that `r` fails with `Cancelled` within [`PROMPT`].
#[track_caller]
fn assert_cancelled<T: serde::de::DeserializeOwned + std::fmt::Debug + 'static>(
    what: &str,
    r: &ObjectRef<T>,
) {
    match r.get_timeout(PROMPT) {
        Err(Error::Cancelled { .. }) => {}
        other => panic!("{what}: expected Cancelled, got {other:?}"),
    }
}

fn queued_task(_: &Ctx) {
    let blocker = sleep_ms::remote(1_500);
    let queued = add_one::remote(&blocker); // waits for its argument
    assert!(
        manta::cancel(&queued),
        "a queued task can be cancelled; it gave {:?}",
        queued.get_timeout(PROMPT)
    );
    assert_cancelled("the queued task", &queued);
    assert!(!manta::cancel(&queued), "cancelling twice does nothing");
    assert_eq!(blocker.get_timeout(LONG).unwrap(), 1_500);
    assert!(
        !manta::cancel(&blocker),
        "a finished task cannot be cancelled"
    );
    assert_eq!(blocker.get_timeout(LONG).unwrap(), 1_500);
}

fn running_task(_: &Ctx) {
    let probe = Probe::new("running");
    let r = spinner::remote(0, probe.path(), 20_000);
    probe.wait_for("started", LONG);
    assert!(manta::cancel(&r), "a running task can be cancelled");
    assert_cancelled("the running task", &r);
    probe.wait_for("cancelled", PROMPT);
}

fn blocked_get(_: &Ctx) {
    let probe = Probe::new("blocked");
    let child = Probe::new("blocked-child");
    let r = blocked_in_get::remote(probe.path(), child.path(), 2_000);
    probe.wait_for("started", LONG);
    // Not recursive: the child runs on; the parent's `get` of it is what must end.
    assert!(
        manta::cancel_with(&r, CancelOptions::default().recursive(false)),
        "cancel of the blocked task: it said {:?}, returned {:?}",
        probe.read(),
        r.get_timeout(PROMPT)
    );
    assert_cancelled("the blocked task", &r);
    probe.wait_for("cancelled", PROMPT);
    assert_eq!(child.read(), "", "the child was not to be cancelled");
    child.wait_for("done", LONG); // and it leaves no work behind
}

fn recursive(_: &Ctx) {
    let (p, c) = (Probe::new("parent"), Probe::new("child"));
    let r = parent::remote(p.path(), c.path(), 20_000);
    p.wait_for("started", LONG);
    c.wait_for("started", LONG);
    assert!(manta::cancel(&r));
    assert_cancelled("the parent", &r);
    p.wait_for("cancelled", PROMPT);
    c.wait_for("cancelled", PROMPT);
}

fn non_recursive(_: &Ctx) {
    let (p, c) = (Probe::new("parent-nr"), Probe::new("child-nr"));
    let r = parent::remote(p.path(), c.path(), 3_000);
    p.wait_for("started", LONG);
    c.wait_for("started", LONG);
    assert!(manta::cancel_with(
        &r,
        CancelOptions::default().recursive(false)
    ));
    assert_cancelled("the parent", &r);
    p.wait_for("cancelled", PROMPT);
    assert_eq!(c.read(), "started", "the child was not to be cancelled");
    c.wait_for("timeout", LONG);
}

fn actor_call(ctx: &Ctx) {
    let a = Napper::remote();
    a.ready().get_timeout(LONG).unwrap();
    let probe = Probe::new("actor-call");
    let running = a.nap(1_500, probe.path());
    let queued = a.nap(0, String::new());
    probe.wait_for("started", LONG);
    assert!(
        manta::cancel(&queued),
        "a queued actor call can be cancelled"
    );
    assert_cancelled("the queued call", &queued);
    assert!(
        !manta::cancel(&running),
        "a running actor call is not interrupted (Ray's rule for non-async actors), mode {}",
        ctx.mode
    );
    assert_eq!(running.get_timeout(LONG).unwrap(), 1);
    assert_eq!(
        a.naps().get_timeout(LONG).unwrap(),
        1,
        "the cancelled call ran"
    );
}

fn cancelled_argument(_: &Ctx) {
    // A running argument, cancelled.
    let probe = Probe::new("arg");
    let arg = spinner::remote(0, probe.path(), 20_000);
    let dep = add_one::remote(&arg);
    probe.wait_for("started", LONG);
    assert!(manta::cancel(&arg));
    assert_cancelled("a task whose running argument was cancelled", &dep);
    probe.wait_for("cancelled", PROMPT);
    // A queued argument, cancelled.
    let blocker = sleep_ms::remote(500);
    let queued = add_one::remote(&blocker);
    let dep2 = add_one::remote(&queued);
    assert!(manta::cancel(&queued));
    assert_cancelled("a task whose queued argument was cancelled", &dep2);
    assert_eq!(blocker.get_timeout(LONG).unwrap(), 500);
}

fn force(ctx: &Ctx) {
    let probe = Probe::new("force");
    let r = spinner::remote(0, probe.path(), 20_000);
    probe.wait_for("started", LONG);
    assert!(manta::cancel_with(&r, CancelOptions::default().force(true)));
    assert_cancelled("a force-cancelled task", &r);
    if !ctx.is_cluster() {
        // No worker process to end (README): a plain cancel. (Under srun the task may run on
        // a rank, where force is a plain cancel too, or on the worker process rank 0's raylet
        // started, which ends: either is right.)
        probe.wait_for("cancelled", PROMPT);
    }
    // Work goes on: a new task runs (in a cluster, in a new worker process).
    assert_eq!(add_one::remote(1).get_timeout(LONG).unwrap(), 2);
}
