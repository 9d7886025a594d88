//! Every `genie` error reaches the operator as a message naming what went wrong, on one line
//! per cause, never as a backtrace — also with `RUST_BACKTRACE=1` set, as it often is.

use std::process::Command;

fn genie(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("genie runs")
}

#[test]
fn errors_are_messages_not_backtraces() {
    for (args, expected) in [
        (
            &["inspect", "endpoints", "--bpffs", "/nonexistent/genie"][..],
            "nsenter",
        ),
        (
            &["endpoint", "list", "--socket", "/nonexistent/agent.sock"][..],
            "cannot reach the genie agent",
        ),
        (
            &["agent", "--source", "kube", "--cluster-dns-service", "nope"][..],
            "expected NAMESPACE/NAME",
        ),
    ] {
        let out = genie(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("genie: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
