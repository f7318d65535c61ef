//! SPMD launch: the same binary started by `srun -N n -n m` or `mpirun -np m` brings up a
//! whole Manta cluster: one node (one raylet) per machine, one worker process per rank.
//!
//! # Roles
//! - **rank 0** hosts the GCS and its node's raylet (in threads of its process) and, once
//!   every other rank has joined as a worker, returns from `init` as the job's driver. Its
//!   raylet registers the node's whole allocation (the sum of its ranks' shares), starts a
//!   worker process for rank 0's own share (rank 0 runs no work, as Ray's driver), and adopts
//!   the node's other ranks as further workers.
//! - **local rank 0 of every other node** hosts that node's raylet (in a thread), registering
//!   the node's whole allocation, and serves as one of its workers.
//! - **every other rank** finds its node's raylet in the GCS node table (the node whose
//!   raylet has this process's host identity — boot id and network namespace — or address;
//!   polled until it appears, for at most 60 s) and serves as its worker.
//!
//! Every worker holds its rank's share of the node (`Share`: the node's CPUs divided among
//! the ranks on it, its slots pinned to a disjoint slice of them, and its GPUs), so owners
//! choose a worker within the node by what it holds (`num_gpus = 1` goes to a worker with a
//! free GPU). `init` never returns on ranks other than 0: they exit 0 when the driver's job
//! ends, non-zero if the head is lost.
//!
//! # Address exchange (no fixed ports, no sleeps)
//! Everything a rank needs is derived from the launcher's environment, identically on every
//! rank: the job's identity (Slurm's job and step ids; Open MPI's PMIx namespace), from it the
//! head's ports (hashes into 20000–49999, so two jobs on one node use different ports; rank 0
//! takes the first free one of eight, the others probe them for the one that accepts the job's
//! token, so a port held by another job or service moves the head on) and the
//! cluster token (HMAC-SHA256 of the job's identity keyed with a per-user secret in
//! `~/.manta/secret`, made once, mode 0600 in a directory of mode 0700, refused if anyone else
//! could read or plant it; clusters share home directories), and the head's host (the first host of
//! `SLURM_STEP_NODELIST`; under `mpirun`, this host when all ranks are local). Ranks other than 0
//! connect to the head, retrying until it answers (up to 60 s), rather than sleeping.
//!
//! With the `mpi` feature, ranks with a PMIx server — `mpirun`, and `srun --mpi=pmix` (or a
//! Slurm whose `MpiDefault` is pmix) — exchange through MPI instead: rank 0 starts the head on
//! a port the OS picks and broadcasts its address and a fresh random token; MPI is finalised
//! right after (it only carried the address). That is the route for `mpirun` across nodes.
//! `MANTA_MPI_EXCHANGE=0` forces the environment route (an MPI library that cannot be
//! direct-launched by this Slurm would abort in `MPI_Init`; `srun --mpi=pmi2` sets no PMIx
//! variables and takes the environment route). [`exchange`] says which route a process took.
//!
//! This module is the only place in Manta that reads Slurm, MPI or PMI environment variables.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use manta_core::cluster::{self, NodeOptions, WorkerSpec};
use manta_core::{Config, CpuList, Error};

use crate::topology;

/// Which launcher started this process, and where the process is in the job.
#[derive(Clone, Debug, PartialEq)]
pub struct Rank {
    /// The launcher: `srun` or `mpirun`.
    pub launcher: &'static str,
    /// This process's rank, 0-based.
    pub rank: u32,
    /// Ranks in the job.
    pub size: u32,
    /// Rank among the ranks on this node.
    pub local_rank: u32,
    /// Ranks on this node.
    pub local_size: u32,
    /// The job's identity (equal on every rank, different for every job and step).
    pub job_key: String,
    /// The host rank 0 runs on (`None`: unknown, which only works when all ranks are local).
    pub head_host: Option<String>,
    /// CPUs the launcher gave this node's ranks together (`None`: unknown).
    pub cpus_on_node: Option<f64>,
    /// The launcher runs a PMIx server for the job (`srun --mpi=pmix`, Open MPI's `mpirun`):
    /// with the `mpi` feature the ranks exchange the head's address through MPI. Off when
    /// `MANTA_MPI_EXCHANGE=0`.
    pub pmix: bool,
}

/// Reads the launcher's environment through `var` (sans I/O, for tests).
pub fn detect(var: impl Fn(&str) -> Option<String>) -> Option<Rank> {
    let num = |k: &str| var(k).and_then(|v| v.trim().parse::<u32>().ok());
    if let (Some(rank), Some(size), Some(job)) = (
        num("SLURM_PROCID"),
        num("SLURM_STEP_NUM_TASKS").or_else(|| num("SLURM_NTASKS")),
        var("SLURM_JOB_ID"),
    ) {
        // A batch script's own shell has SLURM_PROCID too, but no step: only `srun` starts
        // steps' tasks.
        let step = var("SLURM_STEP_ID")?;
        let nodes = var("SLURM_STEP_NODELIST").or_else(|| var("SLURM_JOB_NODELIST"));
        let local_size = var("SLURM_STEP_TASKS_PER_NODE")
            .or_else(|| var("SLURM_TASKS_PER_NODE"))
            .and_then(|t| tasks_on_node(&t, num("SLURM_NODEID").unwrap_or(0) as usize))
            .unwrap_or(1);
        return Some(Rank {
            launcher: "srun",
            rank,
            size,
            local_rank: num("SLURM_LOCALID").unwrap_or(0),
            local_size,
            job_key: format!("slurm-{job}.{step}"),
            head_host: nodes.as_deref().and_then(first_host),
            cpus_on_node: var("SLURM_CPUS_ON_NODE").and_then(|v| v.trim().parse().ok()),
            pmix: pmix(&var),
        });
    }
    if let (Some(rank), Some(size)) = (num("OMPI_COMM_WORLD_RANK"), num("OMPI_COMM_WORLD_SIZE")) {
        let local_size = num("OMPI_COMM_WORLD_LOCAL_SIZE").unwrap_or(1);
        let job = var("PMIX_NAMESPACE")
            .or_else(|| var("OMPI_MCA_ess_base_jobid"))
            .or_else(|| var("OMPI_MCA_orte_ess_jobid"))?;
        return Some(Rank {
            launcher: "mpirun",
            rank,
            size,
            local_rank: num("OMPI_COMM_WORLD_LOCAL_RANK").unwrap_or(0),
            local_size,
            job_key: format!("ompi-{job}"),
            head_host: (local_size == size).then(|| "127.0.0.1".to_owned()),
            cpus_on_node: None,
            pmix: pmix(&var),
        });
    }
    None
}

/// Whether the job has a PMIx server to exchange through (and the user did not opt out).
fn pmix(var: &impl Fn(&str) -> Option<String>) -> bool {
    var("PMIX_RANK").is_some()
        && var(manta_core::config::vars::MPI_EXCHANGE).as_deref() != Some("0")
}

/// How this process's SPMD cluster found its head: `"mpi"` (broadcast through MPI) or
/// `"environment"` (ports and token derived from the launcher's environment); `None` before
/// a launch.
pub fn exchange() -> Option<&'static str> {
    EXCHANGE.get().copied()
}

static EXCHANGE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The number of tasks on node `node` from Slurm's `2(x3),1` notation.
fn tasks_on_node(spec: &str, node: usize) -> Option<u32> {
    let mut i = 0usize;
    for part in spec.split(',') {
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (
                c.trim().parse().ok()?,
                r.trim_end_matches(')').parse().ok()?,
            ),
            None => (part.trim().parse().ok()?, 1usize),
        };
        if node < i + repeat {
            return Some(count);
        }
        i += repeat;
    }
    None
}

/// The first host of a Slurm host list (`vm`, `n[01-04,07]`, `a,b`, `gpu[3,5]-ib`).
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let mut depth = 0;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &list[..end];
    let Some(open) = first.find('[') else {
        return (!first.is_empty()).then(|| first.to_owned());
    };
    let close = first.find(']')?;
    let range = first[open + 1..close].split(',').next()?;
    let low = range.split('-').next()?;
    Some(format!("{}{}{}", &first[..open], low, &first[close + 1..]))
}

fn fnv(data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The head's port for a job: a hash of the job's identity into 20000–49999.
pub fn port_for(job_key: &str) -> u16 {
    20_000 + (fnv(job_key) % 30_000) as u16
}

/// Ports the head of a job may take, in order: [`port_for`] the job, then hashes of the job
/// with a counter. Rank 0 binds the first one free; the other ranks probe them in turn until
/// one answers to the job's token (another job's head refuses it), so a port taken by another
/// job or service moves the head on instead of failing the launch.
pub fn ports_for(job_key: &str) -> Vec<u16> {
    let mut ports = vec![port_for(job_key)];
    for i in 1..PORT_CANDIDATES {
        let p = port_for(&format!("{job_key}#{i}"));
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// How many ports a job's head tries before the launch fails.
const PORT_CANDIDATES: usize = 8;

/// The per-user secret, made once (`~/.manta/secret`, mode 0600).
fn user_secret() -> Result<String, Error> {
    let home = std::env::var_os("HOME").ok_or_else(|| Error::Config {
        key: "~/.manta/secret".into(),
        message: "HOME is not set".into(),
    })?;
    user_secret_in(&std::path::PathBuf::from(home).join(".manta"))
}

/// The secret in `dir/secret`, made if missing. Anyone who could read or plant it would know
/// every job's token, so `dir` must be this user's alone (made mode 0700) and the file a
/// regular file of this user's, mode 0600, not a symlink (`cluster::session`'s checks); else
/// an error names the path and what is wrong.
fn user_secret_in(dir: &std::path::Path) -> Result<String, Error> {
    use cluster::session;
    let path = dir.join("secret");
    let fail = |message: String| Error::Config {
        key: path.display().to_string(),
        message,
    };
    session::ensure_root(dir).map_err(|e| fail(e.to_string()))?;
    let usable = |s: String| (s.len() == 32).then_some(s);
    match session::read_private(&path) {
        Ok(s) => return usable(s).ok_or_else(|| fail("not 32 characters".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let secret = crate::cluster::new_token().map_err(|e| fail(format!("{e:#}")))?;
    // `create_new`: if another rank made it first, use theirs.
    match session::create_private(&path, secret.as_bytes()) {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Lost a race with another rank: wait for its write.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match session::read_private(&path).map(usable) {
                    Ok(Some(s)) => return Ok(s),
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(fail(e.to_string()));
                    }
                    _ => {}
                }
                if Instant::now() > deadline {
                    return Err(fail("unreadable or empty".into()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// The job's cluster token: a keyed hash (HMAC-SHA256) of the job's identity with the user's
/// secret, as 32 hex digits.
fn token_for(job_key: &str) -> Result<String, Error> {
    let secret = user_secret()?;
    Ok(token_from(&secret, job_key))
}

fn token_from(secret: &str, job_key: &str) -> String {
    let mac = manta_auth::derive(secret.as_bytes(), job_key.as_bytes());
    mac[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4())
}

fn launch_error(rank: &Rank, message: impl std::fmt::Display) -> Error {
    Error::Cluster {
        what: format!("{} rank {} of {}", rank.launcher, rank.rank, rank.size),
        message: message.to_string(),
    }
}

/// Starts this rank's node in a thread; returns once it has joined (or failed).
fn start_node(
    rank: &Rank,
    opts: NodeOptions,
) -> Result<(cluster::NodeReady, std::thread::JoinHandle<()>), Error> {
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let handle = std::thread::Builder::new()
        .name("manta-node".into())
        .spawn(move || {
            let r = cluster::run_node(opts, move |ready| {
                let _ = tx.send(Ok(ready.clone()));
            });
            if let Err(e) = r {
                let _ = tx2.send(Err(e));
            }
        })
        .map_err(|e| launch_error(rank, format!("starting the node thread: {e}")))?;
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(ready)) => Ok((ready, handle)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(launch_error(rank, "the node did not join within 60 s")),
    }
}

/// What rank 0 keeps to end the job at `shutdown`.
#[derive(Debug)]
pub(crate) struct Head {
    gcs_address: String,
    token: String,
    node: std::thread::JoinHandle<()>,
}

impl Head {
    /// The cluster's node table and actor directory.
    pub(crate) fn state(&self) -> Result<cluster::ClusterState, Error> {
        cluster::query(&self.gcs_address, &self.token)
    }
}

/// This rank's share of its node: the launcher's CPU count (else the CPUs our cpuset allows)
/// and the visible GPUs, split evenly among the node's ranks, and the CPUs its worker's slots
/// are pinned to.
///
/// The CPUs: all this process may use when it is the node's only rank or when the launcher
/// bound it to part of the allocation already (`srun --cpu-bind`, `mpirun --bind-to`: its
/// affinity is a strict subset of the cgroup's cpuset); otherwise a disjoint slice by local
/// rank, whole NUMA nodes per rank where there are enough ([`topology::rank_cpus`]); ranks
/// share CPUs only when the node has fewer CPUs than ranks. `MANTA_CPU_AFFINITY`, when set,
/// wins (empty: no pinning). The worker's object store splits its arena across the NUMA nodes
/// of those CPUs (`MANTA_OBJECT_STORE_NUMA_NODES`, when set, wins).
///
/// `SLURM_CPUS_ON_NODE` sets the CPU resource, not the list: it says how many CPUs the job
/// has, not which. Where Slurm confines the job (task/cgroup) the cpuset says which; where it
/// does not (task/none, as on the test machine) the shares are cut from every CPU the process
/// may use, and may be more CPUs than the job was given.
struct Share {
    cpus: f64,
    gpus: f64,
    /// The launcher's ids of this rank's GPUs (empty where the GPUs are only counted).
    gpu_ids: Vec<String>,
    cpu_list: CpuList,
    numa_nodes: CpuList,
}

/// The launcher's ids of the GPUs of local rank `local_rank` of `local`: the node's GPUs
/// ordered by NUMA node (ranks get their CPUs by NUMA node in rank order too, so a rank's GPUs
/// sit near its CPUs where the machine allows), split evenly; with fewer GPUs than ranks, one
/// each to the first ranks.
fn rank_gpus(gpus: &[topology::Gpu], local_rank: usize, local: usize) -> Vec<String> {
    let mut ordered: Vec<&topology::Gpu> = gpus.iter().collect();
    ordered.sort_by_key(|g| g.numa.unwrap_or(usize::MAX));
    let per_rank = ordered.len() / local.max(1);
    let mine = if per_rank > 0 {
        &ordered[local_rank * per_rank..(local_rank + 1) * per_rank]
    } else {
        &ordered[local_rank.min(ordered.len())..(local_rank + 1).min(ordered.len())]
    };
    mine.iter().map(|g| g.id.clone()).collect()
}

/// Shows this rank's process only its GPUs (`CUDA_VISIBLE_DEVICES`), before Manta or MPI
/// start any thread: CUDA reads the variable when it first initialises. Rank 0 is the driver
/// and keeps every device; its share runs in a worker process its raylet starts bound.
fn bind_gpus(rank: &Rank, share: &Share) {
    if rank.rank == 0 || share.gpu_ids.is_empty() {
        return;
    }
    let value = share.gpu_ids.join(",");
    if std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v == value) {
        return;
    }
    tracing::debug!(rank = rank.rank, devices = %value, "binding the rank to its GPUs");
    // SAFETY: called first thing in `init` on an SPMD rank, before Manta starts any thread
    // and before MPI is initialised, so no thread of ours reads the environment meanwhile; a
    // user thread started before `manta::init` that reads the environment would race (the
    // README asks for `init` before such threads, as MPI_Init does).
    unsafe { std::env::set_var("CUDA_VISIBLE_DEVICES", value) };
}

impl Share {
    /// The share of the rank with local rank `local_rank` on this node.
    fn of(rank: &Rank, topo: &topology::Topology, local_rank: u32) -> Result<Share, Error> {
        let local = rank.local_size.max(1) as usize;
        let bound = local > 1 && topo.bound_by_launcher();
        let mine = if local == 1 || bound {
            topo.cpus.clone()
        } else {
            topology::rank_cpus(&topo.cpus_by_numa(), local_rank as usize, local)
        };
        let env = |k: &str| std::env::var(k).ok();
        let store_numa = topo.numa_of(&mine);
        let cpu_list = topology::user_list_or(env, "MANTA_CPU_AFFINITY", mine)
            .map_err(|e| launch_error(rank, e))?;
        let numa_nodes = topology::user_list_or(env, "MANTA_OBJECT_STORE_NUMA_NODES", store_numa)
            .map_err(|e| launch_error(rank, e))?;
        let cpus = match rank.cpus_on_node {
            Some(n) => n / local as f64,
            // A bound rank's CPUs are its own already.
            None if bound => topo.cpus.len() as f64,
            None => topo.cpus.len() as f64 / local as f64,
        };
        let gpu_ids = rank_gpus(&topo.gpus, local_rank as usize, local);
        Ok(Share {
            cpus: cpus.max(1.0).floor(),
            gpus: gpu_ids.len() as f64,
            gpu_ids,
            cpu_list,
            numa_nodes,
        })
    }
}

/// A node's whole allocation, registered by its one raylet: the sum of its local ranks'
/// shares (each computed as that rank computes its own), and the topology line with the CPUs
/// and NUMA nodes of all of them. Where the launcher bound the ranks, a rank knows only its
/// own CPUs: the line then shows the raylet's rank's.
fn node_options(
    rank: &Rank,
    topo: &topology::Topology,
    ip: IpAddr,
    token: &str,
) -> Result<NodeOptions, Error> {
    let mut opts = NodeOptions::new(ip, token.to_owned());
    let (mut cpus, mut gpus) = (0.0, 0.0);
    let (mut cpu_list, mut numa) = (Vec::new(), Vec::new());
    for local_rank in 0..rank.local_size.max(1) {
        let share = Share::of(rank, topo, local_rank)?;
        cpus += share.cpus;
        gpus += share.gpus;
        opts.gpu_ids.extend(share.gpu_ids);
        cpu_list.extend(share.cpu_list.0);
        numa.extend(share.numa_nodes.0);
    }
    for v in [&mut cpu_list, &mut numa] {
        v.sort_unstable();
        v.dedup();
    }
    opts.num_cpus = cpus;
    opts.num_gpus = gpus;
    opts.topology = topo.node_line(&CpuList(cpu_list.clone()), &CpuList(numa));
    // Bundles' CPU sets come from every rank's CPUs here, not the raylet's rank's alone.
    opts.bundle_cpus = CpuList(cpu_list);
    Ok(opts)
}

/// Brings up this rank's part of the cluster. Returns the head's handle on rank 0 (the
/// driver); never returns on other ranks unless they fail.
pub(crate) fn bootstrap(rank: &Rank, config: Config) -> Result<Head, Error> {
    let topo = topology::discover();
    let share = Share::of(rank, &topo, rank.local_rank)?;
    bind_gpus(rank, &share);
    let config = config.num_cpus(share.cpus).num_gpus(share.gpus);
    #[cfg(feature = "mpi")]
    if rank.launcher == "mpirun" || rank.pmix {
        let _ = EXCHANGE.set("mpi");
        return bootstrap_mpi(rank, config, &topo, share);
    }
    let _ = EXCHANGE.set("environment");
    let token = token_for(&rank.job_key)?;
    let ports = ports_for(&rank.job_key);
    let head_ip = match &rank.head_host {
        Some(h) => resolve(h)
            .ok_or_else(|| launch_error(rank, format!("cannot resolve the head's host {h:?}")))?,
        None => {
            return Err(launch_error(
                rank,
                "the head's host is unknown: under mpirun across nodes, build with the `mpi` \
                 feature or start the cluster with `manta start`",
            ));
        }
    };
    if rank.rank == 0 {
        let mut failures = Vec::new();
        for &port in &ports {
            match start_head(rank, &topo, &share, head_ip, port, &token) {
                Ok((ready, node)) => return drive(rank, config, ready, node, token),
                Err(e) => {
                    tracing::debug!(port, error = %e, "SPMD head port unavailable");
                    failures.push(format!("{port}: {e}"));
                }
            }
        }
        return Err(launch_error(
            rank,
            format!("no port for the head on {head_ip}: {}", failures.join("; ")),
        ));
    }
    // Wait for the head to answer on one of the job's ports (it may start after us).
    let deadline = Instant::now() + Duration::from_secs(60);
    let gcs_address = 'found: loop {
        let mut last = String::new();
        for &port in &ports {
            let address = std::net::SocketAddr::new(head_ip, port).to_string();
            match cluster::query(&address, &token) {
                Ok(_) => break 'found address,
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        if Instant::now() > deadline {
            return Err(launch_error(
                rank,
                format!("the head did not answer on any of the job's ports within 60 s ({last})"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Err(join(
        rank,
        config,
        &topo,
        &share,
        head_ip,
        gcs_address,
        token,
    ))
}

/// Rank 0: the head node (GCS and its node's raylet) in a thread of this process. The raylet
/// registers the node's whole allocation, starts a worker process for rank 0's share (rank 0
/// itself is the driver) and waits for the node's other ranks to join as workers.
fn start_head(
    rank: &Rank,
    topo: &topology::Topology,
    share: &Share,
    ip: IpAddr,
    port: u16,
    token: &str,
) -> Result<(cluster::NodeReady, std::thread::JoinHandle<()>), Error> {
    let mut opts = node_options(rank, topo, ip, token)?;
    opts.head = true;
    opts.port = port;
    opts.worker_cpus = Some(share.cpus);
    opts.worker_gpus = Some(share.gpus);
    opts.worker_gpu_ids = Some(share.gpu_ids.clone());
    opts.cpu_affinity = share.cpu_list.clone();
    opts.numa_nodes = share.numa_nodes.clone();
    opts.joining_workers = rank.local_size.max(1) - 1;
    start_node(rank, opts)
        .map_err(|e| launch_error(rank, format!("starting the head on {ip}:{port}: {e}")))
}

/// Rank 0, once the head is up: waits for every rank's node, then joins as the driver.
fn drive(
    rank: &Rank,
    config: Config,
    ready: cluster::NodeReady,
    node: std::thread::JoinHandle<()>,
    token: String,
) -> Result<Head, Error> {
    tracing::info!(gcs = %ready.gcs_address, rank = rank.rank, size = rank.size, "SPMD head up");
    // Every other rank joins as a worker (and with the first on each node, its raylet) before
    // the driver starts, so the first placement sees every node.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let joined: u32 = cluster::query(&ready.gcs_address, &token)
            .map(|s| s.nodes.iter().filter(|n| n.alive).map(|n| n.workers).sum())
            .unwrap_or(0);
        if joined + 1 >= rank.size {
            break;
        }
        if Instant::now() > deadline {
            return Err(launch_error(
                rank,
                format!(
                    "only {} of {} ranks joined within 60 s",
                    joined + 1,
                    rank.size
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    manta_core::init_with(
        config
            .address(ready.gcs_address.clone())
            .token(token.clone()),
    )?;
    Ok(Head {
        gcs_address: ready.gcs_address,
        token,
        node,
    })
}

/// Other ranks, once the head answers: a worker process of their node's raylet, with their
/// own share. The node's raylet is the one registered from this host (same boot id and
/// network namespace, or the same address): rank 0's on its node; elsewhere local rank 0
/// starts it, in a thread, once the head's node is in the table (so a local rank 0 on rank
/// 0's node, under an unusual rank mapping, joins the head's raylet instead of starting a
/// second one), and the other local ranks poll the node table until it appears. Returns only
/// if that fails.
fn join(
    rank: &Rank,
    config: Config,
    topo: &topology::Topology,
    share: &Share,
    head_ip: IpAddr,
    gcs_address: String,
    token: String,
) -> Error {
    let my_ip = cluster::local_ip_towards(std::net::SocketAddr::new(head_ip, 9));
    let my_host = cluster::host_id();
    let on_this_host = |n: &cluster::NodeRow| {
        n.alive
            && (n.host_id == my_host
                || n.address
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| a.ip() == my_ip))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last;
    let (raylet_address, node_id) = loop {
        match cluster::query(&gcs_address, &token) {
            Ok(state) => {
                if let Some(n) = state.nodes.iter().find(|n| on_this_host(n)) {
                    break (n.address.clone(), n.node_id);
                }
                if rank.local_rank == 0 && state.nodes.iter().any(|n| n.alive) {
                    let mut opts = match node_options(rank, topo, my_ip, &token) {
                        Ok(o) => o,
                        Err(e) => return e,
                    };
                    opts.gcs_address = Some(gcs_address.clone());
                    opts.spawn_workers = false;
                    opts.joining_workers = rank.local_size.max(1);
                    match start_node(rank, opts) {
                        // The thread lives as long as this process serves.
                        Ok((ready, _node)) => break (ready.raylet_address, ready.node_id),
                        Err(e) => return e,
                    }
                }
                last = format!("{} node(s), none on this host yet", state.nodes.len());
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return launch_error(
                rank,
                format!("no raylet for this host ({my_host}, {my_ip}) within 60 s: {last}"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // This rank is one of its node's workers for the job (the first and only job of this
    // cluster), its slots pinned to the rank's CPUs and its store on their NUMA nodes.
    let spec = WorkerSpec::new(gcs_address, token, raylet_address, 1, node_id);
    let config = config
        .cpu_affinity(share.cpu_list.clone())
        .object_store_numa_nodes(share.numa_nodes.clone());
    cluster::serve_worker(config, spec)
}

/// The exchange through MPI (`mpirun`): rank 0 starts the head on a port the OS picks and
/// broadcasts its address and a fresh token; MPI is then finalised (it only carried the
/// address) and every rank goes on as in the Slurm route.
#[cfg(feature = "mpi")]
fn bootstrap_mpi(
    rank: &Rank,
    config: Config,
    topo: &topology::Topology,
    share: Share,
) -> Result<Head, Error> {
    use mpi::traits::{Communicator, Root};
    const LEN: usize = 512;
    let universe = mpi::initialize()
        .ok_or_else(|| launch_error(rank, "MPI was already initialised in this process"))?;
    let world = universe.world();
    let mut buf = [0u8; LEN];
    let mut head = None;
    if world.rank() == 0 {
        // All ranks on this host: loopback; else this host's address.
        let ip = if rank.local_size >= rank.size {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            crate::cluster::hostname_ip().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        };
        let text = match crate::cluster::new_token()
            .map_err(|e| launch_error(rank, e))
            .and_then(|token| {
                let (ready, node) = start_head(rank, topo, &share, ip, 0, &token)?;
                let text = format!("ok\n{}\n{token}", ready.gcs_address);
                head = Some((ready, node, token));
                Ok(text)
            }) {
            Ok(t) => t,
            Err(e) => format!("err\n{e}"),
        };
        let n = text.len().min(LEN);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
    }
    world.process_at_rank(0).broadcast_into(&mut buf[..]);
    drop(universe);
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim_end_matches('\0');
    let mut lines = text.lines();
    match lines.next() {
        Some("ok") => {}
        _ => {
            return Err(launch_error(
                rank,
                format!(
                    "rank 0 could not start the head: {}",
                    lines.collect::<Vec<_>>().join(" ")
                ),
            ));
        }
    }
    let gcs_address = lines.next().unwrap_or_default().to_owned();
    let token = lines.next().unwrap_or_default().to_owned();
    if let Some((ready, node, token)) = head {
        return drive(rank, config, ready, node, token);
    }
    let head_ip = gcs_address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .map_err(|_| launch_error(rank, format!("rank 0 sent a bad address {gcs_address:?}")))?;
    Err(join(
        rank,
        config,
        topo,
        &share,
        head_ip,
        gcs_address,
        token,
    ))
}

/// Ends the job on rank 0: every node stops and its rank exits; returns once they are gone.
pub(crate) fn finish(head: Head) {
    let Head {
        gcs_address,
        token,
        node,
    } = head;
    if let Err(e) = cluster::stop_cluster(&gcs_address, &token) {
        tracing::warn!(error = %e, "could not stop the cluster");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = node.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_user_secret_is_made_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".manta");
        let secret = user_secret_in(&dir).unwrap();
        assert_eq!(secret.len(), 32);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("secret")), 0o600);
        assert_eq!(user_secret_in(&dir).unwrap(), secret, "made once");
    }

    #[test]
    fn a_secret_others_could_read_or_plant_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // Readable by others.
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".manta");
        user_secret_in(&dir).unwrap();
        set(&dir.join("secret"), 0o644);
        let e = user_secret_in(&dir).unwrap_err().to_string();
        assert!(e.contains("secret") && e.contains("644"), "{e}");
        // A symlink to a file someone else chose.
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".manta");
        std::fs::create_dir(&dir).unwrap();
        set(&dir, 0o700);
        let planted = home.path().join("planted");
        std::fs::write(&planted, "0123456789abcdef0123456789abcdef").unwrap();
        set(&planted, 0o600);
        std::os::unix::fs::symlink(&planted, dir.join("secret")).unwrap();
        let e = user_secret_in(&dir).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // A directory others may write to (where they could plant one).
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".manta");
        std::fs::create_dir(&dir).unwrap();
        set(&dir, 0o777);
        let e = user_secret_in(&dir).unwrap_err().to_string();
        assert!(e.contains("others may write"), "{e}");
    }

    #[test]
    fn job_tokens_are_keyed_hashes_of_the_job() {
        let t = token_from("0123456789abcdef0123456789abcdef", "slurm:7.0");
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            t,
            token_from("0123456789abcdef0123456789abcdef", "slurm:7.0")
        );
        assert_ne!(
            t,
            token_from("0123456789abcdef0123456789abcdef", "slurm:8.0")
        );
        assert_ne!(
            t,
            token_from("0123456789abcdef0123456789abcdeF", "slurm:7.0")
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn gpu(id: &str, numa: Option<usize>) -> topology::Gpu {
        topology::Gpu {
            id: id.into(),
            bus_id: None,
            numa,
        }
    }

    #[test]
    fn ranks_get_disjoint_gpus_near_their_numa_node() {
        // Listed out of NUMA order: ranks 0 and 1 take NUMA 0's two, ranks 2 and 3 NUMA 1's.
        let gpus = [
            gpu("0", Some(1)),
            gpu("1", Some(0)),
            gpu("2", Some(1)),
            gpu("3", Some(0)),
        ];
        let of = |r, n| rank_gpus(&gpus, r, n);
        assert_eq!(of(0, 2), vec!["1", "3"]);
        assert_eq!(of(1, 2), vec!["0", "2"]);
        assert_eq!(
            (0..4).map(|r| of(r, 4)).collect::<Vec<_>>(),
            [vec!["1"], vec!["3"], vec!["0"], vec!["2"]]
        );
        // More ranks than GPUs: the first ranks get one each, the others none.
        assert_eq!(of(3, 6), vec!["2"]);
        assert!(of(4, 6).is_empty() && of(5, 6).is_empty());
        // Three GPUs over two ranks: one each, the third unused (even shares).
        let three = [gpu("a", None), gpu("b", None), gpu("c", None)];
        assert_eq!(rank_gpus(&three, 0, 2), vec!["a"]);
        assert_eq!(rank_gpus(&three, 1, 2), vec!["b"]);
        assert!(rank_gpus(&[], 0, 1).is_empty());
    }

    #[test]
    fn srun_environment_gives_the_rank_and_the_head() {
        let r = detect(env(&[
            ("SLURM_PROCID", "2"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "1"),
            ("SLURM_STEP_NODELIST", "n[07-08]"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
            ("SLURM_CPUS_ON_NODE", "8"),
        ]))
        .unwrap();
        assert_eq!(r.launcher, "srun");
        assert_eq!((r.rank, r.size, r.local_rank, r.local_size), (2, 4, 0, 2));
        assert_eq!(r.head_host.as_deref(), Some("n07"));
        assert_eq!(r.job_key, "slurm-77.0");
        assert_eq!(r.cpus_on_node, Some(8.0));
        assert!(!r.pmix, "srun --mpi=none: no PMIx server");
    }

    #[test]
    fn srun_with_pmix_exchanges_through_mpi_unless_told_not_to() {
        let base = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "3"),
            ("SLURM_JOB_ID", "5"),
            ("SLURM_STEP_ID", "0"),
            ("PMIX_RANK", "0"),
        ];
        assert!(detect(env(&base)).unwrap().pmix);
        let mut off = base.to_vec();
        off.push(("MANTA_MPI_EXCHANGE", "0"));
        assert!(!detect(env(&off)).unwrap().pmix);
    }

    #[test]
    fn a_batch_shell_without_a_step_is_not_a_rank() {
        assert!(
            detect(env(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "3"),
                ("SLURM_JOB_ID", "5"),
            ]))
            .is_none()
        );
        assert!(detect(env(&[])).is_none());
    }

    #[test]
    fn mpirun_environment_gives_the_rank() {
        let r = detect(env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3"),
            ("PMIX_NAMESPACE", "prterun-vm-123@1"),
        ]))
        .unwrap();
        assert_eq!(r.launcher, "mpirun");
        assert_eq!(r.head_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.job_key, "ompi-prterun-vm-123@1");
    }

    #[test]
    fn host_lists() {
        assert_eq!(first_host("vm").as_deref(), Some("vm"));
        assert_eq!(first_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_host("n[01-04,07],x").as_deref(), Some("n01"));
        assert_eq!(first_host("gpu[3,5]-ib").as_deref(), Some("gpu3-ib"));
        assert_eq!(first_host(""), None);
        assert_eq!(tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(tasks_on_node("2(x3),1", 1), Some(2));
        assert_eq!(tasks_on_node("3", 0), Some(3));
    }

    #[test]
    fn jobs_get_different_ports() {
        let a = port_for("slurm-77.0");
        let b = port_for("slurm-78.0");
        assert_ne!(a, b);
        assert!((20_000..50_000).contains(&a));
        let ports = ports_for("slurm-77.0");
        assert_eq!(ports[0], a);
        assert!(ports.len() > 1 && ports.len() <= PORT_CANDIDATES);
        assert!(ports.iter().all(|p| (20_000..50_000).contains(p)));
        assert_eq!(
            ports,
            ports_for("slurm-77.0"),
            "every rank derives the same list"
        );
    }
}
