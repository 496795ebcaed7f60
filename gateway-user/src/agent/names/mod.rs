//! DNS resources, the agents' part (docs/dataplane.md, "Names").
//!
//! **Device.** The agent runs the stub resolver of `gateway-dns` on its tunnel address. A
//! query for a name the device may reach (the most specific pattern of the view owning the
//! name has an allow or audit verdict for the device) gets the name's proxy addresses, and
//! before the answer leaves:
//! 1. the proxy addresses are routed through the tunnel to the connector carrying the
//!    resource's network ([`policy_compiler::NameAtoms::peer`]);
//! 2. that connector is asked, over the tunnel's control channel, to resolve the name for
//!    this device's proxy addresses, and has answered (so the first packet finds its
//!    translation there);
//! 3. the proxy addresses are written into this host's policy maps as destinations of the
//!    name's atoms (an apply of the view in force plus them: the writer's [`ApplyHook`]),
//!    so the first packet never races the map.
//!
//! Every other query is forwarded upstream unchanged (see `gateway-dns` on existence leaks).
//!
//! **Connector.** A device's request is checked (the sender is a principal of this view
//! that may reach the pattern owning the name), the name is resolved by the connector
//! itself (TTL clamped), and the kernel's `NAMES` map gets (device, proxy) -> (real
//! address, the name's atoms): the programs decide by the atoms and translate proxy ->
//! real for that device's flows. Resolutions are renewed when their TTL runs out; open
//! flows keep the address they started with (`NAT`), new ones get the new address. Before
//! each policy flip the entries are pointed at the new generation's atoms, and entries
//! whose name no longer belongs to a pattern of the view are removed.

use super::config::{NamesConfig, Role};
use crate::tunnel::control::{self, ControlMessage};
use crate::writer::ApplyHook;
use anyhow::{Context as _, Result, bail};
use gateway_common::policy::{AtomValue, Verdict};
use gateway_dns::{Intent, Matched, Name, Names, PrepareFuture};
use ipnet::IpNet;
use policy_compiler::{HostView, NameAtoms, names::NamePattern};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod connector;
mod device;

pub use connector::{ConnectorNames, KernelNames, kernel_names};
pub use device::{DeviceNames, DeviceTunnel, check_proxy_space, stub_config};

/// How long a device waits for its connector's answer before asking again, and how many
/// times it asks (the stub's own deadline, 5 s, bounds the whole).
const RETRY: Duration = Duration::from_millis(400);
const ATTEMPTS: u32 = 10;

/// A device's request: resolve `name` for these proxy addresses.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    name: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// A connector's answer: the real addresses (empty: that family does not resolve), or why not.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    id: u64,
    #[serde(default)]
    v4: Vec<Ipv4Addr>,
    #[serde(default)]
    v6: Vec<Ipv6Addr>,
    #[serde(default)]
    ttl_secs: u64,
    /// How long the connector's own resolution took (0: answered from its cache).
    #[serde(default)]
    resolve_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The view's name patterns, parsed once per view.
struct Patterns {
    list: Vec<(NamePattern, NameAtoms)>,
}

impl Patterns {
    fn new(view: &HostView) -> Patterns {
        Patterns {
            list: view
                .names
                .iter()
                .filter_map(|n| Some((NamePattern::parse(&n.pattern).ok()?, n.clone())))
                .collect(),
        }
    }

    /// The pattern owning `name` (lower case, no trailing dot): the most specific.
    fn owner(&self, name: &str) -> Option<&NameAtoms> {
        policy_compiler::names::most_specific(name, self.list.iter().map(|(p, n)| (p, n)))
            .first()
            .copied()
    }
}

/// Whether some packet of `class` toward the atoms of `n` gets allow or audit at `now`.
fn may_reach(view: &HostView, class: u32, n: &NameAtoms, now: i64) -> bool {
    n.default_verdict == Verdict::Audit
        || view.rules.iter().any(|r| {
            r.key.class == class
                && (r.key.atom == n.v4 || r.key.atom == n.v6)
                && r.value.at(now).0 != Verdict::Deny
        })
}

fn class_of(view: &HostView, addr: IpAddr) -> Option<u32> {
    view.sources
        .iter()
        .find(|s| s.addr == addr)
        .map(|s| s.class)
}

fn atom_value(n: &NameAtoms, v6: bool) -> AtomValue {
    AtomValue {
        atom: if v6 { n.v6 } else { n.v4 },
        default_verdict: n.default_verdict as u8,
        _pad: [0; 3],
        default_rule: n.default_rule,
    }
}

fn trim(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

// The agent's run loop

/// What the run loop holds for `[names]`.
pub struct AgentNames {
    cfg: NamesConfig,
    device: Option<DeviceNames>,
    connector: Option<ConnectorNames>,
    stub: Option<Arc<gateway_dns::Stub>>,
    stub_stop: Option<gateway_dns::ShutdownHandle>,
    /// Requests from the stub to apply the view in force again.
    pub reapply: Option<mpsc::Receiver<oneshot::Sender<Result<(), String>>>>,
}

/// How the run loop answers a reapply request.
pub type ReapplyDone = oneshot::Sender<Result<(), String>>;

impl AgentNames {
    /// Sets up the side this host plays (nothing without a tunnel; a device only with
    /// `[names]`), hooks it into `writer`, and starts reading the control channel.
    pub fn start(
        role: Role,
        cfg: Option<&NamesConfig>,
        tunnel: Option<&mut super::tunnel::AgentTunnel>,
        kernel: Option<Box<dyn KernelNames>>,
        writer: &mut crate::writer::PolicyWriter,
    ) -> Result<Option<AgentNames>> {
        let Some(tunnel) = tunnel else {
            return Ok(None);
        };
        let handle = tunnel.handle();
        let Some(mut control_rx) = handle.take_control() else {
            return Ok(None);
        };
        match role {
            Role::Device => {
                let Some(cfg) = cfg.cloned() else {
                    return Ok(None);
                };
                let (tx, rx) = mpsc::channel(64);
                let dn = DeviceNames::new(handle, tx);
                writer.set_hook(Box::new(dn.clone()));
                tunnel.set_extra_routes(vec![IpNet::V4(cfg.proxy_v4), IpNet::V6(cfg.proxy_v6)]);
                let d = dn.clone();
                tokio::spawn(async move {
                    while let Some(msg) = control_rx.recv().await {
                        d.on_control(&msg);
                    }
                });
                Ok(Some(AgentNames {
                    cfg,
                    device: Some(dn),
                    connector: None,
                    stub: None,
                    stub_stop: None,
                    reapply: Some(rx),
                }))
            }
            Role::Connector => {
                let cfg = cfg.cloned().unwrap_or_default();
                let kernel = kernel.context("the connector's NAMES map is missing")?;
                let cn = match ConnectorNames::new(&cfg, kernel, handle) {
                    Ok(cn) => cn,
                    Err(e) => {
                        tracing::warn!("DNS resources are not served by this connector: {e:#}");
                        return Ok(None);
                    }
                };
                writer.set_hook(Box::new(cn.clone()));
                tokio::spawn(cn.clone().renew());
                let c = cn.clone();
                tokio::spawn(async move {
                    while let Some(msg) = control_rx.recv().await {
                        let c = c.clone();
                        tokio::spawn(async move { c.on_control(msg).await });
                    }
                });
                Ok(Some(AgentNames {
                    cfg,
                    device: None,
                    connector: Some(cn),
                    stub: None,
                    stub_stop: None,
                    reapply: None,
                }))
            }
        }
    }

    /// After a view was applied (and the tunnel configured for it): the names decided by
    /// it; on a device, the stub is started with the first view (its address is the
    /// device's tunnel address).
    pub async fn after_apply(&mut self, view: &HostView) {
        if let Some(c) = &self.connector {
            c.set_view(view);
        }
        let Some(d) = &self.device else {
            return;
        };
        d.set_view(view);
        if self.stub.is_some() {
            return;
        }
        if let Err(e) = check_proxy_space(&self.cfg, view) {
            tracing::error!("{e:#}; the DNS stub does not start");
            return;
        }
        let started = async {
            let c = stub_config(&self.cfg, view)?;
            let dn: Arc<DeviceNames> = Arc::new(d.clone());
            gateway_dns::Stub::bind(c, dn.clone(), dn).await
        }
        .await;
        match started {
            Ok(stub) => {
                let stub = Arc::new(stub);
                tracing::info!(listen = ?stub.local_addrs(), "DNS stub resolver up");
                self.stub_stop = Some(stub.shutdown_handle());
                let s = stub.clone();
                tokio::spawn(async move {
                    if let Err(e) = s.run().await {
                        tracing::error!("the DNS stub stopped: {e:#}");
                    }
                });
                self.stub = Some(stub);
            }
            Err(e) => tracing::error!("starting the DNS stub: {e:#}"),
        }
    }

    /// For connection logs: the DNS name of a flow's destination and its real address.
    pub fn lookup(&self) -> super::logs::NameLookup {
        let device = self.device.clone();
        let connector = self.connector.clone();
        Arc::new(move |src: IpAddr, dst: IpAddr| {
            if let Some(d) = &device {
                return d.name_of(dst);
            }
            connector.as_ref().and_then(|c| c.name_of(src, dst))
        })
    }

    /// The stub's counters, when it runs.
    pub fn stub_stats(&self) -> Option<gateway_dns::Stats> {
        self.stub.as_ref().map(|s| s.stats())
    }
}

impl Drop for AgentNames {
    fn drop(&mut self) {
        if let Some(s) = &self.stub_stop {
            s.shutdown();
        }
    }
}
