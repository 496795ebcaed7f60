//! The audit trail's SQL: appending a record to the chain (always inside the
//! transaction of the change it records), reading the trail, its head, verifying it,
//! and chaining it once when the database is keyed.
//!
//! Each record's hash is HMAC-SHA-256 under the audit key (see [`crate::keys`]), hex,
//! of the record's [canonical bytes](AuditRecord::canonical_bytes), which cover its
//! id, contents and the previous record's hash. Without the key file nobody can compute
//! a hash that verifies, so rewriting the database is not enough to rewrite the trail.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, db};
use crate::Error;
use crate::keys::Keys;
pub use crate::model::GENESIS_HASH;
use crate::model::{AuditEntry, AuditRecord, AuditVerification};

/// The hash of a record (see the module docs).
pub fn record_hash(keys: &Keys, r: &AuditRecord) -> String {
    use hmac::Mac as _;
    let mut h = keys.audit_mac();
    h.update(&r.canonical_bytes());
    crate::hex(&h.finalize().into_bytes())
}

/// The hash of record `id` holding these fields after the record hashed `prev_hash`
/// ([`record_hash`] of that record).
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
    let entry = AuditEntry {
        time_ms,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        before: before.into(),
        after: after.into(),
        revision,
    };
    record_hash(keys, &AuditRecord::chained(id, entry, prev_hash.into()))
}

/// Checks an audit chain (records in id order) against its recorded head.
pub fn verify_chain(
    keys: &Keys,
    records: &[AuditRecord],
    head: Option<(u64, String)>,
) -> AuditVerification {
    let bad = |id: u64, reason: String| AuditVerification {
        ok: false,
        records: records.len() as u64,
        first_bad_id: Some(id),
        reason,
        head_hash: String::new(),
        expected_head_id: None,
    };
    let mut prev: Option<&AuditRecord> = None;
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
    AuditVerification {
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
    records: &[AuditRecord],
    head: Option<(u64, String)>,
    expected: Option<&str>,
) -> AuditVerification {
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

impl Store {
    pub fn audit(&mut self, a: &AuditEntry) -> Result<(), Error> {
        let tx = self.conn.transaction().map_err(db)?;
        insert_audit(&tx, &self.keys, a)?;
        tx.commit().map_err(db)
    }

    /// Runs one statement and writes an audit record, atomically; returns the rows
    /// changed.
    pub(super) fn exec_audited(
        &mut self,
        sql: &str,
        args: impl rusqlite::Params,
        audit: &AuditEntry,
    ) -> Result<usize, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        let n = tx.execute(sql, args).map_err(db)?;
        insert_audit(&tx, &self.keys, audit)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }

    /// Checks the whole audit chain against the recorded head (and, when given, that
    /// the anchored head `expect_head` is still in it).
    pub fn verify_audit(&self, expect_head: Option<&str>) -> Result<AuditVerification, Error> {
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

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        let mut st = self
            .conn
            .prepare(
                // The newest `limit` records in the range, returned oldest first.
                "SELECT * FROM (SELECT id, time_ms, actor, action, target, before, after, revision,
                 prev_hash, hash FROM audit WHERE time_ms >= ?1 AND time_ms < ?2
                 ORDER BY id DESC LIMIT ?3) ORDER BY id",
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
                    Ok(AuditRecord {
                        id: r.get::<_, i64>(0)? as u64,
                        time_ms: r.get(1)?,
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

/// Keys the chain once (when the database is keyed): re-chains the records with the
/// keyed hash, and one record notes the unkeyed head it replaced.
pub(super) fn key_chain(tx: &Connection, keys: &Keys) -> Result<(), Error> {
    let old_head: Option<(i64, String)> = tx
        .query_row("SELECT id, hash FROM audit_head WHERE one = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db)?;
    if let Some((id, hash)) = old_head {
        rechain(tx, keys)?;
        insert_audit(
            tx,
            keys,
            &AuditEntry {
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
    Ok(())
}

/// Appends an audit record to the chain (inside the caller's transaction): its id
/// follows the last record's, its `prev_hash` is the last record's hash, and the head
/// moves to it.
pub(super) fn insert_audit(conn: &Connection, keys: &Keys, a: &AuditEntry) -> Result<(), Error> {
    let (last_id, prev) = conn
        .query_row(
            "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(db)?
        .unwrap_or((0, GENESIS_HASH.to_string()));
    let mut r = AuditRecord::chained(last_id + 1, a.clone(), prev);
    r.hash = record_hash(keys, &r);
    conn.execute(
        "INSERT INTO audit (id, time_ms, actor, action, target, before, after, revision, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            r.id as i64,
            r.time_ms,
            r.actor,
            r.action,
            r.target,
            r.before,
            r.after,
            r.revision as i64,
            r.prev_hash,
            r.hash
        ],
    )
    .map_err(db)?;
    conn.execute(
        "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
        params![r.id as i64, r.hash],
    )
    .map_err(db)?;
    Ok(())
}

/// Chains the records written before the audit trail had hashes (once, at migration 2):
/// renumbers them 1.. in their order and links them.
pub(super) fn chain_unhashed(conn: &Connection, keys: &Keys) -> Result<(), Error> {
    let rows = unchained_records(conn)?;
    conn.execute("DELETE FROM audit", []).map_err(db)?;
    for r in rows {
        let entry = AuditEntry {
            time_ms: r.time_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
            revision: r.revision,
        };
        insert_audit(conn, keys, &entry)?;
    }
    Ok(())
}

/// Recomputes every record's links and hashes with `keys`, in id order (when the
/// database is keyed: the records before were chained without a key).
fn rechain(conn: &Connection, keys: &Keys) -> Result<(), Error> {
    let rows = unchained_records(conn)?;
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

/// Every record in id order, without their links and hashes (to chain them again).
fn unchained_records(conn: &Connection) -> Result<Vec<AuditRecord>, Error> {
    let mut st = conn
        .prepare(
            "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
        )
        .map_err(db)?;
    st.query_map([], |r| {
        Ok(AuditRecord {
            id: r.get::<_, i64>(0)? as u64,
            time_ms: r.get(1)?,
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
    .map_err(db)
}
