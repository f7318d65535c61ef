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
        let Command::Microbenchmark(args) = cli.command;
        assert_eq!(args.cases.as_deref(), Some("tasks"));
        assert_eq!(args.duration, 0.5);
    }
}
