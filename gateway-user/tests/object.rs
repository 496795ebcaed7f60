//! The production object: its programs pass the verifier, its maps are exactly the ones
//! `gateway_common::maps` names (the kernel spells each name once, in its attribute), and
//! it carries no benchmark program.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::maps;
use gateway_user::{Dataplane, dataplane::EBPF_OBJECT, skip_unless_privileged};

#[test]
fn object_map_names() {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).unwrap();
    // Sections the loader turns into maps of its own (constants) are not ours to name.
    let mut found: Vec<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        .filter(|n| !n.starts_with('.'))
        .collect();
    found.sort_unstable();
    let mut want: Vec<&str> = maps::ALL.to_vec();
    want.sort_unstable();
    assert_eq!(
        found, want,
        "maps of the built object vs gateway_common::maps::ALL"
    );
    for name in found {
        assert!(name.len() <= 15, "{name}: the kernel keeps 15 characters");
    }
    let mut progs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    progs.sort_unstable();
    assert_eq!(progs, [maps::PROG_TC_EGRESS, maps::PROG_XDP]);
}

#[test]
fn programs_pass_the_verifier() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = Dataplane::load().unwrap();
    // Unconfigured: every IP packet is dropped, whatever the policy.
    let f = gateway_user::testkit::frame(
        gateway_user::testkit::v4(1, 1),
        gateway_user::testkit::v4(2, 2),
        gateway_user::testkit::L4::Udp { src: 1, dst: 2 },
        &[],
        b"",
    );
    let before = dp.verdict_stats().unwrap();
    let action = gateway_user::testkit::run_xdp(dp.xdp().unwrap(), &f).unwrap();
    let delta = dp.verdict_stats().unwrap().since(&before);
    assert_eq!(action, gateway_user::testkit::action::DROP);
    assert_eq!(
        delta.single(),
        Some(gateway_common::Reason::DeniedUnconfigured)
    );
}
