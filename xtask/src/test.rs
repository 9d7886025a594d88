//! `cargo xtask test`: the project's one test command (README, `.ci/run`).

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    setup,
    util::{is_root, run, workspace_root},
};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (for a machine already set up).
    #[arg(long)]
    skip_setup: bool,
    /// Run only the unprivileged checks and tests (no root needed).
    #[arg(long)]
    unprivileged_only: bool,
    /// Only run privileged tests whose name contains this string.
    #[arg(long)]
    filter: Option<String>,
}

pub fn test(args: &TestArgs) -> Result<()> {
    let root = workspace_root();
    if !args.unprivileged_only && !is_root() {
        bail!(
            "the privileged tests load eBPF programs and create network namespaces, which needs \
             root: run `sudo -E cargo xtask test`, or `cargo xtask test --unprivileged-only`"
        );
    }
    if !args.skip_setup {
        setup::setup()?;
    }

    step("cargo fmt --check");
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;

    step("cargo clippy -D warnings (user space)");
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("cargo clippy -D warnings (eBPF, nightly, bpfel-unknown-none)");
    run(&mut xtask::ebpf::clippy_command(&root))?;

    step("unprivileged tests");
    run(Command::new("cargo").current_dir(&root).arg("test"))?;

    if args.unprivileged_only {
        return Ok(());
    }
    step("privileged tests (serial, as root)");
    // The traffic tests run the real `genie` binary.
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--package",
        "genie-agent",
        "--bins",
    ]))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--package", "genie-tests", "--", "--ignored"])
        .args(["--test-threads=1"]);
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    run(&mut cmd)?;

    step("checking that the tests left nothing behind");
    let left = leftovers();
    if !left.is_empty() {
        bail!(
            "the privileged tests left these behind: {}",
            left.join(", ")
        );
    }
    eprintln!("nothing left behind");
    Ok(())
}

/// Namespaces, bpffs directories and temporary directories named like the harness's
/// (`genie-t…`).
fn leftovers() -> Vec<String> {
    let tmp = std::env::temp_dir();
    ["/run/netns", "/sys/fs/bpf", &tmp.to_string_lossy()]
        .iter()
        .flat_map(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("genie-t"))
                .map(|e| e.path().display().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}
