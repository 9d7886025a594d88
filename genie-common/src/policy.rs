//! The verdict rules of DESIGN.md §3 as pure functions, which the eBPF programs call with map
//! lookups. The property test checks them packet by packet against a reference model written
//! independently from the README (`genie_tests::reference`).

use crate::{
    identity::{DNS, HOST, WORLD},
    maps::{AddrInfo, CidrInfo, PolicyKey, identity_flags},
    reason::Reason,
};

/// IP protocol numbers genie treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// The port cluster DNS answers on.
pub const DNS_PORT: u16 = 53;

/// One side of a flow: its identity and that identity's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    pub identity: u32,
    pub flags: u32,
}

/// The identity of an address that is not the endpoint's own: an exact endpoint or service
/// address first, then the longest matching CIDR, else WORLD.
#[inline(always)]
pub fn classify(exact: Option<AddrInfo>, cidr: Option<CidrInfo>) -> u32 {
    match (exact, cidr) {
        (Some(addr), _) => addr.identity,
        (None, Some(cidr)) => cidr.identity,
        (None, None) => WORLD,
    }
}

/// Whether a protocol carries ports that policy can match.
#[inline(always)]
pub const fn has_ports(protocol: u8) -> bool {
    matches!(protocol, proto::TCP | proto::UDP | proto::SCTP)
}

/// Decides a new flow from `src` to `dst`. `allowed(key, port)` answers whether the policy
/// matrix has `key` and its port ranges admit `port`; it is asked for the exact protocol and
/// then for protocol 0 ("any").
#[inline(always)]
pub fn decide_new_flow(
    src: Side,
    dst: Side,
    protocol: u8,
    dport: u16,
    allowed: impl Fn(&PolicyKey, u16) -> bool,
) -> Reason {
    if src.identity == dst.identity && src.identity != WORLD && src.identity != HOST {
        return Reason::Forwarded;
    }
    // Host → pod stays open: kubelet probes (DESIGN.md §3).
    if src.identity == HOST {
        return Reason::Forwarded;
    }
    if dst.identity == DNS
        && dport == DNS_PORT
        && (protocol == proto::UDP || protocol == proto::TCP)
    {
        return Reason::Forwarded;
    }
    let policy_allows = || {
        let exact = PolicyKey {
            src_identity: src.identity,
            dst_identity: dst.identity,
            protocol,
            _pad: [0; 3],
        };
        let any = PolicyKey {
            protocol: 0,
            ..exact
        };
        allowed(&exact, dport) || allowed(&any, dport)
    };
    if dst.identity == HOST {
        return if src.flags & identity_flags::ALLOW_HOST != 0 || policy_allows() {
            Reason::Forwarded
        } else {
            Reason::HostAccess
        };
    }
    if dst.identity == WORLD {
        return if src.flags & identity_flags::ALLOW_EXTERNAL != 0 {
            Reason::Forwarded
        } else {
            Reason::ExternalEgress
        };
    }
    if src.identity == WORLD {
        return if dst.flags & identity_flags::ALLOW_EXTERNAL_INGRESS != 0 {
            Reason::Forwarded
        } else {
            Reason::ExternalIngress
        };
    }
    if policy_allows() {
        Reason::Forwarded
    } else {
        Reason::Policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FIRST_NETWORK_IDENTITY;

    const A: u32 = FIRST_NETWORK_IDENTITY + 1;
    const B: u32 = FIRST_NETWORK_IDENTITY + 2;

    fn side(identity: u32, flags: u32) -> Side {
        Side { identity, flags }
    }

    fn a_to_b_tcp_80(key: &PolicyKey, port: u16) -> bool {
        key.src_identity == A && key.dst_identity == B && key.protocol == proto::TCP && port == 80
    }

    #[test]
    fn the_rows_of_design_section_3() {
        let none = |_: &PolicyKey, _: u16| false;
        // same identity
        assert_eq!(
            decide_new_flow(side(A, 0), side(A, 0), proto::UDP, 9, none),
            Reason::Forwarded
        );
        // A → B only through policy, one way, on the listed port
        assert_eq!(
            decide_new_flow(side(A, 0), side(B, 0), proto::TCP, 80, a_to_b_tcp_80),
            Reason::Forwarded
        );
        assert_eq!(
            decide_new_flow(side(A, 0), side(B, 0), proto::TCP, 81, a_to_b_tcp_80),
            Reason::Policy
        );
        assert_eq!(
            decide_new_flow(side(A, 0), side(B, 0), proto::UDP, 80, a_to_b_tcp_80),
            Reason::Policy
        );
        assert_eq!(
            decide_new_flow(side(B, 0), side(A, 0), proto::TCP, 80, a_to_b_tcp_80),
            Reason::Policy
        );
        // endpoint → HOST
        assert_eq!(
            decide_new_flow(side(A, 0), side(HOST, 0), proto::TCP, 22, none),
            Reason::HostAccess
        );
        assert_eq!(
            decide_new_flow(
                side(A, identity_flags::ALLOW_HOST),
                side(HOST, 0),
                proto::TCP,
                22,
                none
            ),
            Reason::Forwarded
        );
        // HOST → endpoint
        assert_eq!(
            decide_new_flow(side(HOST, 0), side(A, 0), proto::TCP, 22, none),
            Reason::Forwarded
        );
        // endpoint → WORLD
        assert_eq!(
            decide_new_flow(side(A, 0), side(WORLD, 0), proto::TCP, 443, none),
            Reason::ExternalEgress
        );
        assert_eq!(
            decide_new_flow(
                side(A, identity_flags::ALLOW_EXTERNAL),
                side(WORLD, 0),
                proto::TCP,
                443,
                none
            ),
            Reason::Forwarded
        );
        // WORLD → endpoint
        assert_eq!(
            decide_new_flow(side(WORLD, 0), side(A, 0), proto::TCP, 443, none),
            Reason::ExternalIngress
        );
        assert_eq!(
            decide_new_flow(
                side(WORLD, 0),
                side(A, identity_flags::ALLOW_EXTERNAL_INGRESS),
                proto::TCP,
                443,
                none
            ),
            Reason::Forwarded
        );
        // cluster DNS
        assert_eq!(
            decide_new_flow(side(A, 0), side(DNS, 0), proto::UDP, 53, none),
            Reason::Forwarded
        );
        assert_eq!(
            decide_new_flow(side(A, 0), side(DNS, 0), proto::TCP, 53, none),
            Reason::Forwarded
        );
        assert_eq!(
            decide_new_flow(side(A, 0), side(DNS, 0), proto::UDP, 54, none),
            Reason::Policy
        );
    }

    #[test]
    fn protocol_zero_allows_everything_between_two_identities() {
        let any = |key: &PolicyKey, _: u16| key.protocol == 0 && key.src_identity == A;
        assert_eq!(
            decide_new_flow(side(A, 0), side(B, 0), proto::ICMP, 0, any),
            Reason::Forwarded
        );
        assert_eq!(
            decide_new_flow(side(A, 0), side(B, 0), 47, 0, any),
            Reason::Forwarded
        );
    }

    #[test]
    fn classification_prefers_exact_addresses() {
        let exact = AddrInfo {
            identity: A,
            endpoint_id: 3,
        };
        let cidr = CidrInfo { identity: B };
        assert_eq!(classify(Some(exact), Some(cidr)), A);
        assert_eq!(classify(None, Some(cidr)), B);
        assert_eq!(classify(None, None), WORLD);
    }
}
