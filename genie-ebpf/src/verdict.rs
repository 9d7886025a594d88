//! The decision for one packet on one endpoint interface (DESIGN.md §3): identity from the
//! interface, anti-spoofing, the tenant boundary for broadcast, multicast and neighbour
//! discovery, delivery only to the endpoint's own addresses, then connection tracking (the
//! endpoint's tenant's own table) and policy only for new flows.
//!
//! The stages are separate BPF functions passing pointers into the per-CPU scratch map: the
//! 512-byte stack limit applies to the whole call chain, and the parsed packet plus its flow
//! key do not fit next to the map keys of the decision.

use aya_ebpf::{
    bindings::BPF_ANY, helpers::generated::bpf_ktime_get_coarse_ns, programs::TcContext,
};
use genie_common::{
    Direction, EndpointInfo, Reason,
    conntrack::{REFRESH_NS, flow_key, timeout_ns},
    identity::{BROADCAST, HOST, WORLD},
    maps::{
        AddrInfo, CtKey, CtValue, IpAddr16, PolicyKey, ct_flags, endpoint_flags, identity_flags,
        mac_eq,
    },
    policy::{Side, classify, decide_new_flow, proto},
    ratelimit::kind,
};

use crate::{
    maps::{ADDRS, CIDRS, CONFIG, CONNTRACK, ENDPOINTS, IDENTITIES, POLICY, SCRATCH},
    parse::{
        self, Arp, Ip, KIND_ARP, KIND_IP, KIND_OTHER, ND_ADVERTISEMENT, ND_SOLICITATION, TCP_FIN,
        TCP_RST,
    },
    ratelimit,
};

/// The endpoint key of this program instance (`ENDPOINT_KEY_GLOBAL`): 0 in the shared instance
/// on host-side interfaces (keyed by interface index); the agent loads a separate instance
/// with an in-pod key for each interface it attaches inside a pod's namespace. It lives in
/// `.rodata`, so the verifier sees a constant and drops the branch not taken.
#[unsafe(no_mangle)]
static GENIE_ENDPOINT_KEY: u32 = 0;

/// A packet's flow, as the conntrack stages need it.
#[repr(C)]
pub struct Flow {
    pub key: CtKey,
    pub now: u64,
    pub epoch: u32,
    /// The connection-tracking zone (table) of the endpoint the program runs for.
    pub zone: u32,
    pub src_is_lo: u8,
    pub closing: u8,
    pub _pad: [u8; 6],
}

/// Per-CPU working memory of one program run.
#[repr(C)]
pub struct Scratch {
    pub ip: Ip,
    pub flow: Flow,
}

/// The endpoint the packet belongs to (for counting) and what happens to it.
pub struct Verdict {
    pub endpoint: EndpointInfo,
    pub reason: Reason,
}

#[inline(always)]
pub fn decide(ctx: &TcContext, direction: Direction) -> Verdict {
    // SAFETY: a `static` of the object, read as the loader patched it.
    let fixed_key = unsafe { core::ptr::read_volatile(&GENIE_ENDPOINT_KEY) };
    let key = if fixed_key != 0 {
        fixed_key
    } else {
        // SAFETY: `skb` points at the context the kernel passed in; `ifindex` is readable for
        // TC programs.
        unsafe { (*ctx.skb.skb).ifindex }
    };
    // SAFETY: the value is copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(key) }).copied() else {
        // genie's program on an interface without an endpoint record: mid-setup or
        // mid-teardown. Fail closed.
        return Verdict {
            endpoint: EndpointInfo::default(),
            reason: Reason::UnknownEndpoint,
        };
    };
    let reason = Reason::from_u8(classify_packet(ctx, &endpoint, direction as u8))
        .unwrap_or(Reason::Malformed);
    Verdict { endpoint, reason }
}

/// Parses and decides the packet. Returns a `Reason` discriminant; takes the direction as a
/// byte (a Rust enum in a BPF function's signature becomes BTF the kernel rejects).
#[inline(never)]
fn classify_packet(ctx: &TcContext, endpoint: &EndpointInfo, direction: u8) -> u8 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Reason::Malformed as u8;
    };
    // SAFETY: index 0 of a one-entry per-CPU array: this CPU's slot, used by this run only
    // (TC programs do not nest on one CPU).
    let scratch = unsafe { &mut *scratch };
    let mut arp = Arp::default();
    let reason = match parse::parse(ctx, &mut scratch.ip, &mut arp) {
        KIND_IP => ip_reason(endpoint, &scratch.ip, &mut scratch.flow, direction),
        KIND_ARP => arp_verdict(endpoint, &arp, direction),
        KIND_OTHER => Reason::UnsupportedProtocol,
        _ => Reason::Malformed,
    };
    reason as u8
}

#[inline(always)]
fn mac_ok(endpoint: &EndpointInfo, mac: &[u8; 6]) -> bool {
    mac_eq(&endpoint.mac, &[0; 6]) || mac_eq(&endpoint.mac, mac)
}

#[inline(always)]
fn owns(endpoint: &EndpointInfo, addr: &IpAddr16) -> bool {
    // SAFETY: read at once.
    matches!(unsafe { ADDRS.get(addr) }, Some(AddrInfo { endpoint_id, .. }) if *endpoint_id == endpoint.endpoint_id)
}

/// ARP passes both ways, but what a pod announces must be its own: ARP spoofing is the classic
/// way to steal a neighbour's traffic on a shared segment. Delivered to an endpoint is only
/// what asks about (or answers to) its own address, and whatever the node sends.
#[inline(always)]
fn arp_verdict(endpoint: &EndpointInfo, arp: &Arp, direction: u8) -> Reason {
    if direction == Direction::Ingress as u8 {
        if owns(endpoint, &IpAddr16::from_v4(arp.target_ip))
            || classify_addr(&IpAddr16::from_v4(arp.sender_ip)) == HOST
        {
            return Reason::Forwarded;
        }
        return Reason::WrongDestination;
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

/// Whether a packet is addressed to a group: a broadcast or multicast MAC, or an IPv4
/// multicast, limited-broadcast or IPv6 multicast address.
#[inline(always)]
fn is_group(ip: &Ip) -> bool {
    ip.l2_group != 0 || parse::is_group_address(&ip.dst)
}

/// Broadcast and multicast (DESIGN.md §3): sent freely (the receivers decide), delivered only
/// from the receiver's own identity or the node (and from outside only where external ingress
/// is allowed). What reaches the node's own stack is decided as access to the node: by the
/// sender's egress where its interface leads straight to the stack (`GROUP_TO_HOST`), by
/// `to_host` on the bridge otherwise. Never tracked: a table entry keyed by a group address
/// would admit every receiver's copy.
#[inline(never)]
fn group_verdict(endpoint: &EndpointInfo, ip: &Ip, direction: u8) -> u8 {
    if direction == Direction::Egress as u8 {
        if endpoint.flags & endpoint_flags::GROUP_TO_HOST == 0 {
            return Reason::Forwarded as u8;
        }
        return group_to_host(endpoint.identity, ip) as u8;
    }
    let source = classify_addr(&ip.src);
    let allowed = source == endpoint.identity
        || source == HOST
        || (source == WORLD
            && flags_of(endpoint.identity) & identity_flags::ALLOW_EXTERNAL_INGRESS != 0);
    if allowed {
        Reason::Forwarded as u8
    } else {
        Reason::Multicast as u8
    }
}

/// Whether broadcast or multicast from `identity` may go up to the node's own stack: what
/// access to the node allows a new flow (`allowHostAccess`, or `allowHostPorts` for the
/// packet's protocol and port). Decided by the sender's egress or by `to_host` on its bridge.
#[inline(always)]
pub fn group_to_host(identity: u32, ip: &Ip) -> Reason {
    let sender = Side {
        identity,
        flags: flags_of(identity),
    };
    let host = Side {
        identity: HOST,
        flags: 0,
    };
    decide_new_flow(sender, host, ip.protocol, ip.dport, policy_allows)
}

/// Neighbour discovery and MLD delivered to an endpoint: from the node, anything (router and
/// gateway messages); otherwise a solicitation only for one of the endpoint's addresses, a
/// neighbour advertisement only to one of them (the sender's egress made sure it advertises
/// its own address and MAC) and everything else — router advertisements, redirects, MLD,
/// group messages — only from the endpoint's own identity: another tenant's pod must not
/// become a pod's router (a unicast router advertisement would do it).
#[inline(never)]
fn nd_ingress(endpoint: &EndpointInfo, ip: &Ip) -> u8 {
    let source = classify_addr(&ip.src);
    if source == HOST {
        return Reason::Forwarded as u8;
    }
    if ip.icmp_type == ND_SOLICITATION {
        return if owns(endpoint, &ip.nd_target) {
            Reason::Forwarded as u8
        } else {
            Reason::WrongDestination as u8
        };
    }
    let group = is_group(ip);
    if !group && !owns(endpoint, &ip.dst) {
        return Reason::WrongDestination as u8;
    }
    if source == endpoint.identity || (!group && ip.icmp_type == ND_ADVERTISEMENT) {
        Reason::Forwarded as u8
    } else if group {
        Reason::Multicast as u8
    } else {
        Reason::Policy as u8
    }
}

/// Neighbour discovery and MLD an endpoint sends: from its own addresses (link-local ones
/// included) or, for duplicate address detection and early MLD reports, from `::` (RFC 4862
/// §5.4.2, RFC 3810 §5.2.13); an advertisement only for one of its own addresses, any
/// link-layer address option (in any ND message) only with its own MAC, and no more options
/// than genie reads.
#[inline(always)]
fn nd_egress(endpoint: &EndpointInfo, ip: &Ip) -> Reason {
    if !ip.src.is_unspecified() && !owns(endpoint, &ip.src) {
        return Reason::SpoofedIp;
    }
    if ip.icmp_type == ND_ADVERTISEMENT && !owns(endpoint, &ip.nd_target) {
        return Reason::SpoofedIp;
    }
    if ip.nd_has_lladdr != 0 && !mac_ok(endpoint, &ip.nd_lladdr) {
        return Reason::SpoofedMac;
    }
    if ip.nd_options_unread != 0 {
        return Reason::Malformed;
    }
    Reason::Forwarded
}

#[inline(always)]
fn ip_reason(endpoint: &EndpointInfo, ip: &Ip, flow: &mut Flow, direction: u8) -> Reason {
    let neighbour_discovery = parse::is_neighbour_discovery(ip);
    if direction == Direction::Egress as u8 {
        if !mac_ok(endpoint, &ip.eth_src) {
            return Reason::SpoofedMac;
        }
        if neighbour_discovery {
            return nd_egress(endpoint, ip);
        }
        if !owns(endpoint, &ip.src) {
            return Reason::SpoofedIp;
        }
    } else if neighbour_discovery {
        return Reason::from_u8(nd_ingress(endpoint, ip)).unwrap_or(Reason::Malformed);
    }
    if ip.fragment != 0 {
        return Reason::Fragment;
    }
    if is_group(ip) {
        return Reason::from_u8(group_verdict(endpoint, ip, direction))
            .unwrap_or(Reason::Malformed);
    }
    // A unicast frame reaches an endpoint only when it is addressed to the endpoint: a frame
    // sent to its MAC for another address would be a covert channel into the pod.
    if direction == Direction::Ingress as u8 && !owns(endpoint, &ip.dst) {
        // A subnet's directed broadcast behind a unicast MAC is still broadcast.
        if classify_addr(&ip.dst) == BROADCAST {
            return Reason::from_u8(group_verdict(endpoint, ip, direction))
                .unwrap_or(Reason::Malformed);
        }
        return Reason::WrongDestination;
    }
    flow.zone = endpoint.ct_zone;
    if ip.related != 0 && quoted_flow_tracked(ip, flow.zone) != 0 {
        return Reason::Forwarded;
    }
    let (key, src_is_lo) = flow_key(ip.src, ip.dst, ip.sport, ip.dport, ip.protocol);
    flow.key = key;
    // Coarse time (jiffies resolution) is enough for timeouts of seconds and costs a fraction
    // of reading the clock source per packet.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    flow.now = unsafe { bpf_ktime_get_coarse_ns() };
    flow.epoch = CONFIG.get(0).map(|c| c.policy_epoch).unwrap_or(0);
    flow.src_is_lo = u8::from(src_is_lo);
    flow.closing = u8::from(ip.protocol == proto::TCP && ip.tcp_flags & (TCP_FIN | TCP_RST) != 0);
    match tracked(flow, direction) {
        TRACKED => Reason::Forwarded,
        REVOKED => Reason::Revoked,
        TRACKED_FIRST_INGRESS => {
            // Opened by another local endpoint's egress; this endpoint admits it now.
            if ratelimit::limited(endpoint, kind::FLOWS, direction)
                && ratelimit::take(endpoint, kind::FLOWS, direction, 1) == 0
            {
                remove_tracked(flow);
                Reason::RateLimitQps
            } else {
                Reason::Forwarded
            }
        }
        _ => Reason::from_u8(new_flow(endpoint, ip, direction, flow)).unwrap_or(Reason::Malformed),
    }
}

/// Removes the flow's entry from its zone's table.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in the scratch map; a by-value key would be copied onto the 512-byte stack"
)]
fn remove_tracked(flow: &Flow) {
    if let Some(table) = CONNTRACK.get(flow.zone) {
        let _ = table.remove(&flow.key);
    }
}

const UNTRACKED: u8 = 0;
const TRACKED: u8 = 1;
const REVOKED: u8 = 2;
/// Tracked, and this is the first packet of its opening direction at the receiving endpoint's
/// ingress (a flow between two endpoints of one node is created by the sender's egress; the
/// receiver's ingress QPS limit still applies to it).
const TRACKED_FIRST_INGRESS: u8 = 3;

/// Looks the flow up in conntrack: `TRACKED` (and refreshed) for a live entry still allowed,
/// `REVOKED` (entry deleted) when a policy change disallows it, `UNTRACKED` otherwise.
#[inline(never)]
fn tracked(flow: &Flow, direction: u8) -> u8 {
    let Some(entry) = CONNTRACK.get_value_ptr_mut(flow.zone, &flow.key) else {
        return UNTRACKED;
    };
    // SAFETY: LRU entries may be updated concurrently by another CPU; every field is a plain
    // integer, and a torn timestamp only shifts an expiry by a refresh period.
    let ct = unsafe { &mut *entry };
    if flow.now.saturating_sub(ct.last_seen_ns) > timeout_ns(flow.key.protocol, ct.flags) {
        return UNTRACKED;
    }
    if ct.epoch != flow.epoch {
        // Policy changed since this flow was admitted: check it again as the flow that opened
        // it, and cut it if it is no longer allowed (tightening is immediate).
        if revalidate(&flow.key, ct.flags) != Reason::Forwarded as u8 {
            remove_tracked(flow);
            return REVOKED;
        }
        ct.epoch = flow.epoch;
    }
    if flow.now.saturating_sub(ct.last_seen_ns) > REFRESH_NS {
        ct.last_seen_ns = flow.now;
    }
    if flow.closing != 0 && ct.flags & ct_flags::CLOSING == 0 {
        ct.flags |= ct_flags::CLOSING;
        ct.last_seen_ns = flow.now;
    }
    let opening_direction = (ct.flags & ct_flags::OPENED_BY_LO != 0) == (flow.src_is_lo != 0);
    if direction == Direction::Ingress as u8
        && opening_direction
        && ct.flags & ct_flags::INGRESS_ADMITTED == 0
    {
        ct.flags |= ct_flags::INGRESS_ADMITTED;
        return TRACKED_FIRST_INGRESS;
    }
    TRACKED
}

/// Whether the flow an ICMP error quotes is tracked and live in `zone`: then the error is part
/// of it.
#[inline(never)]
fn quoted_flow_tracked(ip: &Ip, zone: u32) -> u8 {
    let q = &ip.quoted;
    let (key, _) = flow_key(q.src, q.dst, q.sport, q.dport, q.protocol);
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match CONNTRACK.get_value_ptr_mut(zone, &key) {
        // SAFETY: plain integers, read once.
        Some(entry) => u8::from(
            now.saturating_sub(unsafe { (*entry).last_seen_ns })
                <= timeout_ns(q.protocol, unsafe { (*entry).flags }),
        ),
        None => 0,
    }
}

/// The verdict for a tracked flow's opening direction under the current maps.
#[inline(never)]
fn revalidate(key: &CtKey, flags: u8) -> u8 {
    let (src, dst, dport) = if flags & ct_flags::OPENED_BY_LO != 0 {
        (&key.addr_lo, &key.addr_hi, key.port_hi)
    } else {
        (&key.addr_hi, &key.addr_lo, key.port_lo)
    };
    decide_new_flow(
        side_of(src),
        side_of(dst),
        key.protocol,
        dport,
        policy_allows,
    ) as u8
}

/// Decides a new flow and tracks it when allowed. Returns a `Reason` discriminant.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in the scratch map; a by-value key would be copied onto the 512-byte stack"
)]
fn new_flow(endpoint: &EndpointInfo, ip: &Ip, direction: u8, flow: &Flow) -> u8 {
    // The remote side's flags never matter here: they only count for a source or destination
    // that is a local endpoint, and that side is this endpoint. Skipping them saves a lookup
    // per new flow.
    let (src, dst) = if direction == Direction::Egress as u8 {
        (endpoint_side(endpoint), remote_side(&ip.dst))
    } else {
        (remote_side(&ip.src), endpoint_side(endpoint))
    };
    if dst.identity == BROADCAST {
        // A subnet's directed broadcast sent to a unicast MAC: broadcast all the same, and
        // never tracked.
        return group_verdict(endpoint, ip, direction);
    }
    let mut reason = decide_new_flow(src, dst, ip.protocol, ip.dport, policy_allows);
    // QPS counts only flows policy allows, and a refused one leaves no conntrack entry.
    if !reason.is_drop()
        && ratelimit::limited(endpoint, kind::FLOWS, direction)
        && ratelimit::take(endpoint, kind::FLOWS, direction, 1) == 0
    {
        reason = Reason::RateLimitQps;
    }
    if !reason.is_drop() {
        let mut flags = if flow.src_is_lo != 0 {
            ct_flags::OPENED_BY_LO
        } else {
            0
        };
        if direction == Direction::Ingress as u8 {
            flags |= ct_flags::INGRESS_ADMITTED;
        }
        if flow.closing != 0 {
            flags |= ct_flags::CLOSING;
        }
        let value = CtValue {
            last_seen_ns: flow.now,
            epoch: flow.epoch,
            flags,
            _pad: [0; 3],
        };
        // A full table evicts its own least recently used entry — only of this tenant, whose
        // zone it is; an insert can only fail on memory pressure (or a zone the agent has not
        // created yet), and then the next packet of the flow is simply decided again.
        if let Some(table) = CONNTRACK.get(flow.zone) {
            let _ = table.insert(&flow.key, &value, u64::from(BPF_ANY));
        }
    }
    reason as u8
}

#[inline(always)]
fn flags_of(identity: u32) -> u32 {
    // SAFETY: read at once.
    unsafe { IDENTITIES.get(identity) }
        .map(|i| i.flags)
        .unwrap_or(0)
}

#[inline(always)]
fn endpoint_side(endpoint: &EndpointInfo) -> Side {
    Side {
        identity: endpoint.identity,
        flags: flags_of(endpoint.identity),
    }
}

/// Classifies an address: exact endpoint/service address, else longest CIDR, else WORLD.
#[inline(always)]
pub fn classify_addr(addr: &IpAddr16) -> u32 {
    // SAFETY: copied out at once.
    let exact = unsafe { ADDRS.get(addr) }.copied();
    let cidr = if exact.is_some() {
        None
    } else {
        let key = aya_ebpf::btf_maps::lpm_trie::Key::new(128, *addr);
        CIDRS.get(&key).copied()
    };
    classify(exact, cidr)
}

/// An address's identity and that identity's flags (revalidation, where either side may be a
/// local endpoint).
#[inline(always)]
fn side_of(addr: &IpAddr16) -> Side {
    let identity = classify_addr(addr);
    Side {
        identity,
        flags: flags_of(identity),
    }
}

/// The other end of a new flow: its identity only.
#[inline(always)]
fn remote_side(addr: &IpAddr16) -> Side {
    Side {
        identity: classify_addr(addr),
        flags: 0,
    }
}

#[inline(always)]
fn policy_allows(key: &PolicyKey, port: u16) -> bool {
    // SAFETY: the value is only read within this call.
    match unsafe { POLICY.get(key) } {
        Some(value) => value.allows_port(port),
        None => false,
    }
}
