//! The Kubernetes source (`genie agent --source kube`): watches genie's kinds, Pods and Nodes
//! through kube-rs, and hands the agent the same thing the file source does — typed
//! [`SourceObject`]s, each with its origin (`Kind/name` and resourceVersion) — plus what only
//! the cluster knows: the addresses of pods on other nodes and of every node.
//!
//! Other nodes' pods get their identity from the `NodeEndpoints` object each node's agent
//! writes, never from a pod's `network-status` annotation: anyone who may edit a pod may edit
//! that, and could claim another node's (or an outside) address as a tenant's identity.
//!
//! Watches restart by relisting on any error, `410 Gone` included (kube-runtime's watcher with
//! its default backoff). The stores keep the last complete list while the API is unreachable,
//! and a relist replaces a store only once complete, so enforcement never lapses or loosens
//! meanwhile; what changed during an outage is applied when the relist completes.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};

mod publish;
mod snapshot;

use crate::{
    model::{
        Enforced, Kind, Origin, SourceObject, Verdict,
        objects::{
            Condition, LogicalNetworkObject, NodeEndpointsObject, NodeEndpointsSpec, ObjectMeta,
            ObjectStatus, PhysicalNetworkObject, PublishedEndpoint, TenantObject,
        },
    },
    reconcile::RemoteEndpoint,
};

/// The annotation Multus-compatible runtimes and genie-cni write: the pod's interfaces.
const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    #[error("starting the Kubernetes source's runtime: {0}")]
    Runtime(std::io::Error),
}

/// A genie kind as the dynamic API sees it. Objects are watched untyped so that one object
/// the agent cannot read is that object's problem, not a failed list of its kind.
fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::PhysicalNetwork => ApiResource::erase::<PhysicalNetworkObject>(&()),
        Kind::Tenant => ApiResource::erase::<TenantObject>(&()),
        Kind::LogicalNetwork => ApiResource::erase::<LogicalNetworkObject>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
    }
}

/// The watches besides the genie kinds (all must have listed once before the agent trusts
/// an absence).
const OTHER_WATCHES: [&str; 4] = ["Pod", "Node", "Service", "NodeEndpoints"];

/// Everything the watches know, by kind and name.
#[derive(Debug, Default)]
struct Stores {
    /// kind → name → object (`spec` and `metadata` as JSON).
    genie: BTreeMap<Kind, BTreeMap<String, DynamicObject>>,
    /// (namespace, name) → pod.
    pods: BTreeMap<(String, String), Pod>,
    nodes: BTreeMap<String, Node>,
    /// Every node's published endpoints, by node name.
    node_endpoints: BTreeMap<String, NodeEndpointsObject>,
    /// The cluster DNS Service, when it exists.
    dns: Option<Service>,
    /// Which stores have completed their first list.
    synced: BTreeMap<&'static str, bool>,
}

/// What the agent reads from the source on each reload.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// genie objects and this node's pods.
    pub objects: Vec<SourceObject>,
    /// Pods on other nodes: their addresses and networks.
    pub remote_endpoints: Vec<RemoteEndpoint>,
    /// Every node's addresses (HOST).
    pub node_addresses: Vec<IpAddr>,
    /// The cluster DNS Service's addresses (reachable on port 53 by every tenant).
    pub dns_addresses: Vec<IpAddr>,
}

/// A running Kubernetes source.
pub struct KubeSource {
    runtime: tokio::runtime::Runtime,
    client: Client,
    node_name: String,
    /// The cluster DNS Service (namespace, name).
    dns_service: (String, String),
    stores: Arc<Mutex<Stores>>,
    /// Bumped on every change any watch applies.
    generation: Arc<AtomicU64>,
    /// The status last written per (kind, name) (transition times blanked), so unchanged
    /// statuses are not patched again.
    written_status: Arc<Mutex<BTreeMap<(String, String), ObjectStatus>>>,
    /// The physical networks the node was last labelled with.
    labelled: Arc<Mutex<Option<Vec<String>>>>,
    /// The endpoints last published in this node's `NodeEndpoints`.
    published: Arc<Mutex<Option<Vec<PublishedEndpoint>>>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Connects with `kubeconfig` (or in-cluster configuration / `$KUBECONFIG` when `None`)
    /// and starts the watches for node `node_name`; `dns_service` is the cluster DNS
    /// Service's (namespace, name).
    pub fn start(
        kubeconfig: Option<PathBuf>,
        node_name: String,
        dns_service: (String, String),
    ) -> Result<Self, KubeSourceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube")
            .enable_all()
            .build()
            .map_err(KubeSourceError::Runtime)?;
        let client = runtime.block_on(async {
            let config = match &kubeconfig {
                Some(path) => {
                    let kc =
                        Kubeconfig::read_from(path).map_err(|e| KubeSourceError::Kubeconfig {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                        .await
                        .map_err(|e| KubeSourceError::Kubeconfig {
                            path: path.clone(),
                            message: e.to_string(),
                        })?
                }
                None => Config::infer()
                    .await
                    .map_err(|e| KubeSourceError::Config(e.to_string()))?,
            };
            Client::try_from(config).map_err(|e| KubeSourceError::Config(e.to_string()))
        })?;
        let source = Self {
            runtime,
            client,
            node_name,
            dns_service,
            stores: Arc::new(Mutex::new(Stores::default())),
            generation: Arc::new(AtomicU64::new(0)),
            written_status: Arc::new(Mutex::new(BTreeMap::new())),
            labelled: Arc::new(Mutex::new(None)),
            published: Arc::new(Mutex::new(None)),
        };
        source.spawn_watches();
        Ok(source)
    }

    fn spawn_watches(&self) {
        for kind in Kind::GENIE {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_resource(kind));
            self.spawn_watch(
                kind.name(),
                api,
                move |stores, objects| {
                    stores.genie.insert(
                        kind,
                        objects
                            .into_iter()
                            .map(|o: DynamicObject| {
                                (o.metadata.name.clone().unwrap_or_default(), o)
                            })
                            .collect(),
                    );
                },
                move |stores, event| match event {
                    Change::Apply(o) => {
                        stores
                            .genie
                            .entry(kind)
                            .or_default()
                            .insert(o.metadata.name.clone().unwrap_or_default(), o);
                    }
                    Change::Delete(o) => {
                        if let Some(m) = stores.genie.get_mut(&kind) {
                            m.remove(o.metadata.name.as_deref().unwrap_or_default());
                        }
                    }
                },
            );
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let key = |p: &Pod| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        self.spawn_watch(
            "Pod",
            pods,
            move |stores, objects| {
                stores.pods = objects.into_iter().map(|p| (key(&p), p)).collect();
            },
            move |stores, event| match event {
                Change::Apply(p) => {
                    stores.pods.insert(key(&p), p);
                }
                Change::Delete(p) => {
                    stores.pods.remove(&key(&p));
                }
            },
        );
        let (dns_namespace, dns_name) = self.dns_service.clone();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &dns_namespace);
        let wanted = dns_name.clone();
        self.spawn_watch_with(
            "Service",
            services,
            watcher::Config::default().fields(&format!("metadata.name={dns_name}")),
            move |stores, objects| {
                stores.dns = objects
                    .into_iter()
                    .find(|s| s.metadata.name.as_deref() == Some(wanted.as_str()));
            },
            move |stores, event| match event {
                Change::Apply(s) if s.metadata.name.as_deref() == Some(dns_name.as_str()) => {
                    stores.dns = Some(s);
                }
                Change::Delete(s) if s.metadata.name.as_deref() == Some(dns_name.as_str()) => {
                    stores.dns = None;
                }
                _ => {}
            },
        );
        let published: Api<NodeEndpointsObject> = Api::all(self.client.clone());
        let name_of = |o: &NodeEndpointsObject| o.metadata.name.clone().unwrap_or_default();
        self.spawn_watch(
            "NodeEndpoints",
            published,
            move |stores, objects| {
                stores.node_endpoints = objects.into_iter().map(|o| (name_of(&o), o)).collect();
            },
            move |stores, event| match event {
                Change::Apply(o) => {
                    stores.node_endpoints.insert(name_of(&o), o);
                }
                Change::Delete(o) => {
                    stores.node_endpoints.remove(&name_of(&o));
                }
            },
        );
        let nodes: Api<Node> = Api::all(self.client.clone());
        self.spawn_watch(
            "Node",
            nodes,
            |stores, objects| {
                stores.nodes = objects
                    .into_iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                    .collect();
            },
            |stores, event| match event {
                Change::Apply(n) => {
                    stores
                        .nodes
                        .insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                Change::Delete(n) => {
                    stores
                        .nodes
                        .remove(n.metadata.name.as_deref().unwrap_or_default());
                }
            },
        );
    }

    /// Runs one watch: `replace` installs a complete (re)list, `change` applies one event.
    fn spawn_watch<K>(
        &self,
        kind: &'static str,
        api: Api<K>,
        replace: impl Fn(&mut Stores, Vec<K>) + Send + 'static,
        change: impl Fn(&mut Stores, Change<K>) + Send + 'static,
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        self.spawn_watch_with(kind, api, watcher::Config::default(), replace, change);
    }

    /// [`KubeSource::spawn_watch`] with a watcher configuration (a field selector).
    fn spawn_watch_with<K>(
        &self,
        kind: &'static str,
        api: Api<K>,
        config: watcher::Config,
        replace: impl Fn(&mut Stores, Vec<K>) + Send + 'static,
        change: impl Fn(&mut Stores, Change<K>) + Send + 'static,
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let stores = Arc::clone(&self.stores);
        let generation = Arc::clone(&self.generation);
        self.runtime.spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            let mut buffer: Vec<K> = Vec::new();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        // The backoff retries; the stores keep what they had.
                        tracing::warn!(kind, error = %e, "watch failed; relisting");
                        continue;
                    }
                };
                let mut s = stores.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    watcher::Event::Init => buffer.clear(),
                    watcher::Event::InitApply(o) => buffer.push(o),
                    watcher::Event::InitDone => {
                        replace(&mut s, std::mem::take(&mut buffer));
                        s.synced.insert(kind, true);
                        generation.fetch_add(1, Ordering::Relaxed);
                    }
                    watcher::Event::Apply(o) => {
                        change(&mut s, Change::Apply(o));
                        generation.fetch_add(1, Ordering::Relaxed);
                    }
                    watcher::Event::Delete(o) => {
                        change(&mut s, Change::Delete(o));
                        generation.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    /// A counter that moves whenever any watch applied something (a completed list
    /// included); the agent polls it without holding its own lock.
    pub fn generation_handle(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.generation)
    }

    /// Whether every watch has completed its first list (before that, the agent must not
    /// treat missing objects as deleted).
    pub fn synced(&self) -> bool {
        let s = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        Kind::GENIE
            .map(Kind::name)
            .iter()
            .chain(&OTHER_WATCHES)
            .all(|k| s.synced.get(k).copied().unwrap_or(false))
    }
}

/// One watch event after a complete list.
enum Change<K> {
    Apply(K),
    Delete(K),
}
