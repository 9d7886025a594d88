//! The eBPF dataplane: load the object, pin its maps under the node's bpffs directory, attach
//! its programs to endpoint interfaces with pinned TCX links, and read the pinned state back.
//!
//! Everything that must outlive the agent is pinned: maps (so a new agent adopts them) and TCX
//! links (a TCX link dies with its last file descriptor, DESIGN.md §5). A restarted agent
//! swaps the program inside an existing link (`bpf_link_update`), so there is no detach
//! window.

pub mod bpffs;
mod counters;
mod ebpf_log;
mod error;
mod layout;
pub mod maps;
pub mod netlink;
mod pacing;
mod pod_pool;
mod sys;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
    sys::SyscallError,
};
pub use counters::{CounterRow, read_counters, sum_counters};
pub use error::DataplaneError;
use genie_common::{
    Direction,
    maps::{ALL_MAPS, ENDPOINT_KEY_GLOBAL, in_pod_key},
};
pub use maps::{ApplyStats, MapContents, PinnedMaps};
pub use pacing::{PACE_TCP_PROGRAM, cgroup2_root, pacing_attached};
pub use pod_pool::PodInstance;
use pod_pool::PodPool;

use crate::{EBPF_OBJECT, netns};

/// The program that sees what an endpoint sends (TCX ingress of the host-side interface).
pub const FROM_ENDPOINT_PROGRAM: &str = "from_endpoint";
/// The program that sees what is delivered to an endpoint (TCX egress of the host side).
pub const TO_ENDPOINT_PROGRAM: &str = "to_endpoint";
/// A program that passes every packet: the benchmark's baseline, never attached.
pub const BENCH_PASS_PROGRAM: &str = "bench_pass";
/// What a bridge of host-side pod interfaces passes up to the node (TCX ingress of the
/// bridge).
pub const TO_HOST_PROGRAM: &str = "to_host";

/// Subdirectory of the bpffs directory holding one pinned TCX link per endpoint and direction.
const LINKS_DIR: &str = "links";

/// An endpoint interface to put under genie's programs.
#[derive(Debug, Clone)]
struct EndpointAttachment {
    /// The network namespace the interface lives in (for veths: the node's, host side).
    netns: PathBuf,
    /// Name of the interface inside `netns`.
    ifname: String,
    /// Agent-assigned endpoint id (names the link pins).
    endpoint_id: u32,
}

/// The loaded dataplane of one node.
#[derive(Debug)]
pub struct Dataplane {
    /// The shared instance: keyed by interface index, attached on host sides.
    ebpf: Ebpf,
    /// Instances for in-pod endpoints.
    pod_pool: PodPool,
    bpffs: PathBuf,
    /// Forwards the shared instance's debug logs while they are on.
    _logs: Option<ebpf_log::EbpfLogs>,
}

/// Where an endpoint's programs run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttachSide {
    /// On the host side of a veth pair, in the node's namespace: the pod sends into TCX
    /// ingress. The pod cannot reach these programs.
    #[default]
    Host,
    /// On the pod's own interface inside its namespace (macvlan and other interfaces without a
    /// host side): the pod sends out of TCX egress. Holds only while the pod lacks
    /// `CAP_NET_ADMIN` in its namespace (README, "Trust model").
    InPod,
}

impl Dataplane {
    /// Loads the embedded object, pinning (or adopting already pinned) maps under `bpffs`.
    pub fn load(bpffs: &Path) -> Result<Self, DataplaneError> {
        Self::load_object(bpffs, EBPF_OBJECT)
    }

    /// Loads `object` (tests pass variants) with maps pinned under `bpffs`.
    pub fn load_object(bpffs: &Path, object: &[u8]) -> Result<Self, DataplaneError> {
        bpffs::ensure_on_bpffs(bpffs)?;
        for dir in [bpffs.to_owned(), bpffs.join(LINKS_DIR)] {
            fs::create_dir_all(&dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        layout::check_pins(bpffs, object)?;
        let log_level = ebpf_log::load_level();
        let mut ebpf = load_instance(
            bpffs,
            object,
            0,
            log_level,
            &[
                FROM_ENDPOINT_PROGRAM,
                TO_ENDPOINT_PROGRAM,
                TO_HOST_PROGRAM,
                BENCH_PASS_PROGRAM,
            ],
        )?;
        let load_err = |source| DataplaneError::ProgramLoad {
            name: PACE_TCP_PROGRAM,
            source: Box::new(source),
        };
        let pace: &mut aya::programs::SockOps = ebpf
            .program_mut(PACE_TCP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram {
                name: PACE_TCP_PROGRAM,
            })?
            .try_into()
            .map_err(load_err)?;
        pace.load().map_err(load_err)?;
        let logs = ebpf_log::forward(&mut ebpf, log_level);
        Ok(Self {
            ebpf,
            pod_pool: PodPool::new(bpffs.to_owned(), object.to_vec(), 1),
            bpffs: bpffs.to_owned(),
            _logs: logs,
        })
    }

    /// Starts loading in-pod program instances ahead of need, with slots past `used_keys`.
    pub fn start_pod_pool(&mut self, used_keys: impl IntoIterator<Item = u32>) {
        for key in used_keys {
            self.pod_pool.reserve(key & !in_pod_key(0));
        }
        self.pod_pool.start();
    }

    /// A program instance for a new in-pod endpoint (its key goes into the endpoint record
    /// before the instance is attached).
    pub fn take_pod_instance(&self) -> Result<PodInstance, DataplaneError> {
        self.pod_pool.take()
    }

    /// A program instance for an in-pod endpoint registered with `key`.
    pub fn pod_instance(&self, key: u32) -> Result<PodInstance, DataplaneError> {
        self.pod_pool.with_key(key)
    }

    /// The bpffs directory this dataplane pins under.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// A loaded program, for `BPF_PROG_TEST_RUN` and inspection.
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DataplaneError> {
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DataplaneError::ProgramLoad {
                name,
                source: Box::new(source),
            })
    }

    /// Attaches both programs to `ifname` inside `netns` with pinned TCX links named after
    /// `endpoint_id`, or swaps the program inside links that are already pinned (an agent
    /// restart): the interface is never without genie's program. Returns the interface index.
    ///
    /// The endpoint record must be in the maps first (see [`PinnedMaps::apply`]); until it is,
    /// the programs drop everything on the interface. An in-pod endpoint passes its own program
    /// instance ([`Dataplane::take_pod_instance`]); host-side ones share the dataplane's.
    pub fn attach(
        &mut self,
        netns: &Path,
        ifname: &str,
        endpoint_id: u32,
        pod_instance: Option<PodInstance>,
    ) -> Result<u32, DataplaneError> {
        let ifindex = interface_index(netns, ifname)?;
        let ep = EndpointAttachment {
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            endpoint_id,
        };
        let mut pod_instance = pod_instance;
        let (ebpf, side) = match &mut pod_instance {
            Some(instance) => (&mut instance.ebpf, AttachSide::InPod),
            None => (&mut self.ebpf, AttachSide::Host),
        };
        for direction in Direction::ALL {
            attach_direction(ebpf, &self.bpffs, &ep, direction, side)?;
        }
        Ok(ifindex)
    }

    /// The interface index an endpoint's pinned link of `direction` is attached to, or `None`
    /// when the link is gone or was detached (CNI CHECK).
    pub fn attached_ifindex(
        &self,
        endpoint_id: u32,
        direction: Direction,
    ) -> Result<Option<u32>, DataplaneError> {
        let path = link_pin_path(&self.bpffs, endpoint_id, direction);
        pinned_link_ifindex(&path).map_err(|source| DataplaneError::Detach { path, source })
    }

    /// Detaches both programs of an endpoint now and removes their pins. Idempotent.
    pub fn detach(&mut self, endpoint_id: u32) -> Result<(), DataplaneError> {
        for direction in Direction::ALL {
            detach_pinned_link(&link_pin_path(&self.bpffs, endpoint_id, direction))?;
        }
        Ok(())
    }

    /// Puts `to_host` on bridge `ifindex` in `netns` (TCX ingress: what the bridge passes up to
    /// the node), with a pinned link; swaps the program on a restart. Idempotent.
    pub fn attach_bridge(&mut self, netns: &Path, ifindex: u32) -> Result<(), DataplaneError> {
        let ifname = netns::run_in(netns, || {
            nix::net::if_::if_indextoname(ifindex).map(|n| n.to_string_lossy().into_owned())
        })?
        .map_err(|source| DataplaneError::NoInterface {
            ifname: format!("#{ifindex}"),
            netns: netns.to_owned(),
            source,
        })?;
        let pin = bridge_pin_path(&self.bpffs, ifindex);
        attach_pinned(
            &mut self.ebpf,
            &pin,
            TO_HOST_PROGRAM,
            netns,
            &ifname,
            TcAttachType::Ingress,
        )
    }

    /// The bridges `to_host` is pinned on whose link is still attached, by interface index.
    pub fn attached_bridges(&self) -> Vec<u32> {
        self.bridge_pins()
            .into_iter()
            .filter(|(_, pin)| link_is_live(pin))
            .map(|(ifindex, _)| ifindex)
            .collect()
    }

    /// Removes the `to_host` links of bridges that are gone, or that `keep` does not list.
    pub fn release_bridges(&mut self, keep: &[u32]) -> Result<(), DataplaneError> {
        for (ifindex, pin) in self.bridge_pins() {
            if !keep.contains(&ifindex) || !link_is_live(&pin) {
                detach_pinned_link(&pin)?;
            }
        }
        Ok(())
    }

    fn bridge_pins(&self) -> Vec<(u32, PathBuf)> {
        fs::read_dir(self.bpffs.join(LINKS_DIR))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let ifindex = name.strip_prefix("bridge")?.parse().ok()?;
                Some((ifindex, e.path()))
            })
            .collect()
    }

    /// The endpoint ids that have pinned links.
    pub fn attached_endpoint_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = fs::read_dir(self.bpffs.join(LINKS_DIR))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("ep")?.split('_').next()?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn attach_direction(
    ebpf: &mut Ebpf,
    bpffs: &Path,
    ep: &EndpointAttachment,
    direction: Direction,
    side: AttachSide,
) -> Result<(), DataplaneError> {
    // What the pod sends enters the host side of a veth but leaves the pod's own interface.
    let (program_name, attach_type) = match (direction, side) {
        (Direction::Egress, AttachSide::Host) => (FROM_ENDPOINT_PROGRAM, TcAttachType::Ingress),
        (Direction::Ingress, AttachSide::Host) => (TO_ENDPOINT_PROGRAM, TcAttachType::Egress),
        (Direction::Egress, AttachSide::InPod) => (FROM_ENDPOINT_PROGRAM, TcAttachType::Egress),
        (Direction::Ingress, AttachSide::InPod) => (TO_ENDPOINT_PROGRAM, TcAttachType::Ingress),
    };
    let pin = link_pin_path(bpffs, ep.endpoint_id, direction);
    attach_pinned(ebpf, &pin, program_name, &ep.netns, &ep.ifname, attach_type)
}

/// Attaches `program_name` to `ifname` in `netns` at `attach_type` through a TCX link pinned
/// at `pin`, or swaps the program inside the link already pinned there (no gap).
fn attach_pinned(
    ebpf: &mut Ebpf,
    pin: &Path,
    program_name: &'static str,
    netns: &Path,
    ifname: &str,
    attach_type: TcAttachType,
) -> Result<(), DataplaneError> {
    let pin = pin.to_owned();
    let program = classifier_mut(ebpf, program_name)?;
    let attach_err = |source| DataplaneError::Attach {
        program: program_name,
        ifname: ifname.to_owned(),
        netns: netns.to_owned(),
        source: Box::new(source),
    };
    let existing = match PinnedLink::from_pin(&pin) {
        Ok(link) if link_is_live(&pin) => Some(link),
        Ok(_) => {
            // Detached by hand, or its interface was replaced: nothing to swap into.
            remove_pin(&pin)?;
            None
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            None
        }
        Err(source) => return Err(DataplaneError::Link { path: pin, source }),
    };
    let link_id = match existing {
        Some(existing) => {
            // Swap the program inside the existing link: the interface is never without one.
            let link: SchedClassifierLink =
                FdLink::from(existing)
                    .try_into()
                    .map_err(|source| DataplaneError::Link {
                        path: pin.clone(),
                        source,
                    })?;
            program.attach_to_link(link).map_err(attach_err)?
        }
        None => netns::run_in(netns, || {
            program.attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
        })?
        .map_err(attach_err)?,
    };
    let link = program.take_link(link_id).map_err(attach_err)?;
    let link: FdLink = link.try_into().map_err(|source| DataplaneError::Link {
        path: pin.clone(),
        source,
    })?;
    if !pin.exists() {
        link.pin(&pin).map_err(|source| DataplaneError::Pin {
            path: pin.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Loads one instance of `object` with its maps pinned under `bpffs` (adopting existing pins),
/// `fixed_key` as its endpoint key (0: by interface index) and `log_level` frozen into its
/// debug-log switch, and loads `programs` into the kernel.
fn load_instance(
    bpffs: &Path,
    object: &[u8],
    fixed_key: u32,
    log_level: u8,
    programs: &[&'static str],
) -> Result<Ebpf, DataplaneError> {
    let pins: Vec<(&str, PathBuf)> = ALL_MAPS
        .iter()
        .map(|name| (*name, bpffs.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    loader.override_global(ENDPOINT_KEY_GLOBAL, &fixed_key, true);
    loader.override_global(ebpf_log::LEVEL_GLOBAL, &log_level, true);
    let mut ebpf = loader.load(object).map_err(|source| DataplaneError::Load {
        source: Box::new(source),
    })?;
    for name in ALL_MAPS {
        if ebpf.map(name).is_none() {
            return Err(DataplaneError::MissingMap { name });
        }
    }
    for name in programs {
        classifier_mut(&mut ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::ProgramLoad {
                name,
                source: Box::new(source),
            })?;
    }
    Ok(ebpf)
}

fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DataplaneError::ProgramLoad {
            name,
            source: Box::new(source),
        })
}

/// The interface the TCX link pinned at `pin` is attached to: `None` when there is no such pin
/// or its link was detached (by hand, or with its interface). Debian's bpftool (7.1) cannot
/// tell: it predates TCX link information.
pub fn pinned_link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    let fd = match sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(Some(sys::tcx_link_ifindex(&fd)?).filter(|ifindex| *ifindex != 0))
}

/// Whether the link pinned at `pin` is still attached to an interface.
fn link_is_live(pin: &Path) -> bool {
    pinned_link_ifindex(pin).is_ok_and(|ifindex| ifindex.is_some())
}

/// Where the `to_host` link of a bridge is pinned.
fn bridge_pin_path(bpffs: &Path, ifindex: u32) -> PathBuf {
    bpffs.join(LINKS_DIR).join(format!("bridge{ifindex}"))
}

/// Where the TCX link of one endpoint and direction is pinned.
pub fn link_pin_path(bpffs: &Path, endpoint_id: u32, direction: Direction) -> PathBuf {
    bpffs
        .join(LINKS_DIR)
        .join(format!("ep{endpoint_id}_{}", direction.name()))
}

/// The interface index of `ifname` inside `netns`.
pub fn interface_index(netns: &Path, ifname: &str) -> Result<u32, DataplaneError> {
    netns::run_in(netns, || nix::net::if_::if_nametoindex(ifname))?.map_err(|source| {
        DataplaneError::NoInterface {
            ifname: ifname.to_owned(),
            netns: netns.to_owned(),
            source,
        }
    })
}

/// Detaches the link pinned at `path` now, then removes the pin. Only unpinning would leave
/// the link attached until the kernel's deferred release runs, so traffic could still meet
/// the program after the endpoint record is gone.
fn detach_pinned_link(path: &Path) -> Result<(), DataplaneError> {
    let link = match sys::obj_get(path) {
        Ok(fd) => fd,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DataplaneError::Detach {
                path: path.to_owned(),
                source,
            });
        }
    };
    sys::link_detach(&link).map_err(|source| DataplaneError::Detach {
        path: path.to_owned(),
        source,
    })?;
    remove_pin(path)
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes everything genie pinned under `bpffs`: detaches every pinned link first (so no
/// program lingers until the kernel's deferred release), then unpins the maps. Idempotent.
pub fn cleanup(bpffs: &Path) -> Result<(), DataplaneError> {
    let links = bpffs.join(LINKS_DIR);
    for entry in fs::read_dir(&links).into_iter().flatten().flatten() {
        detach_pinned_link(&entry.path())?;
    }
    match fs::remove_dir_all(bpffs) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin {
            path: bpffs.to_owned(),
            source,
        }),
    }
}
