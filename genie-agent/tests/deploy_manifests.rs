//! The manifests under `deploy/`, checked offline against the upstream Kubernetes types
//! (k8s-openapi is generated from the Kubernetes OpenAPI schema): every document decodes into
//! its kind's type and encodes back to exactly what the file says, so a misspelt or misplaced
//! field, or a value of the wrong type, fails here instead of at `kubectl apply`. The genie
//! objects in the ConfigMap must pass genie's own validation.

use std::path::{Path, PathBuf};

use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Decodes `doc` as `T` and re-encodes it; the two must be equal.
fn round_trips<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_path_to_error::deserialize(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back == doc {
        Ok(())
    } else {
        Err(format!(
            "fields the upstream type does not know were dropped:\nfile:    {doc}\nupstream: {back}"
        ))
    }
}

fn check(doc: &Value) -> Result<(), String> {
    match doc["kind"].as_str().unwrap_or("") {
        "Namespace" => round_trips::<Namespace>(doc),
        "ServiceAccount" => round_trips::<ServiceAccount>(doc),
        "ConfigMap" => round_trips::<ConfigMap>(doc),
        "DaemonSet" => round_trips::<DaemonSet>(doc),
        "ClusterRole" => round_trips::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc),
        "Role" => round_trips::<Role>(doc),
        "RoleBinding" => round_trips::<RoleBinding>(doc),
        "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(doc),
        other => Err(format!("no upstream type checked for kind {other:?}")),
    }
}

#[test]
fn every_manifest_matches_the_upstream_kubernetes_types() {
    let mut failures = Vec::new();
    for file in ["genie.yaml", "crds.yaml", "uninstall.yaml"] {
        for doc in documents(file) {
            if let Err(e) = check(&doc) {
                failures.push(format!(
                    "{file}: {} {}: {e}",
                    doc["kind"], doc["metadata"]["name"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_checker_catches_a_misplaced_field() {
    let mut daemonset = documents("genie.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    assert!(check(&daemonset).is_err());
    daemonset["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("hostNetwrok");
    daemonset["spec"]["template"]["spec"]["hostNetwork"] = Value::String("yes".into());
    assert!(check(&daemonset).is_err());
}

#[test]
fn rbac_is_least_privilege() {
    let docs = documents("genie.yaml");
    let rules = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|role| role["rules"].as_array().unwrap());
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                "wildcard {field} in {rule}"
            );
        }
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for verb in &verbs {
            // The agent creates exactly one kind of object, its node's NodeEndpoints; it never
            // updates with PUT or deletes anything.
            let allowed = ["get", "list", "watch", "patch"].contains(verb)
                || (*verb == "create" && resources == ["nodeendpoints"]);
            assert!(allowed, "{verb} in {rule}");
        }
    }
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(subject["kind"], "ServiceAccount", "{binding}");
            assert!(!subject["name"].as_str().unwrap().starts_with("system:"));
        }
    }
}

#[test]
fn the_daemonset_runs_what_the_binary_accepts() {
    for file in ["genie.yaml", "uninstall.yaml"] {
        let daemonset = documents(file)
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .unwrap();
        let spec = &daemonset["spec"]["template"]["spec"];
        let genie = Path::new(env!("CARGO_BIN_EXE_genie"));
        for container in spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap())
        {
            let command: Vec<&str> = container["command"]
                .as_array()
                .unwrap()
                .iter()
                .chain(container["args"].as_array().into_iter().flatten())
                .map(|v| v.as_str().unwrap())
                .collect();
            if command[0] != "genie" {
                continue;
            }
            // `--help` after the arguments: clap parses them all (an unknown flag fails) and
            // prints help instead of running.
            let out = std::process::Command::new(genie)
                .args(&command[1..])
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file} {}: {}",
                container["name"],
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
