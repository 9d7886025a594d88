//! The reference model of genie's per-packet decision, written from the README's table and its
//! "Limits" section — deliberately without any of the kernel's rule code (`genie_common`'s
//! `policy`, `conntrack` and `ratelimit` helpers): a rule bug in those would otherwise be in
//! both, and a property test comparing them could not see it. It keeps its own connection
//! tables (one per tenant zone), its own clock (flows age when the test says so) and its own
//! buckets (limits without refill: a test case lasts milliseconds, far less than a unit at the
//! rates the property test configures).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use genie_common::Reason;
use ipnet::IpNet;

/// Idle timeouts as the README states them, in seconds.
pub const TCP_IDLE: u64 = 7200;
pub const TCP_CLOSING_IDLE: u64 = 10;
pub const UDP_IDLE: u64 = 120;
pub const OTHER_IDLE: u64 = 30;

/// What a class of addresses is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A (tenant, network) identity.
    Identity(u32),
    Host,
    World,
    Dns,
    Broadcast,
}

/// One pod interface.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: u32,
    pub identity: u32,
    /// `None`: the MAC is not checked.
    pub mac: Option<[u8; 6]>,
    pub zone: u32,
    /// Group traffic it sends reaches the node's stack directly (no bridge).
    pub group_to_host: bool,
    /// New flows it may open / accept (egress, ingress) before its QPS bucket is empty.
    pub flows: [Option<u64>; 2],
    /// Bytes it may send / receive before its bandwidth bucket is empty.
    pub bytes: [Option<u64>; 2],
}

/// The isolation flags of an identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub host: bool,
    pub external: bool,
    pub external_ingress: bool,
}

/// "`src` may open flows to `dst`": a protocol (`None`: all) and, for it, port ranges
/// (empty: all ports).
#[derive(Debug, Clone)]
pub struct Rule {
    pub src: Class,
    pub dst: Class,
    pub protocol: Option<u8>,
    pub ports: Vec<(u16, u16)>,
}

/// A frame as the test built it.
#[derive(Debug, Clone)]
pub enum Frame {
    Arp {
        eth_src: [u8; 6],
        sender_mac: [u8; 6],
        sender: Ipv4Addr,
        target: Ipv4Addr,
        /// Bytes of the whole frame.
        len: u64,
    },
    Ip(IpFrame),
    /// Any other Ethernet type.
    Other,
}

/// An IP packet's fields the decision depends on.
#[derive(Debug, Clone)]
pub struct IpFrame {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Ports, or the echo identifier on both sides for ICMP echo; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    pub fin_or_rst: bool,
    pub icmp_type: Option<u8>,
    pub fragment: bool,
    /// The target and link-layer option of a neighbour solicitation or advertisement.
    pub nd_target: Option<IpAddr>,
    pub nd_lladdr: Option<[u8; 6]>,
    /// For an ICMP error: the (src, dst, sport, dport, protocol) it quotes.
    pub quoted: Option<(IpAddr, IpAddr, u16, u16, u8)>,
    /// Bytes of the whole frame.
    pub len: u64,
}

/// A tracked flow.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// The (address, port) that opened it.
    opener: (IpAddr, u16),
    /// Seconds since its last packet, as aged by the test.
    idle: u64,
    closing: bool,
    epoch: u32,
    ingress_admitted: bool,
}

/// A flow without direction: both ends (sorted) and the protocol.
type FlowKey = ((IpAddr, u16), (IpAddr, u16), u8);

fn flow_key(src: (IpAddr, u16), dst: (IpAddr, u16), protocol: u8) -> FlowKey {
    if src <= dst {
        (src, dst, protocol)
    } else {
        (dst, src, protocol)
    }
}

/// The model: configuration plus its own state.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// By the interface index the program runs on.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// Exact addresses: endpoint addresses (with their owner), DNS, directed broadcasts.
    pub exact: BTreeMap<IpAddr, (Class, Option<u32>)>,
    /// Prefixes: subnets and node addresses.
    pub prefixes: Vec<(IpNet, Class)>,
    pub flags: BTreeMap<u32, Flags>,
    pub rules: Vec<Rule>,
    pub epoch: u32,
    tables: BTreeMap<u32, BTreeMap<FlowKey, Tracked>>,
    /// Units taken from each (endpoint id, bytes?, direction) bucket.
    taken: BTreeMap<(u32, bool, u8), u64>,
}

fn is_group(ip: &IpFrame) -> bool {
    ip.eth_dst[0] & 1 == 1
        || match ip.dst {
            IpAddr::V4(v4) => v4.is_multicast() || v4 == Ipv4Addr::BROADCAST,
            IpAddr::V6(v6) => v6.is_multicast(),
        }
}

fn idle_limit(protocol: u8, closing: bool) -> u64 {
    match protocol {
        6 if closing => TCP_CLOSING_IDLE,
        6 => TCP_IDLE,
        17 => UDP_IDLE,
        _ => OTHER_IDLE,
    }
}

impl Model {
    /// Every tracked flow gets `seconds` older.
    pub fn age(&mut self, seconds: u64) {
        for table in self.tables.values_mut() {
            for flow in table.values_mut() {
                flow.idle += seconds;
            }
        }
    }

    /// Forgets every tracked flow.
    pub fn forget_flows(&mut self) {
        self.tables.clear();
    }

    /// The class of an address: an exact entry, else the longest prefix, else WORLD.
    pub fn classify(&self, addr: IpAddr) -> Class {
        if let Some((class, _)) = self.exact.get(&addr) {
            return *class;
        }
        self.prefixes
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(Class::World, |(_, class)| *class)
    }

    fn owns(&self, endpoint: &Endpoint, addr: IpAddr) -> bool {
        self.exact.get(&addr).and_then(|(_, owner)| *owner) == Some(endpoint.id)
    }

    fn mac_ok(endpoint: &Endpoint, mac: [u8; 6]) -> bool {
        endpoint.mac.is_none_or(|m| m == mac)
    }

    fn flags_of(&self, class: Class) -> Flags {
        match class {
            Class::Identity(id) => self.flags.get(&id).copied().unwrap_or_default(),
            _ => Flags::default(),
        }
    }

    fn rule_allows(&self, src: Class, dst: Class, protocol: u8, port: u16) -> bool {
        self.rules.iter().any(|r| {
            r.src == src
                && r.dst == dst
                && r.protocol.is_none_or(|p| p == protocol)
                && (r.protocol.is_none()
                    || r.ports.is_empty()
                    || r.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)))
        })
    }

    /// The README's table for a flow that is not tracked.
    fn new_flow(&self, src: Class, dst: Class, protocol: u8, port: u16) -> Reason {
        if src == dst && matches!(src, Class::Identity(_)) {
            return Reason::Forwarded;
        }
        if src == Class::Host {
            return Reason::Forwarded;
        }
        if dst == Class::Dns && port == 53 && matches!(protocol, 6 | 17) {
            return Reason::Forwarded;
        }
        match (src, dst) {
            (_, Class::Host) => {
                if self.flags_of(src).host || self.rule_allows(src, Class::Host, protocol, port) {
                    Reason::Forwarded
                } else {
                    Reason::HostAccess
                }
            }
            (_, Class::World) => {
                if self.flags_of(src).external {
                    Reason::Forwarded
                } else {
                    Reason::ExternalEgress
                }
            }
            (Class::World, _) => {
                if self.flags_of(dst).external_ingress {
                    Reason::Forwarded
                } else {
                    Reason::ExternalIngress
                }
            }
            _ => {
                if self.rule_allows(src, dst, protocol, port) {
                    Reason::Forwarded
                } else {
                    Reason::Policy
                }
            }
        }
    }

    /// Takes `units` from a bucket if they fit.
    fn take(&mut self, endpoint: &Endpoint, bytes: bool, direction: u8, units: u64) -> bool {
        let limit = if bytes {
            endpoint.bytes[direction as usize]
        } else {
            endpoint.flows[direction as usize]
        };
        let Some(limit) = limit else {
            return true;
        };
        let taken = self
            .taken
            .entry((endpoint.id, bytes, direction))
            .or_default();
        if *taken + units > limit {
            return false;
        }
        *taken += units;
        true
    }

    /// Broadcast and multicast (README: delivered only within the sender's identity, to the
    /// node only under host access).
    fn group(&self, endpoint: &Endpoint, ip: &IpFrame, direction: u8) -> Reason {
        let own = Class::Identity(endpoint.identity);
        if direction == 0 {
            if !endpoint.group_to_host {
                return Reason::Forwarded;
            }
            return self.new_flow(own, Class::Host, ip.protocol, ip.dport);
        }
        match self.classify(ip.src) {
            c if c == own || c == Class::Host => Reason::Forwarded,
            Class::World if self.flags_of(own).external_ingress => Reason::Forwarded,
            _ => Reason::Multicast,
        }
    }

    /// The verdict for `frame` on the interface with index `ifindex`, in `direction` (0: what
    /// the endpoint sends, 1: what it receives).
    pub fn decide(&mut self, ifindex: u32, direction: u8, frame: &Frame) -> Reason {
        let Some(endpoint) = self.endpoints.get(&ifindex).cloned() else {
            return Reason::UnknownEndpoint;
        };
        let (reason, len) = match frame {
            Frame::Other => (Reason::UnsupportedProtocol, 0),
            Frame::Arp {
                eth_src,
                sender_mac,
                sender,
                target,
                len,
            } => (
                self.arp(
                    &endpoint,
                    direction,
                    *eth_src,
                    *sender_mac,
                    *sender,
                    *target,
                ),
                *len,
            ),
            Frame::Ip(ip) => (self.ip(&endpoint, direction, ip), ip.len),
        };
        if reason == Reason::Forwarded && !self.take(&endpoint, true, direction, len) {
            return Reason::RateLimitBandwidth;
        }
        reason
    }

    fn arp(
        &self,
        endpoint: &Endpoint,
        direction: u8,
        eth_src: [u8; 6],
        sender_mac: [u8; 6],
        sender: Ipv4Addr,
        target: Ipv4Addr,
    ) -> Reason {
        if direction == 1 {
            return if self.owns(endpoint, IpAddr::V4(target))
                || self.classify(IpAddr::V4(sender)) == Class::Host
            {
                Reason::Forwarded
            } else {
                Reason::WrongDestination
            };
        }
        if !Self::mac_ok(endpoint, eth_src) || !Self::mac_ok(endpoint, sender_mac) {
            return Reason::SpoofedMac;
        }
        if !sender.is_unspecified() && !self.owns(endpoint, IpAddr::V4(sender)) {
            return Reason::SpoofedIp;
        }
        Reason::Forwarded
    }

    fn ip(&mut self, endpoint: &Endpoint, direction: u8, ip: &IpFrame) -> Reason {
        let nd = ip.dst.is_ipv6()
            && ip.protocol == 58
            && ip.icmp_type.is_some_and(|t| matches!(t, 130..=137 | 143));
        if direction == 0 {
            if !Self::mac_ok(endpoint, ip.eth_src) {
                return Reason::SpoofedMac;
            }
            if nd {
                if !ip.src.is_unspecified() && !self.owns(endpoint, ip.src) {
                    return Reason::SpoofedIp;
                }
                if ip.icmp_type == Some(136)
                    && !ip.nd_target.is_some_and(|t| self.owns(endpoint, t))
                {
                    return Reason::SpoofedIp;
                }
                if ip.nd_lladdr.is_some_and(|mac| !Self::mac_ok(endpoint, mac)) {
                    return Reason::SpoofedMac;
                }
                return Reason::Forwarded;
            }
            if !self.owns(endpoint, ip.src) {
                return Reason::SpoofedIp;
            }
        } else if nd {
            let source = self.classify(ip.src);
            if source == Class::Host {
                return Reason::Forwarded;
            }
            if ip.icmp_type == Some(135) {
                return if ip.nd_target.is_some_and(|t| self.owns(endpoint, t)) {
                    Reason::Forwarded
                } else {
                    Reason::WrongDestination
                };
            }
            // The README: advertisements answer to the pod's own addresses from anyone (the
            // sender's egress vouched for them); everything else only from its own identity.
            let own = source == Class::Identity(endpoint.identity);
            return match (is_group(ip), own) {
                (false, _) if !self.owns(endpoint, ip.dst) => Reason::WrongDestination,
                (false, _) if ip.icmp_type == Some(136) => Reason::Forwarded,
                (_, true) => Reason::Forwarded,
                (false, false) => Reason::Policy,
                (true, false) => Reason::Multicast,
            };
        }
        if ip.fragment {
            return Reason::Fragment;
        }
        if is_group(ip) {
            return self.group(endpoint, ip, direction);
        }
        if direction == 1 && !self.owns(endpoint, ip.dst) {
            return if self.classify(ip.dst) == Class::Broadcast {
                self.group(endpoint, ip, direction)
            } else {
                Reason::WrongDestination
            };
        }
        let zone = endpoint.zone;
        if let Some((q_src, q_dst, q_sport, q_dport, q_protocol)) = ip.quoted {
            let key = flow_key((q_src, q_sport), (q_dst, q_dport), q_protocol);
            let live = self
                .tables
                .get(&zone)
                .and_then(|t| t.get(&key))
                .is_some_and(|f| f.idle <= idle_limit(q_protocol, f.closing));
            if live {
                return Reason::Forwarded;
            }
        }
        let key = flow_key((ip.src, ip.sport), (ip.dst, ip.dport), ip.protocol);
        let tracked = self
            .tables
            .get(&zone)
            .and_then(|t| t.get(&key))
            .copied()
            .filter(|f| f.idle <= idle_limit(ip.protocol, f.closing));
        if let Some(mut flow) = tracked {
            if flow.epoch != self.epoch {
                // Tightening is immediate: the flow is decided again as its opener.
                let (opener, other) = if flow.opener == key.0 {
                    (key.0, key.1)
                } else {
                    (key.1, key.0)
                };
                let verdict = self.new_flow(
                    self.classify(opener.0),
                    self.classify(other.0),
                    ip.protocol,
                    other.1,
                );
                if verdict != Reason::Forwarded {
                    self.tables.entry(zone).or_default().remove(&key);
                    return Reason::Revoked;
                }
                flow.epoch = self.epoch;
            }
            flow.idle = 0;
            if ip.fin_or_rst {
                flow.closing = true;
            }
            let opening_direction = flow.opener == (ip.src, ip.sport);
            if direction == 1 && opening_direction && !flow.ingress_admitted {
                flow.ingress_admitted = true;
                if !self.take(endpoint, false, 1, 1) {
                    self.tables.entry(zone).or_default().remove(&key);
                    return Reason::RateLimitQps;
                }
            }
            self.tables.entry(zone).or_default().insert(key, flow);
            return Reason::Forwarded;
        }
        let own = Class::Identity(endpoint.identity);
        let (src, dst) = if direction == 0 {
            (own, self.classify(ip.dst))
        } else {
            (self.classify(ip.src), own)
        };
        if dst == Class::Broadcast {
            return self.group(endpoint, ip, direction);
        }
        let verdict = self.new_flow(src, dst, ip.protocol, ip.dport);
        if verdict != Reason::Forwarded {
            return verdict;
        }
        if !self.take(endpoint, false, direction, 1) {
            return Reason::RateLimitQps;
        }
        self.tables.entry(zone).or_default().insert(
            key,
            Tracked {
                opener: (ip.src, ip.sport),
                idle: 0,
                closing: ip.fin_or_rst,
                epoch: self.epoch,
                ingress_admitted: direction == 1,
            },
        );
        Reason::Forwarded
    }
}
