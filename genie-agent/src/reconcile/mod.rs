//! Reconcile: from the validated model, the registered endpoints and what the node looks like
//! to the exact contents every map should have. Pure: no I/O, so it is tested without a kernel
//! and the dataplane writes only the difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use genie_common::{
    Direction, EndpointInfo,
    identity::{BROADCAST, DNS, HOST},
    maps::{
        AddrInfo, CidrInfo, DEFAULT_ZONE_CONNECTIONS, IdentityInfo, IpAddr16, MAX_CT_ZONES,
        MAX_PORT_RANGES, NAME_LEN, PolicyKey, PolicyValue, PortRange, UNOWNED_CT_ZONE,
        endpoint_flags, identity_flags,
    },
    policy::proto,
    ratelimit::{BucketConfig, BucketKey, kind, limit_flags},
};
use ipnet::IpNet;

use crate::{
    dataplane::AttachSide,
    endpoint::Endpoint,
    model::{DEFAULT_NETWORK, Model, ValidIsolation, ValidPortRule, unowned_default_identity},
};

/// What the node contributes: its own addresses (HOST) and the cluster DNS service addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Addresses of this node and of every other node (each becomes a /32 or /128 HOST entry).
    pub host_addresses: Vec<IpAddr>,
    /// This node's own addresses with their prefixes: the network and broadcast addresses of
    /// its IPv4 prefixes are directed broadcasts.
    pub host_prefixes: Vec<IpNet>,
    /// Further CIDRs that count as HOST.
    pub host_cidrs: Vec<IpNet>,
    /// Cluster DNS service addresses.
    pub dns_addresses: Vec<IpAddr>,
    /// Pods on other nodes (Kubernetes source): their addresses get their identity, so
    /// traffic between nodes follows the same rules.
    pub remote_endpoints: Vec<RemoteEndpoint>,
}

/// An address of a pod interface on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub ip: IpAddr,
    /// The pod's namespace (its tenant).
    pub namespace: String,
    /// The logical network, or `default`.
    pub network: String,
    /// The pod CIDRs of the node that published it (empty: the cluster assigns none).
    pub pod_cidrs: Vec<IpNet>,
}

/// What the maps should hold: the dataplane's own type, computed here.
pub type DesiredState = crate::dataplane::MapContents;

/// Connection-tracking zones by tenant name (`""`: the namespaces of no tenant).
pub type ZoneAssignment = BTreeMap<String, u32>;

/// Gives every tenant with an endpoint on this node a zone: the one it had in `previous`
/// (zones must not move while flows are tracked in them), otherwise the lowest free one.
/// Namespaces of no tenant have zone 0. Only tenants with endpoints here need a table, so a
/// node runs out of zones only with more than `MAX_CT_ZONES - 1` tenants' pods on it; those
/// beyond share the last zone (the agent logs it).
pub fn assign_zones(
    model: &Model,
    endpoints: &[Endpoint],
    previous: &ZoneAssignment,
) -> ZoneAssignment {
    let local: BTreeSet<&str> = endpoints
        .iter()
        .filter_map(|ep| endpoint_tenant(model, ep))
        .collect();
    let mut out = ZoneAssignment::new();
    out.insert(String::new(), UNOWNED_CT_ZONE);
    for tenant in &local {
        if let Some(zone) = previous.get(*tenant).filter(|z| **z != UNOWNED_CT_ZONE) {
            out.insert((*tenant).to_owned(), *zone);
        }
    }
    // A zone given up in this pass is not handed out in it: its table, with the flows of the
    // tenant that left, is deleted first.
    let mut used: BTreeSet<u32> = out.values().chain(previous.values()).copied().collect();
    let mut next = 1;
    for tenant in local {
        if out.contains_key(tenant) {
            continue;
        }
        while used.contains(&next) && next < MAX_CT_ZONES - 1 {
            next += 1;
        }
        used.insert(next);
        out.insert(tenant.to_owned(), next);
    }
    out
}

/// The tenant an endpoint belongs to: its namespace's, or for an endpoint recovered from the
/// maps, its identity's. `None` for namespaces of no tenant.
fn endpoint_tenant<'m>(model: &'m Model, ep: &Endpoint) -> Option<&'m str> {
    match ep.recovered {
        Some(recovered) => model
            .logical
            .values()
            .find(|n| n.identity == recovered.identity)
            .map(|n| n.tenant.as_str())
            .or_else(|| {
                model
                    .tenants
                    .values()
                    .find(|t| t.default_identity == recovered.identity)
                    .map(|t| t.name.as_str())
            }),
        None => model
            .namespace_tenant
            .get(&ep.request.namespace)
            .map(String::as_str),
    }
}

/// An address in the maps' 16-byte form.
pub fn addr16(ip: IpAddr) -> IpAddr16 {
    match ip {
        IpAddr::V4(v4) => IpAddr16::from_v4(v4.octets()),
        IpAddr::V6(v6) => IpAddr16::from_v6(v6.octets()),
    }
}

/// A CIDR as an LPM key (IPv4 prefixes are offset by the 96 bits of the mapped prefix).
pub fn cidr_key(net: IpNet) -> (u32, IpAddr16) {
    let net = net.trunc();
    match net {
        IpNet::V4(v4) => (
            96 + u32::from(v4.prefix_len()),
            addr16(IpAddr::V4(v4.network())),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), addr16(IpAddr::V6(v6.network()))),
    }
}

fn name_bytes(name: &str) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let len = name.len().min(NAME_LEN - 1);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

fn isolation_flags(isolation: &ValidIsolation) -> u32 {
    let mut flags = 0;
    if isolation.allow_host_access {
        flags |= identity_flags::ALLOW_HOST;
    }
    if isolation.allow_external {
        flags |= identity_flags::ALLOW_EXTERNAL;
    }
    if isolation.allow_external_ingress {
        flags |= identity_flags::ALLOW_EXTERNAL_INGRESS;
    }
    flags
}

/// Adds the rules of one (src, dst) pair to the policy matrix. Rules without ports become a
/// protocol entry with `count == 0` (every port); an empty rule list allows every protocol
/// (protocol 0). Validation guarantees at most `MAX_PORT_RANGES` ranges per protocol.
fn add_rules(
    policy: &mut BTreeMap<PolicyKey, PolicyValue>,
    src: u32,
    dst: u32,
    rules: &[ValidPortRule],
) {
    let key = |protocol: u8| PolicyKey {
        src_identity: src,
        dst_identity: dst,
        protocol,
        _pad: [0; 3],
    };
    if rules.is_empty() {
        policy.insert(key(0), PolicyValue::default());
        return;
    }
    // An ICMP rule covers ICMPv6 too: operators write one rule for ping on both families.
    let protocols: BTreeSet<u8> = rules
        .iter()
        .flat_map(|r| match r.protocol {
            proto::ICMP => vec![proto::ICMP, proto::ICMPV6],
            p => vec![p],
        })
        .collect();
    for protocol in protocols {
        let mut all_ports = false;
        let mut ranges = Vec::new();
        let rule_protocol = if protocol == proto::ICMPV6 {
            proto::ICMP
        } else {
            protocol
        };
        for rule in rules.iter().filter(|r| r.protocol == rule_protocol) {
            match rule.ports {
                None => all_ports = true,
                Some((first, last)) => ranges.push(PortRange { first, last }),
            }
        }
        ranges.sort();
        ranges.dedup();
        let mut value = PolicyValue::default();
        if !all_ports {
            let n = ranges.len().min(MAX_PORT_RANGES);
            value.count = n as u32;
            value.ranges[..n].copy_from_slice(&ranges[..n]);
        }
        policy.insert(key(protocol), value);
    }
}

/// Computes the desired map contents. Endpoints whose network or tenant no longer allows them
/// are left out: their interfaces then drop everything (fail closed).
pub fn desired_state(
    model: &Model,
    endpoints: &[Endpoint],
    node: &NodeInfo,
    zones: &ZoneAssignment,
) -> DesiredState {
    let mut state = DesiredState::default();
    let zone_of = |tenant: &str| zones.get(tenant).copied().unwrap_or(UNOWNED_CT_ZONE);

    // Identities: every logical network, every tenant's default network, the unowned default.
    // (identity, tenant, network name, isolation) of every source of flows.
    let mut sources: Vec<(u32, &str, &str, &ValidIsolation)> = Vec::new();
    for net in model.logical.values() {
        state.identities.insert(
            net.identity,
            IdentityInfo {
                flags: isolation_flags(&net.isolation),
                ct_zone: zone_of(&net.tenant),
                tenant: name_bytes(&net.tenant),
                network: name_bytes(&net.name),
            },
        );
        sources.push((net.identity, &net.tenant, &net.name, &net.isolation));
        for subnet in &net.subnets {
            let (prefix, addr) = cidr_key(*subnet);
            state.cidrs.insert(
                (prefix, addr),
                CidrInfo {
                    identity: net.identity,
                },
            );
        }
    }
    for tenant in model.tenants.values() {
        state.identities.insert(
            tenant.default_identity,
            IdentityInfo {
                flags: isolation_flags(&tenant.default_isolation),
                ct_zone: zone_of(&tenant.name),
                tenant: name_bytes(&tenant.name),
                network: name_bytes(DEFAULT_NETWORK),
            },
        );
        sources.push((
            tenant.default_identity,
            &tenant.name,
            DEFAULT_NETWORK,
            &tenant.default_isolation,
        ));
    }
    let unowned_isolation = ValidIsolation {
        allow_host_access: false,
        allow_host_ports: Vec::new(),
        allow_external: true,
        allow_external_ingress: false,
        peers: Vec::new(),
        allow_from: Vec::new(),
    };
    state.identities.insert(
        unowned_default_identity(),
        IdentityInfo {
            flags: isolation_flags(&unowned_isolation),
            ct_zone: UNOWNED_CT_ZONE,
            tenant: name_bytes(""),
            network: name_bytes(DEFAULT_NETWORK),
        },
    );

    // Policy: peers one way (across tenants only where the owner consents, on the ports both
    // allow), and host ports towards HOST.
    for (identity, tenant, network, isolation) in &sources {
        for peer in &isolation.peers {
            if let (Some(dst), Some(rules)) = (
                model.logical.get(&peer.network),
                model.peer_rules(tenant, network, peer),
            ) {
                add_rules(&mut state.policy, *identity, dst.identity, &rules);
            }
        }
        if !isolation.allow_host_ports.is_empty() {
            add_rules(
                &mut state.policy,
                *identity,
                HOST,
                &isolation.allow_host_ports,
            );
        }
    }

    // Node addresses are HOST; exact host addresses beat the subnet they sit in.
    for ip in &node.host_addresses {
        let net = IpNet::from(*ip);
        state
            .cidrs
            .insert(cidr_key(net), CidrInfo { identity: HOST });
    }
    for net in &node.host_cidrs {
        state
            .cidrs
            .insert(cidr_key(*net), CidrInfo { identity: HOST });
    }
    for ip in &node.dns_addresses {
        state.addrs.insert(
            addr16(*ip),
            AddrInfo {
                identity: DNS,
                endpoint_id: 0,
            },
        );
    }

    // Endpoints that still have a valid identity, each with its tenant's conntrack zone.
    let capacity = |zone: u32| {
        model
            .tenants
            .values()
            .find(|t| zone_of(&t.name) == zone && zone != UNOWNED_CT_ZONE)
            .and_then(|t| t.quota_connections)
            .unwrap_or(DEFAULT_ZONE_CONNECTIONS)
    };
    for ep in endpoints {
        let identity = match ep.recovered {
            // Enforced as it was found, while its identity still exists.
            Some(recovered) if state.identities.contains_key(&recovered.identity) => {
                recovered.identity
            }
            Some(_) => continue,
            None => match model.identity_for(&ep.request.namespace, &ep.request.network) {
                Ok(identity) => identity,
                Err(_) => continue,
            },
        };
        let ct_zone = state.identities[&identity].ct_zone;
        state
            .ct_zones
            .entry(ct_zone)
            .or_insert_with(|| capacity(ct_zone));
        let limits = endpoint_buckets(model, ep, identity, &mut state.buckets);
        let mut flags = 0;
        if ep.request.side == AttachSide::Host && ep.bridge.is_none() {
            flags |= endpoint_flags::GROUP_TO_HOST;
        }
        state.endpoints.insert(
            ep.map_key(),
            EndpointInfo {
                endpoint_id: ep.id,
                identity,
                mac: ep.mac_bytes(),
                limits,
                flags,
                ct_zone,
            },
        );
        let link_local = ep.link_local.iter().map(|a| IpAddr::V6(*a));
        for ip in ep.request.ips.iter().copied().chain(link_local) {
            state.addrs.insert(
                addr16(ip),
                AddrInfo {
                    identity,
                    endpoint_id: ep.id,
                },
            );
        }
    }
    // IPv4 directed broadcasts (RFC 919, RFC 922): the network and broadcast addresses of
    // every logical subnet and of the node's own prefixes. Traffic to them is broadcast.
    let v4_prefixes = model
        .logical
        .values()
        .flat_map(|n| n.subnets.iter())
        .chain(&node.host_prefixes)
        .filter_map(|net| match net {
            IpNet::V4(v4) if v4.prefix_len() <= 30 => Some(*v4),
            _ => None,
        });
    for net in v4_prefixes {
        for ip in [net.network(), net.broadcast()] {
            state
                .addrs
                .entry(addr16(IpAddr::V4(ip)))
                .or_insert(AddrInfo {
                    identity: BROADCAST,
                    endpoint_id: 0,
                });
        }
    }
    // Remote endpoints never displace a local one (anti-spoofing keys on it), and only an
    // address their network can have becomes their identity.
    for remote in &node.remote_endpoints {
        let Ok(identity) = model.identity_for(&remote.namespace, &remote.network) else {
            continue;
        };
        if !remote_address_plausible(model, node, remote) {
            continue;
        }
        state.addrs.entry(addr16(remote.ip)).or_insert(AddrInfo {
            identity,
            endpoint_id: 0,
        });
    }
    state
}

/// Whether a remote endpoint's address can be what it claims: never a node address, a HOST
/// range or a cluster DNS address (an exact entry would win over HOST); inside its logical
/// network's subnets; for the default network, inside the publishing node's pod CIDRs (when
/// the cluster assigns them) and outside every logical network.
fn remote_address_plausible(model: &Model, node: &NodeInfo, remote: &RemoteEndpoint) -> bool {
    let ip = remote.ip;
    if node.host_addresses.contains(&ip)
        || node.host_cidrs.iter().any(|c| c.contains(&ip))
        || node.dns_addresses.contains(&ip)
    {
        return false;
    }
    let in_logical =
        |net: &crate::model::LogicalNetwork| net.subnets.iter().any(|s| s.contains(&ip));
    if remote.network == DEFAULT_NETWORK {
        !model.logical.values().any(in_logical)
            && (remote.pod_cidrs.is_empty() || remote.pod_cidrs.iter().any(|c| c.contains(&ip)))
    } else {
        model.logical.get(&remote.network).is_some_and(in_logical)
    }
}

#[cfg(test)]
mod tests;

/// An endpoint's rate-limit buckets (README, "Limits"): its own bandwidth (from the pod's
/// annotations or the runtime) takes precedence over its network's; QPS comes from the
/// network. Network-scoped buckets are keyed by the network's identity, so the network's
/// endpoints on this node share them. Returns the endpoint's `limits` flags.
fn endpoint_buckets(
    model: &Model,
    ep: &Endpoint,
    identity: u32,
    buckets: &mut BTreeMap<BucketKey, BucketConfig>,
) -> u8 {
    let network = model
        .logical
        .get(&ep.request.network)
        .map(|n| n.limits)
        .unwrap_or_default();
    let own = ep.request.bandwidth.unwrap_or_default();
    let mut wanted: Vec<(u8, Direction, bool, BucketConfig)> = Vec::new();
    for (direction, own_rate, own_burst, network_rate) in [
        (
            Direction::Egress,
            own.egress_rate,
            own.egress_burst,
            network.egress_bps,
        ),
        (
            Direction::Ingress,
            own.ingress_rate,
            own.ingress_burst,
            network.ingress_bps,
        ),
    ] {
        if let Some(rate) = own_rate {
            let config = BucketConfig::bandwidth(rate, own_burst.unwrap_or(0));
            wanted.push((kind::BYTES, direction, false, config));
        } else if let Some(rate) = network_rate {
            let config = BucketConfig::bandwidth(rate, network.burst_bits.unwrap_or(0));
            wanted.push((kind::BYTES, direction, network.shared, config));
        }
    }
    for (direction, qps) in [
        (Direction::Egress, network.egress_qps),
        (Direction::Ingress, network.ingress_qps),
    ] {
        if let Some(qps) = qps {
            wanted.push((
                kind::FLOWS,
                direction,
                network.shared,
                BucketConfig::qps(qps, 0),
            ));
        }
    }
    let mut flags = 0;
    for (kind, direction, shared, config) in wanted {
        flags |= limit_flags::of(kind, direction as u8);
        if shared {
            flags |= limit_flags::shared(kind, direction as u8);
        }
        let key = BucketKey::for_endpoint(ep.id, identity, flags, kind, direction as u8);
        buckets.insert(key, config);
    }
    flags
}
