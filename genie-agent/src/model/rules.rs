//! Port rules between networks: the owner's consent across tenants and the intersection of
//! what both sides allow (DESIGN.md §3).

use genie_common::{maps::MAX_PORT_RANGES, policy::proto};

use super::{Model, ValidIsolation, ValidPeer, ValidPortRule};

/// Why `src_tenant`'s network `src_network` may not list `peer` (owned by `owner_tenant` with
/// `owner`'s isolation) in its peers: across tenants the owner must consent in its
/// `allowFrom`. `None` when it may.
pub fn missing_consent(
    src_tenant: &str,
    src_network: &str,
    peer: &str,
    owner_tenant: &str,
    owner: &ValidIsolation,
) -> Option<String> {
    if owner_tenant == src_tenant {
        return None;
    }
    let consents = owner
        .allow_from
        .iter()
        .any(|a| a.tenant == src_tenant && a.network.as_deref().is_none_or(|n| n == src_network));
    (!consents).then(|| {
        format!(
            "logical network {peer:?} belongs to tenant {owner_tenant:?}, which has not allowed this network in: its owner must add {{tenant: {src_tenant}, network: {src_network}}} to its spec.isolation.allowFrom"
        )
    })
}

/// The rules under which `src_tenant`'s network `src_network` may open flows to `peer`
/// (owned by `owner_tenant` with `owner`'s isolation): the peer's own within one tenant;
/// across tenants what both the peer rule and the owner's `allowFrom` allow. `None` when
/// nothing is allowed.
pub fn rules_into(
    src_tenant: &str,
    src_network: &str,
    peer: &ValidPeer,
    owner_tenant: &str,
    owner: &ValidIsolation,
) -> Option<Vec<ValidPortRule>> {
    if owner_tenant == src_tenant {
        return Some(peer.rules.clone());
    }
    owner
        .allow_from
        .iter()
        .filter(|a| a.tenant == src_tenant && a.network.as_deref().is_none_or(|n| n == src_network))
        .find_map(|a| intersect_rules(&peer.rules, &a.rules))
}

/// The protocols whose rules need more port ranges than the policy map holds, with the count.
pub fn too_many_ranges(rules: &[ValidPortRule]) -> Option<usize> {
    [proto::TCP, proto::UDP, proto::SCTP]
        .into_iter()
        .map(|p| rules.iter().filter(|r| r.protocol == p).count())
        .find(|n| *n > MAX_PORT_RANGES)
}

impl Model {
    /// [`rules_into`] for the networks in force.
    pub fn peer_rules(
        &self,
        src_tenant: &str,
        src_network: &str,
        peer: &ValidPeer,
    ) -> Option<Vec<ValidPortRule>> {
        let target = self.logical.get(&peer.network)?;
        rules_into(
            src_tenant,
            src_network,
            peer,
            &target.tenant,
            &target.isolation,
        )
    }
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
