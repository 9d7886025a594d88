//! Running work inside another network namespace.
//!
//! `ip netns exec` remounts `/sys`, which hides bpffs pins; the agent therefore stays in the
//! root mount namespace and moves only a dedicated thread into the target network namespace
//! (`setns(CLONE_NEWNET)` is per thread) for netlink, ifindex and attach work (DESIGN.md §5).

use std::{
    fs::File,
    path::{Path, PathBuf},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Errors entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `setns` refused the file (not a network namespace, or no CAP_SYS_ADMIN).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    /// The work panicked inside the namespace thread.
    #[error("work inside network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// Runs `work` on a fresh thread that has entered the network namespace at `path`
/// (`/run/netns/<name>`, `/proc/<pid>/ns/net`, …) and returns its result. The calling thread's
/// namespace never changes.
pub fn run_in<T, F>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Panicked {
                path: path.to_owned(),
            })?
    })
}

/// The path of a namespace created by `ip netns add <name>`.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}
