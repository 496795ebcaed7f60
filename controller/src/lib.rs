//! The zt-gateway controller as a library: [`Store`] (SQLite persistence) and [`State`]
//! (the policy, per-host compiled views and generations, agents, and the fan-out of
//! view changes to connected agents). The gRPC services in [`service`] are thin adapters
//! over [`State`]; [`serve`] runs them (plus gRPC health and reflection) on a listener.
//!
//! ```text
//! ApplyPolicy / CRUD ─▶ State::change ─ parse (located errors) ─ compile every host ─ diff
//!                         │                                            │
//!                         ├─ Store::commit (objects, revision, views, deltas, audit: one tx)
//!                         └─ fan-out: the delta to each connected agent of each changed host
//! Agent.Watch ─▶ State::watch: snapshot, or the missed deltas, then live deltas
//! ```

pub mod auth;
pub mod objects;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use objects::{Kind, Object, Objects};
pub use state::{ChangeOpts, State};
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
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::AlreadyExists(m) => tonic::Status::already_exists(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Error::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
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

/// Random bytes as hex (from the OS).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if ok.is_err() {
        // Never expected on Linux; fall back to a time-and-address mix rather than panic.
        let seed = now_ms() as u64 ^ (buf.as_ptr() as u64).rotate_left(17);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 7) >> 3) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the Admin and Agent services, gRPC health and reflection on `listener` until
/// `shutdown` completes, plus the background tasks (recompiling when a grant expires,
/// pruning old events). Plaintext: for tests on loopback; deployments use
/// [`serve_tls`].
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
    use gateway_proto::v1::admin_server::AdminServer;
    use gateway_proto::v1::agent_server::AgentServer;

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
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_prune = 0i64;
            loop {
                tick.tick().await;
                if let Err(e) = state.refresh_if_due() {
                    eprintln!("gateway-controller: recompiling: {e}");
                }
                let now = now_ms();
                if now - last_prune > 3_600_000 {
                    last_prune = now;
                    if let Err(e) = state.prune_events() {
                        eprintln!("gateway-controller: pruning events: {e}");
                    }
                }
            }
        })
    };
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let admin = auth::AdminGuard::new(
        AdminServer::new(service::AdminService::new(state.clone())),
        state.clone(),
    );
    let result = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(admin)
        .add_service(AgentServer::new(service::AgentService::new(state.clone())))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), {
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
    state.close_watchers();
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((
        local,
        tokio::spawn(serve_tls(listener, state, tls, shutdown)),
    ))
}
