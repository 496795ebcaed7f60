//! The environment: namespaces and links, the teardown, and the final audit that nothing
//! is left behind.

use crate::prelude::*;

// ---------------------------------------------------------------- the environment

/// Everything the demo runs, in teardown order: agents first (detached while their
/// namespaces exist), then the servers, then the namespaces.
pub(crate) struct Env {
    pub(crate) agents: Vec<Agent>,
    pub(crate) services: Option<Services>,
    /// The controller process (stopped last).
    pub(crate) controller: Option<Child>,
    /// With `--ha`, the two other controllers on the same database.
    pub(crate) standbys: Vec<Child>,
    /// The admin API key `gateway-controller init` printed, and the deployment's CA.
    pub(crate) api_key: String,
    pub(crate) ca: PathBuf,
    pub(crate) ctl: NetNs,
    pub(crate) alice: NetNs,
    pub(crate) bob: NetNs,
    pub(crate) conn: NetNs,
    pub(crate) res: NetNs,
    /// alice's and bob's uplinks, and the connector's links toward alice and bob.
    pub(crate) alice_if: String,
    pub(crate) bob_if: String,
    pub(crate) conn_alice_if: String,
    pub(crate) conn_bob_if: String,
}

impl Env {
    /// Stops the controllers (SIGTERM, then SIGKILL after 5 s); says how each went.
    pub(crate) fn stop_controller(&mut self) -> String {
        let standbys = std::mem::take(&mut self.standbys);
        let mut how = vec![match self.controller.take() {
            Some(child) => stop_child(child),
            None if !standbys.is_empty() => "killed before (--ha)".into(),
            None => "not running".into(),
        }];
        how.extend(standbys.into_iter().map(stop_child));
        how.join("; ")
    }
}

/// SIGTERM, then SIGKILL after 5 s; how it ended.
fn stop_child(mut child: Child) -> String {
    {
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
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        })
}

/// Runs the demo; `Ok(true)` when every check passed and nothing was left behind.
/// The four hosts, printed.
pub(crate) fn build_hosts(created: &mut Created) -> Result<Env> {
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
    for c in [&ALICE, &BOB] {
        progress!(
            "{:<9} {:<10} {}/24 via {}, overlay {} {} (laptop, agent as device {}, [tunnel])",
            c.name,
            match c.name {
                "alice" => env.alice.name(),
                _ => env.bob.name(),
            },
            c.ip,
            c.gateway,
            c.overlay,
            c.overlay6,
            c.device
        );
    }
    progress!(
        "connector {:<10} {} / {} / {} (agent as {CONNECTOR} on {conn_alice_if}, {conn_bob_if}; \
         [tunnel] on {}:{WG_PORT}; masquerades toward the resources)",
        env.conn.name(),
        ALICE.gateway,
        BOB.gateway,
        CONN_RES_IP,
        ALICE.gateway
    );
    progress!(
        "resources {:<10} {WEB} web, {DB} db, {WIKI} wiki, {DNS} dns (no route back to the overlay)",
        env.res.name()
    );
    Ok(env)
}

pub(crate) fn build_env(created: &mut Created) -> Result<Env> {
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
    let (bob_if, conn_bob_if) = record(veth_pair(
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
            &format!("{WIKI}/24"),
            &format!("{DNS}/24"),
            &format!("{ZONE}/24"),
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
    // The physical links only (the controller's host and the laptops' uplinks, for the
    // cleartext attempts of the teardown): no route back to the overlay, whose replies
    // reach the laptops because the connector masquerades.
    res.ip(&[
        "route",
        "add",
        "198.19.0.0/16",
        "via",
        &CONN_RES_IP.to_string(),
    ])?;
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(Env {
        agents: Vec::new(),
        services: None,
        controller: None,
        standbys: Vec::new(),
        api_key: String::new(),
        ca: PathBuf::new(),
        ctl,
        alice,
        bob,
        conn,
        res,
        alice_if,
        bob_if,
        conn_alice_if,
        conn_bob_if,
    })
}

/// Stops the agents (enforcement must continue), detaches them (it must stop), deletes
/// the hosts.
pub(crate) fn teardown(checks: &mut Checks, mut env: Env) -> Result<()> {
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
    let web = web_probe();
    // Through the tunnel: the userspace backend runs inside the agent, so with the agent
    // gone nothing is carried (fail closed) until it restarts.
    let alice_tunnel = probe_once(
        &env.alice,
        &Probe {
            who: Who::Alice,
            ..web
        },
    )?;
    progress!(
        "with the agents stopped: alice -> web through the tunnel {}",
        alice_tunnel.describe()
    );
    checks.check(
        alice_tunnel.blocked(),
        format!(
            "alice -> web with the agents stopped: the userspace tunnel ended with her agent, \
             nothing may get through: {}",
            alice_tunnel.describe()
        ),
    );
    // Around the tunnel: a route to web over the physical uplink, in cleartext. The shields
    // stay attached (pinned) and drop it.
    let web32 = format!("{WEB}/32");
    for (ns, c) in [(&env.alice, &ALICE), (&env.bob, &BOB)] {
        ns.ip(&["route", "replace", &web32, "via", &c.gateway.to_string()])?;
    }
    let cleartext = |ns: &NetNs, who| probe_once(ns, &Probe { who, ..web });
    for (ns, who) in [(&env.alice, Who::Alice), (&env.bob, Who::Bob)] {
        let c = client(who);
        let o = cleartext(ns, who)?;
        progress!(
            "with the agents stopped: {} -> web in cleartext over the uplink (from {}) {}",
            c.name,
            c.ip,
            if o.blocked() {
                "still blocked (shields)"
            } else {
                "GOT THROUGH"
            }
        );
        checks.check(
            o.blocked(),
            format!(
                "enforcement continues after the agents exit: {} -> web in cleartext {}",
                c.name,
                o.describe()
            ),
        );
    }
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
    let after = cleartext(&env.bob, Who::Bob)?;
    progress!(
        "after detach the programs are gone: bob -> web in cleartext {}",
        if after.reached() {
            "reaches the server (no gateway any more)"
        } else {
            "gets no answer"
        }
    );
    checks.check(
        matches!(after, Outcome::Exchanged { .. }),
        format!(
            "after detach nothing enforces any more: bob -> web in cleartext {}",
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

pub(crate) fn verify_cleanup(created: &Created) -> Vec<String> {
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
