//! The cluster's messages as Rust values, and their flatbuffers encoding.
//!
//! Every message is a table of `core/schemas/cluster.fbs`, sent as the payload of a transport
//! envelope whose [`Tag`] names the table ([`Msg::tag`]). [`encode`] builds the table;
//! [`decode`] verifies the bytes with the flatbuffers verifier and copies them into a [`Msg`],
//! so a malformed payload is an [`ProtoError`], never a panic. The rest of the cluster code
//! sees only these types.

use super::wire as fb;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};
use manta_transport::Tag;

/// A resource amount of a node or a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Resource {
    pub(crate) name: String,
    pub(crate) total: f64,
    pub(crate) available: f64,
}

/// A node of the GCS's node table.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Node {
    pub(crate) node_id: u64,
    pub(crate) address: String,
    pub(crate) hostname: String,
    pub(crate) alive: bool,
    pub(crate) resources: Vec<Resource>,
    pub(crate) store_capacity: u64,
    pub(crate) store_used: u64,
    pub(crate) store_pages: String,
    pub(crate) age_s: f64,
    pub(crate) death: String,
}

/// An actor of the GCS's directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ActorInfo {
    pub(crate) actor_id: u64,
    pub(crate) name: String,
    pub(crate) class_name: String,
    pub(crate) worker: u64,
    pub(crate) node_id: u64,
    pub(crate) alive: bool,
    pub(crate) death: String,
}

/// One task argument.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    /// An encoded value.
    Inline(Vec<u8>),
    /// An object to pull from worker `holder` (`len` encoded bytes).
    Ref {
        object_id: u64,
        holder: u64,
        len: u64,
    },
}

/// Why a task failed, as it crosses the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Panic,
    ActorDied,
    Cancelled,
    Infeasible,
    Store,
    Other,
}

/// The outcome of a task, actor creation or actor call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The encoded value.
    Inline(Vec<u8>),
    /// Kept in the executor's store, `len` bytes; pull it by the task id.
    Stored { len: u64 },
    /// Failed.
    Failed {
        kind: ErrorKind,
        task: String,
        message: String,
    },
}

/// Every cluster message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Msg {
    RegisterNode {
        request_id: u64,
        node: Node,
    },
    RegisterWorker {
        request_id: u64,
        node_id: u64,
        job_id: u64,
        address: String,
        pid: u32,
        executable: String,
        args: Vec<String>,
        cwd: String,
    },
    Registered {
        request_id: u64,
        id: u64,
        job_id: u64,
        error: String,
    },
    Heartbeat {
        node_id: u64,
        resources: Vec<Resource>,
        store_used: u64,
    },
    GetNodes {
        request_id: u64,
    },
    Nodes {
        request_id: u64,
        nodes: Vec<Node>,
    },
    GetWorker {
        request_id: u64,
        index: u64,
    },
    WorkerInfo {
        request_id: u64,
        index: u64,
        node_id: u64,
        job_id: u64,
        address: String,
        alive: bool,
    },
    KvPut {
        request_id: u64,
        key: String,
        value: Vec<u8>,
    },
    KvGet {
        request_id: u64,
        key: String,
    },
    KvValue {
        request_id: u64,
        found: bool,
        value: Vec<u8>,
    },
    RegisterActor {
        request_id: u64,
        actor: ActorInfo,
    },
    LookupActor {
        request_id: u64,
        name: String,
        actor_id: u64,
    },
    ActorReply {
        request_id: u64,
        found: bool,
        actor: ActorInfo,
        error: String,
    },
    ListActors {
        request_id: u64,
    },
    Actors {
        request_id: u64,
        actors: Vec<ActorInfo>,
    },
    Subscribe {
        request_id: u64,
    },
    NodeEvent {
        node: Node,
    },
    JobEvent {
        job_id: u64,
        finished: bool,
    },
    Stop {
        reason: String,
    },
    StartWorker {
        request_id: u64,
        job_id: u64,
        executable: String,
        args: Vec<String>,
        cwd: String,
        env: Vec<(String, String)>,
    },
    WorkerStarted {
        request_id: u64,
        index: u64,
        address: String,
        error: String,
    },
    WorkerReady {
        job_id: u64,
        index: u64,
        address: String,
        pid: u32,
    },
    PushTask {
        task_id: u64,
        function: String,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_retries: u32,
    },
    TaskDone {
        task_id: u64,
        outcome: Outcome,
    },
    CreateActor {
        actor_id: u64,
        class_name: String,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_concurrency: u32,
        max_restarts: u32,
    },
    ActorCall {
        actor_id: u64,
        call_id: u64,
        method: String,
        args: Vec<Arg>,
    },
    KillActor {
        actor_id: u64,
        restart: bool,
    },
    PullObject {
        request_id: u64,
        object_id: u64,
        priority: u8,
    },
    ObjectData {
        request_id: u64,
        found: bool,
        len: u64,
        inline: Vec<u8>,
        error: String,
    },
    FreeObject {
        object_id: u64,
    },
}

// ---- tags ---------------------------------------------------------------------------------
//
// The envelope tag of each message: stable wire numbers, never reused or renumbered (a new
// message takes the next free number).

pub(crate) const TAG_REGISTER_NODE: u64 = 1;
pub(crate) const TAG_REGISTER_WORKER: u64 = 2;
pub(crate) const TAG_REGISTERED: u64 = 3;
pub(crate) const TAG_HEARTBEAT: u64 = 4;
pub(crate) const TAG_GET_NODES: u64 = 5;
pub(crate) const TAG_NODES: u64 = 6;
pub(crate) const TAG_GET_WORKER: u64 = 7;
pub(crate) const TAG_WORKER_INFO: u64 = 8;
pub(crate) const TAG_KV_PUT: u64 = 9;
pub(crate) const TAG_KV_GET: u64 = 10;
pub(crate) const TAG_KV_VALUE: u64 = 11;
pub(crate) const TAG_REGISTER_ACTOR: u64 = 12;
pub(crate) const TAG_LOOKUP_ACTOR: u64 = 13;
pub(crate) const TAG_ACTOR_REPLY: u64 = 14;
pub(crate) const TAG_LIST_ACTORS: u64 = 15;
pub(crate) const TAG_ACTORS: u64 = 16;
pub(crate) const TAG_SUBSCRIBE: u64 = 17;
pub(crate) const TAG_NODE_EVENT: u64 = 18;
pub(crate) const TAG_JOB_EVENT: u64 = 19;
pub(crate) const TAG_STOP: u64 = 20;
pub(crate) const TAG_START_WORKER: u64 = 21;
pub(crate) const TAG_WORKER_STARTED: u64 = 22;
pub(crate) const TAG_WORKER_READY: u64 = 23;
pub(crate) const TAG_PUSH_TASK: u64 = 24;
pub(crate) const TAG_TASK_DONE: u64 = 25;
pub(crate) const TAG_CREATE_ACTOR: u64 = 26;
pub(crate) const TAG_ACTOR_CALL: u64 = 27;
pub(crate) const TAG_KILL_ACTOR: u64 = 28;
pub(crate) const TAG_PULL_OBJECT: u64 = 29;
pub(crate) const TAG_OBJECT_DATA: u64 = 30;
pub(crate) const TAG_FREE_OBJECT: u64 = 31;

/// Table names by tag (`NAMES[tag - 1]`).
const NAMES: [&str; 31] = [
    "RegisterNode",
    "RegisterWorker",
    "Registered",
    "Heartbeat",
    "GetNodes",
    "Nodes",
    "GetWorker",
    "WorkerInfo",
    "KvPut",
    "KvGet",
    "KvValue",
    "RegisterActor",
    "LookupActor",
    "ActorReply",
    "ListActors",
    "Actors",
    "Subscribe",
    "NodeEvent",
    "JobEvent",
    "Stop",
    "StartWorker",
    "WorkerStarted",
    "WorkerReady",
    "PushTask",
    "TaskDone",
    "CreateActor",
    "ActorCall",
    "KillActor",
    "PullObject",
    "ObjectData",
    "FreeObject",
];

/// The table name a tag stands for, if it is a cluster message's.
pub(crate) fn tag_name(tag: u64) -> Option<&'static str> {
    let i = usize::try_from(tag.checked_sub(1)?).ok()?;
    NAMES.get(i).copied()
}

impl Msg {
    /// The raw envelope tag of this message (one of the `TAG_*` numbers).
    pub(crate) fn tag_u64(&self) -> u64 {
        match self {
            Msg::RegisterNode { .. } => TAG_REGISTER_NODE,
            Msg::RegisterWorker { .. } => TAG_REGISTER_WORKER,
            Msg::Registered { .. } => TAG_REGISTERED,
            Msg::Heartbeat { .. } => TAG_HEARTBEAT,
            Msg::GetNodes { .. } => TAG_GET_NODES,
            Msg::Nodes { .. } => TAG_NODES,
            Msg::GetWorker { .. } => TAG_GET_WORKER,
            Msg::WorkerInfo { .. } => TAG_WORKER_INFO,
            Msg::KvPut { .. } => TAG_KV_PUT,
            Msg::KvGet { .. } => TAG_KV_GET,
            Msg::KvValue { .. } => TAG_KV_VALUE,
            Msg::RegisterActor { .. } => TAG_REGISTER_ACTOR,
            Msg::LookupActor { .. } => TAG_LOOKUP_ACTOR,
            Msg::ActorReply { .. } => TAG_ACTOR_REPLY,
            Msg::ListActors { .. } => TAG_LIST_ACTORS,
            Msg::Actors { .. } => TAG_ACTORS,
            Msg::Subscribe { .. } => TAG_SUBSCRIBE,
            Msg::NodeEvent { .. } => TAG_NODE_EVENT,
            Msg::JobEvent { .. } => TAG_JOB_EVENT,
            Msg::Stop { .. } => TAG_STOP,
            Msg::StartWorker { .. } => TAG_START_WORKER,
            Msg::WorkerStarted { .. } => TAG_WORKER_STARTED,
            Msg::WorkerReady { .. } => TAG_WORKER_READY,
            Msg::PushTask { .. } => TAG_PUSH_TASK,
            Msg::TaskDone { .. } => TAG_TASK_DONE,
            Msg::CreateActor { .. } => TAG_CREATE_ACTOR,
            Msg::ActorCall { .. } => TAG_ACTOR_CALL,
            Msg::KillActor { .. } => TAG_KILL_ACTOR,
            Msg::PullObject { .. } => TAG_PULL_OBJECT,
            Msg::ObjectData { .. } => TAG_OBJECT_DATA,
            Msg::FreeObject { .. } => TAG_FREE_OBJECT,
        }
    }

    /// The envelope tag that names this message's table.
    pub(crate) fn tag(&self) -> Tag {
        Tag(self.tag_u64())
    }

    /// The name of this message's table (for logs and errors).
    pub(crate) fn name(&self) -> &'static str {
        // Every tag is in 1..=NAMES.len(), so the index is in range.
        NAMES[(self.tag_u64() - 1) as usize]
    }
}

// ---- errors -------------------------------------------------------------------------------

/// Why a payload did not decode into a [`Msg`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtoError {
    /// The envelope's tag names no cluster message.
    #[error("unknown cluster message tag {0}")]
    UnknownTag(u64),
    /// The payload is not a valid flatbuffer of the table the tag names.
    #[error("invalid {table} message: {detail}")]
    Invalid {
        /// The table the tag named.
        table: &'static str,
        /// What the verifier found.
        detail: String,
    },
}

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

fn build_node<'a>(fbb: &mut FlatBufferBuilder<'a>, n: &Node) -> WIPOffset<fb::Node<'a>> {
    let address = opt_str(fbb, &n.address);
    let hostname = opt_str(fbb, &n.hostname);
    let resources = opt_resources(fbb, &n.resources);
    let store_pages = opt_str(fbb, &n.store_pages);
    let death = opt_str(fbb, &n.death);
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
            state: if a.alive {
                fb::ActorState::Alive
            } else {
                fb::ActorState::Dead
            },
            death,
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
    }
}

fn error_kind_from_wire(k: fb::ErrorKind) -> ErrorKind {
    match k {
        fb::ErrorKind::Panic => ErrorKind::Panic,
        fb::ErrorKind::ActorDied => ErrorKind::ActorDied,
        fb::ErrorKind::Cancelled => ErrorKind::Cancelled,
        fb::ErrorKind::Infeasible => ErrorKind::Infeasible,
        fb::ErrorKind::Store => ErrorKind::Store,
        // Other, and kinds a newer peer may add.
        _ => ErrorKind::Other,
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
        } => {
            let address = opt_str(fbb, address);
            let executable = opt_str(fbb, executable);
            let args = opt_strings(fbb, args);
            let cwd = opt_str(fbb, cwd);
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
                }
            );
        }
        Msg::Registered {
            request_id,
            id,
            job_id,
            error,
        } => {
            let error = opt_str(fbb, error);
            table!(
                Registered,
                RegisteredArgs {
                    request_id: *request_id,
                    id: *id,
                    job_id: *job_id,
                    error,
                }
            );
        }
        Msg::Heartbeat {
            node_id,
            resources,
            store_used,
        } => {
            let resources = opt_resources(fbb, resources);
            table!(
                Heartbeat,
                HeartbeatArgs {
                    node_id: *node_id,
                    resources,
                    store_used: *store_used,
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
        } => {
            let address = opt_str(fbb, address);
            table!(
                WorkerInfo,
                WorkerInfoArgs {
                    request_id: *request_id,
                    index: *index,
                    node_id: *node_id,
                    job_id: *job_id,
                    address,
                    alive: *alive,
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
        } => {
            let address = opt_str(fbb, address);
            let error = opt_str(fbb, error);
            table!(
                WorkerStarted,
                WorkerStartedArgs {
                    request_id: *request_id,
                    index: *index,
                    address,
                    error,
                }
            );
        }
        Msg::WorkerReady {
            job_id,
            index,
            address,
            pid,
        } => {
            let address = opt_str(fbb, address);
            table!(
                WorkerReady,
                WorkerReadyArgs {
                    job_id: *job_id,
                    index: *index,
                    address,
                    pid: *pid,
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
        } => {
            let function = opt_str(fbb, function);
            let args = opt_args(fbb, args);
            let resources = opt_resources(fbb, resources);
            let name = opt_str(fbb, name);
            table!(
                PushTask,
                PushTaskArgs {
                    task_id: *task_id,
                    function,
                    args,
                    resources,
                    name,
                    max_retries: *max_retries,
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
                } => fb::TaskDoneArgs {
                    task_id: *task_id,
                    ok: false,
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
        } => {
            let class_name = opt_str(fbb, class_name);
            let args = opt_args(fbb, args);
            let resources = opt_resources(fbb, resources);
            let name = opt_str(fbb, name);
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
        } => {
            table!(
                PullObject,
                PullObjectArgs {
                    request_id: *request_id,
                    object_id: *object_id,
                    priority: *priority,
                }
            );
        }
        Msg::ObjectData {
            request_id,
            found,
            len,
            inline,
            error,
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
    }
    fbb.finished_data()
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
        alive: a.state() == fb::ActorState::Alive,
        death: string(a.death()),
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
            }
        }
        TAG_REGISTERED => {
            let t = root!(Registered);
            Msg::Registered {
                request_id: t.request_id(),
                id: t.id(),
                job_id: t.job_id(),
                error: string(t.error()),
            }
        }
        TAG_HEARTBEAT => {
            let t = root!(Heartbeat);
            Msg::Heartbeat {
                node_id: t.node_id(),
                resources: resources(t.resources()),
                store_used: t.store_used(),
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
            }
        }
        TAG_WORKER_READY => {
            let t = root!(WorkerReady);
            Msg::WorkerReady {
                job_id: t.job_id(),
                index: t.index(),
                address: string(t.address()),
                pid: t.pid(),
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
            }
        }
        TAG_TASK_DONE => {
            let t = root!(TaskDone);
            let outcome = if !t.ok() {
                Outcome::Failed {
                    kind: error_kind_from_wire(t.error_kind()),
                    task: string(t.error_task()),
                    message: string(t.error_message()),
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
            }
        }
        TAG_FREE_OBJECT => Msg::FreeObject {
            object_id: root!(FreeObject).object_id(),
        },
        _ => return Err(ProtoError::UnknownTag(tag)),
    })
}
