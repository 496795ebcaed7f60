//! `cargo xtask test`: setup, then every test of the workspace, then the controller's
//! tests again on PostgreSQL (a throwaway cluster of its own), then one summary line each.

use crate::pg_cluster::Cluster;
use crate::util::{cargo_bin, is_root, root};
use anyhow::{Context as _, Result, bail};
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

/// The variable that gives the tests the cluster (a superuser URL of its `postgres`
/// database); tests make a database of their own in it.
const POSTGRES_ENV: &str = "GATEWAY_TEST_POSTGRES";

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    let started = Instant::now();
    if !is_root() {
        println!(
            "test: not root: tests that need BPF and namespaces will {}",
            if in_ci() { "FAIL (CI=true)" } else { "skip" }
        );
    }
    // Stopped and removed when this function returns, also on failure.
    let cluster = match Cluster::start(&[
        ("max_connections", "300"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
    ])
    .map_err(anyhow::Error::msg)
    {
        Ok(c) => {
            println!(
                "postgres: cluster on 127.0.0.1:{} (data {}, {}) ready in {:.1}s",
                c.port,
                c.data().display(),
                c.bin.display(),
                c.start_seconds
            );
            Some(c)
        }
        Err(e) if in_ci() => return Err(e.context("postgres: cannot start the test cluster")),
        Err(e) => {
            println!("postgres: no test cluster ({e:#}): the PostgreSQL tests skip");
            None
        }
    };
    let url = cluster.as_ref().map(Cluster::url);
    let all = cargo_test(
        &["--workspace", "--exclude", "gateway-ebpf"],
        &[],
        url.as_deref(),
        extra,
    )?;
    // The controller's suite again, every controller on a fresh PostgreSQL database.
    let pg = match &url {
        Some(_) => Some(cargo_test(
            &["-p", "controller"],
            &[("GATEWAY_TEST_STORE", "postgres")],
            url.as_deref(),
            extra,
        )?),
        None => None,
    };
    drop(cluster);
    println!();
    let mut bad = Vec::new();
    all.report("summary", started, true, &mut bad);
    match &pg {
        // A filter (extra arguments) may match no test of the controller.
        Some(pg) => pg.report(
            "summary (controller on PostgreSQL)",
            pg.started,
            extra.is_empty(),
            &mut bad,
        ),
        None => {
            println!("summary (controller on PostgreSQL): skipped (no PostgreSQL cluster)");
            if in_ci() {
                bad.push("the controller's suite on PostgreSQL did not run".into());
            }
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// What one `cargo test` run did.
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    failures: Vec<String>,
    skipped: Vec<String>,
    success: bool,
    started: Instant,
}

impl Counts {
    fn report(&self, what: &str, started: Instant, require_tests: bool, bad: &mut Vec<String>) {
        for f in &self.failures {
            println!("  {f}");
        }
        for s in &self.skipped {
            println!("  skipped: {s}");
        }
        println!(
            "{what}: {} passed, {} failed, {} skipped, {} ignored ({:.0}s)",
            self.passed,
            self.failed,
            self.skipped.len(),
            self.ignored,
            started.elapsed().as_secs_f64()
        );
        if !self.success || self.failed > 0 {
            bad.push(format!("{what}: tests failed"));
        }
        if !self.skipped.is_empty() && in_ci() {
            bad.push(format!(
                "{what}: {} tests skipped: in CI a skip is a failure",
                self.skipped.len()
            ));
        }
        if self.passed == 0 && require_tests {
            bad.push(format!("{what}: no test ran"));
        }
    }
}

/// Runs `cargo test ARGS --no-fail-fast [-- EXTRA]` with `envs`, echoing its output and
/// counting its results.
fn cargo_test(
    args: &[&str],
    envs: &[(&str, &str)],
    postgres: Option<&str>,
    extra: &[String],
) -> Result<Counts> {
    let started = Instant::now();
    // Privileged tests that skip (not root, CI unset) leave a marker here: they are
    // reported as skipped, not passed.
    let skip_dir =
        std::env::temp_dir().join(format!("zt-skips-{:016x}", crate::pg_cluster::rand_u64()));
    let _ = std::fs::remove_dir_all(&skip_dir);
    let mut cmd = Command::new(cargo_bin());
    cmd.env("ZT_SKIP_DIR", &skip_dir);
    match postgres {
        Some(url) => cmd.env(POSTGRES_ENV, url),
        None => cmd.env_remove(POSTGRES_ENV),
    };
    cmd.envs(envs.iter().copied());
    cmd.arg("test")
        .args(args)
        .arg("--no-fail-fast")
        .current_dir(root())
        .stdout(Stdio::piped());
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(what))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        } else if line.starts_with("test ") && line.ends_with(" FAILED") {
            failures.push(line);
        }
    }
    let status = child.wait()?;
    let mut skipped: Vec<String> = std::fs::read_dir(&skip_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    skipped.sort();
    let _ = std::fs::remove_dir_all(&skip_dir);
    // A skipped test returned early, so the harness counted it as passed.
    let passed = passed.saturating_sub(skipped.len() as u64);
    Ok(Counts {
        passed,
        failed,
        ignored,
        failures,
        skipped,
        success: status.success(),
        started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Runs `psql` of the installation in `bin` on 127.0.0.1:`port`.
    fn psql(bin: &Path, port: u16, sql: &str) -> Option<String> {
        crate::util::output(
            &bin.join("psql").to_string_lossy(),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
                sql,
            ],
        )
    }

    #[test]
    fn a_cluster_serves_on_loopback_and_is_gone_when_dropped() {
        if crate::setup::postgres_bin_dir().is_none() {
            assert!(
                !in_ci(),
                "PostgreSQL is not installed and CI=true forbids skipping"
            );
            eprintln!("SKIP a_cluster_serves_on_loopback: PostgreSQL is not installed");
            if let Some(dir) = std::env::var_os("ZT_SKIP_DIR") {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(
                    Path::new(&dir).join(format!("xtask-cluster-{}", std::process::id())),
                    "xtask::test::a_cluster_serves_on_loopback_and_is_gone_when_dropped",
                );
            }
            return;
        }
        let cluster = Cluster::start(&[]).unwrap();
        let (dir, port, bin) = (cluster.dir.clone(), cluster.port, cluster.bin.clone());
        assert!(
            cluster
                .url()
                .starts_with(&format!("postgres://postgres@127.0.0.1:{port}/")),
            "{}",
            cluster.url()
        );
        assert_eq!(psql(&bin, port, "SELECT 1").as_deref(), Some("1"));
        assert_eq!(
            psql(&bin, port, "SHOW listen_addresses").as_deref(),
            Some("127.0.0.1")
        );
        drop(cluster);
        assert!(!dir.exists(), "{} is removed", dir.display());
        assert_eq!(psql(&bin, port, "SELECT 1"), None, "the server stopped");

        // A cluster whose owner died without stopping it (Ctrl-C) is stopped and removed
        // by the next start; one whose owner lives is left alone.
        let abandoned = Cluster::start(&[]).unwrap();
        let (dir, port) = (abandoned.dir.clone(), abandoned.port);
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        std::fs::write(dir.join("owner.pid"), dead_pid.to_string()).unwrap();
        std::mem::forget(abandoned);
        let alive = Cluster::start(&[]).unwrap();
        let next = Cluster::start(&[]).unwrap();
        assert!(
            !dir.exists(),
            "the abandoned cluster's {} is removed",
            dir.display()
        );
        assert_eq!(
            psql(&bin, port, "SELECT 1"),
            None,
            "the abandoned server stopped"
        );
        assert_eq!(
            psql(&bin, alive.port, "SELECT 1").as_deref(),
            Some("1"),
            "a live owner's cluster is left alone"
        );
        drop((alive, next));
    }
}
