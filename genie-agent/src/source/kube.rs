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

    /// The cluster as the agent consumes it.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let s = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = ClusterSnapshot::default();
        for (kind, objects) in &s.genie {
            for (name, object) in objects {
                let api_version = object
                    .types
                    .as_ref()
                    .map_or(crate::model::API_VERSION, |t| t.api_version.as_str());
                out.objects.push(SourceObject::new(
                    *kind,
                    ObjectMeta {
                        name: name.clone(),
                        ..ObjectMeta::default()
                    },
                    api_version,
                    object.data.get("spec").cloned().unwrap_or(Value::Null),
                    origin(*kind, name, &object.metadata),
                    created_at(&object.metadata),
                ));
            }
        }
        for ((namespace, name), pod) in &s.pods {
            let on_this_node =
                pod.spec.as_ref().and_then(|p| p.node_name.as_deref()) == Some(&self.node_name);
            if on_this_node {
                out.objects.push(SourceObject::new(
                    Kind::Pod,
                    ObjectMeta {
                        name: name.clone(),
                        namespace: Some(namespace.clone()),
                        labels: BTreeMap::new(),
                        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
                    },
                    "v1",
                    Value::Null,
                    origin(Kind::Pod, &format!("{namespace}/{name}"), &pod.metadata),
                    created_at(&pod.metadata),
                ));
            }
        }
        // Other nodes' endpoints, as their agents published them; a node that no longer
        // exists publishes nothing.
        for (node_name, published) in &s.node_endpoints {
            if *node_name == self.node_name {
                continue;
            }
            let Some(node) = s.nodes.get(node_name) else {
                continue;
            };
            let pod_cidrs = node_pod_cidrs(node);
            out.remote_endpoints
                .extend(remote_endpoints(&published.spec, &pod_cidrs));
        }
        for node in s.nodes.values() {
            for address in node
                .status
                .as_ref()
                .and_then(|st| st.addresses.as_ref())
                .into_iter()
                .flatten()
            {
                if matches!(address.type_.as_str(), "InternalIP" | "ExternalIP")
                    && let Ok(ip) = address.address.parse()
                {
                    out.node_addresses.push(ip);
                }
            }
        }
        out.node_addresses.sort();
        out.node_addresses.dedup();
        if let Some(spec) = s.dns.as_ref().and_then(|d| d.spec.as_ref()) {
            out.dns_addresses = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            out.dns_addresses.sort();
            out.dns_addresses.dedup();
        }
        out
    }

    /// Writes the status of every genie object from its verdict: `Accepted` (is the current
    /// spec valid) and `Enforced` (is it what the nodes enforce), and `endpoints` per network
    /// and tenant on this node. Patches only what changed since the last call, in the
    /// background.
    pub fn report(&self, verdicts: &[Verdict], endpoints: &BTreeMap<(String, String), u32>) {
        let s = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut patches = Vec::new();
        let written = self
            .written_status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for verdict in verdicts {
            let Some(object) = s
                .genie
                .get(&verdict.kind)
                .and_then(|o| o.get(&verdict.name))
            else {
                continue;
            };
            let kind = verdict.kind.name();
            let name = &verdict.name;
            let count = endpoints
                .get(&(kind.to_owned(), name.clone()))
                .copied()
                .unwrap_or(0);
            let generation = object.metadata.generation.unwrap_or(0);
            // The total over nodes: the others' counts as the object last said, ours now.
            let previous: ObjectStatus = object
                .data
                .get("status")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let mut nodes: BTreeMap<String, u32> = previous
                .nodes
                .iter()
                .filter(|(node, _)| **node != self.node_name)
                .map(|(n, c)| (n.clone(), *c))
                .collect();
            let total = nodes.values().sum::<u32>() + count;
            nodes.insert(self.node_name.clone(), count);
            let mut status = ObjectStatus {
                conditions: conditions(verdict, generation),
                endpoints: Some(total),
                nodes,
            };
            let key = (kind.to_owned(), name.clone());
            let mut compare = status.clone();
            for condition in &mut compare.conditions {
                condition.last_transition_time.clear();
            }
            if written.get(&key) == Some(&compare) {
                continue;
            }
            // A condition whose status did not change keeps its transition time.
            for condition in &mut status.conditions {
                if let Some(old) = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition.type_ && c.status == condition.status)
                    && !old.last_transition_time.is_empty()
                {
                    condition.last_transition_time = old.last_transition_time.clone();
                }
            }
            patches.push((api_resource(verdict.kind), key, status, compare));
        }
        drop(s);
        drop(written);
        let client = self.client.clone();
        let record = Arc::clone(&self.written_status);
        self.runtime.spawn(async move {
            for (resource, key, status, compare) in patches {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                let patch = Patch::Merge(json!({"status": status}));
                match api.patch_status(&key.1, &PatchParams::default(), &patch).await {
                    // Recorded only once written, so a failure is retried on the next report.
                    Ok(_) => {
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, compare);
                    }
                    Err(e) => {
                        tracing::warn!(kind = %resource.kind, name = %key.1, error = %e, "status patch failed");
                    }
                }
            }
        });
    }

    /// Labels this node with the physical networks it has (`physnet.genie.dev/<name>=true`), so
    /// pods that need them can be scheduled here; removes the labels of networks that are gone.
    /// Patches only when the set differs from the last one written.
    pub fn label_node(&self, physical_networks: &[String]) {
        let labelled = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        if labelled.as_deref() == Some(physical_networks) {
            return;
        }
        let label = |n: &String| format!("physnet.genie.dev/{n}");
        let mut labels: BTreeMap<String, Option<String>> = labelled
            .iter()
            .flatten()
            .map(|n| (label(n), None))
            .collect();
        for n in physical_networks {
            labels.insert(label(n), Some("true".to_owned()));
        }
        drop(labelled);
        let client = self.client.clone();
        let node = self.node_name.clone();
        let record = Arc::clone(&self.labelled);
        let wanted = physical_networks.to_vec();
        self.runtime.spawn(async move {
            let api: Api<Node> = Api::all(client);
            let patch = Patch::Merge(json!({"metadata": {"labels": labels}}));
            match api.patch(&node, &PatchParams::default(), &patch).await {
                // Recorded only once written, so a failure is retried on the next reload.
                Ok(_) => *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(wanted),
                Err(e) => tracing::warn!(node, error = %e, "labelling the node failed"),
            }
        });
    }

    /// Publishes this node's endpoints in its `NodeEndpoints` object (created when missing),
    /// when they differ from what was last written. Other nodes' agents give these addresses
    /// their identity.
    pub fn publish_endpoints(&self, endpoints: Vec<PublishedEndpoint>) {
        let mut endpoints = endpoints;
        endpoints.sort();
        if self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&endpoints)
        {
            return;
        }
        let client = self.client.clone();
        let node = self.node_name.clone();
        let record = Arc::clone(&self.published);
        self.runtime.spawn(async move {
            let api: Api<NodeEndpointsObject> = Api::all(client);
            let spec = NodeEndpointsSpec {
                endpoints: endpoints.clone(),
            };
            let patch = Patch::Merge(json!({"spec": &spec}));
            let written = match api.patch(&node, &PatchParams::default(), &patch).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let object = NodeEndpointsObject::new(&node, spec);
                    api.create(&kube::api::PostParams::default(), &object)
                        .await
                        .map(|_| ())
                }
                other => other.map(|_| ()),
            };
            match written {
                // Recorded only once written, so a failure is retried on the next reconcile.
                Ok(()) => *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoints),
                Err(e) => {
                    tracing::warn!(node, error = %e, "publishing the node's endpoints failed")
                }
            }
        });
    }

    /// Writes `k8s.v1.cni.cncf.io/network-status` onto a pod after its ADD (best effort, for
    /// display and other tools: genie's own nodes trust only `NodeEndpoints`).
    pub fn publish_network_status(&self, namespace: &str, pod: &str, status: &Value) {
        let client = self.client.clone();
        let (namespace, pod) = (namespace.to_owned(), pod.to_owned());
        let text = status.to_string();
        self.runtime.spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let patch = Patch::Merge(json!({"metadata": {"annotations": {NETWORK_STATUS: text}}}));
            if let Err(e) = api.patch(&pod, &PatchParams::default(), &patch).await {
                tracing::warn!(namespace, pod, error = %e, "publishing network-status failed");
            }
        });
    }
}

/// One watch event after a complete list.
enum Change<K> {
    Apply(K),
    Delete(K),
}

/// The endpoints another node published, with the pod CIDRs of that node (what its
/// default-network addresses must lie in, when the cluster assigns them).
fn remote_endpoints(published: &NodeEndpointsSpec, pod_cidrs: &[IpNet]) -> Vec<RemoteEndpoint> {
    let mut out = Vec::new();
    for endpoint in &published.endpoints {
        for ip in &endpoint.ips {
            if let Ok(ip) = ip.parse() {
                out.push(RemoteEndpoint {
                    ip,
                    namespace: endpoint.namespace.clone(),
                    network: endpoint.network.clone(),
                    pod_cidrs: pod_cidrs.to_vec(),
                });
            }
        }
    }
    out
}

/// `spec.podCIDRs` (or `spec.podCIDR`) of a node.
fn node_pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The `Accepted` and `Enforced` conditions of a verdict.
fn conditions(verdict: &Verdict, generation: i64) -> Vec<Condition> {
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now_rfc3339(),
        observed_generation: generation,
    };
    let accepted = if verdict.accepted() {
        condition("Accepted", true, "Valid", String::new())
    } else {
        condition("Accepted", false, "Invalid", verdict.problem_text())
    };
    let enforced = match verdict.enforced {
        Enforced::Current => condition("Enforced", true, "Enforced", String::new()),
        Enforced::LastValidVersion => condition(
            "Enforced",
            false,
            "LastValidVersionEnforced",
            "the current spec is refused; the last valid version stays in force until it is fixed or deleted".to_owned(),
        ),
        Enforced::Nothing => condition(
            "Enforced",
            false,
            "NotEnforced",
            "no version of this object was ever accepted".to_owned(),
        ),
    };
    vec![accepted, enforced]
}

/// Where an API object came from.
fn origin(kind: Kind, name: &str, meta: &kube::api::ObjectMeta) -> Origin {
    Origin::Api {
        kind,
        name: name.to_owned(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    }
}

/// Creation time in seconds since the epoch: the age that decides conflicts (older wins).
fn created_at(meta: &kube::api::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second())
}

/// Now as RFC 3339 UTC, for condition timestamps.
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| String::new(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEFAULT_NETWORK;

    #[test]
    fn published_endpoints_become_remote_endpoints() {
        let spec = NodeEndpointsSpec {
            endpoints: vec![
                PublishedEndpoint {
                    namespace: "red".to_owned(),
                    pod: "p".to_owned(),
                    interface: "eth0".to_owned(),
                    network: DEFAULT_NETWORK.to_owned(),
                    ips: vec!["198.18.20.5".to_owned(), "not an address".to_owned()],
                },
                PublishedEndpoint {
                    namespace: "red".to_owned(),
                    pod: "p".to_owned(),
                    interface: "eth1".to_owned(),
                    network: "red-a".to_owned(),
                    ips: vec!["198.18.1.7".to_owned(), "fd00::7".to_owned()],
                },
            ],
        };
        let cidrs: Vec<IpNet> = vec!["198.18.20.0/24".parse().unwrap()];
        let got = remote_endpoints(&spec, &cidrs);
        assert_eq!(
            got.iter()
                .map(|e| (e.ip.to_string(), e.network.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("198.18.20.5".to_owned(), DEFAULT_NETWORK),
                ("198.18.1.7".to_owned(), "red-a"),
                ("fd00::7".to_owned(), "red-a"),
            ]
        );
        assert!(
            got.iter()
                .all(|e| e.namespace == "red" && e.pod_cidrs == cidrs)
        );
    }
}
