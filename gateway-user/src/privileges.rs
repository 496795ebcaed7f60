//! Deciding whether a test that needs root and BPF may run, skip, or must fail.
//!
//! Rule: such a test skips (with a printed reason) only when the process is not root *and*
//! `CI` is not `true`. Under `CI=true` a missing capability is a failure, never a skip.

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when `CI=true` (or `1`) is set.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// What a privileged test should do here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Run,
    Skip,
}

/// Decides for the test `name`: run when root; skip with a printed reason when not root
/// outside CI; panic (fail the test) when not root under CI.
pub fn gate(name: &str) -> Gate {
    decide(name, is_root(), in_ci())
}

fn decide(name: &str, root: bool, ci: bool) -> Gate {
    match (root, ci) {
        (true, _) => Gate::Run,
        (false, false) => {
            eprintln!("SKIP {name}: needs root (BPF, network namespaces); CI is not set");
            Gate::Skip
        }
        (false, true) => panic!(
            "{name} needs root (BPF, network namespaces) and CI=true forbids skipping: \
             run the test suite as root"
        ),
    }
}

/// `if skip_unless_privileged!() { return; }` at the top of a privileged test.
#[macro_export]
macro_rules! skip_unless_privileged {
    () => {
        $crate::privileges::gate(module_path!()) == $crate::privileges::Gate::Skip
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_runs() {
        assert_eq!(decide("t", true, false), Gate::Run);
        assert_eq!(decide("t", true, true), Gate::Run);
    }

    #[test]
    fn non_root_outside_ci_skips() {
        assert_eq!(decide("t", false, false), Gate::Skip);
    }

    #[test]
    #[should_panic(expected = "CI=true forbids skipping")]
    fn non_root_in_ci_fails() {
        decide("t", false, true);
    }
}
