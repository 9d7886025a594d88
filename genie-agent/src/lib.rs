//! genie's node agent: loads the eBPF dataplane, pins it, attaches it to pod interfaces and
//! reads it back.

pub mod cli;
pub mod dataplane;
pub mod netns;

/// The eBPF object built by `build.rs` (`xtask::ebpf`), with BTF.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/genie.bpf.o"));

/// Default root of genie's pins in bpffs (DESIGN.md §1).
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/genie";
