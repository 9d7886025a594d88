//! A pod's attachments, worked out from the model before anything is created: its
//! annotations (all three forms), the networks of its tenant and their delegates.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::Value;

use super::{
    annotations::{self, BandwidthRequest, DEFAULT_INTERFACE},
    spec::{CniError, code},
};
use crate::model::{DEFAULT_NETWORK, Model, PodManifest, quantity::parse_quantity};

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
    /// Addresses the attachment asks for (NPWG `ips`), passed to the plugins that declare the
    /// `ips` capability.
    pub ips: Vec<String>,
    /// The MAC the attachment asks for (NPWG `mac`), passed to the plugins that declare the
    /// `mac` capability.
    pub mac: Option<String>,
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

/// The attachments of pod `namespace/pod` under `model`, or the error that refuses its ADD.
/// In file mode a pod the configuration does not mention gets the default network only; with
/// the Kubernetes source (`pods_from_api`) a pod neither the watch delivered nor one GET
/// found (`fetched`) is "try again later".
pub fn plan(
    model: &Model,
    namespace: &str,
    pod: &str,
    pods_from_api: bool,
    fetched: Option<&PodManifest>,
) -> Result<Vec<PlannedAttachment>, CniError> {
    let pod_name = format!("{namespace}/{pod}");
    let manifest = model
        .pods
        .get(&(namespace.to_owned(), pod.to_owned()))
        .or(fetched);
    if manifest.is_none() && pods_from_api {
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
                ips: attachment.ips.iter().map(|ip| host_cidr(*ip)).collect(),
                mac: attachment.mac.clone(),
            });
            continue;
        }
        let Some(network) = model.logical.get(&attachment.network) else {
            // A refused network is unknown to the dataplane; the pod is told why.
            let why = model
                .refused
                .get(&attachment.network)
                .map(|why| format!(": the object is refused ({why})"))
                .unwrap_or_default();
            return Err(CniError::new(
                code::UNKNOWN_NETWORK,
                format!(
                    "pod {pod_name} asks for logical network {:?} (interface {}), which does not exist{why}",
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
            ips: requested_ips(&attachment, &network.subnets, &pod_name)?,
            mac: attachment.mac.clone(),
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
pub fn network_delegate(
    model: &Model,
    network: &str,
    interface: &str,
) -> Option<PlannedAttachment> {
    if network == DEFAULT_NETWORK {
        return Some(PlannedAttachment {
            network: network.to_owned(),
            interface: interface.to_owned(),
            plugin: None,
            subnets: Vec::new(),
            bandwidth: None,
            ips: Vec::new(),
            mac: None,
        });
    }
    let net = model.logical.get(network)?;
    Some(PlannedAttachment {
        network: network.to_owned(),
        interface: interface.to_owned(),
        plugin: net.plugin.clone(),
        subnets: net.subnets.clone(),
        bandwidth: None,
        ips: Vec::new(),
        mac: None,
    })
}

/// An address as a one-address CIDR (the default network's subnets are the primary's own).
fn host_cidr(ip: std::net::IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// The NPWG `ips` of an attachment in CIDR form with their network's prefix; an address
/// outside the network's subnets is refused (it could never be the pod's on that network).
fn requested_ips(
    attachment: &crate::model::annotations::Attachment,
    subnets: &[IpNet],
    pod_name: &str,
) -> Result<Vec<String>, CniError> {
    attachment
        .ips
        .iter()
        .map(|ip| {
            subnets
                .iter()
                .find(|s| s.contains(ip))
                .map(|s| format!("{ip}/{}", s.prefix_len()))
                .ok_or_else(|| {
                    CniError::new(
                        code::BAD_ANNOTATION,
                        format!(
                            "pod {pod_name} asks for address {ip} on network {:?} (interface {}), outside its subnets",
                            attachment.network, attachment.interface
                        ),
                        crate::model::annotations::NPWG_NETWORKS,
                    )
                })
        })
        .collect()
}
