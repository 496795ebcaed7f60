//! Packet fixtures through the real XDP program with BPF_PROG_TEST_RUN, under a policy that
//! protects the test ranges and allows one device everything there: each frame must
//! produce exactly one parse outcome, the action the policy gives it, and — for frames
//! that open a flow — the flow key a correct parser would produce (checked against the
//! fixture's own addresses and ports). Frames the parser cannot read are dropped.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{FlowKey, ParseOutcome, Reason};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{
        self, L4, action, expected_key, frame, ipv4_frag, load_policy, record_route, unix_now, v4,
        with_ipv4_option_bytes, with_ipv4_options, with_ipv6_ext,
    },
};
use gateway_user::Dataplane;

struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    outcome: ParseOutcome,
    /// The key the flow table must hold afterwards; `None` for frames that open no flow.
    key: Option<FlowKey>,
}

fn client4() -> std::net::IpAddr {
    "198.19.0.1".parse().unwrap()
}
fn client6() -> std::net::IpAddr {
    "2001:db8:ff::1".parse().unwrap()
}
fn server6() -> std::net::IpAddr {
    "2001:db8:1::10".parse().unwrap()
}

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp { src, dst }
}
fn udp(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}

fn fixtures() -> Vec<Fixture> {
    let (a4, b4, a6, b6) = (client4(), v4(1, 10), client6(), server6());
    let mut fx = vec![
        Fixture {
            name: "ipv4 tcp syn",
            frame: frame(a4, b4, tcp(40000, 22), &[], b""),
            outcome: ParseOutcome::Ipv4Tcp,
            key: Some(expected_key(a4, b4, tcp(40000, 22))),
        },
        Fixture {
            name: "ipv4 udp with payload",
            frame: frame(a4, b4, udp(5353, 53), &[], b"query"),
            outcome: ParseOutcome::Ipv4Udp,
            key: Some(expected_key(a4, b4, udp(5353, 53))),
        },
        Fixture {
            name: "ipv4 icmp echo request",
            frame: frame(a4, b4, L4::EchoRequest { id: 777 }, &[], b"ping"),
            outcome: ParseOutcome::Ipv4Icmp,
            key: Some(expected_key(a4, b4, L4::EchoRequest { id: 777 })),
        },
        Fixture {
            name: "ipv4 with 40 bytes of options (IHL 15): record route, end of list",
            frame: with_ipv4_option_bytes(
                frame(a4, b4, tcp(1, 443), &[], b""),
                0,
                &record_route(39),
            ),
            outcome: ParseOutcome::Ipv4Tcp,
            key: Some(expected_key(a4, b4, tcp(1, 443))),
        },
        Fixture {
            name: "ipv4 with a few NOPs and a timestamp option",
            frame: with_ipv4_option_bytes(
                frame(a4, b4, udp(1, 53), &[], b""),
                0,
                &[1, 1, 68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            outcome: ParseOutcome::Ipv4Udp,
            key: Some(expected_key(a4, b4, udp(1, 53))),
        },
        Fixture {
            name: "ipv4 with 40 NOP options is refused (more options than any stack sends)",
            frame: with_ipv4_options(frame(a4, b4, tcp(1, 443), &[], b""), 0, 40),
            outcome: ParseOutcome::Malformed,
            key: None,
        },
        Fixture {
            name: "ipv4 option whose length runs past the header",
            frame: with_ipv4_option_bytes(frame(a4, b4, tcp(1, 443), &[], b""), 0, &[7, 9, 4, 0]),
            outcome: ParseOutcome::Malformed,
            key: None,
        },
        Fixture {
            name: "ipv4 option with length 1",
            frame: with_ipv4_option_bytes(frame(a4, b4, tcp(1, 443), &[], b""), 0, &[7, 1, 0, 0]),
            outcome: ParseOutcome::Malformed,
            key: None,
        },
        Fixture {
            name: "ipv4 loose source route is refused",
            frame: with_ipv4_option_bytes(
                frame(a4, b4, tcp(1, 443), &[], b""),
                0,
                &[1, 131, 7, 4, 198, 18, 2, 10],
            ),
            outcome: ParseOutcome::SourceRoute,
            key: None,
        },
        Fixture {
            name: "ipv4 strict source route after a NOP is refused",
            frame: with_ipv4_option_bytes(
                frame(a4, b4, tcp(1, 443), &[], b""),
                0,
                &[1, 137, 7, 4, 198, 18, 2, 10],
            ),
            outcome: ParseOutcome::SourceRoute,
            key: None,
        },
        Fixture {
            name: "ipv4 first fragment keeps its ports",
            frame: ipv4_frag(frame(a4, b4, udp(1000, 2000), &[], &[0; 64]), true, 0),
            outcome: ParseOutcome::Ipv4Udp,
            key: Some(expected_key(a4, b4, udp(1000, 2000))),
        },
        Fixture {
            name: "ipv4 later fragment without its first is dropped",
            frame: ipv4_frag(frame(a4, b4, udp(1000, 2000), &[], &[0; 64]), false, 185),
            outcome: ParseOutcome::Ipv4Fragment,
            key: None,
        },
        Fixture {
            name: "ipv6 tcp",
            frame: frame(a6, b6, tcp(50000, 5432), &[], b""),
            outcome: ParseOutcome::Ipv6Tcp,
            key: Some(expected_key(a6, b6, tcp(50000, 5432))),
        },
        Fixture {
            name: "ipv6 udp",
            frame: frame(a6, b6, udp(4000, 4001), &[], b"x"),
            outcome: ParseOutcome::Ipv6Udp,
            key: Some(expected_key(a6, b6, udp(4000, 4001))),
        },
        Fixture {
            name: "ipv6 icmpv6 echo request",
            frame: frame(a6, b6, L4::EchoRequest { id: 42 }, &[], b""),
            outcome: ParseOutcome::Ipv6Icmp,
            key: Some(expected_key(a6, b6, L4::EchoRequest { id: 42 })),
        },
        Fixture {
            name: "ipv6 hop-by-hop, routing and destination options before udp",
            frame: with_ipv6_ext(
                frame(a6, b6, udp(7, 8), &[], b""),
                &[(0, 8), (43, 24), (60, 16)],
                0,
            ),
            outcome: ParseOutcome::Ipv6Udp,
            key: Some(expected_key(a6, b6, udp(7, 8))),
        },
        Fixture {
            name: "ipv6 authentication header length in 4-byte units",
            frame: with_ipv6_ext(frame(a6, b6, tcp(9, 10), &[], b""), &[(51, 12)], 0),
            outcome: ParseOutcome::Ipv6Tcp,
            key: Some(expected_key(a6, b6, tcp(9, 10))),
        },
        Fixture {
            name: "ipv6 first fragment keeps its ports",
            frame: with_ipv6_ext(frame(a6, b6, tcp(11, 12), &[], b""), &[(44, 8)], 0),
            outcome: ParseOutcome::Ipv6Tcp,
            key: Some(expected_key(a6, b6, tcp(11, 12))),
        },
        Fixture {
            name: "ipv6 later fragment without its first is dropped",
            frame: with_ipv6_ext(frame(a6, b6, udp(11, 12), &[], &[0; 32]), &[(44, 8)], 100),
            outcome: ParseOutcome::Ipv6Fragment,
            key: None,
        },
        Fixture {
            name: "ipv6 eight extension headers is the limit",
            frame: with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(60, 8); 8], 0),
            outcome: ParseOutcome::Ipv6Udp,
            key: Some(expected_key(a6, b6, udp(1, 2))),
        },
        Fixture {
            name: "ipv6 nine extension headers is too many",
            frame: with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(60, 8); 9], 0),
            outcome: ParseOutcome::TooManyExtHeaders,
            key: None,
        },
        Fixture {
            name: "ipv6 hop-by-hop after another header is malformed",
            frame: with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(60, 8), (0, 8)], 0),
            outcome: ParseOutcome::Malformed,
            key: None,
        },
        Fixture {
            name: "ipv6 two fragment headers are malformed",
            frame: with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(44, 8), (44, 8)], 0),
            outcome: ParseOutcome::Malformed,
            key: None,
        },
        Fixture {
            name: "ipv6 routing header with segments left is refused",
            frame: {
                let mut f = with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(43, 24)], 0);
                f[14 + 40 + 2] = 4; // segment routing
                f[14 + 40 + 3] = 1; // segments left
                f
            },
            outcome: ParseOutcome::SourceRoute,
            key: None,
        },
        Fixture {
            name: "ipv6 with an ipv4-mapped source is refused",
            frame: frame(
                "::ffff:198.19.0.1".parse().unwrap(),
                b6,
                udp(1, 2),
                &[],
                b"",
            ),
            outcome: ParseOutcome::MappedAddress,
            key: None,
        },
        Fixture {
            name: "ipv6 with an ipv4-mapped destination is refused",
            frame: frame(
                a6,
                "::ffff:198.18.1.10".parse().unwrap(),
                udp(1, 2),
                &[],
                b"",
            ),
            outcome: ParseOutcome::MappedAddress,
            key: None,
        },
        Fixture {
            name: "ipv4 tcp in one 802.1Q tag",
            frame: frame(a4, b4, tcp(3, 4), &[100], b""),
            outcome: ParseOutcome::Ipv4Tcp,
            key: Some(expected_key(a4, b4, tcp(3, 4))),
        },
        Fixture {
            name: "ipv6 udp in QinQ (802.1ad + 802.1Q)",
            frame: frame(a6, b6, udp(5, 6), &[200, 300], b""),
            outcome: ParseOutcome::Ipv6Udp,
            key: Some(expected_key(a6, b6, udp(5, 6))),
        },
        Fixture {
            name: "ipv4 options inside two VLAN tags",
            frame: with_ipv4_options(frame(a4, b4, udp(5, 6), &[1, 2], b""), 2, 4),
            outcome: ParseOutcome::Ipv4Udp,
            key: Some(expected_key(a4, b4, udp(5, 6))),
        },
        Fixture {
            name: "three VLAN tags is too many",
            frame: frame(a4, b4, tcp(3, 4), &[1, 2, 3], b""),
            outcome: ParseOutcome::TooManyVlans,
            key: None,
        },
    ];

    // ARP: not IP, passed untouched.
    let mut arp = frame(a4, b4, udp(1, 2), &[], b"");
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    fx.push(Fixture {
        name: "arp is not ip",
        frame: arp,
        outcome: ParseOutcome::NotIp,
        key: None,
    });

    // GRE inside IPv4: a protocol without ports.
    let mut gre = frame(a4, b4, udp(1, 2), &[], b"");
    gre[14 + 9] = 47;
    fx.push(Fixture {
        name: "ipv4 gre has no ports (and no resource allows it)",
        frame: gre,
        outcome: ParseOutcome::Ipv4Other,
        key: None,
    });

    // IPv6 "no next header" after a destination-options header: no ports.
    let nonext = with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(60, 8)], 0);
    let mut nonext = nonext[..14 + 48].to_vec();
    nonext[14 + 40] = 59;
    nonext[18..20].copy_from_slice(&8u16.to_be_bytes());
    fx.push(Fixture {
        name: "ipv6 no-next-header has no ports (and no resource allows it)",
        frame: nonext,
        outcome: ParseOutcome::Ipv6Other,
        key: None,
    });

    // Truncations: every one must count as truncated and record no flow.
    let base4 = frame(a4, b4, tcp(1000, 22), &[], b"");
    for (name, len) in [
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and so does
        // every NIC: the shortest truncation is an Ethernet header with nothing after it.
        ("ethernet header only", 14),
        ("ipv4 header cut", 14 + 12),
        ("tcp header cut after the ports", 14 + 20 + 6),
        ("vlan tag cut", 16),
    ] {
        let src = if name == "vlan tag cut" {
            frame(a4, b4, tcp(1, 2), &[5], b"")
        } else {
            base4.clone()
        };
        fx.push(Fixture {
            name,
            frame: src[..len].to_vec(),
            outcome: ParseOutcome::Truncated,
            key: None,
        });
    }
    // IHL claims options the frame does not have.
    // 14 + 20 + 8 + 12 = 54 bytes of frame, but IHL 15 claims a 60-byte IPv4 header.
    let mut ihl = frame(a4, b4, udp(1, 2), &[], &[0; 12]);
    ihl[14] = 0x4f;
    ihl[16..18].copy_from_slice(&80u16.to_be_bytes());
    fx.push(Fixture {
        name: "ipv4 options run past the frame",
        frame: ihl,
        outcome: ParseOutcome::Truncated,
        key: None,
    });
    fx.push(Fixture {
        name: "ipv6 extension header cut",
        frame: with_ipv6_ext(frame(a6, b6, udp(1, 2), &[], b""), &[(0, 8)], 0)[..14 + 40 + 1]
            .to_vec(),
        outcome: ParseOutcome::Truncated,
        key: None,
    });
    let udp6 = frame(a6, b6, udp(1, 2), &[], b"");
    fx.push(Fixture {
        name: "ipv6 udp header cut",
        frame: udp6[..14 + 40 + 4].to_vec(),
        outcome: ParseOutcome::Truncated,
        key: None,
    });

    // Malformed headers.
    let mut m = base4.clone();
    m[14] = 0x44;
    fx.push(Fixture {
        name: "ipv4 ihl below 5",
        frame: m,
        outcome: ParseOutcome::Malformed,
        key: None,
    });
    let mut m = base4.clone();
    m[14] = 0x65;
    fx.push(Fixture {
        name: "ethertype ipv4 but version 6",
        frame: m,
        outcome: ParseOutcome::Malformed,
        key: None,
    });
    let mut m = base4.clone();
    m[16..18].copy_from_slice(&19u16.to_be_bytes());
    fx.push(Fixture {
        name: "ipv4 total length shorter than its header",
        frame: m,
        outcome: ParseOutcome::Malformed,
        key: None,
    });
    let mut m = base4.clone();
    m[14 + 20 + 12] = 0x30;
    fx.push(Fixture {
        name: "tcp data offset below 5",
        frame: m,
        outcome: ParseOutcome::Malformed,
        key: None,
    });
    let mut m = frame(a6, b6, tcp(1, 2), &[], b"");
    m[14] = 0x40;
    fx.push(Fixture {
        name: "ethertype ipv6 but version 4",
        frame: m,
        outcome: ParseOutcome::Malformed,
        key: None,
    });
    fx
}

#[test]
fn every_fixture_gives_its_outcome_action_and_flow_key() {
    if skip_unless_privileged!() {
        return;
    }
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 30,
        "fixture table shrank: {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for f in &fixtures {
        // A fresh object per fixture: counters and flow table start empty.
        let mut dp = Dataplane::load().expect("load eBPF object");
        load_policy(
            &mut dp,
            testkit::OPEN_LAB,
            "connector:lab-connector",
            unix_now(),
        )
        .unwrap();
        let act = testkit::run_xdp(dp.xdp().unwrap(), &f.frame)
            .unwrap_or_else(|e| panic!("{}: {e:#}", f.name));
        let stats = dp.parse_stats().unwrap();
        let flows = dp.flows.all().unwrap();
        let mut problems = Vec::new();
        let want = if f.key.is_some() || f.outcome == ParseOutcome::NotIp {
            action::PASS
        } else {
            action::DROP
        };
        if act != want {
            problems.push(format!("action {act}, want {want}"));
        }
        if stats.get(f.outcome) != 1 || stats.total() != 1 {
            problems.push(format!(
                "counters {:?}, want exactly one {:?}",
                stats.0, f.outcome
            ));
        }
        match &f.key {
            Some(key) => {
                if flows.len() != 1 || flows[0].0 != *key || flows[0].1.packets != 1 {
                    problems.push(format!("flows {flows:?}, want one packet of {key:?}"));
                } else if flows[0].1.bytes != f.frame.len() as u64 {
                    problems.push(format!(
                        "flow bytes {}, want frame length {}",
                        flows[0].1.bytes,
                        f.frame.len()
                    ));
                }
            }
            None => {
                if !flows.is_empty() {
                    problems.push(format!("flows {flows:?}, want none"));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", f.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_parse_outcome_has_a_fixture() {
    let covered: std::collections::BTreeSet<_> = fixtures().iter().map(|f| f.outcome).collect();
    for outcome in ParseOutcome::ALL {
        assert!(covered.contains(&outcome), "no fixture for {outcome:?}");
    }
}

#[test]
fn counters_accumulate_across_packets_of_one_flow() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = Dataplane::load().unwrap();
    load_policy(
        &mut dp,
        testkit::OPEN_LAB,
        "connector:lab-connector",
        unix_now(),
    )
    .unwrap();
    let f = frame(client4(), v4(1, 1), udp(1111, 2222), &[], b"0123456789");
    for _ in 0..25 {
        testkit::run_xdp(dp.xdp().unwrap(), &f).unwrap();
    }
    let stats = dp
        .flows
        .get(&expected_key(client4(), v4(1, 1), udp(1111, 2222)))
        .unwrap()
        .expect("flow recorded");
    assert_eq!(stats.packets, 25);
    assert_eq!(stats.bytes, 25 * f.len() as u64);
    assert!(stats.last_seen_ns >= stats.first_seen_ns);
    assert_eq!(dp.parse_stats().unwrap().get(ParseOutcome::Ipv4Udp), 25);
    // One decision, then the fast path.
    let verdicts = dp.verdict_stats().unwrap();
    assert_eq!(verdicts.reason(Reason::Allowed), 1);
    assert_eq!(verdicts.reason(Reason::Established), 24);
    // The reverse direction is not a flow of its own.
    assert!(
        dp.flows
            .get(&expected_key(v4(1, 1), client4(), udp(2222, 1111)))
            .unwrap()
            .is_none()
    );
}
