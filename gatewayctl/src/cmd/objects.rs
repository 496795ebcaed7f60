//! Single objects: `get`, `list`, `create`, `update`, `delete`.

use std::path::Path;

use gateway_proto::v1::{self, ObjectKind};
use gatewayctl::remote::{kind_name, name_key};
use gatewayctl::table::Table;
use serde_json::{Value, json};

use super::apply::{Change, change};
use super::read_file;
use crate::cli::ConfirmArgs;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json, toml_json};

/// An object's section (`resource`, `allow`, `deny`, ...) and table.
fn object_table(o: &v1::PolicyObject) -> Option<(String, toml::Table)> {
    let doc = o.toml.parse::<toml::Table>().ok()?;
    let (section, v) = doc.into_iter().next()?;
    match v {
        toml::Value::Array(items) => match items.into_iter().next()? {
            toml::Value::Table(t) => Some((section, t)),
            _ => None,
        },
        _ => None,
    }
}

/// An object as JSON: kind, name, its section (`allow`/`deny` tell a grant's action),
/// its fields as a JSON object, and the TOML table (documented, kept).
fn object_json(o: &v1::PolicyObject) -> Value {
    let (section, fields) = object_table(o).map_or((Value::Null, Value::Null), |(s, t)| {
        (Value::String(s), toml_json(&toml::Value::Table(t)))
    });
    json!({
        "kind": kind_name(o.kind),
        "name": o.name,
        "section": section,
        "fields": fields,
        "toml": o.toml,
    })
}

/// One line summarizing an object's table: `key=value` pairs besides its name.
fn object_details(o: &v1::PolicyObject) -> String {
    let Some((section, t)) = object_table(o) else {
        return String::new();
    };
    let key = ObjectKind::try_from(o.kind).map_or("name", name_key);
    let mut parts: Vec<String> = Vec::new();
    if section == "allow" || section == "deny" {
        parts.push(section.clone());
    }
    for (k, v) in &t {
        if k == key {
            continue;
        }
        parts.push(format!("{k}={v}"));
    }
    let s = parts.join(" ");
    if s.chars().count() > 100 {
        let cut: String = s.chars().take(99).collect();
        format!("{cut}…")
    } else {
        s
    }
}

pub async fn get(ctl: &Ctl, kind: ObjectKind, name: &str, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "get the object",
            a.get_object(v1::GetObjectRequest {
                kind: kind as i32,
                name: name.to_string(),
            }),
        )
        .await
        .map_err(|e| not_found_hint(e, kind))?;
    let o = r.object.unwrap_or_default();
    match output {
        Output::Json => {
            let mut v = object_json(&o);
            v["revision"] = json!(r.revision);
            print_json(&v);
        }
        Output::Text => {
            print!("{}", o.toml);
            if !o.toml.ends_with('\n') {
                println!();
            }
        }
    }
    Ok(())
}

fn not_found_hint(e: Fail, kind: ObjectKind) -> Fail {
    match e {
        Fail::Error(m) if m.starts_with("not found:") => Fail::Error(format!(
            "{m} (see `gatewayctl list {}`)",
            kind_name(kind as i32).replace('_', "-")
        )),
        other => other,
    }
}

pub async fn list(ctl: &Ctl, kind: Option<ObjectKind>, output: Output) -> R<()> {
    let mut a = ctl.admin.clone();
    let r = ctl
        .call(
            "list objects",
            a.list_objects(v1::ListObjectsRequest {
                kind: kind.map_or(0, |k| k as i32),
            }),
        )
        .await?;
    match output {
        Output::Json => print_json(&json!({
            "revision": r.revision,
            "objects": r.objects.iter().map(object_json).collect::<Vec<_>>(),
        })),
        Output::Text => {
            let what = kind.map_or("objects".to_string(), |k| {
                format!("{} objects", kind_name(k as i32))
            });
            if r.objects.is_empty() {
                println!("no {what} (revision {})", r.revision);
                return Ok(());
            }
            let mut t = Table::new(&["kind", "name", "details"]);
            for o in &r.objects {
                t.row(&[
                    kind_name(o.kind).to_string(),
                    o.name.clone(),
                    object_details(o),
                ]);
            }
            print!("{}", t.render());
            println!("{} {what} (revision {})", t.len(), r.revision);
        }
    }
    Ok(())
}

pub async fn delete(
    ctl: &Ctl,
    kind: ObjectKind,
    name: &str,
    confirm: &ConfirmArgs,
    output: Output,
) -> R<()> {
    let ch = Change::Delete {
        kind,
        name: name.to_string(),
        skip_tests: confirm.skip_tests,
    };
    change(ctl, ch, confirm.yes, confirm.dry_run, output)
        .await
        .map_err(|e| not_found_hint(e, kind))
}

pub async fn create(
    ctl: &Ctl,
    kind: ObjectKind,
    file: &Path,
    confirm: &ConfirmArgs,
    output: Output,
) -> R<()> {
    let toml = read_file(file)?;
    let ch = Change::Create {
        kind,
        toml,
        skip_tests: confirm.skip_tests,
    };
    change(ctl, ch, confirm.yes, confirm.dry_run, output).await
}

pub async fn update(
    ctl: &Ctl,
    kind: ObjectKind,
    name: &str,
    file: &Path,
    confirm: &ConfirmArgs,
    output: Output,
) -> R<()> {
    let toml = read_file(file)?;
    let ch = Change::Update {
        kind,
        name: name.to_string(),
        toml,
        skip_tests: confirm.skip_tests,
    };
    change(ctl, ch, confirm.yes, confirm.dry_run, output)
        .await
        .map_err(|e| not_found_hint(e, kind))
}
