//! What acceptance decides: a verdict per object and the model in force.

use std::{collections::BTreeMap, path::Path};

use super::super::{
    ConfigError, Model,
    source::{Kind, Origin},
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
        problems_text(&self.problems)
    }
}

/// Problems as one line (`field: message; …`), for conditions, logs and CNI errors.
pub fn problems_text(problems: &[ConfigError]) -> String {
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

/// The verdicts of the last acceptance, with the spec in force of each object.
pub const VERDICTS_FILE: &str = "objects.json";

/// The verdicts kept in `state_dir`; empty when there are none. Unreadable verdicts are
/// dropped with a warning: an object refused now then has nothing in force (it fails closed).
pub fn read_verdicts(state_dir: &Path) -> Vec<Verdict> {
    let path = state_dir.join(VERDICTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the last verdicts; refused objects have no last valid version");
            return Vec::new();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "the last verdicts are corrupt; refused objects have no last valid version");
        Vec::new()
    })
}

pub fn write_verdicts(state_dir: &Path, verdicts: &[Verdict]) -> std::io::Result<()> {
    crate::statefile::private_dir(state_dir)?;
    let bytes = serde_json::to_vec_pretty(verdicts).map_err(std::io::Error::other)?;
    crate::statefile::write_atomically(
        &state_dir.join(VERDICTS_FILE),
        &bytes,
        crate::statefile::PRIVATE_FILE_MODE,
    )
}
