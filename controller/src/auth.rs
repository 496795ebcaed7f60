//! Admin authentication and authorization.
//!
//! * Credentials: API keys (`zt-key-<64 hex>`) and session tokens (`zt-session-<64
//!   hex>`), both sent as `authorization: Bearer <secret>` and stored only as SHA-256
//!   hashes (the secrets are 32 random bytes, so a plain hash is enough).
//! * [`Role`]s and what each may call: [`permission`] maps every Admin method to the
//!   [`Perm`] it needs; a method missing from the table needs [`Perm::Admin`] (deny by
//!   default).
//! * [`AdminGuard`]: a tower service around the Admin server that authenticates every
//!   call before it reaches a handler (UNAUTHENTICATED / PERMISSION_DENIED, both recorded
//!   in the audit trail, aggregated) and passes the [`Principal`] to the handler in the
//!   request extensions. Login, the one public call, is rate-limited per peer address and
//!   overall before its request is read, and only a few are read and handled at once.
//! * Passwords: Argon2id ([`hash_password`], [`verify_password`]); second factor: TOTP
//!   (RFC 6238, HMAC-SHA-1, 30 s steps, 6 digits: [`totp_code`]).
//! * [`BearerAuth`]: the client side, a tonic interceptor that adds the header.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use gateway_proto::v1;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::State;

/// Prefix of API keys.
pub const KEY_PREFIX: &str = "zt-key-";
/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "zt-session-";

/// What a principal is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Policy changes, enrollment tokens and reads; not the audit trail.
    Operator,
    /// Reads and the audit trail; no changes.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// Whether this role grants `perm`.
    pub fn allows(self, perm: Perm) -> bool {
        matches!(
            (self, perm),
            (_, Perm::Public | Perm::Any | Perm::Read)
                | (Role::Admin, _)
                | (Role::Operator, Perm::Write)
                | (Role::Auditor, Perm::Audit)
        )
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permission an Admin method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// No credential (Login).
    Public,
    /// Any valid credential.
    Any,
    /// Reading policy, objects, events, agents: every role.
    Read,
    /// Changing the policy, enrollment tokens: operator, admin.
    Write,
    /// The audit trail: auditor, admin.
    Audit,
    /// Keys, users, agent revocation: admin.
    Admin,
}

/// The permission each Admin method needs (by its gRPC method name). Unknown methods
/// need [`Perm::Admin`].
pub fn permission(method: &str) -> Perm {
    match method {
        "Login" => Perm::Public,
        "WhoAmI" | "Logout" | "ChangePassword" => Perm::Any,
        "GetPolicy"
        | "ListPolicyRevisions"
        | "GetObject"
        | "ListObjects"
        | "Explain"
        | "TestAccess"
        | "QueryEvents"
        | "FollowEvents"
        | "ListAgents" => Perm::Read,
        "ApplyPolicy"
        | "CreateObject"
        | "UpdateObject"
        | "DeleteObject"
        | "CreateEnrollmentToken" => Perm::Write,
        "AuditReport" | "VerifyAudit" => Perm::Audit,
        _ => Perm::Admin,
    }
}

/// Every Admin method and the permission it needs (for documentation and tests).
pub const ADMIN_METHODS: &[&str] = &[
    "ApplyPolicy",
    "GetPolicy",
    "ListPolicyRevisions",
    "GetObject",
    "ListObjects",
    "CreateObject",
    "UpdateObject",
    "DeleteObject",
    "Explain",
    "TestAccess",
    "QueryEvents",
    "FollowEvents",
    "AuditReport",
    "CreateEnrollmentToken",
    "ListAgents",
    "RevokeAgent",
    "VerifyAudit",
    "WhoAmI",
    "Login",
    "CreateApiKey",
    "ListApiKeys",
    "RevokeApiKey",
    "CreateAdminUser",
    "ListAdminUsers",
    "DeleteAdminUser",
    "Logout",
    "ChangePassword",
    "ResetAdminUserTotp",
];

/// An authenticated caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key:NAME` or `user:NAME` (the audit trail's actor).
    pub name: String,
    pub role: Role,
    /// When the credential expires (unix milliseconds).
    pub expires_ms: i64,
    /// The SHA-256 of the secret presented (to re-check it on long-lived streams).
    pub credential: String,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// The peer address of a call (plaintext or TLS), when the transport knows it.
pub fn peer_of(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .map(|a| a.ip())
}

/// How long a Login waits for its turn (see [`crate::state::LoginLimits::in_flight`])
/// before it is refused.
pub const LOGIN_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The bearer secret of an `authorization` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|s| !s.is_empty())
}

// ------------------------------------------------------------------ guard

/// Authenticates and authorizes every call of the wrapped Admin server (see the module
/// docs).
#[derive(Clone)]
pub struct AdminGuard<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> AdminGuard<S> {
    pub fn new(inner: S, state: Arc<State>) -> Self {
        AdminGuard { inner, state }
    }
}

impl<S> std::fmt::Debug for AdminGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminGuard")
    }
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for AdminGuard<S>
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let perm = permission(&method);
        let peer = peer_of(req.extensions());
        // The clone is not necessarily ready: call the one that was polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if perm == Perm::Public {
            // Login: rate-limited before its request is read, then at most
            // `in_flight` are read and handled at once; the others wait unread.
            let gate = match self.state.admit_login(peer) {
                Ok(g) => g,
                Err(e) => {
                    let status = tonic::Status::from(e);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            };
            return Box::pin(async move {
                let permit = tokio::time::timeout(LOGIN_QUEUE_WAIT, gate.acquire_owned()).await;
                let Ok(Ok(_permit)) = permit else {
                    let status = tonic::Status::resource_exhausted(
                        "too many logins in progress: try again later",
                    );
                    return Ok(status.into_http());
                };
                inner.call(req).await
            });
        }
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.state.authorize_call(header, perm, &method, peer) {
            Ok(p) => {
                req.extensions_mut().insert(p);
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(inner.call(req))
    }
}

// ------------------------------------------------------------------ client side

/// A tonic interceptor that sends `authorization: Bearer <secret>`.
#[derive(Clone)]
pub struct BearerAuth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl BearerAuth {
    /// `None` when the secret is not a valid header value.
    pub fn new(secret: &str) -> Option<BearerAuth> {
        let mut v: tonic::metadata::MetadataValue<_> = format!("Bearer {secret}").parse().ok()?;
        v.set_sensitive(true);
        Some(BearerAuth(v))
    }
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(..)")
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// An Admin client that authenticates every call.
pub type AuthedAdminClient = v1::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerAuth>,
>;

/// An Admin client over `channel` sending `secret` (an API key or session token).
pub fn admin_client(channel: tonic::transport::Channel, secret: &str) -> AuthedAdminClient {
    let auth = BearerAuth::new(secret).unwrap_or_else(|| {
        // An unusable secret: send one the controller refuses.
        BearerAuth::new("invalid").unwrap_or_else(|| unreachable!())
    });
    v1::admin_client::AdminClient::with_interceptor(channel, auth)
}

// ------------------------------------------------------------------ passwords

/// Argon2id (default parameters) PHC string of a password.
pub fn hash_password(password: &str) -> Result<String, crate::Error> {
    use argon2::PasswordHasher as _;
    let mut salt_bytes = [0u8; 16];
    crate::fill_random(&mut salt_bytes)?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt_bytes)
        .map_err(|e| crate::Error::Internal(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| crate::Error::Internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches a PHC string from [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::PasswordVerifier as _;
    argon2::password_hash::PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

// ------------------------------------------------------------------ TOTP

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// RFC 4648 base32 (case-insensitive, padding and spaces ignored).
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.chars().filter(|c| *c != '=' && !c.is_whitespace()) {
        let v = B32
            .iter()
            .position(|&b| b as char == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// A new random TOTP secret (20 bytes), base32.
pub fn new_totp_secret() -> Result<String, crate::Error> {
    let mut bytes = [0u8; 20];
    crate::fill_random(&mut bytes)?;
    Ok(base32_encode(&bytes))
}

/// The HOTP value (RFC 4226) of `key` at `counter`, `digits` long.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    use hmac::Mac as _;
    let mut mac = match hmac::Hmac::<sha1::Sha1>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    let v = bin % 10u32.pow(digits);
    format!("{v:0width$}", width = digits as usize)
}

/// TOTP time step (seconds).
pub const TOTP_STEP: i64 = 30;

/// The 6-digit TOTP code of a base32 secret at unix time `t` (RFC 6238, SHA-1, 30 s).
pub fn totp_code(secret_b32: &str, t: i64) -> String {
    let key = base32_decode(secret_b32).unwrap_or_default();
    hotp(&key, (t.div_euclid(TOTP_STEP)) as u64, 6)
}

/// The time step a code is valid in (now, or one step either side for clock skew).
pub fn totp_check(secret_b32: &str, code: &str, now: i64) -> Option<i64> {
    let key = base32_decode(secret_b32)?;
    let step = now.div_euclid(TOTP_STEP);
    let code = code.trim();
    [step, step - 1, step + 1].into_iter().find(|&s| {
        let want = hotp(&key, s as u64, 6);
        // Constant-time comparison.
        want.len() == code.len()
            && want
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits.
        let key = b"12345678901234567890";
        for (t, want) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(hotp(key, t / 30, 8), want);
        }
        let b = base32_encode(key);
        assert_eq!(b, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(base32_decode(&b).as_deref(), Some(&key[..]));
        assert_eq!(totp_code(&b, 59), "287082");
        assert_eq!(totp_check(&b, "287082", 59), Some(1));
        assert_eq!(totp_check(&b, "287082", 59 + 30), Some(1));
        assert_eq!(totp_check(&b, "287082", 59 + 90), None);
    }

    #[test]
    fn roles_and_permissions() {
        assert!(Role::Operator.allows(permission("ApplyPolicy")));
        assert!(!Role::Operator.allows(permission("AuditReport")));
        assert!(Role::Auditor.allows(permission("AuditReport")));
        assert!(!Role::Auditor.allows(permission("ApplyPolicy")));
        assert!(!Role::Operator.allows(permission("CreateApiKey")));
        assert!(!Role::Operator.allows(permission("SomethingNew")));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
    }
}
