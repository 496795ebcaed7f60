//! Shell completions and man pages of `gatewayctl` (checks shared by the three binaries in
//! `gateway_test_support::cli_docs`): the bash script knows the subcommands; `man --dir`
//! writes one roff page per command that `man -l` renders.
#![allow(clippy::unwrap_used)]

use gateway_test_support::cli_docs::{check_completions, check_man_pages};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_gatewayctl");
const SUBCOMMANDS: &[&str] = &[
    "policy",
    "apply",
    "get",
    "list",
    "events",
    "audit",
    "agents",
    "keys",
    "enroll-token",
    "completions",
];

#[test]
fn bash_completions_name_every_subcommand() {
    check_completions(Path::new(BIN), "gatewayctl", SUBCOMMANDS);
}

#[test]
fn man_pages_render() {
    let dir = std::env::temp_dir().join(format!("gatewayctl-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    check_man_pages(Path::new(BIN), "gatewayctl", SUBCOMMANDS, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
