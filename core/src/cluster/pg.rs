//! Placement groups in a cluster: the GCS places, raylets reserve, owners install.
//!
//! 1. The owner sends `PgCreate` to the GCS, which answers at once: an infeasible group (a
//!    bundle larger than every node) or a taken name is an error, any other group is listed
//!    PENDING.
//! 2. The GCS — the one authority that picks nodes — chooses a node per bundle by the group's
//!    strategy ([`choose`], sans I/O) over each live node's totals minus what groups reserve
//!    there, and runs Ray's two-phase protocol: `PgPrepare` to each chosen raylet, which
//!    reserves the bundles in its ledger ([`Ledger`]) if they fit and answers `PgPrepared`;
//!    when every raylet said yes, `PgCommit` to each; when any said no, did not answer within
//!    [`PREPARE_TIMEOUT`] or died, `PgCancel` to every chosen raylet (each drops what it
//!    prepared) and the group is PENDING again. Nothing is half-reserved: a raylet that dies
//!    takes its ledger with it, the others cancel.
//! 3. A pending group is tried again when a node joins, a group is removed, and one second
//!    after a failed attempt.
//! 4. Committed, the GCS tells the owner (`PgReply` with request id 0 and the bundles' nodes);
//!    the owner sends `PgCommit` to one of its job's workers on each node, which adds the
//!    bundles' resources to its scheduler (carved out of its pool), notes them in its view of
//!    that node and worker, and completes `ready()`. Work in a bundle then asks for the
//!    bundle's resource names, which only that worker has: ordinary placement sends it there.
//! 5. Removal: `PgRemove` to the GCS (which cancels at the raylets), `PgCancel` to the
//!    workers (their queued tasks of the group fail with `PlacementGroupRemoved`), the
//!    group's actors killed. A driver that leaves removes its groups that are not detached.
//! 6. A node dies holding bundles of a created group (Ray's RESCHEDULING): the GCS takes
//!    those bundles off it (their reservations went with its raylet), marks the group
//!    RESCHEDULING and tells the owner, then places only those bundles again
//!    ([`choose_missing`], keeping the strategy) with the same two-phase protocol (a raylet's
//!    [`Ledger`] adds them beside the group's other bundles there; a rollback cancels only
//!    them). Committed, the GCS sends the owner the whole row: the owner installs the bundles
//!    that moved and completes the group's rescheduling cell, which work for the group waited
//!    on (`PlacementGroup::pending_ready`; a restart waits in `place`).

use crate::sync::Arc;
use std::collections::HashMap;
use std::time::Duration;

use super::execute::SEP;
use super::gcs_tables::Out;
use super::peer::Peer;
use super::proto::{Msg, PgBundle, PgOp, PgRow, Resource};
use super::worker::Cluster;
use super::worker_table::Conn;
use super::{call_timeout, cluster_error, wait_reply};
use crate::config::CpuList;
use crate::error::Error;
use crate::placement_group::{
    Bundle, LostBundles, PlacementGroupId, PlacementGroupInfo, PlacementGroupState,
    PlacementStrategy, group_resources,
};
use crate::remote::GroupRequest;
use crate::resources::{CPU_NAME, GPU_NAME};
use crate::runtime::RuntimeInner;
use crate::sync::lock;

/// Group states on the wire.
pub(crate) const PENDING: u8 = 0;
pub(crate) const CREATED: u8 = 1;
pub(crate) const REMOVED: u8 = 2;
/// Some bundles' node died: they are being placed again (Ray's RESCHEDULING).
pub(crate) const RESCHEDULING: u8 = 4;

/// How long the GCS waits for every raylet's `PgPrepared`.
pub(crate) const PREPARE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bundles of `row` held by node `node_id`, as [`group_resources`] takes them.
pub(crate) fn bundles_on(row: &PgRow, node_id: u64) -> Vec<(usize, Vec<(String, f64)>)> {
    row.bundles
        .iter()
        .filter(|b| b.node_id == node_id)
        .map(|b| (b.index as usize, entries(&b.resources)))
        .collect()
}

pub(super) fn entries(resources: &[Resource]) -> Vec<(String, f64)> {
    resources
        .iter()
        .map(|r| (r.name.clone(), r.total))
        .collect()
}

/// The sum of bundles' entries.
fn sum(bundles: &[&[(String, f64)]]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for b in bundles {
        for (name, amount) in b.iter() {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += amount,
                None => out.push((name.clone(), *amount)),
            }
        }
    }
    out
}

fn fits(free: &[(String, f64)], want: &[(String, f64)]) -> bool {
    want.iter().all(|(name, amount)| {
        free.iter()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, f)| *f + 1e-9 >= *amount)
    })
}

fn take(free: &mut [(String, f64)], want: &[(String, f64)]) {
    for (name, amount) in want {
        if let Some(e) = free.iter_mut().find(|(n, _)| n == name) {
            e.1 -= amount;
        }
    }
}

/// One node as [`choose`] sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeRoom {
    pub(crate) node_id: u64,
    /// `(resource, total)`.
    pub(crate) totals: Vec<(String, f64)>,
    /// `(resource, total minus what groups reserve)`.
    pub(crate) free: Vec<(String, f64)>,
}

/// Where a group's bundles go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// A node per bundle, in bundle order.
    Nodes(Vec<u64>),
    /// Not now: resources or nodes are short.
    NotNow,
    /// Bundle `i` is larger than every node: never.
    Infeasible(usize),
}

/// Chooses nodes for `bundles` by `strategy` (0 PACK, 1 SPREAD, 2 STRICT_PACK, 3
/// STRICT_SPREAD), Ray's rules: PACK fills nodes in order, SPREAD puts each bundle on the
/// node holding fewest of the group's bundles so far, STRICT_PACK needs one node for all,
/// STRICT_SPREAD a distinct node per bundle.
pub(crate) fn choose(nodes: &[NodeRoom], bundles: &[Vec<(String, f64)>], strategy: u8) -> Choice {
    if let Some(i) = bundles
        .iter()
        .position(|b| !nodes.iter().any(|n| fits(&n.totals, b)))
    {
        return Choice::Infeasible(i);
    }
    let mut free: Vec<Vec<(String, f64)>> = nodes.iter().map(|n| n.free.clone()).collect();
    let mut count = vec![0usize; nodes.len()];
    let mut out = Vec::with_capacity(bundles.len());
    if strategy == 2 {
        let all: Vec<&[(String, f64)]> = bundles.iter().map(Vec::as_slice).collect();
        let total = sum(&all);
        return match nodes.iter().position(|n| fits(&n.free, &total)) {
            Some(k) => Choice::Nodes(vec![nodes[k].node_id; bundles.len()]),
            None => Choice::NotNow,
        };
    }
    for b in bundles {
        let candidates = (0..nodes.len()).filter(|&k| fits(&free[k], b));
        let pick = match strategy {
            1 => candidates.min_by_key(|&k| count[k]),
            3 => candidates.into_iter().find(|&k| count[k] == 0),
            _ => candidates.into_iter().next(),
        };
        let Some(k) = pick else {
            return Choice::NotNow;
        };
        take(&mut free[k], b);
        count[k] += 1;
        out.push(nodes[k].node_id);
    }
    Choice::Nodes(out)
}

/// Chooses nodes for the bundles of `row` that have none (`node_id` 0: their node died),
/// beside those still placed, keeping the strategy: STRICT_PACK on the node of the others
/// (any, if none is left), STRICT_SPREAD on nodes holding none of the group, PACK and SPREAD
/// anywhere. Returns the bundles' indices with their nodes. A bundle no live node could ever
/// hold is `NotNow` here: a node may join.
pub(crate) fn choose_missing(nodes: &[NodeRoom], row: &PgRow) -> Result<Vec<(u32, u64)>, Choice> {
    let missing: Vec<&PgBundle> = row.bundles.iter().filter(|b| b.node_id == 0).collect();
    let placed: Vec<u64> = row
        .bundles
        .iter()
        .filter(|b| b.node_id != 0)
        .map(|b| b.node_id)
        .collect();
    let allowed: Vec<NodeRoom> = nodes
        .iter()
        .filter(|n| match row.strategy {
            2 => placed.is_empty() || placed.contains(&n.node_id),
            3 => !placed.contains(&n.node_id),
            _ => true,
        })
        .cloned()
        .collect();
    let bundles: Vec<Vec<(String, f64)>> = missing.iter().map(|b| entries(&b.resources)).collect();
    match choose(&allowed, &bundles, row.strategy) {
        Choice::Nodes(chosen) => Ok(missing.iter().map(|b| b.index).zip(chosen).collect()),
        Choice::Infeasible(_) | Choice::NotNow => Err(Choice::NotNow),
    }
}

/// A group as the GCS keeps it.
pub(crate) struct GcsGroup<C> {
    pub(crate) row: PgRow,
    /// The owner's connection (told when the group is placed); `None` after a restart of the
    /// GCS until the owner rejoins.
    pub(crate) owner: Option<C>,
    /// The owner's worker index (0: not a worker), which finds it again after a restart.
    pub(crate) owner_worker: u64,
    /// A two-phase attempt is under way (its nodes are in `row`).
    pub(crate) placing: bool,
    /// Connections of processes holding a handle to the group that asked to follow it
    /// (`PgWatch`): told when it is created, rescheduling or removed. Not saved: processes
    /// watch again when they rejoin a restarted GCS (`GcsLink`).
    pub(crate) watchers: Vec<C>,
}

/// The GCS's placement groups (`C`: a connection, as `gcs_tables.rs` has them).
pub(crate) struct GcsGroups<C> {
    pub(crate) groups: HashMap<u64, GcsGroup<C>>,
    pub(crate) names: HashMap<String, u64>,
    /// What groups reserve (or are preparing) per node.
    pub(crate) reserved: HashMap<u64, Vec<(String, f64)>>,
    /// A retry is scheduled.
    pub(crate) retry_scheduled: bool,
    /// The last removed groups, for listings (at most [`KEPT_REMOVED`]).
    pub(crate) removed: std::collections::VecDeque<PgRow>,
}

/// Removed groups the GCS keeps for `manta list placement-groups`.
pub(crate) const KEPT_REMOVED: usize = 100;

impl<C> Default for GcsGroups<C> {
    fn default() -> Self {
        GcsGroups {
            groups: HashMap::new(),
            names: HashMap::new(),
            reserved: HashMap::new(),
            retry_scheduled: false,
            removed: std::collections::VecDeque::new(),
        }
    }
}

/// Sends `row` (a group's new state) to its watchers, dropping those whose connection closed.
pub(crate) fn tell_watchers<C: Conn>(watchers: &mut Vec<C>, row: &PgRow, out: &mut Vec<Out<C>>) {
    watchers.retain(|w| !w.is_closed());
    for w in watchers.iter() {
        out.push(Out::Send(w.clone(), msg(PgOp::Reply, 0, row.clone(), "")));
    }
}

impl<C: Conn> GcsGroups<C> {
    /// `peer` follows group `pg_id` from now on; returns its row as it stands (state REMOVED
    /// for a group removed or never known).
    pub(crate) fn watch(&mut self, peer: &C, pg_id: u64) -> PgRow {
        if let Some(g) = self.groups.get_mut(&pg_id) {
            if !g.watchers.iter().any(|w| w.same(peer)) {
                g.watchers.push(peer.clone());
            }
            return g.row.clone();
        }
        self.removed
            .iter()
            .find(|r| r.pg_id == pg_id)
            .cloned()
            .unwrap_or(PgRow {
                pg_id,
                state: REMOVED,
                ..PgRow::default()
            })
    }
}

impl<C> GcsGroups<C> {
    /// Adds (or with `sign` -1, takes away) `row`'s bundles to the per-node reservations.
    pub(crate) fn account(&mut self, row: &PgRow, sign: f64) {
        for b in &row.bundles {
            if b.node_id == 0 {
                continue;
            }
            let r = self.reserved.entry(b.node_id).or_default();
            for res in &b.resources {
                match r.iter_mut().find(|(n, _)| *n == res.name) {
                    Some(e) => e.1 += sign * res.total,
                    None => r.push((res.name.clone(), sign * res.total)),
                }
            }
        }
    }

    /// The rows of every group, by id.
    pub(crate) fn rows(&self) -> Vec<PgRow> {
        let mut v: Vec<PgRow> = self.groups.values().map(|g| g.row.clone()).collect();
        v.extend(self.removed.iter().cloned());
        v.sort_by_key(|r| r.pg_id);
        v
    }
}

/// The part of `row` on node `node_id` (its bundles there).
pub(crate) fn row_on(row: &PgRow, node_id: u64) -> PgRow {
    PgRow {
        bundles: row
            .bundles
            .iter()
            .filter(|b| b.node_id == node_id)
            .cloned()
            .collect(),
        ..row.clone()
    }
}

/// A message of the placement-group family.
pub(crate) fn msg(op: PgOp, request_id: u64, group: PgRow, error: impl Into<String>) -> Msg {
    Msg::Pg {
        op,
        request_id,
        group,
        error: error.into(),
        groups: Vec::new(),
    }
}

/// A raylet's reservations: the bundles each group holds on this node, each prepared or
/// committed (a group placed again after a node's death adds bundles beside its others).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    groups: HashMap<u64, Vec<(bool, PgBundle)>>,
    /// The CPU sets of the bundles reserved here (`topology.rs`).
    node_sets: crate::topology::NodeSets,
}

impl Ledger {
    /// What every reservation takes from the node's own resources.
    pub(crate) fn reserved(&self) -> Vec<(String, f64)> {
        let rows: Vec<Vec<(String, f64)>> = self
            .groups
            .values()
            .flat_map(|bundles| bundles.iter().map(|(_, b)| entries(&b.resources)))
            .collect();
        let refs: Vec<&[(String, f64)]> = rows.iter().map(Vec::as_slice).collect();
        sum(&refs)
    }

    /// Reserves `row`'s bundles (this node's) that are not reserved yet, if they fit in
    /// `totals` beside what is reserved already, giving each that asks for whole CPUs a CPU
    /// set of its own out of `node_cpus` (empty: the process's affinity mask); returns the
    /// bundles reserved now with their sets, else says why not.
    pub(crate) fn prepare(
        &mut self,
        totals: &[(String, f64)],
        node_cpus: &[usize],
        row: PgRow,
    ) -> Result<Vec<PgBundle>, String> {
        let have: Vec<u32> = self
            .groups
            .get(&row.pg_id)
            .map(|v| v.iter().map(|(_, b)| b.index).collect())
            .unwrap_or_default();
        let new: Vec<PgBundle> = row
            .bundles
            .into_iter()
            .filter(|b| !have.contains(&b.index))
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut free = totals.to_vec();
        take(&mut free, &self.reserved());
        let want: Vec<Vec<(String, f64)>> = new.iter().map(|b| entries(&b.resources)).collect();
        let refs: Vec<&[(String, f64)]> = want.iter().map(Vec::as_slice).collect();
        let want = sum(&refs);
        if !fits(&free, &want) {
            return Err(format!(
                "does not fit: asks {want:?}, free after reservations {free:?}"
            ));
        }
        let whole = |name: &str| -> Vec<usize> {
            new.iter()
                .map(|b| {
                    let r = b.resources.iter().find(|r| r.name == name);
                    crate::topology::whole_units(r.map_or(0.0, |r| r.total))
                })
                .collect()
        };
        let wants = whole(CPU_NAME);
        // GPUs by the node's topology, the CPU set on their NUMA node.
        let node_gpus = totals
            .iter()
            .find(|(n, _)| n == GPU_NAME)
            .map_or(0, |(_, t)| *t as usize);
        let (gpus, near) = self.node_sets.take_gpus(node_gpus, &whole(GPU_NAME));
        let (sets, note) = self.node_sets.take(node_cpus, &wants, &near);
        if let Some(note) = &note {
            tracing::warn!(pg = row.pg_id, "placement group bundles {note}");
        }
        let mut new = new;
        for (((b, set), want), gpus) in new.iter_mut().zip(sets).zip(&wants).zip(gpus) {
            b.cpus = set.iter().map(|&c| c as u32).collect();
            b.gpus = gpus.iter().map(|&d| d as u32).collect();
            if *want > 0 && set.is_empty() {
                b.cpu_note = note.clone().unwrap_or_default();
            }
        }
        self.groups
            .entry(row.pg_id)
            .or_default()
            .extend(new.iter().cloned().map(|b| (false, b)));
        Ok(new)
    }

    /// Gives the CPU sets and GPUs of `bundles` back.
    fn give_back(&self, bundles: &[(bool, PgBundle)]) {
        let of = |v: &[u32]| v.iter().map(|&c| c as usize).collect::<Vec<usize>>();
        let cpus: Vec<Vec<usize>> = bundles.iter().map(|(_, b)| of(&b.cpus)).collect();
        let gpus: Vec<Vec<usize>> = bundles.iter().map(|(_, b)| of(&b.gpus)).collect();
        self.node_sets.give_back(&cpus);
        self.node_sets.give_back_gpus(&gpus);
    }

    /// Makes a group's prepared reservations final.
    pub(crate) fn commit(&mut self, pg_id: u64) -> bool {
        match self.groups.get_mut(&pg_id) {
            Some(bundles) => {
                for b in bundles {
                    b.0 = true;
                }
                true
            }
            None => false,
        }
    }

    /// Drops the reservations of `row`'s bundles (prepared or committed); of all the group's
    /// here when it lists none.
    pub(crate) fn cancel(&mut self, row: &PgRow) {
        let Some(bundles) = self.groups.get_mut(&row.pg_id) else {
            return;
        };
        let gone: Vec<(bool, PgBundle)> = if row.bundles.is_empty() {
            std::mem::take(bundles)
        } else {
            let (gone, kept) = std::mem::take(bundles)
                .into_iter()
                .partition(|(_, b)| row.bundles.iter().any(|x| x.index == b.index));
            *bundles = kept;
            gone
        };
        if bundles.is_empty() {
            self.groups.remove(&row.pg_id);
        }
        self.give_back(&gone);
    }

    /// Drops every bundle reservation prepared and not committed (the GCS that asked
    /// restarted: its attempts died with it); returns how many groups lost one.
    pub(crate) fn drop_prepared(&mut self) -> usize {
        let mut dropped = 0;
        let mut gone = Vec::new();
        for bundles in self.groups.values_mut() {
            let (kept, lost): (Vec<_>, Vec<_>) = std::mem::take(bundles)
                .into_iter()
                .partition(|(committed, _)| *committed);
            dropped += usize::from(!lost.is_empty());
            gone.extend(lost);
            *bundles = kept;
        }
        self.groups.retain(|_, bundles| !bundles.is_empty());
        self.give_back(&gone);
        dropped
    }

    /// The run-time resources of the committed bundles, for the node's heartbeat.
    pub(crate) fn resources(&self, _node_id: u64) -> Vec<(String, f64)> {
        let mut added = Vec::new();
        for (pg_id, bundles) in &self.groups {
            let committed: Vec<(usize, Vec<(String, f64)>)> = bundles
                .iter()
                .filter(|(c, _)| *c)
                .map(|(_, b)| (b.index as usize, entries(&b.resources)))
                .collect();
            if !committed.is_empty() {
                added.extend(group_resources(*pg_id, &committed));
            }
        }
        added
    }

    /// How many groups hold reservations here (for tests and status).
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }
}

/// Bundles as they travel.
pub(crate) fn wire_bundles(bundles: &[Vec<(String, f64)>]) -> Vec<PgBundle> {
    bundles
        .iter()
        .enumerate()
        .map(|(i, b)| PgBundle {
            index: i as u32,
            node_id: 0,
            cpus: Vec::new(),
            gpus: Vec::new(),
            cpu_note: String::new(),
            resources: b
                .iter()
                .map(|(n, a)| Resource {
                    name: n.clone(),
                    total: *a,
                    available: *a,
                })
                .collect(),
        })
        .collect()
}

/// A group as the GCS lists it.
pub(crate) fn info_of(row: &PgRow) -> PlacementGroupInfo {
    PlacementGroupInfo {
        id: PlacementGroupId(row.pg_id),
        name: (!row.name.is_empty()).then(|| row.name.clone()),
        strategy: strategy_of(row.strategy),
        state: match row.state {
            CREATED => PlacementGroupState::Created,
            REMOVED => PlacementGroupState::Removed,
            RESCHEDULING => PlacementGroupState::Rescheduling,
            _ => PlacementGroupState::Pending,
        },
        bundles: row
            .bundles
            .iter()
            .map(|b| Bundle {
                entries: b
                    .resources
                    .iter()
                    .map(|r| (r.name.clone(), r.total))
                    .collect(),
            })
            .collect(),
        bundle_nodes: if row.bundles.iter().all(|b| b.node_id != 0) {
            row.bundles.iter().map(|b| b.node_id).collect()
        } else {
            Vec::new()
        },
        bundle_cpus: if row.state == CREATED || row.state == RESCHEDULING {
            row_sets(row, |b| &b.cpus)
                .into_iter()
                .map(CpuList)
                .collect()
        } else {
            Vec::new()
        },
        bundle_gpus: if row.state == CREATED || row.state == RESCHEDULING {
            row_sets(row, |b| &b.gpus)
        } else {
            Vec::new()
        },
        cpu_note: cpu_note(row),
    }
}

/// Each bundle's CPU set (or GPUs: `f` picks) in `row`, in bundle order.
fn row_sets(row: &PgRow, f: fn(&PgBundle) -> &[u32]) -> Vec<Vec<usize>> {
    let mut bundles: Vec<&PgBundle> = row.bundles.iter().collect();
    bundles.sort_by_key(|b| b.index);
    bundles
        .iter()
        .map(|b| f(b).iter().map(|&c| c as usize).collect())
        .collect()
}

/// Tells the runtime each bundle's CPU and GPU sets from a committed row, and why a bundle
/// is not pinned, if it is not.
fn set_bundle_sets(rt: &Arc<RuntimeInner>, row: &PgRow) {
    crate::placement_group::set_cpus(
        rt,
        row.pg_id,
        row_sets(row, |b| &b.cpus),
        row_sets(row, |b| &b.gpus),
        cpu_note(row),
    );
}

/// Why bundles of `row` that asked for whole CPUs have no set, if any has none.
pub(crate) fn cpu_note(row: &PgRow) -> Option<String> {
    let notes: Vec<String> = row
        .bundles
        .iter()
        .filter(|b| !b.cpu_note.is_empty())
        .map(|b| format!("node {}: {}", b.node_id, b.cpu_note))
        .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// A strategy's wire code.
pub(crate) fn strategy_code(s: PlacementStrategy) -> u8 {
    match s {
        PlacementStrategy::Pack => 0,
        PlacementStrategy::Spread => 1,
        PlacementStrategy::StrictPack => 2,
        PlacementStrategy::StrictSpread => 3,
    }
}

/// The strategy a wire code stands for.
pub(crate) fn strategy_of(code: u8) -> PlacementStrategy {
    match code {
        1 => PlacementStrategy::Spread,
        2 => PlacementStrategy::StrictPack,
        3 => PlacementStrategy::StrictSpread,
        _ => PlacementStrategy::Pack,
    }
}

/// A group to create as it travels to the GCS (state PENDING), for job `job_id`.
pub(crate) fn request_row(group: &GroupRequest<'_>, job_id: u64) -> PgRow {
    PgRow {
        pg_id: group.pg_id,
        name: group.name.unwrap_or_default().to_owned(),
        strategy: strategy_code(group.strategy),
        state: PENDING,
        detached: group.detached,
        job_id,
        bundles: wire_bundles(group.bundles),
    }
}

/// Bundles a dead worker held, as a row of those bundles (with their nodes), and the worker.
fn lost_row(lost: LostBundles) -> (PgRow, u64) {
    let bundles = lost
        .bundles
        .into_iter()
        .map(|(index, node_id, entries, (cpus, gpus))| PgBundle {
            index,
            node_id,
            cpus: cpus.into_iter().map(|c| c as u32).collect(),
            gpus: gpus.into_iter().map(|d| d as u32).collect(),
            cpu_note: String::new(),
            resources: entries
                .into_iter()
                .map(|(name, amount)| Resource {
                    name,
                    total: amount,
                    available: amount,
                })
                .collect(),
        })
        .collect();
    let row = PgRow {
        pg_id: lost.pg_id,
        strategy: strategy_code(lost.strategy),
        state: CREATED,
        detached: lost.detached,
        bundles,
        ..Default::default()
    };
    (row, lost.worker)
}

impl Cluster {
    /// Asks the GCS to create a group (owner, step 1): `Ok` once listed (pending), the
    /// GCS's refusal as an error.
    pub(crate) fn pg_create(&self, row: PgRow) -> Result<(), Error> {
        let what = "creating a placement group";
        let id = row.pg_id;
        let bundles = row.bundles.clone();
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| msg(PgOp::Create, request_id, row, ""));
        let Msg::Pg { error, .. } = wait_reply(rx, call_timeout(), what)? else {
            return Err(cluster_error(what, "unexpected reply"));
        };
        if error.is_empty() {
            return Ok(());
        }
        if let Some(rest) = error.strip_prefix("infeasible: bundle ") {
            let (i, total) = rest.split_once(SEP).unwrap_or((rest, ""));
            let request = i
                .parse::<usize>()
                .ok()
                .and_then(|i| bundles.get(i))
                .map(|b| {
                    let parts: Vec<String> = b
                        .resources
                        .iter()
                        .map(|r| format!("{}: {}", r.name, r.total))
                        .collect();
                    format!("{{{}}}", parts.join(", "))
                })
                .unwrap_or_default();
            return Err(Error::Infeasible {
                what: format!("placement group {id:016x} bundle {i}"),
                request,
                total: total.to_string(),
            });
        }
        if let Some(rest) = error.strip_prefix("name: ") {
            return Err(Error::InvalidArgument {
                what: "placement_group: name".into(),
                message: rest.to_string(),
            });
        }
        Err(cluster_error(what, error))
    }

    /// Removes a group at the GCS (which cancels its reservations) and its bundles from the
    /// workers that hold them (`workers`).
    pub(crate) fn pg_remove(&self, pg_id: u64, workers: &[u64]) -> Result<(), Error> {
        let what = "removing a placement group";
        let row = PgRow {
            pg_id,
            ..PgRow::default()
        };
        for &w in workers {
            self.peer(w).send(msg(PgOp::Cancel, 0, row.clone(), ""));
        }
        self.placement.drop_group(pg_id);
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| msg(PgOp::Remove, request_id, row, ""));
        match wait_reply(rx, call_timeout(), what)? {
            Msg::Pg { .. } => Ok(()),
            _ => Err(cluster_error(what, "unexpected reply")),
        }
    }

    /// The node of one of the job's workers, as this owner knows it.
    pub(crate) fn node_of_worker(&self, index: u64) -> Option<u64> {
        self.placement.node_of_worker(index)
    }

    /// Follows a group this process holds a handle to (`PgWatch`): its row as it stands.
    pub(crate) fn pg_watch(&self, pg_id: u64) -> Result<PgRow, Error> {
        let what = "following a placement group";
        self.gcs.note_watch(pg_id, true);
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| Msg::PgWatch { request_id, pg_id });
        match wait_reply(rx, call_timeout(), what)? {
            Msg::Pg { group, .. } => Ok(group),
            _ => Err(cluster_error(what, "unexpected reply")),
        }
    }

    /// Every placement group the GCS knows.
    pub(crate) fn pg_list(&self) -> Result<Vec<PgRow>, Error> {
        let what = "listing placement groups";
        let _guard = self.io.enter();
        let rx = self
            .gcs
            .request(|request_id| msg(PgOp::List, request_id, PgRow::default(), ""));
        match wait_reply(rx, call_timeout(), what)? {
            Msg::Pg { groups, .. } => Ok(groups),
            _ => Err(cluster_error(what, "unexpected reply")),
        }
    }

    /// An unasked placement-group message: the GCS says a group of ours is placed (owner,
    /// step 4), or an owner installs (`PgCommit`) or removes (`PgCancel`) bundles here.
    pub(super) fn pg_notice(self: &Arc<Self>, peer: &Arc<Peer>, op: PgOp, group: PgRow) {
        let Some(rt) = self.runtime() else {
            return;
        };
        // A group this process follows through a handle (not its owner).
        // A group this process follows through a handle (not its owner), or followed and let
        // go (its handles dropped): never the owner's steps below.
        if op == PgOp::Reply
            && self.gcs.is(peer)
            && (crate::placement_group::follow(&rt, &info_of(&group))
                || !crate::placement_group::owns(&rt, group.pg_id))
        {
            if group.state == REMOVED {
                self.gcs.note_watch(group.pg_id, false);
            }
            return;
        }
        match op {
            PgOp::Reply if self.gcs.is(peer) && group.state == RESCHEDULING => {
                crate::placement_group::rescheduling(&rt, group.pg_id);
            }
            PgOp::Reply if self.gcs.is(peer) && group.state == CREATED => {
                // Installing asks raylets for workers: not on the I/O thread.
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("manta-pg-install".into())
                    .spawn(move || me.pg_install(&rt, group));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "could not start installing a placement group");
                }
            }
            PgOp::Commit => {
                let node_id = self.node_id().unwrap_or(0);
                let resources = group_resources(group.pg_id, &bundles_on(&group, node_id));
                let carve: Vec<(String, f64)> = {
                    let all: Vec<Vec<(String, f64)>> = group
                        .bundles
                        .iter()
                        .filter(|b| b.node_id == node_id)
                        .map(|b| entries(&b.resources))
                        .collect();
                    let refs: Vec<&[(String, f64)]> = all.iter().map(Vec::as_slice).collect();
                    sum(&refs)
                };
                let here = |f: fn(&PgBundle) -> &[u32]| -> Vec<Vec<usize>> {
                    group
                        .bundles
                        .iter()
                        .filter(|b| b.node_id == node_id)
                        .map(|b| f(b).iter().map(|&c| c as usize).collect())
                        .collect()
                };
                let (cpus, gpus) = (here(|b| &b.cpus), here(|b| &b.gpus));
                if let Err(e) = crate::placement_group::install(
                    &rt,
                    group.pg_id,
                    &resources,
                    &carve,
                    &cpus,
                    &gpus,
                ) {
                    tracing::error!(pg = group.pg_id, error = %e, "could not install a placement group's bundles");
                }
            }
            PgOp::Cancel => crate::placement_group::uninstall(&rt, group.pg_id),
            other => {
                tracing::debug!(?other, "placement-group notice ignored");
            }
        }
    }

    /// Owner, step 4: puts each node's bundles in one of the job's workers there and notes
    /// them in this owner's view, then marks the group created.
    fn pg_install(&self, rt: &Arc<RuntimeInner>, row: PgRow) {
        let nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
        if let Some(moved) = crate::placement_group::moved_bundles(rt, row.pg_id, &nodes) {
            return self.pg_install_moved(rt, row, nodes, moved);
        }
        let mut nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut workers = Vec::new();
        for node_id in nodes {
            match self.pg_install_on(&row, node_id) {
                Ok(w) => workers.extend(w),
                Err(e) => {
                    tracing::error!(pg = row.pg_id, node = node_id, error = %e, "installing a placement group failed");
                    // Nothing stays reserved for a group that cannot be used.
                    let held: Vec<u64> = workers.iter().map(|(w, _)| *w).collect();
                    if let Err(e2) = self.pg_remove(row.pg_id, &held) {
                        tracing::warn!(pg = row.pg_id, error = %e2, "removing a group that failed to install");
                    }
                    crate::placement_group::install_failed(rt, row.pg_id, e);
                    return;
                }
            }
        }
        let nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
        set_bundle_sets(rt, &row);
        if !crate::placement_group::created(rt, row.pg_id, nodes, workers.clone()) {
            // Removed meanwhile: take the bundles back out.
            let back = PgRow {
                pg_id: row.pg_id,
                ..PgRow::default()
            };
            for (w, _) in workers {
                self.peer(w).send(msg(PgOp::Cancel, 0, back.clone(), ""));
            }
        }
    }

    /// Owner, step 6: a created group was placed again; puts the bundles that moved in workers
    /// of their new nodes.
    fn pg_install_moved(
        &self,
        rt: &Arc<RuntimeInner>,
        row: PgRow,
        nodes: Vec<u64>,
        moved: Vec<u32>,
    ) {
        let part = PgRow {
            bundles: row
                .bundles
                .iter()
                .filter(|b| moved.contains(&b.index))
                .cloned()
                .collect(),
            ..row.clone()
        };
        let mut targets: Vec<u64> = part.bundles.iter().map(|b| b.node_id).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut placed = Vec::new();
        for node_id in targets {
            match self.pg_install_on(&part, node_id) {
                Ok(w) => placed.extend(w),
                Err(e) => {
                    tracing::error!(pg = row.pg_id, node = node_id, error = %e, "installing rescheduled bundles failed");
                }
            }
        }
        tracing::info!(
            pg = row.pg_id,
            ?moved,
            "placement group bundles placed again"
        );
        set_bundle_sets(rt, &row);
        crate::placement_group::rescheduled(rt, row.pg_id, nodes, &moved, placed);
    }

    /// Puts the bundles that workers now dead held back in live workers of their nodes (the
    /// raylet starts a replacement), so that restarts and retries of work in them can be
    /// placed; returns whether any was.
    pub(super) fn pg_reinstall_lost(&self) -> bool {
        // One at a time: a second caller (two restarts after one worker's death) waits for
        // the first to finish, then finds nothing lost and looks again.
        static ONE_AT_A_TIME: crate::sync::Mutex<()> = crate::sync::Mutex::new(());
        let _one = lock(&ONE_AT_A_TIME);
        let Some(rt) = self.runtime() else {
            return false;
        };
        let dead = self.placement.dead_workers();
        let lost = crate::placement_group::lost_bundles(&rt, &|w| dead.contains(&w));
        let mut any = false;
        for lost in lost {
            let (row, dead_worker) = lost_row(lost);
            let mut nodes: Vec<u64> = row.bundles.iter().map(|b| b.node_id).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let mut placed = Vec::new();
            for node_id in nodes {
                match self.pg_install_on(&row, node_id) {
                    Ok(w) => placed.extend(w),
                    Err(e) => {
                        tracing::warn!(pg = row.pg_id, node = node_id, error = %e, "bundles of a dead worker not installed again")
                    }
                }
            }
            any |= !placed.is_empty();
            crate::placement_group::replace_worker(&rt, row.pg_id, dead_worker, placed);
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: f64) -> Vec<(String, f64)> {
        vec![("CPU".into(), n)]
    }

    fn node(id: u64, total: f64, free: f64) -> NodeRoom {
        NodeRoom {
            node_id: id,
            totals: cpus(total),
            free: cpus(free),
        }
    }

    #[test]
    fn strategies_choose_as_ray() {
        let nodes = [node(1, 2.0, 2.0), node(2, 2.0, 2.0), node(3, 2.0, 2.0)];
        let b = vec![cpus(1.0); 3];
        assert_eq!(
            choose(&nodes, &b, 0),
            Choice::Nodes(vec![1, 1, 2]),
            "PACK fills"
        );
        assert_eq!(
            choose(&nodes, &b, 1),
            Choice::Nodes(vec![1, 2, 3]),
            "SPREAD"
        );
        assert_eq!(choose(&nodes, &b, 3), Choice::Nodes(vec![1, 2, 3]));
        assert_eq!(choose(&nodes, &b, 2), Choice::NotNow, "3 CPUs on no node");
        assert_eq!(
            choose(&nodes, &vec![cpus(1.0); 2], 2),
            Choice::Nodes(vec![1, 1])
        );
        assert_eq!(
            choose(&nodes, &vec![cpus(1.0); 4], 3),
            Choice::NotNow,
            "STRICT_SPREAD needs a node per bundle"
        );
        assert_eq!(choose(&nodes, &[cpus(3.0)], 0), Choice::Infeasible(0));
    }

    #[test]
    fn reservations_count() {
        let nodes = [node(1, 2.0, 0.5), node(2, 2.0, 1.0)];
        assert_eq!(choose(&nodes, &[cpus(1.0)], 0), Choice::Nodes(vec![2]));
        assert_eq!(choose(&nodes, &[cpus(1.5)], 0), Choice::NotNow);
    }

    #[test]
    fn ledger_prepares_what_fits_and_forgets_cancelled() {
        let mut l = Ledger::default();
        let row = |id: u64, n: f64| PgRow {
            pg_id: id,
            bundles: wire_bundles(&[cpus(n)]),
            ..PgRow::default()
        };
        let totals = cpus(2.0);
        assert!(l.prepare(&totals, &[0, 1, 2, 3], row(1, 1.5)).is_ok());
        assert!(
            l.prepare(&totals, &[0, 1, 2, 3], row(2, 1.0)).is_err(),
            "only 0.5 left"
        );
        l.cancel(&PgRow {
            pg_id: 1,
            ..PgRow::default()
        });
        assert!(l.prepare(&totals, &[0, 1, 2, 3], row(2, 1.0)).is_ok());
        assert!(l.commit(2));
        assert_eq!(l.len(), 1);
        let (added, reserved) = (l.resources(0), l.reserved());
        assert!(
            added
                .iter()
                .any(|(n, a)| n.starts_with("CPU_group_0_") && *a == 1.0)
        );
        assert_eq!(reserved, cpus(1.0));
    }
    fn placed(strategy: u8, nodes: &[u64]) -> PgRow {
        let mut row = PgRow {
            pg_id: 7,
            strategy,
            bundles: wire_bundles(&vec![cpus(1.0); nodes.len()]),
            ..PgRow::default()
        };
        for (b, n) in row.bundles.iter_mut().zip(nodes) {
            b.node_id = *n;
        }
        row
    }

    #[test]
    fn lost_bundles_are_placed_again_by_the_strategy() {
        let nodes = [node(1, 2.0, 1.0), node(2, 2.0, 2.0), node(3, 2.0, 2.0)];
        // Bundle 1's node (4) died.
        assert_eq!(
            choose_missing(&nodes, &placed(0, &[1, 0])),
            Ok(vec![(1, 1)]),
            "PACK"
        );
        assert_eq!(
            choose_missing(&nodes, &placed(3, &[1, 0, 2])),
            Ok(vec![(1, 3)]),
            "STRICT_SPREAD avoids the group's nodes"
        );
        assert_eq!(
            choose_missing(&nodes[..2], &placed(3, &[1, 0, 2])),
            Err(Choice::NotNow),
            "STRICT_SPREAD waits for a node"
        );
        assert_eq!(
            choose_missing(&nodes, &placed(2, &[2, 0])),
            Ok(vec![(1, 2)]),
            "STRICT_PACK beside the others"
        );
        assert_eq!(
            choose_missing(&nodes, &placed(2, &[0, 0])),
            Ok(vec![(0, 2), (1, 2)]),
            "STRICT_PACK anywhere once all were lost"
        );
        assert_eq!(
            choose_missing(&[node(1, 0.5, 0.5)], &placed(0, &[0])),
            Err(Choice::NotNow),
            "too large for the live nodes: a node may join"
        );
    }

    #[test]
    fn a_ledger_adds_bundles_beside_a_groups_others_and_cancels_them_alone() {
        let mut l = Ledger::default();
        let totals = cpus(3.0);
        let mut first = placed(0, &[9, 9]);
        first.bundles.truncate(1);
        assert!(l.prepare(&totals, &[0, 1, 2, 3], first.clone()).is_ok());
        assert!(l.commit(7));
        // Bundle 1 placed again here: reserved beside bundle 0, not skipped.
        let mut second = placed(0, &[9, 9]);
        second.bundles.remove(0);
        assert!(l.prepare(&totals, &[0, 1, 2, 3], second.clone()).is_ok());
        assert_eq!(l.reserved(), cpus(2.0));
        assert!(
            !l.resources(9)
                .iter()
                .any(|(n, _)| n.starts_with("CPU_group_1_")),
            "not committed yet"
        );
        // Rolled back: bundle 0 stays.
        l.cancel(&second);
        assert_eq!(l.reserved(), cpus(1.0));
        assert!(
            l.resources(9)
                .iter()
                .any(|(n, _)| n.starts_with("CPU_group_0_"))
        );
        assert!(l.prepare(&totals, &[0, 1, 2, 3], second).is_ok());
        assert!(l.commit(7));
        assert!(
            l.resources(9)
                .iter()
                .any(|(n, _)| n.starts_with("CPU_group_1_"))
        );
        // The whole group's (the row lists every bundle here, or none).
        l.cancel(&PgRow {
            pg_id: 7,
            ..PgRow::default()
        });
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_ledger_gives_bundles_of_whole_cpus_disjoint_sets_and_takes_them_back() {
        let mut l = Ledger::default();
        let totals = cpus(4.0);
        let node = [4, 5, 6, 7];
        let row = |id: u64, each: &[f64]| PgRow {
            pg_id: id,
            bundles: wire_bundles(&each.iter().map(|&n| cpus(n)).collect::<Vec<_>>()),
            ..PgRow::default()
        };
        let first = l.prepare(&totals, &node, row(1, &[1.0, 0.5, 2.0])).unwrap();
        let sets: Vec<&[u32]> = first.iter().map(|b| b.cpus.as_slice()).collect();
        assert_eq!(
            sets,
            [&[4][..], &[][..], &[5, 6][..]],
            "a fraction gets none"
        );
        assert!(first.iter().all(|b| b.cpu_note.is_empty()));
        // One CPU left in the mask (though the resources have room): a second group of 1 + 1
        // gets one set and says why the other has none.
        let second = l.prepare(&cpus(6.0), &node, row(2, &[1.0, 1.0])).unwrap();
        assert_eq!(second[0].cpus, [7]);
        assert!(second[1].cpus.is_empty());
        assert!(second[1].cpu_note.contains("affinity mask"), "{second:?}");
        // Cancelled, its set comes back.
        l.cancel(&PgRow {
            pg_id: 1,
            ..PgRow::default()
        });
        let third = l.prepare(&cpus(8.0), &node, row(3, &[3.0])).unwrap();
        assert_eq!(third[0].cpus, [4, 5, 6]);
    }

    #[test]
    fn a_lost_gcs_leaves_only_committed_reservations() {
        let mut l = Ledger::default();
        let row = |id: u64| PgRow {
            pg_id: id,
            bundles: wire_bundles(&[cpus(0.5)]),
            ..PgRow::default()
        };
        let totals = cpus(2.0);
        for id in 1..=3 {
            assert!(l.prepare(&totals, &[0, 1, 2, 3], row(id)).is_ok());
        }
        assert!(l.commit(2));
        assert_eq!(l.drop_prepared(), 2);
        assert_eq!(l.len(), 1);
        assert_eq!(l.reserved(), cpus(0.5));
    }
}
