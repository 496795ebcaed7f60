//! Random policies and packets (seeded, deterministic) for property tests, the data-plane
//! fuzzer and benchmarks. Addresses stay inside 198.18.0.0/15 and 2001:db8::/32.
//! Test support: only with the feature `testing`.

#![allow(clippy::unwrap_used)] // parsing constant, known-good literals

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::eval::Packet;
use crate::model::{Policy, format_rfc3339};

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Protected spaces random policies draw from.
pub const NET_POOL: &[&str] = &[
    "198.18.0.0/24",
    "198.18.1.0/24",
    "198.18.0.0/23",
    "198.18.4.0/22",
    "2001:db8::/48",
    "2001:db8:1::/48",
    "2001:db8::/47",
];
/// Port items random policies draw from.
pub const PORT_ITEMS: &[&str] = &[
    "22",
    "80",
    "443",
    "8000-8100",
    "1-1024",
    "5432",
    "53",
    "8080",
    "1-65535",
    "22-23",
];

/// A random prefix inside `cidr`.
pub fn sub_prefix(rng: &mut Rng, cidr: &str) -> String {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    match net {
        ipnet::IpNet::V4(n) => {
            let l = n.prefix_len();
            let len = *rng.pick(&[l, l + 1, 26, 28, 30, 31, 32, 32].map(|x| x.max(l)));
            let size = 1u32 << (32 - l);
            let off =
                *rng.pick(&[0u32, 1, 2, 5, 10, 64, 128, 200, 255, 256, 300, 512, 1023]) % size;
            let a = Ipv4Addr::from(u32::from(n.network()) + off);
            ipnet::Ipv4Net::new(a, len).unwrap().trunc().to_string()
        }
        ipnet::IpNet::V6(n) => {
            let l = n.prefix_len();
            let len = *rng.pick(&[l, l + 1, 64, 120, 124, 127, 128, 128].map(|x| x.max(l)));
            let off = *rng.pick(&[0u128, 1, 2, 5, 16, 255, 1 << 64, (1 << 64) + 1, 1 << 80]);
            let size_bits = 128 - u32::from(l);
            let off = if size_bits >= 128 {
                off
            } else {
                off % (1u128 << size_bits)
            };
            let a = Ipv6Addr::from(u128::from(n.network()) + off);
            ipnet::Ipv6Net::new(a, len).unwrap().trunc().to_string()
        }
    }
}

fn ports(rng: &mut Rng) -> Option<String> {
    match rng.below(10) {
        0 | 1 => Some("\"all\"".into()),
        2 => Some("\"none\"".into()),
        3 | 4 => None,
        _ => {
            let n = 1 + rng.below(3);
            let items: Vec<String> = (0..n)
                .map(|_| format!("\"{}\"", rng.pick(PORT_ITEMS)))
                .collect();
            Some(format!("[{}]", items.join(", ")))
        }
    }
}

/// A random policy in TOML: up to 3 remote networks, 6 resources (overlapping prefixes,
/// port lists, ranges, audit mode), users with devices, service accounts, groups, and
/// allow/deny grants with narrowing and expiries around `now`. About half of the devices
/// and service-account keys have an IPv4 and an IPv6 address.
pub fn gen_policy(rng: &mut Rng, now: i64) -> String {
    // WireGuard keys, key expiries and [[connector]] blocks come from a second generator,
    // so that the rest of a seed's policy is what it was before they existed.
    let mut krng = Rng(rng.0 ^ 0x7e57_4b65_7973_0001);
    let mut s = String::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let nets = 1 + rng.below(3);
    let mut net_cidrs: Vec<Vec<&str>> = Vec::new();
    for i in 0..nets {
        let mut cidrs = vec![*rng.pick(NET_POOL)];
        if rng.chance(40) {
            let c = *rng.pick(NET_POOL);
            if !cidrs.contains(&c) {
                cidrs.push(c);
            }
        }
        let mut conns = vec![format!("\"c{}\"", rng.below(3))];
        if rng.chance(30) {
            let c = format!("\"c{}\"", rng.below(3));
            if !conns.contains(&c) {
                conns.push(c);
            }
        }
        listed.extend(conns.iter().map(|c| c.trim_matches('"').to_string()));
        let cl: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = writeln!(
            s,
            "[[remote_network]]\nname = \"n{i}\"\ncidrs = [{}]\nconnectors = [{}]\n",
            cl.join(", "),
            conns.join(", ")
        );
        net_cidrs.push(cidrs);
    }
    let nres = 1 + rng.below(6);
    for i in 0..nres {
        let n = rng.below(nets);
        let cidr = *rng.pick(&net_cidrs[n]);
        let addr = if rng.chance(15) {
            cidr.to_string()
        } else {
            sub_prefix(rng, cidr)
        };
        let _ = writeln!(
            s,
            "[[resource]]\nname = \"r{i}\"\nnetwork = \"n{n}\"\naddress = \"{addr}\""
        );
        let tcp = ports(rng);
        let udp = ports(rng);
        let icmp = rng.chance(40);
        let empty = |p: &Option<String>| p.as_deref().is_none_or(|p| p == "\"none\"");
        if let Some(t) = &tcp {
            let _ = writeln!(s, "tcp = {t}");
        }
        if let Some(u) = &udp {
            let _ = writeln!(s, "udp = {u}");
        }
        if icmp || (empty(&tcp) && empty(&udp)) {
            let _ = writeln!(s, "icmp = true");
        }
        if rng.chance(20) {
            let _ = writeln!(s, "mode = \"audit\"");
        }
        s.push('\n');
    }
    let nusers = 1 + rng.below(4);
    let mut v4 = 1u32;
    let mut v6 = 1u32;
    // About half of the principals are dual-stack; the others have one address (60% IPv4).
    let mut addr = |rng: &mut Rng| {
        let (four, six) = match rng.below(10) {
            0..5 => (true, true),
            5..8 => (true, false),
            _ => (false, true),
        };
        let mut a = Vec::new();
        if four {
            v4 += 1;
            a.push(format!("\"198.19.255.{v4}\""));
        }
        if six {
            v6 += 1;
            a.push(format!("\"2001:db8:ff::{v6:x}\""));
        }
        if a.len() == 1 {
            format!("address = {}", a[0])
        } else {
            format!("addresses = [{}]", a.join(", "))
        }
    };
    let mut refs: Vec<String> = Vec::new();
    let mut members: Vec<String> = Vec::new();
    let mut dev = 0;
    for u in 0..nusers {
        let _ = writeln!(s, "[[user]]\nemail = \"u{u}@x.test\"\n");
        refs.push(format!("u{u}@x.test"));
        members.push(format!("u{u}@x.test"));
        for _ in 0..rng.below(3) {
            let a = addr(rng);
            let key = if krng.chance(75) {
                format!("public_key = \"{}\"\n", test_key(1, dev))
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "[[device]]\nname = \"d{dev}\"\nowner = \"u{u}@x.test\"\n{a}\n{key}"
            );
            dev += 1;
        }
    }
    for i in 0..rng.below(3) {
        let keys: Vec<String> = (0..1 + rng.below(2))
            .map(|k| {
                let mut extra = String::new();
                if krng.chance(60) {
                    extra.push_str(&format!(", public_key = \"{}\"", test_key(2, i * 2 + k)));
                }
                if krng.chance(20) {
                    let e = now + *krng.pick(&[-100i64, 100, 200]);
                    extra.push_str(&format!(", expires_at = \"{}\"", format_rfc3339(e)));
                }
                format!("{{ name = \"k{k}\", {}{extra} }}", addr(rng))
            })
            .collect();
        let _ = writeln!(
            s,
            "[[service_account]]\nname = \"sa{i}\"\nkeys = [{}]\n",
            keys.join(", ")
        );
        refs.push(format!("service_account:sa{i}"));
        members.push(format!("sa{i}"));
    }
    for g in 0..rng.below(4) {
        let m: Vec<String> = members
            .iter()
            .filter(|_| rng.chance(40))
            .map(|m| format!("\"{m}\""))
            .collect();
        let _ = writeln!(
            s,
            "[[group]]\nname = \"g{g}\"\nmembers = [{}]\n",
            m.join(", ")
        );
        refs.push(format!("group:g{g}"));
    }
    for g in 0..1 + rng.below(7) {
        let kind = if rng.chance(35) { "deny" } else { "allow" };
        let np = 1 + rng.below(2);
        let ps: Vec<String> = (0..np)
            .map(|_| format!("\"{}\"", rng.pick(&refs)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let rs: Vec<String> = (0..1 + rng.below(3))
            .map(|_| format!("\"r{}\"", rng.below(nres)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            s,
            "[[{kind}]]\nname = \"grant{g}\"\nprincipals = [{}]\nresources = [{}]",
            ps.join(", "),
            rs.join(", ")
        );
        if rng.chance(35) {
            let mut any = false;
            if rng.chance(70) {
                let _ = writeln!(s, "tcp = [\"{}\"]", rng.pick(PORT_ITEMS));
                any = true;
            }
            if rng.chance(40) {
                let _ = writeln!(s, "udp = [\"{}\"]", rng.pick(PORT_ITEMS));
                any = true;
            }
            if rng.chance(40) || !any {
                let _ = writeln!(s, "icmp = true");
            }
        }
        if rng.chance(35) {
            let e = now + *rng.pick(&[-100i64, 50, 100, 100, 200, 300]);
            let _ = writeln!(s, "expires_at = \"{}\"", format_rfc3339(e));
        }
        s.push('\n');
    }
    for (i, c) in listed.iter().enumerate() {
        if !krng.chance(70) {
            continue;
        }
        let endpoint = match krng.below(3) {
            0 => format!("198.51.100.{}:51820", i + 1),
            1 => format!("[2001:db8:100::{}]:51820", i + 1),
            _ => format!("{c}.example.net:51820"),
        };
        let _ = writeln!(
            s,
            "[[connector]]\nname = \"{c}\"\npublic_key = \"{}\"\nendpoint = \"{endpoint}\"\n",
            test_key(3, i)
        );
    }
    s
}

/// A distinct, valid WireGuard public key for tests: `kind` and `n` make it unique.
pub fn test_key(kind: u8, n: usize) -> crate::model::WgKey {
    let mut b = [0x5a; 32];
    b[0] = kind;
    b[1..9].copy_from_slice(&(n as u64).to_be_bytes());
    crate::model::WgKey(b)
}

/// A random address in `net`, biased to its edges.
pub fn random_addr_in(rng: &mut Rng, net: &ipnet::IpNet) -> IpAddr {
    match net {
        ipnet::IpNet::V4(n) => {
            let size = 1u64 << (32 - n.prefix_len());
            let off = match rng.below(4) {
                0 => 0,
                1 => size - 1,
                2 => 1 % size,
                _ => rng.next_u64() % size,
            } as u32;
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + off))
        }
        ipnet::IpNet::V6(n) => {
            let bits = 128 - u32::from(n.prefix_len());
            let max = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let off = match rng.below(5) {
                0 => 0,
                1 => max,
                2 => 1 & max,
                3 => (1u128 << 64 | u128::from(rng.next_u64() % 300)) & max,
                _ => (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) & max,
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + off))
        }
    }
}

/// A random packet: from a principal of `p` (or `src`, or now and then an unknown source)
/// to an address of `dst_space` or of a resource inside it, with a protocol and port
/// biased to the interesting values.
pub fn random_packet(
    rng: &mut Rng,
    p: &Policy,
    src: Option<IpAddr>,
    dst_space: &[ipnet::IpNet],
) -> Packet {
    let src = src.unwrap_or_else(|| {
        if rng.chance(10) || p.principals.is_empty() {
            *rng.pick(&[
                "198.19.254.1".parse().unwrap(),
                "2001:db8:fe::1".parse().unwrap(),
            ])
        } else {
            let principal = rng.pick(&p.principals);
            *rng.pick(&principal.addresses)
        }
    });
    let mut spaces: Vec<ipnet::IpNet> = dst_space.to_vec();
    spaces.extend(
        p.resources
            .iter()
            .filter_map(|r| r.address.net())
            .filter(|a| dst_space.iter().any(|c| c.contains(a) || a.contains(c))),
    );
    let dst = if dst_space.len() > 2 && rng.chance(10) {
        *rng.pick(&[
            "198.18.200.1".parse().unwrap(),
            "2001:db8:9::1".parse().unwrap(),
        ])
    } else {
        let net = *rng.pick(&spaces);
        random_addr_in(rng, &net)
    };
    let proto = *rng.pick(&[6u8, 6, 6, 17, 17, 1, 58, 47]);
    let dst_port = if rng.chance(80) {
        *rng.pick(&[
            0u16, 1, 21, 22, 23, 24, 52, 53, 54, 79, 80, 81, 443, 1023, 1024, 1025, 5432, 7999,
            8000, 8063, 8064, 8080, 8100, 8101, 65534, 65535,
        ])
    } else {
        rng.next_u64() as u16
    };
    Packet {
        src,
        dst,
        proto,
        src_port: rng.next_u64() as u16,
        dst_port,
    }
}

/// Shape of a large, realistic policy ([`scaled_policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Users, each with 2 devices (IPv6 addresses in 2001:db8:ff::/48).
    pub users: u32,
    /// Service accounts, each with `keys_per_account` keys (IPv4 addresses in 198.19.0.0/16).
    pub service_accounts: u32,
    pub keys_per_account: u32,
    /// Resources: every 10th an IPv6 host, every 100th a /24, the rest IPv4 hosts; every
    /// 50th (from the 8th) in audit mode.
    pub resources: u32,
    /// Groups: 90% teams, 5% departments, the rest on-call groups.
    pub groups: u32,
    /// Grants per group (every 17th one a deny) and distinct resources per grant (at most).
    pub grants_per_group: u32,
    pub resources_per_grant: u32,
    /// Adversarial memberships (3 random groups per user: nearly every user its own class)
    /// instead of realistic ones (team, its department, 5% an on-call group).
    pub random_membership: bool,
}

impl Scale {
    /// The compile target: 100k principals (45k users x 2 devices + 1k service accounts
    /// x 10 keys), 10k resources, 1k groups with 2 grants of 5 resources each.
    pub const TARGET: Scale = Scale {
        users: 45_000,
        service_accounts: 1_000,
        keys_per_account: 10,
        resources: 10_000,
        groups: 1_000,
        grants_per_group: 2,
        resources_per_grant: 5,
        random_membership: false,
    };

    /// Principals (devices and service-account keys) the policy declares.
    pub fn principals(&self) -> u64 {
        u64::from(self.users) * 2
            + u64::from(self.service_accounts) * u64::from(self.keys_per_account)
    }

    /// A policy of about `rules` rule ids (grant x resource pairs): `rules / 10` groups with
    /// 2 grants of 5 resources, `rules / 10` resources (10 to 10k), `rules / 2` users
    /// (5 to 50k) and `rules / 100` service accounts (2 to 1k) with 10 keys each.
    pub fn for_rules(rules: u32) -> Scale {
        Scale {
            users: (rules / 2).clamp(5, 50_000),
            service_accounts: (rules / 100).clamp(2, 1_000),
            keys_per_account: 10,
            resources: (rules / 10).clamp(10, 10_000),
            groups: (rules / 10).max(1),
            grants_per_group: 2,
            resources_per_grant: 5,
            random_membership: false,
        }
    }
}

/// A large policy in TOML, shaped by `scale` (one remote network `dc` with connector
/// `conn`, protecting 198.18.0.0/16 and 2001:db8:1::/48). Grants of every 13th group expire
/// an hour or two after `now`. Deterministic for a given `rng` state.
pub fn scaled_policy(rng: &mut Rng, scale: &Scale, now: i64) -> String {
    let Scale {
        users,
        service_accounts: sas,
        keys_per_account,
        resources,
        groups,
        grants_per_group,
        resources_per_grant,
        random_membership,
    } = *scale;
    let resources = resources.max(1);
    let groups = groups.max(1);
    let mut s = String::with_capacity(
        (usize::try_from(scale.principals()).unwrap_or(0) + resources as usize) * 120,
    );
    s.push_str("[[remote_network]]\nname = \"dc\"\ncidrs = [\"198.18.0.0/16\", \"2001:db8:1::/48\"]\nconnectors = [\"conn\"]\n\n");
    for i in 0..resources {
        let addr = if i % 10 == 9 {
            format!("2001:db8:1::{i:x}")
        } else if i % 100 == 0 {
            format!("198.18.{}.0/24", (i / 100) % 256)
        } else {
            format!("198.18.{}.{}", (i / 250) % 256, i % 250 + 1)
        };
        let tcp = match i % 4 {
            0 => "[\"22\"]",
            1 => "[\"443\", \"8000-8100\"]",
            2 => "\"all\"",
            _ => "[\"5432\"]",
        };
        let mode = if i % 50 == 7 {
            "mode = \"audit\"\n"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "[[resource]]\nname = \"r{i}\"\nnetwork = \"dc\"\naddress = \"{addr}\"\ntcp = {tcp}\nicmp = {}\n{mode}",
            i % 3 == 0
        );
    }
    let mut dev = 0u32;
    for u in 0..users {
        let _ = writeln!(s, "[[user]]\nemail = \"u{u}@x.test\"\n");
        for _ in 0..2 {
            let _ = writeln!(
                s,
                "[[device]]\nname = \"d{dev}\"\nowner = \"u{u}@x.test\"\naddress = \"2001:db8:ff::{:x}:{:x}\"\n",
                dev >> 16,
                dev & 0xffff
            );
            dev += 1;
        }
    }
    for a in 0..sas {
        let keys: Vec<String> = (0..keys_per_account)
            .map(|k| {
                let idx = a * keys_per_account + k;
                format!(
                    "{{ name = \"k{k}\", address = \"198.19.{}.{}\" }}",
                    (idx / 250) % 256,
                    idx % 250 + 1
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "[[service_account]]\nname = \"sa{a}\"\nkeys = [{}]\n",
            keys.join(", ")
        );
    }
    let mut members: Vec<Vec<String>> = vec![Vec::new(); groups as usize];
    let teams = (groups * 9 / 10).max(1);
    let departments = (groups / 20).max(1).min(groups - teams);
    let oncall = groups - teams - departments;
    for u in 0..users {
        let user = format!("\"u{u}@x.test\"");
        if random_membership {
            for _ in 0..3 {
                members[rng.below(groups as usize)].push(user.clone());
            }
        } else {
            let team = u % teams;
            members[team as usize].push(user.clone());
            if departments > 0 {
                members[(teams + team % departments) as usize].push(user.clone());
            }
            if oncall > 0 && rng.below(20) == 0 {
                let g = teams + departments + rng.below(oncall as usize) as u32;
                members[g as usize].push(user);
            }
        }
    }
    for a in 0..sas {
        members[rng.below(groups as usize)].push(format!("\"sa{a}\""));
    }
    for (g, m) in members.iter().enumerate() {
        let _ = writeln!(
            s,
            "[[group]]\nname = \"g{g}\"\nmembers = [{}]\n",
            m.join(", ")
        );
    }
    for g in 0..groups {
        for k in 0..grants_per_group {
            let res: Vec<String> = (0..resources_per_grant)
                .map(|_| format!("\"r{}\"", rng.below(resources as usize)))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let kind = if (g + k) % 17 == 0 { "deny" } else { "allow" };
            let exp = if g % 13 == 0 {
                format!(
                    "expires_at = \"{}\"\n",
                    format_rfc3339(now + 3600 * i64::from(k + 1))
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "[[{kind}]]\nname = \"grant-{g}-{k}\"\nprincipals = [\"group:g{g}\"]\nresources = [{}]\n{exp}",
                res.join(", ")
            );
        }
    }
    s
}
