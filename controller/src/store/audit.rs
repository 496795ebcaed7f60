//! The audit trail's SQL: appending a record to the chain (always inside the
//! transaction of the change it records), reading the trail, its head, verifying it,
//! and chaining it once when the database is keyed.
//!
//! Each record's hash is HMAC-SHA-256 under the audit key (see [`crate::keys`]), hex,
//! of the record's [canonical bytes](AuditRecord::canonical_bytes), which cover its
//! id, contents and the previous record's hash. Without the key file nobody can compute
//! a hash that verifies, so rewriting the database is not enough to rewrite the trail.

use super::{Sql, Store, Value};
use crate::keys::Keys;
pub use crate::model::GENESIS_HASH;
use crate::model::{AuditEntry, AuditRecord, AuditVerification};
use crate::{Error, vals};

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

/// An `audit` row selected as id, time_ms, actor, action, target, before, after,
/// revision (and, from `links`, prev_hash, hash).
fn audit_row(r: &super::Row, links: bool) -> Result<AuditRecord, Error> {
    Ok(AuditRecord {
        id: r.int(0)? as u64,
        time_ms: r.int(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        target: r.text(4)?,
        before: r.text(5)?,
        after: r.text(6)?,
        revision: r.int(7)? as u64,
        prev_hash: if links { r.text(8)? } else { String::new() },
        hash: if links { r.text(9)? } else { String::new() },
    })
}

impl Store {
    pub fn audit(&mut self, a: &AuditEntry) -> Result<(), Error> {
        let keys = self.keys.clone();
        self.conn.transaction(|tx| insert_audit(tx, &keys, a))
    }

    /// Runs one statement and writes an audit record, atomically; returns the rows
    /// changed.
    pub(super) fn exec_audited(
        &mut self,
        sql: &str,
        args: &[Value],
        audit: &AuditEntry,
    ) -> Result<u64, Error> {
        let keys = self.keys.clone();
        self.changing(false, |tx, _| {
            let n = tx.execute(sql, args)?;
            insert_audit(tx, &keys, audit)?;
            Ok(n)
        })
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
        head_of(self.conn.sql(), "")
    }

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        self.conn
            .sql()
            .query(
                // The newest `limit` records in the range, returned oldest first.
                "SELECT * FROM (SELECT id, time_ms, actor, action, target, before, after, revision,
                 prev_hash, hash FROM audit WHERE time_ms >= ?1 AND time_ms < ?2
                 ORDER BY id DESC LIMIT ?3) AS newest ORDER BY id",
                &vals![
                    since.unwrap_or(i64::MIN),
                    until.unwrap_or(i64::MAX),
                    i64::from(limit)
                ],
            )?
            .iter()
            .map(|r| audit_row(r, true))
            .collect()
    }
}

/// The recorded head (`lock`: appended to the query, e.g. `FOR UPDATE`). PostgreSQL's
/// head row exists from the start, as record 0: no head yet.
fn head_of(c: &dyn Sql, lock: &str) -> Result<Option<(u64, String)>, Error> {
    let Some(r) = c.query_opt(
        &format!("SELECT id, hash FROM audit_head WHERE one = 1{lock}"),
        &[],
    )?
    else {
        return Ok(None);
    };
    let id = r.int(0)? as u64;
    Ok((id != 0).then(|| r.text(1)).transpose()?.map(|h| (id, h)))
}

/// Keys the chain once (when the database is keyed): re-chains the records with the
/// keyed hash, and one record notes the unkeyed head it replaced.
pub(super) fn key_chain(tx: &dyn Sql, keys: &Keys) -> Result<(), Error> {
    if let Some((id, hash)) = head_of(tx, "")? {
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
pub(super) fn insert_audit(conn: &dyn Sql, keys: &Keys, a: &AuditEntry) -> Result<(), Error> {
    // On PostgreSQL the head row is locked until the transaction ends, so controllers
    // sharing the database append one after the other: each reads the last record only
    // once the append before it has committed, and the chain never forks.
    head_of(conn, conn.for_update())?;
    let (last_id, prev) =
        match conn.query_opt("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", &[])? {
            Some(r) => (r.int(0)? as u64, r.text(1)?),
            None => (0, GENESIS_HASH.to_string()),
        };
    let mut r = AuditRecord::chained(last_id + 1, a.clone(), prev);
    r.hash = record_hash(keys, &r);
    conn.execute(
        "INSERT INTO audit (id, time_ms, actor, action, target, before, after, revision, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &vals![
            r.id as i64,
            r.time_ms,
            &r.actor,
            &r.action,
            &r.target,
            &r.before,
            &r.after,
            r.revision as i64,
            &r.prev_hash,
            &r.hash
        ],
    )?;
    conn.execute(
        "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
        &vals![r.id as i64, &r.hash],
    )?;
    Ok(())
}

/// Chains the records written before the audit trail had hashes (once, at migration 2):
/// renumbers them 1.. in their order and links them.
pub(super) fn chain_unhashed(conn: &dyn Sql, keys: &Keys) -> Result<(), Error> {
    let rows = unchained_records(conn)?;
    conn.execute("DELETE FROM audit", &[])?;
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
fn rechain(conn: &dyn Sql, keys: &Keys) -> Result<(), Error> {
    let rows = unchained_records(conn)?;
    let mut prev = GENESIS_HASH.to_string();
    let mut last = None;
    for mut r in rows {
        r.prev_hash = prev;
        let hash = record_hash(keys, &r);
        conn.execute(
            "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1",
            &vals![r.id as i64, &r.prev_hash, &hash],
        )?;
        last = Some((r.id, hash.clone()));
        prev = hash;
    }
    if let Some((id, hash)) = last {
        conn.execute(
            "INSERT INTO audit_head (one, id, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
            &vals![id as i64, hash],
        )?;
    }
    Ok(())
}

/// Every record in id order, without their links and hashes (to chain them again).
fn unchained_records(conn: &dyn Sql) -> Result<Vec<AuditRecord>, Error> {
    conn.query(
        "SELECT id, time_ms, actor, action, target, before, after, revision FROM audit ORDER BY id",
        &[],
    )?
    .iter()
    .map(|r| audit_row(r, false))
    .collect()
}
