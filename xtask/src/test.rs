//! `cargo xtask test`: setup, then every test of the workspace, then one summary line.

use crate::util::{cargo_bin, is_root, root};
use anyhow::{Context as _, Result, bail};
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    let started = Instant::now();
    if !is_root() {
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
        println!(
            "test: not root: tests that need BPF and namespaces will {}",
            if ci { "FAIL (CI=true)" } else { "skip" }
        );
    }
    // Privileged tests that skip (not root, CI unset) leave a marker here: they are
    // reported as skipped, not passed.
    let skip_dir = std::env::temp_dir().join(format!("zt-skips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&skip_dir);
    let mut cmd = Command::new(cargo_bin());
    cmd.env("ZT_SKIP_DIR", &skip_dir);
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--no-fail-fast",
    ])
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
    println!();
    for f in &failures {
        println!("  {f}");
    }
    for s in &skipped {
        println!("  skipped: {s}");
    }
    println!(
        "summary: {passed} passed, {failed} failed, {} skipped, {ignored} ignored ({:.0}s)",
        skipped.len(),
        started.elapsed().as_secs_f64()
    );
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    if !skipped.is_empty() && matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1")) {
        bail!("{} tests skipped: in CI a skip is a failure", skipped.len());
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
