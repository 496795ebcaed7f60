//! The generator: deterministic per seed, and over a few dozen seeds it reaches every reason
//! of the contract, both roles, swaps, expiries and the traffic kinds it promises.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gateway_model::scenario::{self, START, Step};
use gateway_model::{Direction, Model, Role};

const SEEDS: u64 = 60;

#[test]
fn deterministic_per_seed() {
    for seed in [0u64, 1, 42] {
        let a = scenario::generate(seed);
        let b = scenario::generate(seed);
        assert_eq!(a, b);
        assert_eq!(scenario::replay(&a), scenario::replay(&b));
        assert_ne!(a, scenario::generate(seed + 1000));
        assert_eq!(a.start, START);
    }
}

#[test]
fn sequences_reach_every_reason() {
    let mut reasons: BTreeMap<(&str, Direction), usize> = BTreeMap::new();
    let (mut devices, mut connectors, mut swaps, mut advances, mut packets) = (0, 0, 0, 0, 0);
    let (mut audit_policies, mut expiring) = (0, 0);
    let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
    let needles = [
        "open",
        "reply to",
        "out-of-window RST",
        "icmp error",
        "forged",
        "fragment",
        "later fragments without their first",
        "unknown source",
        "IPv4-mapped",
        "protected source sent outbound",
        "source-routed",
        "proto 47",
        "catalog:",
        "echo request back",
        "internet",
    ];
    let mut flows_opened = 0;
    for seed in 0..SEEDS {
        let s = scenario::generate(seed);
        let p = policy_compiler::parse(&s.policy_text, "s.toml", s.start)
            .unwrap()
            .policy;
        audit_policies += usize::from(scenario::has_audit(&p));
        expiring += usize::from(p.grants.iter().any(|g| {
            g.expires_at
                .is_some_and(|e| e > s.start && e < s.start + 600)
        }));
        match s.role {
            Role::Device(_) => devices += 1,
            Role::Connector(_) => connectors += 1,
        }
        let expected = scenario::replay(&s);
        assert_eq!(expected.len(), s.steps.len());
        for (step, e) in s.steps.iter().zip(&expected) {
            match step {
                Step::Packet { dir, label, frame } => {
                    packets += 1;
                    assert!(!label.is_empty() && !frame.is_empty());
                    let e = e.unwrap();
                    assert_eq!(Model::reason_passes(e.reason), Some(e.passes));
                    flows_opened += usize::from(e.opened_flow);
                    *reasons.entry((e.reason, *dir)).or_default() += 1;
                    for n in needles {
                        if label.contains(n) {
                            *labels.entry(n).or_default() += 1;
                        }
                    }
                }
                Step::Swap { .. } => {
                    swaps += 1;
                    assert!(e.is_none());
                }
                Step::Advance { seconds } => {
                    advances += 1;
                    assert!(*seconds > 0 && e.is_none());
                }
            }
        }
    }
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for ((r, _), n) in &reasons {
        *by_reason.entry(r).or_default() += n;
    }
    println!(
        "{SEEDS} sequences, {packets} packets ({flows_opened} opened a flow), {swaps} swaps, \
         {advances} advances, {devices} device / {connectors} connector hosts, \
         {audit_policies} with audit mode, {expiring} with grants expiring in the first 10 min"
    );
    for (r, n) in &reasons {
        println!("{:>22} {:?}: {n}", r.0, r.1);
    }
    for name in Model::reason_names() {
        assert!(by_reason.contains_key(name), "no sequence reaches `{name}`");
    }
    for (name, dir) in [
        ("reply", Direction::Inbound),
        ("established", Direction::Outbound),
        ("icmp_error_related", Direction::Inbound),
        ("icmp_error_related", Direction::Outbound),
        ("fragment_allowed", Direction::Inbound),
        ("fragment_allowed", Direction::Outbound),
        ("denied_established", Direction::Outbound),
        ("denied_established", Direction::Inbound),
        ("denied_fragment", Direction::Inbound),
        ("audit", Direction::Inbound),
    ] {
        assert!(
            reasons.contains_key(&(name, dir)),
            "no `{name}` on the {dir:?} hook"
        );
    }
    for n in needles {
        assert!(labels.get(n).copied().unwrap_or(0) > 0, "no `{n}` step");
    }
    assert!(devices >= 5 && connectors >= 5, "{devices} / {connectors}");
    assert!(swaps >= SEEDS as usize && advances >= SEEDS as usize);
    assert!(
        audit_policies >= 10 && expiring >= 10,
        "{audit_policies} {expiring}"
    );
}
