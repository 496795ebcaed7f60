//! The exact map entries the data plane reads, and a plain-Rust model of its lookup.

use std::collections::HashMap;
use std::net::IpAddr;

use gateway_common::addr::{Addr, V4_MAPPED_PREFIX_BITS, from_v4};
use gateway_common::flow::proto;
use gateway_common::policy::{
    AtomValue, DST_KEY_FIXED_BITS, DstKey, RULE_KEY_FIXED_BITS, RuleKey, RuleValue, SrcKey,
    SrcValue, Verdict,
};
use ipnet::IpNet;

use crate::compile::HostView;
use crate::eval::Packet;

/// One entry of an LPM trie map: `prefix_len` bits of `key` are significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LpmEntry<K, V> {
    pub prefix_len: u32,
    pub key: K,
    pub value: V,
}

/// All entries of one policy generation, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelEntries {
    pub generation: u8,
    /// `SRC` hash map.
    pub src: Vec<(SrcKey, SrcValue)>,
    /// `DST` LPM trie.
    pub dst: Vec<LpmEntry<DstKey, AtomValue>>,
    /// `RULES` LPM trie.
    pub rules: Vec<LpmEntry<RuleKey, RuleValue>>,
}

/// The shared 16-byte form of an address (IPv4 mapped).
pub fn addr16(a: IpAddr) -> Addr {
    match a.to_canonical() {
        IpAddr::V4(v4) => from_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `DST` trie prefix length of a prefix: generation byte + address bits (IPv4 mapped).
pub fn dst_prefix_len(p: &IpNet) -> u32 {
    DST_KEY_FIXED_BITS
        + u32::from(p.prefix_len())
        + match p {
            IpNet::V4(_) => V4_MAPPED_PREFIX_BITS,
            IpNet::V6(_) => 0,
        }
}

/// Turns a view into map entries for `generation`; `unix_to_boot_ns` converts expiry
/// instants to the boot clock the kernel reads (`bpf_ktime_get_boot_ns`).
pub fn to_kernel(
    view: &HostView,
    generation: u8,
    unix_to_boot_ns: impl Fn(i64) -> u64,
) -> KernelEntries {
    let mut src: Vec<(SrcKey, SrcValue)> = view
        .sources
        .iter()
        .map(|s| {
            (
                SrcKey {
                    generation,
                    _pad: [0; 3],
                    addr: addr16(s.addr),
                },
                SrcValue {
                    principal: s.principal,
                    class: s.class,
                },
            )
        })
        .collect();
    src.sort_unstable();
    let mut dst: Vec<LpmEntry<DstKey, AtomValue>> = view
        .atoms
        .iter()
        .map(|d| LpmEntry {
            prefix_len: dst_prefix_len(&d.prefix),
            key: DstKey {
                generation,
                addr: addr16(d.prefix.network()),
            },
            value: AtomValue {
                atom: d.atom,
                default_verdict: d.default_verdict as u8,
                _pad: [0; 3],
                default_rule: d.default_rule,
            },
        })
        .collect();
    dst.sort_unstable();
    let mut rules: Vec<LpmEntry<RuleKey, RuleValue>> = view
        .rules
        .iter()
        .map(|r| LpmEntry {
            prefix_len: RULE_KEY_FIXED_BITS + u32::from(r.key.port_bits),
            key: RuleKey {
                generation,
                proto: r.key.proto,
                class: r.key.class.to_be_bytes(),
                atom: r.key.atom.to_be_bytes(),
                port: r.key.port.to_be_bytes(),
            },
            value: RuleValue {
                verdict: r.value.verdict as u8,
                after_verdict: r.value.after_verdict as u8,
                _pad: [0; 2],
                rule: r.value.rule,
                after_rule: r.value.after_rule,
                _pad2: [0; 4],
                valid_until_ns: r.value.valid_until_unix.map_or(u64::MAX, &unix_to_boot_ns),
            },
        })
        .collect();
    rules.sort_unstable();
    KernelEntries {
        generation,
        src,
        dst,
        rules,
    }
}

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

/// What the XDP program decides for `pkt` with these maps at boot-clock `now_ns`:
/// `DST` miss -> pass (unprotected, rule 0); `SRC` miss or `RULES` miss -> the atom's
/// default; otherwise the rule value at `now_ns`. The port looked up is the destination
/// port for TCP/UDP and 0 otherwise (ICMP rules have no port bits).
pub fn lookup(entries: &KernelEntries, pkt: &Packet, now_ns: u64) -> (Verdict, u32) {
    let g = entries.generation;
    let dkey = dst_bytes(&DstKey {
        generation: g,
        addr: addr16(pkt.dst),
    });
    let Some(atom) = lpm(&entries.dst, &dkey, |k| dst_bytes(k).to_vec()) else {
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
    let rkey = rule_bytes(&RuleKey {
        generation: g,
        proto: pkt.proto,
        class: src.class.to_be_bytes(),
        atom: atom.atom.to_be_bytes(),
        port: port.to_be_bytes(),
    });
    match lpm(&entries.rules, &rkey, |k| rule_bytes(k).to_vec()) {
        Some(v) => v.at(now_ns),
        None => default,
    }
}

/// An index over [`KernelEntries`] for many lookups (same answers as [`lookup`]).
#[derive(Debug)]
pub struct KernelIndex<'e> {
    entries: &'e KernelEntries,
    dst: HashMap<(u32, [u8; 17]), AtomValue>,
    dst_lens: Vec<u32>,
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
            dst,
            dst_lens,
            rules,
            rule_lens,
        }
    }

    pub fn lookup(&self, pkt: &Packet, now_ns: u64) -> (Verdict, u32) {
        let g = self.entries.generation;
        let dkey = dst_bytes(&DstKey {
            generation: g,
            addr: addr16(pkt.dst),
        });
        let Some(atom) = self
            .dst_lens
            .iter()
            .find_map(|&l| self.dst.get(&(l, mask(dkey, l))))
        else {
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
        let rkey = rule_bytes(&RuleKey {
            generation: g,
            proto: pkt.proto,
            class: class.to_be_bytes(),
            atom: atom.atom.to_be_bytes(),
            port: port.to_be_bytes(),
        });
        match self
            .rule_lens
            .iter()
            .find_map(|&l| self.rules.get(&(l, mask(rkey, l))))
        {
            Some(v) => v.at(now_ns),
            None => default,
        }
    }
}
