//! Text rendering for the `genie` subcommands: aligned tables.

use crate::inspect::{CounterRowView, EndpointRow, PolicyView};

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
                format!("{} ({})", r.host_interface, r.ifindex),
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
        "HOST IFACE",
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
