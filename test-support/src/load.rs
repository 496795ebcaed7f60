//! The loaded data plane under test: BPF_PROG_TEST_RUN helpers and a policy loaded through
//! the real compiler and map writer.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use std::time::Duration;

/// XDP return codes (uapi `enum xdp_action`).
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Runs `frame` through `prog` once and returns the XDP action.
pub fn run_xdp(prog: &mut Xdp, frame: &[u8]) -> Result<u32> {
    Ok(run_xdp_repeat(prog, frame, 1)?.0)
}

/// Runs `frame` through `prog` `repeat` times in the kernel; returns the action and the
/// kernel-measured mean time per run.
pub fn run_xdp_repeat(prog: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration))
}

/// Parses `host` as `connector:NAME` or `device:NAME`.
pub fn parse_host(host: &str) -> Result<policy_compiler::Host> {
    match host.split_once(':') {
        Some(("connector", name)) => Ok(policy_compiler::Host::Connector(name.to_string())),
        Some(("device", name)) => Ok(policy_compiler::Host::Device(name.to_string())),
        _ => anyhow::bail!("host must be connector:NAME or device:NAME, got {host:?}"),
    }
}

pub use gateway_user::writer::unix_now;

/// The data-plane configuration of a host of this kind, with default tuning.
pub fn config_for(host: &policy_compiler::Host) -> gateway_common::DataplaneConfig {
    let role = match host {
        policy_compiler::Host::Connector(_) => gateway_common::Role::Connector,
        policy_compiler::Host::Device(_) => gateway_common::Role::Device,
    };
    gateway_common::DataplaneConfig {
        role: role as u8,
        ..gateway_common::DataplaneConfig::DEFAULT
    }
}

/// A policy loaded into a data plane through the real compiler and map writer.
pub struct LoadedPolicy {
    pub policy: policy_compiler::Policy,
    pub view: policy_compiler::HostView,
    pub writer: gateway_user::writer::PolicyWriter,
}

/// Parses `toml`, compiles it for `host` at `now` and applies it to `dp`.
pub fn load_policy(
    dp: &mut gateway_user::Dataplane,
    toml: &str,
    host: &str,
    now: i64,
) -> Result<LoadedPolicy> {
    let parsed = policy_compiler::parse(toml, "test-policy.toml", now).map_err(|diags| {
        anyhow::anyhow!(
            "policy does not parse:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let host = parse_host(host)?;
    let view = policy_compiler::compile(&parsed.policy, &host, now)?;
    dp.set_config(&config_for(&host))?;
    let mut writer = gateway_user::writer::PolicyWriter::new(
        dp.active_generation()?,
        gateway_user::writer::BootClock::new(),
    );
    writer.apply(&mut dp.policy, &view)?;
    Ok(LoadedPolicy {
        policy: parsed.policy,
        view,
        writer,
    })
}

/// Protected: 198.18.0.0/16 and 2001:db8:1::/48, every port and ICMP as one resource per
/// family; the device `tester` (198.19.0.1 and 2001:db8:ff::1) may reach all of it.
pub const OPEN_LAB: &str = r#"
[[remote_network]]
name = "lab"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["lab-connector"]

[[resource]]
name = "lab-v4"
network = "lab"
address = "198.18.0.0/16"
tcp = "all"
udp = "all"
icmp = true

[[resource]]
name = "lab-v6"
network = "lab"
address = "2001:db8:1::/48"
tcp = "all"
udp = "all"
icmp = true

[[user]]
email = "tester@example.com"

[[device]]
name = "tester-v4"
owner = "tester@example.com"
address = "198.19.0.1"

[[device]]
name = "tester-v6"
owner = "tester@example.com"
address = "2001:db8:ff::1"

[[allow]]
name = "tester-everything"
principals = ["tester@example.com"]
resources = ["lab-v4", "lab-v6"]
"#;

/// TC return codes (tcx): the gateway returns `NEXT` when it has no objection (later
/// programs in the chain still run) and `SHOT` to drop.
pub mod tc_action {
    pub const NEXT: i32 = -1;
    pub const SHOT: i32 = 2;
}

/// Runs `frame` through a TC program once and returns its return code.
pub fn run_tc(prog: &mut aya::programs::SchedClassifier, frame: &[u8]) -> Result<i32> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN (tc)")?;
    Ok(result.return_value as i32)
}
