//! # Manta
//!
//! A distributed task, actor and object runtime for HPC clusters, in the spirit of Ray.
//! Write remote **tasks** (functions), **actors** (stateful objects) and pass immutable
//! **objects** between them as futures ([`ObjectRef`]). `manta::init()` with nothing configured
//! starts an embedded single-node cluster inside the process.
//!
//! ```
//! #[manta::remote]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! #[manta::actor]
//! pub struct Counter {
//!     total: i64,
//! }
//!
//! #[manta::actor]
//! impl Counter {
//!     pub fn new(start: i64) -> Self {
//!         Counter { total: start }
//!     }
//!     pub fn add(&mut self, by: i64) -> i64 {
//!         self.total += by;
//!         self.total
//!     }
//! }
//!
//! fn main() -> Result<(), manta::Error> {
//!     manta::init()?;
//!     let x = add::remote(1, 2);                 // a task; returns ObjectRef<i64> at once
//!     let y = add::remote(&x, 10);               // refs are resolved before the task runs
//!     assert_eq!(manta::get(&y)?, 13);
//!
//!     let counter = Counter::remote(100);        // an actor
//!     counter.add(1);
//!     assert_eq!(counter.add(&y).get()?, 114);   // calls run in submission order
//!
//!     let big = manta::put(vec![1u8; 1 << 20])?; // an object
//!     let (ready, _) = manta::wait(vec![big], 1, None)?;
//!     assert_eq!(ready[0].get()?.len(), 1 << 20);
//!     manta::shutdown();
//!     Ok(())
//! }
//! ```
//!
//! ## Errors are values
//!
//! A task that panics fails its result object; `get` returns [`Error::Task`] with the task's
//! name and panic message, and the caller keeps running. A request no node could ever satisfy
//! fails fast with [`Error::Infeasible`]. Using the API before `init` or after `shutdown`
//! returns [`Error::NotInitialized`] or [`Error::ShutDown`].
//!
//! ## Bounds
//!
//! Arguments and results cross process boundaries in a cluster, so they are owned,
//! `serde`-serialisable, `Send + 'static` values. Borrowed or thread-bound values are refused at
//! compile time:
//!
//! ```compile_fail
//! #[manta::remote]
//! fn length(s: &str) -> usize { s.len() }
//! ```
//!
//! ```compile_fail
//! // Rc is neither Send nor serialisable: not a valid argument type.
//! #[manta::remote]
//! fn count(v: std::rc::Rc<Vec<u8>>) -> usize { v.len() }
//! ```
//!
//! ```compile_fail
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct NotSend(std::marker::PhantomData<*const ()>);
//! #[manta::remote]
//! fn f() -> u8 { 0 }
//! fn main() { let _ = f::remote(); let _ = manta::put(NotSend(Default::default())); }
//! ```
//!
//! A task may return several objects (Ray's `num_returns`): the function returns a tuple of
//! that many elements, and `f::remote(..)` returns one typed `ObjectRef` per element, each its
//! own object, usable and freed on its own:
//!
//! ```
//! #[manta::remote(num_returns = 2)]
//! fn split(v: Vec<u32>) -> (Vec<u32>, Vec<u32>) {
//!     let (a, b) = v.split_at(v.len() / 2);
//!     (a.to_vec(), b.to_vec())
//! }
//!
//! # fn main() -> Result<(), manta::Error> {
//! manta::init()?;
//! let (low, high): (manta::ObjectRef<Vec<u32>>, manta::ObjectRef<Vec<u32>>) =
//!     split::remote(vec![1, 2, 3, 4]);
//! drop(low);
//! assert_eq!(high.get()?, vec![3, 4]);
//! manta::shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! The declared count must match the tuple:
//!
//! ```compile_fail
//! #[manta::remote(num_returns = 3)]
//! fn pair() -> (u8, u8) { (1, 2) }
//! ```
//!
//! ```compile_fail
//! #[manta::remote(num_returns = 0)]
//! fn nothing() {}
//! ```
//!
//! An actor's state is shared by the slots that run its methods, so it must be `Send + Sync`:
//!
//! ```compile_fail
//! #[manta::actor]
//! pub struct Cache { hits: std::cell::Cell<u64> }
//! #[manta::actor]
//! impl Cache {
//!     pub fn new() -> Self { Cache { hits: std::cell::Cell::new(0) } }
//! }
//! ```
//!
//! A method's own retries (Ray's `@ray.method`) take only `retry_exceptions` and
//! `max_task_retries`:
//!
//! ```
//! #[manta::actor]
//! pub struct Probe { runs: u32 }
//! #[manta::actor]
//! impl Probe {
//!     pub fn new() -> Self { Probe { runs: 0 } }
//!     #[method(retry_exceptions = true, max_task_retries = 2)]
//!     pub fn sturdy(&mut self) -> u32 { self.runs += 1; self.runs }
//! }
//! ```
//!
//! ```compile_fail
//! #[manta::actor]
//! pub struct Probe { runs: u32 }
//! #[manta::actor]
//! impl Probe {
//!     pub fn new() -> Self { Probe { runs: 0 } }
//!     #[method(retries = 2)] // not an option of a method
//!     pub fn sturdy(&mut self) -> u32 { self.runs += 1; self.runs }
//! }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

extern crate self as manta;

pub use manta_core::cluster;
pub use manta_core::collective;
pub use manta_core::config;
pub use manta_core::register_error;
pub use manta_core::{
    Actor, ActorGroup, ActorHandle, ActorId, ActorOptions, Bundle, CancelOptions, Config, CpuList,
    CustomResources, Element, Error, GroupMember, IntoArg, NodeStatus, ObjectId, ObjectRef,
    ObjectStoreStatus, PageKind, PlacementGroup, PlacementGroupBuilder, PlacementGroupId,
    PlacementGroupInfo, PlacementGroupState, PlacementStrategy, PutError, TaskError, TaskId,
    TaskOptions, View, block_on, cancel, cancel_with, exit_actor, get, get_actor, get_actor_in,
    get_all, get_placement_group, get_timeout, get_view, gpu_ids, group_rank, group_world_size,
    is_initialized, kill, list_placement_groups, placement_group, placement_group_builder, put,
    put_ref, registered_functions, remove_placement_group, restart, status, wait,
};
/// CUDA devices: discovery, a worker's context and stream (`manta-gpu`; the `cuda` feature).
pub use manta_gpu as gpu;
pub use manta_launcher::{init, init_with, shutdown};
pub use manta_macros::{actor, remote};

/// Items generated code names; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use manta_core::__private::*;
}

/// The README's code blocks, compiled and run as doctests so the tour cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
