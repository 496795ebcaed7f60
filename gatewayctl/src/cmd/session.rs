//! Admin sessions: `login` (password and TOTP code for a session token) and `whoami`.

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use serde_json::json;

use super::keys::role_name;
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

/// `gatewayctl login`: password + TOTP -> a session token on stdout.
pub async fn login(
    ctl: &Ctl,
    user: &str,
    totp: Option<String>,
    password_stdin: bool,
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
