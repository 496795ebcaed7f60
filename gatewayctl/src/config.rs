//! The configuration file with contexts (kubectl's model): each context names a
//! controller URL, the CA that signed its certificate and a credential: an API key
//! (`config set-context`) and/or the session token `login` stored, which is used while
//! it is there (`logout` removes it; the API key stays). `current-context` says which
//! context the remote commands use.
//!
//! ```toml
//! current-context = "prod"
//!
//! [contexts.prod]
//! controller = "https://ctl.example:50051"
//! ca = "/etc/zt-gateway/ca.pem"
//! api-key = "zt-key-..."
//! session = "zt-session-..."
//! ```
//!
//! Where: `--config FILE`, else `GATEWAYCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/zt-gateway/gatewayctl.toml`, else
//! `~/.config/zt-gateway/gatewayctl.toml`. A missing file is an empty configuration.
//!
//! What wins, per setting: flags, then environment variables, then the context (the one
//! `--context` names, else the current one), then the defaults. A context's CA and
//! credential go only to its own controller: when `--controller` (or
//! `GATEWAYCTL_CONTROLLER`) names another URL, they are not used.
//!
//! The file is written with mode 0600 (its folder 0700 when created), atomically (a
//! temporary file in the same folder, synced, then renamed over it). Like ssh with a
//! private key, gatewayctl refuses a file holding a credential that group or others may
//! read, and so does `--api-key-file`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fail::{Fail, R};

/// The longest configuration or credential file read (bounded cost).
const MAX_FILE: u64 = 1 << 20;

/// The default URL when neither a flag, the environment nor a context gives one.
pub const DEFAULT_CONTROLLER: &str = "https://127.0.0.1:50051";

/// One context.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    /// The controller's URL.
    pub controller: String,
    /// The CA certificate (PEM) for `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// An API key (`zt-key-...`; any credential the controller takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The session token of `gatewayctl login` (`zt-session-...`): used instead of the
    /// API key while it is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Context {
    /// The credential sent: the session, else the API key.
    pub fn credential(&self) -> Option<&str> {
        self.session.as_deref().or(self.api_key.as_deref())
    }

    /// What the context holds, for listings (never the secrets): `api key`, `session`,
    /// `api key, session` or `none`.
    pub fn credential_kind(&self) -> &'static str {
        match (&self.api_key, &self.session) {
            (None, None) => "none",
            (Some(_), None) => "api key",
            (None, Some(_)) => "session",
            (Some(_), Some(_)) => "api key, session",
        }
    }
}

/// The file's contents.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the configuration file is (see the module docs); `explicit`: `--config` or
/// `GATEWAYCTL_CONFIG` (clap reads both into the same option).
pub fn path(explicit: Option<&Path>) -> R<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => {
                return Err(Fail::Usage(
                    "cannot find the configuration file: neither XDG_CONFIG_HOME nor HOME is \
                     set (use --config FILE)"
                        .into(),
                ));
            }
        },
    };
    Ok(base.join("zt-gateway").join("gatewayctl.toml"))
}

/// Refuses a file holding a secret that group or others may read (as ssh does).
pub fn check_private(path: &Path, what: &str) -> R<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Fail::Usage(format!("cannot read {what} `{}`: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Fail::Usage(format!(
            "{what} `{}` holds a credential but is accessible by others (mode {mode:04o}); \
             refusing to use it: run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads a small text file (at most [`MAX_FILE`] bytes).
fn read_bounded(path: &Path, what: &str) -> R<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| Fail::Usage(format!("cannot read {what} `{}`: {e}", path.display())))?;
    let mut s = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut s)
        .map_err(|e| Fail::Usage(format!("cannot read {what} `{}`: {e}", path.display())))?;
    if s.len() as u64 > MAX_FILE {
        return Err(Fail::Usage(format!(
            "{what} `{}` is larger than {MAX_FILE} bytes: not a gatewayctl file",
            path.display()
        )));
    }
    Ok(s)
}

/// Loads the configuration at `path` (a missing file: empty); refuses a malformed file
/// (located) and a credential in a file others may read.
pub fn load(path: &Path) -> R<Config> {
    if !path.exists() {
        return Ok(Config::default());
    }
    let text = read_bounded(path, "the configuration file")?;
    let cfg: Config = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let col = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        Fail::Usage(format!(
            "{}{at}: invalid configuration: {} (fix or remove the file; `gatewayctl config \
             set-context` writes it)",
            path.display(),
            e.message()
        ))
    })?;
    if cfg.contexts.values().any(|c| c.credential().is_some()) {
        check_private(path, "the configuration file")?;
    }
    Ok(cfg)
}

/// Writes the configuration atomically with mode 0600 (see the module docs).
pub fn save(path: &Path, cfg: &Config) -> R<()> {
    let io = |e: std::io::Error| Fail::Usage(format!("cannot write `{}`: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
    }
    let text = toml::to_string(cfg)
        .map_err(|e| Fail::Usage(format!("cannot encode the configuration: {e}")))?;
    // Created 0600 by tempfile.
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatewayctl.toml.")
        .tempfile_in(&dir)
        .map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Reads a credential from a file (first line, trimmed); refuses a file others may read.
pub fn credential_from_file(path: &Path) -> R<String> {
    check_private(path, "the API key file")?;
    let text = read_bounded(path, "the API key file")?;
    valid_credential(
        text.lines().next().unwrap_or_default().trim(),
        "the API key file",
    )
}

/// Reads a credential from the first line of standard input.
pub fn credential_from_stdin() -> R<String> {
    let mut l = String::new();
    std::io::stdin()
        .read_line(&mut l)
        .map_err(|e| Fail::Usage(format!("reading standard input: {e}")))?;
    valid_credential(l.trim(), "standard input")
}

fn valid_credential(s: &str, from: &str) -> R<String> {
    if s.is_empty() {
        return Err(Fail::Usage(format!(
            "{from}: no API key (the first line is empty)"
        )));
    }
    if s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Fail::Usage(format!(
            "{from}: not a credential (printable ASCII without spaces, at most 4096 bytes)"
        )));
    }
    Ok(s.to_string())
}

/// Where the remote commands connect, and with what (see the module docs).
#[derive(Debug)]
pub struct Resolved {
    pub url: String,
    pub api_key: Option<String>,
    pub ca: Option<PathBuf>,
    /// The context used (when its controller is the one used).
    pub context: Option<String>,
}

/// The command line's and environment's settings over the context's.
pub fn resolve(
    cfg: &Config,
    context: Option<&str>,
    controller: Option<&str>,
    api_key: Option<&str>,
    ca: Option<&Path>,
) -> R<Resolved> {
    let name = match context {
        Some(n) => {
            if !cfg.contexts.contains_key(n) {
                return Err(unknown_context(cfg, n));
            }
            Some(n.to_string())
        }
        None => cfg.current_context.clone(),
    };
    let ctx = name.as_deref().and_then(|n| cfg.contexts.get(n));
    // The context's CA and credential only for its own controller.
    let ctx = ctx.filter(|c| match controller {
        None => true,
        Some(u) => same_url(u, &c.controller),
    });
    let url = controller
        .map(str::to_string)
        .or_else(|| ctx.map(|c| c.controller.clone()))
        .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string());
    Ok(Resolved {
        url,
        api_key: api_key
            .map(str::to_string)
            .or_else(|| ctx.and_then(|c| c.credential().map(str::to_string))),
        ca: ca
            .map(Path::to_path_buf)
            .or_else(|| ctx.and_then(|c| c.ca.clone())),
        context: ctx.and(name),
    })
}

fn same_url(a: &str, b: &str) -> bool {
    let n = |s: &str| gatewayctl::remote::normalize_url(s).unwrap_or_else(|_| s.to_string());
    n(a) == n(b)
}

/// "no context named X (contexts: ...)".
pub fn unknown_context(cfg: &Config, name: &str) -> Fail {
    let names: Vec<&str> = cfg.contexts.keys().map(String::as_str).collect();
    Fail::Usage(format!(
        "no context named `{name}` (contexts: {}); create it with `gatewayctl config \
         set-context {name} --controller URL`",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config {
            current_context: Some("a".into()),
            ..Config::default()
        };
        c.contexts.insert(
            "a".into(),
            Context {
                controller: "https://a.example:50051".into(),
                ca: Some("/a/ca.pem".into()),
                api_key: Some("zt-key-a".into()),
                session: None,
            },
        );
        c.contexts.insert(
            "b".into(),
            Context {
                controller: "http://127.0.0.1:1".into(),
                ca: None,
                api_key: Some("zt-key-b".into()),
                session: Some("zt-session-b".into()),
            },
        );
        c
    }

    #[test]
    fn precedence() {
        let c = cfg();
        // The current context.
        let r = resolve(&c, None, None, None, None).ok().unwrap();
        assert_eq!(
            (r.url.as_str(), r.api_key.as_deref(), r.context.as_deref()),
            ("https://a.example:50051", Some("zt-key-a"), Some("a"))
        );
        assert_eq!(r.ca.as_deref(), Some(Path::new("/a/ca.pem")));
        // --context picks another, its session before its key; a flag beats the context
        // per setting.
        let r = resolve(&c, Some("b"), None, None, None).ok().unwrap();
        assert_eq!(r.api_key.as_deref(), Some("zt-session-b"));
        let r = resolve(&c, Some("b"), None, Some("zt-key-flag"), None)
            .ok()
            .unwrap();
        assert_eq!(
            (r.url.as_str(), r.api_key.as_deref()),
            ("http://127.0.0.1:1", Some("zt-key-flag"))
        );
        // The same controller named by a flag (another spelling) keeps the credential;
        // another controller does not get it.
        let r = resolve(&c, None, Some("a.example:50051"), None, None)
            .ok()
            .unwrap();
        assert_eq!(r.api_key.as_deref(), Some("zt-key-a"));
        let r = resolve(&c, None, Some("https://b.example:50051"), None, None)
            .ok()
            .unwrap();
        assert_eq!((r.api_key, r.ca, r.context), (None, None, None));
        // Nothing: the default.
        let r = resolve(&Config::default(), None, None, None, None)
            .ok()
            .unwrap();
        assert_eq!(r.url, DEFAULT_CONTROLLER);
        assert!(resolve(&c, Some("zz"), None, None, None).is_err());
    }
}
