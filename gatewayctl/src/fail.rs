//! How a command fails: the exit code, the message on stderr and the `--output json`
//! error document.

use serde_json::{Value, json};

/// Why a command failed; the exit codes are the table of `gatewayctl --help`.
pub enum Fail {
    /// Policy errors (already printed) or failing tests: exit 1.
    Policy,
    /// The answer is no: a request the controller refused (also a refused credential or
    /// role), a declined confirmation: exit 1 (`gatewayctl: error: ...`).
    Error(String),
    /// Located diagnostics to print as they are: exit 1.
    Raw(String),
    /// Located diagnostics (printed as they are), then a summary: exit 1.
    Diagnostics(String, String),
    /// The command could not be carried out: usage or I/O errors, no answer from the
    /// controller (unreachable, timeout, TLS on one side only): exit 2.
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

/// Ends the process quietly when the reader of standard output goes away
/// (`gatewayctl policy nft ... | head`), as if killed by SIGPIPE like other Unix tools,
/// and only then.
///
/// SIGPIPE itself stays ignored (Rust's default): a controller that closes its socket
/// mid-write (a TLS controller answering a plaintext `http://` request) must give an
/// error with a message, never kill the process silently. A write to a closed stdout
/// then fails with EPIPE, `print!` panics with "failed printing to stdout", and this
/// hook turns that one panic into a death by SIGPIPE (exit status 141 in shells); every
/// other panic is reported as usual.
pub fn end_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let broken_pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
        let os_epipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
        if msg.starts_with("failed printing to stdout")
            && (msg.contains(&os_epipe) || msg.contains(&broken_pipe))
        {
            // SAFETY: restoring the default disposition and raising the signal on this
            // process; nothing runs after it.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info);
    }));
}
