//! Rate-limit buckets (bandwidth and QPS): the GCRA step from `genie_common::ratelimit` under
//! the bucket's spin lock, so every CPU hitting a shared (scope `Network`) bucket sees one
//! consistent state.

use aya_ebpf::{
    bindings::bpf_spin_lock,
    helpers::generated::{bpf_ktime_get_ns, bpf_spin_lock as lock, bpf_spin_unlock as unlock},
};
use genie_common::{
    EndpointInfo,
    ratelimit::{BucketConfig, BucketKey, admit, limit_flags},
};

use crate::maps::LIMITS;

/// Value of `genie_limits`: `genie_common::maps::BucketValue` with the kernel's lock type (the
/// verifier recognises the lock by its BTF name).
#[repr(C)]
pub struct Bucket {
    pub lock: bpf_spin_lock,
    pub _pad: u32,
    pub tat: u64,
    pub config: BucketConfig,
}
const _: () = assert!(size_of::<Bucket>() == size_of::<genie_common::maps::BucketValue>());

/// Whether the endpoint has a (kind, direction) bucket.
#[inline(always)]
pub fn limited(endpoint: &EndpointInfo, kind: u8, direction: u8) -> bool {
    endpoint.limits & limit_flags::of(kind, direction) != 0
}

/// Takes `units` from the endpoint's (kind, direction) bucket. Returns 1 when they pass; a
/// bucket the agent has not written yet passes everything (limits are not isolation).
#[inline(never)]
pub fn take(endpoint: &EndpointInfo, kind: u8, direction: u8, units: u64) -> u8 {
    let key = BucketKey::for_endpoint(
        endpoint.endpoint_id,
        endpoint.identity,
        endpoint.limits,
        kind,
        direction,
    );
    let Some(bucket) = LIMITS.get_ptr_mut(key) else {
        return 1;
    };
    // The clock is read before taking the lock: no helper may run while it is held.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `bucket` points into the map value; the lock serialises the read-modify-write
    // of `tat` across CPUs, and nothing between lock and unlock calls a helper or a function.
    unsafe {
        lock(&raw mut (*bucket).lock);
        let passed = match admit((*bucket).tat, now, units, &(*bucket).config) {
            Some(next) => {
                (*bucket).tat = next;
                1
            }
            None => 0,
        };
        unlock(&raw mut (*bucket).lock);
        passed
    }
}
