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
    /// Standalone mode: enforce the policy file even when its own `[[test]]` blocks fail
    /// (each failing test is logged as a warning). By default such a file is refused
    /// like one with errors: the agent does not start with it, and a running agent
    /// keeps the previous policy.
    #[serde(default)]
    pub skip_policy_tests: bool,
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
    /// How long a flow may stay idle, by protocol and state, before the agent ends it
    /// (flow_end record) and forgets it.
    #[serde(default)]
    pub flow_timeouts: FlowTimeouts,
    /// Tuning of the kernel programs (event budgets, scan detection).
    #[serde(default)]
    pub dataplane: DataplaneSettings,
    /// How often the policy file is checked for changes.
    #[serde(default = "default_poll_ms")]
    pub policy_poll_ms: u64,
    /// `[tunnel]`: the WireGuard tunnel between devices and connectors. Absent: no tunnel
    /// (the data plane trusts overlay source addresses, as before the tunnel existed).
    pub tunnel: Option<TunnelConfig>,
    /// `[names]`: DNS resources (needs `[tunnel]`). On a device it turns on the stub
    /// resolver; a connector resolves names for its devices whether or not it is given
    /// (these settings, or their defaults).
    pub names: Option<NamesConfig>,
}

/// `[names]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamesConfig {
    /// Devices: where the stub resolver listens (UDP and TCP). Empty (the default): the
    /// device's first IPv4 tunnel address, port 53. Point the system resolver (or
    /// systemd-resolved's per-link DNS for the resources' domains) there.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Devices: where every other query is forwarded. Connectors: the resolvers that
    /// resolve resources' names. Empty (the default): the nameservers of
    /// /etc/resolv.conf (a device's own stub address left out).
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// Devices: proxy addresses handed out for names.
    #[serde(default = "default_proxy_v4")]
    pub proxy_v4: ipnet::Ipv4Net,
    #[serde(default = "default_proxy_v6")]
    pub proxy_v6: ipnet::Ipv6Net,
    /// Devices: where the name -> proxy address pairs are kept across restarts.
    #[serde(default = "default_pool_file")]
    pub pool_file: PathBuf,
    /// Connectors: the TTL of a resolution is the answer's, clamped to this range (s).
    #[serde(default = "default_min_ttl")]
    pub min_ttl_secs: u64,
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// Connectors: names one device may hold at once (a wildcard has endless names);
    /// beyond, its requests for new names are refused until an old one is gone.
    #[serde(default = "default_max_names")]
    pub max_names_per_device: usize,
}

fn default_max_names() -> usize {
    1024
}

fn default_proxy_v4() -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(100, 96, 0, 0), 11).unwrap_or_default()
}
fn default_proxy_v6() -> ipnet::Ipv6Net {
    ipnet::Ipv6Net::new(
        std::net::Ipv6Addr::new(0xfd00, 0x6e61, 0x6d65, 0, 0, 0, 0, 0),
        107,
    )
    .unwrap_or_default()
}
fn default_pool_file() -> PathBuf {
    PathBuf::from("/var/lib/zt-gateway/names.json")
}
fn default_min_ttl() -> u64 {
    30
}
fn default_max_ttl() -> u64 {
    3600
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            listen: Vec::new(),
            upstreams: Vec::new(),
            proxy_v4: default_proxy_v4(),
            proxy_v6: default_proxy_v6(),
            pool_file: default_pool_file(),
            min_ttl_secs: default_min_ttl(),
            max_ttl_secs: default_max_ttl(),
            max_names_per_device: default_max_names(),
        }
    }
}

impl NamesConfig {
    fn validate(&self) -> Result<()> {
        if self.proxy_v4.prefix_len() > 24 || self.proxy_v6.prefix_len() > 120 {
            bail!(
                "[names] `proxy_v4` {} / `proxy_v6` {}: at most /24 and /120 (room for the \
                 names a device uses)",
                self.proxy_v4,
                self.proxy_v6
            );
        }
        if self.min_ttl_secs == 0 || self.max_ttl_secs < self.min_ttl_secs {
            bail!(
                "[names] `min_ttl_secs` must be at least 1 and `max_ttl_secs` at least \
                 `min_ttl_secs`"
            );
        }
        if !self.pool_file.is_absolute() {
            bail!("[names] `pool_file` must be an absolute path");
        }
        if self.max_names_per_device == 0 {
            bail!("[names] `max_names_per_device` must be at least 1");
        }
        Ok(())
    }
}

/// Which WireGuard implementation carries the tunnel.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The kernel's WireGuard where the kernel has it, userspace otherwise.
    #[default]
    Auto,
    /// boringtun on a TUN device: works on every kernel.
    Userspace,
    /// The kernel's WireGuard module, configured over netlink; fails where it is missing.
    Kernel,
}

/// `[tunnel]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    #[serde(default)]
    pub transport: Transport,
    /// The tunnel interface the agent creates and owns.
    #[serde(default = "default_tunnel_interface")]
    pub interface: String,
    /// UDP port the tunnel listens on (a connector's must match its `endpoint` in the
    /// policy). 0: any free port (devices).
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// The host's WireGuard private key (created on first start, mode 0600; rotated by
    /// `gateway-agent rotate-key`). It never leaves the host.
    #[serde(default = "default_private_key_file")]
    pub private_key_file: PathBuf,
    /// MTU of the tunnel interface: the uplink's MTU minus 80 (IPv6 + UDP + WireGuard).
    #[serde(default = "default_tunnel_mtu")]
    pub mtu: u16,
    /// Connectors: rewrite tunnel traffic to the connector's own address toward
    /// resources (nftables masquerade), so resources need no route back to devices.
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// Handshake initiations accepted per source address (/32, /64) per second on the
    /// physical links, and the burst above that rate; more are dropped in XDP.
    #[serde(default = "default_handshake_rate")]
    pub handshakes_per_source: u32,
    #[serde(default = "default_handshake_burst")]
    pub handshake_burst: u32,
    /// Keepalive interval for devices (seconds, 0: off): keeps NAT bindings open.
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive: u16,
    /// DANGEROUS, for demonstrations and control runs only: accept decrypted packets
    /// whatever their source address. Any device could then send as any other.
    #[serde(default)]
    pub insecure_skip_cryptokey_routing: bool,
}

fn default_tunnel_interface() -> String {
    "ztg0".into()
}
fn default_listen_port() -> u16 {
    51820
}
fn default_private_key_file() -> PathBuf {
    PathBuf::from("/var/lib/zt-gateway/wireguard.key")
}
fn default_tunnel_mtu() -> u16 {
    1420
}
fn default_true() -> bool {
    true
}
fn default_handshake_rate() -> u32 {
    20
}
fn default_handshake_burst() -> u32 {
    40
}
fn default_keepalive() -> u16 {
    25
}

impl TunnelConfig {
    fn validate(&self) -> Result<()> {
        let name = &self.interface;
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            bail!(
                "[tunnel] `interface` = {name:?}: 1 to 15 characters of letters, digits, \
                 `-`, `_`, `.`"
            );
        }
        if !(1280..=9000).contains(&self.mtu) {
            bail!(
                "[tunnel] `mtu` = {}: between 1280 (the IPv6 minimum) and 9000",
                self.mtu
            );
        }
        if self.handshakes_per_source == 0 || self.handshake_burst < self.handshakes_per_source {
            bail!(
                "[tunnel] `handshakes_per_source` must be at least 1 and `handshake_burst` at \
                 least `handshakes_per_source`"
            );
        }
        if !self.private_key_file.is_absolute() {
            bail!("[tunnel] `private_key_file` must be an absolute path");
        }
        Ok(())
    }
}

/// `[controller]`: managed mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The controller's gRPC address: `https://controller.example:50051` (with
    /// `ca_file`); `http://` (plaintext) only to a loopback address, for tests.
    pub url: String,
    /// Other controllers of the same control plane (replicas on one PostgreSQL database),
    /// tried in order after `url` when the one in use is unreachable; the agent stays with
    /// whichever answers and resumes from the generation it has. Same rules as `url`.
    #[serde(default)]
    pub fallback_urls: Vec<String>,
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
    /// `url`, then every `fallback_urls` entry.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.fallback_urls.iter().map(String::as_str))
    }

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

/// `[flow_timeouts]`, seconds of idleness (no packet either way) before a flow ends. The
/// defaults follow Linux conntrack's spirit, with a shorter established TCP timeout.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimeouts {
    /// TCP, no reply seen yet (a SYN nobody answered).
    pub tcp_unreplied: u64,
    /// TCP with replies, no FIN or RST.
    pub tcp_established: u64,
    /// TCP after a FIN from either side.
    pub tcp_closing: u64,
    /// TCP after a RST.
    pub tcp_reset: u64,
    pub udp_unreplied: u64,
    pub udp_replied: u64,
    /// ICMP, ICMPv6 and other protocols.
    pub other: u64,
    /// Fragmented datagrams being followed.
    pub fragments: u64,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts {
            tcp_unreplied: 60,
            tcp_established: 86_400,
            tcp_closing: 120,
            tcp_reset: 10,
            udp_unreplied: 30,
            udp_replied: 180,
            other: 30,
            fragments: 30,
        }
    }
}

impl FlowTimeouts {
    /// The timeout of a flow in its current state, in seconds.
    pub fn for_flow(&self, key: &gateway_common::FlowKey, st: &gateway_common::FlowState) -> u64 {
        use gateway_common::{FlowState, flow::proto};
        let replied = st.flags & FlowState::SEEN_REPLY != 0;
        match key.proto {
            proto::TCP if st.flags & FlowState::SEEN_RST != 0 => self.tcp_reset,
            proto::TCP
                if st.flags & (FlowState::SEEN_FIN_ORIG | FlowState::SEEN_FIN_REPLY) != 0 =>
            {
                self.tcp_closing
            }
            proto::TCP if replied => self.tcp_established,
            proto::TCP => self.tcp_unreplied,
            proto::UDP if replied => self.udp_replied,
            proto::UDP => self.udp_unreplied,
            _ => self.other,
        }
    }

    fn validate(&self) -> Result<()> {
        let all = [
            ("tcp_unreplied", self.tcp_unreplied),
            ("tcp_established", self.tcp_established),
            ("tcp_closing", self.tcp_closing),
            ("tcp_reset", self.tcp_reset),
            ("udp_unreplied", self.udp_unreplied),
            ("udp_replied", self.udp_replied),
            ("other", self.other),
            ("fragments", self.fragments),
        ];
        for (name, v) in all {
            if v == 0 {
                bail!("[flow_timeouts] `{name}` must be at least 1 second");
            }
        }
        Ok(())
    }
}

/// `[dataplane]`: tuning values the agent writes into the kernel's `CONFIG` map.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSettings {
    /// Deny events per source prefix (/32 IPv4, /64 IPv6) per second.
    pub deny_events_per_source: u32,
    /// Distinct denied ports / protected hosts from one source prefix within
    /// `scan_window_secs` that raise a scan alert.
    pub scan_ports: u32,
    pub scan_hosts: u32,
    pub scan_window_secs: u32,
    /// Per-CPU budgets, events per second: flow records (start and audit of principals),
    /// flow_end records the kernel sends (revocations), deny records, audit records of
    /// unknown sources, scan alerts. Over budget, events are counted, not sent.
    pub flow_events_per_cpu: u32,
    pub flow_end_events_per_cpu: u32,
    pub deny_events_per_cpu: u32,
    pub audit_events_per_cpu: u32,
    pub scan_alerts_per_cpu: u32,
    /// Kernel diagnostics through aya-log (printed by the agent): off by default.
    pub diagnostics: bool,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        let d = gateway_common::DataplaneConfig::DEFAULT;
        use gateway_common::EventKind as K;
        DataplaneSettings {
            deny_events_per_source: d.deny_per_source,
            scan_ports: d.scan_ports,
            scan_hosts: d.scan_hosts,
            scan_window_secs: (d.scan_window_ns / 1_000_000_000) as u32,
            flow_events_per_cpu: d.budget[K::FlowStart as usize],
            flow_end_events_per_cpu: d.budget[K::FlowEnd as usize],
            deny_events_per_cpu: d.budget[K::Deny as usize],
            audit_events_per_cpu: d.budget[K::Audit as usize],
            scan_alerts_per_cpu: d.budget[K::ScanAlert as usize],
            diagnostics: false,
        }
    }
}

impl DataplaneSettings {
    /// The kernel configuration for a host of `role`, with a fresh hash key.
    pub fn kernel_config(&self, role: Role, hash_key: [u64; 2]) -> gateway_common::DataplaneConfig {
        use gateway_common::EventKind as K;
        let mut budget = [0u32; gateway_common::event::EVENT_KINDS as usize];
        budget[K::FlowStart as usize] = self.flow_events_per_cpu;
        budget[K::FlowEnd as usize] = self.flow_end_events_per_cpu;
        budget[K::Deny as usize] = self.deny_events_per_cpu;
        budget[K::Audit as usize] = self.audit_events_per_cpu;
        budget[K::ScanAlert as usize] = self.scan_alerts_per_cpu;
        gateway_common::DataplaneConfig {
            role: match role {
                Role::Connector => gateway_common::Role::Connector as u8,
                Role::Device => gateway_common::Role::Device as u8,
            },
            diagnostics: u8::from(self.diagnostics),
            hash_key,
            deny_per_source: self.deny_events_per_source,
            scan_ports: self.scan_ports,
            scan_hosts: self.scan_hosts,
            deny_window_ns: 1_000_000_000,
            scan_window_ns: u64::from(self.scan_window_secs) * 1_000_000_000,
            budget,
            ..gateway_common::DataplaneConfig::DEFAULT
        }
    }

    fn validate(&self) -> Result<()> {
        if self.scan_ports == 0 || self.scan_hosts == 0 || self.scan_window_secs == 0 {
            bail!(
                "[dataplane] `scan_ports`, `scan_hosts` and `scan_window_secs` must be at least 1"
            );
        }
        if self.scan_ports > 256 || self.scan_hosts > 256 {
            bail!(
                "[dataplane] `scan_ports` and `scan_hosts` count distinct values in a 256-slot                  set: at most 256"
            );
        }
        Ok(())
    }
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
            tracing::warn!(
                "{} holds an enrollment token and others may read it; \
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
        if let Some(n) = &self.names {
            if self.tunnel.is_none() {
                bail!(
                    "[names] needs [tunnel]: proxy addresses are reached only through the \
                     tunnel"
                );
            }
            n.validate()?;
        }
        if let Some(t) = &self.tunnel {
            t.validate()?;
            if self.xdp_interfaces.contains(&t.interface)
                || self.tc_egress_interfaces.contains(&t.interface)
            {
                bail!(
                    "[tunnel] `interface` {:?} is also listed as a physical link; the agent \
                     attaches the tunnel's own programs to it",
                    t.interface
                );
            }
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
            let mut seen = std::collections::HashSet::new();
            for (i, url) in c.urls().enumerate() {
                let key = if i == 0 {
                    "url".to_string()
                } else {
                    format!("fallback_urls[{}]", i - 1)
                };
                if !seen.insert(url) {
                    bail!("[controller] {key} `{url}` is listed twice");
                }
                let https = url.starts_with("https://");
                match (&c.ca_file, https) {
                    (None, true) => bail!(
                        "[controller] {key} `{url}` is https but no `ca_file` is set: give the \
                         deployment's CA certificate (ca.pem from `gateway-controller init`)"
                    ),
                    (Some(_), false) => {
                        bail!("[controller] `ca_file` is set but {key} `{url}` is not https://")
                    }
                    _ => {}
                }
                if !https && !url.starts_with("http://") {
                    bail!(
                        "[controller] {key} `{url}` must start with https:// (or http:// to a \
                         loopback address, for tests)"
                    );
                }
                if !https && !gateway_proto::plaintext_allowed(url) {
                    bail!(
                        "[controller] {key} `{url}`: plaintext (http://) is for loopback \
                         addresses only; use https:// with `ca_file`"
                    );
                }
            }
            if c.enrollment_token.is_some() && c.enrollment_token_file.is_some() {
                bail!(
                    "[controller] has both `enrollment_token` and `enrollment_token_file`: give \
                     one"
                );
            }
        }
        self.flow_timeouts.validate()?;
        self.dataplane.validate()?;
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
        let t = cfg.tunnel.unwrap();
        assert_eq!((t.interface.as_str(), t.listen_port), ("ztg0", 51820));
    }

    #[test]
    fn names_settings_are_checked() {
        let base = "role = \"device\"\nname = \"x\"\npolicy_file = \"/p\"\n\
                    xdp_interfaces = [\"eth0\"]\n";
        let load = |extra: &str| -> Result<Config> {
            let cfg: Config =
                toml::from_str(&format!("{base}{extra}")).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        let n = load("[tunnel]\n[names]\n").unwrap().names.unwrap();
        assert_eq!(n, NamesConfig::default());
        assert_eq!(n.proxy_v4.to_string(), "100.96.0.0/11");
        assert_eq!(n.proxy_v6.to_string(), "fd00:6e61:6d65::/107");
        for (extra, needle) in [
            ("[names]\n", "needs [tunnel]"),
            (
                "[tunnel]\n[names]\nproxy_v4 = \"100.96.0.0/30\"",
                "at most /24",
            ),
            ("[tunnel]\n[names]\nmin_ttl_secs = 0", "at least 1"),
            (
                "[tunnel]\n[names]\nmin_ttl_secs = 60\nmax_ttl_secs = 30",
                "at least `min_ttl_secs`",
            ),
            (
                "[tunnel]\n[names]\npool_file = \"names.json\"",
                "absolute path",
            ),
            ("[tunnel]\n[names]\nupstream = []", "unknown field"),
            ("[tunnel]\n[names]\nmax_names_per_device = 0", "at least 1"),
            ("[tunnel]\n[names]\nproxy_v4 = \"100.96.0.1\"", "invalid"),
        ] {
            let err = format!("{:#}", load(extra).expect_err(extra));
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn tunnel_settings_are_checked() {
        let base = "role = \"device\"\nname = \"x\"\npolicy_file = \"/p\"\n\
                    xdp_interfaces = [\"eth0\"]\n[tunnel]\n";
        let load = |extra: &str| -> Result<Config> {
            let cfg: Config =
                toml::from_str(&format!("{base}{extra}")).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        let t = load("").unwrap().tunnel.unwrap();
        assert_eq!(t.transport, Transport::Auto);
        assert!(t.masquerade && !t.insecure_skip_cryptokey_routing);
        for (extra, needle) in [
            (
                "interface = \"a-very-long-interface\"",
                "1 to 15 characters",
            ),
            ("interface = \"wg 0\"", "1 to 15 characters"),
            ("interface = \"eth0\"", "also listed as a physical link"),
            ("mtu = 500", "between 1280"),
            ("handshakes_per_source = 0", "at least 1"),
            (
                "handshake_burst = 1\nhandshakes_per_source = 5",
                "at least `handshakes_per_source`",
            ),
            ("private_key_file = \"wg.key\"", "absolute path"),
            ("transport = \"quantum\"", "unknown variant"),
            ("listen_prot = 1", "unknown field"),
        ] {
            let err = format!("{:#}", load(extra).expect_err(extra));
            assert!(err.contains(needle), "{extra}: {err}");
        }
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
    fn fallback_controllers_follow_the_rules_of_url() {
        let d = dir();
        let p = d.join("a.toml");
        for (lines, problem) in [
            (
                "url = \"http://127.0.0.1:1\"\nfallback_urls = [\"http://127.0.0.1:2\"]\n",
                None,
            ),
            (
                "url = \"http://127.0.0.1:1\"\nfallback_urls = [\"http://198.19.9.1:2\"]\n",
                Some("fallback_urls[0] `http://198.19.9.1:2`: plaintext (http://) is for loopback"),
            ),
            (
                "url = \"http://127.0.0.1:1\"\nfallback_urls = [\"http://127.0.0.1:2\", \"http://127.0.0.1:1\"]\n",
                Some("fallback_urls[1] `http://127.0.0.1:1` is listed twice"),
            ),
            (
                "url = \"https://a.example:1\"\nca_file = \"/ca.pem\"\nfallback_urls = [\"http://127.0.0.1:2\"]\n",
                Some("`ca_file` is set but fallback_urls[0] `http://127.0.0.1:2` is not https://"),
            ),
            (
                "url = \"http://127.0.0.1:1\"\nfallback_urls = [\"https://b.example:2\"]\n",
                Some("fallback_urls[0] `https://b.example:2` is https but no `ca_file`"),
            ),
        ] {
            std::fs::write(&p, format!("{MANAGED}{lines}")).unwrap();
            match (Config::load(&p), problem) {
                (Ok(cfg), None) => {
                    let c = cfg.controller.unwrap();
                    assert_eq!(
                        c.urls().collect::<Vec<_>>(),
                        ["http://127.0.0.1:1", "http://127.0.0.1:2"]
                    );
                }
                (Err(e), Some(want)) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(want), "{lines}: {e}");
                }
                (r, want) => panic!("{lines}: {r:?}, want {want:?}"),
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
