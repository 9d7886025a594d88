//! Object directories shared by tests and benchmarks.

/// Tenants `red` and `blue`, each owning the namespace of its name; their pods share only the
/// default network.
pub const TWO_TENANTS: &str = "
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: red}
spec: {namespaces: [red]}
---
apiVersion: genie.dev/v1alpha1
kind: Tenant
metadata: {name: blue}
spec: {namespaces: [blue]}
";

/// [`TWO_TENANTS`] followed by more objects.
pub fn two_tenants_and(more: &str) -> String {
    format!("{TWO_TENANTS}---\n{more}")
}

/// Tenant `red` owning namespace `red`, its network `lim` over 198.18.0.0/24 and
/// 2001:db8::/64 (the subnet of [`crate::Topology::add_pod`], both families) with `limits` as
/// its `spec.limits` (YAML flow mapping), and the unlimited network `free` over 198.18.5.0/24
/// and 2001:db8:5::/64 that `lim` may reach (a receiver no limit applies to).
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
  subnet6: 2001:db8::/64
  isolation: {{peers: [{{network: free}}]}}
  limits: {limits}
---
apiVersion: genie.dev/v1alpha1
kind: LogicalNetwork
metadata: {{name: free}}
spec:
  tenant: red
  subnet: 198.18.5.0/24
  subnet6: 2001:db8:5::/64
  isolation: {{peers: [{{network: lim}}]}}
"
    )
}
