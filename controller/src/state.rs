//! The controller's state and every operation on it: policy changes (validate, compile
//! every host, diff, commit, fan out), agents (enroll, watch, ack), events, audit.
//!
//! One mutex guards the in-memory state and the store, so a change is validated,
//! committed and fanned out as one step, and a `Watch` registers at a well-defined
//! generation (no update can slip between its catch-up and its registration).
//!
//! Reads of the policy (GetPolicy, GetObject, ListObjects) take a snapshot swapped in
//! after each commit and never wait for a change in progress. Connection events have
//! their own database connection ([`EventStore`]): ingestion and queries never take the
//! state's lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use gateway_proto::{self as gp, v1};
use policy_compiler::{self as pc, Host, HostView, Policy};
use tokio::sync::{broadcast, mpsc};

use crate::keys::Keys;
use crate::objects::{self, Kind, Object, Objects};
use crate::store::{AgentRow, Audit, DELTA_HISTORY, EventStore, HostUpdate, Store};
use crate::{Error, hash_secret, now_ms, now_unix, shown, try_random_hex};

mod events;
pub mod limits;
mod security;
pub use security::{
    DEFAULT_KEY_TTL_SECS, DEFAULT_SESSION_TTL_SECS, LOGIN_WINDOW_MS, LoginLimits,
    MAX_LOGIN_FAILURES, MIN_PASSWORD_LEN,
};

/// Updates buffered per watching agent; an agent that falls this far behind is
/// disconnected and resumes from its generation when it reconnects.
pub const WATCH_BUFFER: usize = 256;

/// Kinds of refusal followed at once for aggregation (see [`limits::Refusals`]).
const REFUSAL_KINDS: usize = 1024;
/// The aggregation window of refusals in the audit trail.
pub const REFUSAL_WINDOW_MS: i64 = 60_000;
/// Refusals recorded at once per window; beyond, they are only counted.
const REFUSALS_IMMEDIATE: f64 = 60.0;

/// Who does a change, and how.
#[derive(Clone, Debug)]
pub struct ChangeOpts {
    pub dry_run: bool,
    pub expected_revision: Option<u64>,
    /// Who: `key:NAME`, `user:NAME` (the authenticated principal), `local:...`.
    pub actor: String,
}

impl Default for ChangeOpts {
    fn default() -> Self {
        ChangeOpts {
            dry_run: false,
            expected_revision: None,
            actor: "local".into(),
        }
    }
}

struct HostState {
    generation: u64,
    view: HostView,
    /// (generation, base, delta), oldest first, at most `DELTA_HISTORY`.
    deltas: VecDeque<(u64, u64, Arc<v1::ViewDelta>)>,
    /// The names of the last few views, newest last (for checking reported events).
    names: VecDeque<Arc<events::NameSet>>,
}

impl HostState {
    fn new(generation: u64, view: HostView) -> HostState {
        let mut names = VecDeque::new();
        names.push_back(Arc::new(events::NameSet::of(&view)));
        HostState {
            generation,
            view,
            deltas: VecDeque::new(),
            names,
        }
    }

    fn set_view(&mut self, generation: u64, view: HostView) {
        self.names.push_back(Arc::new(events::NameSet::of(&view)));
        while self.names.len() > events::VIEWS_KEPT {
            self.names.pop_front();
        }
        self.generation = generation;
        self.view = view;
    }
}

/// What policy reads need, swapped in after every commit.
#[derive(Debug, Default)]
struct Snapshot {
    objects: Objects,
    text: String,
    revision: u64,
    /// Why the stored policy does not load, when it does not.
    broken: Option<String>,
}

/// How to open the state.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connection events older than this are deleted.
    pub retention_days: u32,
    /// The key file ([`crate::keys`]); default: `controller.key` next to the database.
    /// Created when missing, unless the database was keyed already.
    pub key_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retention_days: 30,
            key_file: None,
        }
    }
}

struct Watcher {
    agent_id: String,
    tx: mpsc::Sender<v1::WatchResponse>,
    generation: u64,
}

struct Inner {
    store: Store,
    objects: Objects,
    revision: u64,
    policy: Policy,
    /// Why the stored policy did not load, when it did not: the controller serves what
    /// it has (the stored views, reads) and refuses changes other than a whole new
    /// policy (ApplyPolicy), which repairs it.
    broken: Option<String>,
    hosts: BTreeMap<String, HostState>,
    agents: HashMap<String, AgentRow>,
    watchers: HashMap<String, Vec<Watcher>>,
    /// The next instant (unix seconds) a grant expires: views change then.
    next_expiry: Option<i64>,
}

/// The controller state (see the module docs).
pub struct State {
    inner: Mutex<Inner>,
    snapshot: RwLock<Arc<Snapshot>>,
    events: broadcast::Sender<v1::StoredEvent>,
    event_store: Mutex<EventStore>,
    retention_days: u32,
    /// Set at shutdown: ends follower streams.
    closing: tokio::sync::watch::Sender<bool>,
    /// Admin credentials (locked after `inner` when both are needed).
    creds: Mutex<security::Creds>,
    session_ttl_ms: std::sync::atomic::AtomicI64,
    keys: Arc<Keys>,
    /// Rate limits, concurrency bounds, quotas (see `security`).
    guard: security::Guard,
    /// Repeated refusals, aggregated before they reach the audit trail.
    refusals: Mutex<limits::Refusals>,
    /// Refusal records not written yet: written by the server's one-second tick (and
    /// before any read of the audit trail), never on the path of the refused call.
    pending_refusals: Mutex<Vec<limits::Record>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

/// A planned (or committed) host change.
struct HostPlan {
    host: String,
    base: u64,
    generation: u64,
    view: HostView,
    delta: v1::ViewDelta,
}

/// The next instant a grant or a service-account key expires: hosts are recompiled then.
fn next_expiry(p: &Policy, now: i64) -> Option<i64> {
    p.grants
        .iter()
        .filter_map(|g| g.expires_at)
        .chain(p.principals.iter().filter_map(|k| k.expires_at))
        .filter(|&e| e > now)
        .min()
}

fn policy_hosts(p: &Policy) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in &p.networks {
        for c in &n.connectors {
            out.insert(gp::host_name(&Host::Connector(c.clone())));
        }
    }
    for d in &p.devices {
        out.insert(gp::host_name(&Host::Device(d.name.clone())));
    }
    out
}

fn compile_or_empty(p: &Policy, host: &Host, now: i64) -> HostView {
    pc::compile(p, host, now).unwrap_or_else(|_| gp::empty_view(host, now))
}

fn parse_policy(text: &str, file: &str, now: i64) -> Result<pc::Parsed, Vec<pc::Diagnostic>> {
    pc::parse(text, file, now)
}

fn diag_text(d: &[pc::Diagnostic]) -> String {
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

impl State {
    /// Opens the store (keys next to the database, see [`Options`]) and loads the
    /// state it holds.
    pub fn open(db: &Path, retention_days: u32) -> Result<State, Error> {
        State::open_with(
            db,
            &Options {
                retention_days,
                ..Options::default()
            },
        )
    }

    /// The keys of `db`: read from the key file, or a new key file when the database
    /// has not been keyed yet. A keyed database whose key file is missing is refused.
    pub fn keys_for(db: &Path, key_file: &Path) -> Result<Keys, Error> {
        if key_file.exists() {
            return Keys::load(key_file);
        }
        if let Some(fp) = crate::store::key_fingerprint(db)? {
            return Err(Error::Internal(format!(
                "the key file {} is missing, and {} was keyed (key fingerprint {fp}): \
                 without its key the audit trail cannot be verified nor TOTP codes checked; \
                 restore the key file or give it with --key-file",
                key_file.display(),
                db.display()
            )));
        }
        Keys::create(key_file)
    }

    /// Opens the store and loads the state it holds. A stored policy that does not load
    /// does not stop the controller: it starts with the stored views, serves reads and
    /// agents, and refuses changes (saying why) until a valid policy is applied.
    pub fn open_with(db: &Path, opts: &Options) -> Result<State, Error> {
        let key_file = opts
            .key_file
            .clone()
            .unwrap_or_else(|| crate::keys::default_key_file(db));
        let keys = Arc::new(State::keys_for(db, &key_file)?);
        let store = Store::open(db, keys.clone())?;
        let event_store = EventStore::open(db)?;
        let loaded = store.load()?;
        let now = now_unix();
        let (policy, broken) = if loaded.objects.list.is_empty() {
            (Policy::default(), None)
        } else {
            match parse_policy(&loaded.objects.render(), "policy.toml", now) {
                Ok(p) => (p.policy, None),
                Err(d) => {
                    let why = format!(
                        "the stored policy (revision {}) does not load: {}",
                        loaded.revision,
                        diag_text(&d)
                    );
                    eprintln!(
                        "gateway-controller: WARNING: {why}; serving the last compiled views \
                         and reads only; changes are refused until a valid policy is applied \
                         (gatewayctl apply)"
                    );
                    (Policy::default(), Some(why))
                }
            }
        };
        let mut hosts = BTreeMap::new();
        for h in loaded.hosts {
            let view = gp::view_from_wire(&h.view)
                .map_err(|e| Error::Internal(format!("stored view of {}: {e}", h.host)))?;
            hosts.insert(h.host, HostState::new(h.generation, view));
        }
        for (host, g, b, d) in loaded.deltas {
            if let Some(hs) = hosts.get_mut(&host) {
                hs.deltas.push_back((g, b, Arc::new(d)));
            }
        }
        let agents = loaded
            .agents
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        let creds = security::Creds::new(loaded.api_keys, loaded.users);
        let (events, _) = broadcast::channel(4096);
        let snapshot = Snapshot {
            text: loaded.objects.render(),
            objects: loaded.objects.clone(),
            revision: loaded.revision,
            broken: broken.clone(),
        };
        let state = State {
            inner: Mutex::new(Inner {
                store,
                next_expiry: if broken.is_some() {
                    None
                } else {
                    next_expiry(&policy, now)
                },
                objects: loaded.objects,
                revision: loaded.revision,
                policy,
                broken,
                hosts,
                agents,
                watchers: HashMap::new(),
            }),
            snapshot: RwLock::new(Arc::new(snapshot)),
            events,
            event_store: Mutex::new(event_store),
            retention_days: opts.retention_days,
            closing: tokio::sync::watch::channel(false).0,
            creds: Mutex::new(creds),
            session_ttl_ms: std::sync::atomic::AtomicI64::new(
                DEFAULT_SESSION_TTL_SECS as i64 * 1000,
            ),
            keys,
            guard: security::Guard::new(LoginLimits::default()),
            refusals: Mutex::new(limits::Refusals::new(
                REFUSAL_KINDS,
                REFUSAL_WINDOW_MS,
                REFUSALS_IMMEDIATE,
            )),
            pending_refusals: Mutex::new(Vec::new()),
        };
        // Views may have changed while the controller was down (expired grants).
        state.refresh()?;
        state.prune_events()?;
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snap(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes what reads see (after a commit of objects).
    fn publish(&self, g: &Inner) {
        let snap = Arc::new(Snapshot {
            objects: g.objects.clone(),
            text: g.objects.render(),
            revision: g.revision,
            broken: g.broken.clone(),
        });
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

    fn refuse_broken(broken: &Option<String>) -> Result<(), Error> {
        match broken {
            Some(why) => Err(Error::FailedPrecondition(format!(
                "{why}. Changes are refused until a valid policy is applied as a whole \
                 (ApplyPolicy, `gatewayctl apply`)"
            ))),
            None => Ok(()),
        }
    }

    // -------------------------------------------------------------- policy

    /// The policy text and revision.
    pub fn policy(&self) -> (String, u64) {
        let s = self.snap();
        (s.text.clone(), s.revision)
    }

    pub fn revision(&self) -> u64 {
        self.snap().revision
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
    pub fn apply_policy(
        &self,
        text: &str,
        file: &str,
        opts: &ChangeOpts,
    ) -> Result<v1::Plan, Error> {
        let file = if file.is_empty() { "policy.toml" } else { file };
        let now = now_unix();
        // Located against the caller's own text.
        parse_policy(text, file, now).map_err(|d| Error::InvalidArgument(diag_text(&d)))?;
        let new = objects::split(text, file)?;
        let mut g = self.lock();
        let before = g.objects.render();
        let after = new.render();
        let audit = ("apply_policy", "policy".to_string(), before, after);
        self.change(&mut g, new, None, opts, audit, now)
    }

    /// Adds an object.
    pub fn create_object(
        &self,
        kind: Kind,
        text: &str,
        opts: &ChangeOpts,
    ) -> Result<v1::Plan, Error> {
        let now = now_unix();
        let mut g = self.lock();
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
            Some(span),
            opts,
            ("create_object", target, String::new(), after),
            now,
        )
    }

    /// Replaces an object's table (same kind and name).
    pub fn update_object(
        &self,
        kind: Kind,
        name: &str,
        text: &str,
        opts: &ChangeOpts,
    ) -> Result<v1::Plan, Error> {
        let now = now_unix();
        let mut g = self.lock();
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
            Some(span),
            opts,
            ("update_object", target, before, after),
            now,
        )
    }

    /// Removes an object.
    pub fn delete_object(
        &self,
        kind: Kind,
        name: &str,
        opts: &ChangeOpts,
    ) -> Result<v1::Plan, Error> {
        let now = now_unix();
        let mut g = self.lock();
        let Some(index) = g.objects.position(kind, name) else {
            return Err(Error::NotFound(format!(
                "no {kind} named `{}`",
                shown(name)
            )));
        };
        let mut new = g.objects.clone();
        let removed = new.list.remove(index);
        let target = format!("{kind}:{name}");
        self.change(
            &mut g,
            new,
            None,
            opts,
            ("delete_object", target, removed.toml, String::new()),
            now,
        )
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
        let now = now_unix();
        let mut g = self.lock();
        if g.broken.is_some() {
            // Recompiling an empty stand-in would take every host's policy away.
            return Ok(());
        }
        let policy = g.policy.clone();
        let plans = self.plan_hosts(&g, &policy, now);
        if !plans.is_empty() {
            let rev = g.revision;
            self.commit(&mut g, None, rev, &plans, &[])?;
        }
        g.next_expiry = next_expiry(&policy, now);
        Ok(())
    }

    /// Validates `new`, plans, and (unless a dry run) commits and fans out.
    fn change(
        &self,
        g: &mut Inner,
        new: Objects,
        span: Option<ObjectSpan>,
        opts: &ChangeOpts,
        audit: (&str, String, String, String),
        now: i64,
    ) -> Result<v1::Plan, Error> {
        if audit.0 != "apply_policy" {
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
        let parsed = parse_policy(&new.render(), "policy.toml", now).map_err(|canonical| {
            let Some(s) = &span else {
                return canonical;
            };
            let (text, start) = new.render_with(Some((s.index, &s.text)));
            let lines = s.text.lines().count().max(1) as u32 + s.shift;
            match parse_policy(&text, "policy.toml", now) {
                Ok(_) => canonical,
                Err(diags) => diags
                    .into_iter()
                    .map(|mut d| {
                        if d.line >= start && d.line < start + lines {
                            d.file = s.file.clone();
                            d.line = (d.line - start + 1).saturating_sub(s.shift).max(1);
                        }
                        d
                    })
                    .collect(),
            }
        });
        let parsed = parsed.map_err(|d| Error::InvalidArgument(diag_text(&d)))?;
        let policy = parsed.policy;

        // Object changes.
        let old_by = g.objects.by_key();
        let new_by = new.by_key();
        let mut changes = Vec::new();
        for (k, o) in &new_by {
            match old_by.get(k) {
                None => changes.push((
                    k.clone(),
                    v1::ChangeKind::Added,
                    String::new(),
                    o.toml.clone(),
                )),
                Some(p) if p.toml != o.toml => changes.push((
                    k.clone(),
                    v1::ChangeKind::Changed,
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
                    v1::ChangeKind::Removed,
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
        let plan = v1::Plan {
            base_revision: g.revision,
            new_revision,
            objects: changes
                .iter()
                .map(|((kind, name), c, before, after)| v1::ObjectChange {
                    kind: kind.to_wire(),
                    name: name.clone(),
                    change: *c as i32,
                    before: before.clone(),
                    after: after.clone(),
                })
                .collect(),
            hosts: plans.iter().map(|p| Self::host_change(g, p)).collect(),
            warnings: parsed.warnings.iter().map(ToString::to_string).collect(),
        };
        if opts.dry_run {
            return Ok(plan);
        }
        let (action, target, before, after) = audit;
        let record = Audit {
            time_ms: now_ms(),
            actor: opts.actor.clone(),
            action: action.to_string(),
            target,
            before,
            after,
            revision: new_revision,
        };
        let objects_changed = new_revision != g.revision;
        self.commit(
            g,
            objects_changed.then_some(&new),
            new_revision,
            &plans,
            &[record],
        )?;
        g.objects = new;
        g.next_expiry = next_expiry(&policy, now);
        g.policy = policy;
        if g.broken.take().is_some() {
            eprintln!("gateway-controller: a valid policy was applied; changes are accepted again");
        }
        self.publish(g);
        Ok(plan)
    }

    fn host_change(g: &Inner, p: &HostPlan) -> v1::HostChange {
        let old = g.hosts.get(&p.host).map(|h| &h.view);
        let empty;
        let old = match old {
            Some(v) => v,
            None => {
                empty = gp::empty_view(&p.view.host, p.view.compiled_at);
                &empty
            }
        };
        let d = pc::diff(old, &p.view);
        let (src, dst, rules) = (gp::counts(&d.src), gp::counts(&d.dst), gp::counts(&d.rules));
        let total = v1::EntryCounts {
            added: src.added + dst.added + rules.added,
            changed: src.changed + dst.changed + rules.changed,
            removed: src.removed + dst.removed + rules.removed,
        };
        v1::HostChange {
            host: p.host.clone(),
            base_generation: p.base,
            new_generation: p.generation,
            src: Some(src),
            dst: Some(dst),
            rules: Some(rules),
            total: Some(total),
            metadata_changed: p.delta.meta.is_some(),
            connected_agents: g
                .watchers
                .get(&p.host)
                .map_or(0, |w| w.iter().filter(|w| !w.tx.is_closed()).count() as u32),
        }
    }

    /// Compiles every known host and every host of `policy`; returns those whose view
    /// changes.
    fn plan_hosts(&self, g: &Inner, policy: &Policy, now: i64) -> Vec<HostPlan> {
        let mut names: BTreeSet<String> = g.hosts.keys().cloned().collect();
        names.extend(policy_hosts(policy));
        let mut out = Vec::new();
        for name in names {
            let Ok(host) = gp::parse_host(&name) else {
                continue;
            };
            let view = compile_or_empty(policy, &host, now);
            match g.hosts.get(&name) {
                Some(hs) => {
                    let delta = gp::delta_to_wire(&hs.view, &view);
                    if !gp::delta_is_empty(&delta) {
                        out.push(HostPlan {
                            host: name,
                            base: hs.generation,
                            generation: hs.generation + 1,
                            view,
                            delta,
                        });
                    }
                }
                None => {
                    let delta = gp::delta_to_wire(&gp::empty_view(&host, now), &view);
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
    fn commit(
        &self,
        g: &mut Inner,
        objects: Option<&Objects>,
        revision: u64,
        plans: &[HostPlan],
        audit: &[Audit],
    ) -> Result<(), Error> {
        let wire_views: Vec<v1::HostView> =
            plans.iter().map(|p| gp::view_to_wire(&p.view)).collect();
        let updates: Vec<HostUpdate<'_>> = plans
            .iter()
            .zip(&wire_views)
            .map(|(p, v)| HostUpdate {
                host: &p.host,
                generation: p.generation,
                base: p.base,
                view: v,
                delta: &p.delta,
            })
            .collect();
        g.store.commit(objects, revision, &updates, audit)?;
        g.revision = revision;
        for p in plans {
            let delta = Arc::new(p.delta.clone());
            let hs = g.hosts.entry(p.host.clone()).or_insert_with(|| {
                HostState::new(0, gp::empty_view(&p.view.host, p.view.compiled_at))
            });
            hs.set_view(p.generation, p.view.clone());
            if p.base != 0 {
                hs.deltas.push_back((p.generation, p.base, delta.clone()));
                while hs.deltas.len() > DELTA_HISTORY as usize {
                    hs.deltas.pop_front();
                }
            }
            // Fan-out: only the watchers of this host.
            if let Some(ws) = g.watchers.get_mut(&p.host) {
                let msg = v1::WatchResponse {
                    generation: p.generation,
                    base_generation: p.base,
                    update: Some(if p.base == 0 {
                        v1::watch_response::Update::Snapshot(gp::view_to_wire(&p.view))
                    } else {
                        v1::watch_response::Update::Delta((*delta).clone())
                    }),
                };
                ws.retain_mut(|w| {
                    if w.generation != p.base && p.base != 0 {
                        return false;
                    }
                    match w.tx.try_send(msg.clone()) {
                        Ok(()) => {
                            w.generation = p.generation;
                            true
                        }
                        // Full or closed: disconnect; the agent resumes from its generation.
                        Err(_) => false,
                    }
                });
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------- explain / test

    /// Parses the current policy with extra `[[test]]` blocks appended.
    fn with_tests(
        &self,
        blocks: &[(String, String, String, String, Option<i64>)],
        now: i64,
    ) -> Result<Policy, Error> {
        for (name, from, to, expect, _) in blocks {
            for (what, v) in [
                ("name", name),
                ("from", from),
                ("to", to),
                ("expect", expect),
            ] {
                if let Some(why) = crate::names::problem(v, 256) {
                    return Err(Error::InvalidArgument(format!(
                        "invalid `{what}` `{}`: {why}",
                        shown(v)
                    )));
                }
            }
        }
        // The published snapshot: an Explain never waits for a change in progress.
        let mut text = {
            let snap = self.snap();
            Self::refuse_broken(&snap.broken)?;
            snap.text.clone()
        };
        for (name, from, to, expect, at) in blocks {
            let q = |s: &str| toml::Value::String(s.to_string()).to_string();
            text.push_str(&format!(
                "\n[[test]]\nname = {}\nfrom = {}\nto = {}\nexpect = {}\n",
                q(name),
                q(from),
                q(to),
                q(expect)
            ));
            if let Some(at) = at {
                text.push_str(&format!("at = {}\n", pc::format_rfc3339(*at)));
            }
        }
        parse_policy(&text, "request", now)
            .map(|p| p.policy)
            .map_err(|d| {
                Error::InvalidArgument(
                    d.iter()
                        .filter(|d| d.is_error())
                        .map(|d| match &d.help {
                            Some(h) => format!("{} ({h})", d.message),
                            None => d.message.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })
    }

    /// Decides one packet (`from`/`to` in the `[[test]]` syntax) at `at` (default now).
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        at: Option<i64>,
    ) -> Result<v1::ExplainResponse, Error> {
        let now = now_unix();
        let at = at.unwrap_or(now);
        let p = self.with_tests(
            &[(
                "__explain__".into(),
                from.into(),
                to.into(),
                "allow".into(),
                Some(at),
            )],
            now,
        )?;
        let t = p
            .tests
            .last()
            .ok_or_else(|| Error::Internal("explain: no test block".into()))?;
        let pkt = pc::Packet {
            src: t.src,
            dst: t.dst,
            proto: t.proto,
            src_port: 40000,
            dst_port: t.dst_port,
        };
        let e = pc::explain(&p, &pkt, at);
        let d = e.decision;
        Ok(v1::ExplainResponse {
            verdict: gp::verdict_to_wire(d.verdict),
            reason: snake(&format!("{:?}", d.reason)),
            rule_id: d.rule_id(),
            rule: d
                .rule
                .and_then(|r| p.rule(r.0))
                .map_or_else(|| "default deny".into(), ToString::to_string),
            principal: e.principal.clone(),
            resources: e.resources.clone(),
            considered: e
                .considered
                .iter()
                .map(|c| {
                    let (outcome, detail) = match &c.outcome {
                        pc::eval::Outcome::Matched => ("matched", String::new()),
                        pc::eval::Outcome::Expired { expires_at } => {
                            ("expired", pc::format_rfc3339(*expires_at))
                        }
                        pc::eval::Outcome::AddressMismatch => ("address_mismatch", String::new()),
                        pc::eval::Outcome::PortMismatch { allowed } => {
                            ("port_mismatch", allowed.clone())
                        }
                        pc::eval::Outcome::NotForPrincipal => ("not_for_principal", String::new()),
                    };
                    v1::Consideration {
                        rule: c.rule,
                        grant: c.grant.clone(),
                        action: c.action.to_string(),
                        resource: c.resource.clone(),
                        outcome: outcome.into(),
                        detail,
                    }
                })
                .collect(),
            text: e.render(&p),
            at,
        })
    }

    /// Runs assertions (and optionally the policy's own tests).
    pub fn test_access(
        &self,
        assertions: &[v1::Assertion],
        include_policy_tests: bool,
    ) -> Result<v1::TestAccessResponse, Error> {
        let now = now_unix();
        let own = self
            .snap()
            .objects
            .list
            .iter()
            .filter(|o| o.kind == Kind::Test)
            .count();
        let blocks: Vec<_> = assertions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = if a.name.is_empty() {
                    format!("assertion-{}", i + 1)
                } else {
                    a.name.clone()
                };
                (name, a.from.clone(), a.to.clone(), a.expect.clone(), a.at)
            })
            .collect();
        let p = self.with_tests(&blocks, now)?;
        let results: Vec<v1::TestResult> = pc::run_tests(&p)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| include_policy_tests || *i >= own)
            .map(|(_, r)| v1::TestResult {
                name: r.name.clone(),
                passed: r.passed,
                expected: gp::verdict_to_wire(r.expected),
                got: gp::verdict_to_wire(r.decision.verdict),
                reason: snake(&format!("{:?}", r.decision.reason)),
                rule_id: r.decision.rule_id(),
                message: r.render(&p),
            })
            .collect();
        let passed = results.iter().filter(|r| r.passed).count() as u32;
        Ok(v1::TestAccessResponse {
            failed: results.len() as u32 - passed,
            passed,
            results,
        })
    }

    // -------------------------------------------------------------- agents

    /// A one-time enrollment token for `host` (`connector:NAME` / `device:NAME`).
    pub fn create_token(
        &self,
        host: &str,
        ttl_seconds: u64,
        actor: &str,
    ) -> Result<v1::CreateEnrollmentTokenResponse, Error> {
        let h = crate::names::host(host)?;
        let token = format!("zt-enroll-{}", try_random_hex(24)?);
        let now = now_ms();
        let ttl = if ttl_seconds == 0 {
            3600
        } else {
            ttl_seconds.min(365 * 86400)
        };
        let expires = now + ttl as i64 * 1000;
        let mut g = self.lock();
        let audit = Audit {
            time_ms: now,
            actor: actor.to_string(),
            action: "create_enrollment_token".into(),
            target: host.to_string(),
            before: String::new(),
            after: format!("expires {}", pc::format_rfc3339(expires / 1000)),
            revision: g.revision,
        };
        g.store
            .insert_token(&hash_secret(&token), host, now, expires, &audit)?;
        // A host the policy does not name yet starts with an empty view.
        if !g.hosts.contains_key(host) {
            let view = gp::empty_view(&h, now / 1000);
            let plan = HostPlan {
                host: host.to_string(),
                base: 0,
                generation: 1,
                delta: gp::delta_to_wire(&view, &view),
                view,
            };
            let rev = g.revision;
            self.commit(&mut g, None, rev, &[plan], &[])?;
        }
        Ok(v1::CreateEnrollmentTokenResponse {
            token,
            host: host.to_string(),
            expires_unix_ms: expires,
        })
    }

    /// Exchanges a token for an agent identity. With `expected_host` (the host the
    /// agent is configured as), a token for another host is refused and stays unused.
    pub fn enroll(
        &self,
        token: &str,
        hostname: &str,
        expected_host: Option<&str>,
        peer: Option<std::net::IpAddr>,
    ) -> Result<v1::EnrollResponse, Error> {
        if let Some(why) = crate::names::problem(hostname, 255).filter(|_| !hostname.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "invalid `hostname` `{}`: {why}",
                shown(hostname)
            )));
        }
        if let Some(h) = expected_host {
            crate::names::host(h)?;
        }
        let refused = |detail: &str| {
            self.refused(
                "enroll_refused",
                peer.map_or_else(|| "peer:unknown".into(), |p| format!("peer:{p}")),
                "agent".into(),
                detail.into(),
            );
        };
        if token.len() > 128 {
            refused("malformed token");
            return Err(Error::Unauthenticated(
                "enrollment token unknown, used or expired".into(),
            ));
        }
        let now = now_ms();
        let credential = format!("zt-agent-{}", try_random_hex(32)?);
        let id = format!("agent-{}", try_random_hex(8)?);
        let mut g = self.lock();
        let rev = g.revision;
        let outcome = g.store.enroll(
            &hash_secret(token),
            now,
            expected_host,
            |host| AgentRow {
                id: id.clone(),
                host: host.to_string(),
                hostname: hostname.to_string(),
                credential_hash: hash_secret(&credential),
                enrolled_ms: now,
                acked_generation: 0,
                last_seen_ms: now,
                revoked_ms: None,
            },
            |a| Audit {
                time_ms: now,
                actor: format!("agent:{}", a.id),
                action: "enroll_agent".into(),
                target: a.host.clone(),
                before: String::new(),
                after: format!("agent {} ({})", a.id, a.hostname),
                revision: rev,
            },
        )?;
        let row = match outcome {
            crate::store::Enrolled::Agent(row) => row,
            crate::store::Enrolled::Unknown => {
                drop(g);
                refused("unknown, used or expired token");
                return Err(Error::Unauthenticated(
                    "enrollment token unknown, used or expired".into(),
                ));
            }
            crate::store::Enrolled::OtherHost => {
                drop(g);
                refused("token for another host");
                return Err(Error::FailedPrecondition(format!(
                    "this token enrolls another host than {}; it was not used",
                    expected_host.map(shown).unwrap_or_default()
                )));
            }
        };
        let host = gp::parse_host(&row.host).map_err(|e| Error::Internal(e.to_string()))?;
        g.agents.insert(row.id.clone(), row);
        Ok(v1::EnrollResponse {
            agent_id: id,
            host: Some(gp::host_to_wire(&host)),
            credential,
        })
    }

    fn authenticate<'g>(
        g: &'g mut Inner,
        auth: Option<&v1::AgentAuth>,
    ) -> Result<&'g mut AgentRow, Error> {
        let auth =
            auth.ok_or_else(|| Error::Unauthenticated("missing agent credentials".into()))?;
        match g.agents.get_mut(&auth.agent_id) {
            Some(a) if a.credential_hash == hash_secret(&auth.credential) => {
                if a.revoked_ms.is_some() {
                    Err(Error::Unauthenticated(format!(
                        "agent {} was revoked",
                        auth.agent_id
                    )))
                } else {
                    Ok(a)
                }
            }
            _ => Err(Error::Unauthenticated(
                "unknown agent or wrong credential".into(),
            )),
        }
    }

    /// Records a refused agent credential (aggregated) and passes the error on.
    fn agent_refused(&self, auth: Option<&v1::AgentAuth>, e: Error) -> Error {
        let who = auth.map_or_else(
            || "agent:(none)".to_string(),
            |a| format!("agent:{}", shown(&a.agent_id)),
        );
        self.refused("agent_auth_failure", who, "agent".into(), e.to_string());
        e
    }

    /// Checks an agent's credentials; returns its id and host.
    pub fn check_agent(&self, auth: Option<&v1::AgentAuth>) -> Result<(String, String), Error> {
        let mut g = self.lock();
        let r = match Self::authenticate(&mut g, auth) {
            Ok(a) => {
                a.last_seen_ms = now_ms();
                Ok((a.id.clone(), a.host.clone()))
            }
            Err(e) => Err(e),
        };
        drop(g);
        r.map_err(|e| self.agent_refused(auth, e))
    }

    /// Checks that an already authenticated agent is still enrolled and not revoked.
    pub fn check_agent_id(&self, id: &str) -> Result<(), Error> {
        match self.lock().agents.get(id) {
            Some(a) if a.revoked_ms.is_none() => Ok(()),
            _ => Err(Error::Unauthenticated(format!("agent {id} was revoked"))),
        }
    }

    /// Starts watching: the catch-up (snapshot or missed deltas) is queued first, then
    /// every change of the agent's host.
    pub fn watch(
        &self,
        auth: Option<&v1::AgentAuth>,
        have: u64,
    ) -> Result<mpsc::Receiver<v1::WatchResponse>, Error> {
        let mut g = self.lock();
        let now = now_ms();
        let (agent_id, host) = match Self::authenticate(&mut g, auth) {
            Ok(agent) => {
                agent.last_seen_ms = now;
                (agent.id.clone(), agent.host.clone())
            }
            Err(e) => {
                drop(g);
                return Err(self.agent_refused(auth, e));
            }
        };
        let Some(hs) = g.hosts.get(&host) else {
            return Err(Error::Internal(format!("host {host} has no view")));
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let current = hs.generation;
        if have != current {
            let chain: Vec<_> = hs
                .deltas
                .iter()
                .filter(|(gen_, _, _)| *gen_ > have)
                .collect();
            let resumable = have != 0
                && have < current
                && chain.first().is_some_and(|(_, b, _)| *b == have)
                && chain.windows(2).all(|w| w[1].1 == w[0].0);
            let msgs: Vec<v1::WatchResponse> = if resumable {
                chain
                    .iter()
                    .map(|(gen_, base, d)| v1::WatchResponse {
                        generation: *gen_,
                        base_generation: *base,
                        update: Some(v1::watch_response::Update::Delta((**d).clone())),
                    })
                    .collect()
            } else {
                vec![v1::WatchResponse {
                    generation: current,
                    base_generation: 0,
                    update: Some(v1::watch_response::Update::Snapshot(gp::view_to_wire(
                        &hs.view,
                    ))),
                }]
            };
            for m in msgs {
                tx.try_send(m)
                    .map_err(|_| Error::Internal("watch buffer too small for catch-up".into()))?;
            }
        }
        let ws = g.watchers.entry(host).or_default();
        ws.retain(|w| !w.tx.is_closed());
        ws.push(Watcher {
            agent_id,
            tx,
            generation: current,
        });
        Ok(rx)
    }

    /// Records the generation an agent applied.
    pub fn ack(&self, auth: Option<&v1::AgentAuth>, generation: u64) -> Result<(), Error> {
        let mut g = self.lock();
        let now = now_ms();
        let (id, host) = match Self::authenticate(&mut g, auth) {
            Ok(agent) => (agent.id.clone(), agent.host.clone()),
            Err(e) => {
                drop(g);
                return Err(self.agent_refused(auth, e));
            }
        };
        let current = g.hosts.get(&host).map_or(0, |h| h.generation);
        if generation > current {
            return Err(Error::FailedPrecondition(format!(
                "generation {generation} was never sent to {host} (current generation {current})"
            )));
        }
        if let Some(a) = g.agents.get_mut(&id) {
            a.acked_generation = generation;
            a.last_seen_ms = now;
        }
        g.store.update_agent(&id, generation, now)
    }

    /// Every agent and its state.
    pub fn agents(&self) -> Vec<v1::AgentInfo> {
        let g = self.lock();
        let mut out: Vec<v1::AgentInfo> =
            g.agents
                .values()
                .map(|a| v1::AgentInfo {
                    agent_id: a.id.clone(),
                    host: a.host.clone(),
                    hostname: a.hostname.clone(),
                    connected: g.watchers.get(&a.host).is_some_and(|ws| {
                        ws.iter().any(|w| w.agent_id == a.id && !w.tx.is_closed())
                    }),
                    acked_generation: a.acked_generation,
                    current_generation: g.hosts.get(&a.host).map_or(0, |h| h.generation),
                    last_seen_unix_ms: a.last_seen_ms,
                    enrolled_unix_ms: a.enrolled_ms,
                    revoked_unix_ms: a.revoked_ms,
                })
                .collect();
        out.sort_by(|a, b| {
            (a.enrolled_unix_ms, &a.agent_id).cmp(&(b.enrolled_unix_ms, &b.agent_id))
        });
        out
    }

    /// The current generation of every host.
    pub fn generations(&self) -> BTreeMap<String, u64> {
        self.lock()
            .hosts
            .iter()
            .map(|(k, h)| (k.clone(), h.generation))
            .collect()
    }

    /// The current view of a host.
    pub fn view(&self, host: &str) -> Option<(u64, HostView)> {
        self.lock()
            .hosts
            .get(host)
            .map(|h| (h.generation, h.view.clone()))
    }

    /// Ends every watch stream (at shutdown).
    pub fn close_watchers(&self) {
        self.closing.send_replace(true);
        self.lock().watchers.clear();
    }

    // -------------------------------------------------------------- events / audit

    fn event_store(&self) -> MutexGuard<'_, EventStore> {
        self.event_store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an agent's events (as its own host's: see [`events`]) and passes them to
    /// followers; returns how many were stored. Events naming what the host's view does
    /// not know are dropped (recorded, aggregated, in the audit trail). Over the agent's
    /// quota, nothing is stored (RESOURCE_EXHAUSTED: send again later). Blocking
    /// (SQLite): call off the async workers. Never takes the state's lock for the
    /// database work.
    pub fn report_events(
        &self,
        agent_id: &str,
        mut events: Vec<v1::ConnectionEvent>,
    ) -> Result<u64, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        if events.len() > events::MAX_EVENTS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "{} events in one message (at most {})",
                events.len(),
                events::MAX_EVENTS_PER_MESSAGE
            )));
        }
        let now = now_ms();
        let (host, names) = {
            let mut g = self.lock();
            let Some(a) = g
                .agents
                .get_mut(agent_id)
                .filter(|a| a.revoked_ms.is_none())
            else {
                return Err(Error::Unauthenticated(format!(
                    "agent {} was revoked",
                    shown(agent_id)
                )));
            };
            a.last_seen_ms = now;
            let host = a.host.clone();
            let names: Vec<Arc<events::NameSet>> = g
                .hosts
                .get(&host)
                .map(|h| h.names.iter().cloned().collect())
                .unwrap_or_default();
            (host, names)
        };
        if !self.guard.take_events(agent_id, events.len(), now) {
            return Err(Error::ResourceExhausted(format!(
                "agent {} sends more events than its quota ({} a second): nothing of this \
                 message was stored; send it again later",
                shown(agent_id),
                self.guard.event_rate().per_sec
            )));
        }
        let sets: Vec<&events::NameSet> = names.iter().map(|n| &**n).collect();
        let mut rejected = 0u64;
        let mut first_reason = None;
        events.retain_mut(|ev| match events::check(ev, &host, &sets) {
            Ok(()) => true,
            Err(why) => {
                rejected += 1;
                first_reason.get_or_insert(why);
                false
            }
        });
        if let Some(why) = first_reason {
            self.refused(
                "agent_events_rejected",
                format!("agent:{agent_id}"),
                host.clone(),
                format!("{rejected} events not stored: {why}"),
            );
        }
        if events.is_empty() {
            return Ok(0);
        }
        let stored = self.event_store().insert_events(agent_id, now, events)?;
        let n = stored.len() as u64;
        for e in stored {
            let _ = self.events.send(e);
        }
        Ok(n)
    }

    /// Sets an agent's event quota (default: [`security::DEFAULT_EVENT_RATE`]).
    pub fn set_event_quota(&self, burst: f64, per_sec: f64) {
        self.guard.set_event_rate(limits::Rate { burst, per_sec });
    }

    pub fn query_events(
        &self,
        f: &v1::EventFilter,
        limit: u32,
    ) -> Result<Vec<v1::StoredEvent>, Error> {
        let limit = if limit == 0 {
            10_000
        } else {
            limit.min(10_000)
        };
        self.event_store().query_events(f, limit)
    }

    /// Events matching `filter` as they are stored, until shutdown or until the
    /// follower's credential stops being valid (revoked, expired, its user deleted:
    /// checked before every event and every second; then the stream ends with
    /// UNAUTHENTICATED). A follower that lags behind skips what it missed;
    /// `query_events` has it.
    pub fn follow_events(
        self: &Arc<Self>,
        filter: v1::EventFilter,
        who: crate::auth::Principal,
    ) -> mpsc::Receiver<Result<v1::StoredEvent, tonic::Status>> {
        let mut rx = self.events.subscribe();
        let mut closing = self.closing.subscribe();
        let (tx, out) = mpsc::channel(1024);
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let valid = |who: &crate::auth::Principal| {
                state
                    .upgrade()
                    .ok_or_else(|| tonic::Status::unavailable("the controller is stopping"))
                    .and_then(|s| s.recheck(who))
            };
            loop {
                tokio::select! {
                    _ = async {
                        loop {
                            let closed = *closing.borrow_and_update();
                            if closed || closing.changed().await.is_err() {
                                break;
                            }
                        }
                    } => break,
                    _ = tx.closed() => break,
                    _ = tick.tick() => {
                        if let Err(s) = valid(&who) {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                    }
                    r = rx.recv() => match r {
                        Ok(e) => {
                            if !event_matches(&filter, &e) {
                                continue;
                            }
                            if let Err(s) = valid(&who) {
                                let _ = tx.send(Err(s)).await;
                                break;
                            }
                            if tx.send(Ok(e)).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        out
    }

    /// Deletes events older than the retention.
    pub fn prune_events(&self) -> Result<usize, Error> {
        let before = now_ms() - i64::from(self.retention_days) * 86_400_000;
        self.event_store().prune_events(before)
    }

    // -------------------------------------------------------------- refusals

    /// Records a refusal in the audit trail, aggregated: the first of its kind in a
    /// window soon (within a second, and before any read of the trail), repeats as one
    /// record when the window ends (see [`limits::Refusals`]). Cheap: no database work
    /// on the refused call's path.
    pub fn refused(&self, action: &str, actor: String, target: String, detail: String) {
        let rec = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(
                limits::Refusal {
                    action: action.into(),
                    actor,
                    target,
                    detail,
                },
                now_ms(),
            );
        if let Some(r) = rec {
            self.pending_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }

    /// Writes the refusal records noted so far (blocking: SQLite).
    fn write_pending_refusals(&self) {
        let recs = std::mem::take(
            &mut *self
                .pending_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !recs.is_empty() {
            self.write_refusals(&recs);
        }
    }

    fn write_refusals(&self, recs: &[limits::Record]) {
        let mut g = self.lock();
        let revision = g.revision;
        for (t, r) in recs {
            let a = Audit {
                time_ms: *t,
                actor: r.actor.clone(),
                action: r.action.clone(),
                target: r.target.clone(),
                before: String::new(),
                after: r.detail.clone(),
                revision,
            };
            if let Err(e) = g.store.audit(&a) {
                eprintln!("gateway-controller: recording {}: {e}", r.action);
            }
        }
    }

    /// Writes the aggregate records of refusal windows that have ended (every pending
    /// one with `force`, e.g. at shutdown). Called every second by the server.
    pub fn flush_refusals(&self, force: bool) {
        self.write_pending_refusals();
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now_ms(), force);
        if !due.is_empty() {
            self.write_refusals(&due);
        }
    }

    pub fn audit_report(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: u32,
    ) -> Result<Vec<v1::AuditRecord>, Error> {
        let limit = if limit == 0 {
            10_000
        } else {
            limit.min(10_000)
        };
        self.write_pending_refusals();
        self.lock().store.audit_report(since, until, limit)
    }
}

/// Whether an event matches a filter (for followers; queries filter in SQL).
pub fn event_matches(f: &v1::EventFilter, e: &v1::StoredEvent) -> bool {
    let Some(ev) = &e.event else {
        return false;
    };
    let eq = |want: &Option<String>, have: Option<&String>| {
        want.as_ref().is_none_or(|w| have == Some(w))
    };
    f.since_unix_ms.is_none_or(|s| e.time_unix_ms >= s)
        && f.until_unix_ms.is_none_or(|u| e.time_unix_ms < u)
        && eq(&f.user, ev.user.as_ref())
        && eq(&f.device, ev.device.as_ref())
        && eq(&f.resource, ev.resource.as_ref())
        && eq(&f.event, Some(&ev.event))
        && eq(&f.verdict, Some(&ev.verdict))
        && eq(&f.host, Some(&ev.host))
}

/// `NoGrant` -> `no_grant`.
fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
