//! Per-object acceptance: each object is decided on its own, so one tenant's mistake never
//! holds up another tenant's change.
//!
//! An object's current spec is *accepted* when it passes its own checks ([`check`]), names
//! only objects that exist (peers, tenant, physical network, consent across tenants), does
//! not conflict with an object that is older or already in force (namespaces, subnets,
//! identities, dedicated physical networks) and, when it is a change, its tenant and physical
//! network are in force at their current versions. What is *enforced* is the accepted spec,
//! else the object's last valid version, else nothing:
//!
//! - the last valid versions (and unchanged objects) are placed first, oldest first, so an
//!   object in force is never displaced by a newcomer or by another object's change;
//! - changes come next, oldest first; a change may not take what another change's last valid
//!   version still holds (a subnet being vacated), and [`accept`] repeats the decision until
//!   nothing moves, so such a change goes in once the other one has moved out;
//! - a file that cannot be read whole (broken YAML, a document without kind or name) keeps
//!   the objects last seen in it at their last valid versions: absence proves no deletion.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use ipnet::IpNet;

use super::{
    ConfigError, DEFAULT_NETWORK, LogicalNetwork, Model, PhysicalNetwork, PodManifest, Tenant,
    ValidIsolation,
    check::{Valid, check},
    objects::ObjectMeta,
    rules::{missing_consent, rules_into, too_many_ranges},
    source::{Kind, Origin, SourceObject},
    unowned_default_identity,
};

/// What an object's status reports as in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Enforced {
    /// The current spec.
    Current,
    /// An older spec, the last one that was accepted.
    LastValidVersion,
    /// Nothing: the object was never valid (or what it needs is gone).
    Nothing,
}

/// The decision on one genie object.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub kind: Kind,
    pub name: String,
    /// Where the spec in force came from.
    pub origin: Origin,
    pub age: i64,
    /// The current spec's problems; empty when it is accepted.
    pub problems: Vec<ConfigError>,
    pub enforced: Enforced,
    /// The spec in force as its source held it (the last valid version kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_spec: Option<serde_json::Value>,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems as one line each (`field: message`).
    pub fn problem_text(&self) -> String {
        self.problems
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The outcome of one acceptance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acceptance {
    /// What the node enforces.
    pub model: Model,
    /// One verdict per genie object (and per object kept from an unreadable file).
    pub verdicts: Vec<Verdict>,
    /// Problems that belong to no object.
    pub problems: Vec<ConfigError>,
}

impl Acceptance {
    /// Every problem, of objects and of documents.
    pub fn all_problems(&self) -> Vec<ConfigError> {
        self.problems
            .iter()
            .chain(self.verdicts.iter().flat_map(|v| &v.problems))
            .cloned()
            .collect()
    }

    /// Refused objects per kind (what the metric counts).
    pub fn refused_by_kind(&self) -> BTreeMap<Kind, usize> {
        let mut out: BTreeMap<Kind, usize> = Kind::GENIE.iter().map(|k| (*k, 0)).collect();
        for v in self.verdicts.iter().filter(|v| !v.accepted()) {
            *out.entry(v.kind).or_default() += 1;
        }
        out
    }
}

/// Decides every object against the verdicts of the last acceptance (`previous`, empty on a
/// first start), repeating until what is in force stops moving.
pub fn accept(
    objects: &[SourceObject],
    unreadable: &BTreeSet<PathBuf>,
    document_problems: Vec<ConfigError>,
    previous: &[Verdict],
) -> Acceptance {
    let mut result = decide(objects, unreadable, document_problems.clone(), previous);
    // Each round can only let in changes that waited for a resource a change moved out of;
    // a handful of rounds covers chains of such moves in one reload (the rest go in at the
    // next one).
    for _ in 0..4 {
        let in_force = |v: &[Verdict]| {
            v.iter()
                .map(|v| (v.kind, v.name.clone(), v.enforced_spec.clone()))
                .collect::<Vec<_>>()
        };
        let next = decide(
            objects,
            unreadable,
            document_problems.clone(),
            &result.verdicts,
        );
        if in_force(&next.verdicts) == in_force(&result.verdicts) {
            return next;
        }
        result = next;
    }
    result
}

/// Accepts everything or nothing (the strict check of `genie validate`-style callers and of
/// tests): the model when no object has a problem, else every problem.
pub fn accept_all(
    objects: &[SourceObject],
    problems: Vec<ConfigError>,
) -> Result<Model, Vec<ConfigError>> {
    let acceptance = accept(objects, &BTreeSet::new(), problems, &[]);
    let problems = acceptance.all_problems();
    if problems.is_empty() {
        Ok(acceptance.model)
    } else {
        Err(problems)
    }
}

/// One genie object under decision.
struct Entry<'a> {
    kind: Kind,
    name: String,
    current: Option<&'a SourceObject>,
    /// The current spec after its own checks (`None` without a current spec).
    valid: Option<Result<Valid, Vec<ConfigError>>>,
    /// The last valid version, re-read and re-checked.
    last: Option<Last>,
}

struct Last {
    valid: Valid,
    raw: serde_json::Value,
    origin: Origin,
    age: i64,
}

impl Entry<'_> {
    fn current_valid(&self) -> Option<&Valid> {
        self.valid.as_ref().and_then(|v| v.as_ref().ok())
    }

    /// Unchanged, invalid or kept from an unreadable file: its candidate is the last valid
    /// version, which was in force with the others.
    fn settled(&self) -> bool {
        match (self.current, self.current_valid()) {
            (Some(current), Some(_)) => self.last.as_ref().is_some_and(|l| l.raw == current.raw),
            _ => true,
        }
    }

    fn age(&self) -> i64 {
        self.current
            .map(|c| c.age)
            .or(self.last.as_ref().map(|l| l.age))
            .unwrap_or_default()
    }

    /// The isolation and tenant other objects' references are checked against: the current
    /// spec when valid, else the last valid one.
    fn candidate(&self) -> Option<&Valid> {
        self.current_valid()
            .or(self.last.as_ref().map(|l| &l.valid))
    }
}

/// What the objects decided so far hold.
#[derive(Default)]
struct Taken {
    physical: BTreeMap<String, (PhysicalNetwork, bool)>,
    tenants: BTreeMap<String, (Tenant, bool)>,
    logical: BTreeMap<String, LogicalNetwork>,
    namespaces: BTreeMap<String, String>,
    identities: BTreeMap<u32, String>,
    subnets: Vec<(IpNet, String)>,
}

impl Taken {
    /// What `valid` would conflict with; the object's own name never conflicts.
    fn conflicts(
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
    fn missing(
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

    fn take(&mut self, valid: &Valid, current: bool) {
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

    fn release(&mut self, valid: &Valid) {
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

fn error_for(kind: Kind, name: &str, file: PathBuf) -> impl Fn(&str, String) -> ConfigError {
    let name = name.to_owned();
    move |field: &str, message: String| ConfigError {
        file: file.clone(),
        kind: kind.name().to_owned(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    }
}

fn decide(
    objects: &[SourceObject],
    unreadable: &BTreeSet<PathBuf>,
    mut problems: Vec<ConfigError>,
    previous: &[Verdict],
) -> Acceptance {
    let mut model = Model::default();
    let mut entries: BTreeMap<(Kind, String), Entry<'_>> = BTreeMap::new();
    for object in objects {
        if object.kind == Kind::Pod {
            let namespace = object
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            // A pod's bad annotation is that pod's problem: its ADD fails naming the
            // annotation, while everything else stays in force.
            let attachments = crate::cni::annotations::attachments(&object.annotations, &namespace);
            model
                .pods
                .entry((namespace.clone(), object.name.clone()))
                .or_insert(PodManifest {
                    namespace,
                    name: object.name.clone(),
                    annotations: object.annotations.clone(),
                    attachments,
                    file: object.origin.label(),
                });
            continue;
        }
        let key = (object.kind, object.name.clone());
        if let Some(first) = entries.get(&key).and_then(|e| e.current) {
            problems.push(ConfigError {
                file: object.origin.label(),
                kind: object.kind.name().to_owned(),
                name: object.name.clone(),
                field: "metadata.name".to_owned(),
                message: format!(
                    "defined twice; the first definition ({}) is the one read",
                    first.origin
                ),
            });
            continue;
        }
        let valid = match &object.spec {
            Ok(spec) => {
                check(&object.name, spec, &object.origin).map(|v| v.expect("genie kinds only"))
            }
            Err(e) => Err(e.clone()),
        };
        entries.insert(
            key,
            Entry {
                kind: object.kind,
                name: object.name.clone(),
                current: Some(object),
                valid: Some(valid),
                last: None,
            },
        );
    }
    for verdict in previous {
        let Some(raw) = &verdict.enforced_spec else {
            continue;
        };
        let key = (verdict.kind, verdict.name.clone());
        let kept_from_unreadable = verdict
            .origin
            .file()
            .is_some_and(|f| unreadable.contains(f));
        if !entries.contains_key(&key) && !kept_from_unreadable {
            // Deleted.
            continue;
        }
        let reread = SourceObject::new(
            verdict.kind,
            ObjectMeta {
                name: verdict.name.clone(),
                ..ObjectMeta::default()
            },
            super::API_VERSION,
            raw.clone(),
            verdict.origin.clone(),
            verdict.age,
        );
        let Ok(spec) = &reread.spec else { continue };
        let Ok(Some(valid)) = check(&verdict.name, spec, &verdict.origin) else {
            continue;
        };
        let last = Last {
            valid,
            raw: raw.clone(),
            origin: verdict.origin.clone(),
            age: verdict.age,
        };
        entries
            .entry(key)
            .or_insert_with(|| Entry {
                kind: verdict.kind,
                name: verdict.name.clone(),
                current: None,
                valid: None,
                last: None,
            })
            .last = Some(last);
    }

    let index = References::new(&entries);
    let mut taken = Taken::default();
    taken.identities.insert(
        unowned_default_identity(),
        "the default network of namespaces without a tenant".to_owned(),
    );
    let mut verdicts = Vec::new();
    for kind in Kind::GENIE {
        let mut settled: Vec<&Entry<'_>> = entries
            .values()
            .filter(|e| e.kind == kind && e.settled())
            .collect();
        let mut changes: Vec<&Entry<'_>> = entries
            .values()
            .filter(|e| e.kind == kind && !e.settled())
            .collect();
        settled.sort_by_key(|e| (e.age(), e.name.clone()));
        changes.sort_by_key(|e| (e.age(), e.name.clone()));
        // What the changes' last valid versions hold stays theirs while changes are decided.
        let mut reserved = Taken::default();
        for entry in &changes {
            if let Some(last) = &entry.last {
                reserved.take(&last.valid, true);
            }
        }
        let prior_users = prior_dedicated_users(&entries);
        for entry in settled.into_iter().chain(changes.iter().copied()) {
            let file = entry
                .current
                .map(|c| c.origin.label())
                .or(entry.last.as_ref().map(|l| l.origin.label()))
                .unwrap_or_default();
            let err = error_for(kind, &entry.name, file);
            let mut problems: Vec<ConfigError> = match &entry.valid {
                Some(Err(e)) => e.clone(),
                Some(Ok(valid)) => index.check(valid, &err),
                None => vec![err(
                    "",
                    "its file cannot be read; the last valid version stays in force".to_owned(),
                )],
            };
            let mut chosen: Option<(Valid, Origin, i64, serde_json::Value)> = None;
            if !entry.settled() {
                if let Some(last) = &entry.last {
                    reserved.release(&last.valid);
                }
                if let (Some(current), Some(valid)) = (entry.current, entry.current_valid())
                    && problems.is_empty()
                {
                    let mut found = taken.conflicts(valid, &err);
                    found.extend(reserved.conflicts(valid, &err).into_iter().map(|mut e| {
                        e.message = format!("{} (being moved out of by a pending change; try again once it is in force)", e.message);
                        e
                    }));
                    found.extend(taken.missing(valid, true, &err));
                    if let Valid::Physical(p) = valid
                        && p.spec.dedicated
                        && let Some(users) = prior_users.get(&p.name).filter(|u| u.len() > 1)
                    {
                        found.push(err(
                            "spec.dedicated",
                            format!(
                                "logical networks of several tenants use it: {}",
                                users.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    if found.is_empty() {
                        chosen = Some((
                            valid.clone(),
                            current.origin.clone(),
                            current.age,
                            current.raw.clone(),
                        ));
                    } else {
                        problems.extend(found);
                    }
                }
            }
            if chosen.is_none()
                && let Some(last) = &entry.last
            {
                let mut found = taken.conflicts(&last.valid, &err);
                found.extend(taken.missing(&last.valid, false, &err));
                if found.is_empty() {
                    chosen = Some((
                        last.valid.clone(),
                        last.origin.clone(),
                        last.age,
                        last.raw.clone(),
                    ));
                } else if entry.settled() {
                    problems.extend(found);
                }
            }
            let current_raw = entry.current.map(|c| &c.raw);
            let enforced = match &chosen {
                None => Enforced::Nothing,
                Some((.., raw)) if Some(raw) == current_raw => Enforced::Current,
                Some(_) => Enforced::LastValidVersion,
            };
            if let Some((valid, ..)) = &chosen {
                taken.take(valid, enforced == Enforced::Current && problems.is_empty());
            }
            let (origin, age) = match &chosen {
                Some((_, origin, age, _)) => (origin.clone(), *age),
                None => (
                    entry
                        .current
                        .map(|c| c.origin.clone())
                        .unwrap_or(Origin::File {
                            path: PathBuf::new(),
                            document: 0,
                        }),
                    entry.age(),
                ),
            };
            if chosen.is_none() && kind == Kind::LogicalNetwork {
                model
                    .refused
                    .insert(entry.name.clone(), problem_line(&problems));
            }
            verdicts.push(Verdict {
                kind,
                name: entry.name.clone(),
                origin,
                age,
                problems,
                enforced,
                enforced_spec: chosen.map(|(.., raw)| raw),
            });
        }
    }
    for (name, (physical, _)) in taken.physical {
        model.physical.insert(name, physical);
    }
    for (name, (tenant, _)) in taken.tenants {
        for ns in &tenant.namespaces {
            model.namespace_tenant.insert(ns.clone(), name.clone());
        }
        model.tenants.insert(name, tenant);
    }
    model.logical = taken.logical;
    verdicts.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Acceptance {
        model,
        verdicts,
        problems,
    }
}

fn problem_line(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Tenants whose networks used each physical network in the last valid versions (a physical
/// network may only turn dedicated while one tenant uses it).
fn prior_dedicated_users(
    entries: &BTreeMap<(Kind, String), Entry<'_>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in entries.values() {
        if let Some(Last {
            valid: Valid::Logical(n),
            ..
        }) = &entry.last
            && let Some(phys) = &n.physical_network
        {
            out.entry(phys.clone())
                .or_default()
                .insert(n.tenant.clone());
        }
    }
    out
}

/// Which objects exist, for the references a current spec makes. These checks do not depend
/// on what else is accepted, so an object's verdict does not depend on the order of decision.
struct References<'a> {
    tenants: BTreeSet<&'a str>,
    physical: BTreeSet<&'a str>,
    /// Every logical network named by a source, valid or not.
    logical_names: BTreeSet<&'a str>,
    /// Logical network → (owning tenant, isolation) as the owner currently declares it (else
    /// as its last valid version did).
    logical: BTreeMap<&'a str, (&'a str, &'a ValidIsolation)>,
}

impl<'a> References<'a> {
    fn new(entries: &'a BTreeMap<(Kind, String), Entry<'a>>) -> Self {
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
    fn check(&self, valid: &Valid, err: &dyn Fn(&str, String) -> ConfigError) -> Vec<ConfigError> {
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

#[cfg(test)]
mod tests;
