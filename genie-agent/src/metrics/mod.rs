//! Prometheus metrics through the `prometheus-client` crate.
//!
//! The agent's own work (reconciles, propagation, refusals, failures by kind, CNI requests) is
//! recorded in live metrics ([`AgentMetrics`], shared by cheap clones, updated without the
//! agent's lock). The dataplane's metrics are encoded from a [`Snapshot`]: one read of each
//! of the agent's already open maps per scrape, so a scrape opens no pin and reads nothing
//! twice.

use std::{collections::BTreeMap, sync::Arc};

use genie_common::maps::{
    ADDRS_MAP, CIDRS_MAP, CONNTRACK_MAP, COUNTERS_MAP, ENDPOINTS_MAP, IDENTITIES_MAP, LIMITS_MAP,
    MAX_ADDRS, MAX_BUCKETS, MAX_CIDRS, MAX_COUNTERS, MAX_ENDPOINTS, MAX_IDENTITIES, MAX_POLICY,
    POLICY_MAP,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{
    dataplane::{CounterRow, DataplaneError, PinnedMaps, sum_counters},
    inspect::{IdentityNames, StatsRow, stats_rows},
    reconcile::DesiredState,
};

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

type Labels = Vec<(&'static str, String)>;

/// What the agent records about its own work. Clones share the same metrics.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    pub reconcile_runs: Counter,
    pub reconcile_duration: Histogram,
    /// From noticing a configuration change to the maps holding it.
    pub propagation: Histogram,
    /// Configuration loads with a file that cannot be read.
    pub config_rejections: Counter,
    /// Objects whose current spec is refused, by kind.
    pub objects_refused: Family<Labels, Gauge>,
    /// Failures of the agent's own work, by what failed and the error's kind.
    pub failures: Family<Labels, Counter>,
    /// CNI requests by command and result (`ok` or the CNI error code).
    pub cni_requests: Family<Labels, Counter>,
    /// Map snapshots taken for scrapes (one per scrape).
    pub snapshots: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let histogram = || Histogram::new(BUCKETS);
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            reconcile_runs: Counter::default(),
            reconcile_duration: histogram(),
            propagation: histogram(),
            config_rejections: Counter::default(),
            objects_refused: Family::default(),
            failures: Family::default(),
            cni_requests: Family::default(),
            snapshots: Counter::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "genie_reconcile_runs",
            "Reconciles of the maps with the desired state",
            metrics.reconcile_runs.clone(),
        );
        registry.register(
            "genie_reconcile_duration_seconds",
            "Time to compute and write the desired state",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "genie_policy_propagation_seconds",
            "From noticing a configuration change to the maps holding it",
            metrics.propagation.clone(),
        );
        registry.register(
            "genie_config_rejections",
            "Configuration loads with files that cannot be read (their objects stay at their last valid versions)",
            metrics.config_rejections.clone(),
        );
        registry.register(
            "genie_objects_refused",
            "Objects whose current spec is refused (the last valid version, if any, stays in force), by kind",
            metrics.objects_refused.clone(),
        );
        registry.register(
            "genie_failures",
            "Failures of the agent's own work, by operation and error kind",
            metrics.failures.clone(),
        );
        registry.register(
            "genie_cni_requests",
            "CNI requests handled, by command and result (ok or the CNI error code)",
            metrics.cni_requests.clone(),
        );
        registry.register(
            "genie_metrics_snapshots",
            "Reads of the dataplane's maps for scrapes: one per scrape, through the agent's open maps",
            metrics.snapshots.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }
}

impl AgentMetrics {
    /// Counts a failure of `operation` with an error of `kind`.
    pub fn failed(&self, operation: &'static str, kind: &str) {
        self.failures
            .get_or_create(&vec![
                ("operation", operation.to_owned()),
                ("kind", kind.to_owned()),
            ])
            .inc();
    }

    /// Counts one CNI request.
    pub fn cni_request(&self, command: &str, result: &str) {
        self.cni_requests
            .get_or_create(&vec![
                ("command", command.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// Sets the refused objects per kind.
    pub fn set_refused(&self, refused: impl IntoIterator<Item = (&'static str, u64)>) {
        for (kind, count) in refused {
            self.objects_refused
                .get_or_create(&vec![("kind", kind.to_owned())])
                .set(count as i64);
        }
    }
}

/// The dataplane as one scrape sees it: each map read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: DesiredState,
    pub counters: Vec<CounterRow>,
    /// Entries in the counters map (keys, before summing over CPUs).
    pub counter_entries: usize,
    /// Per zone: (capacity, tracked flows).
    pub zones: BTreeMap<u32, (u32, usize)>,
    pub ready: bool,
    pub pacing_attached: bool,
}

impl Snapshot {
    /// Reads every map once through the agent's open handles.
    pub fn read(
        maps: &PinnedMaps,
        ready: bool,
        pacing_attached: bool,
    ) -> Result<Self, DataplaneError> {
        let (counters, counter_entries) = sum_counters(&maps.counters)?;
        let state = maps.read_state()?;
        let zones = maps.zones().occupancy(&state.ct_zones)?;
        Ok(Self {
            state,
            counters,
            counter_entries,
            zones,
            ready,
            pacing_attached,
        })
    }
}

/// Renders the agent's metrics and `snapshot`'s in the OpenMetrics text format.
pub fn render(agent: &AgentMetrics, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, &agent.registry)?;
    let mut dataplane = Registry::default();
    dataplane.register_collector(Box::new(DataplaneCollector(snapshot)));
    prometheus_client::encoding::text::encode_registry(&mut out, &dataplane)?;
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}

#[derive(Debug)]
struct DataplaneCollector(Snapshot);

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = &self.0;
        let names = IdentityNames(snapshot.state.identities.clone());
        let traffic: Vec<StatsRow> = stats_rows(&names, &snapshot.counters);
        let labels = |row: &StatsRow| -> Labels {
            vec![
                ("tenant", row.tenant.clone()),
                ("network", row.network.clone()),
                ("direction", row.direction.clone()),
                ("reason", row.reason.clone()),
            ]
        };
        counter(
            &mut encoder,
            "genie_packets",
            "Packets seen by genie's programs, by the endpoint's tenant and network, direction (from the pod's side) and verdict reason.",
            traffic.iter().map(|r| (labels(r), r.packets)),
        )?;
        counter(
            &mut encoder,
            "genie_bytes",
            "Bytes seen by genie's programs, by tenant, network, direction and verdict reason.",
            traffic.iter().map(|r| (labels(r), r.bytes)),
        )?;
        counter(
            &mut encoder,
            "genie_drops",
            "Packets genie dropped, by tenant, network, direction and drop reason.",
            traffic
                .iter()
                .filter(|r| r.dropped)
                .map(|r| (labels(r), r.packets)),
        )?;

        let mut endpoints: BTreeMap<(String, String), u64> = BTreeMap::new();
        for info in snapshot.state.endpoints.values() {
            *endpoints.entry(names.parts(info.identity)).or_default() += 1;
        }
        gauge(
            &mut encoder,
            "genie_endpoints",
            "Endpoints (pod interfaces) enforced on this node, by tenant and network.",
            endpoints
                .into_iter()
                .map(|((tenant, network), n)| (vec![("tenant", tenant), ("network", network)], n)),
        )?;

        let tenant_of_zone = |zone: u32| {
            snapshot
                .state
                .identities
                .iter()
                .find(|(_, i)| i.ct_zone == zone)
                .map(|(identity, _)| names.parts(*identity).0)
                .unwrap_or_default()
        };
        gauge(
            &mut encoder,
            "genie_conntrack_entries",
            "Flows tracked in each tenant's connection-tracking table.",
            snapshot.zones.iter().map(|(zone, (capacity, flows))| {
                (
                    vec![
                        ("tenant", tenant_of_zone(*zone)),
                        ("zone", zone.to_string()),
                        ("capacity", capacity.to_string()),
                    ],
                    *flows as u64,
                )
            }),
        )?;

        let conntrack: usize = snapshot.zones.values().map(|(_, n)| n).sum();
        let conntrack_capacity: u32 = snapshot.zones.values().map(|(c, _)| c).sum();
        let state = &snapshot.state;
        let fill = [
            (ENDPOINTS_MAP, state.endpoints.len(), MAX_ENDPOINTS),
            (ADDRS_MAP, state.addrs.len(), MAX_ADDRS),
            (CIDRS_MAP, state.cidrs.len(), MAX_CIDRS),
            (IDENTITIES_MAP, state.identities.len(), MAX_IDENTITIES),
            (POLICY_MAP, state.policy.len(), MAX_POLICY),
            (CONNTRACK_MAP, conntrack, conntrack_capacity),
            (COUNTERS_MAP, snapshot.counter_entries, MAX_COUNTERS),
            (LIMITS_MAP, state.buckets.len(), MAX_BUCKETS),
        ];
        let map = |name: &str| vec![("map", name.to_owned())];
        gauge(
            &mut encoder,
            "genie_map_entries",
            "Entries in each of genie's BPF maps.",
            fill.iter()
                .map(|(name, entries, _)| (map(name), *entries as u64)),
        )?;
        gauge(
            &mut encoder,
            "genie_map_capacity",
            "Capacity of each of genie's BPF maps.",
            fill.iter()
                .map(|(name, _, capacity)| (map(name), u64::from(*capacity))),
        )?;
        gauge(
            &mut encoder,
            "genie_map_fill_ratio",
            "Entries divided by capacity for each of genie's BPF maps.",
            fill.iter().map(|(name, entries, capacity)| {
                let ratio = if *capacity == 0 {
                    0.0
                } else {
                    *entries as f64 / f64::from(*capacity)
                };
                (map(name), ratio)
            }),
        )?;
        for (name, help, value) in [
            (
                "genie_ready",
                "1 when the agent has a valid configuration enforced.",
                snapshot.ready,
            ),
            (
                "genie_tcp_pacing_attached",
                "1 when the program pacing TCP to bandwidth limits is attached to the node's cgroup.",
                snapshot.pacing_attached,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(u64::from(value)).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_metrics_render_in_the_text_format() {
        let metrics = AgentMetrics::default();
        metrics.reconcile_runs.inc();
        metrics
            .propagation
            .observe(std::time::Duration::from_millis(3).as_secs_f64());
        metrics.failed("reconcile", "dataplane");
        metrics.cni_request("ADD", "ok");
        metrics.set_refused([("Tenant", 2)]);
        let out = render(&metrics, Snapshot::default()).unwrap();
        for line in [
            "genie_reconcile_runs_total 1",
            "genie_policy_propagation_seconds_bucket{le=\"0.005\"} 1",
            "genie_policy_propagation_seconds_count 1",
            "genie_failures_total{operation=\"reconcile\",kind=\"dataplane\"} 1",
            "genie_cni_requests_total{command=\"ADD\",result=\"ok\"} 1",
            "genie_objects_refused{kind=\"Tenant\"} 2",
            "genie_ready 0",
            "genie_map_capacity{map=\"genie_endpoints\"} 131072",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
        }
        assert!(out.ends_with("# EOF\n"));
    }
}
