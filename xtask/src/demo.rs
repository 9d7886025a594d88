//! `cargo xtask demo`: set up, build, and run the demo as root.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    setup,
    util::{is_root, run, workspace_root},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Skip `cargo xtask setup` (for a machine already set up).
    #[arg(long)]
    skip_setup: bool,
    /// Leave the node, the pods and the agent running at the end, and print how to poke at
    /// them and how to remove them.
    #[arg(long)]
    keep: bool,
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and loads eBPF programs: run `sudo -E cargo xtask demo`"
        );
    }
    if !args.skip_setup {
        setup::setup()?;
    }
    let root = workspace_root();
    eprintln!("==> building genie and the demo");
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--quiet",
        "--package",
        "genie-agent",
        "--package",
        "genie-tests",
        "--bins",
    ]))?;
    let target = xtask::toolchain::target_dir(&root);
    let mut demo = Command::new(target.join("debug/genie-demo"));
    demo.env("GENIE_BIN", target.join("debug/genie"));
    if args.keep {
        demo.arg("--keep");
    }
    run(&mut demo)
}
