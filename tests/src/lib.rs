//! The privileged test harness: network-namespace topologies, traffic between pods, and
//! `BPF_PROG_TEST_RUN` on crafted packets.
//!
//! Everything a test creates lives in network namespaces and a bpffs directory named after the
//! test process and a sequence number, and is removed on drop — also when the test panics.
//! Only 198.18.0.0/15 is used, and nothing is added to the root namespace (DESIGN.md §6).

pub mod apiserver;
pub mod cni;
pub mod demo;
pub mod fixtures;
pub mod l2;
pub mod names;
pub mod node;
pub mod packet;
pub mod probe;
pub mod prometheus;
pub mod rbac;
pub mod reference;
pub mod topology;
pub mod traffic;

pub use node::TestNode;
pub use topology::{Pod, Topology};

/// Fails the calling test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged tests need root (they load eBPF programs and create network namespaces): \
         run them through `cargo xtask test`"
    );
}
