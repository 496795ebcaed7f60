//! Runs the real `gatewayctl` binary on the examples and on broken files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn company() -> String {
    examples_dir().join("company.toml").display().to_string()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run gatewayctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(o)))
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("gatewayctl-cli-{}-{name}", std::process::id()));
        std::fs::write(&p, text).expect("write scratch file");
        Scratch(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const BASE: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16"]
connectors = ["c1"]

[[resource]]
name = "db"
network = "dc"
address = "198.18.2.20"
tcp = ["5432"]

[[user]]
email = "a@example.com"

[[device]]
name = "a-laptop"
owner = "a@example.com"
address = "198.19.0.10"
"#;

#[test]
fn every_example_passes_check() {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("summary: ")
                && l.contains(" 0 failed")
                && l.ends_with(": ok")),
        "{out}"
    );
    assert!(
        out.contains(&format!("summary: {} files, 0 errors", files.len())),
        "{out}"
    );
    // Each file is checked one by one too.
    for f in &files {
        let o = run(&["policy", "check", f]);
        assert_eq!(code(&o), 0, "{f}: {}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn check_json_report_of_company() {
    let o = run(&["policy", "check", &company(), "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["ok"], true);
    assert_eq!(v["summary"]["errors"], 0);
    assert_eq!(v["summary"]["failed"], 0);
    let tests = v["files"][0]["tests"].as_array().expect("tests");
    assert!(tests.len() >= 15, "{}", tests.len());
    assert_eq!(v["summary"]["tests"], tests.len());
    let expected: Vec<&str> = tests
        .iter()
        .filter_map(|t| t["expected"].as_str())
        .collect();
    for kind in ["allow", "deny", "audit"] {
        assert!(expected.contains(&kind), "no `{kind}` test in company.toml");
    }
    // The deny-over-allow test reports its deciding rule.
    let t = tests
        .iter()
        .find(|t| t["name"] == "contractor denied despite engineering grant")
        .expect("deny-over-allow test");
    assert_eq!(t["actual"], "deny");
    assert_eq!(t["reason"], "denied_by_rule");
    assert_eq!(t["rule"]["grant"], "contractors-no-prod-db");
    assert_eq!(t["rule"]["action"], "deny");
    // The expiry test runs after expiry.
    let t = tests
        .iter()
        .find(|t| t["name"] == "carol's access ends at expiry")
        .expect("expiry test");
    assert_eq!(t["at"], "2030-01-01T00:00:00Z");
    assert_eq!(t["actual"], "deny");
    assert_eq!(t["passed"], true);
}

#[test]
fn check_reports_located_errors_with_help() {
    let text = format!(
        "{BASE}\n[[allow]]\nname = \"g\"\nprincipals = [\"nobody@example.com\"]\nresources = [\"db\"]\n"
    );
    let f = Scratch::new("errors.toml", &text);
    let o = run(&["policy", "check", f.path()]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let line = text
        .lines()
        .position(|l| l.contains("nobody@example.com"))
        .expect("line")
        + 1;
    let col = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.find("\"nobody"))
        .expect("col")
        + 1; // 1-based, at the string value

    let err = stderr(&o);
    let want = format!(
        "{}:{line}:{col}: error: unknown principal `nobody@example.com` (help: ",
        f.path()
    );
    assert!(err.contains(&want), "want `{want}` in:\n{err}");
    assert!(
        stdout(&o).contains("1 error, tests not run"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o)
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("FAILED"))
    );

    // JSON: the same diagnostic, machine-readable.
    let o = run(&["policy", "check", f.path(), "-o", "json"]);
    assert_eq!(code(&o), 1);
    let v = json(&o);
    assert_eq!(v["ok"], false);
    let e = &v["files"][0]["errors"][0];
    assert_eq!(e["line"], line);
    assert_eq!(e["column"], col);
    assert_eq!(e["severity"], "error");
    assert!(e["help"].as_str().is_some_and(|h| !h.is_empty()));
}

#[test]
fn check_reports_toml_syntax_errors() {
    let f = Scratch::new("syntax.toml", "[[resource]\nname = \"x\"\n");
    let o = run(&["policy", "check", f.path()]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:1:", f.path())), "{err}");
    assert!(err.contains("error: TOML syntax"), "{err}");
}

#[test]
fn check_reports_failing_tests_with_deciding_rule() {
    let text = format!(
        r#"{BASE}
[[deny]]
name = "no-db"
principals = ["a@example.com"]
resources = ["db"]

[[test]]
name = "wrongly expects allow"
from = "a-laptop"
to = "db"
expect = "allow"

[[test]]
name = "correctly expects deny"
from = "a-laptop"
to = "198.18.2.20:5432/tcp"
expect = "deny"
"#
    );
    let f = Scratch::new("failing.toml", &text);
    let o = run(&["policy", "check", f.path()]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let line = text
        .lines()
        .position(|l| l.contains("wrongly"))
        .expect("line");
    assert!(
        out.contains(&format!(
            "{}:{line}:1: test `wrongly expects allow`: FAILED: expected allow, got deny (denied_by_rule)",
            f.path()
        )),
        "{out}"
    );
    assert!(
        out.contains("deciding rule: rule 1 (deny 'no-db' -> 'db')"),
        "{out}"
    );
    assert!(out.contains("packet: from `a-laptop` to `db`"), "{out}");
    assert!(!out.contains("correctly expects deny"), "{out}");
    assert!(out.contains("2 tests, 1 passed, 1 failed"), "{out}");
    // --verbose lists passing ones too.
    let o = run(&["policy", "check", "-v", f.path()]);
    assert!(stdout(&o).contains("test `correctly expects deny`: ok"));

    let o = run(&["policy", "check", f.path(), "--output", "json"]);
    assert_eq!(code(&o), 1);
    let v = json(&o);
    assert_eq!(v["summary"]["failed"], 1);
    assert_eq!(v["summary"]["passed"], 1);
    let t = &v["files"][0]["tests"][0];
    assert_eq!(t["passed"], false);
    assert_eq!(t["expected"], "allow");
    assert_eq!(t["actual"], "deny");
    assert_eq!(t["rule"]["grant"], "no-db");
    assert_eq!(t["rule"]["id"], 1);
}

#[test]
fn check_prints_warnings_but_passes() {
    let text = format!(
        "{BASE}\n[[allow]]\nname = \"old\"\nprincipals = [\"a@example.com\"]\nresources = [\"db\"]\nexpires_at = 2001-01-01T00:00:00Z\n"
    );
    let f = Scratch::new("warn.toml", &text);
    let o = run(&["policy", "check", f.path()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("warning: [[allow]] `old` expired at 2001-01-01T00:00:00Z"));
    assert!(stdout(&o).contains("1 warning"));
}

#[test]
fn check_unreadable_file_is_exit_2() {
    let missing = std::env::temp_dir().join("gatewayctl-cli-does-not-exist.toml");
    let missing = missing.to_str().expect("utf-8");
    let o = run(&["policy", "check", &company(), missing]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&format!("cannot read `{missing}`")),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("1 unreadable"), "{}", stdout(&o));
    let o = run(&["policy", "check", missing, "-o", "json"]);
    assert_eq!(code(&o), 2);
    assert!(json(&o)["files"][0]["io_error"].is_string());
    // Other commands too.
    let o = run(&["policy", "explain", missing, "--from", "a", "--to", "b"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read"));
}

#[test]
fn usage_errors_are_exit_2() {
    assert_eq!(code(&run(&["policy", "check"])), 2);
    assert_eq!(code(&run(&["policy", "frobnicate"])), 2);
    let o = run(&["policy", "check", &company(), "--output", "yaml"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("text") && stderr(&o).contains("json"));
}

#[test]
fn explain_sends_from_the_address_of_the_destination_family() {
    let explain = |from: &str, to: &str| {
        run(&[
            "policy",
            "explain",
            &company(),
            "--from",
            from,
            "--to",
            to,
            "-o",
            "json",
        ])
    };
    // alice-laptop is dual-stack: each family from its own address, same principal.
    for (to, src) in [
        ("198.18.1.5:22/tcp", "198.19.0.10"),
        ("[2001:db8:1::10]:22/tcp", "2001:db8:ff::20"),
    ] {
        let o = explain("alice-laptop", to);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["packet"]["src"], src, "{to}");
        assert_eq!(v["packet"]["principal"], "alice-laptop", "{to}");
        assert_eq!(v["verdict"], "allow", "{to}");
    }
    // bob-laptop has no IPv6 address: a usage error that says so.
    let o = explain("bob-laptop", "[2001:db8:1::10]:22/tcp");
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("`bob-laptop` has no IPv6 address (it has 198.19.0.11)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_names_the_deciding_grant() {
    let o = run(&[
        "policy",
        "explain",
        &company(),
        "--from",
        "bob-laptop",
        "--to",
        "prod-db",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["reason"], "denied_by_rule");
    assert_eq!(v["rule"]["grant"], "contractors-no-prod-db");
    assert_eq!(v["rule"]["resource"], "prod-db");
    assert_eq!(v["rule"]["action"], "deny");
    assert_eq!(v["packet"]["src"], "198.19.0.11");
    assert_eq!(v["packet"]["dst"], "198.18.2.20");
    assert_eq!(v["packet"]["proto"], "tcp");
    assert_eq!(v["packet"]["dst_port"], 5432);
    assert_eq!(v["packet"]["principal"], "bob-laptop");
    let considered = v["considered"].as_array().expect("considered");
    // The allow it overrides was considered and matched.
    assert!(considered.iter().any(|c| c["grant"] == "engineering-db"
        && c["resource"] == "prod-db"
        && c["outcome"] == "matched"));

    let o = run(&[
        "policy",
        "explain",
        &company(),
        "--from",
        "bob-laptop",
        "--to",
        "prod-db",
    ]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert!(out.contains("verdict:  deny"), "{out}");
    assert!(out.contains("reason:   denied_by_rule"), "{out}");
    assert!(
        out.contains("(deny 'contractors-no-prod-db' -> 'prod-db')"),
        "{out}"
    );
    assert!(out.contains("* rule"), "{out}");
    assert!(
        out.contains("`engineering-db` -> `prod-db`: matched"),
        "{out}"
    );
}

#[test]
fn explain_allow_audit_icmp_v6_and_addresses() {
    let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
        (
            "alice-laptop",
            "198.18.1.5:22/tcp",
            "allow",
            "granted",
            Some("engineering-ssh"),
        ),
        (
            "alice-desktop",
            "[2001:db8:1::10]:22/tcp",
            "allow",
            "granted",
            Some("engineering-ssh"),
        ),
        (
            "alice-laptop",
            "198.18.1.1/icmp",
            "allow",
            "granted",
            Some("engineering-ssh"),
        ),
        (
            "alice-laptop",
            "198.18.20.80:80/tcp",
            "audit",
            "audit_no_grant",
            None,
        ),
        (
            "ci-cd/runner-1",
            "198.19.64.10:8080/tcp",
            "allow",
            "granted",
            Some("ci-build"),
        ),
        (
            "ci-cd/runner-2",
            "[2001:db8:40::10]:443/tcp",
            "deny",
            "no_grant",
            None,
        ),
        (
            "198.19.0.99",
            "198.18.1.5:22/tcp",
            "deny",
            "unknown_source",
            None,
        ),
        (
            "alice-laptop",
            "198.19.200.1:443/tcp",
            "allow",
            "unprotected",
            None,
        ),
        (
            "carol-phone",
            "2001:db8:1:10::7/icmp",
            "allow",
            "granted",
            Some("sre-monitoring"),
        ),
    ];
    for &(from, to, verdict, reason, grant) in cases {
        let o = run(&[
            "policy",
            "explain",
            &company(),
            "--from",
            from,
            "--to",
            to,
            "-o",
            "json",
        ]);
        assert_eq!(code(&o), 0, "{from} -> {to}: {}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["verdict"], verdict, "{from} -> {to}");
        assert_eq!(v["reason"], reason, "{from} -> {to}");
        match grant {
            Some(g) => assert_eq!(v["rule"]["grant"], g, "{from} -> {to}"),
            None if verdict == "audit" => {
                assert_eq!(v["rule"]["kind"], "audit_default");
                assert_eq!(v["rule"]["resource"], "legacy-intranet");
            }
            None => assert!(v["rule"].is_null(), "{from} -> {to}: {}", v["rule"]),
        }
    }
}

#[test]
fn explain_at_a_time_after_expiry() {
    let args = |at: &'static str| {
        vec![
            "policy".to_string(),
            "explain".into(),
            company(),
            "--from".into(),
            "carol-laptop".into(),
            "--to".into(),
            "prod-db".into(),
            "--at".into(),
            at.into(),
            "-o".into(),
            "json".into(),
        ]
    };
    let o = bin()
        .args(args("2029-12-31T23:59:59Z"))
        .output()
        .expect("run");
    let v = json(&o);
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["rule"]["grant"], "carol-oncall-db");
    let o = bin()
        .args(args("2030-01-01T00:00:00Z"))
        .output()
        .expect("run");
    let v = json(&o);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["reason"], "no_grant");
    assert!(
        v["considered"]
            .as_array()
            .expect("considered")
            .iter()
            .any(|c| {
                c["grant"] == "carol-oncall-db" && c["outcome"]["expired"]["expires_at"].is_i64()
            })
    );
    let o = bin().args(args("2030-01-01")).output().expect("run");
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("invalid --at `2030-01-01`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_bad_arguments_name_what_is_valid() {
    let c = company();
    let o = run(&[
        "policy", "explain", &c, "--from", "mallory", "--to", "prod-db",
    ]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("unknown source `mallory`"), "{err}");
    assert!(
        err.contains("alice-laptop") && err.contains("ci-cd/runner-1"),
        "{err}"
    );

    let o = run(&[
        "policy",
        "explain",
        &c,
        "--from",
        "ci-cd/runner-9",
        "--to",
        "prod-db",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("no key `runner-9` (keys: runner-1, runner-2)"),
        "{}",
        stderr(&o)
    );

    for (to, needle) in [
        ("198.18.1.5:22", "is not a destination"),
        ("2001:db8:1::10:22/tcp", "must be in brackets"),
        ("198.18.1.5:70000/tcp", "is not a port"),
        ("198.18.1.5:22/sctp", "unknown protocol `sctp`"),
        ("198.18.1.5/tcp", "has no port"),
        (
            "db..example.com:22/tcp",
            "is not an IP address or a DNS name",
        ),
        ("no-such-resource", "is not a destination"),
    ] {
        let o = run(&[
            "policy",
            "explain",
            &c,
            "--from",
            "alice-laptop",
            "--to",
            to,
        ]);
        assert_eq!(code(&o), 2, "{to}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{to}: {err}");
        assert!(err.contains("198.18.1.10:22/tcp"), "{to}: {err}");
        assert!(
            err.contains("ssh-bastions"),
            "{to}: resources listed: {err}"
        );
    }
}

#[test]
fn compile_summary_and_json() {
    let c = company();
    let o = run(&[
        "policy",
        "compile",
        &c,
        "--host",
        "connector:dc-connector-1",
        "--at",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("host:        connector `dc-connector-1`"),
        "{out}"
    );
    assert!(out.contains("counts:      "), "{out}");
    assert!(
        out.contains("SRC map (") && out.contains("DST map (") && out.contains("RULES map ("),
        "{out}"
    );
    assert!(out.contains("first expiry: 2030-01-01T00:00:00Z"), "{out}");
    assert!(
        out.contains("until 2030-01-01T00:00:00Z, then deny"),
        "{out}"
    );

    let o = run(&[
        "policy",
        "compile",
        &c,
        "--host",
        "connector:dc-connector-1",
        "--at",
        "2026-01-01T00:00:00Z",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert_eq!(v["host"]["connector"], "dc-connector-1");
    let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
    assert!(n("sources") > 0 && n("atoms") > 0 && n("rules") > 0);
    assert!(
        out.contains(&format!(
            "{} sources, {} classes, {} DST prefixes",
            n("sources"),
            v["classes"],
            n("atoms")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} rule entries", n("rules"))),
        "{out}"
    );
    // The build farm is not this connector's business.
    assert!(
        !v["protected"]
            .as_array()
            .expect("protected")
            .iter()
            .any(|p| p == "198.19.64.0/24")
    );

    // A device view carries only the device.
    let o = run(&[
        "policy",
        "compile",
        &c,
        "--host",
        "device:carol-phone",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert_eq!(v["sources"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["sources"][0]["addr"], "2001:db8:ff::12");
}

#[test]
fn unknown_hosts_name_the_valid_ones() {
    let c = company();
    for host in [
        "connector:nope",
        "device:nope",
        "nope",
        "gateway:dc-connector-1",
    ] {
        for cmd in ["compile", "nft"] {
            let o = run(&["policy", cmd, &c, "--host", host]);
            assert_eq!(code(&o), 2, "{cmd} {host}");
            let err = stderr(&o);
            assert!(
                err.contains("valid hosts: connector:dc-connector-1"),
                "{err}"
            );
            assert!(err.contains("device:carol-phone"), "{err}");
        }
    }
}

#[test]
fn nft_prints_a_ruleset() {
    let o = run(&[
        "policy",
        "nft",
        &company(),
        "--host",
        "connector:dc-connector-1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("table inet zt_gateway {"));
    assert!(s.contains("type filter hook forward priority filter; policy accept;"));
    assert!(s.contains("type filter hook input priority filter; policy accept;"));
    assert!(
        s.contains("198.18.2.20 . tcp . 5432 : drop")
            || s.contains("198.18.2.20 . tcp . 5432 : accept")
    );
    let o = run(&["policy", "nft", &company(), "--host", "device:alice-laptop"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("hook output"));
    assert!(!stdout(&o).contains("hook input"));
}

#[test]
fn broken_policy_fails_every_command_with_exit_1() {
    let f = Scratch::new(
        "broken-cmds.toml",
        &format!("{BASE}\n[[resource]]\nname = \"db\"\n"),
    );
    for args in [
        vec![
            "policy",
            "explain",
            f.path(),
            "--from",
            "a-laptop",
            "--to",
            "db",
        ],
        vec!["policy", "compile", f.path(), "--host", "connector:c1"],
        vec!["policy", "nft", f.path(), "--host", "connector:c1"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 1, "{args:?}");
        assert!(
            stderr(&o).contains(&format!("{}:", f.path())),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains(": error: "), "{}", stderr(&o));
    }
}

#[test]
fn schema_is_json() {
    let o = run(&["policy", "schema"]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert!(v["properties"]["resource"].is_object());
    assert!(v["$schema"].as_str().is_some_and(|s| s.contains("2020-12")));
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["policy", "--help"],
        vec!["policy", "check", "--help"],
        vec!["policy", "explain", "--help"],
        vec!["policy", "compile", "--help"],
        vec!["policy", "nft", "--help"],
        vec!["policy", "schema", "--help"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 0, "{args:?}");
        let out = stdout(&o);
        assert!(out.contains("Usage: gatewayctl"), "{args:?}: {out}");
    }
    let out = stdout(&run(&["policy", "explain", "--help"]));
    for flag in [
        "--from",
        "--to",
        "--at",
        "--output",
        "198.18.1.1/icmp",
        "sa",
    ] {
        assert!(out.contains(flag), "{flag}: {out}");
    }
    assert!(stdout(&run(&["--help"])).contains("Exit codes"));
}

#[test]
fn compile_shows_wireguard_peers() {
    let f = examples_dir().join("minimal.toml").display().to_string();
    let o = run(&[
        "policy",
        "compile",
        &f,
        "--host",
        "connector:office-connector",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("WireGuard peers (1)")
            && out.contains(
                "mJ2dvAxDrVJmHEZ2OUwi6cOmk37pdUWA3dpETQTuV2I= device `dana-laptop` -> 198.19.0.40/32"
            ),
        "{out}"
    );
    let o = run(&["policy", "compile", &f, "--host", "device:dana-laptop"]);
    let out = stdout(&o);
    assert!(out.contains("tunnel addresses: 198.19.0.40"), "{out}");
    assert!(
        out.contains(
            "connector `office-connector` at office-gw.example.com:51820 -> 198.18.100.0/24"
        ),
        "{out}"
    );
    let o = run(&[
        "policy",
        "compile",
        &f,
        "--host",
        "device:dana-laptop",
        "-o",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["peers"][0]["kind"], "connector");
    assert_eq!(
        v["peers"][0]["public_key"],
        "Vr2zPfC5sc9tYPhB6T5Sgdv0rnNUxHhdjWxd8dFK2QE="
    );
    assert_eq!(v["peers"][0]["endpoint"], "office-gw.example.com:51820");
    assert_eq!(v["tunnel_addresses"][0], "198.19.0.40");
}

#[test]
fn explain_and_check_a_policy_with_resources_by_dns_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("names.toml");
    std::fs::write(
        &file,
        r#"[[remote_network]]
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
address = "admin.corp.test"
tcp = ["8080"]

[[resource]]
name = "wild"
network = "corp"
address = "*.wild.test"
tcp = ["443"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "198.19.0.10"

[[allow]]
name = "alice-app"
principals = ["alice@example.com"]
resources = ["app", "wild"]
"#,
    )
    .expect("write");
    let file = file.display().to_string();
    let explain = |to: &str| {
        let o = run(&[
            "policy",
            "explain",
            &file,
            "--from",
            "alice-laptop",
            "--to",
            to,
            "-o",
            "json",
        ]);
        assert_eq!(code(&o), 0, "{to}: {}", stderr(&o));
        json(&o)
    };
    let v = explain("app.corp.test:8080/tcp");
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["rule"]["grant"], "alice-app");
    assert_eq!(v["packet"]["dst"], "app.corp.test");
    assert_eq!(v["resources"], serde_json::json!(["app"]));
    let v = explain("admin.corp.test:8080/tcp");
    assert_eq!(
        (v["verdict"].as_str(), v["reason"].as_str()),
        (Some("deny"), Some("no_grant"))
    );
    assert_eq!(explain("x.wild.test:443/tcp")["verdict"], "allow");
    assert_eq!(explain("x.y.wild.test:443/tcp")["reason"], "unprotected");
    assert_eq!(explain("admin")["reason"], "no_grant");
    // Text output names the destination by its name.
    let o = run(&[
        "policy",
        "explain",
        &file,
        "--from",
        "alice-laptop",
        "--to",
        "app.corp.test:8080/tcp",
    ]);
    assert!(
        stdout(&o).contains("-> app.corp.test:8080/tcp"),
        "{}",
        stdout(&o)
    );
    // A wildcard resource is no single destination: a usage error that says so.
    let o = run(&[
        "policy",
        "explain",
        &file,
        "--from",
        "alice-laptop",
        "--to",
        "wild",
    ]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("is the wildcard `*.wild.test`"),
        "{}",
        stderr(&o)
    );
    // `check` passes and warns that no tunnel reaches the names (no `[[connector]]`).
    let o = run(&["policy", "check", &file]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("so no device reaches it"), "{all}");
}

#[test]
fn compile_lists_the_name_patterns_of_a_view_with_their_atoms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("names.toml");
    std::fs::write(
        &file,
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.0.0/16\"]\nconnectors = [\"conn-1\"]\n\n\
         [[resource]]\nname = \"app\"\nnetwork = \"corp\"\naddress = \"app.corp.test\"\ntcp = [\"8080\"]\n\n\
         [[user]]\nemail = \"alice@example.com\"\n\n\
         [[device]]\nname = \"alice-laptop\"\nowner = \"alice@example.com\"\naddress = \"198.19.0.10\"\n\n\
         [[allow]]\nname = \"alice-app\"\nprincipals = [\"alice@example.com\"]\nresources = [\"app\"]\n",
    )
    .expect("write");
    let f = file.display().to_string();
    let o = run(&["policy", "compile", &f, "--host", "device:alice-laptop"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("DNS names (1)"), "{out}");
    assert!(
        out.contains("app.corp.test") && out.contains("corp: app"),
        "{out}"
    );
    // The rules of alice's class reach the name's atoms, TCP 8080 allowed.
    assert!(out.contains("8080"), "{out}");
}
