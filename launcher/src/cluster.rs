//! `manta start`, `stop`, `status` and `list`: starting node processes and asking a running
//! cluster about itself.
//!
//! # Session directories
//! `manta start --head` makes `<session root>/session_<time>_<pid>/` (root: `$MANTA_SESSION_ROOT`,
//! default `/tmp/manta`; both mode 0700) holding `address` and `token` (mode 0600) and `logs/`,
//! and points `session_latest` at it. Commands and drivers on the same host find the address
//! and token there when none is given, after checking that the directory and files are this
//! user's alone (`manta_core::cluster::session`). The head removes its token and address when
//! it exits, and `manta stop` does too.
//!
//! # The token never travels in a command line
//! It is read from `--token-file` or `MANTA_TOKEN`; `--token` is refused, since every local
//! user can read a process's argv. The background re-exec of `manta start` and the workers a
//! raylet starts get it in their environment (readable only by this user).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use manta_core::cluster::{self, NodeOptions, session};

use crate::{ClusterArgs, ListArgs, ListWhat, StartArgs};

/// A fresh random token (16 bytes from the kernel, hex).
pub(crate) fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut bytes).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn new_session_dir() -> Result<PathBuf> {
    let root = cluster::session_root();
    session::ensure_root(&root)
        .context("the session root (MANTA_SESSION_ROOT names another, of your own)")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = root.join(format!("session_{stamp}_{}", std::process::id()));
    session::create_dir(&dir)?;
    Ok(dir)
}

/// The session directory given in `MANTA_SESSION_DIR` (the background re-exec's, or a test's):
/// created like a fresh one if missing, checked if it exists.
fn given_session_dir(dir: PathBuf) -> Result<PathBuf> {
    if dir.exists() {
        session::check_dir(&dir)?;
        let logs = dir.join("logs");
        if !logs.exists() {
            std::fs::create_dir(&logs).with_context(|| format!("creating {}", logs.display()))?;
        }
    } else {
        session::create_dir(&dir)?;
    }
    Ok(dir)
}

/// The token given to this command: `--token-file`'s contents or `MANTA_TOKEN`, if either.
/// `--token` is refused: a command line is readable by every local user.
fn given_token(argv_token: Option<&String>, file: Option<&PathBuf>) -> Result<Option<String>> {
    if argv_token.is_some() {
        bail!(
            "--token is refused: every local user can read a command line (ps, /proc/PID/cmdline), \
             and the token lets its holder run code as this cluster's user; give it in \
             MANTA_TOKEN or in a file of mode 0600 with --token-file"
        );
    }
    if let Some(f) = file {
        let t = session::read_private(f).context("reading --token-file")?;
        if t.is_empty() {
            bail!("--token-file {} is empty", f.display());
        }
        return Ok(Some(t));
    }
    Ok(std::env::var("MANTA_TOKEN").ok().filter(|t| !t.is_empty()))
}

/// The token of the cluster at `address` from the latest session on this host, or an error
/// saying why not.
fn latest_session_token(address: &str) -> Result<String> {
    session::token_for(&cluster::session_root(), address)
        .context("the latest session on this host")?
        .with_context(|| {
            format!(
                "no token for {address}: set MANTA_TOKEN or give --token-file \
                 (printed by `manta start --head`)"
            )
        })
}

/// Sends the node's log (warnings about peers, nodes joining and dying, ...) to stderr, which
/// is the node's log file when it runs in the background. `RUST_LOG` filters it (default
/// `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `manta start`.
pub fn start(args: &StartArgs) -> Result<()> {
    let dir = match std::env::var_os(manta_core::config::vars::SESSION_DIR) {
        Some(d) => given_session_dir(PathBuf::from(d))?,
        None => new_session_dir()?,
    };
    let token = match (
        given_token(args.token.as_ref(), args.token_file.as_ref())?,
        args.head,
    ) {
        (Some(t), _) => t,
        // A head started again on its session keeps the session's token: its members
        // rejoin with it.
        (None, true) if restarting(&dir) => session::read_private(&dir.join("token"))
            .context("the session's token (restarting its head)")?,
        (None, true) => new_token()?,
        (None, false) => latest_session_token(args.address.as_deref().unwrap_or_default())?,
    };
    let ip = match (args.ip, args.head, &args.address) {
        (Some(ip), _, _) => ip,
        (None, true, _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (None, false, Some(a)) => {
            use std::net::ToSocketAddrs;
            let peer = a
                .to_socket_addrs()
                .ok()
                .and_then(|mut s| s.next())
                .with_context(|| format!("{a:?} is not a HOST:PORT address"))?;
            cluster::local_ip_towards(peer)
        }
        (None, false, None) => bail!("a non-head node needs --address"),
    };
    if !args.block {
        return start_in_background(args, &dir, &token);
    }
    init_logging();
    let topo = crate::topology::discover();
    let mut opts = NodeOptions::new(ip, token.clone());
    opts.head = args.head;
    opts.gcs_address = args.address.clone();
    opts.port = args.port;
    opts.num_cpus = args.num_cpus.unwrap_or(topo.cpus.len() as f64);
    opts.num_gpus = args.num_gpus.unwrap_or(topo.gpus.len() as f64);
    // Its workers see the node's GPUs (`--num-gpus` fewer: the first ones).
    opts.gpu_ids = topo
        .gpus
        .iter()
        .take(opts.num_gpus.ceil().max(0.0) as usize)
        .map(|g| g.id.clone())
        .collect();
    // The workers' slots get the node's allowed CPUs (the cpuset) and their stores the NUMA
    // nodes of those CPUs, unless the user chose.
    let env = |k: &str| std::env::var(k).ok();
    opts.cpu_affinity = crate::topology::user_list_or(env, "MANTA_CPU_AFFINITY", topo.cpus.clone())
        .map_err(anyhow::Error::msg)?;
    opts.numa_nodes =
        crate::topology::user_list_or(env, "MANTA_OBJECT_STORE_NUMA_NODES", topo.numa_of(&[]))
            .map_err(anyhow::Error::msg)?;
    opts.topology = topo.node_line(&opts.cpu_affinity, &opts.numa_nodes);
    opts.resources = args.resources.clone().unwrap_or_default().0;
    opts.log_dir = Some(dir.join("logs"));
    if args.head {
        // The GCS saves its tables here, and restores them when started here again.
        opts.gcs_state_dir = Some(dir.clone());
    }
    let head = args.head;
    let dir2 = dir.clone();
    let result = cluster::run_node(opts, move |ready| {
        if head {
            let written = session::write_private(&dir2.join("token"), &token)
                .and_then(|()| session::write_private(&dir2.join("address"), &ready.gcs_address))
                .and_then(|()| session::point_latest(&cluster::session_root(), &dir2));
            if let Err(e) = written {
                tracing::warn!(error = %e, "the session's token and address were not recorded");
            }
        }
        let _ = std::fs::write(
            dir2.join(format!("node-{}", ready.node_id)),
            &ready.raylet_address,
        );
        let _ = std::fs::write(dir2.join("ready"), ready.node_id.to_string());
        println!(
            "manta node {} up: raylet {}, cluster {}",
            ready.node_id, ready.raylet_address, ready.gcs_address
        );
    });
    if head && let Err(e) = session::remove_secrets(&dir) {
        tracing::warn!(error = %e, "the session's token was not removed");
    }
    if head && result.is_ok() {
        // Stopped, not lost: nothing is left to restore.
        let _ = std::fs::remove_file(dir.join(cluster::GCS_TABLES_FILE));
    }
    result.map_err(anyhow::Error::from)
}

/// Whether `dir` is the session of a head that died: its GCS saved tables there and left
/// its token.
fn restarting(dir: &Path) -> bool {
    dir.join(cluster::GCS_TABLES_FILE).exists() && dir.join("token").exists()
}

/// Re-runs `manta start ... --block` detached, waits until it has joined, prints how to use it.
fn start_in_background(args: &StartArgs, dir: &Path, token: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the manta executable")?;
    let log = dir
        .join("logs")
        .join(if args.head { "head.log" } else { "node.log" });
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    // A session started again (its head restarting) has the last run's marker.
    let _ = std::fs::remove_file(dir.join("ready"));
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--block")
        .env(manta_core::config::vars::SESSION_DIR, dir)
        .env("MANTA_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the node process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the node process exited ({status}) before joining:\n{tail}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the node did not join within 30 s (log: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    if args.head {
        let address = std::fs::read_to_string(dir.join("address"))?;
        println!(
            "Manta head started at {address} (session {})",
            dir.display()
        );
        println!(
            "  join another node:  manta start --address {address} --token-file {}",
            dir.join("token").display()
        );
        println!("                      (or with MANTA_TOKEN={token} in its environment)");
        println!("  run a driver:       MANTA_ADDRESS={address} MANTA_TOKEN={token} ./your-app");
        println!("  stop the cluster:   manta stop");
    } else {
        println!(
            "Manta node joined {} (log {})",
            args.address.as_deref().unwrap_or(""),
            log.display()
        );
    }
    Ok(())
}

/// This host's address as its name resolves (for a head other hosts must reach).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn hostname_ip() -> Option<IpAddr> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    (name.trim(), 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// The address and token `args` name, or the latest session's.
fn locate(args: &ClusterArgs) -> Result<(String, String)> {
    let given = given_token(args.token.as_ref(), args.token_file.as_ref())?;
    let address = match &args.address {
        Some(a) => a.clone(),
        None => {
            let dir = session::latest(&cluster::session_root())
                .context("no --address, and no usable session of a running cluster on this host")?;
            session::read_private(&dir.join("address"))
                .context("no --address, and no usable session of a running cluster on this host")?
        }
    };
    let token = match given {
        Some(t) => t,
        None => latest_session_token(&address)?,
    };
    Ok((address, token))
}

/// `manta stop`.
pub fn stop(args: &ClusterArgs) -> Result<()> {
    let (address, token) = locate(args)?;
    cluster::stop_cluster(&address, &token)?;
    // Wait until the head is gone (its port refuses).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && cluster::query(&address, &token).is_ok() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The head removes its token as it exits; this covers a head that could not.
    if let Ok(dir) = session::latest(&cluster::session_root())
        && session::read_private(&dir.join("address")).is_ok_and(|a| a == address)
    {
        session::remove_secrets(&dir).context("removing the session's token")?;
    }
    println!("stopped the cluster at {address}");
    Ok(())
}

/// `manta status`.
pub fn status(args: &ClusterArgs) -> Result<()> {
    let (address, token) = locate(args)?;
    let state = cluster::query(&address, &token)?;
    let alive = state.nodes.iter().filter(|n| n.alive).count();
    println!(
        "cluster {address}: {alive} node(s) alive, {} dead",
        state.nodes.len() - alive
    );
    let mut totals: Vec<(String, f64, f64)> = Vec::new();
    // A placement group's resources over all its bundles: `<name>_group_<id>`.
    let mut groups: Vec<(String, f64, f64)> = Vec::new();
    for n in state.nodes.iter().filter(|n| n.alive) {
        for (name, avail, total) in &n.resources {
            if let Some((_, rest)) = name.split_once("_group_") {
                if !rest.contains('_') && !name.starts_with("bundle_group_") {
                    match groups.iter_mut().find(|t| &t.0 == name) {
                        Some(t) => {
                            t.1 += avail;
                            t.2 += total;
                        }
                        None => groups.push((name.clone(), *avail, *total)),
                    }
                }
                continue;
            }
            match totals.iter_mut().find(|t| &t.0 == name) {
                Some(t) => {
                    t.1 += avail;
                    t.2 += total;
                }
                None => totals.push((name.clone(), *avail, *total)),
            }
        }
    }
    println!("resources:");
    for (name, avail, total) in totals {
        if name == "object_store_memory" {
            let gib = |b: f64| b / (1u64 << 30) as f64;
            println!(
                "  {:>19}: {:.2} GiB used of {:.2} GiB",
                "object store",
                gib(total - avail),
                gib(total)
            );
        } else {
            println!("  {name:>19}: {} used of {total}", total - avail);
        }
    }
    if !groups.is_empty() {
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        println!("reserved by placement groups (used of reserved):");
        for (name, avail, total) in groups {
            println!("  {name:>36}: {} used of {total}", total - avail);
        }
    }
    println!("nodes:");
    for n in &state.nodes {
        print_node(n);
    }
    println!(
        "actors: {} alive",
        state.actors.iter().filter(|a| a.alive).count()
    );
    Ok(())
}

fn print_node(n: &cluster::NodeRow) {
    print_node_line(n);
    if !n.topology.is_empty() {
        println!("        topology: {}", n.topology);
    }
    if !n.store_pages.is_empty() {
        println!("        object store: {}", n.store_pages);
    }
}

fn print_node_line(n: &cluster::NodeRow) {
    let res: Vec<String> = n
        .resources
        .iter()
        .filter(|(name, _, _)| name != "object_store_memory" && !name.contains("_group_"))
        .map(|(name, _, total)| format!("{name}={total}"))
        .collect();
    println!(
        "  {:>4}  {:<21}  {:<5}  {:<16}  {}  workers={}{}",
        n.node_id,
        n.address,
        if n.alive { "ALIVE" } else { "DEAD" },
        n.hostname,
        res.join(","),
        n.workers,
        if n.death.is_empty() {
            String::new()
        } else {
            format!("  ({})", n.death)
        }
    );
}

/// `manta list`.
pub fn list(args: &ListArgs) -> Result<()> {
    let (address, token) = locate(&args.cluster)?;
    let state = cluster::query(&address, &token)?;
    match args.what {
        ListWhat::Nodes => {
            println!(
                "  {:>4}  {:<21}  {:<5}  {:<16}  RESOURCES",
                "ID", "ADDRESS", "STATE", "HOST"
            );
            for n in &state.nodes {
                print_node_line(n);
            }
        }
        ListWhat::PlacementGroups => {
            let groups = cluster::list_placement_groups(&address, &token)?;
            println!(
                "  {:>16}  {:<16}  {:<13}  {:<8}  BUNDLES (resources @ node, cpus [set], gpus [ids])",
                "ID", "NAME", "STRATEGY", "STATE"
            );
            for g in &groups {
                let bundles: Vec<String> = g
                    .bundles
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let node = g
                            .bundle_nodes
                            .get(i)
                            .map_or_else(|| "-".to_owned(), u64::to_string);
                        let mut line = format!("{b}@{node}");
                        if let Some(set) = g.bundle_cpus.get(i).filter(|s| !s.is_empty()) {
                            line.push_str(&format!(" cpus [{set}]"));
                        }
                        if let Some(ids) = g.bundle_gpus.get(i).filter(|g| !g.is_empty()) {
                            line.push_str(&format!(" gpus [{}]", manta_core::CpuList(ids.clone())));
                        }
                        line
                    })
                    .collect();
                println!(
                    "  {:>16}  {:<16}  {:<13}  {:<8}  {}",
                    g.id.to_string(),
                    g.name.as_deref().unwrap_or("-"),
                    g.strategy.to_string(),
                    g.state.to_string(),
                    bundles.join(" ")
                );
                if let Some(note) = &g.cpu_note {
                    println!("  {:>16}  {note}", "");
                }
            }
        }
        ListWhat::Tasks | ListWhat::Objects => {
            let work = cluster::list_work(&address, &token)?;
            if args.what == ListWhat::Tasks {
                println!(
                    "  {:>18}  {:<9}  {:>5}  {:>6}  {:>4}  NAME",
                    "ID", "STATE", "OWNER", "WORKER", "NODE"
                );
                for t in &work.tasks {
                    println!(
                        "  {:>18}  {:<9}  {:>5}  {:>6}  {:>4}  {}",
                        format!("{:#x}", t.task_id),
                        t.state,
                        t.owner,
                        t.worker,
                        t.node_id,
                        t.name
                    );
                }
            } else {
                println!(
                    "  {:>18}  {:>12}  {:<8}  {:<8}  {:>6}  {:>5}",
                    "ID", "BYTES", "KIND", "ROLE", "HOLDER", "OWNER"
                );
                for o in &work.objects {
                    println!(
                        "  {:>18}  {:>12}  {:<8}  {:<8}  {:>6}  {:>5}",
                        format!("{:#x}", o.object_id),
                        o.size,
                        o.kind,
                        o.role,
                        o.holder,
                        o.owner
                    );
                }
            }
            if work.partial {
                println!("(partial: some worker did not answer within 2 s)");
            }
        }
        ListWhat::Actors => {
            println!(
                "  {:>18}  {:<10}  {:>4}  {:>6}  {:<16}  CLASS",
                "ID", "STATE", "NODE", "WORKER", "NAME"
            );
            for a in &state.actors {
                println!(
                    "  {:>18}  {:<10}  {:>4}  {:>6}  {:<16}  {}",
                    format!("{:#x}", a.actor_id),
                    match (a.alive, a.restarting) {
                        (false, _) => "DEAD",
                        (true, false) => "ALIVE",
                        (true, true) => "RESTARTING",
                    },
                    a.node_id,
                    a.worker,
                    a.name,
                    a.class_name
                );
            }
        }
    }
    Ok(())
}
