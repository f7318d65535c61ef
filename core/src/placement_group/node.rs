//! A node's side of placement groups: its table of groups, the run-time resources a group
//! adds, and the hooks through which the cluster installs, moves and removes bundles.

use std::collections::HashMap;

use super::{
    CREATED, GroupRecord, PENDING, PlacementGroup, PlacementGroupBuilder, PlacementGroupId,
    PlacementStrategy, Reservation,
};
use crate::affinity::BundleCell;
use crate::codec;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::ObjectCell;
use crate::remote::{GroupRequest, Remote};
use crate::resources::{CPU_NAME, Demand, GPU_NAME, NodeResources, ResourceRequest};
use crate::runtime::RuntimeInner;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering, Weak, lock};

/// The groups of one node's scheduler.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub(super) table: Mutex<Table>,
    /// A worker's bundles installed by their owner, by group id.
    pub(super) installed: Mutex<HashMap<u64, Installed>>,
    /// Groups waiting for resources (a release retries them when not 0).
    pub(super) num_pending: AtomicUsize,
    /// Groups this process follows through handles from other processes (in a cluster): one
    /// record per group, told of its changes by the GCS (`follow`).
    pub(super) watched: Mutex<HashMap<PlacementGroupId, Weak<GroupRecord>>>,
    /// Embedded: the CPU sets of this node's bundles.
    pub(super) node_sets: crate::topology::NodeSets,
}

/// A group's bundles installed in a worker: their run-time resources, the demand carved out of
/// the worker's pool, and their GPUs (kept off the worker's other GPU work).
pub(super) type Installed = (Vec<u32>, Demand, Vec<usize>);

#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) by_id: HashMap<PlacementGroupId, Arc<GroupRecord>>,
    pub(super) by_name: HashMap<String, Arc<GroupRecord>>,
    pub(super) pending: Vec<Arc<GroupRecord>>,
}

impl Table {
    /// Enters `rec` under `name`, if it has one: a name taken already is an error.
    pub(super) fn claim_name(
        &mut self,
        name: Option<&str>,
        rec: &Arc<GroupRecord>,
    ) -> Result<(), Error> {
        let Some(name) = name else { return Ok(()) };
        if self.by_name.contains_key(name) {
            return Err(Error::InvalidArgument {
                what: "placement_group: name".into(),
                message: format!("a placement group named {name:?} exists already"),
            });
        }
        self.by_name.insert(name.to_owned(), rec.clone());
        Ok(())
    }
}

impl Groups {
    /// Whether groups wait for resources (one relaxed load: the release path's cost).
    pub(crate) fn any_pending(&self) -> bool {
        self.num_pending.load(Ordering::Relaxed) > 0
    }
}

/// The run-time resources `bundles` (index, `(name, amount)` entries) of group `pg_id` add to
/// the node that holds them: per bundle `<name>_group_<i>_<pg>` and a marker
/// `bundle_group_<i>_<pg>` of 1,000; over them `<name>_group_<pg>` (their sum) and
/// `bundle_group_<pg>`.
pub(crate) fn group_resources(
    pg_id: u64,
    bundles: &[(usize, Vec<(String, f64)>)],
) -> Vec<(String, f64)> {
    let h = format!("{pg_id:016x}");
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut out = Vec::new();
    for (i, entries) in bundles {
        for (name, amount) in entries {
            out.push((format!("{name}_group_{i}_{h}"), *amount));
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += amount,
                None => sums.push((name.clone(), *amount)),
            }
        }
        out.push((format!("bundle_group_{i}_{h}"), 1000.0));
    }
    for (name, amount) in sums {
        out.push((format!("{name}_group_{h}"), amount));
    }
    out.push((format!("bundle_group_{h}"), 1000.0 * bundles.len() as f64));
    out
}

/// The rank of group `pg_id`'s run-time resource `name` among the cells of a demand: 0 for a
/// bundle's marker, 1 for the group's (any bundle), none for the others.
pub(super) fn marker_rank(pg_id: u64, name: &str) -> Option<u8> {
    if name == format!("bundle_group_{pg_id:016x}") {
        Some(1)
    } else {
        name.starts_with("bundle_group_").then_some(0)
    }
}

/// The place cells of a group's run-time resources `names` (as [`group_resources`] lists
/// them) at `slots` on a node: one per bundle held there, by its marker, then the group's
/// (by the group's marker, for work in any bundle).
pub(super) fn bundle_cells(
    resources: &NodeResources,
    pg_id: u64,
    names: &[(String, f64)],
    slots: &[u32],
) -> Vec<Arc<BundleCell>> {
    let group = format!("bundle_group_{pg_id:016x}");
    let mut bundles = Vec::new();
    let mut whole = None;
    for ((name, _), &slot) in names.iter().zip(slots) {
        if *name == group {
            whole = Some(resources.bundle_cell(slot, 1));
        } else if name.starts_with("bundle_group_") {
            bundles.push(resources.bundle_cell(slot, 0));
        }
    }
    bundles.extend(whole);
    bundles
}

/// Sets the cells (bundles', then the group's) to the bundles' CPU sets and GPUs, and the
/// group's to their unions.
pub(super) fn set_cells(cells: &[Arc<BundleCell>], cpus: &[Vec<usize>], gpus: &[Vec<usize>]) {
    let Some((group, bundles)) = cells.split_last() else {
        return;
    };
    let none = Vec::new();
    for (i, cell) in bundles.iter().enumerate() {
        cell.set(cpus.get(i).unwrap_or(&none), gpus.get(i).unwrap_or(&none));
    }
    let union = |sets: &[Vec<usize>]| {
        let mut all: Vec<usize> = sets.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    };
    group.set(&union(cpus), &union(gpus));
}

pub(super) fn new_record(id: PlacementGroupId, b: &PlacementGroupBuilder) -> Arc<GroupRecord> {
    Arc::new(GroupRecord {
        id,
        name: b.name.clone(),
        strategy: b.strategy,
        bundles: b.bundles.clone(),
        detached: b.detached,
        ready: Arc::new(ObjectCell::pending(ObjectId::from_u64(id.0), None)),
        reservation: Mutex::new(Reservation {
            phase: PENDING,
            slots: Vec::new(),
            carve: None,
            nodes: Vec::new(),
            workers: Vec::new(),
            rescheduling: None,
            cpus: Vec::new(),
            gpus: Vec::new(),
            cpu_note: None,
            cells: Vec::new(),
        }),
        actors: Mutex::new(Vec::new()),
    })
}

/// A cluster's group: the GCS places it (`cluster/pg.rs`); this owner keeps the record.
pub(super) fn create_in_cluster(
    rt: &Arc<RuntimeInner>,
    cluster: &dyn Remote,
    b: PlacementGroupBuilder,
) -> Result<PlacementGroup, Error> {
    let s = &rt.scheduler;
    let id = PlacementGroupId(rt.next_object_id().as_u64());
    let rec = new_record(id, &b);
    {
        let mut table = lock(&s.groups.table);
        table.claim_name(b.name.as_deref(), &rec)?;
        table.by_id.insert(id, rec.clone());
    }
    let entries: Vec<Vec<(String, f64)>> = b.bundles.iter().map(|x| x.entries.clone()).collect();
    let request = GroupRequest {
        pg_id: id.0,
        name: b.name.as_deref(),
        strategy: b.strategy,
        detached: b.detached,
        bundles: &entries,
    };
    if let Err(e) = cluster.pg_create(request) {
        let mut table = lock(&s.groups.table);
        table.by_id.remove(&id);
        if let Some(name) = &b.name {
            table.by_name.remove(name);
        }
        return Err(e);
    }
    Ok(PlacementGroup { rec })
}

/// A worker: adds a group's bundles held here (`resources`) to this process's scheduler,
/// carving `carve` out of its pool; work in them is pinned to `cpus` and holds `gpus` (each
/// bundle's CPU set and GPUs, as its node's raylet chose them, in the order of `resources`).
pub(crate) fn install(
    rt: &Arc<RuntimeInner>,
    pg_id: u64,
    resources: &[(String, f64)],
    carve: &[(String, f64)],
    cpus: &[Vec<usize>],
    gpus: &[Vec<usize>],
) -> Result<(), String> {
    let s = &rt.scheduler;
    let mut installed = lock(&s.groups.installed);
    if installed.contains_key(&pg_id) {
        return Ok(());
    }
    let mut request = ResourceRequest::none();
    for (name, amount) in carve {
        match name.as_str() {
            CPU_NAME => request.num_cpus += amount,
            GPU_NAME => request.num_gpus += amount,
            _ => request.set_custom(name, *amount),
        }
    }
    let carve = s
        .resources
        .demand(&request)
        .map_err(|_| format!("this worker cannot hold {request}"))?;
    let slots = s
        .resources
        .add_dynamic(resources, &|n| marker_rank(pg_id, n))?;
    set_cells(
        &bundle_cells(&s.resources, pg_id, resources, &slots),
        cpus,
        gpus,
    );
    s.resources.force_acquire(&carve);
    // The bundles' devices are theirs: the worker's device table gives them to no other work.
    let devices: Vec<usize> = gpus.iter().flatten().copied().collect();
    s.resources.hold_devices(&devices);
    s.resources.commit_dynamic(&slots);
    installed.insert(pg_id, (slots, carve, devices));
    drop(installed);
    s.drain_pending();
    Ok(())
}

/// A worker: removes a group's bundles (its owner removed it): its queued tasks fail, its
/// carved resources go back.
pub(crate) fn uninstall(rt: &Arc<RuntimeInner>, pg_id: u64) {
    let s = &rt.scheduler;
    let Some((slots, carve, devices)) = lock(&s.groups.installed).remove(&pg_id) else {
        return;
    };
    s.resources.release_devices(&devices);
    s.resources
        .remove_dynamic(&slots, true, &PlacementGroupId(pg_id).to_string());
    s.fail_removed_pending();
    s.release(&carve);
}

/// The owner: the group's bundles are in `workers`; returns false if it was removed
/// meanwhile (the caller takes them back out).
pub(crate) fn created(
    rt: &Arc<RuntimeInner>,
    pg_id: u64,
    nodes: Vec<u64>,
    workers: Vec<(u64, Vec<u32>)>,
) -> bool {
    let Some(rec) = lock(&rt.scheduler.groups.table)
        .by_id
        .get(&PlacementGroupId(pg_id))
        .cloned()
    else {
        return false;
    };
    let mut res = lock(&rec.reservation);
    if res.phase != PENDING {
        return false;
    }
    res.phase = CREATED;
    res.nodes = nodes;
    res.workers = workers;
    drop(res);
    rec.ready.complete(codec::encode(&()));
    true
}

pub(super) fn record(rt: &Arc<RuntimeInner>, pg_id: u64) -> Option<Arc<GroupRecord>> {
    lock(&rt.scheduler.groups.table)
        .by_id
        .get(&PlacementGroupId(pg_id))
        .cloned()
}

/// The owner: the CPU sets and GPUs the bundles of group `pg_id` have on their nodes, and why
/// any that wanted a CPU set has none.
pub(crate) fn set_cpus(
    rt: &Arc<RuntimeInner>,
    pg_id: u64,
    cpus: Vec<Vec<usize>>,
    gpus: Vec<Vec<usize>>,
    note: Option<String>,
) {
    if let Some(rec) = record(rt, pg_id) {
        let mut res = lock(&rec.reservation);
        res.cpus = cpus;
        res.gpus = gpus;
        res.cpu_note = note;
    }
}

/// The owner: some of created group `pg_id`'s bundles lost their node; the GCS places them
/// again.
pub(crate) fn rescheduling(rt: &Arc<RuntimeInner>, pg_id: u64) {
    if let Some(rec) = record(rt, pg_id) {
        let mut res = lock(&rec.reservation);
        if res.phase == CREATED && res.rescheduling.is_none() {
            let id = ObjectId::from_u64(rec.id.0);
            res.rescheduling = Some(Arc::new(ObjectCell::pending(id, None)));
        }
    }
}

/// The owner: whether a created group named in `wanted` (run-time resource names, which end
/// in the group's id) waits for bundles to be placed again: it is rescheduling, or a bundle's
/// node is one `node_dead` says is dead (the GCS has yet to say).
pub(crate) fn awaits_rescheduling(
    rt: &Arc<RuntimeInner>,
    wanted: &[(String, f64)],
    node_dead: &dyn Fn(u64) -> bool,
) -> bool {
    wanted
        .iter()
        .filter(|(n, _)| n.contains("_group_"))
        .filter_map(|(n, _)| u64::from_str_radix(n.get(n.len().saturating_sub(16)..)?, 16).ok())
        .filter_map(|id| record(rt, id))
        .any(|rec| {
            let res = lock(&rec.reservation);
            res.phase == CREATED
                && (res.rescheduling.is_some() || res.nodes.iter().any(|&n| node_dead(n)))
        })
}

/// A process following groups through handles: whether `wanted` (run-time resource names)
/// names a group it follows that is created (so its resources are on their way to the node
/// views: see `Cluster::await_followed`).
pub(crate) fn follows_created(rt: &Arc<RuntimeInner>, wanted: &[(String, f64)]) -> bool {
    wanted
        .iter()
        .filter(|(n, _)| n.contains("_group_"))
        .filter_map(|(n, _)| u64::from_str_radix(n.get(n.len().saturating_sub(16)..)?, 16).ok())
        .filter_map(|id| {
            lock(&rt.scheduler.groups.watched)
                .get(&PlacementGroupId(id))
                .and_then(Weak::upgrade)
        })
        .any(|rec| {
            let res = lock(&rec.reservation);
            res.phase == CREATED && res.rescheduling.is_none()
        })
}

/// The owner: created group `pg_id` was placed again, its bundles now on `nodes`; returns the
/// indices of the bundles that moved (to install), or `None` if it is not created here.
pub(crate) fn moved_bundles(rt: &Arc<RuntimeInner>, pg_id: u64, nodes: &[u64]) -> Option<Vec<u32>> {
    let rec = record(rt, pg_id)?;
    let res = lock(&rec.reservation);
    if res.phase != CREATED {
        return None;
    }
    Some(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| res.nodes.get(*i) != Some(n))
            .map(|(i, _)| i as u32)
            .collect(),
    )
}

/// The owner: the bundles `moved` of group `pg_id` are now on `nodes`, held by `placed`.
pub(crate) fn rescheduled(
    rt: &Arc<RuntimeInner>,
    pg_id: u64,
    nodes: Vec<u64>,
    moved: &[u32],
    placed: Vec<(u64, Vec<u32>)>,
) {
    if let Some(rec) = record(rt, pg_id) {
        let mut res = lock(&rec.reservation);
        for (_, indices) in &mut res.workers {
            indices.retain(|i| !moved.contains(i));
        }
        res.workers.retain(|(_, indices)| !indices.is_empty());
        res.workers.extend(placed);
        res.nodes = nodes;
        let done = res.rescheduling.take();
        drop(res);
        if let Some(done) = done {
            done.complete(codec::encode(&()));
        }
    }
}

/// One bundle a dead worker held: its index, its node, its `(name, amount)` entries and its
/// CPU set and GPUs there.
pub(crate) type LostBundle = (u32, u64, Vec<(String, f64)>, (Vec<usize>, Vec<usize>));

/// Bundles of a created group held by a worker now dead (see [`lost_bundles`]).
#[derive(Debug)]
pub(crate) struct LostBundles {
    pub(crate) pg_id: u64,
    pub(crate) strategy: PlacementStrategy,
    pub(crate) detached: bool,
    /// Each bundle the worker held.
    pub(crate) bundles: Vec<LostBundle>,
    /// The dead worker.
    pub(crate) worker: u64,
}

/// The owner: the bundles of its created groups held by workers for which `dead` holds,
/// with their nodes, per group and dead worker.
pub(crate) fn lost_bundles(rt: &Arc<RuntimeInner>, dead: &dyn Fn(u64) -> bool) -> Vec<LostBundles> {
    let records: Vec<Arc<GroupRecord>> = lock(&rt.scheduler.groups.table)
        .by_id
        .values()
        .cloned()
        .collect();
    let mut out = Vec::new();
    for rec in records {
        let res = lock(&rec.reservation);
        if res.phase != CREATED {
            continue;
        }
        for (worker, indices) in res.workers.iter().filter(|(w, _)| dead(*w)) {
            let bundles = rec
                .bundles
                .iter()
                .enumerate()
                .filter(|(i, _)| indices.contains(&(*i as u32)))
                .map(|(i, b)| {
                    let node = res.nodes.get(i).copied().unwrap_or(0);
                    let cpus = res.cpus.get(i).cloned().unwrap_or_default();
                    let gpus = res.gpus.get(i).cloned().unwrap_or_default();
                    (i as u32, node, b.entries.clone(), (cpus, gpus))
                })
                .collect();
            out.push(LostBundles {
                pg_id: rec.id.0,
                strategy: rec.strategy,
                detached: rec.detached,
                bundles,
                worker: *worker,
            });
        }
    }
    out
}

/// The owner: `dead`'s bundles of group `pg_id` are now in `placed`.
pub(crate) fn replace_worker(
    rt: &Arc<RuntimeInner>,
    pg_id: u64,
    dead: u64,
    placed: Vec<(u64, Vec<u32>)>,
) {
    if let Some(rec) = lock(&rt.scheduler.groups.table)
        .by_id
        .get(&PlacementGroupId(pg_id))
    {
        let mut res = lock(&rec.reservation);
        res.workers.retain(|(w, _)| *w != dead);
        res.workers.extend(placed);
    }
}

/// The owner could not install a placed group: its `ready()` fails.
pub(crate) fn install_failed(rt: &Arc<RuntimeInner>, pg_id: u64, error: Error) {
    if let Some(rec) = lock(&rt.scheduler.groups.table)
        .by_id
        .get(&PlacementGroupId(pg_id))
    {
        rec.ready.complete(Err(error));
    }
}
