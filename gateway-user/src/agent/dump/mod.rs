//! `gateway-agent maps dump`: every pinned map, decoded with the shared types.
//!
//! The maps are pinned without BTF, so `bpftool map dump` shows only hex. This module reads
//! them the way the programs do — the layouts of `gateway_common` — and names every field:
//! addresses as text, prefixes with their length, verdicts, reasons, protocols, flags.
//!
//! Two layers: pure decoders from one map entry to an [`Entry`] (a text line and a JSON
//! object, unit-tested below), and the reading of pinned maps ([`dump`]). Hash maps are
//! read with `BPF_MAP_LOOKUP_BATCH` ([`crate::batch::read_all`]); LPM tries, which have no
//! batch operation, key by key. Entries are sorted by key, so two dumps compare with `diff`.
//!
//! The scan-hash key of `CONFIG` is never shown: a scanner that learnt it could choose
//! ports that collide in the scan sets. The dump says only whether it is set.

mod decode;
mod read;

pub use decode::*;
use read::{read_active, read_map};

use super::{config::Config, logs::addr, pins};
use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, LpmTrie, Map, MapData, MapType, PerCpuArray};
use gateway_common::{
    Addr, DataplaneConfig, EventKind, FlowKey, FlowState, FragKey, FragState, ParseOutcome, Reason,
    Role,
    addr::to_v4,
    event::{Budget, EVENT_KINDS, ScanKind, SourceState},
    flow::{Direction, proto},
    maps::{self, FlowCounter, HandshakeBucket, Ring},
    policy::{
        AtomValue, DST_KEY_FIXED_BITS, DstKey, RULE_KEY_FIXED_BITS, RuleKey, RuleValue, SrcKey,
        SrcValue, Verdict,
    },
};
use serde_json::{Value, json};
use std::{fmt::Write as _, path::Path};

/// Entries shown per map unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// One decoded map entry: a line for people, an object for programs.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub text: String,
    pub json: Value,
}

/// One map, read and decoded.
#[derive(Clone, Debug)]
pub struct MapDump {
    pub name: &'static str,
    /// `hash`, `lru_hash`, `lpm_trie`, `array`, `percpu_array`, `ringbuf`.
    pub kind: &'static str,
    /// The map's `max_entries` (a ring buffer: its size in bytes).
    pub capacity: u32,
    /// Entries in the map (an array: its length); `None` for a ring buffer.
    pub count: Option<usize>,
    /// The first entries by key, at most the limit.
    pub entries: Vec<Entry>,
}

impl MapDump {
    /// Entries not shown because of the limit.
    pub fn omitted(&self) -> usize {
        self.count.unwrap_or(0).saturating_sub(self.entries.len())
    }

    pub fn to_json(&self) -> Value {
        if self.count.is_none() {
            return json!({
                "map": self.name,
                "type": self.kind,
                "size_bytes": self.capacity,
            });
        }
        json!({
            "map": self.name,
            "type": self.kind,
            "capacity": self.capacity,
            "count": self.count,
            "shown": self.entries.len(),
            "omitted": self.omitted(),
            "entries": self.entries.iter().map(|e| e.json.clone()).collect::<Vec<_>>(),
        })
    }

    pub fn write_text(&self, out: &mut String) {
        let Some(count) = self.count else {
            let _ = writeln!(
                out,
                "== {} ({}): {} bytes",
                self.name, self.kind, self.capacity
            );
            return;
        };
        let _ = writeln!(
            out,
            "== {} ({}): {count} {}, capacity {}",
            self.name,
            self.kind,
            if count == 1 { "entry" } else { "entries" },
            self.capacity
        );
        for e in &self.entries {
            let _ = writeln!(out, "  {}", e.text);
        }
        if self.omitted() > 0 {
            let _ = writeln!(
                out,
                "  ... {} more not shown (--limit {})",
                self.omitted(),
                self.entries.len()
            );
        }
    }
}

/// What `dump` found for one map: its entries, or why it could not be read.
pub type MapResult = (&'static str, Result<MapDump>);

/// The maps `--map` names (every persistent map when none is named). A name matches
/// exactly, without regard to case, or without its layout version (`flows_tcp`).
pub fn select(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(maps::PERSISTENT.to_vec());
    }
    let unversioned = |m: &str| -> String {
        match m.rsplit_once("_V") {
            Some((base, v)) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
                base.to_string()
            }
            _ => m.to_string(),
        }
    };
    let mut out = Vec::new();
    for n in names {
        let found = maps::PERSISTENT
            .iter()
            .find(|m| m.eq_ignore_ascii_case(n) || unversioned(m).eq_ignore_ascii_case(n.as_str()));
        match found {
            Some(m) if !out.contains(m) => out.push(*m),
            Some(_) => {}
            None => bail!(
                "no map named {n:?}; the pinned maps are: {}",
                maps::PERSISTENT.join(", ")
            ),
        }
    }
    Ok(out)
}

/// Reads and decodes the maps `names` pinned for `cfg` (see [`select`]), at most `limit`
/// entries each. Fails only when nothing is pinned at all; a map that cannot be read is
/// reported in its place.
pub fn dump(cfg: &Config, names: &[&'static str], limit: usize) -> Result<Vec<MapResult>> {
    let pin_dir = pins::resolve(&cfg.pin_dir);
    let dir = pins::maps_dir(&pin_dir);
    let pinned_any = std::fs::read_dir(&dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !pinned_any {
        bail!(
            "nothing pinned at {}: the agent has not attached on this host",
            cfg.pin_dir.display()
        );
    }
    // The policy maps hold two key slots; the active one is marked.
    let active_slot = read_active(&dir).ok().map(|g| (g & 1) as u8);
    Ok(names
        .iter()
        .map(|name| (*name, read_map(&dir, name, active_slot, limit)))
        .collect())
}

/// The text form of a dump: a header per map, one line per entry.
pub fn render_text(results: &[MapResult]) -> String {
    let mut out = String::new();
    for (name, r) in results {
        match r {
            Ok(d) => d.write_text(&mut out),
            Err(e) => {
                let _ = writeln!(out, "== {name}: cannot be read: {e:#}");
            }
        }
    }
    out
}

/// The JSON form of a dump: one object per map, one per line.
pub fn render_json_lines(results: &[MapResult]) -> String {
    let mut out = String::new();
    for (name, r) in results {
        let v = match r {
            Ok(d) => d.to_json(),
            Err(e) => json!({ "map": name, "error": format!("{e:#}") }),
        };
        let _ = writeln!(out, "{v}");
    }
    out
}
