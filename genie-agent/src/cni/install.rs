//! `genie install-cni`: what the DaemonSet's init container does on each node — put
//! `genie-cni` into the CNI binary directory and a configuration in front of the cluster's own
//! (primary) one, which becomes genie's default network (`eth0` keeps working as before).
//!
//! The file written holds the agent's socket path and the primary network's plugin
//! configuration as found in the same directory: nothing that was not already there, and no
//! credentials (genie-cni talks to the local agent only).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

/// The configuration genie writes; `00-` sorts before every usual primary configuration, so the
/// runtime picks it.
pub const CONF_NAME: &str = "00-genie.conflist";

/// Errors of `genie install-cni`, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no primary CNI configuration (*.conf, *.conflist, *.json) in {dir}")]
    NoPrimary { dir: PathBuf },
    #[error("{path}: {message}")]
    BadPrimary { path: PathBuf, message: String },
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub config: PathBuf,
    /// The configuration file that became the default network.
    pub primary: PathBuf,
    /// Whether genie's configuration changed (a rerun over the same primary writes nothing).
    pub changed: bool,
}

/// Copies `genie_cni` into `bin_dir` and writes [`CONF_NAME`] into `conf_dir` with the
/// primary configuration found there as the default network. Both files are replaced
/// atomically (written aside, then renamed), so a runtime never reads half of either.
pub fn install(
    genie_cni: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    agent_socket: &Path,
) -> Result<Installed, InstallError> {
    // Checked before anything is written: without a primary there is nothing to install.
    primary_network(conf_dir)?;
    let binary = bin_dir.join("genie-cni");
    let bytes = fs::read(genie_cni).map_err(|source| InstallError::Read {
        path: genie_cni.to_owned(),
        source,
    })?;
    if fs::read(&binary).ok().as_deref() != Some(bytes.as_slice()) {
        write_atomically(&binary, &bytes, 0o755)?;
    }
    let (config, primary, changed) = write_config(conf_dir, agent_socket)?;
    Ok(Installed {
        binary,
        config,
        primary,
        changed,
    })
}

/// Writes [`CONF_NAME`] from the primary configuration now in `conf_dir` (when it differs
/// from what is there). Returns genie's file, the primary and whether genie's file changed.
/// The agent calls it whenever the directory changes: CNI DaemonSets rewrite their file
/// after genie started, and genie's copy must follow.
pub fn write_config(
    conf_dir: &Path,
    agent_socket: &Path,
) -> Result<(PathBuf, PathBuf, bool), InstallError> {
    let (primary, default_network) = primary_network(conf_dir)?;
    let conf = genie_config(&default_network, agent_socket);
    let config = conf_dir.join(CONF_NAME);
    let text = serde_json::to_vec_pretty(&conf).unwrap_or_default();
    let changed = fs::read(&config).ok().as_deref() != Some(text.as_slice());
    if changed {
        write_atomically(&config, &text, 0o644)?;
    }
    Ok((config, primary, changed))
}

/// Removes genie's configuration and binary, leaving the node to its primary network.
/// Returns what was removed.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for path in [conf_dir.join(CONF_NAME), bin_dir.join("genie-cni")] {
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Write { path, source }),
        }
    }
    Ok(removed)
}

/// genie's network configuration list: genie-cni alone, with the primary embedded whole as
/// its default network and every capability any of the primary's plugins declares (so the
/// runtime passes e.g. `portMappings` to genie-cni, which passes them on to those plugins).
fn genie_config(default_network: &Value, agent_socket: &Path) -> Value {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("bandwidth".to_owned(), json!(true));
    for plugin in default_network["plugins"].as_array().into_iter().flatten() {
        for (name, on) in plugin["capabilities"].as_object().into_iter().flatten() {
            if on.as_bool() == Some(true) {
                capabilities.insert(name.clone(), json!(true));
            }
        }
    }
    json!({
        "cniVersion": "1.1.0",
        "name": "genie",
        "plugins": [{
            "type": "genie-cni",
            "agentSocket": agent_socket,
            "capabilities": capabilities,
            "defaultNetwork": default_network,
        }],
    })
}

/// The first configuration in `conf_dir` (the order runtimes use) other than genie's own, as
/// a network configuration list: a `.conflist` as it is, a single-plugin `.conf` wrapped into
/// one.
pub fn primary_network(conf_dir: &Path) -> Result<(PathBuf, Value), InstallError> {
    let read_err = |source| InstallError::Read {
        path: conf_dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()) != Some(CONF_NAME)
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    let primary = files.into_iter().next().ok_or(InstallError::NoPrimary {
        dir: conf_dir.to_owned(),
    })?;
    let bad = |message: String| InstallError::BadPrimary {
        path: primary.clone(),
        message,
    };
    let text = fs::read(&primary).map_err(|source| InstallError::Read {
        path: primary.clone(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = match value.get("plugins") {
        Some(Value::Array(_)) => value,
        Some(_) => return Err(bad("`plugins` is not a list".to_owned())),
        None => {
            // A single-plugin `.conf`: its name and version belong to the list.
            let mut plugin = value.clone();
            if let Some(object) = plugin.as_object_mut() {
                object.remove("name");
                object.remove("cniVersion");
            }
            json!({
                "cniVersion": value.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
                "name": value.get("name").cloned().unwrap_or(json!("default")),
                "plugins": [plugin],
            })
        }
    };
    crate::model::check::plugin_list(&list).map_err(bad)?;
    Ok((primary, list))
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::statefile::write_atomically(path, bytes, mode).map_err(|source| InstallError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (PathBuf, PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!(
            "genie-install-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&base);
        let (bin, conf) = (base.join("bin"), base.join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let source = base.join("genie-cni");
        fs::write(&source, b"#!/bin/true\n").unwrap();
        (source, bin, conf)
    }

    /// The primaries as the distributions write them.
    const KINDNET: &str = r#"{
  "cniVersion": "0.3.1",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.244.0.0/24"}]]}, "mtu": 1500},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;
    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;
    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "nodename": "node-1", "mtu": 0, "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}, "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}"#;

    #[test]
    fn chained_primaries_are_embedded_unchanged() {
        for (file, text) in [
            ("10-kindnet.conflist", KINDNET),
            ("10-flannel.conflist", FLANNEL),
            ("10-calico.conflist", CALICO),
        ] {
            let (source, bin, conf) = dirs();
            fs::write(conf.join(file), text).unwrap();
            let installed =
                install(&source, &bin, &conf, Path::new("/run/genie/agent.sock")).unwrap();
            assert_eq!(installed.primary, conf.join(file));
            assert!(installed.changed);
            let written: Value =
                serde_json::from_slice(&fs::read(conf.join(CONF_NAME)).unwrap()).unwrap();
            let plugin = &written["plugins"][0];
            assert_eq!(plugin["type"], "genie-cni");
            let original: Value = serde_json::from_str(text).unwrap();
            assert_eq!(plugin["defaultNetwork"], original, "{file}");
            assert_eq!(plugin["capabilities"]["portMappings"], true, "{file}");
            assert_eq!(plugin["capabilities"]["bandwidth"], true, "{file}");
            // A rerun writes nothing; uninstall leaves exactly the primary.
            let again = install(&source, &bin, &conf, Path::new("/run/genie/agent.sock")).unwrap();
            assert!(!again.changed);
            uninstall(&bin, &conf).unwrap();
            let left: Vec<_> = fs::read_dir(&conf)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, [std::ffi::OsString::from(file)]);
            assert!(!bin.join("genie-cni").exists());
        }
    }

    #[test]
    fn a_single_plugin_primary_becomes_a_one_plugin_list() {
        let (source, bin, conf) = dirs();
        fs::write(
            conf.join("10-flat.conf"),
            r#"{"cniVersion": "1.0.0", "name": "flat", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}"#,
        )
        .unwrap();
        fs::write(conf.join("99-other.conf"), r#"{"type": "macvlan"}"#).unwrap();
        install(&source, &bin, &conf, Path::new("/run/genie/agent.sock")).unwrap();
        let written: Value =
            serde_json::from_slice(&fs::read(conf.join(CONF_NAME)).unwrap()).unwrap();
        let default = &written["plugins"][0]["defaultNetwork"];
        assert_eq!(default["name"], "flat");
        assert_eq!(default["plugins"][0]["type"], "bridge");
        assert!(default["plugins"][0].get("name").is_none());
    }

    #[test]
    fn a_missing_or_broken_primary_is_refused_and_nothing_is_written() {
        let (source, bin, conf) = dirs();
        let err = install(&source, &bin, &conf, Path::new("/s")).unwrap_err();
        assert!(matches!(err, InstallError::NoPrimary { .. }), "{err}");
        fs::write(
            conf.join("10-bad.conflist"),
            r#"{"name": "x", "plugins": [{}]}"#,
        )
        .unwrap();
        let err = install(&source, &bin, &conf, Path::new("/s")).unwrap_err();
        assert!(err.to_string().contains("no `type`"), "{err}");
        assert!(!conf.join(CONF_NAME).exists());
        assert!(!bin.join("genie-cni").exists());
    }
}
