//! Prometheus metrics (text exposition format 0.0.4) and the agent's health endpoints.
//!
//! Packet counters come from the pinned per-CPU map, summed over CPUs and endpoints and
//! labelled by the endpoint's tenant and network; the agent's own work (reconciles, policy
//! propagation) is recorded in [`AgentMetrics`].

pub mod http;

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use genie_common::maps::{
    ADDRS_MAP, CIDRS_MAP, CONNTRACK_MAP, COUNTERS_MAP, ENDPOINTS_MAP, IDENTITIES_MAP, LIMITS_MAP,
    MAX_ADDRS, MAX_BUCKETS, MAX_CIDRS, MAX_COUNTERS, MAX_ENDPOINTS, MAX_IDENTITIES, MAX_POLICY,
    POLICY_MAP,
};

use crate::{
    dataplane::{DataplaneError, PinnedMaps},
    inspect::{IdentityNames, stats},
};

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// What the agent records about its own work.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    pub reconcile_runs: u64,
    pub reconcile_errors: u64,
    pub reconcile_duration: Histogram,
    /// From noticing a configuration change to the maps holding it.
    pub propagation: Histogram,
    pub config_rejections: u64,
    /// Objects whose current spec is refused, by kind.
    pub objects_refused: Vec<(&'static str, u64)>,
}

/// Escapes a label value (exposition format: backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders every metric: the dataplane's from the maps under `bpffs`, the agent's from
/// `agent`, and readiness.
pub fn render(bpffs: &Path, agent: &AgentMetrics, ready: bool) -> Result<String, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    let state = maps.read_state()?;
    let names = IdentityNames::read(&maps)?;
    let mut out = String::new();

    let traffic = stats(bpffs)?;
    for (name, help, pick, drops_only) in [
        (
            "genie_packets_total",
            "Packets seen by genie's programs, by the endpoint's tenant and network, direction (from the pod's side) and verdict reason.",
            0,
            false,
        ),
        (
            "genie_bytes_total",
            "Bytes seen by genie's programs, by tenant, network, direction and verdict reason.",
            1,
            false,
        ),
        (
            "genie_drops_total",
            "Packets genie dropped, by tenant, network, direction and drop reason.",
            0,
            true,
        ),
    ] {
        header(&mut out, name, "counter", help);
        for row in &traffic {
            if drops_only && !row.dropped {
                continue;
            }
            let value = if pick == 0 { row.packets } else { row.bytes };
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",network=\"{}\",direction=\"{}\",reason=\"{}\"}} {value}",
                escape(&row.tenant),
                escape(&row.network),
                row.direction,
                row.reason
            );
        }
    }

    header(
        &mut out,
        "genie_endpoints",
        "gauge",
        "Endpoints (pod interfaces) enforced on this node, by tenant and network.",
    );
    let mut endpoints: BTreeMap<(String, String), u64> = BTreeMap::new();
    for info in state.endpoints.values() {
        *endpoints.entry(names.parts(info.identity)).or_default() += 1;
    }
    for ((tenant, network), count) in &endpoints {
        let _ = writeln!(
            out,
            "genie_endpoints{{tenant=\"{}\",network=\"{}\"}} {count}",
            escape(tenant),
            escape(network)
        );
    }

    let zones = maps.zones();
    let capacities = zones.capacities().unwrap_or_default();
    let mut per_zone: BTreeMap<u32, usize> = BTreeMap::new();
    for (zone, _, _) in zones.flows(usize::MAX).unwrap_or_default() {
        *per_zone.entry(zone).or_default() += 1;
    }
    let conntrack: usize = per_zone.values().sum();
    let conntrack_capacity: u32 = capacities.values().sum();
    let _ = writeln!(
        out,
        "# HELP genie_conntrack_entries Flows tracked in each tenant's connection-tracking table.\n# TYPE genie_conntrack_entries gauge"
    );
    let tenant_of_zone = |zone: u32| {
        state
            .identities
            .iter()
            .find(|(_, i)| i.ct_zone == zone)
            .map(|(identity, _)| names.parts(*identity).0)
            .unwrap_or_default()
    };
    for (zone, capacity) in &capacities {
        let _ = writeln!(
            out,
            "genie_conntrack_entries{{tenant=\"{}\",zone=\"{zone}\",capacity=\"{capacity}\"}} {}",
            escape(&tenant_of_zone(*zone)),
            per_zone.get(zone).copied().unwrap_or(0)
        );
    }
    let counters = maps.counters.keys().filter(Result::is_ok).count();
    let fill = [
        (ENDPOINTS_MAP, state.endpoints.len(), MAX_ENDPOINTS),
        (ADDRS_MAP, state.addrs.len(), MAX_ADDRS),
        (CIDRS_MAP, state.cidrs.len(), MAX_CIDRS),
        (IDENTITIES_MAP, state.identities.len(), MAX_IDENTITIES),
        (POLICY_MAP, state.policy.len(), MAX_POLICY),
        (CONNTRACK_MAP, conntrack, conntrack_capacity),
        (COUNTERS_MAP, counters, MAX_COUNTERS),
        (LIMITS_MAP, state.buckets.len(), MAX_BUCKETS),
    ];
    for (name, help, kind) in [
        (
            "genie_map_entries",
            "Entries in each of genie's BPF maps.",
            0,
        ),
        (
            "genie_map_capacity",
            "Capacity of each of genie's BPF maps.",
            1,
        ),
        (
            "genie_map_fill_ratio",
            "Entries divided by capacity for each of genie's BPF maps.",
            2,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for (map, entries, capacity) in fill {
            let value = match kind {
                0 => entries.to_string(),
                1 => capacity.to_string(),
                _ => format!("{}", entries as f64 / f64::from(capacity)),
            };
            let _ = writeln!(out, "{name}{{map=\"{map}\"}} {value}");
        }
    }

    for (name, help, value) in [
        (
            "genie_reconcile_runs_total",
            "Reconciles of the maps with the desired state.",
            agent.reconcile_runs,
        ),
        (
            "genie_reconcile_errors_total",
            "Reconciles that failed (the last applied state stays).",
            agent.reconcile_errors,
        ),
        (
            "genie_config_rejections_total",
            "Configuration loads with files that cannot be read (their objects stay at their last valid versions).",
            agent.config_rejections,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "genie_objects_refused",
        "gauge",
        "Objects whose current spec is refused (the last valid version, if any, stays in force), by kind.",
    );
    for (kind, count) in &agent.objects_refused {
        let _ = writeln!(out, "genie_objects_refused{{kind=\"{kind}\"}} {count}");
    }
    agent.reconcile_duration.render(
        &mut out,
        "genie_reconcile_duration_seconds",
        "Time to compute and write the desired state.",
    );
    agent.propagation.render(
        &mut out,
        "genie_policy_propagation_seconds",
        "From noticing a configuration change to the maps holding it.",
    );
    header(
        &mut out,
        "genie_ready",
        "gauge",
        "1 when the agent has a valid configuration enforced.",
    );
    let _ = writeln!(out, "genie_ready {}", u8::from(ready));
    header(
        &mut out,
        "genie_tcp_pacing_attached",
        "gauge",
        "1 when the program pacing TCP to bandwidth limits is attached to the node's cgroup.",
    );
    let _ = writeln!(
        out,
        "genie_tcp_pacing_attached {}",
        u8::from(crate::dataplane::pacing_attached(bpffs))
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 0\n"));
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.5\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_count 2\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
