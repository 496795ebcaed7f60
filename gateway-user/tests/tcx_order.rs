//! tcx ordering: another program on the same egress hook must not bypass the gateway.
//! A program that returns TC_ACT_OK (TCX_PASS) ends a tcx chain; the gateway attaches first
//! and returns TCX_NEXT when it has no objection, so programs after it still run, and its
//! drops are final. The control attaches the gateway last and shows the pass-all program
//! then lets denied traffic out: the test can fail.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::{
    EbpfLoader,
    maps::PerCpuArray,
    programs::{LinkOrder, SchedClassifier, TcAttachType, XdpMode, tc::TcAttachOptions},
};
use gateway_common::maps::bench;
use gateway_test_support::{
    netns::{NetNs, veth_pair},
    skip_unless_privileged,
    testkit::{self, load_policy, unix_now},
};
use gateway_user::{Dataplane, dataplane::BENCH_OBJECT};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(800);

const POLICY: &str = r#"
[[remote_network]]
name = "corp"
cidrs = ["198.18.1.0/24"]
connectors = ["conn"]

[[resource]]
name = "web"
network = "corp"
address = "198.18.1.5"
tcp = ["443"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "198.18.2.10"

[[allow]]
name = "alice-web"
principals = ["alice@example.com"]
resources = ["web"]
"#;

#[test]
fn the_gateway_runs_first_in_the_tcx_chain() {
    if skip_unless_privileged!() {
        return;
    }
    let alice = NetNs::new("zta").unwrap();
    let res = NetNs::new("ztr").unwrap();
    let (a_if, _) = veth_pair(&alice, &["198.18.2.10/16"], &res, &["198.18.1.5/16"]).unwrap();
    let iface = a_if.iface.clone();
    testkit::tcp_echo_servers(&res, &["198.18.1.5:443", "198.18.1.5:23"]).unwrap();

    // Another program on alice's egress that passes everything (TCX_PASS).
    let mut other = EbpfLoader::new().load(BENCH_OBJECT).unwrap();
    let pass: &mut SchedClassifier = other
        .program_mut(bench::PROG_TC_PASS)
        .unwrap()
        .try_into()
        .unwrap();
    pass.load().unwrap();
    alice
        .run(|| {
            pass.attach_with_options(
                &iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap()
        })
        .unwrap();
    let runs: PerCpuArray<_, u64> =
        PerCpuArray::try_from(other.map(bench::TC_PASS_RUNS).unwrap()).unwrap();
    let runs_now = || -> u64 { runs.get(&0, 0).unwrap().iter().sum() };
    assert!(
        testkit::tcp_echo(&alice, "198.18.1.5:23", TIMEOUT),
        "control: port 23 answers"
    );

    let now = unix_now();
    let mut dp = Dataplane::load().unwrap();
    load_policy(&mut dp, POLICY, "device:alice-laptop", now).unwrap();

    // Control: the gateway last in the chain. The pass-all program before it ends the
    // chain, so denied traffic leaves: the ordering matters.
    let late = alice
        .run(|| {
            dp.tc()
                .unwrap()
                .attach_with_options(
                    &iface,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::last()),
                )
                .unwrap()
        })
        .unwrap();
    assert!(
        testkit::tcp_echo(&alice, "198.18.1.5:23", TIMEOUT),
        "control: with the gateway last, the pass-all program lets port 23 out"
    );
    alice
        .run(|| dp.tc().unwrap().detach(late).unwrap())
        .unwrap();

    // The gateway as the agent attaches it: tcx egress first, XDP for the replies.
    alice
        .run(|| {
            dp.attach_tc_egress(&iface).unwrap();
            dp.attach_xdp(&iface, XdpMode::Driver).unwrap();
        })
        .unwrap();
    let before = runs_now();
    assert!(
        testkit::tcp_dropped(&alice, "198.18.1.5:23", TIMEOUT),
        "port 23 must be dropped whatever runs after the gateway"
    );
    assert!(
        testkit::tcp_echo(&alice, "198.18.1.5:443", TIMEOUT),
        "port 443 is allowed"
    );
    // TCX_NEXT: the program after the gateway still saw the allowed packets.
    assert!(
        runs_now() > before,
        "the program after the gateway never ran: the gateway ended the chain"
    );
}
