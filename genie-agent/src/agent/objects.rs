//! The agent's side of acceptance: reading the objects from the source, deciding them against
//! the last verdicts (kept in the state directory, so a restart keeps last valid versions in
//! force), and reporting what was refused.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use tracing::warn;

use super::Agent;
use crate::model::{self, Model, Verdict, source};

/// What a source delivered on one reload.
struct Delivered {
    objects: Vec<model::SourceObject>,
    problems: Vec<model::ConfigError>,
    unreadable: std::collections::BTreeSet<PathBuf>,
}

impl Agent {
    /// Reads the objects, decides each one (an invalid object is refused alone; one that was
    /// valid keeps its last valid version in force) and applies the result. Returns whether
    /// the maps changed.
    #[tracing::instrument(skip_all)]
    pub fn reload_config(&mut self) -> bool {
        let seen = Instant::now();
        let delivered = match &self.kube {
            Some(kube) => {
                if !kube.synced() {
                    // Before every watch has listed once, absence means nothing yet: keep what
                    // is enforced (pinned maps from before a restart) untouched.
                    return false;
                }
                self.cluster = kube.snapshot();
                Delivered {
                    objects: std::mem::take(&mut self.cluster.objects),
                    problems: Vec::new(),
                    unreadable: Default::default(),
                }
            }
            None => match source::load_dir(&self.config.config_dir) {
                Ok(loaded) => Delivered {
                    objects: loaded.objects,
                    problems: loaded.problems,
                    unreadable: loaded.unreadable,
                },
                Err(e) => {
                    // Nothing can be told about any object: everything stays as it is.
                    self.note_document_problems(Some(e.to_string()));
                    return false;
                }
            },
        };
        let acceptance = model::accept(
            &delivered.objects,
            &delivered.unreadable,
            delivered.problems,
            &self.verdicts,
        );
        let document_problems = (!acceptance.problems.is_empty()).then(|| {
            acceptance
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        });
        self.note_document_problems(document_problems);
        self.note_verdicts(&acceptance.verdicts);
        if let Some(kube) = &self.kube {
            let usage = self.endpoint_usage(Some(&acceptance.model));
            kube.report(&acceptance.verdicts, &usage);
            let physical: Vec<String> = acceptance.model.physical.keys().cloned().collect();
            kube.label_node(&physical);
        }
        self.metrics.set_refused(
            acceptance
                .refused_by_kind()
                .into_iter()
                .map(|(k, n)| (k.name(), n as u64)),
        );
        if acceptance.verdicts != self.verdicts
            && let Err(e) =
                model::accept::write_verdicts(&self.config.state_dir, &acceptance.verdicts)
        {
            warn!(error = %e, "cannot keep the verdicts; after a restart refused objects would have no last valid version");
        }
        self.verdicts = acceptance.verdicts;
        let changed_model = self.model.as_ref() != Some(&acceptance.model);
        self.model = Some(acceptance.model);
        match self.resync() {
            Ok(stats) => {
                if changed_model {
                    self.metrics
                        .propagation
                        .observe(seen.elapsed().as_secs_f64());
                }
                stats.written + stats.deleted + stats.limits_written > 0
            }
            Err(e) => {
                warn!(error = %e, "reconcile failed");
                self.metrics.failed("reload", e.kind());
                false
            }
        }
    }

    /// Problems that belong to no object (file mode: an unreadable directory, file or
    /// document). While there are any, no pod is attached: its manifest may be what cannot be
    /// read.
    fn note_document_problems(&mut self, problems: Option<String>) {
        if let Some(text) = &problems {
            self.metrics.config_rejections.inc();
            if self.config_error.as_deref() != Some(text.as_str()) {
                warn!(error = %text, "configuration files rejected; the objects last read from them stay in force");
            }
        }
        self.config_error = problems;
    }

    /// Logs each object whose verdict changed.
    fn note_verdicts(&self, verdicts: &[Verdict]) {
        let before: BTreeMap<_, _> = self
            .verdicts
            .iter()
            .map(|v| ((v.kind, v.name.as_str()), v))
            .collect();
        for verdict in verdicts {
            let old = before.get(&(verdict.kind, verdict.name.as_str()));
            if old.is_some_and(|o| o.problems == verdict.problems && o.enforced == verdict.enforced)
            {
                continue;
            }
            if verdict.accepted() {
                tracing::info!(kind = %verdict.kind, name = %verdict.name, "object accepted");
            } else {
                warn!(
                    kind = %verdict.kind,
                    name = %verdict.name,
                    enforced = ?verdict.enforced,
                    problems = %verdict.problem_text(),
                    "object refused"
                );
            }
        }
    }

    /// Endpoints on this node per (kind, name) of the objects they belong to: their
    /// LogicalNetwork and their Tenant (for status reports).
    pub(super) fn endpoint_usage(&self, model: Option<&Model>) -> BTreeMap<(String, String), u32> {
        let mut out = BTreeMap::new();
        let Some(model) = model else {
            return out;
        };
        for ep in self.registry.all() {
            if model.logical.contains_key(&ep.request.network) {
                *out.entry(("LogicalNetwork".to_owned(), ep.request.network.clone()))
                    .or_default() += 1;
            }
            if let Some(tenant) = model.namespace_tenant.get(&ep.request.namespace) {
                *out.entry(("Tenant".to_owned(), tenant.clone()))
                    .or_default() += 1;
            }
        }
        out
    }

    /// Objects whose current spec is refused or not in force.
    pub fn refused_objects(&self) -> Vec<Verdict> {
        self.verdicts
            .iter()
            .filter(|v| !v.accepted() || v.enforced != model::Enforced::Current)
            .cloned()
            .collect()
    }
}
