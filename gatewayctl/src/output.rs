//! Output formats and the small formatting helpers shared by the commands (text tables
//! are `gatewayctl::table`).

use clap::ValueEnum;
use policy_compiler::Policy;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

pub fn rule_json(policy: &Policy, id: u32) -> Value {
    policy
        .rule(id)
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(Value::Null)
}

pub fn rule_text(policy: &Policy, rule: Option<u32>) -> String {
    match rule.and_then(|r| policy.rule(r)) {
        Some(m) => m.to_string(),
        None => "default deny (rule 0)".to_string(),
    }
}

pub fn reason_name(r: policy_compiler::Reason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{r:?}"))
}
