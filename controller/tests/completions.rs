//! Shell completions and man pages of `gateway-controller` (checks shared by the three binaries in
//! `gateway_test_support::cli_docs`): the bash script knows the subcommands; `man --dir`
//! writes one roff page per command that `man -l` renders.
#![allow(clippy::unwrap_used)]

use gateway_test_support::cli_docs::{check_completions, check_man_pages};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-controller");
const SUBCOMMANDS: &[&str] = &["init", "run", "audit-verify", "completions"];

#[test]
fn bash_completions_name_every_subcommand() {
    check_completions(Path::new(BIN), "gateway-controller", SUBCOMMANDS);
}

#[test]
fn man_pages_render() {
    let dir = std::env::temp_dir().join(format!("gateway-controller-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    check_man_pages(Path::new(BIN), "gateway-controller", SUBCOMMANDS, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
