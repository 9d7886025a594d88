//! The `genie` command line.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use genie_agent::{
    DEFAULT_BPFFS_DIR,
    agent::{self, Agent, AgentConfig},
    api::{self, DEFAULT_SOCKET, Request},
    cli,
    cni::cache::Cache,
    endpoint::EndpointRequest,
    inspect,
};
use ipnet::IpNet;

/// Default state directory (endpoint registry).
const DEFAULT_STATE_DIR: &str = "/var/lib/genie";
/// Default configuration directory in file mode.
const DEFAULT_CONFIG_DIR: &str = "/etc/genie/objects";

#[derive(Debug, Parser)]
#[command(
    name = "genie",
    version,
    about = "genie: multi-network tenant isolation for pods, in eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (file mode: objects from a directory of YAML files).
    Agent(Box<AgentArgs>),
    /// Register, remove or list endpoints through the running agent's API.
    Endpoint {
        #[command(subcommand)]
        what: EndpointCommand,
        /// The agent's API socket.
        #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show what is enforced on this node, from the pinned maps (works while the agent is
    /// down).
    Inspect {
        #[command(subcommand)]
        what: InspectCommand,
        /// The node's genie bpffs directory.
        #[arg(long, global = true, default_value = DEFAULT_BPFFS_DIR)]
        bpffs: PathBuf,
        /// The agent's state directory (for pod names).
        #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Install genie-cni on this node (the DaemonSet's init step): copy the binary into the CNI
    /// binary directory and write 00-genie.conflist in front of the cluster's own
    /// configuration, which becomes genie's default network.
    InstallCni(InstallCniArgs),
    /// Remove genie-cni and 00-genie.conflist from the node, leaving its primary CNI
    /// configuration alone in charge (the DaemonSet's preStop / uninstall step).
    UninstallCni(InstallCniArgs),
    /// Print the CustomResourceDefinitions of PhysicalNetwork, LogicalNetwork and Tenant
    /// (`genie crds | kubectl apply -f -`).
    Crds,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentArgs {
    #[command(subcommand)]
    cleanup: Option<AgentSubcommand>,
    /// Directory of `*.yaml` objects (PhysicalNetwork, LogicalNetwork, Tenant); changes apply
    /// while the agent runs.
    #[arg(long, default_value = DEFAULT_CONFIG_DIR)]
    config: PathBuf,
    /// The node's network namespace (host-side interfaces live there). Default: the agent's
    /// own.
    #[arg(long, default_value = "/proc/self/ns/net")]
    netns: PathBuf,
    #[command(flatten)]
    paths: NodePaths,
    /// A CIDR that counts as HOST besides this node's own addresses (other nodes); repeatable.
    #[arg(long = "host-cidr")]
    host_cidrs: Vec<IpNet>,
    /// A cluster DNS service address, reachable on port 53 by every tenant; repeatable.
    #[arg(long = "cluster-dns")]
    dns: Vec<IpAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve Prometheus metrics (`/metrics`) and health (`/healthz`, `/readyz`) over HTTP on
    /// this address, e.g. 127.0.0.1:9464. Off when not given; the endpoint has no
    /// authentication, so bind it to localhost or a node-internal address.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// cgroup v2 directory whose TCP connections genie paces to their bandwidth limits (a
    /// sock_ops program; pods' sockets must be below it). `auto`: the root of the cgroup v2
    /// mount; `none`: no pacing (limits still hold; a single TCP flow then falls short of its
    /// limit).
    #[arg(long, default_value = "auto")]
    pacing_cgroup: String,
    /// Where the objects come from: `file` (the --config directory) or `kube` (the Kubernetes
    /// API: genie's CRDs, Pods and Nodes).
    #[arg(long, value_enum, default_value_t = SourceKind::File)]
    source: SourceKind,
    /// kubeconfig for `--source kube`. Default: in-cluster configuration, else $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name in Kubernetes (`--source kube`; the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The cluster DNS Service whose addresses every tenant may reach on port 53
    /// (`--source kube`), as NAMESPACE/NAME.
    #[arg(long, default_value = "kube-system/kube-dns")]
    cluster_dns_service: String,
    /// The node's CNI configuration directory: the agent keeps genie's configuration there in
    /// front of the primary one and rewrites it when the primary changes (not ready while
    /// there is no primary). Off when not given.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The agent's socket as genie-cni on the node reaches it (written into genie's CNI
    /// configuration with --cni-conf-dir).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    cni_agent_socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// A directory of YAML files.
    File,
    /// The Kubernetes API.
    Kube,
}

#[derive(Debug, Args)]
struct NodePaths {
    /// bpffs directory for genie's pins.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs: PathBuf,
    /// Directory for the endpoint registry.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Unix socket for the local API.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Debug, Args)]
struct InstallCniArgs {
    /// The genie-cni binary to install. Default: `genie-cni` next to this executable.
    #[arg(long)]
    genie_cni: Option<PathBuf>,
    /// The node's CNI binary directory (as mounted into the container).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory (as mounted into the container).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The agent's API socket as seen from the node (genie-cni runs on the host).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    agent_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AgentSubcommand {
    /// Remove everything genie put on this node: detach every program, unpin every map, delete
    /// the endpoint registry and the socket.
    Cleanup(NodePaths),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// Register a pod interface and attach genie's programs to its host side.
    Add(EndpointAddArgs),
    /// Detach and forget a pod interface.
    Remove {
        /// The pod's Kubernetes namespace.
        #[arg(long)]
        namespace: String,
        /// The pod's name.
        #[arg(long)]
        pod: String,
        /// Interface name inside the pod.
        #[arg(long, default_value = "eth0")]
        interface: String,
    },
    /// List registered endpoints.
    List,
    /// Show whether the agent is ready.
    Status,
}

#[derive(Debug, Args)]
struct EndpointAddArgs {
    /// The pod's Kubernetes namespace (its tenant owns the endpoint).
    #[arg(long)]
    namespace: String,
    /// The pod's name.
    #[arg(long)]
    pod: String,
    /// Logical network, or `default`.
    #[arg(long, default_value = "default")]
    network: String,
    /// Interface name inside the pod.
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// Host-side interface genie attaches to.
    #[arg(long)]
    host_interface: String,
    /// Network namespace of the host-side interface.
    #[arg(long, default_value = "/proc/self/ns/net")]
    netns: PathBuf,
    /// The pod interface's addresses; repeatable.
    #[arg(long = "ip", required = true)]
    ips: Vec<IpAddr>,
    /// The pod interface's MAC.
    #[arg(long)]
    mac: Option<String>,
}

#[derive(Debug, Subcommand)]
enum InspectCommand {
    /// Enforced endpoints: pod, interface, identity, addresses.
    Endpoints,
    /// Identities with their flags, the policy matrix and classified CIDRs.
    Policy,
    /// Packet and byte counters per endpoint, direction and reason.
    Counters,
    /// Networks (identities) with their address ranges, flags and endpoints on this node.
    Networks,
    /// Packets and bytes per tenant, network, direction and reason, summed over endpoints.
    Stats,
    /// Rate-limit buckets: scope, owner, kind, direction, rate and burst.
    Limits,
    /// Tracked flows (connection tracking).
    Conntrack {
        /// Show at most this many flows.
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// Pod interfaces attached through genie-cni, with their networks and addresses (the
    /// pods' `k8s.v1.cni.cncf.io/network-status`), from the node's attachment cache.
    Attachments,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Endpoint { what, socket } => run_endpoint(what, &socket),
        Command::InstallCni(args) => {
            let genie_cni = match args.genie_cni {
                Some(path) => path,
                None => std::env::current_exe()
                    .context("locating this executable")?
                    .with_file_name("genie-cni"),
            };
            let installed = genie_agent::cni::install::install(
                &genie_cni,
                &args.cni_bin_dir,
                &args.cni_conf_dir,
                &args.agent_socket,
            )?;
            eprintln!(
                "installed {} and {} (default network from {})",
                installed.binary.display(),
                installed.config.display(),
                installed.primary.display()
            );
            Ok(())
        }
        Command::UninstallCni(args) => {
            let removed =
                genie_agent::cni::install::uninstall(&args.cni_bin_dir, &args.cni_conf_dir)?;
            for path in removed {
                eprintln!("removed {}", path.display());
            }
            Ok(())
        }
        Command::Crds => {
            print!("{}", genie_agent::model::crd::yaml());
            Ok(())
        }
        Command::Inspect {
            what,
            bpffs,
            state_dir,
            json,
        } => run_inspect(what, &bpffs, &state_dir, json),
    }
}

fn run_agent(args: AgentArgs) -> Result<()> {
    init_logging(args.log_format);
    // Everything the agent and its delegates create (state, leases, the socket) is private to
    // root whatever umask it was started with; the state files set their modes explicitly too.
    // SAFETY: umask(2) has no preconditions.
    unsafe { libc::umask(0o077) };
    if let Some(AgentSubcommand::Cleanup(paths)) = args.cleanup {
        agent::cleanup(&paths.bpffs, &paths.state_dir, &paths.socket)?;
        eprintln!(
            "removed genie's pins under {} and its state in {}",
            paths.bpffs.display(),
            paths.state_dir.display()
        );
        return Ok(());
    }
    // `/proc/self/ns/net` must name the agent's namespace, not that of whichever thread reads
    // it later: resolve it once.
    let netns = if args.netns == std::path::Path::new("/proc/self/ns/net") {
        PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
    } else {
        args.netns
    };
    let config = AgentConfig {
        config_dir: args.config,
        netns,
        bpffs: args.paths.bpffs,
        state_dir: args.paths.state_dir,
        socket: args.paths.socket.clone(),
        host_cidrs: args.host_cidrs,
        dns: args.dns,
        cni_config: args
            .cni_conf_dir
            .map(|dir| (dir, args.cni_agent_socket.clone())),
        kube: match args.source {
            SourceKind::File => None,
            SourceKind::Kube => Some(agent::KubeConfig {
                kubeconfig: args.kubeconfig,
                dns_service: match args.cluster_dns_service.split_once('/') {
                    Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                        (namespace.to_owned(), name.to_owned())
                    }
                    _ => anyhow::bail!(
                        "--cluster-dns-service {:?}: expected NAMESPACE/NAME",
                        args.cluster_dns_service
                    ),
                },
                node_name: match args.node_name {
                    Some(name) => name,
                    None => nix::unistd::gethostname()
                        .context("no --node-name and no hostname")?
                        .to_string_lossy()
                        .into_owned(),
                },
            }),
        },
        pacing_cgroup: match args.pacing_cgroup.as_str() {
            "none" => None,
            "auto" => {
                let root = genie_agent::dataplane::cgroup2_root();
                if root.is_none() {
                    tracing::warn!("no cgroup v2 mount: TCP pacing is off");
                }
                root
            }
            path => Some(PathBuf::from(path)),
        },
    };
    // Before any thread starts, so that only the agent's signal thread receives SIGTERM.
    agent::server::block_stop_signals()?;
    let agent = Agent::start(config).context("starting the agent")?;
    agent::server::serve(agent, &args.paths.socket, args.metrics_address)
        .context("serving the agent API")?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

const API_TIMEOUT: Duration = Duration::from_secs(30);

fn run_endpoint(what: EndpointCommand, socket: &std::path::Path) -> Result<()> {
    let request = match what {
        EndpointCommand::Add(a) => Request::AddEndpoint {
            endpoint: EndpointRequest {
                pod: a.pod,
                namespace: a.namespace,
                network: a.network,
                interface: a.interface,
                host_interface: a.host_interface,
                netns: a.netns,
                side: genie_agent::dataplane::AttachSide::Host,
                pod_netns: None,
                ips: a.ips,
                mac: a.mac,
                bandwidth: None,
                container_id: None,
            },
        },
        EndpointCommand::Remove {
            namespace,
            pod,
            interface,
        } => Request::RemoveEndpoint {
            namespace,
            pod,
            interface,
        },
        EndpointCommand::List => Request::Endpoints,
        EndpointCommand::Status => Request::Status,
    };
    let response = api::call(socket, &request, API_TIMEOUT)?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(())
}

fn run_inspect(
    what: InspectCommand,
    bpffs: &std::path::Path,
    state_dir: &std::path::Path,
    json: bool,
) -> Result<()> {
    let require_bpffs = || {
        if bpffs.exists() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{} does not exist: no genie agent has run on this node with that --bpffs \
                 (`ip netns exec` remounts /sys, which hides bpffs: enter a namespace with \
                 `nsenter --net=/run/netns/NAME genie …` instead)",
                bpffs.display()
            ))
        }
    };
    let (value, text) = match what {
        InspectCommand::Endpoints => {
            require_bpffs()?;
            let rows = inspect::endpoints(bpffs, state_dir)?;
            (serde_json::to_value(&rows)?, cli::endpoints_table(&rows))
        }
        InspectCommand::Policy => {
            require_bpffs()?;
            let view = inspect::policy(bpffs)?;
            (serde_json::to_value(&view)?, cli::policy_text(&view))
        }
        InspectCommand::Counters => {
            require_bpffs()?;
            let rows = inspect::counters(bpffs)?;
            (serde_json::to_value(&rows)?, cli::counters_table(&rows))
        }
        InspectCommand::Networks => {
            require_bpffs()?;
            let rows = inspect::networks(bpffs, state_dir)?;
            (serde_json::to_value(&rows)?, cli::networks_table(&rows))
        }
        InspectCommand::Stats => {
            require_bpffs()?;
            let rows = inspect::stats(bpffs)?;
            (serde_json::to_value(&rows)?, cli::stats_table(&rows))
        }
        InspectCommand::Limits => {
            require_bpffs()?;
            let rows = inspect::limits(bpffs, state_dir)?;
            (serde_json::to_value(&rows)?, cli::limits_table(&rows))
        }
        InspectCommand::Conntrack { limit } => {
            require_bpffs()?;
            let rows = inspect::conntrack(bpffs, limit)?;
            (serde_json::to_value(&rows)?, cli::conntrack_table(&rows))
        }
        InspectCommand::Attachments => {
            let rows = Cache::existing(&state_dir.join("cni")).statuses()?;
            (serde_json::to_value(&rows)?, cli::attachments_table(&rows))
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every subcommand and every flag of `genie` explains itself in `--help`.
    #[test]
    fn every_subcommand_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about text"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}: no help text"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
