//! Whether the RBAC in `deploy/genie.yaml` grants every request the agent made: each request
//! the API stand-in served is turned into the (verb, API group, resource, namespace, name) the
//! API server would authorize, and must be allowed by a rule of the agent's ClusterRole or of
//! a Role in that namespace. A test that passes this has exercised what it checks: a call
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

/// Whether the roles in `documents` (the manifests of `deploy/genie.yaml`) allow `access`.
pub fn allows(documents: &[Value], access: &Access) -> bool {
    documents
        .iter()
        .filter(|d| match d["kind"].as_str() {
            Some("ClusterRole") => true,
            Some("Role") => access.namespace.as_deref() == d["metadata"]["namespace"].as_str(),
            _ => false,
        })
        .flat_map(|role| role["rules"].as_array().into_iter().flatten())
        .any(|rule| {
            let names = strings(&rule["resourceNames"]);
            strings(&rule["apiGroups"]).contains(&access.group.as_str())
                && strings(&rule["resources"]).contains(&access.resource.as_str())
                && strings(&rule["verbs"]).contains(&access.verb.as_str())
                && (names.is_empty() || access.name.as_deref().is_some_and(|n| names.contains(&n)))
        })
}

/// The requests in `requests` that the manifests at `deploy/genie.yaml` do not grant.
pub fn refused(requests: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/genie.yaml"),
    )
    .expect("deploy/genie.yaml is readable");
    let documents = crate::apiserver::objects_from_yaml(&text).expect("deploy/genie.yaml is YAML");
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
}
