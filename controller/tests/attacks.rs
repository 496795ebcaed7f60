//! The attacks of issue 12, replayed: a client written from `proto/` alone, and an
//! insider with the database file. Every refusal has its positive twin on the same path
//! (the same call succeeds when it should), so each negative assertion can fail.
//!
//! This file uses only what the controller offered before the fixes (the gRPC API,
//! `State::open`, `spawn`, the binary), so it runs unchanged against the code before
//! them, where each test fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use controller::auth::totp_code;
use gateway_proto::v1::{self, ObjectKind};
use tonic::Code;

// ------------------------------------------------------------------ helpers

fn obj(kind: ObjectKind, name: &str, toml: &str) -> Option<v1::PolicyObject> {
    Some(v1::PolicyObject {
        kind: kind as i32,
        name: name.into(),
        toml: toml.into(),
    })
}

async fn create(
    admin: &mut controller::auth::AuthedAdminClient,
    kind: ObjectKind,
    toml: &str,
) -> Result<v1::Plan, tonic::Status> {
    admin
        .create_object(v1::CreateObjectRequest {
            object: obj(kind, "", toml),
            expected_revision: None,
            dry_run: false,
            skip_tests: false,
        })
        .await
        .map(|r| r.into_inner().plan.unwrap())
}

async fn update(
    admin: &mut controller::auth::AuthedAdminClient,
    kind: ObjectKind,
    name: &str,
    toml: &str,
) -> Result<v1::Plan, tonic::Status> {
    admin
        .update_object(v1::UpdateObjectRequest {
            object: obj(kind, name, toml),
            expected_revision: None,
            dry_run: false,
            // These attacks are about what an object's text can smuggle in; the demo's
            // [[test]] blocks (which adding bob to engineering breaks) are not the point.
            skip_tests: true,
        })
        .await
        .map(|r| r.into_inner().plan.unwrap())
}

/// The grants a host's current view knows by name.
fn grants_of(ctl: &Controller, host: &str) -> BTreeSet<String> {
    let (_, view) = ctl.state.view(host).unwrap();
    view.rule_meta
        .values()
        .filter_map(|m| match &m.kind {
            policy_compiler::model::RuleKind::Grant { grant, .. } => Some(grant.clone()),
            policy_compiler::model::RuleKind::AuditDefault { .. } => None,
        })
        .collect()
}

async fn policy_text(ctl: &Controller) -> String {
    ctl.admin()
        .await
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_toml
}

/// A connection event as the agent of `connector:demo-connector` builds it from its view.
fn connector_event(user: &str, device: &str, resource: &str) -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: "2026-01-01T10:00:00.000Z".into(),
        event: "flow_start".into(),
        verdict: "allow".into(),
        reason: "granted".into(),
        user: Some(user.into()),
        device: Some(device.into()),
        src_ip: Some("198.19.1.10".into()),
        src_port: Some(40000),
        resource: Some(resource.into()),
        dst_ip: Some("198.18.1.5".into()),
        protocol: Some("tcp".into()),
        dst_port: Some(443),
        connector: Some("demo-connector".into()),
        remote_network: Some("corp".into()),
        rule: Some("engineering-web".into()),
        rule_id: 1,
        host: "connector:demo-connector".into(),
        ..Default::default()
    }
}

async fn report(
    ctl: &Controller,
    auth: &v1::AgentAuth,
    events: Vec<v1::ConnectionEvent>,
) -> Result<u64, tonic::Status> {
    ctl.agent()
        .await
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            auth: Some(auth.clone()),
            events,
        }]))
        .await
        .map(|r| r.into_inner().accepted)
}

async fn events(ctl: &Controller, f: v1::EventFilter) -> Vec<v1::StoredEvent> {
    ctl.admin()
        .await
        .query_events(v1::QueryEventsRequest {
            filter: Some(f),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn login(
    ctl: &Controller,
    user: &str,
    password: &str,
    code: &str,
) -> Result<v1::LoginResponse, tonic::Status> {
    ctl.anonymous()
        .await
        .login(v1::LoginRequest {
            user: user.into(),
            password: password.into(),
            totp_code: code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

const PASSWORD: &str = "correct horse battery staple";

async fn admin_user(ctl: &Controller, name: &str, role: v1::Role) -> String {
    ctl.admin()
        .await
        .create_admin_user(v1::CreateAdminUserRequest {
            name: name.into(),
            role: role as i32,
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .totp_secret
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ------------------------------------------------------------------ 1: objects

/// The text of one object of each kind, valid against the demo policy.
const OBJECTS: [(ObjectKind, &str, &str); 8] = [
    (
        ObjectKind::RemoteNetwork,
        "lab",
        "name = \"lab\"\ncidrs = [\"198.19.200.0/24\"]\nconnectors = [\"lab-connector\"]\n",
    ),
    (
        ObjectKind::Resource,
        "intranet",
        "name = \"intranet\"\nnetwork = \"corp\"\naddress = \"198.18.1.21\"\ntcp = [\"443\"]\n",
    ),
    (
        ObjectKind::User,
        "carol@example.com",
        "email = \"carol@example.com\"\n",
    ),
    (
        ObjectKind::Device,
        "carol-laptop",
        "name = \"carol-laptop\"\nowner = \"alice@example.com\"\naddress = \"198.19.1.77\"\n",
    ),
    (
        ObjectKind::ServiceAccount,
        "ci",
        "name = \"ci\"\nkeys = [{ name = \"k1\", address = \"198.19.5.1\" }]\n",
    ),
    (
        ObjectKind::Group,
        "s",
        "name = \"s\"\nmembers = [\"alice@example.com\"]\n",
    ),
    (
        ObjectKind::Grant,
        "wiki-readers",
        "[[allow]]\nname = \"wiki-readers\"\nprincipals = [\"engineering\"]\nresources = [\"web\"]\n",
    ),
    (
        ObjectKind::Test,
        "alice-web",
        "name = \"alice-web\"\nfrom = \"alice-laptop\"\nto = \"web\"\nexpect = \"allow\"\n",
    ),
];

/// A grant hidden after an object's own table: `x` gives alice the database.
const HIDDEN: &str =
    "[[allow]]\nname = \"x\"\nprincipals = [\"alice@example.com\"]\nresources = [\"db\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_text_cannot_hide_a_grant_of_any_kind_nor_in_an_update() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let before = policy_text(&ctl).await;
    assert!(!grants_of(&ctl, "device:alice-laptop").contains("x"));

    for (kind, name, toml) in OBJECTS {
        // The object followed by a hidden grant (and, for grants, by a second one):
        // refused, and nothing changes.
        let e = create(&mut admin, kind, &format!("{toml}{HIDDEN}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{kind:?}: {e:?}");
        assert_eq!(policy_text(&ctl).await, before, "{kind:?}");
        assert!(
            !grants_of(&ctl, "device:alice-laptop").contains("x"),
            "{kind:?}"
        );
        // A sub-table smuggled in the same way: refused too.
        let e = create(&mut admin, kind, &format!("{toml}[extra]\nallow = true\n"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{kind:?}: {e:?}");
        // Its twin: the object alone is accepted (dry run: the next kind starts from
        // the same policy).
        let plan = ctl
            .admin()
            .await
            .create_object(v1::CreateObjectRequest {
                object: obj(kind, "", toml),
                expected_revision: None,
                dry_run: true,
                skip_tests: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{kind:?} {name}: {e:?}"))
            .into_inner()
            .plan
            .unwrap();
        assert!(
            plan.objects.iter().any(|o| o.name == name),
            "{kind:?}: {plan:?}"
        );
    }

    // UpdateObject: the same injection into an existing group is refused...
    let e = update(
        &mut admin,
        ObjectKind::Group,
        "engineering",
        &format!("name = \"engineering\"\nmembers = [\"alice@example.com\"]\n{HIDDEN}"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(policy_text(&ctl).await, before);
    // ... and the same update without it goes through; later changes and Explain work.
    update(
        &mut admin,
        ObjectKind::Group,
        "engineering",
        "name = \"engineering\"\nmembers = [\"alice@example.com\", \"bob@example.com\"]\n",
    )
    .await
    .unwrap();
    create(&mut admin, ObjectKind::Group, OBJECTS[5].2)
        .await
        .unwrap();
    admin
        .explain(v1::ExplainRequest {
            from: "alice-laptop".into(),
            to: "db".into(),
            at: None,
        })
        .await
        .unwrap();
    assert!(!grants_of(&ctl, "device:alice-laptop").contains("x"));
    let after = policy_text(&ctl).await;
    assert!(!after.contains("group.allow") && !after.contains("name = \"x\""));
    ctl.stop().await;

    // What was stored loads again.
    let ctl = Controller::start(&db).await;
    assert_eq!(policy_text(&ctl).await, after);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_policy_that_does_not_load_leaves_the_controller_serving() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    let auth = enroll(&ctl, "device:alice-laptop").await;
    let (generation, view) = ctl.state.view("device:alice-laptop").unwrap();
    ctl.stop().await;

    // Someone (a bug, an older version, a hand edit) left an object that does not load.
    {
        let n = raw(&db).execute(
            "UPDATE objects SET toml = '[[group]]\nname = \"engineering\"\nmembers = [\"alice@example.com\"]\n\n[[group.allow]]\nname = \"x\"\n' WHERE kind = 'group' AND name = 'engineering'",
            &[],
        );
        assert_eq!(n, 1);
    }

    // The controller starts, serves reads and the last compiled views...
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    let text = policy_text(&ctl).await;
    assert!(text.contains("group.allow"), "{text}");
    admin
        .list_objects(v1::ListObjectsRequest::default())
        .await
        .unwrap();
    let (g2, view2) = ctl.state.view("device:alice-laptop").unwrap();
    assert_eq!((g2, &view2.rules), (generation, &view.rules));
    let mut watch = open_watch(&mut ctl.agent().await, &auth, 0).await;
    let m = next(&mut watch, 5).await.unwrap();
    assert_eq!(m.generation, generation);
    // ... refuses changes, saying why ...
    let e = create(
        &mut admin,
        ObjectKind::User,
        "email = \"carol@example.com\"\n",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not load"), "{}", e.message());
    // ... and a whole valid policy repairs it, after which changes work again.
    apply(&mut admin, DEMO).await;
    create(
        &mut admin,
        ObjectKind::User,
        "email = \"carol@example.com\"\n",
    )
    .await
    .unwrap();
    ctl.stop().await;
}

// ------------------------------------------------------------------ 2, 3, 4: Login

/// The peak and current resident memory of a process, in kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn db_bytes(db: &Path) -> u64 {
    if on_postgres() {
        return raw(db).int("SELECT pg_database_size(current_database())", &[]) as u64;
    }
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_owned();
            p.push(s);
            std::fs::metadata(p).map_or(0, |m| m.len())
        })
        .sum()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `gateway-controller run` on loopback (plaintext), waited for.
fn run_controller(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .args(["run", "--insecure-plaintext", "--listen", &addr])
        .args(db_args(&dir.join("controller.db")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "controller start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_logins_with_huge_names_cost_little_memory_and_database() {
    let d = tempfile::tempdir().unwrap();
    let (proc_, url) = run_controller(d.path());
    let pid = proc_.0.id();
    let db = d.path().join("controller.db");
    // Settled: the first calls have been served.
    let ch = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let (_, rss_before) = rss_kb(pid);
    let db_before = db_bytes(&db);

    let name = "u".repeat(1 << 20);
    let mut calls = Vec::new();
    for _ in 0..8 {
        let ch = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..8 {
            let mut c = v1::admin_client::AdminClient::new(ch.clone());
            let name = name.clone();
            calls.push(tokio::spawn(async move {
                c.login(v1::LoginRequest {
                    user: name,
                    password: "whatever password".into(),
                    totp_code: "123456".into(),
                })
                .await
                .map(|_| ())
            }));
        }
    }
    let mut codes = Vec::new();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("every login is answered in time")
            .unwrap();
        codes.push(r.unwrap_err().code());
    }
    let (peak, _) = rss_kb(pid);
    let grown = db_bytes(&db).saturating_sub(db_before);
    eprintln!(
        "64 logins with 1 MiB names: controller RSS {} MB before, peak {} MB; database grew {} kB",
        rss_before / 1024,
        peak / 1024,
        grown / 1024
    );
    assert!(peak < 200 * 1024, "peak RSS {} MB", peak / 1024);
    assert!(grown < 1 << 20, "the database grew {grown} bytes");
    // Every call got an answer from the controller (not a transport failure), and some
    // were read and refused for their name: the path under test was exercised.
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::InvalidArgument | Code::ResourceExhausted)),
        "{codes:?}"
    );
    assert!(codes.contains(&Code::InvalidArgument), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_rate_limited_per_address_before_any_password_is_checked() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let start = Instant::now();
    let mut codes = Vec::new();
    for i in 0..60 {
        let e = login(&ctl, &format!("nobody-{i}"), PASSWORD, "123456")
            .await
            .unwrap_err();
        codes.push(e.code());
        if codes.len() >= 3 && codes[codes.len() - 3..] == [Code::ResourceExhausted; 3] {
            break;
        }
    }
    // The first ones are checked (and fail as unknown users: the path works)...
    assert_eq!(codes[0], Code::Unauthenticated, "{codes:?}");
    // ... then the address has used its share (20, and one more every 2 s): the rest
    // are refused before any hashing.
    let checked = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let allowed = 20 + (start.elapsed().as_secs_f64() / 2.0).ceil() as usize;
    assert!(checked <= allowed, "{checked} > {allowed}: {codes:?}");
    assert_eq!(codes[codes.len() - 1], Code::ResourceExhausted, "{codes:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_code_is_accepted_once_also_across_a_restart() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let secret = admin_user(&ctl, "dora", v1::Role::Operator).await;
    let code = totp_code(&secret, controller::now_unix());
    login(&ctl, "dora", PASSWORD, &code).await.unwrap();
    let e = login(&ctl, "dora", PASSWORD, &code).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    ctl.stop().await;

    let ctl = Controller::start(&db).await;
    let e = login(&ctl, "dora", PASSWORD, &code).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "a used code, after a restart"
    );
    // The twin: the next code is accepted.
    let next_code = totp_code(&secret, controller::now_unix() + 30);
    login(&ctl, "dora", PASSWORD, &next_code).await.unwrap();
    ctl.stop().await;
}

// ------------------------------------------------------------------ 5: revocation

/// The next message of a follower within `secs`: `Some(Ok)` an event, `Some(Err)` the
/// stream's end status, `None` nothing in time.
async fn next_event(
    s: &mut tonic::Streaming<v1::StoredEvent>,
    secs: u64,
) -> Option<Result<v1::StoredEvent, tonic::Status>> {
    match tokio::time::timeout(Duration::from_secs(secs), s.message()).await {
        Err(_) => None,
        Ok(Ok(Some(e))) => Some(Ok(e)),
        Ok(Ok(None)) => Some(Err(tonic::Status::ok("ended"))),
        Ok(Err(s)) => Some(Err(s)),
    }
}

async fn follow(ctl: &Controller, secret: &str) -> tonic::Streaming<v1::StoredEvent> {
    ctl.admin_as(secret)
        .await
        .follow_events(v1::FollowEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_user_deletion_end_open_event_streams() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let agent = enroll(&ctl, "connector:demo-connector").await;
    let ev = || vec![connector_event("alice@example.com", "alice-laptop", "web")];

    // An operator key follows events; the admin key too (the control).
    let key = admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "watcher".into(),
            role: v1::Role::Operator as i32,
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut by_key = follow(&ctl, &key).await;
    let mut control = follow(&ctl, &ctl.admin_key).await;
    assert_eq!(report(&ctl, &agent, ev()).await.unwrap(), 1);
    assert!(matches!(next_event(&mut by_key, 5).await, Some(Ok(_))));
    assert!(matches!(next_event(&mut control, 5).await, Some(Ok(_))));

    // Revoked: its stream ends with UNAUTHENTICATED, without waiting for an event.
    admin
        .revoke_api_key(v1::RevokeApiKeyRequest {
            name: "watcher".into(),
        })
        .await
        .unwrap();
    match next_event(&mut by_key, 5).await {
        Some(Err(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        other => panic!("the revoked key's stream goes on: {other:?}"),
    }

    // A user with a session, and an API key that user created.
    let secret = admin_user(&ctl, "erin", v1::Role::Admin).await;
    let session = login(
        &ctl,
        "erin",
        PASSWORD,
        &totp_code(&secret, controller::now_unix()),
    )
    .await
    .unwrap()
    .session_token;
    let minted = ctl
        .admin_as(&session)
        .await
        .create_api_key(v1::CreateApiKeyRequest {
            name: "erin-automation".into(),
            role: v1::Role::Auditor as i32,
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut by_session = follow(&ctl, &session).await;
    let mut by_minted = follow(&ctl, &minted).await;
    assert_eq!(report(&ctl, &agent, ev()).await.unwrap(), 1);
    for s in [&mut by_session, &mut by_minted, &mut control] {
        assert!(matches!(next_event(s, 5).await, Some(Ok(_))));
    }

    // Deleting the user ends the session's stream and revokes the key it created.
    admin
        .delete_admin_user(v1::DeleteAdminUserRequest {
            name: "erin".into(),
        })
        .await
        .unwrap();
    for (what, s) in [("session", &mut by_session), ("minted key", &mut by_minted)] {
        match next_event(s, 5).await {
            Some(Err(st)) => assert_eq!(st.code(), Code::Unauthenticated, "{what}: {st:?}"),
            other => panic!("{what}: the stream goes on: {other:?}"),
        }
    }
    let e = ctl
        .admin_as(&minted)
        .await
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let keys = admin
        .list_api_keys(v1::ListApiKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let k = keys.iter().find(|k| k.name == "erin-automation").unwrap();
    assert!(k.revoked_unix_ms.is_some(), "{k:?}");
    // The control stream still delivers.
    assert_eq!(report(&ctl, &agent, ev()).await.unwrap(), 1);
    assert!(matches!(next_event(&mut control, 5).await, Some(Ok(_))));
    ctl.stop().await;
}

// ------------------------------------------------------------------ 6: agents' events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_only_as_its_own_host_and_about_what_its_view_holds() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    let conn = enroll(&ctl, "connector:demo-connector").await;
    let laptop = enroll(&ctl, "device:alice-laptop").await;

    // The connector's agent claims to be alice's laptop: stored as the connector's.
    let mut spoof = connector_event("alice@example.com", "alice-laptop", "web");
    spoof.host = "device:alice-laptop".into();
    assert_eq!(report(&ctl, &conn, vec![spoof]).await.unwrap(), 1);
    let by_laptop = events(
        &ctl,
        v1::EventFilter {
            host: Some("device:alice-laptop".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(by_laptop.is_empty(), "{by_laptop:?}");
    let all = events(&ctl, v1::EventFilter::default()).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].event.as_ref().unwrap().host,
        "connector:demo-connector"
    );

    // Names its view does not hold: not stored.
    let mut bad = Vec::new();
    let mut e = connector_event("mallory@example.com", "alice-laptop", "web");
    e.user = Some("mallory@example.com".into());
    bad.push(e);
    bad.push(connector_event(
        "alice@example.com",
        "mallory-laptop",
        "web",
    ));
    bad.push(connector_event(
        "alice@example.com",
        "alice-laptop",
        "payroll",
    ));
    let mut e = connector_event("alice@example.com", "alice-laptop", "web");
    e.connector = Some("other-connector".into());
    bad.push(e);
    let mut e = connector_event("alice@example.com", "alice-laptop", "web");
    e.rule = Some("a grant that does not exist".into());
    bad.push(e);
    let mut e = connector_event("alice@example.com", "alice-laptop", "web");
    e.src_ip = Some("not an address\n".into());
    bad.push(e);
    assert_eq!(report(&ctl, &conn, bad).await.unwrap(), 0);
    assert_eq!(events(&ctl, v1::EventFilter::default()).await.len(), 1);

    // Alice's laptop may report her flows, not bob's laptop's.
    let mut own = connector_event("alice@example.com", "alice-laptop", "web");
    own.connector = None;
    let mut other = own.clone();
    other.user = Some("bob@example.com".into());
    other.device = Some("bob-laptop".into());
    assert_eq!(report(&ctl, &laptop, vec![other]).await.unwrap(), 0);
    assert_eq!(report(&ctl, &laptop, vec![own]).await.unwrap(), 1);
    let mine = events(
        &ctl,
        v1::EventFilter {
            host: Some("device:alice-laptop".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].agent_id, laptop.agent_id);
    ctl.stop().await;
}

// ------------------------------------------------------------------ 8: plaintext

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_served_on_loopback_only() {
    let d = tempfile::tempdir().unwrap();
    // 198.18.0.1 is not an address of this host: nothing is ever bound there.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .args([
            "run",
            "--insecure-plaintext",
            "--listen",
            "198.18.0.1:50999",
        ])
        .args(db_args(&d.path().join("controller.db")))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
    let e = controller::spawn(
        "198.18.0.1:0".parse().unwrap(),
        std::sync::Arc::new(open_state(&d.path().join("lib.db"))),
        async {},
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("loopback"), "{e:#}");
    // The twin: on loopback it serves.
    let (_p, url) = run_controller(d.path());
    tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
}

// ------------------------------------------------------------------ 9: files

// SQLite only (on both runs of the suite): it is about the database's files, their
// modes and their bytes; PostgreSQL keeps its files in its own data folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_are_private_and_totp_secrets_are_not_stored_in_clear() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state").join("controller.db");
    let ctl = Controller::start_sqlite(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    let secret = admin_user(&ctl, "fred", v1::Role::Auditor).await;
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    let mut seen = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            seen += 1;
        }
    }
    assert!(seen >= 2, "the database and its WAL");
    // The secret works (the twin)...
    login(
        &ctl,
        "fred",
        PASSWORD,
        &totp_code(&secret, controller::now_unix()),
    )
    .await
    .unwrap();
    ctl.stop().await;
    // ... but the database does not hold it.
    let c = rusqlite::Connection::open(&db).unwrap();
    let stored: String = c
        .query_row(
            "SELECT totp_secret FROM admin_users WHERE name = 'fred'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!stored.contains(&secret), "{stored}");
    drop(c);
    for suffix in ["", "-wal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the TOTP secret is in {}",
                p.to_string_lossy()
            );
        }
    }
}

// ------------------------------------------------------------------ 10: audit

fn audit_verify(db: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("audit-verify")
        .args(db_args(db))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insider_with_the_database_but_not_the_key_cannot_rewrite_the_audit_trail() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    create(
        &mut admin,
        ObjectKind::User,
        "email = \"carol@example.com\"\n",
    )
    .await
    .unwrap();
    admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "ci".into(),
            role: v1::Role::Operator as i32,
            ttl_seconds: 600,
        })
        .await
        .unwrap();
    ctl.stop().await;
    let (ok, out) = audit_verify(&db);
    assert!(ok, "the untouched trail verifies: {out}");

    // The insider changes who applied the policy, and recomputes every hash from there
    // on, and the head, with the only algorithm that needs no key.
    {
        let c = raw(&db);
        c.execute(
            "UPDATE audit SET actor = 'key:someone-else' WHERE action = 'apply_policy'",
            &[],
        );
        let rows = c.query(
            "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
            &[],
        );
        let mut prev = "0".repeat(64);
        for r in rows {
            let id = r.int(0).unwrap();
            let h = unkeyed_hash(
                id as u64,
                r.int(1).unwrap(),
                &r.text(2).unwrap(),
                &r.text(3).unwrap(),
                &r.text(4).unwrap(),
                &r.text(5).unwrap(),
                &r.text(6).unwrap(),
                r.int(7).unwrap() as u64,
                &prev,
            );
            c.execute(
                "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1",
                &controller::vals![id, &prev, &h],
            );
            c.execute(
                "UPDATE audit_head SET id = ?1, hash = ?2",
                &controller::vals![id, &h],
            );
            prev = h;
        }
    }
    let (ok, out) = audit_verify(&db);
    assert!(!ok, "a rewritten trail verifies: {out}");
    assert!(out.contains("BROKEN at record"), "{out}");
}

// ------------------------------------------------------------------ 11: errors

/// A LoginRequest whose `user` is bytes (to send invalid UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
struct RawLogin {
    #[prost(bytes = "vec", tag = "1")]
    user: Vec<u8>,
}

/// A message whose field 1 has the wrong wire type for every request here.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWire {
    #[prost(fixed64, tag = "1")]
    x: u64,
}

async fn raw_call<M: prost::Message + Default + Send + Sync + 'static>(
    ctl: &Controller,
    path: &'static str,
    msg: M,
    bearer: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ctl.channel().await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(msg);
    if let Some(b) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let codec: tonic_prost::ProstCodec<M, v1::LoginResponse> = tonic_prost::ProstCodec::default();
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_and_huge_fields_get_proper_status_codes() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    let key = ctl.admin_key.clone();

    // Invalid UTF-8 in a string, a field of the wrong wire type: INVALID_ARGUMENT.
    let bad_utf8 = RawLogin {
        user: vec![0x61, 0xff, 0xfe, 0x62],
    };
    for (path, status) in [
        (
            "/ztgateway.v1.Admin/Login",
            raw_call(&ctl, "/ztgateway.v1.Admin/Login", bad_utf8.clone(), None).await,
        ),
        (
            "/ztgateway.v1.Admin/GetObject",
            raw_call(
                &ctl,
                "/ztgateway.v1.Admin/GetObject",
                WrongWire { x: 7 },
                Some(&key),
            )
            .await,
        ),
        (
            "/ztgateway.v1.Agent/Enroll",
            raw_call(&ctl, "/ztgateway.v1.Agent/Enroll", bad_utf8, None).await,
        ),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    // The twin: a well-formed GetObject on the same path answers.
    ctl.admin()
        .await
        .get_object(v1::GetObjectRequest {
            kind: ObjectKind::Resource as i32,
            name: "web".into(),
        })
        .await
        .unwrap();

    // A 100 kB field: the answer has the right code and a readable, short message.
    let huge = "h".repeat(100_000);
    let mut a = ctl.admin().await;
    let k = |kind: ObjectKind| kind as i32;
    let results: Vec<(&str, Code, Result<(), tonic::Status>)> = vec![
        (
            "GetObject",
            Code::NotFound,
            a.get_object(v1::GetObjectRequest {
                kind: k(ObjectKind::Resource),
                name: huge.clone(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "DeleteObject",
            Code::NotFound,
            a.delete_object(v1::DeleteObjectRequest {
                kind: k(ObjectKind::Resource),
                name: huge.clone(),
                expected_revision: None,
                dry_run: false,
                skip_tests: false,
            })
            .await
            .map(|_| ()),
        ),
        (
            "UpdateObject",
            Code::NotFound,
            update(&mut a, ObjectKind::Resource, &huge, "name = \"x\"\n")
                .await
                .map(|_| ()),
        ),
        (
            "CreateObject",
            Code::InvalidArgument,
            create(&mut a, ObjectKind::User, &format!("email = \"{huge}\"\n"))
                .await
                .map(|_| ()),
        ),
        (
            "CreateEnrollmentToken",
            Code::InvalidArgument,
            a.create_enrollment_token(v1::CreateEnrollmentTokenRequest {
                host: format!("device:{huge}"),
                ttl_seconds: 60,
            })
            .await
            .map(|_| ()),
        ),
        (
            "RevokeAgent",
            Code::NotFound,
            a.revoke_agent(v1::RevokeAgentRequest {
                agent_id: huge.clone(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "RevokeApiKey",
            Code::NotFound,
            a.revoke_api_key(v1::RevokeApiKeyRequest { name: huge.clone() })
                .await
                .map(|_| ()),
        ),
        (
            "DeleteAdminUser",
            Code::NotFound,
            a.delete_admin_user(v1::DeleteAdminUserRequest { name: huge.clone() })
                .await
                .map(|_| ()),
        ),
        (
            "CreateApiKey",
            Code::InvalidArgument,
            a.create_api_key(v1::CreateApiKeyRequest {
                name: huge.clone(),
                role: v1::Role::Auditor as i32,
                ttl_seconds: 60,
            })
            .await
            .map(|_| ()),
        ),
        (
            "Explain",
            Code::InvalidArgument,
            a.explain(v1::ExplainRequest {
                from: huge.clone(),
                to: "web".into(),
                at: None,
            })
            .await
            .map(|_| ()),
        ),
        (
            "Login",
            Code::InvalidArgument,
            login(&ctl, &huge, PASSWORD, "123456").await.map(|_| ()),
        ),
    ];
    for (what, want, r) in results {
        let e = r.unwrap_err();
        assert_eq!(e.code(), want, "{what}: {:?}", e.code());
        assert!(
            e.message().len() <= 4096,
            "{what}: {} bytes",
            e.message().len()
        );
        assert!(
            !e.message().contains(&huge[..1000]),
            "{what} echoes the field"
        );
    }
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_or_invisible_characters_are_refused() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let before = policy_text(&ctl).await;
    for bad in [
        "nul\0db",
        "new\nline",
        "esc\u{1b}[31mred",
        "admin\u{202E}bd-dorp",
        "zero\u{200B}width",
        "\u{2066}isolated\u{2069}",
        "bom\u{FEFF}",
    ] {
        let toml = format!(
            "name = {}\nnetwork = \"corp\"\naddress = \"198.18.1.30\"\ntcp = [\"22\"]\n",
            toml::Value::String(bad.into())
        );
        let e = create(&mut admin, ObjectKind::Resource, &toml)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        // Whole policies too.
        let e = admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: format!("{DEMO}\n[[resource]]\n{toml}"),
                file_name: "policy.toml".into(),
                dry_run: true,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    assert_eq!(policy_text(&ctl).await, before);
    // The twin: ordinary names, non-ASCII ones included, are fine.
    for good in ["jump-host", "Zürich-wiki", "東京"] {
        let toml = format!(
            "name = \"{good}\"\nnetwork = \"corp\"\naddress = \"198.18.1.30\"\ntcp = [\"22\"]\n"
        );
        create(&mut admin, ObjectKind::Resource, &toml)
            .await
            .unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_hosts_and_host_names_are_checked_before_the_token_is_used() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    for bad in [
        "connector:demo\nconnector".to_string(),
        format!("device:{}", "d".repeat(5000)),
        "device:x\u{202E}y".into(),
    ] {
        let e = admin
            .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
                host: bad.clone(),
                ttl_seconds: 60,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let token = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: "connector:demo-connector".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut agent = ctl.agent().await;
    for bad in ["host\nname".to_string(), "h".repeat(5000)] {
        let e = agent
            .enroll(v1::EnrollRequest {
                token: token.clone(),
                hostname: bad,
                public_key: common::wg_key(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // The token was not used up: it enrolls with a proper host name.
    agent
        .enroll(v1::EnrollRequest {
            token,
            hostname: "conn-1.example".into(),
            public_key: common::wg_key(),
            ..Default::default()
        })
        .await
        .unwrap();
    ctl.stop().await;
}

// ------------------------------------------------------------------ 12: latency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_responses_are_not_held_back() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    // About 1 kB of policy.
    let text: String = DEMO
        .split("# ---------------------------------------------------------------- tests")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    apply(&mut admin, &text).await;
    let size = policy_text(&ctl).await.len();
    assert!((700..2000).contains(&size), "{size}");
    let mut times = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        admin
            .get_policy(v1::GetPolicyRequest::default())
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!("GetPolicy of {size} bytes: median {median:?}");
    // Held back by Nagle's algorithm against the client's delayed ACK, it was ~40 ms.
    assert!(median < Duration::from_millis(15), "median {median:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ingestion_waiting_on_the_database_does_not_hold_up_policy_reads() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let agent = enroll(&ctl, "connector:demo-connector").await;

    // Another process holds the database's write lock (PostgreSQL: the events table's)
    // for 3 s.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = {
        let c = raw(&db);
        std::thread::spawn(move || {
            c.batch(if on_postgres() {
                "BEGIN; LOCK TABLE events IN EXCLUSIVE MODE"
            } else {
                "BEGIN IMMEDIATE"
            });
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
            c.batch("COMMIT");
        })
    };
    locked_rx.recv().unwrap();
    // An agent reports: its events wait for the database...
    let reporting = {
        let agent = agent.clone();
        let mut client = ctl.agent().await;
        tokio::spawn(async move {
            client
                .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
                    auth: Some(agent),
                    events: vec![connector_event("alice@example.com", "alice-laptop", "web")],
                }]))
                .await
                .map(|r| r.into_inner().accepted)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reporting.is_finished(), "the report waits for the lock");
    // ... while the policy is read without waiting.
    for _ in 0..3 {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(1), async {
            admin
                .get_policy(v1::GetPolicyRequest::default())
                .await
                .unwrap();
            admin
                .list_objects(v1::ListObjectsRequest::default())
                .await
                .unwrap();
            admin
                .get_object(v1::GetObjectRequest {
                    kind: ObjectKind::Resource as i32,
                    name: "web".into(),
                })
                .await
                .unwrap();
            admin.list_agents(v1::ListAgentsRequest {}).await.unwrap();
        })
        .await
        .unwrap_or_else(|_| panic!("reads waited for event ingestion"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    holder.join().unwrap();
    // The twin: the report completes once the database is free.
    let accepted = tokio::time::timeout(Duration::from_secs(15), reporting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(accepted, 1);
    ctl.stop().await;
}
