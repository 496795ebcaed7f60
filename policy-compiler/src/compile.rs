//! Compiling a policy into the view of one host: sources -> classes, destinations ->
//! atoms, (class, atom, protocol, port) -> verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;
use ipnet::IpNet;

use crate::model::*;
use crate::peers::{self, Peer};

/// The compiler's own maps: looked up, never iterated (the output does not depend on the
/// hasher), with a fast fixed-seed hasher.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// The host a view is compiled for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Host {
    /// A connector: enforces for the remote networks that list it.
    Connector(String),
    /// A client device: blocks protected traffic it is not authorized for.
    Device(String),
}

impl Host {
    /// Every host of `policy` that gets a view: each connector a remote network lists (once,
    /// in name order), then each device (in file order).
    pub fn all(policy: &Policy) -> Vec<Host> {
        let connectors: BTreeSet<&String> =
            policy.networks.iter().flat_map(|n| &n.connectors).collect();
        connectors
            .into_iter()
            .map(|c| Host::Connector(c.clone()))
            .chain(policy.devices.iter().map(|d| Host::Device(d.name.clone())))
            .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("no remote network lists connector `{0}`")]
    UnknownConnector(String),
    #[error("no device named `{0}`")]
    UnknownDevice(String),
}

/// Serializes a [`Verdict`] as `"deny"`, `"allow"` or `"audit"`.
pub(crate) fn ser_verdict<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        Verdict::Deny => "deny",
        Verdict::Allow => "allow",
        Verdict::Audit => "audit",
    })
}

/// `SRC` entry: a principal address and its class (one per address of a principal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SrcEntry {
    pub addr: IpAddr,
    pub principal: u32,
    pub class: u32,
}

/// `DST` entry: a prefix and the atom it belongs to, with the atom's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct DstEntry {
    pub prefix: IpNet,
    pub atom: u32,
    #[serde(serialize_with = "ser_verdict")]
    pub default_verdict: Verdict,
    pub default_rule: u32,
}

/// Key of a `RULES` entry: ports `port .. port + 2^(16 - port_bits) - 1` (aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleSlot {
    pub class: u32,
    pub atom: u32,
    pub proto: u8,
    pub port: u16,
    /// Prefix bits of the port (16 = one port, 0 = any port).
    pub port_bits: u8,
}

impl RuleSlot {
    pub fn last_port(&self) -> u16 {
        let span = 1u32 << (16 - u32::from(self.port_bits));
        (u32::from(self.port) + span - 1) as u16
    }
}

/// Value of a `RULES` entry: the decision until `valid_until_unix` (exclusive), then the
/// `after_*` decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleVal {
    #[serde(serialize_with = "ser_verdict")]
    pub verdict: Verdict,
    pub rule: u32,
    #[serde(serialize_with = "ser_verdict")]
    pub after_verdict: Verdict,
    pub after_rule: u32,
    pub valid_until_unix: Option<i64>,
}

impl RuleVal {
    pub fn at(&self, t: i64) -> (Verdict, u32) {
        match self.valid_until_unix {
            Some(u) if t >= u => (self.after_verdict, self.after_rule),
            _ => (self.verdict, self.rule),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleEntry {
    pub key: RuleSlot,
    pub value: RuleVal,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrincipalMeta {
    /// "device" or "service_account_key".
    pub kind: &'static str,
    /// Device name, or `service-account/key`.
    pub name: String,
    /// Owner's email (devices).
    pub user: Option<String>,
    /// The principal's addresses (one or two, IPv4 first).
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AtomMeta {
    pub network: String,
    /// Every resource covering the atom.
    pub resources: Vec<String>,
    pub prefixes: Vec<IpNet>,
    /// A name atom's pattern (it has no prefixes: the device's agent puts the proxy
    /// addresses of the names it answers under it, [`HostView::names`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The atoms of one DNS name pattern of the view: packets to a proxy address that stands
/// for a name this pattern owns ([`crate::names`]: the most specific one) are decided
/// under `v4` or `v6` (the address's family).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NameAtoms {
    pub pattern: String,
    pub v4: u32,
    pub v6: u32,
    /// What a DST entry of these atoms carries (as [`DstEntry`]): the verdict and rule
    /// when no rule entry matches.
    #[serde(serialize_with = "ser_verdict")]
    pub default_verdict: Verdict,
    pub default_rule: u32,
    /// The connector peer a device reaches this pattern's resources through (the
    /// connector carrying the network's tunnel, [`crate::peers`]); `None` in a connector's
    /// view, and for a device that reaches none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Everything one host needs: map entries (sorted, deterministic) and user-side metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostView {
    pub host: Host,
    pub compiled_at: i64,
    /// Remote networks the host enforces for.
    pub networks: Vec<String>,
    /// Connectors of those networks.
    pub connectors: Vec<String>,
    /// Protected space of this view.
    pub protected: Vec<IpNet>,
    pub sources: Vec<SrcEntry>,
    pub atoms: Vec<DstEntry>,
    pub rules: Vec<RuleEntry>,
    /// The first instant (unix seconds) at which an entry would change a second time:
    /// the agent must recompile before then. `None`: never.
    pub recompile_at: Option<i64>,
    pub principals: BTreeMap<u32, PrincipalMeta>,
    pub atom_meta: BTreeMap<u32, AtomMeta>,
    pub rule_meta: BTreeMap<u32, RuleMeta>,
    pub classes: u32,
    /// WireGuard peers of this host, sorted by public key (least knowledge: see
    /// [`crate::peers`]).
    pub peers: Vec<Peer>,
    /// The host's own overlay addresses (a device: its `addresses`; a connector: empty).
    pub tunnel_addresses: Vec<IpAddr>,
    /// The DNS name patterns of the view's resources, sorted, with their atoms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameAtoms>,
}

impl HostView {
    /// The atoms of the pattern that owns the DNS name `name` (lower-case, no trailing
    /// dot) in this view: the most specific of [`HostView::names`] matching it
    /// ([`crate::names`]), or `None` (a name no resource of the view has: the device's
    /// resolver forwards it).
    pub fn name_atoms(&self, name: &str) -> Option<&NameAtoms> {
        let parsed: Vec<(crate::names::NamePattern, &NameAtoms)> = self
            .names
            .iter()
            .filter_map(|n| {
                crate::names::NamePattern::parse(&n.pattern)
                    .ok()
                    .map(|p| (p, n))
            })
            .collect();
        crate::names::most_specific(name, parsed.iter().map(|(p, n)| (p, *n)))
            .first()
            .copied()
    }

    /// The DST entries that make `v4` and `v6` stand for the DNS name `name` (what the
    /// device's agent writes before its resolver answers the name with them), or `None`
    /// when no pattern of the view owns the name.
    pub fn proxy_entries(
        &self,
        name: &str,
        v4: std::net::Ipv4Addr,
        v6: std::net::Ipv6Addr,
    ) -> Option<[DstEntry; 2]> {
        let n = self.name_atoms(name)?;
        let entry = |prefix: IpNet, atom: u32| DstEntry {
            prefix,
            atom,
            default_verdict: n.default_verdict,
            default_rule: n.default_rule,
        };
        Some([
            entry(IpNet::V4(ipnet::Ipv4Net::from(v4)), n.v4),
            entry(IpNet::V6(ipnet::Ipv6Net::from(v6)), n.v6),
        ])
    }
}

/// Splits `lo..=hi` into aligned power-of-two blocks: (first port, prefix bits).
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    PortBlocks::new(lo, hi).collect()
}

/// The blocks of [`port_blocks`], ascending, without a vector.
struct PortBlocks {
    lo: u32,
    hi: u32,
}

impl PortBlocks {
    fn new(lo: u16, hi: u16) -> Self {
        PortBlocks {
            lo: u32::from(lo),
            hi: u32::from(hi),
        }
    }

    /// One block of every port (ICMP: port 0, no port bits).
    fn any() -> Self {
        Self::new(0, u16::MAX)
    }
}

impl Iterator for PortBlocks {
    type Item = (u16, u8);

    fn next(&mut self) -> Option<(u16, u8)> {
        let (lo, hi) = (self.lo, self.hi);
        if lo > hi {
            return None;
        }
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        self.lo = lo + size;
        Some((lo as u16, (16 - size.trailing_zeros()) as u8))
    }
}

/// The port ranges of a protocol without ports (ICMP): everything.
const ALL_PORTS: &[(u16, u16)] = &[(0, u16::MAX)];

/// Most specific prefixes first is what LPM does; this finds, for `p`, every key of `map`
/// that contains it, using only the prefix lengths that occur.
fn ancestors<'m, T>(
    map: &'m HashMap<IpNet, T>,
    lens: &BTreeSet<(bool, u8)>,
    p: &IpNet,
) -> impl Iterator<Item = (u8, &'m T)> {
    let v6 = matches!(p, IpNet::V6(_));
    let plen = p.prefix_len();
    lens.iter()
        .filter(move |(f, l)| *f == v6 && *l <= plen)
        .filter_map(move |&(_, l)| {
            let a = IpNet::new(p.addr(), l).ok()?.trunc();
            map.get(&a).map(|t| (l, t))
        })
}

/// (network, covering resources, prefixes, default) of one atom.
type AtomInfo = (usize, Vec<usize>, Vec<IpNet>, (Verdict, u32));

/// What an atom covered by `covering` decides when no rule entry matches: the lowest
/// audit-default rule of its audit-mode resources, else the default deny.
fn atom_default(policy: &Policy, covering: &[usize]) -> (Verdict, u32) {
    covering
        .iter()
        .filter_map(|&r| policy.resources[r].audit_rule)
        .min()
        .map_or(
            (Verdict::Deny, gateway_common::policy::RULE_DEFAULT_DENY),
            |r| (Verdict::Audit, r),
        )
}

#[derive(Clone, Copy)]
struct Contrib<'a> {
    ranges: &'a [(u16, u16)],
    /// 0 deny on enforcing resource, 1 deny on audit resource, 2 allow.
    rank: u8,
    rule: u32,
    expires: Option<i64>,
}

fn decide_at(cs: &[Contrib<'_>], t: i64, default: (Verdict, u32)) -> (Verdict, u32) {
    let mut best: Option<(u8, u32)> = None;
    for c in cs {
        if c.expires.is_some_and(|e| t >= e) {
            continue;
        }
        let k = (c.rank, c.rule);
        if best.is_none_or(|b| k < b) {
            best = Some(k);
        }
    }
    match best {
        None => default,
        Some((0, r)) => (Verdict::Deny, r),
        Some((1, r)) => (Verdict::Audit, r),
        Some((_, r)) => (Verdict::Allow, r),
    }
}

/// (value, second change point) of a set of contributions at `now`.
/// `times` is a scratch buffer.
fn value_of(
    cs: &[Contrib<'_>],
    now: i64,
    default: (Verdict, u32),
    times: &mut Vec<i64>,
) -> (RuleVal, Option<i64>) {
    let v0 = decide_at(cs, now, default);
    times.clear();
    times.extend(cs.iter().filter_map(|c| c.expires).filter(|&e| e > now));
    times.sort_unstable();
    times.dedup();
    let mut first: Option<(i64, (Verdict, u32))> = None;
    let mut second = None;
    for &t in times.iter() {
        let v = decide_at(cs, t, default);
        match first {
            None if v != v0 => first = Some((t, v)),
            Some((_, fv)) if v != fv => {
                second = Some(t);
                break;
            }
            _ => {}
        }
    }
    let (after, until) = match first {
        Some((t, v)) => (v, Some(t)),
        None => (v0, None),
    };
    (
        RuleVal {
            verdict: v0.0,
            rule: v0.1,
            after_verdict: after.0,
            after_rule: after.1,
            valid_until_unix: until,
        },
        second,
    )
}

/// Buffers of [`intervals_of`], reused from call to call.
#[derive(Default)]
struct Scratch<'a> {
    bounds: Vec<u32>,
    active: Vec<Contrib<'a>>,
    times: Vec<i64>,
}

/// The maximal port intervals `(first, last, value)` of equal value of the contributions
/// `cs` of one protocol (`whole`: a protocol without ports, one interval), ascending, into
/// `out`; returns the earliest second change point of their values.
fn intervals_of<'a>(
    cs: &[Contrib<'a>],
    whole: bool,
    now: i64,
    default: (Verdict, u32),
    s: &mut Scratch<'a>,
    out: &mut Vec<(u32, u32, RuleVal)>,
) -> Option<i64> {
    out.clear();
    if let [c] = cs {
        // One contribution: its value on its ranges (adjacent ones merged), the default
        // without expiry elsewhere.
        let (val, second) = value_of(cs, now, default, &mut s.times);
        if whole {
            out.push((0, 65535, val));
            return second;
        }
        let none = value_of(&[], now, default, &mut s.times).0;
        let mut next = 0u32;
        for &(a, b) in c.ranges {
            let (a, b) = (u32::from(a), u32::from(b));
            if a > next {
                push_interval(out, next, a - 1, none);
            }
            push_interval(out, a, b, val);
            next = b + 1;
        }
        if next <= 65535 {
            push_interval(out, next, 65535, none);
        }
        return second;
    }
    let bounds = &mut s.bounds;
    bounds.clear();
    bounds.extend([0, 65536]);
    if !whole {
        for c in cs {
            for &(a, b) in c.ranges {
                bounds.extend([u32::from(a), u32::from(b) + 1]);
            }
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut first_second: Option<i64> = None;
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        s.active.clear();
        s.active.extend(cs.iter().copied().filter(|c| {
            whole || {
                let i = c.ranges.partition_point(|r| u32::from(r.1) < lo);
                c.ranges.get(i).is_some_and(|r| u32::from(r.0) <= lo)
            }
        }));
        let (val, second) = value_of(&s.active, now, default, &mut s.times);
        if let Some(t) = second {
            first_second = Some(first_second.map_or(t, |r| r.min(t)));
        }
        push_interval(out, lo, hi, val);
    }
    first_second
}

/// Appends `lo..=hi` with `val` to ascending intervals, extending the last one when it
/// ends at `lo - 1` with the same value.
fn push_interval(out: &mut Vec<(u32, u32, RuleVal)>, lo: u32, hi: u32, val: RuleVal) {
    match out.last_mut() {
        Some(last) if last.2 == val && last.1 + 1 == lo => last.1 = hi,
        _ => out.push((lo, hi, val)),
    }
}

/// Compiles the view of `host` at `now` (unix seconds).
pub fn compile(policy: &Policy, host: &Host, now: i64) -> Result<HostView, CompileError> {
    // Networks and protected space.
    let (net_ids, device): (Vec<usize>, Option<&Device>) = match host {
        Host::Connector(c) => {
            let ids: Vec<usize> = (0..policy.networks.len())
                .filter(|&i| policy.networks[i].connectors.iter().any(|x| x == c))
                .collect();
            if ids.is_empty() {
                return Err(CompileError::UnknownConnector(c.clone()));
            }
            (ids, None)
        }
        Host::Device(d) => {
            let dev = policy
                .devices
                .iter()
                .find(|x| &x.name == d)
                .ok_or_else(|| CompileError::UnknownDevice(d.clone()))?;
            ((0..policy.networks.len()).collect(), Some(dev))
        }
    };
    let mut protected: HashMap<IpNet, usize> = HashMap::default();
    let mut protected_list: Vec<IpNet> = Vec::new();
    for &n in &net_ids {
        for c in &policy.networks[n].cidrs {
            if !protected.contains_key(c) {
                protected.insert(*c, n);
                protected_list.push(*c);
            }
        }
    }
    protected_list.sort();
    let mut prot_lens: BTreeSet<(bool, u8)> = BTreeSet::new();
    for c in &protected_list {
        prot_lens.insert((matches!(c, IpNet::V6(_)), c.prefix_len()));
    }
    let in_protected = |a: &IpNet| ancestors(&protected, &prot_lens, a).next().is_some();

    // Resources overlapping the protected space.
    let mut view_res = vec![false; policy.resources.len()];
    let mut res_by_prefix: HashMap<IpNet, Vec<usize>> = HashMap::default();
    let mut res_lens: BTreeSet<(bool, u8)> = BTreeSet::new();
    let mut emitted: BTreeSet<IpNet> = protected_list.iter().copied().collect();
    for (i, r) in policy.resources.iter().enumerate() {
        // Name resources have no address here: see `names` below.
        let Some(address) = r.address.net() else {
            continue;
        };
        let inside = in_protected(&address);
        let contains = !inside && protected_list.iter().any(|c| address.contains(c));
        if inside || contains {
            view_res[i] = true;
            res_by_prefix.entry(address).or_default().push(i);
            res_lens.insert((matches!(address, IpNet::V6(_)), address.prefix_len()));
            if inside {
                emitted.insert(address);
            }
        }
    }

    // Atoms: one per (network, covering resources).
    let mut atom_of_key: HashMap<(usize, Vec<usize>), u32> = HashMap::default();
    let mut atom_info: Vec<AtomInfo> = Vec::new();
    let mut dst_entries: Vec<(IpNet, u32)> = Vec::new();
    for p in &emitted {
        let mut covering: Vec<usize> = ancestors(&res_by_prefix, &res_lens, p)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        covering.sort_unstable();
        let network = ancestors(&protected, &prot_lens, p)
            .max_by_key(|(l, n)| (*l, std::cmp::Reverse(**n)))
            .map_or(0, |(_, n)| *n);
        let key = (network, covering);
        let id = match atom_of_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = atom_info.len() as u32 + 1;
                let default = atom_default(policy, &key.1);
                atom_info.push((key.0, key.1.clone(), Vec::new(), default));
                atom_of_key.insert(key, id);
                id
            }
        };
        atom_info[id as usize - 1].2.push(*p);
        dst_entries.push((*p, id));
    }

    // Name atoms: per distinct pattern of the view's networks' name resources, one IPv4
    // and one IPv6 atom (their ICMP differs), after every address atom; no DST entries.
    let net_in_view = {
        let mut v = vec![false; policy.networks.len()];
        for &n in &net_ids {
            v[n] = true;
        }
        v
    };
    let mut by_pattern: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in policy.resources.iter().enumerate() {
        if let Some(p) = r.address.name()
            && net_in_view.get(r.network).copied().unwrap_or(false)
        {
            by_pattern.entry(p.to_string()).or_default().push(i);
        }
    }
    let address_atoms = atom_info.len();
    let mut names: Vec<NameAtoms> = Vec::with_capacity(by_pattern.len());
    for (pattern, covering) in by_pattern {
        let network = covering
            .iter()
            .map(|&r| policy.resources[r].network)
            .min()
            .unwrap_or(0);
        let default = atom_default(policy, &covering);
        for &r in &covering {
            view_res[r] = true;
        }
        let v4 = atom_info.len() as u32 + 1;
        atom_info.push((network, covering.clone(), Vec::new(), default));
        atom_info.push((network, covering, Vec::new(), default));
        names.push(NameAtoms {
            pattern,
            v4,
            v6: v4 + 1,
            default_verdict: default.0,
            default_rule: default.1,
            peer: None,
        });
    }
    // An atom's family: its prefixes' (address atoms), every second one of a name pair.
    let atom_v6 = |atom: u32| -> bool {
        let i = atom as usize - 1;
        if i < address_atoms {
            matches!(atom_info[i].2.first(), Some(IpNet::V6(_)))
        } else {
            (i - address_atoms) % 2 == 1
        }
    };

    // Grants that matter here: active now and touching a resource of the view.
    let relevant: Vec<bool> = policy
        .grants
        .iter()
        .map(|g| g.is_active(now) && g.resources.iter().any(|&r| view_res[r]))
        .collect();

    // Classes: principals with the same relevant grants.
    let candidates: Vec<&Principal> = match device {
        Some(d) => policy.principal(d.principal).into_iter().collect(),
        None => policy.principals.iter().collect(),
    };
    let mut memo: HashMap<(&[usize], &[usize]), u32> = HashMap::default();
    let mut class_of_sig: HashMap<Vec<usize>, u32> = HashMap::default();
    let mut signatures: Vec<Vec<usize>> = Vec::new();
    let mut sources = Vec::new();
    for p in candidates {
        // An expired service-account key has no entry: its address is an unknown source.
        if !p.is_active(now) {
            continue;
        }
        let parts = policy.entity_parts(policy.entity(p));
        let class = match memo.get(&parts) {
            Some(c) => *c,
            None => {
                let (groups, direct) = parts;
                let mut sig: Vec<usize> = direct.iter().copied().filter(|&g| relevant[g]).collect();
                for &gr in groups {
                    sig.extend(
                        policy.index.group_grants[gr]
                            .iter()
                            .copied()
                            .filter(|&g| relevant[g]),
                    );
                }
                sig.sort_unstable();
                sig.dedup();
                let c = if sig.is_empty() && device.is_none() {
                    0
                } else {
                    let next = signatures.len() as u32 + 1;
                    *class_of_sig.entry(sig.clone()).or_insert_with(|| {
                        signatures.push(sig);
                        next
                    })
                };
                memo.insert(parts, c);
                c
            }
        };
        if class != 0 {
            for &addr in &p.addresses {
                sources.push(SrcEntry {
                    addr,
                    principal: p.id,
                    class,
                });
            }
        }
    }

    // Rules, generated in key order: classes ascending, atoms ascending, protocols by
    // number, ports ascending (the final sort then only checks).
    let mut resource_atoms: Vec<Vec<u32>> = vec![Vec::new(); policy.resources.len()];
    for (i, (_, cov, _, _)) in atom_info.iter().enumerate() {
        for &r in cov {
            resource_atoms[r].push(i as u32 + 1);
        }
    }
    let mut rules: Vec<RuleEntry> = Vec::new();
    let mut recompile_at: Option<i64> = None;
    // Buffers reused across classes, atoms and protocols: the (grant, index of the
    // resource in the grant) pairs of each atom of a class, and the atoms that have some.
    let mut by_atom: Vec<Vec<(usize, usize)>> = vec![Vec::new(); atom_info.len() + 1];
    let mut touched: Vec<u64> = vec![0; (atom_info.len() + 1).div_ceil(64)];
    let mut cs: Vec<Contrib<'_>> = Vec::new();
    let mut intervals: Vec<(u32, u32, RuleVal)> = Vec::new();
    let mut scratch = Scratch::default();
    for (ci, sig) in signatures.iter().enumerate() {
        let class = ci as u32 + 1;
        for &g in sig {
            for (k, &r) in policy.grants[g].resources.iter().enumerate() {
                if !view_res[r] {
                    continue;
                }
                for &a in &resource_atoms[r] {
                    let pairs = &mut by_atom[a as usize];
                    if pairs.is_empty() {
                        touched[a as usize / 64] |= 1 << (a % 64);
                    }
                    pairs.push((g, k));
                }
            }
        }
        // Touched atoms, ascending; their lists are emptied for the next class.
        for (w, word) in touched.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let atom = (w * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                let mut group = std::mem::take(&mut by_atom[atom as usize]);
                let info = &atom_info[atom as usize - 1];
                let default = info.3;
                let v6 = atom_v6(atom);
                let (icmp, protos) = if v6 {
                    (proto::ICMPV6, [proto::TCP, proto::UDP, proto::ICMPV6])
                } else {
                    (proto::ICMP, [proto::ICMP, proto::TCP, proto::UDP])
                };
                for pr in protos {
                    let is_icmp = pr == icmp;
                    cs.clear();
                    for &(g, k) in &group {
                        let gr = &policy.grants[g];
                        let set = &gr.effective[k];
                        let ranges: &[(u16, u16)] = if is_icmp {
                            if set.icmp { ALL_PORTS } else { &[] }
                        } else if pr == proto::TCP {
                            set.tcp.ranges()
                        } else {
                            set.udp.ranges()
                        };
                        if ranges.is_empty() {
                            continue;
                        }
                        let rank = match (gr.action, policy.resources[gr.resources[k]].mode) {
                            (Action::Deny, Mode::Enforce) => 0,
                            (Action::Deny, Mode::Audit) => 1,
                            (Action::Allow, _) => 2,
                        };
                        cs.push(Contrib {
                            ranges,
                            rank,
                            rule: gr.rules[k],
                            expires: gr.expires_at,
                        });
                    }
                    if cs.is_empty() {
                        continue;
                    }
                    if let Some(t) =
                        intervals_of(&cs, is_icmp, now, default, &mut scratch, &mut intervals)
                    {
                        recompile_at = Some(recompile_at.map_or(t, |r| r.min(t)));
                    }
                    for &(lo, hi, val) in &intervals {
                        if val.valid_until_unix.is_none() && (val.verdict, val.rule) == default {
                            continue;
                        }
                        let blocks = if is_icmp {
                            PortBlocks::any()
                        } else {
                            PortBlocks::new(lo as u16, hi as u16)
                        };
                        rules.extend(blocks.map(|(port, port_bits)| RuleEntry {
                            key: RuleSlot {
                                class,
                                atom,
                                proto: pr,
                                port,
                                port_bits,
                            },
                            value: val,
                        }));
                    }
                }
                group.clear();
                by_atom[atom as usize] = group;
            }
        }
    }
    // Already in order: this only checks (one pass over sorted input).
    rules.sort_unstable();
    // Pushed in principal order (ascending ids, consecutive duplicates).
    let mut principal_ids: Vec<u32> = Vec::with_capacity(sources.len());
    for s in &sources {
        if principal_ids.last() != Some(&s.principal) {
            principal_ids.push(s.principal);
        }
    }
    // The derived order (address, principal, class) on integers: an IPv4 address before
    // every IPv6 one, each by its numeric value (the order of its octets). Keys are unique;
    // the stable sort merges the ascending runs principals mostly come in.
    sources.sort_by_key(|s| {
        let addr = match s.addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        (addr, s.principal, s.class)
    });

    // Entries and metadata.
    let mut atoms: Vec<DstEntry> = dst_entries
        .iter()
        .map(|&(prefix, atom)| {
            let d = atom_info[atom as usize - 1].3;
            DstEntry {
                prefix,
                atom,
                default_verdict: d.0,
                default_rule: d.1,
            }
        })
        .collect();
    atoms.sort_unstable();
    // Principals of the entries, by id: built from ascending ids in one go.
    principal_ids.sort_unstable();
    principal_ids.dedup();
    let principals: BTreeMap<u32, PrincipalMeta> = principal_ids
        .iter()
        .filter_map(|&id| policy.principal(id))
        .map(|p| {
            let (kind, user) = match p.kind {
                PrincipalKind::Device { user, .. } => {
                    ("device", Some(policy.users[user].email.clone()))
                }
                PrincipalKind::ServiceAccountKey { .. } => ("service_account_key", None),
            };
            let meta = PrincipalMeta {
                kind,
                name: policy.principal_name(p),
                user,
                addresses: p.addresses.clone(),
            };
            (p.id, meta)
        })
        .collect();
    let mut atom_meta = BTreeMap::new();
    let name_of_atom: HashMap<u32, &str> = names
        .iter()
        .flat_map(|n| [(n.v4, n.pattern.as_str()), (n.v6, n.pattern.as_str())])
        .collect();
    for (i, (net, cov, prefixes, _)) in atom_info.iter().enumerate() {
        let mut prefixes = prefixes.clone();
        prefixes.sort_unstable();
        atom_meta.insert(
            i as u32 + 1,
            AtomMeta {
                network: policy
                    .networks
                    .get(*net)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                resources: cov
                    .iter()
                    .map(|&r| policy.resources[r].name.clone())
                    .collect(),
                prefixes,
                name: name_of_atom.get(&(i as u32 + 1)).map(|p| p.to_string()),
            },
        );
    }
    // The policy's rules the entries name (ids 1..=rules), ascending.
    let mut named = vec![false; policy.rules.len() + 1];
    for id in rules
        .iter()
        .flat_map(|r| [r.value.rule, r.value.after_rule])
        .chain(atoms.iter().map(|a| a.default_rule))
        .chain(atom_info[address_atoms..].iter().map(|a| a.3.1))
    {
        if let Some(n) = named.get_mut(id as usize) {
            *n = true;
        }
    }
    let rule_meta = (1..named.len())
        .filter(|&i| named[i])
        .filter_map(|i| {
            let id = i as u32;
            policy.rule(id).map(|m| (id, m.clone()))
        })
        .collect();
    let mut connectors: Vec<String> = net_ids
        .iter()
        .flat_map(|&n| policy.networks[n].connectors.iter().cloned())
        .collect();
    connectors.sort();
    connectors.dedup();
    // A key that expires drops out of SRC: the view must be recompiled then (SRC entries
    // carry no expiry of their own).
    for src in &sources {
        if let Some(e) = policy.principal(src.principal).and_then(|p| p.expires_at)
            && e > now
        {
            recompile_at = Some(recompile_at.map_or(e, |r| r.min(e)));
        }
    }
    // Peers, and the first instant they change (a grant or key expiry the entries carry
    // as their `after_*` value changes the peers without a second change).
    let name_networks: Vec<(u32, u32, usize)> = names
        .iter()
        .map(|n| (n.v4, n.v6, atom_info[n.v4 as usize - 1].0))
        .collect();
    let entries = peers::Entries::new(&sources, &atoms, &rules).with_names(&names, &name_networks);
    let peers = peers::peers_at(policy, host, &entries, now);
    if matches!(host, Host::Device(_)) {
        for (n, &(_, _, network)) in names.iter_mut().zip(&name_networks) {
            n.peer = peers::tunnel_connector(policy, network)
                .filter(|c| peers.iter().any(|p| p.name == c.name))
                .map(|c| c.name.clone());
        }
    }
    if let Some(t) = peers::first_change(policy, host, &entries, &peers, now, recompile_at) {
        recompile_at = Some(t);
    }
    let tunnel_addresses = device.map(|d| d.addresses.clone()).unwrap_or_default();
    Ok(HostView {
        host: host.clone(),
        compiled_at: now,
        networks: net_ids
            .iter()
            .map(|&n| policy.networks[n].name.clone())
            .collect(),
        connectors,
        protected: protected_list,
        sources,
        atoms,
        rules,
        recompile_at,
        principals,
        atom_meta,
        rule_meta,
        classes: signatures.len() as u32,
        peers,
        tunnel_addresses,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_exactly() {
        for (lo, hi) in [
            (0u16, 65535u16),
            (22, 22),
            (8000, 8100),
            (1, 1024),
            (0, 0),
            (65535, 65535),
            (3, 65534),
        ] {
            let b = port_blocks(lo, hi);
            let mut next = u32::from(lo);
            for (p, bits) in &b {
                assert_eq!(u32::from(*p), next);
                let size = 1u32 << (16 - u32::from(*bits));
                assert_eq!(u32::from(*p) % size, 0, "aligned");
                next += size;
            }
            assert_eq!(next, u32::from(hi) + 1);
        }
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(
            port_blocks(8000, 8100),
            vec![(8000, 10), (8064, 11), (8096, 14), (8100, 16)]
        );
    }
}
