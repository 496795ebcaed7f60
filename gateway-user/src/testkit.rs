//! Packet fixtures and BPF_PROG_TEST_RUN helpers shared by tests and benchmarks.
//!
//! Frames are built with `etherparse`, so a fixture reads as what it means ("IPv4 TCP from
//! A:1234 to B:22") rather than as bytes; malformed frames start from a valid one and
//! break one named field.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use etherparse::PacketBuilder;
use gateway_common::{FlowKey, addr::from_v4, flow::proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// XDP return codes (uapi `enum xdp_action`).
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Runs `frame` through `prog` once and returns the XDP action.
pub fn run_xdp(prog: &mut Xdp, frame: &[u8]) -> Result<u32> {
    Ok(run_xdp_repeat(prog, frame, 1)?.0)
}

/// Runs `frame` through `prog` `repeat` times in the kernel; returns the action and the
/// kernel-measured mean time per run.
pub fn run_xdp_repeat(prog: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration))
}

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

/// Parses `host` as `connector:NAME` or `device:NAME`.
pub fn parse_host(host: &str) -> Result<policy_compiler::Host> {
    match host.split_once(':') {
        Some(("connector", name)) => Ok(policy_compiler::Host::Connector(name.to_string())),
        Some(("device", name)) => Ok(policy_compiler::Host::Device(name.to_string())),
        _ => anyhow::bail!("host must be connector:NAME or device:NAME, got {host:?}"),
    }
}

pub use crate::writer::unix_now;

/// The data-plane configuration of a host of this kind, with default tuning.
pub fn config_for(host: &policy_compiler::Host) -> gateway_common::DataplaneConfig {
    let role = match host {
        policy_compiler::Host::Connector(_) => gateway_common::Role::Connector,
        policy_compiler::Host::Device(_) => gateway_common::Role::Device,
    };
    gateway_common::DataplaneConfig {
        role: role as u8,
        ..gateway_common::DataplaneConfig::DEFAULT
    }
}

/// A policy loaded into a data plane through the real compiler and map writer.
pub struct LoadedPolicy {
    pub policy: policy_compiler::Policy,
    pub view: policy_compiler::HostView,
    pub writer: crate::writer::PolicyWriter,
}

/// Parses `toml`, compiles it for `host` at `now` and applies it to `dp`.
pub fn load_policy(
    dp: &mut crate::Dataplane,
    toml: &str,
    host: &str,
    now: i64,
) -> Result<LoadedPolicy> {
    let parsed = policy_compiler::parse(toml, "test-policy.toml", now).map_err(|diags| {
        anyhow::anyhow!(
            "policy does not parse:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let host = parse_host(host)?;
    let view = policy_compiler::compile(&parsed.policy, &host, now)?;
    dp.set_config(&config_for(&host))?;
    let mut writer =
        crate::writer::PolicyWriter::new(dp.active_generation()?, crate::writer::BootClock::new());
    writer.apply(&mut dp.policy, &view)?;
    Ok(LoadedPolicy {
        policy: parsed.policy,
        view,
        writer,
    })
}

/// Protected: 198.18.0.0/16 and 2001:db8:1::/48, every port and ICMP as one resource per
/// family; the device `tester` (198.19.0.1 and 2001:db8:ff::1) may reach all of it.
pub const OPEN_LAB: &str = r#"
[[remote_network]]
name = "lab"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["lab-connector"]

[[resource]]
name = "lab-v4"
network = "lab"
address = "198.18.0.0/16"
tcp = "all"
udp = "all"
icmp = true

[[resource]]
name = "lab-v6"
network = "lab"
address = "2001:db8:1::/48"
tcp = "all"
udp = "all"
icmp = true

[[user]]
email = "tester@example.com"

[[device]]
name = "tester-v4"
owner = "tester@example.com"
address = "198.19.0.1"

[[device]]
name = "tester-v6"
owner = "tester@example.com"
address = "2001:db8:ff::1"

[[allow]]
name = "tester-everything"
principals = ["tester@example.com"]
resources = ["lab-v4", "lab-v6"]
"#;

/// TC return codes (tcx): the gateway returns `NEXT` when it has no objection (later
/// programs in the chain still run) and `SHOT` to drop.
pub mod tc_action {
    pub const NEXT: i32 = -1;
    pub const SHOT: i32 = 2;
}

/// Runs `frame` through a TC program once and returns its return code.
pub fn run_tc(prog: &mut aya::programs::SchedClassifier, frame: &[u8]) -> Result<i32> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN (tc)")?;
    Ok(result.return_value as i32)
}

/// What became of a TCP connection attempt with one byte echoed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected, the byte came back.
    Echoed,
    /// A reset answered the SYN: a host said nothing listens there. Never what the gateway
    /// does (it drops silently).
    Refused,
    /// No answer within the timeout: dropped on the way (the gateway's way of denying).
    Silent,
    /// Anything else (unreachable, reset after connecting, wrong byte).
    Other(String),
}

/// A TCP connection from inside `ns` to `dst` (`addr:port`), one byte sent and echoed
/// back, every step bounded by `timeout`.
pub fn tcp_try(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> TcpOutcome {
    use std::io::{ErrorKind, Read as _, Write as _};
    let Ok(dst) = dst.parse::<std::net::SocketAddr>() else {
        return TcpOutcome::Other(format!("bad address {dst}"));
    };
    let mut s = match ns.run(|| std::net::TcpStream::connect_timeout(&dst, timeout)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => return TcpOutcome::Refused,
        Ok(Err(e)) if e.kind() == ErrorKind::TimedOut => return TcpOutcome::Silent,
        Ok(Err(e)) => return TcpOutcome::Other(e.to_string()),
        Err(e) => return TcpOutcome::Other(format!("{e:#}")),
    };
    let mut b = [0u8; 1];
    if let Err(e) = s.set_read_timeout(Some(timeout)) {
        return TcpOutcome::Other(e.to_string());
    }
    if let Err(e) = s.write_all(b"x") {
        return TcpOutcome::Other(e.to_string());
    }
    match s.read_exact(&mut b) {
        Ok(()) if b == *b"x" => TcpOutcome::Echoed,
        Ok(()) => TcpOutcome::Other(format!("echoed {b:?}")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            TcpOutcome::Silent
        }
        Err(e) => TcpOutcome::Other(e.to_string()),
    }
}

/// True when a TCP echo to `dst` worked.
pub fn tcp_echo(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> bool {
    tcp_try(ns, dst, timeout) == TcpOutcome::Echoed
}

/// True when the connection was dropped silently, the way the gateway denies. A test that
/// asserts this must have a listener at `dst` that would answer (and a control run showing
/// it does without the gateway): a port nobody listens on answers with a reset, and a
/// reset is not a denial.
pub fn tcp_dropped(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> bool {
    tcp_try(ns, dst, timeout) == TcpOutcome::Silent
}

/// TCP echo servers (every byte back, until EOF) listening on `addrs` inside `ns`, each
/// connection on its own thread. They end with the process (tests) or when the namespace
/// and its addresses go.
pub fn tcp_echo_servers(ns: &crate::netns::NetNs, addrs: &[&str]) -> Result<()> {
    use std::io::{Read as _, Write as _};
    for addr in addrs {
        let addr: std::net::SocketAddr = addr.parse().context("echo server address")?;
        let l = ns.run(|| std::net::TcpListener::bind(addr))??;
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut b = [0u8; 256];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}
