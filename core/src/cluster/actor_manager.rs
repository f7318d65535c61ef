//! The actor manager (Ray's `ActorManager`, with the owner's half of `GcsActorManager`'s
//! restarts): the actors this process created in worker processes, what their creation
//! counts on placement, and the detached actors this worker hosts.
//!
//! Three tables, each behind its own lock:
//!
//! - owned: an [`OwnedActor`] record per actor this process created elsewhere, with what a
//!   restart needs. The restart protocol (`supervision.rs`) holds this table's lock across a
//!   record's location lock (lock order: owned table, then location): its steps run as
//!   closures under the lock, through [`ActorManager::with_owned`] (the whole table) and
//!   [`ActorManager::with_record`] (one record), so the guard never leaves this file.
//! - loads: the placement load each remote actor's creation counts (node slot, worker,
//!   resources), given back when it is killed (`cancel.rs`).
//! - detached: the detached actors this worker hosts, reported to its raylet so that it
//!   outlives its job (`lifetime.rs`).

use crate::sync::Mutex;
use std::collections::{HashMap, HashSet};

use super::supervision::OwnedActor;
use crate::sync::lock;

/// What a remote actor's creation counts on its placement: node slot, worker, load.
pub(super) type ActorLoad = (usize, u64, Vec<(String, f64)>);

/// The actor manager's tables.
#[derive(Default)]
pub(super) struct ActorManager {
    owned: Mutex<HashMap<u64, OwnedActor>>,
    loads: Mutex<HashMap<u64, ActorLoad>>,
    detached: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for ActorManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorManager")
            .field("owned", &lock(&self.owned).len())
            .field("loads", &lock(&self.loads).len())
            .field("detached", &lock(&self.detached).len())
            .finish()
    }
}

impl ActorManager {
    // ----- owned actors -----------------------------------------------------------------

    /// Runs `step` on the owned table, under its lock: a step of the restart protocol that
    /// holds the table across a record's location (`supervision.rs`). `step` must not call
    /// back into this manager's owned table.
    pub(super) fn with_owned<R>(&self, step: impl FnOnce(&mut HashMap<u64, OwnedActor>) -> R) -> R {
        step(&mut lock(&self.owned))
    }

    /// Runs `step` on actor `id`'s record under the table's lock; `None` if there is none.
    pub(super) fn with_record<R>(
        &self,
        id: u64,
        step: impl FnOnce(&mut OwnedActor) -> R,
    ) -> Option<R> {
        lock(&self.owned).get_mut(&id).map(step)
    }

    /// Records actor `id`, created elsewhere; forgets records whose cell is gone.
    pub(super) fn own(&self, id: u64, record: OwnedActor) {
        let mut owned = lock(&self.owned);
        owned.retain(|_, a| a.is_live());
        owned.insert(id, record);
    }

    /// Forgets actor `id` (dead for good): its record.
    pub(super) fn disown(&self, id: u64) -> Option<OwnedActor> {
        lock(&self.owned).remove(&id)
    }

    // ----- placement loads --------------------------------------------------------------

    /// Actor `id`'s creation counts `load` on its placement.
    pub(super) fn count_load(&self, id: u64, load: ActorLoad) {
        lock(&self.loads).insert(id, load);
    }

    /// What actor `id`'s creation counted, taken back (once).
    pub(super) fn take_load(&self, id: u64) -> Option<ActorLoad> {
        lock(&self.loads).remove(&id)
    }

    // ----- detached actors hosted here --------------------------------------------------

    /// Hosted actor `id` is detached: how many are now.
    pub(super) fn detach(&self, id: u64) -> usize {
        let mut detached = lock(&self.detached);
        detached.insert(id);
        detached.len()
    }

    /// Hosted actor `id` is hosted here no longer: how many detached ones are left, if it
    /// was one of them.
    pub(super) fn undetach(&self, id: u64) -> Option<usize> {
        let mut detached = lock(&self.detached);
        detached.remove(&id).then(|| detached.len())
    }

    /// The detached actors hosted here.
    pub(super) fn detached(&self) -> HashSet<u64> {
        lock(&self.detached).clone()
    }
}
