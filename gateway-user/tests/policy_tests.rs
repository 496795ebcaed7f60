//! A standalone agent refuses a policy file whose own `[[test]]` blocks fail, like a
//! file with errors: it does not start with it, and a running agent keeps its previous
//! policy; `skip_policy_tests = true` enforces it anyway. Controls: the same file without
//! the failing test starts and is applied.
//!
//! ```text
//!  alice ──veth── conn (gateway-agent, connector "conn") ──veth── res (a TCP service)
//! ```

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_test_support::{
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const TIMEOUT: Duration = Duration::from_millis(700);

/// A test the topology policy contradicts: alice has no grant to telnet on web.
const FAILING_TEST: &str = "\n[[test]]\nname = \"alice reaches telnet on web\"\n\
    from = \"alice-laptop\"\nto = \"198.18.1.5:23/tcp\"\nexpect = \"allow\"\n";
/// A test the policy passes.
const PASSING_TEST: &str = "\n[[test]]\nname = \"alice reaches web\"\n\
    from = \"alice-laptop\"\nto = \"198.18.1.5:443/tcp\"\nexpect = \"allow\"\n";

struct Dirs {
    tmp: PathBuf,
    pin: PathBuf,
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

fn config(dirs: &Dirs, policy: &Path, iface: &str, skip: bool) -> PathBuf {
    let cfg = dirs.tmp.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "role = \"connector\"\nname = \"conn\"\npolicy_file = \"{}\"\npin_dir = \"{}\"\n\
             xdp_interfaces = [\"{iface}\"]\ntc_egress_interfaces = [\"{iface}\"]\n\
             log_file = \"{}\"\npolicy_poll_ms = 100\nskip_policy_tests = {skip}\n",
            policy.display(),
            dirs.pin.display(),
            dirs.tmp.join("connections.jsonl").display(),
        ),
    )
    .unwrap();
    cfg
}

fn tcp_echo_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_echo(ns, dst, TIMEOUT)
}

/// Dropped silently (the gateway's denial), as opposed to refused by a closed port.
fn tcp_dropped_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_dropped(ns, dst, TIMEOUT)
}

#[test]
fn standalone_agent_refuses_failing_policy_tests() {
    if skip_unless_privileged!() {
        return;
    }
    let alice = NetNs::new("zta").unwrap();
    let conn = NetNs::new("ztc").unwrap();
    let res = NetNs::new("ztr").unwrap();
    let (_a, ca) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(&conn, &["198.18.1.1/24"], &res, &["198.18.1.5/24"]).unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    gateway_test_support::testkit::tcp_echo_servers(&res, &["198.18.1.5:443", "198.18.1.5:23"])
        .unwrap();

    let name = unique_name("zgwtests");
    let dirs = Dirs {
        tmp: std::env::temp_dir().join(&name),
        pin: PathBuf::from("/sys/fs/bpf").join(&name),
    };
    std::fs::create_dir_all(&dirs.tmp).unwrap();
    let policy = dirs.tmp.join("policy.toml");
    let failing = format!("{POLICY}{PASSING_TEST}{FAILING_TEST}");
    std::fs::write(&policy, &failing).unwrap();
    let cfg = config(&dirs, &policy, &ca.iface, false);

    // 1. A fresh agent refuses to start with the failing test, naming it and its place.
    let stderr = dirs.tmp.join("refused.stderr");
    let refused = AgentProcess::start("refused", conn.name(), Path::new(AGENT), &cfg, &stderr)
        .unwrap()
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    let line = failing
        .lines()
        .position(|l| l == "name = \"alice reaches telnet on web\"")
        .unwrap();
    assert!(!refused.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}:{line}:1: test `alice reaches telnet on web`: FAILED: expected Allow, got Deny",
            policy.display()
        )) && err.contains("skip_policy_tests"),
        "{err}"
    );
    assert!(!err.contains("ready:"), "{err}");
    assert!(
        !err.contains("alice reaches web`"),
        "only failing tests: {err}"
    );

    // 2. Control: without the failing test, it starts and enforces (23 is denied).
    std::fs::write(&policy, format!("{POLICY}{PASSING_TEST}")).unwrap();
    let stderr = dirs.tmp.join("agent.stderr");
    let mut agent =
        AgentProcess::start("agent", conn.name(), Path::new(AGENT), &cfg, &stderr).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    assert!(tcp_echo_at(&alice, "198.18.1.5:443"), "web allowed");
    assert!(tcp_dropped_at(&alice, "198.18.1.5:23"), "telnet denied");

    // 3. A reload with the failing test (and a grant that would let telnet through) is
    // refused: the previous policy stays in force.
    let applied = agent.count("policy applied");
    let opened = failing.replace(
        "tcp = [\"443\"]\nicmp = true",
        "tcp = [\"443\", \"23\"]\nicmp = true",
    );
    assert_ne!(opened, failing, "the edit opens telnet");
    let opened = opened.replace(FAILING_TEST, &FAILING_TEST.replace("\"allow\"", "\"deny\""));
    std::fs::write(&policy, &opened).unwrap();
    agent
        .wait_for(
            "the previous policy stays in force",
            Duration::from_secs(10),
        )
        .unwrap();
    let err = agent.stderr();
    assert!(
        err.contains("test `alice reaches telnet on web`: FAILED: expected Deny, got Allow"),
        "{err}"
    );
    assert_eq!(agent.count("policy applied"), applied, "{err}");
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:23"),
        "telnet still denied"
    );
    agent.stop().unwrap();

    // 4. skip_policy_tests: the same file is enforced, each failing test a warning.
    let cfg = config(&dirs, &policy, &ca.iface, true);
    let stderr = dirs.tmp.join("skip.stderr");
    let mut agent =
        AgentProcess::start("skip", conn.name(), Path::new(AGENT), &cfg, &stderr).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let err = agent.stderr();
    assert!(
        err.contains("alice reaches telnet on web") && err.contains("enforced anyway"),
        "{err}"
    );
    assert!(tcp_echo_at(&alice, "198.18.1.5:23"), "telnet now allowed");
    agent.stop().unwrap();
}
