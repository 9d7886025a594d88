//! The eBPF programs' debug logs (aya-log), forwarded into the agent's `tracing` output under
//! the target `genie_ebpf`.
//!
//! The log statements are in the object, behind aya-log's `AYA_LOG_LEVEL` read-only global.
//! The agent freezes it at load time: 0 unless `genie_ebpf` is enabled at debug level (e.g.
//! `RUST_LOG=info,genie_ebpf=debug`), so the verifier sees the constant and prunes every log
//! statement from the loaded program — the hot path carries none of them.

use std::{
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// The global aya-log's eBPF side reads the enabled level from.
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// The level to freeze into a program instance: aya-log's `Debug` when the agent logs
/// `genie_ebpf` at debug level, else 0 (every statement off).
pub fn load_level() -> u8 {
    if tracing::enabled!(target: "genie_ebpf", tracing::Level::DEBUG) {
        DEBUG
    } else {
        0
    }
}

/// aya-log's `Level::Debug` (Error 1, Warn 2, Info 3, Debug 4, Trace 5).
const DEBUG: u8 = 4;

/// A thread reading an instance's log ring buffer; stops when dropped.
#[derive(Debug)]
pub struct EbpfLogs {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for EbpfLogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards `ebpf`'s logs when they are on; `None` when they are off or the object has none.
pub fn forward(ebpf: &mut Ebpf, level: u8) -> Option<EbpfLogs> {
    if level == 0 {
        return None;
    }
    let mut logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => logger,
        Err(err) => {
            tracing::warn!(error = %err, "eBPF debug logs unavailable");
            return None;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("ebpf-logs".to_owned())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let mut fds = [nix::poll::PollFd::new(
                    logger.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                // A bounded wait, so a stop request is seen within 200 ms.
                let _ = nix::poll::poll(&mut fds, 200u16);
                logger.flush();
            }
        })
        .ok()?;
    Some(EbpfLogs {
        stop,
        thread: Some(thread),
    })
}

/// aya-log speaks the `log` facade; the agent logs with `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "genie_ebpf", "{}", record.args());
    }

    fn flush(&self) {}
}
