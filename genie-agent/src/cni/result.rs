//! What ADD returns and records: a delegate's result in the runtime's `cniVersion`, and the
//! pod's `k8s.v1.cni.cncf.io/network-status` (Network Plumbing WG specification §4.1.2).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{cache::CachedContainer, delegate::AddResult, spec::version_less};
use crate::model::DEFAULT_NETWORK;

/// Rewrites a result for a runtime speaking `version`. 0.3.x/0.4.0 results carry a `version`
/// per IP that 1.0.0 removed; the formats are otherwise the same for what plugins return.
pub fn convert(raw: &Value, version: &str) -> Value {
    let mut out = raw.clone();
    let Some(object) = out.as_object_mut() else {
        return out;
    };
    object.insert("cniVersion".to_owned(), Value::from(version));
    let wants_ip_version = version_less(version, "1.0.0");
    if let Some(ips) = object.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if wants_ip_version {
                let family = match ip.get("address").and_then(Value::as_str) {
                    Some(a) if a.contains(':') => "6",
                    _ => "4",
                };
                ip.insert("version".to_owned(), Value::from(family));
            } else {
                ip.remove("version");
            }
        }
    }
    out
}

/// One entry of `k8s.v1.cni.cncf.io/network-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The network: the runtime's network name for the default network, the logical
    /// network's name otherwise.
    pub name: String,
    pub interface: String,
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The runtime's interface (`CNI_IFNAME`), the only one holding a default route.
    pub default: bool,
    #[serde(default)]
    pub dns: Value,
}

/// The network status of a container as ADD attached it.
pub fn network_status(container: &CachedContainer) -> Vec<NetworkStatus> {
    container
        .attachments
        .iter()
        .filter(|a| !a.result.is_null())
        .map(|a| {
            let result = AddResult::parse(&a.plugin.display().to_string(), a.result.clone()).ok();
            let ips = result
                .as_ref()
                .map(|r| {
                    r.addresses_of(&a.ifname)
                        .iter()
                        .map(|n| n.addr().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let mac = result
                .as_ref()
                .and_then(|r| r.container_interface(&a.ifname))
                .and_then(|i| i.mac.clone());
            NetworkStatus {
                name: if a.network == DEFAULT_NETWORK {
                    container.network_name.clone()
                } else {
                    a.network.clone()
                },
                interface: a.ifname.clone(),
                ips,
                mac,
                default: a.ifname == container.ifname,
                dns: a
                    .result
                    .get("dns")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_convert_between_the_0x_and_1x_formats() {
        let v1 = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.5/24"}, {"address": "2001:db8::5/64"}]});
        let old = convert(&v1, "0.4.0");
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        let back = convert(&old, "1.1.0");
        assert_eq!(back["cniVersion"], "1.1.0");
        assert!(back["ips"][0].get("version").is_none());
    }
}
