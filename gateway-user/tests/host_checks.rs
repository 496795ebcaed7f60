//! The host checks against real kernel settings: a namespace made risky on purpose (source
//! routing, SRv6, a VXLAN tunnel that terminates in it) must report each risk; a fresh
//! namespace with the kernel's defaults must report none (the control that shows the first
//! test's findings come from the settings, not from the checker).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::{
    netns::{NetNs, unique_name},
    skip_unless_privileged,
};
use gateway_user::agent::host_check::{self, Report};

/// A namespace with one veth pair inside it; `enforcing` is the end the gateway would be
/// attached to.
fn namespace_with_link(prefix: &str) -> (NetNs, String) {
    let ns = NetNs::new(prefix).unwrap();
    let a = unique_name("zhca");
    let b = unique_name("zhcb");
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.7.1/24", "dev", &a]).unwrap();
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    ns.ip(&["link", "set", &b, "up"]).unwrap();
    (ns, a)
}

fn findings(r: &Report) -> Vec<(String, String)> {
    r.risks()
}

fn gather_in(ns: &NetNs, iface: &str) -> Report {
    let enforcing = vec![iface.to_string()];
    ns.run(|| host_check::assess(&host_check::gather(&enforcing)))
        .unwrap()
}

#[test]
fn risky_settings_are_each_reported() {
    if skip_unless_privileged!() {
        return;
    }
    let (ns, iface) = namespace_with_link("zhcr");
    for setting in [
        "net.ipv4.conf.all.accept_source_route=1".to_string(),
        format!("net.ipv4.conf.{iface}.accept_source_route=1"),
        "net.ipv6.conf.all.seg6_enabled=1".to_string(),
        format!("net.ipv6.conf.{iface}.seg6_enabled=1"),
        "net.ipv6.conf.all.accept_source_route=1".to_string(),
    ] {
        ns.exec("sysctl", &["-qw", &setting]).unwrap();
    }
    let vx = unique_name("zhvx");
    ns.ip(&[
        "link",
        "add",
        &vx,
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "local",
        "198.18.7.1",
    ])
    .unwrap();
    ns.ip(&["link", "set", &vx, "up"]).unwrap();

    let r = gather_in(&ns, &iface);
    let got = findings(&r);
    let expected = [
        ("ipv4_accept_source_route", "all"),
        ("ipv4_accept_source_route", iface.as_str()),
        ("ipv6_seg6_enabled", "all"),
        ("ipv6_seg6_enabled", iface.as_str()),
        ("ipv6_accept_source_route", "all"),
        ("tunnel", vx.as_str()),
    ];
    for (check, on) in expected {
        assert!(
            got.contains(&(check.to_string(), on.to_string())),
            "{check} on {on} not reported; report: {r:#?}"
        );
    }
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let warnings = r.warnings();
    for w in &warnings {
        println!("gateway-agent: {w}");
    }
    assert!(
        warnings.iter().any(|w| w.contains(&format!(
            "tunnel interface {vx} (vxlan) terminates on this host"
        ))),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("fix: sysctl -w net.ipv4.conf.all.accept_source_route=0")),
        "{warnings:#?}"
    );

    // Set down, the tunnel decapsulates nothing and is no longer a finding; the sysctls
    // set back to 0 take their findings with them.
    ns.ip(&["link", "set", &vx, "down"]).unwrap();
    for setting in [
        "net.ipv4.conf.all.accept_source_route=0",
        "net.ipv6.conf.all.seg6_enabled=0",
        "net.ipv6.conf.all.accept_source_route=0",
    ] {
        ns.exec("sysctl", &["-qw", setting]).unwrap();
    }
    let r = gather_in(&ns, &iface);
    assert_eq!(findings(&r), vec![], "{r:#?}");
}

#[test]
fn a_fresh_namespace_has_no_finding() {
    if skip_unless_privileged!() {
        return;
    }
    let (ns, iface) = namespace_with_link("zhcc");
    let r = gather_in(&ns, &iface);
    // IPv4 `all`/`default` are inherited from the host's initial namespace
    // (net.core.devconf_inherit_init_net = 0): a host that sets
    // net.ipv4.conf.all.accept_source_route fails this control, rightly.
    assert_eq!(findings(&r), vec![], "{r:#?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Every planned sysctl and the link list were read.
    assert_eq!(
        r.checks,
        host_check::plan(std::slice::from_ref(&iface)).len() + 1
    );
    assert_eq!(r.notes.len(), 1, "rp_filter of {iface}");
}
