use std::path::PathBuf;

use super::*;
use genie_common::policy::proto;

const VALID: &str = "
apiVersion: genie.dev/v1alpha1
kind: PhysicalNetwork
metadata: {name: fabric}
spec: {nic: eth1, dedicated: true}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec: {namespaces: [red, red-dev], quota: {endpoints: 10}}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: blue}
spec: {namespaces: [blue]}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-data}
spec:
  tenant: red
  physicalNetwork: fabric
  subnet: 198.18.10.0/24
  isolation:
    peers: [{network: red-db, ports: [{protocol: TCP, port: 5432, endPort: 5433}, {protocol: ICMP}]}]
  limits: {egressBandwidth: 100M, ingressQPS: 50, scope: Network}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: red-db}
spec: {tenant: red, subnet: 198.18.11.0/24, subnet6: 2001:db8:11::/64}
";

fn load(text: &str) -> Result<Model, Vec<ConfigError>> {
    load_sources(&[(PathBuf::from("objects.yaml"), text.to_owned())]).map_err(|e| match e {
        ModelError::Invalid(errors) => errors,
        other => panic!("unexpected {other}"),
    })
}

/// Loads VALID with `extra` appended and returns the single error.
fn one_error(extra: &str) -> ConfigError {
    let errors = load(&format!("{VALID}---\n{extra}")).expect_err("must be rejected");
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn a_valid_configuration_loads() {
    let model = load(VALID).unwrap();
    assert_eq!(model.tenants.len(), 2);
    assert_eq!(model.namespace_tenant["red-dev"], "red");
    let data = &model.logical["red-data"];
    assert_eq!(data.isolation.peers[0].rules.len(), 2);
    assert_eq!(data.isolation.peers[0].rules[0].ports, Some((5432, 5433)));
    assert!(
        data.isolation.allow_external,
        "allowExternal defaults to true"
    );
    assert!(!data.isolation.allow_host_access);
    assert_eq!(model.logical["red-db"].subnets.len(), 2);
    assert_ne!(
        model.logical["red-data"].identity,
        model.logical["red-db"].identity
    );
    assert_eq!(
        model.identity_for("red", "red-db"),
        Ok(model.logical["red-db"].identity)
    );
    assert_eq!(
        model.identity_for("red", "default"),
        Ok(model.tenants["red"].default_identity)
    );
    assert_eq!(
        model.identity_for("other", "default"),
        Ok(unowned_default_identity())
    );
}

#[test]
fn pods_may_only_use_their_tenants_networks() {
    let model = load(VALID).unwrap();
    let err = model.identity_for("blue", "red-db").unwrap_err();
    assert!(
        err.contains("tenant \"red\"") && err.contains("\"blue\""),
        "{err}"
    );
    assert!(
        model
            .identity_for("red", "nope")
            .unwrap_err()
            .contains("does not exist")
    );
    assert!(model.identity_for("unowned", "red-db").is_err());
}

#[test]
fn errors_name_the_file_object_and_field() {
    let e = one_error(
        "apiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.0.0/33}\n",
    );
    assert_eq!(
        (e.kind.as_str(), e.name.as_str(), e.field.as_str()),
        ("LogicalNetwork", "x", "spec.subnet")
    );
    assert_eq!(e.file, PathBuf::from("objects.yaml"));
    let text = e.to_string();
    assert!(
        text.starts_with("objects.yaml: LogicalNetwork \"x\": spec.subnet:"),
        "{text}"
    );
    assert!(text.contains("198.18.0.0/33"), "{text}");
}

#[test]
fn each_kind_of_mistake_is_caught() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolaton: {}}",
            "spec.isolaton",
            "unknown field",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.1/24}",
            "spec.subnet",
            "host bits",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.10.128/25}",
            "spec.subnet",
            "overlaps",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: green, subnet: 198.18.20.0/24}",
            "spec.tenant",
            "green",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, physicalNetwork: nope}",
            "spec.physicalNetwork",
            "nope",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolation: {peers: [{network: nowhere}]}}",
            "spec.isolation.peers[0].network",
            "nowhere",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, limits: {egressBandwidth: 10X}}",
            "spec.limits.egressBandwidth",
            "suffix",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, limits: {scope: Pod}}",
            "spec.limits.scope",
            "Pod",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolation: {peers: [{network: red-db, ports: [{protocol: ICMP, port: 1}]}]}}",
            "spec.isolation.peers[0].ports[0].port",
            "ICMP",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolation: {peers: [{network: red-db, ports: [{port: 90, endPort: 80}]}]}}",
            "spec.isolation.peers[0].ports[0].endPort",
            "below",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolation: {peers: [{network: red-db, ports: [{port: 70000}]}]}}",
            "spec.isolation.peers[0].ports[0].port",
            "70000",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: red, subnet: 198.18.20.0/24, isolation: {peers: [{network: red-db}, {network: red-db}]}}",
            "spec.isolation.peers[1].network",
            "twice",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {tenant: blue, subnet: 198.18.20.0/24, physicalNetwork: fabric}",
            "spec.physicalNetwork",
            "dedicated and tenant \"red\" already uses it",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: x}\nspec: {subnet: 198.18.20.0/24}",
            "spec",
            "tenant",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: Bad_Name}\nspec: {tenant: red, subnet: 198.18.20.0/24}",
            "metadata.name",
            "lower-case",
        ),
        (
            "kind: LogicalNetwork\nmetadata: {name: red-db}\nspec: {tenant: red, subnet: 198.18.20.0/24}",
            "metadata.name",
            "defined twice",
        ),
        (
            "kind: Tenant\nmetadata: {name: green}\nspec: {namespaces: [blue]}",
            "spec.namespaces[0]",
            "already owned",
        ),
        ("kind: Gadget\nmetadata: {name: g}", "kind", "unknown kind"),
    ];
    for (object, field, needle) in cases {
        let e = one_error(&format!("apiVersion: genie.dev/v1alpha1\n{object}\n"));
        assert_eq!(e.field, *field, "{object}: {e}");
        assert!(
            e.to_string().contains(needle),
            "{object}: {e} lacks {needle}"
        );
    }
    let e = one_error("apiVersion: genie.dev/v1\nkind: Tenant\nmetadata: {name: green}\n");
    assert_eq!(e.field, "apiVersion");
}

#[test]
fn broken_yaml_names_the_file() {
    let errors = load("kind: [unclosed").unwrap_err();
    assert_eq!(errors[0].file, PathBuf::from("objects.yaml"));
    assert!(errors[0].message.contains("not valid YAML"), "{errors:?}");
}

#[test]
fn pod_manifests_give_their_attachments() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: red\n  annotations: {genie.dev/networks: \"red-data@eth1, red-db\"}\n";
    let model = load(&format!("{VALID}---\n{pod}")).unwrap();
    let manifest = &model.pods[&("red".to_owned(), "web".to_owned())];
    let names: Vec<(&str, &str)> = manifest
        .attachments
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| (a.network.as_str(), a.interface.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("default", "eth0"),
            ("red-data", "eth1"),
            ("red-db", "eth2")
        ]
    );
    // A pod without annotations gets the default network only; its namespace defaults.
    let plain = load(&format!(
        "{VALID}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: plain}}\n"
    ))
    .unwrap();
    assert_eq!(
        plain.pods[&("default".to_owned(), "plain".to_owned())]
            .attachments
            .as_ref()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_bad_pod_annotation_is_that_pods_error_only() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: red\n  annotations: {genie.dev/networks: \"a@eth1, b@eth1\"}\n";
    let model = load(&format!("{VALID}---\n{pod}")).unwrap();
    let e = model.pods[&("red".to_owned(), "web".to_owned())]
        .attachments
        .clone()
        .unwrap_err();
    assert_eq!(e.annotation, "genie.dev/networks");
    assert!(
        e.message.contains("named twice") && e.repeated_interface,
        "{e}"
    );
}

#[test]
fn the_example_directory_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/objects");
    let model = validate_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.logical.len(), 3);
    assert_eq!(model.logical["red-web"].isolation.peers[0].rules.len(), 3);
    let web = &model.pods[&("red".to_owned(), "web-1".to_owned())];
    let interfaces: Vec<(&str, &str)> = web
        .attachments
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| (a.network.as_str(), a.interface.as_str()))
        .collect();
    assert_eq!(
        interfaces,
        [("default", "eth0"), ("red-web", "eth1"), ("red-db", "db0")]
    );
    assert!(
        model.pods[&("blue".to_owned(), "api-1".to_owned())]
            .attachments
            .is_ok()
    );
}

#[test]
fn the_example_cni_configuration_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cni/10-genie.conf");
    let bytes = std::fs::read(path).unwrap();
    let conf = crate::cni::spec::parse_config(&bytes, crate::cni::spec::Command::Add).unwrap();
    assert_eq!(conf.plugin_type, "genie-cni");
    assert!(conf.default_network.is_some());
}

/// Blue's networks for the consent tests: `blue-web` peers into red's `red-db`.
const BLUE_PEERS_INTO_RED: &str = "
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {name: blue-web}
spec:
  tenant: blue
  subnet: 198.18.20.0/24
  isolation:
    peers: [{network: red-db, ports: [{protocol: TCP, port: 5000, endPort: 6000}, {protocol: UDP}]}]
";

#[test]
fn a_peer_into_another_tenant_needs_the_owners_consent() {
    // One side only: refused, saying what the owner must add.
    let e = one_error(BLUE_PEERS_INTO_RED);
    assert_eq!(
        (e.kind.as_str(), e.name.as_str(), e.field.as_str()),
        (
            "LogicalNetwork",
            "blue-web",
            "spec.isolation.peers[0].network"
        )
    );
    assert!(
        e.message.contains("tenant \"red\"")
            && e.message.contains("{tenant: blue, network: blue-web}")
            && e.message.contains("allowFrom"),
        "{e}"
    );
    // The same from blue's share of the default network.
    let e = one_error(
        "apiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {name: green}\nspec:\n  defaultIsolation: {peers: [{network: red-db}]}\n",
    );
    assert_eq!(e.field, "spec.defaultIsolation.peers[0].network", "{e}");

    // With consent: the ports both sides allow.
    let consenting = VALID.replace(
        "spec: {tenant: red, subnet: 198.18.11.0/24, subnet6: 2001:db8:11::/64}",
        "spec:\n  tenant: red\n  subnet: 198.18.11.0/24\n  isolation:\n    allowFrom: [{tenant: blue, network: blue-web, ports: [{protocol: TCP, port: 5432}, {protocol: TCP, port: 5900, endPort: 7000}]}]",
    );
    let model = load(&format!("{consenting}---\n{BLUE_PEERS_INTO_RED}")).unwrap();
    let peer = &model.logical["blue-web"].isolation.peers[0];
    assert_eq!(
        model.peer_rules("blue", "blue-web", peer),
        Some(vec![
            ValidPortRule {
                protocol: proto::TCP,
                ports: Some((5432, 5432))
            },
            ValidPortRule {
                protocol: proto::TCP,
                ports: Some((5900, 6000))
            },
        ]),
        "UDP is not consented to"
    );
    // Consent for another network of blue does not count.
    let elsewhere = consenting.replace("network: blue-web,", "network: default,");
    let errors = load(&format!("{elsewhere}---\n{BLUE_PEERS_INTO_RED}")).unwrap_err();
    assert_eq!(
        errors[0].field, "spec.isolation.peers[0].network",
        "{errors:?}"
    );
}

#[test]
fn allow_from_names_tenants_and_networks_that_exist() {
    let with = |allow: &str| {
        one_error(&format!(
            "apiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {{name: red-x}}\nspec:\n  tenant: red\n  subnet: 198.18.30.0/24\n  isolation: {{allowFrom: [{allow}]}}\n"
        ))
    };
    let e = with("{tenant: nobody}");
    assert_eq!(e.field, "spec.isolation.allowFrom[0].tenant", "{e}");
    let e = with("{tenant: red}");
    assert!(e.message.contains("owns this network"), "{e}");
    let e = with("{tenant: blue, network: red-db}");
    assert_eq!(e.field, "spec.isolation.allowFrom[0].network", "{e}");
    let e = with("{tenant: blue, ports: [{protocol: TCP, port: 70000}]}");
    assert_eq!(e.field, "spec.isolation.allowFrom[0].ports[0].port", "{e}");
    let e = one_error(
        "apiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {name: green}\nspec:\n  defaultIsolation: {allowFrom: [{tenant: red}]}\n",
    );
    assert_eq!(e.field, "spec.defaultIsolation.allowFrom", "{e}");
}

#[test]
fn port_rules_intersect_and_merge() {
    let tcp = |lo, hi| ValidPortRule {
        protocol: proto::TCP,
        ports: Some((lo, hi)),
    };
    let all_udp = ValidPortRule {
        protocol: proto::UDP,
        ports: None,
    };
    assert_eq!(intersect_rules(&[], &[tcp(1, 2)]), Some(vec![tcp(1, 2)]));
    assert_eq!(intersect_rules(&[tcp(1, 2)], &[]), Some(vec![tcp(1, 2)]));
    assert_eq!(intersect_rules(&[tcp(1, 2)], &[all_udp]), None);
    assert_eq!(
        intersect_rules(
            &[tcp(1, 100), all_udp],
            &[tcp(50, 60), tcp(61, 70), tcp(90, 200), all_udp]
        ),
        Some(vec![tcp(50, 70), tcp(90, 100), all_udp])
    );
    assert_eq!(
        intersect_rules(
            &[ValidPortRule {
                protocol: proto::TCP,
                ports: None
            }],
            &[tcp(5, 6)]
        ),
        Some(vec![tcp(5, 6)])
    );
}
