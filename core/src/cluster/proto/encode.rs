//! [`encode`]: a [`Msg`] as its flatbuffers table.

use super::super::wire as fb;
use super::{
    ActorInfo, Arg, ErrorKind, JobWorker, Msg, Node, ObjectRow, Outcome, PgBundle, PgRow, Resource,
    TaskRow,
};
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

// ---- encoding -----------------------------------------------------------------------------
//
// Empty strings and vectors are left out of the table (absent decodes as empty), which keeps
// the hot messages small: a task's `name`, a success's error strings.

type Offsets<'a, T> = WIPOffset<Vector<'a, ForwardsUOffset<T>>>;

fn opt_str<'a>(fbb: &mut FlatBufferBuilder<'a>, s: &str) -> Option<WIPOffset<&'a str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn opt_bytes<'a>(fbb: &mut FlatBufferBuilder<'a>, b: &[u8]) -> Option<WIPOffset<Vector<'a, u8>>> {
    (!b.is_empty()).then(|| fbb.create_vector(b))
}

fn opt_ids<'a>(fbb: &mut FlatBufferBuilder<'a>, v: &[u64]) -> Option<WIPOffset<Vector<'a, u64>>> {
    (!v.is_empty()).then(|| fbb.create_vector(v))
}

/// Builds one table (or string) per item, then the vector of their offsets. The offsets of up
/// to `STACK` items are kept on the stack, so the common short vectors allocate nothing.
fn opt_offsets<'a, I, T>(
    fbb: &mut FlatBufferBuilder<'a>,
    items: &[I],
    mut build: impl FnMut(&mut FlatBufferBuilder<'a>, &I) -> WIPOffset<T>,
) -> Option<Offsets<'a, T>> {
    const STACK: usize = 16;
    if items.is_empty() {
        None
    } else if items.len() <= STACK {
        let mut offsets = [WIPOffset::new(0); STACK];
        for (o, item) in offsets.iter_mut().zip(items) {
            *o = build(fbb, item);
        }
        Some(fbb.create_vector(&offsets[..items.len()]))
    } else {
        let offsets: Vec<_> = items.iter().map(|item| build(fbb, item)).collect();
        Some(fbb.create_vector(&offsets))
    }
}

fn opt_strings<'a>(fbb: &mut FlatBufferBuilder<'a>, v: &[String]) -> Option<Offsets<'a, &'a str>> {
    opt_offsets(fbb, v, |fbb, s| fbb.create_string(s))
}

fn build_resource<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    r: &Resource,
) -> WIPOffset<fb::Resource<'a>> {
    let name = opt_str(fbb, &r.name);
    fb::Resource::create(
        fbb,
        &fb::ResourceArgs {
            name,
            total: r.total,
            available: r.available,
        },
    )
}

fn opt_resources<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    v: &[Resource],
) -> Option<Offsets<'a, fb::Resource<'a>>> {
    opt_offsets(fbb, v, build_resource)
}

fn build_pg_bundle<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    b: &PgBundle,
) -> WIPOffset<fb::PgBundle<'a>> {
    let resources = opt_resources(fbb, &b.resources);
    let cpus = (!b.cpus.is_empty()).then(|| fbb.create_vector(&b.cpus));
    let cpu_note = opt_str(fbb, &b.cpu_note);
    let gpus = (!b.gpus.is_empty()).then(|| fbb.create_vector(&b.gpus));
    fb::PgBundle::create(
        fbb,
        &fb::PgBundleArgs {
            index: b.index,
            node_id: b.node_id,
            resources,
            cpus,
            cpu_note,
            gpus,
        },
    )
}

fn build_pg_row<'a>(fbb: &mut FlatBufferBuilder<'a>, g: &PgRow) -> WIPOffset<fb::PgRow<'a>> {
    let name = opt_str(fbb, &g.name);
    let bundles = opt_offsets(fbb, &g.bundles, build_pg_bundle);
    fb::PgRow::create(
        fbb,
        &fb::PgRowArgs {
            pg_id: g.pg_id,
            name,
            strategy: g.strategy,
            state: g.state,
            detached: g.detached,
            job_id: g.job_id,
            bundles,
        },
    )
}

fn build_node<'a>(fbb: &mut FlatBufferBuilder<'a>, n: &Node) -> WIPOffset<fb::Node<'a>> {
    let address = opt_str(fbb, &n.address);
    let hostname = opt_str(fbb, &n.hostname);
    let resources = opt_resources(fbb, &n.resources);
    let store_pages = opt_str(fbb, &n.store_pages);
    let death = opt_str(fbb, &n.death);
    let topology = opt_str(fbb, &n.topology);
    let host_id = opt_str(fbb, &n.host_id);
    let arena_socket = opt_str(fbb, &n.arena_socket);
    fb::Node::create(
        fbb,
        &fb::NodeArgs {
            node_id: n.node_id,
            address,
            hostname,
            state: if n.alive {
                fb::NodeState::Alive
            } else {
                fb::NodeState::Dead
            },
            resources,
            store_capacity: n.store_capacity,
            store_used: n.store_used,
            store_pages,
            age_s: n.age_s,
            death,
            topology,
            host_id,
            workers: n.workers,
            arena_socket,
        },
    )
}

fn build_job_worker<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    w: &JobWorker,
) -> WIPOffset<fb::JobWorker<'a>> {
    let address = opt_str(fbb, &w.address);
    let resources = opt_resources(fbb, &w.resources);
    fb::JobWorker::create(
        fbb,
        &fb::JobWorkerArgs {
            index: w.index,
            address,
            resources,
        },
    )
}

fn build_actor_info<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    a: &ActorInfo,
) -> WIPOffset<fb::ActorInfo<'a>> {
    let name = opt_str(fbb, &a.name);
    let class_name = opt_str(fbb, &a.class_name);
    let death = opt_str(fbb, &a.death);
    fb::ActorInfo::create(
        fbb,
        &fb::ActorInfoArgs {
            actor_id: a.actor_id,
            name,
            class_name,
            worker: a.worker,
            node_id: a.node_id,
            state: match (a.alive, a.restarting) {
                (false, _) => fb::ActorState::Dead,
                (true, false) => fb::ActorState::Alive,
                (true, true) => fb::ActorState::Restarting,
            },
            death,
            num_restarts: a.num_restarts,
        },
    )
}

fn build_task_row<'a>(fbb: &mut FlatBufferBuilder<'a>, t: &TaskRow) -> WIPOffset<fb::TaskRow<'a>> {
    let name = opt_str(fbb, &t.name);
    let state = opt_str(fbb, &t.state);
    fb::TaskRow::create(
        fbb,
        &fb::TaskRowArgs {
            task_id: t.task_id,
            name,
            state,
            owner: t.owner,
            worker: t.worker,
            node_id: t.node_id,
        },
    )
}

fn build_object_row<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    o: &ObjectRow,
) -> WIPOffset<fb::ObjectRow<'a>> {
    let kind = opt_str(fbb, &o.kind);
    let role = opt_str(fbb, &o.role);
    fb::ObjectRow::create(
        fbb,
        &fb::ObjectRowArgs {
            object_id: o.object_id,
            size: o.size,
            kind,
            role,
            holder: o.holder,
            owner: o.owner,
        },
    )
}

fn build_arg<'a>(fbb: &mut FlatBufferBuilder<'a>, a: &Arg) -> WIPOffset<fb::Arg<'a>> {
    let args = match a {
        Arg::Inline(v) => fb::ArgArgs {
            inline: opt_bytes(fbb, v),
            ..Default::default()
        },
        &Arg::Ref {
            object_id,
            holder,
            len,
        } => fb::ArgArgs {
            inline: None,
            is_ref: true,
            object_id,
            holder,
            len,
        },
    };
    fb::Arg::create(fbb, &args)
}

fn opt_args<'a>(fbb: &mut FlatBufferBuilder<'a>, v: &[Arg]) -> Option<Offsets<'a, fb::Arg<'a>>> {
    opt_offsets(fbb, v, build_arg)
}

fn error_kind_to_wire(k: ErrorKind) -> fb::ErrorKind {
    match k {
        ErrorKind::Panic => fb::ErrorKind::Panic,
        ErrorKind::ActorDied => fb::ErrorKind::ActorDied,
        ErrorKind::Cancelled => fb::ErrorKind::Cancelled,
        ErrorKind::Infeasible => fb::ErrorKind::Infeasible,
        ErrorKind::Store => fb::ErrorKind::Store,
        ErrorKind::Other => fb::ErrorKind::Other,
        ErrorKind::WorkerCrashed => fb::ErrorKind::WorkerCrashed,
        ErrorKind::ObjectLost => fb::ErrorKind::ObjectLost,
        ErrorKind::OwnerDied => fb::ErrorKind::OwnerDied,
        ErrorKind::ReconstructionMaxAttempts => fb::ErrorKind::ReconstructionMaxAttempts,
        ErrorKind::LineageEvicted => fb::ErrorKind::LineageEvicted,
    }
}

/// Builds `msg`'s table in `fbb` (reset first, so one builder serves every message) and returns
/// the finished bytes: the payload of an envelope tagged [`Msg::tag`].
pub(crate) fn encode<'b>(msg: &Msg, fbb: &'b mut FlatBufferBuilder<'static>) -> &'b [u8] {
    fbb.reset();
    // `table!(Name { fields })`: create table `Name` from `NameArgs { fields }` and finish it.
    macro_rules! table {
        ($t:ident, $a:ident { $($f:tt)* }) => {{
            let t = fb::$t::create(fbb, &fb::$a { $($f)* });
            fbb.finish_minimal(t);
        }};
    }
    match msg {
        Msg::RegisterNode { request_id, node } => {
            let node = Some(build_node(fbb, node));
            table!(
                RegisterNode,
                RegisterNodeArgs {
                    request_id: *request_id,
                    node
                }
            );
        }
        Msg::RegisterWorker {
            request_id,
            node_id,
            job_id,
            address,
            pid,
            executable,
            args,
            cwd,
            shm_path,
            host_id,
        } => {
            let address = opt_str(fbb, address);
            let executable = opt_str(fbb, executable);
            let args = opt_strings(fbb, args);
            let cwd = opt_str(fbb, cwd);
            let shm_path = opt_str(fbb, shm_path);
            let host_id = opt_str(fbb, host_id);
            table!(
                RegisterWorker,
                RegisterWorkerArgs {
                    request_id: *request_id,
                    node_id: *node_id,
                    job_id: *job_id,
                    address,
                    pid: *pid,
                    executable,
                    args,
                    cwd,
                    shm_path,
                    host_id,
                }
            );
        }
        Msg::Registered {
            request_id,
            id,
            job_id,
            error,
            saved,
        } => {
            let error = opt_str(fbb, error);
            table!(
                Registered,
                RegisteredArgs {
                    request_id: *request_id,
                    id: *id,
                    job_id: *job_id,
                    error,
                    saved: *saved,
                }
            );
        }
        Msg::Heartbeat {
            node_id,
            resources,
            store_used,
            store_pages,
        } => {
            let resources = opt_resources(fbb, resources);
            let store_pages = opt_str(fbb, store_pages);
            table!(
                Heartbeat,
                HeartbeatArgs {
                    node_id: *node_id,
                    resources,
                    store_used: *store_used,
                    store_pages,
                }
            );
        }
        Msg::GetNodes { request_id } => {
            table!(
                GetNodes,
                GetNodesArgs {
                    request_id: *request_id
                }
            );
        }
        Msg::Nodes { request_id, nodes } => {
            let nodes = opt_offsets(fbb, nodes, build_node);
            table!(
                Nodes,
                NodesArgs {
                    request_id: *request_id,
                    nodes
                }
            );
        }
        Msg::GetWorker { request_id, index } => {
            table!(
                GetWorker,
                GetWorkerArgs {
                    request_id: *request_id,
                    index: *index
                }
            );
        }
        Msg::WorkerInfo {
            request_id,
            index,
            node_id,
            job_id,
            address,
            alive,
            shm_path,
            host_id,
        } => {
            let address = opt_str(fbb, address);
            let shm_path = opt_str(fbb, shm_path);
            let host_id = opt_str(fbb, host_id);
            table!(
                WorkerInfo,
                WorkerInfoArgs {
                    request_id: *request_id,
                    index: *index,
                    node_id: *node_id,
                    job_id: *job_id,
                    address,
                    alive: *alive,
                    shm_path,
                    host_id,
                }
            );
        }
        Msg::KvPut {
            request_id,
            key,
            value,
        } => {
            let key = opt_str(fbb, key);
            let value = opt_bytes(fbb, value);
            table!(
                KvPut,
                KvPutArgs {
                    request_id: *request_id,
                    key,
                    value
                }
            );
        }
        Msg::KvGet { request_id, key } => {
            let key = opt_str(fbb, key);
            table!(
                KvGet,
                KvGetArgs {
                    request_id: *request_id,
                    key
                }
            );
        }
        Msg::KvValue {
            request_id,
            found,
            value,
        } => {
            let value = opt_bytes(fbb, value);
            table!(
                KvValue,
                KvValueArgs {
                    request_id: *request_id,
                    found: *found,
                    value,
                }
            );
        }
        Msg::RegisterActor { request_id, actor } => {
            let actor = Some(build_actor_info(fbb, actor));
            table!(
                RegisterActor,
                RegisterActorArgs {
                    request_id: *request_id,
                    actor
                }
            );
        }
        Msg::LookupActor {
            request_id,
            name,
            actor_id,
        } => {
            let name = opt_str(fbb, name);
            table!(
                LookupActor,
                LookupActorArgs {
                    request_id: *request_id,
                    name,
                    actor_id: *actor_id,
                }
            );
        }
        Msg::ActorReply {
            request_id,
            found,
            actor,
            error,
        } => {
            let actor = Some(build_actor_info(fbb, actor));
            let error = opt_str(fbb, error);
            table!(
                ActorReply,
                ActorReplyArgs {
                    request_id: *request_id,
                    found: *found,
                    actor,
                    error,
                }
            );
        }
        Msg::ListActors { request_id } => {
            table!(
                ListActors,
                ListActorsArgs {
                    request_id: *request_id
                }
            );
        }
        Msg::Actors { request_id, actors } => {
            let actors = opt_offsets(fbb, actors, build_actor_info);
            table!(
                Actors,
                ActorsArgs {
                    request_id: *request_id,
                    actors
                }
            );
        }
        Msg::Subscribe { request_id } => {
            table!(
                Subscribe,
                SubscribeArgs {
                    request_id: *request_id
                }
            );
        }
        Msg::NodeEvent { node } => {
            let node = Some(build_node(fbb, node));
            table!(NodeEvent, NodeEventArgs { node });
        }
        Msg::JobEvent { job_id, finished } => {
            table!(
                JobEvent,
                JobEventArgs {
                    job_id: *job_id,
                    finished: *finished
                }
            );
        }
        Msg::Stop { reason } => {
            let reason = opt_str(fbb, reason);
            table!(Stop, StopArgs { reason });
        }
        Msg::StartWorker {
            request_id,
            job_id,
            executable,
            args,
            cwd,
            env,
        } => {
            let executable = opt_str(fbb, executable);
            let args = opt_strings(fbb, args);
            let cwd = opt_str(fbb, cwd);
            let env = opt_offsets(fbb, env, |fbb, (k, v)| {
                let key = opt_str(fbb, k);
                let value = opt_str(fbb, v);
                fb::KeyValue::create(fbb, &fb::KeyValueArgs { key, value })
            });
            table!(
                StartWorker,
                StartWorkerArgs {
                    request_id: *request_id,
                    job_id: *job_id,
                    executable,
                    args,
                    cwd,
                    env,
                }
            );
        }
        Msg::WorkerStarted {
            request_id,
            index,
            address,
            error,
            workers,
        } => {
            let address = opt_str(fbb, address);
            let error = opt_str(fbb, error);
            let workers = opt_offsets(fbb, workers, build_job_worker);
            table!(
                WorkerStarted,
                WorkerStartedArgs {
                    request_id: *request_id,
                    index: *index,
                    address,
                    error,
                    workers,
                }
            );
        }
        Msg::WorkerReady {
            job_id,
            index,
            address,
            pid,
            resources,
        } => {
            let address = opt_str(fbb, address);
            let resources = opt_resources(fbb, resources);
            table!(
                WorkerReady,
                WorkerReadyArgs {
                    job_id: *job_id,
                    index: *index,
                    address,
                    pid: *pid,
                    resources,
                }
            );
        }
        Msg::PushTask {
            task_id,
            function,
            args,
            resources,
            name,
            max_retries,
            retry_on,
        } => {
            let function = opt_str(fbb, function);
            let args = opt_args(fbb, args);
            let resources = opt_resources(fbb, resources);
            let name = opt_str(fbb, name);
            let retry_on = opt_strings(fbb, retry_on);
            table!(
                PushTask,
                PushTaskArgs {
                    task_id: *task_id,
                    function,
                    args,
                    resources,
                    name,
                    max_retries: *max_retries,
                    retry_on,
                }
            );
        }
        Msg::TaskDone { task_id, outcome } => {
            let args = match outcome {
                Outcome::Inline(v) => fb::TaskDoneArgs {
                    task_id: *task_id,
                    ok: true,
                    inline: opt_bytes(fbb, v),
                    ..Default::default()
                },
                Outcome::Stored { len } => fb::TaskDoneArgs {
                    task_id: *task_id,
                    ok: true,
                    stored: true,
                    len: *len,
                    ..Default::default()
                },
                Outcome::Failed {
                    kind,
                    task,
                    message,
                    cause,
                } => fb::TaskDoneArgs {
                    task_id: *task_id,
                    ok: false,
                    inline: (!cause.is_empty()).then(|| fbb.create_vector(cause)),
                    error_kind: error_kind_to_wire(*kind),
                    error_task: opt_str(fbb, task),
                    error_message: opt_str(fbb, message),
                    ..Default::default()
                },
            };
            let t = fb::TaskDone::create(fbb, &args);
            fbb.finish_minimal(t);
        }
        Msg::CreateActor {
            actor_id,
            class_name,
            args,
            resources,
            name,
            max_concurrency,
            max_restarts,
            group,
            exception_retries,
        } => {
            let class_name = opt_str(fbb, class_name);
            let args = opt_args(fbb, args);
            let resources = opt_resources(fbb, resources);
            let name = opt_str(fbb, name);
            let retry_on = opt_strings(fbb, &exception_retries.retry_on);
            table!(
                CreateActor,
                CreateActorArgs {
                    actor_id: *actor_id,
                    class_name,
                    args,
                    resources,
                    name,
                    max_concurrency: *max_concurrency,
                    max_restarts: *max_restarts,
                    group_rank: group.0,
                    group_world: group.1,
                    max_task_retries: exception_retries.max_task_retries,
                    retry_exceptions: exception_retries.retry_exceptions,
                    retry_on,
                }
            );
        }
        Msg::ActorCall {
            actor_id,
            call_id,
            method,
            args,
        } => {
            let method = opt_str(fbb, method);
            let args = opt_args(fbb, args);
            table!(
                ActorCall,
                ActorCallArgs {
                    actor_id: *actor_id,
                    call_id: *call_id,
                    method,
                    args,
                }
            );
        }
        Msg::CancelTask {
            request_id,
            task_id,
            force,
            recursive,
        } => {
            table!(
                CancelTask,
                CancelTaskArgs {
                    request_id: *request_id,
                    task_id: *task_id,
                    force: *force,
                    recursive: *recursive
                }
            );
        }
        Msg::CancelReply {
            request_id,
            cancelled,
            ending,
        } => {
            table!(
                CancelReply,
                CancelReplyArgs {
                    request_id: *request_id,
                    cancelled: *cancelled,
                    ending: *ending
                }
            );
        }
        Msg::KillActor { actor_id, restart } => {
            table!(
                KillActor,
                KillActorArgs {
                    actor_id: *actor_id,
                    restart: *restart
                }
            );
        }
        Msg::PullObject {
            request_id,
            object_id,
            priority,
            pin,
        } => {
            table!(
                PullObject,
                PullObjectArgs {
                    request_id: *request_id,
                    object_id: *object_id,
                    priority: *priority,
                    pin: *pin,
                }
            );
        }
        Msg::ObjectData {
            request_id,
            found,
            len,
            inline,
            error,
            redirect,
        } => {
            let inline = opt_bytes(fbb, inline);
            let error = opt_str(fbb, error);
            table!(
                ObjectData,
                ObjectDataArgs {
                    request_id: *request_id,
                    found: *found,
                    len: *len,
                    inline,
                    error,
                    redirect: *redirect,
                }
            );
        }
        Msg::FreeObject { object_id } => {
            table!(
                FreeObject,
                FreeObjectArgs {
                    object_id: *object_id
                }
            );
        }
        Msg::ObjectPinned {
            request_id,
            pin_id,
            offset,
            len,
            arena,
        } => {
            table!(
                ObjectPinned,
                ObjectPinnedArgs {
                    request_id: *request_id,
                    pin_id: *pin_id,
                    offset: *offset,
                    len: *len,
                    arena: *arena,
                }
            );
        }
        Msg::ObjectFailed {
            request_id,
            kind,
            task,
            message,
            cause,
        } => {
            let error_task = opt_str(fbb, task);
            let error_message = opt_str(fbb, message);
            let error_cause = (!cause.is_empty()).then(|| fbb.create_vector(cause));
            table!(
                ObjectFailed,
                ObjectFailedArgs {
                    request_id: *request_id,
                    error_kind: error_kind_to_wire(*kind),
                    error_task,
                    error_message,
                    error_cause,
                }
            );
        }
        Msg::Pg {
            op: _,
            request_id,
            group,
            error,
            groups,
        } => {
            let group = Some(build_pg_row(fbb, group));
            let error = opt_str(fbb, error);
            let groups = opt_offsets(fbb, groups, build_pg_row);
            table!(
                PgMsg,
                PgMsgArgs {
                    request_id: *request_id,
                    group,
                    error,
                    groups,
                }
            );
        }
        Msg::RejoinWorker {
            request_id,
            index,
            node_id,
            job_id,
            address,
            shm_path,
            host_id,
            driver,
        } => {
            let address = opt_str(fbb, address);
            let shm_path = opt_str(fbb, shm_path);
            let host_id = opt_str(fbb, host_id);
            table!(
                RejoinWorker,
                RejoinWorkerArgs {
                    request_id: *request_id,
                    index: *index,
                    node_id: *node_id,
                    job_id: *job_id,
                    address,
                    shm_path,
                    host_id,
                    driver: *driver,
                }
            );
        }
        Msg::GcsForget { kind, id, name } => {
            let name = opt_str(fbb, name);
            table!(
                GcsForget,
                GcsForgetArgs {
                    kind: *kind,
                    id: *id,
                    name,
                }
            );
        }
        Msg::GcsCounters {
            version,
            next_node,
            next_worker,
            next_job,
            address,
        } => {
            let address = opt_str(fbb, address);
            table!(
                GcsCounters,
                GcsCountersArgs {
                    version: *version,
                    next_node: *next_node,
                    next_worker: *next_worker,
                    next_job: *next_job,
                    address,
                }
            );
        }
        Msg::PgWatch { request_id, pg_id } => {
            table!(
                PgWatch,
                PgWatchArgs {
                    request_id: *request_id,
                    pg_id: *pg_id
                }
            );
        }
        Msg::DetachActor { actor_id } => {
            table!(
                DetachActor,
                DetachActorArgs {
                    actor_id: *actor_id
                }
            );
        }
        Msg::WorkerDetached { index, count } => {
            table!(
                WorkerDetached,
                WorkerDetachedArgs {
                    index: *index,
                    count: *count
                }
            );
        }
        Msg::GroupCall {
            caller,
            method,
            args,
            targets,
            fanout,
        } => {
            let method = opt_str(fbb, method);
            let args = opt_args(fbb, args);
            let wire: Vec<fb::GroupTarget> = targets
                .iter()
                .map(|t| fb::GroupTarget::new(t.actor_id, t.call_id, t.worker))
                .collect();
            let targets = (!wire.is_empty()).then(|| fbb.create_vector(&wire));
            table!(
                GroupCall,
                GroupCallArgs {
                    caller: *caller,
                    method,
                    args,
                    targets,
                    fanout: *fanout,
                }
            );
        }
        Msg::ReleaseActor { actor_id } => {
            table!(
                ReleaseActor,
                ReleaseActorArgs {
                    actor_id: *actor_id
                }
            );
        }
        Msg::UnpinObject { pin_id } => {
            table!(UnpinObject, UnpinObjectArgs { pin_id: *pin_id });
        }
        Msg::AddBorrowers {
            request_id,
            objects,
        } => {
            let objects = opt_ids(fbb, objects);
            table!(
                AddBorrowers,
                AddBorrowersArgs {
                    request_id: *request_id,
                    objects,
                }
            );
        }
        Msg::BorrowersAdded {
            request_id,
            missing,
        } => {
            let missing = opt_ids(fbb, missing);
            table!(
                BorrowersAdded,
                BorrowersAddedArgs {
                    request_id: *request_id,
                    missing,
                }
            );
        }
        Msg::RemoveBorrower { object_id } => {
            table!(
                RemoveBorrower,
                RemoveBorrowerArgs {
                    object_id: *object_id
                }
            );
        }
        Msg::ListWork { request_id } => {
            table!(
                ListWork,
                ListWorkArgs {
                    request_id: *request_id
                }
            );
        }
        Msg::Work {
            request_id,
            tasks,
            objects,
            partial,
        } => {
            let tasks = opt_offsets(fbb, tasks, build_task_row);
            let objects = opt_offsets(fbb, objects, build_object_row);
            table!(
                Work,
                WorkArgs {
                    request_id: *request_id,
                    tasks,
                    objects,
                    partial: *partial,
                }
            );
        }
    }
    fbb.finished_data()
}
