//! Reading the per-CPU counters from the pinned map, so it works while the agent is down.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Map, MapData, PerCpuHashMap};
use genie_common::{CounterKey, CounterValue, Direction, Reason, maps::COUNTERS_MAP};

use super::DataplaneError;

/// One counter, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRow {
    pub endpoint_id: u32,
    pub identity: u32,
    pub direction: Direction,
    pub reason: Reason,
    pub value: CounterValue,
}

/// Reads every counter under `bpffs`, summed over CPUs. Keys with unknown direction or reason
/// bytes (an object newer than this binary) are skipped rather than mislabelled.
pub fn read_counters(bpffs: &Path) -> Result<Vec<CounterRow>, DataplaneError> {
    let path = bpffs.join(COUNTERS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenPin {
        path: path.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::OpenPin {
        path: path.clone(),
        source,
    })?;
    let map: PerCpuHashMap<MapData, CounterKey, CounterValue> =
        map.try_into().map_err(|source| DataplaneError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
    Ok(sum_counters(&map)?.0)
}

/// Every counter of `map`, summed over CPUs, and the number of keys read. Keys with unknown
/// direction or reason bytes (an object newer than this binary) are skipped rather than
/// mislabelled.
pub fn sum_counters(
    map: &PerCpuHashMap<MapData, CounterKey, CounterValue>,
) -> Result<(Vec<CounterRow>, usize), DataplaneError> {
    let mut keys = 0;
    let mut sums: BTreeMap<CounterKey, CounterValue> = BTreeMap::new();
    for entry in map.iter() {
        keys += 1;
        let (key, per_cpu) = entry.map_err(|source| DataplaneError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
        let total = per_cpu
            .iter()
            .fold(CounterValue::default(), |acc, v| acc.add(*v));
        let slot = sums.entry(key).or_default();
        *slot = slot.add(total);
    }
    let rows = sums
        .into_iter()
        .filter_map(|(key, value)| {
            Some(CounterRow {
                endpoint_id: key.endpoint_id,
                identity: key.identity,
                direction: Direction::from_u8(key.direction)?,
                reason: Reason::from_u8(key.reason)?,
                value,
            })
        })
        .collect();
    Ok((rows, keys))
}
