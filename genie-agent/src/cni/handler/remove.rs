//! Taking attachments down, always from what the cache (or, without it, the registry)
//! recorded: rollback, DEL, the sweep of stale entries, CHECK and GC.

use super::*;

impl CniHandler {
    /// Undoes a container's attachments in reverse. Per attachment: the endpoint's record and
    /// addresses leave the maps first (its programs, still attached, now drop everything on
    /// the interface), then the delegate's DEL with its cached result removes the interface,
    /// then genie's links are released. Detaching a TCX link from a live interface waits for an
    /// RCU grace period; once the delegate removed the interface the links are defunct and
    /// release at no cost. Progress is written after each attachment, so an interrupted
    /// teardown resumes where it stopped.
    pub(super) fn teardown(
        &self,
        agent: &dyn Backend,
        record: &mut CachedContainer,
    ) -> Result<(), CniError> {
        while let Some(attachment) = record.attachments.last().cloned() {
            let label = attachment_label(&attachment);
            if let Some(id) = attachment.endpoint {
                agent.forget(id).map_err(|e| agent_error(&label, e))?;
            }
            let invocation = self.invocation(record, &attachment.ifname);
            let prev = (!attachment.result.is_null()).then_some(&attachment.result);
            // A chain is deleted in reverse, every plugin with the chain's result (CNI spec,
            // "Network Configuration Lists": DEL).
            for (plugin, config) in attachment.plugins().rev() {
                match delegate::del(plugin, &invocation, config, prev) {
                    Ok(()) => {}
                    // A delegate whose ADD failed may refuse DEL for the same reason (macvlan
                    // with a missing master fails both). It was asked to clean up once;
                    // retrying it forever would keep the pod's other attachments, and the pod,
                    // from going.
                    Err(e) if prev.is_none() => {
                        warn!(container = %record.container_id, attachment = %label, error = %e, "DEL of an attachment whose ADD failed also failed; moving on");
                    }
                    Err(e) => return Err(delegate_error(&label, e)),
                }
            }
            if let Some(id) = attachment.endpoint {
                agent
                    .release_links(id)
                    .map_err(|e| agent_error(&label, e))?;
            }
            record.attachments.pop();
            self.cache.store(record).map_err(io_error)?;
        }
        self.cache.remove(&record.container_id).map_err(io_error)
    }

    pub(super) fn del(
        &self,
        agent: &dyn Backend,
        env: &Env,
        conf: &NetConf,
    ) -> Result<(), CniError> {
        let container_id = env.container_id.clone().unwrap_or_default();
        let _guard = self.locks.lock(&container_id);
        let mut record = match self.cache.load(&container_id).map_err(io_error)? {
            Some(record) => record,
            // The cache entry is lost, but the registry knows the container's endpoints.
            None => match self.rebuild_from_registry(agent, env, conf) {
                Some(record) => record,
                // Never added, or already deleted: DEL must succeed (CNI spec, DEL).
                None => return Ok(()),
            },
        };
        if let Some(netns) = &env.netns {
            record.netns = Some(netns.clone());
        }
        self.teardown(agent, &mut record)?;
        info!(container = %container_id, "pod detached");
        Ok(())
    }

    /// A container's record rebuilt from the endpoints the registry holds for it, with each
    /// network's delegate as the current configuration has it, so DEL releases the endpoints,
    /// their links and (through the delegate's DEL) their addresses when the cache entry is
    /// lost. `None` when the registry knows no endpoint of the container.
    pub(super) fn rebuild_from_registry(
        &self,
        agent: &dyn Backend,
        env: &Env,
        conf: &NetConf,
    ) -> Option<CachedContainer> {
        let container_id = env.container_id.clone().unwrap_or_default();
        let runtime_ifname = env.ifname.clone().unwrap_or_default();
        let endpoints = agent.endpoints_of_container(&container_id);
        let delegates: Vec<_> = endpoints
            .iter()
            .map(|e| agent.network_delegate(&e.request.network, &e.request.interface))
            .collect();
        let first = endpoints.first()?;
        warn!(container = %container_id, endpoints = endpoints.len(), "DEL without an attachment cache entry: tearing down what the registry knows");
        let mut record = CachedContainer {
            container_id: container_id.clone(),
            network_name: conf.name.clone(),
            ifname: runtime_ifname.clone(),
            namespace: first.request.namespace.clone(),
            pod: first.request.pod.clone(),
            netns: env
                .netns
                .clone()
                .or_else(|| first.request.pod_netns.clone()),
            cni_path: env.path.clone(),
            args: env.args.clone(),
            attachments: Vec::new(),
            adding: false,
        };
        for (endpoint, planned) in endpoints.iter().zip(delegates) {
            let prepared = planned
                .ok_or_else(|| "its network is no longer configured".to_owned())
                .and_then(|planned| {
                    self.prepare(env, conf, &planned, &runtime_ifname, None)
                        .map_err(|e| e.msg)
                });
            let (plugin, config, chain) = match prepared {
                Ok(prepared) => (prepared.plugin, prepared.config, prepared.chain),
                Err(e) => {
                    // Without a delegate the address cannot be released; the endpoint still is.
                    warn!(container = %container_id, endpoint = endpoint.id, error = %e, "no delegate for the DEL of an uncached attachment");
                    (PathBuf::new(), Value::Null, Vec::new())
                }
            };
            record.attachments.push(CachedAttachment {
                network: endpoint.request.network.clone(),
                ifname: endpoint.request.interface.clone(),
                plugin,
                config,
                result: Value::Null,
                endpoint: Some(endpoint.id),
                bandwidth: endpoint.request.bandwidth,
                chain,
            });
        }
        Some(record)
    }

    /// Tears down cached containers no runtime will DEL: those whose ADD the agent died in
    /// (still `adding`; nothing else holds their lock) and those whose network namespace is
    /// gone (a DEL lost while the agent was down — podman, for one, does not retry DEL and has
    /// no CNI GC). Delegates get DEL with the cached result, so addresses are released.
    /// Returns the containers torn down.
    pub fn sweep(&self, agent: &dyn Backend) -> Vec<String> {
        let mut swept = Vec::new();
        for container_id in self.cache.container_ids().unwrap_or_default() {
            let _guard = self.locks.lock(&container_id);
            let Ok(Some(mut record)) = self.cache.load(&container_id) else {
                continue;
            };
            let netns_gone = record.netns.as_ref().is_some_and(|p| !p.exists());
            if !record.adding && !netns_gone {
                continue;
            }
            let why = if record.adding {
                "its ADD never finished"
            } else {
                "its network namespace is gone"
            };
            info!(container = %container_id, reason = why, "sweeping a stale attachment");
            match self.teardown(agent, &mut record) {
                Ok(()) => swept.push(container_id),
                Err(e) => {
                    warn!(container = %container_id, error = %e, "sweeping a stale attachment failed; retried later")
                }
            }
        }
        swept
    }

    pub(super) fn check(&self, agent: &dyn Backend, env: &Env) -> Result<(), CniError> {
        let container_id = env.container_id.clone().unwrap_or_default();
        let _guard = self.locks.lock(&container_id);
        let Some(record) = self.cache.load(&container_id).map_err(io_error)? else {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("container {container_id} has no genie attachments"),
                "",
            ));
        };
        for attachment in &record.attachments {
            let label = attachment_label(attachment);
            let failed = |message: String| {
                CniError::new(code::CHECK_FAILED, format!("{label}: {message}"), "")
            };
            if attachment.result.is_null() {
                return Err(failed("its ADD never completed".to_owned()));
            }
            let invocation = self.invocation(&record, &attachment.ifname);
            for (plugin, config) in attachment.plugins() {
                delegate::check(plugin, &invocation, config, &attachment.result)
                    .map_err(|e| delegate_error(&label, e))?;
            }
            let Some(id) = attachment.endpoint else {
                return Err(failed("is not registered as a genie endpoint".to_owned()));
            };
            agent.check_endpoint(id).map_err(failed)?;
        }
        Ok(())
    }

    /// Removes every cached container of this network that is not in the runtime's list of
    /// valid attachments, with its IPs, links and map entries (CNI 1.1.0, GC).
    pub(super) fn gc(&self, agent: &dyn Backend, conf: &NetConf) -> Result<(), CniError> {
        let Some(valid) = conf
            .valid_attachments
            .as_ref()
            .or(conf.attachments.as_ref())
        else {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "GC needs cni.dev/valid-attachments",
                "cni.dev/valid-attachments",
            ));
        };
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|v| (v.container_id.as_str(), v.ifname.as_str()))
            .collect();
        let mut first_error = None;
        for container_id in self.cache.container_ids().map_err(io_error)? {
            let _guard = self.locks.lock(&container_id);
            let Some(mut record) = self.cache.load(&container_id).map_err(io_error)? else {
                continue;
            };
            if record.network_name != conf.name
                || keep.contains(&(record.container_id.as_str(), record.ifname.as_str()))
            {
                continue;
            }
            info!(container = %container_id, "GC removes a stale attachment");
            if let Err(e) = self.teardown(agent, &mut record) {
                warn!(container = %container_id, error = %e, "GC could not remove an attachment");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
