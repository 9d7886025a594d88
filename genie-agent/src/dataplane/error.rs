//! Errors of the dataplane subsystem. aya's errors are large, so they are boxed to keep
//! every `Result` small (clippy::result_large_err).

use std::path::PathBuf;

use aya::{
    EbpfError,
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, links::LinkError},
};

use crate::netns::NetnsError;

/// What can go wrong loading, attaching or reading the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The maps pinned on the node do not have the layout of this genie's object.
    #[error("{message}")]
    Layout { message: String },
    /// rtnetlink could not answer a question about an interface.
    #[error("asking rtnetlink for {what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    /// The bpffs directory could not be created (is bpffs mounted at /sys/fs/bpf?).
    #[error("cannot create bpffs directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// bpffs could not be mounted.
    #[error("cannot mount bpffs at {path}: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    /// The pin directory is not on a BPF filesystem, so pins would not work.
    #[error(
        "{path} is not on a BPF filesystem (mount bpffs there, or use a directory under /sys/fs/bpf)"
    )]
    NotBpffs { path: PathBuf },
    /// The kernel refused the object or one of its maps.
    #[error("loading the eBPF object failed: {source}")]
    Load { source: Box<EbpfError> },
    /// The object lacks a map genie needs (built from a different genie-common?).
    #[error("the eBPF object has no map named {name}")]
    MissingMap { name: &'static str },
    /// The object lacks a program genie needs.
    #[error("the eBPF object has no program named {name}")]
    MissingProgram { name: &'static str },
    /// The verifier or the kernel refused a program.
    #[error("loading program {name} failed: {source}")]
    ProgramLoad {
        name: &'static str,
        source: Box<ProgramError>,
    },
    /// Attaching to an interface failed.
    #[error("attaching {program} to {ifname} in {netns} failed: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        netns: PathBuf,
        source: Box<ProgramError>,
    },
    /// Attaching to a cgroup failed.
    #[error("attaching {program} to cgroup {cgroup} failed: {source}")]
    AttachCgroup {
        program: &'static str,
        cgroup: PathBuf,
        source: Box<ProgramError>,
    },
    /// A cgroup directory could not be opened.
    #[error("cannot open cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The interface does not exist in that namespace.
    #[error("no interface {ifname} in network namespace {netns}: {source}")]
    NoInterface {
        ifname: String,
        netns: PathBuf,
        source: nix::Error,
    },
    /// A pinned link could not be opened or converted.
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    /// A link could not be pinned.
    #[error("cannot pin {path}: {source}")]
    Pin { path: PathBuf, source: PinError },
    /// A pin could not be removed.
    #[error("cannot remove pin {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel refused to detach a link.
    #[error("cannot detach link {path}: {source}")]
    Detach {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    /// A pinned map could not be opened.
    #[error("cannot open pinned map {path}: {source}")]
    OpenPin { path: PathBuf, source: MapError },
    /// Entering a network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl DataplaneError {
    /// The kind of failure, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            DataplaneError::Layout { .. } => "layout",
            DataplaneError::Netlink { .. } => "netlink",
            DataplaneError::PinDir { .. }
            | DataplaneError::MountBpffs { .. }
            | DataplaneError::NotBpffs { .. } => "bpffs",
            DataplaneError::Load { .. }
            | DataplaneError::MissingMap { .. }
            | DataplaneError::MissingProgram { .. }
            | DataplaneError::ProgramLoad { .. } => "load",
            DataplaneError::Attach { .. }
            | DataplaneError::AttachCgroup { .. }
            | DataplaneError::OpenCgroup { .. }
            | DataplaneError::Link { .. }
            | DataplaneError::Detach { .. } => "attach",
            DataplaneError::NoInterface { .. } => "interface",
            DataplaneError::Pin { .. } | DataplaneError::Unpin { .. } => "pin",
            DataplaneError::Map { .. } | DataplaneError::OpenPin { .. } => "map",
            DataplaneError::Netns(_) => "netns",
        }
    }
}
