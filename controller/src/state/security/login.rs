//! Login: password and TOTP code for a session, bounded before any password is hashed.
//!
//! What an unauthenticated caller of Login can cost: logins per peer address and
//! overall are rate-limited (token buckets, in [`crate::auth::AdminGuard`], before the
//! request is even read), the user name must be a valid name, the attempt is counted
//! against the user's failure window *before* the password is checked (so concurrent
//! attempts cannot slip past the limit), and at most
//! [`LoginLimits::argon_concurrency`] Argon2 computations (19 MiB each) run at once.
//! Failure windows are kept for a bounded number of names; refusals reach the audit
//! trail aggregated.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use tracing::{debug, info, warn};

use super::{MAX_PASSWORD_LEN, OpenSession, PEERS_CAP, lk, valid_name};
use crate::auth::{self, Role, SESSION_PREFIX};
use crate::model::Session;
use crate::state::State;
use crate::state::limits::{Buckets, Rate};
use crate::{Error, hash_secret, now_ms, peer_name, try_random_hex};

/// Failed logins per user within [`LOGIN_WINDOW_MS`] after which logins are refused.
pub const MAX_LOGIN_FAILURES: usize = 5;
pub const LOGIN_WINDOW_MS: i64 = 60_000;

/// Bounds of Login (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoginLimits {
    /// Logins per peer address.
    pub per_peer: Rate,
    /// Logins overall.
    pub global: Rate,
    /// Argon2 computations at once.
    pub argon_concurrency: usize,
    /// Login requests being read and checked at once (the rest wait, unread).
    pub in_flight: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_peer: Rate {
                burst: 20.0,
                per_sec: 0.5,
            },
            global: Rate {
                burst: 60.0,
                per_sec: 5.0,
            },
            argon_concurrency: 2,
            in_flight: 8,
        }
    }
}

/// A hash to verify against when the user is unknown (same cost as a real one).
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| auth::hash_password("dummy password never matches").unwrap_or_default())
}

/// How a login attempt failed (for the audit trail; the caller always gets the same
/// answer).
enum Failure {
    UnknownUser,
    WrongPassword,
    WrongCode,
}

impl State {
    /// Replaces the Login bounds (see [`LoginLimits`]).
    pub fn set_login_limits(&self, l: LoginLimits) {
        let g = &self.guard;
        *lk(&g.limits) = l;
        *lk(&g.global) = crate::state::limits::Bucket::full(l.global, now_ms());
        *lk(&g.peers) = Buckets::new(PEERS_CAP);
        *lk(&g.argon) = Arc::new(tokio::sync::Semaphore::new(l.argon_concurrency.max(1)));
        *lk(&g.in_flight) = Arc::new(tokio::sync::Semaphore::new(l.in_flight.max(1)));
    }

    pub fn login_limits(&self) -> LoginLimits {
        *lk(&self.guard.limits)
    }

    /// Admits a Login from `peer` before its request is read: the peer's and the global
    /// rate limits (RESOURCE_EXHAUSTED beyond them). Returns the semaphore bounding the
    /// Logins in flight, to hold a permit of while the request is handled.
    pub fn admit_login(&self, peer: Option<IpAddr>) -> Result<Arc<tokio::sync::Semaphore>, Error> {
        let now = now_ms();
        let l = self.login_limits();
        let peer_ok = match peer {
            Some(ip) => lk(&self.guard.peers).take(&ip, l.per_peer, now, 1.0),
            None => true,
        };
        let why = if !peer_ok {
            Some("too many logins from this address")
        } else if !lk(&self.guard.global).take(l.global, now, 1.0) {
            Some("too many logins")
        } else {
            None
        };
        if let Some(why) = why {
            // Unbounded by nature (the limit is what bounds the rest): not logged one by
            // one above debug; the audit trail aggregates them.
            debug!(peer = %peer_name(peer), reason = why, "login rate limited");
            self.refused(
                "login_refused",
                peer.map_or_else(|| "peer:unknown".into(), |p| format!("peer:{p}")),
                "session".into(),
                format!("rate limited: {why}"),
            );
            return Err(Error::ResourceExhausted(format!("{why}: try again later")));
        }
        Ok(lk(&self.guard.in_flight).clone())
    }

    /// A permit to compute one Argon2 hash (at most `argon_concurrency` at once).
    pub async fn argon_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        let sem = lk(&self.guard.argon).clone();
        match sem.acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the semaphore is never closed"),
        }
    }

    fn login_failed(&self, user: &str, peer: Option<IpAddr>, why: &str) -> Error {
        warn!(user, peer = %peer_name(peer), reason = why, "login failed");
        self.refused(
            "login_failure",
            format!("user:{user}"),
            "session".into(),
            why.into(),
        );
        Error::Unauthenticated("login failed: wrong user, password or code".into())
    }

    /// Password + TOTP code -> a session. The user name is checked first, the attempt
    /// is counted before the password is, and the Argon2 work waits for a permit (see
    /// the module docs). `peer`: the caller's address, for the audit trail.
    pub async fn login(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        user: &str,
        password: &str,
        code: &str,
    ) -> Result<Session, Error> {
        let who = || peer.map_or_else(|| "peer:unknown".into(), |p| format!("peer:{p}"));
        if let Err(e) = valid_name("user", user) {
            warn!(peer = %peer_name(peer), reason = "invalid user name", "login refused");
            self.refused(
                "login_refused",
                who(),
                "session".into(),
                "invalid user name".into(),
            );
            return Err(e);
        }
        let code = code.trim();
        if password.len() > MAX_PASSWORD_LEN
            || code.len() != 6
            || !code.bytes().all(|b| b.is_ascii_digit())
        {
            warn!(
                user,
                peer = %peer_name(peer),
                reason = "malformed password or code",
                "login refused"
            );
            self.refused(
                "login_refused",
                who(),
                "session".into(),
                "malformed password or code".into(),
            );
            return Err(Error::InvalidArgument(format!(
                "a login needs a password of at most {MAX_PASSWORD_LEN} bytes and a 6-digit code"
            )));
        }
        // Counted before anything is checked: concurrent attempts cannot exceed the
        // limit.
        let begun = self
            .creds()
            .attempts
            .begin(user, now_ms(), MAX_LOGIN_FAILURES);
        if let Err(ms) = begun {
            warn!(
                user,
                peer = %peer_name(peer),
                reason = "too many failed logins",
                "login refused"
            );
            self.refused(
                "login_failure",
                format!("user:{user}"),
                "session".into(),
                "rate limited".into(),
            );
            return Err(Error::ResourceExhausted(format!(
                "too many failed logins for `{user}`: retry in {} s",
                ms / 1000 + 1
            )));
        }
        let row = self.creds().users.get(user).cloned();
        let permit = self.argon_permit().await;
        let (password, code) = (password.to_string(), code.to_string());
        let state = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Some(row) = row else {
                // Same cost as a known user.
                let _ = auth::verify_password(&password, dummy_hash());
                return Err(Failure::UnknownUser);
            };
            if !auth::verify_password(&password, &row.password_hash) {
                return Err(Failure::WrongPassword);
            }
            let secret = state
                .keys
                .open_totp(&row.name, &row.totp_secret)
                .map_err(|_| Failure::WrongCode)?;
            let step =
                auth::totp_check(&secret, &code, now_ms() / 1000).ok_or(Failure::WrongCode)?;
            Ok((row, step))
        })
        .await
        .map_err(|e| Error::Internal(format!("login task failed: {e}")))?;
        let (row, step) = match checked {
            Ok(x) => x,
            Err(Failure::UnknownUser) => return Err(self.login_failed(user, peer, "unknown user")),
            Err(Failure::WrongPassword) => {
                return Err(self.login_failed(user, peer, "wrong password"));
            }
            Err(Failure::WrongCode) => {
                return Err(self.login_failed(user, peer, "wrong TOTP code"));
            }
        };
        let role = Role::parse(&row.role)
            .ok_or_else(|| Error::Internal(format!("user `{user}` has an unknown role")))?;
        let token = format!("{SESSION_PREFIX}{}", try_random_hex(32)?);
        let now = now_ms();
        let ttl = self
            .session_ttl_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let expires_ms = now + ttl;
        {
            let mut g = self.lock();
            let mut c = self.creds();
            let Some(u) = c.users.get_mut(user) else {
                drop(c);
                drop(g);
                return Err(self.login_failed(user, peer, "unknown user"));
            };
            // A code is accepted once, also across restarts (the step is stored).
            // The stored step decides (another controller on the database may have
            // accepted this code a moment ago).
            if u.totp_last_step >= step || !g.store.set_totp_step(user, step)? {
                u.totp_last_step = u.totp_last_step.max(step);
                drop(c);
                drop(g);
                return Err(self.login_failed(user, peer, "TOTP code already used"));
            }
            u.totp_last_step = step;
            c.attempts.clear(user);
            c.sessions.retain(|_, s| s.expires_ms > now);
            c.sessions.insert(
                hash_secret(&token),
                OpenSession {
                    user: user.to_string(),
                    role,
                    expires_ms,
                },
            );
            let mut a = self.audit_now(
                &format!("user:{user}"),
                "login_success",
                "session",
                "",
                &format!(
                    "session until {}",
                    policy_compiler::format_rfc3339(expires_ms / 1000)
                ),
            );
            a.revision = g.revision;
            if let Err(e) = g.store.audit(&a) {
                tracing::error!(user, error = %e, "recording login_success failed");
            }
        }
        info!(
            user,
            peer = %peer_name(peer),
            role = %role,
            expires = %policy_compiler::format_rfc3339(expires_ms / 1000),
            "login succeeded"
        );
        Ok(Session {
            token,
            expires_ms,
            role,
        })
    }
}
