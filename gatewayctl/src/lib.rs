//! The pieces of `gatewayctl` that are worth testing on their own: turning the command
//! line's `--from`, `--to` and `--host` into what the policy compiler takes, with errors
//! that say what would be valid; the remote commands' parsing helpers ([`remote`]) and
//! text tables ([`table`]).
//!
//! `--from` and `--to` follow the syntax of the policy's `[[test]]` blocks:
//!
//! * from: a device name (`alice-laptop`), a service-account key (`ci-cd/runner-1`) or
//!   an IP address (`198.19.0.99`);
//! * to: `198.18.1.10:22/tcp`, `[2001:db8::5]:443/udp`, `198.18.1.1/icmp`,
//!   `2001:db8::5/icmpv6`, or a resource name (its address and first port: TCP, else UDP,
//!   else ICMP).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use policy_compiler::{Host, Packet, Policy, address_like};

pub mod remote;
pub mod table;

/// IP protocol numbers.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Accepted `--to` forms, for error messages.
pub const TO_FORMS: &str = "`addr:port/tcp`, `addr:port/udp`, `[v6addr]:port/tcp`, `addr/icmp` (e.g. `198.18.1.10:22/tcp`, `[2001:db8::5]:443/tcp`, `198.18.1.1/icmp`) or a resource name";

/// A resolved destination: address, protocol number and destination port (0 for ICMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub proto: u8,
    pub port: u16,
}

impl Target {
    /// The evaluator's packet from `src` to this target (source port 40000).
    pub fn packet(&self, src: IpAddr) -> Packet {
        Packet {
            src,
            dst: self.addr,
            proto: self.proto,
            src_port: 40000,
            dst_port: self.port,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            proto::TCP | proto::UDP => {
                let p = if self.proto == proto::TCP {
                    "tcp"
                } else {
                    "udp"
                };
                match self.addr {
                    IpAddr::V4(a) => write!(f, "{a}:{}/{p}", self.port),
                    IpAddr::V6(a) => write!(f, "[{a}]:{}/{p}", self.port),
                }
            }
            proto::ICMP => write!(f, "{}/icmp", self.addr),
            proto::ICMPV6 => write!(f, "{}/icmpv6", self.addr),
            other => write!(f, "{}/proto-{other}", self.addr),
        }
    }
}

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
    let family = if dst.to_canonical().is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    };
    let of_family = |addrs: &[IpAddr]| {
        address_like(addrs, dst).ok_or_else(|| {
            format!(
                "`{from}` has no {family} address (it has {}) to reach {dst} from",
                list(addrs.iter().map(ToString::to_string))
            )
        })
    };
    if let Some(d) = policy.devices.iter().find(|d| d.name == from) {
        return of_family(&d.addresses);
    }
    if let Some((sa, key)) = from.split_once('/')
        && let Some(sa) = policy.service_accounts.iter().find(|s| s.name == sa)
    {
        let k = sa.keys.iter().find(|k| k.name == key).ok_or_else(|| {
            format!(
                "service account `{}` has no key `{key}` (keys: {})",
                sa.name,
                list(sa.keys.iter().map(|k| k.name.clone()))
            )
        })?;
        return of_family(&k.addresses);
    }
    if let Ok(a) = IpAddr::from_str(from) {
        return Ok(a.to_canonical());
    }
    Err(format!(
        "unknown source `{from}`: expected a device name or service-account key ({}), or an IP address",
        list(principal_names(policy))
    ))
}

/// Resolves `--to` (see the crate docs for the forms).
pub fn resolve_to(policy: &Policy, to: &str) -> Result<Target, String> {
    if let Some(r) = policy.resources.iter().find(|r| r.name == to) {
        let addr = r.address.network();
        return Ok(if let Some(p) = r.ports.tcp.first() {
            Target {
                addr,
                proto: proto::TCP,
                port: p,
            }
        } else if let Some(p) = r.ports.udp.first() {
            Target {
                addr,
                proto: proto::UDP,
                port: p,
            }
        } else {
            Target {
                addr,
                proto: if addr.is_ipv6() {
                    proto::ICMPV6
                } else {
                    proto::ICMP
                },
                port: 0,
            }
        });
    }
    let help = || {
        format!(
            "expected {TO_FORMS} (resources: {})",
            list(policy.resources.iter().map(|r| r.name.clone()))
        )
    };
    parse_target(to).map_err(|e| format!("{e}; {}", help()))
}

/// Parses `addr:port/proto` or `addr/icmp` (no resource names).
pub fn parse_target(to: &str) -> Result<Target, String> {
    let Some((addr_port, pr)) = to.rsplit_once('/') else {
        return Err(format!(
            "`{to}` is not a destination (no `/tcp`, `/udp` or `/icmp` suffix, and no resource has that name)"
        ));
    };
    let addr_of = |x: &str| -> Result<IpAddr, String> {
        let inner = x
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(x);
        IpAddr::from_str(inner)
            .map(|a| a.to_canonical())
            .map_err(|_| format!("`{inner}` in `{to}` is not an IP address"))
    };
    match pr {
        "icmp" | "icmpv6" => {
            let addr = addr_of(addr_port)?;
            if addr_port.starts_with('[') != addr_port.ends_with(']') {
                return Err(format!("unbalanced brackets in `{to}`"));
            }
            let icmp6 = addr.is_ipv6();
            if pr == "icmpv6" && !icmp6 {
                return Err(format!(
                    "`{to}`: icmpv6 needs an IPv6 address (write `/icmp` for IPv4)"
                ));
            }
            Ok(Target {
                addr,
                proto: if icmp6 { proto::ICMPV6 } else { proto::ICMP },
                port: 0,
            })
        }
        "tcp" | "udp" => {
            let Some((a, p)) = addr_port.rsplit_once(':') else {
                return Err(format!("`{to}` has no port (write `addr:port/{pr}`)"));
            };
            if a.contains(':') && !(a.starts_with('[') && a.ends_with(']')) {
                return Err(format!(
                    "IPv6 address in `{to}` must be in brackets, e.g. `[2001:db8::5]:443/{pr}`"
                ));
            }
            let addr = addr_of(a)?;
            let port: u16 = p
                .parse()
                .map_err(|_| format!("`{p}` in `{to}` is not a port (0-65535)"))?;
            Ok(Target {
                addr,
                proto: if pr == "tcp" { proto::TCP } else { proto::UDP },
                port,
            })
        }
        other => Err(format!(
            "unknown protocol `{other}` in `{to}` (valid: tcp, udp, icmp, icmpv6)"
        )),
    }
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

    #[test]
    fn targets() {
        let t = parse_target("198.18.1.10:22/tcp").unwrap();
        assert_eq!((t.proto, t.port), (proto::TCP, 22));
        assert_eq!(t.to_string(), "198.18.1.10:22/tcp");
        let t = parse_target("[2001:db8::5]:443/udp").unwrap();
        assert_eq!((t.proto, t.port), (proto::UDP, 443));
        assert_eq!(t.to_string(), "[2001:db8::5]:443/udp");
        assert_eq!(parse_target("198.18.1.1/icmp").unwrap().proto, proto::ICMP);
        assert_eq!(
            parse_target("2001:db8::1/icmp").unwrap().proto,
            proto::ICMPV6
        );
        assert!(
            parse_target("2001:db8::5:443/tcp")
                .unwrap_err()
                .contains("brackets")
        );
        assert!(
            parse_target("198.18.1.1:99999/tcp")
                .unwrap_err()
                .contains("port")
        );
        assert!(
            parse_target("198.18.1.1:22/sctp")
                .unwrap_err()
                .contains("sctp")
        );
        assert!(parse_target("198.18.1.1:22").is_err());
        assert!(
            parse_target("198.18.1.1/tcp")
                .unwrap_err()
                .contains("no port")
        );
        assert!(parse_target("198.18.1.1/icmpv6").is_err());
        assert!(
            parse_target("nonsense:1/tcp")
                .unwrap_err()
                .contains("IP address")
        );
    }
}
