//! The Admin Console in a real browser (headless Chromium from Debian, driven by npm
//! `playwright-core` through `console-browser/e2e.mjs`, accessibility checked by
//! `axe-core`): log in with TOTP, every view renders and has no serious or critical
//! accessibility violation, a policy applied through the plan page, explain, a live event
//! arriving on the Activity page, an agent revoked, the auditor refused on actions, a
//! CSRF-less POST refused, a resource named like markup rendered inert, an idle session
//! sent back to the login page, and no script dialog or CSP violation on any page.
//! Screenshots of every page go to `target/console-screenshots/`.
//!
//! This side starts the controller and its console, makes the users, applies the policy
//! and reports a connection event every 300 ms while the browser runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Controller, DEMO, tempdir};
use controller::auth::Role;
use controller::console::{self, ConsoleOptions};
use gateway_proto::v1;

const PASSWORD: &str = "correct horse battery staple";
const EVIL: &str = "<script>alert(1)</script>";
const IDLE: Duration = Duration::from_secs(8);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console-browser")
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn node_present() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_works_in_a_real_browser() {
    let dir = browser_dir();
    let tools = chromium().is_some()
        && node_present()
        && dir.join("node_modules/playwright-core").exists()
        && dir.join("node_modules/axe-core").exists();
    if gateway_test_support::privileges::skip_without(
        "console_browser::the_console_works_in_a_real_browser",
        "Chromium, Node and the npm packages of controller/tests/console-browser",
        tools,
    ) {
        return;
    }

    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut api = ctl.admin().await;
    let policy = format!(
        "{DEMO}\n[[resource]]\nname = \"{EVIL}\"\nnetwork = \"corp\"\naddress = \"198.18.1.99\"\ntcp = [\"9\"]\n"
    );
    common::apply(&mut api, &policy).await;
    let new_policy = format!(
        "{policy}\n[[resource]]\nname = \"browser-added\"\nnetwork = \"corp\"\naddress = \"198.18.1.98\"\ntcp = [\"8443\"]\n"
    );
    let user = |role: Role, name: &str| {
        let (secret, _) = ctl
            .state
            .create_admin_user(name, role, PASSWORD, "test")
            .unwrap();
        secret
    };
    let admin_secret = user(Role::Admin, "browser-admin");
    let admin2_secret = user(Role::Admin, "browser-admin-2");
    let auditor_secret = user(Role::Auditor, "browser-auditor");
    let agent = common::enroll(&ctl, "connector:demo-connector").await;
    let revoked = common::enroll(&ctl, "device:bob-laptop").await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = ConsoleOptions {
        idle: IDLE,
        ..ConsoleOptions::default()
    };
    let (addr, _task) = console::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ctl.state.clone(),
        opts,
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();

    // Connection events while the browser runs, for the live Activity check.
    let feeding = {
        let channel = ctl.channel().await;
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut client = v1::agent_client::AgentClient::new(channel);
            loop {
                let e = v1::ConnectionEvent {
                    timestamp: policy_compiler::format_rfc3339(controller::now_unix()),
                    event: "deny".into(),
                    verdict: "deny".into(),
                    reason: "no_grant".into(),
                    user: Some("alice@example.com".into()),
                    resource: Some("db".into()),
                    host: "connector:demo-connector".into(),
                    ..Default::default()
                };
                let _ = client
                    .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
                        auth: Some(agent.clone()),
                        events: vec![e],
                    }]))
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let log = _d.path().join("browser.log");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("e2e.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", format!("http://{addr}"))
        .env("PASSWORD", PASSWORD)
        .env("ADMIN_USER", "browser-admin")
        .env("ADMIN_SECRET", &admin_secret)
        .env("ADMIN2_USER", "browser-admin-2")
        .env("ADMIN2_SECRET", &admin2_secret)
        .env("AUDITOR_USER", "browser-auditor")
        .env("AUDITOR_SECRET", &auditor_secret)
        .env("REVOKE_AGENT", &revoked.agent_id)
        .env("NEW_POLICY", &new_policy)
        .env("EVIL_NAME", EVIL)
        .env("IDLE_MS", IDLE.as_millis().to_string())
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium().unwrap())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    let mut child = cmd.spawn().expect("running node");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser test did not end within 4 minutes:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    feeding.abort();
    let _ = stop.send(());
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    eprintln!("{stdout}{stderr}");
    assert!(
        status.success(),
        "the browser checks failed:\n{stdout}\n{stderr}"
    );
    // The page checks ran (not an empty script).
    assert!(stdout.contains(" checks passed, 0 failed"), "{stdout}");

    // What the browser did, as the controller saw it.
    let audit = ctl.state.audit_report(None, None, 1000).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.actor == "user:browser-admin" && r.action.contains("apply")),
        "no apply by the browser's admin in the audit trail: {:?}",
        audit
            .iter()
            .map(|r| (&r.actor, &r.action))
            .collect::<Vec<_>>()
    );
    assert!(
        ctl.state
            .agents()
            .iter()
            .any(|a| a.agent_id == revoked.agent_id && a.revoked_ms.is_some()),
        "the agent revoked in the browser is not revoked"
    );
}
