//! Endpoints under the agent: registration (maps first, then links), removal, and the
//! quota a tenant's endpoints and ADDs in progress count against.

use super::*;

impl Agent {
    /// The quota of the tenant owning `namespace` and what it uses — registered endpoints plus
    /// the reservations of ADDs in progress (whose own endpoints count once, through the
    /// reservation) — when that tenant has a quota.
    pub(super) fn quota_usage(&self, model: &Model, namespace: &str) -> Option<QuotaUsage> {
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
    pub(super) fn reserve_quota(
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
}
