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

/// The columns one event fills.
const INSERT_COLUMNS: usize = 10;

/// The most rows one INSERT carries: 5120 parameters, well under PostgreSQL's cap of
/// 65535 per statement and SQLite's of 32766.
pub const CHUNK_ROWS: usize = 512;

const _: () = assert!(CHUNK_ROWS * INSERT_COLUMNS <= 32_766);

/// How `n` rows are split into INSERT statements: as many [`CHUNK_ROWS`] as fit, then
/// the rest as powers of two, largest first. So a connection prepares at most 10
/// statement shapes (512, 256, ..., 1 rows), whatever the batch sizes, and a message runs
/// at most `n / 512 + 9` statements.
pub fn chunk_sizes(n: usize) -> Vec<usize> {
    let mut out = vec![CHUNK_ROWS; n / CHUNK_ROWS];
    let rest = n % CHUNK_ROWS;
    let mut bit = CHUNK_ROWS >> 1;
    while bit > 0 {
        if rest & bit != 0 {
            out.push(bit);
        }
        bit >>= 1;
    }
    out
}

/// The INSERT of `rows` events (`?1` ... `?{10 rows}`), returning their ids.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, \"user\", \
         device, resource, data) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..INSERT_COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * INSERT_COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" RETURNING id");
    sql
}

/// The statement [`EventStore::query_events`] runs for `f` and `limit`, and its arguments:
/// the rows matching every filter given, the newest `limit` first (by time, then id),
/// returned oldest first. Each filter the API offers has an index of its own on
/// (column, time_ms, id) (`events_time` on (time_ms, id) when only a time range is
/// given), so the newest rows are read from an index's end and the read stops after
/// `limit` of them, whatever the table's size.
pub fn query_sql(f: &EventFilter, limit: u32) -> (String, Vec<Value>) {
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
    let sql = format!(
        "SELECT * FROM ({sql} ORDER BY time_ms DESC, id DESC LIMIT {limit}) AS newest ORDER BY time_ms, id"
    );
    (sql, args)
}

impl EventStore {
    /// A second connection to a database [`super::Store::open`] has prepared.
    pub fn open(db: impl Into<Db>) -> Result<EventStore, Error> {
        Ok(EventStore {
            conn: db.into().connect()?,
        })
    }

    /// Stores events; returns them with their ids, in order. One transaction; the rows
    /// go in with multi-row `INSERT ... RETURNING id` statements of [`CHUNK_ROWS`] rows at
    /// most (see [`chunk_sizes`]).
    pub fn insert_events(
        &mut self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<ConnectionEvent>,
    ) -> Result<Vec<EventRecord>, Error> {
        let rows: Vec<(i64, Vec<u8>, ConnectionEvent)> = events
            .into_iter()
            .map(|ev| {
                let time_ms = crate::parse_timestamp_ms(&ev.timestamp).unwrap_or(received_ms);
                let (blob, ev) = wire::encode_event(ev);
                (time_ms, blob, ev)
            })
            .collect();
        let ids = self.conn.transaction(|tx| {
            let mut ids = Vec::with_capacity(rows.len());
            let mut rest = &rows[..];
            for n in chunk_sizes(rows.len()) {
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let mut args = Vec::with_capacity(n * INSERT_COLUMNS);
                for (time_ms, blob, ev) in chunk {
                    args.extend(vals![
                        *time_ms,
                        received_ms,
                        agent_id,
                        &ev.host,
                        &ev.event,
                        &ev.verdict,
                        ev.user.clone(),
                        ev.device.clone(),
                        ev.resource.clone(),
                        blob.clone()
                    ]);
                }
                let mut got = tx
                    .query(&insert_sql(n), &args)?
                    .iter()
                    .map(|r| r.int(0))
                    .collect::<Result<Vec<i64>, Error>>()?;
                if got.len() != n {
                    return Err(Error::Internal(format!(
                        "database: inserting {n} events returned {} ids",
                        got.len()
                    )));
                }
                // Neither backend promises RETURNING's order, but both number the rows of
                // one statement in increasing order of VALUES: sorted, the ids are the rows'.
                got.sort_unstable();
                ids.extend(got);
            }
            Ok(ids)
        })?;
        Ok(rows
            .into_iter()
            .zip(ids)
            .map(|((time_ms, _, ev), id)| EventRecord {
                id: id as u64,
                time_ms,
                received_ms,
                agent_id: agent_id.to_string(),
                event: Some(ev),
            })
            .collect())
    }

    /// The newest `limit` events matching `f`, oldest first (the SQL: [`query_sql`]).
    pub fn query_events(&self, f: &EventFilter, limit: u32) -> Result<Vec<EventRecord>, Error> {
        let (sql, args) = query_sql(f, limit);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_few_statement_shapes() {
        assert_eq!(chunk_sizes(0), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(1024), vec![512, 512]);
        assert_eq!(chunk_sizes(1000), vec![512, 256, 128, 64, 32, 8]);
        for n in 0..3000 {
            let c = chunk_sizes(n);
            assert_eq!(c.iter().sum::<usize>(), n, "{n}");
            assert!(c.iter().all(|&k| k.is_power_of_two() && k <= CHUNK_ROWS));
        }
        assert_eq!(
            insert_sql(2).rsplit_once("VALUES ").unwrap().1,
            "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10), \
             (?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20) RETURNING id"
        );
    }
}
