//! A fresh PostgreSQL database per test, in the cluster `cargo xtask test` starts.
//!
//! `GATEWAY_TEST_POSTGRES` holds a superuser URL of the cluster (its `postgres`
//! database). [`fresh_database`] creates `t_<random>` there and drops it (with whatever
//! still connects to it) when the returned [`TestDatabase`] is dropped, so tests run in
//! parallel, each on its own database.
//!
//! Without `GATEWAY_TEST_POSTGRES`, a test that needs PostgreSQL follows the rule of
//! [`crate::privileges`]: under `CI=true` it fails; otherwise it is reported as skipped
//! (a marker in `ZT_SKIP_DIR`), never as passed.

/// The variable that names the test cluster.
pub const ENV: &str = "GATEWAY_TEST_POSTGRES";

/// A database of one test (dropped with this value).
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's URL.
    pub url: String,
    name: String,
    admin_url: String,
}

/// The cluster's URL, when `cargo xtask test` (or the caller) gave one.
pub fn cluster_url() -> Option<String> {
    std::env::var(ENV).ok().filter(|u| !u.is_empty())
}

/// A new empty database for the test `test`: `None` when the test must skip (no cluster,
/// CI unset; the skip is recorded). Panics under `CI=true` without a cluster, and when
/// the cluster refuses the database.
pub fn fresh_database(test: &str) -> Option<TestDatabase> {
    let Some(admin_url) = cluster_url() else {
        if crate::privileges::in_ci() {
            panic!("{test} needs PostgreSQL ({ENV} is not set) and CI=true forbids skipping");
        }
        eprintln!("SKIP {test}: needs PostgreSQL ({ENV} is not set; `cargo xtask test` sets it)");
        crate::privileges::record_skip(test);
        return None;
    };
    let name = format!("t_{:016x}", random_u64());
    run_sql(&admin_url, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("creating the test database {name} ({admin_url}): {e}"));
    Some(TestDatabase {
        url: with_database(&admin_url, &name),
        name,
        admin_url,
    })
}

impl TestDatabase {
    /// A new database with this one's contents (`CREATE DATABASE ... TEMPLATE`; nothing
    /// may be connected to this one).
    pub fn copy(&self) -> TestDatabase {
        let name = format!("t_{:016x}", random_u64());
        run_sql(
            &self.admin_url,
            &format!("CREATE DATABASE {name} TEMPLATE {}", self.name),
        )
        .unwrap_or_else(|e| panic!("copying the test database {}: {e}", self.name));
        TestDatabase {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Err(e) = run_sql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("dropping the test database {}: {e}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

/// Runs `sql` (no result) on `url`, on a thread of its own with its own runtime (so it
/// works in async tests too).
pub fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let io = tokio::spawn(conn);
            let r = client
                .batch_execute(&sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(d) => d.message().to_string(),
                    None => e.to_string(),
                });
            drop(client);
            let _ = io.await;
            r
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_replace_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
            "postgres://postgres@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "t_2"),
            "postgresql://u:p@h/t_2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "t_3"), "postgres://h:1/t_3");
    }
}
