//! Per-object acceptance: what one object's mistake may and may not do to the others.

use std::path::PathBuf;

use super::*;
use crate::model::source::load_texts;

const TENANTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: a}
spec: {namespaces: [a]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: b}
spec: {namespaces: [b]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: c}
spec: {namespaces: [c]}
";

fn net(name: &str, tenant: &str, subnet: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: genie.dev/v1alpha1\nkind: LogicalNetwork\nmetadata: {{name: {name}}}\nspec: {{tenant: {tenant}, subnet: {subnet}{extra}}}\n"
    )
}

/// Decides `files` (name, text) against `previous`.
fn decide_files(files: &[(&str, String)], previous: &[Verdict]) -> Acceptance {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.clone()))
        .collect();
    let loaded = load_texts(&sources);
    accept(
        &loaded.objects,
        &loaded.unreadable,
        loaded.problems,
        previous,
    )
}

fn verdict<'a>(acceptance: &'a Acceptance, kind: Kind, name: &str) -> &'a Verdict {
    acceptance
        .verdicts
        .iter()
        .find(|v| v.kind == kind && v.name == name)
        .unwrap_or_else(|| panic!("no verdict on {kind} {name}: {:?}", acceptance.verdicts))
}

fn subnet_of(acceptance: &Acceptance, name: &str) -> Option<String> {
    acceptance
        .model
        .logical
        .get(name)
        .map(|n| n.subnets[0].to_string())
}

#[test]
fn one_tenants_bad_change_keeps_its_last_valid_version_while_the_others_converge() {
    let v1 = format!(
        "{TENANTS}{}{}{}",
        net("a-net", "a", "198.18.1.0/24", ""),
        net("b-net", "b", "198.18.2.0/24", ""),
        net("c-net", "c", "198.18.3.0/24", ", limits: {egressQPS: 5}")
    );
    let first = decide_files(&[("o.yaml", v1)], &[]);
    assert!(
        first.all_problems().is_empty(),
        "{:?}",
        first.all_problems()
    );

    // c breaks its network while a and b change theirs.
    let v2 = format!(
        "{TENANTS}{}{}{}",
        net("a-net", "a", "198.18.1.0/25", ""),
        net("b-net", "b", "198.18.2.0/24", ", limits: {egressQPS: 7}"),
        net("c-net", "c", "198.18.3.7/24", ", limits: {egressQPS: 9}")
    );
    let second = decide_files(&[("o.yaml", v2.clone())], &first.verdicts);
    assert_eq!(
        subnet_of(&second, "a-net").as_deref(),
        Some("198.18.1.0/25")
    );
    assert_eq!(second.model.logical["b-net"].limits.egress_qps, Some(7));
    let c = verdict(&second, Kind::LogicalNetwork, "c-net");
    assert!(!c.accepted());
    assert_eq!(c.problems[0].field, "spec.subnet");
    assert_eq!(c.enforced, Enforced::LastValidVersion);
    assert_eq!(
        subnet_of(&second, "c-net").as_deref(),
        Some("198.18.3.0/24")
    );
    assert_eq!(second.model.logical["c-net"].limits.egress_qps, Some(5));
    for name in ["a-net", "b-net"] {
        let v = verdict(&second, Kind::LogicalNetwork, name);
        assert!(v.accepted() && v.enforced == Enforced::Current, "{v:?}");
    }
    assert_eq!(second.refused_by_kind()[&Kind::LogicalNetwork], 1);

    // The last valid version survives a restart (the verdicts as the agent keeps them) and
    // another reload.
    let kept: Vec<Verdict> =
        serde_json::from_slice(&serde_json::to_vec(&second.verdicts).unwrap()).unwrap();
    let third = decide_files(&[("o.yaml", v2)], &kept);
    assert_eq!(subnet_of(&third, "c-net").as_deref(), Some("198.18.3.0/24"));
    assert_eq!(
        verdict(&third, Kind::LogicalNetwork, "c-net").enforced,
        Enforced::LastValidVersion
    );

    // Fixed: in force again, current.
    let v3 = format!(
        "{TENANTS}{}{}{}",
        net("a-net", "a", "198.18.1.0/25", ""),
        net("b-net", "b", "198.18.2.0/24", ", limits: {egressQPS: 7}"),
        net("c-net", "c", "198.18.3.0/24", ", limits: {egressQPS: 9}")
    );
    let fixed = decide_files(&[("o.yaml", v3)], &third.verdicts);
    assert!(fixed.all_problems().is_empty());
    assert_eq!(fixed.model.logical["c-net"].limits.egress_qps, Some(9));
}

#[test]
fn a_new_invalid_network_does_not_exist_and_says_why() {
    let text = format!(
        "{TENANTS}{}{}",
        net("a-net", "a", "198.18.1.0/24", ""),
        net("c-new", "c", "198.18.9.0/33", "")
    );
    let acceptance = decide_files(&[("o.yaml", text)], &[]);
    assert!(subnet_of(&acceptance, "a-net").is_some());
    let v = verdict(&acceptance, Kind::LogicalNetwork, "c-new");
    assert_eq!(v.enforced, Enforced::Nothing);
    let why = acceptance.model.identity_for("c", "c-new").unwrap_err();
    assert!(
        why.contains("does not exist") && why.contains("refused") && why.contains("spec.subnet"),
        "{why}"
    );
}

#[test]
fn a_newcomer_never_displaces_what_is_in_force() {
    let old = format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", ""));
    let first = decide_files(&[("z-old.yaml", old.clone())], &[]);
    // The newcomer sits in a file that sorts first: file order alone would make it older.
    let newcomer = net("b-net", "b", "198.18.1.128/25", "");
    let second = decide_files(
        &[("a-new.yaml", newcomer), ("z-old.yaml", old)],
        &first.verdicts,
    );
    assert_eq!(
        subnet_of(&second, "a-net").as_deref(),
        Some("198.18.1.0/24")
    );
    let b = verdict(&second, Kind::LogicalNetwork, "b-net");
    assert_eq!(b.enforced, Enforced::Nothing);
    assert!(b.problem_text().contains("overlaps"), "{b:?}");
    assert!(verdict(&second, Kind::LogicalNetwork, "a-net").accepted());

    // Without history the older file wins.
    let both = format!(
        "{TENANTS}{}{}",
        net("a-net", "a", "198.18.1.0/24", ""),
        net("b-net", "b", "198.18.1.128/25", "")
    );
    let fresh = decide_files(&[("o.yaml", both)], &[]);
    assert!(subnet_of(&fresh, "a-net").is_some() && subnet_of(&fresh, "b-net").is_none());
}

#[test]
fn a_namespace_claimed_twice_stays_with_its_first_owner() {
    let first = decide_files(&[("1.yaml", TENANTS.to_owned())], &[]);
    let thief = "---\napiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {name: d}\nspec: {namespaces: [d, a]}\n";
    let second = decide_files(
        &[("0.yaml", thief.to_owned()), ("1.yaml", TENANTS.to_owned())],
        &first.verdicts,
    );
    assert_eq!(second.model.namespace_tenant["a"], "a");
    let d = verdict(&second, Kind::Tenant, "d");
    assert_eq!(d.enforced, Enforced::Nothing);
    assert_eq!(d.problems[0].field, "spec.namespaces[1]");
    assert!(!second.model.namespace_tenant.contains_key("d"));
}

#[test]
fn a_refused_tenant_holds_back_its_networks_changes_only() {
    let v1 = format!("{TENANTS}{}", net("c-net", "c", "198.18.3.0/24", ""));
    let first = decide_files(&[("o.yaml", v1)], &[]);
    let bad_tenant = TENANTS.replace(
        "spec: {namespaces: [c]}",
        "spec: {namespaces: [c], quota: {connections: 1}}",
    );
    let v2 = format!("{bad_tenant}{}", net("c-net", "c", "198.18.4.0/24", ""));
    let second = decide_files(&[("o.yaml", v2)], &first.verdicts);
    assert_eq!(
        verdict(&second, Kind::Tenant, "c").enforced,
        Enforced::LastValidVersion
    );
    let n = verdict(&second, Kind::LogicalNetwork, "c-net");
    assert_eq!(n.enforced, Enforced::LastValidVersion);
    assert!(
        n.problem_text().contains("tenant \"c\" is refused"),
        "{n:?}"
    );
    assert_eq!(
        subnet_of(&second, "c-net").as_deref(),
        Some("198.18.3.0/24")
    );
    assert_eq!(second.model.namespace_tenant["c"], "c");
}

#[test]
fn a_peer_naming_a_refused_network_is_inert() {
    let text = format!(
        "{TENANTS}{}{}",
        net(
            "a-web",
            "a",
            "198.18.1.0/24",
            ", isolation: {peers: [{network: a-db}]}"
        ),
        net("a-db", "a", "nonsense", "")
    );
    let acceptance = decide_files(&[("o.yaml", text)], &[]);
    let web = verdict(&acceptance, Kind::LogicalNetwork, "a-web");
    assert!(
        web.accepted() && web.enforced == Enforced::Current,
        "{web:?}"
    );
    let peer = &acceptance.model.logical["a-web"].isolation.peers[0];
    assert_eq!(acceptance.model.peer_rules("a", "a-web", peer), None);
}

#[test]
fn a_subnet_moved_out_of_can_be_taken_in_the_same_reload() {
    let v1 = format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", ""));
    let first = decide_files(&[("o.yaml", v1)], &[]);
    let v2 = format!(
        "{TENANTS}{}{}",
        net("a-net", "a", "198.18.5.0/24", ""),
        net("b-net", "b", "198.18.1.0/24", "")
    );
    let second = decide_files(&[("o.yaml", v2)], &first.verdicts);
    assert!(
        second.all_problems().is_empty(),
        "{:?}",
        second.all_problems()
    );
    assert_eq!(
        subnet_of(&second, "a-net").as_deref(),
        Some("198.18.5.0/24")
    );
    assert_eq!(
        subnet_of(&second, "b-net").as_deref(),
        Some("198.18.1.0/24")
    );
}

#[test]
fn a_change_cannot_take_what_a_refused_change_still_holds() {
    // a-net tries to move (its new version is invalid), b-net wants a-net's subnet.
    let v1 = format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", ""));
    let first = decide_files(&[("o.yaml", v1)], &[]);
    let v2 = format!(
        "{TENANTS}{}{}",
        net(
            "a-net",
            "a",
            "198.18.5.0/24",
            ", isolation: {peers: [{network: nowhere}]}"
        ),
        net("b-net", "b", "198.18.1.0/24", "")
    );
    let second = decide_files(&[("o.yaml", v2)], &first.verdicts);
    assert_eq!(
        subnet_of(&second, "a-net").as_deref(),
        Some("198.18.1.0/24")
    );
    assert_eq!(subnet_of(&second, "b-net"), None);
}

#[test]
fn an_unreadable_file_keeps_its_objects_in_force() {
    let first = decide_files(
        &[
            (
                "a.yaml",
                format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", "")),
            ),
            ("c.yaml", net("c-net", "c", "198.18.3.0/24", "")),
        ],
        &[],
    );
    let second = decide_files(
        &[
            (
                "a.yaml",
                format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", "")),
            ),
            ("c.yaml", "kind: [unclosed".to_owned()),
        ],
        &first.verdicts,
    );
    assert_eq!(
        subnet_of(&second, "c-net").as_deref(),
        Some("198.18.3.0/24")
    );
    assert_eq!(second.problems.len(), 1);
    // Deleting the file deletes the objects.
    let third = decide_files(
        &[(
            "a.yaml",
            format!("{TENANTS}{}", net("a-net", "a", "198.18.1.0/24", "")),
        )],
        &second.verdicts,
    );
    assert_eq!(subnet_of(&third, "c-net"), None);
    assert!(third.verdicts.iter().all(|v| v.name != "c-net"));
}

#[test]
fn a_deleted_tenant_takes_its_networks_with_it() {
    let v1 = format!("{TENANTS}{}", net("c-net", "c", "198.18.3.0/24", ""));
    let first = decide_files(&[("o.yaml", v1)], &[]);
    let without_c = TENANTS.replace("---\napiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {name: c}\nspec: {namespaces: [c]}\n", "");
    let second = decide_files(
        &[(
            "o.yaml",
            format!("{without_c}{}", net("c-net", "c", "198.18.3.0/24", "")),
        )],
        &first.verdicts,
    );
    assert_eq!(subnet_of(&second, "c-net"), None);
    assert_eq!(
        verdict(&second, Kind::LogicalNetwork, "c-net").enforced,
        Enforced::Nothing
    );
}

#[test]
fn consent_withdrawn_cuts_the_peer_without_freezing_anyone() {
    let v1 = format!(
        "{TENANTS}{}{}",
        net(
            "a-net",
            "a",
            "198.18.1.0/24",
            ", isolation: {peers: [{network: b-net}]}"
        ),
        net(
            "b-net",
            "b",
            "198.18.2.0/24",
            ", isolation: {allowFrom: [{tenant: a}]}"
        )
    );
    let first = decide_files(&[("o.yaml", v1)], &[]);
    assert!(
        first.all_problems().is_empty(),
        "{:?}",
        first.all_problems()
    );
    let v2 = format!(
        "{TENANTS}{}{}",
        net(
            "a-net",
            "a",
            "198.18.1.0/24",
            ", isolation: {peers: [{network: b-net}]}"
        ),
        net("b-net", "b", "198.18.2.0/24", "")
    );
    let second = decide_files(&[("o.yaml", v2)], &first.verdicts);
    let a = verdict(&second, Kind::LogicalNetwork, "a-net");
    assert!(
        !a.accepted() && a.problem_text().contains("allowFrom"),
        "{a:?}"
    );
    let peer = &second.model.logical["a-net"].isolation.peers[0];
    assert_eq!(second.model.peer_rules("a", "a-net", peer), None);
    assert_eq!(
        verdict(&second, Kind::LogicalNetwork, "b-net").enforced,
        Enforced::Current
    );
}

#[test]
fn a_second_definition_is_that_objects_problem_only() {
    let first = net("a-net", "a", "198.18.1.0/24", "");
    let second = net("a-net", "a", "198.18.9.0/24", "");
    let acceptance = decide_files(
        &[("1.yaml", format!("{TENANTS}{first}")), ("2.yaml", second)],
        &[],
    );
    assert_eq!(
        subnet_of(&acceptance, "a-net").as_deref(),
        Some("198.18.1.0/24")
    );
    let v = verdict(&acceptance, Kind::LogicalNetwork, "a-net");
    assert!(v.problem_text().contains("defined twice"), "{v:?}");
    assert_eq!(v.enforced, Enforced::Current);
    assert!(
        acceptance.problems.is_empty(),
        "no file-level problem blocks new pods"
    );
}
