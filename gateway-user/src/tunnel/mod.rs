//! The WireGuard tunnel between devices and connectors, userspace backend: boringtun's
//! sans-IO `noise::Tunn` per peer, one UDP socket, one TUN device.
//!
//! Packets the host sends into the tunnel interface are encrypted for the peer whose
//! allowed addresses hold their destination; datagrams from the network are decrypted by
//! the peer whose key they were made with, and written to the tunnel interface only when
//! their source address belongs to that same peer (cryptokey routing). The eBPF programs
//! on the tunnel interface then enforce the policy on the plaintext: after decryption on
//! connectors, before encryption on devices.

pub mod control;
pub mod keys;
pub mod table;
pub mod tun;

use anyhow::{Context as _, Result};
use boringtun::noise::{
    Packet, Tunn, TunnResult, errors::WireGuardError, handshake::parse_handshake_anon,
    rate_limiter::RateLimiter,
};
use boringtun::x25519::PublicKey;
use bytes::BytesMut;
use ipnet::IpNet;
use keys::KeyPair;
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use table::AllowedIps;
use tokio::{io::unix::AsyncFd, net::UdpSocket, task::JoinHandle};

/// Largest IP packet the TUN device hands over, plus WireGuard's overhead.
const BUF: usize = 65_535 + 64;
/// Handshake messages per second (all sources) before the tunnel answers initiations
/// with cookies (WireGuard's under-load mechanism, section 5.3 of the paper).
const HANDSHAKES_BEFORE_COOKIES: u64 = 1_000;
/// At most one log record per peer in this interval for packets dropped by cryptokey
/// routing; the others are counted and reported with the next record.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Control messages waiting for the agent; beyond, they are dropped (and counted).
const CONTROL_QUEUE: usize = 1024;

/// One peer as the policy gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// A device name, `service-account/key`, or a connector name.
    pub name: String,
    pub public_key: [u8; 32],
    /// Where to send until the peer is heard from (connectors); devices roam, and their
    /// endpoint is learned from authenticated packets.
    pub endpoint: Option<SocketAddr>,
    /// The peer's addresses (connector's view) or the prefixes routed through it
    /// (device's view).
    pub allowed_ips: Vec<IpNet>,
}

/// Why the tunnel dropped a packet. Each reason has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelDrop {
    /// A decrypted packet's source address does not belong to the peer that sent it.
    CryptokeyRouting,
    /// A handshake from a key that is not a peer, or a message for an unknown session.
    UnknownPeer,
    /// A packet from the host toward an address no peer serves.
    NoRoute,
    /// A packet for a peer whose address is not known yet.
    NoEndpoint,
    /// A datagram WireGuard rejected (bad MAC, replay, wrong size, expired session).
    Invalid,
    /// A handshake initiation refused under load without a valid cookie.
    UnderLoad,
    /// The socket or the TUN device had no room (a full queue).
    Congested,
}

impl TunnelDrop {
    pub const ALL: [TunnelDrop; 7] = [
        TunnelDrop::CryptokeyRouting,
        TunnelDrop::UnknownPeer,
        TunnelDrop::NoRoute,
        TunnelDrop::NoEndpoint,
        TunnelDrop::Invalid,
        TunnelDrop::UnderLoad,
        TunnelDrop::Congested,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TunnelDrop::CryptokeyRouting => "cryptokey_routing",
            TunnelDrop::UnknownPeer => "unknown_peer",
            TunnelDrop::NoRoute => "no_route",
            TunnelDrop::NoEndpoint => "no_endpoint",
            TunnelDrop::Invalid => "invalid",
            TunnelDrop::UnderLoad => "under_load",
            TunnelDrop::Congested => "congested",
        }
    }
}

/// How the tunnel runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub interface: String,
    pub listen_port: u16,
    pub mtu: u16,
    /// Seconds between keepalives (devices behind NAT); `None`: off.
    pub persistent_keepalive: Option<u16>,
    /// Accept decrypted packets whatever their source (control runs only).
    pub skip_cryptokey_routing: bool,
}

struct Peer {
    slot: u32,
    name: String,
    key: [u8; 32],
    allowed: Vec<IpNet>,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
    /// Set when the policy's endpoint changes, so a learned one does not hide it.
    configured_endpoint: Option<SocketAddr>,
    rx: AtomicU64,
    tx: AtomicU64,
    ckr_drops: AtomicU64,
    ckr_log: Mutex<(Option<Instant>, u64)>,
}

#[derive(Default)]
struct Peers {
    by_slot: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], u32>,
    allowed: AllowedIps,
    next_slot: u32,
    /// Routes added at run time ([`Tunnel::add_route`]: a device's proxy addresses), by
    /// the peer's key; kept across [`Tunnel::set_peers`] while that peer stays.
    extra: HashMap<IpNet, [u8; 32]>,
}

impl Peers {
    fn route(&self, addr: IpAddr) -> Option<Arc<Peer>> {
        self.allowed
            .lookup(addr)
            .and_then(|s| self.by_slot.get(&s).cloned())
    }
}

struct Shared {
    opts: Options,
    keys: RwLock<KeyPair>,
    limiter: RwLock<Arc<RateLimiter>>,
    peers: RwLock<Peers>,
    udp: UdpSocket,
    tun: AsyncFd<OwnedFd>,
    drops: [AtomicU64; TunnelDrop::ALL.len()],
    started: Instant,
    control: tokio::sync::mpsc::Sender<control::ControlMessage>,
    /// Which control messages this host takes ([`control`]): false, a device's (from its
    /// connectors); true, a connector's (from its devices).
    control_to_connector: std::sync::atomic::AtomicBool,
}

/// What changed when a new peer list was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

impl PeerChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

/// One peer's state, for status and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds since the last completed handshake, if there was one.
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub cryptokey_drops: u64,
}

/// A running userspace tunnel.
pub struct Tunnel {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    control_rx: Mutex<Option<tokio::sync::mpsc::Receiver<control::ControlMessage>>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("interface", &self.shared.opts.interface)
            .finish_non_exhaustive()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Tunnel {
    /// Opens the TUN device and the UDP socket and starts the packet tasks. The caller
    /// configures addresses and routes (`tun::configure_link`, `tun::sync_routes`).
    pub async fn start(opts: Options, keys: KeyPair) -> Result<Tunnel> {
        let fd = tun::open(&opts.interface)?;
        // SAFETY: the `OwnedFd` stays open and the same until the `AsyncFd` owning it is
        // dropped.
        let tun = unsafe { AsyncFd::register(fd) }
            .map_err(|e| anyhow::anyhow!("registering the TUN device with the runtime: {e}"))?;
        let udp = bind_udp(opts.listen_port).await?;
        let limiter = Arc::new(RateLimiter::new(&keys.public, HANDSHAKES_BEFORE_COOKIES));
        let (control, control_rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
        let shared = Arc::new(Shared {
            control,
            control_to_connector: std::sync::atomic::AtomicBool::new(false),
            opts,
            keys: RwLock::new(keys),
            limiter: RwLock::new(limiter),
            peers: RwLock::new(Peers::default()),
            udp,
            tun,
            drops: Default::default(),
            started: Instant::now(),
        });
        let tasks = vec![
            tokio::spawn(outbound(shared.clone())),
            tokio::spawn(inbound(shared.clone())),
            tokio::spawn(timers(shared.clone())),
        ];
        Ok(Tunnel {
            shared,
            tasks,
            control_rx: Mutex::new(Some(control_rx)),
        })
    }

    /// Which control messages this host takes: [`control::Direction::ToConnector`] on a
    /// connector, [`control::Direction::ToDevice`] (the default) on a device.
    pub fn accept_control(&self, dir: control::Direction) {
        self.shared
            .control_to_connector
            .store(dir == control::Direction::ToConnector, Relaxed);
    }

    /// The control messages peers send this host ([`control`]); the first call takes them.
    pub fn take_control(&self) -> Option<tokio::sync::mpsc::Receiver<control::ControlMessage>> {
        lock(&self.control_rx).take()
    }

    /// Sends `payload` to peer `peer` (by name) on the control channel: from `src` (a
    /// device's overlay address) to the control address, or from the control address to
    /// `dst` (a device's), as `dir` says. False when there is no such peer, no endpoint
    /// yet, or the payload is too large.
    pub fn send_control(
        &self,
        peer: &str,
        dir: control::Direction,
        overlay: std::net::Ipv4Addr,
        payload: &[u8],
    ) -> bool {
        let packet = match dir {
            control::Direction::ToConnector => {
                control::build(overlay, control::CONTROL_ADDR, payload)
            }
            control::Direction::ToDevice => control::build(control::CONTROL_ADDR, overlay, payload),
        };
        let Some(packet) = packet else {
            return false;
        };
        let Some(peer) = read(&self.shared.peers)
            .by_slot
            .values()
            .find(|p| p.name == peer)
            .cloned()
        else {
            return false;
        };
        let mut out = vec![0u8; packet.len() + 256];
        let res = lock(&peer.tunn).encapsulate(&packet, &mut out);
        let endpoint = *lock(&peer.endpoint);
        match (res, endpoint) {
            (TunnResult::WriteToNetwork(data), Some(to)) => {
                peer.tx.fetch_add(packet.len() as u64, Relaxed);
                self.shared.send(data, to);
                true
            }
            // Queued behind a handshake (the initiation went out above) or nowhere to go.
            (TunnResult::Done, Some(_)) => true,
            _ => false,
        }
    }

    /// Routes `net` to peer `peer` (by name) from now on, beside the policy's prefixes: a
    /// device's proxy addresses to the connector that resolves their name. Kept across
    /// [`Tunnel::set_peers`] while the peer stays. False when there is no such peer.
    pub fn add_route(&self, peer: &str, net: IpNet) -> bool {
        let mut peers = write(&self.shared.peers);
        let Some(p) = peers.by_slot.values().find(|p| p.name == peer).cloned() else {
            return false;
        };
        peers.extra.insert(net, p.key);
        peers.allowed.insert(net, p.slot);
        true
    }

    /// The UDP port the tunnel listens on.
    pub fn local_port(&self) -> u16 {
        self.shared.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn interface(&self) -> &str {
        &self.shared.opts.interface
    }

    pub fn public_key(&self) -> String {
        read(&self.shared.keys).public_b64()
    }

    /// Makes the peer set exactly `specs`. Peers whose key stays keep their sessions
    /// (their addresses and endpoint are updated in place); removed peers' sessions end
    /// at once.
    pub fn set_peers(&self, specs: &[PeerSpec]) -> PeerChange {
        let keys = read(&self.shared.keys).clone();
        let mut peers = write(&self.shared.peers);
        let mut change = PeerChange::default();
        let wanted: HashMap<[u8; 32], &PeerSpec> =
            specs.iter().map(|s| (s.public_key, s)).collect();
        let gone: Vec<[u8; 32]> = peers
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(slot) = peers.by_key.remove(&k)
                && let Some(p) = peers.by_slot.remove(&slot)
            {
                change.removed.push(p.name.clone());
            }
        }
        let mut by_slot = std::mem::take(&mut peers.by_slot);
        for spec in specs {
            let existing = peers.by_key.get(&spec.public_key).copied();
            match existing.and_then(|s| by_slot.get(&s).cloned()) {
                Some(p)
                    if p.allowed == spec.allowed_ips
                        && p.name == spec.name
                        && p.configured_endpoint == spec.endpoint => {}
                Some(p) => {
                    // Same key: keep the sessions, swap the rest.
                    let tunn = std::mem::replace(
                        &mut *lock(&p.tunn),
                        new_tunn(&keys, spec, p.slot, self.shared.opts.persistent_keepalive),
                    );
                    let learned = *lock(&p.endpoint);
                    let endpoint = if p.configured_endpoint != spec.endpoint {
                        spec.endpoint.or(learned)
                    } else {
                        learned
                    };
                    let peer = Arc::new(Peer {
                        slot: p.slot,
                        name: spec.name.clone(),
                        key: spec.public_key,
                        allowed: spec.allowed_ips.clone(),
                        tunn: Mutex::new(tunn),
                        endpoint: Mutex::new(endpoint),
                        configured_endpoint: spec.endpoint,
                        rx: AtomicU64::new(p.rx.load(Relaxed)),
                        tx: AtomicU64::new(p.tx.load(Relaxed)),
                        ckr_drops: AtomicU64::new(p.ckr_drops.load(Relaxed)),
                        ckr_log: Mutex::new(*lock(&p.ckr_log)),
                    });
                    by_slot.insert(p.slot, peer);
                    change.updated.push(spec.name.clone());
                }
                None => {
                    let slot = peers.next_slot;
                    // Slots are never reused while a session could still name them.
                    peers.next_slot = (peers.next_slot + 1) & 0x00ff_ffff;
                    let peer = Arc::new(Peer {
                        slot,
                        name: spec.name.clone(),
                        key: spec.public_key,
                        allowed: spec.allowed_ips.clone(),
                        tunn: Mutex::new(new_tunn(
                            &keys,
                            spec,
                            slot,
                            self.shared.opts.persistent_keepalive,
                        )),
                        endpoint: Mutex::new(spec.endpoint),
                        configured_endpoint: spec.endpoint,
                        rx: AtomicU64::new(0),
                        tx: AtomicU64::new(0),
                        ckr_drops: AtomicU64::new(0),
                        ckr_log: Mutex::new((None, 0)),
                    });
                    by_slot.insert(slot, peer);
                    peers.by_key.insert(spec.public_key, slot);
                    change.added.push(spec.name.clone());
                }
            }
        }
        peers.by_slot = by_slot;
        // In the order of `specs` (the view's: by public key), so that a prefix two peers
        // claim goes to the same one on every host and every run.
        let mut allowed = AllowedIps::default();
        for spec in specs {
            if let Some(slot) = peers.by_key.get(&spec.public_key) {
                for net in &spec.allowed_ips {
                    allowed.insert(*net, *slot);
                }
            }
        }
        let p = &mut *peers;
        let by_key = &p.by_key;
        p.extra.retain(|_, k| by_key.contains_key(k));
        for (net, k) in &peers.extra {
            if let Some(slot) = peers.by_key.get(k) {
                allowed.insert(*net, *slot);
            }
        }
        peers.allowed = allowed;
        change
    }

    /// Starts a handshake with the peer of `public_key` now (it must have an endpoint):
    /// a restarted connector reaches its devices at their last known addresses instead of
    /// waiting for them to notice that their sessions went away.
    pub fn handshake_now(&self, public_key: &[u8; 32]) -> bool {
        let peer = {
            let peers = read(&self.shared.peers);
            peers
                .by_key
                .get(public_key)
                .and_then(|s| peers.by_slot.get(s).cloned())
        };
        let Some(peer) = peer else {
            return false;
        };
        let Some(to) = *lock(&peer.endpoint) else {
            return false;
        };
        let mut out = [0u8; 256];
        let res = lock(&peer.tunn).format_handshake_initiation(&mut out, false);
        match res {
            TunnResult::WriteToNetwork(data) => {
                self.shared.send(data, to);
                true
            }
            _ => false,
        }
    }

    /// Switches to a new key: every session made under the old one ends now, and peers
    /// handshake again with the new key.
    pub fn set_key(&self, new: KeyPair) {
        let limiter = Arc::new(RateLimiter::new(&new.public, HANDSHAKES_BEFORE_COOKIES));
        *write(&self.shared.limiter) = limiter;
        *write(&self.shared.keys) = new.clone();
        let peers = read(&self.shared.peers);
        for p in peers.by_slot.values() {
            lock(&p.tunn).set_static_private(new.secret.clone(), new.public, None);
        }
    }

    /// The real (outer) address a peer's packets come from: the device's public address
    /// and port as this host sees them.
    pub fn endpoint_of(&self, overlay: IpAddr) -> Option<SocketAddr> {
        let peers = read(&self.shared.peers);
        peers.route(overlay).and_then(|p| *lock(&p.endpoint))
    }

    /// [`Tunnel::endpoint_of`] as a shareable function (for the connection logs).
    pub fn endpoint_resolver(&self) -> Arc<dyn Fn(IpAddr) -> Option<SocketAddr> + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move |overlay| {
            let peers = read(&shared.peers);
            peers.route(overlay).and_then(|p| *lock(&p.endpoint))
        })
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let peers = read(&self.shared.peers);
        let mut out: Vec<PeerStatus> = peers
            .by_slot
            .values()
            .map(|p| {
                let (last, ..) = lock(&p.tunn).stats();
                PeerStatus {
                    name: p.name.clone(),
                    public_key: keys::public_b64(&PublicKey::from(p.key)),
                    endpoint: *lock(&p.endpoint),
                    allowed_ips: p.allowed.clone(),
                    last_handshake_secs: last.map(|d| d.as_secs()),
                    rx_bytes: p.rx.load(Relaxed),
                    tx_bytes: p.tx.load(Relaxed),
                    cryptokey_drops: p.ckr_drops.load(Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Dropped packets by reason.
    pub fn drops(&self) -> Vec<(TunnelDrop, u64)> {
        TunnelDrop::ALL
            .iter()
            .map(|r| (*r, self.shared.drops[*r as usize].load(Relaxed)))
            .collect()
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }
}

fn new_tunn(keys: &KeyPair, spec: &PeerSpec, slot: u32, keepalive: Option<u16>) -> Tunn {
    Tunn::new(
        keys.secret.clone(),
        PublicKey::from(spec.public_key),
        None,
        keepalive,
        slot,
        None,
    )
}

/// Socket buffers of the tunnel's UDP socket: bursts at line rate overflow the default
/// ~200 kB before the single receiving task catches up.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

async fn bind_udp(port: u16) -> Result<UdpSocket> {
    // One dual-stack socket; hosts without IPv6 get an IPv4 one.
    let sock = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(s) => s,
        Err(_) => UdpSocket::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding the tunnel's UDP port {port}"))?,
    };
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // The FORCE variant passes the sysctl cap (root); without it the cap applies.
        if !set_sockopt(&sock, force, SOCKET_BUFFER) {
            set_sockopt(&sock, plain, SOCKET_BUFFER);
        }
    }
    Ok(sock)
}

fn set_sockopt(sock: &UdpSocket, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt on the socket's own fd with an int of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn drop_packet(&self, why: TunnelDrop) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }

    /// Sends a datagram without waiting: a full socket buffer drops it, as a congested
    /// link would.
    /// `to` as the socket must be given it: IPv4-mapped on a dual-stack socket.
    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match (self.udp.local_addr(), to) {
            (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        }
    }

    fn send(&self, data: &[u8], to: SocketAddr) {
        if self.udp.try_send_to(data, self.wire_addr(to)).is_err() {
            self.drop_packet(TunnelDrop::Congested);
        }
    }

    /// Writes one decrypted packet to the tunnel interface.
    fn write_tun(&self, packet: &[u8]) {
        // SAFETY: write(2) of a valid buffer to the TUN fd this struct owns.
        let n = unsafe {
            libc::write(
                self.tun.get_ref().as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
            )
        };
        if n < 0 {
            self.drop_packet(TunnelDrop::Congested);
        }
    }

    fn cryptokey_drop(&self, peer: &Peer, src: IpAddr) {
        self.drop_packet(TunnelDrop::CryptokeyRouting);
        peer.ckr_drops.fetch_add(1, Relaxed);
        let mut log = lock(&peer.ckr_log);
        let now = Instant::now();
        match log.0 {
            Some(last) if now.duration_since(last) < DROP_LOG_INTERVAL => log.1 += 1,
            _ => {
                tracing::warn!(
                    peer = %peer.name,
                    public_key = %keys::public_b64(&PublicKey::from(peer.key)),
                    source = %src,
                    endpoint = ?*lock(&peer.endpoint),
                    suppressed = log.1,
                    reason = TunnelDrop::CryptokeyRouting.name(),
                    "dropped a decrypted packet whose source address is not the peer's",
                );
                *log = (Some(now), 0);
            }
        }
    }
}

/// Host -> tunnel: read the TUN device, encrypt for the peer serving the destination.
async fn outbound(sh: Arc<Shared>) {
    let mut packet = BytesMut::zeroed(BUF);
    let mut out = vec![0u8; BUF];
    loop {
        let n = match read_tun(&sh, &mut packet).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reading the tunnel device failed, the tunnel stops: {e}");
                return;
            }
        };
        let pkt = &packet[..n];
        let Some(dst) = Tunn::dst_address(pkt) else {
            sh.drop_packet(TunnelDrop::Invalid);
            continue;
        };
        let Some(peer) = read(&sh.peers).route(dst) else {
            // The host's own link-local and multicast chatter on the interface (IPv6
            // router solicitations, MLD) has no peer by nature: not counted as a drop.
            if !is_local_chatter(dst) {
                sh.drop_packet(TunnelDrop::NoRoute);
            }
            continue;
        };
        let res = lock(&peer.tunn).encapsulate(pkt, &mut out);
        let endpoint = *lock(&peer.endpoint);
        match (res, endpoint) {
            (TunnResult::WriteToNetwork(data), Some(to)) => {
                peer.tx.fetch_add(n as u64, Relaxed);
                // Data waits for room in the socket (back-pressure onto the TUN queue)
                // rather than being dropped at once.
                if sh.udp.send_to(data, sh.wire_addr(to)).await.is_err() {
                    sh.drop_packet(TunnelDrop::Congested);
                }
            }
            (TunnResult::WriteToNetwork(_), None) => sh.drop_packet(TunnelDrop::NoEndpoint),
            (TunnResult::Err(_), _) => sh.drop_packet(TunnelDrop::Invalid),
            _ => {}
        }
    }
}

/// Multicast, broadcast and link-local destinations: never a peer's.
fn is_local_chatter(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_link_local(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local(),
    }
}

async fn read_tun(sh: &Shared, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = sh.tun.readable().await?;
        let res = guard.try_io(|fd| {
            // SAFETY: read(2) into a buffer of `buf.len()` bytes from the TUN fd.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Network -> host: find the peer, decrypt, check the inner source, write to the TUN.
async fn inbound(sh: Arc<Shared>) {
    let mut datagram = BytesMut::zeroed(BUF);
    let mut out = vec![0u8; BUF];
    let mut cookie = [0u8; 64];
    loop {
        let (n, from) = match sh.udp.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("receiving on the tunnel socket: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let data = &datagram[..n];
        let limiter = read(&sh.limiter).clone();
        let parsed = match limiter.verify_packet(Some(from.ip()), data, &mut cookie) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(c)) => {
                sh.drop_packet(TunnelDrop::UnderLoad);
                sh.send(c, from);
                continue;
            }
            Err(_) => {
                sh.drop_packet(TunnelDrop::Invalid);
                continue;
            }
        };
        let peer = {
            let peers = read(&sh.peers);
            let slot = match &parsed {
                Packet::HandshakeInit(init) => {
                    let keys = read(&sh.keys);
                    parse_handshake_anon(&keys.secret, &keys.public, init)
                        .ok()
                        .and_then(|h| peers.by_key.get(&h.peer_static_public).copied())
                }
                Packet::HandshakeResponse(p) => Some(p.receiver_idx >> 8),
                Packet::PacketCookieReply(p) => Some(p.receiver_idx >> 8),
                Packet::PacketData(p) => Some(p.receiver_idx >> 8),
            };
            slot.and_then(|s| peers.by_slot.get(&s).cloned())
        };
        let Some(peer) = peer else {
            sh.drop_packet(TunnelDrop::UnknownPeer);
            continue;
        };
        let mut tunn = lock(&peer.tunn);
        let res = tunn.decapsulate(Some(from.ip()), data, &mut out);
        let authenticated = !matches!(res, TunnResult::Err(_));
        if authenticated {
            // Roaming: the peer is where its last authenticated packet came from.
            *lock(&peer.endpoint) = Some(from);
        }
        match res {
            TunnResult::WriteToNetwork(reply) => {
                sh.send(reply, from);
                // Packets queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], &mut out) {
                    sh.send(p, from);
                }
            }
            TunnResult::WriteToTunnelV4(p, src) => {
                deliver(&sh, &peer, p, IpAddr::V4(src));
            }
            TunnResult::WriteToTunnelV6(p, src) => {
                deliver(&sh, &peer, p, IpAddr::V6(src));
            }
            TunnResult::Err(WireGuardError::UnderLoad) => sh.drop_packet(TunnelDrop::UnderLoad),
            TunnResult::Err(_) => sh.drop_packet(TunnelDrop::Invalid),
            TunnResult::Done => {}
        }
    }
}

/// Cryptokey routing: the source must route back to the peer that sent the packet.
/// Control packets ([`control`]) go to the agent, never to the tunnel interface.
fn deliver(sh: &Shared, peer: &Peer, packet: &[u8], src: IpAddr) {
    let owner = read(&sh.peers).allowed.lookup(src);
    if control::is_control(packet) {
        let dir = if sh.control_to_connector.load(Relaxed) {
            control::Direction::ToConnector
        } else {
            control::Direction::ToDevice
        };
        // A device's control packet must come from one of its own addresses.
        let sender_ok = dir == control::Direction::ToDevice || owner == Some(peer.slot);
        match control::parse(packet, dir) {
            Some((from, payload)) if sender_ok => {
                let msg = control::ControlMessage {
                    peer: peer.name.clone(),
                    from: IpAddr::V4(from),
                    payload: bytes::Bytes::copy_from_slice(payload),
                };
                peer.rx.fetch_add(packet.len() as u64, Relaxed);
                if sh.control.try_send(msg).is_err() {
                    sh.drop_packet(TunnelDrop::Congested);
                }
            }
            _ => sh.drop_packet(TunnelDrop::Invalid),
        }
        return;
    }
    if owner != Some(peer.slot) && !sh.opts.skip_cryptokey_routing {
        sh.cryptokey_drop(peer, src);
        return;
    }
    peer.rx.fetch_add(packet.len() as u64, Relaxed);
    sh.write_tun(packet);
}

/// Handshake retries, keepalives, session expiry; the under-load counter's window.
async fn timers(sh: Arc<Shared>) {
    let mut out = vec![0u8; 2048];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        if n.is_multiple_of(4) {
            read(&sh.limiter).reset_count();
        }
        let peers: Vec<Arc<Peer>> = read(&sh.peers).by_slot.values().cloned().collect();
        for p in peers {
            let res = lock(&p.tunn).update_timers(&mut out);
            if let TunnResult::WriteToNetwork(data) = res
                && let Some(to) = *lock(&p.endpoint)
            {
                sh.send(data, to);
            }
        }
    }
}
