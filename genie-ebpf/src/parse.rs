//! Header parsing with direct packet access: headers are read in place, bounds-checked
//! against `data_end`, which costs far less per packet than copying them out with
//! `bpf_skb_load_bytes`. Headers that are not in the linear part of the buffer (some GSO
//! packets) are pulled in first.

use aya_ebpf::programs::TcContext;
use genie_common::{maps::IpAddr16, policy::proto};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// IPv6 extension headers genie walks through before giving up (RFC 8200 §4.1 order).
const MAX_IPV6_EXTENSIONS: usize = 6;

/// Kinds of packet [`parse`] reports.
pub const KIND_MALFORMED: u8 = 0;
pub const KIND_IP: u8 = 1;
pub const KIND_ARP: u8 = 2;
pub const KIND_OTHER: u8 = 3;

#[derive(Default)]
pub struct Arp {
    pub eth_src: [u8; 6],
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    /// The address asked about (request) or answered to (reply).
    pub target_ip: [u8; 4],
}

/// A parsed IP packet. Lives in the per-CPU scratch map, not on the stack.
#[repr(C)]
pub struct Ip {
    pub src: IpAddr16,
    pub dst: IpAddr16,
    pub eth_src: [u8; 6],
    /// Source port, or the echo identifier for ICMP echo; 0 otherwise.
    pub sport: u16,
    /// Destination port, or the echo identifier for ICMP echo; 0 otherwise.
    pub dport: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// 1 for any IP fragment (first or later).
    pub fragment: u8,
    /// 1 for IPv6.
    pub is_v6: u8,
    /// 1 for an ICMP error whose quoted packet was parsed into `quoted`.
    pub related: u8,
    /// 1 when the Ethernet destination is a group address (broadcast or multicast, the I/G bit
    /// of IEEE 802 §8.2).
    pub l2_group: u8,
    /// 1 when an ND message carried a link-layer address option; the address is in
    /// `nd_lladdr`.
    pub nd_has_lladdr: u8,
    /// 1 when an ND message has more options than genie reads: one of them could carry a
    /// link-layer address nobody checked.
    pub nd_options_unread: u8,
    pub _pad: u8,
    /// The target of a neighbour solicitation or advertisement, or of a redirect (RFC 4861
    /// §4.3–4.5).
    pub nd_target: IpAddr16,
    /// The source/target link-layer address option of an ND message (RFC 4861 §4.6.1).
    pub nd_lladdr: [u8; 6],
    pub _pad2: [u8; 2],
    /// The flow an ICMP error quotes (destination unreachable, packet too big, time exceeded,
    /// parameter problem): its reply is allowed when that flow is tracked.
    pub quoted: Quoted,
}

/// The addresses, ports and protocol of a packet quoted inside an ICMP error.
#[repr(C)]
pub struct Quoted {
    pub src: IpAddr16,
    pub dst: IpAddr16,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// Bytes every decision may need: Ethernet, an IPv6 header with a few extension headers, and
/// the transport ports or an ICMP error's quote.
const LINEAR_WANTED: u32 = 192;

/// The packet's start and end, read from the context where they are used: LLVM would
/// otherwise hoist the loads into callers and pass them as (zero-extended) arguments, and the
/// verifier rejects any arithmetic on the end pointer.
#[inline(always)]
fn packet_bounds(ctx: &TcContext) -> (usize, usize) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context the kernel passed in; `data` and `data_end` are readable in
    // TC programs. Volatile keeps each read in this function.
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).data) as usize,
            core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
        )
    }
}

/// `N` bytes of the packet at `offset`, in place, or `None` past its end.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Option<&[u8; N]> {
    let (start, end) = packet_bounds(ctx);
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the verifier-checked range [start + offset, start + offset + N) lies inside the
    // packet; the reference lives only while this program run does.
    Some(unsafe { &*((start + offset) as *const [u8; N]) })
}

/// Parses the frame: IP packets into `ip`, ARP into `arp`. Returns one of the `KIND_*`.
#[inline(always)]
pub fn parse(ctx: &TcContext, ip: &mut Ip, arp: &mut Arp) -> u8 {
    let wanted = ctx.len().min(LINEAR_WANTED);
    let (start, end) = packet_bounds(ctx);
    if start + wanted as usize > end {
        // Best effort: what stays out of reach is reported as malformed below.
        let _ = ctx.pull_data(wanted);
    }
    let Some(eth) = bytes::<ETH_HLEN>(ctx, 0) else {
        return KIND_MALFORMED;
    };
    let mut eth_src = [0u8; 6];
    eth_src.copy_from_slice(&eth[6..12]);
    let l2_group = eth[0] & 1;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    match ethertype {
        ETH_P_ARP => {
            if parse_arp(ctx, eth_src, arp).is_ok() {
                KIND_ARP
            } else {
                KIND_MALFORMED
            }
        }
        ETH_P_IP | ETH_P_IPV6 => {
            ip.eth_src = eth_src;
            ip.sport = 0;
            ip.dport = 0;
            ip.tcp_flags = 0;
            ip.icmp_type = 0;
            ip.fragment = 0;
            ip.related = 0;
            ip.l2_group = l2_group;
            ip.nd_has_lladdr = 0;
            ip.nd_options_unread = 0;
            let status = if ethertype == ETH_P_IP {
                parse_ipv4(ctx, ip)
            } else {
                parse_ipv6(ctx, ip)
            };
            if status == OK {
                KIND_IP
            } else {
                KIND_MALFORMED
            }
        }
        _ => KIND_OTHER,
    }
}

#[inline(always)]
fn parse_arp(ctx: &TcContext, eth_src: [u8; 6], out: &mut Arp) -> Result<(), ()> {
    let arp = bytes::<28>(ctx, ETH_HLEN).ok_or(())?;
    // Ethernet/IPv4 ARP only (RFC 826): hardware type 1, protocol 0x0800, lengths 6 and 4.
    if arp[0..2] != [0, 1] || arp[2..4] != [0x08, 0x00] || arp[4] != 6 || arp[5] != 4 {
        return Err(());
    }
    out.eth_src = eth_src;
    out.sender_mac.copy_from_slice(&arp[8..14]);
    out.sender_ip.copy_from_slice(&arp[14..18]);
    out.target_ip.copy_from_slice(&arp[24..28]);
    Ok(())
}

/// Status of the non-inlined parsers. They return a plain integer and write through a
/// pointer: a Rust enum in a BPF function's signature becomes BTF the kernel rejects (a union
/// member at a non-zero offset), and then no map gets its BTF.
const OK: i32 = 0;
const MALFORMED: i32 = -1;

// Not inlined: each parser's header buffer lives in its own stack frame, which keeps the
// program's deepest frame within the 512-byte BPF stack.
#[inline(never)]
fn parse_ipv4(ctx: &TcContext, ip: &mut Ip) -> i32 {
    let Some(h) = bytes::<20>(ctx, ETH_HLEN) else {
        return MALFORMED;
    };
    let ihl = (h[0] & 0x0f) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return MALFORMED;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    // More-fragments flag or a non-zero offset (RFC 791).
    ip.fragment = u8::from(frag & 0x3fff != 0);
    ip.src = IpAddr16::from_v4([h[12], h[13], h[14], h[15]]);
    ip.dst = IpAddr16::from_v4([h[16], h[17], h[18], h[19]]);
    ip.protocol = h[9];
    ip.is_v6 = 0;
    if ip.fragment != 0 {
        return OK;
    }
    parse_l4(ctx, ETH_HLEN + ihl * 4, ip)
}

#[inline(never)]
fn parse_ipv6(ctx: &TcContext, ip: &mut Ip) -> i32 {
    let Some(h) = bytes::<40>(ctx, ETH_HLEN) else {
        return MALFORMED;
    };
    if h[0] >> 4 != 6 {
        return MALFORMED;
    }
    ip.src = v6_at(h, 8);
    ip.dst = v6_at(h, 24);
    ip.is_v6 = 1;
    let mut next = h[6];
    let mut offset = ETH_HLEN + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            0 | 43 | 60 => {
                let Some(ext) = bytes::<2>(ctx, offset & 0x3ff) else {
                    return MALFORMED;
                };
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            // Authentication header: length in 4-octet units, minus two (RFC 4302).
            51 => {
                let Some(ext) = bytes::<2>(ctx, offset & 0x3ff) else {
                    return MALFORMED;
                };
                next = ext[0];
                offset += (ext[1] as usize + 2) * 4;
            }
            44 => {
                ip.fragment = 1;
                break;
            }
            _ => break,
        }
    }
    ip.protocol = next;
    if ip.fragment != 0 {
        return OK;
    }
    // Still an extension header after the walk: too deep to trust.
    if matches!(next, 0 | 43 | 60 | 51) {
        return MALFORMED;
    }
    parse_l4(ctx, offset & 0x3ff, ip)
}

#[inline(never)]
fn parse_l4(ctx: &TcContext, offset: usize, ip: &mut Ip) -> i32 {
    match ip.protocol {
        proto::TCP => {
            let Some(t) = bytes::<14>(ctx, offset & 0x3ff) else {
                return MALFORMED;
            };
            ip.sport = u16::from_be_bytes([t[0], t[1]]);
            ip.dport = u16::from_be_bytes([t[2], t[3]]);
            ip.tcp_flags = t[13];
        }
        proto::UDP | proto::SCTP => {
            let Some(u) = bytes::<4>(ctx, offset & 0x3ff) else {
                return MALFORMED;
            };
            ip.sport = u16::from_be_bytes([u[0], u[1]]);
            ip.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(c) = bytes::<8>(ctx, offset & 0x3ff) else {
                return MALFORMED;
            };
            ip.icmp_type = c[0];
            if is_echo(ip.protocol, c[0]) {
                // Request and reply carry the same identifier: it plays the port on both
                // sides, so the reply finds the request's conntrack entry.
                let id = u16::from_be_bytes([c[4], c[5]]);
                ip.sport = id;
                ip.dport = id;
            } else if is_error(ip.protocol, c[0]) && parse_quoted(ctx, offset + 8, ip) == OK {
                ip.related = 1;
            } else if ip.protocol == proto::ICMPV6
                && (ND_ROUTER_SOLICITATION..=ND_REDIRECT).contains(&c[0])
                && parse_nd(ctx, offset, c[0], ip) != OK
            {
                return MALFORMED;
            }
        }
        _ => {}
    }
    OK
}

/// The ND messages (RFC 4861 §4): router solicitation and advertisement, neighbour
/// solicitation and advertisement, redirect.
pub const ND_ROUTER_SOLICITATION: u8 = 133;
pub const ND_ROUTER_ADVERTISEMENT: u8 = 134;
pub const ND_SOLICITATION: u8 = 135;
pub const ND_ADVERTISEMENT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;

/// Options of an ND message looked at for a link-layer address. A router advertisement
/// carries a few (source address, MTU, prefixes, RDNSS); a message with more is marked
/// `nd_options_unread`, so a sender cannot hide a foreign MAC behind options genie skips.
const MAX_ND_OPTIONS: usize = 8;

/// The target address of an ND message of type `kind` at `offset` (the ICMPv6 header), where
/// it has one, and its link-layer address option, if any. Options start after the message's
/// fixed part (RFC 4861 §4.1–4.5); an option of length 0 is invalid (§4.6) and fails the
/// packet.
#[inline(never)]
fn parse_nd(ctx: &TcContext, offset: usize, kind: u8, ip: &mut Ip) -> i32 {
    let options = match kind {
        ND_ROUTER_SOLICITATION => 8,
        ND_ROUTER_ADVERTISEMENT => 16,
        ND_SOLICITATION | ND_ADVERTISEMENT => 24,
        _ => 40,
    };
    if kind >= ND_SOLICITATION {
        let Some(t) = bytes::<24>(ctx, offset & 0x3ff) else {
            return MALFORMED;
        };
        ip.nd_target = v6_at(t, 8);
    }
    let mut at = offset + options;
    for _ in 0..MAX_ND_OPTIONS {
        let Some(head) = bytes::<8>(ctx, at & 0x3ff) else {
            // No further option in the packet.
            return OK;
        };
        let len = head[1] as usize;
        if len == 0 {
            return MALFORMED;
        }
        // Source (1) or target (2) link-layer address, 8 octets on Ethernet.
        if (head[0] == 1 || head[0] == 2) && len == 1 {
            ip.nd_lladdr.copy_from_slice(&head[2..8]);
            ip.nd_has_lladdr = 1;
        }
        at += len * 8;
    }
    if bytes::<8>(ctx, at & 0x3ff).is_some() {
        ip.nd_options_unread = 1;
    }
    OK
}

/// Whether an address is an IPv4 multicast (224.0.0.0/4), the IPv4 limited broadcast
/// (255.255.255.255) or an IPv6 multicast (ff00::/8) address.
#[inline(always)]
pub fn is_group_address(addr: &IpAddr16) -> bool {
    let a = &addr.addr;
    if addr.is_v4() {
        a[12] & 0xf0 == 0xe0 || (a[12] == 0xff && a[13] == 0xff && a[14] == 0xff && a[15] == 0xff)
    } else {
        a[0] == 0xff
    }
}

/// The IPv6 address at `at` of a header, read as four words.
#[inline(always)]
fn v6_at<const N: usize>(h: &[u8; N], at: usize) -> IpAddr16 {
    let mut out = IpAddr16::default();
    let src = h[at..at + 16].as_ptr().cast::<u32>();
    let dst = out.addr.as_mut_ptr().cast::<u32>();
    for i in 0..4 {
        // SAFETY: 16 readable bytes at `at` (the slice above is bounds-checked) and 16
        // writable bytes in `out`; unaligned accesses need no alignment.
        unsafe { dst.add(i).write_unaligned(src.add(i).read_unaligned()) };
    }
    out
}

/// ICMP errors that quote the packet they are about: destination unreachable (with
/// fragmentation needed), time exceeded, parameter problem (RFC 792 types 3, 11, 12), and
/// their ICMPv6 counterparts including packet too big (RFC 4443 types 1–4). Path MTU discovery
/// depends on them reaching the sender.
#[inline(always)]
fn is_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        proto::ICMP => matches!(icmp_type, 3 | 11 | 12),
        _ => matches!(icmp_type, 1..=4),
    }
}

/// Parses the IP header and the first transport bytes an ICMP error quotes at `offset`.
#[inline(never)]
fn parse_quoted(ctx: &TcContext, offset: usize, ip: &mut Ip) -> i32 {
    let q = &mut ip.quoted;
    let l4_offset = if ip.is_v6 == 0 {
        let Some(h) = bytes::<20>(ctx, offset & 0x3ff) else {
            return MALFORMED;
        };
        let ihl = (h[0] & 0x0f) as usize;
        if h[0] >> 4 != 4 || ihl < 5 {
            return MALFORMED;
        }
        q.src = IpAddr16::from_v4([h[12], h[13], h[14], h[15]]);
        q.dst = IpAddr16::from_v4([h[16], h[17], h[18], h[19]]);
        q.protocol = h[9];
        offset + ihl * 4
    } else {
        let Some(h) = bytes::<40>(ctx, offset & 0x3ff) else {
            return MALFORMED;
        };
        if h[0] >> 4 != 6 {
            return MALFORMED;
        }
        q.src = v6_at(h, 8);
        q.dst = v6_at(h, 24);
        // Extension headers in a quoted packet are not followed: such errors are then not
        // recognised as related and are decided as ordinary ICMP.
        q.protocol = h[6];
        offset + 40
    };
    let Some(t) = bytes::<8>(ctx, l4_offset & 0x3ff) else {
        return MALFORMED;
    };
    match q.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            q.sport = u16::from_be_bytes([t[0], t[1]]);
            q.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        proto::ICMP | proto::ICMPV6 if is_echo(q.protocol, t[0]) => {
            let id = u16::from_be_bytes([t[4], t[5]]);
            q.sport = id;
            q.dport = id;
        }
        _ => return MALFORMED,
    }
    OK
}

/// ICMP echo request/reply (RFC 792 types 8/0, RFC 4443 types 128/129).
#[inline(always)]
fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        proto::ICMP => icmp_type == 8 || icmp_type == 0,
        _ => icmp_type == 128 || icmp_type == 129,
    }
}

/// ICMPv6 neighbour discovery and multicast listener messages (RFC 4861 types 133–137,
/// RFC 2710/3810 types 130–132 and 143): IPv6's ARP, kept working in both directions.
#[inline(always)]
pub fn is_neighbour_discovery(ip: &Ip) -> bool {
    ip.is_v6 != 0 && ip.protocol == proto::ICMPV6 && matches!(ip.icmp_type, 130..=137 | 143)
}
