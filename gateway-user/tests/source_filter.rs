//! The source filter (docs/dataplane.md, "Sources no principal has"), through the real
//! programs (BPF_PROG_TEST_RUN): a source outside it is decided without the flow table and
//! the source map, and a source that ever had a flow stays inside it, so removing a
//! principal from the policy (both key slots) still ends its open flow as revoked, in the
//! same process and after a reload over the pinned maps.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{FlowState, Reason};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, action, expected_key, frame, load_policy, unix_now},
};
use gateway_user::{Dataplane, agent::pins};
use std::net::IpAddr;

const HOST: &str = "connector:lab-connector";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(a: IpAddr) -> gateway_common::Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One packet through XDP: its action and the one reason counted.
fn decide(dp: &mut Dataplane, f: &[u8]) -> (u32, Option<Reason>) {
    let before = dp.verdict_stats().unwrap();
    let act = testkit::run_xdp(dp.xdp().unwrap(), f).unwrap();
    let got = dp.verdict_stats().unwrap().since(&before);
    dp.drain_events();
    (act, got.single())
}

/// `OPEN_LAB` with the device `tester-v4` at another address: 198.19.0.1 is no principal.
fn without_tester() -> String {
    testkit::OPEN_LAB.replace("\"198.19.0.1\"", "\"198.19.0.99\"")
}

#[test]
fn a_source_outside_the_filter_is_decided_without_the_flow_table() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = Dataplane::load().unwrap();
    load_policy(&mut dp, testkit::OPEN_LAB, HOST, unix_now()).unwrap();
    let principal = addr(ip("198.19.0.1"));
    let filter = dp.policy.src_filter.as_ref().unwrap();
    assert!(
        filter.may_hold(&principal),
        "a principal must pass the filter"
    );
    // An outsider the filter keeps out (one bit in 2^21 of each principal: nearly all do).
    let outsider = (2..250u8)
        .map(|i| IpAddr::from([198, 19, 7, i]))
        .find(|a| !filter.may_hold(&addr(*a)))
        .unwrap();
    let outsiders_kept_out = (0..4096u32)
        .map(|i| IpAddr::from((0xc613_1000u32 + i).to_be_bytes()))
        .filter(|a| !filter.may_hold(&addr(*a)))
        .count();
    assert!(
        outsiders_kept_out >= 4090,
        "{outsiders_kept_out} of 4096 kept out"
    );

    // A flow of the outsider under the active generation: no real program makes one (flows
    // are made for principals only), so only a path that skips the flow table denies it.
    let l4 = L4::Tcp {
        src: 40000,
        dst: 22,
    };
    let dst = ip("198.18.0.5");
    let f = frame(outsider, dst, l4, &[], b"");
    let forged = FlowState {
        generation: dp.active_generation().unwrap(),
        valid_until_ns: u64::MAX,
        principal: 1,
        ..FlowState::default()
    };
    let key = expected_key(outsider, dst, l4);
    dp.flows
        .table_mut(key.proto)
        .insert(key, forged, 0)
        .unwrap();
    assert_eq!(
        decide(&mut dp, &f),
        (action::DROP, Some(Reason::DeniedUnknownSource)),
        "the outsider's packet must be decided without its (forged) flow"
    );

    // Control: the same outsider inside the filter takes the flow table and finds the flow.
    dp.policy
        .src_filter
        .as_mut()
        .unwrap()
        .rebuild([principal, addr(outsider)])
        .unwrap();
    assert_eq!(
        decide(&mut dp, &f),
        (action::PASS, Some(Reason::Established)),
        "control: inside the filter, the forged flow is found"
    );

    // And a principal still gets through the filter to its grants.
    let ok = frame(ip("198.19.0.1"), dst, l4, &[], b"");
    assert_eq!(decide(&mut dp, &ok), (action::PASS, Some(Reason::Allowed)));
}

#[test]
fn a_principal_removed_from_both_slots_has_its_flow_revoked_even_after_a_reload() {
    if skip_unless_privileged!() {
        return;
    }
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        gateway_test_support::netns::unique_name("ztsf")
    ));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pin_dir.clone());
    let pin_dir = pins::prepare(&pin_dir).unwrap();
    let maps = pins::maps_dir(&pin_dir);
    let l4 = L4::Tcp {
        src: 40001,
        dst: 22,
    };
    let f = frame(ip("198.19.0.1"), ip("198.18.0.5"), l4, &[], b"");
    let now = unix_now();

    for reload in [false, true] {
        let mut dp = Dataplane::load_pinned(&maps).unwrap();
        dp.flows.clear().unwrap();
        let mut loaded = load_policy(&mut dp, testkit::OPEN_LAB, HOST, now).unwrap();
        assert_eq!(decide(&mut dp, &f), (action::PASS, Some(Reason::Allowed)));
        assert_eq!(
            decide(&mut dp, &f),
            (action::PASS, Some(Reason::Established))
        );
        // Twice: neither key slot holds the tester's address any more.
        let other = policy_compiler::parse(&without_tester(), "p.toml", now)
            .unwrap()
            .policy;
        let view =
            policy_compiler::compile(&other, &testkit::parse_host(HOST).unwrap(), now).unwrap();
        loaded.writer.apply(&mut dp.policy, &view).unwrap();
        loaded.writer.apply(&mut dp.policy, &view).unwrap();
        let mut dp = if reload {
            drop(dp);
            // A new object over the same pinned maps: its filter is built from them.
            Dataplane::load_pinned(&maps).unwrap()
        } else {
            dp
        };
        assert_eq!(
            decide(&mut dp, &f),
            (action::DROP, Some(Reason::DeniedEstablished)),
            "reload {reload}: the removed principal's open flow must end as revoked"
        );
        assert_eq!(
            decide(&mut dp, &f),
            (action::DROP, Some(Reason::DeniedUnknownSource)),
            "reload {reload}: after that, an unknown source"
        );
    }
}
