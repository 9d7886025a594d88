//! Identities: the (tenant, logical network) of an endpoint, as one `u32`, plus the reserved
//! classes of addresses that are not endpoints (DESIGN.md §3).
//!
//! A network's identity is a hash of its name, so every node derives the same number without
//! coordination (remote endpoints are classified by the same ids on every node); the agent
//! rejects a configuration in which two networks collide.

/// No identity: an interface without an endpoint record.
pub const UNKNOWN: u32 = 0;
/// Any address of any node.
pub const HOST: u32 = 1;
/// Any address that belongs to no known network.
pub const WORLD: u32 = 2;
/// The cluster DNS service addresses (and the pods behind them): reachable on port 53 by
/// every identity.
pub const DNS: u32 = 3;
/// An IPv4 subnet's network or broadcast address (a directed broadcast, RFC 919): genie treats
/// traffic to it as broadcast, never as a flow to one endpoint.
pub const BROADCAST: u32 = 4;
/// Identities below this are reserved.
pub const FIRST_NETWORK_IDENTITY: u32 = 256;

/// Whether `identity` is one of the reserved classes rather than a network.
pub const fn is_reserved(identity: u32) -> bool {
    identity < FIRST_NETWORK_IDENTITY
}

/// The name of a reserved identity.
pub const fn reserved_name(identity: u32) -> Option<&'static str> {
    match identity {
        UNKNOWN => Some("unknown"),
        HOST => Some("host"),
        WORLD => Some("world"),
        DNS => Some("cluster-dns"),
        BROADCAST => Some("broadcast"),
        _ => None,
    }
}

/// The identity of a logical network, from its (cluster-unique) key: `net/<name>` for a
/// `LogicalNetwork`, `default/<tenant>` for a tenant's share of the default network.
/// FNV-1a, folded out of the reserved range.
pub const fn network_identity(key: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < key.len() {
        hash ^= key[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    if hash < FIRST_NETWORK_IDENTITY {
        hash + FIRST_NETWORK_IDENTITY
    } else {
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a (32-bit) test vectors: every node derives the same identities only
    /// if this is exactly FNV-1a.
    #[test]
    fn network_identities_are_fnv_1a() {
        assert_eq!(network_identity(b"a"), 0xe40c_292c);
        assert_eq!(network_identity(b"foobar"), 0xbf9c_f968);
        assert_eq!(network_identity(b""), 0x811c_9dc5);
    }

    #[test]
    fn network_identities_are_stable_and_never_reserved() {
        assert_ne!(network_identity(b"net/blue"), network_identity(b"net/red"));
        for i in 0..2000u32 {
            let key = [b'n', (i >> 8) as u8, i as u8];
            assert!(!is_reserved(network_identity(&key)));
        }
    }
}
