//! Data-plane fixtures: packets through the real XDP and TC programs (BPF_PROG_TEST_RUN)
//! against maps filled by the real compiler and map writer from `tests/data/fixtures.toml`.
//!
//! Each case is a sequence of steps on a freshly loaded object: packets with the reason
//! (and so the action) they must get, policy changes, waits, and checks of the events the
//! programs sent. Every first decision inside the view's protected space is also checked
//! against the reference evaluator.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{Event, EventKind, Reason};
use gateway_user::{
    Dataplane, skip_unless_privileged,
    testkit::{
        self, L4, action, frame, icmp_error, ipv4_frag, load_policy, parse_host, set_ipv4_id,
        tc_action, unix_now, with_ipv4_options, with_ipv6_ext,
    },
};
use policy_compiler::{Packet, Verdict};
use std::{net::IpAddr, time::Duration};

const POLICY: &str = include_str!("data/fixtures.toml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// Principals.
fn alice() -> IpAddr {
    ip("198.19.0.10")
}
fn alice6() -> IpAddr {
    ip("2001:db8:ff::10")
}
fn bob() -> IpAddr {
    ip("198.19.0.11")
}
fn carol() -> IpAddr {
    ip("198.19.0.12")
}
fn backup() -> IpAddr {
    ip("198.19.1.1")
}
fn stranger() -> IpAddr {
    ip("198.19.0.99")
}
fn stranger6() -> IpAddr {
    ip("2001:db8:ff::99")
}
// Destinations.
fn web() -> IpAddr {
    ip("198.18.1.5")
}
fn web_admin() -> IpAddr {
    ip("198.18.1.200")
}
fn web6() -> IpAddr {
    ip("2001:db8:1::5")
}
fn db() -> IpAddr {
    ip("198.18.2.10")
}
fn dns() -> IpAddr {
    ip("198.18.3.53")
}
fn dns6() -> IpAddr {
    ip("2001:db8:1:53::53")
}
fn legacy() -> IpAddr {
    ip("198.18.4.7")
}
fn nothing_here() -> IpAddr {
    ip("198.18.9.9")
}
fn lab_box() -> IpAddr {
    ip("198.19.200.10")
}
fn outside() -> IpAddr {
    ip("198.19.250.1")
}

/// An IPv6 first fragment (offset 0, more fragments) of `frame`.
fn v6_first_fragment(frame: Vec<u8>) -> Vec<u8> {
    let mut f = with_ipv6_ext(frame, &[(44, 8)], 0);
    f[14 + 40 + 3] |= 1;
    f
}

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp { src, dst }
}
fn fin(src: u16, dst: u16) -> L4 {
    L4::TcpFin { src, dst }
}
fn udp(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}
fn ping(id: u16) -> L4 {
    L4::EchoRequest { id }
}
fn pkt(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    frame(src, dst, l4, &[], b"")
}

type EventCheck = Box<dyn Fn(&[Event]) -> Result<(), String>>;

enum Step {
    /// A frame through XDP ingress, and the reason it must get.
    Xdp(Vec<u8>, Reason),
    /// A frame through TC egress, and the reason it must get.
    Tc(Vec<u8>, Reason),
    /// Replace the policy: recompile `fixtures.toml` with these grant names removed and
    /// apply it.
    Revoke(&'static [&'static str]),
    Sleep(Duration),
    /// Check the events sent since the previous check.
    Events(EventCheck),
}

struct Case {
    name: &'static str,
    host: &'static str,
    steps: Vec<Step>,
}

fn case(name: &'static str, host: &'static str, steps: Vec<Step>) -> Case {
    Case { name, host, steps }
}

/// One XDP packet on connector conn-1.
fn one(name: &'static str, frame: Vec<u8>, reason: Reason) -> Case {
    case(name, "connector:conn-1", vec![Step::Xdp(frame, reason)])
}

fn events(f: impl Fn(&[Event]) -> Result<(), String> + 'static) -> Step {
    Step::Events(Box::new(f))
}

fn count(evs: &[Event], kind: EventKind) -> usize {
    evs.iter().filter(|e| e.kind == kind as u8).count()
}

/// Seconds ahead of compile time at which `backup-db-window` expires.
const EXPIRY_SECS: i64 = 2;

fn policy_text(now: i64, revoked: &[&str]) -> String {
    let mut text = POLICY.replace(
        "EXPIRES_AT",
        &policy_compiler::model::format_rfc3339(now + EXPIRY_SECS),
    );
    for name in revoked {
        // Each grant is one block; drop the block that names it.
        let blocks: Vec<&str> = text.split("\n[[").collect();
        text = blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.contains(&format!("name = \"{name}\"")))
            .map(|(i, b)| {
                if i == 0 {
                    b.to_string()
                } else {
                    format!("[[{b}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text
}

fn cases() -> Vec<Case> {
    use Reason::*;
    let mut c = vec![
        // --- connector: grants, ports, ranges, protocols
        one(
            "tcp 443 granted",
            pkt(alice(), web(), tcp(40000, 443)),
            Allowed,
        ),
        one(
            "tcp 80 granted",
            pkt(alice(), web(), tcp(40000, 80)),
            Allowed,
        ),
        one(
            "tcp port inside a granted range",
            pkt(alice(), web(), tcp(40000, 8050)),
            Allowed,
        ),
        one(
            "first port of a range",
            pkt(alice(), web(), tcp(40000, 8000)),
            Allowed,
        ),
        one(
            "last port of a range",
            pkt(alice(), web(), tcp(40000, 8100)),
            Allowed,
        ),
        one(
            "one past a range",
            pkt(alice(), web(), tcp(40000, 8101)),
            DeniedNoGrant,
        ),
        one(
            "one before a range",
            pkt(alice(), web(), tcp(40000, 7999)),
            DeniedNoGrant,
        ),
        one(
            "port not on the resource",
            pkt(alice(), web(), tcp(40000, 22)),
            DeniedNoGrant,
        ),
        one("icmp echo granted", pkt(alice(), web(), ping(7)), Allowed),
        one(
            "udp to a tcp-only resource",
            pkt(alice(), web(), udp(40000, 443)),
            DeniedNoGrant,
        ),
        one(
            "udp 53 granted",
            pkt(alice(), dns(), udp(5353, 53)),
            Allowed,
        ),
        one(
            "udp 54 not granted",
            pkt(alice(), dns(), udp(5353, 54)),
            DeniedNoGrant,
        ),
        one(
            "tcp 53 on a udp-only resource",
            pkt(alice(), dns(), tcp(5353, 53)),
            DeniedNoGrant,
        ),
        one(
            "icmp to a resource without icmp",
            pkt(alice(), dns(), ping(1)),
            DeniedNoGrant,
        ),
        // --- overlapping resources: merged atoms
        one(
            "overlap: inner resource's grant",
            pkt(carol(), web_admin(), tcp(1, 22)),
            Allowed,
        ),
        one(
            "overlap: outer resource's grant",
            pkt(alice(), web_admin(), tcp(1, 443)),
            Allowed,
        ),
        one(
            "overlap: not granted inner port",
            pkt(alice(), web_admin(), tcp(1, 22)),
            DeniedNoGrant,
        ),
        one(
            "overlap: not granted outer port",
            pkt(carol(), web_admin(), tcp(1, 443)),
            DeniedNoGrant,
        ),
        one(
            "overlap: inner port outside inner prefix",
            pkt(carol(), web(), tcp(1, 22)),
            DeniedNoGrant,
        ),
        // --- deny precedence, groups, service accounts
        one(
            "deny wins over allow",
            pkt(bob(), db(), tcp(40000, 5432)),
            DeniedByRule,
        ),
        one(
            "allow via group",
            pkt(alice(), db(), tcp(40000, 5432)),
            Allowed,
        ),
        one(
            "no group grant",
            pkt(carol(), db(), tcp(40000, 5432)),
            DeniedNoGrant,
        ),
        one(
            "service-account key granted",
            pkt(backup(), db(), tcp(40000, 5432)),
            Allowed,
        ),
        one(
            "service-account key, other resource",
            pkt(backup(), web(), tcp(40000, 443)),
            DeniedNoGrant,
        ),
        // --- unknown sources, protected space without resources, unprotected
        one(
            "unknown source",
            pkt(stranger(), web(), tcp(40000, 443)),
            DeniedUnknownSource,
        ),
        one(
            "unknown IPv6 source",
            pkt(stranger6(), web6(), tcp(40000, 443)),
            DeniedUnknownSource,
        ),
        one(
            "protected, no resource",
            pkt(alice(), nothing_here(), tcp(40000, 80)),
            DeniedNoGrant,
        ),
        one(
            "unprotected destination",
            pkt(alice(), outside(), tcp(40000, 443)),
            Unprotected,
        ),
        one(
            "unprotected, unknown source",
            pkt(stranger(), outside(), udp(1, 2)),
            Unprotected,
        ),
        one(
            "another network's resource is not this connector's business",
            pkt(alice(), lab_box(), tcp(40000, 22)),
            Unprotected,
        ),
        // --- audit mode
        one(
            "audit: no grant passes and is reported",
            pkt(alice(), legacy(), tcp(40000, 80)),
            Audit,
        ),
        one(
            "audit: unknown source passes",
            pkt(stranger(), legacy(), tcp(40000, 80)),
            Audit,
        ),
        one(
            "audit: granted is plain allow",
            pkt(carol(), legacy(), tcp(40000, 80)),
            Allowed,
        ),
        // --- IPv6
        one(
            "ipv6 tcp granted",
            pkt(alice6(), web6(), tcp(40000, 443)),
            Allowed,
        ),
        one(
            "ipv6 port not granted",
            pkt(alice6(), web6(), tcp(40000, 80)),
            DeniedNoGrant,
        ),
        one(
            "icmpv6 echo granted",
            pkt(alice6(), web6(), ping(9)),
            Allowed,
        ),
        one(
            "ipv6 udp granted",
            pkt(alice6(), dns6(), udp(5353, 53)),
            Allowed,
        ),
        one(
            "ipv6 with extension headers",
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(0, 8), (60, 16)], 0),
            Allowed,
        ),
        one(
            "ipv6 extension headers do not hide a denied port",
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 80)), &[(0, 8)], 0),
            DeniedNoGrant,
        ),
        // --- IPv4 options, VLAN, malformed
        one(
            "ipv4 options",
            with_ipv4_options(pkt(alice(), web(), tcp(1, 443)), 0, 12),
            Allowed,
        ),
        one(
            "vlan tagged",
            frame(alice(), web(), tcp(1, 443), &[10], b""),
            Allowed,
        ),
        one(
            "qinq, denied port",
            frame(alice(), web(), tcp(1, 23), &[10, 20], b""),
            DeniedNoGrant,
        ),
        one(
            "three vlan tags",
            frame(alice(), web(), tcp(1, 443), &[1, 2, 3], b""),
            DeniedMalformed,
        ),
        one(
            "truncated tcp header",
            pkt(alice(), web(), tcp(1, 443))[..14 + 20 + 10].to_vec(),
            DeniedMalformed,
        ),
        one(
            "truncated, even to unprotected space",
            pkt(alice(), outside(), tcp(1, 443))[..14 + 20 + 10].to_vec(),
            DeniedMalformed,
        ),
        one(
            "seven ipv6 extension headers",
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(60, 8); 7], 0),
            DeniedMalformed,
        ),
        one(
            "arp passes",
            {
                let mut f = pkt(alice(), web(), udp(1, 2));
                f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                f
            },
            NotIp,
        ),
        one(
            "gre to protected space",
            {
                let mut f = pkt(alice(), web(), udp(1, 2));
                f[14 + 9] = 47;
                f
            },
            DeniedNoGrant,
        ),
    ];

    let flows = vec![
        case(
            "established flow takes the fast path",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40001, 443)), Allowed),
                Step::Xdp(pkt(alice(), web(), tcp(40001, 443)), Established),
                Step::Xdp(pkt(alice(), web(), tcp(40001, 443)), Established),
            ],
        ),
        case(
            "replies of an allowed flow pass",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40002, 443)), Allowed),
                Step::Xdp(pkt(web(), alice(), tcp(443, 40002)), Reply),
                Step::Xdp(pkt(web(), alice(), tcp(443, 40002)), Reply),
            ],
        ),
        case(
            "icmp echo reply passes",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), ping(77)), Allowed),
                Step::Xdp(pkt(web(), alice(), ping(77)), Reply),
            ],
        ),
        one(
            "unsolicited from protected space",
            pkt(web(), alice(), tcp(443, 40003)),
            DeniedUnsolicited,
        ),
        one(
            "unsolicited ipv6 from protected space",
            pkt(web6(), alice6(), tcp(443, 1)),
            DeniedUnsolicited,
        ),
        case(
            "a reply to another port is unsolicited",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40004, 443)), Allowed),
                Step::Xdp(pkt(web(), alice(), tcp(443, 40005)), DeniedUnsolicited),
            ],
        ),
        case(
            "icmp error quoting an allowed flow passes",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), dns(), udp(5353, 53)), Allowed),
                Step::Xdp(
                    icmp_error(dns(), alice(), &pkt(alice(), dns(), udp(5353, 53))),
                    IcmpErrorRelated,
                ),
            ],
        ),
        one(
            "icmp error quoting no flow is dropped",
            icmp_error(dns(), alice(), &pkt(alice(), dns(), udp(5353, 53))),
            DeniedUnsolicited,
        ),
        case(
            "icmpv6 packet-too-big quoting an allowed flow passes",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice6(), web6(), tcp(1, 443)), Allowed),
                Step::Xdp(
                    icmp_error(web6(), alice6(), &pkt(alice6(), web6(), tcp(1, 443))),
                    IcmpErrorRelated,
                ),
            ],
        ),
        case(
            "later fragments follow an allowed first fragment",
            "connector:conn-1",
            vec![
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 53)), true, 0), 4242),
                    Allowed,
                ),
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 53)), true, 10), 4242),
                    FragmentAllowed,
                ),
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 53)), false, 20), 4242),
                    FragmentAllowed,
                ),
            ],
        ),
        case(
            "a later fragment of another datagram is dropped",
            "connector:conn-1",
            vec![
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 53)), true, 0), 1),
                    Allowed,
                ),
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 53)), false, 10), 2),
                    DeniedFragment,
                ),
            ],
        ),
        case(
            "later fragments of a denied first fragment are dropped",
            "connector:conn-1",
            vec![
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 54)), true, 0), 5),
                    DeniedNoGrant,
                ),
                Step::Xdp(
                    set_ipv4_id(ipv4_frag(pkt(alice(), dns(), udp(1, 54)), false, 10), 5),
                    DeniedFragment,
                ),
            ],
        ),
        case(
            "ipv6 later fragments follow an allowed first fragment",
            "connector:conn-1",
            vec![
                Step::Xdp(
                    v6_first_fragment(pkt(alice6(), dns6(), udp(1, 53))),
                    Allowed,
                ),
                Step::Xdp(
                    with_ipv6_ext(pkt(alice6(), dns6(), udp(1, 53)), &[(44, 8)], 100),
                    FragmentAllowed,
                ),
            ],
        ),
        one(
            "a later fragment to unprotected space passes",
            ipv4_frag(pkt(alice(), outside(), udp(1, 53)), false, 10),
            Unprotected,
        ),
        // --- generation changes on open flows
        case(
            "revoking a grant stops the next packet of an open flow",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40010, 443)), Allowed),
                Step::Xdp(pkt(alice(), web(), tcp(40010, 443)), Established),
                Step::Revoke(&["eng-web"]),
                Step::Xdp(pkt(alice(), web(), tcp(40010, 443)), DeniedNoGrant),
                Step::Xdp(pkt(alice(), web(), tcp(40010, 443)), DeniedNoGrant),
            ],
        ),
        case(
            "revoking a grant stops replies of an open flow",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40011, 443)), Allowed),
                Step::Revoke(&["eng-web"]),
                Step::Xdp(pkt(web(), alice(), tcp(443, 40011)), DeniedEstablished),
            ],
        ),
        case(
            "a policy change keeps unaffected flows (decided again, allowed)",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), db(), tcp(40012, 5432)), Allowed),
                Step::Revoke(&["eng-web"]),
                Step::Xdp(pkt(alice(), db(), tcp(40012, 5432)), Allowed),
                Step::Xdp(pkt(alice(), db(), tcp(40012, 5432)), Established),
                Step::Xdp(pkt(db(), alice(), tcp(5432, 40012)), Reply),
            ],
        ),
        case(
            "revoking a deny opens the flow",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(bob(), db(), tcp(40013, 5432)), DeniedByRule),
                Step::Revoke(&["contractors-no-db"]),
                Step::Xdp(pkt(bob(), db(), tcp(40013, 5432)), Allowed),
            ],
        ),
        // --- expiry in the kernel, without the agent
        case(
            "an expiring grant stops at its expiry, open flow included",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(backup(), db(), tcp(40020, 5432)), Allowed),
                Step::Xdp(pkt(backup(), db(), tcp(40020, 5432)), Established),
                Step::Sleep(Duration::from_millis(EXPIRY_SECS as u64 * 1000 + 1100)),
                Step::Xdp(pkt(backup(), db(), tcp(40020, 5432)), DeniedNoGrant),
                Step::Xdp(pkt(backup(), db(), tcp(40021, 5432)), DeniedNoGrant),
            ],
        ),
        // --- events
        case(
            "a flow start event names principal, rule and atom; FIN ends the flow once",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), web(), tcp(40030, 443)), Allowed),
                Step::Xdp(pkt(web(), alice(), tcp(443, 40030)), Reply),
                Step::Xdp(pkt(alice(), web(), fin(40030, 443)), Established),
                Step::Xdp(pkt(web(), alice(), fin(443, 40030)), Reply),
                events(|evs| {
                    let starts: Vec<_> = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::FlowStart as u8)
                        .collect();
                    let ends: Vec<_> = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::FlowEnd as u8)
                        .collect();
                    if starts.len() != 1 || ends.len() != 1 {
                        return Err(format!("{} starts, {} ends", starts.len(), ends.len()));
                    }
                    let (s, e) = (starts[0], ends[0]);
                    if s.principal == 0 || s.rule == 0 || s.atom == 0 {
                        return Err(format!("start lacks ids: {s:?}"));
                    }
                    if e.packets != 2 || e.reply_packets != 1 {
                        return Err(format!("end counters: {e:?}"));
                    }
                    Ok(())
                }),
            ],
        ),
        case(
            "audit sends an audit event",
            "connector:conn-1",
            vec![
                Step::Xdp(pkt(alice(), legacy(), tcp(40031, 80)), Audit),
                Step::Xdp(pkt(alice(), legacy(), tcp(40031, 80)), Established),
                events(|evs| match (count(evs, EventKind::Audit), evs.len()) {
                    (1, 1) => Ok(()),
                    (a, n) => Err(format!("{a} audit events of {n}")),
                }),
            ],
        ),
        case(
            "deny events are rate-limited per source",
            "connector:conn-1",
            (0..40)
                .map(|i| Step::Xdp(pkt(carol(), db(), tcp(41000 + i, 5432)), DeniedNoGrant))
                .chain([events(|evs| {
                    let denies = count(evs, EventKind::Deny);
                    if denies == 0
                        || denies > gateway_common::event::DENY_EVENTS_PER_WINDOW as usize
                    {
                        return Err(format!("{denies} deny events for 40 denied packets"));
                    }
                    Ok(())
                })])
                .collect(),
        ),
        case(
            "a port scan raises one alert",
            "connector:conn-1",
            (0..64)
                .map(|i| Step::Xdp(pkt(carol(), web(), tcp(50000, 1000 + i * 7)), DeniedNoGrant))
                .chain([events(|evs| match count(evs, EventKind::ScanAlert) {
                    1 => Ok(()),
                    n => Err(format!("{n} scan alerts")),
                })])
                .collect(),
        ),
        case(
            "denied traffic to one port is no scan",
            "connector:conn-1",
            (0..64)
                .map(|_| Step::Xdp(pkt(carol(), web(), tcp(50001, 23)), DeniedNoGrant))
                .chain([events(|evs| match count(evs, EventKind::ScanAlert) {
                    0 => Ok(()),
                    n => Err(format!("{n} scan alerts")),
                })])
                .collect(),
        ),
    ];
    c.extend(flows);

    // --- client role: TC egress stops what the device may not reach; XDP ingress drops
    // unsolicited traffic from protected space.
    let client = vec![
        case(
            "client egress: granted",
            "device:alice-laptop",
            vec![Step::Tc(pkt(alice(), web(), tcp(1, 443)), Allowed)],
        ),
        case(
            "client egress: not granted",
            "device:alice-laptop",
            vec![Step::Tc(pkt(alice(), web(), tcp(1, 23)), DeniedNoGrant)],
        ),
        case(
            "client egress: deny rule of another user does not apply",
            "device:alice-laptop",
            vec![Step::Tc(pkt(alice(), db(), tcp(1, 5432)), Allowed)],
        ),
        case(
            "client egress: every protected network is blocked",
            "device:alice-laptop",
            vec![Step::Tc(pkt(alice(), lab_box(), tcp(1, 22)), DeniedNoGrant)],
        ),
        case(
            "client egress: unprotected passes",
            "device:alice-laptop",
            vec![Step::Tc(pkt(alice(), outside(), tcp(1, 443)), Unprotected)],
        ),
        case(
            "client egress: a foreign source address is unknown",
            "device:alice-laptop",
            vec![Step::Tc(
                pkt(bob(), web(), tcp(1, 443)),
                DeniedUnknownSource,
            )],
        ),
        case(
            "client egress: denied by rule",
            "device:bob-laptop",
            vec![Step::Tc(pkt(bob(), db(), tcp(1, 5432)), DeniedByRule)],
        ),
        case(
            "client: replies to allowed egress pass ingress",
            "device:alice-laptop",
            vec![
                Step::Tc(pkt(alice(), web(), tcp(2, 443)), Allowed),
                Step::Tc(pkt(alice(), web(), tcp(2, 443)), Established),
                Step::Xdp(pkt(web(), alice(), tcp(443, 2)), Reply),
            ],
        ),
        case(
            "client ingress: unsolicited from protected space",
            "device:alice-laptop",
            vec![Step::Xdp(
                pkt(web(), alice(), tcp(443, 3)),
                DeniedUnsolicited,
            )],
        ),
        case(
            "client ingress: from unprotected space passes",
            "device:alice-laptop",
            vec![Step::Xdp(pkt(outside(), alice(), tcp(443, 3)), Unprotected)],
        ),
        case(
            "client egress: malformed never leaves",
            "device:alice-laptop",
            vec![Step::Tc(
                pkt(alice(), web(), tcp(1, 443))[..14 + 20 + 6].to_vec(),
                DeniedMalformed,
            )],
        ),
    ];
    c.extend(client);
    c
}

/// The evaluator's packet for a frame built by `testkit::frame` (ports from the headers).
fn packet_of(frame: &[u8]) -> Option<Packet> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, proto) = match sliced.net? {
        etherparse::NetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.header().protocol().0,
        ),
        etherparse::NetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.payload().ip_number.0,
        ),
        _ => return None,
    };
    let (src_port, dst_port) = match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(etherparse::TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        // etherparse leaves the transport of a first fragment unparsed: read the ports.
        None if proto == 6 || proto == 17 => {
            let payload = match etherparse::SlicedPacket::from_ethernet(frame).ok()?.net? {
                etherparse::NetSlice::Ipv4(v4) => v4.payload().payload,
                etherparse::NetSlice::Ipv6(v6) => v6.payload().payload,
                _ => return None,
            };
            let p = payload.get(..4)?;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }
        _ => (0, 0),
    };
    Some(Packet {
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

fn expected_verdict(reason: Reason) -> Option<Verdict> {
    match reason {
        Reason::Allowed | Reason::Unprotected => Some(Verdict::Allow),
        Reason::Audit => Some(Verdict::Audit),
        Reason::DeniedByRule | Reason::DeniedNoGrant | Reason::DeniedUnknownSource => {
            Some(Verdict::Deny)
        }
        _ => None,
    }
}

fn run_case(c: &Case, failures: &mut Vec<String>) {
    let mut dp = Dataplane::load().expect("load eBPF object");
    let now = unix_now();
    let mut loaded = load_policy(&mut dp, &policy_text(now, &[]), c.host, now).unwrap();
    let host = parse_host(c.host).unwrap();
    dp.drain_events();
    for (i, step) in c.steps.iter().enumerate() {
        let mut fail = |msg: String| failures.push(format!("{} (step {}): {msg}", c.name, i + 1));
        let (frame, want, got) = match step {
            Step::Xdp(frame, want) => {
                let before = dp.verdict_stats().unwrap();
                let act = testkit::run_xdp(dp.xdp().unwrap(), frame).unwrap();
                let want_act = if want.passes() {
                    action::PASS
                } else {
                    action::DROP
                };
                if act != want_act {
                    fail(format!("XDP action {act}, want {want_act}"));
                }
                (frame, *want, dp.verdict_stats().unwrap().since(&before))
            }
            Step::Tc(frame, want) => {
                let before = dp.verdict_stats().unwrap();
                let act = testkit::run_tc(dp.tc().unwrap(), frame).unwrap();
                let want_act = if want.passes() {
                    tc_action::OK
                } else {
                    tc_action::SHOT
                };
                if act != want_act {
                    fail(format!("TC action {act}, want {want_act}"));
                }
                (frame, *want, dp.verdict_stats().unwrap().since(&before))
            }
            Step::Revoke(names) => {
                let text = policy_text(now, names);
                let parsed = policy_compiler::parse(&text, "fixtures.toml", now).unwrap();
                let view = policy_compiler::compile(&parsed.policy, &host, now).unwrap();
                loaded.writer.apply(&mut dp.policy, &view).unwrap();
                loaded.policy = parsed.policy;
                loaded.view = view;
                continue;
            }
            Step::Sleep(d) => {
                std::thread::sleep(*d);
                continue;
            }
            Step::Events(check) => {
                if let Err(e) = check(&dp.drain_events()) {
                    fail(format!("events: {e}"));
                }
                continue;
            }
        };
        if got.total() != 1 || got.reason(want) != 1 {
            fail(format!("reasons {:?}, want {}", got.nonzero(), want.name()));
        }
        // The reference evaluator must agree with every first decision in protected space.
        if let (Some(verdict), Some(p)) = (expected_verdict(want), packet_of(frame)) {
            let in_view = loaded.view.protected.iter().any(|n| n.contains(&p.dst));
            // A device enforces for its own addresses only: other sources are unknown to
            // its view whatever the whole policy grants them.
            let foreign = matches!(host, policy_compiler::Host::Device(_))
                && !loaded.view.sources.iter().any(|s| s.addr == p.src);
            let elapsed = unix_now();
            if (in_view || want != Reason::Unprotected) && !foreign {
                let d = policy_compiler::evaluate(&loaded.policy, &p, elapsed);
                if d.verdict != verdict {
                    fail(format!(
                        "evaluator says {:?} ({:?}), data plane {}",
                        d.verdict,
                        d.reason,
                        want.name()
                    ));
                }
            }
        }
    }
}

#[test]
fn dataplane_fixtures() {
    if skip_unless_privileged!() {
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 60, "fixture table shrank to {}", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        run_case(c, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} data-plane fixtures passed", cases.len());
}
