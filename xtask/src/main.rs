//! `cargo xtask <task>`: the project's own automation, so a fresh machine needs nothing but
//! this repository and a Rust toolchain.

// Shared with the tests and the bench, which use more of it (restart, for one).
#[allow(dead_code)]
#[path = "../../test-support/src/pg_cluster.rs"]
mod pg_cluster;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and set up the gateway")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): the nightly rust-src component,
    /// bpf-linker built against the nightly toolchain's own LLVM, and Debian packages used
    /// by the tests (iproute2, nftables, bpftool, postgresql).
    Setup,
    /// Run setup, then every test in the workspace (root-only tests included), then the
    /// controller's tests again on PostgreSQL (a throwaway cluster on 127.0.0.1, removed
    /// at the end), with a summary line each. Privileged tests skip when not root unless
    /// CI=true, where they fail.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then build everything (eBPF object included) in release mode.
    Build,
    /// `cargo fmt --check` and `cargo clippy` over the workspace, warnings denied.
    Lint,
    /// The end-to-end demo (needs root): builds gateway-agent, gateway-demo and gatewayctl
    /// in release mode, then runs gateway-demo: two laptops, a connector and a resource
    /// host as network namespaces, real agents, allowed and denied traffic and a port scan,
    /// every outcome and log record checked against examples/demo.toml.
    Demo {
        /// Keep the agent configurations and connection logs (the folder is printed).
        #[arg(long)]
        keep_logs: bool,
        /// Three controllers on one PostgreSQL database (a cluster of the demo's own): the
        /// agents list all three, and at the end the one they use is killed and a change
        /// goes through another.
        #[arg(long)]
        ha: bool,
    },
    /// Run setup, then the benchmark suite (decision cost, throughput against nftables,
    /// compile and apply times); writes bench/results/<run>.json|.md, latest.* and
    /// latest-*.svg. Needs root for the kernel suites. See bench/README.md.
    Bench {
        /// Fewer repetitions and sizes: well under 10 minutes.
        #[arg(long)]
        quick: bool,
        /// Only these suites (comma-separated): decision, throughput, compile, apply,
        /// peers, tunnel, controller.
        #[arg(long, value_name = "SUITES")]
        only: Option<String>,
        /// Run the suites this many times, then write bench/results/summary.md: every goal
        /// with the range of its measured value over the runs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Throughput on this real interface with your own traffic generator (only the
        /// throughput suite runs): the no-op, drop-all and gateway XDP programs are
        /// attached to IFACE in turn. Not for CI; see bench/README.md.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
        /// Seconds per engine with --iface.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "iface")]
        duration: u32,
        /// Policy size (rules) with --iface.
        #[arg(long, value_name = "N", default_value_t = 10_000, requires = "iface")]
        rules: u32,
    },
    /// Write the man pages of gatewayctl, gateway-agent and gateway-controller (one page
    /// per command and subcommand) into target/man; read one with `man -l
    /// target/man/gatewayctl-apply.1`.
    Man,
    /// Differential fuzzing: random policies and random (valid and malformed) packets
    /// through the loaded XDP/TC programs and the reference evaluator, and the same
    /// sequences through the tunnel programs on a TUN device (`l3` in the output). Prints
    /// one JSON line; fails on any mismatch at either. Needs root.
    FuzzDataplane {
        /// Random policies to generate.
        #[arg(long, default_value_t = 100)]
        policies: u64,
        /// Packets per policy (spread over the policy's connectors and devices).
        #[arg(long, default_value_t = 10_000)]
        packets: u64,
        /// Seed of the generator (runs are deterministic per seed).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test { args } => test::run(&args),
        Task::Build => {
            setup::run()?;
            // What ships, built on its own: a workspace-wide build would unify the dev-only
            // crates' features (gateway-user/testing) into the agent.
            util::cargo(&[
                "build",
                "--release",
                "--package",
                "gateway-user",
                "--package",
                "controller",
                "--package",
                "gatewayctl",
                "--bins",
            ])
        }
        Task::FuzzDataplane {
            policies,
            packets,
            seed,
        } => {
            setup::run()?;
            util::cargo(&[
                "run",
                "--quiet",
                "--release",
                "--package",
                "gateway-test-support",
                "--bin",
                "gateway-fuzz",
                "--",
                "--policies",
                &policies.to_string(),
                "--packets",
                &packets.to_string(),
                "--seed",
                &seed.to_string(),
            ])
        }
        Task::Demo { keep_logs, ha } => {
            if !util::is_root() {
                anyhow::bail!(
                    "the demo creates network namespaces and loads eBPF programs: run it as \
                     root (e.g. `sudo -E cargo xtask demo`)"
                );
            }
            setup::run()?;
            // The shipped binaries as they ship (without the dev-only crates' features),
            // then the demo.
            util::cargo(&[
                "build",
                "--release",
                "--package",
                "gateway-user",
                "--package",
                "gatewayctl",
                "--package",
                "controller",
                "--bin",
                "gateway-controller",
                "--bin",
                "gateway-agent",
                "--bin",
                "gatewayctl",
            ])?;
            util::cargo(&[
                "build",
                "--release",
                "--package",
                "gateway-demo",
                "--bin",
                "gateway-demo",
            ])?;
            // Where cargo put them: CARGO_TARGET_DIR (relative to the workspace root, where
            // `util::cargo` runs) or <workspace>/target.
            let root = util::root();
            let release = std::env::var_os("CARGO_TARGET_DIR")
                .map(|d| root.join(d))
                .unwrap_or_else(|| root.join("target"))
                .join("release");
            let mut demo = std::process::Command::new(release.join("gateway-demo"));
            demo.arg("--agent")
                .arg(release.join("gateway-agent"))
                .arg("--gatewayctl")
                .arg(release.join("gatewayctl"))
                .arg("--controller")
                .arg(release.join("gateway-controller"))
                .arg("--policy")
                .arg(root.join("examples/demo.toml"))
                .current_dir(&root);
            if keep_logs {
                demo.arg("--keep-logs");
            }
            if ha {
                demo.arg("--ha");
            }
            util::run(&mut demo)
        }
        Task::Bench {
            quick,
            only,
            runs,
            iface,
            duration,
            rules,
        } => {
            setup::run()?;
            let (duration, rules) = (duration.to_string(), rules.to_string());
            let mut args = vec!["run", "--release", "--package", "bench", "--"];
            if quick {
                args.push("--quick");
            }
            match iface.as_deref() {
                Some(iface) => {
                    args.extend(["--only", "throughput", "--iface", iface]);
                    args.extend(["--duration", &duration, "--rules", &rules]);
                }
                None => {
                    if let Some(only) = only.as_deref() {
                        args.extend(["--only", only]);
                    }
                }
            }
            // The ha suite runs `gateway-controller` processes (on a PostgreSQL cluster the
            // bench starts).
            let ha = iface.is_none()
                && only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|s| s == "ha"));
            if ha {
                util::cargo(&[
                    "build",
                    "--release",
                    "--package",
                    "controller",
                    "--bin",
                    "gateway-controller",
                ])?;
            }
            for i in 1..=runs {
                if runs > 1 {
                    eprintln!("xtask bench: run {i} of {runs}");
                }
                util::cargo(&args)?;
            }
            if runs > 1 {
                let n = runs.to_string();
                util::cargo(&[
                    "run",
                    "--release",
                    "--package",
                    "bench",
                    "--",
                    "--summarize",
                    &n,
                ])?;
            }
            Ok(())
        }
        Task::Man => {
            let dir = util::root().join("target").join("man");
            let dir = dir.to_string_lossy();
            for (package, bin) in [
                ("gatewayctl", "gatewayctl"),
                ("gateway-user", "gateway-agent"),
                ("controller", "gateway-controller"),
            ] {
                util::cargo(&[
                    "run",
                    "--quiet",
                    "--package",
                    package,
                    "--bin",
                    bin,
                    "--",
                    "man",
                    "--dir",
                    &dir,
                ])?;
            }
            println!("man pages in {dir}");
            Ok(())
        }
        Task::Lint => {
            setup::run()?;
            util::cargo(&["fmt", "--all", "--check"])?;
            util::cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        }
    }
}
