//! Differential property test: for random policies (seeded, deterministic), the kernel
//! lookup over the compiled maps gives the reference evaluator's verdict and rule, for
//! every connector and every device, now and after expiries up to `recompile_at`.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use policy_compiler::random::*;
use policy_compiler::*;

const NOW: i64 = 1_700_000_000;
const POLICIES: usize = 2000;

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
    // Entries per map (src, dst, dst_hosts, rules, rules_exact): both tiers are exercised.
    let mut per_map = [0usize; 5];
    while policies < POLICIES {
        let text = gen_policy(&mut rng, NOW);
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
        let hosts = Host::all(&policy);
        for host in &hosts {
            let view = compile(&policy, host, NOW).unwrap();
            views += 1;
            let k = to_kernel(&view, 7, boot_ns);
            entries += k.len();
            for (n, len) in per_map.iter_mut().zip([
                k.src.len(),
                k.dst.len(),
                k.dst_hosts.len(),
                k.rules.len(),
                k.rules_exact.len(),
            ]) {
                *n += len;
            }
            assert!(
                k.dst.iter().all(|e| e.prefix_len < DST_HOST_PREFIX_LEN)
                    && k.rules.iter().all(|e| e.prefix_len < RULE_EXACT_PREFIX_LEN),
                "a full-length entry left in a trie"
            );
            let index = KernelIndex::new(&k);
            // The same entries as maps written before the exact-match tier hold them.
            let old = k.all_in_tries();
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
            let (src, space): (Option<Vec<IpAddr>>, Vec<ipnet::IpNet>) = match host {
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
                    (Some(dev.addresses.clone()), space)
                }
                Host::Connector(_) => (None, view.protected.clone()),
            };
            for i in 0..40 {
                // A device sends from either of its addresses.
                let from = src.as_ref().map(|a| *rng.pick(a));
                let pkt = random_packet(&mut rng, &policy, from, &space);
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
                        assert_eq!(lookup(&old, &pkt, boot_ns(t)), got, "tiers == tries alone");
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
    assert!(
        per_map.iter().all(|&n| n > 1000),
        "every map is exercised (src, dst, dst_hosts, rules, rules_exact): {per_map:?}"
    );
    println!(
        "{policies} policies ({retries} regenerated), {views} views, {entries} map entries \
         {per_map:?}, \
         {with_expiry} views with expiring entries, {checks} packet checks \
         (deny {}, allow {}, audit {}), {slow_checks} also via plain lookup: 0 mismatches",
        verdicts[0], verdicts[1], verdicts[2]
    );
    assert!(
        verdicts.iter().all(|&v| v > 1000),
        "every verdict is exercised: {verdicts:?}"
    );
}
