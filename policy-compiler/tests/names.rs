//! Resources by DNS name: parsing and validation (located errors), and the decision for a
//! packet to a name (the proxy address a device's resolver answers it with). The expected
//! verdicts are written out by hand; the random check below decides "which resources own a
//! name" with a matcher of its own, written from the rules in `names.rs`'s docs.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use policy_compiler::target::{TargetError, parse_target, resolve_target};
use policy_compiler::*;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// `app` and `admin` are one server (one real address behind the names); alice may reach
/// `app` only. `*.wild.test` is granted to alice, `special.wild.test` (a resource of its
/// own) is not. `**.deep.test` is granted to bob.
const POLICY: &str = r#"[[remote_network]]
name = "corp"
cidrs = ["198.18.0.0/16"]
connectors = ["conn-1"]

[[resource]]
name = "app"
network = "corp"
address = "app.corp.test"
tcp = ["8080"]

[[resource]]
name = "admin"
network = "corp"
address = "Admin.Corp.Test."
tcp = ["8080"]

[[resource]]
name = "wild"
network = "corp"
address = "*.wild.test"
tcp = ["443"]
icmp = true

[[resource]]
name = "special"
network = "corp"
address = "special.wild.test"
tcp = ["443"]

[[resource]]
name = "deep"
network = "corp"
address = "**.deep.test"
udp = ["53"]

[[resource]]
name = "audited"
network = "corp"
address = "*.audit.test"
tcp = ["22"]
mode = "audit"

[[resource]]
name = "server"
network = "corp"
address = "198.18.2.10"
tcp = ["8080"]

[[user]]
email = "alice@example.com"

[[user]]
email = "bob@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["198.19.0.10", "2001:db8:ff::10"]

[[device]]
name = "bob-laptop"
owner = "bob@example.com"
address = "198.19.0.11"

[[allow]]
name = "alice-app"
principals = ["alice@example.com"]
resources = ["app", "wild"]

[[allow]]
name = "bob-deep"
principals = ["bob@example.com"]
resources = ["deep"]
"#;

const ALICE: &str = "198.19.0.10";
const ALICE6: &str = "2001:db8:ff::10";
const BOB: &str = "198.19.0.11";

fn policy() -> Policy {
    parse(POLICY, "names.toml", NOW).unwrap().policy
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The decision for `src` -> `to` (the `--to` grammar).
fn decide(p: &Policy, src: &str, to: &str) -> (Verdict, Reason) {
    let t = resolve_target(p, to).unwrap();
    let d = t.evaluate(p, ip(src), NOW);
    (d.verdict, d.reason)
}

#[test]
fn names_parse_lower_cased_and_each_warns_when_no_tunnel_reaches_it() {
    let parsed = parse(POLICY, "names.toml", NOW).unwrap();
    let p = &parsed.policy;
    let shown: Vec<String> = p.resources.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(
        shown,
        [
            "app.corp.test",
            "admin.corp.test",
            "*.wild.test",
            "special.wild.test",
            "**.deep.test",
            "*.audit.test",
            "198.18.2.10/32"
        ]
    );
    // `corp` has no `[[connector]]`: no tunnel, so no device reaches its names.
    let w: Vec<String> = parsed.warnings.iter().map(|d| d.short()).collect();
    assert_eq!(w.len(), 6, "{w:#?}");
    assert!(
        w[0].starts_with("9:11: warning: resource `app` is the DNS name `app.corp.test`"),
        "{w:#?}"
    );
    assert!(
        w.iter().all(|w| w.contains("no device reaches it")),
        "{w:#?}"
    );
    // With the connector declared, nothing to warn about.
    let tunneled = format!(
        "{POLICY}\n[[connector]]\nname = \"conn-1\"\npublic_key = \"{}\"\nendpoint = \"198.19.255.1:51820\"\n",
        WgKey([7; 32])
    );
    let parsed = parse(&tunneled, "names.toml", NOW).unwrap();
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
}

#[test]
fn bad_names_are_located_errors_and_addresses_keep_their_errors() {
    let cases = [
        ("a..corp.test", "is not a DNS name: an empty label"),
        ("-a.corp.test", "starts or ends with `-`"),
        ("a.*.test", "`*` that is not the whole first label"),
        ("*.*.test", "a second `*`"),
        ("**", "is not a DNS name"),
        ("a b.test", "has ` `"),
        ("x.123", "ends in an all-digit label"),
        ("198.18.1.x", "looks like an IP address with a mistake"),
        ("10.0.0.1o", "looks like an IP address with a mistake"),
        ("198.18.300.1", "is not a valid IP address or CIDR"),
        ("198.18.0.0/33", "is not a valid CIDR"),
        ("app.corp.test/24", "is not a valid CIDR"),
    ];
    for (addr, says) in cases {
        let text = POLICY.replacen(
            "address = \"app.corp.test\"",
            &format!("address = \"{addr}\""),
            1,
        );
        let errs = match parse(&text, "names.toml", NOW) {
            Ok(_) => panic!("`{addr}` was accepted"),
            Err(d) => d,
        };
        let first = errs.iter().find(|d| d.is_error()).unwrap();
        assert_eq!((first.line, first.column), (9, 11), "{addr}: {first}");
        assert!(first.message.contains(says), "{addr}: {}", first.message);
        assert!(first.help.is_some(), "{addr}: no help");
    }
    // A name longer than 253 characters, and a label longer than 63.
    for addr in [
        format!("{}test", "abcdefgh.".repeat(29)),
        format!("{}.corp.test", "a".repeat(64)),
    ] {
        let text = POLICY.replacen(
            "address = \"app.corp.test\"",
            &format!("address = \"{addr}\""),
            1,
        );
        assert!(parse(&text, "names.toml", NOW).is_err(), "{addr} accepted");
    }
}

#[test]
fn a_name_is_decided_by_its_own_resource_never_by_another_on_the_same_server() {
    let p = policy();
    assert_eq!(
        decide(&p, ALICE, "app.corp.test:8080/tcp"),
        (Verdict::Allow, Reason::Granted)
    );
    // The same server under another name: not alice's.
    assert_eq!(
        decide(&p, ALICE, "admin.corp.test:8080/tcp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    // Nor the server's real address (a resource of its own, not granted).
    assert_eq!(
        decide(&p, ALICE, "198.18.2.10:8080/tcp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    // The resource's ports only; bob has nothing there; an unknown source is unknown.
    assert_eq!(
        decide(&p, ALICE, "app.corp.test:9090/tcp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    assert_eq!(
        decide(&p, ALICE, "app.corp.test:8080/udp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    assert_eq!(
        decide(&p, BOB, "app.corp.test:8080/tcp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    assert_eq!(
        decide(&p, "198.19.9.9", "app.corp.test:8080/tcp"),
        (Verdict::Deny, Reason::UnknownSource)
    );
    // Case and a trailing dot do not matter; the resource's name stands for its name.
    assert_eq!(
        decide(&p, ALICE, "APP.Corp.TEST.:8080/tcp"),
        (Verdict::Allow, Reason::Granted)
    );
    assert_eq!(decide(&p, ALICE, "app"), (Verdict::Allow, Reason::Granted));
    assert_eq!(decide(&p, ALICE, "admin"), (Verdict::Deny, Reason::NoGrant));
    // IPv6: the proxy address of the other family decides the same.
    let t = parse_target("app.corp.test/icmpv6").unwrap();
    assert_eq!(t.name.as_deref(), Some("app.corp.test"));
    assert!(t.addr.is_ipv6());
    assert_eq!(
        t.evaluate(&p, ip(ALICE6), NOW).reason,
        Reason::NoGrant,
        "app has no icmp"
    );
}

#[test]
fn wildcards_cover_the_depth_they_say_and_the_most_specific_resource_decides() {
    let p = policy();
    for name in ["a.wild.test", "b.wild.test"] {
        assert_eq!(
            decide(&p, ALICE, &format!("{name}:443/tcp")),
            (Verdict::Allow, Reason::Granted),
            "{name}"
        );
        assert_eq!(
            decide(&p, ALICE, &format!("{name}/icmp")),
            (Verdict::Allow, Reason::Granted)
        );
    }
    // Not the suffix itself, not two labels deep: no resource has those names (the
    // resolver forwards them; their traffic is decided by the address they resolve to).
    for name in ["wild.test", "x.a.wild.test", "awild.test"] {
        assert_eq!(
            decide(&p, ALICE, &format!("{name}:443/tcp")),
            (Verdict::Allow, Reason::Unprotected),
            "{name}"
        );
    }
    // `special.wild.test` has a resource of its own: the wildcard grant does not open it.
    assert_eq!(
        decide(&p, ALICE, "special.wild.test:443/tcp"),
        (Verdict::Deny, Reason::NoGrant)
    );
    // Any depth, not the suffix itself.
    for name in ["a.deep.test", "x.y.z.deep.test"] {
        assert_eq!(
            decide(&p, BOB, &format!("{name}:53/udp")),
            (Verdict::Allow, Reason::Granted),
            "{name}"
        );
        assert_eq!(
            decide(&p, ALICE, &format!("{name}:53/udp")),
            (Verdict::Deny, Reason::NoGrant)
        );
    }
    assert_eq!(
        decide(&p, BOB, "deep.test:53/udp"),
        (Verdict::Allow, Reason::Unprotected)
    );
    // An audit-mode name: audited, not denied.
    assert_eq!(
        decide(&p, ALICE, "db.audit.test:22/tcp"),
        (Verdict::Audit, Reason::AuditNoGrant)
    );
    // A wildcard resource is no single destination.
    assert!(matches!(
        resolve_target(&p, "wild"),
        Err(TargetError::Wildcard { .. })
    ));
}

#[test]
fn explain_names_the_covering_resources_and_the_deciding_grant() {
    let p = policy();
    let t = resolve_target(&p, "a.wild.test:443/tcp").unwrap();
    let e = t.explain(&p, ip(ALICE), NOW);
    assert_eq!(e.resources, ["wild"]);
    assert_eq!(e.principal.as_deref(), Some("alice-laptop"));
    let matched: Vec<&str> = e
        .considered
        .iter()
        .filter(|c| c.outcome == Outcome::Matched)
        .map(|c| c.grant.as_str())
        .collect();
    assert_eq!(matched, ["alice-app"]);
    assert_eq!(t.to_string(), "a.wild.test:443/tcp");
    let e = resolve_target(&p, "special.wild.test:443/tcp")
        .unwrap()
        .explain(&p, ip(ALICE), NOW);
    assert_eq!(e.resources, ["special"]);
}

#[test]
fn test_blocks_take_names_and_say_where_a_wildcard_is_no_destination() {
    let ok = format!(
        "{POLICY}
[[test]]
name = \"app by name\"
from = \"alice-laptop\"
to = \"app.corp.test:8080/tcp\"
expect = \"allow\"

[[test]]
name = \"admin by resource\"
from = \"alice-laptop\"
to = \"admin\"
expect = \"deny\"

[[test]]
name = \"a wildcard name\"
from = \"alice-laptop\"
to = \"b.wild.test:443/tcp\"
expect = \"allow\"
"
    );
    let p = parse(&ok, "names.toml", NOW).unwrap().policy;
    let results = run_tests(&p);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.passed), "{results:#?}");
    // Positive control: the same block expecting the wrong verdict fails.
    let flipped = ok.replacen("expect = \"deny\"", "expect = \"allow\"", 1);
    let p = parse(&flipped, "names.toml", NOW).unwrap().policy;
    assert_eq!(run_tests(&p).iter().filter(|r| !r.passed).count(), 1);

    let bad = format!(
        "{POLICY}
[[test]]
name = \"wildcard\"
from = \"alice-laptop\"
to = \"wild\"
expect = \"allow\"
"
    );
    let errs = parse(&bad, "names.toml", NOW).unwrap_err();
    let e = errs.iter().find(|d| d.is_error()).unwrap();
    assert!(e.message.contains("is the wildcard `*.wild.test`"), "{e}");
    assert_eq!(e.line as usize, POLICY.lines().count() + 5);
}

/// A tiny generator (no shared code with the crate's).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Which of `patterns` own `name`, from the rules as written: exact beats any wildcard;
/// among wildcards the longer suffix; at the same suffix `*.` beats `**.`.
fn owners_by_the_rules(patterns: &[String], name: &str) -> Vec<usize> {
    let labels: Vec<&str> = name.split('.').collect();
    let score = |p: &str| -> Option<(u32, usize, u32)> {
        if let Some(suf) = p.strip_prefix("**.") {
            let s: Vec<&str> = suf.split('.').collect();
            (labels.len() > s.len() && labels[labels.len() - s.len()..] == s[..]).then_some((
                0,
                s.len(),
                0,
            ))
        } else if let Some(suf) = p.strip_prefix("*.") {
            let s: Vec<&str> = suf.split('.').collect();
            (labels.len() == s.len() + 1 && labels[1..] == s[..]).then_some((0, s.len(), 1))
        } else {
            (p == name).then_some((1, labels.len(), 0))
        }
    };
    let scored: Vec<(usize, (u32, usize, u32))> = patterns
        .iter()
        .enumerate()
        .filter_map(|(i, p)| score(p).map(|s| (i, s)))
        .collect();
    let Some(best) = scored.iter().map(|(_, s)| *s).max() else {
        return Vec::new();
    };
    scored
        .into_iter()
        .filter(|(_, s)| *s == best)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn random_names_are_owned_as_the_rules_say() {
    let labels = ["a", "b", "corp", "x-1", "_srv", "test"];
    let mut rng = Rng(0x5eed_0019);
    let mut checked = 0;
    let mut owned = 0;
    for _ in 0..300 {
        // A policy of 1-6 name resources, one device granted all of them.
        let n = 1 + rng.below(6);
        let mut patterns = Vec::new();
        let mut text = String::from(
            "[[remote_network]]\nname = \"n\"\ncidrs = [\"198.18.0.0/16\"]\nconnectors = [\"c\"]\n\n\
             [[user]]\nemail = \"u@example.com\"\n\n[[device]]\nname = \"d\"\nowner = \"u@example.com\"\n\
             address = \"198.19.0.1\"\n\n",
        );
        for i in 0..n {
            let depth = 1 + rng.below(3);
            let mut name: Vec<&str> = (0..depth)
                .map(|_| labels[rng.below(labels.len())])
                .collect();
            name.push("test");
            let base = name.join(".");
            let p = match rng.below(3) {
                0 => base,
                1 => format!("*.{base}"),
                _ => format!("**.{base}"),
            };
            // Resource i allows port 1000 + i only: the port says which resource decided.
            text.push_str(&format!(
                "[[resource]]\nname = \"r{i}\"\nnetwork = \"n\"\naddress = \"{p}\"\ntcp = [\"{}\"]\n\n",
                1000 + i
            ));
            patterns.push(p);
        }
        text.push_str("[[allow]]\nname = \"all\"\nprincipals = [\"u@example.com\"]\nresources = [");
        text.push_str(
            &(0..n)
                .map(|i| format!("\"r{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        text.push_str("]\n");
        let p = parse(&text, "r.toml", NOW).unwrap().policy;
        let view = compile(&p, &Host::Device("d".into()), NOW).unwrap();
        let (v4, v6): (std::net::Ipv4Addr, std::net::Ipv6Addr) = (
            "100.96.1.1".parse().unwrap(),
            "2001:db8:fd::1".parse().unwrap(),
        );
        for _ in 0..20 {
            let depth = 1 + rng.below(5);
            let mut name: Vec<&str> = (0..depth)
                .map(|_| labels[rng.below(labels.len())])
                .collect();
            name.push("test");
            let name = name.join(".");
            let owners = owners_by_the_rules(&patterns, &name);
            for i in 0..n {
                let t = parse_target(&format!("{name}:{}/tcp", 1000 + i)).unwrap();
                let d = t.evaluate(&p, ip("198.19.0.1"), NOW);
                let want = if owners.is_empty() {
                    (Verdict::Allow, Reason::Unprotected)
                } else if owners.contains(&i) {
                    (Verdict::Allow, Reason::Granted)
                } else {
                    (Verdict::Deny, Reason::NoGrant)
                };
                assert_eq!(
                    (d.verdict, d.reason),
                    want,
                    "{name} port {} in {patterns:?}",
                    1000 + i
                );
                // The device's compiled view, with the proxy entries its agent writes for
                // the name, decides the same in the kernel's lookup (no entries: a name no
                // pattern owns, forwarded by the resolver).
                match view.proxy_entries(&name, v4, v6) {
                    None => assert!(owners.is_empty(), "{name}: no entries in {patterns:?}"),
                    Some(entries) => {
                        let mut with = view.clone();
                        with.atoms.extend(entries);
                        with.atoms.sort_unstable();
                        let k = to_kernel(&with, 0, |t| (t as u64) * 1_000_000_000);
                        let mut pkt = t.packet(ip("198.19.0.1"));
                        pkt.dst = IpAddr::V4(v4);
                        let got = lookup(&k, &pkt, NOW as u64 * 1_000_000_000);
                        assert_eq!(
                            got,
                            (d.verdict, d.rule_id()),
                            "kernel: {name} port {} in {patterns:?}",
                            1000 + i
                        );
                    }
                }
                checked += 1;
            }
            owned += usize::from(!owners.is_empty());
        }
    }
    assert!(
        checked > 5_000 && owned > 500,
        "{checked} checked, {owned} owned"
    );
}

#[test]
fn compiled_views_with_the_agents_proxy_entries_decide_names_as_the_evaluator() {
    let now_ns = |t: i64| (t as u64).saturating_mul(1_000_000_000);
    let p = policy();
    let (v4, v6): (std::net::Ipv4Addr, std::net::Ipv6Addr) = (
        "100.96.0.7".parse().unwrap(),
        "2001:db8:fd::7".parse().unwrap(),
    );
    let mut checked = 0;
    for host in [
        Host::Device("alice-laptop".into()),
        Host::Device("bob-laptop".into()),
        Host::Connector("conn-1".into()),
    ] {
        let view = compile(&p, &host, NOW).unwrap();
        assert_eq!(
            view.names.len(),
            6,
            "{host:?}: every name pattern of the view"
        );
        for (name, port, proto_word) in [
            ("app.corp.test", 8080, "tcp"),
            ("admin.corp.test", 8080, "tcp"),
            ("a.wild.test", 443, "tcp"),
            ("special.wild.test", 443, "tcp"),
            ("x.y.deep.test", 53, "udp"),
            ("db.audit.test", 22, "tcp"),
            ("app.corp.test", 9090, "tcp"),
        ] {
            let entries = view.proxy_entries(name, v4, v6).expect(name);
            let mut with = view.clone();
            with.atoms.extend(entries);
            with.atoms.sort_unstable();
            let k = to_kernel(&with, 0, now_ns);
            for (src, dst) in [
                (ALICE, IpAddr::V4(v4)),
                (BOB, IpAddr::V4(v4)),
                (ALICE6, IpAddr::V6(v6)),
            ] {
                let t = parse_target(&format!("{name}:{port}/{proto_word}")).unwrap();
                let mut pkt = t.packet(ip(src));
                pkt.dst = dst;
                let want = eval::evaluate_name(&p, &pkt, name, NOW);
                // A device's view holds its own sources only.
                let mine = match &host {
                    Host::Device(d) => p
                        .devices
                        .iter()
                        .find(|x| &x.name == d)
                        .is_some_and(|x| x.addresses.contains(&ip(src))),
                    Host::Connector(_) => true,
                };
                if !mine {
                    continue;
                }
                let got = lookup(&k, &pkt, now_ns(NOW));
                assert_eq!(
                    got,
                    (want.verdict, want.rule_id()),
                    "{host:?}: {src} -> {name}:{port}/{proto_word} at {dst}"
                );
                checked += 1;
            }
        }
        // A name no pattern owns gets no proxy entries (the resolver forwards it).
        assert!(view.proxy_entries("x.a.wild.test", v4, v6).is_none());
        assert!(view.proxy_entries("wild.test", v4, v6).is_none());
        // Without the proxy entries a proxy address is nobody's: not protected here.
        let k = to_kernel(&view, 0, now_ns);
        let t = parse_target(&format!("{}:8080/tcp", v4)).unwrap();
        assert_eq!(lookup(&k, &t.packet(ip(ALICE)), now_ns(NOW)).1, 0);
    }
    assert!(checked >= 40, "{checked}");
    // Views of a policy without names do not carry the field at all (their JSON, and so
    // every existing view's hash, is unchanged).
    let plain = POLICY
        .split("[[resource]]\nname = \"app\"")
        .next()
        .unwrap()
        .to_string()
        + "[[resource]]\nname = \"server\"\nnetwork = \"corp\"\naddress = \"198.18.2.10\"\ntcp = [\"8080\"]\n";
    let pv = parse(&plain, "plain.toml", NOW).unwrap().policy;
    let v = compile(&pv, &Host::Connector("conn-1".into()), NOW).unwrap();
    assert!(v.names.is_empty());
    assert!(!serde_json::to_string(&v).unwrap().contains("\"names\""));
}

/// A tunnel for names: with only name resources granted, the device still gets the
/// network's connector as its peer, each of its name patterns says which peer resolves it,
/// and the connector has the device as its peer; a device granted nothing has neither.
#[test]
fn devices_reaching_only_names_are_peers_of_the_connector_that_resolves_them() {
    let key = |b: u8| format!("\"{}\"", WgKey([b; 32]));
    let text = POLICY
        .replace("[[resource]]\nname = \"server\"\nnetwork = \"corp\"\naddress = \"198.18.2.10\"\ntcp = [\"8080\"]\n", "")
        .replace(
            "addresses = [\"198.19.0.10\", \"2001:db8:ff::10\"]",
            &format!("addresses = [\"198.19.0.10\", \"2001:db8:ff::10\"]\npublic_key = {}", key(1)),
        )
        .replace(
            "address = \"198.19.0.11\"",
            &format!("address = \"198.19.0.11\"\npublic_key = {}", key(2)),
        )
        + &format!(
            "\n[[connector]]\nname = \"conn-1\"\npublic_key = {}\nendpoint = \"198.19.255.1:51820\"\n\n\
             [[user]]\nemail = \"carol@example.com\"\n\n[[device]]\nname = \"idle\"\nowner = \"carol@example.com\"\naddress = \"198.19.0.12\"\npublic_key = {}\n",
            key(9),
            key(3)
        );
    let p = parse(&text, "tunnel-names.toml", NOW).unwrap().policy;
    assert!(
        p.resources.iter().all(|r| r.address.name().is_some()),
        "names only"
    );
    let alice = compile(&p, &Host::Device("alice-laptop".into()), NOW).unwrap();
    assert_eq!(
        alice
            .peers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        vec!["conn-1"]
    );
    assert!(!alice.names.is_empty());
    assert!(
        alice
            .names
            .iter()
            .all(|n| n.peer.as_deref() == Some("conn-1")),
        "{:?}",
        alice.names
    );
    let conn = compile(&p, &Host::Connector("conn-1".into()), NOW).unwrap();
    let peers: Vec<&str> = conn.peers.iter().map(|p| p.name.as_str()).collect();
    assert!(
        peers.contains(&"alice-laptop") && peers.contains(&"bob-laptop"),
        "{peers:?}"
    );
    // `idle` (carol's) is granted nothing, but `*.audit.test` is audit mode: every active principal
    // passes there (as the evaluator says), so it is a peer too.
    assert!(peers.contains(&"idle"), "{peers:?}");
    assert!(
        conn.names.iter().all(|n| n.peer.is_none()),
        "connector views name no peer"
    );
    // Without the audit resource, `idle` reaches nothing and is nobody's peer.
    let strict = text.replace("mode = \"audit\"", "");
    let p = parse(&strict, "strict.toml", NOW).unwrap().policy;
    let conn = compile(&p, &Host::Connector("conn-1".into()), NOW).unwrap();
    assert!(!conn.peers.iter().any(|p| p.name == "idle"));
    let idle = compile(&p, &Host::Device("idle".into()), NOW).unwrap();
    assert!(idle.peers.is_empty(), "{:?}", idle.peers);
}
