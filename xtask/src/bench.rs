//! `cargo xtask bench <name>`: builds and runs the benchmark binary as root. Benchmarks compare
//! genie with a baseline measured in the same run and report ratios.

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::{
    setup,
    util::{is_root, run, workspace_root},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Benchmark {
    /// In-kernel cost per packet (BPF_PROG_TEST_RUN) at small and large map sizes, next to a
    /// pass-through program.
    Datapath,
    /// ADD and DEL latency of genie-cni for pods with 1, 2 and 3 interfaces, next to the same
    /// delegates run directly.
    Cni,
    /// TCP goodput under genie's bandwidth limits next to the reference `bandwidth` plugin,
    /// and a connection flood at five times a QPS limit.
    Limits,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    which: Benchmark,
    /// Skip `cargo xtask setup` (for a machine already set up).
    #[arg(long)]
    skip_setup: bool,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("benchmarks load eBPF programs: run `sudo -E cargo xtask bench …`");
    }
    if !args.skip_setup {
        setup::setup()?;
    }
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "genie-tests",
        "--bin",
        "genie-bench",
        "--package",
        "genie-agent",
        "--bins",
    ]))?;
    let target = xtask::toolchain::target_dir(&root);
    let name = match args.which {
        Benchmark::Datapath => "datapath",
        Benchmark::Cni => "cni",
        Benchmark::Limits => "limits",
    };
    run(Command::new(target.join("release/genie-bench")).arg(name))
}
