//! Whether the RBAC in `deploy/genie.yaml` grants every request the agent made: each request
//! the API stand-in served is turned into the (verb, API group, resource, namespace, name) the
//! API server would authorize, and must be allowed by a rule bound to the service account the
//! agent's DaemonSet runs as (a ClusterRoleBinding, or a RoleBinding in that namespace). A test that passes this has exercised what it checks: a call
//! the manifests do not grant would be refused on a real cluster.

use serde_json::Value;

/// What the API server authorizes for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    pub group: String,
    /// `pods`, or `logicalnetworks/status` for a subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// The access a stand-in request line ("GET /api/v1/pods?watch=true", …) needs.
pub fn access_of(request: &str) -> Option<Access> {
    let (method, target) = request.split_once(' ')?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let param = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, mut name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), Some(*sub)),
        _ => return None,
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if matches!(param("watch"), Some("true" | "1")) => "watch",
        ("GET", false) => "list",
        ("PATCH", _) => "patch",
        ("POST", false) => "create",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    // A list or watch narrowed to one name by a field selector is authorized for that name.
    if name.is_none()
        && let Some(selector) = param("fieldSelector")
    {
        let selector = selector.replace("%3D", "=").replace("%3d", "=");
        name = selector.strip_prefix("metadata.name=").map(str::to_owned);
    }
    Some(Access {
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource: match subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        },
        namespace,
        name,
    })
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The service account the agent's DaemonSet runs as: (namespace, name).
fn agent_account(documents: &[Value]) -> Option<(&str, &str)> {
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "genie")?;
    Some((
        daemonset["metadata"]["namespace"].as_str()?,
        daemonset["spec"]["template"]["spec"]["serviceAccountName"].as_str()?,
    ))
}

/// The rules granted to the agent's service account in `namespace` (`None`: cluster-scoped),
/// as the API server's RBAC authorizer finds them: through a ClusterRoleBinding anywhere, or
/// a RoleBinding in that namespace, whose subjects name the account and whose `roleRef` names
/// a role that exists (a Role of the binding's namespace, or a ClusterRole).
fn granted_rules<'a>(documents: &'a [Value], namespace: Option<&str>) -> Vec<&'a Value> {
    let Some((sa_namespace, sa_name)) = agent_account(documents) else {
        return Vec::new();
    };
    let role = |kind: &str, name: &str, role_namespace: Option<&str>| {
        documents.iter().find(move |d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && (kind == "ClusterRole" || d["metadata"]["namespace"].as_str() == role_namespace)
        })
    };
    documents
        .iter()
        .filter(|binding| {
            binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == sa_name
                        && s["namespace"] == sa_namespace
                })
        })
        .filter_map(|binding| {
            let reference = &binding["roleRef"];
            let (kind, name) = (reference["kind"].as_str()?, reference["name"].as_str()?);
            match binding["kind"].as_str()? {
                "ClusterRoleBinding" if kind == "ClusterRole" => role(kind, name, None),
                "RoleBinding" => {
                    let binding_namespace = binding["metadata"]["namespace"].as_str();
                    (namespace.is_some() && binding_namespace == namespace)
                        .then(|| role(kind, name, binding_namespace))
                        .flatten()
                }
                _ => None,
            }
        })
        .flat_map(|role| role["rules"].as_array().into_iter().flatten())
        .collect()
}

/// Whether the manifests in `documents` (those of `deploy/genie.yaml`) grant `access` to the
/// service account the agent runs as.
pub fn allows(documents: &[Value], access: &Access) -> bool {
    granted_rules(documents, access.namespace.as_deref())
        .into_iter()
        .any(|rule| {
            let names = strings(&rule["resourceNames"]);
            strings(&rule["apiGroups"]).contains(&access.group.as_str())
                && strings(&rule["resources"]).contains(&access.resource.as_str())
                && strings(&rule["verbs"]).contains(&access.verb.as_str())
                && (names.is_empty() || access.name.as_deref().is_some_and(|n| names.contains(&n)))
        })
}

fn manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/genie.yaml"),
    )
    .expect("deploy/genie.yaml is readable");
    crate::apiserver::objects_from_yaml(&text).expect("deploy/genie.yaml is YAML")
}

/// The requests in `requests` that the manifests at `deploy/genie.yaml` do not grant.
pub fn refused(requests: &[String]) -> Vec<String> {
    let documents = manifests();
    requests
        .iter()
        .filter(|r| access_of(r).is_none_or(|a| !allows(&documents, &a)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_what_the_api_server_authorizes() {
        assert_eq!(
            access_of(
                "GET /api/v1/namespaces/kube-system/services?fieldSelector=metadata.name%3Dkube-dns&watch=true"
            ),
            Some(Access {
                verb: "watch".to_owned(),
                group: String::new(),
                resource: "services".to_owned(),
                namespace: Some("kube-system".to_owned()),
                name: Some("kube-dns".to_owned()),
            })
        );
        let status = access_of("PATCH /apis/genie.dev/v1alpha1/tenants/red/status").unwrap();
        assert_eq!(
            (
                status.verb.as_str(),
                status.group.as_str(),
                status.resource.as_str()
            ),
            ("patch", "genie.dev", "tenants/status")
        );
        // The checker refuses what the manifests do not grant.
        assert_eq!(
            refused(&[
                "DELETE /api/v1/nodes/n1".to_owned(),
                "GET /api/v1/namespaces/default/secrets".to_owned(),
                "GET /api/v1/namespaces/kube-system/services?watch=true".to_owned(),
                "PATCH /api/v1/namespaces/red/pods/p".to_owned(),
            ]),
            [
                "DELETE /api/v1/nodes/n1",
                "GET /api/v1/namespaces/default/secrets",
                "GET /api/v1/namespaces/kube-system/services?watch=true",
            ]
        );
    }

    /// Rules grant nothing without a binding of the agent's own service account.
    #[test]
    fn only_rules_bound_to_the_agents_account_count() {
        let watch_pods = access_of("GET /api/v1/pods?watch=true").unwrap();
        let dns = access_of(
            "GET /api/v1/namespaces/kube-system/services?fieldSelector=metadata.name%3Dkube-dns",
        )
        .unwrap();
        let documents = manifests();
        assert!(allows(&documents, &watch_pods) && allows(&documents, &dns));
        let without = |kind: &str| -> Vec<Value> {
            documents
                .iter()
                .filter(|d| d["kind"] != kind)
                .cloned()
                .collect()
        };
        assert!(!allows(&without("ClusterRoleBinding"), &watch_pods));
        assert!(!allows(&without("RoleBinding"), &dns));
        let other_account: Vec<Value> = documents
            .iter()
            .cloned()
            .map(|mut d| {
                if d["kind"] == "DaemonSet" {
                    d["spec"]["template"]["spec"]["serviceAccountName"] = "default".into();
                }
                d
            })
            .collect();
        assert!(!allows(&other_account, &watch_pods));
        // A RoleBinding grants only in its own namespace.
        let elsewhere = access_of(
            "GET /api/v1/namespaces/default/services?fieldSelector=metadata.name%3Dkube-dns",
        )
        .unwrap();
        assert!(!allows(&documents, &elsewhere));
    }
}
