//! Making sure the pin directory is on a BPF filesystem.
//!
//! Pins only survive the agent on bpffs; on a tmpfs or sysfs path `BPF_OBJ_PIN` fails. Many
//! hosts (and container images) do not mount bpffs at boot, so the agent mounts it at its
//! conventional place, as Cilium and bpftool do.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::DataplaneError;

/// Where bpffs is conventionally mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Ensures `dir` lies on bpffs, mounting bpffs at [`BPFFS_MOUNT`] when `dir` is below it and
/// nothing is mounted there yet.
pub fn ensure_on_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let existing = nearest_existing(dir);
    if is_bpffs(&existing) {
        return Ok(());
    }
    let root = Path::new(BPFFS_MOUNT);
    if dir.starts_with(root) {
        std::fs::create_dir_all(root).map_err(|source| DataplaneError::PinDir {
            path: root.to_owned(),
            source,
        })?;
        if !is_bpffs(root) {
            mount(
                Some("bpf"),
                root,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|source| DataplaneError::MountBpffs {
                path: root.to_owned(),
                source,
            })?;
        }
        if is_bpffs(&nearest_existing(dir)) {
            return Ok(());
        }
    }
    Err(DataplaneError::NotBpffs {
        path: dir.to_owned(),
    })
}

fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}
