//! Serving the agent: the local API socket and the configuration-directory watcher.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use nix::sys::signal::{SigSet, Signal};
use tracing::{debug, warn};

use super::{Agent, AgentError};
use crate::source::kube::KubeSource;
use crate::{
    api::{Request, Response},
    cni::handler::CniHandler,
};

/// How often the configuration directory is checked for changes.
pub const CONFIG_POLL: Duration = Duration::from_millis(250);
/// How often the agent resyncs without a change: re-reads node addresses and the maps
/// (repairs), drops counters of removed endpoints.
pub const RESYNC: Duration = Duration::from_secs(10);

/// How often cached attachments are checked for containers whose network namespace is gone.
pub const SWEEP: Duration = Duration::from_secs(30);

/// A cheap fingerprint of a directory's `*.yaml` files: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// Serves the API on `socket` and watches the configuration directory until the process
/// ends. The agent's enforcement does not depend on this process: it is pinned.
pub fn serve(
    agent: Agent,
    socket: &Path,
    metrics_address: Option<std::net::SocketAddr>,
) -> Result<(), AgentError> {
    let config_dir = agent.config_dir().to_owned();
    let cni_conf_dir = agent
        .config()
        .cni_config
        .as_ref()
        .map(|(dir, _)| dir.clone());
    let cni = Arc::new(
        CniHandler::new(&agent.config().state_dir, &agent.config().netns).map_err(|e| {
            AgentError::Registry {
                path: agent.config().state_dir.clone(),
                source: std::io::Error::other(e),
            }
        })?,
    );
    // Clones share the metrics: counted without taking the agent's lock.
    let metrics = agent.metrics().clone();
    let agent = Arc::new(Mutex::new(agent));
    if let Some(address) = metrics_address {
        super::http::spawn(address, Arc::clone(&agent)).map_err(|source| AgentError::Runtime {
            what: format!("serving metrics on {address}"),
            source,
        })?;
    }

    {
        let agent = Arc::clone(&agent);
        spawn("config-watch", move || watch(&agent, &config_dir))?;
    }
    if let Some(conf_dir) = cni_conf_dir {
        let agent = Arc::clone(&agent);
        spawn("cni-config-watch", move || {
            watch_cni_config(&agent, &conf_dir)
        })?;
    }

    // Before any request: what a dead agent or a lost DEL left behind goes first.
    let swept = cni.sweep(&*agent);
    if !swept.is_empty() {
        tracing::info!(containers = ?swept, "tore down stale attachments");
    }
    {
        let agent = Arc::clone(&agent);
        let cni = Arc::clone(&cni);
        spawn("cni-sweep", move || {
            loop {
                thread::sleep(SWEEP);
                cni.sweep(&*agent);
            }
        })?;
    }
    let listener = bind_private(socket)?;
    tracing::info!(socket = %socket.display(), "API listening");
    let in_flight = Arc::new(AtomicUsize::new(0));
    {
        let socket = socket.to_owned();
        let in_flight = Arc::clone(&in_flight);
        spawn("signals", move || stop_on_signal(&socket, &in_flight))?;
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let agent = Arc::clone(&agent);
                let metrics = metrics.clone();
                let cni = Arc::clone(&cni);
                let in_flight = Arc::clone(&in_flight);
                let _ = thread::Builder::new()
                    .name("api".to_owned())
                    .spawn(move || handle_connection(&agent, &metrics, &cni, &in_flight, stream));
            }
            Err(e) => warn!(error = %e, "accepting an API connection failed"),
        }
    }
    Ok(())
}

/// What changed in the configuration source: the directory's fingerprint, or the Kubernetes
/// source's generation (which also moves when a watch completes its first list). Read without
/// the agent's lock, so polling never holds up CNI requests.
#[derive(Debug, PartialEq)]
enum SourceState {
    Files(Vec<(PathBuf, u64, SystemTime)>),
    Kube(u64),
}

fn source_state(kube: Option<&AtomicU64>, dir: &Path) -> SourceState {
    match kube {
        Some(generation) => SourceState::Kube(generation.load(Ordering::Relaxed)),
        None => SourceState::Files(fingerprint(dir)),
    }
}

/// Follows the node's CNI configuration directory: genie's file is rewritten within a poll of
/// the primary changing.
fn watch_cni_config(agent: &Mutex<Agent>, conf_dir: &Path) {
    let mut last = None;
    loop {
        let now = fingerprint(conf_dir);
        if last.as_ref() != Some(&now) {
            agent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keep_cni_config();
            // Read again: genie's own write is part of the directory's new state.
            last = Some(fingerprint(conf_dir));
        }
        thread::sleep(CONFIG_POLL);
    }
}

fn watch(agent: &Mutex<Agent>, dir: &Path) {
    let kube = agent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .kube()
        .map(KubeSource::generation_handle);
    let mut last = source_state(kube.as_deref(), dir);
    let mut last_resync = Instant::now();
    loop {
        thread::sleep(CONFIG_POLL);
        let now = source_state(kube.as_deref(), dir);
        let changed = now != last;
        if changed || last_resync.elapsed() >= RESYNC {
            let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
            if changed {
                debug!("configuration directory changed");
                agent.reload_config();
            } else if let Err(e) = agent.resync() {
                debug!(error = %e, "periodic resync skipped");
            }
            last = now;
            last_resync = Instant::now();
        }
    }
}

/// Starts a named background thread of the agent.
fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), AgentError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(|_| ())
        .map_err(|source| AgentError::Runtime {
            what: format!("starting the {name} thread"),
            source,
        })
}

/// A CNI request in progress, from its decoding until its answer is written: a stopping agent
/// waits for these (an ADD whose answer were cut off would make genie-cni fence the pod).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signals that stop the agent. [`block_stop_signals`] blocks them in every thread, so
/// only the thread waiting in [`stop_on_signal`] receives them.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards: call
/// it first thing, before any thread exists.
pub fn block_stop_signals() -> Result<(), AgentError> {
    stop_signals()
        .thread_block()
        .map_err(|errno| AgentError::Runtime {
            what: "blocking SIGTERM and SIGINT".to_owned(),
            source: std::io::Error::from(errno),
        })
}

/// How long a stopping agent waits for CNI requests in progress to finish.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Waits for SIGTERM or SIGINT, then stops cleanly: the socket goes first (new requests get
/// "agent not running", code 11, from genie-cni), requests in progress may finish, and the
/// process exits. Enforcement is pinned and stays as it is.
fn stop_on_signal(socket: &Path, in_flight: &AtomicUsize) {
    let Ok(signal) = stop_signals().wait() else {
        return;
    };
    tracing::info!(signal = %signal, "stopping: the API socket is removed, enforcement stays pinned");
    let _ = fs::remove_file(socket);
    let deadline = Instant::now() + STOP_GRACE;
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    std::process::exit(0);
}

/// Binds the API socket so that nobody but root can connect at any moment: under the private
/// umask of `genie agent` the socket is created `0700` and then set to `0600`; its directory is
/// created private when missing.
fn bind_private(socket: &Path) -> Result<UnixListener, AgentError> {
    let registry_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AgentError::Registry { path, source }
    };
    if let Some(dir) = socket.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        crate::statefile::private_dir(dir).map_err(registry_err(dir))?;
    }
    // A socket file left by a killed agent refuses connections; replace it.
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(registry_err(socket))?;
    // Registering endpoints changes isolation: root only.
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(registry_err(socket))?;
    Ok(listener)
}

fn handle_connection(
    agent: &Mutex<Agent>,
    metrics: &crate::metrics::AgentMetrics,
    cni: &CniHandler,
    in_flight: &AtomicUsize,
    stream: UnixStream,
) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let mut in_progress = None;
        let response = match serde_json::from_str::<Request>(&line) {
            // CNI requests lock the agent only for short steps: delegates run unlocked.
            Ok(Request::Cni { env, config }) => {
                in_progress = Some(InFlight::enter(in_flight));
                let outcome = cni.handle(agent, &env, &config);
                let command = format!("{:?}", env.command).to_uppercase();
                match outcome {
                    Ok(result) => {
                        metrics.cni_request(&command, "ok");
                        Response {
                            cni_result: result,
                            ..Response::ok()
                        }
                    }
                    Err(error) => {
                        metrics.cni_request(&command, &error.code.to_string());
                        Response {
                            cni_error: Some(error),
                            ..Response::ok()
                        }
                    }
                }
            }
            Ok(request) => {
                let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
                respond(&mut agent, request)
            }
            Err(e) => Response::error("bad-request", "", format!("cannot decode the request: {e}")),
        };
        let Ok(mut bytes) = serde_json::to_vec(&response) else {
            return;
        };
        bytes.push(b'\n');
        let written = writer.write_all(&bytes);
        drop(in_progress);
        if written.is_err() {
            return;
        }
    }
}

fn respond(agent: &mut Agent, request: Request) -> Response {
    match request {
        Request::Status => Response {
            status: Some(agent.status()),
            ..Response::ok()
        },
        Request::Endpoints => Response {
            endpoints: Some(agent.endpoints()),
            ..Response::ok()
        },
        Request::AddEndpoint { endpoint } => match agent.add_endpoint(endpoint) {
            Ok(endpoint) => Response {
                endpoint: Some(endpoint),
                ..Response::ok()
            },
            Err(e) => error_response(e),
        },
        Request::RemoveEndpoint {
            namespace,
            pod,
            interface,
        } => match agent.remove_endpoint(&namespace, &pod, &interface) {
            Ok(endpoint) => Response {
                endpoint,
                ..Response::ok()
            },
            Err(e) => error_response(e),
        },
        Request::Cni { .. } => {
            Response::error("bad-request", "op", "CNI requests are not served here")
        }
    }
}

fn error_response(e: AgentError) -> Response {
    match e {
        AgentError::Refused { field, message } => Response::error("refused", &field, message),
        quota @ AgentError::QuotaReached { .. } => {
            Response::error("refused", "namespace", quota.to_string())
        }
        AgentError::NotReady(m) => Response::error("not-ready", "", m),
        other => Response::error("internal", "", other.to_string()),
    }
}
