//! `agent.toml`: one typed struct, validated at start-up.

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf};

/// What this host is in the policy.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Enforces for the remote networks that list it as a connector.
    Connector,
    /// A client device: enforces what the device itself may reach.
    Device,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode; falls back to generic mode with a warning where the driver
    /// has no XDP support.
    #[default]
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line with the gateway's own field names.
    #[default]
    Json,
    /// OCSF Network Activity (class 4001) records, one per line.
    Ocsf,
}

/// The agent's configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub role: Role,
    /// The connector's or the device's name in the policy.
    pub name: String,
    /// The policy file (standalone mode): recompiled and applied when it changes.
    /// Exactly one of `policy_file` and `[controller]` is set.
    pub policy_file: Option<PathBuf>,
    /// Managed mode: the controller that streams this host's compiled view.
    pub controller: Option<ControllerConfig>,
    /// bpffs folder for pinned maps, programs and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Interfaces with the XDP ingress program: client-facing links on a connector, the
    /// uplink on a device.
    #[serde(default)]
    pub xdp_interfaces: Vec<String>,
    /// Interfaces with the TC egress program (tcx): the same links.
    #[serde(default)]
    pub tc_egress_interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// Connection log file (appended); absent: stdout.
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Prometheus `/metrics` listener; absent: no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Flows idle this long are ended (flow_end record) and forgotten.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// How often the policy file is checked for changes.
    #[serde(default = "default_poll_ms")]
    pub policy_poll_ms: u64,
}

/// `[controller]`: managed mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The controller's gRPC address: `https://controller.example:50051` (with
    /// `ca_file`); `http://` (plaintext) only to a loopback address, for tests.
    pub url: String,
    /// The deployment's CA certificate (PEM, `ca.pem` from `gateway-controller init`):
    /// the only CA the agent trusts for the controller. Required with an https URL.
    pub ca_file: Option<PathBuf>,
    /// One-time enrollment token (`gatewayctl` / Admin.CreateEnrollmentToken); used once,
    /// when `identity_file` does not exist yet. Prefer `enrollment_token_file`: this file
    /// is often readable by others.
    pub enrollment_token: Option<String>,
    /// A file holding the enrollment token (mode 0600: refused when group or others may
    /// read it). At most one of `enrollment_token` and `enrollment_token_file`.
    pub enrollment_token_file: Option<PathBuf>,
    /// Where the agent keeps the identity it received at enrollment.
    #[serde(default = "default_identity")]
    pub identity_file: PathBuf,
}

impl ControllerConfig {
    /// The enrollment token, from `enrollment_token` or `enrollment_token_file` (which
    /// must be readable by its owner only).
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.enrollment_token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.enrollment_token_file else {
            return Ok(None);
        };
        Ok(Some(
            read_private(path, "enrollment token file")?
                .trim()
                .to_string(),
        ))
    }
}

fn default_identity() -> PathBuf {
    PathBuf::from("/var/lib/zt-gateway/identity.json")
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/zt-gateway")
}

fn default_idle() -> u64 {
    120
}

fn default_poll_ms() -> u64 {
    500
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config> {
        use std::os::unix::fs::MetadataExt as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the agent configuration {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid agent configuration {}", path.display()))?;
        if cfg
            .controller
            .as_ref()
            .is_some_and(|c| c.enrollment_token.is_some())
            && std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o044 != 0)
        {
            eprintln!(
                "gateway-agent: WARNING: {} holds an enrollment token and others may read it; \
                 use `enrollment_token_file` (mode 0600), or chmod 600 the configuration",
                path.display()
            );
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("`name` is empty: give the connector's or device's name in the policy");
        }
        if self.xdp_interfaces.is_empty() && self.tc_egress_interfaces.is_empty() {
            bail!(
                "no interface to enforce on: set `xdp_interfaces` and `tc_egress_interfaces` \
                 (a connector's client-facing links, a device's uplink)"
            );
        }
        if !self.pin_dir.is_absolute() {
            bail!("`pin_dir` must be an absolute path on bpffs, e.g. /sys/fs/bpf/zt-gateway");
        }
        match (&self.policy_file, &self.controller) {
            (None, None) => bail!(
                "no policy source: set `policy_file` (standalone) or a `[controller]` table \
                 (managed)"
            ),
            (Some(_), Some(_)) => bail!(
                "both `policy_file` and `[controller]` are set: a host takes its policy from \
                 one source"
            ),
            _ => {}
        }
        if let Some(c) = &self.controller {
            let https = c.url.starts_with("https://");
            match (&c.ca_file, https) {
                (None, true) => bail!(
                    "[controller] url `{}` is https but no `ca_file` is set: give the \
                     deployment's CA certificate (ca.pem from `gateway-controller init`)",
                    c.url
                ),
                (Some(_), false) => bail!(
                    "[controller] `ca_file` is set but url `{}` is not https://",
                    c.url
                ),
                _ => {}
            }
            if !https && !c.url.starts_with("http://") {
                bail!(
                    "[controller] url `{}` must start with https:// (or http:// to a loopback \
                     address, for tests)",
                    c.url
                );
            }
            if !https && !gateway_proto::plaintext_allowed(&c.url) {
                bail!(
                    "[controller] url `{}`: plaintext (http://) is for loopback addresses only; \
                     use https:// with `ca_file`",
                    c.url
                );
            }
            if c.enrollment_token.is_some() && c.enrollment_token_file.is_some() {
                bail!(
                    "[controller] has both `enrollment_token` and `enrollment_token_file`: give \
                     one"
                );
            }
        }
        if self.idle_timeout_secs == 0 {
            bail!("`idle_timeout_secs` must be at least 1");
        }
        Ok(())
    }

    /// `connector:NAME` or `device:NAME`, as the compiler and the logs name this host.
    pub fn host(&self) -> policy_compiler::Host {
        match self.role {
            Role::Connector => policy_compiler::Host::Connector(self.name.clone()),
            Role::Device => policy_compiler::Host::Device(self.name.clone()),
        }
    }

    pub fn host_label(&self) -> String {
        match self.role {
            Role::Connector => format!("connector:{}", self.name),
            Role::Device => format!("device:{}", self.name),
        }
    }
}

/// Reads a secret file, refusing it when group or others may read it, or when it is
/// not a regular file (a symlink, a FIFO).
pub fn read_private(path: &std::path::Path, what: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::symlink_metadata(path)
        .with_context(|| format!("the {what} {}", path.display()))?;
    if !m.file_type().is_file() {
        bail!("the {what} {} is not a regular file", path.display());
    }
    if m.mode() & 0o077 != 0 {
        bail!(
            "the {what} {} has mode {:o}: others may read it; chmod 600 it",
            path.display(),
            m.mode() & 0o777
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Opens (appending; creating mode 0600) the connection log: it names users, devices
/// and addresses, so only its owner reads it. A log left readable by others by an older
/// version is made private.
pub fn open_log(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let m = f.metadata()?;
    if m.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.role, Role::Connector);
        assert_eq!(cfg.host_label(), "connector:dc-connector-1");
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9477".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_and_empty_interfaces_are_refused() {
        let dir = std::env::temp_dir().join(format!("zgw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.toml");
        std::fs::write(
            &p,
            "role = \"device\"\nname = \"x\"\npolicy_file = \"/p\"\nxdp_intrefaces = [\"eth0\"]\n",
        )
        .unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("unknown field `xdp_intrefaces`"), "{e}");
        std::fs::write(
            &p,
            "role = \"device\"\nname = \"x\"\npolicy_file = \"/p\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("no interface to enforce on"), "{e}");
        let managed = "role = \"device\"\nname = \"x\"\nxdp_interfaces = [\"eth0\"]\n\
                       [controller]\n";
        std::fs::write(&p, format!("{managed}url = \"https://c.example:50051\"\n")).unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("no `ca_file`"), "{e}");
        std::fs::write(
            &p,
            format!("{managed}url = \"http://c.example:50051\"\nca_file = \"/ca.pem\"\n"),
        )
        .unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("is not https://"), "{e}");
        std::fs::write(
            &p,
            format!("{managed}url = \"https://c.example:50051\"\nca_file = \"/ca.pem\"\n"),
        )
        .unwrap();
        Config::load(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod secrets_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zgw-cfg-secrets-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const MANAGED: &str =
        "role = \"device\"\nname = \"x\"\nxdp_interfaces = [\"eth0\"]\n[controller]\n";

    #[test]
    fn plaintext_only_to_loopback() {
        let d = dir();
        let p = d.join("a.toml");
        for (url, ok) in [
            ("http://127.0.0.1:50051", true),
            ("http://[::1]:50051", true),
            ("http://localhost:50051", true),
            ("http://198.19.9.1:50051", false),
            ("http://controller.example:50051", false),
        ] {
            std::fs::write(&p, format!("{MANAGED}url = \"{url}\"\n")).unwrap();
            let r = Config::load(&p);
            assert_eq!(r.is_ok(), ok, "{url}: {r:?}");
            if !ok {
                let e = format!("{:#}", r.unwrap_err());
                assert!(e.contains("loopback addresses only"), "{e}");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn token_files_must_be_private() {
        let d = dir();
        let p = d.join("a.toml");
        let tok = d.join("token");
        std::fs::write(&tok, "zt-enroll-abc\n").unwrap();
        std::fs::write(
            &p,
            format!(
                "{MANAGED}url = \"http://127.0.0.1:1\"\nenrollment_token_file = \"{}\"\n",
                tok.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = Config::load(&p).unwrap();
        let ctl = cfg.controller.as_ref().unwrap();
        let e = format!("{:#}", ctl.token().unwrap_err());
        assert!(e.contains("others may read it"), "{e}");
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ctl.token().unwrap().as_deref(), Some("zt-enroll-abc"));
        // Not both.
        std::fs::write(
            &p,
            format!(
                "{MANAGED}url = \"http://127.0.0.1:1\"\nenrollment_token = \"t\"\n\
                 enrollment_token_file = \"{}\"\n",
                tok.display()
            ),
        )
        .unwrap();
        assert!(Config::load(&p).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_log_is_private() {
        let d = dir();
        let log = d.join("agent.jsonl");
        drop(open_log(&log).unwrap());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log), 0o600);
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_log(&log).unwrap());
        assert_eq!(
            mode(&log),
            0o600,
            "an older world-readable log is made private"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
