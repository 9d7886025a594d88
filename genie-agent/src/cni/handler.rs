//! The agent's side of `genie-cni` (thick model, DESIGN.md §4): ADD works out the pod's
//! attachments, delegates each one to its real plugin and puts every interface under genie's
//! programs before it returns; DEL, CHECK and GC work from the node's attachment cache, so they
//! need neither the pod object nor the API server.
//!
//! Operations on one container are serialised; different containers proceed in parallel. The
//! agent itself is locked only to plan and to register or remove endpoints, never while a
//! delegate runs.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Condvar, Mutex},
    time::SystemTime,
};

use serde_json::Value;
use tracing::{info, warn};

use super::{
    annotations::{BandwidthRequest, DEFAULT_INTERFACE},
    backend::Backend,
    cache::{Cache, CacheError, CachedAttachment, CachedContainer, ChainedPlugin},
    delegate::{self, DelegateError, Invocation},
    plan::PlannedAttachment,
    result,
    spec::{self, CniError, Command, Env, NetConf, code, version_result},
};

/// How long `genie-cni` waits for the agent's answer: ADD runs every delegate of the pod.
pub const CNI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Containers with an operation in progress.
#[derive(Debug, Default)]
struct ContainerLocks {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// Held while one operation runs on one container.
struct ContainerGuard<'a> {
    locks: &'a ContainerLocks,
    id: String,
}

impl ContainerLocks {
    fn lock(&self, id: &str) -> ContainerGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(id) {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(id.to_owned());
        ContainerGuard {
            locks: self,
            id: id.to_owned(),
        }
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.locks.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.id);
        self.locks.freed.notify_all();
    }
}

/// Gives a container's quota reservation back when its ADD ends, however it ends.
struct ReservationGuard<'a> {
    agent: &'a dyn Backend,
    container: String,
}

impl Drop for ReservationGuard<'_> {
    fn drop(&mut self) {
        self.agent.release_reservation(&self.container);
    }
}

/// A plugin binary, its modification time and the runtime's version.
type VersionKey = (PathBuf, Option<SystemTime>, String);

/// The CNI request handler of one node agent.
#[derive(Debug)]
pub struct CniHandler {
    cache: Cache,
    /// host-local's lease directories, one per network.
    ipam_dir: PathBuf,
    /// The node's network namespace: host-side interfaces live there.
    node_netns: PathBuf,
    /// Where delegates run: the node's namespace (`None`: the caller's, for unit tests).
    delegate_netns: Option<PathBuf>,
    locks: ContainerLocks,
    /// Negotiated versions by (plugin binary, its modification time, the runtime's version):
    /// asking a plugin for VERSION costs a process per attachment otherwise.
    versions: Mutex<HashMap<VersionKey, String>>,
}

fn io_error(e: CacheError) -> CniError {
    CniError::new(
        code::IO_FAILURE,
        "genie's attachment cache failed",
        e.to_string(),
    )
}

/// A delegate's failure as the runtime sees it: the plugin's own code when it gave one of the
/// spec's, genie's `DELEGATE_FAILED` otherwise, with the network and interface named.
fn delegate_error(attachment: &str, e: DelegateError) -> CniError {
    let code = match &e {
        DelegateError::Failed { error, .. } if error.code < 100 => error.code,
        DelegateError::Config { .. } => code::INVALID_NETWORK_CONFIG,
        _ => code::DELEGATE_FAILED,
    };
    CniError::new(code, format!("{attachment}: {e}"), "")
}

/// The agent's refusal, naming the attachment it concerns.
fn agent_error(attachment: &str, e: CniError) -> CniError {
    CniError {
        msg: format!("{attachment}: {}", e.msg),
        ..e
    }
}

impl CniHandler {
    /// A handler keeping its cache and IPAM state under `state_dir`.
    pub fn new(state_dir: &Path, node_netns: &Path) -> Result<Self, CacheError> {
        Ok(Self {
            cache: Cache::open(&state_dir.join("cni"))?,
            ipam_dir: super::ipam_dir(state_dir),
            node_netns: node_netns.to_owned(),
            delegate_netns: Some(node_netns.to_owned()),
            locks: ContainerLocks::default(),
            versions: Mutex::default(),
        })
    }

    /// Runs delegates in the caller's namespace (unit tests without root).
    #[cfg(test)]
    fn delegates_in_caller_netns(mut self) -> Self {
        self.delegate_netns = None;
        self
    }

    /// Handles one request; `Ok(Some(_))` is printed on stdout by `genie-cni`. Everything
    /// logged meanwhile (delegates, registration, rollback) carries the container and pod.
    #[tracing::instrument(
        name = "cni",
        skip_all,
        fields(
            command = ?env.command,
            container = env.container_id.as_deref().unwrap_or(""),
            pod = %env.pod().map(|(n, p)| format!("{n}/{p}")).unwrap_or_default(),
            network = %conf.name,
        )
    )]
    pub fn handle(
        &self,
        agent: &dyn Backend,
        env: &Env,
        conf: &NetConf,
    ) -> Result<Option<Value>, CniError> {
        let outcome = match env.command {
            Command::Add => self.add(agent, env, conf).map(Some),
            Command::Del => self.del(agent, env, conf).map(|()| None),
            Command::Check => self.check(agent, env).map(|()| None),
            Command::Gc => self.gc(agent, conf).map(|()| None),
            Command::Status => {
                if agent.ready() {
                    Ok(None)
                } else {
                    Err(CniError::new(
                        code::PLUGIN_NOT_AVAILABLE,
                        "the genie agent has no valid configuration yet",
                        "",
                    ))
                }
            }
            Command::Version => Ok(Some(version_result(&conf.cni_version))),
        };
        outcome.map_err(|e| e.in_version(&conf.cni_version))
    }

    fn add(&self, agent: &dyn Backend, env: &Env, conf: &NetConf) -> Result<Value, CniError> {
        let container_id = env.container_id.clone().unwrap_or_default();
        let runtime_ifname = env.ifname.clone().unwrap_or_default();
        let _guard = self.locks.lock(&container_id);
        if self.cache.load(&container_id).map_err(io_error)?.is_some() {
            return Err(CniError::new(
                code::ALREADY_ATTACHED,
                format!("container {container_id} already has genie attachments; DEL it first"),
                "",
            ));
        }
        // Runtimes outside Kubernetes pass no pod: such a container is the pod `default/<id>`.
        let (namespace, pod) = env
            .pod()
            .map_or(("default".to_owned(), container_id.clone()), |(n, p)| {
                (n.to_owned(), p.to_owned())
            });
        let plan = agent.plan(&namespace, &pod, &container_id)?;
        let _reservation = ReservationGuard {
            agent,
            container: container_id.clone(),
        };
        let runtime_bandwidth = runtime_bandwidth(conf)?;
        let mut prepared = Vec::with_capacity(plan.len());
        for planned in &plan {
            prepared.push(self.prepare(env, conf, planned, &runtime_ifname, runtime_bandwidth)?);
        }
        let mut record = CachedContainer {
            container_id,
            network_name: conf.name.clone(),
            ifname: runtime_ifname.clone(),
            namespace,
            pod,
            netns: env.netns.clone(),
            cni_path: env.path.clone(),
            args: env.args.clone(),
            attachments: Vec::new(),
            adding: true,
        };
        let mut primary = None;
        for attachment in prepared {
            let label = attachment_label(&attachment);
            let is_primary = attachment.ifname == runtime_ifname;
            match self.attach_one(agent, &mut record, attachment) {
                Ok(result) if is_primary => primary = Some(result),
                Ok(_) => {}
                Err(error) => {
                    if let Err(cleanup) = self.teardown(agent, &mut record) {
                        warn!(container = %record.container_id, error = %cleanup, "rolling back a failed ADD left attachments; DEL or GC will retry");
                    }
                    warn!(container = %record.container_id, attachment = %label, error = %error, "ADD failed and was rolled back");
                    return Err(error);
                }
            }
        }
        record.adding = false;
        if let Err(error) = self.cache.store(&record).map_err(io_error) {
            let _ = self.teardown(agent, &mut record);
            return Err(error);
        }
        info!(container = %record.container_id, pod = %format!("{}/{}", record.namespace, record.pod), interfaces = record.attachments.len(), "pod attached");
        // For display and other tools (Multus-compatible readers); genie's own nodes take
        // identities only from `NodeEndpoints`.
        let status = serde_json::to_value(result::network_status(&record)).unwrap_or_default();
        agent.publish_network_status(&record.namespace, &record.pod, &status);
        let primary = primary.unwrap_or_else(|| {
            record
                .attachments
                .first()
                .map(|a| a.result.clone())
                .unwrap_or_default()
        });
        Ok(result::convert(&primary, &conf.cni_version))
    }

    /// Resolves an attachment's delegate before anything is created: the plugin binary, the
    /// version both speak and the configuration.
    fn prepare(
        &self,
        env: &Env,
        conf: &NetConf,
        planned: &PlannedAttachment,
        runtime_ifname: &str,
        runtime_bandwidth: Option<BandwidthRequest>,
    ) -> Result<CachedAttachment, CniError> {
        let ifname = if planned.interface == DEFAULT_INTERFACE {
            runtime_ifname.to_owned()
        } else {
            planned.interface.clone()
        };
        let label = format!("network {} ({ifname})", planned.network);
        let plugin_config = match &planned.plugin {
            Some(plugin) => Some(plugin),
            None => conf.default_network.as_ref(),
        };
        let plugins = match plugin_config {
            Some(value) => delegate::plugin_list(value).map_err(|message| {
                delegate_error(
                    &label,
                    DelegateError::Config {
                        network: planned.network.clone(),
                        message,
                    },
                )
            })?,
            None => Vec::new(),
        };
        let is_runtime_interface = ifname == runtime_ifname;
        let mut binaries = Vec::with_capacity(plugins.len().max(1));
        let mut version = conf.cni_version.clone();
        for plugin in &plugins {
            let plugin_type = plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let binary = delegate::find_plugin(&env.path, plugin_type)
                .map_err(|e| delegate_error(&label, e))?;
            // Each plugin is asked what it speaks; the chain speaks the newest version all of
            // them do, since each reads the previous one's result (CNI spec, prevResult).
            let theirs = self
                .negotiate(&binary, &env.path, &conf.cni_version)
                .map_err(|e| delegate_error(&label, e))?;
            if spec::version_less(&theirs, &version) {
                version = theirs;
            }
            binaries.push(binary);
        }
        // Capabilities the runtime filled (port mappings, bandwidth, …) go to the plugins of
        // its own interface that declare them, and to no other.
        let runtime_config = conf
            .runtime_config
            .as_ref()
            .filter(|_| is_runtime_interface);
        // An embedded network configuration list keeps its own name (plugins such as portmap
        // and Calico key their state by it).
        let delegate_name = plugin_config
            .filter(|v| v.get("plugins").is_some())
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(&planned.network)
            .to_owned();
        let mut configs = Vec::with_capacity(plugins.len());
        for (i, plugin) in plugins.iter().enumerate() {
            let mut config = if i == 0 {
                delegate::network_config(
                    &delegate_name,
                    Some(plugin),
                    &planned.subnets,
                    &version,
                    is_runtime_interface,
                    &self.ipam_dir,
                )
                .map_err(|e| delegate_error(&label, e))?
            } else {
                delegate::chained_config(&delegate_name, plugin, &version)
            };
            delegate::add_runtime_config(&mut config, runtime_config);
            configs.push(config);
        }
        honour_requests(&mut configs, planned, &label)?;
        let (Some(binary), Some(config)) = (binaries.first().cloned(), configs.first().cloned())
        else {
            return Err(delegate_error(
                &label,
                DelegateError::Config {
                    network: planned.network.clone(),
                    message: "has no `plugin` (a delegate CNI configuration object)".to_owned(),
                },
            ));
        };
        let chain = binaries
            .into_iter()
            .zip(configs)
            .skip(1)
            .map(|(plugin, config)| ChainedPlugin { plugin, config })
            .collect();
        // The runtime's bandwidth capability (kubelet fills it from the pod's
        // `kubernetes.io/*-bandwidth` annotations) is for its own interface.
        let bandwidth = match runtime_bandwidth {
            Some(b) if ifname == runtime_ifname => Some(b),
            _ => planned.bandwidth,
        };
        Ok(CachedAttachment {
            network: planned.network.clone(),
            ifname,
            plugin: binary,
            config,
            result: Value::Null,
            endpoint: None,
            bandwidth,
            chain,
        })
    }

    /// The version to speak with `binary`, asked once per binary (a replaced binary is asked
    /// again).
    fn negotiate(
        &self,
        binary: &Path,
        search_path: &[PathBuf],
        ours: &str,
    ) -> Result<String, DelegateError> {
        let modified = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
        let key = (binary.to_owned(), modified, ours.to_owned());
        if let Some(version) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(version.clone());
        }
        let version = delegate::negotiate_version(binary, search_path, ours)?;
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, version.clone());
        Ok(version)
    }

    /// Runs one attachment's delegate and registers its interface; every step is in the cache
    /// before the next one starts. Returns the delegate's result.
    fn attach_one(
        &self,
        agent: &dyn Backend,
        record: &mut CachedContainer,
        attachment: CachedAttachment,
    ) -> Result<Value, CniError> {
        let label = attachment_label(&attachment);
        let invocation = self.invocation(record, &attachment.ifname);
        let plugins: Vec<(PathBuf, Value)> = attachment
            .plugins()
            .map(|(p, c)| (p.to_owned(), c.clone()))
            .collect();
        record.attachments.push(attachment);
        self.cache.store(record).map_err(io_error)?;
        let last = record.attachments.len() - 1;
        // A chain: each plugin gets the previous one's result as prevResult, and each result
        // is cached before the next plugin runs (DEL after a crash gets the newest).
        let mut added: Option<Value> = None;
        for (plugin, config) in &plugins {
            let mut config = config.clone();
            if let (Some(prev), Some(object)) = (&added, config.as_object_mut()) {
                object.insert("prevResult".to_owned(), prev.clone());
            }
            let result = delegate::add(plugin, &invocation, &config)
                .map_err(|e| delegate_error(&label, e))?
                .raw;
            record.attachments[last].result = result.clone();
            self.cache.store(record).map_err(io_error)?;
            added = Some(result);
        }
        let added = added.unwrap_or_default();
        let request = record
            .endpoint_request(&record.attachments[last], &self.node_netns)
            .map_err(|m| {
                CniError::new(code::INVALID_NETWORK_CONFIG, format!("{label}: {m}"), "")
            })?;
        let endpoint = agent
            .register(request)
            .map_err(|e| agent_error(&label, e))?;
        record.attachments[last].endpoint = Some(endpoint);
        self.cache.store(record).map_err(io_error)?;
        Ok(added)
    }

    fn invocation(&self, record: &CachedContainer, ifname: &str) -> Invocation {
        Invocation {
            path: record.cni_path.clone(),
            container_id: record.container_id.clone(),
            // After the runtime deleted the namespace, delegates clean up without one.
            netns: record.netns.clone().filter(|p| p.exists()),
            ifname: ifname.to_owned(),
            args: record.args.clone(),
            host_netns: self.delegate_netns.clone(),
        }
    }
}

/// `runtimeConfig.bandwidth` (the CNI `bandwidth` capability), in bits/s and bits.
fn runtime_bandwidth(conf: &NetConf) -> Result<Option<BandwidthRequest>, CniError> {
    let Some(value) = conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.get("bandwidth"))
    else {
        return Ok(None);
    };
    let bandwidth: BandwidthRequest = serde_json::from_value(value.clone()).map_err(|e| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("runtimeConfig.bandwidth: {e}"),
            "runtimeConfig.bandwidth",
        )
    })?;
    if [bandwidth.ingress_rate, bandwidth.egress_rate].contains(&Some(0)) {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "runtimeConfig.bandwidth: a rate must be greater than zero",
            "runtimeConfig.bandwidth",
        ));
    }
    Ok(Some(bandwidth))
}

/// Passes an attachment's NPWG `ips` and `mac` to the plugins of its chain that declare those
/// capabilities (CNI conventions: `runtimeConfig.ips`, `runtimeConfig.mac`); a request no
/// plugin declares is refused with its own code before anything is created, never dropped.
fn honour_requests(
    configs: &mut [Value],
    planned: &PlannedAttachment,
    label: &str,
) -> Result<(), CniError> {
    let mut requests = Vec::new();
    if !planned.ips.is_empty() {
        requests.push(("ips", serde_json::json!(planned.ips)));
    }
    if let Some(mac) = &planned.mac {
        requests.push(("mac", serde_json::json!(mac)));
    }
    for (capability, value) in requests {
        let mut honoured = false;
        for config in configs.iter_mut() {
            let declares = config
                .pointer(&format!("/capabilities/{capability}"))
                .and_then(Value::as_bool)
                == Some(true);
            if declares && let Some(object) = config.as_object_mut() {
                let runtime = object
                    .entry("runtimeConfig")
                    .or_insert_with(|| serde_json::json!({}));
                runtime[capability] = value.clone();
                honoured = true;
            }
        }
        if !honoured {
            return Err(CniError::new(
                code::UNSUPPORTED_REQUEST,
                format!(
                    "{label}: the attachment asks for `{capability}` {value}, but no plugin of the network declares the `{capability}` capability"
                ),
                capability,
            ));
        }
    }
    Ok(())
}

fn attachment_label(attachment: &CachedAttachment) -> String {
    format!("network {} ({})", attachment.network, attachment.ifname)
}

mod remove;
#[cfg(test)]
mod tests;
