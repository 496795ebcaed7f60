//! Results: the JSON document, goals, the markdown summary and SVG plots (hand-written
//! SVG: no font or drawing libraries needed).

use crate::{
    apply, compile_suite, console_suite, controller_suite, decision, events_suite, peer_change,
    throughput, tunnel_suite,
};
use anyhow::Result;
use gateway_common::maps;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct Results {
    pub quick: bool,
    /// Some suites only (`--only`): not a complete run, left out of summaries.
    pub partial: bool,
    pub decision: Vec<decision::Row>,
    pub decision_checks: Vec<decision::Check>,
    pub throughput: Vec<throughput::Row>,
    pub compile: Vec<compile_suite::Row>,
    pub apply_sizes: Vec<apply::Summary>,
    pub controller: Option<controller_suite::Summary>,
    pub events: Option<events_suite::Summary>,
    /// Several controllers under 1000 agents (see `ha_suite`).
    pub ha: Option<crate::ha_suite::Summary>,
    /// The Admin Console's page times (see `console_suite`).
    pub console: Option<console_suite::Summary>,
    pub tunnel: Option<tunnel_suite::Summary>,
    pub peer_change: Option<peer_change::PeerChange>,
    pub errors: Vec<String>,
    pub suite_seconds: BTreeMap<String, f64>,
    pub wall_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    /// The measured ratio or value (null when the suite did not produce it).
    pub measured: Option<f64>,
    pub met: Option<bool>,
    pub detail: String,
}

fn goal(
    goal: &str,
    target: &str,
    measured: Option<f64>,
    ok: impl Fn(f64) -> bool,
    detail: String,
) -> Goal {
    Goal {
        goal: goal.into(),
        target: target.into(),
        measured,
        met: measured.map(ok),
        detail,
    }
}

impl Results {
    /// The headline apply figures: the 10k-rules size when measured, else the largest.
    fn apply_headline(&self) -> Option<&apply::Summary> {
        self.apply_sizes
            .iter()
            .find(|a| a.rules == 10_000)
            .or(self.apply_sizes.last())
    }

    /// A throughput cell: (rules, engine, traffic, working set, frame bytes).
    fn cell(&self, rules: u32, engine: &str, traffic: &str, flows: u32, bytes: u32) -> Option<f64> {
        self.throughput
            .iter()
            .find(|r| {
                r.rules == rules
                    && r.engine == engine
                    && r.traffic == traffic
                    && r.working_set == flows
                    && r.frame_bytes == bytes
            })
            .map(|r| r.pps)
    }

    /// The working-set decision row of `case` with `flows` flows at `rules` rules.
    fn dec_ws(&self, rules: u32, case: &str, flows: u32) -> Option<&decision::Row> {
        self.decision.iter().find(|r| {
            r.rules == rules
                && r.case == case
                && r.working_set == flows
                && r.method == "working-set"
        })
    }

    /// The largest rules size of the throughput suite.
    fn tput_top(&self) -> u32 {
        self.throughput
            .iter()
            .map(|r| r.rules)
            .max()
            .unwrap_or(10_000)
    }

    pub fn goals(&self) -> Vec<Goal> {
        let mut out = Vec::new();
        let ratio =
            |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        // 1. First packet cost independent of policy size, with a working set.
        let ws = 65_536;
        let (big, small) = (
            self.dec_ws(100_000, "tcp-allow/first", ws),
            self.dec_ws(10, "tcp-allow/first", ws),
        );
        out.push(goal(
            "first packet at 100k rules / at 10 rules, 64k-flow working set",
            "<= 1.3",
            ratio(big.map(|r| r.ns), small.map(|r| r.ns)),
            |m| m <= 1.3,
            format!(
                "{} ns at 100k rules, {} ns at 10 rules (each with its own no-op baseline {} / {} ns)",
                big.map_or("-".into(), |r| format!("{:.0}", r.ns)),
                small.map_or("-".into(), |r| format!("{:.0}", r.ns)),
                big.map_or("-".into(), |r| format!("{:.0}", r.noop_ns)),
                small.map_or("-".into(), |r| format!("{:.0}", r.noop_ns)),
            ),
        ));
        // 2. Established flows cost little more than running any program: worst over every
        // established row whose flows fit the flow table (beyond it, packets are first
        // packets again: table pressure, reported in the decision table).
        let mut worst: Option<(f64, String)> = None;
        for r in self.decision.iter().filter(|r| {
            r.case.ends_with("/established") && r.working_set <= maps::FLOWS_TCP_CAPACITY
        }) {
            let ratio = r.ns / r.noop_ns;
            if worst.as_ref().is_none_or(|w| ratio > w.0) {
                worst = Some((
                    ratio,
                    format!("{}@{} rules x{} flows", r.case, r.rules, r.working_set),
                ));
            }
        }
        let best = self
            .decision
            .iter()
            .filter(|r| r.case.ends_with("/established") && r.working_set == 1)
            .map(|r| r.ns / r.noop_ns)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        out.push(goal(
            "established packet / no-op XDP, IPv4 and IPv6, worst case",
            "<= 2.0",
            worst.as_ref().map(|w| w.0),
            |m| m <= 2.0,
            format!(
                "worst {}; single-tuple best case worst {}",
                worst.as_ref().map_or("-".into(), |w| w.1.clone()),
                best.map_or("-".into(), |b| format!("{b:.2}x"))
            ),
        ));
        // 3. Deny floods.
        let top = self.tput_top();
        for (name, traffic, flows, target, t) in [
            (
                "denied, one-tuple flood: gateway / trivial XDP drop",
                "deny",
                1,
                ">= 0.6",
                0.6,
            ),
            (
                "denied, 64k spoofed sources: gateway / trivial XDP drop",
                "deny-spoofed",
                65_536,
                ">= 0.4",
                0.4,
            ),
        ] {
            let (x, f, fr) = (
                self.cell(top, "xdp", traffic, flows, 64),
                self.cell(top, "floor", traffic, flows, 64),
                self.cell(top, "floor-read", traffic, flows, 64),
            );
            out.push(goal(
                name,
                target,
                ratio(x, f),
                move |m| m >= t,
                format!(
                    "{top} rules: xdp {} pps, floor {} pps; against a drop that reads the headers ({} pps): {}",
                    fmt_opt(x),
                    fmt_opt(f),
                    fmt_opt(fr),
                    ratio(x, fr).map_or("-".into(), |r| format!("{r:.2}"))
                ),
            ));
        }
        for (engine, target, t) in [("nft", ">= 5", 5.0), ("nft-netdev", ">= 2", 2.0)] {
            let mut worst: Option<(f64, String)> = None;
            for (traffic, flows) in [("deny", 1), ("deny-spoofed", 65_536)] {
                if let Some(r) = ratio(
                    self.cell(top, "xdp", traffic, flows, 64),
                    self.cell(top, engine, traffic, flows, 64),
                ) && worst.as_ref().is_none_or(|w| r < w.0)
                {
                    worst = Some((r, traffic.to_string()));
                }
            }
            out.push(goal(
                &format!(
                    "denied: gateway / {} (worst of one tuple and 64k spoofed)",
                    if engine == "nft" {
                        "stateful nftables (inet)"
                    } else {
                        "stateless nftables (netdev ingress)"
                    }
                ),
                target,
                worst.as_ref().map(|w| w.0),
                move |m| m >= t,
                format!(
                    "{top} rules, worst: {}",
                    worst.as_ref().map_or("-".into(), |w| w.1.clone())
                ),
            ));
        }
        // 4. Allowed traffic: every allow cell.
        let mut worst: Option<(f64, String)> = None;
        for r in self
            .throughput
            .iter()
            .filter(|r| r.engine == "xdp" && r.traffic.starts_with("allow"))
        {
            if let Some(q) = ratio(
                Some(r.pps),
                self.cell(r.rules, "none", r.traffic, r.working_set, r.frame_bytes),
            ) && worst.as_ref().is_none_or(|w| q < w.0)
            {
                worst = Some((
                    q,
                    format!(
                        "{} rules, {} x{} flows, {} B",
                        r.rules, r.traffic, r.working_set, r.frame_bytes
                    ),
                ));
            }
        }
        out.push(goal(
            "allowed delivered: gateway / no filter, worst cell",
            ">= 0.95",
            worst.as_ref().map(|w| w.0),
            |m| m >= 0.95,
            worst
                .as_ref()
                .map_or(String::new(), |w| format!("worst: {}", w.1)),
        ));
        // 5. Parse + compile at the target size.
        let big = self
            .compile
            .iter()
            .filter(|c| c.principals >= 100_000 && c.resources >= 10_000)
            .max_by_key(|c| c.principals);
        out.push(goal(
            "parse + compile 100k principals x 10k resources: ms",
            "< 1000",
            big.map(|c| c.parse_ms + c.ms),
            |m| m < 1000.0,
            big.map(|c| {
                format!(
                    "parse {:.0} ms + compile {:.0} ms; {} principals, {} entries",
                    c.parse_ms, c.ms, c.principals, c.entries
                )
            })
            .unwrap_or_default(),
        ));
        out.push(goal(
            "parse + compile 100k principals x 10k resources: peak MB",
            "< 200",
            big.map(|c| c.peak_mb),
            |m| m < 200.0,
            String::new(),
        ));
        // 6. Apply one grant, text to kernel entries live.
        for (rules, target, t) in [(10_000u32, "< 50", 50.0), (100_000, "< 200", 200.0)] {
            let a = self.apply_sizes.iter().find(|a| a.rules == rules);
            out.push(goal(
                &format!("apply one-grant change p99 ms at {}k rules", rules / 1000),
                target,
                a.map(|a| a.p99_ms),
                move |m| m < t,
                a.map(|a| {
                    format!(
                        "{} changes, p50 {:.1} ms (parse {:.1}, compile {:.1}, write {:.1} ms)",
                        a.changes, a.p50_ms, a.parse_p50_ms, a.compile_p50_ms, a.write_p50_ms
                    )
                })
                .unwrap_or_default(),
            ));
        }
        // 7. The tunnel: enforcement on the tunnel interfaces costs <= 10 % of goodput.
        let t = self.tunnel.as_ref();
        let gp = |path: &str| {
            t.and_then(|t| t.goodput.iter().find(|g| g.path == path))
                .map(|g| g.gbps)
        };
        out.push(goal(
            "tunnel goodput: with enforcement / without",
            ">= 0.9",
            ratio(gp("tunnel+enforcement"), gp("tunnel")),
            |m| m >= 0.9,
            format!(
                "plain {} Gbit/s, tunnel {} Gbit/s, tunnel+enforcement {} Gbit/s",
                gp("plain").map_or("-".into(), |v| format!("{v:.2}")),
                gp("tunnel").map_or("-".into(), |v| format!("{v:.2}")),
                gp("tunnel+enforcement").map_or("-".into(), |v| format!("{v:.2}")),
            ),
        ));
        let p = self.peer_change.as_ref();
        out.push(goal(
            "peer change p99 ms (grant added -> both ends hold the peer, 200 agents)",
            "< 200",
            p.map(|p| p.p99_ms),
            |m| m < 200.0,
            p.map(|p| {
                format!(
                    "{} agents, {} rounds, p50 {:.1} ms, max {:.1} ms",
                    p.agents, p.rounds, p.p50_ms, p.max_ms
                )
            })
            .unwrap_or_default(),
        ));
        // 8. The control plane under a mixed load.
        let c = self.controller.as_ref();
        out.push(goal(
            "controller: read p99 ms (1 KB policy, 20 clients, mixed reads and writes)",
            "< 10",
            c.map(|c| c.reads.p99_ms),
            |m| m < 10.0,
            c.map(|c| {
                format!(
                    "read p50 {:.2} ms, GetPolicy p99 {:.2} ms, write p50 {:.1} / p99 {:.1} ms, {} errors",
                    c.reads.p50_ms, c.get_policy.p99_ms, c.writes.p50_ms, c.writes.p99_ms, c.errors
                )
            })
            .unwrap_or_default(),
        ));
        // 9. Connection events: ingestion from 1000 agents, on PostgreSQL.
        let pg = self
            .events
            .as_ref()
            .and_then(|e| e.runs.iter().find(|r| r.backend == "postgres"));
        out.push(goal(
            "events: stored per second from 1000 reporting agents (PostgreSQL)",
            ">= 20000",
            pg.map(|r| r.ingestion.stored_per_sec),
            |m| m >= 20_000.0,
            pg.map(|r| {
                r.reads
                    .iter()
                    .map(|q| {
                        format!(
                            "by {} p50 {:.1} / p99 {:.1} ms",
                            q.filter, q.latency.p50_ms, q.latency.p99_ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
                    + &format!(" at {} rows", r.rows)
            })
            .unwrap_or_default(),
        ));
        // 10. Several controllers under 1000 agents (issue 17).
        let h = self.ha.as_ref();
        let pg = h.and_then(|h| h.delivery.iter().find(|d| d.store == "postgres"));
        let lite = h.and_then(|h| h.delivery.iter().find(|d| d.store == "sqlite"));
        out.push(goal(
            "ha: policy change acknowledged by all 1000 agents on 3 controllers (PostgreSQL), p99 ms",
            "< 100",
            pg.map(|d| d.acknowledged.p99_ms),
            |m| m < 100.0,
            pg.map(|d| {
                format!(
                    "p50 {:.1} ms; delivered p99 {:.1} ms; the apply call p50 {:.1} ms; {} missing. \
                     One controller on SQLite: acknowledged p50 {} / p99 {} ms",
                    d.acknowledged.p50_ms,
                    d.delivered.p99_ms,
                    d.apply.p50_ms,
                    d.missing,
                    lite.map_or("-".into(), |l| format!("{:.1}", l.acknowledged.p50_ms)),
                    lite.map_or("-".into(), |l| format!("{:.1}", l.acknowledged.p99_ms)),
                )
            })
            .unwrap_or_default(),
        ));
        let k = h.and_then(|h| h.kill.as_ref());
        out.push(goal(
            "ha: kill -9 of the applying controller: its agents' failover p99 ms (nothing lost, none stuck)",
            "< 2000",
            k.map(|k| k.failover.p99_ms),
            |m| m < 2000.0,
            k.map(|k| {
                format!(
                    "{} rounds: {} applies acknowledged, {} failed, {} committed; lost {}, agents stuck {}, \
                     controllers disagreeing {}; failover p50 {:.0} ms over {} agents",
                    k.rounds,
                    k.applies_ok,
                    k.applies_failed,
                    k.committed,
                    k.lost,
                    k.agents_stuck,
                    k.controllers_disagree,
                    k.failover.p50_ms,
                    k.failover.samples
                )
            })
            .unwrap_or_default(),
        ));
        // 11. The Admin Console (issue 18).
        let c = self.console.as_ref();
        out.push(goal(
            "console: page p99 ms at 10k resources / 100k events (worst page)",
            "< 100",
            c.map(|c| c.worst_p99_ms),
            |m| m < 100.0,
            c.map(|c| {
                let mut by_p99: Vec<&console_suite::Page> = c.pages.iter().collect();
                by_p99.sort_by(|a, b| b.latency.p99_ms.total_cmp(&a.latency.p99_ms));
                format!(
                    "worst: {} (p50 {:.1} ms, {} bytes; {} clients at once: p99 {:.1} ms); next: {}; {} pages x {} requests",
                    c.worst_page,
                    by_p99.first().map_or(0.0, |p| p.latency.p50_ms),
                    by_p99.first().map_or(0, |p| p.bytes),
                    c.concurrent_clients,
                    c.concurrent.as_ref().map_or(0.0, |p| p.latency.p99_ms),
                    by_p99
                        .iter()
                        .skip(1)
                        .take(2)
                        .map(|p| format!("{} {:.1} ms", p.page, p.latency.p99_ms))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.pages.len(),
                    c.requests
                )
            })
            .unwrap_or_default(),
        ));
        out.push(goal(
            "console: event to Activity page p99 ms",
            "< 1000",
            c.map(|c| c.event_to_row.p99_ms),
            |m| m < 1000.0,
            c.map(|c| {
                format!(
                    "arrival in the page's live stream: p50 {:.1} ms, max {:.1} ms over {} events at {:.0}/s",
                    c.event_to_row.p50_ms,
                    c.event_to_row.max_ms,
                    c.event_to_row.calls,
                    c.stream_pace_per_sec
                )
            })
            .unwrap_or_default(),
        ));
        out
    }

    pub fn json(&self, run: &str) -> Value {
        let a = self.apply_headline();
        json!({
            "run": run,
            "quick": self.quick,
            "partial": self.partial,
            "host": host(),
            "wall_seconds": self.wall_seconds,
            "suite_seconds": self.suite_seconds,
            "decision": self.decision,
            "decision_checks": self.decision_checks,
            "throughput": self.throughput,
            "compile": self.compile,
            "apply": {
                "p50_ms": a.map(|a| a.p50_ms),
                "p99_ms": a.map(|a| a.p99_ms),
                "rules": a.map(|a| a.rules),
                "sizes": self.apply_sizes,
            },
            "controller": self.controller,
            "events": self.events,
            "ha": self.ha,
            "console": self.console,
            "tunnel": self.tunnel,
            "peer_change": self.peer_change,
            "goals": self.goals(),
            "errors": self.errors,
        })
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn host() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    json!({
        "kernel": kernel.trim(),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
    })
}

/// `YYYYMMDDTHHMMSSZ` now (UTC).
fn run_name() -> String {
    let now = gateway_test_support::testkit::unix_now();
    policy_compiler::format_rfc3339(now).replace(['-', ':'], "")
}

/// Writes `<run>.json` and `<run>.md`, and the same as `latest.*` (a run with `--only` is
/// marked `partial` in the JSON), and the plots of the suites it measured.
pub fn write(dir: &Path, r: &mut Results, partial: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    r.partial = partial;
    let run = run_name();
    let json = serde_json::to_string_pretty(&r.json(&run))?;
    let md = markdown(r, &run);
    let mut out = Vec::new();
    let files = [
        (format!("{run}.json"), &json),
        (format!("{run}.md"), &md),
        ("latest.json".to_string(), &json),
        ("latest.md".to_string(), &md),
    ];
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::write(&p, body)?;
        out.push(p);
    }
    // The plots of the suites this run measured (the others keep their last plot).
    for (name, svg) in plots(r) {
        let p = dir.join(format!("latest-{name}.svg"));
        std::fs::write(&p, svg)?;
        out.push(p);
    }
    Ok(out)
}

fn markdown(r: &Results, run: &str) -> String {
    let mut s = String::new();
    let h = host();
    let _ = writeln!(
        s,
        "# Benchmark run {run}{}\n\nKernel {}, {} CPUs ({}). Wall time {:.0} s. See `bench/README.md` for what each suite measures.\n",
        if r.quick { " (--quick)" } else { "" },
        h["kernel"].as_str().unwrap_or(""),
        h["cpus"],
        h["cpu"].as_str().unwrap_or(""),
        r.wall_seconds
    );
    s.push_str("## Goals\n\n| goal | target | measured | met | detail |\n| --- | --- | --- | --- | --- |\n");
    for g in r.goals() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured.map_or("-".into(), |m| format!("{m:.2}")),
            match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            },
            g.detail
        );
    }
    if !r.decision.is_empty() {
        s.push_str("\n## Decision cost (ns per packet, BPF_PROG_TEST_RUN)\n\nflows 1 is the single-tuple best case (every lookup cache-hot); the working-set rows walk that many distinct flows in one repeat loop (`bench_working_set` rewrites each frame, then tail-calls the program; its no-op baseline is the same rewrite tail-calling the no-op).\n\n| rules | rule ids | principals | case | flows | ns | noop ns | x noop | x same case at 10 rules | method | reason |\n| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
        for d in &r.decision {
            let base = r
                .decision
                .iter()
                .find(|b| {
                    b.rules == 10
                        && b.case == d.case
                        && b.working_set == d.working_set
                        && b.method == d.method
                })
                .map_or("-".into(), |b| format!("{:.2}", d.ns / b.ns));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} |",
                d.rules,
                d.rule_ids,
                d.principals,
                d.case,
                d.working_set,
                d.ns,
                d.noop_ns,
                d.ns / d.noop_ns,
                base,
                d.method,
                d.reason
            );
        }
        if !r.decision_checks.is_empty() {
            s.push_str("\nMethod check (a denied packet is never cached, so both methods apply):\n\n| rules | case | repeat ns | single-corrected ns |\n| ---: | --- | ---: | ---: |\n");
            for c in &r.decision_checks {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} |",
                    c.rules, c.case, c.repeat_ns, c.single_corrected_ns
                );
            }
        }
    }
    if !r.throughput.is_empty() {
        s.push_str("\n## Throughput (Mpps on the receiver; deny = dropped by the engine, allow = delivered to the receiver's stack)\n\nframe = Ethernet frame on the wire with FCS; Gbit/s of the gateway's (xdp) rate at that frame size.\n\n| rules | traffic | flows | frame B | none | floor | floor-read | xdp | nft | nft-netdev | xdp Gbit/s | xdp / floor | xdp / floor-read | xdp / nft | xdp / nft-netdev | xdp / none |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let mut cells: Vec<(u32, &str, u32, u32)> = Vec::new();
        for t in &r.throughput {
            let c = (t.rules, t.traffic, t.working_set, t.frame_bytes);
            if !cells.contains(&c) {
                cells.push(c);
            }
        }
        for (rules, traffic, flows, bytes) in cells {
            let g = |e: &str| r.cell(rules, e, traffic, flows, bytes);
            let m = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3}", v / 1e6));
            let q = |a: Option<f64>, b: Option<f64>| {
                a.zip(b)
                    .filter(|(_, b)| *b > 0.0)
                    .map_or("-".into(), |(a, b)| format!("{:.2}", a / b))
            };
            let gbps = g("xdp").map_or("-".into(), |p| {
                format!("{:.2}", p * f64::from(bytes) * 8.0 / 1e9)
            });
            let _ = writeln!(
                s,
                "| {rules} | {traffic} | {flows} | {bytes} | {} | {} | {} | {} | {} | {} | {gbps} | {} | {} | {} | {} | {} |",
                m(g("none")),
                m(g("floor")),
                m(g("floor-read")),
                m(g("xdp")),
                m(g("nft")),
                m(g("nft-netdev")),
                q(g("xdp"), g("floor")),
                q(g("xdp"), g("floor-read")),
                q(g("xdp"), g("nft")),
                q(g("xdp"), g("nft-netdev")),
                q(g("xdp"), g("none")),
            );
        }
        s.push_str("\n`none` with deny traffic delivers it (no filter); `floor` drops everything, so its allow row is frames dropped, not delivered.\n");
    }
    if !r.compile.is_empty() {
        s.push_str("\n## Compile (connector view)\n\n| principals | resources | groups | rule ids | classes | entries | parse ms | compile ms | peak MB | diff ms (one grant) | diff entries |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for c in &r.compile {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.2} | {} |",
                c.principals,
                c.resources,
                c.groups,
                c.rule_ids,
                c.classes,
                c.entries,
                c.parse_ms,
                c.ms,
                c.peak_mb,
                c.diff_ms,
                c.diff_entries
            );
        }
    }
    if !r.apply_sizes.is_empty() {
        s.push_str("\n## Apply (new policy text to entries live in the kernel)\n\n| rules | principals | changes | p50 ms | p99 ms | max ms | parse p50 | compile p50 | write p50 | entries written p50 |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for a in &r.apply_sizes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                a.rules,
                a.principals,
                a.changes,
                a.p50_ms,
                a.p99_ms,
                a.max_ms,
                a.parse_p50_ms,
                a.compile_p50_ms,
                a.write_p50_ms,
                a.written_p50
            );
        }
    }
    if let Some(t) = &r.tunnel {
        s.push_str("\n## Tunnel (one TCP stream, iperf3, device -> connector -> resource)\n\n| path | Gbit/s | CPU s per Gbit (machine) | retransmits | seconds |\n| --- | ---: | ---: | ---: | ---: |\n");
        for g in &t.goodput {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {} | {:.0} |",
                g.path, g.gbps, g.cpu_s_per_gbit, g.retransmits, g.seconds
            );
        }
        if let Some(h) = &t.handshakes {
            let _ = writeln!(
                s,
                "\nHandshakes answered by the connector's tunnel: {:.0}/s (cookies {:.0}/s; 256 valid peers, one source, no shield). \
                 Flood of bogus initiations from one source with the shield: {:.0}/s sent ({} in all), {} dropped in XDP by the \
                 per-source bucket, {} reached the userspace tunnel; a real device's handshake from another address meanwhile: {}.",
                h.answered_per_s,
                h.cookies_per_s,
                h.flood_sent_per_s,
                h.flood_sent,
                h.flood_dropped_by_shield,
                h.flood_reached_tunnel,
                h.handshake_during_flood_ms
                    .map_or("did not complete".to_string(), |ms| format!("{ms:.1} ms"))
            );
        }
    }
    if let Some(c) = &r.controller {
        let _ = writeln!(
            s,
            "\n## Controller ({} clients for {:.0} s, mixed calls, policy of {} bytes)\n\n| calls | count | per s | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: |",
            c.clients, c.seconds, c.policy_bytes
        );
        let mut rows = vec![("reads (all)".to_string(), &c.reads)];
        rows.extend(c.by_call.iter().map(|(k, v)| (k.clone(), v)));
        for (name, st) in rows {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
                st.calls, st.per_sec, st.p50_ms, st.p99_ms, st.max_ms
            );
        }
        if c.errors > 0 {
            let _ = writeln!(s, "\n{} calls failed.", c.errors);
        }
    }
    if let Some(e) = &r.events {
        s.push_str(
            "\n## Connection events (1000 reporting agents; filtered reads, limit 100)\n\n\
             | store | stored/s | offered/s | rows read | by user p50 / p99 ms | by host p50 / p99 ms | by resource (6 h) p50 / p99 ms |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for run in &e.runs {
            let q = |k: &str| {
                run.reads
                    .iter()
                    .find(|q| q.filter == k)
                    .map_or("-".into(), |q| {
                        format!("{:.2} / {:.2}", q.latency.p50_ms, q.latency.p99_ms)
                    })
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                run.backend,
                run.ingestion.stored_per_sec,
                run.ingestion.offered_per_sec,
                run.rows,
                q("user"),
                q("host"),
                q("resource_6h")
            );
        }
        for run in &e.runs {
            let _ = writeln!(s, "\n{}: {}.", run.backend, run.note);
        }
    }
    if let Some(h) = &r.ha {
        let _ = writeln!(
            s,
            "\n## Controllers under {} agents\n\n| store | controllers | changes | apply p50 ms | delivered p50 / p99 ms | acknowledged p50 / p99 / max ms | missing |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            h.agents
        );
        for d in &h.delivery {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {} |",
                d.store,
                d.controllers,
                d.changes,
                d.apply.p50_ms,
                d.delivered.p50_ms,
                d.delivered.p99_ms,
                d.acknowledged.p50_ms,
                d.acknowledged.p99_ms,
                d.acknowledged.max_ms,
                d.missing
            );
        }
        if let Some(k) = &h.kill {
            let _ = writeln!(
                s,
                "\nKill -9 of the controller applying a change, {} rounds: {} acknowledged, {} failed, {} committed; \
                 lost {}, agents stuck {}, controllers disagreeing {}; failover of {} agents p50 {:.0} / p99 {:.0} / max {:.0} ms.",
                k.rounds,
                k.applies_ok,
                k.applies_failed,
                k.committed,
                k.lost,
                k.agents_stuck,
                k.controllers_disagree,
                k.failover.samples,
                k.failover.p50_ms,
                k.failover.p99_ms,
                k.failover.max_ms
            );
        }
    }
    if let Some(c) = &r.console {
        let _ = writeln!(
            s,
            "\n## Admin Console ({} resources, {} users, {} devices, {} service accounts, {} groups, {} grants, {} tests; {} agents; {} events; policy of {} bytes)\n\n\
             Server time per page: request to the body's last byte on loopback, {} requests each, one client.\n\n\
             | page | bytes | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |",
            c.resources,
            c.users,
            c.devices,
            c.service_accounts,
            c.groups,
            c.grants,
            c.tests,
            c.agents,
            c.events,
            c.policy_bytes,
            c.requests
        );
        for p in &c.pages {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                p.page, p.bytes, p.latency.p50_ms, p.latency.p99_ms, p.latency.max_ms
            );
        }
        if let Some(p) = &c.concurrent {
            let _ = writeln!(
                s,
                "| {} ({} clients at once) | {} | {:.2} | {:.2} | {:.2} |",
                p.page,
                c.concurrent_clients,
                p.bytes,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms
            );
        }
        for p in &c.downloads {
            let _ = writeln!(
                s,
                "| download: {} | {} | {:.2} | {:.2} | {:.2} |",
                p.page, p.bytes, p.latency.p50_ms, p.latency.p99_ms, p.latency.max_ms
            );
        }
        let _ = writeln!(
            s,
            "\nEvent to the Activity page's live stream ({} events, {:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms.",
            c.event_to_row.calls,
            c.stream_pace_per_sec,
            c.event_to_row.p50_ms,
            c.event_to_row.p99_ms,
            c.event_to_row.max_ms
        );
    }
    if !r.errors.is_empty() {
        s.push_str("\n## Errors\n\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    let _ = writeln!(
        s,
        "\nSuite times: {}.",
        r.suite_seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// A grouped bar chart: one group per label, one bar per series.
fn bar_chart(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    let (w, h) = (900.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 90.0);
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-9)
        * 1.1;
    let pw = w - left - right;
    let ph = h - top - bottom;
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + ph - ph * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 4.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(unit)
    );
    for (gi, g) in groups.iter().enumerate() {
        let gx = left + gw * gi as f64 + gw * 0.1;
        for (si, (_, vals)) in series.iter().enumerate() {
            if let Some(Some(v)) = vals.get(gi) {
                let bh = ph * v / max;
                let x = gx + bw * si as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}</title></rect>"#,
                    top + ph - bh,
                    bw * 0.95,
                    COLORS[si % COLORS.len()],
                    short(*v)
                );
                if bw > 22.0 {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                        x + bw * 0.47,
                        top + ph - bh - 3.0,
                        short(*v)
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            top + ph + 16.0,
            esc(g)
        );
    }
    for (si, (name, _)) in series.iter().enumerate() {
        let x = left + 150.0 * si as f64;
        let y = h - 30.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
            y - 10.0,
            COLORS[si % COLORS.len()],
            x + 16.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plots(r: &Results) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !r.decision.is_empty() {
        // The working-set cases at 64k flows, and the single-tuple best case beside them.
        let mut cases: Vec<String> = Vec::new();
        for d in r.decision.iter().filter(|d| d.method == "working-set") {
            if !cases.contains(&d.case) {
                cases.push(d.case.clone());
            }
        }
        let mut series: Vec<(String, Vec<Option<f64>>)> = [10u32, 1_000, 10_000, 100_000]
            .iter()
            .map(|&n| {
                (
                    format!("{n} rules, 64k flows"),
                    cases
                        .iter()
                        .map(|c| r.dec_ws(n, c, 65_536).map(|d| d.ns))
                        .collect(),
                )
            })
            .collect();
        series.push((
            "10k rules, 1 flow".into(),
            cases
                .iter()
                .map(|c| r.dec_ws(10_000, c, 1).map(|d| d.ns))
                .collect(),
        ));
        series.push((
            "noop".into(),
            cases
                .iter()
                .map(|c| r.dec_ws(10_000, c, 65_536).map(|d| d.noop_ns))
                .collect(),
        ));
        out.push((
            "decision",
            bar_chart(
                "Decision cost per packet (BPF_PROG_TEST_RUN, working sets)",
                "ns per packet",
                &cases,
                &series,
            ),
        ));
    }
    if !r.throughput.is_empty() {
        let top = r.tput_top();
        let keys: [(&str, u32); 4] = [
            ("deny", 1),
            ("deny-spoofed", 65_536),
            ("allow", 1),
            ("allow-flows", 65_536),
        ];
        let groups: Vec<String> = keys
            .iter()
            .map(|(t, f)| format!("{t} x{f} @ {top} rules"))
            .collect();
        let series: Vec<(String, Vec<Option<f64>>)> =
            ["none", "floor", "floor-read", "xdp", "nft", "nft-netdev"]
                .iter()
                .map(|e| {
                    (
                        e.to_string(),
                        keys.iter()
                            .map(|(t, f)| r.cell(top, e, t, *f, 64))
                            .collect(),
                    )
                })
                .collect();
        out.push((
            "throughput",
            bar_chart(
                "Receiver throughput, 64 B frames (deny: dropped, allow: delivered)",
                "packets per second",
                &groups,
                &series,
            ),
        ));
    }
    if !r.compile.is_empty() {
        let groups: Vec<String> = r
            .compile
            .iter()
            .map(|c| format!("{}k x {}k", c.principals / 1000, c.resources / 1000))
            .collect();
        let series = vec![
            (
                "compile ms".to_string(),
                r.compile.iter().map(|c| Some(c.ms)).collect(),
            ),
            (
                "peak MB".to_string(),
                r.compile.iter().map(|c| Some(c.peak_mb)).collect(),
            ),
            (
                "parse ms".to_string(),
                r.compile.iter().map(|c| Some(c.parse_ms)).collect(),
            ),
        ];
        out.push((
            "compile",
            bar_chart(
                "Compile (principals x resources)",
                "ms / MB",
                &groups,
                &series,
            ),
        ));
    }
    if !r.apply_sizes.is_empty() {
        let groups: Vec<String> = r
            .apply_sizes
            .iter()
            .map(|a| format!("{} rules", a.rules))
            .collect();
        let series = vec![
            (
                "p50 ms".to_string(),
                r.apply_sizes.iter().map(|a| Some(a.p50_ms)).collect(),
            ),
            (
                "p99 ms".to_string(),
                r.apply_sizes.iter().map(|a| Some(a.p99_ms)).collect(),
            ),
        ];
        out.push((
            "apply",
            bar_chart("Apply: policy text to entries live", "ms", &groups, &series),
        ));
    }
    out
}

/// Reads the newest `n` runs in `dir` and writes `summary.md`: every goal of the newest run
/// with the range (and median) of its measured value over the runs that measured it (a run
/// with `--only` measures some), and in how many of those it was met.
pub fn summarize(dir: &Path, n: usize) -> Result<PathBuf> {
    let mut runs: Vec<(String, Value)> = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.ends_with('Z') && s.contains('T'))
        })
        .collect();
    names.sort();
    for p in names.iter().rev() {
        if runs.len() == n {
            break;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        // Runs of this goal table only (older runs named other goals).
        if v.get("partial").is_some() {
            runs.push((v["run"].as_str().unwrap_or("").to_string(), v));
        }
    }
    if runs.len() < n {
        anyhow::bail!("{} runs in {} (wanted {n})", runs.len(), dir.display());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmark summary over {} runs\n\nRuns: {}{}. Each value is the goal's measured ratio or value in one run; \"met in\" counts the runs that measured the goal; see the runs' own files for every cell.\n\n| goal | target | min | median | max | met in |\n| --- | --- | ---: | ---: | ---: | ---: |",
        runs.len(),
        runs.iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if runs.iter().all(|r| r.1["quick"] == Value::Bool(true)) {
            " (all --quick)"
        } else {
            ""
        }
    );
    let empty = Vec::new();
    let newest = runs[0].1["goals"].as_array().unwrap_or(&empty);
    for g in newest {
        let name = g["goal"].as_str().unwrap_or("");
        let mut vals = Vec::new();
        let mut met = 0;
        let mut measured_in = 0;
        for (_, r) in &runs {
            if let Some(x) = r["goals"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["goal"].as_str() == Some(name)))
            {
                if let Some(m) = x["measured"].as_f64() {
                    vals.push(m);
                    measured_in += 1;
                }
                if x["met"] == Value::Bool(true) {
                    met += 1;
                }
            }
        }
        vals.sort_by(f64::total_cmp);
        let f = |v: Option<&f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {met} of {measured_in} |",
            g["target"].as_str().unwrap_or(""),
            f(vals.first()),
            f(vals.get(vals.len() / 2)),
            f(vals.last()),
        );
    }
    let p = dir.join("summary.md");
    std::fs::write(&p, s)?;
    Ok(p)
}
