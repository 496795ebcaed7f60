//! Persistence: one SQLite file (rusqlite, bundled SQLite) with versioned schema
//! migrations, and the SQL of each aggregate in its own module:
//!
//! * [`policy`]: the policy objects and revision, each host's last compiled view,
//!   generation and recent deltas (one transaction per change, with its audit record);
//! * [`agents`]: enrollment tokens (hashed) and agents (credentials hashed);
//! * [`events`]: connection events, on a connection of their own ([`EventStore`]);
//! * [`audit`]: the admin audit trail, an HMAC chain, and its verification;
//! * [`security`]: API keys (hashed) and admin users (TOTP secrets sealed).
//!
//! This module opens the file (modes, pragmas), migrates it, keys it once, and loads
//! what the in-memory state starts from.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use crate::Error;
use crate::keys::Keys;
use crate::objects::Objects;

pub mod agents;
pub mod audit;
pub mod events;
pub mod policy;
pub mod security;

pub use agents::{AgentChange, AgentRow, Enrolled};
pub use audit::{GENESIS_HASH, audit_hash, record_hash, verify_chain, verify_chain_anchored};
pub use events::EventStore;
pub use policy::{DELTA_HISTORY, DeltaRow, HostRow, HostUpdate};
pub use security::{ApiKeyRow, UserRow};

/// Schema migrations; `schema_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     CREATE TABLE objects (
        position INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
        toml TEXT NOT NULL, UNIQUE (kind, name));
     CREATE TABLE hosts (host TEXT PRIMARY KEY, generation INTEGER NOT NULL, view BLOB NOT NULL);
     CREATE TABLE host_deltas (
        host TEXT NOT NULL, generation INTEGER NOT NULL, base INTEGER NOT NULL,
        delta BLOB NOT NULL, PRIMARY KEY (host, generation));
     CREATE TABLE tokens (
        hash TEXT PRIMARY KEY, host TEXT NOT NULL, created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, used_ms INTEGER);
     CREATE TABLE agents (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, hostname TEXT NOT NULL,
        credential_hash TEXT NOT NULL, enrolled_ms INTEGER NOT NULL,
        acked_generation INTEGER NOT NULL DEFAULT 0, last_seen_ms INTEGER NOT NULL);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL, agent_id TEXT NOT NULL, host TEXT NOT NULL,
        event TEXT NOT NULL, verdict TEXT NOT NULL, user TEXT, device TEXT,
        resource TEXT, data BLOB NOT NULL);
     CREATE INDEX events_time ON events (time_ms);
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL,
        after TEXT NOT NULL, revision INTEGER NOT NULL);",
    // 2: security: the audit hash chain, API keys, admin users, agent revocation.
    // Records written before this migration are chained once, right after it.
    "ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
     CREATE TABLE audit_head (
        one INTEGER PRIMARY KEY CHECK (one = 1), id INTEGER NOT NULL, hash TEXT NOT NULL);
     CREATE TABLE api_keys (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, revoked_ms INTEGER,
        created_by TEXT NOT NULL);
     CREATE TABLE admin_users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        totp_secret TEXT NOT NULL, created_ms INTEGER NOT NULL);
     ALTER TABLE agents ADD COLUMN revoked_ms INTEGER;",
    // 3: keys outside the database: the audit chain becomes an HMAC chain and TOTP
    // secrets are sealed (both done once, right after this migration, with the key);
    // the last accepted TOTP step survives restarts.
    "CREATE TABLE meta_text (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     ALTER TABLE admin_users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT -1;",
    // 4: each agent's registered WireGuard public key (base64; empty for agents enrolled
    // before keys existed).
    "ALTER TABLE agents ADD COLUMN public_key TEXT NOT NULL DEFAULT '';",
];

pub(crate) fn db(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    pub revision: u64,
    pub hosts: Vec<HostRow>,
    pub deltas: Vec<DeltaRow>,
    pub agents: Vec<AgentRow>,
    pub api_keys: Vec<ApiKeyRow>,
    pub users: Vec<UserRow>,
}

/// The SQLite store.
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) keys: Arc<Keys>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Creates `dir` (and its parents) if missing, the last one mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))
}

/// The database file and its companions (`-wal`, `-shm`, `-journal`).
pub fn db_files(path: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        out.push(p.into());
    }
    out
}

/// Opens a connection to the database file, creating it mode 0600 (its folder 0700)
/// when missing. SQLite gives the `-wal` and `-shm` files the mode of the database file;
/// files left looser by older versions are tightened to 0600.
pub(crate) fn connect(path: &Path) -> Result<Connection, Error> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        create_private_dir(dir)?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
    }
    for f in db_files(path) {
        if let Ok(m) = std::fs::metadata(&f)
            && m.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::Internal(format!("chmod 600 {}: {e}", f.display())))?;
        }
    }
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(db)?;
    Ok(conn)
}

/// The fingerprint of the key a database was keyed with (`None`: not keyed yet, or no
/// database).
pub fn key_fingerprint(path: &Path) -> Result<Option<String>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db)?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta_text'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(db)?
        > 0;
    if !has_table {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM meta_text WHERE key = 'key_fingerprint'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(db)
}

impl Store {
    /// Opens (creating if needed) the database, applies pending migrations, and keys it
    /// with `keys` the first time (see `ensure_keyed`). A database keyed with
    /// another key is refused.
    pub fn open(path: &Path, keys: Arc<Keys>) -> Result<Store, Error> {
        let conn = connect(path)?;
        let mut s = Store { conn, keys };
        s.migrate()?;
        s.ensure_keyed()?;
        Ok(s)
    }

    /// The keys of this store.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn migrate(&mut self) -> Result<(), Error> {
        self.conn
            .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(db)?;
        let current: Option<i64> = self
            .conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(db)?;
        let current = current.unwrap_or(0) as usize;
        let chain_legacy = current < 2;
        if current > MIGRATIONS.len() {
            return Err(Error::Internal(format!(
                "database schema version {current} is newer than this controller ({})",
                MIGRATIONS.len()
            )));
        }
        let tx = self.conn.transaction().map_err(db)?;
        for m in &MIGRATIONS[current..] {
            tx.execute_batch(m).map_err(db)?;
        }
        tx.execute("DELETE FROM schema_version", []).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [MIGRATIONS.len() as i64],
        )
        .map_err(db)?;
        if chain_legacy {
            audit::chain_unhashed(&tx, &self.keys)?;
        }
        tx.commit().map_err(db)
    }

    /// Keys the database once: records the key's fingerprint, re-chains the audit trail
    /// with the keyed hash (one record notes the unkeyed head it replaced) and seals the
    /// TOTP secrets stored in clear. Afterwards, checks that the key is the database's.
    fn ensure_keyed(&mut self) -> Result<(), Error> {
        let keys = self.keys.clone();
        let fp: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta_text WHERE key = 'key_fingerprint'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match fp {
            Some(fp) if fp == keys.fingerprint() => Ok(()),
            Some(fp) => Err(Error::Internal(format!(
                "the database was keyed with another key (fingerprint {fp}; this key file's \
                 is {}): give the key file it was initialised with (--key-file)",
                keys.fingerprint()
            ))),
            None => {
                let tx = self.conn.transaction().map_err(db)?;
                audit::key_chain(&tx, &keys)?;
                security::seal_plain_totp_secrets(&tx, &keys)?;
                tx.execute(
                    "INSERT INTO meta_text (key, value) VALUES ('key_fingerprint', ?1)",
                    [keys.fingerprint()],
                )
                .map_err(db)?;
                tx.commit().map_err(db)
            }
        }
    }

    pub fn schema_version(&self) -> Result<i64, Error> {
        self.conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .map_err(db)
    }

    /// Everything the in-memory state starts from.
    pub fn load(&self) -> Result<Loaded, Error> {
        let mut out = Loaded::default();
        self.load_policy(&mut out)?;
        self.load_agents(&mut out)?;
        self.load_security(&mut out)?;
        Ok(out)
    }
}
