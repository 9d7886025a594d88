//! Every row of DESIGN.md §3, for TCP, UDP and ICMP over IPv4 and IPv6, plus spoofing,
//! fragments, ARP and neighbour discovery — decided by the kernel program on crafted packets
//! (`BPF_PROG_TEST_RUN`), with the reason read back from the counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use genie_agent::{agent::Agent, dataplane::interface_index};
use genie_common::{Direction, Reason};
use genie_tests::{
    TestNode, Topology,
    packet::{self, Fragment, L4, Packet, icmp, tcp},
    probe::Probe,
};

const OBJECTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec: {namespaces: [red]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: blue}
spec: {namespaces: [blue]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-a}
spec:
  tenant: red
  subnet: 198.18.1.0/24
  subnet6: 2001:db8:1::/64
  isolation:
    allowHostPorts: [{protocol: UDP, port: 53}]
    peers:
      - network: red-b
        ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 5353}, {protocol: ICMP}]
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-b}
spec: {tenant: red, subnet: 198.18.2.0/24, subnet6: 2001:db8:2::/64}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-a}
spec:
  tenant: blue
  subnet: 198.18.3.0/24
  subnet6: 2001:db8:3::/64
  isolation: {allowHostAccess: true, allowExternal: false, allowExternalIngress: true}
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

struct Fixture {
    node: TestNode,
    agent: Agent,
}

/// Pods: a1, a2 on red-a; b1 on red-b; c1 on blue-a. Node addresses are HOST; a v6 host
/// address and the cluster DNS addresses come from the agent configuration.
fn fixture() -> Fixture {
    let mut topo = Topology::new().unwrap();
    topo.add_pod_on("a1", 1).unwrap();
    topo.add_pod_on("a2", 1).unwrap();
    topo.add_pod_on("b1", 2).unwrap();
    topo.add_pod_on("c1", 3).unwrap();
    let node = TestNode::new(topo, OBJECTS).unwrap();
    let mut config = node.agent_config();
    config.host_cidrs = vec!["2001:db8:ffff::1/128".parse().unwrap()];
    config.dns = vec![dns(Family::V4), dns(Family::V6)];
    let mut agent = Agent::start(config).unwrap();
    for (label, ns, net) in [
        ("a1", "red", "red-a"),
        ("a2", "red", "red-a"),
        ("b1", "red", "red-b"),
        ("c1", "blue", "blue-a"),
    ] {
        let mut request = node.endpoint_request(node.topo.pod(label), ns, net);
        request.ips.push(v6_of(node.topo.pod(label).ipv4));
        agent.add_endpoint(request).unwrap();
    }
    Fixture { node, agent }
}

/// The v6 address registered for a pod: 2001:db8:<subnet>::<host> from its v4 address.
fn v6_of(v4: Ipv4Addr) -> IpAddr {
    let o = v4.octets();
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        u16::from(o[2]),
        0,
        0,
        0,
        0,
        u16::from(o[3]),
    ))
}

fn dns(f: Family) -> IpAddr {
    match f {
        Family::V4 => "198.18.200.53".parse().unwrap(),
        Family::V6 => "2001:db8:53::53".parse().unwrap(),
    }
}

fn world(f: Family) -> IpAddr {
    match f {
        Family::V4 => "198.19.7.7".parse().unwrap(),
        Family::V6 => "2001:db8:9999::7".parse().unwrap(),
    }
}

fn host(f: Family) -> IpAddr {
    match f {
        // br0's address on red-a's subnet: a node address.
        Family::V4 => "198.18.1.1".parse().unwrap(),
        Family::V6 => "2001:db8:ffff::1".parse().unwrap(),
    }
}

impl Fixture {
    fn probe(&self) -> Probe<'_> {
        Probe {
            dataplane: self.agent.dataplane(),
            netns: self.node.topo.node().path(),
            bpffs: self.node.bpffs().to_owned(),
        }
    }

    fn ip(&self, pod: &str, f: Family) -> IpAddr {
        let v4 = self.node.topo.pod(pod).ipv4;
        match f {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => v6_of(v4),
        }
    }

    fn mac(&self, pod: &str) -> [u8; 6] {
        self.node.topo.pod(pod).mac
    }

    fn ifindex(&self, pod: &str) -> u32 {
        interface_index(
            &self.node.topo.node().path(),
            &self.node.topo.pod(pod).host_ifname,
        )
        .unwrap()
    }

    /// A new-flow packet from `src` to `dst` (port `port`; ICMP ignores it and uses it as
    /// echo id).
    fn packet(
        &self,
        src: IpAddr,
        src_mac: [u8; 6],
        dst: IpAddr,
        proto: Proto,
        port: u16,
    ) -> Packet {
        let l4 = match proto {
            Proto::Tcp => L4::Tcp {
                sport: 40000 + port % 1000,
                dport: port,
                flags: tcp::SYN,
            },
            Proto::Udp => L4::Udp {
                sport: 40000 + port % 1000,
                dport: port,
            },
            Proto::Icmp => L4::Icmp {
                icmp_type: if src.is_ipv6() {
                    icmp::ECHO_REQUEST_V6
                } else {
                    icmp::ECHO_REQUEST_V4
                },
                id: port,
            },
        };
        Packet {
            src_mac,
            dst_mac: [2, 0x67, 0, 0, 0, 1],
            src,
            dst,
            l4,
            fragment: Fragment::None,
        }
    }

    /// The node's address on the pods' first subnet (HOST), or the v6 host address.
    fn node_ip(&self, f: Family) -> IpAddr {
        match f {
            Family::V4 => IpAddr::V4(self.node.topo.pod("a1").gateway),
            Family::V6 => "2001:db8:ffff::1".parse().unwrap(),
        }
    }

    fn egress(&self, pod: &str, p: &Packet) -> Reason {
        self.probe()
            .verdict(self.ifindex(pod), Direction::Egress, &p.frame())
            .unwrap()
    }

    fn ingress(&self, pod: &str, p: &Packet) -> Reason {
        self.probe()
            .verdict(self.ifindex(pod), Direction::Ingress, &p.frame())
            .unwrap()
    }
}

/// A distinct port per (family, protocol, case) so conntrack entries of one check never
/// answer another.
fn port(f: Family, p: Proto, case: u16) -> u16 {
    let fi = if f == Family::V4 { 0 } else { 1 };
    let pi = match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
        Proto::Icmp => 2,
    };
    1000 + fi * 3000 + pi * 1000 + case
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn same_identity_is_allowed_both_ways() {
    let fx = fixture();
    for f in FAMILIES {
        for p in PROTOS {
            let pk = fx.packet(
                fx.ip("a1", f),
                fx.mac("a1"),
                fx.ip("a2", f),
                p,
                port(f, p, 1),
            );
            assert_eq!(
                fx.egress("a1", &pk),
                Reason::Forwarded,
                "{f:?} {p:?} a1 → a2 leaves a1"
            );
            assert_eq!(
                fx.ingress("a2", &pk),
                Reason::Forwarded,
                "{f:?} {p:?} a1 → a2 reaches a2"
            );
            let new = fx.packet(
                fx.ip("a2", f),
                fx.mac("a2"),
                fx.ip("a1", f),
                p,
                port(f, p, 2),
            );
            assert_eq!(
                fx.egress("a2", &new),
                Reason::Forwarded,
                "{f:?} {p:?} a2 → a1"
            );
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn peers_allow_one_way_on_listed_ports_and_replies_pass() {
    let fx = fixture();
    for f in FAMILIES {
        for p in PROTOS {
            // red-a → red-b is allowed on TCP 80, UDP 5353 and ICMP.
            let allowed_port = match p {
                Proto::Tcp => 80,
                Proto::Udp => 5353,
                Proto::Icmp => port(f, p, 3),
            };
            let pk = fx.packet(
                fx.ip("a1", f),
                fx.mac("a1"),
                fx.ip("b1", f),
                p,
                allowed_port,
            );
            assert_eq!(
                fx.egress("a1", &pk),
                Reason::Forwarded,
                "{f:?} {p:?} a1 → b1 allowed port"
            );
            assert_eq!(
                fx.ingress("b1", &pk),
                Reason::Forwarded,
                "{f:?} {p:?} a1 → b1 arrives"
            );
            // The reply of the allowed flow passes both programs (connection tracking).
            let reply = pk.reply();
            let reply = Packet {
                src_mac: fx.mac("b1"),
                ..reply
            };
            assert_eq!(
                fx.egress("b1", &reply),
                Reason::Forwarded,
                "{f:?} {p:?} b1 replies"
            );
            assert_eq!(
                fx.ingress("a1", &reply),
                Reason::Forwarded,
                "{f:?} {p:?} reply reaches a1"
            );

            if p != Proto::Icmp {
                // Another port is not allowed.
                let pk = fx.packet(
                    fx.ip("a1", f),
                    fx.mac("a1"),
                    fx.ip("b1", f),
                    p,
                    port(f, p, 4),
                );
                assert_eq!(
                    fx.egress("a1", &pk),
                    Reason::Policy,
                    "{f:?} {p:?} a1 → b1 other port"
                );
                assert_eq!(
                    fx.ingress("b1", &pk),
                    Reason::Policy,
                    "{f:?} {p:?} a1 → b1 other port at b1"
                );
            }
            // The other way is not allowed: peers are one way.
            let back = fx.packet(
                fx.ip("b1", f),
                fx.mac("b1"),
                fx.ip("a1", f),
                p,
                allowed_port + 1,
            );
            assert_eq!(
                fx.egress("b1", &back),
                Reason::Policy,
                "{f:?} {p:?} b1 → a1 new flow"
            );
            assert_eq!(
                fx.ingress("a1", &back),
                Reason::Policy,
                "{f:?} {p:?} b1 → a1 at a1"
            );
            // Other tenants are isolated.
            let cross = fx.packet(
                fx.ip("a1", f),
                fx.mac("a1"),
                fx.ip("c1", f),
                p,
                port(f, p, 5),
            );
            assert_eq!(
                fx.egress("a1", &cross),
                Reason::Policy,
                "{f:?} {p:?} red → blue"
            );
            assert_eq!(
                fx.ingress("c1", &cross),
                Reason::Policy,
                "{f:?} {p:?} red → blue at c1"
            );
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn host_access_is_blocked_unless_allowed_and_host_reaches_pods() {
    let fx = fixture();
    for f in FAMILIES {
        for p in PROTOS {
            let to_host = fx.packet(fx.ip("a1", f), fx.mac("a1"), host(f), p, port(f, p, 6));
            assert_eq!(
                fx.egress("a1", &to_host),
                Reason::HostAccess,
                "{f:?} {p:?} red-a → host"
            );
            let to_host = fx.packet(fx.ip("c1", f), fx.mac("c1"), host(f), p, port(f, p, 6));
            assert_eq!(
                fx.egress("c1", &to_host),
                Reason::Forwarded,
                "{f:?} {p:?} blue-a (allowHostAccess) → host"
            );
            // Host → pod is always allowed (kubelet probes).
            let from_host = fx.packet(
                host(f),
                [2, 0x67, 0, 0, 0, 1],
                fx.ip("a1", f),
                p,
                port(f, p, 7),
            );
            assert_eq!(
                fx.ingress("a1", &from_host),
                Reason::Forwarded,
                "{f:?} {p:?} host → red-a"
            );
        }
        // The host-port allow-list: red-a may reach UDP 53 on the node.
        let dns_on_node = fx.packet(fx.ip("a1", f), fx.mac("a1"), host(f), Proto::Udp, 53);
        assert_eq!(
            fx.egress("a1", &dns_on_node),
            Reason::Forwarded,
            "{f:?} red-a → host UDP 53"
        );
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn external_traffic_follows_the_network_flags() {
    let fx = fixture();
    for f in FAMILIES {
        for p in PROTOS {
            // red-a: allowExternal (default true), no external ingress.
            let out = fx.packet(fx.ip("a1", f), fx.mac("a1"), world(f), p, port(f, p, 8));
            assert_eq!(
                fx.egress("a1", &out),
                Reason::Forwarded,
                "{f:?} {p:?} red-a → world"
            );
            let reply = Packet {
                dst_mac: fx.mac("a1"),
                ..out.reply()
            };
            assert_eq!(
                fx.ingress("a1", &reply),
                Reason::Forwarded,
                "{f:?} {p:?} world replies to red-a"
            );
            let inbound = fx.packet(
                world(f),
                [2, 0x67, 0, 0, 0, 1],
                fx.ip("a1", f),
                p,
                port(f, p, 9),
            );
            assert_eq!(
                fx.ingress("a1", &inbound),
                Reason::ExternalIngress,
                "{f:?} {p:?} world → red-a"
            );
            // blue-a: no external egress, external ingress allowed.
            let out = fx.packet(fx.ip("c1", f), fx.mac("c1"), world(f), p, port(f, p, 8));
            assert_eq!(
                fx.egress("c1", &out),
                Reason::ExternalEgress,
                "{f:?} {p:?} blue-a → world"
            );
            let inbound = fx.packet(
                world(f),
                [2, 0x67, 0, 0, 0, 1],
                fx.ip("c1", f),
                p,
                port(f, p, 9),
            );
            assert_eq!(
                fx.ingress("c1", &inbound),
                Reason::Forwarded,
                "{f:?} {p:?} world → blue-a"
            );
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn cluster_dns_is_reachable_from_every_tenant() {
    let fx = fixture();
    for f in FAMILIES {
        for pod in ["a1", "c1"] {
            for p in [Proto::Udp, Proto::Tcp] {
                let q = fx.packet(fx.ip(pod, f), fx.mac(pod), dns(f), p, 53);
                assert_eq!(
                    fx.egress(pod, &q),
                    Reason::Forwarded,
                    "{f:?} {p:?} {pod} → DNS:53"
                );
                let reply = Packet {
                    dst_mac: fx.mac(pod),
                    ..q.reply()
                };
                assert_eq!(
                    fx.ingress(pod, &reply),
                    Reason::Forwarded,
                    "{f:?} {p:?} DNS answers {pod}"
                );
            }
            let other = fx.packet(fx.ip(pod, f), fx.mac(pod), dns(f), Proto::Udp, 54);
            assert_eq!(
                fx.egress(pod, &other),
                Reason::Policy,
                "{f:?} {pod} → DNS:54"
            );
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn spoofed_sources_are_dropped() {
    let fx = fixture();
    for f in FAMILIES {
        for p in PROTOS {
            // a1 claims a2's address (same network, so policy would allow it).
            let spoofed = fx.packet(fx.ip("a2", f), fx.mac("a1"), fx.ip("b1", f), p, 80);
            assert_eq!(
                fx.egress("a1", &spoofed),
                Reason::SpoofedIp,
                "{f:?} {p:?} foreign source IP"
            );
            // An address from no network at all.
            let spoofed = fx.packet(world(f), fx.mac("a1"), fx.ip("a2", f), p, 81);
            assert_eq!(
                fx.egress("a1", &spoofed),
                Reason::SpoofedIp,
                "{f:?} {p:?} unknown source IP"
            );
            // Its own address, another MAC.
            let spoofed = fx.packet(fx.ip("a1", f), fx.mac("a2"), fx.ip("a2", f), p, 82);
            assert_eq!(
                fx.egress("a1", &spoofed),
                Reason::SpoofedMac,
                "{f:?} {p:?} foreign source MAC"
            );
        }
    }
    // ARP: announcing someone else's address or MAC is spoofing; its own passes.
    let a1 = fx.node.topo.pod("a1");
    let a2 = fx.node.topo.pod("a2");
    let own = packet::arp_request(a1.mac, a1.mac, a1.ipv4, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &own)
            .unwrap(),
        Reason::Forwarded
    );
    let probe = packet::arp_request(a1.mac, a1.mac, Ipv4Addr::UNSPECIFIED, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &probe)
            .unwrap(),
        Reason::Forwarded,
        "ARP probe (RFC 5227)"
    );
    let foreign_ip = packet::arp_request(a1.mac, a1.mac, a2.ipv4, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &foreign_ip)
            .unwrap(),
        Reason::SpoofedIp
    );
    let foreign_mac = packet::arp_request(a1.mac, a2.mac, a1.ipv4, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &foreign_mac)
            .unwrap(),
        Reason::SpoofedMac
    );
    // The classic one: "the gateway is at my MAC". Receivers take the node's ARP from anyone
    // (below), so this must stop at the sender.
    let claims_gateway = packet::arp_request(a1.mac, a1.mac, a1.gateway, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &claims_gateway)
            .unwrap(),
        Reason::SpoofedIp,
        "a pod announcing the gateway's address"
    );
    // Delivered to a pod is what asks about its own address, and whatever the node sends.
    let asks_a1 = packet::arp_request(a2.mac, a2.mac, a2.ipv4, a1.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Ingress, &asks_a1)
            .unwrap(),
        Reason::Forwarded,
        "ARP for a pod's own address"
    );
    let asks_other = packet::arp_request(a2.mac, a2.mac, a2.ipv4, fx.node.topo.pod("b1").ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Ingress, &asks_other)
            .unwrap(),
        Reason::WrongDestination,
        "ARP about another address is not for this pod"
    );
    let from_node = packet::arp_request(a2.mac, a2.mac, a1.gateway, a2.ipv4);
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Ingress, &from_node)
            .unwrap(),
        Reason::Forwarded,
        "the node's ARP reaches every pod"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn fragments_are_dropped_with_their_own_reason() {
    let fx = fixture();
    for f in FAMILIES {
        for p in [Proto::Tcp, Proto::Udp] {
            for fragment in [Fragment::First, Fragment::Later] {
                // Same identity: without the fragment rule this would pass.
                let pk = Packet {
                    fragment,
                    ..fx.packet(fx.ip("a1", f), fx.mac("a1"), fx.ip("a2", f), p, 80)
                };
                assert_eq!(
                    fx.egress("a1", &pk),
                    Reason::Fragment,
                    "{f:?} {p:?} {fragment:?} fragment out"
                );
                assert_eq!(
                    fx.ingress("a2", &pk),
                    Reason::Fragment,
                    "{f:?} {p:?} {fragment:?} fragment in"
                );
            }
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn neighbour_discovery_works_and_other_ethertypes_do_not() {
    let fx = fixture();
    // The EUI-64 link-local address of a1's MAC 02:67:00:00:01:01 (RFC 4291 Appendix A),
    // which the agent registers as a1's own.
    let a1_ll: Ipv6Addr = "fe80::67:ff:fe00:101".parse().unwrap();
    let a2_ll: Ipv6Addr = "fe80::67:ff:fe00:102".parse().unwrap();
    let v6 = |pod: &str| match fx.ip(pod, Family::V6) {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(_) => unreachable!(),
    };
    let nd = |src: Ipv6Addr, mac: [u8; 6], dst: Ipv6Addr, icmp_type: u8, target: Ipv6Addr| Packet {
        src_mac: mac,
        dst_mac: [0x33, 0x33, 0xff, 0, 0, 0x12],
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        l4: L4::Nd {
            icmp_type,
            target,
            lladdr: Some(mac),
        },
        fragment: Fragment::None,
    };
    let solicited: Ipv6Addr = "ff02::1:ff00:12".parse().unwrap();
    let (ns, na) = (icmp::NEIGHBOUR_SOLICITATION, icmp::NEIGHBOUR_ADVERTISEMENT);

    // Out: from its own addresses, link-local included, or `::` for duplicate detection.
    let asks = nd(a1_ll, fx.mac("a1"), solicited, ns, v6("a2"));
    assert_eq!(
        fx.egress("a1", &asks),
        Reason::Forwarded,
        "NS from its link-local"
    );
    let dad = nd(Ipv6Addr::UNSPECIFIED, fx.mac("a1"), solicited, ns, v6("a1"));
    assert_eq!(
        fx.egress("a1", &dad),
        Reason::Forwarded,
        "duplicate address detection"
    );
    let foreign_ll = nd(
        "fe80::99".parse().unwrap(),
        fx.mac("a1"),
        solicited,
        ns,
        v6("a2"),
    );
    assert_eq!(
        fx.egress("a1", &foreign_ll),
        Reason::SpoofedIp,
        "someone else's link-local"
    );
    let spoofed = nd(v6("a2"), fx.mac("a1"), solicited, ns, v6("b1"));
    assert_eq!(
        fx.egress("a1", &spoofed),
        Reason::SpoofedIp,
        "another pod's address"
    );
    // An advertisement only for its own addresses, with its own MAC.
    let announce_own = nd(a1_ll, fx.mac("a1"), "ff02::1".parse().unwrap(), na, a1_ll);
    assert_eq!(fx.egress("a1", &announce_own), Reason::Forwarded);
    let claims_a2_ll = nd(a1_ll, fx.mac("a1"), "ff02::1".parse().unwrap(), na, a2_ll);
    assert_eq!(
        fx.egress("a1", &claims_a2_ll),
        Reason::SpoofedIp,
        "an advertisement claiming another pod's link-local address"
    );
    let claims_a2_global = nd(a1_ll, fx.mac("a1"), v6("a2"), na, v6("a2"));
    assert_eq!(fx.egress("a1", &claims_a2_global), Reason::SpoofedIp);
    let mut wrong_option = nd(
        a1_ll,
        fx.mac("a1"),
        "ff02::1".parse().unwrap(),
        na,
        v6("a1"),
    );
    wrong_option.l4 = L4::Nd {
        icmp_type: na,
        target: v6("a1"),
        lladdr: Some(fx.mac("a2")),
    };
    assert_eq!(
        fx.egress("a1", &wrong_option),
        Reason::SpoofedMac,
        "an advertisement pointing at another pod's MAC"
    );

    // In: a solicitation only for one of the pod's addresses; an advertisement sent to a
    // group only from its own network; anything from the node.
    let for_a1 = nd(a2_ll, fx.mac("a2"), solicited, ns, v6("a1"));
    assert_eq!(
        fx.ingress("a1", &for_a1),
        Reason::Forwarded,
        "NS for the pod's address"
    );
    let for_a1_ll = nd(a2_ll, fx.mac("a2"), solicited, ns, a1_ll);
    assert_eq!(
        fx.ingress("a1", &for_a1_ll),
        Reason::Forwarded,
        "NS for its link-local"
    );
    let for_b1 = nd(a2_ll, fx.mac("a2"), solicited, ns, v6("b1"));
    assert_eq!(
        fx.ingress("a1", &for_b1),
        Reason::WrongDestination,
        "NS for someone else"
    );
    let c1_ll: Ipv6Addr = "fe80::67:ff:fe00:104".parse().unwrap();
    let unsolicited = nd(c1_ll, fx.mac("c1"), "ff02::1".parse().unwrap(), na, c1_ll);
    assert_eq!(
        fx.ingress("a1", &unsolicited),
        Reason::Multicast,
        "another tenant's unsolicited advertisement"
    );
    let same_net = nd(a2_ll, fx.mac("a2"), "ff02::1".parse().unwrap(), na, a2_ll);
    assert_eq!(fx.ingress("a1", &same_net), Reason::Forwarded);

    // Routers are the node, or pods of the pod's own network: a router advertisement or a
    // redirect sent straight to a pod by another tenant's pod would make that pod its router.
    let (rs, ra, redirect) = (
        icmp::ROUTER_SOLICITATION,
        icmp::ROUTER_ADVERTISEMENT,
        icmp::REDIRECT,
    );
    let unicast = |mut p: Packet| {
        p.dst_mac = fx.mac("a1");
        p
    };
    for kind in [ra, redirect] {
        let rogue = unicast(nd(c1_ll, fx.mac("c1"), a1_ll, kind, c1_ll));
        assert_eq!(
            fx.ingress("a1", &rogue),
            Reason::Policy,
            "another tenant's unicast ND message of type {kind}"
        );
        let own_network = unicast(nd(a2_ll, fx.mac("a2"), a1_ll, kind, a2_ll));
        assert_eq!(
            fx.ingress("a1", &own_network),
            Reason::Forwarded,
            "type {kind} from the pod's own network"
        );
    }
    let answer = unicast(nd(c1_ll, fx.mac("c1"), a1_ll, na, c1_ll));
    assert_eq!(
        fx.ingress("a1", &answer),
        Reason::Forwarded,
        "a unicast advertisement answers a solicitation, whoever sends it"
    );
    // Every ND message's link-layer option is the sender's own MAC.
    for kind in [rs, ra, redirect] {
        let mut lie = nd(a1_ll, fx.mac("a1"), "ff02::2".parse().unwrap(), kind, a1_ll);
        lie.l4 = L4::Nd {
            icmp_type: kind,
            target: a1_ll,
            lladdr: Some(fx.mac("a2")),
        };
        assert_eq!(
            fx.egress("a1", &lie),
            Reason::SpoofedMac,
            "type {kind} pointing at another pod's MAC"
        );
        let truth = nd(a1_ll, fx.mac("a1"), "ff02::2".parse().unwrap(), kind, a1_ll);
        assert_eq!(fx.egress("a1", &truth), Reason::Forwarded, "type {kind}");
    }
    // A foreign MAC behind more options than genie reads is refused, not skipped.
    let mut hidden = nd(a1_ll, fx.mac("a1"), "ff02::2".parse().unwrap(), rs, a1_ll);
    hidden.l4 = L4::Nd {
        icmp_type: rs,
        target: a1_ll,
        lladdr: None,
    };
    let mut options: Vec<u8> = (0..8).flat_map(|_| [31u8, 1, 0, 0, 0, 0, 0, 0]).collect();
    options.extend_from_slice(&[1, 1]);
    options.extend_from_slice(&fx.mac("a2"));
    assert_eq!(
        fx.probe()
            .verdict(
                fx.ifindex("a1"),
                Direction::Egress,
                &hidden.frame_with_payload(&options)
            )
            .unwrap(),
        Reason::Malformed,
        "a link-layer option after eight others"
    );

    // A pod's own link-local address is its own for any traffic; someone else's is not.
    let ping = |src: Ipv6Addr| Packet {
        src_mac: fx.mac("a1"),
        dst_mac: fx.mac("a2"),
        src: IpAddr::V6(src),
        dst: IpAddr::V6(a2_ll),
        l4: L4::Icmp {
            icmp_type: icmp::ECHO_REQUEST_V6,
            id: 9,
        },
        fragment: Fragment::None,
    };
    assert_eq!(fx.egress("a1", &ping(a1_ll)), Reason::Forwarded);
    assert_eq!(
        fx.egress("a1", &ping("fe80::99".parse().unwrap())),
        Reason::SpoofedIp
    );
    let lldp = packet::lldp(fx.mac("a1"));
    assert_eq!(
        fx.probe()
            .verdict(fx.ifindex("a1"), Direction::Egress, &lldp)
            .unwrap(),
        Reason::UnsupportedProtocol
    );
}

/// Broadcast and multicast stay inside the sender's identity (DESIGN.md §3); a unicast frame
/// reaches a pod only when addressed to one of the pod's addresses.
#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn group_traffic_and_frames_for_others_stop_at_the_tenant_boundary() {
    let fx = fixture();
    let udp = |src: IpAddr, src_mac: [u8; 6], dst: IpAddr, dst_mac: [u8; 6]| Packet {
        src_mac,
        dst_mac,
        src,
        dst,
        l4: L4::Udp {
            sport: 5353,
            dport: 5353,
        },
        fragment: Fragment::None,
    };
    let broadcast_mac = [0xff; 6];
    let groups: [(IpAddr, [u8; 6]); 5] = [
        ("255.255.255.255".parse().unwrap(), broadcast_mac),
        ("198.18.1.255".parse().unwrap(), broadcast_mac),
        ("224.0.0.251".parse().unwrap(), [0x01, 0, 0x5e, 0, 0, 0xfb]),
        ("239.1.1.1".parse().unwrap(), [0x01, 0, 0x5e, 1, 1, 1]),
        ("ff02::fb".parse().unwrap(), [0x33, 0x33, 0, 0, 0, 0xfb]),
    ];
    for (group, mac) in groups {
        let f = if group.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        };
        let from_a2 = udp(fx.ip("a2", f), fx.mac("a2"), group, mac);
        assert_eq!(fx.egress("a2", &from_a2), Reason::Forwarded, "{group} sent");
        assert_eq!(
            fx.ingress("a1", &from_a2),
            Reason::Forwarded,
            "{group} within red-a"
        );
        assert_eq!(
            fx.ingress("b1", &from_a2),
            Reason::Multicast,
            "{group} into another network of the same tenant"
        );
        assert_eq!(
            fx.ingress("c1", &from_a2),
            Reason::Multicast,
            "{group} into another tenant"
        );
        let from_node = udp(fx.node_ip(f), fx.mac("a2"), group, mac);
        assert_eq!(
            fx.ingress("c1", &from_node),
            Reason::Forwarded,
            "{group} from the node"
        );
    }
    // A subnet's broadcast address behind a unicast MAC is broadcast all the same.
    let directed = udp(
        fx.ip("a2", Family::V4),
        fx.mac("a2"),
        "198.18.1.255".parse().unwrap(),
        fx.mac("a1"),
    );
    assert_eq!(fx.ingress("a1", &directed), Reason::Forwarded);
    assert_eq!(fx.ingress("c1", &directed), Reason::Multicast);

    for f in FAMILIES {
        // Sent to c1's MAC, but addressed elsewhere: a covert channel if delivered.
        for dst in [fx.ip("a2", f), world(f), fx.ip("b1", f)] {
            let sneaky = udp(fx.ip("a2", f), fx.mac("a2"), dst, fx.mac("c1"));
            assert_eq!(
                fx.ingress("c1", &sneaky),
                Reason::WrongDestination,
                "{f:?} to c1's MAC for {dst}"
            );
        }
        let honest = udp(world(f), fx.mac("a2"), fx.ip("c1", f), fx.mac("c1"));
        assert_eq!(
            fx.ingress("c1", &honest),
            Reason::Forwarded,
            "{f:?} allowExternalIngress"
        );
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn other_ip_protocols_need_an_all_protocol_peer() {
    let fx = fixture();
    for f in FAMILIES {
        // GRE between the same identity passes; to a peer allowed only on ports it does not.
        let gre = Packet {
            l4: L4::Other { protocol: 47 },
            ..fx.packet(fx.ip("a1", f), fx.mac("a1"), fx.ip("a2", f), Proto::Udp, 1)
        };
        assert_eq!(
            fx.egress("a1", &gre),
            Reason::Forwarded,
            "{f:?} GRE within red-a"
        );
        let gre = Packet {
            dst: fx.ip("b1", f),
            ..gre
        };
        assert_eq!(
            fx.egress("a1", &gre),
            Reason::Policy,
            "{f:?} GRE red-a → red-b"
        );
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn icmp_errors_about_tracked_flows_pass_for_path_mtu_discovery() {
    let fx = fixture();
    let router = [2, 0x67, 0, 0, 9, 9];
    for f in FAMILIES {
        for p in PROTOS {
            // red-a → world is allowed; a router on the way answers "too big".
            let out = fx.packet(fx.ip("a1", f), fx.mac("a1"), world(f), p, port(f, p, 20));
            let error = packet::icmp_error(router, fx.mac("a1"), world(f), fx.ip("a1", f), &out);
            assert_eq!(
                fx.probe()
                    .verdict(fx.ifindex("a1"), Direction::Ingress, &error)
                    .unwrap(),
                Reason::ExternalIngress,
                "{f:?} {p:?} error before the flow exists"
            );
            assert_eq!(fx.egress("a1", &out), Reason::Forwarded);
            assert_eq!(
                fx.probe()
                    .verdict(fx.ifindex("a1"), Direction::Ingress, &error)
                    .unwrap(),
                Reason::Forwarded,
                "{f:?} {p:?} error about the tracked flow"
            );
            // An error quoting a flow that was never allowed stays dropped.
            let other = fx.packet(fx.ip("a1", f), fx.mac("a1"), world(f), p, port(f, p, 21));
            let forged = packet::icmp_error(router, fx.mac("a1"), world(f), fx.ip("a1", f), &other);
            assert_eq!(
                fx.probe()
                    .verdict(fx.ifindex("a1"), Direction::Ingress, &forged)
                    .unwrap(),
                Reason::ExternalIngress,
                "{f:?} {p:?} forged error"
            );
        }
    }
}
