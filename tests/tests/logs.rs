//! The agent's logs: the eBPF programs' debug logs reach the agent's output when `genie_ebpf`
//! is at debug level, naming each drop, and are pruned from the loaded program otherwise;
//! `--log-format json` prints one JSON object per line.

use std::process::Command;

use genie_tests::{TestNode, Topology, fixtures::TWO_TENANTS, traffic};

/// Runs an agent with `RUST_LOG=rust_log` (and `args`), sends red → blue datagrams that policy
/// drops, and returns the agent's log and the translated size of the program on red's egress.
fn drops_logged_with(rust_log: &str, args: &[&str]) -> (String, u64) {
    let mut topo = Topology::new().unwrap();
    topo.add_pod("r").unwrap();
    topo.add_pod("b").unwrap();
    let node = TestNode::new(topo, TWO_TENANTS)
        .unwrap()
        .with_agent_env("RUST_LOG", rust_log)
        .with_agent_args(args);
    node.spawn_agent().unwrap();
    let red = node.register("r", "red", "default").unwrap();
    node.register("b", "blue", "default").unwrap();
    let (r, b) = (node.topo.pod("r"), node.topo.pod("b"));
    assert_eq!(traffic::udp(r, b, 7500, 5, 32).unwrap(), 0);
    // The log thread polls its ring buffer every 200 ms.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let link = genie_agent::dataplane::link_pin_path(
        node.bpffs(),
        red.id,
        genie_common::Direction::Egress,
    );
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let prog_id = bpftool(&["link", "show", "pinned", link.to_str().unwrap()])["prog_id"]
        .as_u64()
        .unwrap();
    let xlated = bpftool(&["prog", "show", "id", &prog_id.to_string()])["bytes_xlated"]
        .as_u64()
        .unwrap();
    (node.agent_log(), xlated)
}

#[test]
#[ignore = "privileged: creates namespaces, loads eBPF and runs the agent; run `cargo xtask test`"]
fn ebpf_debug_logs_name_each_drop_and_are_pruned_when_off() {
    let (on, size_on) = drops_logged_with("info,genie_ebpf=debug", &["--log-format", "json"]);
    let drops: Vec<serde_json::Value> = on
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .filter(|event: &serde_json::Value| event["target"] == "genie_ebpf")
        .collect();
    assert!(
        drops.len() >= 5
            && drops.iter().all(|d| {
                d["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("drop: endpoint 1 egress policy"))
            }),
        "eBPF debug logs: {drops:?}\nagent log:\n{on}"
    );

    let (off, size_off) = drops_logged_with("info", &[]);
    assert!(!off.contains("genie_ebpf"), "logs while off:\n{off}");
    // The verifier prunes the log statements when the level is frozen at 0.
    assert!(
        size_off < size_on,
        "translated program: {size_off} bytes with logs off, {size_on} with them on"
    );
}
