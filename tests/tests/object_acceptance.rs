//! Per-object acceptance under the real agent: one tenant's invalid object never holds up the
//! others, keeps its own last valid version in force (connections unbroken), and a newcomer
//! never displaces what is in force — in file mode and through the Kubernetes API stand-in.

use std::time::Duration;

use genie_agent::{
    api::Request,
    model::{Enforced, Kind, Verdict},
};
use genie_tests::{
    TestNode, Topology,
    apiserver::{ApiServer, objects_from_yaml},
    traffic::{self, EchoConnection, Stream, tcp_echo},
};
use serde_json::{Value, json};

const TENANTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: a}
spec: {namespaces: [a]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: b}
spec: {namespaces: [b]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: c}
spec: {namespaces: [c]}
";

/// The three tenants' networks. `a_lets_b_in` opens a-net to b-net on TCP (both sides, so
/// it is a change of tenant a and of tenant b); `c_subnet` is c-net's subnet.
fn objects(a_lets_b_in: bool, c_subnet: &str) -> String {
    let (a_isolation, b_isolation) = if a_lets_b_in {
        (
            ", isolation: {allowFrom: [{tenant: b, network: b-net}]}",
            ", isolation: {peers: [{network: a-net, ports: [{protocol: TCP}]}]}",
        )
    } else {
        ("", "")
    };
    format!(
        "{TENANTS}---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: a-net}}
spec: {{tenant: a, subnet: 198.18.1.0/24{a_isolation}}}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: b-net}}
spec: {{tenant: b, subnet: 198.18.2.0/24{b_isolation}}}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: c-net}}
spec: {{tenant: c, subnet: {c_subnet}}}
"
    )
}

const C_VALID: &str = "198.18.3.0/24";
/// Host bits set: invalid.
const C_INVALID: &str = "198.18.3.1/24";

/// Pods a1, a2 (a-net), b1 (b-net), c1, c2 (c-net) under an agent reading the files or, with
/// `api`, the stand-in as node n1.
fn node(api: Option<&ApiServer>) -> TestNode {
    let mut topo = Topology::new().unwrap();
    for (label, subnet) in [("a1", 1), ("a2", 1), ("b1", 2), ("c1", 3), ("c2", 3)] {
        topo.add_pod_on(label, subnet).unwrap();
    }
    let mut node = TestNode::new(topo, &objects(false, C_VALID)).unwrap();
    if let Some(api) = api {
        node = node.with_kube_source(api, "n1");
    }
    node.spawn_agent().unwrap();
    for (label, ns, net) in [
        ("a1", "a", "a-net"),
        ("a2", "a", "a-net"),
        ("b1", "b", "b-net"),
        ("c1", "c", "c-net"),
        ("c2", "c", "c-net"),
    ] {
        node.register(label, ns, net).unwrap();
    }
    node
}

/// How objects reach the agent in one test.
enum Source<'a> {
    Files(&'a TestNode),
    Api(&'a ApiServer),
}

impl Source<'_> {
    fn write(&self, yaml: &str) {
        match self {
            Source::Files(node) => node.write_objects(yaml).unwrap(),
            Source::Api(api) => {
                for object in objects_from_yaml(yaml).unwrap() {
                    api.put(object).unwrap();
                }
            }
        }
    }
}

fn refused(node: &TestNode) -> Vec<Verdict> {
    node.call(&Request::Status).unwrap().status.unwrap().refused
}

fn inspect_networks(node: &TestNode) -> Vec<Value> {
    node.inspect_json("networks")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn network_status(node: &TestNode, network: &str) -> String {
    inspect_networks(node)
        .into_iter()
        .find(|r| r["network"] == network)
        .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// A condition of an object as the agent last wrote it to the stand-in.
fn condition(api: &ApiServer, name: &str, type_: &str) -> Option<(String, String)> {
    let object = api.get("LogicalNetwork", "", name)?;
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

/// Three tenants: c breaks its network while a and b keep changing theirs.
fn three_tenants(source: &Source<'_>, node: &TestNode, api: Option<&ApiServer>) {
    let pod = |l: &str| node.topo.pod(l);
    let mut c_conn = EchoConnection::open(pod("c1"), pod("c2"), 7700).unwrap();
    assert!(c_conn.round_trip(b"before", Duration::from_secs(2)));
    assert!(
        !tcp_echo(pod("b1"), pod("a1"), 7701).unwrap(),
        "premise: b cannot reach a"
    );

    // c turns invalid and a and b open a path between them, in one write.
    source.write(&objects(true, C_INVALID));
    node.wait_for("c-net refused", || {
        refused(node).iter().any(|v| v.name == "c-net")
    })
    .unwrap();
    node.wait_for("a's and b's change enforced", || {
        tcp_echo(pod("b1"), pod("a1"), 7702).unwrap()
    })
    .unwrap();
    let c = refused(node)
        .into_iter()
        .find(|v| v.name == "c-net")
        .unwrap();
    assert_eq!(
        (c.kind, c.enforced),
        (Kind::LogicalNetwork, Enforced::LastValidVersion)
    );
    assert_eq!(c.problems[0].field, "spec.subnet", "{c:?}");
    assert!(
        refused(node).iter().all(|v| v.name == "c-net"),
        "only c-net is refused: {:?}",
        refused(node)
    );
    assert!(
        c_conn.round_trip(b"during", Duration::from_secs(2)),
        "c's open connection broke"
    );
    assert!(
        tcp_echo(pod("c2"), pod("c1"), 7703).unwrap(),
        "c-net no longer works"
    );
    assert!(
        !tcp_echo(pod("c1"), pod("a1"), 7704).unwrap(),
        "c-net's last valid version lost its isolation"
    );
    assert_eq!(network_status(node, "c-net"), "LastValidVersionEnforced");
    assert_eq!(network_status(node, "a-net"), "Enforced");
    if let Some(api) = api {
        node.wait_for("c-net's conditions", || {
            condition(api, "c-net", "Accepted") == Some(("False".to_owned(), "Invalid".to_owned()))
                && condition(api, "c-net", "Enforced")
                    == Some(("False".to_owned(), "LastValidVersionEnforced".to_owned()))
        })
        .unwrap();
        assert_eq!(
            condition(api, "a-net", "Enforced"),
            Some(("True".to_owned(), "Enforced".to_owned()))
        );
    }

    // a and b change again (the path closes) while c is still invalid.
    source.write(&objects(false, C_INVALID));
    node.wait_for("a's and b's second change enforced", || {
        !tcp_echo(pod("b1"), pod("a1"), 7705).unwrap()
    })
    .unwrap();
    assert!(c_conn.round_trip(b"still", Duration::from_secs(2)));

    // A restarted agent keeps the last valid version (its verdicts are in the state
    // directory): c's connection survives the restart and c-net stays as it was.
    node.kill_agent().unwrap();
    node.spawn_agent().unwrap();
    node.wait_for("c-net refused after the restart", || {
        refused(node)
            .iter()
            .any(|v| v.name == "c-net" && v.enforced == Enforced::LastValidVersion)
    })
    .unwrap();
    assert!(
        c_conn.round_trip(b"restarted", Duration::from_secs(2)),
        "c's connection broke across the restart"
    );
    assert!(tcp_echo(pod("c2"), pod("c1"), 7706).unwrap());
    assert!(!tcp_echo(pod("c1"), pod("a1"), 7707).unwrap());

    // Fixing c brings it back to its current spec.
    source.write(&objects(false, C_VALID));
    node.wait_for("nothing refused", || refused(node).is_empty())
        .unwrap();
    assert_eq!(network_status(node, "c-net"), "Enforced");
    if let Some(api) = api {
        node.wait_for("c-net accepted and enforced", || {
            condition(api, "c-net", "Accepted") == Some(("True".to_owned(), "Valid".to_owned()))
                && condition(api, "c-net", "Enforced")
                    == Some(("True".to_owned(), "Enforced".to_owned()))
        })
        .unwrap();
    }
    assert!(c_conn.round_trip(b"after", Duration::from_secs(2)));
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn one_tenants_invalid_network_holds_up_no_one_in_file_mode() {
    let node = node(None);
    three_tenants(&Source::Files(&node), &node, None);
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn one_tenants_invalid_network_holds_up_no_one_through_the_api() {
    let api = ApiServer::start().unwrap();
    api.put_yaml(&objects(false, C_VALID)).unwrap();
    api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}}))
        .unwrap();
    let node = node(Some(&api));
    three_tenants(&Source::Api(&api), &node, Some(&api));
}

#[test]
#[ignore = "privileged: loads eBPF and creates namespaces; run `cargo xtask test`"]
fn a_newer_overlapping_network_is_refused_and_the_existing_one_never_stalls() {
    let node = node(None);
    let (a1, a2) = (node.topo.pod("a1"), node.topo.pod("a2"));
    let stream = Stream::start(a1, a2, 7710, 512, Duration::from_millis(5)).unwrap();
    // In a file that sorts first, so file order alone would call it the older one.
    node.write_config_file(
        "0-newcomer.yaml",
        "apiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {name: b-squat}\nspec: {tenant: b, subnet: 198.18.1.128/25}\n",
    )
    .unwrap();
    node.wait_for("the newcomer refused", || {
        refused(&node).iter().any(|v| v.name == "b-squat")
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let report = stream.stop();
    assert!(
        report.error.is_none(),
        "a-net's stream was reset: {report:?}"
    );
    assert!(
        report.bytes_sent > 0 && report.bytes_received == report.bytes_sent,
        "a-net lost bytes: {report:?}"
    );
    assert!(
        report.max_gap < Duration::from_secs(1),
        "a-net stalled: {report:?}"
    );
    let squat = refused(&node)
        .into_iter()
        .find(|v| v.name == "b-squat")
        .unwrap();
    assert_eq!(squat.enforced, Enforced::Nothing);
    assert!(
        squat
            .problem_text()
            .contains("overlaps the subnet of logical network \"a-net\""),
        "{squat:?}"
    );
    assert_eq!(network_status(&node, "b-squat"), "Refused");
    assert_eq!(traffic::udp(a1, a2, 7711, 3, 16).unwrap(), 3);
    // A pod asking for it is told why.
    let err = node.register("b1", "b", "b-squat").unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("overlaps"), "{err}");
}
