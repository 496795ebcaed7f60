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
    /// Exit with this code, nothing more to report (`diff`: 1 when there are changes).
    Quiet(u8),
    /// Any other failure, reported as it is, with exit 2 (`diff`, where 1 means changes).
    Exit2(Box<Fail>),
}

impl Fail {
    pub fn code(&self) -> u8 {
        match self {
            Fail::Policy | Fail::Error(_) | Fail::Raw(_) | Fail::Diagnostics(..) => 1,
            Fail::Usage(_) | Fail::Exit2(_) => 2,
            Fail::Quiet(c) => *c,
        }
    }

    pub fn message(&self) -> Option<String> {
        match self {
            Fail::Policy => None,
            Fail::Error(m) | Fail::Usage(m) if m.is_empty() => None,
            Fail::Error(m) | Fail::Usage(m) => Some(format!("gatewayctl: error: {m}")),
            Fail::Raw(m) => Some(m.clone()),
            Fail::Diagnostics(d, m) => Some(format!("{d}\ngatewayctl: error: {m}")),
            Fail::Quiet(_) => None,
            Fail::Exit2(f) => f.message(),
        }
    }

    /// Whether `--output json` reports the failure as an error document (not `Quiet`).
    pub fn reported(&self) -> bool {
        !matches!(self, Fail::Quiet(_))
    }

    /// The failure as `{"error": {...}}` for `--output json`.
    pub fn json(&self) -> Value {
        if let Fail::Exit2(f) = self {
            let mut v = f.json();
            v["error"]["exit_code"] = json!(self.code());
            return v;
        }
        let (message, diags) = match self {
            Fail::Policy | Fail::Quiet(_) | Fail::Exit2(_) => (String::new(), None),
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
