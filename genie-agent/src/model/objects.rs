//! The `genie.dev/v1alpha1` objects as operators write them (DESIGN.md §2).
//!
//! Every struct refuses unknown fields, so a misspelt field is an error that names it rather
//! than a setting silently ignored.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
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
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "genie.dev",
    version = "v1alpha1",
    kind = "PhysicalNetwork",
    root = "PhysicalNetworkObject",
    doc = "A host network that logical networks are carved from (the uplink on each node).",
    status = "ObjectStatus",
    shortname = "pnet",
    category = "genie",
    printcolumn(name = "NIC", type_ = "string", json_path = ".spec.nic"),
    printcolumn(name = "Dedicated", type_ = "boolean", json_path = ".spec.dedicated"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) lists repeat keys such as type_ by design"
)]
pub struct PhysicalNetworkSpec {
    /// Default uplink interface name on nodes.
    #[serde(default)]
    #[schemars(length(min = 1, max = 15))]
    pub nic: Option<String>,
    /// Only one tenant may use it.
    #[serde(default)]
    pub dedicated: bool,
    /// MTU of the uplink.
    #[serde(default)]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<u32>,
}

/// A tenant's network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "genie.dev",
    version = "v1alpha1",
    kind = "LogicalNetwork",
    root = "LogicalNetworkObject",
    doc = "A tenant's network: its subnet, the CNI plugin that attaches pods to it, what its endpoints may reach, and its limits.",
    status = "ObjectStatus",
    shortname = "lnet",
    category = "genie",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Subnet", type_ = "string", json_path = ".spec.subnet"),
    printcolumn(name = "Plugin", type_ = "string", json_path = ".spec.plugin.type"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].reason"
    ),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) lists repeat keys such as type_ by design"
)]
pub struct LogicalNetworkSpec {
    /// The owning tenant.
    #[schemars(regex(pattern = DNS_LABEL))]
    pub tenant: String,
    /// The PhysicalNetwork it is carved from.
    #[serde(default)]
    #[schemars(regex(pattern = DNS_LABEL))]
    pub physical_network: Option<String>,
    /// IPv4 or IPv6 CIDR the network's addresses come from.
    #[schemars(regex(pattern = CIDR))]
    pub subnet: String,
    /// Optional second subnet of the other family (dual stack).
    #[serde(default)]
    #[schemars(regex(pattern = CIDR))]
    pub subnet6: Option<String>,
    /// The delegate CNI configuration (`type` and the plugin's own fields), or a list of them
    /// run as a chain (e.g. `macvlan` then `tuning`); genie adds `cniVersion`, `name` and,
    /// when the first has no `ipam`, host-local IPAM over `subnet`.
    #[serde(default)]
    #[schemars(schema_with = "delegate_config_schema")]
    pub plugin: Option<serde_json::Value>,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// What a network's endpoints may reach and be reached by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Isolation {
    /// Endpoints may reach the nodes' addresses.
    #[serde(default)]
    pub allow_host_access: bool,
    /// Host ports reachable even without `allowHostAccess` (node-local DNS, …).
    #[serde(default)]
    pub allow_host_ports: Vec<PortRule>,
    /// Endpoints may reach addresses outside every known network.
    #[serde(default = "default_true")]
    pub allow_external: bool,
    /// Addresses outside every known network may open flows to endpoints.
    #[serde(default)]
    pub allow_external_ingress: bool,
    /// One-way allows to other logical networks. A network of another tenant must consent
    /// in its `allowFrom`.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Networks of other tenants whose `peers` may open flows into this network (the owner's
    /// consent, DESIGN.md §3); optionally only on some ports. A `LogicalNetwork` only: the
    /// default network cannot be a peer.
    #[serde(default)]
    pub allow_from: Vec<AllowFrom>,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            allow_host_access: false,
            allow_host_ports: Vec::new(),
            allow_external: true,
            allow_external_ingress: false,
            peers: Vec::new(),
            allow_from: Vec::new(),
        }
    }
}

/// "Endpoints of `tenant`'s `network` may open flows into this network when they list it in
/// their `peers`", on the ports both sides allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowFrom {
    /// The other tenant.
    #[schemars(regex(pattern = DNS_LABEL))]
    pub tenant: String,
    /// One of its LogicalNetworks, or `default` for its share of the default network; absent:
    /// any of its networks.
    #[serde(default)]
    #[schemars(regex(pattern = DNS_LABEL))]
    pub network: Option<String>,
    /// Empty: every protocol and port the peer asks for.
    #[serde(default)]
    pub ports: Vec<PortRule>,
}

fn default_true() -> bool {
    true
}

/// "Endpoints of this network may open flows to `network`", optionally only on some ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// A LogicalNetwork (of another tenant only where that network's `allowFrom` names this
    /// one).
    #[schemars(regex(pattern = DNS_LABEL))]
    pub network: String,
    /// Empty: every protocol and port.
    #[serde(default)]
    pub ports: Vec<PortRule>,
}

/// A protocol and destination port range, as in Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// TCP (default), UDP, SCTP or ICMP.
    #[serde(default = "default_protocol")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP", "ICMP"]))]
    pub protocol: String,
    /// First port; absent means every port of the protocol.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Last port of the range (inclusive).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<u32>,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Bandwidth and new-connection limits (enforced by the rate-limit stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Bits per second an endpoint may send (Kubernetes quantity: `10M`, `1G`, `500k`).
    #[serde(default)]
    #[schemars(regex(pattern = QUANTITY))]
    pub egress_bandwidth: Option<String>,
    /// Bits per second an endpoint may receive.
    #[serde(default)]
    #[schemars(regex(pattern = QUANTITY))]
    pub ingress_bandwidth: Option<String>,
    /// Bandwidth burst in bits (default: 100 ms at the rate, at least 128 KiB).
    #[serde(default)]
    #[schemars(regex(pattern = QUANTITY))]
    pub burst: Option<String>,
    /// New flows per second an endpoint may open.
    #[serde(default, rename = "egressQPS")]
    #[schemars(range(min = 1))]
    pub egress_qps: Option<u64>,
    /// New flows per second that may be opened towards an endpoint.
    #[serde(default, rename = "ingressQPS")]
    #[schemars(range(min = 1))]
    pub ingress_qps: Option<u64>,
    /// `Endpoint` (each interface its own buckets, default) or `Network` (shared per node).
    #[serde(default)]
    #[schemars(extend("enum" = ["Endpoint", "Network"]))]
    pub scope: Option<String>,
}

/// A tenant: the namespaces it owns and its defaults.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "genie.dev",
    version = "v1alpha1",
    kind = "Tenant",
    root = "TenantObject",
    doc = "A tenant: the namespaces whose pods it owns, its quota and the isolation of its share of the default network.",
    status = "ObjectStatus",
    shortname = "tn",
    category = "genie",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].reason"
    ),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) lists repeat keys such as type_ by design"
)]
pub struct TenantSpec {
    /// Kubernetes namespaces whose pods belong to the tenant (each to one tenant at most).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// What the tenant may use.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Isolation of the tenant's share of the cluster default network.
    #[serde(default)]
    pub default_isolation: Option<Isolation>,
}

/// Limits on what a tenant may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Maximum number of endpoints (pod interfaces) across the tenant's networks.
    #[serde(default)]
    pub endpoints: Option<u32>,
    /// Flows the tenant's own connection-tracking table holds on each node (default 65536,
    /// about 7 MiB of kernel memory). A flood of new flows evicts only the tenant's own.
    #[serde(default)]
    #[schemars(range(min = 256, max = 4194304))]
    pub connections: Option<u32>,
}

/// The pod interfaces one node's agent enforces, published by that agent so the other nodes
/// give their addresses the right identity. Named after the node; written only by genie's
/// agents (their service account is the only one granted create/patch on this kind), never
/// by tenants: unlike a pod's `network-status` annotation, which anyone who may edit the pod
/// can change, it is a source of identity other nodes can trust.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "genie.dev",
    version = "v1alpha1",
    kind = "NodeEndpoints",
    root = "NodeEndpointsObject",
    doc = "The pod interfaces a node's genie agent enforces (written by that agent only; other nodes derive remote identities from it).",
    plural = "nodeendpoints",
    shortname = "nep",
    category = "genie",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEndpointsSpec {
    /// Every endpoint the node enforces.
    #[serde(default)]
    pub endpoints: Vec<PublishedEndpoint>,
}

/// One pod interface in a [`NodeEndpointsSpec`].
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedEndpoint {
    /// The pod's namespace (its tenant).
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The interface inside the pod.
    pub interface: String,
    /// The LogicalNetwork, or `default`.
    pub network: String,
    /// Its addresses.
    pub ips: Vec<String>,
}

/// What the agents report on an object (the status subresource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// `Accepted`: `True`/`Valid` when the current spec is valid, `False`/`Invalid` with the
    /// message naming the fields. `Enforced`: `True`/`Enforced` when the current spec is what
    /// the nodes enforce, `False`/`LastValidVersionEnforced` while an older version stays in
    /// force, `False`/`NotEnforced` when nothing is.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Endpoints (pod interfaces) enforced for this object, summed over `nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<u32>,
    /// Endpoints per node, as each node's agent last reported them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, u32>,
}

/// A status condition (the shape of Kubernetes' `metav1.Condition`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted` or `Enforced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// CamelCase reason: `Valid`, `Invalid`, `Enforced`, `LastValidVersionEnforced` or
    /// `NotEnforced`.
    pub reason: String,
    /// Human-readable detail: the field and the problem.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
    /// The `metadata.generation` the condition describes.
    #[serde(default)]
    pub observed_generation: i64,
}

/// A DNS label (RFC 1123), the form of every genie object name.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// An IPv4 or IPv6 CIDR (the agent checks it exactly; this catches the obvious).
const CIDR: &str = "^[0-9a-fA-F:.]+/[0-9]{1,3}$";

/// A Kubernetes quantity without exponent forms: digits, an optional fraction and an SI or
/// binary suffix.
const QUANTITY: &str = "^[0-9]+(\\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";

/// `plugin`: a plugin object with a `type`, or a list of them (a chain). A structural schema
/// cannot say "object or array", so the apiserver keeps the value as it is and the agent
/// checks it (naming `spec.plugin`).
fn delegate_config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The delegate CNI plugin: an object with `type` and the plugin's own fields, or a list of such objects run as a chain (each gets the previous one's result).",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
