//! Interactive admin users: `users create|list|delete|reset-totp` (admin only).

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use gatewayctl::table::Table;
use serde_json::json;

use super::keys::{role_name, role_wire};
use super::session::new_password;
use crate::connect::Ctl;
use crate::fail::R;
use crate::output::{Output, print_json};

/// `gatewayctl users create NAME --role R`: the TOTP secret goes to stdout once.
pub async fn create(
    ctl: &Ctl,
    name: &str,
    role: &str,
    password_stdin: bool,
    output: Output,
) -> R<()> {
    let password = new_password(password_stdin, None)?;
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "create the admin user",
            a.create_admin_user(v1::CreateAdminUserRequest {
                name: name.to_string(),
                role: role_wire(role),
                password,
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "name": name,
            "role": role,
            "totp_secret": r.totp_secret,
            "otpauth_uri": r.otpauth_uri,
        })),
        Output::Text => {
            println!("TOTP secret: {}", r.totp_secret);
            println!("otpauth URI: {}", r.otpauth_uri);
            eprintln!(
                "gatewayctl: user `{name}` ({role}) created; load the secret or the URI into \
                 an authenticator app now: it is shown only once"
            );
        }
    }
    Ok(())
}

/// `gatewayctl users list`.
pub async fn list(ctl: &Ctl, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let users = ctl
        .call(
            "list admin users",
            a.list_admin_users(v1::ListAdminUsersRequest {}),
        )
        .await?
        .users;
    match output {
        Output::Json => print_json(&json!({
            "users": users.iter().map(|u| json!({
                "name": u.name,
                "role": role_name(u.role),
                "created": format_ms_secs(u.created_unix_ms),
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            let mut t = Table::new(&["name", "role", "created"]);
            for u in &users {
                t.row(&[
                    u.name.clone(),
                    role_name(u.role).to_string(),
                    format_ms_secs(u.created_unix_ms),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

/// `gatewayctl users delete NAME`.
pub async fn delete(ctl: &Ctl, name: &str, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    ctl.call(
        "delete the admin user",
        a.delete_admin_user(v1::DeleteAdminUserRequest {
            name: name.to_string(),
        }),
    )
    .await?;
    match output {
        Output::Json => print_json(&json!({ "deleted": name })),
        Output::Text => println!(
            "user `{name}` deleted (their sessions ended, the API keys they created revoked)"
        ),
    }
    Ok(())
}

/// `gatewayctl users reset-totp NAME`: the new secret goes to stdout once.
pub async fn reset_totp(ctl: &Ctl, name: &str, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "reset the user's TOTP secret",
            a.reset_admin_user_totp(v1::ResetAdminUserTotpRequest {
                name: name.to_string(),
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "name": name,
            "totp_secret": r.totp_secret,
            "otpauth_uri": r.otpauth_uri,
            "sessions_ended": r.sessions_ended,
        })),
        Output::Text => {
            println!("TOTP secret: {}", r.totp_secret);
            println!("otpauth URI: {}", r.otpauth_uri);
            eprintln!(
                "gatewayctl: user `{name}` has a new TOTP secret ({} session{} ended); the \
                 old authenticator entry no longer works; this secret is shown only once",
                r.sessions_ended,
                if r.sessions_ended == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}
