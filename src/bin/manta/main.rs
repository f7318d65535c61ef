//! The `manta` command-line tool.
//!
//! Its CLI is defined in `manta-launcher`; the binary lives in the root package because the
//! microbenchmark suite defines remote functions and actors, whose generated code names the
//! `manta` facade (see ARCHITECTURE.md, "The one cycle").

mod microbenchmark;

use clap::Parser;
use manta_launcher::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Microbenchmark(args) => microbenchmark::run(&args),
        Command::Start(args) => manta_launcher::cluster::start(&args),
        Command::Stop(args) => manta_launcher::cluster::stop(&args),
        Command::Status(args) => manta_launcher::cluster::status(&args),
        Command::List(args) => manta_launcher::cluster::list(&args),
        Command::Config(args) => manta_launcher::config(&args),
    }
}
