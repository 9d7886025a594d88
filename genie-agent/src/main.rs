//! `genie`: the node agent and its tools. Argument parsing only; the work is in the library.

mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    commands::run(commands::Cli::parse())
}
