//! Issue 12, the parts that need the controller's newer knobs: the brute-force limit
//! under concurrency, bounded and aggregated refusals in the audit trail, per-agent
//! event quotas, enrollment for the wrong host, anchored audit heads, connection
//! limits. Every refusal has its positive twin.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use controller::auth::totp_code;
use controller::state::LoginLimits;
use controller::state::limits::Rate;
use gateway_proto::v1;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";

/// Login limits that leave the per-address and global buckets out of the way.
fn open_limits() -> LoginLimits {
    LoginLimits {
        per_peer: Rate {
            burst: 100_000.0,
            per_sec: 100_000.0,
        },
        global: Rate {
            burst: 100_000.0,
            per_sec: 100_000.0,
        },
        ..LoginLimits::default()
    }
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

async fn audit(ctl: &Controller) -> Vec<v1::AuditRecord> {
    ctl.admin()
        .await
        .audit_report(v1::AuditReportRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_logins_are_counted_before_the_password_is_checked() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    ctl.state.set_login_limits(open_limits());
    let secret = ctl
        .admin()
        .await
        .create_admin_user(v1::CreateAdminUserRequest {
            name: "gina".into(),
            role: v1::Role::Admin as i32,
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .totp_secret;
    // The twin: the right password and code work.
    login(
        &ctl,
        "gina",
        PASSWORD,
        &totp_code(&secret, controller::now_unix()),
    )
    .await
    .unwrap();

    // 40 wrong logins at once, on 4 connections.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let ch = ctl.channel().await;
        for _ in 0..10 {
            let mut c = v1::admin_client::AdminClient::new(ch.clone());
            calls.push(tokio::spawn(async move {
                c.login(v1::LoginRequest {
                    user: "gina".into(),
                    password: "not the password".into(),
                    totp_code: "000000".into(),
                })
                .await
                .unwrap_err()
                .code()
            }));
        }
    }
    let mut checked = 0;
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap() {
            Code::Unauthenticated => checked += 1,
            Code::ResourceExhausted => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        checked <= controller::state::MAX_LOGIN_FAILURES,
        "{checked} wrong passwords were checked"
    );
    assert_eq!(checked + refused, 40);
    // The lock holds for the right password too, for now.
    let e = login(
        &ctl,
        "gina",
        PASSWORD,
        &totp_code(&secret, controller::now_unix() + 30),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_audit_trail_aggregated_and_bounded() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    ctl.state.set_login_limits(open_limits());
    apply(&mut ctl.admin().await, DEMO).await;
    let agent = enroll(&ctl, "connector:demo-connector").await;
    let before = audit(&ctl).await.len();

    // Refusals of many kinds and many repeats: 10 logins for distinct unknown users,
    // 20 with a name that is not one, 40 with the right agent id and a wrong
    // credential, 100 with made-up agent ids, 30 with unknown enrollment tokens.
    for i in 0..10 {
        let e = login(&ctl, &format!("ghost-{i}"), PASSWORD, "123456")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    for _ in 0..20 {
        let e = login(&ctl, "not a name!", PASSWORD, "123456")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let mut a = ctl.agent().await;
    let watch = |agent_id: String| v1::WatchRequest {
        auth: Some(v1::AgentAuth {
            agent_id,
            credential: "zt-agent-wrong".into(),
        }),
        generation: 0,
    };
    for _ in 0..40 {
        let e = a.watch(watch(agent.agent_id.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    for i in 0..100 {
        let e = a
            .watch(watch(format!("agent-ghost-{i}")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    for i in 0..30 {
        let e = a
            .enroll(v1::EnrollRequest {
                token: format!("zt-enroll-guess-{i}"),
                hostname: "h".into(),
                public_key: common::wg_key(),
                host: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let during = audit(&ctl).await;
    let of = |action: &str| during.iter().filter(|r| r.action == action).count();
    assert_eq!(of("login_failure"), 10, "distinct users: one record each");
    assert_eq!(of("login_refused"), 1);
    assert_eq!(of("enroll_refused"), 1);
    // At most 60 at once per kind of refusal: the made-up ids beyond are counted only.
    assert_eq!(of("agent_auth_failure"), 60);
    assert_eq!(during.len() - before, 72);

    // When the windows end, the repeats are recorded, one record each.
    ctl.state.flush_refusals(true);
    let after = audit(&ctl).await;
    let agg = |action: &str| {
        after
            .iter()
            .filter(|r| r.action == action)
            .map(|r| r.after.clone())
            .collect::<Vec<_>>()
    };
    let enroll_recs = agg("enroll_refused");
    assert_eq!(enroll_recs.len(), 2, "{enroll_recs:?}");
    assert!(
        enroll_recs[1].contains("repeated 29 more times"),
        "{enroll_recs:?}"
    );
    let refused = agg("login_refused");
    assert!(refused[1].contains("repeated 19 more times"), "{refused:?}");
    let agents = agg("agent_auth_failure");
    assert!(
        agents.iter().any(|l| l.contains("repeated 39 more times")),
        "{agents:?}"
    );
    let overflow: Vec<&String> = agents
        .iter()
        .filter(|l| l.contains("not itemized"))
        .collect();
    assert_eq!(overflow.len(), 1, "{agents:?}");
    assert!(overflow[0].starts_with("41 refusals"), "{overflow:?}");
    // Every refusal record is short, whatever the caller sent.
    for r in after.iter().skip(before) {
        assert!(r.after.len() < 512 && r.actor.len() < 128, "{r:?}");
    }
    assert!(
        ctl.admin()
            .await
            .verify_audit(v1::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    ctl.stop().await;
}

fn event() -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: "2026-01-01T10:00:00.000Z".into(),
        event: "flow_start".into(),
        verdict: "allow".into(),
        reason: "granted".into(),
        user: Some("alice@example.com".into()),
        device: Some("alice-laptop".into()),
        resource: Some("web".into()),
        connector: Some("demo-connector".into()),
        remote_network: Some("corp".into()),
        rule: Some("engineering-web".into()),
        rule_id: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_has_an_event_quota() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    apply(&mut ctl.admin().await, DEMO).await;
    ctl.state.set_event_quota(5.0, 0.5);
    let a = enroll(&ctl, "connector:demo-connector").await;
    let b = enroll(&ctl, "connector:demo-connector").await;
    let send = |auth: v1::AgentAuth, n: usize| {
        let ctl = &ctl;
        async move {
            ctl.agent()
                .await
                .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
                    auth: Some(auth),
                    events: vec![event(); n],
                }]))
                .await
                .map(|r| r.into_inner().accepted)
        }
    };
    assert_eq!(send(a.clone(), 5).await.unwrap(), 5);
    let e = send(a.clone(), 3).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another agent has its own quota.
    assert_eq!(send(b, 5).await.unwrap(), 5);
    // The quota refills.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(send(a, 1).await.unwrap(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_host_is_refused_and_stays_unused() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, DEMO).await;
    let token = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: "connector:demo-connector".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let host = |h: &str| {
        Some(gateway_proto::host_to_wire(
            &gateway_proto::parse_host(h).unwrap(),
        ))
    };
    let mut agent = ctl.agent().await;
    let e = agent
        .enroll(v1::EnrollRequest {
            token: token.clone(),
            hostname: "alice-laptop".into(),
            public_key: common::wg_key(),
            host: host("device:alice-laptop"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert!(agents.is_empty(), "an orphan agent: {agents:?}");
    // The twin: the same token for its own host.
    let r = agent
        .enroll(v1::EnrollRequest {
            token,
            hostname: "conn-1".into(),
            public_key: common::wg_key(),
            host: host("connector:demo-connector"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.host.unwrap().name, "demo-connector");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchored_head_detects_a_rewrite_even_by_the_key_holder() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("controller.db");
    let head_file = d.path().join("audit-heads.log");
    let state = Arc::new(open_state(&db));
    let key = state.bootstrap_admin_key("anchor-admin").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = controller::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        None,
        controller::ServeOptions {
            audit_head_file: Some(head_file.clone()),
            audit_head_every: Duration::from_secs(1),
            ..controller::ServeOptions::default()
        },
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = controller::auth::admin_client(ch, &key);
    for text in [
        DEMO,
        &DEMO.replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]"),
    ] {
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: text.into(),
                file_name: String::new(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .unwrap();
    }
    // The controller exports its head (id 3 now) within a couple of seconds.
    let mut anchored = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = std::fs::read_to_string(&head_file).unwrap_or_default();
        if let Some(line) = text.lines().last()
            && line.contains(" id=3 ")
        {
            anchored = line.split("head=").nth(1).map(str::to_string);
            break;
        }
    }
    let anchored = anchored.expect("the head was exported");
    let v = state.verify_audit(Some(&anchored)).unwrap();
    assert!(v.ok && v.expected_head_id == Some(3), "{v:?}");
    // More records later: the anchor is still in the chain.
    admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "later".into(),
            role: v1::Role::Auditor as i32,
            ttl_seconds: 60,
        })
        .await
        .unwrap();
    let v = admin
        .verify_audit(v1::VerifyAuditRequest {
            expect_head: Some(anchored.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.expected_head_id == Some(3), "{v:?}");
    let _ = stop.send(());
    state.close_watchers();
    task.await.unwrap().unwrap();
    drop(admin);
    drop(state);

    // Someone with the database *and* the key deletes record 2 and re-chains the rest
    // with the key: the chain verifies, but the anchored head is gone.
    let keys = controller::keys::Keys::load(&controller::keys::default_key_file(&db)).unwrap();
    {
        let c = raw(&db);
        // One by one, in id order (a unique id never collides while it moves down).
        c.execute("DELETE FROM audit WHERE id = 2", &[]);
        let ids = c.query("SELECT id FROM audit WHERE id > 2 ORDER BY id", &[]);
        for r in ids {
            let id = r.int(0).unwrap();
            c.execute(
                "UPDATE audit SET id = ?2 WHERE id = ?1",
                &controller::vals![id, id - 1],
            );
        }
        let rows = c.query(
            "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
            &[],
        );
        let mut prev = controller::store::GENESIS_HASH.to_string();
        for r in rows {
            let id = r.int(0).unwrap();
            let h = controller::store::audit_hash(
                &keys,
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
    let store = open_store(&db, Arc::new(keys)).unwrap();
    let plain = store.verify_audit(None).unwrap();
    assert!(
        plain.ok,
        "a key holder's rewrite verifies without an anchor: {plain:?}"
    );
    let v = store.verify_audit(Some(&anchored)).unwrap();
    assert!(!v.ok, "{v:?}");
    assert!(v.reason.contains("anchored head"), "{}", v.reason);
    // The command line says so too.
    drop(store);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("audit-verify")
        .args(db_args(&db))
        .args(["--expect-head", &anchored])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("anchored head"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_place() {
    let d = tempfile::tempdir().unwrap();
    let state = Arc::new(open_state(&d.path().join("c.db")));
    let key = state.bootstrap_admin_key("limit-admin").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = controller::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        None,
        controller::ServeOptions {
            max_connections: 2,
            ..controller::ServeOptions::default()
        },
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    let whoami = |secs: u64| {
        let key = key.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(secs), async move {
                let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                controller::auth::admin_client(ch, &key)
                    .who_am_i(v1::WhoAmIRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|s| s.to_string())
            })
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r)
        }
    };
    // The twin first: a call is served.
    whoami(5).await.unwrap();
    // Two idle connections take both places: the next call is not served...
    let idle1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(whoami(1).await.is_err(), "served beyond the limit");
    // ... until one of them goes away.
    drop(idle1);
    whoami(5).await.unwrap();
    drop(idle2);
    let _ = stop.send(());
    state.close_watchers();
    task.await.unwrap().unwrap();
}

/// The schema of a database written before keys (schema version 2).
const SCHEMA_V2: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (2);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE objects (position INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
   toml TEXT NOT NULL, UNIQUE (kind, name));
CREATE TABLE hosts (host TEXT PRIMARY KEY, generation INTEGER NOT NULL, view BLOB NOT NULL);
CREATE TABLE host_deltas (host TEXT NOT NULL, generation INTEGER NOT NULL, base INTEGER NOT NULL,
   delta BLOB NOT NULL, PRIMARY KEY (host, generation));
CREATE TABLE tokens (hash TEXT PRIMARY KEY, host TEXT NOT NULL, created_ms INTEGER NOT NULL,
   expires_ms INTEGER NOT NULL, used_ms INTEGER);
CREATE TABLE agents (id TEXT PRIMARY KEY, host TEXT NOT NULL, hostname TEXT NOT NULL,
   credential_hash TEXT NOT NULL, enrolled_ms INTEGER NOT NULL,
   acked_generation INTEGER NOT NULL DEFAULT 0, last_seen_ms INTEGER NOT NULL, revoked_ms INTEGER);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
   received_ms INTEGER NOT NULL, agent_id TEXT NOT NULL, host TEXT NOT NULL,
   event TEXT NOT NULL, verdict TEXT NOT NULL, user TEXT, device TEXT,
   resource TEXT, data BLOB NOT NULL);
CREATE INDEX events_time ON events (time_ms);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
   actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL,
   after TEXT NOT NULL, revision INTEGER NOT NULL, prev_hash TEXT NOT NULL DEFAULT '',
   hash TEXT NOT NULL DEFAULT '');
CREATE TABLE audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), id INTEGER NOT NULL,
   hash TEXT NOT NULL);
CREATE TABLE api_keys (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
   created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, revoked_ms INTEGER,
   created_by TEXT NOT NULL);
CREATE TABLE admin_users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
   totp_secret TEXT NOT NULL, created_ms INTEGER NOT NULL);
";

// SQLite only (on both runs of the suite): databases from before the key were SQLite
// files (PostgreSQL databases are keyed when they are created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_the_key_is_keyed_once_when_opened() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("controller.db");
    let secret = controller::auth::new_totp_secret().unwrap();
    let old_head = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(SCHEMA_V2).unwrap();
        let mut prev = controller::store::GENESIS_HASH.to_string();
        for (id, action) in [(1i64, "create_api_key"), (2, "create_admin_user")] {
            let h = unkeyed_hash(
                id as u64,
                id * 1000,
                "local:init",
                action,
                "t",
                "",
                "",
                0,
                &prev,
            );
            c.execute(
                "INSERT INTO audit (id, time_ms, actor, action, target, before, after, revision, prev_hash, hash)
                 VALUES (?1, ?2, 'local:init', ?3, 't', '', '', 0, ?4, ?5)",
                rusqlite::params![id, id * 1000, action, prev, h],
            )
            .unwrap();
            prev = h;
        }
        c.execute(
            "INSERT INTO audit_head (one, id, hash) VALUES (1, 2, ?1)",
            [&prev],
        )
        .unwrap();
        c.execute(
            "INSERT INTO admin_users (name, role, password_hash, totp_secret, created_ms)
             VALUES ('hana', 'admin', ?1, ?2, 0)",
            rusqlite::params![controller::auth::hash_password(PASSWORD).unwrap(), secret],
        )
        .unwrap();
        prev
    };

    // Opened with a key: the chain is keyed (and says from which head), the secret sealed.
    let state = Arc::new(controller::State::open(&db, 30).unwrap());
    let v = state.verify_audit(None).unwrap();
    assert!(v.ok && v.records == 3, "{v:?}");
    let recs = state.audit_report(None, None, 0).unwrap();
    assert_eq!(recs[2].action, "audit_keyed");
    assert!(recs[2].before.contains(&old_head), "{:?}", recs[2]);
    let stored: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT totp_secret FROM admin_users WHERE name = 'hana'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!stored.contains(&secret), "{stored}");
    // The user still logs in with the same authenticator.
    state
        .login(
            None,
            "hana",
            PASSWORD,
            &totp_code(&secret, controller::now_unix()),
        )
        .await
        .unwrap();
    drop(state);
    // Once: opening again adds nothing.
    let state = controller::State::open(&db, 30).unwrap();
    let keyed = state
        .audit_report(None, None, 0)
        .unwrap()
        .iter()
        .filter(|r| r.action == "audit_keyed")
        .count();
    assert_eq!(keyed, 1);
    drop(state);

    // Without its key, or with another one, the database is refused.
    let key = controller::keys::default_key_file(&db);
    let saved = d.path().join("saved.key");
    std::fs::rename(&key, &saved).unwrap();
    let e = controller::State::open(&db, 30).unwrap_err().to_string();
    assert!(e.contains("is missing"), "{e}");
    assert!(!key.exists(), "no new key is made for a keyed database");
    controller::keys::Keys::create(&key).unwrap();
    let e = controller::State::open(&db, 30).unwrap_err().to_string();
    assert!(e.contains("another key"), "{e}");
    // The twin: with its own key it opens.
    std::fs::rename(&saved, &key).unwrap();
    controller::State::open(&db, 30).unwrap();
}
