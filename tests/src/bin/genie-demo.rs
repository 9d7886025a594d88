//! The demo behind `cargo xtask demo`: a guided tour of genie on one node (the scenario lives
//! in `genie_tests::demo`, which the test suite runs too). `--keep` leaves it running.

use std::{
    io::{IsTerminal as _, Write as _},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use genie_agent::cli::table;
use genie_tests::{
    demo::{self, Measured, Tour, Verdict},
    node::genie_binary,
    prometheus::sample,
    traffic::EchoConnection,
};

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let keep = std::env::args().any(|a| a == "--keep");
    let started = Instant::now();
    let progress = Progress::new();

    progress.step("1/7  a node, the real agent, and four pods added through genie-cni");
    println!(
        "    The agent reads these objects from its --config directory (pods say which networks\n    \
         they want in their annotation; every pod also gets eth0 on the cluster default network):\n"
    );
    for line in demo::OBJECTS.lines() {
        println!("      {line}");
    }
    let tour = progress.run("starting", |p| Tour::start(keep, p))?;
    let rows: Vec<Vec<String>> = tour
        .pods
        .iter()
        .flat_map(|pod| {
            pod.interfaces.iter().map(|i| {
                vec![
                    format!("{}/{}", pod.namespace, pod.name),
                    i.ifname.clone(),
                    i.network.clone(),
                    i.ipv4.to_string(),
                ]
            })
        })
        .collect();
    println!();
    print!(
        "{}",
        indent(&table(&["POD", "IFACE", "NETWORK", "ADDRESS"], &rows))
    );
    genie(&tour, &["inspect", "endpoints"])?;

    progress.step("2/7  connectivity matrix: TCP to port 5432 from each pod to each interface");
    let matrix = progress.run("probing", |p| tour.matrix(p))?;
    let header: Vec<&str> = std::iter::once("from \\ to")
        .chain(matrix.targets.iter().map(String::as_str))
        .collect();
    let rows: Vec<Vec<String>> = matrix
        .sources
        .iter()
        .zip(&matrix.cells)
        .map(|(source, cells)| {
            std::iter::once(source.clone())
                .chain(cells.iter().map(Verdict::text))
                .collect()
        })
        .collect();
    print!("{}", indent(&table(&header, &rows)));
    println!(
        "    Pods reach their own network; red-web may open 5432 on red-db (its peer rule), not\n    \
         the other way; tenants never meet, not even on the default network; the node is\n    \
         off limits (allowHostAccess is false). The reason is the drop counter genie bumped."
    );

    progress.step("3/7  the same drops, scraped from the agent's Prometheus endpoint");
    let body = tour.scrape_metrics()?;
    let mut seen: Vec<demo::Drop> = matrix
        .cells
        .iter()
        .flatten()
        .filter_map(|v| match v {
            Verdict::Dropped(Some(d)) => Some(d.clone()),
            _ => None,
        })
        .collect();
    seen.sort();
    seen.dedup();
    println!("    $ curl http://{}/metrics", tour.metrics_address);
    for d in &seen {
        let series = Tour::drop_series(d);
        println!(
            "    {series} {}",
            sample(&body, &series).map_or("(missing)".to_owned(), |v| v.to_string())
        );
    }

    progress.step("4/7  limits: red-db's ingress bandwidth and QPS, configured vs measured");
    let bandwidth = progress.run("one TCP flow for 5 s", |_| tour.measure_bandwidth(5))?;
    let qps = progress.run("a connection flood for 4 s", |_| tour.measure_qps(3))?;
    let rows: Vec<Vec<String>> = [&bandwidth, &qps].into_iter().map(limit_row).collect();
    print!(
        "{}",
        indent(&table(
            &[
                "LIMIT",
                "CONFIGURED",
                "MEASURED",
                "MEASURED ÷ CONFIGURED",
                "NOTE"
            ],
            &rows
        ))
    );
    println!(
        "    The bucket counts whole frames, so TCP payload tops out near 0.96 of a bandwidth\n    \
         limit; the sender is paced to the bucket instead of losing packets to it."
    );

    progress.step("5/7  tightening is immediate: removing the peer rule cuts an open connection");
    let (web, db) = (tour.pod("web-1"), tour.pod("db-1"));
    let mut conn = EchoConnection::open(&web.at("eth1"), &db.at("eth1"), demo::PORT)?;
    println!(
        "    web-1 → db-1:{} open, echo works: {}",
        demo::PORT,
        conn.round_trip(b"hello", Duration::from_secs(2))
    );
    progress.run("waiting for the agent to apply the change", |_| {
        tour.node.write_objects(&demo::OBJECTS.replace(
            "  isolation:\n    peers: [{network: red-db, ports: [{protocol: TCP, port: 5432}]}]\n",
            "",
        ))?;
        let epoch = || genie_policy_epoch(&tour);
        let before = epoch();
        tour.node
            .wait_for("the agent to apply the change", || epoch() != before)
    })?;
    println!(
        "    peer rule removed from the objects; the same connection now: {}",
        if conn.round_trip(b"again", Duration::from_secs(1)) {
            "still works (BUG)"
        } else {
            "cut"
        }
    );
    drop(conn);
    tour.node.write_objects(demo::OBJECTS)?;

    progress
        .step("6/7  what genie enforces, read from the pinned maps (works with the agent down)");
    genie(&tour, &["inspect", "networks"])?;
    genie(&tour, &["inspect", "limits"])?;
    genie(&tour, &["inspect", "stats"])?;

    println!(
        "\ntour took {:.0} s after setup",
        started.elapsed().as_secs_f64()
    );
    if keep {
        progress.step("7/7  --keep: everything stays up");
        print_keep_instructions(&tour);
        let teardown = tour.keep();
        println!("\n    To remove it all (as root):");
        for command in teardown {
            println!("      {command}");
        }
        return Ok(());
    }

    progress.step(
        "7/7  cleaning up: CNI DEL for every pod, agent stopped, pins and namespaces removed",
    );
    progress.run("deleting", |p| tour.delete_pods(p))?;
    let base = tour.node.topo.base().to_owned();
    drop(tour);
    let left = genie_tests::names::list_dir("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&base))
        .count();
    println!("    namespaces left behind: {left}");
    if left != 0 {
        bail!("the demo left namespaces behind");
    }
    println!("\ndone.");
    Ok(())
}

fn limit_row(m: &Measured) -> Vec<String> {
    let scaled = |v: f64| {
        if m.unit == "bit/s" {
            format!("{:.1} Mbit/s", v / 1e6)
        } else {
            format!("{v:.1} {}", m.unit)
        }
    };
    vec![
        m.what.clone(),
        scaled(m.configured),
        scaled(m.measured),
        format!("{:.2}", m.measured / m.configured),
        m.note.clone(),
    ]
}

fn genie_policy_epoch(tour: &Tour) -> Option<u32> {
    tour.node
        .call(&genie_agent::api::Request::Status)
        .ok()
        .and_then(|r| r.status)
        .map(|s| s.policy_epoch)
}

fn print_keep_instructions(tour: &Tour) {
    let paths = format!(
        "--bpffs {} --state-dir {}",
        tour.node.bpffs().display(),
        tour.node.state_dir().display()
    );
    let web = tour.pod("web-1");
    let db = tour.pod("db-1");
    let shop = tour.pod("shop-1");
    println!(
        "    The agent keeps running (pid {}).",
        tour.node.agent_pid().unwrap_or(0)
    );
    println!("    Pods are network namespaces:");
    for pod in &tour.pods {
        println!("      {}/{}: {}", pod.namespace, pod.name, pod.netns.name());
    }
    println!("\n    Things to try (as root):");
    println!(
        "      ip netns exec {} ping -c1 {}      # red → red-db: web-1 may only open TCP 5432",
        web.netns.name(),
        db.at("eth1").ipv4
    );
    println!(
        "      ip netns exec {} ping -c1 {}      # blue → red: dropped",
        shop.netns.name(),
        web.at("eth0").ipv4
    );
    println!("      genie inspect counters {paths}");
    println!("      genie inspect conntrack {paths}");
    println!("      curl http://{}/metrics", tour.metrics_address);
    println!(
        "      edit {}/objects.yaml — the agent applies changes within a second",
        tour.node.config_dir().display()
    );
    println!("    (`genie` is {})", genie_binary().display());
}

fn genie(tour: &Tour, args: &[&str]) -> Result<()> {
    let out = Command::new(genie_binary())
        .args(args)
        .arg("--bpffs")
        .arg(tour.node.bpffs())
        .arg("--state-dir")
        .arg(tour.node.state_dir())
        .output()
        .context("running genie")?;
    if !out.status.success() {
        bail!(
            "genie {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\n    $ genie {}", args.join(" "));
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Step headings, and a ticking status line for work that takes more than a second.
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
        }
    }

    fn step(&self, text: &str) {
        println!("\n==> {text}");
    }

    /// Runs `work`, which reports what it is doing through its argument; after a second a
    /// status line shows that and the elapsed time, refreshed every second.
    fn run<T>(
        &self,
        what: &str,
        work: impl FnOnce(&mut dyn FnMut(&str)) -> Result<T>,
    ) -> Result<T> {
        let current = Arc::new(Mutex::new(what.to_owned()));
        let started = Instant::now();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (current, done, tty) = (Arc::clone(&current), Arc::clone(&done), self.tty);
            thread::spawn(move || {
                let mut shown = false;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(250));
                    let elapsed = started.elapsed();
                    if elapsed < Duration::from_secs(1) {
                        continue;
                    }
                    let text = current.lock().map(|c| c.clone()).unwrap_or_default();
                    if tty {
                        print!("\r\x1b[2K    … {text} ({:.0} s)", elapsed.as_secs_f64());
                        let _ = std::io::stdout().flush();
                        shown = true;
                    } else if elapsed.as_millis() % 5000 < 250 {
                        println!("    … {text} ({:.0} s)", elapsed.as_secs_f64());
                    }
                }
                if shown {
                    print!("\r\x1b[2K");
                    let _ = std::io::stdout().flush();
                }
            })
        };
        let mut report = |text: &str| {
            if let Ok(mut c) = current.lock() {
                *c = text.to_owned();
            }
        };
        let result = work(&mut report);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.join();
        println!(
            "    {what}: done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        result
    }
}
