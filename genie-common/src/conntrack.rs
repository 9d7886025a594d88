//! Connection-tracking helpers of the programs (key, timeouts), unit-tested here.

use crate::{
    maps::{CtKey, IpAddr16, ct_flags},
    policy::proto,
};

const SECOND: u64 = 1_000_000_000;
/// Idle timeout of an open TCP connection.
pub const TCP_TIMEOUT_NS: u64 = 2 * 3600 * SECOND;
/// Idle timeout once a FIN or RST was seen.
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 10 * SECOND;
/// Idle timeout of a UDP flow.
pub const UDP_TIMEOUT_NS: u64 = 120 * SECOND;
/// Idle timeout of ICMP and other protocols.
pub const OTHER_TIMEOUT_NS: u64 = 30 * SECOND;
/// `last_seen_ns` is refreshed only when older than this, to keep writes to the shared LRU
/// entry rare.
pub const REFRESH_NS: u64 = SECOND;

/// The canonical key of a flow and whether `src` is its `lo` side.
#[inline(always)]
pub fn flow_key(
    src: IpAddr16,
    dst: IpAddr16,
    sport: u16,
    dport: u16,
    protocol: u8,
) -> (CtKey, bool) {
    let src_is_lo = match src.le(&dst) {
        Some(le) => le,
        None => sport <= dport,
    };
    let (addr_lo, port_lo, addr_hi, port_hi) = if src_is_lo {
        (src, sport, dst, dport)
    } else {
        (dst, dport, src, sport)
    };
    (
        CtKey {
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            protocol,
            _pad0: 0,
            _pad1: 0,
        },
        src_is_lo,
    )
}

/// How long an entry may stay idle.
#[inline(always)]
pub const fn timeout_ns(protocol: u8, flags: u8) -> u64 {
    match protocol {
        proto::TCP if flags & ct_flags::CLOSING != 0 => TCP_CLOSING_TIMEOUT_NS,
        proto::TCP => TCP_TIMEOUT_NS,
        proto::UDP => UDP_TIMEOUT_NS,
        _ => OTHER_TIMEOUT_NS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = IpAddr16::from_v4([198, 18, 0, 11]);
        let b = IpAddr16::from_v4([198, 18, 0, 12]);
        let (k1, a_lo) = flow_key(a, b, 40000, 80, proto::TCP);
        let (k2, b_lo) = flow_key(b, a, 80, 40000, proto::TCP);
        assert_eq!(k1, k2);
        assert!(a_lo && !b_lo);
        // Same addresses, other ports: another flow.
        assert_ne!(flow_key(a, b, 40001, 80, proto::TCP).0, k1);
    }
}
