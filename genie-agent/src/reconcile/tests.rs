use std::{net::IpAddr, path::PathBuf};

use genie_common::{
    identity::{DNS, HOST},
    maps::identity_flags,
    policy::proto,
};

use super::*;
use crate::{
    endpoint::{Endpoint, EndpointRequest},
    model::load_sources,
};

const OBJECTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec: {namespaces: [red]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: a}
spec:
  tenant: red
  subnet: 198.18.1.0/24
  isolation:
    allowHostPorts: [{protocol: UDP, port: 53}]
    peers:
      - network: b
        ports: [{protocol: TCP, port: 80}, {protocol: TCP, port: 8000, endPort: 8080}, {protocol: ICMP}]
      - network: c
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: b}
spec: {tenant: red, subnet: 198.18.2.0/24, isolation: {allowHostAccess: true, allowExternal: false}}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: c}
spec: {tenant: red, subnet: 2001:db8:3::/64}
";

fn model(text: &str) -> Model {
    load_sources(&[(PathBuf::from("o.yaml"), text.to_owned())]).unwrap()
}

fn endpoint(id: u32, network: &str, ip: &str) -> Endpoint {
    Endpoint {
        id,
        ifindex: 100 + id,
        pod_key: 0,
        recovered: None,
        bridge: Some(1),
        link_local: Vec::new(),
        request: EndpointRequest {
            pod: format!("pod{id}"),
            namespace: "red".to_owned(),
            network: network.to_owned(),
            interface: "eth0".to_owned(),
            host_interface: format!("veth{id}"),
            netns: PathBuf::from("/proc/1/ns/net"),
            side: crate::dataplane::AttachSide::Host,
            pod_netns: None,
            ips: vec![ip.parse().unwrap()],
            mac: Some("02:00:00:00:00:01".to_owned()),
            bandwidth: None,
            container_id: None,
        },
    }
}

fn key(src: u32, dst: u32, protocol: u8) -> PolicyKey {
    PolicyKey {
        src_identity: src,
        dst_identity: dst,
        protocol,
        _pad: [0; 3],
    }
}

#[test]
fn the_desired_maps_follow_the_objects() {
    let m = model(OBJECTS);
    let (a, b, c) = (
        m.logical["a"].identity,
        m.logical["b"].identity,
        m.logical["c"].identity,
    );
    let node = NodeInfo {
        host_addresses: vec!["198.18.1.1".parse().unwrap()],
        host_prefixes: vec!["198.18.1.1/24".parse().unwrap()],
        host_cidrs: vec![],
        dns_addresses: vec!["198.18.200.10".parse().unwrap()],
        remote_endpoints: vec![],
    };
    let state = desired_state(
        &m,
        &[
            endpoint(1, "a", "198.18.1.11"),
            endpoint(2, "default", "198.18.9.9"),
        ],
        &node,
        &ZoneAssignment::new(),
    );

    assert_eq!(state.endpoints[&101].identity, a);
    assert_eq!(state.endpoints[&101].mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        state.endpoints[&102].identity,
        m.tenants["red"].default_identity
    );
    assert_eq!(
        state.addrs[&addr16("198.18.1.11".parse().unwrap())],
        AddrInfo {
            identity: a,
            endpoint_id: 1
        }
    );
    assert_eq!(
        state.addrs[&addr16("198.18.200.10".parse().unwrap())].identity,
        DNS
    );

    // Subnets, and the node address as a /32 that wins over its subnet.
    assert_eq!(
        state.cidrs[&cidr_key("198.18.1.0/24".parse().unwrap())].identity,
        a
    );
    assert_eq!(
        state.cidrs[&cidr_key("2001:db8:3::/64".parse().unwrap())].identity,
        c
    );
    assert_eq!(
        state.cidrs[&cidr_key("198.18.1.1/32".parse().unwrap())].identity,
        HOST
    );
    assert_eq!(cidr_key("198.18.1.1/32".parse().unwrap()).0, 128);

    // Flags.
    assert_eq!(state.identities[&b].flags, identity_flags::ALLOW_HOST);
    assert_eq!(state.identities[&a].flags, identity_flags::ALLOW_EXTERNAL);

    // Policy: a → b on TCP 80 and 8000-8080, ICMP on both families; a → c everything;
    // a → HOST on UDP 53; nothing the other way.
    let tcp = state.policy[&key(a, b, proto::TCP)];
    assert_eq!(tcp.count, 2);
    assert!(tcp.allows_port(80) && tcp.allows_port(8042) && !tcp.allows_port(443));
    assert_eq!(state.policy[&key(a, b, proto::ICMP)].count, 0);
    assert_eq!(state.policy[&key(a, b, proto::ICMPV6)].count, 0);
    assert_eq!(state.policy[&key(a, c, 0)].count, 0);
    assert!(state.policy[&key(a, HOST, proto::UDP)].allows_port(53));
    assert!(!state.policy.keys().any(|k| k.src_identity == b));
    assert_eq!(state.policy.len(), 5);
}

#[test]
fn endpoints_of_a_removed_network_lose_their_record() {
    let m = model(OBJECTS);
    let eps = [endpoint(1, "b", "198.18.2.11")];
    assert!(
        desired_state(&m, &eps, &NodeInfo::default(), &ZoneAssignment::new())
            .endpoints
            .contains_key(&101)
    );
    let without_b = model(&OBJECTS.replace("      - network: b\n        ports: [{protocol: TCP, port: 80}, {protocol: TCP, port: 8000, endPort: 8080}, {protocol: ICMP}]\n", "").replace(
        "---\napiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {name: b}\nspec: {tenant: red, subnet: 198.18.2.0/24, isolation: {allowHostAccess: true, allowExternal: false}}\n",
        "",
    ));
    let state = desired_state(
        &without_b,
        &eps,
        &NodeInfo::default(),
        &ZoneAssignment::new(),
    );
    assert!(
        state.endpoints.is_empty(),
        "its interface now drops everything (fail closed)"
    );
    assert!(
        !state
            .addrs
            .contains_key(&addr16(IpAddr::from([198, 18, 2, 11])))
    );
}

#[test]
fn limits_become_buckets_with_the_endpoints_own_bandwidth_first() {
    let text = format!(
        "{OBJECTS}---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: shared}}
spec:
  tenant: red
  subnet: 198.18.9.0/24
  limits: {{egressBandwidth: 100M, ingressBandwidth: 50M, egressQPS: 20, scope: Network}}
"
    );
    let m = model(&text);
    let mut own = endpoint(1, "shared", "198.18.9.10");
    own.request.bandwidth = Some(crate::cni::annotations::BandwidthRequest {
        egress_rate: Some(10_000_000),
        ..Default::default()
    });
    let other = endpoint(2, "shared", "198.18.9.11");
    let plain = endpoint(3, "a", "198.18.1.10");
    let s = desired_state(
        &m,
        &[own, other, plain],
        &NodeInfo::default(),
        &ZoneAssignment::new(),
    );
    let net = m.logical["shared"].identity;
    let flags = |id: u32| s.endpoints[&(100 + id)].limits;
    use genie_common::ratelimit::limit_flags::*;
    // Endpoint 1: its own egress bandwidth, the network's shared ingress bandwidth and QPS.
    assert_eq!(
        flags(1),
        EGRESS_BYTES | INGRESS_BYTES | EGRESS_FLOWS | (INGRESS_BYTES << 4) | (EGRESS_FLOWS << 4)
    );
    assert_eq!(
        flags(2),
        (EGRESS_BYTES | INGRESS_BYTES | EGRESS_FLOWS) * 0x11
    );
    assert_eq!(flags(3), 0, "a network without limits");
    let bucket = |owner: u32, kind: u8, direction: Direction, shared: u8| {
        s.buckets[&BucketKey {
            owner,
            kind,
            direction: direction as u8,
            network_scope: shared,
            _pad: 0,
        }]
    };
    assert_eq!(
        bucket(1, kind::BYTES, Direction::Egress, 0),
        BucketConfig::bandwidth(10_000_000, 0)
    );
    assert_eq!(
        bucket(net, kind::BYTES, Direction::Egress, 1),
        BucketConfig::bandwidth(100_000_000, 0)
    );
    assert_eq!(
        bucket(net, kind::BYTES, Direction::Ingress, 1),
        BucketConfig::bandwidth(50_000_000, 0)
    );
    assert_eq!(
        bucket(net, kind::FLOWS, Direction::Egress, 1),
        BucketConfig::qps(20, 0)
    );
    assert_eq!(s.buckets.len(), 4, "shared buckets exist once");
}

#[test]
fn every_tenant_gets_its_own_conntrack_zone_and_keeps_it() {
    let m = model(&format!(
        "{OBJECTS}---\napiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: blue}}\nspec: {{namespaces: [blue], quota: {{connections: 4096}}}}\n"
    ));
    let mut blue = endpoint(2, "default", "198.18.9.9");
    blue.request.namespace = "blue".to_owned();
    let eps = [endpoint(1, "a", "198.18.1.11"), blue];
    let zones = assign_zones(&m, &eps, &ZoneAssignment::new());
    assert_eq!(zones[""], UNOWNED_CT_ZONE);
    assert_ne!(zones["red"], zones["blue"]);
    assert!(zones["red"] != UNOWNED_CT_ZONE && zones["blue"] != UNOWNED_CT_ZONE);
    // Only tenants with endpoints on the node take a zone.
    assert_eq!(
        assign_zones(&m, &eps[..1], &ZoneAssignment::new())
            .keys()
            .collect::<Vec<_>>(),
        ["", "red"]
    );
    // A tenant keeps its zone; a new one gets a free one.
    let previous = ZoneAssignment::from([("blue".to_owned(), 7)]);
    let again = assign_zones(&m, &eps, &previous);
    assert_eq!(again["blue"], 7);
    assert!(again["red"] != 7 && again["red"] != UNOWNED_CT_ZONE);

    let s = desired_state(&m, &eps, &NodeInfo::default(), &again);
    assert_eq!(s.endpoints[&101].ct_zone, again["red"]);
    assert_eq!(s.endpoints[&102].ct_zone, 7);
    assert_eq!(
        s.ct_zones,
        BTreeMap::from([
            (again["red"], genie_common::maps::DEFAULT_ZONE_CONNECTIONS),
            (7, 4096)
        ])
    );
    assert_eq!(s.identities[&m.tenants["blue"].default_identity].ct_zone, 7);
}

#[test]
fn directed_broadcasts_and_link_local_addresses_are_classified() {
    let m = model(OBJECTS);
    let node = NodeInfo {
        host_prefixes: vec!["198.18.50.1/24".parse().unwrap()],
        ..NodeInfo::default()
    };
    let mut ep = endpoint(1, "a", "198.18.1.11");
    ep.link_local = vec!["fe80::1".parse().unwrap()];
    ep.bridge = None;
    let s = desired_state(&m, &[ep], &node, &ZoneAssignment::new());
    for broadcast in ["198.18.1.0", "198.18.1.255", "198.18.50.0", "198.18.50.255"] {
        assert_eq!(
            s.addrs[&addr16(broadcast.parse().unwrap())].identity,
            genie_common::identity::BROADCAST,
            "{broadcast}"
        );
    }
    assert_eq!(
        s.addrs[&addr16("fe80::1".parse().unwrap())],
        AddrInfo {
            identity: m.logical["a"].identity,
            endpoint_id: 1
        }
    );
    assert_eq!(
        s.endpoints[&101].flags,
        genie_common::maps::endpoint_flags::GROUP_TO_HOST,
        "a host side in no bridge decides its group traffic's host access itself"
    );
}
