//! Apply latency: from new policy text to its entries live in the kernel maps.
//!
//! Each change adds one grant (a service account to a resource, varying per change) to a
//! base policy; the timed span is parse + compile + `PolicyWriter::apply` + reading one
//! changed entry (the service account's first key in the SRC map, new slot) back from the
//! kernel and comparing it with the compiled entry.

use crate::policies::{self, NOW, parse};
use crate::{Opts, progress};
use anyhow::{Context as _, Result, bail};
use gateway_common::{addr::from_v4, policy::SrcKey};
use gateway_test_support::testkit::{load_policy, parse_host};
use gateway_user::Dataplane;
use policy_compiler::compile;
use serde::Serialize;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rules: u32,
    pub rule_ids: usize,
    pub principals: usize,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Of the p50: parse, compile and kernel write (apply) parts, medians.
    pub parse_p50_ms: f64,
    pub compile_p50_ms: f64,
    pub write_p50_ms: f64,
    /// Median map entries written + deleted per change.
    pub written_p50: usize,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn run_one(rules: u32, changes: usize, deadline_s: f64) -> Result<Summary> {
    let g = policies::for_rules(rules, 0xa991 + u64::from(rules))?;
    let mut dp = Dataplane::load()?;
    let mut loaded = load_policy(&mut dp, &g.text, "connector:conn", NOW())?;
    let host = parse_host("connector:conn")?;
    let sas = g.policy.service_accounts.len();
    let nres = g.policy.resources.len();
    let started = Instant::now();
    let (mut total, mut parse_t, mut compile_t, mut write_t, mut written) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..changes {
        if started.elapsed().as_secs_f64() > deadline_s && total.len() >= 20 {
            break;
        }
        let sa = i % sas;
        let text = format!(
            "{}\n[[allow]]\nname = \"bench-change\"\nprincipals = [\"service_account:sa{sa}\"]\nresources = [\"r{}\"]\n",
            g.text,
            (i * 7919) % nres
        );
        let t0 = Instant::now();
        let p = parse(&text, NOW())?;
        let t1 = Instant::now();
        let view = compile(&p, &host, NOW())?;
        let t2 = Instant::now();
        let stats = loaded.writer.apply(&mut dp.policy, &view)?;
        // Read back the changed source entry from the new slot.
        let addr = p.service_accounts[sa].keys[0].addresses[0];
        let addr = match addr {
            IpAddr::V4(a) => from_v4(a.octets()),
            IpAddr::V6(a) => a.octets(),
        };
        let key = SrcKey {
            generation: (stats.generation & 1) as u8,
            _pad: [0; 3],
            addr,
        };
        let live = dp
            .policy
            .src
            .get(&key, 0)
            .context("reading back the SRC entry")?;
        let t3 = Instant::now();
        let expected = loaded
            .writer
            .active_entries()
            .and_then(|e| e.src.iter().find(|(k, _)| *k == key).map(|(_, v)| *v));
        if expected != Some(live) {
            bail!(
                "change {i}: SRC entry in the kernel {live:?} differs from the compiled {expected:?}"
            );
        }
        total.push((t3 - t0).as_secs_f64() * 1e3);
        parse_t.push((t1 - t0).as_secs_f64() * 1e3);
        compile_t.push((t2 - t1).as_secs_f64() * 1e3);
        write_t.push((t3 - t2).as_secs_f64() * 1e3);
        written.push((stats.written + stats.deleted) as f64);
    }
    let n = total.len();
    Ok(Summary {
        rules,
        rule_ids: g.policy.rules.len(),
        principals: g.policy.principals.len(),
        changes: n,
        p50_ms: pct(&mut total, 0.5),
        p99_ms: pct(&mut total, 0.99),
        max_ms: pct(&mut total, 1.0),
        parse_p50_ms: pct(&mut parse_t, 0.5),
        compile_p50_ms: pct(&mut compile_t, 0.5),
        write_p50_ms: pct(&mut write_t, 0.5),
        written_p50: pct(&mut written, 0.5) as usize,
    })
}

pub fn run(opts: &Opts, out: &mut Vec<Summary>) -> Result<()> {
    let sizes: &[(u32, usize)] = if opts.quick {
        &[(1_000, 200), (10_000, 200), (100_000, 20)]
    } else {
        &[(1_000, 500), (10_000, 500), (100_000, 200)]
    };
    for &(rules, changes) in sizes {
        let deadline = if opts.quick { 45.0 } else { 300.0 };
        let s = run_one(rules, changes, deadline)?;
        progress(&format!(
            "apply: {rules} rules, {} changes: p50 {:.2} ms, p99 {:.2} ms (parse {:.2}, compile {:.2}, write {:.2} ms; {} entries written)",
            s.changes,
            s.p50_ms,
            s.p99_ms,
            s.parse_p50_ms,
            s.compile_p50_ms,
            s.write_p50_ms,
            s.written_p50
        ));
        out.push(s);
    }
    Ok(())
}
