//! `diff FILE`: the plan of applying a policy file against the controller's live policy,
//! without applying it. Exit 0 no changes, 1 changes, 2 errors (like diff(1)).

use std::path::Path;

use gateway_proto::v1;
use serde_json::json;

use super::apply::{error_count, plan_is_empty, plan_json, plan_text};
use super::read_file;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, plural, print_json};

/// A failure of `diff` as exit 2 (exit 1 means changes there); `Quiet` codes stay.
pub fn error(f: Fail) -> Fail {
    match f {
        Fail::Quiet(c) => Fail::Quiet(c),
        Fail::Exit2(f) => Fail::Exit2(f),
        other => Fail::Exit2(Box::new(other)),
    }
}

pub async fn diff(ctl: &Ctl, file: &Path, output: Output) -> R<()> {
    let text = read_file(file)?;
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "plan the policy",
            a.apply_policy(v1::ApplyPolicyRequest {
                skip_tests: false,
                policy_toml: text,
                file_name: file.display().to_string(),
                dry_run: true,
                expected_revision: None,
            }),
        )
        .await
        .map_err(|e| match e {
            // The located errors as they are, then a summary like `apply`.
            Fail::Raw(d) => {
                let n = error_count(&d);
                Fail::Diagnostics(
                    d,
                    format!("`{}` has {n} error{}", file.display(), plural(n)),
                )
            }
            other => other,
        })?;
    let plan = r
        .plan
        .ok_or_else(|| Fail::Error("the controller answered without a plan".into()))?;
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    let changes = !plan_is_empty(&plan);
    match output {
        Output::Json => print_json(&json!({"changes": changes, "plan": plan_json(&plan)})),
        Output::Text => print!("{}", plan_text(&plan)),
    }
    if changes { Err(Fail::Quiet(1)) } else { Ok(()) }
}
