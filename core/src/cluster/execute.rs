//! Executing work other processes push here (tasks, actor creations and calls, each answered
//! with `TaskDone` when done), and the listing of what this process knows of tasks and
//! objects (`manta list tasks|objects`).

use crate::sync::Arc;

use bytes::Bytes;

use super::owner_of;
use super::peer::Peer;
use super::placement::resource_request;
use super::proto::{Arg, ErrorKind, Msg, Outcome, Resource};
use super::worker::Cluster;
use crate::error::Error;
use crate::object::{ObjectCell, ObjectValue, Payload, Waiter};
use crate::sync::lock;
use crate::task::ArgSlot;

impl Cluster {
    /// An argument from the wire as a local slot (a pending cell pulled from its holder).
    pub(super) fn local_arg(&self, arg: Arg) -> ArgSlot {
        match arg {
            Arg::Inline(v) => ArgSlot::Value(ObjectValue::inline(Bytes::from(v))),
            Arg::Ref {
                object_id,
                holder,
                len,
            } => ArgSlot::Ref(self.pulled(object_id, holder, len)),
        }
    }

    /// When `cell` completes, tells `peer` (the owner) with TaskDone{task_id}.
    pub(super) fn reply_when_done(
        &self,
        peer: &Arc<Peer>,
        task_id: u64,
        name: &str,
        cell: &Arc<ObjectCell>,
    ) {
        self.tasks
            .executing(task_id, name, peer.worker.unwrap_or(0), cell);
        let me = self.me.get().cloned().unwrap_or_default();
        let peer = peer.clone();
        let c2 = cell.clone();
        let respond = move || {
            let Some(c) = me.upgrade() else { return };
            c.tasks.executed(task_id);
            let outcome = match c2.get() {
                Some(Ok(v)) => c.outcome_of(task_id, v),
                Some(Err(e)) => failed_outcome(e),
                None => return,
            };
            peer.send(Msg::TaskDone { task_id, outcome });
        };
        if let Err(Waiter::Callback(f)) = cell.register(Waiter::Callback(Box::new(respond))) {
            f();
        }
    }

    pub(super) fn outcome_of(&self, task_id: u64, v: &ObjectValue) -> Outcome {
        match &v.data {
            Payload::Inline(b) if v.nested.is_empty() => Outcome::Inline(b.to_vec()),
            _ => {
                let len = v.len() as u64;
                // Not for an owner known dead: nobody could read or free it (those held
                // before the death was known go in `free_results_of`).
                self.objects.hold_unless(task_id, v.clone(), || {
                    self.placement.is_dead(super::owner_of(task_id))
                });
                Outcome::Stored { len }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_pushed_task(
        &self,
        peer: &Arc<Peer>,
        task_id: u64,
        function: &str,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        (max_retries, retry_on): (u32, Vec<String>),
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let request = resource_request(&resources);
        let (cell, extra) = rt.submit_pushed(
            task_id,
            function,
            slots,
            &request,
            (!name.is_empty()).then_some(name),
            (
                max_retries,
                (!retry_on.is_empty()).then(|| retry_on.into_iter().map(Box::from).collect()),
            ),
        );
        if extra.is_empty() {
            self.reply_when_done(peer, task_id, function, &cell);
        } else {
            self.reply_returns_when_done(peer, task_id, function, &cell, extra);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_pushed_actor(
        &self,
        peer: &Arc<Peer>,
        actor_id: u64,
        class_name: &str,
        args: Vec<Arg>,
        resources: Vec<Resource>,
        name: String,
        (max_concurrency, max_restarts): (u32, u32),
        group: (u32, u32),
        retries: super::proto::ActorRetries,
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let request = resource_request(&resources);
        let created = rt.create_pushed_actor(
            actor_id,
            class_name,
            slots,
            &request,
            &name,
            max_concurrency as usize,
            max_restarts,
            (group.1 > 0).then_some(crate::placement_group::Rank {
                rank: group.0,
                world_size: group.1,
            }),
            retries,
        );
        self.reply_when_done(peer, actor_id, class_name, &created);
    }

    pub(super) fn call_pushed_actor(
        &self,
        peer: &Arc<Peer>,
        actor_id: u64,
        call_id: u64,
        method: &str,
        args: Vec<Arg>,
    ) {
        let Some(rt) = self.runtime() else { return };
        let slots: Vec<ArgSlot> = args.into_iter().map(|a| self.local_arg(a)).collect();
        let cell = rt.call_pushed(actor_id, call_id, method, slots);
        self.reply_when_done(peer, call_id, method, &cell);
    }

    /// KillActor from an actor's owner (its last handle anywhere went, or `manta::kill`), or
    /// from any holder of a handle (`manta::kill`): kills the actor hosted here and, unless it
    /// restarts, records its death in the GCS's directory (`manta list actors`).
    pub(super) fn kill_pushed_actor(&self, actor_id: u64, restart: bool) {
        let Some(rt) = self.runtime() else { return };
        let Some(cell) = rt.kill_pushed(actor_id, restart) else {
            return;
        };
        let reason = "killed (manta::kill, or no handle to it was left)";
        rt.bury(&cell, cell.died(reason));
        self.record_actor_death(&cell, reason);
    }

    /// ReleaseActor from an actor's owner: no handle to it is left anywhere. The host drops
    /// its hold; the actor goes once the calls already submitted are done (they hold its
    /// cell, as embedded), and its death is recorded in the GCS's directory.
    pub(super) fn release_pushed_actor(&self, actor_id: u64) {
        let Some(rt) = self.runtime() else { return };
        let Some(cell) = rt.release_pushed(actor_id) else {
            return;
        };
        self.record_actor_death(&cell, "no handle to it was left");
        // Dropped here or with its last submitted call.
        drop(cell);
    }

    /// What this process knows of tasks and objects (`manta list tasks|objects`).
    pub(super) fn work(&self, request_id: u64) -> Msg {
        use super::proto::{ObjectRow, TaskRow};
        let my_node = self.node_id().unwrap_or(0);
        let node_of_slot =
            |slot: Option<usize>| slot.and_then(|i| self.placement.node_id_at(i)).unwrap_or(0);
        let mut tasks: Vec<TaskRow> = Vec::new();
        for (id, name, worker, slot) in self.tasks.in_flight_rows() {
            tasks.push(TaskRow {
                task_id: id,
                name: name.to_owned(),
                state: "SUBMITTED".into(),
                owner: self.index,
                worker,
                node_id: node_of_slot(slot),
            });
        }
        for (id, name, owner) in self.tasks.executing_rows() {
            tasks.push(TaskRow {
                task_id: id,
                name,
                state: "RUNNING".into(),
                owner,
                worker: self.index,
                node_id: my_node,
            });
        }
        let describe = |v: Option<Result<&ObjectValue, &Error>>| match v {
            None => ("pending", 0, self.index),
            Some(Err(_)) => ("failed", 0, self.index),
            Some(Ok(v)) => match &v.data {
                Payload::Inline(b) => ("inline", b.len() as u64, self.index),
                Payload::Stored(s) if s.is_attached() => ("attached", s.len() as u64, self.index),
                Payload::Stored(s) => ("store", s.len() as u64, self.index),
                Payload::Remote(r) => ("remote", r.size(), r.holder()),
            },
        };
        let mut objects: Vec<ObjectRow> = Vec::new();
        for (id, v) in self.objects.held_rows() {
            let (kind, size, holder) = describe(Some(Ok(&v)));
            objects.push(ObjectRow {
                object_id: id,
                size,
                kind: kind.into(),
                role: "held".into(),
                holder,
                owner: owner_of(id),
            });
        }
        if let Some(rt) = self.runtime() {
            for cell in rt.escaped_cells() {
                let (kind, size, holder) = describe(cell.get());
                objects.push(ObjectRow {
                    object_id: cell.id().as_u64(),
                    size,
                    kind: kind.into(),
                    role: "shared".into(),
                    holder,
                    owner: cell.id().owner().as_u64(),
                });
            }
        }
        let mut borrowed: Vec<Arc<ObjectCell>> = self.objects.fetched_cells();
        borrowed.extend(
            lock(&self.refs)
                .borrowed_handles()
                .filter_map(|e| e.cell.upgrade()),
        );
        for cell in borrowed {
            let (kind, size, holder) = describe(cell.get());
            objects.push(ObjectRow {
                object_id: cell.id().as_u64(),
                size,
                kind: kind.into(),
                role: "borrowed".into(),
                holder,
                owner: cell.id().owner().as_u64(),
            });
        }
        Msg::Work {
            request_id,
            tasks,
            objects,
            partial: false,
        }
    }
}

pub(super) fn failed_outcome(e: &Error) -> Outcome {
    let cause = match e {
        Error::Task(t) => t.pack_cause(),
        _ => Vec::new(),
    };
    let (kind, task, message) = error_to_wire(e);
    Outcome::Failed {
        kind,
        task,
        message,
        cause,
    }
}

/// Separates the fields of an error packed into one wire string.
pub(super) const SEP: char = '\u{1f}';

/// An error as it crosses the wire (`TaskDone`, `ObjectFailed`): its kind, the task (or, for
/// a lost object, the object's id) and the message; `submit::wire_error` reads it back.
pub(super) fn error_to_wire(e: &Error) -> (ErrorKind, String, String) {
    match e {
        Error::Task(t) => (
            ErrorKind::Panic,
            t.task_name().to_owned(),
            t.message().to_owned(),
        ),
        Error::ActorDied { class, reason, .. } => {
            (ErrorKind::ActorDied, class.clone(), reason.clone())
        }
        Error::Cancelled { task, .. } => (ErrorKind::Cancelled, task.clone(), String::new()),
        // Fields the message cannot carry go in `task`, separated by U+001F.
        Error::Infeasible {
            what,
            request,
            total,
        } => (
            ErrorKind::Infeasible,
            what.clone(),
            format!("{request}{SEP}{total}"),
        ),
        Error::ObjectStoreFull {
            object,
            size,
            used,
            pinned,
            capacity,
            waited,
        } => (
            ErrorKind::Store,
            format!(
                "full{SEP}{}{SEP}{size}{SEP}{used}{SEP}{pinned}{SEP}{capacity}{SEP}{}",
                object.as_u64(),
                waited.as_micros()
            ),
            e.to_string(),
        ),
        Error::ObjectStore { object, message } => (
            ErrorKind::Store,
            object.as_u64().to_string(),
            message.clone(),
        ),
        Error::WorkerCrashed { task, reason } => {
            (ErrorKind::WorkerCrashed, task.clone(), reason.clone())
        }
        Error::ObjectLost { object, reason } => (
            ErrorKind::ObjectLost,
            object.as_u64().to_string(),
            reason.clone(),
        ),
        Error::OwnerDied { object, reason } => (
            ErrorKind::OwnerDied,
            object.as_u64().to_string(),
            reason.clone(),
        ),
        Error::ObjectReconstructionFailedMaxAttemptsExceeded { object, reason } => (
            ErrorKind::ReconstructionMaxAttempts,
            object.as_u64().to_string(),
            reason.clone(),
        ),
        Error::ObjectReconstructionFailedLineageEvicted { object, reason } => (
            ErrorKind::LineageEvicted,
            object.as_u64().to_string(),
            reason.clone(),
        ),
        Error::PlacementGroupRemoved { group } => (
            ErrorKind::Other,
            super::submit::PG_REMOVED.to_string(),
            group.clone(),
        ),
        other => (ErrorKind::Other, String::new(), other.to_string()),
    }
}
