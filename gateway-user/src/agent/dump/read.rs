//! Reading the pinned maps: hash maps in batches, LPM tries key by key, counters summed
//! over CPUs; each entry handed to its decoder.

use super::*;

fn open(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "not pinned at {} (an agent with another map layout?)",
            path.display()
        );
    }
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

pub(super) fn read_active(dir: &Path) -> Result<u32> {
    let m: Array<MapData, u32> = Map::from_map_data(open(dir, maps::ACTIVE)?)?.try_into()?;
    Ok(m.get(&0, 0)?)
}

fn kind_name(t: Result<MapType, aya::maps::MapError>) -> &'static str {
    match t {
        Ok(MapType::Hash) => "hash",
        Ok(MapType::LruHash) => "lru_hash",
        Ok(MapType::LpmTrie) => "lpm_trie",
        Ok(MapType::Array) => "array",
        Ok(MapType::PerCpuArray) => "percpu_array",
        Ok(MapType::RingBuf) => "ringbuf",
        _ => "other",
    }
}

/// Sorts `items` by key, keeps the first `limit`, decodes them.
fn first<K: Ord, V>(
    mut items: Vec<(K, V)>,
    limit: usize,
    decode: impl Fn(&K, &V) -> Entry,
) -> (usize, Vec<Entry>) {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let n = items.len();
    (
        n,
        items
            .iter()
            .take(limit)
            .map(|(k, v)| decode(k, v))
            .collect(),
    )
}

/// Every (prefix length, key) of an LPM trie, sorted; values looked up for the first
/// `limit` only.
fn lpm_first<K: aya::Pod + Ord, V: aya::Pod>(
    data: MapData,
    limit: usize,
    decode: impl Fn(u32, &K, &V) -> Entry,
) -> Result<(usize, Vec<Entry>)> {
    let trie: LpmTrie<MapData, K, V> = Map::from_map_data(data)?.try_into()?;
    let mut keys = Vec::new();
    for k in trie.keys() {
        let k = k?;
        keys.push((k.data(), k.prefix_len()));
    }
    keys.sort();
    let mut out = Vec::new();
    for (data, prefix_len) in keys.iter().take(limit) {
        let key = aya::maps::lpm_trie::Key::new(*prefix_len, *data);
        match trie.get(&key, 0) {
            Ok(v) => out.push(decode(*prefix_len, data, &v)),
            // Deleted between the key walk and the lookup (a policy change).
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((keys.len(), out))
}

/// Per-CPU `u64` counters summed, named by `names` in index order.
fn counters(data: &MapData, names: &[&str], limit: usize) -> Result<(usize, Vec<Entry>)> {
    let sums = crate::batch::per_cpu_sums(data)?;
    let entries = names
        .iter()
        .enumerate()
        .map(|(i, n)| counter_entry(n, sums.get(i).copied().unwrap_or(0)))
        .collect::<Vec<_>>();
    let n = entries.len();
    Ok((n, entries.into_iter().take(limit).collect()))
}

pub(super) fn read_map(
    dir: &Path,
    name: &'static str,
    active_slot: Option<u8>,
    limit: usize,
) -> Result<MapDump> {
    let data = open(dir, name)?;
    let info = data.info()?;
    let kind = kind_name(info.map_type());
    let capacity = info.max_entries();
    let (count, entries) = match name {
        maps::CONFIG => {
            let m: Array<MapData, DataplaneConfig> = Map::from_map_data(data)?.try_into()?;
            (
                1,
                vec![config_entry(&m.get(&0, 0)?)]
                    .into_iter()
                    .take(limit)
                    .collect(),
            )
        }
        maps::ACTIVE => {
            let m: Array<MapData, u32> = Map::from_map_data(data)?.try_into()?;
            (
                1,
                vec![active_entry(m.get(&0, 0)?)]
                    .into_iter()
                    .take(limit)
                    .collect(),
            )
        }
        maps::SRC => first(
            crate::batch::read_all::<SrcKey, SrcValue>(&data)?,
            limit,
            |k, v| src_entry(k, v, active_slot),
        ),
        maps::DST => {
            lpm_first::<DstKey, AtomValue>(data, limit, |p, k, v| dst_entry(p, k, v, active_slot))?
        }
        maps::DST_HOSTS => first(
            crate::batch::read_all::<DstKey, AtomValue>(&data)?,
            limit,
            |k, v| dst_entry(DST_KEY_FIXED_BITS + 128, k, v, active_slot),
        ),
        maps::RULES => lpm_first::<RuleKey, RuleValue>(data, limit, |p, k, v| {
            rule_entry(p, k, v, active_slot)
        })?,
        maps::RULES_EXACT => first(
            crate::batch::read_all::<RuleKey, RuleValue>(&data)?,
            limit,
            |k, v| rule_entry(RULE_KEY_FIXED_BITS + 16, k, v, active_slot),
        ),
        maps::FLOWS_TCP | maps::FLOWS_OTHER => first(
            crate::batch::read_all::<FlowKey, FlowState>(&data)?,
            limit,
            flow_entry,
        ),
        maps::FRAGS => first(
            crate::batch::read_all::<FragKey, FragState>(&data)?,
            limit,
            frag_entry,
        ),
        maps::NAMES => first(
            crate::batch::read_all::<
                gateway_common::names::NameKey,
                gateway_common::names::NameValue,
            >(&data)?,
            limit,
            name_entry,
        ),
        maps::NAT => first(
            crate::batch::read_all::<FlowKey, gateway_common::names::NatValue>(&data)?,
            limit,
            nat_entry,
        ),
        maps::SOURCES => first(
            crate::batch::read_all::<Addr, SourceState>(&data)?,
            limit,
            source_entry,
        ),
        maps::HANDSHAKES => {
            let cfg = open(dir, maps::CONFIG)
                .ok()
                .and_then(|d| {
                    Array::<MapData, DataplaneConfig>::try_from(Map::from_map_data(d).ok()?).ok()
                })
                .and_then(|m| m.get(&0, 0).ok());
            first(
                crate::batch::read_all::<Addr, HandshakeBucket>(&data)?,
                limit,
                |a, b| handshake_entry(a, b, cfg.as_ref()),
            )
        }
        maps::VERDICT_STATS => {
            let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
            counters(&data, &names, limit)?
        }
        maps::PARSE_STATS => {
            let names: Vec<&str> = ParseOutcome::ALL.iter().map(|o| o.name()).collect();
            counters(&data, &names, limit)?
        }
        maps::FLOW_STATS => {
            let names: Vec<&str> = FlowCounter::ALL.iter().map(|c| c.name()).collect();
            counters(&data, &names, limit)?
        }
        maps::EVENTS_LOST => {
            let names: Vec<&str> = Ring::ALL.iter().map(|r| r.name()).collect();
            counters(&data, &names, limit)?
        }
        maps::BUDGETS => {
            let m: PerCpuArray<MapData, Budget> = Map::from_map_data(data)?.try_into()?;
            let mut out = Vec::new();
            for kind in EventKind::ALL {
                let per_cpu = m.get(&(kind as u32), 0)?;
                out.push(budget_entry(kind, per_cpu.iter()));
            }
            let n = out.len();
            (n, out.into_iter().take(limit).collect())
        }
        maps::EVENTS_FLOW | maps::EVENTS_ALERT => {
            return Ok(MapDump {
                name,
                kind,
                capacity,
                count: None,
                entries: Vec::new(),
            });
        }
        other => bail!("no decoder for map {other}"),
    };
    Ok(MapDump {
        name,
        kind,
        capacity,
        count: Some(count),
        entries,
    })
}
