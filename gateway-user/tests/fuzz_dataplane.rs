//! A bounded run of the data-plane fuzzer (`cargo xtask fuzz-dataplane` runs the large
//! one): random policies, valid and malformed packets, zero disagreements with the
//! reference evaluator.

use gateway_user::{fuzz, skip_unless_privileged};

#[test]
fn loaded_programs_agree_with_the_evaluator() {
    if skip_unless_privileged!() {
        return;
    }
    let report = fuzz::run(30, 1_000, 7, |_, _| {}).expect("fuzz run");
    assert_eq!(report.policies, 30);
    assert_eq!(report.packets, 30_000);
    // The run must exercise both outcomes and malformed input, or it proves nothing.
    assert!(
        report.passed > 1_000 && report.dropped > 1_000,
        "{report:?}"
    );
    assert!(report.malformed > 1_000, "{report:?}");
    assert_eq!(report.mismatches, 0, "mismatches: {:#?}", report.examples);
}
