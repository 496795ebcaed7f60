//! The agent's side of the tunnel: starts the backend `[tunnel]` asks for, turns each
//! applied view into peers, addresses and routes, follows key rotation, and reports
//! state for `status`, metrics and connection logs.

use super::config::{Config, Role, Transport, TunnelConfig};
use crate::tunnel::{
    Options, PeerChange, PeerSpec, PeerStatus, Tunnel, TunnelDrop,
    keys::{self, KeyPair},
    tun,
};
use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use policy_compiler::HostView;
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::SystemTime,
};

pub struct AgentTunnel {
    /// The controllers' addresses (managed mode: `url` and `fallback_urls`), checked
    /// against each view's protected space: the shield would cut the agent off from a
    /// controller inside it.
    controllers: Vec<IpAddr>,
    warned_controller: bool,
    tunnel: std::sync::Arc<Tunnel>,
    /// Routes into the tunnel interface beside the peers' prefixes: a device's proxy
    /// address space (`[names]`).
    extra_routes: Vec<IpNet>,
    cfg: TunnelConfig,
    role: Role,
    key_file: PathBuf,
    key_stamp: Option<(SystemTime, u64)>,
    status_file: PathBuf,
    /// Peers' endpoints as the previous run of the agent last saw them (its status file),
    /// by public key: used once, to reach devices again at once after a restart.
    remembered: std::collections::HashMap<[u8; 32], SocketAddr>,
}

impl std::fmt::Debug for AgentTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTunnel")
            .field("interface", &self.cfg.interface)
            .finish_non_exhaustive()
    }
}

/// Which backend carries the tunnel, as `status` reports it.
pub const USERSPACE: &str = "userspace (boringtun)";

/// Where the running agent writes the tunnel's state for `gateway-agent status`.
pub fn status_path(t: &TunnelConfig) -> PathBuf {
    t.private_key_file.with_file_name("tunnel-status.json")
}

/// The IP address of a controller URL (`https://198.51.100.7:50051`), when it is one.
fn controller_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split("://").nth(1)?;
    let host = rest.split('/').next()?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.parse().ok()
}

/// Endpoints in a status file the previous run wrote, by public key.
fn remembered_endpoints(path: &std::path::Path) -> std::collections::HashMap<[u8; 32], SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Default::default();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Default::default();
    };
    v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let key = keys::decode_key(p["public_key"].as_str()?).ok()?;
            let ep = p["endpoint"].as_str()?.parse().ok()?;
            Some((key, ep))
        })
        .collect()
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl AgentTunnel {
    /// Starts the tunnel with no peers: peers come with the first applied view, after the
    /// programs are attached to the tunnel interface, so nothing crosses it unenforced.
    pub async fn start(cfg: &Config) -> Result<Option<AgentTunnel>> {
        let Some(t) = cfg.tunnel.clone() else {
            return Ok(None);
        };
        match t.transport {
            Transport::Userspace | Transport::Auto => {}
            Transport::Kernel => bail!(
                "[tunnel] transport = \"kernel\": the kernel WireGuard backend is not \
                 available in this version; use \"userspace\" (or \"auto\")"
            ),
        }
        let (pair, created) = keys::load_or_create(&t.private_key_file)?;
        if created {
            tracing::info!(
                public_key = %pair.public_b64(),
                file = %t.private_key_file.display(),
                "created this host's tunnel key"
            );
        }
        let keepalive = match cfg.role {
            Role::Device if t.persistent_keepalive > 0 => Some(t.persistent_keepalive),
            _ => None,
        };
        if t.insecure_skip_cryptokey_routing {
            tracing::warn!(
                "[tunnel] insecure_skip_cryptokey_routing is on: any peer may send with any \
                 other peer's address. Never in production."
            );
        }
        let tunnel = Tunnel::start(
            Options {
                interface: t.interface.clone(),
                listen_port: t.listen_port,
                mtu: t.mtu,
                persistent_keepalive: keepalive,
                skip_cryptokey_routing: t.insecure_skip_cryptokey_routing,
            },
            pair.clone(),
        )
        .await
        .context("starting the userspace tunnel")?;
        tun::configure_link(&t.interface, t.mtu, &[])?;
        if cfg.role == Role::Connector {
            tunnel.accept_control(crate::tunnel::control::Direction::ToConnector);
            tun::enable_forwarding(true)?;
            if t.masquerade {
                tun::install_masquerade(&t.interface)?;
            } else {
                tun::remove_masquerade()?;
            }
        }
        tracing::info!(
            transport = USERSPACE,
            interface = %t.interface,
            port = tunnel.local_port(),
            public_key = %pair.public_b64(),
            "tunnel up"
        );
        let remembered = remembered_endpoints(&status_path(&t));
        let controllers = cfg
            .controller
            .as_ref()
            .map(|c| c.urls().filter_map(controller_ip).collect())
            .unwrap_or_default();
        let at = AgentTunnel {
            controllers,
            warned_controller: false,
            remembered,
            key_stamp: stamp(&t.private_key_file),
            key_file: t.private_key_file.clone(),
            status_file: status_path(&t),
            tunnel: std::sync::Arc::new(tunnel),
            extra_routes: Vec::new(),
            cfg: t,
            role: cfg.role,
        };
        at.write_status();
        Ok(Some(at))
    }

    pub fn public_key(&self) -> String {
        self.tunnel.public_key()
    }

    /// The running tunnel (the control channel and run-time routes of `[names]`).
    pub fn handle(&self) -> std::sync::Arc<Tunnel> {
        self.tunnel.clone()
    }

    /// Routes `nets` into the tunnel interface from the next [`AgentTunnel::apply`] on.
    pub fn set_extra_routes(&mut self, nets: Vec<IpNet>) {
        self.extra_routes = nets;
    }

    /// Makes peers, addresses and routes those of `view`.
    pub async fn apply(&mut self, view: &HostView) -> Result<PeerChange> {
        if let Some(ip) = self
            .controllers
            .iter()
            .find(|ip| view.protected.iter().any(|n| n.contains(*ip)))
            && !self.warned_controller
        {
            self.warned_controller = true;
            tracing::warn!(
                controller = %ip,
                "the controller's address is inside protected space: the shield drops this \
                 host's cleartext traffic to it, and it is not reached through the tunnel \
                 either; give the controller an address outside every remote network"
            );
        }
        let mut specs: Vec<PeerSpec> = Vec::with_capacity(view.peers.len());
        for p in &view.peers {
            let endpoint = match &p.endpoint {
                Some(e) => match tokio::net::lookup_host(e.as_str()).await {
                    Ok(mut it) => it.next(),
                    Err(err) => {
                        tracing::warn!(peer = %p.name, endpoint = %e, "cannot resolve the peer's endpoint: {err}");
                        None
                    }
                },
                None => None,
            };
            specs.push(PeerSpec {
                name: p.name.clone(),
                public_key: p.public_key.0,
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
            });
        }
        // After a restart: the devices' last known endpoints, and a handshake to each, so
        // their traffic resumes now rather than when they give up on the old session.
        let mut revive = Vec::new();
        if !self.remembered.is_empty() {
            for s in specs.iter_mut().filter(|s| s.endpoint.is_none()) {
                if let Some(ep) = self.remembered.remove(&s.public_key) {
                    s.endpoint = Some(ep);
                    revive.push(s.public_key);
                }
            }
            self.remembered.clear();
        }
        let change = self.tunnel.set_peers(&specs);
        let revived = revive
            .iter()
            .filter(|k| self.tunnel.handshake_now(k))
            .count();
        if revived > 0 {
            tracing::info!(
                peers = revived,
                "handshaking with peers at their last known endpoints"
            );
        }
        let mut routes: Vec<IpNet> = specs.iter().flat_map(|s| s.allowed_ips.clone()).collect();
        routes.extend(self.extra_routes.iter().copied());
        routes.sort();
        routes.dedup();
        let own = if self.role == Role::Device {
            view.tunnel_addresses.clone()
        } else {
            Vec::new()
        };
        tun::configure_link(&self.cfg.interface, self.cfg.mtu, &own)?;
        tun::sync_routes(&self.cfg.interface, &routes)?;
        if !change.is_empty() {
            tracing::info!(
                added = ?change.added,
                removed = ?change.removed,
                updated = ?change.updated,
                peers = specs.len(),
                "tunnel peers changed"
            );
        }
        self.write_status();
        Ok(change)
    }

    /// Picks up a key written by `gateway-agent rotate-key`: sessions under the old key
    /// end now. Returns the new key pair when it changed.
    pub fn check_rotation(&mut self) -> Option<KeyPair> {
        let now = stamp(&self.key_file);
        if now == self.key_stamp {
            return None;
        }
        self.key_stamp = now;
        match keys::load(&self.key_file) {
            Ok(pair) if pair.public_b64() != self.tunnel.public_key() => {
                self.tunnel.set_key(pair.clone());
                tracing::info!(public_key = %pair.public_b64(), "tunnel key rotated; sessions under the old key ended");
                self.write_status();
                Some(pair)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!("{e:#}; the tunnel keeps its current key");
                None
            }
        }
    }

    /// The device's public address and port as this connector sees them.
    pub fn endpoint_of(&self, overlay: IpAddr) -> Option<SocketAddr> {
        self.tunnel.endpoint_of(overlay)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.tunnel.peers()
    }

    pub fn drops(&self) -> Vec<(TunnelDrop, u64)> {
        self.tunnel.drops()
    }

    /// For connection logs: overlay address -> the endpoint its peer's packets come from.
    pub fn endpoint_resolver(&self) -> super::logs::Endpoints {
        self.tunnel.endpoint_resolver()
    }

    pub fn metrics(&self) -> super::metrics::TunnelMetrics {
        let peers = self.tunnel.peers();
        super::metrics::TunnelMetrics {
            peers: peers.len() as u64,
            peers_connected: peers
                .iter()
                .filter(|p| p.last_handshake_secs.is_some_and(|s| s < 180))
                .count() as u64,
            rx_bytes: peers.iter().map(|p| p.rx_bytes).sum(),
            tx_bytes: peers.iter().map(|p| p.tx_bytes).sum(),
            drops: self
                .tunnel
                .drops()
                .into_iter()
                .map(|(r, n)| (r.name(), n))
                .collect(),
        }
    }

    /// State for `gateway-agent status` (the agent writes it; status reads it).
    pub fn write_status(&self) {
        let st = serde_json::json!({
            "transport": USERSPACE,
            "interface": self.cfg.interface,
            "listen_port": self.tunnel.local_port(),
            "public_key": self.tunnel.public_key(),
            "peers": self.tunnel.peers(),
            "drops": self.tunnel.drops().into_iter().map(|(r, n)| (r.name(), n)).collect::<std::collections::BTreeMap<_, _>>(),
            "updated_unix": crate::writer::unix_now(),
        });
        let tmp = self.status_file.with_extension("json.tmp");
        let ok = std::fs::write(&tmp, format!("{st:#}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.status_file));
        if let Err(e) = ok {
            tracing::debug!("writing {}: {e}", self.status_file.display());
        }
    }
}

/// The tunnel's part of `status`: the configured transport, and what the running agent
/// last wrote (peers, handshakes, drops). Null without `[tunnel]`.
pub fn status(cfg: &Config) -> serde_json::Value {
    let Some(t) = &cfg.tunnel else {
        return serde_json::Value::Null;
    };
    let path = status_path(t);
    let live: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let up = crate::tunnel::tun::link_exists(&t.interface);
    match live {
        Some(mut v) => {
            v["interface_present"] = serde_json::json!(up);
            v
        }
        None => serde_json::json!({
            "transport": USERSPACE,
            "interface": t.interface,
            "interface_present": up,
            "note": format!("no state at {} (the agent has not run)", path.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::controller_ip;

    #[test]
    fn controller_addresses_are_read_from_urls() {
        assert_eq!(
            controller_ip("https://198.51.100.7:50051"),
            "198.51.100.7".parse().ok()
        );
        assert_eq!(
            controller_ip("https://[2001:db8::7]:50051/"),
            "2001:db8::7".parse().ok()
        );
        assert_eq!(
            controller_ip("http://127.0.0.1:50051"),
            "127.0.0.1".parse().ok()
        );
        assert_eq!(controller_ip("https://controller.example:50051"), None);
    }
}
