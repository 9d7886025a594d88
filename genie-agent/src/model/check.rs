//! What one object must satisfy on its own: names, CIDRs, port rules, limits, quotas. Nothing
//! here looks at another object (that is `accept`'s job), so an object's problems are found
//! the same way whatever else the configuration holds.

use genie_common::{identity::network_identity, maps::MAX_PORT_RANGES, policy::proto};
use ipnet::IpNet;

use super::{
    ConfigError, DEFAULT_NETWORK, LogicalNetwork, PhysicalNetwork, Tenant, ValidAllowFrom,
    ValidIsolation, ValidLimits, ValidPeer, ValidPortRule,
    objects::{Isolation, Limits, LogicalNetworkSpec, PortRule, TenantSpec},
    quantity,
    source::{Origin, Spec},
};

/// An object that passed its own checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Valid {
    Physical(PhysicalNetwork),
    Tenant(Tenant),
    Logical(LogicalNetwork),
}

/// Checks one object's spec on its own.
pub fn check(name: &str, spec: &Spec, origin: &Origin) -> Result<Option<Valid>, Vec<ConfigError>> {
    let file = origin.label();
    match spec {
        Spec::Pod => Ok(None),
        Spec::Physical(spec) => Ok(Some(Valid::Physical(PhysicalNetwork {
            name: name.to_owned(),
            spec: spec.clone(),
            file,
        }))),
        Spec::Tenant(spec) => {
            let err = error_at(&file, "Tenant", name);
            check_tenant(name, spec, &err, file.clone()).map(|t| Some(Valid::Tenant(t)))
        }
        Spec::Logical(spec) => {
            let err = error_at(&file, "LogicalNetwork", name);
            check_logical(name, spec, &err, file.clone()).map(|n| Some(Valid::Logical(n)))
        }
    }
}

fn error_at<'a>(
    file: &'a std::path::Path,
    kind: &'a str,
    name: &'a str,
) -> impl Fn(&str, String) -> ConfigError + 'a {
    move |field: &str, message: String| ConfigError {
        file: file.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        message,
    }
}

/// The identity of tenant `tenant`'s share of the default network.
pub fn tenant_default_identity(tenant: &str) -> u32 {
    network_identity(format!("default/{tenant}").as_bytes())
}

/// The identity of logical network `name`.
pub fn logical_identity(name: &str) -> u32 {
    network_identity(format!("net/{name}").as_bytes())
}

fn check_tenant(
    name: &str,
    spec: &TenantSpec,
    err: &dyn Fn(&str, String) -> ConfigError,
    file: std::path::PathBuf,
) -> Result<Tenant, Vec<ConfigError>> {
    let mut errors = Vec::new();
    for (i, ns) in spec.namespaces.iter().enumerate() {
        if let Err(m) = check_name(ns) {
            errors.push(err(&format!("spec.namespaces[{i}]"), m));
        } else if spec.namespaces[..i].contains(ns) {
            errors.push(err(
                &format!("spec.namespaces[{i}]"),
                format!("namespace {ns:?} is listed twice"),
            ));
        }
    }
    let isolation = spec.default_isolation.clone().unwrap_or_default();
    let default_isolation = validate_isolation(&isolation, "spec.defaultIsolation", err)
        .map_err(|mut e| errors.append(&mut e))
        .ok();
    if let Some(connections) = spec.quota.as_ref().and_then(|q| q.connections)
        && !(256..=4_194_304).contains(&connections)
    {
        errors.push(err(
            "spec.quota.connections",
            format!("{connections} is not between 256 and 4194304"),
        ));
    }
    if !isolation.allow_from.is_empty() {
        errors.push(err(
            "spec.defaultIsolation.allowFrom",
            "the default network cannot be a peer, so nothing can be allowed into it".to_owned(),
        ));
    }
    match default_isolation {
        Some(default_isolation) if errors.is_empty() => Ok(Tenant {
            name: name.to_owned(),
            namespaces: spec.namespaces.clone(),
            quota_endpoints: spec.quota.as_ref().and_then(|q| q.endpoints),
            quota_connections: spec.quota.as_ref().and_then(|q| q.connections),
            default_isolation,
            default_identity: tenant_default_identity(name),
            file,
        }),
        _ => Err(errors),
    }
}

fn check_logical(
    name: &str,
    spec: &LogicalNetworkSpec,
    err: &dyn Fn(&str, String) -> ConfigError,
    file: std::path::PathBuf,
) -> Result<LogicalNetwork, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if name == DEFAULT_NETWORK {
        errors.push(err(
            "metadata.name",
            format!("{DEFAULT_NETWORK:?} is reserved for the cluster default network"),
        ));
    }
    if let Err(m) = check_name(&spec.tenant) {
        errors.push(err("spec.tenant", m));
    }
    let mut nets: Vec<IpNet> = Vec::new();
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
                if let Some(first) = nets.first()
                    && (first.contains(&net.network()) || net.contains(&first.network()))
                {
                    errors.push(err(
                        field,
                        format!("{text:?} overlaps spec.subnet {:?}", spec.subnet),
                    ));
                }
                nets.push(net);
            }
        }
    }
    if nets.len() == 2 && nets[0].addr().is_ipv4() == nets[1].addr().is_ipv4() {
        errors.push(err(
            "spec.subnet6",
            "must be of the other address family than spec.subnet".to_owned(),
        ));
    }
    let isolation = validate_isolation(&spec.isolation, "spec.isolation", err)
        .map_err(|mut e| errors.append(&mut e))
        .ok();
    for (i, entry) in spec.isolation.allow_from.iter().enumerate() {
        if entry.tenant == spec.tenant {
            errors.push(err(
                &format!("spec.isolation.allowFrom[{i}].tenant"),
                format!(
                    "{:?} owns this network: its own networks need only list it in their peers",
                    entry.tenant
                ),
            ));
        }
    }
    if let Some(plugin) = &spec.plugin
        && let Err(m) = plugin_list(plugin)
    {
        errors.push(err("spec.plugin", m));
    }
    let limits = spec
        .limits
        .as_ref()
        .map(|l| validate_limits(l, err, &mut errors))
        .unwrap_or_default();
    match isolation {
        Some(isolation) if errors.is_empty() => Ok(LogicalNetwork {
            name: name.to_owned(),
            tenant: spec.tenant.clone(),
            physical_network: spec.physical_network.clone(),
            subnets: nets,
            plugin: spec.plugin.clone(),
            isolation,
            limits,
            identity: logical_identity(name),
            file,
        }),
        _ => Err(errors),
    }
}

/// The plugins of a delegate configuration, in ADD order: a network configuration list
/// (`{"plugins": [...]}`, as a primary network's conflist is embedded whole), a JSON list of
/// plugin objects (`LogicalNetwork.spec.plugin` as a chain), or one plugin object.
pub fn plugin_list(value: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    let plugins = match value {
        serde_json::Value::Array(items) => items.clone(),
        serde_json::Value::Object(object) => match object.get("plugins") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            Some(_) => return Err("`plugins` is not a list".to_owned()),
            None => vec![value.clone()],
        },
        _ => return Err("is neither a plugin object nor a list of them".to_owned()),
    };
    if plugins.is_empty() {
        return Err("its plugin list is empty".to_owned());
    }
    for (i, plugin) in plugins.iter().enumerate() {
        match plugin.get("type").and_then(serde_json::Value::as_str) {
            Some(t) if !t.is_empty() && t != "genie-cni" => {}
            Some("genie-cni") => {
                return Err(format!(
                    "plugin {i} is genie-cni itself; a delegate cannot be genie"
                ));
            }
            _ => return Err(format!("plugin {i} has no `type`")),
        }
    }
    Ok(plugins)
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
