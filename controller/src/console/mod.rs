//! The admin console: server-rendered HTML pages over the same [`State`] and the same
//! authorization as the gRPC Admin API, on a listener of its own (`gateway-controller
//! run --console-listen ADDR`).
//!
//! * Transport: HTTP/1.1, TLS with the deployment's certificate when given; plaintext
//!   only on loopback addresses ([`crate::plaintext_allowed`]).
//! * Authorization: every route names the Admin RPC it is equivalent to ([`ROUTES`]) and
//!   is allowed exactly when [`crate::auth::permission`] of that RPC is allowed for the
//!   session's role ([`Console::authorize`], the one check; refusals reach the audit
//!   trail as the API's do).
//! * The console security policy (stricter than API sessions, [`ConsoleOptions`]):
//!   password + TOTP login, a re-authentication interval and an idle timeout, a fresh
//!   TOTP code for sensitive actions, optional allowed source networks, a
//!   `__Host-`/`Secure; HttpOnly; SameSite=Strict` session cookie whose random id is kept
//!   server-side in memory, a CSRF token per session checked on every POST, strict
//!   security headers on every response ([`security_headers`]), bounded bodies and
//!   fields.
//!
//! A console session holds an API session minted by [`State::login`] (never sent to the
//! browser): each request is authorized with it, so what ends API sessions (user deleted,
//! password changed, TOTP reset, `--session-ttl`) ends console sessions too.

mod actions;
mod pages;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use crate::State;
use crate::auth::{self, Principal};

pub use session::Sessions;

/// Largest request body accepted (a policy text fits; a page's forms are far smaller).
pub const MAX_BODY: usize = 1024 * 1024;
/// Default re-authentication interval: half the API session's default life (1 h), so the
/// console's own policy is the stricter one.
pub const DEFAULT_REAUTH: Duration = Duration::from_secs(30 * 60);
/// Default idle timeout.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);
/// Console sessions open at once at most (the oldest is ended beyond).
pub const MAX_SESSIONS: usize = 1000;

/// The console security policy and transport.
#[derive(Clone)]
pub struct ConsoleOptions {
    /// TLS (the deployment's certificate); `None`: plaintext, loopback only.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// A session must log in again this long after its login.
    pub reauth: Duration,
    /// A session unused this long ends.
    pub idle: Duration,
    /// Source networks allowed to use the console (empty: any).
    pub allow: Vec<ipnet::IpNet>,
    /// A request must have arrived whole (head and body) and been answered (its
    /// response head) within this long: a client trickling its body cannot hold a
    /// connection place (a 408 ends it).
    pub request_timeout: Duration,
    /// Connections one source address may hold at once (of [`MAX_CONNECTIONS`]).
    pub per_source: usize,
}

/// Connections open at once at most.
pub const MAX_CONNECTIONS: usize = 256;
/// Default [`ConsoleOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ConsoleOptions::per_source`].
pub const DEFAULT_PER_SOURCE: usize = 32;

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            tls: None,
            reauth: DEFAULT_REAUTH,
            idle: DEFAULT_IDLE,
            allow: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            per_source: DEFAULT_PER_SOURCE,
        }
    }
}

impl std::fmt::Debug for ConsoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOptions")
            .field("tls", &self.tls.is_some())
            .field("reauth", &self.reauth)
            .field("idle", &self.idle)
            .field("allow", &self.allow)
            .field("request_timeout", &self.request_timeout)
            .field("per_source", &self.per_source)
            .finish()
    }
}

/// The rustls server configuration of `server.pem` / `server.key` in `dir` (the files
/// `gateway-controller init --tls-dir` writes), for the console's HTTPS.
pub fn tls_config(
    dir: &std::path::Path,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use anyhow::Context as _;
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    tls_config_pem(
        &read(crate::tls::SERVER_CERT)?,
        &read(crate::tls::SERVER_KEY)?,
    )
}

/// [`tls_config`] from PEM text.
pub fn tls_config_pem(
    cert: &[u8],
    key: &[u8],
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("the console's certificate (server.pem) is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .context("the console's private key (server.key) is not a PEM private key")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the console's certificate and key do not fit together")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The console: the state it serves, its policy and its sessions.
pub struct Console {
    pub(crate) state: Arc<State>,
    pub(crate) opts: ConsoleOptions,
    pub(crate) sessions: Sessions,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("opts", &self.opts).finish()
    }
}

/// The peer address of a request (inserted by the accept loop).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

/// A console route: HTTP method, path (with `{param}`s), and the Admin RPC it is
/// equivalent to (its permission decides).
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub rpc: &'static str,
}

/// Every console route and its equivalent Admin RPC. The login page and form are
/// `Login` (no session); the hash-versioned assets under `/static/` need no session
/// either. The sensitive actions (apply, revoke, key and user changes) also need a fresh
/// TOTP code in their form.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/login",
        rpc: "Login",
    },
    Route {
        method: "POST",
        path: "/login",
        rpc: "Login",
    },
    Route {
        method: "POST",
        path: "/logout",
        rpc: "Logout",
    },
    Route {
        method: "GET",
        path: "/",
        rpc: "ListAgents",
    },
    Route {
        method: "GET",
        path: "/objects/{kind}",
        rpc: "ListObjects",
    },
    Route {
        method: "GET",
        path: "/objects/{kind}/{name}",
        rpc: "GetObject",
    },
    Route {
        method: "GET",
        path: "/policy",
        rpc: "GetPolicy",
    },
    Route {
        method: "GET",
        path: "/policy/revisions",
        rpc: "ListPolicyRevisions",
    },
    Route {
        method: "GET",
        path: "/policy/revisions/{revision}",
        rpc: "GetPolicy",
    },
    Route {
        method: "GET",
        path: "/policy/diff",
        rpc: "GetPolicy",
    },
    Route {
        method: "POST",
        path: "/policy/plan",
        rpc: "ApplyPolicy",
    },
    Route {
        method: "POST",
        path: "/policy/apply",
        rpc: "ApplyPolicy",
    },
    Route {
        method: "POST",
        path: "/agents/revoke",
        rpc: "RevokeAgent",
    },
    Route {
        method: "POST",
        path: "/keys/create",
        rpc: "CreateApiKey",
    },
    Route {
        method: "POST",
        path: "/keys/revoke",
        rpc: "RevokeApiKey",
    },
    Route {
        method: "POST",
        path: "/users/create",
        rpc: "CreateAdminUser",
    },
    Route {
        method: "POST",
        path: "/users/delete",
        rpc: "DeleteAdminUser",
    },
    Route {
        method: "GET",
        path: "/explain",
        rpc: "Explain",
    },
    Route {
        method: "GET",
        path: "/activity",
        rpc: "QueryEvents",
    },
    Route {
        method: "GET",
        path: "/activity/export",
        rpc: "QueryEvents",
    },
    Route {
        method: "GET",
        path: "/activity/stream",
        rpc: "FollowEvents",
    },
    Route {
        method: "GET",
        path: "/agents",
        rpc: "ListAgents",
    },
    Route {
        method: "GET",
        path: "/audit",
        rpc: "AuditReport",
    },
    Route {
        method: "GET",
        path: "/audit/export",
        rpc: "AuditReport",
    },
    Route {
        method: "GET",
        path: "/keys",
        rpc: "ListApiKeys",
    },
    Route {
        method: "GET",
        path: "/users",
        rpc: "ListAdminUsers",
    },
];

/// The equivalent RPC of a route (by method and path pattern).
pub fn rpc_of(method: &str, path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .map(|r| r.rpc)
}

/// Why a request was not served: a page with a status and what to do.
#[derive(Debug)]
pub(crate) enum Reject {
    /// No valid session: to the login page, saying why.
    Login(&'static str),
    /// A page with this status and message.
    Page(StatusCode, String),
}

impl Reject {
    pub(crate) fn bad(m: impl Into<String>) -> Reject {
        Reject::Page(StatusCode::BAD_REQUEST, m.into())
    }
}

impl From<crate::Error> for Reject {
    fn from(e: crate::Error) -> Reject {
        use crate::Error as E;
        let code = match &e {
            E::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::AlreadyExists(_) | E::Aborted(_) | E::FailedPrecondition(_) => StatusCode::CONFLICT,
            E::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            E::PermissionDenied(_) => StatusCode::FORBIDDEN,
            E::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Reject::Page(code, e.to_string())
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        match self {
            Reject::Login(why) => {
                let to = format!("/login?why={why}");
                let mut r = StatusCode::SEE_OTHER.into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Reject::Page(code, msg) => (code, pages::error_page(code, &msg)).into_response(),
        }
    }
}

/// An authorized request: who, and the session's CSRF token (for the forms of the page).
#[derive(Clone, Debug)]
pub(crate) struct Authed {
    pub principal: Principal,
    pub csrf: String,
}

impl Console {
    /// The one authorization check of every console route: a valid console session
    /// (not past its re-authentication interval nor its idle timeout), whose API session
    /// is valid, whose role is allowed [`auth::permission`]`(rpc)`; for a POST, the
    /// session's CSRF token in the form (`csrf`, checked first: 403). Refusals are
    /// recorded in the audit trail like the API's ([`State::authorize_call`]).
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        rpc: &str,
        csrf: Option<&str>,
    ) -> Result<Authed, Reject> {
        let (token, csrf_want) = self.sessions.check(self, headers)?;
        if let Some(got) = csrf
            && !session::same(got, &csrf_want)
        {
            warn!(peer = %peer, rpc, "console POST without its session's CSRF token refused");
            return Err(Reject::Page(
                StatusCode::FORBIDDEN,
                "this form did not carry the session's CSRF token (it came from another page \
                 or an old session): reload the page and submit it again"
                    .into(),
            ));
        }
        let bearer = format!("Bearer {token}");
        match self.state.authorize_call(
            Some(&bearer),
            auth::permission(rpc),
            &format!("console:{rpc}"),
            Some(peer),
        ) {
            Ok(principal) => Ok(Authed {
                principal,
                csrf: csrf_want,
            }),
            Err(crate::Error::PermissionDenied(m)) => Err(Reject::Page(
                StatusCode::FORBIDDEN,
                format!("{m}: this page is the console's {rpc}, which your role may not use"),
            )),
            Err(_) => {
                self.sessions.remove(headers);
                Err(Reject::Login("ended"))
            }
        }
    }

    fn allowed_source(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.opts.allow.is_empty() || self.opts.allow.iter().any(|n| n.contains(&ip))
    }
}

/// The content security policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response (and `Cache-Control: no-store` to all
/// but the hash-versioned assets), after refusing sources outside `--console-allow`.
async fn security_headers(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let is_asset = req.uri().path().starts_with("/static/");
    let mut resp = match peer {
        Some(ip) if console.allowed_source(ip) => next.run(req).await,
        _ => {
            let who = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            warn!(peer = %who, "console request from a source outside --console-allow refused");
            console.state.refused(
                "console_refused",
                format!("peer:{who}"),
                "console".into(),
                "source address not in --console-allow".into(),
            );
            Reject::Page(
                StatusCode::FORBIDDEN,
                format!(
                    "the console does not serve {who}: it is outside the allowed source \
                     networks (--console-allow); connect from an allowed network"
                ),
            )
            .into_response()
        }
    };
    let cacheable = is_asset && resp.status().is_success();
    add_headers(&mut resp, console.opts.tls.is_some(), cacheable);
    resp
}

/// The security headers of every response (see [`security_headers`]).
fn add_headers(resp: &mut Response, tls: bool, cacheable: bool) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if cacheable {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The console's assets, compiled in.
pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");

/// The hash-versioned paths of the assets (`/static/console.HASH.css`, `.js`).
pub fn asset_paths() -> &'static (String, String) {
    static P: OnceLock<(String, String)> = OnceLock::new();
    P.get_or_init(|| {
        let short = |s: &str| crate::hash_secret(s)[..16].to_string();
        (
            format!("/static/console.{}.css", short(CSS)),
            format!("/static/console.{}.js", short(JS)),
        )
    })
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (css, js) = asset_paths();
    let path = format!("/static/{file}");
    if &path == css {
        ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
    } else if &path == js {
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            JS,
        )
            .into_response()
    } else {
        Reject::Page(StatusCode::NOT_FOUND, "no such asset".into()).into_response()
    }
}

/// The console's router over `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(actions::routes())
        .route("/static/{file}", axum::routing::get(asset))
        .fallback(|| async {
            Reject::Page(
                StatusCode::NOT_FOUND,
                "no such page: start from the overview (/)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            security_headers,
        ))
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    opts: ConsoleOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    if opts.tls.is_none() && !crate::plaintext_allowed(&local) {
        anyhow::bail!(
            "refusing to serve the admin console in plaintext on {local}: passwords and \
             session cookies would cross the network in clear; give the deployment's \
             certificate (--tls-dir) or a loopback --console-listen"
        );
    }
    let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (request_timeout, per_source) = (opts.request_timeout, opts.per_source.max(1));
    let console = Arc::new(Console {
        state,
        opts,
        sessions: Sessions::default(),
    });
    let app = router(console);
    let mut shutdown = std::pin::pin!(shutdown);
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let by_source = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        IpAddr,
        usize,
    >::new()));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "console: accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(slot) = conns.clone().try_acquire_owned() else {
            warn!(peer = %addr, "console: too many connections; this one is closed");
            continue;
        };
        let Some(source_slot) = SourceSlot::take(&by_source, addr.ip(), per_source) else {
            warn!(
                peer = %addr,
                per_source,
                "console: this source holds too many connections; this one is closed"
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let is_tls = tls.is_some();
        tasks.spawn(async move {
            let (_slot, _source_slot) = (slot, source_slot);
            let peer = Peer(addr.ip());
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer);
                let mut app = app.clone();
                async move {
                    use tower::Service as _;
                    // Reading the body is the handler's: the timeout covers it (a
                    // server-sent event stream answers at once and streams after).
                    match tokio::time::timeout(request_timeout, app.call(req)).await {
                        Ok(r) => r,
                        Err(_) => {
                            warn!(peer = %peer.0, "console: a request did not arrive whole in time");
                            let mut r = Reject::Page(
                                StatusCode::REQUEST_TIMEOUT,
                                "the request did not arrive whole in time".into(),
                            )
                            .into_response();
                            add_headers(&mut r, is_tls, false);
                            r.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                            Ok(r)
                        }
                    }
                }
            });
            // A client must send its request head within 10 s: slow clients cannot hold
            // the connection places.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let r = match tls {
                Some(tls) => {
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "console connection ended with an error");
            }
        });
    }
    tasks.abort_all();
    Ok(())
}

/// A connection place of one source address, given back when dropped.
struct SourceSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl SourceSlot {
    fn take(
        map: &Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<SourceSlot> {
        let mut m = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Binds `addr` and serves the console (see [`serve`]); returns the bound address and
/// the server task. Plaintext is refused before binding on addresses other than
/// loopback.
pub async fn spawn(
    addr: SocketAddr,
    state: Arc<State>,
    opts: ConsoleOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    if opts.tls.is_none() && !crate::plaintext_allowed(&addr) {
        anyhow::bail!(
            "refusing to serve the admin console in plaintext on {addr}: plaintext is for \
             loopback only; give the deployment's certificate (--tls-dir) or a loopback \
             --console-listen"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, tls = opts.tls.is_some(), "serving the admin console");
    Ok((local, tokio::spawn(serve(listener, state, opts, shutdown))))
}
