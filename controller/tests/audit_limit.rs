//! `AuditReport` with a limit returns the newest records (oldest first), like
//! `QueryEvents`: an admin asking for the last N actions gets the last N, not the first.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gateway_proto::v1;

#[tokio::test]
async fn the_limit_keeps_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&dir.path().join("c.db")).await;
    let mut admin = ctl.admin().await;
    for i in 0..6 {
        admin
            .create_api_key(v1::CreateApiKeyRequest {
                name: format!("key-{i}"),
                role: v1::Role::Auditor as i32,
                ttl_seconds: 600,
            })
            .await
            .unwrap();
    }
    let report = |limit: u32| {
        let mut a = admin.clone();
        async move {
            a.audit_report(v1::AuditReportRequest {
                since_unix_ms: None,
                until_unix_ms: None,
                limit,
            })
            .await
            .unwrap()
            .into_inner()
            .records
        }
    };
    // The control: without a limit every record, the keys' last.
    let all = report(0).await;
    let targets: Vec<&str> = all.iter().map(|r| r.target.as_str()).collect();
    assert!(all.len() >= 6, "{targets:?}");
    assert!(
        targets.ends_with(&["api_key:key-3", "api_key:key-4", "api_key:key-5"]),
        "{targets:?}"
    );
    let last3 = report(3).await;
    let got: Vec<&str> = last3.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        got,
        ["api_key:key-3", "api_key:key-4", "api_key:key-5"],
        "the newest 3, oldest first"
    );
    let ids: Vec<u64> = last3.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        all[all.len() - 3..]
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    );
}
