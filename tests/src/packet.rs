//! Crafted packets, and running a program on them through `BPF_PROG_TEST_RUN`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    TestRunResult,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use genie_agent::netns;

/// `TC_ACT_UNSPEC` (TCX_NEXT) as the test run reports it: genie passes the packet on to the
/// interface's next program.
pub const TC_ACT_NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;

/// Byte offset of `ifindex` in `struct __sk_buff` (uapi/linux/bpf.h).
const SKB_IFINDEX_OFFSET: usize = 40;

/// The transport part of a crafted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by the address family) with a type and an echo identifier.
    Icmp {
        icmp_type: u8,
        id: u16,
    },
    /// An ICMPv6 neighbour solicitation or advertisement (RFC 4861 §4.3, §4.4) for `target`,
    /// with a source/target link-layer address option when `lladdr` is set.
    Nd {
        icmp_type: u8,
        target: std::net::Ipv6Addr,
        lladdr: Option<[u8; 6]>,
    },
    /// Any other protocol, no header.
    Other {
        protocol: u8,
    },
}

/// TCP flag bits.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// ICMP types used by the tests.
pub mod icmp {
    pub const ECHO_REQUEST_V4: u8 = 8;
    pub const ECHO_REPLY_V4: u8 = 0;
    pub const ECHO_REQUEST_V6: u8 = 128;
    pub const ECHO_REPLY_V6: u8 = 129;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOUR_SOLICITATION: u8 = 135;
    pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLD_REPORT_V2: u8 = 143;
}

/// How a crafted IP packet is fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fragment {
    #[default]
    None,
    /// First fragment: offset 0, more fragments follow (carries the L4 header).
    First,
    /// A later fragment: non-zero offset (no L4 header).
    Later,
}

/// A crafted IPv4 or IPv6 packet in an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub fragment: Fragment,
}

impl Packet {
    /// The frame's bytes (IPv4 header checksum valid; L4 checksums are left zero, which the
    /// programs never look at).
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with_payload(&[])
    }

    /// The frame with `payload` after the transport header, every length field counting it
    /// (so a receiving stack delivers it; UDP only gets its length field updated).
    pub fn frame_with_payload(&self, payload: &[u8]) -> Vec<u8> {
        let (protocol, mut l4) = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                (6u8, h)
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8 + 16];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&24u16.to_be_bytes());
                (17, h)
            }
            L4::Icmp { icmp_type, id } => {
                let mut h = vec![0u8; 8 + 16];
                h[0] = icmp_type;
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&1u16.to_be_bytes());
                (if self.src.is_ipv6() { 58 } else { 1 }, h)
            }
            L4::Nd {
                icmp_type,
                target,
                lladdr,
            } => {
                // The fixed part of each message (RFC 4861 §4.1–4.5); the target follows
                // the first four octets where the message has one.
                let fixed = match icmp_type {
                    icmp::ROUTER_SOLICITATION => 8,
                    icmp::ROUTER_ADVERTISEMENT => 16,
                    icmp::REDIRECT => 40,
                    _ => 24,
                };
                let mut h = vec![0u8; fixed];
                h[0] = icmp_type;
                if fixed >= 24 {
                    h[8..24].copy_from_slice(&target.octets());
                }
                if let Some(mac) = lladdr {
                    // Option type 1 (source) for solicitations and router advertisements, 2
                    // (target) for advertisements and redirects; length 1 (8 octets).
                    h.push(match icmp_type {
                        icmp::NEIGHBOUR_ADVERTISEMENT | icmp::REDIRECT => 2,
                        _ => 1,
                    });
                    h.push(1);
                    h.extend_from_slice(&mac);
                }
                (58, h)
            }
            L4::Other { protocol } => (protocol, vec![0u8; 16]),
        };
        if self.fragment == Fragment::Later {
            // A later fragment carries payload, not the transport header.
            l4 = vec![0xabu8; l4.len()];
        }
        if !payload.is_empty() {
            if let L4::Udp { .. } = self.l4 {
                l4.truncate(8);
                l4.extend_from_slice(payload);
                let len = l4.len() as u16;
                l4[4..6].copy_from_slice(&len.to_be_bytes());
            } else {
                l4.extend_from_slice(payload);
            }
        }
        let mut frame = Vec::with_capacity(14 + 60 + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                let frag: u16 = match self.fragment {
                    Fragment::None => 0x4000,  // don't fragment
                    Fragment::First => 0x2000, // more fragments, offset 0
                    Fragment::Later => 0x0003, // offset 3 × 8 bytes, last
                };
                ip[6..8].copy_from_slice(&frag.to_be_bytes());
                ip[8] = 64;
                ip[9] = protocol;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let csum = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&csum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                let (next, extra) = if self.fragment == Fragment::None {
                    (protocol, Vec::new())
                } else {
                    // Fragment header (RFC 8200 §4.5): next header, reserved, offset+M, id.
                    let offset_m: u16 = if self.fragment == Fragment::First {
                        0x0001
                    } else {
                        3 << 3
                    };
                    let mut fh = vec![protocol, 0];
                    fh.extend_from_slice(&offset_m.to_be_bytes());
                    fh.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                    (44, fh)
                };
                ip[4..6].copy_from_slice(&((extra.len() + l4.len()) as u16).to_be_bytes());
                ip[6] = next;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
                frame.extend_from_slice(&extra);
            }
            _ => panic!("source and destination must be of one family"),
        }
        frame.extend_from_slice(&l4);
        frame
    }

    /// The same packet in the other direction (addresses, MACs and ports swapped; an echo
    /// request becomes its reply).
    pub fn reply(&self) -> Packet {
        let l4 = match self.l4 {
            L4::Tcp { sport, dport, .. } => L4::Tcp {
                sport: dport,
                dport: sport,
                flags: tcp::SYN | tcp::ACK,
            },
            L4::Udp { sport, dport } => L4::Udp {
                sport: dport,
                dport: sport,
            },
            L4::Icmp { icmp_type, id } => L4::Icmp {
                icmp_type: match icmp_type {
                    icmp::ECHO_REQUEST_V4 => icmp::ECHO_REPLY_V4,
                    icmp::ECHO_REQUEST_V6 => icmp::ECHO_REPLY_V6,
                    other => other,
                },
                id,
            },
            other => other,
        };
        Packet {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src: self.dst,
            dst: self.src,
            l4,
            fragment: self.fragment,
        }
    }
}

/// An ICMP error from `src` to `dst` about `quoted` (a packet `dst` sent): IPv4 "fragmentation
/// needed" (type 3 code 4) or IPv6 "packet too big" (type 2), quoting the IP header and the
/// first 8 transport bytes, as routers do for path MTU discovery.
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    quoted: &Packet,
) -> Vec<u8> {
    let inner = quoted.frame();
    let ip_len = if quoted.src.is_ipv6() { 40 } else { 20 };
    let quote = &inner[14..(14 + ip_len + 8).min(inner.len())];
    let mut icmp = vec![0u8; 8];
    if src.is_ipv6() {
        icmp[0] = 2;
        icmp[4..8].copy_from_slice(&1280u32.to_be_bytes());
    } else {
        icmp[0] = 3;
        icmp[1] = 4;
        icmp[6..8].copy_from_slice(&1400u16.to_be_bytes());
    }
    icmp.extend_from_slice(quote);
    let outer = Packet {
        src_mac,
        dst_mac,
        src,
        dst,
        l4: L4::Other {
            protocol: if src.is_ipv6() { 58 } else { 1 },
        },
        fragment: Fragment::None,
    };
    let mut frame = outer.frame();
    // Replace the placeholder payload of `L4::Other` with the ICMP message.
    let header_end = frame.len() - 16;
    frame.truncate(header_end);
    frame.extend_from_slice(&icmp);
    if src.is_ipv6() {
        frame[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
    } else {
        frame[16..18].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let csum = checksum(&frame[14..34], 0);
        frame[24..26].copy_from_slice(&csum.to_be_bytes());
    }
    frame
}

/// An ARP request (RFC 826) from `sender_mac`/`sender_ip` for `target_ip`.
pub fn arp_request(
    eth_src: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&eth_src);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender_mac);
    frame.extend_from_slice(&sender_ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target_ip.octets());
    frame
}

/// A frame of another Ethernet type (LLDP).
pub fn lldp(eth_src: [u8; 6]) -> Vec<u8> {
    let mut frame = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    frame.extend_from_slice(&eth_src);
    frame.extend_from_slice(&0x88ccu16.to_be_bytes());
    frame.extend_from_slice(&[0u8; 46]);
    frame
}

/// An Ethernet + IPv4 + UDP frame with valid checksums.
pub fn ipv4_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total_len = 20 + udp_len;
    let mut frame = Vec::with_capacity(14 + total_len);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&ip);

    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = 0u32;
    for chunk in [&src.octets()[..], &dst.octets()[..]] {
        pseudo += sum_words(chunk);
    }
    pseudo += 17 + udp_len as u32;
    let csum = match checksum(&udp, pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&udp);
    frame
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_words(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs a TC program once (or `repeat` times) on `frame`, as if it arrived on the interface
/// with index `ifindex` inside the namespace at `netns_path` (the kernel resolves the index in
/// the caller's namespace, so the run happens on a thread inside it).
pub fn run_tc(
    program: &SchedClassifier,
    netns_path: &Path,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunResult> {
    let mut ctx = [0u8; SKB_IFINDEX_OFFSET + 4];
    ctx[SKB_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    netns::run_in(netns_path, || {
        program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
    })?
    .context("BPF_PROG_TEST_RUN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let frame = ipv4_udp(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 0, 11),
            Ipv4Addr::new(198, 18, 0, 12),
            1000,
            2000,
            b"hello",
        );
        assert_eq!(frame.len(), 14 + 20 + 8 + 5);
        // A correct header sums to 0xffff including its checksum.
        assert_eq!(checksum(&frame[14..34], 0), 0);
        // And so does the UDP segment with its pseudo-header.
        let pseudo = sum_words(&frame[26..34]) + 17 + 13;
        assert_eq!(checksum(&frame[34..], pseudo), 0);
    }
}
