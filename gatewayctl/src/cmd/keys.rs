//! API keys for automation: `keys create|list|revoke`.

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use gatewayctl::table::Table;
use serde_json::json;

use crate::connect::Ctl;
use crate::fail::R;
use crate::output::{Output, print_json};

pub fn role_name(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Operator) => "operator",
        Ok(v1::Role::Auditor) => "auditor",
        _ => "unknown",
    }
}

pub fn role_wire(r: &str) -> i32 {
    match r {
        "admin" => v1::Role::Admin as i32,
        "operator" => v1::Role::Operator as i32,
        _ => v1::Role::Auditor as i32,
    }
}

fn key_json(k: &v1::ApiKeyInfo) -> serde_json::Value {
    json!({
        "name": k.name,
        "role": role_name(k.role),
        "created": format_ms_secs(k.created_unix_ms),
        "expires": format_ms_secs(k.expires_unix_ms),
        "revoked": k.revoked_unix_ms.map(format_ms_secs),
        "created_by": k.created_by,
    })
}

/// `gatewayctl keys create`: the secret goes to stdout once.
pub async fn create(ctl: &Ctl, name: &str, role: &str, ttl: Option<u64>, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "create an API key",
            a.create_api_key(v1::CreateApiKeyRequest {
                name: name.to_string(),
                role: role_wire(role),
                ttl_seconds: ttl.unwrap_or(0),
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "key": r.key,
            "info": r.info.as_ref().map(key_json),
        })),
        Output::Text => {
            println!("{}", r.key);
            if let Some(i) = &r.info {
                eprintln!(
                    "gatewayctl: API key `{}` ({}), valid until {}; it is shown only once (the \
                     controller keeps only its hash)",
                    i.name,
                    role_name(i.role),
                    format_ms_secs(i.expires_unix_ms)
                );
            }
        }
    }
    Ok(())
}

/// `gatewayctl keys list`.
pub async fn list(ctl: &Ctl, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let keys = ctl
        .call("list API keys", a.list_api_keys(v1::ListApiKeysRequest {}))
        .await?
        .keys;
    match output {
        Output::Json => {
            print_json(&json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }))
        }
        Output::Text => {
            let mut t = Table::new(&[
                "name",
                "role",
                "created",
                "expires",
                "revoked",
                "created by",
            ]);
            for k in &keys {
                t.row(&[
                    k.name.clone(),
                    role_name(k.role).to_string(),
                    format_ms_secs(k.created_unix_ms),
                    format_ms_secs(k.expires_unix_ms),
                    k.revoked_unix_ms
                        .map(format_ms_secs)
                        .unwrap_or_else(|| "-".into()),
                    k.created_by.clone(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

/// `gatewayctl keys revoke NAME`.
pub async fn revoke(ctl: &Ctl, name: &str, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    ctl.call(
        "revoke the API key",
        a.revoke_api_key(v1::RevokeApiKeyRequest {
            name: name.to_string(),
        }),
    )
    .await?;
    match output {
        Output::Json => print_json(&json!({ "revoked": name })),
        Output::Text => println!("API key `{name}` revoked"),
    }
    Ok(())
}
