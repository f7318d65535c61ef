//! What a node has, as its allocation sees it: the CPUs this process may run on (the cgroup
//! cpuset and any launcher binding, from the kernel's affinity mask), the NUMA nodes those CPUs
//! sit on, the GPUs the launcher gave it with their PCI bus ids and NUMA nodes, and its network
//! interfaces (InfiniBand devices marked).
//!
//! Cores and NUMA nodes come from hwloc when built with the `hwloc` feature (the hwloc2 crate;
//! its NUMA-object iterator is avoided, see PLATFORM.md), else from the kernel's `/sys` and
//! `/proc` files, and the summary says which.
//!
//! # GPUs
//! GPUs are found on the PCI bus through sysfs in both builds (`/sys/bus/pci/devices/*`:
//! `vendor`, `class`, `numa_node`): display controllers of class VGA (`0x0300xx`) or 3D
//! (`0x0302xx`). hwloc knows them too, but hwloc 2 filters I/O objects out unless a type filter
//! is set, and the hwloc2 crate (2.2) does not expose `hwloc_topology_set_type_filter`.
//! Only NVIDIA's (vendor `0x10de`) count as GPUs: they are what CUDA sees, whereas a server's
//! other VGA controller is usually its BMC's console, not a compute device.
//!
//! Which of them this process may use is the launcher's word: `CUDA_VISIBLE_DEVICES`, else
//! `SLURM_STEP_GPUS` / `SLURM_JOB_GPUS`; with none of these set, every NVIDIA GPU (as CUDA does).
//! An index `i` is located as the `i`-th NVIDIA GPU in PCI bus order: that is CUDA's numbering
//! only with `CUDA_DEVICE_ORDER=PCI_BUS_ID` (nvidia-smi's order; CUDA's default puts the fastest
//! device first), and Slurm's indices are assumed to follow bus order too (as its NVML
//! autodetection does). When Slurm names the step's GPUs and `CUDA_VISIBLE_DEVICES` lists as
//! many, Slurm's indices locate them: inside a device cgroup Slurm renumbers
//! `CUDA_VISIBLE_DEVICES` from 0 while sysfs still shows every GPU of the host. A GPU named by
//! UUID (`GPU-…`, `MIG-…`), or by an index beyond what sysfs shows, stays count-only (its id,
//! no bus id or NUMA node), and so do all of them when sysfs shows no NVIDIA device.

use std::collections::BTreeSet;
use std::path::Path;

/// A node's topology.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    /// CPUs this process may run on.
    pub cpus: Vec<usize>,
    /// NUMA nodes with the allowed CPUs on each.
    pub numa: NumaNodes,
    /// GPUs given to this process, located on the PCI bus where possible (module docs).
    pub gpus: Vec<Gpu>,
    /// Network interfaces other than loopback; InfiniBand devices as `ib:<name>`.
    pub nics: Vec<String>,
    /// What found the cores and NUMA nodes: `hwloc` or `sysfs`.
    pub source: &'static str,
}

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
}

/// PCI vendor id of NVIDIA.
const NVIDIA: u16 = 0x10de;

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

/// Parses a kernel CPU list (`0-3,8,10-11`).
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b.min(a + 65_535));
                }
            }
            None => {
                if let Ok(c) = part.trim().parse() {
                    out.insert(c);
                }
            }
        }
    }
    out.into_iter().collect()
}

fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(parse_cpu_list))
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        })
}

fn sysfs_numa(allowed: &[usize]) -> NumaNodes {
    let mut nodes = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") else {
        return nodes;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let cpus = std::fs::read_to_string(e.path().join("cpulist"))
            .map(|s| parse_cpu_list(&s))
            .unwrap_or_default();
        let mine: Vec<usize> = cpus.into_iter().filter(|c| allowed.contains(c)).collect();
        if !mine.is_empty() {
            nodes.push((id, mine));
        }
    }
    nodes.sort();
    nodes
}

/// NUMA nodes with their CPUs.
type NumaNodes = Vec<(usize, Vec<usize>)>;

#[cfg(feature = "hwloc")]
fn hwloc_topology(allowed: &[usize]) -> Option<(Vec<usize>, NumaNodes)> {
    use hwloc2::{ObjectType, Topology as Hw};
    let topo = Hw::new()?;
    let cores: Vec<usize> = topo
        .objects_with_type(&ObjectType::PU)
        .ok()?
        .iter()
        .map(|pu| pu.os_index() as usize)
        .filter(|c| allowed.contains(c))
        .collect();
    // NUMA nodes through each PU's ancestors' node sets, not objects_with_type(NUMANode),
    // which maps hwloc 2's NUMA depth wrongly (PLATFORM.md).
    let mut numa: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for pu in topo.objects_with_type(&ObjectType::PU).ok()? {
        let cpu = pu.os_index() as usize;
        if !allowed.contains(&cpu) {
            continue;
        }
        let node = pu
            .nodeset()
            .and_then(|ns| ns.into_iter().next())
            .map_or(0, |n| n as usize);
        numa.entry(node).or_default().push(cpu);
    }
    Some((cores, numa.into_iter().collect()))
}

fn nics() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name != "lo" {
                out.push(name);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/infiniband") {
        for e in dir.flatten() {
            out.push(format!("ib:{}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

fn gpus() -> Vec<Gpu> {
    locate_gpus(|k| std::env::var(k).ok(), &pci_displays(Path::new("/sys")))
}

/// Finds this node's topology as this process's allocation sees it.
pub fn discover() -> Topology {
    let allowed = allowed_cpus();
    #[cfg(feature = "hwloc")]
    if let Some((cpus, numa)) = hwloc_topology(&allowed)
        && !cpus.is_empty()
    {
        return Topology {
            cpus,
            numa,
            gpus: gpus(),
            nics: nics(),
            source: "hwloc",
        };
    }
    let numa = sysfs_numa(&allowed);
    Topology {
        cpus: allowed,
        numa,
        gpus: gpus(),
        nics: nics(),
        source: "sysfs",
    }
}

impl Topology {
    /// One line for `manta status`.
    pub fn summary(&self) -> String {
        let numa: Vec<String> = self
            .numa
            .iter()
            .map(|(n, cpus)| format!("numa{n}:{}", cpus.len()))
            .collect();
        let gpus: Vec<String> = self.gpus.iter().map(Gpu::to_string).collect();
        format!(
            "{} cpus [{}] {} numa [{}] {} gpus [{}] nics [{}] ({})",
            self.cpus.len(),
            compact(&self.cpus),
            self.numa.len(),
            numa.join(" "),
            self.gpus.len(),
            gpus.join(" "),
            self.nics.join(","),
            self.source
        )
    }
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

/// `0-3,8` from `[0,1,2,3,8]`.
fn compact(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("x,2"), vec![2]);
        assert_eq!(compact(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn gpus_come_from_the_launcher() {
        let ids = |v: Vec<Gpu>| v.into_iter().map(|g| g.id).collect::<Vec<_>>();
        assert_eq!(
            ids(locate_gpus(env(&[("CUDA_VISIBLE_DEVICES", "2,3")]), &[])),
            vec!["2", "3"]
        );
        assert_eq!(
            ids(locate_gpus(env(&[("SLURM_STEP_GPUS", "0")]), &[])),
            vec!["0"]
        );
        assert!(locate_gpus(env(&[("CUDA_VISIBLE_DEVICES", "")]), &[]).is_empty());
        assert!(locate_gpus(env(&[]), &[]).is_empty());
    }

    /// A fake sysfs: two NVIDIA GPUs on NUMA nodes 1 and 0 (listed out of bus order), an
    /// ASPEED VGA controller, and a NIC.
    fn fake_sysfs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let devices = [
            ("0000:65:00.0", "0x10de", "0x030200", "1"),
            ("0000:17:00.0", "0x10de", "0x030000", "0"),
            ("0000:03:00.0", "0x1a03", "0x030000", "-1"),
            ("0000:31:00.0", "0x15b3", "0x020700", "0"),
        ];
        for (bus, vendor, class, numa) in devices {
            let dir = root.path().join("bus/pci/devices").join(bus);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dir.join("class"), format!("{class}\n")).unwrap();
            std::fs::write(dir.join("numa_node"), format!("{numa}\n")).unwrap();
        }
        root
    }

    #[test]
    fn gpus_are_found_in_sysfs_with_their_numa_nodes() {
        let sys = fake_sysfs();
        let pci = pci_displays(sys.path());
        let buses: Vec<&str> = pci.iter().map(|d| d.bus_id.as_str()).collect();
        assert_eq!(buses, ["0000:03:00.0", "0000:17:00.0", "0000:65:00.0"]);
        assert_eq!(pci[0].numa, None);
        // No launcher variable: every NVIDIA GPU, in bus order; the BMC's VGA is not one.
        let all = locate_gpus(env(&[]), &pci);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].to_string(), "0=0000:17:00.0@numa0");
        assert_eq!(all[1].to_string(), "1=0000:65:00.0@numa1");
        // Indices are PCI bus order; a UUID or an index beyond the bus stays count-only.
        let some = locate_gpus(env(&[("CUDA_VISIBLE_DEVICES", "1,GPU-abc,7")]), &pci);
        let shown: Vec<String> = some.iter().map(Gpu::to_string).collect();
        assert_eq!(shown, ["1=0000:65:00.0@numa1", "GPU-abc", "7"]);
        // Inside Slurm's device cgroup CUDA_VISIBLE_DEVICES is renumbered: Slurm's indices
        // locate the GPU.
        let slurm = locate_gpus(
            env(&[("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_STEP_GPUS", "1")]),
            &pci,
        );
        assert_eq!(slurm[0].to_string(), "0=0000:65:00.0@numa1");
        // Nothing in sysfs: the launcher's ids, counted only.
        let none = locate_gpus(env(&[("CUDA_VISIBLE_DEVICES", "0,1")]), &[]);
        assert_eq!(none.len(), 2);
        assert_eq!(none[0].bus_id, None);
        assert!(pci_displays(&sys.path().join("missing")).is_empty());
    }

    #[test]
    fn this_machine_has_cpus() {
        let t = discover();
        assert!(!t.cpus.is_empty());
        assert!(t.summary().contains("cpus"));
    }
}

#[cfg(all(test, feature = "hwloc"))]
mod hwloc_tests {
    #[test]
    fn hwloc_finds_the_allowed_cpus() {
        let allowed = super::allowed_cpus();
        let found = super::hwloc_topology(&allowed);
        let (cpus, numa) = found.expect("hwloc loads the topology");
        assert_eq!(cpus, allowed);
        assert!(!numa.is_empty());
        assert_eq!(super::discover().source, "hwloc");
    }
}
