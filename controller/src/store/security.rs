//! The admin credentials' SQL: API keys (the secret only as its hash) and admin users
//! (Argon2id password hashes, TOTP secrets sealed with the controller key, the last
//! accepted TOTP step).

use super::audit::insert_audit;
use super::{Loaded, Row, Sql, Store};
use crate::keys::Keys;
use crate::model::AuditEntry;
use crate::{Error, vals};

/// A stored API key (the secret only as its hash).
#[derive(Clone, Debug)]
pub struct ApiKeyRow {
    pub name: String,
    pub role: String,
    pub hash: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub created_by: String,
}

/// An interactive admin user.
#[derive(Clone)]
pub struct UserRow {
    pub name: String,
    pub role: String,
    /// Argon2id, PHC string.
    pub password_hash: String,
    /// The TOTP secret as stored: sealed with the TOTP key (see [`crate::keys`]).
    pub totp_secret: String,
    pub created_ms: i64,
    /// The last TOTP time step accepted (-1: none): a code is accepted once, also
    /// across restarts.
    pub totp_last_step: i64,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An `api_keys` row selected as name, role, hash, created_ms, expires_ms, revoked_ms,
/// created_by.
fn api_key_row(r: &Row) -> Result<ApiKeyRow, Error> {
    Ok(ApiKeyRow {
        name: r.text(0)?,
        role: r.text(1)?,
        hash: r.text(2)?,
        created_ms: r.int(3)?,
        expires_ms: r.int(4)?,
        revoked_ms: r.opt_int(5)?,
        created_by: r.text(6)?,
    })
}

impl Store {
    /// Every API key and admin user (at start-up).
    pub(super) fn load_security(&self, out: &mut Loaded) -> Result<(), Error> {
        out.api_keys = self.api_keys()?;
        out.users = self.users()?;
        Ok(())
    }

    /// Every admin user, as stored.
    pub fn users(&self) -> Result<Vec<UserRow>, Error> {
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT name, role, password_hash, totp_secret, created_ms, totp_last_step
             FROM admin_users ORDER BY name",
            &[],
        )? {
            out.push(UserRow {
                name: r.text(0)?,
                role: r.text(1)?,
                password_hash: r.text(2)?,
                totp_secret: r.text(3)?,
                created_ms: r.int(4)?,
                totp_last_step: r.int(5)?,
            });
        }
        Ok(out)
    }

    /// Every API key (revoked ones too), oldest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRow>, Error> {
        self.conn
            .sql()
            .query(
                "SELECT name, role, hash, created_ms, expires_ms, revoked_ms, created_by
                 FROM api_keys ORDER BY created_ms, name",
                &[],
            )?
            .iter()
            .map(api_key_row)
            .collect()
    }

    /// The API key with this hash, if any (a key minted by another process on this
    /// database, e.g. `gateway-controller init` while the controller runs).
    pub fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRow>, Error> {
        self.conn
            .sql()
            .query_opt(
                "SELECT name, role, hash, created_ms, expires_ms, revoked_ms, created_by
                 FROM api_keys WHERE hash = ?1",
                &vals![hash],
            )?
            .as_ref()
            .map(api_key_row)
            .transpose()
    }

    pub fn insert_api_key(&mut self, k: &ApiKeyRow, audit: &AuditEntry) -> Result<(), Error> {
        self.exec_audited(
            "INSERT INTO api_keys (name, role, hash, created_ms, expires_ms, revoked_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &vals![
                &k.name,
                &k.role,
                &k.hash,
                k.created_ms,
                k.expires_ms,
                k.revoked_ms,
                &k.created_by
            ],
            audit,
        )
        .map(|_| ())
    }

    pub fn insert_user(&mut self, u: &UserRow, audit: &AuditEntry) -> Result<(), Error> {
        self.exec_audited(
            "INSERT INTO admin_users (name, role, password_hash, totp_secret, created_ms, totp_last_step)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &vals![
                &u.name,
                &u.role,
                &u.password_hash,
                &u.totp_secret,
                u.created_ms,
                u.totp_last_step
            ],
            audit,
        )
        .map(|_| ())
    }

    /// Revokes an API key, with its audit record.
    pub fn revoke_api_key(
        &mut self,
        name: &str,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.exec_audited(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1",
            &vals![name, now_ms],
            audit,
        )
        .map(|_| ())
    }

    /// Replaces a user's password hash, with its audit record.
    pub fn set_user_password(
        &mut self,
        name: &str,
        password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.exec_audited(
            "UPDATE admin_users SET password_hash = ?2 WHERE name = ?1",
            &vals![name, password_hash],
            audit,
        )
        .map(|_| ())
    }

    /// Replaces a user's (sealed) TOTP secret and forgets the last accepted step, with
    /// its audit record.
    pub fn set_user_totp(
        &mut self,
        name: &str,
        sealed_secret: &str,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.exec_audited(
            "UPDATE admin_users SET totp_secret = ?2, totp_last_step = -1 WHERE name = ?1",
            &vals![name, sealed_secret],
            audit,
        )
        .map(|_| ())
    }

    /// Records the last accepted TOTP step of a user; false when the stored step is
    /// this one or later already (the code was accepted before, perhaps by another
    /// controller on this database): the code must then be refused.
    pub fn set_totp_step(&mut self, user: &str, step: i64) -> Result<bool, Error> {
        Ok(self.conn.sql().execute(
            "UPDATE admin_users SET totp_last_step = ?2 WHERE name = ?1 AND totp_last_step < ?2",
            &vals![user, step],
        )? == 1)
    }

    /// Deletes an admin user and revokes the API keys they created, atomically, with
    /// the audit records; returns the names of the keys revoked.
    pub fn delete_user(
        &mut self,
        name: &str,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<Vec<String>, Error> {
        let keys = self.keys.clone();
        self.changing(false, |tx, _| {
            tx.execute("DELETE FROM admin_users WHERE name = ?1", &vals![name])?;
            let revoked: Vec<String> = tx
                .query(
                    "SELECT name FROM api_keys WHERE created_by = ?1 AND revoked_ms IS NULL ORDER BY name",
                    &vals![format!("user:{name}")],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            insert_audit(tx, &keys, audit)?;
            for k in &revoked {
                tx.execute(
                    "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1",
                    &vals![k, now_ms],
                )?;
                insert_audit(
                    tx,
                    &keys,
                    &AuditEntry {
                        action: "revoke_api_key".into(),
                        target: format!("api_key:{k}"),
                        before: "active".into(),
                        after: format!("revoked: its creator user:{name} was deleted"),
                        ..audit.clone()
                    },
                )?;
            }
            Ok(revoked)
        })
    }
}

/// Seals the TOTP secrets stored in clear (once, when the database is keyed).
pub(super) fn seal_plain_totp_secrets(tx: &dyn Sql, keys: &Keys) -> Result<(), Error> {
    let users = tx.query("SELECT name, totp_secret FROM admin_users", &[])?;
    for r in users {
        let (name, secret) = (r.text(0)?, r.text(1)?);
        if !Keys::is_sealed(&secret) {
            tx.execute(
                "UPDATE admin_users SET totp_secret = ?2 WHERE name = ?1",
                &vals![&name, keys.seal_totp(&name, &secret)?],
            )?;
        }
    }
    Ok(())
}
