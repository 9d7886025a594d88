//! The CNI side of genie (thick model, DESIGN.md §4): the `genie-cni` shim forwards each
//! request to the agent, which works out the pod's attachments, delegates to real plugins and
//! attaches genie's programs before ADD returns.

/// The pod annotations are part of the model (what a pod asks for); their CNI-side name stays.
pub use crate::model::annotations;
pub mod backend;
pub mod cache;
pub mod delegate;
pub mod handler;
pub mod install;
pub mod plan;
pub mod result;
pub mod spec;

/// Where the host-local leases of genie's networks live: one directory per network under the
/// agent's state directory.
pub fn ipam_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("ipam")
}
