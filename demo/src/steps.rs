//! The scenario's steps: the policy, the controller, the agents, the traffic, the logs.

use crate::prelude::*;

/// Writes the policy as given (with its placeholder keys) into the demo folder and runs
/// `gatewayctl policy check` on it; returns its text.
pub(crate) fn prepare_policy(opts: &Options, dir: &Path, checks: &mut Checks) -> Result<String> {
    let policy_path = dir.join("demo-template.toml");
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
    policy_check(opts, &policy_path, checks)?;
    Ok(policy_text)
}

/// `gatewayctl policy check FILE` (its tests included), one check.
fn policy_check(opts: &Options, path: &Path, checks: &mut Checks) -> Result<()> {
    match &opts.gatewayctl {
        Some(ctl) if ctl.is_file() => {
            let mut cmd = Command::new(ctl);
            cmd.args(["policy", "check"]).arg(path);
            let out = run_bounded(cmd, Duration::from_secs(30))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let last = text.lines().last().unwrap_or("").to_string();
            progress!("gatewayctl policy check {}: {last}", path.display());
            let err = String::from_utf8_lossy(&out.stderr);
            if !checks.check(
                out.status.success(),
                format!(
                    "gatewayctl policy check {} passes: {last} {}",
                    path.display(),
                    err.trim()
                ),
            ) {
                print!("{text}");
            }
        }
        _ => progress!("gatewayctl not given: skipping `gatewayctl policy check`"),
    }
    Ok(())
}

/// The three agents of the main act: (label, stem of its files, role, name in the policy,
/// WireGuard listen port).
pub(crate) const HOSTS: [(&str, &str, &str, u16); 3] = [
    ("connector", "connector", CONNECTOR, WG_PORT),
    ("device", "alice-laptop", "alice-laptop", 0),
    ("device", "bob-laptop", "bob-laptop", 0),
];

/// Agent `i` of [`HOSTS`] in `env`: its label, namespace and configuration (`token`: the
/// enrollment token, None while the configuration only serves `public-key`).
pub(crate) fn agent_config<'e>(
    env: &'e Env,
    dir: &Path,
    i: usize,
    token: Option<String>,
) -> (String, &'e NetNs, &'static str, AgentConfig) {
    let (role, stem, name, port) = HOSTS[i];
    let pid = std::process::id();
    let (ns, links) = match i {
        0 => (
            &env.conn,
            vec![env.conn_alice_if.clone(), env.conn_bob_if.clone()],
        ),
        1 => (&env.alice, vec![env.alice_if.clone()]),
        _ => (&env.bob, vec![env.bob_if.clone()]),
    };
    let cfg = AgentConfig {
        role,
        name: name.into(),
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/zt-demo-{pid}-{}",
            stem.trim_end_matches("-laptop")
        )),
        xdp_interfaces: links.clone(),
        tc_egress_interfaces: links,
        xdp_mode: "native",
        log_file: dir.join(format!("{stem}.log")),
        log_format: "json",
        metrics_listen: (i == 0).then(|| format!("127.0.0.1:{METRICS_PORT}")),
        flow_timeouts: DemoTimeouts::short(),
        controller: ControllerSection {
            url: controller_url(),
            fallback_urls: if env.standbys.is_empty() {
                Vec::new()
            } else {
                (1..=env.standbys.len() as u16)
                    .map(|i| format!("https://{CTL_IP}:{}", CTL_PORT + i))
                    .collect()
            },
            ca_file: env.ca.clone(),
            enrollment_token: token,
            identity_file: dir.join(format!("{stem}.identity.json")),
        },
        tunnel: TunnelSection::userspace(port, dir.join(format!("keys-{stem}/wireguard.key"))),
        // The connector resolves names with the resource network's zone server; alice's
        // stub forwards every other name to a zone server on her own loopback.
        names: match i {
            0 => Some(NamesSection {
                upstreams: vec![format!("{ZONE}:53")],
                proxy_v6: None,
                pool_file: None,
            }),
            1 => Some(NamesSection {
                upstreams: vec![OUTSIDE_ZONE.to_string()],
                proxy_v6: Some(PROXY_V6),
                pool_file: Some(dir.join(format!("{stem}-names.json"))),
            }),
            _ => None,
        },
    };
    (format!("{role} {name}"), ns, stem, cfg)
}

/// Each agent's WireGuard key, created by `gateway-agent public-key --config` on its
/// configuration, then the policy with these keys in place of the placeholders, checked.
pub(crate) fn keys_and_policy(
    opts: &Options,
    env: &Env,
    dir: &Path,
    template: &str,
    checks: &mut Checks,
) -> Result<PathBuf> {
    println!("\n== WireGuard keys (each agent's own; the private halves never leave their host)");
    let mut policy = template.to_string();
    for (i, (host, placeholder)) in KEY_PLACEHOLDERS.into_iter().enumerate() {
        let (label, _, stem, cfg) = agent_config(env, dir, i, None);
        let config = dir.join(format!("{stem}.toml"));
        let text = toml::to_string(&cfg).context("writing the agent configuration")?;
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let key = public_key(&opts.agent, &config, &label)?;
        progress!(
            "{label:<26} gateway-agent public-key --config {}: {key}",
            config.display()
        );
        if policy.matches(placeholder).count() != 1 {
            bail!(
                "the policy must name the placeholder key {placeholder} of {host} exactly once \
                 (as examples/demo.toml does): the demo puts {host}'s real key there"
            );
        }
        policy = policy.replace(placeholder, &key);
    }
    let path = dir.join("demo.toml");
    std::fs::write(&path, &policy).with_context(|| format!("writing {}", path.display()))?;
    progress!(
        "the policy with these keys in place of the placeholders: {}",
        path.display()
    );
    policy_check(opts, &path, checks)?;
    Ok(path)
}

/// Enrollment tokens for the agents of [`HOSTS`], in that order.
pub(crate) struct Tokens(pub(crate) Vec<String>);

/// `gatewayctl --controller URL ARGS` run on the controller's host.
pub(crate) fn gatewayctl(opts: &Options, env: &Env, args: &[&str]) -> Result<Output> {
    gatewayctl_at(opts, env, &controller_url(), args)
}

/// [`gatewayctl`] through the controller at `url`.
pub(crate) fn gatewayctl_at(opts: &Options, env: &Env, url: &str, args: &[&str]) -> Result<Output> {
    let bin = opts.gatewayctl.as_deref().context(
        "gatewayctl is needed to apply the policy (build it: cargo build -p gatewayctl)",
    )?;
    let mut cmd = ns_command(env.ctl.name(), bin)?;
    cmd.args(["--controller", url])
        .arg("--ca")
        .arg(&env.ca)
        .env("GATEWAYCTL_API_KEY", &env.api_key)
        .args(args);
    run_bounded(cmd, Duration::from_secs(30))
}

/// What `gatewayctl apply` said: `applied`, or its error.
pub(crate) fn apply_outcome(out: &Output) -> String {
    if out.status.success() {
        "applied".to_string()
    } else {
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }
}

/// Waits (10 s at most) until the connector (agent 0) has logged `tunnel peers changed`
/// more than `before` times, `what` naming the change; how long it took.
pub(crate) fn connector_peers_changed(
    env: &mut Env,
    before: usize,
    what: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    env.agents[0].process.wait_until_or(
        &format!("\"tunnel peers changed\" after {what}"),
        Duration::from_secs(10),
        |a| a.count("tunnel peers changed") > before,
        check_interrupted,
    )?;
    Ok(t0.elapsed())
}

/// Starts `gateway-controller` on its host and waits until it answers; with `cluster`
/// (`--ha`), three of them on one PostgreSQL database (ports CTL_PORT, +1, +2).
pub(crate) fn start_controller(
    opts: &Options,
    env: &mut Env,
    dir: &Path,
    created: &mut Created,
    cluster: Option<&crate::ha::Database>,
) -> Result<()> {
    println!("\n== controller ({})", opts.controller.display());
    if !opts.controller.is_file() {
        bail!(
            "gateway-controller not found at {} (build it: cargo build --release -p controller)",
            opts.controller.display()
        );
    }
    let db = match cluster {
        Some(c) => c.url.clone().into(),
        None => dir.join("controller.db").into_os_string(),
    };
    let key_file = dir.join("controller.key");
    let tls = dir.join("tls");
    // A new deployment: its own CA, the controller's certificate, the first admin key.
    let mut init = Command::new(&opts.controller);
    init.args(["init", "--db"])
        .arg(&db)
        .arg("--key-file")
        .arg(&key_file)
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
    let count = if cluster.is_some() { 3 } else { 1 };
    for i in 0..count {
        let listen = format!("{CTL_IP}:{}", CTL_PORT + i);
        let stem = if i == 0 {
            "controller".to_string()
        } else {
            format!("controller-{}", i + 1)
        };
        let mut cmd = ns_command(env.ctl.name(), &opts.controller)?;
        cmd.args(["run", "--listen", &listen, "--tls-dir"])
            .arg(&tls)
            .arg("--db")
            .arg(&db)
            .arg("--key-file")
            .arg(&key_file)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{stem}.stdout")))?)
            .stderr(File::create(dir.join(format!("{stem}.stderr")))?);
        let child = cmd.spawn().context("starting gateway-controller")?;
        created.pids.push(child.id());
        if i == 0 {
            env.controller = Some(child);
        } else {
            env.standbys.push(child);
        }
        progress!(
            "gateway-controller run --listen {listen} --tls-dir {} --db {} --key-file {} (in {})",
            tls.display(),
            match cluster {
                Some(c) => c.url.clone(),
                None => PathBuf::from(&db).display().to_string(),
            },
            key_file.display(),
            env.ctl.name()
        );
    }
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
    Ok(())
}

/// Applies the policy with `gatewayctl apply` and mints one enrollment token per agent.
pub(crate) fn apply_policy(
    opts: &Options,
    env: &Env,
    policy: &Path,
    checks: &mut Checks,
) -> Result<Tokens> {
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
    HOSTS
        .iter()
        .map(|(role, _, name, _)| token(&format!("{role}:{name}")))
        .collect::<Result<Vec<_>>>()
        .map(Tokens)
}

/// Starts the connector's, alice's and bob's agents (each enrolls with its token and its
/// WireGuard key) and waits until each enforces.
pub(crate) fn start_agents(
    opts: &Options,
    env: &mut Env,
    dir: &Path,
    tokens: &Tokens,
    created: &mut Created,
) -> Result<()> {
    println!("\n== agents ({})", opts.agent.display());
    for i in 0..HOSTS.len() {
        let token = tokens.0.get(i).cloned().context("a token per agent")?;
        let (label, ns, stem, cfg) = agent_config(env, dir, i, Some(token));
        if cfg.pin_dir.exists() {
            bail!(
                "{} exists already (a crashed earlier demo with the same pid?); remove it \
                 with `gateway-agent detach` or rm -r",
                cfg.pin_dir.display()
            );
        }
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
            .filter(|l| l.contains("attached") || l.contains(" WARN ") || l.contains("enrolled"))
        {
            // The agent's lines start with a timestamp; the level and message are enough.
            let l = l.split_once(' ').map_or(l, |(_, rest)| rest.trim_start());
            println!("         {l}");
        }
        progress!("{label} {ready} ({} ms)", t0.elapsed().as_millis());
    }
    Ok(())
}

/// The peers the controller pushed: the connector's are both laptops (each has a grant
/// behind it), each laptop's is the connector. Waits (bounded) until they are there.
pub(crate) fn check_peers(checks: &mut Checks, env: &Env) -> Result<()> {
    println!("\n== tunnel peers (from the controller, with the keys the agents enrolled)");
    let want: [Vec<String>; 3] = [
        vec![ALICE.device.into(), BOB.device.into()],
        vec![CONNECTOR.into()],
        vec![CONNECTOR.into()],
    ];
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let mut got: Vec<Option<Vec<String>>>;
    loop {
        got = env.agents.iter().map(Agent::peers).collect();
        let all = got.iter().zip(&want).all(|(g, w)| g.as_ref() == Some(w));
        if all || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    for ((a, g), w) in env.agents.iter().zip(&got).zip(&want) {
        let ok = g.as_ref() == Some(w);
        progress!(
            "{:<26} gateway-agent status: tunnel.peers {}{}",
            a.label,
            g.as_ref()
                .map_or("(no tunnel status)".into(), |g| format!("{g:?}")),
            if ok { "" } else { "  <- WRONG" }
        );
        checks.check(
            ok,
            format!(
                "{}: tunnel.peers (pushed by the controller) must be {w:?}, got {g:?}",
                a.label
            ),
        );
    }
    progress!("peers in place after {} ms", t0.elapsed().as_millis());
    Ok(())
}

/// The (service, peer) connections the resource host's servers accepted.
pub(crate) type Accepted = Vec<(&'static str, IpAddr)>;

/// What the clients experienced, and what the resource host saw meanwhile.
pub(crate) struct Traffic {
    /// Each probe, its outcome, and the (service, peer) connections the resource host's
    /// servers accepted during it.
    pub(crate) results: Vec<(Probe, Outcome, Accepted)>,
    pub(crate) scan: Vec<(u16, Outcome)>,
}

/// Every probe in order, then bob's port scan.
pub(crate) fn drive_traffic(env: &Env) -> Result<Traffic> {
    println!("\n== traffic (through the tunnel, from the overlay addresses)");
    let services = env.services.as_ref().context("services started above")?;
    let mut results = Vec::new();
    for p in probes() {
        check_interrupted()?;
        let c = client(p.who);
        let ns = match p.who {
            Who::Alice => &env.alice,
            Who::Bob => &env.bob,
        };
        let seen_before = services.count();
        let o = probe_once(ns, &p)?;
        let seen = services.since(seen_before);
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
        results.push((p, o, seen));
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

/// The three agents' connection logs.
pub(crate) struct Logs {
    pub(crate) conn: Vec<Value>,
    pub(crate) alice: Vec<Value>,
    pub(crate) bob: Vec<Value>,
    /// connector, alice, bob.
    pub(crate) paths: [PathBuf; 3],
}

impl Logs {
    /// The log of `who`'s own agent.
    pub(crate) fn of(&self, who: Who) -> &[Value] {
        match who {
            Who::Alice => &self.alice,
            Who::Bob => &self.bob,
        }
    }
}

/// Waits (bounded) until every expected record is in the logs, then reads them.
pub(crate) fn collect_logs(env: &Env, checks: &mut Checks) -> Result<Logs> {
    let paths: [PathBuf; 3] = [
        env.agents[0].log.clone(),
        env.agents[1].log.clone(),
        env.agents[2].log.clone(),
    ];
    let read_all = || {
        let [c, a, b] = &paths;
        (read_log(c), read_log(a), read_log(b))
    };
    let wait_t0 = Instant::now();
    let log_deadline = Instant::now() + Duration::from_secs(IDLE_TIMEOUT_SECS * 3 + 6);
    let mut missing;
    loop {
        let ((conn, _), (alice, _), (bob, _)) = read_all();
        missing = missing_records(&conn, &alice, &bob);
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
    let ((conn, conn_bad), (alice, alice_bad), (bob, bob_bad)) = read_all();
    for (name, bad) in [
        ("connector", &conn_bad),
        ("alice-laptop", &alice_bad),
        ("bob-laptop", &bob_bad),
    ] {
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
        alice,
        bob,
        paths,
    })
}
