//! The cluster's messages as Rust values, and their flatbuffers encoding.
//!
//! Every message is a table of `core/schemas/cluster.fbs`, sent as the payload of a transport
//! envelope whose [`Tag`] names the table ([`Msg::tag`]). [`encode`] builds the table;
//! [`decode`] verifies the bytes with the flatbuffers verifier and copies them into a [`Msg`],
//! so a malformed payload is a [`ProtoError`], never a panic. The rest of the cluster code
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
    pub(crate) topology: String,
    /// The raylet's host and network namespace (see `cluster::host_id`).
    pub(crate) host_id: String,
    /// Live worker processes on the node (filled by the GCS in replies).
    pub(crate) workers: u32,
    /// Where the raylet serves the node's object-store arena (`@name`; empty: none).
    pub(crate) arena_socket: String,
}

/// One worker process of a job on a node (in `WorkerStarted`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct JobWorker {
    pub(crate) index: u64,
    pub(crate) address: String,
    /// The resources its scheduler holds (`available` unused).
    pub(crate) resources: Vec<Resource>,
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

/// One task in a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TaskRow {
    pub(crate) task_id: u64,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) owner: u64,
    pub(crate) worker: u64,
    pub(crate) node_id: u64,
}

/// One object in a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ObjectRow {
    pub(crate) object_id: u64,
    pub(crate) size: u64,
    pub(crate) kind: String,
    pub(crate) role: String,
    pub(crate) holder: u64,
    pub(crate) owner: u64,
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
        shm_path: String,
        host_id: String,
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
        /// Page kind of the store arena(s) (`manta status`), empty when none.
        store_pages: String,
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
        shm_path: String,
        host_id: String,
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
        workers: Vec<JobWorker>,
    },
    WorkerReady {
        job_id: u64,
        index: u64,
        address: String,
        pid: u32,
        resources: Vec<Resource>,
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
        pin: bool,
    },
    ObjectData {
        request_id: u64,
        found: bool,
        len: u64,
        inline: Vec<u8>,
        error: String,
        redirect: u64,
    },
    FreeObject {
        object_id: u64,
    },
    ObjectPinned {
        request_id: u64,
        pin_id: u64,
        offset: u64,
        len: u64,
        arena: u64,
    },
    UnpinObject {
        pin_id: u64,
    },
    ListWork {
        request_id: u64,
    },
    Work {
        request_id: u64,
        tasks: Vec<TaskRow>,
        objects: Vec<ObjectRow>,
        partial: bool,
    },
    AddBorrowers {
        request_id: u64,
        objects: Vec<u64>,
    },
    BorrowersAdded {
        request_id: u64,
        missing: Vec<u64>,
    },
    RemoveBorrower {
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
pub(crate) const TAG_LIST_WORK: u64 = 32;
pub(crate) const TAG_WORK: u64 = 33;
pub(crate) const TAG_ADD_BORROWERS: u64 = 34;
pub(crate) const TAG_BORROWERS_ADDED: u64 = 35;
pub(crate) const TAG_REMOVE_BORROWER: u64 = 36;
pub(crate) const TAG_OBJECT_PINNED: u64 = 37;
pub(crate) const TAG_UNPIN_OBJECT: u64 = 38;

/// Table names by tag (`NAMES[tag - 1]`).
const NAMES: [&str; 38] = [
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
    "ListWork",
    "Work",
    "AddBorrowers",
    "BorrowersAdded",
    "RemoveBorrower",
    "ObjectPinned",
    "UnpinObject",
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
            Msg::ListWork { .. } => TAG_LIST_WORK,
            Msg::Work { .. } => TAG_WORK,
            Msg::AddBorrowers { .. } => TAG_ADD_BORROWERS,
            Msg::BorrowersAdded { .. } => TAG_BORROWERS_ADDED,
            Msg::RemoveBorrower { .. } => TAG_REMOVE_BORROWER,
            Msg::ObjectPinned { .. } => TAG_OBJECT_PINNED,
            Msg::UnpinObject { .. } => TAG_UNPIN_OBJECT,
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
            state: if a.alive {
                fb::ActorState::Alive
            } else {
                fb::ActorState::Dead
            },
            death,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn resources() -> Vec<Resource> {
        vec![
            Resource {
                name: "CPU".into(),
                total: 64.0,
                available: 12.5,
            },
            Resource {
                name: "GPU".into(),
                total: 4.0,
                available: 0.0,
            },
        ]
    }

    fn node(node_id: u64, alive: bool) -> Node {
        Node {
            node_id,
            address: "10.0.0.7:6380".into(),
            hostname: "compute-7".into(),
            alive,
            resources: resources(),
            store_capacity: 1 << 34,
            store_used: 12345,
            store_pages: "2 MiB huge pages".into(),
            age_s: 3.25,
            death: if alive {
                String::new()
            } else {
                "heartbeats stopped".into()
            },
            topology: "2 cpus [0-1] 1 numa [numa0:2] 0 gpus [] nics [eth0] (hwloc)".into(),
            host_id: "boot/net:[4026531840]".into(),
            workers: 3,
            arena_socket: "@manta-node-7.arena".into(),
        }
    }

    fn actor(actor_id: u64, alive: bool) -> ActorInfo {
        ActorInfo {
            actor_id,
            name: "counter".into(),
            class_name: "Counter".into(),
            worker: 3,
            node_id: 2,
            alive,
            death: if alive {
                String::new()
            } else {
                "killed".into()
            },
        }
    }

    fn args() -> Vec<Arg> {
        vec![
            Arg::Inline(vec![1, 2, 3, 4, 5]),
            Arg::Ref {
                object_id: 0xdead_beef,
                holder: 9,
                len: 1 << 20,
            },
            Arg::Inline(Vec::new()),
        ]
    }

    /// One value of every variant, with non-empty strings and vectors.
    fn samples() -> Vec<Msg> {
        vec![
            Msg::RegisterNode {
                request_id: 1,
                node: node(7, true),
            },
            Msg::RegisterWorker {
                request_id: 2,
                node_id: 7,
                job_id: 3,
                address: "10.0.0.7:40001".into(),
                pid: 4242,
                executable: "/usr/bin/app".into(),
                args: vec!["--flag".into(), "value".into()],
                cwd: "/home/me".into(),
                shm_path: "/tmp/manta-w11.sock".into(),
                host_id: "boot/net:[1]".into(),
            },
            Msg::Registered {
                request_id: 3,
                id: 11,
                job_id: 3,
                error: "name taken".into(),
            },
            Msg::Heartbeat {
                node_id: 7,
                resources: resources(),
                store_used: 999,
                store_pages: "1 GiB huge pages".into(),
            },
            Msg::GetNodes { request_id: 5 },
            Msg::Nodes {
                request_id: 6,
                nodes: vec![node(1, true), node(2, false)],
            },
            Msg::GetWorker {
                request_id: 7,
                index: 12,
            },
            Msg::WorkerInfo {
                request_id: 8,
                index: 12,
                node_id: 2,
                job_id: 3,
                address: "10.0.0.2:40000".into(),
                alive: true,
                shm_path: "/tmp/manta-w12.sock".into(),
                host_id: "boot/net:[1]".into(),
            },
            Msg::KvPut {
                request_id: 9,
                key: "fn/table".into(),
                value: vec![0, 255, 7],
            },
            Msg::KvGet {
                request_id: 10,
                key: "fn/table".into(),
            },
            Msg::KvValue {
                request_id: 11,
                found: true,
                value: vec![0, 255, 7],
            },
            Msg::RegisterActor {
                request_id: 12,
                actor: actor(5, true),
            },
            Msg::LookupActor {
                request_id: 13,
                name: "counter".into(),
                actor_id: 5,
            },
            Msg::ActorReply {
                request_id: 14,
                found: true,
                actor: actor(5, false),
                error: "dead".into(),
            },
            Msg::ListActors { request_id: 15 },
            Msg::Actors {
                request_id: 16,
                actors: vec![actor(5, true), actor(6, false)],
            },
            Msg::Subscribe { request_id: 17 },
            Msg::NodeEvent {
                node: node(3, false),
            },
            Msg::JobEvent {
                job_id: 3,
                finished: true,
            },
            Msg::Stop {
                reason: "manta stop".into(),
            },
            Msg::StartWorker {
                request_id: 21,
                job_id: 3,
                executable: "/usr/bin/app".into(),
                args: vec!["a".into(), "b c".into()],
                cwd: "/tmp".into(),
                env: vec![
                    ("MANTA_WORKER".into(), "1".into()),
                    ("RUST_LOG".into(), "info".into()),
                ],
            },
            Msg::WorkerStarted {
                request_id: 22,
                index: 4,
                address: "10.0.0.7:40004".into(),
                error: "exec failed".into(),
                workers: vec![
                    JobWorker {
                        index: 4,
                        address: "10.0.0.7:40004".into(),
                        resources: resources(),
                    },
                    JobWorker {
                        index: 5,
                        address: "10.0.0.7:40005".into(),
                        resources: Vec::new(),
                    },
                ],
            },
            Msg::WorkerReady {
                job_id: 3,
                index: 4,
                address: "10.0.0.7:40004".into(),
                pid: 777,
                resources: resources(),
            },
            Msg::PushTask {
                task_id: 24,
                function: "my_crate::add".into(),
                args: args(),
                resources: resources(),
                name: "add-1".into(),
                max_retries: 3,
            },
            Msg::TaskDone {
                task_id: 25,
                outcome: Outcome::Inline(vec![42, 0, 1]),
            },
            Msg::TaskDone {
                task_id: 25,
                outcome: Outcome::Stored { len: 1 << 30 },
            },
            Msg::TaskDone {
                task_id: 25,
                outcome: Outcome::Failed {
                    kind: ErrorKind::ActorDied,
                    task: "my_crate::add".into(),
                    message: "the actor's worker exited".into(),
                },
            },
            Msg::CreateActor {
                actor_id: 26,
                class_name: "Counter".into(),
                args: args(),
                resources: resources(),
                name: "counter".into(),
                max_concurrency: 8,
                max_restarts: 2,
            },
            Msg::ActorCall {
                actor_id: 26,
                call_id: 27,
                method: "Counter::incr".into(),
                args: args(),
            },
            Msg::KillActor {
                actor_id: 26,
                restart: true,
            },
            Msg::PullObject {
                request_id: 29,
                object_id: 0xdead_beef,
                priority: 2,
                pin: true,
            },
            Msg::ObjectData {
                request_id: 29,
                found: true,
                len: 3,
                inline: vec![9, 8, 7],
                error: "partial".into(),
                redirect: 7,
            },
            Msg::FreeObject {
                object_id: 0xdead_beef,
            },
            Msg::ObjectPinned {
                request_id: 29,
                pin_id: 3,
                offset: 4096,
                len: 1 << 20,
                arena: 7,
            },
            Msg::UnpinObject { pin_id: 3 },
            Msg::ListWork { request_id: 32 },
            Msg::Work {
                request_id: 33,
                tasks: vec![TaskRow {
                    task_id: 5,
                    name: "app::f".into(),
                    state: "RUNNING".into(),
                    owner: 1,
                    worker: 2,
                    node_id: 3,
                }],
                objects: vec![ObjectRow {
                    object_id: 6,
                    size: 1 << 20,
                    kind: "store".into(),
                    role: "held".into(),
                    holder: 2,
                    owner: 1,
                }],
                partial: true,
            },
            Msg::AddBorrowers {
                request_id: 34,
                objects: vec![1, 0xdead_beef, u64::MAX],
            },
            Msg::BorrowersAdded {
                request_id: 34,
                missing: vec![0xdead_beef],
            },
            Msg::RemoveBorrower {
                object_id: 0xdead_beef,
            },
        ]
    }

    fn round_trip(fbb: &mut FlatBufferBuilder<'static>, msg: &Msg) {
        let bytes = encode(msg, fbb).to_vec();
        let back = decode(msg.tag().0, &bytes)
            .unwrap_or_else(|e| panic!("{} did not decode: {e}", msg.name()));
        assert_eq!(&back, msg, "{} did not round-trip", msg.name());
    }

    #[test]
    fn every_variant_round_trips_through_one_reused_builder() {
        let samples = samples();
        let tags: HashSet<u64> = samples.iter().map(|m| m.tag().0).collect();
        assert_eq!(tags, (1..=38).collect(), "a sample of every variant");
        let mut fbb = FlatBufferBuilder::new();
        for msg in &samples {
            round_trip(&mut fbb, msg);
        }
        // Again, in reverse: the builder's reset leaves nothing of the previous message.
        for msg in samples.iter().rev() {
            round_trip(&mut fbb, msg);
        }
    }

    #[test]
    fn every_error_kind_round_trips() {
        let mut fbb = FlatBufferBuilder::new();
        for kind in [
            ErrorKind::Panic,
            ErrorKind::ActorDied,
            ErrorKind::Cancelled,
            ErrorKind::Infeasible,
            ErrorKind::Store,
            ErrorKind::Other,
        ] {
            let msg = Msg::TaskDone {
                task_id: 1,
                outcome: Outcome::Failed {
                    kind,
                    task: String::new(),
                    message: "m".into(),
                },
            };
            round_trip(&mut fbb, &msg);
        }
    }

    #[test]
    fn empty_fields_are_left_out_and_read_back_as_empty() {
        let mut fbb = FlatBufferBuilder::new();
        let empties = [
            Msg::RegisterNode {
                request_id: 0,
                node: Node::default(),
            },
            Msg::Stop {
                reason: String::new(),
            },
            Msg::PushTask {
                task_id: 1,
                function: String::new(),
                args: Vec::new(),
                resources: Vec::new(),
                name: String::new(),
                max_retries: 0,
            },
            Msg::TaskDone {
                task_id: 1,
                outcome: Outcome::Inline(Vec::new()),
            },
            Msg::ActorReply {
                request_id: 0,
                found: false,
                actor: ActorInfo::default(),
                error: String::new(),
            },
        ];
        for msg in &empties {
            round_trip(&mut fbb, msg);
        }
        // An empty table under any tag decodes to the all-default message.
        let empty_table = encode(
            &Msg::Stop {
                reason: String::new(),
            },
            &mut fbb,
        )
        .to_vec();
        match decode(TAG_PUSH_TASK, &empty_table) {
            Ok(Msg::PushTask { function, args, .. }) => {
                assert!(function.is_empty() && args.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn many_args_take_the_heap_path() {
        let mut fbb = FlatBufferBuilder::new();
        let msg = Msg::ActorCall {
            actor_id: 1,
            call_id: 2,
            method: "m".into(),
            args: (0..100u64)
                .map(|i| {
                    if i % 2 == 0 {
                        Arg::Inline(vec![i as u8; i as usize])
                    } else {
                        Arg::Ref {
                            object_id: i,
                            holder: i + 1,
                            len: i + 2,
                        }
                    }
                })
                .collect(),
        };
        round_trip(&mut fbb, &msg);
    }

    #[test]
    fn tags_are_distinct_stable_and_named() {
        let samples = samples();
        let mut seen = HashSet::new();
        for msg in &samples {
            let tag = msg.tag().0;
            assert!((1..=38).contains(&tag));
            assert_eq!(tag_name(tag), Some(msg.name()));
            // Distinct per variant (TaskDone has three samples, one tag).
            if !matches!(msg, Msg::TaskDone { .. }) {
                assert!(seen.insert(tag), "tag {tag} used twice");
            }
        }
        assert_eq!(NAMES.iter().collect::<HashSet<_>>().len(), NAMES.len());
        // The wire numbers never change.
        assert_eq!(TAG_REGISTER_NODE, 1);
        assert_eq!(TAG_PUSH_TASK, 24);
        assert_eq!(TAG_TASK_DONE, 25);
        assert_eq!(TAG_ACTOR_CALL, 27);
        assert_eq!(TAG_FREE_OBJECT, 31);
        assert_eq!(tag_name(0), None);
        assert_eq!(TAG_ADD_BORROWERS, 34);
        assert_eq!(TAG_REMOVE_BORROWER, 36);
        assert_eq!(TAG_UNPIN_OBJECT, 38);
        assert_eq!(tag_name(39), None);
        assert_eq!(tag_name(u64::MAX), None);
    }

    #[test]
    fn unknown_tag_is_an_error() {
        for tag in [0, 39, 1000, u64::MAX] {
            assert_eq!(decode(tag, &[]), Err(ProtoError::UnknownTag(tag)));
        }
        let e = decode(99, &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown cluster message tag 99");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for tag in 1..=38 {
            assert!(matches!(decode(tag, &[]), Err(ProtoError::Invalid { .. })));
            assert!(decode(tag, &[0xff; 3]).is_err());
            let e = decode(tag, &[0xff; 64]).unwrap_err();
            let ProtoError::Invalid { table, .. } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(Some(*table), tag_name(tag));
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid {table} message: "))
            );
            // Random bytes: whatever the verifier says, no panic.
            for _ in 0..200 {
                let len = (next() % 200) as usize;
                let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let _ = decode(tag, &buf);
            }
        }
    }

    #[test]
    fn every_prefix_of_a_push_task_is_an_error_short_of_trailing_padding() {
        let mut fbb = FlatBufferBuilder::new();
        let msg = &samples()[23];
        assert_eq!(msg.tag().0, TAG_PUSH_TASK);
        let bytes = encode(msg, &mut fbb).to_vec();
        for n in 0..bytes.len() {
            match decode(TAG_PUSH_TASK, &bytes[..n]) {
                Err(ProtoError::Invalid { table, .. }) => assert_eq!(table, "PushTask"),
                // The builder pads the first string it writes, which ends the buffer; cutting
                // off only that zero padding leaves the same, valid table. Anything else errs.
                Ok(back) if bytes[n..].iter().all(|&b| b == 0) && bytes.len() - n < 8 => {
                    assert_eq!(&back, msg);
                }
                other => panic!("prefix of {n} of {} bytes: {other:?}", bytes.len()),
            }
        }
        // Single corrupted bytes: no panic either.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xa5;
            let _ = decode(TAG_PUSH_TASK, &bad);
        }
    }

    #[test]
    fn a_valid_table_under_the_wrong_tag_does_not_panic() {
        let mut fbb = FlatBufferBuilder::new();
        for msg in samples() {
            let bytes = encode(&msg, &mut fbb).to_vec();
            for tag in 1..=38 {
                let _ = decode(tag, &bytes);
            }
        }
    }
}
