//! Fail closed, lose nothing: what the agent does when its state is lost or its process dies at
//! the wrong moment — a deleted state directory or registry, an agent killed in the middle of
//! ADD, a DEL without a cache entry or lost while the agent was down, a permissive umask,
//! SIGTERM, and ADDs racing for the last quota — observed as a runtime and the pods see it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use genie_tests::{
    TestNode, Topology,
    cni::{
        CniCluster, CniPod, DEBIAN_CNI_PATH, Sandbox, attachments, default_network, files_under,
        footprint, link_names,
    },
    node::genie_binary,
    topology::Netns,
    traffic::{NodeAt, tcp_echo},
};
use serde_json::{Value, json};

const OBJECTS: &str = r#"
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
kind: Tenant
metadata: {name: green}
spec:
  namespaces: [green]
  quota: {endpoints: 2}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-a}
spec:
  tenant: red
  subnet: 198.18.10.0/24
  plugin: {type: bridge, bridge: gbr-a, isGateway: true}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: green-a}
spec:
  tenant: green
  subnet: 198.18.12.0/24
  plugin: {type: bridge, bridge: gbr-g, isGateway: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: red
  annotations: {genie.dev/networks: "red-a"}
"#;

/// The default network's subnet and its gateway, the node's address on it.
const DEFAULT_SUBNET: &str = "198.18.20.0/24";
const GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 20, 1);

/// Green pods `g1` … `g6`, each asking for `green-a` (two interfaces with eth0).
fn green_pods() -> String {
    (1..=6)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: g{i}\n  namespace: green\n  annotations: {{genie.dev/networks: green-a}}\n"
            )
        })
        .collect()
}

/// A node with the objects above and the green pods, its agent running, and a runtime whose
/// default network is a bridge on [`DEFAULT_SUBNET`].
fn cluster_on(node: TestNode) -> CniCluster {
    node.write_objects(&format!("{OBJECTS}{}", green_pods()))
        .unwrap();
    CniCluster::start(node, DEFAULT_SUBNET).unwrap()
}

fn cluster() -> CniCluster {
    cluster_on(TestNode::new(Topology::new().unwrap(), OBJECTS).unwrap())
}

fn add(c: &CniCluster, id: &str, namespace: &str, pod: &str) -> CniPod {
    c.add(id, namespace, pod, false).unwrap()
}

/// The node at its address on the default network.
fn gateway(c: &CniCluster) -> NodeAt<'_> {
    NodeAt {
        netns: c.node.topo.node(),
        ipv4: GATEWAY,
    }
}

/// `genie <args> --state-dir … --bpffs …` for the node.
fn genie(c: &CniCluster, args: &[&str]) -> std::process::Output {
    Command::new(genie_binary())
        .args(args)
        .arg("--state-dir")
        .arg(c.node.state_dir())
        .arg("--bpffs")
        .arg(c.node.bpffs())
        .output()
        .unwrap()
}

fn inspected_endpoints(c: &CniCluster) -> Vec<Value> {
    let out = genie(c, &["inspect", "endpoints", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Red's `a` and `a2` share a tenant; blue's `b` does not; no pod may reach the node.
fn assert_isolated(c: &CniCluster, a: &CniPod, a2: &CniPod, b: &CniPod, port: u16, when: &str) {
    assert!(
        !tcp_echo(&b.at(), &a.at(), port).unwrap(),
        "{when}: blue reached red"
    );
    assert!(
        tcp_echo(&a2.at(), &a.at(), port + 1).unwrap(),
        "{when}: red no longer reaches red"
    );
    assert!(
        !tcp_echo(&a.at(), &gateway(c), port + 2).unwrap(),
        "{when}: a pod reached the node"
    );
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn losing_the_state_directory_keeps_every_pod_isolated() {
    let c = cluster();
    let a = add(&c, "c0a", "red", "a");
    let a2 = add(&c, "c0a2", "red", "a2");
    let b = add(&c, "c0b", "blue", "b");
    assert_isolated(&c, &a, &a2, &b, 7100, "before");

    c.node.kill_agent().unwrap();
    fs::remove_dir_all(c.node.state_dir()).unwrap();
    c.node.spawn_agent().unwrap();
    assert_isolated(&c, &a, &a2, &b, 7110, "after the state directory was lost");
    // The registry is rebuilt (the maps alone would list the same four rows): every endpoint
    // is the agent's again, adopted from the maps as they are enforced.
    let registered = c
        .node
        .call(&genie_agent::api::Request::Endpoints)
        .unwrap()
        .endpoints
        .unwrap();
    assert_eq!(registered.len(), 4, "a (eth0, eth1), a2, b: {registered:?}");
    assert!(
        registered.iter().all(|e| e.recovered.is_some()),
        "{registered:?}"
    );

    // A pod whose namespace goes is forgotten even though no DEL can name it any more.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(30);
    while inspected_endpoints(&c).len() != 3 {
        assert!(
            Instant::now() < deadline,
            "b's endpoint stayed: {:?}",
            inspected_endpoints(&c)
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert_isolated(
        &c,
        &a,
        &a2,
        &add(&c, "c1b", "blue", "b"),
        7120,
        "after b came back",
    );
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn a_lost_registry_is_rebuilt_from_the_attachment_cache() {
    let c = cluster();
    let before = footprint(&c.node);
    let a = add(&c, "c0a", "red", "a");
    let a2 = add(&c, "c0a2", "red", "a2");
    let b = add(&c, "c0b", "blue", "b");
    c.node.kill_agent().unwrap();
    fs::remove_file(c.node.state_dir().join("endpoints.json")).unwrap();
    c.node.spawn_agent().unwrap();
    assert_isolated(&c, &a, &a2, &b, 7200, "after the registry was lost");
    let mut pods: Vec<String> = inspected_endpoints(&c)
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["pod"].as_str().unwrap(),
                e["interface"].as_str().unwrap()
            )
        })
        .collect();
    pods.sort();
    assert_eq!(pods, ["a/eth0", "a/eth1", "a2/eth0", "b/eth0"]);
    for pod in [&a, &a2, &b] {
        c.runtime
            .call("DEL", &pod.sandbox)
            .unwrap()
            .expect_ok("DEL");
    }
    assert_eq!(footprint(&c.node), before);
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn del_without_the_cache_entry_releases_everything_the_registry_knows() {
    let c = cluster();
    let before = footprint(&c.node);
    let a = add(&c, "c0a", "red", "a");
    fs::remove_file(c.node.state_dir().join("cni/c0a.json")).unwrap();
    c.runtime.call("DEL", &a.sandbox).unwrap().expect_ok("DEL");
    assert_eq!(footprint(&c.node), before);
    assert_eq!(link_names(&a.netns), ["lo"]);
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn a_del_lost_while_the_agent_was_down_is_swept_at_start() {
    let c = cluster();
    let before = footprint(&c.node);
    let b = add(&c, "c0b", "blue", "b");
    c.node.kill_agent().unwrap();
    // The runtime removes the sandbox; its DEL finds no agent and is never retried.
    let del = c.runtime.call("DEL", &b.sandbox).unwrap();
    assert_eq!(del.error_code(), Some(11), "{}", del.raw);
    drop(b);
    c.node.spawn_agent().unwrap();
    assert_eq!(footprint(&c.node), before);
    assert_eq!(attachments(&c.node).unwrap(), json!([]));
}

/// A delegate that behaves like Debian's bridge plugin but takes its time after creating the
/// interface, so the agent can be killed while an unprotected interface exists.
fn slow_bridge(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let plugin = dir.join("slow-bridge");
    fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nout=$({DEBIAN_CNI_PATH}/bridge)\nrc=$?\n[ \"$CNI_COMMAND\" = ADD ] && /bin/sleep 4\nprintf '%s' \"$out\"\nexit $rc\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_owned()
}

/// The IPv4 address of `ifname` in `ns`, once it has one.
fn address_of(ns: &Netns, ifname: &str) -> Option<std::net::Ipv4Addr> {
    let out = ns.ip(&["-o", "-4", "addr", "show", "dev", ifname]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (_, rest) = text.split_once("inet ")?;
    rest.split('/').next()?.parse().ok()
}

/// A namespace plugged into the default network's bridge by hand at `address`, with no
/// program of genie's: what any interface there would reach.
fn unprotected_port(c: &CniCluster, label: &str, address: &str) -> Netns {
    let ns = c.netns(label, false).unwrap();
    let host_side = format!("{label}-h");
    let node = c.node.topo.node();
    node.ip(&[
        "link",
        "add",
        &host_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .unwrap();
    node.ip(&["link", "set", &host_side, "master", "gbr-def", "up"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns
}

/// A slow default-network delegate for `c`'s runtime (see [`slow_bridge`]).
fn slow_runtime(c: &CniCluster) -> genie_tests::cni::Runtime {
    let mut runtime = c.runtime.clone();
    let mut slow = default_network(DEFAULT_SUBNET);
    slow["type"] = json!("slow-bridge");
    runtime.config["defaultNetwork"] = slow;
    runtime.cni_path = vec![
        slow_bridge(&c.node.dir().join("plugins")),
        PathBuf::from(DEBIAN_CNI_PATH),
    ];
    runtime
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn an_agent_killed_in_the_middle_of_add_leaves_no_open_interface() {
    let c = cluster();
    let runtime = slow_runtime(&c);
    let before = footprint(&c.node);
    let ns = c.netns("victim", false).unwrap();
    let sandbox = Sandbox::new("c0v", "blue", "victim", &ns.path());
    let add = thread::scope(|scope| {
        let add = scope.spawn(|| runtime.call("ADD", &sandbox).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while address_of(&ns, "eth0").is_none() {
            assert!(Instant::now() < deadline, "the delegate never made eth0");
            thread::sleep(Duration::from_millis(20));
        }
        c.node.kill_agent().unwrap();
        add.join().unwrap()
    });
    assert_eq!(add.error_code(), Some(11), "{}", add.raw);
    let victim = NodeAt {
        netns: &ns,
        ipv4: address_of(&ns, "eth0").unwrap(),
    };
    assert!(
        !tcp_echo(&victim, &gateway(&c), 7300).unwrap(),
        "the interface the dead ADD left reached the node"
    );
    // The premise: an interface on the same bridge without genie's programs reaches the node.
    {
        let control = unprotected_port(&c, "control", "198.18.20.250");
        let control = NodeAt {
            netns: &control,
            ipv4: "198.18.20.250".parse().unwrap(),
        };
        assert!(
            tcp_echo(&control, &gateway(&c), 7301).unwrap(),
            "an unprotected interface does not reach the node: the check above proves nothing"
        );
    }
    // The restarted agent removes what the dead ADD made.
    c.node.spawn_agent().unwrap();
    assert_eq!(link_names(&ns), ["lo"]);
    assert_eq!(footprint(&c.node), before);
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn state_files_are_private_whatever_the_umask() {
    let node = TestNode::new(Topology::new().unwrap(), OBJECTS)
        .unwrap()
        .with_agent_umask(0);
    let c = cluster_on(node);
    let _a = add(&c, "c0a", "red", "a");
    let state = c.node.state_dir();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in [state.clone(), state.join("cni"), state.join("ipam")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let files = files_under(&state);
    assert!(files.len() >= 3, "registry, cache entry, leases: {files:?}");
    for file in &files {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is open to others",
            file.display()
        );
    }
    assert_eq!(mode(&c.node.socket()), 0o600);
    // Another local user learns nothing about the pods.
    let as_nobody = {
        use std::os::unix::process::CommandExt as _;
        Command::new(genie_binary())
            .args(["inspect", "attachments", "--state-dir"])
            .arg(&state)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(!as_nobody.status.success(), "{as_nobody:?}");
    let stdout = String::from_utf8_lossy(&as_nobody.stdout);
    assert!(!stdout.contains("red"), "{stdout}");
    let stderr = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn sigterm_stops_cleanly_and_enforcement_stays() {
    let c = cluster();
    let a = add(&c, "c0a", "red", "a");
    let a2 = add(&c, "c0a2", "red", "a2");
    let b = add(&c, "c0b", "blue", "b");
    let status = c.node.terminate_agent().unwrap();
    assert!(status.success(), "{status:?}: {}", c.node.agent_log());
    assert!(!c.node.socket().exists(), "the socket stayed");
    assert_isolated(&c, &a, &a2, &b, 7400, "with the agent stopped");
    let add = c
        .runtime
        .call(
            "ADD",
            &Sandbox::new("c0x", "red", "x", &c.netns("x", false).unwrap().path()),
        )
        .unwrap();
    assert_eq!(add.error_code(), Some(11), "{}", add.raw);
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn sigterm_during_an_add_lets_it_finish_enforced() {
    let c = cluster();
    let runtime = slow_runtime(&c);
    let ns = c.netns("late", false).unwrap();
    let sandbox = Sandbox::new("c0l", "blue", "late", &ns.path());
    let (add, stopped) = thread::scope(|scope| {
        let add = scope.spawn(|| runtime.call("ADD", &sandbox).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while address_of(&ns, "eth0").is_none() {
            assert!(Instant::now() < deadline, "the delegate never made eth0");
            thread::sleep(Duration::from_millis(20));
        }
        // The delegate is still running (it sleeps 4 s before answering).
        let stopped = c.node.terminate_agent().unwrap();
        (add.join().unwrap(), stopped)
    });
    assert!(stopped.success(), "{stopped:?}: {}", c.node.agent_log());
    assert_eq!(
        add.exit_code, 0,
        "the ADD in progress was cut off: {}",
        add.raw
    );
    // Its interface is under genie's programs, which stay with the agent gone.
    let endpoints: Vec<Value> = inspected_endpoints(&c)
        .into_iter()
        .filter(|e| e["pod"] == "late")
        .collect();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let id = u32::try_from(endpoints[0]["id"].as_u64().unwrap()).unwrap();
    for direction in genie_common::Direction::ALL {
        let pin = genie_agent::dataplane::link_pin_path(c.node.bpffs(), id, direction);
        assert!(
            genie_agent::dataplane::pinned_link_ifindex(&pin)
                .unwrap()
                .is_some(),
            "{pin:?}"
        );
    }
    assert!(!c.node.socket().exists(), "the socket stayed");
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn concurrent_adds_share_the_last_quota_exactly() {
    let c = cluster();
    let before = footprint(&c.node);
    let namespaces: Vec<Netns> = (1..=6)
        .map(|i| c.netns(&format!("g{i}"), false).unwrap())
        .collect();
    for round in 0..3 {
        let sandboxes: Vec<Sandbox> = (1..=6)
            .map(|i| {
                Sandbox::new(
                    &format!("r{round}g{i}"),
                    "green",
                    &format!("g{i}"),
                    &namespaces[i - 1].path(),
                )
            })
            .collect();
        let outcomes: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = sandboxes
                .iter()
                .map(|s| scope.spawn(|| c.runtime.call("ADD", s).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let codes: Vec<Option<u64>> = outcomes.iter().map(|o| o.error_code()).collect();
        assert_eq!(
            codes.iter().filter(|c| c.is_none()).count(),
            1,
            "round {round}: exactly one two-interface pod fits a quota of 2: {codes:?}"
        );
        assert_eq!(
            codes.iter().filter(|c| **c == Some(103)).count(),
            5,
            "round {round}: {codes:?}"
        );
        for s in &sandboxes {
            c.runtime.call("DEL", s).unwrap().expect_ok("DEL");
        }
        // The refused ADDs left nothing either (links, leases, cache, records, pins).
        assert_eq!(footprint(&c.node), before, "round {round}");
    }
}

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins and loads eBPF; run `cargo xtask test`"]
fn pins_of_another_layout_refuse_the_start_and_stay() {
    let node = TestNode::new(Topology::new().unwrap(), OBJECTS).unwrap();
    // An endpoint table as an older genie pinned it: 16-byte records.
    genie_agent::dataplane::bpffs::ensure_on_bpffs(node.bpffs()).unwrap();
    fs::create_dir_all(node.bpffs()).unwrap();
    let old: aya::maps::HashMap<aya::maps::MapData, u32, [u8; 16]> =
        aya::maps::HashMap::create(16, 0).unwrap();
    let pin = node.bpffs().join("genie_endpoints");
    old.pin(&pin).unwrap();
    let pinned_map = || {
        let info = aya::maps::MapData::from_pin(&pin).unwrap().info().unwrap();
        (info.id(), info.value_size())
    };
    let before = pinned_map();
    let error = node.spawn_agent().unwrap_err().to_string();
    assert!(
        error.contains("another layout")
            && error.contains("genie_endpoints")
            && error.contains("genie agent cleanup"),
        "{error}"
    );
    assert!(!error.contains("Verifier output"), "{error}");
    assert_eq!(pinned_map(), before, "the old pin was left as it was");
}
