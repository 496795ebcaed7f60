//! PostgreSQL-only behaviour of the store: several controllers (here, several `State`s)
//! on one database stay linear (the policy revision and the audit chain), and the
//! errors of a PostgreSQL `--db` are clear and never show the password.
//!
//! The tests that need a cluster take a fresh database from the one `cargo xtask test`
//! starts (`GATEWAY_TEST_POSTGRES`); without one they are reported as skipped, and fail
//! under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Barrier};

use controller::state::ChangeOpts;
use controller::state::Options;
use controller::store::Db;
use controller::{Error, State};
use gateway_test_support::postgres::fresh_database;

const DEMO: &str = common::DEMO;

fn test_name(name: &str) -> String {
    format!("{}::{name}", module_path!())
}

/// A test's fresh database (dropped with it), a folder for the key file, the key file's path
/// and the database as `--db` gives it.
struct Setup {
    pg: gateway_test_support::postgres::TestDatabase,
    dir: tempfile::TempDir,
    key: std::path::PathBuf,
    db: Db,
}

/// [`Setup`] for the test `name`; `None`: skipped (no cluster, CI unset).
fn setup(name: &str) -> Option<Setup> {
    let pg = fresh_database(&test_name(name))?;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("controller.key");
    let db = Db::parse(&pg.url).unwrap();
    Some(Setup { pg, dir, key, db })
}

/// Opens a controller's state on `db` with the key file `key`.
fn open(db: &Db, key: &std::path::Path) -> State {
    State::open_with(
        db,
        &Options {
            retention_days: 30,
            key_file: Some(key.to_path_buf()),
        },
    )
    .unwrap()
}

/// Runs `f(0)` and `f(1)` on two threads released together; their results in order.
fn together<T: Send + 'static>(f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_controllers_on_one_database_apply_one_at_a_time() {
    let Some(Setup {
        pg: _pg,
        dir: _dir,
        key,
        db,
    }) = setup("two_controllers_on_one_database_apply_one_at_a_time")
    else {
        return;
    };
    let opts = |who: &str, revision: u64| ChangeOpts {
        expected_revision: Some(revision),
        actor: format!("key:{who}"),
        ..ChangeOpts::default()
    };
    open(&db, &key)
        .apply_policy(DEMO, "policy.toml", &opts("setup", 0))
        .unwrap();
    const ROUNDS: u64 = 12;
    for round in 0..ROUNDS {
        // Two controllers that both read revision r, and both apply a change made from
        // it (each its own: both would bump the revision).
        let states = [Arc::new(open(&db, &key)), Arc::new(open(&db, &key))];
        let r = states[0].revision();
        assert_eq!(states[1].revision(), r);
        assert_eq!(r, round + 1);
        let s = states.clone();
        let results = together(move |i| {
            let who = ["a", "b"][i];
            let text = format!("{DEMO}\n[[user]]\nemail = \"r{round}-{who}@example.com\"\n");
            s[i].apply_policy(&text, "policy.toml", &opts(who, r))
        });
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one of two conflicting applies wins: {results:?}"
        );
        let lost = &results[1 - won[0]];
        match lost {
            // Made from revision r, it finds the winner's revision r + 1 (by catching up
            // first, or by the database refusing it and the change being made again).
            Err(Error::FailedPrecondition(m)) => {
                assert!(
                    m.contains(&format!(
                        "at revision {}, not the expected revision {r}",
                        r + 1
                    )),
                    "{m}"
                )
            }
            other => panic!("round {round}: the other is refused as a conflict: {other:?}"),
        }
        drop(states);
        // What is stored is the winner's change, at revision r + 1.
        let fresh = open(&db, &key);
        assert_eq!(fresh.revision(), r + 1);
        let winner = ["a", "b"][won[0]];
        let (text, _) = fresh.policy();
        assert!(
            text.contains(&format!("r{round}-{winner}@example.com"))
                && !text.contains(&format!("r{round}-{}@example.com", ["a", "b"][1 - won[0]])),
            "round {round}: {text}"
        );
    }
    // The audit trail verifies, and the applies it records have strictly increasing
    // revisions, one per round (and the first).
    let state = open(&db, &key);
    let v = state.verify_audit(None).unwrap();
    assert!(v.ok, "{v:?}");
    let revisions: Vec<u64> = state
        .audit_report(None, None, 0)
        .unwrap()
        .iter()
        .filter(|r| r.action == "apply_policy")
        .map(|r| r.revision)
        .collect();
    assert_eq!(revisions, (1..=ROUNDS + 1).collect::<Vec<_>>());
}

#[test]
fn two_controllers_append_to_one_audit_chain() {
    let Some(Setup {
        pg: _pg,
        dir: _dir,
        key,
        db,
    }) = setup("two_controllers_append_to_one_audit_chain")
    else {
        return;
    };
    let states = [Arc::new(open(&db, &key)), Arc::new(open(&db, &key))];
    const EACH: usize = 20;
    let s = states.clone();
    let results = together(move |i| {
        (0..EACH)
            .map(|n| s[i].bootstrap_admin_key(&format!("key-{i}-{n}")))
            .collect::<Vec<_>>()
    });
    for r in results.iter().flatten() {
        assert!(r.is_ok(), "every audited change commits: {r:?}");
    }
    drop(states);
    let state = open(&db, &key);
    let v = state.verify_audit(None).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 2 * EACH as u64);
    let records = state.audit_report(None, None, 0).unwrap();
    assert!(
        records.windows(2).all(|w| w[1].prev_hash == w[0].hash),
        "one chain, no fork"
    );
    // Both controllers' records are in it, interleaved as they committed.
    for i in 0..2 {
        assert_eq!(
            records
                .iter()
                .filter(|r| r.target.starts_with(&format!("api_key:key-{i}-")))
                .count(),
            EACH
        );
    }
}

#[test]
fn a_database_newer_than_the_controller_is_refused_by_name() {
    let Some(Setup {
        pg,
        dir: _dir,
        key,
        db,
    }) = setup("a_database_newer_than_the_controller_is_refused_by_name")
    else {
        return;
    };
    drop(open(&db, &key));
    let conn = db.connect().unwrap();
    conn.sql()
        .execute("UPDATE schema_version SET version = version + 1", &[])
        .unwrap();
    let e = State::open_with(
        &db,
        &Options {
            retention_days: 30,
            key_file: Some(key.clone()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("newer than this controller"), "{e}");
    assert!(e.contains(&pg.url), "names the database: {e}");
    // The twin: at its own version it opens.
    conn.sql()
        .execute("UPDATE schema_version SET version = version - 1", &[])
        .unwrap();
    drop(open(&db, &key));
}

#[test]
fn postgres_errors_name_the_url_without_its_password() {
    // Not a URL.
    let e = Db::parse("postgres://app:s3cret@db.example:notaport/zt")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid PostgreSQL URL"), "{e}");
    assert!(
        e.contains("postgres://app:***@db.example:notaport/zt") && !e.contains("s3cret"),
        "{e}"
    );
    // Nothing listens on the port: refused, at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/zt");
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let e = State::open_with(
        Db::parse(&url).unwrap(),
        &Options {
            retention_days: 30,
            key_file: Some(dir.path().join("controller.key")),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(e.contains("cannot connect"), "{e}");
    assert!(
        e.contains(&format!("postgres://app:***@127.0.0.1:{port}/zt")) && !e.contains("s3cret"),
        "{e}"
    );
    assert!(e.lines().count() == 1, "one line: {e}");
    // Without --key-file: said before anything connects.
    let e = State::open_with(Db::parse(&url).unwrap(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--key-file is required"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    // The twin: a SQLite path needs neither.
    State::open_with(dir.path().join("c.db"), &Options::default()).unwrap();
}

#[test]
fn the_binary_says_what_is_wrong_with_a_postgres_db() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/zt");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["audit-verify", "--db", &url]);
    assert!(!ok && err.contains("--key-file is required"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("controller.key");
    controller::keys::Keys::create(&key).unwrap();
    let (ok, err) = run(&[
        "audit-verify",
        "--db",
        &url,
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("cannot connect"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let (ok, err) = run(&["init", "--db", "postgres://app:s3cret@h:x/zt"]);
    assert!(!ok && err.contains("not a valid PostgreSQL URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_controller_reconnects_after_the_server_closed_its_connections() {
    let Some(Setup {
        pg: _pg,
        dir: _dir,
        key,
        db,
    }) = setup("a_controller_reconnects_after_the_server_closed_its_connections")
    else {
        return;
    };
    let state = open(&db, &key);
    state.bootstrap_admin_key("before").unwrap();
    let filter = controller::model::EventFilter::default();
    state.query_events(&filter, 10).unwrap();
    // An administrator (or a restart, a failover) closes every connection of the
    // controller to its database.
    let admin = db.connect().unwrap();
    let cut = admin
        .sql()
        .query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()[0]
        .int(0)
        .unwrap();
    assert!(cut >= 2, "the state's and the events' connections: {cut}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The call that finds a connection broken may fail; the next ones work again.
    let attempts: Vec<bool> = (0..2)
        .map(|i| state.bootstrap_admin_key(&format!("after-{i}")).is_ok())
        .collect();
    assert_eq!(attempts.last(), Some(&true), "{attempts:?}");
    let _ = state.query_events(&filter, 10);
    state.query_events(&filter, 10).unwrap();
    assert!(state.verify_audit(None).unwrap().ok);
    assert!(state.list_api_keys().iter().any(|k| k.name == "after-1"));
}

/// The singleton jobs (expiry recompiles, event retention, the audit head export) run on
/// one controller of a database at a time, and move to another when that one dies.
#[test]
fn singleton_jobs_run_on_one_controller_and_move_when_it_dies() {
    let Some(Setup {
        pg: _pg,
        dir: _dir,
        key,
        db,
    }) = setup("singleton_jobs_run_on_one_controller_and_move_when_it_dies")
    else {
        return;
    };
    let first = open(&db, &key);
    let second = open(&db, &key);
    assert!(first.lead_singletons(), "the first to ask runs the jobs");
    for _ in 0..3 {
        assert!(!second.lead_singletons(), "two controllers run the jobs");
        assert!(
            first.lead_singletons(),
            "the first lost the jobs while alive"
        );
    }
    // The first dies: its connections close, the server releases the lock.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !second.lead_singletons() {
        assert!(
            std::time::Instant::now() < deadline,
            "the jobs did not move to the second controller within 20 s of the first's end"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And a third controller started now does not take them from the second.
    let third = open(&db, &key);
    assert!(!third.lead_singletons());
    assert!(second.lead_singletons());
}
