//! Placement groups (Ray's): bundles of resources reserved together, all or nothing, that
//! tasks and actors then run in.
//!
//! # Design
//!
//! A group's bundles become resources of the node, as in Ray: bundle `i` of group `g` adds
//! `CPU_group_<i>_<g>` (and `GPU_…`, one per custom resource) holding the bundle's amounts,
//! `CPU_group_<g>` holding the sum over the bundles (the "any bundle" pool), and markers
//! `bundle_group_<i>_<g>` / `bundle_group_<g>` (1,000 units each bundle). A task or actor put in
//! bundle `i` asks for `CPU_group_<i>_<g>` *and* `CPU_group_<g>` instead of `CPU`, plus 0.001
//! of each marker (so that a task asking for nothing still lands in its bundle); one put in any
//! bundle asks for the `_group_<g>` names only. These are ordinary requests: the scheduler's
//! lock-free counters account them, a task that does not fit waits in the pending queue.
//!
//! Such resources are added at run time ([`NodeResources::add_dynamic`]) in counters after the
//! static ones, with nothing available; committing the group carves the sum of its bundles
//! out of the node's pool (one all-or-nothing `try_acquire`) and makes the bundle resources
//! available. A group that does not fit stays PENDING; every release of resources retries
//! pending groups (one relaxed load when there are none). Removal retires the resources (no
//! new holder, present holders give back, indices are reused once all is back), gives the
//! carved amounts back to the node, kills the group's actors and fails its queued tasks with
//! [`Error::PlacementGroupRemoved`].
//!
//! A bundle asking for whole CPUs also gets a CPU set of its own when committed (embedded, from
//! this scheduler's [`crate::topology::NodeSets`]; in a cluster, from its node's raylet): work
//! whose demand names the bundle's marker runs pinned to it (`affinity::pinned`), work in any
//! bundle to the union of the sets of the group's bundles held in the process it runs in.
//!
//! Feasibility follows Ray: a bundle larger than the node fails at once with
//! [`Error::Infeasible`]; a group whose bundles fit one by one but not together (or a
//! `STRICT_SPREAD` group of more bundles than nodes) stays PENDING.
//!
//! In a cluster the GCS places groups and each bundle's worker installs it (`cluster/pg.rs`);
//! this module keeps the handles and every process's records of its groups.
//!
//! # Layout
//!
//! - this file: the public API (strategies, bundles, handles, the builder, lookup and
//!   listing) and the group's record;
//! - `node.rs`: a node's table of groups, the run-time resources a group adds, and the hooks
//!   through which the cluster installs, moves and removes bundles;
//! - `local.rs`: placement on one node (embedded): create, place, retry, remove;
//! - `member.rs`: work in a group, and an actor group member's rank.
//!
//! [`NodeResources::add_dynamic`]: crate::resources::NodeResources::add_dynamic

use std::fmt;

mod local;
mod member;
mod node;

pub(crate) use local::retry_pending;
use local::{create, remove};
pub use member::{GroupMember, group_rank, group_world_size};
pub(crate) use member::{InGroup, MemberGuard, Rank};
pub(crate) use node::{
    Groups, LostBundles, awaits_rescheduling, created, follows_created, group_resources, install,
    install_failed, lost_bundles, moved_bundles, replace_worker, rescheduled, rescheduling,
    set_cpus, uninstall,
};
use node::{new_record, record};

use crate::actor::ActorCell;
use crate::affinity::BundleCell;
use crate::codec;
use crate::config::CpuList;
use crate::error::Error;
use crate::id::ObjectId;
use crate::object::{ObjectCell, ObjectRef};
use crate::remote::Remote;
use crate::resources::{CPU_NAME, GPU_NAME};
use crate::resources::{Demand, ResourceRequest};
use crate::runtime::{RuntimeInner, with_current};
use crate::sync::{Arc, Mutex, Weak, lock};

/// How a group's bundles are spread over nodes (Ray's strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes as possible, best effort.
    Pack,
    /// As many nodes as possible, best effort.
    Spread,
    /// All bundles on one node, or the group waits.
    StrictPack,
    /// Every bundle on a node of its own, or the group waits.
    StrictSpread,
}

impl fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

/// Where a group stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementGroupState {
    /// Waiting for resources (or nodes).
    Pending,
    /// Every bundle is reserved.
    Created,
    /// Removed by [`remove_placement_group`] (or with its creator).
    Removed,
    /// Created, and some bundles' node died: they are being placed again (in a cluster;
    /// Ray's RESCHEDULING). Work for those bundles waits for it.
    Rescheduling,
}

impl fmt::Display for PlacementGroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementGroupState::Pending => "PENDING",
            PlacementGroupState::Created => "CREATED",
            PlacementGroupState::Removed => "REMOVED",
            PlacementGroupState::Rescheduling => "RESCHEDULING",
        })
    }
}

/// One bundle: the resources reserved together on one node (Ray's `{"CPU": 1, "GPU": 1}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bundle {
    /// `(name, amount)` in the order given; `CPU` and `GPU` by those names.
    pub(crate) entries: Vec<(String, f64)>,
}

impl Bundle {
    /// An empty bundle (a group needs at least one resource in each).
    pub fn new() -> Self {
        Bundle::default()
    }
    /// A bundle of `n` CPUs.
    pub fn cpus(n: f64) -> Self {
        Bundle::new().resource(CPU_NAME, n)
    }
    /// Adds (or sets) `n` CPUs.
    pub fn num_cpus(self, n: f64) -> Self {
        self.resource(CPU_NAME, n)
    }
    /// Adds (or sets) `n` GPUs.
    pub fn num_gpus(self, n: f64) -> Self {
        self.resource(GPU_NAME, n)
    }
    /// Adds (or sets) an amount of a resource (`"CPU"`, `"GPU"` or a custom one).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = amount,
            None => self.entries.push((name.to_string(), amount)),
        }
        self
    }
    /// The amount of `name` in the bundle (0 if absent).
    pub fn amount(&self, name: &str) -> f64 {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |e| e.1)
    }
    /// The resources of the bundle, in the order given.
    pub fn entries(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(n, a)| (n.as_str(), *a))
    }

    fn check(&self, index: usize) -> Result<(), String> {
        if self.entries.is_empty() {
            return Err(format!("bundle {index} is empty"));
        }
        for (name, amount) in &self.entries {
            if name.trim().is_empty() {
                return Err(format!("bundle {index}: a resource needs a name"));
            }
            if name.contains("_group_") {
                return Err(format!(
                    "bundle {index}: {name:?} names a placement group's resource"
                ));
            }
            let problem = if !amount.is_finite() {
                Some(format!("must be a finite number, got {amount}"))
            } else if *amount < 0.0 {
                Some(format!("must not be negative, got {amount}"))
            } else if *amount == 0.0 {
                Some("0 reserves nothing: leave the resource out".to_string())
            } else if *amount > 1.0 && amount.fract() != 0.0 {
                Some(format!(
                    "quantities over 1 must be whole numbers, got {amount}"
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(format!("bundle {index}: resource {name:?} {p}"));
            }
        }
        Ok(())
    }

    fn request(&self) -> ResourceRequest {
        let mut r = ResourceRequest::none();
        for (name, amount) in &self.entries {
            match name.as_str() {
                CPU_NAME => r.num_cpus += amount,
                GPU_NAME => r.num_gpus += amount,
                _ => r.set_custom(name, *amount),
            }
        }
        r
    }
}

impl fmt::Display for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (k, (name, amount)) in self.entries.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: {amount}")?;
        }
        f.write_str("}")
    }
}

/// A placement group's id, unique in the cluster (shown in hex, as in its resources' names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlacementGroupId(pub(crate) u64);

impl PlacementGroupId {
    /// The raw value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PlacementGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

const PENDING: u8 = 0;
const CREATED: u8 = 1;
const REMOVED: u8 = 2;

/// What each task or actor in a bundle takes of its marker (1,000 units a bundle).
const MARKER_TAKE: f64 = 0.001;

/// What a node holds of one group.
#[derive(Debug)]
struct Reservation {
    phase: u8,
    /// The group's run-time resources on the node.
    slots: Vec<u32>,
    /// What was carved out of the node's pool at commit.
    carve: Option<Demand>,
    /// In a cluster: the node of each bundle, and the job's workers holding them (with the
    /// indices of the bundles each holds).
    nodes: Vec<u64>,
    workers: Vec<(u64, Vec<u32>)>,
    /// Created, and some bundles' node died: the GCS places them again; the cell completes
    /// when it has (work for the group waits for it, as for `ready()`).
    rescheduling: Option<Arc<ObjectCell>>,
    /// Each bundle's CPU set (empty: not pinned), once created (`topology.rs`).
    cpus: Vec<Vec<usize>>,
    /// Each bundle's GPUs (ordinals on its node's workers; empty: none given), once created.
    gpus: Vec<Vec<usize>>,
    /// Why bundles that ask for whole CPUs are not pinned, if any is not.
    cpu_note: Option<String>,
    /// Embedded: the cells work in each bundle is pinned through, then the group's (any
    /// bundle: the union of the bundles' sets).
    cells: Vec<Arc<BundleCell>>,
}

/// One group, shared by its handles and the runtime's table.
#[derive(Debug)]
pub(crate) struct GroupRecord {
    id: PlacementGroupId,
    name: Option<String>,
    strategy: PlacementStrategy,
    bundles: Vec<Bundle>,
    detached: bool,
    ready: Arc<ObjectCell>,
    reservation: Mutex<Reservation>,
    actors: Mutex<Vec<Weak<ActorCell>>>,
}

impl GroupRecord {
    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} ({n:?})", self.id),
            None => self.id.to_string(),
        }
    }

    fn removed(&self) -> Error {
        Error::PlacementGroupRemoved {
            group: self.label(),
        }
    }

    fn phase(&self) -> u8 {
        lock(&self.reservation).phase
    }

    /// The run-time resources of the group: `(name, total)`.
    fn resources(&self) -> Vec<(String, f64)> {
        group_resources(self.id.0, &self.entries())
    }

    /// The bundles as `(index, entries)`.
    fn entries(&self) -> Vec<(usize, Vec<(String, f64)>)> {
        self.bundles
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.entries.clone()))
            .collect()
    }

    /// The sum of the bundles, as one request on the node's pool.
    fn sum(&self) -> ResourceRequest {
        let mut sum = ResourceRequest::none();
        for b in &self.bundles {
            let r = b.request();
            sum.num_cpus += r.num_cpus;
            sum.num_gpus += r.num_gpus;
            for (name, amount) in r.custom() {
                let have = sum.custom().find(|(n, _)| *n == name).map_or(0.0, |e| e.1);
                sum.set_custom(name, have + amount);
            }
        }
        sum
    }
}

/// A handle to a placement group. Cloning it is cheap; dropping it does not remove the group.
/// It passes to tasks and actors (serde) like an actor handle: there it schedules work into
/// the same bundles.
#[derive(Clone, Debug)]
pub struct PlacementGroup {
    rec: Arc<GroupRecord>,
}

/// A handle as it travels: what any process needs to address the group's bundles.
#[derive(serde::Serialize, serde::Deserialize)]
struct WireGroup {
    id: u64,
    name: Option<String>,
    strategy: u8,
    bundles: Vec<Vec<(String, f64)>>,
    detached: bool,
}

fn strategy_code(s: PlacementStrategy) -> u8 {
    match s {
        PlacementStrategy::Pack => 0,
        PlacementStrategy::Spread => 1,
        PlacementStrategy::StrictPack => 2,
        PlacementStrategy::StrictSpread => 3,
    }
}

fn strategy_of(code: u8) -> PlacementStrategy {
    match code {
        1 => PlacementStrategy::Spread,
        2 => PlacementStrategy::StrictPack,
        3 => PlacementStrategy::StrictSpread,
        _ => PlacementStrategy::Pack,
    }
}

impl serde::Serialize for PlacementGroup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireGroup {
            id: self.rec.id.0,
            name: self.rec.name.clone(),
            strategy: strategy_code(self.rec.strategy),
            bundles: self.rec.bundles.iter().map(|b| b.entries.clone()).collect(),
            detached: self.rec.detached,
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PlacementGroup {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireGroup::deserialize(deserializer)?;
        with_current(|rt| adopt(rt, wire))
            .and_then(|r| r)
            .map_err(serde::de::Error::custom)
    }
}

/// The handle of a group that arrived in this process: the record this process has, or (a
/// group another process created, in a cluster) a new one whose state the GCS gives. A group
/// still pending there is watched until the GCS lists it created or removed. One unknown
/// embedded was removed.
fn adopt(rt: &Arc<RuntimeInner>, wire: WireGroup) -> Result<PlacementGroup, Error> {
    let id = PlacementGroupId(wire.id);
    if let Some(rec) = lock(&rt.scheduler.groups.table).by_id.get(&id).cloned() {
        return Ok(PlacementGroup { rec });
    }
    let b = PlacementGroupBuilder {
        bundles: wire
            .bundles
            .into_iter()
            .map(|entries| Bundle { entries })
            .collect(),
        strategy: strategy_of(wire.strategy),
        name: wire.name,
        detached: wire.detached,
    };
    let Some(cluster) = rt.cluster.clone() else {
        // Embedded, a group not in the table was removed.
        let rec = new_record(id, &b);
        settle(&rec, None, None);
        return Ok(PlacementGroup { rec });
    };
    // One record per group in this process, followed through the GCS (`PgWatch`): noted
    // before the GCS is asked, so that a notice racing the answer finds it.
    let rec = {
        let mut watched = lock(&rt.scheduler.groups.watched);
        watched.retain(|_, w| w.strong_count() > 0);
        if let Some(rec) = watched.get(&id).and_then(Weak::upgrade) {
            return Ok(PlacementGroup { rec });
        }
        let rec = new_record(id, &b);
        watched.insert(id, Arc::downgrade(&rec));
        rec
    };
    let listed = match cluster.pg_watch(id.0) {
        Ok(listed) => listed,
        Err(e) => {
            lock(&rt.scheduler.groups.watched).remove(&id);
            return Err(e);
        }
    };
    settle(&rec, Some(&listed), Some(rt));
    if rec.phase() == PENDING {
        let watched = Arc::downgrade(&rec);
        let spawned = std::thread::Builder::new()
            .name("manta-pg-watch".into())
            .spawn(move || watch(&cluster, &watched));
        if let Err(e) = spawned {
            rec.ready.complete(Err(Error::Cluster {
                what: format!("watching placement group {id}"),
                message: e.to_string(),
            }));
        }
    }
    Ok(PlacementGroup { rec })
}

/// Sets a record adopted from another process to what the GCS says (`None`: removed). Removed
/// is final; rescheduling makes work for the group wait (as at its owner) until the GCS says
/// it is created again, with its bundles' new nodes. With `rt`, a removal kills the actors
/// this process created in the group, as the owner does with its own.
fn settle(rec: &GroupRecord, listed: Option<&PlacementGroupInfo>, rt: Option<&Arc<RuntimeInner>>) {
    let mut res = lock(&rec.reservation);
    if res.phase == REMOVED {
        return;
    }
    match (listed, listed.map(|g| g.state)) {
        (_, Some(PlacementGroupState::Pending)) => {}
        (
            Some(g),
            Some(state @ (PlacementGroupState::Created | PlacementGroupState::Rescheduling)),
        ) => {
            res.phase = CREATED;
            if !g.bundle_nodes.is_empty() {
                res.nodes.clone_from(&g.bundle_nodes);
            }
            if !g.bundle_cpus.is_empty() {
                res.cpus = g.bundle_cpus.iter().map(|c| c.0.clone()).collect();
                res.gpus.clone_from(&g.bundle_gpus);
            }
            res.cpu_note.clone_from(&g.cpu_note);
            let placed = if state == PlacementGroupState::Rescheduling {
                if res.rescheduling.is_none() {
                    let id = ObjectId::from_u64(rec.id.0);
                    res.rescheduling = Some(Arc::new(ObjectCell::pending(id, None)));
                }
                None
            } else {
                res.rescheduling.take()
            };
            drop(res);
            rec.ready.complete(codec::encode(&()));
            if let Some(placed) = placed {
                placed.complete(codec::encode(&()));
            }
        }
        _ => {
            res.phase = REMOVED;
            let waiting = res.rescheduling.take();
            drop(res);
            rec.ready.complete(Err(rec.removed()));
            if let Some(waiting) = waiting {
                waiting.complete(Err(rec.removed()));
            }
            if let Some(rt) = rt {
                let actors = std::mem::take(&mut *lock(&rec.actors));
                for cell in actors.iter().filter_map(Weak::upgrade) {
                    cell.kill(false, rt);
                }
            }
        }
    }
}

/// Whether this process created group `pg_id` (it is in its table as owner).
pub(crate) fn owns(rt: &Arc<RuntimeInner>, pg_id: u64) -> bool {
    record(rt, pg_id).is_some()
}

/// A notice from the GCS about group `listed.id`: applied to this process's record if it
/// follows the group through a handle (it is not its owner); returns whether it does.
pub(crate) fn follow(rt: &Arc<RuntimeInner>, listed: &PlacementGroupInfo) -> bool {
    let rec = {
        let mut watched = lock(&rt.scheduler.groups.watched);
        let rec = watched.get(&listed.id).and_then(Weak::upgrade);
        if rec.is_none() || listed.state == PlacementGroupState::Removed {
            watched.remove(&listed.id);
        }
        rec
    };
    let Some(rec) = rec else {
        return false;
    };
    settle(&rec, Some(listed), Some(rt));
    true
}

/// Polls the GCS while an adopted group is pending (its owner, not this process, is told
/// when it is placed), until it is created or removed, or the handle is gone.
fn watch(cluster: &Arc<dyn Remote>, watched: &Weak<GroupRecord>) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Some(rec) = watched.upgrade() else { return };
        if rec.phase() != PENDING {
            return;
        }
        match cluster.pg_list() {
            Ok(groups) => settle(&rec, groups.iter().find(|g| g.id == rec.id), None),
            Err(Error::ShutDown) => {
                rec.ready.complete(Err(Error::ShutDown));
                return;
            }
            Err(e) => tracing::debug!(error = %e, "watching a placement group"),
        }
    }
}

impl PlacementGroup {
    /// The group's id.
    pub fn id(&self) -> PlacementGroupId {
        self.rec.id
    }
    /// Its name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.rec.name.as_deref()
    }
    /// Its strategy.
    pub fn strategy(&self) -> PlacementStrategy {
        self.rec.strategy
    }
    /// Its bundles, in order.
    pub fn bundles(&self) -> &[Bundle] {
        &self.rec.bundles
    }
    /// How many bundles it has.
    pub fn bundle_count(&self) -> usize {
        self.rec.bundles.len()
    }
    /// Whether it outlives its creator.
    pub fn is_detached(&self) -> bool {
        self.rec.detached
    }
    /// The node each bundle is reserved on, in a cluster once created (empty before, and
    /// embedded).
    pub fn bundle_nodes(&self) -> Vec<u64> {
        lock(&self.rec.reservation).nodes.clone()
    }
    /// Each bundle's CPU set, once created: the logical CPUs of its node that its tasks and
    /// actors are pinned to, no two bundles sharing one. A bundle asking for a fraction of a
    /// CPU, or one its node had too few CPUs left for, has an empty list (see
    /// [`PlacementGroup::cpu_note`]). In a cluster, as the owner knows them; elsewhere empty.
    pub fn bundle_cpus(&self) -> Vec<CpuList> {
        lock(&self.rec.reservation)
            .cpus
            .iter()
            .map(|c| CpuList(c.clone()))
            .collect()
    }
    /// Each bundle's GPUs once created, as device ordinals of the processes that run its work
    /// (what [`crate::gpu_ids`] says there): whole GPUs taken from one PCIe switch, else one
    /// NUMA node, where the node reports its topology. Empty for a bundle asking for none or
    /// a fraction, and before creation.
    pub fn bundle_gpus(&self) -> Vec<Vec<usize>> {
        lock(&self.rec.reservation).gpus.clone()
    }
    /// Why bundles asking for whole CPUs are not pinned (too few CPUs left in the node's
    /// affinity mask), if any is not.
    pub fn cpu_note(&self) -> Option<String> {
        lock(&self.rec.reservation).cpu_note.clone()
    }
    /// Where it stands now.
    pub fn state(&self) -> PlacementGroupState {
        let res = lock(&self.rec.reservation);
        match res.phase {
            PENDING => PlacementGroupState::Pending,
            CREATED if res.rescheduling.is_some() => PlacementGroupState::Rescheduling,
            CREATED => PlacementGroupState::Created,
            _ => PlacementGroupState::Removed,
        }
    }
    /// An object that completes once every bundle is reserved (Ray's `pg.ready()`): use
    /// `get_timeout` or `wait` on it. It fails with [`Error::PlacementGroupRemoved`] if the
    /// group is removed first.
    pub fn ready(&self) -> ObjectRef<()> {
        ObjectRef::from_cell(self.rec.ready.clone())
    }

    /// The request of a task or actor put in bundle `index` (`None`: any bundle) in place of
    /// `request`: checked against the bundle (more than it holds is refused), then renamed to
    /// the group's resources.
    pub(crate) fn rewrite(
        &self,
        what: &str,
        request: &ResourceRequest,
        index: Option<usize>,
    ) -> Result<ResourceRequest, Error> {
        let rec = &self.rec;
        if rec.phase() == REMOVED {
            return Err(rec.removed());
        }
        let n = rec.bundles.len();
        if let Some(i) = index
            && i >= n
        {
            return Err(Error::InvalidArgument {
                what: format!("{what}: placement_group bundle index"),
                message: format!("{i} is out of range: group {} has {n} bundles", rec.id),
            });
        }
        let mut asked: Vec<(String, f64)> = Vec::new();
        if request.num_cpus > 0.0 {
            asked.push((CPU_NAME.into(), request.num_cpus));
        }
        if request.num_gpus > 0.0 {
            asked.push((GPU_NAME.into(), request.num_gpus));
        }
        asked.extend(request.custom().map(|(n, a)| (n.to_string(), a)));
        for (name, amount) in &asked {
            let room = match index {
                Some(i) => rec.bundles[i].amount(name),
                None => rec
                    .bundles
                    .iter()
                    .map(|b| b.amount(name))
                    .fold(0.0, f64::max),
            };
            if *amount > room {
                let (place, holds) = match index {
                    Some(i) => (format!("bundle {i}"), rec.bundles[i].to_string()),
                    None => (
                        "any bundle".to_string(),
                        format!("at most {room} {name} in one bundle"),
                    ),
                };
                return Err(Error::Infeasible {
                    what: format!("{what} in placement group {} {place}", rec.id),
                    request: request.to_string(),
                    total: holds,
                });
            }
        }
        let h = rec.id;
        let mut out = ResourceRequest::none();
        for (name, amount) in &asked {
            if let Some(i) = index {
                out.set_custom(&format!("{name}_group_{i}_{h}"), *amount);
            }
            out.set_custom(&format!("{name}_group_{h}"), *amount);
        }
        if let Some(i) = index {
            out.set_custom(&format!("bundle_group_{i}_{h}"), MARKER_TAKE);
        }
        out.set_custom(&format!("bundle_group_{h}"), MARKER_TAKE);
        Ok(out)
    }

    /// In a cluster, the group's `ready()` cell while it is still pending, or a cell that
    /// completes once bundles whose node died are placed again (work for it must wait for
    /// it there); `None` embedded or while created.
    pub(crate) fn pending_ready(&self, rt: &Arc<RuntimeInner>) -> Option<Arc<ObjectCell>> {
        rt.cluster.as_ref()?;
        let res = lock(&self.rec.reservation);
        match res.phase {
            PENDING => Some(self.rec.ready.clone()),
            // Some bundles are being placed again (their node died): until they are.
            CREATED => res.rescheduling.clone(),
            _ => None,
        }
    }

    /// The error for `what` put in the group while it is pending in a cluster.
    pub(crate) fn not_created(&self, what: &str) -> Error {
        Error::InvalidArgument {
            what: format!("{what}: placement_group"),
            message: format!(
                "group {} is not created yet: in a cluster, wait for its ready() before \
                 creating actors (or tasks with several returns) in it",
                self.rec.id
            ),
        }
    }

    /// Notes an actor created in the group (killed when the group is removed).
    pub(crate) fn add_actor(&self, cell: &Arc<ActorCell>, rt: &Arc<RuntimeInner>) {
        lock(&self.rec.actors).push(Arc::downgrade(cell));
        if self.rec.phase() == REMOVED {
            // Removed meanwhile: its sweep may have missed this one.
            cell.kill(false, rt);
        }
    }
}

/// Options of a new placement group; finish with [`PlacementGroupBuilder::create`].
#[derive(Clone, Debug)]
pub struct PlacementGroupBuilder {
    bundles: Vec<Bundle>,
    strategy: PlacementStrategy,
    name: Option<String>,
    detached: bool,
}

impl PlacementGroupBuilder {
    /// Registers the group under a name, for [`get_placement_group`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Makes the group outlive its creator (Ray's `lifetime="detached"`), until
    /// [`remove_placement_group`]. Embedded, it lives until `shutdown`.
    pub fn lifetime_detached(mut self) -> Self {
        self.detached = true;
        self
    }
    /// Creates the group and starts reserving its bundles; returns at once (see
    /// [`PlacementGroup::ready`]). Fails with [`Error::InvalidArgument`] on bad bundles or a
    /// taken name, with [`Error::Infeasible`] when a bundle is larger than any node.
    pub fn create(self) -> Result<PlacementGroup, Error> {
        let bad = |message: String| Error::InvalidArgument {
            what: "placement_group".into(),
            message,
        };
        if self.bundles.is_empty() {
            return Err(bad("the bundle list is empty".into()));
        }
        for (i, b) in self.bundles.iter().enumerate() {
            b.check(i).map_err(bad)?;
        }
        if let Some(name) = &self.name
            && name.trim().is_empty()
        {
            return Err(bad(format!("{name:?}: a name must not be empty or blank")));
        }
        with_current(|rt| create(rt, self))?
    }
}

/// Starts creating a placement group of `bundles` with `strategy`; see
/// [`PlacementGroupBuilder`] for a name and a detached lifetime.
pub fn placement_group_builder(
    bundles: Vec<Bundle>,
    strategy: PlacementStrategy,
) -> PlacementGroupBuilder {
    PlacementGroupBuilder {
        bundles,
        strategy,
        name: None,
        detached: false,
    }
}

/// Creates a placement group of `bundles` with `strategy` (Ray's `placement_group`); returns
/// at once, the reservation goes on until [`PlacementGroup::ready`] completes. Bad bundles
/// are [`Error::InvalidArgument`]; a bundle larger than any node is [`Error::Infeasible`].
pub fn placement_group(
    bundles: Vec<Bundle>,
    strategy: PlacementStrategy,
) -> Result<PlacementGroup, Error> {
    placement_group_builder(bundles, strategy).create()
}

/// Removes a group (Ray's `remove_placement_group`): its actors die (`ActorDied`), its queued
/// tasks fail with [`Error::PlacementGroupRemoved`], its resources go back to the node. Tasks
/// already running finish (their threads cannot be stopped); the node may be briefly
/// oversubscribed by them. Removing it again is [`Error::PlacementGroupRemoved`].
pub fn remove_placement_group(pg: &PlacementGroup) -> Result<(), Error> {
    with_current(|rt| remove(rt, &pg.rec))?
}

/// The live group registered under `name` (Ray's `get_placement_group`).
pub fn get_placement_group(name: &str) -> Result<PlacementGroup, Error> {
    with_current(|rt| {
        lock(&rt.scheduler.groups.table)
            .by_name
            .get(name)
            .cloned()
            .map(|rec| PlacementGroup { rec })
            .ok_or_else(|| Error::InvalidArgument {
                what: "get_placement_group".into(),
                message: format!("no placement group named {name:?}"),
            })
    })?
}

/// What one group looks like in a listing.
#[derive(Clone, Debug)]
pub struct PlacementGroupInfo {
    /// Its id.
    pub id: PlacementGroupId,
    /// Its name.
    pub name: Option<String>,
    /// Its strategy.
    pub strategy: PlacementStrategy,
    /// Its state.
    pub state: PlacementGroupState,
    /// Its bundles.
    pub bundles: Vec<Bundle>,
    /// The node each bundle is reserved on (in a cluster, once created; else empty).
    pub bundle_nodes: Vec<u64>,
    /// Each bundle's CPU set once created (empty: not pinned; see
    /// [`PlacementGroup::bundle_cpus`]); empty before.
    pub bundle_cpus: Vec<CpuList>,
    /// Each bundle's GPUs once created ([`PlacementGroup::bundle_gpus`]); empty before.
    pub bundle_gpus: Vec<Vec<usize>>,
    /// Why bundles asking for whole CPUs are not pinned, if any is not.
    pub cpu_note: Option<String>,
}

/// The live groups (pending and created), by id: this runtime's, or in a cluster every
/// group the GCS knows.
pub fn list_placement_groups() -> Result<Vec<PlacementGroupInfo>, Error> {
    if let Some(cluster) = with_current(|rt| rt.cluster.clone())? {
        return cluster.pg_list();
    }
    with_current(|rt| {
        let table = lock(&rt.scheduler.groups.table);
        let mut out: Vec<_> = table
            .by_id
            .values()
            .map(|rec| {
                let pg = PlacementGroup { rec: rec.clone() };
                PlacementGroupInfo {
                    id: pg.id(),
                    name: pg.name().map(str::to_string),
                    strategy: pg.strategy(),
                    state: pg.state(),
                    bundles: pg.bundles().to_vec(),
                    bundle_nodes: pg.bundle_nodes(),
                    bundle_cpus: pg.bundle_cpus(),
                    bundle_gpus: pg.bundle_gpus(),
                    cpu_note: pg.cpu_note(),
                }
            })
            .collect();
        out.sort_by_key(|g| g.id);
        out
    })
}
