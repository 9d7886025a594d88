//! TCP pacing for bandwidth limits (`pace_tcp`, a cgroup `sock_ops` program on the node's
//! cgroup v2 root).
//!
//! The buckets police: a packet over the limit is dropped. A single TCP flow between pods of
//! one node has microseconds of RTT; the first drop loses its whole window and it waits for a
//! retransmission timeout, so it averages about half its limit (README, "Limits"). Shaping
//! needs a queue, and this kernel has no `fq` to honour departure times. So genie makes the
//! kernel's own TCP pacing (`SO_MAX_PACING_RATE`, timer-driven when no `fq` is present) hold
//! local senders just under their bucket: the bucket still enforces, the sender just never
//! hits it.
//!
//! A connection is paced at the lower of the local address's egress bandwidth and the remote
//! address's ingress bandwidth, for addresses of this node's endpoints. It is looked up again
//! when the agent bumps `limits_epoch`, on the connection's next RTT sample, so limit changes
//! reach open connections.

use core::ptr;

use aya_ebpf::{
    bindings::{
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        SO_MAX_PACING_RATE, SOL_SOCKET,
    },
    helpers::generated::{bpf_setsockopt, bpf_sk_storage_get},
    programs::SockOpsContext,
};
use genie_common::{
    Direction,
    maps::IpAddr16,
    ratelimit::{BucketKey, kind, pacing_rate},
};

use crate::maps::{ADDRS, CONFIG, LIMITS, PACED};

/// `AF_INET6`: the family of IPv6 sockets (and of dual-stack sockets speaking IPv4, whose
/// addresses are IPv4-mapped — the form the address map keys by).
const AF_INET6: u32 = 10;

/// What `SO_MAX_PACING_RATE` takes to mean "unpaced".
const UNPACED: u32 = u32::MAX;

/// Per-connection state of a paced (or pace-able) connection.
#[repr(C)]
pub struct Paced {
    /// The `limits_epoch` the rate was looked up at.
    pub epoch: u32,
    /// The pacing rate set, bytes per second ([`UNPACED`]: none).
    pub rate: u32,
}

/// [`wanted_limit`]'s answer for a connection of no endpoint of this node.
const NOT_OURS: u64 = u64::MAX;

/// Entry point of `pace_tcp`.
#[inline(always)]
pub fn pace(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_RTT_CB
    {
        return;
    }
    let epoch = limits_epoch();
    let rtt = op == BPF_SOCK_OPS_RTT_CB;
    let mut state = ptr::null_mut();
    if rtt {
        // Only connections a genie program marked get here; one whose record here is fresh
        // (rate 0) was marked by a previous agent's program and is looked up afresh.
        let Some(s) = storage(ctx) else {
            return;
        };
        // SAFETY: `s` is this socket's storage, valid for the program's run.
        if unsafe { (*s).epoch == epoch && (*s).rate != 0 } {
            return;
        }
        state = s;
    }
    let local = address(ctx, true);
    let remote = address(ctx, false);
    let limit = wanted_limit(&local, &remote);
    if limit == NOT_OURS {
        return;
    }
    if !rtt {
        // Only connections of endpoints get storage and pay for RTT callbacks, where a
        // changed limit is noticed.
        let Some(s) = storage(ctx) else {
            return;
        };
        state = s;
        let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_RTT_CB_FLAG as i32);
    }
    // SAFETY: `ops` is the program's context, readable for its run.
    let mss = unsafe { ptr::read_volatile(&raw const (*ctx.ops).mss_cache) };
    let rate = if limit == 0 {
        UNPACED
    } else {
        pacing_rate(limit, mss, !local.is_v4())
    };
    // SAFETY: `state` is this socket's storage, valid for the program's run.
    unsafe {
        (*state).epoch = epoch;
        if (*state).rate == rate {
            return;
        }
        (*state).rate = rate;
    }
    let mut value = rate;
    // SAFETY: `ops` is a locked full TCP socket in the ESTABLISHED and RTT callbacks (the
    // kernel refuses `bpf_setsockopt` otherwise); the option takes an `int` (net/core/filter.c
    // `sol_socket_sockopt`).
    unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_SOCKET as i32,
            SO_MAX_PACING_RATE as i32,
            (&raw mut value).cast(),
            size_of::<u32>() as i32,
        );
    }
}

/// The bandwidth limit a connection between `local` and `remote` must meet: the local
/// endpoint's egress and the remote endpoint's ingress, the lower of those that exist (0:
/// neither is limited); [`NOT_OURS`] when neither address is one of this node's endpoints.
#[inline(never)]
fn wanted_limit(local: &IpAddr16, remote: &IpAddr16) -> u64 {
    // SAFETY: fields are copied out at once; the agent replaces entries whole.
    let (local_id, local_identity) = match unsafe { ADDRS.get(local) } {
        Some(a) => (a.endpoint_id, a.identity),
        None => (0, 0),
    };
    // SAFETY: as above.
    let (remote_id, remote_identity) = match unsafe { ADDRS.get(remote) } {
        Some(a) => (a.endpoint_id, a.identity),
        None => (0, 0),
    };
    if local_id == 0 && remote_id == 0 {
        return NOT_OURS;
    }
    let egress = if local_id != 0 {
        bandwidth(local_id, local_identity, Direction::Egress as u8)
    } else {
        0
    };
    let ingress = if remote_id != 0 {
        bandwidth(remote_id, remote_identity, Direction::Ingress as u8)
    } else {
        0
    };
    if egress == 0 || (ingress != 0 && ingress < egress) {
        ingress
    } else {
        egress
    }
}

/// The bytes per second of the endpoint's bandwidth bucket for `direction`: its own if it has
/// one, else its network's shared one (the precedence the agent writes buckets by); 0 if none.
#[inline(never)]
fn bandwidth(endpoint_id: u32, identity: u32, direction: u8) -> u64 {
    let own = BucketKey {
        owner: endpoint_id,
        kind: kind::BYTES,
        direction,
        network_scope: 0,
        _pad: 0,
    };
    let shared = BucketKey {
        owner: identity,
        network_scope: 1,
        ..own
    };
    // SAFETY: `rate` is written only by the agent, whole, with the bucket's lock
    // (BPF_F_LOCK); a torn read could only mis-pace one connection until the next epoch.
    unsafe {
        LIMITS
            .get(own)
            .or_else(|| LIMITS.get(shared))
            .map_or(0, |bucket| bucket.config.rate)
    }
}

#[inline(always)]
fn limits_epoch() -> u32 {
    CONFIG.get(0).map_or(0, |config| config.limits_epoch)
}

/// This socket's [`Paced`] record, created (rate 0: never set) if it has none.
#[inline(always)]
fn storage(ctx: &SockOpsContext) -> Option<*mut Paced> {
    // SAFETY: `ops` is the program's context.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    // The verifier wants the NULL check here, not in the helper.
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the context's non-NULL socket; the map pointer is the map definition
    // itself, which is what the loader relocates.
    let state = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&PACED).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
    (!state.is_null()).then_some(state.cast())
}

/// The connection's local or remote address in the address map's form.
#[inline(always)]
fn address(ctx: &SockOpsContext, local: bool) -> IpAddr16 {
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context. The verifier admits only 4-byte loads at fixed
    // offsets of its address fields: every word is read (volatile, so none is widened or
    // merged into a load at a computed offset) and the values are selected afterwards.
    unsafe {
        let (v4, v6) = if local {
            (&raw const (*ops).local_ip4, &raw const (*ops).local_ip6)
        } else {
            (&raw const (*ops).remote_ip4, &raw const (*ops).remote_ip6)
        };
        let v6 = v6.cast::<u32>();
        let family = ptr::read_volatile(&raw const (*ops).family);
        let v4 = ptr::read_volatile(v4);
        let v6 = [
            ptr::read_volatile(v6),
            ptr::read_volatile(v6.add(1)),
            ptr::read_volatile(v6.add(2)),
            ptr::read_volatile(v6.add(3)),
        ];
        if family == AF_INET6 {
            IpAddr16::from_words(v6)
        } else {
            IpAddr16::from_v4(v4.to_ne_bytes())
        }
    }
}
