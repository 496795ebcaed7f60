//! The last act: more of the WireGuard tunnel (the main act runs through it too, managed by
//! the controller). Fresh hosts, three standalone agents with `[tunnel]` and a policy file
//! (which this act edits to revoke a grant):
//!
//! ```text
//!  alice  198.19.1.10  agent: device alice-laptop, overlay 100.64.0.10 ──veth──┐
//!                                                                   connector (agent, ztg0 :51820) ──veth── resources
//!  bob    198.19.2.11  agent: device bob-laptop,   overlay 100.64.0.11 ──veth──┘  198.18.1.1        198.18.1.5 web, 198.18.1.10 db
//! ```
//!
//! The resource host has no route back to 100.64.0.0/10: replies reach the laptops
//! because the connector masquerades. The policy (written here, because it names the
//! public keys the agents create on first start) grants alice web (v4 and v6) and bob db.
//! Checked: alice reaches web through the tunnel and not db; bob holding his own key and
//! claiming alice's overlay address gets nothing to the resource, and neither do cleartext
//! frames claiming it on his link (each against a counting listener that alice's own
//! datagrams reach); the connector's link to alice carries only WireGuard UDP; the
//! connection log names alice's overlay address and her real address and port; taking
//! her grant away cuts her open connection and drops her from the connector's peers.

use crate::prelude::*;
use gateway_test_support::net::{TcpOutcome, tcp_try};
use gateway_user::tunnel::{
    Options as TunnelOptions, PeerSpec, Tunnel, keys,
    tun::{configure_link, sync_routes},
};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::AtomicU64;

const ALICE_OVERLAY: Ipv4Addr = ALICE.overlay;
const ALICE_OVERLAY6: &str = ALICE.overlay6;
const BOB_OVERLAY: Ipv4Addr = BOB.overlay;
const BOB_OVERLAY6: &str = BOB.overlay6;
const WEB6: &str = "2001:db8:1::5";
/// The UDP listener on web that counts marked datagrams (the spoof target).
const MARK_PORT: u16 = 5353;
/// In every datagram the act sends: found in a capture, it is cleartext on the wire.
const MARK: &[u8] = b"ZTG-DEMO-CLEARTEXT-MARKER";
/// Allowed exchanges through the tunnel (the first one includes the handshake).
const TUNNEL_ALLOW_TIMEOUT: Duration = Duration::from_secs(3);
/// The rogue tunnel's interface in bob's namespace.
const ROGUE_IF: &str = "ztgevil0";

/// One laptop or the connector of this act.
struct TunnelHost {
    label: String,
    /// The name in the policy (device or connector).
    name: &'static str,
    ns: NetNs,
    config: PathBuf,
    key: PathBuf,
    log: PathBuf,
    pin_dir: PathBuf,
    links: Vec<String>,
}

/// Everything the act runs, in teardown order (fields drop in declaration order): agents,
/// servers, then the namespaces.
struct TunnelEnv {
    agents: Vec<Agent>,
    servers: Option<TunnelServers>,
    alice: TunnelHost,
    bob: TunnelHost,
    conn: TunnelHost,
    res: NetNs,
    policy: PathBuf,
}

/// TCP echo servers (connections stay open until the client closes or the act ends) and a
/// UDP listener that counts datagrams holding [`MARK`].
struct TunnelServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    marked: Arc<AtomicU64>,
}

impl TunnelServers {
    fn start(res: &NetNs, tcp: &[SocketAddr], udp: SocketAddr) -> Result<TunnelServers> {
        let stop = Arc::new(AtomicBool::new(false));
        let marked = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let deadline = Instant::now() + SERVER_LIFETIME;
        for &addr in tcp {
            let l = res
                .run(move || TcpListener::bind(addr))?
                .with_context(|| format!("binding {addr}"))?;
            l.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match l.accept() {
                        Ok((c, _)) => {
                            let stop = stop.clone();
                            conns.push(std::thread::spawn(move || echo_until(c, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        let u = res
            .run(move || UdpSocket::bind(udp))?
            .with_context(|| format!("binding {udp}"))?;
        u.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (stop2, n) = (stop.clone(), marked.clone());
        threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((len, _)) = u.recv_from(&mut b)
                    && b[..len].windows(MARK.len()).any(|w| w == MARK)
                {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        Ok(TunnelServers {
            stop,
            threads,
            marked,
        })
    }

    fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }
}

impl Drop for TunnelServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Echoes until EOF or the act ends; an idle connection stays open (the revocation
/// check needs one that only the gateway can cut).
fn echo_until(c: TcpStream, stop: &AtomicBool) {
    let mut c = c;
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut b = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => {
                if c.write_all(&b[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

/// The policy of this act; `alice_granted: false` is the same policy with her grant gone.
fn tunnel_policy(conn: &str, alice: &str, bob: &str, alice_granted: bool) -> String {
    let grant = if alice_granted {
        "[[allow]]\nname = \"engineering-web\"\nprincipals = [\"engineering\"]\n\
         resources = [\"web\", \"web-v6\"]\n"
    } else {
        "# engineering-web removed: alice's grant is gone\n"
    };
    format!(
        r#"# The tunnel act of `cargo xtask demo` (demo/src/tunnel.rs), written with the
# public keys the agents created.
[[remote_network]]
name = "{NETWORK}"
cidrs = ["198.18.1.0/24", "2001:db8:1::/48"]
connectors = ["{CONNECTOR}"]

[[connector]]
name = "{CONNECTOR}"
public_key = "{conn}"
endpoint = "{gw}:{WG_PORT}"

[[resource]]
name = "web"
network = "{NETWORK}"
address = "{WEB}"
tcp = ["443"]
udp = ["{MARK_PORT}"]

[[resource]]
name = "web-v6"
network = "{NETWORK}"
address = "{WEB6}"
tcp = ["443"]

[[resource]]
name = "db"
network = "{NETWORK}"
address = "{DB}"
tcp = ["5432"]

[[user]]
email = "{alice_user}"

[[user]]
email = "{bob_user}"

[[device]]
name = "{alice_dev}"
owner = "{alice_user}"
addresses = ["{ALICE_OVERLAY}", "{ALICE_OVERLAY6}"]
public_key = "{alice}"

[[device]]
name = "{bob_dev}"
owner = "{bob_user}"
addresses = ["{BOB_OVERLAY}", "{BOB_OVERLAY6}"]
public_key = "{bob}"

[[group]]
name = "engineering"
members = ["{alice_user}"]

{grant}
[[allow]]
name = "bob-db"
principals = ["{bob_user}"]
resources = ["db"]
"#,
        gw = ALICE.gateway,
        alice_user = ALICE.user,
        bob_user = BOB.user,
        alice_dev = ALICE.device,
        bob_dev = BOB.device,
    )
}

#[derive(Serialize)]
struct TunnelAgentConfig {
    role: &'static str,
    name: &'static str,
    policy_file: PathBuf,
    policy_poll_ms: u64,
    pin_dir: PathBuf,
    xdp_interfaces: Vec<String>,
    tc_egress_interfaces: Vec<String>,
    xdp_mode: &'static str,
    log_file: PathBuf,
    log_format: &'static str,
    flow_timeouts: DemoTimeouts,
    /// Last, because TOML puts tables after plain keys.
    tunnel: TunnelSection,
}

impl TunnelHost {
    fn write_config(&self, role: &'static str, policy: &Path, port: u16) -> Result<()> {
        let cfg = TunnelAgentConfig {
            role,
            name: self.name,
            policy_file: policy.to_path_buf(),
            policy_poll_ms: 100,
            pin_dir: self.pin_dir.clone(),
            xdp_interfaces: self.links.clone(),
            tc_egress_interfaces: self.links.clone(),
            xdp_mode: "generic",
            log_file: self.log.clone(),
            log_format: "json",
            flow_timeouts: DemoTimeouts::short(),
            tunnel: TunnelSection::userspace(port, self.key.clone()),
        };
        let text = toml::to_string(&cfg).context("writing a tunnel agent configuration")?;
        std::fs::write(&self.config, text)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    /// `gateway-agent public-key --config`: creates the key on first use, prints the
    /// public half.
    fn public_key(&self, bin: &Path) -> Result<String> {
        public_key(bin, &self.config, &self.label)
    }
}

/// One check of this act: printed with what was expected and what was seen, and counted.
fn verdict(checks: &mut Checks, what: &str, expected: &str, ok: bool, seen: &str) {
    progress!(
        "{what:<52} expected {expected}: {seen}{}",
        if ok { "" } else { "  <- WRONG" }
    );
    checks.check(
        ok,
        format!("tunnel: {what}: expected {expected}, saw {seen}"),
    );
}

fn tcp_seen(o: &TcpOutcome, timeout: Duration) -> String {
    match o {
        TcpOutcome::Echoed => "connected, echoed".into(),
        TcpOutcome::Silent => format!("no answer within {} ms", timeout.as_millis()),
        TcpOutcome::Refused => "refused (a reset: the packet got through!)".into(),
        TcpOutcome::Other(e) => format!("failed: {e}"),
    }
}

/// Sends `count` marked datagrams from inside `ns` (from `src`, or the routing's choice).
fn send_marked(ns: &NetNs, src: Option<Ipv4Addr>, dst: SocketAddr, count: usize) -> Result<()> {
    let src = src.unwrap_or(Ipv4Addr::UNSPECIFIED);
    ns.run(move || -> Result<()> {
        let s = UdpSocket::bind(SocketAddrV4::new(src, 0))?;
        for _ in 0..count {
            // A refused send is a drop like any other: the listener counts what arrives.
            let _ = s.send_to(MARK, dst);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })?
}

/// (IP protocol, source port, destination port, holds MARK) of each IPv4/IPv6 frame.
type Frame = gateway_test_support::capture::Frame;

/// Captures every frame on `iface` in `ns` until `stop`.
fn capture(ns: &NetNs, iface: &str, stop: Arc<AtomicBool>) -> JoinHandle<Result<Vec<Frame>>> {
    gateway_test_support::capture::capture(ns, iface, MARK, stop)
}

/// An attacker who owns bob's laptop: a tunnel in bob's namespace with bob's private key,
/// its interface claiming alice's overlay address, the connector as its peer. Sends
/// `count` marked datagrams from alice's address to the listener through it.
fn spoof_through_own_tunnel(env: &TunnelEnv, bin: &Path, count: usize) -> Result<()> {
    let pair = keys::load(&env.bob.key).context("loading bob's private key")?;
    let conn_key = keys::decode_key(&env.conn.public_key(bin)?)?;
    let path = format!("/run/netns/{}", env.bob.ns.name());
    let target = SocketAddr::V4(SocketAddrV4::new(WEB, MARK_PORT));
    let endpoint = SocketAddr::V4(SocketAddrV4::new(ALICE.gateway, WG_PORT));
    let h = std::thread::spawn(move || -> Result<()> {
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd; it affects this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = TunnelOptions {
            interface: ROGUE_IF.into(),
            listen_port: 0,
            mtu: 1420,
            persistent_keepalive: None,
            skip_cryptokey_routing: false,
        };
        let t = rt.block_on(Tunnel::start(opts, pair))?;
        let web32 = format!("{WEB}/32").parse()?;
        configure_link(ROGUE_IF, 1420, &[IpAddr::V4(ALICE_OVERLAY)])?;
        t.set_peers(&[PeerSpec {
            name: CONNECTOR.into(),
            public_key: conn_key,
            endpoint: Some(endpoint),
            allowed_ips: vec![web32],
        }]);
        sync_routes(ROGUE_IF, &[web32])?;
        let sock = UdpSocket::bind(SocketAddrV4::new(ALICE_OVERLAY, 0))?;
        for _ in 0..count {
            let _ = sock.send_to(MARK, target);
            // Let the tunnel's tasks run (handshake, encryption) between datagrams.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(400)).await });
        drop(t);
        let _ = Command::new("ip").args(["link", "del", ROGUE_IF]).output();
        Ok(())
    });
    let r = h
        .join()
        .map_err(|_| anyhow::anyhow!("the rogue tunnel's thread panicked"));
    // Whatever happened, the rogue interface (and its route) goes.
    let _ = env.bob.ns.ip(&["link", "del", ROGUE_IF]);
    r?
}

/// The connector's `tunnel.drops.cryptokey_routing` from `gateway-agent status`.
fn cryptokey_drops(env: &TunnelEnv) -> Option<u64> {
    let out = env.agents.first()?.status("json").ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["tunnel"]["drops"]["cryptokey_routing"].as_u64()
}

/// Alice's own marked datagrams to the listener: how many of `count` arrived.
fn alice_control(env: &TunnelEnv, count: usize) -> Result<u64> {
    let servers = env.servers.as_ref().context("servers started")?;
    let before = servers.marked();
    send_marked(
        &env.alice.ns,
        None,
        SocketAddr::V4(SocketAddrV4::new(WEB, MARK_PORT)),
        count,
    )?;
    sleep(Duration::from_millis(400))?;
    Ok(servers.marked() - before)
}

fn build(dir: &Path, created: &mut Created) -> Result<TunnelEnv> {
    let mut make = |prefix: &str| -> Result<NetNs> {
        let ns = NetNs::new(prefix)?;
        created.namespaces.push(ns.name().to_string());
        Ok(ns)
    };
    let alice = make("zdta")?;
    let bob = make("zdtb")?;
    let conn = make("zdtc")?;
    let res = make("zdtr")?;
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
    let (bob_if, conn_bob_if) = record(veth_pair(
        &bob,
        &[&format!("{}/24", BOB.ip)],
        &conn,
        &[&format!("{}/24", BOB.gateway)],
    )?);
    record(veth_pair(
        &conn,
        &[&format!("{CONN_RES_IP}/24"), "2001:db8:1::1/64"],
        &res,
        &[
            &format!("{WEB}/24"),
            &format!("{DB}/24"),
            &format!("{WEB6}/64"),
        ],
    )?);
    alice.ip(&["route", "add", "default", "via", &ALICE.gateway.to_string()])?;
    bob.ip(&["route", "add", "default", "via", &BOB.gateway.to_string()])?;
    // No route from the resources back to 100.64.0.0/10 or 2001:db8:ff::/64.
    let pid = std::process::id();
    let host = |label: String, name, ns, stem: &str, links| TunnelHost {
        label,
        name,
        ns,
        config: dir.join(format!("tunnel-{stem}.toml")),
        key: dir.join(format!("tunnel-keys-{stem}/wireguard.key")),
        log: dir.join(format!("tunnel-{stem}.log")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/zt-demo-{pid}-tunnel-{stem}")),
        links,
    };
    let env = TunnelEnv {
        agents: Vec::new(),
        servers: None,
        alice: host(
            format!("device {}", ALICE.device),
            ALICE.device,
            alice,
            "alice",
            vec![alice_if],
        ),
        bob: host(
            format!("device {}", BOB.device),
            BOB.device,
            bob,
            "bob",
            vec![bob_if],
        ),
        conn: host(
            format!("connector {CONNECTOR}"),
            CONNECTOR,
            conn,
            "connector",
            vec![conn_alice_if, conn_bob_if],
        ),
        res,
        policy: dir.join("tunnel-policy.toml"),
    };
    progress!(
        "alice     {:<10} {}/24, overlay {ALICE_OVERLAY} {ALICE_OVERLAY6}   (agent, [tunnel])",
        env.alice.ns.name(),
        ALICE.ip
    );
    progress!(
        "bob       {:<10} {}/24, overlay {BOB_OVERLAY} {BOB_OVERLAY6}   (agent, [tunnel])",
        env.bob.ns.name(),
        BOB.ip
    );
    progress!(
        "connector {:<10} {} / {} / {CONN_RES_IP} (agent, [tunnel] on :{WG_PORT}, masquerades)",
        env.conn.ns.name(),
        ALICE.gateway,
        BOB.gateway
    );
    progress!(
        "resources {:<10} {WEB} web, {WEB6} web-v6, {DB} db (no route back to the overlay)",
        env.res.name()
    );
    for (h, role, port) in [
        (&env.conn, "connector", WG_PORT),
        (&env.alice, "device", 0),
        (&env.bob, "device", 0),
    ] {
        h.write_config(role, &env.policy, port)?;
    }
    Ok(env)
}

fn write_policy(env: &TunnelEnv, bin: &Path, alice_granted: bool) -> Result<()> {
    let text = tunnel_policy(
        &env.conn.public_key(bin)?,
        &env.alice.public_key(bin)?,
        &env.bob.public_key(bin)?,
        alice_granted,
    );
    std::fs::write(&env.policy, text).with_context(|| format!("writing {}", env.policy.display()))
}

/// The tunnel act: its own hosts, agents, checks and teardown.
pub(crate) fn tunnel_act(
    opts: &Options,
    dir: &Path,
    checks: &mut Checks,
    created: &mut Created,
) -> Result<()> {
    println!(
        "\n== the WireGuard tunnel, attacked: new hosts, three standalone agents with [tunnel] \
         and a policy file"
    );
    let mut env = build(dir, created)?;
    check_interrupted()?;
    for h in [&env.conn, &env.alice, &env.bob] {
        progress!(
            "{:<26} gateway-agent public-key: {}",
            h.label,
            h.public_key(&opts.agent)?
        );
    }
    write_policy(&env, &opts.agent, true)?;
    progress!(
        "policy {} (alice: web + web-v6, bob: db; the keys above, the connector's endpoint \
         {}:{WG_PORT})",
        env.policy.display(),
        ALICE.gateway
    );
    let web = SocketAddr::V4(SocketAddrV4::new(WEB, 443));
    let web6: SocketAddr = format!("[{WEB6}]:443").parse()?;
    let db = SocketAddr::V4(SocketAddrV4::new(DB, 5432));
    let mark_dst = SocketAddr::V4(SocketAddrV4::new(WEB, MARK_PORT));
    env.servers = Some(TunnelServers::start(&env.res, &[web, web6, db], mark_dst)?);
    progress!("echo servers on {web}, {web6}, {db}; a counting UDP listener on {mark_dst}");
    for h in [&env.conn, &env.alice, &env.bob] {
        check_interrupted()?;
        progress!(
            "starting {}: nsenter --net=/run/netns/{} gateway-agent run --config {}",
            h.label,
            h.ns.name(),
            h.config.display()
        );
        let mut agent = Agent::start_written(
            &h.label,
            &h.ns,
            &opts.agent,
            &h.config,
            h.pin_dir.clone(),
            h.log.clone(),
            created,
        )?;
        let t0 = Instant::now();
        let ready = agent.wait_ready(Duration::from_secs(30));
        env.agents.push(agent);
        progress!("{} {} ({} ms)", h.label, ready?, t0.elapsed().as_millis());
    }

    println!("\n== through the tunnel (each check: what was expected, what was seen)");
    // (a) + (c): alice's traffic while the connector's link to her is captured.
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(&env.conn.ns, &env.conn.links[0], stop.clone());
    sleep(Duration::from_millis(200))?;
    for (what, dst) in [
        ("alice -> web v4 (tunnel)", web),
        ("alice -> web v6 (tunnel)", web6),
    ] {
        let o = tcp_try(&env.alice.ns, &dst.to_string(), TUNNEL_ALLOW_TIMEOUT);
        verdict(
            checks,
            &format!("{what} {dst}/tcp"),
            "allow",
            o == TcpOutcome::Echoed,
            &tcp_seen(&o, TUNNEL_ALLOW_TIMEOUT),
        );
    }
    let arrived = alice_control(&env, 5)?;
    stop.store(true, Ordering::Relaxed);
    let frames = cap
        .join()
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
    verdict(
        checks,
        &format!("alice -> {mark_dst}/udp, 5 datagrams"),
        ">= 4 arrive",
        arrived >= 4,
        &format!("{arrived} arrived at the counting listener"),
    );
    let o = tcp_try(&env.alice.ns, &db.to_string(), DENY_TIMEOUT);
    verdict(
        checks,
        &format!("alice -> db {db}/tcp (no grant)"),
        "deny",
        o == TcpOutcome::Silent,
        &tcp_seen(&o, DENY_TIMEOUT),
    );
    let o = tcp_try(&env.bob.ns, &db.to_string(), TUNNEL_ALLOW_TIMEOUT);
    verdict(
        checks,
        &format!("bob   -> db {db}/tcp (listener control)"),
        "allow",
        o == TcpOutcome::Echoed,
        &tcp_seen(&o, TUNNEL_ALLOW_TIMEOUT),
    );

    // (c) the capture.
    let wg = |f: &&Frame| f.0 == 17 && (f.1 == WG_PORT || f.2 == WG_PORT) && !f.3;
    let other: Vec<&Frame> = frames.iter().filter(|f| !wg(f)).collect();
    let marked = frames.iter().filter(|f| f.3).count();
    verdict(
        checks,
        &format!("capture on {} (connector, alice's link)", env.conn.links[0]),
        "only WireGuard UDP :51820",
        !frames.is_empty() && other.is_empty(),
        &format!(
            "{} frames, {} WireGuard UDP, {} other (first: {:?}), {marked} with the cleartext marker",
            frames.len(),
            frames.len() - other.len(),
            other.len(),
            other.first()
        ),
    );

    // (d) the connector's record of alice's flow.
    report_tunnel_log(checks, &env)?;

    // (b) bob claiming alice's overlay address.
    let servers_marked = |env: &TunnelEnv| env.servers.as_ref().map_or(0, TunnelServers::marked);
    let drops_before = cryptokey_drops(&env).unwrap_or(0);
    let before = servers_marked(&env);
    let r = spoof_through_own_tunnel(&env, &opts.agent, 30);
    sleep(Duration::from_millis(200))?;
    let got = servers_marked(&env) - before;
    verdict(
        checks,
        &format!("bob as {ALICE_OVERLAY}, bob's key, own tunnel"),
        "0 of 30 arrive",
        r.is_ok() && got == 0,
        &match &r {
            Ok(()) => format!("{got} arrived"),
            Err(e) => format!("the rogue tunnel failed: {e:#}"),
        },
    );
    // The spoof did reach the connector, encrypted with bob's key: it dropped it after
    // decrypting (the source is not one of bob's addresses). Its status is written every
    // 2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let drops = loop {
        let now = cryptokey_drops(&env);
        if now.is_some_and(|n| n > drops_before) || Instant::now() > deadline {
            break now;
        }
        sleep(Duration::from_millis(250))?;
    };
    verdict(
        checks,
        "  connector status: tunnel.drops.cryptokey_routing",
        &format!("more than {drops_before} (the spoof arrived, dropped)"),
        drops.is_some_and(|n| n > drops_before),
        &drops.map_or("no tunnel status".into(), |n| n.to_string()),
    );
    let control = alice_control(&env, 5)?;
    verdict(
        checks,
        "  control: alice's own 5 datagrams, just after",
        ">= 4 arrive",
        control >= 4,
        &format!("{control} arrived"),
    );
    let phys = env.bob.links[0].clone();
    let spoof_src = format!("{ALICE_OVERLAY}/32");
    let web32 = format!("{WEB}/32");
    env.bob.ns.ip(&["addr", "add", &spoof_src, "dev", &phys])?;
    env.bob.ns.ip(&[
        "route",
        "add",
        &web32,
        "via",
        &BOB.gateway.to_string(),
        "src",
        &ALICE_OVERLAY.to_string(),
    ])?;
    let before = servers_marked(&env);
    let sent = send_marked(&env.bob.ns, Some(ALICE_OVERLAY), mark_dst, 30);
    sleep(Duration::from_millis(400))?;
    let got = servers_marked(&env) - before;
    env.bob.ns.ip(&["route", "del", &web32])?;
    env.bob.ns.ip(&["addr", "del", &spoof_src, "dev", &phys])?;
    verdict(
        checks,
        &format!("bob as {ALICE_OVERLAY}, cleartext on {phys}"),
        "0 of 30 arrive",
        sent.is_ok() && got == 0,
        &match &sent {
            Ok(()) => format!("{got} arrived"),
            Err(e) => format!("sending failed: {e:#}"),
        },
    );
    let control = alice_control(&env, 5)?;
    verdict(
        checks,
        "  control: alice's own 5 datagrams, just after",
        ">= 4 arrive",
        control >= 4,
        &format!("{control} arrived"),
    );

    // (e) revocation.
    revoke(checks, &mut env, &opts.agent)?;

    tunnel_teardown(checks, env)
}

/// The connector's flow_start for alice: her overlay address as the source, her real
/// address and tunnel port as public_ip/public_port.
fn report_tunnel_log(checks: &mut Checks, env: &TunnelEnv) -> Result<()> {
    let alice_port = env
        .agents
        .get(1)
        .and_then(|a| a.status("json").ok())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["tunnel"]["listen_port"].as_u64());
    let deadline = Instant::now() + Duration::from_secs(5);
    let rec = loop {
        let (recs, _) = read_log(&env.conn.log);
        let found = recs.into_iter().find(|r| {
            s(r, "event") == "flow_start"
                && s(r, "device") == ALICE.device
                && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(WEB))
        });
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        sleep(Duration::from_millis(200))?;
    };
    let seen = rec
        .as_ref()
        .map_or("no flow_start of alice-laptop to web".into(), |r| {
            format!(
                "src_ip {}, public_ip {}, public_port {}",
                r["src_ip"], r["public_ip"], r["public_port"]
            )
        });
    let ok = rec.as_ref().is_some_and(|r| {
        ip_of(&r["src_ip"]) == Some(IpAddr::V4(ALICE_OVERLAY))
            && ip_of(&r["public_ip"]) == Some(IpAddr::V4(ALICE.ip))
            && alice_port.is_some()
            && port_of(&r["public_port"]) == alice_port
    });
    verdict(
        checks,
        "connector log: alice's flow_start to web",
        &format!(
            "src_ip {ALICE_OVERLAY}, public_ip {}, public_port {} (her tunnel port)",
            ALICE.ip,
            alice_port.map_or("?".into(), |p| p.to_string())
        ),
        ok,
        &seen,
    );
    if let Some(r) = &rec {
        println!("         {}", compact(r));
    }
    Ok(())
}

/// Removes alice's grant from the policy file while she holds a connection open.
fn revoke(checks: &mut Checks, env: &mut TunnelEnv, bin: &Path) -> Result<()> {
    let web = SocketAddr::V4(SocketAddrV4::new(WEB, 443));
    let mut open = env
        .alice
        .ns
        .run(move || TcpStream::connect_timeout(&web, TUNNEL_ALLOW_TIMEOUT))?
        .context("alice's connection to web, to be cut")?;
    open.set_read_timeout(Some(ALLOW_TIMEOUT))?;
    let mut b = [0u8; 1];
    let before = open
        .write_all(b"x")
        .and_then(|()| open.read_exact(&mut b))
        .is_ok();
    verdict(
        checks,
        "alice's open connection to web, before",
        "echoes",
        before,
        if before { "echoed" } else { "no echo" },
    );
    write_policy(env, bin, false)?;
    progress!("removed engineering-web from {}", env.policy.display());
    let conn = env.agents.first_mut().context("the connector's agent")?;
    // The first change was the start (alice and bob added); the second removes alice.
    let t0 = Instant::now();
    let changed = conn.process.wait_until_or(
        "a second \"tunnel peers changed\"",
        Duration::from_secs(10),
        |a| a.count("tunnel peers changed") >= 2,
        check_interrupted,
    );
    progress!(
        "connector: second \"tunnel peers changed\" {}",
        match &changed {
            Ok(()) => format!("after {} ms", t0.elapsed().as_millis()),
            Err(e) => format!("never came: {e:#}"),
        }
    );
    let cut = open.write_all(b"y").is_err() || open.read_exact(&mut b).is_err();
    verdict(
        checks,
        "alice's open connection to web, after",
        "cut",
        changed.is_ok() && cut,
        if cut { "no echo: cut" } else { "still echoes" },
    );
    let names: Vec<String> = conn
        .status("json")
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| {
            v["tunnel"]["peers"].as_array().map(|ps| {
                ps.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    verdict(
        checks,
        "connector status: tunnel.peers",
        "[\"bob-laptop\"]",
        names == [BOB.device],
        &format!("{names:?}"),
    );
    Ok(())
}

/// Stops and detaches the act's agents, then deletes its hosts.
fn tunnel_teardown(checks: &mut Checks, mut env: TunnelEnv) -> Result<()> {
    println!("\n== tunnel teardown");
    for a in env.agents.iter_mut() {
        let r = a.stop().and_then(|_| a.detach());
        checks.check(
            r.is_ok(),
            format!(
                "tunnel: {} stops and detaches: {}",
                a.label,
                r.as_ref()
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default()
            ),
        );
        progress!(
            "stopped and detached {}{}",
            a.label,
            if a.pin_dir.exists() {
                " (pins LEFT)"
            } else {
                ""
            }
        );
    }
    env.agents.clear();
    env.servers = None;
    let names = [
        env.alice.ns.name().to_string(),
        env.bob.ns.name().to_string(),
        env.conn.ns.name().to_string(),
        env.res.name().to_string(),
    ];
    drop(env);
    progress!("deleted namespaces {}", names.join(", "));
    Ok(())
}
