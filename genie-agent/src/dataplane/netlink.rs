//! What the agent asks rtnetlink about interfaces: whether a host-side interface is a bridge
//! port (broadcast it carries then reaches the node through the bridge, where `to_host`
//! decides), and the IPv6 link-local addresses of a pod's interface; and, for genie-cni, taking
//! a pod's interfaces down.

use std::{net::Ipv6Addr, path::Path};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::DataplaneError;
use crate::netns;

/// One rtnetlink request in the caller's namespace and its single answer: the message, or
/// `None` for an acknowledgement (`NLM_F_ACK`).
fn round_trip(
    message: RouteNetlinkMessage,
    flags: u16,
) -> std::io::Result<Option<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST | flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answer = vec![0; 65_536];
    let size = socket.recv(&mut &mut answer[..], 0)?;
    let message: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(&answer[..size]).map_err(std::io::Error::other)?;
    match message.payload {
        NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(None),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(std::io::Error::other(format!(
            "unexpected netlink answer {other:?}"
        ))),
    }
}

/// One `RTM_GETLINK` for `index` in the caller's namespace.
fn get_link(index: u32) -> std::io::Result<LinkMessage> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    match round_trip(RouteNetlinkMessage::GetLink(request), 0)? {
        Some(RouteNetlinkMessage::NewLink(link)) => Ok(link),
        other => Err(std::io::Error::other(format!(
            "unexpected netlink answer {other:?}"
        ))),
    }
}

/// Sets interface `index` of the caller's namespace down (`RTM_SETLINK` clearing `IFF_UP`).
pub fn set_down(index: u32) -> std::io::Result<()> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    request.header.change_mask = LinkFlags::Up;
    round_trip(RouteNetlinkMessage::SetLink(request), NLM_F_ACK).map(|_| ())
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    })
}

/// The bridge interface `ifindex` (in the namespace at `netns_path`) is a port of, if any.
pub fn bridge_of(netns_path: &Path, ifindex: u32) -> Result<Option<u32>, DataplaneError> {
    let found = netns::run_in(netns_path, || -> std::io::Result<Option<u32>> {
        let link = get_link(ifindex)?;
        let master = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        });
        match master {
            Some(master) if is_bridge(&get_link(master)?) => Ok(Some(master)),
            _ => Ok(None),
        }
    })?;
    found.map_err(|source| DataplaneError::Netlink {
        what: format!("the master of interface {ifindex}"),
        source,
    })
}

/// The EUI-64 link-local address of a MAC (RFC 4291 §2.5.1, Appendix A): what the kernel
/// gives an interface unless told to generate addresses otherwise.
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The link-local addresses interface `ifname` has in the namespace at `netns_path` (none
/// when the namespace or interface cannot be read).
pub fn link_local_addresses(netns_path: &Path, ifname: &str) -> Vec<Ipv6Addr> {
    netns::run_in(netns_path, || {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        addrs
            .filter(|a| a.interface_name == ifname)
            .filter_map(|a| a.address?.as_sockaddr_in6().map(|v6| v6.ip()))
            .filter(Ipv6Addr::is_unicast_link_local)
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_follows_rfc_4291() {
        assert_eq!(
            eui64_link_local([0x02, 0x67, 0x00, 0x00, 0x01, 0x05]),
            "fe80::67:ff:fe00:105".parse::<Ipv6Addr>().unwrap()
        );
    }
}
