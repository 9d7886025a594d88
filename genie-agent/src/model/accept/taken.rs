//! What the objects decided so far hold (namespaces, subnets, identities, dedicated physical
//! networks), and the conflicts and missing dependencies of a candidate against it.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::super::{ConfigError, LogicalNetwork, PhysicalNetwork, Tenant, check::Valid};

/// What the objects decided so far hold.
#[derive(Default)]
pub(super) struct Taken {
    pub(super) physical: BTreeMap<String, (PhysicalNetwork, bool)>,
    pub(super) tenants: BTreeMap<String, (Tenant, bool)>,
    pub(super) logical: BTreeMap<String, LogicalNetwork>,
    pub(super) namespaces: BTreeMap<String, String>,
    pub(super) identities: BTreeMap<u32, String>,
    pub(super) subnets: Vec<(IpNet, String)>,
}

impl Taken {
    /// What `valid` would conflict with; the object's own name never conflicts.
    pub(super) fn conflicts(
        &self,
        valid: &Valid,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let identity = |identity: u32, me: String| {
            self.identities.get(&identity).filter(|o| **o != me).map(|other| {
                err(
                    "metadata.name",
                    format!("its identity {identity} collides with {other}, which is older; rename this one"),
                )
            })
        };
        match valid {
            Valid::Physical(_) => {}
            Valid::Tenant(t) => {
                errors.extend(identity(t.default_identity, tenant_label(&t.name)));
                for (i, ns) in t.namespaces.iter().enumerate() {
                    if let Some(other) = self.namespaces.get(ns).filter(|o| **o != t.name) {
                        errors.push(err(
                            &format!("spec.namespaces[{i}]"),
                            format!("namespace {ns:?} is already owned by tenant {other:?}"),
                        ));
                    }
                }
            }
            Valid::Logical(n) => {
                errors.extend(identity(n.identity, logical_label(&n.name)));
                for (net, field) in n.subnets.iter().zip(["spec.subnet", "spec.subnet6"]) {
                    if let Some((_, other)) = self.subnets.iter().find(|(o, owner)| {
                        *owner != n.name
                            && (o.contains(&net.network()) || net.contains(&o.network()))
                    }) {
                        errors.push(err(
                            field,
                            format!(
                                "{:?} overlaps the subnet of logical network {other:?}",
                                net.to_string()
                            ),
                        ));
                    }
                }
                if let Some(phys) = &n.physical_network
                    && self
                        .physical
                        .get(phys)
                        .is_some_and(|(p, _)| p.spec.dedicated)
                    && let Some(user) = self.logical.values().find(|o| {
                        o.name != n.name
                            && o.physical_network.as_ref() == Some(phys)
                            && o.tenant != n.tenant
                    })
                {
                    errors.push(err(
                        "spec.physicalNetwork",
                        format!(
                            "physical network {phys:?} is dedicated and tenant {:?} already uses it (logical network {:?})",
                            user.tenant, user.name
                        ),
                    ));
                }
            }
        }
        errors
    }

    /// What `valid` needs in force: a network's tenant and physical network. `current` says
    /// the candidate is a change, which waits while what it needs is refused (it may rely on
    /// that object's new version).
    pub(super) fn missing(
        &self,
        valid: &Valid,
        change: bool,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Vec<ConfigError> {
        let Valid::Logical(n) = valid else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        match self.tenants.get(&n.tenant) {
            None => errors.push(err(
                "spec.tenant",
                format!("tenant {:?} is not in force", n.tenant),
            )),
            Some((_, false)) if change => errors.push(err(
                "spec.tenant",
                format!(
                    "tenant {:?} is refused; this change waits until it is fixed",
                    n.tenant
                ),
            )),
            Some(_) => {}
        }
        if let Some(phys) = &n.physical_network {
            match self.physical.get(phys) {
                None => errors.push(err(
                    "spec.physicalNetwork",
                    format!("physical network {phys:?} is not in force"),
                )),
                Some((_, false)) if change => errors.push(err(
                    "spec.physicalNetwork",
                    format!(
                        "physical network {phys:?} is refused; this change waits until it is fixed"
                    ),
                )),
                Some(_) => {}
            }
        }
        errors
    }

    pub(super) fn take(&mut self, valid: &Valid, current: bool) {
        match valid {
            Valid::Physical(p) => {
                self.physical.insert(p.name.clone(), (p.clone(), current));
            }
            Valid::Tenant(t) => {
                self.identities
                    .insert(t.default_identity, tenant_label(&t.name));
                for ns in &t.namespaces {
                    self.namespaces.insert(ns.clone(), t.name.clone());
                }
                self.tenants.insert(t.name.clone(), (t.clone(), current));
            }
            Valid::Logical(n) => {
                self.identities.insert(n.identity, logical_label(&n.name));
                for net in &n.subnets {
                    self.subnets.push((*net, n.name.clone()));
                }
                self.logical.insert(n.name.clone(), n.clone());
            }
        }
    }

    pub(super) fn release(&mut self, valid: &Valid) {
        match valid {
            Valid::Physical(p) => {
                self.physical.remove(&p.name);
            }
            Valid::Tenant(t) => {
                self.identities.remove(&t.default_identity);
                self.namespaces.retain(|_, owner| *owner != t.name);
                self.tenants.remove(&t.name);
            }
            Valid::Logical(n) => {
                self.identities.remove(&n.identity);
                self.subnets.retain(|(_, owner)| *owner != n.name);
                self.logical.remove(&n.name);
            }
        }
    }
}

fn tenant_label(name: &str) -> String {
    format!("the default network of tenant {name:?}")
}

fn logical_label(name: &str) -> String {
    format!("logical network {name:?}")
}
