//! The end-to-end demo behind `cargo xtask demo` (binary `gateway-demo`).
//!
//! It builds four hosts as network namespaces, runs the real `gateway-agent` on two of
//! them, drives real traffic, and checks the outcome against the policy
//! (`examples/demo.toml`, embedded):
//!
//! ```text
//!  alice  198.19.1.10  agent: device alice-laptop ──veth──┐
//!                                                          connector  agent: connector demo-connector
//!  bob    198.19.2.11  no agent                   ──veth──┘  (forwarding) ──veth── resources
//!                                                                                   198.18.1.5  web :443/tcp
//!                                                                                   198.18.1.10 db  :5432/tcp
//!                                                                                   198.18.1.53 dns :53/udp
//! ```
//!
//! Alice may use web and dns, not db: her own agent stops the rest on her host (TC
//! egress), so the connector never sees it. Bob has no grant (and a deny rule on db); his
//! laptop has no agent, so the connector (XDP) stops him, and a port scan from him raises
//! a `scan_alert`. Every claim is checked — on the client (did it connect, did the echo
//! come back), on the resource host (which peers did the servers see) and in both agents'
//! connection logs (which host logged what, with which fields) — and the demo exits
//! non-zero when one fails.
//!
//! Agents are started in their namespace with `setns(CLONE_NEWNET)` only (like
//! `nsenter --net`), not `ip netns exec`: the latter remounts `/sys` in a private mount
//! namespace, which hides the host's bpffs at /sys/fs/bpf, so pins would live and die in
//! that private mount.
//!
//! Everything is torn down at the end and on failure, panic or Ctrl-C (guards): agents
//! stopped (SIGTERM), `gateway-agent detach` run for each, namespaces deleted; then the
//! demo verifies that no namespace, interface, pin folder or process is left.

use anyhow::{Context as _, Result, bail};
use gateway_test_support::netns::{NetNs, VethEnd, veth_pair};
use serde::Serialize;
use serde_json::Value;
use std::{
    fmt::Write as _,
    fs::File,
    io::{Read as _, Write as _},
    net::{
        IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The demo policy (`examples/demo.toml`); the topology below matches its addresses.
pub const DEMO_POLICY: &str = include_str!("../../examples/demo.toml");

const CONNECTOR: &str = "demo-connector";
const NETWORK: &str = "corp";
const METRICS_PORT: u16 = 9464;
/// Flows idle this long get a flow_end record (TCP after its FIN, UDP and ICMP after any
/// packet).
const IDLE_TIMEOUT_SECS: u64 = 2;
/// Allowed exchanges get this long per step; denied attempts this long before counting as
/// dropped.
const ALLOW_TIMEOUT: Duration = Duration::from_millis(1500);
const DENY_TIMEOUT: Duration = Duration::from_millis(700);
const SCAN_TIMEOUT: Duration = Duration::from_millis(800);
/// 30 well-known ports (443 left out: Bob's attempt on it is its own probe).
const SCAN_PORTS: [u16; 30] = [
    21, 22, 23, 25, 53, 80, 88, 110, 111, 135, 139, 143, 389, 445, 465, 587, 636, 993, 995, 1433,
    1521, 2049, 3306, 3389, 5900, 6379, 8080, 8443, 9200, 27017,
];
/// Servers in the resource namespace stop by themselves after this long at the latest.
const SERVER_LIFETIME: Duration = Duration::from_secs(170);

/// The fields every connection record carries (null when unknown), and per event.
pub const BASE_FIELDS: [&str; 19] = [
    "timestamp",
    "event",
    "verdict",
    "reason",
    "user",
    "device",
    "service_account",
    "public_ip",
    "src_ip",
    "src_port",
    "resource",
    "dst_ip",
    "protocol",
    "dst_port",
    "connector",
    "remote_network",
    "rule",
    "rule_id",
    "host",
];
pub const FLOW_END_FIELDS: [&str; 5] = [
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "duration_ms",
];
const EVENTS: [&str; 5] = ["flow_start", "flow_end", "deny", "audit", "scan_alert"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Alice,
    Bob,
}

struct Client {
    name: &'static str,
    user: &'static str,
    device: &'static str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
}

const ALICE: Client = Client {
    name: "alice",
    user: "alice@example.com",
    device: "alice-laptop",
    ip: Ipv4Addr::new(198, 19, 1, 10),
    gateway: Ipv4Addr::new(198, 19, 1, 1),
};
const BOB: Client = Client {
    name: "bob",
    user: "bob@example.com",
    device: "bob-laptop",
    ip: Ipv4Addr::new(198, 19, 2, 11),
    gateway: Ipv4Addr::new(198, 19, 2, 1),
};

fn client(who: Who) -> &'static Client {
    match who {
        Who::Alice => &ALICE,
        Who::Bob => &BOB,
    }
}

const CONN_RES_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The controller's host, behind the connector (management network).
const CTL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 1);
const CONN_CTL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 2);
const CTL_PORT: u16 = 50051;

fn controller_url() -> String {
    format!("https://{CTL_IP}:{CTL_PORT}")
}
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);
const DB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 53);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The services of the resource host: (name, address, protocol).
const SERVICES: [(&str, SocketAddrV4, Proto); 3] = [
    ("web", SocketAddrV4::new(WEB, 443), Proto::Tcp),
    ("db", SocketAddrV4::new(DB, 5432), Proto::Tcp),
    ("dns", SocketAddrV4::new(DNS, 53), Proto::Udp),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Where {
    /// The client's own agent (TC egress on its uplink).
    ClientEgress,
    /// The connector (XDP ingress on its client-facing link).
    Connector,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Allow {
        rule: &'static str,
    },
    Deny {
        at: Where,
        reason: &'static str,
        rule: Option<&'static str>,
    },
}

struct Probe {
    who: Who,
    what: &'static str,
    resource: &'static str,
    proto: Proto,
    dst: SocketAddrV4,
    expect: Expect,
}

fn probes() -> Vec<Probe> {
    use Expect::*;
    vec![
        Probe {
            who: Who::Alice,
            what: "web",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 443),
            expect: Allow {
                rule: "engineering-web",
            },
        },
        Probe {
            who: Who::Alice,
            what: "dns",
            resource: "dns",
            proto: Proto::Udp,
            dst: SocketAddrV4::new(DNS, 53),
            expect: Allow {
                rule: "engineering-dns",
            },
        },
        Probe {
            who: Who::Alice,
            what: "db",
            resource: "db",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(DB, 5432),
            expect: Deny {
                at: Where::ClientEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Alice,
            what: "web ssh",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 22),
            expect: Deny {
                at: Where::ClientEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Bob,
            what: "web",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 443),
            expect: Deny {
                at: Where::Connector,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Bob,
            what: "db",
            resource: "db",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(DB, 5432),
            expect: Deny {
                at: Where::Connector,
                reason: "denied_by_rule",
                rule: Some("contractors-no-db"),
            },
        },
        Probe {
            who: Who::Bob,
            what: "dns",
            resource: "dns",
            proto: Proto::Udp,
            dst: SocketAddrV4::new(DNS, 53),
            expect: Deny {
                at: Where::Connector,
                reason: "denied_no_grant",
                rule: None,
            },
        },
    ]
}

// ---------------------------------------------------------------- options, output

/// What `gateway-demo` is given on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `gateway-agent` binary to run.
    pub agent: PathBuf,
    /// `gatewayctl`: checks the policy, applies it to the controller, mints enrollment
    /// tokens.
    pub gatewayctl: Option<PathBuf>,
    /// The `gateway-controller` binary; the agents are managed by it.
    pub controller: PathBuf,
    /// The policy; the embedded `examples/demo.toml` when absent. Its addresses must match
    /// the demo topology.
    pub policy: Option<PathBuf>,
    /// Keep the temporary folder (agent configs and logs) instead of removing it.
    pub keep_logs: bool,
}

static START: OnceLock<Instant> = OnceLock::new();
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

macro_rules! progress {
    ($($arg:tt)*) => {
        println!("[{:5.1}s] {}", elapsed(), format!($($arg)*))
    };
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) on Ctrl-C.
fn sleep(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Expectation results: every check is printed when it fails and counted.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if ok {
            self.passed += 1;
        } else {
            let what = what.into();
            println!("         FAIL: {what}");
            self.failed.push(what);
        }
        ok
    }
}

/// What the run created, for the final leftover check (filled as things are created).
#[derive(Default)]
struct Created {
    namespaces: Vec<String>,
    interfaces: Vec<String>,
    pin_dirs: Vec<PathBuf>,
    pids: Vec<u32>,
    temp_dir: Option<PathBuf>,
    keep_temp: bool,
}

// ---------------------------------------------------------------- processes

fn ns_command(ns: &str, program: &Path) -> Result<Command> {
    gateway_test_support::netns::command_in(ns, program)
}

/// Runs a command to completion, killing it after `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("           | {l}\n"))
        .collect()
}

#[derive(Serialize)]
struct ControllerSection {
    url: String,
    ca_file: PathBuf,
    enrollment_token: String,
    identity_file: PathBuf,
}

#[derive(Serialize)]
struct AgentConfig {
    role: &'static str,
    name: String,
    pin_dir: PathBuf,
    xdp_interfaces: Vec<String>,
    tc_egress_interfaces: Vec<String>,
    xdp_mode: &'static str,
    log_file: PathBuf,
    log_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    /// Short idle timeouts, so the demo sees flow_end records within seconds.
    flow_timeouts: DemoTimeouts,
    /// Managed mode: last, because TOML puts tables after plain keys.
    controller: ControllerSection,
}

#[derive(Serialize)]
struct DemoTimeouts {
    tcp_closing: u64,
    tcp_reset: u64,
    udp_unreplied: u64,
    udp_replied: u64,
    other: u64,
}

impl DemoTimeouts {
    fn short() -> Self {
        DemoTimeouts {
            tcp_closing: IDLE_TIMEOUT_SECS,
            tcp_reset: IDLE_TIMEOUT_SECS,
            udp_unreplied: IDLE_TIMEOUT_SECS,
            udp_replied: IDLE_TIMEOUT_SECS,
            other: IDLE_TIMEOUT_SECS,
        }
    }
}

/// A running `gateway-agent run` in a namespace. Dropping it stops the agent and detaches
/// what it attached.
struct Agent {
    label: String,
    ns: String,
    bin: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    detached: bool,
}

impl Agent {
    #[allow(clippy::too_many_arguments)]
    fn start(
        label: &str,
        ns: &NetNs,
        bin: &Path,
        dir: &Path,
        file_stem: &str,
        cfg: AgentConfig,
        created: &mut Created,
    ) -> Result<Agent> {
        let config = dir.join(format!("{file_stem}.toml"));
        let text = toml::to_string(&cfg).context("writing the agent configuration")?;
        std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
        let stderr = dir.join(format!("{file_stem}.stderr"));
        created.pin_dirs.push(cfg.pin_dir.clone());
        let mut cmd = ns_command(ns.name(), bin)?;
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{file_stem}.stdout")))?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        created.pids.push(child.id());
        Ok(Agent {
            label: label.to_string(),
            ns: ns.name().to_string(),
            bin: bin.to_path_buf(),
            config,
            pin_dir: cfg.pin_dir,
            log: cfg.log_file,
            stderr,
            child: Some(child),
            detached: false,
        })
    }

    /// Waits (bounded) for the agent's `ready:` line, then for `status` to succeed.
    fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Some(child) = self.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "agent {} exited before it was ready ({st}); its stderr:\n{}",
                    self.label,
                    tail(&self.stderr, 20)
                );
            }
            let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(line) = err.lines().find(|l| l.contains("ready:")) {
                let status = self.status("text")?;
                if status.status.success() {
                    return Ok(line.trim_start_matches("gateway-agent: ").to_string());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {} not ready after {timeout:?}; its stderr:\n{}",
                    self.label,
                    tail(&self.stderr, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self, output: &str) -> Result<Output> {
        let mut cmd = ns_command(&self.ns, &self.bin)?;
        cmd.arg("status")
            .arg("--config")
            .arg(&self.config)
            .args(["--output", output]);
        run_bounded(cmd, Duration::from_secs(10))
    }

    /// SIGTERM, then SIGKILL after 5 s. Returns how it ended.
    fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("already gone".into());
        };
        if let Some(st) = child.try_wait()? {
            return Ok(format!("had already exited ({st})"));
        }
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = child.try_wait()? {
                return if st.success() {
                    Ok("exited on SIGTERM".into())
                } else {
                    bail!("exited with {st} on SIGTERM")
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not exit within 5 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `gateway-agent detach`; returns what it removed.
    fn detach(&mut self) -> Result<Vec<String>> {
        self.detached = true;
        let mut cmd = ns_command(&self.ns, &self.bin)?;
        cmd.arg("detach").arg("--config").arg(&self.config);
        let out = run_bounded(cmd, Duration::from_secs(15))?;
        if !out.status.success() {
            bail!(
                "detach failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("warning: stopping agent {}: {e:#}", self.label);
        }
        if !self.detached
            && let Err(e) = self.detach()
        {
            eprintln!("warning: detaching agent {}: {e:#}", self.label);
        }
    }
}

// ---------------------------------------------------------------- resource host

/// Echo servers in the resource namespace. They record every peer they saw, stop when
/// dropped, and stop by themselves after `SERVER_LIFETIME`.
struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<(&'static str, IpAddr)>>>,
}

impl Services {
    fn start(res: &NetNs) -> Result<Services> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let deadline = Instant::now() + SERVER_LIFETIME;
        for (name, addr, proto) in SERVICES {
            let (stop, seen) = (stop.clone(), seen.clone());
            match proto {
                Proto::Tcp => {
                    let l = res
                        .run(move || TcpListener::bind(addr))?
                        .with_context(|| format!("binding {name} on {addr}"))?;
                    l.set_nonblocking(true)?;
                    threads.push(std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            match l.accept() {
                                Ok((c, peer)) => {
                                    if let Ok(mut s) = seen.lock() {
                                        s.push((name, peer.ip()));
                                    }
                                    echo_tcp(c);
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    }));
                }
                Proto::Udp => {
                    let u = res
                        .run(move || UdpSocket::bind(addr))?
                        .with_context(|| format!("binding {name} on {addr}"))?;
                    u.set_read_timeout(Some(Duration::from_millis(50)))?;
                    threads.push(std::thread::spawn(move || {
                        let mut b = [0u8; 512];
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            if let Ok((n, peer)) = u.recv_from(&mut b) {
                                if let Ok(mut s) = seen.lock() {
                                    s.push((name, peer.ip()));
                                }
                                let _ = u.send_to(&b[..n], peer);
                            }
                        }
                    }));
                }
            }
        }
        Ok(Services {
            stop,
            threads,
            seen,
        })
    }

    fn saw(&self, service: &str, peer: Ipv4Addr) -> usize {
        self.seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(n, p)| *n == service && *p == IpAddr::V4(peer))
                    .count()
            })
            .unwrap_or(0)
    }

    fn saw_from(&self, peer: Ipv4Addr) -> usize {
        self.seen
            .lock()
            .map(|s| s.iter().filter(|(_, p)| *p == IpAddr::V4(peer)).count())
            .unwrap_or(0)
    }
}

/// Echoes one connection until EOF (bounded in reads and time).
fn echo_tcp(c: TcpStream) {
    let mut c = c;
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 512];
    for _ in 0..64 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- traffic

#[derive(Debug, Clone)]
enum Outcome {
    /// Connected (TCP) / answered (UDP), every message echoed.
    Exchanged {
        messages: usize,
        bytes: usize,
        ms: u128,
    },
    /// Nothing came back within the timeout: dropped on the way.
    NoAnswer { ms: u128 },
    /// The local stack refused to send (a drop reported to the sender).
    SendBlocked(String),
    /// Reset / port unreachable: the packet reached the resource host.
    Refused,
    /// Anything else (a broken exchange, an unexpected error).
    Failed(String),
}

impl Outcome {
    fn reached(&self) -> bool {
        matches!(self, Outcome::Exchanged { .. } | Outcome::Refused)
    }

    fn blocked(&self) -> bool {
        matches!(self, Outcome::NoAnswer { .. } | Outcome::SendBlocked(_))
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Exchanged {
                messages,
                bytes,
                ms,
            } => format!("{messages} messages ({bytes} B) echoed in {ms} ms"),
            Outcome::NoAnswer { ms } => format!("no answer within {ms} ms"),
            Outcome::SendBlocked(e) => format!("sending failed locally: {e}"),
            Outcome::Refused => "refused by the resource host (the packet got through!)".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
        }
    }
}

fn classify(e: &std::io::Error, t0: Instant) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Outcome::NoAnswer {
            ms: t0.elapsed().as_millis(),
        },
        ConnectionRefused | ConnectionReset => Outcome::Refused,
        _ if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOBUFS)) => {
            Outcome::SendBlocked(e.to_string())
        }
        _ => Outcome::Failed(e.to_string()),
    }
}

fn messages(who: &Client, what: &str) -> Vec<String> {
    (1..=3)
        .map(|i| format!("{} -> {what}: request {i}\n", who.name))
        .collect()
}

/// Connect, send three messages and read each echo, close cleanly (FIN both ways).
fn tcp_exchange(dst: SocketAddrV4, msgs: &[String], timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e, t0),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut bytes = 0;
    for m in msgs {
        if let Err(e) = s.write_all(m.as_bytes()) {
            return Outcome::Failed(format!("connected, then sending failed: {e}"));
        }
        let mut b = vec![0u8; m.len()];
        if let Err(e) = s.read_exact(&mut b) {
            return Outcome::Failed(format!("connected, then no echo: {e}"));
        }
        if b != m.as_bytes() {
            return Outcome::Failed("connected, echo differs".into());
        }
        bytes += m.len();
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Outcome::Exchanged {
        messages: msgs.len(),
        bytes,
        ms: t0.elapsed().as_millis(),
    }
}

/// Send three datagrams from `src`, each answered by its echo.
fn udp_exchange(src: Ipv4Addr, dst: SocketAddrV4, msgs: &[String], timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let sock = match UdpSocket::bind(SocketAddrV4::new(src, 0)) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("bind: {e}")),
    };
    if let Err(e) = sock.connect(dst) {
        return Outcome::Failed(format!("connect: {e}"));
    }
    let _ = sock.set_read_timeout(Some(timeout));
    let mut bytes = 0;
    for m in msgs {
        if let Err(e) = sock.send(m.as_bytes()) {
            return classify(&e, t0);
        }
        let mut b = [0u8; 512];
        match sock.recv(&mut b) {
            Ok(n) if &b[..n] == m.as_bytes() => bytes += n,
            Ok(_) => return Outcome::Failed("answer differs from the query".into()),
            Err(e) => return classify(&e, t0),
        }
    }
    Outcome::Exchanged {
        messages: msgs.len(),
        bytes,
        ms: t0.elapsed().as_millis(),
    }
}

fn probe_once(ns: &NetNs, p: &Probe) -> Result<Outcome> {
    let c = client(p.who);
    let allowed = matches!(p.expect, Expect::Allow { .. });
    let timeout = if allowed { ALLOW_TIMEOUT } else { DENY_TIMEOUT };
    // A denied attempt sends one message: one SYN or datagram is enough to be dropped.
    let mut msgs = messages(c, p.what);
    if !allowed {
        msgs.truncate(1);
    }
    let (dst, proto, src) = (p.dst, p.proto, c.ip);
    ns.run(move || match proto {
        Proto::Tcp => tcp_exchange(dst, &msgs, timeout),
        Proto::Udp => udp_exchange(src, dst, &msgs, timeout),
    })
}

/// Connect attempts to every port at once; returns (port, outcome) pairs.
fn scan(ns: &NetNs, target: Ipv4Addr) -> Result<Vec<(u16, Outcome)>> {
    ns.run(move || {
        // Threads started here inherit this thread's network namespace.
        std::thread::scope(|s| {
            let handles: Vec<_> = SCAN_PORTS
                .iter()
                .map(|&port| {
                    s.spawn(move || {
                        let t0 = Instant::now();
                        let dst = SocketAddr::V4(SocketAddrV4::new(target, port));
                        let o = match TcpStream::connect_timeout(&dst, SCAN_TIMEOUT) {
                            Ok(_) => Outcome::Exchanged {
                                messages: 0,
                                bytes: 0,
                                ms: t0.elapsed().as_millis(),
                            },
                            Err(e) => classify(&e, t0),
                        };
                        (port, o)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or((0, Outcome::Failed("scan thread panicked".into())))
                })
                .collect()
        })
    })
}

// ---------------------------------------------------------------- connection logs

fn read_log(path: &Path) -> (Vec<Value>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut recs = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => recs.push(v),
            _ => bad.push(line.to_string()),
        }
    }
    (recs, bad)
}

fn ip_of(v: &Value) -> Option<IpAddr> {
    let ip: IpAddr = v.as_str()?.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn port_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or("")
}

fn is_event(r: &Value, event: &str, src: Ipv4Addr) -> bool {
    s(r, "event") == event && ip_of(&r["src_ip"]) == Some(IpAddr::V4(src))
}

/// Records of `event` from `src` to `dst` over `proto`.
fn find<'a>(
    recs: &'a [Value],
    event: &str,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    proto: Proto,
) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| {
            is_event(r, event, src)
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(*dst.ip()))
                && port_of(&r["dst_port"]) == Some(u64::from(dst.port()))
                && s(r, "protocol").eq_ignore_ascii_case(proto.name())
        })
        .collect()
}

fn looks_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (t.ends_with('Z')
            || t.ends_with('z')
            || b[b.len() - 6] == b'+'
            || b[b.len() - 6] == b'-')
}

/// Fields missing from a record (by its event), and what is malformed.
fn record_problems(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = r.as_object() else {
        return vec!["not an object".into()];
    };
    let event = s(r, "event");
    let mut required: Vec<&str> = BASE_FIELDS.to_vec();
    match event {
        "flow_end" => required.extend(FLOW_END_FIELDS),
        "scan_alert" => required.push("distinct_ports"),
        "deny" => required.push("suppressed"),
        _ => {}
    }
    for k in required {
        if !obj.contains_key(k) {
            out.push(format!("missing `{k}`"));
        }
    }
    if !EVENTS.contains(&event) {
        out.push(format!("unknown event {event:?}"));
    }
    if !looks_rfc3339(s(r, "timestamp")) {
        out.push(format!("timestamp {} is not RFC 3339", r["timestamp"]));
    }
    out
}

/// A record as one line, nulls left out.
fn compact(r: &Value) -> String {
    match r.as_object() {
        Some(o) => {
            let m: serde_json::Map<String, Value> = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(m).to_string()
        }
        None => r.to_string(),
    }
}

/// What should be in the logs once the traffic is done (waited for, bounded).
fn missing_records(conn: &[Value], dev: &[Value]) -> Vec<String> {
    let mut missing = Vec::new();
    for p in probes() {
        let c = client(p.who);
        let mut want = |log: &[Value], name: &str, event: &str| {
            if find(log, event, c.ip, p.dst, p.proto).is_empty() {
                missing.push(format!(
                    "{name} log: {event} {} -> {}/{}",
                    c.ip,
                    p.dst,
                    p.proto.name()
                ));
            }
        };
        match p.expect {
            Expect::Allow { .. } => {
                want(conn, "connector", "flow_start");
                want(conn, "connector", "flow_end");
                if p.who == Who::Alice {
                    want(dev, "device", "flow_start");
                    want(dev, "device", "flow_end");
                }
            }
            Expect::Deny {
                at: Where::ClientEgress,
                ..
            } => want(dev, "device", "deny"),
            Expect::Deny {
                at: Where::Connector,
                ..
            } => want(conn, "connector", "deny"),
        }
    }
    if !conn.iter().any(|r| is_event(r, "scan_alert", BOB.ip)) {
        missing.push(format!("connector log: scan_alert from {}", BOB.ip));
    }
    missing
}

// ---------------------------------------------------------------- the environment

/// Everything the demo runs, in teardown order: agents first (detached while their
/// namespaces exist), then the servers, then the namespaces.
struct Env {
    agents: Vec<Agent>,
    services: Option<Services>,
    /// The controller process (stopped last).
    controller: Option<Child>,
    /// The admin API key `gateway-controller init` printed, and the deployment's CA.
    api_key: String,
    ca: PathBuf,
    ctl: NetNs,
    alice: NetNs,
    bob: NetNs,
    conn: NetNs,
    res: NetNs,
    /// alice's uplink, and the connector's links toward alice and bob.
    alice_if: String,
    conn_alice_if: String,
    conn_bob_if: String,
}

impl Env {
    /// Stops the controller (SIGTERM, then SIGKILL after 5 s).
    fn stop_controller(&mut self) -> String {
        let Some(mut child) = self.controller.take() else {
            return "not running".into();
        };
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return format!("exited ({st})"),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return "killed after 5 s".into();
                }
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Agents first (their Drop stops and detaches them), then the controller.
        self.agents.clear();
        self.stop_controller();
    }
}

/// Removes the temporary folder on drop unless asked to keep it.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        })
}

/// Runs the demo; `Ok(true)` when every check passed and nothing was left behind.
pub fn run(opts: &Options) -> Result<bool> {
    START.get_or_init(Instant::now);
    install_signal_handlers();
    if !gateway_test_support::privileges::is_root() {
        bail!(
            "the demo creates network namespaces and loads eBPF programs: run it as root \
             (e.g. `sudo -E cargo xtask demo`)"
        );
    }
    if !opts.agent.is_file() {
        bail!(
            "gateway-agent not found at {} (build it: cargo build --release -p gateway-user \
             --bin gateway-agent)",
            opts.agent.display()
        );
    }
    println!("zt-gateway demo: two laptops, a connector and a resource host, with real traffic");
    let mut checks = Checks::default();
    let mut created = Created {
        keep_temp: opts.keep_logs,
        ..Created::default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(opts, &mut checks, &mut created)
    }));
    // Every guard of the scenario has been dropped by now (also after an error or panic).
    let scenario_error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    };
    if let Some(e) = &scenario_error {
        println!("\nthe demo stopped early: {e}");
    }
    let leftovers = verify_cleanup(&created);
    println!("\n== cleanup");
    if leftovers.is_empty() {
        println!(
            "  nothing left behind: {} namespaces, {} interfaces, {} pin folders and {} agent \
             processes are gone{}",
            created.namespaces.len(),
            created.interfaces.len(),
            created.pin_dirs.len(),
            created.pids.len(),
            if opts.keep_logs {
                format!(
                    " (configs and logs kept in {})",
                    created
                        .temp_dir
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                ", temporary folder removed".into()
            }
        );
    }
    for l in &leftovers {
        checks.check(false, format!("left behind: {l}"));
    }
    println!(
        "\n== result: {} checks passed, {} failed{} ({:.1}s)",
        checks.passed,
        checks.failed.len(),
        if scenario_error.is_some() {
            ", stopped early"
        } else {
            ""
        },
        elapsed()
    );
    for f in &checks.failed {
        println!("  FAILED: {f}");
    }
    let ok = checks.failed.is_empty() && scenario_error.is_none();
    println!(
        "{}",
        if ok {
            "demo OK: the gateway enforced the policy exactly as written"
        } else {
            "demo FAILED"
        }
    );
    Ok(ok)
}

fn verify_cleanup(created: &Created) -> Vec<String> {
    let mut left = Vec::new();
    for ns in &created.namespaces {
        if gateway_test_support::netns::exists(ns) {
            left.push(format!("namespace {ns}"));
            // Last resort, so a failed run does not pile up namespaces.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
    let host_links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for iface in &created.interfaces {
        let present = host_links.lines().any(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next() == Some(iface.as_str()))
                .unwrap_or(false)
        });
        if present {
            left.push(format!("interface {iface} in the host namespace"));
        }
    }
    for dir in &created.pin_dirs {
        if dir.exists() {
            left.push(format!("pin folder {}", dir.display()));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    for pid in &created.pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // A reused pid would have another command name.
        if stat.contains("(gateway-agent)") {
            left.push(format!("agent process {pid}"));
        }
    }
    if let Some(dir) = &created.temp_dir
        && dir.exists()
        && !created.keep_temp
    {
        left.push(format!("temporary folder {}", dir.display()));
    }
    left
}

fn scenario(opts: &Options, checks: &mut Checks, created: &mut Created) -> Result<()> {
    let tmp = TempDir {
        path: std::env::temp_dir().join(format!("zt-demo-{}", std::process::id())),
        keep: opts.keep_logs,
    };
    let _ = std::fs::remove_dir_all(&tmp.path);
    std::fs::create_dir_all(&tmp.path)
        .with_context(|| format!("creating {}", tmp.path.display()))?;
    created.temp_dir = Some(tmp.path.clone());

    let policy = prepare_policy(opts, &tmp.path, checks)?;
    check_interrupted()?;
    let mut env = build_hosts(created)?;
    check_interrupted()?;
    let tokens = start_controller(opts, &mut env, &tmp.path, &policy, checks, created)?;
    check_interrupted()?;
    start_agents(opts, &mut env, &tmp.path, &tokens, created)?;
    check_interrupted()?;
    println!("\n== services on the resource host (echo servers)");
    env.services = Some(Services::start(&env.res)?);
    for (name, addr, proto) in SERVICES {
        progress!("{name:<4} {addr}/{}", proto.name());
    }
    let traffic = drive_traffic(&env)?;
    let logs = collect_logs(&env, checks)?;
    report_probes(checks, &env, &traffic, &logs)?;
    report_scan(checks, &traffic, &logs);
    report_logs(checks, &logs);
    report_status(checks, &env);
    teardown(checks, env)
}

/// Writes the policy into the demo folder and runs `gatewayctl policy check` on it.
fn prepare_policy(opts: &Options, dir: &Path, checks: &mut Checks) -> Result<PathBuf> {
    let policy_path = dir.join("demo.toml");
    let policy_text = match &opts.policy {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEMO_POLICY.to_string(),
    };
    std::fs::write(&policy_path, &policy_text)?;
    let shown = opts
        .policy
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "examples/demo.toml (embedded)".into());
    println!("\n== policy {shown}");
    print_policy_overview(&policy_text);
    match &opts.gatewayctl {
        Some(ctl) if ctl.is_file() => {
            let mut cmd = Command::new(ctl);
            cmd.args(["policy", "check"]).arg(&policy_path);
            let out = run_bounded(cmd, Duration::from_secs(30))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let last = text.lines().last().unwrap_or("").to_string();
            progress!("gatewayctl policy check: {last}");
            let err = String::from_utf8_lossy(&out.stderr);
            if !checks.check(
                out.status.success(),
                format!("gatewayctl policy check passes: {last} {}", err.trim()),
            ) {
                print!("{text}");
            }
        }
        _ => progress!("gatewayctl not given: skipping `gatewayctl policy check`"),
    }
    Ok(policy_path)
}

/// The four hosts, printed.
fn build_hosts(created: &mut Created) -> Result<Env> {
    println!("\n== hosts (network namespaces joined by veth pairs)");
    if !bpffs_mounted() {
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .context("mount -t bpf")?;
        if !st.success() {
            bail!("/sys/fs/bpf is not bpffs and mounting it failed ({st})");
        }
        progress!(
            "mounted bpffs on /sys/fs/bpf (it was not mounted; it stays, as on systemd hosts)"
        );
    }
    let env = build_env(created)?;
    let (conn_alice_if, conn_bob_if) = (&env.conn_alice_if, &env.conn_bob_if);
    progress!(
        "alice     {:<10} {}/24 via {}   (laptop, runs the agent as device alice-laptop)",
        env.alice.name(),
        ALICE.ip,
        ALICE.gateway
    );
    progress!(
        "bob       {:<10} {}/24 via {}   (laptop, no agent)",
        env.bob.name(),
        BOB.ip,
        BOB.gateway
    );
    progress!(
        "connector {:<10} {} / {} / {} (forwarding; agent as {CONNECTOR} on {conn_alice_if}, {conn_bob_if})",
        env.conn.name(),
        ALICE.gateway,
        BOB.gateway,
        CONN_RES_IP
    );
    progress!(
        "resources {:<10} {WEB} web, {DB} db, {DNS} dns",
        env.res.name()
    );
    Ok(env)
}

/// Enrollment tokens for the two agents, and the CA they pin.
struct Tokens {
    connector: String,
    device: String,
    ca: PathBuf,
}

/// `gatewayctl --controller URL ARGS` run on the controller's host.
fn gatewayctl(opts: &Options, env: &Env, args: &[&str]) -> Result<Output> {
    let bin = opts.gatewayctl.as_deref().context(
        "gatewayctl is needed to apply the policy (build it: cargo build -p gatewayctl)",
    )?;
    let mut cmd = ns_command(env.ctl.name(), bin)?;
    cmd.args(["--controller", &controller_url()])
        .arg("--ca")
        .arg(&env.ca)
        .env("GATEWAYCTL_API_KEY", &env.api_key)
        .args(args);
    run_bounded(cmd, Duration::from_secs(30))
}

/// Starts `gateway-controller` on its host, applies the policy with `gatewayctl apply`
/// and mints one enrollment token per agent.
fn start_controller(
    opts: &Options,
    env: &mut Env,
    dir: &Path,
    policy: &Path,
    checks: &mut Checks,
    created: &mut Created,
) -> Result<Tokens> {
    println!("\n== controller ({})", opts.controller.display());
    if !opts.controller.is_file() {
        bail!(
            "gateway-controller not found at {} (build it: cargo build --release -p controller)",
            opts.controller.display()
        );
    }
    let db = dir.join("controller.db");
    let tls = dir.join("tls");
    // A new deployment: its own CA, the controller's certificate, the first admin key.
    let mut init = Command::new(&opts.controller);
    init.args(["init", "--db"])
        .arg(&db)
        .arg("--tls-dir")
        .arg(&tls)
        .args(["--san", &CTL_IP.to_string(), "--key-name", "demo-admin"]);
    let out = run_bounded(init, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "gateway-controller init failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    env.api_key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    env.ca = tls.join("ca.pem");
    progress!(
        "gateway-controller init: CA and server certificate in {}, admin API key minted (shown once)",
        tls.display()
    );
    let listen = format!("{CTL_IP}:{CTL_PORT}");
    let mut cmd = ns_command(env.ctl.name(), &opts.controller)?;
    cmd.args(["run", "--listen", &listen, "--tls-dir"])
        .arg(&tls)
        .arg("--db")
        .arg(&db)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("controller.stdout"))?)
        .stderr(File::create(dir.join("controller.stderr"))?);
    let child = cmd.spawn().context("starting gateway-controller")?;
    created.pids.push(child.id());
    env.controller = Some(child);
    progress!(
        "gateway-controller run --listen {listen} --tls-dir {} --db {} (in {})",
        tls.display(),
        db.display(),
        env.ctl.name()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupted()?;
        if gatewayctl(opts, env, &["agents"])?.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the controller did not answer within 20 s; its stderr:\n{}",
                tail(&dir.join("controller.stderr"), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let policy_arg = policy.display().to_string();
    let out = gatewayctl(opts, env, &["apply", "--yes", &policy_arg])?;
    let text = String::from_utf8_lossy(&out.stdout);
    progress!("gatewayctl apply --yes {}:", policy.display());
    // The plan: object rows summarised by their count line, host rows in full.
    for l in text.lines().filter(|l| {
        let t = l.trim_start();
        !(t.starts_with("+ added") || t.starts_with("~ changed") || t.starts_with("- removed"))
    }) {
        println!("         {l}");
    }
    if !checks.check(
        out.status.success(),
        format!(
            "gatewayctl apply succeeds: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    ) {
        bail!("the policy could not be applied to the controller");
    }
    let token = |host: &str| -> Result<String> {
        let out = gatewayctl(opts, env, &["enroll-token", "--host", host, "--ttl", "10m"])?;
        if !out.status.success() {
            bail!(
                "enroll-token for {host}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        progress!("enrollment token for {host} minted (shown once, handed to its agent)");
        Ok(t)
    };
    Ok(Tokens {
        connector: token(&format!("connector:{CONNECTOR}"))?,
        device: token(&format!("device:{}", ALICE.device))?,
        ca: env.ca.clone(),
    })
}

/// Starts the connector's and alice's agents and waits until both enforce.
fn start_agents(
    opts: &Options,
    env: &mut Env,
    dir: &Path,
    tokens: &Tokens,
    created: &mut Created,
) -> Result<()> {
    println!("\n== agents ({})", opts.agent.display());
    let pid = std::process::id();
    let (alice_if, conn_alice_if, conn_bob_if) = (
        env.alice_if.clone(),
        env.conn_alice_if.clone(),
        env.conn_bob_if.clone(),
    );
    let conn_cfg = AgentConfig {
        role: "connector",
        name: CONNECTOR.into(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/zt-demo-{pid}-connector")),
        xdp_interfaces: vec![conn_alice_if.clone(), conn_bob_if.clone()],
        tc_egress_interfaces: vec![conn_alice_if.clone(), conn_bob_if.clone()],
        xdp_mode: "native",
        log_file: dir.join("connector.log"),
        log_format: "json",
        metrics_listen: Some(format!("127.0.0.1:{METRICS_PORT}")),
        flow_timeouts: DemoTimeouts::short(),
        controller: ControllerSection {
            url: controller_url(),
            ca_file: tokens.ca.clone(),
            enrollment_token: tokens.connector.clone(),
            identity_file: dir.join("connector.identity.json"),
        },
    };
    let dev_cfg = AgentConfig {
        role: "device",
        name: ALICE.device.into(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/zt-demo-{pid}-alice")),
        xdp_interfaces: vec![alice_if.clone()],
        tc_egress_interfaces: vec![alice_if.clone()],
        xdp_mode: "native",
        log_file: dir.join("alice-laptop.log"),
        log_format: "json",
        metrics_listen: None,
        flow_timeouts: DemoTimeouts::short(),
        controller: ControllerSection {
            url: controller_url(),
            ca_file: tokens.ca.clone(),
            enrollment_token: tokens.device.clone(),
            identity_file: dir.join("alice-laptop.identity.json"),
        },
    };
    for cfg in [&conn_cfg, &dev_cfg] {
        if cfg.pin_dir.exists() {
            bail!(
                "{} exists already (a crashed earlier demo with the same pid?); remove it \
                 with `gateway-agent detach` or rm -r",
                cfg.pin_dir.display()
            );
        }
    }
    for (label, ns, stem, cfg) in [
        (
            format!("connector {CONNECTOR}"),
            &env.conn,
            "connector",
            conn_cfg,
        ),
        (
            format!("device {}", ALICE.device),
            &env.alice,
            "alice-laptop",
            dev_cfg,
        ),
    ] {
        progress!(
            "starting {label}: nsenter --net=/run/netns/{} gateway-agent run --config {}/{stem}.toml",
            ns.name(),
            dir.display()
        );
        let agent = Agent::start(&label, ns, &opts.agent, dir, stem, cfg, created)?;
        env.agents.push(agent);
        let t0 = Instant::now();
        let agent = env.agents.last_mut().context("agent just pushed")?;
        let ready = agent.wait_ready(Duration::from_secs(30))?;
        let err = std::fs::read_to_string(&agent.stderr).unwrap_or_default();
        for l in err
            .lines()
            .filter(|l| l.contains("attached") || l.contains("WARNING"))
        {
            println!("         {}", l.trim_start_matches("gateway-agent: "));
        }
        progress!("{label} {ready} ({} ms)", t0.elapsed().as_millis());
    }
    Ok(())
}

/// What the clients experienced.
struct Traffic {
    results: Vec<(Probe, Outcome)>,
    scan: Vec<(u16, Outcome)>,
}

/// Every probe in order, then bob's port scan.
fn drive_traffic(env: &Env) -> Result<Traffic> {
    println!("\n== traffic");
    let mut results = Vec::new();
    for p in probes() {
        check_interrupted()?;
        let c = client(p.who);
        let ns = match p.who {
            Who::Alice => &env.alice,
            Who::Bob => &env.bob,
        };
        let o = probe_once(ns, &p)?;
        let expected = match p.expect {
            Expect::Allow { .. } => "allow",
            Expect::Deny { .. } => "deny",
        };
        progress!(
            "{:<5} -> {:<7} {:<20} expected {expected:<5}: {}",
            c.name,
            p.what,
            format!("{}/{}", p.dst, p.proto.name()),
            o.describe()
        );
        results.push((p, o));
    }
    check_interrupted()?;
    let scan_t0 = Instant::now();
    let scan_results = scan(&env.bob, WEB)?;
    let scan_blocked = scan_results.iter().filter(|(_, o)| o.blocked()).count();
    let scan_reached = scan_results.iter().filter(|(_, o)| o.reached()).count();
    progress!(
        "bob   -> port scan of {WEB}: {} TCP ports in {} ms: {scan_blocked} without answer, {} answered",
        SCAN_PORTS.len(),
        scan_t0.elapsed().as_millis(),
        scan_reached
    );

    Ok(Traffic {
        results,
        scan: scan_results,
    })
}

/// Both agents' connection logs.
struct Logs {
    conn: Vec<Value>,
    dev: Vec<Value>,
    conn_path: PathBuf,
    dev_path: PathBuf,
}

/// Waits (bounded) until every expected record is in the logs, then reads them.
fn collect_logs(env: &Env, checks: &mut Checks) -> Result<Logs> {
    let conn_log = env.agents[0].log.clone();
    let dev_log = env.agents[1].log.clone();
    let wait_t0 = Instant::now();
    let log_deadline = Instant::now() + Duration::from_secs(IDLE_TIMEOUT_SECS * 3 + 6);
    let mut missing;
    loop {
        let (conn, _) = read_log(&conn_log);
        let (dev, _) = read_log(&dev_log);
        missing = missing_records(&conn, &dev);
        if missing.is_empty() || Instant::now() > log_deadline {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    progress!(
        "connection logs complete after {:.1}s (UDP flows end after {IDLE_TIMEOUT_SECS} s idle){}",
        wait_t0.elapsed().as_secs_f64(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(": {} expected records still missing", missing.len())
        }
    );
    for m in &missing {
        checks.check(false, format!("expected record not logged: {m}"));
    }
    let (conn, conn_bad) = read_log(&conn_log);
    let (dev, dev_bad) = read_log(&dev_log);
    for (name, bad) in [("connector", &conn_bad), ("device", &dev_bad)] {
        checks.check(
            bad.is_empty(),
            format!(
                "{name} log: {} lines are not JSON objects (first: {:?})",
                bad.len(),
                bad.first()
            ),
        );
    }

    Ok(Logs {
        conn,
        dev,
        conn_path: conn_log,
        dev_path: dev_log,
    })
}

/// Each probe against the policy, on the client, the resource host and in the logs.
fn report_probes(checks: &mut Checks, env: &Env, traffic: &Traffic, logs: &Logs) -> Result<()> {
    let (conn, dev) = (&logs.conn, &logs.dev);
    let results = &traffic.results;
    println!("\n== what happened (checked against the policy)");
    let services = env.services.as_ref().context("services started above")?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "  {:<6} {:<20} {:<8} {:<34} logged",
        "who", "destination", "result", "stopped at"
    );
    for (p, o) in results {
        let c = client(p.who);
        let dst = format!("{} {}/{}", p.what, p.dst.port(), p.proto.name());
        let label = format!("{} -> {} {}/{}", c.name, p.what, p.dst, p.proto.name());
        let conn_start = find(conn, "flow_start", c.ip, p.dst, p.proto);
        let conn_end = find(conn, "flow_end", c.ip, p.dst, p.proto);
        let conn_deny = find(conn, "deny", c.ip, p.dst, p.proto);
        let dev_deny = find(dev, "deny", c.ip, p.dst, p.proto);
        let service = SERVICES
            .iter()
            .find(|(_, a, pr)| *a == p.dst && *pr == p.proto)
            .map(|(n, _, _)| *n);
        let server_saw = service.map_or(0, |n| services.saw(n, c.ip));
        match p.expect {
            Expect::Allow { rule } => {
                checks.check(
                    matches!(o, Outcome::Exchanged { .. }),
                    format!("{label} is allowed and must work: {}", o.describe()),
                );
                checks.check(
                    server_saw >= 1,
                    format!("{label}: the resource host never saw it"),
                );
                check_allowed_records(checks, &label, p, rule, &conn_start, &conn_end);
                if p.who == Who::Alice {
                    let dev_start = find(dev, "flow_start", c.ip, p.dst, p.proto);
                    checks.check(
                        dev_start
                            .iter()
                            .any(|r| s(r, "rule") == rule && s(r, "host") == "device:alice-laptop"),
                        format!("{label}: alice's own log has a flow_start naming rule {rule}"),
                    );
                }
                let counters = conn_end
                    .first()
                    .map(|r| {
                        format!(
                            "{} pkts/{} B out, {} pkts/{} B back",
                            r["packets"], r["bytes"], r["reply_packets"], r["reply_bytes"]
                        )
                    })
                    .unwrap_or_else(|| "no flow_end".into());
                let _ = writeln!(
                    table,
                    "  {:<6} {:<20} {:<8} {:<34} flow_start+flow_end, rule {rule}, {counters}",
                    c.name, dst, "reached", "-"
                );
            }
            Expect::Deny { at, reason, rule } => {
                checks.check(
                    o.blocked(),
                    format!(
                        "{label} is denied and must not get through: {}",
                        o.describe()
                    ),
                );
                checks.check(
                    server_saw == 0,
                    format!("{label}: the resource host saw {server_saw} connections"),
                );
                let (here, other, here_name, other_name) = match at {
                    Where::ClientEgress => (&dev_deny, &conn, "alice's own log", "connector"),
                    Where::Connector => (&conn_deny, &dev, "connector log", "device"),
                };
                let good = |r: &&Value| {
                    s(r, "verdict") == "deny"
                        && s(r, "reason") == reason
                        && s(r, "user") == c.user
                        && s(r, "device") == c.device
                        && s(r, "resource") == p.resource
                        && s(r, "remote_network") == NETWORK
                        && rule.is_none_or(|rule| s(r, "rule") == rule)
                };
                checks.check(
                    here.iter().any(good),
                    format!(
                        "{label}: {here_name} has a deny with reason {reason}{}, user {}, device \
                         {}, resource {}, network {NETWORK} (got: {})",
                        rule.map(|r| format!(", rule {r}")).unwrap_or_default(),
                        c.user,
                        c.device,
                        p.resource,
                        here.first()
                            .map(|r| compact(r))
                            .unwrap_or_else(|| "none".into())
                    ),
                );
                if at == Where::ClientEgress {
                    // Stopped on alice's host: the connector never saw the packet.
                    let seen: Vec<&Value> = other
                        .iter()
                        .filter(|r| {
                            ip_of(&r["src_ip"]) == Some(IpAddr::V4(c.ip))
                                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(*p.dst.ip()))
                                && port_of(&r["dst_port"]) == Some(u64::from(p.dst.port()))
                        })
                        .collect();
                    checks.check(
                        seen.is_empty(),
                        format!(
                            "{label}: stopped on alice's host, yet the {other_name} logged it: {}",
                            seen.first().map(|r| compact(r)).unwrap_or_default()
                        ),
                    );
                }
                let where_ = match (at, here.is_empty()) {
                    (Where::ClientEgress, false) => "alice's laptop (agent, TC egress)",
                    (Where::Connector, false) => "connector (XDP ingress)",
                    (_, true) => "? (no deny logged)",
                };
                let how = here
                    .first()
                    .map(|r| {
                        let rule = s(r, "rule");
                        format!(
                            "deny {}{}",
                            s(r, "reason"),
                            if rule.is_empty() {
                                String::new()
                            } else {
                                format!(", rule {rule}")
                            }
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    table,
                    "  {:<6} {:<20} {:<8} {:<34} {how}",
                    c.name,
                    dst,
                    if o.blocked() { "blocked" } else { "LEAKED" },
                    where_
                );
            }
        }
    }
    print!("{table}");
    // Bob (no agent) must not have reached anything on the resource host.
    checks.check(
        services.saw_from(BOB.ip) == 0,
        format!(
            "the resource host saw {} connections from bob",
            services.saw_from(BOB.ip)
        ),
    );

    Ok(())
}

/// The scan: nothing answered, exactly one alert naming bob.
fn report_scan(checks: &mut Checks, traffic: &Traffic, logs: &Logs) {
    let (conn, scan_results) = (&logs.conn, &traffic.scan);
    let scan_blocked = scan_results.iter().filter(|(_, o)| o.blocked()).count();
    let scan_reached: Vec<u16> = scan_results
        .iter()
        .filter(|(_, o)| o.reached())
        .map(|(p, _)| *p)
        .collect();
    let alerts: Vec<&Value> = conn
        .iter()
        .filter(|r| is_event(r, "scan_alert", BOB.ip))
        .collect();
    let scan_denies: Vec<&Value> = conn
        .iter()
        .filter(|r| {
            is_event(r, "deny", BOB.ip)
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(WEB))
                && port_of(&r["dst_port"])
                    .is_some_and(|p| SCAN_PORTS.iter().any(|&s| u64::from(s) == p))
        })
        .collect();
    let suppressed: u64 = conn
        .iter()
        .filter(|r| is_event(r, "deny", BOB.ip))
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    println!("\n== port scan");
    checks.check(
        scan_reached.is_empty(),
        format!("the scan got answers from ports {scan_reached:?}: they must be dropped"),
    );
    checks.check(
        scan_blocked == SCAN_PORTS.len(),
        format!(
            "every scanned port must go unanswered, {} did not: {:?}",
            SCAN_PORTS.len() - scan_blocked,
            scan_results
                .iter()
                .filter(|(_, o)| !o.blocked())
                .map(|(p, o)| format!("{p}: {}", o.describe()))
                .collect::<Vec<_>>()
        ),
    );
    checks.check(
        alerts.len() == 1,
        format!("exactly one scan_alert for bob, got {}", alerts.len()),
    );
    if let Some(a) = alerts.first() {
        let distinct = a["distinct_ports"].as_u64().unwrap_or(0);
        checks.check(
            distinct >= 12,
            format!(
                "scan_alert distinct_ports >= 12, got {}",
                a["distinct_ports"]
            ),
        );
        checks.check(
            s(a, "user") == BOB.user && s(a, "device") == BOB.device,
            format!("scan_alert names bob and bob-laptop: {}", compact(a)),
        );
        println!(
            "  scan_alert at {} on {}: {} ({}) hit {distinct} distinct denied ports within 10 s",
            s(a, "timestamp"),
            s(a, "host"),
            s(a, "device"),
            s(a, "src_ip"),
        );
    }
    println!(
        "  no port answered; the connector logged {} deny records for the scanned ports (deny \
         records are rate-limited per source{}; its counters below count every drop)",
        scan_denies.len(),
        if suppressed > 0 {
            format!(", {suppressed} reported as suppressed")
        } else {
            String::new()
        }
    );
}

/// Field completeness of every record, counts, and sample records.
fn report_logs(checks: &mut Checks, logs: &Logs) {
    let (conn, dev, conn_log, dev_log) = (&logs.conn, &logs.dev, &logs.conn_path, &logs.dev_path);
    let alerts: Vec<&Value> = conn
        .iter()
        .filter(|r| is_event(r, "scan_alert", BOB.ip))
        .collect();
    let mut problems = Vec::new();
    for (name, recs) in [("connector", conn), ("device", dev)] {
        for r in recs {
            for p in record_problems(r) {
                problems.push(format!("{name} log: {p} in {}", compact(r)));
            }
        }
    }
    for p in problems.iter().take(10) {
        checks.check(false, p.clone());
    }
    if problems.len() > 10 {
        checks.check(
            false,
            format!("... and {} more record problems", problems.len() - 10),
        );
    }
    let count = |recs: &[Value], e: &str| recs.iter().filter(|r| s(r, "event") == e).count();
    println!("\n== connection logs");
    for (name, recs, path) in [
        ("connector demo-connector", &conn, &conn_log),
        ("device alice-laptop", &dev, &dev_log),
    ] {
        println!(
            "  {name}: {} records ({} flow_start, {} flow_end, {} deny, {} scan_alert) in {}",
            recs.len(),
            count(recs, "flow_start"),
            count(recs, "flow_end"),
            count(recs, "deny"),
            count(recs, "scan_alert"),
            path.display()
        );
    }
    println!(
        "  every record has all {} fields (+ per-event fields): {}",
        BASE_FIELDS.len(),
        if problems.is_empty() { "yes" } else { "NO" }
    );
    let web = SocketAddrV4::new(WEB, 443);
    if let Some(r) = find(conn, "flow_end", ALICE.ip, web, Proto::Tcp).first() {
        println!("\n  alice's web connection as the connector logged it (flow_end):");
        let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
        for l in pretty.lines() {
            println!("    {l}");
        }
    }
    println!("\n  more samples (one JSON object per line in the log; nulls left out here):");
    let samples = [
        find(
            dev,
            "deny",
            ALICE.ip,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            conn,
            "deny",
            BOB.ip,
            SocketAddrV4::new(DB, 5432),
            Proto::Tcp,
        )
        .first()
        .copied(),
        find(
            conn,
            "flow_end",
            ALICE.ip,
            SocketAddrV4::new(DNS, 53),
            Proto::Udp,
        )
        .first()
        .copied(),
        alerts.first().copied(),
    ];
    for r in samples.into_iter().flatten() {
        println!("    {}", compact(r));
    }
}

/// Kernel counters (every drop counts, rate limit or not), `gateway-agent status`, metrics.
fn report_status(checks: &mut Checks, env: &Env) {
    let counter = |a: &Agent, reason: &str| -> Option<u64> {
        let out = a.status("json").ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["verdicts"][reason].as_u64()
    };
    let (conn_agent, dev_agent) = (&env.agents[0], &env.agents[1]);
    // Bob: web + dns (no grant) and the 30 scanned ports; db is denied by rule.
    let bob_no_grant = 2 + SCAN_PORTS.len() as u64;
    let c_ng = counter(conn_agent, "denied_no_grant");
    checks.check(
        c_ng.is_some_and(|n| n >= bob_no_grant),
        format!("connector counter denied_no_grant >= {bob_no_grant}, got {c_ng:?}"),
    );
    let c_rule = counter(conn_agent, "denied_by_rule");
    checks.check(
        c_rule.is_some_and(|n| n >= 1),
        format!("connector counter denied_by_rule >= 1, got {c_rule:?}"),
    );
    let d_ng = counter(dev_agent, "denied_no_grant");
    checks.check(
        d_ng.is_some_and(|n| n >= 2),
        format!("alice-laptop counter denied_no_grant >= 2, got {d_ng:?}"),
    );
    println!("\n== agent status (gateway-agent status)");
    for a in &env.agents {
        match a.status("text") {
            Ok(out) if out.status.success() => {
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  {l}");
                }
            }
            Ok(out) => {
                checks.check(
                    false,
                    format!(
                        "gateway-agent status for {}: {}",
                        a.label,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            Err(e) => {
                checks.check(
                    false,
                    format!("gateway-agent status for {}: {e:#}", a.label),
                );
            }
        }
        println!();
    }
    match scrape_metrics(&env.conn) {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.contains("scan") || l.contains("deny") || l.contains("denied"))
                .filter(|l| !l.ends_with(" 0"))
                .take(8)
                .collect();
            println!(
                "  metrics (connector, http://127.0.0.1:{METRICS_PORT}/metrics in its namespace), a few lines:"
            );
            for l in lines {
                println!("    {l}");
            }
        }
        Err(e) => println!("  (metrics not scraped: {e:#})"),
    }
}

/// Stops the agents (enforcement must continue), detaches them (it must stop), deletes
/// the hosts.
fn teardown(checks: &mut Checks, mut env: Env) -> Result<()> {
    println!("\n== teardown");
    for a in env.agents.iter_mut() {
        let r = a.stop();
        progress!(
            "stopped {}: {}",
            a.label,
            r.as_ref().map(String::as_str).unwrap_or("")
        );
        checks.check(
            r.is_ok(),
            format!(
                "agent {} stops cleanly: {}",
                a.label,
                r.err().map(|e| format!("{e:#}")).unwrap_or_default()
            ),
        );
    }
    let still = probe_once(&env.bob, &probes()[4])?;
    let alice_web = probe_once(&env.alice, &probes()[0])?;
    progress!(
        "with both agents stopped: bob -> web {}, alice -> web {}",
        if still.blocked() {
            "still blocked"
        } else {
            "GOT THROUGH"
        },
        if matches!(alice_web, Outcome::Exchanged { .. }) {
            "still works"
        } else {
            "FAILS"
        }
    );
    checks.check(
        still.blocked(),
        format!(
            "enforcement continues after the agents exit: bob -> web {}",
            still.describe()
        ),
    );
    checks.check(
        matches!(alice_web, Outcome::Exchanged { .. }),
        format!(
            "alice -> web after the agents exit: {}",
            alice_web.describe()
        ),
    );
    for a in env.agents.iter_mut() {
        let r = a.detach();
        match &r {
            Ok(removed) => progress!(
                "gateway-agent detach ({}): removed {} pins (links, programs, maps)",
                a.label,
                removed.len()
            ),
            Err(e) => progress!("gateway-agent detach ({}): {e:#}", a.label),
        }
        checks.check(r.is_ok(), format!("gateway-agent detach for {}", a.label));
        checks.check(
            !a.pin_dir.exists(),
            format!("{} is gone after detach", a.pin_dir.display()),
        );
    }
    let after = probe_once(&env.bob, &probes()[4])?;
    progress!(
        "after detach the programs are gone: bob -> web {}",
        if after.reached() {
            "reaches the server (no gateway any more)"
        } else {
            "gets no answer"
        }
    );
    checks.check(
        matches!(after, Outcome::Exchanged { .. }),
        format!(
            "after detach nothing enforces any more: bob -> web {}",
            after.describe()
        ),
    );
    env.agents.clear();
    env.services = None;
    let how = env.stop_controller();
    progress!("stopped the controller: {how}");
    let names = [
        env.alice.name().to_string(),
        env.bob.name().to_string(),
        env.conn.name().to_string(),
        env.res.name().to_string(),
        env.ctl.name().to_string(),
    ];
    drop(env);
    progress!("deleted namespaces {}", names.join(", "));
    Ok(())
}

fn check_allowed_records(
    checks: &mut Checks,
    label: &str,
    p: &Probe,
    rule: &str,
    starts: &[&Value],
    ends: &[&Value],
) {
    let c = client(p.who);
    checks.check(
        starts.iter().any(|r| {
            s(r, "verdict") == "allow"
                && s(r, "reason") == "allowed"
                && s(r, "user") == c.user
                && s(r, "device") == c.device
                && s(r, "resource") == p.resource
                && s(r, "connector") == CONNECTOR
                && s(r, "remote_network") == NETWORK
                && s(r, "rule") == rule
                && s(r, "host") == format!("connector:{CONNECTOR}")
        }),
        format!(
            "{label}: the connector logs flow_start with user {}, device {}, resource {}, \
             connector {CONNECTOR}, network {NETWORK}, rule {rule} (got: {})",
            c.user,
            c.device,
            p.resource,
            starts
                .first()
                .map(|r| compact(r))
                .unwrap_or_else(|| "none".into())
        ),
    );
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    checks.check(
        ends.iter().any(|r| {
            n(r, "packets") >= 3
                && n(r, "reply_packets") >= 3
                && n(r, "bytes") > 0
                && n(r, "reply_bytes") > 0
        }),
        format!(
            "{label}: the connector logs flow_end with packets and replies counted (got: {})",
            ends.first()
                .map(|r| compact(r))
                .unwrap_or_else(|| "none".into())
        ),
    );
}

fn print_policy_overview(text: &str) {
    let Ok(v) = text.parse::<toml::Table>() else {
        println!("  (not TOML?)");
        return;
    };
    let names = |k: &str, field: &str| -> Vec<String> {
        v.get(k)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get(field).and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |k: &str, field: &str| names(k, field).join(", ");
    println!("  remote networks: {}", list("remote_network", "name"));
    println!("  resources:       {}", list("resource", "name"));
    println!("  users:           {}", list("user", "email"));
    println!("  devices:         {}", list("device", "name"));
    println!("  groups:          {}", list("group", "name"));
    println!(
        "  rules:           allow {}; deny {}",
        list("allow", "name"),
        list("deny", "name")
    );
    println!("  tests:           {}", names("test", "name").len());
}

fn scrape_metrics(conn: &NetNs) -> Result<String> {
    conn.run(|| -> Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.take(1 << 20).read_to_string(&mut body)?;
        Ok(body)
    })?
}

fn build_env(created: &mut Created) -> Result<Env> {
    let mut make = |prefix: &str| -> Result<NetNs> {
        let ns = NetNs::new(prefix)?;
        created.namespaces.push(ns.name().to_string());
        Ok(ns)
    };
    let alice = make("zda")?;
    let bob = make("zdb")?;
    let conn = make("zdc")?;
    let res = make("zdr")?;
    let ctl = make("zdk")?;
    let mut record = |(a, b): (VethEnd, VethEnd)| {
        created.interfaces.push(a.iface.clone());
        created.interfaces.push(b.iface.clone());
        (a.iface, b.iface)
    };
    let (alice_if, conn_alice_if) = record(veth_pair(
        &alice,
        &[&format!("{}/24", ALICE.ip)],
        &conn,
        &[&format!("{}/24", ALICE.gateway)],
    )?);
    let (_bob_if, conn_bob_if) = record(veth_pair(
        &bob,
        &[&format!("{}/24", BOB.ip)],
        &conn,
        &[&format!("{}/24", BOB.gateway)],
    )?);
    record(veth_pair(
        &conn,
        &[&format!("{CONN_RES_IP}/24")],
        &res,
        &[
            &format!("{WEB}/24"),
            &format!("{DB}/24"),
            &format!("{DNS}/24"),
        ],
    )?);
    record(veth_pair(
        &conn,
        &[&format!("{CONN_CTL_IP}/24")],
        &ctl,
        &[&format!("{CTL_IP}/24")],
    )?);
    ctl.ip(&["route", "add", "default", "via", &CONN_CTL_IP.to_string()])?;
    alice.ip(&["route", "add", "default", "via", &ALICE.gateway.to_string()])?;
    bob.ip(&["route", "add", "default", "via", &BOB.gateway.to_string()])?;
    res.ip(&["route", "add", "default", "via", &CONN_RES_IP.to_string()])?;
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(Env {
        agents: Vec::new(),
        services: None,
        controller: None,
        api_key: String::new(),
        ca: PathBuf::new(),
        ctl,
        alice,
        bob,
        conn,
        res,
        alice_if,
        conn_alice_if,
        conn_bob_if,
    })
}
