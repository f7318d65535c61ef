//! Owning remote work: tasks, actor creations and actor calls this process submits to worker
//! processes (`PushTask`, `CreateActor`, `ActorCall`), their completion (`TaskDone`), and what
//! happens to them when the worker running them dies (failed, or retried elsewhere).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::objects::{PullDone, RemoteObject};
use super::peer::Peer;
use super::placement::{request_pairs, request_resources};
use super::proto::{Arg, ErrorKind, Msg, Outcome};
use super::supervision::{NewOwned, RemoteActor};
use super::worker::Cluster;
use super::{CALL_TIMEOUT, cluster_error, wait_reply};
use crate::actor::{ActorCell, ActorOptions};
use crate::error::{Error, TaskError};
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectValue, Payload};
use crate::resources::ResourceRequest;
use crate::runtime::RuntimeInner;
use crate::sync::lock;
use crate::task::ArgSlot;

/// A task or actor call this process owns that runs elsewhere.
pub(super) struct InFlight {
    pub(super) cell: Arc<ObjectCell>,
    /// The function, method or actor class (for listings).
    pub(super) name: &'static str,
    /// Worker index it was pushed to.
    pub(super) worker: u64,
    /// Node slot it counts against, and what it holds there (released when done).
    pub(super) node: Option<usize>,
    pub(super) load: Vec<(String, f64)>,
    /// Kept alive until the task is done (argument cells the executor may pull).
    pub(super) args: Box<[ArgSlot]>,
    /// How to run a task again elsewhere if its worker dies (tasks only, not actor calls).
    pub(super) retry: Option<Retry>,
    /// What it is to an actor (its creation, or a call), for `supervision.rs`.
    pub(super) actor: Option<ActorFlight>,
}

/// An actor's creation or call in flight.
pub(super) enum ActorFlight {
    /// The creation of actor `.0` (first, or a restart).
    Create(u64),
    /// A call of `method` on actor `actor_id`, which may run `left` more times if the
    /// actor's worker dies (`max_task_retries`).
    Call {
        actor_id: u64,
        method: &'static str,
        left: u32,
    },
}

/// A task's submission, kept to run it again after its worker process died.
pub(super) struct Retry {
    pub(super) function: &'static str,
    pub(super) request: ResourceRequest,
    pub(super) name: Option<String>,
    /// Retries of a panicking body, done by the executor (sent with the task).
    pub(super) max_retries: u32,
    /// Retries after a worker death this task may still take, and how many it had.
    pub(super) left: u32,
    pub(super) system: u32,
}

/// The longest pause before retrying a task whose worker died (the first is
/// `task_retry_delay`, doubled at each retry up to this).
const RETRY_DELAY_CAP: Duration = Duration::from_secs(1);

/// The pause before retry number `done + 1` of a task whose worker died.
fn retry_delay(first: Duration, done: u32) -> Duration {
    first
        .checked_mul(1u32 << done.min(16))
        .unwrap_or(RETRY_DELAY_CAP)
        .min(RETRY_DELAY_CAP)
}

impl Cluster {
    /// Turns an argument slot into its wire form, entering local objects in the escape table
    /// so the executor can pull them.
    pub(super) fn wire_arg(&self, rt: &Arc<RuntimeInner>, slot: &ArgSlot) -> Arg {
        match slot {
            ArgSlot::Value(v) => self.value_arg(v, None),
            ArgSlot::Ref(cell) => match cell.get() {
                Some(Ok(v)) => self.value_arg(v, Some(cell)),
                _ => {
                    cell.escape(rt);
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: 0,
                    }
                }
            },
        }
    }

    fn value_arg(&self, v: &ObjectValue, cell: Option<&Arc<ObjectCell>>) -> Arg {
        match &v.data {
            Payload::Inline(b) if v.nested.is_empty() || cell.is_none() => Arg::Inline(b.to_vec()),
            Payload::Remote(r) => Arg::Ref {
                object_id: r.id,
                holder: r.holder,
                len: r.len,
            },
            _ => match cell {
                Some(cell) => {
                    if let Some(rt) = self.runtime() {
                        cell.escape(&rt);
                    }
                    Arg::Ref {
                        object_id: cell.id().as_u64(),
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
                // A stored value given by value: hold it under a fresh id to be pulled.
                None => {
                    let id = self
                        .runtime()
                        .map(|rt| rt.next_object_id().as_u64())
                        .unwrap_or(0);
                    lock(&self.held).insert(id, v.clone());
                    Arg::Ref {
                        object_id: id,
                        holder: self.index,
                        len: v.len() as u64,
                    }
                }
            },
        }
    }

    /// Submits a task to a worker process elsewhere; completes `cell` when it is done. The
    /// executor retries a panicking body `max_retries` times; if the worker dies, the task runs
    /// again on a live worker, up to `system_retries` times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        function: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_retries: u32,
        system_retries: u32,
    ) {
        self.push_task(
            rt,
            cell,
            args,
            Retry {
                function,
                request: request.clone(),
                name: name.map(str::to_owned),
                max_retries,
                left: system_retries,
                system: system_retries,
            },
        );
    }

    /// Places and pushes a task (a first attempt or a retry).
    fn push_task(
        &self,
        rt: &Arc<RuntimeInner>,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        retry: Retry,
    ) {
        let function = retry.function;
        let request = &retry.request;
        let max_retries = retry.max_retries;
        let name = retry.name.clone();
        let name = name.as_deref();
        let wire_args: Vec<Arg> = args.iter().map(|a| self.wire_arg(rt, a)).collect();
        // Prefer the worker that holds the largest argument (Ray's locality-aware leasing),
        // as long as its node is not busy.
        let preferred = wire_args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref { holder, len, .. } if *holder != self.index && *len > 0 => {
                    Some((*len, *holder))
                }
                _ => None,
            })
            .max()
            .map(|(_, holder)| holder);
        let (node, worker, peer) = match self.place(request, preferred) {
            Ok(p) => p,
            Err(e) => {
                cell.complete(Err(e));
                return;
            }
        };
        let task_id = cell.id().as_u64();
        let load = request_pairs(request);
        let resources = request_resources(request);
        self.take_load(node, worker, &load);
        lock(&self.in_flight).insert(
            task_id,
            InFlight {
                cell,
                name: function,
                worker,
                node: Some(node),
                load,
                args,
                retry: Some(retry),
                actor: None,
            },
        );
        peer.send(Msg::PushTask {
            task_id,
            function: function.to_owned(),
            args: wire_args,
            resources,
            name: name.unwrap_or_default().to_owned(),
            max_retries,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
    }

    /// Creates an actor in a worker process elsewhere; `created` completes when its
    /// constructor has run there. Returns the actor's location.
    pub(crate) fn create_actor_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
    ) -> Result<(), Error> {
        let request = &options.resources;
        let name = options.name.as_deref();
        let max_concurrency = options.max_concurrency as u32;
        let max_restarts = options.max_restarts;
        let (node, worker, peer) = self.place(request, None)?;
        let actor_id = actor.id().as_u64();
        let node_id = lock(&self.nodes).get(node).map(|s| s.node_id).unwrap_or(0);
        // The directory first, so a taken name fails before anything runs.
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::RegisterActor {
            request_id,
            actor: super::proto::ActorInfo {
                actor_id,
                name: name.unwrap_or_default().to_owned(),
                class_name: actor.class_name().to_owned(),
                worker,
                node_id,
                alive: true,
                ..Default::default()
            },
        });
        if let Msg::ActorReply { error, .. } = wait_reply(rx, CALL_TIMEOUT, "registering an actor")?
            && !error.is_empty()
        {
            return Err(match name {
                Some(n) if error.contains("taken") => Error::ActorNameTaken { name: n.to_owned() },
                _ => cluster_error("registering an actor", error),
            });
        }
        let remote = RemoteActor::at(worker, peer.clone(), options.max_task_retries);
        actor.set_remote(remote.clone());
        self.own_actor(NewOwned {
            cell: actor,
            remote,
            args: &args,
            request,
            name,
            max_concurrency,
            max_restarts,
            worker,
            node,
        });
        let wire_args: Vec<Arg> = args.iter().map(|a| self.wire_arg(rt, a)).collect();
        // An actor holds what it asked for on its worker while it lives.
        self.take_load(node, worker, &request_pairs(request));
        lock(&self.in_flight).insert(
            actor_id,
            InFlight {
                cell: created,
                name: actor.class_name(),
                worker,
                node: None,
                load: Vec::new(),
                args: args.into_boxed_slice(),
                retry: None,
                actor: Some(ActorFlight::Create(actor_id)),
            },
        );
        peer.send(Msg::CreateActor {
            actor_id,
            class_name: actor.class_name().to_owned(),
            args: wire_args,
            resources: request_resources(request),
            name: name.unwrap_or_default().to_owned(),
            max_concurrency,
            max_restarts,
        });
        if peer.is_closed() {
            self.worker_lost(worker, &peer.closed_error().to_string());
        }
        Ok(())
    }

    /// Sends a call to a remote actor (parked while it restarts); completes `cell` with its
    /// result.
    pub(crate) fn call_remote(
        &self,
        remote: &RemoteActor,
        actor_id: u64,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
    ) {
        self.send_call(remote, actor_id, method, cell, args);
    }

    /// Looks up where actor `actor_id` lives (the GCS directory).
    pub(crate) fn locate_actor(
        &self,
        actor_id: u64,
        name: &str,
    ) -> Result<super::proto::ActorInfo, Error> {
        let _guard = self.io.enter();
        let rx = self.gcs.request(|request_id| Msg::LookupActor {
            request_id,
            name: name.to_owned(),
            actor_id,
        });
        match wait_reply(rx, CALL_TIMEOUT, "looking up an actor")? {
            Msg::ActorReply {
                found: true, actor, ..
            } => Ok(actor),
            _ => Err(Error::ActorNotFound {
                name: if name.is_empty() {
                    format!("{actor_id:#x}")
                } else {
                    name.to_owned()
                },
            }),
        }
    }

    /// A remote actor's proxy target (an actor another process owns).
    pub(crate) fn remote_actor(&self, worker: u64) -> RemoteActor {
        RemoteActor::at(worker, self.peer(worker), 0)
    }

    /// A task or call we own finished elsewhere.
    pub(super) fn task_done(&self, from: &Arc<Peer>, task_id: u64, outcome: Outcome) {
        let f = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.remove(&task_id) {
                // Only the worker it was pushed to completes it: a worker declared dead (its
                // node was cut off) may still answer for an attempt since retried elsewhere.
                Some(f) if from.name != format!("w{}", f.worker) => {
                    tracing::debug!(task_id, from = %from.name, "completion from a previous attempt's worker ignored");
                    in_flight.insert(task_id, f);
                    return;
                }
                Some(f) => f,
                None => {
                    tracing::debug!(task_id, "completion of an unknown task ignored");
                    return;
                }
            }
        };
        self.release_load(f.node, f.worker, &f.load);
        let value = match outcome {
            Outcome::Inline(bytes) => Ok(ObjectValue::inline(Bytes::from(bytes))),
            Outcome::Stored { len } => Ok(ObjectValue::remote(RemoteObject::new(
                task_id,
                f.worker,
                len,
                self.me.get().cloned().unwrap_or_default(),
            ))),
            Outcome::Failed {
                kind,
                task,
                message,
            } => Err(wire_error(kind, task, message, task_id)),
        };
        f.cell.complete(value);
    }

    /// Worker `index` is gone: its actors restart or die (`supervision.rs`), its tasks are
    /// retried or fail, and so are the calls in flight there.
    pub(super) fn worker_lost(&self, index: u64, reason: &str) {
        lock(&self.dead_workers).insert(index);
        // Before the in-flight table is drained: see the restart protocol's argument.
        self.actors_lost(index, reason);
        self.proxies_lost(index);
        let lost: Vec<(u64, InFlight)> = {
            let mut m = lock(&self.in_flight);
            let ids: Vec<u64> = m
                .iter()
                .filter(|(_, f)| f.worker == index)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| m.remove(&id).map(|f| (id, f)))
                .collect()
        };
        let first_delay = self
            .runtime()
            .map_or(Duration::from_millis(50), |rt| rt.config.task_retry_delay);
        let mut again = Vec::new();
        let mut lost = lost;
        // Calls park for a restart in submission order.
        lost.sort_by_key(|(id, _)| *id);
        for (_, f) in lost {
            self.release_load(f.node, f.worker, &f.load);
            match &f.actor {
                Some(ActorFlight::Call { .. }) => {
                    self.actor_call_lost(index, reason, f);
                    continue;
                }
                // A restart re-creates it.
                Some(ActorFlight::Create(id)) if self.is_restarting(*id) => continue,
                _ => {}
            }
            match f.retry {
                Some(mut r) if r.left > 0 => {
                    let delay = retry_delay(first_delay, r.system - r.left);
                    r.left -= 1;
                    again.push((delay, f.cell, f.args, r));
                }
                _ => {
                    f.cell.complete(Err(cluster_error(
                        format!("worker process {index}"),
                        format!("it died or became unreachable ({reason})"),
                    )));
                }
            }
        }
        if !again.is_empty() {
            // Placing may wait on the GCS and a raylet (which starts a replacement worker):
            // never on an I/O thread. Each retry waits its backoff first.
            again.sort_by_key(|(delay, ..)| *delay);
            let me = self.me.get().cloned().unwrap_or_default();
            let since = Instant::now();
            std::thread::spawn(move || {
                for (delay, cell, args, r) in again {
                    if let Some(pause) = delay.checked_sub(since.elapsed()) {
                        std::thread::sleep(pause);
                    }
                    let Some((c, rt)) = me
                        .upgrade()
                        .and_then(|c| c.runtime().map(|rt| (c, rt)))
                        .filter(|(c, _)| !c.stopped.load(std::sync::atomic::Ordering::Acquire))
                    else {
                        cell.complete(Err(Error::ShutDown));
                        continue;
                    };
                    tracing::info!(task = %cell.id(), left = r.left, ?delay, "retrying a task whose worker died");
                    c.push_task(&rt, cell, args, r);
                }
            });
        }
        for s in lock(&self.nodes).iter_mut() {
            s.workers.retain(|w| w.index != index);
        }
        self.drop_borrower(index);
        self.attach_worker_lost(index);
        let failed: Vec<PullDone> = {
            let mut pulls = lock(&self.pulls);
            let name = format!("w{index}");
            let ids: Vec<u64> = pulls
                .iter()
                .filter(|(_, p)| p.peer == name)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pulls.remove(&id).map(|p| p.done))
                .collect()
        };
        for done in failed {
            done(Err(cluster_error(
                format!("worker process {index}"),
                format!("unreachable ({reason})"),
            )));
        }
    }
}

fn wire_error(kind: ErrorKind, task: String, message: String, id: u64) -> Error {
    match kind {
        ErrorKind::Panic => Error::Task(TaskError::remote_panic(&task, &message)),
        ErrorKind::ActorDied => Error::ActorDied {
            actor: crate::id::ActorId::from_u64(id),
            class: task,
            reason: message,
        },
        ErrorKind::Cancelled => Error::Cancelled {
            object: ObjectId::from_u64(id),
            task,
        },
        ErrorKind::Infeasible | ErrorKind::Store | ErrorKind::Other => Error::Cluster {
            what: if task.is_empty() {
                "remote task".into()
            } else {
                task
            },
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_a_second() {
        let first = Duration::from_millis(50);
        let delays: Vec<u64> = (0..7)
            .map(|done| retry_delay(first, done).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry_delay(first, u32::MAX), RETRY_DELAY_CAP);
        assert_eq!(retry_delay(Duration::ZERO, 3), Duration::ZERO);
    }
}
