//! What the CNI handler asks of the agent: a pod's attachments, checked against the model
//! before anything is created.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::Value;

use super::Agent;
use crate::{
    cni::{
        annotations::{self, BandwidthRequest, DEFAULT_INTERFACE},
        spec::{CniError, code},
    },
    model::{DEFAULT_NETWORK, quantity::parse_quantity},
};

/// One interface ADD will create.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAttachment {
    /// Logical network name, or `default`.
    pub network: String,
    /// Interface name inside the pod (`eth0` stands for the runtime's `CNI_IFNAME`).
    pub interface: String,
    /// The network's delegate configuration; `None` for the default network, whose delegate
    /// the genie CNI configuration names.
    pub plugin: Option<Value>,
    /// Subnets for the derived host-local IPAM.
    pub subnets: Vec<IpNet>,
    /// The interface's own bandwidth: the attachment's (NPWG `bandwidth`) or, for the
    /// default interface, the pod's `kubernetes.io/*-bandwidth` annotations.
    pub bandwidth: Option<BandwidthRequest>,
}

/// The standard pod bandwidth annotations (Kubernetes quantities in bits/s), which apply to the
/// pod's default interface.
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// The default interface's bandwidth from the standard pod annotations.
fn annotated_bandwidth(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<BandwidthRequest>, CniError> {
    let rate = |name: &str| -> Result<Option<u64>, CniError> {
        let Some(text) = annotations.get(name) else {
            return Ok(None);
        };
        match parse_quantity(text) {
            Ok(0) => Err(format!("{text:?} must be greater than zero")),
            Ok(v) => Ok(Some(v)),
            Err(m) => Err(m),
        }
        .map_err(|m| {
            CniError::new(
                code::BAD_ANNOTATION,
                format!("annotation {name}: {m}"),
                name.to_owned(),
            )
        })
    };
    let (ingress, egress) = (rate(INGRESS_BANDWIDTH)?, rate(EGRESS_BANDWIDTH)?);
    Ok(
        (ingress.is_some() || egress.is_some()).then_some(BandwidthRequest {
            ingress_rate: ingress,
            egress_rate: egress,
            ..BandwidthRequest::default()
        }),
    )
}

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
    ) -> Result<Vec<PlannedAttachment>, CniError> {
        let plan = self.plan_attachments(self.plan_model()?, namespace, pod)?;
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

    fn plan_attachments(
        &self,
        model: &crate::model::Model,
        namespace: &str,
        pod: &str,
    ) -> Result<Vec<PlannedAttachment>, CniError> {
        let pod_name = format!("{namespace}/{pod}");
        let manifest = model.pods.get(&(namespace.to_owned(), pod.to_owned()));
        if manifest.is_none() && self.kube().is_some() {
            // The pod exists (kubelet is creating it) but the pod watch has not delivered it
            // yet: its annotation is unknown, so attaching only the default network could
            // leave out networks it asked for. The runtime retries.
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the genie agent has not seen this pod in the Kubernetes API yet",
                pod_name,
            ));
        }
        let default_bandwidth = match manifest {
            Some(m) => annotated_bandwidth(&m.annotations)?,
            None => None,
        };
        let attachments = match manifest {
            Some(manifest) => manifest.attachments.clone().map_err(|e| {
                let code = if e.repeated_interface {
                    code::REPEATED_INTERFACE
                } else {
                    code::BAD_ANNOTATION
                };
                CniError::new(code, format!("pod {pod_name}: {e}"), e.annotation.clone())
            })?,
            None => annotations::attachments(&BTreeMap::new(), namespace).map_err(|e| {
                CniError::new(code::BAD_ANNOTATION, e.to_string(), e.annotation.clone())
            })?,
        };
        let tenant = model.namespace_tenant.get(namespace);
        let mut plan = Vec::with_capacity(attachments.len());
        for attachment in attachments {
            if attachment.network == DEFAULT_NETWORK {
                plan.push(PlannedAttachment {
                    network: attachment.network,
                    interface: attachment.interface,
                    plugin: None,
                    subnets: Vec::new(),
                    bandwidth: default_bandwidth,
                });
                continue;
            }
            let Some(network) = model.logical.get(&attachment.network) else {
                return Err(CniError::new(
                    code::UNKNOWN_NETWORK,
                    format!(
                        "pod {pod_name} asks for logical network {:?} (interface {}), which does not exist",
                        attachment.network, attachment.interface
                    ),
                    attachment.network,
                ));
            };
            if tenant != Some(&network.tenant) {
                return Err(CniError::new(
                    code::FOREIGN_NETWORK,
                    format!(
                        "pod {pod_name} asks for logical network {:?} of tenant {:?}, but namespace {namespace:?} belongs to {}",
                        network.name,
                        network.tenant,
                        tenant.map_or("no tenant".to_owned(), |t| format!("tenant {t:?}"))
                    ),
                    attachment.network,
                ));
            }
            plan.push(PlannedAttachment {
                bandwidth: attachment
                    .bandwidth
                    .or(if attachment.interface == DEFAULT_INTERFACE {
                        default_bandwidth
                    } else {
                        None
                    }),
                network: attachment.network,
                interface: attachment.interface,
                plugin: network.plugin.clone(),
                subnets: network.subnets.clone(),
            });
        }
        Ok(plan)
    }

    /// What DEL needs to run `network`'s delegate for interface `interface` when the
    /// attachment cache is lost: the network's plugin and subnets as the current model has
    /// them (`None` when the network is gone).
    pub fn network_delegate(&self, network: &str, interface: &str) -> Option<PlannedAttachment> {
        if network == DEFAULT_NETWORK {
            return Some(PlannedAttachment {
                network: network.to_owned(),
                interface: interface.to_owned(),
                plugin: None,
                subnets: Vec::new(),
                bandwidth: None,
            });
        }
        let net = self.model.as_ref()?.logical.get(network)?;
        Some(PlannedAttachment {
            network: network.to_owned(),
            interface: interface.to_owned(),
            plugin: net.plugin.clone(),
            subnets: net.subnets.clone(),
            bandwidth: None,
        })
    }
}
