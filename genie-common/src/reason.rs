//! The one list of verdict reasons and directions: the eBPF counters are keyed by them and the
//! metrics and `genie inspect` label with [`Reason::name`] and [`Direction::name`].

/// Why a packet got its verdict. `Forwarded` is the only non-drop reason; every drop has its
/// own reason so an operator can tell policy from spoofing from limits (DESIGN.md §3).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The packet passed.
    Forwarded = 0,
    /// genie's program runs on an interface that has no endpoint record: fail closed.
    UnknownEndpoint = 1,
    /// A new flow between two identities that the policy matrix does not allow.
    Policy = 2,
    /// An endpoint opened a flow to a node address without `allowHostAccess` or an allowed
    /// host port.
    HostAccess = 3,
    /// An endpoint opened a flow to an address of no known network without `allowExternal`.
    ExternalEgress = 4,
    /// An address of no known network opened a flow to an endpoint without
    /// `allowExternalIngress`.
    ExternalIngress = 5,
    /// The source IP (or ARP sender IP) is not one of the endpoint's addresses.
    SpoofedIp = 6,
    /// The source MAC (or ARP sender MAC) is not the endpoint's.
    SpoofedMac = 7,
    /// An IP fragment: genie drops fragments rather than let a later fragment, which carries
    /// no ports, pass a port rule (README, "Fragments").
    Fragment = 8,
    /// Truncated or malformed headers.
    Malformed = 9,
    /// An Ethernet type other than IPv4, IPv6 and ARP.
    UnsupportedProtocol = 10,
    /// A tracked connection that a policy change no longer allows (tightening is immediate).
    Revoked = 11,
    /// Over the endpoint's (or its network's) bandwidth limit in this direction.
    RateLimitBandwidth = 12,
    /// A new flow over the endpoint's (or its network's) QPS limit in this direction.
    RateLimitQps = 13,
    /// A broadcast or multicast frame from another identity (the tenant boundary holds for
    /// group traffic too).
    Multicast = 14,
    /// A unicast frame (or ARP/ND message) whose destination address (target) is not the
    /// receiving endpoint's own: it was sent to the endpoint's MAC for someone else.
    WrongDestination = 15,
}

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 16] = [
        Reason::Forwarded,
        Reason::UnknownEndpoint,
        Reason::Policy,
        Reason::HostAccess,
        Reason::ExternalEgress,
        Reason::ExternalIngress,
        Reason::SpoofedIp,
        Reason::SpoofedMac,
        Reason::Fragment,
        Reason::Malformed,
        Reason::UnsupportedProtocol,
        Reason::Revoked,
        Reason::RateLimitBandwidth,
        Reason::RateLimitQps,
        Reason::Multicast,
        Reason::WrongDestination,
    ];

    /// The label used in metrics and inspection output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::UnknownEndpoint => "unknown-endpoint",
            Reason::Policy => "policy",
            Reason::HostAccess => "host-access",
            Reason::ExternalEgress => "external-egress",
            Reason::ExternalIngress => "external-ingress",
            Reason::SpoofedIp => "spoofed-ip",
            Reason::SpoofedMac => "spoofed-mac",
            Reason::Fragment => "fragment",
            Reason::Malformed => "malformed",
            Reason::UnsupportedProtocol => "unsupported-protocol",
            Reason::Revoked => "revoked",
            Reason::RateLimitBandwidth => "rate-limit-bandwidth",
            Reason::RateLimitQps => "rate-limit-qps",
            Reason::Multicast => "multicast",
            Reason::WrongDestination => "wrong-destination",
        }
    }

    /// Whether packets with this reason were dropped.
    pub const fn is_drop(self) -> bool {
        !matches!(self, Reason::Forwarded)
    }

    /// The reason for a raw counter-key byte, if it names one.
    pub const fn from_u8(raw: u8) -> Option<Reason> {
        if (raw as usize) < Self::ALL.len() {
            Some(Self::ALL[raw as usize])
        } else {
            None
        }
    }
}

/// Direction of a packet, seen from the endpoint (the pod interface), not from the host
/// interface the program is attached to: TC ingress on the host side of a veth carries what
/// the pod sends.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Sent by the endpoint.
    Egress = 0,
    /// Delivered to the endpoint.
    Ingress = 1,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    /// The label used in metrics and inspection output.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }

    /// The direction for a raw counter-key byte, if it names one.
    pub const fn from_u8(raw: u8) -> Option<Direction> {
        match raw {
            0 => Some(Direction::Egress),
            1 => Some(Direction::Ingress),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_have_distinct_names() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in discriminant order");
            assert_eq!(Reason::from_u8(*reason as u8), Some(*reason));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(reason.name(), other.name());
            }
        }
        assert_eq!(Reason::from_u8(Reason::ALL.len() as u8), None);
        assert!(!Reason::Forwarded.is_drop());
        assert!(Reason::ALL[1..].iter().all(|r| r.is_drop()));
    }

    #[test]
    fn directions_round_trip() {
        for direction in Direction::ALL {
            assert_eq!(Direction::from_u8(direction as u8), Some(direction));
        }
        assert_eq!(Direction::from_u8(2), None);
    }
}
