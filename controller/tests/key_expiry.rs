//! An expiring service-account key stops its principal without anyone touching the policy:
//! at the expiry the controller recompiles and the connector's agent receives a delta that
//! removes the key's SRC entry.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gateway_proto::v1::watch_response::Update;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_leaves_the_connector_view() {
    let (_dir, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    // Whole seconds: the key expires 2-3 s from now.
    let expiry = now() + 3;
    let text = format!(
        r#"
[[remote_network]]
name = "n"
cidrs = ["198.18.0.0/16"]
connectors = ["c"]

[[resource]]
name = "db"
network = "n"
address = "198.18.2.10"
tcp = ["5432"]

[[service_account]]
name = "backup"
keys = [
  {{ name = "old", address = "198.19.1.1", expires_at = "{}" }},
  {{ name = "new", address = "198.19.1.2" }},
]

[[allow]]
name = "backup-db"
principals = ["service_account:backup"]
resources = ["db"]
"#,
        policy_compiler::format_rfc3339(expiry)
    );
    apply(&mut admin, &text).await;
    let auth = enroll(&ctl, "connector:c").await;
    let mut stream = open_watch(&mut ctl.agent().await, &auth, 0).await;
    let first = next(&mut stream, 5).await.expect("snapshot");
    let Some(Update::Snapshot(snap)) = first.update else {
        panic!("expected a snapshot first");
    };
    let addrs: Vec<&str> = snap.sources.iter().map(|s| s.addr.as_str()).collect();
    assert!(
        addrs.contains(&"198.19.1.1") && addrs.contains(&"198.19.1.2"),
        "{addrs:?}"
    );

    // No policy change: the expiry alone produces the next update.
    let upd = next(&mut stream, 8)
        .await
        .expect("an update at the key's expiry");
    assert!(now() >= expiry, "the update came before the expiry");
    assert_eq!(upd.base_generation, first.generation);
    let Some(Update::Delta(d)) = upd.update else {
        panic!("expected a delta");
    };
    let removed: Vec<&str> = d.src_removed.iter().map(|s| s.as_str()).collect();
    assert_eq!(removed, ["198.19.1.1"], "only the expired key leaves SRC");
    ctl.stop().await;
}
