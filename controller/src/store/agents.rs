//! The agents' SQL: enrollment tokens (stored hashed, used once) and agents
//! (credentials stored hashed; acknowledged generation, last seen, revocation).

use rusqlite::{OptionalExtension, params};

use super::audit::insert_audit;
use super::{Loaded, Store, db};
use crate::Error;
use crate::model::AuditEntry;

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

impl Store {
    /// Every agent (at start-up).
    pub(super) fn load_agents(&self, out: &mut Loaded) -> Result<(), Error> {
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
        Ok(())
    }

    pub fn insert_token(
        &mut self,
        hash: &str,
        host: &str,
        created_ms: i64,
        expires_ms: i64,
        audit: &AuditEntry,
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
        audit: impl FnOnce(&AgentRow) -> AuditEntry,
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

    /// Revokes an agent, with its audit record.
    pub fn revoke_agent(&mut self, id: &str, now_ms: i64, audit: &AuditEntry) -> Result<(), Error> {
        self.exec_audited(
            "UPDATE agents SET revoked_ms = ?2 WHERE id = ?1",
            params![id, now_ms],
            audit,
        )
        .map(|_| ())
    }
}
