//! The policy's SQL: objects (in policy order) and the revision, each host's last
//! compiled view and generation, and the recent deltas agents resume from. A change is
//! one transaction: objects, revision, views, deltas and its audit record.

use policy_compiler::HostView;
use rusqlite::{OptionalExtension, params};

use super::agents::AgentChange;
use super::audit::insert_audit;
use super::{Loaded, Store, db};
use crate::Error;
use crate::model::{AuditEntry, ViewDelta};
use crate::objects::{Kind, Object, Objects};
use crate::wire;

/// How many deltas per host are kept for resuming agents.
pub const DELTA_HISTORY: i64 = 64;

/// A host's stored state.
#[derive(Clone, Debug)]
pub struct HostRow {
    pub host: String,
    pub generation: u64,
    pub view: HostView,
}

/// A stored delta: (host, generation, base generation, delta).
pub type DeltaRow = (String, u64, u64, ViewDelta);

/// One host's part of a committed change.
#[derive(Debug)]
pub struct HostUpdate<'a> {
    pub host: &'a str,
    pub generation: u64,
    pub base: u64,
    pub view: &'a HostView,
    pub delta: &'a ViewDelta,
}

impl Store {
    /// The policy objects, revision, views and deltas (at start-up).
    pub(super) fn load_policy(&self, out: &mut Loaded) -> Result<(), Error> {
        out.revision = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(db)?
            .unwrap_or(0) as u64;
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
            let view = wire::decode_view(&blob)
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
            let d = wire::decode_delta(&blob)
                .map_err(|e| Error::Internal(format!("stored delta of {host}: {e}")))?;
            out.deltas.push((host, g as u64, b as u64, d));
        }
        Ok(())
    }

    /// Commits one change atomically: the agent change (when given), objects (when
    /// given), revision, host views, generations and deltas (history pruned), and the
    /// audit records.
    pub fn commit(
        &mut self,
        objects: Option<&Objects>,
        revision: u64,
        hosts: &[HostUpdate<'_>],
        audit: &[AuditEntry],
        agent: Option<&AgentChange<'_>>,
    ) -> Result<(), Error> {
        let tx = self.conn.transaction().map_err(db)?;
        if let Some(a) = agent {
            a.apply(&tx)?;
        }
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
                params![h.host, h.generation as i64, wire::encode_view(h.view)],
            )
            .map_err(db)?;
            if h.base != 0 {
                tx.execute(
                    "INSERT OR REPLACE INTO host_deltas (host, generation, base, delta) VALUES (?1, ?2, ?3, ?4)",
                    params![h.host, h.generation as i64, h.base as i64, wire::encode_delta(h.delta)],
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

    /// The text of the last applied policy file (for its comments), if one was stored.
    pub fn applied_text(&self) -> Result<Option<String>, Error> {
        self.conn
            .query_row(
                "SELECT value FROM meta_text WHERE key = 'applied_policy'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// Stores the text of an applied policy file.
    pub fn set_applied_text(&mut self, text: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO meta_text (key, value) VALUES ('applied_policy', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [text],
            )
            .map(|_| ())
            .map_err(db)
    }
}
