//! Crafted packets, and running a program on them through `BPF_PROG_TEST_RUN`.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    TestRunResult,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use genie_agent::netns;

/// `TC_ACT_OK`: the packet continues.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;

/// Byte offset of `ifindex` in `struct __sk_buff` (uapi/linux/bpf.h).
const SKB_IFINDEX_OFFSET: usize = 40;

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
