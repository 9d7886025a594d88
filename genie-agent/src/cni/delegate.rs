//! Running real CNI plugins as delegates: finding them on `CNI_PATH`, negotiating a version they
//! speak, invoking ADD/DEL/CHECK with the runtime's environment, and reading their results and
//! errors. Also the delegate configuration genie derives for a logical network.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::{self, Command};

/// `PATH` for delegates when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors running a delegate.
#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    /// No plugin binary of that type on `CNI_PATH`.
    #[error("no CNI plugin {plugin:?} in CNI_PATH ({})", .path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))]
    NotFound { plugin: String, path: Vec<PathBuf> },
    /// The plugin could not be started or talked to.
    #[error("running CNI plugin {plugin}: {source}")]
    Io {
        plugin: PathBuf,
        source: std::io::Error,
    },
    /// The plugin reported a CNI error.
    #[error("CNI plugin {plugin} failed with code {}: {}{}", .error.code, .error.msg, if .error.details.is_empty() { String::new() } else { format!(" ({})", .error.details) })]
    Failed {
        plugin: String,
        error: spec::CniError,
    },
    /// The plugin printed something that is not a CNI answer.
    #[error("CNI plugin {plugin} answered something unreadable: {detail}")]
    BadOutput { plugin: String, detail: String },
    /// No version both genie and the plugin speak.
    #[error("CNI plugin {plugin} supports none of genie's versions (it supports {supported:?})")]
    NoCommonVersion {
        plugin: String,
        supported: Vec<String>,
    },
    /// The network's delegate configuration is unusable.
    #[error("network {network}: {message}")]
    Config { network: String, message: String },
}

/// One interface in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// Set for interfaces inside the container; absent for host-side ones.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// One address in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

/// The parts of a (0.3.1 – 1.1.0) ADD result genie uses; `raw` keeps the whole answer for the
/// runtime and for DEL's `prevResult`.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    pub raw: Value,
    pub interfaces: Vec<ResultInterface>,
    pub ips: Vec<ResultIp>,
}

impl AddResult {
    /// Parses a plugin's ADD answer.
    pub fn parse(plugin: &str, raw: Value) -> Result<Self, DelegateError> {
        let bad = |detail: String| DelegateError::BadOutput {
            plugin: plugin.to_owned(),
            detail,
        };
        let interfaces: Vec<ResultInterface> = match raw.get("interfaces") {
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| bad(format!("interfaces: {e}")))?
            }
            None => Vec::new(),
        };
        let ips: Vec<ResultIp> = match raw.get("ips") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("ips: {e}")))?,
            None => Vec::new(),
        };
        Ok(Self {
            raw,
            interfaces,
            ips,
        })
    }

    /// The interface created inside the container under `ifname`.
    pub fn container_interface(&self, ifname: &str) -> Option<&ResultInterface> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && i.sandbox.is_some())
    }

    /// The host-side interface (a veth peer), if the plugin created one: the last interface
    /// without a sandbox (the bridge plugin lists the bridge first, then the veth).
    pub fn host_interface(&self) -> Option<&ResultInterface> {
        self.interfaces.iter().rev().find(|i| i.sandbox.is_none())
    }

    /// The addresses assigned to the container interface `ifname`.
    pub fn addresses_of(&self, ifname: &str) -> Vec<IpNet> {
        let index = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some());
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == index)
            .map(|ip| ip.address)
            .collect()
    }
}

/// Where and for whom a delegate runs.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Directories searched for plugins (`CNI_PATH`).
    pub path: Vec<PathBuf>,
    pub container_id: String,
    /// The container's network namespace (absent for a DEL after the namespace is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: BTreeMap<String, String>,
    /// The network namespace the plugin runs in (the node's): host-side links such as bridges
    /// and veth peers are created there. `None` runs it in the caller's namespace.
    pub host_netns: Option<PathBuf>,
}

/// Finds the plugin binary for `plugin_type` on the search path.
pub fn find_plugin(path: &[PathBuf], plugin_type: &str) -> Result<PathBuf, DelegateError> {
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return Err(DelegateError::NotFound {
            plugin: plugin_type.to_owned(),
            path: path.to_vec(),
        });
    }
    path.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| DelegateError::NotFound {
            plugin: plugin_type.to_owned(),
            path: path.to_vec(),
        })
}

fn run(
    plugin: &Path,
    command: Command,
    invocation: Option<&Invocation>,
    search_path: &[PathBuf],
    config: &Value,
) -> Result<Option<Value>, DelegateError> {
    let io = |source| DelegateError::Io {
        plugin: plugin.to_owned(),
        source,
    };
    let command_name = match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Version => "VERSION",
        Command::Status => "STATUS",
        Command::Gc => "GC",
    };
    let mut process = Process::new(plugin);
    process
        .env_clear()
        // Plugins run tools of the node (portmap runs iptables, bandwidth tc): runtimes give
        // them their own PATH, so does genie. Nothing else of the agent's environment passes.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .env("CNI_COMMAND", command_name)
        .env(
            "CNI_PATH",
            std::env::join_paths(search_path).map_err(|e| io(std::io::Error::other(e)))?,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(inv) = invocation {
        process
            .env("CNI_CONTAINERID", &inv.container_id)
            .env("CNI_IFNAME", &inv.ifname);
        if let Some(netns) = &inv.netns {
            process.env("CNI_NETNS", netns);
        }
        if !inv.args.is_empty() {
            // Plugins refuse keys they do not know unless told to ignore them, as runtimes do.
            let mut args: Vec<String> = vec!["IgnoreUnknown=1".to_owned()];
            args.extend(
                inv.args
                    .iter()
                    .filter(|(k, _)| *k != "IgnoreUnknown")
                    .map(|(k, v)| format!("{k}={v}")),
            );
            process.env("CNI_ARGS", args.join(";"));
        }
    }
    if let Some(host) = invocation.and_then(|inv| inv.host_netns.as_ref()) {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let file = std::fs::File::open(host).map_err(io)?;
        // SAFETY: the closure runs between fork and exec and only calls setns(2), which is
        // async-signal-safe; `file` outlives the spawn below.
        unsafe {
            let fd = file.as_raw_fd();
            process.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = process.spawn().map_err(io)?;
        drop(file);
        return finish(plugin, child, config);
    }
    let child = process.spawn().map_err(io)?;
    finish(plugin, child, config)
}

fn finish(
    plugin: &Path,
    mut child: std::process::Child,
    config: &Value,
) -> Result<Option<Value>, DelegateError> {
    let name = plugin.display().to_string();
    let io = |source| DelegateError::Io {
        plugin: plugin.to_owned(),
        source,
    };
    let input = serde_json::to_vec(config).map_err(|e| io(std::io::Error::other(e)))?;
    // The configuration is written by its own thread while this one collects the output: a
    // plugin may answer before it has read all of stdin (or without reading it at all, when it
    // fails early), and a configuration larger than the pipe would otherwise deadlock against
    // a plugin blocked on writing stdout. A plugin that stops reading makes the write fail
    // with EPIPE; that is no error of its own — its exit status and output say what happened.
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || match stdin.write_all(&input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    });
    let output = child.wait_with_output().map_err(io)?;
    writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the stdin writer panicked")))
        .map_err(io)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let error = serde_json::from_str::<spec::CniError>(&stdout).unwrap_or_else(|_| {
            spec::CniError::new(
                spec::code::DELEGATE_FAILED,
                format!("exited with {}", output.status),
                format!(
                    "{}{}",
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            )
        });
        return Err(DelegateError::Failed {
            plugin: name,
            error,
        });
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout)
        .map(Some)
        .map_err(|e| DelegateError::BadOutput {
            plugin: name,
            detail: format!("{e}: {stdout}"),
        })
}

/// The newest version both genie (`ours`) and the plugin speak.
pub fn negotiate_version(
    plugin: &Path,
    search_path: &[PathBuf],
    ours: &str,
) -> Result<String, DelegateError> {
    let answer = run(
        plugin,
        Command::Version,
        None,
        search_path,
        &json!({ "cniVersion": ours }),
    )?;
    let supported: Vec<String> = answer
        .as_ref()
        .and_then(|a| a.get("supportedVersions"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let mut candidates: Vec<String> = supported
        .iter()
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .cloned()
        .collect();
    candidates.sort_by(|a, b| {
        if spec::version_less(a, b) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    spec::negotiate(ours, &candidates).ok_or_else(|| DelegateError::NoCommonVersion {
        plugin: plugin.display().to_string(),
        supported,
    })
}

/// ADD through a delegate; `config` must carry the negotiated `cniVersion`.
pub fn add(
    plugin: &Path,
    invocation: &Invocation,
    config: &Value,
) -> Result<AddResult, DelegateError> {
    let raw = run(
        plugin,
        Command::Add,
        Some(invocation),
        &invocation.path,
        config,
    )?
    .ok_or_else(|| DelegateError::BadOutput {
        plugin: plugin.display().to_string(),
        detail: "ADD printed no result".to_owned(),
    })?;
    AddResult::parse(&plugin.display().to_string(), raw)
}

/// DEL through a delegate, with the cached ADD result as `prevResult`.
pub fn del(
    plugin: &Path,
    invocation: &Invocation,
    config: &Value,
    prev_result: Option<&Value>,
) -> Result<(), DelegateError> {
    let mut config = config.clone();
    if let (Some(prev), Some(object)) = (prev_result, config.as_object_mut()) {
        object.insert("prevResult".to_owned(), prev.clone());
    }
    run(
        plugin,
        Command::Del,
        Some(invocation),
        &invocation.path,
        &config,
    )
    .map(|_| ())
}

/// CHECK through a delegate, with its ADD result as `prevResult`. Configurations older than
/// 0.4.0 have no CHECK: they pass without asking the plugin.
pub fn check(
    plugin: &Path,
    invocation: &Invocation,
    config: &Value,
    prev_result: &Value,
) -> Result<(), DelegateError> {
    let version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if spec::version_less(version, Command::Check.since()) {
        return Ok(());
    }
    let mut config = config.clone();
    if let Some(object) = config.as_object_mut() {
        object.insert("prevResult".to_owned(), prev_result.clone());
    }
    run(
        plugin,
        Command::Check,
        Some(invocation),
        &invocation.path,
        &config,
    )
    .map(|_| ())
}

pub use crate::model::check::plugin_list;

/// The configuration of a plugin chained after a network's first one: the plugin's own object
/// with the list's `name` and `cniVersion` (CNI spec, "Network Configuration Lists").
pub fn chained_config(network: &str, plugin: &Value, cni_version: &str) -> Value {
    let mut config = plugin.clone();
    if let Some(object) = config.as_object_mut() {
        object.insert("cniVersion".to_owned(), json!(cni_version));
        object.insert("name".to_owned(), json!(network));
    }
    config
}

/// Adds `runtimeConfig` with the runtime's values for exactly the capabilities `config`
/// declares (CNI spec, "Deriving runtimeConfig"); a plugin that declares none gets none.
pub fn add_runtime_config(config: &mut Value, runtime: Option<&Value>) {
    let declared: Vec<String> = config
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let Some(runtime) = runtime.and_then(Value::as_object) else {
        return;
    };
    let passed: serde_json::Map<String, Value> = runtime
        .iter()
        .filter(|(k, _)| declared.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !passed.is_empty()
        && let Some(object) = config.as_object_mut()
    {
        object.insert("runtimeConfig".to_owned(), Value::Object(passed));
    }
}

/// The delegate configuration for one network: its `plugin` object with `cniVersion` and
/// `name`, and — unless the plugin brings its own — host-local IPAM over the network's
/// subnets with its state in `ipam_dir`. Only the default network may install a default route.
pub fn network_config(
    network: &str,
    plugin: Option<&Value>,
    subnets: &[IpNet],
    cni_version: &str,
    is_default: bool,
    ipam_dir: &Path,
) -> Result<Value, DelegateError> {
    let config_err = |message: String| DelegateError::Config {
        network: network.to_owned(),
        message,
    };
    let Some(Value::Object(plugin)) = plugin else {
        return Err(config_err(
            "has no `plugin` (a delegate CNI configuration object)".to_owned(),
        ));
    };
    let mut config = plugin.clone();
    match config.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => {}
        _ => return Err(config_err("its `plugin` has no `type`".to_owned())),
    }
    config.insert("cniVersion".to_owned(), json!(cni_version));
    config.insert("name".to_owned(), json!(network));
    if !is_default {
        // A secondary network must never take the pod's default route.
        config.insert("isDefaultGateway".to_owned(), json!(false));
    }
    if !config.contains_key("ipam") {
        if subnets.is_empty() {
            return Err(config_err(
                "has no subnet to allocate addresses from".to_owned(),
            ));
        }
        let ranges: Vec<Value> = subnets
            .iter()
            .map(|s| json!([{ "subnet": s.to_string() }]))
            .collect();
        let mut ipam = json!({
            "type": "host-local",
            "ranges": ranges,
            "dataDir": ipam_dir.join(network),
        });
        if is_default {
            ipam["routes"] = json!([{ "dst": "0.0.0.0/0" }]);
        }
        config.insert("ipam".to_owned(), ipam);
        // genie chose host-local, which takes requested addresses (`runtimeConfig.ips`).
        let capabilities = config.entry("capabilities").or_insert_with(|| json!({}));
        if let Some(c) = capabilities.as_object_mut() {
            c.insert("ips".to_owned(), json!(true));
        }
    } else if let Some(ipam) = config.get_mut("ipam").and_then(Value::as_object_mut)
        && ipam.get("type").and_then(Value::as_str) == Some("host-local")
        && !ipam.contains_key("dataDir")
    {
        // Leases live with the rest of genie's node state, not in host-local's shared default.
        ipam.insert("dataDir".to_owned(), json!(ipam_dir.join(network)));
    }
    if !is_default
        && let Some(routes) = config
            .get_mut("ipam")
            .and_then(|i| i.get_mut("routes"))
            .and_then(Value::as_array_mut)
    {
        routes.retain(|r| {
            !matches!(
                r.get("dst").and_then(Value::as_str),
                Some("0.0.0.0/0" | "::/0")
            )
        });
    }
    Ok(Value::Object(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondary_networks_get_host_local_ipam_and_no_default_route() {
        let plugin = json!({"type": "bridge", "bridge": "br-red", "isGateway": true, "isDefaultGateway": true});
        let subnets: Vec<IpNet> = vec!["198.18.1.0/24".parse().unwrap()];
        let c = network_config(
            "red-web",
            Some(&plugin),
            &subnets,
            "1.0.0",
            false,
            Path::new("/var/lib/genie/ipam"),
        )
        .unwrap();
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["name"], "red-web");
        assert_eq!(c["isDefaultGateway"], false);
        assert_eq!(c["ipam"]["type"], "host-local");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "198.18.1.0/24");
        assert_eq!(c["ipam"]["dataDir"], "/var/lib/genie/ipam/red-web");
        assert!(c["ipam"].get("routes").is_none());
        let d = network_config(
            "default",
            Some(&plugin),
            &subnets,
            "1.0.0",
            true,
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(d["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(d["isDefaultGateway"], true);
    }

    #[test]
    fn a_plugin_with_its_own_ipam_keeps_it_without_default_routes() {
        let plugin = json!({"type": "macvlan", "master": "up0", "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16"}]}});
        let c =
            network_config("data", Some(&plugin), &[], "0.4.0", false, Path::new("/x")).unwrap();
        assert_eq!(c["ipam"]["type"], "static");
        assert_eq!(c["ipam"]["routes"], json!([{"dst": "198.19.0.0/16"}]));
    }

    #[test]
    fn unusable_plugin_settings_are_errors() {
        assert!(
            network_config("n", None, &[], "1.0.0", false, Path::new("/x"))
                .unwrap_err()
                .to_string()
                .contains("no `plugin`")
        );
        assert!(
            network_config(
                "n",
                Some(&json!({"bridge": "b"})),
                &[],
                "1.0.0",
                false,
                Path::new("/x")
            )
            .unwrap_err()
            .to_string()
            .contains("no `type`")
        );
        assert!(
            network_config(
                "n",
                Some(&json!({"type": "bridge"})),
                &[],
                "1.0.0",
                false,
                Path::new("/x")
            )
            .unwrap_err()
            .to_string()
            .contains("no subnet")
        );
        assert!(matches!(
            find_plugin(&[PathBuf::from("/nonexistent")], "bridge"),
            Err(DelegateError::NotFound { .. })
        ));
        assert!(matches!(
            find_plugin(&[PathBuf::from("/usr/bin")], "../bin/sh"),
            Err(DelegateError::NotFound { .. })
        ));
    }

    #[test]
    fn results_of_old_and_new_versions_parse() {
        let r = AddResult::parse("bridge", json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "br0", "mac": "aa:bb:cc:dd:ee:01"}, {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"}, {"name": "eth1", "mac": "02:00:00:00:00:09", "sandbox": "/run/netns/p"}],
            "ips": [{"version": "4", "address": "198.18.1.5/24", "gateway": "198.18.1.1", "interface": 2}]
        })).unwrap();
        assert_eq!(
            r.container_interface("eth1").unwrap().mac.as_deref(),
            Some("02:00:00:00:00:09")
        );
        assert_eq!(r.host_interface().unwrap().name, "veth1");
        assert_eq!(
            r.addresses_of("eth1"),
            vec!["198.18.1.5/24".parse::<IpNet>().unwrap()]
        );
    }

    /// A plugin that fails before reading its configuration (as a Go plugin does when its
    /// environment is wrong) must be reported by its own answer, not by the EPIPE genie meets
    /// writing the configuration; a configuration larger than the pipe makes that certain.
    #[test]
    fn a_plugin_that_exits_without_reading_stdin_is_reported_by_its_own_answer() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("genie-delegate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let plugin = dir.join("early-exit");
        std::fs::write(
            &plugin,
            "#!/bin/sh\necho '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"bad config\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let invocation = Invocation {
            path: vec![dir.clone()],
            container_id: "c1".to_owned(),
            netns: None,
            ifname: "eth1".to_owned(),
            args: BTreeMap::new(),
            host_netns: None,
        };
        let config =
            json!({"cniVersion": "1.0.0", "type": "early-exit", "padding": "x".repeat(1 << 20)});
        for _ in 0..5 {
            match add(&plugin, &invocation, &config) {
                Err(DelegateError::Failed { error, .. }) => {
                    assert_eq!((error.code, error.msg.as_str()), (7, "bad config"));
                }
                other => panic!("expected the plugin's own error, got {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
