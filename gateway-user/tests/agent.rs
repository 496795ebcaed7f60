//! The real `gateway-agent` binary on a connector namespace: enforcement, connection logs,
//! metrics, policy edits (broken and good), `kill -9` and restart under traffic, status and
//! detach.
//!
//! ```text
//!  alice ──veth── conn (gateway-agent, connector "conn") ──veth── res (services)
//! ```

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::{
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    records::BASE_FIELDS,
    skip_unless_privileged,
};
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const TIMEOUT: Duration = Duration::from_millis(700);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A temp folder and a bpffs pin folder, both removed at the end.
struct Dirs {
    tmp: PathBuf,
    pin: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
        // Whatever a failed test left pinned goes too (links first: they hold programs).
        let _ = Command::new(AGENT)
            .args(["detach", "--config"])
            .arg(self.tmp.join("agent.toml"))
            .output();
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// Starts the agent in `conn` and waits for this run's `ready:` line.
fn start_agent(conn: &NetNs, cfg: &Path, stderr: &Path) -> AgentProcess {
    let mut agent =
        AgentProcess::start("conn", conn.name(), Path::new(AGENT), cfg, stderr).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    agent
}

fn serve(res: &NetNs) {
    gateway_test_support::testkit::tcp_echo_servers(
        res,
        &["198.18.1.5:443", "198.18.1.5:23", "198.18.1.10:5432"],
    )
    .unwrap();
}

/// Counts datagrams arriving on the resource host at `addr`.
fn udp_counter(res: &NetNs, addr: &str) -> Arc<AtomicU64> {
    gateway_test_support::net::udp_counter(res, addr, None).unwrap()
}

fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}")))
        .collect()
}

fn wait_record(
    log: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(r) = records(log).into_iter().find(|r| pred(r)) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no {what} record in {:#?}", records(log));
}

/// A strict reading of the Prometheus text format: `# HELP`/`# TYPE` comments, then
/// `name{label="value",...} number` samples, each metric named in a TYPE line.
fn check_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "bad TYPE line {line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line}"
            );
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(family),
            "sample without TYPE: {line}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

fn scrape(conn: &NetNs, addr: &str) -> String {
    conn.run(|| {
        let mut s = TcpStream::connect_timeout(&sa(addr), TIMEOUT).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .unwrap()
}

#[test]
fn agent_end_to_end() {
    if skip_unless_privileged!() {
        return;
    }
    let alice = NetNs::new("zaa").unwrap();
    let conn = NetNs::new("zac").unwrap();
    let res = NetNs::new("zar").unwrap();
    let (_a, ca) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(
        &conn,
        &["198.18.1.1/24"],
        &res,
        &["198.18.1.5/24", "198.18.1.10/24", "198.18.1.53/24"],
    )
    .unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    // A tunnel terminating on the connector, outside the gateway's hooks: the host checks
    // must warn about it at start, in the metrics and in `status`.
    let vx = unique_name("zavx");
    conn.ip(&[
        "link", "add", &vx, "type", "vxlan", "id", "42", "dstport", "4789",
    ])
    .unwrap();
    conn.ip(&["link", "set", &vx, "up"]).unwrap();
    serve(&res);

    let name = unique_name("zgwagent");
    let dirs = Dirs {
        tmp: std::env::temp_dir().join(&name),
        pin: PathBuf::from("/sys/fs/bpf").join(&name),
    };
    std::fs::create_dir_all(&dirs.tmp).unwrap();
    let policy = dirs.tmp.join("policy.toml");
    let log = dirs.tmp.join("connections.jsonl");
    let cfg = dirs.tmp.join("agent.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let metrics_addr = "127.0.0.1:9477";
    std::fs::write(
        &cfg,
        format!(
            "role = \"connector\"\nname = \"conn\"\npolicy_file = \"{}\"\npin_dir = \"{}\"\n\
             xdp_interfaces = [\"{iface}\"]\ntc_egress_interfaces = [\"{iface}\"]\n\
             log_file = \"{}\"\nmetrics_listen = \"{metrics_addr}\"\npolicy_poll_ms = 100\n",
            policy.display(),
            dirs.pin.display(),
            log.display(),
            iface = ca.iface,
        ),
    )
    .unwrap();
    let stderr = dirs.tmp.join("agent.stderr");
    // Control: without the agent the destinations denied below answer.
    for dst in ["198.18.1.5:23", "198.18.1.10:5432"] {
        assert!(
            tcp_echo_at(&alice, dst),
            "control: {dst} answers without the agent"
        );
    }
    let mut agent = start_agent(&conn, &cfg, &stderr);

    // --- One agent per pin folder: a second one with the same configuration refuses to
    // start, names the first, and leaves its pins alone.
    let stderr2 = dirs.tmp.join("agent2.stderr");
    let second =
        AgentProcess::start("second", conn.name(), Path::new(AGENT), &cfg, &stderr2).unwrap();
    let status = second.wait_exit(Duration::from_secs(20)).unwrap();
    let err2 = std::fs::read_to_string(&stderr2).unwrap_or_default();
    let first_pid = agent.pid().unwrap();
    assert!(
        !status.success()
            && err2.contains("an agent is already running with pin folder")
            && err2.contains(&format!("(pid {first_pid})")),
        "a second agent on the same pins must refuse, naming pid {first_pid} ({status}):\n{err2}"
    );
    assert!(!err2.contains("ready:"), "{err2}");

    let err = agent.stderr();
    assert!(
        err.contains(&format!(
            "WARN tunnel interface {vx} (vxlan) terminates on this host"
        )),
        "{err}"
    );
    assert!(err.contains("host checks: "), "{err}");

    // --- Enforcement and the connection log.
    assert!(tcp_echo_at(&alice, "198.18.1.5:443"), "alice -> web:443");
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:23"),
        "alice -> web:23 must be denied"
    );
    let start = wait_record(&log, "flow_start to web:443", |r| {
        r["event"] == "flow_start" && r["dst_port"] == 443
    });
    for f in &BASE_FIELDS {
        assert!(start.get(*f).is_some(), "field {f} missing in {start}");
    }
    assert_eq!(start["user"], "alice@example.com");
    assert_eq!(start["device"], "alice-laptop");
    assert_eq!(start["resource"], "web");
    assert_eq!(start["connector"], "conn");
    assert_eq!(start["remote_network"], "corp");
    assert_eq!(start["rule"], "eng-web");
    assert_eq!(start["protocol"], "tcp");
    assert_eq!(start["src_ip"], "198.19.1.10");
    let deny = wait_record(&log, "deny of web:23", |r| {
        r["event"] == "deny" && r["dst_port"] == 23
    });
    for f in &BASE_FIELDS {
        assert!(deny.get(*f).is_some(), "field {f} missing in {deny}");
    }
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["reason"], "denied_no_grant");

    // --- Metrics parse as Prometheus text and count what happened.
    std::thread::sleep(Duration::from_millis(2500));
    let body = scrape(&conn, metrics_addr);
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let samples = check_prometheus(text);
    assert!(samples["gateway_verdicts_total{reason=\"allowed\",action=\"pass\"}"] >= 1.0);
    assert!(samples["gateway_verdicts_total{reason=\"denied_no_grant\",action=\"drop\"}"] >= 1.0);
    assert!(samples["gateway_policy_generation"] >= 1.0);
    // Fill is reported against what one policy can use: half of each double-buffered map.
    assert_eq!(
        samples["gateway_map_capacity{map=\"rules\"}"],
        f64::from(gateway_common::maps::RULES_CAPACITY / 2)
    );
    assert_eq!(
        samples["gateway_map_capacity{map=\"rules_exact\"}"],
        f64::from(gateway_common::maps::RULES_EXACT_CAPACITY / 2)
    );
    // Every grant of the topology is a single port on a host: all in the exact-match maps.
    assert!(samples["gateway_map_entries{map=\"rules_exact\"}"] >= 1.0);
    assert!(samples["gateway_map_entries{map=\"dst_hosts\"}"] >= 1.0);
    assert!(samples["gateway_policy_apply_seconds_count"] >= 1.0);
    // The source filter holds the policy's principals: some bits, far from full.
    let fill = samples["gateway_source_filter_fill"];
    assert!(fill > 0.0 && fill < 0.01, "source filter fill {fill}");
    assert!(samples["gateway_host_checks_total"] >= 1.0);
    assert_eq!(
        samples[&format!("gateway_host_risk{{check=\"tunnel\",iface=\"{vx}\"}}")],
        1.0
    );
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("gateway_resource_events_total{resource=\"web\""))
    );

    // --- A broken edit is reported with its location; the previous policy stays.
    std::fs::write(&policy, format!("{POLICY}\n[[resource]]\nname = \"bad\"\nnetwork = \"corp\"\naddress = \"198.18.1.300\"\n")).unwrap();
    agent
        .wait_for("stays in force", Duration::from_secs(5))
        .unwrap();
    let err = agent.stderr();
    assert!(err.contains("policy.toml:"), "no location in: {err}");
    assert!(
        tcp_echo_at(&alice, "198.18.1.5:443"),
        "still allowed after a broken edit"
    );
    assert!(tcp_echo_at(&alice, "198.18.1.10:5432"), "db still allowed");
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:23"),
        "still denied after a broken edit"
    );
    // A good edit (revoking alice-db) is applied as a new generation.
    let applied = agent.count("applied");
    std::fs::write(
        &policy,
        POLICY.replace(
            "name = \"alice-db\"",
            "name = \"alice-db\"\nexpires_at = 2000-01-01T00:00:00Z",
        ),
    )
    .unwrap();
    agent
        .wait_for_count("applied", applied + 1, Duration::from_secs(5))
        .unwrap();
    assert!(tcp_dropped_at(&alice, "198.18.1.10:5432"), "db revoked");
    assert!(tcp_echo_at(&alice, "198.18.1.5:443"), "web still allowed");

    // --- kill -9 under traffic: no denied packet gets through, allowed flows go on.
    let denied_rx = udp_counter(&res, "198.18.1.53:54");
    let allowed_rx = udp_counter(&res, "198.18.1.53:53");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tx = alice
        .run(|| UdpSocket::bind(sa("198.19.1.10:0")).unwrap())
        .unwrap();
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = tx.send_to(b"denied", sa("198.18.1.53:54"));
            let _ = tx.send_to(b"allowed", sa("198.18.1.53:53"));
            sent2.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    let mut open = alice
        .run(|| TcpStream::connect_timeout(&sa("198.18.1.5:443"), TIMEOUT).unwrap())
        .unwrap();
    open.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut b = [0u8; 1];
    open.write_all(b"1").unwrap();
    open.read_exact(&mut b).unwrap();

    agent.crash();
    let allowed_at_kill = allowed_rx.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(800));
    let allowed_while_down = allowed_rx.load(Ordering::Relaxed) - allowed_at_kill;
    // The established flow works while no agent runs.
    open.write_all(b"2").unwrap();
    open.read_exact(&mut b).unwrap();
    let mut agent = start_agent(&conn, &cfg, &stderr);
    assert!(agent.stderr().contains("re-adopted"), "{}", agent.stderr());
    open.write_all(b"3").unwrap();
    open.read_exact(&mut b).unwrap();
    assert_eq!(b, *b"3", "established flow after restart");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 500, "traffic too thin: {sent} rounds");
    assert_eq!(
        denied_rx.load(Ordering::Relaxed),
        0,
        "denied datagrams got through"
    );
    assert!(
        allowed_while_down > 0,
        "allowed traffic stopped while the agent was down"
    );
    assert!(
        allowed_rx.load(Ordering::Relaxed) > sent / 2,
        "allowed datagrams lost"
    );

    // --- Status from pinned state.
    let st = Command::new(AGENT)
        .args(["status", "--output", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["policy_generation"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(st["links"].as_array().unwrap().len(), 2, "{st}");
    assert!(st["verdicts"]["denied_no_grant"].as_u64().unwrap() > 0);
    // `status` checks the namespace it runs in: the connector's.
    let st = conn
        .command_net_only(AGENT)
        .unwrap()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(text.contains("host checks:"), "{text}");
    assert!(
        text.contains(&format!("RISK link {vx} (vxlan) = up")),
        "{text}"
    );

    // --- Detach: everything goes, and traffic is no longer filtered.
    assert_eq!(agent.stop().unwrap(), "exited on SIGTERM");
    let removed = agent.detach().unwrap();
    assert!(!removed.is_empty(), "detach removed nothing");
    assert!(!dirs.pin.exists(), "pin folder left behind");
    let links = conn.ip(&["-d", "link", "show", &ca.iface]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("xdp"),
        "XDP still attached"
    );
    assert!(
        tcp_echo_at(&alice, "198.18.1.5:23"),
        "detached: nothing filters any more"
    );
}

fn tcp_echo_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_echo(ns, dst, TIMEOUT)
}

/// Dropped silently (the gateway's denial), as opposed to refused by a closed port.
fn tcp_dropped_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_dropped(ns, dst, TIMEOUT)
}
