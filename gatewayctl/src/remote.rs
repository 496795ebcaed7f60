//! Parsing and formatting helpers of the remote (controller) commands: object kinds,
//! durations, times and the controller URL.

use gateway_proto::v1::ObjectKind;

/// Kinds accepted on the command line, for error messages.
pub const KINDS_HELP: &str = "remote-network, resource, user, device, service-account, group, grant, test, connector (singular or plural, `-` or `_`)";

/// The kinds, in policy order, with their snake_case name (the TOML section; `grant`
/// stands for `[[allow]]` and `[[deny]]`).
pub const KINDS: [(ObjectKind, &str); 9] = [
    (ObjectKind::RemoteNetwork, "remote_network"),
    (ObjectKind::Resource, "resource"),
    (ObjectKind::User, "user"),
    (ObjectKind::Device, "device"),
    (ObjectKind::ServiceAccount, "service_account"),
    (ObjectKind::Group, "group"),
    (ObjectKind::Grant, "grant"),
    (ObjectKind::Test, "test"),
    (ObjectKind::Connector, "connector"),
];

/// Parses a kind: `remote-network`, `remote_networks`, `Resource`, `grants`, ...
pub fn parse_kind(s: &str) -> Result<ObjectKind, String> {
    let norm = s.trim().to_ascii_lowercase().replace('-', "_");
    let singular = norm.strip_suffix('s').unwrap_or(&norm);
    KINDS
        .iter()
        .find(|(_, n)| *n == norm || *n == singular)
        .map(|(k, _)| *k)
        .ok_or_else(|| format!("unknown kind `{s}` (valid: {KINDS_HELP})"))
}

/// The snake_case name of a kind (`remote_network`, ...); `unknown` for others.
pub fn kind_name(k: i32) -> &'static str {
    KINDS
        .iter()
        .find(|(kind, _)| *kind as i32 == k)
        .map_or("unknown", |(_, n)| n)
}

/// The key that names objects of a kind (`email` for users, else `name`).
pub fn name_key(k: ObjectKind) -> &'static str {
    if k == ObjectKind::User {
        "email"
    } else {
        "name"
    }
}

/// Parses a duration: `90s`, `30m`, `1h`, `7d`, or plain seconds (`3600`).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86_400),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format!("invalid duration `{s}` (expected a positive number with s, m, h or d, e.g. `90s`, `30m`, `1h`, `7d`)")
        })
}

/// Longest lifetime of an API key (`keys create --ttl`), as the controller enforces it.
pub const MAX_KEY_TTL_SECS: u64 = 2 * 365 * 86_400;
/// Longest lifetime of an enrollment token (`enroll-token --ttl`).
pub const MAX_TOKEN_TTL_SECS: u64 = 365 * 86_400;

/// Parses a duration ([`parse_duration`]) and refuses one longer than `max_secs`,
/// naming the limit (nothing is capped silently).
pub fn parse_duration_at_most(s: &str, max_secs: u64) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d > max_secs {
        return Err(format!(
            "`{s}` is longer than the limit of {} ({max_secs}s): give a shorter duration",
            human_duration(max_secs)
        ));
    }
    Ok(d)
}

/// A duration in the largest whole unit that fits it (`730d`, `36h`, `90s`).
pub fn human_duration(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Unix milliseconds as RFC 3339 with milliseconds (`2026-01-01T10:00:00.500Z`).
pub fn format_ms(ms: i64) -> String {
    let secs = policy_compiler::format_rfc3339(ms.div_euclid(1000));
    let frac = ms.rem_euclid(1000);
    match secs.strip_suffix('Z') {
        Some(base) => format!("{base}.{frac:03}Z"),
        None => secs,
    }
}

/// Unix milliseconds as RFC 3339, seconds precision.
pub fn format_ms_secs(ms: i64) -> String {
    policy_compiler::format_rfc3339(ms.div_euclid(1000))
}

/// Parses an instant: RFC 3339 with optional fractional seconds
/// (`2026-01-01T10:00:00Z`, `2026-01-01T10:00:00.250Z`), or a duration before `now_ms`
/// (`15m`, `1h`, `7d`). Returns unix milliseconds.
pub fn parse_time_ms(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    if !t.contains('T')
        && let Ok(d) = parse_duration(t)
    {
        return Ok(now_ms - (d as i64).saturating_mul(1000));
    }
    let (whole, ms) = match t.find('.') {
        Some(dot) => {
            let rest = &t[dot + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut ms: i64 = 0;
            for i in 0..3 {
                ms = ms * 10
                    + rest
                        .as_bytes()
                        .get(i)
                        .filter(|_| i < digits)
                        .map_or(0, |b| i64::from(b - b'0'));
            }
            (format!("{}{}", &t[..dot], &rest[digits..]), ms)
        }
        None => (t.to_string(), 0),
    };
    policy_compiler::parse_rfc3339(&whole)
        .map(|secs| secs * 1000 + ms)
        .map_err(|e| {
            format!("invalid time `{s}`: {e} (expected RFC 3339, e.g. `2026-01-01T10:00:00Z`, or a duration ago, e.g. `1h`)")
        })
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks and normalizes the controller URL: `https://HOST:PORT`, or `http://HOST:PORT`
/// when HOST is a loopback address (plaintext never leaves the machine); a bare
/// `HOST:PORT` gets `https://`.
pub fn normalize_url(s: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "expected `https://HOST:PORT`, or `http://HOST:PORT` for a controller on loopback";
    let t = s.trim().trim_end_matches('/');
    if t.is_empty() {
        return Err(format!("empty controller URL ({EXPECTED})"));
    }
    let url = if t.contains("://") {
        t.to_string()
    } else {
        format!("https://{t}")
    };
    let (https, authority) = if let Some(a) = url.strip_prefix("https://") {
        (true, a)
    } else if let Some(a) = url.strip_prefix("http://") {
        (false, a)
    } else {
        return Err(format!("`{s}` is not a controller URL ({EXPECTED})"));
    };
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "`{s}` is not a controller URL ({EXPECTED}, without a path)"
        ));
    }
    if !https && !gateway_proto::plaintext_allowed(&url) {
        return Err(format!(
            "`{s}`: plaintext (http://) is for a controller on loopback only (127.0.0.1, ::1, \
             localhost); use https:// with --ca"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for s in [
            "remote-network",
            "remote_network",
            "remote-networks",
            "Remote_Networks",
        ] {
            assert_eq!(parse_kind(s), Ok(ObjectKind::RemoteNetwork), "{s}");
        }
        assert_eq!(
            parse_kind("service-accounts"),
            Ok(ObjectKind::ServiceAccount)
        );
        assert_eq!(parse_kind("grants"), Ok(ObjectKind::Grant));
        assert_eq!(parse_kind("users"), Ok(ObjectKind::User));
        assert_eq!(parse_kind("test"), Ok(ObjectKind::Test));
        let e = parse_kind("widget").unwrap_err();
        assert!(e.contains("widget") && e.contains("remote-network"), "{e}");
        assert_eq!(
            kind_name(ObjectKind::ServiceAccount as i32),
            "service_account"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert_eq!(parse_duration("600"), Ok(600));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1w").unwrap_err().contains("1h"));
        assert!(parse_duration("h").is_err());
        // Longer than the limit: refused with the limit, never capped.
        assert_eq!(
            parse_duration_at_most("730d", MAX_KEY_TTL_SECS),
            Ok(730 * 86_400)
        );
        let e = parse_duration_at_most("731d", MAX_KEY_TTL_SECS).unwrap_err();
        assert!(e.contains("limit of 730d"), "{e}");
        assert_eq!(human_duration(90), "90s");
        assert_eq!(human_duration(7200), "2h");
    }

    #[test]
    fn times() {
        assert_eq!(format_ms(1_767_261_600_500), "2026-01-01T10:00:00.500Z");
        assert_eq!(
            parse_time_ms("2026-01-01T10:00:00.5Z", 0),
            Ok(1_767_261_600_500)
        );
        assert_eq!(
            parse_time_ms("2026-01-01T10:00:00Z", 0),
            Ok(1_767_261_600_000)
        );
        assert_eq!(parse_time_ms("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert!(
            parse_time_ms("yesterday", 0)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("http://127.0.0.1:50051/"),
            Ok("http://127.0.0.1:50051".into())
        );
        assert_eq!(
            normalize_url("http://[::1]:50051"),
            Ok("http://[::1]:50051".into())
        );
        // A bare HOST:PORT is TLS, never plaintext.
        assert_eq!(
            normalize_url("127.0.0.1:50051"),
            Ok("https://127.0.0.1:50051".into())
        );
        assert_eq!(
            normalize_url("ctl.example:50051"),
            Ok("https://ctl.example:50051".into())
        );
        assert_eq!(normalize_url("https://x:1").unwrap(), "https://x:1");
        // Plaintext to anything but loopback is refused.
        for bad in [
            "http://10.0.0.5:50051",
            "http://ctl.example:50051",
            "http://127.0.0.1.example:1",
        ] {
            let e = normalize_url(bad).unwrap_err();
            assert!(e.contains("loopback only"), "{bad}: {e}");
        }
        assert!(normalize_url("ftp://x:1").is_err());
        assert!(normalize_url("http://x:1/path").is_err());
        assert!(normalize_url("").is_err());
    }
}
