//! What the CNI handler needs from the node agent, and nothing more. The agent implements it
//! (`agent::cni`); the handler's unit tests implement it in memory, so ADD rollback, DEL, GC
//! and CHECK are tested without root.

use serde_json::Value;

use super::{plan::PlannedAttachment, spec::CniError};
use crate::endpoint::{Endpoint, EndpointRequest};

/// The agent as the CNI handler sees it. Errors are CNI errors with the spec's codes; the
/// handler adds which attachment they concern.
pub trait Backend: Send + Sync {
    /// Whether the agent enforces a configuration (CNI STATUS).
    fn ready(&self) -> bool;

    /// The attachments of pod `namespace/pod`, their quota reserved for `container` until
    /// [`Backend::release_reservation`].
    fn plan(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<Vec<PlannedAttachment>, CniError>;

    /// Gives back what the ADD of `container` reserved.
    fn release_reservation(&self, container: &str);

    /// Puts an interface under genie's programs (maps first, then links). Returns the
    /// endpoint's id.
    fn register(&self, request: EndpointRequest) -> Result<u32, CniError>;

    /// Takes endpoint `id` out of the maps; its programs stay attached (and drop everything)
    /// until [`Backend::release_links`].
    fn forget(&self, id: u32) -> Result<(), CniError>;

    /// Releases endpoint `id`'s links.
    fn release_links(&self, id: u32) -> Result<(), CniError>;

    /// The endpoints registered for `container`, in registration order.
    fn endpoints_of_container(&self, container: &str) -> Vec<Endpoint>;

    /// What DEL needs to run `network`'s delegate when the attachment cache is lost.
    fn network_delegate(&self, network: &str, interface: &str) -> Option<PlannedAttachment>;

    /// Why endpoint `id` is not enforced as registered (CHECK): gone, its interface replaced,
    /// a program not attached. `Ok` when it is.
    fn check_endpoint(&self, id: u32) -> Result<(), String>;

    /// Publishes a pod's network status (Kubernetes); a no-op elsewhere.
    fn publish_network_status(&self, namespace: &str, pod: &str, status: &Value);
}
