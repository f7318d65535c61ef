//! Resource requests and a node's lock-free resource accounting.
//!
//! Amounts are fixed-point thousandths (`1.0 CPU = 1000`), so fractional requests
//! (`num_cpus(0.5)`) are exact. A node keeps one signed atomic counter of what is available per
//! resource kind: index 0 is CPU, 1 is GPU, the rest are the custom resources named at start.
//!
//! # Memory ordering
//!
//! Each counter is updated with a compare-and-swap loop that never lets it go below zero on
//! acquisition (`try_acquire`), and by `fetch_add` on release. Counters are independent; a
//! multi-resource request takes them one by one and gives back what it took if a later one is
//! short. Such a transient partial hold can make a concurrent `try_acquire` fail spuriously,
//! which is safe because every failure parks the task in the scheduler's pending queue and every
//! release (the rollback included) re-examines that queue. `Relaxed` suffices for the counters:
//! they guard no other memory — the task data itself travels through the deques, whose
//! push/steal pairs synchronise.
//!
//! `force_acquire` may drive a counter negative: a slot that blocked in `get` gave its CPU back
//! and takes it again when it wakes, even if others took it meanwhile (Ray does the same); the
//! node is briefly oversubscribed and no new task starts until enough is released.

use std::collections::HashMap;
use std::fmt;

use crate::affinity::BundleCell;
use crate::config::Resolved;
use crate::error::Error;
use crate::gpus::{GpuGrant, GpuInstances};
use crate::sync::{Arc, AtomicI64, Ordering, RwLock};

/// The name of the CPU resource (Ray's `"CPU"`), the one place it is spelled.
pub(crate) const CPU_NAME: &str = "CPU";
/// The name of the GPU resource (Ray's `"GPU"`), the one place it is spelled.
pub(crate) const GPU_NAME: &str = "GPU";

/// Thousandths of a unit.
const SCALE: f64 = 1000.0;
pub(crate) const CPU: usize = 0;
/// The index of `GPU` in every node's table.
pub(crate) const GPU: usize = 1;

/// What a task or actor asks for, by name: CPUs, GPUs and custom resources.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResourceRequest {
    pub(crate) num_cpus: f64,
    pub(crate) num_gpus: f64,
    pub(crate) custom: Vec<(String, f64)>,
}

impl ResourceRequest {
    /// Nothing at all.
    pub(crate) fn none() -> Self {
        ResourceRequest {
            num_cpus: 0.0,
            num_gpus: 0.0,
            custom: Vec::new(),
        }
    }

    /// The custom amounts asked for.
    pub(crate) fn custom(&self) -> impl Iterator<Item = (&str, f64)> {
        self.custom.iter().map(|(n, a)| (n.as_str(), *a))
    }

    /// One CPU, the default for tasks.
    pub(crate) fn task_default() -> Self {
        ResourceRequest {
            num_cpus: 1.0,
            num_gpus: 0.0,
            custom: Vec::new(),
        }
    }

    /// Nothing held while alive, the default for actors (as Ray's actors after placement).
    pub(crate) fn actor_default() -> Self {
        ResourceRequest {
            num_cpus: 0.0,
            num_gpus: 0.0,
            custom: Vec::new(),
        }
    }

    /// Checks every amount as Ray does, before anything is submitted: finite, not negative,
    /// whole above 1, and not 0 for a custom resource (0 CPUs or GPUs is how a task or actor
    /// says it needs none, as `num_cpus=0` in Ray; a custom resource of 0 asks for nothing and
    /// is a mistake). Returns the offending option and what is wrong with it.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let check = |option: String, amount: f64, zero_ok: bool| {
            let problem = if !amount.is_finite() {
                Some(format!("must be a finite number, got {amount}"))
            } else if amount < 0.0 {
                Some(format!("must not be negative, got {amount}"))
            } else if amount == 0.0 && !zero_ok {
                Some("0 asks for nothing: leave the resource out".to_string())
            } else if amount > 1.0 && amount.fract() != 0.0 {
                Some(format!(
                    "quantities over 1 must be whole numbers, got {amount}"
                ))
            } else {
                None
            };
            problem.map_or(Ok(()), |p| Err((option, p)))
        };
        check("num_cpus".into(), self.num_cpus, true)?;
        check("num_gpus".into(), self.num_gpus, true)?;
        for (name, amount) in &self.custom {
            if name.trim().is_empty() {
                return Err(("resource".into(), "a resource needs a name".to_string()));
            }
            check(format!("resource {name:?}"), *amount, false)?;
        }
        Ok(())
    }

    pub(crate) fn set_custom(&mut self, name: &str, amount: f64) {
        match self.custom.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = amount,
            None => self.custom.push((name.to_string(), amount)),
        }
    }
}

impl fmt::Display for ResourceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{CPU: {}, GPU: {}", self.num_cpus, self.num_gpus)?;
        for (name, amount) in &self.custom {
            write!(f, ", {name}: {amount}")?;
        }
        f.write_str("}")
    }
}

/// A request resolved against one node's resource table: `(index, thousandths)` pairs with
/// non-zero amounts, for a GPU request on a node that numbers its devices the devices it
/// holds while acquired ([`GpuGrant`]), and for work in a placement group's bundle the
/// bundle's place ([`BundleCell`]). Cheap to test and apply.
#[derive(Clone, Debug)]
pub(crate) struct Demand(
    /// Shared, so that a task of the default shape clones its node's demand without
    /// allocating.
    Arc<[(u32, i64)]>,
    Option<Arc<GpuGrant>>,
    Option<Arc<BundleCell>>,
);

impl PartialEq for Demand {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Demand {}

impl Demand {
    pub(crate) fn none() -> Self {
        Demand(Arc::new([]), None, None)
    }

    /// The devices it holds, for a GPU request (see [`crate::gpus`]).
    pub(crate) fn gpus(&self) -> Option<&GpuGrant> {
        self.1.as_deref()
    }

    /// The place (CPU set, GPUs) of the placement-group bundle it runs in (see
    /// [`crate::topology`]).
    pub(crate) fn bundle(&self) -> Option<&BundleCell> {
        self.2.as_deref()
    }

    /// The part of resource `index`, in thousandths.
    fn part(&self, index: usize) -> i64 {
        self.0
            .iter()
            .filter(|(i, _)| *i as usize == index)
            .map(|(_, a)| a)
            .sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether it asks for nothing but CPU (or nothing at all).
    pub(crate) fn is_cpu_only(&self) -> bool {
        self.0.iter().all(|(i, _)| *i as usize == CPU)
    }

    /// The CPU part, in thousandths: what a slot gives back while it blocks.
    pub(crate) fn cpu(&self) -> i64 {
        self.part(CPU)
    }
}

/// How many resources can be added at run time (a placement group's bundles): each is one
/// counter of a fixed array, so adding one never moves the counters the hot path reads.
pub(crate) const DYNAMIC_CAPACITY: usize = 1 << 14;
/// Subtracted from a removed dynamic resource's counter: nothing can take it any more, and
/// holders still give back what they hold; once all is back the counter reads `total - RETIRED`
/// and the index may be reused.
const RETIRED: i64 = 1 << 60;

/// A node's resources: totals fixed at start, availability as atomics; and resources added at
/// run time (a placement group's bundles), in counters after the static ones.
#[derive(Debug)]
pub(crate) struct NodeResources {
    names: Vec<String>,
    total: Vec<i64>,
    /// `names.len()` static counters, then [`DYNAMIC_CAPACITY`] dynamic ones.
    available: Box<[AtomicI64]>,
    /// The totals of the dynamic counters (0: free or retired).
    dynamic_total: Box<[AtomicI64]>,
    /// Names of the dynamic resources in use, and the indices free or draining.
    dynamic: RwLock<Dynamic>,
    /// Which devices are free, for requests of `GPU` (none: the node has no GPU).
    gpus: Option<GpuInstances>,
}

/// The table of run-time resources: only group creation and removal write it, and only
/// requests naming such a resource read it.
#[derive(Debug, Default)]
struct Dynamic {
    by_name: HashMap<String, u32>,
    /// Indices never used or fully drained.
    free: Vec<u32>,
    /// Removed, with holders possibly still to give back: `(index, total, what it was)`.
    retired: Vec<(u32, i64, String)>,
    /// Places (CPU set, GPUs) of bundles, by the index of a resource that names the bundle,
    /// with a rank: a demand naming several takes the lowest (one bundle's before its
    /// group's).
    bundle_cells: HashMap<u32, (u8, Arc<BundleCell>)>,
}

fn to_fixed(what: &str, name: &str, amount: f64) -> Result<i64, String> {
    if !amount.is_finite() || amount < 0.0 {
        return Err(format!(
            "{what} {name} must be a non-negative number, got {amount}"
        ));
    }
    Ok((amount * SCALE).round() as i64)
}

impl NodeResources {
    pub(crate) fn new(config: &Resolved) -> Result<Self, Error> {
        let bad = |message: String| Error::Config {
            key: "resources".into(),
            message,
        };
        let mut names = vec![CPU_NAME.to_string(), GPU_NAME.to_string()];
        let mut total = vec![
            to_fixed("resource", CPU_NAME, config.num_cpus).map_err(bad)?,
            to_fixed("resource", GPU_NAME, config.num_gpus).map_err(bad)?,
        ];
        for (name, amount) in &config.resources.0 {
            if names.iter().any(|n| n == name) {
                return Err(bad(format!("resource {name} is declared twice")));
            }
            names.push(name.clone());
            total.push(to_fixed("resource", name, *amount).map_err(bad)?);
        }
        let available = total
            .iter()
            .map(|&t| AtomicI64::new(t))
            .chain((0..DYNAMIC_CAPACITY).map(|_| AtomicI64::new(0)))
            .collect();
        let gpus = GpuInstances::new(total[GPU]);
        let base = names.len() as u32;
        let dynamic = Dynamic {
            free: (base..base + DYNAMIC_CAPACITY as u32).rev().collect(),
            ..Dynamic::default()
        };
        Ok(NodeResources {
            names,
            total,
            available,
            dynamic_total: (0..DYNAMIC_CAPACITY).map(|_| AtomicI64::new(0)).collect(),
            dynamic: RwLock::new(dynamic),
            gpus,
        })
    }

    fn total_at(&self, i: usize) -> i64 {
        match self.total.get(i) {
            Some(&t) => t,
            None => self.dynamic_total[i - self.names.len()].load(Ordering::Relaxed),
        }
    }

    /// Adds resources at run time, each with a total but nothing available yet (what asks for
    /// them waits until [`NodeResources::commit_dynamic`]); returns their indices. Fails when
    /// the table is full or a name exists. A [`BundleCell`] (empty) is made for each entry that `cell_rank` gives a rank, in the
    /// same step, so that no demand naming the entry misses it ([`NodeResources::bundle_cell`]).
    pub(crate) fn add_dynamic(
        &self,
        entries: &[(String, f64)],
        cell_rank: &dyn Fn(&str) -> Option<u8>,
    ) -> Result<Vec<u32>, String> {
        let mut table = self.dynamic.write().unwrap_or_else(|p| p.into_inner());
        // Reuse what removed groups fully gave back.
        let base = self.names.len();
        let mut k = 0;
        while k < table.retired.len() {
            let (i, total) = (table.retired[k].0, table.retired[k].1);
            if self.available[i as usize].load(Ordering::Relaxed) == total - RETIRED {
                self.available[i as usize].store(0, Ordering::Relaxed);
                self.dynamic_total[i as usize - base].store(0, Ordering::Relaxed);
                table.retired.swap_remove(k);
                table.free.push(i);
            } else {
                k += 1;
            }
        }
        if table.free.len() < entries.len() {
            return Err(format!(
                "the node's table of run-time resources is full ({DYNAMIC_CAPACITY} entries)"
            ));
        }
        if let Some((name, _)) = entries
            .iter()
            .find(|(n, _)| table.by_name.contains_key(n) || self.names.contains(n))
        {
            return Err(format!("resource {name} exists already"));
        }
        let mut out = Vec::with_capacity(entries.len());
        for (name, amount) in entries {
            let fixed = to_fixed("resource", name, *amount)?;
            let Some(i) = table.free.pop() else {
                unreachable!("checked above")
            };
            self.available[i as usize].store(0, Ordering::Relaxed);
            self.dynamic_total[i as usize - base].store(fixed, Ordering::Relaxed);
            table.by_name.insert(name.clone(), i);
            if let Some(rank) = cell_rank(name) {
                table.bundle_cells.insert(i, (rank, Default::default()));
            }
            out.push(i);
        }
        Ok(out)
    }

    /// The place of work that asks for dynamic resource `index` (created empty if it has none);
    /// among the cells of one demand's resources the one of lowest `rank` applies.
    pub(crate) fn bundle_cell(&self, index: u32, rank: u8) -> Arc<BundleCell> {
        let mut table = self.dynamic.write().unwrap_or_else(|p| p.into_inner());
        table
            .bundle_cells
            .entry(index)
            .or_insert_with(|| (rank, Default::default()))
            .1
            .clone()
    }

    /// Makes dynamic resources available: each gets its whole total.
    pub(crate) fn commit_dynamic(&self, indices: &[u32]) {
        for &i in indices {
            let total = self.total_at(i as usize);
            self.available[i as usize].fetch_add(total, Ordering::Relaxed);
        }
    }

    /// Removes dynamic resources: nothing can take them any more, holders give back as they
    /// end, and the indices are reused once everything is back. `committed` says whether they
    /// had been made available.
    pub(crate) fn remove_dynamic(&self, indices: &[u32], committed: bool, label: &str) {
        let mut table = self.dynamic.write().unwrap_or_else(|p| p.into_inner());
        for &i in indices {
            let total = self.total_at(i as usize);
            let shift = if committed { RETIRED } else { RETIRED - total };
            self.available[i as usize].fetch_sub(shift, Ordering::Relaxed);
            table.by_name.retain(|_, v| *v != i);
            table.bundle_cells.remove(&i);
            table.retired.push((i, total, label.to_string()));
        }
    }

    /// What removed `demand`'s resources, if it names a removed dynamic resource (it can
    /// never be taken).
    pub(crate) fn removed(&self, demand: &Demand) -> Option<String> {
        let &(index, _) = demand.0.iter().find(|&&(i, _)| {
            i as usize >= self.names.len()
                && self.available[i as usize].load(Ordering::Relaxed) < -(RETIRED / 2)
        })?;
        let table = self.dynamic.read().unwrap_or_else(|p| p.into_inner());
        Some(
            table
                .retired
                .iter()
                .find(|r| r.0 == index)
                .map_or_else(|| "?".to_string(), |r| r.2.clone()),
        )
    }

    /// `(name, available, total)` of every dynamic resource, in units.
    pub(crate) fn dynamic_snapshot(&self) -> Vec<(String, f64, f64)> {
        let table = self.dynamic.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = table
            .by_name
            .iter()
            .map(|(n, &i)| {
                (
                    n.clone(),
                    self.available[i as usize].load(Ordering::Relaxed) as f64 / SCALE,
                    self.total_at(i as usize) as f64 / SCALE,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Resolves a request by name. A resource this node does not have counts as a total of 0,
    /// which makes the request infeasible rather than an error of its own.
    pub(crate) fn demand(&self, req: &ResourceRequest) -> Result<Demand, DemandError> {
        let mut out = Vec::with_capacity(2 + req.custom.len());
        let mut bundle: Option<(u8, Arc<BundleCell>)> = None;
        let mut push = |name: &str, amount: f64| -> Result<(), DemandError> {
            let fixed = to_fixed("request", name, amount).map_err(DemandError::Invalid)?;
            if fixed == 0 {
                return Ok(());
            }
            let index = self.names.iter().position(|n| n == name).or_else(|| {
                let table = self.dynamic.read().unwrap_or_else(|p| p.into_inner());
                let i = *table.by_name.get(name)?;
                if let Some((rank, cell)) = table.bundle_cells.get(&i)
                    && bundle.as_ref().is_none_or(|(r, _)| rank < r)
                {
                    bundle = Some((*rank, cell.clone()));
                }
                Some(i as usize)
            });
            match index {
                Some(i) if self.total_at(i) >= fixed => {
                    out.push((i as u32, fixed));
                    Ok(())
                }
                _ => Err(DemandError::Infeasible),
            }
        };
        push(CPU_NAME, req.num_cpus)?;
        push(GPU_NAME, req.num_gpus)?;
        for (name, amount) in &req.custom {
            push(name, *amount)?;
        }
        let grant = (self.gpus.is_some() && out.iter().any(|&(i, _)| i as usize == GPU))
            .then(|| Arc::new(GpuGrant::default()));
        Ok(Demand(out.into(), grant, bundle.map(|(_, cell)| cell)))
    }

    /// Takes the whole demand or nothing (see the module docs on spurious failure).
    pub(crate) fn try_acquire(&self, demand: &Demand) -> bool {
        // A GPU demand's devices: reserved before any counter is touched (see `GpuGrant`).
        let devices = match (&demand.1, &self.gpus) {
            (Some(grant), Some(table)) => Some((grant, table)),
            _ => None,
        };
        if let Some((grant, _)) = devices
            && !grant.reserve()
        {
            return false;
        }
        let unreserve = || {
            if let Some((grant, _)) = devices {
                grant.unreserve();
            }
        };
        for (k, &(i, amount)) in demand.0.iter().enumerate() {
            let counter = &self.available[i as usize];
            let mut current = counter.load(Ordering::Relaxed);
            loop {
                if current < amount {
                    self.give_back(&demand.0[..k]);
                    unreserve();
                    return false;
                }
                match counter.compare_exchange_weak(
                    current,
                    current - amount,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        if let Some((grant, table)) = devices
            && !table.acquire(demand.part(GPU), grant)
        {
            // The counter had room but no device fits (fractions spread over every device):
            // nothing is taken, and the request waits as any other that does not fit.
            self.give_back(&demand.0);
            unreserve();
            return false;
        }
        true
    }

    /// Adds `parts` back to their counters.
    fn give_back(&self, parts: &[(u32, i64)]) {
        for &(i, amount) in parts {
            self.available[i as usize].fetch_add(amount, Ordering::Relaxed);
        }
    }

    pub(crate) fn release_cpu(&self, thousandths: i64) {
        self.available[CPU].fetch_add(thousandths, Ordering::Relaxed);
    }

    /// Takes CPU back even if that drives the counter negative (a slot waking from `get`).
    pub(crate) fn force_acquire_cpu(&self, thousandths: i64) {
        self.available[CPU].fetch_sub(thousandths, Ordering::Relaxed);
    }

    /// Takes a whole demand even if that drives counters negative (a placement group's
    /// bundles carved out of a busy worker: nothing new starts until enough is released).
    pub(crate) fn force_acquire(&self, demand: &Demand) {
        for &(i, amount) in demand.0.iter() {
            self.available[i as usize].fetch_sub(amount, Ordering::Relaxed);
        }
    }

    pub(crate) fn release(&self, demand: &Demand) {
        // Devices first: a request the counters admit next finds them free.
        if let (Some(grant), Some(table)) = (&demand.1, &self.gpus) {
            table.release(demand.part(GPU), grant);
        }
        self.give_back(&demand.0);
    }

    /// The devices no request holds any of (for choosing a placement group's by topology).
    pub(crate) fn wholly_free_devices(&self) -> std::collections::BTreeSet<usize> {
        self.gpus
            .as_ref()
            .map(GpuInstances::wholly_free)
            .unwrap_or_default()
    }

    /// Takes whole `devices` out of the device table for something that holds them outside it
    /// (a placement group's bundles installed in a worker): no request gets them until
    /// [`NodeResources::release_devices`].
    pub(crate) fn hold_devices(&self, devices: &[usize]) {
        if let Some(table) = &self.gpus {
            table.hold(devices);
        }
    }

    /// Gives back what [`NodeResources::hold_devices`] took.
    pub(crate) fn release_devices(&self, devices: &[usize]) {
        if let Some(table) = &self.gpus {
            table.unhold(devices);
        }
    }

    /// `(name, available, total)` per resource, in units.
    pub(crate) fn snapshot(&self) -> Vec<(String, f64, f64)> {
        self.names
            .iter()
            .zip(&self.total)
            .zip(self.available.iter())
            .map(|((n, &t), a)| {
                (
                    n.clone(),
                    a.load(Ordering::Relaxed) as f64 / SCALE,
                    t as f64 / SCALE,
                )
            })
            .collect()
    }

    pub(crate) fn total_string(&self) -> String {
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(&self.total)
            .map(|(n, &t)| format!("{n}: {}", t as f64 / SCALE))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// Why a request could not be resolved.
#[derive(Debug)]
pub(crate) enum DemandError {
    /// More than the node has in total (or a resource it lacks).
    Infeasible,
    /// A negative or non-finite amount.
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn node(cpus: f64) -> NodeResources {
        NodeResources::new(
            &Config::default()
                .num_cpus(cpus)
                .resource("custom", 2.0)
                .resolve()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn acquire_is_all_or_nothing() {
        let n = node(2.0);
        let mut req = ResourceRequest::task_default();
        req.set_custom("custom", 2.0);
        let d = n.demand(&req).unwrap();
        assert!(n.try_acquire(&d));
        let one = n.demand(&ResourceRequest::task_default()).unwrap();
        assert!(n.try_acquire(&one), "a CPU is still free");
        assert!(!n.try_acquire(&d), "custom is exhausted");
        assert_eq!(
            n.snapshot()[0].1,
            0.0,
            "the failed attempt gave back its CPU"
        );
        n.release(&d);
        n.release(&one);
        assert_eq!(n.snapshot()[0].1, 2.0);
    }

    #[test]
    fn oversize_and_unknown_requests_are_infeasible() {
        let n = node(2.0);
        let mut big = ResourceRequest::task_default();
        big.num_cpus = 3.0;
        assert!(matches!(n.demand(&big), Err(DemandError::Infeasible)));
        let mut gpu = ResourceRequest::task_default();
        gpu.num_gpus = 1.0;
        assert!(matches!(n.demand(&gpu), Err(DemandError::Infeasible)));
        let mut neg = ResourceRequest::task_default();
        neg.num_cpus = -1.0;
        assert!(matches!(n.demand(&neg), Err(DemandError::Invalid(_))));
    }

    #[test]
    fn dynamic_resources_wait_commit_retire_and_are_reused() {
        let n = node(2.0);
        let slots = n
            .add_dynamic(
                &[("CPU_group_0_x".into(), 1.0), ("CPU_group_x".into(), 1.0)],
                &|_| None,
            )
            .unwrap();
        let mut req = ResourceRequest::none();
        req.set_custom("CPU_group_0_x", 1.0);
        req.set_custom("CPU_group_x", 1.0);
        let d = n.demand(&req).unwrap();
        assert!(!n.try_acquire(&d), "nothing available before the commit");
        n.commit_dynamic(&slots);
        assert!(n.try_acquire(&d));
        assert!(!n.try_acquire(&d), "the bundle holds one CPU");
        let mut more = req.clone();
        more.set_custom("CPU_group_0_x", 2.0);
        assert!(matches!(n.demand(&more), Err(DemandError::Infeasible)));
        n.remove_dynamic(&slots, true, "group x");
        assert_eq!(n.removed(&d).as_deref(), Some("group x"));
        assert!(
            matches!(n.demand(&req), Err(DemandError::Infeasible)),
            "the names are gone"
        );
        // Held: not reused yet; given back: reused.
        let again = n.add_dynamic(&[("a".into(), 1.0)], &|_| None).unwrap();
        assert!(!slots.contains(&again[0]));
        n.release(&d);
        n.remove_dynamic(&again, false, "a");
        let after_release = n
            .add_dynamic(&[("b".into(), 1.0), ("c".into(), 1.0)], &|_| None)
            .unwrap();
        assert!(
            after_release
                .iter()
                .all(|i| slots.contains(i) || again.contains(i)),
            "drained indices are reused first: {after_release:?}"
        );
        assert!(
            n.add_dynamic(&[("b".into(), 1.0)], &|_| None).is_err(),
            "a name exists"
        );
    }

    #[test]
    fn fractional_cpus_are_exact() {
        let n = node(1.0);
        let mut half = ResourceRequest::task_default();
        half.num_cpus = 0.5;
        let d = n.demand(&half).unwrap();
        assert!(n.try_acquire(&d) && n.try_acquire(&d));
        assert!(!n.try_acquire(&d));
    }

    /// One GPU demand acquired by two threads at once (a slot and an inline waiter): the
    /// second fails before it takes anything, so no counter is held meanwhile (another task
    /// failing then would wait for a release nobody makes) and the first keeps its device.
    #[test]
    fn a_gpu_demand_held_is_not_acquired_twice() {
        let config = Config::default()
            .num_cpus(4.0)
            .num_gpus(2.0)
            .resolve()
            .unwrap();
        let n = NodeResources::new(&config).unwrap();
        let mut req = ResourceRequest::task_default();
        req.num_gpus = 1.0;
        let d = n.demand(&req).unwrap();
        assert!(n.try_acquire(&d));
        let held = d.gpus().unwrap().mask();
        assert!(!n.try_acquire(&d), "already held");
        assert_eq!(d.gpus().unwrap().mask(), held, "keeps its device");
        let other = n.demand(&req).unwrap();
        assert!(n.try_acquire(&other), "the second GPU is still free");
        assert_ne!(other.gpus().unwrap().mask(), held);
        n.release(&d);
        n.release(&other);
        assert_eq!(n.snapshot()[1].1, 2.0, "every GPU is back");
    }
}
