//! `genie agent --source kube` against the API stand-in (`genie_tests::apiserver`), through
//! kube-rs's real HTTP client: the same enforced state as the file source for the same objects,
//! status conditions and node labels written back, an invalid object reported with its last valid
//! version kept, and broken watches, expired versions and a 30 s outage changing no verdict while
//! changes made meanwhile apply once the API returns.

use std::time::Duration;

use genie_tests::{
    TestNode, Topology,
    apiserver::{ApiServer, objects_from_yaml},
    fixtures::{TWO_TENANTS, two_tenants_and},
    traffic::tcp_echo,
};
use serde_json::{Value, json};

/// Tenants red and blue; red's networks red-a (limited) and red-b; a physical network.
/// [`objects`] with red-b peered with red-a.
fn red_b_peered_with_red_a() -> String {
    objects().replace(
        "spec: {tenant: red, subnet: 198.18.2.0/24}",
        "spec: {tenant: red, subnet: 198.18.2.0/24, isolation: {peers: [{network: red-a}]}}",
    )
}

fn objects() -> String {
    two_tenants_and(
        "
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
",
    )
}

fn api_objects(yaml: &str) -> Vec<Value> {
    objects_from_yaml(yaml).unwrap()
}

fn put_all(api: &ApiServer, yaml: &str) {
    api.put_yaml(yaml).unwrap();
}

/// The stand-in holding [`objects`] and the node `n1`.
fn standin() -> ApiServer {
    let api = ApiServer::start().unwrap();
    put_all(&api, &objects());
    api.put(node_object("n1")).unwrap();
    api
}

fn node_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
}

/// Pods a and d (red-a), b (red-b), c (blue default) on a node whose agent reads the files,
/// or the API stand-in as node `name`.
fn node(kube: Option<(&ApiServer, &str)>, extra_args: &[&str]) -> TestNode {
    let mut topo = Topology::new().unwrap();
    topo.add_pod_on("a", 1).unwrap();
    topo.add_pod_on("b", 2).unwrap();
    topo.add_pod_on("c", 3).unwrap();
    topo.add_pod_on("d", 1).unwrap();
    let mut node = TestNode::new(topo, &objects()).unwrap();
    if let Some((api, name)) = kube {
        node = node.with_kube_source(api, name);
    } else {
        node = node.with_agent_args(extra_args);
    }
    node.spawn_agent().unwrap();
    node.register("a", "red", "red-a").unwrap();
    node.register("b", "red", "red-b").unwrap();
    node.register("c", "blue", "default").unwrap();
    node.register("d", "red", "red-a").unwrap();
    node
}

fn inspect(node: &TestNode, what: &str) -> Value {
    node.inspect_json(what)
}

/// What is enforced, minus what differs between two topologies by construction (interface
/// indexes) and the verdicts on the objects (status, not maps).
fn enforced(node: &TestNode) -> Value {
    let mut networks = inspect(node, "networks");
    for row in networks.as_array_mut().into_iter().flatten() {
        if let Some(row) = row.as_object_mut() {
            row.remove("status");
            row.remove("problems");
        }
    }
    json!({
        "policy": inspect(node, "policy"),
        "networks": networks,
        "limits": inspect(node, "limits"),
    })
}

/// Every request the agents made is granted by the RBAC in `deploy/genie.yaml`.
fn assert_rbac_covers(api: &ApiServer) {
    let requests = api.requests();
    assert!(!requests.is_empty());
    let refused = genie_tests::rbac::refused(&requests);
    assert!(
        refused.is_empty(),
        "deploy/genie.yaml does not grant: {refused:#?}"
    );
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
    let api = standin();
    api.put(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "198.18.200.10", "clusterIPs": ["198.18.200.10"]}}))
        .unwrap();
    let from_files = node(None, &["--cluster-dns", "198.18.200.10"]);
    let from_api = node(Some((&api, "n1")), &[]);
    assert_eq!(enforced(&from_api), enforced(&from_files));
    // The cluster DNS address comes from the kube-dns Service instead of a flag.
    for n in [&from_files, &from_api] {
        let addrs = genie_agent::dataplane::PinnedMaps::open(n.bpffs())
            .unwrap()
            .read_state()
            .unwrap()
            .addrs;
        let dns = addrs.get(&genie_common::maps::IpAddr16::from_v4([198, 18, 200, 10]));
        assert_eq!(dns.map(|a| a.identity), Some(genie_common::identity::DNS));
    }

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
    let peered = red_b_peered_with_red_a();
    let (b, a) = (from_api.topo.pod("b"), from_api.topo.pod("a"));
    assert!(
        !tcp_echo(b, a, 7600).unwrap(),
        "red-b → red-a before the peer rule"
    );
    put_all(&api, &peered);
    wait_until("the peer rule applied", || tcp_echo(b, a, 7601).unwrap());
    assert_rbac_covers(&api);
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn an_invalid_object_is_reported_and_its_last_valid_version_stays() {
    let api = standin();
    let node = node(Some((&api, "n1")), &[]);
    let before = enforced(&node);
    let mut bad = api_objects(&objects())
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
    // Its last valid version stays in force: same maps, and the peer rule that came with the
    // bad subnet is not enforced.
    assert_eq!(enforced(&node), before);
    let (b, a) = (node.topo.pod("b"), node.topo.pod("a"));
    assert!(!tcp_echo(b, a, 7610).unwrap());
    assert_rbac_covers(&api);
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn broken_watches_and_an_outage_change_no_verdict() {
    let api = standin();
    let node = node(Some((&api, "n1")), &[]);
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

    // Connections dropped: the resumed watches deliver a change made right after.
    let peered_now = red_b_peered_with_red_a();
    api.drop_watches();
    put_all(&api, &peered_now);
    wait_until("a change after dropped watches applied", || {
        tcp_echo(b, a, 7623).unwrap()
    });
    // History expired (410 Gone on resume): the relist delivers the change back, and the
    // state is exactly the one before.
    api.compact();
    put_all(&api, &objects());
    wait_until("a change after an expired history applied", || {
        !tcp_echo(b, a, 7624).unwrap()
    });
    assert_eq!(verdicts(7626), expected);
    // The same state — but for the policy epoch, which two changes moved on.
    let without_epoch = |mut v: Value| {
        v["policy"]["policyEpoch"] = Value::Null;
        v
    };
    assert_eq!(
        without_epoch(enforced(&node)),
        without_epoch(before.clone())
    );
    let before = enforced(&node);

    // 30 s without an API server; meanwhile red-b is peered with red-a.
    api.stop();
    let peered = red_b_peered_with_red_a();
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
    assert_rbac_covers(&api);
}

/// One simulated node of a two-node cluster: a topology, an agent on the kube source, a
/// runtime calling genie-cni, and its default network's subnet.
struct ClusterNode {
    node: TestNode,
    runtime: genie_tests::cni::Runtime,
    name: &'static str,
    pods: Vec<genie_tests::topology::Netns>,
}

impl ClusterNode {
    fn new(api: &ApiServer, name: &'static str, subnet: &str) -> Self {
        let topo = Topology::new().unwrap();
        let node = TestNode::new(topo, "").unwrap();
        let node = node.with_kube_source(api, name);
        node.spawn_agent().unwrap();
        // The primary as kind's kindnet writes it (ptp + portmap), as install-cni embeds it.
        let mut runtime =
            genie_tests::cni::Runtime::new(&node, genie_tests::cni::kindnet_primary(subnet));
        runtime.config["capabilities"] = json!({"portMappings": true, "bandwidth": true});
        Self {
            node,
            runtime,
            name,
            pods: Vec::new(),
        }
    }

    /// Creates the pod in the API (scheduled here), then ADDs it as a runtime would, retrying
    /// while the agent answers "try again later" (it has not seen the pod yet). Returns its
    /// address.
    fn add_pod(&mut self, api: &ApiServer, namespace: &str, pod: &str) -> std::net::Ipv4Addr {
        api.put(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"nodeName": self.name, "containers": []}}))
            .unwrap();
        let netns =
            genie_tests::topology::Netns::create(format!("{}-{pod}", self.node.topo.base()), false)
                .unwrap();
        let sandbox = genie_tests::cni::Sandbox::new(
            &format!("{}{pod}", self.name),
            namespace,
            pod,
            &netns.path(),
        );
        let mut result = None;
        for _ in 0..100 {
            let outcome = self.runtime.call("ADD", &sandbox).unwrap();
            if outcome.exit_code == 0 {
                result = Some(outcome.stdout);
                break;
            }
            assert_eq!(outcome.error_code(), Some(11), "{}", outcome.raw);
            std::thread::sleep(Duration::from_millis(100));
        }
        let result = result.expect("ADD kept answering try again later");
        self.pods.push(netns);
        result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// DEL of a pod this node added, as the runtime runs it when the pod is deleted.
    fn del_pod(&self, namespace: &str, pod: &str) {
        let netns = self
            .pods
            .iter()
            .find(|n| n.name().ends_with(&format!("-{pod}")))
            .unwrap();
        let sandbox = genie_tests::cni::Sandbox::new(
            &format!("{}{pod}", self.name),
            namespace,
            pod,
            &netns.path(),
        );
        self.runtime.call("DEL", &sandbox).unwrap().expect_ok("DEL");
    }

    fn pod_at(&self, pod: &str, ipv4: std::net::Ipv4Addr) -> genie_tests::traffic::NodeAt<'_> {
        let netns = self
            .pods
            .iter()
            .find(|n| n.name().ends_with(&format!("-{pod}")))
            .unwrap();
        genie_tests::traffic::NodeAt { netns, ipv4 }
    }

    /// The identity this node's maps give `ip` (0: none).
    fn identity_of(&self, ip: std::net::Ipv4Addr) -> u32 {
        addr_identity(&self.node, ip.octets()).unwrap_or(0)
    }
}

/// Links two nodes with a veth acting as the wire (198.19.254.0/30) and routes each one's
/// default-network subnet through it.
fn wire(n1: &ClusterNode, s1: &str, n2: &ClusterNode, s2: &str) {
    let (a, b) = (n1.node.topo.node(), n2.node.topo.node());
    a.ip(&[
        "link",
        "add",
        "wire0",
        "type",
        "veth",
        "peer",
        "name",
        "wire1",
        "netns",
        b.name(),
    ])
    .unwrap();
    a.ip(&["addr", "add", "198.19.254.1/30", "dev", "wire0"])
        .unwrap();
    b.ip(&["addr", "add", "198.19.254.2/30", "dev", "wire1"])
        .unwrap();
    a.ip(&["link", "set", "wire0", "up"]).unwrap();
    b.ip(&["link", "set", "wire1", "up"]).unwrap();
    a.ip(&["route", "add", s2, "via", "198.19.254.2"]).unwrap();
    b.ip(&["route", "add", s1, "via", "198.19.254.1"]).unwrap();
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and two agents; run `cargo xtask test`"]
fn two_nodes_enforce_isolation_between_them() {
    let api = ApiServer::start().unwrap();
    api.put_yaml(TWO_TENANTS).unwrap();
    api.put(node_object("n1")).unwrap();
    api.put(node_object("n2")).unwrap();
    let (s1, s2) = ("198.18.20.0/24", "198.18.21.0/24");
    let mut n1 = ClusterNode::new(&api, "n1", s1);
    let mut n2 = ClusterNode::new(&api, "n2", s2);
    let r1 = n1.add_pod(&api, "red", "r1");
    let b1 = n1.add_pod(&api, "blue", "b1");
    let r2 = n2.add_pod(&api, "red", "r2");
    let b2 = n2.add_pod(&api, "blue", "b2");
    wire(&n1, s1, &n2, s2);

    // Each agent published its pods in its NodeEndpoints; the other learns their identities.
    wait_until("n1 knows n2's pods", || {
        n1.identity_of(r2) != 0 && n1.identity_of(b2) != 0
    });
    wait_until("n2 knows n1's pods", || {
        n2.identity_of(r1) != 0 && n2.identity_of(b1) != 0
    });
    assert_eq!(n1.identity_of(r2), n1.identity_of(r1), "red on both nodes");
    assert_ne!(n1.identity_of(b2), n1.identity_of(r1));

    let (pr1, pb1) = (n1.pod_at("r1", r1), n1.pod_at("b1", b1));
    let (pr2, pb2) = (n2.pod_at("r2", r2), n2.pod_at("b2", b2));
    assert!(tcp_echo(&pr1, &pr2, 7800).unwrap(), "red n1 → red n2");
    assert!(tcp_echo(&pr2, &pr1, 7801).unwrap(), "red n2 → red n1");
    assert!(!tcp_echo(&pr1, &pb2, 7802).unwrap(), "red n1 → blue n2");
    assert!(!tcp_echo(&pb2, &pr1, 7803).unwrap(), "blue n2 → red n1");
    assert!(!tcp_echo(&pb1, &pr2, 7804).unwrap(), "blue n1 → red n2");
    assert!(tcp_echo(&pb1, &pb2, 7805).unwrap(), "blue n1 → blue n2");

    // Another node's address (from its Node object) is HOST.
    api.put(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}, "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.19.254.2"}]}}),
    )
    .unwrap();
    wait_until("n1 classifies n2's address as HOST", || {
        host_entry(&n1.node, [198, 19, 254, 2]) == Some(genie_common::identity::HOST)
    });

    // A pod created on n2 changes what n1 enforces; deleting it changes it back.
    let b3 = n2.add_pod(&api, "blue", "b3");
    wait_until("n1 learns the new pod", || n1.identity_of(b3) != 0);
    assert_eq!(n1.identity_of(b3), n1.identity_of(b2));
    // The pod goes: the API object, then the runtime's DEL on n2, which republishes.
    api.delete("Pod", "blue", "b3").unwrap();
    n2.del_pod("blue", "b3");
    wait_until("n1 forgets the deleted pod", || n1.identity_of(b3) == 0);
    assert_rbac_covers(&api);
}

/// The identity `node`'s CIDR map gives the /32 of `ip`, if it has one (node addresses are
/// HOST).
fn host_entry(node: &TestNode, ip: [u8; 4]) -> Option<u32> {
    genie_agent::dataplane::PinnedMaps::open(node.bpffs())
        .unwrap()
        .read_state()
        .unwrap()
        .cidrs
        .get(&(128, genie_common::maps::IpAddr16::from_v4(ip)))
        .map(|c| c.identity)
}

/// The address map entry of `ip` on `node` (its identity), if any.
fn addr_identity(node: &TestNode, ip: [u8; 4]) -> Option<u32> {
    genie_agent::dataplane::PinnedMaps::open(node.bpffs())
        .unwrap()
        .read_state()
        .unwrap()
        .addrs
        .get(&genie_common::maps::IpAddr16::from_v4(ip))
        .map(|a| a.identity)
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and an agent; run `cargo xtask test`"]
fn remote_identities_come_only_from_what_genie_publishes() {
    let api = ApiServer::start().unwrap();
    api.put_yaml(TWO_TENANTS).unwrap();
    api.put(node_object("n1")).unwrap();
    api.put(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
        "spec": {"podCIDRs": ["198.18.21.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.19.254.2"}]}}),
    )
    .unwrap();
    // Anyone who may edit a pod may write its network-status: it gives no identity, neither to
    // a pod address nor to another node's address. The pod exists before n1's agent starts,
    // whose first reconcile waits for every watch's first list: once n2's address is HOST
    // there, n1 has seen the pod.
    api.put(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "evil", "namespace": "blue", "annotations": {
            "k8s.v1.cni.cncf.io/network-status":
                r#"[{"name": "genie", "interface": "eth0", "default": true, "ips": ["198.19.254.2", "198.18.21.7"]}]"#}},
        "spec": {"nodeName": "n2", "containers": []}}))
        .unwrap();
    let mut n1 = ClusterNode::new(&api, "n1", "198.18.20.0/24");
    wait_until("n1 classifies n2's address as HOST", || {
        host_entry(&n1.node, [198, 19, 254, 2]) == Some(genie_common::identity::HOST)
    });
    assert_eq!(
        addr_identity(&n1.node, [198, 18, 21, 7]),
        None,
        "network-status gave a pod address an identity"
    );
    assert_eq!(
        addr_identity(&n1.node, [198, 19, 254, 2]),
        None,
        "network-status gave another node's address a tenant's identity"
    );
    // What genie's agent on n2 publishes is trusted, within reason: its pod CIDR holds the
    // default network's addresses, and no claim displaces a node address.
    api.put(
        json!({"apiVersion": "genie.dev/v1alpha1", "kind": "NodeEndpoints",
        "metadata": {"name": "n2"},
        "spec": {"endpoints": [{"namespace": "blue", "pod": "p", "interface": "eth0",
            "network": "default", "ips": ["198.18.21.8", "198.18.99.8", "198.19.254.2"]}]}}),
    )
    .unwrap();
    // A node that does not exist publishes nothing.
    api.put(
        json!({"apiVersion": "genie.dev/v1alpha1", "kind": "NodeEndpoints",
        "metadata": {"name": "n9"},
        "spec": {"endpoints": [{"namespace": "blue", "pod": "q", "interface": "eth0",
            "network": "default", "ips": ["198.18.22.9"]}]}}),
    )
    .unwrap();
    wait_until("n1 learns n2's published pod", || {
        addr_identity(&n1.node, [198, 18, 21, 8]).is_some()
    });
    assert_eq!(
        addr_identity(&n1.node, [198, 18, 21, 8]),
        Some(genie_common::identity::network_identity(b"default/blue")),
        "n2's pod has blue's default-network identity"
    );
    assert_eq!(
        addr_identity(&n1.node, [198, 18, 21, 7]),
        None,
        "network-status gave an identity"
    );
    assert_eq!(
        addr_identity(&n1.node, [198, 18, 99, 8]),
        None,
        "outside n2's pod CIDR"
    );
    assert_eq!(
        addr_identity(&n1.node, [198, 19, 254, 2]),
        None,
        "a node address became a pod's"
    );
    assert_eq!(
        addr_identity(&n1.node, [198, 18, 22, 9]),
        None,
        "a node that does not exist"
    );

    // n1 publishes its own pods.
    let r1 = n1.add_pod(&api, "red", "r1");
    wait_until("n1 publishes r1", || {
        api.get("NodeEndpoints", "", "n1").is_some_and(|o| {
            o["spec"]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["pod"] == "r1" && e["ips"][0] == r1.to_string())
        })
    });
    assert_rbac_covers(&api);
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs agents; run `cargo xtask test`"]
fn a_pod_the_watch_has_not_delivered_is_fetched_before_add_answers() {
    let api = standin();
    // A network with a delegate of its own, for the pod to ask for.
    api.put_yaml(
        "apiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {name: red-c}\nspec: {tenant: red, subnet: 198.18.5.0/24, plugin: {type: bridge, bridge: gbr-c}}\n",
    )
    .unwrap();
    let mut n1 = ClusterNode::new(&api, "n1", "198.18.20.0/24");
    wait_until("the agent enforcing red-c", || {
        inspect(&n1.node, "networks")
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["network"] == "red-c"))
    });
    // kubelet runs ADD as soon as the pod is bound; the pod watch is slow to tell the agent.
    api.hold_watches("Pod", true);
    api.put(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "early", "namespace": "red",
                     "annotations": {"genie.dev/networks": "red-c"}},
        "spec": {"nodeName": "n1", "containers": []}}))
        .unwrap();
    let netns =
        genie_tests::topology::Netns::create(format!("{}-early", n1.node.topo.base()), false)
            .unwrap();
    let sandbox = genie_tests::cni::Sandbox::new("n1early", "red", "early", &netns.path());
    let outcome = n1.runtime.call("ADD", &sandbox).unwrap();
    assert_eq!(
        outcome.exit_code, 0,
        "the first ADD must not answer 11: {}",
        outcome.raw
    );
    // It got the network its annotation asks for, read from the one GET.
    let mut links = genie_tests::cni::link_names(&netns);
    links.retain(|l| l != "lo");
    assert_eq!(links, ["eth0", "eth1"]);
    let gets = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/red/pods/early"))
        .count();
    assert_eq!(gets, 1, "{:?}", api.requests());
    api.hold_watches("Pod", false);
    n1.runtime
        .call("DEL", &sandbox)
        .unwrap()
        .expect_ok("DEL early");
    n1.pods.push(netns);
    assert_rbac_covers(&api);
}
