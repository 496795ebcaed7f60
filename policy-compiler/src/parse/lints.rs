//! Lints: valid policies that do not do what they seem to (warnings).

use std::collections::HashMap;

use super::Span;
use crate::diag::Sink;
use crate::model::{Action, Mode, Policy};

/// Warns about allow grants every pair of which a deny grant makes pointless.
pub(super) fn shadow_warnings(policy: &Policy, sink: &mut Sink<'_>, name_spans: &[Span]) {
    let now = policy.parsed_at;
    let denies: Vec<usize> = (0..policy.grants.len())
        .filter(|&i| policy.grants[i].action == Action::Deny && policy.grants[i].is_active(now))
        .collect();
    if denies.is_empty() {
        return;
    }
    let deny_principals: HashMap<usize, Vec<u32>> = denies
        .iter()
        .map(|&d| (d, policy.principals_of_grant(d)))
        .collect();
    for (gi, g) in policy.grants.iter().enumerate() {
        if g.action != Action::Allow || !g.is_active(now) {
            continue;
        }
        let mine = policy.principals_of_grant(gi);
        if mine.is_empty() {
            continue;
        }
        let mut by: Option<usize> = None;
        let all_shadowed = g.resources.iter().zip(&g.effective).all(|(&r, eff)| {
            let addr = policy.resources[r].address;
            denies.iter().any(|&d| {
                let dg = &policy.grants[d];
                let lasts = match (dg.expires_at, g.expires_at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => a >= b,
                };
                let covers = dg.resources.iter().zip(&dg.effective).any(|(&r2, e2)| {
                    let res2 = &policy.resources[r2];
                    res2.mode == Mode::Enforce
                        && res2.address.contains(&addr)
                        && e2.is_superset(eff)
                });
                let ok = lasts && covers && is_subset(&mine, &deny_principals[&d]);
                if ok && by.is_none() {
                    by = Some(d);
                }
                ok
            })
        });
        if all_shadowed && let Some(d) = by {
            sink.warning(
                &name_spans[gi],
                format!(
                    "allow `{}` is fully shadowed by deny `{}` and never allows anything",
                    g.name, policy.grants[d].name
                ),
                "deny wins over allow: remove the allow, or narrow the deny",
            );
        }
    }
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}
