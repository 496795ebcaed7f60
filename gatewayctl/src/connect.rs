//! The connection to a controller: URL, TLS with the deployment's CA, the bearer
//! credential, deadlines, and gRPC errors mapped to failures with clear messages.

use std::time::Duration;

use gateway_proto::v1::{self, admin_client::AdminClient};
use gatewayctl::remote::now_unix;
use policy_compiler::Policy;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::fail::{Fail, R};

/// How long to wait for the TCP/HTTP2 connection and for each unary call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the controller is and how to prove who we are.
pub struct Access {
    pub url: String,
    /// API key or session token, sent as `authorization: Bearer <secret>`.
    pub api_key: Option<String>,
    /// CA certificate (PEM) for `https://` URLs.
    pub ca: Option<std::path::PathBuf>,
}

/// Adds the bearer credential to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A connected Admin client and the URL it talks to (for messages).
pub struct Ctl {
    pub url: String,
    pub admin: Admin,
}

/// The message of an error and its sources (`transport error: tcp connect error: ...`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = x.source();
    }
    s
}

/// What the server at a URL speaks, found by a probe when a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    Tls,
    PlaintextHttp2,
}

/// The client preface of HTTP/2 and an empty SETTINGS frame (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Probes `authority` (HOST:PORT) on a fresh TCP connection, bounded to a few seconds:
/// sends the HTTP/2 preface and reads the first bytes of the answer. A TLS server
/// answers with a TLS record (an alert, type 21, or a handshake, 22); a plaintext
/// HTTP/2 server with a SETTINGS frame (frame type 4 in its fourth byte).
fn probe(authority: &str) -> Option<Speaks> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    let timeout = Duration::from_secs(2);
    let addr = authority.to_socket_addrs().ok()?.next()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    // A TLS server may close before reading it all: the answer is what counts.
    let _ = s.write_all(H2_PREFACE);
    let mut buf = [0u8; 9];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    match buf[..n] {
        [21 | 22, 3, ..] => Some(Speaks::Tls),
        [_, _, _, 4, ..] if n == 9 => Some(Speaks::PlaintextHttp2),
        _ => None,
    }
}

/// When a connection to `url` failed: a clear usage error if the server speaks TLS and
/// the URL is `http://`, or plaintext and the URL is `https://`.
fn mismatch(url: &str) -> Option<Fail> {
    let (https, authority) = match url.strip_prefix("https://") {
        Some(a) => (true, a),
        None => (false, url.strip_prefix("http://")?),
    };
    match (https, probe(authority)?) {
        (false, Speaks::Tls) => Some(Fail::Usage(format!(
            "the controller at {url} speaks TLS: use https://{authority} and --ca FILE (the \
             deployment's CA certificate, ca.pem of `gateway-controller init --tls-dir`)"
        ))),
        (true, Speaks::PlaintextHttp2) => Some(Fail::Usage(format!(
            "the controller at {url} speaks plaintext gRPC, not TLS (it runs with \
             --insecure-plaintext): use http://{authority} without --ca, or run the \
             controller with --tls-dir"
        ))),
        _ => None,
    }
}

/// Connects to the controller (bounded); an unreachable controller is a usage error.
pub async fn connect(access: &Access) -> R<Ctl> {
    let url = gatewayctl::remote::normalize_url(&access.url)
        .map_err(|e| Fail::Usage(format!("--controller: {e}")))?;
    let bearer = match &access.api_key {
        Some(k) => Some(format!("Bearer {}", k.trim()).parse().map_err(|_| {
            Fail::Usage("--api-key: not a valid credential (printable ASCII only)".into())
        })?),
        None => None,
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            Fail::Usage(format!(
                "--controller: `{url}` is not a valid URL: {}",
                chain(&e)
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if !url.starts_with("https://")
        && let Some(ca) = &access.ca
    {
        return Err(Fail::Usage(format!(
            "--ca {} is for https:// controllers, but --controller `{url}` is plaintext: \
             use https:// (or drop --ca for a plaintext test controller on loopback)",
            ca.display()
        )));
    }
    if url.starts_with("https://") {
        let Some(ca) = &access.ca else {
            return Err(Fail::Usage(
                "--controller is https:// but no --ca (or GATEWAYCTL_CA) names the CA \
                 certificate that signed the controller's certificate"
                    .into(),
            ));
        };
        let pem =
            std::fs::read(ca).map_err(|e| Fail::Usage(format!("--ca {}: {e}", ca.display())))?;
        ep = ep
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .map_err(|e| Fail::Usage(format!("--ca {}: {}", ca.display(), chain(&e))))?;
    }
    let unreachable = |detail: String| {
        Fail::Usage(format!(
            "cannot reach the controller at {url}: {detail} (is `gateway-controller run` listening there? set --controller or GATEWAYCTL_CONTROLLER)"
        ))
    };
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(mismatch(&url).unwrap_or_else(|| unreachable(chain(&e)))),
        Err(_) => {
            return Err(unreachable(format!(
                "no connection within {}s",
                (CONNECT_TIMEOUT * 2).as_secs()
            )));
        }
    };
    Ok(Ctl {
        url,
        admin: AdminClient::with_interceptor(channel, Bearer(bearer)),
    })
}

impl Ctl {
    /// Maps a gRPC error to a failure with a clear message: the one place that turns
    /// the controller's answers into exit codes (the table is in `gatewayctl --help`):
    /// the controller answered "no" (invalid, not found, exists, concurrent change,
    /// unauthenticated, permission denied) is 1; no answer at all (unreachable,
    /// timeout, a transport failure, TLS on one side only) is 2.
    pub fn fail(&self, what: &str, s: &Status) -> Fail {
        let msg = s.message().trim();
        // tonic reports a broken connection as UNKNOWN "transport error" with a source.
        let broken = std::error::Error::source(s).is_some() || msg == "transport error";
        let transport = || {
            if msg.is_empty() || broken {
                chain(s)
            } else {
                msg.to_string()
            }
        };
        match s.code() {
            // No answer: say why when the two sides disagree about TLS.
            Code::Unavailable | Code::Unknown | Code::Internal
                if s.code() == Code::Unavailable || broken =>
            {
                mismatch(&self.url).unwrap_or_else(|| {
                    Fail::Usage(format!(
                        "cannot reach the controller at {}: {}",
                        self.url,
                        transport()
                    ))
                })
            }
            Code::DeadlineExceeded => Fail::Usage(format!(
                "the controller at {} did not answer {what} in time: {msg}",
                self.url
            )),
            Code::Cancelled => Fail::Usage(format!("{what} was cancelled: {msg}")),
            Code::Unauthenticated => Fail::Error(format!(
                "the controller at {} did not accept our credentials for {what}: {msg} \
                 (check --api-key or GATEWAYCTL_API_KEY)",
                self.url
            )),
            Code::PermissionDenied => Fail::Error(format!("not allowed to {what}: {msg}")),
            // Located diagnostics (`file:line:col: error: ...`): print them as they are.
            Code::InvalidArgument => Fail::Raw(msg.to_string()),
            Code::NotFound => Fail::Error(format!("not found: {msg}")),
            Code::AlreadyExists => Fail::Error(format!("already exists: {msg}")),
            Code::FailedPrecondition | Code::Aborted => Fail::Error(format!(
                "the policy on the controller changed since the plan was computed; nothing was applied \
                 (run the command again to review the new plan): {msg}"
            )),
            Code::Unimplemented => Fail::Error(format!(
                "the controller at {} does not support {what} (is it older than gatewayctl?): {msg}",
                self.url
            )),
            other => Fail::Error(format!(
                "the controller failed to {what} ({other:?}): {msg}"
            )),
        }
    }

    /// Runs one unary call with a deadline and maps its errors.
    pub async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> R<T> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.fail(what, &s)),
            Err(_) => Err(Fail::Usage(format!(
                "the controller at {} did not answer {what} within {}s",
                self.url,
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn policy(&self) -> R<v1::GetPolicyResponse> {
        let mut a = self.admin.clone();
        self.call(
            "read the policy",
            a.get_policy(v1::GetPolicyRequest::default()),
        )
        .await
    }

    /// The controller's current policy parsed locally (for resolving names), if valid.
    pub async fn parsed_policy(&self) -> Option<Policy> {
        let p = self.policy().await.ok()?;
        policy_compiler::parse(&p.policy_toml, "policy.toml", now_unix())
            .ok()
            .map(|p| p.policy)
    }
}
