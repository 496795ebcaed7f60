//! Compile time, peak heap and entry counts for growing policies; `diff` of a one-grant
//! change.

use crate::policies::{NOW, parse};
use crate::{Opts, alloc, progress};
use anyhow::Result;
use policy_compiler::{
    Host, compile, diff,
    random::{Rng, Scale, scaled_policy},
};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub principals: usize,
    pub resources: usize,
    pub groups: usize,
    pub rule_ids: usize,
    pub parse_ms: f64,
    /// Compile alone (the goal counts `parse_ms + ms`).
    pub ms: f64,
    /// Peak heap above the text over parse and compile.
    pub peak_mb: f64,
    pub classes: u32,
    /// SRC + DST + RULES entries of the connector's view.
    pub entries: usize,
    /// One grant added (a service account to a resource): compile of the changed policy,
    /// `diff` time and its size (entries added, changed and removed).
    pub diff_ms: f64,
    pub diff_entries: usize,
}

/// (principals, resources): 1k..100k principals, up to 10k resources.
fn grid(quick: bool) -> Vec<(u32, u32)> {
    let mut v = vec![
        (1_000, 1_000),
        (10_000, 1_000),
        (10_000, 10_000),
        (100_000, 1_000),
        (100_000, 10_000),
    ];
    if !quick {
        v.insert(3, (50_000, 10_000));
    }
    v
}

pub fn run(opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    for (principals, resources) in grid(opts.quick) {
        // 90% of principals are devices (2 per user), 10% service-account keys (10 each);
        // one group per 100 principals.
        let scale = Scale {
            users: principals * 9 / 20,
            service_accounts: principals / 100,
            resources,
            groups: (principals / 100).max(1),
            ..Scale::TARGET
        };
        let text = scaled_policy(&mut Rng(0xc0 + u64::from(principals)), &scale, NOW());
        // Peak heap over parse and compile together, above the policy text itself.
        let before = alloc::reset_peak();
        let t = Instant::now();
        let policy = parse(&text, NOW())?;
        let parse_ms = t.elapsed().as_secs_f64() * 1e3;
        let host = Host::Connector("conn".into());
        let t = Instant::now();
        let view = compile(&policy, &host, NOW())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let peak_mb = (alloc::peak().saturating_sub(before)) as f64 / (1024.0 * 1024.0);
        let entries = view.sources.len() + view.atoms.len() + view.rules.len();

        // One grant more: a service account gets one more resource.
        let changed_text = format!(
            "{text}\n[[allow]]\nname = \"bench-one-more\"\nprincipals = [\"service_account:sa0\"]\nresources = [\"r{}\"]\n",
            resources / 2 + 1
        );
        let changed = parse(&changed_text, NOW())?;
        let changed_view = compile(&changed, &host, NOW())?;
        let t = Instant::now();
        let delta = diff(&view, &changed_view);
        let diff_ms = t.elapsed().as_secs_f64() * 1e3;
        let diff_entries = delta.src.len() + delta.dst.len() + delta.rules.len();
        progress(&format!(
            "compile: {} principals x {resources} resources: parse {parse_ms:.0} ms, compile {ms:.0} ms, peak {peak_mb:.1} MB, {entries} entries, diff {diff_ms:.1} ms / {diff_entries} entries",
            policy.principals.len()
        ));
        rows.push(Row {
            principals: policy.principals.len(),
            resources: policy.resources.len(),
            groups: policy.groups.len(),
            rule_ids: policy.rules.len(),
            parse_ms,
            ms,
            peak_mb,
            classes: view.classes,
            entries,
            diff_ms,
            diff_entries,
        });
    }
    Ok(())
}
