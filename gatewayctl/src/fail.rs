//! How a command fails: the exit code, the message on stderr and the `--output json`
//! error document.

use serde_json::{Value, json};

/// Why a command failed.
pub enum Fail {
    /// Policy errors (already printed) or failing tests: exit 1.
    Policy,
    /// A request the controller refused, or a failure: exit 1 (`gatewayctl: error: ...`).
    Error(String),
    /// Located diagnostics to print as they are: exit 1.
    Raw(String),
    /// Located diagnostics (printed as they are), then a summary: exit 1.
    Diagnostics(String, String),
    /// Usage or I/O errors: exit 2.
    Usage(String),
}

impl Fail {
    pub fn code(&self) -> u8 {
        match self {
            Fail::Policy | Fail::Error(_) | Fail::Raw(_) | Fail::Diagnostics(..) => 1,
            Fail::Usage(_) => 2,
        }
    }

    pub fn message(&self) -> Option<String> {
        match self {
            Fail::Policy => None,
            Fail::Error(m) | Fail::Usage(m) if m.is_empty() => None,
            Fail::Error(m) | Fail::Usage(m) => Some(format!("gatewayctl: error: {m}")),
            Fail::Raw(m) => Some(m.clone()),
            Fail::Diagnostics(d, m) => Some(format!("{d}\ngatewayctl: error: {m}")),
        }
    }

    /// The failure as `{"error": {...}}` for `--output json`.
    pub fn json(&self) -> Value {
        let (message, diags) = match self {
            Fail::Policy => (String::new(), None),
            Fail::Error(m) | Fail::Usage(m) => (m.clone(), None),
            Fail::Raw(d) => (d.lines().next().unwrap_or_default().to_string(), Some(d)),
            Fail::Diagnostics(d, m) => (m.clone(), Some(d)),
        };
        let mut e = json!({"message": message, "exit_code": self.code()});
        if let Some(d) = diags {
            e["diagnostics"] = json!(d.lines().collect::<Vec<_>>());
        }
        json!({ "error": e })
    }
}

pub type R<T> = Result<T, Fail>;
