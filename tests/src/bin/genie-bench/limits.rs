//! `cargo xtask bench limits`: genie's eBPF bandwidth limits next to the reference CNI
//! `bandwidth` plugin (Debian's: TBF on the host veth, TBF on an IFB for the other direction)
//! on the same two pods, in one run; and a connection flood at five times a QPS limit.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use genie_agent::{cni::delegate, netns};
use genie_tests::{
    TestNode, Topology,
    cni::DEBIAN_CNI_PATH,
    fixtures::limited_network,
    traffic::{EchoConnection, EchoServer, IperfReport, iperf3},
};
use serde_json::json;

/// Seconds per TCP run.
const SECONDS: u32 = 10;
const RATES: [(u64, &str); 3] = [
    (10_000_000, "10M"),
    (100_000_000, "100M"),
    (1_000_000_000, "1G"),
];
const QPS: u64 = 100;
const FLOOD_SECONDS: u64 = 5;

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: f64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy / ticks)
}

struct Measured {
    report: IperfReport,
    cpu_seconds_per_gbit: f64,
}

/// One TCP run from pod `from` to pod `to`, with the machine's CPU time it cost.
fn measure(node: &TestNode, from: &str, to: &str, port: u16) -> Result<Measured> {
    let (from, to) = (node.topo.pod(from), node.topo.pod(to));
    let before = busy_cpu_seconds()?;
    let report = iperf3(from, to, port, SECONDS, None)?;
    let cpu = busy_cpu_seconds()? - before;
    let gigabits = report.bits_per_second * f64::from(SECONDS) / 1e9;
    Ok(Measured {
        report,
        cpu_seconds_per_gbit: cpu / gigabits.max(1e-9),
    })
}

/// The reference plugin on pod `a`'s veth: ADD with the pod's interfaces as `prevResult`.
fn reference_config(node: &TestNode, rate: u64, egress: bool) -> serde_json::Value {
    let a = node.topo.pod("a");
    let burst = (rate / 10).max(1_048_576);
    let (rate_key, burst_key) = if egress {
        ("egressRate", "egressBurst")
    } else {
        ("ingressRate", "ingressBurst")
    };
    json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "type": "bandwidth",
        rate_key: rate,
        burst_key: burst,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": a.host_ifname},
                {"name": "eth0", "sandbox": a.netns.path()},
            ],
            "ips": [{"address": format!("{}/24", a.ipv4), "interface": 1}],
        },
    })
}

fn reference_invocation(node: &TestNode) -> delegate::Invocation {
    delegate::Invocation {
        path: vec![PathBuf::from(DEBIAN_CNI_PATH)],
        container_id: "benchref".to_owned(),
        netns: Some(node.topo.pod("a").netns.path()),
        ifname: "eth0".to_owned(),
        args: BTreeMap::new(),
        host_netns: Some(node.topo.node().path()),
    }
}

/// Opens connections at `rate` per second for `duration` (each attempt on its own schedule,
/// so refused SYNs, which block their connector, do not slow the offer down).
fn paced_flood(
    netns_path: &std::path::Path,
    to: SocketAddr,
    rate: u64,
    duration: Duration,
) -> (u64, u64) {
    const CONNECTORS: u64 = 200;
    let accepted = AtomicU64::new(0);
    let attempted = AtomicU64::new(0);
    let start = Instant::now();
    let period = Duration::from_secs_f64(CONNECTORS as f64 / rate as f64);
    thread::scope(|scope| {
        for i in 0..CONNECTORS {
            let (accepted, attempted) = (&accepted, &attempted);
            scope.spawn(move || {
                let _ = netns::run_in(netns_path, || {
                    let mut next = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    while next < start + duration {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        attempted.fetch_add(1, Ordering::Relaxed);
                        let timeout = period.min(Duration::from_millis(500));
                        if TcpStream::connect_timeout(&to, timeout).is_ok() {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        next += period;
                    }
                });
            });
        }
    });
    (
        accepted.load(Ordering::Relaxed),
        attempted.load(Ordering::Relaxed),
    )
}

pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the benchmark creates namespaces and loads eBPF: run it as root (cargo xtask bench limits)"
        );
    }
    let mut topo = Topology::new()?;
    topo.add_pod("a")?;
    topo.add_pod("b")?;
    let node = TestNode::new(topo, &limited_network("{}"))?;
    node.spawn_agent()?;
    node.register("a", "red", "lim")?;
    node.register("b", "red", "lim")?;
    let bandwidth_plugin = delegate::find_plugin(&[PathBuf::from(DEBIAN_CNI_PATH)], "bandwidth")?;

    let mut rows = Vec::new();
    let mut port = 5300;
    for egress in [true, false] {
        for (rate, label) in RATES {
            eprintln!(
                "{} {label}: genie",
                if egress { "egress" } else { "ingress" }
            );
            // Pod a sends; its egress, or pod b's ingress, is limited.
            let limits = if egress {
                format!("{{egressBandwidth: {label}, scope: Endpoint}}")
            } else {
                format!("{{ingressBandwidth: {label}, scope: Endpoint}}")
            };
            node.write_objects(&limited_network(&limits))?;
            node.wait_for_buckets("the limit to apply", 2)?;
            port += 1;
            let genie = measure(&node, "a", "b", port)?;
            node.write_objects(&limited_network("{}"))?;
            node.wait_for_buckets("the limit to apply", 0)?;

            eprintln!(
                "{} {label}: reference bandwidth plugin",
                if egress { "egress" } else { "ingress" }
            );
            // The reference plugin limits pod a's veth: a's egress directly; for ingress the
            // traffic runs the other way (b sends to a).
            let config = reference_config(&node, rate, egress);
            let invocation = reference_invocation(&node);
            delegate::add(&bandwidth_plugin, &invocation, &config)
                .context("reference bandwidth plugin ADD")?;
            port += 1;
            let reference = if egress {
                measure(&node, "a", "b", port)
            } else {
                measure(&node, "b", "a", port)
            };
            delegate::del(&bandwidth_plugin, &invocation, &config, None)
                .context("reference bandwidth plugin DEL")?;
            // Its DEL removes the IFB but leaves the qdiscs on the veth (the veth normally
            // goes with the pod): remove them for the next run.
            let host_veth = &node.topo.pod("a").host_ifname;
            for parent in ["ingress", "root"] {
                let _ = std::process::Command::new("tc")
                    .args(["-n", node.topo.node().name(), "qdisc", "del", "dev"])
                    .args([host_veth.as_str(), parent])
                    .output();
            }
            rows.push((egress, label, rate, genie, reference?));
        }
    }

    eprintln!("QPS {QPS}/s: flood at {}/s", 5 * QPS);
    node.write_objects(&limited_network(&format!("{{ingressQPS: {QPS}}}")))?;
    node.wait_for_buckets("the limit to apply", 2)?;
    let (a, b) = (node.topo.pod("a"), node.topo.pod("b"));
    let _server = EchoServer::start(b, 7300)?;
    let mut established = EchoConnection::open(a, b, 7301)?;
    let (flood, stalls) = thread::scope(|scope| {
        let flood = scope.spawn(|| {
            paced_flood(
                &a.netns.path(),
                SocketAddr::from((b.ipv4, 7300)),
                5 * QPS,
                Duration::from_secs(FLOOD_SECONDS),
            )
        });
        let mut stalls = 0;
        let deadline = Instant::now() + Duration::from_secs(FLOOD_SECONDS);
        while Instant::now() < deadline {
            if !established.round_trip(b"ping", Duration::from_secs(1)) {
                stalls += 1;
            }
            thread::sleep(Duration::from_millis(100));
        }
        (flood.join(), stalls)
    });
    let (accepted, attempted) = flood.map_err(|_| anyhow::anyhow!("the flood panicked"))?;

    println!("\n## cargo xtask bench limits\n");
    println!(
        "One TCP flow (iperf3, {SECONDS} s) between two pods of one node, limited by genie (eBPF, scope Endpoint; the sender paced by pace_tcp) and by the reference `bandwidth` plugin (TBF; IFB for the pod's egress) in turn, on the same veth pair. CPU is the whole machine's busy time per gigabit delivered.\n"
    );
    println!(
        "| direction | limit | genie Mbit/s | genie ÷ limit | genie 1st s ÷ limit | genie retransmits | reference Mbit/s | reference ÷ limit | reference 1st s ÷ limit | reference retransmits | CPU s/Gbit genie ÷ reference |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (egress, label, rate, genie, reference) in &rows {
        let limit = *rate as f64;
        println!(
            "| {} | {label} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2} |",
            if *egress { "egress" } else { "ingress" },
            genie.report.bits_per_second / 1e6,
            genie.report.bits_per_second / limit,
            genie.report.first_second / limit,
            genie.report.retransmits.unwrap_or(0),
            reference.report.bits_per_second / 1e6,
            reference.report.bits_per_second / limit,
            reference.report.first_second / limit,
            reference.report.retransmits.unwrap_or(0),
            genie.cpu_seconds_per_gbit / reference.cpu_seconds_per_gbit.max(1e-9),
        );
    }
    println!(
        "\nQPS: ingress limit {QPS}/s, {attempted} connection attempts in {FLOOD_SECONDS} s ({:.0}/s offered): {accepted} accepted = {:.1}/s ({:.2} × the limit, including the burst of 10); the established connection missed {stalls} of its echoes.",
        attempted as f64 / FLOOD_SECONDS as f64,
        accepted as f64 / FLOOD_SECONDS as f64,
        accepted as f64 / FLOOD_SECONDS as f64 / QPS as f64,
    );
    println!(
        "\nGoals: goodput within ±5 % of the limit, first-second overshoot ≤ 20 %, fewer retransmits than the reference; accepted connections within ±5 % of the QPS limit."
    );
    Ok(())
}
