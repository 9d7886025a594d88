//! Facts about the toolchains the eBPF build needs, and how to find them.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The toolchain the eBPF crate builds with: `bpfel-unknown-none` needs `-Z build-std=core`.
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// The bpf-linker release that links with LLVM 22 and the pinned aya crates (DESIGN.md §5).
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// What to tell a developer who lacks part of the toolchain.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (it installs the nightly rust-src \
                              component, bpf-linker and the Debian packages genie needs)";

/// `$CARGO_HOME`, defaulting like cargo does.
pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The workspace's cargo target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir(workspace: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// Finds an executable on `PATH` or in `$CARGO_HOME/bin` (where `cargo install` puts it, and
/// which is not always on `PATH` in CI shells).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(std::iter::once(cargo_home().join("bin")))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `rustup run <toolchain> <program>` so the choice of toolchain does not depend on the
/// caller's environment (the agent's build script runs under stable cargo).
pub fn rustup_run(toolchain: &str, program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, program]);
    // A build script inherits the outer cargo's compiler choice and flags; none of them apply
    // to the BPF target.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

/// `rustc -vV` of a toolchain, as (key, value) lines.
pub fn rustc_version_info(toolchain: &str) -> Result<Vec<(String, String)>> {
    let output = rustup_run(toolchain, "rustc")
        .arg("-vV")
        .output()
        .with_context(|| format!("running `rustup run {toolchain} rustc -vV`"))?;
    if !output.status.success() {
        bail!(
            "`rustup run {toolchain} rustc -vV` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// The LLVM major version the nightly toolchain was built with; bpf-linker's `llvm-NN` feature
/// must match it.
pub fn nightly_llvm_major() -> Result<u32> {
    let info = rustc_version_info(EBPF_TOOLCHAIN)?;
    let llvm = info
        .iter()
        .find(|(k, _)| k == "LLVM version")
        .map(|(_, v)| v.clone())
        .context("`rustc -vV` of the nightly toolchain reports no LLVM version")?;
    llvm.split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {llvm:?}"))
}

/// The nightly toolchain's sysroot.
pub fn nightly_sysroot() -> Result<PathBuf> {
    let output = rustup_run(EBPF_TOOLCHAIN, "rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running `rustc --print sysroot` on the nightly toolchain")?;
    if !output.status.success() {
        bail!("`rustc +nightly --print sysroot` failed");
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// Whether the nightly toolchain has the `rust-src` component (`-Z build-std` needs it).
pub fn nightly_has_rust_src() -> bool {
    nightly_sysroot()
        .map(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir())
        .unwrap_or(false)
}

/// Whether a working bpf-linker is installed (it loads the nightly's libLLVM at run time, so
/// a binary whose library went away does not count).
pub fn bpf_linker_works() -> Option<PathBuf> {
    let linker = find_executable("bpf-linker")?;
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    ok.then_some(linker)
}
