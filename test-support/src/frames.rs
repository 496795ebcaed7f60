//! Frames that read as what they mean ("IPv4 TCP from A:1234 to B:22"), built with
//! `etherparse`; helpers that change one named field (options, extension headers, fragment
//! fields) and that cut datagrams into fragments the way a host's IP stack does.

use etherparse::PacketBuilder;
use gateway_common::{FlowKey, addr::from_v4, flow::proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// Transport of a fixture packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment with SYN set.
    Tcp {
        src: u16,
        dst: u16,
    },
    /// A TCP segment with FIN and ACK set.
    TcpFin {
        src: u16,
        dst: u16,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// ICMP or ICMPv6 echo request with this identifier.
    EchoRequest {
        id: u16,
    },
    /// ICMP or ICMPv6 echo reply with this identifier.
    EchoReply {
        id: u16,
    },
    /// A TCP segment with exactly these flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
    /// ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80).
    TcpFlags {
        src: u16,
        dst: u16,
        flags: u8,
    },
}

/// A well-formed Ethernet frame from `src` to `dst` with `payload` after the transport
/// header, optionally with VLAN tags (outer first).
pub fn frame(src: IpAddr, dst: IpAddr, l4: L4, vlans: &[u16], payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            let b = $ip;
            match l4 {
                L4::Tcp { src, dst } => {
                    let b = b.tcp(src, dst, 1000, 64240).syn();
                    let mut v = Vec::with_capacity(b.size(payload.len()));
                    b.write(&mut v, payload).expect("write frame");
                    v
                }
                L4::TcpFin { src, dst } => {
                    let b = b.tcp(src, dst, 1000, 64240).fin().ack(1);
                    let mut v = Vec::with_capacity(b.size(payload.len()));
                    b.write(&mut v, payload).expect("write frame");
                    v
                }
                L4::Udp { src, dst } => {
                    let b = b.udp(src, dst);
                    let mut v = Vec::with_capacity(b.size(payload.len()));
                    b.write(&mut v, payload).expect("write frame");
                    v
                }
                L4::EchoRequest { id } => {
                    let v4 = matches!(src, IpAddr::V4(_));
                    let mut v = Vec::new();
                    if v4 {
                        let b = b.icmpv4_echo_request(id, 1);
                        b.write(&mut v, payload).expect("write frame");
                    } else {
                        let b = b.icmpv6_echo_request(id, 1);
                        b.write(&mut v, payload).expect("write frame");
                    }
                    v
                }
                L4::EchoReply { id } => {
                    let v4 = matches!(src, IpAddr::V4(_));
                    let mut v = Vec::new();
                    if v4 {
                        let b = b.icmpv4_echo_reply(id, 1);
                        b.write(&mut v, payload).expect("write frame");
                    } else {
                        let b = b.icmpv6_echo_reply(id, 1);
                        b.write(&mut v, payload).expect("write frame");
                    }
                    v
                }
                L4::TcpFlags { src, dst, flags } => {
                    let mut b = b.tcp(src, dst, 1000, 64240);
                    if flags & 0x01 != 0 {
                        b = b.fin();
                    }
                    if flags & 0x02 != 0 {
                        b = b.syn();
                    }
                    if flags & 0x04 != 0 {
                        b = b.rst();
                    }
                    if flags & 0x08 != 0 {
                        b = b.psh();
                    }
                    if flags & 0x10 != 0 {
                        b = b.ack(1);
                    }
                    if flags & 0x20 != 0 {
                        b = b.urg(0);
                    }
                    if flags & 0x40 != 0 {
                        b = b.ece();
                    }
                    if flags & 0x80 != 0 {
                        b = b.cwr();
                    }
                    let mut v = Vec::with_capacity(b.size(payload.len()));
                    b.write(&mut v, payload).expect("write frame");
                    v
                }
            }
        }};
    }
    let untagged = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
        _ => panic!("fixture mixes address families: {src} -> {dst}"),
    };
    // Insert the tags after the MAC addresses: each tag is TPID + TCI, and the original
    // ethertype follows the last tag.
    out.extend_from_slice(&untagged[..12]);
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() > 1 {
            0x88a8
        } else {
            0x8100
        };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&untagged[12..]);
    out
}

/// Offset of the IP header in a frame built by [`frame`] with `vlans` tags.
pub fn l3_offset(vlans: usize) -> usize {
    14 + 4 * vlans
}

/// Inserts IPv4 options (`len` bytes of NOP, a multiple of 4) and fixes IHL and length.
pub fn with_ipv4_options(mut f: Vec<u8>, vlans: usize, len: usize) -> Vec<u8> {
    let l3 = l3_offset(vlans);
    let ihl = (f[l3] & 0x0f) as usize * 4;
    f.splice(l3 + ihl..l3 + ihl, std::iter::repeat_n(1u8, len));
    f[l3] = 0x40 | ((ihl + len) / 4) as u8;
    let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + len as u16;
    f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    f
}

/// Inserts the IPv4 option bytes `opts` (padded with end-of-list to a multiple of 4) and
/// fixes IHL and length.
pub fn with_ipv4_option_bytes(mut f: Vec<u8>, vlans: usize, opts: &[u8]) -> Vec<u8> {
    let l3 = l3_offset(vlans);
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let mut bytes = opts.to_vec();
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    let len = bytes.len();
    f.splice(l3 + ihl..l3 + ihl, bytes);
    f[l3] = 0x40 | ((ihl + len) / 4) as u8;
    let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + len as u16;
    f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    f
}

/// A Record Route option of `len` bytes (RFC 791: type 7, length, pointer 4, room for
/// addresses).
pub fn record_route(len: u8) -> Vec<u8> {
    let mut v = vec![7, len, 4];
    v.resize(len as usize, 0);
    v
}

/// The Internet checksum of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Splits the IPv4 datagram of an untagged frame into fragments of at most `mtu` bytes
/// (IP header included), as a host's IP stack does (RFC 791, Linux `ip_fragment`): every
/// fragment but the last carries a multiple of 8 payload bytes and More Fragments; all
/// share the datagram's identification `id`; options are copied only when their copy bit
/// says so; header checksums are recomputed.
pub fn fragment_v4(frame: &[u8], mtu: usize, id: u16) -> Vec<Vec<u8>> {
    let eth = &frame[..14];
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let payload = &ip[ihl..total];
    // Options of later fragments: only those with the copy bit (0x80).
    let mut later_opts = Vec::new();
    let mut i = 20;
    while i < ihl {
        match ip[i] {
            0 => break,
            1 => i += 1,
            t => {
                let len = usize::from(ip[i + 1]).max(2);
                if t & 0x80 != 0 {
                    later_opts.extend_from_slice(&ip[i..i + len]);
                }
                i += len;
            }
        }
    }
    while later_opts.len() % 4 != 0 {
        later_opts.push(0);
    }
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let first = off == 0;
        let hlen = if first { ihl } else { 20 + later_opts.len() };
        let room = (mtu - hlen) / 8 * 8;
        let end = (off + room).min(payload.len());
        let more = end < payload.len();
        let mut h = ip[..20].to_vec();
        if first {
            h.extend_from_slice(&ip[20..ihl]);
        } else {
            h.extend_from_slice(&later_opts);
        }
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + end - off) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&fo.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = inet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&payload[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// Splits the IPv6 packet of an untagged frame into fragments of at most `mtu` bytes, as
/// RFC 8200 §4.5 says: the per-fragment part (the IPv6 header and a hop-by-hop header, if
/// first) is repeated, a fragment header (identification `id`) follows it, then the
/// fragmentable part (every other extension header, the upper-layer header and data)
/// split in multiples of 8 bytes.
pub fn fragment_v6(frame: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    let eth = &frame[..14];
    let ip = &frame[14..];
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (mut unfrag_len, mut next) = (40, ip[6]);
    if next == 0 {
        next = ip[40];
        unfrag_len += (usize::from(ip[41]) + 1) * 8;
    }
    let fragmentable = &ip[unfrag_len..40 + payload_len];
    let mut out = Vec::new();
    let mut off = 0;
    while off < fragmentable.len() {
        let room = (mtu - unfrag_len - 8) / 8 * 8;
        let end = (off + room).min(fragmentable.len());
        let more = end < fragmentable.len();
        let mut h = ip[..unfrag_len].to_vec();
        // The header before the fragment header now points at it.
        if unfrag_len == 40 {
            h[6] = 44;
        } else {
            h[40] = 44;
        }
        let plen = unfrag_len - 40 + 8 + (end - off);
        h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        let fo = ((off / 8) as u16) << 3 | u16::from(more);
        h.extend_from_slice(&[next, 0]);
        h.extend_from_slice(&fo.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&fragmentable[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// Sets the IPv4 fragment field (flags + offset in 8-byte units).
pub fn ipv4_frag(mut f: Vec<u8>, more_fragments: bool, offset_units: u16) -> Vec<u8> {
    let l3 = l3_offset(0);
    let v = offset_units | if more_fragments { 0x2000 } else { 0 };
    f[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
    f
}

/// Inserts IPv6 extension headers between the fixed header and the transport header.
/// Each entry is (header type, total length in bytes). Fragment headers are 8 bytes with
/// `frag_offset` (8-byte units) in them.
pub fn with_ipv6_ext(mut f: Vec<u8>, exts: &[(u8, usize)], frag_offset: u16) -> Vec<u8> {
    let l3 = l3_offset(0);
    let transport = f[l3 + 6];
    let mut inserted = Vec::new();
    for (i, &(ty, len)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(transport, |e| e.0);
        let mut h = vec![0u8; len];
        h[0] = next;
        match ty {
            44 => {
                assert_eq!(len, 8);
                h[2..4].copy_from_slice(&(frag_offset << 3).to_be_bytes());
            }
            51 => h[1] = (len / 4 - 2) as u8,
            _ => h[1] = (len / 8 - 1) as u8,
        }
        inserted.extend(h);
    }
    f[l3 + 6] = exts.first().map_or(transport, |e| e.0);
    let payload = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + inserted.len() as u16;
    f[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    f.splice(l3 + 40..l3 + 40, inserted);
    f
}

/// Sets the IPv4 identification field (fragments of one datagram share it).
pub fn set_ipv4_id(mut f: Vec<u8>, id: u16) -> Vec<u8> {
    let l3 = l3_offset(0);
    f[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    f
}

/// An ICMP (IPv4) or ICMPv6 error from `src` to `dst` quoting the IP packet inside the
/// Ethernet frame `offending` (its IP header and the first 8 transport bytes): destination
/// port unreachable for IPv4, packet too big for IPv6.
pub fn icmp_error(src: IpAddr, dst: IpAddr, offending: &[u8]) -> Vec<u8> {
    icmp_error_quoting(src, dst, offending, 8)
}

/// [`icmp_error`] quoting `extra` bytes after the offending packet's IP header (a real
/// host quotes as much as fits in 576 bytes (IPv4) or 1280 (IPv6)).
pub fn icmp_error_quoting(src: IpAddr, dst: IpAddr, offending: &[u8], extra: usize) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader};
    let eth = PacketBuilder::ethernet2(MAC_B, MAC_A);
    let l3 = &offending[14..];
    let ip_len = match l3[0] >> 4 {
        4 => ((l3[0] & 0x0f) as usize) * 4,
        _ => 40,
    };
    let quoted = &l3[..(ip_len + extra).min(l3.len())];
    let mut v = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            ))
            .write(&mut v, quoted)
            .expect("write frame"),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut v, quoted)
            .expect("write frame"),
        _ => panic!("mixed families"),
    }
    v
}

/// The flow key the parser should produce for a [`frame`].
pub fn expected_key(src: IpAddr, dst: IpAddr, l4: L4) -> FlowKey {
    let (s, d, family) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (from_v4(s.octets()), from_v4(d.octets()), 4),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets(), d.octets(), 6),
        _ => panic!("mixed families"),
    };
    let (p, sp, dp) = match l4 {
        L4::Tcp { src, dst } | L4::TcpFin { src, dst } => (proto::TCP, src, dst),
        L4::Udp { src, dst } => (proto::UDP, src, dst),
        L4::TcpFlags { src, dst, .. } => (proto::TCP, src, dst),
        L4::EchoRequest { id } | L4::EchoReply { id } => (
            if family == 4 {
                proto::ICMP
            } else {
                proto::ICMPV6
            },
            id,
            id,
        ),
    };
    FlowKey {
        src: s,
        dst: d,
        src_port: sp.to_be_bytes(),
        dst_port: dp.to_be_bytes(),
        proto: p,
        family,
        _pad: [0; 2],
    }
}

/// Test addresses (198.18.0.0/15 and 2001:db8::/32 only).
pub fn v4(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, a, b))
}

pub fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
}
