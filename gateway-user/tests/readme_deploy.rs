//! The README's "Deploying on a host", followed as written, for a connector and a laptop:
//! examples/minimal.toml as the policy (checked with `gatewayctl policy check` first), the
//! shipped deploy/agent.toml with only the settings step 2 names changed (`role`, `name`,
//! `xdp_interfaces`, `tc_egress_interfaces`), forwarding enabled on the connector, and each
//! agent started with the unit's own `ExecStart=` command line from
//! deploy/gateway-agent.service (systemd itself is not run: the test starts that command in
//! the host's namespace). The only other changes are the host's places: `/etc/zt-gateway`,
//! `/var/lib/zt-gateway` and `/var/log/zt-gateway` become scratch folders, the pin folder a
//! unique one, and the policy gets the agents' public keys and the connector's real endpoint,
//! as an admin fills them in.
//!
//! ```text
//!  dana-laptop 198.19.1.40 ──veth── office-connector 198.19.1.1 | 198.18.100.1 ──veth── wiki 198.18.100.80
//!  (overlay 198.19.0.40)
//! ```
//!
//! What a user relies on: dana reaches the wiki on 443 through the tunnel, and nothing else
//! there (port 22 has a listener that answers: the control run before the agents start
//! reaches it in cleartext).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::{
    net::{TcpOutcome, tcp_echo_servers, tcp_try},
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const T: Duration = Duration::from_millis(1500);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Replaces the one line of `text` that sets `key` (`key = ...`), failing when there is not
/// exactly one: the README's step 2 says to set it, so the shipped file must have it.
fn set(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} =");
    let n = text.lines().filter(|l| l.starts_with(&prefix)).count();
    assert_eq!(
        n, 1,
        "deploy/agent.toml must set `{key}` exactly once at the top level"
    );
    text.lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The unit's `ExecStart=` as program and arguments.
fn exec_start() -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("deploy/gateway-agent.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("deploy/gateway-agent.service has an ExecStart= line");
    line.split_whitespace().map(str::to_string).collect()
}

struct Host {
    ns: NetNs,
    etc: PathBuf,
    cfg: PathBuf,
    err: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new(AGENT)
            .args(["detach", "--config"])
            .arg(&self.cfg)
            .output();
    }
}

/// Steps 1-2 for one host: its scratch /etc, /var/lib, /var/log and the edited agent.toml.
fn configure(tmp: &Path, ns: NetNs, role: &str, name: &str, iface: &str) -> Host {
    let base = tmp.join(name);
    let etc = base.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let shipped = std::fs::read_to_string(root().join("deploy/agent.toml")).unwrap();
    let pin = format!("/sys/fs/bpf/{}", unique_name("ztdep"));
    let text = shipped
        .replace("/etc/zt-gateway", &etc.display().to_string())
        .replace(
            "/var/lib/zt-gateway",
            &base.join("var-lib").display().to_string(),
        )
        .replace(
            "/var/log/zt-gateway",
            &base.join("var-log").display().to_string(),
        )
        .replace("/sys/fs/bpf/zt-gateway", &pin);
    let text = set(&text, "role", &format!("{role:?}"));
    let text = set(&text, "name", &format!("{name:?}"));
    let text = set(&text, "xdp_interfaces", &format!("[{iface:?}]"));
    let text = set(&text, "tc_egress_interfaces", &format!("[{iface:?}]"));
    let cfg = etc.join("agent.toml");
    std::fs::write(&cfg, text).unwrap();
    Host {
        ns,
        etc,
        cfg,
        err: base.join("agent.err"),
    }
}

fn public_key(h: &Host) -> String {
    let out = Command::new(AGENT)
        .args(["public-key", "--config"])
        .arg(&h.cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "public-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Step 3 without systemd: the unit's ExecStart with this host's config, in its namespace.
fn start(h: &Host, label: &str) -> AgentProcess {
    let exec = exec_start();
    assert_eq!(
        exec[1..],
        ["run", "--config", "/etc/zt-gateway/agent.toml"],
        "the unit runs `gateway-agent run --config /etc/zt-gateway/agent.toml`"
    );
    let mut a = AgentProcess::start(label, h.ns.name(), Path::new(AGENT), &h.cfg, &h.err).unwrap();
    a.wait_ready(Duration::from_secs(30)).unwrap();
    a
}

#[test]
fn the_deploy_section_of_the_readme_works_as_written() {
    if skip_unless_privileged!() {
        return;
    }
    let tmp = std::env::temp_dir().join(unique_name("ztg-deploy"));
    std::fs::create_dir_all(&tmp).unwrap();
    let dev = NetNs::new("zdd").unwrap();
    let conn = NetNs::new("zdc").unwrap();
    let res = NetNs::new("zdr").unwrap();
    let (dv, cv) = veth_pair(&dev, &["198.19.1.40/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(&conn, &["198.18.100.1/24"], &res, &["198.18.100.80/24"]).unwrap();
    dev.ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.100.1"])
        .unwrap();
    // Step 2, connector: "Enable forwarding".
    let out = conn
        .exec("sysctl", &["-w", "net.ipv4.ip_forward=1"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tcp_echo_servers(&res, &["198.18.100.80:443", "198.18.100.80:22"]).unwrap();

    // The control: without the gateway, dana's laptop reaches both ports in cleartext.
    assert_eq!(tcp_try(&dev, "198.18.100.80:22", T), TcpOutcome::Echoed);
    assert_eq!(tcp_try(&dev, "198.18.100.80:443", T), TcpOutcome::Echoed);

    let connector = configure(&tmp, conn, "connector", "office-connector", &cv.iface);
    let laptop = configure(&tmp, dev, "device", "dana-laptop", &dv.iface);
    // Step 1: the policy, with the agents' keys and the connector's endpoint filled in.
    let minimal = std::fs::read_to_string(root().join("examples/minimal.toml")).unwrap();
    let policy = minimal
        .replace(
            "mJ2dvAxDrVJmHEZ2OUwi6cOmk37pdUWA3dpETQTuV2I=",
            &public_key(&laptop),
        )
        .replace(
            "Vr2zPfC5sc9tYPhB6T5Sgdv0rnNUxHhdjWxd8dFK2QE=",
            &public_key(&connector),
        )
        .replace("office-gw.example.com:51820", "198.19.1.1:51820");
    assert_ne!(
        policy, minimal,
        "examples/minimal.toml has the placeholders"
    );
    for h in [&connector, &laptop] {
        std::fs::write(h.etc.join("policy.toml"), &policy).unwrap();
    }
    let gatewayctl = Path::new(AGENT).parent().unwrap().join("gatewayctl");
    assert!(
        gatewayctl.is_file(),
        "{} is missing: run under `cargo xtask test` (it builds every binary) or `cargo build \
         -p gatewayctl` first",
        gatewayctl.display()
    );
    let check = Command::new(&gatewayctl)
        .args(["policy", "check"])
        .arg(connector.etc.join("policy.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "gatewayctl policy check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut c = start(&connector, "connector");
    let mut l = start(&laptop, "laptop");

    // Granted: the wiki on 443, through the tunnel (the first try may wait for the
    // handshake).
    let mut outcome = TcpOutcome::Silent;
    for _ in 0..5 {
        outcome = tcp_try(&laptop.ns, "198.18.100.80:443", T);
        if outcome == TcpOutcome::Echoed {
            break;
        }
    }
    assert_eq!(
        outcome,
        TcpOutcome::Echoed,
        "dana reaches the wiki on 443\nconnector: {}\nlaptop: {}",
        c.stderr_tail(20),
        l.stderr_tail(20)
    );
    // Not granted: port 22 on the same host answers (control above), but not to dana.
    assert_eq!(
        tcp_try(&laptop.ns, "198.18.100.80:22", T),
        TcpOutcome::Silent,
        "port 22 is not granted"
    );
    // The connection log (log_file of the shipped config) names dana and the wiki.
    let log = std::fs::read_to_string(tmp.join("office-connector/var-log/connections.jsonl"))
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|line| line.contains("\"wiki\"") && line.contains("dana")),
        "the connector's connection log names dana and the wiki:\n{log}"
    );
    l.stop().unwrap();
    c.stop().unwrap();
    drop(laptop);
    drop(connector);
    drop(res);
    let _ = std::fs::remove_dir_all(&tmp);
}
