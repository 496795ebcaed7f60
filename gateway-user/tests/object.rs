//! The production object: its programs pass the verifier, its maps are exactly the ones
//! `gateway_common::maps` names (the kernel spells each name once, in its attribute), and
//! it carries no benchmark program.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::maps;
use gateway_test_support::skip_unless_privileged;
use gateway_user::{Dataplane, dataplane::EBPF_OBJECT};

#[test]
fn object_map_names() {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).unwrap();
    // Sections the loader turns into maps of its own (constants) are not ours to name.
    let mut found: Vec<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        // aya-log's own ring (kernel diagnostics) comes with the logging crate.
        .filter(|n| !n.starts_with('.') && !n.starts_with("AYA_"))
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
    let mut want = [
        maps::PROG_SHIELD_TC_EGRESS,
        maps::PROG_SHIELD_XDP,
        maps::PROG_TC_EGRESS,
        maps::PROG_TUN_EGRESS,
        maps::PROG_TUN_INGRESS,
        maps::PROG_XDP,
    ];
    want.sort_unstable();
    assert_eq!(progs, want);
}

#[test]
fn programs_pass_the_verifier() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = Dataplane::load().unwrap();
    // Unconfigured: every IP packet is dropped, whatever the policy.
    let f = gateway_test_support::testkit::frame(
        gateway_test_support::testkit::v4(1, 1),
        gateway_test_support::testkit::v4(2, 2),
        gateway_test_support::testkit::L4::Udp { src: 1, dst: 2 },
        &[],
        b"",
    );
    let before = dp.verdict_stats().unwrap();
    let action = gateway_test_support::testkit::run_xdp(dp.xdp().unwrap(), &f).unwrap();
    let delta = dp.verdict_stats().unwrap().since(&before);
    assert_eq!(action, gateway_test_support::testkit::action::DROP);
    assert_eq!(
        delta.single(),
        Some(gateway_common::Reason::DeniedUnconfigured)
    );
}

/// Collects log records (the agent prints them; the test reads them).
#[derive(Clone, Default)]
struct Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().unwrap().push(r.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn kernel_diagnostics_only_when_switched_on() {
    if skip_unless_privileged!() {
        return;
    }
    use gateway_test_support::testkit::{self, L4, frame, load_policy, unix_now, v4};
    let mut dp = Dataplane::load().unwrap();
    load_policy(
        &mut dp,
        testkit::OPEN_LAB,
        "connector:lab-connector",
        unix_now(),
    )
    .unwrap();
    let logs = Collect::default();
    let mut logger = dp.take_kernel_log_with(logs.clone()).unwrap();
    // From an unknown source: dropped.
    let denied = frame(v4(200, 1), v4(1, 10), L4::Tcp { src: 1, dst: 22 }, &[], b"");
    testkit::run_xdp(dp.xdp().unwrap(), &denied).unwrap();
    logger.flush();
    assert!(
        logs.0.lock().unwrap().is_empty(),
        "diagnostics are off by default"
    );

    let mut cfg = dp.config().unwrap();
    cfg.diagnostics = 1;
    dp.set_config(&cfg).unwrap();
    testkit::run_xdp(dp.xdp().unwrap(), &denied).unwrap();
    logger.flush();
    let got = logs.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("denied_unknown_source") && got[0].contains("198.18.200.1"),
        "{got:?}"
    );
}
