//! What the agent learns about its node: its addresses (HOST), read inside the node namespace.

use std::{net::IpAddr, path::Path};

use crate::netns::{self, NetnsError};

/// Every address configured on any interface of the namespace at `netns`.
pub fn node_addresses(netns_path: &Path) -> Result<Vec<IpAddr>, NetnsError> {
    netns::run_in(netns_path, || {
        let mut out = Vec::new();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for ifa in addrs {
                let Some(addr) = ifa.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    out.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    out.push(IpAddr::V6(v6.ip()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    })
}
