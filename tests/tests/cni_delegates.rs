//! genie's delegate runner against Debian's real CNI plugins: ADD creates the pod interface
//! with an address from the network's subnet, host-side links stay in the node namespace, DEL
//! removes the interface and releases the address.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use genie_agent::cni::delegate::{self, Invocation};
use genie_tests::{Topology, topology::Netns};
use ipnet::IpNet;

/// Where Debian's `containernetworking-plugins` installs the plugins.
const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";

fn links(netns: Option<&Netns>) -> String {
    let out = match netns {
        Some(ns) => ns.ip(&["-o", "link"]).unwrap(),
        None => Command::new("ip").args(["-o", "link"]).output().unwrap(),
    };
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "privileged: creates namespaces and runs CNI plugins; run `cargo xtask test`"]
fn bridge_delegate_adds_and_deletes_an_interface_in_the_pod() {
    let topo = Topology::new().unwrap();
    let pod = Netns::create(format!("{}-cnipod", topo.base()), false).unwrap();
    let ipam_dir = std::env::temp_dir().join(format!("{}-ipam", topo.base()));
    let path = vec![PathBuf::from(DEBIAN_CNI_PATH)];
    let plugin = delegate::find_plugin(&path, "bridge").unwrap();
    // Debian's plugins stop at 1.0.0: genie negotiates down from 1.1.0.
    let version = delegate::negotiate_version(&plugin, &path, "1.1.0").unwrap();
    assert_eq!(version, "1.0.0");
    let subnet: IpNet = "198.18.5.0/24".parse().unwrap();
    let config = delegate::network_config(
        "red-web",
        Some(&serde_json::json!({"type": "bridge", "bridge": "gbr-red", "isGateway": true})),
        &[subnet],
        &version,
        false,
        &ipam_dir,
    )
    .unwrap();
    let invocation = Invocation {
        path: path.clone(),
        container_id: "cafe01".to_owned(),
        netns: Some(pod.path()),
        ifname: "eth1".to_owned(),
        args: BTreeMap::from([("K8S_POD_NAMESPACE".to_owned(), "red".to_owned())]),
        host_netns: Some(topo.node().path()),
    };
    let root_links_before = links(None);

    let result = delegate::add(&plugin, &invocation, &config).unwrap();
    let addresses = result.addresses_of("eth1");
    assert_eq!(addresses.len(), 1, "{:?}", result.raw);
    assert!(
        subnet.contains(&addresses[0].addr()),
        "{addresses:?} outside {subnet}"
    );
    let host = result
        .host_interface()
        .expect("a host-side veth")
        .name
        .clone();
    assert!(
        links(Some(topo.node())).contains(&host),
        "the veth peer lives in the node namespace"
    );
    assert!(
        links(Some(topo.node())).contains("gbr-red"),
        "the bridge lives in the node namespace"
    );
    let pod_addrs = String::from_utf8_lossy(
        &pod.ip(&["-o", "addr", "show", "dev", "eth1"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(pod_addrs.contains(&addresses[0].to_string()), "{pod_addrs}");
    let routes = String::from_utf8_lossy(&pod.ip(&["route"]).unwrap().stdout).into_owned();
    assert!(
        !routes.contains("default"),
        "a secondary network installed a default route: {routes}"
    );
    assert_eq!(
        links(None),
        root_links_before,
        "nothing was added to the root namespace"
    );
    let leases = std::fs::read_dir(ipam_dir.join("red-web")).unwrap().count();
    assert!(leases >= 1, "host-local recorded the lease");

    delegate::del(&plugin, &invocation, &config, Some(&result.raw)).unwrap();
    assert!(
        !links(Some(&pod)).contains("eth1"),
        "DEL removes the pod interface"
    );
    let lease_files: Vec<_> = std::fs::read_dir(ipam_dir.join("red-web"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(
        lease_files.is_empty(),
        "DEL releases the address: {lease_files:?}"
    );
    // DEL again, and DEL after the namespace is gone, still succeed (CNI spec: idempotent).
    delegate::del(&plugin, &invocation, &config, Some(&result.raw)).unwrap();
    let gone = Invocation {
        netns: None,
        ..invocation.clone()
    };
    drop(pod);
    delegate::del(&plugin, &gone, &config, Some(&result.raw)).unwrap();
    let _ = std::fs::remove_dir_all(&ipam_dir);
}

#[test]
#[ignore = "privileged: creates namespaces and runs CNI plugins; run `cargo xtask test`"]
fn a_failing_delegate_reports_its_cni_error() {
    let topo = Topology::new().unwrap();
    let path = vec![PathBuf::from(DEBIAN_CNI_PATH)];
    let plugin = delegate::find_plugin(&path, "macvlan").unwrap();
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "data",
        "type": "macvlan",
        "master": "no-such-uplink",
        "ipam": {"type": "host-local", "subnet": "198.18.6.0/24", "dataDir": std::env::temp_dir().join(format!("{}-ipam", topo.base()))},
    });
    let pod = Netns::create(format!("{}-cnipod", topo.base()), false).unwrap();
    let invocation = Invocation {
        path,
        container_id: "cafe02".to_owned(),
        netns: Some(pod.path()),
        ifname: "eth1".to_owned(),
        args: BTreeMap::new(),
        host_netns: Some(topo.node().path()),
    };
    let err = delegate::add(&plugin, &invocation, &config).unwrap_err();
    let text = err.to_string();
    let delegate::DelegateError::Failed { error, .. } = err else {
        panic!("not a plugin failure: {text}")
    };
    // The plugin's own code and message come through unchanged.
    assert_eq!(error.code, 999, "{text}");
    assert!(error.msg.contains("Link not found"), "{text}");
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-ipam", topo.base())));
}
