//! genie's node agent: turns `PhysicalNetwork`, `LogicalNetwork` and `Tenant` objects plus the
//! endpoints registered on this node into BPF maps, and keeps genie's programs attached to
//! every endpoint interface.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod endpoint;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod reconcile;
pub mod shim;
pub mod source;
pub mod statefile;

/// The eBPF object built by `build.rs` (`xtask::ebpf`), with BTF.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/genie.bpf.o"));

/// Default root of genie's pins in bpffs (DESIGN.md §1).
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/genie";
