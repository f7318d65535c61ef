//! The scheduler's sleep/wake protocol (`scheduler/sleep.rs`): a pusher and one or two
//! workers that search, park and are woken. No lost wake-up: every job pushed is taken, and
//! nobody parks for good while a job is queued (loom fails a model in which every thread is
//! blocked: the pusher waits for its jobs, so a lost wake-up shows as that deadlock).
//!
//! The workers run `Sleep::idle` — the slots' own idle path — with a queue of atomics in place
//! of crossbeam's deques (which loom cannot see into): jobs are published by `tail` with
//! `Release` and claimed by a compare-and-swap of `head`.

use loom::sync::Arc;

use crate::sleep::{Notified, Pool, Sleep};
use crate::sync::{AtomicBool, AtomicUsize, Mutex, Ordering, lock, thread};

/// With `MANTA_LOOM_EVENTS=1`, the events of the execution that fails are printed (the
/// interleaving, in the pool's terms). Plain `std` here: loom sees none of it.
mod events {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, Once};

    static ON: AtomicBool = AtomicBool::new(false);
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub(super) fn start() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            if std::env::var_os("MANTA_LOOM_EVENTS").is_some() {
                ON.store(true, Ordering::Relaxed);
                let default = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    // loom unwinds every execution's threads with panics of its own: print
                    // for a failure only (a deadlock, or a model's assertion).
                    let failed = info.to_string().contains("deadlock")
                        || info.location().is_some_and(|l| l.file().contains("models"));
                    if failed {
                        let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
                        eprintln!("events of the failing execution:\n  {}", log.join("\n  "));
                    }
                    default(info);
                }));
            }
        });
        if ON.load(Ordering::Relaxed) {
            LOG.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub(super) fn log(event: impl FnOnce() -> String) {
        if ON.load(Ordering::Relaxed) {
            let who = format!("{:?}", loom::thread::current().id());
            LOG.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{who}: {}", event()));
        }
    }
}

/// How many looks a search makes before it gives up (the spin budget).
const LOOKS: usize = 1;

/// The jobs of a model: what running each does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Returns at once.
    Quick,
    /// Waits until a `Release` job ran: a call at a barrier, whose partner is the next job.
    Meet,
    /// Releases the `Meet` job.
    Release,
}

struct Model {
    sleep: Sleep,
    jobs: Vec<Kind>,
    /// Pushed jobs: `jobs[..tail]`; taken: `jobs[..head]`.
    tail: AtomicUsize,
    head: AtomicUsize,
    done: AtomicUsize,
    shutdown: AtomicBool,
    released: AtomicBool,
    /// The thread running a `Meet` job, parked until `released`.
    meeting: Mutex<Option<thread::Thread>>,
    /// The pusher, parked until every job is done.
    pusher: thread::Thread,
}

impl Pool for Model {
    type Job = usize;

    fn find(&self) -> Option<usize> {
        let job = self.take();
        events::log(|| format!("find -> {job:?}"));
        job
    }

    fn has_work(&self) -> bool {
        let work = self.head.load(Ordering::Acquire) < self.tail.load(Ordering::Acquire);
        events::log(|| format!("has_work -> {work}"));
        work
    }

    fn notify(&self) {
        // The model's pool never grows: a wake-up the protocol loses is lost for good.
        let n: Notified = self.sleep.notify();
        events::log(|| format!("notify -> {n:?}"));
    }

    fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

impl Model {
    fn take(&self) -> Option<usize> {
        loop {
            let head = self.head.load(Ordering::Acquire);
            if head >= self.tail.load(Ordering::Acquire) {
                return None;
            }
            if self
                .head
                .compare_exchange(head, head + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(head);
            }
        }
    }

    fn new(jobs: Vec<Kind>) -> Arc<Self> {
        Arc::new(Model {
            sleep: Sleep::new(),
            jobs,
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            released: AtomicBool::new(false),
            meeting: Mutex::new(None),
            pusher: thread::current(),
        })
    }

    fn run(&self, job: usize) {
        events::log(|| format!("runs job {job} ({:?})", self.jobs[job]));
        match self.jobs[job] {
            Kind::Quick => {}
            Kind::Meet => {
                *lock(&self.meeting) = Some(thread::current());
                while !self.released.load(Ordering::Acquire) {
                    thread::park();
                }
            }
            Kind::Release => {
                self.released.store(true, Ordering::Release);
                if let Some(t) = lock(&self.meeting).take() {
                    t.unpark();
                }
            }
        }
        self.done.fetch_add(1, Ordering::AcqRel);
        self.pusher.unpark();
    }

    /// A slot's main loop: its own queue is the shared one; idle, it runs `Sleep::idle`.
    fn worker(&self) {
        loop {
            if let Some(job) = self.find() {
                self.run(job);
                continue;
            }
            if self.is_shut_down() {
                return;
            }
            let mut looks = 1;
            let more = || {
                looks += 1;
                looks <= LOOKS
            };
            let job = self.sleep.idle(self, more);
            events::log(|| format!("idle -> {job:?}"));
            if let Some(job) = job {
                self.run(job);
            }
        }
    }

    /// Pushes every job (one `notify` each), waits for them all, then shuts the pool down.
    fn push_all_and_wait(&self) {
        for i in 0..self.jobs.len() {
            events::log(|| format!("pushes job {i}"));
            self.tail.store(i + 1, Ordering::Release);
            self.notify();
        }
        while self.done.load(Ordering::Acquire) < self.jobs.len() {
            thread::park();
        }
        self.shutdown.store(true, Ordering::Release);
        self.sleep.wake_all();
    }
}

/// Runs the model with `workers` workers and `jobs`, at no more than `max_preemptions`
/// (below `LOOM_MAX_PREEMPTIONS`, if that is lower).
fn run_model(workers: usize, jobs: Vec<Kind>, max_preemptions: usize) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(
        builder
            .preemption_bound
            .map_or(max_preemptions, |b| b.min(max_preemptions)),
    );
    builder.check(move || {
        events::start();
        let m = Model::new(jobs.clone());
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || m.worker())
            })
            .collect();
        m.push_all_and_wait();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(m.done.load(Ordering::Acquire), m.jobs.len());
    });
}

/// Two serial actors meeting at a barrier on two slots: the first call's job waits until the
/// second runs, so the second must be taken by the other worker. Without the hand-on when a
/// slot leaves sleep with a job (`sleep.rs`, Z5), loom finds the lost wake-up: both pushes
/// skip waking because one worker is searching; that worker gives up, sees the jobs at Z3,
/// does not park, takes the first and waits in it, while the other worker sleeps on.
#[test]
fn barrier_pair_on_two_workers() {
    run_model(2, vec![Kind::Meet, Kind::Release], 2);
}

/// One worker, two jobs: the worker must come back for the second.
#[test]
fn one_worker_two_jobs() {
    run_model(1, vec![Kind::Quick, Kind::Quick], 3);
}

/// Two workers, two quick jobs: every job taken, every worker shut down cleanly. Bounded at
/// one preemption (79 s at two on 2 loaded cores; the barrier pair above takes two).
#[test]
fn two_workers_two_jobs() {
    run_model(2, vec![Kind::Quick, Kind::Quick], 1);
}
