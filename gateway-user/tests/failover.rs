//! A managed agent with several controllers (`[controller] url` and `fallback_urls`, two
//! controllers on one PostgreSQL database): when the controller it watches dies, the
//! agent connects to the next one, resumes from the generation it has (no snapshot
//! again), and takes that controller's next change.
//!
//! The controllers run in this process, each on a runtime of its own; killing one drops
//! its runtime, which closes its sockets at once as the kernel does for a killed
//! process. Needs the PostgreSQL cluster `cargo xtask test` starts (reported as a skip
//! without one, a failure under `CI=true`); no BPF, no namespaces (loopback only).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::State;
use controller::state::{ChangeOpts, Options};
use controller::store::Db;
use gateway_test_support::postgres::fresh_database;
use gateway_user::agent::config::ControllerConfig;
use gateway_user::agent::managed::{self, Link, Update};
use tokio::sync::{mpsc, oneshot};

const DEMO: &str = include_str!("../../examples/demo.toml");
const HOST: &str = "connector:demo-connector";

fn options(key: &Path) -> Options {
    Options {
        retention_days: 30,
        key_file: Some(key.to_path_buf()),
    }
}

/// A controller serving on 127.0.0.1 from a runtime of its own.
struct Replica {
    addr: SocketAddr,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(db: &Db, key: &Path) -> Replica {
        let (db, key) = (db.clone(), key.to_path_buf());
        let (kill, killed) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let state = Arc::new(State::open_with(db, &options(&key)).unwrap());
                let (addr, _task) = controller::spawn(
                    "127.0.0.1:0".parse().unwrap(),
                    state,
                    std::future::pending(),
                )
                .await
                .unwrap();
                ready_tx.send(addr).unwrap();
                let _ = killed.await;
            });
            // Dropping the runtime cancels the server and every connection task.
            drop(rt);
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Replica {
            addr,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next update the watch passes on, acknowledged as applied.
async fn next_update(rx: &mut mpsc::Receiver<Update>, what: &str) -> u64 {
    let update = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no update within 20 s: {what}"))
        .unwrap_or_else(|| panic!("the watch ended: {what}"));
    let generation = update.generation;
    let _ = update.done.send(Ok(()));
    generation
}

fn config(urls: &[String], token: &str, identity: PathBuf) -> ControllerConfig {
    let text = format!(
        "url = {:?}\nfallback_urls = {:?}\nenrollment_token = {token:?}\nidentity_file = {:?}\n",
        urls[0],
        &urls[1..],
        identity
    );
    toml::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_controller_and_resumes() {
    let Some(pg) =
        fresh_database("failover::an_agent_fails_over_to_the_next_controller_and_resumes")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("controller.key");
    let db = Db::parse(&pg.url).unwrap();
    // The policy and an enrollment token, then the agent enrolls through the first
    // controller; the second starts after (a controller loads the database at start).
    let setup = State::open_with(db.clone(), &options(&key)).unwrap();
    setup
        .apply_policy(DEMO, "policy.toml", &ChangeOpts::default())
        .unwrap();
    let token = setup.create_token(HOST, 600, "local:test").unwrap().token;
    let admin_key = setup.bootstrap_admin_key("failover-test").unwrap();
    drop(setup);
    let mut first = Replica::start(&db, &key);
    let urls = vec![first.url()];
    let cfg = config(&urls, &token, dir.path().join("identity.json"));
    let id = managed::enroll(&Link::new(&cfg).unwrap(), &cfg, HOST, None)
        .await
        .unwrap();
    let second = Replica::start(&db, &key);
    let both = vec![first.url(), second.url()];
    let cfg = config(&both, &token, dir.path().join("identity.json"));
    let link = Link::new(&cfg).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let watch = tokio::spawn(managed::watch(link.clone(), id.clone(), tx));

    let g1 = next_update(&mut rx, "the first view, from the first controller").await;
    assert_eq!(link.url(), first.url(), "the agent starts with `url`");

    // The controller it watches dies: the agent moves to the next one.
    let killed = Instant::now();
    first.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while link.url() != second.url() {
        assert!(
            Instant::now() < deadline,
            "the agent did not move to the second controller within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "failover: connected to the second controller {:.0} ms after the first died",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    // It resumed from g1: the second controller had nothing newer, so nothing came.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "the agent got a view again after failing over, though it had the current one"
    );

    // A change through the second controller reaches the agent through it.
    let text = DEMO.replace("tcp = [\"443\"]", "tcp = [\"443\", \"8443\"]");
    assert_ne!(text, DEMO);
    change_through(&second, &admin_key, &text).await;
    let g2 = next_update(&mut rx, "the change, from the second controller").await;
    assert!(g2 > g1, "generation {g2} after {g1}");
    watch.abort();
}

/// Applies `text` through `replica`'s gRPC API with the admin key `key`.
async fn change_through(replica: &Replica, key: &str, text: &str) {
    let channel = tonic::transport::Channel::from_shared(replica.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    controller::auth::admin_client(channel, key)
        .apply_policy(gateway_proto::v1::ApplyPolicyRequest {
            policy_toml: text.into(),
            file_name: "demo.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .unwrap();
}
