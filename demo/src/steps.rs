//! The scenario's steps: the policy, the controller, the agents, the traffic, the logs.

use crate::prelude::*;

/// Writes the policy into the demo folder and runs `gatewayctl policy check` on it.
pub(crate) fn prepare_policy(opts: &Options, dir: &Path, checks: &mut Checks) -> Result<PathBuf> {
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

/// Enrollment tokens for the two agents, and the CA they pin.
pub(crate) struct Tokens {
    pub(crate) connector: String,
    pub(crate) device: String,
    pub(crate) ca: PathBuf,
}

/// `gatewayctl --controller URL ARGS` run on the controller's host.
pub(crate) fn gatewayctl(opts: &Options, env: &Env, args: &[&str]) -> Result<Output> {
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
pub(crate) fn start_controller(
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
pub(crate) fn start_agents(
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
        let err = agent.stderr();
        for l in err
            .lines()
            .filter(|l| l.contains("attached") || l.contains(" WARN "))
        {
            // The agent's lines start with a timestamp; the level and message are enough.
            let l = l.split_once(' ').map_or(l, |(_, rest)| rest.trim_start());
            println!("         {l}");
        }
        progress!("{label} {ready} ({} ms)", t0.elapsed().as_millis());
    }
    Ok(())
}

/// What the clients experienced.
pub(crate) struct Traffic {
    pub(crate) results: Vec<(Probe, Outcome)>,
    pub(crate) scan: Vec<(u16, Outcome)>,
}

/// Every probe in order, then bob's port scan.
pub(crate) fn drive_traffic(env: &Env) -> Result<Traffic> {
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
pub(crate) struct Logs {
    pub(crate) conn: Vec<Value>,
    pub(crate) dev: Vec<Value>,
    pub(crate) conn_path: PathBuf,
    pub(crate) dev_path: PathBuf,
}

/// Waits (bounded) until every expected record is in the logs, then reads them.
pub(crate) fn collect_logs(env: &Env, checks: &mut Checks) -> Result<Logs> {
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
