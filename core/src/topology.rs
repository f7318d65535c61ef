//! A node's CPU and GPU topology as placement groups see it, and each bundle's CPUs and GPUs.
//!
//! A bundle that asks for whole CPUs gets that many logical CPUs of its own on its node: no two
//! bundles share one, and the work run in the bundle is pinned to them (`affinity.rs`). The
//! choice is sans I/O (`choose_cpus` over a `CpuTopology` and the CPUs free), preferring,
//! in order:
//!
//! 1. one NUMA node (of one package), the one near the bundle's GPUs when it asks for some;
//! 2. among those that fit, the one with the fewest free CPUs (best fit, so that whole NUMA
//!    nodes stay free for larger bundles);
//! 3. else one package, else any CPUs of the node, taking from the fullest NUMA nodes first.
//!
//! The node's CPUs are what its scheduler may use: the configured `cpu_affinity` list when
//! set, else the process's affinity mask (the cgroup cpuset and any launcher binding). Their
//! NUMA nodes and packages come from hwloc with the `hwloc` feature, else from `/sys`
//! (`devices/system/node/node*/cpulist`, `devices/system/cpu/cpu*/topology/physical_package_id`).
//! When too few CPUs are left for a bundle it is not pinned — never refused — and `NodeSets`
//! says why in a note that the log and `manta list placement-groups` show.
//!
//! # GPUs
//! GPUs are found on the PCI bus through sysfs (`/sys/bus/pci/devices/*`: `vendor`, `class`,
//! `numa_node`, and the device's path under `/sys/devices`, whose first bridge is the PCIe
//! root port a switch hangs from): display controllers of class VGA (`0x0300xx`) or 3D
//! (`0x0302xx`). hwloc knows them too, but hwloc 2 filters I/O objects out unless a type filter
//! is set, and the hwloc2 crate (2.2) does not expose `hwloc_topology_set_type_filter`.
//! Only NVIDIA's (vendor `0x10de`) count as GPUs: they are what CUDA sees, whereas a server's
//! other VGA controller is usually its BMC's console, not a compute device.
//!
//! Which of them this process may use is the launcher's word: `CUDA_VISIBLE_DEVICES`, else
//! `SLURM_STEP_GPUS` / `SLURM_JOB_GPUS`; with none of these set, every NVIDIA GPU (as CUDA does).
//! An index `i` is located as the `i`-th NVIDIA GPU in PCI bus order: that is CUDA's numbering
//! only with `CUDA_DEVICE_ORDER=PCI_BUS_ID` (nvidia-smi's order; CUDA's default puts the fastest
//! device first), and Slurm's indices are assumed to follow bus order too (an assumption about
//! the site's `gres.conf`, not checked here). When Slurm names the step's GPUs and
//! `CUDA_VISIBLE_DEVICES` lists as many, Slurm's indices locate them: inside a device cgroup
//! Slurm renumbers `CUDA_VISIBLE_DEVICES` from 0 while sysfs still shows every GPU of the host.
//! A GPU named by UUID (`GPU-…`, `MIG-…`), or by an index beyond what sysfs shows, stays
//! count-only (its id, no bus id or NUMA node), and so do all of them when sysfs shows no
//! NVIDIA device.
//!
//! A bundle asking for whole GPUs takes them from one PCIe switch where it can, else from one
//! NUMA node (`choose_gpus`), and its CPU set from that NUMA node. A node without GPUs has an
//! empty GPU topology.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::CpuList;
use crate::sync::{Mutex, lock};

/// A GPU this process may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gpu {
    /// The launcher's id for it (`CUDA_VISIBLE_DEVICES` entry), or its index in PCI bus order
    /// when the launcher named none.
    pub id: String,
    /// Its PCI bus id (`0000:17:00.0`), when it was located on the bus.
    pub bus_id: Option<String>,
    /// The NUMA node it is attached to, when located and the platform says.
    pub numa: Option<usize>,
}

/// A display controller (PCI class VGA or 3D) found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDisplay {
    /// PCI bus id (`0000:17:00.0`).
    pub bus_id: String,
    /// PCI vendor id (`0x10de`: NVIDIA).
    pub vendor: u16,
    /// PCI class code (`0x030200`: 3D controller).
    pub class: u32,
    /// NUMA node, `None` when sysfs says -1 (unknown, or a one-node machine).
    pub numa: Option<usize>,
    /// The PCIe root port it hangs from (`0000:00:01.0`), behind which a PCIe switch groups
    /// devices; `None` when sysfs does not say (a device straight on the root complex).
    pub root_port: Option<String>,
}

/// PCI vendor id of NVIDIA.
pub const NVIDIA: u16 = 0x10de;

/// The VGA (`0x0300xx`) and 3D (`0x0302xx`) controllers under `<sys>/bus/pci/devices`, in bus
/// order; `sys` is `/sys` except in tests. Unreadable or malformed entries are skipped.
pub fn pci_displays(sys: &Path) -> Vec<PciDisplay> {
    let hex = |dir: &Path, file: &str| {
        let raw = std::fs::read_to_string(dir.join(file)).ok()?;
        u32::from_str_radix(raw.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys.join("bus/pci/devices")) else {
        return out;
    };
    for e in dir.flatten() {
        let path = e.path();
        let (Some(class), Some(vendor)) = (hex(&path, "class"), hex(&path, "vendor")) else {
            continue;
        };
        if !matches!(class >> 8, 0x0300 | 0x0302) {
            continue;
        }
        let numa = std::fs::read_to_string(path.join("numa_node"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|n| usize::try_from(n).ok());
        out.push(PciDisplay {
            bus_id: e.file_name().to_string_lossy().into_owned(),
            vendor: u16::try_from(vendor).unwrap_or(0),
            class,
            numa,
            root_port: root_port(&path),
        });
    }
    out.sort_by(|a, b| a.bus_id.cmp(&b.bus_id));
    out
}

/// The launcher's list of GPUs from the first of `keys` that is set (`None`: none is).
fn gpu_list(var: &impl Fn(&str) -> Option<String>, keys: &[&str]) -> Option<Vec<String>> {
    let v = keys.iter().find_map(|k| var(k))?;
    let v = v.trim();
    if v.is_empty() || v == "NoDevFiles" || v == "-1" {
        return Some(Vec::new());
    }
    Some(v.split(',').map(|s| s.trim().to_owned()).collect())
}

/// The GPUs this process may use, from the launcher's environment (`var`) located among the
/// display controllers found (`pci`): sans I/O; the rules are in the module docs.
pub fn locate_gpus(var: impl Fn(&str) -> Option<String>, pci: &[PciDisplay]) -> Vec<Gpu> {
    let nvidia: Vec<&PciDisplay> = pci.iter().filter(|d| d.vendor == NVIDIA).collect();
    let slurm = gpu_list(&var, &["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"]);
    let Some(ids) = gpu_list(&var, &["CUDA_VISIBLE_DEVICES"]).or_else(|| slurm.clone()) else {
        return nvidia
            .iter()
            .enumerate()
            .map(|(i, d)| Gpu {
                id: i.to_string(),
                bus_id: Some(d.bus_id.clone()),
                numa: d.numa,
            })
            .collect();
    };
    let keys = match slurm {
        Some(s) if s.len() == ids.len() => s,
        _ => ids.clone(),
    };
    ids.into_iter()
        .zip(keys)
        .map(|(id, key)| {
            let found = key.parse::<usize>().ok().and_then(|i| nvidia.get(i));
            Gpu {
                id,
                bus_id: found.map(|d| d.bus_id.clone()),
                numa: found.and_then(|d| d.numa),
            }
        })
        .collect()
}

impl std::fmt::Display for Gpu {
    /// `0=0000:17:00.0@numa0`; the id alone when the GPU was not located.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)?;
        if let Some(bus) = &self.bus_id {
            write!(f, "={bus}")?;
        }
        if let Some(n) = self.numa {
            write!(f, "@numa{n}")?;
        }
        Ok(())
    }
}

/// The PCIe root port above the device at `dev` (a `bus/pci/devices` entry, a link into
/// `/sys/devices/pciDDDD:BB/<root port>/…`): the first bridge under the root complex, `None`
/// when the device sits on the root complex itself or the link cannot be read.
fn root_port(dev: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dev).ok()?;
    let parts: Vec<String> = real
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let host = parts.iter().position(|p| p.starts_with("pci"))?;
    // `pciDDDD:BB`, then the root port, then (at least) the device itself.
    (parts.len() > host + 2).then(|| parts[host + 1].clone())
}

/// Where one GPU of the process sits: its ordinal (as [`crate::gpu_ids`] numbers devices), its
/// NUMA node and the PCIe root port (switch) it hangs from, when known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GpuPlace {
    pub(crate) device: usize,
    pub(crate) numa: Option<usize>,
    pub(crate) switch: Option<String>,
}

/// The places of `gpus` (the process's, in ordinal order) as `pci` locates them.
pub(crate) fn gpu_places(gpus: &[Gpu], pci: &[PciDisplay]) -> Vec<GpuPlace> {
    gpus.iter()
        .enumerate()
        .map(|(device, g)| {
            let found = g
                .bus_id
                .as_ref()
                .and_then(|b| pci.iter().find(|d| &d.bus_id == b));
            GpuPlace {
                device,
                numa: g.numa,
                switch: found.and_then(|d| d.root_port.clone()),
            }
        })
        .collect()
}

/// This process's GPUs and where they sit, from its environment and `/sys` (empty on a node
/// without GPUs). The test hook `MANTA_TESTING_GPU_TOPOLOGY` (`numa:switch,…`, one entry per
/// device in ordinal order) stands in for a machine with GPUs.
pub(crate) fn read_gpu_places() -> Vec<GpuPlace> {
    if let Ok(fake) = std::env::var("MANTA_TESTING_GPU_TOPOLOGY") {
        return parse_gpu_places(&fake);
    }
    let pci = pci_displays(Path::new("/sys"));
    gpu_places(&locate_gpus(|k| std::env::var(k).ok(), &pci), &pci)
}

/// `numa:switch,…` (one entry per device, in ordinal order; a part that is not a number, or
/// missing, is unknown).
fn parse_gpu_places(s: &str) -> Vec<GpuPlace> {
    s.split(',')
        .filter(|e| !e.trim().is_empty())
        .enumerate()
        .map(|(device, e)| {
            let (numa, switch) = e.trim().split_once(':').unwrap_or((e.trim(), ""));
            GpuPlace {
                device,
                numa: numa.parse().ok(),
                switch: (!switch.is_empty()).then(|| switch.to_owned()),
            }
        })
        .collect()
}

/// `want` devices out of `free` (ordinals of `gpus`): all behind one PCIe switch if a switch
/// has them (the one with the fewest free that does), else on one NUMA node (likewise), else
/// any, taking from the NUMA nodes with most free first. `None` when fewer are free.
pub(crate) fn choose_gpus(
    gpus: &[GpuPlace],
    free: &BTreeSet<usize>,
    want: usize,
) -> Option<Vec<usize>> {
    if want == 0 {
        return Some(Vec::new());
    }
    let mut by_switch: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut by_numa: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for g in gpus.iter().filter(|g| free.contains(&g.device)) {
        if let Some(s) = &g.switch {
            by_switch.entry(s.as_str()).or_default().push(g.device);
        }
        by_numa.entry(g.numa).or_default().push(g.device);
    }
    let best = |groups: Vec<&Vec<usize>>| {
        groups
            .into_iter()
            .filter(|v| v.len() >= want)
            .min_by_key(|v| (v.len(), v[0]))
            .map(|v| v[..want].to_vec())
    };
    if let Some(out) = best(by_switch.values().collect()) {
        return Some(out);
    }
    if let Some(out) = best(by_numa.values().collect()) {
        return Some(out);
    }
    let mut groups: Vec<&Vec<usize>> = by_numa.values().collect();
    groups.sort_by_key(|v| (std::cmp::Reverse(v.len()), v[0]));
    let mut out: Vec<usize> = groups.into_iter().flatten().copied().take(want).collect();
    if out.len() < want {
        return None;
    }
    out.sort_unstable();
    Some(out)
}

/// Splits `devices` (GPU ordinals free for a group on a node) among bundles wanting `wants[i]`
/// whole GPUs, each by [`choose_gpus`] — the largest bundles first, so that they find a whole
/// switch or NUMA node before smaller ones break it up. A device `gpus` does not locate counts
/// as one of unknown place. A bundle wanting none, or more than are left, gets none.
pub(crate) fn split_gpus(
    gpus: &[GpuPlace],
    devices: &BTreeSet<usize>,
    wants: &[usize],
) -> Vec<Vec<usize>> {
    let mut places = gpus.to_vec();
    for &d in devices {
        if !places.iter().any(|g| g.device == d) {
            places.push(GpuPlace {
                device: d,
                ..GpuPlace::default()
            });
        }
    }
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(wants[i]), i));
    let mut free = devices.clone();
    let mut out = vec![Vec::new(); wants.len()];
    for i in order {
        if let Some(chosen) = choose_gpus(&places, &free, wants[i]) {
            for d in &chosen {
                free.remove(d);
            }
            out[i] = chosen;
        }
    }
    out
}

/// The NUMA node most of `devices` sit on (the lowest on a tie), if any says.
pub(crate) fn numa_of_gpus(gpus: &[GpuPlace], devices: &[usize]) -> Option<usize> {
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for g in gpus.iter().filter(|g| devices.contains(&g.device)) {
        if let Some(n) = g.numa {
            *count.entry(n).or_default() += 1;
        }
    }
    count
        .into_iter()
        .max_by_key(|(n, c)| (*c, std::cmp::Reverse(*n)))
        .map(|(n, _)| n)
}

/// Where one logical CPU sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuPlace {
    /// The OS's CPU number.
    pub cpu: usize,
    /// Its package (socket).
    pub package: usize,
    /// Its NUMA node.
    pub numa: usize,
}

/// The CPUs of a node with their packages and NUMA nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTopology {
    /// The CPUs, in the order the source lists them.
    pub cpus: Vec<CpuPlace>,
}

impl CpuTopology {
    /// A synthetic topology: `packages` × `numa_per_package` NUMA nodes of `cpus_per_numa`
    /// CPUs each, numbered in order (for tests).
    #[cfg(test)]
    pub(crate) fn synthetic(
        packages: usize,
        numa_per_package: usize,
        cpus_per_numa: usize,
    ) -> Self {
        let mut cpus = Vec::new();
        for p in 0..packages {
            for n in 0..numa_per_package {
                let numa = p * numa_per_package + n;
                for c in 0..cpus_per_numa {
                    cpus.push(CpuPlace {
                        cpu: numa * cpus_per_numa + c,
                        package: p,
                        numa,
                    });
                }
            }
        }
        CpuTopology { cpus }
    }

    /// The topology of `allowed` (the node's CPUs), read from hwloc (feature `hwloc`) or
    /// `/sys`; a CPU whose place is unknown counts as package 0, NUMA node 0.
    pub(crate) fn read(allowed: &[usize]) -> Self {
        #[cfg(feature = "hwloc")]
        if let Some(t) = hwloc_read(allowed) {
            return t;
        }
        Self::from_sysfs(Path::new("/sys"), allowed)
    }

    /// The topology of `allowed` from a sysfs tree rooted at `sys`.
    pub(crate) fn from_sysfs(sys: &Path, allowed: &[usize]) -> Self {
        let numa_of = sysfs_numa_of(sys);
        let cpus = allowed
            .iter()
            .map(|&cpu| {
                let package = std::fs::read_to_string(sys.join(format!(
                    "devices/system/cpu/cpu{cpu}/topology/physical_package_id"
                )))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .and_then(|p| usize::try_from(p).ok())
                .unwrap_or(0);
                CpuPlace {
                    cpu,
                    package,
                    numa: numa_of.get(&cpu).copied().unwrap_or(0),
                }
            })
            .collect();
        CpuTopology { cpus }
    }
}

/// Each CPU's NUMA node, from `devices/system/node/node*/cpulist` of the sysfs tree rooted at
/// `sys`; empty where the kernel lists no NUMA node.
pub fn sysfs_numa_of(sys: &Path) -> BTreeMap<usize, usize> {
    let mut numa_of = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(sys.join("devices/system/node")) else {
        return numa_of;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(node) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let list = std::fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
        for cpu in CpuList::parse(list.trim()).map(|l| l.0).unwrap_or_default() {
            numa_of.insert(cpu, node);
        }
    }
    numa_of
}

/// The places of `allowed` as hwloc sees them, in hwloc's order of its processing units;
/// `None` when hwloc cannot load the topology or finds none of `allowed`.
#[cfg(feature = "hwloc")]
pub fn hwloc_read(allowed: &[usize]) -> Option<CpuTopology> {
    use hwloc2::{ObjectType, Topology};
    let topo = Topology::new()?;
    let mut cpus = Vec::new();
    for pu in topo.objects_with_type(&ObjectType::PU).ok()? {
        let cpu = pu.os_index() as usize;
        if !allowed.contains(&cpu) {
            continue;
        }
        // The NUMA node through the PU's node set, not objects_with_type(NUMANode), which
        // maps hwloc 2's NUMA depth wrongly (PLATFORM.md).
        let numa = pu
            .nodeset()
            .and_then(|ns| ns.into_iter().next())
            .map_or(0, |n| n as usize);
        let mut package = 0;
        let mut up = pu.parent();
        while let Some(o) = up {
            if matches!(o.object_type(), ObjectType::Package) {
                package = o.os_index() as usize;
                break;
            }
            up = o.parent();
        }
        cpus.push(CpuPlace { cpu, package, numa });
    }
    (!cpus.is_empty()).then_some(CpuTopology { cpus })
}

/// `want` CPUs out of `free` (a subset of `topo`'s), by the module's preferences; `near`: the
/// NUMA node to prefer (the bundle's GPUs'). `None` when fewer than `want` are free.
pub(crate) fn choose_cpus(
    topo: &CpuTopology,
    free: &BTreeSet<usize>,
    want: usize,
    near: Option<usize>,
) -> Option<Vec<usize>> {
    if want == 0 {
        return Some(Vec::new());
    }
    // Free CPUs per (package, NUMA node), in CPU order.
    let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for p in &topo.cpus {
        if free.contains(&p.cpu) {
            groups.entry((p.package, p.numa)).or_default().push(p.cpu);
        }
    }
    for cpus in groups.values_mut() {
        cpus.sort_unstable();
    }
    let best_fit = |pick: &dyn Fn(&(usize, usize)) -> bool| {
        groups
            .iter()
            .filter(|(k, v)| pick(k) && v.len() >= want)
            .min_by_key(|(k, v)| (v.len(), **k))
            .map(|(_, v)| v[..want].to_vec())
    };
    if let Some(n) = near
        && let Some(out) = best_fit(&|k| k.1 == n)
    {
        return Some(out);
    }
    if let Some(out) = best_fit(&|_| true) {
        return Some(out);
    }
    // Spanning NUMA nodes: one package if one fits (best fit), else the whole node; the
    // fullest NUMA nodes first (fewest of them).
    let mut per_package: BTreeMap<usize, usize> = BTreeMap::new();
    for ((p, _), v) in &groups {
        *per_package.entry(*p).or_default() += v.len();
    }
    let package = per_package
        .iter()
        .filter(|(_, n)| **n >= want)
        .min_by_key(|(p, n)| (**n, **p))
        .map(|(p, _)| *p);
    let mut spans: Vec<&Vec<usize>> = groups
        .iter()
        .filter(|((p, _), _)| package.is_none_or(|want_p| *p == want_p))
        .map(|(_, v)| v)
        .collect();
    spans.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out: Vec<usize> = spans.into_iter().flatten().copied().take(want).collect();
    if out.len() < want {
        return None;
    }
    out.sort_unstable();
    Some(out)
}

/// How many whole CPUs (or GPUs) a bundle asking for `amount` gets of its own (0: a fraction,
/// none).
pub(crate) fn whole_units(amount: f64) -> usize {
    if amount >= 1.0 && amount.fract() == 0.0 && amount <= CpuList::MAX as f64 {
        amount as usize
    } else {
        0
    }
}

/// The CPU sets one node gives its bundles: the node's CPUs, their topology (read once, when
/// the first bundle asks) and those held by bundles.
#[derive(Debug)]
pub(crate) struct NodeSets {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The node's CPUs; `None` until first needed (then read from the process).
    node: Option<Vec<usize>>,
    topo: Option<CpuTopology>,
    held: BTreeSet<usize>,
    /// The node's GPUs' places; `None` until first needed (then read from the process).
    gpus: Option<Vec<GpuPlace>>,
    held_gpus: BTreeSet<usize>,
}

/// The CPUs this process may run on (its affinity mask, as `/proc/self/status` lists it);
/// the calling thread's when that cannot be read.
fn process_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|l| CpuList::parse(l.trim()).ok())
        })
        .map(|l| l.0)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| crate::affinity::current_thread_cpus().unwrap_or_default())
}

impl Default for NodeSets {
    fn default() -> Self {
        NodeSets {
            inner: Mutex::new(Inner {
                node: None,
                topo: None,
                held: BTreeSet::new(),
                gpus: None,
                held_gpus: BTreeSet::new(),
            }),
        }
    }
}

impl NodeSets {
    /// Sets over a given topology (for tests).
    #[cfg(test)]
    pub(crate) fn with_topology(topo: CpuTopology) -> Self {
        let node = topo.cpus.iter().map(|p| p.cpu).collect();
        NodeSets {
            inner: Mutex::new(Inner {
                node: Some(node),
                topo: Some(topo),
                held: BTreeSet::new(),
                gpus: Some(Vec::new()),
                held_gpus: BTreeSet::new(),
            }),
        }
    }

    /// Takes a set for each bundle asking for `wants[i]` whole CPUs (0: none wanted), near the
    /// NUMA node `near[i]` when given; a bundle that cannot have one gets an empty set, and
    /// the returned note says why (`None`: every bundle that wanted a set has one). The
    /// node's CPUs are `node` the first time (empty: the process's affinity mask).
    pub(crate) fn take(
        &self,
        node: &[usize],
        wants: &[usize],
        near: &[Option<usize>],
    ) -> (Vec<Vec<usize>>, Option<String>) {
        if wants.iter().all(|&w| w == 0) {
            return (vec![Vec::new(); wants.len()], None);
        }
        let mut inner = lock(&self.inner);
        let node = inner
            .node
            .get_or_insert_with(|| {
                if node.is_empty() {
                    process_cpus()
                } else {
                    node.to_vec()
                }
            })
            .clone();
        let topo = inner
            .topo
            .get_or_insert_with(|| CpuTopology::read(&node))
            .clone();
        let mut out = Vec::with_capacity(wants.len());
        let mut short = Vec::new();
        for (i, &want) in wants.iter().enumerate() {
            if want == 0 {
                out.push(Vec::new());
                continue;
            }
            let free: BTreeSet<usize> = node
                .iter()
                .copied()
                .filter(|c| !inner.held.contains(c))
                .collect();
            match choose_cpus(&topo, &free, want, near.get(i).copied().flatten()) {
                Some(set) => {
                    inner.held.extend(set.iter().copied());
                    out.push(set);
                }
                None => {
                    short.push(format!("bundle {i} wants {want}, {} free", free.len()));
                    out.push(Vec::new());
                }
            }
        }
        let note = (!short.is_empty()).then(|| {
            format!(
                "unpinned: the node has {} CPUs in its affinity mask, {} held by other \
                 bundles ({})",
                node.len(),
                inner.held.len() - out.iter().map(Vec::len).sum::<usize>(),
                short.join("; ")
            )
        });
        (out, note)
    }

    /// Gives sets back.
    pub(crate) fn give_back(&self, sets: &[Vec<usize>]) {
        let mut inner = lock(&self.inner);
        for set in sets {
            for c in set {
                inner.held.remove(c);
            }
        }
    }

    /// The places of the node's GPUs (read from the process the first time).
    pub(crate) fn gpu_places(&self) -> Vec<GpuPlace> {
        lock(&self.inner)
            .gpus
            .get_or_insert_with(read_gpu_places)
            .clone()
    }

    /// Takes GPUs for bundles wanting `wants[i]` whole GPUs out of the node's `devices` not
    /// held by other bundles ([`split_gpus`]); returns each bundle's devices and the NUMA node
    /// they sit on (for its CPU set).
    pub(crate) fn take_gpus(
        &self,
        devices: usize,
        wants: &[usize],
    ) -> (Vec<Vec<usize>>, Vec<Option<usize>>) {
        if wants.iter().all(|&w| w == 0) {
            return (vec![Vec::new(); wants.len()], vec![None; wants.len()]);
        }
        let places = self.gpu_places();
        let mut inner = lock(&self.inner);
        let free: BTreeSet<usize> = (0..devices)
            .filter(|d| !inner.held_gpus.contains(d))
            .collect();
        let chosen = split_gpus(&places, &free, wants);
        for set in &chosen {
            inner.held_gpus.extend(set.iter().copied());
        }
        let near = chosen.iter().map(|g| numa_of_gpus(&places, g)).collect();
        (chosen, near)
    }

    /// Gives GPUs back.
    pub(crate) fn give_back_gpus(&self, sets: &[Vec<usize>]) {
        let mut inner = lock(&self.inner);
        for set in sets {
            for d in set {
                inner.held_gpus.remove(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(cpus: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        cpus.into_iter().collect()
    }

    #[test]
    fn a_bundle_stays_on_one_numa_node_best_fit() {
        // 2 packages × 2 NUMA nodes × 4 CPUs: CPUs 0-3 numa 0, 4-7 numa 1 (package 0), ...
        let t = CpuTopology::synthetic(2, 2, 4);
        let all = free(0..16);
        assert_eq!(choose_cpus(&t, &all, 2, None), Some(vec![0, 1]));
        // NUMA node 0 has 2 left, node 1 has 4: a bundle of 2 takes node 0's (best fit).
        let some = free((2..16).collect::<Vec<_>>());
        assert_eq!(choose_cpus(&t, &some, 2, None), Some(vec![2, 3]));
        // A bundle of 3 does not fit node 0's 2: node 1.
        assert_eq!(choose_cpus(&t, &some, 3, None), Some(vec![4, 5, 6]));
        // Near NUMA node 2 (its GPUs'): there, though node 0 fits better.
        assert_eq!(choose_cpus(&t, &some, 2, Some(2)), Some(vec![8, 9]));
        // Near a NUMA node that is full: the best fit elsewhere.
        let no2 = free((0..16).filter(|c| !(8..12).contains(c)));
        assert_eq!(choose_cpus(&t, &no2, 2, Some(2)), Some(vec![0, 1]));
    }

    #[test]
    fn a_large_bundle_spans_one_package_before_two() {
        let t = CpuTopology::synthetic(2, 2, 4);
        // 6 CPUs: no NUMA node has them; package 0 has 8.
        assert_eq!(
            choose_cpus(&t, &free(0..16), 6, None),
            Some(vec![0, 1, 2, 3, 4, 5])
        );
        // Package 0 has 5 free, package 1 has 8: package 1.
        let f = free((3..16).collect::<Vec<_>>());
        assert_eq!(
            choose_cpus(&t, &f, 6, None),
            Some(vec![8, 9, 10, 11, 12, 13])
        );
        // 12: both packages, fullest NUMA nodes first.
        let twelve = choose_cpus(&t, &f, 12, None).unwrap();
        assert_eq!(twelve.len(), 12);
        assert!(twelve.iter().all(|c| f.contains(c)));
        assert_eq!(choose_cpus(&t, &f, 14, None), None, "13 free");
        assert_eq!(choose_cpus(&t, &f, 0, None), Some(vec![]));
    }

    #[test]
    fn bundles_get_disjoint_sets_and_a_note_when_short() {
        let sets = NodeSets::with_topology(CpuTopology::synthetic(1, 2, 2));
        let (got, note) = sets.take(&[], &[1, 0, 2, 1], &[None; 4]);
        assert_eq!(note, None);
        assert_eq!(got, vec![vec![0], vec![], vec![2, 3], vec![1]]);
        // Nothing left: the next group is not pinned, and says why.
        let (more, note) = sets.take(&[], &[1], &[None]);
        assert_eq!(more, vec![Vec::<usize>::new()]);
        let note = note.unwrap();
        assert!(
            note.contains("4 CPUs in its affinity mask, 4 held") && note.contains("bundle 0"),
            "{note}"
        );
        sets.give_back(&got[2..3]);
        let (again, note) = sets.take(&[], &[2], &[None]);
        assert_eq!((again, note), (vec![vec![2, 3]], None));
        // Fractions and no CPU want no set.
        assert_eq!(whole_units(0.5), 0);
        assert_eq!(whole_units(0.0), 0);
        assert_eq!(whole_units(2.0), 2);
    }

    /// `numa` NUMA nodes × `switches` PCIe switches each × `per` GPUs each, in order.
    fn gpus(numa: usize, switches: usize, per: usize) -> Vec<GpuPlace> {
        let mut out = Vec::new();
        for n in 0..numa {
            for s in 0..switches {
                for _ in 0..per {
                    out.push(GpuPlace {
                        device: out.len(),
                        numa: Some(n),
                        switch: Some(format!("0000:{n:02x}:{s:02x}.0")),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn a_bundles_gpus_share_a_switch_else_a_numa_node() {
        // 2 NUMA nodes × 2 switches × 2 GPUs: devices 0-3 on NUMA 0 (switches of 0-1, 2-3).
        let t = gpus(2, 2, 2);
        let all = free(0..8);
        assert_eq!(choose_gpus(&t, &all, 2), Some(vec![0, 1]), "one switch");
        // Device 0 taken: a pair comes from the next whole switch, not 1 + 2.
        assert_eq!(
            choose_gpus(&t, &free(1..8), 2),
            Some(vec![2, 3]),
            "best fit"
        );
        assert_eq!(
            choose_gpus(&t, &free(1..8), 1),
            Some(vec![1]),
            "the lone one"
        );
        // Four: no switch has them, NUMA node 1 does.
        assert_eq!(choose_gpus(&t, &free(1..8), 4), Some(vec![4, 5, 6, 7]));
        // Six of seven: across NUMA nodes, the fuller first.
        let six = choose_gpus(&t, &free(1..8), 6).unwrap();
        assert_eq!(six.len(), 6);
        assert!(six.iter().filter(|&&d| d >= 4).count() == 4, "{six:?}");
        assert_eq!(choose_gpus(&t, &free(1..8), 8), None);
        assert_eq!(numa_of_gpus(&t, &[4, 5]), Some(1));
        assert_eq!(numa_of_gpus(&t, &[]), None);
    }

    #[test]
    fn a_group_splits_its_gpus_by_topology() {
        // 2 NUMA nodes × 4 GPUs (one switch each): bundles of 4, 2, 2 — the 4 gets a NUMA
        // node whole though it comes last, the pairs share the other.
        let t = gpus(2, 1, 4);
        let split = split_gpus(&t, &free(0..8), &[2, 2, 4]);
        assert_eq!(split, vec![vec![4, 5], vec![6, 7], vec![0, 1, 2, 3]]);
        let near: Vec<Option<usize>> = split.iter().map(|g| numa_of_gpus(&t, g)).collect();
        assert_eq!(near, [Some(1), Some(1), Some(0)]);
        // 4 × 1 GPU over 2 NUMA nodes × 2 switches × 2: pairs fill switches in order.
        let t = gpus(2, 2, 2);
        assert_eq!(
            split_gpus(&t, &free(0..8), &[1, 1, 1, 1]),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        // Too few left: the bundle gets none; a fraction (0) none.
        assert_eq!(
            split_gpus(&t, &free(0..3), &[2, 2, 0]),
            vec![vec![0, 1], vec![], vec![]]
        );
        // Devices the topology does not locate (a node counting GPUs it cannot see).
        assert_eq!(
            split_gpus(&[], &free(0..2), &[1, 1]),
            vec![vec![0], vec![1]]
        );
        // A node without GPUs: an empty topology, nothing chosen.
        assert!(gpu_places(&[], &[]).is_empty());
        assert!(parse_gpu_places("").is_empty());
        let parsed = parse_gpu_places("0:a,1:b,x");
        assert_eq!(parsed[1].numa, Some(1));
        assert_eq!(parsed[1].switch.as_deref(), Some("b"));
        assert_eq!((parsed[2].numa, parsed[2].switch.clone()), (None, None));
        assert!(split_gpus(&[], &free(0..0), &[1]).iter().all(Vec::is_empty));
        // CPU sets follow the GPUs' NUMA node.
        let sets = NodeSets::with_topology(CpuTopology::synthetic(2, 1, 4));
        let (cpus, _) = sets.take(&[], &[2, 2], &near[..2]);
        assert_eq!(cpus, vec![vec![4, 5], vec![6, 7]]);
    }

    #[test]
    fn gpus_are_located_with_their_switch() {
        let sys = tempfile_dir();
        // Two GPUs behind root port 00:01.0 (a switch), one straight under the root complex.
        let devices = [
            (
                "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0",
                "0000:02:00.0",
                "0",
            ),
            (
                "pci0000:00/0000:00:01.0/0000:01:00.0/0000:03:00.0",
                "0000:03:00.0",
                "0",
            ),
            ("pci0000:80/0000:81:00.0", "0000:81:00.0", "1"),
        ];
        std::fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        for (path, bus, numa) in devices {
            let dir = sys.join("devices").join(path);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vendor"), "0x10de\n").unwrap();
            std::fs::write(dir.join("class"), "0x030200\n").unwrap();
            std::fs::write(dir.join("numa_node"), format!("{numa}\n")).unwrap();
            std::os::unix::fs::symlink(&dir, sys.join("bus/pci/devices").join(bus)).unwrap();
        }
        let pci = pci_displays(&sys);
        let roots: Vec<Option<&str>> = pci.iter().map(|d| d.root_port.as_deref()).collect();
        assert_eq!(roots, [Some("0000:00:01.0"), Some("0000:00:01.0"), None]);
        let places = gpu_places(&locate_gpus(|_| None, &pci), &pci);
        assert_eq!(places.len(), 3);
        assert_eq!(places[2].numa, Some(1));
        assert_eq!(choose_gpus(&places, &free(0..3), 2), Some(vec![0, 1]));
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn sysfs_gives_numa_nodes_and_packages() {
        let sys = tempfile_dir();
        let root = sys.join("devices/system");
        for (node, list) in [(0, "0-1"), (1, "2-3")] {
            let d = root.join(format!("node/node{node}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{list}\n")).unwrap();
        }
        for cpu in 0..4 {
            let d = root.join(format!("cpu/cpu{cpu}/topology"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("physical_package_id"), format!("{}\n", cpu / 2)).unwrap();
        }
        let t = CpuTopology::from_sysfs(&sys, &[1, 2, 3]);
        assert_eq!(
            t.cpus,
            vec![
                CpuPlace {
                    cpu: 1,
                    package: 0,
                    numa: 0
                },
                CpuPlace {
                    cpu: 2,
                    package: 1,
                    numa: 1
                },
                CpuPlace {
                    cpu: 3,
                    package: 1,
                    numa: 1
                },
            ]
        );
        // Nothing there: every CPU on package 0, NUMA node 0.
        let bare = CpuTopology::from_sysfs(&sys.join("missing"), &[5]);
        assert_eq!(
            bare.cpus,
            vec![CpuPlace {
                cpu: 5,
                package: 0,
                numa: 0
            }]
        );
        let _ = std::fs::remove_dir_all(&sys);
        // This machine reads cleanly.
        let here = crate::affinity::current_thread_cpus().unwrap();
        assert_eq!(CpuTopology::read(&here).cpus.len(), here.len());
    }

    /// hwloc's reading of a synthetic machine (`HWLOC_SYNTHETIC`, which hwloc loads instead of
    /// the real one): 2 packages × 2 NUMA nodes × 2 cores, and a bundle of 2 placed on one
    /// NUMA node of it. The test runs itself again with the variable set (the crate sets no
    /// environment variable of its own process).
    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_reads_packages_and_numa_nodes() {
        if std::env::var_os("HWLOC_SYNTHETIC").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "topology::tests::hwloc_reads_packages_and_numa_nodes",
                    "--exact",
                ])
                .env("HWLOC_SYNTHETIC", "package:2 numa:2 core:2 pu:1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        let t = hwloc_read(&(0..8).collect::<Vec<_>>()).expect("hwloc loads the synthetic machine");
        let places: Vec<(usize, usize, usize)> =
            t.cpus.iter().map(|p| (p.cpu, p.package, p.numa)).collect();
        assert_eq!(
            places,
            (0..8).map(|c| (c, c / 4, c / 2)).collect::<Vec<_>>(),
            "{t:?}"
        );
        assert_eq!(
            choose_cpus(&t, &free([0, 2, 3, 4, 5]), 2, None),
            Some(vec![2, 3]),
            "one NUMA node, best fit"
        );
    }

    /// A fresh directory under the system's temp dir (no tempfile crate in `manta-core`).
    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "manta-topology-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
