//! The TOML format: parsing, name resolution and validation, reporting every problem at once.
//!
//! ```toml
//! [[remote_network]]
//! name = "datacenter"
//! cidrs = ["198.18.0.0/16", "2001:db8::/48"]
//! connectors = ["dc-connector-1"]
//!
//! [[resource]]
//! name = "bastion"
//! network = "datacenter"
//! address = "198.18.1.10"          # host or CIDR, IPv4 or IPv6
//! tcp = ["22"]                      # "all", "none" or a list: [22, "8000-8100"]
//! udp = "none"
//! icmp = true
//! mode = "enforce"                  # or "audit"
//!
//! [[user]]
//! email = "alice@example.com"
//!
//! [[device]]
//! name = "alice-laptop"
//! owner = "alice@example.com"
//! address = "198.19.0.10"           # or both families:
//! public_key = "..."                # optional WireGuard key (devices and SA keys)
//! # addresses = ["198.19.0.10", "2001:db8:ff::10"]
//!
//! [[service_account]]
//! name = "ci"
//! keys = [{ name = "runner-1", address = "198.19.1.1" },
//!         { name = "runner-2", addresses = ["198.19.1.2", "2001:db8:ff::102"] }]
//!
//! [[group]]
//! name = "engineering"
//! members = ["alice@example.com", "ci"]
//!
//! [[allow]]                         # and [[deny]], same shape
//! name = "eng-ssh"
//! principals = ["engineering"]      # or "group:x", "user:a@b", "service_account:x"
//! resources = ["bastion"]
//! tcp = ["22"]                      # optional narrowing (see below)
//! expires_at = 2030-01-01T00:00:00Z # optional, exclusive
//!
//! [[connector]]                    # optional: the connector's WireGuard tunnel
//! name = "dc-connector-1"           # a connector some [[remote_network]] lists
//! public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
//! endpoint = "203.0.113.7:51820"    # IPv4, [IPv6] or DNS name, and a port
//!
//! [[test]]
//! from = "alice-laptop"             # device, "sa/key" (its address of the `to`
//!                                   # family) or an address
//! to = "198.18.1.10:22/tcp"         # addr:port/proto, addr/icmp, or a resource name
//! expect = "allow"                  # allow | deny | audit
//! at = 2029-01-01T00:00:00Z         # optional
//! ```
//!
//! Narrowing: when a grant names any of `tcp`, `udp`, `icmp`, it covers exactly what it
//! names (unnamed protocols: nothing), intersected with each resource's own ports.
//!
//! The TOML document is read by `doc` (straight from `toml_parser`'s events for the usual
//! forms, by `toml`'s parser for anything else and to report syntax errors). Four layers,
//! a module each, take it from there: `access` reads the TOML tables (typed getters that report
//! what was found and what would be valid), `values` parses values (addresses, ports,
//! timestamps), `sections` validates each section and resolves names between them
//! (`references`: grants and `[[test]]` blocks), `lints` warns about valid but pointless
//! grants.

mod access;
mod doc;
mod lints;
mod references;
mod sections;
mod tunnel;
mod values;

use std::ops::Range;

use crate::diag::{Diagnostic, Sink};
use crate::model::Policy;

/// A successfully parsed policy and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Byte range in the policy text (diagnostics turn it into line:column).
type Span = Range<usize>;
/// A value and where it was written.
type Sp<T> = (T, Span);
/// A TOML value and where it was written.
type V<'i> = doc::Node<'i>;
/// The parser's hash maps: names, addresses and keys are looked up once or more per
/// entry, so the hasher is a fast one (foldhash: seeded per process, unlike FxHash).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Parses, resolves and validates a policy. `file` is only used in diagnostics; `now`
/// (unix seconds) decides which grants are already expired (a warning) and is the time
/// of `[[test]]` blocks without `at`.
///
/// Returns every error (and warning) when there is at least one error.
pub fn parse(text: &str, file: &str, now: i64) -> Result<Parsed, Vec<Diagnostic>> {
    parse_with(text, file, now, true)
}

/// [`parse`]; `fast`: the usual forms are read straight from the parser's events, anything
/// else (errors included) by `toml`'s own parser, which reports what is wrong. Without
/// `fast` (tests), every text is read by `toml`'s parser.
fn parse_with(text: &str, file: &str, now: i64, fast: bool) -> Result<Parsed, Vec<Diagnostic>> {
    let sink = Sink::new(file, text);
    let doc = match fast.then(|| doc::fast(text)).flatten() {
        Some(doc) => doc,
        None => {
            let (doc, errors) = doc::from_de(text);
            if errors.is_empty() {
                doc
            } else {
                return Err(syntax_errors(sink, errors));
            }
        }
    };
    let mut p = sections::P::new(sink, file, now);
    p.document(&doc);
    drop(doc);
    if p.sink.has_errors() {
        return Err(p.sink.finish());
    }
    let mut policy = p.policy;
    policy.reindex();
    let mut sink = p.sink;
    lints::shadow_warnings(&policy, &mut sink, &p.grant_name_spans);
    lints::tunnel_overlap_warnings(&policy, &mut sink, &p.connector_spans);
    lints::names_without_tunnel(&policy, &mut sink, &p.dns_name_spans);
    Ok(Parsed {
        policy,
        warnings: sink.finish(),
    })
}

fn syntax_errors(mut sink: Sink<'_>, errors: Vec<toml::de::Error>) -> Vec<Diagnostic> {
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        sink.error(
            &span,
            format!("TOML syntax: {msg}"),
            "see https://toml.io for the syntax",
        );
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{Rng, Scale, gen_policy, scaled_policy};

    /// What a caller sees of a parse: the policy (its derived index aside, which is built
    /// from the rest) and the warnings, or the diagnostics.
    fn seen(r: Result<Parsed, Vec<Diagnostic>>) -> String {
        match r {
            Ok(mut p) => {
                p.policy.index = Default::default();
                format!("{:?}\n{:?}", p.policy, p.warnings)
            }
            Err(d) => format!("{d:?}"),
        }
    }

    fn same(text: &str) -> bool {
        let now = 1_800_000_000;
        let fast = parse_with(text, "p.toml", now, true);
        let ok = fast.is_ok();
        assert_eq!(
            seen(fast),
            seen(parse_with(text, "p.toml", now, false)),
            "fast and toml's path differ on:\n{text}"
        );
        ok
    }

    /// The fast document path and `toml`'s give the same policy, warnings and errors: on
    /// random policies, and on broken ones (lines deleted, swapped or repeated: unknown
    /// names, missing keys, duplicate keys, syntax errors).
    #[test]
    fn fast_path_parses_as_toml_path() {
        let (mut valid, mut broken) = (0, 0);
        for seed in 0..60u64 {
            let mut rng = Rng(seed);
            let text = gen_policy(&mut rng, 1_800_000_000);
            valid += usize::from(same(&text));
            let lines: Vec<&str> = text.lines().collect();
            for _ in 0..5 {
                let mut l = lines.clone();
                let (a, b) = (rng.below(l.len()), rng.below(l.len()));
                match rng.below(3) {
                    0 => {
                        l.remove(a);
                    }
                    1 => l.swap(a, b),
                    _ => l.insert(a, lines[b]),
                }
                broken += usize::from(!same(&l.join("\n")));
            }
        }
        // Both kinds were seen (not every mutation breaks a policy).
        assert!(valid > 20 && broken > 150, "{valid} valid, {broken} broken");
        let text = scaled_policy(&mut Rng(7), &Scale::for_rules(1_000), 1_800_000_000);
        assert!(same(&text));
    }

    /// The same on the repository's policies: the examples parse, the invalid fixtures give
    /// the same errors either way.
    #[test]
    fn fast_path_parses_the_repositorys_policies_as_toml_path() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let (mut valid, mut invalid) = (0, 0);
        for dir in ["tests/invalid", "tests/data", "../examples"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "toml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if same(&text) {
                        valid += 1;
                    } else {
                        invalid += 1;
                    }
                }
            }
        }
        assert!(
            valid >= 3 && invalid >= 30,
            "{valid} valid, {invalid} invalid"
        );
    }
}
