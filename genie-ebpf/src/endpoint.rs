//! Which endpoint a packet belongs to: always from the interface the program runs on, never
//! from the packet (DESIGN.md §3: identity from the interface, not the source IP).

use aya_ebpf::programs::TcContext;
use genie_common::Reason;

use crate::maps::ENDPOINTS;

pub struct Verdict {
    pub endpoint_id: u32,
    pub reason: Reason,
}

#[inline(always)]
pub fn decide(ctx: &TcContext) -> Verdict {
    // SAFETY: `skb` points at the context the kernel passed in; `ifindex` is readable for TC
    // programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once and never held across a map update.
    match unsafe { ENDPOINTS.get(ifindex) } {
        Some(info) => Verdict {
            endpoint_id: info.endpoint_id,
            reason: Reason::Forwarded,
        },
        // An interface carrying genie's program without an endpoint record is mid-setup or
        // mid-teardown: fail closed.
        None => Verdict {
            endpoint_id: 0,
            reason: Reason::UnknownEndpoint,
        },
    }
}
