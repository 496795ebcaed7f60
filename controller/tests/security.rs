//! Securing the control plane: the role matrix over every Admin RPC, agent credentials
//! and revocation, the audit hash chain against tampering, TLS, admin sessions (password
//! + TOTP, expiry, rate limit).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use controller::auth::{Role, totp_code};
use gateway_proto::v1::{self, admin_client::AdminClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends the credential, if any.
#[derive(Clone)]
struct Cred(Option<String>);

impl tonic::service::Interceptor for Cred {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(c) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {c}").parse().unwrap());
        }
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<Channel, Cred>>;

async fn client(ctl: &Controller, cred: Option<&str>) -> Client {
    AdminClient::with_interceptor(ctl.channel().await, Cred(cred.map(str::to_string)))
}

/// Every Admin RPC named in admin.proto.
fn proto_methods() -> BTreeSet<String> {
    include_str!("../../proto/proto/ztgateway/v1/admin.proto")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim().to_string())
        .collect()
}

/// Calls `method` with a harmless request (dry runs, unknown targets).
async fn call(c: &mut Client, method: &str) -> Result<(), Status> {
    let unique = controller::random_hex(6);
    match method {
        "ApplyPolicy" => c
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: DEMO.into(),
                file_name: String::new(),
                dry_run: true,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .map(|_| ()),
        "GetPolicy" => c
            .get_policy(v1::GetPolicyRequest::default())
            .await
            .map(|_| ()),
        "ListPolicyRevisions" => c
            .list_policy_revisions(v1::ListPolicyRevisionsRequest::default())
            .await
            .map(|_| ()),
        "GetObject" => c
            .get_object(v1::GetObjectRequest {
                kind: v1::ObjectKind::Resource as i32,
                name: "nope".into(),
            })
            .await
            .map(|_| ()),
        "ListObjects" => c
            .list_objects(v1::ListObjectsRequest::default())
            .await
            .map(|_| ()),
        "CreateObject" => c
            .create_object(v1::CreateObjectRequest {
                object: Some(v1::PolicyObject {
                    kind: v1::ObjectKind::User as i32,
                    name: String::new(),
                    toml: format!("email = \"u{unique}@example.com\"\n"),
                }),
                expected_revision: None,
                dry_run: true,
                skip_tests: false,
            })
            .await
            .map(|_| ()),
        "UpdateObject" => c
            .update_object(v1::UpdateObjectRequest {
                object: Some(v1::PolicyObject {
                    kind: v1::ObjectKind::User as i32,
                    name: "nobody@example.com".into(),
                    toml: "email = \"nobody@example.com\"\n".into(),
                }),
                expected_revision: None,
                dry_run: true,
                skip_tests: false,
            })
            .await
            .map(|_| ()),
        "DeleteObject" => c
            .delete_object(v1::DeleteObjectRequest {
                kind: v1::ObjectKind::User as i32,
                name: "nobody@example.com".into(),
                expected_revision: None,
                dry_run: true,
                skip_tests: false,
            })
            .await
            .map(|_| ()),
        "Explain" => c
            .explain(v1::ExplainRequest {
                from: "198.18.0.1".into(),
                to: "198.18.1.1:22/tcp".into(),
                at: None,
            })
            .await
            .map(|_| ()),
        "TestAccess" => c
            .test_access(v1::TestAccessRequest::default())
            .await
            .map(|_| ()),
        "QueryEvents" => c
            .query_events(v1::QueryEventsRequest::default())
            .await
            .map(|_| ()),
        "FollowEvents" => c
            .follow_events(v1::FollowEventsRequest::default())
            .await
            .map(|_| ()),
        "AuditReport" => c
            .audit_report(v1::AuditReportRequest::default())
            .await
            .map(|_| ()),
        "CreateEnrollmentToken" => c
            .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
                host: "connector:matrix".into(),
                ttl_seconds: 60,
            })
            .await
            .map(|_| ()),
        "ListAgents" => c.list_agents(v1::ListAgentsRequest {}).await.map(|_| ()),
        "RevokeAgent" => c
            .revoke_agent(v1::RevokeAgentRequest {
                agent_id: "agent-none".into(),
            })
            .await
            .map(|_| ()),
        "VerifyAudit" => c
            .verify_audit(v1::VerifyAuditRequest::default())
            .await
            .map(|_| ()),
        "WhoAmI" => c.who_am_i(v1::WhoAmIRequest {}).await.map(|_| ()),
        "Login" => c
            .login(v1::LoginRequest {
                user: "matrix-nobody".into(),
                password: "x".into(),
                totp_code: "000000".into(),
            })
            .await
            .map(|_| ()),
        "CreateApiKey" => c
            .create_api_key(v1::CreateApiKeyRequest {
                name: format!("m-{unique}"),
                role: v1::Role::Auditor as i32,
                ttl_seconds: 60,
            })
            .await
            .map(|_| ()),
        "ListApiKeys" => c.list_api_keys(v1::ListApiKeysRequest {}).await.map(|_| ()),
        "RevokeApiKey" => c
            .revoke_api_key(v1::RevokeApiKeyRequest {
                name: "nope".into(),
            })
            .await
            .map(|_| ()),
        "CreateAdminUser" => c
            .create_admin_user(v1::CreateAdminUserRequest {
                name: format!("m-{unique}"),
                role: v1::Role::Auditor as i32,
                // Too short: refused after authorization, without hashing cost.
                password: "short".into(),
            })
            .await
            .map(|_| ()),
        "ListAdminUsers" => c
            .list_admin_users(v1::ListAdminUsersRequest {})
            .await
            .map(|_| ()),
        "DeleteAdminUser" => c
            .delete_admin_user(v1::DeleteAdminUserRequest {
                name: "nope".into(),
            })
            .await
            .map(|_| ()),
        "Logout" => c.logout(v1::LogoutRequest {}).await.map(|_| ()),
        "ChangePassword" => c
            .change_password(v1::ChangePasswordRequest {
                old_password: "not the password".into(),
                new_password: "not the new password".into(),
            })
            .await
            .map(|_| ()),
        "ResetAdminUserTotp" => c
            .reset_admin_user_totp(v1::ResetAdminUserTotpRequest {
                name: "nope".into(),
            })
            .await
            .map(|_| ()),
        other => panic!("the matrix does not know the RPC {other}: add it"),
    }
}

const READ: &[&str] = &[
    "GetPolicy",
    "ListPolicyRevisions",
    "GetObject",
    "ListObjects",
    "Explain",
    "TestAccess",
    "QueryEvents",
    "FollowEvents",
    "ListAgents",
    "WhoAmI",
    // Any role, on the caller's own session (API keys are refused with
    // FAILED_PRECONDITION, which is not a permission denial).
    "Logout",
    "ChangePassword",
];
const WRITE: &[&str] = &[
    "ApplyPolicy",
    "CreateObject",
    "UpdateObject",
    "DeleteObject",
    "CreateEnrollmentToken",
];
const AUDIT: &[&str] = &["AuditReport", "VerifyAudit"];
const ADMIN_ONLY: &[&str] = &[
    "RevokeAgent",
    "CreateApiKey",
    "ListApiKeys",
    "RevokeApiKey",
    "CreateAdminUser",
    "ListAdminUsers",
    "DeleteAdminUser",
    "ResetAdminUserTotp",
];

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Unauthenticated,
    Denied,
    Allowed,
}

fn outcome(r: &Result<(), Status>) -> Outcome {
    match r {
        Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
        Err(s) if s.code() == Code::PermissionDenied => Outcome::Denied,
        _ => Outcome::Allowed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_over_every_admin_rpc() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    let now = controller::now_ms();
    let st = &ctl.state;
    let (operator, _) = st
        .create_api_key("operator", Role::Operator, now + 600_000, "test")
        .unwrap();
    let (auditor, _) = st
        .create_api_key("auditor", Role::Auditor, now + 600_000, "test")
        .unwrap();
    let (expired, _) = st
        .create_api_key("expired", Role::Admin, now - 1, "test")
        .unwrap();
    let (revoked, _) = st
        .create_api_key("revoked", Role::Admin, now + 600_000, "test")
        .unwrap();
    st.revoke_api_key("revoked", "test").unwrap();
    let wrong = format!("zt-key-{}", controller::random_hex(32));

    // The matrix covers exactly the RPCs of the API.
    let methods = proto_methods();
    let listed: BTreeSet<String> = READ
        .iter()
        .chain(WRITE)
        .chain(AUDIT)
        .chain(ADMIN_ONLY)
        .chain(&["Login"])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(methods, listed);
    let documented: BTreeSet<String> = controller::auth::ADMIN_METHODS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(methods, documented);

    let creds: [(&str, Option<&str>); 7] = [
        ("none", None),
        ("wrong", Some(&wrong)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
        ("admin", Some(&ctl.admin_key)),
        ("operator", Some(&operator)),
        ("auditor", Some(&auditor)),
    ];
    let mut checked = 0;
    for (who, cred) in creds {
        let mut c = client(&ctl, cred).await;
        for m in &methods {
            if m == "Login" {
                continue; // Public: see sessions_expire_and_failed_logins_are_limited.
            }
            let want = match who {
                "none" | "wrong" | "expired" | "revoked" => Outcome::Unauthenticated,
                "admin" => Outcome::Allowed,
                "operator" if READ.contains(&m.as_str()) || WRITE.contains(&m.as_str()) => {
                    Outcome::Allowed
                }
                "auditor" if READ.contains(&m.as_str()) || AUDIT.contains(&m.as_str()) => {
                    Outcome::Allowed
                }
                _ => Outcome::Denied,
            };
            let r = call(&mut c, m).await;
            assert_eq!(outcome(&r), want, "{m} as {who}: {r:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * (methods.len() - 1));

    // Refused calls change nothing; they leave only their refusal in the audit trail
    // (aggregated per kind); allowed ones are attributed to the key that made them.
    let records = ctl
        .admin()
        .await
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let tokens: Vec<_> = records
        .iter()
        .filter(|r| r.action == "create_enrollment_token")
        .map(|r| r.actor.as_str())
        .collect();
    assert_eq!(tokens.len(), 2, "admin and operator");
    assert!(tokens[0].starts_with("key:test-admin-"));
    assert_eq!(tokens[1], "key:operator");
    let denied = |who: &str| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r.actor == who && r.action == "permission_denied")
            .map(|r| r.target.clone())
            .collect()
    };
    // The auditor changed nothing: its only records are refusals.
    assert!(
        records
            .iter()
            .all(|r| r.actor != "key:auditor" || r.action == "permission_denied")
    );
    let want = |lists: &[&[&str]]| -> BTreeSet<String> {
        lists
            .iter()
            .flat_map(|l| l.iter())
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(denied("key:auditor"), want(&[WRITE, ADMIN_ONLY]));
    assert_eq!(denied("key:operator"), want(&[AUDIT, ADMIN_ONLY]));
    let unauthenticated: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.action == "admin_auth_failure")
        .map(|r| r.after.as_str())
        .collect();
    assert_eq!(unauthenticated.len(), 4, "{unauthenticated:?}");
    // No secret reaches the audit trail.
    for r in &records {
        for secret in [&operator, &auditor, &expired, &revoked, &ctl.admin_key] {
            let body = format!("{}{}{}{}", r.actor, r.target, r.before, r.after);
            assert!(!body.contains(secret.as_str()), "{r:?}");
        }
    }
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_need_their_own_credential_and_can_be_revoked() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let a = enroll(&ctl, "connector:demo-connector").await;
    let b = enroll(&ctl, "device:alice-laptop").await;
    let mut agent = ctl.agent().await;
    let watch = |auth: Option<v1::AgentAuth>| v1::WatchRequest {
        auth,
        generation: 0,
    };
    // No credential, another agent's credential, a made-up one: no policy.
    for auth in [
        None,
        Some(v1::AgentAuth {
            agent_id: a.agent_id.clone(),
            credential: b.credential.clone(),
        }),
        Some(v1::AgentAuth {
            agent_id: a.agent_id.clone(),
            credential: format!("zt-agent-{}", controller::random_hex(32)),
        }),
    ] {
        let e = agent.watch(watch(auth)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // Its own: the snapshot.
    let mut sa = agent
        .watch(watch(Some(a.clone())))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut sa, 5).await.unwrap().update,
        Some(v1::watch_response::Update::Snapshot(_))
    ));
    let mut sb = agent
        .watch(watch(Some(b.clone())))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut sb, 5).await.is_some());

    // Revoke a: its stream ends, every agent call is refused; b is unaffected.
    admin
        .revoke_agent(v1::RevokeAgentRequest {
            agent_id: a.agent_id.clone(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), sa.message())
        .await
        .expect("the revoked agent's stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    let e = agent.watch(watch(Some(a.clone()))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{}", e.message());
    let e = agent
        .ack(v1::AckRequest {
            auth: Some(a.clone()),
            generation: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = agent
        .report_events(tokio_stream::iter([v1::ReportEventsRequest {
            auth: Some(a.clone()),
            events: vec![],
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    agent
        .ack(v1::AckRequest {
            auth: Some(b.clone()),
            generation: 1,
        })
        .await
        .unwrap();
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let ra = agents.iter().find(|x| x.agent_id == a.agent_id).unwrap();
    assert!(ra.revoked_unix_ms.is_some() && !ra.connected);
    assert!(
        agents
            .iter()
            .find(|x| x.agent_id == b.agent_id)
            .unwrap()
            .revoked_unix_ms
            .is_none()
    );
    ctl.stop().await;

    // Revocation survives a restart.
    let ctl = Controller::start(&db).await;
    let e = ctl.agent().await.watch(watch(Some(a))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    ctl.stop().await;
}

fn keys_of(db: &std::path::Path) -> std::sync::Arc<controller::keys::Keys> {
    std::sync::Arc::new(
        controller::keys::Keys::load(&controller::keys::default_key_file(db)).unwrap(),
    )
}

fn verify(db: &std::path::Path) -> controller::model::AuditVerification {
    open_store(db, keys_of(db))
        .unwrap()
        .verify_audit(None)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tampering_is_detected_at_the_record() {
    let (d, db) = tempdir();
    {
        let ctl = Controller::start(&db).await;
        let mut admin = ctl.admin().await;
        apply(&mut admin, DEMO).await;
        enroll(&ctl, "connector:demo-connector").await; // token + enroll
        admin
            .create_api_key(v1::CreateApiKeyRequest {
                name: "ci".into(),
                role: v1::Role::Operator as i32,
                ttl_seconds: 600,
            })
            .await
            .unwrap();
        admin
            .revoke_api_key(v1::RevokeApiKeyRequest { name: "ci".into() })
            .await
            .unwrap();
        let v = admin
            .verify_audit(v1::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.records, 6);
        let records = admin
            .audit_report(v1::AuditReportRequest::default())
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(records[0].prev_hash, controller::store::GENESIS_HASH);
        assert!(records.windows(2).all(|w| w[1].prev_hash == w[0].hash));
        assert_eq!(records.last().unwrap().hash, v.head_hash);
        ctl.stop().await;
        drop(admin);
    }
    // Every connection to the database is closed (the state is dropped).
    assert!(verify(&db).ok);

    type Tamper = fn(&Raw);
    let cases: [(&str, Tamper, u64); 7] = [
        (
            "field edit",
            |c| {
                c.execute(
                    "UPDATE audit SET actor = 'key:someone-else' WHERE id = 3",
                    &[],
                );
            },
            3,
        ),
        (
            "time edit",
            |c| {
                c.execute("UPDATE audit SET time_ms = time_ms + 1 WHERE id = 5", &[]);
            },
            5,
        ),
        (
            "edit with a hash recomputed without the key",
            |c| {
                let rows = c.query(
                    "SELECT time_ms, actor, action, target, before, after, revision, prev_hash FROM audit WHERE id = 2",
                    &[],
                );
                let r = &rows[0];
                let after = format!("{} (forged)", r.text(5).unwrap());
                let h = unkeyed_hash(
                    2,
                    r.int(0).unwrap(),
                    &r.text(1).unwrap(),
                    &r.text(2).unwrap(),
                    &r.text(3).unwrap(),
                    &r.text(4).unwrap(),
                    &after,
                    r.int(6).unwrap() as u64,
                    &r.text(7).unwrap(),
                );
                c.execute(
                    "UPDATE audit SET after = ?1, hash = ?2 WHERE id = 2",
                    &controller::vals![after, h],
                );
            },
            2,
        ),
        (
            "deletion",
            |c| {
                c.execute("DELETE FROM audit WHERE id = 4", &[]);
            },
            4,
        ),
        (
            "deletion of the last record",
            |c| {
                c.execute("DELETE FROM audit WHERE id = 6", &[]);
            },
            6,
        ),
        (
            "reorder",
            |c| {
                // Swap the contents (and hashes) of records 3 and 4.
                c.batch(
                    "UPDATE audit SET id = 100 WHERE id = 3;
                 UPDATE audit SET id = 3 WHERE id = 4;
                 UPDATE audit SET id = 4 WHERE id = 100;",
                );
            },
            3,
        ),
        (
            "re-linked deletion",
            |c| {
                // Delete record 2 and renumber the rest down (one by one, in id order):
                // the links break at 2.
                c.execute("DELETE FROM audit WHERE id = 2", &[]);
                for r in c.query("SELECT id FROM audit WHERE id > 2 ORDER BY id", &[]) {
                    let id = r.int(0).unwrap();
                    c.execute(
                        "UPDATE audit SET id = ?2 WHERE id = ?1",
                        &controller::vals![id, id - 1],
                    );
                }
            },
            2,
        ),
    ];
    for (what, tamper, bad) in cases {
        let copy = d.path().join("tampered.db");
        copy_db(&db, &copy);
        tamper(&raw(&copy));
        let v = verify(&copy);
        assert!(!v.ok, "{what}: not detected");
        assert_eq!(v.first_bad_id, Some(bad), "{what}: {}", v.reason);
        // The command line says the same, with exit status 1.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
            .arg("audit-verify")
            .args(db_args(&copy))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("BROKEN at record {bad}:")),
            "{what}: {err}"
        );
        remove_db(&copy);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("audit-verify")
        .args(db_args(&db))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit trail ok: 6 records"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_and_plaintext_is_refused() {
    let (d, db) = tempdir();
    let tls_dir = d.path().join("tls");
    // `gateway-controller init`: the CA, the server certificate and an admin key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("init")
        .args(db_args(&db))
        .arg("--tls-dir")
        .arg(&tls_dir)
        .args(["--san", "127.0.0.1", "--san", "controller.example"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("zt-key-") && key.len() == 7 + 64, "{key}");
    use std::os::unix::fs::PermissionsExt as _;
    for (f, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
    ] {
        let m = std::fs::metadata(tls_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    // A second init does not overwrite the CA.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("init")
        .args(db_args(&db))
        .arg("--tls-dir")
        .arg(&tls_dir)
        .args(["--san", "127.0.0.1", "--key-name", "second"])
        .output()
        .unwrap();
    assert!(!again.status.success());

    let state = std::sync::Arc::new(open_state(&db));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = controller::spawn_tls(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        Some(controller::tls::server_config(&tls_dir).unwrap()),
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    let ca = std::fs::read(tls_dir.join("ca.pem")).unwrap();

    // TLS with the pinned CA and the key from init: works.
    let ch = controller::tls::connect(&format!("https://{addr}"), Some(&ca))
        .await
        .unwrap();
    let who = controller::auth::admin_client(ch.clone(), &key)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.principal, "key:bootstrap-admin");
    assert_eq!(who.role, v1::Role::Admin as i32);
    // The agent service is behind the same TLS.
    let e = gateway_proto::v1::agent_client::AgentClient::new(ch)
        .enroll(v1::EnrollRequest {
            token: "zt-enroll-nope".into(),
            hostname: String::new(),
            public_key: common::wg_key(),
            host: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Plaintext: refused (the connection or the call fails; nothing is served).
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await?;
        controller::auth::admin_client(ch, &key)
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .map(|_| ())
            .map_err(|s| anyhow::anyhow!("{s}"))
    })
    .await
    .expect("bounded");
    assert!(plain.is_err(), "a plaintext call was served");

    // A client that trusts another CA refuses the server.
    let (other_ca, ..) = controller::tls::generate_pem(&["127.0.0.1".into()]).unwrap();
    let other = tokio::time::timeout(Duration::from_secs(10), async {
        let ch =
            controller::tls::connect(&format!("https://{addr}"), Some(other_ca.as_bytes())).await?;
        controller::auth::admin_client(ch, &key)
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .map(|_| ())
            .map_err(|s| anyhow::anyhow!("{s}"))
    })
    .await
    .expect("bounded");
    assert!(other.is_err(), "a server outside the pinned CA was trusted");
    // An https URL without a CA, and a CA with an http URL, are configuration errors.
    assert!(controller::tls::endpoint(&format!("https://{addr}"), None).is_err());
    assert!(controller::tls::endpoint(&format!("http://{addr}"), Some(&ca)).is_err());

    let _ = stop.send(());
    state.close_watchers();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn login(
    c: &mut Client,
    user: &str,
    password: &str,
    code: &str,
) -> Result<v1::LoginResponse, Status> {
    c.login(v1::LoginRequest {
        user: user.into(),
        password: password.into(),
        totp_code: code.into(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_failed_logins_are_limited() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    ctl.state.set_session_ttl(2);
    let mut admin = ctl.admin().await;
    let password = "correct horse battery staple";
    let mk = |name: &str, role: v1::Role| v1::CreateAdminUserRequest {
        name: name.into(),
        role: role as i32,
        password: password.into(),
    };
    let alice = admin
        .create_admin_user(mk("alice", v1::Role::Operator))
        .await
        .unwrap()
        .into_inner();
    assert!(
        alice
            .otpauth_uri
            .starts_with("otpauth://totp/zt-gateway:alice?secret=")
    );
    let bob = admin
        .create_admin_user(mk("bob", v1::Role::Admin))
        .await
        .unwrap()
        .into_inner();
    let e = admin
        .create_admin_user(v1::CreateAdminUserRequest {
            password: "short".into(),
            ..mk("carol", v1::Role::Admin)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Login needs no credential; password and code give an operator session.
    let mut anon = client(&ctl, None).await;
    let code = totp_code(&alice.totp_secret, controller::now_unix());
    let s = login(&mut anon, "alice", password, &code).await.unwrap();
    assert_eq!(s.role, v1::Role::Operator as i32);
    assert!(s.session_token.starts_with("zt-session-"));
    let mut sess = client(&ctl, Some(&s.session_token)).await;
    let who = sess
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.principal, "user:alice");
    apply(&mut ctl.admin_as(&s.session_token).await, DEMO).await;
    let e = call(&mut sess, "CreateApiKey").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A code is accepted once.
    let e = login(&mut anon, "alice", password, &code)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Wrong password, wrong code, unknown user: the same answer.
    for (u, p, c) in [
        ("alice", "wrong password!!", code.as_str()),
        ("alice", password, "000000"),
        ("nobody", password, code.as_str()),
    ] {
        let e = login(&mut anon, u, p, c).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), "login failed: wrong user, password or code");
    }

    // The session expires: re-authentication is needed.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let e = sess.who_am_i(v1::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // Five failures within a minute: further attempts are refused, even correct ones.
    for _ in 0..5 {
        let e = login(&mut anon, "bob", "not the password", "000000")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let good = totp_code(&bob.totp_secret, controller::now_unix());
    let e = login(&mut anon, "bob", password, &good).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many failed logins"));

    // Deleting a user ends their sessions.
    let code = totp_code(&alice.totp_secret, controller::now_unix() + 30);
    let s = login(&mut anon, "alice", password, &code).await.unwrap();
    let mut sess = client(&ctl, Some(&s.session_token)).await;
    sess.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    admin
        .delete_admin_user(v1::DeleteAdminUserRequest {
            name: "alice".into(),
        })
        .await
        .unwrap();
    let e = sess.who_am_i(v1::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Logins are in the audit trail, secrets are not. Repeated refusals are aggregated:
    // the first at once, the repeats in one record when the window ends (flushed here).
    ctl.state.flush_refusals(true);
    let records = admin
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let logins: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r.action.starts_with("login_"))
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.after.as_str()))
        .collect();
    assert_eq!(logins[0].0, "login_success");
    assert_eq!(logins[0].1, "user:alice");
    assert!(logins.contains(&("login_failure", "user:alice", "TOTP code already used")));
    assert!(logins.contains(&("login_failure", "user:nobody", "unknown user")));
    assert!(logins.contains(&("login_failure", "user:bob", "rate limited")));
    let bob: Vec<&str> = logins
        .iter()
        .filter(|l| l.1 == "user:bob")
        .map(|l| l.2)
        .collect();
    assert_eq!(bob.len(), 3, "{bob:?}");
    assert_eq!(bob[..2], ["wrong password", "rate limited"]);
    assert!(
        bob[2].starts_with("wrong password (repeated 4 more times until "),
        "{}",
        bob[2]
    );
    for r in &records {
        let body = format!("{r:?}");
        assert!(!body.contains(password) && !body.contains(&alice.totp_secret));
        assert!(!body.contains(&s.session_token) && !body.contains(&ctl.admin_key));
    }
    assert!(
        admin
            .verify_audit(v1::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    ctl.stop().await;
}
