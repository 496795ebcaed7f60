//! Agents: `agents` (enrolled agents and their generations), `enroll-token`,
//! `revoke-agent`.

use gateway_proto::v1;
use gatewayctl::remote::format_ms_secs;
use gatewayctl::resolve_host;
use gatewayctl::table::Table;
use serde_json::json;

use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

pub async fn list(ctl: &Ctl, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let list = ctl
        .call("list agents", a.list_agents(v1::ListAgentsRequest {}))
        .await?
        .agents;
    match output {
        Output::Json => print_json(&json!({
            "agents": list.iter().map(|a| json!({
                "agent_id": a.agent_id,
                "host": a.host,
                "hostname": a.hostname,
                "connected": a.connected,
                "controller": (!a.controller.is_empty()).then_some(&a.controller),
                "acked_generation": a.acked_generation,
                "acked": (a.acked_unix_ms > 0).then(|| format_ms_secs(a.acked_unix_ms)),
                "acked_unix_ms": a.acked_unix_ms,
                "current_generation": a.current_generation,
                "in_sync": a.acked_generation == a.current_generation,
                "last_seen": format_ms_secs(a.last_seen_unix_ms),
                "last_seen_unix_ms": a.last_seen_unix_ms,
                "enrolled": format_ms_secs(a.enrolled_unix_ms),
                "enrolled_unix_ms": a.enrolled_unix_ms,
                "public_key": (!a.public_key.is_empty()).then_some(&a.public_key),
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if list.is_empty() {
                println!(
                    "no agents enrolled (create a token with `gatewayctl enroll-token --host connector:NAME`)"
                );
                return Ok(());
            }
            let mut t = Table::new(&[
                "agent",
                "host",
                "hostname",
                "connected",
                "generation",
                "last seen",
                "enrolled",
                "public key",
            ]);
            for a in &list {
                let gen_ = if a.acked_generation == a.current_generation {
                    format!("{} (in sync)", a.current_generation)
                } else {
                    format!("{}/{} (behind)", a.acked_generation, a.current_generation)
                };
                t.row(&[
                    a.agent_id.clone(),
                    a.host.clone(),
                    a.hostname.clone(),
                    match (a.connected, a.controller.is_empty()) {
                        (false, _) => "no".to_string(),
                        (true, true) => "yes".to_string(),
                        (true, false) => format!("yes ({})", a.controller),
                    },
                    gen_,
                    format_ms_secs(a.last_seen_unix_ms),
                    format_ms_secs(a.enrolled_unix_ms),
                    if a.public_key.is_empty() {
                        "-".to_string()
                    } else {
                        a.public_key.clone()
                    },
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

pub async fn enroll_token(ctl: &Ctl, host: &str, ttl_seconds: u64, output: Output) -> R<()> {
    gateway_proto::parse_host(host).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    // A host the policy does not name gets an empty view until it does: say so.
    if let Some(p) = ctl.parsed_policy().await
        && let Err(e) = resolve_host(&p, host)
    {
        eprintln!(
            "gatewayctl: warning: --host: {e}; the agent will enforce nothing until the policy names it"
        );
    }
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "create an enrollment token",
            a.create_enrollment_token(v1::CreateEnrollmentTokenRequest {
                host: host.to_string(),
                ttl_seconds,
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "token": r.token,
            "host": r.host,
            "expires": format_ms_secs(r.expires_unix_ms),
            "expires_unix_ms": r.expires_unix_ms,
        })),
        Output::Text => {
            println!("{}", r.token);
            eprintln!(
                "gatewayctl: one-time enrollment token for {}, valid until {}; it is shown only once \
                 (the controller keeps only its hash)",
                r.host,
                format_ms_secs(r.expires_unix_ms)
            );
        }
    }
    Ok(())
}

/// `gatewayctl revoke-agent ID`.
pub async fn revoke(ctl: &Ctl, agent_id: &str, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    ctl.call(
        "revoke the agent",
        a.revoke_agent(v1::RevokeAgentRequest {
            agent_id: agent_id.to_string(),
        }),
    )
    .await?;
    match output {
        Output::Json => print_json(&json!({ "revoked": agent_id })),
        Output::Text => println!("agent {agent_id} revoked: it gets no policy any more"),
    }
    Ok(())
}
