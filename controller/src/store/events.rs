//! The connection events' SQL, on a connection of their own ([`EventStore`]).
//!
//! On PostgreSQL the events table is partitioned by the day (UTC) an event was received:
//! `events_pYYYYMMDD`, created [`PARTITIONS_AHEAD`] days ahead by the retention job and
//! when the event store opens, and on demand before an insert into a day without one;
//! `events_default` takes what no partition does (a partition that could not be
//! created), so an insert never fails for lack of a partition. Retention drops the
//! expired days whole, then deletes the expired rows left (the boundary day, the default
//! partition). SQLite keeps one table and deletes.
//!
//! Reported events are stored on PostgreSQL by a pool of up to [`WRITERS`] connections
//! ([`Writers`]), so that the messages of several agents commit at once; ids are then
//! unique and increasing within a message, not across messages stored at the same time
//! (as with several controllers on one database). On SQLite one connection does it all.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};

use super::{Backend, Conn, Db, Value};
use crate::model::{ConnectionEvent, EventFilter, EventRecord};
use crate::{Error, vals, wire};

/// The connection events, on a connection of their own: ingestion and queries never
/// wait for the policy state (and its lock), and never hold it.
pub struct EventStore {
    conn: Conn,
    /// PostgreSQL: the days (their first millisecond) whose partition is known to exist.
    partitions: Arc<Mutex<HashSet<i64>>>,
    /// PostgreSQL: the connections that store reported events ([`Writers`]).
    writers: Option<Arc<Writers>>,
}

/// How many connections store reported events at once on PostgreSQL: messages of
/// different agents are stored in parallel, and the server flushes their commits
/// together, instead of one commit's flush after the other on one connection.
pub const WRITERS: usize = 4;

/// The connections that store events on PostgreSQL, up to [`WRITERS`], opened when first
/// needed; a caller waits for one to be free. Used without the event store's lock
/// ([`EventStore::writers`]).
pub struct Writers {
    db: Db,
    partitions: Arc<Mutex<HashSet<i64>>>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writers")
    }
}

impl Writers {
    /// Stores events as [`EventStore::insert_events`] does, on a connection of the pool.
    pub fn insert_events(
        &self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<ConnectionEvent>,
    ) -> Result<Vec<EventRecord>, Error> {
        let mut conn = self.take()?;
        let out = insert(&mut conn, &self.partitions, agent_id, received_ms, events);
        self.give_back(conn);
        out
    }

    fn take(&self) -> Result<Conn, Error> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < WRITERS {
                pool.open += 1;
                drop(pool);
                return self.db.connect().inspect_err(|_| {
                    self.pool.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                    self.freed.notify_one();
                });
            }
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, conn: Conn) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle
            .push(conn);
        self.freed.notify_one();
    }
}

const DAY_MS: i64 = 86_400_000;

/// How many days after today have their partition made ahead (PostgreSQL).
pub const PARTITIONS_AHEAD: i64 = 2;

/// The advisory lock a controller holds while it creates a partition (one at a time).
const PARTITION_LOCK: i64 = 0x7a74_6777_6576_7470; // "ztgwevtp"

/// The first millisecond of the UTC day of `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The partition of the day starting at `day` (see [`day_of`]): `events_pYYYYMMDD`.
pub fn partition_name(day: i64) -> String {
    let date = policy_compiler::format_rfc3339(day / 1000);
    format!("events_p{}", date[..10].replace('-', ""))
}

/// The day (first millisecond) of a partition's name; `None` for any other name.
fn partition_day(name: &str) -> Option<i64> {
    let ymd = name.strip_prefix("events_p")?;
    if ymd.len() != 8 || !ymd.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = policy_compiler::parse_rfc3339(&format!(
        "{}-{}-{}T00:00:00Z",
        &ymd[..4],
        &ymd[4..6],
        &ymd[6..]
    ))
    .ok()?;
    let day = t * 1000;
    (partition_name(day) == name).then_some(day)
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
    super::sql::chunk_sizes(n, CHUNK_ROWS)
}

/// The INSERT of `rows` events (`?1` ... `?{10 rows}`), returning their ids.
fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, \"user\", \
         device, resource, data) VALUES {} RETURNING id",
        super::sql::values_list(rows, INSERT_COLUMNS)
    )
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

/// [`EventStore::ensure_partitions`] on `conn`, `known` the days whose partition exists.
fn ensure_partitions(
    conn: &mut Conn,
    known: &Mutex<HashSet<i64>>,
    from_ms: i64,
    to_ms: i64,
) -> Result<(), Error> {
    if conn.sql().backend() != Backend::Postgres {
        return Ok(());
    }
    let (from, to) = (day_of(from_ms), day_of(to_ms));
    if to < from || (to - from) / DAY_MS >= 366 {
        return Err(Error::InvalidArgument(format!(
            "events' partitions from {from_ms} to {to_ms}: give at most 366 days, the \
             first not after the last"
        )));
    }
    let mut day = from;
    while day <= to {
        let exists = known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&day);
        if !exists {
            create_partition(conn, day)?;
            known.lock().unwrap_or_else(|p| p.into_inner()).insert(day);
        }
        day += DAY_MS;
    }
    Ok(())
}

/// Creates the partition of `day` unless it exists (controllers create one at a
/// time). When the default partition holds rows of that day, they move into it
/// (one transaction: the rows are in one place or the other, never both or neither).
fn create_partition(conn: &mut Conn, day: i64) -> Result<(), Error> {
    let name = partition_name(day);
    let (start, end) = (day, day + DAY_MS);
    conn.transaction(|tx| {
        tx.execute("SELECT pg_advisory_xact_lock(?1)", &vals![PARTITION_LOCK])?;
        if tx
            .query_opt("SELECT 1 FROM pg_class WHERE relname = ?1", &vals![&name])?
            .is_some()
        {
            return Ok(());
        }
        let stray = tx
            .query_opt(
                "SELECT 1 FROM events_default WHERE received_ms >= ?1 AND received_ms < ?2 LIMIT 1",
                &vals![start, end],
            )?
            .is_some();
        if !stray {
            return tx.batch(&format!(
                "CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ({start}) TO ({end})"
            ));
        }
        tx.batch(&format!(
            "CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS);
             WITH moved AS (DELETE FROM events_default
                            WHERE received_ms >= {start} AND received_ms < {end} RETURNING *)
             INSERT INTO {name} SELECT * FROM moved;
             ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end});"
        ))?;
        tracing::info!(partition = %name, "events of a day without a partition moved into its new partition");
        Ok(())
    })
}

/// [`EventStore::insert_events`] on `conn`.
fn insert(
    conn: &mut Conn,
    known: &Mutex<HashSet<i64>>,
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
    if conn.sql().backend() == Backend::Postgres
        && let Err(e) = ensure_partitions(conn, known, received_ms, received_ms)
    {
        tracing::warn!(error = %e, "no partition for these events: they go to events_default");
    }
    let ids = conn.transaction(|tx| {
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

impl EventStore {
    /// A second connection to a database [`super::Store::open`] has prepared.
    pub fn open(db: impl Into<Db>) -> Result<EventStore, Error> {
        let db = db.into();
        let partitions = Arc::new(Mutex::new(HashSet::new()));
        let writers = (db.backend() == Backend::Postgres).then(|| {
            Arc::new(Writers {
                db: db.clone(),
                partitions: partitions.clone(),
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            })
        });
        let mut store = EventStore {
            conn: db.connect()?,
            partitions,
            writers,
        };
        store.ensure_ahead();
        Ok(store)
    }

    fn on_postgres(&self) -> bool {
        self.conn.sql().backend() == Backend::Postgres
    }

    /// PostgreSQL: the pool that stores reported events in parallel; `None` on SQLite
    /// (one writer at a time: use [`EventStore::insert_events`]).
    pub fn writers(&self) -> Option<Arc<Writers>> {
        self.writers.clone()
    }

    /// PostgreSQL: makes the partitions of today and the [`PARTITIONS_AHEAD`] days after
    /// it; a failure is logged (events then go to the default partition).
    fn ensure_ahead(&mut self) {
        let today = day_of(crate::now_ms());
        if let Err(e) = self.ensure_partitions(today, today + PARTITIONS_AHEAD * DAY_MS) {
            tracing::warn!(error = %e, "cannot create the events' partitions ahead");
        }
    }

    /// PostgreSQL: makes sure the partitions of the days from `from_ms` to `to_ms` (both
    /// included) exist (at most 366 days a call). Rows of such a day already in the
    /// default partition move into the new one. Nothing on SQLite.
    pub fn ensure_partitions(&mut self, from_ms: i64, to_ms: i64) -> Result<(), Error> {
        ensure_partitions(&mut self.conn, &self.partitions, from_ms, to_ms)
    }

    /// PostgreSQL: the events' day partitions, with their days, oldest first.
    pub fn partitions(&self) -> Result<Vec<(String, i64)>, Error> {
        if !self.on_postgres() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for r in self.conn.sql().query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )? {
            let name = r.text(0)?;
            if let Some(day) = partition_day(&name) {
                out.push((name, day));
            }
        }
        out.sort_by_key(|(_, d)| *d);
        Ok(out)
    }

    /// Stores events; returns them with their ids, in order. One transaction; the rows
    /// go in with multi-row `INSERT ... RETURNING id` statements of [`CHUNK_ROWS`] rows at
    /// most (see [`chunk_sizes`]). On PostgreSQL the day's partition is made first if
    /// missing.
    pub fn insert_events(
        &mut self,
        agent_id: &str,
        received_ms: i64,
        events: Vec<ConnectionEvent>,
    ) -> Result<Vec<EventRecord>, Error> {
        insert(
            &mut self.conn,
            &self.partitions,
            agent_id,
            received_ms,
            events,
        )
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

    /// Records agents' presence (see [`super::agents::record_presence`]), on this
    /// connection: acks never wait for the state's lock or its connection.
    pub fn record_presence(
        &mut self,
        rows: &[(String, super::agents::Presence)],
    ) -> Result<(), Error> {
        self.conn
            .transaction(|tx| super::agents::record_presence(tx, rows))
    }

    /// Deletes events received before `before_ms`; returns how many. On PostgreSQL, the
    /// partitions of days wholly before `before_ms` are dropped (their rows counted
    /// first), the rows left before it deleted, and the partitions ahead made.
    pub fn prune_events(&mut self, before_ms: i64) -> Result<usize, Error> {
        let mut n = 0;
        if self.on_postgres() {
            self.ensure_ahead();
            for (name, day) in self.partitions()? {
                if day + DAY_MS > before_ms {
                    break;
                }
                n += self.conn.transaction(|tx| {
                    let rows = tx
                        .query_opt(&format!("SELECT count(*) FROM {name}"), &[])?
                        .map_or(Ok(0), |r| r.int(0))?;
                    tx.batch(&format!("DROP TABLE {name}"))?;
                    Ok(rows as usize)
                })?;
                self.partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&day);
                tracing::info!(partition = %name, "events: expired partition dropped");
            }
        }
        n += self.conn.sql().execute(
            "DELETE FROM events WHERE received_ms < ?1",
            &vals![before_ms],
        )? as usize;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_utc_day() {
        let day = 1_764_460_800_000; // 2025-11-30T00:00:00Z
        assert_eq!(day_of(day + DAY_MS - 1), day);
        assert_eq!(day_of(day), day);
        assert_eq!(partition_name(day), "events_p20251130");
        assert_eq!(partition_day("events_p20251130"), Some(day));
        assert_eq!(partition_day("events_p20251301"), None);
        assert_eq!(partition_day("events_default"), None);
        assert_eq!(partition_day("events_p2025113"), None);
    }

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
