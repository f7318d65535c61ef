//! Placement on one node (the embedded runtime): create, place (all or nothing), retry when
//! resources are released, remove.

use super::node::{bundle_cells, create_in_cluster, marker_rank, new_record, set_cells};
use super::{
    CREATED, GroupRecord, PENDING, PlacementGroup, PlacementGroupBuilder, PlacementGroupId,
    PlacementStrategy, REMOVED,
};
use crate::codec;
use crate::error::Error;
use crate::resources::{CPU_NAME, GPU_NAME};
use crate::runtime::RuntimeInner;
use crate::scheduler::Scheduler;
use crate::sync::{Arc, Ordering, Weak, lock};

pub(super) fn create(
    rt: &Arc<RuntimeInner>,
    b: PlacementGroupBuilder,
) -> Result<PlacementGroup, Error> {
    if let Some(cluster) = &rt.cluster {
        return create_in_cluster(rt, &**cluster, b);
    }
    let s = &rt.scheduler;
    let id = PlacementGroupId(rt.next_object_id().as_u64());
    // A bundle larger than the node can never be placed (Ray's infeasible group).
    for (i, bundle) in b.bundles.iter().enumerate() {
        if s.resources.demand(&bundle.request()).is_err() {
            return Err(Error::Infeasible {
                what: format!("placement group {id} bundle {i}"),
                request: bundle.to_string(),
                total: s.resources.total_string(),
            });
        }
    }
    let rec = new_record(id, &b);
    {
        let mut table = lock(&s.groups.table);
        table.claim_name(b.name.as_deref(), &rec)?;
        let slots = match s
            .resources
            .add_dynamic(&rec.resources(), &|n| marker_rank(id.0, n))
        {
            Ok(slots) => slots,
            Err(message) => {
                if let Some(name) = &b.name {
                    table.by_name.remove(name);
                }
                return Err(Error::Cluster {
                    what: "placement_group".into(),
                    message,
                });
            }
        };
        let cells = bundle_cells(&s.resources, id.0, &rec.resources(), &slots);
        let mut res = lock(&rec.reservation);
        res.slots = slots;
        res.cells = cells;
        drop(res);
        table.by_id.insert(id, rec.clone());
    }
    if !try_place(s, &rec) && can_ever_fit(&rec) {
        // Pending: listed first, then tried once more, so a release between the failed try
        // and the listing is not missed (the pending queue's rule).
        lock(&s.groups.table).pending.push(rec.clone());
        s.groups.num_pending.fetch_add(1, Ordering::SeqCst);
        retry_pending(s);
    }
    Ok(PlacementGroup { rec })
}

/// Whether the node could ever hold the group (STRICT_SPREAD of several bundles needs as
/// many nodes; bundles that do not fit together need more than this node).
pub(super) fn can_ever_fit(rec: &GroupRecord) -> bool {
    !(rec.strategy == PlacementStrategy::StrictSpread && rec.bundles.len() > 1)
}

/// Reserves the group on the node if it fits now; returns whether it is created.
pub(super) fn try_place(s: &Scheduler, rec: &GroupRecord) -> bool {
    if !can_ever_fit(rec) {
        return false;
    }
    let Ok(carve) = s.resources.demand(&rec.sum()) else {
        return false;
    };
    let mut res = lock(&rec.reservation);
    if res.phase != PENDING {
        return res.phase == CREATED;
    }
    let whole = |name: &str| -> Vec<usize> {
        rec.bundles
            .iter()
            .map(|b| crate::topology::whole_units(b.amount(name)))
            .collect()
    };
    // The group's devices: chosen by topology among the wholly free ones, if they are still
    // free when the carve is acquired.
    let places = s.groups.node_sets.gpu_places();
    if let Some(grant) = carve.gpus() {
        let plan = crate::topology::split_gpus(
            &places,
            &s.resources.wholly_free_devices(),
            &whole(GPU_NAME),
        );
        let mask = plan
            .iter()
            .flatten()
            .filter(|&&d| d < 63)
            .fold(0, |m, &d| m | (1 << d));
        grant.prefer(mask);
    }
    if !s.resources.try_acquire(&carve) {
        return false;
    }
    // The bundles' GPUs: out of the devices the carve holds, by topology; their CPU sets on
    // the NUMA node of their GPUs.
    let held = carve.gpus().map_or(0, crate::gpus::GpuGrant::mask);
    let devices: std::collections::BTreeSet<usize> =
        (0..64).filter(|d| held & (1 << d) != 0).collect();
    let gpus = crate::topology::split_gpus(&places, &devices, &whole(GPU_NAME));
    let near: Vec<Option<usize>> = gpus
        .iter()
        .map(|g| crate::topology::numa_of_gpus(&places, g))
        .collect();
    let (cpus, note) = s
        .groups
        .node_sets
        .take(s.affinity(), &whole(CPU_NAME), &near);
    set_cells(&res.cells, &cpus, &gpus);
    res.gpus = gpus;
    if let Some(note) = &note {
        tracing::warn!(pg = %rec.id, "placement group bundles {note}");
    }
    res.cpus = cpus;
    res.cpu_note = note;
    s.resources.commit_dynamic(&res.slots);
    res.carve = Some(carve);
    res.phase = CREATED;
    drop(res);
    rec.ready.complete(codec::encode(&()));
    // Tasks submitted to the group while it was pending wait in the pending queue.
    s.drain_pending();
    true
}

/// Tries the pending groups again (a release happened).
pub(crate) fn retry_pending(s: &Scheduler) {
    let pending: Vec<_> = lock(&s.groups.table).pending.clone();
    let mut placed = Vec::new();
    for rec in pending {
        if try_place(s, &rec) || rec.phase() != PENDING {
            placed.push(rec.id);
        }
    }
    if !placed.is_empty() {
        let mut table = lock(&s.groups.table);
        let before = table.pending.len();
        table.pending.retain(|r| !placed.contains(&r.id));
        let gone = before - table.pending.len();
        s.groups.num_pending.fetch_sub(gone, Ordering::SeqCst);
    }
}

pub(super) fn remove(rt: &Arc<RuntimeInner>, rec: &Arc<GroupRecord>) -> Result<(), Error> {
    let s = &rt.scheduler;
    let (slots, carve, workers) = {
        let mut res = lock(&rec.reservation);
        if res.phase == REMOVED {
            return Err(rec.removed());
        }
        res.phase = REMOVED;
        if rt.cluster.is_none() {
            s.groups.node_sets.give_back(&res.cpus);
            s.groups.node_sets.give_back_gpus(&res.gpus);
        }
        (
            std::mem::take(&mut res.slots),
            res.carve.take(),
            std::mem::take(&mut res.workers),
        )
    };
    if let Some(cluster) = &rt.cluster {
        let held: Vec<u64> = workers.iter().map(|(w, _)| *w).collect();
        let outcome = cluster.pg_remove(rec.id.0, &held);
        {
            let mut table = lock(&s.groups.table);
            table.by_id.remove(&rec.id);
            if let Some(name) = &rec.name
                && table.by_name.get(name).is_some_and(|r| r.id == rec.id)
            {
                table.by_name.remove(name);
            }
        }
        rec.ready.complete(Err(rec.removed()));
        if let Some(waiting) = lock(&rec.reservation).rescheduling.take() {
            waiting.complete(Err(rec.removed()));
        }
        let actors = std::mem::take(&mut *lock(&rec.actors));
        for cell in actors.iter().filter_map(Weak::upgrade) {
            cell.kill(false, rt);
        }
        return outcome;
    }
    {
        let mut table = lock(&s.groups.table);
        table.by_id.remove(&rec.id);
        if let Some(name) = &rec.name
            && table.by_name.get(name).is_some_and(|r| r.id == rec.id)
        {
            table.by_name.remove(name);
        }
        let before = table.pending.len();
        table.pending.retain(|r| r.id != rec.id);
        let gone = before - table.pending.len();
        s.groups.num_pending.fetch_sub(gone, Ordering::SeqCst);
    }
    s.resources
        .remove_dynamic(&slots, carve.is_some(), &rec.label());
    rec.ready.complete(Err(rec.removed()));
    let actors = std::mem::take(&mut *lock(&rec.actors));
    for cell in actors.iter().filter_map(Weak::upgrade) {
        cell.kill(false, rt);
    }
    s.fail_removed_pending();
    if let Some(carve) = carve {
        s.release(&carve);
    }
    Ok(())
}
