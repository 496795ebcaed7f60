//! The reference model against the contract (`docs/dataplane.md`), one test per rule, each
//! naming the rule it checks. Frames come from `wire` and look like the wire.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_model::wire::{self, Ext, IcmpError, L4, V4, Vlan, flags};
use gateway_model::{Direction, Expected, Model, Role};

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["conn"]

[[remote_network]]
name = "lab"
cidrs = ["198.19.200.0/24"]
connectors = ["lab-conn"]

[[resource]]
name = "web"
network = "dc"
address = "198.18.1.10"
tcp = ["80", "443"]
udp = ["53"]
icmp = true

[[resource]]
name = "web6"
network = "dc"
address = "2001:db8:1::10"
tcp = ["80"]
udp = ["53"]
icmp = true

[[resource]]
name = "db"
network = "dc"
address = "198.18.2.20"
tcp = ["5432"]
icmp = true

[[resource]]
name = "legacy"
network = "dc"
address = "198.18.20.0/24"
tcp = "all"
mode = "audit"

[[user]]
email = "alice@example.com"

[[user]]
email = "bob@example.com"

[[user]]
email = "carol@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["198.19.0.10", "2001:db8:ff::10"]

[[device]]
name = "bob-laptop"
owner = "bob@example.com"
address = "198.19.0.11"

[[device]]
name = "carol-laptop"
owner = "carol@example.com"
address = "198.19.0.12"

[[user]]
email = "dave@example.com"

# Dave has no grant: no connector knows him (least knowledge).
[[device]]
name = "dave-laptop"
owner = "dave@example.com"
address = "198.19.0.13"

[[service_account]]
name = "ci"
keys = [{ name = "k", address = "198.19.1.1", expires_at = "2026-01-01T00:01:40Z" }]

[[allow]]
name = "alice-web"
principals = ["alice@example.com"]
resources = ["web", "web6"]

[[allow]]
name = "bob-db"
principals = ["bob@example.com"]
resources = ["db"]
tcp = ["5432"]

[[deny]]
name = "bob-no-https"
principals = ["bob@example.com"]
resources = ["web"]
tcp = ["443"]

[[allow]]
name = "bob-web"
principals = ["bob@example.com"]
resources = ["web"]

[[allow]]
name = "alice-db-jit"
principals = ["alice@example.com"]
resources = ["db"]
expires_at = "2026-01-01T00:01:00Z"

[[allow]]
name = "carol-db"
principals = ["carol@example.com"]
resources = ["db"]

[[allow]]
name = "ci-web"
principals = ["service_account:ci"]
resources = ["web"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const ALICE: &str = "198.19.0.10";
const ALICE6: &str = "2001:db8:ff::10";
const BOB: &str = "198.19.0.11";
const CAROL: &str = "198.19.0.12";
const DAVE: &str = "198.19.0.13";
const CI: &str = "198.19.1.1";
const WEB: &str = "198.18.1.10";
const WEB6: &str = "2001:db8:1::10";
const DB: &str = "198.18.2.20";
const LEGACY: &str = "198.18.20.5";
const NET: &str = "198.18.9.9"; // protected, no resource
const INTERNET: &str = "198.19.253.1";
const UNKNOWN: &str = "198.19.254.1";

fn policy(text: &str) -> policy_compiler::Policy {
    policy_compiler::parse(text, "p.toml", NOW).unwrap().policy
}

struct Host {
    m: Model,
    now: i64,
}

impl Host {
    fn connector() -> Host {
        Host {
            m: Model::new(policy(POLICY), Role::Connector("conn".into()), NOW),
            now: NOW,
        }
    }

    fn device(name: &str) -> Host {
        Host {
            m: Model::new(policy(POLICY), Role::Device(name.into()), NOW),
            now: NOW,
        }
    }

    fn frame(&mut self, dir: Direction, frame: &[u8]) -> Expected {
        self.m.packet(dir, frame, self.now)
    }

    fn out(&mut self, datagram: &[u8]) -> Expected {
        self.frame(Direction::Outbound, &wire::ether(datagram, &[]))
    }

    fn inb(&mut self, datagram: &[u8]) -> Expected {
        self.frame(Direction::Inbound, &wire::ether(datagram, &[]))
    }

    fn out_is(&mut self, datagram: &[u8], reason: &str) -> Expected {
        let e = self.out(datagram);
        assert_eq!(e.reason, reason, "outbound");
        assert_eq!(Some(e.passes), Model::reason_passes(reason));
        e
    }

    fn in_is(&mut self, datagram: &[u8], reason: &str) -> Expected {
        let e = self.inb(datagram);
        assert_eq!(e.reason, reason, "inbound");
        e
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, fl: u8) -> Vec<u8> {
    wire::datagram(ip(src), ip(dst), &L4::tcp(sport, dport, fl))
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    wire::datagram(ip(src), ip(dst), &L4::udp(sport, dport, vec![7; len]))
}

// ------------------------------------------------------------------ parsing

/// "A non-IP ethertype passes (`not_ip`)."
#[test]
fn non_ip_passes() {
    let mut h = Host::connector();
    let arp = wire::ether_type(0x0806, &[0u8; 28], &[]);
    let e = h.frame(Direction::Outbound, &arp);
    assert_eq!((e.reason, e.passes), ("not_ip", true));
    let e = h.frame(Direction::Inbound, &arp);
    assert_eq!((e.reason, e.passes), ("not_ip", true));
    // Behind two VLAN tags too.
    let e = h.frame(
        Direction::Outbound,
        &wire::ether_type(0x0806, &[0u8; 28], &[Vlan::ad(1), Vlan::q(2)]),
    );
    assert_eq!(e.reason, "not_ip");
}

/// "at most two VLAN tags, 802.1Q or 802.1ad": two pass to policy; "more than two VLAN
/// tags" is malformed.
#[test]
fn vlan_tags() {
    let mut h = Host::connector();
    let d = tcp(ALICE, WEB, 40000, 80, flags::SYN);
    for tags in [vec![Vlan::q(5)], vec![Vlan::ad(1), Vlan::q(2)]] {
        let e = h.frame(Direction::Outbound, &wire::ether(&d, &tags));
        assert!(matches!(e.reason, "allowed" | "established"), "{e:?}");
    }
    let e = h.frame(
        Direction::Outbound,
        &wire::ether(&d, &[Vlan::ad(1), Vlan::q(2), Vlan::q(3)]),
    );
    assert_eq!((e.reason, e.passes), ("denied_malformed", false));
}

/// "a header runs past the end of the frame, or past the end of the IP datagram": every
/// truncation of a frame at a header boundary (and inside a header) is malformed, whatever
/// its addresses; the whole frame is not.
#[test]
fn truncated_headers_are_malformed() {
    for (src, dst) in [(ALICE, WEB), (ALICE6, WEB6), (UNKNOWN, INTERNET)] {
        for l4 in [
            L4::tcp(40000, 80, flags::SYN),
            L4::udp(40000, 53, vec![1; 40]),
            L4::echo_request(ip(src).is_ipv6(), 7, 1),
        ] {
            let d = match (ip(src), ip(dst)) {
                (IpAddr::V6(s), IpAddr::V6(t)) => {
                    wire::ipv6(s, t, &[Ext::HopByHop(vec![]), Ext::DestOpts(vec![])], &l4)
                }
                (IpAddr::V4(s), IpAddr::V4(t)) => wire::ipv4(
                    &V4 {
                        options: wire::opt::router_alert(),
                        ..V4::new(s, t)
                    },
                    &l4,
                ),
                _ => unreachable!(),
            };
            let frame = wire::ether(&d, &[Vlan::q(9)]);
            let mut h = Host::connector();
            assert_ne!(
                h.frame(Direction::Outbound, &frame).reason,
                "denied_malformed"
            );
            let cuts = wire::truncations(&frame);
            assert!(cuts.len() >= 8, "{}", cuts.len());
            for t in cuts {
                let mut h = Host::connector();
                for dir in [Direction::Outbound, Direction::Inbound] {
                    let e = h.frame(dir, &t.frame);
                    assert_eq!(e.reason, "denied_malformed", "{}", t.label);
                }
            }
        }
    }
}

fn catalog_reason(src: &str, dst: &str, label: &str) -> &'static str {
    let v = wire::malformed(ip(src), ip(dst), 40000, 80)
        .into_iter()
        .find(|v| v.label == label)
        .unwrap_or_else(|| panic!("no catalog entry `{label}`"));
    Host::connector()
        .frame(Direction::Outbound, &v.frame)
        .reason
}

/// IPv4: "version is not 4, IHL < 5, total length < IHL, total length 0, or an option is
/// malformed (an option length < 2 or running past the header)".
#[test]
fn ipv4_header_rules() {
    for label in [
        "ipv4: version 5 under the IPv4 ethertype",
        "ipv4: version 6 under the IPv4 ethertype",
        "ipv4: IHL 0 (< 5)",
        "ipv4: IHL 4 (< 5)",
        "ipv4: IHL 15 (60-byte header) past the datagram",
        "ipv4: total length 0",
        "ipv4: total length 19 (< IHL)",
        "ipv4: total length 30 cuts the TCP header",
        "ipv4 option: length 1",
        "ipv4 option: length 0",
        "ipv4 option: length runs past the header",
        "ipv4 option: kind without a length byte at the header's end",
        "ipv4 option: LSRR and then a malformed option",
    ] {
        assert_eq!(
            catalog_reason(ALICE, WEB, label),
            "denied_malformed",
            "{label}"
        );
    }
    // Positive twins: well-formed options, a datagram shorter than the frame, a datagram
    // longer than the frame whose headers fit (module docs, ambiguity 2).
    assert_eq!(
        catalog_reason(
            ALICE,
            WEB,
            "ipv4 option: NOPs, router alert and EOL (well-formed)"
        ),
        "allowed"
    );
    assert_eq!(
        catalog_reason(
            ALICE,
            WEB,
            "ipv4: total length shorter than the frame (extra bytes after the datagram), UDP length fits"
        ),
        "denied_no_grant",
        "udp to port 80 of web: decided by policy"
    );
    assert_eq!(
        catalog_reason(
            ALICE,
            WEB,
            "ipv4: total length 1500 runs past the frame (headers fit)"
        ),
        "denied_malformed",
        "a datagram longer than its frame lost its end: malformed"
    );
}

/// IPv6: "version is not 6, payload length 0, more than 8 extension headers, a hop-by-hop
/// header anywhere but first, more than one fragment header".
#[test]
fn ipv6_header_rules() {
    for label in [
        "ipv6: version 4 under the IPv6 ethertype",
        "ipv6: payload length 0",
        "ipv6: payload length 10 cuts the TCP header",
        "ipv6: payload length 4 cuts a destination options header",
        "ipv6: 9 extension headers",
        "ipv6: hop-by-hop after destination options",
        "ipv6: two hop-by-hop headers",
        "ipv6: two fragment headers",
    ] {
        assert_eq!(
            catalog_reason(ALICE6, WEB6, label),
            "denied_malformed",
            "{label}"
        );
    }
    for label in [
        "ipv6: 8 extension headers (the most allowed)",
        "ipv6: atomic fragment (offset 0, M clear)",
    ] {
        assert_eq!(catalog_reason(ALICE6, WEB6, label), "allowed", "{label}");
    }
}

/// TCP "data offset < 5, or the header with its options not inside the packet"; UDP
/// "length < 8; for an unfragmented datagram, a length running past the IP payload";
/// ICMP "fewer than 8 bytes of header".
#[test]
fn transport_header_rules() {
    for (src, dst, icmp) in [
        (ALICE, WEB, "icmp: 4 bytes of header"),
        (ALICE6, WEB6, "icmpv6: 6 bytes of header"),
    ] {
        for label in [
            "tcp: data offset 0 (< 5)",
            "tcp: data offset 4 (< 5)",
            "tcp: data offset 15 runs past the packet",
            "udp: length 7 (< 8)",
            "udp: length runs past the IP payload (unfragmented)",
            icmp,
        ] {
            assert_eq!(
                catalog_reason(src, dst, label),
                "denied_malformed",
                "{label}"
            );
        }
    }
    // A UDP length shorter than the payload is fine (the rest is padding).
    assert_eq!(
        catalog_reason(
            ALICE,
            WEB,
            "udp: length shorter than the IP payload (well-formed)"
        ),
        "denied_no_grant"
    );
}

/// "a first fragment (offset 0, more fragments) too short to hold its transport header (the
/// tiny fragment attack, RFC 1858)".
#[test]
fn tiny_first_fragments_are_malformed() {
    for (src, dst, labels) in [
        (
            ALICE,
            WEB,
            &[
                "ipv4 tiny first fragment: 8 bytes of a TCP header",
                "ipv4 tiny first fragment: 4 bytes of a UDP header",
            ][..],
        ),
        (
            ALICE6,
            WEB6,
            &[
                "ipv6 tiny first fragment: 8 bytes of a TCP header",
                "ipv6 tiny first fragment: destination options header cut by the fragment's end",
            ][..],
        ),
    ] {
        for label in labels {
            assert_eq!(
                catalog_reason(src, dst, label),
                "denied_malformed",
                "{label}"
            );
        }
    }
}

/// "a first fragment's UDP length describes the whole datagram and is not checked against
/// the fragment": the first fragment of a big UDP datagram opens the flow.
#[test]
fn udp_first_fragment_with_length_beyond_the_fragment_passes() {
    let mut h = Host::connector();
    let big = wire::ipv4(
        &V4 {
            id: 77,
            ..V4::new(v4(ALICE), v4(WEB))
        },
        &L4::udp(40000, 53, vec![1; 3000]),
    );
    let frags = wire::fragment_v4(&big, 1500);
    assert_eq!(frags.len(), 3);
    let e = h.out_is(&frags[0], "allowed");
    assert!(e.opened_flow);
    h.out_is(&frags[1], "fragment_allowed");
    h.out_is(&frags[2], "fragment_allowed");
    // The same length in an unfragmented datagram is malformed.
    let mut lying = wire::datagram(ip(ALICE), ip(WEB), &L4::udp(40001, 53, vec![1; 100]));
    lying[24..26].copy_from_slice(&3008u16.to_be_bytes());
    h.out_is(&lying, "denied_malformed");
}

/// "`denied_mapped_address`: an IPv6 packet whose source or destination is IPv4-mapped".
#[test]
fn mapped_addresses_are_dropped() {
    let mut h = Host::connector();
    let mapped_alice = wire::mapped(v4(ALICE));
    let d = wire::datagram(mapped_alice, ip(WEB6), &L4::tcp(40000, 80, flags::SYN));
    h.out_is(&d, "denied_mapped_address");
    h.in_is(&d, "denied_mapped_address");
    let d = wire::datagram(
        ip(ALICE6),
        wire::mapped(v4(WEB)),
        &L4::tcp(40000, 80, flags::SYN),
    );
    h.out_is(&d, "denied_mapped_address");
    // Whatever its addresses: also toward unprotected space.
    let d = wire::datagram(mapped_alice, ip("2001:db8:fd::1"), &L4::udp(1, 2, vec![]));
    h.out_is(&d, "denied_mapped_address");
    // Unless it is malformed: malformed wins (ambiguity 4).
    let mut d = wire::datagram(mapped_alice, ip(WEB6), &L4::udp(1, 2, vec![0; 8]));
    d[44..46].copy_from_slice(&4u16.to_be_bytes());
    h.out_is(&d, "denied_malformed");
}

/// "`denied_source_route`: an IPv4 packet with a loose or strict source-route option, or
/// an IPv6 packet with a routing header whose segments-left is not 0".
#[test]
fn source_routes_are_dropped() {
    let mut h = Host::connector();
    let l4 = L4::tcp(40000, 80, flags::SYN);
    let hop = v4("198.18.99.1");
    for o in [wire::opt::lsrr(&[hop]), wire::opt::ssrr(&[hop])] {
        let d = wire::ipv4(
            &V4 {
                options: o,
                ..V4::new(v4(ALICE), v4(WEB))
            },
            &l4,
        );
        h.out_is(&d, "denied_source_route");
        h.in_is(&d, "denied_source_route");
    }
    let srh = |left| {
        wire::ipv6(
            v6(ALICE6),
            v6(WEB6),
            &[Ext::srh(&[v6(WEB6), v6(ALICE6)], left)],
            &l4,
        )
    };
    h.out_is(&srh(1), "denied_source_route");
    // Segments left 0: the destination field is the destination.
    h.out_is(&srh(0), "allowed");
    // Every fragment of a source-routed datagram carries the option (copied).
    let big = wire::ipv4(
        &V4 {
            options: wire::opt::lsrr(&[hop]),
            ..V4::new(v4(ALICE), v4(WEB))
        },
        &L4::udp(40000, 53, vec![0; 2000]),
    );
    for f in wire::fragment_v4(&big, 1000) {
        h.out_is(&f, "denied_source_route");
    }
}

/// "Every other IP protocol (GRE, IPIP, ESP, SCTP, ...) parses, has no ports, and is
/// decided by policy like any packet": denied into protected space, `denied_no_grant` for a
/// principal, `denied_unknown_source` otherwise; audit mode still audits.
#[test]
fn other_protocols_are_decided_by_policy() {
    let mut h = Host::connector();
    for p in [47u8, 4, 50, 132] {
        let d = wire::datagram(ip(ALICE), ip(WEB), &L4::other(p, vec![0; 40]));
        h.out_is(&d, "denied_no_grant");
        let d = wire::datagram(ip(UNKNOWN), ip(WEB), &L4::other(p, vec![0; 40]));
        h.out_is(&d, "denied_unknown_source");
        let d = wire::datagram(ip(ALICE), ip(INTERNET), &L4::other(p, vec![0; 40]));
        h.out_is(&d, "unprotected");
    }
    let gre = wire::datagram(ip(ALICE), ip(LEGACY), &L4::other(47, vec![0; 40]));
    let e = h.out_is(&gre, "audit");
    assert!(
        e.opened_flow,
        "an audit packet from a principal opens a flow"
    );
    h.out_is(&gre, "established");
    let back = wire::datagram(ip(LEGACY), ip(ALICE), &L4::other(47, vec![0; 40]));
    h.in_is(&back, "reply");
}

// ------------------------------------------------------------------ outbound

/// Step 4: "destination outside protected space: `unprotected` — unless the source is in
/// protected space: `denied_unsolicited`".
#[test]
fn unprotected_and_unsolicited() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, INTERNET, 40000, 443, flags::SYN), "unprotected");
    h.out_is(
        &tcp(UNKNOWN, INTERNET, 40000, 443, flags::SYN),
        "unprotected",
    );
    // A spoofed reply: a protected source sent from the client side.
    h.out_is(
        &tcp(WEB, ALICE, 80, 40000, flags::SYN | flags::ACK),
        "denied_unsolicited",
    );
    // The lab network is not this connector's: unprotected here.
    h.out_is(
        &tcp(UNKNOWN, "198.19.200.5", 1, 22, flags::SYN),
        "unprotected",
    );
}

/// Step 4: "source not a principal of this host: `denied_unknown_source`, or `audit` when
/// the destination's resource is in audit mode (passed, no flow remembered)".
#[test]
fn unknown_sources() {
    let mut h = Host::connector();
    h.out_is(
        &tcp(UNKNOWN, WEB, 40000, 80, flags::SYN),
        "denied_unknown_source",
    );
    h.out_is(
        &tcp(UNKNOWN, NET, 40000, 80, flags::SYN),
        "denied_unknown_source",
    );
    let e = h.out_is(&tcp(UNKNOWN, LEGACY, 40000, 80, flags::SYN), "audit");
    assert!(!e.opened_flow, "no flow for an unknown source");
    assert_eq!(h.m.flow_count(), 0);
    // So its reply is not a reply: it passes inbound only because audit mode does not
    // enforce.
    h.in_is(
        &tcp(LEGACY, UNKNOWN, 80, 40000, flags::SYN | flags::ACK),
        "audit",
    );
    // The next packet is decided again, not established.
    h.out_is(&tcp(UNKNOWN, LEGACY, 40000, 80, flags::ACK), "audit");
}

/// Step 4: "otherwise the verdict of the grants: `allowed`, `audit`, `denied_by_rule`,
/// `denied_no_grant`"; "An `allowed` or `audit` packet from a principal opens a flow."
#[test]
fn verdicts_of_the_grants() {
    let mut h = Host::connector();
    let e = h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    assert!(e.opened_flow);
    h.out_is(&tcp(BOB, WEB, 40000, 443, flags::SYN), "denied_by_rule");
    h.out_is(&tcp(BOB, WEB, 40001, 80, flags::SYN), "allowed");
    h.out_is(&tcp(CAROL, WEB, 40000, 80, flags::SYN), "denied_no_grant");
    h.out_is(&tcp(ALICE, NET, 40000, 80, flags::SYN), "denied_no_grant");
    let e = h.out_is(&tcp(CAROL, LEGACY, 40000, 8080, flags::SYN), "audit");
    assert!(e.opened_flow, "audit from a principal opens a flow");
    h.out_is(&tcp(CAROL, LEGACY, 40000, 8080, flags::ACK), "established");
    // Dual stack: both of alice's addresses are alice.
    h.out_is(&tcp(ALICE6, WEB6, 40000, 80, flags::SYN), "allowed");
    h.out_is(
        &wire::datagram(ip(ALICE6), ip(WEB6), &L4::echo_request(true, 5, 1)),
        "allowed",
    );
    // ICMPv6 is the ICMP of IPv6 destinations; ICMP (1) inside IPv6 is another protocol.
    let odd = wire::ipv6_raw(v6(ALICE6), v6(WEB6), &[], 1, &[8, 0, 0, 0, 0, 5, 0, 1]);
    h.out_is(&odd, "denied_no_grant");
}

/// Step 2: "a packet whose 5-tuple names a flow opened at this host, decided under the
/// active policy generation and not past its grant's expiry, passes (`established`)".
#[test]
fn established_flows() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    let e = h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "established");
    assert!(!e.opened_flow);
    h.out_is(&udp(ALICE, WEB, 40000, 53, 20), "allowed");
    h.out_is(&udp(ALICE, WEB, 40000, 53, 20), "established");
    // Another source port is another flow.
    h.out_is(&tcp(ALICE, WEB, 40001, 80, flags::ACK), "allowed");
}

/// Step 2: "A flow decided under another generation ... is decided again by policy: a
/// revoked grant stops the next packet of an open flow (`denied_established`, and the flow
/// is forgotten)"; a grant still there keeps the flow.
#[test]
fn revoked_grant_stops_the_next_packet() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    h.out_is(&tcp(BOB, WEB, 40000, 80, flags::SYN), "allowed");
    let revoked = POLICY.replace(
        "[[allow]]\nname = \"alice-web\"\nprincipals = [\"alice@example.com\"]\nresources = [\"web\", \"web6\"]\n",
        "",
    );
    assert_ne!(revoked, POLICY);
    h.m.apply(policy(&revoked), h.now);
    h.out_is(
        &tcp(ALICE, WEB, 40000, 80, flags::ACK),
        "denied_established",
    );
    // Forgotten: the next packet is decided afresh.
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "denied_no_grant");
    // Bob's flow is re-decided and kept: decided (`allowed`), then the fast path.
    h.out_is(&tcp(BOB, WEB, 40000, 80, flags::ACK), "allowed");
    h.out_is(&tcp(BOB, WEB, 40000, 80, flags::ACK), "established");
}

/// Inbound step 2: "A flow decided under another generation is decided again first
/// (revoked: `denied_established`, the flow is forgotten)".
#[test]
fn revoked_grant_stops_replies() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    let revoked = POLICY.replace("resources = [\"web\", \"web6\"]", "resources = [\"web6\"]");
    h.m.apply(policy(&revoked), h.now);
    h.in_is(
        &tcp(WEB, ALICE, 80, 40000, flags::SYN | flags::ACK),
        "denied_established",
    );
    h.in_is(
        &tcp(WEB, ALICE, 80, 40000, flags::ACK),
        "denied_unsolicited",
    );
}

/// Step 2: "... or past expiry, is decided again": a just-in-time grant ends its flows.
#[test]
fn grant_expiry_stops_the_flow() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, DB, 40000, 5432, flags::SYN), "allowed");
    h.now = NOW + 59;
    h.out_is(&tcp(ALICE, DB, 40000, 5432, flags::ACK), "established");
    h.in_is(&tcp(DB, ALICE, 5432, 40000, flags::ACK), "reply");
    h.now = NOW + 60; // expires_at is exclusive
    h.out_is(
        &tcp(ALICE, DB, 40000, 5432, flags::ACK),
        "denied_established",
    );
    h.out_is(&tcp(ALICE, DB, 40000, 5432, flags::ACK), "denied_no_grant");
}

/// Module docs, ambiguity 10: a reply past its grant's expiry re-decides the flow.
#[test]
fn replies_past_expiry_are_decided_again() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, DB, 40000, 5432, flags::SYN), "allowed");
    h.now = NOW + 60;
    h.in_is(
        &tcp(DB, ALICE, 5432, 40000, flags::ACK),
        "denied_established",
    );
}

/// "A principal is a device or a service-account key that is active (not expired)": an
/// expired key is an unknown source, and its open flow stops.
#[test]
fn expired_key_is_unknown() {
    let mut h = Host::connector();
    h.out_is(&tcp(CI, WEB, 40000, 80, flags::SYN), "allowed");
    h.now = NOW + 100;
    h.out_is(&tcp(CI, WEB, 40000, 80, flags::ACK), "denied_established");
    h.out_is(
        &tcp(CI, WEB, 40001, 80, flags::SYN),
        "denied_unknown_source",
    );
}

/// "FIN and RST are recorded on the flow ... they never end a flow by themselves (a forged
/// RST cannot close someone's log)"; "TCP sequence numbers are not tracked".
#[test]
fn out_of_window_rst_does_not_end_the_flow() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    let rst = |src: &str, dst: &str, sp, dp| {
        wire::datagram(
            ip(src),
            ip(dst),
            &L4::tcp_data(sp, dp, flags::RST, 0xdead_beef, 0, vec![]),
        )
    };
    h.out_is(&rst(ALICE, WEB, 40000, 80), "established");
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "established");
    h.in_is(&rst(WEB, ALICE, 80, 40000), "reply");
    h.in_is(&tcp(WEB, ALICE, 80, 40000, flags::ACK), "reply");
    h.out_is(
        &tcp(ALICE, WEB, 40000, 80, flags::FIN | flags::ACK),
        "established",
    );
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "established");
}

/// Outbound step 3: an ICMP error into protected space passes only when it quotes a reply
/// of an open flow and its outer addresses are the reply's, reversed ("a client tells a
/// resource about the resource's own reply").
#[test]
fn outbound_icmp_errors() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    h.out_is(&tcp(BOB, DB, 40000, 5432, flags::SYN), "allowed");
    let reply = tcp(WEB, ALICE, 80, 40000, flags::SYN | flags::ACK);
    h.in_is(&reply, "reply");
    for err in [
        IcmpError::Unreachable(3),
        IcmpError::TooBig(1200),
        IcmpError::TimeExceeded(0),
        IcmpError::ParamProblem(0),
        IcmpError::SourceQuench,
    ] {
        let e = wire::icmp_error(ip(ALICE), ip(WEB), err, &reply);
        h.out_is(&e, "icmp_error_related");
    }
    // The classic attack: bob tells db about alice's flow to web. Not related; decided by
    // policy as ICMP, and bob's grant to db is TCP 5432 only.
    let e = wire::icmp_error(ip(BOB), ip(DB), IcmpError::Unreachable(3), &reply);
    h.out_is(&e, "denied_no_grant");
    // Outer source not the quoted destination.
    let e = wire::icmp_error(ip(CAROL), ip(WEB), IcmpError::Unreachable(3), &reply);
    h.out_is(&e, "denied_no_grant");
    // Quoting the original direction is not a reply: alice may send ICMP to web, so policy
    // allows it (and opens a flow of its own).
    let original = tcp(ALICE, WEB, 40000, 80, flags::SYN);
    let e = wire::icmp_error(ip(ALICE), ip(WEB), IcmpError::Unreachable(3), &original);
    let x = h.out_is(&e, "allowed");
    assert!(x.opened_flow);
    // A quote cut before its ports relates to nothing (ambiguity 12).
    let cut = wire::quote_of(&tcp(DB, BOB, 5432, 40000, flags::ACK))[..22].to_vec();
    let e = wire::icmp_error_quoting(ip(BOB), ip(DB), IcmpError::Unreachable(3), cut);
    h.out_is(&e, "denied_no_grant");
    // The whole quote of bob's reply relates.
    let e = wire::icmp_error(
        ip(BOB),
        ip(DB),
        IcmpError::Unreachable(3),
        &tcp(DB, BOB, 5432, 40000, flags::ACK),
    );
    h.out_is(&e, "icmp_error_related");
    // IPv6: the quoted packet's header is read without extension headers.
    h.out_is(&tcp(ALICE6, WEB6, 40000, 80, flags::SYN), "allowed");
    let r6 = tcp(WEB6, ALICE6, 80, 40000, flags::SYN | flags::ACK);
    let e = wire::icmp_error(ip(ALICE6), ip(WEB6), IcmpError::TooBig(1280), &r6);
    h.out_is(&e, "icmp_error_related");
    let r6x = wire::ipv6(
        v6(WEB6),
        v6(ALICE6),
        &[Ext::DestOpts(vec![])],
        &L4::tcp(80, 40000, flags::ACK),
    );
    let e = wire::icmp_error(ip(ALICE6), ip(WEB6), IcmpError::TooBig(1280), &r6x);
    h.out_is(&e, "allowed");
}

/// Outbound step 3: only flows "decided under the active generation" relate (ambiguity 11:
/// a stale flow is not re-decided by an error).
#[test]
fn outbound_icmp_error_after_a_swap() {
    let mut h = Host::connector();
    h.out_is(&tcp(BOB, DB, 40000, 5432, flags::SYN), "allowed");
    h.m.apply(policy(POLICY), h.now);
    let reply = tcp(DB, BOB, 5432, 40000, flags::ACK);
    let e = wire::icmp_error(ip(BOB), ip(DB), IcmpError::Unreachable(1), &reply);
    h.out_is(&e, "denied_no_grant");
    // Decided again under the new generation (still allowed), then related.
    h.out_is(&tcp(BOB, DB, 40000, 5432, flags::ACK), "allowed");
    h.out_is(&e, "icmp_error_related");
}

// ------------------------------------------------------------------ inbound

/// Inbound step 2: "a packet whose reversed 5-tuple names a flow opened at this host passes
/// (`reply`)"; replies pass only inbound.
#[test]
fn replies_only_inbound() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    let synack = tcp(WEB, ALICE, 80, 40000, flags::SYN | flags::ACK);
    let e = h.in_is(&synack, "reply");
    assert!(e.passes && !e.opened_flow);
    // The same reply on the outbound hook is a protected source sent by a client.
    h.out_is(&synack, "denied_unsolicited");
    // The original direction on the inbound hook: inbound hooks never open flows.
    h.in_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "denied_direction");
    // A reply to a flow that was never opened.
    h.in_is(
        &tcp(WEB, ALICE, 80, 40001, flags::ACK),
        "denied_unsolicited",
    );
    // UDP and echo.
    h.out_is(&udp(ALICE, WEB, 5353, 53, 30), "allowed");
    h.in_is(&udp(WEB, ALICE, 53, 5353, 60), "reply");
    let ping = wire::datagram(ip(ALICE), ip(WEB), &L4::echo_request(false, 77, 1));
    h.out_is(&ping, "allowed");
    let pong = wire::datagram(ip(WEB), ip(ALICE), &L4::echo_reply(false, 77, 1));
    h.in_is(&pong, "reply");
}

/// "an ICMP echo request is never a reply".
#[test]
fn echo_request_is_never_a_reply() {
    let mut h = Host::connector();
    h.out_is(
        &wire::datagram(ip(ALICE), ip(WEB), &L4::echo_request(false, 77, 1)),
        "allowed",
    );
    let back = wire::datagram(ip(WEB), ip(ALICE), &L4::echo_request(false, 77, 2));
    h.in_is(&back, "denied_unsolicited");
    h.out_is(
        &wire::datagram(ip(ALICE6), ip(WEB6), &L4::echo_request(true, 78, 1)),
        "allowed",
    );
    let back = wire::datagram(ip(WEB6), ip(ALICE6), &L4::echo_request(true, 78, 2));
    h.in_is(&back, "denied_unsolicited");
    let back = wire::datagram(ip(WEB6), ip(ALICE6), &L4::echo_reply(true, 78, 1));
    h.in_is(&back, "reply");
}

/// Inbound step 3: an ICMP error toward a client passes when it quotes an
/// original-direction packet of an open flow and goes to the quoted source; "the outer
/// source may be any router on the path".
#[test]
fn inbound_icmp_errors() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    let original = tcp(ALICE, WEB, 40000, 80, flags::SYN);
    for src in [WEB, NET, INTERNET] {
        let e = wire::icmp_error(ip(src), ip(ALICE), IcmpError::TimeExceeded(0), &original);
        h.in_is(&e, "icmp_error_related");
    }
    // The same error toward bob (not the quoted source) is not related.
    let e = wire::icmp_error(ip(WEB), ip(BOB), IcmpError::Unreachable(1), &original);
    h.in_is(&e, "denied_unsolicited");
    // Quoting the reply direction is not related.
    let reply = tcp(WEB, ALICE, 80, 40000, flags::ACK);
    let e = wire::icmp_error(ip(WEB), ip(ALICE), IcmpError::Unreachable(1), &reply);
    h.in_is(&e, "denied_unsolicited");
    // Quoting a flow that never was.
    let never = tcp(ALICE, WEB, 40099, 80, flags::SYN);
    let e = wire::icmp_error(ip(WEB), ip(ALICE), IcmpError::Unreachable(1), &never);
    h.in_is(&e, "denied_unsolicited");
    // The classic attack's twin: web tells alice about alice's flow to web — passes; the
    // same error from bob to db's side, outbound, does not (see outbound_icmp_errors).
    let e = wire::icmp_error(ip(WEB), ip(ALICE), IcmpError::Unreachable(3), &original);
    h.in_is(&e, "icmp_error_related");
    // IPv6, quoting as much as fits in 1280 bytes.
    let big = wire::datagram(ip(ALICE6), ip(WEB6), &L4::udp(40000, 53, vec![9; 1400]));
    h.out_is(&big, "allowed");
    let e = wire::icmp_error(ip(WEB6), ip(ALICE6), IcmpError::TooBig(1280), &big);
    assert_eq!(e.len(), 1280);
    h.in_is(&e, "icmp_error_related");
    // An echo flow's error quoting the echo request.
    let ping = wire::datagram(ip(ALICE), ip(WEB), &L4::echo_request(false, 42, 1));
    h.out_is(&ping, "allowed");
    let e = wire::icmp_error(ip(NET), ip(ALICE), IcmpError::Unreachable(1), &ping);
    h.in_is(&e, "icmp_error_related");
}

/// Inbound step 4: "from an audit-mode resource's address, `audit`; from any other
/// protected address, `denied_unsolicited`; toward a protected address, `denied_direction`;
/// neither, `unprotected`".
#[test]
fn inbound_otherwise() {
    let mut h = Host::connector();
    h.in_is(&tcp(LEGACY, ALICE, 80, 40000, flags::SYN), "audit");
    h.in_is(
        &tcp(WEB, ALICE, 22, 40000, flags::SYN),
        "denied_unsolicited",
    );
    h.in_is(
        &tcp(UNKNOWN, WEB, 40000, 80, flags::SYN),
        "denied_direction",
    );
    h.in_is(&tcp(INTERNET, ALICE, 443, 40000, flags::ACK), "unprotected");
    // Toward an audit-mode address on the inbound hook: the steps name only the source
    // (ambiguity 16).
    h.in_is(
        &tcp(UNKNOWN, LEGACY, 40000, 80, flags::SYN),
        "denied_direction",
    );
}

// ------------------------------------------------------------------ fragments

/// Outbound step 1: later fragments "pass (`fragment_allowed`) when their datagram's first
/// fragment opened or matched a flow at this hook under the active policy generation ...
/// Otherwise they pass as `unprotected` when neither address is in protected space, as
/// `audit` when the destination is an audit-mode address, and are dropped
/// (`denied_fragment`) otherwise."
#[test]
fn later_fragments_outbound() {
    let mut h = Host::connector();
    let dg = |src: &str, dst: &str, id: u16| {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
            unreachable!()
        };
        wire::fragment_v4(
            &wire::ipv4(
                &V4 {
                    id,
                    ..V4::new(s, d)
                },
                &L4::udp(40000, 53, vec![3; 2500]),
            ),
            1500,
        )
    };
    // Without a first fragment.
    let f = dg(ALICE, WEB, 1);
    h.out_is(&f[1], "denied_fragment");
    // Later fragments before the first are dropped; after it they follow.
    h.out_is(&f[0], "allowed");
    h.out_is(&f[1], "fragment_allowed");
    // A second datagram on the open flow: its first fragment matches the flow.
    let f2 = dg(ALICE, WEB, 2);
    h.out_is(&f2[0], "established");
    h.out_is(&f2[1], "fragment_allowed");
    // The same id under another protocol is another datagram.
    let mut other = f[1].clone();
    other[9] = 6;
    wire::fix_v4_checksum(&mut other);
    h.out_is(&other, "denied_fragment");
    // Unprotected and audit.
    h.out_is(&dg(ALICE, INTERNET, 3)[1], "unprotected");
    h.out_is(&dg(UNKNOWN, LEGACY, 4)[1], "audit");
    // A first fragment denied: its later fragments are denied.
    let f5 = dg(CAROL, WEB, 5);
    h.out_is(&f5[0], "denied_no_grant");
    h.out_is(&f5[1], "denied_fragment");
    // A first fragment that passes as audit from an unknown source leaves no state.
    let f6 = dg(UNKNOWN, LEGACY, 6);
    h.out_is(&f6[0], "audit");
    h.out_is(&f6[1], "audit");
    // A new generation: the datagram's first fragment was matched under the old one.
    let f7 = dg(ALICE, WEB, 7);
    h.out_is(&f7[0], "established");
    h.m.apply(policy(POLICY), h.now);
    h.out_is(&f7[1], "denied_fragment");
    // Fragments of one hook do not open the other: a first fragment outbound does not let
    // later fragments of the same datagram through inbound.
    let f8 = dg(ALICE, WEB, 8);
    // The flow's first packet since the new generation: decided again, still allowed.
    h.out_is(&f8[0], "allowed");
    h.in_is(&f8[1], "denied_fragment");
    // The overlapping-fragment attack (offset 8 rewriting the TCP header) is a later
    // fragment like any other: with no first fragment, dropped.
    let v = wire::malformed(ip(ALICE), ip(WEB), 40000, 80)
        .into_iter()
        .find(|v| v.label.starts_with("ipv4 overlapping fragment"))
        .unwrap();
    assert_eq!(
        h.frame(Direction::Outbound, &v.frame).reason,
        "denied_fragment"
    );
}

/// IPv6 fragments "are named without a protocol, as the reassembly key of RFC 8200 is";
/// a destination options header after the fragment header (RFC 8200 §4.5: fragmentable
/// part) does not stop the first fragment from opening the flow, and the later fragments
/// follow it.
#[test]
fn v6_fragments_with_destination_options_follow_their_first() {
    let mut h = Host::connector();
    let big = wire::ipv6(
        v6(ALICE6),
        v6(WEB6),
        &[Ext::HopByHop(vec![]), Ext::DestOpts(vec![])],
        &L4::udp(40000, 53, vec![5; 3000]),
    );
    let frags = wire::fragment_v6(&big, 1280, 0xabcd);
    assert_eq!(frags.len(), 3);
    // The unfragmentable part is the hop-by-hop header; destination options come after the
    // fragment header.
    assert_eq!(frags[0][6], 0);
    assert_eq!(
        frags[0][40], 44,
        "hop-by-hop's next header is the fragment header"
    );
    assert_eq!(
        frags[0][48], 60,
        "fragment header's next header is destination options"
    );
    h.out_is(&frags[0], "allowed");
    h.out_is(&frags[1], "fragment_allowed");
    h.out_is(&frags[2], "fragment_allowed");
    // Without its first: dropped.
    let other = wire::fragment_v6(&big, 1280, 0xabce);
    h.out_is(&other[2], "denied_fragment");
}

/// Inbound step 1: "as outbound, for datagrams whose first fragment matched a flow at this
/// hook; without one, `unprotected` when neither address is protected, `audit` when the
/// source is an audit-mode address, `denied_fragment` otherwise".
#[test]
fn later_fragments_inbound() {
    let mut h = Host::connector();
    h.out_is(&udp(ALICE, WEB, 40000, 53, 20), "allowed");
    let reply = wire::ipv4(
        &V4 {
            id: 99,
            ..V4::new(v4(WEB), v4(ALICE))
        },
        &L4::udp(53, 40000, vec![1; 4000]),
    );
    let f = wire::fragment_v4(&reply, 1500);
    h.in_is(&f[1], "denied_fragment");
    h.in_is(&f[0], "reply");
    h.in_is(&f[1], "fragment_allowed");
    h.in_is(&f[2], "fragment_allowed");
    let from_legacy = wire::fragment_v4(
        &wire::ipv4(
            &V4 {
                id: 100,
                ..V4::new(v4(LEGACY), v4(UNKNOWN))
            },
            &L4::udp(53, 1, vec![1; 3000]),
        ),
        1500,
    );
    h.in_is(&from_legacy[1], "audit");
    let internet = wire::fragment_v4(
        &wire::ipv4(
            &V4 {
                id: 101,
                ..V4::new(v4(INTERNET), v4(ALICE))
            },
            &L4::udp(53, 1, vec![1; 3000]),
        ),
        1500,
    );
    h.in_is(&internet[1], "unprotected");
}

// ------------------------------------------------------------------ roles

/// "On a device, the only principal is the device itself"; "on a device, the CIDRs of every
/// remote network" are protected.
#[test]
fn device_knows_only_itself() {
    let mut h = Host::device("alice-laptop");
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    h.out_is(&tcp(ALICE6, WEB6, 40000, 80, flags::SYN), "allowed");
    h.in_is(&tcp(WEB6, ALICE6, 80, 40000, flags::ACK), "reply");
    // Another principal's address leaving this device is an unknown source here.
    h.out_is(
        &tcp(BOB, WEB, 40000, 80, flags::SYN),
        "denied_unknown_source",
    );
    // Every remote network is protected on a device, including the lab.
    h.out_is(
        &tcp(ALICE, "198.19.200.5", 40000, 22, flags::SYN),
        "denied_no_grant",
    );
    h.in_is(&tcp(INTERNET, ALICE, 443, 40000, flags::ACK), "unprotected");
    h.in_is(
        &tcp("198.19.200.5", ALICE, 22, 40000, flags::SYN),
        "denied_unsolicited",
    );

    let mut lab = Host {
        m: Model::new(policy(POLICY), Role::Connector("lab-conn".into()), NOW),
        now: NOW,
    };
    // The lab connector protects only the lab: the datacenter is unprotected there.
    lab.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "unprotected");
    // No grant names a lab resource: the lab connector knows no principal at all.
    lab.out_is(
        &tcp(ALICE, "198.19.200.5", 40000, 22, flags::SYN),
        "denied_unknown_source",
    );
}

/// "Sources a connector knows": the principals named by a grant active at the last apply
/// that concerns a resource of its networks (least knowledge); others are unknown sources.
#[test]
fn connector_knows_the_principals_its_grants_name() {
    let mut h = Host::connector();
    // Carol has a grant here (db), not for web: a known principal without a grant.
    h.out_is(&tcp(CAROL, WEB, 40000, 443, flags::SYN), "denied_no_grant");
    // Dave has no grant anywhere: the connector does not know him.
    h.out_is(
        &tcp(DAVE, DB, 40000, 5432, flags::SYN),
        "denied_unknown_source",
    );
}

// ------------------------------------------------------------------ model

/// The harness clears the kernel's flow tables: replies are then unsolicited, packets are
/// decided afresh.
#[test]
fn forget_flows() {
    let mut h = Host::connector();
    h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::SYN), "allowed");
    h.m.forget_flows();
    assert_eq!(h.m.flow_count(), 0);
    h.in_is(
        &tcp(WEB, ALICE, 80, 40000, flags::ACK),
        "denied_unsolicited",
    );
    let e = h.out_is(&tcp(ALICE, WEB, 40000, 80, flags::ACK), "allowed");
    assert!(e.opened_flow);
}

/// Every reason of the contract is listed once, with whether it passes.
#[test]
fn reason_names() {
    let names = Model::reason_names();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    let passing = [
        "not_ip",
        "fragment_allowed",
        "established",
        "icmp_error_related",
        "unprotected",
        "audit",
        "allowed",
        "reply",
        "neighbor_discovery",
    ];
    for n in &names {
        assert_eq!(Model::reason_passes(n), Some(passing.contains(n)), "{n}");
    }
    assert_eq!(names.len(), 19);
}

/// "IPv6 neighbour discovery (ICMPv6 types 133-137) with hop limit 255 ... passes in both
/// directions": an on-link resource's advertisement reaches a device; one that crossed a
/// router (hop limit below 255) is ordinary ICMPv6 from protected space.
#[test]
fn neighbor_discovery_is_the_links_business() {
    let mut h = Host::device("alice-laptop");
    let na = |hop: u8| {
        let mut d = wire::ipv6(
            v6(WEB6),
            v6(ALICE6),
            &[],
            &L4::other(
                58,
                vec![
                    136, 0, 0, 0, 0x60, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0x10,
                ],
            ),
        );
        d[7] = hop;
        d
    };
    h.in_is(&na(255), "neighbor_discovery");
    h.out_is(&na(255), "neighbor_discovery");
    h.in_is(&na(64), "denied_unsolicited");
}
