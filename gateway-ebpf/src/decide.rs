//! The policy lookups: three, however large the policy. Source -> class (hash),
//! destination -> atom, (class, atom, protocol, port) -> verdict. The last two are each an
//! exact-match hash in front of an LPM trie: full hosts (`DST_HOSTS`) and single ports
//! (`RULES_EXACT`) are found by one hash lookup, and only a miss walks the trie, whose cost
//! grows with its size. A full-length entry is the longest match there can be, so hash
//! first, trie on a miss answers exactly as one trie holding both would. Precedence (deny
//! over allow, audit, expiry) was resolved by the compiler into the entries; a miss means
//! the atom's default.

use aya_ebpf::maps::lpm_trie::Key;
use gateway_common::{
    Addr, FlowKey, Reason,
    flow::proto,
    policy::{
        AtomValue, DST_KEY_FIXED_BITS, DstKey, RULE_DEFAULT_DENY, RULE_KEY_FIXED_BITS, RuleKey,
        SrcKey, Verdict,
    },
};

use gateway_common::maps::src_filter_bit;

use crate::maps::{DST, DST_HOSTS, RULES, RULES_EXACT, SRC, SRC_FILTER};

/// A policy decision for a packet.
pub struct Decision {
    pub reason: Reason,
    pub rule: u32,
    /// Principal id of the source; 0 when the source is no principal.
    pub principal: u32,
    pub atom: u32,
    /// The decision must be taken again from this instant (rule expiry).
    pub valid_until_ns: u64,
}

impl Decision {
    pub const fn simple(reason: Reason) -> Self {
        Decision {
            reason,
            rule: RULE_DEFAULT_DENY,
            principal: 0,
            atom: 0,
            valid_until_ns: u64::MAX,
        }
    }
}

/// The atom of `addr` when it lies in protected space: its host entry, else the longest
/// shorter prefix.
#[inline(always)]
pub fn protected(slot: u8, addr: &Addr) -> Option<&'static AtomValue> {
    let key = DstKey {
        generation: slot,
        addr: *addr,
    };
    // SAFETY: plain data written whole by the agent, into a map allocated per entry
    // (`BPF_F_NO_PREALLOC`): a replaced or deleted value is freed only after this run.
    match unsafe { DST_HOSTS.get(&key) } {
        Some(host) => Some(host),
        None => DST.get(Key::new(DST_KEY_FIXED_BITS + 128, key)),
    }
}

/// True when `addr` lies in protected space. A separate BPF function: where two such tests
/// are combined, LLVM would otherwise OR the two map-value pointers, which the verifier
/// refuses.
#[inline(never)]
pub fn is_protected(slot: u8, addr: &Addr) -> bool {
    protected(slot, addr).is_some()
}

/// True when `addr` lies in an audit-mode part of protected space (its atom's default is
/// audit: unknown sources pass there, reported).
#[inline(always)]
pub fn audit_address(slot: u8, addr: &Addr) -> bool {
    match protected(slot, addr) {
        Some(atom) => Verdict::from_u8(atom.default_verdict) == Verdict::Audit,
        None => false,
    }
}

/// False when `addr` is no principal's source and no open flow's (docs/dataplane.md,
/// "Sources no principal has"): its bit in `SRC_FILTER` is clear. The filter holds every
/// source the source map held since the object was loaded, and every open flow's source
/// at load, so a clear bit means no flow of that source exists under any generation and the
/// source map has no entry for it. True when the bit is set (possibly another address's)
/// or when user space has not built the filter yet.
#[inline(always)]
pub fn maybe_principal(addr: &Addr) -> bool {
    let key = match SRC_FILTER.get(0) {
        Some(k) if *k != 0 => *k,
        _ => return true,
    };
    let Some(mul) = SRC_FILTER.get(1) else {
        return true;
    };
    let bit = src_filter_bit(key, *mul, addr);
    match SRC_FILTER.get(2 + (bit >> 6)) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// A separate BPF function (not inlined) with an out parameter, so its keys do not add to
/// the caller's stack frame. `candidate`: the source may be a principal
/// ([`maybe_principal`]); when false the source map is not asked (it has no entry).
#[inline(never)]
pub fn decide_into(slot: u8, key: &FlowKey, now: u64, candidate: bool, out: &mut Decision) {
    *out = decide(slot, key, now, candidate);
}

/// [`decide_into`] with the destination's atom given instead of looked up: a DNS
/// resource's proxy address on a connector (its atom comes from `NAMES`, docs/dataplane.md
/// "Names on the connector"). `flags`: bit 0 the key slot, bit 1 `candidate`. Not inlined,
/// with an out parameter, as [`decide_into`].
#[inline(never)]
pub fn decide_atom_into(key: &FlowKey, now: u64, flags: u32, atom: &AtomValue, out: &mut Decision) {
    *out = decide_atom((flags & 1) as u8, key, now, flags & 2 != 0, atom);
}

#[inline(always)]
fn decide(slot: u8, key: &FlowKey, now: u64, candidate: bool) -> Decision {
    let Some(atom) = protected(slot, &key.dst) else {
        // Not toward protected space: not ours, unless the packet claims to come from it.
        return if protected(slot, &key.src).is_some() {
            Decision::simple(Reason::DeniedUnsolicited)
        } else {
            Decision::simple(Reason::Unprotected)
        };
    };
    decide_atom(slot, key, now, candidate, atom)
}

/// The decision toward a destination whose atom is `atom`: source, then rules.
#[inline(always)]
fn decide_atom(slot: u8, key: &FlowKey, now: u64, candidate: bool, atom: &AtomValue) -> Decision {
    let src = SrcKey {
        generation: slot,
        _pad: [0; 3],
        addr: key.src,
    };
    let found = if candidate {
        // SAFETY: values are plain data written whole by the agent; a concurrent update can
        // at worst give this packet the neighbouring generation's value of the same slot.
        unsafe { SRC.get(&src) }
    } else {
        None
    };
    let Some(src) = found else {
        let audit = Verdict::from_u8(atom.default_verdict) == Verdict::Audit;
        return Decision {
            reason: if audit {
                Reason::Audit
            } else {
                Reason::DeniedUnknownSource
            },
            rule: if audit { atom.default_rule } else { 0 },
            principal: 0,
            atom: atom.atom,
            valid_until_ns: u64::MAX,
        };
    };
    let port = match key.proto {
        proto::TCP | proto::UDP => key.dst_port,
        _ => [0, 0],
    };
    let rule_key = RuleKey {
        generation: slot,
        proto: key.proto,
        class: src.class.to_be_bytes(),
        atom: atom.atom.to_be_bytes(),
        port,
    };
    // The exact port first; on a miss the port blocks. Rules without ports (ICMP; other
    // protocols have none) are trie entries only: one lookup.
    let exact = if matches!(key.proto, proto::TCP | proto::UDP) {
        // SAFETY: as for `DST_HOSTS` in `protected`.
        unsafe { RULES_EXACT.get(&rule_key) }
    } else {
        None
    };
    let rule = match exact {
        Some(exact) => Some(exact),
        None => RULES.get(Key::new(RULE_KEY_FIXED_BITS + 16, rule_key)),
    };
    let (verdict, rule, valid_until_ns) = match rule {
        Some(v) => {
            let (verdict, rule) = v.at(now);
            let until = if now < v.valid_until_ns {
                v.valid_until_ns
            } else {
                u64::MAX
            };
            (verdict, rule, until)
        }
        None => (
            Verdict::from_u8(atom.default_verdict),
            atom.default_rule,
            u64::MAX,
        ),
    };
    let reason = match verdict {
        Verdict::Allow => Reason::Allowed,
        Verdict::Audit => Reason::Audit,
        Verdict::Deny if rule != RULE_DEFAULT_DENY => Reason::DeniedByRule,
        Verdict::Deny => Reason::DeniedNoGrant,
    };
    Decision {
        reason,
        rule,
        principal: src.principal,
        atom: atom.atom,
        valid_until_ns,
    }
}
