//! Every map of the eBPF object. Names, capacities and layouts come from `genie_common::maps`;
//! the `name` literals must equal the constants there (the agent refuses an object that lacks
//! one of them, and a privileged test dumps each by name).

use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SkStorage,
    },
    macros::btf_map,
};
use genie_common::maps::{
    AddrInfo, CT_TEMPLATE_ENTRIES, CidrInfo, Config, CounterKey, CounterValue, CtKey, CtValue,
    EndpointInfo, IdentityInfo, IpAddr16, MAX_ADDRS, MAX_BUCKETS, MAX_CIDRS, MAX_COUNTERS,
    MAX_CT_ZONES, MAX_ENDPOINTS, MAX_IDENTITIES, MAX_POLICY, PolicyKey, PolicyValue,
};

/// Endpoint records by the interface index the program runs on (`ENDPOINTS_MAP`).
#[btf_map(name = "genie_endpoints")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Exact endpoint and service addresses → identity (`ADDRS_MAP`).
#[btf_map(name = "genie_addrs")]
pub static ADDRS: HashMap<IpAddr16, AddrInfo, { MAX_ADDRS as usize }> = HashMap::new();

/// Node addresses and network subnets → identity, longest prefix (`CIDRS_MAP`).
#[btf_map(name = "genie_cidrs")]
pub static CIDRS: LpmTrie<IpAddr16, CidrInfo, { MAX_CIDRS as usize }> = LpmTrie::new();

/// Identity → flags and names (`IDENTITIES_MAP`).
#[btf_map(name = "genie_idents")]
pub static IDENTITIES: HashMap<u32, IdentityInfo, { MAX_IDENTITIES as usize }> = HashMap::new();

/// The global policy matrix (`POLICY_MAP`).
#[btf_map(name = "genie_policy")]
pub static POLICY: HashMap<PolicyKey, PolicyValue, { MAX_POLICY as usize }> = HashMap::new();

/// Connection tracking (`CONNTRACK_MAP`): one LRU table per tenant (connection-tracking
/// zone), created by the agent with the tenant's own capacity. LRU, so a flood evicts the
/// oldest flows instead of failing inserts — and only the flooding tenant's own.
#[btf_map(name = "genie_ct")]
pub static CONNTRACK: ArrayOfMaps<
    LruHashMap<CtKey, CtValue, { CT_TEMPLATE_ENTRIES as usize }>,
    { MAX_CT_ZONES as usize },
> = ArrayOfMaps::new();

/// Node-wide settings, index 0 (`CONFIG_MAP`).
#[btf_map(name = "genie_config")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Per-CPU packet/byte counters (`COUNTERS_MAP`).
#[btf_map(name = "genie_counters")]
pub static COUNTERS: PerCpuHashMap<CounterKey, CounterValue, { MAX_COUNTERS as usize }> =
    PerCpuHashMap::new();

/// Per-CPU working memory for the parsed packet and its flow (`SCRATCH_MAP`): the 512-byte
/// BPF stack cannot hold them next to the decision's map keys.
#[btf_map(name = "genie_scratch")]
pub static SCRATCH: PerCpuArray<crate::verdict::Scratch, 1> = PerCpuArray::new();

/// Rate-limit buckets (`LIMITS_MAP`): bandwidth and QPS per endpoint or per network, both
/// directions.
#[btf_map(name = "genie_limits")]
pub static LIMITS: HashMap<
    genie_common::ratelimit::BucketKey,
    crate::ratelimit::Bucket,
    { MAX_BUCKETS as usize },
> = HashMap::new();

/// `pace_tcp`'s record per TCP connection of one of this node's endpoints. Socket-local
/// storage goes away with its socket; not pinned (a restarted agent's program re-reads the
/// limit of connections it finds without a record here).
#[btf_map(name = "genie_paced")]
pub static PACED: SkStorage<crate::pacing::Paced> = SkStorage::new();
