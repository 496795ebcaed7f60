//! Prometheus `/metrics`: a snapshot the agent's loop refreshes, rendered in the text
//! exposition format by a small HTTP listener.

use gateway_common::{ParseOutcome, Reason};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bounds (seconds) of the apply-latency histogram buckets.
const APPLY_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
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
    pub flows_evicted: u64,
    pub flows_idle_ended: u64,
    pub generation: u32,
    pub policy_errors: u64,
    pub last_apply_unix: f64,
    /// Host settings checked at start (`host_check`), and the (check, iface) of each risk.
    pub host_checks: u64,
    pub host_risks: Vec<(String, String)>,
    /// The tunnel's state, when `[tunnel]` is on.
    pub tunnel: Option<TunnelMetrics>,
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

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP gateway_verdicts_total Packets decided by the data plane, by reason.\n\
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
            "# HELP gateway_policy_generation Active policy generation.\n\
             # TYPE gateway_policy_generation gauge\ngateway_policy_generation {}",
            self.generation
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

/// Serves `GET /metrics` on `listener` until the task is dropped.
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
            let (status, body) = if path == "/metrics" {
                let body = match metrics.lock() {
                    Ok(m) => m.render(),
                    Err(_) => String::new(),
                };
                ("200 OK", body)
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

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
