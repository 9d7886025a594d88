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
    let (primary, default_network) = primary_network(conf_dir)?;
    let binary = bin_dir.join("genie-cni");
    let bytes = fs::read(genie_cni).map_err(|source| InstallError::Read {
        path: genie_cni.to_owned(),
        source,
    })?;
    write_atomically(&binary, &bytes, 0o755)?;
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "genie",
        "plugins": [{
            "type": "genie-cni",
            "agentSocket": agent_socket,
            "capabilities": {"bandwidth": true},
            "defaultNetwork": default_network,
        }],
    });
    let config = conf_dir.join(CONF_NAME);
    let text = serde_json::to_vec_pretty(&conf).unwrap_or_default();
    write_atomically(&config, &text, 0o644)?;
    Ok(Installed {
        binary,
        config,
        primary,
    })
}

/// The first configuration in `conf_dir` (the order runtimes use) other than genie's own,
/// and its plugin as a delegate configuration.
fn primary_network(conf_dir: &Path) -> Result<(PathBuf, Value), InstallError> {
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
    let mut plugin = match value.get("plugins") {
        None => value.clone(),
        Some(Value::Array(plugins)) if plugins.len() == 1 => plugins[0].clone(),
        Some(Value::Array(plugins)) => {
            let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
            return Err(bad(format!(
                "a chain of {} plugins ({}): genie-cni delegates the default network to one \
                 plugin; chained primary networks are not supported yet",
                plugins.len(),
                types.join(", ")
            )));
        }
        Some(_) => return Err(bad("`plugins` is not a list".to_owned())),
    };
    if plugin["type"].as_str().is_none_or(str::is_empty) {
        return Err(bad("its plugin has no `type`".to_owned()));
    }
    if plugin["type"] == "genie-cni" {
        return Err(bad("it is a genie-cni configuration itself".to_owned()));
    }
    if let Some(object) = plugin.as_object_mut() {
        // genie sets these for each delegate call.
        object.remove("cniVersion");
        object.remove("name");
    }
    Ok((primary, plugin))
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

    #[test]
    fn the_first_primary_configuration_becomes_the_default_network() {
        let (source, bin, conf) = dirs();
        fs::write(
            conf.join("10-flat.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "flat", "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}]}"#,
        )
        .unwrap();
        fs::write(conf.join("99-other.conf"), r#"{"type": "macvlan"}"#).unwrap();
        let installed = install(&source, &bin, &conf, Path::new("/run/genie/agent.sock")).unwrap();
        assert_eq!(installed.primary, conf.join("10-flat.conflist"));
        assert_eq!(fs::read(bin.join("genie-cni")).unwrap(), b"#!/bin/true\n");
        let written: Value =
            serde_json::from_slice(&fs::read(conf.join(CONF_NAME)).unwrap()).unwrap();
        let plugin = &written["plugins"][0];
        assert_eq!(plugin["type"], "genie-cni");
        assert_eq!(plugin["agentSocket"], "/run/genie/agent.sock");
        assert_eq!(plugin["defaultNetwork"]["type"], "bridge");
        assert_eq!(plugin["defaultNetwork"]["bridge"], "cni0");
        assert!(plugin["defaultNetwork"].get("name").is_none());
        // Run again (a restarted init container): genie's own file is not taken as primary.
        let again = install(&source, &bin, &conf, Path::new("/run/genie/agent.sock")).unwrap();
        assert_eq!(again.primary, conf.join("10-flat.conflist"));
    }

    #[test]
    fn a_chained_or_missing_primary_is_refused_and_nothing_is_written() {
        let (source, bin, conf) = dirs();
        let err = install(&source, &bin, &conf, Path::new("/s")).unwrap_err();
        assert!(matches!(err, InstallError::NoPrimary { .. }), "{err}");
        fs::write(
            conf.join("10-calico.conflist"),
            r#"{"name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}"#,
        )
        .unwrap();
        let err = install(&source, &bin, &conf, Path::new("/s")).unwrap_err();
        assert!(err.to_string().contains("calico, portmap"), "{err}");
        assert!(!conf.join(CONF_NAME).exists());
        assert!(!bin.join("genie-cni").exists());
    }
}
