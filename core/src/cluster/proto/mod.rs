//! The cluster's messages as Rust values, and their flatbuffers encoding.
//!
//! Every message is a table of `core/schemas/cluster.fbs`, sent as the payload of a transport
//! envelope whose [`Tag`] names the table ([`Msg::tag`]). [`encode`] builds the table;
//! [`decode`] verifies the bytes with the flatbuffers verifier and copies them into a [`Msg`],
//! so a malformed payload is a [`ProtoError`], never a panic. The rest of the cluster code
//! sees only these types.
//!
//! `encode.rs` builds the tables, `decode.rs` verifies and reads them, `tests.rs` round-trips
//! every message.
//!
//! Tags are stable wire numbers: 1–38 (`NAMES`), then ranges kept apart per area; 60–69
//! carry actor lifetimes (`DetachActor`, `WorkerDetached`: `cluster/lifetime.rs`); 70–79
//! placement groups (one table, `PgMsg`, whose tag says the operation: [`PgOp`]); 90–99 the
//! head's restart (`RejoinWorker`, and `GcsCounters` and `GcsForget`, which only the GCS's
//! saved tables hold: `cluster/gcs_store.rs`); 100–109 actor groups; 120–129 placement-group
//! handles held by processes other than the group's owner (`PgWatch`).

use manta_transport::Tag;

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use decode::decode;
pub(crate) use encode::encode;

/// A resource amount of a node or a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Resource {
    pub(crate) name: String,
    pub(crate) total: f64,
    pub(crate) available: f64,
}

/// One member a [`Msg::GroupCall`] reaches: the actor, the call's id and its host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupTarget {
    pub(crate) actor_id: u64,
    pub(crate) call_id: u64,
    pub(crate) worker: u64,
}

/// One bundle of a placement group on the wire.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PgBundle {
    pub(crate) index: u32,
    /// The node it is reserved on (0: none yet).
    pub(crate) node_id: u64,
    pub(crate) resources: Vec<Resource>,
    /// Its CPU set on its node (empty: not pinned).
    pub(crate) cpus: Vec<u32>,
    /// Why a bundle that asked for whole CPUs has no set (empty otherwise).
    pub(crate) cpu_note: String,
    /// Its GPUs on its node (ordinals; empty: none given).
    pub(crate) gpus: Vec<u32>,
}

/// A placement group on the wire (`strategy`, `state`: see `cluster.fbs`, `PgRow`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PgRow {
    pub(crate) pg_id: u64,
    pub(crate) name: String,
    pub(crate) strategy: u8,
    pub(crate) state: u8,
    pub(crate) detached: bool,
    pub(crate) job_id: u64,
    pub(crate) bundles: Vec<PgBundle>,
}

/// What a placement-group message asks or says; its tag is `TAG_PG_FIRST + op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PgOp {
    Create = 0,
    Reply = 1,
    Prepare = 2,
    Prepared = 3,
    Commit = 4,
    Cancel = 5,
    Remove = 6,
    List = 7,
    Groups = 8,
}

impl PgOp {
    const ALL: [PgOp; 9] = [
        PgOp::Create,
        PgOp::Reply,
        PgOp::Prepare,
        PgOp::Prepared,
        PgOp::Commit,
        PgOp::Cancel,
        PgOp::Remove,
        PgOp::List,
        PgOp::Groups,
    ];
    pub(crate) fn from_tag(tag: u64) -> Option<PgOp> {
        let i = usize::try_from(tag.checked_sub(TAG_PG_FIRST)?).ok()?;
        PgOp::ALL.get(i).copied()
    }
    fn name(self) -> &'static str {
        match self {
            PgOp::Create => "PgCreate",
            PgOp::Reply => "PgReply",
            PgOp::Prepare => "PgPrepare",
            PgOp::Prepared => "PgPrepared",
            PgOp::Commit => "PgCommit",
            PgOp::Cancel => "PgCancel",
            PgOp::Remove => "PgRemove",
            PgOp::List => "PgList",
            PgOp::Groups => "PgGroups",
        }
    }
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
    /// Not dead: alive, or restarting.
    pub(crate) alive: bool,
    pub(crate) death: String,
    /// Its worker died and its owner is starting it again (with `alive`).
    pub(crate) restarting: bool,
    /// Times it was restarted after its worker died.
    pub(crate) num_restarts: u32,
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
    /// `task` is the task's name.
    WorkerCrashed,
    /// `task` is the object's id (decimal).
    ObjectLost,
    /// `task` is the object's id (decimal).
    OwnerDied,
    /// `task` is the object's id (decimal).
    ReconstructionMaxAttempts,
    /// `task` is the object's id (decimal).
    LineageEvicted,
}

/// An actor's retries of its calls after a panic, as `CreateActor` carries them (defined
/// at the seam, `crate::remote`, since the local runtime applies them).
pub(crate) use crate::remote::ActorRetries;

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
        /// A task error's typed cause, packed by `TaskError::pack_cause` (whether the function
        /// returned `Err`, the cause's type name, its serialised value); empty when none. On
        /// the wire it is `TaskDone.inline`, which a failed outcome does not otherwise use.
        cause: Vec<u8>,
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
        /// The GCS saves its tables: a member that loses it rejoins it after a restart.
        saved: bool,
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
        /// The error types whose `Err` runs it again; empty: any application error.
        retry_on: Vec<String>,
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
        /// An actor group member's `(rank, world size)`; world 0: not a member.
        group: (u32, u32),
        /// What runs a call again after its method panicked.
        exception_retries: ActorRetries,
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
    /// A call of `method` on every target, relayed as a tree (`cluster/group_call.rs`).
    GroupCall {
        caller: u64,
        method: String,
        args: Vec<Arg>,
        targets: Vec<GroupTarget>,
        fanout: u32,
    },
    DetachActor {
        actor_id: u64,
    },
    /// Watch placement group `pg_id` from a process holding a handle to it (`cluster/pg.rs`).
    PgWatch {
        request_id: u64,
        pg_id: u64,
    },
    /// Every placement-group message (see [`PgOp`]).
    Pg {
        op: PgOp,
        request_id: u64,
        group: PgRow,
        error: String,
        groups: Vec<PgRow>,
    },
    WorkerDetached {
        index: u64,
        count: u32,
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
    /// No handle to the actor is left: it goes once its submitted calls are done.
    ReleaseActor {
        actor_id: u64,
    },
    /// The object a pull asked for failed (instead of `ObjectData`).
    ObjectFailed {
        request_id: u64,
        kind: ErrorKind,
        task: String,
        message: String,
        /// A task error's typed cause (`TaskError::pack_cause`); empty when none.
        cause: Vec<u8>,
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
    CancelTask {
        request_id: u64,
        task_id: u64,
        force: bool,
        recursive: bool,
    },
    CancelReply {
        request_id: u64,
        cancelled: bool,
        ending: bool,
    },
    /// A worker or driver re-registers with a restarted GCS under the ids it had.
    RejoinWorker {
        request_id: u64,
        index: u64,
        node_id: u64,
        job_id: u64,
        address: String,
        shm_path: String,
        host_id: String,
        driver: bool,
    },
    /// A record of the GCS's saved tables (never sent): the entry under this key is gone.
    GcsForget {
        kind: u8,
        id: u64,
        name: String,
    },
    /// The header of the GCS's saved tables (never sent).
    GcsCounters {
        version: u32,
        next_node: u64,
        next_worker: u64,
        next_job: u64,
        address: String,
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
// Failed objects (40).
pub(crate) const TAG_OBJECT_FAILED: u64 = 40;
// Cancel (50–59).
pub(crate) const TAG_CANCEL_TASK: u64 = 50;
pub(crate) const TAG_CANCEL_REPLY: u64 = 51;
// Actor lifetimes (60–69).
pub(crate) const TAG_DETACH_ACTOR: u64 = 60;
pub(crate) const TAG_WORKER_DETACHED: u64 = 61;
// Placement groups (70–79): `TAG_PG_FIRST + PgOp`.
pub(crate) const TAG_PG_FIRST: u64 = 70;
// Head restart (90–99).
pub(crate) const TAG_REJOIN_WORKER: u64 = 90;
pub(crate) const TAG_GCS_COUNTERS: u64 = 91;
pub(crate) const TAG_GCS_FORGET: u64 = 92;
pub(crate) const TAG_RELEASE_ACTOR: u64 = 41;
// Actor groups (100–109).
pub(crate) const TAG_GROUP_CALL: u64 = 100;
// Placement-group handles (120–129).
pub(crate) const TAG_PG_WATCH: u64 = 120;

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

/// Table names of the tags past `NAMES`, which are numbered in ranges (`(tag, name)`).
const MORE_NAMES: &[(u64, &str)] = &[
    (TAG_OBJECT_FAILED, "ObjectFailed"),
    (TAG_RELEASE_ACTOR, "ReleaseActor"),
    (TAG_CANCEL_TASK, "CancelTask"),
    (TAG_CANCEL_REPLY, "CancelReply"),
    (TAG_DETACH_ACTOR, "DetachActor"),
    (TAG_WORKER_DETACHED, "WorkerDetached"),
    (TAG_GROUP_CALL, "GroupCall"),
    (TAG_PG_WATCH, "PgWatch"),
    (TAG_REJOIN_WORKER, "RejoinWorker"),
    (TAG_GCS_COUNTERS, "GcsCounters"),
    (TAG_GCS_FORGET, "GcsForget"),
];

/// The table name a tag stands for, if it is a cluster message's.
pub(crate) fn tag_name(tag: u64) -> Option<&'static str> {
    if let Some(op) = PgOp::from_tag(tag) {
        return Some(op.name());
    }
    let i = usize::try_from(tag.checked_sub(1)?).ok()?;
    NAMES.get(i).copied().or_else(|| {
        MORE_NAMES
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
    })
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
            Msg::DetachActor { .. } => TAG_DETACH_ACTOR,
            Msg::PgWatch { .. } => TAG_PG_WATCH,
            Msg::Pg { op, .. } => TAG_PG_FIRST + *op as u64,
            Msg::WorkerDetached { .. } => TAG_WORKER_DETACHED,
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
            Msg::CancelTask { .. } => TAG_CANCEL_TASK,
            Msg::CancelReply { .. } => TAG_CANCEL_REPLY,
            Msg::ObjectFailed { .. } => TAG_OBJECT_FAILED,
            Msg::ReleaseActor { .. } => TAG_RELEASE_ACTOR,
            Msg::GroupCall { .. } => TAG_GROUP_CALL,
            Msg::RejoinWorker { .. } => TAG_REJOIN_WORKER,
            Msg::GcsCounters { .. } => TAG_GCS_COUNTERS,
            Msg::GcsForget { .. } => TAG_GCS_FORGET,
        }
    }

    /// The envelope tag that names this message's table.
    pub(crate) fn tag(&self) -> Tag {
        Tag(self.tag_u64())
    }

    /// The name of this message's table (for logs and errors).
    pub(crate) fn name(&self) -> &'static str {
        // Every tag has a name (tags past NAMES are named in `tag_name`).
        tag_name(self.tag_u64()).unwrap_or("?")
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
