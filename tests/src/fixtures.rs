//! Object directories shared by tests and benchmarks.

/// Tenant `red` owning namespace `red`, and its network `lim` over 198.18.0.0/24 (the subnet
/// of [`crate::Topology::add_pod`]) with `limits` as its `spec.limits` (YAML flow mapping).
pub fn limited_network(limits: &str) -> String {
    format!(
        "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {{name: red}}
spec: {{namespaces: [red]}}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: lim}}
spec:
  tenant: red
  subnet: 198.18.0.0/24
  limits: {limits}
"
    )
}
