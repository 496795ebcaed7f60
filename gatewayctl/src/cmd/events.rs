//! `gatewayctl events`: stored connection events, then (`--follow`) new ones as they
//! arrive.

use gateway_common::event::EventKind;
use gateway_proto::v1;
use gatewayctl::remote::format_ms;
use gatewayctl::table::Table;
use serde_json::{Value, json};

use super::time_arg;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

/// Event filter options of `gatewayctl events`.
#[derive(Clone, Debug, Default)]
pub struct EventArgs {
    pub user: Option<String>,
    pub device: Option<String>,
    pub resource: Option<String>,
    pub event: Option<String>,
    pub verdict: Option<String>,
    pub host: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u32>,
    pub follow: bool,
}

fn opt(s: Option<&String>) -> &str {
    s.map_or("", String::as_str)
}

fn event_json(e: &v1::StoredEvent) -> Value {
    let ev = e.event.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "time": format_ms(e.time_unix_ms),
        "time_unix_ms": e.time_unix_ms,
        "received_unix_ms": e.received_unix_ms,
        "agent_id": e.agent_id,
        "timestamp": ev.timestamp,
        "event": ev.event,
        "verdict": ev.verdict,
        "reason": ev.reason,
        "user": ev.user,
        "device": ev.device,
        "service_account": ev.service_account,
        "public_ip": ev.public_ip,
        "src_ip": ev.src_ip,
        "src_port": ev.src_port,
        "resource": ev.resource,
        "dst_ip": ev.dst_ip,
        "protocol": ev.protocol,
        "dst_port": ev.dst_port,
        "connector": ev.connector,
        "remote_network": ev.remote_network,
        "rule": ev.rule,
        "rule_id": ev.rule_id,
        "host": ev.host,
        "packets": ev.packets,
        "bytes": ev.bytes,
        "reply_packets": ev.reply_packets,
        "reply_bytes": ev.reply_bytes,
        "duration_ms": ev.duration_ms,
    })
}

const EVENT_COLUMNS: [&str; 10] = [
    "time",
    "event",
    "verdict",
    "user",
    "device",
    "src",
    "resource",
    "dst",
    "rule",
    "connector",
];

fn event_row(e: &v1::StoredEvent) -> Vec<String> {
    let ev = e.event.clone().unwrap_or_default();
    let dst = match (&ev.dst_ip, ev.dst_port, &ev.protocol) {
        (None, _, _) => String::new(),
        (Some(ip), port, proto) => {
            let ip = if ip.contains(':') && port.is_some() {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            let mut s = ip;
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            if let Some(pr) = proto {
                s.push_str(&format!("/{pr}"));
            }
            s
        }
    };
    let device = match (&ev.device, &ev.service_account) {
        (Some(d), _) => d.clone(),
        (None, Some(sa)) => format!("sa:{sa}"),
        _ => String::new(),
    };
    let rule = match &ev.rule {
        Some(r) => r.clone(),
        None if ev.rule_id != 0 => format!("rule {}", ev.rule_id),
        None => String::new(),
    };
    vec![
        format_ms(e.time_unix_ms),
        ev.event.clone(),
        ev.verdict.clone(),
        opt(ev.user.as_ref()).to_string(),
        device,
        opt(ev.src_ip.as_ref()).to_string(),
        opt(ev.resource.as_ref()).to_string(),
        dst,
        rule,
        opt(ev.connector.as_ref()).to_string(),
    ]
}

/// Refuses a filter no event can match because it is malformed (a usage error naming
/// the option and the valid forms), before anything is asked of the controller: a
/// malformed filter must not look like "no matching events".
pub fn check_filters(args: &EventArgs) -> R<()> {
    if let Some(v) = &args.verdict
        && !matches!(v.as_str(), "allow" | "deny" | "audit")
    {
        return Err(Fail::Usage(format!(
            "--verdict: unknown verdict `{v}` (valid: allow, deny, audit)"
        )));
    }
    if let Some(h) = &args.host {
        gateway_proto::parse_host(h).map_err(|_| {
            Fail::Usage(format!(
                "--host: `{h}` is not a host: write `connector:NAME` or `device:NAME` \
                 (e.g. `connector:cl0`)"
            ))
        })?;
    }
    if let Some(e) = &args.event {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        if !names.contains(&e.as_str()) {
            return Err(Fail::Usage(format!(
                "--event: unknown event type `{e}` (valid: {})",
                names.join(", ")
            )));
        }
    }
    for (flag, v) in [
        ("--user", &args.user),
        ("--device", &args.device),
        ("--resource", &args.resource),
    ] {
        if let Some(v) = v
            && (v.trim().is_empty() || v.trim() != v)
        {
            return Err(Fail::Usage(format!(
                "{flag}: `{v}` is empty or has leading or trailing spaces: give the name as \
                 the policy writes it"
            )));
        }
    }
    time_arg("--since", &args.since)?;
    time_arg("--until", &args.until)?;
    Ok(())
}

pub async fn events(ctl: &Ctl, args: &EventArgs, output: Output) -> R<()> {
    check_filters(args)?;
    let filter = v1::EventFilter {
        since_unix_ms: time_arg("--since", &args.since)?,
        until_unix_ms: time_arg("--until", &args.until)?,
        user: args.user.clone(),
        device: args.device.clone(),
        resource: args.resource.clone(),
        event: args.event.clone(),
        verdict: args.verdict.clone(),
        host: args.host.clone(),
    };
    // Ctrl-C ends following with success: handled from before the first line printed.
    let mut interrupt = if args.follow {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| Fail::Usage(format!("cannot handle Ctrl-C: {e}")))?,
        )
    } else {
        None
    };
    // Follow: subscribe first, then read the history, so nothing falls in between.
    let mut stream = if args.follow {
        let mut a = ctl.admin.clone();
        Some(
            ctl.call(
                "follow events",
                a.follow_events(v1::FollowEventsRequest {
                    filter: Some(filter.clone()),
                }),
            )
            .await?,
        )
    } else {
        None
    };
    let mut a = ctl.admin.clone();
    let history = ctl
        .call(
            "query events",
            a.query_events(v1::QueryEventsRequest {
                filter: Some(filter),
                limit: args.limit.unwrap_or(0),
            }),
        )
        .await?
        .events;
    let Some(stream) = stream.as_mut() else {
        match output {
            Output::Json => print_json(&json!({
                "events": history.iter().map(event_json).collect::<Vec<_>>(),
            })),
            Output::Text => {
                if history.is_empty() {
                    println!("no matching events");
                } else {
                    let mut t = Table::new(&EVENT_COLUMNS);
                    for e in &history {
                        t.row(&event_row(e));
                    }
                    print!("{}", t.render());
                }
            }
        }
        return Ok(());
    };

    // Following: JSON Lines (one event per line), or table rows as they arrive.
    let mut t = Table::new(&EVENT_COLUMNS);
    for e in &history {
        t.row(&event_row(e));
    }
    let mut widths = t.widths();
    // Room for typical values, so live rows line up with the header.
    for (w, min) in widths
        .iter_mut()
        .zip([24, 10, 7, 20, 16, 15, 12, 22, 10, 12])
    {
        *w = (*w).max(min);
    }
    let print_event = |e: &v1::StoredEvent| match output {
        Output::Json => println!("{}", event_json(e)),
        Output::Text => println!("{}", Table::line(&widths, &event_row(e))),
    };
    if output == Output::Text {
        println!("{}", t.header_line(&widths));
    }
    let mut last = 0;
    for e in &history {
        print_event(e);
        last = last.max(e.id);
    }
    eprintln!(
        "gatewayctl: following events from {}; Ctrl-C to stop",
        ctl.url
    );
    let Some(interrupt) = interrupt.as_mut() else {
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            m = stream.message() => match m {
                Ok(Some(e)) => {
                    if e.id > last {
                        print_event(&e);
                    }
                }
                Ok(None) => {
                    return Err(Fail::Error(format!(
                        "the controller at {} ended the event stream (shutting down?)",
                        ctl.url
                    )));
                }
                Err(s) => return Err(ctl.fail("follow events", &s)),
            },
        }
    }
}
