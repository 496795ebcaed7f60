//! Decision cost: nanoseconds per packet of the XDP program, from BPF_PROG_TEST_RUN.
//!
//! Steady cases (every run takes the same path) use one `repeat` loop in the kernel and
//! its kernel-measured mean. An allowed first packet cannot be repeated (the first run
//! caches the flow, the next ones are established), so it is measured one run at a time
//! with the flow deleted between runs: the median of single runs, minus the median of
//! single runs of the no-op program (the timer and loop overhead both share), plus the
//! no-op's steady cost. The denied case is measured both ways as a check of the method.

use crate::policies::{self, NOW, Probe, frame};
use crate::{Opts, progress};
use anyhow::{Context as _, Result, bail};
use gateway_common::{Reason, maps};
use gateway_test_support::testkit::{load_policy, run_xdp_repeat};
use gateway_user::Dataplane;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Nominal size (the policy generator's target).
    pub rules: u32,
    /// Rule ids of the generated policy.
    pub rule_ids: usize,
    pub principals: usize,
    /// Kernel entries of the compiled view (SRC + DST + RULES).
    pub entries: usize,
    pub case: String,
    pub ns: f64,
    pub noop_ns: f64,
    /// `repeat` (kernel mean of one repeat loop) or `single-corrected` (see module docs).
    pub method: &'static str,
    /// The verdict reason the data plane counted for this case.
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub rules: u32,
    pub case: String,
    pub repeat_ns: f64,
    pub single_corrected_ns: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over `rounds` of the kernel's mean ns per run of a `repeat` loop.
fn steady(dp: &mut Dataplane, prog: &str, frame: &[u8], repeat: u32, rounds: usize) -> Result<f64> {
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (_, d) = run_xdp_repeat(dp.xdp_named(prog)?, frame, repeat)?;
        v.push(d.as_nanos() as f64);
    }
    Ok(median(&mut v))
}

/// Median ns of `n` single runs, deleting `flow` (when given) before each.
fn single(
    dp: &mut Dataplane,
    prog: &str,
    frame: &[u8],
    n: usize,
    flow: Option<&gateway_common::FlowKey>,
) -> Result<f64> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(k) = flow {
            let _ = dp.flows.remove(k);
        }
        let (_, d) = run_xdp_repeat(dp.xdp_named(prog)?, frame, 1)?;
        v.push(d.as_nanos() as f64);
        if i % 1024 == 0 {
            // Keep the event ring from filling up (a full ring is a cheaper path).
            let _ = dp.drain_events();
        }
    }
    let _ = dp.drain_events();
    Ok(median(&mut v))
}

/// The reason the data plane counts for one run of `frame`.
fn reason_of(dp: &mut Dataplane, frame: &[u8]) -> Result<Reason> {
    let before = dp.verdict_stats()?;
    run_xdp_repeat(dp.xdp()?, frame, 1)?;
    let d = dp.verdict_stats()?.since(&before);
    let _ = dp.drain_events();
    Reason::ALL
        .into_iter()
        .find(|r| d.reason(*r) > 0)
        .context("no verdict counted")
}

pub fn run(opts: &Opts, rows: &mut Vec<Row>, checks: &mut Vec<Check>) -> Result<()> {
    let (repeat, rounds, singles) = if opts.quick {
        (200_000u32, 3, 3_000)
    } else {
        (1_000_000u32, 5, 20_000)
    };
    for &rules in &[10u32, 1_000, 10_000, 100_000] {
        let t = Instant::now();
        let g = policies::for_rules(rules, 0xbe9c_0000 + u64::from(rules))?;
        let probes = policies::probes(&g.policy, NOW())?;
        let mut dp = Dataplane::load_with_bench()?;
        let loaded = load_policy(&mut dp, &g.text, "connector:conn", NOW())?;
        let entries = loaded.view.sources.len() + loaded.view.atoms.len() + loaded.view.rules.len();
        let rule_ids = g.policy.rules.len();
        let principals = g.policy.principals.len();
        progress(&format!(
            "decision: {rules} rules ({rule_ids} rule ids, {principals} principals, {entries} entries) loaded in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
        drop(loaded);
        drop(g);

        let noop_frame = frame(&probes.tcp_allow, 0);
        let noop_ns = steady(&mut dp, maps::bench::PROG_NOOP, &noop_frame, repeat, rounds)?;
        let noop_single = single(&mut dp, maps::bench::PROG_NOOP, &noop_frame, singles, None)?;
        let mut push = |case: &str, ns: f64, method: &'static str, reason: Reason| {
            progress(&format!(
                "decision: {rules} rules {case}: {ns:.1} ns (noop {noop_ns:.1} ns, {method}, {reason:?})"
            ));
            rows.push(Row {
                rules,
                rule_ids,
                principals,
                entries,
                case: case.to_string(),
                ns,
                noop_ns,
                method,
                reason: format!("{reason:?}"),
            });
        };

        let cases: [(&str, &Probe, bool); 4] = [
            ("tcp-allow", &probes.tcp_allow, true),
            ("ipv6-tcp-allow", &probes.v6_allow, true),
            ("udp-deny", &probes.udp_deny, false),
            ("unprotected", &probes.unprotected, false),
        ];
        for (name, probe, cached) in cases {
            let f = frame(probe, 0);
            let key = policies::flow_key(probe);
            let _ = dp.flows.remove(&key);
            if cached {
                // First packet: single runs, flow deleted before each.
                let first_reason = reason_of(&mut dp, &f)?;
                if first_reason != Reason::Allowed {
                    bail!(
                        "{name} at {rules} rules: first packet counted {first_reason:?}, expected Allowed"
                    );
                }
                let s = single(&mut dp, maps::PROG_XDP, &f, singles, Some(&key))?;
                push(
                    &format!("{name}/first"),
                    s - noop_single + noop_ns,
                    "single-corrected",
                    first_reason,
                );
                // Established: the flow is in the table; every run takes the fast path.
                let _ = dp.flows.remove(&key);
                reason_of(&mut dp, &f)?;
                let est_reason = reason_of(&mut dp, &f)?;
                let ns = steady(&mut dp, maps::PROG_XDP, &f, repeat, rounds)?;
                push(&format!("{name}/established"), ns, "repeat", est_reason);
            } else {
                // Never cached: every packet is a first decision.
                let reason = reason_of(&mut dp, &f)?;
                let ns = steady(&mut dp, maps::PROG_XDP, &f, repeat, rounds)?;
                push(&format!("{name}/first"), ns, "repeat", reason);
                if name == "udp-deny" {
                    let s = single(&mut dp, maps::PROG_XDP, &f, singles, None)?;
                    checks.push(Check {
                        rules,
                        case: format!("{name}/first"),
                        repeat_ns: ns,
                        single_corrected_ns: s - noop_single + noop_ns,
                    });
                }
            }
        }
    }
    Ok(())
}
