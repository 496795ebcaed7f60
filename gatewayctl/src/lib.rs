//! The pieces of `gatewayctl` that are worth testing on their own: turning the command
//! line's `--from`, `--to` and `--host` into what the policy compiler takes, with errors
//! that say what would be valid; the remote commands' parsing helpers ([`remote`]) and
//! text tables ([`table`]).
//!
//! `--from` and `--to` are read with the grammar of the policy's `[[test]]` blocks,
//! [`policy_compiler::target`] (the one implementation; see its docs):
//!
//! * from: a device name (`alice-laptop`), a service-account key (`ci-cd/runner-1`) or
//!   an IP address (`198.19.0.99`); a device or key sends from its address of the
//!   destination's family;
//! * to: `198.18.1.10:22/tcp`, `[2001:db8::5]:443/udp`, `198.18.1.1/icmp`,
//!   `2001:db8::5/icmpv6`, or a resource name (its address and first port: TCP, else UDP,
//!   else ICMP).
//!
//! This crate only words the errors for a command line (the names and forms that would be
//! valid).

use std::net::IpAddr;

use policy_compiler::target::{SourceError, resolve_source, resolve_target};
use policy_compiler::{Host, Policy};

pub use policy_compiler::target::{Target, proto};

pub mod remote;
pub mod table;

/// Accepted `--to` forms, for error messages.
pub const TO_FORMS: &str = "`addr:port/tcp`, `addr:port/udp`, `[v6addr]:port/tcp`, `addr/icmp` (e.g. `198.18.1.10:22/tcp`, `[2001:db8::5]:443/tcp`, `198.18.1.1/icmp`), a DNS name in place of addr (`db.prod.internal:5432/tcp`, `app.corp.test/icmp`) or a resource name";

/// Name of an IP protocol number for reports.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        other => other.to_string(),
    }
}

fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() {
        "none defined".to_string()
    } else {
        v.join(", ")
    }
}

/// Device names and `sa/key` names of a policy.
pub fn principal_names(policy: &Policy) -> Vec<String> {
    policy
        .devices
        .iter()
        .map(|d| d.name.clone())
        .chain(policy.service_accounts.iter().flat_map(|sa| {
            sa.keys
                .iter()
                .map(move |k| format!("{}/{}", sa.name, k.name))
        }))
        .collect()
}

/// Resolves `--from`: a device name or `service-account/key` (its address of the family
/// of `dst`, the resolved `--to`), or an IP address.
pub fn resolve_from(policy: &Policy, from: &str, dst: IpAddr) -> Result<IpAddr, String> {
    resolve_source(policy, from, dst).map_err(|e| match e {
        SourceError::Unknown { .. } => format!(
            "unknown source `{from}`: expected a device name or service-account key ({}), or an IP address",
            list(principal_names(policy))
        ),
        other => other.to_string(),
    })
}

/// Resolves `--to` (see the crate docs for the forms).
pub fn resolve_to(policy: &Policy, to: &str) -> Result<Target, String> {
    resolve_target(policy, to).map_err(|e| {
        let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
        format!(
            "{e}{hint}; expected {TO_FORMS} (resources: {})",
            list(policy.resources.iter().map(|r| r.name.clone()))
        )
    })
}

/// Connector names of a policy (every remote network's, deduplicated, in file order).
pub fn connector_names(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in &policy.networks {
        for c in &n.connectors {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// Valid `--host` values of a policy, for error messages.
pub fn valid_hosts(policy: &Policy) -> String {
    let mut v: Vec<String> = connector_names(policy)
        .into_iter()
        .map(|c| format!("connector:{c}"))
        .collect();
    v.extend(policy.devices.iter().map(|d| format!("device:{}", d.name)));
    list(v)
}

/// Parses `--host connector:<name>` or `device:<name>` and checks the name exists.
pub fn resolve_host(policy: &Policy, host: &str) -> Result<Host, String> {
    let h = match host.split_once(':') {
        Some(("connector", name)) => {
            if !connector_names(policy).iter().any(|c| c == name) {
                return Err(format!(
                    "no remote network lists connector `{name}` (valid hosts: {})",
                    valid_hosts(policy)
                ));
            }
            Host::Connector(name.to_string())
        }
        Some(("device", name)) => {
            if !policy.devices.iter().any(|d| d.name == name) {
                return Err(format!(
                    "no device named `{name}` (valid hosts: {})",
                    valid_hosts(policy)
                ));
            }
            Host::Device(name.to_string())
        }
        _ => {
            return Err(format!(
                "`{host}` is not a host: write `connector:<name>` or `device:<name>` (valid hosts: {})",
                valid_hosts(policy)
            ));
        }
    };
    Ok(h)
}

/// Lower-case name of a verdict (`allow`, `deny`, `audit`).
pub fn verdict_name(v: policy_compiler::Verdict) -> &'static str {
    match v {
        policy_compiler::Verdict::Allow => "allow",
        policy_compiler::Verdict::Deny => "deny",
        policy_compiler::Verdict::Audit => "audit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's wording over the compiler's grammar (pinned in
    /// policy-compiler's `tests/target_grammar.rs`).
    #[test]
    fn targets() {
        let p = Policy::default();
        let to = |s: &str| resolve_to(&p, s);
        let t = to("198.18.1.10:22/tcp").unwrap();
        assert_eq!((t.proto, t.port), (proto::TCP, 22));
        assert_eq!(t.to_string(), "198.18.1.10:22/tcp");
        let t = to("[2001:db8::5]:443/udp").unwrap();
        assert_eq!((t.proto, t.port), (proto::UDP, 443));
        assert_eq!(t.to_string(), "[2001:db8::5]:443/udp");
        assert_eq!(to("198.18.1.1/icmp").unwrap().proto, proto::ICMP);
        assert_eq!(to("2001:db8::1/icmp").unwrap().proto, proto::ICMPV6);
        // `icmp` and `icmpv6` both mean the ICMP of the address's family, as in `[[test]]`
        // blocks (gatewayctl used to refuse `/icmpv6` with an IPv4 address).
        assert_eq!(to("198.18.1.1/icmpv6").unwrap().proto, proto::ICMP);
        assert!(
            to("2001:db8::5:443/tcp")
                .unwrap_err()
                .contains("must be in brackets (e.g. `[2001:db8::5]:443/tcp`)")
        );
        assert!(
            to("198.18.1.1:99999/tcp")
                .unwrap_err()
                .contains("`99999` is not a port (ports are 0-65535)")
        );
        assert!(to("198.18.1.1:22/sctp").unwrap_err().contains(
            "unknown protocol `sctp` in `198.18.1.1:22/sctp` (valid: tcp, udp, icmp, icmpv6)"
        ));
        assert!(to("198.18.1.1:22").is_err());
        assert!(to("198.18.1.1/tcp").unwrap_err().contains("has no port"));
        let e = to("nonsense:1/tcp").unwrap_err();
        assert!(e.contains("`nonsense` is not an IP address"), "{e}");
        assert!(
            e.ends_with(&format!("; expected {TO_FORMS} (resources: none defined)")),
            "{e}"
        );
        assert_eq!(
            resolve_from(&p, "mallory", "198.18.1.1".parse().unwrap()).unwrap_err(),
            "unknown source `mallory`: expected a device name or service-account key (none defined), or an IP address"
        );
    }
}
