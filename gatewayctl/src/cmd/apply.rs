//! Changes to the controller's policy: plan (a dry run), show, confirm, apply with the
//! revision the plan was computed at, so a concurrent change in between is refused
//! instead of silently overwritten. `apply` sends a whole file; `create`, `update` and
//! `delete` (in `objects.rs`) one object.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use gateway_proto::v1::{self, ObjectKind};
use gatewayctl::remote::kind_name;
use gatewayctl::table::Table;
use serde_json::{Value, json};

use super::read_file;
use crate::connect::Ctl;
use crate::fail::{Fail, R};
use crate::output::{Output, field_lines, fields_json, plural, print_json};

fn change_name(c: i32) -> &'static str {
    match v1::ChangeKind::try_from(c) {
        Ok(v1::ChangeKind::Added) => "added",
        Ok(v1::ChangeKind::Changed) => "changed",
        Ok(v1::ChangeKind::Removed) => "removed",
        _ => "unknown",
    }
}

fn counts_json(c: Option<&v1::EntryCounts>) -> Value {
    let c = c.cloned().unwrap_or_default();
    json!({"added": c.added, "changed": c.changed, "removed": c.removed})
}

/// The JSON form of a plan (keys documented in `gatewayctl apply --help`).
pub fn plan_json(p: &v1::Plan) -> Value {
    json!({
        "base_revision": p.base_revision,
        "new_revision": p.new_revision,
        "objects": p.objects.iter().map(|o| json!({
            "kind": kind_name(o.kind),
            "name": o.name,
            "change": change_name(o.change),
            "before": o.before,
            "after": o.after,
            "fields": fields_json(&o.fields),
        })).collect::<Vec<_>>(),
        "hosts": p.hosts.iter().map(|h| json!({
            "host": h.host,
            "base_generation": h.base_generation,
            "new_generation": h.new_generation,
            "src": counts_json(h.src.as_ref()),
            "dst": counts_json(h.dst.as_ref()),
            "rules": counts_json(h.rules.as_ref()),
            "total": counts_json(h.total.as_ref()),
            "peers": counts_json(h.peers.as_ref()),
            "metadata_changed": h.metadata_changed,
            "connected_agents": h.connected_agents,
        })).collect::<Vec<_>>(),
        "warnings": p.warnings,
    })
}

pub fn plan_is_empty(p: &v1::Plan) -> bool {
    p.objects.is_empty() && p.hosts.is_empty() && p.new_revision == p.base_revision
}

fn counts_text(name: &str, c: Option<&v1::EntryCounts>) -> Option<String> {
    let c = c.cloned().unwrap_or_default();
    if c.added == 0 && c.changed == 0 && c.removed == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if c.added > 0 {
        parts.push(format!("+{}", c.added));
    }
    if c.changed > 0 {
        parts.push(format!("~{}", c.changed));
    }
    if c.removed > 0 {
        parts.push(format!("-{}", c.removed));
    }
    Some(format!("{name} {}", parts.join(" ")))
}

/// The plan as text: object changes and affected hosts, as tables.
pub fn plan_text(p: &v1::Plan) -> String {
    let mut s = String::new();
    if plan_is_empty(p) {
        s.push_str(&format!(
            "no changes: the controller's policy is already up to date (revision {})\n",
            p.base_revision
        ));
        return s;
    }
    let n = |c: i32| p.objects.iter().filter(|o| o.change == c).count();
    s.push_str(&format!(
        "plan: revision {} -> {}\n\nobjects: {} added, {} changed, {} removed\n",
        p.base_revision,
        p.new_revision,
        n(v1::ChangeKind::Added as i32),
        n(v1::ChangeKind::Changed as i32),
        n(v1::ChangeKind::Removed as i32),
    ));
    if !p.objects.is_empty() {
        let mut t = Table::new(&["change", "kind", "name"]);
        for o in &p.objects {
            let mark = match v1::ChangeKind::try_from(o.change) {
                Ok(v1::ChangeKind::Added) => "+ added",
                Ok(v1::ChangeKind::Changed) => "~ changed",
                Ok(v1::ChangeKind::Removed) => "- removed",
                _ => "? unknown",
            };
            t.row(&[mark, kind_name(o.kind), &o.name]);
        }
        for l in t.render().lines() {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
        let fields: Vec<String> = p
            .objects
            .iter()
            .flat_map(|o| field_lines(kind_name(o.kind), &o.name, &o.fields))
            .collect();
        if !fields.is_empty() {
            s.push_str("\nchanged fields:\n");
            for l in fields {
                s.push_str("  ");
                s.push_str(&l);
                s.push('\n');
            }
        }
    }
    s.push_str(&format!(
        "\nhosts: {} affected (hosts whose compiled view does not change are not listed)\n",
        p.hosts.len()
    ));
    if !p.hosts.is_empty() {
        let mut t = Table::new(&[
            "host",
            "generation",
            "added",
            "changed",
            "removed",
            "agents",
            "details",
        ]);
        for h in &p.hosts {
            let total = h.total.unwrap_or_default();
            let mut details: Vec<String> = [
                counts_text("src", h.src.as_ref()),
                counts_text("dst", h.dst.as_ref()),
                counts_text("rules", h.rules.as_ref()),
                counts_text("peers", h.peers.as_ref()),
            ]
            .into_iter()
            .flatten()
            .collect();
            if h.metadata_changed {
                details.push("metadata".into());
            }
            t.row(&[
                h.host.clone(),
                format!("{} -> {}", h.base_generation, h.new_generation),
                total.added.to_string(),
                total.changed.to_string(),
                total.removed.to_string(),
                h.connected_agents.to_string(),
                details.join(", "),
            ]);
        }
        for l in t.render().lines() {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// One change request, sent first as a dry run, then for real.
pub enum Change {
    Apply {
        text: String,
        file: String,
        skip_tests: bool,
    },
    Create {
        kind: ObjectKind,
        toml: String,
        skip_tests: bool,
    },
    Update {
        kind: ObjectKind,
        name: String,
        toml: String,
        skip_tests: bool,
    },
    Delete {
        kind: ObjectKind,
        name: String,
        skip_tests: bool,
    },
}

impl Change {
    fn what(&self) -> &'static str {
        match self {
            Change::Apply { .. } => "apply the policy",
            Change::Create { .. } => "create the object",
            Change::Update { .. } => "update the object",
            Change::Delete { .. } => "delete the object",
        }
    }

    async fn send(&self, ctl: &Ctl, dry_run: bool, expected: Option<u64>) -> R<v1::Plan> {
        let mut a = ctl.admin.clone();
        let what = self.what();
        let plan = match self {
            Change::Apply {
                text,
                file,
                skip_tests,
            } => {
                ctl.call(
                    what,
                    a.apply_policy(v1::ApplyPolicyRequest {
                        policy_toml: text.clone(),
                        file_name: file.clone(),
                        dry_run,
                        expected_revision: expected,
                        skip_tests: *skip_tests,
                    }),
                )
                .await?
                .plan
            }
            Change::Create {
                kind,
                toml,
                skip_tests,
            } => {
                ctl.call(
                    what,
                    a.create_object(v1::CreateObjectRequest {
                        object: Some(v1::PolicyObject {
                            kind: *kind as i32,
                            name: String::new(),
                            toml: toml.clone(),
                        }),
                        expected_revision: expected,
                        dry_run,
                        skip_tests: *skip_tests,
                    }),
                )
                .await?
                .plan
            }
            Change::Update {
                kind,
                name,
                toml,
                skip_tests,
            } => {
                ctl.call(
                    what,
                    a.update_object(v1::UpdateObjectRequest {
                        object: Some(v1::PolicyObject {
                            kind: *kind as i32,
                            name: name.clone(),
                            toml: toml.clone(),
                        }),
                        expected_revision: expected,
                        dry_run,
                        skip_tests: *skip_tests,
                    }),
                )
                .await?
                .plan
            }
            Change::Delete {
                kind,
                name,
                skip_tests,
            } => {
                ctl.call(
                    what,
                    a.delete_object(v1::DeleteObjectRequest {
                        kind: *kind as i32,
                        name: name.clone(),
                        expected_revision: expected,
                        dry_run,
                        skip_tests: *skip_tests,
                    }),
                )
                .await?
                .plan
            }
        };
        plan.ok_or_else(|| Fail::Error("the controller answered without a plan".into()))
    }
}

/// Asks on the terminal; `Ok(false)` when declined. Without a terminal: usage error.
fn confirm(question: &str) -> R<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Fail::Usage(format!(
            "refusing to change the controller's policy without confirmation: stdin is not a terminal \
             (pass --yes to {question} without asking, or --dry-run to only show the plan)"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "{}? [y/N] ", capitalize(question));
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Fail::Usage(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The number of located errors in a controller's INVALID_ARGUMENT message.
pub fn error_count(diags: &str) -> usize {
    diags
        .lines()
        .filter(|l| l.contains(": error: "))
        .count()
        .max(1)
}

/// Plans, shows, confirms and applies one change.
pub async fn change(ctl: &Ctl, ch: Change, yes: bool, dry_run: bool, output: Output) -> R<()> {
    change_inner(ctl, ch, yes, dry_run, output)
        .await
        .map_err(|e| match e {
            // The controller's located errors as they are, then a summary.
            Fail::Raw(d) => {
                let n = error_count(&d);
                Fail::Diagnostics(
                    d,
                    format!(
                        "the change is invalid ({n} error{}); the controller's policy was not changed",
                        plural(n)
                    ),
                )
            }
            other => other,
        })
}

async fn change_inner(ctl: &Ctl, ch: Change, yes: bool, dry_run: bool, output: Output) -> R<()> {
    let plan = ch.send(ctl, true, None).await?;
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    if output == Output::Text {
        print!("{}", plan_text(&plan));
    }
    let done = |applied: Option<&v1::Plan>| {
        if output == Output::Json {
            print_json(&json!({
                "dry_run": dry_run,
                "applied": applied.is_some(),
                "plan": plan_json(applied.unwrap_or(&plan)),
            }));
        }
    };
    if plan_is_empty(&plan) {
        done(None);
        return Ok(());
    }
    if dry_run {
        if output == Output::Text {
            println!("\ndry run: nothing was changed");
        }
        done(None);
        return Ok(());
    }
    if !yes {
        if output == Output::Text {
            println!();
        }
        if !confirm("apply these changes")? {
            return Err(Fail::Error("cancelled; nothing was changed".into()));
        }
    }
    let applied = ch.send(ctl, false, Some(plan.base_revision)).await?;
    if output == Output::Text {
        println!(
            "\napplied: the controller's policy is now revision {}{}",
            applied.new_revision,
            if applied.hosts.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} host{} get{} the change",
                    applied.hosts.len(),
                    plural(applied.hosts.len()),
                    if applied.hosts.len() == 1 { "s" } else { "" }
                )
            }
        );
    }
    done(Some(&applied));
    Ok(())
}

/// How `apply` proceeds: `--yes`, `--dry-run`, `--skip-tests`.
pub struct How {
    pub yes: bool,
    pub dry_run: bool,
    pub skip_tests: bool,
}

/// The number of failing `[[test]]` blocks in a controller's refusal (0: none).
fn failing_test_count(diags: &str) -> usize {
    diags
        .lines()
        .filter(|l| l.contains(": error: test `") && l.contains("` fails: "))
        .count()
}

pub async fn apply(ctl: &Ctl, file: &Path, how: How, output: Output) -> R<()> {
    let text = read_file(file)?;
    let ch = Change::Apply {
        text,
        file: file.display().to_string(),
        skip_tests: how.skip_tests,
    };
    match change(ctl, ch, how.yes, how.dry_run, output).await {
        // The located errors as they are, then a summary line like `policy check`.
        Err(Fail::Diagnostics(d, _)) => {
            let tests = failing_test_count(&d);
            let n = error_count(&d);
            let summary = if tests > 0 && tests == n {
                format!(
                    "`{}`: {tests} [[test]] block{} fail{}; the controller's policy was not \
                     changed (fix the policy or its tests, or pass --skip-tests to apply anyway)",
                    file.display(),
                    plural(tests),
                    if tests == 1 { "s" } else { "" }
                )
            } else {
                format!(
                    "`{}` has {n} error{}; the controller's policy was not changed",
                    file.display(),
                    plural(n)
                )
            };
            Err(Fail::Diagnostics(d, summary))
        }
        other => other,
    }
}
