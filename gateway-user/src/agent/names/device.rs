//! The device's side of DNS resources (see the parent module).

use super::*;

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
        let started = Instant::now();
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
        let asked = Instant::now();
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
        let connector_ms = asked.elapsed().as_secs_f64() * 1e3;
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
        tracing::info!(
            name = %name,
            %v4,
            %v6,
            connector = %peer,
            resolved = ?reply.v4.iter().map(ToString::to_string).chain(reply.v6.iter().map(ToString::to_string)).collect::<Vec<_>>(),
            connector_ms = format!("{connector_ms:.2}"),
            resolve_ms = format!("{:.2}", reply.resolve_ms),
            total_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1e3),
            "name ready"
        );
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

pub(super) fn upstreams(cfg: &NamesConfig, own: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
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
