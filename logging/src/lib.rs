//! How `gateway-agent` and `gateway-controller` write their own messages: on stderr,
//! timestamped and levelled with structured fields, filtered by `RUST_LOG` (default
//! `info`), as text lines or one JSON object per line (`--log-format`).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// A line per event: time, level, message, fields.
    Text,
    /// One JSON object per line, fields flattened, for a log shipper.
    Json,
}

/// Installs the global subscriber. `show_target` adds the module path to text lines. A
/// `RUST_LOG` that does not parse is reported, and `info` used instead.
pub fn init(format: LogFormat, show_target: bool) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, bad) = match env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (EnvFilter::new("info"), Some(e)),
        None => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(show_target)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    if let Some(e) = bad {
        tracing::warn!(error = %e, "RUST_LOG does not parse: logging at info");
    }
}
