//! The reference model's tunnel interface and shield against the contract
//! (`docs/dataplane.md`, "Tunnel interface" and "Shield"), one test per rule.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use gateway_model::wire::{self, L4};
use gateway_model::{Direction, Model, Role, ShieldHook, Tunnel};

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["conn"]

[[resource]]
name = "web"
network = "dc"
address = "198.18.1.10"
tcp = ["443"]

[[resource]]
name = "web6"
network = "dc"
address = "2001:db8:1::10"
tcp = ["443"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["198.19.0.10", "2001:db8:ff::10"]

[[allow]]
name = "alice-web"
principals = ["alice@example.com"]
resources = ["web", "web6"]
"#;

const TUNNEL: Tunnel = Tunnel {
    wg_port: 51_820,
    handshakes_per_source: 1,
    handshake_burst: 2,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn model(role: Role) -> Model {
    let policy = policy_compiler::parse(POLICY, "p.toml", NOW)
        .unwrap()
        .policy;
    let mut m = Model::new(policy, role, NOW);
    m.set_tunnel(TUNNEL);
    m
}

fn connector() -> Model {
    model(Role::Connector("conn".into()))
}

fn tcp(s: &str, d: &str, sport: u16, dport: u16) -> Vec<u8> {
    wire::datagram(ip(s), ip(d), &L4::tcp(sport, dport, 0x02))
}

fn wg(s: &str, ty: u8, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len];
    payload[0] = ty;
    wire::frame(ip(s), ip("203.0.113.1"), &L4::udp(40_000, 51_820, payload))
}

/// "Tunnel interface": the same rules from the IP header on, the same directions.
#[test]
fn the_tunnel_interface_decides_bare_ip_packets_by_policy() {
    let mut m = connector();
    let out = |m: &mut Model, p: &[u8]| m.packet_l3(Direction::Outbound, 0x0800, p, NOW).reason;
    assert_eq!(
        out(&mut m, &tcp("198.19.0.10", "198.18.1.10", 1, 443)),
        "allowed"
    );
    assert_eq!(
        out(&mut m, &tcp("198.19.0.99", "198.18.1.10", 1, 443)),
        "denied_unknown_source"
    );
    // The reply at the tunnel's egress (inbound on a connector).
    let reply = wire::datagram(ip("198.18.1.10"), ip("198.19.0.10"), &L4::tcp(443, 1, 0x12));
    assert_eq!(
        m.packet_l3(Direction::Inbound, 0x0800, &reply, NOW).reason,
        "reply"
    );
    let v6 = tcp("2001:db8:ff::10", "2001:db8:1::10", 1, 443);
    assert_eq!(
        m.packet_l3(Direction::Outbound, 0x86dd, &v6, NOW).reason,
        "allowed"
    );
}

/// "Tunnel interface": through the tunnel, protected space and nothing else — what a
/// physical link passes as `unprotected` is dropped there, both ways and in both roles.
#[test]
fn outside_protected_space_is_dropped_at_the_tunnel_interface() {
    for mut m in [connector(), model(Role::Device("alice-laptop".into()))] {
        for dir in [Direction::Outbound, Direction::Inbound] {
            let e = m.packet_l3(dir, 0x0800, &tcp("198.19.0.10", "203.0.113.7", 1, 22), NOW);
            assert_eq!(e.reason, "denied_outside_protected", "{dir:?}");
            assert!(!e.passes);
        }
        // Control: the same packet on a physical link is none of the gateway's business.
        let frame = wire::frame(ip("198.19.0.10"), ip("203.0.113.7"), &L4::tcp(1, 22, 0x02));
        assert_eq!(
            m.packet(Direction::Outbound, &frame, NOW).reason,
            "unprotected"
        );
    }
}

/// "Tunnel interface": the protocol must agree with the version nibble, and what is not IP
/// is malformed there.
#[test]
fn the_protocol_must_agree_and_nothing_else_is_ip() {
    let mut m = connector();
    let v4 = tcp("198.19.0.10", "198.18.1.10", 1, 443);
    let v6 = tcp("2001:db8:ff::10", "2001:db8:1::10", 1, 443);
    for (proto, p) in [(0x86dd, &v4), (0x0800, &v6), (0x0806, &v4), (0x8100, &v4)] {
        let e = m.packet_l3(Direction::Outbound, proto, p, NOW);
        assert_eq!(e.reason, "denied_malformed", "protocol {proto:#06x}");
        assert!(!e.passes);
    }
    // Control: the same bytes with their own protocol.
    assert_eq!(
        m.packet_l3(Direction::Outbound, 0x0800, &v4, NOW).reason,
        "allowed"
    );
}

/// "Shield": protected addresses never cross a physical link in the clear, either way,
/// on either role; the rest passes untouched.
#[test]
fn the_shield_drops_protected_addresses_in_the_clear() {
    for role in [
        Role::Connector("conn".into()),
        Role::Device("alice-laptop".into()),
    ] {
        let mut m = model(role.clone());
        for hook in [ShieldHook::Ingress, ShieldHook::Egress] {
            let to = wire::frame(ip("198.19.0.10"), ip("198.18.1.10"), &L4::tcp(1, 443, 2));
            let from = wire::frame(ip("198.18.1.10"), ip("198.19.0.10"), &L4::tcp(443, 1, 2));
            let neither = wire::frame(ip("198.19.0.10"), ip("203.0.113.1"), &L4::tcp(1, 22, 2));
            assert_eq!(
                m.shield(hook, &to, 0).reason,
                "denied_untunneled",
                "{role:?} {hook:?}"
            );
            assert_eq!(
                m.shield(hook, &from, 0).reason,
                "denied_untunneled",
                "{role:?} {hook:?}"
            );
            assert_eq!(
                m.shield(hook, &neither, 0).reason,
                "unprotected",
                "{role:?} {hook:?}"
            );
            // Control: the policy hook decides the same packet otherwise.
            assert_ne!(
                m.packet(Direction::Outbound, &to, NOW).reason,
                "denied_untunneled"
            );
        }
        // Later fragments toward protected space too.
        let big = wire::datagram(
            ip("198.19.0.10"),
            ip("198.18.1.10"),
            &L4::tcp_data(1, 443, 0x18, 1, 1, vec![7; 600]),
        );
        for f in wire::fragment_v4(&big, 300) {
            let e = m.shield(ShieldHook::Ingress, &wire::ether(&f, &[]), 0);
            assert_eq!(e.reason, "denied_untunneled");
        }
    }
}

/// "Shield", the handshake bucket: `burst` initiations, then one per 1/rate seconds; per
/// /32 or /64; only initiations, only at ingress.
#[test]
fn handshake_initiations_take_tokens_per_source_prefix() {
    let mut m = connector();
    let i = ShieldHook::Ingress;
    let s = 1_000_000_000u64;
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 148), 0).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 148), 1).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 148), 2).reason,
        "handshake_rate_limited"
    );
    // Another source, other messages, another port, egress: untouched.
    assert_eq!(
        m.shield(i, &wg("192.0.2.8", 1, 148), 3).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 2, 92), 3).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 4, 148), 3).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 147), 3).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(ShieldHook::Egress, &wg("192.0.2.7", 1, 148), 3)
            .reason,
        "unprotected"
    );
    // One second later, one more token.
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 148), 2 + s).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &wg("192.0.2.7", 1, 148), 3 + s).reason,
        "handshake_rate_limited"
    );
    // IPv6: one bucket per /64.
    let w6 = |a: &str| {
        let mut p = vec![0u8; 148];
        p[0] = 1;
        wire::frame(ip(a), ip("2001:db8:9::1"), &L4::udp(1, 51_820, p))
    };
    assert_eq!(
        m.shield(i, &w6("2001:db8:77:1::1"), 0).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &w6("2001:db8:77:1::2"), 0).reason,
        "unprotected"
    );
    assert_eq!(
        m.shield(i, &w6("2001:db8:77:1::3"), 0).reason,
        "handshake_rate_limited"
    );
    assert_eq!(
        m.shield(i, &w6("2001:db8:77:2::1"), 0).reason,
        "unprotected"
    );
    assert_eq!(Model::reason_passes("handshake_rate_limited"), Some(false));
    assert_eq!(Model::reason_passes("denied_untunneled"), Some(false));
}
