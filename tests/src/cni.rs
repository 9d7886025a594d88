//! Running `genie-cni` the way a container runtime does: `CNI_*` environment variables, the
//! network configuration on stdin, a real network namespace, and the answer read from stdout
//! and the exit code.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{
    Topology,
    node::{TestNode, genie_binary},
    topology::Netns,
};

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";

/// The `genie-cni` binary next to `genie`.
pub fn genie_cni_binary() -> PathBuf {
    genie_binary().with_file_name("genie-cni")
}

/// What one invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct CniOutcome {
    pub exit_code: i32,
    /// stdout as JSON (`Value::Null` when empty).
    pub stdout: Value,
    pub raw: String,
}

impl CniOutcome {
    /// The CNI error code, when the invocation failed.
    pub fn error_code(&self) -> Option<u64> {
        (self.exit_code != 0).then(|| self.stdout["code"].as_u64().unwrap_or(0))
    }

    /// Panics with the full answer unless the invocation succeeded.
    pub fn expect_ok(self, what: &str) -> Value {
        assert_eq!(self.exit_code, 0, "{what} failed: {}", self.raw);
        self.stdout
    }
}

/// Runs `genie-cni` with exactly `env` (nothing inherited) and `stdin`.
pub fn invoke_raw(env: &[(&str, String)], stdin: &[u8]) -> Result<CniOutcome> {
    let mut child = Command::new(genie_cni_binary())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", genie_cni_binary().display()))?;
    child
        .stdin
        .take()
        .context("stdin is piped")?
        .write_all(stdin)?;
    let output = child.wait_with_output()?;
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    let stdout = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).with_context(|| format!("genie-cni printed non-JSON: {raw}"))?
    };
    Ok(CniOutcome {
        exit_code: output.status.code().unwrap_or(-1),
        stdout,
        raw: format!("{raw}{}", String::from_utf8_lossy(&output.stderr)),
    })
}

/// A container runtime on one node: its genie CNI configuration and the pod identity it passes.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The network configuration given on stdin.
    pub config: Value,
    /// `CNI_PATH`.
    pub cni_path: Vec<PathBuf>,
}

/// One pod sandbox as the runtime knows it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    /// The pod's network namespace (`None`: omitted).
    pub netns: Option<PathBuf>,
}

impl Sandbox {
    pub fn new(container_id: &str, namespace: &str, pod: &str, netns: &Path) -> Self {
        Self {
            container_id: container_id.to_owned(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            netns: Some(netns.to_owned()),
        }
    }
}

impl Runtime {
    /// A configuration for `node`: genie-cni talking to its agent, with `default_network` as the
    /// cluster default network's delegate.
    pub fn new(node: &TestNode, default_network: Value) -> Self {
        Self {
            config: json!({
                "cniVersion": "1.1.0",
                "name": "genie",
                "type": "genie-cni",
                "agentSocket": node.socket(),
                "defaultNetwork": default_network,
            }),
            cni_path: vec![PathBuf::from(DEBIAN_CNI_PATH)],
        }
    }

    /// `CNI_PATH` as joined for the environment.
    fn path_var(&self) -> String {
        std::env::join_paths(&self.cni_path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn env(&self, command: &str, sandbox: &Sandbox) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", sandbox.container_id.clone()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", self.path_var()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    sandbox.namespace, sandbox.pod, sandbox.container_id
                ),
            ),
        ];
        if let Some(netns) = &sandbox.netns {
            env.push(("CNI_NETNS", netns.display().to_string()));
        }
        env
    }

    /// ADD, DEL or CHECK for `sandbox`.
    pub fn call(&self, command: &str, sandbox: &Sandbox) -> Result<CniOutcome> {
        let mut config = self.config.clone();
        if command == "CHECK" {
            config["prevResult"] = json!({"cniVersion": "1.1.0"});
        }
        invoke_raw(
            &self.env(command, sandbox),
            serde_json::to_vec(&config)?.as_slice(),
        )
    }

    /// STATUS, VERSION or GC (commands without a container); `extra` is merged into the
    /// configuration.
    pub fn call_plugin(&self, command: &str, extra: Value) -> Result<CniOutcome> {
        let mut config = self.config.clone();
        if let (Some(c), Value::Object(e)) = (config.as_object_mut(), extra) {
            c.extend(e);
        }
        invoke_raw(
            &[
                ("CNI_COMMAND", command.to_owned()),
                ("CNI_PATH", self.path_var()),
            ],
            serde_json::to_vec(&config)?.as_slice(),
        )
    }
}

/// Gives the node an uplink for macvlan networks: `up0`, a veth whose far end `ext0` sits in a
/// namespace standing for the outside network, at 198.19.0.1/24, with a route back to
/// `routed` (a macvlan network's subnet).
pub fn add_uplink(topo: &Topology, routed: &str) -> Result<Netns> {
    let ext = Netns::create(format!("{}-ext", topo.base()), false)?;
    topo.node().ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "ext0",
        "netns",
        ext.name(),
    ])?;
    topo.node().ip(&["link", "set", "up0", "up"])?;
    ext.ip(&["addr", "add", "198.19.0.1/24", "dev", "ext0"])?;
    ext.ip(&["link", "set", "ext0", "up"])?;
    ext.ip(&["route", "add", routed, "dev", "ext0"])?;
    Ok(ext)
}

/// The cluster default network's delegate as a runtime's genie configuration carries it: a
/// bridge `gbr-def` with host-local addresses from `subnet` and the default route.
pub fn default_network(subnet: &str) -> Value {
    json!({
        "type": "bridge",
        "bridge": "gbr-def",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

/// kind's primary as kindnet writes it (`10-kindnet.conflist`): ptp, then portmap.
pub fn kindnet_primary(subnet: &str) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "kindnet",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                },
                "mtu": 1500
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// `genie inspect attachments --json` on `node`: every container's network status.
pub fn attachments(node: &TestNode) -> Result<Value> {
    let out = Command::new(genie_binary())
        .args(["inspect", "attachments", "--json", "--state-dir"])
        .arg(node.state_dir())
        .arg("--bpffs")
        .arg(node.bpffs())
        .output()?;
    anyhow::ensure!(out.status.success(), "genie inspect attachments: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The network status of one pod (`k8s.v1.cni.cncf.io/network-status` entries), by interface.
pub fn network_status(node: &TestNode, pod: &str) -> Result<BTreeMap<String, Value>> {
    let all = attachments(node)?;
    let container = all
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["pod"] == pod)
        .with_context(|| format!("no attachments for {pod}: {all}"))?;
    Ok(container["networkStatus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["interface"].as_str()?.to_owned(), s.clone())))
        .collect())
}

/// What genie and the delegates hold on a node: its per-pod links, IP leases, attachment cache
/// records, endpoint and address records in the maps, and pinned links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub node_links: Vec<String>,
    pub leases: Vec<PathBuf>,
    pub cache: Vec<PathBuf>,
    pub endpoint_records: usize,
    pub address_records: usize,
    pub pinned_links: Vec<PathBuf>,
}

/// The [`Footprint`] of `node` now.
pub fn footprint(node: &TestNode) -> Footprint {
    let state = node.state_dir();
    let maps = genie_agent::dataplane::PinnedMaps::open(node.bpffs())
        .and_then(|m| m.read_state())
        .expect("the node's pinned maps are readable");
    // The bridge plugin creates a network's bridge on first use and keeps it, shared by the
    // network's pods (as under any runtime): per-pod links are what must not stay.
    let mut node_links = link_names(node.topo.node());
    node_links.retain(|l| !l.starts_with("gbr-"));
    Footprint {
        node_links,
        leases: files_under(&state.join("ipam"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .collect(),
        cache: files_under(&state.join("cni")),
        endpoint_records: maps.endpoints.len(),
        // Directed-broadcast entries follow the node's addresses, and a bridge delegate keeps
        // its gateway address after the last pod goes: they are the node's, not a pod's.
        address_records: maps
            .addrs
            .values()
            .filter(|a| a.identity != genie_common::identity::BROADCAST)
            .count(),
        pinned_links: files_under(&node.bpffs().join("links")),
    }
}

/// The names of the links in a namespace, sorted.
pub fn link_names(ns: &Netns) -> Vec<String> {
    names_of_links(&ns.ip(&["-o", "link", "show"]).expect("ip link show").stdout)
}

/// The interface names in the output of `ip -o link`, sorted, without their `@peer`.
pub fn names_of_links(output: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = String::from_utf8_lossy(output)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect();
    names.sort();
    names
}

/// Every file below `dir`, sorted (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The first IPv4 address of an ADD result.
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}

/// A pod added through genie-cni: its namespace, sandbox and `eth0` address.
#[derive(Debug)]
pub struct CniPod {
    pub netns: Netns,
    pub sandbox: Sandbox,
    pub ipv4: std::net::Ipv4Addr,
}

impl CniPod {
    /// The pod at its `eth0` address, as traffic sees it.
    pub fn at(&self) -> crate::traffic::NodeAt<'_> {
        crate::traffic::NodeAt {
            netns: &self.netns,
            ipv4: self.ipv4,
        }
    }

    /// The MAC of `ifname` inside the pod.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self
            .netns
            .ip(&["-o", "link", "show", "dev", ifname])
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mac = text
            .split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("an Ethernet interface");
        let mut bytes = [0u8; 6];
        for (slot, part) in bytes.iter_mut().zip(mac.split(':')) {
            *slot = u8::from_str_radix(part, 16).expect("hex");
        }
        bytes
    }
}

/// A node with its agent and a runtime whose default network is a bridge (`gbr-def`, with
/// `subnet`, the node at its first address).
#[derive(Debug)]
pub struct CniCluster {
    pub node: TestNode,
    pub runtime: Runtime,
}

impl CniCluster {
    /// Starts the agent of `node` (already holding its objects) with the default network on
    /// `subnet`.
    pub fn start(node: TestNode, subnet: &str) -> Result<Self> {
        node.spawn_agent()?;
        let runtime = Runtime::new(&node, default_network(subnet));
        Ok(Self { node, runtime })
    }

    /// A namespace for a pod, IPv6 enabled when `ipv6`.
    pub fn netns(&self, label: &str, ipv6: bool) -> Result<Netns> {
        Netns::create(format!("{}-{label}", self.node.topo.base()), ipv6)
    }

    /// ADD of pod `namespace/pod` as container `id`.
    pub fn add(&self, id: &str, namespace: &str, pod: &str, ipv6: bool) -> Result<CniPod> {
        let netns = self.netns(pod, ipv6)?;
        let sandbox = Sandbox::new(id, namespace, pod, &netns.path());
        let outcome = self.runtime.call("ADD", &sandbox)?;
        anyhow::ensure!(outcome.exit_code == 0, "ADD {pod}: {}", outcome.raw);
        Ok(CniPod {
            ipv4: result_ipv4(&outcome.stdout).context("an IPv4 address on eth0")?,
            netns,
            sandbox,
        })
    }
}
