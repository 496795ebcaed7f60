//! Deciding whether a test that needs root and BPF may run, skip, or must fail.
//!
//! Rule: such a test skips (with a printed reason) only when the process is not root *and*
//! `CI` is not `true`. Under `CI=true` a missing capability is a failure, never a skip.
//!
//! A skip is never counted as a pass: when `ZT_SKIP_DIR` is set (`cargo xtask test` sets
//! it), a skipping test leaves a file named after itself there, and the runner reports
//! those tests as skipped, not passed.

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
            record_skip(name);
            Gate::Skip
        }
        (false, true) => panic!(
            "{name} needs root (BPF, network namespaces) and CI=true forbids skipping: \
             run the test suite as root"
        ),
    }
}

/// For a test that needs tools `cargo xtask setup` installs (`what` says which): `false`
/// (run) when `present`; otherwise a skip with a printed reason and a marker outside CI
/// (`true`), and a failure under `CI=true`.
pub fn skip_without(name: &str, what: &str, present: bool) -> bool {
    if present {
        return false;
    }
    if in_ci() {
        panic!("{name} needs {what} and CI=true forbids skipping: run `cargo xtask setup`");
    }
    eprintln!("SKIP {name}: needs {what} (`cargo xtask setup` installs it); CI is not set");
    record_skip(name);
    true
}

/// Leaves a marker for the test runner (see the module docs).
pub(crate) fn record_skip(name: &str) {
    let Some(dir) = std::env::var_os("ZT_SKIP_DIR") else {
        return;
    };
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        std::path::Path::new(&dir).join(format!("{file}-{}", std::process::id())),
        name,
    );
}

/// `if skip_unless_privileged!() { return; }` at the top of a privileged test.
#[macro_export]
macro_rules! skip_unless_privileged {
    () => {
        $crate::privileges::gate(&format!(
            "{}::{}",
            module_path!(),
            std::thread::current().name().unwrap_or("?")
        )) == $crate::privileges::Gate::Skip
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
    fn non_root_outside_ci_skips_and_leaves_a_marker() {
        let dir = std::env::temp_dir().join(format!("zt-skip-test-{}", std::process::id()));
        // SAFETY: the only test of this crate that reads or writes ZT_SKIP_DIR.
        unsafe { std::env::set_var("ZT_SKIP_DIR", &dir) };
        assert_eq!(decide("some::test", false, false), Gate::Skip);
        // SAFETY: as above.
        unsafe { std::env::remove_var("ZT_SKIP_DIR") };
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            names,
            ["some::test"],
            "the runner counts this test as skipped"
        );
    }

    #[test]
    #[should_panic(expected = "CI=true forbids skipping")]
    fn non_root_in_ci_fails() {
        decide("t", false, true);
    }
}
