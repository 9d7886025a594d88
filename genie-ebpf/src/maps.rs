//! Every map of the eBPF object. Names, capacities and layouts come from `genie_common::maps`;
//! the `name` literals must equal the constants there (the agent refuses an object that lacks
//! one of them).

use aya_ebpf::{btf_maps::HashMap, btf_maps::PerCpuHashMap, macros::btf_map};
use genie_common::maps::{CounterKey, CounterValue, EndpointInfo, MAX_COUNTERS, MAX_ENDPOINTS};

/// Endpoint records by interface index (`genie_common::maps::ENDPOINTS_MAP`).
#[btf_map(name = "genie_endpoints")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Per-CPU packet/byte counters (`genie_common::maps::COUNTERS_MAP`).
#[btf_map(name = "genie_counters")]
pub static COUNTERS: PerCpuHashMap<CounterKey, CounterValue, { MAX_COUNTERS as usize }> =
    PerCpuHashMap::new();
