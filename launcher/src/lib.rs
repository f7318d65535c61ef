//! The `manta` command line and process bootstrap.
//!
//! This crate owns everything about how Manta processes come to exist: the CLI definition
//! (`manta microbenchmark`, and with the cluster and launch work `manta start`, `stop`,
//! `status`, `list`, `timeline`), and later the SPMD bootstrap under `srun`/`mpirun` — it is the
//! only crate that reads Slurm, MPI or PMI environment variables.
//!
//! The `manta` binary itself lives in the root package (`src/bin/manta`), because its
//! microbenchmark defines remote functions, whose generated code names the `manta` facade,
//! which depends on this crate (see `ARCHITECTURE.md`, "The one cycle").

pub mod cluster;
pub mod spmd;
pub mod topology;

/// Rank 0's handle on the cluster it brought up, kept until `shutdown`.
static HEAD: std::sync::Mutex<Option<spmd::Head>> = std::sync::Mutex::new(None);

/// Starts Manta with configuration from the environment: see [`init_with`].
pub fn init() -> Result<(), manta_core::Error> {
    init_with(manta_core::Config::default())
}

/// Starts Manta. Under `srun` or `mpirun` with more than one rank (and no `MANTA_ADDRESS`),
/// brings up an SPMD cluster ([`spmd`]): rank 0 returns as its driver, every other rank serves
/// as a node and worker until the job ends and then exits. Otherwise this is
/// [`manta_core::init_with`]: the embedded runtime, or a driver or worker of the cluster that
/// `MANTA_ADDRESS` names. `MANTA_SPMD=0` turns the SPMD bootstrap off.
pub fn init_with(config: manta_core::Config) -> Result<(), manta_core::Error> {
    let resolved = config.resolve()?;
    let joining = !resolved.address.is_empty()
        || std::env::var_os(manta_core::config::vars::WORKER_RAYLET).is_some();
    let spmd_off = std::env::var(manta_core::config::vars::SPMD).is_ok_and(|v| v == "0");
    if !joining
        && !spmd_off
        && let Some(rank) = spmd::detect(|k| std::env::var(k).ok())
        && rank.size > 1
    {
        let head = spmd::bootstrap(&rank, config)?;
        *HEAD.lock().unwrap_or_else(|p| p.into_inner()) = Some(head);
        return Ok(());
    }
    manta_core::init_with(config)
}

/// On rank 0 of an SPMD launch, between `init` and `shutdown`: the cluster's node table and
/// actor directory, as `manta status` shows them (`None` in any other process).
pub fn spmd_cluster_state() -> Option<Result<manta_core::cluster::ClusterState, manta_core::Error>>
{
    let head = HEAD.lock().unwrap_or_else(|p| p.into_inner());
    head.as_ref().map(spmd::Head::state)
}

/// Stops Manta (see [`manta_core::shutdown`]). On rank 0 of an SPMD launch it also ends the
/// job: every rank's node stops and the ranks exit 0; this returns once they are gone.
pub fn shutdown() {
    manta_core::shutdown();
    let head = HEAD.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(head) = head {
        spmd::finish(head);
    }
}

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Manta: a distributed task, actor and object runtime.
#[derive(Debug, Parser)]
#[command(name = "manta", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Manta's microbenchmark suite (Ray's cases under Ray's names, plus latency cases).
    Microbenchmark(MicrobenchmarkArgs),
    /// Start a node: the head (GCS + raylet) with `--head`, or a raylet joining `--address`.
    Start(StartArgs),
    /// Stop the cluster (every node and its workers).
    Stop(ClusterArgs),
    /// Show the cluster's nodes, their resources and liveness.
    Status(ClusterArgs),
    /// List the cluster's nodes, actors, tasks or objects.
    List(ListArgs),
    /// Print the configuration catalogue: every tunable, its variable, scope, default and the
    /// value this environment gives it.
    Config(ConfigArgs),
}

/// Arguments of `manta config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Print the catalogue as the Markdown of `docs/CONFIG.md` (defaults only).
    #[arg(long)]
    pub markdown: bool,
}

/// `manta config`: the catalogue, with this environment's values (a malformed one is an error
/// naming its variable), or as Markdown.
pub fn config(args: &ConfigArgs) -> anyhow::Result<()> {
    if args.markdown {
        print!("{}", manta_core::config::render_markdown());
        return Ok(());
    }
    let resolved = manta_core::Config::default().resolve()?;
    print!("{}", manta_core::config::render_table(&resolved));
    Ok(())
}

/// Arguments of `manta start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Start the head node (GCS and this node's raylet).
    #[arg(long, conflicts_with = "address")]
    pub head: bool,
    /// The head's address (`HOST:PORT`) to join, for a non-head node.
    #[arg(long, env = "MANTA_ADDRESS", required_unless_present = "head")]
    pub address: Option<String>,
    /// The address to listen on (default: 127.0.0.1 for the head; for another node, its
    /// address towards the head). Never all interfaces unless asked with 0.0.0.0.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// The head's GCS port (0: any free port).
    #[arg(long, default_value_t = 6380)]
    pub port: u16,
    /// Refused: a token in the command line is readable by every local user (`ps`). Give it
    /// in `MANTA_TOKEN` or a `--token-file` instead.
    #[arg(long, hide = true)]
    pub token: Option<String>,
    /// A file holding the cluster's token (owned by you, mode 0600). Otherwise the token is
    /// `MANTA_TOKEN`'s; otherwise the head makes one, and another node takes the latest
    /// session's on this host.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// CPUs this node offers (default: the CPUs this process may run on — the cgroup cpuset
    /// and any binding respected).
    #[arg(long)]
    pub num_cpus: Option<f64>,
    /// GPUs this node offers (default: those the launcher made visible, CUDA_VISIBLE_DEVICES
    /// or SLURM_STEP_GPUS).
    #[arg(long)]
    pub num_gpus: Option<f64>,
    /// Custom resources, as JSON (`{"ssd": 1}`) or `name=amount,...`.
    #[arg(long, value_parser = parse_resources)]
    pub resources: Option<Resources>,
    /// Stay in the foreground (otherwise the node runs in the background and this returns
    /// once it has joined).
    #[arg(long)]
    pub block: bool,
}

/// Custom resources given on the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources(pub Vec<(String, f64)>);

fn parse_resources(s: &str) -> Result<Resources, String> {
    let s = s.trim();
    let mut out = Vec::new();
    if s.starts_with('{') {
        let body = s
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .ok_or("unbalanced braces")?;
        for pair in body.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| format!("{pair:?} is not \"name\": amount"))?;
            let k = k.trim().trim_matches('"').to_owned();
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{v:?} is not a number"))?;
            out.push((k, v));
        }
    } else {
        for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not name=amount"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{v:?} is not a number"))?;
            out.push((k.trim().to_owned(), v));
        }
    }
    for (k, v) in &out {
        if k.is_empty() || !v.is_finite() || *v < 0.0 {
            return Err(format!("bad resource {k:?}: {v}"));
        }
    }
    Ok(Resources(out))
}

/// Where the cluster is, for `stop`, `status` and `list`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The head's address (default: the latest session on this host).
    #[arg(long, env = "MANTA_ADDRESS")]
    pub address: Option<String>,
    /// Refused: a token in the command line is readable by every local user (`ps`).
    #[arg(long, hide = true)]
    pub token: Option<String>,
    /// A file holding the cluster's token (owned by you, mode 0600); otherwise `MANTA_TOKEN`,
    /// otherwise the latest session's on this host.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

/// Arguments of `manta list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum)]
    pub what: ListWhat,
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// What `manta list` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListWhat {
    /// Nodes with id, address and state.
    Nodes,
    /// Actors with id, class, name, node and state.
    Actors,
    /// Tasks and actor calls submitted or running, with owner, worker and node.
    Tasks,
    /// Objects held for owners, shared across processes or borrowed, with size and place.
    Objects,
    /// Placement groups with id, name, strategy, state and their bundles' nodes.
    PlacementGroups,
}

/// Arguments of `manta microbenchmark`.
#[derive(Debug, clap::Args)]
pub struct MicrobenchmarkArgs {
    /// Run only the cases whose name matches this regular expression (anywhere in the name).
    #[arg(long, value_name = "REGEX")]
    pub cases: Option<String>,
    /// Also write the results as JSON `{case: {"per_second": x, "stddev": y}, ...}` here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seconds per timed trial (Ray uses 2; smaller for smoke runs).
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    pub duration: f64,
    /// Timed trials per case (Ray uses 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// List the case names and exit.
    #[arg(long)]
    pub list: bool,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a positive number of seconds, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_durations() {
        assert!(Cli::try_parse_from(["manta", "microbenchmark", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["manta", "microbenchmark", "--duration", "x"]).is_err());
        assert!(Cli::try_parse_from(["manta", "microbenchmark", "--trials", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "manta",
            "microbenchmark",
            "--cases",
            "tasks",
            "--duration",
            "0.5",
        ])
        .unwrap();
        let Command::Microbenchmark(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.cases.as_deref(), Some("tasks"));
        assert_eq!(args.duration, 0.5);
    }

    #[test]
    fn start_needs_head_or_address() {
        assert!(Cli::try_parse_from(["manta", "start"]).is_err());
        assert!(Cli::try_parse_from(["manta", "start", "--head", "--address", "a:1"]).is_err());
        let cli = Cli::try_parse_from(["manta", "start", "--head", "--resources", "{\"ssd\": 2}"])
            .unwrap();
        let Command::Start(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert!(args.head);
        assert_eq!(args.resources, Some(Resources(vec![("ssd".into(), 2.0)])));
    }

    #[test]
    fn resources_parse_both_forms_and_refuse_garbage() {
        assert_eq!(
            parse_resources("a=1,b=2.5").unwrap(),
            Resources(vec![("a".into(), 1.0), ("b".into(), 2.5)])
        );
        assert!(parse_resources("a=x").is_err());
        assert!(parse_resources("{\"a\": -1}").is_err());
        assert!(parse_resources("{a").is_err());
    }
}
