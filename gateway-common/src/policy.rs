//! Compiled policy: the map entries the policy compiler emits and the data plane reads.
//!
//! A decision takes three lookups, each independent of the size of the policy:
//!
//! 1. `SRC` (hash): source address -> principal id and principal **class** (principals with
//!    identical access share one class).
//! 2. `DST_HOSTS` (hash), then `DST` (LPM trie): destination address -> **address atom** (a
//!    disjoint piece of the protected space carrying the merged rules of every resource that
//!    covers it), plus the atom's default verdict. A miss in both means the destination is
//!    outside protected space.
//! 3. `RULES_EXACT` (hash), then `RULES` (LPM trie): (class, atom, protocol, port) -> verdict
//!    and rule id. The compiler splits the port space into disjoint intervals and each
//!    interval into aligned power-of-two blocks, so the port is the trailing, prefix-matched
//!    part of the key and one lookup answers for any port set. A miss in both means the
//!    atom's default verdict.
//!
//! The hashes hold the full-length entries (a host: /32 or /128; a single port), keyed by
//! exactly the trie key's data, and the tries only the shorter prefixes: a full-length
//! entry is the longest match there can be, so hash first and trie on a miss answers as one
//! trie holding both would, while the common case (a host resource, a single port) costs a
//! hash lookup instead of a trie walk that grows with the trie.
//!
//! Every key starts with a policy **generation** byte. The agent writes generation `g+1`
//! next to `g`, flips the one-entry `ACTIVE` array, then deletes `g`: a packet reads the
//! active generation once, so it sees the old policy or the new one, never a mix.

use crate::addr::Addr;

/// A verdict as stored in maps. Zero is deny: a zero-filled value fails closed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Deny = 0,
    Allow = 1,
    /// Would be denied, but the resource is in audit mode: pass and report.
    Audit = 2,
}

impl Verdict {
    /// Decodes a stored byte; anything unknown is deny.
    #[inline(always)]
    pub const fn from_u8(v: u8) -> Verdict {
        match v {
            1 => Verdict::Allow,
            2 => Verdict::Audit,
            _ => Verdict::Deny,
        }
    }

    /// True when the packet may pass.
    #[inline(always)]
    pub const fn passes(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::Audit)
    }

    /// Stable lowercase name, for dumps and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Deny => "deny",
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
        }
    }
}

/// Rule id meaning "no rule decided": the default deny of protected space.
pub const RULE_DEFAULT_DENY: u32 = 0;

/// Key of the `SRC` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SrcKey {
    pub generation: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

/// Value of the `SRC` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SrcValue {
    /// Principal id (a device or a service-account key); names are in the user-side
    /// metadata of the compiled view.
    pub principal: u32,
    /// Equivalence class of principals with identical access; 0 is never used.
    pub class: u32,
}

/// Data of the `DST` LPM trie key (the `prefix_len` of the trie key precedes it), and the
/// key of the `DST_HOSTS` hash (a full host: every bit significant; no padding).
/// `prefix_len = 8 + address prefix bits` (IPv4 prefixes: `8 + 96 + len`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DstKey {
    pub generation: u8,
    pub addr: Addr,
}

/// Bits of [`DstKey`] before the address.
pub const DST_KEY_FIXED_BITS: u32 = 8;

/// Value of the `DST` LPM trie and the `DST_HOSTS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AtomValue {
    /// Atom id; 0 is never used.
    pub atom: u32,
    /// [`Verdict`] for traffic no rule entry matches: deny, or audit when a resource
    /// covering the atom is in audit mode.
    pub default_verdict: u8,
    pub _pad: [u8; 3],
    /// Rule id reported with the default verdict.
    pub default_rule: u32,
}

/// Data of the `RULES` LPM trie key, and the key of the `RULES_EXACT` hash (a single port:
/// every bit significant; no padding).
/// `prefix_len = RULE_KEY_FIXED_BITS + port prefix bits (0..=16)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RuleKey {
    pub generation: u8,
    /// IP protocol number (6, 17, 1, 58).
    pub proto: u8,
    /// Big-endian class id.
    pub class: [u8; 4],
    /// Big-endian atom id.
    pub atom: [u8; 4],
    /// Big-endian port (ICMP: 0 with no port bits in the prefix).
    pub port: [u8; 2],
}

/// Bits of [`RuleKey`] before the port: generation, proto, class, atom.
pub const RULE_KEY_FIXED_BITS: u32 = 8 + 8 + 32 + 32;

/// Value of the `RULES` LPM trie and the `RULES_EXACT` hash.
///
/// Expiry: until `valid_until_ns` (boot clock, `u64::MAX` = never) the entry means
/// (`verdict`, `rule`); from then on it means (`after_verdict`, `after_rule`), so an
/// expiring grant stops in the kernel without the agent. The agent recompiles before any
/// second change point.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RuleValue {
    pub verdict: u8,
    pub after_verdict: u8,
    pub _pad: [u8; 2],
    pub rule: u32,
    pub after_rule: u32,
    pub _pad2: [u8; 4],
    pub valid_until_ns: u64,
}

impl RuleValue {
    /// The (verdict, rule) in force at boot-clock time `now_ns`.
    #[inline(always)]
    pub const fn at(&self, now_ns: u64) -> (Verdict, u32) {
        if now_ns < self.valid_until_ns {
            (Verdict::from_u8(self.verdict), self.rule)
        } else {
            (Verdict::from_u8(self.after_verdict), self.after_rule)
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain-old-data, `repr(C)`, padding made explicit with `_pad` fields.
    unsafe impl aya::Pod for super::SrcKey {}
    unsafe impl aya::Pod for super::SrcValue {}
    unsafe impl aya::Pod for super::DstKey {}
    unsafe impl aya::Pod for super::AtomValue {}
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::RuleValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<SrcKey>(), 20);
        assert_eq!(size_of::<SrcValue>(), 8);
        assert_eq!(size_of::<DstKey>(), 17);
        assert_eq!(size_of::<AtomValue>(), 12);
        assert_eq!(size_of::<RuleKey>(), 12);
        assert_eq!(size_of::<RuleValue>(), 24);
        assert_eq!(size_of::<crate::FlowKey>(), 40);
    }

    #[test]
    fn unknown_verdict_bytes_deny() {
        for b in 3..=255u8 {
            assert_eq!(Verdict::from_u8(b), Verdict::Deny);
        }
        assert_eq!(Verdict::from_u8(0), Verdict::Deny);
    }

    #[test]
    fn rule_value_switches_at_expiry() {
        let v = RuleValue {
            verdict: Verdict::Allow as u8,
            rule: 7,
            after_verdict: Verdict::Deny as u8,
            after_rule: 0,
            valid_until_ns: 100,
            ..Default::default()
        };
        assert_eq!(v.at(99), (Verdict::Allow, 7));
        assert_eq!(v.at(100), (Verdict::Deny, 0));
    }
}
