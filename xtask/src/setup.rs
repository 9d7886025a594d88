//! `cargo xtask setup`: everything the build, the tests and the demo need, installed
//! idempotently and without questions.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use xtask::toolchain::{self, BPF_LINKER_VERSION, EBPF_TOOLCHAIN};

use crate::util::{is_root, run};

/// Debian packages the tests, demo and benchmarks call.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // Real CNI delegates (bridge, macvlan, ptp, host-local) in /usr/lib/cni.
    "containernetworking-plugins",
    // `ip netns`, veth, bridges, `tc`.
    "iproute2",
    // `bpftool map dump pinned …` for inspection and the tests that check named fields.
    "bpftool",
    // Traffic generators for rate tests and the demo.
    "iperf3",
    "iputils-ping",
];

/// Runs every setup step; returns whether anything was installed.
pub fn setup() -> Result<()> {
    let mut changed = Vec::new();
    if ensure_nightly_rust_src()? {
        changed.push("nightly rust-src");
    }
    if ensure_bpf_linker()? {
        changed.push("bpf-linker");
    }
    if ensure_debian_packages()? {
        changed.push("Debian packages");
    }
    if changed.is_empty() {
        eprintln!(
            "setup: nothing needed doing (nightly rust-src, bpf-linker and Debian packages are present)"
        );
    } else {
        eprintln!("setup: installed {}", changed.join(", "));
    }
    Ok(())
}

fn ensure_nightly_rust_src() -> Result<bool> {
    if toolchain::nightly_has_rust_src() {
        return Ok(false);
    }
    eprintln!("setup: installing the {EBPF_TOOLCHAIN} toolchain's rust-src component");
    let has_nightly = toolchain::rustc_version_info(EBPF_TOOLCHAIN).is_ok();
    let mut cmd = Command::new("rustup");
    if has_nightly {
        cmd.args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]);
    } else {
        cmd.args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ])
        .args(["--component", "rust-src"]);
    }
    run(&mut cmd)?;
    if !toolchain::nightly_has_rust_src() {
        bail!(
            "rustup reported success but the {EBPF_TOOLCHAIN} rust-src component is still missing"
        );
    }
    Ok(true)
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM (DESIGN.md §5): the Debian
/// LLVM is older than the one rustc emits bitcode for.
fn ensure_bpf_linker() -> Result<bool> {
    if toolchain::bpf_linker_works().is_some() {
        return Ok(false);
    }
    let major = toolchain::nightly_llvm_major()?;
    let prefix = llvm_prefix_for_nightly()?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         ({}); this takes a few minutes",
        prefix.display()
    );
    run(Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")]))?;
    if toolchain::bpf_linker_works().is_none() {
        bail!("bpf-linker was installed but does not run; check `bpf-linker --version`");
    }
    Ok(true)
}

/// A lasting directory whose `lib/` links to the nightly's libLLVM under both the name the
/// build looks for (`libLLVM.so`) and the library's soname (what the binary loads at run time
/// through its rpath). It lives under `$CARGO_HOME` because the installed linker keeps pointing
/// into it.
fn llvm_prefix_for_nightly() -> Result<PathBuf> {
    let sysroot_lib = toolchain::nightly_sysroot()?.join("lib");
    let real = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libLLVM.so.") && !path.is_symlink()
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain ships no LLVM library",
                sysroot_lib.display()
            )
        })?;
    let soname = real
        .file_name()
        .context("libLLVM has no file name")?
        .to_owned();
    let prefix = toolchain::cargo_home().join("genie-llvm").join(&soname);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(&soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&real, &link)
            .with_context(|| format!("linking {} to {}", link.display(), real.display()))?;
    }
    Ok(prefix)
}

fn ensure_debian_packages() -> Result<bool> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !debian_package_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root (or install them with apt-get)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "update"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-y", "install", "--no-install-recommends"])
        .args(&missing))?;
    Ok(true)
}

fn debian_package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}
