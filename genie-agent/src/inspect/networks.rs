//! Networks as the node enforces them (with the agent's last verdict on each) and traffic per
//! network.

use super::*;

/// One identity (a tenant's network, or a reserved class) as the node enforces it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRow {
    pub tenant: String,
    pub network: String,
    pub identity: u32,
    /// Address ranges classified as this identity.
    pub cidrs: Vec<String>,
    /// Endpoints of this identity on the node.
    pub endpoints: usize,
    pub allow_host_access: bool,
    pub allow_external: bool,
    pub allow_external_ingress: bool,
    /// `Enforced`, `LastValidVersionEnforced` or `Refused` (nothing in force), from the
    /// agent's last verdict on the network's object (its Tenant for a default network).
    pub status: String,
    /// Why the current spec is refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub problems: String,
}

/// Networks with their subnets, flags and local endpoints, from the pins, with the agent's
/// last verdict on each (refused networks with nothing in force are listed too).
pub fn networks(bpffs: &Path, state_dir: &Path) -> Result<Vec<NetworkRow>, DataplaneError> {
    use crate::model::{Enforced, Kind};
    let verdicts = crate::model::accept::read_verdicts(state_dir);
    let verdict_of = |tenant: &str, network: &str| {
        let (kind, name) = if network == crate::model::DEFAULT_NETWORK {
            (Kind::Tenant, tenant)
        } else {
            (Kind::LogicalNetwork, network)
        };
        verdicts.iter().find(|v| v.kind == kind && v.name == name)
    };
    let status = |enforced: Enforced, accepted: bool| {
        match (enforced, accepted) {
            (Enforced::Current, _) => "Enforced",
            (Enforced::LastValidVersion, _) => "LastValidVersionEnforced",
            (Enforced::Nothing, _) => "Refused",
        }
        .to_owned()
    };
    let mut rows = networks_from_pins(bpffs)?;
    for row in &mut rows {
        if let Some(v) = verdict_of(&row.tenant, &row.network) {
            row.status = status(v.enforced, v.accepted());
            row.problems = v.problem_text();
        }
    }
    for v in verdicts
        .iter()
        .filter(|v| v.kind == Kind::LogicalNetwork && v.enforced == Enforced::Nothing)
    {
        rows.push(NetworkRow {
            tenant: String::new(),
            network: v.name.clone(),
            identity: 0,
            cidrs: Vec::new(),
            endpoints: 0,
            allow_host_access: false,
            allow_external: false,
            allow_external_ingress: false,
            status: status(v.enforced, v.accepted()),
            problems: v.problem_text(),
        });
    }
    Ok(rows)
}

fn networks_from_pins(bpffs: &Path) -> Result<Vec<NetworkRow>, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    let state = maps.read_state()?;
    let view = policy_view(&maps, &state)?;
    let names = IdentityNames(state.identities.clone());
    let mut rows: Vec<NetworkRow> = view
        .identities
        .into_iter()
        .map(|i| NetworkRow {
            cidrs: view
                .cidrs
                .iter()
                .filter(|c| c.identity == names.label(i.identity))
                .map(|c| c.cidr.clone())
                .collect(),
            endpoints: state
                .endpoints
                .values()
                .filter(|e| e.identity == i.identity)
                .count(),
            tenant: i.tenant,
            network: i.network,
            identity: i.identity,
            allow_host_access: i.allow_host_access,
            allow_external: i.allow_external,
            allow_external_ingress: i.allow_external_ingress,
            status: String::new(),
            problems: String::new(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.tenant, &a.network).cmp(&(&b.tenant, &b.network)));
    Ok(rows)
}

/// Traffic of one (tenant, network, direction, reason), summed over endpoints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatsRow {
    pub tenant: String,
    pub network: String,
    pub direction: String,
    pub reason: String,
    pub dropped: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters summed per tenant, network, direction and reason (what the metrics export).
pub fn stats(bpffs: &Path) -> Result<Vec<StatsRow>, DataplaneError> {
    let maps = PinnedMaps::open(bpffs)?;
    let names = IdentityNames::read(&maps)?;
    Ok(stats_rows(&names, &read_counters(bpffs)?))
}

/// `counters` summed per tenant, network, direction and reason.
pub fn stats_rows(
    names: &IdentityNames,
    counters: &[crate::dataplane::CounterRow],
) -> Vec<StatsRow> {
    let mut sums: BTreeMap<
        (
            String,
            String,
            genie_common::Direction,
            genie_common::Reason,
        ),
        (u64, u64),
    > = BTreeMap::new();
    for row in counters {
        let (tenant, network) = names.parts(row.identity);
        let slot = sums
            .entry((tenant, network, row.direction, row.reason))
            .or_default();
        slot.0 += row.value.packets;
        slot.1 += row.value.bytes;
    }
    sums.into_iter()
        .map(
            |((tenant, network, direction, reason), (packets, bytes))| StatsRow {
                tenant,
                network,
                direction: direction.name().to_owned(),
                reason: reason.name().to_owned(),
                dropped: reason.is_drop(),
                packets,
                bytes,
            },
        )
        .collect()
}
