//! The agent's Prometheus endpoint, scraped while traffic flows: drops appear under the tenant,
//! network, direction and reason genie counted; health and readiness answer; the agent's own
//! work (reconciles, propagation, refused objects, unreadable files) is there; 100 scrapes
//! leave the agent's descriptors as they were, one map read each.

use genie_tests::{
    TestNode, Topology,
    fixtures::TWO_TENANTS,
    prometheus::{self, sample},
    traffic,
};

fn get(address: &str, path: &str) -> (u16, String) {
    prometheus::get(address, path).unwrap()
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs the agent; run `cargo xtask test`"]
fn scraped_metrics_show_the_drops_under_their_labels() {
    let mut topo = Topology::new().unwrap();
    topo.add_pod("r").unwrap();
    topo.add_pod("b").unwrap();
    // The agent runs in the test's namespace; a port from the process id keeps parallel runs
    // of the suite apart.
    let address = format!("127.0.0.1:{}", 20_000 + std::process::id() % 20_000);
    let node = TestNode::new(topo, TWO_TENANTS)
        .unwrap()
        .with_agent_args(&["--metrics-address", &address]);
    node.spawn_agent().unwrap();
    node.register("r", "red", "default").unwrap();
    node.register("b", "blue", "default").unwrap();

    assert_eq!(get(&address, "/healthz").0, 200);
    assert_eq!(get(&address, "/readyz").0, 200);
    assert_eq!(get(&address, "/nope").0, 404);

    // red → blue on the default network: a different tenant, dropped as policy at red's
    // egress. 20 datagrams, none delivered.
    let (r, b) = (node.topo.pod("r"), node.topo.pod("b"));
    assert_eq!(traffic::udp(r, b, 7400, 20, 32).unwrap(), 0);
    let (status, body) = get(&address, "/metrics");
    assert_eq!(status, 200);
    let drops = sample(
        &body,
        "genie_drops_total{tenant=\"red\",network=\"default\",direction=\"egress\",reason=\"policy\"}",
    );
    assert!(drops.is_some_and(|d| d >= 20.0), "drops {drops:?}:\n{body}");
    assert_eq!(
        sample(
            &body,
            "genie_endpoints{tenant=\"blue\",network=\"default\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "genie_map_capacity{map=\"genie_endpoints\"}"),
        Some(131_072.0)
    );
    assert!(sample(&body, "genie_map_entries{map=\"genie_endpoints\"}") == Some(2.0));
    assert!(sample(&body, "genie_reconcile_runs_total").is_some_and(|n| n >= 1.0));
    assert!(sample(&body, "genie_policy_propagation_seconds_count").is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&body, "genie_ready"), Some(1.0));
    assert_eq!(sample(&body, "genie_tcp_pacing_attached"), Some(1.0));

    // 100 scrapes in a row: the agent's open descriptors do not grow, and each scrape is one
    // read of its own open maps (the snapshot counter moves by exactly one per scrape).
    let pid = node.agent_pid().expect("the agent runs");
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let snapshots = |body: &str| sample(body, "genie_metrics_snapshots_total").unwrap_or(-1.0);
    // The server closes each connection just after answering: counts are taken once the
    // last connection's socket is gone.
    let settled = |at_most: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let n = descriptors();
            if n <= at_most || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let first = get(&address, "/metrics").1;
    let fds_before = settled(0);
    let mut last = String::new();
    for _ in 0..100 {
        let (status, body) = get(&address, "/metrics");
        assert_eq!(status, 200);
        last = body;
    }
    assert_eq!(snapshots(&last) - snapshots(&first), 100.0);
    let fds_after = settled(fds_before);
    assert!(
        fds_after <= fds_before,
        "open descriptors grew over 100 scrapes: {fds_before} before, {fds_after} after"
    );
    assert!(
        last.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );

    // A refused object is counted by kind and leaves the agent ready.
    node.write_config_file(
        "bad.yaml",
        "apiVersion: genie.dev/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {bogus: 1}\n",
    )
    .unwrap();
    node.wait_for("the refusal to be counted", || {
        sample(
            &get(&address, "/metrics").1,
            "genie_objects_refused{kind=\"Tenant\"}",
        ) == Some(1.0)
    })
    .unwrap();
    assert_eq!(
        sample(
            &get(&address, "/metrics").1,
            "genie_objects_refused{kind=\"LogicalNetwork\"}"
        ),
        Some(0.0)
    );
    // So is a file that cannot be read; the objects last read from it stay in force.
    node.write_config_file("bad.yaml", "kind: [unclosed\n")
        .unwrap();
    node.wait_for("the rejection to be counted", || {
        sample(
            &get(&address, "/metrics").1,
            "genie_config_rejections_total",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .unwrap();
    assert_eq!(get(&address, "/readyz").0, 200);
}
