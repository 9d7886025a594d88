//! Map names, capacities and the key/value layouts of every genie map.
//!
//! Map names are also the file names of the pins under the agent's bpffs directory. The kernel
//! keeps at most 15 characters of a map name (`BPF_OBJ_NAME_LEN`), so every name fits in that.
//! Addresses are stored as 16 bytes in network byte order; IPv4 addresses are IPv4-mapped
//! (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) so one map serves both families.

use crate::reason::{Direction, Reason};

/// Endpoint records, keyed by the interface index the programs run on, or by an in-pod key
/// (see [`in_pod_key`]).
pub const ENDPOINTS_MAP: &str = "genie_endpoints";
/// Exact addresses (/32, /128) of endpoints and cluster DNS → identity. A hash, not an LPM:
/// its cost does not grow with the number of pods (REFERENCE.md, Cilium's ipcache numbers).
pub const ADDRS_MAP: &str = "genie_addrs";
/// CIDRs (node addresses, network subnets) → identity; longest prefix wins.
pub const CIDRS_MAP: &str = "genie_cidrs";
/// Identities → flags and names.
pub const IDENTITIES_MAP: &str = "genie_idents";
/// The policy matrix: (src identity, dst identity, protocol) → allowed port ranges.
pub const POLICY_MAP: &str = "genie_policy";
/// Connection tracking: an array of per-tenant LRU tables (map of maps), indexed by
/// connection-tracking zone.
pub const CONNTRACK_MAP: &str = "genie_ct";
/// Node-wide settings (one entry).
pub const CONFIG_MAP: &str = "genie_config";
/// Packet and byte counters per (endpoint, identity, direction, reason); per-CPU.
pub const COUNTERS_MAP: &str = "genie_counters";
/// Per-CPU working memory of the programs (the parsed packet, its flow key); nothing to read.
pub const SCRATCH_MAP: &str = "genie_scratch";
/// Rate-limit buckets (bandwidth and QPS), keyed by [`crate::ratelimit::BucketKey`].
pub const LIMITS_MAP: &str = "genie_limits";

/// Every map the eBPF object defines, in the order the agent pins them.
pub const ALL_MAPS: [&str; 10] = [
    ENDPOINTS_MAP,
    ADDRS_MAP,
    CIDRS_MAP,
    IDENTITIES_MAP,
    POLICY_MAP,
    CONNTRACK_MAP,
    CONFIG_MAP,
    COUNTERS_MAP,
    SCRATCH_MAP,
    LIMITS_MAP,
];

/// Name of the read-only global holding a program instance's fixed endpoint key; 0 means "key
/// by the interface index".
pub const ENDPOINT_KEY_GLOBAL: &str = "GENIE_ENDPOINT_KEY";

/// Set in every in-pod endpoint key. Interface indexes are positive `int`s, so keys with this
/// bit never equal one.
pub const IN_POD_KEY_BIT: u32 = 1 << 31;

/// The endpoints-map key of an endpoint whose programs run inside the pod's namespace
/// (interfaces without a host side, such as macvlan). Interface indexes are unique only within
/// one namespace, so these endpoints get their own program instance carrying this key; the
/// agent allocates the slots.
pub const fn in_pod_key(slot: u32) -> u32 {
    IN_POD_KEY_BIT | slot
}

/// Capacity of [`ENDPOINTS_MAP`]: pod interfaces on one node.
pub const MAX_ENDPOINTS: u32 = 131_072;
/// Capacity of [`ADDRS_MAP`]: endpoint addresses known to the node (local and remote).
pub const MAX_ADDRS: u32 = 262_144;
/// Capacity of [`CIDRS_MAP`].
pub const MAX_CIDRS: u32 = 16_384;
/// Capacity of [`IDENTITIES_MAP`].
pub const MAX_IDENTITIES: u32 = 16_384;
/// Capacity of [`POLICY_MAP`].
pub const MAX_POLICY: u32 = 131_072;
/// Connection-tracking zones on one node: tenants with endpoints there (zone 0 is the
/// namespaces no tenant owns).
pub const MAX_CT_ZONES: u32 = 1024;
/// The zone of the default-network endpoints of namespaces no tenant owns.
pub const UNOWNED_CT_ZONE: u32 = 0;
/// Flows a zone's table holds unless its tenant says otherwise (`quota.connections`).
pub const DEFAULT_ZONE_CONNECTIONS: u32 = 65_536;
/// Size of the inner-table template in the object; the agent creates every zone's table with
/// its own capacity (the kernel does not compare the sizes of hash tables in a map of maps).
pub const CT_TEMPLATE_ENTRIES: u32 = 1024;
/// Capacity of [`COUNTERS_MAP`]: endpoints × directions × the reasons that actually occur.
pub const MAX_COUNTERS: u32 = 262_144;
/// Port ranges per policy entry.
pub const MAX_PORT_RANGES: usize = 16;
/// Capacity of [`LIMITS_MAP`]: four buckets per endpoint at most.
pub const MAX_BUCKETS: u32 = 4 * MAX_ENDPOINTS;

/// Bits of [`IdentityInfo::flags`].
pub mod identity_flags {
    /// Endpoints of this identity may open flows to node addresses (`allowHostAccess`).
    pub const ALLOW_HOST: u32 = 1 << 0;
    /// … to addresses of no known network (`allowExternal`).
    pub const ALLOW_EXTERNAL: u32 = 1 << 1;
    /// Addresses of no known network may open flows to them (`allowExternalIngress`).
    pub const ALLOW_EXTERNAL_INGRESS: u32 = 1 << 2;
}

/// An IPv6 address or IPv4-mapped IPv4 address, network byte order.
///
/// Aligned to 4 bytes so the BPF backend copies, zeroes and compares it with word operations;
/// with byte alignment LLVM emits calls to byte-by-byte `memset`/`memcmp` loops, which were
/// most of the per-packet cost. The LPM key (`u32` prefix length, then these 16 bytes) keeps
/// its kernel layout.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpAddr16 {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<IpAddr16>() == 16);

impl IpAddr16 {
    /// The address as two big-endian halves: comparing them orders addresses like their bytes,
    /// and they stay in registers (no `memcmp`, no stack arrays in BPF).
    #[inline(always)]
    pub const fn halves(&self) -> (u64, u64) {
        let p = self.addr.as_ptr().cast::<u64>();
        // SAFETY: `addr` is 16 readable bytes; `read_unaligned` has no alignment requirement.
        // Reading in place keeps the BPF backend from building byte arrays on the stack.
        let (hi, lo) = unsafe { (p.read_unaligned(), p.add(1).read_unaligned()) };
        (u64::from_be(hi), u64::from_be(lo))
    }

    /// `Some(self < other)` when the addresses differ, `None` when they are equal.
    #[inline(always)]
    pub const fn le(&self, other: &IpAddr16) -> Option<bool> {
        let (a0, a1) = self.halves();
        let (b0, b1) = other.halves();
        if a0 != b0 {
            Some(a0 < b0)
        } else if a1 != b1 {
            Some(a1 < b1)
        } else {
            None
        }
    }

    /// Whether every byte is zero (`::`).
    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        let (a, b) = self.halves();
        a | b == 0
    }
}

/// Compares two MAC addresses with integer operations (no `memcmp` in BPF).
#[inline(always)]
pub const fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        && u16::from_ne_bytes([a[4], a[5]]) == u16::from_ne_bytes([b[4], b[5]])
}

impl IpAddr16 {
    /// The IPv4-mapped form of an IPv4 address given as network-order bytes.
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        // Built from words, the BPF backend stores four words instead of calling `memset` for
        // the zero prefix.
        Self::from_words([
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes(octets),
        ])
    }

    /// An address given as four words holding its network-order bytes (the kernel's
    /// `__be32[4]`, as in `struct bpf_sock_ops`).
    pub const fn from_words(words: [u32; 4]) -> Self {
        // SAFETY: `[u32; 4]` and `[u8; 16]` have the same size and every bit pattern is a
        // valid byte array.
        let addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) };
        Self { addr }
    }

    /// An IPv6 address given as network-order bytes.
    pub const fn from_v6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }

    /// Whether this is an IPv4-mapped address.
    pub const fn is_v4(&self) -> bool {
        let a = &self.addr;
        a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && a[3] == 0
            && a[4] == 0
            && a[5] == 0
            && a[6] == 0
            && a[7] == 0
            && a[8] == 0
            && a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
    }
}

/// Value of [`ENDPOINTS_MAP`]: what the dataplane knows about one pod interface. The key is
/// the interface index (`u32`, host byte order) of the interface genie's programs run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Agent-assigned id, stable for the endpoint's lifetime; counters are keyed by it.
    pub endpoint_id: u32,
    /// The (tenant, network) identity of the endpoint.
    pub identity: u32,
    /// The pod interface's MAC; all zero disables the MAC check (interfaces whose MAC the
    /// agent cannot know).
    pub mac: [u8; 6],
    /// Which rate-limit buckets apply ([`crate::ratelimit::limit_flags`]); 0: none.
    pub limits: u8,
    /// [`endpoint_flags`] bits.
    pub flags: u8,
    /// The connection-tracking zone of the endpoint's tenant: its own table in
    /// [`CONNTRACK_MAP`], so another tenant's flows can never evict its entries.
    pub ct_zone: u32,
}
const _: () = assert!(size_of::<EndpointInfo>() == 20);

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// Broadcast and multicast this endpoint sends reach the node's own stack directly (the
    /// host side of its veth is in no bridge, as with `ptp`): its egress program decides host
    /// access for them. Behind a bridge, `to_host` on the bridge decides instead.
    pub const GROUP_TO_HOST: u8 = 1 << 0;
}

/// Value of [`LIMITS_MAP`] as user space sees it. The eBPF side declares the same layout with
/// the kernel's `struct bpf_spin_lock` in place of `lock` (the verifier finds it by BTF name).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketValue {
    /// `struct bpf_spin_lock`; user space never touches it (updates use `BPF_F_LOCK`).
    pub lock: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Theoretical arrival time in `bpf_ktime_get_ns` nanoseconds ([`crate::ratelimit`]).
    pub tat: u64,
    pub config: crate::ratelimit::BucketConfig,
}
const _: () = assert!(size_of::<BucketValue>() == 48);

/// Value of [`ADDRS_MAP`] (key: [`IpAddr16`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrInfo {
    /// Identity of the address.
    pub identity: u32,
    /// The local endpoint owning the address (anti-spoofing), or 0 for a remote endpoint or a
    /// service address.
    pub endpoint_id: u32,
}
const _: () = assert!(size_of::<AddrInfo>() == 8);

/// Value of [`CIDRS_MAP`] (key: LPM key over [`IpAddr16`], prefix counted in the 128-bit
/// space, so an IPv4 /24 is a /120).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrInfo {
    /// Identity of every address in the prefix.
    pub identity: u32,
}
const _: () = assert!(size_of::<CidrInfo>() == 4);

/// Length of the names kept in [`IdentityInfo`] (DNS labels are at most 63 bytes).
pub const NAME_LEN: usize = 64;

/// Value of [`IDENTITIES_MAP`] (key: identity `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    /// [`identity_flags`] bits.
    pub flags: u32,
    /// The connection-tracking zone of the identity's tenant (kept here so a restarted agent
    /// finds every tenant's zone in the pins).
    pub ct_zone: u32,
    /// Tenant name, NUL-padded (for inspection; the dataplane never reads it).
    pub tenant: [u8; NAME_LEN],
    /// Logical network name, NUL-padded.
    pub network: [u8; NAME_LEN],
}
const _: () = assert!(size_of::<IdentityInfo>() == 8 + 2 * NAME_LEN);

impl Default for IdentityInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            ct_zone: 0,
            tenant: [0; NAME_LEN],
            network: [0; NAME_LEN],
        }
    }
}

/// Key of [`POLICY_MAP`]. `protocol` 0 means "every protocol, every port".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP), or 0 for any.
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<PolicyKey>() == 12);

/// An inclusive destination port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}
const _: () = assert!(size_of::<PortRange>() == 4);

/// Value of [`POLICY_MAP`]: the destination ports allowed. `count == 0` allows every port
/// (and is the only form for protocols without ports, such as ICMP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
const _: () = assert!(size_of::<PolicyValue>() == 4 + 4 * MAX_PORT_RANGES);

impl PolicyValue {
    /// Whether `port` is allowed.
    #[inline(always)]
    pub fn allows_port(&self, port: u16) -> bool {
        if self.count == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i as u32 >= self.count {
                return false;
            }
            let range = self.ranges[i];
            if port >= range.first && port <= range.last {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key of [`CONNTRACK_MAP`]: a flow's addresses and ports in canonical order (the smaller
/// (address, port) first), so both directions find the same entry with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub addr_lo: IpAddr16,
    pub addr_hi: IpAddr16,
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    /// Padding as a byte and a half-word rather than `[u8; 3]`: the BPF backend zeroes an
    /// odd-sized array with a `memset` call, and this key is built for every packet.
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// The flow was opened by the `lo` side of the key.
    pub const OPENED_BY_LO: u8 = 1 << 0;
    /// A TCP FIN or RST was seen: the entry expires quickly.
    pub const CLOSING: u8 = 1 << 1;
    /// The receiving endpoint's ingress has admitted the flow (its ingress QPS limit was
    /// applied), whether conntrack first saw the flow there or at a local sender's egress.
    pub const INGRESS_ADMITTED: u8 = 1 << 2;
}

/// Value of [`CONNTRACK_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// [`Config::policy_epoch`] at which the flow was last found allowed.
    pub epoch: u32,
    /// [`ct_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtValue>() == 16);

/// Value of [`CONFIG_MAP`] (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped by the agent after every change to identities or policy; a tracked flow whose
    /// epoch differs is checked again before it may pass (tightening is immediate).
    pub policy_epoch: u32,
    /// Bumped by the agent after every change to rate-limit buckets: TCP sockets paced for a
    /// limit (`pace_tcp`) look their rate up again when it differs from the one they recorded.
    pub limits_epoch: u32,
}
const _: () = assert!(size_of::<Config>() == 8);

/// Key of [`COUNTERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// [`EndpointInfo::endpoint_id`], or 0 for packets on an interface with no endpoint record.
    pub endpoint_id: u32,
    /// The endpoint's identity (0 when unknown).
    pub identity: u32,
    /// A [`Direction`] discriminant.
    pub direction: u8,
    /// A [`Reason`] discriminant.
    pub reason: u8,
    /// Explicit padding, always zero (hash keys compare every byte).
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CounterKey>() == 12);

impl CounterKey {
    /// The key for one endpoint, direction and reason.
    pub const fn new(
        endpoint_id: u32,
        identity: u32,
        direction: Direction,
        reason: Reason,
    ) -> Self {
        Self {
            endpoint_id,
            identity,
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
    // SAFETY (all impls below): each type is `#[repr(C)]`, has no padding the compiler adds
    // (sizes are asserted above and all padding is explicit) and every bit pattern is a valid
    // value.
    macro_rules! pod {
        ($($t:ty),*) => { $(
            // SAFETY: see the module comment.
            unsafe impl aya::Pod for $t {}
        )* };
    }
    pod!(
        super::IpAddr16,
        super::EndpointInfo,
        super::AddrInfo,
        super::CidrInfo,
        super::IdentityInfo,
        super::PolicyKey,
        super::PolicyValue,
        super::CtKey,
        super::CtValue,
        super::Config,
        super::CounterKey,
        super::BucketValue,
        crate::ratelimit::BucketKey,
        super::CounterValue
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit_and_are_distinct() {
        for (i, name) in ALL_MAPS.iter().enumerate() {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
            assert!(!ALL_MAPS[i + 1..].contains(name));
        }
    }

    #[test]
    fn ipv4_mapped_addresses() {
        let a = IpAddr16::from_v4([198, 18, 0, 1]);
        assert!(a.is_v4());
        assert_eq!(&a.addr[10..], &[0xff, 0xff, 198, 18, 0, 1]);
        assert!(
            !IpAddr16::from_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_v4()
        );
    }

    #[test]
    fn port_ranges() {
        let mut v = PolicyValue::default();
        assert!(v.allows_port(1), "count 0 allows every port");
        v.count = 2;
        v.ranges[0] = PortRange {
            first: 80,
            last: 80,
        };
        v.ranges[1] = PortRange {
            first: 8000,
            last: 8080,
        };
        assert!(v.allows_port(80));
        assert!(v.allows_port(8000) && v.allows_port(8080) && v.allows_port(8042));
        assert!(!v.allows_port(81) && !v.allows_port(7999) && !v.allows_port(8081));
        // Ranges beyond `count` are ignored even when set.
        v.ranges[2] = PortRange {
            first: 1,
            last: 65535,
        };
        assert!(!v.allows_port(22));
    }
}
