//! Running the controller binary as an operator does: one controller per database (a
//! second one is refused, the first keeps serving), INFO logs of every admin action
//! (who, what, the result; no secret), and Prometheus metrics on --metrics-listen.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsString;
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

/// `--db PATH`: the SQLite file, whatever `GATEWAY_TEST_STORE` says.
fn sqlite_args(db: &Path) -> Vec<OsString> {
    vec!["--db".into(), db.into()]
}

fn init(db: &Path) -> String {
    init_with(common::db_args(db))
}

fn init_with(db_args: Vec<OsString>) -> String {
    let out = bin()
        .arg("init")
        .args(db_args)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `gateway-controller run` on `addr` with JSON logs into `log`.
fn run(db: &Path, addr: &str, log: &Path, extra: &[&str]) -> Command {
    run_with(common::db_args(db), addr, log, extra)
}

fn run_with(db_args: Vec<OsString>, addr: &str, log: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["run", "--insecure-plaintext", "--log-format", "json"])
        .args(["--listen", addr])
        .args(db_args)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

fn wait_listening(addr: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no listener on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

// SQLite only (on both runs of the suite): the lock file is SQLite's; several
// controllers on one PostgreSQL database is what PostgreSQL is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_on_the_same_database_is_refused_and_the_first_keeps_serving() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("c.db");
    let key = init_with(sqlite_args(&db));
    let run = |db: &Path, addr: &str, log: &Path, extra: &[&str]| {
        run_with(sqlite_args(db), addr, log, extra)
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let first = Proc(
        run(&db, &addr, &d.path().join("first.log"), &[])
            .spawn()
            .unwrap(),
    );
    wait_listening(&addr);

    // Same database, another port: refused at once, naming the first one's pid.
    let addr2 = format!("127.0.0.1:{}", free_port());
    let log2 = d.path().join("second.log");
    let mut second = run(&db, &addr2, &log2, &[]).spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            panic!("the second controller kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status:?}");
    let err = std::fs::read_to_string(&log2).unwrap();
    let want = format!(
        "a controller is already using {} (pid {}",
        db.display(),
        first.0.id()
    );
    assert!(err.contains(&want), "{err}");
    assert!(
        std::net::TcpStream::connect(&addr2).is_err(),
        "the second one never listened"
    );

    // The first still answers.
    let mut admin = controller::auth::admin_client(channel(&addr).await, &key);
    let me = admin
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "key:bootstrap-admin");

    // Positive control: another database is not locked. Its folder, created by the
    // lock, is private like the database's, and so is the lock file.
    let other = d.path().join("fresh").join("other.db");
    let addr3 = format!("127.0.0.1:{}", free_port());
    let _third = Proc(
        run(&other, &addr3, &d.path().join("third.log"), &[])
            .spawn()
            .unwrap(),
    );
    wait_listening(&addr3);
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&d.path().join("fresh")), 0o700);
    assert_eq!(mode(&controller::lock_file_of(&other)), 0o600);
    // And once the first stops, its database can be served again.
    drop(first);
    let again = Proc(run(&db, &addr2, &log2, &[]).spawn().unwrap());
    wait_listening(&addr2);
    drop(again);
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_logged_and_counted_in_the_metrics() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("c.db");
    let key = init(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let maddr = format!("127.0.0.1:{}", free_port());
    let log = d.path().join("log");
    let _ctl = Proc(
        run(&db, &addr, &log, &["--metrics-listen", &maddr])
            .spawn()
            .unwrap(),
    );
    wait_listening(&addr);
    wait_listening(&maddr);
    let ch = channel(&addr).await;
    let mut admin = controller::auth::admin_client(ch.clone(), &key);

    let m0 = scrape(&maddr).await;
    assert!(
        m0.contains("controller_build_info{version=\"") && m0.contains("\"} 1"),
        "{m0}"
    );
    assert_eq!(metric(&m0, "controller_agents_connected "), Some(0.0));
    let who_ok = "controller_grpc_requests_total{service=\"Admin\",method=\"WhoAmI\",code=\"OK\"}";
    let who_unauth = "controller_grpc_requests_total{service=\"Admin\",method=\"WhoAmI\",code=\"UNAUTHENTICATED\"}";
    assert_eq!(metric(&m0, who_ok), None);

    // Calls move the counters, by method and code.
    admin.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    admin.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    let bad = format!("zt-key-{}", controller::random_hex(32));
    let e = controller::auth::admin_client(ch.clone(), &bad)
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // A refused change, then an applied one.
    let e = admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy_toml: "[[resource]]\nname = 1\n".into(),
            file_name: "bad.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
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

    // An agent connects, gets a change pushed and acknowledges it.
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
            token,
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
            auth: Some(auth.clone()),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let m1 = scrape(&maddr).await;
    assert_eq!(
        metric(&m1, "controller_agents_connected "),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        metric(&m1, "controller_policy_push_seconds_count "),
        Some(0.0)
    );
    // A change for the connector's host: its new generation is pushed and acked.
    let plan = admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy_toml: DEMO.replace("198.18.1.10", "198.18.1.11"),
            file_name: "demo.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    let generation = plan
        .hosts
        .iter()
        .find(|h| h.host == "connector:demo-connector")
        .expect("the connector's view changed")
        .new_generation;
    let update = watch.message().await.unwrap().unwrap();
    assert!(format!("{update:?}").contains(&generation.to_string()));
    agent
        .ack(v1::AckRequest {
            auth: Some(auth.clone()),
            generation,
        })
        .await
        .unwrap();
    let m2 = scrape(&maddr).await;
    assert_eq!(metric(&m2, who_ok), Some(2.0), "{m2}");
    assert_eq!(metric(&m2, who_unauth), Some(1.0), "{m2}");
    assert_eq!(
        metric(
            &m2,
            "controller_grpc_request_duration_seconds_count{service=\"Admin\",method=\"WhoAmI\",code=\"OK\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m2,
            "controller_grpc_requests_total{service=\"Admin\",method=\"ApplyPolicy\",code=\"INVALID_ARGUMENT\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m2,
            "controller_grpc_requests_total{service=\"Agent\",method=\"Ack\",code=\"OK\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m2, "controller_policy_push_seconds_count "),
        Some(1.0),
        "{m2}"
    );
    drop(watch);
    let start = Instant::now();
    while metric(&scrape(&maddr).await, "controller_agents_connected ") != Some(0.0) {
        assert!(start.elapsed() < Duration::from_secs(10), "still connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Admin users: create, log in (success and failure), change the password, reset
    // the TOTP secret, log out, delete.
    let password = "correct horse battery";
    let created = admin
        .create_admin_user(v1::CreateAdminUserRequest {
            name: "dana".into(),
            role: v1::Role::Operator as i32,
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut anon = v1::admin_client::AdminClient::new(ch.clone());
    let e = anon
        .login(v1::LoginRequest {
            user: "dana".into(),
            password: "wrong password!!".into(),
            totp_code: "000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let code = controller::auth::totp_code(&created.totp_secret, controller::now_unix());
    let session = anon
        .login(v1::LoginRequest {
            user: "dana".into(),
            password: password.into(),
            totp_code: code,
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let mut dana = controller::auth::admin_client(ch.clone(), &session);
    let new_password = "staple battery horse";
    dana.change_password(v1::ChangePasswordRequest {
        old_password: password.into(),
        new_password: new_password.into(),
    })
    .await
    .unwrap();
    // Log out: the session ends (it worked until now).
    dana.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    dana.logout(v1::LogoutRequest {}).await.unwrap();
    let e = dana.who_am_i(v1::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "logged out");
    let reset = admin
        .reset_admin_user_totp(v1::ResetAdminUserTotpRequest {
            name: "dana".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.sessions_ended, 0);
    admin
        .delete_admin_user(v1::DeleteAdminUserRequest {
            name: "dana".into(),
        })
        .await
        .unwrap();
    let e = admin.logout(v1::LogoutRequest {}).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "a key is no session"
    );

    let logs = json_lines(&log);
    let find = |message: &str| -> Vec<&Value> {
        logs.iter().filter(|v| v["message"] == message).collect()
    };
    let one = |message: &str| -> Value {
        let f = find(message);
        assert_eq!(f.len(), 1, "{message}: {logs:#?}");
        f[0].clone()
    };
    let refused = one("policy change refused");
    assert_eq!(
        (&refused["actor"], &refused["action"], &refused["code"]),
        (
            &Value::from("key:bootstrap-admin"),
            &Value::from("apply_policy"),
            &Value::from("InvalidArgument")
        )
    );
    assert!(
        refused["reason"].as_str().unwrap().contains("bad.toml"),
        "{refused}"
    );
    let changed = find("policy changed");
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0]["actor"], "key:bootstrap-admin");
    assert_eq!(one("agent enrolled")["host"], "connector:demo-connector");
    let created_log = one("admin user created");
    assert_eq!(
        (
            &created_log["user"],
            &created_log["actor"],
            &created_log["role"]
        ),
        (
            &Value::from("dana"),
            &Value::from("key:bootstrap-admin"),
            &Value::from("operator")
        )
    );
    let failed = one("login failed");
    assert_eq!(
        (&failed["user"], &failed["reason"], &failed["level"]),
        (
            &Value::from("dana"),
            &Value::from("wrong password"),
            &Value::from("WARN")
        )
    );
    let ok = one("login succeeded");
    assert_eq!(
        (&ok["user"], &ok["level"]),
        (&Value::from("dana"), &Value::from("INFO"))
    );
    assert_eq!(
        one("password changed (other sessions ended)")["user"],
        "dana"
    );
    let reset_log = one("admin user TOTP reset (sessions ended)");
    assert_eq!(
        (
            &reset_log["user"],
            &reset_log["actor"],
            &reset_log["sessions_ended"]
        ),
        (
            &Value::from("dana"),
            &Value::from("key:bootstrap-admin"),
            &Value::from(0)
        )
    );
    assert_eq!(one("logged out (session ended)")["user"], "dana");
    assert_eq!(
        one("admin user deleted (sessions ended, keys revoked)")["user"],
        "dana"
    );
    // No secret: the key, the passwords, the session, the TOTP secrets.
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        key.as_str(),
        password,
        new_password,
        &session,
        &created.totp_secret,
        &reset.totp_secret,
        &enrolled.credential,
    ] {
        assert!(!text.contains(secret), "a secret in the logs");
    }
}
