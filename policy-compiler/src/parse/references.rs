//! Name resolution in the sections that refer to the others: grants (`[[allow]]`,
//! `[[deny]]`: principals and resources) and `[[test]]` blocks (a source and a
//! destination, in the grammar of `crate::target`).

use std::net::IpAddr;

use gateway_common::policy::Verdict;

use super::access::Tbl;
use super::sections::P;
use super::values::{proto_keys, split_kind, timestamp};
use super::{HashMap, Span};
use crate::model::*;
use crate::target::{Names, family, source_in, target_in};

impl P<'_> {
    pub(super) fn grant(
        &mut self,
        action: Action,
        t: &Tbl<'_, '_>,
        names: &mut HashMap<String, Span>,
    ) {
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
        let gname = name.as_ref().map(|n| n.0).unwrap_or_default();
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
                let Some(&(r, _)) = self.resources.get(*s) else {
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
        if let Some(first) = names.get(name.0) {
            let (line, col) = self.sink.position(first.start);
            self.sink.error(
                &name.1,
                format!("duplicate grant `{}`", name.0),
                format!("first defined at line {line}, column {col}; [[allow]] and [[deny]] names must be unique"),
            );
            return;
        }
        names.insert(name.0.to_string(), name.1.clone());
        self.grant_name_spans.push(name.1.clone());
        let line = self.sink.position(t.header.start).0;
        self.policy.grants.push(Grant {
            name: name.0.to_string(),
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

    pub(super) fn test(&mut self, i: usize, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "from", "to", "expect", "at"]);
        let name = t
            .opt_string(&mut self.sink, "name", "\"alice can ssh\"")
            .map(|n| n.0.to_string())
            .unwrap_or_else(|| format!("test #{}", i + 1));
        let from = t.string(&mut self.sink, "from", "\"alice-laptop\"");
        let to = t.string(&mut self.sink, "to", "\"198.18.1.10:22/tcp\"");
        let expect =
            t.string(&mut self.sink, "expect", "\"allow\"")
                .and_then(|(e, span)| match e {
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
        let names = Tables {
            devices: &self.devices,
            sas: &self.sas,
            resources: &self.resources,
            policy: &self.policy,
        };
        let sink = &mut self.sink;
        let src = from
            .as_ref()
            .and_then(|(f, span)| match source_in(&names, f) {
                Ok(s) => Some(s),
                Err(_) => {
                    sink.error(span, format!("unknown test source `{f}`"), "write a device name, a service-account key as \"sa-name/key-name\", or an IP address");
                    None
                }
            });
        let dst = to
            .as_ref()
            .and_then(|(s, span)| match target_in(&names, s) {
                Ok(d) => Some(d),
                Err(e) => {
                    sink.error(span, e.to_string(), "write \"addr:port/tcp\", \"addr:port/udp\", \"[v6addr]:port/tcp\", \"addr/icmp\" or a resource name");
                    None
                }
            });
        // A principal sends from its address of the destination's family.
        let src = match (src, &dst, &from, &to) {
            (Some(s), Some(d), Some((f, span)), Some((to, _))) => match s.address_for(d.addr) {
                Ok(a) => Some(a),
                Err(_) => {
                    let family = family(d.addr);
                    sink.error(
                        span,
                        format!("`{f}` has no {family} address to reach `{to}` from"),
                        format!("give `{f}` one (`addresses = [\"198.19.0.10\", \"2001:db8:ff::10\"]`), or test a destination of a family it has"),
                    );
                    None
                }
            },
            _ => None,
        };
        let (line, column) = self.sink.position(t.header.start);
        if let (Some(from), Some(to), Some(src), Some(dst), Some(expect)) =
            (from, to, src, dst, expect)
        {
            self.policy.tests.push(PolicyTest {
                name,
                line,
                column,
                from: from.0.to_string(),
                to: to.0.to_string(),
                src,
                dst: dst.addr,
                dst_name: dst.name,
                proto: dst.proto,
                dst_port: dst.port,
                expect,
                at,
            });
        }
    }
}

/// The parser's name tables, for the `[[test]]` grammar (`crate::target`).
struct Tables<'p> {
    devices: &'p HashMap<String, (usize, Span)>,
    sas: &'p HashMap<String, (usize, Span)>,
    resources: &'p HashMap<String, (usize, Span)>,
    policy: &'p Policy,
}

impl Names for Tables<'_> {
    fn device(&self, name: &str) -> Option<Option<&[IpAddr]>> {
        let (i, _) = self.devices.get(name)?;
        // A device that did not validate keeps its name (usize::MAX): an unknown source.
        Some(self.policy.devices.get(*i).map(|d| d.addresses.as_slice()))
    }

    fn service_account(&self, name: &str) -> Option<&ServiceAccount> {
        let (i, _) = self.sas.get(name)?;
        self.policy.service_accounts.get(*i)
    }

    fn resource(&self, name: &str) -> Option<&Resource> {
        let (i, _) = self.resources.get(name)?;
        self.policy.resources.get(*i)
    }
}
