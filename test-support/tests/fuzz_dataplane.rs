//! A bounded run of the stateful data-plane fuzzer (`cargo xtask fuzz-dataplane` runs the
//! large one): sequences over random policies, zero disagreements with the model, at the
//! physical links' hooks and at the tunnel interface's.

use gateway_test_support::skip_unless_privileged;

#[test]
fn loaded_programs_agree_with_the_model() {
    if skip_unless_privileged!() {
        return;
    }
    let report = gateway_test_support::fuzz::run(12, 1_000, 7, |_, _| {}).expect("fuzz run");
    assert_eq!(report.policies, 12);
    // The run must exercise both outcomes, swaps and time, or it proves nothing.
    assert!(report.packets >= 10_000, "{report:?}");
    assert!(
        report.judged.passed > 1_000 && report.judged.dropped > 1_000,
        "{report:?}"
    );
    assert!(report.swaps > 10 && report.time_steps > 10, "{report:?}");
    assert!(
        report.judged.reasons.len() >= 12,
        "too few reasons exercised: {report:?}"
    );
    assert_eq!(
        report.mismatches(),
        0,
        "wrong allow {}, wrong deny {}, wrong reason {}:\n{}",
        report.judged.wrong_allow,
        report.judged.wrong_deny,
        report.judged.wrong_reason,
        report.examples.join("\n")
    );
    // The same sequences through the tunnel programs on a TUN device: most packets must
    // have met a hook (only what the kernel refuses first is skipped, by cause), both
    // hooks and both outcomes must be exercised, and nothing may disagree.
    let l3 = &report.l3;
    assert_eq!(l3.sequences, report.sequences, "{l3:?}");
    assert!(
        l3.packets >= 10_000,
        "too few packets at the tunnel interface: {l3:?}"
    );
    assert!(
        l3.skipped_total() * 10 < l3.packets,
        "too many packets skipped at the tunnel interface: {l3:?}"
    );
    // What the kernel may refuse before a hook: empty packets and, without packet
    // information, version nibbles other than 4 and 6 (EINVAL); a frame cut inside its
    // Ethernet header has no packet to give. Anything else is the harness failing.
    for cause in l3.skipped.keys() {
        assert!(
            cause.starts_with("no IP packet") || cause.contains("(EINVAL)"),
            "unexpected refusal at the tunnel interface: {cause} ({l3:?})"
        );
    }
    assert!(l3.ingress > 3_000 && l3.egress > 3_000, "{l3:?}");
    // Ingress both as the tunnel's userspace writes (the kernel reads the version nibble)
    // and with a claimed protocol (packet information).
    assert!(
        l3.ingress_pi > 1_000 && l3.ingress - l3.ingress_pi > 1_000,
        "{l3:?}"
    );
    assert!(
        l3.judged.passed > 1_000 && l3.judged.dropped > 1_000,
        "{l3:?}"
    );
    assert!(
        l3.judged.reasons.len() >= 15,
        "too few reasons exercised at the tunnel interface: {l3:?}"
    );
    assert_eq!(
        l3.mismatches(),
        0,
        "tunnel interface: wrong allow {}, wrong deny {}, wrong reason {}:\n{}",
        l3.judged.wrong_allow,
        l3.judged.wrong_deny,
        l3.judged.wrong_reason,
        l3.examples.join("\n")
    );
}
