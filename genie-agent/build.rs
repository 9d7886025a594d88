//! Builds the eBPF object the agent embeds, through the same recipe as
//! `cargo xtask build-ebpf` (`xtask::ebpf`).

use std::{env, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("genie-agent lives in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for input in xtask::ebpf::inputs(workspace) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let mut opts = xtask::ebpf::BuildOptions::for_workspace(workspace);
    opts.output = out_dir.join("genie.bpf.o");
    opts.from_build_script = true;
    if let Err(err) = xtask::ebpf::build(&opts) {
        // Cargo prints a failed build script's stderr; a panic would add a backtrace that
        // buries the one line that matters.
        eprintln!("\nerror: genie's eBPF object could not be built: {err:#}\n");
        std::process::exit(1);
    }
}
