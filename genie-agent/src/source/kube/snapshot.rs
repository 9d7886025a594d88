//! What the agent reads on each reload: genie's objects and this node's pods as typed source
//! objects, other nodes' published endpoints, node and DNS addresses.

use super::*;

impl KubeSource {
    /// One GET of a pod the pod watch has not delivered yet (kubelet runs CNI ADD as soon as
    /// the pod is bound, which can be before the watch event arrives). `None` when it does not
    /// exist or the API does not answer within two seconds; its manifest otherwise.
    pub fn fetch_pod(&self, namespace: &str, name: &str) -> Option<crate::model::PodManifest> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let fetched = self.runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), api.get_opt(name)).await
        });
        let pod = match fetched {
            Ok(Ok(Some(pod))) => pod,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(namespace, pod = name, error = %e, "fetching a pod the watch has not delivered failed");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    namespace,
                    pod = name,
                    "fetching a pod the watch has not delivered timed out"
                );
                return None;
            }
        };
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        Some(crate::model::PodManifest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            attachments: crate::model::annotations::attachments(&annotations, namespace),
            annotations,
            file: std::path::PathBuf::from(format!("kube:Pod/{namespace}/{name}")),
        })
    }

    /// The cluster as the agent consumes it.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let s = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = ClusterSnapshot::default();
        for (kind, objects) in &s.genie {
            for (name, object) in objects {
                let api_version = object
                    .types
                    .as_ref()
                    .map_or(crate::model::API_VERSION, |t| t.api_version.as_str());
                out.objects.push(SourceObject::new(
                    *kind,
                    ObjectMeta {
                        name: name.clone(),
                        ..ObjectMeta::default()
                    },
                    api_version,
                    object.data.get("spec").cloned().unwrap_or(Value::Null),
                    origin(*kind, name, &object.metadata),
                    created_at(&object.metadata),
                ));
            }
        }
        for ((namespace, name), pod) in &s.pods {
            let on_this_node =
                pod.spec.as_ref().and_then(|p| p.node_name.as_deref()) == Some(&self.node_name);
            if on_this_node {
                out.objects.push(SourceObject::new(
                    Kind::Pod,
                    ObjectMeta {
                        name: name.clone(),
                        namespace: Some(namespace.clone()),
                        labels: BTreeMap::new(),
                        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
                    },
                    "v1",
                    Value::Null,
                    origin(Kind::Pod, &format!("{namespace}/{name}"), &pod.metadata),
                    created_at(&pod.metadata),
                ));
            }
        }
        // Other nodes' endpoints, as their agents published them; a node that no longer
        // exists publishes nothing.
        for (node_name, published) in &s.node_endpoints {
            if *node_name == self.node_name {
                continue;
            }
            let Some(node) = s.nodes.get(node_name) else {
                continue;
            };
            let pod_cidrs = node_pod_cidrs(node);
            out.remote_endpoints
                .extend(remote_endpoints(&published.spec, &pod_cidrs));
        }
        for node in s.nodes.values() {
            for address in node
                .status
                .as_ref()
                .and_then(|st| st.addresses.as_ref())
                .into_iter()
                .flatten()
            {
                if matches!(address.type_.as_str(), "InternalIP" | "ExternalIP")
                    && let Ok(ip) = address.address.parse()
                {
                    out.node_addresses.push(ip);
                }
            }
        }
        out.node_addresses.sort();
        out.node_addresses.dedup();
        if let Some(spec) = s.dns.as_ref().and_then(|d| d.spec.as_ref()) {
            out.dns_addresses = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            out.dns_addresses.sort();
            out.dns_addresses.dedup();
        }
        out
    }
}

/// The endpoints another node published, with the pod CIDRs of that node (what its
/// default-network addresses must lie in, when the cluster assigns them).
fn remote_endpoints(published: &NodeEndpointsSpec, pod_cidrs: &[IpNet]) -> Vec<RemoteEndpoint> {
    let mut out = Vec::new();
    for endpoint in &published.endpoints {
        for ip in &endpoint.ips {
            if let Ok(ip) = ip.parse() {
                out.push(RemoteEndpoint {
                    ip,
                    namespace: endpoint.namespace.clone(),
                    network: endpoint.network.clone(),
                    pod_cidrs: pod_cidrs.to_vec(),
                });
            }
        }
    }
    out
}

/// `spec.podCIDRs` (or `spec.podCIDR`) of a node.
fn node_pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Where an API object came from.
fn origin(kind: Kind, name: &str, meta: &kube::api::ObjectMeta) -> Origin {
    Origin::Api {
        kind,
        name: name.to_owned(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    }
}

/// Creation time in seconds since the epoch: the age that decides conflicts (older wins).
fn created_at(meta: &kube::api::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEFAULT_NETWORK;

    #[test]
    fn published_endpoints_become_remote_endpoints() {
        let spec = NodeEndpointsSpec {
            endpoints: vec![
                PublishedEndpoint {
                    namespace: "red".to_owned(),
                    pod: "p".to_owned(),
                    interface: "eth0".to_owned(),
                    network: DEFAULT_NETWORK.to_owned(),
                    ips: vec!["198.18.20.5".to_owned(), "not an address".to_owned()],
                },
                PublishedEndpoint {
                    namespace: "red".to_owned(),
                    pod: "p".to_owned(),
                    interface: "eth1".to_owned(),
                    network: "red-a".to_owned(),
                    ips: vec!["198.18.1.7".to_owned(), "fd00::7".to_owned()],
                },
            ],
        };
        let cidrs: Vec<IpNet> = vec!["198.18.20.0/24".parse().unwrap()];
        let got = remote_endpoints(&spec, &cidrs);
        assert_eq!(
            got.iter()
                .map(|e| (e.ip.to_string(), e.network.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("198.18.20.5".to_owned(), DEFAULT_NETWORK),
                ("198.18.1.7".to_owned(), "red-a"),
                ("fd00::7".to_owned(), "red-a"),
            ]
        );
        assert!(
            got.iter()
                .all(|e| e.namespace == "red" && e.pod_cidrs == cidrs)
        );
    }
}
