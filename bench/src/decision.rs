//! Decision cost: nanoseconds per packet of the XDP program, from BPF_PROG_TEST_RUN.
//!
//! Steady cases (every run takes the same path) use one `repeat` loop in the kernel and
//! its kernel-measured mean. An allowed first packet cannot be repeated (the first run
//! caches the flow, the next ones are established), so it is measured one run at a time
//! with the flow deleted between runs: the median of single runs, minus the median of
//! single runs of the no-op program (the timer and loop overhead both share), plus the
//! no-op's steady cost. The denied case is measured both ways as a check of the method.

use crate::policies::{self, NOW, Probe, frame};
use crate::working_set::{self, Judged, Tuple};
use crate::{Opts, progress};
use anyhow::{Context as _, Result, bail};
use gateway_common::{
    Reason,
    maps::{
        self,
        bench::{WS_NEW_PORT, WS_SAME_PORT},
    },
};
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
    /// Distinct flows the case cycles through: 1 is the single-tuple best case (every
    /// lookup cache-hot).
    pub working_set: u32,
    pub ns: f64,
    pub noop_ns: f64,
    /// `repeat` (kernel mean of one repeat loop), `single-corrected` (see module docs) or
    /// `working-set` (a repeat loop of `bench_working_set`, baseline the same program
    /// tail-calling the no-op).
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
    // BPF_PROG_TEST_RUN runs on the calling thread's CPU. The flow tables are LRU maps
    // with per-CPU free lists: entries a case opened on one CPU and the flush deleted go
    // back to that CPU's list, so a case that ran on the other CPU found too few free
    // entries and evicted its own fresh flows (an established working set measured with
    // a third of its packets decided again, now and then). The suite runs on a thread of
    // its own pinned to one CPU (the other suites keep every CPU).
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                crate::throughput::pin_self(0);
                run_pinned(opts, rows, checks)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the decision suite's thread panicked")))
    })
}

fn run_pinned(opts: &Opts, rows: &mut Vec<Row>, checks: &mut Vec<Check>) -> Result<()> {
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
        let sets = WsTuples::find(&g.policy, &loaded, u64::from(rules))?;
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
                working_set: 1,
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
        working_sets(
            opts,
            &mut dp,
            &sets,
            (rules, rule_ids, principals, entries),
            rows,
        )?;
    }
    Ok(())
}

/// The decision tuples of one policy for the working-set cases.
struct WsTuples {
    allowed: Vec<Tuple>,
    allowed_v6: Vec<Tuple>,
    denied: Vec<Tuple>,
    spoofed: Vec<Tuple>,
}

impl WsTuples {
    fn find(
        p: &policy_compiler::Policy,
        loaded: &gateway_test_support::testkit::LoadedPolicy,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = policy_compiler::random::Rng(0x5eed_0000 ^ seed);
        // Tuples are chosen with the compiler's model of the kernel's lookups over the
        // entries written (fast); the reference evaluator is asked about a sample of each
        // kind (about a millisecond a packet at 100k rules), and every packet's reason in
        // the kernel is checked before measuring.
        let entries = loaded
            .writer
            .active_entries()
            .context("no policy entries written")?;
        let index = policy_compiler::KernelIndex::new(entries);
        let boot_ns = boot_now_ns();
        let judge = |t: &Tuple, proto: u8| -> Judged {
            let pkt = policy_compiler::Packet {
                src: t.src,
                dst: t.dst,
                proto,
                src_port: 40_000,
                dst_port: t.dst_port,
            };
            match index.lookup(&pkt, boot_ns).0 {
                gateway_common::policy::Verdict::Allow => Judged::Allow,
                gateway_common::policy::Verdict::Deny => Judged::Deny,
                _ => Judged::Other,
            }
        };
        let max = working_set::SIZES[2] as usize;
        let t = Instant::now();
        let s = WsTuples {
            allowed: working_set::allowed(p, false, max, &mut rng, &judge),
            allowed_v6: working_set::allowed(p, true, max, &mut rng, &judge),
            denied: working_set::denied(p, max, &mut rng, &judge),
            spoofed: working_set::spoofed(p, NOW(), max, &mut rng)?,
        };
        let granted: fn(policy_compiler::Reason) -> bool =
            |r| r == policy_compiler::Reason::Granted;
        let mut asked = 0;
        for (v, proto, want) in [
            (&s.allowed, 6, granted),
            (&s.allowed_v6, 6, granted),
            (&s.denied, 17, working_set::is_deny as fn(_) -> bool),
        ] {
            asked += working_set::check_sample(p, NOW(), v, proto, 256, want)?;
        }
        for (name, v) in [
            ("allowed IPv4", &s.allowed),
            ("allowed IPv6", &s.allowed_v6),
            ("denied", &s.denied),
        ] {
            if v.is_empty() {
                bail!("no {name} tuple in the policy");
            }
        }
        progress(&format!(
            "decision: working-set tuples: {} allowed IPv4, {} allowed IPv6, {} denied, {} spoofed, {asked} asked of the reference evaluator ({:.1}s)",
            s.allowed.len(),
            s.allowed_v6.len(),
            s.denied.len(),
            s.spoofed.len(),
            t.elapsed().as_secs_f64()
        ));
        Ok(s)
    }
}

/// (case, tuples, family, proto, mode, expected reasons) of a working-set case.
type WsCase<'a> = (&'a str, &'a [Tuple], u32, u8, u32, &'a [Reason]);

/// The working-set cases: every case of the single-tuple table that has a working-set
/// meaning, at each size of `working_set::SIZES`.
fn working_sets(
    opts: &Opts,
    dp: &mut Dataplane,
    sets: &WsTuples,
    (rules, rule_ids, principals, entries): (u32, usize, usize, usize),
    rows: &mut Vec<Row>,
) -> Result<()> {
    let rounds = if opts.quick { 3 } else { 5 };
    let base_repeat: u32 = if opts.quick { 200_000 } else { 1_000_000 };
    let cases: [WsCase; 5] = [
        (
            "tcp-allow/first",
            &sets.allowed,
            4,
            6,
            WS_NEW_PORT,
            &[Reason::Allowed],
        ),
        (
            "tcp-allow/established",
            &sets.allowed,
            4,
            6,
            WS_SAME_PORT,
            &[Reason::Established],
        ),
        (
            "ipv6-tcp-allow/established",
            &sets.allowed_v6,
            6,
            6,
            WS_SAME_PORT,
            &[Reason::Established],
        ),
        (
            "udp-deny/first",
            &sets.denied,
            4,
            17,
            WS_SAME_PORT,
            &[Reason::DeniedNoGrant, Reason::DeniedByRule],
        ),
        (
            "spoofed/first",
            &sets.spoofed,
            4,
            6,
            WS_SAME_PORT,
            &[Reason::DeniedUnknownSource],
        ),
    ];
    // --quick leaves the 1M-flow sets to the largest policy (about 20 s per size).
    let sizes: Vec<u32> = working_set::SIZES
        .into_iter()
        .filter(|&n| !opts.quick || n < 1 << 20 || rules == 100_000)
        .collect();
    for &n in &sizes {
        for &(case, tuples, family, proto, mode, expected) in &cases {
            flush_flows(dp)?;
            let flows = working_set::flows(tuples, n);
            let f = frame(&tuples[0].probe(proto), 0);
            working_set::install_dp(
                dp,
                &flows,
                family,
                mode,
                working_set::stride(tuples.len(), n),
            )?;
            // One pass over the set: the flows of the established cases are opened (the
            // reason checked on the pass after), every reason is checked.
            dp.set_working_set_target(maps::PROG_XDP)?;
            let pass = |dp: &mut Dataplane| -> Result<Vec<(Reason, u64)>> {
                let before = dp.verdict_stats()?;
                let mut left = n;
                while left > 0 {
                    let r = left.min(1 << 20);
                    run_xdp_repeat(dp.xdp_named(maps::bench::PROG_WORKING_SET)?, &f, r)?;
                    let _ = dp.drain_events();
                    left -= r;
                }
                let d = dp.verdict_stats()?.since(&before);
                Ok(Reason::ALL
                    .into_iter()
                    .map(|r| (r, d.reason(r)))
                    .filter(|(_, c)| *c > 0)
                    .collect())
            };
            let first = pass(dp)?;
            let seen = if mode == WS_SAME_PORT && expected == [Reason::Established] {
                pass(dp)?
            } else {
                first
            };
            // Established flows beyond the flow table's capacity are evicted and decided
            // again: table pressure, reported as the reasons seen, not an error.
            let table = if proto == 6 {
                maps::FLOWS_TCP_CAPACITY
            } else {
                maps::FLOWS_OTHER_CAPACITY
            };
            let pressure = n > table;
            if !pressure && seen.iter().any(|(r, _)| !expected.contains(r)) {
                bail!(
                    "{case} working set {n} at {rules} rules: reasons {seen:?}, expected {expected:?}"
                );
            }
            let repeat = base_repeat.max(n).min(4 << 20);
            let _ = dp.drain_events();
            dp.set_working_set_target(maps::bench::PROG_NOOP)?;
            let noop = steady(dp, maps::bench::PROG_WORKING_SET, &f, repeat, rounds)?;
            dp.set_working_set_target(maps::PROG_XDP)?;
            let mut v = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let (_, d) =
                    run_xdp_repeat(dp.xdp_named(maps::bench::PROG_WORKING_SET)?, &f, repeat)?;
                let _ = dp.drain_events();
                v.push(d.as_nanos() as f64);
            }
            let ns = median(&mut v);
            let reason = seen
                .iter()
                .max_by_key(|(_, c)| *c)
                .map(|(r, _)| *r)
                .unwrap_or(Reason::DeniedMalformed);
            progress(&format!(
                "decision: {rules} rules {case} x{n} flows: {ns:.1} ns (noop {noop:.1} ns, {:.2}x; reasons {seen:?})",
                ns / noop
            ));
            rows.push(Row {
                rules,
                rule_ids,
                principals,
                entries,
                case: case.to_string(),
                working_set: n,
                ns,
                noop_ns: noop,
                method: "working-set",
                reason: if pressure && seen.len() > 1 {
                    format!("{reason:?} (+ table pressure: {seen:?})")
                } else {
                    format!("{reason:?}")
                },
            });
        }
    }
    working_set::clear(dp.bench_object()?)?;
    Ok(())
}

/// Empties both flow tables, so that a case starts from no open flow.
fn flush_flows(dp: &mut Dataplane) -> Result<()> {
    for proto in [6u8, 17] {
        let keys: Vec<gateway_common::FlowKey> = dp
            .flows
            .table(proto)
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in keys {
            let _ = dp.flows.table_mut(proto).remove(&k);
        }
    }
    Ok(())
}

/// The boot clock now, in ns (the clock the kernel checks expiries against).
fn boot_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
