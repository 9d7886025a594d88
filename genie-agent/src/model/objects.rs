//! The `genie.dev/v1alpha1` objects as operators write them (DESIGN.md §2).
//!
//! Every struct refuses unknown fields, so a misspelt field is an error that names it rather
//! than a setting silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The API group and version of every genie object.
pub const API_VERSION: &str = "genie.dev/v1alpha1";

/// `metadata` of a cluster-scoped object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// Only for namespaced kinds (`Pod` manifests in file mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A named host network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicalNetworkSpec {
    /// Default uplink interface name on nodes.
    #[serde(default)]
    pub nic: Option<String>,
    /// Only one tenant may use it.
    #[serde(default)]
    pub dedicated: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// A tenant's network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogicalNetworkSpec {
    /// The owning tenant.
    pub tenant: String,
    #[serde(default)]
    pub physical_network: Option<String>,
    /// IPv4 or IPv6 CIDR the network's addresses come from.
    pub subnet: String,
    /// Optional second subnet of the other family (dual stack).
    #[serde(default)]
    pub subnet6: Option<String>,
    /// The delegate CNI config (opaque here; the CNI handler reads it).
    #[serde(default)]
    pub plugin: Option<serde_json::Value>,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// What a network's endpoints may reach and be reached by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Isolation {
    #[serde(default)]
    pub allow_host_access: bool,
    /// Host ports reachable even without `allowHostAccess` (node-local DNS, …).
    #[serde(default)]
    pub allow_host_ports: Vec<PortRule>,
    #[serde(default = "default_true")]
    pub allow_external: bool,
    #[serde(default)]
    pub allow_external_ingress: bool,
    /// One-way allows to other logical networks.
    #[serde(default)]
    pub peers: Vec<Peer>,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            allow_host_access: false,
            allow_host_ports: Vec::new(),
            allow_external: true,
            allow_external_ingress: false,
            peers: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// "Endpoints of this network may open flows to `network`", optionally only on some ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub network: String,
    /// Empty: every protocol and port.
    #[serde(default)]
    pub ports: Vec<PortRule>,
}

/// A protocol and destination port range, as in Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// TCP (default), UDP, SCTP or ICMP.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// First port; absent means every port of the protocol.
    #[serde(default)]
    pub port: Option<u32>,
    /// Last port of the range (inclusive).
    #[serde(default)]
    pub end_port: Option<u32>,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Bandwidth and new-connection limits (enforced by the rate-limit stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub egress_bandwidth: Option<String>,
    #[serde(default)]
    pub ingress_bandwidth: Option<String>,
    #[serde(default)]
    pub burst: Option<String>,
    #[serde(default, rename = "egressQPS")]
    pub egress_qps: Option<u64>,
    #[serde(default, rename = "ingressQPS")]
    pub ingress_qps: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// A tenant: the namespaces it owns and its defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Isolation of the tenant's share of the cluster default network.
    #[serde(default)]
    pub default_isolation: Option<Isolation>,
}

/// Limits on what a tenant may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Maximum number of endpoints (pod interfaces) across the tenant's networks.
    #[serde(default)]
    pub endpoints: Option<u32>,
}
