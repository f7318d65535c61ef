//! The heart of Manta: ids, task specs, objects and ownership, the lock-free local scheduler,
//! actors, the configuration catalogue and the embedded single-node runtime.
//!
//! Users depend on the `manta` facade, which re-exports this crate's API together with the
//! `#[remote]` and `#[actor]` macros. See `ARCHITECTURE.md` at the repository root for how the
//! pieces fit and which invariants they keep.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

mod actor;
mod actor_group;
#[allow(unsafe_code)] // one system call, argued there
mod affinity;
mod api;
#[allow(unsafe_code)] // the running task's pointer, borrowed without a count: argued there
mod cancel;
pub mod cluster;
mod codec;
pub mod collective;
pub mod config;
mod error;
mod gpus;
mod id;
mod object;
mod placement_group;
mod remote;
mod resources;
mod runtime;
mod scheduler;
mod store;
mod sync;
mod task;
pub mod topology;
mod view;

pub use actor::{Actor, ActorHandle, ActorOptions};
pub use actor_group::ActorGroup;
pub use api::{
    CancelOptions, NodeStatus, Split, block_on, cancel, cancel_with, exit_actor, get, get_actor,
    get_actor_in, get_all, get_timeout, kill, put, put_ref, restart, status, wait,
};
pub use config::{Config, CpuList, CustomResources, Resolved};
pub use error::{Error, PutError, TaskError};
pub use gpus::gpu_ids;
pub use id::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
pub use manta_store::PageKind;
pub use object::ObjectRef;
pub use placement_group::{
    Bundle, GroupMember, PlacementGroup, PlacementGroupBuilder, PlacementGroupId,
    PlacementGroupInfo, PlacementGroupState, PlacementStrategy, get_placement_group, group_rank,
    group_world_size, list_placement_groups, placement_group, placement_group_builder,
    remove_placement_group,
};
pub use runtime::{init, init_with, is_initialized, shutdown};
pub use store::ObjectStoreStatus;
pub use task::{IntoArg, TaskOptions, registered_functions};
pub use view::{Element, View, get_view};

/// Items the macros' generated code names; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{
        ActorClass, ActorMethod, ActorState, BoxedState, ClassRegistration, MethodRegistration,
        RawActorHandle,
    };
    pub use crate::api::{Returns, create_actor, submit, submit_returns};
    pub use crate::codec::encode;
    pub use crate::error::{ErrorType, ErrorTypeRegistration, returned_error};
    pub use crate::object::ObjectCell;
    pub use crate::object::ObjectValue;
    pub use crate::task::{
        ArgReader, ArgSlot, Invoke, InvokeReturns, Registration, RemoteFunction,
    };
    pub use inventory;
}
