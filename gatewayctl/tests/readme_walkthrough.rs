//! The README's "Running a fleet" and "Securing a deployment" commands, run as written.
//!
//! The `sh` blocks of those sections are joined into one bash script and run with the built
//! `gateway-controller` and `gatewayctl` first on PATH. The only changes are the host's own
//! places, each replaced everywhere it occurs: `/var/lib/zt-gateway`, `/etc/zt-gateway` and
//! `/var/log/zt-gateway` become folders of a scratch directory, the controller's address
//! `10.0.0.5:50051` becomes a free loopback port (and `10.0.0.5` alone `127.0.0.1`), and the
//! admin's `policy.toml` is examples/company.toml. After a line that starts a server in the
//! background (`... &`) the script waits until its port accepts connections, as a person
//! would; a `--follow` command runs for two seconds. A failing command stops the walk and is
//! reported with its README line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// The `sh` blocks of the sections whose heading is one of `headings`, as (README line of the
/// command's first line, command with its continuation lines joined).
fn sh_commands(readme: &str, headings: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            in_section = headings.iter().any(|h| line[3..].trim() == *h);
            continue;
        }
        if !in_section {
            continue;
        }
        let t = line.trim();
        if !in_block {
            in_block = t == "```sh";
            continue;
        }
        if t == "```" {
            in_block = false;
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((i + 1, String::new()));
        match t.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head.trim_end());
                text.push(' ');
                pending = Some((start, text));
            }
            None => {
                text.push_str(t);
                if !text.is_empty() {
                    out.push((start, text));
                }
            }
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn the_fleet_sections_of_the_readme_run_as_written() {
    let root = root();
    let bins = Path::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert!(
        bins.join("gateway-controller").is_file(),
        "{} is missing: run this test under `cargo xtask test` (which builds every binary) or \
         `cargo build -p controller` first",
        bins.join("gateway-controller").display()
    );
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let commands = sh_commands(&readme, &["Running a fleet: the controller"]);
    assert!(
        commands
            .iter()
            .any(|(_, c)| c.starts_with("gateway-controller init"))
            && commands
                .iter()
                .any(|(_, c)| c.starts_with("gatewayctl apply")),
        "the fleet section's sh block was not found: {commands:?}"
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let port = free_port();
    let policy = root.join("examples/company.toml");
    let subst = |c: &str| -> String {
        c.replace(
            "/var/lib/zt-gateway",
            &dir.join("var-lib").display().to_string(),
        )
        .replace("/etc/zt-gateway", &dir.join("etc").display().to_string())
        .replace(
            "/var/log/zt-gateway",
            &dir.join("var-log").display().to_string(),
        )
        .replace("10.0.0.5:50051", &format!("127.0.0.1:{port}"))
        .replace("10.0.0.5", "127.0.0.1")
        .replace(" policy.toml", &format!(" {}", policy.display()))
    };
    let mut script =
        String::from("set -eo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    for (line, cmd) in &commands {
        let cmd = subst(cmd);
        script.push_str(&format!("echo '@@ README.md:{line}' >&2\n"));
        let without_comment = cmd.split(" #").next().unwrap_or_default();
        if cmd.contains("--follow") {
            script.push_str(&format!("timeout 2 {without_comment} || [ $? = 124 ]\n"));
        } else {
            script.push_str(&cmd);
            script.push('\n');
        }
        if without_comment.trim_end().ends_with('&') {
            script.push_str(&format!(
                "for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && \
                 break; sleep 0.1; done\n"
            ));
        }
    }
    std::fs::write(dir.join("walk.sh"), &script).expect("write script");
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(dir.join("walk.sh"))
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("GATEWAYCTL_CONTROLLER")
        .env_remove("GATEWAYCTL_API_KEY")
        .env_remove("GATEWAYCTL_CA")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("@@ "))
        .next_back()
        .unwrap_or("before the first command");
    assert!(
        out.status.success(),
        "the README's fleet walk failed at {at}\n--- script ---\n{script}\n--- stdout ---\n{}\n\
         --- stderr ---\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn continuation_lines_are_joined_and_other_sections_ignored() {
    let text = "## A\n```sh\nx\n```\n## Running\n```sh\na \\\n  b\nc\n```\n";
    assert_eq!(
        sh_commands(text, &["Running"]),
        vec![(7, "a b".to_string()), (9, "c".to_string())]
    );
}
