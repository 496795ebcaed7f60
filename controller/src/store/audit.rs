//! The audit trail's SQL: appending a record to the chain (always inside the
//! transaction of the change it records), reading the trail, its head, verifying it,
//! and chaining it once when the database is keyed.

use gateway_proto::v1;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, db};
use crate::Error;
use crate::keys::Keys;

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

impl Store {
    pub fn audit(&mut self, a: &Audit) -> Result<(), Error> {
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
        audit: &Audit,
    ) -> Result<usize, Error> {
        let tx = self.conn.transaction().map_err(db)?;
        let n = tx.execute(sql, args).map_err(db)?;
        insert_audit(&tx, &self.keys, audit)?;
        tx.commit().map_err(db)?;
        Ok(n)
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
    Ok(())
}

/// Appends an audit record to the chain (inside the caller's transaction): its id
/// follows the last record's, its `prev_hash` is the last record's hash, and the head
/// moves to it.
pub(super) fn insert_audit(conn: &Connection, keys: &Keys, a: &Audit) -> Result<(), Error> {
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
pub(super) fn chain_unhashed(conn: &Connection, keys: &Keys) -> Result<(), Error> {
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
