//! Contexts (the configuration file), admin users and sessions from the CLI, against
//! real controllers started in-process on 127.0.0.1; the real `gatewayctl` binary runs
//! with `--config` (or `GATEWAYCTL_CONFIG`) pointing into a temporary folder.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

struct Controller {
    addr: std::net::SocketAddr,
    key: String,
    state: Arc<controller::State>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start(key_name: &str) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Arc::new(controller::State::open(dir.path().join("controller.db"), 30).unwrap());
        let key = state.bootstrap_admin_key(key_name).unwrap();
        let (tx, rx) = oneshot::channel();
        let (addr, _task) =
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
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.state.close_watchers();
    }
}

/// `gatewayctl --config FILE ARGS...` with a clean environment, `stdin` on its input.
fn ctl_env(config: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    for v in [
        "GATEWAYCTL_CONTROLLER",
        "GATEWAYCTL_API_KEY",
        "GATEWAYCTL_CA",
        "GATEWAYCTL_CONFIG",
        "GATEWAYCTL_CONTEXT",
    ] {
        c.env_remove(v);
    }
    c.arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied());
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("gatewayctl finishes")
        .unwrap()
}

fn ctl(config: &Path, args: &[&str]) -> Output {
    ctl_env(config, args, &[], "")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): {}{}",
        o.status,
        out(o),
        err(o)
    );
    out(o)
}

#[track_caller]
fn fails(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}{}", out(o), err(o));
    err(o)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn principal(o: &Output) -> String {
    let v: Value = serde_json::from_str(&ok(o)).unwrap();
    v["principal"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_commands_keep_secrets_private() {
    let a = Controller::start("a-admin").await;
    let d = tempfile::tempdir().unwrap();
    // The folder is created (0700) with the file.
    let cfg = d.path().join("conf").join("gatewayctl.toml");
    let url = a.url();

    // A new context needs a controller; the environment's is not stored.
    let e = fails(
        &ctl_env(
            &cfg,
            &["config", "set-context", "a"],
            &[("GATEWAYCTL_CONTROLLER", &url)],
            "",
        ),
        2,
    );
    assert!(e.contains("a new context needs --controller URL"), "{e}");
    assert!(!cfg.exists());

    // A key file others may read is refused, like ssh refuses such a private key.
    let loose = secret_file(d.path(), "loose.key", &a.key, 0o644);
    let e = fails(
        &ctl(
            &cfg,
            &[
                "config",
                "set-context",
                "a",
                "--controller",
                &url,
                "--api-key-file",
                loose.to_str().unwrap(),
            ],
        ),
        2,
    );
    assert!(
        e.contains("is accessible by others (mode 0644); refusing to use it: run `chmod 600"),
        "{e}"
    );
    assert!(!cfg.exists(), "nothing written");
    // Nor is a key on the command line stored (it shows in `ps`).
    let e = fails(
        &ctl(
            &cfg,
            &[
                "config",
                "set-context",
                "a",
                "--controller",
                &url,
                "--api-key",
                &a.key,
            ],
        ),
        2,
    );
    assert!(
        e.contains("does not store --api-key") && e.contains("--api-key-stdin"),
        "{e}"
    );
    assert!(!cfg.exists(), "nothing written");
    let key_file = secret_file(d.path(), "a.key", &a.key, 0o600);
    let o = ctl(
        &cfg,
        &[
            "config",
            "set-context",
            "a",
            "--controller",
            &url,
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert!(err(&o).contains("it is the current context"), "{}", err(&o));
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(mode(cfg.parent().unwrap()), 0o700);
    // Written atomically: nothing else in the folder.
    let files: Vec<_> = std::fs::read_dir(cfg.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("gatewayctl.toml")]);
    // The context works: no --controller, no --api-key.
    assert_eq!(
        principal(&ctl(&cfg, &["whoami", "-o", "json"])),
        "key:a-admin"
    );

    // A second context, from standard input; the current one stays.
    let o = ctl_env(
        &cfg,
        &[
            "config",
            "set-context",
            "b",
            "--controller",
            "https://ctl.example:50051",
            "--api-key-stdin",
        ],
        &[],
        "zt-key-0123456789\n",
    );
    ok(&o);
    assert_eq!(ok(&ctl(&cfg, &["config", "current-context"])), "a\n");
    let list = ok(&ctl(&cfg, &["config", "get-contexts"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with('*') && l.contains(" a ")),
        "{list}"
    );
    assert!(list.contains("api key") && list.contains("https://ctl.example:50051"));
    let v: Value =
        serde_json::from_str(&ok(&ctl(&cfg, &["config", "get-contexts", "-o", "json"]))).unwrap();
    assert_eq!(v["current_context"], "a");
    assert_eq!(v["contexts"][1]["name"], "b");
    assert_eq!(v["contexts"][1]["current"], false);
    assert_eq!(v["contexts"][1]["credential"], "api key");
    for shown in [&list, &v.to_string()] {
        assert!(
            !shown.contains(&a.key) && !shown.contains("zt-key-0123456789"),
            "a secret shown"
        );
    }
    // The file holds them (that is its point), readable by its owner only.
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&a.key) && text.contains("zt-key-0123456789"));

    ok(&ctl(&cfg, &["config", "use-context", "b"]));
    assert_eq!(ok(&ctl(&cfg, &["config", "current-context"])), "b\n");
    let e = fails(&ctl(&cfg, &["config", "use-context", "zz"]), 2);
    assert!(e.contains("no context named `zz` (contexts: a, b)"), "{e}");
    ok(&ctl(&cfg, &["config", "use-context", "a"]));

    // A configuration file others may read is refused while it holds a credential.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = fails(&ctl(&cfg, &["whoami"]), 2);
    assert!(
        e.contains("the configuration file") && e.contains("(mode 0644); refusing to use it"),
        "{e}"
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&ctl(&cfg, &["whoami"]));

    // Deleting the current context unsets it.
    ok(&ctl(&cfg, &["config", "delete-context", "a"]));
    let e = fails(&ctl(&cfg, &["config", "current-context"]), 1);
    assert!(e.contains("no current context is set"), "{e}");
    let e = fails(&ctl(&cfg, &["config", "delete-context", "a"]), 2);
    assert!(e.contains("no context named `a` (contexts: b)"), "{e}");

    // A malformed file: located error.
    std::fs::write(&cfg, "current-context = \"a\"\n[contexts.a]\nserver = 1\n").unwrap();
    let e = fails(&ctl(&cfg, &["config", "get-contexts"]), 2);
    assert!(
        e.contains("gatewayctl.toml:4:1") || e.contains("gatewayctl.toml:3:"),
        "{e}"
    );
    assert!(e.contains("invalid configuration"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_then_environment_then_context_then_defaults() {
    let a = Controller::start("a-admin").await;
    let b = Controller::start("b-admin").await;
    let (op, _) = a
        .state
        .create_api_key_ttl("a-operator", controller::auth::Role::Operator, 600, "test")
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("gatewayctl.toml");
    for (name, c) in [("a", &a), ("b", &b)] {
        let o = ctl_env(
            &cfg,
            &[
                "config",
                "set-context",
                name,
                "--controller",
                &c.url(),
                "--api-key-stdin",
            ],
            &[],
            &format!("{}\n", c.key),
        );
        ok(&o);
    }
    let who = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = args.to_vec();
        all.extend(["whoami", "-o", "json"]);
        principal(&ctl_env(&cfg, &all, env, ""))
    };
    // The current context (the first one created).
    assert_eq!(who(&[], &[]), "key:a-admin");
    // The environment's context, then the flag's.
    assert_eq!(who(&[], &[("GATEWAYCTL_CONTEXT", "b")]), "key:b-admin");
    assert_eq!(
        who(&["--context", "a"], &[("GATEWAYCTL_CONTEXT", "b")]),
        "key:a-admin"
    );
    // The environment's credential beats the context's; the flag beats the environment.
    assert_eq!(who(&[], &[("GATEWAYCTL_API_KEY", &op)]), "key:a-operator");
    assert_eq!(
        who(&["--api-key", &a.key], &[("GATEWAYCTL_API_KEY", &op)]),
        "key:a-admin"
    );
    // The same controller named by a flag keeps the context's credential...
    assert_eq!(who(&["--controller", &a.url()], &[]), "key:a-admin");
    // ...another one does not get it: b's key is never sent to a.
    let e = fails(
        &ctl(
            &cfg,
            &["--context", "b", "--controller", &a.url(), "whoami"],
        ),
        1,
    );
    assert!(e.contains("missing credential"), "{e}");
    // Without a file, flags or environment: the default URL.
    let empty = d.path().join("none.toml");
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let e = fails(
        &ctl_env(
            &empty,
            &["whoami"],
            &[("GATEWAYCTL_CA", ca.to_str().unwrap())],
            "",
        ),
        2,
    );
    assert!(e.contains("https://127.0.0.1:50051"), "{e}");
    // GATEWAYCTL_CONFIG names the file too.
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    c.env_remove("GATEWAYCTL_CONTEXT")
        .env_remove("GATEWAYCTL_API_KEY")
        .env_remove("GATEWAYCTL_CONTROLLER")
        .env("GATEWAYCTL_CONFIG", &cfg)
        .args(["config", "current-context"]);
    assert_eq!(ok(&c.output().unwrap()), "a\n");
    // And the default file is under XDG_CONFIG_HOME.
    let xdg = d.path().join("xdg");
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    c.env_remove("GATEWAYCTL_CONFIG")
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["config", "set-context", "x", "--controller", &a.url()]);
    ok(&c.output().unwrap());
    assert!(xdg.join("zt-gateway/gatewayctl.toml").exists());
}

/// TOTP codes of increasing steps (a code is accepted once; ±1 step around now).
struct Codes {
    secret: String,
    last: i64,
}

impl Codes {
    fn next(&mut self) -> String {
        let now = controller::now_unix() / 30;
        let step = (self.last + 1).max(now - 1);
        assert!(step <= now + 1, "out of TOTP steps");
        self.last = step;
        controller::auth::totp_code(&self.secret, step * 30)
    }

    /// The next code without using it up (for a login that is refused before the code
    /// is accepted).
    fn peek(&self) -> String {
        let now = controller::now_unix() / 30;
        controller::auth::totp_code(&self.secret, (self.last + 1).max(now - 1) * 30)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_logins_passwords_and_logout_from_the_cli() {
    let a = Controller::start("a-admin").await;
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("gatewayctl.toml");
    let admin_key = ["--api-key", a.key.as_str()];
    // The context holds the admin's API key; a login's session is used instead of it
    // until logout.
    ok(&ctl_env(
        &cfg,
        &[
            "config",
            "set-context",
            "a",
            "--controller",
            &a.url(),
            "--api-key-stdin",
        ],
        &[],
        &format!("{}\n", a.key),
    ));
    let as_admin = |args: &[&str], stdin: &str| {
        let mut all = admin_key.to_vec();
        all.extend(args);
        ctl_env(&cfg, &all, &[], stdin)
    };

    // Create: the password from stdin, the TOTP secret printed once.
    let password = "correct horse battery";
    let o = as_admin(
        &[
            "users",
            "create",
            "dana",
            "--role",
            "operator",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
    let text = ok(&o);
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret: "))
        .unwrap()
        .to_string();
    assert!(
        text.contains("otpauth://totp/zt-gateway:dana?secret="),
        "{text}"
    );
    assert!(err(&o).contains("shown only once"));
    let e = fails(
        &as_admin(
            &[
                "users",
                "create",
                "eve",
                "--role",
                "admin",
                "--password-stdin",
            ],
            "short\n",
        ),
        1,
    );
    assert!(e.contains("at least 12 characters"), "{e}");
    let list = ok(&as_admin(&["users", "list"], ""));
    assert!(list.contains("dana") && list.contains("operator"), "{list}");
    assert!(!list.contains("eve"));

    // Login stores the session in the current context, not on stdout.
    let mut codes = Codes { secret, last: 0 };
    let login = |config: &Path, code: &str, pw: &str| {
        ctl_env(
            config,
            &[
                "login",
                "--user",
                "dana",
                "--totp",
                code,
                "--password-stdin",
            ],
            &[],
            &format!("{pw}\n"),
        )
    };
    let o = login(&cfg, &codes.next(), password);
    assert_eq!(ok(&o), "", "no token on stdout");
    assert!(err(&o).contains("stored in context `a`"), "{}", err(&o));
    let stored = std::fs::read_to_string(&cfg).unwrap();
    assert!(stored.contains("session = \"zt-session-"), "{stored}");
    assert!(stored.contains(&a.key), "the API key stays: {stored}");
    let list = ok(&ctl(&cfg, &["config", "get-contexts"]));
    assert!(list.contains("api key, session"), "{list}");
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(
        principal(&ctl(&cfg, &["whoami", "-o", "json"])),
        "user:dana"
    );
    // An operator may not manage users (the admin may: above).
    let e = fails(&ctl(&cfg, &["users", "list"]), 1);
    assert!(e.contains("not allowed"), "{e}");

    // A second session, printed (no context in that file).
    let other = d.path().join("other.toml");
    let o = ctl_env(
        &other,
        &[
            "--controller",
            &a.url(),
            "login",
            "--user",
            "dana",
            "--totp",
            &codes.next(),
            "--password-stdin",
        ],
        &[],
        &format!("{password}\n"),
    );
    let token2 = ok(&o).trim().to_string();
    assert!(token2.starts_with("zt-session-"), "{token2}");
    let who2 = |token: &str| {
        ctl(
            &other,
            &["--controller", &a.url(), "--api-key", token, "whoami"],
        )
    };
    ok(&who2(&token2));

    // passwd: a wrong old password is refused; then the other session ends, this stays.
    let new_password = "staple battery horse";
    let e = fails(
        &ctl_env(
            &cfg,
            &["passwd", "--password-stdin"],
            &[],
            &format!("not the password\n{new_password}\n"),
        ),
        1,
    );
    assert!(e.contains("the old password is wrong"), "{e}");
    let o = ctl_env(
        &cfg,
        &["passwd", "--password-stdin"],
        &[],
        &format!("{password}\n{new_password}\n"),
    );
    ok(&o);
    assert!(err(&o).contains("1 other session ended"), "{}", err(&o));
    let e = fails(&who2(&token2), 1);
    assert!(e.contains("unknown or ended session"), "{e}");
    assert_eq!(
        principal(&ctl(&cfg, &["whoami", "-o", "json"])),
        "user:dana"
    );
    // The API key cannot change a password.
    let e = fails(
        &as_admin(&["passwd", "--password-stdin"], "a\nbbbbbbbbbbbbbbbb\n"),
        1,
    );
    assert!(e.contains("is an API key, not a session"), "{e}");

    // logout ends the session and removes it from the context.
    let o = ctl(&cfg, &["logout"]);
    ok(&o);
    assert!(
        err(&o).contains("session ended; removed from context `a`"),
        "{}",
        err(&o)
    );
    let stored = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !stored.contains("session") && stored.contains(&a.key),
        "{stored}"
    );
    assert_eq!(
        principal(&ctl(&cfg, &["whoami", "-o", "json"])),
        "key:a-admin"
    );

    // The old password no longer logs in; the new one does.
    let e = fails(&login(&cfg, &codes.peek(), password), 1);
    assert!(e.contains("login failed"), "{e}");
    let o = login(&cfg, &codes.next(), new_password);
    ok(&o);
    let session = principal(&ctl(&cfg, &["whoami", "-o", "json"]));
    assert_eq!(session, "user:dana");

    // reset-totp: a new secret, the user's sessions end (audit-logged).
    let o = as_admin(&["users", "reset-totp", "dana", "-o", "json"], "");
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["sessions_ended"], 1);
    let new_secret = v["totp_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, codes.secret);
    let e = fails(&ctl(&cfg, &["whoami"]), 1);
    assert!(e.contains("unknown or ended session"), "{e}");
    // A logout of an ended session still removes it from the context.
    let o = ctl(&cfg, &["logout"]);
    ok(&o);
    assert!(
        err(&o).contains("no longer knew the session"),
        "{}",
        err(&o)
    );
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("session"));
    // The old authenticator fails, the new one works.
    let old_code = controller::auth::totp_code(&codes.secret, controller::now_unix());
    let e = fails(&login(&cfg, &old_code, new_password), 1);
    assert!(e.contains("login failed"), "{e}");
    let mut fresh = Codes {
        secret: new_secret,
        last: 0,
    };
    ok(&login(&cfg, &fresh.next(), new_password));
    let audit = ok(&as_admin(&["audit", "-o", "json"], ""));
    assert!(
        audit.contains("\"reset_totp\"") && audit.contains("\"change_password\""),
        "{audit}"
    );

    // Nothing to log out without a credential; an API key is not a session.
    let e = fails(
        &ctl(
            &d.path().join("none.toml"),
            &["--controller", &a.url(), "logout"],
        ),
        2,
    );
    assert!(e.contains("nothing to log out"), "{e}");
    let e = fails(&as_admin(&["logout"], ""), 1);
    assert!(e.contains("is an API key, not a session"), "{e}");

    // delete: the user is gone, their session too.
    ok(&as_admin(&["users", "delete", "dana"], ""));
    let list = ok(&as_admin(&["users", "list", "-o", "json"], ""));
    assert!(!list.contains("dana"), "{list}");
    fails(&ctl(&cfg, &["whoami"]), 1);
    let e = fails(&as_admin(&["users", "delete", "dana"], ""), 1);
    assert!(e.contains("no user named `dana`"), "{e}");
}

/// Runs `gatewayctl ARGS...` in a new session whose controlling terminal is a
/// pseudo-terminal on which `typed` was typed (password prompts read /dev/tty).
fn on_terminal(config: &Path, args: &[&str], typed: &str) -> Output {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;
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
    m.write_all(typed.as_bytes()).unwrap();
    // The echo of what was typed goes to the master: read it away so it never fills.
    let mut reader = m.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    c.env_remove("GATEWAYCTL_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = slave.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec: a new session, then
    // the terminal as its controlling terminal.
    unsafe {
        c.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    drop(slave);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gatewayctl finishes")
        .unwrap();
    drop(m);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_asked_twice_on_the_terminal() {
    let a = Controller::start("a-admin").await;
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("gatewayctl.toml");
    let create = |typed: &str| {
        on_terminal(
            &cfg,
            &[
                "--controller",
                &a.url(),
                "--api-key",
                &a.key,
                "users",
                "create",
                "erin",
                "--role",
                "auditor",
            ],
            typed,
        )
    };
    let e = fails(&create("correct horse battery\ncorrect horse batterY\n"), 2);
    assert!(e.contains("the two passwords differ"), "{e}");
    assert!(a.state.list_admin_users().is_empty(), "nothing created");
    let text = ok(&create("correct horse battery\ncorrect horse battery\n"));
    assert!(text.contains("TOTP secret: "), "{text}");
    let users = a.state.list_admin_users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "erin");
}
