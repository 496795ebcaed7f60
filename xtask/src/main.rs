//! `cargo xtask <task>`: the project's own automation, so a fresh machine needs nothing but
//! this repository and a Rust toolchain.

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
    /// by the tests (iproute2, nftables, bpftool).
    Setup,
    /// Run setup, then every test in the workspace (root-only tests included), with a
    /// summary. Privileged tests skip when not root unless CI=true, where they fail.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then build everything (eBPF object included) in release mode.
    Build,
    /// `cargo fmt --check` and `cargo clippy` over the workspace, warnings denied.
    Lint,
    /// Differential fuzzing: random policies and random (valid and malformed) packets
    /// through the loaded XDP/TC programs and the reference evaluator. Prints one JSON
    /// line; fails on any mismatch. Needs root.
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
            util::cargo(&[
                "build",
                "--release",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
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
                "gateway-user",
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
