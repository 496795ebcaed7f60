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
    /// Destination outside every remote network: not ours to decide.
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
    /// Resources whose address covers the destination.
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
pub fn evaluate(policy: &Policy, pkt: &Packet, now: i64) -> Decision {
    decide(policy, pkt, now, None)
}

/// [`evaluate`] plus every grant that matched or was considered, and why.
pub fn explain(policy: &Policy, pkt: &Packet, now: i64) -> Explanation {
    let mut considered = Vec::new();
    let decision = decide(policy, pkt, now, Some(&mut considered));
    let dst = pkt.dst.to_canonical();
    Explanation {
        decision,
        principal: policy
            .principal_by_addr(pkt.src)
            .map(|p| policy.principal_name(p)),
        resources: policy
            .resources
            .iter()
            .filter(|r| r.address.contains(&dst))
            .map(|r| r.name.clone())
            .collect(),
        considered,
    }
}

/// Lowest audit-default rule among audit-mode resources covering `dst`.
pub(crate) fn audit_default(policy: &Policy, dst: IpAddr) -> Option<u32> {
    policy
        .resources
        .iter()
        .filter(|r| r.mode == Mode::Audit && r.address.contains(&dst))
        .filter_map(|r| r.audit_rule)
        .min()
}

fn decide(
    policy: &Policy,
    pkt: &Packet,
    now: i64,
    mut log: Option<&mut Vec<Consideration>>,
) -> Decision {
    let src = pkt.src.to_canonical();
    let dst = pkt.dst.to_canonical();
    // 1. Unprotected destination.
    if !policy
        .networks
        .iter()
        .any(|n| n.cidrs.iter().any(|c| c.contains(&dst)))
    {
        return Decision {
            verdict: Verdict::Allow,
            reason: Reason::Unprotected,
            rule: None,
        };
    }
    let audit = audit_default(policy, dst);
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
    // 2. Unknown source.
    // An expired service-account key is no principal any more.
    let Some(principal) = policy.principal_by_addr(src).filter(|p| p.is_active(now)) else {
        return fallback(Reason::UnknownSource, Reason::UnknownSource);
    };
    // 3. Matching grants of the principal.
    let mine = policy.grants_of(principal);
    let port = pkt.dst_port;
    let (mut deny_enforce, mut deny_audit, mut allow): (Option<u32>, Option<u32>, Option<u32>) =
        (None, None, None);
    let min = |slot: &mut Option<u32>, id: u32| *slot = Some(slot.map_or(id, |s| s.min(id)));
    for (gi, g) in policy.grants.iter().enumerate() {
        let for_me = mine.binary_search(&gi).is_ok();
        for (k, &r) in g.resources.iter().enumerate() {
            let res = &policy.resources[r];
            let covers = res.address.contains(&dst);
            let matches = covers && g.effective[k].matches(pkt.proto, port, dst.is_ipv6());
            let active = g.is_active(now);
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
                        allowed: g.effective[k].to_string(),
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
