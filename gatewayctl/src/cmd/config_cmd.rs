//! `gatewayctl config`: the contexts of the configuration file (see `crate::config`).

use std::path::{Path, PathBuf};

use gatewayctl::table::Table;
use serde_json::json;

use crate::cli::ConfigCmd;
use crate::config::{self, Config, Context};
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

/// The command line's `--controller` and `--ca`, when given as flags (not from the
/// environment): what `set-context` stores.
pub struct Flags {
    pub controller: Option<String>,
    pub ca: Option<PathBuf>,
    /// Whether `--api-key` was given (never stored: see `set_context`).
    pub api_key: bool,
}

pub fn run(file: &Path, cmd: ConfigCmd, flags: Flags) -> R<()> {
    let mut cfg = config::load(file)?;
    match cmd {
        ConfigCmd::SetContext {
            name,
            api_key_file,
            api_key_stdin,
        } => set_context(file, &mut cfg, &name, flags, api_key_file, api_key_stdin),
        ConfigCmd::UseContext { name } => {
            if !cfg.contexts.contains_key(&name) {
                return Err(config::unknown_context(&cfg, &name));
            }
            cfg.current_context = Some(name.clone());
            config::save(file, &cfg)?;
            eprintln!("gatewayctl: switched to context `{name}`");
            Ok(())
        }
        ConfigCmd::GetContexts { output } => {
            get_contexts(&cfg, output.output);
            Ok(())
        }
        ConfigCmd::CurrentContext => match &cfg.current_context {
            Some(c) => {
                println!("{c}");
                Ok(())
            }
            None => Err(Fail::Error(format!(
                "no current context is set in {} (`gatewayctl config use-context NAME`)",
                file.display()
            ))),
        },
        ConfigCmd::DeleteContext { name } => {
            if cfg.contexts.remove(&name).is_none() {
                return Err(config::unknown_context(&cfg, &name));
            }
            if cfg.current_context.as_deref() == Some(name.as_str()) {
                cfg.current_context = None;
                eprintln!(
                    "gatewayctl: deleted context `{name}`, the current one: no context is current now"
                );
            } else {
                eprintln!("gatewayctl: deleted context `{name}`");
            }
            config::save(file, &cfg)
        }
    }
}

fn set_context(
    file: &Path,
    cfg: &mut Config,
    name: &str,
    flags: Flags,
    api_key_file: Option<PathBuf>,
    api_key_stdin: bool,
) -> R<()> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(Fail::Usage(format!(
            "`{}` is not a context name (1 to 64 characters, no control characters)",
            name.escape_debug()
        )));
    }
    if flags.api_key {
        return Err(Fail::Usage(
            "set-context does not store --api-key (a secret on the command line shows in `ps` \
             and the shell history): give it with --api-key-file FILE or --api-key-stdin"
                .into(),
        ));
    }
    let existing = cfg.contexts.get(name).cloned();
    let controller = match (flags.controller, &existing) {
        (Some(u), _) => gatewayctl::remote::normalize_url(&u)
            .map_err(|e| Fail::Usage(format!("--controller: {e}")))?,
        (None, Some(c)) => c.controller.clone(),
        (None, None) => {
            return Err(Fail::Usage(format!(
                "a new context needs --controller URL: `gatewayctl config set-context {name} \
                 --controller https://HOST:PORT --ca FILE`"
            )));
        }
    };
    let ca = match flags.ca {
        Some(p) => Some(
            std::fs::canonicalize(&p)
                .map_err(|e| Fail::Usage(format!("--ca {}: {e}", p.display())))?,
        ),
        None => existing.as_ref().and_then(|c| c.ca.clone()),
    };
    let api_key = match (api_key_file, api_key_stdin) {
        (Some(f), _) => Some(config::credential_from_file(&f)?),
        (None, true) => Some(config::credential_from_stdin()?),
        (None, false) => existing.as_ref().and_then(|c| c.api_key.clone()),
    };
    // A session belongs to the controller it was opened on.
    let session = existing
        .as_ref()
        .filter(|c| c.controller == controller)
        .and_then(|c| c.session.clone());
    let ctx = Context {
        controller,
        ca,
        api_key,
        session,
    };
    let verb = if existing.is_some() {
        "changed"
    } else {
        "created"
    };
    cfg.contexts.insert(name.to_string(), ctx);
    let first = cfg.current_context.is_none();
    if first {
        cfg.current_context = Some(name.to_string());
    }
    config::save(file, cfg)?;
    eprintln!(
        "gatewayctl: context `{name}` {verb} in {}{}",
        file.display(),
        if first {
            "; it is the current context"
        } else {
            ""
        }
    );
    Ok(())
}

fn get_contexts(cfg: &Config, output: Output) {
    let current = cfg.current_context.as_deref();
    match output {
        Output::Json => print_json(&json!({
            "current_context": current,
            "contexts": cfg.contexts.iter().map(|(n, c)| json!({
                "name": n,
                "current": Some(n.as_str()) == current,
                "controller": c.controller,
                "ca": c.ca.as_ref().map(|p| p.display().to_string()),
                "credential": c.credential_kind(),
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            let mut t = Table::new(&["current", "name", "controller", "ca", "credential"]);
            for (n, c) in &cfg.contexts {
                t.row(&[
                    if Some(n.as_str()) == current {
                        "*".into()
                    } else {
                        String::new()
                    },
                    n.clone(),
                    c.controller.clone(),
                    c.ca.as_ref()
                        .map_or_else(|| "-".into(), |p| p.display().to_string()),
                    c.credential_kind().to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
}
