//! The connector's side of DNS resources (see the parent module).

use super::device::upstreams;
use super::*;

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
    /// When the device last asked for the name.
    asked: Instant,
}

/// An entry the device has not asked for in this long is removed (its open flows keep
/// their translation until the next policy change decides them again); the device asks
/// again with its next query after 30 s.
const IDLE: Duration = Duration::from_secs(3600);

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
    /// Requests being served at once (each may wait for a resolution); beyond, refused.
    inflight: Arc<tokio::sync::Semaphore>,
    max_per_device: usize,
    /// Refusals logged: at most one line per second, with the count of the others.
    refusals: Mutex<(Option<Instant>, u64)>,
}

/// Requests a connector serves at once, from all devices.
const MAX_INFLIGHT: usize = 64;

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
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT)),
            max_per_device: cfg.max_names_per_device,
            refusals: Mutex::new((None, 0)),
        })))
    }

    pub(super) fn set_view(&self, view: &HostView) {
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
        let served = match self.0.inflight.clone().try_acquire_owned() {
            Ok(_permit) => self.serve(msg.from, &req).await,
            Err(_) => Err(anyhow::anyhow!(
                "busy: {MAX_INFLIGHT} name requests are being served; ask again"
            )),
        };
        let reply = match served {
            Ok((r, resolve_ms)) => Reply {
                id,
                v4: r.v4,
                v6: r.v6,
                ttl_secs: r.ttl.as_secs(),
                resolve_ms,
                error: None,
            },
            Err(e) => {
                self.log_refusal(&msg.peer, &req.name, &e);
                Reply {
                    id,
                    v4: Vec::new(),
                    v6: Vec::new(),
                    ttl_secs: 0,
                    resolve_ms: 0.0,
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

    fn log_refusal(&self, device: &str, name: &str, e: &anyhow::Error) {
        let mut r = lock(&self.0.refusals);
        let now = Instant::now();
        match r.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => r.1 += 1,
            _ => {
                tracing::warn!(device = %device, name = %name, suppressed = r.1, "name request refused: {e:#}");
                *r = (Some(now), 0);
            }
        }
    }

    /// Returns the resolution and how long resolving took (0 when cached).
    async fn serve(&self, device: IpAddr, req: &Request) -> Result<(gateway_dns::Resolved, f64)> {
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
        let resolving = Instant::now();
        let (r, fresh) = self.resolution(&name).await?;
        let resolve_ms = if fresh {
            resolving.elapsed().as_secs_f64() * 1e3
        } else {
            0.0
        };
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
        // A device holds a bounded number of names (a wildcard has endless ones).
        let held = entries
            .iter()
            .filter(|((d, _), _)| own.contains(d))
            .map(|(_, e)| e.name.as_str())
            .collect::<std::collections::HashSet<_>>();
        if !held.contains(name.as_str()) && held.len() >= self.0.max_per_device {
            bail!(
                "the device holds {} names, the most this connector keeps for one device \
                 (`max_names_per_device`)",
                held.len()
            );
        }
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
                                asked: Instant::now(),
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
        Ok((r, resolve_ms))
    }

    /// The name's addresses, resolved now (`true`) or from the cache (`false`).
    async fn resolution(&self, name: &str) -> Result<(gateway_dns::Resolved, bool)> {
        if let Some(r) = lock(&self.0.resolved).get(name)
            && r.until > Instant::now()
        {
            return Ok((r.addrs.clone(), false));
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
        Ok((addrs, true))
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
            // Entries the device stopped asking for go, then resolutions no entry uses.
            {
                let mut kernel = lock(&self.0.kernel);
                let mut entries = lock(&self.0.entries);
                let idle: Vec<(IpAddr, IpAddr)> = entries
                    .iter()
                    .filter(|(_, e)| e.asked.elapsed() > IDLE)
                    .map(|(k, _)| *k)
                    .collect();
                for (device, proxy) in idle {
                    if kernel.remove(device, proxy).is_ok() {
                        entries.remove(&(device, proxy));
                    }
                }
            }
            {
                let used: std::collections::HashSet<String> = lock(&self.0.entries)
                    .values()
                    .map(|e| e.name.clone())
                    .collect();
                lock(&self.0.resolved).retain(|n, _| used.contains(n));
            }
            for name in due {
                let addrs = match self.resolution(&name).await {
                    Ok((a, _)) => a,
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
