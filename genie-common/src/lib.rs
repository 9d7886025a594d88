//! The ABI shared by genie's eBPF programs and user space.
//!
//! Every type that crosses the kernel/user boundary lives here once: `#[repr(C)]`, explicit
//! padding, no `bool` or `Option`, and a size assertion, so the eBPF object, the agent and
//! `bpftool` (through BTF) agree on every byte (DESIGN.md §4). The verdict rules live here too,
//! as pure functions the programs call; the reference model the property test compares them
//! with is written independently (`genie_tests::reference`), so a rule bug cannot be in both.
#![no_std]

pub mod conntrack;
pub mod identity;
pub mod maps;
pub mod policy;
pub mod ratelimit;
pub mod reason;

pub use maps::{CounterKey, CounterValue, EndpointInfo};
pub use reason::{Direction, Reason};
