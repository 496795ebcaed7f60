//! Persistence: one SQLite file (rusqlite, bundled SQLite) with versioned schema
//! migrations. Holds the policy objects and revision, each host's last compiled view,
//! generation and recent deltas, enrollment tokens (hashed), agents (credentials
//! hashed), connection events and the admin audit records.

use std::path::Path;

use gateway_proto::v1;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};

use std::sync::Arc;

use crate::Error;
use crate::keys::Keys;
use crate::objects::{Kind, Object, Objects};

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
];

/// `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one audit record: HMAC-SHA-256 under the audit key (see
/// [`crate::keys`]), hex, over a length-prefixed encoding of its id, time, actor,
/// action, target, before, after, revision and the previous hash. Without the key file
/// nobody can compute a hash that verifies, so rewriting the database is not enough to
/// rewrite the trail.
#[allow(clippy::too_many_arguments)]
pub fn audit_hash(
    keys: &Keys,
    id: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: &str,
    after: &str,
    revision: u64,
    prev_hash: &str,
) -> String {
    use hmac::Mac as _;
    let mut h = keys.audit_mac();
    h.update(b"ztgw-audit-v2");
    for f in [
        id.to_string().as_str(),
        time_ms.to_string().as_str(),
        actor,
        action,
        target,
        before,
        after,
        revision.to_string().as_str(),
        prev_hash,
    ] {
        h.update(&(f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    crate::hex(&h.finalize().into_bytes())
}

fn record_hash(keys: &Keys, r: &v1::AuditRecord) -> String {
    audit_hash(
        keys,
        r.id,
        r.time_unix_ms,
        &r.actor,
        &r.action,
        &r.target,
        &r.before,
        &r.after,
        r.revision,
        &r.prev_hash,
    )
}

/// Checks an audit chain (records in id order) against its recorded head.
pub fn verify_chain(
    keys: &Keys,
    records: &[v1::AuditRecord],
    head: Option<(u64, String)>,
) -> v1::VerifyAuditResponse {
    let bad = |id: u64, reason: String| v1::VerifyAuditResponse {
        ok: false,
        records: records.len() as u64,
        first_bad_id: Some(id),
        reason,
        head_hash: String::new(),
        expected_head_id: None,
    };
    let mut prev: Option<&v1::AuditRecord> = None;
    for r in records {
        let expected_id = prev.map_or(1, |p| p.id + 1);
        if r.id != expected_id {
            return bad(
                expected_id,
                format!(
                    "record {expected_id} is missing (the chain jumps from {} to {})",
                    expected_id - 1,
                    r.id
                ),
            );
        }
        if record_hash(keys, r) != r.hash {
            return bad(
                r.id,
                format!("record {}: its contents do not match its hash", r.id),
            );
        }
        let want_prev = prev.map_or(GENESIS_HASH, |p| p.hash.as_str());
        if r.prev_hash != want_prev {
            // This record is intact (its hash covers prev_hash), so the one before was
            // rewritten together with its hash.
            return match prev {
                Some(p) => bad(
                    p.id,
                    format!(
                        "record {}: its hash was rewritten (record {} links to another hash)",
                        p.id, r.id
                    ),
                ),
                None => bad(r.id, format!("record {}: does not start the chain", r.id)),
            };
        }
        prev = Some(r);
    }
    let last = prev.map(|p| (p.id, p.hash.clone()));
    match (head, last) {
        (Some((hid, hhash)), Some((lid, lhash))) if hid == lid && hhash == lhash => {}
        (None, None) => {}
        (Some((hid, _)), last) if last.as_ref().is_none_or(|(lid, _)| *lid < hid) => {
            let from = last.map_or(1, |(lid, _)| lid + 1);
            return bad(
                from,
                format!("records {from}..={hid} are missing (the head is record {hid})"),
            );
        }
        (head, last) => {
            let id = last.as_ref().map_or(0, |l| l.0);
            return bad(
                id,
                format!(
                    "record {id}: the chain's end does not match the recorded head ({})",
                    head.map_or_else(|| "none".to_string(), |h| format!("record {}", h.0))
                ),
            );
        }
    }
    v1::VerifyAuditResponse {
        ok: true,
        records: records.len() as u64,
        first_bad_id: None,
        reason: String::new(),
        head_hash: prev.map_or_else(|| GENESIS_HASH.to_string(), |p| p.hash.clone()),
        expected_head_id: None,
    }
}

/// [`verify_chain`], then: the anchored head `expected` (a head hash kept outside the
/// database earlier) must still be in the chain. A chain rewritten or cut since the
/// anchor was taken no longer holds it, even if it was recomputed with the key.
pub fn verify_chain_anchored(
    keys: &Keys,
    records: &[v1::AuditRecord],
    head: Option<(u64, String)>,
    expected: Option<&str>,
) -> v1::VerifyAuditResponse {
    let mut v = verify_chain(keys, records, head);
    let Some(want) = expected.map(str::trim) else {
        return v;
    };
    if !v.ok {
        return v;
    }
    if want == GENESIS_HASH {
        v.expected_head_id = Some(0);
        return v;
    }
    match records.iter().find(|r| r.hash.eq_ignore_ascii_case(want)) {
        Some(r) => v.expected_head_id = Some(r.id),
        None => {
            v.ok = false;
            v.first_bad_id = Some(records.first().map_or(0, |r| r.id));
            v.reason = format!(
                "the anchored head {} is not in the trail: records were rewritten or cut \
                 since it was taken",
                crate::shown(want)
            );
        }
    }
    v
}

/// How many deltas per host are kept for resuming agents.
pub const DELTA_HISTORY: i64 = 64;

fn db(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

/// A host's stored state.
#[derive(Clone, Debug)]
pub struct HostRow {
    pub host: String,
    pub generation: u64,
    pub view: v1::HostView,
}

/// A stored delta: (host, generation, base generation, delta).
pub type DeltaRow = (String, u64, u64, v1::ViewDelta);

#[derive(Clone, Debug)]
pub struct AgentRow {
    pub id: String,
    pub host: String,
    pub hostname: String,
    pub credential_hash: String,
    pub enrolled_ms: i64,
    pub acked_generation: u64,
    pub last_seen_ms: i64,
    pub revoked_ms: Option<i64>,
}

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

/// One host's part of a committed change.
#[derive(Debug)]
pub struct HostUpdate<'a> {
    pub host: &'a str,
    pub generation: u64,
    pub base: u64,
    pub view: &'a v1::HostView,
    pub delta: &'a v1::ViewDelta,
}

/// What an enrollment did.
#[derive(Debug)]
pub enum Enrolled {
    /// The token was consumed for this agent.
    Agent(AgentRow),
    /// The token is unknown, used or expired.
    Unknown,
    /// The token is for another host than the agent said it is (left unused).
    OtherHost,
}

/// An admin audit record to write.
#[derive(Debug, Clone)]
pub struct Audit {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: String,
    pub after: String,
    pub revision: u64,
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
    keys: Arc<Keys>,
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
fn connect(path: &Path) -> Result<Connection, Error> {
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
    /// with `keys` the first time (see [`Store::ensure_keyed`]). A database keyed with
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
            chain_unhashed(&tx, &self.keys)?;
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
                let old_head: Option<(i64, String)> = tx
                    .query_row("SELECT id, hash FROM audit_head WHERE one = 1", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(db)?;
                if let Some((id, hash)) = old_head {
                    rechain(&tx, &keys)?;
                    insert_audit(
                        &tx,
                        &keys,
                        &Audit {
                            time_ms: crate::now_ms(),
                            actor: "local:controller".into(),
                            action: "audit_keyed".into(),
                            target: "audit".into(),
                            before: format!("unkeyed chain, head record {id} hash {hash}"),
                            after: format!("chain keyed (key {})", keys.fingerprint()),
                            revision: 0,
                        },
                    )?;
                }
                let users: Vec<(String, String)> = {
                    let mut st = tx
                        .prepare("SELECT name, totp_secret FROM admin_users")
                        .map_err(db)?;
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(db)?
                        .collect::<Result<_, _>>()
                        .map_err(db)?
                };
                for (name, secret) in users {
                    if !Keys::is_sealed(&secret) {
                        tx.execute(
                            "UPDATE admin_users SET totp_secret = ?2 WHERE name = ?1",
                            params![name, keys.seal_totp(&name, &secret)?],
                        )
                        .map_err(db)?;
                    }
                }
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
        let mut out = Loaded {
            revision: self
                .conn
                .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map_err(db)?
                .unwrap_or(0) as u64,
            ..Loaded::default()
        };
        let mut st = self
            .conn
            .prepare("SELECT kind, name, toml FROM objects ORDER BY position")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })
            .map_err(db)?;
        for row in rows {
            let (kind, name, toml) = row.map_err(db)?;
            let kind = Kind::parse(&kind)
                .ok_or_else(|| Error::Internal(format!("stored object of unknown kind {kind}")))?;
            out.objects.list.push(Object { kind, name, toml });
        }
        let mut st = self
            .conn
            .prepare("SELECT host, generation, view FROM hosts")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (host, generation, blob) = row.map_err(db)?;
            let view = v1::HostView::decode(blob.as_slice())
                .map_err(|e| Error::Internal(format!("stored view of {host}: {e}")))?;
            out.hosts.push(HostRow {
                host,
                generation: generation as u64,
                view,
            });
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT host, generation, base, delta FROM host_deltas ORDER BY host, generation",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (host, g, b, blob) = row.map_err(db)?;
            let d = v1::ViewDelta::decode(blob.as_slice())
                .map_err(|e| Error::Internal(format!("stored delta of {host}: {e}")))?;
            out.deltas.push((host, g as u64, b as u64, d));
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms, revoked_ms FROM agents ORDER BY enrolled_ms, id",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(AgentRow {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    hostname: r.get(2)?,
                    credential_hash: r.get(3)?,
                    enrolled_ms: r.get(4)?,
                    acked_generation: r.get::<_, i64>(5)? as u64,
                    last_seen_ms: r.get(6)?,
                    revoked_ms: r.get(7)?,
                })
            })
            .map_err(db)?;
        for row in rows {
            out.agents.push(row.map_err(db)?);
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT name, role, hash, created_ms, expires_ms, revoked_ms, created_by
                 FROM api_keys ORDER BY created_ms, name",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(ApiKeyRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    hash: r.get(2)?,
                    created_ms: r.get(3)?,
                    expires_ms: r.get(4)?,
                    revoked_ms: r.get(5)?,
                    created_by: r.get(6)?,
                })
            })
            .map_err(db)?;
        for row in rows {
            out.api_keys.push(row.map_err(db)?);
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT name, role, password_hash, totp_secret, created_ms, totp_last_step
                 FROM admin_users ORDER BY name",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    password_hash: r.get(2)?,
                    totp_secret: r.get(3)?,
                    created_ms: r.get(4)?,
                    totp_last_step: r.get(5)?,
                })
            })
            .map_err(db)?;
        for row in rows {
            out.users.push(row.map_err(db)?);
        }
        Ok(out)
    }

    /// Commits one change atomically: objects (when given), revision, host views,
    /// generations and deltas (history pruned), and the audit records.
    pub fn commit(
        &mut self,
        objects: Option<&Objects>,
        revision: u64,
        hosts: &[HostUpdate<'_>],
        audit: &[Audit],
    ) -> Result<(), Error> {
        let tx = self.conn.transaction().map_err(db)?;
        if let Some(objects) = objects {
            tx.execute("DELETE FROM objects", []).map_err(db)?;
            let mut st = tx
                .prepare("INSERT INTO objects (position, kind, name, toml) VALUES (?1, ?2, ?3, ?4)")
                .map_err(db)?;
            for (i, o) in objects.list.iter().enumerate() {
                st.execute(params![i as i64, o.kind.as_str(), o.name, o.toml])
                    .map_err(db)?;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [revision as i64],
        )
        .map_err(db)?;
        for h in hosts {
            tx.execute(
                "INSERT INTO hosts (host, generation, view) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET generation = excluded.generation, view = excluded.view",
                params![h.host, h.generation as i64, h.view.encode_to_vec()],
            )
            .map_err(db)?;
            if h.base != 0 {
                tx.execute(
                    "INSERT OR REPLACE INTO host_deltas (host, generation, base, delta) VALUES (?1, ?2, ?3, ?4)",
                    params![h.host, h.generation as i64, h.base as i64, h.delta.encode_to_vec()],
                )
                .map_err(db)?;
                tx.execute(
                    "DELETE FROM host_deltas WHERE host = ?1 AND generation <= ?2",
                    params![h.host, h.generation as i64 - DELTA_HISTORY],
                )
                .map_err(db)?;
            }
        }
        for a in audit {
            insert_audit(&tx, &self.keys, a)?;
        }
        tx.commit().map_err(db)
    }

    pub fn audit(&mut self, a: &Audit) -> Result<(), Error> {
        let tx = self.conn.transaction().map_err(db)?;
        insert_audit(&tx, &self.keys, a)?;
        tx.commit().map_err(db)
    }

    /// Runs one statement and writes an audit record, atomically; returns the rows
    /// changed.
    pub fn exec_audited(
        &mut self,
        sql: &str,
        args: impl rusqlite::Params,
        audit: &Audit,
    ) -> Result<usize, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        let n = tx.execute(sql, args).map_err(db)?;
        insert_audit(&tx, &self.keys, audit)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }

    pub fn insert_api_key(&mut self, k: &ApiKeyRow, audit: &Audit) -> Result<(), Error> {
        self.exec_audited(
            "INSERT INTO api_keys (name, role, hash, created_ms, expires_ms, revoked_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                k.name,
                k.role,
                k.hash,
                k.created_ms,
                k.expires_ms,
                k.revoked_ms,
                k.created_by
            ],
            audit,
        )
        .map(|_| ())
    }

    pub fn insert_user(&mut self, u: &UserRow, audit: &Audit) -> Result<(), Error> {
        self.exec_audited(
            "INSERT INTO admin_users (name, role, password_hash, totp_secret, created_ms, totp_last_step)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                u.name,
                u.role,
                u.password_hash,
                u.totp_secret,
                u.created_ms,
                u.totp_last_step
            ],
            audit,
        )
        .map(|_| ())
    }

    /// Checks the whole audit chain against the recorded head (and, when given, that
    /// the anchored head `expect_head` is still in it).
    pub fn verify_audit(
        &self,
        expect_head: Option<&str>,
    ) -> Result<v1::VerifyAuditResponse, Error> {
        let records = self.audit_report(None, None, u32::MAX)?;
        Ok(verify_chain_anchored(
            &self.keys,
            &records,
            self.head()?,
            expect_head,
        ))
    }

    /// The recorded head of the audit chain: (record id, hash).
    pub fn head(&self) -> Result<Option<(u64, String)>, Error> {
        self.conn
            .query_row("SELECT id, hash FROM audit_head WHERE one = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()
            .map_err(db)
    }

    /// Records the last accepted TOTP step of a user.
    pub fn set_totp_step(&mut self, user: &str, step: i64) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE admin_users SET totp_last_step = ?2 WHERE name = ?1 AND totp_last_step < ?2",
                params![user, step],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Deletes an admin user and revokes the API keys they created, atomically, with
    /// the audit records; returns the names of the keys revoked.
    pub fn delete_user(
        &mut self,
        name: &str,
        now_ms: i64,
        audit: &Audit,
    ) -> Result<Vec<String>, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute("DELETE FROM admin_users WHERE name = ?1", [name])
            .map_err(db)?;
        let keys: Vec<String> = {
            let mut st = tx
                .prepare(
                    "SELECT name FROM api_keys WHERE created_by = ?1 AND revoked_ms IS NULL ORDER BY name",
                )
                .map_err(db)?;
            st.query_map([format!("user:{name}")], |r| r.get(0))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        insert_audit(&tx, &self.keys, audit)?;
        for k in &keys {
            tx.execute(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1",
                params![k, now_ms],
            )
            .map_err(db)?;
            insert_audit(
                &tx,
                &self.keys,
                &Audit {
                    action: "revoke_api_key".into(),
                    target: format!("api_key:{k}"),
                    before: "active".into(),
                    after: format!("revoked: its creator user:{name} was deleted"),
                    ..audit.clone()
                },
            )?;
        }
        tx.commit().map_err(db)?;
        Ok(keys)
    }

    pub fn insert_token(
        &mut self,
        hash: &str,
        host: &str,
        created_ms: i64,
        expires_ms: i64,
        audit: &Audit,
    ) -> Result<(), Error> {
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute(
            "INSERT INTO tokens (hash, host, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![hash, host, created_ms, expires_ms],
        )
        .map_err(db)?;
        insert_audit(&tx, &self.keys, audit)?;
        tx.commit().map_err(db)
    }

    /// Consumes a token and records the agent it enrolled, atomically. A token that is
    /// unknown, used or expired, or (with `expected_host`) for another host, changes
    /// nothing.
    pub fn enroll(
        &mut self,
        token_hash: &str,
        now_ms: i64,
        expected_host: Option<&str>,
        make_agent: impl FnOnce(&str) -> AgentRow,
        audit: impl FnOnce(&AgentRow) -> Audit,
    ) -> Result<Enrolled, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        let host: Option<String> = tx
            .query_row(
                "SELECT host FROM tokens WHERE hash = ?1 AND used_ms IS NULL AND expires_ms > ?2",
                params![token_hash, now_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let Some(host) = host else {
            return Ok(Enrolled::Unknown);
        };
        if expected_host.is_some_and(|e| e != host) {
            return Ok(Enrolled::OtherHost);
        }
        tx.execute(
            "UPDATE tokens SET used_ms = ?2 WHERE hash = ?1",
            params![token_hash, now_ms],
        )
        .map_err(db)?;
        let a = make_agent(&host);
        tx.execute(
            "INSERT INTO agents (id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms, revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                a.id,
                a.host,
                a.hostname,
                a.credential_hash,
                a.enrolled_ms,
                a.acked_generation as i64,
                a.last_seen_ms,
                a.revoked_ms
            ],
        )
        .map_err(db)?;
        insert_audit(&tx, &self.keys, &audit(&a))?;
        tx.commit().map_err(db)?;
        Ok(Enrolled::Agent(a))
    }

    pub fn update_agent(&mut self, id: &str, acked: u64, last_seen_ms: i64) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE agents SET acked_generation = ?2, last_seen_ms = ?3 WHERE id = ?1",
                params![id, acked as i64, last_seen_ms],
            )
            .map_err(db)?;
        Ok(())
    }

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<v1::AuditRecord>, Error> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, time_ms, actor, action, target, before, after, revision, prev_hash, hash FROM audit
                 WHERE time_ms >= ?1 AND time_ms < ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(
                params![
                    since.unwrap_or(i64::MIN),
                    until.unwrap_or(i64::MAX),
                    i64::from(limit)
                ],
                |r| {
                    Ok(v1::AuditRecord {
                        id: r.get::<_, i64>(0)? as u64,
                        time_unix_ms: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        before: r.get(5)?,
                        after: r.get(6)?,
                        revision: r.get::<_, i64>(7)? as u64,
                        prev_hash: r.get(8)?,
                        hash: r.get(9)?,
                    })
                },
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

/// The connection events, on a connection of their own: ingestion and queries never
/// wait for the policy state (and its lock), and never hold it.
pub struct EventStore {
    conn: Connection,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

impl EventStore {
    /// A second connection to a database [`Store::open`] has prepared.
    pub fn open(path: &Path) -> Result<EventStore, Error> {
        Ok(EventStore {
            conn: connect(path)?,
        })
    }

    /// Stores events; returns them with their ids.
    pub fn insert_events(
        &mut self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<v1::ConnectionEvent>,
    ) -> Result<Vec<v1::StoredEvent>, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(events.len());
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, user, device, resource, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(db)?;
            for ev in events {
                let time_ms = crate::parse_timestamp_ms(&ev.timestamp).unwrap_or(received_ms);
                st.execute(params![
                    time_ms,
                    received_ms,
                    agent_id,
                    ev.host,
                    ev.event,
                    ev.verdict,
                    ev.user,
                    ev.device,
                    ev.resource,
                    ev.encode_to_vec()
                ])
                .map_err(db)?;
                out.push(v1::StoredEvent {
                    id: tx.last_insert_rowid() as u64,
                    time_unix_ms: time_ms,
                    received_unix_ms: received_ms,
                    agent_id: agent_id.to_string(),
                    event: Some(ev),
                });
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    pub fn query_events(
        &self,
        f: &v1::EventFilter,
        limit: u32,
    ) -> Result<Vec<v1::StoredEvent>, Error> {
        let mut sql =
            String::from("SELECT id, time_ms, received_ms, agent_id, data FROM events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut cond = |sql: &mut String, col: &str, op: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {col} {op} ?{}", args.len()));
        };
        use rusqlite::types::Value as SV;
        if let Some(s) = f.since_unix_ms {
            cond(&mut sql, "time_ms", ">=", SV::Integer(s));
        }
        if let Some(u) = f.until_unix_ms {
            cond(&mut sql, "time_ms", "<", SV::Integer(u));
        }
        for (col, v) in [
            ("user", &f.user),
            ("device", &f.device),
            ("resource", &f.resource),
            ("event", &f.event),
            ("verdict", &f.verdict),
            ("host", &f.host),
        ] {
            if let Some(v) = v {
                cond(&mut sql, col, "=", SV::Text(v.clone()));
            }
        }
        sql.push_str(&format!(" ORDER BY time_ms, id LIMIT {limit}"));
        let mut st = self.conn.prepare(&sql).map_err(db)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, t, rcv, agent, data) = row.map_err(db)?;
            out.push(v1::StoredEvent {
                id: id as u64,
                time_unix_ms: t,
                received_unix_ms: rcv,
                agent_id: agent,
                event: v1::ConnectionEvent::decode(data.as_slice()).ok(),
            });
        }
        Ok(out)
    }

    /// Deletes events received before `before_ms`; returns how many.
    pub fn prune_events(&mut self, before_ms: i64) -> Result<usize, Error> {
        self.conn
            .execute("DELETE FROM events WHERE received_ms < ?1", [before_ms])
            .map_err(db)
    }
}

/// Appends an audit record to the chain (inside the caller's transaction): its id
/// follows the last record's, its `prev_hash` is the last record's hash, and the head
/// moves to it.
fn insert_audit(conn: &Connection, keys: &Keys, a: &Audit) -> Result<(), Error> {
    let (last_id, prev) = conn
        .query_row(
            "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(db)?
        .unwrap_or((0, GENESIS_HASH.to_string()));
    let id = last_id + 1;
    let hash = audit_hash(
        keys, id, a.time_ms, &a.actor, &a.action, &a.target, &a.before, &a.after, a.revision, &prev,
    );
    conn.execute(
        "INSERT INTO audit (id, time_ms, actor, action, target, before, after, revision, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id as i64,
            a.time_ms,
            a.actor,
            a.action,
            a.target,
            a.before,
            a.after,
            a.revision as i64,
            prev,
            hash
        ],
    )
    .map_err(db)?;
    conn.execute(
        "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
        params![id as i64, hash],
    )
    .map_err(db)?;
    Ok(())
}

/// Chains the records written before the audit trail had hashes (once, at migration 2):
/// renumbers them 1.. in their order and links them.
fn chain_unhashed(conn: &Connection, keys: &Keys) -> Result<(), Error> {
    let rows: Vec<v1::AuditRecord> = {
        let mut st = conn
            .prepare(
                "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
            )
            .map_err(db)?;
        st.query_map([], |r| {
            Ok(v1::AuditRecord {
                id: r.get::<_, i64>(0)? as u64,
                time_unix_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                before: r.get(5)?,
                after: r.get(6)?,
                revision: r.get::<_, i64>(7)? as u64,
                prev_hash: String::new(),
                hash: String::new(),
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?
    };
    conn.execute("DELETE FROM audit", []).map_err(db)?;
    for r in rows {
        insert_audit(
            conn,
            keys,
            &Audit {
                time_ms: r.time_unix_ms,
                actor: r.actor,
                action: r.action,
                target: r.target,
                before: r.before,
                after: r.after,
                revision: r.revision,
            },
        )?;
    }
    Ok(())
}

/// Recomputes every record's links and hashes with `keys`, in id order (when the
/// database is keyed: the records before were chained without a key).
fn rechain(conn: &Connection, keys: &Keys) -> Result<(), Error> {
    let rows: Vec<v1::AuditRecord> = {
        let mut st = conn
            .prepare(
                "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
            )
            .map_err(db)?;
        st.query_map([], |r| {
            Ok(v1::AuditRecord {
                id: r.get::<_, i64>(0)? as u64,
                time_unix_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                before: r.get(5)?,
                after: r.get(6)?,
                revision: r.get::<_, i64>(7)? as u64,
                prev_hash: String::new(),
                hash: String::new(),
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?
    };
    let mut prev = GENESIS_HASH.to_string();
    let mut last = None;
    for mut r in rows {
        r.prev_hash = prev;
        let hash = record_hash(keys, &r);
        conn.execute(
            "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1",
            params![r.id as i64, r.prev_hash, hash],
        )
        .map_err(db)?;
        last = Some((r.id, hash.clone()));
        prev = hash;
    }
    if let Some((id, hash)) = last {
        conn.execute(
            "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
            params![id as i64, hash],
        )
        .map_err(db)?;
    }
    Ok(())
}
