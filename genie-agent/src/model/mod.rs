//! The model genie enforces: objects as the sources deliver them (`source`), each checked on
//! its own (`check`) and accepted or refused one by one against the others (`accept`), and
//! the validated types the reconcile step reads.

pub mod accept;
pub mod annotations;
pub mod check;
pub mod crd;
pub mod objects;
pub mod quantity;
pub mod rules;
pub mod source;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use genie_common::identity::network_identity;
use ipnet::IpNet;

pub use accept::{Acceptance, Enforced, Verdict, accept};
pub use check::check_name;
pub use objects::API_VERSION;
use objects::PhysicalNetworkSpec;
pub use rules::intersect_rules;
pub use source::{Kind, Origin, SourceObject};

/// The name of every tenant's share of the cluster default network.
pub const DEFAULT_NETWORK: &str = "default";

/// One problem in a configuration, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Object kind, when known.
    pub kind: String,
    /// Object name, when known.
    pub name: String,
    /// Field path (`spec.isolation.peers[0].network`), when known.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if !self.kind.is_empty() {
            write!(f, ": {}", self.kind)?;
        }
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors of the model subsystem.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory could not be read.
    #[error("cannot read configuration directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more objects or documents are invalid (strict loading: tests and tools).
    #[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// A parsed and validated port rule: protocol and optional inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ValidPortRule {
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidPeer {
    pub network: String,
    /// Empty: everything.
    pub rules: Vec<ValidPortRule>,
}

/// Isolation settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidIsolation {
    pub allow_host_access: bool,
    pub allow_host_ports: Vec<ValidPortRule>,
    pub allow_external: bool,
    pub allow_external_ingress: bool,
    pub peers: Vec<ValidPeer>,
    /// Other tenants' networks that may come in (the owner's consent).
    pub allow_from: Vec<ValidAllowFrom>,
}

/// A validated `allowFrom` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidAllowFrom {
    pub tenant: String,
    /// A network of `tenant`, `default`, or `None` for any.
    pub network: Option<String>,
    /// Empty: everything.
    pub rules: Vec<ValidPortRule>,
}

/// A validated `LogicalNetwork`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogicalNetwork {
    pub name: String,
    pub tenant: String,
    pub physical_network: Option<String>,
    pub subnets: Vec<IpNet>,
    pub plugin: Option<serde_json::Value>,
    pub isolation: ValidIsolation,
    pub limits: ValidLimits,
    pub identity: u32,
    pub file: PathBuf,
}

/// A validated `Tenant`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tenant {
    pub name: String,
    pub namespaces: Vec<String>,
    pub quota_endpoints: Option<u32>,
    /// The capacity of the tenant's connection-tracking table on each node.
    pub quota_connections: Option<u32>,
    pub default_isolation: ValidIsolation,
    /// Identity of the tenant's share of the default network.
    pub default_identity: u32,
    pub file: PathBuf,
}

/// A validated `PhysicalNetwork`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PhysicalNetwork {
    pub name: String,
    pub spec: PhysicalNetworkSpec,
    pub file: PathBuf,
}

/// A `kind: Pod` manifest from the configuration directory (file mode).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PodManifest {
    pub namespace: String,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// The attachments its annotations ask for, or why they cannot be read.
    pub attachments: Result<Vec<annotations::Attachment>, annotations::AnnotationError>,
    pub file: PathBuf,
}

/// Everything genie enforces, validated as a whole.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Model {
    /// Pod manifests by (namespace, name) (file mode).
    pub pods: BTreeMap<(String, String), PodManifest>,
    pub physical: BTreeMap<String, PhysicalNetwork>,
    pub logical: BTreeMap<String, LogicalNetwork>,
    pub tenants: BTreeMap<String, Tenant>,
    /// Namespace → owning tenant.
    pub namespace_tenant: BTreeMap<String, String>,
    /// Logical networks that exist but have nothing in force, with why (a pod asking for one
    /// is told).
    pub refused: BTreeMap<String, String>,
}

/// The identity of the default-network share of namespaces that no tenant owns.
pub fn unowned_default_identity() -> u32 {
    network_identity(b"default/")
}

impl Model {
    /// The identity of `network` for a pod in `namespace`, or why there is none.
    pub fn identity_for(&self, namespace: &str, network: &str) -> Result<u32, String> {
        let tenant = self.namespace_tenant.get(namespace);
        if network == DEFAULT_NETWORK {
            return Ok(match tenant {
                Some(t) => self.tenants[t].default_identity,
                None => unowned_default_identity(),
            });
        }
        let Some(net) = self.logical.get(network) else {
            return Err(match self.refused.get(network) {
                Some(why) => {
                    format!("logical network {network:?} does not exist: it was refused ({why})")
                }
                None => format!("logical network {network:?} does not exist"),
            });
        };
        match tenant {
            Some(t) if *t == net.tenant => Ok(net.identity),
            Some(t) => Err(format!(
                "logical network {network:?} belongs to tenant {:?}, but namespace {namespace:?} belongs to tenant {t:?}",
                net.tenant
            )),
            None => Err(format!(
                "logical network {network:?} belongs to tenant {:?}, but namespace {namespace:?} belongs to no tenant",
                net.tenant
            )),
        }
    }
}

/// A network's limits, validated: bandwidth in bits/s, burst in bits, QPS in new flows/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidLimits {
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    pub burst_bits: Option<u64>,
    pub egress_qps: Option<u64>,
    pub ingress_qps: Option<u64>,
    /// Scope `Network`: the network's endpoints on a node share one bucket per kind and
    /// direction.
    pub shared: bool,
}

/// Reads and validates `dir` strictly: the model only when every object and document is
/// valid (tests and tools; the agent accepts object by object).
pub fn validate_dir(dir: &Path) -> Result<Model, ModelError> {
    let loaded = source::load_dir(dir).map_err(|e| ModelError::ReadDir {
        path: e.path,
        source: e.source,
    })?;
    accept::accept_all(&loaded.objects, loaded.problems).map_err(ModelError::Invalid)
}

/// [`validate_dir`] for objects given as (file name, YAML text) pairs.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Model, ModelError> {
    let loaded = source::load_texts(sources);
    accept::accept_all(&loaded.objects, loaded.problems).map_err(ModelError::Invalid)
}

#[cfg(test)]
mod tests;
