//! A node's CPU topology as placement groups see it, and the choice of each bundle's CPU set.
//!
//! A bundle that asks for whole CPUs gets that many logical CPUs of its own on its node: no two
//! bundles share one, and the work run in the bundle is pinned to them (`affinity.rs`). The
//! choice is sans I/O ([`choose_cpus`] over a [`CpuTopology`] and the CPUs free), preferring,
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
//! When too few CPUs are left for a bundle it is not pinned — never refused — and [`CpuSets`]
//! says why in a note that the log and `manta list placement-groups` show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::CpuList;
use crate::sync::{Mutex, lock};

/// Where one logical CPU sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CpuPlace {
    /// The OS's CPU number.
    pub(crate) cpu: usize,
    /// Its package (socket).
    pub(crate) package: usize,
    /// Its NUMA node.
    pub(crate) numa: usize,
}

/// The CPUs of a node with their packages and NUMA nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTopology {
    pub(crate) cpus: Vec<CpuPlace>,
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
        let mut numa_of: BTreeMap<usize, usize> = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(sys.join("devices/system/node")) {
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
        }
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

#[cfg(feature = "hwloc")]
fn hwloc_read(allowed: &[usize]) -> Option<CpuTopology> {
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

/// How many whole CPUs a bundle asking for `amount` CPUs gets a set of (0: a fraction, no set).
pub(crate) fn whole_cpus(amount: f64) -> usize {
    if amount >= 1.0 && amount.fract() == 0.0 && amount <= CpuList::MAX as f64 {
        amount as usize
    } else {
        0
    }
}

/// The CPU sets one node gives its bundles: the node's CPUs, their topology (read once, when
/// the first bundle asks) and those held by bundles.
#[derive(Debug)]
pub(crate) struct CpuSets {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The node's CPUs; `None` until first needed (then read from the process).
    node: Option<Vec<usize>>,
    topo: Option<CpuTopology>,
    held: BTreeSet<usize>,
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

impl Default for CpuSets {
    fn default() -> Self {
        CpuSets {
            inner: Mutex::new(Inner {
                node: None,
                topo: None,
                held: BTreeSet::new(),
            }),
        }
    }
}

impl CpuSets {
    /// Sets over a given topology (for tests).
    #[cfg(test)]
    pub(crate) fn with_topology(topo: CpuTopology) -> Self {
        let node = topo.cpus.iter().map(|p| p.cpu).collect();
        CpuSets {
            inner: Mutex::new(Inner {
                node: Some(node),
                topo: Some(topo),
                held: BTreeSet::new(),
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
        let sets = CpuSets::with_topology(CpuTopology::synthetic(1, 2, 2));
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
        assert_eq!(whole_cpus(0.5), 0);
        assert_eq!(whole_cpus(0.0), 0);
        assert_eq!(whole_cpus(2.0), 2);
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
