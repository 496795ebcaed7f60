//! The resolved, validated policy the evaluator and the compiler consume.
//!
//! Everything is referenced by index (`usize` into the policy's vectors); principals
//! (devices and service-account keys) and rules have `u32` ids starting at 1.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;
use ipnet::IpNet;

pub use crate::names::NamePattern;
pub use crate::wgkey::{KeyError, WgKey};

/// A set of ports: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn none() -> Self {
        PortSet { ranges: Vec::new() }
    }

    pub fn all() -> Self {
        PortSet {
            ranges: vec![(0, u16::MAX)],
        }
    }

    /// Builds a set from arbitrary inclusive ranges (reversed ranges are ignored).
    pub fn from_ranges(input: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let mut v: Vec<(u16, u16)> = input.into_iter().filter(|(a, b)| a <= b).collect();
        v.sort_unstable();
        let mut ranges: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match ranges.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => ranges.push((a, b)),
            }
        }
        PortSet { ranges }
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn is_all(&self) -> bool {
        self.ranges == [(0, u16::MAX)]
    }

    pub fn contains(&self, port: u16) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < port);
        self.ranges.get(i).is_some_and(|r| r.0 <= port)
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a0, a1) = self.ranges[i];
            let (b0, b1) = other.ranges[j];
            let lo = a0.max(b0);
            let hi = a1.min(b1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet { ranges: out }
    }

    /// True when every port of `other` is in `self`.
    pub fn is_superset(&self, other: &PortSet) -> bool {
        self.intersect(other) == *other
    }

    /// The first port of the set.
    pub fn first(&self) -> Option<u16> {
        self.ranges.first().map(|r| r.0)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

/// Protocols and ports: TCP ports, UDP ports and whether ICMP (ICMPv6 for IPv6) is included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtoSet {
    pub tcp: PortSet,
    pub udp: PortSet,
    pub icmp: bool,
}

impl ProtoSet {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && !self.icmp
    }

    pub fn intersect(&self, other: &ProtoSet) -> ProtoSet {
        ProtoSet {
            tcp: self.tcp.intersect(&other.tcp),
            udp: self.udp.intersect(&other.udp),
            icmp: self.icmp && other.icmp,
        }
    }

    pub fn is_superset(&self, other: &ProtoSet) -> bool {
        self.tcp.is_superset(&other.tcp)
            && self.udp.is_superset(&other.udp)
            && (self.icmp || !other.icmp)
    }

    /// Whether a packet of protocol `proto` to `port` (ignored for ICMP) to an address of
    /// the given family matches. ICMP matches IPv4 destinations, ICMPv6 IPv6 ones.
    pub fn matches(&self, proto_nr: u8, port: u16, dst_is_v6: bool) -> bool {
        match proto_nr {
            proto::TCP => self.tcp.contains(port),
            proto::UDP => self.udp.contains(port),
            proto::ICMP => self.icmp && !dst_is_v6,
            proto::ICMPV6 => self.icmp && dst_is_v6,
            _ => false,
        }
    }

    /// The port set of one protocol (`None` for protocols policies never name).
    /// ICMP is all ports when allowed (rules for ICMP ignore the port).
    pub fn for_proto(&self, proto_nr: u8) -> Option<PortSet> {
        match proto_nr {
            proto::TCP => Some(self.tcp.clone()),
            proto::UDP => Some(self.udp.clone()),
            proto::ICMP | proto::ICMPV6 => Some(if self.icmp {
                PortSet::all()
            } else {
                PortSet::none()
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ProtoSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.tcp.is_empty() {
            parts.push(format!("tcp {}", self.tcp));
        }
        if !self.udp.is_empty() {
            parts.push(format!("udp {}", self.udp));
        }
        if self.icmp {
            parts.push("icmp".to_string());
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Enforce (default) or audit (log what would be dropped, let it pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNetwork {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub connectors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub network: usize,
    /// An address or CIDR (host addresses are /32 or /128 prefixes), or a DNS name.
    pub address: Address,
    pub ports: ProtoSet,
    pub mode: Mode,
    /// Rule id of this resource's audit default (audit-mode resources only).
    pub audit_rule: Option<u32>,
}

/// Where a resource is: an address or CIDR, or a DNS name or wildcard that the
/// connectors of its remote network resolve (see [`crate::names`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Net(IpNet),
    Name(NamePattern),
}

impl Address {
    /// The address or CIDR, if the resource has one.
    pub fn net(&self) -> Option<IpNet> {
        match self {
            Address::Net(n) => Some(*n),
            Address::Name(_) => None,
        }
    }

    /// The DNS name or wildcard, if the resource has one.
    pub fn name(&self) -> Option<&NamePattern> {
        match self {
            Address::Net(_) => None,
            Address::Name(p) => Some(p),
        }
    }

    /// Whether the resource's address or CIDR contains `a` (never for a name: a
    /// name's traffic goes to the proxy address the device's resolver gave it, and is
    /// decided by the name).
    pub fn contains(&self, a: &IpAddr) -> bool {
        self.net().is_some_and(|n| n.contains(a))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Net(n) => write!(f, "{n}"),
            Address::Name(p) => write!(f, "{p}"),
        }
    }
}

impl From<IpNet> for Address {
    fn from(n: IpNet) -> Address {
        Address::Net(n)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub owner: usize,
    /// One or two addresses, at most one per family, IPv4 first.
    pub addresses: Vec<IpAddr>,
    pub principal: u32,
    /// The device's WireGuard key (`public_key`), if the policy names one.
    pub public_key: Option<WgKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountKey {
    pub name: String,
    /// One or two addresses, at most one per family, IPv4 first.
    pub addresses: Vec<IpAddr>,
    pub principal: u32,
    /// Unix seconds, exclusive: the key stops being a principal at this instant.
    pub expires_at: Option<i64>,
    /// The key's WireGuard key (`public_key`), if the policy names one.
    pub public_key: Option<WgKey>,
}

/// A `[[connector]]`: the WireGuard identity and endpoint of a connector that some
/// remote network lists. Connectors without one have no tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    pub name: String,
    pub public_key: WgKey,
    /// `host:port`: an IPv4 literal, a bracketed IPv6 literal or a DNS name, port 1-65535.
    pub endpoint: String,
    /// 1-based line of the block in the policy file.
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub name: String,
    pub keys: Vec<ServiceAccountKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub users: Vec<usize>,
    pub service_accounts: Vec<usize>,
}

/// Who a grant names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalRef {
    Group(usize),
    User(usize),
    ServiceAccount(usize),
}

/// An `[[allow]]` or `[[deny]]` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub action: Action,
    pub principals: Vec<PrincipalRef>,
    pub resources: Vec<usize>,
    /// Narrowing: when present, the grant covers only these protocols/ports (intersected
    /// with each resource's own).
    pub narrowing: Option<ProtoSet>,
    /// Unix seconds, exclusive: the grant is active iff `now < expires_at`.
    pub expires_at: Option<i64>,
    /// Rule id of each (grant, resource) pair, parallel to `resources`.
    pub rules: Vec<u32>,
    /// Effective protocols/ports of each pair (resource ∩ narrowing), parallel to `resources`.
    pub effective: Vec<ProtoSet>,
    /// 1-based line of the block in the policy file.
    pub line: u32,
}

impl Grant {
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// A device or a service-account key: something with an address that sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    Device { device: usize, user: usize },
    ServiceAccountKey { service_account: usize, key: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: u32,
    pub kind: PrincipalKind,
    /// One or two addresses (an IPv4 and an IPv6 one at most), IPv4 first; each is the
    /// principal's identity on the wire.
    pub addresses: Vec<IpAddr>,
    /// Service-account keys only: unix seconds, exclusive. From then on the key is no
    /// principal at all (its address is an unknown source).
    pub expires_at: Option<i64>,
}

impl Principal {
    /// False once the principal's key has expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }

    /// The principal's address of the family of `like` (IPv4 or IPv6), if it has one.
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        address_like(&self.addresses, like)
    }
}

/// The address of `addrs` in the family of `like`, if there is one.
pub fn address_like(addrs: &[IpAddr], like: IpAddr) -> Option<IpAddr> {
    let v6 = like.to_canonical().is_ipv6();
    addrs.iter().copied().find(|a| a.is_ipv6() == v6)
}

/// What a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    /// A (grant, resource) pair.
    Grant {
        action: Action,
        grant: String,
        resource: String,
    },
    /// The audit default of an audit-mode resource (no grant matched).
    AuditDefault { resource: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RuleMeta {
    pub id: u32,
    #[serde(flatten)]
    pub kind: RuleKind,
}

impl fmt::Display for RuleMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RuleKind::Grant {
                action,
                grant,
                resource,
            } => write!(f, "rule {} ({action} '{grant}' -> '{resource}')", self.id),
            RuleKind::AuditDefault { resource } => {
                write!(f, "rule {} (audit default of '{resource}')", self.id)
            }
        }
    }
}

/// Where a `[[test]]` packet comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTest {
    pub name: String,
    pub line: u32,
    pub column: u32,
    pub from: String,
    pub to: String,
    pub src: IpAddr,
    /// The address; for a DNS name (`dst_name`), the unspecified address of the family
    /// asked for.
    pub dst: IpAddr,
    /// The DNS name tested, when `to` is one.
    pub dst_name: Option<String>,
    pub proto: u8,
    pub dst_port: u16,
    pub expect: Verdict,
    pub at: Option<i64>,
}

impl PolicyTest {
    /// The destination tested, as a [`crate::target::Target`].
    pub fn target(&self) -> crate::target::Target {
        crate::target::Target {
            addr: self.dst,
            proto: self.proto,
            port: self.dst_port,
            name: self.dst_name.clone(),
        }
    }
}

/// A parsed, resolved and validated policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub file: String,
    /// The `now` the policy was parsed at (used by `[[test]]` blocks without `at`).
    pub parsed_at: i64,
    pub networks: Vec<RemoteNetwork>,
    pub resources: Vec<Resource>,
    pub users: Vec<User>,
    pub devices: Vec<Device>,
    pub service_accounts: Vec<ServiceAccount>,
    pub groups: Vec<Group>,
    /// `[[connector]]` blocks, in file order.
    pub connectors: Vec<Connector>,
    /// In file order (allow and deny blocks interleaved as written).
    pub grants: Vec<Grant>,
    pub tests: Vec<PolicyTest>,
    /// Indexed by `id - 1`.
    pub principals: Vec<Principal>,
    /// Indexed by `id - 1`.
    pub rules: Vec<RuleMeta>,
    pub(crate) index: Index,
}

/// Derived lookups, built once after validation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    pub(crate) principal_by_addr: HashMap<IpAddr, u32>,
    /// Groups containing each user / service account (sorted).
    pub(crate) user_groups: Vec<Vec<usize>>,
    pub(crate) sa_groups: Vec<Vec<usize>>,
    /// Grants naming each group / user / service account directly (sorted).
    pub(crate) group_grants: Vec<Vec<usize>>,
    pub(crate) user_grants: Vec<Vec<usize>>,
    pub(crate) sa_grants: Vec<Vec<usize>>,
    /// Devices of each user, in device order.
    pub(crate) user_devices: Vec<Vec<usize>>,
}

/// The entity whose grants a principal carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Entity {
    User(usize),
    ServiceAccount(usize),
}

impl Policy {
    pub fn principal(&self, id: u32) -> Option<&Principal> {
        self.principals.get((id as usize).checked_sub(1)?)
    }

    pub fn principal_by_addr(&self, addr: IpAddr) -> Option<&Principal> {
        let id = *self.index.principal_by_addr.get(&addr.to_canonical())?;
        self.principal(id)
    }

    pub fn rule(&self, id: u32) -> Option<&RuleMeta> {
        self.rules.get((id as usize).checked_sub(1)?)
    }

    /// The WireGuard key the policy gives a principal (its device's or its key's).
    pub fn principal_key(&self, p: &Principal) -> Option<WgKey> {
        match p.kind {
            PrincipalKind::Device { device, .. } => self.devices[device].public_key,
            PrincipalKind::ServiceAccountKey {
                service_account,
                key,
            } => self.service_accounts[service_account].keys[key].public_key,
        }
    }

    /// The `[[connector]]` declaration of a connector, if there is one.
    pub fn connector(&self, name: &str) -> Option<&Connector> {
        self.connectors.iter().find(|c| c.name == name)
    }

    /// Human name of a principal: the device name, or `service-account/key`.
    pub fn principal_name(&self, p: &Principal) -> String {
        match p.kind {
            PrincipalKind::Device { device, .. } => self.devices[device].name.clone(),
            PrincipalKind::ServiceAccountKey {
                service_account,
                key,
            } => {
                let sa = &self.service_accounts[service_account];
                format!("{}/{}", sa.name, sa.keys[key].name)
            }
        }
    }

    pub(crate) fn entity(&self, p: &Principal) -> Entity {
        match p.kind {
            PrincipalKind::Device { user, .. } => Entity::User(user),
            PrincipalKind::ServiceAccountKey {
                service_account, ..
            } => Entity::ServiceAccount(service_account),
        }
    }

    /// (groups, direct grants) of an entity.
    pub(crate) fn entity_parts(&self, e: Entity) -> (&[usize], &[usize]) {
        match e {
            Entity::User(u) => (&self.index.user_groups[u], &self.index.user_grants[u]),
            Entity::ServiceAccount(s) => (&self.index.sa_groups[s], &self.index.sa_grants[s]),
        }
    }

    /// Every grant naming the principal directly or through a group, sorted, deduplicated.
    pub fn grants_of(&self, p: &Principal) -> Vec<usize> {
        let (groups, direct) = self.entity_parts(self.entity(p));
        let mut out: Vec<usize> = direct.to_vec();
        for &g in groups {
            out.extend_from_slice(&self.index.group_grants[g]);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Rebuilds the derived lookups; call after changing the policy by hand.
    pub fn reindex(&mut self) {
        let mut ix = Index {
            user_groups: vec![Vec::new(); self.users.len()],
            sa_groups: vec![Vec::new(); self.service_accounts.len()],
            group_grants: vec![Vec::new(); self.groups.len()],
            user_grants: vec![Vec::new(); self.users.len()],
            sa_grants: vec![Vec::new(); self.service_accounts.len()],
            user_devices: vec![Vec::new(); self.users.len()],
            ..Default::default()
        };
        for (di, d) in self.devices.iter().enumerate() {
            if let Some(v) = ix.user_devices.get_mut(d.owner) {
                v.push(di);
            }
        }
        for p in &self.principals {
            for a in &p.addresses {
                ix.principal_by_addr.insert(*a, p.id);
            }
        }
        for (gi, g) in self.groups.iter().enumerate() {
            for &u in &g.users {
                ix.user_groups[u].push(gi);
            }
            for &s in &g.service_accounts {
                ix.sa_groups[s].push(gi);
            }
        }
        for (i, g) in self.grants.iter().enumerate() {
            for r in &g.principals {
                match *r {
                    PrincipalRef::Group(x) => ix.group_grants[x].push(i),
                    PrincipalRef::User(x) => ix.user_grants[x].push(i),
                    PrincipalRef::ServiceAccount(x) => ix.sa_grants[x].push(i),
                }
            }
        }
        for v in ix
            .user_groups
            .iter_mut()
            .chain(ix.sa_groups.iter_mut())
            .chain(ix.group_grants.iter_mut())
            .chain(ix.user_grants.iter_mut())
            .chain(ix.sa_grants.iter_mut())
        {
            v.sort_unstable();
            v.dedup();
        }
        self.index = ix;
    }

    /// Principal ids a grant applies to (sorted). Reads the index: call it on a policy
    /// after [`Policy::reindex`] (as `parse` leaves every policy).
    pub fn principals_of_grant(&self, grant: usize) -> Vec<u32> {
        let g = &self.grants[grant];
        let mut users = Vec::new();
        let mut sas = Vec::new();
        for r in &g.principals {
            match *r {
                PrincipalRef::Group(x) => {
                    users.extend_from_slice(&self.groups[x].users);
                    sas.extend_from_slice(&self.groups[x].service_accounts);
                }
                PrincipalRef::User(x) => users.push(x),
                PrincipalRef::ServiceAccount(x) => sas.push(x),
            }
        }
        users.sort_unstable();
        users.dedup();
        sas.sort_unstable();
        sas.dedup();
        let mut out: Vec<u32> = Vec::new();
        for u in users {
            if let Some(devs) = self.index.user_devices.get(u) {
                out.extend(devs.iter().map(|&d| self.devices[d].principal));
            }
        }
        for s in sas {
            out.extend(self.service_accounts[s].keys.iter().map(|k| k.principal));
        }
        out.sort_unstable();
        out
    }
}

/// Parses an RFC 3339 timestamp (`2025-06-01T12:00:00Z`, `...+02:00`, fractional seconds
/// allowed and rounded up) into unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or("timestamp is too short")?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("`{part}` is not a number"));
        }
        part.parse::<i64>().map_err(|e| e.to_string())
    };
    if b.len() < 19 {
        return Err("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset".into());
    }
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err("expected YYYY-MM-DDTHH:MM:SS".into());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err("no such date".into());
    }
    if h > 23 || mi > 59 || sec > 60 {
        return Err("no such time of day".into());
    }
    let mut i = 19;
    let mut round_up = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if b[i] != b'0' {
                round_up = 1;
            }
            i += 1;
        }
        if i == start {
            return Err("expected digits after `.`".into());
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return Err("no such UTC offset".into());
            }
            let o = oh * 3600 + om * 60;
            if c == b'+' { o } else { -o }
        }
        None => return Err("missing UTC offset".into()),
        _ => return Err("expected `Z` or a UTC offset like `+02:00`".into()),
    };
    let days = days_from_civil(y, mo, d);
    Ok(days * 86400 + h * 3600 + mi * 60 + sec.min(59) + round_up - offset)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Formats unix seconds as RFC 3339 UTC (`2025-06-01T12:00:00Z`).
pub fn format_rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets() {
        let a = PortSet::from_ranges([(22, 22), (80, 90), (91, 100), (5, 3)]);
        assert_eq!(a.ranges(), &[(22, 22), (80, 100)]);
        assert!(a.contains(22) && a.contains(100) && !a.contains(101) && !a.contains(21));
        let b = PortSet::from_ranges([(0, 85)]);
        assert_eq!(a.intersect(&b).ranges(), &[(22, 22), (80, 85)]);
        assert!(a.is_superset(&a.intersect(&b)));
        assert_eq!(a.to_string(), "22,80-100");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Ok(1_709_208_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Ok(1_709_208_000)
        );
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00.5Z"), Ok(1_709_208_001));
        assert!(parse_rfc3339("2023-02-29T12:00:00Z").is_err());
        assert!(parse_rfc3339("2023-02-28T12:00:00").is_err());
        for t in [0, 1_709_208_000, 4_102_444_800, 951_782_400] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Ok(t));
        }
    }
}
