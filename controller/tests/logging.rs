//! The binary's logs: on stderr, timestamped, levelled, filtered by `RUST_LOG` (default
//! `info`), as text or JSON lines (`--log-format`), with the operational events an
//! operator follows (enrollment, agents connecting and leaving, policy changes, logins,
//! keys), their fields structured, and never a secret.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_proto::v1;
use serde_json::Value;

const DEMO: &str = include_str!("../../examples/demo.toml");

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateway-controller"));
    c.env_remove("RUST_LOG");
    c
}

fn init(db: &Path, extra: &[&str], rust_log: Option<&str>) -> (String, String) {
    let mut c = bin();
    c.arg("init").args(common::db_args(db)).args(extra);
    if let Some(l) = rust_log {
        c.env("RUST_LOG", l);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn text_logs_are_timestamped_levelled_and_filtered_by_rust_log() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("c.db");
    let (key, err) = init(&db, &[], None);
    assert!(key.starts_with("zt-key-"), "{key}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        // 2024-01-02T03:04:05.123456Z  INFO target: message fields
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(
            controller::parse_timestamp_ms(time).is_some(),
            "no timestamp: {l}"
        );
        assert!(rest.trim_start().starts_with("INFO "), "{l}");
    }
    assert!(
        err.contains("API key created") && err.contains("actor=\"local:init\""),
        "{err}"
    );
    assert!(!err.contains(&key), "the secret is never logged: {err}");
    // RUST_LOG decides what is written: nothing at warn here; a bad value is said.
    let (_, err) = init(&db, &["--key-name", "second"], Some("warn"));
    assert_eq!(err, "");
    let (_, err) = init(&db, &["--key-name", "third"], Some("[[nonsense"));
    assert!(err.contains("WARN") && err.contains("RUST_LOG"), "{err}");
    assert!(err.contains("API key created"), "info still: {err}");
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(logs: &'a [Value], message: &str) -> Vec<&'a Value> {
    logs.iter().filter(|v| v["message"] == message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_operational_events_and_no_secret() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("c.db");
    let (key, err) = init(&db, &["--log-format", "json"], None);
    for l in err.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["timestamp"].is_string() && v["level"] == "INFO", "{l}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = d.path().join("stderr");
    let _ctl = Proc(
        bin()
            .args(["run", "--insecure-plaintext", "--log-format", "json"])
            .args(["--listen", &addr])
            .args(common::db_args(&db))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "controller start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = controller::auth::admin_client(ch.clone(), &key);
    admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy_toml: DEMO.into(),
            file_name: "demo.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .unwrap();
    let token = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: "connector:demo-connector".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut agent = v1::agent_client::AgentClient::new(ch.clone());
    let enrolled = agent
        .enroll(v1::EnrollRequest {
            token: token.clone(),
            hostname: "dc-1".into(),
            public_key: "ZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWU=".into(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    let auth = v1::AgentAuth {
        agent_id: enrolled.agent_id.clone(),
        credential: enrolled.credential.clone(),
    };
    let mut watch = agent
        .watch(v1::WatchRequest {
            auth: Some(auth),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    drop(watch);
    let password = "not the password of anyone";
    let e = v1::admin_client::AdminClient::new(ch.clone())
        .login(v1::LoginRequest {
            user: "mallory".into(),
            password: password.into(),
            totp_code: "123456".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let ci = admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "ci".into(),
            role: v1::Role::Operator as i32,
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    admin
        .revoke_api_key(v1::RevokeApiKeyRequest { name: "ci".into() })
        .await
        .unwrap();

    // The disconnection is seen when the server notices the stream is gone.
    let start = Instant::now();
    let logs = loop {
        let logs = json_lines(&log);
        if !find(&logs, "agent disconnected").is_empty() {
            break logs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no disconnection logged: {logs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for v in &logs {
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
    }
    let one = |message: &str| {
        let found = find(&logs, message);
        assert_eq!(found.len(), 1, "{message}: {logs:#?}");
        found[0].clone()
    };
    let listening = one("listening");
    assert_eq!(listening["addr"], addr.as_str());
    let changed = one("policy changed");
    assert_eq!(changed["revision"], 1);
    assert_eq!(changed["action"], "apply_policy");
    assert!(changed["hosts_changed"].as_u64().unwrap() >= 2, "{changed}");
    let t = one("enrollment token created");
    assert_eq!(t["host"], "connector:demo-connector");
    let id = enrolled.agent_id.as_str();
    let e = one("agent enrolled");
    assert_eq!(
        (&e["agent"], &e["host"], &e["hostname"], &e["peer"]),
        (
            &Value::from(id),
            &Value::from("connector:demo-connector"),
            &Value::from("dc-1"),
            &Value::from("127.0.0.1")
        )
    );
    let c = one("agent connected");
    assert_eq!(
        (&c["agent"], &c["catch_up"]),
        (&Value::from(id), &Value::from("snapshot"))
    );
    assert_eq!(one("agent disconnected")["agent"], id);
    let f = one("login failed");
    assert_eq!(
        (&f["user"], &f["peer"], &f["reason"], &f["level"]),
        (
            &Value::from("mallory"),
            &Value::from("127.0.0.1"),
            &Value::from("unknown user"),
            &Value::from("WARN")
        )
    );
    assert_eq!(one("API key created")["key"], "ci");
    assert_eq!(one("API key revoked")["key"], "ci");
    // Never a secret: the admin key, the token, the agent's credential, the new key, a
    // password.
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [key.as_str(), &token, &enrolled.credential, &ci, password] {
        assert!(!text.contains(secret), "a secret in the logs");
    }
}
