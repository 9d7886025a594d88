//! The validated model: every object of a configuration directory, checked as a whole
//! (references, overlaps, collisions) before anything reaches the dataplane.

pub mod crd;
pub mod objects;
pub mod quantity;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
};

use genie_common::{identity::network_identity, maps::MAX_PORT_RANGES, policy::proto};
use ipnet::IpNet;
use serde::{Deserialize as _, de::DeserializeOwned};

pub use objects::API_VERSION;
use objects::{
    Isolation, Limits, LogicalNetworkSpec, ObjectMeta, PhysicalNetworkSpec, PortRule, TenantSpec,
};

/// The name of every tenant's share of the cluster default network.
pub const DEFAULT_NETWORK: &str = "default";

/// One problem in a configuration, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// One or more objects are invalid; nothing of the configuration was applied.
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
    pub attachments:
        Result<Vec<crate::cni::annotations::Attachment>, crate::cni::annotations::AnnotationError>,
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
            return Err(format!("logical network {network:?} does not exist"));
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

/// One object as read from a file, before validation.
struct RawObject {
    file: PathBuf,
    kind: String,
    meta: ObjectMeta,
    spec: serde_yaml::Value,
}

/// Reads every `*.yaml` / `*.yml` in `dir` (sorted, not recursive) and validates the result.
pub fn load_dir(dir: &Path) -> Result<Model, ModelError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| ModelError::ReadDir {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => errors.push(ConfigError {
                file,
                kind: String::new(),
                name: String::new(),
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ModelError::Invalid(errors));
    }
    load_sources(&sources)
}

/// Validates objects given as (file name, YAML text) pairs.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Model, ModelError> {
    let mut errors = Vec::new();
    let mut raws = Vec::new();
    for (file, text) in sources {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let err = |field: &str, message: String| ConfigError {
                file: file.clone(),
                kind: String::new(),
                name: String::new(),
                field: field.to_owned(),
                message: format!("document {}: {message}", index + 1),
            };
            let value = match serde_yaml::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(err("", format!("not valid YAML: {e}")));
                    // The parser cannot resynchronise after a syntax error (it would report
                    // the same error forever): the rest of the file is unreadable.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            match raw_object(file, value) {
                Ok(Some(raw)) => raws.push(raw),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ModelError::Invalid(errors));
    }
    validate(raws)
}

/// Kinds genie reads from the directory. `Pod` manifests tell the CNI handler, in file mode,
/// which networks a pod asks for (its annotations).
const KINDS: [&str; 4] = ["PhysicalNetwork", "LogicalNetwork", "Tenant", "Pod"];

fn raw_object(file: &Path, value: serde_yaml::Value) -> Result<Option<RawObject>, ConfigError> {
    let field_err = |kind: &str, name: &str, field: &str, message: String| ConfigError {
        file: file.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        message,
    };
    let str_field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = str_field("kind").ok_or_else(|| field_err("", "", "kind", "missing".to_owned()))?;
    let meta: ObjectMeta = match value.get("metadata") {
        Some(m) => serde_yaml::from_value(m.clone())
            .map_err(|e| field_err(&kind, "", "metadata", e.to_string()))?,
        None => return Err(field_err(&kind, "", "metadata.name", "missing".to_owned())),
    };
    if !KINDS.contains(&kind.as_str()) {
        return Err(field_err(
            &kind,
            &meta.name,
            "kind",
            format!(
                "unknown kind {kind:?} (expected one of {})",
                KINDS.join(", ")
            ),
        ));
    }
    if kind == "Pod" {
        // A Kubernetes manifest (apiVersion v1): only its metadata matters to genie.
        return Ok(Some(RawObject {
            file: file.to_owned(),
            kind,
            meta,
            spec: serde_yaml::Value::Null,
        }));
    }
    let api_version = str_field("apiVersion").unwrap_or_default();
    if api_version != API_VERSION {
        return Err(field_err(
            &kind,
            &meta.name,
            "apiVersion",
            format!("{api_version:?} is not {API_VERSION:?}"),
        ));
    }
    if let Err(message) = check_name(&meta.name) {
        return Err(field_err(&kind, &meta.name, "metadata.name", message));
    }
    let spec = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    Ok(Some(RawObject {
        file: file.to_owned(),
        kind,
        meta,
        spec,
    }))
}

/// Names are DNS labels (RFC 1123): they become parts of map entries and labels.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters"));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} must consist of lower-case letters, digits and '-', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

fn typed_spec<T: DeserializeOwned>(raw: &RawObject) -> Result<T, ConfigError> {
    // An absent spec reads as an empty one, so required fields are reported by name.
    let spec = if raw.spec.is_null() {
        serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
    } else {
        raw.spec.clone()
    };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        ConfigError {
            file: raw.file.clone(),
            kind: raw.kind.clone(),
            name: raw.meta.name.clone(),
            field: if path == "." {
                "spec".to_owned()
            } else {
                format!("spec.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

fn validate(raws: Vec<RawObject>) -> Result<Model, ModelError> {
    let mut errors = Vec::new();
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let mut physical_specs = Vec::new();
    let mut logical_specs = Vec::new();
    let mut tenant_specs = Vec::new();
    let mut pod_raws = Vec::new();
    for raw in raws {
        let err = |field: &str, message: String| ConfigError {
            file: raw.file.clone(),
            kind: raw.kind.clone(),
            name: raw.meta.name.clone(),
            field: field.to_owned(),
            message,
        };
        if let Some(first) =
            seen.insert((raw.kind.clone(), raw.meta.name.clone()), raw.file.clone())
        {
            errors.push(err(
                "metadata.name",
                format!("defined twice (also in {})", first.display()),
            ));
            continue;
        }
        match raw.kind.as_str() {
            "PhysicalNetwork" => match typed_spec::<PhysicalNetworkSpec>(&raw) {
                Ok(spec) => physical_specs.push((raw, spec)),
                Err(e) => errors.push(e),
            },
            "LogicalNetwork" => match typed_spec::<LogicalNetworkSpec>(&raw) {
                Ok(spec) => logical_specs.push((raw, spec)),
                Err(e) => errors.push(e),
            },
            "Tenant" => match typed_spec::<TenantSpec>(&raw) {
                Ok(spec) => tenant_specs.push((raw, spec)),
                Err(e) => errors.push(e),
            },
            "Pod" => pod_raws.push(raw),
            _ => {}
        }
    }

    let mut model = Model::default();
    for raw in pod_raws {
        let namespace = raw
            .meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        // A pod's bad annotation is that pod's problem: its ADD fails naming the annotation,
        // while the rest of the configuration stays valid.
        let attachments = crate::cni::annotations::attachments(&raw.meta.annotations, &namespace);
        model.pods.insert(
            (namespace.clone(), raw.meta.name.clone()),
            PodManifest {
                namespace,
                name: raw.meta.name.clone(),
                annotations: raw.meta.annotations.clone(),
                attachments,
                file: raw.file.clone(),
            },
        );
    }
    for (raw, spec) in physical_specs {
        model.physical.insert(
            raw.meta.name.clone(),
            PhysicalNetwork {
                name: raw.meta.name,
                spec,
                file: raw.file,
            },
        );
    }

    let mut identities: BTreeMap<u32, String> = BTreeMap::new();
    let mut claim_identity = |identity: u32,
                              key: String,
                              err: &dyn Fn(String) -> ConfigError,
                              errors: &mut Vec<ConfigError>| {
        if let Some(other) = identities.insert(identity, key.clone()) {
            errors.push(err(format!(
                "its identity {identity} collides with {other}; rename one of them"
            )));
        }
    };

    // Who owns each logical network and whom it lets in: peers across tenants are checked
    // against it (DESIGN.md §3, the owner's consent).
    let owners: BTreeMap<&str, (&str, &Isolation)> = logical_specs
        .iter()
        .map(|(r, s)| (r.meta.name.as_str(), (s.tenant.as_str(), &s.isolation)))
        .collect();
    let tenant_names: BTreeSet<&str> = tenant_specs
        .iter()
        .map(|(r, _)| r.meta.name.as_str())
        .collect();

    for (raw, spec) in &tenant_specs {
        let err = |field: &str, message: String| ConfigError {
            file: raw.file.clone(),
            kind: raw.kind.clone(),
            name: raw.meta.name.clone(),
            field: field.to_owned(),
            message,
        };
        for (i, ns) in spec.namespaces.iter().enumerate() {
            if let Err(m) = check_name(ns) {
                errors.push(err(&format!("spec.namespaces[{i}]"), m));
                continue;
            }
            if let Some(other) = model
                .namespace_tenant
                .insert(ns.clone(), raw.meta.name.clone())
            {
                errors.push(err(
                    &format!("spec.namespaces[{i}]"),
                    format!("namespace {ns:?} is already owned by tenant {other:?}"),
                ));
            }
        }
        let isolation = spec.default_isolation.clone().unwrap_or_default();
        let default_isolation = match validate_isolation(&isolation, "spec.defaultIsolation", &err)
        {
            Ok(v) => v,
            Err(mut e) => {
                errors.append(&mut e);
                continue;
            }
        };
        if let Some(connections) = spec.quota.as_ref().and_then(|q| q.connections)
            && !(256..=4_194_304).contains(&connections)
        {
            errors.push(err(
                "spec.quota.connections",
                format!("{connections} is not between 256 and 4194304"),
            ));
        }
        if !default_isolation.allow_from.is_empty() {
            errors.push(err(
                "spec.defaultIsolation.allowFrom",
                "the default network cannot be a peer, so nothing can be allowed into it"
                    .to_owned(),
            ));
        }
        for (i, peer) in default_isolation.peers.iter().enumerate() {
            let field = format!("spec.defaultIsolation.peers[{i}].network");
            match owners.get(peer.network.as_str()) {
                None => errors.push(err(
                    &field,
                    format!("logical network {:?} does not exist", peer.network),
                )),
                Some(owner) => {
                    if let Some(m) =
                        missing_consent(&raw.meta.name, DEFAULT_NETWORK, &peer.network, *owner)
                    {
                        errors.push(err(&field, m));
                    }
                }
            }
        }
        let identity = network_identity(format!("default/{}", raw.meta.name).as_bytes());
        claim_identity(
            identity,
            format!("the default network of tenant {:?}", raw.meta.name),
            &|m| err("metadata.name", m),
            &mut errors,
        );
        model.tenants.insert(
            raw.meta.name.clone(),
            Tenant {
                name: raw.meta.name.clone(),
                namespaces: spec.namespaces.clone(),
                quota_endpoints: spec.quota.as_ref().and_then(|q| q.endpoints),
                quota_connections: spec.quota.as_ref().and_then(|q| q.connections),
                default_isolation,
                default_identity: identity,
                file: raw.file.clone(),
            },
        );
    }
    claim_identity(
        unowned_default_identity(),
        "the default network of namespaces without a tenant".to_owned(),
        &|m| ConfigError {
            file: PathBuf::new(),
            kind: String::new(),
            name: String::new(),
            field: String::new(),
            message: m,
        },
        &mut errors,
    );

    let logical_names: BTreeSet<String> = logical_specs
        .iter()
        .map(|(r, _)| r.meta.name.clone())
        .collect();
    let mut subnets: Vec<(IpNet, String)> = Vec::new();
    let mut dedicated_users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (raw, spec) in &logical_specs {
        let name = &raw.meta.name;
        let err = |field: &str, message: String| ConfigError {
            file: raw.file.clone(),
            kind: raw.kind.clone(),
            name: name.clone(),
            field: field.to_owned(),
            message,
        };
        let before = errors.len();
        if name == DEFAULT_NETWORK {
            errors.push(err(
                "metadata.name",
                format!("{DEFAULT_NETWORK:?} is reserved for the cluster default network"),
            ));
        }
        if !model.tenants.contains_key(&spec.tenant) {
            errors.push(err(
                "spec.tenant",
                format!("tenant {:?} does not exist", spec.tenant),
            ));
        }
        if let Some(phys) = &spec.physical_network {
            match model.physical.get(phys) {
                None => errors.push(err(
                    "spec.physicalNetwork",
                    format!("physical network {phys:?} does not exist"),
                )),
                Some(p) if p.spec.dedicated => {
                    dedicated_users
                        .entry(phys.clone())
                        .or_default()
                        .insert(spec.tenant.clone());
                }
                Some(_) => {}
            }
        }
        let mut nets = Vec::new();
        for (field, text) in std::iter::once(("spec.subnet", Some(&spec.subnet)))
            .chain(std::iter::once(("spec.subnet6", spec.subnet6.as_ref())))
        {
            let Some(text) = text else { continue };
            match text.parse::<IpNet>() {
                Err(_) => errors.push(err(field, format!("{text:?} is not a CIDR"))),
                Ok(net) if net.trunc() != net => errors.push(err(
                    field,
                    format!("{text:?} has host bits set (did you mean {}?)", net.trunc()),
                )),
                Ok(net) => {
                    if let Some((_, other)) = subnets
                        .iter()
                        .find(|(o, _)| o.contains(&net.network()) || net.contains(&o.network()))
                    {
                        errors.push(err(
                            field,
                            format!("{text:?} overlaps the subnet of logical network {other:?}"),
                        ));
                    } else {
                        subnets.push((net, name.clone()));
                        nets.push(net);
                    }
                }
            }
        }
        if nets.len() == 2 && nets[0].addr().is_ipv4() == nets[1].addr().is_ipv4() {
            errors.push(err(
                "spec.subnet6",
                "must be of the other address family than spec.subnet".to_owned(),
            ));
        }
        let isolation = match validate_isolation(&spec.isolation, "spec.isolation", &err) {
            Ok(v) => v,
            Err(mut e) => {
                errors.append(&mut e);
                continue;
            }
        };
        for (i, peer) in isolation.peers.iter().enumerate() {
            let field = format!("spec.isolation.peers[{i}].network");
            if !logical_names.contains(&peer.network) {
                errors.push(err(
                    &field,
                    format!("logical network {:?} does not exist", peer.network),
                ));
            } else if let Some(owner) = owners.get(peer.network.as_str())
                && let Some(m) = missing_consent(&spec.tenant, name, &peer.network, *owner)
            {
                errors.push(err(&field, m));
            }
        }
        for (i, entry) in isolation.allow_from.iter().enumerate() {
            let field = format!("spec.isolation.allowFrom[{i}]");
            if entry.tenant == spec.tenant {
                errors.push(err(
                    &format!("{field}.tenant"),
                    format!(
                        "{:?} owns this network: its own networks need only list it in their peers",
                        entry.tenant
                    ),
                ));
            } else if !tenant_names.contains(entry.tenant.as_str()) {
                errors.push(err(
                    &format!("{field}.tenant"),
                    format!("tenant {:?} does not exist", entry.tenant),
                ));
            }
            if let Some(network) = &entry.network
                && network != DEFAULT_NETWORK
                && owners.get(network.as_str()).map(|o| o.0) != Some(entry.tenant.as_str())
            {
                errors.push(err(
                    &format!("{field}.network"),
                    format!(
                        "tenant {:?} has no logical network {network:?} (name one of its networks, `default`, or leave it out for all)",
                        entry.tenant
                    ),
                ));
            }
        }
        let limits = spec
            .limits
            .as_ref()
            .map(|l| validate_limits(l, &err, &mut errors))
            .unwrap_or_default();
        let identity = network_identity(format!("net/{name}").as_bytes());
        claim_identity(
            identity,
            format!("logical network {name:?}"),
            &|m| err("metadata.name", m),
            &mut errors,
        );
        if errors.len() == before {
            model.logical.insert(
                name.clone(),
                LogicalNetwork {
                    name: name.clone(),
                    tenant: spec.tenant.clone(),
                    physical_network: spec.physical_network.clone(),
                    subnets: nets,
                    plugin: spec.plugin.clone(),
                    isolation,
                    limits,
                    identity,
                    file: raw.file.clone(),
                },
            );
        }
    }
    for (phys, tenants) in dedicated_users {
        if tenants.len() > 1 {
            let p = &model.physical[&phys];
            errors.push(ConfigError {
                file: p.file.clone(),
                kind: "PhysicalNetwork".to_owned(),
                name: phys.clone(),
                field: "spec.dedicated".to_owned(),
                message: format!(
                    "dedicated, but logical networks of several tenants use it: {}",
                    tenants.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    // Across tenants a peer rule is cut to what the owner allows; the result must still fit
    // the policy map's port ranges.
    let sources = model
        .logical
        .values()
        .map(|n| {
            (
                &n.tenant,
                n.name.as_str(),
                &n.isolation,
                "LogicalNetwork",
                &n.file,
                &n.name,
                "spec.isolation",
            )
        })
        .chain(model.tenants.values().map(|t| {
            (
                &t.name,
                DEFAULT_NETWORK,
                &t.default_isolation,
                "Tenant",
                &t.file,
                &t.name,
                "spec.defaultIsolation",
            )
        }));
    for (tenant, network, isolation, kind, file, name, prefix) in sources {
        for (i, peer) in isolation.peers.iter().enumerate() {
            let Some(rules) = model.peer_rules(tenant, network, peer) else {
                continue;
            };
            for protocol in [proto::TCP, proto::UDP, proto::SCTP] {
                let n = rules.iter().filter(|r| r.protocol == protocol).count();
                if n > MAX_PORT_RANGES {
                    errors.push(ConfigError {
                        file: file.clone(),
                        kind: kind.to_owned(),
                        name: name.clone(),
                        field: format!("{prefix}.peers[{i}].ports"),
                        message: format!(
                            "with what {:?} allows in, this peer rule needs {n} port ranges; at most {MAX_PORT_RANGES} per protocol",
                            peer.network
                        ),
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(model)
    } else {
        Err(ModelError::Invalid(errors))
    }
}

/// Why `src_tenant`'s network `src_network` may not list `peer` (owned by `owner`) in its
/// peers: across tenants the owner must consent in its `allowFrom`. `None` when it may.
fn missing_consent(
    src_tenant: &str,
    src_network: &str,
    peer: &str,
    owner: (&str, &Isolation),
) -> Option<String> {
    let (owner_tenant, owner_isolation) = owner;
    if owner_tenant == src_tenant {
        return None;
    }
    let consents = owner_isolation
        .allow_from
        .iter()
        .any(|a| a.tenant == src_tenant && a.network.as_deref().is_none_or(|n| n == src_network));
    (!consents).then(|| {
        format!(
            "logical network {peer:?} belongs to tenant {owner_tenant:?}, which has not allowed this network in: its owner must add {{tenant: {src_tenant}, network: {src_network}}} to its spec.isolation.allowFrom"
        )
    })
}

/// The port rules two sides both allow (empty lists allow everything); `None` when they share
/// nothing. Overlapping and adjacent ranges are merged.
pub fn intersect_rules(a: &[ValidPortRule], b: &[ValidPortRule]) -> Option<Vec<ValidPortRule>> {
    if a.is_empty() {
        return Some(b.to_vec());
    }
    if b.is_empty() {
        return Some(a.to_vec());
    }
    let mut out: Vec<ValidPortRule> = Vec::new();
    for x in a {
        for y in b.iter().filter(|y| y.protocol == x.protocol) {
            let ports = match (x.ports, y.ports) {
                (None, p) | (p, None) => p,
                (Some((a1, a2)), Some((b1, b2))) => {
                    let (lo, hi) = (a1.max(b1), a2.min(b2));
                    if lo > hi {
                        continue;
                    }
                    Some((lo, hi))
                }
            };
            out.push(ValidPortRule {
                protocol: x.protocol,
                ports,
            });
        }
    }
    out.sort();
    out.dedup();
    let mut merged: Vec<ValidPortRule> = Vec::new();
    for rule in out {
        match (merged.last_mut(), rule.ports) {
            // A protocol with every port swallows its ranges (sorted after `None`).
            (Some(last), _) if last.protocol == rule.protocol && last.ports.is_none() => {}
            (Some(last), Some((lo, hi)))
                if last.protocol == rule.protocol
                    && last
                        .ports
                        .is_some_and(|(_, h)| u32::from(lo) <= u32::from(h) + 1) =>
            {
                let (l, h) = last.ports.unwrap_or_default();
                last.ports = Some((l, h.max(hi)));
            }
            _ => merged.push(rule),
        }
    }
    (!merged.is_empty()).then_some(merged)
}

impl Model {
    /// The rules under which endpoints of `src_tenant`'s network `src_network` may open flows
    /// to `peer.network`: the peer's own within one tenant; across tenants what both the peer
    /// rule and the owner's `allowFrom` allow. `None` when nothing is allowed.
    pub fn peer_rules(
        &self,
        src_tenant: &str,
        src_network: &str,
        peer: &ValidPeer,
    ) -> Option<Vec<ValidPortRule>> {
        let target = self.logical.get(&peer.network)?;
        if target.tenant == src_tenant {
            return Some(peer.rules.clone());
        }
        target
            .isolation
            .allow_from
            .iter()
            .filter(|a| {
                a.tenant == src_tenant && a.network.as_deref().is_none_or(|n| n == src_network)
            })
            .find_map(|a| intersect_rules(&peer.rules, &a.rules))
    }
}

fn validate_isolation(
    isolation: &Isolation,
    prefix: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ValidIsolation, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut host_ports = Vec::new();
    for (i, rule) in isolation.allow_host_ports.iter().enumerate() {
        match validate_port_rule(rule) {
            Ok(r) => host_ports.push(r),
            Err((field, m)) => errors.push(err(&format!("{prefix}.allowHostPorts[{i}]{field}"), m)),
        }
    }
    for protocol in [proto::TCP, proto::UDP, proto::SCTP] {
        let n = host_ports
            .iter()
            .filter(|r: &&ValidPortRule| r.protocol == protocol)
            .count();
        if n > MAX_PORT_RANGES {
            errors.push(err(
                &format!("{prefix}.allowHostPorts"),
                format!("at most {MAX_PORT_RANGES} port ranges per protocol (found {n})"),
            ));
        }
    }
    let mut peers: Vec<ValidPeer> = Vec::new();
    for (i, peer) in isolation.peers.iter().enumerate() {
        if peers.iter().any(|p| p.network == peer.network) {
            errors.push(err(
                &format!("{prefix}.peers[{i}].network"),
                format!(
                    "{:?} is listed twice; put all its ports in one entry",
                    peer.network
                ),
            ));
        }
        if peer.network == DEFAULT_NETWORK {
            errors.push(err(
                &format!("{prefix}.peers[{i}].network"),
                "peers must name logical networks; the default network cannot be a peer".to_owned(),
            ));
        }
        let mut rules = Vec::new();
        for (j, rule) in peer.ports.iter().enumerate() {
            match validate_port_rule(rule) {
                Ok(r) => rules.push(r),
                Err((field, m)) => {
                    errors.push(err(&format!("{prefix}.peers[{i}].ports[{j}]{field}"), m))
                }
            }
        }
        for protocol in [proto::TCP, proto::UDP, proto::SCTP] {
            let n = rules.iter().filter(|r| r.protocol == protocol).count();
            if n > MAX_PORT_RANGES {
                errors.push(err(
                    &format!("{prefix}.peers[{i}].ports"),
                    format!("at most {MAX_PORT_RANGES} port ranges per protocol (found {n})"),
                ));
            }
        }
        peers.push(ValidPeer {
            network: peer.network.clone(),
            rules,
        });
    }
    let mut allow_from = Vec::new();
    for (i, entry) in isolation.allow_from.iter().enumerate() {
        if let Err(m) = check_name(&entry.tenant) {
            errors.push(err(&format!("{prefix}.allowFrom[{i}].tenant"), m));
        }
        let mut rules = Vec::new();
        for (j, rule) in entry.ports.iter().enumerate() {
            match validate_port_rule(rule) {
                Ok(r) => rules.push(r),
                Err((field, m)) => errors.push(err(
                    &format!("{prefix}.allowFrom[{i}].ports[{j}]{field}"),
                    m,
                )),
            }
        }
        allow_from.push(ValidAllowFrom {
            tenant: entry.tenant.clone(),
            network: entry.network.clone(),
            rules,
        });
    }
    if errors.is_empty() {
        Ok(ValidIsolation {
            allow_host_access: isolation.allow_host_access,
            allow_host_ports: host_ports,
            allow_external: isolation.allow_external,
            allow_external_ingress: isolation.allow_external_ingress,
            peers,
            allow_from,
        })
    } else {
        Err(errors)
    }
}

fn validate_port_rule(rule: &PortRule) -> Result<ValidPortRule, (&'static str, String)> {
    let protocol = match rule.protocol.to_ascii_uppercase().as_str() {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        "ICMP" => proto::ICMP,
        other => {
            return Err((
                ".protocol",
                format!("{other:?} is not one of TCP, UDP, SCTP, ICMP"),
            ));
        }
    };
    if protocol == proto::ICMP {
        if rule.port.is_some() || rule.end_port.is_some() {
            return Err((".port", "ICMP has no ports".to_owned()));
        }
        return Ok(ValidPortRule {
            protocol,
            ports: None,
        });
    }
    let ports = match (rule.port, rule.end_port) {
        (None, None) => None,
        (None, Some(_)) => return Err((".endPort", "endPort needs port".to_owned())),
        (Some(p), end) => {
            let end = end.unwrap_or(p);
            if !(1..=65535).contains(&p) {
                return Err((".port", format!("{p} is not a port (1-65535)")));
            }
            if !(1..=65535).contains(&end) {
                return Err((".endPort", format!("{end} is not a port (1-65535)")));
            }
            if end < p {
                return Err((".endPort", format!("{end} is below port {p}")));
            }
            Some((p as u16, end as u16))
        }
    };
    Ok(ValidPortRule { protocol, ports })
}

fn validate_limits(
    limits: &Limits,
    err: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> ValidLimits {
    let mut quantity = |field: &str, value: &Option<String>| {
        let text = value.as_ref()?;
        match quantity::parse_quantity(text) {
            Ok(0) => {
                errors.push(err(field, format!("{text:?} must be greater than zero")));
                None
            }
            Ok(v) => Some(v),
            Err(m) => {
                errors.push(err(field, m));
                None
            }
        }
    };
    let egress_bps = quantity("spec.limits.egressBandwidth", &limits.egress_bandwidth);
    let ingress_bps = quantity("spec.limits.ingressBandwidth", &limits.ingress_bandwidth);
    let burst_bits = quantity("spec.limits.burst", &limits.burst);
    for (field, value) in [
        ("spec.limits.egressQPS", limits.egress_qps),
        ("spec.limits.ingressQPS", limits.ingress_qps),
    ] {
        if value == Some(0) {
            errors.push(err(field, "must be greater than zero".to_owned()));
        }
    }
    let shared = match limits.scope.as_deref() {
        None | Some("Endpoint") => false,
        Some("Network") => true,
        Some(scope) => {
            errors.push(err(
                "spec.limits.scope",
                format!("{scope:?} is not Endpoint or Network"),
            ));
            false
        }
    };
    ValidLimits {
        egress_bps,
        ingress_bps,
        burst_bits,
        egress_qps: limits.egress_qps,
        ingress_qps: limits.ingress_qps,
        shared,
    }
}

#[cfg(test)]
mod tests;
