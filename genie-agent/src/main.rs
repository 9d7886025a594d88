//! `genie`: the node agent's command line.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use genie_agent::{DEFAULT_BPFFS_DIR, cli};

#[derive(Debug, Parser)]
#[command(
    name = "genie",
    version,
    about = "genie's node agent and inspection tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what is enforced on this node, read from the pinned maps (works while the agent is
    /// down).
    Inspect {
        #[command(subcommand)]
        what: Inspect,
        /// The node's genie bpffs directory.
        #[arg(long, global = true, default_value = DEFAULT_BPFFS_DIR)]
        bpffs: PathBuf,
    },
    /// Remove everything genie pinned on this node (maps and TCX links, which detaches the
    /// programs).
    Cleanup {
        /// The node's genie bpffs directory.
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Inspect {
    /// Packet and byte counters per endpoint, direction and reason.
    Counters,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Inspect {
            what: Inspect::Counters,
            bpffs,
        } => {
            let rows = genie_agent::dataplane::read_counters(&bpffs)
                .with_context(|| format!("reading counters under {}", bpffs.display()))?;
            print!("{}", cli::counters_table(&rows));
            Ok(())
        }
        Command::Cleanup { bpffs } => {
            genie_agent::dataplane::cleanup(&bpffs)
                .with_context(|| format!("cleaning up {}", bpffs.display()))?;
            eprintln!("removed {}", bpffs.display());
            Ok(())
        }
    }
}
