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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;
use std::str::FromStr;

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;
use ipnet::IpNet;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Sink};
use crate::model::*;

/// A successfully parsed policy and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

type Span = Range<usize>;
type Sp<T> = (T, Span);
type V<'i> = Spanned<DeValue<'i>>;

const SECTIONS: &[&str] = &[
    "remote_network",
    "resource",
    "user",
    "device",
    "service_account",
    "group",
    "allow",
    "deny",
    "test",
];

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
    let mut p = P {
        sink,
        now,
        policy: Policy {
            file: file.to_string(),
            parsed_at: now,
            ..Default::default()
        },
        networks: HashMap::new(),
        resources: HashMap::new(),
        users: HashMap::new(),
        devices: HashMap::new(),
        sas: HashMap::new(),
        groups: HashMap::new(),
        addrs: HashMap::new(),
        grant_name_spans: Vec::new(),
    };
    p.document(doc.get_ref());
    if p.sink.has_errors() {
        return Err(p.sink.finish());
    }
    let mut policy = p.policy;
    policy.reindex();
    let mut sink = p.sink;
    shadow_warnings(&policy, &mut sink, &p.grant_name_spans);
    Ok(Parsed {
        policy,
        warnings: sink.finish(),
    })
}

struct P<'a> {
    sink: Sink<'a>,
    now: i64,
    policy: Policy,
    networks: HashMap<String, (usize, Span)>,
    resources: HashMap<String, (usize, Span)>,
    users: HashMap<String, (usize, Span)>,
    devices: HashMap<String, (usize, Span)>,
    sas: HashMap<String, (usize, Span)>,
    groups: HashMap<String, (usize, Span)>,
    /// Principal addresses -> what uses them.
    addrs: HashMap<IpAddr, String>,
    /// Name span of each grant, parallel to `policy.grants` (file order).
    grant_name_spans: Vec<Span>,
}

/// One `[[section]]` table.
struct Tbl<'a, 'i> {
    t: &'a DeTable<'i>,
    header: Span,
    section: &'static str,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a V<'i>> {
        self.t.get(key)
    }

    fn check_keys(&self, sink: &mut Sink<'_>, allowed: &[&str]) {
        for (k, _) in self.t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                sink.error(
                    &k.span(),
                    format!("unknown key `{}` in [[{}]]", k.get_ref(), self.section),
                    format!("valid keys are: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn missing(&self, sink: &mut Sink<'_>, key: &str, example: &str) {
        sink.error(
            &self.header,
            format!("missing key `{key}` in [[{}]]", self.section),
            format!("add `{key} = {example}`"),
        );
    }

    fn string(&self, sink: &mut Sink<'_>, key: &str, example: &str) -> Option<Sp<String>> {
        match self.get(key) {
            None => {
                self.missing(sink, key, example);
                None
            }
            Some(v) => as_string(sink, key, v, example),
        }
    }

    fn opt_string(&self, sink: &mut Sink<'_>, key: &str, example: &str) -> Option<Sp<String>> {
        self.get(key).and_then(|v| as_string(sink, key, v, example))
    }

    /// A list of strings (`required`: missing is an error; otherwise empty).
    fn strings(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        required: bool,
        example: &str,
    ) -> Option<Vec<Sp<String>>> {
        let Some(v) = self.get(key) else {
            if required {
                self.missing(sink, key, example);
                return None;
            }
            return Some(Vec::new());
        };
        let Some(arr) = v.get_ref().as_array() else {
            sink.error(
                &v.span(),
                format!(
                    "`{key}` must be a list of strings, found {}",
                    type_name(v.get_ref())
                ),
                format!("write `{key} = {example}`"),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in arr.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), item.span())),
                None => {
                    sink.error(
                        &item.span(),
                        format!(
                            "`{key}` must be a list of strings, found {} in it",
                            type_name(item.get_ref())
                        ),
                        format!("write `{key} = {example}`"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn opt_bool(&self, sink: &mut Sink<'_>, key: &str) -> Option<Sp<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some((*b, v.span())),
            other => {
                sink.error(
                    &v.span(),
                    format!("`{key}` must be true or false, found {}", type_name(other)),
                    format!("write `{key} = true` or `{key} = false`"),
                );
                None
            }
        }
    }
}

fn as_string(sink: &mut Sink<'_>, key: &str, v: &V<'_>, example: &str) -> Option<Sp<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some((s.to_string(), v.span())),
        other => {
            sink.error(
                &v.span(),
                format!("`{key}` must be a string, found {}", type_name(other)),
                format!("write `{key} = {example}`"),
            );
            None
        }
    }
}

/// A host address or CIDR. Host bits set in a CIDR are an error.
pub(crate) fn parse_prefix(s: &str) -> Result<IpNet, (String, String)> {
    if s.contains('/') {
        let net = IpNet::from_str(s).map_err(|_| {
            (
                format!("`{s}` is not a valid CIDR"),
                "write an address and prefix length like \"198.18.0.0/24\" or \"2001:db8::/48\""
                    .to_string(),
            )
        })?;
        if net.trunc() != net {
            return Err((
                format!("CIDR `{s}` has host bits set"),
                format!("did you mean \"{}\"?", net.trunc()),
            ));
        }
        Ok(canonical_net(net))
    } else {
        let a = IpAddr::from_str(s).map_err(|_| {
            (
                format!("`{s}` is not a valid IP address or CIDR"),
                "write an address like \"198.18.0.10\" or \"2001:db8::10\", or a CIDR like \"198.18.0.0/24\"".to_string(),
            )
        })?;
        Ok(IpNet::from(a.to_canonical()))
    }
}

/// IPv4-mapped IPv6 prefixes become IPv4 prefixes (the data plane stores IPv4 mapped).
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && n.prefix_len() >= 96
        && let Ok(n4) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(n4);
    }
    net
}

/// A principal's address: one host, never IPv4-mapped (such an address is no identity on
/// the wire, RFC 4291 §2.5.5.2; the data plane drops packets carrying one).
fn parse_host(s: &str) -> Result<IpAddr, (String, String)> {
    let bare = s.split_once('/').map_or(s, |(a, _)| a);
    if let Ok(v6) = Ipv6Addr::from_str(bare)
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err((
            format!("`{s}` is an IPv4-mapped IPv6 address"),
            format!("a principal's IPv4 address is written as IPv4: \"{v4}\""),
        ));
    }
    match parse_prefix(s) {
        Ok(n) if n.prefix_len() == n.max_prefix_len() => Ok(n.addr()),
        Ok(_) => Err((
            format!("`{s}` is a network, not a host address"),
            "a principal's addresses are hosts, like \"198.18.0.10\" or \"2001:db8::10\""
                .to_string(),
        )),
        Err(e) => Err((
            format!("`{s}` is not a valid IP address"),
            if s.contains('/') {
                e.1
            } else {
                "write an address like \"198.18.0.10\" or \"2001:db8::10\"".to_string()
            },
        )),
    }
}

const PORTS_HELP: &str =
    "ports are 1-65535; write \"all\", \"none\" or a list like [\"22\", \"8000-8100\"]";

fn port_number(sink: &mut Sink<'_>, span: &Span, n: i128) -> Option<u16> {
    if n == 0 {
        sink.error(span, "port 0 is not a valid port", PORTS_HELP);
        None
    } else if !(1..=65535).contains(&n) {
        sink.error(span, format!("port {n} is out of range"), PORTS_HELP);
        None
    } else {
        Some(n as u16)
    }
}

fn port_item_str(sink: &mut Sink<'_>, span: &Span, s: &str) -> Option<(u16, u16)> {
    let num = |x: &str| -> Option<i128> {
        let x = x.trim();
        (!x.is_empty() && x.len() <= 12 && x.bytes().all(|c| c.is_ascii_digit()))
            .then(|| x.parse().ok())
            .flatten()
    };
    if let Some((a, b)) = s.split_once('-') {
        let (Some(a), Some(b)) = (num(a), num(b)) else {
            sink.error(
                span,
                format!("`{s}` is not a port or port range"),
                PORTS_HELP,
            );
            return None;
        };
        let (a, b) = (port_number(sink, span, a)?, port_number(sink, span, b)?);
        if a > b {
            sink.error(
                span,
                format!("port range {a}-{b} is reversed"),
                format!("write \"{b}-{a}\""),
            );
            return None;
        }
        Some((a, b))
    } else {
        let Some(n) = num(s) else {
            sink.error(
                span,
                format!("`{s}` is not a port or port range"),
                PORTS_HELP,
            );
            return None;
        };
        let p = port_number(sink, span, n)?;
        Some((p, p))
    }
}

fn port_item(sink: &mut Sink<'_>, key: &str, v: &V<'_>) -> Option<(u16, u16)> {
    match v.get_ref() {
        DeValue::Integer(i) => {
            let n = i128::from_str_radix(i.as_str(), i.radix()).unwrap_or(i128::MAX);
            let p = port_number(sink, &v.span(), n)?;
            Some((p, p))
        }
        DeValue::String(s) => port_item_str(sink, &v.span(), s),
        other => {
            sink.error(
                &v.span(),
                format!(
                    "`{key}` ports must be numbers or strings, found {}",
                    type_name(other)
                ),
                PORTS_HELP,
            );
            None
        }
    }
}

/// `"all"`, `"none"`, a single port string, or a list of ports and ranges.
fn port_set(sink: &mut Sink<'_>, key: &str, v: &V<'_>) -> Option<PortSet> {
    match v.get_ref() {
        DeValue::String(s) if s == "all" => Some(PortSet::all()),
        DeValue::String(s) if s == "none" => Some(PortSet::none()),
        DeValue::String(_) | DeValue::Integer(_) => {
            port_item(sink, key, v).map(|r| PortSet::from_ranges([r]))
        }
        DeValue::Array(arr) => {
            let mut ok = true;
            let mut ranges = Vec::new();
            for item in arr.iter() {
                match port_item(sink, key, item) {
                    Some(r) => ranges.push(r),
                    None => ok = false,
                }
            }
            ok.then(|| PortSet::from_ranges(ranges))
        }
        other => {
            sink.error(
                &v.span(),
                format!(
                    "`{key}` must be \"all\", \"none\" or a list of ports, found {}",
                    type_name(other)
                ),
                PORTS_HELP,
            );
            None
        }
    }
}

/// Optional tcp/udp/icmp of a table: (tcp, udp, icmp, any given, all valid).
fn proto_keys(
    sink: &mut Sink<'_>,
    t: &Tbl<'_, '_>,
) -> (Option<PortSet>, Option<PortSet>, Option<bool>, bool) {
    let mut ok = true;
    let mut ports = |key: &str| -> Option<PortSet> {
        let v = t.get(key)?;
        let r = port_set(sink, key, v);
        ok &= r.is_some();
        r
    };
    let tcp = ports("tcp");
    let udp = ports("udp");
    let icmp = if t.get("icmp").is_some() {
        let b = t.opt_bool(sink, "icmp");
        ok &= b.is_some();
        b.map(|b| b.0)
    } else {
        None
    };
    (tcp, udp, icmp, ok)
}

fn timestamp(sink: &mut Sink<'_>, key: &str, v: &V<'_>) -> Option<i64> {
    let text = match v.get_ref() {
        DeValue::Datetime(d) => d.to_string(),
        DeValue::String(s) => s.to_string(),
        other => {
            sink.error(
                &v.span(),
                format!(
                    "`{key}` must be an RFC 3339 timestamp, found {}",
                    type_name(other)
                ),
                format!("write `{key} = 2030-06-30T18:00:00Z`"),
            );
            return None;
        }
    };
    match parse_rfc3339(&text) {
        Ok(t) => Some(t),
        Err(why) => {
            sink.error(
                &v.span(),
                format!("`{key}` is not a valid RFC 3339 timestamp: {why}"),
                format!("write a UTC time like `{key} = 2030-06-30T18:00:00Z` or with an offset like 2030-06-30T20:00:00+02:00"),
            );
            None
        }
    }
}

impl P<'_> {
    fn document(&mut self, doc: &DeTable<'_>) {
        let mut sections: HashMap<&str, Vec<Tbl<'_, '_>>> = HashMap::new();
        for (k, v) in doc.iter() {
            let key = k.get_ref().as_ref();
            let Some(section) = SECTIONS.iter().find(|s| **s == key) else {
                self.sink.error(
                    &k.span(),
                    format!("unknown section `{key}`"),
                    format!(
                        "valid sections are: {}",
                        SECTIONS
                            .iter()
                            .map(|s| format!("[[{s}]]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            let list = sections.entry(section).or_default();
            match v.get_ref() {
                DeValue::Array(arr) => {
                    for item in arr.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => list.push(Tbl {
                                t,
                                header: item.span(),
                                section,
                            }),
                            other => self.sink.error(
                                &item.span(),
                                format!(
                                    "`{section}` entries must be tables, found {}",
                                    type_name(other)
                                ),
                                format!("write each entry as a [[{section}]] block"),
                            ),
                        }
                    }
                }
                _ => self.sink.error(
                    &k.span(),
                    format!("`{section}` must be an array of tables"),
                    format!("write [[{section}]] (double brackets), once per entry"),
                ),
            }
        }
        let mut take = |s: &str| sections.remove(s).unwrap_or_default();
        let (nets, ress, users, devs, sas, groups) = (
            take("remote_network"),
            take("resource"),
            take("user"),
            take("device"),
            take("service_account"),
            take("group"),
        );
        let mut grants: Vec<(Action, Tbl<'_, '_>)> = take("allow")
            .into_iter()
            .map(|t| (Action::Allow, t))
            .collect();
        grants.extend(take("deny").into_iter().map(|t| (Action::Deny, t)));
        grants.sort_by_key(|(_, t)| t.header.start);
        let tests = take("test");
        for t in &nets {
            self.network(t);
        }
        for t in &ress {
            self.resource(t);
        }
        for t in &users {
            self.user(t);
        }
        for t in &devs {
            self.device(t);
        }
        for t in &sas {
            self.service_account(t);
        }
        for t in &groups {
            self.group(t);
        }
        let mut grant_names = HashMap::new();
        for (action, t) in &grants {
            self.grant(*action, t, &mut grant_names);
        }
        // Rule ids: (grant, resource) pairs in file order, then audit defaults.
        let mut id = 0u32;
        for g in &mut self.policy.grants {
            g.rules.clear();
            for &r in &g.resources {
                id += 1;
                g.rules.push(id);
                self.policy.rules.push(RuleMeta {
                    id,
                    kind: RuleKind::Grant {
                        action: g.action,
                        grant: g.name.clone(),
                        resource: self.policy.resources[r].name.clone(),
                    },
                });
            }
        }
        for r in &mut self.policy.resources {
            if r.mode == Mode::Audit {
                id += 1;
                r.audit_rule = Some(id);
                self.policy.rules.push(RuleMeta {
                    id,
                    kind: RuleKind::AuditDefault {
                        resource: r.name.clone(),
                    },
                });
            }
        }
        for (i, t) in tests.iter().enumerate() {
            self.test(i, t);
        }
    }

    /// Registers a name; duplicate names are an error. Returns false on duplicates.
    fn unique(
        &mut self,
        kind: &str,
        map_sel: fn(&mut Self) -> &mut HashMap<String, (usize, Span)>,
        name: &Sp<String>,
        index: usize,
    ) -> bool {
        if name.0.trim().is_empty() {
            self.sink.error(
                &name.1,
                format!("{kind} name must not be empty"),
                "give it a unique, non-empty name",
            );
            return false;
        }
        if let Some((_, first)) = map_sel(self).get(&name.0).cloned() {
            let (line, col) = self.sink.position(first.start);
            self.sink.error(
                &name.1,
                format!("duplicate {kind} `{}`", name.0),
                format!(
                    "first defined at line {line}, column {col}; names must be unique among {kind}s"
                ),
            );
            return false;
        }
        map_sel(self).insert(name.0.clone(), (index, name.1.clone()));
        true
    }

    fn network(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "cidrs", "connectors"]);
        let name = t.string(&mut self.sink, "name", "\"datacenter\"");
        let cidrs = t.strings(&mut self.sink, "cidrs", true, "[\"198.18.0.0/16\"]");
        let connectors = t.strings(&mut self.sink, "connectors", false, "[\"connector-1\"]");
        let mut nets = Vec::new();
        if let Some(cidrs) = &cidrs {
            if cidrs.is_empty()
                && let Some(v) = t.get("cidrs")
            {
                self.sink.error(
                    &v.span(),
                    "a remote network needs at least one CIDR",
                    "write `cidrs = [\"198.18.0.0/16\"]`",
                );
            }
            for (s, span) in cidrs {
                match parse_prefix(s) {
                    Ok(n) => nets.push(n),
                    Err((m, h)) => self.sink.error(span, m, h),
                }
            }
        }
        let Some(name) = name else { return };
        let idx = self.policy.networks.len();
        if self.unique("remote network", |p| &mut p.networks, &name, idx) {
            self.policy.networks.push(RemoteNetwork {
                name: name.0,
                cidrs: nets,
                connectors: connectors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.0)
                    .collect(),
            });
        }
    }

    fn resource(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(
            &mut self.sink,
            &["name", "network", "address", "tcp", "udp", "icmp", "mode"],
        );
        let name = t.string(&mut self.sink, "name", "\"bastion\"");
        let network = t.string(&mut self.sink, "network", "\"datacenter\"");
        let address = t.string(&mut self.sink, "address", "\"198.18.0.10\"");
        let (tcp, udp, icmp, ports_ok) = proto_keys(&mut self.sink, t);
        let mode = match t.opt_string(&mut self.sink, "mode", "\"audit\"") {
            None => Some(Mode::Enforce),
            Some((m, span)) => match m.as_str() {
                "enforce" => Some(Mode::Enforce),
                "audit" => Some(Mode::Audit),
                _ => {
                    self.sink.error(
                        &span,
                        format!("unknown mode `{m}`"),
                        "mode is \"enforce\" (the default) or \"audit\"",
                    );
                    None
                }
            },
        };
        let net = network
            .as_ref()
            .and_then(|(n, span)| match self.networks.get(n) {
                Some((i, _)) => Some(*i),
                None => {
                    let known = self.known(&self.networks);
                    self.sink.error(
                        span,
                        format!("unknown remote network `{n}`"),
                        format!("defined remote networks: {known}"),
                    );
                    None
                }
            });
        let addr = address
            .as_ref()
            .and_then(|(s, span)| match parse_prefix(s) {
                Ok(a) => Some(a),
                Err((m, h)) => {
                    self.sink.error(span, m, h);
                    None
                }
            });
        if let (Some(net), Some(addr), Some((s, span))) = (net, addr, &address) {
            let n = &self.policy.networks[net];
            if !n.cidrs.is_empty() && !n.cidrs.iter().any(|c| c.contains(&addr)) {
                let cidrs: Vec<String> = n.cidrs.iter().map(|c| c.to_string()).collect();
                self.sink.error(
                    span,
                    format!("address `{s}` is outside remote network `{}`", n.name),
                    format!(
                        "use an address inside {}, or add a CIDR covering it to the network",
                        cidrs.join(", ")
                    ),
                );
            }
        }
        let ports = ProtoSet {
            tcp: tcp.unwrap_or_default(),
            udp: udp.unwrap_or_default(),
            icmp: icmp.unwrap_or(false),
        };
        let Some(name) = name else { return };
        if ports_ok && ports.is_empty() {
            self.sink.error(
                &name.1,
                format!(
                    "resource `{}` allows no traffic: tcp, udp and icmp are all empty",
                    name.0
                ),
                "add `tcp = [\"22\"]`, `udp = [\"53\"]`, `tcp = \"all\"` or `icmp = true`",
            );
        }
        let idx = self.policy.resources.len();
        if self.unique("resource", |p| &mut p.resources, &name, idx) {
            self.policy.resources.push(Resource {
                name: name.0,
                network: net.unwrap_or(0),
                address: addr.unwrap_or_default(),
                ports,
                mode: mode.unwrap_or(Mode::Enforce),
                audit_rule: None,
            });
        }
    }

    fn known(&self, map: &HashMap<String, (usize, Span)>) -> String {
        let mut v: Vec<(&usize, &String)> = map.iter().map(|(k, (i, _))| (i, k)).collect();
        v.sort();
        if v.is_empty() {
            return "none".into();
        }
        let mut s: Vec<String> = v.iter().take(8).map(|(_, k)| format!("`{k}`")).collect();
        if v.len() > 8 {
            s.push("...".into());
        }
        s.join(", ")
    }

    fn user(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["email"]);
        let Some(email) = t.string(&mut self.sink, "email", "\"alice@example.com\"") else {
            return;
        };
        let valid = email.0.split_once('@').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && !b.contains('@')
                && !email.0.contains(char::is_whitespace)
        });
        if !valid {
            self.sink.error(
                &email.1,
                format!("`{}` is not an email address", email.0),
                "write `email = \"alice@example.com\"`",
            );
            return;
        }
        let idx = self.policy.users.len();
        if self.unique("user", |p| &mut p.users, &email, idx) {
            self.policy.users.push(User { email: email.0 });
        }
    }

    /// The address strings of a device or service-account key: `address = "..."` or
    /// `addresses = ["...", "..."]` (one of them, the list not empty).
    fn addr_strings(&mut self, t: &Tbl<'_, '_>) -> Option<Vec<Sp<String>>> {
        const BOTH: &str = "[\"198.19.0.10\", \"2001:db8:ff::10\"]";
        match (t.get("address"), t.get("addresses")) {
            (Some(_), Some(v)) => {
                self.sink.error(
                    &v.span(),
                    format!("[[{}]] has both `address` and `addresses`", t.section),
                    format!("keep one: `address = \"198.19.0.10\"`, or `addresses = {BOTH}` for an IPv4 and an IPv6 address"),
                );
                None
            }
            (None, None) => {
                self.sink.error(
                    &t.header,
                    format!("missing key `address` in [[{}]]", t.section),
                    format!("add `address = \"198.19.0.10\"`, or `addresses = {BOTH}` for an IPv4 and an IPv6 address"),
                );
                None
            }
            (Some(_), None) => Some(vec![t.string(
                &mut self.sink,
                "address",
                "\"198.19.0.10\"",
            )?]),
            (None, Some(v)) => {
                let list = t.strings(&mut self.sink, "addresses", true, BOTH)?;
                if list.is_empty() {
                    self.sink.error(
                        &v.span(),
                        "`addresses` is empty",
                        format!("list one or two addresses, at most one per family: `addresses = {BOTH}`"),
                    );
                    return None;
                }
                Some(list)
            }
        }
    }

    /// Parses the addresses of `what` (a device or service-account key): hosts, at most one
    /// per family, none used by another principal. Sorted IPv4 first.
    fn principal_addrs(&mut self, what: &str, items: &[Sp<String>]) -> Option<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        let mut ok = true;
        for (s, span) in items {
            let a = match parse_host(s) {
                Ok(a) => a,
                Err((m, h)) => {
                    self.sink.error(span, m, h);
                    ok = false;
                    continue;
                }
            };
            if let Some(prev) = out.iter().find(|p| p.is_ipv6() == a.is_ipv6()) {
                let family = if a.is_ipv6() { "IPv6" } else { "IPv4" };
                self.sink.error(
                    span,
                    format!("{what} has two {family} addresses, {prev} and {a}"),
                    "a device or service-account key has at most one IPv4 and one IPv6 address",
                );
                ok = false;
                continue;
            }
            if let Some(other) = self.addrs.get(&a) {
                self.sink.error(
                    span,
                    format!("address {a} of {what} is already used by {other}"),
                    "each device and service-account key needs its own addresses",
                );
                ok = false;
                continue;
            }
            self.addrs.insert(a, what.to_string());
            out.push(a);
        }
        out.sort_by_key(IpAddr::is_ipv6);
        ok.then_some(out)
    }

    fn device(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "owner", "address", "addresses"]);
        let name = t.string(&mut self.sink, "name", "\"alice-laptop\"");
        let owner = t.string(&mut self.sink, "owner", "\"alice@example.com\"");
        let address = self.addr_strings(t);
        let owner = owner.and_then(|(o, span)| match self.users.get(&o) {
            Some((i, _)) => Some(*i),
            None => {
                self.sink.error(
                    &span,
                    format!("unknown user `{o}`"),
                    "the owner must be the email of a [[user]]",
                );
                None
            }
        });
        let Some(name) = name else { return };
        let addrs = address.and_then(|a| self.principal_addrs(&format!("device `{}`", name.0), &a));
        let idx = self.policy.devices.len();
        if self.unique("device", |p| &mut p.devices, &name, idx)
            && let (Some(owner), Some(addresses)) = (owner, addrs)
        {
            let id = self.policy.principals.len() as u32 + 1;
            self.policy.devices.push(Device {
                name: name.0,
                owner,
                addresses: addresses.clone(),
                principal: id,
            });
            self.policy.principals.push(Principal {
                id,
                kind: PrincipalKind::Device {
                    device: idx,
                    user: owner,
                },
                addresses,
                expires_at: None,
            });
        } else if let Some(e) = self.devices.get_mut(&name.0)
            && e.0 == idx
        {
            // Registered but not pushed: later references must not land on another device.
            e.0 = usize::MAX;
        }
    }

    fn service_account(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "keys"]);
        let name = t.string(&mut self.sink, "name", "\"ci\"");
        let mut keys: Vec<ServiceAccountKey> = Vec::new();
        let mut key_names: HashMap<String, Span> = HashMap::new();
        let sa_name = name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        match t.get("keys") {
            None => {}
            Some(v) => {
                match v.get_ref() {
                    DeValue::Array(arr) => {
                        for item in arr.iter() {
                            let DeValue::Table(kt) = item.get_ref() else {
                                self.sink.error(
                                &item.span(),
                                format!("service-account keys must be tables, found {}", type_name(item.get_ref())),
                                "write `keys = [{ name = \"key-1\", address = \"198.19.1.1\" }]`",
                            );
                                continue;
                            };
                            let kt = Tbl {
                                t: kt,
                                header: item.span(),
                                section: "service_account.keys",
                            };
                            kt.check_keys(
                                &mut self.sink,
                                &["name", "address", "addresses", "expires_at"],
                            );
                            let kexp = kt
                                .get("expires_at")
                                .and_then(|v| timestamp(&mut self.sink, "expires_at", v));
                            let kname = kt.string(&mut self.sink, "name", "\"key-1\"");
                            let kaddr = self.addr_strings(&kt);
                            let Some(kname) = kname else { continue };
                            if let Some(first) = key_names.get(&kname.0) {
                                let (line, col) = self.sink.position(first.start);
                                self.sink.error(
                                    &kname.1,
                                    format!(
                                        "duplicate key `{}` in service account `{sa_name}`",
                                        kname.0
                                    ),
                                    format!("first defined at line {line}, column {col}"),
                                );
                                continue;
                            }
                            key_names.insert(kname.0.clone(), kname.1.clone());
                            let Some(addresses) = kaddr.and_then(|a| {
                                self.principal_addrs(
                                    &format!("service-account key `{sa_name}/{}`", kname.0),
                                    &a,
                                )
                            }) else {
                                continue;
                            };
                            keys.push(ServiceAccountKey {
                                name: kname.0,
                                addresses,
                                principal: 0,
                                expires_at: kexp,
                            });
                        }
                    }
                    other => self.sink.error(
                        &v.span(),
                        format!(
                            "`keys` must be a list of tables, found {}",
                            type_name(other)
                        ),
                        "write `keys = [{ name = \"key-1\", address = \"198.19.1.1\" }]`",
                    ),
                }
            }
        }
        let Some(name) = name else { return };
        let idx = self.policy.service_accounts.len();
        if self.unique("service account", |p| &mut p.sas, &name, idx) {
            for (ki, k) in keys.iter_mut().enumerate() {
                let id = self.policy.principals.len() as u32 + 1;
                k.principal = id;
                self.policy.principals.push(Principal {
                    id,
                    kind: PrincipalKind::ServiceAccountKey {
                        service_account: idx,
                        key: ki,
                    },
                    addresses: k.addresses.clone(),
                    expires_at: k.expires_at,
                });
            }
            self.policy
                .service_accounts
                .push(ServiceAccount { name: name.0, keys });
        }
    }

    fn group(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "members"]);
        let name = t.string(&mut self.sink, "name", "\"engineering\"");
        let members = t.strings(
            &mut self.sink,
            "members",
            false,
            "[\"alice@example.com\", \"ci\"]",
        );
        let mut g = Group {
            name: String::new(),
            users: Vec::new(),
            service_accounts: Vec::new(),
        };
        for (m, span) in members.unwrap_or_default() {
            let (kind, bare) = split_kind(&m);
            let user = matches!(kind, None | Some("user"))
                .then(|| self.users.get(bare))
                .flatten();
            let sa = matches!(kind, None | Some("service_account"))
                .then(|| self.sas.get(bare))
                .flatten();
            match (user, sa) {
                (Some((u, _)), _) => g.users.push(*u),
                (None, Some((s, _))) => g.service_accounts.push(*s),
                (None, None) => {
                    let help = if self.groups.contains_key(bare) {
                        "groups contain users and service accounts, not other groups".to_string()
                    } else {
                        "members are user emails or service-account names (optionally prefixed `user:` or `service_account:`)".to_string()
                    };
                    self.sink
                        .error(&span, format!("unknown group member `{m}`"), help);
                }
            }
        }
        let Some(name) = name else { return };
        let idx = self.policy.groups.len();
        if self.unique("group", |p| &mut p.groups, &name, idx) {
            g.name = name.0;
            g.users.sort_unstable();
            g.users.dedup();
            g.service_accounts.sort_unstable();
            g.service_accounts.dedup();
            self.policy.groups.push(g);
        }
    }

    fn grant(&mut self, action: Action, t: &Tbl<'_, '_>, names: &mut HashMap<String, Span>) {
        t.check_keys(
            &mut self.sink,
            &[
                "name",
                "principals",
                "resources",
                "tcp",
                "udp",
                "icmp",
                "expires_at",
            ],
        );
        let section = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        let name = t.string(&mut self.sink, "name", "\"engineering-ssh\"");
        let principals = t.strings(&mut self.sink, "principals", true, "[\"engineering\"]");
        let resources = t.strings(&mut self.sink, "resources", true, "[\"bastion\"]");
        let (tcp, udp, icmp, ports_ok) = proto_keys(&mut self.sink, t);
        let narrowing = (tcp.is_some() || udp.is_some() || icmp.is_some()).then(|| ProtoSet {
            tcp: tcp.unwrap_or_default(),
            udp: udp.unwrap_or_default(),
            icmp: icmp.unwrap_or(false),
        });
        let expires_at = t
            .get("expires_at")
            .and_then(|v| timestamp(&mut self.sink, "expires_at", v).map(|e| (e, v.span())));
        let gname = name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let mut prefs = Vec::new();
        if let Some(list) = &principals {
            if list.is_empty()
                && let Some(v) = t.get("principals")
            {
                self.sink.error(
                    &v.span(),
                    format!("[[{section}]] `{gname}` names no principals"),
                    "list groups, user emails or service accounts",
                );
            }
            for (s, span) in list {
                if let Some(r) = self.principal_ref(s, span) {
                    prefs.push(r);
                }
            }
        }
        let mut res = Vec::new();
        let mut effective = Vec::new();
        if let Some(list) = &resources {
            if list.is_empty()
                && let Some(v) = t.get("resources")
            {
                self.sink.error(
                    &v.span(),
                    format!("[[{section}]] `{gname}` names no resources"),
                    "list resource names",
                );
            }
            for (s, span) in list {
                let Some(&(r, _)) = self.resources.get(s) else {
                    let known = self.known(&self.resources);
                    self.sink.error(
                        span,
                        format!("unknown resource `{s}`"),
                        format!("defined resources: {known}"),
                    );
                    continue;
                };
                if res.contains(&r) {
                    self.sink.error(
                        span,
                        format!("resource `{s}` is listed twice"),
                        "list each resource once",
                    );
                    continue;
                }
                let rp = &self.policy.resources[r].ports;
                let eff = match &narrowing {
                    Some(n) => rp.intersect(n),
                    None => rp.clone(),
                };
                if ports_ok && narrowing.is_some() && !rp.is_empty() && eff.is_empty() {
                    let n = narrowing
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    self.sink.error(
                        span,
                        format!("narrowing of `{gname}` leaves nothing of resource `{s}`"),
                        format!("`{s}` allows {rp}, the grant narrows to {n}: narrow to a subset of the resource's ports"),
                    );
                }
                res.push(r);
                effective.push(eff);
            }
        }
        if let (Some((e, span)), true) = (&expires_at, ports_ok)
            && *e <= self.now
        {
            self.sink.warning(
                span,
                format!(
                    "[[{section}]] `{gname}` expired at {} and has no effect",
                    format_rfc3339(*e)
                ),
                "remove the block or move expires_at into the future",
            );
        }
        let Some(name) = name else { return };
        if let Some(first) = names.get(&name.0) {
            let (line, col) = self.sink.position(first.start);
            self.sink.error(
                &name.1,
                format!("duplicate grant `{}`", name.0),
                format!("first defined at line {line}, column {col}; [[allow]] and [[deny]] names must be unique"),
            );
            return;
        }
        names.insert(name.0.clone(), name.1.clone());
        self.grant_name_spans.push(name.1.clone());
        let line = self.sink.position(t.header.start).0;
        self.policy.grants.push(Grant {
            name: name.0,
            action,
            principals: prefs,
            resources: res,
            narrowing,
            expires_at: expires_at.map(|e| e.0),
            rules: Vec::new(),
            effective,
            line,
        });
    }

    fn principal_ref(&mut self, s: &str, span: &Span) -> Option<PrincipalRef> {
        let (kind, bare) = split_kind(s);
        let mut found = Vec::new();
        if matches!(kind, None | Some("group"))
            && let Some((i, _)) = self.groups.get(bare)
        {
            found.push(("group", PrincipalRef::Group(*i)));
        }
        if matches!(kind, None | Some("user"))
            && let Some((i, _)) = self.users.get(bare)
        {
            found.push(("user", PrincipalRef::User(*i)));
        }
        if matches!(kind, None | Some("service_account"))
            && let Some((i, _)) = self.sas.get(bare)
        {
            found.push(("service_account", PrincipalRef::ServiceAccount(*i)));
        }
        match found.as_slice() {
            [(_, r)] => Some(*r),
            [] => {
                let help = if self.devices.contains_key(bare) {
                    format!(
                        "`{bare}` is a device; grants name its owner, a group, or a service account"
                    )
                } else {
                    "principals are group names, user emails or service-account names (optionally prefixed `group:`, `user:`, `service_account:`)".to_string()
                };
                self.sink
                    .error(span, format!("unknown principal `{s}`"), help);
                None
            }
            many => {
                let kinds: Vec<String> = many
                    .iter()
                    .map(|(k, _)| format!("\"{k}:{bare}\""))
                    .collect();
                self.sink.error(
                    span,
                    format!("ambiguous principal `{s}`"),
                    format!("write {}", kinds.join(" or ")),
                );
                None
            }
        }
    }

    fn test(&mut self, i: usize, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "from", "to", "expect", "at"]);
        let name = t
            .opt_string(&mut self.sink, "name", "\"alice can ssh\"")
            .map(|n| n.0)
            .unwrap_or_else(|| format!("test #{}", i + 1));
        let from = t.string(&mut self.sink, "from", "\"alice-laptop\"");
        let to = t.string(&mut self.sink, "to", "\"198.18.1.10:22/tcp\"");
        let expect = t
            .string(&mut self.sink, "expect", "\"allow\"")
            .and_then(|(e, span)| match e.as_str() {
                "allow" => Some(Verdict::Allow),
                "deny" => Some(Verdict::Deny),
                "audit" => Some(Verdict::Audit),
                _ => {
                    self.sink.error(
                        &span,
                        format!("unknown expectation `{e}`"),
                        "expect is \"allow\", \"deny\" or \"audit\"",
                    );
                    None
                }
            });
        let at = t.get("at").and_then(|v| timestamp(&mut self.sink, "at", v));
        let src = from.as_ref().and_then(|(f, span)| {
            let r = self.resolve_from(f);
            if r.is_none() {
                self.sink.error(span, format!("unknown test source `{f}`"), "write a device name, a service-account key as \"sa-name/key-name\", or an IP address");
            }
            r
        });
        let dst = to.as_ref().and_then(|(s, span)| match self.resolve_to(s) {
            Ok(d) => Some(d),
            Err(m) => {
                self.sink.error(span, m, "write \"addr:port/tcp\", \"addr:port/udp\", \"[v6addr]:port/tcp\", \"addr/icmp\" or a resource name");
                None
            }
        });
        // A principal sends from its address of the destination's family.
        let src = match (src, &dst, &from, &to) {
            (Some(TestFrom::Addr(a)), _, _, _) => Some(a),
            (Some(TestFrom::Principal(addrs)), Some((d, _, _)), Some((f, span)), Some((to, _))) => {
                let a = address_like(&addrs, *d);
                if a.is_none() {
                    let family = if d.is_ipv6() { "IPv6" } else { "IPv4" };
                    self.sink.error(
                        span,
                        format!("`{f}` has no {family} address to reach `{to}` from"),
                        format!("give `{f}` one (`addresses = [\"198.19.0.10\", \"2001:db8:ff::10\"]`), or test a destination of a family it has"),
                    );
                }
                a
            }
            _ => None,
        };
        let (line, column) = self.sink.position(t.header.start);
        if let (Some(from), Some(to), Some(src), Some((dst, proto, port)), Some(expect)) =
            (from, to, src, dst, expect)
        {
            self.policy.tests.push(PolicyTest {
                name,
                line,
                column,
                from: from.0,
                to: to.0,
                src,
                dst,
                proto,
                dst_port: port,
                expect,
                at,
            });
        }
    }

    fn resolve_from(&self, f: &str) -> Option<TestFrom> {
        if let Some((i, _)) = self.devices.get(f) {
            return self
                .policy
                .devices
                .get(*i)
                .map(|d| TestFrom::Principal(d.addresses.clone()));
        }
        if let Some((sa, key)) = f.split_once('/')
            && let Some((i, _)) = self.sas.get(sa)
        {
            return self
                .policy
                .service_accounts
                .get(*i)?
                .keys
                .iter()
                .find(|k| k.name == key)
                .map(|k| TestFrom::Principal(k.addresses.clone()));
        }
        IpAddr::from_str(f)
            .ok()
            .map(|a| TestFrom::Addr(a.to_canonical()))
    }

    fn resolve_to(&self, s: &str) -> Result<(IpAddr, u8, u16), String> {
        if let Some((i, _)) = self.resources.get(s) {
            let r = &self.policy.resources[*i];
            let a = r.address.network();
            return Ok(if let Some(p) = r.ports.tcp.first() {
                (a, proto::TCP, p)
            } else if let Some(p) = r.ports.udp.first() {
                (a, proto::UDP, p)
            } else if a.is_ipv6() {
                (a, proto::ICMPV6, 0)
            } else {
                (a, proto::ICMP, 0)
            });
        }
        let bad = || format!("`{s}` is not a destination");
        let (addr_port, pr) = s.rsplit_once('/').ok_or_else(bad)?;
        let addr_of = |x: &str| -> Result<IpAddr, String> {
            let x = x
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(x);
            IpAddr::from_str(x)
                .map(|a| a.to_canonical())
                .map_err(|_| format!("`{x}` is not an IP address"))
        };
        match pr {
            "icmp" | "icmpv6" => {
                let a = addr_of(addr_port)?;
                Ok((
                    a,
                    if a.is_ipv6() {
                        proto::ICMPV6
                    } else {
                        proto::ICMP
                    },
                    0,
                ))
            }
            "tcp" | "udp" => {
                let (a, p) = addr_port.rsplit_once(':').ok_or_else(bad)?;
                if a.contains(':') && !a.starts_with('[') {
                    return Err(format!("IPv6 address in `{s}` must be in brackets"));
                }
                let a = addr_of(a)?;
                let port: u16 = p.parse().map_err(|_| format!("`{p}` is not a port"))?;
                Ok((a, if pr == "tcp" { proto::TCP } else { proto::UDP }, port))
            }
            _ => Err(format!("unknown protocol `{pr}` in `{s}`")),
        }
    }
}

/// The `from` of a `[[test]]`: a principal's addresses, or an address as written.
enum TestFrom {
    Principal(Vec<IpAddr>),
    Addr(IpAddr),
}

fn split_kind(s: &str) -> (Option<&'static str>, &str) {
    for (prefix, kind) in [
        ("group:", "group"),
        ("user:", "user"),
        ("service_account:", "service_account"),
        ("sa:", "service_account"),
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return (Some(kind), rest);
        }
    }
    (None, s)
}

/// Warns about allow grants every pair of which a deny grant makes pointless.
fn shadow_warnings(policy: &Policy, sink: &mut Sink<'_>, name_spans: &[Span]) {
    let now = policy.parsed_at;
    let denies: Vec<usize> = (0..policy.grants.len())
        .filter(|&i| policy.grants[i].action == Action::Deny && policy.grants[i].is_active(now))
        .collect();
    if denies.is_empty() {
        return;
    }
    let deny_principals: HashMap<usize, Vec<u32>> = denies
        .iter()
        .map(|&d| (d, policy.principals_of_grant(d)))
        .collect();
    for (gi, g) in policy.grants.iter().enumerate() {
        if g.action != Action::Allow || !g.is_active(now) {
            continue;
        }
        let mine = policy.principals_of_grant(gi);
        if mine.is_empty() {
            continue;
        }
        let mut by: Option<usize> = None;
        let all_shadowed = g.resources.iter().zip(&g.effective).all(|(&r, eff)| {
            let addr = policy.resources[r].address;
            denies.iter().any(|&d| {
                let dg = &policy.grants[d];
                let lasts = match (dg.expires_at, g.expires_at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => a >= b,
                };
                let covers = dg.resources.iter().zip(&dg.effective).any(|(&r2, e2)| {
                    let res2 = &policy.resources[r2];
                    res2.mode == Mode::Enforce
                        && res2.address.contains(&addr)
                        && e2.is_superset(eff)
                });
                let ok = lasts && covers && is_subset(&mine, &deny_principals[&d]);
                if ok && by.is_none() {
                    by = Some(d);
                }
                ok
            })
        });
        if all_shadowed && let Some(d) = by {
            sink.warning(
                &name_spans[gi],
                format!(
                    "allow `{}` is fully shadowed by deny `{}` and never allows anything",
                    g.name, policy.grants[d].name
                ),
                "deny wins over allow: remove the allow, or narrow the deny",
            );
        }
    }
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}
