//! Per-endpoint packet and byte counters on both directions of a pod's host-side veth, read
//! back from the pinned per-CPU map.

use std::process::Command;

use genie_agent::{
    agent::Agent,
    cni::annotations::BandwidthRequest,
    dataplane::{self, CounterRow, FROM_ENDPOINT_PROGRAM, read_counters},
};
use genie_common::{CounterValue, Direction, Reason, maps::ALL_MAPS};
use genie_tests::{
    TestNode, Topology, names,
    packet::{self, TC_ACT_NEXT, TC_ACT_SHOT},
    traffic,
};

/// Ethernet (14) + IPv4 (20) + UDP (8) headers around each payload.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;

/// One tenant; the pods use its default network. The two logical networks are unused by the
/// pods and only give the policy map an entry to dump.
const ONE_TENANT: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: demo}
spec: {namespaces: [demo]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: front}
spec:
  tenant: demo
  subnet: 198.18.100.0/24
  isolation:
    peers: [{network: back, ports: [{protocol: TCP, port: 5432}]}]
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: back}
spec: {tenant: demo, subnet: 198.18.101.0/24}
";

fn counter(
    rows: &[CounterRow],
    endpoint_id: u32,
    direction: Direction,
    reason: Reason,
) -> CounterValue {
    rows.iter()
        .filter(|r| r.endpoint_id == endpoint_id && r.direction == direction && r.reason == reason)
        .fold(CounterValue::default(), |acc, r| acc.add(r.value))
}

/// A node with two pods of one tenant on the default network, under an in-process agent.
fn two_pods() -> (TestNode, Agent) {
    let mut topo = Topology::new().unwrap();
    topo.add_pod("a").unwrap();
    topo.add_pod("b").unwrap();
    let node = TestNode::new(topo, ONE_TENANT).unwrap();
    let mut agent = node.agent_in_process().unwrap();
    for label in ["a", "b"] {
        let mut request = node.endpoint_request(node.topo.pod(label), "demo", "default");
        if label == "b" {
            // A limit far above anything the tests send, so the limits map has an entry.
            request.bandwidth = Some(BandwidthRequest {
                egress_rate: Some(10_000_000_000),
                ..BandwidthRequest::default()
            });
        }
        agent.add_endpoint(request).unwrap();
    }
    (node, agent)
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn counts_exactly_the_packets_sent_between_two_pods() {
    let (node, _agent) = two_pods();
    let (a, b) = (node.topo.pod("a"), node.topo.pod("b"));
    const SENT: usize = 100;
    const PAYLOAD: usize = 64;

    let delivered = traffic::udp(a, b, 7000, SENT, PAYLOAD).unwrap();
    assert_eq!(delivered, SENT, "every datagram arrives");

    let rows = read_counters(node.bpffs()).unwrap();
    let bytes = SENT as u64 * (UDP_OVERHEAD + PAYLOAD as u64);
    let expected = CounterValue {
        packets: SENT as u64,
        bytes,
    };
    assert_eq!(
        counter(&rows, 1, Direction::Egress, Reason::Forwarded),
        expected,
        "a sent: {rows:?}"
    );
    assert_eq!(
        counter(&rows, 2, Direction::Ingress, Reason::Forwarded),
        expected,
        "b received: {rows:?}"
    );
    // Nothing else crossed the wire: static neighbours, no IPv6, UDP has no replies.
    assert_eq!(
        counter(&rows, 1, Direction::Ingress, Reason::Forwarded),
        CounterValue::default()
    );
    assert_eq!(
        counter(&rows, 2, Direction::Egress, Reason::Forwarded),
        CounterValue::default()
    );

    // Replies count in the other direction: 5 pings are 5 requests and 5 replies.
    assert_eq!(traffic::ping(a, b.ipv4, 5).unwrap(), 5);
    let rows = read_counters(node.bpffs()).unwrap();
    assert_eq!(
        counter(&rows, 1, Direction::Egress, Reason::Forwarded).packets,
        SENT as u64 + 5
    );
    assert_eq!(
        counter(&rows, 2, Direction::Egress, Reason::Forwarded).packets,
        5,
        "b sent: {rows:?}"
    );
    assert_eq!(
        counter(&rows, 1, Direction::Ingress, Reason::Forwarded).packets,
        5,
        "a received: {rows:?}"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn counters_stay_at_zero_without_the_program() {
    // The negative control for the test above: with the endpoints removed (programs detached),
    // the same traffic is delivered and the map records nothing — so the count above comes
    // from the program.
    let (node, mut agent) = two_pods();
    for label in ["a", "b"] {
        agent.remove_endpoint("demo", label, "eth0").unwrap();
    }
    let (a, b) = (node.topo.pod("a"), node.topo.pod("b"));
    assert_eq!(traffic::udp(a, b, 7001, 50, 64).unwrap(), 50);
    let rows = read_counters(node.bpffs()).unwrap();
    assert!(
        rows.iter().all(|r| r.value.packets == 0),
        "counted without a program: {rows:?}"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn tcp_flows_are_counted_both_ways() {
    let (node, _agent) = two_pods();
    assert!(traffic::tcp_echo(node.topo.pod("a"), node.topo.pod("b"), 7100).unwrap());
    let rows = read_counters(node.bpffs()).unwrap();
    // SYN, ACK, data, FIN… at least three each way; the exact number depends on the stack.
    for (id, dir) in [
        (1, Direction::Egress),
        (2, Direction::Ingress),
        (2, Direction::Egress),
        (1, Direction::Ingress),
    ] {
        assert!(
            counter(&rows, id, dir, Reason::Forwarded).packets >= 3,
            "{id} {dir:?}: {rows:?}"
        );
    }
    assert_eq!(
        counter(&rows, 1, Direction::Egress, Reason::Forwarded),
        counter(&rows, 2, Direction::Ingress, Reason::Forwarded),
        "what a sends is what b receives"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn crafted_packets_through_prog_test_run() {
    let (node, agent) = two_pods();
    let (a, b) = (node.topo.pod("a"), node.topo.pod("b"));
    let frame = packet::ipv4_udp(a.mac, b.mac, a.ipv4, b.ipv4, 1234, 53, &[0u8; 18]);
    let program = agent.dataplane().program(FROM_ENDPOINT_PROGRAM).unwrap();
    let netns = node.topo.node().path();

    let a_ifindex = dataplane::interface_index(&netns, &a.host_ifname).unwrap();
    let result = packet::run_tc(program, &netns, a_ifindex, &frame, 10).unwrap();
    assert_eq!(result.return_value, TC_ACT_NEXT);

    // br0 has no endpoint record: genie's program fails closed there.
    let br0 = dataplane::interface_index(&netns, "br0").unwrap();
    let result = packet::run_tc(program, &netns, br0, &frame, 3).unwrap();
    assert_eq!(result.return_value, TC_ACT_SHOT);

    let rows = read_counters(node.bpffs()).unwrap();
    let len = frame.len() as u64;
    assert_eq!(
        counter(&rows, 1, Direction::Egress, Reason::Forwarded),
        CounterValue {
            packets: 10,
            bytes: 10 * len
        }
    );
    assert_eq!(
        counter(&rows, 0, Direction::Egress, Reason::UnknownEndpoint),
        CounterValue {
            packets: 3,
            bytes: 3 * len
        }
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn bpftool_prints_named_fields_of_every_map() {
    let (node, _agent) = two_pods();
    assert!(traffic::tcp_echo(node.topo.pod("a"), node.topo.pod("b"), 7200).unwrap());
    for map in ALL_MAPS {
        let out = Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(node.bpffs().join(map))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bpftool failed on {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if map == "genie_ct" {
            // An array of per-tenant tables: each value is an inner map's id; its entries are in
            // the inner map.
            for line in text.clone().lines().filter(|l| l.starts_with("key:")) {
                let bytes: Vec<u8> = line
                    .split("value:")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).unwrap())
                    .collect();
                let id = u32::from_le_bytes(bytes[..4].try_into().unwrap());
                let inner = Command::new("bpftool")
                    .args(["map", "dump", "id", &id.to_string()])
                    .output()
                    .unwrap();
                text.push_str(&String::from_utf8_lossy(&inner.stdout));
            }
        }
        let fields: &[&str] = match map {
            "genie_endpoints" => &["\"endpoint_id\": 1", "\"identity\"", "\"mac\""],
            "genie_addrs" => &["\"addr\"", "\"identity\"", "\"endpoint_id\": 2"],
            "genie_cidrs" => &["\"prefix_len\"", "\"identity\": 1"],
            "genie_idents" => &["\"flags\"", "\"tenant\"", "\"network\""],
            "genie_policy" => &["\"src_identity\"", "\"protocol\": 6", "\"first\": 5432"],
            "genie_ct" => &[
                "\"addr_lo\"",
                "\"port_hi\"",
                "\"last_seen_ns\"",
                "\"epoch\"",
            ],
            "genie_config" => &["\"policy_epoch\""],
            "genie_counters" => &[
                "\"endpoint_id\"",
                "\"direction\"",
                "\"reason\"",
                "\"packets\"",
                "\"bytes\"",
            ],
            "genie_scratch" => &["\"ip\"", "\"flow\"", "\"src_is_lo\""],
            "genie_limits" => &[
                "\"owner\": 2",
                "\"kind\"",
                "\"tat\"",
                "\"unit_cost\"",
                "\"burst_ns\"",
            ],
            other => panic!("no expectation for map {other}"),
        };
        for field in fields {
            assert!(
                text.contains(field),
                "bpftool dump of {map} lacks {field}:\n{text}"
            );
        }
    }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn a_test_that_panics_midway_leaves_nothing_behind() {
    let before = names::leftovers_of_this_process();
    let root_links = || {
        let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
        genie_tests::cni::names_of_links(&out.stdout)
    };
    let links_before = root_links();
    /// The payload of the deliberate panic, so an accidental one cannot pass for it.
    struct Midway(String);
    let created = std::panic::catch_unwind(|| {
        let (node, _agent) = two_pods();
        let base = node.topo.base().to_owned();
        assert!(
            names::leftovers_of_this_process().len() >= 3,
            "the node's namespace, bpffs and temporary directories exist while the test runs"
        );
        std::panic::panic_any(Midway(base));
    })
    .expect_err("the closure panics");
    let Midway(base) = created
        .downcast_ref::<Midway>()
        .expect("the deliberate panic, not another one");
    let after = names::leftovers_of_this_process();
    assert_eq!(after, before, "left behind by {base}: {after:?}");
    // Nothing of the topology (veths, bridges) ended up in the root namespace either.
    assert_eq!(
        root_links(),
        links_before,
        "links left in the root namespace"
    );
}
