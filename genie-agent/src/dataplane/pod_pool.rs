//! Program instances for endpoints inside pod namespaces, loaded ahead of need.
//!
//! An in-pod endpoint needs a program instance of its own carrying its key (interface indexes
//! collide across namespaces, and TC programs cannot tell namespaces apart). Loading one runs
//! the verifier over both programs, about 85 ms on the development VM; a background thread
//! keeps a few instances ready so CNI ADD does not wait for it.

use std::{
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
};

use aya::Ebpf;
use genie_common::maps::in_pod_key;
use tracing::warn;

use super::{DataplaneError, FROM_ENDPOINT_PROGRAM, TO_ENDPOINT_PROGRAM, load_instance};

/// Instances kept ready.
const READY: usize = 2;

/// A loaded instance with its endpoint key, not attached yet.
#[derive(Debug)]
pub struct PodInstance {
    pub(super) key: u32,
    pub(super) ebpf: Ebpf,
}

impl PodInstance {
    /// The endpoints-map key this instance looks its endpoint up by.
    pub fn key(&self) -> u32 {
        self.key
    }
}

#[derive(Debug)]
struct Shared {
    bpffs: PathBuf,
    object: Vec<u8>,
    next_slot: AtomicU32,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<PodInstance>,
    stop: bool,
}

/// The pool; dropping it stops the loader thread (after any load in flight, so no pin is
/// created once the owner is gone).
#[derive(Debug)]
pub struct PodPool {
    shared: Arc<Shared>,
    loader: Option<JoinHandle<()>>,
}

impl PodPool {
    /// A pool whose slots start at `first_slot` (past every slot registered endpoints use).
    pub fn new(bpffs: PathBuf, object: Vec<u8>, first_slot: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                bpffs,
                object,
                next_slot: AtomicU32::new(first_slot.max(1)),
                state: Mutex::default(),
                changed: Condvar::new(),
            }),
            loader: None,
        }
    }

    /// Starts loading instances in the background (the agent does; tools and benchmarks that
    /// only read do not).
    pub fn start(&mut self) {
        if self.loader.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        self.loader = thread::Builder::new()
            .name("pod-programs".to_owned())
            .spawn(move || refill(&shared))
            .map_err(|e| warn!(error = %e, "in-pod programs will be loaded on demand"))
            .ok();
    }

    /// Moves the slot counter past `slot` (an endpoint adopted at start uses it).
    pub fn reserve(&self, slot: u32) {
        self.shared.next_slot.fetch_max(slot + 1, Ordering::SeqCst);
    }

    /// A ready instance, or one loaded now if none is.
    pub fn take(&self) -> Result<PodInstance, DataplaneError> {
        let ready = {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let instance = state.ready.pop();
            self.shared.changed.notify_all();
            instance
        };
        match ready {
            Some(instance) => Ok(instance),
            None => load(
                &self.shared,
                self.shared.next_slot.fetch_add(1, Ordering::SeqCst),
            ),
        }
    }

    /// An instance with a given key (re-adopting an endpoint after a restart).
    pub fn with_key(&self, key: u32) -> Result<PodInstance, DataplaneError> {
        let slot = key & !in_pod_key(0);
        self.reserve(slot);
        load(&self.shared, slot)
    }
}

impl Drop for PodPool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop = true;
        self.shared.changed.notify_all();
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
    }
}

fn load(shared: &Shared, slot: u32) -> Result<PodInstance, DataplaneError> {
    let key = in_pod_key(slot);
    let ebpf = load_instance(
        &shared.bpffs,
        &shared.object,
        key,
        // In-pod instances keep their debug logs off: nothing reads their ring buffers.
        0,
        &[FROM_ENDPOINT_PROGRAM, TO_ENDPOINT_PROGRAM],
    )?;
    Ok(PodInstance { key, ebpf })
}

fn refill(shared: &Shared) {
    loop {
        {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while !state.stop && state.ready.len() >= READY {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
        }
        match load(shared, shared.next_slot.fetch_add(1, Ordering::SeqCst)) {
            Ok(instance) => shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ready
                .push(instance),
            Err(e) => {
                warn!(error = %e, "loading an in-pod program instance failed; ADD will load its own");
                return;
            }
        }
    }
}
