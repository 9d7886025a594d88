//! A simulated node: a topology plus the agent's configuration directory, state and socket,
//! and the agent itself — in this process or as the real `genie agent` process.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use genie_agent::{
    agent::{Agent, AgentConfig},
    api::{self, Request, Response},
    endpoint::{Endpoint, EndpointRequest},
};

use crate::topology::{Pod, Topology};

/// The `genie` binary: `$GENIE_BIN`, else next to the test executable's directory
/// (`target/debug/deps/..` → `target/debug/genie`, built by `cargo xtask test`).
pub fn genie_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GENIE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test knows its executable");
    let dir = exe.parent().expect("executable has a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    dir.join("genie")
}

/// Detaches the link pinned at `pin` as an operator's tool would (`bpftool link detach`); the
/// pin stays, its link defunct.
pub fn detach_by_hand(pin: &Path) {
    let out = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool link detach {pin:?}: {out:?}");
}

/// A node with its agent's files. Dropping it stops the agent, removes the files and (through
/// the topology) every pin and namespace.
#[derive(Debug)]
pub struct TestNode {
    dir: PathBuf,
    agent: std::sync::Mutex<Option<Child>>,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    /// The umask the agent starts with (`None`: this process's).
    umask: Option<u32>,
    /// The agent survives this process (`cargo xtask demo --keep`).
    outlives_process: bool,
    // Last: dropped after the agent is gone.
    pub topo: Topology,
}

impl TestNode {
    /// A node over `topo` whose configuration directory holds `objects` as `objects.yaml`.
    pub fn new(topo: Topology, objects: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(topo.base());
        fs::create_dir_all(dir.join("objects"))?;
        let node = Self {
            dir,
            agent: std::sync::Mutex::new(None),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            umask: None,
            outlives_process: false,
            topo,
        };
        node.write_objects(objects)?;
        Ok(node)
    }

    /// Extra `genie agent` arguments (e.g. `--cluster-dns`).
    pub fn with_agent_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// An environment variable for `genie agent` (e.g. `RUST_LOG`).
    /// `genie inspect <what> --json` on this node's pins and state directory (the agent may be
    /// up or down).
    pub fn inspect_json(&self, what: &str) -> serde_json::Value {
        let out = std::process::Command::new(genie_binary())
            .args(["inspect", what, "--json", "--bpffs"])
            .arg(self.bpffs())
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("running genie inspect");
        assert!(
            out.status.success(),
            "inspect {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
    }

    /// The agent reads the objects from `api` (`--source kube`) as node `node_name`.
    pub fn with_kube_source(self, api: &crate::apiserver::ApiServer, node_name: &str) -> Self {
        let kubeconfig = self.dir().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)
            .expect("writing the stand-in's kubeconfig");
        let kubeconfig = kubeconfig.display().to_string();
        self.with_agent_args(&[
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            node_name,
        ])
    }

    pub fn with_agent_env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the agent with this umask (e.g. 0: a careless operator's shell).
    pub fn with_agent_umask(mut self, umask: u32) -> Self {
        self.umask = Some(umask);
        self
    }

    /// The directory holding the node's objects, state, socket and agent log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets the agent outlive this process (otherwise it dies with it, even on SIGKILL).
    pub fn outliving_this_process(mut self) -> Self {
        self.outlives_process = true;
        self
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Child::id)
    }

    /// Leaves the node as it is — agent, files, pins and namespaces — when this value goes.
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Replaces `objects.yaml` (atomically, so the agent never reads half a file).
    pub fn write_objects(&self, objects: &str) -> Result<()> {
        let tmp = self.dir.join("objects.yaml.tmp");
        fs::write(&tmp, objects)?;
        fs::rename(&tmp, self.config_dir().join("objects.yaml"))?;
        Ok(())
    }

    /// Writes another file into the configuration directory.
    pub fn write_config_file(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.config_dir().join(name))?;
        Ok(())
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn bpffs(&self) -> &Path {
        self.topo.bpffs()
    }

    /// The agent configuration for this node.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            config_dir: self.config_dir(),
            netns: self.topo.node().path(),
            bpffs: self.bpffs().to_owned(),
            state_dir: self.state_dir(),
            socket: self.socket(),
            host_cidrs: Vec::new(),
            dns: Vec::new(),
            pacing_cgroup: genie_agent::dataplane::cgroup2_root(),
            kube: None,
            cni_config: None,
        }
    }

    /// Starts an agent inside this process (for packet-level tests).
    pub fn agent_in_process(&self) -> Result<Agent> {
        Ok(Agent::start(self.agent_config())?)
    }

    /// Starts `genie agent` as a process and waits until its API answers and it is ready.
    pub fn spawn_agent(&self) -> Result<()> {
        if self.agent.lock().expect("agent lock").is_some() {
            bail!("the agent already runs");
        }
        let log = fs::File::create(self.dir.join("agent.log"))?;
        let mut cmd = Command::new(genie_binary());
        cmd.arg("agent")
            .arg("--config")
            .arg(self.config_dir())
            .arg("--netns")
            .arg(self.topo.node().path())
            .arg("--bpffs")
            .arg(self.bpffs())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: umask(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        if !self.outlives_process {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the closure only calls prctl, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    // The agent dies with the test process even when that is SIGKILLed.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", genie_binary().display()))?;
        *self.agent.lock().expect("agent lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Response {
                status: Some(s), ..
            }) = self.call(&Request::Status)
                && s.ready
            {
                return Ok(());
            }
            let exited = match self.agent.lock().expect("agent lock").as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                *self.agent.lock().expect("agent lock") = None;
                bail!("the agent exited ({status}):\n{}", self.agent_log());
            }
            if Instant::now() > deadline {
                bail!("the agent did not become ready:\n{}", self.agent_log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// SIGKILLs the agent process and waits for it to be gone.
    pub fn kill_agent(&self) -> Result<()> {
        let child = self.agent.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM to the agent and waits for it to exit; returns its exit status.
    pub fn terminate_agent(&self) -> Result<std::process::ExitStatus> {
        let child = self.agent.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut child = child.context("the agent does not run")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(child.wait()?)
    }

    /// One API call.
    pub fn call(&self, request: &Request) -> Result<Response, api::ClientError> {
        api::call(&self.socket(), request, Duration::from_secs(30))
    }

    /// The registration request for a pod's `eth0` on `network`.
    pub fn endpoint_request(&self, pod: &Pod, namespace: &str, network: &str) -> EndpointRequest {
        EndpointRequest {
            pod: pod.label.clone(),
            namespace: namespace.to_owned(),
            network: network.to_owned(),
            interface: "eth0".to_owned(),
            host_interface: pod.host_ifname.clone(),
            netns: self.topo.node().path(),
            side: genie_agent::dataplane::AttachSide::Host,
            pod_netns: Some(pod.netns.path()),
            ips: std::iter::once(IpAddr::V4(pod.ipv4))
                .chain(pod.ipv6.map(IpAddr::V6))
                .collect(),
            mac: Some(pod.mac_string()),
            bandwidth: None,
            container_id: None,
        }
    }

    /// Registers a pod through the running agent's API.
    pub fn register(&self, pod_label: &str, namespace: &str, network: &str) -> Result<Endpoint> {
        let pod = self.topo.pod(pod_label);
        let response = self.call(&Request::AddEndpoint {
            endpoint: self.endpoint_request(pod, namespace, network),
        })?;
        response.endpoint.context("the agent returned no endpoint")
    }

    /// Waits until `check` holds (the agent applies directory changes asynchronously).
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}:\n{}", self.agent_log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl TestNode {
    /// Waits until the pinned limits map holds exactly `want` buckets (a changed limit has
    /// been applied).
    pub fn wait_for_buckets(&self, what: &str, want: usize) -> Result<()> {
        self.wait_for_limits(what, |buckets| buckets.len() == want)
    }

    /// Waits until the pinned limits map satisfies `check` (a changed limit has been applied,
    /// told apart from the one before by what the buckets say, not only by their number).
    pub fn wait_for_limits(
        &self,
        what: &str,
        check: impl Fn(
            &std::collections::BTreeMap<
                genie_common::ratelimit::BucketKey,
                genie_common::ratelimit::BucketConfig,
            >,
        ) -> bool,
    ) -> Result<()> {
        let bpffs = self.bpffs().to_owned();
        self.wait_for(what, || {
            genie_agent::dataplane::PinnedMaps::open(&bpffs)
                .and_then(|m| m.read_state())
                .is_ok_and(|s| check(&s.buckets))
        })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.kill_agent();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
