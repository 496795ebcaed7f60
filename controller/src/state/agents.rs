//! The agents aggregate: enrollment tokens, agents and their credentials, each host's
//! compiled view, generation and recent deltas, watch streams (catch-up, then the
//! deltas fanned out on every commit), acks, revocation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use gateway_proto as gp;
use policy_compiler::{self as pc, HostView};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::events::{NameSet, VIEWS_KEPT};
use super::policy::HostPlan;
use super::{Inner, State};
use crate::model::{
    AgentCredential, AgentInfo, AuditEntry, Enrollment, EnrollmentToken, ViewDelta, ViewUpdate,
    Watch, WatchUpdate,
};
use crate::store::AgentRow;
use crate::store::agents::Presence;
use crate::{Error, hash_secret, now_ms, peer_name, shown, try_random_hex};

/// A WireGuard public key from a request: `INVALID_ARGUMENT` naming `field` when it is
/// empty or not a key.
fn parse_key(s: &str, field: &str) -> Result<pc::WgKey, Error> {
    if s.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "missing `{field}`: the agent's WireGuard public key (32 bytes, standard base64, \
             as `wg pubkey` prints it) is required"
        )));
    }
    gp::key_from_wire("public_key", s).map_err(|e| {
        Error::InvalidArgument(format!(
            "invalid `{field}` `{}`: {e}",
            shown(&s.chars().take(64).collect::<String>())
        ))
    })
}

/// How recent another controller's record of an agent's stream must be for the agent to
/// count as connected there (it records every 5 s).
pub const PRESENCE_FRESH_MS: i64 = 15_000;

/// Updates buffered per watching agent; an agent that falls this far behind is
/// disconnected and resumes from its generation when it reconnects.
pub const WATCH_BUFFER: usize = 256;

pub(super) struct HostState {
    pub(super) generation: u64,
    pub(super) view: Arc<HostView>,
    /// (generation, base, delta), oldest first, at most `DELTA_HISTORY`.
    pub(super) deltas: VecDeque<(u64, u64, ViewDelta)>,
    /// The names of the last few views, newest last (for checking reported events).
    pub(super) names: VecDeque<Arc<NameSet>>,
}

impl HostState {
    pub(super) fn new(generation: u64, view: Arc<HostView>) -> HostState {
        let mut names = VecDeque::new();
        names.push_back(Arc::new(NameSet::of(&view)));
        HostState {
            generation,
            view,
            deltas: VecDeque::new(),
            names,
        }
    }

    pub(super) fn set_view(&mut self, generation: u64, view: Arc<HostView>) {
        self.names.push_back(Arc::new(NameSet::of(&view)));
        while self.names.len() > VIEWS_KEPT {
            self.names.pop_front();
        }
        self.generation = generation;
        self.view = view;
    }
}

pub(super) struct Watcher {
    pub(super) agent_id: String,
    pub(super) tx: mpsc::Sender<WatchUpdate>,
    pub(super) generation: u64,
}

impl State {
    /// A one-time enrollment token for `host` (`connector:NAME` / `device:NAME`).
    pub fn create_token(
        &self,
        host: &str,
        ttl_seconds: u64,
        actor: &str,
    ) -> Result<EnrollmentToken, Error> {
        self.retrying(|| {
            let h = crate::names::host(host)?;
            let token = format!("zt-enroll-{}", try_random_hex(24)?);
            let now = now_ms();
            const MAX_TOKEN_TTL_SECS: u64 = 365 * 86_400;
            if ttl_seconds > MAX_TOKEN_TTL_SECS {
                return Err(Error::InvalidArgument(format!(
                    "ttl_seconds {ttl_seconds}: an enrollment token is valid at most 365 days \
                     ({MAX_TOKEN_TTL_SECS} seconds); give a shorter lifetime"
                )));
            }
            let ttl = if ttl_seconds == 0 { 3600 } else { ttl_seconds };
            let expires = now + ttl as i64 * 1000;
            let mut g = self.lock_writing()?;
            let audit = AuditEntry {
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
            info!(
                host,
                actor,
                expires = %pc::format_rfc3339(expires / 1000),
                "enrollment token created"
            );
            // A host the policy does not name yet starts with an empty view.
            if !g.hosts.contains_key(host) {
                let view = gp::empty_view(&h, now / 1000);
                let plan = HostPlan {
                    host: host.to_string(),
                    base: 0,
                    generation: 1,
                    delta: ViewDelta::between(&view, &view),
                    view: Arc::new(view),
                };
                let rev = g.revision;
                self.commit(&mut g, None, rev, &[plan], &[])?;
            }
            Ok(EnrollmentToken {
                token,
                host: host.to_string(),
                expires_ms: expires,
            })
        })
    }

    /// Exchanges a token for an agent identity. With `expected_host` (the host the
    /// agent is configured as), a token for another host is refused and stays unused.
    /// `public_key` is the agent's WireGuard key (base64), empty for an agent without a
    /// tunnel; the enrollment and the views of the host's peers that now carry the key
    /// are one commit.
    pub fn enroll(
        &self,
        token: &str,
        hostname: &str,
        expected_host: Option<&str>,
        public_key: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Enrollment, Error> {
        self.retrying(|| {
            if let Some(why) = crate::names::problem(hostname, 255).filter(|_| !hostname.is_empty())
            {
                return Err(Error::InvalidArgument(format!(
                    "invalid `hostname` `{}`: {why}",
                    shown(hostname)
                )));
            }
            if let Some(h) = expected_host {
                crate::names::host(h)?;
            }
            let key = if public_key.is_empty() {
                None
            } else {
                Some(parse_key(public_key, "EnrollRequest.public_key")?)
            };
            let refused = |detail: &str| {
                debug!(peer = %peer_name(peer), reason = detail, "enrollment refused");
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
            let mut g = self.lock_writing()?;
            let rev = g.revision;
            let host = match g
                .store
                .token_host(&hash_secret(token), now, expected_host)?
            {
                Ok(h) => h,
                Err(crate::store::Enrolled::Unknown) => {
                    drop(g);
                    refused("unknown, used or expired token");
                    return Err(Error::Unauthenticated(
                        "enrollment token unknown, used or expired".into(),
                    ));
                }
                Err(crate::store::Enrolled::OtherHost) => {
                    drop(g);
                    refused("token for another host");
                    return Err(Error::FailedPrecondition(format!(
                        "this token enrolls another host than {}; it was not used",
                        expected_host.map(shown).unwrap_or_default()
                    )));
                }
            };
            // The key is checked before the token is used: a refused key leaves it unused.
            if let Some(key) = &key {
                Self::key_free(&g, key, &host, None)?;
            }
            let row = AgentRow {
                id: id.clone(),
                host: host.clone(),
                hostname: hostname.to_string(),
                credential_hash: hash_secret(&credential),
                enrolled_ms: now,
                acked_generation: 0,
                acked_ms: 0,
                last_seen_ms: now,
                revoked_ms: None,
                public_key: key.map(|k| k.to_string()).unwrap_or_default(),
            };
            let audit = AuditEntry {
                time_ms: now,
                actor: format!("agent:{id}"),
                action: "enroll_agent".into(),
                target: host.clone(),
                before: String::new(),
                after: match &key {
                    Some(key) => format!("agent {id} ({}), public key {key}", row.hostname),
                    None => format!("agent {id} ({}), no tunnel key", row.hostname),
                },
                revision: rev,
            };
            // The new key is in its peers' views in the same commit as the agent.
            g.agents.insert(id.clone(), row.clone());
            let change = crate::store::AgentChange::Enroll {
                token_hash: &hash_secret(token),
                now_ms: now,
                agent: &row,
            };
            if let Err(e) = self.commit_agent_change(&mut g, change, audit) {
                g.agents.remove(&id);
                return Err(e);
            }
            let host = gp::parse_host(&row.host).map_err(|e| Error::Internal(e.to_string()))?;
            info!(
                agent = %row.id,
                host = %row.host,
                hostname = %shown(&row.hostname),
                peer = %peer_name(peer),
                "agent enrolled"
            );
            Ok(Enrollment {
                agent_id: id,
                host,
                credential,
            })
        })
    }

    fn authenticate<'g>(
        g: &'g mut Inner,
        auth: Option<&AgentCredential>,
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
    pub(super) fn agent_refused(&self, auth: Option<&AgentCredential>, e: Error) -> Error {
        let who = auth.map_or_else(
            || "agent:(none)".to_string(),
            |a| format!("agent:{}", shown(&a.agent_id)),
        );
        self.refused("agent_auth_failure", who, "agent".into(), e.to_string());
        e
    }

    /// Checks an agent's credentials; returns its id and host.
    pub fn check_agent(&self, auth: Option<&AgentCredential>) -> Result<(String, String), Error> {
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
    pub fn watch(&self, auth: Option<&AgentCredential>, have: u64) -> Result<Watch, Error> {
        // An agent enrolled, or a change committed, through another controller a moment
        // ago is known here.
        let mut g = self.lock_fresh();
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
        let mut catch_up = "none";
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
            let msgs: Vec<WatchUpdate> = if resumable {
                chain
                    .iter()
                    .map(|(gen_, base, d)| WatchUpdate {
                        generation: *gen_,
                        base_generation: *base,
                        update: ViewUpdate::Delta(d.clone()),
                    })
                    .collect()
            } else {
                vec![WatchUpdate {
                    generation: current,
                    base_generation: 0,
                    update: ViewUpdate::Snapshot(hs.view.clone()),
                }]
            };
            catch_up = if resumable { "deltas" } else { "snapshot" };
            for m in msgs {
                tx.try_send(m)
                    .map_err(|_| Error::Internal("watch buffer too small for catch-up".into()))?;
            }
        }
        info!(
            agent = %agent_id,
            host = %host,
            from_generation = have,
            generation = current,
            catch_up,
            "agent connected"
        );
        let ws = g.watchers.entry(host.clone()).or_default();
        ws.retain(|w| !w.tx.is_closed());
        ws.push(Watcher {
            agent_id: agent_id.clone(),
            tx,
            generation: current,
        });
        Ok(Watch {
            agent_id,
            host,
            generation: current,
            updates: rx,
        })
    }

    /// Records the generation an agent applied.
    pub fn ack(&self, auth: Option<&AgentCredential>, generation: u64) -> Result<(), Error> {
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
            if a.acked_generation != generation {
                a.acked_ms = now;
            }
            a.acked_generation = generation;
            a.last_seen_ms = now;
        }
        debug!(agent = %id, host = %host, generation, "generation acknowledged");
        // Written with the others' within a second ([`State::flush_acks`]).
        g.acks.insert(id, (generation, now));
        Ok(())
    }

    /// Writes the acknowledgements received since the last call and, with `heartbeat`,
    /// the presence of every agent streaming from this controller (so that the other
    /// controllers of the database can say it is connected, and where): one transaction
    /// on the events' connection, without the state's lock; returns how many agents.
    /// Called every second (heartbeat every 5 s) and at shutdown. What a failed write
    /// held is kept for the next call.
    pub fn flush_acks(&self, heartbeat: bool) -> Result<usize, Error> {
        let now = now_ms();
        let me = self.instance();
        let (pending, rows) = {
            let mut g = self.lock();
            let pending = std::mem::take(&mut g.acks);
            let streaming: std::collections::HashSet<&str> = g
                .watchers
                .values()
                .flatten()
                .filter(|w| !w.tx.is_closed())
                .map(|w| w.agent_id.as_str())
                .collect();
            let mut rows: BTreeMap<String, Presence> = BTreeMap::new();
            for (id, &(generation, seen)) in &pending {
                let on = if streaming.contains(id.as_str()) {
                    me.clone()
                } else {
                    String::new()
                };
                rows.insert(id.clone(), (generation, seen, on));
            }
            if heartbeat {
                for id in &streaming {
                    if let Some(a) = g.agents.get(*id) {
                        rows.insert(a.id.clone(), (a.acked_generation, now, me.clone()));
                    }
                }
            }
            (pending, rows.into_iter().collect::<Vec<_>>())
        };
        if rows.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self
            .event_store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_presence(&rows)
        {
            let mut g = self.lock();
            for (id, v) in pending {
                g.acks.entry(id).or_insert(v);
            }
            return Err(e);
        }
        Ok(rows.len())
    }

    /// Every agent and its state: connected when its stream is on this controller, or
    /// when another controller of the database recorded it within [`PRESENCE_FRESH_MS`].
    pub fn agents(&self) -> Vec<AgentInfo> {
        let g = self.lock();
        let me = self.instance();
        let now = now_ms();
        // What the other controllers recorded (none when the database does not answer).
        let stored = g.store.presence().unwrap_or_default();
        let mut out: Vec<AgentInfo> =
            g.agents
                .values()
                .map(|a| {
                    let here = g.watchers.get(&a.host).is_some_and(|ws| {
                        ws.iter().any(|w| w.agent_id == a.id && !w.tx.is_closed())
                    });
                    let ((acked, seen, on), stored_acked_ms) =
                        stored.get(&a.id).cloned().unwrap_or_default();
                    // When the generation it is at was acknowledged: from whichever
                    // controller saw the newer acknowledgement.
                    let acked_ms = if acked > a.acked_generation {
                        stored_acked_ms
                    } else if acked == a.acked_generation {
                        a.acked_ms.max(stored_acked_ms)
                    } else {
                        a.acked_ms
                    };
                    let elsewhere =
                        !here && !on.is_empty() && on != me && now - seen < PRESENCE_FRESH_MS;
                    AgentInfo {
                        agent_id: a.id.clone(),
                        host: a.host.clone(),
                        hostname: a.hostname.clone(),
                        connected: here || elsewhere,
                        controller: if here {
                            me.clone()
                        } else if elsewhere {
                            on
                        } else {
                            String::new()
                        },
                        acked_generation: a.acked_generation.max(acked),
                        acked_ms,
                        current_generation: g.hosts.get(&a.host).map_or(0, |h| h.generation),
                        last_seen_ms: a.last_seen_ms.max(seen),
                        enrolled_ms: a.enrolled_ms,
                        revoked_ms: a.revoked_ms,
                        public_key: a.public_key.clone(),
                    }
                })
                .collect();
        out.sort_by(|a, b| (a.enrolled_ms, &a.agent_id).cmp(&(b.enrolled_ms, &b.agent_id)));
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
            .map(|h| (h.generation, (*h.view).clone()))
    }

    /// Ends every watch stream (at shutdown).
    pub fn close_watchers(&self) {
        self.closing.send_replace(true);
        self.lock().watchers.clear();
    }

    /// Revokes an agent: its credential stops working and its watch streams end.
    pub fn revoke_agent(&self, id: &str, actor: &str) -> Result<(), Error> {
        self.retrying(|| {
            let now = now_ms();
            let mut g = self.lock_writing()?;
            let Some(a) = g.agents.get(id) else {
                return Err(Error::NotFound(format!("no agent `{}`", shown(id))));
            };
            if a.revoked_ms.is_some() {
                return Ok(());
            }
            let mut rec = self.audit_now(
                actor,
                "revoke_agent",
                &a.host,
                &format!("agent {} ({})", a.id, a.hostname),
                "revoked",
            );
            rec.revision = g.revision;
            // Its key leaves its peers' views in the same commit.
            if let Some(a) = g.agents.get_mut(id) {
                a.revoked_ms = Some(now);
            }
            let had_key = g.agents.get(id).is_some_and(|a| !a.public_key.is_empty());
            let change = crate::store::AgentChange::Revoke {
                id,
                now_ms: now,
                had_key,
            };
            if let Err(e) = self.commit_agent_change(&mut g, change, rec.clone()) {
                if let Some(a) = g.agents.get_mut(id) {
                    a.revoked_ms = None;
                }
                return Err(e);
            }
            info!(agent = id, host = %rec.target, actor, "agent revoked");
            // Dropping the senders ends the streams.
            for ws in g.watchers.values_mut() {
                ws.retain(|w| w.agent_id != id);
            }
            Ok(())
        })
    }

    /// Replaces an agent's WireGuard key. The old key stops at once: the views of the
    /// host's peers change in the same commit (old key removed, new key added, one delta
    /// each). Returns the generation of the agent's host after the change.
    pub fn rotate_key(
        &self,
        auth: Option<&AgentCredential>,
        public_key: &str,
    ) -> Result<u64, Error> {
        self.retrying(|| {
            let mut g = self.lock_writing()?;
            let now = now_ms();
            let (id, host, old) = match Self::authenticate(&mut g, auth) {
                Ok(a) => {
                    a.last_seen_ms = now;
                    (a.id.clone(), a.host.clone(), a.public_key.clone())
                }
                Err(e) => {
                    drop(g);
                    return Err(self.agent_refused(auth, e));
                }
            };
            let key = parse_key(public_key, "RotateKeyRequest.public_key")?;
            let generation = |g: &Inner| g.hosts.get(&host).map_or(0, |h| h.generation);
            if old == key.to_string() {
                return Ok(generation(&g));
            }
            Self::key_free(&g, &key, &host, Some(&id))?;
            let audit = AuditEntry {
                time_ms: now,
                actor: format!("agent:{id}"),
                action: "rotate_agent_key".into(),
                target: host.clone(),
                before: old.clone(),
                after: key.to_string(),
                revision: g.revision,
            };
            let new = key.to_string();
            if let Some(a) = g.agents.get_mut(&id) {
                a.public_key = new.clone();
            }
            let change = crate::store::AgentChange::SetKey {
                id: &id,
                public_key: &new,
            };
            if let Err(e) = self.commit_agent_change(&mut g, change, audit) {
                if let Some(a) = g.agents.get_mut(&id) {
                    a.public_key = old;
                }
                return Err(e);
            }
            info!(agent = %id, host = %host, public_key = %key, "agent key rotated");
            Ok(generation(&g))
        })
    }

    /// Refuses a key another agent, or another host's policy entry, uses already.
    fn key_free(g: &Inner, key: &pc::WgKey, host: &str, me: Option<&str>) -> Result<(), Error> {
        let text = key.to_string();
        if let Some(other) = g
            .agents
            .values()
            .find(|a| a.revoked_ms.is_none() && a.public_key == text && Some(a.id.as_str()) != me)
        {
            return Err(Error::InvalidArgument(format!(
                "invalid `public_key`: agent {} of {} uses this key already; every agent needs its own WireGuard key",
                other.id, other.host
            )));
        }
        if let Some((owner, what)) = g.policy.key_owner(key)
            && owner.is_none_or(|h| gp::host_name(&h) != host)
        {
            return Err(Error::InvalidArgument(format!(
                "invalid `public_key`: the policy gives this key to {what}; every host needs its own WireGuard key"
            )));
        }
        Ok(())
    }

    /// Commits a change of the agents with the views it changes (every host is
    /// recompiled with the agents' keys as they are now in `g`) and its audit record,
    /// and fans the deltas out.
    fn commit_agent_change(
        &self,
        g: &mut Inner,
        change: crate::store::AgentChange<'_>,
        audit: AuditEntry,
    ) -> Result<(), Error> {
        // A policy that did not load has no views to recompile (see `refresh`); an agent
        // without a key is in no view.
        let plans = if g.broken.is_some() || !change.changes_keys() {
            Vec::new()
        } else {
            let policy = g.policy.clone();
            self.plan_hosts(g, &policy, crate::now_unix())
        };
        let rev = g.revision;
        self.commit_with(g, None, rev, &plans, &[audit], Some(&change), None)
    }

    /// Sends a committed host change to the watchers of that host (only them).
    pub(super) fn fan_out(g: &mut Inner, p: &HostPlan) {
        if let Some(ws) = g.watchers.get_mut(&p.host) {
            let msg = WatchUpdate {
                generation: p.generation,
                base_generation: p.base,
                update: if p.base == 0 {
                    ViewUpdate::Snapshot(p.view.clone())
                } else {
                    ViewUpdate::Delta(p.delta.clone())
                },
            };
            ws.retain_mut(|w| {
                if w.generation != p.base && p.base != 0 {
                    debug!(
                        agent = %w.agent_id,
                        host = %p.host,
                        at = w.generation,
                        base = p.base,
                        "watch stream out of step: ended (the agent resumes)"
                    );
                    return false;
                }
                match w.tx.try_send(msg.clone()) {
                    Ok(()) => {
                        w.generation = p.generation;
                        true
                    }
                    // Full: disconnect; the agent resumes from its generation.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(
                            agent = %w.agent_id,
                            host = %p.host,
                            generation = w.generation,
                            "agent fell behind: its watch stream ends (it resumes when it \
                             reconnects)"
                        );
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
    }
}
