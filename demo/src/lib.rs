//! The end-to-end demo behind `cargo xtask demo` (binary `gateway-demo`).
//!
//! It builds five hosts as network namespaces (two laptops, a connector, a resource host
//! and the controller's host), runs `gateway-controller` and the real `gateway-agent` on both
//! laptops and the connector, all three with `[tunnel]` (WireGuard, userspace backend), drives
//! real traffic, and checks the outcome against the policy (`examples/demo.toml`, embedded;
//! its placeholder keys replaced by the keys the agents create):
//!
//! ```text
//!  alice  198.19.1.10  agent: device alice-laptop, overlay 100.64.0.10 ──veth──┐
//!                                                              connector  agent: connector demo-connector
//!  bob    198.19.2.11  agent: device bob-laptop,   overlay 100.64.0.11 ──veth──┘  ztg0 :51820, masquerades ──veth── resources
//!                                                                                                  198.18.1.5  web  :443/tcp
//!                                                                                                  198.18.1.10 db   :5432/tcp
//!                                                                                                  198.18.1.20 wiki :80/tcp
//!                                                                                                  198.18.1.53 dns  :53/udp
//! ```
//!
//! The agents enroll with the controller with their WireGuard keys; the controller pushes
//! each its peers. The laptops reach the resources only through the tunnel, from their
//! overlay addresses. Alice may use web and dns, not db; bob the wiki only (and a deny rule
//! on db). What a laptop may not send is stopped by its own agent at the egress of its
//! tunnel interface, before encryption, so the connector never sees it; a port scan from bob
//! raises a `scan_alert` in bob's own log. Every claim is checked — on the client (did it
//! connect, did the echo come back), on the resource host (which connections did the
//! servers accept, from the masquerading connector) and in the three agents' connection logs
//! (which host logged what, with which fields) — and the demo exits non-zero when one fails.
//!
//! Then the tunnel is attacked on the same hosts (`tunnel.rs`): the connector's link to
//! alice carried only WireGuard UDP (and the agents' TLS to the controller) during the
//! traffic, the connector's log names alice's real address and tunnel port, bob claiming her
//! overlay address (with his own key through a tunnel of his own, or as cleartext frames)
//! gets nothing to the dns server that alice's own datagrams reach, and applying the policy
//! without alice's grants through the controller cuts her open connection and drops her
//! from the connector's peers.
//!
//! Agents are started in their namespace with `setns(CLONE_NEWNET)` only (like
//! `nsenter --net`), not `ip netns exec`: the latter remounts `/sys` in a private mount
//! namespace, which hides the host's bpffs at /sys/fs/bpf, so pins would live and die in
//! that private mount.
//!
//! Everything is torn down at the end and on failure, panic or Ctrl-C (guards): agents
//! stopped (SIGTERM), `gateway-agent detach` run for each, namespaces deleted; then the
//! demo verifies that no namespace, interface, pin folder or process is left.

#[macro_use]
mod output;
mod agents;
mod env;
mod ha;
mod logs;
mod names;
mod plan;
mod report;
mod services;
mod steps;
mod traffic;
mod tunnel;

/// What every module of the demo sees: std and the crates it uses, and each module's items.
mod prelude {
    pub(crate) use crate::{
        DEMO_POLICY, Options, agents::*, env::*, logs::*, names::*, output::*, plan::*, report::*,
        services::*, steps::*, traffic::*, tunnel::*,
    };
    pub(crate) use anyhow::{Context as _, Result, bail};
    pub(crate) use gateway_test_support::netns::{NetNs, VethEnd, veth_pair};
    pub(crate) use serde::Serialize;
    pub(crate) use serde_json::Value;
    pub(crate) use std::{
        fmt::Write as _,
        fs::File,
        io::{Read as _, Write as _},
        net::{
            IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
        },
        path::{Path, PathBuf},
        process::{Child, Command, Output, Stdio},
        sync::{
            Arc, Mutex, OnceLock,
            atomic::{AtomicBool, Ordering},
        },
        thread::JoinHandle,
        time::{Duration, Instant},
    };
}
use prelude::*;

/// The demo policy (`examples/demo.toml`); the topology below matches its addresses.
pub const DEMO_POLICY: &str = include_str!("../../examples/demo.toml");

/// What `gateway-demo` is given on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `gateway-agent` binary to run.
    pub agent: PathBuf,
    /// `gatewayctl`: checks the policy, applies it to the controller, mints enrollment
    /// tokens.
    pub gatewayctl: Option<PathBuf>,
    /// The `gateway-controller` binary; the agents are managed by it.
    pub controller: PathBuf,
    /// The policy; the embedded `examples/demo.toml` when absent. Its addresses must match
    /// the demo topology.
    pub policy: Option<PathBuf>,
    /// Keep the temporary folder (agent configs and logs) instead of removing it.
    pub keep_logs: bool,
    /// Three controllers on one PostgreSQL database, one killed at the end (`ha`).
    pub ha: bool,
}

pub fn run(opts: &Options) -> Result<bool> {
    START.get_or_init(Instant::now);
    install_signal_handlers();
    if !gateway_test_support::privileges::is_root() {
        bail!(
            "the demo creates network namespaces and loads eBPF programs: run it as root \
             (e.g. `sudo -E cargo xtask demo`)"
        );
    }
    if !opts.agent.is_file() {
        bail!(
            "gateway-agent not found at {} (build it: cargo build --release -p gateway-user \
             --bin gateway-agent)",
            opts.agent.display()
        );
    }
    println!("zt-gateway demo: two laptops, a connector and a resource host, with real traffic");
    let mut checks = Checks::default();
    let mut created = Created {
        keep_temp: opts.keep_logs,
        ..Created::default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(opts, &mut checks, &mut created)
    }));
    // Every guard of the scenario has been dropped by now (also after an error or panic).
    let scenario_error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    };
    if let Some(e) = &scenario_error {
        println!("\nthe demo stopped early: {e}");
    }
    let leftovers = verify_cleanup(&created);
    println!("\n== cleanup");
    if leftovers.is_empty() {
        println!(
            "  nothing left behind: {} namespaces, {} interfaces, {} pin folders and {} agent \
             processes are gone{}",
            created.namespaces.len(),
            created.interfaces.len(),
            created.pin_dirs.len(),
            created.pids.len(),
            if opts.keep_logs {
                format!(
                    " (configs and logs kept in {})",
                    created
                        .temp_dir
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                ", temporary folder removed".into()
            }
        );
    }
    for l in &leftovers {
        checks.check(false, format!("left behind: {l}"));
    }
    println!(
        "\n== result: {} checks passed, {} failed{} ({:.1}s)",
        checks.passed,
        checks.failed.len(),
        if scenario_error.is_some() {
            ", stopped early"
        } else {
            ""
        },
        elapsed()
    );
    for f in &checks.failed {
        println!("  FAILED: {f}");
    }
    let ok = checks.failed.is_empty() && scenario_error.is_none();
    println!(
        "{}",
        if ok {
            "demo OK: the gateway enforced the policy exactly as written"
        } else {
            "demo FAILED"
        }
    );
    Ok(ok)
}

fn scenario(opts: &Options, checks: &mut Checks, created: &mut Created) -> Result<()> {
    let tmp = TempDir {
        path: std::env::temp_dir().join(format!("zt-demo-{}", std::process::id())),
        keep: opts.keep_logs,
    };
    let _ = std::fs::remove_dir_all(&tmp.path);
    std::fs::create_dir_all(&tmp.path)
        .with_context(|| format!("creating {}", tmp.path.display()))?;
    created.temp_dir = Some(tmp.path.clone());

    let template = prepare_policy(opts, &tmp.path, checks)?;
    check_interrupted()?;
    // Declared before the hosts: dropped after the controllers stop.
    let cluster = if opts.ha { Some(ha::cluster()?) } else { None };
    let mut env = build_hosts(created)?;
    check_interrupted()?;
    start_controller(opts, &mut env, &tmp.path, created, cluster.as_ref())?;
    check_interrupted()?;
    let policy = keys_and_policy(opts, &env, &tmp.path, &template, checks)?;
    let tokens = apply_policy(opts, &env, &policy, checks)?;
    check_interrupted()?;
    start_agents(opts, &mut env, &tmp.path, &tokens, created)?;
    check_peers(checks, &env)?;
    check_interrupted()?;
    println!("\n== services on the resource host (echo servers)");
    env.services = Some(Services::start(&env.res)?);
    for (name, addr, proto) in SERVICES {
        progress!("{name:<4} {addr}/{}", proto.name());
    }
    // The connector's link to alice is captured while the traffic runs (checked below).
    let capture = LinkCapture::start(&env)?;
    let traffic = drive_traffic(&env);
    let frames = capture.finish();
    let (traffic, frames) = (traffic?, frames?);
    let logs = collect_logs(&env, checks)?;
    report_probes(checks, &traffic, &logs)?;
    report_scan(checks, &traffic, &logs);
    report_logs(checks, &logs);
    report_status(checks, &env);
    check_interrupted()?;
    names_act(opts, &env, &tmp.path, checks)?;
    check_interrupted()?;
    tunnel_act(opts, &mut env, &tmp.path, checks, &frames, &logs)?;
    if opts.ha {
        check_interrupted()?;
        ha::act(opts, &mut env, &tmp.path, checks)?;
    }
    teardown(checks, env)
}
