//! Differential fuzzing of the loaded data plane against the reference evaluator.
//!
//! For random policies (seeded, deterministic), every connector's and device's compiled
//! view is applied through the real map writer, and random packets run through the real
//! programs with BPF_PROG_TEST_RUN: XDP for connectors, TC egress for devices.
//!
//! * A well-formed packet must get exactly the evaluator's answer, seen from the view:
//!   destinations outside the view's protected space are `Unprotected` (or
//!   `DeniedUnsolicited` when the source is protected); inside, allow/audit/deny and, for
//!   denials, whether a rule or no grant or an unknown source decided.
//! * A malformed packet (truncated, a header byte flipped, a wrong IHL or version) may pass
//!   only if an independent parser (etherparse) reads it as a packet the evaluator allows
//!   in this view, or as unprotected, or as not IP: malformed never means allowed.
//!
//! Flows a packet opens are forgotten before the next packet, so every packet is a first
//! decision.

use crate::{
    Dataplane,
    testkit::{self, L4, action, tc_action},
    writer::{BootClock, PolicyWriter},
};
use anyhow::{Context as _, Result};
use gateway_common::Reason;
use policy_compiler::{
    Host, HostView, Packet, Policy, Verdict,
    random::{Rng, gen_policy, random_packet},
};
use serde::Serialize;
use std::{collections::BTreeMap, net::IpAddr, time::Instant};

/// The fuzzer's result; printed as one JSON line by `cargo xtask fuzz-dataplane`.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub policies: usize,
    pub packets: usize,
    pub mismatches: usize,
    pub seed: u64,
    pub views: usize,
    /// Generated policies the validator refused (drawn again).
    pub invalid_policies: usize,
    pub malformed: usize,
    pub passed: usize,
    pub dropped: usize,
    pub reasons: BTreeMap<&'static str, u64>,
    pub seconds: f64,
    /// The first few mismatches, described.
    pub examples: Vec<String>,
}

/// Runs `policies` random policies with `packets` packets each (spread over the policy's
/// hosts), starting from `seed`. `progress` is called after each policy.
pub fn run(
    policies: usize,
    packets: usize,
    seed: u64,
    mut progress: impl FnMut(usize, &Report),
) -> Result<Report> {
    let started = Instant::now();
    let mut dp = Dataplane::load()?;
    let mut role = None;
    let mut writer = PolicyWriter::new(dp.active_generation()?, BootClock::new());
    let mut rng = Rng(seed);
    let mut report = Report {
        seed,
        ..Report::default()
    };
    for i in 0..policies {
        // Each policy is generated, compiled and judged at its own "now": its expiries lie
        // at least 50 s from it, far beyond the time its packets take, while the kernel
        // reads the real clock.
        let now = crate::writer::unix_now();
        // The generator can write a policy the validator rightly refuses (a narrowing that
        // leaves nothing, say): draw again.
        let policy = loop {
            let text = gen_policy(&mut rng, now);
            if let Ok(parsed) = policy_compiler::parse(&text, "random.toml", now) {
                break parsed.policy;
            }
            report.invalid_policies += 1;
        };
        let mut hosts: Vec<Host> = policy
            .networks
            .iter()
            .flat_map(|n| n.connectors.iter().cloned().map(Host::Connector))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts.extend(policy.devices.iter().map(|d| Host::Device(d.name.clone())));
        let per_host = packets.div_ceil(hosts.len().max(1));
        let mut left = packets;
        for host in &hosts {
            let view = policy_compiler::compile(&policy, host, now)?;
            let kind = matches!(host, Host::Connector(_));
            if role != Some(kind) {
                dp.set_config(&testkit::config_for(host))?;
                role = Some(kind);
            }
            writer
                .apply(&mut dp.policy, &view)
                .with_context(|| format!("applying policy {i} for {host:?}"))?;
            report.views += 1;
            for _ in 0..per_host.min(left) {
                left -= 1;
                one_packet(&mut dp, &mut rng, &policy, host, &view, now, &mut report)?;
            }
        }
        report.policies += 1;
        progress(i + 1, &report);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn in_space(view: &HostView, a: IpAddr) -> bool {
    let a = a.to_canonical();
    view.protected.iter().any(|n| n.contains(&a))
}

/// What the data plane must answer for a well-formed packet.
fn expected(policy: &Policy, view: &HostView, p: &Packet, now: i64) -> Reason {
    if !in_space(view, p.dst) {
        return if in_space(view, p.src) {
            Reason::DeniedUnsolicited
        } else {
            Reason::Unprotected
        };
    }
    let d = policy_compiler::evaluate(policy, p, now);
    let known = view.sources.iter().any(|s| s.addr == p.src.to_canonical());
    match d.verdict {
        Verdict::Allow => Reason::Allowed,
        Verdict::Audit => Reason::Audit,
        Verdict::Deny if !known => Reason::DeniedUnknownSource,
        Verdict::Deny if d.rule_id() != 0 => Reason::DeniedByRule,
        Verdict::Deny => Reason::DeniedNoGrant,
    }
}

fn frame_of(rng: &mut Rng, p: &Packet) -> Vec<u8> {
    let l4 = match p.proto {
        6 => L4::Tcp {
            src: p.src_port,
            dst: p.dst_port,
        },
        17 | 47 => L4::Udp {
            src: p.src_port,
            dst: p.dst_port,
        },
        _ => L4::EchoRequest { id: p.src_port },
    };
    let vlans: &[u16] = match rng.below(10) {
        0 => &[7],
        1 => &[7, 8],
        _ => &[],
    };
    let mut f = testkit::frame(p.src, p.dst, l4, vlans, b"fuzz");
    let l3 = testkit::l3_offset(vlans.len());
    if p.proto == 47 {
        // GRE: a protocol without ports.
        match p.dst {
            IpAddr::V4(_) => f[l3 + 9] = 47,
            IpAddr::V6(_) => f[l3 + 6] = 47,
        }
    }
    if vlans.is_empty() && rng.chance(10) {
        f = match p.dst {
            IpAddr::V4(_) => testkit::with_ipv4_option_bytes(
                f,
                0,
                &testkit::record_route(3 + 4 * rng.below(10) as u8),
            ),
            IpAddr::V6(_) => testkit::with_ipv6_ext(f, &[(0, 8), (60, 16)], 0),
        };
    }
    f
}

/// Breaks a well-formed frame in one of several ways.
fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let len = 14 + rng.below(f.len() - 14);
            f.truncate(len);
        }
        1 => {
            let i = 12 + rng.below((f.len() - 12).min(70));
            f[i] ^= 1 << rng.below(8);
        }
        2 => {
            let i = 12 + rng.below((f.len() - 12).min(70));
            f[i] = rng.next_u64() as u8;
        }
        _ => {
            // Version/IHL byte of an untagged frame.
            f[14] = rng.next_u64() as u8;
        }
    }
    f
}

/// A frame as an independent parser (etherparse) reads it.
enum Reparsed {
    /// Unreadable as an IP packet with its transport header.
    Unparsable,
    /// A fragment after the first: addresses only.
    LaterFragment(IpAddr, IpAddr),
    Packet(Packet),
}

/// The evaluator's packet for a frame, read by etherparse.
fn reparse(frame: &[u8]) -> Reparsed {
    let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(frame) else {
        return reparse_opaque(frame);
    };
    let (src, dst, proto, fragmented, later, payload) = match sliced.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.header().protocol().0,
            v4.payload().fragmented,
            v4.header().fragments_offset().value() != 0,
            v4.payload().payload,
        ),
        Some(etherparse::NetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.payload().ip_number.0,
            v6.payload().fragmented,
            later_v6_fragment(frame),
            v6.payload().payload,
        ),
        _ => return Reparsed::Unparsable,
    };
    if fragmented && later {
        return Reparsed::LaterFragment(src, dst);
    }
    let (src_port, dst_port) = match (&sliced.transport, proto) {
        (Some(etherparse::TransportSlice::Tcp(t)), _) => (t.source_port(), t.destination_port()),
        (Some(etherparse::TransportSlice::Udp(u)), _) => (u.source_port(), u.destination_port()),
        // A first fragment: etherparse leaves its transport unparsed.
        (None, 6 | 17) if fragmented && payload.len() >= 4 => (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        ),
        (None, 6 | 17) => return Reparsed::Unparsable,
        _ => (0, 0),
    };
    Reparsed::Packet(Packet {
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

/// etherparse also parses the payload of some protocols the policy treats as opaque (IPv4
/// AH, for one) and refuses the frame when that payload is garbage. For an untagged IPv4
/// frame of such a protocol with a sound IP header, the packet is its addresses and
/// protocol.
fn reparse_opaque(frame: &[u8]) -> Reparsed {
    let Some(ip) = frame.get(14..34) else {
        return Reparsed::Unparsable;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let sound = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800
        && ip[0] >> 4 == 4
        && ihl >= 20
        && total >= ihl
        && 14 + total <= frame.len()
        && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0
        && !matches!(ip[9], 1 | 6 | 17 | 58);
    if !sound {
        return Reparsed::Unparsable;
    }
    Reparsed::Packet(Packet {
        src: IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
        dst: IpAddr::from([ip[16], ip[17], ip[18], ip[19]]),
        proto: ip[9],
        src_port: 0,
        dst_port: 0,
    })
}

/// True if an untagged IPv6 frame's first extension header is a fragment header with a
/// non-zero offset (the fuzzer only builds fragment headers first).
fn later_v6_fragment(frame: &[u8]) -> bool {
    frame.len() >= 14 + 48
        && frame[14 + 6] == 44
        && u16::from_be_bytes([frame[14 + 42], frame[14 + 43]]) >> 3 != 0
}

fn one_packet(
    dp: &mut Dataplane,
    rng: &mut Rng,
    policy: &Policy,
    host: &Host,
    view: &HostView,
    now: i64,
    report: &mut Report,
) -> Result<()> {
    let src = match host {
        Host::Device(_) => view.sources.first().map(|s| s.addr),
        Host::Connector(_) => None,
    };
    // A packet's addresses share a family: draw again, or take an unknown source of the
    // destination's family.
    let mut p = random_packet(rng, policy, src, &view.protected);
    for _ in 0..8 {
        if p.src.is_ipv4() == p.dst.is_ipv4() {
            break;
        }
        p = random_packet(rng, policy, src, &view.protected);
    }
    if p.src.is_ipv4() != p.dst.is_ipv4() {
        p.src = if p.dst.is_ipv4() {
            IpAddr::from([198, 19, 254, 1])
        } else {
            IpAddr::from([0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1])
        };
    }
    // ICMP is ICMPv6 toward IPv6 and ICMP toward IPv4.
    if p.proto == 1 || p.proto == 58 {
        p.proto = if p.dst.is_ipv4() { 1 } else { 58 };
    }
    let good = frame_of(rng, &p);
    let malformed = rng.chance(20);
    let frame = if malformed { mutate(rng, good) } else { good };

    let before = dp.verdict_stats()?;
    let passed = match host {
        Host::Connector(_) => testkit::run_xdp(dp.xdp()?, &frame)? == action::PASS,
        // BPF_PROG_TEST_RUN refuses some short frames for TC (the kernel builds an skb
        // from them); those run through XDP, which shares the decision code.
        Host::Device(_) => match testkit::run_tc(dp.tc()?, &frame) {
            Ok(code) => code == tc_action::NEXT,
            Err(_) if malformed => testkit::run_xdp(dp.xdp()?, &frame)? == action::PASS,
            Err(e) => return Err(e.context(format!("TC test run of a {}-byte frame", frame.len()))),
        },
    };
    let delta = dp.verdict_stats()?.since(&before);
    let reason = Reason::ALL
        .into_iter()
        .find(|r| delta.reason(*r) == 1)
        .context("no verdict counted for a packet")?;
    *report.reasons.entry(reason.name()).or_default() += 1;
    report.packets += 1;
    if passed {
        report.passed += 1;
    } else {
        report.dropped += 1;
    }
    // Every packet is a first decision: forget the flow it opened.
    if passed {
        dp.flows.clear()?;
    }

    let problem = if passed != reason.passes() {
        Some(format!(
            "action {passed} disagrees with reason {}",
            reason.name()
        ))
    } else if !malformed {
        let want = expected(policy, view, &p, now);
        (want != reason).then(|| format!("want {}, got {}", want.name(), reason.name()))
    } else {
        report.malformed += 1;
        match (passed, reason, reparse(&frame)) {
            (false, _, _) => None,
            (true, Reason::NotIp, _) => {
                // Behind at most two VLAN tags, the ethertype must not be IP.
                let mut off = 12;
                let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
                for _ in 0..2 {
                    if !matches!(ethertype, 0x8100 | 0x88a8) || frame.len() < off + 6 {
                        break;
                    }
                    off += 4;
                    ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
                }
                matches!(ethertype, 0x0800 | 0x86dd)
                    .then(|| format!("ethertype {ethertype:#06x} passed as not IP"))
            }
            (true, _, Reparsed::Unparsable) => {
                Some(format!("passed ({}) but unparsable", reason.name()))
            }
            (true, _, Reparsed::LaterFragment(src, dst)) => {
                // Without its first fragment: unprotected outside protected space, audit
                // toward an audit-mode address (docs/dataplane.md), dropped otherwise.
                let inside = in_space(view, src) || in_space(view, dst);
                let audit_dst = policy.resources.iter().any(|r| {
                    r.mode == policy_compiler::model::Mode::Audit
                        && r.address.contains(&dst.to_canonical())
                        && in_space(view, dst)
                });
                let fine = match reason {
                    Reason::Unprotected => !inside,
                    Reason::Audit => audit_dst,
                    _ => false,
                };
                (!fine).then(|| format!("later fragment passed as {}", reason.name()))
            }
            (true, _, Reparsed::Packet(q)) => {
                let want = expected(policy, view, &q, now);
                (!want.passes()).then(|| {
                    format!(
                        "passed ({}) but evaluator says {} for {q:?}",
                        reason.name(),
                        want.name()
                    )
                })
            }
        }
    };
    if let Some(problem) = problem {
        report.mismatches += 1;
        if report.examples.len() < 10 {
            report.examples.push(format!(
                "{host:?} {p:?} malformed={malformed}: {problem}; frame {}",
                frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ));
        }
    }
    Ok(())
}
