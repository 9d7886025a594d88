//! The handler against an in-memory agent and scripted delegates: ADD undoes everything after
//! a failure at each step, DEL and GC tear down through the agent, CHECK reports each kind of
//! breakage. No root: delegates run in the caller's namespace and touch only files.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde_json::{Value, json};

use super::*;
use crate::endpoint::{Endpoint, EndpointRequest};

/// The in-memory agent: registrations, what was taken out again, and failures to inject.
#[derive(Default)]
struct Fake {
    plan: Vec<PlannedAttachment>,
    refuse_plan: Option<CniError>,
    /// Registration number (0-based) that fails.
    fail_register: Option<usize>,
    broken: BTreeSet<u32>,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    registered: BTreeMap<u32, Endpoint>,
    registrations: usize,
    forgotten: Vec<u32>,
    released: Vec<u32>,
    reservations: BTreeSet<String>,
    published: Vec<String>,
}

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl Backend for Fake {
    fn ready(&self) -> bool {
        true
    }

    fn plan(&self, _: &str, _: &str, container: &str) -> Result<Vec<PlannedAttachment>, CniError> {
        if let Some(e) = &self.refuse_plan {
            return Err(e.clone());
        }
        self.state().reservations.insert(container.to_owned());
        Ok(self.plan.clone())
    }

    fn release_reservation(&self, container: &str) {
        self.state().reservations.remove(container);
    }

    fn register(&self, request: EndpointRequest) -> Result<u32, CniError> {
        let mut state = self.state();
        let n = state.registrations;
        state.registrations += 1;
        if self.fail_register == Some(n) {
            return Err(CniError::new(code::ATTACH_FAILED, "injected", ""));
        }
        let id = n as u32 + 1;
        state.registered.insert(
            id,
            Endpoint {
                id,
                request,
                ifindex: 0,
                pod_key: 0,
                recovered: None,
                bridge: None,
                link_local: Vec::new(),
            },
        );
        Ok(id)
    }

    fn forget(&self, id: u32) -> Result<(), CniError> {
        let mut state = self.state();
        state.registered.remove(&id);
        state.forgotten.push(id);
        Ok(())
    }

    fn release_links(&self, id: u32) -> Result<(), CniError> {
        self.state().released.push(id);
        Ok(())
    }

    fn endpoints_of_container(&self, container: &str) -> Vec<Endpoint> {
        self.state()
            .registered
            .values()
            .filter(|e| e.request.container_id.as_deref() == Some(container))
            .cloned()
            .collect()
    }

    fn network_delegate(&self, network: &str, interface: &str) -> Option<PlannedAttachment> {
        self.plan
            .iter()
            .find(|p| p.network == network)
            .map(|p| PlannedAttachment {
                interface: interface.to_owned(),
                ..p.clone()
            })
    }

    fn check_endpoint(&self, id: u32) -> Result<(), String> {
        if self.broken.contains(&id) {
            return Err("genie's egress program is not attached to veth-x".to_owned());
        }
        if self.state().registered.contains_key(&id) {
            Ok(())
        } else {
            Err("is not registered as a genie endpoint".to_owned())
        }
    }

    fn publish_network_status(&self, namespace: &str, pod: &str, _: &Value) {
        self.state().published.push(format!("{namespace}/{pod}"));
    }
}

/// A scratch directory with a scripted plugin `fake` (and `broken`, which fails ADD): ADD
/// creates `live/<container>-<ifname>` and answers an address, DEL removes it, CHECK fails
/// when it is gone.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("genie-handler-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("live")).unwrap();
        let live = dir.join("live");
        let script = format!(
            r#"#!/bin/sh
cat >/dev/null
live="{live}/$CNI_CONTAINERID-$CNI_IFNAME"
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}}' ;;
ADD)
  if [ "$(basename "$0")" = broken ]; then
    echo '{{"cniVersion":"1.0.0","code":7,"msg":"injected ADD failure"}}'; exit 1
  fi
  touch "$live"
  echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"'"$CNI_IFNAME"'","sandbox":"/nowhere"}}],"ips":[{{"address":"198.18.1.5/24","interface":0}}]}}' ;;
DEL) rm -f "$live" ;;
CHECK)
  if [ ! -e "$live" ]; then echo '{{"cniVersion":"1.0.0","code":999,"msg":"interface gone"}}'; exit 1; fi ;;
esac
"#,
            live = live.display()
        );
        for name in ["fake", "broken"] {
            let path = dir.join("bin").join(name);
            std::fs::write(&path, &script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A plugin for the end of a chain: logs each call with the configuration it got and
        // passes its prevResult on with an extra DNS entry (what `tuning` or `portmap` do:
        // act on the interface, return the result).
        let chained = format!(
            r#"#!/usr/bin/env python3
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}}))
    sys.exit(0)
live = os.path.exists("{live}/" + os.environ["CNI_CONTAINERID"] + "-" + os.environ["CNI_IFNAME"])
with open("{log}", "a") as log:
    log.write(json.dumps({{"cmd": cmd, "conf": conf, "live": live}}) + "\n")
if cmd == "ADD":
    out = dict(conf["prevResult"])
    out["dns"] = {{"nameservers": ["198.18.0.53"]}}
    print(json.dumps(out))
"#,
            log = dir.join("chain.log").display(),
            live = dir.join("live").display()
        );
        let path = dir.join("bin").join("chained");
        std::fs::write(&path, chained).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A first plugin that records the configuration it got (`requests.log`) and otherwise
        // behaves as `fake`.
        let recorder = format!(
            r#"#!/bin/sh
conf=$(cat)
if [ "$CNI_COMMAND" = ADD ]; then printf '%s\n' "$conf" >> "{requests}"; fi
printf '%s' "$conf" | exec "{fake}"
"#,
            requests = dir.join("requests.log").display(),
            fake = dir.join("bin/fake").display()
        );
        let path = dir.join("bin").join("recorder");
        std::fs::write(&path, recorder).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// The chained plugin's calls: (command, configuration, whether the first plugin's
    /// interface existed then).
    fn chain_log(&self) -> Vec<(String, Value, bool)> {
        std::fs::read_to_string(self.dir.join("chain.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["cmd"].as_str().unwrap().to_owned(),
                    v["conf"].clone(),
                    v["live"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn handler(&self) -> CniHandler {
        CniHandler::new(&self.dir.join("state"), Path::new("/nowhere/node"))
            .unwrap()
            .delegates_in_caller_netns()
    }

    /// Interfaces the delegates have made and not removed.
    fn live(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join("live"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn env(&self, command: Command, container: &str) -> Env {
        Env {
            command,
            container_id: Some(container.to_owned()),
            netns: None,
            ifname: Some("eth0".to_owned()),
            args: BTreeMap::from([
                ("K8S_POD_NAMESPACE".to_owned(), "red".to_owned()),
                ("K8S_POD_NAME".to_owned(), container.to_owned()),
            ]),
            path: vec![self.dir.join("bin")],
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn conf(extra: Value) -> NetConf {
    let mut value = json!({
        "cniVersion": "1.0.0",
        "name": "genie",
        "type": "genie-cni",
        "defaultNetwork": {"type": "fake"},
    });
    if let (Some(v), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    serde_json::from_value(value).unwrap()
}

fn attachment(network: &str, interface: &str, plugin: &str) -> PlannedAttachment {
    PlannedAttachment {
        network: network.to_owned(),
        interface: interface.to_owned(),
        plugin: (network != "default").then(|| json!({"type": plugin})),
        subnets: vec!["198.18.1.0/24".parse().unwrap()],
        bandwidth: None,
        ips: Vec::new(),
        mac: None,
    }
}

/// Three attachments; the one at `broken` (if any) uses the failing plugin.
fn three(broken: Option<usize>) -> Vec<PlannedAttachment> {
    ["default", "red-a", "red-b"]
        .iter()
        .zip(["eth0", "net1", "net2"])
        .enumerate()
        .map(|(i, (network, interface))| {
            attachment(
                network,
                interface,
                if broken == Some(i) { "broken" } else { "fake" },
            )
        })
        .collect()
}

/// Nothing of a container remains: no interface, endpoint, reservation or cache entry, and
/// every endpoint that was registered was taken out of the maps before its links went.
fn assert_nothing_left(scratch: &Scratch, handler: &CniHandler, agent: &Fake, container: &str) {
    assert_eq!(
        scratch.live(),
        Vec::<String>::new(),
        "a delegate's interface is left"
    );
    let state = agent.state();
    assert!(state.registered.is_empty(), "an endpoint is left");
    assert!(
        state.reservations.is_empty(),
        "the quota reservation is left"
    );
    let mut forgotten = state.forgotten.clone();
    let mut released = state.released.clone();
    forgotten.sort_unstable();
    released.sort_unstable();
    assert_eq!(
        forgotten, released,
        "links released without the endpoint forgotten first"
    );
    assert!(
        handler.cache.load(container).unwrap().is_none(),
        "the cache entry is left"
    );
}

#[test]
fn add_then_del_leaves_nothing() {
    let scratch = Scratch::new("add-del");
    let handler = scratch.handler();
    let agent = Fake {
        plan: three(None),
        ..Fake::default()
    };
    let out = handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
        .unwrap()
        .unwrap();
    assert_eq!(out["interfaces"][0]["name"], "eth0");
    assert_eq!(scratch.live(), ["c1-eth0", "c1-net1", "c1-net2"]);
    assert_eq!(agent.state().registered.len(), 3);
    assert_eq!(agent.state().published, ["red/c1"]);
    assert!(
        agent.state().reservations.is_empty(),
        "the reservation outlived the ADD"
    );
    handler
        .handle(&agent, &scratch.env(Command::Del, "c1"), &conf(json!({})))
        .unwrap();
    assert_nothing_left(&scratch, &handler, &agent, "c1");
    // DEL again: still success (CNI spec).
    handler
        .handle(&agent, &scratch.env(Command::Del, "c1"), &conf(json!({})))
        .unwrap();
}

#[test]
fn a_refused_plan_creates_nothing() {
    let scratch = Scratch::new("refused");
    let handler = scratch.handler();
    let agent = Fake {
        plan: three(None),
        refuse_plan: Some(CniError::new(code::QUOTA_REACHED, "quota", "")),
        ..Fake::default()
    };
    let e = handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
        .unwrap_err();
    assert_eq!(e.code, code::QUOTA_REACHED);
    assert_nothing_left(&scratch, &handler, &agent, "c1");
    assert_eq!(agent.state().registrations, 0);
}

#[test]
fn a_missing_plugin_fails_before_anything_runs() {
    let scratch = Scratch::new("missing");
    let handler = scratch.handler();
    let mut plan = three(None);
    plan[2].plugin = Some(json!({"type": "no-such-plugin"}));
    let agent = Fake {
        plan,
        ..Fake::default()
    };
    let e = handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
        .unwrap_err();
    assert!(
        e.msg.contains("red-b") && e.msg.contains("no-such-plugin"),
        "{e:?}"
    );
    assert_nothing_left(&scratch, &handler, &agent, "c1");
    assert_eq!(agent.state().registrations, 0, "nothing was registered");
}

#[test]
fn a_failing_delegate_at_each_position_is_rolled_back() {
    for broken in 0..3 {
        let scratch = Scratch::new(&format!("delegate-{broken}"));
        let handler = scratch.handler();
        let agent = Fake {
            plan: three(Some(broken)),
            ..Fake::default()
        };
        let mut conf = conf(json!({}));
        if broken == 0 {
            conf.default_network = Some(json!({"type": "broken"}));
        }
        let e = handler
            .handle(&agent, &scratch.env(Command::Add, "c1"), &conf)
            .unwrap_err();
        assert_eq!(e.code, 7, "the plugin's own code: {e:?}");
        assert!(e.msg.contains("injected ADD failure"), "{e:?}");
        assert_nothing_left(&scratch, &handler, &agent, "c1");
        assert_eq!(agent.state().registrations, broken, "attachment {broken}");
    }
}

#[test]
fn a_refused_registration_at_each_position_is_rolled_back() {
    for failing in 0..3 {
        let scratch = Scratch::new(&format!("register-{failing}"));
        let handler = scratch.handler();
        let agent = Fake {
            plan: three(None),
            fail_register: Some(failing),
            ..Fake::default()
        };
        let e = handler
            .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
            .unwrap_err();
        assert_eq!(e.code, code::ATTACH_FAILED);
        assert!(e.msg.starts_with("network "), "names the attachment: {e:?}");
        // The failed attachment's own interface went too.
        assert_nothing_left(&scratch, &handler, &agent, "c1");
        assert_eq!(agent.state().forgotten.len(), failing);
    }
}

#[test]
fn gc_removes_exactly_the_attachments_not_listed() {
    let scratch = Scratch::new("gc");
    let handler = scratch.handler();
    let agent = Fake {
        plan: vec![attachment("default", "eth0", "fake")],
        ..Fake::default()
    };
    for c in ["keep", "stale"] {
        handler
            .handle(&agent, &scratch.env(Command::Add, c), &conf(json!({})))
            .unwrap();
    }
    let gc =
        conf(json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}));
    handler
        .handle(&agent, &scratch.env(Command::Gc, "keep"), &gc)
        .unwrap();
    assert_eq!(scratch.live(), ["keep-eth0"]);
    assert!(handler.cache.load("stale").unwrap().is_none());
    assert!(handler.cache.load("keep").unwrap().is_some());
    assert_eq!(agent.state().registered.len(), 1);
    // Without the list GC refuses and removes nothing.
    let e = handler
        .handle(&agent, &scratch.env(Command::Gc, "keep"), &conf(json!({})))
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
    assert_eq!(scratch.live(), ["keep-eth0"]);
}

#[test]
fn check_reports_each_breakage() {
    let scratch = Scratch::new("check");
    let handler = scratch.handler();
    let mut agent = Fake {
        plan: three(None),
        ..Fake::default()
    };
    let check = |agent: &Fake, c: &str| {
        handler.handle(agent, &scratch.env(Command::Check, c), &conf(json!({})))
    };
    let e = check(&agent, "c1").unwrap_err();
    assert_eq!(e.code, code::UNKNOWN_CONTAINER);
    handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
        .unwrap();
    check(&agent, "c1").unwrap();
    // A program detached from the second endpoint.
    agent.broken.insert(2);
    let e = check(&agent, "c1").unwrap_err();
    assert_eq!(e.code, code::CHECK_FAILED);
    assert!(
        e.msg.contains("red-a") && e.msg.contains("not attached"),
        "{e:?}"
    );
    agent.broken.clear();
    // The delegate's own CHECK fails: its code passes through.
    std::fs::remove_file(scratch.dir.join("live/c1-net2")).unwrap();
    let e = check(&agent, "c1").unwrap_err();
    assert!(e.msg.contains("interface gone"), "{e:?}");
    // An endpoint the agent lost.
    std::fs::write(scratch.dir.join("live/c1-net2"), "").unwrap();
    agent.forget(1).unwrap();
    let e = check(&agent, "c1").unwrap_err();
    assert_eq!(e.code, code::CHECK_FAILED);
    assert!(e.msg.contains("not registered"), "{e:?}");
}

#[test]
fn a_chain_passes_each_result_on_and_is_deleted_in_reverse() {
    let scratch = Scratch::new("chain");
    let handler = scratch.handler();
    let mut plan = vec![
        attachment("default", "eth0", "fake"),
        attachment("red-a", "net1", "fake"),
    ];
    // A logical network whose plugin is a list (macvlan + tuning style).
    plan[1].plugin = Some(json!([{"type": "fake"}, {"type": "chained", "sysctl": {"x": "1"}}]));
    let agent = Fake {
        plan,
        ..Fake::default()
    };
    // The runtime's interface: a primary embedded as a list whose second plugin declares
    // portMappings, the way kindnet's ptp + portmap is.
    let conf = conf(json!({
        "defaultNetwork": {"name": "kindnet", "cniVersion": "0.3.1", "plugins": [
            {"type": "fake"},
            {"type": "chained", "capabilities": {"portMappings": true}}
        ]},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1000000}
        }
    }));
    let out = handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf)
        .unwrap()
        .unwrap();
    // The runtime gets the chain's last result.
    assert_eq!(out["dns"]["nameservers"][0], "198.18.0.53", "{out}");
    let log = scratch.chain_log();
    assert_eq!(log.len(), 2, "{log:?}");
    let (primary, secondary) = (&log[0].1, &log[1].1);
    assert!(
        log[0].2 && log[1].2,
        "the first plugin ran before the chained one"
    );
    assert_eq!(
        primary["name"], "kindnet",
        "the embedded list keeps its name"
    );
    assert_eq!(primary["prevResult"]["ips"][0]["address"], "198.18.1.5/24");
    assert_eq!(
        primary["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
        "only the declared capability reaches the plugin"
    );
    assert!(
        secondary.get("runtimeConfig").is_none(),
        "nothing for a secondary interface"
    );
    assert_eq!(secondary["sysctl"]["x"], "1");
    // The chain speaks the newest version every plugin of it does.
    assert_eq!(primary["cniVersion"], "1.0.0");
    // The cached result is the chain's: CHECK and DEL get it as prevResult.
    handler
        .handle(&agent, &scratch.env(Command::Check, "c1"), &conf)
        .unwrap();
    handler
        .handle(&agent, &scratch.env(Command::Del, "c1"), &conf)
        .unwrap();
    let log = scratch.chain_log();
    let commands: Vec<&str> = log.iter().map(|(c, ..)| c.as_str()).collect();
    assert_eq!(commands, ["ADD", "ADD", "CHECK", "CHECK", "DEL", "DEL"]);
    for (_, conf, _) in &log[2..] {
        assert_eq!(conf["prevResult"]["dns"]["nameservers"][0], "198.18.0.53");
    }
    // DEL in reverse: the chained plugin runs while the first plugin's interface still
    // exists (its DEL comes after), then everything is gone.
    assert!(log[4..].iter().all(|(_, _, live)| *live), "{log:?}");
    assert_nothing_left(&scratch, &handler, &agent, "c1");
}

#[test]
fn npwg_ips_and_mac_reach_the_plugins_that_declare_them_or_refuse_the_add() {
    let scratch = Scratch::new("requests");
    let handler = scratch.handler();
    let mut plan = vec![
        attachment("default", "eth0", "fake"),
        attachment("red-a", "net1", "recorder"),
    ];
    plan[1].ips = vec!["198.18.1.40/24".to_owned()];
    plan[1].mac = Some("02:00:00:00:00:05".to_owned());
    // Declares `mac`; `ips` comes through the host-local IPAM genie derives.
    plan[1].plugin = Some(json!({"type": "recorder", "capabilities": {"mac": true}}));
    let agent = Fake {
        plan: plan.clone(),
        ..Fake::default()
    };
    handler
        .handle(&agent, &scratch.env(Command::Add, "c1"), &conf(json!({})))
        .unwrap();
    let got: Value = serde_json::from_str(
        std::fs::read_to_string(scratch.dir.join("requests.log"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        got["runtimeConfig"],
        json!({"ips": ["198.18.1.40/24"], "mac": "02:00:00:00:00:05"}),
        "{got}"
    );
    handler
        .handle(&agent, &scratch.env(Command::Del, "c1"), &conf(json!({})))
        .unwrap();

    // A plugin with its own IPAM that declares nothing: the request is refused, nothing made.
    let mut refused = plan;
    refused[1].plugin = Some(json!({"type": "recorder", "ipam": {"type": "static"}}));
    let agent = Fake {
        plan: refused,
        ..Fake::default()
    };
    let e = handler
        .handle(&agent, &scratch.env(Command::Add, "c2"), &conf(json!({})))
        .unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_REQUEST, "{e:?}");
    assert!(e.msg.contains("red-a") && e.msg.contains("`ips`"), "{e:?}");
    assert_nothing_left(&scratch, &handler, &agent, "c2");
    assert_eq!(agent.state().registrations, 0);
}
