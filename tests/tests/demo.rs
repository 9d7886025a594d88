//! The demo's scenario (`cargo xtask demo`) checked against what its objects say: every cell
//! of the connectivity matrix, the reason genie counted for each drop, the same drops in the
//! scraped metrics under their labels, both limits measured near their configuration, and a
//! teardown that leaves nothing.

use genie_tests::{
    demo::{self, Tour, Verdict},
    prometheus::sample,
};

/// What DESIGN.md §3 says for each cell, derived by hand from `demo::OBJECTS`: `A` allowed,
/// `-` the pod itself, otherwise the drop reason, with the (tenant, network, direction) whose
/// counter must move. Targets in `demo::TARGETS` order, then the node.
///
/// Routing inside the pods decides the source interface: a pod reaches its own networks
/// directly, `red-web` and `red-db` through each other's gateway (their IPAM routes), and
/// everything else through `eth0` on the default network.
const EXPECTED: [(&str, [&str; 8]); 4] = [
    (
        "web-1",
        [
            "-",
            "A",                         // red-web → red-db:5432, the peer rule
            "red/default/egress/policy", // other tenant
            "A",                         // same network
            "red/default/egress/policy", // red-ops: no peer rule
            "-",
            "red/default/egress/policy", // other tenant on the default network
            "red/red-web/egress/host-access", // the node
        ],
    ),
    (
        "db-1",
        [
            "red/red-db/egress/policy", // red-db lists no peers
            "-",
            "red/default/egress/policy",
            "red/red-db/egress/policy",
            "red/default/egress/policy",
            "A", // same tenant on the default network
            "red/default/egress/policy",
            "red/red-db/egress/host-access",
        ],
    ),
    (
        "shop-1",
        [
            "blue/default/egress/policy",
            "blue/default/egress/policy",
            "-",
            "blue/default/egress/policy",
            "blue/default/egress/policy",
            "blue/default/egress/policy",
            "-",
            "blue/default/egress/host-access",
        ],
    ),
    (
        "edge",
        [
            "A",
            "A",
            "red/default/egress/policy",
            "-",
            "-",
            "A",
            "red/default/egress/policy",
            "red/red-web/egress/host-access",
        ],
    ),
];

#[test]
#[ignore = "privileged: creates namespaces, runs CNI plugins, loads eBPF; run `cargo xtask test`"]
fn the_demo_scenario_enforces_what_its_objects_say() {
    let tour = Tour::start(false, &mut |_| {}).unwrap();
    // The pod with three interfaces got them, on the networks its annotation names.
    let edge: Vec<(String, String)> = tour
        .pod("edge")
        .interfaces
        .iter()
        .map(|i| (i.ifname.clone(), i.network.clone()))
        .collect();
    assert_eq!(
        edge,
        [
            ("eth0".to_owned(), "genie".to_owned()),
            ("eth1".to_owned(), "red-web".to_owned()),
            ("eth2".to_owned(), "red-ops".to_owned()),
        ]
    );

    let matrix = tour.matrix(&mut |_| {}).unwrap();
    let mut wrong = Vec::new();
    for ((source, row), (expected_source, expected)) in
        matrix.sources.iter().zip(&matrix.cells).zip(EXPECTED)
    {
        assert_eq!(source, expected_source);
        for ((verdict, want), target) in row.iter().zip(expected).zip(&matrix.targets) {
            let got = match verdict {
                Verdict::Allowed => "A".to_owned(),
                Verdict::Itself => "-".to_owned(),
                Verdict::Dropped(Some(d)) => {
                    format!("{}/{}/{}/{}", d.tenant, d.network, d.direction, d.reason)
                }
                Verdict::Dropped(None) => "dropped, no counter moved".to_owned(),
            };
            if got != want {
                wrong.push(format!("{source} → {target}: got {got}, want {want}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "matrix cells differ:\n{}",
        wrong.join("\n")
    );

    // Every drop the matrix printed is in the scraped metrics under the same labels.
    let body = tour.scrape_metrics().unwrap();
    for verdict in matrix.cells.iter().flatten() {
        if let Verdict::Dropped(Some(d)) = verdict {
            let series = Tour::drop_series(d);
            assert!(
                sample(&body, &series).is_some_and(|n| n >= 1.0),
                "{series} missing from the metrics:\n{body}"
            );
        }
    }

    // Both of red-db's limits hold near their configuration (TCP payload tops out at 0.956 of
    // a frame-counted limit; the QPS run starts after the burst is spent).
    let bandwidth = tour.measure_bandwidth(3).unwrap();
    let ratio = bandwidth.measured / bandwidth.configured;
    assert!((0.85..=1.05).contains(&ratio), "{bandwidth:?}");
    let qps = tour.measure_qps(3).unwrap();
    let ratio = qps.measured / qps.configured;
    assert!((0.75..=1.25).contains(&ratio), "{qps:?}");

    tour.delete_pods(&mut |_| {}).unwrap();
    let base = tour.node.topo.base().to_owned();
    drop(tour);
    let left: Vec<String> = genie_tests::names::list_dir("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&base))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(demo::PODS.len(), EXPECTED.len());
}
