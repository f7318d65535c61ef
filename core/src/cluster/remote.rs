//! The cluster's side of the seam (`crate::remote`): the core worker as the local runtime
//! sees it, and the borrow hook a decode opens.
//!
//! Every method here hands the runtime's request to the component that owns the state it
//! touches; none keeps state of its own.

use crate::sync::Arc;

use super::proto::Msg;
use super::supervision::RemoteActor;
use super::worker::Cluster;
use crate::actor::{ActorCell, ActorOptions};
use crate::cancel::CancelOptions;
use crate::error::Error;
use crate::id::{ActorId, ObjectId};
use crate::object::ObjectCell;
use crate::placement_group::PlacementGroupInfo;
use crate::remote::{
    ActorLocation, ActorPlace, BorrowHook, GroupRequest, Remote, RemoteValue, set_borrow_hook,
};
use crate::resources::ResourceRequest;
use crate::runtime::RuntimeInner;
use crate::task::ArgSlot;

/// A place the runtime hands back is one the cluster made ([`Cluster::actor_at`] and actor
/// creation): anything else is a bug, answered by doing nothing, logged.
fn record(place: &dyn ActorPlace) -> Option<&RemoteActor> {
    let r = RemoteActor::of(place);
    if r.is_none() {
        tracing::error!(?place, "an actor place the cluster did not make: ignored");
    }
    r
}

fn unexpected(msg: &Msg) -> Error {
    Error::Cluster {
        what: "the GCS".into(),
        message: format!("unexpected reply {}", msg.name()),
    }
}

impl Remote for Cluster {
    fn is_driver(&self) -> bool {
        Cluster::is_driver(self)
    }

    fn owns(&self, id: u64) -> bool {
        super::owner_of(id) == self.index
    }

    fn first_id(&self) -> u64 {
        Cluster::first_id(self)
    }

    fn node_id(&self) -> Option<u64> {
        Cluster::node_id(self)
    }

    fn gcs_address(&self) -> &str {
        &self.member.gcs_address
    }

    fn address(&self) -> &str {
        &self.member.address
    }

    fn token(&self) -> &str {
        &self.member.token
    }

    fn set_runtime(&self, rt: &Arc<RuntimeInner>) {
        Cluster::set_runtime(self, rt);
    }

    fn node_arena(&self) -> Option<manta_store::NodeClient> {
        Cluster::node_arena(self)
    }

    fn serve_as_worker(&self) -> ! {
        Cluster::serve_as_worker(self)
    }

    fn leave(&self) {
        Cluster::leave(self);
    }

    fn submit_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        function: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
        request: &ResourceRequest,
        name: Option<&str>,
        max_retries: u32,
        max_system_retries: u32,
        retry_on: crate::task::RetryOn,
    ) {
        Cluster::submit_remote(
            self,
            rt,
            function,
            cell,
            args,
            request,
            name,
            max_retries,
            max_system_retries,
            retry_on,
        );
    }

    fn expect_returns(&self, first: &Arc<ObjectCell>, extra: &[Arc<ObjectCell>]) {
        Cluster::expect_returns(self, first, extra);
    }

    fn cancel_remote(&self, cell: &Arc<ObjectCell>, options: CancelOptions) -> bool {
        Cluster::cancel_remote(self, cell, options)
    }

    fn create_actor_remote(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
    ) -> Result<(), Error> {
        Cluster::create_actor_remote(self, rt, actor, created, args, options)
    }

    fn create_actor_remote_after(
        &self,
        rt: &Arc<RuntimeInner>,
        actor: &Arc<ActorCell>,
        created: Arc<ObjectCell>,
        args: Vec<ArgSlot>,
        options: &ActorOptions,
        ready: Arc<ObjectCell>,
    ) {
        Cluster::create_actor_after(self, rt, actor, created, args, options, ready);
    }

    fn detach_remote(&self, cell: &ActorCell) {
        Cluster::detach_remote(self, cell);
    }

    fn register_hosted_actor(&self, actor_id: u64, class: &str) -> Result<(), Error> {
        Cluster::register_hosted_actor(self, actor_id, class)
    }

    fn hosted_actor_died(&self, actor_id: u64, class: &str, death: &str) {
        Cluster::hosted_actor_died(self, actor_id, class, death);
    }

    fn record_actor_death(&self, cell: &ActorCell, reason: &str) {
        Cluster::record_actor_death(self, cell, reason);
    }

    fn call_remote(
        &self,
        actor: &Arc<ActorCell>,
        borrow: Option<&Arc<dyn RemoteValue>>,
        place: &dyn ActorPlace,
        method: &'static str,
        cell: Arc<ObjectCell>,
        args: Box<[ArgSlot]>,
    ) {
        match record(place) {
            Some(remote) => Cluster::call_remote(self, actor, borrow, remote, method, cell, args),
            None => {
                cell.complete(Err(Error::Cluster {
                    what: format!("a call to actor {}", actor.id()),
                    message: "its place is not the cluster's".into(),
                }));
            }
        }
    }

    fn group_call(
        &self,
        members: &[&crate::actor::RawActorHandle],
        method: &'static str,
        args: &[ArgSlot],
    ) -> Option<Vec<Arc<ObjectCell>>> {
        Cluster::group_call(self, members, method, args)
    }

    fn locate_actor(&self, actor_id: u64, name: &str) -> Result<ActorLocation, Error> {
        let info = Cluster::locate_actor(self, actor_id, name)?;
        Ok(ActorLocation {
            actor_id: info.actor_id,
            class_name: info.class_name,
            worker: info.worker,
            restarting: info.restarting,
        })
    }

    fn actor_at(&self, worker: u64) -> Arc<dyn ActorPlace> {
        Arc::new(Cluster::remote_actor(self, worker))
    }

    fn follow_restart(&self, cell: &Arc<ActorCell>, old: u64) {
        Cluster::follow_restart(self, cell, old);
    }

    fn release_remote(&self, place: &dyn ActorPlace, actor_id: u64) {
        if let Some(remote) = record(place) {
            Cluster::release_remote(self, remote, actor_id);
        }
    }

    fn release_actor_load(&self, actor_id: u64) {
        Cluster::release_actor_load(self, actor_id);
    }

    fn kill_hosted(&self, actor_id: u64) -> bool {
        Cluster::kill_hosted(self, actor_id)
    }

    fn kill_remote(&self, place: &dyn ActorPlace, actor_id: u64, restart: bool) {
        if let Some(remote) = record(place) {
            Cluster::kill_remote(self, remote, actor_id, restart);
        }
    }

    fn restart_remote(&self, cell: &Arc<ActorCell>, place: &dyn ActorPlace) -> bool {
        record(place).is_some_and(|remote| Cluster::restart_remote(self, cell, remote))
    }

    fn fail_calls_to(&self, actor_id: u64, error: &Error) {
        Cluster::fail_calls_to(self, actor_id, error);
    }

    fn record_killed_actor(&self, actor_id: u64, class_name: &str, worker: u64) {
        Cluster::record_killed_actor(self, actor_id, class_name, worker);
    }

    fn node_of_worker(&self, index: u64) -> Option<u64> {
        Cluster::node_of_worker(self, index)
    }

    fn borrow(&self, id: ObjectId) -> Arc<ObjectCell> {
        Cluster::borrow(self, id)
    }

    fn borrow_actor(&self, id: ActorId) -> Arc<dyn RemoteValue> {
        Cluster::borrow_actor(self, id)
    }

    fn kv_put(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        match self.gcs_call(|request_id| Msg::KvPut {
            request_id,
            key: key.to_owned(),
            value: value.to_vec(),
        })? {
            Msg::KvValue { found, .. } => Ok(found),
            other => Err(unexpected(&other)),
        }
    }

    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.gcs_call(|request_id| Msg::KvGet {
            request_id,
            key: key.to_owned(),
        })? {
            Msg::KvValue { found, value, .. } => Ok(found.then_some(value)),
            other => Err(unexpected(&other)),
        }
    }

    fn pg_create(&self, group: GroupRequest<'_>) -> Result<(), Error> {
        Cluster::pg_create(self, super::pg::request_row(&group, self.member.job_id))
    }

    fn pg_remove(&self, pg_id: u64, workers: &[u64]) -> Result<(), Error> {
        Cluster::pg_remove(self, pg_id, workers)
    }

    fn pg_watch(&self, pg_id: u64) -> Result<PlacementGroupInfo, Error> {
        Ok(super::pg::info_of(&Cluster::pg_watch(self, pg_id)?))
    }

    fn pg_list(&self) -> Result<Vec<PlacementGroupInfo>, Error> {
        Ok(Cluster::pg_list(self)?
            .iter()
            .map(super::pg::info_of)
            .collect())
    }
}

// ----- the borrow hook -----------------------------------------------------------------

/// Registers the borrows a decode noted (`borrow.rs`, "Borrowers"), called by the runtime's
/// `DecodeScope` only when the decode met a reference owned elsewhere.
struct Borrows;

impl BorrowHook for Borrows {
    fn finish(&self, start: usize) {
        super::borrow::finish_decode(start);
    }
}

/// Installs the borrow hook: called when this process joins a cluster.
pub(super) fn enable() {
    static HOOK: Borrows = Borrows;
    set_borrow_hook(&HOOK);
}
