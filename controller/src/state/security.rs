//! Admin credentials (API keys, admin users, sessions) and their checks: the [`State`]
//! operations behind `crate::auth`; Login and its bounds in `login`.
//!
//! Keys and users are kept in memory (loaded at start, written through to the store
//! with an audit record in the same transaction; an API key missing from memory is
//! looked up in the store, bounded, so keys minted by `gateway-controller init` on the
//! running controller's database work at once); sessions live in memory only, so a
//! controller restart ends every session (users log in again). Lock order: the main
//! state lock before the credentials lock.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::State;
use super::limits::{Attempts, Buckets, Rate};
use crate::auth::{self, KEY_PREFIX, Perm, Principal, Role, SESSION_PREFIX};
use crate::model::{AdminUserInfo, ApiKeyInfo, AuditEntry};
use crate::store::{ApiKeyRow, UserRow};
use crate::{Error, hash_secret, now_ms, peer_name, shown, try_random_hex};

mod console;
mod login;

pub use login::{LOGIN_WINDOW_MS, LoginLimits, MAX_LOGIN_FAILURES};

/// Default lifetime of an API key and of a session.
pub const DEFAULT_KEY_TTL_SECS: u64 = 90 * 86_400;
pub const MAX_KEY_TTL_SECS: u64 = 2 * 365 * 86_400;
pub const DEFAULT_SESSION_TTL_SECS: u64 = 3600;
/// Minimum password length of admin users.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (hashing cost must not depend on what a caller sends).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// User names whose failure windows are remembered at most.
const ATTEMPTS_CAP: usize = 10_000;
/// Peer addresses whose login buckets are remembered at most.
const PEERS_CAP: usize = 4096;
/// Default event quota of one agent.
pub const DEFAULT_EVENT_RATE: Rate = Rate {
    burst: 50_000.0,
    per_sec: 5_000.0,
};

/// The rate limits and concurrency bounds in front of the expensive or unauthenticated
/// work.
pub(super) struct Guard {
    limits: Mutex<LoginLimits>,
    peers: Mutex<Buckets<IpAddr>>,
    global: Mutex<super::limits::Bucket>,
    argon: Mutex<Arc<tokio::sync::Semaphore>>,
    in_flight: Mutex<Arc<tokio::sync::Semaphore>>,
    event_rate: Mutex<Rate>,
    agents: Mutex<Buckets<String>>,
}

fn lk<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    pub(super) fn new(l: LoginLimits) -> Guard {
        Guard {
            limits: Mutex::new(l),
            peers: Mutex::new(Buckets::new(PEERS_CAP)),
            global: Mutex::new(super::limits::Bucket::full(l.global, now_ms())),
            argon: Mutex::new(Arc::new(tokio::sync::Semaphore::new(
                l.argon_concurrency.max(1),
            ))),
            in_flight: Mutex::new(Arc::new(tokio::sync::Semaphore::new(l.in_flight.max(1)))),
            event_rate: Mutex::new(DEFAULT_EVENT_RATE),
            agents: Mutex::new(Buckets::new(100_000)),
        }
    }

    pub(super) fn take_events(&self, agent: &str, n: usize, now: i64) -> bool {
        let rate = *lk(&self.event_rate);
        lk(&self.agents).take(&agent.to_string(), rate, now, n as f64)
    }

    pub(super) fn event_rate(&self) -> Rate {
        *lk(&self.event_rate)
    }

    pub(super) fn set_event_rate(&self, r: Rate) {
        *lk(&self.event_rate) = r;
    }
}

struct OpenSession {
    user: String,
    role: Role,
    expires_ms: i64,
}

/// How long an API key hash found nowhere (neither in memory nor in the store) is
/// refused without asking the store again.
const KEY_MISS_TTL_MS: i64 = 60_000;
/// Unknown key hashes remembered at most.
const KEY_MISSES_CAP: usize = 10_000;
/// At most one store lookup of an unknown API key per this many milliseconds, whatever
/// the keys presented: random keys cannot make the database work harder than this.
const KEY_LOOKUP_INTERVAL_MS: i64 = 100;

/// In-memory credentials.
pub(super) struct Creds {
    /// By the hash of the secret.
    keys: std::collections::HashMap<String, ApiKeyRow>,
    /// Key hashes the store did not hold either, until when they are refused without a
    /// lookup (the negative cache).
    key_misses: std::collections::HashMap<String, i64>,
    /// When the store may be asked for an unknown key again.
    next_key_lookup_ms: i64,
    users: std::collections::HashMap<String, UserRow>,
    /// By the hash of the token.
    sessions: std::collections::HashMap<String, OpenSession>,
    /// Login attempts (counted before checking) per user name, also unknown ones.
    attempts: Attempts,
}

impl Creds {
    pub(super) fn new(keys: Vec<ApiKeyRow>, users: Vec<UserRow>) -> Creds {
        Creds {
            keys: keys.into_iter().map(|k| (k.hash.clone(), k)).collect(),
            key_misses: std::collections::HashMap::new(),
            next_key_lookup_ms: 0,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            sessions: std::collections::HashMap::new(),
            attempts: Attempts::new(ATTEMPTS_CAP, LOGIN_WINDOW_MS),
        }
    }
}

impl Creds {
    /// Replaces the keys and users with the stored ones (another controller on the
    /// database changed them). Sessions end whose user was deleted or had their role,
    /// password or TOTP secret changed there, as they would have on that controller.
    pub(super) fn reload(&mut self, keys: Vec<ApiKeyRow>, users: Vec<UserRow>) {
        let users: std::collections::HashMap<String, UserRow> =
            users.into_iter().map(|u| (u.name.clone(), u)).collect();
        let same = |a: &UserRow, b: &UserRow| {
            a.role == b.role && a.password_hash == b.password_hash && a.totp_secret == b.totp_secret
        };
        let old = std::mem::take(&mut self.users);
        self.sessions
            .retain(|_, s| match (old.get(&s.user), users.get(&s.user)) {
                (Some(a), Some(b)) => same(a, b),
                _ => false,
            });
        self.users = users;
        self.keys = keys.into_iter().map(|k| (k.hash.clone(), k)).collect();
        self.key_misses.clear();
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
            "invalid {what} name `{}`: 1 to 64 characters of letters, digits, `-_.@`",
            shown(name)
        )))
    }
}

/// A new password's bounds: [`MIN_PASSWORD_LEN`] characters to [`MAX_PASSWORD_LEN`] bytes.
fn check_new_password(password: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::InvalidArgument(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::InvalidArgument(format!(
            "the password must have at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

/// The `otpauth://` URI of a user's TOTP secret, for authenticator apps.
fn otpauth_uri(name: &str, totp_secret: &str) -> String {
    format!(
        "otpauth://totp/zt-gateway:{name}?secret={totp_secret}&issuer=zt-gateway&algorithm=SHA1&digits=6&period=30"
    )
}

/// The user of a session principal (`user:NAME`); an API key cannot do `what`.
fn session_user(p: &Principal, what: &str) -> Result<String, Error> {
    match p.name.strip_prefix("user:") {
        Some(u) => Ok(u.to_string()),
        None => Err(Error::FailedPrecondition(format!(
            "{} is an API key, not a session: only a user logged in with `gatewayctl login` \
             can {what} (revoke a key with `gatewayctl keys revoke`)",
            p.name
        ))),
    }
}

fn key_info(k: &ApiKeyRow) -> ApiKeyInfo {
    ApiKeyInfo {
        name: k.name.clone(),
        role: Role::parse(&k.role),
        created_ms: k.created_ms,
        expires_ms: k.expires_ms,
        revoked_ms: k.revoked_ms,
        created_by: k.created_by.clone(),
    }
}

fn unauth(m: impl Into<String>) -> Error {
    Error::Unauthenticated(m.into())
}

impl State {
    pub(super) fn creds(&self) -> std::sync::MutexGuard<'_, Creds> {
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
    pub fn authorize(&self, header: Option<&str>, perm: Perm) -> Result<Principal, Error> {
        let header = header.ok_or_else(|| {
            unauth("missing credential: send `authorization: Bearer <API key or session token>`")
        })?;
        let secret = auth::bearer(header)
            .ok_or_else(|| unauth("the `authorization` header is not `Bearer <secret>`"))?;
        let hash = hash_secret(secret);
        let p = self.principal_of(secret, &hash)?;
        if p.role.allows(perm) {
            Ok(p)
        } else {
            Err(Error::PermissionDenied(format!(
                "{} has role {}, which may not do this ({perm:?} access needed)",
                p.name, p.role
            )))
        }
    }

    /// [`State::authorize`] for a call of `method` from `peer`; refused credentials and
    /// permission denials are recorded in the audit trail (aggregated).
    pub fn authorize_call(
        &self,
        header: Option<&str>,
        perm: Perm,
        method: &str,
        peer: Option<IpAddr>,
    ) -> Result<Principal, Error> {
        let r = self.authorize(header, perm);
        if let Err(e) = &r {
            let method = shown(method);
            match e {
                Error::PermissionDenied(m) => {
                    let who = self
                        .authorize(header, Perm::Any)
                        .map_or_else(|_| "unknown".into(), |p| p.name);
                    debug!(principal = %who, method = %method, "permission denied");
                    self.refused("permission_denied", who, method, m.clone());
                }
                _ => {
                    // Aggregated per address and reason, whatever the method.
                    debug!(peer = %peer_name(peer), method = %method, reason = %e, "admin call refused");
                    let peer = peer.map_or_else(|| "peer:unknown".into(), |p| format!("peer:{p}"));
                    self.refused(
                        "admin_auth_failure",
                        peer,
                        "admin api".into(),
                        e.to_string(),
                    );
                }
            }
        }
        r
    }

    /// Loads an API key that is not in memory from the store, if it is there: a key
    /// minted by another process on this database (`gateway-controller init` for
    /// break-glass while the controller runs) works at once. Bounded: a hash the store
    /// does not hold is refused without a lookup for [`KEY_MISS_TTL_MS`], and the store
    /// is asked at most once per [`KEY_LOOKUP_INTERVAL_MS`] overall.
    fn load_minted_key(&self, hash: &str) {
        let now = now_ms();
        {
            let mut c = self.creds();
            if c.keys.contains_key(hash)
                || c.key_misses.get(hash).is_some_and(|&until| until > now)
                || now < c.next_key_lookup_ms
            {
                return;
            }
            c.next_key_lookup_ms = now + KEY_LOOKUP_INTERVAL_MS;
        }
        // Lock order: the state lock, then the credentials lock (never both here).
        let found = self.lock().store.api_key_by_hash(hash);
        let mut c = self.creds();
        match found {
            Ok(Some(row)) => {
                info!(
                    key = %row.name,
                    created_by = %row.created_by,
                    "API key minted outside this process loaded from the database"
                );
                c.keys.insert(row.hash.clone(), row);
            }
            Ok(None) => {
                if c.key_misses.len() >= KEY_MISSES_CAP {
                    c.key_misses.retain(|_, until| *until > now);
                    if c.key_misses.len() >= KEY_MISSES_CAP {
                        c.key_misses.clear();
                    }
                }
                c.key_misses.insert(hash.to_string(), now + KEY_MISS_TTL_MS);
            }
            Err(e) => debug!(error = %e, "looking up an API key in the database failed"),
        }
    }

    /// Adds the keys the store holds and memory does not (minted by another process,
    /// see [`State::load_minted_key`]): for listing keys and checking a new key's name.
    /// Takes the state lock; call without the credentials lock.
    fn merge_stored_keys(&self, g: &super::Inner) {
        match g.store.api_keys() {
            Ok(rows) => {
                let mut c = self.creds();
                for row in rows {
                    c.keys.entry(row.hash.clone()).or_insert(row);
                }
            }
            Err(e) => debug!(error = %e, "reading the API keys from the database failed"),
        }
    }

    fn principal_of(&self, secret: &str, hash: &str) -> Result<Principal, Error> {
        if secret.starts_with(KEY_PREFIX) {
            self.load_minted_key(hash);
        }
        let now = now_ms();
        let mut c = self.creds();
        if secret.starts_with(KEY_PREFIX) {
            match c.keys.get(hash) {
                None => Err(unauth("unknown API key")),
                Some(k) if k.revoked_ms.is_some() => {
                    Err(unauth(format!("API key `{}` was revoked", k.name)))
                }
                Some(k) if k.expires_ms <= now => Err(unauth(format!(
                    "API key `{}` expired at {}",
                    k.name,
                    policy_compiler::format_rfc3339(k.expires_ms / 1000)
                ))),
                Some(k) => Ok(Principal {
                    name: format!("key:{}", k.name),
                    role: Role::parse(&k.role)
                        .ok_or_else(|| unauth("API key with an unknown role"))?,
                    expires_ms: k.expires_ms,
                    credential: hash.to_string(),
                }),
            }
        } else if secret.starts_with(SESSION_PREFIX) {
            match c.sessions.get(hash) {
                None => Err(unauth("unknown or ended session: log in again")),
                Some(s) if s.expires_ms <= now => {
                    c.sessions.remove(hash);
                    Err(unauth("the session expired: log in again"))
                }
                Some(s) => Ok(Principal {
                    name: format!("user:{}", s.user),
                    role: s.role,
                    expires_ms: s.expires_ms,
                    credential: hash.to_string(),
                }),
            }
        } else {
            Err(unauth("unknown credential"))
        }
    }

    /// Whether the credential a principal authenticated with is still valid (not
    /// revoked, not expired, its session not ended): long-lived streams check it.
    pub fn recheck(&self, p: &Principal) -> Result<(), Error> {
        let now = now_ms();
        let c = self.creds();
        let ok = if p.name.starts_with("key:") {
            c.keys
                .get(&p.credential)
                .is_some_and(|k| k.revoked_ms.is_none() && k.expires_ms > now)
        } else {
            c.sessions
                .get(&p.credential)
                .is_some_and(|s| s.expires_ms > now)
        };
        if ok {
            Ok(())
        } else {
            Err(unauth(format!(
                "the credential of {} was revoked or expired: the stream ends",
                p.name
            )))
        }
    }

    pub(super) fn audit_now(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: &str,
        after: &str,
    ) -> AuditEntry {
        AuditEntry {
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
    ) -> Result<(String, ApiKeyInfo), Error> {
        valid_name("API key", name)?;
        let secret = format!("{KEY_PREFIX}{}", try_random_hex(32)?);
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
        let mut g = self.lock_synced()?;
        self.merge_stored_keys(&g);
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
        info!(
            key = name,
            role = %role,
            actor,
            expires = %policy_compiler::format_rfc3339(expires_ms / 1000),
            "API key created"
        );
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
    ) -> Result<(String, ApiKeyInfo), Error> {
        if ttl_seconds > MAX_KEY_TTL_SECS {
            return Err(Error::InvalidArgument(format!(
                "ttl_seconds {ttl_seconds}: an API key lives at most {} days ({MAX_KEY_TTL_SECS} \
                 seconds); give a shorter lifetime",
                MAX_KEY_TTL_SECS / 86_400
            )));
        }
        let ttl = if ttl_seconds == 0 {
            DEFAULT_KEY_TTL_SECS
        } else {
            ttl_seconds
        };
        self.create_api_key(name, role, now_ms() + ttl as i64 * 1000, actor)
    }

    /// A new admin API key (for `gateway-controller init` and tests): the secret.
    pub fn bootstrap_admin_key(&self, name: &str) -> Result<String, Error> {
        self.create_api_key_ttl(name, Role::Admin, 0, "local:init")
            .map(|(s, _)| s)
    }

    pub fn list_api_keys(&self) -> Vec<ApiKeyInfo> {
        self.merge_stored_keys(&self.lock());
        let c = self.creds();
        let mut out: Vec<_> = c.keys.values().map(key_info).collect();
        out.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        out
    }

    pub fn revoke_api_key(&self, name: &str, actor: &str) -> Result<(), Error> {
        let now = now_ms();
        let mut g = self.lock_synced()?;
        self.merge_stored_keys(&g);
        let mut c = self.creds();
        let Some(k) = c.keys.values_mut().find(|k| k.name == name) else {
            return Err(Error::NotFound(format!(
                "no API key named `{}`",
                shown(name)
            )));
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
        g.store.revoke_api_key(name, now, &a)?;
        info!(key = name, actor, "API key revoked");
        k.revoked_ms = Some(now);
        Ok(())
    }

    // -------------------------------------------------------------- users, sessions

    /// Creates an interactive admin user; returns the TOTP secret (base32) and its
    /// `otpauth://` URI, shown once. The secret is stored sealed. Blocking (Argon2):
    /// call off the async workers, holding an [`State::argon_permit`].
    pub fn create_admin_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        actor: &str,
    ) -> Result<(String, String), Error> {
        valid_name("user", name)?;
        check_new_password(password)?;
        if self.creds().users.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "a user named `{name}` exists"
            )));
        }
        let password_hash = auth::hash_password(password)?;
        let totp_secret = auth::new_totp_secret()?;
        let row = UserRow {
            name: name.to_string(),
            role: role.as_str().to_string(),
            password_hash,
            totp_secret: self.keys.seal_totp(name, &totp_secret)?,
            created_ms: now_ms(),
            totp_last_step: -1,
        };
        let mut g = self.lock_synced()?;
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
        info!(user = name, role = %role, actor, "admin user created");
        c.users.insert(name.to_string(), row);
        let uri = otpauth_uri(name, &totp_secret);
        Ok((totp_secret, uri))
    }

    pub fn list_admin_users(&self) -> Vec<AdminUserInfo> {
        let c = self.creds();
        let mut out: Vec<_> = c
            .users
            .values()
            .map(|u| AdminUserInfo {
                name: u.name.clone(),
                role: Role::parse(&u.role),
                created_ms: u.created_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes a user, ends their sessions and revokes the API keys they created
    /// (their open streams end within a second).
    pub fn delete_admin_user(&self, name: &str, actor: &str) -> Result<(), Error> {
        let now = now_ms();
        let mut g = self.lock_synced()?;
        let mut c = self.creds();
        let Some(u) = c.users.get(name) else {
            return Err(Error::NotFound(format!("no user named `{}`", shown(name))));
        };
        let mut a = self.audit_now(
            actor,
            "delete_admin_user",
            &format!("user:{name}"),
            &format!("role {}", u.role),
            "",
        );
        a.revision = g.revision;
        let revoked = g.store.delete_user(name, now, &a)?;
        info!(
            user = name,
            actor,
            keys_revoked = revoked.len(),
            "admin user deleted (sessions ended, keys revoked)"
        );
        for k in &revoked {
            info!(key = %k, actor, "API key revoked (its creator was deleted)");
        }
        c.users.remove(name);
        c.sessions.retain(|_, s| s.user != name);
        for k in c.keys.values_mut() {
            if revoked.contains(&k.name) {
                k.revoked_ms = Some(now);
            }
        }
        Ok(())
    }

    /// Ends the caller's own session (Logout). Any role; an API key is
    /// FAILED_PRECONDITION.
    pub fn logout(&self, p: &Principal) -> Result<(), Error> {
        let user = session_user(p, "log out")?;
        let mut g = self.lock();
        let mut c = self.creds();
        if c.sessions.remove(&p.credential).is_none() {
            return Err(unauth("unknown or ended session"));
        }
        let mut a = self.audit_now(&p.name, "logout", "session", "open", "ended");
        a.revision = g.revision;
        if let Err(e) = g.store.audit(&a) {
            tracing::error!(user, error = %e, "recording logout failed");
        }
        info!(user, "logged out (session ended)");
        Ok(())
    }

    /// Changes the caller's own password (ChangePassword): the old one must match
    /// (failures count against the user's login window, see [`MAX_LOGIN_FAILURES`]).
    /// The user's other sessions end; the calling one stays. Returns how many ended.
    /// Blocking (Argon2): call off the async workers, holding an
    /// [`State::argon_permit`].
    pub fn change_password(&self, p: &Principal, old: &str, new: &str) -> Result<u32, Error> {
        let user = session_user(p, "change their password")?;
        check_new_password(new)?;
        if old.len() > MAX_PASSWORD_LEN {
            return Err(Error::InvalidArgument(format!(
                "the old password has more than {MAX_PASSWORD_LEN} bytes"
            )));
        }
        if old == new {
            return Err(Error::InvalidArgument(
                "the new password is the old one: choose a different one".into(),
            ));
        }
        if let Err(ms) = self
            .creds()
            .attempts
            .begin(&user, now_ms(), MAX_LOGIN_FAILURES)
        {
            warn!(
                user,
                reason = "too many failed attempts",
                "password change refused"
            );
            return Err(Error::ResourceExhausted(format!(
                "too many failed attempts for `{user}`: retry in {} s",
                ms / 1000 + 1
            )));
        }
        let row = self
            .creds()
            .users
            .get(&user)
            .cloned()
            .ok_or_else(|| unauth(format!("the user `{user}` no longer exists")))?;
        if !auth::verify_password(old, &row.password_hash) {
            warn!(
                user,
                reason = "wrong old password",
                "password change failed"
            );
            self.refused(
                "password_change_failure",
                p.name.clone(),
                format!("user:{user}"),
                "wrong old password".into(),
            );
            return Err(unauth("the old password is wrong"));
        }
        let hash = auth::hash_password(new)?;
        let mut g = self.lock_synced()?;
        let mut guard = self.creds();
        let c = &mut *guard;
        let Some(u) = c.users.get_mut(&user) else {
            return Err(unauth(format!("the user `{user}` no longer exists")));
        };
        let others = c
            .sessions
            .iter()
            .filter(|(h, s)| s.user == user && **h != p.credential)
            .count();
        let mut a = self.audit_now(
            &p.name,
            "change_password",
            &format!("user:{user}"),
            "",
            &format!("password changed; {others} other sessions ended"),
        );
        a.revision = g.revision;
        g.store.set_user_password(&user, &hash, &a)?;
        u.password_hash = hash;
        c.sessions
            .retain(|h, s| s.user != user || *h == p.credential);
        c.attempts.clear(&user);
        info!(
            user,
            sessions_ended = others,
            "password changed (other sessions ended)"
        );
        Ok(others as u32)
    }

    /// Gives a user a new TOTP secret (ResetAdminUserTotp, admin only) and ends all of
    /// their sessions; returns the secret, its `otpauth://` URI (shown once) and how
    /// many sessions ended.
    pub fn reset_admin_user_totp(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<(String, String, u32), Error> {
        let not_found = || Error::NotFound(format!("no user named `{}`", shown(name)));
        if !self.creds().users.contains_key(name) {
            return Err(not_found());
        }
        let secret = auth::new_totp_secret()?;
        let sealed = self.keys.seal_totp(name, &secret)?;
        let mut g = self.lock_synced()?;
        let mut guard = self.creds();
        let c = &mut *guard;
        let Some(u) = c.users.get_mut(name) else {
            return Err(not_found());
        };
        let ended = c.sessions.values().filter(|s| s.user == name).count();
        let mut a = self.audit_now(
            actor,
            "reset_totp",
            &format!("user:{name}"),
            "",
            &format!("new TOTP secret; {ended} sessions ended"),
        );
        a.revision = g.revision;
        g.store.set_user_totp(name, &sealed, &a)?;
        u.totp_secret = sealed;
        u.totp_last_step = -1;
        c.sessions.retain(|_, s| s.user != name);
        info!(
            user = name,
            actor,
            sessions_ended = ended,
            "admin user TOTP reset (sessions ended)"
        );
        Ok((secret.clone(), otpauth_uri(name, &secret), ended as u32))
    }
}
