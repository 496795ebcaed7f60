//! The connection events' SQL, on a connection of their own ([`EventStore`]).

use super::{Conn, Db, Value};
use crate::model::{ConnectionEvent, EventFilter, EventRecord};
use crate::{Error, vals, wire};

/// The connection events, on a connection of their own: ingestion and queries never
/// wait for the policy state (and its lock), and never hold it.
pub struct EventStore {
    conn: Conn,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

impl EventStore {
    /// A second connection to a database [`super::Store::open`] has prepared.
    pub fn open(db: impl Into<Db>) -> Result<EventStore, Error> {
        Ok(EventStore {
            conn: db.into().connect()?,
        })
    }

    /// Stores events; returns them with their ids.
    pub fn insert_events(
        &mut self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<ConnectionEvent>,
    ) -> Result<Vec<EventRecord>, Error> {
        self.conn.transaction(|tx| {
            let mut out = Vec::with_capacity(events.len());
            for ev in events {
                let time_ms = crate::parse_timestamp_ms(&ev.timestamp).unwrap_or(received_ms);
                let (blob, ev) = wire::encode_event(ev);
                let id = tx
                    .query_opt(
                        "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, \"user\", device, resource, data)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                        &vals![
                            time_ms,
                            received_ms,
                            agent_id,
                            &ev.host,
                            &ev.event,
                            &ev.verdict,
                            ev.user.clone(),
                            ev.device.clone(),
                            ev.resource.clone(),
                            blob
                        ],
                    )?
                    .ok_or_else(|| Error::Internal("database: an insert returned no id".into()))?
                    .int(0)?;
                out.push(EventRecord {
                    id: id as u64,
                    time_ms,
                    received_ms,
                    agent_id: agent_id.to_string(),
                    event: Some(ev),
                });
            }
            Ok(out)
        })
    }

    pub fn query_events(&self, f: &EventFilter, limit: u32) -> Result<Vec<EventRecord>, Error> {
        let mut sql =
            String::from("SELECT id, time_ms, received_ms, agent_id, data FROM events WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        let mut cond = |sql: &mut String, col: &str, op: &str, v: Value| {
            args.push(v);
            sql.push_str(&format!(" AND {col} {op} ?{}", args.len()));
        };
        if let Some(s) = f.since_ms {
            cond(&mut sql, "time_ms", ">=", Value::Int(s));
        }
        if let Some(u) = f.until_ms {
            cond(&mut sql, "time_ms", "<", Value::Int(u));
        }
        for (col, v) in [
            ("\"user\"", &f.user),
            ("device", &f.device),
            ("resource", &f.resource),
            ("event", &f.event),
            ("verdict", &f.verdict),
            ("host", &f.host),
        ] {
            if let Some(v) = v {
                cond(&mut sql, col, "=", Value::Text(v.clone()));
            }
        }
        // The newest `limit` matching events, returned oldest first.
        let sql = format!(
            "SELECT * FROM ({sql} ORDER BY time_ms DESC, id DESC LIMIT {limit}) AS newest ORDER BY time_ms, id"
        );
        let mut out = Vec::new();
        for r in self.conn.sql().query(&sql, &args)? {
            out.push(EventRecord {
                id: r.int(0)? as u64,
                time_ms: r.int(1)?,
                received_ms: r.int(2)?,
                agent_id: r.text(3)?,
                event: wire::decode_event(&r.blob(4)?),
            });
        }
        Ok(out)
    }

    /// Records agents' acknowledged generations and last-seen times (see
    /// [`super::agents::record_acks`]), on this connection: acks never wait for the
    /// state's lock or its connection.
    pub fn record_acks(&mut self, rows: &[(String, u64, i64)]) -> Result<(), Error> {
        self.conn
            .transaction(|tx| super::agents::record_acks(tx, rows))
    }

    /// Deletes events received before `before_ms`; returns how many.
    pub fn prune_events(&mut self, before_ms: i64) -> Result<usize, Error> {
        self.conn
            .sql()
            .execute(
                "DELETE FROM events WHERE received_ms < ?1",
                &vals![before_ms],
            )
            .map(|n| n as usize)
    }
}
