//! The references a current spec makes (tenant, physical network, peers, `allowFrom`, the
//! owner's consent), checked against which objects exist whatever is accepted.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    super::{
        ConfigError, DEFAULT_NETWORK, ValidIsolation,
        check::Valid,
        rules::{missing_consent, rules_into, too_many_ranges},
        source::Kind,
    },
    Entry,
};

/// Which objects exist, for the references a current spec makes. These checks do not depend
/// on what else is accepted, so an object's verdict does not depend on the order of decision.
pub(super) struct References<'a> {
    tenants: BTreeSet<&'a str>,
    physical: BTreeSet<&'a str>,
    /// Every logical network named by a source, valid or not.
    logical_names: BTreeSet<&'a str>,
    /// Logical network → (owning tenant, isolation) as the owner currently declares it (else
    /// as its last valid version did).
    logical: BTreeMap<&'a str, (&'a str, &'a ValidIsolation)>,
}

impl<'a> References<'a> {
    pub(super) fn new(entries: &'a BTreeMap<(Kind, String), Entry<'a>>) -> Self {
        let mut out = Self {
            tenants: BTreeSet::new(),
            physical: BTreeSet::new(),
            logical_names: BTreeSet::new(),
            logical: BTreeMap::new(),
        };
        for ((kind, name), entry) in entries {
            match kind {
                Kind::Tenant => {
                    out.tenants.insert(name);
                }
                Kind::PhysicalNetwork => {
                    out.physical.insert(name);
                }
                Kind::LogicalNetwork => {
                    out.logical_names.insert(name);
                    if let Some(Valid::Logical(n)) = entry.candidate() {
                        out.logical.insert(name, (&n.tenant, &n.isolation));
                    }
                }
                Kind::Pod => {}
            }
        }
        out
    }

    /// Problems of the references `valid` makes.
    pub(super) fn check(
        &self,
        valid: &Valid,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let (tenant, network, isolation, prefix) = match valid {
            Valid::Physical(_) => return errors,
            Valid::Tenant(t) => (
                t.name.as_str(),
                DEFAULT_NETWORK,
                &t.default_isolation,
                "spec.defaultIsolation",
            ),
            Valid::Logical(n) => {
                if !self.tenants.contains(n.tenant.as_str()) {
                    errors.push(err(
                        "spec.tenant",
                        format!("tenant {:?} does not exist", n.tenant),
                    ));
                }
                if let Some(phys) = &n.physical_network
                    && !self.physical.contains(phys.as_str())
                {
                    errors.push(err(
                        "spec.physicalNetwork",
                        format!("physical network {phys:?} does not exist"),
                    ));
                }
                (
                    n.tenant.as_str(),
                    n.name.as_str(),
                    &n.isolation,
                    "spec.isolation",
                )
            }
        };
        for (i, peer) in isolation.peers.iter().enumerate() {
            let field = format!("{prefix}.peers[{i}].network");
            let Some((owner, owner_isolation)) = self.logical.get(peer.network.as_str()) else {
                // A network that exists but is refused makes the rule inert, not wrong.
                if !self.logical_names.contains(peer.network.as_str()) {
                    errors.push(err(
                        &field,
                        format!("logical network {:?} does not exist", peer.network),
                    ));
                }
                continue;
            };
            if let Some(m) = missing_consent(tenant, network, &peer.network, owner, owner_isolation)
            {
                errors.push(err(&field, m));
            } else if let Some(rules) = rules_into(tenant, network, peer, owner, owner_isolation)
                && let Some(n) = too_many_ranges(&rules)
            {
                errors.push(err(
                    &format!("{prefix}.peers[{i}].ports"),
                    format!(
                        "with what {:?} allows in, this peer rule needs {n} port ranges; at most {} per protocol",
                        peer.network,
                        genie_common::maps::MAX_PORT_RANGES
                    ),
                ));
            }
        }
        for (i, entry) in isolation.allow_from.iter().enumerate() {
            let field = format!("{prefix}.allowFrom[{i}]");
            if entry.tenant == tenant {
                continue;
            }
            if !self.tenants.contains(entry.tenant.as_str()) {
                errors.push(err(
                    &format!("{field}.tenant"),
                    format!("tenant {:?} does not exist", entry.tenant),
                ));
            }
            if let Some(other) = &entry.network
                && other != DEFAULT_NETWORK
                && self.logical.get(other.as_str()).map(|o| o.0) != Some(entry.tenant.as_str())
            {
                errors.push(err(
                    &format!("{field}.network"),
                    format!(
                        "tenant {:?} has no logical network {other:?} (name one of its networks, `default`, or leave it out for all)",
                        entry.tenant
                    ),
                ));
            }
        }
        errors
    }
}
