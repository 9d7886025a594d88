//! Typed handles on the pinned maps, and the writer that turns a desired state into map
//! updates — only the difference, in an order that never opens a gap.

use std::{collections::BTreeMap, path::Path};

use aya::{
    Pod,
    maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, lpm_trie::Key,
    },
};
use genie_common::{
    CounterKey, CounterValue, EndpointInfo,
    maps::{
        ADDRS_MAP, AddrInfo, BucketValue, CIDRS_MAP, CONFIG_MAP, CONNTRACK_MAP, COUNTERS_MAP,
        CidrInfo, Config, CtKey, CtValue, ENDPOINTS_MAP, IDENTITIES_MAP, IdentityInfo, IpAddr16,
        LIMITS_MAP, MAX_CT_ZONES, POLICY_MAP, PolicyKey, PolicyValue,
    },
    ratelimit::{BucketConfig, BucketKey},
};

use super::DataplaneError;

/// The complete contents of the policy maps, as the writer applies them and `read_state`
/// reads them back (owned here; `reconcile` computes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub addrs: BTreeMap<IpAddr16, AddrInfo>,
    /// (prefix length in the 128-bit space, address) → identity.
    pub cidrs: BTreeMap<(u32, IpAddr16), CidrInfo>,
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Rate-limit buckets by their configuration (their running state is the kernel's).
    pub buckets: BTreeMap<BucketKey, BucketConfig>,
    /// Connection-tracking zones that have endpoints here → their table's capacity.
    pub ct_zones: BTreeMap<u32, u32>,
}

/// Every genie map of one node, opened from its pins (so this works with or without the agent
/// that created them).
pub struct PinnedMaps {
    pub endpoints: HashMap<MapData, u32, EndpointInfo>,
    pub addrs: HashMap<MapData, IpAddr16, AddrInfo>,
    pub cidrs: LpmTrie<MapData, IpAddr16, CidrInfo>,
    pub identities: HashMap<MapData, u32, IdentityInfo>,
    pub policy: HashMap<MapData, PolicyKey, PolicyValue>,
    /// The per-tenant connection-tracking tables (an array of maps; see [`ZoneTables`]).
    pub conntrack: Map,
    /// The configuration array's handle, for its BTF (see [`ZoneSlots`]).
    btf_source: MapData,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuHashMap<MapData, CounterKey, CounterValue>,
    pub limits: HashMap<MapData, BucketKey, BucketValue>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedMaps")
    }
}

fn open(bpffs: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let path = bpffs.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenPin {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::OpenPin { path, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// What an apply changed, per map (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    pub written: usize,
    pub deleted: usize,
    /// Whether the policy epoch was bumped (tracked flows are re-checked).
    pub epoch_bumped: bool,
    /// Rate-limit buckets written or deleted.
    pub limits_written: usize,
}

impl PinnedMaps {
    /// Opens every map pinned under `bpffs`.
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        Ok(Self {
            endpoints: open(bpffs, ENDPOINTS_MAP)?
                .try_into()
                .map_err(map_err(ENDPOINTS_MAP))?,
            addrs: open(bpffs, ADDRS_MAP)?
                .try_into()
                .map_err(map_err(ADDRS_MAP))?,
            cidrs: open(bpffs, CIDRS_MAP)?
                .try_into()
                .map_err(map_err(CIDRS_MAP))?,
            identities: open(bpffs, IDENTITIES_MAP)?
                .try_into()
                .map_err(map_err(IDENTITIES_MAP))?,
            policy: open(bpffs, POLICY_MAP)?
                .try_into()
                .map_err(map_err(POLICY_MAP))?,
            conntrack: open(bpffs, CONNTRACK_MAP)?,
            btf_source: MapData::from_pin(bpffs.join(CONFIG_MAP)).map_err(|source| {
                DataplaneError::OpenPin {
                    path: bpffs.join(CONFIG_MAP),
                    source,
                }
            })?,
            config: open(bpffs, CONFIG_MAP)?
                .try_into()
                .map_err(map_err(CONFIG_MAP))?,
            counters: open(bpffs, COUNTERS_MAP)?
                .try_into()
                .map_err(map_err(COUNTERS_MAP))?,
            limits: open(bpffs, LIMITS_MAP)?
                .try_into()
                .map_err(map_err(LIMITS_MAP))?,
        })
    }

    /// The current contents of the policy maps.
    pub fn read_state(&self) -> Result<MapContents, DataplaneError> {
        Ok(MapContents {
            endpoints: read_all(self.endpoints.iter(), ENDPOINTS_MAP)?,
            addrs: read_all(self.addrs.iter(), ADDRS_MAP)?,
            cidrs: read_all(
                self.cidrs
                    .iter()
                    .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v))),
                CIDRS_MAP,
            )?,
            identities: read_all(self.identities.iter(), IDENTITIES_MAP)?,
            policy: read_all(self.policy.iter(), POLICY_MAP)?,
            ct_zones: self.zones().capacities()?,
            buckets: read_all(
                self.limits.iter().map(|r| r.map(|(k, v)| (k, v.config))),
                LIMITS_MAP,
            )?,
        })
    }

    /// The current policy epoch.
    pub fn epoch(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .config
            .get(&0, 0)
            .map_err(map_err(CONFIG_MAP))?
            .policy_epoch)
    }

    /// Makes the maps equal `desired`, writing only what differs from what they hold now.
    pub fn apply(&mut self, desired: &MapContents) -> Result<ApplyStats, DataplaneError> {
        let current = self.read_state()?;
        self.apply_diff(&current, desired)
    }

    /// [`PinnedMaps::apply`] against a `current` state the caller already knows (the agent's
    /// last applied state), so an endpoint added to a large node costs its own entries rather
    /// than a read of every map. New and changed entries go first, stale ones after, and the
    /// policy epoch is bumped last, so a tracked flow is re-checked against the finished state
    /// — never against a half-written one.
    pub fn apply_diff(
        &mut self,
        current: &MapContents,
        desired: &MapContents,
    ) -> Result<ApplyStats, DataplaneError> {
        let (c, d) = (current, desired);
        let mut stats = ApplyStats::default();
        // A zone's table exists before any endpoint record names it, and goes after.
        upsert(
            &mut self.zone_slots(),
            &c.ct_zones,
            &d.ct_zones,
            CONNTRACK_MAP,
        )?;
        stats.written += upsert(
            &mut self.identities,
            &c.identities,
            &d.identities,
            IDENTITIES_MAP,
        )?;
        stats.written += upsert(&mut self.policy, &c.policy, &d.policy, POLICY_MAP)?;
        stats.written += upsert(&mut self.addrs, &c.addrs, &d.addrs, ADDRS_MAP)?;
        stats.written += upsert(&mut self.cidrs, &c.cidrs, &d.cidrs, CIDRS_MAP)?;
        // Buckets before the endpoint records that point at them; limits are not policy, so
        // they do not bump the epoch.
        stats.limits_written += upsert(&mut self.limits, &c.buckets, &d.buckets, LIMITS_MAP)?;
        stats.written += upsert(
            &mut self.endpoints,
            &c.endpoints,
            &d.endpoints,
            ENDPOINTS_MAP,
        )?;

        stats.deleted += delete_stale(
            &mut self.endpoints,
            &c.endpoints,
            &d.endpoints,
            ENDPOINTS_MAP,
        )?;
        stats.deleted += delete_stale(&mut self.policy, &c.policy, &d.policy, POLICY_MAP)?;
        stats.deleted += delete_stale(&mut self.addrs, &c.addrs, &d.addrs, ADDRS_MAP)?;
        stats.deleted += delete_stale(&mut self.cidrs, &c.cidrs, &d.cidrs, CIDRS_MAP)?;
        stats.deleted += delete_stale(
            &mut self.identities,
            &c.identities,
            &d.identities,
            IDENTITIES_MAP,
        )?;
        stats.limits_written += delete_stale(&mut self.limits, &c.buckets, &d.buckets, LIMITS_MAP)?;
        delete_stale(
            &mut self.zone_slots(),
            &c.ct_zones,
            &d.ct_zones,
            CONNTRACK_MAP,
        )?;

        let policy_changed = stats.written + stats.deleted > 0;
        if policy_changed || stats.limits_written > 0 {
            let mut config = self.config.get(&0, 0).map_err(map_err(CONFIG_MAP))?;
            if policy_changed {
                config.policy_epoch = config.policy_epoch.wrapping_add(1);
                stats.epoch_bumped = true;
            }
            // Paced connections re-read their limit when this moves; an endpoint or address
            // change can move a connection to another bucket too.
            config.limits_epoch = config.limits_epoch.wrapping_add(1);
            self.config.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        }
        Ok(stats)
    }

    /// The connection-tracking tables.
    pub fn zones(&self) -> ZoneTables<'_> {
        ZoneTables {
            outer: &self.conntrack,
        }
    }

    fn zone_slots(&mut self) -> ZoneSlots<'_> {
        ZoneSlots {
            outer: &mut self.conntrack,
            btf_source: &self.btf_source,
        }
    }

    /// Removes the counters of endpoints that no longer exist (0, "no endpoint", stays).
    pub fn prune_counters(&mut self, live: &dyn Fn(u32) -> bool) -> Result<usize, DataplaneError> {
        let stale: Vec<CounterKey> = self
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.endpoint_id != 0 && !live(k.endpoint_id))
            .collect();
        for key in &stale {
            match self.counters.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(COUNTERS_MAP)(e)),
            }
        }
        Ok(stale.len())
    }
}

fn read_all<K: Ord, V>(
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, DataplaneError> {
    entries.collect::<Result<_, _>>().map_err(map_err(name))
}

/// The per-tenant connection-tracking tables: slot `zone` of the outer array of maps holds the
/// zone's LRU table, created here with the zone's capacity (the object's inner map is only a
/// template). Per-tenant tables are what keeps one tenant's connection flood from evicting
/// another tenant's tracked flows (DESIGN.md §3).
#[derive(Debug)]
pub struct ZoneTables<'a> {
    outer: &'a Map,
}

impl ZoneTables<'_> {
    fn outer(&self) -> Result<ArrayOfMaps<&MapData, MapData>, DataplaneError> {
        ArrayOfMaps::try_from(self.outer).map_err(map_err(CONNTRACK_MAP))
    }

    /// The table of `zone`, if it has one.
    pub fn table(
        &self,
        zone: u32,
    ) -> Result<Option<HashMap<MapData, CtKey, CtValue>>, DataplaneError> {
        match self.outer()?.get(&zone, 0) {
            Ok(data) => Ok(Some(
                HashMap::try_from(Map::LruHashMap(data)).map_err(map_err(CONNTRACK_MAP))?,
            )),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(CONNTRACK_MAP)(e)),
        }
    }

    /// Every zone that has a table, with its capacity.
    pub fn capacities(&self) -> Result<BTreeMap<u32, u32>, DataplaneError> {
        let outer = self.outer()?;
        let mut out = BTreeMap::new();
        for zone in 0..MAX_CT_ZONES {
            match outer.get(&zone, 0) {
                Ok(data) => {
                    let info = data.info().map_err(map_err(CONNTRACK_MAP))?;
                    out.insert(zone, info.max_entries());
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(CONNTRACK_MAP)(e)),
            }
        }
        Ok(out)
    }

    /// The flows each table of `zones` (zone → capacity, as `capacities` read them) tracks:
    /// each table read once, the outer array not scanned again.
    pub fn occupancy(
        &self,
        zones: &BTreeMap<u32, u32>,
    ) -> Result<BTreeMap<u32, (u32, usize)>, DataplaneError> {
        let mut out = BTreeMap::new();
        for (zone, capacity) in zones {
            if let Some(table) = self.table(*zone)? {
                out.insert(
                    *zone,
                    (*capacity, table.keys().filter(Result::is_ok).count()),
                );
            }
        }
        Ok(out)
    }

    /// Every tracked flow of every zone, at most `limit`.
    pub fn flows(&self, limit: usize) -> Result<Vec<(u32, CtKey, CtValue)>, DataplaneError> {
        let mut out = Vec::new();
        for zone in self.capacities()?.into_keys() {
            let Some(table) = self.table(zone)? else {
                continue;
            };
            for entry in table.iter() {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (key, value) = entry.map_err(map_err(CONNTRACK_MAP))?;
                out.push((zone, key, value));
            }
        }
        Ok(out)
    }

    /// Forgets every tracked flow of every zone (benchmarks and tests start from nothing).
    pub fn clear(&self) -> Result<(), DataplaneError> {
        for zone in self.capacities()?.into_keys() {
            if let Some(mut table) = self.table(zone)? {
                let keys: Vec<CtKey> = table.keys().filter_map(Result::ok).collect();
                for key in keys {
                    let _ = table.remove(&key);
                }
            }
        }
        Ok(())
    }
}

/// The slots of the outer connection-tracking array, as the map writer changes them.
struct ZoneSlots<'a> {
    outer: &'a mut Map,
    /// A map created with the object's BTF (the configuration array): zone tables are created
    /// with the same BTF.
    btf_source: &'a MapData,
}

/// A zone's table is desired by capacity: a new one is created empty; a resized one is
/// created and gets the old table's flows (as many as fit) before it replaces it in the slot,
/// so established flows survive a change of `quota.connections`.
impl Writable<u32, u32> for ZoneSlots<'_> {
    fn put(&mut self, zone: &u32, capacity: &u32) -> Result<(), MapError> {
        let btf = super::sys::map_btf(self.btf_source.fd())
            .ok()
            .flatten()
            .zip(ct_type_ids())
            .map(|(fd, (key, value))| (fd, key, value));
        let fd = super::sys::create_lru_hash(
            "genie_ct_zone",
            size_of::<CtKey>() as u32,
            size_of::<CtValue>() as u32,
            *capacity,
            btf.as_ref().map(|(fd, key, value)| (fd, *key, *value)),
        )
        .map_err(|io_error| syscall_error("bpf_map_create", io_error))?;
        let mut table: HashMap<MapData, CtKey, CtValue> =
            HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd)?))?;
        let outer: ArrayOfMaps<&MapData, MapData> = ArrayOfMaps::try_from(&*self.outer)?;
        if let Ok(old) = outer.get(zone, 0) {
            let old: HashMap<MapData, CtKey, CtValue> = HashMap::try_from(Map::LruHashMap(old))?;
            for (key, value) in old.iter().filter_map(Result::ok).take(*capacity as usize) {
                table.insert(key, value, 0)?;
            }
        }
        let mut outer: ArrayOfMaps<&mut MapData, HashMap<MapData, CtKey, CtValue>> =
            ArrayOfMaps::try_from(&mut *self.outer)?;
        outer.set(*zone, &table, 0)
    }
    fn delete(&mut self, zone: &u32) -> Result<(), MapError> {
        let Map::ArrayOfMaps(outer) = &*self.outer else {
            return Err(MapError::InvalidMapType { map_type: 0 });
        };
        super::sys::map_of_maps_clear(outer.fd(), *zone)
            .map_err(|io_error| syscall_error("bpf_map_delete_elem", io_error))
    }
}

/// The BTF type ids of `CtKey` and `CtValue` in genie's object, whose BTF the outer table was
/// created with (the loader keeps type ids): zone tables created with them show named fields
/// in `bpftool map dump`. `None` when the object's BTF cannot be read.
fn ct_type_ids() -> Option<(u32, u32)> {
    static IDS: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *IDS.get_or_init(|| {
        let object = aya_obj::Object::parse(crate::EBPF_OBJECT).ok()?;
        let btf = object.btf?;
        let id = |name| {
            btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Struct)
                .ok()
        };
        Some((id("CtKey")?, id("CtValue")?))
    })
}

fn syscall_error(call: &'static str, io_error: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

/// A map the writer puts entries into and takes them out of, keyed as in [`MapContents`].
trait Writable<K, V> {
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    fn delete(&mut self, key: &K) -> Result<(), MapError>;
}

impl<K: Pod, V: Pod> Writable<K, V> for HashMap<MapData, K, V> {
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }
    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// `BPF_F_LOCK`: the update takes the value's spin lock, so a CPU inside a bucket's critical
/// section never sees half a configuration.
const BPF_F_LOCK: u64 = 4;

/// Buckets are desired by configuration; writing one resets its state (a full burst), which
/// happens only when its configuration changes.
impl Writable<BucketKey, BucketConfig> for HashMap<MapData, BucketKey, BucketValue> {
    fn put(&mut self, key: &BucketKey, config: &BucketConfig) -> Result<(), MapError> {
        let value = BucketValue {
            config: *config,
            ..BucketValue::default()
        };
        self.insert(key, value, BPF_F_LOCK)
    }
    fn delete(&mut self, key: &BucketKey) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// The LPM trie is keyed by (prefix length, address) in the desired state.
impl Writable<(u32, IpAddr16), CidrInfo> for LpmTrie<MapData, IpAddr16, CidrInfo> {
    fn put(&mut self, key: &(u32, IpAddr16), value: &CidrInfo) -> Result<(), MapError> {
        self.insert(&Key::new(key.0, key.1), value, 0)
    }
    fn delete(&mut self, key: &(u32, IpAddr16)) -> Result<(), MapError> {
        self.remove(&Key::new(key.0, key.1))
    }
}

fn upsert<K: Ord, V: PartialEq>(
    map: &mut impl Writable<K, V>,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for (key, value) in desired {
        if current.get(key) != Some(value) {
            map.put(key, value).map_err(map_err(name))?;
            n += 1;
        }
    }
    Ok(n)
}

fn delete_stale<K: Ord, V>(
    map: &mut impl Writable<K, V>,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for key in current.keys() {
        if !desired.contains_key(key) {
            match map.delete(key) {
                Ok(()) | Err(MapError::KeyNotFound) => n += 1,
                Err(e) => return Err(map_err(name)(e)),
            }
        }
    }
    Ok(n)
}
