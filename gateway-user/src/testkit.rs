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
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader};
    let eth = PacketBuilder::ethernet2(MAC_B, MAC_A);
    let l3 = &offending[14..];
    let ip_len = match l3[0] >> 4 {
        4 => ((l3[0] & 0x0f) as usize) * 4,
        _ => 40,
    };
    let quoted = &l3[..(ip_len + 8).min(l3.len())];
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
        L4::EchoRequest { id } => (
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
        flags: 0,
        _pad: 0,
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
    let view = policy_compiler::compile(&parsed.policy, &parse_host(host)?, now)?;
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

/// TC return codes.
pub mod tc_action {
    pub const OK: i32 = 0;
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

/// A TCP connection from inside `ns` to `dst` (`addr:port`), one byte sent and echoed
/// back, every step bounded by `timeout`: true when it all worked.
pub fn tcp_echo(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(dst) = dst.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(Ok(mut s)) = ns.run(|| std::net::TcpStream::connect_timeout(&dst, timeout)) else {
        return false;
    };
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(timeout)).is_ok()
        && s.write_all(b"x").is_ok()
        && s.read_exact(&mut b).is_ok()
        && b == *b"x"
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
