//! The connection events' SQL, on a connection of their own ([`EventStore`]).

use std::path::Path;

use rusqlite::{Connection, params};

use super::{connect, db};
use crate::Error;
use crate::model::{ConnectionEvent, EventFilter, EventRecord};
use crate::wire;

/// The connection events, on a connection of their own: ingestion and queries never
/// wait for the policy state (and its lock), and never hold it.
pub struct EventStore {
    conn: Connection,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

impl EventStore {
    /// A second connection to a database [`super::Store::open`] has prepared.
    pub fn open(path: &Path) -> Result<EventStore, Error> {
        Ok(EventStore {
            conn: connect(path)?,
        })
    }

    /// Stores events; returns them with their ids.
    pub fn insert_events(
        &mut self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<ConnectionEvent>,
    ) -> Result<Vec<EventRecord>, Error> {
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
                let (blob, ev) = wire::encode_event(ev);
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
                    blob
                ])
                .map_err(db)?;
                out.push(EventRecord {
                    id: tx.last_insert_rowid() as u64,
                    time_ms,
                    received_ms,
                    agent_id: agent_id.to_string(),
                    event: Some(ev),
                });
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    pub fn query_events(&self, f: &EventFilter, limit: u32) -> Result<Vec<EventRecord>, Error> {
        let mut sql =
            String::from("SELECT id, time_ms, received_ms, agent_id, data FROM events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut cond = |sql: &mut String, col: &str, op: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {col} {op} ?{}", args.len()));
        };
        use rusqlite::types::Value as SV;
        if let Some(s) = f.since_ms {
            cond(&mut sql, "time_ms", ">=", SV::Integer(s));
        }
        if let Some(u) = f.until_ms {
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
        // The newest `limit` matching events, returned oldest first.
        let sql = format!(
            "SELECT * FROM ({sql} ORDER BY time_ms DESC, id DESC LIMIT {limit}) ORDER BY time_ms, id"
        );
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
            out.push(EventRecord {
                id: id as u64,
                time_ms: t,
                received_ms: rcv,
                agent_id: agent,
                event: wire::decode_event(&data),
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
}
