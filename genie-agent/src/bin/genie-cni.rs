//! `genie-cni`: the CNI plugin a container runtime runs. All the work is in the agent; this
//! binary forwards the request (`genie_agent::shim`).

use std::io::{Read as _, Write as _};

fn main() {
    let mut stdin = Vec::new();
    // A runtime that closes stdin early still gets an answer: the config is then undecodable.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = genie_agent::shim::run(|name| std::env::var(name).ok(), &stdin);
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::exit(outcome.exit_code);
}
