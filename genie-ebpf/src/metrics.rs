//! Per-CPU packet and byte counters keyed by (endpoint, direction, reason).

use aya_ebpf::bindings::BPF_NOEXIST;
use genie_common::{CounterKey, CounterValue, Direction, Reason};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(endpoint_id: u32, identity: u32, direction: Direction, reason: Reason, bytes: u32) {
    let key = CounterKey::new(endpoint_id, identity, direction, reason);
    let add = CounterValue {
        packets: 1,
        bytes: u64::from(bytes),
    };
    for _ in 0..2 {
        if let Some(value) = COUNTERS.get_ptr_mut(key) {
            // SAFETY: the pointer is this CPU's slot of a per-CPU value, and TC programs run
            // with migration disabled in softirq context, so nothing else writes it meanwhile.
            unsafe { *value = (*value).add(add) };
            return;
        }
        // Another CPU may create the key between our lookup and insert; then the second pass
        // finds it. A full map loses the count (visible as map fill in metrics).
        if COUNTERS.insert(key, add, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
    }
}
