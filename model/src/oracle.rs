//! The stateful reference model of the data plane, written from `docs/dataplane.md` (the
//! contract) and nothing else: given the policy, the host's role, and Ethernet frames as on
//! the wire, it says what each hook must do and why (the contract's reason names).
//!
//! It keeps its own flow table (one direction's 5-tuple of every flow opened at this host),
//! one fragment-datagram table per hook, and the policy generation: [`Model::apply`] starts a
//! new generation; flows decided under an older one are decided again on their next packet.
//! It never reaps idle flows (that is the agent's job) and has no capacity limit; the caller
//! says when time passes (`now_unix` on every packet) and when the kernel's flow tables were
//! cleared ([`Model::forget_flows`]).
//!
//! # Where the contract is ambiguous, and what this model decides
//!
//! 1. **Frames shorter than an Ethernet header**, or cut inside a VLAN tag, carry no readable
//!    ethertype: `denied_malformed` (fail closed), not `not_ip`. A third VLAN tag is
//!    `denied_malformed` whatever follows it.
//! 2. **"The end of the packet"**: a datagram whose length (IPv4 total length, IPv6 payload
//!    length + 40) runs past the frame lost its end: malformed. Headers are checked against
//!    the datagram's end; Ethernet padding after the datagram is ignored. The unfragmented UDP
//!    length is checked against that same end.
//! 3. **GSO** (BIG TCP lengths of 0 on tcx) does not exist for the model: frames are as on the
//!    wire, so a 0 total length / payload length is always `denied_malformed`.
//! 4. **Order of the parse drops**: every malformed check first (the whole packet, including
//!    all IPv4 options and the transport header), then `denied_mapped_address`, then
//!    `denied_source_route`. So a source-routed packet with a truncated TCP header is
//!    malformed, and a mapped source with a routing header is `denied_mapped_address`.
//! 5. **IPv6 extension headers** walked: hop-by-hop (0), routing (43), fragment (44),
//!    authentication (51, length in 4-byte units), destination options (60). ESP (50), mobility,
//!    HIP, shim6 and no-next-header (59) end the walk and are the packet's protocol ("other
//!    IP protocol": no ports). The fragment header counts as one of the 8. The walk stops at
//!    the fragment header of a later fragment (what follows is fragment data).
//! 6. **Atomic fragments** (offset 0, no more fragments: IPv4 MF clear, or an IPv6 fragment
//!    header with offset 0 and M clear) are unfragmented packets.
//! 7. **ICMP of the other family** (protocol 1 in IPv6, 58 in IPv4) is "another IP protocol":
//!    no 8-byte header check, no ports, never an ICMP error.
//! 8. **Ports of ICMP flows**: echo request/reply use the identifier as both ports; every
//!    other ICMP type has source port 0 and `type << 8 | code` as destination port.
//! 9. **Re-deciding a flow** (another generation, or past its expiry) runs step 4 on the
//!    flow's own 5-tuple (its original direction, also when the packet is an inbound reply);
//!    outbound this happens at step 4 (steps 2 and 3 see only current flows), inbound at
//!    step 2. `allowed`/`audit` from a principal keeps the flow (now under the active
//!    generation) and the packet passes as `allowed`/`audit` (outbound: it was decided) or
//!    `reply` (inbound); any denial forgets
//!    the flow and drops the packet as `denied_established`; `unprotected` or `audit` from an
//!    unknown source (the destination left protected space, or the principal is gone but the
//!    address is audit-mode) forgets the flow and the packet goes on through the remaining
//!    steps as if there had been none.
//! 10. **Expiry of a flow** is the `expires_at` of the grant whose rule decided it (none for
//!     an audit default), or the expiry of the service-account key it comes from, whichever
//!     is first. Inbound replies check it too (the contract names expiry for outbound only):
//!     a reply past expiry re-decides the flow as in 9.
//! 11. **ICMP errors and stale flows**: an error relates only to a flow under the active
//!     generation and not past expiry; a stale flow is not re-decided by an error (the error
//!     goes on to policy, the flow stays for its own next packet).
//! 12. **Quoted packets**: an IPv4 quote needs its header (with options) and the bytes up to
//!     its ports (4 for TCP/UDP, the identifier for an ICMP echo, type and code for other
//!     ICMP, nothing for other protocols); a quoted later fragment, a quote of the other
//!     family, a quoted IPv6 header followed by an extension header, or a quote too short to
//!     reach the ports relates to no flow (the error goes on to policy as ICMP). A short
//!     quote is not `denied_malformed`.
//! 13. **Inbound ICMP errors "toward a client"**: every inbound ICMP error is considered; the
//!     required outer destination (the quoted source, the flow's client) makes it so.
//! 14. **Fragments matched by an ICMP error**: only steps 2 and 4 (a flow opened, matched or
//!     kept by re-decision) let the later fragments of a first fragment through; an ICMP
//!     error that is a first fragment does not. Inbound: only replies (step 2).
//! 15. **Which sources a connector knows**: least knowledge. The principals named (directly
//!     or through a group) by a grant, allow or deny, active when the policy was applied and
//!     naming a resource that overlaps the connector's protected space; every other address
//!     is an unknown source to it. A device knows only its own addresses; a device missing
//!     from the policy knows none.
//! 16. **Audit mode on inbound hooks**: the audit paragraph says "inbound packets to or from
//!     an audit-mode address pass as `audit`", the inbound steps name only the source (later
//!     fragments: "when the source is an audit-mode address"; step 4: "from an audit-mode
//!     resource's address"). The steps are followed: an inbound packet *to* an audit-mode
//!     address is `denied_direction`, an inbound later fragment to one `denied_fragment`.
//!     Likewise outbound later fragments are `audit` only when their destination is one.
//! 17. **`forget_flows`** clears the flow table and both fragment tables (the contract keeps
//!     fragment datagrams in a third flow table).
//! 18. **`denied_unconfigured`** cannot happen here: a model always has a role.
//! 19. FIN and RST are ignored entirely (they only shorten the agent's idle timeouts), as are
//!     TCP sequence numbers, IP and transport checksums, TTL and the IPv4 DF bit.
//!
//! One file on purpose (over 800 lines): it is read beside the contract, one section per
//! rule, and splitting it would scatter a packet's decision across files.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use policy_compiler::eval::{Packet, Reason};
use policy_compiler::{Mode, Policy, Verdict, evaluate};

/// The host the model stands for, as the agent's configuration names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A connector: protects the remote networks that list it.
    Connector(String),
    /// A client device: the only principal it knows is itself.
    Device(String),
}

/// Which hook a frame meets (the contract's table: connector XDP ingress on a client-facing
/// link and device tcx egress are outbound; connector tcx egress and device XDP ingress are
/// inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client -> protected space: the only direction that opens flows.
    Outbound,
    /// Protected space -> client: replies and ICMP errors of flows, and unprotected traffic.
    Inbound,
}

/// What the hook must do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Expected {
    /// The contract's reason, snake_case (see [`Model::reason_names`]).
    pub reason: &'static str,
    /// Whether the frame goes on (pass) or is dropped.
    pub passes: bool,
    /// Whether this frame opened a new flow (an `allowed` or `audit` packet from a principal).
    pub opened_flow: bool,
}

/// Every reason the model returns, and whether it passes the frame.
const REASONS: &[(&str, bool)] = &[
    ("not_ip", true),
    ("denied_malformed", false),
    ("denied_mapped_address", false),
    ("denied_source_route", false),
    ("fragment_allowed", true),
    ("denied_fragment", false),
    ("established", true),
    ("denied_established", false),
    ("icmp_error_related", true),
    ("unprotected", true),
    ("denied_unsolicited", false),
    ("denied_unknown_source", false),
    ("audit", true),
    ("allowed", true),
    ("denied_by_rule", false),
    ("denied_no_grant", false),
    ("reply", true),
    ("denied_direction", false),
    ("neighbor_discovery", true),
];

/// The reasons only a shield returns (docs/dataplane.md, "Shield"); a shield also returns
/// `not_ip`, `unprotected` and the parse drops.
const SHIELD_REASONS: &[(&str, bool)] = &[
    ("denied_untunneled", false),
    ("handshake_rate_limited", false),
];

/// The reason only the tunnel interface returns (docs/dataplane.md, "Tunnel interface").
const TUNNEL_REASONS: &[(&str, bool)] = &[("denied_outside_protected", false)];

fn expected(reason: &'static str) -> Expected {
    let passes = REASONS
        .iter()
        .chain(SHIELD_REASONS)
        .chain(TUNNEL_REASONS)
        .find(|(r, _)| *r == reason)
        .is_some_and(|(_, p)| *p);
    Expected {
        reason,
        passes,
        opened_flow: false,
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// One direction's 5-tuple. For ICMP echo the identifier is both ports; other ICMP has
/// source port 0 and `type << 8 | code` as destination port; other protocols have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

impl Tuple {
    fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// A fragmented datagram's name: IPv4 by (src, dst, protocol, id), IPv6 without protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    proto: Option<u8>,
    id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    /// Not a fragment (or an atomic one).
    No,
    /// Offset 0, more fragments.
    First(FragKey),
    /// Offset not 0: no transport header.
    Later(FragKey),
}

/// What the parser found in a well-formed IP packet.
#[derive(Clone, Debug)]
struct Pkt<'a> {
    t: Tuple,
    v6: bool,
    frag: Frag,
    /// ICMP (of the packet's own family): type, code and the bytes after the 8-byte header.
    icmp: Option<(u8, u8, &'a [u8])>,
    source_route: bool,
    /// IPv6 hop limit (0 for IPv4).
    hop_limit: u8,
    /// UDP: the header's length field and the bytes after the header.
    udp: Option<(u16, &'a [u8])>,
}

impl Pkt<'_> {
    fn icmp_error(&self) -> Option<&[u8]> {
        let (ty, _, quote) = self.icmp?;
        is_icmp_error(self.v6, ty).then_some(quote)
    }

    /// IPv6 neighbour discovery that never crossed a router: ICMPv6 133-137, hop limit 255.
    fn is_neighbor_discovery(&self) -> bool {
        self.v6
            && self.hop_limit == 255
            && !matches!(self.frag, Frag::Later(_))
            && self
                .icmp
                .is_some_and(|(ty, _, _)| (133..=137).contains(&ty))
    }

    fn is_echo_request(&self) -> bool {
        self.icmp
            .is_some_and(|(ty, _, _)| ty == if self.v6 { 128 } else { 8 })
    }
}

fn is_icmp_error(v6: bool, ty: u8) -> bool {
    if v6 {
        (1..=4).contains(&ty)
    } else {
        matches!(ty, 3 | 4 | 11 | 12)
    }
}

fn is_echo(v6: bool, ty: u8) -> bool {
    if v6 {
        ty == 128 || ty == 129
    } else {
        ty == 8 || ty == 0
    }
}

enum Parse<'a> {
    NotIp,
    Drop(&'static str),
    Ip(Pkt<'a>),
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

const MALFORMED: Parse<'static> = Parse::Drop("denied_malformed");

/// Ethernet, at most two VLAN tags, then IPv4 or IPv6.
fn parse_frame(f: &[u8]) -> Parse<'_> {
    if f.len() < 14 {
        return MALFORMED;
    }
    let mut ethertype = be16(f, 12);
    let mut off = 14;
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if tags == 2 || off + 4 > f.len() {
            return MALFORMED;
        }
        ethertype = be16(f, off + 2);
        off += 4;
        tags += 1;
    }
    match ethertype {
        0x0800 | 0x86dd => parse_ip(ethertype, &f[off..]),
        _ => Parse::NotIp,
    }
}

/// A bare IP packet of a TUN device, whose protocol the kernel gives beside it: IPv4 or
/// IPv6, and it must agree with the version nibble; anything else (a VLAN tag included:
/// an L3 device has none) is malformed, never `not_ip`.
fn parse_l3(protocol: u16, packet: &[u8]) -> Parse<'_> {
    match protocol {
        0x0800 | 0x86dd => parse_ip(protocol, packet),
        _ => MALFORMED,
    }
}

/// IPv4 (`0x0800`) or IPv6 (`0x86dd`) from its first byte on; the version nibble must
/// agree (the parsers check it).
fn parse_ip(ethertype: u16, ip: &[u8]) -> Parse<'_> {
    let parsed = if ethertype == 0x0800 {
        parse_v4(ip)
    } else {
        parse_v6(ip)
    };
    let Parse::Ip(p) = parsed else {
        return parsed;
    };
    let mapped = |a: IpAddr| matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if mapped(p.t.src) || mapped(p.t.dst) {
        return Parse::Drop("denied_mapped_address");
    }
    if p.source_route {
        return Parse::Drop("denied_source_route");
    }
    Parse::Ip(p)
}

fn parse_v4(b: &[u8]) -> Parse<'_> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return MALFORMED;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2));
    if ihl < 20 || total == 0 || total < ihl || total > b.len() {
        return MALFORMED;
    }
    let end = total;
    let mut source_route = false;
    let mut i = 20;
    while i < ihl {
        match b[i] {
            0 => break,
            1 => i += 1,
            kind => {
                if i + 1 >= ihl {
                    return MALFORMED;
                }
                let len = usize::from(b[i + 1]);
                if len < 2 || i + len > ihl {
                    return MALFORMED;
                }
                if kind == 131 || kind == 137 {
                    source_route = true;
                }
                i += len;
            }
        }
    }
    let src = IpAddr::from([b[12], b[13], b[14], b[15]]);
    let dst = IpAddr::from([b[16], b[17], b[18], b[19]]);
    let proto = b[9];
    let flags = be16(b, 6);
    let key = FragKey {
        src,
        dst,
        proto: Some(proto),
        id: u32::from(be16(b, 4)),
    };
    let frag = if flags & 0x1fff != 0 {
        Frag::Later(key)
    } else if flags & 0x2000 != 0 {
        Frag::First(key)
    } else {
        Frag::No
    };
    transport(&b[ihl..end], src, dst, proto, false, frag, source_route, 0)
}

fn parse_v6(b: &[u8]) -> Parse<'_> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return MALFORMED;
    }
    let payload = usize::from(be16(b, 4));
    if payload == 0 || 40 + payload > b.len() {
        return MALFORMED;
    }
    let end = 40 + payload;
    let addr = |i: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[i..i + 16]);
        IpAddr::from(a)
    };
    let (src, dst) = (addr(8), addr(24));
    let mut next = b[6];
    let mut off = 40;
    let mut count = 0;
    let mut seen_fragment = false;
    let mut frag = Frag::No;
    let mut source_route = false;
    loop {
        match next {
            0 | 43 | 51 | 60 => {
                if next == 0 && count != 0 {
                    return MALFORMED; // hop-by-hop anywhere but first
                }
                count += 1;
                if count > 8 || off + 8 > end {
                    return MALFORMED;
                }
                // AH counts 4-byte units minus 2 (RFC 4302), the others 8-byte units
                // beyond the first 8 (RFC 8200).
                let len = if next == 51 {
                    (usize::from(b[off + 1]) + 2) * 4
                } else {
                    (usize::from(b[off + 1]) + 1) * 8
                };
                if off + len > end {
                    return MALFORMED;
                }
                if next == 43 && b[off + 3] != 0 {
                    source_route = true;
                }
                next = b[off];
                off += len;
            }
            44 => {
                count += 1;
                if count > 8 || seen_fragment || off + 8 > end {
                    return MALFORMED;
                }
                seen_fragment = true;
                let fo = be16(b, off + 2);
                let key = FragKey {
                    src,
                    dst,
                    proto: None,
                    id: be32(b, off + 4),
                };
                next = b[off];
                off += 8;
                if fo >> 3 != 0 {
                    frag = Frag::Later(key);
                    break;
                }
                if fo & 1 != 0 {
                    frag = Frag::First(key);
                }
            }
            _ => break,
        }
    }
    transport(&b[off..end], src, dst, next, true, frag, source_route, b[7])
}

/// The transport header of a packet whose IP layer is well-formed; `l4` ends at the end of
/// the packet (the nearer of frame end and datagram end).
#[allow(clippy::too_many_arguments)] // the IP layer's fields, handed on whole
fn transport<'a>(
    l4: &'a [u8],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    v6: bool,
    frag: Frag,
    source_route: bool,
    hop_limit: u8,
) -> Parse<'a> {
    let mut p = Pkt {
        t: Tuple {
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
        },
        v6,
        frag,
        icmp: None,
        source_route,
        hop_limit,
        udp: None,
    };
    if matches!(frag, Frag::Later(_)) {
        return Parse::Ip(p);
    }
    let own_icmp = if v6 { ICMPV6 } else { ICMP };
    match proto {
        TCP => {
            if l4.len() < 20 {
                return MALFORMED;
            }
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 || doff > l4.len() {
                return MALFORMED;
            }
            (p.t.sport, p.t.dport) = (be16(l4, 0), be16(l4, 2));
        }
        UDP => {
            if l4.len() < 8 {
                return MALFORMED;
            }
            let len = usize::from(be16(l4, 4));
            if len < 8 || (frag == Frag::No && len > l4.len()) {
                return MALFORMED;
            }
            (p.t.sport, p.t.dport) = (be16(l4, 0), be16(l4, 2));
            p.udp = Some((be16(l4, 4), &l4[8..]));
        }
        _ if proto == own_icmp => {
            if l4.len() < 8 {
                return MALFORMED;
            }
            let (ty, code) = (l4[0], l4[1]);
            (p.t.sport, p.t.dport) = icmp_ports(v6, ty, code, be16(l4, 4));
            p.icmp = Some((ty, code, &l4[8..]));
        }
        _ => {}
    }
    Parse::Ip(p)
}

fn icmp_ports(v6: bool, ty: u8, code: u8, id: u16) -> (u16, u16) {
    if is_echo(v6, ty) {
        (id, id)
    } else {
        (0, u16::from(ty) << 8 | u16::from(code))
    }
}

/// The 5-tuple of the packet an ICMP error quotes, read as far as its ports (see the
/// module docs, item 12). `None`: it names no flow.
fn quoted(quote: &[u8], v6: bool) -> Option<Tuple> {
    let (src, dst, proto, l4) = if v6 {
        if quote.len() < 40 || quote[0] >> 4 != 6 {
            return None;
        }
        let addr = |i: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&quote[i..i + 16]);
            IpAddr::from(a)
        };
        if matches!(quote[6], 0 | 43 | 44 | 60) {
            return None;
        }
        (addr(8), addr(24), quote[6], &quote[40..])
    } else {
        if quote.len() < 20 || quote[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(quote[0] & 0x0f) * 4;
        if ihl < 20 || quote.len() < ihl || be16(quote, 6) & 0x1fff != 0 {
            return None;
        }
        let src = IpAddr::from([quote[12], quote[13], quote[14], quote[15]]);
        let dst = IpAddr::from([quote[16], quote[17], quote[18], quote[19]]);
        (src, dst, quote[9], &quote[ihl..])
    };
    let own_icmp = if v6 { ICMPV6 } else { ICMP };
    let (sport, dport) = match proto {
        TCP | UDP => {
            if l4.len() < 4 {
                return None;
            }
            (be16(l4, 0), be16(l4, 2))
        }
        _ if proto == own_icmp => {
            if l4.len() < 2 {
                return None;
            }
            let (ty, code) = (l4[0], l4[1]);
            if is_echo(v6, ty) {
                if l4.len() < 6 {
                    return None;
                }
                icmp_ports(v6, ty, code, be16(l4, 4))
            } else {
                icmp_ports(v6, ty, code, 0)
            }
        }
        _ => (0, 0),
    };
    Some(Tuple {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// The principal addresses a connector knows under a policy applied at `now`: those of
/// active devices and keys named (directly or through a group) by a grant, allow or deny,
/// that is active at `now` and names a resource overlapping the connector's protected
/// space. Least knowledge: a connector does not learn principals that nothing there concerns
/// (to it they are unknown sources).
fn connector_sources(
    policy: &Policy,
    protected: &[IpNet],
    now: i64,
) -> std::collections::HashSet<IpAddr> {
    use policy_compiler::model::PrincipalRef;
    let overlaps = |r: &IpNet| protected.iter().any(|c| c.contains(r) || r.contains(c));
    let mut users = std::collections::HashSet::new();
    let mut sas = std::collections::HashSet::new();
    for g in &policy.grants {
        if g.expires_at.is_some_and(|e| now >= e)
            || !g.resources.iter().any(|&r| {
                policy.resources[r]
                    .address
                    .net()
                    .is_some_and(|n| overlaps(&n))
            })
        {
            continue;
        }
        for who in &g.principals {
            match *who {
                PrincipalRef::User(u) => {
                    users.insert(u);
                }
                PrincipalRef::ServiceAccount(s) => {
                    sas.insert(s);
                }
                PrincipalRef::Group(gr) => {
                    users.extend(policy.groups[gr].users.iter().copied());
                    sas.extend(policy.groups[gr].service_accounts.iter().copied());
                }
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    for d in &policy.devices {
        if users.contains(&d.owner) {
            out.extend(d.addresses.iter().copied());
        }
    }
    for (i, sa) in policy.service_accounts.iter().enumerate() {
        if sas.contains(&i) {
            for k in &sa.keys {
                if k.expires_at.is_none_or(|e| now < e) {
                    out.extend(k.addresses.iter().copied());
                }
            }
        }
    }
    out
}

/// What was decided about a flow.
#[derive(Clone, Copy, Debug)]
struct Flow {
    generation: u64,
    /// Unix seconds, exclusive: the flow is decided again from then on.
    valid_until: Option<i64>,
}

/// Step 4 of the outbound hook, on the host's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    Unprotected,
    Unsolicited,
    /// Unknown source, audit-mode destination: passes, no flow.
    AuditUnknown,
    UnknownSource,
    /// `allowed` or `audit` from a principal: opens a flow.
    Open {
        reason: &'static str,
        valid_until: Option<i64>,
    },
    Denied(&'static str),
}

impl Decided {
    fn reason(self) -> &'static str {
        match self {
            Decided::Unprotected => "unprotected",
            Decided::Unsolicited => "denied_unsolicited",
            Decided::AuditUnknown => "audit",
            Decided::UnknownSource => "denied_unknown_source",
            Decided::Open { reason, .. } => reason,
            Decided::Denied(r) => r,
        }
    }
}

/// The reference model of one host's data plane.
#[derive(Clone, Debug)]
pub struct Model {
    policy: Policy,
    role: Role,
    generation: u64,
    applied_at: i64,
    /// This host's protected space.
    protected: Vec<IpNet>,
    /// Connector: the principal addresses it knows (least knowledge; see `apply`).
    known: std::collections::HashSet<IpAddr>,
    flows: HashMap<Tuple, Flow>,
    /// Fragment datagrams whose first fragment opened or matched a flow, per hook, with the
    /// generation it happened under. Index: 0 outbound, 1 inbound.
    frags: [HashMap<FragKey, u64>; 2],
    /// The tunnel's settings, when the host has the tunnel on (see [`Model::shield`]).
    tunnel: Option<Tunnel>,
    /// The shield's handshake buckets by source prefix: credit (ns) and last update (ns).
    buckets: HashMap<IpAddr, (u64, u64)>,
}

impl Model {
    /// A host in `role` enforcing `policy` (generation 1) from `now_unix` on.
    pub fn new(policy: Policy, role: Role, now_unix: i64) -> Model {
        let mut m = Model {
            policy: Policy::default(),
            role,
            generation: 0,
            applied_at: now_unix,
            protected: Vec::new(),
            known: std::collections::HashSet::new(),
            flows: HashMap::new(),
            frags: [HashMap::new(), HashMap::new()],
            tunnel: None,
            buckets: HashMap::new(),
        };
        m.apply(policy, now_unix);
        m
    }

    /// A policy swap: `policy` becomes the active one under a new generation. Open flows
    /// stay; each is decided again on its next packet.
    pub fn apply(&mut self, policy: Policy, now_unix: i64) {
        self.protected = match &self.role {
            Role::Connector(c) => policy
                .networks
                .iter()
                .filter(|n| n.connectors.iter().any(|x| x == c))
                .flat_map(|n| n.cidrs.iter().copied())
                .collect(),
            Role::Device(_) => policy
                .networks
                .iter()
                .flat_map(|n| n.cidrs.iter().copied())
                .collect(),
        };
        self.known = match &self.role {
            Role::Connector(_) => connector_sources(&policy, &self.protected, now_unix),
            Role::Device(_) => std::collections::HashSet::new(),
        };
        self.policy = policy;
        self.generation += 1;
        self.applied_at = now_unix;
    }

    /// The kernel's flow tables were cleared: forget every flow and fragment datagram.
    pub fn forget_flows(&mut self) {
        self.flows.clear();
        for t in &mut self.frags {
            t.clear();
        }
    }

    /// Every reason [`Model::packet`] can return, in the contract's order.
    pub fn reason_names() -> Vec<&'static str> {
        REASONS.iter().map(|(r, _)| *r).collect()
    }

    /// Every reason only [`Model::shield`] returns.
    pub fn shield_reason_names() -> Vec<&'static str> {
        SHIELD_REASONS.iter().map(|(r, _)| *r).collect()
    }

    /// Every reason only [`Model::packet_l3`] returns.
    pub fn tunnel_reason_names() -> Vec<&'static str> {
        TUNNEL_REASONS.iter().map(|(r, _)| *r).collect()
    }

    /// Whether a reason passes the frame (`None`: not a reason of the contract).
    pub fn reason_passes(reason: &str) -> Option<bool> {
        REASONS
            .iter()
            .chain(SHIELD_REASONS)
            .chain(TUNNEL_REASONS)
            .find(|(r, _)| *r == reason)
            .map(|(_, p)| *p)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The active generation (1 for the policy given to [`Model::new`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the active policy was applied.
    pub fn applied_at(&self) -> i64 {
        self.applied_at
    }

    /// This host's protected space.
    pub fn protected(&self) -> &[IpNet] {
        &self.protected
    }

    /// Open flows (any generation).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// What the hook of `dir` does with `frame` (an Ethernet frame as on the wire) at
    /// `now_unix`, updating the model's state as the data plane would.
    pub fn packet(&mut self, dir: Direction, frame: &[u8], now_unix: i64) -> Expected {
        self.decide_parsed(dir, parse_frame(frame), now_unix)
    }

    /// What the tunnel interface's hook of `dir` does with `packet` (docs/dataplane.md,
    /// "Tunnel interface"): a bare IP packet, no Ethernet header, that the kernel says is of
    /// `protocol` (an ethertype). The same rules as [`Model::packet`] from the IP header
    /// on, with the same state; the directions are the physical links' (connector: tunnel
    /// ingress outbound, egress inbound; device: egress outbound, ingress inbound).
    pub fn packet_l3(
        &mut self,
        dir: Direction,
        protocol: u16,
        packet: &[u8],
        now_unix: i64,
    ) -> Expected {
        let e = self.decide_parsed(dir, parse_l3(protocol, packet), now_unix);
        // Through the tunnel a device reaches protected space and nothing else.
        if e.reason == "unprotected" {
            return expected("denied_outside_protected");
        }
        e
    }

    fn decide_parsed(&mut self, dir: Direction, parsed: Parse<'_>, now_unix: i64) -> Expected {
        let p = match parsed {
            Parse::NotIp => return expected("not_ip"),
            Parse::Drop(reason) => return expected(reason),
            Parse::Ip(p) => p,
        };
        if p.is_neighbor_discovery() {
            return expected("neighbor_discovery");
        }
        match dir {
            Direction::Outbound => self.outbound(&p, now_unix),
            Direction::Inbound => self.inbound(&p, now_unix),
        }
    }

    fn is_protected(&self, a: IpAddr) -> bool {
        self.protected.iter().any(|c| c.contains(&a))
    }

    /// Inside this host's protected space and covered by an audit-mode resource.
    fn is_audit_address(&self, a: IpAddr) -> bool {
        self.is_protected(a)
            && self
                .policy
                .resources
                .iter()
                .any(|r| r.mode == Mode::Audit && r.address.contains(&a))
    }

    /// Whether `a` is the address of a principal this host knows at `now`: on a connector
    /// any device or unexpired service-account key, on a device the device itself.
    fn knows_source(&self, a: IpAddr, now: i64) -> bool {
        match &self.role {
            Role::Device(name) => self
                .policy
                .devices
                .iter()
                .any(|d| &d.name == name && d.addresses.contains(&a)),
            Role::Connector(_) => {
                self.known.contains(&a)
                    && !self.policy.service_accounts.iter().any(|sa| {
                        sa.keys.iter().any(|k| {
                            k.addresses.contains(&a) && k.expires_at.is_some_and(|e| now >= e)
                        })
                    })
            }
        }
    }

    /// Until when a decision holds: its grant's expiry and the source key's, the earlier.
    fn valid_until(&self, src: IpAddr, rule: u32) -> Option<i64> {
        let grant = self
            .policy
            .grants
            .iter()
            .find(|g| g.rules.contains(&rule))
            .and_then(|g| g.expires_at);
        let key = self
            .policy
            .service_accounts
            .iter()
            .flat_map(|sa| sa.keys.iter())
            .find(|k| k.addresses.contains(&src))
            .and_then(|k| k.expires_at);
        match (grant, key) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Outbound step 4: the reference evaluator on this host's view.
    fn decide(&self, t: &Tuple, now: i64) -> Decided {
        if !self.is_protected(t.dst) {
            return if self.is_protected(t.src) {
                Decided::Unsolicited
            } else {
                Decided::Unprotected
            };
        }
        if !self.knows_source(t.src, now) {
            return if self.is_audit_address(t.dst) {
                Decided::AuditUnknown
            } else {
                Decided::UnknownSource
            };
        }
        let d = evaluate(
            &self.policy,
            &Packet {
                src: t.src,
                dst: t.dst,
                proto: t.proto,
                src_port: t.sport,
                dst_port: t.dport,
            },
            now,
        );
        let valid_until = self.valid_until(t.src, d.rule_id());
        match (d.reason, d.verdict) {
            (Reason::Granted, _) => Decided::Open {
                reason: "allowed",
                valid_until,
            },
            (Reason::AuditDenyRule | Reason::AuditNoGrant, _) => Decided::Open {
                reason: "audit",
                valid_until,
            },
            (Reason::DeniedByRule, _) => Decided::Denied("denied_by_rule"),
            (Reason::NoGrant, _) => Decided::Denied("denied_no_grant"),
            // Not reached: the destination is protected and the source known here.
            (Reason::Unprotected, _) => Decided::Unprotected,
            (Reason::UnknownSource, Verdict::Audit) => Decided::AuditUnknown,
            (Reason::UnknownSource, _) => Decided::UnknownSource,
        }
    }

    /// A flow under the active generation and not past its expiry.
    fn current(&self, f: &Flow, now: i64) -> bool {
        f.generation == self.generation && f.valid_until.is_none_or(|u| now < u)
    }

    /// Decides an existing flow again (module docs, item 9). `Some(Ok(reason))`: kept,
    /// decided `allowed` or `audit`; `Some(Err(()))`: revoked and forgotten; `None`:
    /// forgotten, the packet goes on.
    fn redecide(&mut self, key: &Tuple, now: i64) -> Option<Result<&'static str, ()>> {
        match self.decide(key, now) {
            Decided::Open {
                valid_until,
                reason,
            } => {
                self.flows.insert(
                    *key,
                    Flow {
                        generation: self.generation,
                        valid_until,
                    },
                );
                Some(Ok(reason))
            }
            Decided::Unprotected | Decided::AuditUnknown => {
                self.flows.remove(key);
                None
            }
            Decided::Unsolicited | Decided::UnknownSource | Decided::Denied(_) => {
                self.flows.remove(key);
                Some(Err(()))
            }
        }
    }

    /// Remembers that a first fragment opened or matched a flow at this hook.
    fn first_fragment_matched(&mut self, p: &Pkt<'_>, hook: usize) {
        if let Frag::First(k) = p.frag {
            self.frags[hook].insert(k, self.generation);
        }
    }

    fn later_fragment(&self, k: &FragKey, hook: usize) -> bool {
        self.frags[hook].get(k) == Some(&self.generation)
    }

    fn outbound(&mut self, p: &Pkt<'_>, now: i64) -> Expected {
        let t = p.t;
        // 1. Later fragments.
        if let Frag::Later(k) = p.frag {
            return expected(if self.later_fragment(&k, 0) {
                "fragment_allowed"
            } else if !self.is_protected(t.src) && !self.is_protected(t.dst) {
                "unprotected"
            } else if self.is_audit_address(t.dst) {
                "audit"
            } else {
                "denied_fragment"
            });
        }
        // 2. Established flows.
        // Only a current flow passes here; a stale one is decided again at step 4.
        let stale = match self.flows.get(&t).copied() {
            Some(f) if self.current(&f, now) => {
                self.first_fragment_matched(p, 0);
                return expected("established");
            }
            Some(_) => true,
            None => false,
        };
        // 3. ICMP errors into protected space about a reply of an open flow.
        if let Some(quote) = p.icmp_error()
            && self.is_protected(t.dst)
            && let Some(q) = quoted(quote, p.v6)
            && t.dst == q.src
            && t.src == q.dst
            && self
                .flows
                .get(&q.reversed())
                .is_some_and(|f| self.current(f, now))
        {
            return expected("icmp_error_related");
        }
        // 4. Policy. A stale flow is decided again: kept (`allowed`/`audit`), revoked
        // (`denied_established`), or no longer ours (forgotten, decided afresh below).
        if stale {
            match self.redecide(&t, now) {
                Some(Ok(reason)) => {
                    self.first_fragment_matched(p, 0);
                    return expected(reason);
                }
                Some(Err(())) => return expected("denied_established"),
                None => {}
            }
        }
        let d = self.decide(&t, now);
        if let Decided::Open { valid_until, .. } = d {
            self.flows.insert(
                t,
                Flow {
                    generation: self.generation,
                    valid_until,
                },
            );
            self.first_fragment_matched(p, 0);
            return Expected {
                opened_flow: true,
                ..expected(d.reason())
            };
        }
        expected(d.reason())
    }

    fn inbound(&mut self, p: &Pkt<'_>, now: i64) -> Expected {
        let t = p.t;
        // 1. Later fragments.
        if let Frag::Later(k) = p.frag {
            return expected(if self.later_fragment(&k, 1) {
                "fragment_allowed"
            } else if !self.is_protected(t.src) && !self.is_protected(t.dst) {
                "unprotected"
            } else if self.is_audit_address(t.src) {
                "audit"
            } else {
                "denied_fragment"
            });
        }
        // 2. Replies (an echo request never is one).
        let flow_key = t.reversed();
        if !p.is_echo_request()
            && let Some(f) = self.flows.get(&flow_key).copied()
        {
            let kept = if self.current(&f, now) {
                Some(Ok("reply"))
            } else {
                self.redecide(&flow_key, now)
            };
            match kept {
                Some(Ok(_)) => {
                    self.first_fragment_matched(p, 1);
                    return expected("reply");
                }
                Some(Err(())) => return expected("denied_established"),
                None => {}
            }
        }
        // 3. ICMP errors toward the client about an original-direction packet.
        if let Some(quote) = p.icmp_error()
            && let Some(q) = quoted(quote, p.v6)
            && t.dst == q.src
            && self.flows.get(&q).is_some_and(|f| self.current(f, now))
        {
            return expected("icmp_error_related");
        }
        // 4. Everything else.
        expected(if self.is_audit_address(t.src) {
            "audit"
        } else if self.is_protected(t.src) {
            "denied_unsolicited"
        } else if self.is_protected(t.dst) {
            "denied_direction"
        } else {
            "unprotected"
        })
    }
}

// ---------------------------------------------------------------------------------------
// Shield (docs/dataplane.md, "Shield")
// ---------------------------------------------------------------------------------------

/// The tunnel's settings a shield reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tunnel {
    /// The WireGuard listener's UDP port (0: none; no handshake limit).
    pub wg_port: u16,
    /// Initiations per source prefix per second, and the burst (0: no limit).
    pub handshakes_per_source: u32,
    pub handshake_burst: u32,
}

/// A shield's hook on a physical link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShieldHook {
    /// XDP ingress: client links of a connector, a device's uplink.
    Ingress,
    /// tcx egress: the same links.
    Egress,
}

const SECOND_NS: u64 = 1_000_000_000;
/// A WireGuard handshake initiation: 148 bytes, so UDP length 156.
const WG_INITIATION_UDP_LEN: u16 = 156;

impl Model {
    /// The host turns the tunnel on with these settings (the shield reads them).
    pub fn set_tunnel(&mut self, tunnel: Tunnel) {
        self.tunnel = Some(tunnel);
    }

    /// What a shield hook on a physical link does with `frame` (Ethernet, as on the wire)
    /// at `now_ns` (any monotonic nanosecond clock; only differences count):
    ///
    /// 1. not IP: `not_ip`; what does not parse: the parse drops, as everywhere;
    /// 2. source or destination in protected space (later fragments included):
    ///    `denied_untunneled`, in both directions and on both roles;
    /// 3. at ingress, with a WireGuard port: a handshake initiation to it (UDP length 156
    ///    and a payload starting with 1, 0, 0, 0; a first fragment with that UDP length
    ///    counts whatever it holds) takes a token from its source prefix's bucket (/32,
    ///    /64; `handshake_burst` tokens, one more every `1 / handshakes_per_source` s, a
    ///    new prefix starts full); none left: `handshake_rate_limited`;
    /// 4. everything else: `unprotected`.
    pub fn shield(&mut self, hook: ShieldHook, frame: &[u8], now_ns: u64) -> Expected {
        let p = match parse_frame(frame) {
            Parse::NotIp => return expected("not_ip"),
            Parse::Drop(reason) => return expected(reason),
            Parse::Ip(p) => p,
        };
        if self.is_protected(p.t.src) || self.is_protected(p.t.dst) {
            return expected("denied_untunneled");
        }
        let Some(tunnel) = self.tunnel else {
            return expected("unprotected");
        };
        let initiation = hook == ShieldHook::Ingress
            && tunnel.wg_port != 0
            && p.t.proto == UDP
            && p.t.dport == tunnel.wg_port
            && match (p.frag, p.udp) {
                (Frag::Later(_), _) | (_, None) => false,
                (Frag::First(_), Some((len, _))) => len == WG_INITIATION_UDP_LEN,
                (Frag::No, Some((len, payload))) => {
                    len == WG_INITIATION_UDP_LEN && payload.starts_with(&[1, 0, 0, 0])
                }
            };
        if initiation && !self.take_handshake(&tunnel, p.t.src, now_ns) {
            return expected("handshake_rate_limited");
        }
        expected("unprotected")
    }

    fn take_handshake(&mut self, t: &Tunnel, src: IpAddr, now: u64) -> bool {
        if t.handshakes_per_source == 0 || t.handshake_burst == 0 {
            return true;
        }
        let cost = SECOND_NS / u64::from(t.handshakes_per_source);
        let cap = cost * u64::from(t.handshake_burst);
        let prefix = match src {
            IpAddr::V4(_) => src,
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        };
        let Some((credit, last)) = self.buckets.get_mut(&prefix) else {
            self.buckets.insert(prefix, (cap - cost, now));
            return true;
        };
        if now > *last {
            *credit = credit.saturating_add(now - *last).min(cap);
            *last = now;
        }
        if *credit >= cost {
            *credit -= cost;
            true
        } else {
            false
        }
    }
}
