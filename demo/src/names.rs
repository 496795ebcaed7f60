//! The DNS-resources act: the admin adds `intranet.corp.test` (served by web's machine,
//! granted to engineering) and `payroll.corp.test` (the same machine, granted to nobody);
//! alice asks her agent's resolver for both, and connects.

use crate::prelude::*;
use gateway_test_support::dns::{self, Zone};
use gateway_test_support::net::{TcpOutcome, tcp_try};

/// One check of this act: printed with what was expected and what was seen, and counted.
fn verdict(checks: &mut Checks, what: &str, expected: &str, ok: bool, seen: &str) {
    progress!(
        "{what:<52} expected {expected}: {seen}{}",
        if ok { "" } else { "  <- WRONG" }
    );
    checks.check(
        ok,
        format!("names: {what}: expected {expected}, saw {seen}"),
    );
}

/// The demo's policy plus the two name resources and engineering's grant of one.
fn with_names(applied: &str) -> String {
    format!(
        "{applied}\n\
         [[resource]]\nname = \"intranet\"\nnetwork = \"{NETWORK}\"\naddress = \"{INTRANET}\"\ntcp = [\"443\"]\n\n\
         [[resource]]\nname = \"payroll\"\nnetwork = \"{NETWORK}\"\naddress = \"{PAYROLL}\"\ntcp = [\"443\"]\n\n\
         [[allow]]\nname = \"engineering-intranet\"\nprincipals = [\"engineering\"]\nresources = [\"intranet\"]\n"
    )
}

fn is_proxy(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && v4.octets()[1] & 0xe0 == 96)
}

fn show(a: &Option<dns::Answer>) -> String {
    match a {
        None => "no answer".into(),
        Some(a) if a.addrs.is_empty() => format!("{}", a.rcode),
        Some(a) => a
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub(crate) fn names_act(opts: &Options, env: &Env, dir: &Path, checks: &mut Checks) -> Result<()> {
    println!("\n== DNS resources (each check: what was expected, what was seen)");
    // The resource network's zone (the connector resolves with it) and alice's own
    // upstream (what names she may not reach are answered with).
    let inside = Zone::default();
    let outside = Zone::default();
    for n in [INTRANET, PAYROLL] {
        inside.set(n, &[&WEB.to_string()], 60);
        outside.set(n, &[&WEB.to_string()], 60);
    }
    dns::serve(&env.res, &format!("{ZONE}:53"), &inside)?;
    env.alice.ip(&["link", "set", "lo", "up"])?;
    dns::serve(&env.alice, OUTSIDE_ZONE, &outside)?;

    let applied = std::fs::read_to_string(dir.join("demo.toml"))?;
    let path = dir.join("demo-names.toml");
    std::fs::write(&path, with_names(&applied))
        .with_context(|| format!("writing {}", path.display()))?;
    let out = gatewayctl(opts, env, &["apply", "--yes", &path.display().to_string()])?;
    progress!(
        "gatewayctl apply --yes {} (+ intranet, payroll): {}",
        path.display(),
        apply_outcome(&out)
    );
    let stub = format!("{}:53", ALICE.overlay);
    let ask = |name: &str| dns::query(&env.alice, &stub, name, false, Duration::from_secs(6));
    // The view reaches alice's agent within moments of the apply.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut intranet = ask(INTRANET)?;
    while Instant::now() < deadline
        && !intranet
            .as_ref()
            .is_some_and(|a| a.addrs.iter().any(is_proxy))
    {
        std::thread::sleep(Duration::from_millis(300));
        intranet = ask(INTRANET)?;
    }
    let proxy = intranet
        .as_ref()
        .and_then(|a| a.addrs.iter().find(|ip| is_proxy(ip)).copied());
    verdict(
        checks,
        &format!("alice's resolver: {INTRANET}"),
        "a proxy address (100.96.0.0/11)",
        proxy.is_some() && inside.asked(INTRANET) > 0 && outside.asked(INTRANET) == 0,
        &format!(
            "{} (the connector resolved it: {})",
            show(&intranet),
            inside.asked(INTRANET) > 0
        ),
    );
    let payroll = ask(PAYROLL)?;
    verdict(
        checks,
        &format!("alice's resolver: {PAYROLL} (granted to nobody)"),
        "her upstream's answer, no proxy address",
        payroll
            .as_ref()
            .is_some_and(|a| a.addrs == [IpAddr::V4(WEB)]),
        &show(&payroll),
    );
    let Some(proxy) = proxy else {
        return Ok(());
    };
    let through = tcp_try(&env.alice, &format!("{proxy}:443"), ALLOW_TIMEOUT);
    verdict(
        checks,
        &format!("alice -> {INTRANET}:443 (its proxy address)"),
        "echoes",
        through == TcpOutcome::Echoed,
        &format!("{through:?}"),
    );
    // Another port through the same proxy address: web's machine would answer with a
    // reset (nothing listens there); the gateway drops it silently.
    let other = tcp_try(&env.alice, &format!("{proxy}:5432"), DENY_TIMEOUT);
    verdict(
        checks,
        &format!("alice -> {INTRANET}:5432 (a port it does not grant)"),
        "dropped",
        other == TcpOutcome::Silent,
        &format!("{other:?}"),
    );
    let logged = wait_name_record(&env.agents[0].log, Duration::from_secs(5));
    verdict(
        checks,
        "connector log: the intranet flow",
        &format!("dns_name {INTRANET}, resolved_ip {WEB}"),
        logged
            .as_ref()
            .is_some_and(|r| r["resolved_ip"] == WEB.to_string()),
        &logged.map_or("no record".into(), |r| {
            format!(
                "dns_name {}, resolved_ip {}",
                r["dns_name"], r["resolved_ip"]
            )
        }),
    );
    // The other acts run on the policy as it was.
    let back = gatewayctl(
        opts,
        env,
        &[
            "apply",
            "--yes",
            &dir.join("demo.toml").display().to_string(),
        ],
    )?;
    progress!(
        "gatewayctl apply --yes demo.toml (as before): {}",
        apply_outcome(&back)
    );
    Ok(())
}

fn wait_name_record(log: &Path, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = std::fs::read_to_string(log).ok().and_then(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["dns_name"] == INTRANET)
        });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
