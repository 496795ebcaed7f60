//! The precedence of the crate docs, step by step, on the reference evaluator (and the
//! compiled views agree on each case).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use policy_compiler::*;

const NOW: i64 = 1_767_225_600;

const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["conn"]

[[resource]]
name = "subnet"          # audit-mode /24 around everything below
network = "dc"
address = "198.18.5.0/24"
tcp = "all"
mode = "audit"

[[resource]]
name = "web"
network = "dc"
address = "198.18.5.10"
tcp = ["80", "443"]
icmp = true

[[resource]]
name = "web-v6"
network = "dc"
address = "2001:db8:1::10"
tcp = ["443"]
icmp = true

[[resource]]
name = "locked"
network = "dc"
address = "198.18.6.1"
tcp = ["22"]

[[user]]
email = "a@x.test"

[[user]]
email = "b@x.test"

[[device]]
name = "a"
owner = "a@x.test"
address = "198.19.0.1"

[[device]]
name = "b"
owner = "b@x.test"
address = "198.19.0.2"

[[group]]
name = "all"
members = ["a@x.test", "b@x.test"]

[[allow]]                 # rules 1 (web), 2 (web-v6)
name = "all-web"
principals = ["all"]
resources = ["web", "web-v6"]

[[allow]]                 # rule 3
name = "all-web-again"
principals = ["all"]
resources = ["web"]

[[deny]]                  # rule 4: deny on the audit-mode subnet, port 8080
name = "b-no-8080"
principals = ["b@x.test"]
resources = ["subnet"]
tcp = ["8080"]

[[deny]]                  # rule 5: deny wins over allow (b, web:443)
name = "b-no-https"
principals = ["b@x.test"]
resources = ["web"]
tcp = ["443"]

[[allow]]                 # rule 6: expires exactly at NOW + 100
name = "a-locked-temporarily"
principals = ["a@x.test"]
resources = ["locked"]
expires_at = "2026-01-01T00:01:40Z"
"#;
// rule 7: audit default of "subnet"

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn check(p: &Policy, pkt: Packet, at: i64, verdict: Verdict, reason: Reason, rule: u32) {
    let d = evaluate(p, &pkt, at);
    assert_eq!(
        (d.verdict, d.reason, d.rule_id()),
        (verdict, reason, rule),
        "{pkt:?} at {at}"
    );
    // The compiled views say the same.
    let mut hosts = vec![Host::Connector("conn".into())];
    if let Some(dev) = p.devices.iter().find(|x| x.addresses.contains(&pkt.src)) {
        hosts.push(Host::Device(dev.name.clone()));
    }
    for h in hosts {
        let v = compile(p, &h, NOW).unwrap();
        let k = to_kernel(&v, 0, |t| (t - NOW + 5) as u64 * 1_000_000_000);
        assert_eq!(
            lookup(&k, &pkt, (at - NOW + 5) as u64 * 1_000_000_000),
            (verdict, rule),
            "{h:?} {pkt:?}"
        );
    }
}

#[test]
fn precedence_steps() {
    let p = parse(POLICY, "p.toml", NOW).unwrap().policy;
    assert_eq!(p.rules.len(), 7);
    let (a, b, stranger) = (ip("198.19.0.1"), ip("198.19.0.2"), ip("198.19.9.9"));
    // 1. Unprotected.
    check(
        &p,
        Packet::tcp(a, ip("198.17.0.1"), 22),
        NOW,
        Verdict::Allow,
        Reason::Unprotected,
        0,
    );
    check(
        &p,
        Packet::tcp(stranger, ip("2001:db8:2::1"), 22),
        NOW,
        Verdict::Allow,
        Reason::Unprotected,
        0,
    );
    // 2. Unknown source: audit where an audit-mode resource covers the destination.
    check(
        &p,
        Packet::tcp(stranger, ip("198.18.5.10"), 443),
        NOW,
        Verdict::Audit,
        Reason::UnknownSource,
        7,
    );
    check(
        &p,
        Packet::tcp(stranger, ip("198.18.6.1"), 22),
        NOW,
        Verdict::Deny,
        Reason::UnknownSource,
        0,
    );
    // 4. Allow; the lowest rule id among equal matches wins (1 before 3).
    check(
        &p,
        Packet::tcp(a, ip("198.18.5.10"), 443),
        NOW,
        Verdict::Allow,
        Reason::Granted,
        1,
    );
    check(
        &p,
        Packet::icmp(a, ip("198.18.5.10")),
        NOW,
        Verdict::Allow,
        Reason::Granted,
        1,
    );
    check(
        &p,
        Packet::icmp(a, ip("2001:db8:1::10")),
        NOW,
        Verdict::Allow,
        Reason::Granted,
        2,
    );
    // ICMP of the wrong family matches nothing.
    let mut wrong = Packet::icmp(a, ip("198.18.5.10"));
    wrong.proto = 58;
    check(&p, wrong, NOW, Verdict::Audit, Reason::AuditNoGrant, 7);
    // Deny on an enforcing resource beats allow.
    check(
        &p,
        Packet::tcp(b, ip("198.18.5.10"), 443),
        NOW,
        Verdict::Deny,
        Reason::DeniedByRule,
        5,
    );
    check(
        &p,
        Packet::tcp(b, ip("198.18.5.10"), 80),
        NOW,
        Verdict::Allow,
        Reason::Granted,
        1,
    );
    // Deny on an audit-mode resource: audit with the deny's rule.
    check(
        &p,
        Packet::tcp(b, ip("198.18.5.10"), 8080),
        NOW,
        Verdict::Audit,
        Reason::AuditDenyRule,
        4,
    );
    // No grant: audit default inside the audit subnet, deny elsewhere.
    check(
        &p,
        Packet::tcp(a, ip("198.18.5.10"), 8080),
        NOW,
        Verdict::Audit,
        Reason::AuditNoGrant,
        7,
    );
    check(
        &p,
        Packet::udp(a, ip("198.18.5.10"), 53),
        NOW,
        Verdict::Audit,
        Reason::AuditNoGrant,
        7,
    );
    check(
        &p,
        Packet::tcp(b, ip("198.18.6.1"), 22),
        NOW,
        Verdict::Deny,
        Reason::NoGrant,
        0,
    );
    check(
        &p,
        Packet::tcp(a, ip("198.18.7.1"), 22),
        NOW,
        Verdict::Deny,
        Reason::NoGrant,
        0,
    );
    // 3. Expiry is exclusive.
    check(
        &p,
        Packet::tcp(a, ip("198.18.6.1"), 22),
        NOW + 99,
        Verdict::Allow,
        Reason::Granted,
        6,
    );
    check(
        &p,
        Packet::tcp(a, ip("198.18.6.1"), 22),
        NOW + 100,
        Verdict::Deny,
        Reason::NoGrant,
        0,
    );
    // Other protocols never match a resource.
    let gre = Packet {
        proto: 47,
        ..Packet::tcp(a, ip("198.18.5.10"), 0)
    };
    check(&p, gre, NOW, Verdict::Audit, Reason::AuditNoGrant, 7);
}

#[test]
fn lpm_atoms_carry_merged_rules() {
    // web (/32) inside subnet (/24): the /32 atom carries subnet's audit default and
    // web's grants; the rest of the /24 only subnet's.
    let p = parse(POLICY, "p.toml", NOW).unwrap().policy;
    let v = compile(&p, &Host::Connector("conn".into()), NOW).unwrap();
    let atom = |s: &str| {
        v.atoms
            .iter()
            .find(|a| a.prefix == s.parse().unwrap())
            .unwrap()
    };
    let web = atom("198.18.5.10/32");
    let subnet = atom("198.18.5.0/24");
    let dc = atom("198.18.0.0/16");
    assert_ne!(web.atom, subnet.atom);
    assert_eq!(v.atom_meta[&web.atom].resources, ["subnet", "web"]);
    assert_eq!(v.atom_meta[&subnet.atom].resources, ["subnet"]);
    assert!(v.atom_meta[&dc.atom].resources.is_empty());
    assert_eq!((web.default_verdict, web.default_rule), (Verdict::Audit, 7));
    assert_eq!((dc.default_verdict, dc.default_rule), (Verdict::Deny, 0));
    // An expiring entry holds the after-value and the view needs no recompile.
    let exp: Vec<_> = v
        .rules
        .iter()
        .filter(|r| r.value.valid_until_unix.is_some())
        .collect();
    assert_eq!(exp.len(), 1);
    assert_eq!(exp[0].value.valid_until_unix, Some(NOW + 100));
    assert_eq!(v.recompile_at, None);
}

#[test]
fn recompile_at_is_the_second_change() {
    // Two stacked expiries on the same slot: allow (rule 1, until +100), then allow
    // (rule 2, until +200), then default deny. The entry encodes the first change; the
    // agent must recompile at the second.
    let text = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16"]
connectors = ["conn"]

[[resource]]
name = "r"
network = "dc"
address = "198.18.0.1"
tcp = ["22"]

[[user]]
email = "a@x.test"

[[device]]
name = "a"
owner = "a@x.test"
address = "198.19.0.1"

[[allow]]
name = "first"
principals = ["a@x.test"]
resources = ["r"]
expires_at = "2026-01-01T00:01:40Z"

[[allow]]
name = "second"
principals = ["a@x.test"]
resources = ["r"]
expires_at = "2026-01-01T00:03:20Z"
"#;
    let p = parse(text, "p.toml", NOW).unwrap().policy;
    let v = compile(&p, &Host::Device("a".into()), NOW).unwrap();
    assert_eq!(v.rules.len(), 1);
    let r = v.rules[0].value;
    assert_eq!(
        (r.verdict, r.rule, r.after_verdict, r.after_rule),
        (Verdict::Allow, 1, Verdict::Allow, 2)
    );
    assert_eq!(r.valid_until_unix, Some(NOW + 100));
    assert_eq!(v.recompile_at, Some(NOW + 200));
    let later = compile(&p, &Host::Device("a".into()), NOW + 150).unwrap();
    assert_eq!(later.recompile_at, None);
    assert_eq!(later.rules[0].value.valid_until_unix, Some(NOW + 200));
    let d = diff(&v, &later);
    assert_eq!(d.rules.changed.len(), 1);
    assert!(d.src.is_empty() && d.dst.is_empty());
}

/// A service-account key with `expires_at` is a principal until then and an unknown
/// source from then on, in the evaluator and in the compiled view, and the view asks to
/// be recompiled at the expiry.
#[test]
fn expiring_service_account_keys_stop_their_principal() {
    let text = r#"
[[remote_network]]
name = "n"
cidrs = ["198.18.0.0/16"]
connectors = ["c"]

[[resource]]
name = "db"
network = "n"
address = "198.18.2.10"
tcp = ["5432"]

[[service_account]]
name = "backup"
keys = [
  { name = "old", address = "198.19.1.1", expires_at = 2030-01-01T00:00:00Z },
  { name = "new", address = "198.19.1.2" },
]

[[allow]]
name = "backup-db"
principals = ["service_account:backup"]
resources = ["db"]
"#;
    let expiry = policy_compiler::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
    let before = expiry - 10;
    let p = policy_compiler::parse(text, "keys.toml", before)
        .unwrap()
        .policy;
    let old: std::net::IpAddr = "198.19.1.1".parse().unwrap();
    let new: std::net::IpAddr = "198.19.1.2".parse().unwrap();
    let db: std::net::IpAddr = "198.18.2.10".parse().unwrap();
    let d = |src, t| policy_compiler::evaluate(&p, &Packet::tcp(src, db, 5432), t).verdict;
    assert_eq!(d(old, before), Verdict::Allow);
    assert_eq!(d(old, expiry), Verdict::Deny);
    assert_eq!(
        policy_compiler::evaluate(&p, &Packet::tcp(old, db, 5432), expiry).reason,
        policy_compiler::Reason::UnknownSource
    );
    assert_eq!(
        d(new, expiry),
        Verdict::Allow,
        "the rotated key keeps working"
    );

    let host = Host::Connector("c".into());
    let v = policy_compiler::compile(&p, &host, before).unwrap();
    assert!(v.sources.iter().any(|s| s.addr == old));
    assert_eq!(
        v.recompile_at,
        Some(expiry),
        "recompile when the key expires"
    );
    let v = policy_compiler::compile(&p, &host, expiry).unwrap();
    assert!(
        !v.sources.iter().any(|s| s.addr == old),
        "expired key has no SRC entry"
    );
    assert!(v.sources.iter().any(|s| s.addr == new));
    let k = policy_compiler::to_kernel(&v, 0, |_| u64::MAX);
    assert_eq!(
        policy_compiler::lookup(&k, &Packet::tcp(old, db, 5432), 0).0,
        Verdict::Deny
    );
    assert_eq!(
        policy_compiler::lookup(&k, &Packet::tcp(new, db, 5432), 0).0,
        Verdict::Allow
    );
}
