//! Managed mode with a real controller and real agents in namespaces.
//!
//! ```text
//!  alice (agent: device) ──veth── conn (agent: connector) ──veth── res (services)
//!                                    └──veth── ctl (gateway-controller, SQLite)
//! ```
//!
//! An applied change reaches the kernel maps of exactly the affected agents; agents keep
//! enforcing while the controller is down; a controller restart loses nothing; an agent
//! that reconnects after missed changes converges to the entries of a fresh compile.
//! Agents reach the controller over TLS, pinning the deployment CA; admin calls carry an
//! API key.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData};
use controller::auth::AuthedAdminClient;
use gateway_common::maps;
use gateway_proto::v1::{ApplyPolicyRequest, CreateEnrollmentTokenRequest, ListAgentsRequest};
use gateway_test_support::{
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
    testkit::unix_now,
};
use gateway_user::{
    dataplane::PolicyMaps,
    writer::{BootClock, read_slot},
};
use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const CTL_ADDR: &str = "198.19.9.1:50051";
const TIMEOUT: Duration = Duration::from_millis(700);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The deployment's TLS material (CA cert, CA key, server cert, server key), made once.
fn tls() -> &'static (String, String, String, String) {
    static TLS: OnceLock<(String, String, String, String)> = OnceLock::new();
    TLS.get_or_init(|| controller::tls::generate_pem(&["198.19.9.1".to_string()]).unwrap())
}

/// The admin API key of each running controller, by the name of its namespace (tests run
/// in parallel, each with its own controller).
static ADMIN_KEYS: Mutex<std::collections::BTreeMap<String, String>> =
    Mutex::new(std::collections::BTreeMap::new());

/// The controller, run in-process on threads inside the `ctl` namespace.
struct Controller {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    fn start(ctl: &NetNs, db: &Path) -> Controller {
        let ns = std::fs::File::open(format!("/run/netns/{}", ctl.name())).unwrap();
        let ns_name = ctl.name().to_string();
        let db = db.to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd, for this thread (and the runtime
            // threads it creates) only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
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
                ADMIN_KEYS.lock().unwrap().insert(ns_name, key);
                let (_, _, cert, key) = tls();
                let tls = controller::tls::server_config_pem(cert.as_bytes(), key.as_bytes());
                let (_, task) = controller::spawn_tls(sa(CTL_ADDR), state, Some(tls), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
                ready_tx.send(()).unwrap();
                if let Ok(Err(e)) = task.await {
                    eprintln!("controller: {e:#}");
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Controller {
            stop: Some(stop),
            thread: Some(thread),
        }
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

/// Runs an Admin call from inside the `ctl` namespace.
fn admin<T: Send>(
    ctl: &NetNs,
    f: impl for<'a> FnOnce(
        &'a mut AuthedAdminClient,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>
    + Send,
) -> T {
    ctl.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ch =
                controller::tls::connect(&format!("https://{CTL_ADDR}"), Some(tls().0.as_bytes()))
                    .await
                    .unwrap();
            let key = ADMIN_KEYS.lock().unwrap()[ctl.name()].clone();
            let mut c = controller::auth::admin_client(ch, &key);
            f(&mut c).await
        })
    })
    .unwrap()
}

fn apply(ctl: &NetNs, text: &str) {
    let text = text.to_string();
    admin(ctl, move |c| {
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

fn token(ctl: &NetNs, host: &str) -> String {
    let host = host.to_string();
    admin(ctl, move |c| {
        Box::pin(async move {
            c.create_enrollment_token(CreateEnrollmentTokenRequest {
                host,
                ttl_seconds: 600,
            })
            .await
            .unwrap()
            .into_inner()
            .token
        })
    })
}

/// (host, current generation, acknowledged generation) of every agent.
fn agents(ctl: &NetNs) -> Vec<(String, u64, u64)> {
    admin(ctl, |c| {
        Box::pin(async move {
            c.list_agents(ListAgentsRequest {})
                .await
                .unwrap()
                .into_inner()
                .agents
                .into_iter()
                .map(|a| (a.host, a.current_generation, a.acked_generation))
                .collect()
        })
    })
}

fn generation_of(ctl: &NetNs, host: &str) -> (u64, u64) {
    agents(ctl)
        .into_iter()
        .find(|a| a.0 == host)
        .map(|a| (a.1, a.2))
        .unwrap_or_else(|| panic!("no agent for {host}"))
}

const WAIT: Duration = Duration::from_secs(20);

fn start_agent(ns: &NetNs, cfg: &Path, stderr: &Path) -> AgentProcess {
    let label = cfg.file_stem().unwrap().to_string_lossy().to_string();
    let mut agent = AgentProcess::start(&label, ns.name(), Path::new(AGENT), cfg, stderr).unwrap();
    agent.wait_ready(WAIT).unwrap();
    agent
}

/// Waits (bounded) for `cond`; the failure carries the agent's stderr.
fn wait(mut cond: impl FnMut() -> bool, what: &str, a: &mut AgentProcess) {
    a.wait_until(what, WAIT, |_| cond()).unwrap();
}

fn serve(res: &NetNs) {
    gateway_test_support::testkit::tcp_echo_servers(
        res,
        &["198.18.1.5:443", "198.18.1.5:23", "198.18.1.10:5432"],
    )
    .unwrap();
}

fn pinned(pin: &Path, name: &str) -> Map {
    Map::from_map_data(MapData::from_pin(pin.join("maps").join(name)).unwrap()).unwrap()
}

/// The entries an agent enforces now, read from its pinned maps.
fn kernel_entries(pin: &Path) -> policy_compiler::KernelEntries {
    let active: Array<MapData, u32> = pinned(pin, maps::ACTIVE).try_into().unwrap();
    let maps = PolicyMaps {
        src: HashMap::try_from(pinned(pin, maps::SRC)).unwrap(),
        dst: LpmTrie::try_from(pinned(pin, maps::DST)).unwrap(),
        dst_hosts: HashMap::try_from(pinned(pin, maps::DST_HOSTS)).unwrap(),
        rules: LpmTrie::try_from(pinned(pin, maps::RULES)).unwrap(),
        rules_exact: HashMap::try_from(pinned(pin, maps::RULES_EXACT)).unwrap(),
        src_filter: None,
        active,
    };
    let slot = (maps.active.get(&0, 0).unwrap() & 1) as u8;
    read_slot(&maps, slot).unwrap()
}

/// The entries a fresh compile of `text` gives `host`, in key slot `slot`.
fn fresh(text: &str, host: &str, slot: u8) -> policy_compiler::KernelEntries {
    let now = unix_now();
    let p = policy_compiler::parse(text, "policy.toml", now)
        .unwrap()
        .policy;
    let h = gateway_proto::parse_host(host).unwrap();
    let view = policy_compiler::compile(&p, &h, now).unwrap();
    let clock = BootClock::new();
    policy_compiler::to_kernel(&view, slot, |t| clock.unix_to_boot_ns(t))
}

fn converged(pin: &Path, text: &str, host: &str) -> bool {
    let k = kernel_entries(pin);
    k == fresh(text, host, k.generation)
}

fn agent_config(
    dir: &Path,
    name: &str,
    role: &str,
    host_name: &str,
    iface: &str,
    token: &str,
) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls().0).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "role = \"{role}\"\nname = \"{host_name}\"\npin_dir = \"/sys/fs/bpf/{pin}\"\n\
             xdp_interfaces = [\"{iface}\"]\ntc_egress_interfaces = [\"{iface}\"]\n\
             log_file = \"{log}\"\n\n[controller]\nurl = \"https://{CTL_ADDR}\"\n\
             ca_file = \"{ca}\"\nenrollment_token = \"{token}\"\nidentity_file = \"{id}\"\n",
            pin = dir.file_name().unwrap().to_string_lossy().to_string() + "-" + name,
            log = dir.join(format!("{name}.jsonl")).display(),
            id = dir.join(format!("{name}.identity.json")).display(),
            ca = ca.display(),
        ),
    )
    .unwrap();
    cfg
}

struct Cleanup {
    dir: PathBuf,
    configs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.configs {
            let _ = Command::new(AGENT)
                .args(["detach", "--config"])
                .arg(c)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// alice ── conn ── res, and the controller's host behind the connector.
struct Hosts {
    alice: NetNs,
    conn: NetNs,
    res: NetNs,
    ctl: NetNs,
    /// alice's uplink and the connector's link to her.
    a_if: gateway_test_support::netns::VethEnd,
    ca_if: gateway_test_support::netns::VethEnd,
}

/// The namespaces and links of a managed test (names start with `prefix`), forwarding on
/// the connector, echo servers on the resource host.
fn hosts(prefix: &str) -> Hosts {
    let alice = NetNs::new(&format!("{prefix}a")).unwrap();
    let conn = NetNs::new(&format!("{prefix}c")).unwrap();
    let res = NetNs::new(&format!("{prefix}r")).unwrap();
    let ctl = NetNs::new(&format!("{prefix}k")).unwrap();
    let (a_if, ca_if) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(
        &conn,
        &["198.18.1.1/24"],
        &res,
        &["198.18.1.5/24", "198.18.1.10/24"],
    )
    .unwrap();
    veth_pair(&conn, &["198.19.9.2/24"], &ctl, &["198.19.9.1/24"]).unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    ctl.ip(&["route", "add", "default", "via", "198.19.9.2"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    serve(&res);
    Hosts {
        alice,
        conn,
        res,
        ctl,
        a_if,
        ca_if,
    }
}

#[test]
fn managed_agents_follow_the_controller() {
    if skip_unless_privileged!() {
        return;
    }
    let Hosts {
        alice,
        conn,
        res,
        ctl,
        a_if,
        ca_if,
    } = hosts("zm");
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();

    let dir = std::env::temp_dir().join(unique_name("zgwmgd"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("controller.db");
    let mut controller = Some(Controller::start(&ctl, &db));
    apply(&ctl, POLICY);

    let conn_cfg = agent_config(
        &dir,
        "conn",
        "connector",
        "conn",
        &ca_if.iface,
        &token(&ctl, "connector:conn"),
    );
    let alice_cfg = agent_config(
        &dir,
        "alice",
        "device",
        "alice-laptop",
        &a_if.iface,
        &token(&ctl, "device:alice-laptop"),
    );
    let _cleanup = Cleanup {
        dir: dir.clone(),
        configs: vec![conn_cfg.clone(), alice_cfg.clone()],
    };
    let conn_pin = PathBuf::from(format!(
        "/sys/fs/bpf/{}-conn",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let conn_err = dir.join("conn.stderr");
    // Control: without agents, every destination denied below answers.
    for dst in ["198.18.1.5:23", "198.18.1.10:5432"] {
        assert!(
            tcp_echo_at(&alice, dst),
            "control: {dst} answers without the agents"
        );
    }
    let mut conn_agent = start_agent(&conn, &conn_cfg, &conn_err);
    let mut alice_agent = start_agent(&alice, &alice_cfg, &dir.join("alice.stderr"));

    assert!(tcp_echo_at(&alice, "198.18.1.5:443"), "alice -> web");
    assert!(tcp_echo_at(&alice, "198.18.1.10:5432"), "alice -> db");
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:23"),
        "alice -> web:23 denied"
    );

    // A change that only the connector's view sees (a grant for bob, whose device has no
    // agent): the connector's generation moves and is acknowledged; alice's does not.
    let (c0, _) = generation_of(&ctl, "connector:conn");
    let (a0, _) = generation_of(&ctl, "device:alice-laptop");
    // Appended last, so no existing rule id moves.
    let with_bob = format!(
        "{POLICY}\n[[allow]]\nname = \"bob-db\"\nprincipals = [\"bob@example.com\"]\nresources = [\"db\"]\n"
    );
    apply(&ctl, &with_bob);
    wait(
        || generation_of(&ctl, "connector:conn") == (c0 + 1, c0 + 1),
        "connector ack",
        &mut conn_agent,
    );
    assert_eq!(
        generation_of(&ctl, "device:alice-laptop").0,
        a0,
        "alice's view did not change"
    );
    assert!(
        converged(&conn_pin, &with_bob, "connector:conn"),
        "connector maps == fresh compile"
    );

    // A change both see: revoking alice-db stops her at her own host.
    let no_db = with_bob.replace(
        "name = \"alice-db\"",
        "name = \"alice-db\"\nexpires_at = 2000-01-01T00:00:00Z",
    );
    apply(&ctl, &no_db);
    wait(
        || tcp_dropped_at(&alice, "198.18.1.10:5432"),
        "alice -> db revoked",
        &mut alice_agent,
    );
    wait(
        || generation_of(&ctl, "device:alice-laptop").0 == a0 + 1,
        "alice generation",
        &mut alice_agent,
    );

    // The controller goes away: agents keep enforcing the last policy.
    drop(controller.take());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tcp_echo_at(&alice, "198.18.1.5:443"),
        "still allowed without a controller"
    );
    assert!(
        tcp_dropped_at(&alice, "198.18.1.10:5432"),
        "still denied without a controller"
    );
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:23"),
        "still denied without a controller"
    );

    // Restarted on the same database, it lost nothing: the agents reconnect, and a new
    // change reaches them.
    controller = Some(Controller::start(&ctl, &db));
    let hosts: Vec<String> = agents(&ctl).into_iter().map(|a| a.0).collect();
    assert!(
        hosts.contains(&"connector:conn".to_string())
            && hosts.contains(&"device:alice-laptop".to_string()),
        "{hosts:?}"
    );
    apply(&ctl, &with_bob);
    wait(
        || tcp_echo_at(&alice, "198.18.1.10:5432"),
        "alice -> db restored after restart",
        &mut alice_agent,
    );

    // An agent that misses changes converges when it comes back.
    conn_agent.stop_keeping_pins().unwrap();
    apply(&ctl, POLICY);
    apply(&ctl, &no_db);
    conn_agent = start_agent(&conn, &conn_cfg, &conn_err);
    wait(
        || converged(&conn_pin, &no_db, "connector:conn"),
        "connector converged",
        &mut conn_agent,
    );
    let (cur, acked) = generation_of(&ctl, "connector:conn");
    assert_eq!(cur, acked, "connector acknowledged the current generation");
    drop(conn_agent);
    drop(alice_agent);
    drop(controller);
}

fn tcp_echo_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_echo(ns, dst, TIMEOUT)
}

/// Dropped silently (the gateway's denial), as opposed to refused by a closed port.
fn tcp_dropped_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_dropped(ns, dst, TIMEOUT)
}

const TUNNEL_POLICY: &str = r#"
[[remote_network]]
name = "corp"
cidrs = ["198.18.1.0/24"]
connectors = ["conn"]

[[connector]]
name = "conn"
public_key = "CONN_KEY"
endpoint = "198.19.1.1:51820"

[[resource]]
name = "web"
network = "corp"
address = "198.18.1.5"
tcp = ["443"]
udp = ["5353"]

[[resource]]
name = "db"
network = "corp"
address = "198.18.1.10"
tcp = ["5432"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "100.64.0.10"

[[allow]]
name = "alice-web"
principals = ["alice@example.com"]
resources = ["web"]
"#;

const MARK: &[u8] = b"ZTG-MANAGED-TUNNEL";

/// Datagrams with [`MARK`] a tunnel holding `key` (a copy of alice's private key: an
/// attacker who stole it) delivers to 198.18.1.5:5353 while claiming alice's address.
fn stolen_key_delivers(
    alice: &NetNs,
    key: gateway_user::tunnel::keys::KeyPair,
    conn_key: [u8; 32],
    counter: &std::sync::atomic::AtomicU64,
) -> u64 {
    use gateway_user::tunnel::{Options, PeerSpec, tun};
    let before = counter.load(std::sync::atomic::Ordering::Relaxed);
    let opts = Options {
        interface: "thief0".into(),
        listen_port: 0,
        mtu: 1420,
        persistent_keepalive: None,
        skip_cryptokey_routing: false,
    };
    let thief = gateway_test_support::tunnel::NsTunnel::start(alice.name(), opts, key, move |t| {
        tun::configure_link("thief0", 1420, &["100.64.0.10".parse()?])?;
        t.set_peers(&[PeerSpec {
            name: "conn".into(),
            public_key: conn_key,
            endpoint: Some("198.19.1.1:51820".parse()?),
            allowed_ips: vec!["198.18.1.5/32".parse()?],
        }]);
        // More specific than the agent's route to 198.18.1.0/24.
        tun::sync_routes("thief0", &["198.18.1.5/32".parse()?])
    })
    .unwrap();
    gateway_test_support::net::send_udp(
        alice,
        Some("100.64.0.10".parse().unwrap()),
        "198.18.1.5:5353",
        MARK,
        30,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    drop(thief);
    let _ = alice.ip(&["link", "del", "thief0"]);
    counter.load(std::sync::atomic::Ordering::Relaxed) - before
}

/// The tunnel in managed mode: agents enroll with their own keys, the controller gives
/// each host its peers, a rotated key replaces the old one everywhere at once (the old
/// key then delivers nothing; before the rotation the same key did: the control), and
/// revoking the device's agent takes it off the connector.
#[test]
fn managed_tunnel_peers_rotation_and_revocation() {
    if skip_unless_privileged!() {
        return;
    }
    // The resource host has no route back: the connector masquerades tunnel traffic.
    let Hosts {
        alice,
        conn,
        res,
        ctl,
        a_if,
        ca_if,
    } = hosts("zt");
    let counter =
        gateway_test_support::net::udp_counter(&res, "198.18.1.5:5353", Some(MARK)).unwrap();

    let dir = std::env::temp_dir().join(unique_name("zgwmtun"));
    std::fs::create_dir_all(&dir).unwrap();
    let _controller = Controller::start(&ctl, &dir.join("controller.db"));
    let tunnel = |cfg: &Path, name: &str, port: u16| {
        let mut text = std::fs::read_to_string(cfg).unwrap();
        text.push_str(&format!(
            "\n[tunnel]\ntransport = \"userspace\"\nlisten_port = {port}\nprivate_key_file = \"{}\"\n",
            dir.join(format!("{name}-wg/wireguard.key")).display()
        ));
        std::fs::write(cfg, text).unwrap();
    };
    let conn_cfg = agent_config(
        &dir,
        "conn",
        "connector",
        "conn",
        &ca_if.iface,
        &token(&ctl, "connector:conn"),
    );
    tunnel(&conn_cfg, "conn", 51820);
    let alice_cfg = agent_config(
        &dir,
        "alice",
        "device",
        "alice-laptop",
        &a_if.iface,
        &token(&ctl, "device:alice-laptop"),
    );
    tunnel(&alice_cfg, "alice", 0);
    let _cleanup = Cleanup {
        dir: dir.clone(),
        configs: vec![conn_cfg.clone(), alice_cfg.clone()],
    };
    // The admin writes the connector's key into the policy (`gateway-agent public-key`);
    // alice's key comes only from her enrollment.
    let public_key = |cfg: &Path| {
        let out = Command::new(AGENT)
            .args(["public-key", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let conn_key = public_key(&conn_cfg);
    apply(&ctl, &TUNNEL_POLICY.replace("CONN_KEY", &conn_key));
    let mut conn_agent = start_agent(&conn, &conn_cfg, &dir.join("conn.stderr"));
    let mut alice_agent = start_agent(&alice, &alice_cfg, &dir.join("alice.stderr"));
    let alice_key_file = dir.join("alice-wg/wireguard.key");
    let first_key = gateway_user::tunnel::keys::load(&alice_key_file).unwrap();

    // Peers from the controller: alice reaches web through the tunnel, not db.
    wait(
        || tcp_echo_at(&alice, "198.18.1.5:443"),
        "alice -> web through the tunnel",
        &mut alice_agent,
    );
    assert!(
        tcp_dropped_at(&alice, "198.18.1.10:5432"),
        "alice -> db denied"
    );
    let registered = |ctl: &NetNs| -> String {
        admin(ctl, |c| {
            Box::pin(async move {
                c.list_agents(ListAgentsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .agents
                    .into_iter()
                    .find(|a| a.host == "device:alice-laptop")
                    .map(|a| a.public_key)
                    .unwrap_or_default()
            })
        })
    };
    assert_eq!(registered(&ctl), first_key.public_b64(), "the enrolled key");
    let conn_bytes = gateway_user::tunnel::keys::decode_key(&conn_key).unwrap();
    // Control: a copy of her current key delivers.
    assert!(
        stolen_key_delivers(&alice, first_key.clone(), conn_bytes, &counter) > 0,
        "control: alice's valid key delivers"
    );

    // Rotation: the agent registers the new key; the old one delivers nothing after.
    let out = Command::new(AGENT)
        .args(["rotate-key", "--config"])
        .arg(&alice_cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    wait(
        || registered(&ctl) == new_key,
        "the rotated key registered",
        &mut alice_agent,
    );
    wait(
        || tcp_echo_at(&alice, "198.18.1.5:443"),
        "alice -> web with the new key",
        &mut alice_agent,
    );
    assert_eq!(
        stolen_key_delivers(&alice, first_key, conn_bytes, &counter),
        0,
        "the old key after rotation"
    );

    // Revocation: the connector drops alice's peer in the same push.
    let agent_id = admin(&ctl, |c| {
        Box::pin(async move {
            c.list_agents(ListAgentsRequest {})
                .await
                .unwrap()
                .into_inner()
                .agents
                .into_iter()
                .find(|a| a.host == "device:alice-laptop")
                .map(|a| a.agent_id)
                .unwrap()
        })
    });
    admin(&ctl, move |c| {
        Box::pin(async move {
            c.revoke_agent(gateway_proto::v1::RevokeAgentRequest { agent_id })
                .await
                .unwrap();
        })
    });
    let conn_status = conn_cfg.clone();
    conn_agent
        .wait_until("alice's peer removed from the connector", WAIT, |_| {
            let out = Command::new(AGENT)
                .args(["status", "--output", "json", "--config"])
                .arg(&conn_status)
                .output()
                .unwrap();
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            st["tunnel"]["peers"]
                .as_array()
                .is_some_and(|p| p.is_empty())
        })
        .unwrap();
    assert!(
        tcp_dropped_at(&alice, "198.18.1.5:443"),
        "a revoked device reaches nothing"
    );
    conn_agent.stop().unwrap();
    alice_agent.stop().unwrap();
}
