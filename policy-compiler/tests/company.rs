//! The realistic example policy: parses cleanly, its `[[test]]` blocks pass, and every
//! compiled view agrees with the evaluator on them.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use policy_compiler::*;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const TEXT: &str = include_str!("data/company.toml");

fn policy() -> Policy {
    match parse(TEXT, "company.toml", NOW) {
        Ok(p) => {
            assert!(p.warnings.is_empty(), "{:?}", p.warnings);
            p.policy
        }
        Err(d) => panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn company_policy_tests_pass() {
    let p = policy();
    let results = run_tests(&p);
    assert_eq!(results.len(), 16);
    for r in &results {
        println!("{}", r.render(&p));
    }
    assert!(results.iter().all(|r| r.passed));
    // Reasons for a few.
    let by_name = |n: &str| results.iter().find(|r| r.name == n).unwrap().decision;
    assert_eq!(
        by_name("contractor denied despite engineering grant").reason,
        Reason::DeniedByRule
    );
    assert_eq!(
        by_name("legacy intranet is audited for people without a grant").reason,
        Reason::AuditNoGrant
    );
    assert_eq!(
        by_name("carol's access ends at expiry").reason,
        Reason::NoGrant
    );
    assert_eq!(
        by_name("unknown sources are dropped").reason,
        Reason::UnknownSource
    );
    assert_eq!(
        by_name("unprotected destinations pass").reason,
        Reason::Unprotected
    );
}

#[test]
fn rule_ids_follow_file_order() {
    let p = policy();
    let names: Vec<String> = p.rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        names,
        [
            "rule 1 (allow 'engineering-ssh' -> 'ssh-bastions')",
            "rule 2 (allow 'engineering-ssh' -> 'ssh-bastion-v6')",
            "rule 3 (allow 'engineering-db' -> 'prod-db')",
            "rule 4 (deny 'contractors-no-prod-db' -> 'prod-db')",
            "rule 5 (allow 'ci-build' -> 'build-server')",
            "rule 6 (allow 'sre-monitoring' -> 'monitoring-subnet')",
            "rule 7 (allow 'sre-monitoring' -> 'legacy-intranet')",
            "rule 8 (allow 'carol-oncall-db' -> 'prod-db')",
            "rule 9 (audit default of 'legacy-intranet')",
        ]
    );
}

#[test]
fn compiled_views_agree_on_the_tests() {
    let p = policy();
    let hosts = [
        Host::Connector("dc-connector-1".into()),
        Host::Connector("build-connector".into()),
        Host::Device("alice-laptop".into()),
        Host::Device("bob-laptop".into()),
        Host::Device("carol-laptop".into()),
        Host::Device("carol-phone".into()),
    ];
    for host in &hosts {
        let view = compile(&p, host, NOW).unwrap();
        assert_eq!(view, compile(&p, host, NOW).unwrap(), "deterministic");
        let k = to_kernel(&view, 3, |t| ((t - NOW + 10) as u64) * 1_000_000_000);
        for t in &p.tests {
            let pkt = Packet {
                src: t.src,
                dst: t.dst,
                proto: t.proto,
                src_port: 1234,
                dst_port: t.dst_port,
            };
            let relevant = match host {
                Host::Device(d) => p
                    .devices
                    .iter()
                    .find(|x| &x.name == d)
                    .unwrap()
                    .addresses
                    .contains(&t.src),
                Host::Connector(_) => view.protected.iter().any(|c| c.contains(&t.dst)),
            };
            if !relevant {
                continue;
            }
            let at = t.at.unwrap_or(NOW);
            if view.recompile_at.is_some_and(|r| at >= r) {
                continue;
            }
            let e = evaluate(&p, &pkt, at);
            let got = lookup(&k, &pkt, ((at - NOW + 10) as u64) * 1_000_000_000);
            assert_eq!(got, (e.verdict, e.rule_id()), "{host:?} {}", t.name);
        }
    }
}

#[test]
fn connector_view_has_least_knowledge() {
    let p = policy();
    let build = compile(&p, &Host::Connector("build-connector".into()), NOW).unwrap();
    // Only the CI keys have grants for the build farm.
    let names: Vec<&str> = build.principals.values().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["ci-cd/runner-1", "ci-cd/runner-2"]);
    assert_eq!(build.classes, 1);
    assert_eq!(build.protected, vec!["198.19.64.0/24".parse().unwrap()]);
    // tcp 22 and 8000-8100 on build-server: 1 + 4 blocks
    // (8000-8063, 8064-8095, 8096-8099, 8100).
    assert_eq!(build.rules.len(), 5);
    assert!(
        build
            .rules
            .iter()
            .all(|r| r.value.verdict == Verdict::Allow && r.value.rule == 5)
    );

    let dc = compile(&p, &Host::Connector("dc-connector-2".into()), NOW).unwrap();
    assert_eq!(dc.networks, ["datacenter"]);
    assert_eq!(dc.connectors, ["dc-connector-1", "dc-connector-2"]);
    // alice & bob share "engineering" but bob is also a contractor: different classes;
    // carol's two devices share one class. CI has nothing here.
    assert_eq!(dc.classes, 3);
    let class_of = |a: &str| dc.sources.iter().find(|s| s.addr == ip(a)).map(|s| s.class);
    assert_ne!(class_of("198.19.0.10"), class_of("198.19.0.11"));
    assert_eq!(class_of("198.19.0.12"), class_of("2001:db8:ff::12"));
    // A dual-stack device: both addresses in SRC, same class.
    assert!(class_of("2001:db8:ff::10").is_some());
    assert_eq!(class_of("198.19.0.10"), class_of("2001:db8:ff::10"));
    assert_eq!(class_of("198.19.1.1"), None);
    // Carol's expiring grant: valid_until at expiry, after = default deny.
    let until = parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
    let carol_db: Vec<&RuleEntry> = dc
        .rules
        .iter()
        .filter(|r| Some(r.key.class) == class_of("198.19.0.12") && r.value.rule == 8)
        .collect();
    assert_eq!(carol_db.len(), 1);
    assert_eq!(carol_db[0].value.valid_until_unix, Some(until));
    assert_eq!(
        (
            carol_db[0].value.after_verdict,
            carol_db[0].value.after_rule
        ),
        (Verdict::Deny, 0)
    );
    assert_eq!(dc.recompile_at, None);
    // Audit atom default.
    let legacy = dc
        .atoms
        .iter()
        .find(|a| a.prefix == "198.18.20.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(
        (legacy.default_verdict, legacy.default_rule),
        (Verdict::Audit, 9)
    );
    assert_eq!(dc.atom_meta[&legacy.atom].resources, ["legacy-intranet"]);
    assert_eq!(
        dc.rule_meta[&9].to_string(),
        "rule 9 (audit default of 'legacy-intranet')"
    );
}

#[test]
fn device_view_only_has_its_own_source() {
    let p = policy();
    let v = compile(&p, &Host::Device("alice-laptop".into()), NOW).unwrap();
    // The dual-stack laptop: one SRC entry per address, same principal and class.
    let addrs: Vec<IpAddr> = v.sources.iter().map(|s| s.addr).collect();
    assert_eq!(addrs, [ip("198.19.0.10"), ip("2001:db8:ff::10")]);
    assert_eq!(v.sources[0].principal, v.sources[1].principal);
    assert_eq!(v.sources[0].class, v.sources[1].class);
    let meta = &v.principals[&v.sources[0].principal];
    assert_eq!(meta.user.as_deref(), Some("alice@example.com"));
    assert_eq!(meta.addresses, addrs);
    assert_eq!(v.protected.len(), 3);
    assert!(v.rules.iter().all(|r| r.key.class == 1));
    assert!(compile(&p, &Host::Device("nobody".into()), NOW).is_err());
    assert!(compile(&p, &Host::Connector("nobody".into()), NOW).is_err());
}

#[test]
fn diff_after_revocation() {
    let p = policy();
    let host = Host::Connector("dc-connector-1".into());
    let before = compile(&p, &host, NOW).unwrap();
    assert!(diff(&before, &before).is_empty());
    let after_text = TEXT.replace(
        "members = [\"bob@example.com\"]\n\n[[group]]\nname = \"sre\"",
        "members = []\n\n[[group]]\nname = \"sre\"",
    );
    assert_ne!(after_text, TEXT);
    let p2 = parse(&after_text, "company.toml", NOW).unwrap().policy;
    let after = compile(&p2, &host, NOW).unwrap();
    let d = diff(&before, &after);
    assert!(!d.is_empty());
    // bob now has alice's class; one class less.
    assert_eq!(after.classes, 2);
    assert!(
        d.src
            .changed
            .iter()
            .any(|(a, _, _)| *a == ip("198.19.0.11"))
    );
    assert!(d.dst.is_empty());
    let bob = Packet::tcp(ip("198.19.0.11"), ip("198.18.2.20"), 5432);
    assert_eq!(evaluate(&p2, &bob, NOW).verdict, Verdict::Allow);
}

#[test]
fn explain_names_the_grants() {
    let p = policy();
    let pkt = Packet::tcp(ip("198.19.0.11"), ip("198.18.2.20"), 5432);
    let e = explain(&p, &pkt, NOW);
    assert_eq!(e.decision.verdict, Verdict::Deny);
    assert_eq!(e.decision.rule, Some(RuleRef(4)));
    assert_eq!(e.principal.as_deref(), Some("bob-laptop"));
    assert_eq!(e.resources, ["prod-db"]);
    let matched: Vec<u32> = e
        .considered
        .iter()
        .filter(|c| c.outcome == Outcome::Matched)
        .map(|c| c.rule)
        .collect();
    assert_eq!(matched, [3, 4]);
    assert!(
        e.considered
            .iter()
            .any(|c| c.rule == 8 && c.outcome == Outcome::NotForPrincipal)
    );
    assert!(
        e.considered
            .iter()
            .any(|c| c.rule == 1 && c.outcome == Outcome::AddressMismatch)
    );
    let text = e.render(&p);
    assert!(
        text.contains("deny 'contractors-no-prod-db' -> 'prod-db'"),
        "{text}"
    );
    // Expired grants are reported as such.
    let carol = Packet::tcp(ip("198.19.0.12"), ip("198.18.2.20"), 5432);
    let e = explain(&p, &carol, parse_rfc3339("2030-01-02T00:00:00Z").unwrap());
    assert!(
        e.considered
            .iter()
            .any(|c| c.rule == 8 && matches!(c.outcome, Outcome::Expired { .. }))
    );
    // Port mismatch.
    let e = explain(
        &p,
        &Packet::tcp(ip("198.19.1.1"), ip("198.19.64.10"), 443),
        NOW,
    );
    assert!(
        e.considered
            .iter()
            .any(|c| c.rule == 5 && matches!(c.outcome, Outcome::PortMismatch { .. }))
    );
}

#[test]
fn nft_ruleset_shape() {
    let p = policy();
    let s = nft(&p, &Host::Connector("dc-connector-1".into()), NOW).unwrap();
    println!("{s}");
    assert!(s.contains("table inet zt_gateway {"));
    assert!(s.contains("type filter hook forward priority filter; policy accept;"));
    assert!(s.contains("ip daddr @protected_v4 jump protected"));
    assert!(s.contains("198.18.0.0/16"));
    assert!(s.contains("2001:db8:1::/48"));
    assert!(s.contains("198.19.0.10 : jump class_"));
    assert!(s.contains("type ipv4_addr . inet_proto . inet_service : verdict"));
    assert!(s.contains("198.18.1.0/28 . tcp . 22 : accept"));
    assert!(
        s.contains("198.18.2.20 . tcp . 5432 : drop")
            || s.contains("198.18.2.20 . tcp . 5432 : accept")
    );
    assert!(s.contains("198.18.20.0/24 : jump audit"));
    assert!(s.contains("meta l4proto icmp ip daddr vmap @class_"));
    assert!(s.contains("counter drop"));
    // Device ruleset hooks output and carries only the device.
    let d = nft(&p, &Host::Device("carol-phone".into()), NOW).unwrap();
    assert!(d.contains("hook output"));
    assert!(d.contains("2001:db8:ff::12 : jump class_1"));
    assert!(!d.contains("198.19.0.10"));
    // After expiry the on-call grant is gone from the regenerated ruleset.
    let later = parse_rfc3339("2030-06-01T00:00:00Z").unwrap();
    let p_later = parse(TEXT, "company.toml", later).unwrap().policy;
    let l = nft(&p_later, &Host::Device("carol-laptop".into()), later).unwrap();
    assert!(!l.contains("5432"), "{l}");
}

#[test]
fn json_schema_describes_every_section() {
    let s = json_schema();
    let props = s["properties"].as_object().unwrap();
    for k in [
        "remote_network",
        "resource",
        "user",
        "device",
        "service_account",
        "group",
        "allow",
        "deny",
        "test",
    ] {
        assert!(props.contains_key(k), "{k}");
    }
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(
        s["properties"]["resource"]["items"]["properties"]["mode"]["enum"][1],
        "audit"
    );
}

/// Checks a ruleset with `nft -c` (check only, nothing is committed) inside a fresh
/// network namespace; skipped where `unshare`/`nft` are unavailable.
fn nft_check(name: &str, ruleset: &str) -> Option<bool> {
    let path =
        std::env::temp_dir().join(format!("policy-compiler-{}-{name}.nft", std::process::id()));
    std::fs::write(&path, ruleset).ok()?;
    let out = std::process::Command::new("unshare")
        .args(["-n", "nft", "-c", "-f"])
        .arg(&path)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && (err.contains("not found")
            || err.contains("Operation not permitted")
            || err.contains("No such file"))
    {
        return None;
    }
    if !out.status.success() {
        eprintln!("{err}");
    }
    Some(out.status.success())
}

#[test]
fn nft_rulesets_are_accepted_by_nft() {
    let p = policy();
    let hosts = [
        Host::Connector("dc-connector-1".into()),
        Host::Connector("build-connector".into()),
        Host::Device("bob-laptop".into()),
        Host::Device("carol-phone".into()),
    ];
    for (i, h) in hosts.iter().enumerate() {
        let s = nft(&p, h, NOW).unwrap();
        match nft_check(&format!("h{i}"), &s) {
            None => {
                eprintln!("nft/unshare unavailable: syntax check skipped");
                return;
            }
            Some(ok) => assert!(ok, "{h:?}:\n{s}"),
        }
    }
}
