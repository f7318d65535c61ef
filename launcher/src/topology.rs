//! What a node has, as its allocation sees it: the CPUs this process may run on (the cgroup
//! cpuset and any launcher binding, from the kernel's affinity mask), the NUMA nodes those CPUs
//! sit on, the GPUs the launcher gave it (`CUDA_VISIBLE_DEVICES`, else `SLURM_STEP_GPUS` /
//! `SLURM_JOB_GPUS`), and its network interfaces (InfiniBand devices marked).
//!
//! Cores and NUMA nodes come from hwloc when built with the `hwloc` feature (the hwloc2 crate;
//! its NUMA-object iterator is avoided, see PLATFORM.md), else from the kernel's `/sys` and
//! `/proc` files, and the summary says which.

use std::collections::BTreeSet;

/// A node's topology.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    /// CPUs this process may run on.
    pub cpus: Vec<usize>,
    /// NUMA nodes with the allowed CPUs on each.
    pub numa: NumaNodes,
    /// GPUs given to this process (the launcher's ids).
    pub gpus: Vec<String>,
    /// Network interfaces other than loopback; InfiniBand devices as `ib:<name>`.
    pub nics: Vec<String>,
    /// What found the cores and NUMA nodes: `hwloc` or `sysfs`.
    pub source: &'static str,
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

/// The GPUs the launcher gave this process, from `var` (sans I/O).
pub fn visible_gpus(var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    for key in ["CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"] {
        if let Some(v) = var(key) {
            let v = v.trim();
            if v.is_empty() || v == "NoDevFiles" || v == "-1" {
                return Vec::new();
            }
            return v.split(',').map(|s| s.trim().to_owned()).collect();
        }
    }
    Vec::new()
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
            gpus: visible_gpus(|k| std::env::var(k).ok()),
            nics: nics(),
            source: "hwloc",
        };
    }
    let numa = sysfs_numa(&allowed);
    Topology {
        cpus: allowed,
        numa,
        gpus: visible_gpus(|k| std::env::var(k).ok()),
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
        format!(
            "{} cpus [{}] {} numa [{}] {} gpus [{}] nics [{}] ({})",
            self.cpus.len(),
            compact(&self.cpus),
            self.numa.len(),
            numa.join(" "),
            self.gpus.len(),
            self.gpus.join(","),
            self.nics.join(","),
            self.source
        )
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

    #[test]
    fn gpus_come_from_the_launcher() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            visible_gpus(env(&[("CUDA_VISIBLE_DEVICES", "2,3")])),
            vec!["2", "3"]
        );
        assert_eq!(visible_gpus(env(&[("SLURM_STEP_GPUS", "0")])), vec!["0"]);
        assert!(visible_gpus(env(&[("CUDA_VISIBLE_DEVICES", "")])).is_empty());
        assert!(visible_gpus(env(&[])).is_empty());
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
