//! Lints: valid policies that do not do what they seem to (warnings).

use super::{HashMap, Span};
use crate::diag::Sink;
use crate::model::{Action, Mode, Policy};
use ipnet::IpNet;

/// Warns about allow grants every pair of which a deny grant makes pointless.
///
/// The denies' enforce-mode resources are indexed by prefix, so each allow pair looks up
/// only the denies whose resource contains its address (one lookup per prefix length of
/// the address), not every deny: linear in the grants, where comparing every allow with
/// every deny took seconds at 20,000 grants.
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
    // Prefix (normalized) -> (deny grant, index of the pair in it), enforce mode only.
    let mut by_prefix: HashMap<IpNet, Vec<(usize, usize)>> = HashMap::default();
    for &d in &denies {
        for (pair, &r) in policy.grants[d].resources.iter().enumerate() {
            let res = &policy.resources[r];
            if res.mode == Mode::Enforce
                && let Some(net) = res.address.net()
            {
                by_prefix.entry(net.trunc()).or_default().push((d, pair));
            }
        }
    }
    // The prefix lengths indexed, per family (IPv4, IPv6): a containing prefix can only
    // be of one of these (usually a handful), so only they are looked up, not every length
    // from 0 to the address's own.
    let mut lens: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    for p in by_prefix.keys() {
        lens[usize::from(matches!(p, IpNet::V6(_)))].push(p.prefix_len());
    }
    for l in &mut lens {
        l.sort_unstable();
        l.dedup();
    }
    // The deny pairs whose resource contains `addr`, by deny grant in file order.
    let containing = |addr: &IpNet| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let family = &lens[usize::from(matches!(addr, IpNet::V6(_)))];
        for &len in family.iter().take_while(|&&l| l <= addr.prefix_len()) {
            if let Ok(sup) = IpNet::new(addr.addr(), len)
                && let Some(v) = by_prefix.get(&sup.trunc())
            {
                out.extend_from_slice(v);
            }
        }
        out.sort_unstable();
        out
    };
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
            // Names are not checked (a deny shadows a name only through the same
            // pattern); the lint stays quiet rather than guess.
            let Some(addr) = policy.resources[r].address.net() else {
                return false;
            };
            let candidates = containing(&addr);
            let mut found = None;
            for (i, &(d, _)) in candidates.iter().enumerate() {
                // A deny grant covers the pair through any of its resources: check the
                // first time the grant comes up (candidates are sorted by grant).
                if i > 0 && candidates[i - 1].0 == d {
                    continue;
                }
                let dg = &policy.grants[d];
                let lasts = match (dg.expires_at, g.expires_at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => a >= b,
                };
                let covers = candidates[i..]
                    .iter()
                    .take_while(|(d2, _)| *d2 == d)
                    .any(|&(_, p2)| dg.effective[p2].is_superset(eff));
                if lasts && covers && is_subset(&mine, &deny_principals[&d]) {
                    found = Some(d);
                    break;
                }
            }
            if let Some(d) = found
                && by.is_none()
            {
                by = Some(d);
            }
            found.is_some()
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

/// Warns about DNS-name resources of networks without a tunnel connector: a device reaches
/// a name only through the proxy address its resolver hands out, routed into the tunnel to
/// the connector that resolves the name; without one, no device reaches it.
pub(super) fn names_without_tunnel(policy: &Policy, sink: &mut Sink<'_>, spans: &[(String, Span)]) {
    for (name, span) in spans {
        let Some(r) = policy.resources.iter().find(|r| &r.name == name) else {
            continue;
        };
        let Some(net) = policy.networks.get(r.network) else {
            continue;
        };
        if net.connectors.iter().any(|c| policy.connector(c).is_some()) {
            continue;
        }
        sink.warning(
            span,
            format!(
                "resource `{name}` is the DNS name `{}`, but remote network `{}` has no \
                 connector with a `[[connector]]` declaration: devices reach names only \
                 through the tunnel, so no device reaches it",
                r.address, net.name
            ),
            "declare the network's connector in a `[[connector]]` block (its public key and \
             endpoint), and turn on `[names]` in the devices' agent configuration",
        );
    }
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}
