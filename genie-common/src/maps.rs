//! Map names, capacities and the key/value layouts of every genie map.
//!
//! Map names are also the file names of the pins under the agent's bpffs directory. The kernel
//! keeps at most 15 characters of a map name (`BPF_OBJ_NAME_LEN`), so every name fits in that.

use crate::reason::{Direction, Reason};

/// Endpoint records, keyed by the interface index the programs run on.
pub const ENDPOINTS_MAP: &str = "genie_endpoints";
/// Packet and byte counters per (endpoint, direction, reason); per-CPU, so no atomics.
pub const COUNTERS_MAP: &str = "genie_counters";

/// Every map the eBPF object defines, in the order the agent pins them.
pub const ALL_MAPS: [&str; 2] = [ENDPOINTS_MAP, COUNTERS_MAP];

/// Capacity of [`ENDPOINTS_MAP`]: pod interfaces on one node.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Capacity of [`COUNTERS_MAP`]: endpoints × directions × the reasons that actually occur.
pub const MAX_COUNTERS: u32 = 262_144;

/// Value of [`ENDPOINTS_MAP`]: what the dataplane knows about one pod interface. The key is
/// the interface index (`u32`, host byte order) of the interface genie's programs run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Agent-assigned id, stable for the endpoint's lifetime; counters are keyed by it.
    pub endpoint_id: u32,
    /// Reserved for the (tenant, network) identity; zero until policy exists.
    pub identity: u32,
}
const _: () = assert!(size_of::<EndpointInfo>() == 8);

/// Key of [`COUNTERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// [`EndpointInfo::endpoint_id`], or 0 for packets on an interface with no endpoint record.
    pub endpoint_id: u32,
    /// A [`Direction`] discriminant.
    pub direction: u8,
    /// A [`Reason`] discriminant.
    pub reason: u8,
    /// Explicit padding, always zero (hash keys compare every byte).
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CounterKey>() == 8);

impl CounterKey {
    /// The key for one endpoint, direction and reason.
    pub const fn new(endpoint_id: u32, direction: Direction, reason: Reason) -> Self {
        Self {
            endpoint_id,
            direction: direction as u8,
            reason: reason as u8,
            _pad: [0; 2],
        }
    }
}

/// Value of [`COUNTERS_MAP`] (one per CPU; readers sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen, counting from the Ethernet header (`skb->len` at TC).
    pub bytes: u64,
}
const _: () = assert!(size_of::<CounterValue>() == 16);

impl CounterValue {
    /// Adds another CPU's (or another key's) counts.
    pub const fn add(self, other: CounterValue) -> CounterValue {
        CounterValue {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, has no padding the compiler adds (sizes are asserted
    // above and all padding is explicit) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CounterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CounterValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }

    #[test]
    fn counter_key_layout_is_what_bpftool_shows() {
        let key = CounterKey::new(7, Direction::Ingress, Reason::UnknownEndpoint);
        assert_eq!(core::mem::offset_of!(CounterKey, direction), 4);
        assert_eq!(core::mem::offset_of!(CounterKey, reason), 5);
        assert_eq!((key.endpoint_id, key.direction, key.reason), (7, 1, 1));
    }
}
