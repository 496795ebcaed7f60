//! How `gatewayctl` fails: the exit-code table of `gatewayctl --help` (0 ok; 1 the
//! answer is no; 2 the command could not be carried out), the TLS/plaintext mismatch
//! message instead of a silent death, a closed stdout, limits that refuse instead of
//! capping, and event filters that refuse malformed values instead of matching nothing.
//! Controllers run in-process on 127.0.0.1 with ephemeral ports; the real binary talks
//! to them.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_proto::v1::{self, agent_client::AgentClient};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Bound of every wait on a `gatewayctl` process.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

struct Controller {
    addr: SocketAddr,
    key: String,
    /// `Some(ca.pem)` when it serves TLS.
    ca: Option<PathBuf>,
    state: Arc<controller::State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
}

impl Controller {
    async fn start(tls: bool) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Arc::new(controller::State::open(dir.path().join("controller.db"), 30).unwrap());
        let key = state.bootstrap_admin_key("cli-errors").unwrap();
        let (ca, tls_config) = if tls {
            let tls_dir = dir.path().join("tls");
            controller::tls::generate(&tls_dir, &["127.0.0.1".to_string()]).unwrap();
            (
                Some(tls_dir.join(controller::tls::CA_CERT)),
                Some(controller::tls::server_config(&tls_dir).unwrap()),
            )
        } else {
            (None, None)
        };
        let (tx, rx) = oneshot::channel();
        let (addr, task) = controller::spawn_tls(
            "127.0.0.1:0".parse().unwrap(),
            state.clone(),
            tls_config,
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
        Controller {
            addr,
            key,
            ca,
            state,
            stop: Some(tx),
            task: Some(task),
            dir,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `gatewayctl --controller URL [--ca CA] --api-key KEY ARGS...`.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--controller".to_string(), self.url()];
        if let Some(ca) = &self.ca {
            all.extend(["--ca".to_string(), ca.display().to_string()]);
        }
        all.extend(["--api-key".to_string(), self.key.clone()]);
        all.extend(args.iter().map(|s| s.to_string()));
        run(&all)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.state.close_watchers();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controller stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    for v in [
        "GATEWAYCTL_CONTROLLER",
        "GATEWAYCTL_API_KEY",
        "GATEWAYCTL_CA",
        "RUST_BACKTRACE",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs a command with stdin closed, bounded by [`PROCESS_TIMEOUT`].
fn run_cmd(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let (o, e) = (drain(Box::new(out)), drain(Box::new(err)));
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gatewayctl did not finish within {PROCESS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut c = bin();
    c.args(args);
    run_cmd(c)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code; a death by signal is a test failure naming the signal.
fn code(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    o.status.code().unwrap_or_else(|| {
        panic!(
            "gatewayctl died of signal {:?} (stdout {:?}, stderr {:?})",
            o.status.signal(),
            stdout(o),
            stderr(o)
        )
    })
}

fn ok(o: &Output) -> String {
    assert_eq!(code(o), 0, "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

/// Asserts exit code `want` and returns stderr.
fn fails(o: &Output, want: i32) -> String {
    assert_eq!(
        code(o),
        want,
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

fn demo_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo.toml")
        .display()
        .to_string()
}

/// `http://` to a TLS controller used to kill gatewayctl with SIGPIPE, silently, in
/// most runs. Every run must now end with exit 2 and say what to use instead; the
/// reverse mistake too. Controls: the right scheme works against each controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_mismatches_are_named() {
    let tls = Controller::start(true).await;
    let plain = Controller::start(false).await;
    // Controls: each controller answers with its own scheme.
    ok(&tls.ctl(&["whoami"]));
    ok(&plain.ctl(&["whoami"]));

    let wrong = format!("http://{}", tls.addr);
    let want = format!(
        "the controller at {wrong} speaks TLS: use https://{} and --ca FILE",
        tls.addr
    );
    for i in 0..20 {
        let o = run(&["--controller", &wrong, "--api-key", &tls.key, "agents"]);
        let err = fails(&o, 2);
        assert!(err.contains(&want), "run {i}: {err}");
    }
    // JSON output carries the same message and exit code.
    let o = run(&[
        "--controller",
        &wrong,
        "--api-key",
        &tls.key,
        "agents",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 2);
    let j = json(&o);
    assert_eq!(j["error"]["exit_code"], 2);
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("speaks TLS"),
        "{j}"
    );

    // https:// (with a CA) to a plaintext controller.
    let ca = tls.ca.clone().unwrap().display().to_string();
    let wrong = format!("https://{}", plain.addr);
    let o = run(&[
        "--controller",
        &wrong,
        "--ca",
        &ca,
        "--api-key",
        &plain.key,
        "agents",
    ]);
    let err = fails(&o, 2);
    assert!(
        err.contains(&format!(
            "the controller at {wrong} speaks plaintext gRPC, not TLS"
        )) && err.contains(&format!("use http://{} without --ca", plain.addr)),
        "{err}"
    );
    tls.stop().await;
    plain.stop().await;
}

/// A closed stdout (`gatewayctl ... | head`) ends the process quietly, as SIGPIPE does
/// for other tools: no panic message. Control: an open stdout gets the whole output.
#[test]
fn closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bin()
        .args(["policy", "schema"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert_eq!(stderr(&out), "", "nothing on stderr");
    let o = run(&["policy", "schema"]);
    assert!(ok(&o).contains("\"$schema\""));
}

/// The exit-code table: refused credentials and roles are a "no" from the controller
/// (1), like invalid policies; an unreachable controller is 2. The table is in --help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_table() {
    let help = ok(&run(&["--help"]));
    for row in [
        "0  success",
        "1  the answer is no",
        "2  the command could not",
    ] {
        assert!(help.contains(row), "--help lacks `{row}`: {help}");
    }
    let c = Controller::start(false).await;
    // Control: the right key.
    assert!(ok(&c.ctl(&["whoami"])).contains("key:cli-errors"));
    // A wrong key: the controller refuses (1), and says what to check.
    let o = run(&[
        "--controller",
        &c.url(),
        "--api-key",
        "zt-key-0000",
        "whoami",
    ]);
    let err = fails(&o, 1);
    assert!(
        err.contains("did not accept our credentials") && err.contains("--api-key"),
        "{err}"
    );
    // A role that may not: 1 too. Control: the same key may read.
    let auditor = ok(&c.ctl(&["keys", "create", "ro", "--role", "auditor"]));
    let as_auditor = |args: &[&str]| {
        let mut all = vec!["--controller", &c.url(), "--api-key", auditor.trim()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        all.extend(args.iter().map(|s| s.to_string()));
        run(&all)
    };
    ok(&as_auditor(&["list"]));
    let err = fails(&as_auditor(&["keys", "create", "x", "--role", "admin"]), 1);
    assert!(err.contains("not allowed"), "{err}");
    // An invalid policy: 1.
    let bad = c.file("bad.toml", "[[resource]]\nname = 1\n");
    fails(&c.ctl(&["apply", "--yes", &bad]), 1);
    // Unreachable: 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(
        &run(&[
            "--controller",
            &format!("http://127.0.0.1:{port}"),
            "agents",
        ]),
        2,
    );
    assert!(err.contains("cannot reach the controller"), "{err}");
    c.stop().await;
}

/// `--ttl` beyond the limit is refused naming the limit, not capped silently, by
/// gatewayctl and by the controller's API. Controls: the limit itself is accepted and
/// gives that lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_beyond_the_limit_is_refused() {
    let c = Controller::start(false).await;
    let err = fails(
        &c.ctl(&[
            "keys", "create", "long", "--role", "auditor", "--ttl", "731d",
        ]),
        2,
    );
    assert!(
        err.contains("--ttl") && err.contains("limit of 730d"),
        "{err}"
    );
    let j = json(&c.ctl(&[
        "keys", "create", "long", "--role", "auditor", "--ttl", "730d", "-o", "json",
    ]));
    let key = j["key"].as_str().unwrap();
    assert!(key.starts_with("zt-key-"), "{j}");
    let keys = json(&c.ctl(&["keys", "list", "-o", "json"]));
    let long = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "long")
        .unwrap()
        .clone();
    let listed = c.state.list_api_keys();
    let info = listed.iter().find(|k| k.name == "long").unwrap();
    let days = (info.expires_ms - info.created_ms) / 86_400_000;
    assert_eq!(days, 730, "{long}");

    let err = fails(
        &c.ctl(&["enroll-token", "--host", "device:x", "--ttl", "400d"]),
        2,
    );
    assert!(err.contains("limit of 365d"), "{err}");
    ok(&c.ctl(&["enroll-token", "--host", "device:x", "--ttl", "365d"]));

    // The API refuses too (a client bypassing gatewayctl).
    let mut admin = controller::auth::admin_client(c.channel().await, &c.key);
    let e = admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: "longer".into(),
            role: v1::Role::Auditor as i32,
            ttl_seconds: 731 * 86_400,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 730 days"), "{e:?}");
    assert!(!c.state.list_api_keys().iter().any(|k| k.name == "longer"));
    let e = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: "device:x".into(),
            ttl_seconds: 366 * 86_400,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 365 days"), "{e:?}");
    c.stop().await;
}

fn event(ts: &str, verdict: &str) -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: ts.into(),
        event: if verdict == "allow" {
            "flow_start"
        } else {
            "deny"
        }
        .into(),
        verdict: verdict.into(),
        reason: if verdict == "allow" {
            "granted".into()
        } else {
            "denied_by_rule".into()
        },
        user: Some("alice@example.com".into()),
        device: Some("alice-laptop".into()),
        src_ip: Some("198.19.1.10".into()),
        src_port: Some(40000),
        resource: Some("web".into()),
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

/// Ten events from an enrolled agent of the demo policy's connector.
async fn with_events(c: &Controller) {
    ok(&c.ctl(&["apply", "--yes", &demo_path()]));
    let tok = ok(&c.ctl(&["enroll-token", "--host", "connector:demo-connector"]));
    let mut agent = AgentClient::new(c.channel().await);
    let enrolled = agent
        .enroll(v1::EnrollRequest {
            token: tok.trim().into(),
            hostname: "conn-1".into(),
            public_key: "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=".into(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    let events: Vec<_> = (0..10)
        .map(|i| event(&format!("2026-01-01T10:00:{i:02}.000Z"), "allow"))
        .collect();
    let r = agent
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            auth: Some(v1::AgentAuth {
                agent_id: enrolled.agent_id,
                credential: enrolled.credential,
            }),
            events,
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 10);
}

fn times(o: &Output) -> Vec<String> {
    json(o)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["time"].as_str().unwrap().to_string())
        .collect()
}

/// `events --limit N` gives the newest N (printed oldest first); without it, all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_limit_keeps_the_newest() {
    let c = Controller::start(false).await;
    with_events(&c).await;
    let all = times(&c.ctl(&["events", "-o", "json"]));
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "oldest first: {all:?}");
    let newest = times(&c.ctl(&["events", "--limit", "3", "-o", "json"]));
    assert_eq!(newest, all[7..].to_vec());
    // Filters apply before the limit.
    let before = times(&c.ctl(&[
        "events",
        "--until",
        "2026-01-01T10:00:05Z",
        "--limit",
        "2",
        "-o",
        "json",
    ]));
    assert_eq!(before, all[3..5].to_vec());
    let err = fails(&c.ctl(&["events", "--limit", "0"]), 2);
    assert!(err.contains("--limit"), "{err}");
    c.stop().await;
}

/// A malformed filter is a usage error naming the option and the valid forms, not
/// "no matching events". Controls: the well-formed filters find the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_event_filters_are_usage_errors() {
    let c = Controller::start(false).await;
    with_events(&c).await;
    // Controls.
    assert_eq!(
        times(&c.ctl(&["events", "--host", "connector:demo-connector", "-o", "json"])).len(),
        10
    );
    assert_eq!(
        times(&c.ctl(&["events", "--event", "flow_start", "-o", "json"])).len(),
        10
    );
    for (args, want) in [
        (
            vec!["--host", "demo-connector"],
            "--host: `demo-connector` is not a host: write `connector:NAME` or `device:NAME`",
        ),
        (
            vec!["--host", "connector:"],
            "--host: `connector:` is not a host",
        ),
        (
            vec!["--event", "flowstart"],
            "--event: unknown event type `flowstart` (valid: flow_start, flow_end, deny",
        ),
        (vec!["--verdict", "allowed"], "--verdict: unknown verdict"),
        (vec!["--since", "yesterday"], "--since: invalid time"),
        (vec!["--user", " alice@example.com"], "--user: "),
    ] {
        let mut all = vec!["events"];
        all.extend(args.iter());
        let err = fails(&c.ctl(&all), 2);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    c.stop().await;
}

/// `apply` refuses a policy whose own `[[test]]` blocks fail (exit 1, each failing test
/// located, nothing applied), also with `--dry-run`; `--skip-tests` applies it and shows
/// the failing tests with the plan. Control: a policy whose tests pass applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_failing_tests_unless_skipped() {
    let c = Controller::start(false).await;
    let demo = std::fs::read_to_string(demo_path()).unwrap();
    let text = format!(
        "{demo}\n[[test]]\nname = \"alice reaches the database\"\nfrom = \"alice-laptop\"\n\
         to = \"198.18.1.10:5432/tcp\"\nexpect = \"allow\"\n"
    );
    let f = c.file("failing.toml", &text);
    let line = text
        .lines()
        .position(|l| l == "name = \"alice reaches the database\"")
        .unwrap();
    for extra in ["--yes", "--dry-run"] {
        let err = fails(&c.ctl(&["apply", extra, &f]), 1);
        assert!(
            err.contains(&format!(
                "{f}:{line}:1: error: test `alice reaches the database` fails: alice-laptop -> \
                 198.18.1.10:5432/tcp expects allow, the policy decides deny"
            )),
            "{err}"
        );
        assert!(
            err.contains("1 [[test]] block fails; the controller's policy was not changed")
                && err.contains("--skip-tests"),
            "{err}"
        );
    }
    assert_eq!(c.state.revision(), 0);
    // JSON: the error document carries the failing test.
    let o = c.ctl(&["apply", "--yes", &f, "-o", "json"]);
    assert_eq!(code(&o), 1);
    let j = json(&o);
    assert!(
        j["error"]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().contains("alice reaches the database")),
        "{j}"
    );

    let o = c.ctl(&["apply", "--yes", "--skip-tests", &f]);
    let out = ok(&o);
    assert!(out.contains("applied"), "{out}");
    assert!(
        stderr(&o).contains("warning: test `alice reaches the database` fails"),
        "{}",
        stderr(&o)
    );
    assert_eq!(c.state.revision(), 1);
    // Control: the demo's own tests pass; it applies without --skip-tests.
    ok(&c.ctl(&["apply", "--yes", &demo_path()]));
    assert_eq!(c.state.revision(), 2);
    c.stop().await;
}
