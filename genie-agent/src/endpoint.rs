//! Endpoints: the pod interfaces registered on this node (by the CNI handler or the local
//! API), persisted so a restarted agent knows them without the runtime asking again.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::AttachSide,
    model::annotations::BandwidthRequest,
    statefile::{PRIVATE_FILE_MODE, private_dir, write_atomically},
};

/// What a caller asks for when registering an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    pub pod: String,
    pub namespace: String,
    /// Logical network name, or `default`.
    pub network: String,
    /// Interface name inside the pod.
    pub interface: String,
    /// Interface genie's programs attach to: the host side of a veth, or the pod's own
    /// interface when `side` is `inPod`.
    pub host_interface: String,
    /// Network namespace holding `host_interface` (the node's, or the pod's for `inPod`).
    pub netns: PathBuf,
    /// Where the programs run.
    #[serde(default)]
    pub side: AttachSide,
    /// The pod's own network namespace, if known.
    #[serde(default)]
    pub pod_netns: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
    /// The pod interface's MAC (anti-spoofing); absent disables the MAC check.
    #[serde(default)]
    pub mac: Option<String>,
    /// The interface's own bandwidth limits (pod annotations, the runtime's bandwidth
    /// capability); they take precedence over its network's.
    #[serde(default)]
    pub bandwidth: Option<BandwidthRequest>,
    /// The container (pod sandbox) whose CNI ADD registered it: DEL finds the endpoints of a
    /// container by it even when the attachment cache is lost, and a quota reservation covers
    /// the container's endpoints while its ADD runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: u32,
    #[serde(flatten)]
    pub request: EndpointRequest,
    /// Index of `host_interface` inside `netns` when it was attached.
    pub ifindex: u32,
    /// The key of an in-pod endpoint's own program instance (0 on the host side).
    #[serde(default)]
    pub pod_key: u32,
    /// Set for an endpoint the agent found enforced in the pinned maps without any record of
    /// it (a lost state directory): it keeps the identity it had, and is forgotten only when
    /// its interface goes or by an explicit removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Recovered>,
    /// The bridge the host-side interface is a port of (its index in the node's namespace):
    /// broadcast and multicast the endpoint sends reach the node through it, where `to_host`
    /// decides. `None` for a host side in no bridge (`ptp`) and for in-pod interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<u32>,
    /// The pod interface's IPv6 link-local addresses (its own for neighbour discovery):
    /// the EUI-64 address of its MAC and those found on the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_local: Vec<std::net::Ipv6Addr>,
}

/// What is known of an endpoint recovered from the pinned maps alone: no pod, namespace or
/// interface name, only what the dataplane enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    /// The (tenant, network) identity its record carried.
    pub identity: u32,
}

impl Endpoint {
    /// The key a registration is known by: one interface of one pod.
    pub fn key(&self) -> (String, String, String) {
        (
            self.request.namespace.clone(),
            self.request.pod.clone(),
            self.request.interface.clone(),
        )
    }

    /// The endpoints-map key: the interface index on the host side; on the pod side (where
    /// indexes of different namespaces collide) a key of the endpoint's own.
    pub fn map_key(&self) -> u32 {
        match self.request.side {
            AttachSide::Host => self.ifindex,
            AttachSide::InPod => self.pod_key,
        }
    }

    /// The MAC as bytes (all zero when absent).
    pub fn mac_bytes(&self) -> [u8; 6] {
        self.request
            .mac
            .as_deref()
            .and_then(|m| parse_mac(m).ok())
            .unwrap_or([0; 6])
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{text:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot =
            u8::from_str_radix(part, 16).map_err(|_| format!("{text:?} is not a MAC address"))?;
    }
    Ok(mac)
}

/// The registry's file in the state directory.
pub const REGISTRY_FILE: &str = "endpoints.json";

/// The endpoints of this node, by id, persisted as one JSON file.
#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    endpoints: BTreeMap<u32, Endpoint>,
}

impl Registry {
    /// Opens the agent's registry in `state_dir` (created private when missing): loads
    /// `endpoints.json`, empty when absent.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        private_dir(state_dir)?;
        Self::load(state_dir)
    }

    /// Reads the registry in `state_dir` without creating or changing anything (inspection):
    /// empty when there is none.
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(REGISTRY_FILE);
        let endpoints = match fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<Endpoint> =
                    serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
                list.into_iter().map(|e| (e.id, e)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: Some(path),
            endpoints,
        })
    }

    /// Every endpoint.
    pub fn all(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// An endpoint by id.
    pub fn get(&self, id: u32) -> Option<&Endpoint> {
        self.endpoints.get(&id)
    }

    /// The endpoint registered for one pod interface.
    pub fn find(&self, namespace: &str, pod: &str, interface: &str) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| {
            e.request.namespace == namespace
                && e.request.pod == pod
                && e.request.interface == interface
        })
    }

    /// The next free id (ids are never 0: counters use 0 for "no endpoint").
    pub fn next_id(&self) -> u32 {
        self.endpoints.keys().next_back().map_or(1, |last| last + 1)
    }

    /// Adds or replaces an endpoint and persists.
    pub fn insert(&mut self, endpoint: Endpoint) -> std::io::Result<()> {
        self.endpoints.insert(endpoint.id, endpoint);
        self.save()
    }

    /// Removes an endpoint and persists.
    pub fn remove(&mut self, id: u32) -> std::io::Result<Option<Endpoint>> {
        let removed = self.endpoints.remove(&id);
        self.save()?;
        Ok(removed)
    }

    /// Writes the registry crash-safely: a temporary file, fsync, rename, fsync the directory.
    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let list: Vec<&Endpoint> = self.endpoints.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        write_atomically(path, &bytes, PRIVATE_FILE_MODE)
    }
}
