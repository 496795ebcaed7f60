//! Connection log records: a kernel [`Event`] plus the compiled view's metadata becomes
//! one JSON line naming who (user, device or service account, address), what (resource,
//! destination, protocol, port), where (connector, remote network) and why (rule).
//!
//! Two shapes: the gateway's own flat JSON (default) and OCSF Network Activity (class
//! 4001), for SIEMs that expect OCSF.

use crate::writer::BootClock;
use gateway_common::{
    Event, EventKind, Reason,
    addr::to_v4,
    event::{FlowEndCause, ScanKind},
    flow::proto,
};
use policy_compiler::{HostView, model::RuleKind};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a record needs besides the event.
pub struct Context<'a> {
    pub view: &'a HostView,
    pub host: &'a str,
    pub clock: BootClock,
    /// With a tunnel: the real address and port a source's packets come from (its
    /// tunnel endpoint), by overlay address.
    pub endpoints: Option<&'a (dyn Fn(IpAddr) -> Option<SocketAddr> + Send + Sync)>,
    /// With DNS resources: the name a flow's (source, destination) stands for, and the
    /// address it resolved to.
    pub names: Option<&'a NameFn>,
}

/// (source, destination) -> the DNS name and the address it resolved to.
pub type NameFn = dyn Fn(IpAddr, IpAddr) -> Option<(String, Option<IpAddr>)> + Send + Sync;

/// How a record finds the DNS name of a flow's destination (`agent/names.rs`).
pub type NameLookup = std::sync::Arc<NameFn>;

/// How a connector finds a device's real address from its overlay address.
pub type Endpoints = std::sync::Arc<dyn Fn(IpAddr) -> Option<SocketAddr> + Send + Sync>;

/// The source's public address and port: through a tunnel, the endpoint its packets came
/// from (null when no peer has that overlay address); without a tunnel, the source address
/// as seen, with no port.
fn public(src: IpAddr, cx: &Context) -> (Value, Value) {
    match cx.endpoints {
        Some(f) => match f(src) {
            Some(ep) => (json!(ep.ip().to_canonical().to_string()), json!(ep.port())),
            None => (Value::Null, Value::Null),
        },
        None => (json!(src.to_string()), Value::Null),
    }
}

pub(crate) fn addr(a: &[u8; 16]) -> IpAddr {
    match to_v4(a) {
        Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        None => IpAddr::V6(Ipv6Addr::from(*a)),
    }
}

fn protocol(p: u8) -> Value {
    match p {
        proto::TCP => json!("tcp"),
        proto::UDP => json!("udp"),
        proto::ICMP => json!("icmp"),
        proto::ICMPV6 => json!("icmpv6"),
        other => json!(other.to_string()),
    }
}

fn rfc3339_ms(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// The fields every record has, resolved from the view.
struct Resolved {
    kind: EventKind,
    reason: Reason,
    verdict: &'static str,
    user: Value,
    device: Value,
    service_account: Value,
    src: IpAddr,
    dst: IpAddr,
    resource: Value,
    network: Value,
    rule: Value,
    unix_ns: i128,
}

fn resolve(ev: &Event, cx: &Context) -> Option<Resolved> {
    let kind = EventKind::from_u8(ev.kind)?;
    let reason = Reason::from_u32(u32::from(ev.reason));
    let verdict = match (kind, reason) {
        (EventKind::Audit, _) | (_, Reason::Audit) => "audit",
        (EventKind::Deny | EventKind::ScanAlert, _) => "deny",
        _ => "allow",
    };
    let principal = cx.view.principals.get(&ev.principal);
    let (user, device, service_account) = match principal {
        Some(p) if p.kind == "device" => (json!(p.user), json!(p.name), Value::Null),
        Some(p) => (Value::Null, Value::Null, json!(p.name)),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let rule_meta = cx.view.rule_meta.get(&ev.rule);
    let atom = cx.view.atom_meta.get(&ev.atom);
    let (rule, resource) = match rule_meta.map(|m| &m.kind) {
        Some(RuleKind::Grant {
            grant, resource, ..
        }) => (json!(grant), json!(resource)),
        Some(RuleKind::AuditDefault { resource }) => {
            (json!(format!("audit-mode:{resource}")), json!(resource))
        }
        None => (
            if ev.rule == 0 && verdict == "deny" {
                json!("default-deny")
            } else {
                Value::Null
            },
            // No rule named a resource: the resources covering the destination, if any.
            match atom.map(|a| a.resources.as_slice()) {
                Some([]) | None => Value::Null,
                Some([one]) => json!(one),
                Some(many) => json!(many.join(",")),
            },
        ),
    };
    Some(Resolved {
        kind,
        reason,
        verdict,
        user,
        device,
        service_account,
        src: addr(&ev.key.src),
        dst: addr(&ev.key.dst),
        resource,
        network: atom.map_or(Value::Null, |a| json!(a.network)),
        rule,
        unix_ns: cx.clock.boot_to_unix_ns(ev.ts_ns),
    })
}

fn connector(cx: &Context) -> Value {
    match &cx.view.host {
        policy_compiler::Host::Connector(name) => json!(name),
        policy_compiler::Host::Device(_) => Value::Null,
    }
}

fn ports(ev: &Event) -> (Value, Value) {
    match ev.key.proto {
        proto::TCP | proto::UDP => (json!(ev.key.src_port()), json!(ev.key.dst_port())),
        _ => (Value::Null, Value::Null),
    }
}

/// The gateway's own record: flat JSON, stable field names.
pub fn record(ev: &Event, cx: &Context) -> Option<Value> {
    let r = resolve(ev, cx)?;
    let (src_port, dst_port) = ports(ev);
    let (public_ip, public_port) = public(r.src, cx);
    let mut v = json!({
        "timestamp": rfc3339_ms(r.unix_ns),
        "event": r.kind.name(),
        "verdict": r.verdict,
        "reason": r.reason.name(),
        "user": r.user,
        "device": r.device,
        "service_account": r.service_account,
        // Through a tunnel: the device's real address and port as the connector sees
        // them. Without: the source address as seen.
        "public_ip": public_ip,
        "public_port": public_port,
        "src_ip": r.src.to_string(),
        "src_port": src_port,
        "resource": r.resource,
        "dst_ip": r.dst.to_string(),
        "protocol": protocol(ev.key.proto),
        "dst_port": dst_port,
        "connector": connector(cx),
        "remote_network": r.network,
        "rule": r.rule,
        "rule_id": ev.rule,
        "direction": gateway_common::Direction::from_u8(ev.dir).map_or(Value::Null, |d| json!(d.name())),
        "host": cx.host,
    });
    let obj = v.as_object_mut()?;
    // DNS resources: the name asked for and the address it resolved to.
    if let Some((name, real)) = cx.names.and_then(|f| f(r.src, r.dst)) {
        obj.insert("dns_name".into(), json!(name));
        obj.insert(
            "resolved_ip".into(),
            real.map_or(Value::Null, |a| json!(a.to_string())),
        );
    }
    match r.kind {
        EventKind::FlowEnd => {
            obj.insert("packets".into(), json!(ev.packets));
            obj.insert("bytes".into(), json!(ev.bytes));
            obj.insert("reply_packets".into(), json!(ev.reply_packets));
            obj.insert("reply_bytes".into(), json!(ev.reply_bytes));
            obj.insert(
                "duration_ms".into(),
                json!(ev.ts_ns.saturating_sub(ev.first_seen_ns) / 1_000_000),
            );
            obj.insert(
                "end_cause".into(),
                FlowEndCause::from_u8(ev.detail).map_or(Value::Null, |c| json!(c.name())),
            );
        }
        EventKind::ScanAlert => {
            let kind = ScanKind::from_u8(ev.detail);
            obj.insert("scan".into(), kind.map_or(Value::Null, |k| json!(k.name())));
            let field = match kind {
                Some(ScanKind::Hosts) => "distinct_hosts",
                _ => "distinct_ports",
            };
            obj.insert(field.into(), json!(ev.count));
            obj.insert("suppressed_budget".into(), json!(ev.suppressed));
        }
        EventKind::Deny => {
            // Records of this source the per-source limit held back since its previous
            // one, and records of this kind the per-CPU budget held back.
            obj.insert("suppressed".into(), json!(ev.count));
            obj.insert("suppressed_budget".into(), json!(ev.suppressed));
        }
        EventKind::Audit if ev.principal == 0 => {
            obj.insert("suppressed".into(), json!(ev.count));
            obj.insert("suppressed_budget".into(), json!(ev.suppressed));
        }
        EventKind::FlowStart | EventKind::Audit => {}
    }
    Some(v)
}

/// The reporting host's OS host name (read once).
fn os_hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Removes null members (recursively) and objects left empty: OCSF omits what is unknown.
fn without_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for x in o.values_mut() {
                without_nulls(x);
            }
            o.retain(|_, x| !x.is_null() && !matches!(x, Value::Object(m) if m.is_empty()));
        }
        Value::Array(a) => a.iter_mut().for_each(without_nulls),
        _ => {}
    }
}

/// OCSF 1.1 Network Activity (category 4, class 4001). `device` is the reporting host (this
/// agent's); the client is `src_endpoint` (its device or service account as `name`) and
/// `actor.user`; the resource is `dst_endpoint`. Flow ends carry `start_time`, `end_time`,
/// `duration` (ms) and `traffic`. Unknown values are left out, never null.
pub fn ocsf(ev: &Event, cx: &Context) -> Option<Value> {
    let r = resolve(ev, cx)?;
    let (src_port, dst_port) = ports(ev);
    // activity: 1 Open, 2 Close, 5 Refuse, 99 Other.
    let (activity_id, activity) = match r.kind {
        EventKind::FlowStart | EventKind::Audit => (1, "Open"),
        EventKind::FlowEnd => (2, "Close"),
        EventKind::Deny => (5, "Refuse"),
        EventKind::ScanAlert => (99, "Other"),
    };
    let blocked = r.verdict == "deny";
    let (severity_id, severity) = match r.kind {
        EventKind::ScanAlert => (4, "High"),
        EventKind::Deny => (3, "Medium"),
        _ => (1, "Informational"),
    };
    // action: 1 Allowed, 2 Denied; disposition: 1 Allowed, 2 Blocked, 17 Logged (audit
    // mode: let through and recorded).
    let (action_id, action) = if blocked {
        (2, "Denied")
    } else {
        (1, "Allowed")
    };
    let (disposition_id, disposition) = match r.verdict {
        "deny" => (2, "Blocked"),
        "audit" => (17, "Logged"),
        _ => (1, "Allowed"),
    };
    let user = match (&r.user, &r.service_account) {
        (Value::String(u), _) => {
            json!({ "email_addr": u, "name": u, "type_id": 1, "type": "User" })
        }
        (_, Value::String(sa)) => {
            json!({ "name": sa, "type_id": 99, "type": "Service account" })
        }
        _ => Value::Null,
    };
    let client_name = if r.device.is_null() {
        r.service_account.clone()
    } else {
        r.device.clone()
    };
    let (device_type_id, device_type) = match &cx.view.host {
        policy_compiler::Host::Connector(_) => (1, "Server"),
        policy_compiler::Host::Device(_) => (0, "Unknown"),
    };
    let time_ms = r.unix_ns / 1_000_000;
    let (public_ip, public_port) = public(r.src, cx);
    let mut v = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 400_100 + activity_id,
        "type_name": format!("Network Activity: {activity}"),
        "time": time_ms,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": if blocked { 2 } else { 1 },
        "status": if blocked { "Failure" } else { "Success" },
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "message": format!("{} {}", r.kind.name(), r.reason.name()),
        "metadata": {
            "version": "1.1.0",
            "product": {
                "name": "zt-gateway",
                "vendor_name": "zt-gateway",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "log_name": "connections",
        },
        "device": {
            "name": cx.host,
            "hostname": os_hostname(),
            "type_id": device_type_id,
            "type": device_type,
        },
        "actor": { "user": user },
        "src_endpoint": { "ip": r.src.to_string(), "port": src_port, "name": client_name },
        "dst_endpoint": { "ip": r.dst.to_string(), "port": dst_port, "name": r.resource },
        "connection_info": {
            "protocol_num": ev.key.proto,
            "protocol_name": protocol(ev.key.proto),
            "protocol_ver_id": if r.src.is_ipv4() { 4 } else { 6 },
            // 2 Outbound: from the client toward the resource.
            "direction_id": 2,
            "direction": "Outbound",
        },
        "policy": { "name": r.rule, "uid": ev.rule.to_string() },
        "unmapped": {
            "verdict": r.verdict,
            "reason": r.reason.name(),
            "connector": connector(cx),
            "remote_network": r.network,
            "public_ip": public_ip,
            "public_port": public_port,
        },
    });
    let o = v.as_object_mut()?;
    match r.kind {
        EventKind::FlowEnd => {
            let start_ms = cx.clock.boot_to_unix_ns(ev.first_seen_ns) / 1_000_000;
            o.insert("start_time".into(), json!(start_ms));
            o.insert("end_time".into(), json!(time_ms));
            o.insert(
                "duration".into(),
                json!(ev.ts_ns.saturating_sub(ev.first_seen_ns) / 1_000_000),
            );
            o.insert(
                "traffic".into(),
                json!({
                    "packets_out": ev.packets,
                    "bytes_out": ev.bytes,
                    "packets_in": ev.reply_packets,
                    "bytes_in": ev.reply_bytes,
                    "packets": ev.packets + ev.reply_packets,
                    "bytes": ev.bytes + ev.reply_bytes,
                }),
            );
            if let Some(c) = FlowEndCause::from_u8(ev.detail) {
                o["unmapped"]["end_cause"] = json!(c.name());
            }
        }
        EventKind::ScanAlert => {
            let kind = ScanKind::from_u8(ev.detail);
            if let Some(k) = kind {
                o["unmapped"]["scan"] = json!(k.name());
            }
            let field = match kind {
                Some(ScanKind::Hosts) => "distinct_hosts",
                _ => "distinct_ports",
            };
            o["unmapped"][field] = json!(ev.count);
            o["unmapped"]["suppressed_budget"] = json!(ev.suppressed);
        }
        EventKind::Deny => {
            o["unmapped"]["suppressed"] = json!(ev.count);
            o["unmapped"]["suppressed_budget"] = json!(ev.suppressed);
        }
        EventKind::FlowStart | EventKind::Audit => {}
    }
    without_nulls(&mut v);
    Some(v)
}

/// Where the connection log is written: a file at the configured path, or stdout.
///
/// A file follows logrotate's `create` convention: after the old file is renamed,
/// [`LogOutput::reopen`] (on SIGHUP) opens a new file at the configured path, so records
/// stop going to the renamed one.
pub struct LogOutput {
    path: Option<std::path::PathBuf>,
    out: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
}

impl LogOutput {
    /// Opens `path` for appending (created mode 0600 with its folder), or stdout.
    pub fn open(path: Option<&std::path::Path>) -> anyhow::Result<LogOutput> {
        let out: Box<dyn std::io::Write + Send> = match path {
            Some(path) => Box::new(open_file(path)?),
            None => Box::new(std::io::stdout()),
        };
        Ok(LogOutput {
            path: path.map(std::path::Path::to_path_buf),
            out: std::io::BufWriter::new(out),
        })
    }

    /// Flushes what is buffered to the current file and opens the configured path anew.
    /// Returns the path reopened (none for stdout). On an error the current file stays
    /// in use, so no record is lost.
    pub fn reopen(&mut self) -> anyhow::Result<Option<&std::path::Path>> {
        use std::io::Write as _;
        let Some(path) = self.path.as_deref() else {
            return Ok(None);
        };
        let _ = self.out.flush();
        let file = open_file(path)?;
        self.out = std::io::BufWriter::new(Box::new(file));
        Ok(Some(path))
    }
}

/// The log file at `path`, appended to, private (mode 0600: it names users, devices and
/// addresses); its folder is created when missing.
fn open_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    super::config::open_log(path)
}

impl std::io::Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::{FlowKey, addr::from_v4};
    use policy_compiler::Host;

    fn view() -> HostView {
        let text = include_str!("../../../examples/company.toml");
        let now = 1_800_000_000;
        let p = policy_compiler::parse(text, "company.toml", now)
            .unwrap()
            .policy;
        policy_compiler::compile(&p, &Host::Connector("dc-connector-1".into()), now).unwrap()
    }

    fn event(view: &HostView, kind: EventKind) -> Event {
        let principal = *view
            .principals
            .iter()
            .find(|(_, p)| p.name == "alice-laptop")
            .unwrap()
            .0;
        let rule = *view
            .rule_meta
            .iter()
            .find(|(_, m)| {
                matches!(&m.kind, RuleKind::Grant { grant, resource, .. }
                    if grant == "engineering-ssh" && resource == "ssh-bastions")
            })
            .unwrap()
            .0;
        let atom = *view
            .atom_meta
            .iter()
            .find(|(_, a)| a.resources.iter().any(|r| r == "ssh-bastions"))
            .unwrap()
            .0;
        Event {
            kind: kind as u8,
            reason: Reason::Allowed as u8,
            rule,
            principal,
            atom,
            key: FlowKey {
                src: from_v4([198, 19, 0, 10]),
                dst: from_v4([198, 18, 1, 5]),
                src_port: 40000u16.to_be_bytes(),
                dst_port: 22u16.to_be_bytes(),
                proto: proto::TCP,
                family: 4,
                ..FlowKey::default()
            },
            packets: 10,
            bytes: 1000,
            reply_packets: 8,
            reply_bytes: 5000,
            first_seen_ns: 1_000_000_000,
            ts_ns: 3_500_000_000,
            ..Event::default()
        }
    }

    #[test]
    fn records_name_who_what_where_and_why() {
        let view = view();
        let cx = Context {
            view: &view,
            host: "connector:dc-connector-1",
            clock: BootClock::new(),
            endpoints: None,
            names: None,
        };
        let r = record(&event(&view, EventKind::FlowEnd), &cx).unwrap();
        assert_eq!(r["event"], "flow_end");
        assert_eq!(r["verdict"], "allow");
        assert_eq!(r["user"], "alice@example.com");
        assert_eq!(r["device"], "alice-laptop");
        assert_eq!(r["service_account"], Value::Null);
        assert_eq!(r["resource"], "ssh-bastions");
        assert_eq!(r["rule"], "engineering-ssh");
        assert_eq!(r["connector"], "dc-connector-1");
        assert_eq!(r["remote_network"], "datacenter");
        assert_eq!(r["src_ip"], "198.19.0.10");
        assert_eq!(r["dst_ip"], "198.18.1.5");
        assert_eq!(r["protocol"], "tcp");
        assert_eq!(r["dst_port"], 22);
        assert_eq!(r["duration_ms"], 2500);
        assert_eq!(r["reply_bytes"], 5000);
        assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn ocsf_records_are_network_activity() {
        let view = view();
        let cx = Context {
            view: &view,
            host: "connector:dc-connector-1",
            clock: BootClock::new(),
            endpoints: None,
            names: None,
        };
        let o = ocsf(&event(&view, EventKind::FlowStart), &cx).unwrap();
        assert_eq!(o["class_uid"], 4001);
        assert_eq!(o["category_uid"], 4);
        assert_eq!(o["activity_id"], 1);
        assert_eq!(o["type_uid"], 400101);
        assert_eq!(o["disposition_id"], 1);
        assert_eq!(o["actor"]["user"]["email_addr"], "alice@example.com");
        // The reporting host is `device`; the client is the source endpoint.
        assert_eq!(o["device"]["name"], "connector:dc-connector-1");
        assert_eq!(o["src_endpoint"]["name"], "alice-laptop");
        assert_eq!(o["src_endpoint"]["ip"], "198.19.0.10");
        assert!(o.get("duration").is_none() && o.get("traffic").is_none());
        let end = ocsf(&event(&view, EventKind::FlowEnd), &cx).unwrap();
        assert_eq!(end["duration"], 2500);
        assert_eq!(
            end["end_time"].as_i64().unwrap() - end["start_time"].as_i64().unwrap(),
            2500
        );
        assert_eq!(end["traffic"]["bytes_in"], 5000);
        assert_eq!(o["dst_endpoint"]["port"], 22);
        assert_eq!(o["dst_endpoint"]["name"], "ssh-bastions");
        assert_eq!(o["policy"]["name"], "engineering-ssh");
        assert!(o["time"].as_i64().unwrap() > 0);
        let mut deny = event(&view, EventKind::Deny);
        deny.reason = Reason::DeniedNoGrant as u8;
        deny.rule = 0;
        let o = ocsf(&deny, &cx).unwrap();
        assert_eq!(o["activity_id"], 5);
        assert_eq!(o["disposition_id"], 2);
        assert_eq!(o["policy"]["name"], "default-deny");
    }
}
