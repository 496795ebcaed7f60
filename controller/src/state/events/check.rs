//! Checking connection events an agent reports against what its host may know.
//!
//! An agent reports for the host it enrolled as — never for another: the stored `host`
//! is the agent's, whatever the event says. The names in an event (user, device,
//! service account, resource, remote network, connector, rule) must be ones the host's
//! compiled view holds (the current view or one of the few before it, since an agent
//! may report events of a view it enforced a moment ago). The agent builds every one of
//! those fields from its view, so an event naming anything else was not produced by an
//! honest agent of that host and is not stored.

use std::collections::HashSet;
use std::net::IpAddr;

use policy_compiler::{Host, HostView, model::RuleKind};

use crate::model::ConnectionEvent;

/// How many recent views of a host events are checked against.
pub const VIEWS_KEPT: usize = 8;
/// The most events one ReportEvents message may carry.
pub const MAX_EVENTS_PER_MESSAGE: usize = 10_000;
const MAX_FIELD: usize = 512;

/// The names a host's view holds.
#[derive(Debug, Default)]
pub struct NameSet {
    users: HashSet<String>,
    devices: HashSet<String>,
    service_accounts: HashSet<String>,
    resources: HashSet<String>,
    networks: HashSet<String>,
    connectors: HashSet<String>,
    rules: HashSet<String>,
}

impl NameSet {
    pub fn of(view: &HostView) -> NameSet {
        let mut n = NameSet::default();
        for p in view.principals.values() {
            if p.kind == "device" {
                n.devices.insert(p.name.clone());
                if let Some(u) = &p.user {
                    n.users.insert(u.clone());
                }
            } else {
                n.service_accounts.insert(p.name.clone());
            }
        }
        for a in view.atom_meta.values() {
            n.networks.insert(a.network.clone());
            n.resources.extend(a.resources.iter().cloned());
        }
        n.networks.extend(view.networks.iter().cloned());
        match &view.host {
            Host::Connector(c) => {
                n.connectors.insert(c.clone());
            }
            Host::Device(_) => n.connectors.extend(view.connectors.iter().cloned()),
        }
        n.rules.insert("default-deny".into());
        for m in view.rule_meta.values() {
            match &m.kind {
                RuleKind::Grant {
                    grant, resource, ..
                } => {
                    n.rules.insert(grant.clone());
                    n.resources.insert(resource.clone());
                }
                RuleKind::AuditDefault { resource } => {
                    n.rules.insert(format!("audit-mode:{resource}"));
                    n.resources.insert(resource.clone());
                }
            }
        }
        n
    }
}

fn plain(what: &str, v: &str) -> Result<(), String> {
    if v.len() > MAX_FIELD {
        return Err(format!("`{what}` is {} bytes long", v.len()));
    }
    if v.chars()
        .any(|c| c.is_control() || crate::names::is_invisible(c))
    {
        return Err(format!("`{what}` holds control or invisible characters"));
    }
    Ok(())
}

fn word(what: &str, v: &str) -> Result<(), String> {
    if v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("`{what}` is not a short lower-case word"));
    }
    Ok(())
}

fn ip(what: &str, v: &Option<String>) -> Result<(), String> {
    match v {
        Some(s) if s.parse::<IpAddr>().is_err() => {
            Err(format!("`{what}` `{}` is not an address", crate::shown(s)))
        }
        _ => Ok(()),
    }
}

/// Checks one event of `host` against its recent views; sets its `host`.
pub fn check(ev: &mut ConnectionEvent, host: &str, views: &[&NameSet]) -> Result<(), String> {
    plain("timestamp", &ev.timestamp)?;
    word("event", &ev.event)?;
    word("reason", &ev.reason)?;
    if !matches!(ev.verdict.as_str(), "allow" | "deny" | "audit") {
        return Err(format!(
            "`verdict` `{}` is not allow, deny or audit",
            crate::shown(&ev.verdict)
        ));
    }
    if let Some(p) = &ev.protocol {
        word("protocol", p)?;
    }
    ip("public_ip", &ev.public_ip)?;
    ip("src_ip", &ev.src_ip)?;
    ip("dst_ip", &ev.dst_ip)?;
    if ev.src_port.is_some_and(|p| p > 65_535) || ev.dst_port.is_some_and(|p| p > 65_535) {
        return Err("a port is beyond 65535".into());
    }
    type Pick = fn(&NameSet) -> &HashSet<String>;
    let fields: [(&str, &Option<String>, Pick); 7] = [
        ("user", &ev.user, |n| &n.users),
        ("device", &ev.device, |n| &n.devices),
        ("service_account", &ev.service_account, |n| {
            &n.service_accounts
        }),
        ("remote_network", &ev.remote_network, |n| &n.networks),
        ("connector", &ev.connector, |n| &n.connectors),
        ("rule", &ev.rule, |n| &n.rules),
        ("resource", &ev.resource, |n| &n.resources),
    ];
    for (what, value, pick) in fields {
        let Some(value) = value else { continue };
        plain(what, value)?;
        // The agent names every resource covering an address, comma-separated.
        let parts: Vec<&str> = if what == "resource" {
            value.split(',').collect()
        } else {
            vec![value.as_str()]
        };
        for part in parts {
            if !views.iter().any(|n| pick(n).contains(part)) {
                return Err(format!(
                    "`{what}` `{}` is not in the view of {host}",
                    crate::shown(part)
                ));
            }
        }
    }
    ev.host = host.to_string();
    Ok(())
}
