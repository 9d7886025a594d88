//! The demo behind `cargo xtask demo`: a node with two pods, genie's programs on both pod
//! interfaces, real traffic, and the counters read back from the pinned map by `genie inspect`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use genie_agent::dataplane::{Dataplane, EndpointAttachment};
use genie_tests::{Topology, traffic};

fn main() -> Result<()> {
    let genie = PathBuf::from(std::env::var_os("GENIE_BIN").context(
        "GENIE_BIN must point at the `genie` binary; run the demo through `cargo xtask demo`",
    )?);
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }

    step("creating a node namespace with two pods (198.18.0.0/24, static neighbours)");
    let mut topo = Topology::new()?;
    topo.add_pod("a")?;
    topo.add_pod("b")?;
    for pod in topo.pods() {
        println!(
            "    pod {:<2} netns {:<24} eth0 {}   host side {} in {}",
            pod.label,
            pod.netns.name(),
            pod.ipv4,
            pod.host_ifname,
            topo.node().name()
        );
    }

    step(&format!(
        "loading genie's eBPF programs, maps pinned under {}",
        topo.bpffs().display()
    ));
    let mut dp = Dataplane::load(topo.bpffs())?;
    for (id, pod) in (1..).zip(topo.pods()) {
        let ifindex = dp.attach_endpoint(&EndpointAttachment {
            netns: topo.node().path(),
            ifname: pod.host_ifname.clone(),
            endpoint_id: id,
        })?;
        println!(
            "    endpoint {id}: pod {} — from_endpoint on TCX ingress and to_endpoint on TCX \
             egress of {} (ifindex {ifindex}), links pinned",
            pod.label, pod.host_ifname
        );
    }

    let (a, b) = (topo.pod("a"), topo.pod("b"));
    step("sending traffic");
    let pongs = traffic::ping(a, b.ipv4, 10)?;
    println!("    ping a → b: 10 sent, {pongs} replies");
    let udp = traffic::udp(a, b, 9000, 100, 100)?;
    println!("    UDP a → b: 100 datagrams of 100 bytes sent, {udp} delivered");
    let tcp = traffic::tcp_echo(b, a, 9001)?;
    println!(
        "    TCP b → a: echo {}",
        if tcp { "completed" } else { "FAILED" }
    );

    step("counters, read from the pinned map by `genie inspect counters`");
    let out = Command::new(&genie)
        .args(["inspect", "counters", "--bpffs"])
        .arg(topo.bpffs())
        .output()
        .with_context(|| format!("running {}", genie.display()))?;
    if !out.status.success() {
        bail!(
            "genie inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    println!(
        "    expected for endpoint 1 egress: 10 ICMP + 100 UDP + the TCP replies; for endpoint 2\n    \
         ingress the same (what a sends, b receives)"
    );

    step("the same map through bpftool (named fields come from BTF)");
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(topo.bpffs().join(genie_common::maps::COUNTERS_MAP))
        .output()
        .context("running bpftool")?;
    let dump = String::from_utf8_lossy(&out.stdout);
    let shown: String = dump
        .lines()
        .take(24)
        .map(|l| format!("    {l}\n"))
        .collect();
    print!("{shown}");
    if dump.lines().count() > 24 {
        println!("    …");
    }

    step("cleaning up: links unpinned (programs detach), maps unpinned, namespaces deleted");
    let base = topo.base().to_owned();
    drop(dp);
    drop(topo);
    let left = genie_tests::names::list_dir("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&base))
        .count();
    println!("    namespaces left behind: {left}");
    if pongs != 10 || udp != 100 || !tcp || left != 0 {
        bail!("the demo did not see what it expected (see above)");
    }
    println!("\ndone.");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
