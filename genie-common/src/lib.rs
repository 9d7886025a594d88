//! The ABI shared by genie's eBPF programs and user space.
//!
//! Every type that crosses the kernel/user boundary lives here once: `#[repr(C)]`, explicit
//! padding, no `bool` or `Option`, and a size assertion, so the eBPF object, the agent and
//! `bpftool` (through BTF) agree on every byte (DESIGN.md §4).
#![no_std]

pub mod maps;
pub mod reason;

pub use maps::{CounterKey, CounterValue, EndpointInfo};
pub use reason::{Direction, Reason};
