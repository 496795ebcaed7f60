//! Persistence: one SQLite file (rusqlite, bundled SQLite) with versioned schema
//! migrations. Holds the policy objects and revision, each host's last compiled view,
//! generation and recent deltas, enrollment tokens (hashed), agents (credentials
//! hashed), connection events and the admin audit records.

use std::path::Path;

use gateway_proto::v1;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};

use crate::Error;
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
];

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
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    pub revision: u64,
    pub hosts: Vec<HostRow>,
    pub deltas: Vec<DeltaRow>,
    pub agents: Vec<AgentRow>,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, Error> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db)?;
        let mut s = Store { conn };
        s.migrate()?;
        Ok(s)
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
        tx.commit().map_err(db)
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
                "SELECT id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms FROM agents ORDER BY enrolled_ms, id",
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
                })
            })
            .map_err(db)?;
        for row in rows {
            out.agents.push(row.map_err(db)?);
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
            insert_audit(&tx, a)?;
        }
        tx.commit().map_err(db)
    }

    pub fn audit(&mut self, a: &Audit) -> Result<(), Error> {
        insert_audit(&self.conn, a)
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
        insert_audit(&tx, audit)?;
        tx.commit().map_err(db)
    }

    /// Consumes a token and records the agent it enrolled, atomically. `Ok(None)`: the
    /// token is unknown, used or expired.
    pub fn enroll(
        &mut self,
        token_hash: &str,
        now_ms: i64,
        make_agent: impl FnOnce(&str) -> AgentRow,
        audit: impl FnOnce(&AgentRow) -> Audit,
    ) -> Result<Option<AgentRow>, Error> {
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
            return Ok(None);
        };
        tx.execute(
            "UPDATE tokens SET used_ms = ?2 WHERE hash = ?1",
            params![token_hash, now_ms],
        )
        .map_err(db)?;
        let a = make_agent(&host);
        tx.execute(
            "INSERT INTO agents (id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                a.id,
                a.host,
                a.hostname,
                a.credential_hash,
                a.enrolled_ms,
                a.acked_generation as i64,
                a.last_seen_ms
            ],
        )
        .map_err(db)?;
        insert_audit(&tx, &audit(&a))?;
        tx.commit().map_err(db)?;
        Ok(Some(a))
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

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<v1::AuditRecord>, Error> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit
                 WHERE time_ms >= ?1 AND time_ms < ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(
                params![since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX), limit],
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
                    })
                },
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

fn insert_audit(conn: &Connection, a: &Audit) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO audit (time_ms, actor, action, target, before, after, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            a.time_ms,
            a.actor,
            a.action,
            a.target,
            a.before,
            a.after,
            a.revision as i64
        ],
    )
    .map_err(db)?;
    Ok(())
}
