//! The exact map entries the data plane reads; with the feature `testing`, a plain-Rust
//! model of its lookup (`lookup`, `KernelIndex`, in `kernel/oracle.rs`).

use std::net::IpAddr;

use gateway_common::addr::{Addr, V4_MAPPED_PREFIX_BITS, from_v4};
use gateway_common::policy::{
    AtomValue, DST_KEY_FIXED_BITS, DstKey, RULE_KEY_FIXED_BITS, RuleKey, RuleValue, SrcKey,
    SrcValue,
};
use ipnet::IpNet;

use crate::compile::HostView;

#[cfg(any(test, feature = "testing"))]
mod oracle;
#[cfg(any(test, feature = "testing"))]
pub use oracle::{KernelIndex, lookup};

/// One entry of an LPM trie map: `prefix_len` bits of `key` are significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LpmEntry<K, V> {
    pub prefix_len: u32,
    pub key: K,
    pub value: V,
}

/// All entries of one policy generation, each list in its order ([`KernelEntries::sort`]).
///
/// Destinations and rules are each split over two maps by prefix length: the full-length
/// entries (a host, a single port) go to an exact-match hash the kernel looks up first,
/// the rest to the LPM trie it walks on a miss. A full-length entry is the longest match
/// there can be, so the two answer as one trie holding both would.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelEntries {
    pub generation: u8,
    /// `SRC` hash map.
    pub src: Vec<(SrcKey, SrcValue)>,
    /// `DST` LPM trie: prefixes shorter than a host.
    pub dst: Vec<LpmEntry<DstKey, AtomValue>>,
    /// `DST_HOSTS` hash map: the full hosts (/32 IPv4, /128 IPv6).
    pub dst_hosts: Vec<(DstKey, AtomValue)>,
    /// `RULES` LPM trie: port blocks wider than one port, and rules without ports.
    pub rules: Vec<LpmEntry<RuleKey, RuleValue>>,
    /// `RULES_EXACT` hash map: the single-port entries.
    pub rules_exact: Vec<(RuleKey, RuleValue)>,
}

/// `DST` prefix length of a full host: the key's every bit.
pub const DST_HOST_PREFIX_LEN: u32 = DST_KEY_FIXED_BITS + 128;
/// `RULES` prefix length of a single port: the key's every bit.
pub const RULE_EXACT_PREFIX_LEN: u32 = RULE_KEY_FIXED_BITS + 16;

impl KernelEntries {
    /// Entries over all four policy maps.
    pub fn len(&self) -> usize {
        self.src.len()
            + self.dst.len()
            + self.dst_hosts.len()
            + self.rules.len()
            + self.rules_exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts every list in its order: the derived order of its entries, except the rules,
    /// which go by [`RuleOrder`] (the order the compiler makes them in). Lists already in
    /// order (a view's) cost one pass; entries read back from the maps are sorted.
    pub fn sort(&mut self) {
        sort_by_key_if_needed(&mut self.src, |e| *e);
        sort_by_key_if_needed(&mut self.dst, |e| *e);
        sort_by_key_if_needed(&mut self.dst_hosts, |e| *e);
        sort_by_key_if_needed(&mut self.rules, |e| RuleOrder::of(e.prefix_len, e.key));
        sort_by_key_if_needed(&mut self.rules_exact, |e| {
            RuleOrder::of(RULE_EXACT_PREFIX_LEN, e.0)
        });
    }

    /// The same entries all in the tries, as maps written before the exact-match hashes
    /// existed hold them (tests of an upgrade).
    #[cfg(any(test, feature = "testing"))]
    pub fn all_in_tries(&self) -> KernelEntries {
        let mut dst = self.dst.clone();
        dst.extend(self.dst_hosts.iter().map(|&(key, value)| LpmEntry {
            prefix_len: DST_HOST_PREFIX_LEN,
            key,
            value,
        }));
        let mut rules = self.rules.clone();
        rules.extend(self.rules_exact.iter().map(|&(key, value)| LpmEntry {
            prefix_len: RULE_EXACT_PREFIX_LEN,
            key,
            value,
        }));
        let mut all = KernelEntries {
            generation: self.generation,
            src: self.src.clone(),
            dst,
            dst_hosts: Vec::new(),
            rules,
            rules_exact: Vec::new(),
        };
        all.sort();
        all
    }
}

/// The order of rule keys in [`KernelEntries`] (and of the writer's diff): class, atom,
/// protocol, port, then prefix length. It is the order the compiler generates rules in
/// (`RuleSlot`'s: class, atom, protocol, port, port bits), so turning a view into entries
/// sorts nothing; the key's big-endian fields compare as their numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleOrder {
    generation: u8,
    class: [u8; 4],
    atom: [u8; 4],
    proto: u8,
    port: [u8; 2],
    /// The `RULES` prefix length (single ports: [`RULE_EXACT_PREFIX_LEN`]).
    pub prefix_len: u32,
}

impl RuleOrder {
    pub fn of(prefix_len: u32, k: RuleKey) -> Self {
        RuleOrder {
            generation: k.generation,
            class: k.class,
            atom: k.atom,
            proto: k.proto,
            port: k.port,
            prefix_len,
        }
    }

    /// The map key this order was made from.
    pub fn key(&self) -> RuleKey {
        RuleKey {
            generation: self.generation,
            proto: self.proto,
            class: self.class,
            atom: self.atom,
            port: self.port,
        }
    }
}

/// Sorts `v` by `key` unless it is in that order already (one pass).
fn sort_by_key_if_needed<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    if !v.is_sorted_by_key(&key) {
        v.sort_unstable_by_key(key);
    }
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
    let src: Vec<(SrcKey, SrcValue)> = view
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
    // Full hosts to their hash, shorter prefixes to the trie; the same for single ports.
    let hosts = view
        .atoms
        .iter()
        .filter(|d| dst_prefix_len(&d.prefix) == DST_HOST_PREFIX_LEN)
        .count();
    let mut dst = Vec::with_capacity(view.atoms.len() - hosts);
    let mut dst_hosts = Vec::with_capacity(hosts);
    for d in &view.atoms {
        let prefix_len = dst_prefix_len(&d.prefix);
        let key = DstKey {
            generation,
            addr: addr16(d.prefix.network()),
        };
        let value = AtomValue {
            atom: d.atom,
            default_verdict: d.default_verdict as u8,
            _pad: [0; 3],
            default_rule: d.default_rule,
        };
        if prefix_len == DST_HOST_PREFIX_LEN {
            dst_hosts.push((key, value));
        } else {
            dst.push(LpmEntry {
                prefix_len,
                key,
                value,
            });
        }
    }
    let exact = view.rules.iter().filter(|r| r.key.port_bits == 16).count();
    let mut rules = Vec::with_capacity(view.rules.len() - exact);
    let mut rules_exact = Vec::with_capacity(exact);
    for r in &view.rules {
        let prefix_len = RULE_KEY_FIXED_BITS + u32::from(r.key.port_bits);
        let key = RuleKey {
            generation,
            proto: r.key.proto,
            class: r.key.class.to_be_bytes(),
            atom: r.key.atom.to_be_bytes(),
            port: r.key.port.to_be_bytes(),
        };
        let value = RuleValue {
            verdict: r.value.verdict as u8,
            after_verdict: r.value.after_verdict as u8,
            _pad: [0; 2],
            rule: r.value.rule,
            after_rule: r.value.after_rule,
            _pad2: [0; 4],
            valid_until_ns: r.value.valid_until_unix.map_or(u64::MAX, &unix_to_boot_ns),
        };
        if prefix_len == RULE_EXACT_PREFIX_LEN {
            rules_exact.push((key, value));
        } else {
            rules.push(LpmEntry {
                prefix_len,
                key,
                value,
            });
        }
    }
    let mut out = KernelEntries {
        generation,
        src,
        dst,
        dst_hosts,
        rules,
        rules_exact,
    };
    out.sort();
    out
}
