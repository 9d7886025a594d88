//! The tenant boundary below unicast TCP, as an attacker in a pod sees it: broadcast and
//! multicast from ordinary sockets, raw frames to another tenant's MAC, neighbour
//! advertisements for someone else's address, and a flood of new flows against another
//! tenant's tracked connections — with the real agent, genie-cni and Debian's bridge plugin.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use genie_tests::{
    TestNode, Topology,
    cni::{CniCluster, CniPod},
    l2::{GroupListener, RawSocket, send_udp},
    packet::{Fragment, L4, Packet, icmp},
};

/// Red and blue share the default network; red may send UDP 5353 (mDNS) to the node.
const TENANTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec:
  namespaces: [red]
  defaultIsolation: {allowHostPorts: [{protocol: UDP, port: 5353}]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: blue}
spec: {namespaces: [blue]}
";

const SUBNET: &str = "198.18.20.0/24";
const BROADCAST: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 255);

fn cluster() -> CniCluster {
    let node = TestNode::new(Topology::new().unwrap(), TENANTS).unwrap();
    CniCluster::start(node, SUBNET).unwrap()
}

/// Every pod and the node listen on `port` (joined to the multicast groups); `sender`
/// sends three datagrams to each group address. Returns, per group, who received them.
fn deliveries(
    c: &CniCluster,
    pods: &[(&str, &CniPod)],
    sender: &CniPod,
    port: u16,
) -> Vec<(String, Vec<String>)> {
    let groups: Vec<IpAddr> = vec![
        Ipv4Addr::BROADCAST.into(),
        BROADCAST.into(),
        Ipv4Addr::new(224, 0, 0, 251).into(),
        Ipv4Addr::new(239, 1, 1, 1).into(),
    ];
    let multicast: Vec<IpAddr> = groups[2..].to_vec();
    let mut listeners: Vec<(String, GroupListener)> = pods
        .iter()
        .map(|(label, pod)| {
            (
                (*label).to_owned(),
                GroupListener::start(&pod.netns, "eth0", port, &multicast).unwrap(),
            )
        })
        .collect();
    listeners.push((
        "node".to_owned(),
        GroupListener::start(c.node.topo.node(), "gbr-def", port, &multicast).unwrap(),
    ));
    let mut out = Vec::new();
    for group in groups {
        let marker = format!("genie-group-{group}-{port}");
        send_udp(&sender.netns, "eth0", group, port, marker.as_bytes(), 3).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let got: Vec<String> = listeners
            .iter()
            .filter(|(_, l)| l.count(marker.as_bytes()) > 0)
            .map(|(label, _)| label.clone())
            .collect();
        out.push((group.to_string(), got));
    }
    out
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn broadcast_and_multicast_stay_within_the_tenant() {
    let c = cluster();
    let r1 = c.add("c0r1", "red", "r1", false).unwrap();
    let r2 = c.add("c0r2", "red", "r2", false).unwrap();
    let b1 = c.add("c0b1", "blue", "b1", false).unwrap();
    let pods = [("r1", &r1), ("r2", &r2), ("b1", &b1)];

    // Blue's broadcast and multicast reach no red pod and not the node (blue has no host
    // access); the sender's own copy comes back through loopback, which genie does not see.
    for (group, got) in deliveries(&c, &pods, &b1, 5353) {
        let others: Vec<&String> = got.iter().filter(|l| *l != "b1").collect();
        assert!(others.is_empty(), "blue's {group} reached {others:?}");
    }
    // Red's reach red, and the node only on the port red may use there.
    for (group, got) in deliveries(&c, &pods, &r2, 5353) {
        assert!(
            got.contains(&"r1".to_owned()),
            "red's {group} missed r1: {got:?}"
        );
        assert!(
            !got.contains(&"b1".to_owned()),
            "red's {group} reached blue: {got:?}"
        );
        assert!(
            got.contains(&"node".to_owned()),
            "red's {group} on 5353 missed the node: {got:?}"
        );
    }
    for (group, got) in deliveries(&c, &pods, &r2, 5354) {
        assert!(
            got.contains(&"r1".to_owned()),
            "red's {group} missed r1: {got:?}"
        );
        assert!(
            !got.contains(&"node".to_owned()),
            "red's {group} on 5354 reached the node: {got:?}"
        );
    }
}

/// The EUI-64 link-local address of a MAC (RFC 4291 Appendix A): what the pods' kernels give
/// their interfaces.
fn eui64(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn raw_frames_reach_a_pod_only_when_addressed_to_it() {
    let c = cluster();
    let r1 = c.add("c0r1", "red", "r1", true).unwrap();
    let r2 = c.add("c0r2", "red", "r2", true).unwrap();
    let b1 = c.add("c0b1", "blue", "b1", true).unwrap();
    let (r1_mac, r2_mac, b1_mac) = (r1.mac("eth0"), r2.mac("eth0"), b1.mac("eth0"));
    let capture = RawSocket::open(&r1.netns, "eth0").unwrap();
    let capture_r2 = RawSocket::open(&r2.netns, "eth0").unwrap();
    let attacker = RawSocket::open(&b1.netns, "eth0").unwrap();
    let udp = |dst: IpAddr, dst_mac: [u8; 6]| Packet {
        src_mac: b1_mac,
        dst_mac,
        src: IpAddr::V4(b1.ipv4),
        dst,
        l4: L4::Udp {
            sport: 4000,
            dport: 4000,
        },
        fragment: Fragment::None,
    };
    // Blue frames to r1's MAC that are not addressed to r1: its own address, an outside
    // address, the broadcast MAC.
    let cases = [
        ("blue's own address", udp(IpAddr::V4(b1.ipv4), r1_mac)),
        (
            "an outside address",
            udp("198.19.7.7".parse().unwrap(), r1_mac),
        ),
        ("the broadcast MAC", udp(IpAddr::V4(b1.ipv4), [0xff; 6])),
    ];
    for (what, p) in cases {
        let marker = format!("genie-covert-{what}");
        for _ in 0..3 {
            attacker
                .send(&p.frame_with_payload(marker.as_bytes()))
                .unwrap();
        }
        assert_eq!(
            capture.count_received(marker.as_bytes(), Duration::from_millis(300)),
            0,
            "a frame to r1's MAC for {what} reached r1"
        );
    }
    // Red's own unicast still arrives.
    let mut own = udp(IpAddr::V4(r1.ipv4), r1_mac);
    own.src_mac = r2_mac;
    own.src = IpAddr::V4(r2.ipv4);
    let sender = RawSocket::open(&r2.netns, "eth0").unwrap();
    for _ in 0..3 {
        sender
            .send(&own.frame_with_payload(b"genie-honest"))
            .unwrap();
    }
    assert!(capture.count_received(b"genie-honest", Duration::from_millis(300)) > 0);

    // Blue announces r1's link-local address as its own (IPv6 neighbour advertisement to all
    // nodes): r2 must never learn it.
    let r1_ll = eui64(r1_mac);
    let b1_ll = eui64(b1_mac);
    let lie = Packet {
        src_mac: b1_mac,
        dst_mac: [0x33, 0x33, 0, 0, 0, 1],
        src: IpAddr::V6(b1_ll),
        dst: IpAddr::V6("ff02::1".parse::<Ipv6Addr>().unwrap()),
        l4: L4::Nd {
            icmp_type: icmp::NEIGHBOUR_ADVERTISEMENT,
            target: r1_ll,
            lladdr: Some(b1_mac),
        },
        fragment: Fragment::None,
    };
    // The lie's own bytes: the target, then the link-layer option naming blue's MAC.
    let marker: Vec<u8> = r1_ll
        .octets()
        .into_iter()
        .chain([2, 1])
        .chain(b1_mac)
        .collect();
    for _ in 0..3 {
        attacker.send(&lie.frame()).unwrap();
    }
    assert_eq!(
        capture_r2.count_received(&marker, Duration::from_millis(300)),
        0,
        "blue's advertisement of r1's link-local address reached r2"
    );
    // Within red, where group ND is delivered (below), r2's advertisement of r1's address
    // stops at r2: a pod announces only its own addresses.
    let lie_in_red = Packet {
        src_mac: r2_mac,
        src: IpAddr::V6(eui64(r2_mac)),
        l4: L4::Nd {
            icmp_type: icmp::NEIGHBOUR_ADVERTISEMENT,
            target: r1_ll,
            lladdr: Some(r2_mac),
        },
        ..lie
    };
    for _ in 0..3 {
        sender.send(&lie_in_red.frame()).unwrap();
    }
    let claims_r1: Vec<u8> = r1_ll
        .octets()
        .into_iter()
        .chain([2, 1])
        .chain(r2_mac)
        .collect();
    assert_eq!(
        capture.count_received(&claims_r1, Duration::from_millis(300)),
        0,
        "r2's advertisement of r1's link-local address reached r1"
    );
    // r2's own advertisement of its own address does reach r1.
    let r2_ll = eui64(r2_mac);
    let truth = Packet {
        src_mac: r2_mac,
        src: IpAddr::V6(r2_ll),
        l4: L4::Nd {
            icmp_type: icmp::NEIGHBOUR_ADVERTISEMENT,
            target: r2_ll,
            lladdr: Some(r2_mac),
        },
        ..lie
    };
    for _ in 0..3 {
        sender.send(&truth.frame()).unwrap();
    }
    let truthful: Vec<u8> = r2_ll
        .octets()
        .into_iter()
        .chain([2, 1])
        .chain(r2_mac)
        .collect();
    assert!(capture.count_received(&truthful, Duration::from_millis(300)) > 0);
}

/// Green's client network may open TCP 8080 to green's server network, not the other way;
/// blue floods new flows.
const FLOOD_OBJECTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: green}
spec: {namespaces: [green]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: blue}
spec: {namespaces: [blue]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: g-client}
spec:
  tenant: green
  subnet: 198.18.1.0/24
  isolation: {peers: [{network: g-server, ports: [{protocol: TCP, port: 8080}]}]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: g-server}
spec: {tenant: green, subnet: 198.18.2.0/24}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: b-net}
spec: {tenant: blue, subnet: 198.18.3.0/24}
";

/// New UDP flows from `netns`, each to another outside (address, port), `count` of them, three
/// datagrams each: a table entry looked up again counts as used, so an entry that sees only
/// one packet would be the first one an LRU evicts.
fn flood(netns: &genie_tests::topology::Netns, count: u32) {
    genie_agent::netns::run_in(&netns.path(), || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for i in 0..count {
            let dst = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
            for _ in 0..3 {
                let _ = socket.send_to(b"x", (dst, 1024 + (i >> 16) as u16));
            }
        }
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn a_connection_flood_evicts_only_the_flooding_tenants_flows() {
    let mut topo = Topology::new().unwrap();
    topo.add_pod_on("client", 1).unwrap();
    topo.add_pod_on("server", 2).unwrap();
    topo.add_pod_on("flooder", 3).unwrap();
    // The flood leaves the node nowhere.
    topo.node()
        .ip(&["route", "add", "blackhole", "198.19.0.0/16"])
        .unwrap();
    let node = TestNode::new(topo, FLOOD_OBJECTS).unwrap();
    node.spawn_agent().unwrap();
    node.register("client", "green", "g-client").unwrap();
    node.register("server", "green", "g-server").unwrap();
    node.register("flooder", "blue", "b-net").unwrap();
    let (client, server) = (node.topo.pod("client"), node.topo.pod("server"));
    let server_ip = server.ipv4;
    let listener = genie_agent::netns::run_in(&server.netns.path(), || {
        std::net::TcpListener::bind((server_ip, 8080))
    })
    .unwrap()
    .unwrap();
    let mut to_server = genie_agent::netns::run_in(&client.netns.path(), || {
        std::net::TcpStream::connect((server_ip, 8080))
    })
    .unwrap()
    .unwrap();
    let (mut to_client, _) = listener.accept().unwrap();
    to_server.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    to_client.read_exact(&mut buf[..5]).unwrap();

    // The premise: green's server may not open a connection to the client, so the push below
    // arrives only as part of the tracked connection.
    let _client_echo = genie_tests::traffic::EchoServer::start(client, 8081).unwrap();
    assert!(
        !genie_tests::traffic::tcp_connect_echo(server, client.ipv4, 8081).unwrap(),
        "the server opened a connection to the client"
    );

    // Far more new flows than every tracking table of the node used to hold together.
    flood(&node.topo.pod("flooder").netns, 450_000);
    // The flood filled blue's table: the eviction below would otherwise prove nothing.
    let maps = genie_agent::dataplane::PinnedMaps::open(node.bpffs()).unwrap();
    let zone_of = |pod: &str| {
        let state = maps.read_state().unwrap();
        let id = node
            .call(&genie_agent::api::Request::Endpoints)
            .unwrap()
            .endpoints
            .unwrap()
            .into_iter()
            .find(|e| e.request.pod == pod)
            .unwrap()
            .map_key();
        state.endpoints[&id].ct_zone
    };
    let blue_zone = zone_of("flooder");
    assert_ne!(blue_zone, zone_of("client"), "one table for two tenants");
    let blue_flows = maps
        .zones()
        .table(blue_zone)
        .unwrap()
        .unwrap()
        .keys()
        .count();
    let capacity = maps.zones().capacities().unwrap()[&blue_zone];
    assert!(
        blue_flows as u32 >= capacity * 9 / 10,
        "blue's table holds {blue_flows} of {capacity} flows after the flood"
    );

    // The idle connection, allowed one way only, still carries what the server sends first.
    to_client.write_all(b"push").unwrap();
    to_server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let got = to_server.read(&mut buf).unwrap_or(0);
    assert_eq!(
        &buf[..got],
        b"push",
        "another tenant's flood evicted green's tracked connection"
    );
}
