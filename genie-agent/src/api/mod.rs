//! The local API on a unix socket: one JSON request per line, one JSON response per line. The
//! CNI handler registers endpoints through it; `genie endpoint` and tests use it too.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cni::spec::{CniError, Env, NetConf},
    endpoint::{Endpoint, EndpointRequest},
    model::Verdict,
};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/genie/agent.sock";

/// What `status` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ready: bool,
    /// Problems of files (file mode) that block attaching pods until fixed.
    pub config_error: Option<String>,
    /// Objects whose current spec is refused or not what is enforced.
    #[serde(default)]
    pub refused: Vec<Verdict>,
    pub endpoints: usize,
    pub policy_epoch: u32,
    pub reconciles: u64,
}

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum Request {
    /// Readiness and counts.
    Status,
    /// Every registered endpoint.
    Endpoints,
    /// Register an endpoint and attach genie's programs to it.
    AddEndpoint { endpoint: EndpointRequest },
    /// Detach and forget an endpoint (succeeds when it does not exist).
    RemoveEndpoint {
        namespace: String,
        pod: String,
        interface: String,
    },
    /// A CNI request as `genie-cni` received it (validated environment and configuration).
    Cni { env: Env, config: NetConf },
}

/// An error answer: a machine-readable code, the field at fault and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `refused` (the request cannot be granted), `not-ready`, `bad-request` or `internal`.
    pub code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{}: {}: {}", self.code, self.field, self.message)
        }
    }
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    /// What `genie-cni` prints on success (ADD's result, VERSION's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_result: Option<serde_json::Value>,
    /// What `genie-cni` prints on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_error: Option<CniError>,
}

impl Response {
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
            endpoint: None,
            endpoints: None,
            cni_result: None,
            cni_error: None,
        }
    }

    pub fn error(code: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(ApiError {
                code: code.to_owned(),
                field: field.to_owned(),
                message: message.into(),
            }),
            ..Self::ok()
        }
    }
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens (not running, or not ready to serve).
    #[error("cannot reach the genie agent at {path}: {source}")]
    Unreachable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the genie agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the genie agent answered something unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    /// The agent refused the request.
    #[error("{0}")]
    Refused(ApiError),
}

/// Sends one request and waits for its answer (up to `timeout`).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let response: Response = serde_json::from_str(&answer)?;
    match (&response.ok, &response.error) {
        (false, Some(e)) => Err(ClientError::Refused(e.clone())),
        _ => Ok(response),
    }
}
