//! Reading and validating the agents' connection logs.

use crate::prelude::*;

// ---------------------------------------------------------------- connection logs

pub(crate) fn read_log(path: &Path) -> (Vec<Value>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut recs = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => recs.push(v),
            _ => bad.push(line.to_string()),
        }
    }
    (recs, bad)
}

pub(crate) fn ip_of(v: &Value) -> Option<IpAddr> {
    let ip: IpAddr = v.as_str()?.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

pub(crate) fn port_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

pub(crate) fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or("")
}

pub(crate) fn is_event(r: &Value, event: &str, src: Ipv4Addr) -> bool {
    s(r, "event") == event && ip_of(&r["src_ip"]) == Some(IpAddr::V4(src))
}

/// Records of `event` from `src` to `dst` over `proto`.
pub(crate) fn find<'a>(
    recs: &'a [Value],
    event: &str,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    proto: Proto,
) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| {
            is_event(r, event, src)
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(*dst.ip()))
                && port_of(&r["dst_port"]) == Some(u64::from(dst.port()))
                && s(r, "protocol").eq_ignore_ascii_case(proto.name())
        })
        .collect()
}

pub(crate) fn looks_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (t.ends_with('Z')
            || t.ends_with('z')
            || b[b.len() - 6] == b'+'
            || b[b.len() - 6] == b'-')
}

/// Fields missing from a record (by its event), and what is malformed.
pub(crate) fn record_problems(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = r.as_object() else {
        return vec!["not an object".into()];
    };
    let event = s(r, "event");
    let mut required: Vec<&str> = BASE_FIELDS.to_vec();
    match event {
        "flow_end" => required.extend(FLOW_END_FIELDS),
        "scan_alert" => required.push("distinct_ports"),
        "deny" => required.push("suppressed"),
        _ => {}
    }
    for k in required {
        if !obj.contains_key(k) {
            out.push(format!("missing `{k}`"));
        }
    }
    if !EVENTS.contains(&event) {
        out.push(format!("unknown event {event:?}"));
    }
    if !looks_rfc3339(s(r, "timestamp")) {
        out.push(format!("timestamp {} is not RFC 3339", r["timestamp"]));
    }
    out
}

/// A record as one line, nulls left out.
pub(crate) fn compact(r: &Value) -> String {
    match r.as_object() {
        Some(o) => {
            let m: serde_json::Map<String, Value> = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(m).to_string()
        }
        None => r.to_string(),
    }
}

/// What should be in the logs once the traffic is done (waited for, bounded).
pub(crate) fn missing_records(conn: &[Value], alice: &[Value], bob: &[Value]) -> Vec<String> {
    let mut missing = Vec::new();
    for p in probes() {
        let c = client(p.who);
        let own = match p.who {
            Who::Alice => alice,
            Who::Bob => bob,
        };
        let mut want = |log: &[Value], name: &str, event: &str| {
            if find(log, event, c.overlay, p.dst, p.proto).is_empty() {
                missing.push(format!(
                    "{name} log: {event} {} -> {}/{}",
                    c.overlay,
                    p.dst,
                    p.proto.name()
                ));
            }
        };
        match p.expect {
            Expect::Allow { .. } => {
                want(conn, "connector", "flow_start");
                want(conn, "connector", "flow_end");
                want(own, c.device, "flow_start");
                want(own, c.device, "flow_end");
            }
            Expect::Deny {
                at: Where::ClientTunnelEgress,
                ..
            } => want(own, c.device, "deny"),
        }
    }
    if !bob.iter().any(|r| is_event(r, "scan_alert", BOB.overlay)) {
        missing.push(format!("bob-laptop log: scan_alert from {}", BOB.overlay));
    }
    missing
}
