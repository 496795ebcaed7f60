//! Frame parser: Ethernet (up to two VLAN tags), IPv4 (any IHL), IPv6 (bounded extension
//! header walk), TCP/UDP/ICMP/ICMPv6, reduced to one `FlowKey`.
//!
//! Every read goes through [`ptr_at`], which checks the read against `data_end` first.
//! Offsets stay bounded (at most `MAX_VLAN_TAGS` tags, IHL <= 15, at most
//! `MAX_IPV6_EXT_HEADERS` extension headers of at most 2 KiB each), so the verifier can
//! prove every access. A frame that cannot be parsed yields an error outcome, never a key.

use aya_ebpf::programs::XdpContext;
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

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;

// IPv6 extension headers the walk understands.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// A parsed frame: its flow key and the outcome to count.
pub struct Parsed {
    pub key: FlowKey,
    pub outcome: ParseOutcome,
}

/// Returns a pointer to a `T` at `offset` from the start of the frame, or `Truncated` if
/// the frame is too short. `T` must have alignment 1 (all header types here are byte
/// arrays), so the pointer may be dereferenced wherever the frame is.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ParseOutcome> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(ParseOutcome::Truncated);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ParseOutcome> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame;
    // every `T` used here has alignment 1.
    Ok(unsafe { *p })
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

/// Parses the frame in `ctx`. `Ok` carries a flow key; `Err` carries the outcome of a
/// frame without one (not IP, truncated, malformed, too deep).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ParseOutcome> {
    let eth: EthHdr = read(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan: VlanHdr = read(ctx, l3)?;
        ethertype = u16::from_be_bytes(vlan.ethertype);
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseOutcome::TooManyVlans),
        _ => Err(ParseOutcome::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, ParseOutcome> {
    let ip: Ipv4Hdr = read(ctx, l3)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(ParseOutcome::Malformed);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 || (u16::from_be_bytes(ip.total_len) as usize) < ihl {
        return Err(ParseOutcome::Malformed);
    }
    // The options must be inside the frame even though we do not read them.
    ptr_at::<u8>(ctx, l3 + ihl - 1)?;

    let mut key = FlowKey {
        src: from_v4(ip.src),
        dst: from_v4(ip.dst),
        proto: ip.proto,
        family: 4,
        ..FlowKey::default()
    };
    let frag_offset = u16::from_be_bytes(ip.frag_off) & 0x1fff;
    if frag_offset != 0 {
        key.flags = FlowKey::FLAG_FRAGMENT;
        return Ok(Parsed {
            key,
            outcome: ParseOutcome::Ipv4Fragment,
        });
    }
    let l4 = l3 + ihl;
    let outcome = match ip.proto {
        proto::TCP => {
            parse_tcp(ctx, l4, &mut key)?;
            ParseOutcome::Ipv4Tcp
        }
        proto::UDP => {
            parse_udp(ctx, l4, &mut key)?;
            ParseOutcome::Ipv4Udp
        }
        proto::ICMP => {
            parse_icmp(ctx, l4, &mut key, 8, 0)?;
            ParseOutcome::Ipv4Icmp
        }
        _ => ParseOutcome::Ipv4Other,
    };
    Ok(Parsed { key, outcome })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Parsed, ParseOutcome> {
    let ip: Ipv6Hdr = read(ctx, l3)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(ParseOutcome::Malformed);
    }
    let mut key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        family: 6,
        ..FlowKey::default()
    };
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
            let frag: FragHdr = read(ctx, off)?;
            let frag_offset = u16::from_be_bytes(frag.offset_flags) >> 3;
            if frag_offset != 0 {
                key.proto = frag.next_header;
                key.flags = FlowKey::FLAG_FRAGMENT;
                return Ok(Parsed {
                    key,
                    outcome: ParseOutcome::Ipv6Fragment,
                });
            }
            next = frag.next_header;
            off += 8;
        } else {
            let ext: ExtHdr = read(ctx, off)?;
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
    key.proto = next;
    let outcome = match next {
        proto::TCP => {
            parse_tcp(ctx, off, &mut key)?;
            ParseOutcome::Ipv6Tcp
        }
        proto::UDP => {
            parse_udp(ctx, off, &mut key)?;
            ParseOutcome::Ipv6Udp
        }
        proto::ICMPV6 => {
            parse_icmp(ctx, off, &mut key, 128, 129)?;
            ParseOutcome::Ipv6Icmp
        }
        _ => ParseOutcome::Ipv6Other,
    };
    Ok(Parsed { key, outcome })
}

#[inline(always)]
fn parse_tcp(ctx: &XdpContext, l4: usize, key: &mut FlowKey) -> Result<(), ParseOutcome> {
    let tcp: TcpHdr = read(ctx, l4)?;
    if (tcp.data_off >> 4) < 5 {
        return Err(ParseOutcome::Malformed);
    }
    key.src_port = tcp.src;
    key.dst_port = tcp.dst;
    Ok(())
}

#[inline(always)]
fn parse_udp(ctx: &XdpContext, l4: usize, key: &mut FlowKey) -> Result<(), ParseOutcome> {
    let udp: UdpHdr = read(ctx, l4)?;
    key.src_port = udp.src;
    key.dst_port = udp.dst;
    Ok(())
}

/// ICMP and ICMPv6 share the layout of the first 8 bytes. Echo request/reply carry an
/// identifier that tells pings apart; other messages get 0.
#[inline(always)]
fn parse_icmp(
    ctx: &XdpContext,
    l4: usize,
    key: &mut FlowKey,
    echo_request: u8,
    echo_reply: u8,
) -> Result<(), ParseOutcome> {
    let icmp: IcmpHdr = read(ctx, l4)?;
    key.dst_port = [icmp.ty, icmp.code];
    if icmp.ty == echo_request || icmp.ty == echo_reply {
        key.src_port = icmp.id;
    }
    Ok(())
}
