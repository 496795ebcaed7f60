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

/// Warns about remote networks that overlap but reach devices through different tunnel
/// connectors: a device that may reach both routes each address of the overlap into one
/// tunnel only (the longer prefix; for the same prefix, one fixed connector), so the other
/// network's resources there are out of its reach.
pub(super) fn tunnel_overlap_warnings(
    policy: &Policy,
    sink: &mut Sink<'_>,
    connector_spans: &HashMap<String, Span>,
) {
    let tunnel_connector = |n: &crate::model::RemoteNetwork| {
        n.connectors
            .iter()
            .find(|c| policy.connector(c).is_some())
            .cloned()
    };
    let nets = &policy.networks;
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            let (Some(ca), Some(cb)) = (tunnel_connector(a), tunnel_connector(b)) else {
                continue;
            };
            if ca == cb {
                continue;
            }
            let overlap = a.cidrs.iter().find_map(|x| {
                b.cidrs
                    .iter()
                    .find(|y| x.contains(&y.network()) || y.contains(&x.network()))
                    .map(|y| (*x, *y))
            });
            let (Some((x, y)), Some(span)) = (overlap, connector_spans.get(&cb)) else {
                continue;
            };
            sink.warning(
                span,
                format!(
                    "remote networks `{}` ({x}) and `{}` ({y}) overlap but reach devices through \
                     different connectors (`{ca}`, `{cb}`)",
                    a.name, b.name
                ),
                "a device routes each address into one tunnel only: give the networks \
                 disjoint cidrs, or the same connector",
            );
        }
    }
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}
