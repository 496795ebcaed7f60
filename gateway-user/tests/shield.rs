//! The shield: the physical links of a host with the tunnel on (docs/dataplane.md,
//! "Shield"). Crafted frames through the shield programs (BPF_PROG_TEST_RUN), against maps
//! filled by the real compiler and writer from `tests/data/fixtures.toml`.
//!
//! Every denial has its control: the same frame at the same hook with the tunnel off (the
//! policy programs a host without the tunnel attaches there) passes or is decided by policy,
//! or, for the handshake limit, another source, another message type, or no limit.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{EventKind, Reason, maps};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, action, fragment_v4, frame, load_policy, tc_action, unix_now},
};
use gateway_user::Dataplane;
use std::net::IpAddr;

const POLICY: &str = include_str!("data/fixtures.toml");
const CONN: &str = "connector:conn-1";
const ALICE_DEV: &str = "device:alice-laptop";
const WG_PORT: u16 = 51_820;
/// One initiation per second per source prefix, three in a burst: a test sends its burst
/// well within the second it takes to earn one more.
const RATE: u32 = 1;
const BURST: u32 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Loads the fixtures for `host` with the tunnel on.
fn host(h: &str) -> Dataplane {
    let mut dp = Dataplane::load().unwrap();
    let now = unix_now();
    let text = POLICY.replace(
        "EXPIRES_AT",
        &format!("\"{}\"", policy_compiler::model::format_rfc3339(now + 3600)),
    );
    load_policy(&mut dp, &text, h, now).unwrap();
    let cfg = dp.config().unwrap().with_tunnel(WG_PORT, RATE, BURST);
    dp.set_config(&cfg).unwrap();
    dp
}

#[derive(Clone, Copy, Debug)]
enum Hook {
    /// XDP ingress of a physical link.
    Xdp,
    /// tcx egress of a physical link.
    Tc,
}

/// Runs `f` at `hook` through the shield (`shield`) or the policy program, checks that
/// exactly one reason was counted and that the action agrees with it; returns the reason.
fn run(dp: &mut Dataplane, hook: Hook, shield: bool, f: &[u8]) -> Reason {
    let before = dp.verdict_stats().unwrap();
    let passed = match hook {
        Hook::Xdp => {
            let prog = if shield {
                dp.shield_xdp().unwrap()
            } else {
                dp.xdp().unwrap()
            };
            testkit::run_xdp(prog, f).unwrap() == action::PASS
        }
        Hook::Tc => {
            let name = if shield {
                maps::PROG_SHIELD_TC_EGRESS
            } else {
                maps::PROG_TC_EGRESS
            };
            testkit::run_tc(dp.tc_named(name).unwrap(), f).unwrap() == tc_action::NEXT
        }
    };
    let got = dp.verdict_stats().unwrap().since(&before);
    let reason = got
        .single()
        .unwrap_or_else(|| panic!("{hook:?}: reasons {:?}", got.nonzero()));
    assert_eq!(
        passed,
        reason.passes(),
        "{hook:?}: action disagrees with {}",
        reason.name()
    );
    reason
}

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp { src, dst }
}

fn pkt(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    frame(ip(src), ip(dst), l4, &[], b"")
}

/// A WireGuard message of `ty` with `len` bytes in all (type, three reserved zero bytes,
/// then filler) to the tunnel's port.
fn wg(src: &str, dst: &str, ty: u8, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len];
    payload[0] = ty;
    for (i, b) in payload.iter_mut().enumerate().skip(4) {
        *b = i as u8;
    }
    frame(
        ip(src),
        ip(dst),
        L4::Udp {
            src: 40_000,
            dst: WG_PORT,
        },
        &[],
        &payload,
    )
}

fn initiation(src: &str) -> Vec<u8> {
    wg(src, "203.0.113.1", 1, 148)
}

/// One case: a frame at a hook, what the shield does, what the policy program does with it
/// (the control), and the rule.
struct Case {
    name: &'static str,
    host: &'static str,
    hook: Hook,
    frame: Vec<u8>,
    shield: Reason,
    policy: Reason,
    why: &'static str,
}

fn cases() -> Vec<Case> {
    use Reason::*;
    let outbound_shield = "shield: protected traffic crosses a physical link only in the tunnel";
    let cleartext = "shield: cleartext from protected space never crosses a physical link";
    let untouched = "shield: what touches no protected space passes untouched";
    let web_frags = fragment_v4(
        &frame(
            ip("198.19.0.10"),
            ip("198.18.1.5"),
            tcp(40_000, 443),
            &[],
            &[7u8; 600],
        ),
        300,
        77,
    );
    vec![
        Case {
            name: "a principal's source, spoofed on the client link, toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: pkt("198.19.0.10", "198.18.1.5", tcp(40_000, 443)),
            shield: DeniedUntunneled,
            policy: Allowed,
            why: outbound_shield,
        },
        Case {
            name: "an unknown source toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: pkt("198.19.0.99", "198.18.1.5", tcp(40_000, 443)),
            shield: DeniedUntunneled,
            policy: DeniedUnknownSource,
            why: outbound_shield,
        },
        Case {
            name: "IPv6: a principal's source toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: pkt("2001:db8:ff::10", "2001:db8:1::5", tcp(40_000, 443)),
            shield: DeniedUntunneled,
            policy: Allowed,
            why: outbound_shield,
        },
        Case {
            name: "a first fragment toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: web_frags[0].clone(),
            shield: DeniedUntunneled,
            policy: Allowed,
            why: outbound_shield,
        },
        Case {
            name: "a later fragment toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: web_frags[1].clone(),
            shield: DeniedUntunneled,
            policy: DeniedFragment,
            why: outbound_shield,
        },
        Case {
            name: "a truncated packet toward a resource",
            host: CONN,
            hook: Hook::Xdp,
            frame: pkt("198.19.0.10", "198.18.1.5", tcp(1, 443))[..14 + 20 + 10].to_vec(),
            shield: DeniedMalformed,
            policy: DeniedMalformed,
            why: "parsing: what is malformed is dropped, shield or not",
        },
        Case {
            name: "to the connector's own address (SSH)",
            host: CONN,
            hook: Hook::Xdp,
            frame: pkt("198.19.0.99", "203.0.113.1", tcp(40_000, 22)),
            shield: Unprotected,
            policy: Unprotected,
            why: untouched,
        },
        Case {
            name: "WireGuard data to the connector",
            host: CONN,
            hook: Hook::Xdp,
            frame: wg("198.19.0.10", "203.0.113.1", 4, 128),
            shield: Unprotected,
            policy: Unprotected,
            why: untouched,
        },
        Case {
            name: "a reply from a resource out of a client link",
            host: CONN,
            hook: Hook::Tc,
            frame: pkt("198.18.1.5", "198.19.0.10", tcp(443, 40_000)),
            shield: DeniedUntunneled,
            policy: DeniedUnsolicited,
            why: cleartext,
        },
        Case {
            name: "the connector's own traffic out of a client link",
            host: CONN,
            hook: Hook::Tc,
            frame: pkt("203.0.113.1", "198.19.0.10", tcp(22, 40_000)),
            shield: Unprotected,
            policy: Unprotected,
            why: untouched,
        },
        Case {
            name: "device: toward a resource out of the uplink",
            host: ALICE_DEV,
            hook: Hook::Tc,
            frame: pkt("198.19.0.10", "198.18.1.5", tcp(40_000, 443)),
            shield: DeniedUntunneled,
            policy: Allowed,
            why: "shield: protected traffic leaves a device only encrypted",
        },
        Case {
            name: "device: toward the internet out of the uplink",
            host: ALICE_DEV,
            hook: Hook::Tc,
            frame: pkt("198.19.0.10", "203.0.113.9", tcp(40_000, 443)),
            shield: Unprotected,
            policy: Unprotected,
            why: untouched,
        },
        Case {
            name: "device: from a resource into the uplink",
            host: ALICE_DEV,
            hook: Hook::Xdp,
            frame: pkt("198.18.1.5", "198.19.0.10", tcp(443, 40_000)),
            shield: DeniedUntunneled,
            policy: DeniedUnsolicited,
            why: cleartext,
        },
        Case {
            name: "device: WireGuard from the connector into the uplink",
            host: ALICE_DEV,
            hook: Hook::Xdp,
            frame: wg("203.0.113.1", "198.19.0.10", 4, 128),
            shield: Unprotected,
            policy: Unprotected,
            why: untouched,
        },
    ]
}

#[test]
fn the_shield_drops_cleartext_protected_traffic() {
    if skip_unless_privileged!() {
        return;
    }
    let mut hosts: std::collections::HashMap<&str, Dataplane> = Default::default();
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let dp = hosts.entry(c.host).or_insert_with(|| host(c.host));
        dp.reset_traffic_state().unwrap();
        let got = run(dp, c.hook, true, &c.frame);
        if got != c.shield {
            failures.push(format!(
                "{} [{}]: shield {}, want {}",
                c.name,
                c.why,
                got.name(),
                c.shield.name()
            ));
        }
        // The control: the policy program at the same hook decides it otherwise.
        dp.reset_traffic_state().unwrap();
        let got = run(dp, c.hook, false, &c.frame);
        if got != c.policy {
            failures.push(format!(
                "{} (control, tunnel off): {}, want {}",
                c.name,
                got.name(),
                c.policy.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} shield cases passed, each with its control", cases.len());
}

#[test]
fn a_denied_untunneled_packet_is_reported() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = host(CONN);
    dp.reset_traffic_state().unwrap();
    let f = pkt("198.19.0.10", "198.18.1.5", tcp(40_000, 443));
    assert_eq!(run(&mut dp, Hook::Xdp, true, &f), Reason::DeniedUntunneled);
    let evs = dp.drain_events();
    assert!(
        evs.iter()
            .any(|e| e.kind == EventKind::Deny as u8 && e.reason == Reason::DeniedUntunneled as u8),
        "no deny event: {evs:?}"
    );
}

#[test]
fn handshake_initiations_are_limited_per_source_prefix() {
    if skip_unless_privileged!() {
        return;
    }
    use Reason::*;
    let mut dp = host(CONN);
    dp.reset_traffic_state().unwrap();
    let mut xdp = |f: &[u8]| run(&mut dp, Hook::Xdp, true, f);

    // A burst from one source: `BURST` pass, then the bucket is empty.
    for i in 0..BURST {
        assert_eq!(xdp(&initiation("192.0.2.7")), Unprotected, "initiation {i}");
    }
    assert_eq!(xdp(&initiation("192.0.2.7")), HandshakeRateLimited);
    assert_eq!(xdp(&initiation("192.0.2.7")), HandshakeRateLimited);
    // Another source is unaffected.
    assert_eq!(xdp(&initiation("192.0.2.8")), Unprotected);
    // Other WireGuard messages of the limited source are not limited: response (2, 92
    // bytes), cookie reply (3, 64 bytes), data (4), and a type-1 message of another length
    // (not an initiation: boringtun refuses it).
    assert_eq!(xdp(&wg("192.0.2.7", "203.0.113.1", 2, 92)), Unprotected);
    assert_eq!(xdp(&wg("192.0.2.7", "203.0.113.1", 3, 64)), Unprotected);
    assert_eq!(xdp(&wg("192.0.2.7", "203.0.113.1", 4, 148)), Unprotected);
    assert_eq!(xdp(&wg("192.0.2.7", "203.0.113.1", 1, 147)), Unprotected);
    // A 148-byte message whose reserved bytes are not zero is no initiation either.
    let mut odd = initiation("192.0.2.7");
    let at = odd.len() - 148 + 1;
    odd[at] = 1;
    assert_eq!(xdp(&odd), Unprotected);
    // The same bytes to another port are not WireGuard's business.
    let other_port = frame(
        ip("192.0.2.7"),
        ip("203.0.113.1"),
        L4::Udp {
            src: 40_000,
            dst: 51_821,
        },
        &[],
        &{
            let mut p = vec![0u8; 148];
            p[0] = 1;
            p
        },
    );
    assert_eq!(xdp(&other_port), Unprotected);

    // IPv6: the bucket is per /64. A neighbour in the same /64 shares it; the next /64 has
    // its own.
    for i in 0..BURST {
        assert_eq!(
            xdp(&wg("2001:db8:77:1::1", "2001:db8:9::1", 1, 148)),
            Unprotected,
            "v6 initiation {i}"
        );
    }
    assert_eq!(
        xdp(&wg("2001:db8:77:1::2", "2001:db8:9::1", 1, 148)),
        HandshakeRateLimited,
        "a /64 neighbour shares the bucket"
    );
    assert_eq!(
        xdp(&wg("2001:db8:77:2::1", "2001:db8:9::1", 1, 148)),
        Unprotected,
        "another /64 has its own"
    );

    // The limited initiation was reported (a deny event, limited per source like any).
    let evs = dp.drain_events();
    assert!(
        evs.iter()
            .any(|e| e.kind == EventKind::Deny as u8 && e.reason == HandshakeRateLimited as u8),
        "no event for a limited handshake: {evs:?}"
    );
}

#[test]
fn without_a_limit_or_a_port_initiations_all_pass() {
    if skip_unless_privileged!() {
        return;
    }
    // Control of the limit: the same burst with no limit configured, then with the tunnel
    // listening on no port (a device), then at egress (the limit is an ingress rule).
    let mut dp = host(CONN);
    dp.reset_traffic_state().unwrap();
    let cfg = dp.config().unwrap().with_tunnel(WG_PORT, 0, 0);
    dp.set_config(&cfg).unwrap();
    for _ in 0..2 * BURST {
        assert_eq!(
            run(&mut dp, Hook::Xdp, true, &initiation("192.0.2.7")),
            Reason::Unprotected
        );
    }
    let cfg = dp.config().unwrap().with_tunnel(0, RATE, BURST);
    dp.set_config(&cfg).unwrap();
    for _ in 0..2 * BURST {
        assert_eq!(
            run(&mut dp, Hook::Xdp, true, &initiation("192.0.2.7")),
            Reason::Unprotected
        );
    }
    let cfg = dp.config().unwrap().with_tunnel(WG_PORT, RATE, BURST);
    dp.set_config(&cfg).unwrap();
    for _ in 0..2 * BURST {
        assert_eq!(
            run(&mut dp, Hook::Tc, true, &initiation("192.0.2.7")),
            Reason::Unprotected
        );
    }
    // And the same configuration does limit at ingress: the control can fail.
    let mut last = Reason::Unprotected;
    for _ in 0..2 * BURST {
        last = run(&mut dp, Hook::Xdp, true, &initiation("192.0.2.7"));
    }
    assert_eq!(last, Reason::HandshakeRateLimited);
}
