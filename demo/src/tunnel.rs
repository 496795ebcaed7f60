//! The tunnel, attacked, on the main act's hosts once its traffic is checked: a capture of
//! the connector's link to alice (taken during the traffic) holds only WireGuard UDP and
//! the agents' TLS to the controller; the connector's record of alice's flow names her real
//! address and tunnel port; bob claiming alice's overlay address, through a tunnel of his
//! own with his own key or as cleartext frames on his link, gets nothing to the dns server
//! (alice's own datagrams to it, just after, are the control); applying the policy without
//! alice's grants through the controller cuts her open connection and drops her from the
//! connector's peers.
//!
//! Each check prints what was expected and what was seen.

use crate::prelude::*;
use gateway_test_support::{capture::Frame, tunnel::NsTunnel};
use gateway_user::tunnel::{
    Options as TunnelOptions, PeerSpec, keys,
    tun::{configure_link, sync_routes},
};

/// In every payload alice sends during the traffic ("alice -> web: request 1", see
/// [`messages`]): found in a capture, it is cleartext on the wire.
const MARK: &[u8] = b"alice -> ";
/// The datagrams of the spoofs and their controls (to dns, which alice may use).
const SPOOF_PAYLOAD: &[u8] = b"alice -> dns: who sent this?";
/// The rogue tunnel's interface in bob's namespace.
const ROGUE_IF: &str = "ztgevil0";
/// How long an open connection gets to echo once alice is revoked.
const CUT_TIMEOUT: Duration = Duration::from_millis(1500);

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

/// A capture of the connector's link to alice, running while the main act's traffic does.
pub(crate) struct LinkCapture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Frame>>>>,
}

impl LinkCapture {
    pub(crate) fn start(env: &Env) -> Result<LinkCapture> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = gateway_test_support::capture::capture(
            &env.conn,
            &env.conn_alice_if,
            MARK,
            stop.clone(),
        );
        sleep(Duration::from_millis(200))?;
        Ok(LinkCapture {
            stop,
            handle: Some(handle),
        })
    }

    pub(crate) fn finish(mut self) -> Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .context("the capture ran")?
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?
    }
}

impl Drop for LinkCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Datagrams the dns server has seen so far.
fn dns_seen(env: &Env) -> usize {
    env.services.as_ref().map_or(0, |s| s.count_of("dns"))
}

/// Sends `count` datagrams to dns from inside `ns`, from `src`.
fn send_to_dns(ns: &NetNs, src: Ipv4Addr, count: usize) -> Result<()> {
    ns.run(move || -> Result<()> {
        let s = UdpSocket::bind(SocketAddrV4::new(src, 0))?;
        for _ in 0..count {
            // A refused send is a drop like any other: the server counts what arrives.
            let _ = s.send_to(SPOOF_PAYLOAD, SocketAddrV4::new(DNS, 53));
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })?
}

/// Alice's own datagrams to dns: how many of `count` arrived.
fn alice_control(env: &Env, count: usize) -> Result<usize> {
    let before = dns_seen(env);
    send_to_dns(&env.alice, ALICE.overlay, count)?;
    sleep(Duration::from_millis(300))?;
    Ok(dns_seen(env) - before)
}

/// Every check of this act, in order.
pub(crate) fn tunnel_act(
    opts: &Options,
    env: &mut Env,
    dir: &Path,
    checks: &mut Checks,
    frames: &[Frame],
    logs: &Logs,
) -> Result<()> {
    println!("\n== the tunnel, attacked (each check: what was expected, what was seen)");
    report_capture(checks, env, frames);
    report_public_port(checks, env, logs);
    check_interrupted()?;
    spoofs(opts, env, dir, checks)?;
    check_interrupted()?;
    revoke(opts, env, dir, checks)
}

/// The capture of the traffic: WireGuard UDP and TLS to the controller, nothing else,
/// none of alice's payloads in clear.
fn report_capture(checks: &mut Checks, env: &Env, frames: &[Frame]) {
    let wg = |f: &Frame| f.0 == 17 && (f.1 == WG_PORT || f.2 == WG_PORT) && !f.3;
    let ctl = |f: &Frame| f.0 == 6 && (f.1 == CTL_PORT || f.2 == CTL_PORT) && !f.3;
    // IPv6 neighbor discovery and MLD (ICMPv6 types 133-137, 143; the capture reads the
    // type as the first "port" byte): link-local by definition, they reach no resource.
    let nd = |f: &Frame| f.0 == 58 && matches!(f.1 >> 8, 133..=137 | 143) && !f.3;
    let n_wg = frames.iter().filter(|f| wg(f)).count();
    let n_ctl = frames.iter().filter(|f| ctl(f)).count();
    let n_nd = frames.iter().filter(|f| nd(f)).count();
    let other: Vec<&Frame> = frames
        .iter()
        .filter(|f| !wg(f) && !ctl(f) && !nd(f))
        .collect();
    let marked = frames.iter().filter(|f| f.3).count();
    verdict(
        checks,
        &format!("capture on {} (connector, alice's link)", env.conn_alice_if),
        &format!("only WireGuard UDP :{WG_PORT} (and TLS to the controller, IPv6 ND)"),
        n_wg > 0 && other.is_empty(),
        &format!(
            "{} frames during the traffic: {n_wg} WireGuard UDP, {n_ctl} TCP :{CTL_PORT}, \
             {n_nd} IPv6 ND/MLD, {} other (first: {:?}), {marked} with alice's cleartext {:?}",
            frames.len(),
            other.len(),
            other.first(),
            String::from_utf8_lossy(MARK)
        ),
    );
}

/// The connector's flow_start for alice's web: her overlay address as the source, her real
/// address and tunnel port as public_ip/public_port.
fn report_public_port(checks: &mut Checks, env: &Env, logs: &Logs) {
    let alice_port = env
        .agents
        .get(1)
        .and_then(|a| a.status("json").ok())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["tunnel"]["listen_port"].as_u64());
    let rec = logs.conn.iter().find(|r| {
        s(r, "event") == "flow_start"
            && s(r, "device") == ALICE.device
            && ip_of(&r["dst_ip"]) == Some(IpAddr::V4(WEB))
    });
    let seen = rec.map_or("no flow_start of alice-laptop to web".into(), |r| {
        format!(
            "src_ip {}, public_ip {}, public_port {}",
            r["src_ip"], r["public_ip"], r["public_port"]
        )
    });
    let ok = rec.is_some_and(|r| {
        ip_of(&r["src_ip"]) == Some(IpAddr::V4(ALICE.overlay))
            && ip_of(&r["public_ip"]) == Some(IpAddr::V4(ALICE.ip))
            && alice_port.is_some()
            && port_of(&r["public_port"]) == alice_port
    });
    verdict(
        checks,
        "connector log: alice's flow_start to web",
        &format!(
            "src_ip {}, public_ip {}, public_port {} (her tunnel port)",
            ALICE.overlay,
            ALICE.ip,
            alice_port.map_or("?".into(), |p| p.to_string())
        ),
        ok,
        &seen,
    );
}

/// An attacker who owns bob's laptop: a tunnel in bob's namespace with bob's private key,
/// its interface claiming alice's overlay address, the connector as its peer. Sends
/// `count` datagrams from alice's address to dns through it.
fn spoof_through_own_tunnel(opts: &Options, env: &Env, dir: &Path, count: usize) -> Result<()> {
    let (_, _, _, bob_cfg) = agent_config(env, dir, 2, None);
    let pair = keys::load(&bob_cfg.tunnel.private_key_file).context("loading bob's key")?;
    let conn_config = dir.join(format!("{}.toml", HOSTS[0].1));
    let conn_key = keys::decode_key(&public_key(&opts.agent, &conn_config, CONNECTOR)?)?;
    let topts = TunnelOptions {
        interface: ROGUE_IF.into(),
        listen_port: 0,
        mtu: 1420,
        persistent_keepalive: None,
        skip_cryptokey_routing: false,
    };
    let rogue = NsTunnel::start(env.bob.name(), topts, pair, move |t| {
        let dns32 = format!("{DNS}/32").parse()?;
        configure_link(ROGUE_IF, 1420, &[IpAddr::V4(ALICE.overlay)])?;
        t.set_peers(&[PeerSpec {
            name: CONNECTOR.into(),
            public_key: conn_key,
            endpoint: Some(SocketAddr::V4(SocketAddrV4::new(ALICE.gateway, WG_PORT))),
            allowed_ips: vec![dns32],
        }]);
        sync_routes(ROGUE_IF, &[dns32])
    });
    let r = rogue.and_then(|rogue| {
        send_to_dns(&env.bob, ALICE.overlay, count)?;
        sleep(Duration::from_millis(400))?;
        drop(rogue);
        Ok(())
    });
    // Whatever happened, the rogue interface (persistent) and its route go.
    let _ = env.bob.ip(&["link", "del", ROGUE_IF]);
    r
}

/// The connector's `tunnel.drops.cryptokey_routing` from `gateway-agent status`.
fn cryptokey_drops(env: &Env) -> Option<u64> {
    let out = env.agents.first()?.status("json").ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["tunnel"]["drops"]["cryptokey_routing"].as_u64()
}

/// Bob claiming alice's overlay address: through his own tunnel, then as cleartext on his
/// link; each followed by alice's own datagrams as the control.
fn spoofs(opts: &Options, env: &Env, dir: &Path, checks: &mut Checks) -> Result<()> {
    let dns = SocketAddrV4::new(DNS, 53);
    let drops_before = cryptokey_drops(env).unwrap_or(0);
    let before = dns_seen(env);
    let r = spoof_through_own_tunnel(opts, env, dir, 30);
    let got = dns_seen(env) - before;
    verdict(
        checks,
        &format!(
            "bob as {} -> {dns}/udp, bob's key, own tunnel",
            ALICE.overlay
        ),
        "0 of 30 arrive",
        r.is_ok() && got == 0,
        &match &r {
            Ok(()) => format!("{got} arrived"),
            Err(e) => format!("the rogue tunnel failed: {e:#}"),
        },
    );
    // The spoof did reach the connector, encrypted with bob's key: it dropped it after
    // decrypting (the source is not one of bob's addresses).
    let deadline = Instant::now() + Duration::from_secs(5);
    let drops = loop {
        let now = cryptokey_drops(env);
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
    let control = alice_control(env, 5)?;
    verdict(
        checks,
        "  control: alice's own 5 datagrams, just after",
        ">= 4 arrive",
        control >= 4,
        &format!("{control} arrived"),
    );
    let phys = env.bob_if.clone();
    let spoof_src = format!("{}/32", ALICE.overlay);
    let dns32 = format!("{DNS}/32");
    env.bob.ip(&["addr", "add", &spoof_src, "dev", &phys])?;
    env.bob.ip(&[
        "route",
        "add",
        &dns32,
        "via",
        &BOB.gateway.to_string(),
        "src",
        &ALICE.overlay.to_string(),
    ])?;
    let before = dns_seen(env);
    let sent = send_to_dns(&env.bob, ALICE.overlay, 30);
    sleep(Duration::from_millis(400))?;
    let got = dns_seen(env) - before;
    env.bob.ip(&["route", "del", &dns32])?;
    env.bob.ip(&["addr", "del", &spoof_src, "dev", &phys])?;
    verdict(
        checks,
        &format!("bob as {} -> {dns}/udp, cleartext on {phys}", ALICE.overlay),
        "0 of 30 arrive",
        sent.is_ok() && got == 0,
        &match &sent {
            Ok(()) => format!("{got} arrived"),
            Err(e) => format!("sending failed: {e:#}"),
        },
    );
    let control = alice_control(env, 5)?;
    verdict(
        checks,
        "  control: alice's own 5 datagrams, just after",
        ">= 4 arrive",
        control >= 4,
        &format!("{control} arrived"),
    );
    Ok(())
}

/// The applied policy without alice's grants (every allow naming her or one of her groups)
/// and without the tests that expect her to be allowed; returns it and the removed rules.
fn without_alice_grants(text: &str) -> Result<(String, Vec<String>)> {
    let mut t: toml::Table = text.parse().context("the applied policy")?;
    let strs = |v: &toml::Value, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let field = |v: &toml::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut hers = vec![ALICE.user.to_string()];
    if let Some(groups) = t.get("group").and_then(|g| g.as_array()) {
        hers.extend(
            groups
                .iter()
                .filter(|g| strs(g, "members").iter().any(|m| m == ALICE.user))
                .filter_map(|g| field(g, "name")),
        );
    }
    let mut removed = Vec::new();
    if let Some(toml::Value::Array(allows)) = t.get_mut("allow") {
        allows.retain(|a| {
            let grants_her = strs(a, "principals").iter().any(|p| hers.contains(p));
            if grants_her {
                removed.push(field(a, "name").unwrap_or_default());
            }
            !grants_her
        });
    }
    if let Some(toml::Value::Array(tests)) = t.get_mut("test") {
        tests.retain(|x| {
            !(field(x, "from").as_deref() == Some(ALICE.device)
                && field(x, "expect").as_deref() == Some("allow"))
        });
    }
    Ok((toml::to_string(&t)?, removed))
}

/// Applies the policy without alice's grants through the controller while she holds a
/// connection to web open.
fn revoke(opts: &Options, env: &mut Env, dir: &Path, checks: &mut Checks) -> Result<()> {
    let web = SocketAddr::V4(SocketAddrV4::new(WEB, 443));
    let mut open = env
        .alice
        .run(move || TcpStream::connect_timeout(&web, ALLOW_TIMEOUT))?
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
    let applied = std::fs::read_to_string(dir.join("demo.toml"))?;
    let (text, removed) = without_alice_grants(&applied)?;
    let path = dir.join("demo-revoked.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let changes_before = env.agents[0].process.count("tunnel peers changed");
    let out = gatewayctl(opts, env, &["apply", "--yes", &path.display().to_string()])?;
    progress!(
        "gatewayctl apply --yes {} (without {}): {}",
        path.display(),
        removed.join(", "),
        apply_outcome(&out)
    );
    let changed = connector_peers_changed(env, changes_before, "the new policy");
    progress!(
        "connector: \"tunnel peers changed\" {}",
        match &changed {
            Ok(took) => format!("after {} ms", took.as_millis()),
            Err(e) => format!("never came: {e:#}"),
        }
    );
    open.set_read_timeout(Some(CUT_TIMEOUT))?;
    let cut = open.write_all(b"y").is_err() || open.read_exact(&mut b).is_err();
    verdict(
        checks,
        "alice's open connection to web, after",
        "cut",
        out.status.success() && changed.is_ok() && cut,
        if cut { "no echo: cut" } else { "still echoes" },
    );
    let peers = env.agents[0].peers().unwrap_or_default();
    verdict(
        checks,
        "connector status: tunnel.peers",
        &format!("[{:?}]", BOB.device),
        peers == [BOB.device],
        &format!("{peers:?}"),
    );
    Ok(())
}
