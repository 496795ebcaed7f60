//! The WireGuard part of a policy: `public_key` of devices and service-account keys, and
//! `[[connector]]` blocks (a connector's key and endpoint). Every key is used once in the
//! whole policy.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Span;
use super::access::Tbl;
use super::sections::P;
use crate::model::{Connector, WgKey};

/// What `public_key` looks like, for help texts.
const KEY_EXAMPLE: &str = "\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"";

impl P<'_> {
    /// The optional `public_key` of a device or service-account key (`owner` names it in
    /// messages). Problems are reported; the result is then `None`.
    pub(super) fn opt_public_key(&mut self, t: &Tbl<'_, '_>, owner: &str) -> Option<WgKey> {
        t.get("public_key")?;
        self.public_key(t, owner)
    }

    /// `public_key` of `t`: a valid key no other device, service-account key or connector
    /// uses. A missing key is reported as missing.
    fn public_key(&mut self, t: &Tbl<'_, '_>, owner: &str) -> Option<WgKey> {
        let (s, span) = t.string(&mut self.sink, "public_key", KEY_EXAMPLE)?;
        let key = match s.parse::<WgKey>() {
            Ok(k) => k,
            Err(e) => {
                self.sink.error(
                    &span,
                    format!("invalid public_key of {owner}: {e}"),
                    format!(
                        "a WireGuard public key is 32 bytes in standard base64 (44 characters \
                         ending in `=`), as `wg pubkey` prints it: `public_key = {KEY_EXAMPLE}`"
                    ),
                );
                return None;
            }
        };
        if let Some((other, first)) = self.keys.get(&key).cloned() {
            let (line, col) = self.sink.position(first.start);
            self.sink.error(
                &span,
                format!("public_key of {owner} is already used by {other}"),
                format!(
                    "first used at line {line}, column {col}; every device, service-account \
                     key and connector needs its own WireGuard key"
                ),
            );
            return None;
        }
        self.keys.insert(key, (owner.to_string(), span));
        Some(key)
    }

    pub(super) fn connector(&mut self, t: &Tbl<'_, '_>) {
        t.check_keys(&mut self.sink, &["name", "public_key", "endpoint"]);
        let name = t.string(&mut self.sink, "name", "\"dc-connector-1\"");
        let Some((name, name_span)) = name else {
            return;
        };
        let listed = self
            .policy
            .networks
            .iter()
            .any(|n| n.connectors.iter().any(|c| c == name));
        if !listed {
            let mut known: Vec<&str> = self
                .policy
                .networks
                .iter()
                .flat_map(|n| n.connectors.iter().map(String::as_str))
                .collect();
            known.sort_unstable();
            known.dedup();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.sink.error(
                &name_span,
                format!("unknown connector `{name}`: no [[remote_network]] lists it"),
                format!("add it to a network's `connectors`; connectors listed: {known}"),
            );
        }
        if let Some(first) = self.connector_spans.get(name).cloned() {
            let (line, col) = self.sink.position(first.start);
            self.sink.error(
                &name_span,
                format!("duplicate [[connector]] `{name}`"),
                format!("first defined at line {line}, column {col}; declare each connector once"),
            );
            return;
        }
        self.connector_spans.insert(name.to_string(), name_span);
        let key = self.public_key(t, &format!("connector `{name}`"));
        let endpoint = t.string(&mut self.sink, "endpoint", "\"203.0.113.7:51820\"");
        let endpoint = endpoint.and_then(|(e, span)| match check_endpoint(e) {
            Ok(()) => {
                // Tunnel packets to an endpoint inside protected space would be dropped
                // by the shield (it drops whatever reaches protected space outside the
                // tunnel), so such an endpoint could never work.
                let ip = e
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.ip().to_canonical());
                let inside = ip.and_then(|ip| {
                    self.policy
                        .networks
                        .iter()
                        .find(|n| n.cidrs.iter().any(|c| c.contains(&ip)))
                });
                match inside {
                    Some(n) => {
                        let why = format!(
                            "the address is inside remote network `{}`, which is reached only \
                             through the tunnel; give the address devices reach the connector at \
                             from outside",
                            n.name
                        );
                        self.bad_endpoint(&span, e, &why);
                        None
                    }
                    None => Some(e),
                }
            }
            Err(why) => {
                self.bad_endpoint(&span, e, &why);
                None
            }
        });
        if let (true, Some(public_key), Some(endpoint)) = (listed, key, endpoint) {
            let line = self.sink.position(t.header.start).0;
            self.policy.connectors.push(Connector {
                name: name.to_string(),
                public_key,
                endpoint: endpoint.to_string(),
                line,
            });
        }
    }

    fn bad_endpoint(&mut self, span: &Span, e: &str, why: &str) {
        let shown: String = e.chars().take(80).collect();
        self.sink.error(
            span,
            format!("invalid endpoint `{shown}`: {why}"),
            "write `host:port`: an IPv4 address, an IPv6 address in brackets or a DNS name, \
             and a port 1-65535, like \"203.0.113.7:51820\", \"[2001:db8::7]:51820\" or \
             \"connector.example.com:51820\"",
        );
    }
}

/// Checks a `host:port` endpoint: host an IPv4 literal, `[IPv6]` literal or DNS name,
/// port 1-65535.
pub(crate) fn check_endpoint(e: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or("the port is missing after `]`")?;
        (None, port)
    } else {
        let (host, port) = e.rsplit_once(':').ok_or("the port is missing")?;
        if host.contains(':') {
            return Err("an IPv6 address is written in brackets: `[2001:db8::7]:51820`".into());
        }
        (Some(host), port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(format!("`{port}` is not a port number"));
    }
    match port.parse::<u32>() {
        Ok(1..=65535) => {}
        _ => return Err(format!("port {port} is outside 1-65535")),
    }
    let Some(host) = host else { return Ok(()) };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("`{host}` is not an IPv4 address"))?;
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a DNS name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_endpoint;

    #[test]
    fn endpoints() {
        for ok in [
            "203.0.113.7:51820",
            "[2001:db8::7]:51820",
            "connector.example.com:1",
            "c-1.example.com.:65535",
            "localhost:51820",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "203.0.113.7",
            "203.0.113.7:0",
            "203.0.113.7:65536",
            "203.0.113.256:51820",
            "2001:db8::7:51820",
            "[2001:db8::7]51820",
            "[2001:zz::7]:51820",
            ":51820",
            "bad_name.example.com:51820",
            "-x.example.com:51820",
            "a..b:51820",
            "x.example.com:+80",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
