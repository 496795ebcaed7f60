//! Pins the grammar of a packet's source and destination (`policy_compiler::target`):
//! `from`/`to` of `[[test]]` blocks, `gatewayctl policy explain` and `gatewayctl explain`
//! all go through it. A change here changes what stored policies mean: make it on purpose.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use policy_compiler::target::{
    Source, SourceError, Target, TargetError, parse_target, proto, resolve_source, resolve_target,
    source,
};
use policy_compiler::{Policy, parse};

const NOW: i64 = 1_767_225_600;

const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["c1"]

[[resource]]
name = "web"
network = "dc"
address = "198.18.1.10"
tcp = ["443", "80"]
udp = ["53"]

[[resource]]
name = "dns6"
network = "dc"
address = "2001:db8:1::53"
udp = ["53"]
icmp = true

[[resource]]
name = "ping-net"
network = "dc"
address = "198.18.2.0/24"
icmp = true

[[resource]]
name = "ping6"
network = "dc"
address = "2001:db8:1::/64"
icmp = true

[[resource]]
name = "198.18.9.9:80/tcp"        # a name that looks like a destination: the name wins
network = "dc"
address = "198.18.1.20"
tcp = ["22"]

[[user]]
email = "alice@example.com"

[[device]]
name = "v4-only"
owner = "alice@example.com"
address = "198.19.0.10"

[[device]]
name = "dual"
owner = "alice@example.com"
addresses = ["2001:db8:ff::11", "198.19.0.11"]

[[device]]
name = "v6-only"
owner = "alice@example.com"
address = "2001:db8:ff::12"

[[device]]
name = "198.19.9.9"               # a name that looks like an address: the device wins
owner = "alice@example.com"
address = "198.19.0.13"

[[service_account]]
name = "ci"
keys = [{ name = "k4", address = "198.19.1.1" },
        { name = "k6", addresses = ["198.19.1.2", "2001:db8:ff::102"] }]
"#;

fn policy() -> Policy {
    parse(POLICY, "grammar.toml", NOW).unwrap().policy
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn t(addr: &str, proto: u8, port: u16) -> Target {
    Target {
        addr: ip(addr),
        proto,
        port,
        name: None,
    }
}

#[test]
fn destinations_tcp_udp() {
    // IPv4, with or without brackets; IPv6 only in brackets.
    assert_eq!(
        parse_target("198.18.1.10:22/tcp"),
        Ok(t("198.18.1.10", proto::TCP, 22))
    );
    assert_eq!(
        parse_target("198.18.1.10:53/udp"),
        Ok(t("198.18.1.10", proto::UDP, 53))
    );
    assert_eq!(
        parse_target("[198.18.1.10]:22/tcp"),
        Ok(t("198.18.1.10", proto::TCP, 22))
    );
    assert_eq!(
        parse_target("[2001:db8::5]:443/tcp"),
        Ok(t("2001:db8::5", proto::TCP, 443))
    );
    assert_eq!(
        parse_target("[2001:db8::5]:443/udp"),
        Ok(t("2001:db8::5", proto::UDP, 443))
    );
    // An IPv4-mapped address is the IPv4 address.
    assert_eq!(
        parse_target("[::ffff:198.18.1.10]:22/tcp"),
        Ok(t("198.18.1.10", proto::TCP, 22))
    );
    // Ports: 0-65535, as an integer (so a leading `+` or zeros are accepted).
    assert_eq!(
        parse_target("198.18.1.1:0/tcp"),
        Ok(t("198.18.1.1", proto::TCP, 0))
    );
    assert_eq!(
        parse_target("198.18.1.1:65535/udp"),
        Ok(t("198.18.1.1", proto::UDP, 65535))
    );
    assert_eq!(
        parse_target("198.18.1.1:+022/tcp"),
        Ok(t("198.18.1.1", proto::TCP, 22))
    );
}

#[test]
fn destinations_icmp() {
    // `icmp` and `icmpv6` both mean the ICMP of the address's family.
    for (to, addr, p) in [
        ("198.18.1.1/icmp", "198.18.1.1", proto::ICMP),
        ("[198.18.1.1]/icmp", "198.18.1.1", proto::ICMP),
        ("198.18.1.1/icmpv6", "198.18.1.1", proto::ICMP),
        ("::ffff:198.18.1.1/icmpv6", "198.18.1.1", proto::ICMP),
        ("2001:db8::1/icmp", "2001:db8::1", proto::ICMPV6),
        ("2001:db8::1/icmpv6", "2001:db8::1", proto::ICMPV6),
        ("[2001:db8::1]/icmpv6", "2001:db8::1", proto::ICMPV6),
    ] {
        assert_eq!(parse_target(to), Ok(t(addr, p, 0)), "{to}");
    }
}

#[test]
fn destinations_by_dns_name() {
    let named = |to: &str| parse_target(to).unwrap();
    let t = named("DB.Example.com.:22/tcp");
    assert_eq!(
        (t.name.as_deref(), t.proto, t.port, t.addr),
        (Some("db.example.com"), proto::TCP, 22, ip("0.0.0.0"))
    );
    assert_eq!(t.to_string(), "db.example.com:22/tcp");
    let t = named("db.example.com:53/udp");
    assert_eq!((t.proto, t.port), (proto::UDP, 53));
    let t = named("db.example.com/icmp");
    assert_eq!((t.proto, t.addr), (proto::ICMP, ip("0.0.0.0")));
    let t = named("db.example.com/icmpv6");
    assert_eq!((t.proto, t.addr), (proto::ICMPV6, ip("::")));
    // Addresses stay addresses; names are not brackets' business.
    assert_eq!(named("198.18.1.1:22/tcp").name, None);
    assert!(parse_target("[db.example.com]:22/tcp").is_err());
    assert!(parse_target("db.example.com:99999/tcp").is_err());
}

#[test]
fn destination_errors() {
    let cases: &[(&str, &str)] = &[
        ("198.18.1.1:22", "`198.18.1.1:22` is not a destination"),
        ("", "`` is not a destination"),
        ("198.18.1.1/tcp", "`198.18.1.1/tcp` is not a destination"),
        (
            "2001:db8::5:443/tcp",
            "IPv6 address in `2001:db8::5:443/tcp` must be in brackets",
        ),
        // An opening bracket passes the bracket rule; the address does not parse.
        (
            "[2001:db8::5:443/tcp",
            "`[2001:db8::5` is not an IP address or a DNS name",
        ),
        (
            "[2001:db8::1/icmp",
            "`[2001:db8::1` is not an IP address or a DNS name",
        ),
        (
            "db..example.com:22/tcp",
            "`db..example.com` is not an IP address or a DNS name",
        ),
        (
            "198.18.1.1:22/icmp",
            "`198.18.1.1:22` is not an IP address or a DNS name",
        ),
        (
            "fe80::1%eth0/icmp",
            "`fe80::1%eth0` is not an IP address or a DNS name",
        ),
        ("198.18.1.1:65536/tcp", "`65536` is not a port"),
        ("198.18.1.1:/tcp", "`` is not a port"),
        ("198.18.1.1:-1/udp", "`-1` is not a port"),
        (
            "198.18.1.1:22/sctp",
            "unknown protocol `sctp` in `198.18.1.1:22/sctp`",
        ),
        (
            "198.18.1.1:22/TCP",
            "unknown protocol `TCP` in `198.18.1.1:22/TCP`",
        ),
        ("198.18.0.0/24", "unknown protocol `24` in `198.18.0.0/24`"),
    ];
    for (to, message) in cases {
        let e = parse_target(to).unwrap_err();
        assert_eq!(e.to_string(), *message, "{to}");
        assert_eq!(resolve_target(&policy(), to).unwrap_err(), e, "{to}");
    }
    assert!(matches!(
        parse_target("198.18.1.1/tcp"),
        Err(TargetError::NoPort { .. })
    ));
}

#[test]
fn destinations_by_resource_name() {
    let p = policy();
    // The first port: TCP (the lowest), else UDP, else ICMP of the address's family; a
    // CIDR resource stands for its network address.
    assert_eq!(
        resolve_target(&p, "web"),
        Ok(t("198.18.1.10", proto::TCP, 80))
    );
    assert_eq!(
        resolve_target(&p, "dns6"),
        Ok(t("2001:db8:1::53", proto::UDP, 53))
    );
    assert_eq!(
        resolve_target(&p, "ping-net"),
        Ok(t("198.18.2.0", proto::ICMP, 0))
    );
    assert_eq!(
        resolve_target(&p, "ping6"),
        Ok(t("2001:db8:1::", proto::ICMPV6, 0))
    );
    // Names before addresses.
    assert_eq!(
        resolve_target(&p, "198.18.9.9:80/tcp"),
        Ok(t("198.18.1.20", proto::TCP, 22))
    );
    assert_eq!(
        resolve_target(&p, "198.18.9.9:81/tcp"),
        Ok(t("198.18.9.9", proto::TCP, 81))
    );
    assert_eq!(
        resolve_target(&p, "no-such-resource")
            .unwrap_err()
            .to_string(),
        "`no-such-resource` is not a destination"
    );
}

#[test]
fn targets_print_in_the_grammar() {
    for s in [
        "198.18.1.10:22/tcp",
        "[2001:db8::5]:443/udp",
        "198.18.1.1/icmp",
        "2001:db8::1/icmpv6",
    ] {
        let target = parse_target(s).unwrap();
        assert_eq!(target.to_string(), s);
        assert_eq!(parse_target(&target.to_string()), Ok(target));
    }
}

#[test]
fn sources() {
    let p = policy();
    let v4 = ip("198.18.1.10");
    let v6 = ip("2001:db8:1::53");
    let from = |f: &str, dst: IpAddr| resolve_source(&p, f, dst);
    // A device or key sends from its address of the destination's family.
    assert_eq!(from("v4-only", v4), Ok(ip("198.19.0.10")));
    assert_eq!(from("dual", v4), Ok(ip("198.19.0.11")));
    assert_eq!(from("dual", v6), Ok(ip("2001:db8:ff::11")));
    assert_eq!(
        from("dual", ip("::ffff:198.18.1.10")),
        Ok(ip("198.19.0.11"))
    );
    assert_eq!(from("v6-only", v6), Ok(ip("2001:db8:ff::12")));
    assert_eq!(from("ci/k4", v4), Ok(ip("198.19.1.1")));
    assert_eq!(from("ci/k6", v4), Ok(ip("198.19.1.2")));
    assert_eq!(from("ci/k6", v6), Ok(ip("2001:db8:ff::102")));
    // ... and has none of another family.
    assert_eq!(
        from("v4-only", v6).unwrap_err().to_string(),
        "`v4-only` has no IPv6 address (it has 198.19.0.10) to reach 2001:db8:1::53 from"
    );
    assert_eq!(
        from("v6-only", v4).unwrap_err().to_string(),
        "`v6-only` has no IPv4 address (it has 2001:db8:ff::12) to reach 198.18.1.10 from"
    );
    assert_eq!(
        from("ci/k4", v6),
        Err(SourceError::NoAddressOfFamily {
            from: "ci/k4".into(),
            dst: v6,
            addresses: vec![ip("198.19.1.1")],
        })
    );
    // An address is taken as written, of either family (IPv4-mapped read as IPv4).
    assert_eq!(from("198.19.0.99", v4), Ok(ip("198.19.0.99")));
    assert_eq!(from("198.19.0.99", v6), Ok(ip("198.19.0.99")));
    assert_eq!(from("2001:db8:ff::99", v4), Ok(ip("2001:db8:ff::99")));
    assert_eq!(from("::ffff:198.19.0.99", v6), Ok(ip("198.19.0.99")));
    // Device names before addresses.
    assert_eq!(from("198.19.9.9", v4), Ok(ip("198.19.0.13")));
    // An account without the key is an error, not an address or an unknown source.
    assert_eq!(
        from("ci/k9", v4).unwrap_err().to_string(),
        "service account `ci` has no key `k9` (keys: k4, k6)"
    );
    for unknown in ["mallory", "nope/k4", "dual/k4", "198.19.0.999", ""] {
        assert_eq!(
            from(unknown, v4),
            Err(SourceError::Unknown {
                from: unknown.into()
            }),
            "{unknown}"
        );
    }
    assert_eq!(
        from("mallory", v4).unwrap_err().to_string(),
        "unknown source `mallory`"
    );
    // Resolved before the destination is known.
    assert_eq!(
        source(&p, "dual"),
        Ok(Source::Principal {
            name: "dual",
            addresses: &[ip("198.19.0.11"), ip("2001:db8:ff::11")],
        })
    );
    assert_eq!(source(&p, "198.19.0.1"), Ok(Source::Addr(ip("198.19.0.1"))));
}

/// `[[test]]` blocks read `from` and `to` with the same grammar.
#[test]
fn test_blocks_use_the_grammar() {
    let pairs = [
        ("v4-only", "web"),
        ("dual", "dns6"),
        ("dual", "198.18.1.10:443/tcp"),
        ("dual", "[2001:db8:1::53]:53/udp"),
        ("ci/k6", "ping6"),
        ("ci/k6", "198.18.2.7/icmpv6"),
        ("198.19.9.9", "198.18.9.9:80/tcp"),
        ("198.19.0.99", "[::ffff:198.18.1.10]:80/tcp"),
        ("2001:db8:ff::99", "ping-net"),
    ];
    let mut text = POLICY.to_string();
    for (from, to) in pairs {
        text.push_str(&format!(
            "\n[[test]]\nfrom = \"{from}\"\nto = \"{to}\"\nexpect = \"deny\"\n"
        ));
    }
    let p = parse(&text, "grammar.toml", NOW).unwrap().policy;
    assert_eq!(p.tests.len(), pairs.len());
    for (test, (from, to)) in p.tests.iter().zip(pairs) {
        let target = resolve_target(&p, to).unwrap();
        let src = resolve_source(&p, from, target.addr).unwrap();
        assert_eq!(
            (test.src, test.dst, test.proto, test.dst_port),
            (src, target.addr, target.proto, target.port),
            "from {from} to {to}"
        );
    }

    // And report its errors, located, with the policy's wording.
    let mut bad = POLICY.to_string();
    for (from, to) in [
        ("mallory", "web"),
        ("ci/k9", "web"),
        ("v4-only", "dns6"),
        ("dual", "2001:db8::5:443/tcp"),
        ("dual", "198.18.1.1:22/sctp"),
    ] {
        bad.push_str(&format!(
            "\n[[test]]\nfrom = \"{from}\"\nto = \"{to}\"\nexpect = \"deny\"\n"
        ));
    }
    let diags = parse(&bad, "grammar.toml", NOW).unwrap_err();
    let got: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        got,
        [
            "unknown test source `mallory`",
            "unknown test source `ci/k9`",
            "`v4-only` has no IPv6 address to reach `dns6` from",
            "IPv6 address in `2001:db8::5:443/tcp` must be in brackets",
            "unknown protocol `sctp` in `198.18.1.1:22/sctp`",
        ]
    );

    // A device that does not validate keeps its name: a test from it names an unknown
    // source (its name is not read as an address).
    let broken = format!(
        "{POLICY}\n[[device]]\nname = \"198.19.7.7\"\nowner = \"nobody@example.com\"\naddress = \"198.19.0.77\"\n\n[[test]]\nfrom = \"198.19.7.7\"\nto = \"web\"\nexpect = \"deny\"\n"
    );
    let diags = parse(&broken, "grammar.toml", NOW).unwrap_err();
    let got: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        got,
        [
            "unknown user `nobody@example.com`",
            "unknown test source `198.19.7.7`"
        ]
    );
}
