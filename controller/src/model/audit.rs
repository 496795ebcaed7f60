//! The audit aggregate's types: an entry an action records, a record of the chain, and
//! the result of verifying the chain.
//!
//! The chain authenticates each record's [canonical bytes](AuditRecord::canonical_bytes)
//! (HMAC-SHA-256 under the audit key: `crate::store::audit`). That encoding is a
//! contract with every database written so far and must never change: a test pins it
//! (`tests/audit_chain.rs`).

/// `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The label that starts the canonical bytes of a record (format 2: keyed chain).
pub const CHAIN_FORMAT: &[u8] = b"ztgw-audit-v2";

/// What an action records in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub time_ms: i64,
    /// Who: `key:NAME`, `user:NAME`, `agent:ID`, `peer:ADDR`, `local:...`.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: String,
    pub after: String,
    /// The policy revision when it was recorded.
    pub revision: u64,
}

/// A record of the audit chain: an entry, its place, the hash of the record before it
/// and its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: String,
    pub after: String,
    pub revision: u64,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// `entry` as record `id` after the record hashed `prev_hash` (its own hash not
    /// computed yet).
    pub fn chained(id: u64, entry: AuditEntry, prev_hash: String) -> AuditRecord {
        AuditRecord {
            id,
            time_ms: entry.time_ms,
            actor: entry.actor,
            action: entry.action,
            target: entry.target,
            before: entry.before,
            after: entry.after,
            revision: entry.revision,
            prev_hash,
            hash: String::new(),
        }
    }

    /// The bytes the chain authenticates: [`CHAIN_FORMAT`], then each of id, time,
    /// actor, action, target, before, after, revision and the previous hash as its
    /// length (8 bytes, big-endian) and its UTF-8 bytes (numbers in decimal). Every
    /// field is length-prefixed, so no two records share their bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let (id, time, revision) = (
            self.id.to_string(),
            self.time_ms.to_string(),
            self.revision.to_string(),
        );
        let fields = [
            id.as_str(),
            time.as_str(),
            &self.actor,
            &self.action,
            &self.target,
            &self.before,
            &self.after,
            revision.as_str(),
            &self.prev_hash,
        ];
        let mut out = Vec::with_capacity(
            CHAIN_FORMAT.len() + fields.iter().map(|f| f.len() + 8).sum::<usize>(),
        );
        out.extend_from_slice(CHAIN_FORMAT);
        for f in fields {
            out.extend_from_slice(&(f.len() as u64).to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out
    }
}

/// The result of verifying the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditVerification {
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// The first record altered, missing or out of order.
    pub first_bad_id: Option<u64>,
    pub reason: String,
    /// The hash of the last record ([`GENESIS_HASH`] for an empty trail).
    pub head_hash: String,
    /// The record the anchored head names, when one was given and found.
    pub expected_head_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_length_prefixed_fields() {
        let r = AuditRecord::chained(
            1,
            AuditEntry {
                time_ms: -2,
                actor: "é".into(),
                action: String::new(),
                target: String::new(),
                before: String::new(),
                after: String::new(),
                revision: 30,
            },
            "p".into(),
        );
        let field = |s: &[u8]| {
            let mut v = (s.len() as u64).to_be_bytes().to_vec();
            v.extend_from_slice(s);
            v
        };
        let mut want = b"ztgw-audit-v2".to_vec();
        for f in [
            &b"1"[..],
            b"-2",
            "é".as_bytes(),
            b"",
            b"",
            b"",
            b"",
            b"30",
            b"p",
        ] {
            want.extend(field(f));
        }
        assert_eq!(r.canonical_bytes(), want);
        // The hash is not part of what it covers.
        let hashed = AuditRecord {
            hash: "h".into(),
            ..r.clone()
        };
        assert_eq!(hashed.canonical_bytes(), r.canonical_bytes());
    }
}
