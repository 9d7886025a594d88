//! `cargo xtask bench cni`: ADD and DEL latency of `genie-cni` (run as a runtime runs it) for
//! pods with one, two and three interfaces, next to the same delegates run directly with the
//! same configurations, alternating in one run.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use genie_agent::cni::delegate::{self, Invocation};
use genie_tests::{
    TestNode, Topology,
    cni::{DEBIAN_CNI_PATH, Runtime, Sandbox, add_uplink, default_network},
    topology::Netns,
};
use ipnet::IpNet;
use serde_json::{Value, json};

/// ADD/DEL pairs measured per pod shape and side.
const ITERATIONS: usize = 30;

fn iterations() -> usize {
    std::env::var("GENIE_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS)
}

const OBJECTS: &str = r#"
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec: {namespaces: [red]}
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
metadata: {name: red-b}
spec:
  tenant: red
  subnet: 198.18.11.0/24
  plugin: {type: macvlan, master: up0, mode: bridge}
---
apiVersion: v1
kind: Pod
metadata: {name: two, namespace: red, annotations: {genie.dev/networks: "red-a"}}
---
apiVersion: v1
kind: Pod
metadata: {name: three, namespace: red, annotations: {genie.dev/networks: "red-a, red-b"}}
"#;

const DEFAULT_SUBNET: &str = "198.18.20.0/24";

/// One network as the direct baseline runs it: the delegate configuration genie derives.
struct DirectNetwork {
    ifname: &'static str,
    plugin: PathBuf,
    config: Value,
}

fn direct_networks(ipam_dir: &std::path::Path) -> Result<Vec<DirectNetwork>> {
    let path = [PathBuf::from(DEBIAN_CNI_PATH)];
    let specs: [(&str, &str, Value, Option<&str>, bool); 3] = [
        (
            "default",
            "eth0",
            default_network(DEFAULT_SUBNET),
            None,
            true,
        ),
        (
            "red-a",
            "eth1",
            json!({"type": "bridge", "bridge": "gbr-a", "isGateway": true}),
            Some("198.18.10.0/24"),
            false,
        ),
        (
            "red-b",
            "eth2",
            json!({"type": "macvlan", "master": "up0", "mode": "bridge"}),
            Some("198.18.11.0/24"),
            false,
        ),
    ];
    specs
        .into_iter()
        .map(|(network, ifname, plugin_conf, subnet, is_default)| {
            let plugin_type = plugin_conf["type"].as_str().unwrap_or_default().to_owned();
            let plugin = delegate::find_plugin(&path, &plugin_type)?;
            let subnets: Vec<IpNet> = subnet.map(|s| s.parse()).transpose()?.into_iter().collect();
            let config = delegate::network_config(
                network,
                Some(&plugin_conf),
                &subnets,
                "1.0.0",
                is_default,
                ipam_dir,
            )?;
            Ok(DirectNetwork {
                ifname,
                plugin,
                config,
            })
        })
        .collect()
}

fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Samples {
    genie_add: Vec<Duration>,
    genie_del: Vec<Duration>,
    direct_add: Vec<Duration>,
    direct_del: Vec<Duration>,
}

pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the benchmark creates namespaces and loads eBPF: run it as root (cargo xtask bench cni)"
        );
    }
    let topo = Topology::new()?;
    let _ext = add_uplink(&topo, "198.18.11.0/24")?;
    let node = TestNode::new(topo, OBJECTS)?;
    node.spawn_agent()?;
    let runtime = Runtime::new(&node, default_network(DEFAULT_SUBNET));
    let ipam_dir = std::env::temp_dir().join(format!("{}-direct-ipam", node.topo.base()));
    let networks = direct_networks(&ipam_dir)?;
    let node_netns = node.topo.node().path();

    let shapes = [(1usize, "one"), (2, "two"), (3, "three")];
    let mut results: BTreeMap<usize, Samples> = BTreeMap::new();
    let mut sequence = 0u32;
    // One unmeasured round first: bridges get created, versions negotiated, caches warm.
    for round in 0..=iterations() {
        for (interfaces, pod) in shapes {
            sequence += 1;
            let samples = results.entry(interfaces).or_default();

            let netns = Netns::create(format!("{}-g{sequence}", node.topo.base()), false)?;
            let sandbox = Sandbox::new(&format!("bench{sequence}"), "red", pod, &netns.path());
            let started = Instant::now();
            runtime.call("ADD", &sandbox)?.expect_ok("ADD");
            let add = started.elapsed();
            let started = Instant::now();
            runtime.call("DEL", &sandbox)?.expect_ok("DEL");
            let del = started.elapsed();
            drop(netns);
            if round > 0 {
                samples.genie_add.push(add);
                samples.genie_del.push(del);
            }

            let netns = Netns::create(format!("{}-d{sequence}", node.topo.base()), false)?;
            let invocation = |ifname: &str| Invocation {
                path: vec![PathBuf::from(DEBIAN_CNI_PATH)],
                container_id: format!("direct{sequence}"),
                netns: Some(netns.path()),
                ifname: ifname.to_owned(),
                args: BTreeMap::from([
                    ("K8S_POD_NAMESPACE".to_owned(), "red".to_owned()),
                    ("K8S_POD_NAME".to_owned(), pod.to_owned()),
                ]),
                host_netns: Some(node_netns.clone()),
            };
            let started = Instant::now();
            let mut added = Vec::new();
            for network in &networks[..interfaces] {
                let result = delegate::add(
                    &network.plugin,
                    &invocation(network.ifname),
                    &network.config,
                )
                .with_context(|| format!("direct ADD of {}", network.ifname))?;
                added.push(result);
            }
            let add = started.elapsed();
            let started = Instant::now();
            for (network, result) in networks[..interfaces].iter().zip(&added).rev() {
                delegate::del(
                    &network.plugin,
                    &invocation(network.ifname),
                    &network.config,
                    Some(&result.raw),
                )
                .with_context(|| format!("direct DEL of {}", network.ifname))?;
            }
            let del = started.elapsed();
            drop(netns);
            if round > 0 {
                samples.direct_add.push(add);
                samples.direct_del.push(del);
            }
        }
        if round > 0 {
            eprintln!("round {round}/{}", iterations());
        }
    }
    let _ = std::fs::remove_dir_all(&ipam_dir);
    let (attach_ms, detach_ms) = tcx_hook_cost(&node)?;
    if std::env::var_os("GENIE_BENCH_AGENT_LOG").is_some() {
        eprintln!("{}", node.agent_log());
    }

    println!("\n## cargo xtask bench cni\n");
    println!(
        "Median of {} ADD/DEL pairs per row, genie-cni invoked as a runtime invokes it (bridge default network, + bridge, + macvlan), alternating with the same delegates run directly with the same configurations.\n",
        iterations()
    );
    println!(
        "| interfaces | genie ADD ms | delegates ADD ms | ADD overhead ms | ADD overhead % | genie DEL ms | delegates DEL ms | DEL overhead ms | DEL overhead % |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (interfaces, s) in results {
        let (ga, da) = (median_ms(s.genie_add), median_ms(s.direct_add));
        let (gd, dd) = (median_ms(s.genie_del), median_ms(s.direct_del));
        println!(
            "| {interfaces} | {ga:.1} | {da:.1} | {:.1} | {:.0} % | {gd:.1} | {dd:.1} | {:.1} | {:.0} % |",
            ga - da,
            (ga / da - 1.0) * 100.0,
            gd - dd,
            (gd / dd - 1.0) * 100.0
        );
    }
    println!(
        "\nKernel floor, measured in the same run: attaching one TCX program takes {attach_ms:.1} ms and detaching it {detach_ms:.1} ms (median of {HOOK_ROUNDS}; each waits for an RCU grace period in `tcx_entry_sync`). genie puts two hooks on every interface, so ADD pays at least {:.1} ms and DEL at least {:.1} ms per interface in the kernel (DEL through the interface's removal).",
        2.0 * attach_ms,
        2.0 * detach_ms
    );
    println!("\nGoal: overhead ≤ 10 ms per pod and ≤ 15 % over the delegates' own time.");
    Ok(())
}

/// Attach/detach pairs measured for the kernel floor.
const HOOK_ROUNDS: usize = 20;

/// The kernel's own cost of one TCX attach and one detach: the pass-through program on a veth
/// in the node namespace, through aya, with no map or pin involved.
fn tcx_hook_cost(node: &TestNode) -> Result<(f64, f64)> {
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};

    let ns = node.topo.node();
    ns.ip(&[
        "link", "add", "hook0", "type", "veth", "peer", "name", "hook1",
    ])?;
    ns.ip(&["link", "set", "hook0", "up"])?;
    let mut ebpf = aya::EbpfLoader::new()
        .load(genie_agent::EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(genie_agent::dataplane::BENCH_PASS_PROGRAM)
        .context("no pass-through program")?
        .try_into()?;
    program.load()?;
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for _ in 0..HOOK_ROUNDS {
        let started = Instant::now();
        let link = genie_agent::netns::run_in(&ns.path(), || {
            program.attach_with_options(
                "hook0",
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
        })??;
        attach.push(started.elapsed());
        let started = Instant::now();
        program.detach(link)?;
        detach.push(started.elapsed());
    }
    ns.ip(&["link", "del", "hook0"])?;
    Ok((median_ms(attach), median_ms(detach)))
}
