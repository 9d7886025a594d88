//! Property test: random identities, flags, policy matrices, limits, connection-tracking zones
//! and packet sequences — replies, ICMP errors, policy tightening mid-flow, flows aging past
//! their timeouts, broadcast and multicast, neighbour discovery, frames for other addresses —
//! go through the kernel program (`BPF_PROG_TEST_RUN`) and through the reference model in
//! `genie_tests::reference`, which is written from the README without the kernel's rule code.
//! Every packet must get the same reason from both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use genie_agent::{
    dataplane::{Dataplane, PinnedMaps, interface_index},
    reconcile::{DesiredState, addr16, cidr_key},
};
use genie_common::{
    Direction, EndpointInfo, Reason,
    identity::{BROADCAST, DNS, HOST},
    maps::{
        AddrInfo, CidrInfo, IdentityInfo, PolicyKey, PolicyValue, PortRange, endpoint_flags,
        identity_flags,
    },
    ratelimit::{BucketConfig, BucketKey, kind, limit_flags},
};
use genie_tests::{
    Topology,
    packet::{self, Fragment, L4, Packet, icmp, tcp},
    probe::Probe,
    reference::{self, Class, Frame, IpFrame, Model, Rule},
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const ENDPOINTS: usize = 5;
const IDENTITIES: [u32; 4] = [1000, 1001, 1002, 1003];
const PORTS: [u16; 5] = [53, 80, 443, 8080, 9999];
/// Protocols of policy entries: 0 (every protocol), TCP, UDP, ICMP, ICMPv6.
const PROTOCOLS: [u8; 5] = [0, 6, 17, 1, 58];
/// Seconds a step may age every tracked flow by (0: none).
const AGING: [u64; 4] = [0, 7, 25, 130];

/// One endpoint of a random node.
#[derive(Clone, Debug)]
struct EndpointSetup {
    identity: usize,
    enforce_mac: bool,
    group_to_host: bool,
    /// New flows its QPS buckets admit (egress, ingress); `None`: no bucket.
    flows: [Option<u64>; 2],
    /// Bytes its bandwidth buckets pass (egress, ingress).
    bytes: [Option<u64>; 2],
}

/// A random node configuration.
#[derive(Clone, Debug)]
struct Setup {
    endpoints: Vec<EndpointSetup>,
    /// Flags per identity.
    flags: Vec<u32>,
    /// (src identity index or 4 = HOST, dst identity index or 4 = HOST, protocol index, port
    /// mask over PORTS; 0 = all ports).
    policy: Vec<(usize, usize, usize, u8)>,
}

/// A random packet, as indices into pools (so shrinking yields small, readable cases).
#[derive(Clone, Debug)]
struct PacketChoice {
    endpoint: usize,
    egress: bool,
    v6: bool,
    /// 0 own, 1 another endpoint, 2 identity subnet, 3 host, 4 world, 5 dns, 6 another
    /// endpoint's link-local, 7 a group address, 8 a directed broadcast.
    peer_kind: usize,
    peer_index: usize,
    /// 0 TCP, 1 UDP, 2 ICMP echo, 3 GRE, 4 ND solicitation, 5 ND advertisement, 6 ARP, 7 LLDP.
    kind: usize,
    port: usize,
    sport: usize,
    flags: usize,
    fragment: usize,
    wrong_mac: bool,
    spoof_source: bool,
    /// The Ethernet destination is the broadcast address.
    l2_broadcast: bool,
    /// Received, but addressed to another address than the endpoint's.
    misdirected: bool,
    /// ND target: 0 own address, 1 own link-local, 2 another's address, 3 another's link-local;
    /// with the link-layer option 0 none, 1 own MAC, 2 another MAC.
    nd_target: usize,
    nd_option: usize,
    /// Send the reply of the packet that passed this many passed packets back, where that one
    /// went (on odd steps the packet itself again), instead (0 = none).
    reply_of: usize,
    /// Remove one policy entry (on even steps, every entry) and bump the epoch before this
    /// packet.
    tighten: bool,
    /// Send an ICMP error about the packet this many steps back instead (0 = none).
    error_of: usize,
    /// Age every tracked flow by `AGING[aging]` seconds before this packet.
    aging: usize,
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop::sample::select(vec![None, None, None, Some(0), Some(1), Some(2)])
}

fn byte_limit() -> impl Strategy<Value = Option<u64>> {
    prop::sample::select(vec![None, None, None, Some(100), Some(400)])
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    let endpoint = (
        0..IDENTITIES.len(),
        any::<bool>(),
        prop::bool::weighted(0.3),
        [limit(), limit()],
        [byte_limit(), byte_limit()],
    )
        .prop_map(
            |(identity, enforce_mac, group_to_host, flows, bytes)| EndpointSetup {
                identity,
                enforce_mac,
                group_to_host,
                flows,
                bytes,
            },
        );
    (
        prop::collection::vec(endpoint, ENDPOINTS),
        prop::collection::vec(0u32..8, IDENTITIES.len()),
        prop::collection::vec(
            (0..5usize, 0..5usize, 0..PROTOCOLS.len(), any::<u8>()),
            0..16,
        ),
    )
        .prop_map(|(endpoints, flags, mut policy)| {
            // One entry per key, the last one, as the map keeps it.
            let mut keys = std::collections::BTreeSet::new();
            policy.reverse();
            policy.retain(|e| keys.insert(policy_key(e)));
            policy.reverse();
            Setup {
                endpoints,
                flags,
                policy,
            }
        })
}

fn packet_strategy() -> impl Strategy<Value = PacketChoice> {
    (
        (
            0..ENDPOINTS + 1,
            any::<bool>(),
            any::<bool>(),
            // Mostly flows between endpoints, which policy decides and conntrack keeps.
            prop::sample::select(vec![0usize, 1, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8]),
            0..5usize,
            prop::sample::select(vec![0usize, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7]),
            0..PORTS.len(),
            0..2usize,
        ),
        (
            0..3usize,
            prop::sample::select(vec![0usize, 0, 0, 0, 1, 2]),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            0..4usize,
            0..3usize,
        ),
        (
            prop::sample::select(vec![0usize, 0, 0, 1, 2, 3]),
            prop::bool::weighted(0.1),
            prop::sample::select(vec![0usize, 0, 0, 0, 0, 1, 2]),
            prop::sample::select(vec![0usize, 0, 0, 0, 0, 0, 1, 2, 3]),
        ),
    )
        .prop_map(
            |(
                (endpoint, egress, v6, peer_kind, peer_index, kind, port, sport),
                (
                    flags,
                    fragment,
                    wrong_mac,
                    spoof_source,
                    l2_broadcast,
                    misdirected,
                    nd_target,
                    nd_option,
                ),
                (reply_of, tighten, error_of, aging),
            )| PacketChoice {
                endpoint,
                egress,
                v6,
                peer_kind,
                peer_index,
                kind,
                port,
                sport,
                flags,
                fragment,
                wrong_mac,
                spoof_source,
                l2_broadcast,
                misdirected,
                nd_target,
                nd_option,
                reply_of,
                tighten,
                error_of,
                aging,
            },
        )
}

fn endpoint_addr(i: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, i as u16 + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 50, i as u8 + 1))
    }
}

fn link_local(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x50, i as u16 + 1))
}

fn subnet_addr(identity: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x60 + identity as u16,
            0,
            0,
            0,
            0,
            7,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 60 + identity as u8, 7))
    }
}

fn subnet(identity: usize, v6: bool) -> ipnet::IpNet {
    ipnet::IpNet::new(subnet_addr(identity, v6), if v6 { 64 } else { 24 })
        .unwrap()
        .trunc()
}

fn special(kind: usize, v6: bool) -> IpAddr {
    let (v4, v6addr): (Ipv4Addr, Ipv6Addr) = match kind {
        3 => (
            Ipv4Addr::new(198, 18, 70, 1),
            "2001:db8:70::1".parse().unwrap(),
        ),
        4 => (
            Ipv4Addr::new(198, 19, 1, 1),
            "2001:db8:ffff::1".parse().unwrap(),
        ),
        _ => (
            Ipv4Addr::new(198, 18, 71, 53),
            "2001:db8:71::53".parse().unwrap(),
        ),
    };
    if v6 {
        IpAddr::V6(v6addr)
    } else {
        IpAddr::V4(v4)
    }
}

/// Group destinations: the limited broadcast, mDNS, an administratively scoped group; and the
/// IPv6 all-nodes and mDNS groups.
fn group(index: usize, v6: bool) -> IpAddr {
    if v6 {
        ["ff02::1", "ff02::fb", "ff05::1:3"][index % 3]
            .parse()
            .unwrap()
    } else {
        ["255.255.255.255", "224.0.0.251", "239.1.1.1"][index % 3]
            .parse()
            .unwrap()
    }
}

/// IPv4 directed broadcasts: the endpoints' /24 and each identity's subnet.
fn directed(index: usize) -> IpAddr {
    if index == 0 {
        IpAddr::V4(Ipv4Addr::new(198, 18, 50, 255))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 59 + index as u8, 255))
    }
}

fn mac_of(i: usize) -> [u8; 6] {
    [0x02, 0x67, 0, 0, 1, i as u8 + 1]
}

fn class_of(index: usize) -> Class {
    if index < IDENTITIES.len() {
        Class::Identity(IDENTITIES[index])
    } else {
        Class::Host
    }
}

fn identity_or_host(index: usize) -> u32 {
    if index < IDENTITIES.len() {
        IDENTITIES[index]
    } else {
        HOST
    }
}

/// The kernel's policy key of a setup entry.
fn policy_key(entry: &(usize, usize, usize, u8)) -> PolicyKey {
    PolicyKey {
        src_identity: identity_or_host(entry.0),
        dst_identity: identity_or_host(entry.1),
        protocol: PROTOCOLS[entry.2],
        _pad: [0; 3],
    }
}

/// The ports of a setup entry: every port for "every protocol" and ICMP (as reconcile writes
/// them), else the masked ones (none masked: every port).
fn entry_ports(entry: &(usize, usize, usize, u8)) -> Vec<(u16, u16)> {
    if matches!(PROTOCOLS[entry.2], 0 | 1 | 58) || entry.3 & 0x1f == 0 {
        return Vec::new();
    }
    PORTS
        .iter()
        .enumerate()
        .filter(|(bit, _)| entry.3 & (1 << bit) != 0)
        .map(|(_, p)| (*p, *p))
        .collect()
}

fn zone_of(identity_index: usize) -> u32 {
    (identity_index % 2) as u32
}

/// The maps for a setup.
fn desired(setup: &Setup, ifindexes: &[u32]) -> DesiredState {
    let mut state = DesiredState::default();
    state.ct_zones.insert(0, 4096);
    state.ct_zones.insert(1, 4096);
    for (i, &flags) in setup.flags.iter().enumerate() {
        state.identities.insert(
            IDENTITIES[i],
            IdentityInfo {
                flags,
                ct_zone: zone_of(i),
                ..IdentityInfo::default()
            },
        );
        for v6 in [false, true] {
            state.cidrs.insert(
                cidr_key(subnet(i, v6)),
                CidrInfo {
                    identity: IDENTITIES[i],
                },
            );
        }
    }
    for index in 0..=IDENTITIES.len() {
        state.addrs.insert(
            addr16(directed(index)),
            AddrInfo {
                identity: BROADCAST,
                endpoint_id: 0,
            },
        );
    }
    for v6 in [false, true] {
        state.cidrs.insert(
            cidr_key(ipnet::IpNet::from(special(3, v6))),
            CidrInfo { identity: HOST },
        );
        state.addrs.insert(
            addr16(special(5, v6)),
            AddrInfo {
                identity: DNS,
                endpoint_id: 0,
            },
        );
    }
    for (i, ep) in setup.endpoints.iter().enumerate() {
        let id = i as u32 + 1;
        let identity = IDENTITIES[ep.identity];
        let mut limits = 0;
        for (direction, (flows, bytes)) in ep.flows.iter().zip(ep.bytes).enumerate() {
            for (k, units) in [(kind::FLOWS, *flows), (kind::BYTES, bytes)] {
                let Some(units) = units else { continue };
                limits |= limit_flags::of(k, direction as u8);
                // One unit a second: in a test case's milliseconds the bucket never refills.
                state.buckets.insert(
                    BucketKey::for_endpoint(id, identity, limits, k, direction as u8),
                    BucketConfig::new(1, units),
                );
            }
        }
        state.endpoints.insert(
            ifindexes[i],
            EndpointInfo {
                endpoint_id: id,
                identity,
                mac: if ep.enforce_mac { mac_of(i) } else { [0; 6] },
                limits,
                flags: if ep.group_to_host {
                    endpoint_flags::GROUP_TO_HOST
                } else {
                    0
                },
                ct_zone: zone_of(ep.identity),
            },
        );
        for addr in [
            endpoint_addr(i, false),
            endpoint_addr(i, true),
            link_local(i),
        ] {
            state.addrs.insert(
                addr16(addr),
                AddrInfo {
                    identity,
                    endpoint_id: id,
                },
            );
        }
    }
    for entry in &setup.policy {
        let mut value = PolicyValue::default();
        for (first, last) in entry_ports(entry) {
            value.ranges[value.count as usize] = PortRange { first, last };
            value.count += 1;
        }
        state.policy.insert(policy_key(entry), value);
    }
    state
}

/// The same configuration as the reference model sees it.
fn model_of(setup: &Setup, ifindexes: &[u32], epoch: u32) -> Model {
    let mut model = Model::default();
    model.epoch = epoch;
    for (i, &flags) in setup.flags.iter().enumerate() {
        model.flags.insert(
            IDENTITIES[i],
            reference::Flags {
                host: flags & identity_flags::ALLOW_HOST != 0,
                external: flags & identity_flags::ALLOW_EXTERNAL != 0,
                external_ingress: flags & identity_flags::ALLOW_EXTERNAL_INGRESS != 0,
            },
        );
        for v6 in [false, true] {
            model
                .prefixes
                .push((subnet(i, v6), Class::Identity(IDENTITIES[i])));
        }
    }
    for index in 0..=IDENTITIES.len() {
        model
            .exact
            .insert(directed(index), (Class::Broadcast, None));
    }
    for v6 in [false, true] {
        model
            .prefixes
            .push((ipnet::IpNet::from(special(3, v6)), Class::Host));
        model.exact.insert(special(5, v6), (Class::Dns, None));
    }
    for (i, ep) in setup.endpoints.iter().enumerate() {
        let id = i as u32 + 1;
        model.endpoints.insert(
            ifindexes[i],
            reference::Endpoint {
                id,
                identity: IDENTITIES[ep.identity],
                mac: ep.enforce_mac.then(|| mac_of(i)),
                zone: zone_of(ep.identity),
                group_to_host: ep.group_to_host,
                flows: ep.flows,
                bytes: ep.bytes,
            },
        );
        for addr in [
            endpoint_addr(i, false),
            endpoint_addr(i, true),
            link_local(i),
        ] {
            model
                .exact
                .insert(addr, (Class::Identity(IDENTITIES[ep.identity]), Some(id)));
        }
    }
    model.rules = setup.policy.iter().map(rule_of).collect();
    model
}

fn rule_of(entry: &(usize, usize, usize, u8)) -> Rule {
    let protocol = PROTOCOLS[entry.2];
    Rule {
        src: class_of(entry.0),
        dst: class_of(entry.1),
        protocol: (protocol != 0).then_some(protocol),
        ports: entry_ports(entry),
    }
}

/// The IP frame description of a crafted packet, as the test built it.
fn ip_frame(p: &Packet, bytes: &[u8]) -> IpFrame {
    let fragment = p.fragment != Fragment::None;
    let (protocol, sport, dport, fin_or_rst, icmp_type, nd_target, nd_lladdr) = match p.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => (
            6,
            sport,
            dport,
            flags & (tcp::FIN | tcp::RST) != 0,
            None,
            None,
            None,
        ),
        L4::Udp { sport, dport } => (17, sport, dport, false, None, None, None),
        L4::Icmp { icmp_type, id } => {
            let echo = matches!(icmp_type, 0 | 8 | 128 | 129);
            let id = if echo { id } else { 0 };
            (
                if p.src.is_ipv6() { 58 } else { 1 },
                id,
                id,
                false,
                Some(icmp_type),
                None,
                None,
            )
        }
        L4::Nd {
            icmp_type,
            target,
            lladdr,
        } => (
            58,
            0,
            0,
            false,
            Some(icmp_type),
            Some(IpAddr::V6(target)),
            lladdr,
        ),
        L4::Other { protocol } => (protocol, 0, 0, false, None, None, None),
    };
    let (sport, dport, fin_or_rst) = if fragment {
        (0, 0, false)
    } else {
        (sport, dport, fin_or_rst)
    };
    IpFrame {
        eth_src: p.src_mac,
        eth_dst: p.dst_mac,
        src: p.src,
        dst: p.dst,
        protocol,
        sport,
        dport,
        fin_or_rst,
        icmp_type: if fragment { None } else { icmp_type },
        fragment,
        nd_target,
        nd_lladdr,
        quoted: None,
        len: bytes.len() as u64,
    }
}

/// Builds the frame and the model's view of it; also the packet, for replies and errors.
fn build(choice: &PacketChoice) -> (Vec<u8>, Frame, Option<Packet>) {
    let ep = choice.endpoint.min(ENDPOINTS - 1);
    let other = (ep + 1 + choice.peer_index) % ENDPOINTS;
    let v6 = choice.v6;
    let own = endpoint_addr(ep, v6);
    let peer = match choice.peer_kind {
        0 => own,
        1 => endpoint_addr(other, v6),
        2 => subnet_addr(choice.peer_index % IDENTITIES.len(), v6),
        6 if v6 => link_local(other),
        7 => group(choice.peer_index, v6),
        8 if !v6 => directed(choice.peer_index),
        3..=5 => special(choice.peer_kind, v6),
        _ => endpoint_addr(other, v6),
    };
    let group_peer = peer_kind_group(choice);
    let src_mac = if choice.wrong_mac {
        mac_of(ep + 1)
    } else {
        mac_of(ep)
    };
    let (mut src, mut dst) = if choice.egress || group_peer {
        (own, peer)
    } else {
        (peer, own)
    };
    if !choice.egress && group_peer {
        // A group packet arriving: from someone else.
        src = endpoint_addr(other, v6);
    }
    if choice.spoof_source {
        src = endpoint_addr((ep + 2) % ENDPOINTS, v6);
    }
    if !choice.egress && choice.misdirected && !group_peer {
        dst = [endpoint_addr(other, v6), special(4, v6)][choice.peer_index % 2];
    }
    let dst_mac = if choice.l2_broadcast || group_peer {
        [0xff; 6]
    } else {
        [2, 0x67, 0, 0, 0, 1]
    };
    match choice.kind {
        6 => {
            let (IpAddr::V4(own4), IpAddr::V4(other4)) =
                (endpoint_addr(ep, false), endpoint_addr(other, false))
            else {
                unreachable!()
            };
            let (sender, target) = match (choice.egress, choice.peer_kind) {
                (true, 0) => (Ipv4Addr::UNSPECIFIED, other4),
                (true, _) if choice.spoof_source => (other4, own4),
                (true, _) => (own4, other4),
                (false, 3) => (Ipv4Addr::new(198, 18, 70, 1), other4),
                (false, _) if choice.misdirected => (other4, Ipv4Addr::new(198, 18, 50, 99)),
                (false, _) => (other4, own4),
            };
            let frame = packet::arp_request(src_mac, src_mac, sender, target);
            (
                frame,
                Frame::Arp {
                    eth_src: src_mac,
                    sender_mac: src_mac,
                    sender,
                    target,
                    len: 42,
                },
                None,
            )
        }
        7 => (packet::lldp(src_mac), Frame::Other, None),
        _ => {
            let port = PORTS[choice.port];
            let sport = [1000u16, 2000][choice.sport];
            let flags = [tcp::SYN, tcp::ACK, tcp::FIN | tcp::ACK][choice.flags];
            let nd_target = |index: usize| -> Ipv6Addr {
                let IpAddr::V6(t) = [
                    endpoint_addr(ep, true),
                    link_local(ep),
                    endpoint_addr(other, true),
                    link_local(other),
                ][index] else {
                    unreachable!()
                };
                t
            };
            let lladdr = [None, Some(mac_of(ep)), Some(mac_of(other))][choice.nd_option];
            let (l4, src, dst) = match choice.kind {
                0 => (
                    L4::Tcp {
                        sport,
                        dport: port,
                        flags,
                    },
                    src,
                    dst,
                ),
                1 => (L4::Udp { sport, dport: port }, src, dst),
                2 => (
                    L4::Icmp {
                        icmp_type: if v6 {
                            icmp::ECHO_REQUEST_V6
                        } else {
                            icmp::ECHO_REQUEST_V4
                        },
                        id: port,
                    },
                    src,
                    dst,
                ),
                3 => (L4::Other { protocol: 47 }, src, dst),
                // Neighbour discovery is IPv6 only: from a link-local (or the endpoint's
                // global) address, to a group or unicast.
                k => {
                    let v6_src = if choice.egress {
                        if choice.spoof_source {
                            link_local(other)
                        } else if choice.peer_index.is_multiple_of(3) {
                            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                        } else {
                            link_local(ep)
                        }
                    } else {
                        link_local(other)
                    };
                    let v6_dst = if group_peer || choice.peer_kind == 0 {
                        group(0, true)
                    } else if choice.egress {
                        link_local(other)
                    } else {
                        link_local(ep)
                    };
                    (
                        L4::Nd {
                            icmp_type: if k == 4 {
                                icmp::NEIGHBOUR_SOLICITATION
                            } else {
                                icmp::NEIGHBOUR_ADVERTISEMENT
                            },
                            target: nd_target(choice.nd_target),
                            lladdr,
                        },
                        v6_src,
                        v6_dst,
                    )
                }
            };
            let fragment = if matches!(l4, L4::Nd { .. }) {
                Fragment::None
            } else {
                [Fragment::None, Fragment::First, Fragment::Later][choice.fragment]
            };
            let p = Packet {
                src_mac,
                dst_mac,
                src,
                dst,
                l4,
                fragment,
            };
            let bytes = p.frame();
            let frame = Frame::Ip(ip_frame(&p, &bytes));
            (bytes, frame, Some(p))
        }
    }
}

fn peer_kind_group(choice: &PacketChoice) -> bool {
    choice.peer_kind == 7 || (choice.peer_kind == 8 && !choice.v6)
}

/// An ICMP error about `quoted` travelling back to its sender, and the model's view of it;
/// `None` for packets the programs cannot quote (fragments, protocols without ports or echo).
fn error_about(quoted: &Packet, src_mac: [u8; 6]) -> Option<(Vec<u8>, Frame)> {
    if quoted.fragment != Fragment::None {
        return None;
    }
    let (sport, dport, protocol) = match quoted.l4 {
        L4::Tcp { sport, dport, .. } => (sport, dport, 6),
        L4::Udp { sport, dport } => (sport, dport, 17),
        L4::Icmp {
            icmp_type: 0 | 8 | 128 | 129,
            id,
        } => (id, id, if quoted.src.is_ipv6() { 58 } else { 1 }),
        _ => return None,
    };
    if quoted.dst.is_ipv6() && quoted.dst.to_string().starts_with("ff") {
        return None;
    }
    let v6 = quoted.src.is_ipv6();
    let bytes = packet::icmp_error(src_mac, quoted.src_mac, quoted.dst, quoted.src, quoted);
    let frame = IpFrame {
        eth_src: src_mac,
        eth_dst: quoted.src_mac,
        src: quoted.dst,
        dst: quoted.src,
        protocol: if v6 { 58 } else { 1 },
        sport: 0,
        dport: 0,
        fin_or_rst: false,
        icmp_type: Some(if v6 { 2 } else { 3 }),
        fragment: false,
        nd_target: None,
        nd_lladdr: None,
        quoted: Some((quoted.src, quoted.dst, sport, dport, protocol)),
        len: bytes.len() as u64,
    };
    Some((bytes, Frame::Ip(frame)))
}

/// Ages every tracked flow in the kernel by `seconds`, or returns false (and changes nothing)
/// when a flow is younger than the machine's clock allows to age it by that much.
fn age_kernel(maps: &PinnedMaps, seconds: u64) -> anyhow::Result<bool> {
    let zones = maps.zones();
    let step = seconds * 1_000_000_000;
    let flows = zones.flows(usize::MAX)?;
    if flows.iter().any(|(_, _, v)| v.last_seen_ns < step) {
        return Ok(false);
    }
    for (zone, key, mut value) in flows {
        value.last_seen_ns -= step;
        if let Some(mut table) = zones.table(zone)? {
            table.insert(key, value, 0)?;
        }
    }
    Ok(true)
}

/// Removes every bucket, so a case starts with full ones.
fn empty_buckets(maps: &mut PinnedMaps) {
    let keys: Vec<BucketKey> = maps.limits.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = maps.limits.remove(&key);
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn kernel_and_reference_model_agree_on_every_packet() {
    let mut topo = Topology::new().unwrap();
    for i in 0..ENDPOINTS {
        topo.add_pod(&format!("p{i}")).unwrap();
    }
    let dataplane = Dataplane::load(topo.bpffs()).unwrap();
    let maps = std::cell::RefCell::new(PinnedMaps::open(topo.bpffs()).unwrap());
    let netns = topo.node().path();
    let mut ifindexes: Vec<u32> = topo
        .pods()
        .iter()
        .map(|p| interface_index(&netns, &p.host_ifname).unwrap())
        .collect();
    // One interface without an endpoint record.
    ifindexes.push(interface_index(&netns, "br0").unwrap());
    let probe = Probe {
        dataplane: &dataplane,
        netns: netns.clone(),
        bpffs: topo.bpffs().to_owned(),
    };
    let fail = |e: anyhow::Error| TestCaseError::fail(e.to_string());
    // What the run covered: every reason seen, and flows aged in the kernel.
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let aged = std::cell::Cell::new(0u32);

    let mut runner = TestRunner::new(Config {
        cases: 192,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        setup_strategy(),
        prop::collection::vec(packet_strategy(), 1..30),
    );
    runner
        .run(&strategy, |(setup, choices)| {
            // A fresh case: no tracked flows, full buckets, in the kernel and in the model.
            let mut maps = maps.borrow_mut();
            maps.zones().clear().map_err(|e| fail(e.into()))?;
            empty_buckets(&mut maps);
            let mut state = desired(&setup, &ifindexes);
            maps.apply(&state).map_err(|e| fail(e.into()))?;
            let mut policy = setup.policy.clone();
            let mut model = model_of(&setup, &ifindexes, maps.epoch().unwrap());
            let mut sent: Vec<(Packet, u32, Direction)> = Vec::new();
            for (step, choice) in choices.iter().enumerate() {
                if choice.tighten {
                    // One policy entry goes; every other tightening withdraws the whole matrix
                    // and every identity's host and external access too.
                    if !policy.is_empty() {
                        let entry = policy.remove(0);
                        state.policy.remove(&policy_key(&entry));
                    }
                    if step % 2 == 0 {
                        for entry in policy.drain(..) {
                            state.policy.remove(&policy_key(&entry));
                        }
                        for info in state.identities.values_mut() {
                            info.flags = 0;
                        }
                        for flags in model.flags.values_mut() {
                            *flags = reference::Flags::default();
                        }
                    }
                    maps.apply(&state).map_err(|e| fail(e.into()))?;
                    model.rules = policy.iter().map(rule_of).collect();
                    model.epoch = maps.epoch().unwrap();
                }
                let mut just_aged = false;
                if AGING[choice.aging] > 0
                    && age_kernel(&maps, AGING[choice.aging]).map_err(fail)?
                {
                    model.age(AGING[choice.aging]);
                    aged.set(aged.get() + 1);
                    just_aged = true;
                }
                let mut fresh = None;
                let mut ifindex = ifindexes[choice.endpoint];
                let mut direction = if choice.egress {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let earlier =
                    |back: usize| (back > 0 && back <= sent.len()).then(|| sent[sent.len() - back]);
                let error = earlier(choice.error_of)
                    .and_then(|(p, _, _)| error_about(&p, [2, 0x67, 0, 0, 9, 9]));
                // Right after a tightening the latest flow goes on (is it still allowed?), and
                // right after aging its reply comes (is it still tracked?).
                let replay = if choice.tighten || just_aged {
                    1
                } else {
                    choice.reply_of
                };
                let (bytes, frame) = if let Some(error) = error {
                    error
                } else if let Some((p, at, dir)) = earlier(replay) {
                    // The reply comes back where its packet went out (or the other way), or
                    // on odd steps the packet is sent again the same way.
                    let again = choice.tighten || (!just_aged && step % 2 == 1);
                    let reply = if again { p } else { p.reply() };
                    ifindex = at;
                    direction = match (dir, again) {
                        (d, true) => d,
                        (Direction::Egress, false) => Direction::Ingress,
                        (Direction::Ingress, false) => Direction::Egress,
                    };
                    let bytes = reply.frame();
                    let frame = Frame::Ip(ip_frame(&reply, &bytes));
                    (bytes, frame)
                } else {
                    let (bytes, frame, p) = build(choice);
                    fresh = p.map(|p| (p, ifindex, direction));
                    (bytes, frame)
                };
                let kernel = probe.verdict(ifindex, direction, &bytes).map_err(fail)?;
                let expected = model.decide(ifindex, direction as u8, &frame);
                seen.borrow_mut().insert(kernel);
                // Later steps reply to, repeat and quote what passed (what is tracked).
                if kernel == Reason::Forwarded {
                    sent.extend(fresh);
                }
                prop_assert_eq!(
                    kernel,
                    expected,
                    "step {}: {:?} {:?} {:?}",
                    step,
                    direction,
                    choice,
                    frame
                );
            }
            Ok(())
        })
        .unwrap();
    // A run that never reached a verdict proves nothing about it.
    let seen = seen.into_inner();
    let missing: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| !matches!(r, Reason::Malformed) && !seen.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "no case reached {missing:?} (saw {seen:?}, aged {})",
        aged.get()
    );
    assert!(aged.get() > 0, "no case aged a tracked flow");
}
