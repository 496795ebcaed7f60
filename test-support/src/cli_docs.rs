//! The shell completions and man pages every binary ships (`completions SHELL`, the hidden
//! `man --dir DIR`), checked the same way for each.

use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &Path, args: &[&str]) -> Output {
    let o = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(
        o.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The bash script registers itself for `name` and names every one of `subcommands`, and
/// not a word that is none of them; zsh works too; an unknown shell is a usage error
/// (exit 2).
pub fn check_completions(bin: &Path, name: &str, subcommands: &[&str]) {
    let script = String::from_utf8(run(bin, &["completions", "bash"]).stdout)
        .expect("the completion script is UTF-8");
    // `complete -F _FUNCTION ... NAME`: registered for this binary.
    assert!(
        script
            .lines()
            .any(|l| l.trim_start().starts_with("complete -F ") && l.ends_with(&format!(" {name}"))),
        "{script}"
    );
    for sub in subcommands {
        assert!(script.contains(sub), "no `{sub}` in the bash completions");
    }
    // Control: a word that is not a subcommand is not offered.
    assert!(!script.contains("frobnicate"));
    assert!(!run(bin, &["completions", "zsh"]).stdout.is_empty());
    let o = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .expect("running the binary");
    assert_eq!(o.status.code(), Some(2));
}

/// `man --dir DIR` writes `NAME.1` and `NAME-SUB.1` for each of `subcommands`, each a roff
/// page with a title header that `man -l` renders with its NAME section (when `man` is
/// installed; otherwise only the roff header is checked).
pub fn check_man_pages(bin: &Path, name: &str, subcommands: &[&str], dir: &Path) {
    run(
        bin,
        &["man", "--dir", dir.to_str().expect("a UTF-8 folder name")],
    );
    let mut pages = vec![dir.join(format!("{name}.1"))];
    for sub in subcommands {
        pages.push(dir.join(format!("{name}-{sub}.1")));
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
                .expect("running man");
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "man -l {}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains("NAME") && text.contains(name),
                "{}: {text}",
                p.display()
            );
        }
    }
}
