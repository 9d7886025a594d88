//! The demo behind `cargo xtask demo`: one node, pods of two tenants on logical networks, the
//! real `genie agent` enforcing isolation, a connectivity matrix with the reason genie counted
//! for every drop, live tightening, and `genie inspect` — then everything is removed.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use genie_agent::{api::Request, dataplane::read_counters};
use genie_common::{Direction, Reason};
use genie_tests::{
    TestNode, Topology,
    node::genie_binary,
    traffic::{self, EchoConnection, EchoServer},
};

const OBJECTS: &str = "\
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
metadata: {name: red-web}
spec:
  tenant: red
  subnet: 198.18.1.0/24
  isolation:
    peers: [{network: red-db, ports: [{protocol: TCP, port: 5432}]}]
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-db}
spec: {tenant: red, subnet: 198.18.2.0/24}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-web}
spec: {tenant: blue, subnet: 198.18.3.0/24}
";

/// (pod, namespace, network, subnet)
const PODS: [(&str, &str, &str, u8); 4] = [
    ("web-1", "red", "red-web", 1),
    ("web-2", "red", "red-web", 1),
    ("db-1", "red", "red-db", 2),
    ("shop-1", "blue", "blue-web", 3),
];

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    step("a node and four pods, each in its own network namespace (198.18.0.0/15 only)");
    let mut topo = Topology::new()?;
    for (pod, _, _, subnet) in PODS {
        topo.add_pod_on(pod, subnet)?;
    }
    let node = TestNode::new(topo, OBJECTS)?;
    println!("    objects (the agent's --config directory):\n");
    for line in OBJECTS.lines() {
        println!("      {line}");
    }

    step("starting `genie agent` on the node and registering the pods through its API");
    node.spawn_agent()?;
    for (pod, ns, net, _) in PODS {
        let ep = node.register(pod, ns, net)?;
        println!(
            "    endpoint {}: {ns}/{pod} eth0 {} on {net}, genie attached to {}",
            ep.id,
            node.topo.pod(pod).ipv4,
            ep.request.host_interface
        );
    }
    genie(&node, &["inspect", "endpoints"])?;

    step("connectivity matrix (TCP to port 5432): what DESIGN.md §3 says, measured");
    let servers: Vec<EchoServer> = PODS
        .iter()
        .map(|p| EchoServer::start(node.topo.pod(p.0), 5432))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for (src, _, _, _) in PODS {
        let mut cells = vec![src.to_owned()];
        for (dst, _, _, _) in PODS {
            if src == dst {
                cells.push("-".to_owned());
                continue;
            }
            let before = drops_at(&node, src)?;
            let ok = traffic::tcp_connect_echo(node.topo.pod(src), node.topo.pod(dst).ipv4, 5432)?;
            let after = drops_at(&node, src)?;
            let reason = after
                .iter()
                .find(|(r, n)| before.get(*r).copied().unwrap_or(0) < **n)
                .map(|(r, _)| r.name());
            cells.push(match (ok, reason) {
                (true, _) => "allowed".to_owned(),
                (false, Some(r)) => format!("dropped ({r})"),
                (false, None) => "dropped".to_owned(),
            });
        }
        rows.push(cells);
    }
    drop(servers);
    let header: Vec<&str> = std::iter::once("from \\ to")
        .chain(PODS.iter().map(|p| p.0))
        .collect();
    print!("{}", indent(&genie_agent::cli::table(&header, &rows)));
    let web1 = node.topo.pod("web-1");
    let to_node = traffic::ping(web1, web1.gateway, 2)?;
    println!(
        "    web-1 → the node ({}): {} of 2 pings answered (host access is blocked by default)",
        web1.gateway, to_node
    );

    step("tightening is immediate: removing the peer rule cuts an open connection");
    let mut conn = EchoConnection::open(web1, node.topo.pod("db-1"), 5432)?;
    println!(
        "    web-1 → db-1:5432 open, echo works: {}",
        conn.round_trip(b"hello", Duration::from_secs(2))
    );
    let epoch = || {
        node.call(&Request::Status)
            .ok()
            .and_then(|r| r.status)
            .map(|s| s.policy_epoch)
    };
    let before = epoch();
    node.write_objects(&OBJECTS.replace(
        "    peers: [{network: red-db, ports: [{protocol: TCP, port: 5432}]}]\n",
        "",
    ))?;
    node.wait_for("the agent to apply the change", || epoch() != before)?;
    println!(
        "    peer rule removed from the objects; the same connection now: {}",
        if conn.round_trip(b"again", Duration::from_secs(1)) {
            "still works (BUG)"
        } else {
            "cut"
        }
    );

    step("what genie counted (genie inspect counters, read from the pinned maps)");
    genie(&node, &["inspect", "counters"])?;
    step("the enforced policy (genie inspect policy)");
    genie(&node, &["inspect", "policy"])?;

    step("cleaning up: agent stopped, programs detached, pins, namespaces and files removed");
    let base = node.topo.base().to_owned();
    drop(conn);
    drop(node);
    let left = genie_tests::names::list_dir("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&base))
        .count();
    println!("    namespaces left behind: {left}");
    if left != 0 {
        bail!("the demo left namespaces behind");
    }
    println!("\ndone.");
    Ok(())
}

/// Drop counters at a pod's egress, by reason.
fn drops_at(node: &TestNode, pod: &str) -> Result<BTreeMap<Reason, u64>> {
    let endpoints = node
        .call(&Request::Endpoints)?
        .endpoints
        .context("no endpoints")?;
    let id = endpoints
        .iter()
        .find(|e| e.request.pod == pod)
        .map(|e| e.id)
        .context("pod not registered")?;
    let mut out = BTreeMap::new();
    for row in read_counters(node.bpffs())? {
        if row.endpoint_id == id && row.direction == Direction::Egress && row.reason.is_drop() {
            *out.entry(row.reason).or_default() += row.value.packets;
        }
    }
    Ok(out)
}

fn genie(node: &TestNode, args: &[&str]) -> Result<()> {
    let out = Command::new(genie_binary())
        .args(args)
        .arg("--bpffs")
        .arg(node.bpffs())
        .arg("--state-dir")
        .arg(node.state_dir())
        .output()
        .context("running genie")?;
    if !out.status.success() {
        bail!(
            "genie {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("    $ genie {}", args.join(" "));
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
