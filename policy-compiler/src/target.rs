//! The grammar of a packet's source and destination as people write them: `from` and `to`
//! of a `[[test]]` block, `gatewayctl policy explain --from --to` and `gatewayctl explain`
//! (the controller answers that one through a `[[test]]` block). One implementation,
//! pinned by `tests/target_grammar.rs`.
//!
//! **Destination** (`to`), in this order:
//!
//! * a resource name: its address (the network address of a CIDR) and its first port,
//!   TCP, else UDP, else ICMP of its family. Names come first: a resource may be named
//!   like an address;
//! * `ADDR:PORT/tcp` or `ADDR:PORT/udp`: an IPv6 address in brackets
//!   (`[2001:db8::5]:443/tcp`); brackets around IPv4 are accepted; PORT is 0-65535;
//! * `ADDR/icmp` or `ADDR/icmpv6`, brackets optional: both words mean the ICMP of the
//!   address's family (ICMP for IPv4, ICMPv6 for IPv6);
//! * a DNS name in place of ADDR (`db.prod.internal:5432/tcp`, `app.corp.test/icmp`): a
//!   packet to the proxy address the device's resolver answers the name with, IPv4 (the
//!   `/icmpv6` form: IPv6), decided by the name ([`crate::eval::evaluate_name`]). A
//!   resource whose address is one name stands for that name; a wildcard resource is no
//!   destination (name one of its names).
//!
//! Protocol words are lower case. An IPv4-mapped IPv6 address (`::ffff:198.18.0.1`) is read
//! as the IPv4 address.
//!
//! **Source** (`from`), in this order:
//!
//! * a device name;
//! * `ACCOUNT/KEY`, a service account's key (an account without that key is an error,
//!   not an address);
//! * an IP address, as written (IPv4-mapped read as IPv4), of either family.
//!
//! A device or key sends from its address of the destination's family (the dual-stack
//! rule); one without such an address cannot reach the destination (an error).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use gateway_common::flow::proto;

use crate::eval::Packet;
use crate::model::{Policy, Resource, ServiceAccount, address_like};

/// A destination: address, IP protocol number and destination port (0 for ICMP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The address; for a DNS name, the unspecified address (`0.0.0.0`, `::`) of the
    /// family the device asked for (the proxy address its resolver answered with
    /// stands for the name).
    pub addr: IpAddr,
    pub proto: u8,
    pub port: u16,
    /// A DNS name (lower-case, no trailing dot), when the destination is one.
    pub name: Option<String>,
}

impl Target {
    /// The evaluator's packet from `src` to this target (source port 40000); for a name,
    /// decide it with [`Target::evaluate`] / [`Target::explain`], which use the name.
    pub fn packet(&self, src: IpAddr) -> Packet {
        Packet {
            src,
            dst: self.addr,
            proto: self.proto,
            src_port: 40000,
            dst_port: self.port,
        }
    }

    /// The decision for a packet from `src` to this target (an address or a name).
    pub fn evaluate(&self, policy: &Policy, src: IpAddr, now: i64) -> crate::eval::Decision {
        let pkt = self.packet(src);
        match &self.name {
            Some(n) => crate::eval::evaluate_name(policy, &pkt, n, now),
            None => crate::eval::evaluate(policy, &pkt, now),
        }
    }

    /// [`Target::evaluate`] with everything that was looked at.
    pub fn explain(&self, policy: &Policy, src: IpAddr, now: i64) -> crate::eval::Explanation {
        let pkt = self.packet(src);
        match &self.name {
            Some(n) => crate::eval::explain_name(policy, &pkt, n, now),
            None => crate::eval::explain(policy, &pkt, now),
        }
    }

    /// The target `name` with the family of `v6`.
    fn named(name: String, v6: bool, proto: u8, port: u16) -> Target {
        Target {
            addr: if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            proto,
            port,
            name: Some(name),
        }
    }
}

/// In the grammar: `198.18.1.10:22/tcp`, `[2001:db8::5]:443/udp`, `198.18.1.1/icmp`,
/// `2001:db8::1/icmpv6` (other protocols: `ADDR/proto-N`, which does not parse back).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.name {
            return match self.proto {
                proto::TCP => write!(f, "{n}:{}/tcp", self.port),
                proto::UDP => write!(f, "{n}:{}/udp", self.port),
                proto::ICMP => write!(f, "{n}/icmp"),
                proto::ICMPV6 => write!(f, "{n}/icmpv6"),
                other => write!(f, "{n}/proto-{other}"),
            };
        }
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

/// Why a destination does not parse. The messages are those of the policy diagnostics;
/// [`TargetError::hint`] adds what a command line can say besides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// No `/protocol` suffix (and no resource of that name).
    NoProtocol {
        to: String,
    },
    /// `ADDR/tcp` or `ADDR/udp` without `:PORT`.
    NoPort {
        to: String,
        protocol: String,
    },
    /// An IPv6 address with a port, without brackets.
    Unbracketed {
        to: String,
        protocol: String,
    },
    /// `addr` (brackets removed) is not an IP address.
    BadAddress {
        to: String,
        addr: String,
    },
    /// `port` is not a number 0-65535.
    BadPort {
        to: String,
        port: String,
    },
    UnknownProtocol {
        to: String,
        protocol: String,
    },
    /// A resource whose address is a wildcard: no one name to test.
    Wildcard {
        to: String,
        pattern: String,
    },
}

impl TargetError {
    /// More on what went wrong, for a command line (the policy diagnostics have a help of
    /// their own).
    pub fn hint(&self) -> Option<String> {
        match self {
            TargetError::NoProtocol { .. } => {
                Some("no `/tcp`, `/udp` or `/icmp` suffix, and no resource has that name".into())
            }
            TargetError::NoPort { protocol, .. } => {
                Some(format!("it has no port: write `addr:port/{protocol}`"))
            }
            TargetError::Unbracketed { protocol, .. } => {
                Some(format!("e.g. `[2001:db8::5]:443/{protocol}`"))
            }
            TargetError::BadAddress { .. } => Some(
                "a DNS name in a destination has a dot (`db.corp.test:5432/tcp`); a one-label \
                 name is reached by its resource's name"
                    .into(),
            ),
            TargetError::BadPort { .. } => Some("ports are 0-65535".into()),
            TargetError::UnknownProtocol { .. } => Some("valid: tcp, udp, icmp, icmpv6".into()),
            TargetError::Wildcard { pattern, .. } => Some(format!(
                "name one of its names, e.g. `{}:PORT/tcp`",
                pattern.trim_start_matches("**.").trim_start_matches("*.")
            )),
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::NoProtocol { to } | TargetError::NoPort { to, .. } => {
                write!(f, "`{to}` is not a destination")
            }
            TargetError::Unbracketed { to, .. } => {
                write!(f, "IPv6 address in `{to}` must be in brackets")
            }
            TargetError::BadAddress { addr, .. } => {
                write!(f, "`{addr}` is not an IP address or a DNS name")
            }
            TargetError::Wildcard { to, pattern } => {
                write!(
                    f,
                    "resource `{to}` is the wildcard `{pattern}`, not one name"
                )
            }
            TargetError::BadPort { port, .. } => write!(f, "`{port}` is not a port"),
            TargetError::UnknownProtocol { to, protocol } => {
                write!(f, "unknown protocol `{protocol}` in `{to}`")
            }
        }
    }
}

impl std::error::Error for TargetError {}

/// Why a source does not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    /// No device, no service-account key, not an IP address.
    Unknown { from: String },
    /// `ACCOUNT/KEY` where the account exists but has no such key (`keys`: the ones it has).
    NoKey {
        from: String,
        account: String,
        key: String,
        keys: Vec<String>,
    },
    /// The device or key has no address of the family of `dst` (`addresses`: the ones it
    /// has).
    NoAddressOfFamily {
        from: String,
        dst: IpAddr,
        addresses: Vec<IpAddr>,
    },
}

/// `a, b`, or `none defined`.
fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "none defined".to_string()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `IPv4` or `IPv6`: the family of `a` (IPv4-mapped counts as IPv4).
pub(crate) fn family(a: IpAddr) -> &'static str {
    if a.to_canonical().is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Unknown { from } => write!(f, "unknown source `{from}`"),
            SourceError::NoKey {
                account, key, keys, ..
            } => write!(
                f,
                "service account `{account}` has no key `{key}` (keys: {})",
                list(keys)
            ),
            SourceError::NoAddressOfFamily {
                from,
                dst,
                addresses,
            } => write!(
                f,
                "`{from}` has no {} address (it has {}) to reach {dst} from",
                family(*dst),
                list(addresses)
            ),
        }
    }
}

impl std::error::Error for SourceError {}

/// A resolved source, before the destination is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// A device or service-account key (`name` as written) and its addresses.
    Principal {
        name: &'a str,
        addresses: &'a [IpAddr],
    },
    /// An address as written (IPv4-mapped read as IPv4).
    Addr(IpAddr),
}

impl Source<'_> {
    /// The address the source sends from to `dst`: a principal's address of the family of
    /// `dst`; an address as it is.
    pub fn address_for(&self, dst: IpAddr) -> Result<IpAddr, SourceError> {
        match *self {
            Source::Addr(a) => Ok(a),
            Source::Principal { name, addresses } => {
                address_like(addresses, dst).ok_or_else(|| SourceError::NoAddressOfFamily {
                    from: name.to_string(),
                    dst,
                    addresses: addresses.to_vec(),
                })
            }
        }
    }
}

/// Where names are looked up: a policy, or the parser's tables while it builds one.
pub(crate) trait Names {
    /// The addresses of the device `name`; `Some(None)` when the name is taken by a
    /// device that did not validate (only while parsing): such a source is unknown.
    fn device(&self, name: &str) -> Option<Option<&[IpAddr]>>;
    fn service_account(&self, name: &str) -> Option<&ServiceAccount>;
    fn resource(&self, name: &str) -> Option<&Resource>;
}

impl Names for Policy {
    fn device(&self, name: &str) -> Option<Option<&[IpAddr]>> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| Some(d.addresses.as_slice()))
    }

    fn service_account(&self, name: &str) -> Option<&ServiceAccount> {
        self.service_accounts.iter().find(|s| s.name == name)
    }

    fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

pub(crate) fn source_in<'a, N: Names + ?Sized>(
    names: &'a N,
    from: &'a str,
) -> Result<Source<'a>, SourceError> {
    let unknown = || SourceError::Unknown {
        from: from.to_string(),
    };
    if let Some(device) = names.device(from) {
        let addresses = device.ok_or_else(unknown)?;
        return Ok(Source::Principal {
            name: from,
            addresses,
        });
    }
    if let Some((account, key)) = from.split_once('/')
        && let Some(sa) = names.service_account(account)
    {
        let k = sa
            .keys
            .iter()
            .find(|k| k.name == key)
            .ok_or_else(|| SourceError::NoKey {
                from: from.to_string(),
                account: account.to_string(),
                key: key.to_string(),
                keys: sa.keys.iter().map(|k| k.name.clone()).collect(),
            })?;
        return Ok(Source::Principal {
            name: from,
            addresses: &k.addresses,
        });
    }
    IpAddr::from_str(from)
        .map(|a| Source::Addr(a.to_canonical()))
        .map_err(|_| unknown())
}

pub(crate) fn target_in<N: Names + ?Sized>(names: &N, to: &str) -> Result<Target, TargetError> {
    let Some(r) = names.resource(to) else {
        return parse_target(to);
    };
    // Its first port: TCP, else UDP, else ICMP of its family.
    let first = r
        .ports
        .tcp
        .first()
        .map(|p| (proto::TCP, p))
        .or_else(|| r.ports.udp.first().map(|p| (proto::UDP, p)));
    match &r.address {
        crate::model::Address::Net(n) => {
            let addr = n.network();
            let icmp = if addr.is_ipv6() {
                proto::ICMPV6
            } else {
                proto::ICMP
            };
            let (proto, port) = first.unwrap_or((icmp, 0));
            Ok(Target {
                addr,
                proto,
                port,
                name: None,
            })
        }
        crate::model::Address::Name(crate::names::NamePattern::Exact(n)) => {
            let (proto, port) = first.unwrap_or((proto::ICMP, 0));
            Ok(Target::named(n.clone(), false, proto, port))
        }
        crate::model::Address::Name(p) => Err(TargetError::Wildcard {
            to: to.to_string(),
            pattern: p.to_string(),
        }),
    }
}

/// Resolves a source against `policy` (see the module docs), before the destination is
/// known; [`Source::address_for`] then picks the address.
pub fn source<'a>(policy: &'a Policy, from: &'a str) -> Result<Source<'a>, SourceError> {
    source_in(policy, from)
}

/// The address `from` sends from to `dst` (see the module docs).
pub fn resolve_source(policy: &Policy, from: &str, dst: IpAddr) -> Result<IpAddr, SourceError> {
    source(policy, from)?.address_for(dst)
}

/// A destination: a resource name of `policy`, or [`parse_target`].
pub fn resolve_target(policy: &Policy, to: &str) -> Result<Target, TargetError> {
    target_in(policy, to)
}

/// `ADDR:PORT/tcp`, `ADDR:PORT/udp`, `ADDR/icmp`, `ADDR/icmpv6` (no resource names).
pub fn parse_target(to: &str) -> Result<Target, TargetError> {
    let Some((addr_port, protocol)) = to.rsplit_once('/') else {
        return Err(TargetError::NoProtocol { to: to.to_string() });
    };
    let addr_of = |x: &str| {
        let inner = x
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(x);
        IpAddr::from_str(inner)
            .map(|a| a.to_canonical())
            .map_err(|_| TargetError::BadAddress {
                to: to.to_string(),
                addr: inner.to_string(),
            })
    };
    // A DNS name where an address would be: `app.corp.test:443/tcp`, `app.corp.test/icmp`
    // (IPv4: the device asks for A records first), `app.corp.test/icmpv6`.
    let name_of = |x: &str| -> Option<String> {
        // A name in a destination has a dot: a one-label word is more likely a resource
        // name mistyped than a name (a one-label name is reached by its resource's name).
        if IpAddr::from_str(x).is_ok() || x.starts_with('[') || !x.contains('.') {
            return None;
        }
        crate::names::parse_name(x).ok()
    };
    match protocol {
        "icmp" | "icmpv6" => {
            if let Some(n) = name_of(addr_port) {
                let v6 = protocol == "icmpv6";
                let p = if v6 { proto::ICMPV6 } else { proto::ICMP };
                return Ok(Target::named(n, v6, p, 0));
            }
        }
        "tcp" | "udp" => {
            if let Some((a, p)) = addr_port.rsplit_once(':')
                && let Some(n) = name_of(a)
            {
                let port = p.parse().map_err(|_| TargetError::BadPort {
                    to: to.to_string(),
                    port: p.to_string(),
                })?;
                let pr = if protocol == "tcp" {
                    proto::TCP
                } else {
                    proto::UDP
                };
                return Ok(Target::named(n, false, pr, port));
            }
        }
        _ => {}
    }
    match protocol {
        "icmp" | "icmpv6" => {
            let addr = addr_of(addr_port)?;
            let proto = if addr.is_ipv6() {
                proto::ICMPV6
            } else {
                proto::ICMP
            };
            Ok(Target {
                addr,
                proto,
                port: 0,
                name: None,
            })
        }
        "tcp" | "udp" => {
            let Some((a, p)) = addr_port.rsplit_once(':') else {
                return Err(TargetError::NoPort {
                    to: to.to_string(),
                    protocol: protocol.to_string(),
                });
            };
            if a.contains(':') && !a.starts_with('[') {
                return Err(TargetError::Unbracketed {
                    to: to.to_string(),
                    protocol: protocol.to_string(),
                });
            }
            let addr = addr_of(a)?;
            let port = p.parse().map_err(|_| TargetError::BadPort {
                to: to.to_string(),
                port: p.to_string(),
            })?;
            let proto = if protocol == "tcp" {
                proto::TCP
            } else {
                proto::UDP
            };
            Ok(Target {
                addr,
                proto,
                port,
                name: None,
            })
        }
        _ => Err(TargetError::UnknownProtocol {
            to: to.to_string(),
            protocol: protocol.to_string(),
        }),
    }
}
