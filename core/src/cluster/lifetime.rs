//! Actor lifetimes beyond handles: detached actors, which outlive their owner and their job,
//! and deaths a host decides alone (`exit_actor`).
//!
//! # Detached actors
//!
//! 1. The owner creates the actor as any other (`CreateActor`, registered in the GCS under
//!    its name), then sends `DetachActor` on the same connection, so the host has the actor
//!    when it reads it. The owner's name table holds the actor's cell, so no handle count
//!    ever kills it.
//! 2. The host adds the actor to its `detached` set and reports the set's size to its raylet
//!    (`WorkerDetached`), on every change.
//! 3. When the job ends (its driver's connection to the GCS closed), the raylet stops the
//!    job's workers that host no detached actor as before (`Stop`, then SIGKILL). One that
//!    hosts some it keeps, and tells it `JobEvent { finished }` instead: the worker kills every
//!    other actor it hosts for the job (recording each death in the GCS, as a kill does), and
//!    serves on.
//! 4. Another job's driver finds the actor by name in the GCS, connects to its host, and calls
//!    or kills it (`KillActor`). Each kill or `exit_actor` of a detached actor shrinks the set
//!    and is reported (step 2); a raylet whose job ended stops the worker once it reports 0.
//!
//! A raylet that learns the count late (a `WorkerDetached` racing the job's end) stops the
//! worker: a detached actor created in the last moments of its driver may die with it.

use super::proto::{ActorInfo, Msg};
use super::worker::Cluster;
use crate::actor::ActorCell;

impl Cluster {
    /// Records in the GCS's directory that actor `cell`, hosted here, died (which frees its
    /// name there); the answer is of no use. A detached one leaves the set (step 4).
    pub(crate) fn record_actor_death(&self, cell: &ActorCell, reason: &str) {
        let actor = ActorInfo {
            actor_id: cell.id().as_u64(),
            name: cell.name().unwrap_or_default().to_owned(),
            class_name: cell.class_name().to_owned(),
            worker: self.index,
            node_id: self.node_id().unwrap_or(0),
            alive: false,
            death: reason.to_owned(),
            ..Default::default()
        };
        drop(
            self.gcs
                .request(|request_id| Msg::RegisterActor { request_id, actor }),
        );
        self.undetach(cell.id().as_u64());
    }

    /// Step 1, on the owner: tells actor `cell`'s host that it is detached.
    pub(crate) fn detach_remote(&self, cell: &ActorCell) {
        if let Some(remote) = super::supervision::RemoteActor::of_cell(cell) {
            remote.send_to_host(Msg::DetachActor {
                actor_id: cell.id().as_u64(),
            });
        }
    }

    /// Step 2: an actor hosted here is detached.
    pub(super) fn detach_pushed_actor(&self, actor_id: u64) {
        let hosted = self
            .runtime()
            .is_some_and(|rt| rt.hosts_actor(crate::id::ActorId::from_u64(actor_id)));
        if !hosted {
            tracing::debug!(
                actor_id,
                "DetachActor for an actor not hosted here: ignored"
            );
            return;
        }
        let count = self.actors.detach(actor_id);
        self.report_detached(count);
    }

    /// Step 4: actor `actor_id` is no longer hosted here.
    pub(super) fn undetach(&self, actor_id: u64) {
        if let Some(count) = self.actors.undetach(actor_id) {
            self.report_detached(count);
        }
    }

    fn report_detached(&self, count: usize) {
        if let Some(raylet) = self.peers.raylet() {
            raylet.send(Msg::WorkerDetached {
                index: self.index,
                count: u32::try_from(count).unwrap_or(u32::MAX),
            });
        }
    }

    /// On a host, when worker process `owner` died: every actor hosted here that it owned and
    /// did not detach dies with it, as in Ray (an actor's lifetime follows its owner's unless
    /// it is detached). Its calls, from any caller, fail with `ActorDied` saying so.
    pub(super) fn owner_died(&self, owner: u64) {
        let Some(rt) = self.runtime() else { return };
        let keep = self.actors.detached();
        let reason = format!(
            "its owner, worker process {owner}, died (an actor that is not detached dies with \
             its owner)"
        );
        for id in rt.hosted_actors() {
            let id = id.as_u64();
            if super::owner_of(id) != owner || keep.contains(&id) {
                continue;
            }
            if let Some(cell) = rt.release_pushed(id) {
                let why = cell.died(&reason);
                rt.bury(&cell, why.clone());
                cell.die(why);
                self.record_actor_death(&cell, &reason);
            }
        }
    }

    /// Step 3, on a host its raylet kept past its job's end: every actor of the job that is
    /// not detached dies, as when the job's workers stop.
    pub(super) fn job_ended(&self, job_id: u64) {
        if job_id != self.member.job_id {
            return;
        }
        let Some(rt) = self.runtime() else { return };
        let keep = self.actors.detached();
        for id in rt.hosted_actors() {
            if !keep.contains(&id.as_u64()) {
                self.kill_pushed_actor(id.as_u64(), false);
            }
        }
        tracing::info!(
            job = job_id,
            detached = keep.len(),
            "job finished: serving its detached actors"
        );
    }
}
