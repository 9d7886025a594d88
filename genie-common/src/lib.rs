//! The ABI shared by genie's eBPF programs and user space.
//!
//! Every type that crosses the kernel/user boundary lives here once: `#[repr(C)]`, explicit
//! padding, no `bool` or `Option`, and a size assertion, so the eBPF object, the agent and
//! `bpftool` (through BTF) agree on every byte (DESIGN.md §4). The verdict rules live here too,
//! as pure functions that the programs and the user-space reference model both call.
#![no_std]

pub mod conntrack;
pub mod identity;
pub mod maps;
pub mod policy;
pub mod ratelimit;
pub mod reason;
#[cfg(any(feature = "user", test))]
pub mod reference;

pub use maps::{CounterKey, CounterValue, EndpointInfo};
pub use reason::{Direction, Reason};
