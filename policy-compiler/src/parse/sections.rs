//! Section validation: each section's keys and values, unique names, and the rule ids;
//! names of other sections are resolved as the sections are read, in dependency order
//! (grants and `[[test]]` blocks last, in `references.rs`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::access::{Tbl, type_name};
use super::doc::{Table, Val};
use super::values::{parse_host, parse_prefix, proto_keys, split_kind, timestamp};
use super::{HashMap, Sp, Span};
use crate::diag::Sink;
use crate::model::*;

const SECTIONS: &[&str] = &[
    "remote_network",
    "resource",
    "user",
    "device",
    "service_account",
    "group",
    "connector",
    "allow",
    "deny",
    "test",
];

/// The parser's state: the policy built so far, and per section the names registered
/// (name -> index in the policy, span of the definition).
pub(super) struct P<'a> {
    pub(super) sink: Sink<'a>,
    pub(super) now: i64,
    pub(super) policy: Policy,
    pub(super) networks: HashMap<String, (usize, Span)>,
    pub(super) resources: HashMap<String, (usize, Span)>,
    pub(super) users: HashMap<String, (usize, Span)>,
    pub(super) devices: HashMap<String, (usize, Span)>,
    pub(super) sas: HashMap<String, (usize, Span)>,
    pub(super) groups: HashMap<String, (usize, Span)>,
    /// Principal addresses -> what uses them.
    pub(super) addrs: HashMap<IpAddr, String>,
    /// Name span of each grant, parallel to `policy.grants` (file order).
    pub(super) grant_name_spans: Vec<Span>,
    /// WireGuard keys -> what uses them (and where).
    pub(super) keys: HashMap<WgKey, (String, Span)>,
    /// `[[connector]]` names -> where they were declared.
    pub(super) connector_spans: HashMap<String, Span>,
    /// Resources that are DNS names, with their `address` span (for the tunnel lint).
    pub(super) dns_name_spans: Vec<(String, Span)>,
}

impl<'a> P<'a> {
    pub(super) fn new(sink: Sink<'a>, file: &str, now: i64) -> Self {
        P {
            sink,
            now,
            policy: Policy {
                file: file.to_string(),
                parsed_at: now,
                ..Default::default()
            },
            networks: HashMap::default(),
            resources: HashMap::default(),
            users: HashMap::default(),
            devices: HashMap::default(),
            sas: HashMap::default(),
            groups: HashMap::default(),
            addrs: HashMap::default(),
            grant_name_spans: Vec::new(),
            keys: HashMap::default(),
            connector_spans: HashMap::default(),
            dns_name_spans: Vec::new(),
        }
    }
}

impl P<'_> {
    pub(super) fn document(&mut self, doc: &Table<'_>) {
        let mut sections: HashMap<&str, Vec<Tbl<'_, '_>>> = HashMap::default();
        for (k, v) in doc.iter() {
            let key = k.get_ref();
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
                Val::Array(arr) => {
                    for item in arr.iter() {
                        match item.get_ref() {
                            Val::Table(t) => list.push(Tbl {
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
        let (nets, ress, users, devs, sas, groups, conns) = (
            take("remote_network"),
            take("resource"),
            take("user"),
            take("device"),
            take("service_account"),
            take("group"),
            take("connector"),
        );
        let mut grants: Vec<(Action, Tbl<'_, '_>)> = take("allow")
            .into_iter()
            .map(|t| (Action::Allow, t))
            .collect();
        grants.extend(take("deny").into_iter().map(|t| (Action::Deny, t)));
        grants.sort_by_key(|(_, t)| t.header.start);
        let tests = take("test");
        // Pre-sized: one entry per block at most (no rehashing as the tables grow).
        self.networks.reserve(nets.len());
        self.resources.reserve(ress.len());
        self.users.reserve(users.len());
        self.devices.reserve(devs.len());
        self.sas.reserve(sas.len());
        self.groups.reserve(groups.len());
        self.addrs.reserve(devs.len() + sas.len());
        self.connector_spans.reserve(conns.len());
        self.grant_name_spans.reserve(grants.len());
        self.policy.resources.reserve(ress.len());
        self.policy.users.reserve(users.len());
        self.policy.devices.reserve(devs.len());
        self.policy.principals.reserve(devs.len() + sas.len());
        self.policy.groups.reserve(groups.len());
        self.policy.grants.reserve(grants.len());
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
        for t in &conns {
            self.connector(t);
        }
        let mut grant_names = HashMap::default();
        grant_names.reserve(grants.len());
        for (action, t) in &grants {
            self.grant(*action, t, &mut grant_names);
        }
        // Rule ids: (grant, resource) pairs in file order, then audit defaults.
        let pairs: usize = self.policy.grants.iter().map(|g| g.resources.len()).sum();
        self.policy
            .rules
            .reserve(pairs + self.policy.resources.len());
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
        name: &Sp<&str>,
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
        if let Some((_, first)) = map_sel(self).get(name.0).cloned() {
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
        map_sel(self).insert(name.0.to_string(), (index, name.1.clone()));
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
                name: name.0.to_string(),
                cidrs: nets,
                connectors: connectors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.0.to_string())
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
            Some((m, span)) => match m {
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
            .and_then(|(n, span)| match self.networks.get(*n) {
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
            .and_then(|(s, span)| match resource_address(s) {
                Ok(a) => {
                    if let (Address::Name(_), Some((n, _))) = (&a, &name) {
                        self.dns_name_spans.push((n.to_string(), span.clone()));
                    }
                    Some(a)
                }
                Err((m, h)) => {
                    self.sink.error(span, m, h);
                    None
                }
            });
        if let (Some(net), Some(Address::Net(addr)), Some((s, span))) = (net, &addr, &address) {
            let n = &self.policy.networks[net];
            if !n.cidrs.is_empty() && !n.cidrs.iter().any(|c| c.contains(addr)) {
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
                name: name.0.to_string(),
                network: net.unwrap_or(0),
                address: addr.unwrap_or(Address::Net(IpNet::default())),
                ports,
                mode: mode.unwrap_or(Mode::Enforce),
                audit_rule: None,
            });
        }
    }

    pub(super) fn known(&self, map: &HashMap<String, (usize, Span)>) -> String {
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
            self.policy.users.push(User {
                email: email.0.to_string(),
            });
        }
    }

    /// The address strings of a device or service-account key: `address = "..."` or
    /// `addresses = ["...", "..."]` (one of them, the list not empty).
    fn addr_strings<'a>(&mut self, t: &Tbl<'a, '_>) -> Option<Vec<Sp<&'a str>>> {
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
    fn principal_addrs(&mut self, what: &str, items: &[Sp<&str>]) -> Option<Vec<IpAddr>> {
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
        t.check_keys(
            &mut self.sink,
            &["name", "owner", "address", "addresses", "public_key"],
        );
        let name = t.string(&mut self.sink, "name", "\"alice-laptop\"");
        let owner = t.string(&mut self.sink, "owner", "\"alice@example.com\"");
        let address = self.addr_strings(t);
        let owner = owner.and_then(|(o, span)| match self.users.get(o) {
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
        let what = format!("device `{}`", name.0);
        let addrs = address.and_then(|a| self.principal_addrs(&what, &a));
        let public_key = self.opt_public_key(t, &what);
        let idx = self.policy.devices.len();
        if self.unique("device", |p| &mut p.devices, &name, idx)
            && let (Some(owner), Some(addresses)) = (owner, addrs)
        {
            let id = self.policy.principals.len() as u32 + 1;
            self.policy.devices.push(Device {
                name: name.0.to_string(),
                owner,
                addresses: addresses.clone(),
                principal: id,
                public_key,
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
        } else if let Some(e) = self.devices.get_mut(name.0)
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
        let mut key_names: HashMap<&str, Span> = HashMap::default();
        let sa_name = name.as_ref().map(|n| n.0).unwrap_or_default();
        match t.get("keys") {
            None => {}
            Some(v) => {
                match v.get_ref() {
                    Val::Array(arr) => {
                        for item in arr.iter() {
                            let Val::Table(kt) = item.get_ref() else {
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
                                &["name", "address", "addresses", "expires_at", "public_key"],
                            );
                            let kexp = kt
                                .get("expires_at")
                                .and_then(|v| timestamp(&mut self.sink, "expires_at", v));
                            let kname = kt.string(&mut self.sink, "name", "\"key-1\"");
                            let kaddr = self.addr_strings(&kt);
                            let Some(kname) = kname else { continue };
                            if let Some(first) = key_names.get(kname.0) {
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
                            key_names.insert(kname.0, kname.1.clone());
                            let what = format!("service-account key `{sa_name}/{}`", kname.0);
                            let public_key = self.opt_public_key(&kt, &what);
                            let Some(addresses) =
                                kaddr.and_then(|a| self.principal_addrs(&what, &a))
                            else {
                                continue;
                            };
                            keys.push(ServiceAccountKey {
                                name: kname.0.to_string(),
                                addresses,
                                principal: 0,
                                expires_at: kexp,
                                public_key,
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
            self.policy.service_accounts.push(ServiceAccount {
                name: name.0.to_string(),
                keys,
            });
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
            let (kind, bare) = split_kind(m);
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
            g.name = name.0.to_string();
            g.users.sort_unstable();
            g.users.dedup();
            g.service_accounts.sort_unstable();
            g.service_accounts.dedup();
            self.policy.groups.push(g);
        }
    }
}

/// A resource's `address`: an IP address or CIDR, else a DNS name or wildcard
/// ([`crate::names`]). A string that looks like neither gets the error of the form it
/// is closer to (letters or `*`: a name; otherwise an address).
fn resource_address(s: &str) -> Result<Address, (String, String)> {
    let err = match parse_prefix(s) {
        Ok(n) => return Ok(Address::Net(n)),
        Err(e) => e,
    };
    let looks_like_name = !s.contains(['/', ':'])
        && s.chars()
            .any(|c| c.is_ascii_alphabetic() || c == '*' || c == '_');
    if !looks_like_name {
        return Err(err);
    }
    NamePattern::parse(s).map(Address::Name).map_err(|(m, h)| {
        (
            format!("`{s}` is not a DNS name: {m}"),
            format!(
                "{h}; a resource's address is an IP address, a CIDR, a name \
                 (\"db.prod.internal\"), or a wildcard (\"*.corp.example.com\": one label, \
                 \"**.corp.example.com\": any depth)"
            ),
        )
    })
}
