//! What `genie inspect` shows: the enforced state read from the pinned maps (so it works while
//! the agent is down), with ids resolved to names.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use genie_common::{
    identity::reserved_name,
    maps::{IdentityInfo, IpAddr16, NAME_LEN, identity_flags},
    policy::proto,
};
use serde::Serialize;

use crate::{
    dataplane::AttachSide,
    dataplane::{DataplaneError, PinnedMaps, read_counters},
    endpoint::Registry,
    reconcile::DesiredState,
};

/// An address from the maps' 16-byte form.
pub fn ip_from16(addr: IpAddr16) -> IpAddr {
    if addr.is_v4() {
        IpAddr::V4(Ipv4Addr::new(
            addr.addr[12],
            addr.addr[13],
            addr.addr[14],
            addr.addr[15],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr.addr))
    }
}

/// A tenant or network name from the maps' NUL-padded form.
pub fn name(bytes: &[u8; NAME_LEN]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A MAC from the maps' form; `None` for the zero MAC (not pinned).
pub fn mac_text(mac: [u8; 6]) -> Option<String> {
    (mac != [0; 6]).then(|| mac.map(|b| format!("{b:02x}")).join(":"))
}

/// Identity → "tenant/network" (or the reserved class name).
#[derive(Debug)]
pub struct IdentityNames(pub BTreeMap<u32, IdentityInfo>);

impl IdentityNames {
    pub fn read(maps: &PinnedMaps) -> Result<Self, DataplaneError> {
        Ok(Self(maps.read_state()?.identities))
    }

    /// (tenant, network) of an identity.
    pub fn parts(&self, identity: u32) -> (String, String) {
        if let Some(reserved) = reserved_name(identity) {
            return (String::new(), reserved.to_owned());
        }
        match self.0.get(&identity) {
            Some(info) => {
                let tenant = name(&info.tenant);
                (
                    if tenant.is_empty() {
                        "<none>".to_owned()
                    } else {
                        tenant
                    },
                    name(&info.network),
                )
            }
            None => (String::new(), format!("identity-{identity}")),
        }
    }

    /// "tenant/network".
    pub fn label(&self, identity: u32) -> String {
        match self.parts(identity) {
            (t, n) if t.is_empty() => n,
            (t, n) => format!("{t}/{n}"),
        }
    }
}

/// One enforced endpoint.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    pub id: u32,
    pub namespace: String,
    pub pod: String,
    pub interface: String,
    pub host_interface: String,
    pub ifindex: u32,
    /// `host` (host side of a veth) or `inPod` (the pod's own interface).
    pub side: String,
    pub tenant: String,
    pub network: String,
    pub identity: u32,
    pub mac: String,
    pub addresses: Vec<IpAddr>,
}

/// The endpoints enforced on the node: every record in the endpoint map, named from the
/// registry when it knows the endpoint.
pub fn endpoints(bpffs: &Path, state_dir: &Path) -> Result<Vec<EndpointRow>, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    let state = maps.read_state()?;
    let names = IdentityNames(state.identities.clone());
    let registry = Registry::load(state_dir).unwrap_or_default();
    let mut rows: Vec<EndpointRow> = state
        .endpoints
        .iter()
        .map(|(ifindex, info)| {
            let registered = registry.get(info.endpoint_id);
            let (tenant, network) = names.parts(info.identity);
            let mut addresses: Vec<IpAddr> = state
                .addrs
                .iter()
                .filter(|(_, a)| a.endpoint_id == info.endpoint_id)
                .map(|(k, _)| ip_from16(*k))
                .collect();
            addresses.sort();
            EndpointRow {
                id: info.endpoint_id,
                namespace: registered
                    .map(|e| e.request.namespace.clone())
                    .unwrap_or_default(),
                pod: registered
                    .map(|e| e.request.pod.clone())
                    .unwrap_or_default(),
                interface: registered
                    .map(|e| e.request.interface.clone())
                    .unwrap_or_default(),
                host_interface: registered
                    .map(|e| e.request.host_interface.clone())
                    .unwrap_or_default(),
                ifindex: registered.map_or(*ifindex, |e| e.ifindex),
                side: match registered.map(|e| e.request.side) {
                    Some(AttachSide::InPod) => "inPod",
                    _ => "host",
                }
                .to_owned(),
                tenant,
                network,
                identity: info.identity,
                mac: mac_text(info.mac).unwrap_or_else(|| "-".to_owned()),
                addresses,
            }
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// One identity and its isolation flags.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRow {
    pub identity: u32,
    pub tenant: String,
    pub network: String,
    pub allow_host_access: bool,
    pub allow_external: bool,
    pub allow_external_ingress: bool,
}

/// One allow rule of the policy matrix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleRow {
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub ports: String,
}

/// Classified address ranges (node addresses, subnets).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CidrRow {
    pub cidr: String,
    pub identity: String,
}

/// The enforced policy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub policy_epoch: u32,
    pub identities: Vec<IdentityRow>,
    pub rules: Vec<RuleRow>,
    pub cidrs: Vec<CidrRow>,
}

/// A protocol number's name.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        0 => "any".to_owned(),
        proto::TCP => "TCP".to_owned(),
        proto::UDP => "UDP".to_owned(),
        proto::SCTP => "SCTP".to_owned(),
        proto::ICMP => "ICMP".to_owned(),
        proto::ICMPV6 => "ICMPv6".to_owned(),
        other => other.to_string(),
    }
}

/// Reads the policy matrix, identities and CIDRs from the pins.
pub fn policy(bpffs: &Path) -> Result<PolicyView, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    policy_view(&maps, &maps.read_state()?)
}

fn policy_view(maps: &PinnedMaps, state: &DesiredState) -> Result<PolicyView, DataplaneError> {
    let names = IdentityNames(state.identities.clone());
    let identities = state
        .identities
        .iter()
        .map(|(id, info)| {
            let (tenant, network) = names.parts(*id);
            IdentityRow {
                identity: *id,
                tenant,
                network,
                allow_host_access: info.flags & identity_flags::ALLOW_HOST != 0,
                allow_external: info.flags & identity_flags::ALLOW_EXTERNAL != 0,
                allow_external_ingress: info.flags & identity_flags::ALLOW_EXTERNAL_INGRESS != 0,
            }
        })
        .collect();
    let rules = state
        .policy
        .iter()
        .map(|(key, value)| RuleRow {
            from: names.label(key.src_identity),
            to: names.label(key.dst_identity),
            protocol: protocol_name(key.protocol),
            ports: if value.count == 0 {
                "all".to_owned()
            } else {
                value.ranges[..value.count as usize]
                    .iter()
                    .map(|r| {
                        if r.first == r.last {
                            r.first.to_string()
                        } else {
                            format!("{}-{}", r.first, r.last)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            },
        })
        .collect();
    let cidrs = state
        .cidrs
        .iter()
        .map(|((prefix, addr), info)| {
            let ip = ip_from16(*addr);
            let len = if ip.is_ipv4() { prefix - 96 } else { *prefix };
            CidrRow {
                cidr: format!("{ip}/{len}"),
                identity: names.label(info.identity),
            }
        })
        .collect();
    Ok(PolicyView {
        policy_epoch: maps.epoch()?,
        identities,
        rules,
        cidrs,
    })
}

/// One counter with names.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CounterRowView {
    pub endpoint: u32,
    pub tenant: String,
    pub network: String,
    pub direction: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters with identity names.
pub fn counters(bpffs: &Path) -> Result<Vec<CounterRowView>, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    let names = IdentityNames::read(&maps)?;
    Ok(read_counters(bpffs)?
        .into_iter()
        .map(|row| {
            let (tenant, network) = names.parts(row.identity);
            CounterRowView {
                endpoint: row.endpoint_id,
                tenant,
                network,
                direction: row.direction.name().to_owned(),
                reason: row.reason.name().to_owned(),
                packets: row.value.packets,
                bytes: row.value.bytes,
            }
        })
        .collect())
}

/// One rate-limit bucket with its owner named.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitRow {
    /// `endpoint` (its own bucket) or `network` (shared by the network's endpoints).
    pub scope: String,
    /// The endpoint (`namespace/pod interface`, or its id) or the network (`tenant/network`).
    pub owner: String,
    /// `bandwidth` or `qps`.
    pub kind: String,
    pub direction: String,
    /// Bits per second (bandwidth) or new flows per second (QPS).
    pub rate: u64,
    /// Bits (bandwidth) or flows (QPS) passed at once after idling.
    pub burst: u64,
}

/// The rate-limit buckets, from the pins.
pub fn limits(bpffs: &Path, state_dir: &Path) -> Result<Vec<LimitRow>, DataplaneError> {
    use genie_common::ratelimit::kind;
    let maps = PinnedMaps::open(bpffs)?;
    let state = maps.read_state()?;
    let names = IdentityNames(state.identities.clone());
    let registry = Registry::load(state_dir).unwrap_or_default();
    Ok(state
        .buckets
        .iter()
        .map(|(key, config)| {
            let (per_second, burst) = (config.rate, config.burst);
            let bytes = key.kind == kind::BYTES;
            let owner = if key.network_scope != 0 {
                names.label(key.owner)
            } else {
                registry.get(key.owner).map_or_else(
                    || format!("endpoint {}", key.owner),
                    |e| {
                        format!(
                            "{}/{} {}",
                            e.request.namespace, e.request.pod, e.request.interface
                        )
                    },
                )
            };
            LimitRow {
                scope: if key.network_scope != 0 {
                    "network"
                } else {
                    "endpoint"
                }
                .to_owned(),
                owner,
                kind: if bytes { "bandwidth" } else { "qps" }.to_owned(),
                direction: genie_common::Direction::from_u8(key.direction)
                    .map_or("?", |d| d.name())
                    .to_owned(),
                rate: if bytes { per_second * 8 } else { per_second },
                burst: if bytes { burst * 8 } else { burst },
            }
        })
        .collect())
}

/// One tracked flow.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackRow {
    pub protocol: String,
    /// The side that opened the flow, `address:port`.
    pub from: String,
    pub to: String,
    /// Seconds since the flow was last seen (refreshed at most once a second).
    pub idle_seconds: u64,
    pub closing: bool,
    /// The connection-tracking zone (tenant table) the flow is tracked in.
    pub zone: u32,
}

/// Tracked flows, from the pins; at most `limit` of them.
pub fn conntrack(bpffs: &Path, limit: usize) -> Result<Vec<ConntrackRow>, DataplaneError> {
    use genie_common::maps::ct_flags;
    let maps = PinnedMaps::open(bpffs)?;
    // The programs stamp flows with CLOCK_MONOTONIC (bpf_ktime_get_coarse_ns).
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let mut rows = Vec::new();
    for (zone, key, value) in maps.zones().flows(limit)? {
        let lo = format!("{}:{}", ip_from16(key.addr_lo), key.port_lo);
        let hi = format!("{}:{}", ip_from16(key.addr_hi), key.port_hi);
        let (from, to) = if value.flags & ct_flags::OPENED_BY_LO != 0 {
            (lo, hi)
        } else {
            (hi, lo)
        };
        rows.push(ConntrackRow {
            zone,
            protocol: protocol_name(key.protocol),
            from,
            to,
            idle_seconds: now.saturating_sub(value.last_seen_ns) / 1_000_000_000,
            closing: value.flags & ct_flags::CLOSING != 0,
        });
    }
    rows.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    Ok(rows)
}

mod networks;

pub use networks::{NetworkRow, StatsRow, networks, stats, stats_rows};
