//! What the agent writes back: object status (the `Accepted` and `Enforced` conditions), node
//! labels, this node's `NodeEndpoints` and pods' network status.

use super::*;

impl KubeSource {
    /// Writes the status of every genie object from its verdict: `Accepted` (is the current
    /// spec valid) and `Enforced` (is it what the nodes enforce), and `endpoints` per network
    /// and tenant on this node. Patches only what changed since the last call, in the
    /// background.
    pub fn report(&self, verdicts: &[Verdict], endpoints: &BTreeMap<(String, String), u32>) {
        let s = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut patches = Vec::new();
        let written = self
            .written_status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for verdict in verdicts {
            let Some(object) = s
                .genie
                .get(&verdict.kind)
                .and_then(|o| o.get(&verdict.name))
            else {
                continue;
            };
            let kind = verdict.kind.name();
            let name = &verdict.name;
            let count = endpoints
                .get(&(kind.to_owned(), name.clone()))
                .copied()
                .unwrap_or(0);
            let generation = object.metadata.generation.unwrap_or(0);
            // The total over nodes: the others' counts as the object last said, ours now.
            let previous: ObjectStatus = object
                .data
                .get("status")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let mut nodes: BTreeMap<String, u32> = previous
                .nodes
                .iter()
                .filter(|(node, _)| **node != self.node_name)
                .map(|(n, c)| (n.clone(), *c))
                .collect();
            let total = nodes.values().sum::<u32>() + count;
            nodes.insert(self.node_name.clone(), count);
            let mut status = ObjectStatus {
                conditions: conditions(verdict, generation),
                endpoints: Some(total),
                nodes,
            };
            let key = (kind.to_owned(), name.clone());
            let mut compare = status.clone();
            for condition in &mut compare.conditions {
                condition.last_transition_time.clear();
            }
            if written.get(&key) == Some(&compare) {
                continue;
            }
            // A condition whose status did not change keeps its transition time.
            for condition in &mut status.conditions {
                if let Some(old) = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition.type_ && c.status == condition.status)
                    && !old.last_transition_time.is_empty()
                {
                    condition.last_transition_time = old.last_transition_time.clone();
                }
            }
            patches.push((api_resource(verdict.kind), key, status, compare));
        }
        drop(s);
        drop(written);
        let client = self.client.clone();
        let record = Arc::clone(&self.written_status);
        self.runtime.spawn(async move {
            for (resource, key, status, compare) in patches {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                let patch = Patch::Merge(json!({"status": status}));
                match api.patch_status(&key.1, &PatchParams::default(), &patch).await {
                    // Recorded only once written, so a failure is retried on the next report.
                    Ok(_) => {
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, compare);
                    }
                    Err(e) => {
                        tracing::warn!(kind = %resource.kind, name = %key.1, error = %e, "status patch failed");
                    }
                }
            }
        });
    }

    /// Labels this node with the physical networks it has (`physnet.genie.dev/<name>=true`), so
    /// pods that need them can be scheduled here; removes the labels of networks that are gone.
    /// Patches only when the set differs from the last one written.
    pub fn label_node(&self, physical_networks: &[String]) {
        let labelled = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        if labelled.as_deref() == Some(physical_networks) {
            return;
        }
        let label = |n: &String| format!("physnet.genie.dev/{n}");
        let mut labels: BTreeMap<String, Option<String>> = labelled
            .iter()
            .flatten()
            .map(|n| (label(n), None))
            .collect();
        for n in physical_networks {
            labels.insert(label(n), Some("true".to_owned()));
        }
        drop(labelled);
        let client = self.client.clone();
        let node = self.node_name.clone();
        let record = Arc::clone(&self.labelled);
        let wanted = physical_networks.to_vec();
        self.runtime.spawn(async move {
            let api: Api<Node> = Api::all(client);
            let patch = Patch::Merge(json!({"metadata": {"labels": labels}}));
            match api.patch(&node, &PatchParams::default(), &patch).await {
                // Recorded only once written, so a failure is retried on the next reload.
                Ok(_) => *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(wanted),
                Err(e) => tracing::warn!(node, error = %e, "labelling the node failed"),
            }
        });
    }

    /// Publishes this node's endpoints in its `NodeEndpoints` object (created when missing),
    /// when they differ from what was last written. Other nodes' agents give these addresses
    /// their identity.
    pub fn publish_endpoints(&self, endpoints: Vec<PublishedEndpoint>) {
        let mut endpoints = endpoints;
        endpoints.sort();
        if self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&endpoints)
        {
            return;
        }
        let client = self.client.clone();
        let node = self.node_name.clone();
        let record = Arc::clone(&self.published);
        self.runtime.spawn(async move {
            let api: Api<NodeEndpointsObject> = Api::all(client);
            let spec = NodeEndpointsSpec {
                endpoints: endpoints.clone(),
            };
            let patch = Patch::Merge(json!({"spec": &spec}));
            let written = match api.patch(&node, &PatchParams::default(), &patch).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let object = NodeEndpointsObject::new(&node, spec);
                    api.create(&kube::api::PostParams::default(), &object)
                        .await
                        .map(|_| ())
                }
                other => other.map(|_| ()),
            };
            match written {
                // Recorded only once written, so a failure is retried on the next reconcile.
                Ok(()) => *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoints),
                Err(e) => {
                    tracing::warn!(node, error = %e, "publishing the node's endpoints failed")
                }
            }
        });
    }

    /// Writes `k8s.v1.cni.cncf.io/network-status` onto a pod after its ADD (best effort, for
    /// display and other tools: genie's own nodes trust only `NodeEndpoints`).
    pub fn publish_network_status(&self, namespace: &str, pod: &str, status: &Value) {
        let client = self.client.clone();
        let (namespace, pod) = (namespace.to_owned(), pod.to_owned());
        let text = status.to_string();
        self.runtime.spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let patch = Patch::Merge(json!({"metadata": {"annotations": {NETWORK_STATUS: text}}}));
            if let Err(e) = api.patch(&pod, &PatchParams::default(), &patch).await {
                tracing::warn!(namespace, pod, error = %e, "publishing network-status failed");
            }
        });
    }
}

/// The `Accepted` and `Enforced` conditions of a verdict.
fn conditions(verdict: &Verdict, generation: i64) -> Vec<Condition> {
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now_rfc3339(),
        observed_generation: generation,
    };
    let accepted = if verdict.accepted() {
        condition("Accepted", true, "Valid", String::new())
    } else {
        condition("Accepted", false, "Invalid", verdict.problem_text())
    };
    let enforced = match verdict.enforced {
        Enforced::Current => condition("Enforced", true, "Enforced", String::new()),
        Enforced::LastValidVersion => condition(
            "Enforced",
            false,
            "LastValidVersionEnforced",
            "the current spec is refused; the last valid version stays in force until it is fixed or deleted".to_owned(),
        ),
        Enforced::Nothing => condition(
            "Enforced",
            false,
            "NotEnforced",
            "no version of this object was ever accepted".to_owned(),
        ),
    };
    vec![accepted, enforced]
}

/// Now as RFC 3339 UTC, for condition timestamps.
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| String::new(), |t| t.to_string())
}
