//! Property test: random identities, flags, policy matrices and packet sequences go through
//! the kernel program (`BPF_PROG_TEST_RUN`) and through the user-space reference model in
//! `genie_common::reference`; every packet must get the same reason from both.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use genie_agent::{
    dataplane::{Dataplane, PinnedMaps, interface_index},
    reconcile::{DesiredState, addr16, cidr_key},
};
use genie_common::{
    Direction, EndpointInfo,
    identity::{DNS, HOST},
    maps::{AddrInfo, CidrInfo, IdentityInfo, PolicyKey, PolicyValue, PortRange},
    reference::{IpMeta, PacketMeta, ReferenceDataplane},
};
use genie_tests::{
    Topology,
    packet::{self, Fragment, L4, Packet, icmp, tcp},
    probe::Probe,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const ENDPOINTS: usize = 5;
const IDENTITIES: [u32; 4] = [1000, 1001, 1002, 1003];
const PORTS: [u16; 5] = [53, 80, 443, 8080, 9999];
const PROTOCOLS: [u8; 5] = [0, 6, 17, 1, 58];

/// A random node configuration.
#[derive(Clone, Debug)]
struct Setup {
    /// Identity index and whether the MAC is enforced, per endpoint.
    endpoints: Vec<(usize, bool)>,
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
    /// 0 own, 1 another endpoint, 2 identity subnet, 3 host, 4 world, 5 dns, 6 link-local.
    peer_kind: usize,
    peer_index: usize,
    /// 0 TCP, 1 UDP, 2 ICMP echo, 3 GRE, 4 ICMPv6 NS, 5 ARP, 6 LLDP.
    kind: usize,
    port: usize,
    sport: usize,
    flags: usize,
    fragment: usize,
    wrong_mac: bool,
    spoof_source: bool,
    /// Send the reply of the packet this many steps back instead (0 = none).
    reply_of: usize,
    /// Remove one policy entry and bump the epoch before this packet.
    tighten: bool,
    /// Send an ICMP error about the packet this many steps back instead (0 = none).
    error_of: usize,
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        prop::collection::vec((0..IDENTITIES.len(), any::<bool>()), ENDPOINTS),
        prop::collection::vec(0u32..8, IDENTITIES.len()),
        prop::collection::vec(
            (0..5usize, 0..5usize, 0..PROTOCOLS.len(), any::<u8>()),
            0..10,
        ),
    )
        .prop_map(|(endpoints, flags, policy)| Setup {
            endpoints,
            flags,
            policy,
        })
}

fn packet_strategy() -> impl Strategy<Value = PacketChoice> {
    (
        (
            0..ENDPOINTS + 1,
            any::<bool>(),
            any::<bool>(),
            0..7usize,
            0..5usize,
            0..7usize,
            0..PORTS.len(),
        ),
        (
            0..2usize,
            0..3usize,
            prop::sample::select(vec![0usize, 0, 0, 0, 1, 2]),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop::sample::select(vec![0usize, 0, 0, 1, 2, 3]),
            prop::bool::weighted(0.05),
            prop::sample::select(vec![0usize, 0, 0, 0, 0, 1, 2]),
        ),
    )
        .prop_map(
            |(
                (endpoint, egress, v6, peer_kind, peer_index, kind, port),
                (sport, flags, fragment, wrong_mac, spoof_source, reply_of, tighten, error_of),
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
                reply_of,
                tighten,
                error_of,
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
        5 => (
            Ipv4Addr::new(198, 18, 71, 53),
            "2001:db8:71::53".parse().unwrap(),
        ),
        _ => (Ipv4Addr::new(198, 18, 50, 200), "fe80::1".parse().unwrap()),
    };
    if v6 {
        IpAddr::V6(v6addr)
    } else {
        IpAddr::V4(v4)
    }
}

fn mac_of(i: usize) -> [u8; 6] {
    [0x02, 0x67, 0, 0, 1, i as u8 + 1]
}

/// The maps for a setup: the same contents go to the kernel and to the reference model.
fn desired(setup: &Setup, ifindexes: &[u32]) -> DesiredState {
    let mut state = DesiredState::default();
    state.ct_zones.insert(0, 4096);
    for (i, &flags) in setup.flags.iter().enumerate() {
        state.identities.insert(
            IDENTITIES[i],
            IdentityInfo {
                flags,
                ..IdentityInfo::default()
            },
        );
        for v6 in [false, true] {
            let net = ipnet::IpNet::new(subnet_addr(i, v6), if v6 { 64 } else { 24 }).unwrap();
            state.cidrs.insert(
                cidr_key(net),
                CidrInfo {
                    identity: IDENTITIES[i],
                },
            );
        }
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
    for (i, &(identity, enforce_mac)) in setup.endpoints.iter().enumerate() {
        let id = i as u32 + 1;
        state.endpoints.insert(
            ifindexes[i],
            EndpointInfo {
                endpoint_id: id,
                identity: IDENTITIES[identity],
                mac: if enforce_mac { mac_of(i) } else { [0; 6] },
                limits: 0,
                flags: 0,
                ct_zone: 0,
            },
        );
        for v6 in [false, true] {
            state.addrs.insert(
                addr16(endpoint_addr(i, v6)),
                AddrInfo {
                    identity: IDENTITIES[identity],
                    endpoint_id: id,
                },
            );
        }
    }
    let identity_or_host = |i: usize| {
        if i < IDENTITIES.len() {
            IDENTITIES[i]
        } else {
            HOST
        }
    };
    for &(src, dst, protocol, mask) in &setup.policy {
        let key = PolicyKey {
            src_identity: identity_or_host(src),
            dst_identity: identity_or_host(dst),
            protocol: PROTOCOLS[protocol],
            _pad: [0; 3],
        };
        let mut value = PolicyValue::default();
        if mask & 0x1f != 0 {
            for (bit, port) in PORTS.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    value.ranges[value.count as usize] = PortRange {
                        first: *port,
                        last: *port,
                    };
                    value.count += 1;
                }
            }
        }
        state.policy.insert(key, value);
    }
    state
}

fn reference_of(state: &DesiredState, epoch: u32) -> ReferenceDataplane {
    ReferenceDataplane {
        endpoints: state.endpoints.clone(),
        addrs: state.addrs.clone(),
        cidrs: state.cidrs.clone(),
        identity_flags: state
            .identities
            .iter()
            .map(|(k, v)| (*k, v.flags))
            .collect(),
        policy: state.policy.clone(),
        conntrack: BTreeMap::new(),
        epoch,
    }
}

/// Builds the frame and the reference's view of it.
fn build(choice: &PacketChoice, setup: &Setup) -> (Vec<u8>, PacketMeta, Packet) {
    let ep = choice.endpoint.min(ENDPOINTS - 1);
    let v6 = choice.v6;
    let own = endpoint_addr(ep, v6);
    let peer = match choice.peer_kind {
        0 => own,
        1 => endpoint_addr((ep + 1 + choice.peer_index) % ENDPOINTS, v6),
        2 => subnet_addr(choice.peer_index % IDENTITIES.len(), v6),
        k => special(k, v6),
    };
    let own_mac = mac_of(ep);
    let src_mac = if choice.wrong_mac {
        mac_of(ep + 1)
    } else {
        own_mac
    };
    let (mut src, dst) = if choice.egress {
        (own, peer)
    } else {
        (peer, own)
    };
    if choice.spoof_source {
        src = endpoint_addr((ep + 2) % ENDPOINTS, v6);
    }
    let _ = setup;
    match choice.kind {
        5 => {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (
                endpoint_addr(ep, false),
                endpoint_addr((ep + 1) % ENDPOINTS, false),
            ) else {
                unreachable!()
            };
            let sender = if choice.spoof_source { d } else { s };
            let frame = packet::arp_request(src_mac, src_mac, sender, d);
            let dummy = Packet {
                src_mac,
                dst_mac: [0xff; 6],
                src: IpAddr::V4(sender),
                dst: IpAddr::V4(d),
                l4: L4::Other { protocol: 0 },
                fragment: Fragment::None,
            };
            (
                frame,
                PacketMeta::Arp {
                    eth_src: src_mac,
                    sender_mac: src_mac,
                    sender_ip: sender.octets(),
                },
                dummy,
            )
        }
        6 => {
            let dummy = Packet {
                src_mac,
                dst_mac: [0xff; 6],
                src,
                dst,
                l4: L4::Other { protocol: 0 },
                fragment: Fragment::None,
            };
            (packet::lldp(src_mac), PacketMeta::Other, dummy)
        }
        _ => {
            let port = PORTS[choice.port];
            let sport = [1000u16, 2000][choice.sport];
            let flags = [tcp::SYN, tcp::ACK, tcp::FIN | tcp::ACK][choice.flags];
            let l4 = match choice.kind {
                0 => L4::Tcp {
                    sport,
                    dport: port,
                    flags,
                },
                1 => L4::Udp { sport, dport: port },
                2 => L4::Icmp {
                    icmp_type: if v6 {
                        icmp::ECHO_REQUEST_V6
                    } else {
                        icmp::ECHO_REQUEST_V4
                    },
                    id: port,
                },
                3 => L4::Other { protocol: 47 },
                _ => L4::Icmp {
                    icmp_type: if v6 {
                        icmp::NEIGHBOUR_SOLICITATION
                    } else {
                        icmp::ECHO_REPLY_V4
                    },
                    id: 0,
                },
            };
            let fragment = [Fragment::None, Fragment::First, Fragment::Later][choice.fragment];
            let p = Packet {
                src_mac,
                dst_mac: [2, 0x67, 0, 0, 0, 1],
                src,
                dst,
                l4,
                fragment,
            };
            (p.frame(), meta_of(&p), p)
        }
    }
}

/// The reference's view of a crafted IP packet: what the programs' parser extracts. A fragment
/// is never parsed past the IP layer (for IPv6 the protocol is then the fragment header's, 44).
fn meta_of(p: &Packet) -> PacketMeta {
    let (protocol, sport, dport, tcp_flags, icmp_type) = match (p.l4, p.fragment) {
        (_, Fragment::First | Fragment::Later) if p.src.is_ipv6() => (44, 0, 0, 0, 0),
        (L4::Tcp { .. }, Fragment::First | Fragment::Later) => (6, 0, 0, 0, 0),
        (L4::Udp { .. }, Fragment::First | Fragment::Later) => (17, 0, 0, 0, 0),
        (L4::Icmp { .. }, Fragment::First | Fragment::Later) => (1, 0, 0, 0, 0),
        (
            L4::Tcp {
                sport,
                dport,
                flags,
            },
            _,
        ) => (6, sport, dport, flags, 0),
        (L4::Udp { sport, dport }, _) => (17, sport, dport, 0, 0),
        (L4::Icmp { icmp_type, id }, _) => {
            let echo = matches!(icmp_type, 0 | 8 | 128 | 129);
            (
                if p.src.is_ipv6() { 58 } else { 1 },
                if echo { id } else { 0 },
                if echo { id } else { 0 },
                0,
                icmp_type,
            )
        }
        (L4::Other { protocol }, _) => (protocol, 0, 0, 0, 0),
        (L4::Nd { icmp_type, .. }, _) => (58, 0, 0, 0, icmp_type),
    };
    PacketMeta::Ip(IpMeta {
        eth_src: p.src_mac,
        src: addr16(p.src),
        dst: addr16(p.dst),
        protocol,
        sport,
        dport,
        tcp_flags,
        icmp_type,
        fragment: p.fragment != Fragment::None,
        is_v6: p.src.is_ipv6(),
        quoted: None,
    })
}

/// An ICMP error about `quoted` travelling back to its sender, and the reference's view of it;
/// `None` for packets the programs cannot quote (fragments, protocols without ports or echo).
fn error_about(quoted: &Packet, src_mac: [u8; 6]) -> Option<(Vec<u8>, PacketMeta)> {
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
    let v6 = quoted.src.is_ipv6();
    let frame = packet::icmp_error(src_mac, quoted.src_mac, quoted.dst, quoted.src, quoted);
    let meta = PacketMeta::Ip(IpMeta {
        eth_src: src_mac,
        src: addr16(quoted.dst),
        dst: addr16(quoted.src),
        protocol: if v6 { 58 } else { 1 },
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: if v6 { 2 } else { 3 },
        fragment: false,
        is_v6: v6,
        quoted: Some((
            addr16(quoted.src),
            addr16(quoted.dst),
            sport,
            dport,
            protocol,
        )),
    });
    Some((frame, meta))
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

    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        setup_strategy(),
        prop::collection::vec(packet_strategy(), 1..30),
    );
    runner
        .run(&strategy, |(setup, choices)| {
            // A fresh conntrack table per case, in the kernel and in the model.
            let mut maps = maps.borrow_mut();
            maps.zones()
                .clear()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut state = desired(&setup, &ifindexes);
            maps.apply(&state)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut model = reference_of(&state, maps.epoch().unwrap());
            let mut sent: Vec<Packet> = Vec::new();
            for (step, choice) in choices.iter().enumerate() {
                if choice.tighten && !state.policy.is_empty() {
                    let key = *state.policy.keys().next().unwrap();
                    state.policy.remove(&key);
                    maps.apply(&state)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.policy.remove(&key);
                    model.epoch = maps.epoch().unwrap();
                }
                let ifindex = ifindexes[choice.endpoint];
                let direction = if choice.egress {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let error = (choice.error_of > 0 && choice.error_of <= sent.len())
                    .then(|| {
                        error_about(&sent[sent.len() - choice.error_of], [2, 0x67, 0, 0, 9, 9])
                    })
                    .flatten();
                let (frame, meta) = if let Some(error) = error {
                    error
                } else if choice.reply_of > 0 && choice.reply_of <= sent.len() {
                    let reply = sent[sent.len() - choice.reply_of].reply();
                    (reply.frame(), meta_of(&reply))
                } else {
                    let (frame, meta, p) = build(choice, &setup);
                    if matches!(meta, PacketMeta::Ip(_)) {
                        sent.push(p);
                    }
                    (frame, meta)
                };
                let kernel = probe
                    .verdict(ifindex, direction, &frame)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = model.decide(ifindex, direction, &meta, 0);
                prop_assert_eq!(
                    kernel,
                    expected,
                    "step {}: {:?} {:?} {:?}",
                    step,
                    direction,
                    choice,
                    meta
                );
            }
            Ok(())
        })
        .unwrap();
}
