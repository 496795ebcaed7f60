//! Plans, diffs, structured objects, export and object-level errors: the real
//! `gatewayctl` binary against a controller started in-process on 127.0.0.1 (ephemeral
//! port, temporary SQLite database).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

const DEMO: &str = include_str!("../../examples/demo.toml");

struct Controller {
    addr: std::net::SocketAddr,
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
        let key = state.bootstrap_admin_key("plans-tests").unwrap();
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

    /// Runs `gatewayctl --controller URL --api-key KEY ARGS...` (stdin closed).
    fn ctl(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
        c.env_remove("GATEWAYCTL_CONTROLLER")
            .args(["--controller", &format!("http://{}", self.addr)])
            .args(["--api-key", &self.key])
            .args(args)
            .stdin(Stdio::null());
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A file in the test's temporary directory.
    fn file(&self, name: &str, text: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the controller; its database stays (in the returned folder).
    async fn stop(mut self) -> tempfile::TempDir {
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
        let Controller { dir, .. } = self;
        dir
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn exits(o: &Output, want: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(want),
        "expected exit {want}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

#[track_caller]
fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

fn revision(c: &Controller) -> u64 {
    json(&c.ctl(&["list", "-o", "json"]))["revision"]
        .as_u64()
        .unwrap()
}

fn apply_demo(c: &Controller) {
    let f = c.file("demo.toml", DEMO);
    exits(&c.ctl(&["apply", &f, "--yes"]), 0);
}

/// The demo with a port added to `web`, a user added to `engineering` and the
/// connector's endpoint changed.
fn edited_demo() -> String {
    let s = DEMO
        .replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]")
        .replace(
            "members = [\"alice@example.com\"]",
            "members = [\"alice@example.com\", \"carol@example.com\"]",
        )
        .replace(
            "endpoint = \"198.19.1.1:51820\"",
            "endpoint = \"198.19.1.1:51821\"",
        )
        .replace(
            "[[user]]\nemail = \"bob@example.com\"\n",
            "[[user]]\nemail = \"bob@example.com\"\n\n[[user]]\nemail = \"carol@example.com\"\n",
        );
    assert_ne!(s, DEMO);
    s
}

fn object<'a>(plan: &'a Value, kind: &str, name: &str) -> &'a Value {
    plan["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {plan}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_show_changed_fields_and_diff_exits_by_outcome() {
    let c = Controller::start().await;
    apply_demo(&c);
    let edited = c.file("edited.toml", &edited_demo());

    // Text: one line per changed field; list elements as added/removed.
    let plan = exits(&c.ctl(&["diff", &edited]), 1);
    for want in [
        "plan: revision 1 -> 2",
        "objects: 1 added, 3 changed, 0 removed",
        "changed fields:",
        "~ resource web: tcp + \"8443\"",
        "~ group engineering: members + \"carol@example.com\"",
        "~ connector demo-connector: endpoint \"198.19.1.1:51820\" -> \"198.19.1.1:51821\"",
    ] {
        assert!(plan.contains(want), "`{want}` missing from:\n{plan}");
    }
    // Unchanged objects and added ones have no field lines.
    assert!(!plan.contains("~ resource db"), "{plan}");
    assert!(!plan.contains("~ user"), "{plan}");
    // diff applies nothing.
    assert_eq!(revision(&c), 1);

    // JSON: "fields" beside the existing keys, values as JSON.
    let j = json(&c.ctl(&["diff", &edited, "-o", "json"]));
    assert_eq!(j["changes"], true);
    let web = object(&j["plan"], "resource", "web");
    assert_eq!(web["change"], "changed");
    assert!(web["before"].as_str().unwrap().contains("\"443\""));
    assert!(web["after"].as_str().unwrap().contains("8443"));
    assert_eq!(
        web["fields"],
        json!([{"field": "tcp", "before": null, "after": "8443", "element": true}])
    );
    let conn = object(&j["plan"], "connector", "demo-connector");
    assert_eq!(
        conn["fields"],
        json!([{"field": "endpoint", "before": "198.19.1.1:51820",
                "after": "198.19.1.1:51821", "element": false}])
    );
    let carol = object(&j["plan"], "user", "carol@example.com");
    assert_eq!(carol["change"], "added");
    assert_eq!(carol["fields"], json!([]));

    // A scalar becoming a list, and a field removed: before/after as they are.
    let f = c.file(
        "web.toml",
        "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\"]\n",
    );
    let out = exits(
        // Dropping `icmp` breaks "alice pings the web front end": shown, not refused.
        &c.ctl(&[
            "update",
            "resource",
            "web",
            "-f",
            &f,
            "--dry-run",
            "--skip-tests",
        ]),
        0,
    );
    assert!(
        out.contains("~ resource web: icmp true -> (unset)"),
        "{out}"
    );

    // The live file: no changes, exit 0.
    let same = c.file("same.toml", DEMO);
    let out = exits(&c.ctl(&["diff", &same]), 0);
    assert!(out.contains("no changes"), "{out}");
    let j: Value = serde_json::from_str(&exits(&c.ctl(&["diff", &same, "-o", "json"]), 0)).unwrap();
    assert_eq!(j["changes"], false);

    // Errors exit 2: an invalid policy (located in the file), an unreadable file.
    let bad = c.file(
        "bad.toml",
        &DEMO.replace("resources = [\"wiki\"]", "resources = [\"wikki\"]"),
    );
    let o = c.ctl(&["diff", &bad]);
    exits(&o, 2);
    assert!(
        stderr(&o).contains("bad.toml:") && stderr(&o).contains("unknown resource `wikki`"),
        "{}",
        stderr(&o)
    );
    let o = c.ctl(&["diff", &bad, "-o", "json"]);
    exits(&o, 2);
    assert_eq!(json(&o)["error"]["exit_code"], 2);
    exits(&c.ctl(&["diff", "/nonexistent/policy.toml"]), 2);
    assert_eq!(revision(&c), 1);

    // Applying the edited file reports the same fields.
    let j = json(&c.ctl(&["apply", &edited, "--yes", "-o", "json"]));
    assert_eq!(j["applied"], true);
    assert_eq!(
        object(&j["plan"], "resource", "web")["fields"][0]["after"],
        "8443"
    );
    exits(&c.ctl(&["diff", &edited]), 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_return_structured_objects() {
    let c = Controller::start().await;
    apply_demo(&c);

    let j = json(&c.ctl(&["get", "resource", "web", "-o", "json"]));
    assert_eq!(j["section"], "resource");
    assert_eq!(
        j["fields"],
        json!({"name": "web", "network": "corp", "address": "198.18.1.5",
               "tcp": ["443"], "icmp": true})
    );
    assert_eq!(j["revision"], 1);
    // The documented TOML stays.
    assert!(j["toml"].as_str().unwrap().starts_with("[[resource]]"));
    let j = json(&c.ctl(&["get", "grant", "contractors-no-db", "-o", "json"]));
    assert_eq!(j["section"], "deny");
    assert_eq!(j["fields"]["principals"], json!(["contractors"]));
    let j = json(&c.ctl(&["get", "grant", "contractors-wiki", "-o", "json"]));
    assert_eq!(j["section"], "allow");

    let j = json(&c.ctl(&["list", "device", "-o", "json"]));
    let devices = j["objects"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for d in devices {
        assert_eq!(d["fields"]["name"], d["name"], "{d}");
        assert!(d["fields"]["addresses"].is_array(), "{d}");
        assert!(d["toml"].is_string(), "{d}");
    }
    assert_eq!(
        devices[0]["fields"]["addresses"],
        json!(["100.64.0.10", "2001:db8:ff::10"])
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trips_through_apply() {
    let c = Controller::start().await;
    // An empty controller exports a file that applies as no change.
    let out = exits(&c.ctl(&["export"]), 0);
    assert!(out.contains("revision 0"), "{out}");
    let f = c.file("empty.toml", &out);
    exits(&c.ctl(&["diff", &f]), 0);

    apply_demo(&c);
    // Object edits after the apply are in the export too.
    let carol = c.file("carol.toml", "email = \"carol@example.com\"\n");
    exits(&c.ctl(&["create", "user", "-f", &carol, "--yes"]), 0);
    let web = c.file(
        "web.toml",
        "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\", \"8443\"]\nicmp = true\n",
    );
    exits(
        &c.ctl(&["update", "resource", "web", "-f", &web, "--yes"]),
        0,
    );
    assert_eq!(revision(&c), 3);

    let text = exits(&c.ctl(&["export"]), 0);
    assert!(
        text.starts_with("# The policy of the controller at revision 3"),
        "{text}"
    );
    assert!(
        text.contains("carol@example.com") && text.contains("8443"),
        "{text}"
    );
    // The applied file's comments: its header, the comments above objects (also above
    // the edited `web`, whose table is regenerated), and the untouched tables as written.
    for kept in [
        "# The policy of `cargo xtask demo`",
        "# ---------------------------------------------------------------- resources\n\
         [[resource]]\naddress = \"198.18.1.5\"\nicmp = true\nname = \"web\"",
        "# Deny wins over any allow, present or future.\n[[deny]]\nname = \"contractors-no-db\"",
        "[[resource]]\nname = \"db\"\nnetwork = \"corp\"",
    ] {
        assert!(text.contains(kept), "`{kept}` missing from:\n{text}");
    }
    // -o FILE writes the same text.
    let path = c.path("exported.toml");
    let p = path.display().to_string();
    assert_eq!(exits(&c.ctl(&["export", "-o", &p]), 0), "");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // `policy check` accepts it offline, and applying it back plans nothing.
    exits(
        &Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .args(["policy", "check", &p])
            .output()
            .unwrap(),
        0,
    );
    exits(&c.ctl(&["diff", &p]), 0);
    let out = exits(&c.ctl(&["apply", &p, "--yes"]), 0);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(revision(&c), 3);
    // Control: the exported file edited is a change.
    let edited = c.file("edited.toml", &text.replace("8443", "9443"));
    let plan = exits(&c.ctl(&["diff", &edited]), 1);
    assert!(plan.contains("~ resource web: tcp - \"8443\""), "{plan}");

    // An unwritable destination: exit 2, and nothing left behind.
    let o = c.ctl(&["export", "-o", "/nonexistent-dir/policy.toml"]);
    exits(&o, 2);
    assert!(stderr(&o).contains("cannot write"), "{}", stderr(&o));
    let leftovers: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(Path::new(&p).exists());

    // The comments are stored: a restarted controller hands out the same text.
    let dir = c.stop().await;
    let state = controller::State::open(dir.path().join("controller.db"), 30).unwrap();
    let (again, rev) = state.policy();
    assert_eq!(rev, 3);
    assert!(text.ends_with(&again), "{again}");
    assert!(again.contains("# Deny wins over any allow"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_errors_name_objects_and_users() {
    let c = Controller::start().await;
    apply_demo(&c);

    // Deleting a resource grants and tests use: who uses it, located in objects.
    let o = c.ctl(&["delete", "resource", "web", "--yes"]);
    exits(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(
            "resource web is used by grant engineering-web (and 2 more): change or delete \
             those first"
        ),
        "{err}"
    );
    assert!(
        err.contains("grant:engineering-web:") && err.contains("unknown resource `web`"),
        "{err}"
    );
    assert!(!err.contains("policy.toml"), "{err}");
    // JSON: the same, as diagnostics.
    let o = c.ctl(&["delete", "resource", "web", "--yes", "-o", "json"]);
    exits(&o, 1);
    let j = json(&o);
    assert!(
        j["error"]["diagnostics"][0]
            .as_str()
            .unwrap()
            .starts_with("resource web is used by grant engineering-web"),
        "{j}"
    );
    // A user a device and a group use.
    let err = stderr(&c.ctl(&["delete", "user", "bob@example.com", "--yes"]));
    assert!(
        err.contains("user bob@example.com is used by device bob-laptop (and 1 more)"),
        "{err}"
    );
    assert_eq!(revision(&c), 1);

    // Control: what nobody uses is deleted.
    let spare = c.file(
        "spare.toml",
        "name = \"spare\"\nnetwork = \"corp\"\naddress = \"198.18.1.99\"\ntcp = [\"22\"]\n",
    );
    exits(&c.ctl(&["create", "resource", "-f", &spare, "--yes"]), 0);
    exits(&c.ctl(&["delete", "resource", "spare", "--yes"]), 0);
    assert_eq!(revision(&c), 3);

    // An update breaking other objects: their errors are located in them too.
    let corp = c.file(
        "corp.toml",
        "name = \"corp\"\ncidrs = [\"198.18.0.0/16\", \"2001:db8:1::/48\"]\nconnectors = []\n",
    );
    let o = c.ctl(&["update", "remote-network", "corp", "-f", &corp, "--yes"]);
    exits(&o, 1);
    assert!(!stderr(&o).contains("policy.toml"), "{}", stderr(&o));
    assert_eq!(revision(&c), 3);
    c.stop().await;
}

/// An object-level change may not break a `[[test]]` block that passes today: refused
/// (exit 1, the test named, nothing changed) unless `--skip-tests`, which makes it, lists
/// the test in the plan's warnings and records `delete_object_skip_tests`. A change that
/// breaks no test goes through without the flag (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_changes_that_break_tests_are_refused_unless_skipped() {
    let c = Controller::start().await;
    apply_demo(&c);
    let before = revision(&c);
    // engineering-dns is what "alice resolves names" relies on.
    let o = c.ctl(&["delete", "grant", "engineering-dns", "--yes"]);
    exits(&o, 1);
    let e = stderr(&o);
    assert!(
        e.contains("test `alice resolves names` fails") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(revision(&c), before, "nothing applied");
    exits(&c.ctl(&["get", "grant", "engineering-dns"]), 0);
    // With --skip-tests: made, the broken test in the warnings, audited as such.
    let o = c.ctl(&[
        "delete",
        "grant",
        "engineering-dns",
        "--yes",
        "--skip-tests",
        "-o",
        "json",
    ]);
    exits(&o, 0);
    let v = json(&o);
    assert_eq!(v["applied"], true, "{v}");
    let warnings = v["plan"]["warnings"].to_string();
    assert!(warnings.contains("alice resolves names"), "{v}");
    assert_eq!(revision(&c), before + 1);
    let audit = json(&c.ctl(&["audit", "-o", "json"]));
    let last = audit["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "delete_object_skip_tests", "{last}");
    // The control: a change that breaks no test needs no flag (another port on web).
    let f = c.file(
        "web-8443.toml",
        "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\", \"8443\"]\nicmp = true\n",
    );
    exits(&c.ctl(&["update", "resource", "web", "-f", &f, "--yes"]), 0);
    assert_eq!(revision(&c), before + 2);
    c.stop().await;
}
