//! genie's eBPF programs. Entry points only; the work lives in one module per concern.
#![no_std]
#![no_main]

mod host;
mod maps;
mod metrics;
mod pacing;
mod parse;
mod ratelimit;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, sock_ops},
    programs::{SockOpsContext, TcContext},
};
use genie_common::{Direction, Reason, ratelimit::kind};

/// TC ingress of the host side of a pod's veth: everything the pod sends.
#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Egress)
}

/// TC egress of the host side of a pod's veth: everything delivered to the pod.
#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Ingress)
}

/// TCX ingress of a bridge joining host-side pod interfaces: what the bridge passes up to the
/// node's own stack (broadcast and multicast from endpoints without host access stop here).
#[classifier]
pub fn to_host(ctx: TcContext) -> i32 {
    if host::to_host(&ctx) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

/// Does nothing but pass the packet: the baseline `cargo xtask bench datapath` measures next
/// to the real programs, in the same run. Never attached by the agent.
#[classifier]
pub fn bench_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// cgroup `sock_ops` on the node's cgroup v2 root: paces TCP connections of bandwidth-limited
/// endpoints so they meet their bucket instead of being dropped by it (see `pacing`).
#[sock_ops]
pub fn pace_tcp(ctx: SockOpsContext) -> u32 {
    pacing::pace(&ctx);
    // 1: proceed (a cgroup program returning 0 makes some callbacks fail with EPERM).
    1
}

#[inline(always)]
fn handle(ctx: &TcContext, direction: Direction) -> i32 {
    let mut verdict = verdict::decide(ctx, direction);
    let endpoint = &verdict.endpoint;
    // Bandwidth is spent only by packets that pass everything else.
    if !verdict.reason.is_drop()
        && ratelimit::limited(endpoint, kind::BYTES, direction as u8)
        && ratelimit::take(endpoint, kind::BYTES, direction as u8, u64::from(ctx.len())) == 0
    {
        verdict.reason = Reason::RateLimitBandwidth;
    }
    if verdict.reason.is_drop() {
        // Pruned by the verifier unless the agent loaded this instance with debug logs on
        // (AYA_LOG_LEVEL is frozen read-only data).
        aya_log_ebpf::debug!(
            ctx,
            "drop: endpoint {} {} {} ({} bytes)",
            verdict.endpoint.endpoint_id,
            direction.name(),
            verdict.reason.name(),
            ctx.len()
        );
    }
    metrics::count(
        verdict.endpoint.endpoint_id,
        verdict.endpoint.identity,
        direction,
        verdict.reason,
        ctx.len(),
    );
    if verdict.reason.is_drop() {
        TC_ACT_SHOT
    } else {
        // TCX_NEXT, not TCX_PASS: a passed packet continues to the interface's other TCX
        // programs and legacy tc filters (a chained `bandwidth` plugin, another CNI's
        // programs), which TC_ACT_OK would skip.
        TC_ACT_UNSPEC
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the BPF target has no unwinding; the verifier rejects any path that reaches
    // here, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
