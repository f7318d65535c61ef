//! What a node has, as its allocation sees it: the CPUs this process may run on (the cgroup
//! cpuset and any launcher binding, from the kernel's affinity mask), the NUMA nodes those CPUs
//! sit on, the GPUs the launcher gave it with their PCI bus ids and NUMA nodes, and its network
//! interfaces (InfiniBand devices marked).
//!
//! Cores and NUMA nodes come from hwloc when built with the `hwloc` feature, else from the
//! kernel's `/sys` and `/proc` files, and the summary says which; both readings are
//! `manta_core::topology`'s (`hwloc_read`, `sysfs_numa_of`), the ones placement groups use.
//!
//! # GPUs
//! GPUs are found on the PCI bus through sysfs and matched to the launcher's
//! `CUDA_VISIBLE_DEVICES` / Slurm variables by `manta_core::topology` (re-exported here: its
//! module docs give the rules), which placement groups use too.

use std::collections::BTreeSet;
use std::path::Path;

use manta_core::CpuList;

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

pub use manta_core::topology::{Gpu, PciDisplay, locate_gpus, pci_displays};

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

/// The CPUs of this process's cgroup cpuset: what the allocation (Slurm's cgroup, a container)
/// gives all of the job's processes on this node, before any per-task binding. `sys` is `/sys`
/// and `cgroups` the text of `/proc/self/cgroup` (arguments for tests). cgroup v2 reads
/// `cpuset.cpus.effective`, v1 the cpuset hierarchy's `cpuset.effective_cpus` (else
/// `cpuset.cpus`), from the process's cgroup up to the root, the first one present; `None` when
/// none is readable.
pub fn cgroup_cpus(sys: &Path, cgroups: &str) -> Option<Vec<usize>> {
    type Tries<'a> = Vec<(std::path::PathBuf, &'a [&'a str])>;
    let (mut v1, mut v2): (Tries, Tries) = (Vec::new(), Vec::new());
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            v2.push((sys.join("fs/cgroup").join(path), &["cpuset.cpus.effective"]));
        } else if controllers.split(',').any(|c| c == "cpuset") {
            v1.push((
                sys.join("fs/cgroup/cpuset").join(path),
                &["cpuset.effective_cpus", "cpuset.cpus"],
            ));
        }
    }
    // A v1 cpuset hierarchy, when mounted, is the one in force: its entries go first.
    for (dir, files) in v1.into_iter().chain(v2) {
        for d in dir
            .ancestors()
            .take_while(|d| d.starts_with(sys.join("fs/cgroup")))
        {
            for file in files {
                if let Ok(text) = std::fs::read_to_string(d.join(file)) {
                    let cpus = parse_cpu_list(&text);
                    if !cpus.is_empty() {
                        return Some(cpus);
                    }
                }
            }
        }
    }
    None
}

/// Whether a launcher bound this process to part of its allocation (Slurm's `--cpu-bind`,
/// Open MPI's `--bind-to`): its CPUs are a strict subset of its cgroup's cpuset. Its ranks'
/// CPUs are then already disjoint, and Manta does not split them again.
pub fn bound_by_launcher(allowed: &[usize], cgroup: Option<&[usize]>) -> bool {
    cgroup.is_some_and(|all| allowed.len() < all.len() && allowed.iter().all(|c| all.contains(c)))
}

/// The CPUs of local rank `local_rank` of `local_size` ranks sharing a node whose allowed CPUs
/// are `numa` (NUMA node, CPUs), preferring one NUMA node per rank (sans I/O):
/// - with at least as many NUMA nodes as ranks, each rank gets whole NUMA nodes (rank `r` the
///   nodes `r·N/L .. (r+1)·N/L`);
/// - with more ranks than NUMA nodes, rank `r` goes to node `r·N/L` and shares it with the
///   other ranks there, each taking a contiguous, disjoint slice of its CPUs;
/// - with more ranks on a node than it has CPUs, ranks share: the `j`-th rank there gets CPU
///   `j mod n` (a 2-CPU node with 3 ranks: CPUs 0, 1, 0).
///
/// Every rank gets at least one CPU when the node has any.
pub fn rank_cpus(numa: &[(usize, Vec<usize>)], local_rank: usize, local_size: usize) -> Vec<usize> {
    let nodes: Vec<&Vec<usize>> = numa
        .iter()
        .map(|(_, c)| c)
        .filter(|c| !c.is_empty())
        .collect();
    let (n, l) = (nodes.len(), local_size.max(1));
    let r = local_rank.min(l - 1);
    if n == 0 {
        return Vec::new();
    }
    if n >= l {
        let mut out: Vec<usize> = nodes[r * n / l..(r + 1) * n / l]
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        out.sort_unstable();
        return out;
    }
    let node = r * n / l;
    let here: Vec<usize> = (0..l).filter(|&x| x * n / l == node).collect();
    let (j, k) = (here.iter().position(|&x| x == r).unwrap_or(0), here.len());
    let cpus = nodes[node];
    if cpus.len() < k {
        return vec![cpus[j % cpus.len()]];
    }
    cpus[j * cpus.len() / k..(j + 1) * cpus.len() / k].to_vec()
}

/// The NUMA nodes holding any of `allowed`, from `/sys` (`manta_core::topology::sysfs_numa_of`);
/// empty when the kernel lists none.
fn sysfs_numa(allowed: &[usize]) -> NumaNodes {
    let places = manta_core::topology::sysfs_numa_of(Path::new("/sys"))
        .into_iter()
        .filter(|(cpu, _)| allowed.contains(cpu));
    group_by_numa(places.map(|(cpu, numa)| (numa, cpu)))
}

/// `(numa, cpu)` pairs as NUMA nodes in order, each with its CPUs in the order given.
fn group_by_numa(pairs: impl Iterator<Item = (usize, usize)>) -> NumaNodes {
    let mut numa: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (node, cpu) in pairs {
        numa.entry(node).or_default().push(cpu);
    }
    numa.into_iter().collect()
}

/// NUMA nodes with their CPUs.
type NumaNodes = Vec<(usize, Vec<usize>)>;

/// The allowed CPUs in hwloc's order and their NUMA nodes (`manta_core::topology::hwloc_read`).
#[cfg(feature = "hwloc")]
fn hwloc_topology(allowed: &[usize]) -> Option<(Vec<usize>, NumaNodes)> {
    let topo = manta_core::topology::hwloc_read(allowed)?;
    let cores = topo.cpus.iter().map(|p| p.cpu).collect();
    Some((
        cores,
        group_by_numa(topo.cpus.iter().map(|p| (p.numa, p.cpu))),
    ))
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

impl Topology {
    /// The allowed CPUs by NUMA node (one group of all of them when no NUMA node was found).
    pub fn cpus_by_numa(&self) -> NumaNodes {
        if self.numa.is_empty() {
            vec![(0, self.cpus.clone())]
        } else {
            self.numa.clone()
        }
    }

    /// Whether a launcher bound this process to part of its cgroup's cpuset
    /// ([`bound_by_launcher`]).
    pub fn bound_by_launcher(&self) -> bool {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        bound_by_launcher(
            &self.cpus,
            cgroup_cpus(Path::new("/sys"), &cgroups).as_deref(),
        )
    }
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

/// The user's list from `key` (`MANTA_CPU_AFFINITY`, …) when it is set — empty meaning none —
/// else `computed`: the launcher does not override a choice the user made. `var` reads the
/// environment (sans I/O, for tests).
pub fn user_list_or(
    var: impl Fn(&str) -> Option<String>,
    key: &str,
    computed: Vec<usize>,
) -> Result<CpuList, String> {
    match var(key) {
        Some(raw) => CpuList::parse(&raw).map_err(|e| format!("{key}: {e}")),
        None => Ok(CpuList(computed)),
    }
}

impl Topology {
    /// The NUMA nodes holding any of `cpus` (all allowed CPUs when `cpus` is empty), for the
    /// store's arena; empty when no NUMA node was found.
    pub fn numa_of(&self, cpus: &[usize]) -> Vec<usize> {
        self.numa
            .iter()
            .filter(|(_, mine)| cpus.is_empty() || mine.iter().any(|c| cpus.contains(c)))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The line `manta status` shows for a node: [`Topology::summary`], the CPUs its workers'
    /// slots are pinned to and the NUMA nodes their object store spans.
    pub fn node_line(&self, workers: &CpuList, store_numa: &CpuList) -> String {
        let pinned = if workers.is_empty() {
            "workers unpinned".to_owned()
        } else {
            format!("workers pinned to [{workers}]")
        };
        let store = if store_numa.is_empty() {
            "store on any numa".to_owned()
        } else {
            format!("store on numa [{store_numa}]")
        };
        format!("{}; {pinned}; {store}", self.summary())
    }

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
    fn ranks_get_disjoint_cpus_one_numa_node_each_where_they_can() {
        let two = vec![(0, (0..8).collect::<Vec<_>>()), (1, (8..16).collect())];
        let share = |numa: &NumaNodes, l: usize| -> Vec<Vec<usize>> {
            (0..l).map(|r| rank_cpus(numa, r, l)).collect()
        };
        // One rank: everything. Two ranks on two NUMA nodes: one node each.
        assert_eq!(share(&two, 1), [(0..16).collect::<Vec<_>>()]);
        assert_eq!(
            share(&two, 2),
            [(0..8).collect::<Vec<_>>(), (8..16).collect()]
        );
        // Four ranks: two per node, halves of it.
        assert_eq!(
            share(&two, 4),
            [
                vec![0, 1, 2, 3],
                vec![4, 5, 6, 7],
                vec![8, 9, 10, 11],
                vec![12, 13, 14, 15]
            ]
        );
        // Three ranks: ranks 0 and 1 split node 0, rank 2 has node 1; still disjoint.
        let three = share(&two, 3);
        assert_eq!(three[0], vec![0, 1, 2, 3]);
        assert_eq!(three[1], vec![4, 5, 6, 7]);
        assert_eq!(three[2], (8..16).collect::<Vec<_>>());
        // Four NUMA nodes, two ranks: two whole nodes each.
        let four: NumaNodes = (0..4).map(|n| (n, vec![2 * n, 2 * n + 1])).collect();
        assert_eq!(share(&four, 2), [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        // Fewer CPUs than ranks (this 2-CPU machine, 3 ranks): ranks share, one CPU each.
        let small = vec![(0, vec![0, 1])];
        assert_eq!(share(&small, 3), [vec![0], vec![1], vec![0]]);
        assert!(rank_cpus(&[], 0, 2).is_empty());
    }

    #[test]
    fn the_cgroup_cpuset_tells_a_bound_rank() {
        let sys = tempfile::tempdir().unwrap();
        let v1 = sys.path().join("fs/cgroup/cpuset/slurm/job_5");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpuset.effective_cpus"), "0-7\n").unwrap();
        let v2 = sys.path().join("fs/cgroup/user.slice");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(sys.path().join("fs/cgroup/cpuset.cpus.effective"), "0-15\n").unwrap();
        // v1 first (hybrid hosts list it before the unified line); v2 found at an ancestor.
        let hybrid = "3:cpuset:/slurm/job_5\n0::/user.slice\n";
        assert_eq!(
            cgroup_cpus(sys.path(), hybrid),
            Some((0..8).collect::<Vec<_>>())
        );
        assert_eq!(
            cgroup_cpus(sys.path(), "0::/user.slice\n"),
            Some((0..16).collect::<Vec<_>>())
        );
        assert_eq!(cgroup_cpus(sys.path(), "1:cpu:/\n"), None);
        let job: Vec<usize> = (0..8).collect();
        assert!(bound_by_launcher(&[2, 3], Some(&job)));
        assert!(!bound_by_launcher(&job, Some(&job)));
        assert!(!bound_by_launcher(&[2, 3], None));
    }

    #[test]
    fn the_users_list_wins_over_the_launchers() {
        let computed = vec![0, 1, 2];
        assert_eq!(
            user_list_or(env(&[]), "MANTA_CPU_AFFINITY", computed.clone()).unwrap(),
            CpuList(computed.clone())
        );
        let off = user_list_or(
            env(&[("MANTA_CPU_AFFINITY", "")]),
            "MANTA_CPU_AFFINITY",
            computed.clone(),
        );
        assert!(off.unwrap().is_empty());
        let bad = user_list_or(
            env(&[("MANTA_CPU_AFFINITY", "x-")]),
            "MANTA_CPU_AFFINITY",
            computed,
        );
        assert!(bad.unwrap_err().starts_with("MANTA_CPU_AFFINITY: "));
        let t = Topology {
            cpus: vec![0, 1, 2, 3],
            numa: vec![(0, vec![0, 1]), (1, vec![2, 3])],
            ..Topology::default()
        };
        assert_eq!(t.numa_of(&[3]), [1]);
        assert_eq!(t.numa_of(&[]), [0, 1]);
        assert!(
            t.node_line(&CpuList(vec![3]), &CpuList(vec![1]))
                .ends_with("; workers pinned to [3]; store on numa [1]")
        );
        assert!(
            t.node_line(&CpuList::default(), &CpuList::default())
                .ends_with("; workers unpinned; store on any numa")
        );
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
