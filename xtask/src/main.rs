//! `cargo xtask …`: the developer tasks (DESIGN.md §4).

mod bench;
mod demo;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "genie's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the nightly rust-src component, bpf-linker and the Debian packages the build,
    /// tests and demo need. Idempotent; a second run says nothing needed doing.
    Setup,
    /// Build the eBPF object (with BTF) into target/ebpf/genie.bpf.o.
    BuildEbpf,
    /// Setup, formatting and lint checks, unprivileged tests, then privileged tests as root.
    Test(test::TestArgs),
    /// A guided tour (as root): the real agent, pods of two tenants added through genie-cni
    /// (one with three interfaces), the connectivity matrix with drop reasons, the same drops
    /// in the metrics, a bandwidth and a QPS limit measured, `genie inspect`; then clean up.
    Demo(demo::DemoArgs),
    /// Run a benchmark (as root): `datapath`, `cni` or `limits`; results as ratios to a
    /// baseline measured in the same run.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            let opts = xtask::ebpf::BuildOptions::for_workspace(&util::workspace_root());
            let object = xtask::ebpf::build(&opts)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Test(args) => test::test(&args),
        Task::Demo(args) => demo::demo(&args),
        Task::Bench(args) => bench::bench(&args),
    }
}
