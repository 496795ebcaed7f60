//! The remote commands: talk to a controller's Admin gRPC service.
//!
//! Every change (apply, create, update, delete) is planned first (a dry run), the plan is
//! shown, confirmed (on a terminal, unless `--yes`), and then applied with the revision
//! the plan was computed at, so a concurrent change in between is refused instead of
//! silently overwritten.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use gateway_proto::v1::{self, ObjectKind, admin_client::AdminClient};
use gatewayctl::remote::now_unix;
use gatewayctl::remote::{format_ms, format_ms_secs, kind_name, name_key, parse_time_ms};
use gatewayctl::table::Table;
use gatewayctl::{resolve_from, resolve_host, resolve_to};
use policy_compiler::{Policy, format_rfc3339};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::{Fail, Output, R, plural, print_json};

/// How long to wait for the TCP/HTTP2 connection and for each unary call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the controller is and how to prove who we are.
pub struct Access {
    pub url: String,
    /// API key or session token, sent as `authorization: Bearer <secret>`.
    pub api_key: Option<String>,
    /// CA certificate (PEM) for `https://` URLs.
    pub ca: Option<std::path::PathBuf>,
}

/// Adds the bearer credential to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A connected Admin client and the URL it talks to (for messages).
pub struct Ctl {
    url: String,
    admin: Admin,
}

/// The message of an error and its sources (`transport error: tcp connect error: ...`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = x.source();
    }
    s
}

/// Connects to the controller (bounded); an unreachable controller is a usage error.
pub async fn connect(access: &Access) -> R<Ctl> {
    let url = gatewayctl::remote::normalize_url(&access.url)
        .map_err(|e| Fail::Usage(format!("--controller: {e}")))?;
    let bearer = match &access.api_key {
        Some(k) => Some(format!("Bearer {}", k.trim()).parse().map_err(|_| {
            Fail::Usage("--api-key: not a valid credential (printable ASCII only)".into())
        })?),
        None => None,
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            Fail::Usage(format!(
                "--controller: `{url}` is not a valid URL: {}",
                chain(&e)
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if !url.starts_with("https://")
        && let Some(ca) = &access.ca
    {
        return Err(Fail::Usage(format!(
            "--ca {} is for https:// controllers, but --controller `{url}` is plaintext: \
             use https:// (or drop --ca for a plaintext test controller on loopback)",
            ca.display()
        )));
    }
    if url.starts_with("https://") {
        let Some(ca) = &access.ca else {
            return Err(Fail::Usage(
                "--controller is https:// but no --ca (or GATEWAYCTL_CA) names the CA \
                 certificate that signed the controller's certificate"
                    .into(),
            ));
        };
        let pem =
            std::fs::read(ca).map_err(|e| Fail::Usage(format!("--ca {}: {e}", ca.display())))?;
        ep = ep
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .map_err(|e| Fail::Usage(format!("--ca {}: {}", ca.display(), chain(&e))))?;
    }
    let unreachable = |detail: String| {
        Fail::Usage(format!(
            "cannot reach the controller at {url}: {detail} (is `gateway-controller run` listening there? set --controller or GATEWAYCTL_CONTROLLER)"
        ))
    };
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(unreachable(chain(&e))),
        Err(_) => {
            return Err(unreachable(format!(
                "no connection within {}s",
                (CONNECT_TIMEOUT * 2).as_secs()
            )));
        }
    };
    Ok(Ctl {
        url,
        admin: AdminClient::with_interceptor(channel, Bearer(bearer)),
    })
}

impl Ctl {
    /// Maps a gRPC error to a failure with a clear message.
    fn fail(&self, what: &str, s: &Status) -> Fail {
        let msg = s.message().trim();
        match s.code() {
            Code::Unavailable => Fail::Usage(format!(
                "cannot reach the controller at {}: {}",
                self.url,
                if msg.is_empty() {
                    chain(s)
                } else {
                    msg.to_string()
                }
            )),
            Code::DeadlineExceeded => Fail::Usage(format!(
                "the controller at {} did not answer {what} in time: {msg}",
                self.url
            )),
            Code::Cancelled => Fail::Usage(format!("{what} was cancelled: {msg}")),
            Code::Unauthenticated => Fail::Usage(format!(
                "the controller at {} did not accept our credentials for {what}: {msg}",
                self.url
            )),
            Code::PermissionDenied => Fail::Error(format!("not allowed to {what}: {msg}")),
            // Located diagnostics (`file:line:col: error: ...`): print them as they are.
            Code::InvalidArgument => Fail::Raw(msg.to_string()),
            Code::NotFound => Fail::Error(format!("not found: {msg}")),
            Code::AlreadyExists => Fail::Error(format!("already exists: {msg}")),
            Code::FailedPrecondition | Code::Aborted => Fail::Error(format!(
                "the policy on the controller changed since the plan was computed; nothing was applied \
                 (run the command again to review the new plan): {msg}"
            )),
            Code::Unimplemented => Fail::Error(format!(
                "the controller at {} does not support {what} (is it older than gatewayctl?): {msg}",
                self.url
            )),
            other => Fail::Error(format!(
                "the controller failed to {what} ({other:?}): {msg}"
            )),
        }
    }

    /// Runs one unary call with a deadline and maps its errors.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> R<T> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.fail(what, &s)),
            Err(_) => Err(Fail::Usage(format!(
                "the controller at {} did not answer {what} within {}s",
                self.url,
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn policy(&self) -> R<v1::GetPolicyResponse> {
        let mut a = self.admin.clone();
        self.call("read the policy", a.get_policy(v1::GetPolicyRequest {}))
            .await
    }

    /// The controller's current policy parsed locally (for resolving names), if valid.
    async fn parsed_policy(&self) -> Option<Policy> {
        let p = self.policy().await.ok()?;
        policy_compiler::parse(&p.policy_toml, "policy.toml", now_unix())
            .ok()
            .map(|p| p.policy)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn read_file(path: &Path) -> R<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::Usage(format!("cannot read `{}`: {e}", path.display())))
}

// ------------------------------------------------------------------ plans

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
        })).collect::<Vec<_>>(),
        "hosts": p.hosts.iter().map(|h| json!({
            "host": h.host,
            "base_generation": h.base_generation,
            "new_generation": h.new_generation,
            "src": counts_json(h.src.as_ref()),
            "dst": counts_json(h.dst.as_ref()),
            "rules": counts_json(h.rules.as_ref()),
            "total": counts_json(h.total.as_ref()),
            "metadata_changed": h.metadata_changed,
            "connected_agents": h.connected_agents,
        })).collect::<Vec<_>>(),
        "warnings": p.warnings,
    })
}

fn plan_is_empty(p: &v1::Plan) -> bool {
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
    },
    Create {
        kind: ObjectKind,
        toml: String,
    },
    Update {
        kind: ObjectKind,
        name: String,
        toml: String,
    },
    Delete {
        kind: ObjectKind,
        name: String,
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
            Change::Apply { text, file } => {
                ctl.call(
                    what,
                    a.apply_policy(v1::ApplyPolicyRequest {
                        policy_toml: text.clone(),
                        file_name: file.clone(),
                        dry_run,
                        expected_revision: expected,
                    }),
                )
                .await?
                .plan
            }
            Change::Create { kind, toml } => {
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
                    }),
                )
                .await?
                .plan
            }
            Change::Update { kind, name, toml } => {
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
                    }),
                )
                .await?
                .plan
            }
            Change::Delete { kind, name } => {
                ctl.call(
                    what,
                    a.delete_object(v1::DeleteObjectRequest {
                        kind: *kind as i32,
                        name: name.clone(),
                        expected_revision: expected,
                        dry_run,
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
fn error_count(diags: &str) -> usize {
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

// ------------------------------------------------------------------ objects

fn object_json(o: &v1::PolicyObject) -> Value {
    json!({"kind": kind_name(o.kind), "name": o.name, "toml": o.toml})
}

/// One line summarizing an object's table: `key=value` pairs besides its name.
fn object_details(o: &v1::PolicyObject) -> String {
    let Ok(doc) = o.toml.parse::<toml::Table>() else {
        return String::new();
    };
    let Some((section, toml::Value::Array(items))) = doc.iter().next() else {
        return String::new();
    };
    let Some(t) = items.first().and_then(toml::Value::as_table) else {
        return String::new();
    };
    let key = ObjectKind::try_from(o.kind).map_or("name", name_key);
    let mut parts: Vec<String> = Vec::new();
    if section == "allow" || section == "deny" {
        parts.push(section.clone());
    }
    for (k, v) in t {
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
    yes: bool,
    dry_run: bool,
    output: Output,
) -> R<()> {
    let ch = Change::Delete {
        kind,
        name: name.to_string(),
    };
    change(ctl, ch, yes, dry_run, output)
        .await
        .map_err(|e| not_found_hint(e, kind))
}

pub async fn create(
    ctl: &Ctl,
    kind: ObjectKind,
    file: &Path,
    yes: bool,
    dry_run: bool,
    output: Output,
) -> R<()> {
    let toml = read_file(file)?;
    change(ctl, Change::Create { kind, toml }, yes, dry_run, output).await
}

pub async fn update(
    ctl: &Ctl,
    kind: ObjectKind,
    name: &str,
    file: &Path,
    yes: bool,
    dry_run: bool,
    output: Output,
) -> R<()> {
    let toml = read_file(file)?;
    let ch = Change::Update {
        kind,
        name: name.to_string(),
        toml,
    };
    change(ctl, ch, yes, dry_run, output)
        .await
        .map_err(|e| not_found_hint(e, kind))
}

pub async fn apply(ctl: &Ctl, file: &Path, yes: bool, dry_run: bool, output: Output) -> R<()> {
    let text = read_file(file)?;
    let ch = Change::Apply {
        text,
        file: file.display().to_string(),
    };
    match change(ctl, ch, yes, dry_run, output).await {
        // The located errors as they are, then a summary line like `policy check`.
        Err(Fail::Diagnostics(d, _)) => {
            let n = error_count(&d);
            Err(Fail::Diagnostics(
                d,
                format!(
                    "`{}` has {n} error{}; the controller's policy was not changed",
                    file.display(),
                    plural(n)
                ),
            ))
        }
        other => other,
    }
}

// ------------------------------------------------------------------ explain

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
                    "dst": target.map(|t| t.addr.to_string()),
                    "proto": target.map(|t| gatewayctl::proto_name(t.proto)),
                    "dst_port": target.map(|t| t.port),
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

// ------------------------------------------------------------------ events

/// Event filter options of `gatewayctl events`.
#[derive(Clone, Debug, Default)]
pub struct EventArgs {
    pub user: Option<String>,
    pub device: Option<String>,
    pub resource: Option<String>,
    pub event: Option<String>,
    pub verdict: Option<String>,
    pub host: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u32>,
    pub follow: bool,
}

fn time_arg(flag: &str, v: &Option<String>) -> R<Option<i64>> {
    v.as_deref()
        .map(|s| parse_time_ms(s, now_ms()).map_err(|e| Fail::Usage(format!("{flag}: {e}"))))
        .transpose()
}

fn opt(s: Option<&String>) -> &str {
    s.map_or("", String::as_str)
}

fn event_json(e: &v1::StoredEvent) -> Value {
    let ev = e.event.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "time": format_ms(e.time_unix_ms),
        "time_unix_ms": e.time_unix_ms,
        "received_unix_ms": e.received_unix_ms,
        "agent_id": e.agent_id,
        "timestamp": ev.timestamp,
        "event": ev.event,
        "verdict": ev.verdict,
        "reason": ev.reason,
        "user": ev.user,
        "device": ev.device,
        "service_account": ev.service_account,
        "public_ip": ev.public_ip,
        "src_ip": ev.src_ip,
        "src_port": ev.src_port,
        "resource": ev.resource,
        "dst_ip": ev.dst_ip,
        "protocol": ev.protocol,
        "dst_port": ev.dst_port,
        "connector": ev.connector,
        "remote_network": ev.remote_network,
        "rule": ev.rule,
        "rule_id": ev.rule_id,
        "host": ev.host,
        "packets": ev.packets,
        "bytes": ev.bytes,
        "reply_packets": ev.reply_packets,
        "reply_bytes": ev.reply_bytes,
        "duration_ms": ev.duration_ms,
    })
}

const EVENT_COLUMNS: [&str; 10] = [
    "time",
    "event",
    "verdict",
    "user",
    "device",
    "src",
    "resource",
    "dst",
    "rule",
    "connector",
];

fn event_row(e: &v1::StoredEvent) -> Vec<String> {
    let ev = e.event.clone().unwrap_or_default();
    let dst = match (&ev.dst_ip, ev.dst_port, &ev.protocol) {
        (None, _, _) => String::new(),
        (Some(ip), port, proto) => {
            let ip = if ip.contains(':') && port.is_some() {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            let mut s = ip;
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            if let Some(pr) = proto {
                s.push_str(&format!("/{pr}"));
            }
            s
        }
    };
    let device = match (&ev.device, &ev.service_account) {
        (Some(d), _) => d.clone(),
        (None, Some(sa)) => format!("sa:{sa}"),
        _ => String::new(),
    };
    let rule = match &ev.rule {
        Some(r) => r.clone(),
        None if ev.rule_id != 0 => format!("rule {}", ev.rule_id),
        None => String::new(),
    };
    vec![
        format_ms(e.time_unix_ms),
        ev.event.clone(),
        ev.verdict.clone(),
        opt(ev.user.as_ref()).to_string(),
        device,
        opt(ev.src_ip.as_ref()).to_string(),
        opt(ev.resource.as_ref()).to_string(),
        dst,
        rule,
        opt(ev.connector.as_ref()).to_string(),
    ]
}

pub async fn events(ctl: &Ctl, args: &EventArgs, output: Output) -> R<()> {
    if let Some(v) = &args.verdict
        && !matches!(v.as_str(), "allow" | "deny" | "audit")
    {
        return Err(Fail::Usage(format!(
            "--verdict: unknown verdict `{v}` (valid: allow, deny, audit)"
        )));
    }
    let filter = v1::EventFilter {
        since_unix_ms: time_arg("--since", &args.since)?,
        until_unix_ms: time_arg("--until", &args.until)?,
        user: args.user.clone(),
        device: args.device.clone(),
        resource: args.resource.clone(),
        event: args.event.clone(),
        verdict: args.verdict.clone(),
        host: args.host.clone(),
    };
    // Ctrl-C ends following with success: handled from before the first line printed.
    let mut interrupt = if args.follow {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| Fail::Usage(format!("cannot handle Ctrl-C: {e}")))?,
        )
    } else {
        None
    };
    // Follow: subscribe first, then read the history, so nothing falls in between.
    let mut stream = if args.follow {
        let mut a = ctl.admin.clone();
        Some(
            ctl.call(
                "follow events",
                a.follow_events(v1::FollowEventsRequest {
                    filter: Some(filter.clone()),
                }),
            )
            .await?,
        )
    } else {
        None
    };
    let mut a = ctl.admin.clone();
    let history = ctl
        .call(
            "query events",
            a.query_events(v1::QueryEventsRequest {
                filter: Some(filter),
                limit: args.limit.unwrap_or(0),
            }),
        )
        .await?
        .events;
    let Some(stream) = stream.as_mut() else {
        match output {
            Output::Json => print_json(&json!({
                "events": history.iter().map(event_json).collect::<Vec<_>>(),
            })),
            Output::Text => {
                if history.is_empty() {
                    println!("no matching events");
                } else {
                    let mut t = Table::new(&EVENT_COLUMNS);
                    for e in &history {
                        t.row(&event_row(e));
                    }
                    print!("{}", t.render());
                }
            }
        }
        return Ok(());
    };

    // Following: JSON Lines (one event per line), or table rows as they arrive.
    let mut t = Table::new(&EVENT_COLUMNS);
    for e in &history {
        t.row(&event_row(e));
    }
    let mut widths = t.widths();
    // Room for typical values, so live rows line up with the header.
    for (w, min) in widths
        .iter_mut()
        .zip([24, 10, 7, 20, 16, 15, 12, 22, 10, 12])
    {
        *w = (*w).max(min);
    }
    let print_event = |e: &v1::StoredEvent| match output {
        Output::Json => println!("{}", event_json(e)),
        Output::Text => println!("{}", Table::line(&widths, &event_row(e))),
    };
    if output == Output::Text {
        println!("{}", t.header_line(&widths));
    }
    let mut last = 0;
    for e in &history {
        print_event(e);
        last = last.max(e.id);
    }
    eprintln!(
        "gatewayctl: following events from {}; Ctrl-C to stop",
        ctl.url
    );
    let Some(interrupt) = interrupt.as_mut() else {
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            m = stream.message() => match m {
                Ok(Some(e)) => {
                    if e.id > last {
                        print_event(&e);
                    }
                }
                Ok(None) => {
                    return Err(Fail::Error(format!(
                        "the controller at {} ended the event stream (shutting down?)",
                        ctl.url
                    )));
                }
                Err(s) => return Err(ctl.fail("follow events", &s)),
            },
        }
    }
}

// ------------------------------------------------------------------ audit

/// `gatewayctl audit verify`: the controller re-hashes the whole chain.
pub async fn audit_verify(ctl: &Ctl, expect_head: Option<String>, output: Output) -> R<()> {
    let mut admin = ctl.admin.clone();
    let anchored = expect_head.is_some();
    let r = admin
        .verify_audit(gateway_proto::v1::VerifyAuditRequest { expect_head })
        .await
        .map_err(|s| ctl.fail("verify the audit trail", &s))?
        .into_inner();
    if output == Output::Json {
        print_json(&serde_json::json!({
            "ok": r.ok,
            "records": r.records,
            "first_bad_id": r.first_bad_id,
            "reason": r.reason,
            "head_hash": r.head_hash,
            "expected_head_id": r.expected_head_id,
        }));
    } else if r.ok {
        println!(
            "audit trail intact: {} records, head hash {}",
            r.records, r.head_hash
        );
        match r.expected_head_id {
            Some(id) if anchored => {
                println!("the anchored head is record {id}: nothing before it was rewritten or cut")
            }
            _ => println!(
                "(keep the head hash elsewhere and check it later with --expect-head: it \
                 detects a trail rewritten or cut since)"
            ),
        }
    } else {
        println!(
            "audit trail BROKEN at record {}: {}",
            r.first_bad_id.map_or("?".into(), |i| i.to_string()),
            r.reason
        );
    }
    if r.ok {
        Ok(())
    } else {
        Err(Fail::Error(format!(
            "the audit trail does not verify (first bad record {})",
            r.first_bad_id.map_or("?".into(), |i| i.to_string())
        )))
    }
}

pub async fn audit(
    ctl: &Ctl,
    since: &Option<String>,
    until: &Option<String>,
    limit: Option<u32>,
    output: Output,
) -> R<()> {
    let mut a = ctl.admin.clone();
    let records = ctl
        .call(
            "read the audit report",
            a.audit_report(v1::AuditReportRequest {
                since_unix_ms: time_arg("--since", since)?,
                until_unix_ms: time_arg("--until", until)?,
                limit: limit.unwrap_or(0),
            }),
        )
        .await?
        .records;
    match output {
        Output::Json => print_json(&json!({
            "records": records.iter().map(|r| json!({
                "id": r.id,
                "time": format_ms(r.time_unix_ms),
                "time_unix_ms": r.time_unix_ms,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "before": r.before,
                "after": r.after,
                "revision": r.revision,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if records.is_empty() {
                println!("no audit records");
                return Ok(());
            }
            let mut t = Table::new(&["time", "actor", "action", "target", "revision"]);
            for r in &records {
                t.row(&[
                    format_ms_secs(r.time_unix_ms),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.revision.to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ agents / enrollment

pub async fn agents(ctl: &Ctl, output: Output) -> R<()> {
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
                "acked_generation": a.acked_generation,
                "current_generation": a.current_generation,
                "in_sync": a.acked_generation == a.current_generation,
                "last_seen": format_ms_secs(a.last_seen_unix_ms),
                "last_seen_unix_ms": a.last_seen_unix_ms,
                "enrolled": format_ms_secs(a.enrolled_unix_ms),
                "enrolled_unix_ms": a.enrolled_unix_ms,
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
                    (if a.connected { "yes" } else { "no" }).to_string(),
                    gen_,
                    format_ms_secs(a.last_seen_unix_ms),
                    format_ms_secs(a.enrolled_unix_ms),
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

fn role_name(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Operator) => "operator",
        Ok(v1::Role::Auditor) => "auditor",
        _ => "unknown",
    }
}

fn role_wire(r: &str) -> i32 {
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
pub async fn key_create(
    ctl: &Ctl,
    name: &str,
    role: &str,
    ttl: Option<u64>,
    output: Output,
) -> R<()> {
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
pub async fn key_list(ctl: &Ctl, output: Output) -> R<()> {
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
pub async fn key_revoke(ctl: &Ctl, name: &str, output: Output) -> R<()> {
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

/// `gatewayctl revoke-agent ID`.
pub async fn revoke_agent(ctl: &Ctl, agent_id: &str, output: Output) -> R<()> {
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
