//! Several controllers on one PostgreSQL database, each serving admins and agents: a
//! change committed through any of them reaches the agents of all of them (notified at
//! commit, caught up by sequence when a notification is lost), concurrent changes on
//! different controllers stay linear, and revocations made on one hold on the others.
//!
//! Needs the cluster `cargo xtask test` starts (`GATEWAY_TEST_POSTGRES`); reported as
//! skipped without one, and failing under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Controller, DEMO, enroll, next, open_watch};
use controller::State;
use controller::auth::Perm;
use controller::state::{ChangeOpts, Options};
use controller::store::{Db, Store};
use gateway_proto::v1;
use gateway_test_support::postgres::{TestDatabase, fresh_database};

/// A test's database, its key file, and the database as each controller's `--db` names
/// it (`application_name` tells the controllers' connections apart on the server).
struct Setup {
    _pg: TestDatabase,
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
    url: String,
}

fn setup(name: &str) -> Option<Setup> {
    let pg = fresh_database(&format!("{}::{name}", module_path!()))?;
    let dir = tempfile::tempdir().unwrap();
    Some(Setup {
        key: dir.path().join("controller.key"),
        url: pg.url.clone(),
        _pg: pg,
        _dir: dir,
    })
}

impl Setup {
    /// The database as controller `who` names it.
    fn db(&self, who: &str) -> Db {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        Db::parse(&format!("{}{sep}application_name=replica-{who}", self.url)).unwrap()
    }

    fn state(&self, who: &str) -> State {
        State::open_with(
            self.db(who),
            &Options {
                retention_days: 30,
                key_file: Some(self.key.clone()),
            },
        )
        .unwrap()
    }

    /// A controller serving on loopback. `poll`: how often it catches up without being
    /// notified (an hour: only notifications and its own changes make it catch up).
    async fn controller(&self, who: &str, poll: Duration) -> Controller {
        Controller::start_with(
            self.state(who),
            controller::ServeOptions {
                sync_every: poll,
                ..controller::ServeOptions::default()
            },
        )
        .await
    }

    /// Controllers A and B (catching up only when notified, or when they change
    /// something), the demo policy applied through A.
    async fn pair(&self) -> (Controller, Controller) {
        let a = self.controller("a", HOUR).await;
        let b = self.controller("b", HOUR).await;
        a.state
            .apply_policy(DEMO, "policy.toml", &admin("a"))
            .unwrap();
        (a, b)
    }

    /// Closes every server connection of controller `who` (its store, events, lock and
    /// listener connections), as a PostgreSQL restart or a network cut would; returns
    /// how many were closed.
    fn cut(&self, who: &str) -> i64 {
        let conn = Db::parse(&self.url).unwrap().connect().unwrap();
        conn.sql()
            .query_opt(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = ?1 AND datname = current_database()",
                &[format!("replica-{who}").into()],
            )
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn admin(who: &str) -> ChangeOpts {
    ChangeOpts {
        actor: format!("key:{who}"),
        ..ChangeOpts::default()
    }
}

/// DEMO with one more resource granted to engineering: the views of the connector and
/// of engineering's devices change.
fn with_resource(n: u32) -> String {
    format!(
        "{DEMO}\n[[resource]]\nname = \"extra-{n}\"\nnetwork = \"corp\"\n\
         address = \"198.18.{}.{}\"\ntcp = [\"443\"]\n\n\
         [[allow]]\nname = \"extra-{n}\"\nprincipals = [\"engineering\"]\n\
         resources = [\"extra-{n}\"]\n",
        n / 200 + 10,
        n % 200 + 1
    )
}

/// The next delta on `stream` within `secs`: (generation, base).
async fn next_delta(
    stream: &mut tonic::Streaming<v1::WatchResponse>,
    secs: u64,
) -> Option<(u64, u64)> {
    let m = next(stream, secs).await?;
    assert!(
        matches!(m.update, Some(v1::watch_response::Update::Delta(_))),
        "a delta, not a snapshot: {m:?}"
    );
    Some((m.generation, m.base_generation))
}

/// An agent's watch stream on `ctl`, after its snapshot: (stream, generation).
async fn watching(
    ctl: &Controller,
    auth: &v1::AgentAuth,
) -> (tonic::Streaming<v1::WatchResponse>, u64) {
    let mut s = open_watch(&mut ctl.agent().await, auth, 0).await;
    let m = next(&mut s, 5).await.expect("the snapshot");
    assert!(matches!(
        m.update,
        Some(v1::watch_response::Update::Snapshot(_))
    ));
    (s, m.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_controller_reaches_the_agents_of_the_others() {
    let Some(db) = setup("a_change_through_one_controller_reaches_the_agents_of_the_others") else {
        return;
    };
    // B and C catch up only when notified (or when they change something themselves).
    let a = db.controller("a", HOUR).await;
    let b = db.controller("b", HOUR).await;
    let c = db.controller("c", HOUR).await;
    a.state
        .apply_policy(DEMO, "policy.toml", &admin("a"))
        .unwrap();
    // Enrolled through A, watching on B at once; enrolled through C, watching on A.
    let conn_auth = enroll(&a, "connector:demo-connector").await;
    let (mut conn_stream, mut conn_gen) = watching(&b, &conn_auth).await;
    let dev_auth = enroll(&c, "device:alice-laptop").await;
    let (mut dev_stream, mut dev_gen) = watching(&a, &dev_auth).await;
    // The device's key, enrolled through C, is in the connector's view on B.
    let (g, base) = next_delta(&mut conn_stream, 10)
        .await
        .expect("the enrollment through C reaches the connector's agent on B");
    assert_eq!(base, conn_gen);
    conn_gen = g;
    for n in 0..5u32 {
        // Through A, then B, then C...
        let via = [&a, &b, &c][n as usize % 3];
        let started = Instant::now();
        via.state
            .apply_policy(&with_resource(n), "policy.toml", &admin("x"))
            .unwrap();
        let (g, base) = next_delta(&mut conn_stream, 10)
            .await
            .unwrap_or_else(|| panic!("change {n}: the connector's agent on B got nothing"));
        assert_eq!(
            base, conn_gen,
            "change {n}: the delta applies to what it has"
        );
        conn_gen = g;
        let (g, base) = next_delta(&mut dev_stream, 10)
            .await
            .unwrap_or_else(|| panic!("change {n}: the device's agent on A got nothing"));
        assert_eq!(base, dev_gen);
        dev_gen = g;
        eprintln!(
            "change {n} through {}: both agents had it after {:?}",
            ["a", "b", "c"][n as usize % 3],
            started.elapsed()
        );
    }
    // Every controller serves the same revision and views (the one whose agents had
    // nothing to wait for may still be catching up: a notification is a few ms).
    for ctl in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctl.state.revision() != 6 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ctl.state.revision(), 6);
        assert_eq!(
            ctl.state.generations()["connector:demo-connector"],
            conn_gen
        );
    }
    for ctl in [a, b, c] {
        ctl.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_whose_connections_were_cut_catches_up_by_sequence() {
    let Some(db) = setup("a_controller_whose_connections_were_cut_catches_up_by_sequence") else {
        return;
    };
    let (a, b) = db.pair().await;
    let auth = enroll(&a, "connector:demo-connector").await;
    let (mut stream, mut generation) = watching(&b, &auth).await;
    for n in 0..3u32 {
        // Every connection of B's to the server goes: notifications sent before its
        // listener is back are lost; the changes are not.
        assert!(db.cut("b") >= 2, "B's connections were found and closed");
        for m in 0..2u32 {
            a.state
                .apply_policy(&with_resource(n * 2 + m), "policy.toml", &admin("a"))
                .unwrap();
        }
        for m in 0..2 {
            let (g, base) = next_delta(&mut stream, 15).await.unwrap_or_else(|| {
                panic!("round {n}: change {m} did not reach the agent on B after the cut")
            });
            assert_eq!(base, generation);
            generation = g;
        }
    }
    assert_eq!(b.state.revision(), a.state.revision());
    a.stop().await;
    b.stop().await;
}

#[test]
fn concurrent_changes_on_two_controllers_stay_linear() {
    let Some(db) = setup("concurrent_changes_on_two_controllers_stay_linear") else {
        return;
    };
    let states = [Arc::new(db.state("a")), Arc::new(db.state("b"))];
    states[0]
        .apply_policy(DEMO, "policy.toml", &admin("a"))
        .unwrap();
    const EACH: usize = 12;
    let barrier = Arc::new(Barrier::new(3));
    let mut threads = Vec::new();
    // Admins creating users through A and B at once, and agents enrolling through B
    // (an enrollment changes its peers' views: new generations of the same hosts).
    for i in 0..2 {
        let (s, barrier) = (states[i].clone(), barrier.clone());
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            (0..EACH)
                .map(|n| {
                    s.create_object(
                        controller::objects::Kind::User,
                        &format!("[[user]]\nemail = \"u{i}-{n}@example.com\"\n"),
                        &admin(["a", "b"][i]),
                    )
                    .map(|_| ())
                })
                .collect::<Vec<_>>()
        }));
    }
    {
        let (s, barrier) = (states[1].clone(), barrier.clone());
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            (0..EACH)
                .map(|n| {
                    let host = ["device:alice-laptop", "device:bob-laptop"][n % 2];
                    let t = s.create_token(host, 60, "key:b")?;
                    s.enroll(&t.token, "h", None, &common::wg_key(), None)
                        .map(|_| ())
                })
                .collect::<Vec<_>>()
        }));
    }
    for t in threads {
        for r in t.join().unwrap() {
            assert!(
                r.is_ok(),
                "every change commits (made again when another got in between): {r:?}"
            );
        }
    }
    drop(states);
    let state = db.state("check");
    // Every user is there, the revisions are one per change, in order.
    let (text, revision) = state.policy();
    for i in 0..2 {
        for n in 0..EACH {
            assert!(
                text.contains(&format!("u{i}-{n}@example.com")),
                "u{i}-{n} is kept"
            );
        }
    }
    assert_eq!(revision, 1 + 2 * EACH as u64);
    let report = state.audit_report(None, None, 0).unwrap();
    let revisions: Vec<u64> = report
        .iter()
        .filter(|r| r.action == "create_object")
        .map(|r| r.revision)
        .collect();
    assert_eq!(revisions, (2..=1 + 2 * EACH as u64).collect::<Vec<_>>());
    assert_eq!(
        report.iter().filter(|r| r.action == "enroll_agent").count(),
        EACH
    );
    assert!(state.verify_audit(None).unwrap().ok);
    // Each host's generations form one chain: no two changes were given one generation.
    let store = Store::open(
        db.db("check"),
        Arc::new(controller::State::keys_for(db.db("check"), &db.key).unwrap()),
    )
    .unwrap();
    for (host, generation) in store.host_generations().unwrap() {
        let deltas = store.host_deltas(&host, 0, generation).unwrap();
        assert_eq!(
            deltas.last().map(|d| d.0),
            Some(generation).filter(|&g| g > 1),
            "{host}"
        );
        for w in deltas.windows(2) {
            assert_eq!(
                w[1].1, w[0].0,
                "{host}: generation {} follows {}",
                w[1].0, w[0].0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_through_one_controller_hold_on_the_others() {
    let Some(db) = setup("revocations_through_one_controller_hold_on_the_others") else {
        return;
    };
    let (a, b) = db.pair().await;
    // An agent enrolled through A, watching on B; an API key minted through A, used on
    // B. Both work (the positive control).
    let auth = enroll(&a, "connector:demo-connector").await;
    let (mut stream, _) = watching(&b, &auth).await;
    let secret = a.state.bootstrap_admin_key("ops-key").unwrap();
    let bearer = format!("Bearer {secret}");
    b.state.authorize(Some(&bearer), Perm::Read).unwrap();

    // Revoked through A: B ends the agent's stream and refuses the key.
    a.state.revoke_agent(&auth.agent_id, "key:a").unwrap();
    a.state.revoke_api_key("ops-key", "key:a").unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    match ended {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("the revoked agent's stream on B ends: {other:?}"),
    }
    let refused = b
        .agent()
        .await
        .watch(v1::WatchRequest {
            auth: Some(auth.clone()),
            generation: 0,
        })
        .await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.state.authorize(Some(&bearer), Perm::Read) {
            Err(controller::Error::Unauthenticated(_)) => break,
            r => assert!(
                Instant::now() < deadline,
                "the key revoked through A still works on B: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_ride_out_a_postgresql_restart() {
    // A cluster of this test's own (restarting the shared one would cut every other
    // test); run only where the shared one is (the skip rules of `fresh_database`).
    let Some(_shared) = fresh_database(&format!(
        "{}::controllers_ride_out_a_postgresql_restart",
        module_path!()
    )) else {
        return;
    };
    let cluster = gateway_test_support::pg_cluster::Cluster::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Setup {
        _pg: _shared,
        key: dir.path().join("controller.key"),
        url: cluster.url(),
        _dir: dir,
    };
    let (a, b) = db.pair().await;
    let auth = enroll(&a, "connector:demo-connector").await;
    let (mut stream, generation) = watching(&b, &auth).await;

    cluster.restart().unwrap();
    // While the server was away the agent kept its stream (the controllers serve what
    // they hold); the first change after it commits (the connections reopen) and reaches
    // the agent on B (its listener reconnects and catches up).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failed = 0;
    loop {
        match a
            .state
            .apply_policy(&with_resource(1), "policy.toml", &admin("a"))
        {
            Ok(_) => break,
            Err(e) => {
                failed += 1;
                assert!(
                    Instant::now() < deadline,
                    "no change commits after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("changes refused while reconnecting: {failed}");
    let (g, base) = next_delta(&mut stream, 20)
        .await
        .expect("the change after the restart reaches the agent on B");
    assert_eq!(base, generation);
    assert!(g > generation);
    assert_eq!(b.state.revision(), a.state.revision());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_controller_says_where_an_agent_is_connected() {
    let Some(db) = setup("every_controller_says_where_an_agent_is_connected") else {
        return;
    };
    let (a, b) = db.pair().await;
    let auth = enroll(&a, "connector:demo-connector").await;
    let on_a = |ctl: &Controller| {
        ctl.state
            .agents()
            .into_iter()
            .find(|x| x.agent_id == auth.agent_id)
            .unwrap()
    };
    // Not connected anywhere yet (the control).
    let before = on_a(&a);
    assert!(
        !before.connected && before.controller.is_empty(),
        "{before:?}"
    );
    let (_stream, generation) = watching(&b, &auth).await;
    // B says so of its own stream at once; A from B's record (written every 5 s).
    let mine = on_a(&b);
    assert!(mine.connected, "{mine:?}");
    assert_eq!(mine.controller, b.addr.to_string());
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let seen = on_a(&a);
        if seen.connected {
            assert_eq!(seen.controller, b.addr.to_string(), "{seen:?}");
            assert_eq!(seen.current_generation, generation);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never says the agent is connected to B: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
}
