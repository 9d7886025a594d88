//! Rate limits: the bucket layout and its arithmetic, shared by the eBPF programs and the agent.
//!
//! A bucket is a GCRA policer (ITU-T I.371 "virtual scheduling"), the token bucket stated as a
//! theoretical arrival time `tat`: each unit passed (a byte for bandwidth, a new flow for QPS)
//! moves `tat` forward by the unit's cost in nanoseconds; a packet passes when `tat`, after
//! paying, is at most `burst_ns` ahead of now. That is one 64-bit state word, so a bucket shared
//! by several CPUs needs only a short spin-locked section and no division on the fast path.
//!
//! Burst semantics (README, "Limits"): after an idle period a bucket lets `burst` units through
//! back to back, then exactly `rate` per second.

/// Fixed-point shift of [`BucketConfig::unit_cost`]: nanoseconds per unit × 2^16, so a 10 Gbit/s
/// byte (0.8 ns) keeps four significant digits and a 64 KiB GSO packet at 1 Mbit/s
/// (0.5 s = 3.4e13 scaled) stays far below `u64::MAX`.
pub const COST_SHIFT: u32 = 16;

/// The smallest bandwidth burst genie configures, in bytes. A veth carries TCP as GSO packets
/// of up to 64 KiB; a burst below one of them would drop every one.
pub const MIN_BANDWIDTH_BURST_BYTES: u64 = 128 * 1024;

/// The default bandwidth burst: this much time at the configured rate (or
/// [`MIN_BANDWIDTH_BURST_BYTES`], whichever is larger).
pub const DEFAULT_BURST_NS: u64 = 100_000_000;

/// The default QPS burst: this many new flows at once (or one second's worth, whichever is
/// smaller).
pub const DEFAULT_QPS_BURST: u64 = 10;

/// What a bucket limits.
pub mod kind {
    /// Bytes (bandwidth).
    pub const BYTES: u8 = 0;
    /// New flows (QPS).
    pub const FLOWS: u8 = 1;
}

/// Which buckets an endpoint has: bits of [`crate::EndpointInfo::limits`]. The low four bits
/// say a bucket exists; the same bit shifted by [`limit_flags::SHARED_SHIFT`] says it is the
/// network's shared bucket (scope `Network`) rather than the endpoint's own, so one endpoint
/// may mix its own bandwidth limit (from a pod annotation) with its network's shared QPS limit.
pub mod limit_flags {
    /// Bytes the endpoint sends are limited.
    pub const EGRESS_BYTES: u8 = 1 << 0;
    /// Bytes delivered to the endpoint are limited.
    pub const INGRESS_BYTES: u8 = 1 << 1;
    /// New flows the endpoint opens are limited.
    pub const EGRESS_FLOWS: u8 = 1 << 2;
    /// New flows opened towards the endpoint are limited.
    pub const INGRESS_FLOWS: u8 = 1 << 3;
    /// Shift from a bucket's flag to its "shared by the network" flag.
    pub const SHARED_SHIFT: u8 = 4;

    /// The flag of a (kind, direction) bucket.
    pub const fn of(kind: u8, direction: u8) -> u8 {
        match (kind, direction) {
            (super::kind::BYTES, 0) => EGRESS_BYTES,
            (super::kind::BYTES, _) => INGRESS_BYTES,
            (_, 0) => EGRESS_FLOWS,
            _ => INGRESS_FLOWS,
        }
    }

    /// The "shared by the network" flag of a (kind, direction) bucket.
    pub const fn shared(kind: u8, direction: u8) -> u8 {
        of(kind, direction) << SHARED_SHIFT
    }
}

/// Key of [`crate::maps::LIMITS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey {
    /// Endpoint id (scope `Endpoint`) or network identity (scope `Network`).
    pub owner: u32,
    /// [`kind`].
    pub kind: u8,
    /// [`crate::Direction`] as a byte.
    pub direction: u8,
    /// 1 when `owner` is a network identity (ids and identities are different number spaces).
    pub network_scope: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<BucketKey>() == 8);

impl BucketKey {
    /// The bucket an endpoint with `flags` uses for (kind, direction).
    pub const fn for_endpoint(
        endpoint_id: u32,
        identity: u32,
        flags: u8,
        kind: u8,
        direction: u8,
    ) -> Self {
        let network = flags & limit_flags::shared(kind, direction) != 0;
        Self {
            owner: if network { identity } else { endpoint_id },
            kind,
            direction,
            network_scope: network as u8,
            _pad: 0,
        }
    }
}

/// The configured part of a bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Nanoseconds per unit, `<< COST_SHIFT`.
    pub unit_cost: u64,
    /// How far ahead of now `tat` may run, in nanoseconds (the burst at this rate).
    pub burst_ns: u64,
    /// The configured rate in units (bytes or flows) per second, as given: for inspection
    /// (`unit_cost` is the rounded form the programs use).
    pub rate: u64,
    /// The configured burst in units, as given.
    pub burst: u64,
}
const _: () = assert!(size_of::<BucketConfig>() == 32);

impl BucketConfig {
    /// A bucket passing `rate` units per second with bursts of `burst` units.
    pub const fn new(rate: u64, burst: u64) -> Self {
        let rate = if rate == 0 { 1 } else { rate };
        let unit_cost = ((1_000_000_000u128 << COST_SHIFT) / rate as u128) as u64;
        Self {
            unit_cost,
            burst_ns: ((burst as u128 * 1_000_000_000u128) / rate as u128) as u64,
            rate,
            burst,
        }
    }

    /// A bandwidth bucket: `bits_per_second`, with `burst_bits` or the default burst.
    pub const fn bandwidth(bits_per_second: u64, burst_bits: u64) -> Self {
        let rate = bits_per_second / 8;
        let burst = if burst_bits != 0 {
            burst_bits / 8
        } else {
            (rate as u128 * DEFAULT_BURST_NS as u128 / 1_000_000_000u128) as u64
        };
        let burst = if burst < MIN_BANDWIDTH_BURST_BYTES {
            MIN_BANDWIDTH_BURST_BYTES
        } else {
            burst
        };
        Self::new(rate, burst)
    }

    /// A QPS bucket: `flows_per_second` new flows, bursts of `burst` (or the default).
    pub const fn qps(flows_per_second: u64, burst: u64) -> Self {
        let burst = if burst != 0 {
            burst
        } else if flows_per_second < DEFAULT_QPS_BURST {
            flows_per_second
        } else {
            DEFAULT_QPS_BURST
        };
        Self::new(flows_per_second, if burst == 0 { 1 } else { burst })
    }
}

/// Bytes a bucket counts per TCP segment beyond its payload: Ethernet (14), IPv4 (20) or IPv6
/// (40), and a TCP header with the timestamp option Linux sends by default (32). The kernel's
/// pacing rate (`SO_MAX_PACING_RATE`) meters payload only; the policer meters whole frames.
pub const fn segment_overhead(ipv6: bool) -> u64 {
    14 + if ipv6 { 40 } else { 20 } + 32
}

/// The pacing rate (payload bytes per second) at which a TCP sender with segments of `mss`
/// payload bytes puts exactly `limit` bytes per second of frames on the wire when every
/// segment travels alone — the most a bucket of `limit` can be charged for that payload (a
/// GSO packet carries its headers once). A sender paced this way never waits for the policer,
/// so it loses nothing to it.
///
/// The result is what `bpf_setsockopt(SO_MAX_PACING_RATE)` takes: an `int` of bytes per second,
/// where `u32::MAX` means unpaced — the answer for limits too fast for the option (above
/// 34 Gbit/s), which the bucket alone enforces.
#[inline(always)]
pub const fn pacing_rate(limit: u64, mss: u32, ipv6: bool) -> u32 {
    // An MSS of 0 (not yet known) is priced as the smallest IPv4 MSS (RFC 9293 §3.7.1).
    let mss = if mss == 0 { 536 } else { mss as u64 };
    if limit >= u32::MAX as u64 {
        return u32::MAX;
    }
    let rate = limit * mss / (mss + segment_overhead(ipv6));
    if rate == 0 { 1 } else { rate as u32 }
}

/// Largest unit count priced exactly; larger packets (none exist: BIG TCP stops at 512 KiB)
/// are priced as this many.
pub const MAX_UNITS: u64 = 1 << 24;

/// `units × unit_cost >> COST_SHIFT` without a 128-bit product (BPF has none): the integer and
/// fractional parts of the cost multiply separately, neither can overflow for `units` up to
/// [`MAX_UNITS`] and rates of at least one unit per second.
#[inline(always)]
pub const fn cost_ns(units: u64, unit_cost: u64) -> u64 {
    let units = if units > MAX_UNITS { MAX_UNITS } else { units };
    (units * (unit_cost >> COST_SHIFT))
        + ((units * (unit_cost & ((1 << COST_SHIFT) - 1))) >> COST_SHIFT)
}

/// The policer step: whether `units` may pass at `now_ns` given the theoretical arrival time
/// `tat`, and the new `tat` if so. Callers hold the bucket's lock.
#[inline(always)]
pub const fn admit(tat: u64, now_ns: u64, units: u64, config: &BucketConfig) -> Option<u64> {
    let start = if tat > now_ns { tat } else { now_ns };
    let cost = cost_ns(units, config.unit_cost);
    let next = start.saturating_add(cost);
    if next - now_ns > config.burst_ns {
        None
    } else {
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units passed when offering `offer` units every `step_ns` for `duration_ns`.
    fn run(config: &BucketConfig, offer: u64, step_ns: u64, duration_ns: u64) -> u64 {
        let mut tat = 0;
        let mut passed = 0;
        let mut now = 1_000_000_000;
        let end = now + duration_ns;
        while now < end {
            if let Some(next) = admit(tat, now, offer, config) {
                tat = next;
                passed += offer;
            }
            now += step_ns;
        }
        passed
    }

    #[test]
    fn a_saturated_bucket_passes_its_rate_plus_one_burst() {
        // 100 Mbit/s offered 1500-byte packets at 10 Gbit/s for 10 s.
        let config = BucketConfig::bandwidth(100_000_000, 0);
        let passed = run(&config, 1500, 1200, 10_000_000_000);
        let burst = 12_500_000 * DEFAULT_BURST_NS / 1_000_000_000;
        let expected = 12_500_000 * 10 + burst;
        let error = passed.abs_diff(expected) as f64 / expected as f64;
        assert!(error < 0.001, "passed {passed}, expected {expected}");
    }

    #[test]
    fn costs_split_exactly_and_never_overflow() {
        let c = BucketConfig::new(1_250_000, 1);
        assert_eq!(cost_ns(1500, c.unit_cost), 1_200_000);
        let slowest = BucketConfig::new(1, 1);
        assert_eq!(
            cost_ns(MAX_UNITS, slowest.unit_cost),
            MAX_UNITS * 1_000_000_000
        );
        assert_eq!(
            cost_ns(u64::MAX, slowest.unit_cost),
            MAX_UNITS * 1_000_000_000
        );
    }

    #[test]
    fn a_gso_packet_fits_the_smallest_burst() {
        let config = BucketConfig::bandwidth(1_000_000, 0);
        assert!(admit(0, 1_000_000_000, 65_536, &config).is_some());
    }

    #[test]
    fn a_paced_sender_never_outruns_its_bucket() {
        // 10 Mbit/s, MSS 1448: every segment costs 1448 + 66 bytes of the bucket.
        let limit = 1_250_000;
        let rate = u64::from(pacing_rate(limit, 1448, false));
        assert!(rate * 1514 / 1448 <= limit && rate * 1514 / 1448 > limit - 1000);
        // The socket option's range: too fast to express is "unpaced", never 0.
        assert_eq!(pacing_rate(u64::MAX, 65_000, true), u32::MAX);
        assert!(pacing_rate(u64::from(u32::MAX) - 1, 65_000, true) < u32::MAX);
        assert_eq!(pacing_rate(0, 1448, false), 1);
        assert!(pacing_rate(1_250_000, 0, false) > 0);
    }

    #[test]
    fn qps_passes_the_burst_then_the_rate() {
        let config = BucketConfig::qps(50, 0);
        // 1000 attempts per second for 2 s: 10 at once, then 50 per second.
        let passed = run(&config, 1, 1_000_000, 2_000_000_000);
        assert!((109..=111).contains(&passed), "{passed}");
    }

    #[test]
    fn an_idle_bucket_does_not_save_more_than_its_burst() {
        let config = BucketConfig::qps(10, 5);
        let mut tat = 0;
        let now = 100_000_000_000;
        let mut passed = 0;
        while let Some(next) = admit(tat, now, 1, &config) {
            tat = next;
            passed += 1;
        }
        assert_eq!(passed, 5);
    }
}
