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
//! Four layers, a module each: `access` reads the TOML tables (typed getters that report
//! what was found and what would be valid), `values` parses values (addresses, ports,
//! timestamps), `sections` validates each section and resolves names between them
//! (`references`: grants and `[[test]]` blocks), `lints` warns about valid but pointless
//! grants.

mod access;
mod lints;
mod references;
mod sections;
mod tunnel;
mod values;

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

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
type V<'i> = Spanned<DeValue<'i>>;
/// The parser's hash maps: names, addresses and keys are looked up once or more per
/// entry, so the hasher is a fast one (foldhash: seeded per process, unlike FxHash).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Parses, resolves and validates a policy. `file` is only used in diagnostics; `now`
/// (unix seconds) decides which grants are already expired (a warning) and is the time
/// of `[[test]]` blocks without `at`.
///
/// Returns every error (and warning) when there is at least one error.
pub fn parse(text: &str, file: &str, now: i64) -> Result<Parsed, Vec<Diagnostic>> {
    let mut sink = Sink::new(file, text);
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            sink.error(
                &span,
                format!("TOML syntax: {msg}"),
                "see https://toml.io for the syntax",
            );
        }
        return Err(sink.finish());
    }
    let mut p = sections::P::new(sink, file, now);
    p.document(doc.get_ref());
    if p.sink.has_errors() {
        return Err(p.sink.finish());
    }
    let mut policy = p.policy;
    policy.reindex();
    let mut sink = p.sink;
    lints::shadow_warnings(&policy, &mut sink, &p.grant_name_spans);
    lints::tunnel_overlap_warnings(&policy, &mut sink, &p.connector_spans);
    Ok(Parsed {
        policy,
        warnings: sink.finish(),
    })
}
