//! Whether the maps pinned on a node have the layout this genie's object declares. A pinned map
//! of another layout (left by an older genie) would make the kernel's verifier refuse the new
//! programs with a dump of BPF instructions — or, worse, let them read records of another
//! shape. The agent checks first and says what to do instead.

use std::path::Path;

use aya::maps::MapData;
use genie_common::maps::{ALL_MAPS, SCRATCH_MAP};

use super::DataplaneError;

/// (type, key size, value size) of a map.
type Layout = (u32, u32, u32);

/// The layouts `object` declares for genie's maps.
fn declared(object: &[u8]) -> Result<Vec<(&'static str, Layout)>, DataplaneError> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Layout {
        message: format!("the eBPF object cannot be read: {e}"),
    })?;
    ALL_MAPS
        .iter()
        .map(|name| {
            let map = parsed
                .maps
                .get(*name)
                .ok_or(DataplaneError::MissingMap { name })?;
            Ok((*name, (map.map_type(), map.key_size(), map.value_size())))
        })
        .collect()
}

/// Compares the maps pinned under `bpffs` with `object`'s. The scratch map holds no state and
/// is unpinned when it differs (the loader then creates a fresh one); any other difference
/// refuses the start, leaving the pins — and the enforcement of every pod — as they are.
pub fn check_pins(bpffs: &Path, object: &[u8]) -> Result<(), DataplaneError> {
    let mut mismatches = Vec::new();
    let mut stale_scratch = None;
    for (name, (map_type, key, value)) in declared(object)? {
        let path = bpffs.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = MapData::from_pin(&path)
            .and_then(|data| data.info())
            .map_err(|source| DataplaneError::OpenPin {
                path: path.clone(),
                source,
            })?;
        let found = (
            pinned.map_type().map_or(u32::MAX, |t| t as u32),
            pinned.key_size(),
            pinned.value_size(),
        );
        if found == (map_type, key, value) {
            continue;
        }
        if name == SCRATCH_MAP {
            stale_scratch = Some(path);
            continue;
        }
        mismatches.push(format!(
            "{name} (type {}, key {} B, value {} B; this genie needs type {map_type}, key {key} B, value {value} B)",
            found.0, found.1, found.2
        ));
    }
    if mismatches.is_empty() {
        if let Some(path) = stale_scratch {
            std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
        }
        return Ok(());
    }
    Err(DataplaneError::Layout {
        message: format!(
            "the maps pinned under {} were made by a genie with another layout: {}. Nothing was changed: every pod keeps the enforcement it has. To upgrade this node, drain it, run `genie agent cleanup` with the same --bpffs, then start this genie",
            bpffs.display(),
            mismatches.join("; ")
        ),
    })
}
