//! The one recipe that builds genie's eBPF object.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::{self, EBPF_TOOLCHAIN, SETUP_HINT};

/// The package holding the eBPF programs, and the name of its binary (the object file).
pub const EBPF_PACKAGE: &str = "genie-ebpf";
const EBPF_BIN: &str = "genie";

/// Where the build goes and where the object ends up.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The workspace root (holds `genie-ebpf/`).
    pub workspace: PathBuf,
    /// Cargo target directory for the BPF build. It must differ from the calling cargo's own
    /// target directory, or a build script would wait forever on cargo's lock
    /// (rust-lang/cargo#6412).
    pub target_dir: PathBuf,
    /// Path the finished object is copied to.
    pub output: PathBuf,
    /// Whether the calling process is a build script (output goes to `cargo:warning`).
    pub from_build_script: bool,
}

impl BuildOptions {
    /// The default layout: `<workspace>/target/ebpf`, object at
    /// `<workspace>/target/ebpf/genie.bpf.o`.
    pub fn for_workspace(workspace: &Path) -> Self {
        let target_dir = toolchain::target_dir(workspace).join("ebpf");
        Self {
            workspace: workspace.to_owned(),
            output: target_dir.join("genie.bpf.o"),
            target_dir,
            from_build_script: false,
        }
    }
}

/// Checks that the eBPF build can run at all, naming `cargo xtask setup` when it cannot.
pub fn check_prerequisites() -> Result<PathBuf> {
    if toolchain::find_executable("rustup").is_none() {
        bail!("rustup is not installed; the eBPF build needs the nightly toolchain through rustup");
    }
    if !toolchain::nightly_has_rust_src() {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain or its rust-src component is missing, so genie's eBPF \
             programs cannot be built: {SETUP_HINT}"
        );
    }
    toolchain::bpf_linker_works().with_context(|| {
        format!("bpf-linker is not installed (or cannot load its LLVM), so genie's eBPF programs cannot be linked: {SETUP_HINT}")
    })
}

/// Builds the eBPF object with BTF and copies it to `opts.output`.
pub fn build(opts: &BuildOptions) -> Result<PathBuf> {
    let linker = check_prerequisites()?;

    let mut cmd = ebpf_cargo("build", &opts.workspace, &opts.target_dir);
    // rustc finds the linker by name; `cargo install` may have put it outside PATH.
    if let Some(dir) = linker.parent() {
        let mut path = OsString::from(dir);
        if let Some(old) = env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
    }

    let output = if opts.from_build_script {
        // Cargo shows a build script's output only when it fails; keep the compiler's messages
        // so a failure explains itself.
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = cmd.output().context("running cargo for the eBPF build")?;
        if !out.status.success() {
            bail!(
                "building {EBPF_PACKAGE} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status
    } else {
        cmd.status().context("running cargo for the eBPF build")?
    };
    if !output.success() {
        bail!("building {EBPF_PACKAGE} failed ({output})");
    }

    let built = opts
        .target_dir
        .join("bpfel-unknown-none/release")
        .join(EBPF_BIN);
    if let Some(parent) = opts.output.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // Copy through a temporary name so a concurrent reader never sees half an object.
    let tmp = opts.output.with_extension("o.tmp");
    fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    fs::rename(&tmp, &opts.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), opts.output.display()))?;
    Ok(opts.output.clone())
}

/// Sources whose change must rebuild the object (for `cargo:rerun-if-changed`).
pub fn inputs(workspace: &Path) -> Vec<PathBuf> {
    [EBPF_PACKAGE, "genie-common"]
        .iter()
        .map(|krate| workspace.join(krate))
        .chain([workspace.join("Cargo.toml"), workspace.join("Cargo.lock")])
        .collect()
}

/// `cargo clippy` for the eBPF crate on its own target (the host build leaves it out). Same
/// flags and target directory as the build, so the two share the compiled `core`.
pub fn clippy_command(workspace: &Path) -> Command {
    let opts = BuildOptions::for_workspace(workspace);
    let mut cmd = ebpf_cargo("clippy", workspace, &opts.target_dir);
    cmd.args(["--", "-D", "warnings"]);
    cmd
}

/// `cargo <subcommand>` on the nightly for the eBPF package and target, with BTF.
fn ebpf_cargo(subcommand: &str, workspace: &Path, target_dir: &Path) -> Command {
    let mut cmd = toolchain::rustup_run(EBPF_TOOLCHAIN, "cargo");
    cmd.current_dir(workspace)
        .args([subcommand, "--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        // BTF for every map and type is what makes `bpftool map dump` print named fields
        // (DESIGN.md §5); aya-ebpf reads the architecture for its pt_regs layouts.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
                "-Cdebuginfo=2".to_owned(),
                "-Clink-arg=--btf".to_owned(),
            ]
            .join("\x1f"),
        );
    cmd
}
