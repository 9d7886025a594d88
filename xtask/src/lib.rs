//! Shared pieces of the developer tasks that the agent's build script also needs.
//!
//! `genie-agent/build.rs` and `cargo xtask build-ebpf` both build the eBPF object through
//! [`ebpf::build`], so there is exactly one recipe for it (DESIGN.md §4, `xtask`).

pub mod ebpf;
pub mod toolchain;
