//! examples/README.md stays true: every offline `$ gatewayctl policy …` command in its
//! `console` blocks is run from the workspace root and its output compared with the lines the
//! README shows under it.
//!
//! How a shown block is compared: trailing spaces are ignored; a line that is only `...` stands
//! for any number of output lines; every other shown line must be an output line, in order, and
//! lines shown next to each other must be next to each other in the output. The first shown line
//! is the first output line and the last shown line the last one (unless `...` comes before or
//! after). A command whose output is not shown (nothing under it before the next `$`) must still
//! succeed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// One `$ command` of a console block and the output lines shown under it.
#[derive(Debug)]
struct Shown {
    line: usize,
    command: String,
    output: Vec<String>,
}

/// Every `$ …` of every ```console block of `text`.
fn console_commands(text: &str) -> Vec<Shown> {
    let mut shown: Vec<Shown> = Vec::new();
    let mut in_console = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if !in_console {
            in_console = trimmed.trim_start() == "```console";
            continue;
        }
        if trimmed.trim_start().starts_with("```") {
            in_console = false;
            continue;
        }
        if let Some(cmd) = trimmed.strip_prefix("$ ") {
            // A trailing `# comment` says what the command does; it is not part of it.
            let cmd = match cmd.find("  #") {
                Some(at) => cmd[..at].trim_end(),
                None => cmd,
            };
            shown.push(Shown {
                line: i + 1,
                command: cmd.to_string(),
                output: Vec::new(),
            });
        } else if let Some(last) = shown.last_mut() {
            last.output.push(trimmed.to_string());
        }
    }
    shown
}

/// Where `shown` does not match `actual`: None when it matches (rules in the module doc).
fn mismatch(shown: &[String], actual: &[String]) -> Option<String> {
    // Segments of consecutive shown lines, split at `...`.
    let mut segments: Vec<&[String]> = Vec::new();
    let mut start = 0;
    for (i, l) in shown.iter().enumerate() {
        if l.trim() == "..." {
            segments.push(&shown[start..i]);
            start = i + 1;
        }
    }
    segments.push(&shown[start..]);
    let anchored_start = !segments[0].is_empty();
    let anchored_end = !segments[segments.len() - 1].is_empty();
    let segments: Vec<&[String]> = segments.into_iter().filter(|s| !s.is_empty()).collect();
    let mut at = 0;
    for (n, seg) in segments.iter().enumerate() {
        let first = n == 0 && anchored_start;
        let last = n + 1 == segments.len() && anchored_end;
        let fits = |pos: usize| {
            pos + seg.len() <= actual.len()
                && seg.iter().zip(&actual[pos..]).all(|(s, a)| s == a)
                && (!last || pos + seg.len() == actual.len())
        };
        let found = if first {
            fits(at).then_some(at)
        } else if last {
            actual
                .len()
                .checked_sub(seg.len())
                .filter(|&p| p >= at && fits(p))
        } else {
            (at..=actual.len().saturating_sub(seg.len())).find(|&p| fits(p))
        };
        match found {
            Some(p) => at = p + seg.len(),
            None => {
                return Some(format!(
                    "these shown lines are not in the output {}:\n{}",
                    if first {
                        "at its start"
                    } else if last {
                        "at its end"
                    } else {
                        "in this order"
                    },
                    seg.join("\n")
                ));
            }
        }
    }
    None
}

fn run_shell(cmd: &str, dir: &Path) -> (bool, Vec<String>) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("GATEWAYCTL_CONTROLLER")
        .env_remove("GATEWAYCTL_API_KEY")
        .output()
        .expect("run sh");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    lines.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| l.trim_end().to_string()),
    );
    (out.status.success(), lines)
}

#[test]
fn offline_commands_of_the_examples_readme_print_what_it_shows() {
    let root = root();
    let text = std::fs::read_to_string(root.join("examples/README.md")).expect("read README");
    let shown: Vec<Shown> = console_commands(&text)
        .into_iter()
        .filter(|s| s.command.starts_with("gatewayctl policy"))
        .collect();
    assert!(
        shown.len() >= 6,
        "expected the README's check, explain, compile, nft and schema commands, found {shown:?}"
    );
    // Commands that write files (`> policy.schema.json`) run from a scratch copy's folder.
    let scratch = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(scratch.path().join("examples")).expect("mkdir");
    for entry in std::fs::read_dir(root.join("examples")).expect("examples") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(
                &p,
                scratch.path().join("examples").join(p.file_name().unwrap()),
            )
            .expect("copy example");
        }
    }
    let mut failures = Vec::new();
    for s in &shown {
        let (ok, actual) = run_shell(&s.command, scratch.path());
        if !ok {
            failures.push(format!(
                "examples/README.md:{}: `{}` failed:\n{}",
                s.line,
                s.command,
                actual.join("\n")
            ));
            continue;
        }
        if s.output.is_empty() {
            continue;
        }
        if let Some(why) = mismatch(&s.output, &actual) {
            failures.push(format!(
                "examples/README.md:{}: `{}`: {why}\n--- actual output ---\n{}",
                s.line,
                s.command,
                actual.join("\n")
            ));
        }
    }
    let schema = scratch.path().join("policy.schema.json");
    if shown
        .iter()
        .any(|s| s.command.contains("> policy.schema.json"))
    {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&schema).expect("schema written"))
                .expect("the schema is JSON");
        assert!(v.get("$schema").is_some(), "a JSON Schema: {v}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The comparison itself can fail: a stale line, a missing line and a reordered pair are found.
#[test]
fn the_comparison_finds_stale_missing_and_reordered_lines() {
    let out: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(mismatch(&s(&["a", "b", "c", "d"]), &out).is_none());
    assert!(mismatch(&s(&["a", "...", "d"]), &out).is_none());
    assert!(mismatch(&s(&["a", "b", "..."]), &out).is_none());
    assert!(mismatch(&s(&["...", "c", "..."]), &out).is_none());
    assert!(
        mismatch(&s(&["a", "x", "c", "d"]), &out).is_some(),
        "stale line"
    );
    assert!(
        mismatch(&s(&["a", "c", "d"]), &out).is_some(),
        "elided without ..."
    );
    assert!(
        mismatch(&s(&["a", "b", "c"]), &out).is_some(),
        "tail elided without ..."
    );
    assert!(
        mismatch(&s(&["b", "..."]), &out).is_some(),
        "head elided without ..."
    );
    assert!(
        mismatch(&s(&["a", "...", "d", "...", "c"]), &out).is_some(),
        "reordered"
    );
}
