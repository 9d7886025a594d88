//! What the agent learns about an endpoint's interfaces beyond its registration — the bridge
//! its host side is a port of, its IPv6 link-local addresses — and the `to_host` program on
//! every such bridge; plus the connection-tracking zones the pins already assign.

use std::collections::BTreeSet;

use tracing::warn;

use super::{Agent, AgentError};
use crate::{
    dataplane::{AttachSide, netlink},
    endpoint::{Endpoint, parse_mac},
    reconcile::ZoneAssignment,
};

impl Agent {
    /// Fills in what `endpoint` is attached through: the bridge of its host side and its
    /// link-local addresses. A bridge that cannot be read counts as none — the endpoint's own
    /// egress then decides what of its broadcast reaches the node (fail closed).
    pub(super) fn discover_interfaces(&self, endpoint: &mut Endpoint) {
        endpoint.bridge = match endpoint.request.side {
            AttachSide::Host => {
                match netlink::bridge_of(&endpoint.request.netns, endpoint.ifindex) {
                    Ok(bridge) => bridge,
                    Err(e) => {
                        warn!(endpoint = endpoint.id, error = %e, "cannot tell whether the host side is a bridge port");
                        None
                    }
                }
            }
            AttachSide::InPod => None,
        };
        let mut link_local: BTreeSet<std::net::Ipv6Addr> = BTreeSet::new();
        if let Some(mac) = endpoint
            .request
            .mac
            .as_deref()
            .and_then(|m| parse_mac(m).ok())
        {
            link_local.insert(netlink::eui64_link_local(mac));
        }
        if let Some(pod_netns) = &endpoint.request.pod_netns {
            link_local.extend(netlink::link_local_addresses(
                pod_netns,
                &endpoint.request.interface,
            ));
        }
        endpoint.link_local = link_local.into_iter().collect();
    }

    /// Puts `to_host` on every bridge a registered endpoint's host side is a port of and takes
    /// it off bridges no endpoint uses any more (or that are gone).
    pub(super) fn sync_bridges(&mut self) -> Result<(), AgentError> {
        let mut wanted: Vec<u32> = self
            .registry
            .all()
            .filter(|e| e.request.side == AttachSide::Host)
            .filter_map(|e| e.bridge)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let attached = self.dataplane.attached_bridges();
        for bridge in &wanted {
            if !attached.contains(bridge) {
                self.dataplane.attach_bridge(&self.config.netns, *bridge)?;
            }
        }
        self.dataplane.release_bridges(&wanted)?;
        Ok(())
    }

    /// The zones the pinned identities carry, by tenant: a restarted agent keeps every
    /// tenant's table.
    pub(super) fn pinned_zones(&self) -> Result<ZoneAssignment, AgentError> {
        let state = self.maps.read_state()?;
        Ok(state
            .identities
            .values()
            .map(|info| (crate::inspect::name(&info.tenant), info.ct_zone))
            .collect())
    }
}
