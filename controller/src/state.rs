//! The controller's state and every operation on it, by aggregate:
//!
//! * `policy`: the objects, apply/plan/revisions, compiling every host, and
//!   (`policy::explain`) explain and test access;
//! * `agents`: enrollment tokens, agents, each host's view and generations, watch
//!   streams (catch-up, fan-out of deltas), acks, revocation;
//! * `events`: connection events reported by agents (checked against their host's
//!   view), queries, followers, retention;
//! * `audit`: refusals aggregated into the audit trail, the trail, its verification
//!   and head;
//! * `security`: API keys, admin users, sessions, logins and their bounds
//!   ([`limits`]).
//!
//! Every operation takes and returns the domain types of [`crate::model`]; the wire
//! types stay in [`crate::service`] and [`crate::wire`].
//!
//! One mutex guards the policy, the hosts' views, the agents, their watchers and the
//! store, so a change is validated, committed and fanned out as one step, and a
//! `Watch` registers at a well-defined generation (no update can slip between its
//! catch-up and its registration).
//!
//! Reads of the policy (GetPolicy, GetObject, ListObjects, Explain, TestAccess) take a
//! snapshot swapped in after each commit and never wait for a change in progress.
//! Connection events have their own database connection ([`EventStore`]): ingestion and
//! queries never take the state's lock. Admin credentials have their own lock, taken
//! after the state's when both are needed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use policy_compiler::Policy;
use tokio::sync::broadcast;

use crate::keys::Keys;
use crate::model::EventRecord;
use crate::objects::Objects;
use crate::store::{AgentRow, Db, EventStore, Store};
use crate::{Error, now_unix};

mod agents;
mod audit;
mod events;
pub mod limits;
mod policy;
mod security;
mod sync;

pub use crate::model::ChangeOpts;
pub use agents::WATCH_BUFFER;
use agents::{HostState, Watcher};
pub use audit::REFUSAL_WINDOW_MS;
use audit::{REFUSAL_KINDS, REFUSALS_IMMEDIATE};
use policy::{Snapshot, diag_text, next_expiry, parse_policy};
pub use security::{
    DEFAULT_KEY_TTL_SECS, DEFAULT_SESSION_TTL_SECS, LOGIN_WINDOW_MS, LoginLimits,
    MAX_LOGIN_FAILURES, MIN_PASSWORD_LEN,
};

/// How to open the state.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connection events older than this are deleted.
    pub retention_days: u32,
    /// The key file ([`crate::keys`]); default: `controller.key` next to a SQLite
    /// database (required for PostgreSQL). Created when missing, unless the database was
    /// keyed already.
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

/// What the state's lock guards (see the module docs).
struct Inner {
    /// The database, for every aggregate but the events.
    store: Store,
    // The policy aggregate.
    objects: Objects,
    revision: u64,
    /// The parsed policy (shared with the published snapshot).
    policy: Arc<Policy>,
    /// The text GetPolicy gives at `revision`, when the last commit made it (the
    /// revision's kept text): the next published snapshot starts with it.
    exported: Option<(u64, String)>,
    /// Why the stored policy did not load, when it did not: the controller serves what
    /// it has (the stored views, reads) and refuses changes other than a whole new
    /// policy (ApplyPolicy), which repairs it.
    broken: Option<String>,
    /// The next instant (unix seconds) a grant expires: views change then.
    next_expiry: Option<i64>,
    // The agents aggregate: each host's view, generation and deltas; the agents; the
    // open watch streams of each host.
    hosts: BTreeMap<String, HostState>,
    agents: HashMap<String, AgentRow>,
    watchers: HashMap<String, Vec<Watcher>>,
    /// Acknowledgements not written yet: agent id -> (generation, when).
    acks: HashMap<String, (u64, i64)>,
}

/// The controller state (see the module docs).
pub struct State {
    inner: Mutex<Inner>,
    snapshot: RwLock<Arc<Snapshot>>,
    events: broadcast::Sender<EventRecord>,
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
    /// Whether this controller runs the singleton jobs ([`State::lead_singletons`]).
    leader: crate::store::Leader,
    /// The database (for the listener of other controllers' changes).
    db: Db,
    /// How this controller is named to the others (its listen address; see
    /// [`State::set_instance`]).
    instance: Mutex<String>,
    /// Refusal records not written yet: written by the server's one-second tick (and
    /// before any read of the audit trail), never on the path of the refused call.
    pending_refusals: Mutex<Vec<limits::Record>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

impl State {
    /// Whether this controller runs the jobs that must run once per database, not once
    /// per controller: expiry recompiles, event retention and the audit head export
    /// (always on SQLite; on PostgreSQL the holder of an advisory lock: [`crate::store::Leader`]).
    /// Blocking: call it where the store may be called.
    pub fn lead_singletons(&self) -> bool {
        self.leader.lead()
    }

    /// Names this controller to the others of its database (its listen address): what
    /// `ListAgents` says an agent streaming from it is connected to.
    pub fn set_instance(&self, name: &str) {
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    fn instance(&self) -> String {
        self.instance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The database this state is kept in.
    pub fn database(&self) -> &Db {
        &self.db
    }

    /// Opens the store (keys next to the database, see [`Options`]) and loads the
    /// state it holds.
    pub fn open(db: impl Into<Db>, retention_days: u32) -> Result<State, Error> {
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
    pub fn keys_for(db: impl Into<Db>, key_file: &Path) -> Result<Keys, Error> {
        let db = db.into();
        if key_file.exists() {
            return Keys::load(key_file);
        }
        if let Some(fp) = crate::store::key_fingerprint(&db)? {
            return Err(Error::Internal(format!(
                "the key file {} is missing, and {} was keyed (key fingerprint {fp}): \
                 without its key the audit trail cannot be verified nor TOTP codes checked; \
                 restore the key file or give it with --key-file",
                key_file.display(),
                db
            )));
        }
        Keys::create(key_file)
    }

    /// Opens the store and loads the state it holds. A stored policy that does not load
    /// does not stop the controller: it starts with the stored views, serves reads and
    /// agents, and refuses changes (saying why) until a valid policy is applied.
    pub fn open_with(db: impl Into<Db>, opts: &Options) -> Result<State, Error> {
        let db = db.into();
        let key_file = match (&opts.key_file, &db) {
            (Some(k), _) => k.clone(),
            (None, Db::Sqlite(path)) => crate::keys::default_key_file(path),
            (None, Db::Postgres(url)) => {
                return Err(Error::InvalidArgument(format!(
                    "--key-file is required with a PostgreSQL database ({url}): there is no \
                     folder next to it to keep the key in; give a path on this host (created, \
                     mode 0600, when missing) and give every controller on {url} the same file"
                )));
            }
        };
        let keys = Arc::new(State::keys_for(&db, &key_file)?);
        let mut store = Store::open(&db, keys.clone())?;
        let event_store = EventStore::open(&db)?;
        let loaded = store.load()?;
        let now = now_unix();
        let (policy, broken) = stored_policy(&loaded.objects, loaded.revision, now);
        let mut hosts = BTreeMap::new();
        for h in loaded.hosts {
            hosts.insert(h.host, HostState::new(h.generation, Arc::new(h.view)));
        }
        for (host, g, b, d) in loaded.deltas {
            if let Some(hs) = hosts.get_mut(&host) {
                hs.deltas.push_back((g, b, d));
            }
        }
        let agents = loaded
            .agents
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        let creds = security::Creds::new(loaded.api_keys, loaded.users);
        let (events, _) = broadcast::channel(4096);
        let applied = store.applied_text()?.map(Arc::new);
        let policy = Arc::new(policy);
        let snapshot = Snapshot::new(
            loaded.objects.clone(),
            applied,
            loaded.revision,
            broken.clone(),
            policy.clone(),
        );
        store.seq = loaded.seq;
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
                exported: None,
                broken,
                hosts,
                agents,
                watchers: HashMap::new(),
                acks: HashMap::new(),
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
            leader: crate::store::Leader::new(&db),
            db,
            instance: Mutex::new(String::new()),
        };
        // A database from before revisions were kept keeps the current one's text now.
        state.keep_current_revision()?;
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
}

/// The policy of stored objects: `(policy, None)`, or an empty stand-in and why the
/// stored policy does not load (see [`Inner::broken`]).
fn stored_policy(objects: &Objects, revision: u64, now: i64) -> (Policy, Option<String>) {
    if objects.list.is_empty() {
        return (Policy::default(), None);
    }
    match parse_policy(&objects.render(), "policy.toml", now) {
        Ok(p) => (p.policy, None),
        Err(d) => {
            let why = format!(
                "the stored policy (revision {revision}) does not load: {}",
                diag_text(&d)
            );
            tracing::warn!(
                revision,
                problem = %why,
                "the stored policy does not load: serving the last compiled views and \
                 reads only; changes are refused until a valid policy is applied \
                 (gatewayctl apply)"
            );
            (Policy::default(), Some(why))
        }
    }
}
