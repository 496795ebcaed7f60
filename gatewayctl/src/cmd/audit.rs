//! `gatewayctl audit`: the admin audit trail, and `audit verify` of its hash chain.

use gateway_proto::v1;
use gatewayctl::remote::{format_ms, format_ms_secs};
use gatewayctl::table::Table;
use serde_json::json;

use super::time_arg;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

/// `gatewayctl audit verify`: the controller re-hashes the whole chain.
pub async fn verify(ctl: &Ctl, expect_head: Option<String>, output: Output) -> R<()> {
    let mut admin = ctl.admin.clone();
    let anchored = expect_head.is_some();
    let r = admin
        .verify_audit(gateway_proto::v1::VerifyAuditRequest { expect_head })
        .await
        .map_err(|s| ctl.fail("verify the audit trail", &s))?
        .into_inner();
    if output == Output::Json {
        print_json(&serde_json::json!({
            "ok": r.ok,
            "records": r.records,
            "first_bad_id": r.first_bad_id,
            "reason": r.reason,
            "head_hash": r.head_hash,
            "expected_head_id": r.expected_head_id,
        }));
    } else if r.ok {
        println!(
            "audit trail intact: {} records, head hash {}",
            r.records, r.head_hash
        );
        match r.expected_head_id {
            Some(id) if anchored => {
                println!("the anchored head is record {id}: nothing before it was rewritten or cut")
            }
            _ => println!(
                "(keep the head hash elsewhere and check it later with --expect-head: it \
                 detects a trail rewritten or cut since)"
            ),
        }
    } else {
        println!(
            "audit trail BROKEN at record {}: {}",
            r.first_bad_id.map_or("?".into(), |i| i.to_string()),
            r.reason
        );
    }
    if r.ok {
        Ok(())
    } else {
        Err(Fail::Error(format!(
            "the audit trail does not verify (first bad record {})",
            r.first_bad_id.map_or("?".into(), |i| i.to_string())
        )))
    }
}

pub async fn report(
    ctl: &Ctl,
    since: &Option<String>,
    until: &Option<String>,
    limit: Option<u32>,
    output: Output,
) -> R<()> {
    let mut a = ctl.admin.clone();
    let records = ctl
        .call(
            "read the audit report",
            a.audit_report(v1::AuditReportRequest {
                since_unix_ms: time_arg("--since", since)?,
                until_unix_ms: time_arg("--until", until)?,
                limit: limit.unwrap_or(0),
            }),
        )
        .await?
        .records;
    match output {
        Output::Json => print_json(&json!({
            "records": records.iter().map(|r| json!({
                "id": r.id,
                "time": format_ms(r.time_unix_ms),
                "time_unix_ms": r.time_unix_ms,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "before": r.before,
                "after": r.after,
                "revision": r.revision,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if records.is_empty() {
                println!("no audit records");
                return Ok(());
            }
            let mut t = Table::new(&["time", "actor", "action", "target", "revision"]);
            for r in &records {
                t.row(&[
                    format_ms_secs(r.time_unix_ms),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.revision.to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}
