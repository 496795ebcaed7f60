//! WireGuard peers of a host, on least knowledge, decided from the policy semantics.
//!
//! # The rule
//!
//! A destination *passes* for a principal when some TCP, UDP or ICMP packet (ICMPv6 for
//! IPv6 destinations) from one of the principal's addresses to it gets an **allow** or
//! **audit** verdict from [`crate::evaluate`] at `now` — a grant, an audit-mode deny, or
//! an audit-mode resource covering it (audit resources let every active principal through,
//! with or without a grant, exactly as the evaluator does).
//!
//! * A **connector**'s peers are the devices and service-account keys that have a
//!   `public_key`, are active at `now` (an expired key is no principal: its address is an
//!   unknown source, so it gets no tunnel either) and for which some destination in the
//!   cidrs of the networks listing the connector passes. `allowed_ips`: the principal's
//!   addresses as /32 and /128. Nothing else: no other connector, no principal that could
//!   not send anything through it.
//! * A **device**'s peers: for each remote network with a destination in its cidrs that
//!   passes for the device, the connector carrying that network's tunnel — the first
//!   connector of the network's `connectors` with a `[[connector]]` declaration (networks
//!   without one have no tunnel; failover between the connectors of one network is not
//!   done yet). `allowed_ips`: the cidrs of the networks the device reaches through that
//!   connector (sorted, deduplicated); `endpoint`: the connector's.
//!
//! Computed from the compiled entries (they decide exactly as the evaluator; the
//! differential tests hold them to it). The peer set can change when a grant or key
//! expires; [`first_change`] finds the first such instant for `recompile_at`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;
use ipnet::IpNet;

use crate::compile::{DstEntry, Host, RuleEntry, SrcEntry};
use crate::model::{Policy, PrincipalKind, WgKey};

/// What a peer is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    Device,
    ServiceAccountKey,
    Connector,
}

impl PeerKind {
    /// `device`, `service_account_key` or `connector`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Device => "device",
            PeerKind::ServiceAccountKey => "service_account_key",
            PeerKind::Connector => "connector",
        }
    }

    pub fn parse(s: &str) -> Option<PeerKind> {
        [
            PeerKind::Device,
            PeerKind::ServiceAccountKey,
            PeerKind::Connector,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One WireGuard peer of a host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Peer {
    /// Device name, `service-account/key`, or connector name.
    pub name: String,
    pub kind: PeerKind,
    pub public_key: WgKey,
    /// `host:port` (connectors only).
    pub endpoint: Option<String>,
    /// Sorted.
    pub allowed_ips: Vec<IpNet>,
}

impl Policy {
    /// Makes `key` the WireGuard key of `host` (a device, or a connector with a
    /// `[[connector]]` declaration: without one it has no endpoint and no tunnel), in
    /// place of the policy's. The controller does this with the keys its enrolled agents
    /// registered. Returns whether the host has a place for a key.
    pub fn set_host_key(&mut self, host: &Host, key: WgKey) -> bool {
        match host {
            Host::Device(d) => match self.devices.iter_mut().find(|x| &x.name == d) {
                Some(dev) => {
                    dev.public_key = Some(key);
                    true
                }
                None => false,
            },
            Host::Connector(c) => match self.connectors.iter_mut().find(|x| &x.name == c) {
                Some(conn) => {
                    conn.public_key = key;
                    true
                }
                None => false,
            },
        }
    }

    /// Withdraws `key` wherever the policy uses it (a revoked agent's key): a device or
    /// service-account key loses it, a connector that has it loses its `[[connector]]`
    /// block (no tunnel to it). Returns whether anything used it.
    pub fn withdraw_key(&mut self, key: &WgKey) -> bool {
        let mut found = false;
        for d in &mut self.devices {
            if d.public_key.as_ref() == Some(key) {
                d.public_key = None;
                found = true;
            }
        }
        for sa in &mut self.service_accounts {
            for k in &mut sa.keys {
                if k.public_key.as_ref() == Some(key) {
                    k.public_key = None;
                    found = true;
                }
            }
        }
        let before = self.connectors.len();
        self.connectors.retain(|c| &c.public_key != key);
        found || self.connectors.len() != before
    }

    /// Who uses `key` in this policy: the host (devices and connectors; `None` for a
    /// service-account key, which has no agent) and a description for messages.
    pub fn key_owner(&self, key: &WgKey) -> Option<(Option<Host>, String)> {
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.public_key.as_ref() == Some(key))
        {
            return Some((
                Some(Host::Device(d.name.clone())),
                format!("device `{}`", d.name),
            ));
        }
        if let Some(c) = self.connectors.iter().find(|c| &c.public_key == key) {
            return Some((
                Some(Host::Connector(c.name.clone())),
                format!("connector `{}`", c.name),
            ));
        }
        for sa in &self.service_accounts {
            if let Some(k) = sa.keys.iter().find(|k| k.public_key.as_ref() == Some(key)) {
                return Some((
                    None,
                    format!("service-account key `{}/{}`", sa.name, k.name),
                ));
            }
        }
        None
    }
}

/// The compiled entries of a view, indexed for the question "does anything pass".
pub(crate) struct Entries<'v> {
    /// Atoms with at least one address decided by them (a prefix entirely covered by more
    /// specific prefixes decides nothing).
    live: Vec<(IpNet, u32)>,
    defaults: HashMap<u32, (Verdict, bool)>,
    /// The view's rule entries; sorted by (class, atom) as `compile` emits them, so the
    /// entries of one pair are one binary search away.
    rules: &'v [RuleEntry],
    sorted: bool,
    class_of: HashMap<u32, u32>,
    /// Name atoms (v4, v6) and the index of their network: no prefixes, but they pass
    /// like any atom ([`crate::compile::NameAtoms`]).
    names: Vec<(u32, u32, usize)>,
}

impl<'v> Entries<'v> {
    pub(crate) fn new(sources: &[SrcEntry], atoms: &[DstEntry], rules: &'v [RuleEntry]) -> Self {
        let prefixes: Vec<IpNet> = atoms.iter().map(|a| a.prefix).collect();
        let live = live_prefixes(&prefixes);
        Entries {
            live: atoms
                .iter()
                .zip(live)
                .filter(|(_, l)| *l)
                .map(|(a, _)| (a.prefix, a.atom))
                .collect(),
            defaults: atoms
                .iter()
                .map(|a| {
                    let v6 = matches!(a.prefix, IpNet::V6(_));
                    (a.atom, (a.default_verdict, v6))
                })
                .collect(),
            rules,
            sorted: rules.is_sorted_by_key(|r| (r.key.class, r.key.atom)),
            class_of: sources.iter().map(|s| (s.principal, s.class)).collect(),
            names: Vec::new(),
        }
    }

    /// Adds the view's name atoms: `networks` holds (v4 atom, v6 atom, network index) for
    /// each of `names`, in order.
    pub(crate) fn with_names(
        mut self,
        names: &[crate::compile::NameAtoms],
        networks: &[(u32, u32, usize)],
    ) -> Self {
        for n in names {
            self.defaults.insert(n.v4, (n.default_verdict, false));
            self.defaults.insert(n.v6, (n.default_verdict, true));
        }
        self.names = networks.to_vec();
        self
    }

    /// Whether some packet of `class` passes toward some atom of the view.
    fn any_passes(&self, class: u32, t: i64) -> bool {
        self.live.iter().any(|&(_, a)| self.passes(class, a, t))
            || self
                .names
                .iter()
                .any(|&(v4, v6, _)| self.passes(class, v4, t) || self.passes(class, v6, t))
    }

    /// The rule entries of (`class`, `atom`).
    fn rules_of(&self, class: u32, atom: u32) -> Vec<&'v RuleEntry> {
        let pair = (class, atom);
        if self.sorted {
            let from = self
                .rules
                .partition_point(|r| (r.key.class, r.key.atom) < pair);
            let len = self.rules[from..].partition_point(|r| (r.key.class, r.key.atom) == pair);
            self.rules[from..from + len].iter().collect()
        } else {
            self.rules
                .iter()
                .filter(|r| (r.key.class, r.key.atom) == pair)
                .collect()
        }
    }

    /// Whether some TCP, UDP or ICMP packet of `class` to `atom` passes at `t`.
    fn passes(&self, class: u32, atom: u32, t: i64) -> bool {
        let Some(&(default, v6)) = self.defaults.get(&atom) else {
            return false;
        };
        let entries = self.rules_of(class, atom);
        let mut covered: BTreeMap<u8, u32> = BTreeMap::new();
        for e in entries {
            if e.value.at(t).0 != Verdict::Deny {
                return true;
            }
            *covered.entry(e.key.proto).or_default() += 1u32 << (16 - u32::from(e.key.port_bits));
        }
        let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
        default != Verdict::Deny
            && [proto::TCP, proto::UDP, icmp]
                .iter()
                .any(|p| covered.get(p).copied().unwrap_or(0) < 1 << 16)
    }
}

/// The peers of `host` at `t` (entries compiled at some `now <= t` before the view's
/// `recompile_at`).
pub(crate) fn peers_at(policy: &Policy, host: &Host, e: &Entries<'_>, t: i64) -> Vec<Peer> {
    let mut out = match host {
        Host::Connector(_) => connector_peers(policy, e, t),
        Host::Device(d) => device_peers(policy, d, e, t),
    };
    out.sort_by(|a, b| (a.public_key, &a.name).cmp(&(b.public_key, &b.name)));
    out
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

fn connector_peers(policy: &Policy, e: &Entries<'_>, t: i64) -> Vec<Peer> {
    let mut memo: HashMap<u32, bool> = HashMap::new();
    let mut out = Vec::new();
    for p in &policy.principals {
        let Some(key) = policy.principal_key(p) else {
            continue;
        };
        if !p.is_active(t) {
            continue;
        }
        let class = e.class_of.get(&p.id).copied().unwrap_or(0);
        let passes = *memo.entry(class).or_insert_with(|| e.any_passes(class, t));
        if !passes {
            continue;
        }
        let kind = match p.kind {
            PrincipalKind::Device { .. } => PeerKind::Device,
            PrincipalKind::ServiceAccountKey { .. } => PeerKind::ServiceAccountKey,
        };
        let mut allowed_ips: Vec<IpNet> = p.addresses.iter().copied().map(host_net).collect();
        allowed_ips.sort();
        out.push(Peer {
            name: policy.principal_name(p),
            kind,
            public_key: key,
            endpoint: None,
            allowed_ips,
        });
    }
    out
}

fn device_peers(policy: &Policy, device: &str, e: &Entries<'_>, t: i64) -> Vec<Peer> {
    let Some(dev) = policy.devices.iter().find(|d| d.name == device) else {
        return Vec::new();
    };
    let Some(&class) = e.class_of.get(&dev.principal) else {
        return Vec::new();
    };
    let mut reached = vec![false; policy.networks.len()];
    let mut memo: HashMap<u32, bool> = HashMap::new();
    for &(prefix, atom) in &e.live {
        if !*memo.entry(atom).or_insert_with(|| e.passes(class, atom, t)) {
            continue;
        }
        for (i, n) in policy.networks.iter().enumerate() {
            if n.cidrs.iter().any(|c| c.contains(&prefix)) {
                reached[i] = true;
            }
        }
    }
    // A name resource has no prefix: its network is reached through the connector, and the
    // proxy addresses of its names are routed to that connector as the device answers them.
    for &(v4, v6, network) in &e.names {
        if (e.passes(class, v4, t) || e.passes(class, v6, t))
            && let Some(r) = reached.get_mut(network)
        {
            *r = true;
        }
    }
    let mut by_connector: BTreeMap<&str, BTreeSet<IpNet>> = BTreeMap::new();
    for (i, n) in policy.networks.iter().enumerate() {
        if !reached[i] {
            continue;
        }
        let Some(c) = tunnel_connector(policy, i) else {
            continue;
        };
        by_connector
            .entry(&c.name)
            .or_default()
            .extend(n.cidrs.iter().copied());
    }
    by_connector
        .into_iter()
        .filter_map(|(name, cidrs)| {
            let c = policy.connector(name)?;
            Some(Peer {
                name: c.name.clone(),
                kind: PeerKind::Connector,
                public_key: c.public_key,
                endpoint: Some(c.endpoint.clone()),
                allowed_ips: cidrs.into_iter().collect(),
            })
        })
        .collect()
}

/// The connector carrying network `network`'s tunnel: the first of its `connectors` with a
/// `[[connector]]` declaration.
pub(crate) fn tunnel_connector(
    policy: &Policy,
    network: usize,
) -> Option<&crate::model::Connector> {
    policy
        .networks
        .get(network)?
        .connectors
        .iter()
        .find_map(|c| policy.connector(c))
}

/// The first instant after `now` (and before `until`, when given) at which the peers
/// differ from `current`: the expiries of rule values and of keys are the only candidates.
pub(crate) fn first_change(
    policy: &Policy,
    host: &Host,
    e: &Entries<'_>,
    current: &[Peer],
    now: i64,
    until: Option<i64>,
) -> Option<i64> {
    let mut times: BTreeSet<i64> = e
        .rules
        .iter()
        .filter_map(|r| r.value.valid_until_unix)
        .collect();
    times.extend(policy.principals.iter().filter_map(|p| p.expires_at));
    times
        .into_iter()
        .filter(|&t| t > now && until.is_none_or(|u| t < u))
        .find(|&t| peers_at(policy, host, e, t) != current)
}

/// For each prefix (a laminar family: any two are nested or disjoint), whether some
/// address is decided by it under longest-prefix match, i.e. not covered by more specific
/// prefixes of the family.
fn live_prefixes(prefixes: &[IpNet]) -> Vec<bool> {
    let span = |p: &IpNet| -> (bool, u128, u128) {
        match p {
            IpNet::V4(n) => (
                false,
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            ),
            IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
        }
    };
    let mut order: Vec<(bool, u128, std::cmp::Reverse<u128>, usize)> = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (f, s, e) = span(p);
            (f, s, std::cmp::Reverse(e), i)
        })
        .collect();
    order.sort_unstable();
    let mut live = vec![false; prefixes.len()];
    // (index, family, last address, next address not yet covered by a child; None: past
    // the end).
    let mut stack: Vec<(usize, bool, u128, Option<u128>)> = Vec::new();
    let finish = |live: &mut Vec<bool>, (i, _, end, cursor): (usize, bool, u128, Option<u128>)| {
        if cursor.is_some_and(|c| c <= end) {
            live[i] = true;
        }
    };
    for (fam, start, std::cmp::Reverse(end), i) in order {
        while let Some(&top) = stack.last() {
            if top.1 != fam || top.2 < start {
                stack.pop();
                finish(&mut live, top);
            } else {
                break;
            }
        }
        if let Some(top) = stack.last_mut() {
            if top.3.is_some_and(|c| c < start) {
                live[top.0] = true;
            }
            top.3 = end.checked_add(1);
        }
        stack.push((i, fam, end, Some(start)));
    }
    while let Some(top) = stack.pop() {
        finish(&mut live, top);
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_prefixes_decide_nothing() {
        let p = |s: &str| s.parse::<IpNet>().unwrap_or_else(|_| panic!("{s}"));
        let set = [
            p("10.0.0.0/31"),
            p("10.0.0.0/32"),
            p("10.0.0.1/32"),
            p("10.1.0.0/16"),
            p("10.1.2.0/24"),
            p("::/0"),
            p("ffff::/16"),
        ];
        assert_eq!(
            live_prefixes(&set),
            vec![false, true, true, true, true, true, true]
        );
        let full = [p("::/1"), p("::/0"), p("8000::/1")];
        assert_eq!(live_prefixes(&full), vec![true, false, true]);
    }
}
