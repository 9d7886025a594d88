//! The node's record of every container's attachments, written crash-safely before ADD
//! returns, so DEL works without the pod object or the API server and releases exactly what
//! ADD took (REFERENCE.md: Multus leaks IPs when this cache is lost or corrupt).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{delegate::AddResult, spec::valid_identifier};
use crate::dataplane::AttachSide;
use crate::endpoint::EndpointRequest;
use crate::statefile::{PRIVATE_FILE_MODE, private_dir, write_atomically};

/// One interface of a container, as ADD created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    /// Logical network, or `default`.
    pub network: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// The delegate plugin binary.
    pub plugin: PathBuf,
    /// The configuration the delegate got (with its negotiated version).
    pub config: Value,
    /// The delegate's ADD result (DEL's `prevResult`); `null` while its ADD runs, so a crash
    /// mid-ADD still leaves a record for DEL and GC.
    pub result: Value,
    /// The genie endpoint registered for the interface, once registered.
    #[serde(default)]
    pub endpoint: Option<u32>,
    /// The interface's own bandwidth limits.
    #[serde(default)]
    pub bandwidth: Option<super::annotations::BandwidthRequest>,
    /// The plugins chained after `plugin` (a network configuration list, CNI spec §
    /// "Network Configuration Lists"), in ADD order; each got the previous one's result as
    /// `prevResult`, and `result` is the last one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainedPlugin>,
}

/// A plugin chained after an attachment's first one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainedPlugin {
    pub plugin: PathBuf,
    pub config: Value,
}

impl CachedAttachment {
    /// Every plugin of the attachment with its configuration, in ADD order.
    pub fn plugins(&self) -> impl DoubleEndedIterator<Item = (&Path, &Value)> {
        std::iter::once((self.plugin.as_path(), &self.config))
            .chain(self.chain.iter().map(|c| (c.plugin.as_path(), &c.config)))
    }
}

/// Everything ADD did for one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    pub container_id: String,
    /// The runtime's network (the genie CNI configuration's `name`); GC is per network.
    pub network_name: String,
    /// The interface the runtime asked for (`CNI_IFNAME`, normally `eth0`).
    pub ifname: String,
    pub namespace: String,
    pub pod: String,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// `CNI_PATH` at ADD: delegates need it at DEL to find their IPAM plugins.
    #[serde(default)]
    pub cni_path: Vec<PathBuf>,
    /// `CNI_ARGS` at ADD.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, String>,
    /// In the order ADD created them; DEL goes in reverse.
    pub attachments: Vec<CachedAttachment>,
    /// True from the start of ADD until it has put every interface under genie's programs: a
    /// record still adding when the agent starts belongs to an ADD the agent died in, and is
    /// torn down.
    #[serde(default)]
    pub adding: bool,
}

impl CachedContainer {
    /// The endpoint for the interface attachment `attachment` of this container created, from
    /// the delegate's result: the host side of its veth when it made one, otherwise the pod's
    /// own interface (macvlan). `node_netns` is where host sides live.
    pub fn endpoint_request(
        &self,
        attachment: &CachedAttachment,
        node_netns: &Path,
    ) -> Result<EndpointRequest, String> {
        let added = AddResult::parse(
            &attachment.plugin.display().to_string(),
            attachment.result.clone(),
        )
        .map_err(|e| e.to_string())?;
        let pod_netns = self.netns.clone().unwrap_or_default();
        let (side, netns, interface) = match added.host_interface() {
            Some(host) => (AttachSide::Host, node_netns.to_owned(), host.name.clone()),
            None => (
                AttachSide::InPod,
                pod_netns.clone(),
                attachment.ifname.clone(),
            ),
        };
        let ips: Vec<_> = added
            .addresses_of(&attachment.ifname)
            .iter()
            .map(|n| n.addr())
            .collect();
        if ips.is_empty() {
            return Err(
                "the delegate assigned no address; genie isolates endpoints by address, so every network needs IPAM"
                    .to_owned(),
            );
        }
        Ok(EndpointRequest {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            network: attachment.network.clone(),
            interface: attachment.ifname.clone(),
            host_interface: interface,
            netns,
            side,
            pod_netns: Some(pod_netns),
            ips,
            mac: added
                .container_interface(&attachment.ifname)
                .and_then(|i| i.mac.clone()),
            bandwidth: attachment.bandwidth,
            container_id: Some(self.container_id.clone()),
        })
    }
}

/// One container's attachments as `genie inspect attachments` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    /// `k8s.v1.cni.cncf.io/network-status`.
    pub network_status: Vec<super::result::NetworkStatus>,
}

/// Errors of the attachment cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("container id {0:?} is not valid")]
    BadId(String),
    #[error("attachment cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("attachment cache {path} is unreadable: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The cache directory (one JSON file per container).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        private_dir(dir).map_err(|source| CacheError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The cache in `dir` for reading (inspection): nothing is created or changed.
    pub fn existing(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, container_id: &str) -> Result<PathBuf, CacheError> {
        // Container ids become file names: only the spec's identifier characters, never a path.
        if !valid_identifier(container_id) {
            return Err(CacheError::BadId(container_id.to_owned()));
        }
        Ok(self.dir.join(format!("{container_id}.json")))
    }

    /// The record of a container, if ADD left one.
    pub fn load(&self, container_id: &str) -> Result<Option<CachedContainer>, CacheError> {
        let path = self.path(container_id)?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CacheError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    /// Writes a container's record (temporary file, fsync, rename, fsync the directory).
    pub fn store(&self, container: &CachedContainer) -> Result<(), CacheError> {
        let path = self.path(&container.container_id)?;
        let bytes = serde_json::to_vec_pretty(container).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&path, &bytes, PRIVATE_FILE_MODE)
            .map_err(|source| CacheError::Io { path, source })
    }

    /// Forgets a container; forgetting an unknown one succeeds.
    pub fn remove(&self, container_id: &str) -> Result<(), CacheError> {
        let path = self.path(container_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    /// Every cached container with its network status.
    pub fn statuses(&self) -> Result<Vec<ContainerStatus>, CacheError> {
        let mut out = Vec::new();
        for id in self.container_ids()? {
            if let Some(container) = self.load(&id)? {
                out.push(ContainerStatus {
                    network_status: super::result::network_status(&container),
                    container_id: container.container_id,
                    namespace: container.namespace,
                    pod: container.pod,
                });
            }
        }
        Ok(out)
    }

    /// The ids of every cached container (for GC).
    pub fn container_ids(&self) -> Result<Vec<String>, CacheError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // No genie-cni ADD has run on this node (inspection before the agent's first start).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
            .filter(|id| valid_identifier(id))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container(id: &str) -> CachedContainer {
        CachedContainer {
            container_id: id.to_owned(),
            network_name: "genie".to_owned(),
            ifname: "eth0".to_owned(),
            namespace: "red".to_owned(),
            pod: "web-1".to_owned(),
            netns: Some(PathBuf::from("/run/netns/x")),
            cni_path: vec![PathBuf::from("/usr/lib/cni")],
            args: Default::default(),
            attachments: vec![CachedAttachment {
                network: "red-web".to_owned(),
                ifname: "eth1".to_owned(),
                plugin: PathBuf::from("/usr/lib/cni/bridge"),
                config: json!({"type": "bridge"}),
                result: json!({"cniVersion": "1.0.0"}),
                endpoint: Some(3),
                bandwidth: None,
                chain: Vec::new(),
            }],
            adding: false,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("genie-cache-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = temp_dir("rt");
        let cache = Cache::open(&dir).unwrap();
        assert_eq!(cache.load("abc").unwrap(), None);
        cache.store(&container("abc")).unwrap();
        cache.store(&container("def")).unwrap();
        assert_eq!(cache.load("abc").unwrap(), Some(container("abc")));
        assert_eq!(
            cache.container_ids().unwrap(),
            vec!["abc".to_owned(), "def".to_owned()]
        );
        cache.remove("abc").unwrap();
        cache.remove("abc").unwrap();
        assert_eq!(cache.container_ids().unwrap(), vec!["def".to_owned()]);
        assert!(
            !dir.join("abc.json").exists() && !dir.join("def.json.tmp").exists(),
            "no temporary file stays"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        let dir = temp_dir("ids");
        let cache = Cache::open(&dir).unwrap();
        for bad in ["../etc/passwd", "", "-x", "a/b"] {
            assert!(
                matches!(cache.load(bad), Err(CacheError::BadId(_))),
                "{bad}"
            );
        }
        fs::write(dir.join("broken.json"), b"{not json").unwrap();
        assert!(matches!(
            cache.load("broken"),
            Err(CacheError::Corrupt { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
