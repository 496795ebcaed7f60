//! `gateway-demo`: the end-to-end demo (`cargo xtask demo` builds and runs it). Builds two
//! laptops, a connector, a resource host and a controller host as network namespaces, runs
//! `gateway-controller`, applies the policy (with the agents' WireGuard keys) with `gatewayctl`,
//! runs managed `gateway-agent`s with `[tunnel]` on the connector and both laptops, drives
//! allowed and denied traffic and a port scan through the tunnel, and checks every outcome
//! and connection-log record against the policy. Needs root; exits 1
//! when anything did not behave as the policy says or something was left behind.

use anyhow::Result;
use clap::Parser;
use gateway_demo::{self as demo, Options};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "gateway-demo",
    about = "End-to-end demo of the gateway with real agents, namespaces and traffic (root)"
)]
struct Cli {
    /// The gateway-agent binary [default: gateway-agent next to this binary].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// gatewayctl: checks the policy, applies it to the controller, mints enrollment tokens
    /// [default: next to this binary].
    #[arg(long)]
    gatewayctl: Option<PathBuf>,
    /// The gateway-controller binary [default: next to this binary].
    #[arg(long)]
    controller: Option<PathBuf>,
    /// Policy file [default: the embedded examples/demo.toml]. Its addresses must match the
    /// demo's hosts, and it must name the placeholder keys of examples/demo.toml (the demo
    /// puts the agents' keys in their place).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Keep the temporary folder with the agent configs and connection logs.
    #[arg(long)]
    keep_logs: bool,
    /// Three controllers on one PostgreSQL database (a throwaway cluster of the demo's own,
    /// from Debian's postgresql package): the agents list all three; at the end the one they
    /// use is killed (SIGKILL) and a change goes through another.
    #[arg(long)]
    ha: bool,
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(name))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let agent = cli
        .agent
        .or_else(|| sibling("gateway-agent"))
        .unwrap_or_else(|| PathBuf::from("gateway-agent"));
    let gatewayctl = cli
        .gatewayctl
        .or_else(|| sibling("gatewayctl").filter(|p| p.is_file()));
    let controller = cli
        .controller
        .or_else(|| sibling("gateway-controller"))
        .unwrap_or_else(|| PathBuf::from("gateway-controller"));
    let ok = demo::run(&Options {
        agent,
        gatewayctl,
        controller,
        policy: cli.policy,
        keep_logs: cli.keep_logs,
        ha: cli.ha,
    })?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
