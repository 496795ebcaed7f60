//! The offline policy commands: `policy check`, `explain`, `compile`, `nft` (`schema`
//! is one call in `main.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gatewayctl::remote::now_unix;
use gatewayctl::{proto_name, resolve_from, resolve_host, resolve_to, verdict_name};
use policy_compiler::{
    Diagnostic, HostView, Parsed, Policy, TestResult, format_rfc3339, parse, run_tests,
};
use serde_json::{Value, json};

use super::{at_time, load};
use crate::cli::AtArg;
use crate::fail::{Fail, R};
use crate::output::{Output, plural, print_json, reason_name, rule_json, rule_text};

struct FileReport {
    file: String,
    io_error: Option<String>,
    diags: Vec<Diagnostic>,
    tests: Vec<(TestResult, String, String)>,
    policy: Option<Policy>,
}

fn check_file(path: &Path, now: i64) -> FileReport {
    let file = path.display().to_string();
    let mut rep = FileReport {
        file: file.clone(),
        io_error: None,
        diags: Vec::new(),
        tests: Vec::new(),
        policy: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            rep.io_error = Some(format!("cannot read `{file}`: {e}"));
            return rep;
        }
    };
    match parse(&text, &file, now) {
        Err(diags) => rep.diags = diags,
        Ok(Parsed { policy, warnings }) => {
            rep.diags = warnings;
            let results = run_tests(&policy);
            rep.tests = results
                .into_iter()
                .zip(&policy.tests)
                .map(|(r, t)| (r, t.from.clone(), t.to.clone()))
                .collect();
            rep.policy = Some(policy);
        }
    }
    rep
}

pub fn check(files: &[PathBuf], verbose: bool, output: Output) -> R<()> {
    let now = now_unix();
    let reports: Vec<FileReport> = files.iter().map(|f| check_file(f, now)).collect();
    let errors: usize = reports
        .iter()
        .map(|r| r.diags.iter().filter(|d| d.is_error()).count())
        .sum();
    let warnings: usize = reports
        .iter()
        .map(|r| r.diags.iter().filter(|d| !d.is_error()).count())
        .sum();
    let tests: usize = reports.iter().map(|r| r.tests.len()).sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.tests.iter().filter(|t| !t.0.passed).count())
        .sum();
    let io_errors: usize = reports.iter().filter(|r| r.io_error.is_some()).count();
    let ok = errors == 0 && failed == 0 && io_errors == 0;

    match output {
        Output::Json => {
            let files: Vec<Value> = reports
                .iter()
                .map(|r| {
                    let tests: Vec<Value> = r
                        .tests
                        .iter()
                        .map(|(t, from, to)| {
                            let policy = r.policy.as_ref();
                            json!({
                                "name": t.name,
                                "line": t.line,
                                "column": t.column,
                                "from": from,
                                "to": to,
                                "at": format_rfc3339(t.at),
                                "expected": verdict_name(t.expected),
                                "actual": verdict_name(t.decision.verdict),
                                "reason": reason_name(t.decision.reason),
                                "rule": policy.map_or(Value::Null, |p| rule_json(p, t.decision.rule_id())),
                                "passed": t.passed,
                            })
                        })
                        .collect();
                    let errs: Vec<&Diagnostic> = r.diags.iter().filter(|d| d.is_error()).collect();
                    let warns: Vec<&Diagnostic> =
                        r.diags.iter().filter(|d| !d.is_error()).collect();
                    json!({
                        "file": r.file,
                        "ok": r.io_error.is_none() && errs.is_empty() && r.tests.iter().all(|t| t.0.passed),
                        "io_error": r.io_error,
                        "errors": errs,
                        "warnings": warns,
                        "tests": tests,
                    })
                })
                .collect();
            print_json(&json!({
                "ok": ok,
                "files": files,
                "summary": {
                    "files": reports.len(),
                    "unreadable": io_errors,
                    "errors": errors,
                    "warnings": warnings,
                    "tests": tests,
                    "passed": tests - failed,
                    "failed": failed,
                },
            }));
        }
        Output::Text => {
            for r in &reports {
                if let Some(e) = &r.io_error {
                    eprintln!("gatewayctl: {e}");
                    continue;
                }
                for d in &r.diags {
                    eprintln!("{d}");
                }
                let Some(policy) = &r.policy else {
                    let n = r.diags.iter().filter(|d| d.is_error()).count();
                    println!("{}: {n} error{}, tests not run", r.file, plural(n));
                    continue;
                };
                for (t, from, to) in &r.tests {
                    if t.passed && !verbose {
                        continue;
                    }
                    let mut s = String::new();
                    let status = if t.passed { "ok" } else { "FAILED" };
                    let _ = write!(
                        s,
                        "{}:{}:{}: test `{}`: {status}: expected {}, got {} ({})",
                        r.file,
                        t.line,
                        t.column,
                        t.name,
                        verdict_name(t.expected),
                        verdict_name(t.decision.verdict),
                        reason_name(t.decision.reason),
                    );
                    if !t.passed {
                        let _ = write!(
                            s,
                            "\n    packet: from `{from}` to `{to}` at {}\n    deciding rule: {}",
                            format_rfc3339(t.at),
                            rule_text(policy, t.decision.rule.map(|r| r.0))
                        );
                    }
                    println!("{s}");
                }
                let f = r.tests.iter().filter(|t| !t.0.passed).count();
                println!(
                    "{}: {} test{}, {} passed, {f} failed",
                    r.file,
                    r.tests.len(),
                    plural(r.tests.len()),
                    r.tests.len() - f
                );
            }
            println!(
                "summary: {} file{}, {errors} error{}, {warnings} warning{}, {tests} test{}, {} passed, {failed} failed{}: {}",
                reports.len(),
                plural(reports.len()),
                plural(errors),
                plural(warnings),
                plural(tests),
                tests - failed,
                if io_errors > 0 {
                    format!(", {io_errors} unreadable")
                } else {
                    String::new()
                },
                if ok { "ok" } else { "FAILED" },
            );
        }
    }
    if io_errors > 0 {
        Err(Fail::Usage(String::new()))
    } else if ok {
        Ok(())
    } else {
        Err(Fail::Policy)
    }
}

// ------------------------------------------------------------------ explain

pub fn explain(file: &Path, from: &str, to: &str, at: &AtArg, output: Output) -> R<()> {
    let at = at_time(at)?;
    let policy = load(file, now_unix())?;
    let target = resolve_to(&policy, to).map_err(|e| Fail::Usage(format!("--to: {e}")))?;
    let src = resolve_from(&policy, from, target.addr)
        .map_err(|e| Fail::Usage(format!("--from: {e}")))?;
    let e = target.explain(&policy, src, at);
    let d = e.decision;
    let deciding = d.rule.and_then(|r| policy.rule(r.0));
    match output {
        Output::Json => print_json(&json!({
            "packet": {
                "from": from,
                "src": src,
                "principal": e.principal,
                "to": to,
                "dst": match &target.name {
                    Some(n) => n.clone(),
                    None => target.addr.to_string(),
                },
                "proto": proto_name(target.proto),
                "dst_port": target.port,
                "at": format_rfc3339(at),
            },
            "verdict": verdict_name(d.verdict),
            "reason": reason_name(d.reason),
            "rule": deciding.and_then(|m| serde_json::to_value(m).ok()),
            "resources": e.resources,
            "considered": e.considered,
        })),
        Output::Text => {
            println!(
                "packet:   {} ({src}) -> {target} at {}",
                e.principal.as_deref().unwrap_or("unknown source"),
                format_rfc3339(at)
            );
            println!("verdict:  {}", verdict_name(d.verdict));
            println!("reason:   {}", reason_name(d.reason));
            println!("decided by: {}", rule_text(&policy, d.rule.map(|r| r.0)));
            println!(
                "resources covering the destination: {}",
                if e.resources.is_empty() {
                    "none".to_string()
                } else {
                    e.resources.join(", ")
                }
            );
            if e.considered.is_empty() {
                println!("considered grants: none");
            } else {
                println!("considered grants:");
                for c in &e.considered {
                    let outcome = match &c.outcome {
                        policy_compiler::Outcome::Matched => "matched".to_string(),
                        policy_compiler::Outcome::Expired { expires_at } => {
                            format!("expired at {}", format_rfc3339(*expires_at))
                        }
                        policy_compiler::Outcome::AddressMismatch => {
                            "resource does not cover the destination".to_string()
                        }
                        policy_compiler::Outcome::PortMismatch { allowed } => {
                            format!("protocol/port not covered (covers {allowed})")
                        }
                        policy_compiler::Outcome::NotForPrincipal => {
                            "not granted to this source".to_string()
                        }
                    };
                    let mark = if d.rule.map(|r| r.0) == Some(c.rule) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        " {mark} rule {:>3} {:<5} `{}` -> `{}`: {outcome}",
                        c.rule,
                        c.action.to_string(),
                        c.grant,
                        c.resource
                    );
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ compile / nft

fn compile_view(file: &Path, host: &str, at: i64) -> R<(Policy, HostView)> {
    let policy = load(file, at)?;
    let h = resolve_host(&policy, host).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    let view = policy_compiler::compile(&policy, &h, at)
        .map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    Ok((policy, view))
}

pub fn compile(file: &Path, host: &str, at: &AtArg, output: Output) -> R<()> {
    let at = at_time(at)?;
    let (_policy, v) = compile_view(file, host, at)?;
    if output == Output::Json {
        let value = serde_json::to_value(&v)
            .map_err(|e| Fail::Usage(format!("cannot serialize the view: {e}")))?;
        print_json(&value);
        return Ok(());
    }
    let host = match &v.host {
        policy_compiler::Host::Connector(c) => format!("connector `{c}`"),
        policy_compiler::Host::Device(d) => format!("device `{d}`"),
    };
    let n_atoms = v.atom_meta.len();
    println!("host:        {host}");
    println!("compiled at: {}", format_rfc3339(v.compiled_at));
    println!(
        "networks:    {} (connectors: {})",
        v.networks.join(", "),
        v.connectors.join(", ")
    );
    let protected: Vec<String> = v.protected.iter().map(ToString::to_string).collect();
    println!("protected:   {}", protected.join(", "));
    println!(
        "counts:      {} source{}, {} class{}, {} DST prefix{}, {n_atoms} atom{}, {} rule entr{}",
        v.sources.len(),
        plural(v.sources.len()),
        v.classes,
        if v.classes == 1 { "" } else { "es" },
        v.atoms.len(),
        if v.atoms.len() == 1 { "" } else { "es" },
        plural(n_atoms),
        v.rules.len(),
        if v.rules.len() == 1 { "y" } else { "ies" },
    );
    println!(
        "recompile:   {}",
        v.recompile_at
            .map_or_else(|| "never".to_string(), format_rfc3339)
    );
    if let Some(first) = v
        .rules
        .iter()
        .filter_map(|r| r.value.valid_until_unix)
        .min()
    {
        println!(
            "first expiry: {} (entries switch to their `after` decision by themselves)",
            format_rfc3339(first)
        );
    }
    println!("\nSRC map ({} entries): source -> class", v.sources.len());
    for s in &v.sources {
        let who = v
            .principals
            .get(&s.principal)
            .map_or_else(String::new, |p| match &p.user {
                Some(u) => format!("{} ({u})", p.name),
                None => p.name.clone(),
            });
        println!("  {:<24} class {:<3} {who}", s.addr.to_string(), s.class);
    }
    let hosts = v
        .atoms
        .iter()
        .filter(|a| a.prefix.prefix_len() == a.prefix.max_prefix_len())
        .count();
    println!(
        "\nDST map ({} entries, {hosts} of them hosts, kept in DST_HOSTS): prefix -> atom",
        v.atoms.len()
    );
    for a in &v.atoms {
        let res = v.atom_meta.get(&a.atom).map_or_else(String::new, |m| {
            if m.resources.is_empty() {
                format!("{} (no resource)", m.network)
            } else {
                format!("{}: {}", m.network, m.resources.join(", "))
            }
        });
        println!(
            "  {:<24} atom {:<3} default {:<5} {res}",
            a.prefix.to_string(),
            a.atom,
            verdict_name(a.default_verdict)
        );
    }
    if !v.names.is_empty() {
        println!(
            "\nDNS names ({}): pattern -> atoms (IPv4, IPv6) of the proxy addresses the \
             device's resolver answers with",
            v.names.len()
        );
        for n in &v.names {
            let res = v.atom_meta.get(&n.v4).map_or_else(String::new, |m| {
                format!("{}: {}", m.network, m.resources.join(", "))
            });
            println!(
                "  {:<24} atoms {}, {} default {:<5} {res}",
                n.pattern,
                n.v4,
                n.v6,
                verdict_name(n.default_verdict)
            );
        }
    }
    let single = v.rules.iter().filter(|r| r.key.port_bits == 16).count();
    println!(
        "\nRULES map ({} entries, {single} of them single ports, kept in RULES_EXACT): (class, \
         atom, proto, ports) -> verdict",
        v.rules.len()
    );
    for r in &v.rules {
        let k = &r.key;
        let ports = if k.port_bits == 0 {
            "any".to_string()
        } else if k.port == k.last_port() {
            k.port.to_string()
        } else {
            format!("{}-{}", k.port, k.last_port())
        };
        let mut val = format!("{} (rule {})", verdict_name(r.value.verdict), r.value.rule);
        if let Some(u) = r.value.valid_until_unix {
            let _ = write!(
                val,
                " until {}, then {} (rule {})",
                format_rfc3339(u),
                verdict_name(r.value.after_verdict),
                r.value.after_rule
            );
        }
        println!(
            "  class {:<3} atom {:<3} {:<6} {:<11} -> {val}",
            k.class,
            k.atom,
            proto_name(k.proto),
            ports
        );
    }
    if !v.tunnel_addresses.is_empty() {
        let own: Vec<String> = v.tunnel_addresses.iter().map(ToString::to_string).collect();
        println!("\ntunnel addresses: {}", own.join(", "));
    }
    println!(
        "\nWireGuard peers ({}): public key, who, endpoint -> allowed IPs",
        v.peers.len()
    );
    for p in &v.peers {
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        println!(
            "  {} {} `{}`{} -> {}",
            p.public_key,
            p.kind.as_str(),
            p.name,
            p.endpoint
                .as_ref()
                .map_or_else(String::new, |e| format!(" at {e}")),
            ips.join(", ")
        );
    }
    Ok(())
}

pub fn nft(file: &Path, host: &str, at: &AtArg) -> R<()> {
    let at = at_time(at)?;
    let policy = load(file, at)?;
    let h = resolve_host(&policy, host).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    let s =
        policy_compiler::nft(&policy, &h, at).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    print!("{s}");
    Ok(())
}
