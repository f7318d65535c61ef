//! The cluster's messages as Rust values, and their flatbuffers encoding.
//!
//! Every message is a table of `core/schemas/cluster.fbs`, sent as the payload of a transport
//! envelope whose [`Tag`] names the table ([`Msg::tag`]). [`encode`] builds the table;
//! [`decode`] verifies the bytes with the flatbuffers verifier and copies them into a [`Msg`],
//! so a malformed payload is an [`ProtoError`], never a panic. The rest of the cluster code
//! sees only these types.

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
    Ref { object_id: u64, holder: u64, len: u64 },
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
    Failed { kind: ErrorKind, task: String, message: String },
}

/// Every cluster message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Msg {
    RegisterNode { request_id: u64, node: Node },
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
    Registered { request_id: u64, id: u64, job_id: u64, error: String },
    Heartbeat { node_id: u64, resources: Vec<Resource>, store_used: u64 },
    GetNodes { request_id: u64 },
    Nodes { request_id: u64, nodes: Vec<Node> },
    GetWorker { request_id: u64, index: u64 },
    WorkerInfo { request_id: u64, index: u64, node_id: u64, job_id: u64, address: String, alive: bool },
    KvPut { request_id: u64, key: String, value: Vec<u8> },
    KvGet { request_id: u64, key: String },
    KvValue { request_id: u64, found: bool, value: Vec<u8> },
    RegisterActor { request_id: u64, actor: ActorInfo },
    LookupActor { request_id: u64, name: String, actor_id: u64 },
    ActorReply { request_id: u64, found: bool, actor: ActorInfo, error: String },
    ListActors { request_id: u64 },
    Actors { request_id: u64, actors: Vec<ActorInfo> },
    Subscribe { request_id: u64 },
    NodeEvent { node: Node },
    JobEvent { job_id: u64, finished: bool },
    Stop { reason: String },
    StartWorker {
        request_id: u64,
        job_id: u64,
        executable: String,
        args: Vec<String>,
        cwd: String,
        env: Vec<(String, String)>,
    },
    WorkerStarted { request_id: u64, index: u64, address: String, error: String },
    WorkerReady { job_id: u64, index: u64, address: String, pid: u32 },
    PushTask {
        task_id: u64,
        function: String,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_retries: u32,
    },
    TaskDone { task_id: u64, outcome: Outcome },
    CreateActor {
        actor_id: u64,
        class_name: String,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        max_concurrency: u32,
        max_restarts: u32,
    },
    ActorCall { actor_id: u64, call_id: u64, method: String, args: Vec<Arg> },
    KillActor { actor_id: u64, restart: bool },
    PullObject { request_id: u64, object_id: u64, priority: u8 },
    ObjectData { request_id: u64, found: bool, len: u64, inline: Vec<u8>, error: String },
    FreeObject { object_id: u64 },
}
