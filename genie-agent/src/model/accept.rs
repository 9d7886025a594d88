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

mod references;
mod taken;
mod verdict;

pub use verdict::{Acceptance, Enforced, VERDICTS_FILE, Verdict, read_verdicts, write_verdicts};

use references::References;
use taken::Taken;

use super::{
    ConfigError, Model, PodManifest,
    check::{Valid, check},
    objects::ObjectMeta,
    source::{Kind, Origin, SourceObject},
    unowned_default_identity,
};

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
    problems: Vec<ConfigError>,
    previous: &[Verdict],
) -> Acceptance {
    let mut model = Model::default();
    let mut entries: BTreeMap<(Kind, String), Entry<'_>> = BTreeMap::new();
    let mut duplicates: BTreeMap<(Kind, String), Vec<ConfigError>> = BTreeMap::new();
    for object in objects {
        if object.kind == Kind::Pod {
            let namespace = object
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            // A pod's bad annotation is that pod's problem: its ADD fails naming the
            // annotation, while everything else stays in force.
            let attachments = super::annotations::attachments(&object.annotations, &namespace);
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
            // The first definition stays in force; the object reads as not accepted until
            // the second is removed.
            duplicates.entry(key).or_default().push(ConfigError {
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
    let prior_users = prior_dedicated_users(&entries);
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
                    .insert(entry.name.clone(), verdict::problems_text(&problems));
            }
            if let Some(more) = duplicates.remove(&(kind, entry.name.clone())) {
                problems.splice(0..0, more);
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

#[cfg(test)]
mod tests;
