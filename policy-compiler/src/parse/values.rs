//! Value parsers: addresses and prefixes, ports and port sets, timestamps, kind-prefixed
//! names.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::doc::Val;
use ipnet::IpNet;

use super::access::{Tbl, type_name};
use super::{Span, V};
use crate::diag::Sink;
use crate::model::{PortSet, parse_rfc3339};

/// A host address or CIDR. Host bits set in a CIDR are an error.
pub(super) fn parse_prefix(s: &str) -> Result<IpNet, (String, String)> {
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
pub(super) fn parse_host(s: &str) -> Result<IpAddr, (String, String)> {
    // The common case, a bare address: parsed once (what follows would parse it twice).
    if !s.contains('/')
        && let Ok(a) = IpAddr::from_str(s)
    {
        return match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(Ok(a), |v4| Err(mapped(s, v4))),
            IpAddr::V4(_) => Ok(a),
        };
    }
    let bare = s.split_once('/').map_or(s, |(a, _)| a);
    if let Ok(v6) = Ipv6Addr::from_str(bare)
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(mapped(s, v4));
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

fn mapped(s: &str, v4: std::net::Ipv4Addr) -> (String, String) {
    (
        format!("`{s}` is an IPv4-mapped IPv6 address"),
        format!("a principal's IPv4 address is written as IPv4: \"{v4}\""),
    )
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
        Val::Integer(i) => {
            let n = i128::from_str_radix(i.as_str(), i.radix()).unwrap_or(i128::MAX);
            let p = port_number(sink, &v.span(), n)?;
            Some((p, p))
        }
        Val::String(s) => port_item_str(sink, &v.span(), s),
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
        Val::String(s) if s == "all" => Some(PortSet::all()),
        Val::String(s) if s == "none" => Some(PortSet::none()),
        Val::String(_) | Val::Integer(_) => {
            port_item(sink, key, v).map(|r| PortSet::from_ranges([r]))
        }
        Val::Array(arr) => {
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
pub(super) fn proto_keys(
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

pub(super) fn timestamp(sink: &mut Sink<'_>, key: &str, v: &V<'_>) -> Option<i64> {
    let text = match v.get_ref() {
        Val::Datetime(d) => d.to_string(),
        Val::String(s) => s.to_string(),
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

pub(super) fn split_kind(s: &str) -> (Option<&'static str>, &str) {
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
