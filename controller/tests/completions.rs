//! Shell completions and man pages of `gateway-controller`: the bash script knows the subcommands;
//! `man --dir` writes one non-empty roff page per command that `man -l` renders
//! (when `man` is installed; otherwise the roff header is checked).
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-controller");
const SUBCOMMANDS: &[&str] = &["init", "run", "audit-verify", "completions"];

fn run(args: &[&str]) -> std::process::Output {
    let o = Command::new(BIN).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn bash_completions_name_every_subcommand() {
    let script = String::from_utf8(run(&["completions", "bash"]).stdout).unwrap();
    // `complete -F _FUNCTION ... gateway-controller`: registered for this binary.
    assert!(
        script
            .lines()
            .any(|l| l.trim_start().starts_with("complete -F ")
                && l.ends_with(" gateway-controller")),
        "{script}"
    );
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "no `{sub}` in the bash completions");
    }
    // Control: a word that is not a subcommand is not offered.
    assert!(!script.contains("frobnicate"));
    // Another shell works too; an unknown one is a usage error.
    assert!(!run(&["completions", "zsh"]).stdout.is_empty());
    let o = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    let main = dir.path().join("gateway-controller.1");
    let mut pages = vec![main.clone()];
    for sub in SUBCOMMANDS {
        pages.push(dir.path().join(format!("gateway-controller-{sub}.1")));
    }
    let has_man = Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    for p in &pages {
        let roff = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            roff.contains(".TH "),
            "{}: no roff title header",
            p.display()
        );
        if has_man {
            let o = Command::new("man")
                .arg("-l")
                .arg(p)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "man -l {}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains("NAME") && text.contains("gateway-controller"),
                "{}: {text}",
                p.display()
            );
        }
    }
}
