//! The agents' SQL: enrollment tokens (stored hashed, used once) and agents
//! (credentials stored hashed; acknowledged generation, last seen, revocation).

use super::audit::insert_audit;
use super::{Loaded, Sql, Store};
use crate::model::AuditEntry;
use crate::{Error, vals};

#[derive(Clone, Debug)]
pub struct AgentRow {
    pub id: String,
    pub host: String,
    pub hostname: String,
    pub credential_hash: String,
    pub enrolled_ms: i64,
    pub acked_generation: u64,
    /// When it acknowledged `acked_generation` (unix ms; 0: never).
    pub acked_ms: i64,
    pub last_seen_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The registered WireGuard public key (base64); empty for agents enrolled before
    /// keys existed.
    pub public_key: String,
}

/// A change of the agents committed together with the views it changes
/// ([`Store::commit`]).
#[derive(Debug)]
pub enum AgentChange<'a> {
    /// Consumes the token (which must still be usable) and records the agent.
    Enroll {
        token_hash: &'a str,
        now_ms: i64,
        agent: &'a AgentRow,
    },
    /// Replaces an agent's public key.
    SetKey { id: &'a str, public_key: &'a str },
    /// Revokes an agent (`had_key`: it had a WireGuard key, now out of its peers' views).
    Revoke {
        id: &'a str,
        now_ms: i64,
        had_key: bool,
    },
}

impl AgentChange<'_> {
    /// Whether the change adds or removes a WireGuard key (the views of the agent's
    /// peers carry the keys; nothing else of an agent is in a view).
    pub fn changes_keys(&self) -> bool {
        match self {
            AgentChange::Enroll { agent, .. } => !agent.public_key.is_empty(),
            AgentChange::SetKey { .. } => true,
            AgentChange::Revoke { had_key, .. } => *had_key,
        }
    }

    pub(super) fn apply(&self, tx: &dyn Sql) -> Result<(), Error> {
        match self {
            AgentChange::Enroll {
                token_hash,
                now_ms,
                agent: a,
            } => {
                let used = tx.execute(
                    "UPDATE tokens SET used_ms = ?2 WHERE hash = ?1 AND used_ms IS NULL AND expires_ms > ?2",
                    &vals![*token_hash, *now_ms],
                )?;
                if used != 1 {
                    return Err(Error::Unauthenticated(
                        "enrollment token unknown, used or expired".into(),
                    ));
                }
                tx.execute(
                    "INSERT INTO agents (id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms, revoked_ms, public_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    &vals![
                        &a.id,
                        &a.host,
                        &a.hostname,
                        &a.credential_hash,
                        a.enrolled_ms,
                        a.acked_generation as i64,
                        a.last_seen_ms,
                        a.revoked_ms,
                        &a.public_key
                    ],
                )?;
            }
            AgentChange::SetKey { id, public_key } => {
                tx.execute(
                    "UPDATE agents SET public_key = ?2 WHERE id = ?1",
                    &vals![*id, *public_key],
                )?;
            }
            AgentChange::Revoke { id, now_ms, .. } => {
                tx.execute(
                    "UPDATE agents SET revoked_ms = ?2 WHERE id = ?1",
                    &vals![*id, *now_ms],
                )?;
            }
        }
        Ok(())
    }
}

/// Why a token does not enroll.
#[derive(Debug)]
pub enum Enrolled {
    /// The token is unknown, used or expired.
    Unknown,
    /// The token is for another host than the agent said it is (left unused).
    OtherHost,
}

impl Store {
    /// Every agent (at start-up).
    pub(super) fn load_agents(&self, out: &mut Loaded) -> Result<(), Error> {
        out.agents = self.agents()?;
        Ok(())
    }

    /// Every agent, as stored.
    pub fn agents(&self) -> Result<Vec<AgentRow>, Error> {
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT id, host, hostname, credential_hash, enrolled_ms, acked_generation, last_seen_ms, revoked_ms, public_key, acked_ms FROM agents ORDER BY enrolled_ms, id",
            &[],
        )? {
            out.push(AgentRow {
                id: r.text(0)?,
                host: r.text(1)?,
                hostname: r.text(2)?,
                credential_hash: r.text(3)?,
                enrolled_ms: r.int(4)?,
                acked_generation: r.int(5)? as u64,
                acked_ms: r.int(9)?,
                last_seen_ms: r.int(6)?,
                revoked_ms: r.opt_int(7)?,
                public_key: r.text(8)?,
            });
        }
        Ok(out)
    }

    pub fn insert_token(
        &mut self,
        hash: &str,
        host: &str,
        created_ms: i64,
        expires_ms: i64,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        let keys = self.keys.clone();
        self.conn.transaction(|tx| {
            tx.execute(
                "INSERT INTO tokens (hash, host, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                &vals![hash, host, created_ms, expires_ms],
            )?;
            insert_audit(tx, &keys, audit)
        })
    }

    /// The host of a usable token (unknown, used or expired: `Unknown`; with
    /// `expected_host`, for another host: `OtherHost`). Reads only: the token is consumed
    /// by the commit of the enrollment ([`AgentChange::Enroll`]).
    pub fn token_host(
        &self,
        token_hash: &str,
        now_ms: i64,
        expected_host: Option<&str>,
    ) -> Result<Result<String, Enrolled>, Error> {
        let host = self
            .conn
            .sql()
            .query_opt(
                "SELECT host FROM tokens WHERE hash = ?1 AND used_ms IS NULL AND expires_ms > ?2",
                &vals![token_hash, now_ms],
            )?
            .map(|r| r.text(0))
            .transpose()?;
        Ok(match host {
            None => Err(Enrolled::Unknown),
            Some(h) if expected_host.is_some_and(|e| e != h) => Err(Enrolled::OtherHost),
            Some(h) => Ok(h),
        })
    }
}

/// An agent's presence as a controller records it: acknowledged generation, last seen,
/// the controller its stream is on (empty: none).
pub type Presence = (u64, i64, String);

/// Records agents' presence: (id, acked, last seen, controller), one statement per 128
/// agents (in the caller's transaction).
pub fn record_presence(tx: &dyn Sql, rows: &[(String, Presence)]) -> Result<(), Error> {
    let mut at = 0;
    for n in super::sql::chunk_sizes(rows.len(), 128) {
        let list = (0..n)
            .map(|i| {
                format!(
                    "(?{}, CAST(?{} AS BIGINT), CAST(?{} AS BIGINT), ?{})",
                    4 * i + 1,
                    4 * i + 2,
                    4 * i + 3,
                    4 * i + 4
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let args: Vec<super::Value> = rows[at..at + n]
            .iter()
            .flat_map(|(id, (acked, seen, on))| vals![id, *acked as i64, *seen, on])
            .collect();
        tx.execute(
            &format!(
                "UPDATE agents SET acked_generation = p.column2, last_seen_ms = p.column3,
                    connected_to = p.column4,
                    acked_ms = CASE WHEN agents.acked_generation <> p.column2 THEN p.column3
                                    ELSE agents.acked_ms END
                 FROM (VALUES {list}) AS p WHERE agents.id = p.column1"
            ),
            &args,
        )?;
        at += n;
    }
    Ok(())
}

impl Store {
    /// Every agent's presence as recorded ([`record_presence`]), with when it
    /// acknowledged the generation it is at (unix ms; 0: never).
    pub fn presence(&self) -> Result<std::collections::HashMap<String, (Presence, i64)>, Error> {
        self.conn
            .sql()
            .query(
                "SELECT id, acked_generation, last_seen_ms, connected_to, acked_ms FROM agents",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.text(0)?,
                    ((r.int(1)? as u64, r.int(2)?, r.text(3)?), r.int(4)?),
                ))
            })
            .collect()
    }
}
