//! Differential property test: for random policies (seeded, deterministic), the kernel
//! lookup over the compiled maps gives the reference evaluator's verdict and rule, for
//! every connector and every device, now and after expiries up to `recompile_at`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_compiler::*;

const NOW: i64 = 1_700_000_000;
const POLICIES: usize = 2000;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const NET_POOL: &[&str] = &[
    "198.18.0.0/24",
    "198.18.1.0/24",
    "198.18.0.0/23",
    "198.18.4.0/22",
    "2001:db8::/48",
    "2001:db8:1::/48",
    "2001:db8::/47",
];
const PORT_ITEMS: &[&str] = &[
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

fn sub_prefix(rng: &mut Rng, cidr: &str) -> String {
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

fn gen_policy(rng: &mut Rng) -> String {
    let mut s = String::new();
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
    let mut addr = |rng: &mut Rng| {
        if rng.chance(60) {
            v4 += 1;
            format!("198.19.255.{v4}")
        } else {
            v6 += 1;
            format!("2001:db8:ff::{v6:x}")
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
            let _ = writeln!(
                s,
                "[[device]]\nname = \"d{dev}\"\nowner = \"u{u}@x.test\"\naddress = \"{a}\"\n"
            );
            dev += 1;
        }
    }
    for i in 0..rng.below(3) {
        let keys: Vec<String> = (0..1 + rng.below(2))
            .map(|k| format!("{{ name = \"k{k}\", address = \"{}\" }}", addr(rng)))
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
            let e = NOW + *rng.pick(&[-100i64, 50, 100, 100, 200, 300]);
            let _ = writeln!(s, "expires_at = \"{}\"", format_rfc3339(e));
        }
        s.push('\n');
    }
    s
}

fn random_addr_in(rng: &mut Rng, net: &ipnet::IpNet) -> IpAddr {
    match net {
        ipnet::IpNet::V4(n) => {
            let size = 1u64 << (32 - n.prefix_len());
            let off = match rng.below(4) {
                0 => 0,
                1 => size - 1,
                2 => 1 % size,
                _ => rng.next() % size,
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
                3 => (1u128 << 64 | u128::from(rng.next() % 300)) & max,
                _ => (u128::from(rng.next()) << 64 | u128::from(rng.next())) & max,
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + off))
        }
    }
}

fn random_packet(
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
            rng.pick(&p.principals).address
        }
    });
    let mut spaces: Vec<ipnet::IpNet> = dst_space.to_vec();
    spaces.extend(
        p.resources
            .iter()
            .map(|r| r.address)
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
        rng.next() as u16
    };
    Packet {
        src,
        dst,
        proto,
        src_port: rng.next() as u16,
        dst_port,
    }
}

fn boot_ns(t: i64) -> u64 {
    ((t - NOW + 1_000) as u64) * 1_000_000_000
}

#[test]
fn kernel_lookup_matches_reference_evaluator() {
    let mut rng = Rng(0x0005_eed0_f9a7_e3a1);
    let (mut policies, mut retries, mut views, mut checks, mut with_expiry, mut slow_checks) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let mut verdicts = [0usize; 3];
    let mut entries = 0usize;
    while policies < POLICIES {
        let text = gen_policy(&mut rng);
        let policy = match parse(&text, "random.toml", NOW) {
            Ok(p) => p.policy,
            Err(d) => {
                if std::env::var("SHOW_GEN_ERRORS").is_ok() {
                    for x in &d {
                        eprintln!("GENERR {}", x.message);
                    }
                }
                retries += 1;
                assert!(
                    retries < POLICIES * 3,
                    "generator makes invalid policies: {}\n{text}",
                    d[0]
                );
                continue;
            }
        };
        policies += 1;
        let mut hosts: Vec<Host> = policy
            .networks
            .iter()
            .flat_map(|n| n.connectors.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(Host::Connector)
            .collect();
        hosts.extend(policy.devices.iter().map(|d| Host::Device(d.name.clone())));
        for host in &hosts {
            let view = compile(&policy, host, NOW).unwrap();
            views += 1;
            let k = to_kernel(&view, 7, boot_ns);
            entries += k.src.len() + k.dst.len() + k.rules.len();
            let index = KernelIndex::new(&k);
            // Times: now, around every expiry before recompile_at, just before recompile_at.
            let mut times = vec![NOW];
            for g in &policy.grants {
                if let Some(e) = g.expires_at {
                    times.extend([e - 1, e, e + 1]);
                }
            }
            if let Some(r) = view.recompile_at {
                times.push(r - 1);
            }
            times.retain(|&t| t >= NOW && view.recompile_at.is_none_or(|r| t < r));
            times.sort_unstable();
            times.dedup();
            if view
                .rules
                .iter()
                .any(|r| r.value.valid_until_unix.is_some())
            {
                with_expiry += 1;
            }
            let (src, space): (Option<IpAddr>, Vec<ipnet::IpNet>) = match host {
                Host::Device(d) => {
                    let dev = policy.devices.iter().find(|x| &x.name == d).unwrap();
                    let mut space: Vec<ipnet::IpNet> = policy
                        .networks
                        .iter()
                        .flat_map(|n| n.cidrs.iter().copied())
                        .collect();
                    space.extend([
                        "198.18.200.0/24".parse::<ipnet::IpNet>().unwrap(),
                        "2001:db8:9::/48".parse().unwrap(),
                    ]);
                    (Some(dev.address), space)
                }
                Host::Connector(_) => (None, view.protected.clone()),
            };
            for i in 0..40 {
                let pkt = random_packet(&mut rng, &policy, src, &space);
                if let Host::Connector(_) = host
                    && !view
                        .protected
                        .iter()
                        .any(|c| c.contains(&pkt.dst.to_canonical()))
                {
                    continue;
                }
                for &t in &times {
                    let want = evaluate(&policy, &pkt, t);
                    let got = index.lookup(&pkt, boot_ns(t));
                    if i < 3 {
                        assert_eq!(lookup(&k, &pkt, boot_ns(t)), got, "index == plain lookup");
                        slow_checks += 1;
                    }
                    checks += 1;
                    verdicts[want.verdict as usize] += 1;
                    assert_eq!(
                        got,
                        (want.verdict, want.rule_id()),
                        "mismatch for {host:?} at t=now+{}: {pkt:?}\nevaluator: {want:?}\nexplain:\n{}\npolicy:\n{text}\nview: {view:#?}",
                        t - NOW,
                        explain(&policy, &pkt, t).render(&policy)
                    );
                }
            }
        }
    }
    println!(
        "{policies} policies ({retries} regenerated), {views} views, {entries} map entries, \
         {with_expiry} views with expiring entries, {checks} packet checks \
         (deny {}, allow {}, audit {}), {slow_checks} also via plain lookup: 0 mismatches",
        verdicts[0], verdicts[1], verdicts[2]
    );
    assert!(
        verdicts.iter().all(|&v| v > 1000),
        "every verdict is exercised: {verdicts:?}"
    );
}
