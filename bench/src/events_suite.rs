//! Connection events at fleet scale, on PostgreSQL (a throwaway cluster of this run's own,
//! default durability settings) and on SQLite (a file in a temporary folder):
//!
//! * ingestion: 1000 agents enrolled on a controller in this process (plaintext gRPC on
//!   127.0.0.1), each running the agent's own event reporter
//!   (`gateway_user::agent::managed::report`: it sends what is waiting, up to 1024 events a
//!   `ReportEvents` message, one message at a time, over its own connection), fed 40
//!   events a second each for 20 s (5 s with `--quick`). Measured: events stored a second
//!   from the first event offered to the last one stored (every one is checked stored);
//! * reads: the table filled to 10M rows on PostgreSQL (`generate_series`; 1M on SQLite,
//!   whose fill is a recursive CTE; 2M and 200k with `--quick`) over 30 days of 1000
//!   hosts, 5000 users, 10000 devices, 500 resources, then `QueryEvents` through the
//!   Admin API with limit 100: by user, by host, by resource within 6 hours, each value
//!   and window drawn at random per query; p50/p99 on the client side, and the plan of
//!   one query of each kind (`EXPLAIN ANALYZE` / `EXPLAIN QUERY PLAN` of the exact SQL the
//!   store runs, `controller::store::events::query_sql`).

use crate::controller_suite::{Local, Stats, policy, stats};
use crate::progress;
use anyhow::{Context as _, Result, bail};
use controller::store::{Backend, Db, Value};
use gateway_proto::v1;
use gateway_test_support::pg_cluster::Cluster;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Ingestion {
    pub agents: usize,
    /// Events a second offered to the agents' reporters (all agents together).
    pub offered_per_sec: f64,
    pub events: u64,
    /// From the first event offered to the last stored.
    pub seconds: f64,
    pub stored_per_sec: f64,
    /// How long after the offering ended the last event was stored.
    pub drain_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Read {
    /// `user`, `host`, `resource_6h`.
    pub filter: String,
    pub limit: u32,
    pub latency: Stats,
    /// Events returned per query, on average.
    pub mean_returned: f64,
    /// The plan of one such query (one line per node).
    pub plan: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// `postgres` or `sqlite`.
    pub backend: String,
    pub ingestion: Ingestion,
    /// Rows in the table when it was read.
    pub rows: u64,
    pub fill_seconds: f64,
    pub reads: Vec<Read>,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub runs: Vec<Run>,
}

const AGENTS: usize = 1000;
const PER_AGENT_PER_SEC: usize = 40;
const TICK: Duration = Duration::from_millis(50);
const DAY_MS: i64 = 86_400_000;
const SPAN_DAYS: i64 = 30;

/// A small deterministic generator (xorshift) for the drawn filter values.
struct Draw(u64);
impl Draw {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn now_ms() -> i64 {
    controller::now_ms()
}

fn event(ts: &str) -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: ts.into(),
        ..crate::controller_suite::event()
    }
}

pub fn run(opts: &crate::Opts, out: &mut Summary) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zt-bench-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        // PostgreSQL.
        let cluster = Cluster::start(&[("max_connections", "200")]).map_err(anyhow::Error::msg)?;
        progress(&format!(
            "events: PostgreSQL cluster on 127.0.0.1:{} ready in {:.1}s",
            cluster.port, cluster.start_seconds
        ));
        gateway_test_support::postgres::run_sql(&cluster.url(), "CREATE DATABASE bench_events")
            .map_err(anyhow::Error::msg)?;
        let url = gateway_test_support::postgres::with_database(&cluster.url(), "bench_events");
        let db = Db::parse(&url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let rows = if opts.quick { 2_000_000 } else { 10_000_000 };
        let r = run_on(opts, db, &dir.join("pg.key"), rows)?;
        out.runs.push(r);
        drop(cluster);
        // SQLite.
        let rows = if opts.quick { 200_000 } else { 1_000_000 };
        let db = Db::Sqlite(dir.join("controller.db"));
        let r = run_on(opts, db, &dir.join("controller.key"), rows)?;
        out.runs.push(r);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_on(opts: &crate::Opts, db: Db, key_file: &Path, rows: i64) -> Result<Run> {
    let backend = match db.backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let state = controller::State::open_with(
        db.clone(),
        &controller::state::Options {
            retention_days: SPAN_DAYS as u32 + 1,
            key_file: Some(key_file.to_path_buf()),
        },
    )
    .map_err(|e| anyhow::anyhow!("{backend}: opening the controller: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let local = Local::start_state(state).await?;
        // One address makes every call here: no per-agent event quota.
        local.state.set_event_quota(1e9, 1e9);
        let mut admin = local.admin();
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: policy(),
                file_name: "policy.toml".into(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .context("applying the policy")?;
        let ingestion = ingest(opts, &local, &db, backend).await?;
        let t = Instant::now();
        let total = fill(&db, rows, backend)?;
        let fill_seconds = t.elapsed().as_secs_f64();
        progress(&format!(
            "events ({backend}): {total} rows after the fill ({fill_seconds:.0} s)"
        ));
        let reads = read(opts, &local, &db).await?;
        local.stop().await?;
        Ok(Run {
            backend: backend.into(),
            ingestion,
            rows: total,
            fill_seconds,
            reads,
            note: match db.backend() {
                Backend::Postgres => format!(
                    "{rows} rows filled with generate_series into the day partitions of the last \
                     {SPAN_DAYS} days; PostgreSQL's default settings (fsync on, shared_buffers \
                     128MB)"
                ),
                Backend::Sqlite => format!(
                    "{rows} rows only (SQLite's fill is a recursive CTE, and one file on one \
                     connection is not the store for 10M rows: see the PostgreSQL run)"
                ),
            },
        })
    })
}

/// 1000 agents enrolled, each with the agent's reporter, fed for the suite's time.
async fn ingest(opts: &crate::Opts, local: &Local, db: &Db, backend: &str) -> Result<Ingestion> {
    use gateway_user::agent::managed;
    let mut admin = local.admin();
    let mut agent_api = v1::agent_client::AgentClient::new(local.channel.clone());
    let t = Instant::now();
    let mut ids = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let e = crate::controller_suite::enroll(
            &mut admin,
            &mut agent_api,
            "connector:demo-connector",
            &format!("bench-{i}"),
            "",
        )
        .await?;
        ids.push(managed::Identity {
            agent_id: e.agent_id,
            credential: e.credential,
            host: "connector:demo-connector".into(),
        });
    }
    progress(&format!(
        "events ({backend}): {AGENTS} agents enrolled in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let cfg = gateway_user::agent::config::ControllerConfig {
        url: local.url.clone(),
        fallback_urls: Vec::new(),
        ca_file: None,
        enrollment_token: None,
        enrollment_token_file: None,
        identity_file: std::env::temp_dir().join("unused-identity.json"),
    };
    let mut feeds = Vec::with_capacity(AGENTS);
    let mut reporters = Vec::with_capacity(AGENTS);
    for id in ids {
        let (tx, rx) = tokio::sync::mpsc::channel(100_000);
        let link = managed::Link::new(&cfg)?;
        reporters.push(tokio::spawn(managed::report(link, id, rx)));
        feeds.push(tx);
    }
    let seconds = if opts.quick { 5.0 } else { 20.0 };
    let per_tick = PER_AGENT_PER_SEC * TICK.as_millis() as usize / 1000;
    progress(&format!(
        "events ({backend}): offering {} events/s from {AGENTS} agents for {seconds:.0} s",
        PER_AGENT_PER_SEC * AGENTS
    ));
    let start = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    let mut offered = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        let ts = policy_compiler::format_rfc3339(now_ms() / 1000);
        let ev = event(&ts);
        for f in &feeds {
            for _ in 0..per_tick {
                f.send(ev.clone())
                    .await
                    .context("an agent's reporter stopped")?;
                offered += 1;
            }
        }
    }
    let offering = start.elapsed().as_secs_f64();
    drop(feeds);
    for r in reporters {
        r.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let count = count_rows(db, backend)?;
    if count != offered {
        bail!("{backend}: {offered} events offered, {count} stored");
    }
    let r = Ingestion {
        agents: AGENTS,
        offered_per_sec: offered as f64 / offering,
        events: offered,
        seconds: elapsed,
        stored_per_sec: offered as f64 / elapsed,
        drain_seconds: elapsed - offering,
    };
    progress(&format!(
        "events ({backend}): {} events stored at {:.0}/s (offered {:.0}/s; the last stored {:.1} s after the offering ended)",
        r.events, r.stored_per_sec, r.offered_per_sec, r.drain_seconds
    ));
    Ok(r)
}

fn count_rows(db: &Db, backend: &str) -> Result<u64> {
    let conn = db.connect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = conn
        .sql()
        .query("SELECT count(*) FROM events", &[])
        .map_err(|e| anyhow::anyhow!("{backend}: {e}"))?[0]
        .int(0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(n as u64)
}

/// Adds `rows` events over the last 30 days (through the store's schema: on PostgreSQL
/// into the day partitions, made first) with one stored event's data; returns the rows in
/// the table.
fn fill(db: &Db, rows: i64, backend: &str) -> Result<u64> {
    let e = |e: controller::Error| anyhow::anyhow!("{backend}: filling: {e}");
    let end = now_ms();
    let start = end - SPAN_DAYS * DAY_MS;
    let step = (end - start) / rows;
    let conn = db.connect().map_err(e)?;
    let select = "'agent-' || (i % 1000), 'connector:c' || (i % 1000),
        CASE WHEN i % 10 < 5 THEN 'flow_start' WHEN i % 10 < 9 THEN 'flow_end' ELSE 'deny' END,
        CASE WHEN i % 10 = 9 THEN 'deny' WHEN i % 50 = 3 THEN 'audit' ELSE 'allow' END,
        'u' || (i * 7 % 5000) || '@example.com', 'd' || (i * 13 % 10000), 'r' || (i * 3 % 500),
        (SELECT data FROM events ORDER BY id LIMIT 1)";
    let chunk = 1_000_000;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let args = [
            Value::Int(done + 1),
            Value::Int(done + n),
            Value::Int(start),
            Value::Int(step),
        ];
        match db.backend() {
            Backend::Postgres => {
                if done == 0 {
                    let mut events = controller::EventStore::open(db).map_err(e)?;
                    events.ensure_partitions(start, end).map_err(e)?;
                }
                conn.sql()
                    .execute(
                        &format!(
                            "INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict,
                                                 \"user\", device, resource, data)
                             SELECT ?3 + i * ?4, ?3 + i * ?4, {select}
                             FROM generate_series(?1::bigint, ?2::bigint) AS i"
                        ),
                        &args,
                    )
                    .map_err(e)?;
            }
            Backend::Sqlite => {
                conn.sql()
                    .execute(
                        &format!(
                            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2)
                             INSERT INTO events (time_ms, received_ms, agent_id, host, event, verdict,
                                                 user, device, resource, data)
                             SELECT ?3 + i * ?4, ?3 + i * ?4, {select} FROM s"
                        ),
                        &args,
                    )
                    .map_err(e)?;
            }
        }
        done += n;
        progress(&format!("events ({backend}): filled {done} of {rows} rows"));
    }
    conn.sql()
        .batch(match db.backend() {
            Backend::Postgres => "ANALYZE events",
            Backend::Sqlite => "ANALYZE",
        })
        .map_err(e)?;
    let n = conn
        .sql()
        .query("SELECT count(*) FROM events", &[])
        .map_err(e)?[0]
        .int(0)
        .map_err(e)?;
    Ok(n as u64)
}

/// The filtered reads, through the Admin API.
async fn read(opts: &crate::Opts, local: &Local, db: &Db) -> Result<Vec<Read>> {
    let mut admin = local.admin();
    let queries = if opts.quick { 50 } else { 300 };
    let limit = 100;
    let end = now_ms();
    let start = end - SPAN_DAYS * DAY_MS;
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let conn = db.connect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for kind in ["user", "host", "resource_6h"] {
        let filter = |d: &mut Draw| -> v1::EventFilter {
            let mut f = v1::EventFilter::default();
            match kind {
                "user" => f.user = Some(format!("u{}@example.com", d.next(5000))),
                "host" => f.host = Some(format!("connector:c{}", d.next(1000))),
                _ => {
                    f.resource = Some(format!("r{}", d.next(500)));
                    let since = start + d.next((SPAN_DAYS * DAY_MS - 6 * 3_600_000) as u64) as i64;
                    f.since_unix_ms = Some(since);
                    f.until_unix_ms = Some(since + 6 * 3_600_000);
                }
            }
            f
        };
        let sample = filter(&mut draw);
        let plan = plan(&conn, &sample, limit)?;
        let mut ms = Vec::with_capacity(queries);
        let mut returned = 0usize;
        let t0 = Instant::now();
        for _ in 0..queries {
            let f = filter(&mut draw);
            let t = Instant::now();
            let got = admin
                .query_events(v1::QueryEventsRequest {
                    filter: Some(f.clone()),
                    limit,
                })
                .await
                .with_context(|| format!("QueryEvents {f:?}"))?
                .into_inner()
                .events;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            if got.is_empty() || got.len() > limit as usize {
                bail!("QueryEvents {f:?}: {} events", got.len());
            }
            returned += got.len();
        }
        let latency = stats(ms, t0.elapsed().as_secs_f64());
        progress(&format!(
            "events: by {kind}: p50 {:.2} ms, p99 {:.2} ms ({} queries, limit {limit})",
            latency.p50_ms, latency.p99_ms, latency.calls
        ));
        out.push(Read {
            filter: kind.into(),
            limit,
            latency,
            mean_returned: returned as f64 / queries as f64,
            plan,
        });
    }
    Ok(out)
}

/// The plan of the store's SQL for `f`: `EXPLAIN (ANALYZE, BUFFERS)` on PostgreSQL,
/// `EXPLAIN QUERY PLAN` on SQLite.
fn plan(conn: &controller::store::Conn, f: &v1::EventFilter, limit: u32) -> Result<Vec<String>> {
    let filter = controller::model::EventFilter {
        since_ms: f.since_unix_ms,
        until_ms: f.until_unix_ms,
        user: f.user.clone(),
        device: f.device.clone(),
        resource: f.resource.clone(),
        event: f.event.clone(),
        verdict: f.verdict.clone(),
        host: f.host.clone(),
    };
    let (sql, args) = controller::store::events::query_sql(&filter, limit);
    let e = |e: controller::Error| anyhow::anyhow!("explaining {sql}: {e}");
    let (explain, col) = match conn.sql().backend() {
        Backend::Postgres => ("EXPLAIN (ANALYZE, BUFFERS)", 0),
        Backend::Sqlite => ("EXPLAIN QUERY PLAN", 3),
    };
    conn.sql()
        .query(&format!("{explain} {sql}"), &args)
        .map_err(e)?
        .iter()
        .map(|r| r.text(col).map_err(e))
        .collect()
}
