//! Decoders: one map entry, as the programs read it, to an [`Entry`] (a text line and a
//! JSON object). Pure functions, unit-tested below.

use super::*;
/// `tcp`, `udp`, `icmp`, `icmpv6`, a few other names, else the number.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::ICMP => "icmp".into(),
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        4 => "ipip".into(),
        41 => "ipv6".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        132 => "sctp".into(),
        other => format!("proto-{other}"),
    }
}

/// A stored verdict byte, as the programs read it (an unknown byte denies).
fn verdict_name(b: u8) -> String {
    let v = Verdict::from_u8(b);
    if v as u8 == b {
        v.name().into()
    } else {
        format!("{}(byte {b})", v.name())
    }
}

fn reason_name(r: u32) -> String {
    let reason = Reason::from_u32(r);
    if reason as u32 == r {
        reason.name().into()
    } else {
        format!("{}(value {r})", reason.name())
    }
}

/// Boot-clock nanoseconds as seconds since boot, `u64::MAX` as `never`.
fn boot_secs(ns: u64) -> Value {
    if ns == u64::MAX {
        json!("never")
    } else {
        json!((ns as f64 / 1e9 * 1e3).round() / 1e3)
    }
}

fn boot_text(ns: u64) -> String {
    if ns == u64::MAX {
        "never".into()
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

/// `a.b.c.d:port` or `[v6]:port`.
fn endpoint(a: &Addr, port: u16) -> String {
    match addr(a) {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// An LPM address prefix of `bits` bits, IPv4 shown as IPv4 (`198.18.1.0/24`).
pub fn prefix_text(a: &Addr, bits: u32) -> String {
    match to_v4(a) {
        Some(v4) if bits >= 96 => {
            format!("{}/{}", std::net::Ipv4Addr::from(v4), (bits - 96).min(32))
        }
        _ => format!("{}/{}", std::net::Ipv6Addr::from(*a), bits.min(128)),
    }
}

fn slot_json(slot: u8, active: Option<u8>) -> (Value, String) {
    match active {
        Some(a) if a == slot => (json!(true), format!("slot {slot} (active)")),
        Some(_) => (json!(false), format!("slot {slot} (inactive)")),
        None => (Value::Null, format!("slot {slot}")),
    }
}

pub fn config_entry(c: &DataplaneConfig) -> Entry {
    let role = match Role::from_u8(c.role) {
        Some(Role::Connector) => "connector".to_string(),
        Some(Role::Device) => "device".to_string(),
        None if c.role == 0 => "unconfigured".to_string(),
        None => format!("unknown({})", c.role),
    };
    // The compiled-in key is public: a table written with it has no secret key.
    let key_set = c.hash_key != [0, 0] && c.hash_key != DataplaneConfig::DEFAULT.hash_key;
    let hash_key = if key_set { "set" } else { "unset" };
    let mut budget = serde_json::Map::new();
    let mut budget_text = Vec::new();
    for kind in EventKind::ALL {
        let n = c.budget.get(kind as usize).copied().unwrap_or(0);
        budget.insert(kind.name().into(), json!(n));
        budget_text.push(format!("{} {n}", kind.name()));
    }
    let secs = |ns: u64| ns as f64 / 1e9;
    let tunnel = c.tunnel != 0;
    let tunnel_text = if tunnel {
        format!(
            "on, WireGuard port {}, handshake initiations per source {} per s, burst {}",
            c.wg_port(),
            c.handshakes_per_source,
            c.handshake_burst
        )
    } else {
        "off".to_string()
    };
    Entry {
        text: format!(
            "role {role}, diagnostics {}, scan hash key {hash_key}\n    deny events per \
             source: {} per {}s; scan alert at {} ports or {} hosts within {}s\n    event \
             budgets per CPU per second: {}\n    tunnel {tunnel_text}",
            if c.diagnostics != 0 { "on" } else { "off" },
            c.deny_per_source,
            secs(c.deny_window_ns),
            c.scan_ports,
            c.scan_hosts,
            secs(c.scan_window_ns),
            budget_text.join(", ")
        ),
        json: json!({
            "role": role,
            "diagnostics": c.diagnostics != 0,
            "hash_key": hash_key,
            "deny_per_source": c.deny_per_source,
            "deny_window_s": secs(c.deny_window_ns),
            "scan_ports": c.scan_ports,
            "scan_hosts": c.scan_hosts,
            "scan_window_s": secs(c.scan_window_ns),
            "budget_per_cpu_per_s": budget,
            "tunnel": tunnel,
            "wg_port": c.wg_port(),
            "handshakes_per_source": c.handshakes_per_source,
            "handshake_burst": c.handshake_burst,
        }),
    }
}

pub fn active_entry(generation: u32) -> Entry {
    let slot = generation & 1;
    Entry {
        text: format!("generation {generation}, active slot {slot}"),
        json: json!({ "generation": generation, "slot": slot }),
    }
}

pub fn src_entry(k: &SrcKey, v: &SrcValue, active: Option<u8>) -> Entry {
    let (is_active, slot) = slot_json(k.generation, active);
    let a = addr(&k.addr);
    Entry {
        text: format!(
            "{:<15}  {slot}  principal {} class {}",
            a.to_string(),
            v.principal,
            v.class
        ),
        json: json!({
            "addr": a.to_string(),
            "slot": k.generation,
            "active": is_active,
            "principal": v.principal,
            "class": v.class,
        }),
    }
}

pub fn dst_entry(prefix_len: u32, k: &DstKey, v: &AtomValue, active: Option<u8>) -> Entry {
    let (is_active, slot) = slot_json(k.generation, active);
    let prefix = prefix_text(&k.addr, prefix_len.saturating_sub(DST_KEY_FIXED_BITS));
    let verdict = verdict_name(v.default_verdict);
    Entry {
        text: format!(
            "{prefix}  {slot}  atom {}  default {verdict} rule {}",
            v.atom, v.default_rule
        ),
        json: json!({
            "prefix": prefix,
            "slot": k.generation,
            "active": is_active,
            "atom": v.atom,
            "default_verdict": verdict,
            "default_rule": v.default_rule,
        }),
    }
}

/// The port block of a rule key: `port` with `bits` leading bits fixed.
pub fn port_block(port: u16, bits: u32) -> (u16, u16) {
    let bits = bits.min(16);
    let mask: u16 = if bits == 0 {
        0
    } else {
        (0xffff_u32 << (16 - bits)) as u16
    };
    let lo = port & mask;
    (lo, lo | !mask)
}

pub fn rule_entry(prefix_len: u32, k: &RuleKey, v: &RuleValue, active: Option<u8>) -> Entry {
    let (is_active, slot) = slot_json(k.generation, active);
    let (lo, hi) = port_block(
        u16::from_be_bytes(k.port),
        prefix_len.saturating_sub(RULE_KEY_FIXED_BITS),
    );
    let class = u32::from_be_bytes(k.class);
    let atom = u32::from_be_bytes(k.atom);
    let protocol = proto_name(k.proto);
    let verdict = verdict_name(v.verdict);
    let after = verdict_name(v.after_verdict);
    let expiry = if v.valid_until_ns == u64::MAX {
        String::new()
    } else {
        format!(
            " until {} then {after} rule {}",
            boot_text(v.valid_until_ns),
            v.after_rule
        )
    };
    Entry {
        text: format!(
            "{slot}  class {class} atom {atom}  {protocol} {lo}-{hi}  {verdict} rule {}{expiry}",
            v.rule
        ),
        json: json!({
            "slot": k.generation,
            "active": is_active,
            "class": class,
            "atom": atom,
            "protocol": protocol,
            "ports": format!("{lo}-{hi}"),
            "verdict": verdict,
            "rule": v.rule,
            "valid_until_s": boot_secs(v.valid_until_ns),
            "after_verdict": after,
            "after_rule": v.after_rule,
        }),
    }
}

/// `src:port -> dst:port proto`.
pub fn five_tuple(k: &FlowKey) -> String {
    format!(
        "{} -> {} {}",
        endpoint(&k.src, k.src_port()),
        endpoint(&k.dst, k.dst_port()),
        proto_name(k.proto)
    )
}

fn flow_key_json(k: &FlowKey) -> Value {
    json!({
        "src": addr(&k.src).to_string(),
        "src_port": k.src_port(),
        "dst": addr(&k.dst).to_string(),
        "dst_port": k.dst_port(),
        "protocol": proto_name(k.proto),
        "family": k.family,
    })
}

/// The names of `FlowState::SEEN_*` bits (unknown bits in hex).
pub fn flow_flags(flags: u32) -> Vec<String> {
    let known = [
        (FlowState::SEEN_REPLY, "seen_reply"),
        (FlowState::SEEN_FIN_ORIG, "fin_orig"),
        (FlowState::SEEN_FIN_REPLY, "fin_reply"),
        (FlowState::SEEN_RST, "rst"),
    ];
    let mut out: Vec<String> = known
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let rest = flags & !known.iter().fold(0, |a, (b, _)| a | b);
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out
}

pub fn flow_entry(k: &FlowKey, v: &FlowState) -> Entry {
    let flags = flow_flags(v.flags);
    let reason = reason_name(u32::from(v.reason));
    let mut json = flow_key_json(k);
    if let Value::Object(o) = &mut json {
        o.insert("flow".into(), json!(five_tuple(k)));
        for (f, val) in [
            ("packets", json!(v.packets)),
            ("bytes", json!(v.bytes)),
            ("reply_packets", json!(v.reply_packets)),
            ("reply_bytes", json!(v.reply_bytes)),
            ("flags", json!(flags)),
            ("generation", json!(v.generation)),
            ("reason", json!(reason)),
            ("rule", json!(v.rule)),
            ("principal", json!(v.principal)),
            ("atom", json!(v.atom)),
            ("ifindex", json!(v.ifindex)),
            ("first_seen_s", boot_secs(v.first_seen_ns)),
            ("last_seen_s", boot_secs(v.last_seen_ns)),
            ("valid_until_s", boot_secs(v.valid_until_ns)),
        ] {
            o.insert(f.into(), val);
        }
    }
    Entry {
        text: format!(
            "{}  {reason}  pkts {}/{} bytes {}/{}  flags {}  gen {} rule {} principal {} atom \
             {} ifindex {}  first {} last {} valid until {}",
            five_tuple(k),
            v.packets,
            v.reply_packets,
            v.bytes,
            v.reply_bytes,
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            },
            v.generation,
            v.rule,
            v.principal,
            v.atom,
            v.ifindex,
            boot_text(v.first_seen_ns),
            boot_text(v.last_seen_ns),
            boot_text(v.valid_until_ns),
        ),
        json,
    }
}

pub fn frag_entry(k: &FragKey, v: &FragState) -> Entry {
    let id = u32::from_be_bytes(k.id);
    let dir =
        Direction::from_u8(k.dir).map_or_else(|| format!("dir-{}", k.dir), |d| d.name().into());
    let protocol = if k.family == 6 {
        "-".to_string()
    } else {
        proto_name(k.proto)
    };
    Entry {
        text: format!(
            "{} -> {} {protocol} id {id:#x}  {dir}  gen {}  {} of {}",
            addr(&k.src),
            addr(&k.dst),
            v.generation,
            if v.reply != 0 { "reply" } else { "original" },
            five_tuple(&v.flow)
        ),
        json: json!({
            "src": addr(&k.src).to_string(),
            "dst": addr(&k.dst).to_string(),
            "protocol": protocol,
            "id": id,
            "family": k.family,
            "direction": dir,
            "generation": v.generation,
            "reply": v.reply != 0,
            "flow": flow_key_json(&v.flow),
        }),
    }
}

/// A `NAMES` entry: (device, proxy) -> real address, atom per key slot.
pub fn name_entry(
    k: &gateway_common::names::NameKey,
    v: &gateway_common::names::NameValue,
) -> Entry {
    Entry {
        text: format!(
            "{} via {} -> {}  atom slot0 {} slot1 {}",
            addr(&k.device),
            addr(&k.proxy),
            addr(&v.real),
            v.atoms[0].atom,
            v.atoms[1].atom
        ),
        json: json!({
            "device": addr(&k.device).to_string(),
            "proxy": addr(&k.proxy).to_string(),
            "real": addr(&v.real).to_string(),
            "atoms": [v.atoms[0].atom, v.atoms[1].atom],
        }),
    }
}

/// A `NAT` entry: a translated flow's tuple -> the address its packets get.
pub fn nat_entry(k: &FlowKey, v: &gateway_common::names::NatValue) -> Entry {
    Entry {
        text: format!("{}  -> {}", five_tuple(k), addr(&v.addr)),
        json: json!({
            "flow": flow_key_json(k),
            "addr": addr(&v.addr).to_string(),
        }),
    }
}

pub fn source_entry(a: &Addr, s: &SourceState) -> Entry {
    let prefix = prefix_text(a, if to_v4(a).is_some() { 128 } else { 64 });
    let alerted: Vec<&str> = [ScanKind::Ports, ScanKind::Hosts]
        .into_iter()
        .filter(|k| s.alerted & (*k as u32) != 0)
        .map(|k| k.name())
        .collect();
    Entry {
        text: format!(
            "{prefix}  deny events {} suppressed {}  distinct denied ports {} hosts {}  \
             alerted {}  deny window from {} scan window from {}",
            s.deny_events,
            s.deny_suppressed,
            s.ports_distinct,
            s.hosts_distinct,
            if alerted.is_empty() {
                "-".to_string()
            } else {
                alerted.join(",")
            },
            boot_text(s.deny_window_start_ns),
            boot_text(s.scan_window_start_ns),
        ),
        json: json!({
            "prefix": prefix,
            "deny_events": s.deny_events,
            "deny_suppressed": s.deny_suppressed,
            "ports_distinct": s.ports_distinct,
            "hosts_distinct": s.hosts_distinct,
            "alerted": alerted,
            "deny_window_start_s": boot_secs(s.deny_window_start_ns),
            "scan_window_start_s": boot_secs(s.scan_window_start_ns),
        }),
    }
}

/// A shield's WireGuard handshake bucket: the initiations it holds now (credit over the
/// cost of one, by `cfg`'s rate), as of its last update.
pub fn handshake_entry(a: &Addr, b: &HandshakeBucket, cfg: Option<&DataplaneConfig>) -> Entry {
    let prefix = prefix_text(a, if to_v4(a).is_some() { 128 } else { 64 });
    let cost = cfg
        .filter(|c| c.handshakes_per_source != 0)
        .map(|c| 1_000_000_000 / u64::from(c.handshakes_per_source));
    let tokens = cost.map(|cost| b.credit_ns / cost);
    Entry {
        text: format!(
            "{prefix}  initiations left {}  as of {}",
            tokens.map_or_else(|| "?".to_string(), |t| t.to_string()),
            boot_text(b.last_ns),
        ),
        json: json!({
            "prefix": prefix,
            "credit_ns": b.credit_ns,
            "initiations_left": tokens,
            "last_s": boot_secs(b.last_ns),
        }),
    }
}

pub fn counter_entry(name: &str, value: u64) -> Entry {
    Entry {
        text: format!("{name:<24} {value}"),
        json: json!({ "name": name, "value": value }),
    }
}

/// One event kind's budgets, summed over CPUs.
pub fn budget_entry<'a>(kind: EventKind, per_cpu: impl Iterator<Item = &'a Budget>) -> Entry {
    let (mut sent, mut suppressed, mut total) = (0u64, 0u64, 0u64);
    for b in per_cpu {
        sent += u64::from(b.sent);
        suppressed += u64::from(b.suppressed);
        total += b.suppressed_total;
    }
    debug_assert!((kind as u32) < EVENT_KINDS);
    Entry {
        text: format!(
            "{:<12} sent this window {sent}  suppressed since last sent {suppressed}  \
             suppressed in all {total}",
            kind.name()
        ),
        json: json!({
            "kind": kind.name(),
            "sent_in_window": sent,
            "suppressed_since_sent": suppressed,
            "suppressed_total": total,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::addr::from_v4;

    fn v6(s: &str) -> Addr {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    fn tcp_key() -> FlowKey {
        FlowKey {
            src: from_v4([198, 19, 1, 10]),
            dst: from_v4([198, 18, 1, 5]),
            src_port: 40000u16.to_be_bytes(),
            dst_port: 443u16.to_be_bytes(),
            proto: proto::TCP,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn handshake_buckets_and_tunnel_config_decode() {
        let cfg = DataplaneConfig::DEFAULT.with_tunnel(51_820, 20, 40);
        let e = config_entry(&cfg);
        assert_eq!(e.json["tunnel"], true);
        assert_eq!(e.json["wg_port"], 51_820);
        assert!(e.text.contains("WireGuard port 51820"), "{}", e.text);
        assert_eq!(config_entry(&cfg.without_tunnel()).json["tunnel"], false);
        let b = HandshakeBucket {
            credit_ns: 3 * 50_000_000 + 1,
            last_ns: 0,
        };
        let e = handshake_entry(&from_v4([192, 0, 2, 7]), &b, Some(&cfg));
        assert_eq!(e.json["prefix"], "192.0.2.7/32");
        assert_eq!(e.json["initiations_left"], 3);
        let e = handshake_entry(&v6("2001:db8:77:1::"), &b, None);
        assert_eq!(e.json["prefix"], "2001:db8:77:1::/64");
        assert!(e.json["initiations_left"].is_null());
    }

    #[test]
    fn flows_name_their_five_tuple_flags_and_reason() {
        let st = FlowState {
            packets: 3,
            bytes: 180,
            reply_packets: 2,
            reply_bytes: 120,
            first_seen_ns: 1_500_000_000,
            last_seen_ns: 2_000_000_000,
            valid_until_ns: u64::MAX,
            generation: 3,
            rule: 7,
            principal: 1,
            atom: 2,
            ifindex: 4,
            flags: FlowState::SEEN_REPLY | FlowState::SEEN_FIN_ORIG | 0x100,
            reason: Reason::Allowed as u8,
            _pad: [0; 7],
        };
        let e = flow_entry(&tcp_key(), &st);
        assert!(
            e.text
                .starts_with("198.19.1.10:40000 -> 198.18.1.5:443 tcp  allowed  pkts 3/2"),
            "{}",
            e.text
        );
        assert!(
            e.text.contains("flags seen_reply,fin_orig,0x100"),
            "{}",
            e.text
        );
        assert!(e.text.contains("valid until never"), "{}", e.text);
        assert_eq!(e.json["src"], "198.19.1.10");
        assert_eq!(e.json["dst_port"], 443);
        assert_eq!(e.json["protocol"], "tcp");
        assert_eq!(e.json["reason"], "allowed");
        assert_eq!(e.json["first_seen_s"], 1.5);
        assert_eq!(e.json["valid_until_s"], "never");
        assert_eq!(e.json["flags"], json!(["seen_reply", "fin_orig", "0x100"]));
        let mut k6 = tcp_key();
        k6.src = v6("2001:db8:a2::11");
        k6.dst = v6("2001:db8:1::5");
        k6.proto = proto::UDP;
        k6.family = 6;
        assert_eq!(
            five_tuple(&k6),
            "[2001:db8:a2::11]:40000 -> [2001:db8:1::5]:443 udp"
        );
        let bad = FlowState { reason: 200, ..st };
        assert_eq!(
            flow_entry(&tcp_key(), &bad).json["reason"],
            "denied_malformed(value 200)"
        );
    }

    #[test]
    fn lpm_keys_decode_to_prefixes_and_port_blocks() {
        // IPv4 /24: 8 generation bits + 96 mapped bits + 24.
        let k = DstKey {
            generation: 1,
            addr: from_v4([198, 18, 1, 0]),
        };
        let v = AtomValue {
            atom: 5,
            default_verdict: Verdict::Audit as u8,
            _pad: [0; 3],
            default_rule: 9,
        };
        let e = dst_entry(8 + 96 + 24, &k, &v, Some(1));
        assert_eq!(
            e.text,
            "198.18.1.0/24  slot 1 (active)  atom 5  default audit rule 9"
        );
        assert_eq!(e.json["prefix"], "198.18.1.0/24");
        assert_eq!(e.json["active"], true);
        let k6 = DstKey {
            generation: 0,
            addr: v6("2001:db8:1::"),
        };
        let e = dst_entry(8 + 48, &k6, &v, Some(1));
        assert_eq!(e.json["prefix"], "2001:db8:1::/48");
        assert_eq!(e.json["active"], false);

        assert_eq!(port_block(443, 16), (443, 443));
        assert_eq!(port_block(1024, 6), (1024, 2047));
        assert_eq!(port_block(0, 0), (0, 65535));
        let rk = RuleKey {
            generation: 1,
            proto: proto::TCP,
            class: 2u32.to_be_bytes(),
            atom: 5u32.to_be_bytes(),
            port: 1024u16.to_be_bytes(),
        };
        let rv = RuleValue {
            verdict: Verdict::Allow as u8,
            after_verdict: Verdict::Deny as u8,
            rule: 4,
            after_rule: 0,
            valid_until_ns: 90_000_000_000,
            ..Default::default()
        };
        let e = rule_entry(RULE_KEY_FIXED_BITS + 6, &rk, &rv, None);
        assert_eq!(
            e.text,
            "slot 1  class 2 atom 5  tcp 1024-2047  allow rule 4 until 90.000s then deny rule 0"
        );
        assert_eq!(e.json["ports"], "1024-2047");
        assert_eq!(e.json["valid_until_s"], 90.0);
        let forever = RuleValue {
            valid_until_ns: u64::MAX,
            verdict: 7,
            ..rv
        };
        let e = rule_entry(RULE_KEY_FIXED_BITS + 16, &rk, &forever, None);
        assert!(
            e.text.ends_with("tcp 1024-1024  deny(byte 7) rule 4"),
            "{}",
            e.text
        );
    }

    #[test]
    fn config_never_shows_the_hash_key() {
        let mut c = DataplaneConfig {
            role: Role::Connector as u8,
            ..DataplaneConfig::DEFAULT
        };
        let e = config_entry(&c);
        assert_eq!(e.json["hash_key"], "unset", "the public default key");
        assert_eq!(e.json["role"], "connector");
        assert_eq!(e.json["budget_per_cpu_per_s"]["deny"], 2000);
        assert_eq!(e.json["scan_window_s"], 10.0);
        c.hash_key = [0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
        let e = config_entry(&c);
        assert_eq!(e.json["hash_key"], "set");
        for hex in ["123456789abcdef0", "fedcba987654321", "1311768467463790320"] {
            assert!(!e.text.contains(hex) && !e.json.to_string().contains(hex));
        }
        c.role = 0;
        assert!(config_entry(&c).text.starts_with("role unconfigured"));
    }

    #[test]
    fn sources_frags_and_counters() {
        let s = SourceState {
            deny_events: 5,
            ports_distinct: 12,
            alerted: ScanKind::Ports as u32,
            ..Default::default()
        };
        let e = source_entry(&from_v4([198, 19, 1, 10]), &s);
        assert_eq!(e.json["prefix"], "198.19.1.10/32");
        assert_eq!(e.json["alerted"], json!(["ports"]));
        let e = source_entry(&v6("2001:db8:a2::"), &s);
        assert_eq!(e.json["prefix"], "2001:db8:a2::/64");

        let fk = FragKey {
            src: from_v4([198, 19, 1, 10]),
            dst: from_v4([198, 18, 1, 53]),
            id: [0, 0, 0x12, 0x34],
            proto: proto::UDP,
            family: 4,
            dir: Direction::Outbound as u8,
            _pad: 0,
        };
        let fs = FragState {
            flow: tcp_key(),
            generation: 2,
            reply: 0,
            _pad: [0; 3],
        };
        let e = frag_entry(&fk, &fs);
        assert!(
            e.text
                .starts_with("198.19.1.10 -> 198.18.1.53 udp id 0x1234  outbound  gen 2"),
            "{}",
            e.text
        );
        assert_eq!(e.json["flow"]["dst_port"], 443);

        assert_eq!(
            counter_entry("allowed", 3).json,
            json!({"name": "allowed", "value": 3})
        );
        let b = [
            Budget {
                sent: 2,
                suppressed_total: 5,
                ..Default::default()
            },
            Budget {
                sent: 1,
                suppressed: 1,
                suppressed_total: 1,
                ..Default::default()
            },
        ];
        let e = budget_entry(EventKind::Deny, b.iter());
        assert_eq!(e.json["sent_in_window"], 3);
        assert_eq!(e.json["suppressed_total"], 6);
    }

    #[test]
    fn map_names_resolve_or_list_the_valid_ones() {
        assert_eq!(select(&[]).unwrap(), maps::PERSISTENT.to_vec());
        assert_eq!(
            select(&["flows_tcp".into(), "FLOWS_TCP_V2".into(), "src".into()]).unwrap(),
            vec![maps::FLOWS_TCP, maps::SRC]
        );
        let e = select(&["FLOWZ".into()]).unwrap_err().to_string();
        assert!(e.contains("no map named \"FLOWZ\""), "{e}");
        for m in maps::PERSISTENT {
            assert!(e.contains(m), "{e} lacks {m}");
        }
    }

    #[test]
    fn text_and_json_say_what_the_limit_left_out() {
        let d = MapDump {
            name: maps::FLOWS_TCP,
            kind: "lru_hash",
            capacity: 262_144,
            count: Some(3),
            entries: vec![counter_entry("x", 1)],
        };
        let mut t = String::new();
        d.write_text(&mut t);
        assert!(t.starts_with("== FLOWS_TCP_V2 (lru_hash): 3 entries, capacity 262144\n"));
        assert!(t.contains("... 2 more not shown (--limit 1)"), "{t}");
        let j = d.to_json();
        assert_eq!(j["omitted"], 2);
        assert_eq!(j["shown"], 1);
        let ring = MapDump {
            name: maps::EVENTS_FLOW,
            kind: "ringbuf",
            capacity: maps::EVENTS_FLOW_BYTES,
            count: None,
            entries: vec![],
        };
        assert_eq!(ring.to_json()["size_bytes"], maps::EVENTS_FLOW_BYTES);
        let lines = render_json_lines(&[
            (maps::FLOWS_TCP, Ok(d)),
            (maps::SRC, Err(anyhow::anyhow!("gone"))),
        ]);
        let objs: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["error"], "gone");
    }
}
