//! `--ha`: three controllers on one PostgreSQL database. The cluster is the demo's own
//! (Debian's server programs, a temporary folder, a port on the host's loopback); the
//! controllers, in their namespace, reach it through its Unix socket (a file: namespaces
//! do not separate it) with `peer` authentication as the system user they run as. The
//! agents list all three controllers (`url` and `fallback_urls`). After the tunnel act, the
//! controller the agents use is killed (SIGKILL): each agent must move to another, and a
//! change applied through the third must reach them (alice's grants, removed by the tunnel
//! act, come back: the connector takes her key again and her new connection to web echoes).

use crate::prelude::*;
use gateway_test_support::pg_cluster::Cluster;

/// The cluster and the database the controllers use.
pub(crate) struct Database {
    /// Stopped and removed when dropped (after the controllers: see `scenario`).
    _cluster: Cluster,
    pub(crate) url: String,
}

/// One check of this act: printed, and counted.
fn said(checks: &mut Checks, ok: bool, what: String) {
    progress!("{what}{}", if ok { "" } else { "  <- WRONG" });
    checks.check(ok, format!("ha: {what}"));
}

/// `url` of controller `i` (0, 1, 2).
fn url(i: u16) -> String {
    format!("https://{CTL_IP}:{}", CTL_PORT + i)
}

/// Starts the cluster; creates the role of the system user the controllers run as and a
/// database it owns.
pub(crate) fn cluster() -> Result<Database> {
    println!("\n== PostgreSQL (a throwaway cluster for three controllers)");
    let cluster = Cluster::start(&[]).map_err(|e| anyhow::anyhow!("starting PostgreSQL: {e}"))?;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    for sql in [
        format!("CREATE ROLE \"{user}\" LOGIN"),
        format!("CREATE DATABASE ztgw OWNER \"{user}\""),
    ] {
        let out = Command::new(cluster.bin.join("psql"))
            .args([cluster.url().as_str(), "-qc", &sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    let socket = cluster.dir.to_string_lossy().replace('/', "%2F");
    let url = format!("postgres://{user}@{socket}:{}/ztgw", cluster.port);
    progress!(
        "cluster in {} (port {}, {:.1} s to start); the controllers' database: {url}",
        cluster.dir.display(),
        cluster.port,
        cluster.start_seconds
    );
    Ok(Database {
        _cluster: cluster,
        url,
    })
}

/// Kills the agents' controller; checks that every agent moves and that a change through
/// another controller reaches them.
pub(crate) fn act(opts: &Options, env: &mut Env, dir: &Path, checks: &mut Checks) -> Result<()> {
    println!(
        "\n== three controllers on one database: the agents' controller killed, a change through another"
    );
    const SWITCHED: &str = "switched to another controller";
    let switched: Vec<usize> = env
        .agents
        .iter()
        .map(|a| a.process.count(SWITCHED))
        .collect();
    let peer_changes = env.agents[0].process.count("tunnel peers changed");
    if let Some(mut c) = env.controller.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let killed = Instant::now();
    progress!("controller 1 ({}) killed with SIGKILL", url(0));
    for (i, a) in env.agents.iter_mut().enumerate() {
        let moved = a.process.wait_until_or(
            SWITCHED,
            Duration::from_secs(20),
            |p| p.count(SWITCHED) > switched[i],
            check_interrupted,
        );
        said(
            checks,
            moved.is_ok(),
            format!(
                "{}: moved to another controller ({})",
                a.label,
                match &moved {
                    Ok(()) => format!(
                        "logged `{SWITCHED}` {} ms after the kill",
                        killed.elapsed().as_millis()
                    ),
                    Err(e) => format!("{e:#}"),
                }
            ),
        );
    }
    // The policy as first applied (alice's grants back), through the third controller.
    let policy = dir.join("demo.toml");
    let out = gatewayctl_at(
        opts,
        env,
        &url(2),
        &["apply", "--yes", &policy.display().to_string()],
    )?;
    said(
        checks,
        out.status.success(),
        format!(
            "gatewayctl --controller {} apply --yes {} (alice's grants back): {}",
            url(2),
            policy.display(),
            apply_outcome(&out)
        ),
    );
    let changed =
        connector_peers_changed(env, peer_changes, "the change through the third controller");
    let peers = env.agents[0].peers().unwrap_or_default();
    let mut want = vec![ALICE.device.to_string(), BOB.device.to_string()];
    want.sort();
    said(
        checks,
        changed.is_ok() && peers == want,
        format!(
            "the connector has the change made through another controller: tunnel.peers {peers:?} \
             (want {want:?}), {}",
            match &changed {
                Ok(took) => format!("{} ms after the apply", took.as_millis()),
                Err(e) => format!("{e:#}"),
            }
        ),
    );
    // Alice's new connection to web echoes again (the tunnel may need a handshake first).
    let web = SocketAddr::V4(SocketAddrV4::new(WEB, 443));
    let deadline = Instant::now() + Duration::from_secs(15);
    let echoed = loop {
        let ok = env
            .alice
            .run(move || -> bool {
                let Ok(mut s) = TcpStream::connect_timeout(&web, Duration::from_secs(2)) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = [0u8; 1];
                s.write_all(b"h")
                    .and_then(|()| s.read_exact(&mut b))
                    .is_ok()
            })
            .unwrap_or(false);
        if ok || Instant::now() > deadline {
            break ok;
        }
        sleep(Duration::from_millis(200))?;
    };
    said(
        checks,
        echoed,
        format!(
            "alice -> web:443 after the change through another controller: {}",
            if echoed {
                "echoes"
            } else {
                "no echo within 15 s"
            }
        ),
    );
    // The controller they moved to knows them: connected, the current generation
    // acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, seen) = loop {
        let out = gatewayctl_at(opts, env, &url(1), &["agents", "--output", "json"])?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let agents = v["agents"].as_array().cloned().unwrap_or_default();
        let ready = agents
            .iter()
            .filter(|a| a["connected"] == true && a["in_sync"] == true)
            .count();
        let seen = format!("{ready} of {} connected and in sync", agents.len());
        if (ready == env.agents.len() && agents.len() == env.agents.len())
            || Instant::now() > deadline
        {
            break (ready == env.agents.len(), seen);
        }
        sleep(Duration::from_millis(200))?;
    };
    said(
        checks,
        ok,
        format!(
            "gatewayctl --controller {} agents: every agent connected there, current generation acknowledged ({seen})",
            url(1)
        ),
    );
    Ok(())
}
