//! The CNI protocol (spec 1.0.0 / 1.1.0, REFERENCE.md): commands, environment, configuration,
//! errors with the spec's codes, and version negotiation.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Versions `genie-cni` speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes (CNI spec §"Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
    // genie's own codes (the spec leaves 100 and up to plugins); README, "CNI error codes".
    /// A pod's network annotation cannot be read.
    pub const BAD_ANNOTATION: u32 = 100;
    /// The pod asks for a logical network that does not exist.
    pub const UNKNOWN_NETWORK: u32 = 101;
    /// The pod asks for a logical network of another tenant.
    pub const FOREIGN_NETWORK: u32 = 102;
    /// The tenant owning the pod's namespace has reached its endpoint quota.
    pub const QUOTA_REACHED: u32 = 103;
    /// The pod's annotation names one interface twice.
    pub const REPEATED_INTERFACE: u32 = 104;
    /// ADD for a container that already has attachments (DEL it first).
    pub const ALREADY_ATTACHED: u32 = 105;
    /// An attachment asks for what its network's plugins cannot honour (NPWG `ips` or `mac`
    /// without a plugin declaring that capability).
    pub const UNSUPPORTED_REQUEST: u32 = 106;
    /// A delegate plugin failed without a CNI error of its own.
    pub const DELEGATE_FAILED: u32 = 110;
    /// genie could not put an interface under its programs.
    pub const ATTACH_FAILED: u32 = 111;
    /// CHECK found an attachment that is not as ADD left it.
    pub const CHECK_FAILED: u32 = 112;
}

/// A CNI error, printed as JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// Debian's plugins omit it in some errors.
    #[serde(default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The same error, reported in the caller's version.
    pub fn in_version(mut self, version: &str) -> Self {
        if SUPPORTED_VERSIONS.contains(&version) {
            self.cni_version = version.to_owned();
        }
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }

    /// The first configuration version that knows the command.
    pub fn since(self) -> &'static str {
        match self {
            Self::Check => "0.4.0",
            Self::Status | Self::Gc => "1.1.0",
            _ => "0.3.1",
        }
    }
}

/// The `CNI_*` environment of one invocation, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as key/value pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// The pod's namespace and name from `CNI_ARGS`.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.as_str(),
            self.args.get("K8S_POD_NAME")?.as_str(),
        ))
    }
}

/// Whether a container id or network name is valid (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
pub fn valid_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub use crate::model::annotations::validate_ifname;

/// Reads and validates the environment through `get`; errors have code 4 and name the variable.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let bad = |var: &str, msg: String| CniError::new(code::INVALID_ENVIRONMENT, msg, var);
    let command_text = get("CNI_COMMAND")
        .ok_or_else(|| bad("CNI_COMMAND", "CNI_COMMAND is not set".to_owned()))?;
    let command = Command::parse(&command_text).ok_or_else(|| {
        bad(
            "CNI_COMMAND",
            format!("CNI_COMMAND={command_text:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
        )
    })?;
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = get("CNI_CONTAINERID").filter(|s| !s.is_empty());
    let ifname = get("CNI_IFNAME").filter(|s| !s.is_empty());
    let netns = get("CNI_NETNS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if per_container {
        match &container_id {
            None => {
                return Err(bad(
                    "CNI_CONTAINERID",
                    "CNI_CONTAINERID is not set".to_owned(),
                ));
            }
            Some(id) if !valid_identifier(id) => {
                return Err(bad(
                    "CNI_CONTAINERID",
                    format!("CNI_CONTAINERID={id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
                ));
            }
            Some(_) => {}
        }
        match &ifname {
            None => return Err(bad("CNI_IFNAME", "CNI_IFNAME is not set".to_owned())),
            Some(name) => {
                validate_ifname(name).map_err(|m| bad("CNI_IFNAME", format!("CNI_IFNAME {m}")))?
            }
        }
        if command != Command::Del && netns.is_none() {
            return Err(bad("CNI_NETNS", "CNI_NETNS is not set".to_owned()));
        }
    }
    let mut args = BTreeMap::new();
    if let Some(text) = get("CNI_ARGS") {
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                bad(
                    "CNI_ARGS",
                    format!("CNI_ARGS item {pair:?} is not KEY=VALUE"),
                )
            })?;
            args.insert(k.to_owned(), v.to_owned());
        }
    }
    let path: Vec<PathBuf> = get("CNI_PATH")
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if per_container && command != Command::Del && path.is_empty() {
        return Err(bad(
            "CNI_PATH",
            "CNI_PATH is not set (genie needs it to find the delegate plugins)".to_owned(),
        ));
    }
    Ok(Env {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// The `genie-cni` network configuration (the file in `/etc/cni/net.d`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's API socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// The delegate for the cluster default network (`eth0`).
    #[serde(default)]
    pub default_network: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// GC: the attachments that must stay (spec 1.1.0).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// GC: the key runtimes used before 1.1.0 settled the name.
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<ValidAttachment>>,
    /// Everything else the runtime passed (`prevResult`, capabilities…).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Decodes and validates the configuration on stdin: code 6 when it is not the expected JSON,
/// 1 for an unsupported version, 7 for other invalid settings.
pub fn parse_config(bytes: &[u8], command: Command) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if version_less(&conf.cni_version, command.since()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{command:?} needs cniVersion {} or later, the configuration says {}",
                command.since(),
                conf.cni_version
            ),
            "",
        )
        .in_version(&conf.cni_version));
    }
    if !valid_identifier(&conf.name) {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("network name {:?} is not valid", conf.name),
            "name",
        )
        .in_version(&conf.cni_version));
    }
    Ok(conf)
}

/// Compares dotted versions numerically.
pub fn version_less(a: &str, b: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    parse(a) < parse(b)
}

/// The newest version both sides support, given what a delegate's VERSION reported.
pub fn negotiate(ours: &str, theirs: &[String]) -> Option<String> {
    theirs
        .iter()
        .filter(|v| !version_less(ours, v))
        .max_by(|a, b| {
            if version_less(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        })
        .cloned()
}

/// The VERSION answer.
pub fn version_result(cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": if SUPPORTED_VERSIONS.contains(&cni_version) { cni_version } else { SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1] },
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_env(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=red;K8S_POD_NAME=web-1",
        ),
    ];

    #[test]
    fn a_runtime_environment_parses() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod(), Some(("red", "web-1")));
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn bad_environments_name_the_variable_with_code_4() {
        let with = |k: &str, v: &str| {
            let mut vars: Vec<(&str, &str)> =
                ADD.iter().copied().filter(|(n, _)| *n != k).collect();
            if !v.is_empty() {
                vars.push((k, v));
            }
            env(&vars).unwrap_err()
        };
        for (var, value) in [
            ("CNI_COMMAND", "FROB"),
            ("CNI_COMMAND", ""),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "much-too-long-name"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", ""),
            ("CNI_ARGS", "novalue"),
        ] {
            let e = with(var, value);
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{var}={value}: {e}");
            assert_eq!(e.details, var, "{var}={value}: {e}");
        }
        // DEL needs neither a namespace nor a path; VERSION needs nothing else.
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn configurations_are_decoded_and_versions_checked() {
        let conf = br#"{"cniVersion": "1.0.0", "name": "genie", "type": "genie-cni", "defaultNetwork": {"type": "bridge"}}"#;
        let c = parse_config(conf, Command::Add).unwrap();
        assert_eq!(c.plugin_type, "genie-cni");
        assert_eq!(
            parse_config(b"{not json", Command::Add).unwrap_err().code,
            code::DECODE_FAILURE
        );
        let old = br#"{"cniVersion": "0.2.0", "name": "genie", "type": "genie-cni"}"#;
        assert_eq!(
            parse_config(old, Command::Add).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let check_on_031 = br#"{"cniVersion": "0.3.1", "name": "genie", "type": "genie-cni"}"#;
        assert_eq!(
            parse_config(check_on_031, Command::Check).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let bad_name = br#"{"cniVersion": "1.1.0", "name": "-x", "type": "genie-cni"}"#;
        assert_eq!(
            parse_config(bad_name, Command::Add).unwrap_err().code,
            code::INVALID_NETWORK_CONFIG
        );
    }

    #[test]
    fn versions_negotiate_down_for_older_delegates() {
        let debian: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(negotiate("1.1.0", &debian).as_deref(), Some("1.0.0"));
        assert_eq!(negotiate("0.4.0", &debian).as_deref(), Some("0.4.0"));
        assert_eq!(negotiate("0.3.1", &["1.0.0".to_owned()]), None);
        assert!(version_less("0.4.0", "1.0.0") && !version_less("1.1.0", "1.0.0"));
    }

    #[test]
    fn errors_serialise_as_the_spec_says() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent not ready", "").in_version("1.0.0");
        let json: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent not ready"})
        );
    }
}
