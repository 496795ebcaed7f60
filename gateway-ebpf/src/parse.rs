//! Packet parser: Ethernet (up to two VLAN tags) or a bare IP packet (a TUN device), IPv4 (options walked), IPv6 (bounded
//! extension-header walk), TCP/UDP/ICMP/ICMPv6, reduced to one `FlowKey`. The rules are
//! those of docs/dataplane.md, "Parsing: what is malformed".
//!
//! Every read goes through [`ptr_at`], which checks the read against `data_end` first.
//! Offsets stay bounded (at most `MAX_VLAN_TAGS` tags, IHL <= 15, at most
//! `MAX_IPV6_EXT_HEADERS` extension headers of at most 2 KiB each), so the verifier can
//! prove every access. A frame that cannot be parsed yields an error outcome, never a key
//! to decide on; what was read before the error (addresses, ports) is kept for the deny
//! event.

use aya_ebpf::programs::{TcContext, XdpContext};
use gateway_common::{
    FlowKey, ParseOutcome,
    addr::V4_MAPPED_PREFIX,
    flow::proto,
    parse::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Bound on a transport-header offset: Ethernet, two VLAN tags, IPv6 and eight extension
/// headers of at most 2 KiB each fit below it.
const MAX_L4_OFFSET: usize = 32_768;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
/// IPv4 options walked before giving up (as malformed): real stacks send one or two
/// options and a little NOP padding; a longer list only costs the verifier states.
const MAX_IPV4_OPTIONS: usize = 8;

// IPv6 extension headers the walk understands.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

// IPv4 options.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;

/// Linear packet data, as XDP and TC both expose it.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length (TC: also the part not pulled into linear data).
    fn len(&self) -> usize;
    /// True for a GSO packet (TC only), whose IP length field may be 0 (BIG TCP).
    fn gso(&self) -> bool;
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
    /// Hidden from the optimizer: knowing that `len == data_end - data`, LLVM drops
    /// pointer bounds checks it can prove from length comparisons, and the verifier, which
    /// only trusts pointer comparisons, then refuses the read.
    #[inline(always)]
    fn len(&self) -> usize {
        core::hint::black_box(XdpContext::data_end(self) - XdpContext::data(self))
    }
    #[inline(always)]
    fn gso(&self) -> bool {
        false
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
    #[inline(always)]
    fn gso(&self) -> bool {
        // SAFETY: `skb` is the context pointer the kernel passed to this program.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }
}

/// A parsed frame: its flow key, and what the policy path needs beyond the key.
#[derive(Clone, Copy)]
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the transport header (meaningful when the key has ports or ICMP).
    pub l4: usize,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (meaningful for those protocols).
    pub icmp_type: u8,
    /// Offset 0 with more fragments: later fragments will look for this datagram.
    pub first_fragment: bool,
    /// Offset not 0: no transport header; the key's ports and protocol are meaningless.
    pub later_fragment: bool,
    /// The key's addresses (and family) were read, even if parsing failed later.
    pub addrs: bool,
    /// The key's ports were read, even if parsing failed later.
    pub ports: bool,
    /// Fragment identification (IPv4: `[0, 0, id]`; IPv6: the 32-bit id).
    pub frag_id: [u8; 4],
    /// Protocol that names the datagram: the IPv4 protocol, 0 for IPv6 (RFC 8200).
    pub frag_proto: u8,
    /// IPv6 hop limit (0 for IPv4).
    pub hop_limit: u8,
}

/// `Parsed` is cleared a word at a time ([`Parsed::clear`]).
const _: () =
    assert!(core::mem::size_of::<Parsed>() % 8 == 0 && core::mem::align_of::<Parsed>() == 8);

impl Parsed {
    /// Empties it before a frame is parsed: every byte zero (no key, no ports, no flags, no
    /// fragment, offsets 0), with one 8-byte store per word. A plain assignment of an empty
    /// value becomes a call of the BPF `memset`, a loop storing one byte at a time (a
    /// quarter of the cost of a repeated denial, measured with perf); volatile, so the
    /// stores are not merged back into that call.
    #[inline(always)]
    pub fn clear(&mut self) {
        let words = self as *mut Parsed as *mut u64;
        for i in 0..core::mem::size_of::<Parsed>() / 8 {
            // SAFETY: `i` words into `self`, which is 8-aligned and a whole number of words
            // long (asserted above); zero is a valid value of every field.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
    }
}

/// Writes IPv4 `src` and `dst` into `key` as IPv4-mapped addresses (`from_v4`), a word at a
/// time: `key.src = from_v4(src)` is a byte-at-a-time `memset` call for the zero prefix.
#[inline(always)]
fn set_v4(key: &mut FlowKey, src: [u8; 4], dst: [u8; 4]) {
    let prefix = u32::from_ne_bytes([
        V4_MAPPED_PREFIX[8],
        V4_MAPPED_PREFIX[9],
        V4_MAPPED_PREFIX[10],
        V4_MAPPED_PREFIX[11],
    ]);
    for (addr, v4) in [(&mut key.src, src), (&mut key.dst, dst)] {
        let words = addr.as_mut_ptr() as *mut u32;
        // SAFETY: four 4-byte stores into the 16-byte address; `FlowKey` is 8-aligned and
        // both addresses sit at multiples of 8 in it.
        unsafe {
            core::ptr::write_volatile(words, 0);
            core::ptr::write_volatile(words.add(1), 0);
            core::ptr::write_volatile(words.add(2), prefix);
            core::ptr::write_volatile(words.add(3), u32::from_ne_bytes(v4));
        }
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

/// The first four bytes every IPv6 extension header read here shares (for a routing
/// header: next header, length, routing type, segments left).
#[derive(Clone, Copy)]
#[repr(C)]
struct ExtHdr {
    next_header: u8,
    len: u8,
    routing_type: u8,
    segments_left: u8,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
}

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

/// Where a packet starts: an Ethernet frame (physical links), or the IP header itself, as
/// on a TUN device, with the protocol the kernel recorded for it (`skb->protocol`).
#[derive(Clone, Copy)]
pub enum Start {
    Ethernet,
    L3 { protocol: u16 },
}

/// Parses the packet in `ctx`, starting at `start`, into `out` and returns the outcome.
/// `out.key` is a key to decide on only when the outcome `has_flow()`. The parser writes
/// into `out` in place (a per-CPU scratch slot in the programs): flow keys never get
/// copied around on the 512-byte stack.
#[inline(always)]
pub fn parse<C: Frame>(ctx: &C, start: Start, out: &mut Parsed) -> ParseOutcome {
    out.clear();
    match parse_frame(ctx, start, out) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn parse_frame<C: Frame>(
    ctx: &C,
    start: Start,
    out: &mut Parsed,
) -> Result<ParseOutcome, ParseOutcome> {
    let (ethertype, l3) = match start {
        Start::Ethernet => ethernet(ctx)?,
        // An L3 device carries IP only: any other protocol is malformed, not "not IP". A
        // protocol that disagrees with the version nibble fails the version check below.
        Start::L3 { protocol } if protocol == ETH_P_IP || protocol == ETH_P_IPV6 => (protocol, 0),
        Start::L3 { .. } => return Err(ParseOutcome::Malformed),
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3, out),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, out),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseOutcome::TooManyVlans),
        _ => Err(ParseOutcome::NotIp),
    }
}

/// The Ethernet header and at most two VLAN tags: the ethertype they end with and the
/// offset of what follows.
#[inline(always)]
fn ethernet<C: Frame>(ctx: &C) -> Result<(u16, usize), ParseOutcome> {
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
    Ok((ethertype, l3))
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
    set_v4(&mut out.key, ip.src, ip.dst);
    out.key.proto = ip.proto;
    out.key.family = 4;
    out.addrs = true;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ParseOutcome::Malformed);
    }
    let total_len = u16::from_be_bytes(ip.total_len) as usize;
    // A datagram longer than the frame lost its end (Ethernet padding may make the frame
    // longer, never shorter). Length 0 is a BIG TCP packet on a GSO path, nothing else.
    let ip_end = if total_len == 0 && ctx.gso() {
        ctx.len()
    } else if total_len < ihl {
        return Err(ParseOutcome::Malformed);
    } else {
        l3 + total_len
    };
    if ip_end > ctx.len() {
        return Err(ParseOutcome::Truncated);
    }
    // The options must be inside the frame (the walk reads each byte bounds-checked; a
    // dominating check of the last byte would let LLVM drop those checks, which the
    // verifier cannot follow), and well formed; source routes are refused.
    if ihl > 20 {
        ipv4_options(ctx, l3 + 20, l3 + ihl)?;
    }

    let frag = u16::from_be_bytes(ip.frag_off);
    out.frag_id = [0, 0, ip.id[0], ip.id[1]];
    out.frag_proto = ip.proto;
    let l4 = l3 + ihl;
    out.l4 = l4;
    if frag & 0x1fff != 0 {
        out.later_fragment = true;
        return Ok(ParseOutcome::Ipv4Fragment);
    }
    out.first_fragment = frag & 0x2000 != 0;
    match ip.proto {
        proto::TCP => {
            parse_tcp(ctx, l4, ip_end, out)?;
            Ok(ParseOutcome::Ipv4Tcp)
        }
        proto::UDP => {
            parse_udp(ctx, l4, ip_end, out)?;
            Ok(ParseOutcome::Ipv4Udp)
        }
        proto::ICMP => {
            parse_icmp(ctx, l4, ip_end, out, 8, 0)?;
            Ok(ParseOutcome::Ipv4Icmp)
        }
        _ => Ok(ParseOutcome::Ipv4Other),
    }
}

/// Walks the IPv4 options in `start..end` (inside the frame): each option's length must
/// be at least 2 and end inside the header, at most `MAX_IPV4_OPTIONS` options (NOPs
/// count) before the end or an end-of-list; LSRR and SSRR are refused.
///
/// Bytes are read two at a time: a one-byte read's bounds check (`p + 1 > end`) is turned
/// by LLVM into `p >= end`, which gives the verifier no range for a pointer with a variable
/// offset. The last byte of the area is read as the second of a pair (the header's fixed
/// 20 bytes precede it).
#[inline(always)]
fn ipv4_options<C: Frame>(ctx: &C, start: usize, end: usize) -> Result<(), ParseOutcome> {
    let mut off = start;
    let mut source_route = false;
    for i in 0..=MAX_IPV4_OPTIONS {
        if off >= end {
            break;
        }
        if i == MAX_IPV4_OPTIONS {
            return Err(ParseOutcome::Malformed);
        }
        let ty = if off + 1 < end {
            let pair: &[u8; 2] = read(ctx, off)?;
            pair[0]
        } else {
            let pair: &[u8; 2] = read(ctx, off - 1)?;
            pair[1]
        };
        match ty {
            IPOPT_END => break,
            IPOPT_NOOP => off += 1,
            ty => {
                if off + 1 >= end {
                    return Err(ParseOutcome::Malformed);
                }
                let pair: &[u8; 2] = read(ctx, off)?;
                let len = pair[1] as usize;
                if len < 2 || off + len > end {
                    return Err(ParseOutcome::Malformed);
                }
                if ty == IPOPT_LSRR || ty == IPOPT_SSRR {
                    source_route = true;
                }
                off += len;
            }
        }
    }
    // Malformed options anywhere come first; then a source route.
    if source_route {
        return Err(ParseOutcome::SourceRoute);
    }
    Ok(())
}

/// True for an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
#[inline(always)]
fn mapped(a: &[u8; 16]) -> bool {
    a[0] == V4_MAPPED_PREFIX[0]
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
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
    out.key.src = ip.src;
    out.key.dst = ip.dst;
    out.key.family = 6;
    out.addrs = true;
    out.hop_limit = ip.hop_limit;
    if mapped(&ip.src) || mapped(&ip.dst) {
        return Err(ParseOutcome::MappedAddress);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    // Payload length 0: a BIG TCP packet on a GSO path; a jumbogram otherwise, refused.
    let ip_end = if payload_len == 0 {
        if !ctx.gso() {
            return Err(ParseOutcome::Malformed);
        }
        ctx.len()
    } else {
        l3 + IPV6_HLEN + payload_len
    };
    if ip_end > ctx.len() {
        return Err(ParseOutcome::Truncated);
    }
    let mut next = ip.next_header;
    let mut off = l3 + IPV6_HLEN;
    let mut fragment_seen = false;
    // One more iteration than headers allowed: the last one only checks whether the walk
    // ended.
    for walked in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            }
            _ => break,
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(ParseOutcome::TooManyExtHeaders);
        }
        if next == IPPROTO_HOPOPTS && walked != 0 {
            // RFC 8200 §4.1: hop-by-hop options only right after the IPv6 header.
            return Err(ParseOutcome::Malformed);
        }
        if next == IPPROTO_FRAGMENT {
            if fragment_seen {
                return Err(ParseOutcome::Malformed);
            }
            fragment_seen = true;
            let frag: &FragHdr = read(ctx, off)?;
            if off + 8 > ip_end {
                return Err(ParseOutcome::Truncated);
            }
            let offset_flags = u16::from_be_bytes(frag.offset_flags);
            out.frag_id = frag.id;
            out.frag_proto = 0;
            if offset_flags >> 3 != 0 {
                out.later_fragment = true;
                out.l4 = off + 8;
                return Ok(ParseOutcome::Ipv6Fragment);
            }
            out.first_fragment = offset_flags & 1 != 0;
            next = frag.next_header;
            off += 8;
        } else {
            let ext: &ExtHdr = read(ctx, off)?;
            if next == IPPROTO_ROUTING && ext.segments_left != 0 {
                return Err(ParseOutcome::SourceRoute);
            }
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
    out.key.proto = next;
    out.l4 = off;
    match next {
        proto::TCP => {
            parse_tcp(ctx, off, ip_end, out)?;
            Ok(ParseOutcome::Ipv6Tcp)
        }
        proto::UDP => {
            parse_udp(ctx, off, ip_end, out)?;
            Ok(ParseOutcome::Ipv6Udp)
        }
        proto::ICMPV6 => {
            parse_icmp(ctx, off, ip_end, out, 128, 129)?;
            Ok(ParseOutcome::Ipv6Icmp)
        }
        _ => Ok(ParseOutcome::Ipv6Other),
    }
}

/// Reads the ports (the first four transport bytes) when they lie inside the packet, so
/// that even a packet refused afterwards names its ports in the deny event.
#[inline(always)]
fn read_ports<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    out: &mut Parsed,
) -> Result<(), ParseOutcome> {
    let ports: &Ports = read(ctx, l4)?;
    if l4 + 4 > ip_end {
        return Err(ParseOutcome::Truncated);
    }
    out.key.src_port = ports.src;
    out.key.dst_port = ports.dst;
    out.ports = true;
    Ok(())
}

/// The TCP header, options included, must lie inside the packet (`ip_end`: the end of
/// the datagram, or of the first fragment: the whole header must be in the first
/// fragment). A first fragment too short for it is the tiny-fragment attack: malformed.
#[inline(always)]
fn parse_tcp<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    out: &mut Parsed,
) -> Result<(), ParseOutcome> {
    let short = if out.first_fragment {
        ParseOutcome::Malformed
    } else {
        ParseOutcome::Truncated
    };
    read_ports(ctx, l4, ip_end, out).map_err(|_| short)?;
    let tcp: &TcpHdr = read(ctx, l4).map_err(|_| short)?;
    if l4 + 20 > ip_end {
        return Err(short);
    }
    let doff = (tcp.data_off >> 4) as usize * 4;
    if doff < 20 {
        return Err(ParseOutcome::Malformed);
    }
    if l4 + doff > ip_end {
        return Err(short);
    }
    out.tcp_flags = tcp.flags;
    Ok(())
}

/// The UDP header must lie inside the packet and its length cover the header. The length
/// describes the whole datagram: it is checked against the IP payload only when the
/// packet is not a fragment (a first fragment holds only the datagram's start).
#[inline(always)]
fn parse_udp<C: Frame>(
    ctx: &C,
    l4: usize,
    ip_end: usize,
    out: &mut Parsed,
) -> Result<(), ParseOutcome> {
    let short = if out.first_fragment {
        ParseOutcome::Malformed
    } else {
        ParseOutcome::Truncated
    };
    read_ports(ctx, l4, ip_end, out).map_err(|_| short)?;
    let udp: &UdpHdr = read(ctx, l4).map_err(|_| short)?;
    if l4 + 8 > ip_end {
        return Err(short);
    }
    let len = u16::from_be_bytes(udp.len) as usize;
    if len < 8 {
        return Err(ParseOutcome::Malformed);
    }
    if !out.first_fragment && l4 + len > ip_end {
        return Err(ParseOutcome::Truncated);
    }
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
    out: &mut Parsed,
    echo_request: u8,
    echo_reply: u8,
) -> Result<(), ParseOutcome> {
    let short = if out.first_fragment {
        ParseOutcome::Malformed
    } else {
        ParseOutcome::Truncated
    };
    let icmp: &IcmpHdr = read(ctx, l4).map_err(|_| short)?;
    if l4 + 8 > ip_end {
        return Err(short);
    }
    out.icmp_type = icmp.ty;
    out.key.dst_port = [icmp.ty, icmp.code];
    if icmp.ty == echo_request || icmp.ty == echo_reply {
        // Both ports hold the identifier, so a reply's reversed key is its request's.
        out.key.src_port = icmp.id;
        out.key.dst_port = icmp.id;
    }
    out.ports = true;
    Ok(())
}

/// WireGuard handshake initiation: message type 1 with three reserved zero bytes, 148
/// bytes in all (the UDP length 156).
const WG_INITIATION_UDP_LEN: u16 = 8 + 148;
const WG_INITIATION_TYPE: [u8; 4] = [1, 0, 0, 0];

/// True for a UDP datagram that is (or may be) a WireGuard handshake initiation: UDP
/// length 156 and a payload starting with type 1 and three zero bytes. A first fragment
/// with that UDP length counts whatever it holds (its payload may start in a later
/// fragment); so does one whose payload cannot be read. Call only for parsed UDP that is
/// not a later fragment.
#[inline(always)]
pub fn is_handshake_initiation<C: Frame>(ctx: &C, parsed: &Parsed) -> bool {
    let l4 = parsed.l4;
    // Restated bounds: `l4` comes back from the scratch map.
    if l4 > MAX_L4_OFFSET {
        return true;
    }
    let Ok(udp) = read::<C, UdpHdr>(ctx, l4) else {
        return true;
    };
    if u16::from_be_bytes(udp.len) != WG_INITIATION_UDP_LEN {
        return false;
    }
    if parsed.first_fragment {
        return true;
    }
    match read::<C, [u8; 4]>(ctx, l4 + 8) {
        Ok(ty) => *ty == WG_INITIATION_TYPE,
        Err(_) => true,
    }
}

/// True for ICMP/ICMPv6 error messages, which quote the packet that caused them.
#[inline(always)]
pub fn is_icmp_error(parsed: &Parsed) -> bool {
    let ty = parsed.icmp_type;
    match parsed.key.proto {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        proto::ICMP => matches!(ty, 3 | 4 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        proto::ICMPV6 => matches!(ty, 1..=4),
        _ => false,
    }
}

/// True for IPv6 neighbour discovery that never crossed a router (RFC 4861: router and
/// neighbour solicitations and advertisements, redirects, all sent with hop limit 255).
#[inline(always)]
pub fn is_neighbor_discovery(parsed: &Parsed) -> bool {
    parsed.key.proto == proto::ICMPV6
        && !parsed.later_fragment
        && parsed.hop_limit == 255
        && matches!(parsed.icmp_type, 133..=137)
}

/// True for an ICMP/ICMPv6 echo request (never a reply of anything).
#[inline(always)]
pub fn is_echo_request(parsed: &Parsed) -> bool {
    match parsed.key.proto {
        proto::ICMP => parsed.icmp_type == 8,
        proto::ICMPV6 => parsed.icmp_type == 128,
        _ => false,
    }
}

/// The flow key of the packet quoted inside an ICMP error whose ICMP header is at `l4`.
/// Only the quoted IP header (an IPv4 header with its options; an IPv6 header without
/// extension headers) and the first 8 transport bytes are read (all an ICMP error must
/// carry).
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
        set_v4(key, ip.src, ip.dst);
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
            let ports: &Ports = read(ctx, ports_at)?;
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
