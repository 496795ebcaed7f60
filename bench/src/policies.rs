//! Realistic random policies of a given number of rules, and the packets the suites send
//! through them (found in the policy and checked against the reference evaluator).

use anyhow::{Context as _, Result, anyhow};
use policy_compiler::{
    Action, Packet, Policy, PrincipalRef, Reason, evaluate,
    random::{Rng, Scale, scaled_policy},
};
use std::net::{IpAddr, Ipv4Addr};

/// The policy's time: the wall clock at the start of the run (the kernel checks expiries
/// against the real boot clock, so policies must be compiled at the real time; grants of
/// every 13th group expire an hour or two later).
#[allow(non_snake_case)]
pub fn NOW() -> i64 {
    static T: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T.get_or_init(gateway_test_support::testkit::unix_now)
}

/// A generated policy: its text and the parsed model.
pub struct Generated {
    pub text: String,
    pub policy: Policy,
}

/// Parses TOML text produced by the generator.
pub fn parse(text: &str, now: i64) -> Result<Policy> {
    policy_compiler::parse(text, "bench.toml", now)
        .map(|p| p.policy)
        .map_err(|d| {
            anyhow!(
                "generated policy does not parse: {}",
                d.first().map(|d| d.to_string()).unwrap_or_default()
            )
        })
}

/// A policy of about `rules` rule ids ([`Scale::for_rules`]).
pub fn for_rules(rules: u32, seed: u64) -> Result<Generated> {
    let scale = Scale::for_rules(rules);
    let text = scaled_policy(&mut Rng(seed), &scale, NOW());
    let policy = parse(&text, NOW())?;
    Ok(Generated { text, policy })
}

/// One test packet: addresses, protocol and destination port.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dst_port: u16,
}

impl Probe {
    pub fn packet(&self) -> Packet {
        Packet {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            src_port: 40_000,
            dst_port: self.dst_port,
        }
    }
}

/// The probes of the decision and throughput suites.
pub struct Probes {
    /// IPv4 TCP from a service-account key to a resource an allow grant covers.
    pub tcp_allow: Probe,
    /// IPv4 UDP from the same key to a resource without UDP (no grant: default deny).
    pub udp_deny: Probe,
    /// IPv4 TCP from the same key to an address outside the protected space.
    pub unprotected: Probe,
    /// IPv6 TCP from a device to an IPv6 resource an allow grant covers.
    pub v6_allow: Probe,
}

fn host_addr(address: &policy_compiler::model::Address) -> IpAddr {
    let Some(net) = address.net() else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    match net {
        ipnet::IpNet::V4(n) if n.prefix_len() < 32 => {
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1))
        }
        n => n.addr(),
    }
}

/// The addresses of each user's devices, indexed by user.
pub fn devices_by_owner(p: &Policy) -> Vec<Vec<IpAddr>> {
    let mut v = vec![Vec::new(); p.users.len()];
    for d in &p.devices {
        v[d.owner].extend(d.addresses.iter().copied());
    }
    v
}

/// Source addresses a grant principal stands for (of a group, the first `per_group` users'
/// devices and service accounts' keys).
pub fn principal_sources(
    p: &Policy,
    by_owner: &[Vec<IpAddr>],
    r: &PrincipalRef,
    per_group: usize,
) -> Vec<IpAddr> {
    let user = |u: usize| by_owner.get(u).cloned().unwrap_or_default();
    let sa = |a: usize| -> Vec<IpAddr> {
        p.service_accounts[a]
            .keys
            .iter()
            .flat_map(|k| k.addresses.iter().copied())
            .collect()
    };
    match *r {
        PrincipalRef::User(u) => user(u),
        PrincipalRef::ServiceAccount(a) => sa(a),
        PrincipalRef::Group(g) => {
            let g = &p.groups[g];
            let mut v: Vec<IpAddr> = g
                .users
                .iter()
                .take(per_group)
                .flat_map(|&u| user(u))
                .collect();
            v.extend(
                g.service_accounts
                    .iter()
                    .take(per_group)
                    .flat_map(|&a| sa(a)),
            );
            v
        }
    }
}

/// A packet an allow grant lets through (the evaluator says `Granted`).
fn find_allow(p: &Policy, v6: bool, now: i64) -> Option<Probe> {
    let devices = devices_by_owner(p);
    let mut tries = 0;
    for g in p.grants.iter().filter(|g| g.action == Action::Allow) {
        for pr in &g.principals {
            for src in principal_sources(p, &devices, pr, 8)
                .into_iter()
                .filter(|a| a.is_ipv6() == v6)
                .take(4)
            {
                for &r in &g.resources {
                    let res = &p.resources[r];
                    if res.address.net().is_none_or(|n| n.addr().is_ipv6() != v6) {
                        continue;
                    }
                    for port in [22u16, 443, 5432, 8000] {
                        tries += 1;
                        if tries > 2_000 {
                            return None;
                        }
                        let probe = Probe {
                            src,
                            dst: host_addr(&res.address),
                            proto: 6,
                            dst_port: port,
                        };
                        if evaluate(p, &probe.packet(), now).reason == Reason::Granted {
                            return Some(probe);
                        }
                    }
                }
            }
        }
    }
    None
}

/// UDP from service account `sa0`'s first key to the `bench-udp` resource (198.18.250.250
/// port 9000) the throughput suite adds; checked to be `Granted`.
pub fn udp_allow_probe(p: &Policy, now: i64) -> Result<Probe> {
    let sa = p
        .service_accounts
        .iter()
        .find(|s| s.name == "sa0")
        .context("no service account sa0")?;
    let probe = Probe {
        src: sa
            .keys
            .first()
            .and_then(|k| k.addresses.iter().copied().find(IpAddr::is_ipv4))
            .context("sa0 has no key with an IPv4 address")?,
        dst: IpAddr::V4(Ipv4Addr::new(198, 18, 250, 250)),
        proto: 17,
        dst_port: 9000,
    };
    let reason = evaluate(p, &probe.packet(), now).reason;
    if reason != Reason::Granted {
        return Err(anyhow!("the bench-udp probe is not granted ({reason:?})"));
    }
    Ok(probe)
}

/// Finds every probe in `p` and checks it against the reference evaluator.
pub fn probes(p: &Policy, now: i64) -> Result<Probes> {
    let tcp_allow =
        find_allow(p, false, now).context("no allowed IPv4 TCP packet in the policy")?;
    let v6_allow = find_allow(p, true, now).context("no allowed IPv6 TCP packet in the policy")?;
    let udp_deny = p
        .resources
        .iter()
        .filter(|r| r.address.net().is_some_and(|n| n.addr().is_ipv4()))
        .map(|r| Probe {
            src: tcp_allow.src,
            dst: host_addr(&r.address),
            proto: 17,
            dst_port: 53,
        })
        .find(|probe| evaluate(p, &probe.packet(), now).reason == Reason::NoGrant)
        .context("no denied UDP packet in the policy")?;
    let unprotected = Probe {
        src: tcp_allow.src,
        dst: IpAddr::V4(Ipv4Addr::new(198, 19, 253, 1)),
        proto: 6,
        dst_port: 443,
    };
    let reason = evaluate(p, &unprotected.packet(), now).reason;
    if reason != Reason::Unprotected {
        return Err(anyhow!("198.19.253.1 is not unprotected ({reason:?})"));
    }
    Ok(Probes {
        tcp_allow,
        udp_deny,
        unprotected,
        v6_allow,
    })
}

/// An Ethernet frame of `probe` (from `gateway_test_support::testkit::frame`: source MAC
/// 02:00:00:00:00:0a, destination 02:00:00:00:00:0b) with `payload` bytes after the
/// transport header.
pub fn frame(probe: &Probe, payload: usize) -> Vec<u8> {
    use gateway_test_support::testkit::{L4, frame};
    let l4 = match probe.proto {
        17 => L4::Udp {
            src: 40_000,
            dst: probe.dst_port,
        },
        _ => L4::Tcp {
            src: 40_000,
            dst: probe.dst_port,
        },
    };
    frame(probe.src, probe.dst, l4, &[], &vec![0u8; payload])
}

/// The flow key the data plane files `probe` under.
pub fn flow_key(probe: &Probe) -> gateway_common::FlowKey {
    use gateway_test_support::testkit::{L4, expected_key};
    let l4 = match probe.proto {
        17 => L4::Udp {
            src: 40_000,
            dst: probe.dst_port,
        },
        _ => L4::Tcp {
            src: 40_000,
            dst: probe.dst_port,
        },
    };
    expected_key(probe.src, probe.dst, l4)
}
