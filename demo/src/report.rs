//! Each outcome checked against the policy and printed: probes, scan, logs, status.

use crate::prelude::*;

/// Each probe against the policy, on the client, the resource host and in the logs.
pub(crate) fn report_probes(
    checks: &mut Checks,
    env: &Env,
    traffic: &Traffic,
    logs: &Logs,
) -> Result<()> {
    let (conn, dev) = (&logs.conn, &logs.dev);
    let results = &traffic.results;
    println!("\n== what happened (checked against the policy)");
    let services = env.services.as_ref().context("services started above")?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "  {:<6} {:<20} {:<8} {:<34} logged",
        "who", "destination", "result", "stopped at"
    );
    for (p, o) in results {
        let c = client(p.who);
        let dst = format!("{} {}/{}", p.what, p.dst.port(), p.proto.name());
        let label = format!("{} -> {} {}/{}", c.name, p.what, p.dst, p.proto.name());
        let conn_start = find(conn, "flow_start", c.ip, p.dst, p.proto);
        let conn_end = find(conn, "flow_end", c.ip, p.dst, p.proto);
        let conn_deny = find(conn, "deny", c.ip, p.dst, p.proto);
        let dev_deny = find(dev, "deny", c.ip, p.dst, p.proto);
        let service = SERVICES
            .iter()
            .find(|(_, a, pr)| *a == p.dst && *pr == p.proto)
            .map(|(n, _, _)| *n);
        let server_saw = service.map_or(0, |n| services.saw(n, c.ip));
        match p.expect {
            Expect::Allow { rule } => {
                checks.check(
                    matches!(o, Outcome::Exchanged { .. }),
                    format!("{label} is allowed and must work: {}", o.describe()),
                );
                checks.check(
                    server_saw >= 1,
                    format!("{label}: the resource host never saw it"),
                );
                check_allowed_records(checks, &label, p, rule, &conn_start, &conn_end);
                if p.who == Who::Alice {
                    let dev_start = find(dev, "flow_start", c.ip, p.dst, p.proto);
                    checks.check(
                        dev_start
                            .iter()
                            .any(|r| s(r, "rule") == rule && s(r, "host") == "device:alice-laptop"),
                        format!("{label}: alice's own log has a flow_start naming rule {rule}"),
                    );
                }
                let counters = conn_end
                    .first()
                    .map(|r| {
                        format!(
                            "{} pkts/{} B out, {} pkts/{} B back",
                            r["packets"], r["bytes"], r["reply_packets"], r["reply_bytes"]
                        )
                    })
                    .unwrap_or_else(|| "no flow_end".into());
                let _ = writeln!(
                    table,
                    "  {:<6} {:<20} {:<8} {:<34} flow_start+flow_end, rule {rule}, {counters}",
                    c.name, dst, "reached", "-"
                );
            }
            Expect::Deny { at, reason, rule } => {
                checks.check(
                    o.blocked(),
                    format!(
                        "{label} is denied and must not get through: {}",
                        o.describe()
                    ),
                );
                checks.check(
                    server_saw == 0,
                    format!("{label}: the resource host saw {server_saw} connections"),
                );
                let (here, other, here_name, other_name) = match at {
                    Where::ClientEgress => (&dev_deny, &conn, "alice's own log", "connector"),
                    Where::Connector => (&conn_deny, &dev, "connector log", "device"),
                };
                let good = |r: &&Value| {
                    s(r, "verdict") == "deny"
                        && s(r, "reason") == reason
                        && s(r, "user") == c.user
                        && s(r, "device") == c.device
                        && s(r, "resource") == p.resource
                        && s(r, "remote_network") == NETWORK
                        && rule.is_none_or(|rule| s(r, "rule") == rule)
                };
                checks.check(
                    here.iter().any(good),
                    format!(
                        "{label}: {here_name} has a deny with reason {reason}{}, user {}, device \
                         {}, resource {}, network {NETWORK} (got: {})",
                        rule.map(|r| format!(", rule {r}")).unwrap_or_default(),
                        c.user,
                        c.device,
                        p.resource,
                        here.first()
                            .map(|r| compact(r))
                            .unwrap_or_else(|| "none".into())
                    ),
                );
                if at == Where::ClientEgress {
                    // Stopped on alice's host: the connector never saw the packet.
                    let seen: Vec<&Value> = other
                        .iter()
                        .filter(|r| {
                            ip_of(&r["src_ip"]) == Some(IpAddr::V4(c.ip))
                                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(*p.dst.ip()))
                                && port_of(&r["dst_port"]) == Some(u64::from(p.dst.port()))
                        })
                        .collect();
                    checks.check(
                        seen.is_empty(),
                        format!(
                            "{label}: stopped on alice's host, yet the {other_name} logged it: {}",
                            seen.first().map(|r| compact(r)).unwrap_or_default()
                        ),
                    );
                }
                let where_ = match (at, here.is_empty()) {
                    (Where::ClientEgress, false) => "alice's laptop (agent, TC egress)",
                    (Where::Connector, false) => "connector (XDP ingress)",
                    (_, true) => "? (no deny logged)",
                };
                let how = here
                    .first()
                    .map(|r| {
                        let rule = s(r, "rule");
                        format!(
                            "deny {}{}",
                            s(r, "reason"),
                            if rule.is_empty() {
                                String::new()
                            } else {
                                format!(", rule {rule}")
                            }
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    table,
                    "  {:<6} {:<20} {:<8} {:<34} {how}",
                    c.name,
                    dst,
                    if o.blocked() { "blocked" } else { "LEAKED" },
                    where_
                );
            }
        }
    }
    print!("{table}");
    // Bob (no agent) must not have reached anything on the resource host.
    checks.check(
        services.saw_from(BOB.ip) == 0,
        format!(
            "the resource host saw {} connections from bob",
            services.saw_from(BOB.ip)
        ),
    );

    Ok(())
}

/// The scan: nothing answered, exactly one alert naming bob.
pub(crate) fn report_scan(checks: &mut Checks, traffic: &Traffic, logs: &Logs) {
    let (conn, scan_results) = (&logs.conn, &traffic.scan);
    let scan_blocked = scan_results.iter().filter(|(_, o)| o.blocked()).count();
    let scan_reached: Vec<u16> = scan_results
        .iter()
        .filter(|(_, o)| o.reached())
        .map(|(p, _)| *p)
        .collect();
    let alerts: Vec<&Value> = conn
        .iter()
        .filter(|r| is_event(r, "scan_alert", BOB.ip))
        .collect();
    let scan_denies: Vec<&Value> = conn
        .iter()
        .filter(|r| {
            is_event(r, "deny", BOB.ip)
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(WEB))
                && port_of(&r["dst_port"])
                    .is_some_and(|p| SCAN_PORTS.iter().any(|&s| u64::from(s) == p))
        })
        .collect();
    let suppressed: u64 = conn
        .iter()
        .filter(|r| is_event(r, "deny", BOB.ip))
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    println!("\n== port scan");
    checks.check(
        scan_reached.is_empty(),
        format!("the scan got answers from ports {scan_reached:?}: they must be dropped"),
    );
    checks.check(
        scan_blocked == SCAN_PORTS.len(),
        format!(
            "every scanned port must go unanswered, {} did not: {:?}",
            SCAN_PORTS.len() - scan_blocked,
            scan_results
                .iter()
                .filter(|(_, o)| !o.blocked())
                .map(|(p, o)| format!("{p}: {}", o.describe()))
                .collect::<Vec<_>>()
        ),
    );
    checks.check(
        alerts.len() == 1,
        format!("exactly one scan_alert for bob, got {}", alerts.len()),
    );
    if let Some(a) = alerts.first() {
        let distinct = a["distinct_ports"].as_u64().unwrap_or(0);
        checks.check(
            distinct >= 12,
            format!(
                "scan_alert distinct_ports >= 12, got {}",
                a["distinct_ports"]
            ),
        );
        checks.check(
            s(a, "user") == BOB.user && s(a, "device") == BOB.device,
            format!("scan_alert names bob and bob-laptop: {}", compact(a)),
        );
        println!(
            "  scan_alert at {} on {}: {} ({}) hit {distinct} distinct denied ports within 10 s",
            s(a, "timestamp"),
            s(a, "host"),
            s(a, "device"),
            s(a, "src_ip"),
        );
    }
    println!(
        "  no port answered; the connector logged {} deny records for the scanned ports (deny \
         records are rate-limited per source{}; its counters below count every drop)",
        scan_denies.len(),
        if suppressed > 0 {
            format!(", {suppressed} reported as suppressed")
        } else {
            String::new()
        }
    );
}

/// Field completeness of every record, counts, and sample records.
pub(crate) fn report_logs(checks: &mut Checks, logs: &Logs) {
    let (conn, dev, conn_log, dev_log) = (&logs.conn, &logs.dev, &logs.conn_path, &logs.dev_path);
    let alerts: Vec<&Value> = conn
        .iter()
        .filter(|r| is_event(r, "scan_alert", BOB.ip))
        .collect();
    let mut problems = Vec::new();
    for (name, recs) in [("connector", conn), ("device", dev)] {
        for r in recs {
            for p in record_problems(r) {
                problems.push(format!("{name} log: {p} in {}", compact(r)));
            }
        }
    }
    for p in problems.iter().take(10) {
        checks.check(false, p.clone());
    }
    if problems.len() > 10 {
        checks.check(
            false,
            format!("... and {} more record problems", problems.len() - 10),
        );
    }
    let count = |recs: &[Value], e: &str| recs.iter().filter(|r| s(r, "event") == e).count();
    println!("\n== connection logs");
    for (name, recs, path) in [
        ("connector demo-connector", &conn, &conn_log),
        ("device alice-laptop", &dev, &dev_log),
    ] {
        println!(
            "  {name}: {} records ({} flow_start, {} flow_end, {} deny, {} scan_alert) in {}",
            recs.len(),
            count(recs, "flow_start"),
            count(recs, "flow_end"),
            count(recs, "deny"),
            count(recs, "scan_alert"),
            path.display()
        );
    }
    println!(
        "  every record has all {} fields (+ per-event fields): {}",
        BASE_FIELDS.len(),
        if problems.is_empty() { "yes" } else { "NO" }
    );
    let web = SocketAddrV4::new(WEB, 443);
    if let Some(r) = find(conn, "flow_end", ALICE.ip, web, Proto::Tcp).first() {
        println!("\n  alice's web connection as the connector logged it (flow_end):");
        let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
        for l in pretty.lines() {
            println!("    {l}");
        }
    }
    println!("\n  more samples (one JSON object per line in the log; nulls left out here):");
    let samples = [
        find(
            dev,
            "deny",
            ALICE.ip,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            conn,
            "deny",
            BOB.ip,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            conn,
            "flow_end",
            ALICE.ip,
            SocketAddrV4::new(DNS, 53),
            Proto::Udp,
        )
        .first()
        .copied(),
        alerts.first().copied(),
    ];
    for r in samples.into_iter().flatten() {
        println!("    {}", compact(r));
    }
}

/// Kernel counters (every drop counts, rate limit or not), `gateway-agent status`, metrics.
pub(crate) fn report_status(checks: &mut Checks, env: &Env) {
    let counter = |a: &Agent, reason: &str| -> Option<u64> {
        let out = a.status("json").ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["verdicts"][reason].as_u64()
    };
    let (conn_agent, dev_agent) = (&env.agents[0], &env.agents[1]);
    // Bob: web + dns (no grant) and the 30 scanned ports; db is denied by rule.
    let bob_no_grant = 2 + SCAN_PORTS.len() as u64;
    let c_ng = counter(conn_agent, "denied_no_grant");
    checks.check(
        c_ng.is_some_and(|n| n >= bob_no_grant),
        format!("connector counter denied_no_grant >= {bob_no_grant}, got {c_ng:?}"),
    );
    let c_rule = counter(conn_agent, "denied_by_rule");
    checks.check(
        c_rule.is_some_and(|n| n >= 1),
        format!("connector counter denied_by_rule >= 1, got {c_rule:?}"),
    );
    let d_ng = counter(dev_agent, "denied_no_grant");
    checks.check(
        d_ng.is_some_and(|n| n >= 2),
        format!("alice-laptop counter denied_no_grant >= 2, got {d_ng:?}"),
    );
    println!("\n== agent status (gateway-agent status)");
    for a in &env.agents {
        match a.status("text") {
            Ok(out) if out.status.success() => {
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  {l}");
                }
            }
            Ok(out) => {
                checks.check(
                    false,
                    format!(
                        "gateway-agent status for {}: {}",
                        a.label,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            Err(e) => {
                checks.check(
                    false,
                    format!("gateway-agent status for {}: {e:#}", a.label),
                );
            }
        }
        println!();
    }
    match scrape_metrics(&env.conn) {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.contains("scan") || l.contains("deny") || l.contains("denied"))
                .filter(|l| !l.ends_with(" 0"))
                .take(8)
                .collect();
            println!(
                "  metrics (connector, http://127.0.0.1:{METRICS_PORT}/metrics in its namespace), a few lines:"
            );
            for l in lines {
                println!("    {l}");
            }
        }
        Err(e) => println!("  (metrics not scraped: {e:#})"),
    }
}

pub(crate) fn check_allowed_records(
    checks: &mut Checks,
    label: &str,
    p: &Probe,
    rule: &str,
    starts: &[&Value],
    ends: &[&Value],
) {
    let c = client(p.who);
    checks.check(
        starts.iter().any(|r| {
            s(r, "verdict") == "allow"
                && s(r, "reason") == "allowed"
                && s(r, "user") == c.user
                && s(r, "device") == c.device
                && s(r, "resource") == p.resource
                && s(r, "connector") == CONNECTOR
                && s(r, "remote_network") == NETWORK
                && s(r, "rule") == rule
                && s(r, "host") == format!("connector:{CONNECTOR}")
        }),
        format!(
            "{label}: the connector logs flow_start with user {}, device {}, resource {}, \
             connector {CONNECTOR}, network {NETWORK}, rule {rule} (got: {})",
            c.user,
            c.device,
            p.resource,
            starts
                .first()
                .map(|r| compact(r))
                .unwrap_or_else(|| "none".into())
        ),
    );
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    checks.check(
        ends.iter().any(|r| {
            n(r, "packets") >= 3
                && n(r, "reply_packets") >= 3
                && n(r, "bytes") > 0
                && n(r, "reply_bytes") > 0
        }),
        format!(
            "{label}: the connector logs flow_end with packets and replies counted (got: {})",
            ends.first()
                .map(|r| compact(r))
                .unwrap_or_else(|| "none".into())
        ),
    );
}

pub(crate) fn print_policy_overview(text: &str) {
    let Ok(v) = text.parse::<toml::Table>() else {
        println!("  (not TOML?)");
        return;
    };
    let names = |k: &str, field: &str| -> Vec<String> {
        v.get(k)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get(field).and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |k: &str, field: &str| names(k, field).join(", ");
    println!("  remote networks: {}", list("remote_network", "name"));
    println!("  resources:       {}", list("resource", "name"));
    println!("  users:           {}", list("user", "email"));
    println!("  devices:         {}", list("device", "name"));
    println!("  groups:          {}", list("group", "name"));
    println!(
        "  rules:           allow {}; deny {}",
        list("allow", "name"),
        list("deny", "name")
    );
    println!("  tests:           {}", names("test", "name").len());
}

pub(crate) fn scrape_metrics(conn: &NetNs) -> Result<String> {
    conn.run(|| -> Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.take(1 << 20).read_to_string(&mut body)?;
        Ok(body)
    })?
}
