//! A real controller on 127.0.0.1 (ephemeral port) with a temporary database, and real
//! tonic clients.
//!
//! The store: a SQLite file by default; with `GATEWAY_TEST_STORE=postgres`, every
//! database path a test uses stands for a fresh PostgreSQL database of its own (in the
//! cluster `GATEWAY_TEST_POSTGRES` names; `cargo xtask test` runs the suite both ways).
//! Tests reach their database only through [`db`], [`open_state`], [`open_store`],
//! [`db_args`] and [`raw`], so the same test runs on both backends.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::store::{Db, Value};
use gateway_test_support::postgres::{TestDatabase, fresh_database};

use controller::auth::AuthedAdminClient;
use gateway_proto::v1::{self, admin_client::AdminClient, agent_client::AgentClient};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const DEMO: &str = include_str!("../../../examples/demo.toml");

pub struct Controller {
    pub addr: SocketAddr,
    pub state: Arc<controller::State>,
    /// An admin API key.
    pub admin_key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Controller {
    /// A controller on the database `db` stands for (see the module docs).
    pub async fn start(db: &Path) -> Controller {
        Controller::start_state(open_state(db)).await
    }

    /// A controller on the SQLite file `path`, whatever `GATEWAY_TEST_STORE` says (for
    /// the tests about the file itself).
    pub async fn start_sqlite(path: &Path) -> Controller {
        Controller::start_state(controller::State::open(path, 30).expect("open state")).await
    }

    /// A controller serving `state`.
    pub async fn start_state(state: controller::State) -> Controller {
        Controller::start_with(state, controller::ServeOptions::default()).await
    }

    /// A controller serving `state` with `opts`.
    pub async fn start_with(
        state: controller::State,
        opts: controller::ServeOptions,
    ) -> Controller {
        let state = Arc::new(state);
        let admin_key = state
            .bootstrap_admin_key(&format!("test-admin-{}", controller::random_hex(4)))
            .expect("admin key");
        let (tx, rx) = oneshot::channel();
        let (addr, task) = controller::spawn_with(
            "127.0.0.1:0".parse().unwrap(),
            state.clone(),
            None,
            opts,
            async {
                let _ = rx.await;
            },
        )
        .await
        .expect("serve");
        Controller {
            addr,
            state,
            admin_key,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }

    /// An Admin client with an admin API key.
    pub async fn admin(&self) -> AuthedAdminClient {
        controller::auth::admin_client(self.channel().await, &self.admin_key)
    }

    /// An Admin client sending `secret`.
    pub async fn admin_as(&self, secret: &str) -> AuthedAdminClient {
        controller::auth::admin_client(self.channel().await, secret)
    }

    /// An Admin client without credentials.
    pub async fn anonymous(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn agent(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel().await)
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.state.close_watchers();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server stops in time")
                .expect("join")
                .expect("server ok");
        }
    }
}

/// A temporary folder and the database path in it (see the module docs); the folder
/// goes, and on PostgreSQL the databases of paths in it are dropped, with the first value.
pub fn tempdir() -> (TestDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("controller.db");
    (TestDir(d), p)
}

/// A test's temporary folder ([`tempdir`]).
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let dir = self.0.path();
        postgres_databases()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|path, _| !path.starts_with(dir));
    }
}

/// True when the tests' controllers run on PostgreSQL (`GATEWAY_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("GATEWAY_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("GATEWAY_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// The PostgreSQL database of each database path (see the module docs).
fn postgres_databases() -> &'static Mutex<HashMap<PathBuf, Arc<TestDatabase>>> {
    static DBS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<TestDatabase>>>> =
        std::sync::OnceLock::new();
    DBS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The database a test's `path` stands for: the SQLite file itself, or on PostgreSQL a
/// fresh database made the first time `path` is used (a controller restarted on `path`
/// finds its data again).
pub fn db(path: &Path) -> Db {
    if !on_postgres() {
        return Db::Sqlite(path.to_path_buf());
    }
    let mut dbs = postgres_databases()
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let t =
        dbs.entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(
                    fresh_database(&format!("controller database {}", path.display()))
                        .unwrap_or_else(|| {
                            panic!(
                                "GATEWAY_TEST_STORE=postgres needs a cluster: set \
                             GATEWAY_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres \
                             (cargo xtask test starts one)"
                            )
                        }),
                )
            })
            .clone();
    Db::parse(&t.url).expect("test database URL")
}

/// The key file of the database at `path`: `controller.key` next to it, where the
/// controller keeps it for a SQLite file by default (and where tests give it for
/// PostgreSQL, which needs --key-file).
pub fn key_file(path: &Path) -> PathBuf {
    controller::keys::default_key_file(path)
}

/// The options a controller on `path` opens its state with.
pub fn options(path: &Path, retention_days: u32) -> controller::state::Options {
    controller::state::Options {
        retention_days,
        key_file: Some(key_file(path)),
    }
}

/// The controller state of the database at `path` (as `State::open(path, 30)`).
pub fn open_state(path: &Path) -> controller::State {
    try_open_state(path).expect("open state")
}

/// [`open_state`], the error as text.
pub fn try_open_state(path: &Path) -> Result<controller::State, String> {
    controller::State::open_with(db(path), &options(path, 30)).map_err(|e| e.to_string())
}

/// The store of the database at `path`, with `keys`.
pub fn open_store(
    path: &Path,
    keys: Arc<controller::keys::Keys>,
) -> Result<controller::Store, controller::Error> {
    controller::Store::open(db(path), keys)
}

/// The `--db` (and, on PostgreSQL, `--key-file`) arguments of the binary for `path`.
pub fn db_args(path: &Path) -> Vec<OsString> {
    match db(path) {
        Db::Sqlite(p) => vec!["--db".into(), p.into()],
        Db::Postgres(u) => vec![
            "--db".into(),
            u.as_str().into(),
            "--key-file".into(),
            key_file(path).into(),
        ],
    }
}

/// Copies the database at `from` to `to` (nothing may be connected to `from`): the
/// SQLite file and its WAL, or a PostgreSQL database made from `from`'s as a template.
pub fn copy_db(from: &Path, to: &Path) {
    if !on_postgres() {
        std::fs::copy(from, to).unwrap();
        let wal = |p: &Path| {
            let mut w = p.as_os_str().to_owned();
            w.push("-wal");
            PathBuf::from(w)
        };
        let _ = std::fs::remove_file(wal(to));
        if wal(from).exists() {
            std::fs::copy(wal(from), wal(to)).unwrap();
        }
        return;
    }
    db(from);
    let mut dbs = postgres_databases()
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let copy = dbs[from].copy();
    dbs.insert(to.to_path_buf(), Arc::new(copy));
}

/// Removes the database at `path` (the SQLite file, or the PostgreSQL database).
pub fn remove_db(path: &Path) {
    if on_postgres() {
        postgres_databases()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// A raw connection to the database at `path`, for a test to read or tamper with it
/// (`?N` placeholders on both backends).
pub struct Raw(controller::store::Conn);

impl Raw {
    pub fn execute(&self, sql: &str, args: &[Value]) -> u64 {
        self.0
            .sql()
            .execute(sql, args)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
    pub fn query(&self, sql: &str, args: &[Value]) -> Vec<controller::store::Row> {
        self.0
            .sql()
            .query(sql, args)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
    /// The first column of the first row, as an integer.
    pub fn int(&self, sql: &str, args: &[Value]) -> i64 {
        self.query(sql, args)
            .first()
            .unwrap_or_else(|| panic!("{sql}: no row"))
            .int(0)
            .unwrap()
    }
    /// The first column of the first row, as text.
    pub fn text(&self, sql: &str, args: &[Value]) -> String {
        self.query(sql, args)
            .first()
            .unwrap_or_else(|| panic!("{sql}: no row"))
            .text(0)
            .unwrap()
    }
    pub fn batch(&self, sql: &str) {
        self.0
            .sql()
            .batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A raw connection to the database at `path` (see [`Raw`]).
pub fn raw(path: &Path) -> Raw {
    Raw(db(path).connect().expect("connect to the test database"))
}

pub async fn apply(admin: &mut AuthedAdminClient, text: &str) -> v1::Plan {
    admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy_toml: text.into(),
            file_name: "policy.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .expect("apply")
        .into_inner()
        .plan
        .unwrap()
}

/// Enrolls an agent for `host`; returns its auth.
pub async fn enroll(ctl: &Controller, host: &str) -> v1::AgentAuth {
    let mut admin = ctl.admin().await;
    let tok = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: host.into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let r = ctl
        .agent()
        .await
        .enroll(v1::EnrollRequest {
            token: tok.token,
            hostname: format!("test-{host}"),
            public_key: wg_key(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    v1::AgentAuth {
        agent_id: r.agent_id,
        credential: r.credential,
    }
}

/// The next watch message, within `secs`.
pub async fn next(
    s: &mut tonic::Streaming<v1::WatchResponse>,
    secs: u64,
) -> Option<v1::WatchResponse> {
    tokio::time::timeout(Duration::from_secs(secs), s.message())
        .await
        .ok()
        .and_then(|r| r.expect("stream ok"))
}

/// Opens `auth`'s watch stream from generation 0 and reads its snapshot: the stream, the
/// view and its generation.
/// Opens an agent's watch stream from `generation` on `agent`'s connection.
#[allow(dead_code)] // not every test binary watches
pub async fn open_watch(
    agent: &mut AgentClient<Channel>,
    auth: &v1::AgentAuth,
    generation: u64,
) -> tonic::Streaming<v1::WatchResponse> {
    agent
        .watch(v1::WatchRequest {
            auth: Some(auth.clone()),
            generation,
        })
        .await
        .unwrap()
        .into_inner()
}

#[allow(dead_code)] // not every test binary watches
pub async fn watch_snapshot(
    ctl: &Controller,
    auth: &v1::AgentAuth,
) -> (
    tonic::Streaming<v1::WatchResponse>,
    policy_compiler::HostView,
    u64,
) {
    let mut stream = open_watch(&mut ctl.agent().await, auth, 0).await;
    let m = next(&mut stream, 5).await.expect("snapshot");
    assert_eq!(m.base_generation, 0);
    let Some(v1::watch_response::Update::Snapshot(v)) = m.update else {
        panic!("snapshot expected")
    };
    (
        stream,
        gateway_proto::view_from_wire(&v).unwrap(),
        m.generation,
    )
}

pub fn now() -> i64 {
    controller::now_unix()
}

/// The audit hash of databases from before the key (b4ae6b8): SHA-256 without a key,
/// which anyone can compute.
#[allow(clippy::too_many_arguments)]
pub fn unkeyed_hash(
    id: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: &str,
    after: &str,
    revision: u64,
    prev_hash: &str,
) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"ztgw-audit-v1");
    for f in [
        id.to_string().as_str(),
        time_ms.to_string().as_str(),
        actor,
        action,
        target,
        before,
        after,
        revision.to_string().as_str(),
        prev_hash,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A WireGuard public key no other call in this test process returns.
pub fn wg_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut b = [0x42u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    policy_compiler::WgKey(b).to_string()
}
