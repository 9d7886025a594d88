//! Text rendering shared by the `genie` subcommands.

use std::fmt::Write as _;

use crate::dataplane::CounterRow;

/// Renders counters as an aligned table.
pub fn counters_table(rows: &[CounterRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<9}  {:<18}  {:>12}  {:>14}",
        "ENDPOINT", "DIRECTION", "REASON", "PACKETS", "BYTES"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:>8}  {:<9}  {:<18}  {:>12}  {:>14}",
            row.endpoint_id,
            row.direction.name(),
            row.reason.name(),
            row.value.packets,
            row.value.bytes
        );
    }
    out
}
