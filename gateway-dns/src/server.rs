//! The stub: UDP and TCP listeners, proxy answers, the hook, forwarding.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at};
use tracing::{debug, warn};

use crate::pool::{Alloc, Pool};
use crate::wire::{self, Incoming};
use crate::{Config, Intent, Matched, Names};

/// Counters of what the stub did since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `A`/`AAAA` queries answered with a proxy address.
    pub answered: u64,
    /// Other types for names the device may reach, answered NOERROR without records.
    pub nodata: u64,
    /// Queries forwarded upstream whose answer was relayed.
    pub forwarded: u64,
    /// SERVFAIL answers (hook failed or timed out, pool exhausted, no upstream answered, overload).
    pub servfail: u64,
    /// FORMERR answers (unparseable after the header, not exactly one question), and BADVERS
    /// (an EDNS version other than 0 in a query for a name the device may reach).
    pub formerr: u64,
    /// NOTIMP answers (opcode other than QUERY).
    pub notimp: u64,
    /// Messages not answered (header unreadable, QR set, bad TCP length, connection limit).
    pub dropped: u64,
    /// An upstream did not answer within `upstream_timeout`.
    pub upstream_timeouts: u64,
    /// An upstream refused or failed (ICMP unreachable, TCP reset...).
    pub upstream_errors: u64,
    /// Queries answered SERVFAIL because `max_inflight` queries were already waiting.
    pub overloaded: u64,
    /// Runs of the [`Intent`] hook.
    pub prepares: u64,
    /// Runs of the hook that failed or timed out.
    pub prepare_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    answered: AtomicU64,
    nodata: AtomicU64,
    forwarded: AtomicU64,
    servfail: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    dropped: AtomicU64,
    upstream_timeouts: AtomicU64,
    upstream_errors: AtomicU64,
    overloaded: AtomicU64,
    prepares: AtomicU64,
    prepare_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

type PrepResult = Option<Result<(), String>>;

enum Prep {
    Ready {
        at: Instant,
        matched: Matched,
        v4: Ipv4Addr,
    },
    Pending {
        id: u64,
        matched: Matched,
        v4: Ipv4Addr,
        rx: watch::Receiver<PrepResult>,
    },
}

struct Inner {
    cfg: Config,
    names: RwLock<Arc<dyn Names>>,
    intent: Arc<dyn Intent>,
    pool: Arc<Pool>,
    prep: Mutex<HashMap<String, Prep>>,
    next_prep: AtomicU64,
    counters: Counters,
    inflight: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    ttl: u32,
}

/// What a query needs after the part that never waits.
enum Step {
    Reply(Vec<u8>),
    Drop,
    Forward {
        msg: Box<Message>,
        raw: Vec<u8>,
    },
    Prepare {
        msg: Box<Message>,
        name: String,
        matched: Matched,
        alloc: Alloc,
    },
}

/// Ends [`Stub::run`].
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Stops the listeners; `run` returns.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// The stub resolver. See the crate docs.
pub struct Stub {
    inner: Arc<Inner>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<Arc<TcpListener>>,
    addrs: Vec<SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Stub {
    /// Validates `config`, loads the pool file, and binds UDP and TCP on every listen address
    /// (with port 0, both on the same free port).
    pub async fn bind(
        config: Config,
        names: Arc<dyn Names>,
        intent: Arc<dyn Intent>,
    ) -> Result<Stub> {
        config.validate()?;
        let pool = Arc::new(Pool::new(
            config.v4_prefix,
            config.v6_prefix,
            config.pool_file.clone(),
        )?);
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut addrs = Vec::new();
        for &want in &config.listen {
            let mut attempt = 0;
            let (u, t) = loop {
                attempt += 1;
                let u = UdpSocket::bind(want)
                    .await
                    .with_context(|| format!("dns stub: binding UDP {want}"))?;
                let actual = u.local_addr()?;
                match TcpListener::bind(actual).await {
                    Ok(t) => break (u, t),
                    Err(_) if want.port() == 0 && attempt < 10 => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("dns stub: binding TCP {actual}"));
                    }
                }
            };
            addrs.push(u.local_addr()?);
            udp.push(Arc::new(u));
            tcp.push(Arc::new(t));
        }
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        let inner = Arc::new(Inner {
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            tcp_conns: Arc::new(Semaphore::new(config.max_tcp_connections)),
            cfg: config,
            names: RwLock::new(names),
            intent,
            pool,
            prep: Mutex::new(HashMap::new()),
            next_prep: AtomicU64::new(1),
            counters: Counters::default(),
            ttl,
        });
        let (tx, _) = watch::channel(false);
        Ok(Stub {
            inner,
            udp,
            tcp,
            addrs,
            shutdown: Arc::new(tx),
        })
    }

    /// The addresses the stub listens on (UDP and TCP each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The proxy address pool (for [`Pool::name_of`] in logs).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.inner.pool
    }

    /// Replaces the names the device may reach (policy updates). Takes effect for the next query.
    pub fn set_names(&self, names: Arc<dyn Names>) {
        *self.inner.names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            answered: g(&c.answered),
            nodata: g(&c.nodata),
            forwarded: g(&c.forwarded),
            servfail: g(&c.servfail),
            formerr: g(&c.formerr),
            notimp: g(&c.notimp),
            dropped: g(&c.dropped),
            upstream_timeouts: g(&c.upstream_timeouts),
            upstream_errors: g(&c.upstream_errors),
            overloaded: g(&c.overloaded),
            prepares: g(&c.prepares),
            prepare_failures: g(&c.prepare_failures),
        }
    }

    /// A handle that ends [`Stub::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until [`ShutdownHandle::shutdown`].
    pub async fn run(&self) -> Result<()> {
        let mut rx = self.shutdown.subscribe();
        let mut set = JoinSet::new();
        for s in &self.udp {
            set.spawn(udp_loop(self.inner.clone(), s.clone()));
        }
        for l in &self.tcp {
            set.spawn(tcp_loop(self.inner.clone(), l.clone()));
        }
        let _ = rx.wait_for(|stop| *stop).await;
        set.abort_all();
        while set.join_next().await.is_some() {}
        Ok(())
    }
}

async fn udp_loop(inner: Arc<Inner>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "dns stub: UDP receive error");
                continue;
            }
        };
        let reply = match inner.step(&buf[..n]) {
            Step::Drop => None,
            Step::Reply(b) => Some(b),
            step => match inner.inflight.clone().try_acquire_owned() {
                Ok(permit) => {
                    let inner = inner.clone();
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        if let Some(b) = inner.finish(step, true, permit).await {
                            let _ = sock.send_to(&b, peer).await;
                        }
                    });
                    None
                }
                Err(_) => inner.overloaded(step, true),
            },
        };
        if let Some(b) = reply
            && let Err(e) = sock.send_to(&b, peer).await
        {
            debug!(error = %e, %peer, "dns stub: UDP send error");
        }
    }
}

async fn tcp_loop(inner: Arc<Inner>, listener: Arc<TcpListener>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let stream = match acc {
                    Ok((s, _)) => s,
                    Err(e) => {
                        debug!(error = %e, "dns stub: TCP accept error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                match inner.tcp_conns.clone().try_acquire_owned() {
                    Ok(p) => {
                        conns.spawn(tcp_conn(inner.clone(), stream, p));
                    }
                    Err(_) => bump(&inner.counters.dropped),
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(inner: Arc<Inner>, mut s: TcpStream, _conn: OwnedSemaphorePermit) {
    let idle = inner.cfg.tcp_idle_timeout;
    loop {
        let Ok(Ok(len)) = timeout(idle, s.read_u16()).await else {
            return;
        };
        let len = usize::from(len);
        if len < 12 || len > inner.cfg.tcp_max_message {
            bump(&inner.counters.dropped);
            return;
        }
        let mut buf = vec![0u8; len];
        let Ok(Ok(_)) = timeout(idle, s.read_exact(&mut buf)).await else {
            return;
        };
        let reply = match inner.step(&buf) {
            Step::Drop => None,
            Step::Reply(b) => Some(b),
            step => match inner.inflight.clone().try_acquire_owned() {
                Ok(permit) => inner.clone().finish(step, false, permit).await,
                Err(_) => inner.overloaded(step, false),
            },
        };
        if let Some(b) = reply {
            let Ok(blen) = u16::try_from(b.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(b.len() + 2);
            out.extend_from_slice(&blen.to_be_bytes());
            out.extend_from_slice(&b);
            let Ok(Ok(())) = timeout(idle, s.write_all(&out)).await else {
                return;
            };
        }
    }
}

impl Inner {
    fn names(&self) -> Arc<dyn Names> {
        self.names.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn servfail(&self, msg: &Message, udp: bool) -> Vec<u8> {
        bump(&self.counters.servfail);
        wire::response(
            msg,
            ResponseCode::ServFail,
            Vec::new(),
            udp,
            self.cfg.edns_payload,
        )
    }

    fn overloaded(&self, step: Step, udp: bool) -> Option<Vec<u8>> {
        match step {
            Step::Forward { msg, .. } | Step::Prepare { msg, .. } => {
                bump(&self.counters.overloaded);
                Some(self.servfail(&msg, udp))
            }
            Step::Reply(b) => Some(b),
            Step::Drop => None,
        }
    }

    fn proxy_answer(&self, msg: &Message, v4: Ipv4Addr, v6: Ipv6Addr, udp: bool) -> Vec<u8> {
        bump(&self.counters.answered);
        let records = wire::proxy_records(&msg.queries()[0], self.ttl, v4, v6);
        wire::response(
            msg,
            ResponseCode::NoError,
            records,
            udp,
            self.cfg.edns_payload,
        )
    }

    /// Everything that needs no waiting: errors, NODATA, answers for prepared names.
    fn step(&self, bytes: &[u8]) -> Step {
        let msg = match wire::read_query(bytes, self.cfg.edns_payload) {
            Incoming::Drop => {
                bump(&self.counters.dropped);
                return Step::Drop;
            }
            Incoming::Error(b, rcode) => {
                let c = &self.counters;
                bump(if rcode == ResponseCode::NotImp {
                    &c.notimp
                } else {
                    &c.formerr
                });
                return Step::Reply(b);
            }
            Incoming::Query(msg) => msg,
        };
        let q = &msg.queries()[0];
        let name = if q.query_class() == DNSClass::IN {
            wire::canonical(q.name())
        } else {
            None
        };
        let matched = name
            .as_ref()
            .and_then(|_| self.names().lookup(&q.name().to_lowercase()));
        let (Some(name), Some(matched)) = (name, matched) else {
            return Step::Forward {
                msg,
                raw: bytes.to_vec(),
            };
        };
        // RFC 6891: an EDNS version the stub does not speak (it speaks 0) gets BADVERS.
        if msg.extensions().as_ref().is_some_and(|e| e.version() > 0) {
            bump(&self.counters.formerr);
            let b = wire::response(
                &msg,
                ResponseCode::BADVERS,
                Vec::new(),
                false,
                self.cfg.edns_payload,
            );
            return Step::Reply(b);
        }
        if !matches!(q.query_type(), RecordType::A | RecordType::AAAA) {
            bump(&self.counters.nodata);
            let b = wire::response(
                &msg,
                ResponseCode::NoError,
                Vec::new(),
                false,
                self.cfg.edns_payload,
            );
            return Step::Reply(b);
        }
        let alloc = match self.pool.get_or_alloc(&name) {
            Ok(a) => a,
            Err(e) => {
                warn!(name = %name, error = %e,
                    "dns stub: no proxy address for a name the device may reach; answering SERVFAIL");
                return Step::Reply(self.servfail(&msg, false));
            }
        };
        if self.fresh(&name, &matched, alloc.v4) {
            // One A or AAAA record with a name of at most 255 bytes always fits 512 bytes;
            // `response` checks (and sets TC) anyway, with the UDP limit also used for TCP here.
            return Step::Reply(self.proxy_answer(&msg, alloc.v4, alloc.v6, true));
        }
        Step::Prepare {
            msg,
            name,
            matched,
            alloc,
        }
    }

    fn fresh(&self, name: &str, matched: &Matched, v4: Ipv4Addr) -> bool {
        let prep = self.prep.lock().unwrap_or_else(|e| e.into_inner());
        matches!(prep.get(name), Some(Prep::Ready { at, matched: m, v4: a })
            if m == matched && *a == v4 && at.elapsed() < self.cfg.reprepare_after)
    }

    /// The part that waits: forwarding, or the hook before a proxy answer.
    async fn finish(
        self: Arc<Self>,
        step: Step,
        udp: bool,
        _permit: OwnedSemaphorePermit,
    ) -> Option<Vec<u8>> {
        match step {
            Step::Reply(b) => Some(b),
            Step::Drop => None,
            Step::Forward { msg, raw } => match self.forward(&msg, &raw, udp).await {
                Some(b) => {
                    bump(&self.counters.forwarded);
                    Some(b)
                }
                None => Some(self.servfail(&msg, udp)),
            },
            Step::Prepare {
                msg,
                name,
                matched,
                alloc,
            } => match self.clone().ensure_prepared(name, matched, alloc).await {
                Ok(()) => Some(self.proxy_answer(&msg, alloc.v4, alloc.v6, udp)),
                Err(_) => Some(self.servfail(&msg, udp)),
            },
        }
    }

    async fn ensure_prepared(
        self: Arc<Self>,
        name: String,
        matched: Matched,
        alloc: Alloc,
    ) -> Result<(), String> {
        let mut rx = {
            let mut prep = self.prep.lock().unwrap_or_else(|e| e.into_inner());
            match prep.get(&name) {
                Some(Prep::Ready { at, matched: m, v4 })
                    if *m == matched
                        && *v4 == alloc.v4
                        && at.elapsed() < self.cfg.reprepare_after =>
                {
                    return Ok(());
                }
                // A run whose task ended without a result (the hook panicked) is stale.
                Some(Prep::Pending {
                    matched: m, v4, rx, ..
                }) if *m == matched && *v4 == alloc.v4 && rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let id = self.next_prep.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    let pending = Prep::Pending {
                        id,
                        matched: matched.clone(),
                        v4: alloc.v4,
                        rx: rx.clone(),
                    };
                    prep.insert(name.clone(), pending);
                    tokio::spawn(self.clone().run_prepare(id, name, matched, alloc, tx));
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Err("no result".to_owned())),
            Err(_) => Err("the prepare task ended without a result".to_owned()),
        }
    }

    async fn run_prepare(
        self: Arc<Self>,
        id: u64,
        name: String,
        matched: Matched,
        alloc: Alloc,
        tx: watch::Sender<PrepResult>,
    ) {
        bump(&self.counters.prepares);
        let limit = self.cfg.prepare_timeout;
        let work = async {
            self.pool
                .persist_through(alloc.generation)
                .await
                .map_err(|e| format!("{e:#}"))?;
            self.intent
                .prepare(&name, &matched, alloc.v4, alloc.v6)
                .await
        };
        let res = match timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {limit:?}")),
        };
        {
            let mut prep = self.prep.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(prep.get(&name), Some(Prep::Pending { id: p, .. }) if *p == id) {
                if res.is_ok() {
                    let ready = Prep::Ready {
                        at: Instant::now(),
                        matched: matched.clone(),
                        v4: alloc.v4,
                    };
                    prep.insert(name.clone(), ready);
                } else {
                    prep.remove(&name);
                }
            }
        }
        if let Err(e) = &res {
            bump(&self.counters.prepare_failures);
            warn!(name = %name, resource = %matched.resource, v4 = %alloc.v4, v6 = %alloc.v6, error = %e,
                "dns stub: preparing a proxy address failed; answering SERVFAIL");
        }
        tx.send_replace(Some(res));
    }

    /// The first upstream answer to `raw` (sent unchanged), tried in order; `None`: none answered.
    async fn forward(&self, msg: &Message, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
        let q = &msg.queries()[0];
        for &up in &self.cfg.upstreams {
            let got = if udp {
                self.forward_udp(up, raw, msg.id(), q).await
            } else {
                self.forward_tcp(up, raw).await
            };
            match got {
                Ok(Some(b)) if !udp && !wire::is_response_to(&b, msg.id(), q) => {
                    bump(&self.counters.upstream_errors);
                    debug!(%up, "dns stub: upstream TCP answer does not match the query");
                }
                Ok(Some(b)) => return Some(b),
                Ok(None) => {
                    bump(&self.counters.upstream_timeouts);
                    debug!(%up, name = %q.name(), "dns stub: upstream timed out");
                }
                Err(e) => {
                    bump(&self.counters.upstream_errors);
                    debug!(%up, name = %q.name(), error = %e, "dns stub: upstream failed");
                }
            }
        }
        None
    }

    /// One ephemeral socket per query, connected to `up`: only `up`'s datagrams are read, and only
    /// one with the query's ID and question is the answer. `Ok(None)`: timed out.
    async fn forward_udp(
        &self,
        up: SocketAddr,
        raw: &[u8],
        id: u16,
        q: &hickory_proto::op::Query,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + self.cfg.upstream_timeout;
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).await?;
        sock.connect(up).await?;
        sock.send(raw).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            match timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(n)) if wire::is_response_to(&buf[..n], id, q) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Ok(Ok(_)) => {
                    debug!(%up, "dns stub: ignoring an upstream datagram that does not answer the query")
                }
            }
        }
    }

    /// A new TCP connection per query, length-prefixed both ways. `Ok(None)`: timed out.
    async fn forward_tcp(&self, up: SocketAddr, raw: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let work = async {
            let mut s = TcpStream::connect(up).await?;
            let len = u16::try_from(raw.len()).map_err(std::io::Error::other)?;
            let mut out = Vec::with_capacity(raw.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(raw);
            s.write_all(&out).await?;
            let n = usize::from(s.read_u16().await?);
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await?;
            Ok(buf)
        };
        match timeout(self.cfg.upstream_timeout, work).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}
