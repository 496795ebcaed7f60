//! The policy aggregate: the objects and their revision, changes (validate against
//! the whole policy, plan, commit with the compiled view of every host and the audit
//! record), the published snapshot reads take, and recompiling when grants expire.

use std::collections::BTreeSet;
use std::sync::Arc;

use gateway_proto as gp;
use policy_compiler::{self as pc, Host, HostView, Policy};
use tracing::{debug, info};

use super::{HostState, Inner, State};
use crate::model::{
    AuditEntry, ChangeKind, ChangeOpts, EntryCounts, HostChange, ObjectChange, Plan, ViewDelta,
};
use crate::objects::{self, Kind, Object, Objects};
use crate::store::{
    AgentChange, AgentRow, DELTA_HISTORY, HostUpdate, REVISIONS_KEPT, RevisionInfo,
};
use crate::{Error, now_ms, now_unix, shown};

pub mod explain;
mod export;
mod fields;
mod locate;

/// What policy reads need, swapped in after every commit.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) objects: Objects,
    /// The objects' canonical text.
    pub(super) text: String,
    /// The text of the last applied file.
    pub(super) applied: Option<Arc<String>>,
    /// The policy text handed out (GetPolicy): the objects with the comments of the last
    /// applied file where they still hold ([`export::text`]), made on the first read.
    pub(super) exported: std::sync::OnceLock<String>,
    pub(super) revision: u64,
    /// Why the stored policy does not load, when it does not.
    pub(super) broken: Option<String>,
    /// The parsed policy (an empty stand-in when `broken`).
    pub(super) policy: Arc<Policy>,
}

impl Snapshot {
    pub(super) fn new(
        objects: Objects,
        applied: Option<Arc<String>>,
        revision: u64,
        broken: Option<String>,
        policy: Arc<Policy>,
    ) -> Snapshot {
        Snapshot {
            text: objects.render(),
            objects,
            applied,
            exported: std::sync::OnceLock::new(),
            revision,
            broken,
            policy,
        }
    }
}

/// A planned (or committed) host change.
pub(super) struct HostPlan {
    pub(super) host: String,
    pub(super) base: u64,
    pub(super) generation: u64,
    pub(super) view: Arc<HostView>,
    pub(super) delta: ViewDelta,
}

/// The next instant a grant or a service-account key expires: hosts are recompiled then.
pub(super) fn next_expiry(p: &Policy, now: i64) -> Option<i64> {
    p.grants
        .iter()
        .filter_map(|g| g.expires_at)
        .chain(p.principals.iter().filter_map(|k| k.expires_at))
        .filter(|&e| e > now)
        .min()
}

fn policy_hosts(p: &Policy) -> BTreeSet<String> {
    Host::all(p).iter().map(gp::host_name).collect()
}

/// `policy` with the WireGuard key each enrolled, non-revoked agent registered in place
/// of the policy's key of its host (the policy's key is the fallback for hosts without
/// such an agent). With several agents of one host, the last enrolled wins. The key of a
/// revoked agent is accepted nowhere, even where the policy writes it: revoking an agent
/// takes its host out of its peers' views unless another agent of the host is active.
pub(super) fn with_agent_keys<'p>(
    policy: &'p Policy,
    agents: &std::collections::HashMap<String, AgentRow>,
) -> std::borrow::Cow<'p, Policy> {
    let mut active: Vec<&AgentRow> = agents
        .values()
        .filter(|a| a.revoked_ms.is_none() && !a.public_key.is_empty())
        .collect();
    active.sort_by(|a, b| (a.enrolled_ms, &a.id).cmp(&(b.enrolled_ms, &b.id)));
    let mut out = std::borrow::Cow::Borrowed(policy);
    for a in active {
        let (Ok(host), Ok(key)) = (gp::parse_host(&a.host), a.public_key.parse()) else {
            continue;
        };
        let current = match &host {
            Host::Device(d) => out
                .devices
                .iter()
                .find(|x| &x.name == d)
                .and_then(|x| x.public_key),
            Host::Connector(c) => out.connector(c).map(|x| x.public_key),
        };
        if current != Some(key) {
            out.to_mut().set_host_key(&host, key);
        }
    }
    // After the active keys are in: a revoked key still in the policy is withdrawn.
    let live: std::collections::HashSet<&str> = agents
        .values()
        .filter(|a| a.revoked_ms.is_none())
        .map(|a| a.public_key.as_str())
        .collect();
    for a in agents.values() {
        if a.revoked_ms.is_none() || a.public_key.is_empty() || live.contains(a.public_key.as_str())
        {
            continue;
        }
        if let Ok(key) = a.public_key.parse::<pc::WgKey>()
            && out.key_owner(&key).is_some()
        {
            out.to_mut().withdraw_key(&key);
        }
    }
    out
}

fn compile_or_empty(p: &Policy, host: &Host, now: i64) -> HostView {
    pc::compile(p, host, now).unwrap_or_else(|_| gp::empty_view(host, now))
}

pub(super) fn parse_policy(
    text: &str,
    file: &str,
    now: i64,
) -> Result<pc::Parsed, Vec<pc::Diagnostic>> {
    pc::parse(text, file, now)
}

/// One located line per failing `[[test]]` block of a policy: where it is, its name,
/// what it sends, what it expects and what the policy decides (reason and rule).
/// Each comes with the test's name.
pub(super) fn failing_tests(p: &Policy) -> Vec<(String, String)> {
    let verdict = |v: pc::Verdict| format!("{v:?}").to_ascii_lowercase();
    pc::run_tests(p)
        .iter()
        .zip(&p.tests)
        .filter(|(r, _)| !r.passed)
        .map(|(r, t)| {
            let reason = format!("{:?}", r.decision.reason);
            let rule = r
                .decision
                .rule
                .and_then(|id| p.rule(id.0))
                .map_or_else(|| "default deny".to_string(), ToString::to_string);
            let line = format!(
                "{}:{}:{}: error: test `{}` fails: {} -> {} expects {}, the policy decides {} \
                 ({reason}, {rule})",
                p.file,
                r.line,
                r.column,
                r.name,
                t.from,
                t.to,
                verdict(r.expected),
                verdict(r.decision.verdict),
            );
            (r.name.clone(), line)
        })
        .collect()
}

impl State {
    /// The tests of `new` that fail there but passed (or did not exist) in `old`, each as
    /// `test `NAME` fails: FROM -> TO expects ..., the policy decides ...` (no location: an
    /// object-level change has no file of the admin's to point into).
    fn newly_failing_tests(old: &Policy, new: &Policy) -> Vec<String> {
        let failing_before: std::collections::HashSet<String> = failing_tests(old)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        failing_tests(new)
            .into_iter()
            .filter(|(name, _)| !failing_before.contains(name))
            .map(|(_, line)| match line.split_once(": error: ") {
                Some((_, what)) => what.to_string(),
                None => line,
            })
            .collect()
    }
}

pub(super) fn diag_text(d: &[pc::Diagnostic]) -> String {
    d.iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the text of one object sits inside a policy text being validated, so its
/// diagnostics can be reported against the object's own text.
struct ObjectSpan {
    index: usize,
    text: String,
    /// Lines prepended to the object's text (its header, when it had none).
    shift: u32,
    file: String,
}

/// What a change edits, for locating its errors.
enum Edit<'a> {
    /// The whole policy (its errors are located in the caller's file before).
    Whole,
    /// One object, from its own text.
    Object(ObjectSpan),
    /// One object deleted.
    Delete(&'a Object),
}

impl State {
    /// Publishes what reads see (after a commit of objects).
    pub(super) fn publish(&self, g: &Inner) {
        let applied = self.snap().applied.clone();
        self.publish_with(g, applied);
    }

    /// Publishes what reads see, with `applied` as the text of the last applied file.
    pub(super) fn publish_with(&self, g: &Inner, applied: Option<Arc<String>>) {
        let snap = Snapshot::new(
            g.objects.clone(),
            applied,
            g.revision,
            g.broken.clone(),
            g.policy.clone(),
        );
        // The text this revision's commit made for its revision record is what GetPolicy
        // gives: the first reader does not make it again.
        if let Some((rev, text)) = &g.exported
            && *rev == g.revision
        {
            let _ = snap.exported.set(text.clone());
        }
        let snap = Arc::new(snap);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    /// Why the stored policy does not load, when it does not (then changes other than
    /// ApplyPolicy are refused).
    pub fn problem(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    fn refuse_if_broken(g: &Inner) -> Result<(), Error> {
        Self::refuse_broken(&g.broken)
    }

    pub(super) fn refuse_broken(broken: &Option<String>) -> Result<(), Error> {
        match broken {
            Some(why) => Err(Error::FailedPrecondition(format!(
                "{why}. Changes are refused until a valid policy is applied as a whole \
                 (ApplyPolicy, `gatewayctl apply`)"
            ))),
            None => Ok(()),
        }
    }

    // -------------------------------------------------------------- policy

    /// The policy text (with the comments of the last applied file where they still
    /// hold; applying it back changes nothing) and revision.
    pub fn policy(&self) -> (String, u64) {
        let s = self.snap();
        let text = s
            .exported
            .get_or_init(|| export::text(&s.objects, s.applied.as_deref().map(String::as_str)));
        (text.clone(), s.revision)
    }

    pub fn revision(&self) -> u64 {
        self.snap().revision
    }

    /// Keeps the current revision's text when the database has none for it (one made
    /// before revisions were kept); nothing for revision 0 or a broken policy.
    pub(super) fn keep_current_revision(&self) -> Result<(), Error> {
        let mut g = self.lock();
        if g.revision == 0 || g.broken.is_some() {
            return Ok(());
        }
        // Kept already (every start after the first): nothing to write.
        if g.store
            .revisions(g.revision + 1, 1)?
            .first()
            .map(|r| r.revision)
            == Some(g.revision)
        {
            return Ok(());
        }
        let (text, revision) = self.policy();
        g.store.keep_revision(revision, now_ms(), &text)
    }

    /// The kept revisions, newest first (at most `limit`, 1 to 1000, default 100; those
    /// below `before` when it is not 0).
    pub fn policy_revisions(&self, before: u64, limit: u32) -> Result<Vec<RevisionInfo>, Error> {
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        self.lock().store.revisions(before, limit)
    }

    /// The policy text at `revision` (0: the current one) and that revision. A revision
    /// that is not kept (older than the last [`REVISIONS_KEPT`], or never made) is
    /// `NotFound`, saying which are kept.
    pub fn policy_at(&self, revision: u64) -> Result<(String, u64), Error> {
        let current = self.revision();
        if revision == 0 || revision == current {
            return Ok(self.policy());
        }
        let g = self.lock();
        if let Some(text) = g.store.revision_text(revision)? {
            return Ok((text, revision));
        }
        let kept = g.store.revisions(0, REVISIONS_KEPT as u32)?;
        Err(Error::NotFound(match (kept.last(), kept.first()) {
            _ if revision > current => {
                format!("no revision {revision}: the policy is at revision {current}")
            }
            (Some(oldest), Some(_)) => format!(
                "revision {revision} is not kept: the controller keeps the texts of the last \
                 {REVISIONS_KEPT} revisions ({} to {current} here)",
                oldest.revision
            ),
            _ => format!(
                "revision {revision} is not kept: no revision texts are kept yet (the \
                 policy is at revision {current})"
            ),
        }))
    }

    /// Every object (of `kind`, when given) and the revision.
    pub fn objects(&self, kind: Option<Kind>) -> (Vec<Object>, u64) {
        let s = self.snap();
        let list = s
            .objects
            .list
            .iter()
            .filter(|o| kind.is_none_or(|k| o.kind == k))
            .cloned()
            .collect();
        (list, s.revision)
    }

    pub fn object(&self, kind: Kind, name: &str) -> Result<(Object, u64), Error> {
        let s = self.snap();
        s.objects
            .get(kind, name)
            .cloned()
            .map(|o| (o, s.revision))
            .ok_or_else(|| Error::NotFound(format!("no {kind} named `{}`", shown(name))))
    }

    /// Replaces the whole policy (declarative apply).
    pub fn apply_policy(&self, text: &str, file: &str, opts: &ChangeOpts) -> Result<Plan, Error> {
        self.retrying(|| {
            let file = if file.is_empty() { "policy.toml" } else { file };
            let now = now_unix();
            // Located against the caller's own text.
            let parsed =
                parse_policy(text, file, now).map_err(|d| Error::InvalidArgument(diag_text(&d)))?;
            // The policy's own [[test]] blocks, located in the caller's text too.
            let failing = failing_tests(&parsed.policy);
            if !failing.is_empty() && !opts.skip_tests {
                return Err(Error::InvalidArgument(format!(
                    "{}\nhelp: {} of the policy's {} [[test]] blocks fail{}; nothing was changed: fix \
                     the policy or the tests, or apply anyway with skip_tests (`gatewayctl apply \
                     --skip-tests`, recorded in the audit trail)",
                    failing
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    failing.len(),
                    parsed.policy.tests.len(),
                    if failing.len() == 1 { "s" } else { "" },
                )));
            }
            let new = objects::split(text, file)?;
            let mut g = self.lock_writing()?;
            let before = g.objects.render();
            let after = new.render();
            let audit = if failing.is_empty() {
                ("apply_policy", "policy".to_string(), before, after)
            } else {
                let names: Vec<&str> = failing.iter().map(|(n, _)| n.as_str()).collect();
                (
                    "apply_policy_skip_tests",
                    format!("policy (failing tests skipped: {})", names.join(", ")),
                    before,
                    after,
                )
            };
            let mut plan = self.change(&mut g, new, Edit::Whole, opts, audit, now, Some(text))?;
            plan.warnings.extend(failing.iter().map(|(_, l)| {
                format!(
                    "{} (skip_tests: {})",
                    l.replacen(": error: ", ": warning: ", 1),
                    if opts.dry_run {
                        "would be applied anyway"
                    } else {
                        "applied anyway"
                    }
                )
            }));
            if !opts.dry_run {
                // Its text was stored with the change, for its comments (GetPolicy, export).
                self.publish_with(&g, Some(Arc::new(text.to_string())));
            }
            Ok(plan)
        })
    }

    /// Adds an object.
    pub fn create_object(&self, kind: Kind, text: &str, opts: &ChangeOpts) -> Result<Plan, Error> {
        self.retrying(|| {
            let now = now_unix();
            let mut g = self.lock_writing()?;
            let (obj, vtext, shift) = objects::parse_object(kind, text, &format!("{kind}"))?;
            if g.objects.get(kind, &obj.name).is_some() {
                return Err(Error::AlreadyExists(format!(
                    "a {kind} named `{}` exists (update it instead)",
                    obj.name
                )));
            }
            let mut new = g.objects.clone();
            let target = format!("{kind}:{}", obj.name);
            let after = obj.toml.clone();
            new.insert(obj.clone());
            let index = new.position(kind, &obj.name).unwrap_or(0);
            let span = ObjectSpan {
                index,
                text: vtext,
                shift,
                file: target.clone(),
            };
            self.change(
                &mut g,
                new,
                Edit::Object(span),
                opts,
                ("create_object", target, String::new(), after),
                now,
                None,
            )
        })
    }

    /// Replaces an object's table (same kind and name).
    pub fn update_object(
        &self,
        kind: Kind,
        name: &str,
        text: &str,
        opts: &ChangeOpts,
    ) -> Result<Plan, Error> {
        self.retrying(|| {
            let now = now_unix();
            let mut g = self.lock_writing()?;
            let Some(index) = g.objects.position(kind, name) else {
                return Err(Error::NotFound(format!(
                    "no {kind} named `{}`",
                    shown(name)
                )));
            };
            let target = format!("{kind}:{name}");
            let (obj, vtext, shift) = objects::parse_object(kind, text, &target)?;
            if obj.name != name {
                return Err(Error::InvalidArgument(format!(
                    "{target}: the table names `{}`; renaming is delete + create",
                    shown(&obj.name)
                )));
            }
            let mut new = g.objects.clone();
            let before = new.list[index].toml.clone();
            let after = obj.toml.clone();
            new.list[index] = obj;
            let span = ObjectSpan {
                index,
                text: vtext,
                shift,
                file: target.clone(),
            };
            self.change(
                &mut g,
                new,
                Edit::Object(span),
                opts,
                ("update_object", target, before, after),
                now,
                None,
            )
        })
    }

    /// Removes an object.
    pub fn delete_object(&self, kind: Kind, name: &str, opts: &ChangeOpts) -> Result<Plan, Error> {
        self.retrying(|| {
            let now = now_unix();
            let mut g = self.lock_writing()?;
            let Some(index) = g.objects.position(kind, name) else {
                return Err(Error::NotFound(format!(
                    "no {kind} named `{}`",
                    shown(name)
                )));
            };
            let mut new = g.objects.clone();
            let removed = new.list.remove(index);
            let target = format!("{kind}:{name}");
            let audit = ("delete_object", target, removed.toml.clone(), String::new());
            self.change(&mut g, new, Edit::Delete(&removed), opts, audit, now, None)
        })
    }

    /// Recompiles every host when a grant has expired since the last compile.
    pub fn refresh_if_due(&self) -> Result<(), Error> {
        let due = {
            let g = self.lock();
            g.broken.is_none() && g.next_expiry.is_some_and(|e| e <= now_unix())
        };
        if due { self.refresh() } else { Ok(()) }
    }

    /// Recompiles every host with the current policy (views depend on the time through
    /// grant expiry); changed hosts get a new generation and their agents the delta.
    pub fn refresh(&self) -> Result<(), Error> {
        self.retrying(|| {
            let now = now_unix();
            let mut g = self.lock_writing()?;
            if g.broken.is_some() {
                // Recompiling an empty stand-in would take every host's policy away.
                return Ok(());
            }
            let policy = g.policy.clone();
            let plans = self.plan_hosts(&g, &policy, now);
            if !plans.is_empty() {
                let rev = g.revision;
                self.commit(&mut g, None, rev, &plans, &[])?;
                info!(
                    revision = rev,
                    hosts_changed = plans.len(),
                    "views recompiled (the time changed them: an expiry)"
                );
            }
            g.next_expiry = next_expiry(&policy, now);
            Ok(())
        })
    }

    /// Validates `new`, plans, and (unless a dry run) commits and fans out; `applied`:
    /// the text of an applied file, stored with the change.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        g: &mut Inner,
        new: Objects,
        edit: Edit<'_>,
        opts: &ChangeOpts,
        audit: (&str, String, String, String),
        now: i64,
        applied: Option<&str>,
    ) -> Result<Plan, Error> {
        let (span, deleted) = match edit {
            Edit::Whole => (None, None),
            Edit::Object(s) => (Some(s), None),
            Edit::Delete(o) => (None, Some(o)),
        };
        let action = audit.0;
        if !action.starts_with("apply_policy") {
            Self::refuse_if_broken(g)?;
        }
        if let Some(exp) = opts.expected_revision
            && exp != g.revision
        {
            return Err(Error::FailedPrecondition(format!(
                "the policy is at revision {}, not the expected revision {exp}: reload it and retry",
                g.revision
            )));
        }
        // What is validated is what is stored: the objects' canonical text. When an
        // object's own text was given, errors are located in that text instead.
        // Errors of an object-level change are located in objects, not in the rendered
        // text (a file the admin does not have).
        let parsed = parse_policy(&new.render(), locate::RENDERED, now).map_err(|canonical| {
            if action.starts_with("apply_policy") {
                return Error::InvalidArgument(diag_text(&canonical));
            }
            let Some(s) = &span else {
                return locate::in_objects(&new, None, canonical, deleted);
            };
            let (text, start) = new.render_with(Some((s.index, &s.text)));
            let lines = s.text.lines().count().max(1) as u32 + s.shift;
            match parse_policy(&text, locate::RENDERED, now) {
                Ok(_) => locate::in_objects(&new, None, canonical, deleted),
                Err(diags) => {
                    let diags = diags
                        .into_iter()
                        .map(|mut d| {
                            if d.line >= start && d.line < start + lines {
                                d.file = s.file.clone();
                                d.line = (d.line - start + 1).saturating_sub(s.shift).max(1);
                            }
                            d
                        })
                        .collect();
                    locate::in_objects(&new, Some((s.index, &s.text)), diags, deleted)
                }
            }
        });
        let parsed = parsed?;
        let policy = parsed.policy;
        Self::refuse_taken_keys(g, &policy)?;
        // An object-level change may not break a `[[test]]` block that passes today (the
        // whole-policy apply checks every test itself, above).
        let broken_tests = if action.starts_with("apply_policy") {
            Vec::new()
        } else {
            Self::newly_failing_tests(&g.policy, &policy)
        };
        if !broken_tests.is_empty() && !opts.skip_tests {
            return Err(Error::InvalidArgument(format!(
                "{}\nhelp: this change makes {} of the policy's [[test]] blocks fail; nothing \
                 was changed: change the tests too (`gatewayctl update test NAME`), or make the \
                 change anyway with skip_tests (`--skip-tests`, recorded in the audit trail)",
                broken_tests.join("\n"),
                broken_tests.len(),
            )));
        }

        // Object changes.
        let old_by = g.objects.by_key();
        let new_by = new.by_key();
        let mut changes = Vec::new();
        for (k, o) in &new_by {
            match old_by.get(k) {
                None => changes.push((k.clone(), ChangeKind::Added, String::new(), o.toml.clone())),
                Some(p) if p.toml != o.toml => changes.push((
                    k.clone(),
                    ChangeKind::Changed,
                    p.toml.clone(),
                    o.toml.clone(),
                )),
                Some(_) => {}
            }
        }
        for (k, o) in &old_by {
            if !new_by.contains_key(k) {
                changes.push((
                    k.clone(),
                    ChangeKind::Removed,
                    o.toml.clone(),
                    String::new(),
                ));
            }
        }
        // Order matters too (grant order decides rule ids).
        let reordered = changes.is_empty() && g.objects != new;
        let new_revision = if changes.is_empty() && !reordered {
            g.revision
        } else {
            g.revision + 1
        };
        let plans = self.plan_hosts(g, &policy, now);
        let plan = Plan {
            base_revision: g.revision,
            new_revision,
            objects: changes
                .into_iter()
                .map(|((kind, name), change, before, after)| ObjectChange {
                    kind,
                    name,
                    change,
                    fields: if change == ChangeKind::Changed {
                        fields::field_changes(&before, &after)
                    } else {
                        Vec::new()
                    },
                    before,
                    after,
                })
                .collect(),
            hosts: plans.iter().map(|p| Self::host_change(g, p)).collect(),
            warnings: parsed
                .warnings
                .iter()
                .map(ToString::to_string)
                .chain(
                    broken_tests
                        .iter()
                        .map(|t| format!("{t} (skip_tests: made anyway)")),
                )
                .collect(),
        };
        if opts.dry_run {
            debug!(
                actor = %opts.actor,
                action = audit.0,
                target = %audit.1,
                "dry run planned"
            );
            return Ok(plan);
        }
        let (action, target, before, after) = audit;
        let logged_target = target.clone();
        let record = AuditEntry {
            time_ms: now_ms(),
            actor: opts.actor.clone(),
            // A change that broke passing tests on purpose says so, as an apply does.
            action: if broken_tests.is_empty() {
                action.to_string()
            } else {
                format!("{action}_skip_tests")
            },
            target,
            before,
            after,
            revision: new_revision,
        };
        let objects_changed = new_revision != g.revision;
        self.commit_with(
            g,
            objects_changed.then_some(&new),
            new_revision,
            &plans,
            &[record],
            None,
            applied,
        )?;
        g.objects = new;
        g.next_expiry = next_expiry(&policy, now);
        g.policy = Arc::new(policy);
        info!(
            actor = %opts.actor,
            action,
            target = %logged_target,
            revision = new_revision,
            objects_changed = plan.objects.len(),
            hosts_changed = plan.hosts.len(),
            "policy changed"
        );
        for h in &plan.hosts {
            debug!(
                host = %h.host,
                generation = h.new_generation,
                base = h.base_generation,
                entries_changed = h.total.added + h.total.changed + h.total.removed,
                agents = h.connected_agents,
                "host view changed"
            );
        }
        if g.broken.take().is_some() {
            info!("a valid policy was applied: changes are accepted again");
        }
        self.publish(g);
        Ok(plan)
    }

    /// Refuses a policy giving another host (or a service-account key) the WireGuard key
    /// an enrolled agent registered: two peers would share a key.
    fn refuse_taken_keys(g: &Inner, policy: &Policy) -> Result<(), Error> {
        let mut agents: Vec<&AgentRow> = g
            .agents
            .values()
            .filter(|a| a.revoked_ms.is_none())
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        for a in agents {
            let Ok(key) = a.public_key.parse::<pc::WgKey>() else {
                continue;
            };
            if let Some((owner, what)) = policy.key_owner(&key)
                && owner.is_none_or(|h| gp::host_name(&h) != a.host)
            {
                return Err(Error::InvalidArgument(format!(
                    "the public_key of {what} is the key agent {} of {} registered; every \
                     host needs its own WireGuard key",
                    a.id, a.host
                )));
            }
        }
        Ok(())
    }

    fn host_change(g: &Inner, p: &HostPlan) -> HostChange {
        let old = g.hosts.get(&p.host).map(|h| &*h.view);
        let empty;
        let old = match old {
            Some(v) => v,
            None => {
                empty = gp::empty_view(&p.view.host, p.view.compiled_at);
                &empty
            }
        };
        let d = pc::diff(old, &p.view);
        let (src, dst, rules, peers) = (
            EntryCounts::of(&d.src),
            EntryCounts::of(&d.dst),
            EntryCounts::of(&d.rules),
            EntryCounts::of(&d.peers),
        );
        HostChange {
            host: p.host.clone(),
            base_generation: p.base,
            new_generation: p.generation,
            src,
            dst,
            rules,
            total: EntryCounts::sum(&[src, dst, rules]),
            peers,
            metadata_changed: p.delta.metadata_changed(),
            connected_agents: g
                .watchers
                .get(&p.host)
                .map_or(0, |w| w.iter().filter(|w| !w.tx.is_closed()).count() as u32),
        }
    }

    /// Compiles every known host and every host of `policy`; returns those whose view
    /// changes.
    pub(super) fn plan_hosts(&self, g: &Inner, policy: &Policy, now: i64) -> Vec<HostPlan> {
        let mut names: BTreeSet<String> = g.hosts.keys().cloned().collect();
        names.extend(policy_hosts(policy));
        let keyed = with_agent_keys(policy, &g.agents);
        let policy = &*keyed;
        let mut out = Vec::new();
        for name in names {
            let Ok(host) = gp::parse_host(&name) else {
                continue;
            };
            let view = compile_or_empty(policy, &host, now);
            match g.hosts.get(&name) {
                Some(hs) => {
                    let delta = ViewDelta::between(&hs.view, &view);
                    if !delta.is_empty() {
                        out.push(HostPlan {
                            host: name,
                            base: hs.generation,
                            generation: hs.generation + 1,
                            view: Arc::new(view),
                            delta,
                        });
                    }
                }
                None => {
                    let delta = ViewDelta::between(&gp::empty_view(&host, now), &view);
                    let view = Arc::new(view);
                    out.push(HostPlan {
                        host: name,
                        base: 0,
                        generation: 1,
                        view,
                        delta,
                    });
                }
            }
        }
        out
    }

    /// Persists, updates memory, and sends each changed host's delta to its watchers.
    pub(super) fn commit(
        &self,
        g: &mut Inner,
        objects: Option<&Objects>,
        revision: u64,
        plans: &[HostPlan],
        audit: &[AuditEntry],
    ) -> Result<(), Error> {
        self.commit_with(g, objects, revision, plans, audit, None, None)
    }

    /// [`State::commit`], with a change of the agents and the text of an applied file
    /// in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_with(
        &self,
        g: &mut Inner,
        objects: Option<&Objects>,
        revision: u64,
        plans: &[HostPlan],
        audit: &[AuditEntry],
        agent: Option<&AgentChange<'_>>,
        applied: Option<&str>,
    ) -> Result<(), Error> {
        let updates: Vec<HostUpdate<'_>> = plans
            .iter()
            .map(|p| HostUpdate {
                host: &p.host,
                generation: p.generation,
                base: p.base,
                view: &p.view,
                delta: &p.delta,
            })
            .collect();
        let base = g.revision;
        // The text GetPolicy gives at the new revision, kept for diffs between revisions.
        let revision_text = objects.map(|o| {
            let snap = self.snap();
            export::text(o, applied.or(snap.applied.as_deref().map(String::as_str)))
        });
        g.store.commit(
            objects,
            base,
            revision,
            &updates,
            audit,
            agent,
            applied,
            revision_text.as_deref(),
        )?;
        g.exported = revision_text.map(|t| (revision, t));
        g.revision = revision;
        for p in plans {
            let hs = g.hosts.entry(p.host.clone()).or_insert_with(|| {
                HostState::new(
                    0,
                    Arc::new(gp::empty_view(&p.view.host, p.view.compiled_at)),
                )
            });
            hs.set_view(p.generation, p.view.clone());
            if p.base != 0 {
                hs.deltas.push_back((p.generation, p.base, p.delta.clone()));
                while hs.deltas.len() > DELTA_HISTORY as usize {
                    hs.deltas.pop_front();
                }
            }
            Self::fan_out(g, p);
        }
        Ok(())
    }
}
