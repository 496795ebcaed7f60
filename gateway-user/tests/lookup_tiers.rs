//! The exact-match tier in front of the LPM tries, through the real programs
//! (BPF_PROG_TEST_RUN) against the reference evaluator: full hosts live in `DST_HOSTS` and
//! single ports in `RULES_EXACT`, looked up before `DST` and `RULES`, and the pair must
//! answer as one trie holding both would. The policy nests hosts in subnets with other
//! grants, and overlaps port ranges with single-port grants of the other action, so a
//! program that skipped a hash, or preferred a trie's shorter match, gets probes wrong.
//!
//! Maps written before the hashes existed hold every entry in the tries; the programs
//! decide the same from them, and the next apply moves the entries into the hashes.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{
    Reason,
    flow::proto,
    policy::{RuleKey, RuleValue},
};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, action, frame, load_policy, unix_now},
};
use gateway_user::{
    Dataplane,
    writer::{BootClock, PolicyWriter, read_slot},
};
use policy_compiler::{
    DST_HOST_PREFIX_LEN, Host, KernelEntries, Packet, Policy, RULE_EXACT_PREFIX_LEN, evaluate,
};
use std::net::IpAddr;

const HOST: &str = "connector:conn";

/// Hosts inside subnets with other grants (IPv4 and IPv6), an audit-mode subnet with an
/// enforcing host in it, range grants with single-port grants of the other action inside
/// them, both ways round.
const POLICY: &str = r#"
[[remote_network]]
name = "dc"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["conn"]

[[resource]]
name = "subnet"
network = "dc"
address = "198.18.1.0/24"
tcp = "all"
udp = "all"
icmp = true

[[resource]]
name = "host"
network = "dc"
address = "198.18.1.5"
tcp = "all"
udp = "all"

[[resource]]
name = "lab"
network = "dc"
address = "198.18.2.0/24"
tcp = "all"
mode = "audit"

[[resource]]
name = "printer"
network = "dc"
address = "198.18.2.7"
tcp = ["631", "9100"]

[[resource]]
name = "subnet6"
network = "dc"
address = "2001:db8:1:1::/64"
tcp = "all"
icmp = true

[[resource]]
name = "host6"
network = "dc"
address = "2001:db8:1:1::5"
tcp = "all"

[[user]]
email = "alice@x.test"

[[user]]
email = "bob@x.test"

[[device]]
name = "alice"
owner = "alice@x.test"
address = "198.19.0.1"

[[device]]
name = "alice-v6"
owner = "alice@x.test"
address = "2001:db8:ff::1"

[[device]]
name = "bob"
owner = "bob@x.test"
address = "198.19.0.2"

[[device]]
name = "bob-v6"
owner = "bob@x.test"
address = "2001:db8:ff::2"

# A range on the subnet, a single port denied on the host inside it.
[[allow]]
name = "alice-subnet-low"
principals = ["alice@x.test"]
resources = ["subnet", "subnet6"]
tcp = ["1-1024"]
udp = ["53", "1000-2000"]
icmp = true

[[deny]]
name = "alice-not-host-https"
principals = ["alice@x.test"]
resources = ["host", "host6"]
tcp = ["443"]

[[allow]]
name = "alice-host-high"
principals = ["alice@x.test"]
resources = ["host", "host6"]
tcp = ["8000-8100"]

# A single port allowed on the host, a range denied on the subnet around it; a range
# allowed on the host with a single port denied inside it.
[[allow]]
name = "bob-host-ssh"
principals = ["bob@x.test"]
resources = ["host", "host6"]
tcp = ["22", "8443"]

[[deny]]
name = "bob-not-subnet-low"
principals = ["bob@x.test"]
resources = ["subnet", "subnet6"]
tcp = ["1-1024"]

[[allow]]
name = "bob-host-range"
principals = ["bob@x.test"]
resources = ["host", "host6"]
tcp = ["8000-8100"]
udp = ["53"]

[[deny]]
name = "bob-not-host-8080"
principals = ["bob@x.test"]
resources = ["host"]
tcp = ["8080"]

[[allow]]
name = "bob-printer"
principals = ["bob@x.test"]
resources = ["printer"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Probe {
    frame: Vec<u8>,
    packet: Packet,
}

/// Every source (principals and a stranger) to hosts, their subnets' other addresses,
/// protected space outside every resource, and unprotected space; TCP and UDP on ports
/// at and around each grant's edges, and an echo request.
fn probes() -> Vec<Probe> {
    let v4_src = ["198.19.0.1", "198.19.0.2", "198.19.9.9"];
    let v6_src = ["2001:db8:ff::1", "2001:db8:ff::2", "2001:db8:ff::99"];
    let v4_dst = [
        "198.18.1.5",
        "198.18.1.6",
        "198.18.1.0",
        "198.18.1.255",
        "198.18.2.7",
        "198.18.2.8",
        "198.18.3.1",
        "198.17.0.1",
    ];
    let v6_dst = [
        "2001:db8:1:1::5",
        "2001:db8:1:1::4",
        "2001:db8:1:1::6",
        "2001:db8:1:2::5",
        "2001:db8:2::5",
    ];
    let ports = [
        1u16, 21, 22, 23, 53, 442, 443, 444, 631, 1000, 1024, 1025, 2000, 2001, 7999, 8000, 8079,
        8080, 8081, 8100, 8101, 8443, 9100,
    ];
    let mut out = Vec::new();
    let families = [(&v4_src[..], &v4_dst[..]), (&v6_src[..], &v6_dst[..])];
    for (srcs, dsts) in families {
        for src in srcs.iter().map(|s| ip(s)) {
            for dst in dsts.iter().map(|d| ip(d)) {
                for &port in &ports {
                    for (l4, p) in [
                        (
                            L4::Tcp {
                                src: 40000,
                                dst: port,
                            },
                            proto::TCP,
                        ),
                        (
                            L4::Udp {
                                src: 40000,
                                dst: port,
                            },
                            proto::UDP,
                        ),
                    ] {
                        out.push(Probe {
                            frame: frame(src, dst, l4, &[], b""),
                            packet: Packet {
                                src,
                                dst,
                                proto: p,
                                src_port: 40000,
                                dst_port: port,
                            },
                        });
                    }
                }
                let icmp = if dst.is_ipv4() {
                    proto::ICMP
                } else {
                    proto::ICMPV6
                };
                out.push(Probe {
                    frame: frame(src, dst, L4::EchoRequest { id: 7 }, &[], b""),
                    packet: Packet {
                        src,
                        dst,
                        proto: icmp,
                        src_port: 0,
                        dst_port: 0,
                    },
                });
            }
        }
    }
    out
}

/// The reason the programs count for the evaluator's decision (a connector, outbound).
fn kernel_reason(d: &policy_compiler::Decision) -> Reason {
    use policy_compiler::Reason as E;
    match d.reason {
        E::Unprotected => Reason::Unprotected,
        E::UnknownSource if d.verdict.passes() => Reason::Audit,
        E::UnknownSource => Reason::DeniedUnknownSource,
        E::DeniedByRule => Reason::DeniedByRule,
        E::AuditDenyRule | E::AuditNoGrant => Reason::Audit,
        E::Granted => Reason::Allowed,
        E::NoGrant => Reason::DeniedNoGrant,
    }
}

/// Runs every probe through the XDP program with no traffic state (each is a flow's
/// first packet, decided by the lookups) and checks pass/drop, the reason counted and
/// the rule its event reports against the evaluator. Returns the failures.
fn check_probes(dp: &mut Dataplane, policy: &Policy, probes: &[Probe], now: i64) -> Vec<String> {
    let mut failures = Vec::new();
    for p in probes {
        dp.reset_traffic_state().unwrap();
        let want = evaluate(policy, &p.packet, now);
        let reason = kernel_reason(&want);
        let before = dp.verdict_stats().unwrap();
        let act = testkit::run_xdp(dp.xdp().unwrap(), &p.frame).unwrap();
        let got = dp.verdict_stats().unwrap().since(&before);
        let events = dp.drain_events();
        let mut fail =
            |m: String| failures.push(format!("{:?}: {m} (evaluator: {want:?})", p.packet));
        if (act == action::PASS) != want.verdict.passes() {
            fail(format!("XDP action {act}"));
        }
        if got.single() != Some(reason) {
            fail(format!(
                "reasons {:?}, want {}",
                got.nonzero(),
                reason.name()
            ));
        }
        if reason != Reason::Unprotected
            && !events
                .iter()
                .any(|e| u32::from(e.reason) == reason as u32 && e.rule == want.rule_id())
        {
            let seen: Vec<(u8, u32)> = events.iter().map(|e| (e.reason, e.rule)).collect();
            fail(format!(
                "no event with reason {} rule {}: {seen:?}",
                reason.name(),
                want.rule_id()
            ));
        }
    }
    failures
}

fn parse(now: i64) -> Policy {
    policy_compiler::parse(POLICY, "tiers.toml", now)
        .unwrap()
        .policy
}

/// Preconditions that give the probes teeth: the compiled entries use both tiers of both
/// lookups, and a lookup that skipped either hash would get some probe wrong.
fn probes_need_both_tiers(k: &KernelEntries, policy: &Policy, probes: &[Probe], now: i64) {
    assert!(!k.dst.is_empty() && !k.dst_hosts.is_empty(), "{k:#?}");
    assert!(!k.rules.is_empty() && !k.rules_exact.is_empty(), "{k:#?}");
    let wrong_without = |k: &KernelEntries| {
        probes
            .iter()
            .filter(|p| {
                let want = evaluate(policy, &p.packet, now);
                policy_compiler::lookup(k, &p.packet, 0) != (want.verdict, want.rule_id())
            })
            .count()
    };
    assert_eq!(wrong_without(k), 0, "the compiled entries disagree");
    let no_hosts = KernelEntries {
        dst_hosts: Vec::new(),
        ..k.clone()
    };
    let no_exact = KernelEntries {
        rules_exact: Vec::new(),
        ..k.clone()
    };
    assert!(wrong_without(&no_hosts) > 0, "DST_HOSTS is never needed");
    assert!(wrong_without(&no_exact) > 0, "RULES_EXACT is never needed");
}

#[test]
fn hosts_and_single_ports_take_precedence_across_tiers() {
    if skip_unless_privileged!() {
        return;
    }
    let now = unix_now();
    let policy = parse(now);
    let probes = probes();
    let mut dp = Dataplane::load().unwrap();
    let loaded = load_policy(&mut dp, POLICY, HOST, now).unwrap();
    let entries = loaded.writer.active_entries().unwrap().clone();
    probes_need_both_tiers(&entries, &policy, &probes, now);

    // The split happened in the kernel maps: no full host in the DST trie, no single port
    // in the RULES trie, and the hashes hold exactly the compiled full-length entries.
    let slot = entries.generation;
    for k in dp.policy.dst.keys() {
        let k = k.unwrap();
        assert!(
            k.prefix_len() < DST_HOST_PREFIX_LEN,
            "DST holds a host: {:?}",
            k.data()
        );
    }
    for k in dp.policy.rules.keys() {
        let k = k.unwrap();
        assert!(
            k.prefix_len() < RULE_EXACT_PREFIX_LEN,
            "RULES holds a single port: {:?}",
            k.data()
        );
    }
    let in_kernel = read_slot(&dp.policy, slot).unwrap();
    assert_eq!(in_kernel, entries, "the maps hold what was compiled");
    let host = gateway_common::policy::DstKey {
        generation: slot,
        addr: policy_compiler::kernel::addr16(ip("198.18.1.5")),
    };
    assert!(
        dp.policy.dst_hosts.get(&host, 0).is_ok(),
        "198.18.1.5 in DST_HOSTS"
    );
    let exact: Vec<(RuleKey, RuleValue)> = in_kernel.rules_exact.clone();
    assert!(
        exact
            .iter()
            .any(|(k, _)| u16::from_be_bytes(k.port) == 8080),
        "{exact:?}"
    );

    let failures = check_probes(&mut dp, &policy, &probes, now);
    assert!(
        failures.is_empty(),
        "{} of {} probes wrong:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
    eprintln!("{} probes agree with the evaluator", probes.len());
}

/// Writes `e` into its key slot directly, every list into the map it names (what an older
/// agent left behind), without touching `ACTIVE`.
fn write_raw(dp: &mut Dataplane, e: &KernelEntries) {
    use aya::maps::lpm_trie::Key;
    let m = &mut dp.policy;
    for (k, v) in &e.src {
        m.src.insert(k, v, 0).unwrap();
    }
    for d in &e.dst {
        m.dst
            .insert(&Key::new(d.prefix_len, d.key), d.value, 0)
            .unwrap();
    }
    for (k, v) in &e.dst_hosts {
        m.dst_hosts.insert(k, v, 0).unwrap();
    }
    for r in &e.rules {
        m.rules
            .insert(&Key::new(r.prefix_len, r.key), r.value, 0)
            .unwrap();
    }
    for (k, v) in &e.rules_exact {
        m.rules_exact.insert(k, v, 0).unwrap();
    }
}

#[test]
fn entries_of_an_older_layout_decide_the_same_and_move_on_apply() {
    if skip_unless_privileged!() {
        return;
    }
    let now = unix_now();
    let policy = parse(now);
    let probes = probes();
    let view = policy_compiler::compile(&policy, &Host::Connector("conn".into()), now).unwrap();
    let clock = BootClock::new();
    let compiled = |slot: u8| policy_compiler::to_kernel(&view, slot, |t| clock.unix_to_boot_ns(t));
    let old: Vec<KernelEntries> = (0..2).map(|s| compiled(s).all_in_tries()).collect();
    let moved = compiled(0).dst_hosts.len() + compiled(0).rules_exact.len();
    assert!(moved > 0);

    // Both slots as an agent before the exact-match tier left them; generation 1 active.
    let mut dp = Dataplane::load().unwrap();
    dp.set_config(&testkit::config_for(&Host::Connector("conn".into())))
        .unwrap();
    for e in &old {
        write_raw(&mut dp, e);
    }
    // As a load over pinned maps would find them.
    dp.rebuild_source_filter().unwrap();
    dp.policy.active.set(0, 1, 0).unwrap();
    assert_eq!(read_slot(&dp.policy, 1).unwrap(), old[1]);
    assert!(read_slot(&dp.policy, 1).unwrap().dst_hosts.is_empty());
    let failures = check_probes(&mut dp, &policy, &probes, now);
    assert!(
        failures.is_empty(),
        "old-layout entries, {} of {} probes wrong:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );

    // The next apply writes slot 0: the diff from what it holds deletes the tries' copies
    // of the full-length entries and writes them into the hashes, nothing else.
    let mut writer = PolicyWriter::new(1, clock);
    let stats = writer.apply(&mut dp.policy, &view).unwrap();
    assert_eq!(stats.generation, 2);
    assert_eq!((stats.written, stats.deleted), (moved, moved), "{stats:?}");
    assert_eq!(read_slot(&dp.policy, 0).unwrap(), compiled(0));
    assert_eq!(
        read_slot(&dp.policy, 1).unwrap(),
        old[1],
        "slot in force untouched"
    );
    let failures = check_probes(&mut dp, &policy, &probes, now);
    assert!(
        failures.is_empty(),
        "after the first apply:\n{}",
        failures.join("\n")
    );

    // And the one after that, slot 1.
    let stats = writer.apply(&mut dp.policy, &view).unwrap();
    assert_eq!((stats.written, stats.deleted), (moved, moved), "{stats:?}");
    assert_eq!(read_slot(&dp.policy, 1).unwrap(), compiled(1));
    assert_eq!(read_slot(&dp.policy, 0).unwrap(), compiled(0));
    for k in dp.policy.dst.keys() {
        assert!(k.unwrap().prefix_len() < DST_HOST_PREFIX_LEN);
    }
    for k in dp.policy.rules.keys() {
        assert!(k.unwrap().prefix_len() < RULE_EXACT_PREFIX_LEN);
    }
    let failures = check_probes(&mut dp, &policy, &probes, now);
    assert!(
        failures.is_empty(),
        "after the second apply:\n{}",
        failures.join("\n")
    );
}

/// A first fill (the policy into an empty slot: a fresh start) writes the policy into the
/// other slot too, so the next change writes only its difference, not the whole policy
/// (at 100k rules the whole policy is ~1.6 s of writes).
#[test]
fn a_first_fill_writes_both_slots_so_the_next_change_writes_only_its_difference() {
    if skip_unless_privileged!() {
        return;
    }
    let now = unix_now();
    let policy = parse(now);
    let view = policy_compiler::compile(&policy, &Host::Connector("conn".into()), now).unwrap();
    let clock = BootClock::new();
    let compiled = |slot: u8| policy_compiler::to_kernel(&view, slot, |t| clock.unix_to_boot_ns(t));
    let mut dp = Dataplane::load().unwrap();
    dp.set_config(&testkit::config_for(&Host::Connector("conn".into())))
        .unwrap();
    let mut writer = PolicyWriter::new(dp.active_generation().unwrap(), clock);
    let first = writer.apply(&mut dp.policy, &view).unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(
        read_slot(&dp.policy, 1).unwrap(),
        compiled(1),
        "slot in force"
    );
    assert_eq!(
        read_slot(&dp.policy, 0).unwrap(),
        compiled(0),
        "the other slot, mirrored"
    );
    // The same policy again (a change elsewhere in the fleet): nothing to write.
    let second = writer.apply(&mut dp.policy, &view).unwrap();
    assert_eq!(second.generation, 2);
    assert_eq!((second.written, second.deleted), (0, 0), "{second:?}");
    let failures = check_probes(&mut dp, &policy, &probes(), now);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
