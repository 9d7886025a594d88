//! The agent: owns the node's dataplane, the endpoint registry and the last valid model, and
//! keeps the maps equal to what they say.

mod cni;
mod endpoints;
pub mod http;
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
use tracing::{info, warn};

pub use crate::api::Status;
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
    /// The node's CNI configuration directory and the socket genie-cni reaches the agent at:
    /// the agent keeps genie's configuration in front of the primary there (`None`: it does
    /// not; `genie install-cni` alone wrote it).
    pub cni_config: Option<(PathBuf, PathBuf)>,
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
    /// The kind of failure, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Dataplane(e) => e.kind(),
            AgentError::Registry { .. } => "registry",
            AgentError::Model(_) => "model",
            AgentError::Refused { .. } => "refused",
            AgentError::QuotaReached { .. } => "quota",
            AgentError::NotReady(_) => "not-ready",
            AgentError::Netns(_) => "netns",
            AgentError::Kube(_) => "kube",
            AgentError::Runtime { .. } => "runtime",
        }
    }

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
    kube: Option<std::sync::Arc<KubeSource>>,
    /// What the cluster knows beyond the objects (Kubernetes source).
    cluster: ClusterSnapshot,
    /// The last acceptance's verdict on each object (kept in the state directory).
    verdicts: Vec<Verdict>,
    /// Quota taken by CNI ADDs in progress, by container: planned endpoints count against
    /// their tenant's quota from planning until the ADD ends, so concurrent ADDs cannot both
    /// see room that only one of them can have.
    reservations: BTreeMap<String, QuotaReservation>,
    /// Whether `pace_tcp` is attached (for the metrics).
    pacing_attached: bool,
    /// Why genie's CNI configuration cannot be kept (no primary network): not ready, CNI
    /// STATUS answers 50.
    cni_config_error: Option<String>,
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
    /// The dataplane as a scrape reports it: each map read once through the open handles.
    pub fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot, DataplaneError> {
        self.metrics.snapshots.inc();
        crate::metrics::Snapshot::read(&self.maps, self.status().ready, self.pacing_attached)
    }

    /// Loads (or adopts) the pinned dataplane, re-attaches the registered endpoints (swapping
    /// the program inside their pinned links, so there is no gap) and reads the configuration.
    /// With an invalid configuration the pinned maps are left exactly as they are.
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let kube = match &config.kube {
            Some(k) => Some(std::sync::Arc::new(KubeSource::start(
                k.kubeconfig.clone(),
                k.node_name.clone(),
                k.dns_service.clone(),
            )?)),
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
            pacing_attached: false,
            cni_config_error: None,
        };
        agent.verdicts = crate::model::accept::read_verdicts(&agent.config.state_dir);
        agent.zones = agent.pinned_zones()?;
        agent.readopt_endpoints()?;
        if let Some(cgroup) = agent.config.pacing_cgroup.clone() {
            match agent.dataplane.pace_tcp(&cgroup) {
                Ok(()) => {
                    agent.pacing_attached = true;
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
    #[tracing::instrument(skip_all, fields(endpoints = self.registry.all().count()))]
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
        self.metrics.reconcile_runs.inc();
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics.failed("reconcile", e.kind());
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

    /// The Kubernetes source, to use without the agent's lock.
    pub fn kube_handle(&self) -> Option<std::sync::Arc<KubeSource>> {
        self.kube.clone()
    }

    /// The Kubernetes source, when objects come from the API.
    pub fn kube(&self) -> Option<&KubeSource> {
        self.kube.as_deref()
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

    /// The current status.
    pub fn status(&self) -> Status {
        Status {
            ready: self.model.is_some() && self.cni_config_error.is_none(),
            config_error: self
                .config_error
                .clone()
                .or_else(|| self.cni_config_error.clone()),
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
