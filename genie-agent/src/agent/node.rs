//! What the agent learns about its node: its addresses (HOST), read inside the node namespace.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;

use crate::netns::{self, NetnsError};

/// Every address configured on any interface of the namespace at `netns`, with its prefix.
pub fn node_prefixes(netns_path: &Path) -> Result<Vec<IpNet>, NetnsError> {
    netns::run_in(netns_path, || {
        let mut out = Vec::new();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for ifa in addrs {
                let Some(addr) = ifa.address else { continue };
                let mask = ifa.netmask;
                let net = if let Some(v4) = addr.as_sockaddr_in() {
                    let prefix = mask
                        .and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()))
                        .unwrap_or(32);
                    IpNet::new(IpAddr::V4(v4.ip()), prefix as u8).ok()
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    let prefix = mask
                        .and_then(|m| m.as_sockaddr_in6().map(|m| u128::from(m.ip()).count_ones()))
                        .unwrap_or(128);
                    IpNet::new(IpAddr::V6(v6.ip()), prefix as u8).ok()
                } else {
                    None
                };
                out.extend(net);
            }
        }
        out.sort();
        out.dedup();
        out
    })
}
