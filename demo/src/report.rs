//! Each outcome checked against the policy and printed: probes, scan, logs, status.

use crate::prelude::*;

/// Each probe against the policy, on the client, the resource host and in the logs.
pub(crate) fn report_probes(checks: &mut Checks, traffic: &Traffic, logs: &Logs) -> Result<()> {
    let conn = &logs.conn;
    let results = &traffic.results;
    println!("\n== what happened (checked against the policy)");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "  {:<6} {:<20} {:<8} {:<40} logged",
        "who", "destination", "result", "stopped at"
    );
    for (p, o, seen) in results {
        let c = client(p.who);
        let own = logs.of(p.who);
        let dst = format!("{} {}/{}", p.what, p.dst.port(), p.proto.name());
        let label = format!("{} -> {} {}/{}", c.name, p.what, p.dst, p.proto.name());
        let conn_start = find(conn, "flow_start", c.overlay, p.dst, p.proto);
        let conn_end = find(conn, "flow_end", c.overlay, p.dst, p.proto);
        let own_deny = find(own, "deny", c.overlay, p.dst, p.proto);
        // Connections the probe's own service accepted while it ran.
        let service = SERVICES
            .iter()
            .find(|(_, a, pr)| *a == p.dst && *pr == p.proto)
            .map(|(n, _, _)| *n);
        let server_saw: Vec<IpAddr> = seen
            .iter()
            .filter(|(n, _)| Some(*n) == service)
            .map(|(_, ip)| *ip)
            .collect();
        match p.expect {
            Expect::Allow { rule } => {
                checks.check(
                    matches!(o, Outcome::Exchanged { .. }),
                    format!("{label} is allowed and must work: {}", o.describe()),
                );
                // Resources see the connector: it masquerades, they have no route back
                // to the overlay.
                checks.check(
                    !server_saw.is_empty()
                        && server_saw.iter().all(|ip| *ip == IpAddr::V4(CONN_RES_IP)),
                    format!(
                        "{label}: the resource host must see it from the connector \
                         ({CONN_RES_IP}, masquerading), saw {server_saw:?}"
                    ),
                );
                check_allowed_records(checks, &label, p, rule, &conn_start, &conn_end);
                let own_start = find(own, "flow_start", c.overlay, p.dst, p.proto);
                checks.check(
                    own_start.iter().any(|r| {
                        s(r, "rule") == rule && s(r, "host") == format!("device:{}", c.device)
                    }),
                    format!(
                        "{label}: {}'s own log has a flow_start naming rule {rule}",
                        c.name
                    ),
                );
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
                    "  {:<6} {:<20} {:<8} {:<40} flow_start+flow_end, rule {rule}, {counters}",
                    c.name, dst, "reached", "- (tunnel)"
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
                    server_saw.is_empty(),
                    format!("{label}: the resource host saw connections {server_saw:?}"),
                );
                let good = |r: &&Value| {
                    s(r, "verdict") == "deny"
                        && s(r, "reason") == reason
                        && s(r, "user") == c.user
                        && s(r, "device") == c.device
                        && s(r, "resource") == p.resource
                        && s(r, "remote_network") == NETWORK
                        && s(r, "host") == format!("device:{}", c.device)
                        && rule.is_none_or(|rule| s(r, "rule") == rule)
                };
                checks.check(
                    own_deny.iter().any(good),
                    format!(
                        "{label}: {}'s own log has a deny with reason {reason}{}, user {}, \
                         device {}, resource {}, network {NETWORK} (got: {})",
                        c.name,
                        rule.map(|r| format!(", rule {r}")).unwrap_or_default(),
                        c.user,
                        c.device,
                        p.resource,
                        own_deny
                            .first()
                            .map(|r| compact(r))
                            .unwrap_or_else(|| "none".into())
                    ),
                );
                // Stopped on the laptop before encryption: the connector never saw it.
                let seen_conn: Vec<&Value> = conn
                    .iter()
                    .filter(|r| {
                        ip_of(&r["src_ip"]) == Some(IpAddr::V4(c.overlay))
                            && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(*p.dst.ip()))
                            && port_of(&r["dst_port"]) == Some(u64::from(p.dst.port()))
                    })
                    .collect();
                checks.check(
                    seen_conn.is_empty(),
                    format!(
                        "{label}: stopped on {}'s laptop, yet the connector logged it: {}",
                        c.name,
                        seen_conn.first().map(|r| compact(r)).unwrap_or_default()
                    ),
                );
                let where_ = match (at, own_deny.is_empty()) {
                    (Where::ClientTunnelEgress, false) => {
                        format!("{}'s laptop (agent, tunnel egress)", c.name)
                    }
                    (_, true) => "? (no deny logged)".into(),
                };
                let how = own_deny
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
                    "  {:<6} {:<20} {:<8} {:<40} {how}",
                    c.name,
                    dst,
                    if o.blocked() { "blocked" } else { "LEAKED" },
                    where_
                );
            }
        }
    }
    print!("{table}");
    // Bob's denied attempts together: nothing reached any server on the resource host.
    let bob_leaks: Vec<_> = results
        .iter()
        .filter(|(p, _, _)| p.who == Who::Bob && matches!(p.expect, Expect::Deny { .. }))
        .flat_map(|(_, _, seen)| seen.iter())
        .collect();
    checks.check(
        bob_leaks.is_empty(),
        format!("during bob's denied attempts the resource host accepted {bob_leaks:?}"),
    );
    Ok(())
}

/// The scan: nothing answered, exactly one alert naming bob, raised by bob's own agent.
pub(crate) fn report_scan(checks: &mut Checks, traffic: &Traffic, logs: &Logs) {
    let (own, scan_results) = (&logs.bob, &traffic.scan);
    let scan_blocked = scan_results.iter().filter(|(_, o)| o.blocked()).count();
    let scan_reached: Vec<u16> = scan_results
        .iter()
        .filter(|(_, o)| o.reached())
        .map(|(p, _)| *p)
        .collect();
    let alerts: Vec<&Value> = own
        .iter()
        .filter(|r| is_event(r, "scan_alert", BOB.overlay))
        .collect();
    let scan_denies: Vec<&Value> = own
        .iter()
        .filter(|r| {
            is_event(r, "deny", BOB.overlay)
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(WEB))
                && port_of(&r["dst_port"])
                    .is_some_and(|p| SCAN_PORTS.iter().any(|&s| u64::from(s) == p))
        })
        .collect();
    let suppressed: u64 = own
        .iter()
        .filter(|r| is_event(r, "deny", BOB.overlay))
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    let conn_alerts = logs
        .conn
        .iter()
        .filter(|r| s(r, "event") == "scan_alert")
        .count();
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
        format!(
            "exactly one scan_alert for bob in bob-laptop's own log, got {}",
            alerts.len()
        ),
    );
    checks.check(
        conn_alerts == 0,
        format!("the scan never left bob's laptop: the connector logged {conn_alerts} scan_alerts"),
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
            s(a, "user") == BOB.user
                && s(a, "device") == BOB.device
                && s(a, "host") == format!("device:{}", BOB.device),
            format!(
                "scan_alert names bob and bob-laptop, raised on bob-laptop: {}",
                compact(a)
            ),
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
        "  no port answered; bob's own agent dropped every attempt before encryption and logged \
         {} deny records for the scanned ports (deny records are rate-limited per source{}; its \
         counters below count every drop)",
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
    let named: [(&str, &[Value], &PathBuf); 3] = [
        ("connector demo-connector", &logs.conn, &logs.paths[0]),
        ("device alice-laptop", &logs.alice, &logs.paths[1]),
        ("device bob-laptop", &logs.bob, &logs.paths[2]),
    ];
    let mut problems = Vec::new();
    for (name, recs, _) in named {
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
    for (name, recs, path) in named {
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
    if let Some(r) = find(&logs.conn, "flow_end", ALICE.overlay, web, Proto::Tcp).first() {
        println!(
            "\n  alice's web connection as the connector logged it (flow_end; src_ip her overlay \
             address, public_ip/public_port where her tunnel's packets came from):"
        );
        let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
        for l in pretty.lines() {
            println!("    {l}");
        }
    }
    println!("\n  more samples (one JSON object per line in the log; nulls left out here):");
    let samples = [
        find(
            &logs.alice,
            "deny",
            ALICE.overlay,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            &logs.bob,
            "deny",
            BOB.overlay,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            &logs.conn,
            "flow_end",
            ALICE.overlay,
            SocketAddrV4::new(DNS, 53),
            Proto::Udp,
        )
        .first()
        .copied(),
        logs.bob
            .iter()
            .find(|r| is_event(r, "scan_alert", BOB.overlay)),
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
    let (alice_agent, bob_agent) = (&env.agents[1], &env.agents[2]);
    // Bob: web + dns (no grant) and the 30 scanned ports; db is denied by rule. All on his
    // own laptop.
    let bob_no_grant = 2 + SCAN_PORTS.len() as u64;
    let b_ng = counter(bob_agent, "denied_no_grant");
    checks.check(
        b_ng.is_some_and(|n| n >= bob_no_grant),
        format!("bob-laptop counter denied_no_grant >= {bob_no_grant}, got {b_ng:?}"),
    );
    let b_rule = counter(bob_agent, "denied_by_rule");
    checks.check(
        b_rule.is_some_and(|n| n >= 1),
        format!("bob-laptop counter denied_by_rule >= 1, got {b_rule:?}"),
    );
    let a_ng = counter(alice_agent, "denied_no_grant");
    checks.check(
        a_ng.is_some_and(|n| n >= 2),
        format!("alice-laptop counter denied_no_grant >= 2, got {a_ng:?}"),
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
                .filter(|l| {
                    l.contains("tunnel")
                        || l.contains("allowed")
                        || l.contains("deny")
                        || l.contains("denied")
                })
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
                && ip_of(&r["public_ip"]) == Some(IpAddr::V4(c.ip))
        }),
        format!(
            "{label}: the connector logs flow_start with user {}, device {}, resource {}, \
             connector {CONNECTOR}, network {NETWORK}, rule {rule}, public_ip {} (got: {})",
            c.user,
            c.device,
            p.resource,
            c.ip,
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
