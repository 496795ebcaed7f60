//! One module per command group; the helpers they share (reading files and policies,
//! `--at`, `--since`/`--until`) are here.

pub mod agents;
pub mod apply;
pub mod audit;
pub mod config_cmd;
pub mod diff;
pub mod events;
pub mod explain;
pub mod export;
pub mod keys;
pub mod objects;
pub mod policy;
pub mod revisions;
pub mod session;
pub mod users;

use std::path::Path;

use gatewayctl::remote::{now_unix, parse_time_ms};
use policy_compiler::{Parsed, Policy, parse, parse_rfc3339};

use crate::cli::AtArg;
use crate::fail::{Fail, R};
use crate::output::plural;

/// `--at`, or now.
pub fn at_time(at: &AtArg) -> R<i64> {
    match &at.at {
        None => Ok(now_unix()),
        Some(s) => parse_rfc3339(s).map_err(|e| {
            Fail::Usage(format!(
                "invalid --at `{s}`: {e} (expected RFC 3339, e.g. 2030-01-01T00:00:00Z)"
            ))
        }),
    }
}

/// A file's text; an unreadable file is a usage error (exit 2).
pub fn read_file(path: &Path) -> R<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::Usage(format!("cannot read `{}`: {e}", path.display())))
}

/// Reads and parses a policy; prints warnings (and errors, then fails) to stderr.
pub fn load(path: &Path, now: i64) -> R<Policy> {
    let text = read_file(path)?;
    match parse(&text, &path.display().to_string(), now) {
        Ok(Parsed { policy, warnings }) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            Ok(policy)
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            let n = diags.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "gatewayctl: `{}` has {n} error{}",
                path.display(),
                plural(n)
            );
            Err(Fail::Policy)
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `--since`/`--until`: RFC 3339 or a duration ago, as unix milliseconds.
pub fn time_arg(flag: &str, v: &Option<String>) -> R<Option<i64>> {
    v.as_deref()
        .map(|s| parse_time_ms(s, now_ms()).map_err(|e| Fail::Usage(format!("{flag}: {e}"))))
        .transpose()
}
