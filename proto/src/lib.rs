//! The gRPC API of the zt-gateway control plane, generated from
//! `proto/ztgateway/v1/*.proto` (compiled with protox, no system `protoc`), and the
//! conversions between the wire view messages and [`policy_compiler::HostView`].
//!
//! * [`v1`]: messages, `admin_client`/`admin_server`, `agent_client`/`agent_server`.
//! * [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set, for gRPC reflection.
//! * [`view_to_wire`] / [`view_from_wire`]: a whole view (snapshot) both ways.
//! * [`delta_to_wire`]: the change from one view to the next; [`apply_delta`] applies it,
//!   so that `apply_delta(old, delta_to_wire(old, new)) == new` (entries and metadata;
//!   `compiled_at` follows the metadata, which is only sent when it changed).
//! * [`host_name`] / [`parse_host`]: `connector:NAME` / `device:NAME`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use policy_compiler as pc;

pub mod codec;

/// Generated code of package `ztgateway.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ztgateway.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file (for `tonic-reflection`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ztgateway_descriptor.bin"));

/// A wire message that does not describe a valid view.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("invalid address `{0}`")]
    Addr(String),
    #[error("invalid prefix `{0}`")]
    Prefix(String),
    #[error("invalid verdict {0}")]
    Verdict(i32),
    #[error("invalid host `{0}` (expected `connector:NAME` or `device:NAME`)")]
    Host(String),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid value of `{0}`: {1}")]
    Value(&'static str, String),
}

type R<T> = Result<T, ConvertError>;

// ------------------------------------------------------------------ transport

/// The host of a `scheme://host[:port]` URL (IPv6 literals without their brackets).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.split(':').next().unwrap_or(authority)).filter(|h| !h.is_empty())
}

/// Whether plaintext (`http://`) may be used to reach `url`: only when its host is a
/// loopback address (127.0.0.0/8, ::1) or `localhost`, where credentials never cross a
/// network. Everything else needs `https://` with the deployment's CA.
pub fn plaintext_allowed(url: &str) -> bool {
    match url_host(url) {
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

// ------------------------------------------------------------------ hosts

/// `connector:NAME` or `device:NAME`.
pub fn host_name(h: &pc::Host) -> String {
    match h {
        pc::Host::Connector(n) => format!("connector:{n}"),
        pc::Host::Device(n) => format!("device:{n}"),
    }
}

/// Parses `connector:NAME` or `device:NAME`.
pub fn parse_host(s: &str) -> R<pc::Host> {
    match s.split_once(':') {
        Some(("connector", n)) if !n.is_empty() => Ok(pc::Host::Connector(n.to_string())),
        Some(("device", n)) if !n.is_empty() => Ok(pc::Host::Device(n.to_string())),
        _ => Err(ConvertError::Host(s.to_string())),
    }
}

pub fn host_to_wire(h: &pc::Host) -> v1::Host {
    match h {
        pc::Host::Connector(n) => v1::Host {
            kind: v1::HostKind::Connector as i32,
            name: n.clone(),
        },
        pc::Host::Device(n) => v1::Host {
            kind: v1::HostKind::Device as i32,
            name: n.clone(),
        },
    }
}

pub fn host_from_wire(h: &v1::Host) -> R<pc::Host> {
    match v1::HostKind::try_from(h.kind) {
        Ok(v1::HostKind::Connector) => Ok(pc::Host::Connector(h.name.clone())),
        Ok(v1::HostKind::Device) => Ok(pc::Host::Device(h.name.clone())),
        _ => Err(ConvertError::Host(format!(
            "kind {} name {}",
            h.kind, h.name
        ))),
    }
}

// ------------------------------------------------------------------ scalars

pub fn verdict_to_wire(v: pc::Verdict) -> i32 {
    (match v {
        pc::Verdict::Deny => v1::Verdict::Deny,
        pc::Verdict::Allow => v1::Verdict::Allow,
        pc::Verdict::Audit => v1::Verdict::Audit,
    }) as i32
}

pub fn verdict_from_wire(v: i32) -> R<pc::Verdict> {
    match v1::Verdict::try_from(v) {
        Ok(v1::Verdict::Deny) => Ok(pc::Verdict::Deny),
        Ok(v1::Verdict::Allow) => Ok(pc::Verdict::Allow),
        Ok(v1::Verdict::Audit) => Ok(pc::Verdict::Audit),
        _ => Err(ConvertError::Verdict(v)),
    }
}

fn addr(s: &str) -> R<IpAddr> {
    IpAddr::from_str(s).map_err(|_| ConvertError::Addr(s.to_string()))
}

fn prefix(s: &str) -> R<IpNet> {
    IpNet::from_str(s).map_err(|_| ConvertError::Prefix(s.to_string()))
}

fn narrow<T: TryFrom<u32>>(field: &'static str, v: u32) -> R<T> {
    T::try_from(v).map_err(|_| ConvertError::Value(field, v.to_string()))
}

// ------------------------------------------------------------------ entries

pub fn src_to_wire(s: &pc::SrcEntry) -> v1::SrcEntry {
    v1::SrcEntry {
        addr: s.addr.to_string(),
        principal: s.principal,
        class: s.class,
    }
}

pub fn src_from_wire(s: &v1::SrcEntry) -> R<pc::SrcEntry> {
    Ok(pc::SrcEntry {
        addr: addr(&s.addr)?,
        principal: s.principal,
        class: s.class,
    })
}

pub fn dst_to_wire(d: &pc::DstEntry) -> v1::DstEntry {
    v1::DstEntry {
        prefix: d.prefix.to_string(),
        atom: d.atom,
        default_verdict: verdict_to_wire(d.default_verdict),
        default_rule: d.default_rule,
    }
}

pub fn dst_from_wire(d: &v1::DstEntry) -> R<pc::DstEntry> {
    Ok(pc::DstEntry {
        prefix: prefix(&d.prefix)?,
        atom: d.atom,
        default_verdict: verdict_from_wire(d.default_verdict)?,
        default_rule: d.default_rule,
    })
}

pub fn slot_to_wire(k: &pc::RuleSlot) -> v1::RuleSlot {
    v1::RuleSlot {
        class: k.class,
        atom: k.atom,
        proto: u32::from(k.proto),
        port: u32::from(k.port),
        port_bits: u32::from(k.port_bits),
    }
}

pub fn slot_from_wire(k: &v1::RuleSlot) -> R<pc::RuleSlot> {
    let port_bits: u8 = narrow("port_bits", k.port_bits)?;
    if port_bits > 16 {
        return Err(ConvertError::Value("port_bits", k.port_bits.to_string()));
    }
    Ok(pc::RuleSlot {
        class: k.class,
        atom: k.atom,
        proto: narrow("proto", k.proto)?,
        port: narrow("port", k.port)?,
        port_bits,
    })
}

pub fn rule_val_to_wire(v: &pc::RuleVal) -> v1::RuleValue {
    v1::RuleValue {
        verdict: verdict_to_wire(v.verdict),
        rule: v.rule,
        after_verdict: verdict_to_wire(v.after_verdict),
        after_rule: v.after_rule,
        valid_until_unix: v.valid_until_unix,
    }
}

pub fn rule_val_from_wire(v: &v1::RuleValue) -> R<pc::RuleVal> {
    Ok(pc::RuleVal {
        verdict: verdict_from_wire(v.verdict)?,
        rule: v.rule,
        after_verdict: verdict_from_wire(v.after_verdict)?,
        after_rule: v.after_rule,
        valid_until_unix: v.valid_until_unix,
    })
}

pub fn rule_to_wire(r: &pc::RuleEntry) -> v1::RuleEntry {
    v1::RuleEntry {
        key: Some(slot_to_wire(&r.key)),
        value: Some(rule_val_to_wire(&r.value)),
    }
}

pub fn rule_from_wire(r: &v1::RuleEntry) -> R<pc::RuleEntry> {
    Ok(pc::RuleEntry {
        key: slot_from_wire(r.key.as_ref().ok_or(ConvertError::Missing("key"))?)?,
        value: rule_val_from_wire(r.value.as_ref().ok_or(ConvertError::Missing("value"))?)?,
    })
}

// ------------------------------------------------------------------ peers

/// A WireGuard key from its base64 text.
pub fn key_from_wire(field: &'static str, s: &str) -> R<pc::WgKey> {
    // A key is 44 characters; anything much longer is not looked at further.
    if s.len() > 64 {
        return Err(ConvertError::Value(
            field,
            format!("{} characters", s.len()),
        ));
    }
    s.parse()
        .map_err(|e: pc::KeyError| ConvertError::Value(field, e.to_string()))
}

pub fn peer_to_wire(p: &pc::Peer) -> v1::Peer {
    v1::Peer {
        name: p.name.clone(),
        kind: p.kind.as_str().to_string(),
        public_key: p.public_key.to_string(),
        endpoint: p.endpoint.clone(),
        allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
    }
}

pub fn peer_from_wire(p: &v1::Peer) -> R<pc::Peer> {
    let mut allowed_ips: Vec<IpNet> = p.allowed_ips.iter().map(|a| prefix(a)).collect::<R<_>>()?;
    allowed_ips.sort();
    Ok(pc::Peer {
        name: p.name.clone(),
        kind: pc::PeerKind::parse(&p.kind)
            .ok_or_else(|| ConvertError::Value("peer kind", p.kind.clone()))?,
        public_key: key_from_wire("public_key", &p.public_key)?,
        endpoint: p.endpoint.clone(),
        allowed_ips,
    })
}

// ------------------------------------------------------------------ metadata

/// The metadata of a view.
pub fn meta_to_wire(v: &pc::HostView) -> v1::ViewMeta {
    v1::ViewMeta {
        host: Some(host_to_wire(&v.host)),
        compiled_at: v.compiled_at,
        networks: v.networks.clone(),
        connectors: v.connectors.clone(),
        protected: v.protected.iter().map(ToString::to_string).collect(),
        recompile_at: v.recompile_at,
        principals: v
            .principals
            .iter()
            .map(|(&id, p)| v1::PrincipalMeta {
                id,
                kind: p.kind.to_string(),
                name: p.name.clone(),
                user: p.user.clone(),
                addresses: p.addresses.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        atoms: v
            .atom_meta
            .iter()
            .map(|(&id, a)| v1::AtomMeta {
                id,
                network: a.network.clone(),
                resources: a.resources.clone(),
                prefixes: a.prefixes.iter().map(ToString::to_string).collect(),
                name: a.name.clone(),
            })
            .collect(),
        rules: v
            .rule_meta
            .iter()
            .map(|(&id, m)| v1::RuleMeta {
                id,
                kind: Some(match &m.kind {
                    pc::RuleKind::Grant {
                        action,
                        grant,
                        resource,
                    } => v1::rule_meta::Kind::Grant(v1::GrantRule {
                        action: action.to_string(),
                        grant: grant.clone(),
                        resource: resource.clone(),
                    }),
                    pc::RuleKind::AuditDefault { resource } => {
                        v1::rule_meta::Kind::AuditDefault(v1::AuditDefaultRule {
                            resource: resource.clone(),
                        })
                    }
                }),
            })
            .collect(),
        classes: v.classes,
        tunnel_addresses: v.tunnel_addresses.iter().map(ToString::to_string).collect(),
        names: v
            .names
            .iter()
            .map(|n| v1::NameAtoms {
                pattern: n.pattern.clone(),
                v4: n.v4,
                v6: n.v6,
                default_verdict: verdict_to_wire(n.default_verdict),
                default_rule: n.default_rule,
                peer: n.peer.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// Replaces the metadata of `v` with `m` (entries are left alone).
pub fn set_meta(v: &mut pc::HostView, m: &v1::ViewMeta) -> R<()> {
    let host = host_from_wire(m.host.as_ref().ok_or(ConvertError::Missing("host"))?)?;
    let mut principals = BTreeMap::new();
    for p in &m.principals {
        let kind: &'static str = match p.kind.as_str() {
            "device" => "device",
            "service_account_key" => "service_account_key",
            other => return Err(ConvertError::Value("principal kind", other.to_string())),
        };
        principals.insert(
            p.id,
            pc::PrincipalMeta {
                kind,
                name: p.name.clone(),
                user: p.user.clone(),
                addresses: p.addresses.iter().map(|a| addr(a)).collect::<R<_>>()?,
            },
        );
    }
    let mut atom_meta = BTreeMap::new();
    for a in &m.atoms {
        atom_meta.insert(
            a.id,
            pc::AtomMeta {
                network: a.network.clone(),
                resources: a.resources.clone(),
                prefixes: a.prefixes.iter().map(|p| prefix(p)).collect::<R<_>>()?,
                name: a.name.clone(),
            },
        );
    }
    let mut names = Vec::with_capacity(m.names.len());
    for n in &m.names {
        pc::names::NamePattern::parse(&n.pattern)
            .map_err(|(e, _)| ConvertError::Value("name pattern", format!("{}: {e}", n.pattern)))?;
        names.push(pc::NameAtoms {
            pattern: n.pattern.clone(),
            v4: n.v4,
            v6: n.v6,
            default_verdict: verdict_from_wire(n.default_verdict)?,
            default_rule: n.default_rule,
            peer: (!n.peer.is_empty()).then(|| n.peer.clone()),
        });
    }
    let mut rule_meta = BTreeMap::new();
    for r in &m.rules {
        let kind = match r.kind.as_ref().ok_or(ConvertError::Missing("rule kind"))? {
            v1::rule_meta::Kind::Grant(g) => pc::RuleKind::Grant {
                action: match g.action.as_str() {
                    "allow" => pc::Action::Allow,
                    "deny" => pc::Action::Deny,
                    other => return Err(ConvertError::Value("action", other.to_string())),
                },
                grant: g.grant.clone(),
                resource: g.resource.clone(),
            },
            v1::rule_meta::Kind::AuditDefault(a) => pc::RuleKind::AuditDefault {
                resource: a.resource.clone(),
            },
        };
        rule_meta.insert(r.id, pc::RuleMeta { id: r.id, kind });
    }
    v.host = host;
    v.compiled_at = m.compiled_at;
    v.networks = m.networks.clone();
    v.connectors = m.connectors.clone();
    v.protected = m.protected.iter().map(|p| prefix(p)).collect::<R<_>>()?;
    v.recompile_at = m.recompile_at;
    v.principals = principals;
    v.atom_meta = atom_meta;
    v.rule_meta = rule_meta;
    v.classes = m.classes;
    v.tunnel_addresses = m
        .tunnel_addresses
        .iter()
        .map(|a| addr(a))
        .collect::<R<_>>()?;
    v.names = names;
    Ok(())
}

/// Whether two views have the same metadata, `compiled_at` aside.
pub fn same_meta(a: &pc::HostView, b: &pc::HostView) -> bool {
    a.host == b.host
        && a.networks == b.networks
        && a.connectors == b.connectors
        && a.protected == b.protected
        && a.recompile_at == b.recompile_at
        && a.principals == b.principals
        && a.atom_meta == b.atom_meta
        && a.rule_meta == b.rule_meta
        && a.classes == b.classes
        && a.tunnel_addresses == b.tunnel_addresses
        && a.names == b.names
}

// ------------------------------------------------------------------ views

/// An empty view of `host` (what a host that left the policy enforces: nothing).
pub fn empty_view(host: &pc::Host, now: i64) -> pc::HostView {
    pc::HostView {
        host: host.clone(),
        compiled_at: now,
        networks: Vec::new(),
        connectors: Vec::new(),
        protected: Vec::new(),
        sources: Vec::new(),
        atoms: Vec::new(),
        rules: Vec::new(),
        recompile_at: None,
        principals: BTreeMap::new(),
        atom_meta: BTreeMap::new(),
        rule_meta: BTreeMap::new(),
        classes: 0,
        peers: Vec::new(),
        tunnel_addresses: Vec::new(),
        names: Vec::new(),
    }
}

/// A whole view as a snapshot message.
pub fn view_to_wire(v: &pc::HostView) -> v1::HostView {
    v1::HostView {
        meta: Some(meta_to_wire(v)),
        sources: v.sources.iter().map(src_to_wire).collect(),
        atoms: v.atoms.iter().map(dst_to_wire).collect(),
        rules: v.rules.iter().map(rule_to_wire).collect(),
        peers: v.peers.iter().map(peer_to_wire).collect(),
    }
}

/// A snapshot message as a view (entries sorted as the compiler sorts them).
pub fn view_from_wire(w: &v1::HostView) -> R<pc::HostView> {
    let meta = w.meta.as_ref().ok_or(ConvertError::Missing("meta"))?;
    let host = host_from_wire(meta.host.as_ref().ok_or(ConvertError::Missing("host"))?)?;
    let mut v = empty_view(&host, meta.compiled_at);
    set_meta(&mut v, meta)?;
    v.sources = w.sources.iter().map(src_from_wire).collect::<R<_>>()?;
    v.atoms = w.atoms.iter().map(dst_from_wire).collect::<R<_>>()?;
    v.rules = w.rules.iter().map(rule_from_wire).collect::<R<_>>()?;
    v.peers = w.peers.iter().map(peer_from_wire).collect::<R<_>>()?;
    sort_peers(&mut v.peers);
    v.sources.sort_unstable();
    v.atoms.sort_unstable();
    v.rules.sort_unstable();
    Ok(v)
}

/// Peers in the compiler's order (by public key).
fn sort_peers(p: &mut [pc::Peer]) {
    p.sort_by(|a, b| (a.public_key, &a.name).cmp(&(b.public_key, &b.name)));
}

// ------------------------------------------------------------------ deltas

/// The change from `old` to `new` (same host) as a wire delta; `meta` is present only
/// when the metadata differs (`compiled_at` aside).
pub fn delta_to_wire(old: &pc::HostView, new: &pc::HostView) -> v1::ViewDelta {
    let d = pc::diff(old, new);
    delta_from_diff(&d, (!same_meta(old, new)).then(|| meta_to_wire(new)))
}

/// A wire delta from a computed [`pc::Delta`] and the new metadata (if it changed).
pub fn delta_from_diff(d: &pc::Delta, meta: Option<v1::ViewMeta>) -> v1::ViewDelta {
    let src = |(a, (p, c)): (&IpAddr, &(u32, u32))| {
        src_to_wire(&pc::SrcEntry {
            addr: *a,
            principal: *p,
            class: *c,
        })
    };
    let dst = |(p, v): (&IpNet, &pc::DstVal)| {
        dst_to_wire(&pc::DstEntry {
            prefix: *p,
            atom: v.atom,
            default_verdict: v.default_verdict,
            default_rule: v.default_rule,
        })
    };
    let rule =
        |(k, v): (&pc::RuleSlot, &pc::RuleVal)| rule_to_wire(&pc::RuleEntry { key: *k, value: *v });
    v1::ViewDelta {
        src_upserted: d
            .src
            .added
            .iter()
            .map(|(k, v)| src((k, v)))
            .chain(d.src.changed.iter().map(|(k, _, v)| src((k, v))))
            .collect(),
        src_removed: d.src.removed.iter().map(|(k, _)| k.to_string()).collect(),
        dst_upserted: d
            .dst
            .added
            .iter()
            .map(|(k, v)| dst((k, v)))
            .chain(d.dst.changed.iter().map(|(k, _, v)| dst((k, v))))
            .collect(),
        dst_removed: d.dst.removed.iter().map(|(k, _)| k.to_string()).collect(),
        rules_upserted: d
            .rules
            .added
            .iter()
            .map(|(k, v)| rule((k, v)))
            .chain(d.rules.changed.iter().map(|(k, _, v)| rule((k, v))))
            .collect(),
        rules_removed: d
            .rules
            .removed
            .iter()
            .map(|(k, _)| slot_to_wire(k))
            .collect(),
        meta,
        peers_upserted: d
            .peers
            .added
            .iter()
            .map(|(_, p)| peer_to_wire(p))
            .chain(d.peers.changed.iter().map(|(_, _, p)| peer_to_wire(p)))
            .collect(),
        peers_removed: d.peers.removed.iter().map(|(k, _)| k.to_string()).collect(),
    }
}

/// Whether a delta changes nothing.
pub fn delta_is_empty(d: &v1::ViewDelta) -> bool {
    d.src_upserted.is_empty()
        && d.src_removed.is_empty()
        && d.dst_upserted.is_empty()
        && d.dst_removed.is_empty()
        && d.rules_upserted.is_empty()
        && d.rules_removed.is_empty()
        && d.peers_upserted.is_empty()
        && d.peers_removed.is_empty()
        && d.meta.is_none()
}

/// Applies a delta to `view`: removals, then upserts, then the metadata (if present).
/// On error `view` is left unchanged.
pub fn apply_delta(view: &mut pc::HostView, d: &v1::ViewDelta) -> R<()> {
    let mut src: BTreeMap<IpAddr, pc::SrcEntry> =
        view.sources.iter().map(|s| (s.addr, *s)).collect();
    let mut dst: BTreeMap<IpNet, pc::DstEntry> =
        view.atoms.iter().map(|a| (a.prefix, *a)).collect();
    let mut rules: BTreeMap<pc::RuleSlot, pc::RuleEntry> =
        view.rules.iter().map(|r| (r.key, *r)).collect();
    for a in &d.src_removed {
        src.remove(&addr(a)?);
    }
    for s in &d.src_upserted {
        let s = src_from_wire(s)?;
        src.insert(s.addr, s);
    }
    for p in &d.dst_removed {
        dst.remove(&prefix(p)?);
    }
    for e in &d.dst_upserted {
        let e = dst_from_wire(e)?;
        dst.insert(e.prefix, e);
    }
    for k in &d.rules_removed {
        rules.remove(&slot_from_wire(k)?);
    }
    for r in &d.rules_upserted {
        let r = rule_from_wire(r)?;
        rules.insert(r.key, r);
    }
    let mut peers: BTreeMap<pc::WgKey, pc::Peer> = view
        .peers
        .iter()
        .map(|p| (p.public_key, p.clone()))
        .collect();
    for k in &d.peers_removed {
        peers.remove(&key_from_wire("peers_removed", k)?);
    }
    for p in &d.peers_upserted {
        let p = peer_from_wire(p)?;
        peers.insert(p.public_key, p);
    }
    let mut next = view.clone();
    if let Some(m) = &d.meta {
        set_meta(&mut next, m)?;
    }
    next.sources = src.into_values().collect();
    next.atoms = dst.into_values().collect();
    next.rules = rules.into_values().collect();
    next.peers = peers.into_values().collect();
    sort_peers(&mut next.peers);
    *view = next;
    Ok(())
}

/// Entry counts (added, changed, removed) of one map of a [`pc::Delta`].
pub fn counts<K, V>(m: &pc::MapDelta<K, V>) -> v1::EntryCounts {
    v1::EntryCounts {
        added: m.added.len() as u32,
        changed: m.changed.len() as u32,
        removed: m.removed.len() as u32,
    }
}
