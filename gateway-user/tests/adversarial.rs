//! The adversarial suite: crafted frames through the real programs (BPF_PROG_TEST_RUN),
//! against maps filled by the real compiler and map writer from `tests/data/fixtures.toml`.
//!
//! Every case says what it expects and why, in terms of docs/dataplane.md (the contract),
//! not of the code: the expected reasons were written from the contract and the policy
//! by hand. Frames look like the wire: fragments are cut the way an IP stack cuts them,
//! ICMP errors quote what a host quotes, and the frames that lie (lengths, headers) say so
//! in their names. Each step runs at a hook; the direction follows from the host's role
//! (connector: XDP = outbound, tcx egress = inbound; device: tcx egress = outbound, XDP =
//! inbound).
//!
//! The same cases run a second time through the tunnel interface's programs on a real TUN
//! device (`adversarial_suite_on_the_tunnel_interface`): each frame loses its Ethernet
//! header (a TUN device carries bare IP packets, its protocol given beside them), and the
//! expectations stay, but for two rules of the contract's "Tunnel interface" section: what
//! is not IP there is malformed (`not_ip` becomes `denied_malformed`), and what is outside
//! protected space is dropped (`unprotected` becomes `denied_outside_protected`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{Event, EventKind, FlowState, Reason, event::FlowEndCause};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{
        self, L4, Tun, action, expected_key, fragment_v4, fragment_v6, frame, icmp_error,
        icmp_error_quoting, load_policy, parse_host, strip_ethernet, tc_action, unix_now,
        with_ipv4_option_bytes, with_ipv6_ext,
    },
};
use gateway_user::Dataplane;
use std::{net::IpAddr, time::Duration};

const POLICY: &str = include_str!("data/fixtures.toml");
/// Seconds after the start of a case at which `backup-db-window` expires.
const EXPIRY_SECS: i64 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// Principals (see fixtures.toml): alice and bob are in `eng` (bob also in `contractors`),
// carol in `ops`; `backup/k1` is a service-account key with an expiring grant.
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
fn router() -> IpAddr {
    ip("198.18.0.1")
}
fn lab_box() -> IpAddr {
    ip("198.19.200.10")
}
fn outside() -> IpAddr {
    ip("198.19.250.1")
}

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp { src, dst }
}
fn flags(src: u16, dst: u16, flags: u8) -> L4 {
    L4::TcpFlags { src, dst, flags }
}
fn udp(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}
fn ping(id: u16) -> L4 {
    L4::EchoRequest { id }
}
fn pong(id: u16) -> L4 {
    L4::EchoReply { id }
}
fn pkt(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    frame(src, dst, l4, &[], b"")
}
/// A frame with `n` bytes of payload.
fn big(src: IpAddr, dst: IpAddr, l4: L4, n: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
    frame(src, dst, l4, &[], &payload)
}
/// Sets an IPv4 header field (offset from the IP header) and fixes nothing else: a lie.
fn lie4(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[14 + at..14 + at + bytes.len()].copy_from_slice(bytes);
    f
}
/// Changes the IP protocol of an IPv4 frame (a protocol without ports to the parser).
fn proto4(mut f: Vec<u8>, p: u8) -> Vec<u8> {
    f[14 + 9] = p;
    f
}
fn proto6(mut f: Vec<u8>, p: u8) -> Vec<u8> {
    f[14 + 6] = p;
    f
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;

type Check = Box<dyn Fn(&mut Dataplane, &[Event]) -> Result<(), String>>;

enum Step {
    /// A frame at the host's outbound hook and the reason it must get.
    Out(Vec<u8>, Reason),
    /// A frame at the host's inbound hook and the reason it must get.
    In(Vec<u8>, Reason),
    /// Recompile the policy with these grants removed and apply it.
    Revoke(&'static [&'static str]),
    Sleep(Duration),
    /// Check the events since the previous check and the maps.
    Check(Check),
}

struct Case {
    name: String,
    /// The rule of docs/dataplane.md (or of the policy) the expectation comes from.
    why: &'static str,
    host: &'static str,
    steps: Vec<Step>,
}

fn case(name: impl Into<String>, why: &'static str, host: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name: name.into(),
        why,
        host,
        steps,
    }
}

const CONN: &str = "connector:conn-1";
const ALICE_DEV: &str = "device:alice-laptop";

/// One outbound packet on connector conn-1.
fn out(name: &str, why: &'static str, f: Vec<u8>, r: Reason) -> Case {
    case(name, why, CONN, vec![Step::Out(f, r)])
}

fn check(f: impl Fn(&mut Dataplane, &[Event]) -> Result<(), String> + 'static) -> Step {
    Step::Check(Box::new(f))
}

fn count(evs: &[Event], kind: EventKind) -> usize {
    evs.iter().filter(|e| e.kind == kind as u8).count()
}

const POLICY_RULE: &str = "policy: the grants of fixtures.toml decide (contract step 4)";

/// Policy decisions on first packets: the reference evaluator's verdict for each, as the
/// fixture policy's comments say.
fn policy_cases() -> Vec<Case> {
    use Reason::*;
    let w = POLICY_RULE;
    vec![
        out(
            "tcp 443 granted",
            w,
            pkt(alice(), web(), tcp(40000, 443)),
            Allowed,
        ),
        out(
            "tcp 80 granted",
            w,
            pkt(alice(), web(), tcp(40000, 80)),
            Allowed,
        ),
        out(
            "inside a granted range",
            w,
            pkt(alice(), web(), tcp(40000, 8050)),
            Allowed,
        ),
        out(
            "first port of a range",
            w,
            pkt(alice(), web(), tcp(40000, 8000)),
            Allowed,
        ),
        out(
            "last port of a range",
            w,
            pkt(alice(), web(), tcp(40000, 8100)),
            Allowed,
        ),
        out(
            "one past a range",
            w,
            pkt(alice(), web(), tcp(40000, 8101)),
            DeniedNoGrant,
        ),
        out(
            "one before a range",
            w,
            pkt(alice(), web(), tcp(40000, 7999)),
            DeniedNoGrant,
        ),
        out(
            "port not on the resource",
            w,
            pkt(alice(), web(), tcp(40000, 22)),
            DeniedNoGrant,
        ),
        out(
            "icmp echo granted",
            w,
            pkt(alice(), web(), ping(7)),
            Allowed,
        ),
        out(
            "udp to a tcp-only resource",
            w,
            pkt(alice(), web(), udp(40000, 443)),
            DeniedNoGrant,
        ),
        out(
            "udp 53 granted",
            w,
            pkt(alice(), dns(), udp(5353, 53)),
            Allowed,
        ),
        out(
            "udp 54 not granted",
            w,
            pkt(alice(), dns(), udp(5353, 54)),
            DeniedNoGrant,
        ),
        out(
            "tcp 53 on udp-only",
            w,
            pkt(alice(), dns(), tcp(5353, 53)),
            DeniedNoGrant,
        ),
        out(
            "icmp without icmp",
            w,
            pkt(alice(), dns(), ping(1)),
            DeniedNoGrant,
        ),
        out(
            "overlap: inner grant",
            w,
            pkt(carol(), web_admin(), tcp(1, 22)),
            Allowed,
        ),
        out(
            "overlap: outer grant",
            w,
            pkt(alice(), web_admin(), tcp(1, 443)),
            Allowed,
        ),
        out(
            "overlap: inner port not granted",
            w,
            pkt(alice(), web_admin(), tcp(1, 22)),
            DeniedNoGrant,
        ),
        out(
            "overlap: outer port not granted",
            w,
            pkt(carol(), web_admin(), tcp(1, 443)),
            DeniedNoGrant,
        ),
        out(
            "overlap: inner port outside inner prefix",
            w,
            pkt(carol(), web(), tcp(1, 22)),
            DeniedNoGrant,
        ),
        out(
            "deny wins over allow",
            w,
            pkt(bob(), db(), tcp(40000, 5432)),
            DeniedByRule,
        ),
        out(
            "allow via group",
            w,
            pkt(alice(), db(), tcp(40000, 5432)),
            Allowed,
        ),
        out(
            "no group grant",
            w,
            pkt(carol(), db(), tcp(40000, 5432)),
            DeniedNoGrant,
        ),
        out(
            "service-account key granted",
            w,
            pkt(backup(), db(), tcp(40000, 5432)),
            Allowed,
        ),
        out(
            "service-account key, other resource",
            w,
            pkt(backup(), web(), tcp(40000, 443)),
            DeniedNoGrant,
        ),
        out(
            "unknown source",
            w,
            pkt(stranger(), web(), tcp(40000, 443)),
            DeniedUnknownSource,
        ),
        out(
            "unknown ipv6 source",
            w,
            pkt(stranger6(), web6(), tcp(40000, 443)),
            DeniedUnknownSource,
        ),
        out(
            "protected, no resource",
            w,
            pkt(alice(), nothing_here(), tcp(40000, 80)),
            DeniedNoGrant,
        ),
        out(
            "unprotected destination",
            w,
            pkt(alice(), outside(), tcp(40000, 443)),
            Unprotected,
        ),
        out(
            "unprotected, unknown source",
            w,
            pkt(stranger(), outside(), udp(1, 2)),
            Unprotected,
        ),
        out(
            "another network's resource is not this connector's business",
            "protected space of a connector: its own networks only",
            pkt(alice(), lab_box(), tcp(40000, 22)),
            Unprotected,
        ),
        out(
            "audit: no grant passes",
            w,
            pkt(alice(), legacy(), tcp(40000, 80)),
            Audit,
        ),
        out(
            "audit: granted is plain allow",
            w,
            pkt(carol(), legacy(), tcp(40000, 80)),
            Allowed,
        ),
        out(
            "ipv6 tcp granted",
            w,
            pkt(alice6(), web6(), tcp(40000, 443)),
            Allowed,
        ),
        out(
            "ipv6 port not granted",
            w,
            pkt(alice6(), web6(), tcp(40000, 80)),
            DeniedNoGrant,
        ),
        out(
            "icmpv6 echo granted",
            w,
            pkt(alice6(), web6(), ping(9)),
            Allowed,
        ),
        out(
            "ipv6 udp granted",
            w,
            pkt(alice6(), dns6(), udp(5353, 53)),
            Allowed,
        ),
        out(
            "ipv6 extension headers before tcp",
            "parsing: hop-by-hop and destination options are walked",
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(0, 8), (60, 16)], 0),
            Allowed,
        ),
        out(
            "ipv6 extension headers do not hide a denied port",
            "parsing: the port after the chain is the one decided",
            with_ipv6_ext(
                pkt(alice6(), web6(), tcp(1, 80)),
                &[(0, 8), (60, 8), (51, 16)],
                0,
            ),
            DeniedNoGrant,
        ),
        out(
            "ipv4 options (record route)",
            "parsing: well-formed options are walked",
            with_ipv4_option_bytes(
                pkt(alice(), web(), tcp(1, 443)),
                0,
                &testkit::record_route(11),
            ),
            Allowed,
        ),
        out(
            "vlan tagged",
            "parsing: one VLAN tag",
            frame(alice(), web(), tcp(1, 443), &[10], b""),
            Allowed,
        ),
        out(
            "qinq, denied port",
            "parsing: two VLAN tags",
            frame(alice(), web(), tcp(1, 23), &[10, 20], b""),
            DeniedNoGrant,
        ),
    ]
}

/// Protocols without ports, and TCP flag combinations: the policy decides on addresses,
/// protocol and destination port only; flags never open or close anything by themselves.
fn protocol_cases() -> Vec<Case> {
    use Reason::*;
    let mut v = Vec::new();
    for (name, p) in [
        ("gre", 47u8),
        ("ipip", 4),
        ("esp", 50),
        ("sctp", 132),
        ("ah-opaque", 51),
    ] {
        let why = "other IP protocols: no resource names them, so protected space denies them";
        v.push(out(
            &format!("{name} from a principal"),
            why,
            proto4(pkt(alice(), web(), udp(1, 443)), p),
            DeniedNoGrant,
        ));
        v.push(out(
            &format!("{name} from an unknown source"),
            why,
            proto4(pkt(stranger(), db(), udp(1, 5432)), p),
            DeniedUnknownSource,
        ));
        v.push(out(
            &format!("{name} to unprotected space"),
            why,
            proto4(pkt(alice(), outside(), udp(1, 2)), p),
            Unprotected,
        ));
    }
    v.push(out(
        "ipv6 esp from a principal",
        "other IP protocols are denied into protected space",
        proto6(pkt(alice6(), web6(), udp(1, 443)), 50),
        DeniedNoGrant,
    ));
    v.push(out(
        "ipv6 no-next-header",
        "other IP protocols are denied into protected space",
        proto6(pkt(alice6(), web6(), udp(1, 443)), 59),
        DeniedNoGrant,
    ));
    for (name, fl) in [
        ("syn+fin", TCP_SYN | TCP_FIN),
        ("xmas", TCP_FIN | TCP_PSH | TCP_URG),
        ("null", 0),
        ("rst", TCP_RST),
        ("ack", TCP_ACK),
        ("syn+rst", TCP_SYN | TCP_RST),
    ] {
        let why = "flags do not change a decision: it is made on the 5-tuple";
        v.push(out(
            &format!("{name} to a granted port"),
            why,
            pkt(alice(), web(), flags(5000, 443, fl)),
            Allowed,
        ));
        v.push(out(
            &format!("{name} to a denied port"),
            why,
            pkt(alice(), web(), flags(5000, 22, fl)),
            DeniedNoGrant,
        ));
        v.push(out(
            &format!("{name} from a stranger"),
            why,
            pkt(stranger(), web(), flags(5000, 443, fl)),
            DeniedUnknownSource,
        ));
    }
    v
}

/// What is malformed: dropped whatever its addresses, including toward unprotected space.
fn malformed_cases() -> Vec<Case> {
    use Reason::*;
    let w = "parsing: what is malformed is dropped (contract, first list)";
    let mut v = vec![
        out(
            "three vlan tags",
            w,
            frame(alice(), web(), tcp(1, 443), &[1, 2, 3], b""),
            DeniedMalformed,
        ),
        out(
            "truncated, even to unprotected space",
            w,
            pkt(alice(), outside(), tcp(1, 443))[..14 + 20 + 10].to_vec(),
            DeniedMalformed,
        ),
        out(
            "nine ipv6 extension headers",
            w,
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(60, 8); 9], 0),
            DeniedMalformed,
        ),
        out(
            "hop-by-hop not first",
            w,
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(60, 8), (0, 8)], 0),
            DeniedMalformed,
        ),
        out(
            "two fragment headers",
            w,
            with_ipv6_ext(pkt(alice6(), dns6(), udp(1, 53)), &[(44, 8), (44, 8)], 0),
            DeniedMalformed,
        ),
        out(
            "lie: ipv4 total length past the frame",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 2, &200u16.to_be_bytes()),
            DeniedMalformed,
        ),
        out(
            "lie: ipv4 total length below the header",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 2, &16u16.to_be_bytes()),
            DeniedMalformed,
        ),
        out(
            "lie: ipv4 total length 0 outside GSO",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 2, &0u16.to_be_bytes()),
            DeniedMalformed,
        ),
        out(
            "lie: ipv4 ihl 4",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 0, &[0x44]),
            DeniedMalformed,
        ),
        out(
            "lie: ipv4 ihl past the datagram",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 0, &[0x4f]),
            DeniedMalformed,
        ),
        out(
            "lie: version 6 in an ipv4 frame",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 0, &[0x65]),
            DeniedMalformed,
        ),
        out(
            "lie: tcp data offset 4",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 20 + 12, &[0x40]),
            DeniedMalformed,
        ),
        out(
            "lie: tcp data offset past the datagram",
            w,
            lie4(pkt(alice(), web(), tcp(1, 443)), 20 + 12, &[0xf0]),
            DeniedMalformed,
        ),
        out(
            "lie: udp length 7",
            w,
            lie4(pkt(alice(), dns(), udp(1, 53)), 20 + 4, &7u16.to_be_bytes()),
            DeniedMalformed,
        ),
        out(
            "lie: udp length past the datagram",
            w,
            lie4(
                pkt(alice(), dns(), udp(1, 53)),
                20 + 4,
                &100u16.to_be_bytes(),
            ),
            DeniedMalformed,
        ),
        out(
            "ipv4 option length 1",
            w,
            with_ipv4_option_bytes(pkt(alice(), web(), tcp(1, 443)), 0, &[7, 1, 0, 0]),
            DeniedMalformed,
        ),
        out(
            "ipv4 option running past the header",
            w,
            with_ipv4_option_bytes(pkt(alice(), web(), tcp(1, 443)), 0, &[7, 40, 4, 0]),
            DeniedMalformed,
        ),
        out(
            "40 NOP options",
            w,
            testkit::with_ipv4_options(pkt(alice(), web(), tcp(1, 443)), 0, 40),
            DeniedMalformed,
        ),
    ];
    // lie: ipv6 payload length past the frame / zero outside GSO.
    let mut f = pkt(alice6(), web6(), tcp(1, 443));
    f[18..20].copy_from_slice(&500u16.to_be_bytes());
    v.push(out(
        "lie: ipv6 payload length past the frame",
        w,
        f,
        DeniedMalformed,
    ));
    let mut f = pkt(alice6(), web6(), tcp(1, 443));
    f[18..20].copy_from_slice(&0u16.to_be_bytes());
    v.push(out(
        "lie: ipv6 payload length 0 outside GSO (jumbogram)",
        w,
        f,
        DeniedMalformed,
    ));
    // Truncation at every byte, for TCP v4 with a VLAN tag, UDP v6 and ICMP v4: every
    // prefix of a well-formed frame that cuts an IP header or the transport header.
    for (name, full, l3) in [
        (
            "tcp/ipv4/vlan",
            frame(alice(), web(), tcp(1, 443), &[7], b""),
            18,
        ),
        ("udp/ipv6", pkt(alice6(), dns6(), udp(1, 53)), 14),
        ("icmp/ipv4", pkt(alice(), web(), ping(3)), 14),
    ] {
        for len in l3..full.len() {
            v.push(out(
                &format!("{name} cut at {len} of {}", full.len()),
                "parsing: a header running past the frame is truncated, never allowed",
                full[..len].to_vec(),
                DeniedMalformed,
            ));
        }
    }
    v.push(out(
        "arp passes untouched",
        "not IP: not the gateway's business",
        {
            let mut f = pkt(alice(), web(), udp(1, 2));
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        },
        NotIp,
    ));
    v
}

/// IPv4-mapped IPv6 and source routing.
fn spoofing_cases() -> Vec<Case> {
    use Reason::*;
    let mapped = "an IPv4-mapped IPv6 address is never an identity";
    let route = "source-routed packets are dropped: their destination is not the one decided";
    vec![
        out(
            "alice's v4 address as a mapped v6 source",
            mapped,
            pkt(ip("::ffff:198.19.0.10"), web6(), tcp(1, 443)),
            DeniedMappedAddress,
        ),
        out(
            "mapped v6 destination of a granted v4 resource",
            mapped,
            pkt(alice6(), ip("::ffff:198.18.1.5"), tcp(1, 443)),
            DeniedMappedAddress,
        ),
        out(
            "mapped v6 to unprotected space",
            mapped,
            pkt(ip("::ffff:198.19.0.10"), ip("2001:db8:fe::1"), tcp(1, 443)),
            DeniedMappedAddress,
        ),
        out(
            "lsrr: to web (granted) routed on to db",
            route,
            with_ipv4_option_bytes(
                pkt(alice(), web(), tcp(1, 443)),
                0,
                &[1, 131, 7, 4, 198, 18, 2, 10],
            ),
            DeniedSourceRoute,
        ),
        out(
            "ssrr toward unprotected space",
            route,
            with_ipv4_option_bytes(
                pkt(stranger(), outside(), tcp(1, 443)),
                0,
                &[137, 7, 4, 198, 18, 2, 10, 0],
            ),
            DeniedSourceRoute,
        ),
        out(
            "srv6 routing header with segments left",
            route,
            {
                let mut f = with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(43, 24)], 0);
                f[14 + 40 + 2] = 4;
                f[14 + 40 + 3] = 1;
                f[14 + 40 + 8..14 + 40 + 24].copy_from_slice(
                    &ip("2001:db8:1:53::53")
                        .to_string()
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets(),
                );
                f
            },
            DeniedSourceRoute,
        ),
        out(
            "routing header with no segments left is plain",
            "a routing header whose segments are all visited routes nothing",
            with_ipv6_ext(pkt(alice6(), web6(), tcp(1, 443)), &[(43, 24)], 0),
            Allowed,
        ),
        case(
            "device: alice's device egress with bob's source",
            "a device knows only its own addresses",
            ALICE_DEV,
            vec![Step::Out(
                pkt(bob(), web(), tcp(1, 443)),
                DeniedUnknownSource,
            )],
        ),
        case(
            "device: a protected source leaving the device",
            "outbound: a client-side packet claiming to come from protected space",
            ALICE_DEV,
            vec![Step::Out(
                pkt(web(), outside(), tcp(443, 1)),
                DeniedUnsolicited,
            )],
        ),
    ]
}

/// Flows, replies and directions.
fn flow_cases() -> Vec<Case> {
    use Reason::*;
    vec![
        case(
            "established flow takes the fast path",
            "outbound step 2",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40001, 443)), Allowed),
                Step::Out(pkt(alice(), web(), tcp(40001, 443)), Established),
                Step::Out(pkt(alice(), web(), tcp(40001, 443)), Established),
            ],
        ),
        case(
            "replies pass inbound",
            "inbound step 2",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40002, 443)), Allowed),
                Step::In(pkt(web(), alice(), tcp(443, 40002)), Reply),
                Step::In(pkt(web(), alice(), tcp(443, 40002)), Reply),
            ],
        ),
        case(
            "a reply-shaped packet at the outbound hook is no reply",
            "flows are opened outbound and answered inbound only; from the client side, a protected source is spoofed",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40003, 443)), Allowed),
                Step::Out(pkt(web(), alice(), tcp(443, 40003)), DeniedUnsolicited),
            ],
        ),
        case(
            "a client forging the resource's reply to another client",
            "the attack of issue 11 item 2: src=R -> dst=C2 from the client side",
            CONN,
            vec![
                Step::Out(pkt(bob(), web(), tcp(40004, 443)), Allowed),
                Step::Out(pkt(web(), bob(), tcp(443, 40004)), DeniedUnsolicited),
                Step::In(pkt(web(), bob(), tcp(443, 40004)), Reply),
            ],
        ),
        case(
            "a reply to another port is unsolicited",
            "inbound step 4",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40005, 443)), Allowed),
                Step::In(pkt(web(), alice(), tcp(443, 40006)), DeniedUnsolicited),
            ],
        ),
        case(
            "echo reply passes, an echo request from the resource does not",
            "inbound step 2: an echo request is never a reply",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), ping(77)), Allowed),
                Step::In(pkt(web(), alice(), ping(77)), DeniedUnsolicited),
                Step::In(pkt(web(), alice(), pong(77)), Reply),
            ],
        ),
        case(
            "inbound hooks never open flows",
            "inbound step 4: toward protected space there",
            CONN,
            vec![
                Step::In(pkt(alice(), web(), tcp(40007, 443)), DeniedDirection),
                Step::In(pkt(stranger(), db(), tcp(1, 5432)), DeniedDirection),
                Step::Out(pkt(alice(), web(), tcp(40007, 443)), Allowed),
            ],
        ),
        case(
            "unsolicited from protected space",
            "inbound step 4",
            CONN,
            vec![
                Step::In(pkt(web(), alice(), tcp(443, 40008)), DeniedUnsolicited),
                Step::In(pkt(web6(), alice6(), tcp(443, 1)), DeniedUnsolicited),
            ],
        ),
        case(
            "inbound, neither side protected",
            "inbound step 4",
            CONN,
            vec![Step::In(pkt(outside(), alice(), udp(53, 1)), Unprotected)],
        ),
        case(
            "audit: an unknown source passes and opens no flow",
            "outbound step 4: audit of unknown sources, no flow remembered",
            CONN,
            vec![
                Step::Out(pkt(stranger(), legacy(), tcp(40009, 80)), Audit),
                Step::Out(pkt(stranger(), legacy(), tcp(40009, 80)), Audit),
                check(|dp, _| match dp.flows.all().unwrap().len() {
                    0 => Ok(()),
                    n => Err(format!("{n} flows for an unknown source")),
                }),
                Step::In(pkt(legacy(), stranger(), tcp(80, 40009)), Audit),
            ],
        ),
        case(
            "audit: a principal's flow is remembered",
            "outbound step 4: audit of principals opens a flow",
            CONN,
            vec![
                Step::Out(pkt(alice(), legacy(), tcp(40010, 80)), Audit),
                Step::Out(pkt(alice(), legacy(), tcp(40010, 80)), Established),
                Step::In(pkt(legacy(), alice(), tcp(80, 40010)), Reply),
            ],
        ),
        case(
            "device: egress allowed, replies at ingress",
            "device: tcx egress outbound, XDP inbound",
            ALICE_DEV,
            vec![
                Step::Out(pkt(alice(), web(), tcp(2, 443)), Allowed),
                Step::Out(pkt(alice(), web(), tcp(2, 443)), Established),
                Step::In(pkt(web(), alice(), tcp(443, 2)), Reply),
                Step::In(pkt(web(), alice(), tcp(443, 3)), DeniedUnsolicited),
                Step::In(pkt(outside(), alice(), tcp(443, 3)), Unprotected),
            ],
        ),
        case(
            "device: every protected network is blocked, another user's deny does not apply",
            "device: protected space of every network; its own grants",
            ALICE_DEV,
            vec![
                Step::Out(pkt(alice(), lab_box(), tcp(1, 22)), DeniedNoGrant),
                Step::Out(pkt(alice(), db(), tcp(1, 5432)), Allowed),
                Step::Out(pkt(alice(), web(), tcp(1, 23)), DeniedNoGrant),
                Step::Out(pkt(alice(), outside(), tcp(1, 443)), Unprotected),
            ],
        ),
        case(
            "device: malformed never leaves",
            "parsing: malformed is dropped",
            ALICE_DEV,
            vec![Step::Out(
                pkt(alice(), web(), tcp(1, 443))[..14 + 20 + 6].to_vec(),
                DeniedMalformed,
            )],
        ),
    ]
}

/// ICMP errors: related only when the outer addresses are tied to the quoted packet.
fn icmp_cases() -> Vec<Case> {
    use Reason::*;
    let flow = || pkt(alice(), web(), tcp(40020, 80));
    let reply = || pkt(web(), alice(), tcp(80, 40020));
    vec![
        case(
            "error from the resource about alice's packet",
            "inbound step 3",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::In(icmp_error(web(), alice(), &flow()), IcmpErrorRelated),
            ],
        ),
        case(
            "error from a router on the path",
            "inbound step 3: the outer source may be any router",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::In(
                    icmp_error_quoting(router(), alice(), &flow(), 8),
                    IcmpErrorRelated,
                ),
            ],
        ),
        case(
            "error quoting alice's packet sent to bob",
            "inbound step 3: the outer destination must be the quoted source",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::In(icmp_error(web(), bob(), &flow()), DeniedUnsolicited),
            ],
        ),
        case(
            "error quoting no flow",
            "inbound step 3",
            CONN,
            vec![Step::In(
                icmp_error(dns(), alice(), &pkt(alice(), dns(), udp(5353, 53))),
                DeniedUnsolicited,
            )],
        ),
        case(
            "the outside attack: bob sends db an error quoting alice's flow to web",
            "outbound step 3: outer dst must be the quoted source (web), outer src the quoted dst (alice); else policy decides the ICMP: bob may not send ICMP to db",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::In(reply(), Reply),
                Step::Out(
                    icmp_error_quoting(
                        bob(),
                        db(),
                        &big(alice(), web(), tcp(40020, 80), 1000),
                        1000,
                    ),
                    DeniedNoGrant,
                ),
                Step::Out(
                    icmp_error_quoting(
                        bob(),
                        db(),
                        &big(web(), alice(), tcp(80, 40020), 1000),
                        1000,
                    ),
                    DeniedNoGrant,
                ),
                Step::Out(
                    icmp_error_quoting(stranger(), db(), &reply(), 8),
                    DeniedUnknownSource,
                ),
            ],
        ),
        case(
            "alice tells web about web's reply",
            "outbound step 3",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::In(reply(), Reply),
                Step::Out(icmp_error(alice(), web(), &reply()), IcmpErrorRelated),
            ],
        ),
        case(
            "alice's error about web's reply sent to db instead",
            "outbound step 3: outer destination must be the quoted source; policy then: no ICMP to db",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::Out(icmp_error(alice(), db(), &reply()), DeniedNoGrant),
            ],
        ),
        case(
            "carol's error about alice's flow sent to web",
            "outbound step 3: outer source must be the quoted destination; carol may not reach web",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::Out(icmp_error(carol(), web(), &reply()), DeniedNoGrant),
            ],
        ),
        case(
            "ipv6: packet too big about alice's flow, and a forgery from a stranger",
            "inbound step 3 and outbound step 3, IPv6",
            CONN,
            vec![
                Step::Out(pkt(alice6(), web6(), tcp(1, 443)), Allowed),
                Step::In(
                    icmp_error(web6(), alice6(), &pkt(alice6(), web6(), tcp(1, 443))),
                    IcmpErrorRelated,
                ),
                Step::Out(
                    icmp_error(stranger6(), dns6(), &pkt(web6(), alice6(), tcp(443, 1))),
                    DeniedUnknownSource,
                ),
            ],
        ),
        case(
            "an error about a revoked flow is unrelated",
            "ICMP errors relate to flows decided under the active generation",
            CONN,
            vec![
                Step::Out(flow(), Allowed),
                Step::Revoke(&["eng-web"]),
                Step::In(icmp_error(web(), alice(), &flow()), DeniedUnsolicited),
            ],
        ),
        case(
            "device: error from a resource about the device's flow",
            "device inbound step 3",
            ALICE_DEV,
            vec![
                Step::Out(pkt(alice(), dns(), udp(5000, 53)), Allowed),
                Step::In(
                    icmp_error(dns(), alice(), &pkt(alice(), dns(), udp(5000, 53))),
                    IcmpErrorRelated,
                ),
                Step::In(
                    icmp_error(dns(), alice(), &pkt(alice(), dns(), udp(5001, 53))),
                    DeniedUnsolicited,
                ),
            ],
        ),
    ]
}

/// Fragments, cut as an IP stack cuts them.
fn fragment_cases() -> Vec<Case> {
    use Reason::*;
    let mut v = Vec::new();
    // UDP datagram of 3000 bytes, MTU 1500: three fragments.
    let dgram = || big(alice(), dns(), udp(5353, 53), 3000);
    let f = fragment_v4(&dgram(), 1500, 0x4242);
    assert_eq!(f.len(), 3);
    v.push(case(
        "ipv4 udp datagram larger than the mtu",
        "outbound steps 1 and 4: the first fragment is decided on its ports (its UDP length is the datagram's), later ones follow",
        CONN,
        vec![
            Step::Out(f[0].clone(), Allowed),
            Step::Out(f[1].clone(), FragmentAllowed),
            Step::Out(f[2].clone(), FragmentAllowed),
        ],
    ));
    // A second fragmented datagram on the open flow (issue 11 item 9a).
    let f2 = fragment_v4(&dgram(), 1500, 0x4243);
    v.push(case(
        "a second fragmented datagram on an open flow",
        "outbound step 2 records the new datagram too",
        CONN,
        vec![
            Step::Out(f[0].clone(), Allowed),
            Step::Out(f[1].clone(), FragmentAllowed),
            Step::Out(f2[0].clone(), Established),
            Step::Out(f2[1].clone(), FragmentAllowed),
            Step::Out(f2[2].clone(), FragmentAllowed),
        ],
    ));
    // Fragments arriving out of order: a later one before its first.
    v.push(case(
        "a later fragment before its first is dropped; after it, follows",
        "outbound step 1: no first yet",
        CONN,
        vec![
            Step::Out(f[2].clone(), DeniedFragment),
            Step::Out(f[0].clone(), Allowed),
            Step::Out(f[1].clone(), FragmentAllowed),
        ],
    ));
    // The reply datagram, fragmented, inbound.
    let r = fragment_v4(&big(dns(), alice(), udp(53, 5353), 3000), 1500, 0x1111);
    v.push(case(
        "a fragmented reply passes inbound",
        "inbound steps 1 and 2",
        CONN,
        vec![
            Step::Out(pkt(alice(), dns(), udp(5353, 53)), Allowed),
            Step::In(r[0].clone(), Reply),
            Step::In(r[1].clone(), FragmentAllowed),
            Step::In(r[2].clone(), FragmentAllowed),
            // The same later fragment offered at the outbound hook: datagrams are bound
            // to the direction their first fragment passed in.
            Step::Out(r[1].clone(), DeniedFragment),
        ],
    ));
    // Denied first fragment: its later fragments are dropped too.
    let d = fragment_v4(&big(alice(), dns(), udp(5353, 54), 3000), 1500, 7);
    v.push(case(
        "later fragments of a denied datagram",
        "outbound step 1: the first opened no flow",
        CONN,
        vec![
            Step::Out(d[0].clone(), DeniedNoGrant),
            Step::Out(d[1].clone(), DeniedFragment),
            Step::Out(d[2].clone(), DeniedFragment),
        ],
    ));
    // Overlapping "first" fragments: each is decided on its own ports.
    let evil = fragment_v4(&big(alice(), dns(), udp(5353, 54), 3000), 1500, 0x4242);
    v.push(case(
        "a second first fragment with the same id and a denied port",
        "each first fragment is decided on its own ports",
        CONN,
        vec![
            Step::Out(f[0].clone(), Allowed),
            Step::Out(evil[0].clone(), DeniedNoGrant),
        ],
    ));
    // Tiny first fragment: the TCP header split across fragments (nmap -f).
    let t = fragment_v4(&big(alice(), web(), tcp(40050, 22), 64), 28, 99);
    v.push(case(
        "tiny first fragment (8 bytes of TCP header)",
        "parsing: a first fragment must hold its whole transport header",
        CONN,
        vec![
            Step::Out(t[0].clone(), DeniedMalformed),
            Step::Out(t[1].clone(), DeniedFragment),
        ],
    ));
    v.push(out(
        "a later fragment to unprotected space",
        "outbound step 1: neither address protected",
        fragment_v4(&big(alice(), outside(), udp(1, 53), 3000), 1500, 3)[1].clone(),
        Unprotected,
    ));
    v.push(out(
        "a later fragment to an audit-mode address",
        "outbound step 1: audit-mode destination",
        fragment_v4(&big(stranger(), legacy(), udp(1, 53), 3000), 1500, 4)[1].clone(),
        Audit,
    ));
    // ICMP echo of 3000 bytes.
    let p = fragment_v4(&big(alice(), web(), ping(5), 3000), 1500, 0x5555);
    let pr = fragment_v4(&big(web(), alice(), pong(5), 3000), 1500, 0x6666);
    v.push(case(
        "a 3000-byte ping and its reply",
        "fragments follow their first in both directions",
        CONN,
        vec![
            Step::Out(p[0].clone(), Allowed),
            Step::Out(p[1].clone(), FragmentAllowed),
            Step::Out(p[2].clone(), FragmentAllowed),
            Step::In(pr[0].clone(), Reply),
            Step::In(pr[1].clone(), FragmentAllowed),
            Step::In(pr[2].clone(), FragmentAllowed),
        ],
    ));
    // IPv6: destination options after the fragment header (issue 11 item 3).
    let d6 = with_ipv6_ext(big(alice6(), dns6(), udp(5353, 53), 3000), &[(60, 8)], 0);
    let g = fragment_v6(&d6, 1280, 0xabcdef);
    assert!(g.len() >= 3);
    let mut steps = vec![Step::Out(g[0].clone(), Allowed)];
    steps.extend(g[1..].iter().map(|x| Step::Out(x.clone(), FragmentAllowed)));
    v.push(case(
        "ipv6 udp with destination options after the fragment header",
        "later IPv6 fragments name their datagram without a protocol (RFC 8200), so a header after the fragment header does not separate them from their first",
        CONN,
        steps,
    ));
    let p6 = fragment_v6(&big(alice6(), web6(), ping(6), 3000), 1280, 77);
    let mut steps = vec![Step::Out(p6[0].clone(), Allowed)];
    steps.extend(
        p6[1..]
            .iter()
            .map(|x| Step::Out(x.clone(), FragmentAllowed)),
    );
    v.push(case(
        "a 3000-byte icmpv6 ping",
        "fragments follow their first",
        CONN,
        steps,
    ));
    let h6 = with_ipv6_ext(big(alice6(), web6(), tcp(1, 443), 2000), &[(0, 8)], 0);
    let h = fragment_v6(&h6, 1280, 78);
    v.push(case(
        "ipv6 fragments after a hop-by-hop header",
        "the per-fragment part is repeated before each fragment header",
        CONN,
        vec![
            Step::Out(h[0].clone(), Allowed),
            Step::Out(h[1].clone(), FragmentAllowed),
        ],
    ));
    v.push(out(
        "ipv6 later fragment without its first",
        "outbound step 1",
        fragment_v6(&big(alice6(), dns6(), udp(1, 53), 3000), 1280, 9)[1].clone(),
        DeniedFragment,
    ));
    // Device: its own fragmented datagram leaves, the reply comes back.
    let df = fragment_v4(&big(alice(), dns(), udp(6000, 53), 4000), 1500, 0x7777);
    let dr = fragment_v4(&big(dns(), alice(), udp(53, 6000), 4000), 1500, 0x8888);
    let mut steps = vec![Step::Out(df[0].clone(), Allowed)];
    steps.extend(
        df[1..]
            .iter()
            .map(|x| Step::Out(x.clone(), FragmentAllowed)),
    );
    steps.push(Step::In(dr[0].clone(), Reply));
    steps.extend(dr[1..].iter().map(|x| Step::In(x.clone(), FragmentAllowed)));
    v.push(case(
        "device: a 4000-byte udp datagram and its reply",
        "fragments follow their first",
        ALICE_DEV,
        steps,
    ));
    v
}

/// Policy changes and expiry on open flows; flow lifetimes that cannot be forged.
fn lifetime_cases() -> Vec<Case> {
    use Reason::*;
    vec![
        case(
            "revoking a grant stops the next packet of an open flow",
            "outbound step 2: a stale flow is decided again",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40030, 443)), Allowed),
                Step::Out(pkt(alice(), web(), tcp(40030, 443)), Established),
                Step::Revoke(&["eng-web"]),
                Step::Out(pkt(alice(), web(), tcp(40030, 443)), DeniedEstablished),
                Step::Out(pkt(alice(), web(), tcp(40030, 443)), DeniedNoGrant),
                check(|dp, evs| {
                    let ends: Vec<_> = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::FlowEnd as u8)
                        .collect();
                    if ends.len() != 1
                        || ends[0].detail != FlowEndCause::Revoked as u8
                        || ends[0].packets != 2
                    {
                        return Err(format!("flow_end records {ends:?}"));
                    }
                    match dp.flows.all().unwrap().len() {
                        0 => Ok(()),
                        n => Err(format!("{n} flows left")),
                    }
                }),
            ],
        ),
        case(
            "revoking a grant stops replies of an open flow",
            "inbound step 2",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40031, 443)), Allowed),
                Step::Revoke(&["eng-web"]),
                Step::In(pkt(web(), alice(), tcp(443, 40031)), DeniedEstablished),
                Step::In(pkt(web(), alice(), tcp(443, 40031)), DeniedUnsolicited),
            ],
        ),
        case(
            "a policy change keeps unaffected flows",
            "outbound step 2: decided again, still allowed",
            CONN,
            vec![
                Step::Out(pkt(alice(), db(), tcp(40032, 5432)), Allowed),
                Step::Revoke(&["eng-web"]),
                Step::Out(pkt(alice(), db(), tcp(40032, 5432)), Allowed),
                Step::Out(pkt(alice(), db(), tcp(40032, 5432)), Established),
                Step::In(pkt(db(), alice(), tcp(5432, 40032)), Reply),
            ],
        ),
        case(
            "revoking a deny opens the flow",
            "policy",
            CONN,
            vec![
                Step::Out(pkt(bob(), db(), tcp(40033, 5432)), DeniedByRule),
                Step::Revoke(&["contractors-no-db"]),
                Step::Out(pkt(bob(), db(), tcp(40033, 5432)), Allowed),
            ],
        ),
        case(
            "an expiring grant stops at its expiry, open flow included",
            "expiry in the kernel: the cached decision holds until the rule's expiry",
            CONN,
            vec![
                Step::Out(pkt(backup(), db(), tcp(40034, 5432)), Allowed),
                Step::Out(pkt(backup(), db(), tcp(40034, 5432)), Established),
                Step::Sleep(Duration::from_millis(EXPIRY_SECS as u64 * 1000 + 1100)),
                Step::Out(pkt(backup(), db(), tcp(40034, 5432)), DeniedEstablished),
                Step::Out(pkt(backup(), db(), tcp(40035, 5432)), DeniedNoGrant),
            ],
        ),
        case(
            "an out-of-window rst or fin ends nothing",
            "flows: FIN and RST are recorded, they never end a flow or its record",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40036, 443)), Allowed),
                Step::In(pkt(web(), alice(), flags(443, 40036, TCP_RST)), Reply),
                Step::Out(
                    pkt(alice(), web(), flags(40036, 443, TCP_FIN | TCP_ACK)),
                    Established,
                ),
                Step::Out(pkt(alice(), web(), flags(40036, 443, TCP_ACK)), Established),
                Step::In(pkt(web(), alice(), flags(443, 40036, TCP_ACK)), Reply),
                check(|dp, evs| {
                    if count(evs, EventKind::FlowEnd) != 0 {
                        return Err(format!(
                            "{} flow_end records",
                            count(evs, EventKind::FlowEnd)
                        ));
                    }
                    let flows = dp.flows.all().unwrap();
                    let [(_, st)] = flows.as_slice() else {
                        return Err(format!("flows {flows:?}"));
                    };
                    let want =
                        FlowState::SEEN_RST | FlowState::SEEN_FIN_ORIG | FlowState::SEEN_REPLY;
                    if st.flags != want || st.packets != 3 || st.reply_packets != 2 {
                        return Err(format!("flow state {st:?}"));
                    }
                    Ok(())
                }),
            ],
        ),
    ]
}

/// Events: once per flow; denials limited per source prefix and per CPU; scans detected
/// vertically and horizontally, malformed probes included.
fn event_cases() -> Vec<Case> {
    use Reason::*;
    let limit = gateway_common::DataplaneConfig::DEFAULT.deny_per_source as usize;
    vec![
        case(
            "a flow_start names principal, rule and atom",
            "events: once per flow",
            CONN,
            vec![
                Step::Out(pkt(alice(), web(), tcp(40040, 443)), Allowed),
                Step::Out(pkt(alice(), web(), tcp(40040, 443)), Established),
                Step::In(pkt(web(), alice(), tcp(443, 40040)), Reply),
                check(|_, evs| {
                    let [s] = evs else {
                        return Err(format!("{} events, want one flow_start", evs.len()));
                    };
                    if s.kind != EventKind::FlowStart as u8
                        || s.principal == 0
                        || s.rule == 0
                        || s.atom == 0
                    {
                        return Err(format!("{s:?}"));
                    }
                    Ok(())
                }),
            ],
        ),
        case(
            "deny events are limited per source",
            "events: 5 per second per source prefix",
            CONN,
            (0..40)
                .map(|i| Step::Out(pkt(carol(), db(), tcp(41000 + i, 5432)), DeniedNoGrant))
                .chain([check(move |_, evs| match count(evs, EventKind::Deny) {
                    n if n == limit => Ok(()),
                    n => Err(format!(
                        "{n} deny events for 40 denied packets, want {limit}"
                    )),
                })])
                .collect(),
        ),
        case(
            "an ipv6 /64 is one source",
            "events: per source prefix, /64 for IPv6 (one /64 cannot buy more events)",
            CONN,
            (0..40u16)
                .map(|i| {
                    let src = IpAddr::V6(std::net::Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0xff,
                        0,
                        0,
                        0,
                        7,
                        i + 1,
                    ));
                    Step::Out(pkt(src, web6(), tcp(1, 443)), DeniedUnknownSource)
                })
                .chain([check(move |_, evs| match count(evs, EventKind::Deny) {
                    n if n == limit => Ok(()),
                    n => Err(format!("{n} deny events from one /64, want {limit}")),
                })])
                .collect(),
        ),
        case(
            "a repeated denial is remembered, counted, and forgotten when the policy changes",
            "docs/dataplane.md, repeated denials: same reason, same events, never past a policy change",
            CONN,
            (0..limit as u16 + 10)
                .map(|_| Step::Out(pkt(bob(), db(), tcp(40036, 5432)), DeniedByRule))
                .chain([
                    check(move |dp, evs| {
                        if count(evs, EventKind::Deny) != limit {
                            return Err(format!(
                                "{} deny events for {} denied packets, want {limit}",
                                count(evs, EventKind::Deny),
                                limit + 10
                            ));
                        }
                        let key = expected_key(bob(), db(), tcp(40036, 5432));
                        let held = dp.deny_cache().map_err(|e| e.to_string())?;
                        match held.iter().find(|e| e.key == key) {
                            Some(e) if e.reason == DeniedByRule as u8 => Ok(()),
                            other => Err(format!(
                                "the repeated denial is not remembered: {other:?} among {} entries",
                                held.len()
                            )),
                        }
                    }),
                    Step::Revoke(&["contractors-no-db"]),
                    Step::Out(pkt(bob(), db(), tcp(40036, 5432)), Allowed),
                ])
                .collect(),
        ),
        case(
            "a repeated denial of an unknown source stays a denial, its count travels",
            "docs/dataplane.md, repeated denials: the next event of the source carries every \
             denial not reported, those answered from the cache included",
            CONN,
            (0..limit as u16 + 20)
                .map(|_| Step::Out(pkt(stranger(), web(), tcp(40037, 443)), DeniedUnknownSource))
                .chain([
                    check(move |_, evs| match count(evs, EventKind::Deny) {
                        n if n == limit => Ok(()),
                        n => Err(format!("{n} deny events, want {limit}")),
                    }),
                    // The next deny window: the tuple again, decided in full and reported,
                    // with the 20 denials the limit held back.
                    Step::Sleep(Duration::from_millis(
                        gateway_common::DataplaneConfig::DEFAULT.deny_window_ns / 1_000_000 + 100,
                    )),
                    Step::Out(pkt(stranger(), web(), tcp(40037, 443)), DeniedUnknownSource),
                    check(|_, evs| {
                        let denies: Vec<_> = evs
                            .iter()
                            .filter(|e| e.kind == EventKind::Deny as u8)
                            .collect();
                        match denies.as_slice() {
                            [e] if e.count == 20 => Ok(()),
                            [e] => Err(format!(
                                "the next deny event says {} denials were held back, want 20",
                                e.count
                            )),
                            other => Err(format!("{} deny events, want one", other.len())),
                        }
                    }),
                ])
                .collect(),
        ),
        case(
            "a vertical port scan raises one alert",
            "events: 12 distinct denied ports from one source within 10 s",
            CONN,
            (0..64)
                .map(|i| Step::Out(pkt(carol(), web(), tcp(50000, 1000 + i * 7)), DeniedNoGrant))
                .chain([check(|_, evs| {
                    match evs
                        .iter()
                        .filter(|e| e.kind == EventKind::ScanAlert as u8 && e.detail == 1)
                        .count()
                    {
                        1 => Ok(()),
                        n => Err(format!("{n} port-scan alerts")),
                    }
                })])
                .collect(),
        ),
        case(
            "a horizontal scan (one port, many hosts) raises one alert",
            "events: 12 distinct protected hosts from one source within 10 s",
            CONN,
            (0..64u8)
                .map(|i| {
                    Step::Out(
                        pkt(carol(), ip(&format!("198.18.7.{}", i + 1)), tcp(50000, 445)),
                        DeniedNoGrant,
                    )
                })
                .chain([check(|_, evs| {
                    match evs
                        .iter()
                        .filter(|e| e.kind == EventKind::ScanAlert as u8 && e.detail == 2)
                        .count()
                    {
                        1 => Ok(()),
                        n => Err(format!("{n} host-scan alerts")),
                    }
                })])
                .collect(),
        ),
        case(
            "denied traffic to one port is no scan",
            "events: distinct ports",
            CONN,
            (0..64)
                .map(|_| Step::Out(pkt(carol(), web(), tcp(50001, 23)), DeniedNoGrant))
                .chain([check(|_, evs| match count(evs, EventKind::ScanAlert) {
                    0 => Ok(()),
                    n => Err(format!("{n} scan alerts")),
                })])
                .collect(),
        ),
        case(
            "a tiny-fragment scan (nmap -f) is reported and detected",
            "events: malformed packets toward protected space count as denials",
            CONN,
            (0..32u16)
                .map(|i| {
                    let t = fragment_v4(
                        &big(stranger(), web(), tcp(50002, 2000 + i * 3), 64),
                        28,
                        100 + i,
                    );
                    Step::Out(t[0].clone(), DeniedMalformed)
                })
                .chain([check(move |_, evs| {
                    let denies = count(evs, EventKind::Deny);
                    let scans = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::ScanAlert as u8 && e.detail == 1)
                        .count();
                    if denies == limit && scans == 1 {
                        Ok(())
                    } else {
                        Err(format!("{denies} deny events, {scans} port-scan alerts"))
                    }
                })])
                .collect(),
        ),
        case(
            "a spoofed-source deny flood: budgets hold, state is not churned, flow records still flow",
            "events: per-CPU budget per kind with counted suppression; no new source state while over budget; flow records on their own ring",
            CONN,
            // A real scanner first (its state must survive), then denied packets from
            // 6000 spoofed /64s (more than two CPUs' budgets), then the scanner goes on and
            // a legitimate flow opens.
            (0..6u16)
                .map(|i| Step::Out(pkt(carol(), web(), tcp(50003, 3000 + i)), DeniedNoGrant))
                .chain((0..6000u32).map(|i| {
                    let src = IpAddr::V6(std::net::Ipv6Addr::new(
                        0x2001, 0xdb8, 0xf0, i as u16, 0, 0, 0, 1,
                    ));
                    Step::Out(pkt(src, web6(), tcp(1, 443)), DeniedUnknownSource)
                }))
                .chain(
                    (6..16u16).map(|i| {
                        Step::Out(pkt(carol(), web(), tcp(50003, 3000 + i)), DeniedNoGrant)
                    }),
                )
                .chain([Step::Out(pkt(alice(), web(), tcp(40042, 443)), Allowed)])
                .chain([check(|dp, evs| {
                    let budget = gateway_common::DataplaneConfig::DEFAULT.budget
                        [EventKind::Deny as usize] as usize;
                    let denies = count(evs, EventKind::Deny);
                    let suppressed: u64 = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::Deny as u8)
                        .map(|e| u64::from(e.suppressed))
                        .sum();
                    let sources = dp.source_states().unwrap();
                    let scans = evs
                        .iter()
                        .filter(|e| e.kind == EventKind::ScanAlert as u8 && e.detail == 1)
                        .count();
                    let starts = count(evs, EventKind::FlowStart);
                    let total_suppressed: u64 = dp
                        .suppressed()
                        .unwrap()
                        .iter()
                        .filter(|(k, _)| *k == EventKind::Deny)
                        .map(|(_, n)| *n)
                        .sum();
                    if denies > budget * 2 {
                        return Err(format!(
                            "{denies} deny events for a budget of {budget}/s per CPU"
                        ));
                    }
                    if total_suppressed + suppressed == 0 {
                        return Err(format!(
                            "no suppression counted ({denies} deny events, {sources} source states)"
                        ));
                    }
                    if sources > budget * 2 + 1 {
                        return Err(format!("{sources} source states: the flood grew the table"));
                    }
                    if scans != 1 {
                        return Err(format!(
                            "{scans} port-scan alerts for the scanner that began before the flood"
                        ));
                    }
                    if starts != 1 {
                        return Err(format!("{starts} flow_start records after the flood"));
                    }
                    Ok(())
                })])
                .collect(),
        ),
        case(
            "audit events of unknown sources are limited",
            "events: audit of unknown sources is limited like denials",
            CONN,
            (0..40)
                .map(|i| Step::Out(pkt(stranger(), legacy(), tcp(42000 + i, 80)), Audit))
                .chain([check(move |_, evs| match count(evs, EventKind::Audit) {
                    n if n == limit => Ok(()),
                    n => Err(format!("{n} audit events for 40 packets, want {limit}")),
                })])
                .collect(),
        ),
        case(
            "audit of a principal sends one audit record",
            "events: once per flow",
            CONN,
            vec![
                Step::Out(pkt(alice(), legacy(), tcp(40041, 80)), Audit),
                Step::Out(pkt(alice(), legacy(), tcp(40041, 80)), Established),
                check(|_, evs| match (count(evs, EventKind::Audit), evs.len()) {
                    (1, 1) => Ok(()),
                    (a, n) => Err(format!("{a} audit events of {n}")),
                }),
            ],
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut c = policy_cases();
    c.extend(protocol_cases());
    c.extend(malformed_cases());
    c.extend(spoofing_cases());
    c.extend(flow_cases());
    c.extend(icmp_cases());
    c.extend(fragment_cases());
    c.extend(lifetime_cases());
    c.extend(event_cases());
    c
}

fn policy_text(now: i64, removed: &[&str]) -> String {
    let text = POLICY.replace(
        "EXPIRES_AT",
        &format!(
            "\"{}\"",
            policy_compiler::model::format_rfc3339(now + EXPIRY_SECS)
        ),
    );
    if removed.is_empty() {
        return text;
    }
    // Drop the named [[allow]]/[[deny]] blocks.
    let mut out = String::new();
    for block in text.split("\n[[") {
        let name_line = "name = \"".to_string();
        let skip = removed
            .iter()
            .any(|n| block.contains(&format!("{name_line}{n}\"")))
            && (block.starts_with("allow]]") || block.starts_with("deny]]"));
        if !skip {
            if !out.is_empty() {
                out.push_str("\n[[");
            }
            out.push_str(block);
        }
    }
    out
}

/// One loaded object per host, reused by every case of that host: each case starts from
/// the base policy (a fresh generation) and no traffic state.
fn run_case(dp: &mut Dataplane, c: &Case, failures: &mut Vec<String>) {
    let now = unix_now();
    dp.reset_traffic_state().unwrap();
    let mut loaded = load_policy(dp, &policy_text(now, &[]), c.host, now).unwrap();
    let host = parse_host(c.host).unwrap();
    let connector = matches!(host, policy_compiler::Host::Connector(_));
    dp.drain_events();
    for (i, step) in c.steps.iter().enumerate() {
        let mut fail =
            |msg: String| failures.push(format!("{} [{}] (step {}): {msg}", c.name, c.why, i + 1));
        let (frame, want, xdp) = match step {
            // Connector: outbound at XDP ingress; device: outbound at tcx egress.
            Step::Out(f, r) => (f, *r, connector),
            Step::In(f, r) => (f, *r, !connector),
            Step::Revoke(names) => {
                let text = policy_text(now, names);
                let parsed = policy_compiler::parse(&text, "fixtures.toml", now).unwrap();
                let view = policy_compiler::compile(&parsed.policy, &host, now).unwrap();
                loaded.writer.apply(&mut dp.policy, &view).unwrap();
                continue;
            }
            Step::Sleep(d) => {
                std::thread::sleep(*d);
                continue;
            }
            Step::Check(f) => {
                let evs = dp.drain_events();
                if let Err(e) = f(dp, &evs) {
                    fail(format!("check: {e}"));
                }
                continue;
            }
        };
        let before = dp.verdict_stats().unwrap();
        let passed = if xdp {
            testkit::run_xdp(dp.xdp().unwrap(), frame).unwrap() == action::PASS
        } else {
            match testkit::run_tc(dp.tc().unwrap(), frame) {
                Ok(code) => code == tc_action::NEXT,
                Err(e) => {
                    fail(format!("tc test run: {e:#}"));
                    continue;
                }
            }
        };
        let got = dp.verdict_stats().unwrap().since(&before);
        if got.single() != Some(want) {
            fail(format!("reasons {:?}, want {}", got.nonzero(), want.name()));
        }
        if passed != want.passes() {
            fail(format!(
                "{} at {}, want {}",
                if passed { "passed" } else { "dropped" },
                if xdp { "XDP" } else { "tcx" },
                if want.passes() { "pass" } else { "drop" }
            ));
        }
    }
}

#[test]
fn adversarial_suite() {
    if skip_unless_privileged!() {
        return;
    }
    // The deny cache and the event budgets are per CPU: every packet of a case on one CPU.
    gateway_test_support::testkit::pin_to_current_cpu().expect("pinning the test thread");
    let cases = cases();
    assert!(
        cases.len() >= 250,
        "the suite shrank to {} cases",
        cases.len()
    );
    let only = std::env::var("ADVERSARIAL_CASE").ok();
    let mut failures = Vec::new();
    let mut dps: std::collections::HashMap<&str, Dataplane> = Default::default();
    let mut ran = 0;
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        let dp = dps
            .entry(c.host)
            .or_insert_with(|| Dataplane::load().expect("load eBPF object"));
        run_case(dp, c, &mut failures);
        ran += 1;
    }
    assert!(ran > 0, "no case matched ADVERSARIAL_CASE={only:?}");
    assert!(
        failures.is_empty(),
        "{} failures in {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} adversarial cases passed", cases.len());
}

/// A case's frames as the tunnel interface carries them; `None` when a frame has no IP
/// packet to give (too short for its Ethernet header).
fn tunnel_frames(c: &Case) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    for step in &c.steps {
        if let Step::Out(f, _) | Step::In(f, _) = step {
            let (ty, p) = strip_ethernet(f)?;
            out.push((ty, p.to_vec()));
        }
    }
    Some(out)
}

/// The contract's expectation at the tunnel interface for a frame expected to get `want`
/// on a physical link: the same, except that a non-IP packet is malformed there and a
/// packet outside protected space is dropped (through the tunnel, protected space only).
fn at_tunnel(want: Reason) -> Reason {
    match want {
        Reason::NotIp => Reason::DeniedMalformed,
        Reason::Unprotected => Reason::DeniedOutsideProtected,
        other => other,
    }
}

/// [`run_case`] through the tunnel interface: outbound is tun ingress on a connector (a
/// decrypted packet written into the device) and tun egress on a device (a packet the
/// stack sends into the tunnel); inbound the other way round. An ingress drop is seen in
/// the counters; an egress drop also by the sender (ENOBUFS).
fn run_case_l3(dp: &mut Dataplane, tun: &Tun, c: &Case, failures: &mut Vec<String>) -> bool {
    let Some(frames) = tunnel_frames(c) else {
        return false;
    };
    let now = unix_now();
    dp.reset_traffic_state().unwrap();
    let mut loaded = load_policy(dp, &policy_text(now, &[]), c.host, now).unwrap();
    let host = parse_host(c.host).unwrap();
    let connector = matches!(host, policy_compiler::Host::Connector(_));
    dp.drain_events();
    let mut frames = frames.into_iter();
    for (i, step) in c.steps.iter().enumerate() {
        let mut fail = |msg: String| {
            failures.push(format!(
                "{} [{}] (step {}, tunnel): {msg}",
                c.name,
                c.why,
                i + 1
            ))
        };
        let (want, ingress) = match step {
            Step::Out(_, r) => (at_tunnel(*r), connector),
            Step::In(_, r) => (at_tunnel(*r), !connector),
            Step::Revoke(names) => {
                let text = policy_text(now, names);
                let parsed = policy_compiler::parse(&text, "fixtures.toml", now).unwrap();
                let view = policy_compiler::compile(&parsed.policy, &host, now).unwrap();
                loaded.writer.apply(&mut dp.policy, &view).unwrap();
                continue;
            }
            Step::Sleep(d) => {
                std::thread::sleep(*d);
                continue;
            }
            Step::Check(f) => {
                let evs = dp.drain_events();
                if let Err(e) = f(dp, &evs) {
                    fail(format!("check: {e}"));
                }
                continue;
            }
        };
        let Some((ty, packet)) = frames.next() else {
            fail("frame missing".into());
            continue;
        };
        let before = dp.verdict_stats().unwrap();
        let passed = if ingress {
            if let Err(e) = tun.ingress(ty, &packet) {
                fail(format!("tun write: {e:#}"));
                continue;
            }
            None
        } else {
            match tun.egress(ty, &packet) {
                Ok(p) => Some(p),
                Err(e) => {
                    fail(format!("tun send: {e:#}"));
                    continue;
                }
            }
        };
        let got = dp.verdict_stats().unwrap().since(&before);
        if got.single() != Some(want) {
            fail(format!("reasons {:?}, want {}", got.nonzero(), want.name()));
        }
        if let Some(passed) = passed
            && passed != want.passes()
        {
            fail(format!(
                "{} at tun egress, want {}",
                if passed { "passed" } else { "dropped" },
                if want.passes() { "pass" } else { "drop" }
            ));
        }
    }
    true
}

#[test]
fn adversarial_suite_on_the_tunnel_interface() {
    if skip_unless_privileged!() {
        return;
    }
    // As in `adversarial_suite`: a TUN write runs the programs on the writer's CPU.
    gateway_test_support::testkit::pin_to_current_cpu().expect("pinning the test thread");
    let cases = cases();
    let only = std::env::var("ADVERSARIAL_CASE").ok();
    let mut failures = Vec::new();
    let mut hosts: std::collections::HashMap<&str, (Dataplane, Tun)> = Default::default();
    let (mut ran, mut skipped) = (0, Vec::new());
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        let (dp, tun) = hosts.entry(c.host).or_insert_with(|| {
            let mut dp = Dataplane::load().expect("load eBPF object");
            let tun = Tun::new(&mut dp, true).expect("TUN device with the tunnel programs");
            (dp, tun)
        });
        if run_case_l3(dp, tun, c, &mut failures) {
            ran += 1;
        } else {
            skipped.push(c.name.as_str());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {ran} cases at the tunnel interface:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if only.is_none() {
        // Only frames cut inside their Ethernet header have no IP packet to carry.
        assert!(
            ran >= cases.len() - 10,
            "only {ran} of {} cases ran at the tunnel interface; skipped: {skipped:?}",
            cases.len()
        );
    }
    eprintln!(
        "{ran} adversarial cases passed at the tunnel interface ({} without an IP packet: \
         {skipped:?})",
        skipped.len()
    );
}
