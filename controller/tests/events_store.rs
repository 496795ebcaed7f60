//! The connection events' store at scale: batched inserts (both backends), an index for
//! every filter the API offers (shown with `EXPLAIN` on a filled table), and on
//! PostgreSQL the time partitions retention drops.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use controller::model::{ConnectionEvent, EventFilter};
use controller::store::{Backend, Db, EventStore, Value, events::query_sql};
use gateway_test_support::postgres::fresh_database;

const MASTER: [u8; 32] = [7; 32];

fn keys() -> Arc<controller::keys::Keys> {
    Arc::new(controller::keys::Keys::from_master(&MASTER))
}

/// A migrated database and its event store.
fn event_store(db: &Db) -> EventStore {
    drop(controller::Store::open(db.clone(), keys()).unwrap());
    EventStore::open(db).unwrap()
}

fn ev(i: usize) -> ConnectionEvent {
    ConnectionEvent {
        timestamp: format!(
            "2026-11-30T10:{:02}:{:02}.{:03}Z",
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000
        ),
        event: if i.is_multiple_of(2) {
            "connect"
        } else {
            "close"
        }
        .into(),
        verdict: ["allow", "deny", "audit"][i % 3].into(),
        reason: "granted".into(),
        user: Some(format!("user-{}", i % 7)),
        device: Some(format!("device-{}", i % 5)),
        resource: Some(format!("res-{}", i % 3)),
        host: "h1".into(),
        ..ConnectionEvent::default()
    }
}

/// One message of 1300 events (three statements of 512, 256, ... rows) comes back with
/// increasing ids, each the id the database gave that event.
#[test]
fn a_large_message_is_stored_in_order_with_its_ids() {
    let (_d, path) = common::tempdir();
    let db = common::db(&path);
    let mut store = event_store(&db);
    let first = store.insert_events("a1", 1_000, vec![ev(100_000)]).unwrap();
    assert_eq!(first.len(), 1);
    let evs: Vec<ConnectionEvent> = (0..1300).map(ev).collect();
    let stored = store.insert_events("a1", 2_000, evs.clone()).unwrap();
    assert_eq!(stored.len(), 1300);
    for (i, (r, e)) in stored.iter().zip(&evs).enumerate() {
        assert_eq!(r.event.as_ref(), Some(e), "event {i}");
        assert_eq!((r.received_ms, r.agent_id.as_str()), (2_000, "a1"));
        assert!(
            r.id > first[0].id,
            "event {i}: id {} after {}",
            r.id,
            first[0].id
        );
        if i > 0 {
            assert!(r.id > stored[i - 1].id, "event {i}: ids increase");
        }
    }
    // What the database holds under each id is the event returned with it.
    let back = store.query_events(&EventFilter::default(), 10_000).unwrap();
    assert_eq!(back.len(), 1301);
    let by_id: std::collections::HashMap<u64, _> =
        back.iter().map(|r| (r.id, r.event.clone())).collect();
    for r in &stored {
        assert_eq!(by_id[&r.id], r.event, "id {}", r.id);
    }
    // A filter reads its rows (a positive control for the plan tests below).
    let f = EventFilter {
        user: Some("user-3".into()),
        ..EventFilter::default()
    };
    let got = store.query_events(&f, 10).unwrap();
    assert_eq!(got.len(), 10);
    assert!(
        got.iter()
            .all(|r| r.event.as_ref().unwrap().user.as_deref() == Some("user-3"))
    );
    assert!(got.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    let newest = stored
        .iter()
        .filter(|r| r.event.as_ref().unwrap().user.as_deref() == Some("user-3"))
        .max_by_key(|r| (r.time_ms, r.id))
        .unwrap();
    assert_eq!(got.last().unwrap().id, newest.id);
}

/// The filters the API offers, each alone and with a time range, and the column whose
/// index must serve it (`time_ms` for a time range alone).
fn filters(since: i64, until: i64) -> Vec<(&'static str, EventFilter)> {
    let one = |col: &'static str, v: &str| {
        let mut f = EventFilter::default();
        let v = Some(v.to_string());
        match col {
            "user" => f.user = v,
            "device" => f.device = v,
            "resource" => f.resource = v,
            "event" => f.event = v,
            "verdict" => f.verdict = v,
            "host" => f.host = v,
            _ => unreachable!(),
        }
        f
    };
    let mut out = Vec::new();
    for (col, v) in [
        ("user", "user-17"),
        ("device", "device-42"),
        ("resource", "res-7"),
        ("event", "close"),
        ("verdict", "deny"),
        ("host", "host-3"),
    ] {
        out.push((col, one(col, v)));
        out.push((
            col,
            EventFilter {
                since_ms: Some(since),
                until_ms: Some(until),
                ..one(col, v)
            },
        ));
    }
    out.push((
        "time_ms",
        EventFilter {
            since_ms: Some(since),
            until_ms: Some(until),
            ..EventFilter::default()
        },
    ));
    out
}

/// Fills `events` with `n` rows through the store's own schema: one real event's data,
/// 1000 agents, 200 hosts, 200 users, 400 devices, 100 resources, 2% `close` events, 1%
/// `deny` verdicts, one row a second from `start_ms`: each filter value matches a small
/// share of the rows but thousands of them, as in a real fleet's table at 10M rows. (A
/// value matching a large share, like `allow`, is as well served by `events_time`,
/// reading the newest rows and skipping the few others: the planner may choose that.)
fn fill_postgres(conn: &controller::store::Conn, n: i64, start_ms: i64) {
    conn.sql()
        .execute(
            "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, \"user\",
                                 device, resource, data)
             SELECT ?2 + i * 1000, ?2 + i * 1000, 'agent-' || (i % 1000), 'host-' || (i % 200),
                    CASE WHEN i % 50 = 0 THEN 'close' ELSE 'connect' END,
                    CASE i % 100 WHEN 1 THEN 'deny' WHEN 2 THEN 'audit' ELSE 'allow' END,
                    'user-' || (i % 200), 'device-' || (i % 400), 'res-' || (i % 100),
                    (SELECT data FROM events ORDER BY id LIMIT 1)
             FROM generate_series(1, ?1::bigint) AS i",
            &[Value::Int(n), Value::Int(start_ms)],
        )
        .unwrap();
    conn.sql().batch("ANALYZE events").unwrap();
}

/// The plan of `query_sql(f, 100)`, one line per node. `generic`: the plan a prepared
/// statement uses after its first executions (no values known).
fn postgres_plan(conn: &controller::store::Conn, f: &EventFilter, generic: bool) -> String {
    let (sql, args) = query_sql(f, 100);
    let mode = if generic {
        "force_generic_plan"
    } else {
        "force_custom_plan"
    };
    conn.sql()
        .batch(&format!("SET plan_cache_mode = {mode}"))
        .unwrap();
    let rows = conn.sql().query(&format!("EXPLAIN {sql}"), &args).unwrap();
    rows.iter()
        .map(|r| r.text(0).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The leading column of an events index, by its name: `events_COLUMN` (`events_time`
/// for time_ms) on the table, `events_PARTITION_COLUMN_time_ms_id_idx` (PostgreSQL's name
/// on a partition; `events_PARTITION_time_ms_id_idx` for time_ms).
fn index_column(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("events_")?;
    if let Some(rest) = rest.strip_suffix("_time_ms_id_idx") {
        return Some(rest.split_once('_').map_or("time_ms", |(_, col)| col));
    }
    Some(if rest == "time" { "time_ms" } else { rest })
}

/// Whether `plan` reads `events` through indexes only (no sequential scan, no bitmap
/// scan, no sort under the LIMIT: the newest rows from an index's end), and, wherever the
/// planner expects matching rows (10 or more: on PostgreSQL a partition without rows in
/// the range may be probed through another index), through the index on `col`.
fn uses_index(plan: &str, col: &str) -> Result<(), String> {
    let scans: Vec<&str> = plan.lines().filter(|l| l.contains(" on events")).collect();
    if scans.is_empty() {
        return Err("no scan of events".into());
    }
    let mut on_col = 0;
    for l in &scans {
        if !l.contains("Index Scan") {
            return Err(format!("not an index scan: {}", l.trim()));
        }
        let index = l
            .split_once(" using ")
            .map(|(_, r)| r.split(' ').next().unwrap_or(""));
        let rows: u64 = l
            .split_once(" rows=")
            .and_then(|(_, r)| r.split(' ').next()?.parse().ok())
            .unwrap_or(u64::MAX);
        if index.and_then(index_column) == Some(col) {
            on_col += 1;
        } else if rows >= 10 {
            return Err(format!("not the ({col}, time_ms, id) index: {}", l.trim()));
        }
    }
    if on_col == 0 {
        return Err(format!("the ({col}, time_ms, id) index is not read"));
    }
    // The only sort is the outer one (of at most `limit` rows), above the LIMIT.
    let sorts = plan.lines().filter(|l| l.contains("Sort  ")).count();
    if sorts > 1 {
        return Err(format!("{sorts} sorts"));
    }
    Ok(())
}

/// At 200k rows, PostgreSQL serves every filter from its index (custom and generic
/// plans). Dropping one index makes its filter's plan fall back: the check can fail.
#[test]
fn every_event_filter_reads_an_index_on_postgres() {
    let Some(t) = fresh_database("every_event_filter_reads_an_index_on_postgres") else {
        return;
    };
    let db = Db::parse(&t.url).unwrap();
    let mut store = event_store(&db);
    let start = 1_700_000_000_000;
    store.insert_events("a0", start, vec![ev(0)]).unwrap();
    let conn = db.connect().unwrap();
    assert_eq!(conn.sql().backend(), Backend::Postgres);
    let n = 200_000;
    store.ensure_partitions(start, start + n * 1000).unwrap();
    fill_postgres(&conn, n, start);
    assert_eq!(
        conn.sql()
            .query("SELECT count(*) FROM events_default", &[])
            .unwrap()[0]
            .int(0)
            .unwrap(),
        0,
        "every row is in its day's partition"
    );
    // A day's range: every filter matches more rows than the page (a range matching fewer
    // may be read as a bitmap of the same index, bounded by the rows in the range).
    let (since, until) = (start + n * 1000 / 2, start + n * 1000 / 2 + 86_400_000);
    for (col, f) in filters(since, until) {
        for generic in [false, true] {
            let plan = postgres_plan(&conn, &f, generic);
            if let Err(e) = uses_index(&plan, col) {
                panic!("{f:?} (generic plan: {generic}): {e}\n{plan}");
            }
        }
        // And the statement answers (the newest 100, or fewer in the range).
        let got = store.query_events(&f, 100).unwrap();
        assert!(!got.is_empty(), "{f:?}");
    }
    // Without its index, the host filter is served otherwise.
    conn.sql().batch("DROP INDEX events_host").unwrap();
    let f = &filters(since, until)[10].1;
    assert!(f.host.is_some());
    let plan = postgres_plan(&conn, f, false);
    assert!(uses_index(&plan, "host").is_err(), "{plan}");
}

/// SQLite serves every filter from its index too (`EXPLAIN QUERY PLAN` on 20k rows).
#[test]
fn every_event_filter_reads_an_index_on_sqlite() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(d.path().join("c.db"));
    let mut store = event_store(&db);
    let start = 1_700_000_000_000;
    store.insert_events("a0", start, vec![ev(0)]).unwrap();
    let conn = db.connect().unwrap();
    conn.sql()
        .execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
             INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, user,
                                 device, resource, data)
             SELECT ?1 + i * 1000, ?1 + i * 1000, 'agent-' || (i % 1000), 'host-' || (i % 500),
                    CASE WHEN i % 2 = 0 THEN 'connect' ELSE 'close' END,
                    CASE i % 3 WHEN 0 THEN 'allow' WHEN 1 THEN 'deny' ELSE 'audit' END,
                    'user-' || (i % 2000), 'device-' || (i % 5000), 'res-' || (i % 300),
                    (SELECT data FROM events ORDER BY id LIMIT 1)
             FROM s",
            &[Value::Int(start)],
        )
        .unwrap();
    conn.sql().batch("ANALYZE").unwrap();
    let plan = |f: &EventFilter| {
        let (sql, args) = query_sql(f, 100);
        conn.sql()
            .query(&format!("EXPLAIN QUERY PLAN {sql}"), &args)
            .unwrap()
            .iter()
            .map(|r| r.text(3).unwrap())
            .collect::<Vec<_>>()
    };
    let (since, until) = (start + 10_000_000, start + 13_600_000);
    let check = |plan: &[String], col: &str| -> Result<(), String> {
        let on_events: Vec<&String> = plan.iter().filter(|l| l.contains(" events ")).collect();
        let index = on_events
            .first()
            .and_then(|l| l.split_once("USING INDEX "))
            .map(|(_, r)| r.split(' ').next().unwrap_or(""));
        if on_events.len() != 1 || index.and_then(index_column) != Some(col) {
            return Err(format!("events not read through events_{col}: {plan:?}"));
        }
        // One temporary sort at most: the outer one of the `limit` rows.
        if plan.iter().filter(|l| l.contains("TEMP B-TREE")).count() > 1 {
            return Err(format!("a sort of the matching rows: {plan:?}"));
        }
        Ok(())
    };
    for (col, f) in filters(since, until) {
        let p = plan(&f);
        if let Err(e) = check(&p, col) {
            panic!("{f:?}: {e}");
        }
        assert!(!store.query_events(&f, 100).unwrap().is_empty(), "{f:?}");
    }
    conn.sql().batch("DROP INDEX events_user").unwrap();
    let p = plan(&filters(since, until)[0].1);
    assert!(check(&p, "user").is_err(), "{p:?}");
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// The number in the first column of `sql`'s first row.
fn int(conn: &controller::store::Conn, sql: &str) -> i64 {
    conn.sql().query(sql, &[]).unwrap()[0].int(0).unwrap()
}

/// Retention on PostgreSQL drops the days wholly expired, deletes the expired rows of
/// the boundary day, and keeps the rest; the partitions ahead exist; an insert into a
/// dropped day makes its partition again.
#[test]
fn retention_drops_expired_day_partitions_on_postgres() {
    let Some(t) = fresh_database("retention_drops_expired_day_partitions_on_postgres") else {
        return;
    };
    use controller::store::events::{PARTITIONS_AHEAD, day_of, partition_name};
    let db = Db::parse(&t.url).unwrap();
    let mut store = event_store(&db);
    let conn = db.connect().unwrap();
    let d0 = day_of(1_700_000_000_000);
    let (d1, d2) = (d0 + DAY, d0 + 2 * DAY);
    let mut ids = Vec::new();
    for (k, received) in [d0 + HOUR, d1 + HOUR, d2 + HOUR, d2 + 20 * HOUR]
        .into_iter()
        .enumerate()
    {
        let evs = (0..3).map(|i| ev(k * 3 + i)).collect();
        ids.push(store.insert_events("a1", received, evs).unwrap());
    }
    let names = |store: &EventStore| -> Vec<String> {
        store
            .partitions()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    let before = names(&store);
    for d in [d0, d1, d2] {
        assert!(before.contains(&partition_name(d)), "{before:?}");
        let n = int(
            &conn,
            &format!("SELECT count(*) FROM {}", partition_name(d)),
        );
        assert_eq!(n, if d == d2 { 6 } else { 3 }, "{}", partition_name(d));
    }
    assert_eq!(int(&conn, "SELECT count(*) FROM events_default"), 0);

    assert_eq!(store.prune_events(d2 + 12 * HOUR).unwrap(), 9);
    let after = names(&store);
    assert!(!after.contains(&partition_name(d0)), "{after:?}");
    assert!(!after.contains(&partition_name(d1)), "{after:?}");
    assert!(after.contains(&partition_name(d2)), "{after:?}");
    let today = day_of(controller::now_ms());
    for k in 0..=PARTITIONS_AHEAD {
        assert!(
            after.contains(&partition_name(today + k * DAY)),
            "{after:?}"
        );
    }
    let left: Vec<u64> = store
        .query_events(&EventFilter::default(), 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let want: Vec<u64> = ids[3].iter().map(|r| r.id).collect();
    assert_eq!(left, want);

    // A late event of a dropped day: its partition is made again.
    let late = store.insert_events("a1", d0 + HOUR, vec![ev(99)]).unwrap();
    assert!(names(&store).contains(&partition_name(d0)));
    assert_eq!(
        int(
            &conn,
            &format!("SELECT count(*) FROM {}", partition_name(d0))
        ),
        1
    );
    assert!(late[0].id > want[2]);
}

/// Rows of a day that has no partition wait in `events_default`; when the day's
/// partition is made (here, by the next insert of that day), they move into it intact.
#[test]
fn rows_in_the_default_partition_move_into_their_new_day_on_postgres() {
    let Some(t) = fresh_database("rows_in_the_default_partition_move_on_postgres") else {
        return;
    };
    use controller::store::events::{day_of, partition_name};
    let db = Db::parse(&t.url).unwrap();
    let mut store = event_store(&db);
    let conn = db.connect().unwrap();
    let day = day_of(1_600_000_000_000);
    conn.sql()
        .execute(
            "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict, data)
             VALUES (?1, ?1, 'a0', 'h1', 'connect', 'allow', ?2)",
            &[Value::Int(day + HOUR), Value::Blob(vec![1, 2, 3])],
        )
        .unwrap();
    assert_eq!(int(&conn, "SELECT count(*) FROM events_default"), 1);
    let stored = store
        .insert_events("a1", day + 2 * HOUR, vec![ev(1)])
        .unwrap();
    let name = partition_name(day);
    assert_eq!(int(&conn, "SELECT count(*) FROM events_default"), 0);
    assert_eq!(int(&conn, &format!("SELECT count(*) FROM {name}")), 2);
    let rows = conn
        .sql()
        .query(
            &format!("SELECT id, received_ms, agent_id, data FROM {name} ORDER BY id"),
            &[],
        )
        .unwrap();
    assert_eq!(rows[0].int(1).unwrap(), day + HOUR);
    assert_eq!(rows[0].text(2).unwrap(), "a0");
    assert_eq!(rows[0].blob(3).unwrap(), vec![1, 2, 3]);
    assert_eq!(rows[1].int(0).unwrap() as u64, stored[0].id);
}

/// A database whose events table is the one before partitioning (PostgreSQL schema 3)
/// migrates with its rows: the same ids and columns, each in its day's partition, and new
/// ids continue after the old table's numbering (even past a deleted newest row).
#[test]
fn events_of_the_unpartitioned_schema_migrate_intact_on_postgres() {
    let Some(t) = fresh_database("events_of_the_unpartitioned_schema_migrate_on_postgres") else {
        return;
    };
    use controller::store::events::{day_of, partition_name};
    let db = Db::parse(&t.url).unwrap();
    drop(controller::Store::open(db.clone(), keys()).unwrap());
    let conn = db.connect().unwrap();
    // The events table of PostgreSQL's migrations 1 to 3, at schema version 3.
    conn.sql()
        .batch(
            "DROP TABLE events;
             CREATE TABLE events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time_ms BIGINT NOT NULL,
                received_ms BIGINT NOT NULL, agent_id TEXT NOT NULL, host TEXT NOT NULL,
                event TEXT NOT NULL, verdict TEXT NOT NULL, \"user\" TEXT, device TEXT,
                resource TEXT, data BYTEA NOT NULL);
             CREATE INDEX events_time ON events (time_ms, id);
             CREATE INDEX events_user ON events (\"user\", time_ms, id);
             CREATE INDEX events_device ON events (device, time_ms, id);
             CREATE INDEX events_resource ON events (resource, time_ms, id);
             CREATE INDEX events_event ON events (event, time_ms, id);
             CREATE INDEX events_verdict ON events (verdict, time_ms, id);
             CREATE INDEX events_host ON events (host, time_ms, id);
             UPDATE schema_version SET version = 3;",
        )
        .unwrap();
    // Filled by this controller's store (which cannot partition this table: it says so
    // and inserts).
    let mut old = EventStore::open(&db).unwrap();
    let d0 = day_of(1_700_000_000_000);
    for k in 0..4 {
        let evs = (0..700).map(|i| ev(k * 1000 + i)).collect();
        old.insert_events("a1", d0 + k as i64 * DAY / 2 + HOUR, evs)
            .unwrap();
    }
    drop(old);
    let newest = int(&conn, "SELECT max(id) FROM events");
    conn.sql()
        .execute("DELETE FROM events WHERE id = ?1", &[Value::Int(newest)])
        .unwrap();
    let all = "SELECT id, time_ms, received_ms, agent_id, host, event, verdict, \"user\",
                      device, resource, data FROM events ORDER BY id";
    let before = conn.sql().query(all, &[]).unwrap();
    assert_eq!(before.len(), 2799);
    drop(conn);

    let mut store = event_store(&db);
    let conn = db.connect().unwrap();
    // Migrated to the newest schema (the partitioning is migration 4).
    assert_eq!(int(&conn, "SELECT version FROM schema_version"), 7);
    assert_eq!(conn.sql().query(all, &[]).unwrap(), before);
    assert_eq!(int(&conn, "SELECT count(*) FROM events_default"), 0);
    let placed = conn
        .sql()
        .query(
            "SELECT tableoid::regclass::text, received_ms FROM events",
            &[],
        )
        .unwrap();
    for r in &placed {
        let received = r.int(1).unwrap();
        assert_eq!(r.text(0).unwrap(), partition_name(day_of(received)));
    }
    let days: std::collections::HashSet<String> =
        placed.iter().map(|r| r.text(0).unwrap()).collect();
    assert_eq!(days.len(), 2, "{days:?}");
    let next = store.insert_events("a1", d0 + HOUR, vec![ev(5)]).unwrap();
    assert!(next[0].id as i64 > newest, "{} after {newest}", next[0].id);
    // The filters read the moved rows.
    let f = EventFilter {
        user: Some("user-3".into()),
        ..EventFilter::default()
    };
    assert_eq!(store.query_events(&f, 5).unwrap().len(), 5);
}

/// On PostgreSQL, reported events are stored by a pool of connections: eight threads
/// storing at once get every event stored once, with its own id, through more than one
/// connection and never more than `WRITERS`.
#[test]
fn writers_store_messages_in_parallel_on_postgres() {
    let Some(t) = fresh_database("writers_store_messages_in_parallel_on_postgres") else {
        return;
    };
    use controller::store::events::WRITERS;
    let db = Db::parse(&t.url).unwrap();
    let store = event_store(&db);
    let writers = store.writers().expect("a pool on PostgreSQL");
    let conn = db.connect().unwrap();
    let connections = || {
        int(
            &conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
        )
    };
    let before = connections();
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let w = writers.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for m in 0..10 {
                    let evs: Vec<ConnectionEvent> =
                        (0..300).map(|i| ev(k * 10_000 + m * 300 + i)).collect();
                    let got = w
                        .insert_events(&format!("a{k}"), 1_700_000_000_000, evs.clone())
                        .unwrap();
                    assert_eq!(got.len(), 300);
                    for (r, e) in got.iter().zip(&evs) {
                        assert_eq!(r.event.as_ref(), Some(e));
                    }
                    out.extend(got.into_iter().map(|r| (r.id, r.event)));
                }
                out
            })
        })
        .collect();
    let mut all = std::collections::HashMap::new();
    for t in threads {
        for (id, e) in t.join().unwrap() {
            assert!(all.insert(id, e).is_none(), "id {id} given twice");
        }
    }
    assert_eq!(all.len(), 8 * 10 * 300);
    assert_eq!(int(&conn, "SELECT count(*) FROM events"), 24_000);
    for r in store.query_events(&EventFilter::default(), 10_000).unwrap() {
        assert_eq!(all[&r.id], r.event, "id {}", r.id);
    }
    let used = connections() - before;
    assert!(
        (2..=WRITERS as i64).contains(&used),
        "{used} connections stored events (at most {WRITERS})"
    );
}
