//! Cancel and kill across processes: an owner cancelling work that runs in another worker
//! process (`CancelTask`, `CancelReply`), that worker's side of it, and what an owner does at
//! once when it kills a remote actor.
//!
//! # Cancel
//!
//! 1. The owner finds the task or actor call in its `in_flight` table (only the owner cancels:
//!    a borrowed reference's cancel is `false`).
//! 2. A task is cancelled whatever its state there: the owner stops retrying it, fails its
//!    result with `Cancelled` at once, and sends `CancelTask { request_id: 0 }` (no answer
//!    wanted: a recursive cancel reaches this step on an I/O thread, which must not block).
//! 3. An actor call is cancelled only if it has not started, which only its host knows: the
//!    owner sends `CancelTask` with a request id and waits (bounded) for `CancelReply`.
//! 4. The executing worker looks the id up among the work pushed to it and cancels it there as
//!    `crate::cancel` does in one process (a queued task never runs; a running one is
//!    interrupted; its own children are cancelled in turn). The result's completion sends
//!    `TaskDone` (failed, `Cancelled`) before the `CancelReply`, on the same connection, so an
//!    owner told `cancelled: true` already holds the failed result.
//! 5. `force` with the task running: the worker process exits after answering, if a raylet
//!    started it (the raylet starts another on demand; its owners see it die, as a crash:
//!    their other work there fails, or is retried). A rank of an `srun`/`mpirun` job is not
//!    ended (nothing would start it again): force acts as a plain cancel there.
//!
//! # Kill
//!
//! `manta::kill` of a remote actor sends `KillActor` to its host (which fails the running and
//! queued calls there, each answered by `TaskDone`) and, without waiting for it, fails this
//! process's calls in flight to the actor with `ActorDied`, gives back the placement load the
//! actor's creation counted, and records the death in the GCS's directory (answered before
//! `kill` returns, so the name is free at once).

use crate::sync::Arc;

use super::proto::{ActorInfo, Msg};
use super::task_manager::Cancelling;
use super::worker::{Cluster, IO_THREAD};
use super::{call_timeout, wait_reply};
use crate::cancel::CancelOptions;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::ObjectCell;
use crate::task::RUNNING;

/// Prefix of a pull's error text when the object's task was cancelled, so that a task whose
/// argument was cancelled fails with `Cancelled` in any process (followed by the task name).
pub(super) const CANCELLED_OBJECT: &str = "cancelled: ";

impl Cluster {
    /// Steps 1–3: cancels work this process owns that runs elsewhere.
    pub(crate) fn cancel_remote(&self, cell: &Arc<ObjectCell>, options: CancelOptions) -> bool {
        let id = cell.id().as_u64();
        let Some(Cancelling { worker, call, name }) = self.tasks.begin_cancel(id) else {
            return false;
        };
        let peer = self.peer(worker);
        let cancel = |request_id| Msg::CancelTask {
            request_id,
            task_id: id,
            force: options.force,
            recursive: options.recursive,
        };
        let on_io = std::thread::current().name() == Some(IO_THREAD);
        let answer_wanted = call || (options.force && !on_io);
        if !answer_wanted {
            // The result first: the worker's `TaskDone` (failed, `Cancelled`) may come back
            // before this thread runs again.
            let cancelled = cell.complete(Err(Error::Cancelled {
                object: cell.id(),
                task: name.to_owned(),
            }));
            peer.send(cancel(0));
            return cancelled;
        }
        if !call {
            // Step 5, seen from the owner: wait for the answer, then for the worker to be
            // gone if it ends, so that the next task is not placed on the dying worker.
            let cancelled = cell.complete(Err(Error::Cancelled {
                object: cell.id(),
                task: name.to_owned(),
            }));
            let rx = {
                let _guard = self.io.enter();
                peer.request(cancel)
            };
            if let Ok(Msg::CancelReply { ending: true, .. }) =
                wait_reply(rx, call_timeout(), "cancelling a task")
            {
                let deadline = std::time::Instant::now() + call_timeout();
                while !peer.is_closed() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            return cancelled;
        }
        let _guard = self.io.enter();
        let rx = peer.request(cancel);
        match wait_reply(rx, call_timeout(), "cancelling an actor call") {
            Ok(Msg::CancelReply { cancelled, .. }) => cancelled,
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(call = id, error = %e, "cancelling an actor call: no answer");
                false
            }
        }
    }

    /// Steps 4–5, on the executing worker's I/O thread.
    pub(super) fn cancel_pushed(
        &self,
        peer: &Arc<super::peer::Peer>,
        request_id: u64,
        task_id: u64,
        options: CancelOptions,
    ) {
        let cell = self.tasks.executing_result(task_id);
        let (cancelled, running) = match &cell {
            Some(cell) => {
                let running = cell.producer().is_some_and(|t| t.state() == RUNNING);
                (crate::cancel::cancel_cell(cell, options), running)
            }
            None => (false, false),
        };
        let restartable = std::env::var_os(crate::config::vars::WORKER_RAYLET).is_some();
        let ending = cancelled && running && options.force && restartable;
        if request_id != 0 {
            peer.send(Msg::CancelReply {
                request_id,
                cancelled,
                ending,
            });
        }
        if ending {
            // Let the writer put the answer (and the cancelled task's TaskDone) on the wire.
            std::thread::sleep(std::time::Duration::from_millis(20));
            eprintln!(
                "manta: worker {} (pid {}) ends: task {task_id:#x} was cancelled with force",
                self.index,
                std::process::id()
            );
            std::process::exit(1);
        }
    }

    /// `manta::kill` of remote actor `actor_id` (module docs, "Kill"): fails this process's
    /// calls in flight to it at once, without waiting for its host.
    pub(crate) fn fail_calls_to(&self, actor_id: u64, error: &Error) {
        for cell in self.tasks.take_calls_to(actor_id) {
            cell.complete(Err(error.clone()));
        }
    }

    /// Gives back the placement load remote actor `actor_id`'s creation counted, if this
    /// process created it (every kill for good, also when the last handle of an unnamed actor
    /// goes).
    pub(crate) fn release_actor_load(&self, actor_id: u64) {
        let load = self.actors.take_load(actor_id);
        if let Some((node, worker, load)) = load {
            self.release_load(Some(node), worker, &load);
        }
    }

    /// `manta::kill` of an actor hosted here for another process: kills it here and records
    /// its death (waiting for the GCS's answer, as a remote kill does).
    pub(crate) fn kill_hosted(&self, actor_id: u64) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        let Some(cell) = rt.kill_pushed(actor_id, false) else {
            return false;
        };
        self.record_killed_actor(actor_id, cell.class_name(), self.index);
        true
    }

    /// Records in the GCS's directory that `actor` was killed, and waits for the answer (so
    /// that `get_actor` of its name fails, and a new actor may take it, once `kill` returns).
    pub(crate) fn record_killed_actor(&self, actor_id: u64, class_name: &str, worker: u64) {
        let actor = ActorInfo {
            actor_id,
            name: String::new(),
            class_name: class_name.to_owned(),
            worker,
            node_id: 0,
            alive: false,
            death: "killed by manta::kill".into(),
            ..Default::default()
        };
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| Msg::RegisterActor { request_id, actor });
        if let Err(e) = wait_reply(rx, call_timeout(), "recording an actor's death") {
            tracing::warn!(actor = actor_id, error = %e, "the GCS did not record a killed actor");
        }
    }
}

/// The error text a holder answers a pull of a failed object with (see [`CANCELLED_OBJECT`]).
pub(super) fn pull_error_text(e: &Error) -> String {
    match e {
        Error::Cancelled { task, .. } => format!("{CANCELLED_OBJECT}{task}"),
        other => other.to_string(),
    }
}

/// The error of a failed pull, from the holder's text.
pub(super) fn pull_error(object_id: u64, text: String) -> Error {
    match text.strip_prefix(CANCELLED_OBJECT) {
        Some(task) => Error::Cancelled {
            object: ObjectId::from_u64(object_id),
            task: task.to_owned(),
        },
        None => super::cluster_error("pulling an object", text),
    }
}
