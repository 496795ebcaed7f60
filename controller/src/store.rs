//! Persistence: SQLite (one file, rusqlite with bundled SQLite; the default) or
//! PostgreSQL (`--db postgres://...`), behind one [`Store`] API. Each backend has its
//! own versioned schema migrations; the statements are shared (see [`sql`]). The SQL of
//! each aggregate is in its own module:
//!
//! * [`policy`]: the policy objects and revision, each host's last compiled view,
//!   generation and recent deltas (one transaction per change, with its audit record);
//! * [`agents`]: enrollment tokens (hashed) and agents (credentials hashed);
//! * [`events`]: connection events, on a connection of their own ([`EventStore`]);
//! * [`audit`]: the admin audit trail, an HMAC chain, and its verification;
//! * [`security`]: API keys (hashed) and admin users (TOTP secrets sealed).
//!
//! This module opens the database (file modes and pragmas for SQLite), migrates it, keys
//! it once, and loads what the in-memory state starts from.
//!
//! On PostgreSQL several controllers may share one database: every change is one
//! transaction (READ COMMITTED), and the two things that must stay linear take a row
//! lock first (`SELECT ... FOR UPDATE`): the policy revision (`meta` row `revision`,
//! checked against the revision the change was made from) and the audit chain's head
//! (`audit_head`), so two controllers never both extend the chain from the same record.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use crate::keys::Keys;
use crate::objects::Objects;
use crate::{Error, vals};

pub mod agents;
pub mod audit;
pub mod events;
pub mod policy;
pub mod security;
pub mod sql;

pub use agents::{AgentChange, AgentRow, Enrolled};
pub use audit::{GENESIS_HASH, audit_hash, record_hash, verify_chain, verify_chain_anchored};
pub use events::EventStore;
pub use policy::{DELTA_HISTORY, DeltaRow, HostRow, HostUpdate, REVISIONS_KEPT, RevisionInfo};
pub use security::{ApiKeyRow, UserRow};
pub use sql::{Backend, Conn, PgUrl, Row, Sql, Value};

/// Where the database is: a SQLite file, or a PostgreSQL database (by URL).
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(Box<PgUrl>),
}

impl Db {
    /// `postgres://...` or `postgresql://...`: PostgreSQL; anything else: a SQLite file.
    pub fn parse(s: &str) -> Result<Db, Error> {
        let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(Db::Postgres(Box::new(PgUrl::parse(s)?)))
        } else if s.is_empty() {
            Err(Error::InvalidArgument(
                "the database is empty: give a SQLite file path or a postgres:// URL".into(),
            ))
        } else {
            Ok(Db::Sqlite(PathBuf::from(s)))
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Db::Sqlite(p) => Some(p),
            Db::Postgres(_) => None,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Conn, Error> {
        match self {
            Db::Sqlite(p) => connect(p).map(Conn::Sqlite),
            Db::Postgres(u) => sql::PgConn::connect(u).map(Conn::Postgres),
        }
    }
}

impl std::str::FromStr for Db {
    type Err = Error;
    fn from_str(s: &str) -> Result<Db, Error> {
        Db::parse(s)
    }
}

/// The file path, or the URL without its password.
impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Db::Sqlite(p) => write!(f, "{}", p.display()),
            Db::Postgres(u) => write!(f, "{u}"),
        }
    }
}

impl From<&Path> for Db {
    fn from(p: &Path) -> Db {
        Db::Sqlite(p.to_path_buf())
    }
}
impl From<PathBuf> for Db {
    fn from(p: PathBuf) -> Db {
        Db::Sqlite(p)
    }
}
impl From<&PathBuf> for Db {
    fn from(p: &PathBuf) -> Db {
        Db::Sqlite(p.clone())
    }
}
impl From<&Db> for Db {
    fn from(d: &Db) -> Db {
        d.clone()
    }
}

/// SQLite's schema migrations; `schema_version` holds how many have been applied.
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
    // 5: the change sequence (see `Store::seq`), and the change that last wrote each
    // host's view and each delta (what a controller catching up reads).
    "INSERT INTO meta (key, value) VALUES ('seq', 0) ON CONFLICT (key) DO NOTHING;
     ALTER TABLE hosts ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE host_deltas ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX hosts_seq ON hosts (seq);
     CREATE INDEX host_deltas_seq ON host_deltas (seq);",
    // 6: an index per event filter the API offers, on (column, time_ms, id): a filtered
    // read of the newest events reads an index's end (see `events::query_sql`).
    "DROP INDEX events_time;
     CREATE INDEX events_time ON events (time_ms, id);
     CREATE INDEX events_user ON events (\"user\", time_ms, id);
     CREATE INDEX events_device ON events (device, time_ms, id);
     CREATE INDEX events_resource ON events (resource, time_ms, id);
     CREATE INDEX events_event ON events (event, time_ms, id);
     CREATE INDEX events_verdict ON events (verdict, time_ms, id);
     CREATE INDEX events_host ON events (host, time_ms, id);",
    // 7: the controller an agent's stream is on (see `agents::record_presence`).
    "ALTER TABLE agents ADD COLUMN connected_to TEXT NOT NULL DEFAULT '';",
    // 8: the policy's text at each revision (the last `policy::REVISIONS_KEPT`), for
    // GetPolicy at a revision and diffs between two.
    "CREATE TABLE IF NOT EXISTS policy_revisions (
        revision INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, text TEXT NOT NULL);",
    // 9: when each agent acknowledged the generation it is at (0: never).
    "ALTER TABLE agents ADD COLUMN acked_ms INTEGER NOT NULL DEFAULT 0;",
];

/// PostgreSQL's schema migrations (a list of its own; `schema_version` as for SQLite).
/// The schema is SQLite's at its migration 4, with PostgreSQL's types; the revision row
/// and the audit head row exist from the start, so that a change can lock them. Names
/// that are listed in order compare bytewise (`COLLATE "C"`), as SQLite's do, and the
/// audit record's free text is kept as bytes (`BYTEA`): PostgreSQL's `TEXT` cannot hold
/// a NUL character, and the chain's hash covers exactly what was recorded.
const PG_MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
     INSERT INTO meta (key, value) VALUES ('revision', 0);
     CREATE TABLE meta_text (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE objects (
        position BIGINT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
        toml TEXT NOT NULL, UNIQUE (kind, name));
     CREATE TABLE hosts (
        host TEXT COLLATE \"C\" PRIMARY KEY, generation BIGINT NOT NULL, view BYTEA NOT NULL);
     CREATE TABLE host_deltas (
        host TEXT COLLATE \"C\" NOT NULL, generation BIGINT NOT NULL, base BIGINT NOT NULL,
        delta BYTEA NOT NULL, PRIMARY KEY (host, generation));
     CREATE TABLE tokens (
        hash TEXT PRIMARY KEY, host TEXT NOT NULL, created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL, used_ms BIGINT);
     CREATE TABLE agents (
        id TEXT COLLATE \"C\" PRIMARY KEY, host TEXT NOT NULL, hostname TEXT NOT NULL,
        credential_hash TEXT NOT NULL, enrolled_ms BIGINT NOT NULL,
        acked_generation BIGINT NOT NULL DEFAULT 0, last_seen_ms BIGINT NOT NULL,
        revoked_ms BIGINT, public_key TEXT NOT NULL DEFAULT '');
     CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL, agent_id TEXT NOT NULL, host TEXT NOT NULL,
        event TEXT NOT NULL, verdict TEXT NOT NULL, \"user\" TEXT, device TEXT,
        resource TEXT, data BYTEA NOT NULL);
     CREATE INDEX events_time ON events (time_ms);
     CREATE TABLE audit (
        id BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, actor BYTEA NOT NULL,
        action BYTEA NOT NULL, target BYTEA NOT NULL, before BYTEA NOT NULL,
        after BYTEA NOT NULL, revision BIGINT NOT NULL, prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL);
     CREATE TABLE audit_head (
        one BIGINT PRIMARY KEY CHECK (one = 1), id BIGINT NOT NULL, hash TEXT NOT NULL);
     INSERT INTO audit_head (one, id, hash) VALUES (1, 0, '');
     CREATE TABLE api_keys (
        name TEXT COLLATE \"C\" PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, revoked_ms BIGINT,
        created_by TEXT NOT NULL);
     CREATE TABLE admin_users (
        name TEXT COLLATE \"C\" PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        totp_secret TEXT NOT NULL, created_ms BIGINT NOT NULL,
        totp_last_step BIGINT NOT NULL DEFAULT -1);",
    // 2: the change sequence (see `Store::seq`), and the change that last wrote each
    // host's view and each delta (what a controller catching up reads).
    "INSERT INTO meta (key, value) VALUES ('seq', 0) ON CONFLICT (key) DO NOTHING;
     ALTER TABLE hosts ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE host_deltas ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
     CREATE INDEX hosts_seq ON hosts (seq);
     CREATE INDEX host_deltas_seq ON host_deltas (seq);",
    // 3: SQLite's 6 (the event filters' indexes).
    "DROP INDEX events_time;
     CREATE INDEX events_time ON events (time_ms, id);
     CREATE INDEX events_user ON events (\"user\", time_ms, id);
     CREATE INDEX events_device ON events (device, time_ms, id);
     CREATE INDEX events_resource ON events (resource, time_ms, id);
     CREATE INDEX events_event ON events (event, time_ms, id);
     CREATE INDEX events_verdict ON events (verdict, time_ms, id);
     CREATE INDEX events_host ON events (host, time_ms, id);",
    // 4: the events table partitioned by the day it was received (UTC): one partition a
    // day, `events_pYYYYMMDD`, created ahead and on demand (`events::EventStore`), and
    // `events_default` for a row no partition takes; retention drops whole days. The
    // rows move over with their ids, and numbering continues where it stopped.
    "DROP INDEX events_time, events_user, events_device, events_resource, events_event,
        events_verdict, events_host;
     ALTER TABLE events RENAME TO events_unpartitioned;
     ALTER TABLE events_unpartitioned DROP CONSTRAINT events_pkey;
     CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY, time_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL, agent_id TEXT NOT NULL, host TEXT NOT NULL,
        event TEXT NOT NULL, verdict TEXT NOT NULL, \"user\" TEXT, device TEXT,
        resource TEXT, data BYTEA NOT NULL, PRIMARY KEY (id, received_ms))
        PARTITION BY RANGE (received_ms);
     CREATE TABLE events_default PARTITION OF events DEFAULT;
     DO $$
     DECLARE day BIGINT;
     BEGIN
        FOR day IN SELECT DISTINCT received_ms / 86400000 * 86400000 FROM events_unpartitioned
                   WHERE received_ms >= 0 LOOP
           EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%s) TO (%s)',
              'events_p' || to_char(to_timestamp(day / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD'),
              day, day + 86400000);
        END LOOP;
        INSERT INTO events (id, time_ms, received_ms, agent_id, host, event, verdict, \"user\",
                            device, resource, data) OVERRIDING SYSTEM VALUE
           SELECT id, time_ms, received_ms, agent_id, host, event, verdict, \"user\", device,
                  resource, data FROM events_unpartitioned;
        EXECUTE format('SELECT setval(%L, last_value, is_called) FROM %s',
           pg_get_serial_sequence('events', 'id'),
           pg_get_serial_sequence('events_unpartitioned', 'id'));
     END $$;
     DROP TABLE events_unpartitioned;
     CREATE INDEX events_time ON events (time_ms, id);
     CREATE INDEX events_user ON events (\"user\", time_ms, id);
     CREATE INDEX events_device ON events (device, time_ms, id);
     CREATE INDEX events_resource ON events (resource, time_ms, id);
     CREATE INDEX events_event ON events (event, time_ms, id);
     CREATE INDEX events_verdict ON events (verdict, time_ms, id);
     CREATE INDEX events_host ON events (host, time_ms, id);",
    // 5: SQLite's 7 (the controller an agent's stream is on).
    "ALTER TABLE agents ADD COLUMN IF NOT EXISTS connected_to TEXT NOT NULL DEFAULT '';",
    // 6: SQLite's 8 (the policy's text at each revision).
    "CREATE TABLE IF NOT EXISTS policy_revisions (
        revision BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, text TEXT NOT NULL);",
    // 7: SQLite's 9 (when each agent acknowledged its generation).
    "ALTER TABLE agents ADD COLUMN IF NOT EXISTS acked_ms BIGINT NOT NULL DEFAULT 0;",
];

/// The advisory lock PostgreSQL controllers take while migrating (one at a time).
const PG_MIGRATION_LOCK: i64 = 0x007a_7467_776d_6967;

/// Which controller runs the singleton jobs (expiry recompiles, event retention, the
/// audit head export): exactly one per database at a time. On SQLite that is the one
/// controller the lock file admits. On PostgreSQL it is the controller whose own
/// connection holds a session advisory lock ([`sql::PgLock`]); when that controller dies or
/// loses its connection the server releases the lock, and another controller takes it at
/// its next [`Leader::lead`] (the jobs run every second, so within about a second).
pub struct Leader {
    inner: std::sync::Mutex<LeaderInner>,
}

enum LeaderInner {
    Always,
    Postgres {
        url: Box<sql::PgUrl>,
        conn: Option<sql::PgLock>,
        held: bool,
    },
}

/// The advisory lock key of the singleton jobs (advisory locks are per database).
const SINGLETON_LOCK: i64 = 0x7a74_6777_6a6f_6273; // "ztgwjobs"

impl Leader {
    pub fn new(db: &Db) -> Leader {
        let inner = match db {
            Db::Sqlite(_) => LeaderInner::Always,
            Db::Postgres(url) => LeaderInner::Postgres {
                url: url.clone(),
                conn: None,
                held: false,
            },
        };
        Leader {
            inner: std::sync::Mutex::new(inner),
        }
    }

    /// Whether this controller runs the singleton jobs now: checks that the lock it holds
    /// is still held (its connection alive), or tries to take it. Blocking (one or two
    /// round trips); logs every change.
    pub fn lead(&self) -> bool {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let LeaderInner::Postgres { url, conn, held } = &mut *g else {
            return true;
        };
        if *held {
            if conn.as_ref().is_some_and(sql::PgLock::alive) {
                return true;
            }
            *held = false;
            *conn = None;
            tracing::warn!(
                database = %url,
                "lost the singleton jobs' lock (its PostgreSQL connection closed): another \
                 controller runs expiry recompiles, event retention and the audit head export"
            );
        }
        // A connection known to be closed is replaced now (no round trip to find out: a
        // broken one that looks open fails `try_take` below and is replaced next time).
        if conn.as_ref().is_some_and(sql::PgLock::is_closed) {
            *conn = None;
        }
        if conn.is_none() {
            match sql::PgLock::connect(url) {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "the singleton jobs' lock: cannot connect");
                    return false;
                }
            }
        }
        match conn.as_ref().map(|c| c.try_take(SINGLETON_LOCK)) {
            Some(Ok(true)) => {
                *held = true;
                tracing::info!(
                    database = %url,
                    "this controller runs the singleton jobs (expiry recompiles, event \
                     retention, the audit head export)"
                );
                true
            }
            Some(Ok(false)) => false,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "the singleton jobs' lock: cannot ask");
                *conn = None;
                false
            }
            None => false,
        }
    }
}

/// Adds one to the change sequence in transaction `tx` (and on PostgreSQL notifies
/// [`CHANGES_CHANNEL`] at commit); returns the new value. With `expect`, the stored
/// sequence must be `expect` (the change was made from the state as of it), else nothing
/// is written: [`Error::Aborted`]. Taking the row serializes the changes of every
/// controller on the database.
pub(crate) fn next_seq(tx: &dyn sql::Sql, expect: Option<u64>) -> Result<u64, Error> {
    let row = match expect {
        Some(e) => tx.query_opt(
            "UPDATE meta SET value = value + 1 WHERE key = 'seq' AND value = ?1 RETURNING value",
            &vals![e as i64],
        )?,
        None => tx.query_opt(
            "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
            &[],
        )?,
    };
    let Some(row) = row else {
        return Err(Error::Aborted(format!(
            "another controller on this database committed a change while this one was \
             making its own (made from change {}): nothing was written; retry",
            expect.unwrap_or_default()
        )));
    };
    if tx.backend() == Backend::Postgres {
        tx.batch(&format!("NOTIFY {CHANGES_CHANNEL}"))?;
    }
    Ok(row.int(0)? as u64)
}

impl Store {
    /// Runs `f` in one transaction that also adds one to the change sequence (see
    /// [`next_seq`]; `checked`: refused when the stored sequence is not [`Store::seq`]).
    /// When nothing else was committed in between, `seq` follows; otherwise the state
    /// catches up at its next sync.
    /// `f` gets the change's sequence number.
    pub(crate) fn changing<T>(
        &mut self,
        checked: bool,
        f: impl FnOnce(&dyn sql::Sql, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let seen = self.seq;
        let (out, new) = self.conn.transaction(|tx| {
            let new = next_seq(tx, checked.then_some(seen))?;
            Ok((f(tx, new)?, new))
        })?;
        if new == seen + 1 {
            self.seq = new;
        }
        Ok(out)
    }
}

/// The advisory lock a PostgreSQL controller holds while it makes a change from its
/// synced state ([`Store::write_lock`]).
const WRITE_LOCK: i64 = 0x7a74_6777_7772_6974; // "ztgwwrit"

impl Store {
    /// On PostgreSQL, waits (at most 10 s) until no other controller on the database is
    /// making a change, and keeps them waiting until [`Store::write_unlock`]: changes
    /// made from a synced state then commit at the first attempt instead of racing (the
    /// change sequence's check stays the guarantee). True when taken; SQLite: nothing
    /// to take (one controller per file).
    pub fn write_lock(&self) -> Result<bool, Error> {
        if self.backend() != Backend::Postgres {
            return Ok(false);
        }
        self.conn
            .sql()
            .batch(&format!(
                "SET lock_timeout = '10s'; SELECT pg_advisory_lock({WRITE_LOCK})"
            ))
            .map_err(|e| match e {
                Error::Internal(m) if m.contains("55P03") => Error::Unavailable(format!(
                    "another controller on {} has been making a change for more than 10 \
                     seconds: nothing was changed; retry",
                    self.label
                )),
                e => e,
            })?;
        Ok(true)
    }

    /// Releases [`Store::write_lock`] (a closed connection released it already).
    pub fn write_unlock(&self) -> Result<(), Error> {
        self.conn
            .sql()
            .batch(&format!("SELECT pg_advisory_unlock({WRITE_LOCK})"))
    }
}

pub(crate) fn db(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The change sequence before anything else was read ([`Store::seq`]).
    pub seq: u64,
    pub objects: Objects,
    pub revision: u64,
    pub hosts: Vec<HostRow>,
    pub deltas: Vec<DeltaRow>,
    pub agents: Vec<AgentRow>,
    pub api_keys: Vec<ApiKeyRow>,
    pub users: Vec<UserRow>,
}

/// The store: a connection to either backend, and the keys.
pub struct Store {
    pub(crate) conn: Conn,
    pub(crate) keys: Arc<Keys>,
    /// The database, for messages (a PostgreSQL URL without its password).
    pub(crate) label: String,
    /// The database's change sequence as of what the in-memory state holds. Every
    /// change another controller must see (policy, views, agents, credentials) adds one
    /// to the stored sequence (`meta` row `seq`) in its own transaction, and on
    /// PostgreSQL sends a notification on [`CHANGES_CHANNEL`] at its commit. A controller
    /// whose `seq` is behind the stored one loads what changed (`State::sync`); a change
    /// made from an older state than the stored one is refused ([`Error::Aborted`]).
    pub(crate) seq: u64,
}

/// The PostgreSQL notification channel of committed changes (a wake-up only: what
/// changed is read from the tables, by sequence, so a notification lost while a listener
/// was disconnected loses nothing).
pub const CHANGES_CHANNEL: &str = "ztgw_changes";

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
pub fn key_fingerprint(target: &Db) -> Result<Option<String>, Error> {
    let path = match target {
        Db::Sqlite(p) => p,
        Db::Postgres(_) => {
            let conn = target.connect()?;
            let c = conn.sql();
            let has_table = c
                .query_opt(
                    "SELECT count(*) FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_name = 'meta_text'",
                    &[],
                )?
                .map_or(Ok(0), |r| r.int(0))?
                > 0;
            if !has_table {
                return Ok(None);
            }
            return c
                .query_opt(
                    "SELECT value FROM meta_text WHERE key = 'key_fingerprint'",
                    &[],
                )?
                .map(|r| r.text(0))
                .transpose();
        }
    };
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
    pub fn open(db: impl Into<Db>, keys: Arc<Keys>) -> Result<Store, Error> {
        let db = db.into();
        let conn = db.connect()?;
        let mut s = Store {
            conn,
            keys,
            label: db.to_string(),
            seq: 0,
        };
        s.migrate()?;
        s.ensure_keyed()?;
        Ok(s)
    }

    /// The keys of this store.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Which backend this store is on.
    pub fn backend(&self) -> Backend {
        self.conn.sql().backend()
    }

    fn migrate(&mut self) -> Result<(), Error> {
        let backend = self.backend();
        let migrations = match backend {
            Backend::Sqlite => MIGRATIONS,
            Backend::Postgres => PG_MIGRATIONS,
        };
        let keys = self.keys.clone();
        let label = self.label.clone();
        if backend == Backend::Sqlite {
            self.conn
                .sql()
                .batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        }
        self.conn.transaction(|tx| {
            if backend == Backend::Postgres {
                // Controllers starting together on one database migrate one at a time.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(?1)",
                    &vals![PG_MIGRATION_LOCK],
                )?;
                tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
            }
            let current = tx
                .query_opt("SELECT version FROM schema_version", &[])?
                .map_or(Ok(0), |r| r.int(0))? as usize;
            if current > migrations.len() {
                return Err(Error::Internal(format!(
                    "{label}: the database's schema version {current} is newer than this \
                     controller's ({}): run the newer controller, or restore a backup",
                    migrations.len()
                )));
            }
            if current == migrations.len() {
                return Ok(());
            }
            for m in &migrations[current..] {
                tx.batch(m)?;
            }
            tx.execute("DELETE FROM schema_version", &[])?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                &vals![migrations.len() as i64],
            )?;
            if backend == Backend::Sqlite && current < 2 {
                audit::chain_unhashed(tx, &keys)?;
            }
            Ok(())
        })
    }

    /// Keys the database once: records the key's fingerprint, re-chains the audit trail
    /// with the keyed hash (one record notes the unkeyed head it replaced) and seals the
    /// TOTP secrets stored in clear. Afterwards, checks that the key is the database's.
    fn ensure_keyed(&mut self) -> Result<(), Error> {
        let keys = self.keys.clone();
        let label = self.label.clone();
        self.conn.transaction(|tx| {
            let fp = tx
                .query_opt(
                    &format!(
                        "SELECT value FROM meta_text WHERE key = 'key_fingerprint'{}",
                        tx.for_update()
                    ),
                    &[],
                )?
                .map(|r| r.text(0))
                .transpose()?;
            match fp {
                Some(fp) if fp == keys.fingerprint() => Ok(()),
                Some(fp) => Err(Error::Internal(format!(
                    "{label} was keyed with another key (fingerprint {fp}; this key file's \
                     is {}): give the key file it was initialised with (--key-file)",
                    keys.fingerprint()
                ))),
                None => {
                    audit::key_chain(tx, &keys)?;
                    security::seal_plain_totp_secrets(tx, &keys)?;
                    tx.execute(
                        "INSERT INTO meta_text (key, value) VALUES ('key_fingerprint', ?1)",
                        &vals![keys.fingerprint()],
                    )?;
                    Ok(())
                }
            }
        })
    }

    pub fn schema_version(&self) -> Result<i64, Error> {
        self.conn
            .sql()
            .query_opt("SELECT version FROM schema_version", &[])?
            .ok_or_else(|| Error::Internal("database: no schema version".into()))?
            .int(0)
    }

    /// The stored change sequence (see [`Store::seq`]).
    pub fn stored_seq(&self) -> Result<u64, Error> {
        Ok(self
            .conn
            .sql()
            .query_opt("SELECT value FROM meta WHERE key = 'seq'", &[])?
            .map_or(Ok(0), |r| r.int(0))? as u64)
    }

    /// Everything the in-memory state starts from; `seq` is read first, so what is
    /// loaded is at least as new as it says.
    pub fn load(&self) -> Result<Loaded, Error> {
        let mut out = Loaded {
            seq: self.stored_seq()?,
            ..Loaded::default()
        };
        self.load_policy(&mut out)?;
        self.load_agents(&mut out)?;
        self.load_security(&mut out)?;
        Ok(out)
    }
}
