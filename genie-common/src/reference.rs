//! The user-space reference model of the dataplane: the same decisions as the eBPF programs,
//! written plainly over ordinary collections. The property test feeds random maps and packets
//! to both and requires the same reason for every packet, so a verifier-shaped shortcut in the
//! programs cannot silently change a verdict.

extern crate alloc;

use alloc::collections::BTreeMap;

use crate::{
    Direction, EndpointInfo, Reason,
    conntrack::{flow_key, timeout_ns},
    maps::{AddrInfo, CidrInfo, CtValue, IpAddr16, PolicyKey, PolicyValue, ct_flags},
    policy::{Side, classify, decide_new_flow, proto},
};

/// A parsed IP packet, as the programs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpMeta {
    pub eth_src: [u8; 6],
    pub src: IpAddr16,
    pub dst: IpAddr16,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub fragment: bool,
    pub is_v6: bool,
    /// For an ICMP error: the (src, dst, sport, dport, protocol) of the packet it quotes.
    pub quoted: Option<(IpAddr16, IpAddr16, u16, u16, u8)>,
}

/// A packet as the programs classify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketMeta {
    Arp {
        eth_src: [u8; 6],
        sender_mac: [u8; 6],
        sender_ip: [u8; 4],
    },
    Ip(IpMeta),
    Other,
}

/// The maps' contents, as plain collections.
#[derive(Clone, Debug, Default)]
pub struct ReferenceDataplane {
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub addrs: BTreeMap<IpAddr16, AddrInfo>,
    /// (prefix length in the 128-bit space, network address) → identity.
    pub cidrs: BTreeMap<(u32, IpAddr16), CidrInfo>,
    /// identity → flags
    pub identity_flags: BTreeMap<u32, u32>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    pub conntrack: BTreeMap<crate::maps::CtKey, CtValue>,
    pub epoch: u32,
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

fn prefix_matches(prefix_len: u32, network: &IpAddr16, addr: &IpAddr16) -> bool {
    let full = (prefix_len / 8) as usize;
    if network.addr[..full] != addr.addr[..full] {
        return false;
    }
    let rest = prefix_len % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    network.addr[full] & mask == addr.addr[full] & mask
}

impl ReferenceDataplane {
    fn longest_prefix(&self, addr: &IpAddr16) -> Option<CidrInfo> {
        self.cidrs
            .iter()
            .filter(|((len, net), _)| prefix_matches(*len, net, addr))
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, info)| *info)
    }

    fn side_of(&self, addr: &IpAddr16) -> Side {
        let exact = self.addrs.get(addr).copied();
        let cidr = if exact.is_some() {
            None
        } else {
            self.longest_prefix(addr)
        };
        let identity = classify(exact, cidr);
        Side {
            identity,
            flags: self.flags(identity),
        }
    }

    fn flags(&self, identity: u32) -> u32 {
        self.identity_flags.get(&identity).copied().unwrap_or(0)
    }

    fn owns(&self, endpoint: &EndpointInfo, addr: &IpAddr16) -> bool {
        self.addrs
            .get(addr)
            .is_some_and(|a| a.endpoint_id == endpoint.endpoint_id)
    }

    fn allowed(&self, key: &PolicyKey, port: u16) -> bool {
        self.policy.get(key).is_some_and(|v| v.allows_port(port))
    }

    /// The reason the program on interface `ifindex` gives `packet` in `direction` at time
    /// `now_ns`, updating conntrack as the program does.
    pub fn decide(
        &mut self,
        ifindex: u32,
        direction: Direction,
        packet: &PacketMeta,
        now_ns: u64,
    ) -> Reason {
        let Some(endpoint) = self.endpoints.get(&ifindex).copied() else {
            return Reason::UnknownEndpoint;
        };
        let mac_ok = |mac: &[u8; 6]| endpoint.mac == [0; 6] || endpoint.mac == *mac;
        let ip = match packet {
            PacketMeta::Other => return Reason::UnsupportedProtocol,
            PacketMeta::Arp {
                eth_src,
                sender_mac,
                sender_ip,
            } => {
                if direction == Direction::Ingress {
                    return Reason::Forwarded;
                }
                if !mac_ok(eth_src) || !mac_ok(sender_mac) {
                    return Reason::SpoofedMac;
                }
                if *sender_ip != [0; 4] && !self.owns(&endpoint, &IpAddr16::from_v4(*sender_ip)) {
                    return Reason::SpoofedIp;
                }
                return Reason::Forwarded;
            }
            PacketMeta::Ip(ip) => *ip,
        };
        let neighbour_discovery =
            ip.is_v6 && ip.protocol == proto::ICMPV6 && matches!(ip.icmp_type, 130..=137 | 143);
        if direction == Direction::Egress {
            if !mac_ok(&ip.eth_src) {
                return Reason::SpoofedMac;
            }
            let a = &ip.src.addr;
            let link_local = (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || a.iter().all(|b| *b == 0);
            let link_local_nd = neighbour_discovery && link_local;
            if !link_local_nd && !self.owns(&endpoint, &ip.src) {
                return Reason::SpoofedIp;
            }
        }
        if neighbour_discovery {
            return Reason::Forwarded;
        }
        if ip.fragment {
            return Reason::Fragment;
        }
        if let Some((src, dst, sport, dport, protocol)) = ip.quoted {
            let (key, _) = flow_key(src, dst, sport, dport, protocol);
            if self.conntrack.get(&key).is_some_and(|ct| {
                now_ns.saturating_sub(ct.last_seen_ns) <= timeout_ns(protocol, ct.flags)
            }) {
                return Reason::Forwarded;
            }
        }
        let (key, src_is_lo) = flow_key(ip.src, ip.dst, ip.sport, ip.dport, ip.protocol);
        let closing = ip.protocol == proto::TCP && ip.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        if let Some(ct) = self.conntrack.get(&key).copied()
            && now_ns.saturating_sub(ct.last_seen_ns) <= timeout_ns(ip.protocol, ct.flags)
        {
            let mut ct = ct;
            if ct.epoch != self.epoch {
                let opened_by_lo = ct.flags & ct_flags::OPENED_BY_LO != 0;
                let (src, dst, dport) = if opened_by_lo {
                    (key.addr_lo, key.addr_hi, key.port_hi)
                } else {
                    (key.addr_hi, key.addr_lo, key.port_lo)
                };
                let reason = decide_new_flow(
                    self.side_of(&src),
                    self.side_of(&dst),
                    ip.protocol,
                    dport,
                    |k, p| self.allowed(k, p),
                );
                if reason.is_drop() {
                    self.conntrack.remove(&key);
                    return Reason::Revoked;
                }
                ct.epoch = self.epoch;
            }
            if closing {
                ct.flags |= ct_flags::CLOSING;
            }
            self.conntrack.insert(key, ct);
            return Reason::Forwarded;
        }
        let endpoint_side = Side {
            identity: endpoint.identity,
            flags: self.flags(endpoint.identity),
        };
        let (src, dst) = match direction {
            Direction::Egress => (endpoint_side, self.side_of(&ip.dst)),
            Direction::Ingress => (self.side_of(&ip.src), endpoint_side),
        };
        let reason = decide_new_flow(src, dst, ip.protocol, ip.dport, |k, p| self.allowed(k, p));
        if !reason.is_drop() {
            let mut flags = if src_is_lo { ct_flags::OPENED_BY_LO } else { 0 };
            if closing {
                flags |= ct_flags::CLOSING;
            }
            self.conntrack.insert(
                key,
                CtValue {
                    last_seen_ns: now_ns,
                    epoch: self.epoch,
                    flags,
                    _pad: [0; 3],
                },
            );
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_bit_by_bit() {
        let net = IpAddr16::from_v4([198, 18, 0, 0]);
        assert!(prefix_matches(
            96 + 15,
            &net,
            &IpAddr16::from_v4([198, 19, 255, 1])
        ));
        assert!(!prefix_matches(
            96 + 16,
            &net,
            &IpAddr16::from_v4([198, 19, 0, 1])
        ));
        assert!(prefix_matches(0, &net, &IpAddr16::from_v6([0x20; 16])));
    }
}
