//! `gatewayctl explain`: a decision with the controller's current policy, reported like
//! the offline `gatewayctl policy explain`.

use gateway_proto::v1;
use gatewayctl::{resolve_from, resolve_to};
use policy_compiler::format_rfc3339;
use serde_json::{Value, json};
use tonic::Code;

use crate::connect::{CALL_TIMEOUT, Ctl};
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

pub async fn explain(ctl: &Ctl, from: &str, to: &str, at: Option<i64>, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = match tokio::time::timeout(
        CALL_TIMEOUT,
        a.explain(v1::ExplainRequest {
            from: from.to_string(),
            to: to.to_string(),
            at,
        }),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        // An unknown source or a malformed destination: a usage error, as offline.
        Ok(Err(s)) if s.code() == Code::InvalidArgument => {
            return Err(Fail::Usage(format!(
                "--from `{from}` / --to `{to}`: {}",
                s.message().trim()
            )));
        }
        Ok(Err(s)) => return Err(ctl.fail("explain", &s)),
        Err(_) => {
            return Err(Fail::Usage(format!(
                "the controller at {} did not answer explain within {}s",
                ctl.url,
                CALL_TIMEOUT.as_secs()
            )));
        }
    };
    // The packet's addresses, resolved against the controller's policy like the
    // controller did (for the same report as `gatewayctl policy explain`).
    let policy = ctl.parsed_policy().await;
    let target = policy.as_ref().and_then(|p| resolve_to(p, to).ok());
    let src = policy
        .as_ref()
        .zip(target.as_ref())
        .and_then(|(p, t)| resolve_from(p, from, t.addr).ok())
        .map(|a| a.to_string());
    let verdict = match v1::Verdict::try_from(r.verdict) {
        Ok(v1::Verdict::Allow) => "allow",
        Ok(v1::Verdict::Deny) => "deny",
        Ok(v1::Verdict::Audit) => "audit",
        _ => "unknown",
    };
    let rule_json = if r.rule_id == 0 {
        Value::Null
    } else {
        policy
            .as_ref()
            .and_then(|p| p.rule(r.rule_id))
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or_else(|| json!({"id": r.rule_id, "description": r.rule}))
    };
    match output {
        Output::Json => {
            let considered: Vec<Value> = r
                .considered
                .iter()
                .map(|c| {
                    let outcome = match c.outcome.as_str() {
                        "expired" => json!({"expired": {
                            "expires_at": policy_compiler::parse_rfc3339(&c.detail).ok(),
                        }}),
                        "port_mismatch" => json!({"port_mismatch": {"allowed": c.detail}}),
                        other => json!(other),
                    };
                    json!({
                        "rule": c.rule,
                        "grant": c.grant,
                        "action": c.action,
                        "resource": c.resource,
                        "outcome": outcome,
                    })
                })
                .collect();
            print_json(&json!({
                "packet": {
                    "from": from,
                    "src": src,
                    "principal": r.principal,
                    "to": to,
                    "dst": target.as_ref().map(|t| match &t.name {
                        Some(n) => n.clone(),
                        None => t.addr.to_string(),
                    }),
                    "proto": target.as_ref().map(|t| gatewayctl::proto_name(t.proto)),
                    "dst_port": target.as_ref().map(|t| t.port),
                    "at": format_rfc3339(r.at),
                },
                "verdict": verdict,
                "reason": r.reason,
                "rule": rule_json,
                "resources": r.resources,
                "considered": considered,
            }));
        }
        Output::Text => {
            println!(
                "packet:   {} ({}) -> {} at {}",
                r.principal.as_deref().unwrap_or("unknown source"),
                src.as_deref().unwrap_or(from),
                target.map_or_else(|| to.to_string(), |t| t.to_string()),
                format_rfc3339(r.at)
            );
            println!("verdict:  {verdict}");
            println!("reason:   {}", r.reason);
            println!(
                "decided by: {}",
                if r.rule_id == 0 {
                    "default deny (rule 0)".to_string()
                } else {
                    r.rule.clone()
                }
            );
            println!(
                "resources covering the destination: {}",
                if r.resources.is_empty() {
                    "none".to_string()
                } else {
                    r.resources.join(", ")
                }
            );
            if r.considered.is_empty() {
                println!("considered grants: none");
            } else {
                println!("considered grants:");
                for c in &r.considered {
                    let outcome = match c.outcome.as_str() {
                        "matched" => "matched".to_string(),
                        "expired" => format!("expired at {}", c.detail),
                        "address_mismatch" => "resource does not cover the destination".into(),
                        "port_mismatch" => {
                            format!("protocol/port not covered (covers {})", c.detail)
                        }
                        "not_for_principal" => "not granted to this source".into(),
                        other => other.to_string(),
                    };
                    let mark = if r.rule_id != 0 && r.rule_id == c.rule {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        " {mark} rule {:>3} {:<5} `{}` -> `{}`: {outcome}",
                        c.rule, c.action, c.grant, c.resource
                    );
                }
            }
        }
    }
    Ok(())
}
