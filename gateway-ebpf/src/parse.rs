//! Frame parser: Ethernet (up to two VLAN tags), IPv4 (any IHL), IPv6 (bounded extension
//! header walk), TCP/UDP/ICMP/ICMPv6, reduced to one `FlowKey`.
//!
//! Every read goes through [`ptr_at`], which checks the read against `data_end` first.
//! Offsets stay bounded (at most `MAX_VLAN_TAGS` tags, IHL <= 15, at most
//! `MAX_IPV6_EXT_HEADERS` extension headers of at most 2 KiB each), so the verifier can
//! prove every access. A frame that cannot be parsed yields an error outcome, never a key.

use aya_ebpf::programs::{TcContext, XdpContext};
use gateway_common::{
    FlowKey, ParseOutcome,
    addr::from_v4,
    flow::proto,
    parse::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Bound on a transport-header offset: Ethernet, two VLAN tags, IPv6 and six extension
/// headers of at most 2 KiB each fit below it.
const MAX_L4_OFFSET: usize = 16_384;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;

// IPv6 extension headers the walk understands.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Linear packet data, as XDP and TC both expose it.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length (TC: also the part not pulled into linear data).
    fn len(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
}

/// A parsed frame: its flow key, the outcome to count, and what the policy path needs
/// beyond the key.
#[derive(Clone, Copy)]
pub struct Parsed {
    pub key: FlowKey,
    pub outcome: ParseOutcome,
    /// Offset of the transport header (meaningful when the key has ports or ICMP).
    pub l4: usize,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// Set on a first fragment (more fragments follow, offset 0): later fragments will
    /// look for `frag_key`.
    pub first_fragment: bool,
    /// Fragment identification (IPv4: `[0, 0, id]`; IPv6: the 32-bit id), for
    /// [`Parsed::frag_key`].
    pub frag_id: [u8; 4],
}

impl Parsed {
    pub const EMPTY: Parsed = Parsed {
        key: FlowKey {
            src: [0; 16],
            dst: [0; 16],
            src_port: [0; 2],
            dst_port: [0; 2],
            proto: 0,
            family: 0,
            flags: 0,
            _pad: 0,
        },
        outcome: ParseOutcome::Truncated,
        l4: 0,
        tcp_flags: 0,
        first_fragment: false,
        frag_id: [0; 4],
    };

    /// The key naming this packet's fragmented datagram (see `FlowKey::FLAG_FRAGMENT`).
    #[inline(always)]
    pub fn frag_key(&self) -> FlowKey {
        let mut k = self.key;
        k.flags = FlowKey::FLAG_FRAGMENT;
        k.src_port = [self.frag_id[0], self.frag_id[1]];
        k.dst_port = [self.frag_id[2], self.frag_id[3]];
        k
    }
}

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// Returns a pointer to a `T` at `offset` from the start of the frame, or `Truncated` if
/// the frame is too short. `T` must have alignment 1 (all header types here are byte
/// arrays), so the pointer may be dereferenced wherever the frame is.
#[inline(always)]
fn ptr_at<C: Frame, T>(ctx: &C, offset: usize) -> Result<*const T, ParseOutcome> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(ParseOutcome::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// A reference to a header inside the frame, bounds-checked. Fields are read straight from
/// packet memory: no copy of the header lands on the 512-byte stack.
#[inline(always)]
fn read<'a, C: Frame, T>(ctx: &C, offset: usize) -> Result<&'a T, ParseOutcome> {
    let p = ptr_at::<C, T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame,
    // which outlives this program run; every `T` used here has alignment 1.
    Ok(unsafe { &*p })
}

#[derive(Clone, Copy)]
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The first two bytes every IPv6 extension header shares.
#[derive(Clone, Copy)]
#[repr(C)]
struct ExtHdr {
    next_header: u8,
    len: u8,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

/// Ports plus the TCP data-offset byte (checked for TCP only).
#[derive(Clone, Copy)]
#[repr(C)]
struct TcpHdr {
    src: [u8; 2],
    dst: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_off: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urg: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct UdpHdr {
    src: [u8; 2],
    dst: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    id: [u8; 2],
    seq: [u8; 2],
}

/// Parses the frame in `ctx` into `out` and returns the outcome. `out` is meaningful only
/// when the outcome `has_flow()`; otherwise the frame has no flow key (not IP, truncated,
/// malformed, too deep). The parser writes into `out` in place (a per-CPU scratch slot in
/// the programs): flow keys never get copied around on the 512-byte stack.
#[inline(always)]
pub fn parse<C: Frame>(ctx: &C, out: &mut Parsed) -> ParseOutcome {
    *out = Parsed::EMPTY;
    match parse_frame(ctx, out) {
        Ok(outcome) => {
            out.outcome = outcome;
            outcome
        }
        Err(outcome) => outcome,
    }
}

#[inline(always)]
fn parse_frame<C: Frame>(ctx: &C, out: &mut Parsed) -> Result<ParseOutcome, ParseOutcome> {
    let eth: &EthHdr = read(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan: &VlanHdr = read(ctx, l3)?;
        ethertype = u16::from_be_bytes(vlan.ethertype);
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3, out),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, out),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseOutcome::TooManyVlans),
        _ => Err(ParseOutcome::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4<C: Frame>(
    ctx: &C,
    l3: usize,
    out: &mut Parsed,
) -> Result<ParseOutcome, ParseOutcome> {
    let ip: &Ipv4Hdr = read(ctx, l3)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(ParseOutcome::Malformed);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes(ip.total_len) as usize;
    if ihl < 20 || total_len < ihl {
        return Err(ParseOutcome::Malformed);
    }
    // A datagram longer than the frame lost its end (Ethernet padding may make the frame
    // longer, never shorter).
    let ip_end = l3 + total_len;
    if ip_end > ctx.len() {
        return Err(ParseOutcome::Truncated);
    }
    // The options must be inside the frame even though we do not read them.
    ptr_at::<C, u8>(ctx, l3 + ihl - 1)?;

    let key = &mut out.key;
    key.src = from_v4(ip.src);
    key.dst = from_v4(ip.dst);
    key.proto = ip.proto;
    key.family = 4;
    let frag = u16::from_be_bytes(ip.frag_off);
    out.frag_id = [0, 0, ip.id[0], ip.id[1]];
    let l4 = l3 + ihl;
    out.l4 = l4;
    if frag & 0x1fff != 0 {
        key.flags = FlowKey::FLAG_FRAGMENT;
        key.dst_port = ip.id;
        return Ok(ParseOutcome::Ipv4Fragment);
    }
    out.first_fragment = frag & 0x2000 != 0;
    match ip.proto {
        proto::TCP => {
            out.tcp_flags = parse_tcp(ctx, l4, ip_end, key)?;
            Ok(ParseOutcome::Ipv4Tcp)
        }
        proto::UDP => {
            parse_udp(ctx, l4, ip_end, key)?;
            Ok(ParseOutcome::Ipv4Udp)
        }
        proto::ICMP => {
            parse_icmp(ctx, l4, ip_end, key, 8, 0)?;
            Ok(ParseOutcome::Ipv4Icmp)
        }
        _ => Ok(ParseOutcome::Ipv4Other),
    }
}

#[inline(always)]
fn parse_ipv6<C: Frame>(
    ctx: &C,
    l3: usize,
    out: &mut Parsed,
) -> Result<ParseOutcome, ParseOutcome> {
    let ip: &Ipv6Hdr = read(ctx, l3)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(ParseOutcome::Malformed);
    }
    let ip_end = l3 + IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
    if ip_end > ctx.len() {
        return Err(ParseOutcome::Truncated);
    }
    let key = &mut out.key;
    key.src = ip.src;
    key.dst = ip.dst;
    key.family = 6;
    let mut next = ip.next_header;
    let mut off = l3 + IPV6_HLEN;
    let mut walked = 0;
    // One more iteration than headers allowed: the last one only checks whether the walk
    // ended.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            }
            _ => break,
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(ParseOutcome::TooManyExtHeaders);
        }
        walked += 1;
        if next == IPPROTO_FRAGMENT {
            let frag: &FragHdr = read(ctx, off)?;
            let offset_flags = u16::from_be_bytes(frag.offset_flags);
            out.frag_id = frag.id;
            if offset_flags >> 3 != 0 {
                key.proto = frag.next_header;
                key.flags = FlowKey::FLAG_FRAGMENT;
                key.src_port = [frag.id[0], frag.id[1]];
                key.dst_port = [frag.id[2], frag.id[3]];
                out.l4 = off + 8;
                return Ok(ParseOutcome::Ipv6Fragment);
            }
            out.first_fragment = offset_flags & 1 != 0;
            next = frag.next_header;
            off += 8;
        } else {
            let ext: &ExtHdr = read(ctx, off)?;
            // AH counts its length in 4-byte units minus 2 (RFC 4302); the others in
            // 8-byte units not counting the first 8 (RFC 8200).
            off += if next == IPPROTO_AH {
                (ext.len as usize + 2) * 4
            } else {
                (ext.len as usize + 1) * 8
            };
            next = ext.next_header;
        }
    }
    // Every extension header must end inside the datagram, whatever follows.
    if off > ip_end {
        return Err(ParseOutcome::Truncated);
    }
    key.proto = next;
    out.l4 = off;
    match next {
        proto::TCP => {
            out.tcp_flags = parse_tcp(ctx, off, ip_end, key)?;
            Ok(ParseOutcome::Ipv6Tcp)
        }
        proto::UDP => {
            parse_udp(ctx, off, ip_end, key)?;
            Ok(ParseOutcome::Ipv6Udp)
        }
        proto::ICMPV6 => {
            parse_icmp(ctx, off, ip_end, key, 128, 129)?;
            Ok(ParseOutcome::Ipv6Icmp)
        }
        _ => Ok(ParseOutcome::Ipv6Other),
    }
}

/// The transport header, options included, must lie inside the IP datagram (`ip_end`):
/// a header cut by the datagram's end is truncated, whatever the frame holds after it.
#[inline(always)]
fn parse_tcp<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    key: &mut FlowKey,
) -> Result<u8, ParseOutcome> {
    let tcp: &TcpHdr = read(ctx, l4)?;
    let doff = (tcp.data_off >> 4) as usize * 4;
    if doff < 20 {
        return Err(ParseOutcome::Malformed);
    }
    if l4 + doff > ip_end {
        return Err(ParseOutcome::Truncated);
    }
    key.src_port = tcp.src;
    key.dst_port = tcp.dst;
    Ok(tcp.flags)
}

/// The UDP length must cover the header and end inside the IP datagram.
#[inline(always)]
fn parse_udp<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    key: &mut FlowKey,
) -> Result<(), ParseOutcome> {
    let udp: &UdpHdr = read(ctx, l4)?;
    let len = u16::from_be_bytes(udp.len) as usize;
    if len < 8 {
        return Err(ParseOutcome::Malformed);
    }
    if l4 + len > ip_end {
        return Err(ParseOutcome::Truncated);
    }
    key.src_port = udp.src;
    key.dst_port = udp.dst;
    Ok(())
}

/// ICMP and ICMPv6 share the layout of the first 8 bytes. Echo request and reply carry an
/// identifier that tells pings apart: it goes in both ports. Other messages get
/// `type << 8 | code` as destination port.
#[inline(always)]
fn parse_icmp<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    key: &mut FlowKey,
    echo_request: u8,
    echo_reply: u8,
) -> Result<(), ParseOutcome> {
    let icmp: &IcmpHdr = read(ctx, l4)?;
    if l4 + 8 > ip_end {
        return Err(ParseOutcome::Truncated);
    }
    key.dst_port = [icmp.ty, icmp.code];
    if icmp.ty == echo_request || icmp.ty == echo_reply {
        // Both ports hold the identifier, so a reply's reversed key is its request's.
        key.src_port = icmp.id;
        key.dst_port = icmp.id;
    }
    Ok(())
}

/// True for ICMP/ICMPv6 error messages, which quote the packet that caused them.
#[inline(always)]
pub fn is_icmp_error(key: &FlowKey) -> bool {
    let ty = key.dst_port[0];
    match key.proto {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        proto::ICMP => matches!(ty, 3 | 4 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        proto::ICMPV6 => matches!(ty, 1..=4),
        _ => false,
    }
}

/// The flow key of the packet quoted inside an ICMP error whose ICMP header is at `l4`.
/// Only the quoted fixed IP header and the first 8 transport bytes are read (all an ICMP
/// error must carry); quoted IPv6 extension headers are not walked.
#[inline(always)]
pub fn quoted_key<C: Frame>(ctx: &C, l4: usize, family: u8, key: &mut FlowKey) -> bool {
    read_quoted_key(ctx, l4, family, key).is_ok()
}

#[inline(always)]
fn read_quoted_key<C: Frame>(
    ctx: &C,
    l4: usize,
    family: u8,
    key: &mut FlowKey,
) -> Result<(), ParseOutcome> {
    // `l4` comes back from the scratch map, where the verifier loses its bounds: restate
    // them (the largest offset the parser can produce is well below this).
    if l4 > MAX_L4_OFFSET {
        return Err(ParseOutcome::Malformed);
    }
    let inner = l4 + 8;
    *key = FlowKey::default();
    let ports_at = if family == 4 {
        let ip: &Ipv4Hdr = read(ctx, inner)?;
        let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || ihl < 20 {
            return Err(ParseOutcome::Malformed);
        }
        key.src = from_v4(ip.src);
        key.dst = from_v4(ip.dst);
        key.proto = ip.proto;
        key.family = 4;
        inner + ihl
    } else {
        let ip: &Ipv6Hdr = read(ctx, inner)?;
        if ip.version_class_flow[0] >> 4 != 6 {
            return Err(ParseOutcome::Malformed);
        }
        key.src = ip.src;
        key.dst = ip.dst;
        key.proto = ip.next_header;
        key.family = 6;
        inner + IPV6_HLEN
    };
    match key.proto {
        proto::TCP | proto::UDP => {
            let ports: &UdpHdr = read(ctx, ports_at)?;
            key.src_port = ports.src;
            key.dst_port = ports.dst;
        }
        proto::ICMP | proto::ICMPV6 => {
            let icmp: &IcmpHdr = read(ctx, ports_at)?;
            key.dst_port = [icmp.ty, icmp.code];
            let echo = if key.proto == proto::ICMP {
                icmp.ty == 8 || icmp.ty == 0
            } else {
                icmp.ty == 128 || icmp.ty == 129
            };
            if echo {
                key.src_port = icmp.id;
                key.dst_port = icmp.id;
            }
        }
        _ => {}
    }
    Ok(())
}
