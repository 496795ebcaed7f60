//! A policy whose own `[[test]]` blocks fail is refused by the API itself (any client,
//! not only gatewayctl), with each failing test located; `skip_tests` applies it anyway,
//! lists the failing tests in the plan and is recorded as such in the audit trail.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Controller, DEMO, tempdir};
use gateway_proto::v1;

/// The demo policy plus one test the policy contradicts (alice has no database grant).
fn failing() -> String {
    format!(
        "{DEMO}\n[[test]]\nname = \"alice reaches the database\"\nfrom = \"alice-laptop\"\n\
         to = \"198.18.1.10:5432/tcp\"\nexpect = \"allow\"\n"
    )
}

fn req(text: &str, dry_run: bool, skip_tests: bool) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest {
        policy_toml: text.into(),
        file_name: "mine.toml".into(),
        dry_run,
        expected_revision: None,
        skip_tests,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tests_refused_unless_skipped() {
    let (_d, db) = tempdir();
    let c = Controller::start(&db).await;
    let mut admin = c.admin().await;
    let text = failing();
    // The line of the failing test's header in the caller's own file.
    let line = text
        .lines()
        .position(|l| l == "name = \"alice reaches the database\"")
        .unwrap();

    for dry_run in [true, false] {
        let e = admin
            .apply_policy(req(&text, dry_run, false))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let m = e.message();
        assert!(
            m.contains(&format!(
                "mine.toml:{line}:1: error: test `alice reaches the database` fails: \
                 alice-laptop -> 198.18.1.10:5432/tcp expects allow, the policy decides deny"
            )),
            "{m}"
        );
        assert!(m.contains("1 of the policy's"), "{m}");
        assert!(m.contains("skip_tests"), "{m}");
        // Only the failing test is listed.
        assert_eq!(m.matches(": error: ").count(), 1, "{m}");
    }
    assert_eq!(c.state.revision(), 0, "nothing was applied");

    // skip_tests: planned and applied, the failing test in the plan's warnings.
    let r = admin
        .apply_policy(req(&text, false, true))
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    let plan = r.plan.unwrap();
    assert_eq!(plan.new_revision, 1);
    assert!(
        plan.warnings.iter().any(|w| w
            .contains("warning: test `alice reaches the database` fails")
            && w.contains("applied anyway")),
        "{:?}",
        plan.warnings
    );
    assert_eq!(c.state.revision(), 1);

    // The passing policy applies without skip_tests (control), as a plain apply.
    let r = admin
        .apply_policy(req(DEMO, false, false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    assert!(
        r.plan
            .unwrap()
            .warnings
            .iter()
            .all(|w| !w.contains("test `"))
    );
    assert_eq!(c.state.revision(), 2);

    let audit = admin
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a.action.starts_with("apply_policy"))
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            (
                "apply_policy_skip_tests",
                "policy (failing tests skipped: alice reaches the database)"
            ),
            ("apply_policy", "policy"),
        ]
    );
    c.stop().await;
}
