//! Warnings, diagnostic rendering, and accepted forms of the format.

#![allow(clippy::unwrap_used)]

use policy_compiler::*;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

const BASE: &str = r#"[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["conn-1"]

[[resource]]
name = "db"
network = "dc"
address = "198.18.2.20"
tcp = ["5432", 6432]

[[resource]]
name = "db-subnet"
network = "dc"
address = "198.18.2.0/24"
tcp = "all"

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "198.19.0.10"

[[group]]
name = "eng"
members = ["alice@example.com"]
"#;

fn warnings(extra: &str) -> Vec<String> {
    let text = format!("{BASE}{extra}");
    match parse(&text, "p.toml", NOW) {
        Ok(p) => p.warnings.iter().map(|d| d.short()).collect(),
        Err(d) => panic!("{d:?}"),
    }
}

#[test]
fn allow_fully_shadowed_by_deny_warns() {
    let w = warnings(
        r#"
[[allow]]
name = "alice-db"
principals = ["alice@example.com"]
resources = ["db"]
tcp = ["5432"]

[[deny]]
name = "eng-no-db-subnet"
principals = ["eng"]
resources = ["db-subnet"]
"#,
    );
    assert_eq!(
        w,
        [
            "31:8: warning: allow `alice-db` is fully shadowed by deny `eng-no-db-subnet` and never allows anything"
        ]
    );
}

#[test]
fn partially_shadowed_allow_does_not_warn() {
    // The deny covers tcp 5432 only; the allow also grants 6432.
    let w = warnings(
        r#"
[[allow]]
name = "alice-db"
principals = ["alice@example.com"]
resources = ["db"]

[[deny]]
name = "eng-no-5432"
principals = ["eng"]
resources = ["db"]
tcp = ["5432"]
"#,
    );
    assert!(w.is_empty(), "{w:?}");
    // A deny that expires before the allow does not shadow it either.
    let w = warnings(
        r#"
[[allow]]
name = "alice-db"
principals = ["alice@example.com"]
resources = ["db"]

[[deny]]
name = "freeze"
principals = ["eng"]
resources = ["db"]
expires_at = 2026-02-01T00:00:00Z
"#,
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn expired_grant_warns() {
    let w = warnings(
        r#"
[[allow]]
name = "old"
principals = ["eng"]
resources = ["db"]
expires_at = 2025-12-31T23:59:59Z
"#,
    );
    assert_eq!(
        w,
        ["34:14: warning: [[allow]] `old` expired at 2025-12-31T23:59:59Z and has no effect"]
    );
}

#[test]
fn diagnostics_render_with_file_and_help() {
    let text = BASE.replace("tcp = \"all\"", "tcp = [\"70000\"]");
    let d = parse(&text, "policies/prod.toml", NOW).unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        "policies/prod.toml:16:8: error: port 70000 is out of range (help: ports are 1-65535; write \"all\", \"none\" or a list like [\"22\", \"8000-8100\"])"
    );
    assert_eq!(d[0].severity, Severity::Error);
}

#[test]
fn errors_come_sorted_with_warnings() {
    let extra = r#"
[[allow]]
name = "old"
principals = ["eng"]
resources = ["db"]
expires_at = 2025-12-31T23:59:59Z

[[allow]]
name = "bad"
principals = ["nobody"]
resources = ["db"]
"#;
    let d = parse(&format!("{BASE}{extra}"), "p.toml", NOW).unwrap_err();
    let s: Vec<String> = d.iter().map(|d| d.short()).collect();
    assert_eq!(
        s,
        [
            "34:14: warning: [[allow]] `old` expired at 2025-12-31T23:59:59Z and has no effect",
            "38:15: error: unknown principal `nobody`",
        ]
    );
}

#[test]
fn accepted_forms() {
    let text = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48", "::ffff:198.19.0.0/112"]

[[resource]]
name = "a"
network = "dc"
address = "2001:db8:1::/64"
tcp = 443
udp = "8000-8100"
icmp = true
mode = "enforce"

[[resource]]
name = "b"
network = "dc"
address = "::ffff:198.19.0.5"
tcp = [22, "80", "1-3"]

[[service_account]]
name = "ci"

[[service_account.keys]]
name = "k"
addresses = ["2001:db8:ff::1", "198.19.255.1"]

[[group]]
name = "g"
members = ["service_account:ci"]

[[allow]]
name = "x"
principals = ["sa:ci", "group:g"]
resources = ["a", "b"]
expires_at = "2030-01-01T02:00:00+02:00"

[[test]]
from = "ci/k"
to = "[2001:db8:1::5]:443/tcp"
expect = "allow"

[[test]]
from = "ci/k"
to = "[2001:db8:1::5]:9000/udp"
expect = "deny"

[[test]]
from = "ci/k"
to = "198.19.0.5:2/tcp"
expect = "allow"
at = "2029-12-31T23:59:59Z"

[[test]]
from = "ci/k"
to = "198.19.0.5:2/tcp"
expect = "deny"
at = 2030-01-01T00:00:00Z
"#;
    let p = parse(text, "p.toml", NOW).unwrap().policy;
    assert_eq!(p.networks[0].cidrs[2].to_string(), "198.19.0.0/16");
    assert_eq!(p.resources[0].ports.tcp.ranges(), &[(443, 443)]);
    assert_eq!(p.resources[0].ports.udp.ranges(), &[(8000, 8100)]);
    assert_eq!(p.resources[1].address.to_string(), "198.19.0.5/32");
    assert_eq!(p.resources[1].ports.tcp.to_string(), "1-3,22,80");
    assert_eq!(
        p.grants[0].expires_at,
        Some(parse_rfc3339("2030-01-01T00:00:00Z").unwrap())
    );
    assert_eq!(p.principals.len(), 1);
    // IPv4 first; a test `from` a principal uses its address of the destination's family.
    let k: Vec<String> = p.principals[0]
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(k, ["198.19.255.1", "2001:db8:ff::1"]);
    assert_eq!(p.tests[0].src.to_string(), "2001:db8:ff::1");
    assert_eq!(p.tests[2].src.to_string(), "198.19.255.1");
    let results = run_tests(&p);
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r.passed), "{results:?}");
}

#[test]
fn narrowing_covers_exactly_what_it_names() {
    let text = format!(
        "{BASE}{}",
        r#"
[[resource]]
name = "dns"
network = "dc"
address = "198.18.3.53"
tcp = ["53"]
udp = ["53"]
icmp = true

[[allow]]
name = "dns-udp-only"
principals = ["eng"]
resources = ["dns"]
udp = "all"
"#
    );
    let p = parse(&text, "p.toml", NOW).unwrap().policy;
    let src = "198.19.0.10".parse().unwrap();
    let dst = "198.18.3.53".parse().unwrap();
    assert_eq!(
        evaluate(&p, &Packet::udp(src, dst, 53), NOW).verdict,
        Verdict::Allow
    );
    assert_eq!(
        evaluate(&p, &Packet::udp(src, dst, 54), NOW).verdict,
        Verdict::Deny
    );
    assert_eq!(
        evaluate(&p, &Packet::tcp(src, dst, 53), NOW).verdict,
        Verdict::Deny
    );
    assert_eq!(
        evaluate(&p, &Packet::icmp(src, dst), NOW).verdict,
        Verdict::Deny
    );
}

#[test]
fn syntax_errors_are_all_reported() {
    let d = parse("a = [1,,2]\nb = {", "x.toml", NOW).unwrap_err();
    assert!(d.len() >= 2, "{d:?}");
    assert_eq!(
        d[0].short(),
        "1:8: error: TOML syntax: extra comma in array, expected value"
    );
}
