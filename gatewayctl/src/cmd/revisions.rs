//! `revisions list|show|diff`: the controller's kept policy revisions (GetPolicy at a
//! revision, ListPolicyRevisions), and a unified diff of two of them.

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use gatewayctl::table::Table;
use serde_json::json;

use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

pub async fn list(ctl: &Ctl, limit: u32, before: Option<u64>, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "list the policy revisions",
            a.list_policy_revisions(v1::ListPolicyRevisionsRequest {
                before: before.unwrap_or(0),
                limit,
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "current": r.current,
            "revisions": r.revisions.iter().map(|v| json!({
                "revision": v.revision,
                "time": format_ms_secs(v.time_ms),
                "time_unix_ms": v.time_ms,
                "actor": v.actor,
                "action": v.action,
                "bytes": v.bytes,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if r.revisions.is_empty() {
                println!(
                    "no revisions kept{} (the policy is at revision {})",
                    if before.is_some() {
                        " below that one"
                    } else {
                        ""
                    },
                    r.current
                );
                return Ok(());
            }
            let mut t = Table::new(&["revision", "time", "actor", "action", "bytes"]);
            for v in &r.revisions {
                t.row(&[
                    if v.revision == r.current {
                        format!("{} (current)", v.revision)
                    } else {
                        v.revision.to_string()
                    },
                    format_ms_secs(v.time_ms),
                    if v.actor.is_empty() {
                        "-".into()
                    } else {
                        v.actor.clone()
                    },
                    v.action.clone(),
                    v.bytes.to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

async fn text_at(ctl: &Ctl, revision: u64) -> R<(String, u64)> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            &format!("read revision {revision} of the policy"),
            a.get_policy(v1::GetPolicyRequest { revision }),
        )
        .await?;
    Ok((r.policy_toml, r.revision))
}

pub async fn show(ctl: &Ctl, revision: u64) -> R<()> {
    if revision == 0 {
        return Err(Fail::Usage(
            "revision 0 is the empty policy before the first change; revisions start at 1".into(),
        ));
    }
    let (text, _) = text_at(ctl, revision).await?;
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

pub async fn diff(ctl: &Ctl, from: u64, to: Option<u64>, context: usize) -> R<()> {
    if from == 0 || to == Some(0) {
        return Err(Fail::Usage(
            "revision 0 is the empty policy before the first change; revisions start at 1".into(),
        ));
    }
    let (old, from) = text_at(ctl, from).await?;
    let (new, to) = text_at(ctl, to.unwrap_or(0)).await?;
    if old == new {
        return Ok(());
    }
    let d = similar::TextDiff::from_lines(&old, &new);
    print!(
        "{}",
        d.unified_diff()
            .context_radius(context)
            .header(&format!("revision {from}"), &format!("revision {to}"))
    );
    Err(Fail::Quiet(1))
}
