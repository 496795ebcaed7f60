//! The audit aggregate: refusals noted cheaply and aggregated ([`limits::Refusals`])
//! before they are written, the trail, its verification and its head.

use super::{State, limits};
use crate::Error;
use crate::model::{AuditEntry, AuditRecord, AuditVerification};
use crate::now_ms;

/// Kinds of refusal followed at once for aggregation (see [`limits::Refusals`]).
pub(super) const REFUSAL_KINDS: usize = 1024;
/// The aggregation window of refusals in the audit trail.
pub const REFUSAL_WINDOW_MS: i64 = 60_000;
/// Refusals recorded at once per window; beyond, they are only counted.
pub(super) const REFUSALS_IMMEDIATE: f64 = 60.0;

impl State {
    /// Records a refusal in the audit trail, aggregated: the first of its kind in a
    /// window soon (within a second, and before any read of the trail), repeats as one
    /// record when the window ends (see [`limits::Refusals`]). Cheap: no database work
    /// on the refused call's path.
    pub fn refused(&self, action: &str, actor: String, target: String, detail: String) {
        let rec = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(
                limits::Refusal {
                    action: action.into(),
                    actor,
                    target,
                    detail,
                },
                now_ms(),
            );
        if let Some(r) = rec {
            self.pending_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }

    /// Writes the refusal records noted so far (blocking: SQLite).
    fn write_pending_refusals(&self) {
        let recs = std::mem::take(
            &mut *self
                .pending_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !recs.is_empty() {
            self.write_refusals(&recs);
        }
    }

    fn write_refusals(&self, recs: &[limits::Record]) {
        let mut g = self.lock();
        let revision = g.revision;
        for (t, r) in recs {
            let a = AuditEntry {
                time_ms: *t,
                actor: r.actor.clone(),
                action: r.action.clone(),
                target: r.target.clone(),
                before: String::new(),
                after: r.detail.clone(),
                revision,
            };
            match g.store.audit(&a) {
                Ok(()) => tracing::info!(
                    action = %r.action,
                    actor = %r.actor,
                    target = %r.target,
                    detail = %r.detail,
                    "refusal recorded in the audit trail"
                ),
                Err(e) => tracing::error!(
                    action = %r.action,
                    error = %e,
                    "recording a refusal in the audit trail failed"
                ),
            }
        }
    }

    /// Writes the aggregate records of refusal windows that have ended (every pending
    /// one with `force`, e.g. at shutdown). Called every second by the server.
    pub fn flush_refusals(&self, force: bool) {
        self.write_pending_refusals();
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now_ms(), force);
        if !due.is_empty() {
            self.write_refusals(&due);
        }
    }

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        let limit = if limit == 0 {
            10_000
        } else {
            limit.min(10_000)
        };
        self.write_pending_refusals();
        self.lock().store.audit_report(since, until, limit)
    }

    /// Checks the audit chain (and that the anchored head `expect_head` is in it).
    pub fn verify_audit(&self, expect_head: Option<&str>) -> Result<AuditVerification, Error> {
        self.lock().store.verify_audit(expect_head)
    }

    /// The audit chain's head: (record id, hash).
    pub fn audit_head(&self) -> Result<Option<(u64, String)>, Error> {
        self.lock().store.head()
    }
}
