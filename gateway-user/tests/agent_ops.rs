//! Operating the agent: signals (SIGHUP reopens the connection log and reloads the
//! policy file), `/healthz`, `/readyz` and the metrics an operator relies on, systemd's
//! readiness protocol (`NOTIFY_SOCKET`), one generation number in every place a user
//! reads it, and the systemd units as `systemd-analyze verify` sees them.
//!
//! ```text
//!  alice ──veth── conn (gateway-agent, connector "conn"; in managed mode also the
//!                      controller, on 127.0.0.1)
//! ```

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use controller::auth::AuthedAdminClient;
use gateway_proto::v1::{ApplyPolicyRequest, CreateEnrollmentTokenRequest, ListAgentsRequest};
use gateway_test_support::{
    netns::{NetNs, command_in, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
};
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const WAIT: Duration = Duration::from_secs(20);

/// A temp folder and a bpffs pin folder, removed (and detached) at the end.
struct Dirs {
    tmp: PathBuf,
    pin: PathBuf,
}

impl Dirs {
    fn new(prefix: &str) -> Dirs {
        let name = unique_name(prefix);
        let d = Dirs {
            tmp: std::env::temp_dir().join(&name),
            pin: PathBuf::from("/sys/fs/bpf").join(&name),
        };
        std::fs::create_dir_all(&d.tmp).unwrap();
        d
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = Command::new(AGENT)
            .args(["detach", "--config"])
            .arg(self.tmp.join("agent.toml"))
            .output();
        let _ = std::fs::remove_dir_all(&self.tmp);
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// alice (198.19.1.10) ── conn (198.19.1.1); alice routes everything through conn.
fn lab(prefix: &str) -> (NetNs, NetNs, String) {
    let alice = NetNs::new(&format!("{prefix}a")).unwrap();
    let conn = NetNs::new(&format!("{prefix}c")).unwrap();
    let (_a, c) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    (alice, conn, c.iface)
}

/// One HTTP GET inside `ns`: (status code, body).
fn get(ns: &NetNs, addr: &str, path: &str) -> (u16, String) {
    let addr: SocketAddr = addr.parse().unwrap();
    let path = path.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    })
    .unwrap()
}

/// The samples of a Prometheus text page, by series.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for a record of `log` matching `pred`.
fn wait_record(
    log: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(r) = records(log).into_iter().find(|r| pred(r)) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no {what} record in {}: {:#?}", log.display(), records(log));
}

/// A TCP SYN from alice to `dst`, which the connector denies (nothing answers).
fn knock(alice: &NetNs, dst: &str) {
    let dst: SocketAddr = dst.parse().unwrap();
    let _ = alice.run(move || TcpStream::connect_timeout(&dst, Duration::from_millis(300)));
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// The agent's `status --output json` (from the pinned state).
fn status(conn: &NetNs, cfg: &Path) -> serde_json::Value {
    let out = command_in(conn.name(), Path::new(AGENT))
        .unwrap()
        .args(["status", "--output", "json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sighup_reopens_the_log_and_reloads_the_policy_and_health_answers() {
    if skip_unless_privileged!() {
        return;
    }
    let (alice, conn, iface) = lab("zop");
    let dirs = Dirs::new("zgwops");
    let policy = dirs.tmp.join("policy.toml");
    let log = dirs.tmp.join("connections.jsonl");
    let cfg = dirs.tmp.join("agent.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let metrics = "127.0.0.1:9478";
    std::fs::write(
        &cfg,
        format!(
            "role = \"connector\"\nname = \"conn\"\npolicy_file = \"{}\"\npin_dir = \"{}\"\n\
             xdp_interfaces = [\"{iface}\"]\ntc_egress_interfaces = [\"{iface}\"]\n\
             xdp_mode = \"generic\"\nlog_file = \"{}\"\nmetrics_listen = \"{metrics}\"\n\
             policy_poll_ms = 100\n[flow_timeouts]\nudp_unreplied = 1\n",
            policy.display(),
            dirs.pin.display(),
            log.display(),
        ),
    )
    .unwrap();
    let stderr = dirs.tmp.join("agent.stderr");
    let mut agent =
        AgentProcess::start("conn", conn.name(), Path::new(AGENT), &cfg, &stderr).unwrap();
    agent.wait_ready(WAIT).unwrap();
    let pid = agent.pid().unwrap();

    // --- Once ready, no thread of the agent holds CAP_SYS_ADMIN or CAP_PERFMON any more
    // (the test runs as root with every capability, so the agent started with them);
    // CAP_BPF and CAP_NET_ADMIN stay. The policy reload further down works without them.
    let deadline = Instant::now() + WAIT;
    loop {
        let holders = threads_with_capability(pid, CAP_SYS_ADMIN)
            .into_iter()
            .chain(threads_with_capability(pid, CAP_PERFMON))
            .collect::<Vec<_>>();
        if holders.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads still holding CAP_SYS_ADMIN or CAP_PERFMON after ready: {holders:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(
        threads_with_capability(pid, CAP_BPF).len(),
        threads,
        "CAP_BPF stays on every thread"
    );
    assert_eq!(
        threads_with_capability(pid, CAP_NET_ADMIN).len(),
        threads,
        "CAP_NET_ADMIN stays on every thread"
    );

    // --- Health, readiness and the operator's metrics, over HTTP.
    // Alive once the loop turned (just after ready it may still say "alive: starting").
    let deadline = Instant::now() + WAIT;
    let (code, body) = loop {
        let (code, body) = get(&conn, metrics, "/healthz");
        if body == "alive\n" || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((code, body.as_str()), (200, "alive\n"));
    let (code, body) = get(&conn, metrics, "/readyz");
    assert_eq!(
        (code, body.as_str()),
        (200, "ready: enforcing policy generation 1\n")
    );
    let (code, page) = get(&conn, metrics, "/metrics");
    assert_eq!(code, 200);
    let s = samples(&page);
    let build = format!(
        "gateway_build_info{{version=\"{}\",profile=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(s.get(&build), Some(&1.0), "{page}");
    assert_eq!(s.get("gateway_ready"), Some(&1.0), "{page}");
    let attach = |hook: &str, mode: &str| {
        format!("gateway_attach_info{{iface=\"{iface}\",hook=\"{hook}\",mode=\"{mode}\"}}")
    };
    assert_eq!(s.get(&attach("xdp", "generic")), Some(&1.0), "{page}");
    assert_eq!(s.get(&attach("tc_egress", "tcx")), Some(&1.0), "{page}");
    let (code, body) = get(&conn, metrics, "/nothing");
    assert_eq!(code, 404, "{body}");

    // An allowed datagram (alice -> dns:53) makes a flow; idle for a second, it ends, and
    // its flow_end's packets and bytes are counted in the byte counters.
    gateway_test_support::net::send_udp(&alice, None, "198.18.1.53:53", b"query", 1).unwrap();
    let end = wait_record(&log, "flow_end of dns:53", |r| {
        r["event"] == "flow_end" && r["dst_port"] == 53
    });
    let bytes = end["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{end}");
    let start = Instant::now();
    let counted = loop {
        let s = samples(&get(&conn, metrics, "/metrics").1);
        let n = s["gateway_flow_end_bytes_total{direction=\"forward\"}"];
        if n > 0.0 || start.elapsed() > WAIT {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        counted["gateway_flow_end_bytes_total{direction=\"forward\"}"],
        bytes as f64
    );
    assert_eq!(
        counted["gateway_flow_end_packets_total{direction=\"forward\"}"],
        end["packets"].as_u64().unwrap() as f64
    );

    // --- logrotate's `create`: the log is renamed, the agent gets SIGHUP, and the next
    // record goes to a new file at the configured path.
    knock(&alice, "198.18.1.5:23");
    wait_record(&log, "deny of web:23", |r| {
        r["event"] == "deny" && r["dst_port"] == 23
    });
    let rotated = dirs.tmp.join("connections.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    // The policy changes in place with its length and time kept, which the file poll
    // cannot see: only SIGHUP applies it. (Web's port 443 becomes 444.)
    let meta = std::fs::metadata(&policy).unwrap();
    let mtime = meta.modified().unwrap();
    let edited = POLICY.replacen("tcp = [\"443\"]", "tcp = [\"444\"]", 1);
    assert_eq!(edited.len(), POLICY.len());
    write_keeping_time(&policy, &edited, mtime);
    let applied = agent.count("policy applied");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        agent.count("policy applied"),
        applied,
        "control: the poll alone must not see the edit"
    );
    assert_eq!(status(&conn, &cfg)["local_generation"], 1);

    signal(pid, libc::SIGHUP);
    agent
        .wait_for("SIGHUP: connection log reopened", WAIT)
        .unwrap();
    agent
        .wait_for_count("policy applied", applied + 1, WAIT)
        .unwrap();
    assert_eq!(status(&conn, &cfg)["local_generation"], 2);
    std::thread::sleep(Duration::from_millis(1100)); // past the per-source deny budget's second
    knock(&alice, "198.18.1.5:24");
    wait_record(&log, "deny of web:24 in the new file", |r| {
        r["event"] == "deny" && r["dst_port"] == 24
    });
    assert!(
        !records(&rotated).iter().any(|r| r["dst_port"] == 24),
        "the renamed file must not get records after SIGHUP"
    );
    assert!(
        records(&rotated).iter().any(|r| r["dst_port"] == 23),
        "the renamed file keeps what was written before"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A broken policy on SIGHUP: reported with its location, the policy in force stays.
    let broken = edited.replacen("address = \"198.18.1.5\"", "address = \"198.18.1.x\"", 1);
    write_keeping_time(&policy, &broken, mtime);
    let stays = agent.count("stays in force");
    signal(pid, libc::SIGHUP);
    agent
        .wait_for_count("stays in force", stays + 1, WAIT)
        .unwrap();
    assert!(
        agent.stderr().contains("policy.toml:"),
        "{}",
        agent.stderr()
    );
    assert_eq!(status(&conn, &cfg)["local_generation"], 2);

    // Alive through all of it, and a restart re-adopts the links with their modes.
    assert_eq!(get(&conn, metrics, "/healthz").0, 200);
    assert_eq!(agent.stop_keeping_pins().unwrap(), "exited on SIGTERM");
    std::fs::write(&policy, &edited).unwrap();
    let mut again =
        AgentProcess::start("conn2", conn.name(), Path::new(AGENT), &cfg, &stderr).unwrap();
    again.wait_ready(WAIT).unwrap();
    let s = samples(&get(&conn, metrics, "/metrics").1);
    assert_eq!(s.get(&attach("xdp", "generic")), Some(&1.0));
    assert_eq!(s.get(&attach("tc_egress", "tcx")), Some(&1.0));
    again.stop().unwrap();
}

/// Replaces `path` with `text` whose modification time is `mtime` (written beside it,
/// then renamed over it: the poll never sees another time).
fn write_keeping_time(path: &Path, text: &str, mtime: SystemTime) {
    let tmp = path.with_extension("next");
    std::fs::write(&tmp, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The controller, in-process on threads inside `ns`, plaintext on 127.0.0.1 (the agent
/// allows plaintext to loopback only). Stopped when dropped; its database stays.
struct Controller {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    key: String,
}

const CTL: &str = "127.0.0.1:50061";

impl Controller {
    fn start(ns: &NetNs, db: &Path) -> Controller {
        let nsf = std::fs::File::open(format!("/run/netns/{}", ns.name())).unwrap();
        let db = db.to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd, for this thread (and the runtime
            // threads it creates) only.
            assert_eq!(
                unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let state = Arc::new(controller::State::open(&db, 30).unwrap());
                let key = state
                    .bootstrap_admin_key(&format!("test-{}", controller::random_hex(4)))
                    .unwrap();
                let (_, task) = controller::spawn(CTL.parse().unwrap(), state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
                ready_tx.send(key).unwrap();
                let _ = task.await;
            });
        });
        let key = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Controller {
            stop: Some(stop),
            thread: Some(thread),
            key,
        }
    }

    /// Runs an Admin call from inside `ns`.
    fn admin<T: Send>(
        &self,
        ns: &NetNs,
        f: impl for<'a> FnOnce(
            &'a mut AuthedAdminClient,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>
        + Send,
    ) -> T {
        let key = self.key.clone();
        ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let ch = controller::tls::connect(&format!("http://{CTL}"), None)
                    .await
                    .unwrap();
                let mut c = controller::auth::admin_client(ch, &key);
                f(&mut c).await
            })
        })
        .unwrap()
    }

    fn apply(&self, ns: &NetNs, text: &str) {
        let text = text.to_string();
        self.admin(ns, move |c| {
            Box::pin(async move {
                c.apply_policy(ApplyPolicyRequest {
                    policy_toml: text,
                    file_name: "policy.toml".into(),
                    dry_run: false,
                    expected_revision: None,
                    skip_tests: false,
                })
                .await
                .unwrap();
            })
        });
    }

    /// (current, acknowledged) generation of `host`'s agent, as `gatewayctl agents`
    /// shows them.
    fn agent_generations(&self, ns: &NetNs, host: &str) -> (u64, u64) {
        let host = host.to_string();
        self.admin(ns, move |c| {
            Box::pin(async move {
                let agents = c
                    .list_agents(ListAgentsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .agents;
                let a = agents.iter().find(|a| a.host == host).unwrap();
                (a.current_generation, a.acked_generation)
            })
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An agent started with `NOTIFY_SOCKET` set, as systemd starts a `Type=notify` service.
struct Notified {
    child: Child,
}

impl Notified {
    fn start(ns: &NetNs, cfg: &Path, stderr: &Path, socket: &Path) -> Notified {
        let err = std::fs::File::options()
            .create(true)
            .append(true)
            .open(stderr)
            .unwrap();
        let child = command_in(ns.name(), Path::new(AGENT))
            .unwrap()
            .args(["run", "--config"])
            .arg(cfg)
            .env("NOTIFY_SOCKET", socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Notified { child }
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The next notification on `sock` (bounded wait).
fn next_notification(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The `generation=` of the last `line_with` line on stderr.
fn logged_generation(stderr: &Path, line_with: &str) -> u64 {
    let text = std::fs::read_to_string(stderr).unwrap();
    let line = text
        .lines()
        .rfind(|l| l.contains(line_with))
        .unwrap_or_else(|| panic!("no {line_with:?} line in:\n{text}"));
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("generation="))
        .unwrap_or_else(|| panic!("no generation= in {line}"));
    field.parse().unwrap()
}

#[test]
fn managed_readiness_notify_and_one_generation() {
    if skip_unless_privileged!() {
        return;
    }
    let (_alice, conn, iface) = lab("zon");
    let dirs = Dirs::new("zgwonot");
    let db = dirs.tmp.join("controller.db");
    let cfg = dirs.tmp.join("agent.toml");
    let metrics = "127.0.0.1:9479";
    let ctl = Controller::start(&conn, &db);
    ctl.apply(&conn, POLICY);
    let token = ctl.admin(&conn, |c| {
        Box::pin(async move {
            c.create_enrollment_token(CreateEnrollmentTokenRequest {
                host: "connector:conn".into(),
                ttl_seconds: 600,
            })
            .await
            .unwrap()
            .into_inner()
            .token
        })
    });
    std::fs::write(
        &cfg,
        format!(
            "role = \"connector\"\nname = \"conn\"\npin_dir = \"{}\"\n\
             xdp_interfaces = [\"{iface}\"]\ntc_egress_interfaces = [\"{iface}\"]\n\
             log_file = \"{}\"\nmetrics_listen = \"{metrics}\"\n\n[controller]\n\
             url = \"http://{CTL}\"\nenrollment_token = \"{token}\"\nidentity_file = \"{}\"\n",
            dirs.pin.display(),
            dirs.tmp.join("connections.jsonl").display(),
            dirs.tmp.join("identity.json").display(),
        ),
    )
    .unwrap();
    // Enroll once, then start afresh (nothing pinned) with the controller down: the agent
    // has its identity but no policy until the controller answers.
    let stderr = dirs.tmp.join("agent.stderr");
    let mut first =
        AgentProcess::start("conn", conn.name(), Path::new(AGENT), &cfg, &stderr).unwrap();
    first.wait_ready(WAIT).unwrap();
    // A second controller generation, so that the agent's own count (which restarts with
    // fresh pins) and the controller's differ below.
    ctl.apply(
        &conn,
        &POLICY.replacen("tcp = [\"443\"]", "tcp = [\"444\"]", 1),
    );
    first
        .wait_for_count("policy from the controller applied", 2, WAIT)
        .unwrap();
    first.stop().unwrap();
    first.detach().unwrap();
    drop(first);
    drop(ctl);

    let sock_path = dirs.tmp.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let agent = Notified::start(&conn, &cfg, &stderr, &sock_path);
    let start = Instant::now();
    let (code, body) = loop {
        let r = conn.run(|| TcpStream::connect(metrics)).unwrap();
        if r.is_ok() {
            break get(&conn, metrics, "/readyz");
        }
        assert!(start.elapsed() < WAIT, "no metrics listener");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body,
        format!("not ready: waiting for this host's view from the controller at http://{CTL}\n")
    );
    assert_eq!(
        get(&conn, metrics, "/healthz").0,
        200,
        "alive while waiting"
    );
    assert_eq!(
        next_notification(&sock, Duration::from_millis(1500)),
        None,
        "READY=1 before the policy is live"
    );
    assert_eq!(
        status(&conn, &cfg)["local_generation"],
        0,
        "nothing applied yet"
    );

    let ctl = Controller::start(&conn, &db);
    let ready = next_notification(&sock, WAIT).expect("READY=1 once the policy is live");
    assert_eq!(ready.trim(), "READY=1");
    // At that moment the policy is in the kernel and /readyz says so.
    let st = status(&conn, &cfg);
    assert!(st["local_generation"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["principals"].as_u64().unwrap() >= 1, "{st}");
    let (code, body) = get(&conn, metrics, "/readyz");
    assert_eq!(code, 200, "{body}");

    // --- One generation: a change makes the controller's and the agent's own counters
    // differ; every user-facing place shows the controller's.
    ctl.apply(
        &conn,
        &POLICY.replace(
            "name = \"alice-db\"",
            "name = \"alice-db\"\nexpires_at = 2000-01-01T00:00:00Z",
        ),
    );
    let start = Instant::now();
    let (current, acked) = loop {
        let (c, a) = ctl.agent_generations(&conn, "connector:conn");
        if c == a || start.elapsed() > WAIT {
            break (c, a);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(acked, current, "the agent acknowledged the change");
    let st = status(&conn, &cfg);
    let local = st["local_generation"].as_u64().unwrap();
    assert_ne!(
        local, current,
        "the test needs the two counters to differ: {st}"
    );
    assert_eq!(st["generation"], current, "status: {st}");
    assert_eq!(
        logged_generation(&stderr, "policy from the controller applied"),
        current
    );
    let start = Instant::now();
    let s = loop {
        let s = samples(&get(&conn, metrics, "/metrics").1);
        if s["gateway_policy_local_generation"] == local as f64 || start.elapsed() > WAIT {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["gateway_policy_generation"], current as f64);
    assert_eq!(s["gateway_policy_local_generation"], local as f64);

    // --- SIGTERM: STOPPING=1, and a clean exit.
    let mut agent = agent;
    signal(agent.child.id(), libc::SIGTERM);
    let stopping = next_notification(&sock, WAIT).expect("STOPPING=1 on SIGTERM");
    assert_eq!(stopping.trim(), "STOPPING=1");
    let deadline = Instant::now() + WAIT;
    while agent.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the agent did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.child.try_wait().unwrap().unwrap().success());
    drop(ctl);
}

/// `systemd-analyze verify` accepts both shipped units: no unknown key, no bad value.
/// The one complaint tolerated is that the binaries are not installed in /usr/local/bin on
/// the machine running the test.
#[test]
fn systemd_units_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is not installed: this test needs it (apt install systemd)");
    };
    assert!(v.status.success());
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for unit in ["gateway-agent.service", "gateway-controller.service"] {
        let path = deploy.join(unit);
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // The binaries are not installed on a build machine; everything else must pass.
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !(l.contains("Command /usr/local/bin/gateway-")
                    && l.ends_with("is not executable: No such file or directory"))
            })
            .collect();
        assert!(
            problems.is_empty(),
            "systemd-analyze verify {unit}:\n{text}"
        );
    }
}

/// The units' directories are where the shipped configuration and the agent's defaults
/// put files: the connection log under LogsDirectory, the identity under StateDirectory.
#[test]
fn the_units_directories_match_the_agents_paths() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let unit = std::fs::read_to_string(deploy.join("gateway-agent.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the agent unit"))
            .to_string()
    };
    let cfg = gateway_user::agent::config::Config::load(&deploy.join("agent.toml")).unwrap();
    let log = cfg.log_file.unwrap();
    assert_eq!(
        log.parent().unwrap(),
        Path::new("/var/log").join(value("LogsDirectory"))
    );
    assert!(
        !value("ReadWritePaths").contains("/var/log"),
        "LogsDirectory= makes the log folder writable"
    );
    let ctl: gateway_user::agent::config::ControllerConfig =
        toml::from_str("url = \"https://x:1\"").unwrap();
    assert_eq!(
        ctl.identity_file.parent().unwrap(),
        Path::new("/var/lib").join(value("StateDirectory"))
    );
    let t = cfg.tunnel.unwrap();
    assert_eq!(
        t.private_key_file.parent().unwrap(),
        Path::new("/var/lib").join(value("StateDirectory"))
    );
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The threads of `pid` whose effective or permitted set holds capability `cap`, from
/// `/proc/PID/task/TID/status` (`CapEff`, `CapPrm`).
fn threads_with_capability(pid: u32, cap: u32) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let held = status.lines().any(|l| {
            let Some((k, v)) = l.split_once(':') else {
                return false;
            };
            (k == "CapEff" || k == "CapPrm")
                && u64::from_str_radix(v.trim(), 16).is_ok_and(|bits| bits & (1 << cap) != 0)
        });
        if held {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            out.push(format!(
                "{} ({})",
                t.file_name().to_string_lossy(),
                comm.trim()
            ));
        }
    }
    out
}
