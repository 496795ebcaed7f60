//! Shell completions and man pages of `gateway-agent` (checks shared by the three binaries in
//! `gateway_test_support::cli_docs`): the bash script knows the subcommands; `man --dir`
//! writes one roff page per command that `man -l` renders.
#![allow(clippy::unwrap_used)]

use gateway_test_support::cli_docs::{check_completions, check_man_pages};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-agent");
const SUBCOMMANDS: &[&str] = &[
    "run",
    "detach",
    "status",
    "public-key",
    "rotate-key",
    "maps",
    "completions",
];

#[test]
fn bash_completions_name_every_subcommand() {
    check_completions(Path::new(BIN), "gateway-agent", SUBCOMMANDS);
}

#[test]
fn man_pages_render() {
    let dir = std::env::temp_dir().join(format!("gateway-agent-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    check_man_pages(Path::new(BIN), "gateway-agent", SUBCOMMANDS, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
