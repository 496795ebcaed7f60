//! Prometheus `/metrics`: a snapshot the agent's loop refreshes, rendered in the text
//! exposition format by a small HTTP listener, which also answers `/healthz` (liveness:
//! the run loop turns) and `/readyz` (readiness: the policy is live in the kernel).

use gateway_common::{ParseOutcome, Reason};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bounds (seconds) of the apply-latency histogram buckets.
const APPLY_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// What `/healthz` and `/readyz` answer.
pub struct Health {
    /// Why the agent is not ready (none: the policy is live in the kernel and the
    /// programs are attached).
    pub not_ready: Option<String>,
    /// What `/readyz` says once ready.
    pub ready: String,
    /// The run loop's last turn (none: it has not started yet).
    pub beat: Option<Instant>,
    /// `/healthz` fails once the run loop has not turned for this long.
    pub stale_after: Duration,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            not_ready: Some("starting".into()),
            ready: String::new(),
            beat: None,
            stale_after: Duration::from_secs(30),
        }
    }
}

impl Health {
    /// `/healthz`: 200 while the process is starting or its run loop turns.
    pub fn live(&self) -> (bool, String) {
        match self.beat {
            None => (true, "alive: starting\n".into()),
            Some(at) if at.elapsed() <= self.stale_after => (true, "alive\n".into()),
            Some(at) => (
                false,
                format!(
                    "the run loop has not turned for {}s\n",
                    at.elapsed().as_secs()
                ),
            ),
        }
    }

    /// `/readyz`: 200 once the policy is live in the kernel, else 503 with the reason.
    pub fn readiness(&self) -> (bool, String) {
        match &self.not_ready {
            Some(why) => (false, format!("not ready: {why}\n")),
            None => (true, format!("ready: {}\n", self.ready)),
        }
    }
}

/// One program attachment: interface, hook (`xdp`, `tc_egress`, `tc_ingress`) and mode
/// (`native`, `generic`, `tcx`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub iface: String,
    pub hook: &'static str,
    pub mode: String,
}

#[derive(Default)]
pub struct Metrics {
    pub health: Health,
    pub attachments: Vec<Attachment>,
    /// Packets and bytes of ended flows from their flow_end records: [forward, reply].
    /// (The kernel counts bytes per flow, not per verdict.)
    pub flow_end_packets: [u64; 2],
    pub flow_end_bytes: [u64; 2],
    pub verdicts: [u64; Reason::ALL.len()],
    pub parse: [u64; ParseOutcome::ALL.len()],
    /// (resource, event, verdict) -> count, from the connection log.
    pub by_resource: BTreeMap<(String, &'static str, &'static str), u64>,
    /// map -> (entries, capacity).
    pub maps: BTreeMap<&'static str, (u64, u64)>,
    /// Events lost to a full ring: flow ring, alert ring.
    pub events_lost: [u64; 2],
    /// Events not sent because a per-CPU budget was used up, by kind.
    pub suppressed: Vec<(&'static str, u64)>,
    /// Flow-table counters, indexed like `maps::FlowCounter::ALL`.
    pub flow_stats: [u64; gateway_common::maps::FLOW_COUNTERS as usize],
    /// Share of the source filter's bits set (`crate::src_filter`).
    pub source_filter_fill: f64,
    pub flows_evicted: u64,
    pub flows_idle_ended: u64,
    /// The policy generation users see: the controller's (managed mode), or the local
    /// one (standalone).
    pub generation: u64,
    /// Managed mode: the controller's generation of the policy in force, once known.
    pub controller_generation: Option<u64>,
    pub managed: bool,
    /// The agent's own counter of policy writes (the kernel's `ACTIVE` map; its lowest bit
    /// selects the map slot).
    pub local_generation: u32,
    pub policy_errors: u64,
    pub last_apply_unix: f64,
    /// Host settings checked at start (`host_check`), and the (check, iface) of each risk.
    pub host_checks: u64,
    pub host_risks: Vec<(String, String)>,
    /// The tunnel's state, when `[tunnel]` is on.
    pub tunnel: Option<TunnelMetrics>,
    /// The device's DNS stub resolver's counters, when it runs (`[names]`).
    pub dns: Option<gateway_dns::Stats>,
    apply_counts: [u64; APPLY_BUCKETS.len()],
    apply_count: u64,
    apply_sum: f64,
}

pub type Shared = Arc<Mutex<Metrics>>;

/// The tunnel's counters, as the agent last read them.
#[derive(Clone, Debug, Default)]
pub struct TunnelMetrics {
    pub peers: u64,
    /// Peers with a completed handshake in the last 3 minutes (WireGuard's session life).
    pub peers_connected: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped packets by reason (`TunnelDrop::name`).
    pub drops: Vec<(&'static str, u64)>,
}

impl Metrics {
    pub fn observe_apply(&mut self, seconds: f64) {
        for (i, le) in APPLY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.apply_counts[i] += 1;
            }
        }
        self.apply_count += 1;
        self.apply_sum += seconds;
    }

    /// Counts one connection-log record (the agent's own JSON shape): by resource, event
    /// and verdict, and a flow_end's packets and bytes.
    pub fn count_record(&mut self, rec: &serde_json::Value) {
        use gateway_common::EventKind;
        let resource = rec["resource"].as_str().unwrap_or("none").to_string();
        let event = EventKind::ALL
            .into_iter()
            .find(|k| Some(k.name()) == rec["event"].as_str())
            .map_or("unknown", |k| k.name());
        let verdict = match rec["verdict"].as_str() {
            Some("allow") => "allow",
            Some("audit") => "audit",
            _ => "deny",
        };
        if event == EventKind::FlowEnd.name() {
            let n = |k: &str| rec[k].as_u64().unwrap_or(0);
            self.flow_end_packets[0] += n("packets");
            self.flow_end_packets[1] += n("reply_packets");
            self.flow_end_bytes[0] += n("bytes");
            self.flow_end_bytes[1] += n("reply_bytes");
        }
        *self
            .by_resource
            .entry((resource, event, verdict))
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP gateway_build_info The agent's build: version and profile.\n\
             # TYPE gateway_build_info gauge\n\
             gateway_build_info{{version=\"{}\",profile=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        let _ = writeln!(
            s,
            "# HELP gateway_ready 1 once the policy is live in the kernel (/readyz answers 200).\n\
             # TYPE gateway_ready gauge\ngateway_ready {}",
            u8::from(self.health.not_ready.is_none())
        );
        let _ = writeln!(
            s,
            "# HELP gateway_attach_info The agent's program attachments, by interface, hook and mode.\n\
             # TYPE gateway_attach_info gauge"
        );
        for a in &self.attachments {
            let _ = writeln!(
                s,
                "gateway_attach_info{{iface=\"{}\",hook=\"{}\",mode=\"{}\"}} 1",
                escape(&a.iface),
                a.hook,
                escape(&a.mode)
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_verdicts_total Packets decided by the data plane, by reason (the kernel counts packets per reason, not bytes).\n\
             # TYPE gateway_verdicts_total counter"
        );
        for r in Reason::ALL {
            let _ = writeln!(
                s,
                "gateway_verdicts_total{{reason=\"{}\",action=\"{}\"}} {}",
                r.name(),
                if r.passes() { "pass" } else { "drop" },
                self.verdicts[r as usize]
            );
        }
        if let Some(t) = &self.tunnel {
            let _ = writeln!(
                s,
                "# HELP gateway_tunnel_peers WireGuard peers configured, and with a live session.\n\
                 # TYPE gateway_tunnel_peers gauge\n\
                 gateway_tunnel_peers{{state=\"configured\"}} {}\n\
                 gateway_tunnel_peers{{state=\"connected\"}} {}\n\
                 # HELP gateway_tunnel_bytes_total Plaintext bytes through the tunnel.\n\
                 # TYPE gateway_tunnel_bytes_total counter\n\
                 gateway_tunnel_bytes_total{{direction=\"rx\"}} {}\n\
                 gateway_tunnel_bytes_total{{direction=\"tx\"}} {}\n\
                 # HELP gateway_tunnel_drops_total Packets the tunnel dropped, by reason.\n\
                 # TYPE gateway_tunnel_drops_total counter",
                t.peers, t.peers_connected, t.rx_bytes, t.tx_bytes
            );
            for (reason, n) in &t.drops {
                let _ = writeln!(s, "gateway_tunnel_drops_total{{reason=\"{reason}\"}} {n}");
            }
        }
        if let Some(d) = &self.dns {
            let _ = writeln!(
                s,
                "# HELP gateway_dns_queries_total Queries the DNS stub resolver handled, by outcome \
                 (answered: a proxy address; nodata: another type for such a name; forwarded: \
                 relayed upstream).\n\
                 # TYPE gateway_dns_queries_total counter"
            );
            for (outcome, n) in [
                ("answered", d.answered),
                ("nodata", d.nodata),
                ("forwarded", d.forwarded),
                ("servfail", d.servfail),
                ("formerr", d.formerr),
                ("notimp", d.notimp),
                ("dropped", d.dropped),
                ("overloaded", d.overloaded),
            ] {
                let _ = writeln!(s, "gateway_dns_queries_total{{outcome=\"{outcome}\"}} {n}");
            }
            let _ = writeln!(
                s,
                "# HELP gateway_dns_upstream_failures_total Upstream resolvers that timed out or failed.\n\
                 # TYPE gateway_dns_upstream_failures_total counter\n\
                 gateway_dns_upstream_failures_total{{kind=\"timeout\"}} {}\n\
                 gateway_dns_upstream_failures_total{{kind=\"error\"}} {}\n\
                 # HELP gateway_dns_prepares_total Names prepared before their answer (connector \
                 resolution, proxy entries), and those that failed.\n\
                 # TYPE gateway_dns_prepares_total counter\n\
                 gateway_dns_prepares_total{{result=\"run\"}} {}\n\
                 gateway_dns_prepares_total{{result=\"failed\"}} {}",
                d.upstream_timeouts, d.upstream_errors, d.prepares, d.prepare_failures
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_parse_outcomes_total Frames by parser outcome.\n\
             # TYPE gateway_parse_outcomes_total counter"
        );
        for o in ParseOutcome::ALL {
            let _ = writeln!(
                s,
                "gateway_parse_outcomes_total{{outcome=\"{}\"}} {}",
                o.name(),
                self.parse[o as usize]
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_resource_events_total Connection-log events by resource.\n\
             # TYPE gateway_resource_events_total counter"
        );
        for ((resource, event, verdict), n) in &self.by_resource {
            let _ = writeln!(
                s,
                "gateway_resource_events_total{{resource=\"{}\",event=\"{event}\",verdict=\"{verdict}\"}} {n}",
                escape(resource)
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_map_entries Entries in each eBPF map.\n# TYPE gateway_map_entries gauge"
        );
        for (map, (n, _)) in &self.maps {
            let _ = writeln!(s, "gateway_map_entries{{map=\"{map}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP gateway_map_capacity Entries each map can hold for one policy (src, dst, dst_hosts, rules, rules_exact: half the map, the other half keeps the policy in force during an update).\n# TYPE gateway_map_capacity gauge"
        );
        for (map, (_, cap)) in &self.maps {
            let _ = writeln!(s, "gateway_map_capacity{{map=\"{map}\"}} {cap}");
        }
        let _ = writeln!(
            s,
            "# HELP gateway_source_filter_fill Share of the source filter's bits set: the chance that a packet from a source no principal has still costs a flow-table and a source-map lookup (rebuilt above 0.25).\n\
             # TYPE gateway_source_filter_fill gauge\n\
             gateway_source_filter_fill {:.6}",
            self.source_filter_fill
        );
        let _ = writeln!(
            s,
            "# HELP gateway_events_lost_total Events dropped because their ring buffer was full.\n\
             # TYPE gateway_events_lost_total counter\n\
             gateway_events_lost_total{{ring=\"flow\"}} {}\n\
             gateway_events_lost_total{{ring=\"alert\"}} {}",
            self.events_lost[0], self.events_lost[1]
        );
        let _ = writeln!(
            s,
            "# HELP gateway_events_suppressed_total Events not sent: a per-CPU budget was used up.\n\
             # TYPE gateway_events_suppressed_total counter"
        );
        for (kind, n) in &self.suppressed {
            let _ = writeln!(s, "gateway_events_suppressed_total{{event=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP gateway_flow_table_ops_total Flow-table operations of the kernel programs.\n\
             # TYPE gateway_flow_table_ops_total counter"
        );
        for c in gateway_common::maps::FlowCounter::ALL {
            let _ = writeln!(
                s,
                "gateway_flow_table_ops_total{{op=\"{}\"}} {}",
                c.name(),
                self.flow_stats[c as usize]
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_flows_ended_total Flows the agent ended, by cause.\n\
             # TYPE gateway_flows_ended_total counter\n\
             gateway_flows_ended_total{{cause=\"idle\"}} {}\n\
             gateway_flows_ended_total{{cause=\"evicted\"}} {}",
            self.flows_idle_ended, self.flows_evicted
        );
        let _ = writeln!(
            s,
            "# HELP gateway_flow_end_packets_total Packets of ended flows (their flow_end records), by direction.\n\
             # TYPE gateway_flow_end_packets_total counter\n\
             gateway_flow_end_packets_total{{direction=\"forward\"}} {}\n\
             gateway_flow_end_packets_total{{direction=\"reply\"}} {}\n\
             # HELP gateway_flow_end_bytes_total Frame bytes of ended flows (their flow_end records), by direction.\n\
             # TYPE gateway_flow_end_bytes_total counter\n\
             gateway_flow_end_bytes_total{{direction=\"forward\"}} {}\n\
             gateway_flow_end_bytes_total{{direction=\"reply\"}} {}",
            self.flow_end_packets[0],
            self.flow_end_packets[1],
            self.flow_end_bytes[0],
            self.flow_end_bytes[1]
        );
        let _ = writeln!(
            s,
            "# HELP gateway_policy_generation Active policy generation: the controller's in managed mode (as `gatewayctl agents` shows it), the agent's own in standalone mode.\n\
             # TYPE gateway_policy_generation gauge\ngateway_policy_generation {}",
            self.generation
        );
        let _ = writeln!(
            s,
            "# HELP gateway_policy_local_generation The agent's own count of policy writes into the kernel maps (`map generation` in `gateway-agent status`).\n\
             # TYPE gateway_policy_local_generation gauge\ngateway_policy_local_generation {}",
            self.local_generation
        );
        let _ = writeln!(
            s,
            "# HELP gateway_policy_errors_total Policy edits refused (the previous policy stayed in force).\n\
             # TYPE gateway_policy_errors_total counter\ngateway_policy_errors_total {}",
            self.policy_errors
        );
        let _ = writeln!(
            s,
            "# HELP gateway_policy_last_apply_timestamp_seconds When the active policy was applied.\n\
             # TYPE gateway_policy_last_apply_timestamp_seconds gauge\n\
             gateway_policy_last_apply_timestamp_seconds {}",
            self.last_apply_unix
        );
        let _ = writeln!(
            s,
            "# HELP gateway_host_checks_total Host settings the agent checked at start.\n\
             # TYPE gateway_host_checks_total gauge\ngateway_host_checks_total {}",
            self.host_checks
        );
        let _ = writeln!(
            s,
            "# HELP gateway_host_risk A host setting that can deliver packets where the gateway did not decide (1 per finding).\n\
             # TYPE gateway_host_risk gauge"
        );
        for (check, iface) in &self.host_risks {
            let _ = writeln!(
                s,
                "gateway_host_risk{{check=\"{}\",iface=\"{}\"}} 1",
                escape(check),
                escape(iface)
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_policy_apply_seconds Time from a policy change to entries live in the kernel maps.\n\
             # TYPE gateway_policy_apply_seconds histogram"
        );
        for (i, le) in APPLY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "gateway_policy_apply_seconds_bucket{{le=\"{le}\"}} {}",
                self.apply_counts[i]
            );
        }
        let _ = writeln!(
            s,
            "gateway_policy_apply_seconds_bucket{{le=\"+Inf\"}} {}\n\
             gateway_policy_apply_seconds_sum {}\ngateway_policy_apply_seconds_count {}",
            self.apply_count, self.apply_sum, self.apply_count
        );
        s
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until the task is
/// dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Shared) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let answer = |r: Option<(bool, String)>| match r {
                Some((true, body)) => ("200 OK", body),
                Some((false, body)) => ("503 Service Unavailable", body),
                None => (
                    "500 Internal Server Error",
                    "the agent's state is unreadable (a thread panicked)\n".to_string(),
                ),
            };
            let (status, body) = match path {
                "/metrics" => answer(metrics.lock().ok().map(|m| (true, m.render()))),
                "/healthz" => answer(metrics.lock().ok().map(|m| m.health.live())),
                "/readyz" => answer(metrics.lock().ok().map(|m| m.health.readiness())),
                _ => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds the `metrics_listen` address (if any) and serves `/metrics`, `/healthz` and
/// `/readyz` on it.
pub async fn listen(cfg: &super::config::Config, metrics: &Shared) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Ok(mut m) = metrics.lock() {
        m.managed = cfg.controller.is_some();
        // The loop turns at least once per poll interval; a loop stuck for 20 of them
        // (30 s at least) is no longer alive.
        m.health.stale_after =
            Duration::from_millis(cfg.policy_poll_ms.max(50) * 20).max(Duration::from_secs(30));
    }
    let Some(listen) = cfg.metrics_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener {listen} (`metrics_listen`)"))?;
    tracing::info!("metrics on http://{listen}/metrics, health on /healthz and /readyz");
    tokio::spawn(serve(listener, metrics.clone()));
    Ok(())
}

/// `/readyz` answers 503 with `why` from now on.
pub fn set_not_ready(metrics: &Shared, why: &str) {
    if let Ok(mut m) = metrics.lock() {
        m.health.not_ready = Some(why.to_string());
    }
}

/// `/readyz` answers 200 with `what` from now on.
pub fn set_ready(metrics: &Shared, what: &str) {
    if let Ok(mut m) = metrics.lock() {
        m.health.not_ready = None;
        m.health.ready = what.to_string();
    }
}

/// The generation users see: the controller's in managed mode (0 until known), the
/// writer's own in standalone mode.
pub fn user_generation(local: u32, metrics: &Shared) -> u64 {
    match metrics.lock() {
        Ok(m) if m.managed => m.controller_generation.unwrap_or(0),
        _ => u64::from(local),
    }
}

/// Keeps what `attach_all` did for `gateway_attach_info`. A re-adopted XDP link keeps the
/// mode it was attached with, which the kernel reports per interface.
pub fn record_attachments(attached: &[(String, super::pins::Attached)], metrics: &Shared) {
    let modes = super::host_check::xdp_modes();
    let mut out = Vec::new();
    for (what, how) in attached {
        // `what` is "<hook> <iface> (<program>)", as `pins::attach_all` names it.
        let mut words = what.split_whitespace();
        let (Some(hook), Some(iface)) = (words.next(), words.next()) else {
            continue;
        };
        let hook = match hook {
            "xdp" => "xdp",
            "tc-egress" | "tun-egress" => "tc_egress",
            "tc-ingress" | "tun-ingress" => "tc_ingress",
            _ => continue,
        };
        let mode = match (how, hook) {
            (super::pins::Attached::New { mode }, _) => mode.to_string(),
            (super::pins::Attached::Replaced, "xdp") => modes
                .get(iface)
                .map_or_else(|| "unknown".to_string(), ToString::to_string),
            (super::pins::Attached::Replaced, _) => "tcx".to_string(),
        };
        out.push(Attachment {
            iface: iface.to_string(),
            hook,
            mode,
        });
    }
    out.sort();
    if let Ok(mut m) = metrics.lock() {
        m.attachments = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_only_when_the_loop_stops_turning() {
        let mut h = Health::default();
        assert_eq!(h.live(), (true, "alive: starting\n".into()));
        assert_eq!(h.readiness(), (false, "not ready: starting\n".into()));
        h.beat = Some(Instant::now());
        assert_eq!(h.live(), (true, "alive\n".into()));
        h.stale_after = Duration::from_millis(10);
        h.beat = Some(Instant::now() - Duration::from_secs(3));
        assert_eq!(
            h.live(),
            (false, "the run loop has not turned for 3s\n".into())
        );
        h.not_ready = None;
        h.ready = "enforcing policy generation 4".into();
        assert_eq!(
            h.readiness(),
            (true, "ready: enforcing policy generation 4\n".into())
        );
    }

    #[test]
    fn attachments_are_named_by_interface_hook_and_mode() {
        use super::super::pins::Attached;
        let m: Shared = Arc::default();
        let attached = vec![
            (
                "xdp eth0 (xdp_policy)".to_string(),
                Attached::New { mode: "generic" },
            ),
            ("tc-egress eth0 (tc_egress)".to_string(), Attached::Replaced),
            (
                "tun-ingress ztg0".to_string(),
                Attached::New { mode: "tcx" },
            ),
        ];
        record_attachments(&attached, &m);
        let text = m.lock().unwrap().render();
        for series in [
            "gateway_attach_info{iface=\"eth0\",hook=\"xdp\",mode=\"generic\"} 1",
            "gateway_attach_info{iface=\"eth0\",hook=\"tc_egress\",mode=\"tcx\"} 1",
            "gateway_attach_info{iface=\"ztg0\",hook=\"tc_ingress\",mode=\"tcx\"} 1",
        ] {
            assert!(
                text.contains(&format!("\n{series}\n")),
                "{series} in {text}"
            );
        }
    }

    #[test]
    fn flow_end_records_count_their_packets_and_bytes() {
        let mut m = Metrics::default();
        m.count_record(
            &serde_json::json!({"event": "flow_start", "verdict": "allow",
            "resource": "web", "packets": 1, "bytes": 60}),
        );
        m.count_record(&serde_json::json!({"event": "flow_end", "verdict": "allow",
            "resource": "web", "packets": 3, "bytes": 180, "reply_packets": 2,
            "reply_bytes": 1500}));
        assert_eq!(
            (m.flow_end_packets, m.flow_end_bytes),
            ([3, 2], [180, 1500])
        );
        let text = m.render();
        assert!(
            text.contains("\ngateway_flow_end_bytes_total{direction=\"reply\"} 1500\n"),
            "{text}"
        );
    }

    #[test]
    fn dns_stub_counters_appear_only_when_the_stub_runs() {
        let mut m = Metrics::default();
        assert!(!m.render().contains("gateway_dns_"), "no stub, no series");
        m.dns = Some(gateway_dns::Stats {
            answered: 7,
            forwarded: 3,
            prepare_failures: 1,
            upstream_timeouts: 2,
            ..Default::default()
        });
        let text = m.render();
        for series in [
            "gateway_dns_queries_total{outcome=\"answered\"} 7",
            "gateway_dns_queries_total{outcome=\"forwarded\"} 3",
            "gateway_dns_queries_total{outcome=\"servfail\"} 0",
            "gateway_dns_prepares_total{result=\"failed\"} 1",
            "gateway_dns_upstream_failures_total{kind=\"timeout\"} 2",
        ] {
            assert!(
                text.contains(&format!("\n{series}\n")),
                "{series} in {text}"
            );
        }
    }

    #[test]
    fn host_risks_are_one_series_each_and_none_without_findings() {
        let mut m = Metrics {
            host_checks: 10,
            ..Metrics::default()
        };
        let text = m.render();
        assert!(text.contains("\ngateway_host_checks_total 10\n"), "{text}");
        assert!(text.contains("# TYPE gateway_host_risk gauge\n"));
        assert!(!text.contains("gateway_host_risk{"), "{text}");
        m.host_risks = vec![
            ("tunnel".into(), "vx42".into()),
            ("ipv4_accept_source_route".into(), "all".into()),
        ];
        let text = m.render();
        assert!(text.contains("\ngateway_host_risk{check=\"tunnel\",iface=\"vx42\"} 1\n"));
        assert!(
            text.contains(
                "\ngateway_host_risk{check=\"ipv4_accept_source_route\",iface=\"all\"} 1\n"
            )
        );
    }
}
