//! `genie agent --source kube` against the API stand-in (`genie_tests::apiserver`), through
//! kube-rs's real HTTP client: the same enforced state as the file source for the same objects,
//! status conditions and node labels written back, an invalid object reported and changing
//! nothing, and broken watches, expired versions and a 30 s outage changing no verdict while
//! changes made meanwhile apply once the API returns.

use std::{process::Command, time::Duration};

use genie_tests::{
    TestNode, Topology,
    apiserver::{ApiServer, objects_from_yaml},
    node::genie_binary,
    traffic::tcp_echo,
};
use serde_json::{Value, json};

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
kind: PhysicalNetwork
metadata: {name: fabric}
spec: {nic: up0}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-a}
spec:
  tenant: red
  subnet: 198.18.1.0/24
  limits: {ingressBandwidth: 50M}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-b}
spec: {tenant: red, subnet: 198.18.2.0/24}
";

fn api_objects(yaml: &str) -> Vec<Value> {
    objects_from_yaml(yaml).unwrap()
}

fn put_all(api: &ApiServer, yaml: &str) {
    api.put_yaml(yaml).unwrap();
}

fn node_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
}

/// Pods a and d (red-a), b (red-b), c (blue default) on a node whose agent reads the files,
/// or the API stand-in as node `name`.
fn node(kube: Option<(&ApiServer, &str)>) -> TestNode {
    let mut topo = Topology::new().unwrap();
    topo.add_pod_on("a", 1).unwrap();
    topo.add_pod_on("b", 2).unwrap();
    topo.add_pod_on("c", 3).unwrap();
    topo.add_pod_on("d", 1).unwrap();
    let mut node = TestNode::new(topo, OBJECTS).unwrap();
    if let Some((api, name)) = kube {
        let kubeconfig = node.dir().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let kubeconfig = kubeconfig.display().to_string();
        node = node.with_agent_args(&[
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            name,
        ]);
    }
    node.spawn_agent().unwrap();
    node.register("a", "red", "red-a").unwrap();
    node.register("b", "red", "red-b").unwrap();
    node.register("c", "blue", "default").unwrap();
    node.register("d", "red", "red-a").unwrap();
    node
}

fn inspect(node: &TestNode, what: &str) -> Value {
    let out = Command::new(genie_binary())
        .args(["inspect", what, "--json", "--bpffs"])
        .arg(node.bpffs())
        .arg("--state-dir")
        .arg(node.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What is enforced, minus what differs between two topologies by construction (interface
/// indexes).
fn enforced(node: &TestNode) -> Value {
    json!({
        "policy": inspect(node, "policy"),
        "networks": inspect(node, "networks"),
        "limits": inspect(node, "limits"),
    })
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn accepted(api: &ApiServer, kind: &str, name: &str) -> Option<(String, String)> {
    let object = api.get(kind, "", name)?;
    let condition = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn the_kube_source_enforces_what_the_file_source_does() {
    let api = ApiServer::start().unwrap();
    put_all(&api, OBJECTS);
    api.put(node_object("n1")).unwrap();
    let from_files = node(None);
    let from_api = node(Some((&api, "n1")));
    assert_eq!(enforced(&from_api), enforced(&from_files));

    // The agent reports back: every object accepted, endpoints per node, and the node labelled
    // with the physical networks it has.
    wait_until("status written", || {
        accepted(&api, "LogicalNetwork", "red-a").is_some()
            && accepted(&api, "Tenant", "blue").is_some()
    });
    assert_eq!(accepted(&api, "LogicalNetwork", "red-a").unwrap().0, "True");
    let red_a = api.get("LogicalNetwork", "", "red-a").unwrap();
    assert_eq!(red_a["status"]["nodes"]["n1"], 2, "{red_a}");
    wait_until("node labelled", || {
        api.get("Node", "", "n1").unwrap()["metadata"]["labels"]["physnet.genie.dev/fabric"]
            == "true"
    });

    // A change through the API is enforced like a change of the files.
    let peered = OBJECTS.replace(
        "spec: {tenant: red, subnet: 198.18.2.0/24}",
        "spec: {tenant: red, subnet: 198.18.2.0/24, isolation: {peers: [{network: red-a}]}}",
    );
    let (b, a) = (from_api.topo.pod("b"), from_api.topo.pod("a"));
    assert!(
        !tcp_echo(b, a, 7600).unwrap(),
        "red-b → red-a before the peer rule"
    );
    put_all(&api, &peered);
    wait_until("the peer rule applied", || tcp_echo(b, a, 7601).unwrap());
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn an_invalid_object_is_reported_and_changes_nothing() {
    let api = ApiServer::start().unwrap();
    put_all(&api, OBJECTS);
    api.put(node_object("n1")).unwrap();
    let node = node(Some((&api, "n1")));
    let before = enforced(&node);
    let mut bad = api_objects(OBJECTS)
        .into_iter()
        .find(|o| o["metadata"]["name"] == "red-b")
        .unwrap();
    bad["spec"]["subnet"] = json!("198.18.300.0/24");
    bad["spec"]["isolation"] = json!({"peers": [{"network": "red-a"}]});
    api.put(bad).unwrap();
    wait_until("the Invalid condition", || {
        accepted(&api, "LogicalNetwork", "red-b").is_some_and(|(status, _)| status == "False")
    });
    let (_, message) = accepted(&api, "LogicalNetwork", "red-b").unwrap();
    assert!(message.contains("spec.subnet"), "{message}");
    // Nothing changed on the dataplane: same maps, and the peer rule that came with the bad
    // subnet is not enforced.
    assert_eq!(enforced(&node), before);
    let (b, a) = (node.topo.pod("b"), node.topo.pod("a"));
    assert!(!tcp_echo(b, a, 7610).unwrap());
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn broken_watches_and_an_outage_change_no_verdict() {
    let api = ApiServer::start().unwrap();
    put_all(&api, OBJECTS);
    api.put(node_object("n1")).unwrap();
    let node = node(Some((&api, "n1")));
    let (a, b, c, d) = (
        node.topo.pod("a"),
        node.topo.pod("b"),
        node.topo.pod("c"),
        node.topo.pod("d"),
    );
    let verdicts = |port: u16| {
        (
            tcp_echo(d, a, port).unwrap(),
            tcp_echo(b, a, port + 1).unwrap(),
            tcp_echo(c, a, port + 2).unwrap(),
        )
    };
    let expected = (true, false, false);
    assert_eq!(verdicts(7620), expected);
    let before = enforced(&node);

    // Connections dropped, then history expired (410 Gone on resume): relists, same state.
    api.drop_watches();
    assert_eq!(verdicts(7623), expected);
    api.compact();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(verdicts(7626), expected);
    assert_eq!(enforced(&node), before);

    // 30 s without an API server; meanwhile red-b is peered with red-a.
    api.stop();
    let peered = OBJECTS.replace(
        "spec: {tenant: red, subnet: 198.18.2.0/24}",
        "spec: {tenant: red, subnet: 198.18.2.0/24, isolation: {peers: [{network: red-a}]}}",
    );
    put_all(&api, &peered);
    let outage = std::time::Instant::now();
    let mut port = 7630;
    while outage.elapsed() < Duration::from_secs(30) {
        assert_eq!(verdicts(port), expected, "during the outage");
        port += 3;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(enforced(&node), before);
    api.restart().unwrap();
    wait_until("the change made during the outage applied", || {
        tcp_echo(b, a, 7700).unwrap()
    });
    assert!(!tcp_echo(c, a, 7701).unwrap(), "other tenant still dropped");
}
