//! `genie-cni`: reads the runtime's request (environment and stdin), answers VERSION itself and
//! forwards everything else to the node agent. It never decides anything on its own: when the
//! agent cannot be reached ADD fails with code 11 (try again later), so a pod never starts with
//! only some of its networks or without isolation.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{
    api::{self, ClientError, DEFAULT_SOCKET, Request},
    cni::{
        handler::CNI_TIMEOUT,
        spec::{self, CniError, Command, code},
    },
};

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    fn success(value: Option<&Value>) -> Self {
        Self {
            stdout: value.map(|v| format!("{v}\n")).unwrap_or_default(),
            exit_code: 0,
        }
    }

    fn failure(error: &CniError) -> Self {
        Self {
            stdout: format!(
                "{}\n",
                serde_json::to_string(error).unwrap_or_else(|_| error.msg.clone())
            ),
            exit_code: 1,
        }
    }
}

/// Runs one invocation with the environment read through `get` and `stdin`.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    // Errors are reported in the caller's version when its configuration says one.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let env = match spec::parse_env(&get) {
        Ok(env) => env,
        Err(e) => return Outcome::failure(&e.in_version(&version)),
    };
    if env.command == Command::Version {
        return Outcome::success(Some(&spec::version_result(&version)));
    }
    let config = match spec::parse_config(stdin, env.command) {
        Ok(config) => config,
        Err(e) => return Outcome::failure(&e.in_version(&version)),
    };
    let socket = config
        .agent_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let command = env.command;
    let netns = env.netns.clone();
    let request = Request::Cni { env, config };
    match api::call(&socket, &request, CNI_TIMEOUT) {
        Ok(response) => match (response.cni_error, response.cni_result) {
            (Some(error), _) => Outcome::failure(&error),
            (None, result) => Outcome::success(result.as_ref()),
        },
        Err(e) => {
            if command == Command::Add
                && !matches!(e, ClientError::Unreachable { .. })
                && let Some(netns) = &netns
            {
                // The agent died (or hung) in the middle of this ADD: a delegate may have made
                // an interface genie never put its programs on. Down, it carries nothing until
                // the runtime's DEL or the restarted agent's sweep removes it.
                fence_interfaces(netns);
            }
            // STATUS reports "not available"; everything else asks the runtime to retry.
            let error_code = if command == Command::Status {
                code::PLUGIN_NOT_AVAILABLE
            } else {
                code::TRY_AGAIN_LATER
            };
            let msg = match &e {
                ClientError::Unreachable { .. } => "the genie agent is not running on this node",
                _ => "the genie agent did not answer",
            };
            Outcome::failure(&CniError::new(error_code, msg, e.to_string()).in_version(&version))
        }
    }
}

/// Sets every interface but loopback in the network namespace at `netns` down (best effort).
fn fence_interfaces(netns: &Path) {
    let _ = crate::netns::run_in(netns, || {
        let Ok(names) = nix::net::if_::if_nameindex() else {
            return;
        };
        for interface in names.iter().filter(|i| i.name().to_bytes() != b"lo") {
            let _ = crate::dataplane::netlink::set_down(interface.index());
        }
    });
}
