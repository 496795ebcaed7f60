//! The zt-gateway controller as a library: [`Store`] (persistence: SQLite or
//! PostgreSQL) and [`State`] (the policy, per-host compiled views and generations,
//! agents, and the fan-out of view changes to connected agents), both split by aggregate (policy, agents, events,
//! audit, security) and speaking the domain types of [`model`]. The gRPC services in
//! [`service`] are thin adapters over [`State`], converting to and from the wire types
//! ([`wire`]); [`serve`] runs them (plus gRPC health and reflection) on a listener.
//!
//! ```text
//! ApplyPolicy / CRUD ─▶ State::change ─ parse (located errors) ─ compile every host ─ diff
//!                         │                                            │
//!                         ├─ Store::commit (objects, revision, views, deltas, audit: one tx)
//!                         └─ fan-out: the delta to each connected agent of each changed host
//! Agent.Watch ─▶ State::watch: snapshot, or the missed deltas, then live deltas
//! ```

pub mod auth;
pub mod console;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod names;
pub mod objects;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

pub use objects::{Kind, Object, Objects};
pub use state::{ChangeOpts, State};
pub use store::EventStore;
pub use store::Store;

/// Errors of the control-plane library; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// A concurrency conflict: another controller on the database committed a change
    /// between this one's read and its write; nothing was written (retry).
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Internal(String),
}

/// The longest status message sent (grpc-message travels in a header; clients refuse
/// headers beyond 16 KiB, and non-ASCII characters are percent-encoded, 3 bytes each).
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// `m` cut to [`MAX_STATUS_MESSAGE`] bytes (at a character boundary), saying so.
pub fn cap_message(m: String) -> String {
    if m.len() <= MAX_STATUS_MESSAGE {
        return m;
    }
    let mut end = MAX_STATUS_MESSAGE - 40;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes cut)", &m[..end], m.len() - end)
}

/// A value from a request, as error messages show it: at most 64 characters, control
/// and other invisible characters escaped, so that no message echoes a huge or
/// misleading field back.
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str(&format!("… ({} characters)", s.chars().count()));
            break;
        }
        if c.is_control() || names::is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let e = match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(cap_message(m)),
            Error::NotFound(m) => Error::NotFound(cap_message(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(cap_message(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(cap_message(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(cap_message(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(cap_message(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(cap_message(m)),
            Error::Unavailable(m) => Error::Unavailable(cap_message(m)),
            Error::Aborted(m) => Error::Aborted(cap_message(m)),
            Error::Internal(m) => Error::Internal(cap_message(m)),
        };
        match e {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::AlreadyExists(m) => tonic::Status::already_exists(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Error::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::Aborted(m) => tonic::Status::aborted(m),
            Error::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    now_ms().div_euclid(1000)
}

/// Unix milliseconds of an RFC 3339 timestamp with optional fractional seconds.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let (whole, ms) = match s.find('.') {
        Some(dot) => {
            let rest = &s[dot + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let frac = &rest[..digits];
            let mut ms: i64 = 0;
            for i in 0..3 {
                ms = ms * 10 + frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
            }
            (format!("{}{}", &s[..dot], &rest[digits..]), ms)
        }
        None => (s.to_string(), 0),
    };
    policy_compiler::parse_rfc3339(&whole)
        .ok()
        .map(|t| t * 1000 + ms)
}

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)`: no file descriptor
/// needed). Fails closed: there is no fallback.
pub fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf)
        .map_err(|e| Error::Internal(format!("the system random generator failed: {e}")))
}

/// `bytes` random bytes as hex, from the OS CSPRNG; an error when it is unavailable
/// (never a weaker fallback). Every secret the controller mints comes from here.
pub fn try_random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(hex(&buf))
}

/// [`try_random_hex`] for names that are not secrets (and tests): panics rather than
/// return anything predictable when the OS generator fails.
pub fn random_hex(bytes: usize) -> String {
    match try_random_hex(bytes) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string (`None` when it is not one).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A peer address as logs and the audit trail show it (`unknown` when the transport
/// does not know it).
pub fn peer_name(peer: Option<std::net::IpAddr>) -> String {
    peer.map_or_else(|| "unknown".into(), |p| p.to_string())
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(s: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}

/// The exclusive lock of a database: one controller per SQLite file. Held (an `flock`
/// on `DB.lock` next to the database, which holds the holder's pid) until dropped or
/// the process ends; the kernel releases it when the process dies, however it dies.
#[derive(Debug)]
pub struct DbLock {
    _file: std::fs::File,
    pub path: std::path::PathBuf,
}

/// The lock file of a database: `controller.db` -> `controller.db.lock`.
pub fn lock_file_of(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

/// Takes the exclusive lock of `db` (see [`DbLock`]), creating the database's folder
/// (0700) if missing; fails at once, naming the holder's pid, when another process holds
/// it.
pub fn lock_db(db: &std::path::Path) -> anyhow::Result<DbLock> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = lock_file_of(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Created as the database's folder would be (0700).
        store::create_private_dir(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    // SAFETY: a valid open descriptor; flock takes no memory arguments.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            anyhow::bail!("cannot lock {}: {err}", path.display());
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        let holder = if pid.is_empty() {
            "pid unknown".to_string()
        } else {
            format!("pid {pid}")
        };
        anyhow::bail!(
            "a controller is already using {} ({holder}; lock file {}): stop it first, or \
             give this one another --db",
            db.display(),
            path.display()
        );
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(DbLock { _file: file, path })
}

/// Limits and periodic jobs of a server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections open at once; more wait in the listen queue until one closes.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_streams_per_connection: u32,
    /// Calls handled at once per connection (streams count while their response
    /// starts).
    pub concurrency_per_connection: usize,
    /// Append the audit chain's head to this file when it changed (one line: time,
    /// record id, hash), to anchor it outside the database.
    pub audit_head_file: Option<std::path::PathBuf>,
    /// How often the head is exported (and logged on stderr) when it changed.
    pub audit_head_every: Duration,
    /// Where the calls, connected agents and pushes are counted (to serve them with
    /// [`metrics::serve`]); `None`: counted, but nobody reads them.
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// How often the state catches up with other controllers on the database without
    /// being notified (see `state::sync`; on PostgreSQL a commit notifies at once).
    pub sync_every: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            max_streams_per_connection: 128,
            concurrency_per_connection: 32,
            audit_head_file: None,
            audit_head_every: Duration::from_secs(300),
            metrics: None,
            sync_every: Duration::from_secs(1),
        }
    }
}

/// Whether a plaintext (insecure) listener may bind `addr`: only on loopback, where
/// credentials never cross a network.
pub fn plaintext_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// One accepted connection, holding its place among `max_connections`.
struct Conn {
    tcp: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The accepted connections of `listener`: at most `max` open at once (accepting waits
/// for a free place), each with TCP_NODELAY (small responses leave at once instead of
/// waiting for the peer's delayed ACK). Accept errors (such as running out of file
/// descriptors) are retried after a pause, never end the server.
fn incoming(
    listener: tokio::net::TcpListener,
    max: usize,
) -> impl tokio_stream::Stream<Item = Result<Conn, std::io::Error>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            // Ends (and closes the listener) when the server stops reading.
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let tcp = loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => break tcp,
                        Err(e) => {
                            warn!(error = %e, "accepting a connection failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = tx.closed() => return,
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                warn!(error = %e, "setting TCP_NODELAY failed");
            }
            if tx.send(Ok(Conn { tcp, _slot: slot })).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Appends `time id=ID head=HASH` to the head file when the head changed since the
/// last export; returns the head exported.
fn export_head(
    state: &State,
    file: Option<&std::path::Path>,
    last: &Option<(u64, String)>,
) -> Option<(u64, String)> {
    let head = match state.audit_head() {
        Ok(Some(h)) => h,
        Ok(None) => return last.clone(),
        Err(e) => {
            error!(error = %e, "reading the audit head failed");
            return last.clone();
        }
    };
    if last.as_ref() == Some(&head) {
        return last.clone();
    }
    let time = policy_compiler::format_rfc3339(now_unix());
    let line = format!("{time} id={} head={}", head.0, head.1);
    info!(id = head.0, head = %head.1, "audit head");
    if let Some(path) = file {
        use std::io::Write as _;
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.sync_data()));
        if let Err(e) = r {
            error!(file = %path.display(), error = %e, "exporting the audit head failed");
            return last.clone();
        }
    }
    Some(head)
}

/// Runs the Admin and Agent services, gRPC health and reflection on `listener` until
/// `shutdown` completes, plus the background tasks (recompiling when a grant expires,
/// pruning old events). Plaintext: for tests on loopback (refused on other addresses);
/// deployments use [`serve_tls`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_tls(listener, state, None, shutdown).await
}

/// [`serve`], with TLS when `tls` is given (then plaintext connections are refused).
/// Every Admin call is authenticated and authorized ([`auth::AdminGuard`]); Agent calls
/// carry the agent's credential.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, state, tls, ServeOptions::default(), shutdown).await
}

/// [`serve_tls`] with explicit limits and periodic jobs.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use gateway_proto::v1::admin_server::AdminServer;
    use gateway_proto::v1::agent_server::AgentServer;

    let local = listener.local_addr()?;
    state.set_instance(&local.to_string());
    if tls.is_none() && !plaintext_allowed(&local) {
        anyhow::bail!(
            "refusing to serve plaintext on {local}: credentials would cross the network in \
             clear; plaintext is for loopback only (use TLS)"
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AdminServer<service::AdminService>>()
        .await;
    reporter
        .set_serving::<AgentServer<service::AgentService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gateway_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let bg = {
        let state = state.clone();
        let head_file = opts.audit_head_file.clone();
        let head_every = opts.audit_head_every.as_millis().max(1000) as i64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_prune = 0i64;
            let mut last_export = 0i64;
            let mut exported: Option<(u64, String)> = None;
            loop {
                tick.tick().await;
                let s = state.clone();
                let now = now_ms();
                let prune = now - last_prune > 3_600_000;
                let export = now - last_export >= head_every;
                if prune {
                    last_prune = now;
                }
                if export {
                    last_export = now;
                }
                let file = head_file.clone();
                let before = exported.clone();
                let done = tokio::task::spawn_blocking(move || {
                    s.flush_refusals(false);
                    if let Err(e) = s.flush_acks(now / 1000 % 5 == 0) {
                        warn!(error = %e, "recording agents' acknowledgements failed (kept for the next attempt)");
                    }
                    // The rest runs on one controller of the database at a time.
                    if !s.lead_singletons() {
                        return before;
                    }
                    if let Err(e) = s.refresh_if_due() {
                        error!(error = %e, "recompiling after an expiry failed");
                    }
                    if prune {
                        match s.prune_events() {
                            Ok(0) => {}
                            Ok(n) => info!(deleted = n, "events past the retention deleted"),
                            Err(e) => error!(error = %e, "pruning events failed"),
                        }
                    }
                    if export {
                        export_head(&s, file.as_deref(), &before)
                    } else {
                        before
                    }
                })
                .await;
                if let Ok(e) = done {
                    exported = e;
                }
            }
        })
    };
    // Catching up with other controllers on the database: when one notifies a commit,
    // and once a second whatever happens (see `state::sync`).
    let syncer = {
        let state = state.clone();
        let every = opts.sync_every;
        let wake = Arc::new(tokio::sync::Notify::new());
        if let store::Db::Postgres(url) = state.database()
            && let Err(e) = store::sql::listen(url, store::CHANGES_CHANNEL, &wake)
        {
            error!(error = %e, "not listening for other controllers' changes (caught up once a second)");
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(every) => {}
                }
                let s = state.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.sync()).await {
                    tracing::debug!(error = %e, "catching up with the database failed");
                }
            }
        })
    };
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(opts.max_streams_per_connection)
        .concurrency_limit_per_connection(opts.concurrency_per_connection)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let m = opts.metrics.clone().unwrap_or_default();
    let admin = metrics::Measured::admin(
        auth::AdminGuard::new(
            AdminServer::new(service::AdminService::with_metrics(
                state.clone(),
                m.clone(),
            )),
            state.clone(),
        ),
        m.clone(),
    );
    let agent = metrics::Measured::agent(
        AgentServer::new(service::AgentService::with_metrics(
            state.clone(),
            m.clone(),
        )),
        m,
    );
    let result = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(admin)
        .add_service(agent)
        .serve_with_incoming_shutdown(incoming(listener, opts.max_connections), {
            // Open streams (watches, followers) end first, so the graceful
            // shutdown does not wait for them.
            let state = state.clone();
            async move {
                shutdown.await;
                state.close_watchers();
            }
        })
        .await;
    bg.abort();
    syncer.abort();
    state.close_watchers();
    state.flush_refusals(true);
    if let Err(e) = state.flush_acks(false) {
        warn!(error = %e, "recording agents' acknowledgements failed");
    }
    result?;
    Ok(())
}

/// Binds `addr` and serves plaintext (see [`serve`]); returns the bound address (useful
/// with port 0) and the server task.
pub async fn spawn(
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    spawn_tls(addr, state, None, shutdown).await
}

/// [`spawn`] with optional TLS (see [`serve_tls`]).
pub async fn spawn_tls(
    addr: SocketAddr,
    state: Arc<State>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    spawn_with(addr, state, tls, ServeOptions::default(), shutdown).await
}

/// [`spawn_tls`] with explicit [`ServeOptions`]. Plaintext is refused (before binding)
/// on addresses other than loopback.
pub async fn spawn_with(
    addr: SocketAddr,
    state: Arc<State>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    if tls.is_none() && !plaintext_allowed(&addr) {
        anyhow::bail!(
            "refusing to serve plaintext on {addr}: plaintext is for loopback only (use TLS)"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((
        local,
        tokio::spawn(serve_with(listener, state, tls, opts, shutdown)),
    ))
}
