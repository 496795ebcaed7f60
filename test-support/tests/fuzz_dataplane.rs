//! A bounded run of the stateful data-plane fuzzer (`cargo xtask fuzz-dataplane` runs the
//! large one): sequences over random policies, zero disagreements with the model.

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
        report.passed > 1_000 && report.dropped > 1_000,
        "{report:?}"
    );
    assert!(report.swaps > 10 && report.time_steps > 10, "{report:?}");
    assert!(
        report.reasons.len() >= 12,
        "too few reasons exercised: {report:?}"
    );
    assert_eq!(
        report.mismatches(),
        0,
        "wrong allow {}, wrong deny {}, wrong reason {}:\n{}",
        report.wrong_allow,
        report.wrong_deny,
        report.wrong_reason,
        report.examples.join("\n")
    );
}
