//! Files and directories the agent keeps on the node. Their modes never follow the umask: the
//! registry and the attachment cache list every pod on the node and name the delegate binaries
//! DEL runs as root, so nobody but root may read or change them, whatever umask the agent
//! (or a tool that links this library) was started with.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Mode of the state directory and its subdirectories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files in them.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) and makes `dir` itself `0700`, also when it existed with
/// a wider mode (a state directory written by an older version).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content: a
/// temporary file with `mode` set before anything is written to it, fsync, rename, fsync of
/// the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // Appended, not `with_extension`: lease files are named by address, and `198.18.1.5` and
    // `198.18.1.6` would share `198.18.1.tmp`.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` above is masked by the umask; this is not.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn modes_do_not_follow_a_permissive_umask() {
        let dir = std::env::temp_dir().join(format!("genie-statefile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // SAFETY: umask has no preconditions; the old mask is restored below.
        let old = unsafe { libc::umask(0) };
        let result = (|| -> io::Result<(u32, u32)> {
            private_dir(&dir.join("state"))?;
            write_atomically(&dir.join("state/x.json"), b"{}", PRIVATE_FILE_MODE)?;
            Ok((
                fs::metadata(dir.join("state"))?.mode() & 0o777,
                fs::metadata(dir.join("state/x.json"))?.mode() & 0o777,
            ))
        })();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(result.unwrap(), (0o700, 0o600));
    }
}
