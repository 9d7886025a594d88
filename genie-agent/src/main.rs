//! `genie`: the node agent and its tools. Argument parsing only; the work is in the library.

mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match commands::run(commands::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A message with its causes, never a backtrace: operators read this, not developers.
            eprintln!("genie: {error:#}");
            ExitCode::FAILURE
        }
    }
}
