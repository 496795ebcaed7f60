//! Console sessions: a random id in a cookie, everything else server-side, in memory
//! (a controller restart ends every console session).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};

use super::{Console, MAX_SESSIONS, Reject};
use crate::auth::Principal;
use crate::{hash_secret, now_ms};

/// One console session.
struct Session {
    /// The API session behind it (`zt-session-…`, never sent to the browser).
    token: String,
    principal: Principal,
    csrf: String,
    created_ms: i64,
    last_ms: i64,
}

/// The open console sessions, by the SHA-256 of their cookie id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

/// Constant-time equality of two secrets.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session cookie's name: `__Host-` prefixed with TLS (a browser then only accepts
/// it secure, host-only, for path `/`).
pub(crate) fn cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-zt-console"
    } else {
        "zt-console"
    }
}

/// The login form's anti-CSRF cookie (double submit, before there is a session).
pub(crate) fn login_cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-zt-console-login"
    } else {
        "zt-console-login"
    }
}

/// A `Set-Cookie` value with the console's attributes (`max_age` 0: delete it).
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age.map_or_else(String::new, |a| format!("; Max-Age={a}"));
    format!("{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/{age}")
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Sessions {
    /// Opens a session for `principal` (whose API session token is `token`): the
    /// cookie id to send (shown once; kept only as its hash).
    pub(crate) fn open(&self, token: String, principal: Principal) -> Result<String, crate::Error> {
        let id = crate::try_random_hex(32)?;
        let csrf = crate::try_random_hex(32)?;
        let now = now_ms();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            hash_secret(&id),
            Session {
                token,
                principal,
                csrf,
                created_ms: now,
                last_ms: now,
            },
        );
        Ok(id)
    }

    /// The API session token and CSRF token of the request's valid session, its idle
    /// clock restarted; a session past its re-authentication interval or idle timeout
    /// ends (and its API session with it): to the login page, saying why.
    pub(crate) fn check(
        &self,
        console: &Console,
        headers: &HeaderMap,
    ) -> Result<(String, String), Reject> {
        let tls = console.opts.tls.is_some();
        let id = cookie(headers, cookie_name(tls)).ok_or(Reject::Login("none"))?;
        let key = hash_secret(id);
        let now = now_ms();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let s = open.get_mut(&key).ok_or(Reject::Login("ended"))?;
        let why = if now - s.created_ms >= console.opts.reauth.as_millis() as i64 {
            Some(("reauth", "re-authentication interval reached"))
        } else if now - s.last_ms >= console.opts.idle.as_millis() as i64 {
            Some(("idle", "idle timeout"))
        } else {
            None
        };
        if let Some((code, why)) = why {
            if let Some(s) = open.remove(&key) {
                drop(open);
                console.state.end_console_session(&s.principal, why);
            }
            return Err(Reject::Login(code));
        }
        s.last_ms = now;
        Ok((s.token.clone(), s.csrf.clone()))
    }

    /// Whether the request's session is still open, within its re-authentication
    /// interval and not idle (a live stream ends when it is not; a stream does not
    /// restart the idle clock: the user's requests do).
    pub(crate) fn alive(&self, console: &Console, headers: &HeaderMap) -> bool {
        let Some(id) = cookie(headers, cookie_name(console.opts.tls.is_some())) else {
            return false;
        };
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        open.get(&hash_secret(id)).is_some_and(|s| {
            now - s.created_ms < console.opts.reauth.as_millis() as i64
                && now - s.last_ms < console.opts.idle.as_millis() as i64
        })
    }

    /// Ends the request's session (logout): its principal, to end the API session.
    pub(crate) fn remove(&self, headers: &HeaderMap) -> Option<Principal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        ["__Host-zt-console", "zt-console"]
            .iter()
            .filter_map(|n| cookie(headers, n))
            .find_map(|id| open.remove(&hash_secret(id)))
            .map(|s| s.principal)
    }
}
