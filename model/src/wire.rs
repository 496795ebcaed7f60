//! Frames that look like the wire: Ethernet with 0-2 VLAN tags, IPv4 (options, fragments as
//! a host's IP stack cuts them), IPv6 (extension headers, fragmentation per RFC 8200 §4.5),
//! TCP with any flags, UDP, ICMP/ICMPv6 echo and errors quoting a real packet, other IP
//! protocols, and a labelled catalog of malformed frames (each says how it lies).
//!
//! Layers are built separately: [`datagram`] (or [`ipv4`] / [`ipv6`]) makes an IP datagram
//! from an [`L4`], [`ether`] puts a datagram on the wire (padded to the 60-byte Ethernet
//! minimum, as a NIC sends it), [`fragment_v4`] / [`fragment_v6`] cut a datagram.
//! Checksums are correct on well-formed output.
//!
//! One file on purpose (over 800 lines): the builders and the malformed catalog share
//! their checksum and length helpers, and a catalog entry reads next to the builder it bends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flags.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// IP protocol numbers used here.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// The transport part of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        /// TCP options, padded with zeros (EOL) to a multiple of 4.
        options: Vec<u8>,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP in IPv4, ICMPv6 in IPv6: type, code, the 4 bytes after the checksum (identifier
    /// and sequence, MTU, pointer, unused) and the rest.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
    /// Any other IP protocol, bytes as given.
    Other { proto: u8, payload: Vec<u8> },
}

impl L4 {
    /// A TCP segment without payload (sequence 1000, acknowledgment 2000 when ACK is set).
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack: if flags & self::flags::ACK != 0 {
                2000
            } else {
                0
            },
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// A TCP segment with payload and explicit sequence numbers.
    pub fn tcp_data(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: Vec<u8>) -> L4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
            options: Vec::new(),
            payload,
        }
    }

    pub fn udp(sport: u16, dport: u16, payload: Vec<u8>) -> L4 {
        L4::Udp {
            sport,
            dport,
            payload,
        }
    }

    /// Echo request (ICMP type 8, ICMPv6 type 128).
    pub fn echo_request(v6: bool, id: u16, seq: u16) -> L4 {
        Self::echo(if v6 { 128 } else { 8 }, id, seq)
    }

    /// Echo reply (ICMP type 0, ICMPv6 type 129).
    pub fn echo_reply(v6: bool, id: u16, seq: u16) -> L4 {
        Self::echo(if v6 { 129 } else { 0 }, id, seq)
    }

    fn echo(ty: u8, id: u16, seq: u16) -> L4 {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        L4::Icmp {
            ty,
            code: 0,
            rest: [a, b, c, d],
            payload: b"0123456789abcdef".to_vec(),
        }
    }

    pub fn other(proto: u8, payload: Vec<u8>) -> L4 {
        L4::Other { proto, payload }
    }

    /// The IP protocol number in a datagram of the given family.
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } if v6 => proto::ICMPV6,
            L4::Icmp { .. } => proto::ICMP,
            L4::Other { proto, .. } => *proto,
        }
    }

    /// The transport bytes, checksummed for `src -> dst`.
    pub fn bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let v6 = src.is_ipv6();
        let mut b = match self {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                options,
                payload,
            } => {
                let mut opts = options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let doff = (20 + opts.len()) / 4;
                let mut b = Vec::with_capacity(20 + opts.len() + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.push((doff as u8) << 4);
                b.push(*flags);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(&opts);
                b.extend_from_slice(payload);
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = Vec::with_capacity(8 + payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                b
            }
            L4::Icmp {
                ty,
                code,
                rest,
                payload,
            } => {
                let mut b = vec![*ty, *code, 0, 0];
                b.extend_from_slice(rest);
                b.extend_from_slice(payload);
                b
            }
            L4::Other { payload, .. } => return payload.clone(),
        };
        let proto = self.proto(v6);
        let sum = match self {
            L4::Icmp { .. } if !v6 => checksum(&[&b]),
            _ => checksum(&[&pseudo_header(src, dst, proto, b.len()), &b]),
        };
        let at = match self {
            L4::Tcp { .. } => 16,
            L4::Udp { .. } => 6,
            _ => 2,
        };
        let sum = if sum == 0 && matches!(self, L4::Udp { .. }) {
            0xffff
        } else {
            sum
        };
        b[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            p.extend_from_slice(&v6_of(src).octets());
            p.extend_from_slice(&v6_of(dst).octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    p
}

fn v6_of(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn v4_of(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// The Internet checksum of the concatenated parts.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &byte in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header fields a host chooses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub ttl: u8,
    pub df: bool,
    /// Option bytes (see [`opt`]); padded with EOL to a multiple of 4.
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> V4 {
        V4 {
            src,
            dst,
            id: 0x1234,
            ttl: 64,
            df: false,
            options: Vec::new(),
        }
    }
}

/// An IPv4 datagram carrying `l4`.
pub fn ipv4(h: &V4, l4: &L4) -> Vec<u8> {
    let body = l4.bytes(IpAddr::V4(h.src), IpAddr::V4(h.dst));
    ipv4_raw(h, l4.proto(false), &body, 0, false)
}

/// An IPv4 datagram (or fragment: `offset` in bytes, a multiple of 8) with `payload` as is.
pub fn ipv4_raw(h: &V4, proto: u8, payload: &[u8], offset: usize, more: bool) -> Vec<u8> {
    let mut opts = h.options.clone();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 20 + opts.len();
    let total = ihl + payload.len();
    let mut b = Vec::with_capacity(total);
    b.push(0x40 | (ihl / 4) as u8);
    b.push(0);
    b.extend_from_slice(&(total as u16).to_be_bytes());
    b.extend_from_slice(&h.id.to_be_bytes());
    let mut fl = (offset / 8) as u16 & 0x1fff;
    if more {
        fl |= 0x2000;
    }
    if h.df {
        fl |= 0x4000;
    }
    b.extend_from_slice(&fl.to_be_bytes());
    b.push(h.ttl);
    b.push(proto);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&h.src.octets());
    b.extend_from_slice(&h.dst.octets());
    b.extend_from_slice(&opts);
    let sum = checksum(&[&b]);
    b[10..12].copy_from_slice(&sum.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// Recomputes the IPv4 header checksum of a datagram (after editing header fields).
pub fn fix_v4_checksum(d: &mut [u8]) {
    let ihl = usize::from(d[0] & 0x0f) * 4;
    if d.len() < ihl || ihl < 20 {
        return;
    }
    d[10] = 0;
    d[11] = 0;
    let sum = checksum(&[&d[..ihl]]);
    d[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// IPv4 options.
pub mod opt {
    use std::net::Ipv4Addr;

    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;

    fn route(kind: u8, hops: &[Ipv4Addr]) -> Vec<u8> {
        let mut o = vec![kind, (3 + 4 * hops.len()) as u8, 4];
        for h in hops {
            o.extend_from_slice(&h.octets());
        }
        o
    }

    /// Loose source and record route (131, copied into every fragment).
    pub fn lsrr(hops: &[Ipv4Addr]) -> Vec<u8> {
        route(131, hops)
    }

    /// Strict source and record route (137, copied).
    pub fn ssrr(hops: &[Ipv4Addr]) -> Vec<u8> {
        route(137, hops)
    }

    /// Record route with room for `slots` addresses (7, not copied).
    pub fn record_route(slots: usize) -> Vec<u8> {
        let mut o = vec![7, (3 + 4 * slots) as u8, 4];
        o.resize(3 + 4 * slots, 0);
        o
    }

    /// Router alert (148, copied).
    pub fn router_alert() -> Vec<u8> {
        vec![148, 4, 0, 0]
    }

    /// Timestamp with room for `slots` stamps (68, not copied).
    pub fn timestamp(slots: usize) -> Vec<u8> {
        let mut o = vec![68, (4 + 4 * slots) as u8, 5, 0];
        o.resize(4 + 4 * slots, 0);
        o
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (option TLVs; padded with PadN to a multiple of 8).
    HopByHop(Vec<u8>),
    /// Destination options (option TLVs; padded).
    DestOpts(Vec<u8>),
    /// A routing header: type, segments left and the type-specific data after them.
    Routing {
        typ: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    /// A fragment header: offset in 8-byte units, more fragments, identification.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    /// A segment routing header (type 4, RFC 8754) listing `segments` (the last one first,
    /// as on the wire), with `segments_left`.
    pub fn srh(segments: &[Ipv6Addr], segments_left: u8) -> Ext {
        let mut data = vec![segments.len().saturating_sub(1) as u8, 0, 0, 0];
        for s in segments {
            data.extend_from_slice(&s.octets());
        }
        Ext::Routing {
            typ: 4,
            segments_left,
            data,
        }
    }

    /// The header's protocol number.
    pub fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) => 60,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
        }
    }

    /// The header's bytes, with `next` as its next-header field.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(o) | Ext::DestOpts(o) => {
                let mut b = vec![next, 0];
                b.extend_from_slice(o);
                pad_options(&mut b);
                b[1] = (b.len() / 8 - 1) as u8;
                b
            }
            Ext::Routing {
                typ,
                segments_left,
                data,
            } => {
                let mut b = vec![next, 0, *typ, *segments_left];
                b.extend_from_slice(data);
                while b.len() < 8 || !b.len().is_multiple_of(8) {
                    b.push(0);
                }
                b[1] = (b.len() / 8 - 1) as u8;
                b
            }
            Ext::Fragment { offset, more, id } => {
                let fo = (offset << 3) | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&fo.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

/// Pads an options header to a multiple of 8 with Pad1 / PadN.
fn pad_options(b: &mut Vec<u8>) {
    let missing = (8 - b.len() % 8) % 8;
    match missing {
        0 => {}
        1 => b.push(0),
        n => {
            b.push(1);
            b.push((n - 2) as u8);
            b.resize(b.len() + n - 2, 0);
        }
    }
}

/// An IPv6 datagram: fixed header, `ext` in order, then `l4`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, ext: &[Ext], l4: &L4) -> Vec<u8> {
    let body = l4.bytes(IpAddr::V6(src), IpAddr::V6(dst));
    ipv6_raw(src, dst, ext, l4.proto(true), &body)
}

/// An IPv6 datagram with `payload` as is after the extension headers.
pub fn ipv6_raw(src: Ipv6Addr, dst: Ipv6Addr, ext: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, e) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, Ext::number);
        chain.extend_from_slice(&e.bytes(next));
    }
    let first = ext.first().map_or(proto, Ext::number);
    let mut b = Vec::with_capacity(40 + chain.len() + payload.len());
    b.extend_from_slice(&[0x60, 0, 0, 0]);
    b.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    b.push(first);
    b.push(64);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&chain);
    b.extend_from_slice(payload);
    b
}

/// A datagram of the family of `src` (both addresses of one family; an IPv4-mapped IPv6
/// address makes an IPv6 datagram) carrying `l4`, without options or extension headers.
pub fn datagram(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(&V4::new(s, d), l4),
        _ => ipv6(v6_of(src), v6_of(dst), &[], l4),
    }
}

/// A VLAN tag: 802.1Q (TPID 0x8100) or 802.1ad (0x88a8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub tpid: u16,
    pub vid: u16,
}

impl Vlan {
    pub const Q: u16 = 0x8100;
    pub const AD: u16 = 0x88a8;

    pub fn q(vid: u16) -> Vlan {
        Vlan { tpid: Self::Q, vid }
    }

    pub fn ad(vid: u16) -> Vlan {
        Vlan {
            tpid: Self::AD,
            vid,
        }
    }
}

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An Ethernet frame with `ethertype` and `payload`, VLAN tags outermost first, padded with
/// zeros to 60 bytes (the minimum frame without FCS, as a NIC sends it).
pub fn ether_type(ethertype: u16, payload: &[u8], vlans: &[Vlan]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + 4 * vlans.len() + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for v in vlans {
        f.extend_from_slice(&v.tpid.to_be_bytes());
        f.extend_from_slice(&(v.vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// An IP datagram on the wire: the ethertype follows its version nibble (IPv4 0x0800,
/// anything else 0x86dd).
pub fn ether(datagram: &[u8], vlans: &[Vlan]) -> Vec<u8> {
    let ethertype = if datagram.first().is_some_and(|b| b >> 4 == 4) {
        0x0800
    } else {
        0x86dd
    };
    ether_type(ethertype, datagram, vlans)
}

/// `src -> dst` carrying `l4`, on the wire without VLAN tags.
pub fn frame(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    ether(&datagram(src, dst, l4), &[])
}

/// The ICMP errors a host or router sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// Destination unreachable with a code (ICMP 3, ICMPv6 1).
    Unreachable(u8),
    /// Fragmentation needed (ICMP 3/4) or packet too big (ICMPv6 2), with the next-hop MTU.
    TooBig(u16),
    /// Time exceeded with a code (ICMP 11, ICMPv6 3).
    TimeExceeded(u8),
    /// Parameter problem with a pointer (ICMP 12, ICMPv6 4).
    ParamProblem(u8),
    /// Source quench (ICMP 4; IPv6 has none: sent as unreachable code 0).
    SourceQuench,
}

impl IcmpError {
    /// (type, code, rest) in the given family.
    pub fn header(&self, v6: bool) -> (u8, u8, [u8; 4]) {
        match (*self, v6) {
            (IcmpError::Unreachable(c), false) => (3, c, [0; 4]),
            (IcmpError::Unreachable(c), true) => (1, c, [0; 4]),
            (IcmpError::TooBig(mtu), false) => {
                let [a, b] = mtu.to_be_bytes();
                (3, 4, [0, 0, a, b])
            }
            (IcmpError::TooBig(mtu), true) => {
                let [a, b] = mtu.to_be_bytes();
                (2, 0, [0, 0, a, b])
            }
            (IcmpError::TimeExceeded(c), false) => (11, c, [0; 4]),
            (IcmpError::TimeExceeded(c), true) => (3, c, [0; 4]),
            (IcmpError::ParamProblem(p), false) => (12, 0, [p, 0, 0, 0]),
            (IcmpError::ParamProblem(p), true) => (4, 0, [0, 0, 0, p]),
            (IcmpError::SourceQuench, false) => (4, 0, [0; 4]),
            (IcmpError::SourceQuench, true) => (1, 0, [0; 4]),
        }
    }
}

/// What a real host quotes of the `offending` datagram: IPv4 its header (with options) and
/// the first 8 bytes after it; IPv6 as much as fits in a 1280-byte error.
pub fn quote_of(offending: &[u8]) -> Vec<u8> {
    let n = if offending.first().is_some_and(|b| b >> 4 == 4) {
        usize::from(offending[0] & 0x0f) * 4 + 8
    } else {
        1280 - 48
    };
    offending[..n.min(offending.len())].to_vec()
}

/// An ICMP error datagram `src -> dst` about the `offending` datagram (quoted as a real
/// host does, see [`quote_of`]).
pub fn icmp_error(src: IpAddr, dst: IpAddr, err: IcmpError, offending: &[u8]) -> Vec<u8> {
    icmp_error_quoting(src, dst, err, quote_of(offending))
}

/// An ICMP error datagram carrying exactly `quote` (for forged or cut quotes).
pub fn icmp_error_quoting(src: IpAddr, dst: IpAddr, err: IcmpError, quote: Vec<u8>) -> Vec<u8> {
    let (ty, code, rest) = err.header(src.is_ipv6());
    datagram(
        src,
        dst,
        &L4::Icmp {
            ty,
            code,
            rest,
            payload: quote,
        },
    )
}

/// Cuts an IPv4 datagram into fragments for a link of `mtu` bytes as a host's IP stack
/// does: the same identification, offsets multiples of 8, MF on every fragment but the last
/// (and on the last too when the datagram was itself a non-last fragment), options in the
/// first fragment and, in the others, only those whose copy bit is set. A datagram that
/// fits is returned as is.
pub fn fragment_v4(datagram: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]])).min(datagram.len());
    if total <= mtu {
        return vec![datagram[..total].to_vec()];
    }
    let flags = u16::from_be_bytes([datagram[6], datagram[7]]);
    let base = usize::from(flags & 0x1fff) * 8;
    let was_more = flags & 0x2000 != 0;
    let h = V4 {
        src: Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]),
        dst: Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]),
        id: u16::from_be_bytes([datagram[4], datagram[5]]),
        ttl: datagram[8],
        df: false,
        options: datagram[20..ihl].to_vec(),
    };
    let later = V4 {
        options: copied_options(&datagram[20..ihl]),
        ..h.clone()
    };
    let proto = datagram[9];
    let payload = &datagram[ihl..total];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        let hdr = if pos == 0 { &h } else { &later };
        let hlen = 20 + hdr.options.len().div_ceil(4) * 4;
        let room = (mtu.saturating_sub(hlen) / 8 * 8).max(8);
        let n = room.min(payload.len() - pos);
        let last = pos + n == payload.len();
        out.push(ipv4_raw(
            hdr,
            proto,
            &payload[pos..pos + n],
            base + pos,
            !last || was_more,
        ));
        pos += n;
    }
    out
}

/// The options of an IPv4 header a later fragment carries: those with the copy bit.
fn copied_options(opts: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*opts.get(i + 1).unwrap_or(&2)).max(2);
                let end = (i + len).min(opts.len());
                if kind & 0x80 != 0 {
                    out.extend_from_slice(&opts[i..end]);
                }
                i = end;
            }
        }
    }
    out
}

/// Cuts an IPv6 datagram into fragments for a link of `mtu` bytes per RFC 8200 §4.5: the
/// per-fragment (unfragmentable) part is the IPv6 header and the extension headers up to
/// and including the routing header (hop-by-hop, destination options before it, routing),
/// or up to the hop-by-hop header when there is no routing header; a fragment header with
/// `id` follows it in every fragment; the rest (destination options after the routing
/// header, the upper-layer header and data) is cut in multiples of 8 bytes. A datagram that
/// fits is returned as is.
pub fn fragment_v6(datagram: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    let payload_len = usize::from(u16::from_be_bytes([datagram[4], datagram[5]]));
    let end = (40 + payload_len).min(datagram.len());
    if end <= mtu {
        return vec![datagram[..end].to_vec()];
    }
    // Find the end of the per-fragment headers and the offset of the next-header byte that
    // names what follows them.
    let mut next = datagram[6];
    let mut off = 40;
    let mut split = (40, 6);
    while matches!(next, 0 | 43 | 60) && off + 2 <= end {
        let len = (usize::from(datagram[off + 1]) + 1) * 8;
        let this = next;
        let next_at = off;
        next = datagram[off];
        off += len;
        if this == 0 || this == 43 {
            split = (off, next_at);
        }
        if this == 43 {
            break;
        }
    }
    let (unfrag_end, next_field) = split;
    let first_fragmentable = datagram[next_field];
    let mut unfrag = datagram[..unfrag_end].to_vec();
    unfrag[next_field] = 44;
    let rest = &datagram[unfrag_end..end];
    let room = (mtu.saturating_sub(unfrag_end + 8) / 8 * 8).max(8);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < rest.len() {
        let n = room.min(rest.len() - pos);
        let more = pos + n < rest.len();
        let mut f = unfrag.clone();
        f.extend_from_slice(
            &Ext::Fragment {
                offset: (pos / 8) as u16,
                more,
                id,
            }
            .bytes(first_fragmentable),
        );
        f.extend_from_slice(&rest[pos..pos + n]);
        let plen = (f.len() - 40) as u16;
        f[4..6].copy_from_slice(&plen.to_be_bytes());
        out.push(f);
        pos += n;
    }
    out
}

/// `v4` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
pub fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

/// A labelled frame of the adversarial catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub label: String,
    pub frame: Vec<u8>,
}

fn variant(label: impl Into<String>, frame: Vec<u8>) -> Variant {
    Variant {
        label: label.into(),
        frame,
    }
}

/// Header boundaries of a frame the builders made: (offset, what starts there). The last
/// entry is the start of the transport payload (or of a later fragment's data).
pub fn header_boundaries(f: &[u8]) -> Vec<(usize, &'static str)> {
    let mut out = vec![(0, "ethernet")];
    if f.len() < 14 {
        return out;
    }
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut off = 14;
    while (et == Vlan::Q || et == Vlan::AD) && off + 4 <= f.len() {
        out.push((off - 2, "vlan tag"));
        et = u16::from_be_bytes([f[off + 2], f[off + 3]]);
        off += 4;
    }
    let ip = off;
    out.push((ip, "ip header"));
    let (mut next, mut l4, later) = match et {
        0x0800 if f.len() >= ip + 20 => {
            let ihl = usize::from(f[ip] & 0x0f) * 4;
            if ihl > 20 {
                out.push((ip + 20, "ipv4 options"));
            }
            let fo = u16::from_be_bytes([f[ip + 6], f[ip + 7]]);
            (f[ip + 9], ip + ihl, fo & 0x1fff != 0)
        }
        0x86dd if f.len() >= ip + 40 => (f[ip + 6], ip + 40, false),
        _ => return out,
    };
    let mut later = later;
    if et == 0x86dd {
        while matches!(next, 0 | 43 | 44 | 60) && l4 + 8 <= f.len() && !later {
            out.push((
                l4,
                match next {
                    0 => "hop-by-hop header",
                    43 => "routing header",
                    44 => "fragment header",
                    _ => "destination options header",
                },
            ));
            let len = if next == 44 {
                later = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]) >> 3 != 0;
                8
            } else {
                (usize::from(f[l4 + 1]) + 1) * 8
            };
            next = f[l4];
            l4 += len;
        }
    }
    if later {
        out.push((l4, "fragment data"));
        return out;
    }
    let v6 = et == 0x86dd;
    let hlen = match next {
        6 if f.len() >= l4 + 13 => Some((usize::from(f[l4 + 12] >> 4) * 4, "tcp header")),
        17 => Some((8, "udp header")),
        1 if !v6 => Some((8, "icmp header")),
        58 if v6 => Some((8, "icmpv6 header")),
        _ => None,
    };
    if let Some((len, name)) = hlen {
        out.push((l4, name));
        if name == "tcp header" && len > 20 {
            out.push((l4 + 20, "tcp options"));
        }
        out.push((l4 + len, "payload"));
    }
    out
}

/// The frame cut at every header boundary (the next header missing) and in the middle of
/// every header, IP lengths left as they were: the headers lie about the frame.
pub fn truncations(frame: &[u8]) -> Vec<Variant> {
    let b = header_boundaries(frame);
    let mut out = Vec::new();
    for (i, &(start, name)) in b.iter().enumerate() {
        if name == "payload" || name == "fragment data" {
            continue;
        }
        let end = b.get(i + 1).map_or(frame.len(), |x| x.0);
        if start > 0 && start < frame.len() {
            out.push(variant(
                format!("truncated before the {name} (frame ends at byte {start})"),
                frame[..start].to_vec(),
            ));
        }
        let mid = start + (end - start) / 2;
        if mid > start && mid < frame.len() {
            out.push(variant(
                format!("truncated inside the {name} (frame ends at byte {mid})"),
                frame[..mid].to_vec(),
            ));
        }
    }
    out
}

fn with_v4(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut d = ipv4(&V4::new(src, dst), l4);
    edit(&mut d);
    ether_type(0x0800, &d, &[])
}

/// A catalog of malformed and adversarial frames `src -> dst` (both one family; TCP and UDP
/// to `dport`), each labelled with how it lies. Truncations of well-formed TCP, UDP and ICMP
/// frames at every header boundary are included. Some entries are well-formed on purpose
/// (a first fragment whose UDP length describes the whole datagram, overlapping later
/// fragments, lengths shorter than the frame): the label says what they are, the model says
/// what happens to them.
pub fn malformed(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<Variant> {
    let v6 = src.is_ipv6();
    let tcp = L4::tcp(sport, dport, flags::SYN);
    let udp = L4::udp(sport, dport, vec![0x55; 24]);
    let icmp = L4::echo_request(v6, sport, 1);
    let mut out = Vec::new();
    for (name, l4) in [("tcp", &tcp), ("udp", &udp), ("icmp", &icmp)] {
        let mut opts = Vec::new();
        if !v6 && name == "tcp" {
            opts = opt::router_alert();
        }
        let d = if v6 {
            ipv6(
                v6_of(src),
                v6_of(dst),
                &[Ext::HopByHop(vec![5, 2, 0, 0]), Ext::DestOpts(vec![])],
                l4,
            )
        } else {
            ipv4(
                &V4 {
                    options: opts,
                    ..V4::new(v4_of(src), v4_of(dst))
                },
                l4,
            )
        };
        for mut t in truncations(&ether(&d, &[Vlan::q(7)])) {
            t.label = format!("{name}: {}", t.label);
            out.push(t);
        }
    }
    out.push(variant(
        "three VLAN tags",
        ether(
            &datagram(src, dst, &tcp),
            &[Vlan::ad(1), Vlan::q(2), Vlan::q(3)],
        ),
    ));
    out.push(variant(
        "ethernet header only (14 bytes, IPv4 ethertype)",
        ether_type(0x0800, &[], &[])[..14].to_vec(),
    ));
    out.push(variant(
        "ethernet header cut at 10 bytes",
        ether(&datagram(src, dst, &tcp), &[])[..10].to_vec(),
    ));
    if v6 {
        catalog_v6(&mut out, v6_of(src), v6_of(dst), sport, dport);
    } else {
        catalog_v4(&mut out, v4_of(src), v4_of(dst), sport, dport);
    }
    out
}

fn catalog_v4(out: &mut Vec<Variant>, s: Ipv4Addr, d: Ipv4Addr, sport: u16, dport: u16) {
    let tcp = L4::tcp(sport, dport, flags::SYN);
    let udp = L4::udp(sport, dport, vec![0x55; 24]);
    let set_len = |d: &mut Vec<u8>, len: u16| {
        d[2..4].copy_from_slice(&len.to_be_bytes());
        fix_v4_checksum(d);
    };
    out.push(variant(
        "ipv4: version 5 under the IPv4 ethertype",
        with_v4(s, d, &tcp, |d| {
            d[0] = 0x55;
            fix_v4_checksum(d);
        }),
    ));
    out.push(variant(
        "ipv4: version 6 under the IPv4 ethertype",
        with_v4(s, d, &tcp, |d| d[0] = 0x65),
    ));
    for ihl in [0u8, 4] {
        out.push(variant(
            format!("ipv4: IHL {ihl} (< 5)"),
            with_v4(s, d, &tcp, |d| d[0] = 0x40 | ihl),
        ));
    }
    out.push(variant(
        "ipv4: IHL 15 (60-byte header) past the datagram",
        with_v4(s, d, &tcp, |d| {
            d[0] = 0x4f;
            fix_v4_checksum(d);
        }),
    ));
    out.push(variant(
        "ipv4: total length 0",
        with_v4(s, d, &tcp, |d| set_len(d, 0)),
    ));
    out.push(variant(
        "ipv4: total length 19 (< IHL)",
        with_v4(s, d, &tcp, |d| set_len(d, 19)),
    ));
    out.push(variant(
        "ipv4: total length 30 cuts the TCP header",
        with_v4(s, d, &tcp, |d| set_len(d, 30)),
    ));
    out.push(variant(
        "ipv4: total length 1500 runs past the frame (headers fit)",
        with_v4(s, d, &L4::udp(sport, dport, vec![1; 16]), |d| {
            set_len(d, 1500)
        }),
    ));
    out.push(variant(
        "ipv4: total length shorter than the frame (extra bytes after the datagram), UDP length fits",
        with_v4(s, d, &L4::udp(sport, dport, vec![]), |d| {
            d.extend_from_slice(&[0xee; 40]);
        }),
    ));
    let with_opts = |o: Vec<u8>| {
        ether(
            &ipv4(
                &V4 {
                    options: o,
                    ..V4::new(s, d)
                },
                &tcp,
            ),
            &[],
        )
    };
    out.push(variant(
        "ipv4 option: length 1",
        with_opts(vec![7, 1, 0, 0]),
    ));
    out.push(variant(
        "ipv4 option: length 0",
        with_opts(vec![1, 7, 0, 0]),
    ));
    out.push(variant(
        "ipv4 option: length runs past the header",
        with_opts(vec![7, 12, 4, 0]),
    ));
    out.push(variant(
        "ipv4 option: kind without a length byte at the header's end",
        with_opts(vec![1, 1, 1, 7]),
    ));
    out.push(variant(
        "ipv4 option: NOPs, router alert and EOL (well-formed)",
        with_opts([vec![1, 1], opt::router_alert(), vec![0, 0]].concat()),
    ));
    out.push(variant(
        "ipv4 option: LSRR",
        with_opts(opt::lsrr(&[Ipv4Addr::new(198, 18, 99, 1)])),
    ));
    out.push(variant(
        "ipv4 option: SSRR",
        with_opts(opt::ssrr(&[Ipv4Addr::new(198, 18, 99, 1)])),
    ));
    out.push(variant(
        "ipv4 option: LSRR and then a malformed option",
        with_opts(
            [
                opt::lsrr(&[Ipv4Addr::new(198, 18, 99, 1)]),
                vec![7, 1, 0, 0],
            ]
            .concat(),
        ),
    ));
    for doff in [0u8, 4] {
        out.push(variant(
            format!("tcp: data offset {doff} (< 5)"),
            with_v4(s, d, &tcp, |d| d[20 + 12] = doff << 4),
        ));
    }
    out.push(variant(
        "tcp: data offset 15 runs past the packet",
        with_v4(s, d, &tcp, |d| d[20 + 12] = 15 << 4),
    ));
    out.push(variant(
        "udp: length 7 (< 8)",
        with_v4(s, d, &udp, |d| {
            d[20 + 4..20 + 6].copy_from_slice(&7u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "udp: length runs past the IP payload (unfragmented)",
        with_v4(s, d, &udp, |d| {
            d[20 + 4..20 + 6].copy_from_slice(&200u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "udp: length shorter than the IP payload (well-formed)",
        with_v4(s, d, &udp, |d| {
            d[20 + 4..20 + 6].copy_from_slice(&8u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "icmp: 4 bytes of header",
        ether(
            &ipv4_raw(&V4::new(s, d), proto::ICMP, &[8, 0, 0, 0], 0, false),
            &[],
        ),
    ));
    // Fragments.
    let big = ipv4(
        &V4 {
            id: 0x4242,
            ..V4::new(s, d)
        },
        &L4::udp(sport, dport, vec![0x77; 1000]),
    );
    let frags = fragment_v4(&big, 500);
    out.push(variant(
        "ipv4 first fragment: UDP length describes the whole datagram (well-formed)",
        ether(&frags[0], &[]),
    ));
    out.push(variant(
        "ipv4 later fragment without its first",
        ether(&frags[1], &[]),
    ));
    out.push(variant(
        "ipv4 tiny first fragment: 8 bytes of a TCP header",
        ether(
            &ipv4_raw(
                &V4 {
                    id: 0x4343,
                    ..V4::new(s, d)
                },
                proto::TCP,
                &L4::tcp(sport, dport, flags::SYN).bytes(s.into(), d.into())[..8],
                0,
                true,
            ),
            &[],
        ),
    ));
    out.push(variant(
        "ipv4 tiny first fragment: 4 bytes of a UDP header",
        ether(
            &ipv4_raw(
                &V4 {
                    id: 0x4444,
                    ..V4::new(s, d)
                },
                proto::UDP,
                &udp.bytes(s.into(), d.into())[..4],
                0,
                true,
            ),
            &[],
        ),
    ));
    let tcp_big = L4::tcp_data(sport, dport, flags::ACK, 1, 1, vec![0x66; 64]);
    let body = tcp_big.bytes(s.into(), d.into());
    out.push(variant(
        "ipv4 overlapping fragment: offset 8 rewrites the TCP header's flags (RFC 1858)",
        ether(
            &ipv4_raw(
                &V4 {
                    id: 0x4545,
                    ..V4::new(s, d)
                },
                proto::TCP,
                &body[8..40],
                8,
                true,
            ),
            &[],
        ),
    ));
}

fn catalog_v6(out: &mut Vec<Variant>, s: Ipv6Addr, d: Ipv6Addr, sport: u16, dport: u16) {
    let tcp = L4::tcp(sport, dport, flags::SYN);
    let udp = L4::udp(sport, dport, vec![0x55; 24]);
    let framed = |d: Vec<u8>| ether(&d, &[]);
    let edit = |l4: &L4, ext: &[Ext], f: &dyn Fn(&mut Vec<u8>)| {
        let mut x = ipv6(s, d, ext, l4);
        f(&mut x);
        ether_type(0x86dd, &x, &[])
    };
    out.push(variant(
        "ipv6: version 4 under the IPv6 ethertype",
        edit(&tcp, &[], &|x| x[0] = 0x40),
    ));
    out.push(variant(
        "ipv6: payload length 0",
        edit(&tcp, &[], &|x| x[4..6].copy_from_slice(&[0, 0])),
    ));
    out.push(variant(
        "ipv6: payload length 10 cuts the TCP header",
        edit(&tcp, &[], &|x| {
            x[4..6].copy_from_slice(&10u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "ipv6: payload length 1400 runs past the frame (headers fit)",
        edit(&L4::udp(sport, dport, vec![1; 16]), &[], &|x| {
            x[4..6].copy_from_slice(&1400u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "ipv6: payload length 4 cuts a destination options header",
        edit(&tcp, &[Ext::DestOpts(vec![])], &|x| {
            x[4..6].copy_from_slice(&4u16.to_be_bytes())
        }),
    ));
    let nine: Vec<Ext> = (0..9).map(|_| Ext::DestOpts(vec![])).collect();
    out.push(variant(
        "ipv6: 9 extension headers",
        framed(ipv6(s, d, &nine, &tcp)),
    ));
    let eight: Vec<Ext> = (0..8).map(|_| Ext::DestOpts(vec![])).collect();
    out.push(variant(
        "ipv6: 8 extension headers (the most allowed)",
        framed(ipv6(s, d, &eight, &tcp)),
    ));
    out.push(variant(
        "ipv6: hop-by-hop after destination options",
        framed(ipv6(
            s,
            d,
            &[Ext::DestOpts(vec![]), Ext::HopByHop(vec![])],
            &tcp,
        )),
    ));
    out.push(variant(
        "ipv6: two hop-by-hop headers",
        framed(ipv6(
            s,
            d,
            &[Ext::HopByHop(vec![]), Ext::HopByHop(vec![])],
            &tcp,
        )),
    ));
    out.push(variant(
        "ipv6: two fragment headers",
        framed(ipv6(
            s,
            d,
            &[
                Ext::Fragment {
                    offset: 0,
                    more: true,
                    id: 9,
                },
                Ext::Fragment {
                    offset: 0,
                    more: true,
                    id: 9,
                },
            ],
            &tcp,
        )),
    ));
    out.push(variant(
        "ipv6: atomic fragment (offset 0, M clear)",
        framed(ipv6(
            s,
            d,
            &[Ext::Fragment {
                offset: 0,
                more: false,
                id: 10,
            }],
            &tcp,
        )),
    ));
    out.push(variant(
        "ipv6: routing header type 4, segments left 1",
        framed(ipv6(s, d, &[Ext::srh(&[d, s], 1)], &tcp)),
    ));
    out.push(variant(
        "ipv6: routing header type 4, segments left 0",
        framed(ipv6(s, d, &[Ext::srh(&[d], 0)], &tcp)),
    ));
    out.push(variant(
        "ipv6: routing header type 0 (deprecated), segments left 1",
        framed(ipv6(
            s,
            d,
            &[Ext::Routing {
                typ: 0,
                segments_left: 1,
                data: [vec![0; 4], d.octets().to_vec()].concat(),
            }],
            &tcp,
        )),
    ));
    for doff in [0u8, 4] {
        out.push(variant(
            format!("tcp: data offset {doff} (< 5)"),
            edit(&tcp, &[], &|x| x[40 + 12] = doff << 4),
        ));
    }
    out.push(variant(
        "tcp: data offset 15 runs past the packet",
        edit(&tcp, &[], &|x| x[40 + 12] = 15 << 4),
    ));
    out.push(variant(
        "udp: length 7 (< 8)",
        edit(&udp, &[], &|x| {
            x[44..46].copy_from_slice(&7u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "udp: length runs past the IP payload (unfragmented)",
        edit(&udp, &[], &|x| {
            x[44..46].copy_from_slice(&300u16.to_be_bytes())
        }),
    ));
    out.push(variant(
        "icmpv6: 6 bytes of header",
        framed(ipv6_raw(s, d, &[], proto::ICMPV6, &[128, 0, 0, 0, 0, 1])),
    ));
    // Fragments.
    let big = ipv6(
        s,
        d,
        &[Ext::DestOpts(vec![])],
        &L4::udp(sport, dport, vec![0x77; 2000]),
    );
    let frags = fragment_v6(&big, 1280, 0x0600_0001);
    out.push(variant(
        "ipv6 first fragment, destination options after the fragment header (well-formed)",
        framed(frags[0].clone()),
    ));
    out.push(variant(
        "ipv6 later fragment without its first",
        framed(frags[1].clone()),
    ));
    let body = tcp.bytes(s.into(), d.into());
    out.push(variant(
        "ipv6 tiny first fragment: 8 bytes of a TCP header",
        framed(ipv6_raw(
            s,
            d,
            &[Ext::Fragment {
                offset: 0,
                more: true,
                id: 0x0600_0002,
            }],
            proto::TCP,
            &body[..8],
        )),
    ));
    out.push(variant(
        "ipv6 tiny first fragment: destination options header cut by the fragment's end",
        framed(ipv6_raw(
            s,
            d,
            &[Ext::Fragment {
                offset: 0,
                more: true,
                id: 0x0600_0003,
            }],
            60,
            &[proto::TCP, 2, 1, 4, 0, 0, 0, 0],
        )),
    ));
    let tcp_big = L4::tcp_data(sport, dport, flags::ACK, 1, 1, vec![0x66; 64]);
    let body = tcp_big.bytes(s.into(), d.into());
    out.push(variant(
        "ipv6 overlapping fragment: offset 8 rewrites the TCP header (RFC 5722 forbids)",
        framed(ipv6_raw(
            s,
            d,
            &[Ext::Fragment {
                offset: 1,
                more: true,
                id: 0x0600_0004,
            }],
            proto::TCP,
            &body[8..40],
        )),
    ));
}
