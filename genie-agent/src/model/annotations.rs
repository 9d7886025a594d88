//! A pod's attachments from its annotations (DESIGN.md §2): genie's canonical form, the seed's
//! and CNI-Genie's `networks` form, and the Network Plumbing WG's `k8s.v1.cni.cncf.io/networks`
//! (short and JSON forms).
//!
//! Interface naming follows CNI-Genie (REFERENCE.md): explicitly named interfaces are reserved,
//! the others get the next free `ethN`, a repeated name is an error. `eth0` is the cluster
//! default network unless an annotation names `eth0` for another network.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::Deserialize;

use super::DEFAULT_NETWORK;

/// genie's own annotation: `"data@eth1, mgmt"`.
pub const GENIE_NETWORKS: &str = "genie.dev/networks";
/// The seed's and CNI-Genie's annotation: `"management:eth0 data:eth1"`, `"net1@eth0,net2@eth4"`.
pub const LEGACY_NETWORKS: &str = "networks";
/// The Network Plumbing WG annotation: `"ns/name@if, other"` or a JSON list.
pub const NPWG_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// Where the result is recorded.
pub const NPWG_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// The interface of the cluster default network.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Bandwidth asked for one attachment (NPWG JSON form; bits/s and bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthRequest {
    #[serde(default)]
    pub ingress_rate: Option<u64>,
    #[serde(default)]
    pub ingress_burst: Option<u64>,
    #[serde(default)]
    pub egress_rate: Option<u64>,
    #[serde(default)]
    pub egress_burst: Option<u64>,
}

/// One interface a pod gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Logical network name, or `default`.
    pub network: String,
    /// Interface name inside the pod.
    pub interface: String,
    /// Static addresses asked for (NPWG JSON form).
    pub ips: Vec<IpAddr>,
    /// MAC asked for (NPWG JSON form).
    pub mac: Option<String>,
    /// Per-attachment bandwidth (NPWG JSON form).
    pub bandwidth: Option<BandwidthRequest>,
}

impl Attachment {
    fn named(network: &str, interface: Option<&str>) -> (String, Option<String>) {
        (network.to_owned(), interface.map(str::to_owned))
    }

    /// Whether this is the cluster default network.
    pub fn is_default(&self) -> bool {
        self.network == DEFAULT_NETWORK
    }
}

/// Why a pod's annotations cannot be turned into attachments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationError {
    /// The annotation at fault.
    pub annotation: String,
    pub message: String,
    /// The annotation names one interface twice (its own CNI error code).
    pub repeated_interface: bool,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}: {}", self.annotation, self.message)
    }
}

impl std::error::Error for AnnotationError {}

fn error(annotation: &str, message: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_owned(),
        message: message.into(),
        repeated_interface: false,
    }
}

/// A network as a pod asked for it, before interface names are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requested {
    network: String,
    interface: Option<String>,
    ips: Vec<IpAddr>,
    mac: Option<String>,
    bandwidth: Option<BandwidthRequest>,
}

/// The NPWG JSON form of one network selection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NpwgSelection {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default, rename = "default-route")]
    default_route: Vec<String>,
    #[serde(default)]
    bandwidth: Option<BandwidthRequest>,
    #[serde(default, rename = "portMappings")]
    port_mappings: Option<serde_json::Value>,
    #[serde(default, rename = "cni-args")]
    cni_args: Option<serde_json::Value>,
}

/// Splits `"a@x, b c:y"` into (network, interface) pairs; `separators` are the characters that
/// may stand between a network and its interface.
fn split_list(
    annotation: &str,
    value: &str,
    separators: &[char],
) -> Result<Vec<(String, Option<String>)>, AnnotationError> {
    let mut out = Vec::new();
    for item in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let (network, interface) = match item.find(separators) {
            Some(at) => {
                let (n, rest) = item.split_at(at);
                (n, Some(&rest[1..]))
            }
            None => (item, None),
        };
        if network.is_empty() {
            return Err(error(annotation, format!("{item:?} names no network")));
        }
        if let Some(interface) = interface {
            validate_ifname(interface)
                .map_err(|m| error(annotation, format!("{item:?}: interface {m}")))?;
        }
        out.push(Attachment::named(network, interface));
    }
    Ok(out)
}

fn parse_npwg(value: &str, namespace: &str) -> Result<Vec<Requested>, AnnotationError> {
    let qualified = |ns: Option<&str>, name: &str| -> Result<String, AnnotationError> {
        match ns {
            Some(ns) if ns != namespace => Err(error(
                NPWG_NETWORKS,
                format!(
                    "{ns}/{name}: genie's LogicalNetworks are cluster-scoped; a namespace other than the pod's own ({namespace}) cannot be named"
                ),
            )),
            _ => Ok(name.to_owned()),
        }
    };
    if value.trim_start().starts_with('[') {
        let selections: Vec<NpwgSelection> = serde_json::from_str(value).map_err(|e| {
            error(
                NPWG_NETWORKS,
                format!("not a valid JSON network selection list: {e}"),
            )
        })?;
        let mut out = Vec::new();
        for s in selections {
            if s.port_mappings.is_some() || s.cni_args.is_some() || !s.default_route.is_empty() {
                return Err(error(
                    NPWG_NETWORKS,
                    format!(
                        "{}: portMappings, cni-args and default-route are not supported (only the default network installs a default route)",
                        s.name
                    ),
                ));
            }
            if let Some(interface) = &s.interface {
                validate_ifname(interface)
                    .map_err(|m| error(NPWG_NETWORKS, format!("{}: interface {m}", s.name)))?;
            }
            let mut ips = Vec::new();
            for ip in &s.ips {
                // NPWG writes addresses in CIDR notation; the prefix comes from the network.
                let addr = ip.split('/').next().unwrap_or(ip);
                ips.push(addr.parse().map_err(|_| {
                    error(
                        NPWG_NETWORKS,
                        format!("{}: {ip:?} is not an IP address", s.name),
                    )
                })?);
            }
            out.push(Requested {
                network: qualified(s.namespace.as_deref(), &s.name)?,
                interface: s.interface,
                ips,
                mac: s.mac,
                bandwidth: s.bandwidth,
            });
        }
        return Ok(out);
    }
    split_list(NPWG_NETWORKS, value, &['@'])?
        .into_iter()
        .map(|(name, interface)| {
            let (ns, name) = match name.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, name.as_str()),
            };
            Ok(Requested {
                network: qualified(ns, name)?,
                interface,
                ips: Vec::new(),
                mac: None,
                bandwidth: None,
            })
        })
        .collect()
}

/// The attachments of a pod in `namespace` with `annotations`, in interface order, the default
/// network first unless another network takes `eth0`.
pub fn attachments(
    annotations: &BTreeMap<String, String>,
    namespace: &str,
) -> Result<Vec<Attachment>, AnnotationError> {
    let present: Vec<&str> = [GENIE_NETWORKS, LEGACY_NETWORKS, NPWG_NETWORKS]
        .into_iter()
        .filter(|a| annotations.get(*a).is_some_and(|v| !v.trim().is_empty()))
        .collect();
    if present.len() > 1 {
        // Two forms could disagree; picking one silently is how pods land on the wrong networks.
        return Err(error(
            present[1],
            format!(
                "the pod also declares networks in {}; use one annotation",
                present[0]
            ),
        ));
    }
    let requested: Vec<Requested> = match present.first().copied() {
        None => Vec::new(),
        Some(NPWG_NETWORKS) => parse_npwg(&annotations[NPWG_NETWORKS], namespace)?,
        Some(annotation) => {
            let separators: &[char] = if annotation == GENIE_NETWORKS {
                &['@']
            } else {
                &['@', ':']
            };
            split_list(annotation, &annotations[annotation], separators)?
                .into_iter()
                .map(|(network, interface)| Requested {
                    network,
                    interface,
                    ips: Vec::new(),
                    mac: None,
                    bandwidth: None,
                })
                .collect()
        }
    };
    let annotation = present.first().copied().unwrap_or(GENIE_NETWORKS);
    if requested.iter().any(|r| r.network == DEFAULT_NETWORK) {
        return Err(error(
            annotation,
            "the default network is always attached; do not list it",
        ));
    }
    assign_interfaces(annotation, requested)
}

fn assign_interfaces(
    annotation: &str,
    requested: Vec<Requested>,
) -> Result<Vec<Attachment>, AnnotationError> {
    let mut taken: Vec<String> = Vec::new();
    for r in &requested {
        if let Some(interface) = &r.interface {
            if taken.contains(interface) {
                return Err(AnnotationError {
                    repeated_interface: true,
                    ..error(annotation, format!("interface {interface} is named twice"))
                });
            }
            taken.push(interface.clone());
        }
    }
    let mut out = Vec::new();
    if !taken.iter().any(|i| i == DEFAULT_INTERFACE) {
        out.push(Attachment {
            network: DEFAULT_NETWORK.to_owned(),
            interface: DEFAULT_INTERFACE.to_owned(),
            ips: Vec::new(),
            mac: None,
            bandwidth: None,
        });
        taken.push(DEFAULT_INTERFACE.to_owned());
    }
    let mut next = 0u32;
    for r in requested {
        let interface = match r.interface {
            Some(i) => i,
            None => loop {
                let candidate = format!("eth{next}");
                next += 1;
                if !taken.contains(&candidate) {
                    taken.push(candidate.clone());
                    break candidate;
                }
            },
        };
        out.push(Attachment {
            network: r.network,
            interface,
            ips: r.ips,
            mac: r.mac,
            bandwidth: r.bandwidth,
        });
    }
    // Interface order: eth0 first, then as the pod listed them.
    out.sort_by_key(|a| a.interface != DEFAULT_INTERFACE);
    Ok(out)
}

/// Interface names as the kernel accepts them (CNI spec: 1–15 characters, no `/`, `:` or
/// whitespace).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?} must be 1 to 15 characters"));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotation: &str, value: &str) -> Result<Vec<(String, String)>, AnnotationError> {
        let annotations = BTreeMap::from([(annotation.to_owned(), value.to_owned())]);
        attachments(&annotations, "red")
            .map(|list| list.into_iter().map(|a| (a.network, a.interface)).collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, i)| ((*n).to_owned(), (*i).to_owned()))
            .collect()
    }

    #[test]
    fn no_annotation_means_the_default_network_only() {
        assert_eq!(attachments(&BTreeMap::new(), "red").unwrap().len(), 1);
        assert_eq!(
            pod(GENIE_NETWORKS, "  ").unwrap(),
            pairs(&[("default", "eth0")])
        );
    }

    #[test]
    fn the_canonical_form() {
        assert_eq!(
            pod(GENIE_NETWORKS, "data@eth1, mgmt").unwrap(),
            pairs(&[("default", "eth0"), ("data", "eth1"), ("mgmt", "eth2")])
        );
        // Explicit names are reserved before unnamed ones are numbered.
        assert_eq!(
            pod(GENIE_NETWORKS, "a, b@eth1, c").unwrap(),
            pairs(&[
                ("default", "eth0"),
                ("a", "eth2"),
                ("b", "eth1"),
                ("c", "eth3")
            ])
        );
    }

    #[test]
    fn the_seed_and_cni_genie_forms() {
        // Naming eth0 replaces the default network.
        assert_eq!(
            pod(LEGACY_NETWORKS, "management:eth0 data:eth1").unwrap(),
            pairs(&[("management", "eth0"), ("data", "eth1")])
        );
        assert_eq!(
            pod(LEGACY_NETWORKS, "net1@eth0,net2@eth4").unwrap(),
            pairs(&[("net1", "eth0"), ("net2", "eth4")])
        );
    }

    #[test]
    fn the_network_plumbing_forms() {
        assert_eq!(
            pod(NPWG_NETWORKS, "red/data@net1, mgmt").unwrap(),
            pairs(&[("default", "eth0"), ("data", "net1"), ("mgmt", "eth1")])
        );
        let json = r#"[{"name": "data", "interface": "eth5", "ips": ["198.18.1.40/24"], "mac": "02:00:00:00:00:05", "bandwidth": {"egressRate": 1000000}}]"#;
        let list = attachments(
            &BTreeMap::from([(NPWG_NETWORKS.to_owned(), json.to_owned())]),
            "red",
        )
        .unwrap();
        assert_eq!(list[1].interface, "eth5");
        assert_eq!(list[1].ips, vec!["198.18.1.40".parse::<IpAddr>().unwrap()]);
        assert_eq!(list[1].bandwidth.unwrap().egress_rate, Some(1_000_000));
    }

    #[test]
    fn mistakes_are_errors_that_name_the_annotation() {
        let cases = [
            (GENIE_NETWORKS, "a@eth1, b@eth1", "named twice"),
            (GENIE_NETWORKS, "a@", "interface"),
            (GENIE_NETWORKS, "a@this-name-is-too-long", "1 to 15"),
            (GENIE_NETWORKS, "@eth1", "names no network"),
            (GENIE_NETWORKS, "default@eth1", "always attached"),
            (NPWG_NETWORKS, "blue/data", "cluster-scoped"),
            (NPWG_NETWORKS, "[{\"name\": 5}]", "JSON"),
            (
                NPWG_NETWORKS,
                "[{\"name\": \"a\", \"ips\": [\"nope\"]}]",
                "not an IP",
            ),
            (
                NPWG_NETWORKS,
                "[{\"name\": \"a\", \"default-route\": [\"198.18.1.1\"]}]",
                "default-route",
            ),
        ];
        for (annotation, value, needle) in cases {
            let e = pod(annotation, value).expect_err(value);
            assert_eq!(e.annotation, annotation);
            assert!(e.to_string().contains(needle), "{value}: {e}");
        }
    }

    #[test]
    fn two_forms_at_once_are_refused() {
        let annotations = BTreeMap::from([
            (GENIE_NETWORKS.to_owned(), "a".to_owned()),
            (NPWG_NETWORKS.to_owned(), "b".to_owned()),
        ]);
        let e = attachments(&annotations, "red").unwrap_err();
        assert!(e.to_string().contains("use one annotation"), "{e}");
    }
}
