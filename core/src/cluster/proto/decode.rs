//! [`decode`]: a verified flatbuffers table as a [`Msg`].

use super::super::wire as fb;
use super::{
    ActorInfo, Arg, ErrorKind, GroupTarget, JobWorker, Msg, Node, ObjectRow, Outcome, PgBundle,
    PgOp, PgRow, ProtoError, Resource, TAG_ACTOR_CALL, TAG_ACTOR_REPLY, TAG_ACTORS,
    TAG_ADD_BORROWERS, TAG_BORROWERS_ADDED, TAG_CANCEL_REPLY, TAG_CANCEL_TASK, TAG_CREATE_ACTOR,
    TAG_DETACH_ACTOR, TAG_FREE_OBJECT, TAG_GCS_COUNTERS, TAG_GCS_FORGET, TAG_GET_NODES,
    TAG_GET_WORKER, TAG_GROUP_CALL, TAG_HEARTBEAT, TAG_JOB_EVENT, TAG_KILL_ACTOR, TAG_KV_GET,
    TAG_KV_PUT, TAG_KV_VALUE, TAG_LIST_ACTORS, TAG_LIST_WORK, TAG_LOOKUP_ACTOR, TAG_NODE_EVENT,
    TAG_NODES, TAG_OBJECT_DATA, TAG_OBJECT_FAILED, TAG_OBJECT_PINNED, TAG_PG_WATCH,
    TAG_PULL_OBJECT, TAG_PUSH_TASK, TAG_REGISTER_ACTOR, TAG_REGISTER_NODE, TAG_REGISTER_WORKER,
    TAG_REGISTERED, TAG_REJOIN_WORKER, TAG_RELEASE_ACTOR, TAG_REMOVE_BORROWER, TAG_START_WORKER,
    TAG_STOP, TAG_SUBSCRIBE, TAG_TASK_DONE, TAG_UNPIN_OBJECT, TAG_WORK, TAG_WORKER_DETACHED,
    TAG_WORKER_INFO, TAG_WORKER_READY, TAG_WORKER_STARTED, TaskRow, tag_name,
};
use flatbuffers::{ForwardsUOffset, Vector};

fn pg_row(g: Option<fb::PgRow<'_>>) -> PgRow {
    let Some(g) = g else {
        return PgRow::default();
    };
    PgRow {
        pg_id: g.pg_id(),
        name: string(g.name()),
        strategy: g.strategy(),
        state: g.state(),
        detached: g.detached(),
        job_id: g.job_id(),
        bundles: g
            .bundles()
            .map(|v| {
                v.iter()
                    .map(|b| PgBundle {
                        index: b.index(),
                        node_id: b.node_id(),
                        resources: resources(b.resources()),
                        cpus: b.cpus().map(|v| v.iter().collect()).unwrap_or_default(),
                        cpu_note: string(b.cpu_note()),
                        gpus: b.gpus().map(|v| v.iter().collect()).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

// ---- decoding -----------------------------------------------------------------------------
//
// Lenient with absent fields (an absent string, vector or table reads as empty / default),
// strict with bytes: everything goes through the verifier first.

fn verify<'a, T>(buf: &'a [u8], table: &'static str) -> Result<T::Inner, ProtoError>
where
    T: flatbuffers::Follow<'a> + flatbuffers::Verifiable + 'a,
{
    flatbuffers::root::<T>(buf).map_err(|e| ProtoError::Invalid {
        table,
        detail: e.to_string(),
    })
}

fn string(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn bytes(v: Option<Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn ids(v: Option<Vector<'_, u64>>) -> Vec<u64> {
    v.map(|v| v.iter().collect()).unwrap_or_default()
}

fn strings(v: Option<Vector<'_, ForwardsUOffset<&str>>>) -> Vec<String> {
    v.map(|v| v.iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn resources(v: Option<Vector<'_, ForwardsUOffset<fb::Resource<'_>>>>) -> Vec<Resource> {
    v.map(|v| {
        v.iter()
            .map(|r| Resource {
                name: string(r.name()),
                total: r.total(),
                available: r.available(),
            })
            .collect()
    })
    .unwrap_or_default()
}

fn node(n: Option<fb::Node<'_>>) -> Node {
    let Some(n) = n else {
        return Node::default();
    };
    Node {
        node_id: n.node_id(),
        address: string(n.address()),
        hostname: string(n.hostname()),
        alive: n.state() == fb::NodeState::Alive,
        resources: resources(n.resources()),
        store_capacity: n.store_capacity(),
        store_used: n.store_used(),
        store_pages: string(n.store_pages()),
        age_s: n.age_s(),
        death: string(n.death()),
        topology: string(n.topology()),
        host_id: string(n.host_id()),
        workers: n.workers(),
        arena_socket: string(n.arena_socket()),
    }
}

fn actor_info(a: Option<fb::ActorInfo<'_>>) -> ActorInfo {
    let Some(a) = a else {
        return ActorInfo::default();
    };
    ActorInfo {
        actor_id: a.actor_id(),
        name: string(a.name()),
        class_name: string(a.class_name()),
        worker: a.worker(),
        node_id: a.node_id(),
        alive: a.state() != fb::ActorState::Dead,
        death: string(a.death()),
        restarting: a.state() == fb::ActorState::Restarting,
        num_restarts: a.num_restarts(),
    }
}

fn args(v: Option<Vector<'_, ForwardsUOffset<fb::Arg<'_>>>>) -> Vec<Arg> {
    v.map(|v| {
        v.iter()
            .map(|a| {
                if a.is_ref() {
                    Arg::Ref {
                        object_id: a.object_id(),
                        holder: a.holder(),
                        len: a.len(),
                    }
                } else {
                    Arg::Inline(bytes(a.inline()))
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

fn error_kind_from_wire(k: fb::ErrorKind) -> ErrorKind {
    match k {
        fb::ErrorKind::Panic => ErrorKind::Panic,
        fb::ErrorKind::ActorDied => ErrorKind::ActorDied,
        fb::ErrorKind::Cancelled => ErrorKind::Cancelled,
        fb::ErrorKind::Infeasible => ErrorKind::Infeasible,
        fb::ErrorKind::Store => ErrorKind::Store,
        fb::ErrorKind::WorkerCrashed => ErrorKind::WorkerCrashed,
        fb::ErrorKind::ObjectLost => ErrorKind::ObjectLost,
        fb::ErrorKind::OwnerDied => ErrorKind::OwnerDied,
        fb::ErrorKind::ReconstructionMaxAttempts => ErrorKind::ReconstructionMaxAttempts,
        fb::ErrorKind::LineageEvicted => ErrorKind::LineageEvicted,
        // Other, and kinds a newer peer may add.
        _ => ErrorKind::Other,
    }
}

/// Verifies `payload` as the table `tag` names and copies it into a [`Msg`].
pub(crate) fn decode(tag: u64, payload: &[u8]) -> Result<Msg, ProtoError> {
    let name = tag_name(tag).ok_or(ProtoError::UnknownTag(tag))?;
    macro_rules! root {
        ($t:ident) => {
            verify::<fb::$t>(payload, name)?
        };
    }
    Ok(match tag {
        TAG_REGISTER_NODE => {
            let t = root!(RegisterNode);
            Msg::RegisterNode {
                request_id: t.request_id(),
                node: node(t.node()),
            }
        }
        TAG_REGISTER_WORKER => {
            let t = root!(RegisterWorker);
            Msg::RegisterWorker {
                request_id: t.request_id(),
                node_id: t.node_id(),
                job_id: t.job_id(),
                address: string(t.address()),
                pid: t.pid(),
                executable: string(t.executable()),
                args: strings(t.args()),
                cwd: string(t.cwd()),
                shm_path: string(t.shm_path()),
                host_id: string(t.host_id()),
            }
        }
        TAG_REGISTERED => {
            let t = root!(Registered);
            Msg::Registered {
                request_id: t.request_id(),
                id: t.id(),
                job_id: t.job_id(),
                error: string(t.error()),
                saved: t.saved(),
            }
        }
        TAG_HEARTBEAT => {
            let t = root!(Heartbeat);
            Msg::Heartbeat {
                node_id: t.node_id(),
                resources: resources(t.resources()),
                store_used: t.store_used(),
                store_pages: string(t.store_pages()),
            }
        }
        TAG_GET_NODES => Msg::GetNodes {
            request_id: root!(GetNodes).request_id(),
        },
        TAG_NODES => {
            let t = root!(Nodes);
            Msg::Nodes {
                request_id: t.request_id(),
                nodes: t
                    .nodes()
                    .map(|v| v.iter().map(|n| node(Some(n))).collect())
                    .unwrap_or_default(),
            }
        }
        TAG_GET_WORKER => {
            let t = root!(GetWorker);
            Msg::GetWorker {
                request_id: t.request_id(),
                index: t.index(),
            }
        }
        TAG_WORKER_INFO => {
            let t = root!(WorkerInfo);
            Msg::WorkerInfo {
                request_id: t.request_id(),
                index: t.index(),
                node_id: t.node_id(),
                job_id: t.job_id(),
                address: string(t.address()),
                alive: t.alive(),
                shm_path: string(t.shm_path()),
                host_id: string(t.host_id()),
            }
        }
        TAG_KV_PUT => {
            let t = root!(KvPut);
            Msg::KvPut {
                request_id: t.request_id(),
                key: string(t.key()),
                value: bytes(t.value()),
            }
        }
        TAG_KV_GET => {
            let t = root!(KvGet);
            Msg::KvGet {
                request_id: t.request_id(),
                key: string(t.key()),
            }
        }
        TAG_KV_VALUE => {
            let t = root!(KvValue);
            Msg::KvValue {
                request_id: t.request_id(),
                found: t.found(),
                value: bytes(t.value()),
            }
        }
        TAG_REGISTER_ACTOR => {
            let t = root!(RegisterActor);
            Msg::RegisterActor {
                request_id: t.request_id(),
                actor: actor_info(t.actor()),
            }
        }
        TAG_LOOKUP_ACTOR => {
            let t = root!(LookupActor);
            Msg::LookupActor {
                request_id: t.request_id(),
                name: string(t.name()),
                actor_id: t.actor_id(),
            }
        }
        TAG_ACTOR_REPLY => {
            let t = root!(ActorReply);
            Msg::ActorReply {
                request_id: t.request_id(),
                found: t.found(),
                actor: actor_info(t.actor()),
                error: string(t.error()),
            }
        }
        TAG_LIST_ACTORS => Msg::ListActors {
            request_id: root!(ListActors).request_id(),
        },
        TAG_ACTORS => {
            let t = root!(Actors);
            Msg::Actors {
                request_id: t.request_id(),
                actors: t
                    .actors()
                    .map(|v| v.iter().map(|a| actor_info(Some(a))).collect())
                    .unwrap_or_default(),
            }
        }
        TAG_SUBSCRIBE => Msg::Subscribe {
            request_id: root!(Subscribe).request_id(),
        },
        TAG_NODE_EVENT => Msg::NodeEvent {
            node: node(root!(NodeEvent).node()),
        },
        TAG_JOB_EVENT => {
            let t = root!(JobEvent);
            Msg::JobEvent {
                job_id: t.job_id(),
                finished: t.finished(),
            }
        }
        TAG_STOP => Msg::Stop {
            reason: string(root!(Stop).reason()),
        },
        TAG_START_WORKER => {
            let t = root!(StartWorker);
            Msg::StartWorker {
                request_id: t.request_id(),
                job_id: t.job_id(),
                executable: string(t.executable()),
                args: strings(t.args()),
                cwd: string(t.cwd()),
                env: t
                    .env()
                    .map(|v| {
                        v.iter()
                            .map(|kv| (string(kv.key()), string(kv.value())))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
        TAG_WORKER_STARTED => {
            let t = root!(WorkerStarted);
            Msg::WorkerStarted {
                request_id: t.request_id(),
                index: t.index(),
                address: string(t.address()),
                error: string(t.error()),
                workers: t
                    .workers()
                    .map(|v| {
                        v.iter()
                            .map(|w| JobWorker {
                                index: w.index(),
                                address: string(w.address()),
                                resources: resources(w.resources()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
        TAG_WORKER_READY => {
            let t = root!(WorkerReady);
            Msg::WorkerReady {
                job_id: t.job_id(),
                index: t.index(),
                address: string(t.address()),
                pid: t.pid(),
                resources: resources(t.resources()),
            }
        }
        TAG_PUSH_TASK => {
            let t = root!(PushTask);
            Msg::PushTask {
                task_id: t.task_id(),
                function: string(t.function()),
                args: args(t.args()),
                resources: resources(t.resources()),
                name: string(t.name()),
                max_retries: t.max_retries(),
                retry_on: t
                    .retry_on()
                    .map(|v| v.iter().map(str::to_owned).collect())
                    .unwrap_or_default(),
            }
        }
        TAG_TASK_DONE => {
            let t = root!(TaskDone);
            let outcome = if !t.ok() {
                Outcome::Failed {
                    kind: error_kind_from_wire(t.error_kind()),
                    task: string(t.error_task()),
                    message: string(t.error_message()),
                    cause: bytes(t.inline()),
                }
            } else if t.stored() {
                Outcome::Stored { len: t.len() }
            } else {
                Outcome::Inline(bytes(t.inline()))
            };
            Msg::TaskDone {
                task_id: t.task_id(),
                outcome,
            }
        }
        TAG_CREATE_ACTOR => {
            let t = root!(CreateActor);
            Msg::CreateActor {
                actor_id: t.actor_id(),
                class_name: string(t.class_name()),
                args: args(t.args()),
                resources: resources(t.resources()),
                name: string(t.name()),
                max_concurrency: t.max_concurrency(),
                max_restarts: t.max_restarts(),
                group: (t.group_rank(), t.group_world()),
                exception_retries: super::ActorRetries {
                    max_task_retries: t.max_task_retries(),
                    retry_exceptions: t.retry_exceptions(),
                    retry_on: t
                        .retry_on()
                        .map(|v| v.iter().map(str::to_owned).collect())
                        .unwrap_or_default(),
                },
            }
        }
        TAG_ACTOR_CALL => {
            let t = root!(ActorCall);
            Msg::ActorCall {
                actor_id: t.actor_id(),
                call_id: t.call_id(),
                method: string(t.method()),
                args: args(t.args()),
            }
        }
        TAG_CANCEL_TASK => {
            let t = root!(CancelTask);
            Msg::CancelTask {
                request_id: t.request_id(),
                task_id: t.task_id(),
                force: t.force(),
                recursive: t.recursive(),
            }
        }
        TAG_CANCEL_REPLY => {
            let t = root!(CancelReply);
            Msg::CancelReply {
                request_id: t.request_id(),
                cancelled: t.cancelled(),
                ending: t.ending(),
            }
        }
        TAG_KILL_ACTOR => {
            let t = root!(KillActor);
            Msg::KillActor {
                actor_id: t.actor_id(),
                restart: t.restart(),
            }
        }
        TAG_PULL_OBJECT => {
            let t = root!(PullObject);
            Msg::PullObject {
                request_id: t.request_id(),
                object_id: t.object_id(),
                priority: t.priority(),
                pin: t.pin(),
            }
        }
        TAG_OBJECT_DATA => {
            let t = root!(ObjectData);
            Msg::ObjectData {
                request_id: t.request_id(),
                found: t.found(),
                len: t.len(),
                inline: bytes(t.inline()),
                error: string(t.error()),
                redirect: t.redirect(),
            }
        }
        TAG_FREE_OBJECT => Msg::FreeObject {
            object_id: root!(FreeObject).object_id(),
        },
        TAG_OBJECT_PINNED => {
            let t = root!(ObjectPinned);
            Msg::ObjectPinned {
                request_id: t.request_id(),
                pin_id: t.pin_id(),
                offset: t.offset(),
                len: t.len(),
                arena: t.arena(),
            }
        }
        TAG_OBJECT_FAILED => {
            let t = root!(ObjectFailed);
            Msg::ObjectFailed {
                request_id: t.request_id(),
                kind: error_kind_from_wire(t.error_kind()),
                task: string(t.error_task()),
                message: string(t.error_message()),
                cause: bytes(t.error_cause()),
            }
        }
        _ if PgOp::from_tag(tag).is_some() => {
            let t = root!(PgMsg);
            Msg::Pg {
                op: PgOp::from_tag(tag).unwrap_or(PgOp::Reply),
                request_id: t.request_id(),
                group: pg_row(t.group()),
                error: string(t.error()),
                groups: t
                    .groups()
                    .map(|v| v.iter().map(|g| pg_row(Some(g))).collect())
                    .unwrap_or_default(),
            }
        }
        TAG_REJOIN_WORKER => {
            let t = root!(RejoinWorker);
            Msg::RejoinWorker {
                request_id: t.request_id(),
                index: t.index(),
                node_id: t.node_id(),
                job_id: t.job_id(),
                address: string(t.address()),
                shm_path: string(t.shm_path()),
                host_id: string(t.host_id()),
                driver: t.driver(),
            }
        }
        TAG_GCS_FORGET => {
            let t = root!(GcsForget);
            Msg::GcsForget {
                kind: t.kind(),
                id: t.id(),
                name: string(t.name()),
            }
        }
        TAG_GCS_COUNTERS => {
            let t = root!(GcsCounters);
            Msg::GcsCounters {
                version: t.version(),
                next_node: t.next_node(),
                next_worker: t.next_worker(),
                next_job: t.next_job(),
                address: string(t.address()),
            }
        }
        TAG_PG_WATCH => {
            let t = root!(PgWatch);
            Msg::PgWatch {
                request_id: t.request_id(),
                pg_id: t.pg_id(),
            }
        }
        TAG_DETACH_ACTOR => Msg::DetachActor {
            actor_id: root!(DetachActor).actor_id(),
        },
        TAG_WORKER_DETACHED => {
            let t = root!(WorkerDetached);
            Msg::WorkerDetached {
                index: t.index(),
                count: t.count(),
            }
        }
        TAG_GROUP_CALL => {
            let t = root!(GroupCall);
            Msg::GroupCall {
                caller: t.caller(),
                method: string(t.method()),
                args: args(t.args()),
                targets: t
                    .targets()
                    .map(|v| {
                        v.iter()
                            .map(|g| GroupTarget {
                                actor_id: g.actor_id(),
                                call_id: g.call_id(),
                                worker: g.worker(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                fanout: t.fanout(),
            }
        }
        TAG_RELEASE_ACTOR => Msg::ReleaseActor {
            actor_id: root!(ReleaseActor).actor_id(),
        },
        TAG_UNPIN_OBJECT => Msg::UnpinObject {
            pin_id: root!(UnpinObject).pin_id(),
        },
        TAG_LIST_WORK => Msg::ListWork {
            request_id: root!(ListWork).request_id(),
        },
        TAG_ADD_BORROWERS => {
            let t = root!(AddBorrowers);
            Msg::AddBorrowers {
                request_id: t.request_id(),
                objects: ids(t.objects()),
            }
        }
        TAG_BORROWERS_ADDED => {
            let t = root!(BorrowersAdded);
            Msg::BorrowersAdded {
                request_id: t.request_id(),
                missing: ids(t.missing()),
            }
        }
        TAG_REMOVE_BORROWER => Msg::RemoveBorrower {
            object_id: root!(RemoveBorrower).object_id(),
        },
        TAG_WORK => {
            let t = root!(Work);
            Msg::Work {
                request_id: t.request_id(),
                tasks: t
                    .tasks()
                    .map(|v| {
                        v.iter()
                            .map(|r| TaskRow {
                                task_id: r.task_id(),
                                name: string(r.name()),
                                state: string(r.state()),
                                owner: r.owner(),
                                worker: r.worker(),
                                node_id: r.node_id(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                objects: t
                    .objects()
                    .map(|v| {
                        v.iter()
                            .map(|r| ObjectRow {
                                object_id: r.object_id(),
                                size: r.size(),
                                kind: string(r.kind()),
                                role: string(r.role()),
                                holder: r.holder(),
                                owner: r.owner(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                partial: t.partial(),
            }
        }
        _ => return Err(ProtoError::UnknownTag(tag)),
    })
}
