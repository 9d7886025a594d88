//! Unique names for everything a test run creates, and removal of what dead runs left.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace and bpffs directory the harness creates.
pub const PREFIX: &str = "genie-t";

/// Root of the harness's bpffs directories.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A fresh name `genie-t<pid>-<n>`: unique among live processes, so parallel runs and parallel
/// tests never collide.
pub fn unique() -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}", std::process::id())
}

/// The pid encoded in a harness name, if it is one.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn is_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bpffs directories left by harness processes that died without
/// unwinding (SIGKILL, abort). Drop handles every other exit.
pub fn sweep_dead_runs() {
    for entry in list_dir("/run/netns") {
        if owner_pid(&entry).is_some_and(|pid| !is_alive(pid)) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &entry])
                .status();
        }
    }
    for entry in list_dir(BPFFS_ROOT) {
        if owner_pid(&entry).is_some_and(|pid| !is_alive(pid)) {
            let _ = genie_agent::dataplane::cleanup(&Path::new(BPFFS_ROOT).join(entry));
        }
    }
    let tmp = std::env::temp_dir();
    for entry in list_dir(&tmp.to_string_lossy()) {
        if owner_pid(&entry).is_some_and(|pid| !is_alive(pid)) {
            let _ = fs::remove_dir_all(tmp.join(entry));
        }
    }
}

/// Names in `dir` that start with the harness prefix.
pub fn list_dir(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// What this process still has: namespaces, bpffs directories and temporary directories with
/// its pid.
pub fn leftovers_of_this_process() -> Vec<PathBuf> {
    let mine = format!("{PREFIX}{}-", std::process::id());
    let mut left = Vec::new();
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_string_lossy();
    for (dir, names) in [
        ("/run/netns", list_dir("/run/netns")),
        (BPFFS_ROOT, list_dir(BPFFS_ROOT)),
        (tmp.as_ref(), list_dir(&tmp)),
    ] {
        left.extend(
            names
                .into_iter()
                .filter(|n| n.starts_with(&mine))
                .map(|n| Path::new(dir).join(n)),
        );
    }
    left
}
