//! The agent behind the CNI handler: `cni::Backend` for the locked agent, and the planning
//! that needs the agent's state (its model and the quota reservations of ADDs in progress).

use std::sync::{Mutex, MutexGuard};

use genie_common::Direction;
use serde_json::Value;

use super::{Agent, AgentError};
use crate::{
    cni::{
        backend::Backend,
        plan::{self, PlannedAttachment},
        spec::{CniError, code},
    },
    dataplane::interface_index,
    endpoint::{Endpoint, EndpointRequest},
};

impl Agent {
    /// The attachments of pod `namespace/pod`, or the error that refuses its ADD. In file mode a
    /// pod the configuration does not mention gets the default network only; with the
    /// Kubernetes source an unseen pod is "try again later".
    ///
    /// A plan that counts against a quota reserves its endpoints for `container` until
    /// [`Agent::release_reservation`].
    pub fn cni_plan(
        &mut self,
        namespace: &str,
        pod: &str,
        container: &str,
        fetched: Option<&crate::model::PodManifest>,
    ) -> Result<Vec<PlannedAttachment>, CniError> {
        let plan = plan::plan(
            self.plan_model()?,
            namespace,
            pod,
            self.kube().is_some(),
            fetched,
        )?;
        self.reserve_quota(namespace, container, plan.len())
            .map_err(|usage| {
                CniError::new(
                    code::QUOTA_REACHED,
                    format!(
                        "pod {namespace}/{pod} needs {} endpoints, but tenant {:?} uses {} of its quota of {}",
                        plan.len(),
                        usage.tenant,
                        usage.used,
                        usage.quota
                    ),
                    usage.tenant,
                )
            })?;
        Ok(plan)
    }

    /// The model a plan may be made from, or why there is none.
    fn plan_model(&self) -> Result<&crate::model::Model, CniError> {
        let Some(model) = &self.model else {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the genie agent has no valid configuration yet",
                self.config_error.clone().unwrap_or_default(),
            ));
        };
        if let Some(error) = &self.config_error {
            // The pod's declaration may be in the file that fails to load: attaching it with
            // what the last valid configuration says could put it on the wrong networks.
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the genie agent's configuration directory is rejected; pods are not attached until it is fixed",
                error.clone(),
            ));
        }
        Ok(model)
    }
}

fn lock(agent: &Mutex<Agent>) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's refusal with the CNI code a runtime acts on.
fn cni_error(e: AgentError) -> CniError {
    let code = match &e {
        AgentError::NotReady(_) => code::TRY_AGAIN_LATER,
        AgentError::QuotaReached { .. } => code::QUOTA_REACHED,
        _ => code::ATTACH_FAILED,
    };
    CniError::new(code, e.to_string(), "")
}

impl Backend for Mutex<Agent> {
    fn ready(&self) -> bool {
        lock(self).status().ready
    }

    fn plan(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<Vec<PlannedAttachment>, CniError> {
        // A pod the watch has not delivered is fetched once, without holding the agent.
        let unseen = {
            let agent = lock(self);
            let known = agent
                .model
                .as_ref()
                .is_some_and(|m| m.pods.contains_key(&(namespace.to_owned(), pod.to_owned())));
            (!known).then(|| agent.kube_handle()).flatten()
        };
        let fetched = unseen.and_then(|kube| kube.fetch_pod(namespace, pod));
        lock(self).cni_plan(namespace, pod, container, fetched.as_ref())
    }

    fn release_reservation(&self, container: &str) {
        lock(self).release_reservation(container);
    }

    fn register(&self, request: EndpointRequest) -> Result<u32, CniError> {
        lock(self)
            .add_endpoint(request)
            .map(|e| e.id)
            .map_err(cni_error)
    }

    fn forget(&self, id: u32) -> Result<(), CniError> {
        lock(self).forget_endpoint(id).map(drop).map_err(cni_error)
    }

    fn release_links(&self, id: u32) -> Result<(), CniError> {
        lock(self).release_links(id).map_err(cni_error)
    }

    fn endpoints_of_container(&self, container: &str) -> Vec<Endpoint> {
        lock(self).endpoints_of_container(container)
    }

    fn network_delegate(&self, network: &str, interface: &str) -> Option<PlannedAttachment> {
        plan::network_delegate(lock(self).model.as_ref()?, network, interface)
    }

    fn check_endpoint(&self, id: u32) -> Result<(), String> {
        let agent = lock(self);
        let endpoint = agent
            .endpoint(id)
            .ok_or_else(|| "is not registered as a genie endpoint".to_owned())?;
        let ifindex = interface_index(&endpoint.request.netns, &endpoint.request.host_interface)
            .map_err(|e| e.to_string())?;
        if ifindex != endpoint.ifindex {
            return Err(format!(
                "interface {} was replaced (index {ifindex}, genie attached to {})",
                endpoint.request.host_interface, endpoint.ifindex
            ));
        }
        for direction in Direction::ALL {
            let attached = agent
                .dataplane()
                .attached_ifindex(endpoint.id, direction)
                .map_err(|e| e.to_string())?;
            if attached != Some(ifindex) {
                return Err(format!(
                    "genie's {} program is not attached to {}",
                    direction.name(),
                    endpoint.request.host_interface
                ));
            }
        }
        Ok(())
    }

    fn publish_network_status(&self, namespace: &str, pod: &str, status: &Value) {
        if let Some(kube) = lock(self).kube() {
            kube.publish_network_status(namespace, pod, status);
        }
    }
}

impl Agent {
    /// Keeps genie's CNI configuration in front of the node's primary one, rewriting it when
    /// the primary changed (CNI DaemonSets rewrite their file after genie started). Without a
    /// primary the agent is not ready and CNI STATUS answers 50 until one appears.
    pub fn keep_cni_config(&mut self) {
        let Some((conf_dir, socket)) = self.config.cni_config.clone() else {
            return;
        };
        match crate::cni::install::write_config(&conf_dir, &socket) {
            Ok((config, primary, changed)) => {
                if changed {
                    tracing::info!(config = %config.display(), primary = %primary.display(), "genie's CNI configuration follows the primary");
                }
                if self.cni_config_error.take().is_some() {
                    tracing::info!(primary = %primary.display(), "a primary CNI configuration is back");
                }
            }
            Err(e) => {
                let text = format!("genie's CNI configuration: {e}");
                if self.cni_config_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "not ready until the node has a primary CNI configuration");
                    self.metrics.failed("cni-config", "primary");
                }
                self.cni_config_error = Some(text);
            }
        }
    }
}
