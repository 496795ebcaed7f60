//! Admin sessions: `login` (password and TOTP code for a session token, stored in the
//! context in use), `logout`, `passwd` and `whoami`.

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use serde_json::json;

use super::keys::role_name;
use crate::config;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

/// Reads one line: from standard input, or from the terminal without echo.
fn secret_line(prompt: &str, from_stdin: bool) -> R<String> {
    let line = if from_stdin {
        let mut l = String::new();
        std::io::stdin()
            .read_line(&mut l)
            .map_err(|e| Fail::Usage(format!("reading standard input: {e}")))?;
        l
    } else {
        rpassword::prompt_password(prompt).map_err(|e| {
            Fail::Usage(format!(
                "cannot ask for it on a terminal ({e}); use --password-stdin"
            ))
        })?
    };
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// A new password: from the first line of standard input, or asked twice on the
/// terminal (they must match). `prompt`: what the password is for.
pub fn new_password(from_stdin: bool, prompt: Option<&str>) -> R<String> {
    let p = prompt.unwrap_or("password");
    if from_stdin {
        return secret_line("", true);
    }
    let first = secret_line(&format!("{p}: "), false)?;
    let again = secret_line(&format!("repeat {p}: "), false)?;
    if first != again {
        return Err(Fail::Usage(
            "the two passwords differ: nothing changed".into(),
        ));
    }
    Ok(first)
}

/// Where `login` stores its session and `logout` removes it: the configuration file and
/// the context in use (when its controller is the one used).
pub struct Store {
    pub file: std::path::PathBuf,
    pub context: String,
}

/// `gatewayctl login`: password + TOTP -> a session token, stored in the context in use
/// (else printed on stdout).
pub async fn login(
    ctl: &Ctl,
    user: &str,
    totp: Option<String>,
    password_stdin: bool,
    store: Option<&Store>,
    output: Output,
) -> R<()> {
    let password = secret_line("password: ", password_stdin)?;
    let totp_code = match totp {
        Some(t) => t,
        None => secret_line("TOTP code: ", false)?,
    };
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "log in",
            a.login(v1::LoginRequest {
                user: user.to_string(),
                password,
                totp_code,
            }),
        )
        .await?;
    if let Some(st) = store {
        let mut cfg = config::load(&st.file)?;
        let Some(c) = cfg.contexts.get_mut(&st.context) else {
            return Err(config::unknown_context(&cfg, &st.context));
        };
        c.session = Some(r.session_token.clone());
        config::save(&st.file, &cfg)?;
        match output {
            Output::Json => print_json(&json!({
                "context": st.context,
                "role": role_name(r.role),
                "expires": format_ms_secs(r.expires_unix_ms),
            })),
            Output::Text => eprintln!(
                "gatewayctl: logged in as {user} ({}) until {}; the session is stored in \
                 context `{}` ({})",
                role_name(r.role),
                format_ms_secs(r.expires_unix_ms),
                st.context,
                st.file.display()
            ),
        }
        return Ok(());
    }
    match output {
        Output::Json => print_json(&json!({
            "session_token": r.session_token,
            "role": role_name(r.role),
            "expires": format_ms_secs(r.expires_unix_ms),
        })),
        Output::Text => {
            println!("{}", r.session_token);
            eprintln!(
                "gatewayctl: logged in as {user} ({}) until {}; use the token as \
                 GATEWAYCTL_API_KEY",
                role_name(r.role),
                format_ms_secs(r.expires_unix_ms)
            );
        }
    }
    Ok(())
}

/// `gatewayctl whoami`.
pub async fn whoami(ctl: &Ctl, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call("ask who we are", a.who_am_i(v1::WhoAmIRequest {}))
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "principal": r.principal,
            "role": role_name(r.role),
            "expires": format_ms_secs(r.expires_unix_ms),
        })),
        Output::Text => println!(
            "{} ({}), credential valid until {}",
            r.principal,
            role_name(r.role),
            format_ms_secs(r.expires_unix_ms)
        ),
    }
    Ok(())
}

/// How a call on the caller's own session failed.
enum Own {
    /// UNAUTHENTICATED, with the controller's message.
    Unauthenticated(String),
    Refused(Fail),
}

/// A call on the caller's own session or user (Logout, ChangePassword): an API key is
/// refused (FAILED_PRECONDITION) with the controller's explanation.
async fn own_call<T>(
    ctl: &Ctl,
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Own> {
    match tokio::time::timeout(crate::connect::CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated => {
            Err(Own::Unauthenticated(s.message().to_string()))
        }
        Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => Err(Own::Refused(
            Fail::Error(format!("cannot {what}: {}", s.message())),
        )),
        Ok(Err(s)) => Err(Own::Refused(ctl.fail(what, &s))),
        Err(_) => Err(Own::Refused(Fail::Usage(format!(
            "the controller at {} did not answer in time ({what})",
            ctl.url
        )))),
    }
}

/// `gatewayctl logout`: ends the session on the controller and removes its token from
/// the context in use. A session the controller no longer knows (expired, ended) is
/// removed too.
pub async fn logout(ctl: &Ctl, used: Option<&str>, store: Option<&Store>, output: Output) -> R<()> {
    if used.is_none() {
        return Err(Fail::Usage(
            "nothing to log out: no session (log in with `gatewayctl login --user NAME`)".into(),
        ));
    }
    let mut a = ctl.admin.clone();
    let ended = match own_call(ctl, "log out", a.logout(v1::LogoutRequest {})).await {
        Ok(_) => true,
        Err(Own::Unauthenticated(_)) => false,
        Err(Own::Refused(f)) => return Err(f),
    };
    let mut removed = None;
    if let (Some(st), Some(used)) = (store, used) {
        let mut cfg = config::load(&st.file)?;
        if let Some(c) = cfg.contexts.get_mut(&st.context)
            && c.session.as_deref() == Some(used)
        {
            c.session = None;
            config::save(&st.file, &cfg)?;
            removed = Some(st.context.clone());
        }
    }
    match output {
        Output::Json => print_json(&json!({
            "session_ended": ended,
            "removed_from_context": removed,
        })),
        Output::Text => {
            let what = if ended {
                "session ended"
            } else {
                "the controller no longer knew the session (expired or ended)"
            };
            match removed {
                Some(c) => eprintln!("gatewayctl: {what}; removed from context `{c}`"),
                None => eprintln!("gatewayctl: {what}"),
            }
        }
    }
    Ok(())
}

/// `gatewayctl passwd`: old password, new password (twice on a terminal).
pub async fn passwd(ctl: &Ctl, password_stdin: bool, output: Output) -> R<()> {
    let old_password = secret_line("current password: ", password_stdin)?;
    let new_password = new_password(password_stdin, Some("new password"))?;
    let mut a = ctl.admin.clone();
    let call = a.change_password(v1::ChangePasswordRequest {
        old_password,
        new_password,
    });
    let r = match own_call(ctl, "change the password", call).await {
        Ok(r) => r,
        Err(Own::Unauthenticated(m)) => {
            return Err(Fail::Error(format!("cannot change the password: {m}")));
        }
        Err(Own::Refused(f)) => return Err(f),
    };
    match output {
        Output::Json => print_json(&json!({ "sessions_ended": r.sessions_ended })),
        Output::Text => eprintln!(
            "gatewayctl: password changed; {} other session{} ended (this one stays)",
            r.sessions_ended,
            if r.sessions_ended == 1 { "" } else { "s" }
        ),
    }
    Ok(())
}
