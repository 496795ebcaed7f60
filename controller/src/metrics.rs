//! Prometheus metrics of the controller (`gateway-controller run --metrics-listen ADDR`),
//! in the OpenMetrics text format at `GET /metrics`:
//!
//! * `controller_grpc_requests_total{service,method,code}` and
//!   `controller_grpc_request_duration_seconds{service,method,code}`: every Admin and
//!   Agent call, by its gRPC status code (`OK`, `UNAUTHENTICATED`, ...). The duration
//!   runs until the response starts: a stream (Watch, FollowEvents) counts when it opens,
//!   with the code it opened with. Unknown method names are counted as `unknown`.
//! * `controller_agents_connected`: agents with an open Watch stream.
//! * `controller_policy_push_seconds`: from a policy change's commit (when its Admin call
//!   returns) to each connected agent's acknowledgement of the new generation. Changes
//!   made by the clock (a grant expiring) are not measured, nor an acknowledgement that
//!   arrives before the change's call has returned.
//! * `controller_build_info{version}`: always 1.
//!
//! The listener is off unless `--metrics-listen` is given; it serves only `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::model::Plan;

/// Agent RPC names (labels are bounded to the API's methods).
const AGENT_METHODS: &[&str] = &["Enroll", "Watch", "Ack", "ReportEvents", "RotateKey"];

/// Pending pushes remembered at most (oldest dropped first), and for at most an hour.
const PENDING_CAP: usize = 10_000;
const PENDING_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// The controller's metrics (see the module docs).
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    durations: HistogramFamily<RpcLabels>,
    agents_connected: Gauge,
    push: Histogram,
    /// (host, generation) -> when the change that made it was committed.
    pending: Mutex<HashMap<(String, u64), Instant>>,
    /// Connected agent id -> its host (from its Watch).
    agent_hosts: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn lk<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("controller");
        let requests = Family::<RpcLabels, Counter>::default();
        let durations: HistogramFamily<RpcLabels> = Family::new_with_constructor(rpc_histogram);
        let agents_connected = Gauge::default();
        let push = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "grpc_requests",
            "Admin and Agent gRPC calls, by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time until the response of an Admin or Agent gRPC call started",
            durations.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents with an open Watch stream",
            agents_connected.clone(),
        );
        registry.register(
            "policy_push_seconds",
            "From a policy change's commit to an agent's acknowledgement of its generation",
            push.clone(),
        );
        registry.register(
            "build",
            "The controller's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            requests,
            durations,
            agents_connected,
            push,
            pending: Mutex::new(HashMap::new()),
            agent_hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    fn observe_rpc(&self, l: RpcLabels, secs: f64) {
        self.requests.get_or_create(&l).inc();
        self.durations.get_or_create(&l).observe(secs);
    }

    /// An agent's Watch opened.
    pub fn agent_connected(&self, agent: &str, host: &str) {
        self.agents_connected.inc();
        lk(&self.agent_hosts).insert(agent.to_string(), host.to_string());
    }

    /// An agent's Watch ended.
    pub fn agent_disconnected(&self, agent: &str) {
        self.agents_connected.dec();
        lk(&self.agent_hosts).remove(agent);
    }

    /// A change was committed: its hosts' new generations start their push.
    pub fn committed(&self, plan: &Plan) {
        let now = Instant::now();
        let mut p = lk(&self.pending);
        p.retain(|_, t| now.duration_since(*t) < PENDING_MAX_AGE);
        for h in &plan.hosts {
            if p.len() >= PENDING_CAP
                && let Some(oldest) = p.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
            {
                p.remove(&oldest);
            }
            p.insert((h.host.clone(), h.new_generation), now);
        }
    }

    /// An agent acknowledged `generation`.
    pub fn acked(&self, agent: &str, generation: u64) {
        let Some(host) = lk(&self.agent_hosts).get(agent).cloned() else {
            return;
        };
        if let Some(t) = lk(&self.pending).get(&(host, generation)) {
            self.push.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// The name of a gRPC status code (the `code` label).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts and times every call of the wrapped gRPC service (see the module docs).
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
    service: &'static str,
    methods: &'static [&'static str],
}

impl<S> std::fmt::Debug for Measured<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Measured")
    }
}

impl<S> Measured<S> {
    /// Measures the Admin service (`methods`: its RPC names).
    pub fn admin(inner: S, metrics: Arc<Metrics>) -> Self {
        Measured {
            inner,
            metrics,
            service: "Admin",
            methods: crate::auth::ADMIN_METHODS,
        }
    }

    /// Measures the Agent service.
    pub fn agent(inner: S, metrics: Arc<Metrics>) -> Self {
        Measured {
            inner,
            metrics,
            service: "Agent",
            methods: AGENT_METHODS,
        }
    }
}

impl<S: NamedService> NamedService for Measured<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Measured<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let name = req.uri().path().rsplit('/').next().unwrap_or("");
        let method = self
            .methods
            .iter()
            .find(|m| **m == name)
            .copied()
            .unwrap_or("unknown");
        let service = self.service;
        let metrics = self.metrics.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let start = Instant::now();
        Box::pin(async move {
            let resp = inner.call(req).await?;
            // A status in the headers (an error, or a trailers-only response); otherwise
            // the call succeeded so far (its status follows in the trailers).
            let code = tonic::Status::from_header_map(resp.headers())
                .map_or(tonic::Code::Ok, |s| s.code());
            metrics.observe_rpc(
                RpcLabels {
                    service,
                    method,
                    code: code_name(code),
                },
                start.elapsed().as_secs_f64(),
            );
            Ok(resp)
        })
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
