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

/// A TOML value as JSON (datetimes as their RFC 3339 text).
pub fn toml_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_json(v))).collect())
        }
    }
}

/// A TOML value's text (as the controller sends field changes) as JSON: `null` when empty,
/// the text itself when it does not parse.
fn toml_value_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(t) => t.get("v").map_or(Value::Null, toml_json),
        Err(_) => Value::String(text.to_string()),
    }
}

/// A changed object's field changes as JSON: `[{"field", "before", "after", "element"}]`,
/// values as JSON (`null` when absent on that side).
pub fn fields_json(fields: &[gateway_proto::v1::FieldChange]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "field": f.field,
                    "before": toml_value_json(&f.before),
                    "after": toml_value_json(&f.after),
                    "element": f.element,
                })
            })
            .collect(),
    )
}

/// A changed object's field changes as plan lines: `~ resource wiki: tcp "443" ->
/// "443, 8443"`, `~ group eng: members + "carol"` (a list element added), `- "bob"`
/// (removed); `(unset)` for a field absent on one side.
pub fn field_lines(
    kind: &str,
    name: &str,
    fields: &[gateway_proto::v1::FieldChange],
) -> Vec<String> {
    let kind = kind.replace('_', " ");
    let shown = |s: &str| {
        if s.is_empty() {
            "(unset)".to_string()
        } else {
            s.to_string()
        }
    };
    fields
        .iter()
        .map(|f| {
            let what = if f.element {
                if f.after.is_empty() {
                    format!("- {}", f.before)
                } else {
                    format!("+ {}", f.after)
                }
            } else {
                format!("{} -> {}", shown(&f.before), shown(&f.after))
            };
            format!("~ {kind} {name}: {} {what}", f.field)
        })
        .collect()
}
