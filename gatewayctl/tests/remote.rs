//! The remote commands against a real controller: started in-process on 127.0.0.1 with
//! an ephemeral port and a temporary SQLite database; the real `gatewayctl` binary talks
//! to it with `--controller`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_proto::v1::{self, agent_client::AgentClient};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const DEMO: &str = include_str!("../../examples/demo.toml");
/// Bound of every wait on a `gatewayctl` process.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

fn demo_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo.toml")
        .display()
        .to_string()
}

struct Controller {
    addr: SocketAddr,
    /// An admin API key minted for the test (every Admin call needs a credential).
    key: String,
    state: Arc<controller::State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
}

impl Controller {
    async fn start() -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Arc::new(controller::State::open(dir.path().join("controller.db"), 30).unwrap());
        let key = state.bootstrap_admin_key("gatewayctl-tests").unwrap();
        let (tx, rx) = oneshot::channel();
        let (addr, task) =
            controller::spawn("127.0.0.1:0".parse().unwrap(), state.clone(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        Controller {
            addr,
            key,
            state,
            stop: Some(tx),
            task: Some(task),
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `gatewayctl --controller URL ARGS...`.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--controller".to_string(),
            self.url(),
            "--api-key".to_string(),
            self.key.clone(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        run(&all)
    }

    /// A file in the test's temporary directory.
    fn file(&self, name: &str, text: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    async fn agent(&self) -> AgentClient<Channel> {
        let ch = Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        AgentClient::new(ch)
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
    c.env_remove("GATEWAYCTL_CONTROLLER");
    c
}

/// Collects a pipe on a thread.
fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for a child within [`PROCESS_TIMEOUT`]; kills it (and fails) when it hangs.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gatewayctl did not finish within {PROCESS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_cmd(cmd: Command) -> Output {
    run_with_stdin(cmd, Stdio::null())
}

fn run_with_stdin(mut cmd: Command, stdin: Stdio) -> Output {
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gatewayctl");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut c = bin();
    c.args(args);
    run_cmd(c)
}

/// Runs `gatewayctl ARGS...` with stdin on a pseudo-terminal on which `answer` is typed.
fn run_on_tty(args: &[&str], answer: &str) -> Output {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new file descriptors; no name, default settings.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut m = std::fs::File::from(master);
    m.write_all(answer.as_bytes()).unwrap();
    let mut c = bin();
    c.args(args);
    let o = run_with_stdin(c, Stdio::from(slave));
    drop(m);
    o
}

/// Runs `gatewayctl ARGS...` on a pseudo-terminal; once it asks, runs `meanwhile`, then
/// answers `y`.
fn answer_after_prompt(args: &[&str], meanwhile: impl FnOnce()) -> Output {
    use std::io::Read as _;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: as in `run_on_tty`.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: as in `run_on_tty`.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut m = std::fs::File::from(master);
    let mut child = bin()
        .args(args)
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain(child.stdout.take().unwrap());
    let mut err_pipe = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut err = Vec::new();
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    while !String::from_utf8_lossy(&err).contains("[y/N]") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => err.extend(chunk),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no prompt: {}", String::from_utf8_lossy(&err));
            }
        }
    }
    meanwhile();
    m.write_all(b"y\n").unwrap();
    let status = wait_bounded(&mut child);
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        err.extend(chunk);
    }
    drop(m);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err,
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert_eq!(
        code(o),
        0,
        "expected success\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

#[track_caller]
fn fails(o: &Output, want: i32) -> String {
    assert_eq!(
        code(o),
        want,
        "expected exit {want}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

fn revision(c: &Controller) -> u64 {
    json(&c.ctl(&["list", "--output", "json"]))["revision"]
        .as_u64()
        .unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

fn apply_demo(c: &Controller) {
    ok(&c.ctl(&["apply", &demo_path(), "--yes"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_then_yes() {
    let c = Controller::start().await;
    let demo = demo_path();

    let empty = json(&c.ctl(&["list", "--output", "json"]));
    assert_eq!(empty["revision"], 0);
    assert!(names(&empty).is_empty());
    let text = ok(&c.ctl(&["list"]));
    assert!(text.contains("no objects (revision 0)"), "{text}");

    // The plan, readable, and nothing changes.
    let plan = ok(&c.ctl(&["apply", &demo, "--dry-run"]));
    for want in [
        "plan: revision 0 -> 1",
        "objects: 27 added, 0 changed, 0 removed",
        "+ added",
        "remote_network",
        "corp",
        "grant",
        "contractors-no-db",
        "alice reaches the web front end",
        "HOST",
        "GENERATION",
        "connector:demo-connector",
        "device:alice-laptop",
        "0 -> 1",
        "dry run: nothing was changed",
    ] {
        assert!(plan.contains(want), "`{want}` missing from:\n{plan}");
    }
    assert!(!plan.contains("applied:"), "{plan}");
    assert_eq!(revision(&c), 0);
    assert!(names(&json(&c.ctl(&["list", "resource", "--output", "json"]))).is_empty());

    let j = json(&c.ctl(&["apply", &demo, "--dry-run", "--output", "json"]));
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["applied"], false);
    assert_eq!(j["plan"]["base_revision"], 0);
    assert_eq!(j["plan"]["new_revision"], 1);
    let objects = j["plan"]["objects"].as_array().unwrap();
    assert!(objects.iter().all(|o| o["change"] == "added"));
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "resource" && o["name"] == "web")
    );
    let conn = j["plan"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "connector:demo-connector")
        .expect("connector in plan")
        .clone();
    assert_eq!(conn["new_generation"], 1);
    assert!(conn["total"]["added"].as_u64().unwrap() > 0);
    assert_eq!(revision(&c), 0);

    // Applied with --yes.
    let out = ok(&c.ctl(&["apply", &demo, "--yes"]));
    assert!(out.contains("plan: revision 0 -> 1"), "{out}");
    assert!(
        out.contains("applied: the controller's policy is now revision 1"),
        "{out}"
    );
    assert_eq!(revision(&c), 1);
    let res = json(&c.ctl(&["list", "resources", "--output", "json"]));
    assert_eq!(names(&res), ["web", "db", "wiki", "dns"]);
    assert_eq!(res["revision"], 1);
    let text = ok(&c.ctl(&["list", "resource"]));
    assert!(text.starts_with("KIND"), "{text}");
    assert!(text.contains("address=\"198.18.1.5\""), "{text}");
    assert!(text.contains("4 resource objects (revision 1)"), "{text}");
    let all = json(&c.ctl(&["list", "--output", "json"]));
    assert_eq!(names(&all).len(), 16 + 11); // 16 objects and 11 tests

    // The same file again: no changes, no question asked even without a TTY.
    let again = ok(&c.ctl(&["apply", &demo]));
    assert!(again.contains("no changes"), "{again}");
    assert_eq!(revision(&c), 1);

    // A change shows as changed objects and the affected hosts' next generation.
    let changed = DEMO.replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]");
    let f = c.file("changed.toml", &changed);
    let j = json(&c.ctl(&["apply", &f, "--yes", "--output", "json"]));
    assert_eq!(j["applied"], true);
    assert_eq!(j["plan"]["base_revision"], 1);
    assert_eq!(j["plan"]["new_revision"], 2);
    let objects = j["plan"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{j}");
    assert_eq!(objects[0]["change"], "changed");
    assert_eq!(objects[0]["name"], "web");
    assert!(objects[0]["after"].as_str().unwrap().contains("8443"));
    assert!(
        j["plan"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == "connector:demo-connector" && h["new_generation"] == 2)
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_invalid_and_unconfirmed() {
    let c = Controller::start().await;
    let demo = demo_path();

    // Without a terminal and without --yes: refused, exit 2, nothing changed.
    let o = c.ctl(&["apply", &demo]);
    let err = fails(&o, 2);
    assert!(
        err.contains("not a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert!(
        stdout(&o).contains("plan: revision 0 -> 1"),
        "the plan is still shown"
    );
    assert_eq!(revision(&c), 0);
    let j = json(&c.ctl(&["apply", &demo, "--output", "json"]));
    assert_eq!(j["error"]["exit_code"], 2);
    assert_eq!(revision(&c), 0);

    // An invalid policy: the controller's located errors, exit 1, nothing changed.
    let bad = DEMO.replace(
        "network = \"corp\"\naddress = \"198.18.1.10\"",
        "network = \"nowhere\"\naddress = \"198.18.1.10\"",
    );
    assert_ne!(bad, DEMO);
    let f = c.file("bad.toml", &bad);
    let err = fails(&c.ctl(&["apply", &f, "--yes"]), 1);
    let located = err
        .lines()
        .find(|l| l.starts_with(&format!("{f}:")) && l.contains(": error: "))
        .unwrap_or_else(|| panic!("no located error in:\n{err}"));
    let pos: Vec<&str> = located[f.len() + 1..].splitn(3, ':').collect();
    assert!(
        pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
        "not file:line:col: {located}"
    );
    assert!(located.contains("nowhere"), "{located}");
    assert!(
        err.contains("has 1 error; the controller's policy was not changed"),
        "{err}"
    );
    let j = json(&c.ctl(&["apply", &f, "--yes", "--output", "json"]));
    assert_eq!(j["error"]["exit_code"], 1);
    assert!(
        j["error"]["diagnostics"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{f}:"))
    );
    // A TOML syntax error is located too.
    let f2 = c.file("syntax.toml", "[[resource]\nname = 1\n");
    let err = fails(&c.ctl(&["apply", &f2, "--dry-run"]), 1);
    assert!(err.contains(&format!("{f2}:1:")), "{err}");
    assert_eq!(revision(&c), 0);

    // A missing file is an I/O error.
    let err = fails(&c.ctl(&["apply", "/nonexistent/policy.toml", "--yes"]), 2);
    assert!(
        err.contains("cannot read `/nonexistent/policy.toml`"),
        "{err}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_asks_on_a_terminal() {
    let c = Controller::start().await;
    let url = c.url();
    let demo = demo_path();
    let args = [
        "--controller",
        url.as_str(),
        "--api-key",
        c.key.as_str(),
        "apply",
        demo.as_str(),
    ];

    // Declined: nothing changes, exit 1.
    let o = run_on_tty(&args, "n\n");
    let err = fails(&o, 1);
    assert!(err.contains("Apply these changes? [y/N]"), "{err}");
    assert!(err.contains("cancelled; nothing was changed"), "{err}");
    assert!(stdout(&o).contains("plan: revision 0 -> 1"));
    assert_eq!(revision(&c), 0);

    // Confirmed: applied.
    let o = run_on_tty(&args, "y\n");
    let out = ok(&o);
    assert!(
        out.contains("applied: the controller's policy is now revision 1"),
        "{out}"
    );
    assert_eq!(revision(&c), 1);

    // A change by someone else between the plan and the answer: refused, nothing applied.
    let changed = DEMO.replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]");
    let f = c.file("changed.toml", &changed);
    let o = answer_after_prompt(
        &[
            "--controller",
            url.as_str(),
            "--api-key",
            c.key.as_str(),
            "apply",
            f.as_str(),
        ],
        || {
            let j = json(&c.ctl(&[
                "delete",
                "test",
                "unknown sources are dropped",
                "--yes",
                "-o",
                "json",
            ]));
            assert_eq!(j["applied"], true);
        },
    );
    let err = fails(&o, 1);
    assert!(err.contains("changed since the plan was computed"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(revision(&c), 2);
    let web = ok(&c.ctl(&["get", "resource", "web"]));
    assert!(!web.contains("8443"), "{web}");

    // delete asks the same way.
    let o = run_on_tty(
        &[
            "--controller",
            url.as_str(),
            "--api-key",
            c.key.as_str(),
            "delete",
            "grant",
            "engineering-dns",
            // It breaks "alice resolves names": made anyway, still asked about.
            "--skip-tests",
        ],
        "yes\n",
    );
    ok(&o);
    assert!(stderr(&o).contains("Apply these changes? [y/N]"));
    assert_eq!(revision(&c), 3);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_get_list_create_update_delete() {
    let c = Controller::start().await;
    apply_demo(&c);

    // get: the TOML table, text and JSON; kinds singular, plural, snake_case.
    let t = ok(&c.ctl(&["get", "resource", "web"]));
    assert!(t.starts_with("[[resource]]\n"), "{t}");
    assert!(t.contains("address = \"198.18.1.5\""), "{t}");
    let j = json(&c.ctl(&["get", "remote_networks", "corp", "--output", "json"]));
    assert_eq!(j["kind"], "remote_network");
    assert_eq!(j["name"], "corp");
    assert_eq!(j["revision"], 1);
    assert!(j["toml"].as_str().unwrap().contains("demo-connector"));
    let j = json(&c.ctl(&["get", "user", "alice@example.com", "-o", "json"]));
    assert_eq!(j["kind"], "user");
    let j = json(&c.ctl(&["get", "grants", "contractors-no-db", "-o", "json"]));
    assert!(j["toml"].as_str().unwrap().starts_with("[[deny]]"));
    let g = json(&c.ctl(&["list", "service-accounts", "-o", "json"]));
    assert!(names(&g).is_empty());
    let g = json(&c.ctl(&["list", "groups", "-o", "json"]));
    assert_eq!(names(&g), ["engineering", "contractors"]);

    // NOT_FOUND: exit 1, a clear message.
    let err = fails(&c.ctl(&["get", "resource", "nope"]), 1);
    assert!(
        err.contains("not found: no resource named `nope`")
            && err.contains("gatewayctl list resource"),
        "{err}"
    );
    let j = json(&c.ctl(&["get", "device", "nope", "--output", "json"]));
    assert_eq!(j["error"]["exit_code"], 1);
    assert!(j["error"]["message"].as_str().unwrap().contains("nope"));
    // Unknown kind: usage error naming the valid kinds.
    let err = fails(&c.ctl(&["get", "widget", "x"]), 2);
    assert!(
        err.contains("unknown kind `widget`") && err.contains("remote-network"),
        "{err}"
    );

    // delete: NOT_FOUND, refused without a terminal, plan, then applied.
    let err = fails(&c.ctl(&["delete", "resource", "nope", "--yes"]), 1);
    assert!(err.contains("no resource named `nope`"), "{err}");
    fails(&c.ctl(&["delete", "grant", "contractors-no-db"]), 2);
    let plan = ok(&c.ctl(&["delete", "grant", "contractors-no-db", "--dry-run"]));
    assert!(
        plan.contains("- removed") && plan.contains("contractors-no-db"),
        "{plan}"
    );
    assert!(plan.contains("plan: revision 1 -> 2"), "{plan}");
    assert_eq!(revision(&c), 1);
    let out = ok(&c.ctl(&["delete", "grant", "contractors-no-db", "--yes"]));
    assert!(out.contains("applied"), "{out}");
    assert_eq!(revision(&c), 2);
    let grants = json(&c.ctl(&["list", "grant", "-o", "json"]));
    assert_eq!(
        names(&grants),
        ["engineering-web", "engineering-dns", "contractors-wiki"]
    );
    // Deleting something others refer to: the controller's errors, nothing changed.
    let err = fails(&c.ctl(&["delete", "remote-network", "corp", "--yes"]), 1);
    assert!(err.contains("corp"), "{err}");
    assert_eq!(revision(&c), 2);

    // create: a grant from a file ([[deny]] header), then it exists.
    let f = c.file(
        "deny.toml",
        "[[deny]]\nname = \"contractors-no-db\"\nprincipals = [\"contractors\"]\nresources = [\"db\"]\n",
    );
    let j = json(&c.ctl(&["create", "grant", "--file", &f, "--yes", "-o", "json"]));
    assert_eq!(j["applied"], true);
    assert_eq!(j["plan"]["objects"][0]["change"], "added");
    assert_eq!(revision(&c), 3);
    let t = ok(&c.ctl(&["get", "grant", "contractors-no-db"]));
    assert!(t.starts_with("[[deny]]"), "{t}");
    let err = fails(&c.ctl(&["create", "grant", "--file", &f, "--yes"]), 1);
    assert!(err.contains("already exists"), "{err}");
    // An invalid object: the located message as is.
    let f = c.file(
        "res.toml",
        "name = \"api\"\nnetwork = \"nowhere\"\naddress = \"198.18.1.7\"\n",
    );
    let err = fails(&c.ctl(&["create", "resource", "--file", &f, "--yes"]), 1);
    assert!(
        err.contains("resource:api") && err.contains("nowhere"),
        "{err}"
    );
    assert!(err.contains("the change is invalid"), "{err}");
    assert_eq!(revision(&c), 3);

    // update: the plan shows a changed object; --dry-run changes nothing.
    let f = c.file(
        "web.toml",
        "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\", \"8443\"]\nicmp = true\n",
    );
    let plan = ok(&c.ctl(&["update", "resource", "web", "--file", &f, "--dry-run"]));
    assert!(plan.contains("~ changed") && plan.contains("web"), "{plan}");
    assert_eq!(revision(&c), 3);
    ok(&c.ctl(&["update", "resource", "web", "--file", &f, "--yes"]));
    assert!(ok(&c.ctl(&["get", "resource", "web"])).contains("8443"));
    assert_eq!(revision(&c), 4);
    let err = fails(
        &c.ctl(&["update", "resource", "nope", "--file", &f, "--yes"]),
        1,
    );
    assert!(err.contains("no resource named `nope`"), "{err}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_deciding_grant() {
    let c = Controller::start().await;
    apply_demo(&c);
    let at = "2026-01-01T00:00:00Z";

    let out = ok(&c.ctl(&["explain", "--from", "bob-laptop", "--to", "db", "--at", at]));
    assert!(out.contains("verdict:  deny"), "{out}");
    assert!(
        out.contains("decided by: rule 4 (deny 'contractors-no-db' -> 'db')"),
        "{out}"
    );
    assert!(
        out.contains(" * rule   4 deny  `contractors-no-db` -> `db`: matched"),
        "{out}"
    );
    // The same report as the offline command on the same policy.
    for (from, to) in [
        ("bob-laptop", "db"),
        ("alice-laptop", "web"),
        ("alice-laptop", "198.18.1.5:22/tcp"),
        ("198.19.3.99", "198.18.1.5:443/tcp"),
    ] {
        let remote = ok(&c.ctl(&["explain", "--from", from, "--to", to, "--at", at]));
        let offline = ok(&run(&[
            "policy",
            "explain",
            &demo_path(),
            "--from",
            from,
            "--to",
            to,
            "--at",
            at,
        ]));
        assert_eq!(remote, offline, "{from} -> {to}");
        let rj = json(&c.ctl(&[
            "explain", "--from", from, "--to", to, "--at", at, "--output", "json",
        ]));
        let oj = json(&run(&[
            "policy",
            "explain",
            &demo_path(),
            "--from",
            from,
            "--to",
            to,
            "--at",
            at,
            "--output",
            "json",
        ]));
        assert_eq!(rj, oj, "{from} -> {to}");
    }
    let j = json(&c.ctl(&[
        "explain",
        "--from",
        "alice-laptop",
        "--to",
        "web",
        "--output",
        "json",
    ]));
    assert_eq!(j["verdict"], "allow");
    assert_eq!(j["rule"]["grant"], "engineering-web");
    // The device's overlay address: its identity on the wire.
    assert_eq!(j["packet"]["src"], "100.64.0.10");

    // Bad arguments: usage errors naming the problem.
    let err = fails(&c.ctl(&["explain", "--from", "nobody", "--to", "web"]), 2);
    assert!(err.contains("nobody"), "{err}");
    let err = fails(
        &c.ctl(&[
            "explain",
            "--from",
            "alice-laptop",
            "--to",
            "web",
            "--at",
            "tomorrow",
        ]),
        2,
    );
    assert!(err.contains("RFC 3339"), "{err}");
    c.stop().await;
}

fn event(
    ts: &str,
    ev: &str,
    verdict: &str,
    user: &str,
    device: &str,
    resource: &str,
) -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: ts.into(),
        event: ev.into(),
        verdict: verdict.into(),
        reason: if verdict == "allow" {
            "granted".into()
        } else {
            "denied_by_rule".into()
        },
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
        // As an agent names them: the grant that decided, or the default deny.
        rule: Some(
            match (verdict, resource) {
                ("allow", "web") => "engineering-web",
                ("deny", "db") => "contractors-no-db",
                _ => "default-deny",
            }
            .into(),
        ),
        rule_id: 1,
        host: "connector:demo-connector".into(),
        ..Default::default()
    }
}

async fn report(c: &Controller, auth: &v1::AgentAuth, events: Vec<v1::ConnectionEvent>) {
    let n = events.len() as u64;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.agent()
            .await
            .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
                auth: Some(auth.clone()),
                events,
            }])),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(r.accepted, n);
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a line from `events --follow` in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_agents_events_and_follow() {
    let c = Controller::start().await;
    apply_demo(&c);

    // enroll-token: the token once on stdout; JSON; bad hosts.
    let tok = ok(&c.ctl(&["enroll-token", "--host", "connector:demo-connector"]));
    assert!(
        tok.trim().starts_with("zt-enroll-") && tok.lines().count() == 1,
        "{tok}"
    );
    let j = json(&c.ctl(&[
        "enroll-token",
        "--host",
        "connector:demo-connector",
        "--ttl",
        "30m",
        "-o",
        "json",
    ]));
    assert_eq!(j["host"], "connector:demo-connector");
    let ttl_ms = j["expires_unix_ms"].as_i64().unwrap() - controller::now_ms();
    assert!((1_700_000..=1_800_000).contains(&ttl_ms), "{ttl_ms}");
    let err = fails(&c.ctl(&["enroll-token", "--host", "laptop"]), 2);
    assert!(err.contains("connector:NAME"), "{err}");
    let err = fails(
        &c.ctl(&["enroll-token", "--host", "device:x", "--ttl", "soon"]),
        2,
    );
    assert!(err.contains("invalid duration"), "{err}");
    let o = c.ctl(&["enroll-token", "--host", "connector:elsewhere"]);
    ok(&o);
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));

    // agents: none yet, then the enrolled one.
    assert!(ok(&c.ctl(&["agents"])).contains("no agents enrolled"));
    let enrolled = c
        .agent()
        .await
        .enroll(v1::EnrollRequest {
            token: j["token"].as_str().unwrap().into(),
            hostname: "conn-host-1".into(),
            public_key: "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=".into(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    let auth = v1::AgentAuth {
        agent_id: enrolled.agent_id.clone(),
        credential: enrolled.credential,
    };
    let a = json(&c.ctl(&["agents", "--output", "json"]));
    let agents = a["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["agent_id"], enrolled.agent_id.as_str());
    assert_eq!(agents[0]["host"], "connector:demo-connector");
    assert_eq!(agents[0]["connected"], false);
    assert_eq!(agents[0]["current_generation"], 1);
    // Not acknowledged yet: no time.
    assert_eq!(agents[0]["acked_unix_ms"], 0);
    assert!(agents[0]["acked"].is_null());
    assert_eq!(
        agents[0]["public_key"],
        "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY="
    );
    let t = ok(&c.ctl(&["agents"]));
    assert!(t.contains("conn-host-1") && t.contains("AGENT"), "{t}");
    assert!(
        t.contains("PUBLIC KEY") && t.contains("ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY="),
        "{t}"
    );

    // events: reported through the Agent API, then queried with filters.
    assert!(ok(&c.ctl(&["events"])).contains("no matching events"));
    report(
        &c,
        &auth,
        vec![
            event(
                "2026-01-01T10:00:00.000Z",
                "flow_start",
                "allow",
                "alice@example.com",
                "alice-laptop",
                "web",
            ),
            event(
                "2026-01-01T10:00:01.500Z",
                "flow_end",
                "allow",
                "alice@example.com",
                "alice-laptop",
                "web",
            ),
            event(
                "2026-01-01T10:05:00Z",
                "deny",
                "deny",
                "bob@example.com",
                "bob-laptop",
                "db",
            ),
            event(
                "2026-01-01T11:00:00.250Z",
                "deny",
                "deny",
                "bob@example.com",
                "bob-laptop",
                "web",
            ),
        ],
    )
    .await;
    let t = ok(&c.ctl(&["events"]));
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 5, "{t}");
    for h in [
        "TIME",
        "EVENT",
        "VERDICT",
        "USER",
        "DEVICE",
        "SRC",
        "RESOURCE",
        "DST",
        "RULE",
        "CONNECTOR",
    ] {
        assert!(lines[0].contains(h), "{h}: {}", lines[0]);
    }
    assert!(
        lines[1].starts_with("2026-01-01T10:00:00.000Z  flow_start"),
        "{t}"
    );
    assert!(
        lines[1].contains("198.18.1.5:443/tcp") && lines[1].contains("demo-connector"),
        "{t}"
    );
    let q = |args: &[&str]| {
        let mut all = vec!["events", "--output", "json"];
        all.extend_from_slice(args);
        let j = json(&c.ctl(&all));
        j["events"].as_array().unwrap().clone()
    };
    assert_eq!(q(&[]).len(), 4);
    let bob = q(&["--user", "bob@example.com"]);
    assert_eq!(bob.len(), 2);
    assert!(bob.iter().all(|e| e["user"] == "bob@example.com"));
    assert_eq!(q(&["--verdict", "deny", "--resource", "db"]).len(), 1);
    assert_eq!(
        q(&["--device", "alice-laptop", "--event", "flow_end"]).len(),
        1
    );
    let since = q(&["--since", "2026-01-01T10:05:00Z"]);
    assert_eq!(since.len(), 2);
    assert_eq!(since[0]["time"], "2026-01-01T10:05:00.000Z");
    assert_eq!(q(&["--until", "2026-01-01T10:00:01.500Z"]).len(), 1);
    assert_eq!(q(&["--limit", "3"]).len(), 3);
    assert_eq!(q(&["--host", "connector:demo-connector"]).len(), 4);
    let first = &q(&[])[0];
    assert_eq!(first["dst_port"], 443);
    assert_eq!(first["agent_id"], enrolled.agent_id.as_str());
    let err = fails(&c.ctl(&["events", "--verdict", "maybe"]), 2);
    assert!(err.contains("allow, deny, audit"), "{err}");
    let err = fails(&c.ctl(&["events", "--since", "last tuesday"]), 2);
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");

    // --follow: the stored deny events, then new ones as they arrive, until Ctrl-C.
    let mut cmd = bin();
    cmd.args([
        "--controller",
        &c.url(),
        "--api-key",
        &c.key,
        "events",
        "--follow",
        "--verdict",
        "deny",
        "--output",
        "json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let err = drain(child.stderr.take().unwrap());
    let rx = lines_of(&mut child);
    let l1: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    let l2: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    assert_eq!(
        (l1["resource"].as_str(), l2["resource"].as_str()),
        (Some("db"), Some("web"))
    );
    report(
        &c,
        &auth,
        vec![
            event(
                "2026-01-02T09:00:00Z",
                "flow_start",
                "allow",
                "alice@example.com",
                "alice-laptop",
                "web",
            ),
            event(
                "2026-01-02T09:00:01Z",
                "deny",
                "deny",
                "bob@example.com",
                "bob-laptop",
                "dns",
            ),
        ],
    )
    .await;
    let l3: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    assert_eq!(l3["resource"], "dns");
    assert_eq!(l3["verdict"], "deny");
    assert_eq!(l3["time"], "2026-01-02T09:00:01.000Z");
    // Ctrl-C ends it with success.
    // SAFETY: signalling the child this test started, by its pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = wait_bounded(&mut child);
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("Ctrl-C"), "{err}");
    assert!(rx.try_recv().is_err(), "the allow event is filtered out");

    // Text follow: header then rows.
    let mut cmd = bin();
    cmd.args([
        "--controller",
        &c.url(),
        "--api-key",
        &c.key,
        "events",
        "-f",
        "--resource",
        "dns",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let rx = lines_of(&mut child);
    assert!(next_line(&rx).starts_with("TIME"));
    assert!(next_line(&rx).contains("dns"));
    // SAFETY: as above.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    assert_eq!(wait_bounded(&mut child).code(), Some(0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_the_changes() {
    let c = Controller::start().await;
    // The trail starts with the minting of the test's own admin key.
    let first = ok(&c.ctl(&["audit"]));
    assert_eq!(first.lines().count(), 2, "{first}");
    assert!(first.contains("create_api_key"), "{first}");
    apply_demo(&c);
    // It breaks one of the demo's tests: made anyway (audited as delete_object_skip_tests).
    ok(&c.ctl(&[
        "delete",
        "grant",
        "engineering-dns",
        "--yes",
        "--skip-tests",
    ]));
    ok(&c.ctl(&["enroll-token", "--host", "device:alice-laptop"]));

    let t = ok(&c.ctl(&["audit"]));
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("ACTOR") && lines[0].contains("TARGET"),
        "{t}"
    );
    assert!(
        lines[2].contains("key:gatewayctl-tests")
            && lines[2].contains("apply_policy")
            && lines[2].contains("policy"),
        "{t}"
    );
    assert!(
        t.contains("delete_object") && t.contains("grant:engineering-dns"),
        "{t}"
    );
    assert!(
        t.contains("create_enrollment_token") && t.contains("device:alice-laptop"),
        "{t}"
    );

    // The hash chain verifies.
    let v = ok(&c.ctl(&["audit", "verify"]));
    assert!(v.contains("audit trail intact: 4 records"), "{v}");
    let vj = json(&c.ctl(&["audit", "verify", "--output", "json"]));
    assert_eq!(vj["ok"], true);
    assert_eq!(vj["records"], 4);

    let j = json(&c.ctl(&["audit", "--output", "json"]));
    let recs = j["records"].as_array().unwrap();
    let apply = &recs[1];
    assert_eq!(apply["action"], "apply_policy");
    assert_eq!(apply["actor"], "key:gatewayctl-tests");
    assert_eq!(apply["target"], "policy");
    assert_eq!(apply["before"], "");
    assert!(
        apply["after"]
            .as_str()
            .unwrap()
            .contains("[[remote_network]]")
    );
    assert_eq!(apply["revision"], 1);
    let del = recs
        .iter()
        .find(|r| r["action"] == "delete_object_skip_tests")
        .unwrap();
    assert!(del["before"].as_str().unwrap().contains("engineering-dns"));
    assert_eq!(del["after"], "");
    assert!(apply["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        json(&c.ctl(&["audit", "--limit", "1", "-o", "json"]))["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let future = json(&c.ctl(&["audit", "--since", "2999-01-01T00:00:00Z", "-o", "json"]));
    assert!(future["records"].as_array().unwrap().is_empty());
    c.stop().await;
}

#[test]
fn unreachable_controller_is_a_clear_usage_error() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["list"],
        vec!["get", "resource", "web"],
        vec!["apply", "/dev/null", "--dry-run"],
        vec!["events"],
        vec!["audit"],
        vec!["agents"],
        vec!["explain", "--from", "a", "--to", "b"],
        vec!["enroll-token", "--host", "device:x"],
    ] {
        let mut all = vec!["--controller", url.as_str()];
        all.extend(args.iter());
        let o = run(&all);
        let err = fails(&o, 2);
        assert!(
            err.contains(&format!("cannot reach the controller at {url}")),
            "{args:?}: {err}"
        );
    }
    let mut all = vec!["--controller", url.as_str(), "list", "--output", "json"];
    let o = run(&all);
    assert_eq!(code(&o), 2);
    let j = json(&o);
    assert_eq!(j["error"]["exit_code"], 2);
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );
    // The default comes from GATEWAYCTL_CONTROLLER.
    let mut cmd = bin();
    cmd.env("GATEWAYCTL_CONTROLLER", &url).args(["agents"]);
    let err = fails(&run_cmd(cmd), 2);
    assert!(
        err.contains(&format!("cannot reach the controller at {url}")),
        "{err}"
    );
    // A bare host:port means TLS (never plaintext): it needs the CA.
    let mut cmd = bin();
    cmd.env("GATEWAYCTL_CONTROLLER", format!("127.0.0.1:{port}"))
        .args(["agents"]);
    let err = fails(&run_cmd(cmd), 2);
    assert!(err.contains("https://") && err.contains("no --ca"), "{err}");
    // TLS and malformed URLs: say what is valid.
    all = vec!["--controller", "https://127.0.0.1:1", "list"];
    let err = fails(&run(&all), 2);
    assert!(err.contains("no --ca"), "{err}");
    let err = fails(&run(&["--controller", "ftp://127.0.0.1:1", "list"]), 2);
    assert!(err.contains("http://HOST:PORT"), "{err}");
}

/// API keys through the CLI: a key's role decides what it may do; a revoked key is
/// refused; whoami names the credential; an enrolled agent can be revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_revocation_and_whoami() {
    let c = Controller::start().await;
    let who = ok(&c.ctl(&["whoami"]));
    assert!(who.contains("key:gatewayctl-tests (admin)"), "{who}");

    let auditor = ok(&c.ctl(&[
        "keys", "create", "ci-audit", "--role", "auditor", "--ttl", "1d",
    ]));
    let auditor = auditor.trim().to_string();
    assert!(auditor.starts_with("zt-key-"), "{auditor}");
    let as_auditor = |args: &[&str]| {
        let mut all = vec!["--controller", &c.url(), "--api-key", auditor.as_str()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        all.extend(args.iter().map(|s| s.to_string()));
        run(&all)
    };
    // Auditors read, including the audit trail, and change nothing.
    ok(&as_auditor(&["list"]));
    ok(&as_auditor(&["audit", "verify"]));
    let demo = demo_path();
    let err = fails(&as_auditor(&["apply", "--yes", demo.as_str()]), 1);
    assert!(err.contains("not allowed"), "{err}");
    assert_eq!(revision(&c), 0, "the refused apply changed nothing");

    let keys = json(&c.ctl(&["keys", "list", "--output", "json"]));
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ci-audit") && names.contains(&"gatewayctl-tests"),
        "{names:?}"
    );

    ok(&c.ctl(&["keys", "revoke", "ci-audit"]));
    let err = fails(&as_auditor(&["list"]), 1);
    assert!(err.contains("did not accept our credentials"), "{err}");
    // A wrong key is refused the same way.
    let err = fails(
        &run(&["--controller", &c.url(), "--api-key", "zt-key-0000", "list"]),
        1,
    );
    assert!(err.contains("did not accept our credentials"), "{err}");

    // Agents: revoked by id.
    apply_demo(&c);
    let tok = ok(&c.ctl(&["enroll-token", "--host", "connector:demo-connector"]));
    let enrolled = c
        .agent()
        .await
        .enroll(v1::EnrollRequest {
            token: tok.trim().into(),
            hostname: "h".into(),
            public_key: "Z2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2c=".into(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    ok(&c.ctl(&["revoke-agent", &enrolled.agent_id]));
    let refused = c
        .agent()
        .await
        .ack(v1::AckRequest {
            auth: Some(v1::AgentAuth {
                agent_id: enrolled.agent_id.clone(),
                credential: enrolled.credential,
            }),
            generation: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let audit = ok(&c.ctl(&["audit"]));
    assert!(audit.contains("revoke"), "{audit}");
    c.stop().await;
}

/// Plaintext only to loopback; --ca only with https://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_to_loopback_and_ca_only_with_https() {
    let c = Controller::start().await;
    // 198.18.0.1 answers nothing: refused before any connection attempt (exit 2 at
    // once, not after a connect timeout).
    let start = std::time::Instant::now();
    let err = fails(
        &run(&[
            "--controller",
            "http://198.18.0.1:50051",
            "--api-key",
            &c.key,
            "agents",
        ]),
        2,
    );
    assert!(err.contains("loopback only"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // A CA with a plaintext URL is a mistake, not something to ignore.
    let ca = c.file("ca.pem", "not used");
    let mut args = vec!["--ca", ca.as_str()];
    let url = c.url();
    args.extend(["--controller", &url, "--api-key", &c.key, "whoami"]);
    let err = fails(&run(&args), 2);
    assert!(err.contains("--ca") && err.contains("https://"), "{err}");
    // The twin: plaintext to the controller on loopback, without --ca, works.
    let who = ok(&c.ctl(&["whoami"]));
    assert!(who.contains("key:gatewayctl-tests"), "{who}");
    c.stop().await;
}

/// `audit verify --expect-head`: a head kept from earlier must still be in the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_an_anchored_head() {
    let c = Controller::start().await;
    apply_demo(&c);
    let head = json(&c.ctl(&["audit", "verify", "-o", "json"]))["head_hash"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&c.ctl(&["enroll-token", "--host", "device:alice-laptop"]));
    // Still in the chain, two records later.
    let v = ok(&c.ctl(&["audit", "verify", "--expect-head", &head]));
    assert!(v.contains("the anchored head is record 2"), "{v}");
    // A head that is not in the chain (rewritten or cut since): exit 1.
    let other = "ab".repeat(32);
    let o = c.ctl(&["audit", "verify", "--expect-head", &other]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("not in the trail"), "{}", stdout(&o));
    // Only with `verify`.
    fails(&c.ctl(&["audit", "--expect-head", &head]), 2);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_list_show_and_diff() {
    let c = Controller::start().await;
    let none = ok(&c.ctl(&["revisions", "list"]));
    assert!(none.contains("no revisions kept"), "{none}");
    // Nothing to show before the first change: a clear NOT_FOUND, exit 1 like other
    // refused requests; `diff` exits 2 on errors (1 means differences).
    let e = fails(&c.ctl(&["revisions", "show", "1"]), 1);
    assert!(e.contains("no revision 1"), "{e}");
    fails(&c.ctl(&["revisions", "diff", "1", "2"]), 2);

    apply_demo(&c);
    let first = ok(&c.ctl(&["export"]));
    ok(&c.ctl(&[
        "delete",
        "grant",
        "engineering-dns",
        "--yes",
        "--skip-tests",
    ]));
    assert_eq!(revision(&c), 2);

    let list = json(&c.ctl(&["revisions", "list", "--output", "json"]));
    assert_eq!(list["current"], 2);
    let revs = list["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0]["revision"], 2);
    assert_eq!(revs[0]["action"], "delete_object_skip_tests");
    assert_eq!(revs[0]["actor"], "key:gatewayctl-tests");
    assert_eq!(revs[1]["action"], "apply_policy");
    let table = ok(&c.ctl(&["revisions", "list"]));
    assert!(table.contains("2 (current)"), "{table}");

    // `show` prints what `export` printed then (export adds its two-line header).
    let shown = ok(&c.ctl(&["revisions", "show", "1"]));
    assert!(
        first.ends_with(&shown),
        "show 1:\n{shown}\nexport then:\n{first}"
    );
    assert!(shown.contains("engineering-dns"));

    // The diff names the removed grant's lines and nothing else; exit 1 = differences.
    let o = c.ctl(&["revisions", "diff", "1", "2"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let d = stdout(&o);
    assert!(d.starts_with("--- revision 1\n+++ revision 2\n"), "{d}");
    let removed: Vec<&str> = d
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    assert!(removed.iter().any(|l| l.contains("engineering-dns")), "{d}");
    assert!(
        !d.lines()
            .any(|l| l.starts_with('+') && !l.starts_with("+++")),
        "{d}"
    );
    // TO defaults to the current revision; the same revision twice is no difference.
    assert_eq!(stdout(&c.ctl(&["revisions", "diff", "1"])), d);
    assert_eq!(ok(&c.ctl(&["revisions", "diff", "2", "2"])), "");
    let e = fails(&c.ctl(&["revisions", "diff", "1", "9"]), 2);
    assert!(e.contains("no revision 9"), "{e}");
    let e = fails(&c.ctl(&["revisions", "show", "0"]), 2);
    assert!(e.contains("revisions start at 1"), "{e}");
}
