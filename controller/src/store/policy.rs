//! The policy's SQL: objects (in policy order) and the revision, each host's last
//! compiled view and generation, and the recent deltas agents resume from. A change is
//! one transaction: objects, revision, views, deltas and its audit record.

use super::Loaded;
use super::Store;
use super::agents::AgentChange;
use super::audit::insert_audit;
use super::sql::{Value, insert_rows};
use crate::model::{AuditEntry, ViewDelta};
use crate::objects::{Kind, Object, Objects};
use crate::wire;
use crate::{Error, vals};
use policy_compiler::HostView;

/// How many deltas per host are kept for resuming agents.
pub const DELTA_HISTORY: i64 = 64;

/// How many policy revisions keep their text (GetPolicy at a revision, diffs): the
/// newest ones; older texts are deleted as new revisions are written.
pub const REVISIONS_KEPT: u64 = 100;

/// A kept policy revision (without its text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionInfo {
    pub revision: u64,
    /// When it was made (unix ms).
    pub time_ms: i64,
    /// Who made it (the audit actor: `user:NAME`, `key:NAME`, ...); empty for a
    /// revision recorded at an upgrade.
    pub actor: String,
    /// The change that made it (the audit action: `apply_policy`, `update_object`, ...).
    pub action: String,
    /// The text's length in bytes.
    pub bytes: u64,
}

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
        self.load_objects(out)?;
        let c = self.conn.sql();
        for r in c.query(
            "SELECT host, generation, view FROM hosts ORDER BY host",
            &[],
        )? {
            let (host, generation, blob) = (r.text(0)?, r.int(1)?, r.blob(2)?);
            let view = wire::decode_view(&blob)
                .map_err(|e| Error::Internal(format!("stored view of {host}: {e}")))?;
            out.hosts.push(HostRow {
                host,
                generation: generation as u64,
                view,
            });
        }
        for r in c.query(
            "SELECT host, generation, base, delta FROM host_deltas ORDER BY host, generation",
            &[],
        )? {
            let (host, g, b, blob) = (r.text(0)?, r.int(1)?, r.int(2)?, r.blob(3)?);
            let d = wire::decode_delta(&blob)
                .map_err(|e| Error::Internal(format!("stored delta of {host}: {e}")))?;
            out.deltas.push((host, g as u64, b as u64, d));
        }
        Ok(())
    }

    /// Commits one change atomically: the agent change (when given), objects (when
    /// given), revision, host views, generations and deltas (history pruned), and the
    /// audit records, and the text of an applied policy file (when given, kept for its
    /// comments). It must be made from the stored state: when another controller on
    /// this database committed a change since this one's state was loaded (the change
    /// sequence moved, [`Store::seq`]), nothing is written ([`Error::Aborted`]); so is it
    /// when the stored revision is not `base_revision`. `revision_text`: the policy's
    /// text at `revision` (given when the objects changed), kept with the first audit
    /// entry's time, actor and action ([`REVISIONS_KEPT`] revisions are kept).
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        objects: Option<&Objects>,
        base_revision: u64,
        revision: u64,
        hosts: &[HostUpdate<'_>],
        audit: &[AuditEntry],
        agent: Option<&AgentChange<'_>>,
        applied: Option<&str>,
        revision_text: Option<&str>,
    ) -> Result<(), Error> {
        let keys = self.keys.clone();
        // The change sequence's row is taken first and checked against the state this
        // change was made from (`changing(true, ..)`): changes from several controllers on
        // one database are committed one after the other, each made from what the one
        // before left.
        self.changing(true, |tx, seq| {
            let stored = tx
                .query_opt(
                    &format!(
                        "SELECT value FROM meta WHERE key = 'revision'{}",
                        tx.for_update()
                    ),
                    &[],
                )?
                .map_or(Ok(0), |r| r.int(0))? as u64;
            if stored != base_revision {
                return Err(Error::FailedPrecondition(format!(
                    "the policy is at revision {stored} in the database, not {base_revision}: \
                     another controller changed it; reload it and retry"
                )));
            }
            if let Some(a) = agent {
                a.apply(tx)?;
            }
            if let Some(objects) = objects {
                tx.execute("DELETE FROM objects", &[])?;
                let rows: Vec<Value> = objects
                    .list
                    .iter()
                    .enumerate()
                    .flat_map(|(i, o)| vals![i as i64, o.kind.as_str(), &o.name, &o.toml])
                    .collect();
                insert_rows(tx, "INSERT INTO objects (position, kind, name, toml)", "", 4, &rows)?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('revision', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &vals![revision as i64],
            )?;
            // Many hosts change at once (a grant to a large group): rows go in by the
            // hundred, not one round trip each.
            let views: Vec<Value> = hosts
                .iter()
                .flat_map(|h| {
                    vals![h.host, h.generation as i64, wire::encode_view(h.view), seq as i64]
                })
                .collect();
            insert_rows(
                tx,
                "INSERT INTO hosts (host, generation, view, seq)",
                "ON CONFLICT (host) DO UPDATE SET generation = excluded.generation,
                    view = excluded.view, seq = excluded.seq",
                4,
                &views,
            )?;
            let moved: Vec<&HostUpdate<'_>> = hosts.iter().filter(|h| h.base != 0).collect();
            let deltas: Vec<Value> = moved
                .iter()
                .flat_map(|h| {
                    vals![
                        h.host,
                        h.generation as i64,
                        h.base as i64,
                        wire::encode_delta(h.delta),
                        seq as i64
                    ]
                })
                .collect();
            insert_rows(
                tx,
                "INSERT INTO host_deltas (host, generation, base, delta, seq)",
                "ON CONFLICT (host, generation) DO UPDATE SET base = excluded.base,
                    delta = excluded.delta, seq = excluded.seq",
                5,
                &deltas,
            )?;
            // The history kept: each host's last DELTA_HISTORY deltas (its generation
            // was written just above).
            let names: Vec<Value> = moved.iter().map(|h| Value::from(h.host)).collect();
            let mut at = 0;
            for n in super::sql::chunk_sizes(names.len(), 128) {
                let list = (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                tx.execute(
                    &format!(
                        "DELETE FROM host_deltas WHERE host IN ({list}) AND generation <=
                         (SELECT h.generation FROM hosts h WHERE h.host = host_deltas.host) - {DELTA_HISTORY}"
                    ),
                    &names[at..at + n],
                )?;
                at += n;
            }
            if let Some(text) = applied {
                tx.execute(
                    "INSERT INTO meta_text (key, value) VALUES ('applied_policy', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &vals![text],
                )?;
            }
            if let Some(text) = revision_text {
                let (time_ms, actor, action) = audit.first().map_or((0, "", ""), |a| {
                    (a.time_ms, a.actor.as_str(), a.action.as_str())
                });
                insert_revision(tx, revision, time_ms, actor, action, text)?;
            }
            for a in audit {
                insert_audit(tx, &keys, a)?;
            }
            Ok(())
        })
    }

    /// Keeps the text of `revision` when none is kept (a database from before revisions
    /// were kept, at start-up): nothing is replaced.
    pub fn keep_revision(&mut self, revision: u64, time_ms: i64, text: &str) -> Result<(), Error> {
        self.conn.sql().execute(
            "INSERT INTO policy_revisions (revision, time_ms, actor, action, text)
             VALUES (?1, ?2, '', 'kept_at_upgrade', ?3) ON CONFLICT (revision) DO NOTHING",
            &vals![revision as i64, time_ms, text],
        )?;
        Ok(())
    }

    /// The kept revisions, newest first: at most `limit`, those below `before` when
    /// it is not 0.
    pub fn revisions(&self, before: u64, limit: u32) -> Result<Vec<RevisionInfo>, Error> {
        let before = if before == 0 {
            i64::MAX
        } else {
            before.min(i64::MAX as u64) as i64
        };
        let c = self.conn.sql();
        let bytes = match c.backend() {
            super::sql::Backend::Sqlite => "length(CAST(text AS BLOB))",
            super::sql::Backend::Postgres => "octet_length(text)",
        };
        c.query(
            &format!(
                "SELECT revision, time_ms, actor, action, {bytes} FROM policy_revisions
                 WHERE revision < ?1 ORDER BY revision DESC LIMIT ?2"
            ),
            &vals![before, i64::from(limit)],
        )?
        .into_iter()
        .map(|r| {
            Ok(RevisionInfo {
                revision: r.int(0)? as u64,
                time_ms: r.int(1)?,
                actor: r.text(2)?,
                action: r.text(3)?,
                bytes: r.int(4)? as u64,
            })
        })
        .collect()
    }

    /// The text of a kept revision.
    pub fn revision_text(&self, revision: u64) -> Result<Option<String>, Error> {
        if revision > i64::MAX as u64 {
            return Ok(None);
        }
        self.conn
            .sql()
            .query_opt(
                "SELECT text FROM policy_revisions WHERE revision = ?1",
                &vals![revision as i64],
            )?
            .map(|r| r.text(0))
            .transpose()
    }

    /// The objects (in policy order) and the revision.
    pub fn objects(&self) -> Result<(u64, Objects), Error> {
        let mut out = Loaded::default();
        self.load_objects(&mut out)?;
        Ok((out.revision, out.objects))
    }

    fn load_objects(&self, out: &mut Loaded) -> Result<(), Error> {
        let c = self.conn.sql();
        out.revision = c
            .query_opt("SELECT value FROM meta WHERE key = 'revision'", &[])?
            .map_or(Ok(0), |r| r.int(0))? as u64;
        for r in c.query(
            "SELECT kind, name, toml FROM objects ORDER BY position",
            &[],
        )? {
            let (kind, name, toml) = (r.text(0)?, r.text(1)?, r.text(2)?);
            let kind = Kind::parse(&kind)
                .ok_or_else(|| Error::Internal(format!("stored object of unknown kind {kind}")))?;
            out.objects.list.push(Object { kind, name, toml });
        }
        Ok(())
    }

    /// The views written by changes after `seq` (see [`Store::seq`]).
    pub fn hosts_since(&self, seq: u64) -> Result<Vec<HostRow>, Error> {
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT host, generation, view FROM hosts WHERE seq > ?1 ORDER BY host",
            &vals![seq as i64],
        )? {
            let host = r.text(0)?;
            let view = wire::decode_view(&r.blob(2)?)
                .map_err(|e| Error::Internal(format!("stored view of {host}: {e}")))?;
            out.push(HostRow {
                host,
                generation: r.int(1)? as u64,
                view,
            });
        }
        Ok(out)
    }

    /// The deltas written by changes after `seq`, by host, oldest first.
    pub fn deltas_since(&self, seq: u64) -> Result<Vec<DeltaRow>, Error> {
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT host, generation, base, delta FROM host_deltas WHERE seq > ?1
             ORDER BY host, generation",
            &vals![seq as i64],
        )? {
            let host = r.text(0)?;
            let d = wire::decode_delta(&r.blob(3)?)
                .map_err(|e| Error::Internal(format!("stored delta of {host}: {e}")))?;
            out.push((host, r.int(1)? as u64, r.int(2)? as u64, d));
        }
        Ok(out)
    }

    /// Every host and its stored generation (no views).
    pub fn host_generations(&self) -> Result<Vec<(String, u64)>, Error> {
        self.conn
            .sql()
            .query("SELECT host, generation FROM hosts ORDER BY host", &[])?
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)? as u64)))
            .collect()
    }

    /// One host's stored deltas with `after < generation <= upto`, oldest first:
    /// (generation, base, delta).
    pub fn host_deltas(
        &self,
        host: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, u64, ViewDelta)>, Error> {
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT generation, base, delta FROM host_deltas
             WHERE host = ?1 AND generation > ?2 AND generation <= ?3 ORDER BY generation",
            &vals![host, after as i64, upto as i64],
        )? {
            let d = wire::decode_delta(&r.blob(2)?)
                .map_err(|e| Error::Internal(format!("stored delta of {host}: {e}")))?;
            out.push((r.int(0)? as u64, r.int(1)? as u64, d));
        }
        Ok(out)
    }

    /// The text of the last applied policy file (for its comments), if one was stored.
    pub fn applied_text(&self) -> Result<Option<String>, Error> {
        self.conn
            .sql()
            .query_opt(
                "SELECT value FROM meta_text WHERE key = 'applied_policy'",
                &[],
            )?
            .map(|r| r.text(0))
            .transpose()
    }
}

/// Writes a revision's text and deletes the texts [`REVISIONS_KEPT`] revisions older.
fn insert_revision(
    tx: &dyn super::sql::Sql,
    revision: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    text: &str,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO policy_revisions (revision, time_ms, actor, action, text)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (revision) DO UPDATE SET time_ms = excluded.time_ms,
            actor = excluded.actor, action = excluded.action, text = excluded.text",
        &vals![revision as i64, time_ms, actor, action, text],
    )?;
    tx.execute(
        "DELETE FROM policy_revisions WHERE revision <= ?1",
        &vals![revision.saturating_sub(REVISIONS_KEPT) as i64],
    )?;
    Ok(())
}
