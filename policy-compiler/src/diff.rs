//! Differences between two compiled views of the same host, per map.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_common::policy::Verdict;
use ipnet::IpNet;

use crate::compile::{HostView, RuleSlot, RuleVal};
use crate::model::WgKey;
use crate::peers::Peer;

/// Entries to add, change (old, new) and remove in one map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapDelta<K, V> {
    pub added: Vec<(K, V)>,
    pub changed: Vec<(K, V, V)>,
    pub removed: Vec<(K, V)>,
}

impl<K, V> MapDelta<K, V> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }
}

fn delta<K: Ord + Clone, V: PartialEq + Clone>(
    old: impl IntoIterator<Item = (K, V)>,
    new: impl IntoIterator<Item = (K, V)>,
) -> MapDelta<K, V> {
    let old: BTreeMap<K, V> = old.into_iter().collect();
    let new: BTreeMap<K, V> = new.into_iter().collect();
    let mut d = MapDelta {
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
    };
    for (k, v) in &new {
        match old.get(k) {
            None => d.added.push((k.clone(), v.clone())),
            Some(o) if o != v => d.changed.push((k.clone(), o.clone(), v.clone())),
            Some(_) => {}
        }
    }
    for (k, v) in &old {
        if !new.contains_key(k) {
            d.removed.push((k.clone(), v.clone()));
        }
    }
    d
}

/// Value of a `DST` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DstVal {
    pub atom: u32,
    #[serde(serialize_with = "crate::compile::ser_verdict")]
    pub default_verdict: Verdict,
    pub default_rule: u32,
}

/// Per-map changes from one view to the next. Values: `src` (principal, class), `dst`
/// (atom, default verdict, default rule); `peers` by public key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    pub src: MapDelta<IpAddr, (u32, u32)>,
    pub dst: MapDelta<IpNet, DstVal>,
    pub rules: MapDelta<RuleSlot, RuleVal>,
    /// WireGuard peers added, changed (name, endpoint or allowed IPs) and removed.
    pub peers: MapDelta<WgKey, Peer>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.src.is_empty() && self.dst.is_empty() && self.rules.is_empty() && self.peers.is_empty()
    }
}

/// What changes between `old` and `new` (entries keyed by address, prefix, rule slot).
pub fn diff(old: &HostView, new: &HostView) -> Delta {
    Delta {
        src: delta(
            old.sources.iter().map(|s| (s.addr, (s.principal, s.class))),
            new.sources.iter().map(|s| (s.addr, (s.principal, s.class))),
        ),
        dst: delta(
            old.atoms.iter().map(|a| {
                (
                    a.prefix,
                    DstVal {
                        atom: a.atom,
                        default_verdict: a.default_verdict,
                        default_rule: a.default_rule,
                    },
                )
            }),
            new.atoms.iter().map(|a| {
                (
                    a.prefix,
                    DstVal {
                        atom: a.atom,
                        default_verdict: a.default_verdict,
                        default_rule: a.default_rule,
                    },
                )
            }),
        ),
        rules: delta(
            old.rules.iter().map(|r| (r.key, r.value)),
            new.rules.iter().map(|r| (r.key, r.value)),
        ),
        peers: delta(
            old.peers.iter().map(|p| (p.public_key, p.clone())),
            new.peers.iter().map(|p| (p.public_key, p.clone())),
        ),
    }
}
