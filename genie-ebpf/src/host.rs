//! `to_host`: on the bridge that joins host-side pod interfaces, what the bridge passes up to
//! the node's own stack. Unicast towards the node was decided by the sender's egress program
//! (the node's addresses are HOST); a broadcast or multicast frame, or a unicast one to a
//! subnet's directed broadcast address, cannot be decided there — the same copy the bridge
//! floods to the sender's neighbours also reaches the node. Here such frames from a local
//! endpoint reach the node only under its network's host access (`allowHostAccess`, or
//! `allowHostPorts` for their protocol and port), as DESIGN.md §3 demands of group traffic.

use aya_ebpf::programs::TcContext;
use genie_common::{Direction, Reason, identity::BROADCAST, maps::IpAddr16};

use crate::{
    maps::{ADDRS, SCRATCH},
    metrics,
    parse::{self, Arp, KIND_IP},
    verdict::{classify_addr, group_to_host},
};

/// The verdict for a frame the bridge delivers to the node: `None` passes it on, otherwise
/// it is refused for host access and this names the sending endpoint (id, identity).
#[inline(never)]
fn refuse(ctx: &TcContext) -> Option<(u32, u32)> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: index 0 of a one-entry per-CPU array: this CPU's slot, used by this run only.
    let ip = unsafe { &mut (*scratch).ip };
    let mut arp = Arp::default();
    if parse::parse(ctx, ip, &mut arp) != KIND_IP
        || parse::is_neighbour_discovery(ip)
        || ip.fragment != 0
    {
        return None;
    }
    let group = ip.l2_group != 0
        || parse::is_group_address(&ip.dst)
        || (ip.is_v6 == 0 && classify_addr(&ip.dst) == BROADCAST);
    if !group {
        return None;
    }
    let src: &IpAddr16 = &ip.src;
    // SAFETY: copied out at once.
    let sender = unsafe { ADDRS.get(src) }.copied()?;
    if sender.endpoint_id == 0 {
        // Not a local endpoint: the node's own traffic, or another bridge port's.
        return None;
    }
    group_to_host(sender.identity, ip)
        .is_drop()
        .then_some((sender.endpoint_id, sender.identity))
}

/// Returns whether the frame may go up to the node's stack.
#[inline(always)]
pub fn to_host(ctx: &TcContext) -> bool {
    match refuse(ctx) {
        None => true,
        Some((endpoint_id, identity)) => {
            metrics::count(
                endpoint_id,
                identity,
                Direction::Egress,
                Reason::HostAccess,
                ctx.len(),
            );
            false
        }
    }
}
