//! Enforcement the registry does not account for. The registry (`endpoints.json`) can be lost
//! while the pinned maps and links survive: a new disk, a wrong `--state-dir`, a volume mistake.
//! The agent never detaches programs or drops records it cannot account for (DESIGN.md §3a):
//! every pinned endpoint is rebuilt from the CNI attachment cache when that still knows it,
//! and otherwise adopted from the pinned maps exactly as it is enforced.

use std::{collections::BTreeSet, net::IpAddr};

use genie_common::{Direction, maps::IN_POD_KEY_BIT};
use tracing::warn;

use super::{Agent, AgentError};
use crate::{
    cni::cache::Cache,
    dataplane::{AttachSide, DataplaneError},
    endpoint::{Endpoint, EndpointRequest, Recovered},
    inspect,
};

/// How an unregistered endpoint was brought back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Rebuilt with full detail from the CNI attachment cache.
    pub from_cache: Vec<u32>,
    /// Adopted from the pinned maps (no pod or interface names).
    pub from_maps: Vec<u32>,
}

/// Where host-local keeps the leases of `network`: genie gives it `dataDir` =
/// `<ipam>/<network>`, and host-local stores under `<dataDir>/<network name>`.
fn lease_dir(state_dir: &std::path::Path, network: &str) -> std::path::PathBuf {
    crate::cni::ipam_dir(state_dir).join(network).join(network)
}

/// The owner written into the leases of an endpoint recovered from the maps alone.
fn recovered_lease_owner(id: u32) -> String {
    format!("genie-recovered-ep{id}")
}

impl Agent {
    /// Registers every endpoint that has pinned links or an endpoint record but no registry
    /// entry. Called at start, before anything is attached or reconciled.
    pub(super) fn recover_unregistered(&mut self) -> Result<RecoveryReport, AgentError> {
        let pinned = self.maps.read_state()?;
        let mut missing: BTreeSet<u32> = self
            .dataplane
            .attached_endpoint_ids()
            .into_iter()
            .chain(pinned.endpoints.values().map(|e| e.endpoint_id))
            .filter(|id| *id != 0 && self.registry.get(*id).is_none())
            .collect();
        let mut report = RecoveryReport::default();
        if missing.is_empty() {
            return Ok(report);
        }
        warn!(
            endpoints = ?missing,
            state_dir = %self.config.state_dir.display(),
            "the registry does not know endpoints that genie enforces; recovering them instead of detaching"
        );
        let key_of = |id: u32| {
            pinned
                .endpoints
                .iter()
                .find(|(_, e)| e.endpoint_id == id)
                .map(|(k, e)| (*k, *e))
        };

        // The attachment cache knows pod, interface, delegate result and addresses.
        let cache = Cache::existing(&self.config.state_dir.join("cni"));
        for container_id in cache.container_ids().unwrap_or_default() {
            let Ok(Some(record)) = cache.load(&container_id) else {
                continue;
            };
            for attachment in &record.attachments {
                let Some(id) = attachment.endpoint.filter(|id| missing.contains(id)) else {
                    continue;
                };
                let request = match record.endpoint_request(attachment, &self.config.netns) {
                    Ok(request) => request,
                    Err(e) => {
                        warn!(endpoint = id, container = %container_id, error = %e, "cannot rebuild the endpoint from the attachment cache");
                        continue;
                    }
                };
                let pod_key = key_of(id)
                    .map(|(k, _)| k)
                    .filter(|k| k & IN_POD_KEY_BIT != 0)
                    .unwrap_or(0);
                let ifindex = self.linked_ifindex(id).unwrap_or(0);
                self.reserve_leases(&request, &record.container_id);
                self.register(Endpoint {
                    id,
                    request,
                    ifindex,
                    pod_key,
                    recovered: None,
                    bridge: None,
                    link_local: Vec::new(),
                })?;
                missing.remove(&id);
                report.from_cache.push(id);
            }
        }

        // The rest is adopted as the maps enforce it.
        for id in missing {
            let record = key_of(id);
            let identity = record.map(|(_, e)| e.identity).unwrap_or(0);
            let network = pinned
                .identities
                .get(&identity)
                .map(|i| inspect::name(&i.network))
                .unwrap_or_default();
            let ips: Vec<IpAddr> = pinned
                .addrs
                .iter()
                .filter(|(_, a)| a.endpoint_id == id)
                .map(|(addr, _)| inspect::ip_from16(*addr))
                .collect();
            let (side, pod_key) = match record {
                Some((key, _)) if key & IN_POD_KEY_BIT != 0 => (AttachSide::InPod, key),
                _ => (AttachSide::Host, 0),
            };
            let ifindex = match (side, record) {
                (AttachSide::Host, Some((key, _))) => key,
                _ => self.linked_ifindex(id).unwrap_or(0),
            };
            // A host-side interface is found again by its index in the node's namespace; an
            // in-pod one lives in a namespace nothing names any more, and keeps the program
            // instance it has.
            let host_interface = match side {
                AttachSide::Host => crate::netns::run_in(&self.config.netns, || {
                    nix::net::if_::if_indextoname(ifindex)
                        .map(|n| n.to_string_lossy().into_owned())
                        .ok()
                })
                .ok()
                .flatten()
                .unwrap_or_default(),
                AttachSide::InPod => String::new(),
            };
            let request = EndpointRequest {
                pod: String::new(),
                namespace: String::new(),
                network,
                interface: String::new(),
                host_interface,
                netns: self.config.netns.clone(),
                side,
                pod_netns: None,
                ips,
                mac: record.and_then(|(_, e)| inspect::mac_text(e.mac)),
                bandwidth: None,
                container_id: None,
            };
            self.reserve_leases(&request, &recovered_lease_owner(id));
            self.register(Endpoint {
                id,
                request,
                ifindex,
                pod_key,
                recovered: Some(Recovered { identity }),
                bridge: None,
                link_local: Vec::new(),
            })?;
            report.from_maps.push(id);
        }
        warn!(
            from_cache = ?report.from_cache,
            from_maps = ?report.from_maps,
            "recovered unregistered endpoints; they stay enforced until their interface goes, a CNI DEL or `genie endpoint remove`"
        );
        Ok(report)
    }

    /// The interface index an endpoint's pinned link is attached to.
    fn linked_ifindex(&self, id: u32) -> Option<u32> {
        Direction::ALL
            .iter()
            .find_map(|d| self.dataplane.attached_ifindex(id, *d).ok().flatten())
    }

    /// Marks the addresses of a recovered endpoint as taken in its network's host-local lease
    /// directory when the lease is missing (it went with the state directory): otherwise the
    /// next pod would be given an address a running pod still has, and genie would refuse that
    /// ADD for ever. The lease names `owner` the way host-local does (container id, then the
    /// interface), so the delegate's DEL releases it.
    fn reserve_leases(&self, request: &EndpointRequest, owner: &str) {
        let dir = lease_dir(&self.config.state_dir, &request.network);
        if crate::statefile::private_dir(&crate::cni::ipam_dir(&self.config.state_dir)).is_err()
            || std::fs::create_dir_all(&dir).is_err()
        {
            return;
        }
        for ip in &request.ips {
            let lease = dir.join(ip.to_string());
            if !lease.exists() {
                let text = format!("{owner}\r\n{}", request.interface);
                if let Err(e) = crate::statefile::write_atomically(
                    &lease,
                    text.as_bytes(),
                    crate::statefile::PRIVATE_FILE_MODE,
                ) {
                    warn!(lease = %lease.display(), error = %e, "cannot re-reserve the address of a recovered endpoint");
                }
            }
        }
    }

    /// Removes the leases [`Agent::reserve_leases`] wrote for a map-recovered endpoint.
    fn release_recovered_leases(&self, endpoint: &Endpoint) {
        let dir = lease_dir(&self.config.state_dir, &endpoint.request.network);
        let owner = recovered_lease_owner(endpoint.id);
        for ip in &endpoint.request.ips {
            let lease = dir.join(ip.to_string());
            if std::fs::read_to_string(&lease).is_ok_and(|t| t.starts_with(&owner)) {
                let _ = std::fs::remove_file(&lease);
            }
        }
    }

    fn register(&mut self, endpoint: Endpoint) -> Result<(), AgentError> {
        self.registry
            .insert(endpoint)
            .map_err(|source| AgentError::Registry {
                path: self.config.state_dir.clone(),
                source,
            })
    }

    /// Keeps `endpoint` under its programs, or forgets it when its interface is gone. Its
    /// programs are attached again (swapped in place where the links live, attached anew where
    /// they were detached); an interface that is gone or was replaced (another index under the
    /// name) means the pod is gone — a DEL lost while the agent was down, or an endpoint
    /// recovered from the maps alone — and the endpoint is forgotten: its pins are removed,
    /// leases it re-reserved released, and its records leave the maps at the next reconcile.
    /// An endpoint recovered inside a pod's namespace that nothing names any more keeps the
    /// program instance it has until its links die with the interface.
    pub(super) fn keep_enforced(&mut self, endpoint: &Endpoint) -> Result<(), AgentError> {
        let id = endpoint.id;
        let attached = if endpoint.recovered.is_some() && endpoint.request.side == AttachSide::InPod
        {
            None
        } else {
            let instance = match endpoint.request.side {
                AttachSide::Host => None,
                AttachSide::InPod => Some(self.dataplane.pod_instance(endpoint.pod_key)?),
            };
            match self.dataplane.attach(
                &endpoint.request.netns,
                &endpoint.request.host_interface,
                id,
                instance,
            ) {
                Ok(ifindex) => Some(ifindex),
                Err(DataplaneError::NoInterface { .. } | DataplaneError::Netns(_)) => None,
                Err(e) => return Err(e.into()),
            }
        };
        if attached.is_none() && self.linked_ifindex(id).is_some() {
            // The interface could not be looked up, yet a link of ours is live on it: never
            // detach what may still be enforcing (the next resync looks again).
            return Ok(());
        }
        if attached == Some(endpoint.ifindex) {
            let mut refreshed = endpoint.clone();
            self.discover_interfaces(&mut refreshed);
            if refreshed != *endpoint {
                self.register(refreshed)?;
            }
            return Ok(());
        }
        warn!(endpoint = id, pod = %endpoint.request.pod, interface = %endpoint.request.host_interface, "the interface of an endpoint is gone or was replaced; forgetting it");
        if endpoint.recovered.is_some() {
            self.release_recovered_leases(endpoint);
        }
        self.dataplane.detach(id)?;
        self.registry
            .remove(id)
            .map_err(|source| AgentError::Registry {
                path: self.config.state_dir.clone(),
                source,
            })?;
        Ok(())
    }

    /// [`Agent::keep_enforced`] for every endpoint with a link found detached or dead: a
    /// program someone detached by hand (`bpftool link detach`, a tool that cleared the
    /// hooks) from a live interface is attached again within one resync.
    pub(super) fn reattach_unlinked(&mut self) -> Result<(), AgentError> {
        let unlinked: Vec<Endpoint> = self
            .registry
            .all()
            .filter(|e| {
                Direction::ALL
                    .iter()
                    .any(|d| matches!(self.dataplane.attached_ifindex(e.id, *d), Ok(None)))
            })
            .cloned()
            .collect();
        for endpoint in &unlinked {
            self.keep_enforced(endpoint)?;
            let relinked = Direction::ALL.iter().all(|d| {
                matches!(
                    self.dataplane.attached_ifindex(endpoint.id, *d),
                    Ok(Some(_))
                )
            });
            if self.registry.get(endpoint.id).is_some() && relinked {
                warn!(endpoint = endpoint.id, pod = %endpoint.request.pod, interface = %endpoint.request.host_interface, "genie's programs had been detached from a live endpoint; attached again");
            }
        }
        Ok(())
    }
}
