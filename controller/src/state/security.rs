//! Admin credentials (API keys, admin users, sessions), login with rate limiting, agent
//! revocation and audit verification: the [`State`] operations behind `crate::auth`.
//!
//! Keys and users are kept in memory (loaded at start, written through to the store
//! with an audit record in the same transaction); sessions live in memory only, so a
//! controller restart ends every session (users log in again). Lock order: the main
//! state lock before the credentials lock.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

use gateway_proto::v1;
use rusqlite::params;

use super::State;
use crate::auth::{self, KEY_PREFIX, Perm, Principal, Role, SESSION_PREFIX};
use crate::store::{ApiKeyRow, Audit, UserRow};
use crate::{Error, hash_secret, now_ms, random_hex};

/// Failed logins per user within [`LOGIN_WINDOW_MS`] after which logins are refused.
pub const MAX_LOGIN_FAILURES: usize = 5;
pub const LOGIN_WINDOW_MS: i64 = 60_000;
/// Default lifetime of an API key and of a session.
pub const DEFAULT_KEY_TTL_SECS: u64 = 90 * 86_400;
pub const MAX_KEY_TTL_SECS: u64 = 2 * 365 * 86_400;
pub const DEFAULT_SESSION_TTL_SECS: u64 = 3600;
/// Minimum password length of admin users.
pub const MIN_PASSWORD_LEN: usize = 12;

struct Session {
    user: String,
    role: Role,
    expires_ms: i64,
}

/// In-memory credentials.
#[derive(Default)]
pub(super) struct Creds {
    /// By the hash of the secret.
    keys: HashMap<String, ApiKeyRow>,
    users: HashMap<String, UserRow>,
    /// By the hash of the token.
    sessions: HashMap<String, Session>,
    /// Failed login times per user name (also unknown names).
    failures: HashMap<String, VecDeque<i64>>,
    /// The last TOTP step used per user: a code is accepted once.
    totp_last_step: HashMap<String, i64>,
}

impl Creds {
    pub(super) fn new(keys: Vec<ApiKeyRow>, users: Vec<UserRow>) -> Creds {
        Creds {
            keys: keys.into_iter().map(|k| (k.hash.clone(), k)).collect(),
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            ..Creds::default()
        }
    }
}

fn valid_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {what} name `{name}`: 1 to 64 characters of letters, digits, `-_.@`"
        )))
    }
}

fn key_info(k: &ApiKeyRow) -> v1::ApiKeyInfo {
    v1::ApiKeyInfo {
        name: k.name.clone(),
        role: Role::parse(&k.role).map_or(0, Role::to_wire),
        created_unix_ms: k.created_ms,
        expires_unix_ms: k.expires_ms,
        revoked_unix_ms: k.revoked_ms,
        created_by: k.created_by.clone(),
    }
}

fn unauth(m: impl Into<String>) -> tonic::Status {
    tonic::Status::unauthenticated(m)
}

/// A hash to verify against when the user is unknown (same cost as a real one).
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| auth::hash_password("dummy password never matches").unwrap_or_default())
}

impl State {
    fn creds(&self) -> std::sync::MutexGuard<'_, Creds> {
        self.creds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the lifetime of new admin sessions.
    pub fn set_session_ttl(&self, secs: u64) {
        self.session_ttl_ms.store(
            (secs.max(1) as i64).saturating_mul(1000),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Authenticates a bearer credential (`authorization` header value) and checks that
    /// its role grants `perm`: UNAUTHENTICATED or PERMISSION_DENIED otherwise.
    #[allow(clippy::result_large_err)]
    pub fn authorize(&self, header: Option<&str>, perm: Perm) -> Result<Principal, tonic::Status> {
        let header = header.ok_or_else(|| {
            unauth("missing credential: send `authorization: Bearer <API key or session token>`")
        })?;
        let secret = auth::bearer(header)
            .ok_or_else(|| unauth("the `authorization` header is not `Bearer <secret>`"))?;
        let hash = hash_secret(secret);
        let now = now_ms();
        let p = {
            let mut c = self.creds();
            if secret.starts_with(KEY_PREFIX) {
                match c.keys.get(&hash) {
                    None => return Err(unauth("unknown API key")),
                    Some(k) if k.revoked_ms.is_some() => {
                        return Err(unauth(format!("API key `{}` was revoked", k.name)));
                    }
                    Some(k) if k.expires_ms <= now => {
                        return Err(unauth(format!(
                            "API key `{}` expired at {}",
                            k.name,
                            policy_compiler::format_rfc3339(k.expires_ms / 1000)
                        )));
                    }
                    Some(k) => Principal {
                        name: format!("key:{}", k.name),
                        role: Role::parse(&k.role)
                            .ok_or_else(|| unauth("API key with an unknown role"))?,
                        expires_ms: k.expires_ms,
                    },
                }
            } else if secret.starts_with(SESSION_PREFIX) {
                match c.sessions.get(&hash) {
                    None => return Err(unauth("unknown or ended session: log in again")),
                    Some(s) if s.expires_ms <= now => {
                        c.sessions.remove(&hash);
                        return Err(unauth("the session expired: log in again"));
                    }
                    Some(s) => Principal {
                        name: format!("user:{}", s.user),
                        role: s.role,
                        expires_ms: s.expires_ms,
                    },
                }
            } else {
                return Err(unauth("unknown credential"));
            }
        };
        if p.role.allows(perm) {
            Ok(p)
        } else {
            Err(tonic::Status::permission_denied(format!(
                "{} has role {}, which may not do this ({perm:?} access needed)",
                p.name, p.role
            )))
        }
    }

    fn audit_now(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: &str,
        after: &str,
    ) -> Audit {
        Audit {
            time_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            before: before.to_string(),
            after: after.to_string(),
            revision: 0,
        }
    }

    // -------------------------------------------------------------- API keys

    /// Creates an API key expiring at `expires_ms`; returns the secret (shown once) and
    /// its description.
    pub fn create_api_key(
        &self,
        name: &str,
        role: Role,
        expires_ms: i64,
        actor: &str,
    ) -> Result<(String, v1::ApiKeyInfo), Error> {
        valid_name("API key", name)?;
        let secret = format!("{KEY_PREFIX}{}", random_hex(32));
        let now = now_ms();
        let row = ApiKeyRow {
            name: name.to_string(),
            role: role.as_str().to_string(),
            hash: hash_secret(&secret),
            created_ms: now,
            expires_ms,
            revoked_ms: None,
            created_by: actor.to_string(),
        };
        let mut g = self.lock();
        let mut c = self.creds();
        if c.keys.values().any(|k| k.name == name) {
            return Err(Error::AlreadyExists(format!(
                "an API key named `{name}` exists (names are never reused)"
            )));
        }
        let mut a = self.audit_now(
            actor,
            "create_api_key",
            &format!("api_key:{name}"),
            "",
            &format!(
                "role {role}, expires {}",
                policy_compiler::format_rfc3339(expires_ms / 1000)
            ),
        );
        a.revision = g.revision;
        g.store.insert_api_key(&row, &a)?;
        let info = key_info(&row);
        c.keys.insert(row.hash.clone(), row);
        Ok((secret, info))
    }

    /// [`State::create_api_key`] with a lifetime in seconds (0: the default).
    pub fn create_api_key_ttl(
        &self,
        name: &str,
        role: Role,
        ttl_seconds: u64,
        actor: &str,
    ) -> Result<(String, v1::ApiKeyInfo), Error> {
        let ttl = if ttl_seconds == 0 {
            DEFAULT_KEY_TTL_SECS
        } else {
            ttl_seconds.min(MAX_KEY_TTL_SECS)
        };
        self.create_api_key(name, role, now_ms() + ttl as i64 * 1000, actor)
    }

    /// A new admin API key (for `gateway-controller init` and tests): the secret.
    pub fn bootstrap_admin_key(&self, name: &str) -> Result<String, Error> {
        self.create_api_key_ttl(name, Role::Admin, 0, "local:init")
            .map(|(s, _)| s)
    }

    pub fn list_api_keys(&self) -> Vec<v1::ApiKeyInfo> {
        let c = self.creds();
        let mut out: Vec<_> = c.keys.values().map(key_info).collect();
        out.sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        out
    }

    pub fn revoke_api_key(&self, name: &str, actor: &str) -> Result<(), Error> {
        let now = now_ms();
        let mut g = self.lock();
        let mut c = self.creds();
        let Some(k) = c.keys.values_mut().find(|k| k.name == name) else {
            return Err(Error::NotFound(format!("no API key named `{name}`")));
        };
        if k.revoked_ms.is_some() {
            return Ok(());
        }
        let mut a = self.audit_now(
            actor,
            "revoke_api_key",
            &format!("api_key:{name}"),
            "active",
            "revoked",
        );
        a.revision = g.revision;
        g.store.exec_audited(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1",
            params![name, now],
            &a,
        )?;
        k.revoked_ms = Some(now);
        Ok(())
    }

    // -------------------------------------------------------------- users, sessions

    /// Creates an interactive admin user; returns the TOTP secret (base32) and its
    /// `otpauth://` URI, shown once.
    pub fn create_admin_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        actor: &str,
    ) -> Result<(String, String), Error> {
        valid_name("user", name)?;
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(Error::InvalidArgument(format!(
                "the password must have at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        if self.creds().users.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "a user named `{name}` exists"
            )));
        }
        let password_hash = auth::hash_password(password)?;
        let totp_secret = auth::new_totp_secret();
        let row = UserRow {
            name: name.to_string(),
            role: role.as_str().to_string(),
            password_hash,
            totp_secret: totp_secret.clone(),
            created_ms: now_ms(),
        };
        let mut g = self.lock();
        let mut c = self.creds();
        if c.users.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "a user named `{name}` exists"
            )));
        }
        let mut a = self.audit_now(
            actor,
            "create_admin_user",
            &format!("user:{name}"),
            "",
            &format!("role {role}"),
        );
        a.revision = g.revision;
        g.store.insert_user(&row, &a)?;
        c.users.insert(name.to_string(), row);
        let uri = format!(
            "otpauth://totp/zt-gateway:{name}?secret={totp_secret}&issuer=zt-gateway&algorithm=SHA1&digits=6&period=30"
        );
        Ok((totp_secret, uri))
    }

    pub fn list_admin_users(&self) -> Vec<v1::AdminUserInfo> {
        let c = self.creds();
        let mut out: Vec<_> = c
            .users
            .values()
            .map(|u| v1::AdminUserInfo {
                name: u.name.clone(),
                role: Role::parse(&u.role).map_or(0, Role::to_wire),
                created_unix_ms: u.created_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes a user and ends their sessions.
    pub fn delete_admin_user(&self, name: &str, actor: &str) -> Result<(), Error> {
        let mut g = self.lock();
        let mut c = self.creds();
        let Some(u) = c.users.get(name) else {
            return Err(Error::NotFound(format!("no user named `{name}`")));
        };
        let mut a = self.audit_now(
            actor,
            "delete_admin_user",
            &format!("user:{name}"),
            &format!("role {}", u.role),
            "",
        );
        a.revision = g.revision;
        g.store
            .exec_audited("DELETE FROM admin_users WHERE name = ?1", params![name], &a)?;
        c.users.remove(name);
        c.sessions.retain(|_, s| s.user != name);
        Ok(())
    }

    fn login_failed(&self, user: &str, why: &str) -> Error {
        let now = now_ms();
        self.creds()
            .failures
            .entry(user.to_string())
            .or_default()
            .push_back(now);
        self.record_login("login_failure", user, why);
        Error::Unauthenticated("login failed: wrong user, password or code".into())
    }

    fn record_login(&self, action: &str, user: &str, detail: &str) {
        let mut g = self.lock();
        let mut a = self.audit_now(&format!("user:{user}"), action, "session", "", detail);
        a.revision = g.revision;
        if let Err(e) = g.store.audit(&a) {
            eprintln!("gateway-controller: recording {action}: {e}");
        }
    }

    /// Password + TOTP code -> a session. Blocking (Argon2): call off the async workers.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        code: &str,
    ) -> Result<v1::LoginResponse, Error> {
        let now = now_ms();
        let row = {
            let mut c = self.creds();
            let f = c.failures.entry(user.to_string()).or_default();
            while f.front().is_some_and(|&t| t <= now - LOGIN_WINDOW_MS) {
                f.pop_front();
            }
            if f.len() >= MAX_LOGIN_FAILURES {
                let retry = (f.front().copied().unwrap_or(now) + LOGIN_WINDOW_MS - now) / 1000 + 1;
                drop(c);
                self.record_login("login_failure", user, "rate limited");
                return Err(Error::ResourceExhausted(format!(
                    "too many failed logins for `{user}`: retry in {retry} s"
                )));
            }
            if f.is_empty() {
                c.failures.remove(user);
            }
            c.users.get(user).cloned()
        };
        let Some(row) = row else {
            // Same cost as a known user.
            let _ = auth::verify_password(password, dummy_hash());
            return Err(self.login_failed(user, "unknown user"));
        };
        if !auth::verify_password(password, &row.password_hash) {
            return Err(self.login_failed(user, "wrong password"));
        }
        let Some(step) = auth::totp_check(&row.totp_secret, code, now / 1000) else {
            return Err(self.login_failed(user, "wrong TOTP code"));
        };
        let role = Role::parse(&row.role)
            .ok_or_else(|| Error::Internal(format!("user `{user}` has an unknown role")))?;
        let token = format!("{SESSION_PREFIX}{}", random_hex(32));
        let ttl = self
            .session_ttl_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let expires_ms = now + ttl;
        {
            let mut c = self.creds();
            if c.totp_last_step.get(user).is_some_and(|&s| s >= step) {
                drop(c);
                return Err(self.login_failed(user, "TOTP code already used"));
            }
            if !c.users.contains_key(user) {
                drop(c);
                return Err(self.login_failed(user, "unknown user"));
            }
            c.totp_last_step.insert(user.to_string(), step);
            c.failures.remove(user);
            c.sessions.retain(|_, s| s.expires_ms > now);
            c.sessions.insert(
                hash_secret(&token),
                Session {
                    user: user.to_string(),
                    role,
                    expires_ms,
                },
            );
        }
        self.record_login(
            "login_success",
            user,
            &format!(
                "session until {}",
                policy_compiler::format_rfc3339(expires_ms / 1000)
            ),
        );
        Ok(v1::LoginResponse {
            session_token: token,
            expires_unix_ms: expires_ms,
            role: role.to_wire(),
        })
    }

    // -------------------------------------------------------------- agents, audit

    /// Revokes an agent: its credential stops working and its watch streams end.
    pub fn revoke_agent(&self, id: &str, actor: &str) -> Result<(), Error> {
        let now = now_ms();
        let mut g = self.lock();
        let Some(a) = g.agents.get(id) else {
            return Err(Error::NotFound(format!("no agent `{id}`")));
        };
        if a.revoked_ms.is_some() {
            return Ok(());
        }
        let mut rec = self.audit_now(
            actor,
            "revoke_agent",
            &a.host,
            &format!("agent {} ({})", a.id, a.hostname),
            "revoked",
        );
        rec.revision = g.revision;
        g.store.exec_audited(
            "UPDATE agents SET revoked_ms = ?2 WHERE id = ?1",
            params![id, now],
            &rec,
        )?;
        if let Some(a) = g.agents.get_mut(id) {
            a.revoked_ms = Some(now);
        }
        // Dropping the senders ends the streams.
        for ws in g.watchers.values_mut() {
            ws.retain(|w| w.agent_id != id);
        }
        Ok(())
    }

    /// Checks the audit chain.
    pub fn verify_audit(&self) -> Result<v1::VerifyAuditResponse, Error> {
        self.lock().store.verify_audit()
    }
}
