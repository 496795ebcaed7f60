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

// ---------------------------------------------------------------------------------------
// Device

/// What the device side needs from the tunnel.
pub trait DeviceTunnel: Send + Sync {
    fn add_route(&self, peer: &str, net: IpNet) -> bool;
    fn send(&self, peer: &str, overlay: Ipv4Addr, payload: &[u8]) -> bool;
}

impl DeviceTunnel for crate::tunnel::Tunnel {
    fn add_route(&self, peer: &str, net: IpNet) -> bool {
        crate::tunnel::Tunnel::add_route(self, peer, net)
    }
    fn send(&self, peer: &str, overlay: Ipv4Addr, payload: &[u8]) -> bool {
        self.send_control(peer, control::Direction::ToConnector, overlay, payload)
    }
}

/// A name the device answered, with what its connector resolved.
#[derive(Clone, Debug)]
struct Answered {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    real: Vec<IpAddr>,
}

/// The view in force, its patterns, the device's own class and IPv4 tunnel address.
type DeviceView = (Arc<HostView>, Arc<Patterns>, Option<u32>, Option<Ipv4Addr>);

struct DeviceState {
    /// The view in force, its patterns, and the device's own class.
    view: RwLock<Option<DeviceView>>,
    answered: Mutex<BTreeMap<String, Answered>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: std::sync::atomic::AtomicU64,
    tunnel: Arc<dyn DeviceTunnel>,
    /// Asks the run loop to apply the view in force again (with the proxy entries).
    reapply: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
}

/// The device's side: [`Names`] and [`Intent`] for the stub, and the writer's hook.
#[derive(Clone)]
pub struct DeviceNames(Arc<DeviceState>);

impl DeviceNames {
    pub fn new(
        tunnel: Arc<dyn DeviceTunnel>,
        reapply: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    ) -> DeviceNames {
        DeviceNames(Arc::new(DeviceState {
            view: RwLock::new(None),
            answered: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            tunnel,
            reapply,
        }))
    }

    /// Makes `view` the one names are decided by.
    pub fn set_view(&self, view: &HostView) {
        let own = match &view.host {
            policy_compiler::Host::Device(_) => view
                .tunnel_addresses
                .iter()
                .find_map(|a| class_of(view, *a)),
            _ => None,
        };
        let overlay = view.tunnel_addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        *self.0.view.write().unwrap_or_else(|e| e.into_inner()) = Some((
            Arc::new(view.clone()),
            Arc::new(Patterns::new(view)),
            own,
            overlay,
        ));
    }

    /// A connector's reply on the control channel.
    pub fn on_control(&self, msg: &ControlMessage) {
        let Ok(reply) = serde_json::from_slice::<Reply>(&msg.payload) else {
            tracing::debug!(peer = %msg.peer, "a control message that is no name reply");
            return;
        };
        if let Some(tx) = lock(&self.0.pending).remove(&reply.id) {
            let _ = tx.send(reply);
        }
    }

    /// For connection logs: the name a proxy address stands for, and what it resolved to.
    pub fn name_of(&self, dst: IpAddr) -> Option<(String, Option<IpAddr>)> {
        let answered = lock(&self.0.answered);
        answered.iter().find_map(|(name, a)| {
            let hit = IpAddr::V4(a.v4) == dst || IpAddr::V6(a.v6) == dst;
            hit.then(|| {
                let v6 = dst.is_ipv6();
                let real = a.real.iter().find(|r| r.is_ipv6() == v6).copied();
                (name.clone(), real)
            })
        })
    }

    async fn prepare(&self, name: String, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), String> {
        let (view, patterns, overlay) = {
            let g = self.0.view.read().unwrap_or_else(|e| e.into_inner());
            let Some((view, patterns, _, overlay)) = g.as_ref() else {
                return Err("no policy yet".into());
            };
            (view.clone(), patterns.clone(), *overlay)
        };
        let _ = view;
        let n = patterns
            .owner(&name)
            .ok_or_else(|| format!("no resource owns `{name}` any more"))?;
        let peer = n
            .peer
            .clone()
            .ok_or_else(|| format!("no connector carries the network of `{}`", n.pattern))?;
        let overlay =
            overlay.ok_or("the device has no IPv4 tunnel address for the control channel")?;
        for net in [IpNet::from(IpAddr::V4(v4)), IpNet::from(IpAddr::V6(v6))] {
            if !self.0.tunnel.add_route(&peer, net) {
                return Err(format!("connector `{peer}` is not a tunnel peer"));
            }
        }
        let id = self
            .0
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = serde_json::to_vec(&Request {
            id,
            name: name.clone(),
            v4,
            v6,
        })
        .map_err(|e| e.to_string())?;
        let (tx, mut rx) = oneshot::channel();
        lock(&self.0.pending).insert(id, tx);
        let mut reply = None;
        for _ in 0..ATTEMPTS {
            if !self.0.tunnel.send(&peer, overlay, &req) {
                tracing::debug!(%peer, "control message not sent (no session yet)");
            }
            match tokio::time::timeout(RETRY, &mut rx).await {
                Ok(Ok(r)) => {
                    reply = Some(r);
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
        lock(&self.0.pending).remove(&id);
        let reply = reply.ok_or_else(|| format!("connector `{peer}` did not answer"))?;
        if let Some(e) = reply.error {
            return Err(format!("connector `{peer}`: {e}"));
        }
        let real: Vec<IpAddr> = reply
            .v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(reply.v6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        lock(&self.0.answered).insert(name.clone(), Answered { v4, v6, real });
        let (done, wait) = oneshot::channel();
        self.0
            .reapply
            .send(done)
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        wait.await
            .map_err(|_| "the agent is stopping".to_string())?
            .map_err(|e| format!("writing the proxy addresses: {e}"))?;
        tracing::info!(name = %name, %v4, %v6, connector = %peer, resolved = ?reply.v4.iter().map(ToString::to_string).chain(reply.v6.iter().map(ToString::to_string)).collect::<Vec<_>>(), "name ready");
        Ok(())
    }
}

impl Names for DeviceNames {
    fn lookup(&self, qname: &Name) -> Option<Matched> {
        let text = qname.to_ascii();
        let name = trim(&text);
        let g = self.0.view.read().unwrap_or_else(|e| e.into_inner());
        let (view, patterns, class, _) = g.as_ref()?;
        let n = patterns.owner(name)?;
        let class = (*class)?;
        if n.peer.is_none() || !may_reach(view, class, n, crate::writer::unix_now()) {
            return None;
        }
        Some(Matched {
            resource: n.pattern.clone(),
            pattern: n.pattern.clone(),
        })
    }
}

impl Intent for DeviceNames {
    fn prepare(&self, name: &str, _m: &Matched, v4: Ipv4Addr, v6: Ipv6Addr) -> PrepareFuture<'_> {
        let name = trim(name).to_string();
        Box::pin(self.prepare(name, v4, v6))
    }
}

impl ApplyHook for DeviceNames {
    fn extra_atoms(&self, view: &HostView) -> Vec<policy_compiler::DstEntry> {
        let answered = lock(&self.0.answered);
        let patterns = Patterns::new(view);
        let mut out = Vec::with_capacity(answered.len() * 2);
        for (name, a) in answered.iter() {
            let Some(n) = patterns.owner(name) else {
                continue;
            };
            for (prefix, atom) in [
                (IpNet::from(IpAddr::V4(a.v4)), n.v4),
                (IpNet::from(IpAddr::V6(a.v6)), n.v6),
            ] {
                out.push(policy_compiler::DstEntry {
                    prefix,
                    atom,
                    default_verdict: n.default_verdict,
                    default_rule: n.default_rule,
                });
            }
        }
        out
    }

    fn before_flip(&self, view: &HostView, _slot: u8) -> Result<()> {
        self.set_view(view);
        Ok(())
    }
}

/// The stub's configuration from `[names]`: listening on the device's first IPv4 tunnel
/// address (port 53) unless told otherwise, forwarding to resolv.conf's nameservers.
pub fn stub_config(cfg: &NamesConfig, view: &HostView) -> Result<gateway_dns::Config> {
    let listen = if cfg.listen.is_empty() {
        let v4 = view
            .tunnel_addresses
            .iter()
            .find(|a| a.is_ipv4())
            .context("[names] has no `listen` and the device has no IPv4 tunnel address")?;
        vec![SocketAddr::new(*v4, 53)]
    } else {
        cfg.listen.clone()
    };
    let upstreams = upstreams(cfg, &listen)?;
    let mut c = gateway_dns::Config::new(listen, upstreams, cfg.proxy_v6);
    c.v4_prefix = cfg.proxy_v4;
    c.pool_file = Some(cfg.pool_file.clone());
    Ok(c)
}

fn upstreams(cfg: &NamesConfig, own: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    let list = if cfg.upstreams.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        gateway_dns::nameservers(&text)
            .into_iter()
            .filter(|u| !own.iter().any(|o| o.ip() == u.ip()))
            .collect()
    } else {
        cfg.upstreams.clone()
    };
    if list.is_empty() {
        bail!("[names] has no `upstreams` and /etc/resolv.conf names no other nameserver");
    }
    Ok(list)
}

/// Proxy space must stay out of the view's protected space: a proxy address there would
/// be decided as that space's atom.
pub fn check_proxy_space(cfg: &NamesConfig, view: &HostView) -> Result<()> {
    let v4 = IpNet::V4(cfg.proxy_v4);
    let v6 = IpNet::V6(cfg.proxy_v6);
    if let Some(p) = view
        .protected
        .iter()
        .find(|p| p.contains(&v4) || v4.contains(*p) || p.contains(&v6) || v6.contains(*p))
    {
        bail!(
            "[names] proxy space {} / {} overlaps protected space {p}; choose proxy \
             prefixes outside every remote network",
            cfg.proxy_v4,
            cfg.proxy_v6
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Connector

/// The connector's `NAMES` map, as the agent writes it.
pub trait KernelNames: Send {
    fn set(
        &mut self,
        device: IpAddr,
        proxy: IpAddr,
        real: IpAddr,
        atoms: [AtomValue; 2],
    ) -> Result<()>;
    fn remove(&mut self, device: IpAddr, proxy: IpAddr) -> Result<()>;
    /// Rewrites the atom of key slot `slot` only (the slot being made active).
    fn set_slot(&mut self, slot: u8, device: IpAddr, proxy: IpAddr, atom: AtomValue) -> Result<()>;
}

/// One translation the connector holds.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    real: IpAddr,
}

struct Resolution {
    addrs: gateway_dns::Resolved,
    until: Instant,
}

struct ConnectorState {
    kernel: Mutex<Box<dyn KernelNames>>,
    view: RwLock<Option<(Arc<HostView>, Arc<Patterns>)>>,
    entries: Mutex<HashMap<(IpAddr, IpAddr), Entry>>,
    resolved: Mutex<HashMap<String, Resolution>>,
    resolver: gateway_dns::ResolverConfig,
    tunnel: Arc<crate::tunnel::Tunnel>,
}

/// The connector's side: answers devices' requests and keeps `NAMES` current.
#[derive(Clone)]
pub struct ConnectorNames(Arc<ConnectorState>);

impl ConnectorNames {
    pub fn new(
        cfg: &NamesConfig,
        kernel: Box<dyn KernelNames>,
        tunnel: Arc<crate::tunnel::Tunnel>,
    ) -> Result<ConnectorNames> {
        let mut resolver = gateway_dns::ResolverConfig::new(upstreams(cfg, &[])?);
        resolver.min_ttl = Duration::from_secs(cfg.min_ttl_secs);
        resolver.max_ttl = Duration::from_secs(cfg.max_ttl_secs);
        Ok(ConnectorNames(Arc::new(ConnectorState {
            kernel: Mutex::new(kernel),
            view: RwLock::new(None),
            entries: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            resolver,
            tunnel,
        })))
    }

    fn set_view(&self, view: &HostView) {
        *self.0.view.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::new(view.clone()), Arc::new(Patterns::new(view))));
    }

    /// For connection logs: the name (device, proxy) stands for and its real address.
    pub fn name_of(&self, device: IpAddr, proxy: IpAddr) -> Option<(String, Option<IpAddr>)> {
        lock(&self.0.entries)
            .get(&(device, proxy))
            .map(|e| (e.name.clone(), Some(e.real)))
    }

    /// A device's request: answered on the control channel, whatever the outcome.
    pub async fn on_control(&self, msg: ControlMessage) {
        let Ok(req) = serde_json::from_slice::<Request>(&msg.payload) else {
            tracing::warn!(peer = %msg.peer, "a control message that is no name request");
            return;
        };
        let IpAddr::V4(overlay) = msg.from else {
            return;
        };
        let id = req.id;
        let reply = match self.serve(msg.from, &req).await {
            Ok(r) => Reply {
                id,
                v4: r.v4,
                v6: r.v6,
                ttl_secs: r.ttl.as_secs(),
                error: None,
            },
            Err(e) => {
                tracing::warn!(device = %msg.peer, name = %req.name, "name request refused: {e:#}");
                Reply {
                    id,
                    v4: Vec::new(),
                    v6: Vec::new(),
                    ttl_secs: 0,
                    error: Some(format!("{e:#}")),
                }
            }
        };
        let Ok(bytes) = serde_json::to_vec(&reply) else {
            return;
        };
        self.0
            .tunnel
            .send_control(&msg.peer, control::Direction::ToDevice, overlay, &bytes);
    }

    async fn serve(&self, device: IpAddr, req: &Request) -> Result<gateway_dns::Resolved> {
        let name = policy_compiler::names::parse_name(trim(&req.name))
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        let (view, patterns) = self
            .0
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .context("no policy yet")?;
        let n = patterns
            .owner(&name)
            .with_context(|| format!("no resource of this connector owns `{name}`"))?
            .clone();
        let class = class_of(&view, device).context("the sender is no principal here")?;
        if !may_reach(&view, class, &n, crate::writer::unix_now()) {
            bail!("the device may not reach `{}`", n.pattern);
        }
        for p in [IpAddr::V4(req.v4), IpAddr::V6(req.v6)] {
            if view.protected.iter().any(|net| net.contains(&p)) || p.is_unspecified() {
                bail!("proxy address {p} is inside protected space");
            }
        }
        let r = self.resolution(&name).await?;
        // The name's pattern must match the name asked (it does: `owner` matched it); the
        // real addresses are whatever the resolver says, decided by the name's atoms.
        // The kernel keys a translation by the packet's source: each of the device's own
        // addresses of the proxy address's family.
        let principal = view
            .sources
            .iter()
            .find(|s| s.addr == device)
            .map(|s| s.principal);
        let own: Vec<IpAddr> = view
            .sources
            .iter()
            .filter(|s| Some(s.principal) == principal)
            .map(|s| s.addr)
            .collect();
        let mut kernel = lock(&self.0.kernel);
        let mut entries = lock(&self.0.entries);
        for (proxy, v6) in [(IpAddr::V4(req.v4), false), (IpAddr::V6(req.v6), true)] {
            let atoms = [atom_value(&n, v6); 2];
            for &dev in own.iter().filter(|a| a.is_ipv6() == v6) {
                match r.first(v6) {
                    Some(real) => {
                        kernel.set(dev, proxy, real, atoms)?;
                        entries.insert(
                            (dev, proxy),
                            Entry {
                                name: name.clone(),
                                real,
                            },
                        );
                    }
                    None => {
                        if entries.remove(&(dev, proxy)).is_some() {
                            kernel.remove(dev, proxy)?;
                        }
                    }
                }
            }
        }
        Ok(r)
    }

    async fn resolution(&self, name: &str) -> Result<gateway_dns::Resolved> {
        if let Some(r) = lock(&self.0.resolved).get(name)
            && r.until > Instant::now()
        {
            return Ok(r.addrs.clone());
        }
        let addrs = gateway_dns::resolve(&self.0.resolver, &format!("{name}."))
            .await
            .with_context(|| format!("resolving `{name}`"))?;
        lock(&self.0.resolved).insert(
            name.to_string(),
            Resolution {
                addrs: addrs.clone(),
                until: Instant::now() + addrs.ttl,
            },
        );
        Ok(addrs)
    }

    /// Renews resolutions whose TTL ran out and moves their entries to the new addresses
    /// (new flows only: open ones keep theirs). Runs until the agent stops.
    pub async fn renew(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let due: Vec<String> = {
                let now = Instant::now();
                let entries = lock(&self.0.entries);
                let mut names: Vec<String> = entries.values().map(|e| e.name.clone()).collect();
                names.sort();
                names.dedup();
                let resolved = lock(&self.0.resolved);
                names
                    .into_iter()
                    .filter(|n| resolved.get(n).is_none_or(|r| r.until <= now))
                    .collect()
            };
            for name in due {
                let addrs = match self.resolution(&name).await {
                    Ok(a) => a,
                    Err(e) => {
                        // The last answer stays in force; asked again on the next tick.
                        tracing::warn!(name = %name, "renewing a resolution failed: {e:#}");
                        continue;
                    }
                };
                let view = self
                    .0
                    .view
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let Some((_, patterns)) = view else { continue };
                let Some(n) = patterns.owner(&name).cloned() else {
                    continue;
                };
                let mut kernel = lock(&self.0.kernel);
                let mut entries = lock(&self.0.entries);
                for ((device, proxy), e) in entries.iter_mut().filter(|(_, e)| e.name == name) {
                    let v6 = proxy.is_ipv6();
                    if let Some(real) = addrs.first(v6)
                        && real != e.real
                    {
                        match kernel.set(*device, *proxy, real, [atom_value(&n, v6); 2]) {
                            Ok(()) => {
                                tracing::info!(name = %name, device = %device, old = %e.real, new = %real, "name re-resolved: new flows go to the new address");
                                e.real = real;
                            }
                            Err(err) => {
                                tracing::error!(name = %name, "updating a translation: {err:#}")
                            }
                        }
                    }
                }
            }
        }
    }
}

impl ApplyHook for ConnectorNames {
    fn extra_atoms(&self, _view: &HostView) -> Vec<policy_compiler::DstEntry> {
        Vec::new()
    }

    /// Every entry gets the new view's atom of its name in the slot about to become active
    /// (the active slot's atom stays the old view's until the flip); an entry whose name
    /// lost its pattern, or whose device lost its grant, is removed.
    fn before_flip(&self, view: &HostView, slot: u8) -> Result<()> {
        let patterns = Patterns::new(view);
        let now = crate::writer::unix_now();
        let mut kernel = lock(&self.0.kernel);
        let mut entries = lock(&self.0.entries);
        let mut gone = Vec::new();
        for ((device, proxy), e) in entries.iter() {
            let keep = patterns
                .owner(&e.name)
                .filter(|n| class_of(view, *device).is_some_and(|c| may_reach(view, c, n, now)));
            match keep {
                Some(n) => {
                    kernel.set_slot(slot, *device, *proxy, atom_value(n, proxy.is_ipv6()))?
                }
                None => gone.push((*device, *proxy)),
            }
        }
        for k in gone {
            kernel.remove(k.0, k.1)?;
            entries.remove(&k);
        }
        drop(entries);
        drop(kernel);
        self.set_view(view);
        Ok(())
    }
}

/// Which side this host plays.
pub fn role_has_stub(role: Role, cfg: Option<&NamesConfig>) -> bool {
    role == Role::Device && cfg.is_some()
}

// ---------------------------------------------------------------------------------------
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

/// The connector's `NAMES` map, opened from its pin (a second handle beside the run
/// loop's, which the flow reaper uses). Entries a previous run left are removed: their
/// atoms belong to that run's policy, and their names are unknown to this one. Devices ask
/// again with their next query for the name (the stub prepares a name again after 30 s).
pub fn kernel_names(maps_dir: &std::path::Path) -> Result<Box<dyn KernelNames>> {
    let mut m = crate::names_map::NameMaps::from_pins(maps_dir)?;
    let stale = m.entries()?;
    for (device, proxy, _, _) in &stale {
        m.remove(*device, *proxy)?;
    }
    if !stale.is_empty() {
        tracing::info!(
            entries = stale.len(),
            "removed the previous run's name translations; devices ask again"
        );
    }
    Ok(Box::new(m))
}

impl KernelNames for crate::names_map::NameMaps {
    fn set(
        &mut self,
        device: IpAddr,
        proxy: IpAddr,
        real: IpAddr,
        atoms: [AtomValue; 2],
    ) -> Result<()> {
        crate::names_map::NameMaps::set(self, device, proxy, real, atoms)
    }
    fn remove(&mut self, device: IpAddr, proxy: IpAddr) -> Result<()> {
        crate::names_map::NameMaps::remove(self, device, proxy).map(|_| ())
    }
    fn set_slot(&mut self, slot: u8, device: IpAddr, proxy: IpAddr, atom: AtomValue) -> Result<()> {
        let Some((real, mut atoms)) = self.get(device, proxy)? else {
            return Ok(());
        };
        atoms[usize::from(slot & 1)] = atom;
        crate::names_map::NameMaps::set(self, device, proxy, real, atoms)
    }
}
