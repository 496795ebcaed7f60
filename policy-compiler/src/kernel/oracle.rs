//! The test oracle of the compiled layout: what the XDP program decides with a set of
//! map entries, in plain Rust (feature `testing`). The differential tests hold it against
//! the reference evaluator; the data plane's tests hold the real programs against it.

use std::collections::HashMap;

use gateway_common::flow::proto;
use gateway_common::policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, Verdict};

use super::{KernelEntries, LpmEntry, RuleOrder, addr16};
use crate::eval::Packet;

fn dst_bytes(k: &DstKey) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[0] = k.generation;
    b[1..].copy_from_slice(&k.addr);
    b
}

fn rule_bytes(k: &RuleKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = k.generation;
    b[1] = k.proto;
    b[2..6].copy_from_slice(&k.class);
    b[6..10].copy_from_slice(&k.atom);
    b[10..12].copy_from_slice(&k.port);
    b
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if full > a.len() || a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// Longest-prefix match, exactly as `BPF_MAP_TYPE_LPM_TRIE` answers it.
fn lpm<'e, K, V>(
    entries: &'e [LpmEntry<K, V>],
    key: &[u8],
    bytes: impl Fn(&K) -> Vec<u8>,
) -> Option<&'e V> {
    entries
        .iter()
        .filter(|e| prefix_eq(&bytes(&e.key), key, e.prefix_len))
        .max_by_key(|e| e.prefix_len)
        .map(|e| &e.value)
}

/// An exact-match hash map's lookup (the list is sorted by `order` of its keys).
fn exact<'e, K, V, O: Ord>(
    entries: &'e [(K, V)],
    key: &K,
    order: impl Fn(&K) -> O,
) -> Option<&'e V> {
    let want = order(key);
    entries
        .binary_search_by(|(k, _)| order(k).cmp(&want))
        .ok()
        .map(|i| &entries[i].1)
}

/// What the XDP program decides for `pkt` with these maps at boot-clock `now_ns`:
/// the destination's atom from `DST_HOSTS`, else `DST`; a miss in both -> pass
/// (unprotected, rule 0); `SRC` miss -> the atom's default; the rule from `RULES_EXACT`,
/// else `RULES`; a miss in both -> the atom's default; otherwise the rule value at
/// `now_ns`. The port looked up is the destination port for TCP/UDP and 0 otherwise (ICMP
/// rules have no port bits).
pub fn lookup(entries: &KernelEntries, pkt: &Packet, now_ns: u64) -> (Verdict, u32) {
    let g = entries.generation;
    let dst = DstKey {
        generation: g,
        addr: addr16(pkt.dst),
    };
    let dkey = dst_bytes(&dst);
    let Some(atom) = exact(&entries.dst_hosts, &dst, |k| *k)
        .or_else(|| lpm(&entries.dst, &dkey, |k| dst_bytes(k).to_vec()))
    else {
        return (Verdict::Allow, 0);
    };
    let default = (Verdict::from_u8(atom.default_verdict), atom.default_rule);
    let skey = SrcKey {
        generation: g,
        _pad: [0; 3],
        addr: addr16(pkt.src),
    };
    let Some(src) = entries
        .src
        .binary_search_by(|(k, _)| k.cmp(&skey))
        .ok()
        .map(|i| entries.src[i].1)
    else {
        return default;
    };
    let port = match pkt.proto {
        proto::TCP | proto::UDP => pkt.dst_port,
        _ => 0,
    };
    let rule = RuleKey {
        generation: g,
        proto: pkt.proto,
        class: src.class.to_be_bytes(),
        atom: atom.atom.to_be_bytes(),
        port: port.to_be_bytes(),
    };
    let rkey = rule_bytes(&rule);
    match exact(&entries.rules_exact, &rule, |k| {
        RuleOrder::of(crate::RULE_EXACT_PREFIX_LEN, *k)
    })
    .or_else(|| lpm(&entries.rules, &rkey, |k| rule_bytes(k).to_vec()))
    {
        Some(v) => v.at(now_ns),
        None => default,
    }
}

/// An index over [`KernelEntries`] for many lookups (same answers as [`lookup`]).
#[derive(Debug)]
pub struct KernelIndex<'e> {
    entries: &'e KernelEntries,
    dst_hosts: HashMap<DstKey, AtomValue>,
    dst: HashMap<(u32, [u8; 17]), AtomValue>,
    dst_lens: Vec<u32>,
    rules_exact: HashMap<RuleKey, RuleValue>,
    rules: HashMap<(u32, [u8; 12]), RuleValue>,
    rule_lens: Vec<u32>,
}

fn mask<const N: usize>(mut b: [u8; N], bits: u32) -> [u8; N] {
    for (i, byte) in b.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= bits {
            *byte = 0;
        } else if bits - start < 8 {
            *byte &= 0xffu8 << (8 - (bits - start));
        }
    }
    b
}

impl<'e> KernelIndex<'e> {
    pub fn new(entries: &'e KernelEntries) -> Self {
        let mut dst = HashMap::new();
        let mut dst_lens = Vec::new();
        for e in &entries.dst {
            dst.insert(
                (e.prefix_len, mask(dst_bytes(&e.key), e.prefix_len)),
                e.value,
            );
            dst_lens.push(e.prefix_len);
        }
        let mut rules = HashMap::new();
        let mut rule_lens = Vec::new();
        for e in &entries.rules {
            rules.insert(
                (e.prefix_len, mask(rule_bytes(&e.key), e.prefix_len)),
                e.value,
            );
            rule_lens.push(e.prefix_len);
        }
        for v in [&mut dst_lens, &mut rule_lens] {
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.dedup();
        }
        KernelIndex {
            entries,
            dst_hosts: entries.dst_hosts.iter().copied().collect(),
            dst,
            dst_lens,
            rules_exact: entries.rules_exact.iter().copied().collect(),
            rules,
            rule_lens,
        }
    }

    pub fn lookup(&self, pkt: &Packet, now_ns: u64) -> (Verdict, u32) {
        let g = self.entries.generation;
        let dst = DstKey {
            generation: g,
            addr: addr16(pkt.dst),
        };
        let dkey = dst_bytes(&dst);
        let Some(atom) = self.dst_hosts.get(&dst).or_else(|| {
            self.dst_lens
                .iter()
                .find_map(|&l| self.dst.get(&(l, mask(dkey, l))))
        }) else {
            return (Verdict::Allow, 0);
        };
        let default = (Verdict::from_u8(atom.default_verdict), atom.default_rule);
        let skey = SrcKey {
            generation: g,
            _pad: [0; 3],
            addr: addr16(pkt.src),
        };
        let Ok(i) = self.entries.src.binary_search_by(|(k, _)| k.cmp(&skey)) else {
            return default;
        };
        let class = self.entries.src[i].1.class;
        let port = match pkt.proto {
            proto::TCP | proto::UDP => pkt.dst_port,
            _ => 0,
        };
        let rule = RuleKey {
            generation: g,
            proto: pkt.proto,
            class: class.to_be_bytes(),
            atom: atom.atom.to_be_bytes(),
            port: port.to_be_bytes(),
        };
        let rkey = rule_bytes(&rule);
        match self.rules_exact.get(&rule).or_else(|| {
            self.rule_lens
                .iter()
                .find_map(|&l| self.rules.get(&(l, mask(rkey, l))))
        }) {
            Some(v) => v.at(now_ns),
            None => default,
        }
    }
}
