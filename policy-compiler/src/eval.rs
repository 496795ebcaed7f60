//! The reference evaluator: slow, obvious, and the specification of everything fast.

use std::fmt;
use std::net::IpAddr;

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;

use crate::model::*;

/// A parsed packet (one direction). Addresses may be given IPv4-mapped; they are
/// compared in canonical form. For ICMP/ICMPv6 the ports are ignored by policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, anything else never matches
    /// a resource).
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Packet {
    pub fn tcp(src: IpAddr, dst: IpAddr, dst_port: u16) -> Packet {
        Packet {
            src,
            dst,
            proto: proto::TCP,
            src_port: 40000,
            dst_port,
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dst_port: u16) -> Packet {
        Packet {
            proto: proto::UDP,
            ..Packet::tcp(src, dst, dst_port)
        }
    }

    /// ICMP echo request (ICMPv6 for IPv6 destinations).
    pub fn icmp(src: IpAddr, dst: IpAddr) -> Packet {
        let dst = dst.to_canonical();
        Packet {
            proto: if dst.is_ipv6() {
                proto::ICMPV6
            } else {
                proto::ICMP
            },
            ..Packet::tcp(src, dst, 0)
        }
    }
}

/// Why a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Destination outside every remote network, or a DNS name no resource has: not
    /// ours to decide.
    Unprotected,
    /// Source is no device or service-account key.
    UnknownSource,
    /// A deny grant on an enforcing resource matched.
    DeniedByRule,
    /// A deny grant on an audit-mode resource matched (passes, reported).
    AuditDenyRule,
    /// An allow grant matched.
    Granted,
    /// No grant matched, a resource covering the destination is in audit mode.
    AuditNoGrant,
    /// No grant matched: default deny.
    NoGrant,
}

/// A rule id (see [`Policy::rule`] for its meaning); 0 is the default deny and is
/// represented as `None` in [`Decision::rule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleRef(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule: Option<RuleRef>,
}

impl Decision {
    /// The rule id as the data plane reports it (0 = default deny / none).
    pub fn rule_id(&self) -> u32 {
        self.rule.map_or(0, |r| r.0)
    }
}

/// How one (grant, resource) pair related to a packet, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Matched the packet (the lowest-id match of the winning kind decided).
    Matched,
    /// Would match, but the grant expired (at `expires_at`, unix seconds).
    Expired { expires_at: i64 },
    /// The resource does not cover the destination address.
    AddressMismatch,
    /// The address matches; protocol or port does not (resource ports ∩ narrowing).
    PortMismatch { allowed: String },
    /// The resource covers the packet, but the grant is not for this source.
    NotForPrincipal,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Consideration {
    pub rule: u32,
    pub grant: String,
    pub action: Action,
    pub resource: String,
    pub outcome: Outcome,
}

/// A decision with everything that was looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Device name or `sa/key` of the source, if it is a principal.
    pub principal: Option<String>,
    /// Resources whose address covers the destination (for a DNS name: those with the
    /// most specific pattern matching it).
    pub resources: Vec<String>,
    pub considered: Vec<Consideration>,
}

fn rule_kind(p: &Policy, id: u32) -> String {
    p.rule(id)
        .map_or_else(|| format!("rule {id}"), |r| r.to_string())
}

impl Explanation {
    /// Multi-line human-readable report.
    pub fn render(&self, policy: &Policy) -> String {
        use fmt::Write;
        let mut s = String::new();
        let d = &self.decision;
        let _ = writeln!(
            s,
            "verdict: {:?} ({:?}){}",
            d.verdict,
            d.reason,
            d.rule
                .map_or(String::new(), |r| format!(", {}", rule_kind(policy, r.0)))
        );
        let _ = writeln!(
            s,
            "source: {}",
            self.principal.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(
            s,
            "resources covering destination: {}",
            self.resources.join(", ")
        );
        for c in &self.considered {
            let _ = writeln!(
                s,
                "  rule {:>4} {} `{}` -> `{}`: {:?}",
                c.rule, c.action, c.grant, c.resource, c.outcome
            );
        }
        s
    }
}

/// Decides a packet at `now` (unix seconds). See the crate docs for the precedence.
///
/// Decided from the plain policy model only (devices, keys, groups, grants, resources as
/// parsed), never from what the compiler derives (`Grant::effective`, the policy's
/// lookup index): a bug there stays visible to the differential tests.
pub fn evaluate(policy: &Policy, pkt: &Packet, now: i64) -> Decision {
    decide(policy, pkt, Dst::Addr(pkt.dst.to_canonical()), now, None)
}

/// [`evaluate`] plus every grant that matched or was considered, and why.
pub fn explain(policy: &Policy, pkt: &Packet, now: i64) -> Explanation {
    explain_dst(policy, pkt, Dst::Addr(pkt.dst.to_canonical()), now)
}

/// Decides a packet to the DNS name `name` (lower-case, no trailing dot): the device's
/// resolver answered the name with a proxy address of the family of `pkt.dst` (whose
/// value is otherwise unused). The resources covering it are those with the most
/// specific pattern matching it ([`crate::names`]); a name no resource has is
/// `Unprotected` (the resolver forwards it upstream: its traffic goes to the address
/// it resolves to, and is decided by that address).
pub fn evaluate_name(policy: &Policy, pkt: &Packet, name: &str, now: i64) -> Decision {
    let dst = Dst::Name(name, pkt.dst.to_canonical().is_ipv6());
    decide(policy, pkt, dst, now, None)
}

/// [`evaluate_name`] plus every grant that matched or was considered, and why.
pub fn explain_name(policy: &Policy, pkt: &Packet, name: &str, now: i64) -> Explanation {
    let dst = Dst::Name(name, pkt.dst.to_canonical().is_ipv6());
    explain_dst(policy, pkt, dst, now)
}

fn explain_dst(policy: &Policy, pkt: &Packet, dst: Dst<'_>, now: i64) -> Explanation {
    let mut considered = Vec::new();
    let decision = decide(policy, pkt, dst, now, Some(&mut considered));
    let covering = covering(policy, dst);
    Explanation {
        decision,
        principal: source_of(policy, pkt.src.to_canonical()).map(|s| s.name),
        resources: policy
            .resources
            .iter()
            .enumerate()
            .filter(|(i, _)| covering.contains(i))
            .map(|(_, r)| r.name.clone())
            .collect(),
        considered,
    }
}

/// Where a packet goes: an address, or a DNS name (reached at a proxy address of the
/// family given: `true` for IPv6).
#[derive(Clone, Copy, Debug)]
enum Dst<'a> {
    Addr(IpAddr),
    Name(&'a str, bool),
}

impl Dst<'_> {
    fn is_ipv6(&self) -> bool {
        match self {
            Dst::Addr(a) => a.is_ipv6(),
            Dst::Name(_, v6) => *v6,
        }
    }
}

/// The resources covering `dst` (by index): those whose address contains it, or those
/// with the most specific name pattern matching it.
fn covering(policy: &Policy, dst: Dst<'_>) -> Vec<usize> {
    match dst {
        Dst::Addr(a) => policy
            .resources
            .iter()
            .enumerate()
            .filter(|(_, r)| r.address.contains(&a))
            .map(|(i, _)| i)
            .collect(),
        Dst::Name(n, _) => crate::names::most_specific(
            n,
            policy
                .resources
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.address.name().map(|p| (p, i))),
        ),
    }
}

/// Who sends from an address: a device (its owner's grants) or a service-account key
/// (its account's grants).
struct Source {
    name: String,
    who: Who,
    /// Keys only: unix seconds, exclusive.
    expires_at: Option<i64>,
}

#[derive(Clone, Copy)]
enum Who {
    User(usize),
    ServiceAccount(usize),
}

/// The device or service-account key one of whose addresses is `addr`, found by looking at
/// every one of them (expired keys included; the caller checks expiry).
fn source_of(policy: &Policy, addr: IpAddr) -> Option<Source> {
    for d in &policy.devices {
        if d.addresses.iter().any(|a| a.to_canonical() == addr) {
            return Some(Source {
                name: d.name.clone(),
                who: Who::User(d.owner),
                expires_at: None,
            });
        }
    }
    for (si, sa) in policy.service_accounts.iter().enumerate() {
        for k in &sa.keys {
            if k.addresses.iter().any(|a| a.to_canonical() == addr) {
                return Some(Source {
                    name: format!("{}/{}", sa.name, k.name),
                    who: Who::ServiceAccount(si),
                    expires_at: k.expires_at,
                });
            }
        }
    }
    None
}

/// Whether a grant names `who`: the user or service account itself, or a group holding it.
fn grant_names(policy: &Policy, g: &Grant, who: Who) -> bool {
    g.principals.iter().any(|r| match (*r, who) {
        (PrincipalRef::User(u), Who::User(x)) => u == x,
        (PrincipalRef::ServiceAccount(s), Who::ServiceAccount(x)) => s == x,
        (PrincipalRef::Group(gi), Who::User(x)) => policy.groups[gi].users.contains(&x),
        (PrincipalRef::Group(gi), Who::ServiceAccount(x)) => {
            policy.groups[gi].service_accounts.contains(&x)
        }
        _ => false,
    })
}

/// Whether the (grant, resource) pair covers the protocol and port: the resource's own
/// ports and, when the grant narrows, the narrowing's too (their intersection).
fn ports_match(res: &Resource, g: &Grant, pkt: &Packet, dst_is_v6: bool) -> bool {
    res.ports.matches(pkt.proto, pkt.dst_port, dst_is_v6)
        && g.narrowing
            .as_ref()
            .is_none_or(|n| n.matches(pkt.proto, pkt.dst_port, dst_is_v6))
}

/// What a (grant, resource) pair covers, for `explain`: resource ∩ narrowing.
fn pair_ports(res: &Resource, g: &Grant) -> ProtoSet {
    match &g.narrowing {
        Some(n) => res.ports.intersect(n),
        None => res.ports.clone(),
    }
}

/// Lowest audit-default rule among the audit-mode resources of `covering`.
fn audit_default(policy: &Policy, covering: &[usize]) -> Option<u32> {
    covering
        .iter()
        .map(|&i| &policy.resources[i])
        .filter(|r| r.mode == Mode::Audit)
        .filter_map(|r| r.audit_rule)
        .min()
}

fn decide(
    policy: &Policy,
    pkt: &Packet,
    dst: Dst<'_>,
    now: i64,
    mut log: Option<&mut Vec<Consideration>>,
) -> Decision {
    let src = pkt.src.to_canonical();
    let covering = covering(policy, dst);
    // 1. Unprotected destination: an address outside every remote network, a name no
    // resource has.
    let protected = match dst {
        Dst::Addr(a) => policy
            .networks
            .iter()
            .any(|n| n.cidrs.iter().any(|c| c.contains(&a))),
        Dst::Name(..) => !covering.is_empty(),
    };
    if !protected {
        return Decision {
            verdict: Verdict::Allow,
            reason: Reason::Unprotected,
            rule: None,
        };
    }
    let audit = audit_default(policy, &covering);
    let fallback = |reason_audit: Reason, reason_deny: Reason| match audit {
        Some(r) => Decision {
            verdict: Verdict::Audit,
            reason: reason_audit,
            rule: Some(RuleRef(r)),
        },
        None => Decision {
            verdict: Verdict::Deny,
            reason: reason_deny,
            rule: None,
        },
    };
    // 2. Unknown source. An expired service-account key is no principal any more.
    let Some(source) = source_of(policy, src).filter(|s| s.expires_at.is_none_or(|e| now < e))
    else {
        return fallback(Reason::UnknownSource, Reason::UnknownSource);
    };
    // 3. Matching grants of the principal.
    let (mut deny_enforce, mut deny_audit, mut allow): (Option<u32>, Option<u32>, Option<u32>) =
        (None, None, None);
    let min = |slot: &mut Option<u32>, id: u32| *slot = Some(slot.map_or(id, |s| s.min(id)));
    for g in &policy.grants {
        let for_me = grant_names(policy, g, source.who);
        for (k, &r) in g.resources.iter().enumerate() {
            let res = &policy.resources[r];
            let covers = covering.contains(&r);
            let matches = covers && ports_match(res, g, pkt, dst.is_ipv6());
            let active = g.expires_at.is_none_or(|e| now < e);
            if let Some(log) = log.as_deref_mut() {
                let outcome = if !covers {
                    if !for_me {
                        continue;
                    }
                    Outcome::AddressMismatch
                } else if !for_me {
                    Outcome::NotForPrincipal
                } else if !matches {
                    Outcome::PortMismatch {
                        allowed: pair_ports(res, g).to_string(),
                    }
                } else if !active {
                    Outcome::Expired {
                        expires_at: g.expires_at.unwrap_or_default(),
                    }
                } else {
                    Outcome::Matched
                };
                log.push(Consideration {
                    rule: g.rules[k],
                    grant: g.name.clone(),
                    action: g.action,
                    resource: res.name.clone(),
                    outcome,
                });
            }
            if !(for_me && matches && active) {
                continue;
            }
            match (g.action, res.mode) {
                (Action::Deny, Mode::Enforce) => min(&mut deny_enforce, g.rules[k]),
                (Action::Deny, Mode::Audit) => min(&mut deny_audit, g.rules[k]),
                (Action::Allow, _) => min(&mut allow, g.rules[k]),
            }
        }
    }
    // 4. Precedence.
    if let Some(r) = deny_enforce {
        return Decision {
            verdict: Verdict::Deny,
            reason: Reason::DeniedByRule,
            rule: Some(RuleRef(r)),
        };
    }
    if let Some(r) = deny_audit {
        return Decision {
            verdict: Verdict::Audit,
            reason: Reason::AuditDenyRule,
            rule: Some(RuleRef(r)),
        };
    }
    if let Some(r) = allow {
        return Decision {
            verdict: Verdict::Allow,
            reason: Reason::Granted,
            rule: Some(RuleRef(r)),
        };
    }
    fallback(Reason::AuditNoGrant, Reason::NoGrant)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::random::{Rng, gen_policy, random_packet};

    /// The evaluator reads the plain model only: wiping what the compiler derives (the
    /// lookup index and each pair's precomputed ports) changes no decision.
    #[test]
    fn decides_without_derived_data() {
        let now = 1_700_000_000;
        let mut rng = Rng(0xe7a1);
        let mut checked = 0;
        while checked < 3000 {
            let Ok(parsed) = crate::parse(&gen_policy(&mut rng, now), "r.toml", now) else {
                continue;
            };
            let policy = parsed.policy;
            let mut wiped = policy.clone();
            wiped.index = Default::default();
            for g in &mut wiped.grants {
                for e in &mut g.effective {
                    *e = ProtoSet::default();
                }
            }
            let space: Vec<ipnet::IpNet> = policy
                .networks
                .iter()
                .flat_map(|n| n.cidrs.iter().copied())
                .collect();
            for _ in 0..30 {
                let pkt = random_packet(&mut rng, &policy, None, &space);
                for t in [now, now + 150] {
                    assert_eq!(evaluate(&policy, &pkt, t), evaluate(&wiped, &pkt, t));
                    assert_eq!(explain(&policy, &pkt, t), explain(&wiped, &pkt, t));
                    checked += 1;
                }
            }
        }
    }
}
