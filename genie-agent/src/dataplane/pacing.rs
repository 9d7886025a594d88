//! Attaching `pace_tcp`, the `sock_ops` program that paces TCP connections of bandwidth-limited
//! endpoints (genie-ebpf `pacing`), to a cgroup v2 directory — normally the root, so every
//! socket of every pod on the node is covered.
//!
//! Pacing only keeps local TCP senders from hitting their bucket; the bucket enforces either
//! way. So a node without cgroup v2 runs without pacing (logged), not without limits.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, SockOps, links::FdLink};

use super::{Dataplane, DataplaneError, LINKS_DIR, detach_pinned_link};

/// The `sock_ops` program's name in the object.
pub const PACE_TCP_PROGRAM: &str = "pace_tcp";

/// Pin of the pacing link, next to the endpoints' TCX links (so `cleanup` detaches it too).
const PACING_LINK: &str = "pace_tcp";

/// The root of the first cgroup v2 hierarchy in this process's mount table, if any.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // mountinfo(5): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE ...
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let fields: Vec<&str> = before.split_whitespace().collect();
        (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

impl Dataplane {
    /// Attaches `pace_tcp` to `cgroup`, replacing the link a previous agent pinned: the new
    /// link is attached before the old one is detached, so connections are never unpaced
    /// (both programs compute the same rate meanwhile).
    pub fn pace_tcp(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let attach_err = |source| DataplaneError::AttachCgroup {
            program: PACE_TCP_PROGRAM,
            cgroup: cgroup.to_owned(),
            source: Box::new(source),
        };
        let dir = fs::File::open(cgroup).map_err(|source| DataplaneError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let program: &mut SockOps = self
            .ebpf
            .program_mut(PACE_TCP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram {
                name: PACE_TCP_PROGRAM,
            })?
            .try_into()
            .map_err(attach_err)?;
        // A cgroup bpf_link always coexists with other programs; the kernel refuses the
        // BPF_F_ALLOW_MULTI flag on link creation (kernel/bpf/cgroup.c), so `Single` (0).
        let link_id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let link: FdLink = program
            .take_link(link_id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| DataplaneError::Link {
                path: cgroup.to_owned(),
                source,
            })?;
        let links = self.bpffs.join(LINKS_DIR);
        let pin = links.join(PACING_LINK);
        // bpffs refuses names with a dot (EPERM).
        let staged = links.join(format!("{PACING_LINK}_new"));
        // Left by an agent that died between pinning and renaming: that link is attached too.
        detach_pinned_link(&staged)?;
        link.pin(&staged).map_err(|source| DataplaneError::Pin {
            path: staged.clone(),
            source,
        })?;
        detach_pinned_link(&pin)?;
        fs::rename(&staged, &pin).map_err(|source| DataplaneError::Unpin {
            path: staged.clone(),
            source,
        })
    }
}

/// Whether a pacing link is pinned under `bpffs` (metrics; works while the agent is down).
pub fn pacing_attached(bpffs: &Path) -> bool {
    super::sys::obj_get(&bpffs.join(LINKS_DIR).join(PACING_LINK)).is_ok()
}
