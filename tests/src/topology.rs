//! Network-namespace topologies: one namespace per node, one per pod, veth pairs between them.
//!
//! A node namespace holds a bridge `br0` (the node's address on each pod subnet) and the host
//! side of every pod's veth; each pod namespace holds `eth0`. Neighbour and bridge forwarding
//! entries are static and multicast is off, so the only packets on the wire are the ones a test
//! sends — counters can then be compared exactly. IPv6 is off unless asked for, for the same
//! reason.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

use crate::names;

/// Subnet the harness's pods live in: the first /24 of 198.18.0.0/15.
pub const POD_SUBNET_PREFIX: u8 = 24;
/// The node's address on pod subnet 0.
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_MAC: [u8; 6] = [0x02, 0x67, 0x00, 0x00, 0x00, 0x01];

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip` with arguments.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop. Deleting it removes every
/// interface inside it, and with them the veth peers in other namespaces.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with loopback up and, unless `ipv6`, IPv6 off.
    pub fn create(name: String, ipv6: bool) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        if !ipv6 {
            ns.exec(&[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])?;
        }
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns`.
    pub fn path(&self) -> PathBuf {
        genie_agent::netns::named(&self.name)
    }

    /// Runs a program inside the namespace (`ip netns exec`). Fine for traffic tools; not for
    /// anything that needs bpffs, which `ip netns exec` hides by remounting /sys.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// Runs `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A pod: its own namespace and one interface, `eth0`, whose host side sits in the node.
#[derive(Debug)]
pub struct Pod {
    /// Short label given by the test ("a", "client", …).
    pub label: String,
    /// The pod's namespace.
    pub netns: Netns,
    /// Address of `eth0`.
    pub ipv4: Ipv4Addr,
    /// MAC of `eth0`.
    pub mac: [u8; 6],
    /// Name of the host-side veth inside the node namespace.
    pub host_ifname: String,
    /// The pod's default gateway (the node's address on the pod's subnet).
    pub gateway: Ipv4Addr,
    /// Address of `eth0` on a dual-stack topology (`2001:db8:<subnet>::<host>`).
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The node's IPv6 address on the pod's subnet (dual stack).
    pub gateway6: Option<std::net::Ipv6Addr>,
}

impl Pod {
    /// The MAC as `ip` prints it.
    pub fn mac_string(&self) -> String {
        mac_string(self.mac)
    }
}

/// Formats a MAC the way `ip` wants it.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A node namespace with pods, plus a bpffs directory for the node's pins; everything is
/// removed on drop.
#[derive(Debug)]
pub struct Topology {
    base: String,
    ipv6: bool,
    bpffs: PathBuf,
    subnets: Vec<u8>,
    // Declared before `node`: pod namespaces go first, then the node.
    pods: Vec<Pod>,
    node: Netns,
}

impl Topology {
    /// A node with a bridge and no pods, IPv4 only.
    pub fn new() -> Result<Self> {
        Self::build(false)
    }

    /// A dual-stack node: IPv6 on in every namespace, each pod also gets
    /// `2001:db8:<subnet>::<host>/64` and the node `2001:db8:<subnet>::1`. Neighbours are
    /// resolved for real (ND over genie's programs), not preset.
    pub fn dual_stack() -> Result<Self> {
        Self::build(true)
    }

    fn build(ipv6: bool) -> Result<Self> {
        crate::require_root();
        names::sweep_dead_runs();
        let base = names::unique();
        let node = Netns::create(format!("{base}-node"), ipv6)?;
        // No multicast snooping: with it the bridge joins 224.0.0.106 and its IGMP reports reach
        // every pod at random times, so exact packet counts would flake.
        node.ip(&[
            "link",
            "add",
            "br0",
            "address",
            &mac_string(NODE_MAC),
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        // IPv6 neighbour discovery needs multicast.
        node.ip(&[
            "link",
            "set",
            "br0",
            "multicast",
            if ipv6 { "on" } else { "off" },
            "up",
        ])?;
        let bpffs = Path::new(names::BPFFS_ROOT).join(&base);
        Ok(Self {
            base,
            ipv6,
            bpffs,
            subnets: Vec::new(),
            pods: Vec::new(),
            node,
        })
    }

    /// The node namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The bpffs directory reserved for this topology's node (created by whoever loads the
    /// dataplane; removed on drop).
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The unique base name of everything this topology created.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A pod by label.
    pub fn pod(&self, label: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("no pod labelled {label}"))
    }

    /// Adds a pod on subnet 0 (198.18.0.0/24); see [`Topology::add_pod_on`].
    pub fn add_pod(&mut self, label: &str) -> Result<&Pod> {
        self.add_pod_on(label, 0)
    }

    /// Adds a pod with the next address on subnet `198.18.<subnet>.0/24`, whose gateway
    /// `198.18.<subnet>.1` is the node's bridge (pods on different subnets reach each other
    /// through the node, as on a routed CNI). Neighbour and bridge forwarding entries are
    /// static between the pod, its same-subnet peers and the node.
    pub fn add_pod_on(&mut self, label: &str, subnet: u8) -> Result<&Pod> {
        let index = u8::try_from(self.pods.len() + 1)
            .ok()
            .filter(|i| *i <= 200)
            .context("at most 200 pods per topology")?;
        let gateway = Ipv4Addr::new(198, 18, subnet, 1);
        if !self.subnets.contains(&subnet) {
            self.node.ip(&[
                "addr",
                "add",
                &format!("{gateway}/{POD_SUBNET_PREFIX}"),
                "dev",
                "br0",
            ])?;
            if self.ipv6 {
                self.node.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:db8:{subnet:x}::1/64"),
                    "dev",
                    "br0",
                    "nodad",
                ])?;
            }
            if self.subnets.is_empty() {
                // Routing between pod subnets happens in the node namespace only.
                self.node
                    .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                if self.ipv6 {
                    self.node
                        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
                }
            }
            self.subnets.push(subnet);
        }
        let netns = Netns::create(format!("{}-{label}", self.base), self.ipv6)?;
        let pod = Pod {
            label: label.to_owned(),
            ipv4: Ipv4Addr::new(198, 18, subnet, 10 + index),
            mac: [0x02, 0x67, 0x00, 0x00, 0x01, index],
            host_ifname: format!("gv{index}"),
            gateway,
            ipv6: self
                .ipv6
                .then(|| format!("2001:db8:{subnet:x}::{:x}", 10 + u16::from(index)).parse())
                .transpose()?,
            gateway6: self
                .ipv6
                .then(|| format!("2001:db8:{subnet:x}::1").parse())
                .transpose()?,
            netns,
        };
        let mac = mac_string(pod.mac);
        self.node.ip(&[
            "link",
            "add",
            &pod.host_ifname,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &mac,
            "netns",
            pod.netns.name(),
        ])?;
        let multicast = if self.ipv6 { "on" } else { "off" };
        self.node.ip(&[
            "link",
            "set",
            &pod.host_ifname,
            "master",
            "br0",
            "multicast",
            multicast,
            "up",
        ])?;
        pod.netns.ip(&[
            "addr",
            "add",
            &format!("{}/{POD_SUBNET_PREFIX}", pod.ipv4),
            "dev",
            "eth0",
        ])?;
        if let (Some(v6), Some(gw6)) = (pod.ipv6, pod.gateway6) {
            pod.netns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            pod.netns
                .ip(&["link", "set", "eth0", "multicast", multicast, "up"])?;
            pod.netns
                .ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        } else {
            pod.netns
                .ip(&["link", "set", "eth0", "multicast", multicast, "up"])?;
        }
        pod.netns
            .ip(&["route", "add", "default", "via", &gateway.to_string()])?;

        // Static L2 state: no ARP, and the bridge never floods a frame to a third pod.
        run(Command::new("bridge").args([
            "-netns",
            self.node.name(),
            "fdb",
            "replace",
            &mac,
            "dev",
            &pod.host_ifname,
            "master",
            "static",
        ]))?;
        self.node.ip(&[
            "neigh",
            "replace",
            &pod.ipv4.to_string(),
            "lladdr",
            &mac,
            "dev",
            "br0",
            "nud",
            "permanent",
        ])?;
        pod.netns.ip(&[
            "neigh",
            "replace",
            &gateway.to_string(),
            "lladdr",
            &mac_string(NODE_MAC),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        for other in self.pods.iter().filter(|o| o.gateway == gateway) {
            for (a, b) in [(&pod, other), (other, &pod)] {
                a.netns.ip(&[
                    "neigh",
                    "replace",
                    &b.ipv4.to_string(),
                    "lladdr",
                    &mac_string(b.mac),
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Unpinning the links detaches genie's programs before the interfaces go away.
        let _ = genie_agent::dataplane::cleanup(&self.bpffs);
    }
}
