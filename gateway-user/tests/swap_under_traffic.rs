//! Atomic policy swap under traffic: while packets run through the XDP program without
//! pause, the policy is swapped hundreds of times between policies built so that any
//! mix of two of them (sources of one, rules of another) gives verdicts none of them
//! gives. Every observed verdict must be the one all the policies agree on.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{Reason, policy::Verdict};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, action, frame, unix_now},
};
use gateway_user::{
    Dataplane,
    writer::{BootClock, PolicyWriter},
};
use policy_compiler::{Host, HostView, KernelEntries, Packet};
use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

/// Alice may reach web:80, Bob web:22 — in every variant. The variants differ only in the
/// order users, devices and grants are written (and an extra user), which changes the
/// class ids the compiler hands out: Alice's class in one variant is Bob's in another.
fn variant(order: usize) -> String {
    let users = [
        "[[user]]\nemail = \"alice@example.com\"\n",
        "[[user]]\nemail = \"bob@example.com\"\n",
        "[[user]]\nemail = \"carol@example.com\"\n",
    ];
    let devices = [
        "[[device]]\nname = \"alice-laptop\"\nowner = \"alice@example.com\"\naddress = \"198.19.0.10\"\n",
        "[[device]]\nname = \"bob-laptop\"\nowner = \"bob@example.com\"\naddress = \"198.19.0.11\"\n",
        "[[device]]\nname = \"carol-laptop\"\nowner = \"carol@example.com\"\naddress = \"198.19.0.12\"\n",
    ];
    let grants = [
        "[[allow]]\nname = \"alice-http\"\nprincipals = [\"alice@example.com\"]\nresources = [\"web\"]\ntcp = [\"80\"]\n",
        "[[allow]]\nname = \"bob-ssh\"\nprincipals = [\"bob@example.com\"]\nresources = [\"web\"]\ntcp = [\"22\"]\n",
        "[[allow]]\nname = \"carol-https\"\nprincipals = [\"carol@example.com\"]\nresources = [\"web\"]\ntcp = [\"443\"]\n",
    ];
    let perm: [usize; 3] = match order {
        0 => [0, 1, 2],
        1 => [1, 0, 2],
        _ => [2, 1, 0],
    };
    let mut s = String::from(
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.0.0/16\"]\nconnectors = [\"conn\"]\n\n\
         [[resource]]\nname = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"22\", \"80\", \"443\"]\n\n",
    );
    for i in perm {
        s += users[i];
        s += "\n";
    }
    for i in perm {
        s += devices[i];
        s += "\n";
    }
    for i in perm {
        s += grants[i];
        s += "\n";
    }
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Probe {
    frame: Vec<u8>,
    packet: Packet,
    passes: bool,
}

fn probes() -> Vec<Probe> {
    let web = ip("198.18.1.5");
    let mut out = Vec::new();
    for (src, port, passes) in [
        ("198.19.0.10", 80, true),
        ("198.19.0.10", 22, false),
        ("198.19.0.11", 22, true),
        ("198.19.0.11", 80, false),
    ] {
        let src = ip(src);
        out.push(Probe {
            frame: frame(
                src,
                web,
                L4::Tcp {
                    src: 40000,
                    dst: port,
                },
                &[],
                b"",
            ),
            packet: Packet::tcp(src, web, port),
            passes,
        });
    }
    out
}

fn compile(order: usize, now: i64) -> HostView {
    let parsed = policy_compiler::parse(&variant(order), "swap.toml", now).unwrap();
    policy_compiler::compile(&parsed.policy, &Host::Connector("conn".into()), now).unwrap()
}

/// What a packet would get from the sources of `a` and the atoms and rules of `b`.
fn mixed_verdict(a: &KernelEntries, b: &KernelEntries, p: &Packet) -> Verdict {
    let mix = KernelEntries {
        generation: 0,
        src: a.src.clone(),
        dst: b.dst.clone(),
        dst_hosts: b.dst_hosts.clone(),
        rules: b.rules.clone(),
        rules_exact: b.rules_exact.clone(),
    };
    policy_compiler::lookup(&mix, p, 0).0
}

#[test]
fn swaps_under_traffic_never_mix_policies() {
    if skip_unless_privileged!() {
        return;
    }
    let now = unix_now();
    let views: Vec<HostView> = (0..3).map(|o| compile(o, now)).collect();
    let entries: Vec<KernelEntries> = views
        .iter()
        .map(|v| policy_compiler::to_kernel(v, 0, |_| u64::MAX))
        .collect();
    let probes = probes();

    // Precondition: every variant gives the agreed verdicts, and every mix of two
    // variants gets at least one probe wrong — so a mix would be seen.
    for e in &entries {
        for p in &probes {
            let v = policy_compiler::lookup(e, &p.packet, 0).0;
            assert_eq!(v.passes(), p.passes, "variant disagrees on {:?}", p.packet);
        }
    }
    for (i, a) in entries.iter().enumerate() {
        for (j, b) in entries.iter().enumerate() {
            if i != j {
                assert!(
                    probes
                        .iter()
                        .any(|p| mixed_verdict(a, b, &p.packet).passes() != p.passes),
                    "sources of variant {i} with rules of variant {j} would go unnoticed"
                );
            }
        }
    }

    let mut dp = Dataplane::load().unwrap();
    dp.set_config(&testkit::config_for(&Host::Connector("conn".into())))
        .unwrap();
    let mut writer = PolicyWriter::new(dp.active_generation().unwrap(), BootClock::new());
    writer.apply(&mut dp.policy, &views[0]).unwrap();
    let (xdp, maps) = dp.xdp_and_policy().unwrap();

    // Each swap waits for the grace period of the one before (a few ms).
    const SWAPS: usize = 400;
    let stop = AtomicBool::new(false);
    let observed = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    let mut written = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let p = &probes[i % probes.len()];
                let act = testkit::run_xdp(xdp, &p.frame).unwrap();
                if (act == action::PASS) != p.passes {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                observed.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        for k in 1..=SWAPS {
            let stats = writer.apply(maps, &views[k % 3]).unwrap();
            written += stats.written + stats.deleted;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let observed = observed.into_inner();
    eprintln!(
        "{SWAPS} swaps, {written} map writes, {observed} packets observed, {} mixed",
        wrong.load(Ordering::Relaxed)
    );
    assert!(
        observed >= 1000,
        "traffic did not overlap the swaps: {observed} packets"
    );
    // Three variants over two key slots: every swap rewrote entries, not just the flip.
    assert!(written >= SWAPS, "swaps wrote only {written} entries");
    assert_eq!(wrong.into_inner(), 0, "packets saw a mix of two policies");
    let stats = dp.verdict_stats().unwrap();
    assert!(stats.reason(Reason::Allowed) + stats.reason(Reason::Established) > 0);
}
