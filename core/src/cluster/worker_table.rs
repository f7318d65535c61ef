//! The raylet's worker table, sans I/O: each job's worker processes on this node and the
//! owners waiting for them, as a state machine that takes events (a `StartWorker` request, a
//! worker's `WorkerReady`, its heartbeat or detached count, a connection closed, a process
//! exited, a job's end) and returns what to do (messages to send, processes to reap or stop,
//! whether to start one). It owns no socket, thread, clock or process: the raylet (`node.rs`)
//! spawns, polls and kills the processes and sends the messages; `C` is its connection
//! handle, `P` its process handle.
//!
//! # The protocol
//!
//! 1. An owner asks the node for the job's workers (`StartWorker`). The request waits in the
//!    job's entry; unless the job has a process this raylet started (running or starting),
//!    the raylet starts one ([`WorkerTable::start`] says so; [`WorkerTable::spawned`] records
//!    it, or fails the waiting requests when it could not start).
//! 2. A worker reports ready (`WorkerReady`, on its own connection): the process this raylet
//!    started with that pid, or one that joined by itself (the ranks of an `srun`/`mpirun`
//!    launch: `joining` of them per node).
//! 3. Once every worker the job is to have here is ready, every waiting request is answered
//!    with all ready workers (`WorkerStarted`); from then on (the job is *assembled*) a request
//!    is answered with whatever is alive: a dead SPMD rank is not replaced.
//! 4. A worker whose connection closed, or whose process exited, is forgotten (reaped; one
//!    that still runs is killed: it can no longer be reached), so the next request starts a
//!    replacement; one that exited before it was ready fails the waiting requests.
//! 5. When the job ends, its workers are stopped (`Stop`, then SIGKILL), but a worker hosting
//!    detached actors is kept and told the job ended (`JobEvent`); it is stopped once it
//!    reports none left (`cluster/lifetime.rs`, step 3).

use std::collections::HashMap;

use super::proto::{JobWorker, Msg, Resource};

/// The shell's handle on a connection.
pub(crate) trait Conn: Clone {
    /// Whether `other` is the same connection.
    fn same(&self, other: &Self) -> bool;
    /// Whether it closed.
    fn is_closed(&self) -> bool;
}

/// The shell's handle on a worker process the raylet started.
pub(crate) trait Process {
    fn pid(&self) -> u32;
    /// Its exit status if it exited (`None` while it runs).
    fn exited(&mut self) -> Option<String>;
}

/// One worker process of a job on this node.
#[derive(Debug)]
pub(crate) struct Worker<C, P> {
    /// The process, when this raylet started it (`None`: a worker that joined by itself, as
    /// the ranks of an `srun`/`mpirun` launch do).
    pub(crate) child: Option<P>,
    /// Its worker index (0 until it is ready).
    pub(crate) index: u64,
    address: String,
    /// Its connection, once it reported ready.
    pub(crate) conn: Option<C>,
    /// What its scheduler holds (`WorkerReady`): `(resource, total)`.
    resources: Vec<Resource>,
    /// The worker's last report: `(resource, available, total)`, store bytes in use.
    pub(crate) load: Vec<Resource>,
    /// The page kind of its store arena, from its reports.
    pub(crate) store_pages: String,
    /// How many detached actors it hosts (`WorkerDetached`): it outlives its job while any.
    detached: u32,
}

impl<C, P> Worker<C, P> {
    fn new(child: Option<P>) -> Worker<C, P> {
        Worker {
            child,
            index: 0,
            address: String::new(),
            conn: None,
            resources: Vec::new(),
            load: Vec::new(),
            store_pages: String::new(),
            detached: 0,
        }
    }
}

/// A job's worker processes on this node, and the owners waiting for them.
#[derive(Debug)]
struct Job<C, P> {
    procs: Vec<Worker<C, P>>,
    /// `StartWorker` requests, answered once every worker the job has here is ready.
    waiting: Vec<(C, u64)>,
    /// The job ended; what is left are workers kept for their detached actors.
    ended: bool,
    /// Whether every worker the job was to have here was ready once (step 3).
    assembled: bool,
}

impl<C, P> Default for Job<C, P> {
    fn default() -> Self {
        Job {
            procs: Vec::new(),
            waiting: Vec::new(),
            ended: false,
            assembled: false,
        }
    }
}

/// What the shell is to do.
#[derive(Debug)]
pub(crate) enum Action<C, P> {
    /// Send the message on the connection.
    Send(C, Box<Msg>),
    /// Kill (if it still runs) and reap a worker process that is gone.
    Reap(P),
    /// Stop these workers: `Stop` on their connection, SIGKILL to a child that has not
    /// exited a while later.
    Stop(Vec<Worker<C, P>>),
}

/// The worker table of one raylet (see the module doc).
#[derive(Debug)]
pub(crate) struct WorkerTable<C, P> {
    jobs: HashMap<u64, Job<C, P>>,
    /// Whether this raylet starts a worker per job.
    spawns: bool,
    /// How many workers of each job join by themselves.
    joining: u32,
}

impl<C: Conn, P: Process> WorkerTable<C, P> {
    pub(crate) fn new(spawns: bool, joining: u32) -> Self {
        WorkerTable {
            jobs: HashMap::new(),
            spawns,
            joining,
        }
    }

    /// Worker processes a job has on this node once all are up.
    fn expected(&self) -> usize {
        usize::from(self.spawns) + self.joining as usize
    }

    /// The jobs with an entry here.
    pub(crate) fn jobs(&self) -> impl Iterator<Item = u64> + '_ {
        self.jobs.keys().copied()
    }

    /// Every worker of every job.
    pub(crate) fn workers(&self) -> impl Iterator<Item = &Worker<C, P>> {
        self.jobs.values().flat_map(|j| j.procs.iter())
    }

    /// Whether this raylet starts a process for `job_id` on its next request (it has none
    /// running or starting).
    pub(crate) fn will_spawn(&self, job_id: u64) -> bool {
        self.spawns
            && !self
                .jobs
                .get(&job_id)
                .is_some_and(|job| job.procs.iter().any(|w| w.child.is_some()))
    }

    /// `StartWorker` `request_id` from `from` (step 1): it waits; workers found gone are
    /// forgotten. Returns what to do and whether to start a process for the job now (then
    /// [`spawned`](Self::spawned), else [`answer`](Self::answer)).
    pub(crate) fn start(
        &mut self,
        from: C,
        request_id: u64,
        job_id: u64,
    ) -> (bool, Vec<Action<C, P>>) {
        let spawns = self.spawns;
        let job = self.jobs.entry(job_id).or_default();
        // A worker that exited since the last reap (one that ended because a task was
        // cancelled with force, say) is not offered: its owners are asking for another.
        job.procs
            .retain_mut(|w| w.child.as_mut().is_none_or(|c| c.exited().is_none()));
        job.waiting.push((from, request_id));
        let actions = forget_dead(job, job_id);
        let spawn = spawns && !job.procs.iter().any(|w| w.child.is_some());
        (spawn, actions)
    }

    /// The process started for `job_id` (or why it could not be): it waits for its
    /// `WorkerReady`; a failure fails the job's waiting requests.
    pub(crate) fn spawned(&mut self, job_id: u64, child: Result<P, String>) -> Vec<Action<C, P>> {
        let job = self.jobs.entry(job_id).or_default();
        match child {
            Ok(child) => {
                job.procs.push(Worker::new(Some(child)));
                self.answer(job_id)
            }
            Err(e) => fail_waiting(job, &e),
        }
    }

    /// Answers the job's waiting requests if every worker it has here is ready (once
    /// assembled: if any is) (step 3).
    pub(crate) fn answer(&mut self, job_id: u64) -> Vec<Action<C, P>> {
        let expected = self.expected();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Vec::new();
        };
        let ready = job.procs.iter().filter(|w| w.conn.is_some()).count();
        if ready == 0 || (!job.assembled && ready < expected) {
            return Vec::new();
        }
        job.assembled = true;
        let waiting = std::mem::take(&mut job.waiting);
        waiting
            .into_iter()
            .map(|(from, request_id)| Action::Send(from, Box::new(started(job, request_id))))
            .collect()
    }

    /// `WorkerReady` on connection `conn` (step 2).
    pub(crate) fn ready(
        &mut self,
        conn: &C,
        job_id: u64,
        index: u64,
        address: String,
        pid: u32,
        resources: Vec<Resource>,
    ) -> Vec<Action<C, P>> {
        if !self.jobs.contains_key(&job_id) && self.joining == 0 {
            tracing::warn!(
                job = job_id,
                "a worker of an unknown job reported ready: stopping it"
            );
            let stop = Msg::Stop {
                reason: "unknown job".into(),
            };
            return vec![Action::Send(conn.clone(), Box::new(stop))];
        }
        let job = self.jobs.entry(job_id).or_default();
        // The process this raylet started, or one that joined by itself (an SPMD rank).
        let started = job
            .procs
            .iter()
            .position(|w| w.conn.is_none() && w.child.as_ref().is_some_and(|c| c.pid() == pid));
        let i = started.unwrap_or_else(|| {
            let mut w = Worker::new(None);
            w.index = index;
            job.procs.push(w);
            job.procs.len() - 1
        });
        let w = &mut job.procs[i];
        w.index = index;
        w.address = address;
        w.conn = Some(conn.clone());
        w.resources = resources;
        self.answer(job_id)
    }

    /// A heartbeat from the worker on `conn`: what it has in use, its arena's page kind.
    pub(crate) fn heartbeat(&mut self, conn: &C, load: Vec<Resource>, store_pages: String) {
        let found = self
            .jobs
            .values_mut()
            .flat_map(|j| j.procs.iter_mut())
            .find(|w| w.conn.as_ref().is_some_and(|c| c.same(conn)));
        if let Some(w) = found {
            w.load = load;
            w.store_pages = store_pages;
        }
    }

    /// Connection `conn` closed: the worker on it is gone (step 4).
    pub(crate) fn closed(&mut self, conn: &C) -> Vec<Action<C, P>> {
        let mut actions = Vec::new();
        for (job_id, job) in self.jobs.iter_mut() {
            let Some(i) = job
                .procs
                .iter()
                .position(|w| w.conn.as_ref().is_some_and(|c| c.same(conn)))
            else {
                continue;
            };
            let w = job.procs.remove(i);
            tracing::info!(job = job_id, worker = w.index, "worker connection closed");
            actions.extend(w.child.map(Action::Reap));
        }
        actions
    }

    /// Polls the processes this raylet started: an exited one is forgotten, and one that
    /// exited before it was ready fails its job's waiting requests (step 4).
    pub(crate) fn reap(&mut self) -> Vec<Action<C, P>> {
        let mut actions = Vec::new();
        for (job_id, job) in self.jobs.iter_mut() {
            let mut i = 0;
            while i < job.procs.len() {
                let exited = job.procs[i].child.as_mut().and_then(|c| c.exited());
                let Some(status) = exited else {
                    i += 1;
                    continue;
                };
                let w = job.procs.remove(i);
                tracing::info!(job = job_id, %status, "worker process exited");
                if w.conn.is_none() {
                    let why = format!("the worker process exited before it was ready ({status})");
                    actions.extend(fail_waiting(job, &why));
                }
            }
        }
        self.jobs
            .retain(|_, job| !job.procs.is_empty() || !job.waiting.is_empty());
        actions
    }

    /// Job `job` ended (every job when `None`: the node stops): its workers are stopped, but
    /// at a job's end one hosting detached actors is kept and told (step 5).
    pub(crate) fn stop(&mut self, job: Option<u64>) -> Vec<Action<C, P>> {
        let jobs: Vec<u64> = self
            .jobs
            .keys()
            .copied()
            .filter(|j| job.is_none_or(|x| x == *j))
            .collect();
        let mut actions = Vec::new();
        let mut stopping = Vec::new();
        for j in jobs {
            let Some(mut entry) = self.jobs.remove(&j) else {
                continue;
            };
            if job.is_none() {
                stopping.extend(entry.procs);
                continue;
            }
            let (kept, gone): (Vec<_>, Vec<_>) =
                entry.procs.into_iter().partition(|w| w.detached > 0);
            stopping.extend(gone);
            if kept.is_empty() {
                continue;
            }
            for w in &kept {
                if let Some(c) = &w.conn {
                    let ended = Msg::JobEvent {
                        job_id: j,
                        finished: true,
                    };
                    actions.push(Action::Send(c.clone(), Box::new(ended)));
                }
            }
            tracing::info!(
                job = j,
                workers = kept.len(),
                "job finished: keeping the workers of its detached actors"
            );
            entry.procs = kept;
            entry.ended = true;
            entry.waiting.clear();
            self.jobs.insert(j, entry);
        }
        actions.push(Action::Stop(stopping));
        actions
    }

    /// The count of detached actors of the worker on `conn` (`WorkerDetached`); one kept past
    /// its job's end stops at 0 (step 5).
    pub(crate) fn detached(&mut self, conn: &C, count: u32) -> Vec<Action<C, P>> {
        let mut stopping = Vec::new();
        for job in self.jobs.values_mut() {
            let Some(i) = job
                .procs
                .iter()
                .position(|w| w.conn.as_ref().is_some_and(|c| c.same(conn)))
            else {
                continue;
            };
            job.procs[i].detached = count;
            if count == 0 && job.ended {
                stopping.push(job.procs.remove(i));
            }
        }
        self.jobs
            .retain(|_, job| !job.ended || !job.procs.is_empty());
        vec![Action::Stop(stopping)]
    }
}

/// Forgets the workers the raylet started that are gone (exited, or their connection closed),
/// so that the next request starts a replacement; one whose connection closed but that still
/// runs is killed: it can no longer be reached.
fn forget_dead<C: Conn, P: Process>(job: &mut Job<C, P>, job_id: u64) -> Vec<Action<C, P>> {
    let mut actions = Vec::new();
    let mut i = 0;
    while i < job.procs.len() {
        let w = &mut job.procs[i];
        let closed = w.conn.as_ref().is_some_and(|c| c.is_closed());
        let exited = w.child.as_mut().is_some_and(|c| c.exited().is_some());
        if w.child.is_none() || !(closed || exited) {
            i += 1;
            continue;
        }
        let w = job.procs.remove(i);
        tracing::info!(
            job = job_id,
            worker = w.index,
            "worker process gone: a replacement starts on the next request"
        );
        actions.extend(w.child.map(Action::Reap));
    }
    actions
}

/// The reply to a `StartWorker`: every ready worker, the first as `index`/`address`, with what
/// it holds: its resources at start and the placement-group bundles it last reported holding
/// (so that a process other than the group's owner can route bundle work to it).
fn started<C, P>(job: &Job<C, P>, request_id: u64) -> Msg {
    let workers: Vec<JobWorker> = job
        .procs
        .iter()
        .filter(|w| w.conn.is_some())
        .map(|w| {
            let mut resources = w.resources.clone();
            resources.extend(
                w.load
                    .iter()
                    .filter(|r| r.name.contains("_group_"))
                    .filter(|r| !resources.iter().any(|m| m.name == r.name))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            JobWorker {
                index: w.index,
                address: w.address.clone(),
                resources,
            }
        })
        .collect();
    let (index, address) = workers
        .first()
        .map(|w| (w.index, w.address.clone()))
        .unwrap_or_default();
    Msg::WorkerStarted {
        request_id,
        index,
        address,
        error: String::new(),
        workers,
    }
}

/// Fails the job's waiting requests with `error`.
fn fail_waiting<C, P>(job: &mut Job<C, P>, error: &str) -> Vec<Action<C, P>> {
    job.waiting
        .drain(..)
        .map(|(from, request_id)| {
            let failed = Msg::WorkerStarted {
                request_id,
                index: 0,
                address: String::new(),
                error: error.to_owned(),
                workers: Vec::new(),
            };
            Action::Send(from, Box::new(failed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A connection: an id, and whether it closed.
    #[derive(Clone, Debug)]
    struct C(u64, Rc<Cell<bool>>);

    impl C {
        fn new(id: u64) -> C {
            C(id, Rc::new(Cell::new(false)))
        }
    }

    impl Conn for C {
        fn same(&self, other: &Self) -> bool {
            self.0 == other.0
        }
        fn is_closed(&self) -> bool {
            self.1.get()
        }
    }

    /// A process: its pid, and its exit code once it exited.
    #[derive(Debug)]
    struct P(u32, Rc<Cell<Option<i32>>>);

    impl Process for P {
        fn pid(&self) -> u32 {
            self.0
        }
        fn exited(&mut self) -> Option<String> {
            self.1.get().map(|c| format!("exit status: {c}"))
        }
    }

    fn proc(pid: u32) -> (P, Rc<Cell<Option<i32>>>) {
        let exit = Rc::new(Cell::new(None));
        (P(pid, exit.clone()), exit)
    }

    /// The `WorkerStarted` answers among `actions`: (connection, request, worker indices,
    /// error).
    fn answers(actions: &[Action<C, P>]) -> Vec<(u64, u64, Vec<u64>, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(c, m) => Some((c, &**m)),
                _ => None,
            })
            .filter_map(|(c, m)| match m {
                Msg::WorkerStarted {
                    request_id,
                    workers,
                    error,
                    ..
                } => Some((
                    c.0,
                    *request_id,
                    workers.iter().map(|w| w.index).collect(),
                    error.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn reaped(actions: &[Action<C, P>]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reap(p) => Some(p.0),
                _ => None,
            })
            .collect()
    }

    fn stopped(actions: &[Action<C, P>]) -> Vec<u64> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Stop(ws) => ws.iter().map(|w| w.index).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_job_gets_one_started_worker_and_every_request_its_answer_once_ready() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(true, 0);
        let (c1, c2, c3, w) = (C::new(1), C::new(2), C::new(3), C::new(10));
        let (spawn, a) = t.start(c1, 1, 7);
        assert!(spawn && a.is_empty());
        assert!(t.spawned(7, Ok(proc(100).0)).is_empty(), "not ready yet");
        let (spawn, a) = t.start(c2, 2, 7);
        assert!(!spawn && a.is_empty(), "one process per job");
        assert!(t.answer(7).is_empty());
        let a = t.ready(&w, 7, 5, "w5".into(), 100, Vec::new());
        assert_eq!(
            answers(&a),
            [
                (1, 1, vec![5], String::new()),
                (2, 2, vec![5], String::new())
            ]
        );
        let (spawn, _) = t.start(c3, 3, 7);
        assert!(!spawn);
        assert_eq!(answers(&t.answer(7)), [(3, 3, vec![5], String::new())]);
    }

    #[test]
    fn spmd_ranks_are_answered_once_all_joined_then_with_whatever_is_alive() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(false, 2);
        let (r1, r2) = (C::new(11), C::new(12));
        let (spawn, _) = t.start(C::new(1), 1, 3);
        assert!(!spawn, "ranks join by themselves");
        assert!(t.answer(3).is_empty());
        assert!(t.ready(&r1, 3, 4, "r1".into(), 0, Vec::new()).is_empty());
        let a = t.ready(&r2, 3, 5, "r2".into(), 0, Vec::new());
        assert_eq!(answers(&a), [(1, 1, vec![4, 5], String::new())]);
        assert!(
            t.closed(&r1).is_empty(),
            "a rank is no child: nothing to reap"
        );
        t.start(C::new(2), 2, 3);
        assert_eq!(answers(&t.answer(3)), [(2, 2, vec![5], String::new())]);
    }

    #[test]
    fn a_worker_of_an_unknown_job_is_stopped() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(true, 0);
        let a = t.ready(&C::new(10), 9, 5, "w".into(), 1, Vec::new());
        assert!(
            matches!(&a[..], [Action::Send(c, m)] if c.0 == 10 && matches!(**m, Msg::Stop { .. }))
        );
    }

    #[test]
    fn a_closed_connection_reaps_its_worker_and_the_next_request_starts_another() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(true, 0);
        let w = C::new(10);
        t.start(C::new(1), 1, 7);
        t.spawned(7, Ok(proc(100).0));
        t.ready(&w, 7, 5, "w".into(), 100, Vec::new());
        assert_eq!(reaped(&t.closed(&w)), [100]);
        assert!(t.will_spawn(7));
        let (spawn, a) = t.start(C::new(2), 2, 7);
        assert!(spawn && a.is_empty());
        // A closed connection noticed first by a request (its close not handled yet).
        let w2 = C::new(20);
        t.spawned(7, Ok(proc(101).0));
        t.ready(&w2, 7, 6, "w2".into(), 101, Vec::new());
        w2.1.set(true);
        let (spawn, a) = t.start(C::new(3), 3, 7);
        assert_eq!(reaped(&a), [101]);
        assert!(spawn);
    }

    #[test]
    fn a_worker_that_exits_before_it_is_ready_fails_the_requests() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(true, 0);
        t.start(C::new(1), 1, 7);
        let (p, exit) = proc(100);
        t.spawned(7, Ok(p));
        exit.set(Some(3));
        let a = t.reap();
        let failed = answers(&a);
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].3.contains("exited before it was ready"),
            "{failed:?}"
        );
        assert_eq!(t.jobs().count(), 0, "nothing left of the job");
        // A process that cannot start fails them at once.
        t.start(C::new(2), 2, 8);
        let a = t.spawned(8, Err("could not start x: no such file".into()));
        assert_eq!(answers(&a)[0].3, "could not start x: no such file");
    }

    #[test]
    fn at_a_jobs_end_workers_with_detached_actors_stay_until_they_have_none() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(false, 2);
        let (r1, r2) = (C::new(11), C::new(12));
        t.start(C::new(1), 1, 3);
        t.ready(&r1, 3, 4, "r1".into(), 0, Vec::new());
        t.ready(&r2, 3, 5, "r2".into(), 0, Vec::new());
        assert!(stopped(&t.detached(&r2, 1)).is_empty());
        let a = t.stop(Some(3));
        assert_eq!(stopped(&a), [4]);
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Send(c, m) if c.0 == 12
                && matches!(**m, Msg::JobEvent { job_id: 3, finished: true })
        )));
        assert_eq!(t.workers().count(), 1);
        assert!(stopped(&t.detached(&r2, 2)).is_empty());
        assert_eq!(stopped(&t.detached(&r2, 0)), [5]);
        assert_eq!(t.jobs().count(), 0);
    }

    #[test]
    fn stopping_the_node_stops_every_worker_and_heartbeats_update_the_load() {
        let mut t: WorkerTable<C, P> = WorkerTable::new(true, 0);
        let w = C::new(10);
        t.start(C::new(1), 1, 7);
        t.spawned(7, Ok(proc(100).0));
        t.ready(&w, 7, 5, "w".into(), 100, Vec::new());
        t.detached(&w, 1);
        let load = vec![Resource {
            name: "CPU".into(),
            total: 2.0,
            available: 1.0,
        }];
        t.heartbeat(&w, load.clone(), "4 KiB pages".into());
        let seen: Vec<_> = t
            .workers()
            .map(|w| (w.load.clone(), w.store_pages.clone()))
            .collect();
        assert_eq!(seen, [(load, "4 KiB pages".to_owned())]);
        assert_eq!(stopped(&t.stop(None)), [5], "detached or not");
        assert_eq!(t.jobs().count(), 0);
    }
}
