//! The agent: owns the node's dataplane, the endpoint registry and the last valid model, and
//! keeps the maps equal to what they say.

mod cni;
mod interfaces;
mod node;
mod objects;
mod recovery;
pub mod server;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use ipnet::IpNet;
use serde::Serialize;
use tracing::{info, warn};

pub use objects::read_verdicts;

use crate::{
    cni::spec::validate_ifname,
    dataplane::{ApplyStats, AttachSide, Dataplane, DataplaneError, PinnedMaps, PodInstance},
    endpoint::{Endpoint, EndpointRequest, Registry, parse_mac},
    metrics::AgentMetrics,
    model::{Model, ModelError, Verdict, check_name},
    reconcile::{DesiredState, NodeInfo, ZoneAssignment, assign_zones, desired_state},
    source::kube::{ClusterSnapshot, KubeSource},
};

/// How the agent runs on this node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory of `*.yaml` objects.
    pub config_dir: PathBuf,
    /// The node's network namespace (where host-side interfaces live).
    pub netns: PathBuf,
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
    /// Directory for the endpoint registry.
    pub state_dir: PathBuf,
    /// Unix socket of the local API.
    pub socket: PathBuf,
    /// Extra CIDRs that count as HOST (other nodes' addresses in file mode).
    pub host_cidrs: Vec<IpNet>,
    /// Cluster DNS service addresses.
    pub dns: Vec<IpAddr>,
    /// The cgroup v2 directory whose sockets genie paces for bandwidth limits (`None`: no
    /// pacing; limits are still enforced, single TCP flows just fall short of them).
    pub pacing_cgroup: Option<PathBuf>,
    /// Objects from the Kubernetes API instead of `config_dir`.
    pub kube: Option<KubeConfig>,
}

/// How the agent reaches the Kubernetes API (`--source kube`).
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// A kubeconfig file; `None`: in-cluster configuration or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    pub node_name: String,
    /// The cluster DNS Service (namespace, name), e.g. `kube-system/kube-dns`.
    pub dns_service: (String, String),
}

/// Errors of the agent subsystem.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("endpoint registry in {path}: {source}")]
    Registry {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request that cannot be granted; nothing was changed.
    #[error("{field}: {message}")]
    Refused { field: String, message: String },
    /// The tenant owning the namespace has used its endpoint quota; nothing was changed.
    #[error("tenant {tenant:?} has reached its quota of {quota} endpoints")]
    QuotaReached { tenant: String, quota: usize },
    /// The agent has no valid configuration yet.
    #[error("the agent has no valid configuration yet: {0}")]
    NotReady(String),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Kube(#[from] crate::source::kube::KubeSourceError),
    /// The agent's own machinery (threads, the signal mask) could not be set up.
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        source: std::io::Error,
    },
}

impl AgentError {
    fn refused(field: &str, message: impl Into<String>) -> Self {
        Self::Refused {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// How much of its endpoint quota a tenant uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub tenant: String,
    pub quota: usize,
    pub used: usize,
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ready: bool,
    /// Problems of files (file mode) that block attaching pods until fixed.
    pub config_error: Option<String>,
    /// Objects whose current spec is refused or not what is enforced.
    #[serde(default)]
    pub refused: Vec<Verdict>,
    pub endpoints: usize,
    pub policy_epoch: u32,
    pub reconciles: u64,
}

/// The node agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    dataplane: Dataplane,
    maps: PinnedMaps,
    registry: Registry,
    model: Option<Model>,
    config_error: Option<String>,
    reconciles: u64,
    /// What the last reconcile wrote (`None`: read the maps next time).
    applied: Option<DesiredState>,
    /// The node's addresses as last read (`None`: read them next time).
    node: Option<NodeInfo>,
    metrics: AgentMetrics,
    /// The Kubernetes source, when objects come from the API.
    kube: Option<KubeSource>,
    /// What the cluster knows beyond the objects (Kubernetes source).
    cluster: ClusterSnapshot,
    /// The last acceptance's verdict on each object (kept in the state directory).
    verdicts: Vec<Verdict>,
    /// Quota taken by CNI ADDs in progress, by container: planned endpoints count against
    /// their tenant's quota from planning until the ADD ends, so concurrent ADDs cannot both
    /// see room that only one of them can have.
    reservations: BTreeMap<String, QuotaReservation>,
    /// Connection-tracking zones by tenant (read back from the pinned identities at start, so
    /// a tenant keeps its table across restarts).
    zones: ZoneAssignment,
}

/// Endpoints a CNI ADD in progress will register for its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaReservation {
    pub tenant: String,
    pub endpoints: usize,
}

impl Agent {
    /// Loads (or adopts) the pinned dataplane, re-attaches the registered endpoints (swapping
    /// the program inside their pinned links, so there is no gap) and reads the configuration.
    /// With an invalid configuration the pinned maps are left exactly as they are.
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let kube = match &config.kube {
            Some(k) => Some(KubeSource::start(
                k.kubeconfig.clone(),
                k.node_name.clone(),
                k.dns_service.clone(),
            )?),
            None => None,
        };
        let dataplane = Dataplane::load(&config.bpffs)?;
        let maps = PinnedMaps::open(&config.bpffs)?;
        let registry =
            Registry::open(&config.state_dir).map_err(|source| AgentError::Registry {
                path: config.state_dir.clone(),
                source,
            })?;
        let mut agent = Self {
            config,
            dataplane,
            maps,
            registry,
            model: None,
            config_error: None,
            reconciles: 0,
            applied: None,
            node: None,
            metrics: AgentMetrics::default(),
            kube,
            cluster: ClusterSnapshot::default(),
            verdicts: Vec::new(),
            reservations: BTreeMap::new(),
            zones: ZoneAssignment::new(),
        };
        agent.verdicts = objects::read_verdicts(&agent.config.state_dir);
        agent.zones = agent.pinned_zones()?;
        agent.readopt_endpoints()?;
        if let Some(cgroup) = agent.config.pacing_cgroup.clone() {
            match agent.dataplane.pace_tcp(&cgroup) {
                Ok(()) => {
                    tracing::info!(cgroup = %cgroup.display(), "pacing TCP for bandwidth limits")
                }
                Err(err) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(err)),
                    "TCP pacing unavailable: limits hold, single TCP flows fall short of them"
                ),
            }
        }
        let used_keys: Vec<u32> = agent.registry.all().map(|e| e.pod_key).collect();
        agent.dataplane.start_pod_pool(used_keys);
        agent.reload_config();
        Ok(agent)
    }

    /// Swaps the new program into every registered endpoint's links and forgets endpoints whose
    /// interface is gone (their pod was deleted while the agent was down). Endpoints that are
    /// enforced but not registered are recovered first, never detached.
    fn readopt_endpoints(&mut self) -> Result<(), AgentError> {
        self.recover_unregistered()?;
        let endpoints: Vec<Endpoint> = self.registry.all().cloned().collect();
        for endpoint in &endpoints {
            self.keep_enforced(endpoint)?;
        }
        self.sync_bridges()
    }

    /// Writes the desired state into the maps: only the difference from what the last
    /// reconcile wrote, with the node's addresses as last read.
    pub fn reconcile(&mut self) -> Result<ApplyStats, AgentError> {
        let started = Instant::now();
        let result = self.reconcile_once();
        if result.is_ok()
            && let Some(kube) = &self.kube
        {
            // Endpoint counts change with every add and remove; only changed statuses are
            // patched.
            kube.report(&self.verdicts, &self.endpoint_usage(self.model.as_ref()));
            kube.publish_endpoints(
                self.registry
                    .all()
                    .filter(|e| e.recovered.is_none())
                    .map(|e| crate::model::objects::PublishedEndpoint {
                        namespace: e.request.namespace.clone(),
                        pod: e.request.pod.clone(),
                        interface: e.request.interface.clone(),
                        network: e.request.network.clone(),
                        ips: e.request.ips.iter().map(ToString::to_string).collect(),
                    })
                    .collect(),
            );
        }
        self.metrics.reconcile_runs += 1;
        self.metrics.reconcile_duration.observe(started.elapsed());
        if result.is_err() {
            self.metrics.reconcile_errors += 1;
        }
        result
    }

    fn reconcile_once(&mut self) -> Result<ApplyStats, AgentError> {
        let Some(model) = &self.model else {
            return Err(AgentError::NotReady(
                self.config_error.clone().unwrap_or_default(),
            ));
        };
        let started = Instant::now();
        let node = match &self.node {
            Some(node) => node.clone(),
            None => {
                let host_prefixes = node::node_prefixes(&self.config.netns)?;
                let mut host_addresses: Vec<IpAddr> =
                    host_prefixes.iter().map(IpNet::addr).collect();
                host_addresses.extend(self.cluster.node_addresses.iter().copied());
                host_addresses.sort();
                host_addresses.dedup();
                let node = NodeInfo {
                    host_addresses,
                    host_prefixes,
                    host_cidrs: self.config.host_cidrs.clone(),
                    dns_addresses: self
                        .config
                        .dns
                        .iter()
                        .chain(&self.cluster.dns_addresses)
                        .copied()
                        .collect(),
                    remote_endpoints: self.cluster.remote_endpoints.clone(),
                };
                self.node = Some(node.clone());
                node
            }
        };
        let endpoints: Vec<Endpoint> = self.registry.all().cloned().collect();
        self.zones = assign_zones(model, &endpoints, &self.zones);
        let last_zone = genie_common::maps::MAX_CT_ZONES - 1;
        let sharing = self.zones.values().filter(|z| **z == last_zone).count();
        if sharing > 1 {
            warn!(
                tenants = sharing,
                zone = last_zone,
                "more tenants have pods on this node than there are connection-tracking zones: these share one table"
            );
        }
        let desired = desired_state(model, &endpoints, &node, &self.zones);
        let current = match self.applied.take() {
            Some(applied) => applied,
            None => self.maps.read_state()?,
        };
        // On failure `applied` stays empty: the next reconcile reads what the maps really hold.
        let stats = self.maps.apply_diff(&current, &desired)?;
        self.applied = Some(desired);
        self.reconciles += 1;
        if stats.written + stats.deleted > 0 {
            info!(
                written = stats.written,
                deleted = stats.deleted,
                micros = started.elapsed().as_micros() as u64,
                "maps reconciled"
            );
        }
        Ok(stats)
    }

    /// The Kubernetes source, when objects come from the API.
    pub fn kube(&self) -> Option<&KubeSource> {
        self.kube.as_ref()
    }

    /// Reconciles from scratch: re-reads the node's addresses and the maps themselves (which
    /// repairs anything changed behind the agent's back) and drops counters of endpoints that
    /// are gone. Runs at start, on configuration changes and periodically.
    pub fn resync(&mut self) -> Result<ApplyStats, AgentError> {
        self.reattach_unlinked()?;
        self.sync_bridges()?;
        self.node = None;
        self.applied = None;
        let stats = self.reconcile()?;
        let registry = &self.registry;
        self.maps.prune_counters(&|id| registry.get(id).is_some())?;
        Ok(stats)
    }

    /// The quota of the tenant owning `namespace` and what it uses — registered endpoints plus
    /// the reservations of ADDs in progress (whose own endpoints count once, through the
    /// reservation) — when that tenant has a quota.
    fn quota_usage(&self, model: &Model, namespace: &str) -> Option<QuotaUsage> {
        let tenant = model.namespace_tenant.get(namespace)?;
        let quota = model.tenants[tenant].quota_endpoints? as usize;
        let registered = self
            .registry
            .all()
            .filter(|e| model.namespace_tenant.get(&e.request.namespace) == Some(tenant))
            .filter(|e| {
                e.request
                    .container_id
                    .as_ref()
                    .is_none_or(|c| !self.reservations.contains_key(c))
            })
            .count();
        let reserved: usize = self
            .reservations
            .values()
            .filter(|r| &r.tenant == tenant)
            .map(|r| r.endpoints)
            .sum();
        Some(QuotaUsage {
            tenant: tenant.clone(),
            quota,
            used: registered + reserved,
        })
    }

    /// Takes `endpoints` of the quota of the tenant owning `namespace` for the ADD of
    /// `container` (see [`Agent::release_reservation`]); fails when they do not fit. Nothing is
    /// taken for a tenant without a quota.
    fn reserve_quota(
        &mut self,
        namespace: &str,
        container: &str,
        endpoints: usize,
    ) -> Result<(), QuotaUsage> {
        let Some(usage) = self
            .model
            .as_ref()
            .and_then(|model| self.quota_usage(model, namespace))
        else {
            return Ok(());
        };
        if usage.used + endpoints > usage.quota {
            return Err(usage);
        }
        self.reservations.insert(
            container.to_owned(),
            QuotaReservation {
                tenant: usage.tenant,
                endpoints,
            },
        );
        Ok(())
    }

    /// Gives back what the ADD of `container` reserved (it ended, registered or rolled back).
    pub fn release_reservation(&mut self, container: &str) {
        self.reservations.remove(container);
    }

    /// The endpoints the CNI ADD of `container` registered, in registration order.
    pub fn endpoints_of_container(&self, container: &str) -> Vec<Endpoint> {
        self.registry
            .all()
            .filter(|e| e.request.container_id.as_deref() == Some(container))
            .cloned()
            .collect()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        Status {
            ready: self.model.is_some(),
            config_error: self.config_error.clone(),
            refused: self.refused_objects(),
            endpoints: self.registry.all().count(),
            policy_epoch: self.maps.epoch().unwrap_or(0),
            reconciles: self.reconciles,
        }
    }

    /// The registered endpoints.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.registry.all().cloned().collect()
    }

    /// Registers an endpoint and puts it under genie's programs. The maps get the endpoint's
    /// record and addresses first, then the programs are attached; on any failure everything
    /// done so far is undone.
    pub fn add_endpoint(&mut self, request: EndpointRequest) -> Result<Endpoint, AgentError> {
        let Some(model) = &self.model else {
            return Err(AgentError::NotReady(
                self.config_error.clone().unwrap_or_default(),
            ));
        };
        check_name(&request.namespace).map_err(|m| AgentError::refused("namespace", m))?;
        if request.pod.is_empty() {
            return Err(AgentError::refused("pod", "must not be empty"));
        }
        validate_ifname(&request.interface).map_err(|m| AgentError::refused("interface", m))?;
        validate_ifname(&request.host_interface)
            .map_err(|m| AgentError::refused("hostInterface", m))?;
        if let Some(mac) = &request.mac {
            parse_mac(mac).map_err(|m| AgentError::refused("mac", m))?;
        }
        if request.ips.is_empty() {
            return Err(AgentError::refused(
                "ips",
                "an endpoint needs at least one address",
            ));
        }
        let identity = model
            .identity_for(&request.namespace, &request.network)
            .map_err(|m| AgentError::refused("network", m))?;
        if let Some(existing) =
            self.registry
                .find(&request.namespace, &request.pod, &request.interface)
        {
            return Err(AgentError::refused(
                "interface",
                format!(
                    "{}/{} already has interface {} (endpoint {})",
                    request.namespace, request.pod, request.interface, existing.id
                ),
            ));
        }
        for ip in &request.ips {
            if let Some(owner) = self.registry.all().find(|e| e.request.ips.contains(ip)) {
                return Err(AgentError::refused(
                    "ips",
                    format!(
                        "{ip} already belongs to {}/{} {}",
                        owner.request.namespace, owner.request.pod, owner.request.interface
                    ),
                ));
            }
        }
        let reserved = request
            .container_id
            .as_ref()
            .is_some_and(|c| self.reservations.contains_key(c));
        if !reserved
            && let Some(usage) = self.quota_usage(model, &request.namespace)
            && usage.used >= usage.quota
        {
            return Err(AgentError::QuotaReached {
                tenant: usage.tenant,
                quota: usage.quota,
            });
        }
        let ifindex = crate::dataplane::interface_index(&request.netns, &request.host_interface)?;
        // Host-side endpoint records are keyed by interface index, which is unique only within
        // one network namespace (README, "Known limitations"); in-pod ones have keys of their own.
        if request.side == AttachSide::Host
            && let Some(other) = self
                .registry
                .all()
                .find(|e| e.request.side == AttachSide::Host && e.ifindex == ifindex)
        {
            return Err(AgentError::refused(
                "hostInterface",
                format!(
                    "interface index {ifindex} ({} in {}) is already the endpoint of {}/{} {} ({} in {}); all endpoint interfaces of a node must live in one network namespace",
                    request.host_interface,
                    request.netns.display(),
                    other.request.namespace,
                    other.request.pod,
                    other.request.interface,
                    other.request.host_interface,
                    other.request.netns.display()
                ),
            ));
        }
        // An in-pod endpoint's record is keyed by its program instance's key: take the
        // instance first.
        let pod_instance = match request.side {
            AttachSide::Host => None,
            AttachSide::InPod => Some(self.dataplane.take_pod_instance()?),
        };
        let mut endpoint = Endpoint {
            id: self.registry.next_id(),
            request,
            ifindex,
            pod_key: pod_instance.as_ref().map_or(0, PodInstance::key),
            recovered: None,
            bridge: None,
            link_local: Vec::new(),
        };
        self.discover_interfaces(&mut endpoint);
        self.registry
            .insert(endpoint.clone())
            .map_err(|source| AgentError::Registry {
                path: self.config.state_dir.clone(),
                source,
            })?;
        // Re-read the node's addresses: the delegate that made this interface may have given
        // the node one (the bridge plugin's gateway), which must count as HOST at once.
        self.node = None;
        let result = self.reconcile().and_then(|_| {
            self.dataplane
                .attach(
                    &endpoint.request.netns,
                    &endpoint.request.host_interface,
                    endpoint.id,
                    pod_instance,
                )
                .map_err(AgentError::from)?;
            self.sync_bridges()
        });
        if let Err(e) = result {
            let _ = self.dataplane.detach(endpoint.id);
            let _ = self.registry.remove(endpoint.id);
            let _ = self.reconcile();
            return Err(e);
        }
        info!(endpoint = endpoint.id, identity, pod = %endpoint.request.pod, namespace = %endpoint.request.namespace, interface = %endpoint.request.interface, "endpoint attached");
        Ok(endpoint)
    }

    /// Detaches and forgets an endpoint. Removing one that does not exist succeeds.
    pub fn remove_endpoint(
        &mut self,
        namespace: &str,
        pod: &str,
        interface: &str,
    ) -> Result<Option<Endpoint>, AgentError> {
        match self.registry.find(namespace, pod, interface) {
            Some(endpoint) => self.remove_endpoint_id(endpoint.id),
            None => Ok(None),
        }
    }

    /// Detaches and forgets the endpoint `id`: its programs first (nothing runs with a missing
    /// record), then its map entries. Removing one that does not exist succeeds.
    pub fn remove_endpoint_id(&mut self, id: u32) -> Result<Option<Endpoint>, AgentError> {
        if self.registry.get(id).is_none() {
            return Ok(None);
        }
        self.dataplane.detach(id)?;
        self.forget_endpoint(id)
    }

    /// Forgets the endpoint `id` and removes its map entries, leaving its programs attached:
    /// without a record they drop everything on the interface until
    /// [`Agent::release_links`]. Forgetting one that does not exist succeeds.
    pub fn forget_endpoint(&mut self, id: u32) -> Result<Option<Endpoint>, AgentError> {
        let Some(endpoint) = self.registry.get(id).cloned() else {
            return Ok(None);
        };
        self.registry
            .remove(endpoint.id)
            .map_err(|source| AgentError::Registry {
                path: self.config.state_dir.clone(),
                source,
            })?;
        if self.model.is_some() {
            self.reconcile()?;
            let registry = &self.registry;
            self.maps.prune_counters(&|id| registry.get(id).is_some())?;
        }
        self.sync_bridges()?;
        info!(endpoint = endpoint.id, pod = %endpoint.request.pod, namespace = %endpoint.request.namespace, interface = %endpoint.request.interface, "endpoint removed");
        Ok(Some(endpoint))
    }

    /// Detaches and unpins the links of endpoint `id` (idempotent).
    pub fn release_links(&mut self, id: u32) -> Result<(), AgentError> {
        Ok(self.dataplane.detach(id)?)
    }

    /// A registered endpoint.
    pub fn endpoint(&self, id: u32) -> Option<&Endpoint> {
        self.registry.get(id)
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The loaded dataplane (tests run its programs through `BPF_PROG_TEST_RUN`).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// What the agent recorded about its own work.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// The pinned maps.
    pub fn maps(&self) -> &PinnedMaps {
        &self.maps
    }

    /// The configuration directory.
    pub fn config_dir(&self) -> &Path {
        &self.config.config_dir
    }
}

/// Removes everything genie put on a node: detaches every pinned link, unpins every map,
/// removes the registry and the socket.
pub fn cleanup(bpffs: &Path, state_dir: &Path, socket: &Path) -> Result<(), AgentError> {
    crate::dataplane::cleanup(bpffs)?;
    for path in [
        state_dir.join(crate::endpoint::REGISTRY_FILE),
        socket.to_owned(),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AgentError::Registry { path, source });
            }
        }
    }
    let _ = std::fs::remove_dir(state_dir);
    Ok(())
}
