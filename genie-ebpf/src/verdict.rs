//! The decision for one packet on one endpoint interface (DESIGN.md §3): identity from the
//! interface, anti-spoofing, connection tracking first, policy only for new flows.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns, programs::TcContext};
use genie_common::{
    Direction, EndpointInfo, Reason,
    conntrack::{REFRESH_NS, flow_key, timeout_ns},
    maps::{AddrInfo, CtValue, IpAddr16, ct_flags},
    policy::{Side, classify, decide_new_flow, proto},
};

use crate::{
    maps::{ADDRS, CIDRS, CONFIG, CONNTRACK, ENDPOINTS, IDENTITIES, POLICY},
    parse::{self, Arp, Ip, Parsed, TCP_FIN, TCP_RST},
};

/// The endpoint the packet belongs to (for counting) and what happens to it.
pub struct Verdict {
    pub endpoint: EndpointInfo,
    pub reason: Reason,
}

#[inline(always)]
pub fn decide(ctx: &TcContext, direction: Direction) -> Verdict {
    // SAFETY: `skb` points at the context the kernel passed in; `ifindex` is readable for TC
    // programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(ifindex) }).copied() else {
        // genie's program on an interface without an endpoint record: mid-setup or
        // mid-teardown. Fail closed.
        return Verdict {
            endpoint: EndpointInfo::default(),
            reason: Reason::UnknownEndpoint,
        };
    };
    let reason = match parse::parse(ctx) {
        Err(()) => Reason::Malformed,
        Ok(Parsed::Other) => Reason::UnsupportedProtocol,
        Ok(Parsed::Arp(arp)) => arp_verdict(&endpoint, &arp, direction),
        Ok(Parsed::Ip(ip)) => Reason::from_u8(ip_verdict(&endpoint, &ip, direction as u8))
            .unwrap_or(Reason::Malformed),
    };
    Verdict { endpoint, reason }
}

#[inline(always)]
fn mac_ok(endpoint: &EndpointInfo, mac: &[u8; 6]) -> bool {
    endpoint.mac == [0; 6] || endpoint.mac == *mac
}

#[inline(always)]
fn owns(endpoint: &EndpointInfo, addr: &IpAddr16) -> bool {
    // SAFETY: copied out at once.
    matches!(unsafe { ADDRS.get(addr) }, Some(AddrInfo { endpoint_id, .. }) if *endpoint_id == endpoint.endpoint_id)
}

/// ARP passes both ways, but what a pod announces must be its own: ARP spoofing is the classic
/// way to steal a neighbour's traffic on a shared segment.
#[inline(always)]
fn arp_verdict(endpoint: &EndpointInfo, arp: &Arp, direction: Direction) -> Reason {
    if direction == Direction::Ingress {
        return Reason::Forwarded;
    }
    if !mac_ok(endpoint, &arp.eth_src) || !mac_ok(endpoint, &arp.sender_mac) {
        return Reason::SpoofedMac;
    }
    // 0.0.0.0 is an ARP probe (RFC 5227).
    if arp.sender_ip != [0; 4] && !owns(endpoint, &IpAddr16::from_v4(arp.sender_ip)) {
        return Reason::SpoofedIp;
    }
    Reason::Forwarded
}

// The stages below are separate BPF functions so that no single stack frame holds every
// temporary of the pipeline (512-byte BPF stack).
// Returns a `Reason` discriminant and takes the direction as a byte: plain integers keep the
// function's BTF signature loadable (see `parse`).
#[inline(never)]
fn ip_verdict(endpoint: &EndpointInfo, ip: &Ip, direction: u8) -> u8 {
    ip_reason(
        endpoint,
        ip,
        if direction == Direction::Egress as u8 {
            Direction::Egress
        } else {
            Direction::Ingress
        },
    ) as u8
}

#[inline(always)]
fn ip_reason(endpoint: &EndpointInfo, ip: &Ip, direction: Direction) -> Reason {
    let neighbour_discovery = parse::is_neighbour_discovery(ip);
    if direction == Direction::Egress {
        if !mac_ok(endpoint, &ip.eth_src) {
            return Reason::SpoofedMac;
        }
        let link_local_nd = neighbour_discovery && parse::is_link_local_or_unspecified(&ip.src);
        if !link_local_nd && !owns(endpoint, &ip.src) {
            return Reason::SpoofedIp;
        }
    }
    if neighbour_discovery {
        return Reason::Forwarded;
    }
    if ip.fragment {
        return Reason::Fragment;
    }
    let (key, src_is_lo) = flow_key(ip.src, ip.dst, ip.sport, ip.dport, ip.protocol);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let epoch = CONFIG.get(0).map(|c| c.policy_epoch).unwrap_or(0);
    let closing = ip.protocol == proto::TCP && ip.tcp_flags & (TCP_FIN | TCP_RST) != 0;

    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: LRU entries may be updated concurrently by another CPU; every field is a
        // plain integer, and a torn timestamp only shifts an expiry by a refresh period.
        let ct = unsafe { &mut *entry };
        if now.saturating_sub(ct.last_seen_ns) <= timeout_ns(ip.protocol, ct.flags) {
            if ct.epoch != epoch {
                // Policy changed since this flow was admitted: check it again as the flow
                // that opened it, and cut it if it is no longer allowed.
                let opened_by_lo = ct.flags & ct_flags::OPENED_BY_LO != 0;
                let (src, dst, dport) = if opened_by_lo {
                    (key.addr_lo, key.addr_hi, key.port_hi)
                } else {
                    (key.addr_hi, key.addr_lo, key.port_lo)
                };
                let reason = decide_new_flow(
                    side_of(&src),
                    side_of(&dst),
                    ip.protocol,
                    dport,
                    policy_allows,
                );
                if reason.is_drop() {
                    let _ = CONNTRACK.remove(key);
                    return Reason::Revoked;
                }
                ct.epoch = epoch;
            }
            if now.saturating_sub(ct.last_seen_ns) > REFRESH_NS {
                ct.last_seen_ns = now;
            }
            if closing && ct.flags & ct_flags::CLOSING == 0 {
                ct.flags |= ct_flags::CLOSING;
                ct.last_seen_ns = now;
            }
            return Reason::Forwarded;
        }
    }

    // A new flow (or an expired entry).
    let (src, dst) = match direction {
        Direction::Egress => (endpoint_side(endpoint), side_of(&ip.dst)),
        Direction::Ingress => (side_of(&ip.src), endpoint_side(endpoint)),
    };
    let reason = decide_new_flow(src, dst, ip.protocol, ip.dport, policy_allows);
    if !reason.is_drop() {
        let mut flags = if src_is_lo { ct_flags::OPENED_BY_LO } else { 0 };
        if closing {
            flags |= ct_flags::CLOSING;
        }
        let value = CtValue {
            last_seen_ns: now,
            epoch,
            flags,
            _pad: [0; 3],
        };
        // A full LRU evicts the oldest entry; an insert can only fail on memory pressure, and
        // then the next packet of the flow is simply decided again.
        let _ = CONNTRACK.insert(key, value, u64::from(BPF_ANY));
    }
    reason
}

#[inline(always)]
fn identity_flags(identity: u32) -> u32 {
    // SAFETY: copied out at once.
    unsafe { IDENTITIES.get(identity) }
        .map(|i| i.flags)
        .unwrap_or(0)
}

#[inline(always)]
fn endpoint_side(endpoint: &EndpointInfo) -> Side {
    Side {
        identity: endpoint.identity,
        flags: identity_flags(endpoint.identity),
    }
}

/// Classifies an address: exact endpoint/service address, else longest CIDR, else WORLD.
#[inline(always)]
fn side_of(addr: &IpAddr16) -> Side {
    // SAFETY: copied out at once.
    let exact = unsafe { ADDRS.get(addr) }.copied();
    let cidr = if exact.is_some() {
        None
    } else {
        let key = aya_ebpf::btf_maps::lpm_trie::Key::new(128, *addr);
        CIDRS.get(&key).copied()
    };
    let identity = classify(exact, cidr);
    Side {
        identity,
        flags: identity_flags(identity),
    }
}

#[inline(always)]
fn policy_allows(key: &genie_common::maps::PolicyKey, port: u16) -> bool {
    // SAFETY: the value is only read within this call.
    match unsafe { POLICY.get(key) } {
        Some(value) => value.allows_port(port),
        None => false,
    }
}
