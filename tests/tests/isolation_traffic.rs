//! Real traffic between pods in namespaces under the real `genie agent` process: the full
//! isolation matrix, restarts under SIGKILL, immediate tightening, invalid configuration, and
//! cleanup.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::Duration,
};

use genie_agent::{api::Request, dataplane::read_counters};
use genie_common::{Direction, Reason};
use genie_tests::{
    TestNode, Topology,
    node::genie_binary,
    traffic::{self, AtIp, EchoConnection, Reachable, Stream},
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
    peers: [{network: red-b, ports: [{protocol: TCP, port: 8080}]}]
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-b}
spec:
  tenant: red
  subnet: 198.18.2.0/24
  subnet6: 2001:db8:2::/64
  # Far above anything the tests send: it gives `genie inspect limits` something to show.
  limits: {egressBandwidth: 10G, ingressQPS: 100000, scope: Network}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-a}
spec: {tenant: blue, subnet: 198.18.3.0/24, subnet6: 2001:db8:3::/64}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-b}
spec: {tenant: blue, subnet: 198.18.4.0/24, subnet6: 2001:db8:4::/64}
";

/// (label, namespace, network, subnet)
const PODS: [(&str, &str, &str, u8); 6] = [
    ("ra1", "red", "red-a", 1),
    ("ra2", "red", "red-a", 1),
    ("rb1", "red", "red-b", 2),
    ("ba1", "blue", "blue-a", 3),
    ("bb1", "blue", "blue-b", 4),
    ("bb2", "blue", "blue-b", 4),
];

/// Two tenants × two networks, six pods, under a running `genie agent`.
fn six_pods() -> TestNode {
    six_pods_on(Topology::new().unwrap())
}

/// [`six_pods`] on `topo` (an IPv4 or a dual-stack node).
fn six_pods_on(topo: Topology) -> TestNode {
    let mut topo = topo;
    for (label, _, _, subnet) in PODS {
        topo.add_pod_on(label, subnet).unwrap();
    }
    let node = TestNode::new(topo, OBJECTS).unwrap();
    node.spawn_agent().unwrap();
    for (label, ns, net, _) in PODS {
        node.register(label, ns, net).unwrap();
    }
    node
}

fn network_of(label: &str) -> &'static str {
    PODS.iter()
        .find(|p| p.0 == label)
        .map(|p| p.2)
        .unwrap_or("node")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// What DESIGN.md §3 says about a flow: `None` when it is delivered, else the drop reason the
/// sender's egress program counts.
fn expected(src: &str, dst: &str, proto: Proto) -> Option<Reason> {
    let (s, d) = (network_of(src), network_of(dst));
    if s == "node" {
        return None; // HOST → endpoint
    }
    if d == "node" {
        return Some(Reason::HostAccess);
    }
    if s == d {
        return None;
    }
    if s == "red-a" && d == "red-b" && proto == Proto::Tcp {
        return None; // the one peer rule: TCP 8080
    }
    Some(Reason::Policy)
}

static PORT: AtomicU16 = AtomicU16::new(8100);

/// Sends one flow and reports whether it was delivered. TCP goes to the [`EchoServer`] the
/// matrix runs on the destination's port 8080 (the port the peer rule names).
fn delivered(
    from: &(impl Reachable + ?Sized),
    to: &(impl Reachable + ?Sized),
    proto: Proto,
) -> bool {
    match proto {
        Proto::Tcp => traffic::tcp_connect_echo(from, to.address(), 8080).unwrap(),
        Proto::Udp => {
            traffic::udp(from, to, PORT.fetch_add(1, Ordering::Relaxed), 3, 32).unwrap() == 3
        }
        Proto::Icmp => traffic::ping(from, to.address(), 2).unwrap() == 2,
    }
}

/// The place a label stands for, in one address family: a pod, or the node at its address on
/// `near`'s subnet.
fn place<'a>(node: &'a TestNode, label: &str, near: &str, v6: bool) -> AtIp<'a> {
    let topo = &node.topo;
    let (netns, ip) = if label == "node" {
        let pod = topo.pod(near);
        (
            topo.node(),
            if v6 {
                IpAddr::V6(pod.gateway6.expect("a dual-stack node"))
            } else {
                IpAddr::V4(pod.gateway)
            },
        )
    } else {
        let pod = topo.pod(label);
        (
            &pod.netns,
            if v6 {
                IpAddr::V6(pod.ipv6.expect("a dual-stack pod"))
            } else {
                IpAddr::V4(pod.ipv4)
            },
        )
    };
    AtIp { netns, ip }
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn full_matrix_of_six_pods_and_the_node() {
    matrix(&six_pods(), false);
}

/// The same matrix over real IPv6 traffic on a dual-stack node, neighbours resolved by
/// neighbour discovery through genie's programs (nothing preset).
#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn full_matrix_over_ipv6() {
    matrix(&six_pods_on(Topology::dual_stack().unwrap()), true);
}

/// Every source to every destination over TCP, UDP and ICMP in one address family: delivered
/// exactly when DESIGN.md §3 says so, and the drop counted at the sender with its reason.
fn matrix(node: &TestNode, v6: bool) {
    let labels: Vec<&str> = PODS.iter().map(|p| p.0).chain(["node"]).collect();
    let mut failures = Vec::new();
    let mut expected_drops = BTreeSet::new();
    for &dst in &labels {
        let sources: Vec<&str> = labels.iter().copied().filter(|s| *s != dst).collect();
        for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
            // For the node as destination, each source talks to the node's address on its own
            // subnet; one echo server per address.
            let servers: Vec<traffic::EchoServer> = if proto == Proto::Tcp {
                let targets: BTreeSet<IpAddr> =
                    sources.iter().map(|s| place(node, dst, s, v6).ip).collect();
                let netns = place(node, dst, sources[0], v6).netns;
                targets
                    .into_iter()
                    .map(|ip| traffic::EchoServer::start(&AtIp { netns, ip }, 8080).unwrap())
                    .collect()
            } else {
                Vec::new()
            };
            let results: Vec<(&str, bool)> = thread::scope(|scope| {
                let handles: Vec<_> = sources
                    .iter()
                    .map(|&src| {
                        scope.spawn(move || {
                            let near = if src == "node" { dst } else { src };
                            let from = place(node, src, near, v6);
                            let to = place(node, dst, near, v6);
                            (src, delivered(&from, &to, proto))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            drop(servers);
            for (src, ok) in results {
                let want = expected(src, dst, proto);
                if ok != want.is_none() {
                    failures.push(format!(
                        "{src} → {dst} {proto:?}: delivered={ok}, expected {want:?}"
                    ));
                }
                if let Some(reason) = want {
                    expected_drops.insert((src.to_owned(), reason));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "matrix mismatches ({}):\n{}",
        if v6 { "IPv6" } else { "IPv4" },
        failures.join("\n")
    );

    // The drop counters name the right reason at the sender, and nothing else was dropped —
    // but for IPv6 the neighbour solicitations and group messages a pod sees that are not for
    // it (`wrong-destination`, `multicast`: neighbour discovery at work, not the matrix).
    let endpoints = node.call(&Request::Endpoints).unwrap().endpoints.unwrap();
    let label_of = |id: u32| {
        endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.request.pod.clone())
            .unwrap_or_default()
    };
    let rows = read_counters(node.bpffs()).unwrap();
    let mut seen_drops = BTreeSet::new();
    for row in rows.iter().filter(|r| {
        r.reason.is_drop()
            && r.value.packets > 0
            && !(v6 && matches!(r.reason, Reason::WrongDestination | Reason::Multicast))
    }) {
        assert_eq!(
            row.direction,
            Direction::Egress,
            "drops happen where a flow starts: {row:?}"
        );
        seen_drops.insert((label_of(row.endpoint_id), row.reason));
    }
    assert_eq!(
        seen_drops, expected_drops,
        "drop counters per sender and reason"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn sigkill_and_restart_keep_streams_flowing_and_denials_denied() {
    let node = six_pods();
    let (ra1, ra2) = (node.topo.pod("ra1"), node.topo.pod("ra2"));
    let (ba1, rb1) = (node.topo.pod("ba1"), node.topo.pod("rb1"));
    let stream = Stream::start(ra1, ra2, 9500, 1024, Duration::from_millis(5)).unwrap();
    let mut denied_delivered = 0;
    for round in 0..5 {
        node.kill_agent().unwrap();
        // Agent down: enforcement is pinned and unchanged.
        denied_delivered += traffic::udp(ba1, rb1, 9600 + round, 5, 16).unwrap();
        denied_delivered += usize::from(traffic::ping(ba1, rb1.ipv4, 1).unwrap() > 0);
        node.spawn_agent().unwrap();
        // Agent back (new programs swapped into the pinned links).
        denied_delivered += traffic::udp(ba1, rb1, 9700 + round, 5, 16).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let report = stream.stop();
    assert_eq!(
        denied_delivered, 0,
        "a denied pair delivered packets across restarts"
    );
    assert!(report.error.is_none(), "the stream was reset: {report:?}");
    assert!(
        report.max_gap < Duration::from_secs(1),
        "the stream stalled: {report:?}"
    );
    assert!(
        report.bytes_sent > 0 && report.bytes_received == report.bytes_sent,
        "bytes lost: {report:?}"
    );
    // The restarted agent adopted the endpoints instead of re-creating them.
    let endpoints = node.call(&Request::Endpoints).unwrap().endpoints.unwrap();
    assert_eq!(endpoints.len(), PODS.len());
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn removing_a_peer_rule_stops_an_established_connection() {
    let node = six_pods();
    let (ra1, rb1) = (node.topo.pod("ra1"), node.topo.pod("rb1"));
    let mut conn = EchoConnection::open(ra1, rb1, 8080).unwrap();
    assert!(
        conn.round_trip(b"before", Duration::from_secs(2)),
        "the peer rule allows the connection"
    );
    let epoch = || {
        node.call(&Request::Status)
            .unwrap()
            .status
            .unwrap()
            .policy_epoch
    };
    let before = epoch();

    node.write_objects(&OBJECTS.replace(
        "    peers: [{network: red-b, ports: [{protocol: TCP, port: 8080}]}]\n",
        "",
    ))
    .unwrap();
    node.wait_for("the agent to apply the change", || epoch() != before)
        .unwrap();

    assert!(
        !conn.round_trip(b"after", Duration::from_secs(1)),
        "the established connection still works"
    );
    assert!(
        !traffic::tcp_connect_echo(ra1, rb1.ipv4, 8080).unwrap(),
        "a new connection works"
    );
    let revoked: u64 = read_counters(node.bpffs())
        .unwrap()
        .iter()
        .filter(|r| r.reason == Reason::Revoked)
        .map(|r| r.value.packets)
        .sum();
    assert!(revoked > 0, "the cut connection is counted as revoked");
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn an_invalid_object_is_refused_alone_and_an_unreadable_file_blocks_nothing_enforced() {
    let node = six_pods();
    let status = || node.call(&Request::Status).unwrap().status.unwrap();
    let before = status();
    // A peer that names nothing, in a second file: that object is refused, nothing else.
    node.write_config_file(
        "broken.yaml",
        "apiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {name: green}\nspec:\n  tenant: blue\n  subnet: 198.18.9.0/24\n  isolation:\n    peers: [{network: nowhere}]\n",
    )
    .unwrap();
    node.wait_for("the agent to refuse the object", || {
        status().refused.iter().any(|v| v.name == "green")
    })
    .unwrap();
    let now = status();
    assert_eq!(now.config_error, None, "only the object is refused");
    let green = &now.refused[0];
    assert_eq!(now.refused.len(), 1, "{:?}", now.refused);
    let error = green.problems[0].to_string();
    for part in [
        "broken.yaml",
        "LogicalNetwork",
        "\"green\"",
        "spec.isolation.peers[0].network",
        "nowhere",
    ] {
        assert!(
            error.contains(part),
            "the error does not name {part}: {error}"
        );
    }
    assert_eq!(now.policy_epoch, before.policy_epoch, "nothing was written");
    let (ra1, ra2, ba1) = (
        node.topo.pod("ra1"),
        node.topo.pod("ra2"),
        node.topo.pod("ba1"),
    );
    assert_eq!(
        traffic::udp(ra1, ra2, 9800, 3, 8).unwrap(),
        3,
        "allowed pair still delivers"
    );
    assert_eq!(
        traffic::udp(ba1, ra1, 9801, 3, 8).unwrap(),
        0,
        "denied pair still denied"
    );

    // A file that cannot be read at all names itself and changes nothing.
    node.write_config_file("broken.yaml", "kind: [unclosed\n")
        .unwrap();
    node.wait_for("the agent to reject the file", || {
        status().config_error.is_some()
    })
    .unwrap();
    let error = status().config_error.unwrap();
    assert!(error.contains("broken.yaml"), "{error}");
    assert_eq!(
        status().policy_epoch,
        before.policy_epoch,
        "nothing was written"
    );
    assert_eq!(traffic::udp(ra1, ra2, 9802, 3, 8).unwrap(), 3);

    // Fixing the file clears both.
    node.write_config_file("broken.yaml", "").unwrap();
    node.wait_for("the agent to accept the fixed directory", || {
        let s = status();
        s.config_error.is_none() && s.refused.is_empty()
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn inspect_names_what_is_enforced_with_the_agent_running_or_not() {
    let node = six_pods();
    let inspect = |what: &str| node.inspect_json(what).to_string();
    let endpoints = inspect("endpoints");
    let policy = inspect("policy");
    let limits = inspect("limits");
    let networks = inspect("networks");
    let stats = inspect("stats");
    let parsed: serde_json::Value = serde_json::from_str(&networks).unwrap();
    let red_b = parsed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["tenant"] == "red" && n["network"] == "red-b")
        .unwrap_or_else(|| panic!("{parsed}"));
    assert_eq!(
        red_b["cidrs"],
        serde_json::json!(["2001:db8:2::/64", "198.18.2.0/24"])
    );
    assert_eq!(red_b["endpoints"], 1);
    let shared: Vec<(String, String, u64)> = serde_json::from_str::<serde_json::Value>(&limits)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["owner"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                r["rate"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shared,
        [
            (
                "red/red-b".to_owned(),
                "bandwidth".to_owned(),
                10_000_000_000
            ),
            ("red/red-b".to_owned(), "qps".to_owned(), 100_000),
        ],
        "one shared bucket per kind and direction for the network"
    );
    let rows: serde_json::Value = serde_json::from_str(&endpoints).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), PODS.len());
    for (label, ns, net, _) in PODS {
        let row = rows
            .iter()
            .find(|r| r["pod"] == label)
            .unwrap_or_else(|| panic!("{label} missing: {endpoints}"));
        assert_eq!(row["namespace"], ns);
        assert_eq!(row["network"], net);
        assert_eq!(
            row["tenant"], ns,
            "tenants are named like their namespaces here"
        );
        assert_eq!(row["addresses"][0], node.topo.pod(label).ipv4.to_string());
    }
    let view: serde_json::Value = serde_json::from_str(&policy).unwrap();
    let rules = view["rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["from"] == "red/red-a"
            && r["to"] == "red/red-b"
            && r["protocol"] == "TCP"
            && r["ports"] == "8080"),
        "the peer rule is shown by name: {policy}"
    );
    node.kill_agent().unwrap();
    assert_eq!(
        inspect("endpoints"),
        endpoints,
        "same output with the agent down"
    );
    assert_eq!(inspect("policy"), policy, "same output with the agent down");
    assert_eq!(inspect("limits"), limits, "same output with the agent down");
    assert_eq!(
        inspect("networks"),
        networks,
        "same output with the agent down"
    );
    assert_eq!(inspect("stats"), stats, "same output with the agent down");

    // A flow red-a → red-b on the allowed port is tracked, named from its opener.
    let (client, server) = (node.topo.pod("ra1"), node.topo.pod("rb1"));
    assert!(traffic::tcp_echo(client, server, 8080).unwrap());
    let flows: serde_json::Value = serde_json::from_str(&inspect("conntrack")).unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["protocol"] == "TCP"
                && f["to"] == format!("{}:8080", server.ipv4)
                && f["from"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{}:", client.ipv4))),
        "{flows}"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn agent_cleanup_removes_everything_genie_put_on_the_node() {
    let node = six_pods();
    let (ba1, ra1) = (node.topo.pod("ba1"), node.topo.pod("ra1"));
    assert_eq!(
        traffic::udp(ba1, ra1, 9900, 3, 8).unwrap(),
        0,
        "isolated before cleanup"
    );
    let links = genie_links();
    assert_eq!(
        links.len(),
        2 * PODS.len(),
        "one TCX link per pod and direction"
    );
    node.kill_agent().unwrap();
    let out = Command::new(genie_binary())
        .args(["agent", "cleanup", "--bpffs"])
        .arg(node.bpffs())
        .arg("--state-dir")
        .arg(node.state_dir())
        .arg("--socket")
        .arg(node.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node.bpffs().exists(), "pins remain");
    assert!(
        !node.state_dir().join("endpoints.json").exists(),
        "registry remains"
    );
    // The programs are gone from the interfaces: the formerly denied pair now talks.
    assert_eq!(
        traffic::udp(ba1, ra1, 9901, 3, 8).unwrap(),
        3,
        "programs still attached after cleanup"
    );
    node.wait_for("the kernel to release genie's links", || {
        genie_links().iter().all(|id| !links.contains(id))
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn registrations_that_cannot_be_granted_are_refused_and_change_nothing() {
    let node = six_pods();
    let before = node.call(&Request::Status).unwrap().status.unwrap();
    let ra1 = node.topo.pod("ra1");
    let refused =
        |mut request: genie_agent::endpoint::EndpointRequest, field: &str, needle: &str| {
            request.pod = "late".to_owned();
            let err = node
                .call(&Request::AddEndpoint { endpoint: request })
                .unwrap_err();
            let genie_agent::api::ClientError::Refused(e) = err else {
                panic!("not a refusal: {err}")
            };
            assert_eq!(e.code, "refused");
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(needle), "{e}");
        };
    // The interface already carries an endpoint.
    let mut same_interface = node.endpoint_request(ra1, "red", "red-a");
    same_interface.ips = vec!["198.18.1.99".parse().unwrap()];
    refused(same_interface, "hostInterface", "already the endpoint");
    // Another tenant's network, and a network that does not exist.
    refused(
        node.endpoint_request(ra1, "red", "blue-a"),
        "network",
        "belongs to tenant \"blue\"",
    );
    refused(
        node.endpoint_request(ra1, "red", "nowhere"),
        "network",
        "does not exist",
    );
    // An address another endpoint owns.
    refused(
        node.endpoint_request(node.topo.pod("ra2"), "red", "red-a"),
        "ips",
        "already belongs",
    );
    let after = node.call(&Request::Status).unwrap().status.unwrap();
    assert_eq!(
        (after.endpoints, after.policy_epoch),
        (before.endpoints, before.policy_epoch),
        "nothing changed"
    );
}

/// The ids of the BPF links that run genie's programs (bpftool 7.1 lists TCX links as
/// `type 11` with their program id only).
fn genie_links() -> Vec<u64> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let programs: Vec<u64> = json(&["prog", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| matches!(p["name"].as_str(), Some("from_endpoint" | "to_endpoint")))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    json(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| programs.contains(&id))
        })
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn a_tenant_cannot_open_a_path_into_another_tenant_alone() {
    let node = six_pods();
    let (ba1, ra1) = (node.topo.pod("ba1"), node.topo.pod("ra1"));
    let status = || node.call(&Request::Status).unwrap().status.unwrap();
    let _server = traffic::EchoServer::start(ra1, 8080).unwrap();
    let _other = traffic::EchoServer::start(ra1, 8081).unwrap();
    // Blue edits only its own network: refused, and nothing opens.
    let blue_peers = OBJECTS.replace(
        "metadata: {name: blue-a}\nspec: {tenant: blue, subnet: 198.18.3.0/24, subnet6: 2001:db8:3::/64}",
        "metadata: {name: blue-a}\nspec:\n  tenant: blue\n  subnet: 198.18.3.0/24\n  subnet6: 2001:db8:3::/64\n  isolation: {peers: [{network: red-a, ports: [{protocol: TCP, port: 8080, endPort: 8081}]}]}",
    );
    node.write_objects(&blue_peers).unwrap();
    node.wait_for("the agent to refuse blue's peer rule", || {
        status().refused.iter().any(|v| v.name == "blue-a")
    })
    .unwrap();
    let refused = status().refused;
    assert_eq!(refused.len(), 1, "only blue-a is refused: {refused:?}");
    let error = refused[0].problem_text();
    assert!(
        error.contains("spec.isolation.peers[0].network") && error.contains("allowFrom"),
        "{error}"
    );
    assert!(!traffic::tcp_connect_echo(ba1, ra1.ipv4, 8080).unwrap());
    // Red consents to port 8080 only: exactly that opens.
    let before = status().policy_epoch;
    node.write_objects(&blue_peers.replace(
        "    peers: [{network: red-b, ports: [{protocol: TCP, port: 8080}]}]",
        "    peers: [{network: red-b, ports: [{protocol: TCP, port: 8080}]}]\n    allowFrom: [{tenant: blue, network: blue-a, ports: [{protocol: TCP, port: 8080}]}]",
    ))
    .unwrap();
    node.wait_for("the agent to apply the consent", || {
        let s = status();
        s.refused.is_empty() && s.policy_epoch != before
    })
    .unwrap();
    assert!(traffic::tcp_connect_echo(ba1, ra1.ipv4, 8080).unwrap());
    assert!(
        !traffic::tcp_connect_echo(ba1, ra1.ipv4, 8081).unwrap(),
        "blue asked for 8081 too, but red allowed only 8080"
    );
    assert!(
        !traffic::tcp_connect_echo(node.topo.pod("bb1"), ra1.ipv4, 8080).unwrap(),
        "red let in blue-a, not blue-b"
    );
    // Consent is one way: red's network still cannot open anything into blue's.
    let _blue_server = traffic::EchoServer::start(ba1, 8080).unwrap();
    let the_node = traffic::NodeAt {
        netns: node.topo.node(),
        ipv4: ba1.gateway,
    };
    assert!(traffic::tcp_connect_echo(&the_node, ba1.ipv4, 8080).unwrap());
    assert!(
        !traffic::tcp_connect_echo(ra1, ba1.ipv4, 8080).unwrap(),
        "red's consent opened blue to red"
    );
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn programs_detached_by_hand_are_attached_again() {
    let node = six_pods();
    let ra1 = node.topo.pod("ra1");
    let gateway = traffic::NodeAt {
        netns: node.topo.node(),
        ipv4: ra1.gateway,
    };
    let _server = traffic::EchoServer::start(&gateway, 8080).unwrap();
    let endpoints = node.call(&Request::Endpoints).unwrap().endpoints.unwrap();
    let id = endpoints
        .iter()
        .find(|e| e.request.pod == "ra1")
        .unwrap()
        .id;
    assert!(!traffic::tcp_connect_echo(ra1, ra1.gateway, 8080).unwrap());
    // Someone clears ra1's hooks: it reaches the node for a moment.
    let pins = Direction::ALL.map(|d| genie_agent::dataplane::link_pin_path(node.bpffs(), id, d));
    for pin in &pins {
        genie_tests::node::detach_by_hand(pin);
    }
    assert!(
        traffic::tcp_connect_echo(ra1, ra1.gateway, 8080).unwrap(),
        "without its programs ra1 reaches the node (the premise of this test)"
    );
    // The agent's next resync puts both back.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let attached_to =
        |pin: &std::path::PathBuf| genie_agent::dataplane::pinned_link_ifindex(pin).unwrap();
    while pins.iter().any(|pin| attached_to(pin).is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "ra1's programs stayed detached:\n{}",
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(500));
    }
    let ifindex = endpoints.iter().find(|e| e.id == id).unwrap().ifindex;
    for pin in &pins {
        assert_eq!(attached_to(pin), Some(ifindex), "{pin:?}");
    }
    assert!(!traffic::tcp_connect_echo(ra1, ra1.gateway, 8080).unwrap());
    assert!(traffic::tcp_echo(node.topo.pod("ra2"), ra1, 8081).unwrap());
}
