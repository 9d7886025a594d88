//! Text rendering for the `genie` subcommands: aligned tables.

use crate::{
    cni::cache::ContainerStatus,
    inspect::{
        ConntrackRow, CounterRowView, EndpointRow, LimitRow, NetworkRow, PolicyView, StatsRow,
    },
};

/// Renders rows as a table whose columns are as wide as their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `genie inspect endpoints`.
pub fn endpoints_table(rows: &[EndpointRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let addresses: Vec<String> = r.addresses.iter().map(ToString::to_string).collect();
            vec![
                r.id.to_string(),
                r.namespace.clone(),
                r.pod.clone(),
                r.interface.clone(),
                if r.side == "inPod" {
                    format!("{} ({}, in pod)", r.host_interface, r.ifindex)
                } else {
                    format!("{} ({})", r.host_interface, r.ifindex)
                },
                r.tenant.clone(),
                r.network.clone(),
                r.mac.clone(),
                addresses.join(","),
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAMESPACE",
        "POD",
        "IFACE",
        "ATTACHED TO",
        "TENANT",
        "NETWORK",
        "MAC",
        "ADDRESSES",
    ];
    table(&header, &cells)
}

/// `genie inspect policy`: identities with their flags, the matrix, the classified CIDRs.
pub fn policy_text(view: &PolicyView) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let identities: Vec<Vec<String>> = view
        .identities
        .iter()
        .map(|i| {
            vec![
                i.tenant.clone(),
                i.network.clone(),
                i.identity.to_string(),
                yes(i.allow_host_access),
                yes(i.allow_external),
                yes(i.allow_external_ingress),
            ]
        })
        .collect();
    let rules: Vec<Vec<String>> = view
        .rules
        .iter()
        .map(|r| {
            vec![
                r.from.clone(),
                r.to.clone(),
                r.protocol.clone(),
                r.ports.clone(),
            ]
        })
        .collect();
    let cidrs: Vec<Vec<String>> = view
        .cidrs
        .iter()
        .map(|c| vec![c.cidr.clone(), c.identity.clone()])
        .collect();
    format!(
        "policy epoch {}\n\n{}\n{}\n{}",
        view.policy_epoch,
        table(
            &[
                "TENANT",
                "NETWORK",
                "IDENTITY",
                "HOST ACCESS",
                "EXTERNAL",
                "EXTERNAL INGRESS"
            ],
            &identities
        ),
        table(&["FROM", "TO", "PROTOCOL", "PORTS"], &rules),
        table(&["CIDR", "CLASS"], &cidrs),
    )
}

/// `genie inspect counters`.
pub fn counters_table(rows: &[CounterRowView]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.endpoint.to_string(),
                r.tenant.clone(),
                r.network.clone(),
                r.direction.clone(),
                r.reason.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "TENANT",
            "NETWORK",
            "DIRECTION",
            "REASON",
            "PACKETS",
            "BYTES",
        ],
        &cells,
    )
}

/// `genie inspect attachments`: every pod interface genie-cni attached, as recorded in the
/// node's attachment cache (its `k8s.v1.cni.cncf.io/network-status`).
pub fn attachments_table(rows: &[ContainerStatus]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|c| {
            c.network_status.iter().map(|s| {
                vec![
                    c.namespace.clone(),
                    c.pod.clone(),
                    c.container_id.chars().take(12).collect(),
                    s.interface.clone(),
                    s.name.clone(),
                    s.ips.join(","),
                    s.mac.clone().unwrap_or_else(|| "-".to_owned()),
                    if s.default { "yes" } else { "" }.to_owned(),
                ]
            })
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "POD",
            "CONTAINER",
            "IFACE",
            "NETWORK",
            "ADDRESSES",
            "MAC",
            "DEFAULT",
        ],
        &cells,
    )
}

/// `genie inspect limits`.
pub fn limits_table(rows: &[LimitRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (rate, burst) = if r.kind == "bandwidth" {
                (
                    format!("{} bit/s", si(r.rate)),
                    format!("{} bit", si(r.burst)),
                )
            } else {
                (format!("{}/s", r.rate), format!("{} flows", r.burst))
            };
            vec![
                r.scope.clone(),
                r.owner.clone(),
                r.kind.clone(),
                r.direction.clone(),
                rate,
                burst,
            ]
        })
        .collect();
    table(
        &["SCOPE", "OWNER", "KIND", "DIRECTION", "RATE", "BURST"],
        &cells,
    )
}

/// `genie inspect conntrack`.
pub fn conntrack_table(rows: &[ConntrackRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.protocol.clone(),
                r.from.clone(),
                r.to.clone(),
                format!("{} s", r.idle_seconds),
                if r.closing { "closing" } else { "" }.to_owned(),
            ]
        })
        .collect();
    table(&["PROTOCOL", "FROM", "TO", "IDLE", "STATE"], &cells)
}

/// `genie inspect networks`.
pub fn networks_table(rows: &[NetworkRow]) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.network.clone(),
                r.identity.to_string(),
                if r.cidrs.is_empty() {
                    "-".to_owned()
                } else {
                    r.cidrs.join(",")
                },
                r.endpoints.to_string(),
                yes_no(r.allow_host_access),
                yes_no(r.allow_external),
                yes_no(r.allow_external_ingress),
                if r.status.is_empty() {
                    "-".to_owned()
                } else if r.problems.is_empty() {
                    r.status.clone()
                } else {
                    format!("{} ({})", r.status, r.problems)
                },
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "NETWORK",
            "IDENTITY",
            "CIDRS",
            "ENDPOINTS",
            "HOST ACCESS",
            "EXTERNAL",
            "EXTERNAL INGRESS",
            "STATUS",
        ],
        &cells,
    )
}

/// `genie inspect stats`.
pub fn stats_table(rows: &[StatsRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.network.clone(),
                r.direction.clone(),
                r.reason.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "NETWORK",
            "DIRECTION",
            "REASON",
            "PACKETS",
            "BYTES",
        ],
        &cells,
    )
}

/// A quantity with a decimal SI prefix (`40M`, `1.5G`).
fn si(value: u64) -> String {
    for (factor, suffix) in [(1_000_000_000u64, "G"), (1_000_000, "M"), (1_000, "k")] {
        if value >= factor {
            let scaled = value as f64 / factor as f64;
            return if scaled.fract() == 0.0 {
                format!("{scaled}{suffix}")
            } else {
                format!("{scaled:.2}{suffix}")
            };
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let t = super::table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }
}
