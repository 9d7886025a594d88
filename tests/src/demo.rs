//! The guided tour behind `cargo xtask demo`, as a library: the demo binary narrates it, and
//! the test suite runs the same scenario and checks its verdicts against the objects.
//!
//! One node runs the real `genie agent` on a YAML directory; pods get their interfaces the way
//! a container runtime gives them, through `genie-cni` with Debian's `bridge` and `host-local`
//! plugins as delegates: `eth0` on the cluster default network, more interfaces from each
//! pod's annotation.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use genie_agent::inspect;
use genie_common::Reason;

use crate::{
    TestNode, Topology,
    cni::{Runtime, Sandbox, default_network, network_status},
    prometheus,
    topology::Netns,
    traffic::{self, EchoServer, NodeAt, connection_flood, iperf3},
};

/// The objects the agent reads: two tenants, four logical networks, and the pods' annotations.
/// `red-web` may open TCP 5432 on `red-db`; `red-db` is limited on ingress.
pub const OBJECTS: &str = r#"apiVersion: genie.dev/v1alpha1
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
  plugin:
    type: bridge
    bridge: gbr-web
    isGateway: true
    ipam: {type: host-local, ranges: [[{subnet: 198.18.1.0/24}]], routes: [{dst: 198.18.2.0/24}]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-db}
spec:
  tenant: red
  subnet: 198.18.2.0/24
  limits: {ingressBandwidth: 20M, ingressQPS: 20}
  plugin:
    type: bridge
    bridge: gbr-db
    isGateway: true
    ipam: {type: host-local, ranges: [[{subnet: 198.18.2.0/24}]], routes: [{dst: 198.18.1.0/24}]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-ops}
spec:
  tenant: red
  subnet: 198.18.4.0/24
  plugin: {type: bridge, bridge: gbr-ops, isGateway: true}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-web}
spec:
  tenant: blue
  subnet: 198.18.3.0/24
  plugin: {type: bridge, bridge: gbr-blue, isGateway: true}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: red, annotations: {genie.dev/networks: red-web}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: red, annotations: {genie.dev/networks: red-db}}
---
apiVersion: v1
kind: Pod
metadata: {name: shop-1, namespace: blue, annotations: {genie.dev/networks: blue-web}}
---
apiVersion: v1
kind: Pod
metadata:
  name: edge
  namespace: red
  annotations: {k8s.v1.cni.cncf.io/networks: "red-web@eth1, red-ops@eth2"}
"#;

/// (pod, namespace), in the order the runtime creates them.
pub const PODS: [(&str, &str); 4] = [
    ("web-1", "red"),
    ("db-1", "red"),
    ("shop-1", "blue"),
    ("edge", "red"),
];

/// The cluster default network (the runtime's own delegate, `eth0` of every pod).
pub const DEFAULT_SUBNET: &str = "198.18.20.0/24";

/// The port every matrix probe connects to.
pub const PORT: u16 = 5432;

/// The matrix's destinations: (pod, interface), then the node.
pub const TARGETS: [(&str, &str); 7] = [
    ("web-1", "eth1"),
    ("db-1", "eth1"),
    ("shop-1", "eth1"),
    ("edge", "eth1"),
    ("edge", "eth2"),
    ("web-1", "eth0"),
    ("shop-1", "eth0"),
];

/// The node's address on `red-web` (the bridge plugin's gateway): a HOST address.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// `red-db`'s ingress limits as the objects state them.
pub const DB_INGRESS_BITS: f64 = 20e6;
pub const DB_INGRESS_QPS: f64 = 20.0;

/// One interface of a pod, from its network status.
#[derive(Debug, Clone)]
pub struct Interface {
    pub ifname: String,
    pub network: String,
    pub ipv4: Ipv4Addr,
}

/// A pod the runtime created.
#[derive(Debug)]
pub struct DemoPod {
    pub name: String,
    pub namespace: String,
    pub netns: Netns,
    pub interfaces: Vec<Interface>,
}

impl DemoPod {
    /// The interface `ifname`.
    pub fn interface(&self, ifname: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.ifname == ifname)
    }

    /// The interface `ifname`, as something traffic can reach.
    pub fn at(&self, ifname: &str) -> NodeAt<'_> {
        NodeAt {
            netns: &self.netns,
            ipv4: self
                .interface(ifname)
                .map_or(Ipv4Addr::UNSPECIFIED, |i| i.ipv4),
        }
    }

    fn network_of(&self, ifname: &str) -> &str {
        self.interface(ifname).map_or("?", |i| i.network.as_str())
    }
}

/// A counter genie bumped: whose it was and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drop {
    pub tenant: String,
    pub network: String,
    pub direction: String,
    pub reason: String,
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The connection opened and echoed.
    Allowed,
    /// It did not; the drop counter that moved meanwhile, if one did.
    Dropped(Option<Drop>),
    /// Source and destination are the same pod.
    Itself,
}

impl Verdict {
    /// "allowed", "dropped (policy)", "-".
    pub fn text(&self) -> String {
        match self {
            Verdict::Allowed => "allowed".to_owned(),
            Verdict::Dropped(Some(d)) => format!("dropped ({})", d.reason),
            Verdict::Dropped(None) => "dropped".to_owned(),
            Verdict::Itself => "-".to_owned(),
        }
    }
}

/// The connectivity matrix: one row per source pod, one column per target.
#[derive(Debug)]
pub struct Matrix {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub cells: Vec<Vec<Verdict>>,
}

/// A limit as configured next to what was measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub what: String,
    pub configured: f64,
    pub measured: f64,
    pub unit: &'static str,
    pub note: String,
}

/// The tour's node, agent, runtime and pods.
#[derive(Debug)]
pub struct Tour {
    pub node: TestNode,
    pub runtime: Runtime,
    pub pods: Vec<DemoPod>,
    /// Where the agent serves Prometheus metrics (loopback of the namespace the tour runs in).
    pub metrics_address: String,
}

impl Tour {
    /// Creates the node, starts the agent on [`OBJECTS`] and adds every pod through
    /// `genie-cni`. `progress` is told what is happening.
    pub fn start(keep: bool, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        progress("creating the node namespace");
        let topo = Topology::new()?;
        // A port from the process id keeps concurrent runs (a test and a demo) apart.
        let metrics_address = format!("127.0.0.1:{}", 20_000 + std::process::id() % 20_000);
        let mut node =
            TestNode::new(topo, OBJECTS)?.with_agent_args(&["--metrics-address", &metrics_address]);
        if keep {
            node = node.outliving_this_process();
        }
        progress("starting `genie agent` (loads and verifies the eBPF programs)");
        node.spawn_agent()?;
        let runtime = Runtime::new(&node, default_network(DEFAULT_SUBNET));
        let mut pods = Vec::new();
        for (i, (name, namespace)) in PODS.iter().enumerate() {
            progress(&format!("CNI ADD {namespace}/{name}"));
            let netns = Netns::create(format!("{}-{name}", node.topo.base()), false)?;
            let sandbox = Sandbox::new(&format!("demo{i:04}"), namespace, name, &netns.path());
            let outcome = runtime.call("ADD", &sandbox)?;
            if outcome.exit_code != 0 {
                bail!("CNI ADD {namespace}/{name} failed: {}", outcome.raw);
            }
            let interfaces = network_status(&node, name)?
                .into_iter()
                .map(|(ifname, status)| {
                    Ok(Interface {
                        network: status["name"].as_str().unwrap_or("?").to_owned(),
                        ipv4: status["ips"][0]
                            .as_str()
                            .context("an interface without an address")?
                            .parse()?,
                        ifname,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            pods.push(DemoPod {
                name: (*name).to_owned(),
                namespace: (*namespace).to_owned(),
                netns,
                interfaces,
            });
        }
        Ok(Self {
            node,
            runtime,
            pods,
            metrics_address,
        })
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &DemoPod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The label of a target column: `db-1 eth1 (red-db)`, `node`.
    pub fn target_labels(&self) -> Vec<String> {
        TARGETS
            .iter()
            .map(|(pod, ifname)| format!("{pod} {ifname} ({})", self.pod(pod).network_of(ifname)))
            .chain(std::iter::once(format!("node {NODE_ADDRESS}")))
            .collect()
    }

    /// Connects from every pod to every target on [`PORT`] (echo servers listen on every
    /// target address), and records which drop counter moved for each refused probe.
    pub fn matrix(&self, progress: &mut dyn FnMut(&str)) -> Result<Matrix> {
        let mut servers = Vec::new();
        for (pod, ifname) in TARGETS {
            servers.push(EchoServer::start(&self.pod(pod).at(ifname), PORT)?);
        }
        let node = NodeAt {
            netns: self.node.topo.node(),
            ipv4: NODE_ADDRESS,
        };
        servers.push(EchoServer::start(&node, PORT)?);
        let mut cells = Vec::new();
        for (source, _) in PODS {
            progress(&format!("probing from {source}"));
            let from = self.pod(source).at("eth0");
            let mut row = Vec::new();
            for (pod, ifname) in TARGETS
                .iter()
                .map(|(p, i)| (Some(*p), *i))
                .chain(std::iter::once((None, "")))
            {
                let to = match pod {
                    Some(p) if p == source => {
                        row.push(Verdict::Itself);
                        continue;
                    }
                    Some(p) => self.pod(p).at(ifname).ipv4,
                    None => NODE_ADDRESS,
                };
                let before = self.drops()?;
                let allowed = traffic::tcp_connect_echo(&from, to, PORT)?;
                row.push(if allowed {
                    Verdict::Allowed
                } else {
                    let after = self.drops()?;
                    // A probe's ARP request is flooded to every pod of the bridge; the ones it
                    // does not ask about drop it (`wrong-destination`): not this probe's verdict.
                    let moved = after
                        .into_iter()
                        .filter(|(k, _)| k.reason != Reason::WrongDestination.name())
                        .filter(|(k, n)| before.get(k).copied().unwrap_or(0) < *n)
                        .max_by_key(|(k, n)| n - before.get(k).copied().unwrap_or(0))
                        .map(|(k, _)| k);
                    Verdict::Dropped(moved)
                });
            }
            cells.push(row);
        }
        drop(servers);
        Ok(Matrix {
            sources: PODS.iter().map(|(p, _)| (*p).to_owned()).collect(),
            targets: self.target_labels(),
            cells,
        })
    }

    /// Every drop counter of the node by (tenant, network, direction, reason), read from the
    /// pinned maps.
    pub fn drops(&self) -> Result<BTreeMap<Drop, u64>> {
        let mut out = BTreeMap::new();
        for row in inspect::counters(self.node.bpffs())? {
            let is_drop = Reason::ALL
                .iter()
                .find(|r| r.name() == row.reason)
                .is_some_and(|r| r.is_drop());
            if !is_drop {
                continue;
            }
            let key = Drop {
                tenant: row.tenant,
                network: row.network,
                direction: row.direction,
                reason: row.reason,
            };
            *out.entry(key).or_default() += row.packets;
        }
        Ok(out)
    }

    /// One TCP flow from `web-1` to `db-1` (through `red-web`'s peer rule) for `seconds`,
    /// against `red-db`'s ingress bandwidth limit.
    pub fn measure_bandwidth(&self, seconds: u32) -> Result<Measured> {
        let (web, db) = (self.pod("web-1"), self.pod("db-1"));
        let run = iperf3(&web.at("eth1"), &db.at("eth1"), PORT, seconds, None)?;
        Ok(Measured {
            what: "red-db ingress bandwidth (web-1 → db-1, one TCP flow)".to_owned(),
            configured: DB_INGRESS_BITS,
            measured: run.bits_per_second,
            unit: "bit/s",
            note: run
                .retransmits
                .map_or_else(String::new, |n| format!("{n} retransmits")),
        })
    }

    /// New connections from `web-1` to `db-1` opened as fast as 16 connectors can, against
    /// `red-db`'s ingress QPS limit: one second to spend the burst, then `seconds` measured.
    pub fn measure_qps(&self, seconds: u64) -> Result<Measured> {
        let (web, db) = (self.pod("web-1"), self.pod("db-1"));
        let _server = EchoServer::start(&db.at("eth1"), PORT)?;
        let to = db.at("eth1").ipv4;
        connection_flood(&web.at("eth1"), to, PORT, 16, Duration::from_secs(1))?;
        let started = Instant::now();
        let accepted =
            connection_flood(&web.at("eth1"), to, PORT, 16, Duration::from_secs(seconds))?;
        let rate = accepted as f64 / started.elapsed().as_secs_f64();
        Ok(Measured {
            what: "red-db ingress QPS (web-1 → db-1, new TCP connections)".to_owned(),
            configured: DB_INGRESS_QPS,
            measured: rate,
            unit: "conn/s",
            note: format!("{accepted} accepted in {seconds} s after the burst"),
        })
    }

    /// `GET /metrics` from the agent.
    pub fn scrape_metrics(&self) -> Result<String> {
        let (status, body) = prometheus::get(&self.metrics_address, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(body)
    }

    /// CNI DEL of every pod (the runtime's teardown), then everything else on drop.
    pub fn delete_pods(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        for (i, pod) in self.pods.iter().enumerate() {
            progress(&format!("CNI DEL {}/{}", pod.namespace, pod.name));
            let sandbox = Sandbox::new(
                &format!("demo{i:04}"),
                &pod.namespace,
                &pod.name,
                &pod.netns.path(),
            );
            let outcome = self.runtime.call("DEL", &sandbox)?;
            if outcome.exit_code != 0 {
                bail!("CNI DEL {}: {}", pod.name, outcome.raw);
            }
        }
        Ok(())
    }

    /// Leaves everything in place when the tour ends (`--keep`): namespaces, pins, state and
    /// the agent. Returns the teardown commands.
    pub fn keep(self) -> Vec<String> {
        let base = self.node.topo.base().to_owned();
        let mut teardown = vec![format!(
            "kill {}  # the agent",
            self.node.agent_pid().unwrap_or(0)
        )];
        teardown.push(format!(
            "genie agent cleanup --bpffs {} --state-dir {} --socket {}",
            self.node.bpffs().display(),
            self.node.state_dir().display(),
            self.node.socket().display()
        ));
        teardown.push(format!(
            "for ns in $(ip netns list | awk '/^{base}-/ {{print $1}}'); do ip netns del $ns; done"
        ));
        teardown.push(format!("rm -r {}", self.node.dir().display()));
        for pod in self.pods {
            std::mem::forget(pod.netns);
        }
        self.node.leak();
        teardown
    }

    /// The metrics series of one drop counter, as the agent renders it.
    pub fn drop_series(d: &Drop) -> String {
        format!(
            "genie_drops_total{{tenant=\"{}\",network=\"{}\",direction=\"{}\",reason=\"{}\"}}",
            d.tenant, d.network, d.direction, d.reason
        )
    }
}
