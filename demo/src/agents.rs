//! The agents' configuration files and the supervised agent processes (the supervisor
//! itself is `gateway_test_support::process`, shared with the tests).

use crate::prelude::*;
use std::os::unix::fs::OpenOptionsExt as _;

pub(crate) use gateway_test_support::{
    netns::command_in as ns_command,
    process::{AgentProcess, run_bounded, tail},
};

#[derive(Serialize)]
pub(crate) struct ControllerSection {
    pub(crate) url: String,
    /// The other controllers on the same database (`--ha`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fallback_urls: Vec<String>,
    pub(crate) ca_file: PathBuf,
    /// None while the configuration only serves `gateway-agent public-key` (the token is
    /// minted once the policy with the keys is applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) enrollment_token: Option<String>,
    pub(crate) identity_file: PathBuf,
}

#[derive(Serialize)]
pub(crate) struct AgentConfig {
    pub(crate) role: &'static str,
    pub(crate) name: String,
    pub(crate) pin_dir: PathBuf,
    pub(crate) xdp_interfaces: Vec<String>,
    pub(crate) tc_egress_interfaces: Vec<String>,
    pub(crate) xdp_mode: &'static str,
    pub(crate) log_file: PathBuf,
    pub(crate) log_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) metrics_listen: Option<String>,
    /// Short idle timeouts, so the demo sees flow_end records within seconds.
    pub(crate) flow_timeouts: DemoTimeouts,
    /// Managed mode: last, because TOML puts tables after plain keys.
    pub(crate) controller: ControllerSection,
    pub(crate) tunnel: TunnelSection,
    /// `[names]`: DNS resources (alice runs the stub resolver; the connector resolves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) names: Option<NamesSection>,
}

/// `[names]` of an agent.
#[derive(Serialize)]
pub(crate) struct NamesSection {
    pub(crate) upstreams: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) proxy_v6: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pool_file: Option<PathBuf>,
}

/// `[tunnel]` of an agent: WireGuard, userspace backend.
#[derive(Serialize)]
pub(crate) struct TunnelSection {
    pub(crate) transport: &'static str,
    pub(crate) interface: &'static str,
    pub(crate) listen_port: u16,
    pub(crate) private_key_file: PathBuf,
}

impl TunnelSection {
    pub(crate) fn userspace(listen_port: u16, private_key_file: PathBuf) -> Self {
        TunnelSection {
            transport: "userspace",
            interface: TUNNEL_IF,
            listen_port,
            private_key_file,
        }
    }
}

/// `gateway-agent public-key --config`: creates the host's key on first use, prints the
/// public half.
pub(crate) fn public_key(bin: &Path, config: &Path, label: &str) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(["public-key", "--config"]).arg(config);
    let out = run_bounded(cmd, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "gateway-agent public-key for {label}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[derive(Serialize)]
pub(crate) struct DemoTimeouts {
    pub(crate) tcp_closing: u64,
    pub(crate) tcp_reset: u64,
    pub(crate) udp_unreplied: u64,
    pub(crate) udp_replied: u64,
    pub(crate) other: u64,
}

impl DemoTimeouts {
    pub(crate) fn short() -> Self {
        DemoTimeouts {
            tcp_closing: IDLE_TIMEOUT_SECS,
            tcp_reset: IDLE_TIMEOUT_SECS,
            udp_unreplied: IDLE_TIMEOUT_SECS,
            udp_replied: IDLE_TIMEOUT_SECS,
            other: IDLE_TIMEOUT_SECS,
        }
    }
}

/// A running `gateway-agent run` in a namespace, with what the demo checks about it.
/// Dropping it stops the agent and detaches what it attached.
pub(crate) struct Agent {
    pub(crate) label: String,
    pub(crate) pin_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) process: AgentProcess,
}

impl Agent {
    /// The names of the peers in `gateway-agent status --output json` (`tunnel.peers`),
    /// sorted; None without a tunnel status.
    pub(crate) fn peers(&self) -> Option<Vec<String>> {
        let out = self.status("json").ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut names: Vec<String> = v["tunnel"]["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Some(names)
    }

    /// Writes `<file_stem>.toml` into `dir` and starts the agent on it.
    pub(crate) fn start(
        label: &str,
        ns: &NetNs,
        bin: &Path,
        dir: &Path,
        file_stem: &str,
        cfg: AgentConfig,
        created: &mut Created,
    ) -> Result<Agent> {
        let config = dir.join(format!("{file_stem}.toml"));
        let text = toml::to_string(&cfg).context("writing the agent configuration")?;
        // Mode 0600: it holds the enrollment token (the agent warns about a token others
        // may read).
        let _ = std::fs::remove_file(&config);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", config.display()))?;
        Agent::start_written(label, ns, bin, &config, cfg.pin_dir, cfg.log_file, created)
    }

    /// Starts the agent on a configuration file already written (its stderr goes next to
    /// it, `<stem>.stderr`).
    pub(crate) fn start_written(
        label: &str,
        ns: &NetNs,
        bin: &Path,
        config: &Path,
        pin_dir: PathBuf,
        log: PathBuf,
        created: &mut Created,
    ) -> Result<Agent> {
        let stderr = config.with_extension("stderr");
        created.pin_dirs.push(pin_dir.clone());
        let process = AgentProcess::start(label, ns.name(), bin, config, &stderr)?;
        created.pids.extend(process.pid());
        Ok(Agent {
            label: label.to_string(),
            pin_dir,
            log,
            process,
        })
    }

    /// Waits (bounded, Ctrl-C aware) for the agent's `ready:` line, then for `status` to
    /// succeed; returns the line.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let line = self.process.wait_ready_or(timeout, check_interrupted)?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status("text")?;
            if status.status.success() {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {}: status keeps failing after ready: {}",
                    self.label,
                    String::from_utf8_lossy(&status.stderr).trim()
                );
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    pub(crate) fn status(&self, output: &str) -> Result<Output> {
        self.process.status(output)
    }

    pub(crate) fn stop(&mut self) -> Result<String> {
        self.process.stop()
    }

    pub(crate) fn detach(&mut self) -> Result<Vec<String>> {
        self.process.detach()
    }

    pub(crate) fn stderr(&self) -> String {
        self.process.stderr()
    }
}
