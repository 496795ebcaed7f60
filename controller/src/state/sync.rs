//! Several controllers on one database (PostgreSQL): each keeps the state in memory and
//! catches up with what the others committed.
//!
//! Every committed change adds one to the database's change sequence ([`Store::seq`]);
//! on PostgreSQL its commit also notifies [`crate::store::CHANGES_CHANNEL`]. A
//! controller syncs ([`State::sync`]) when notified, once a second whatever happens
//! (a notification sent while its listener was disconnected is lost, the sequence is
//! not), before every change it makes, and before an agent's watch starts. A sync that
//! finds the sequence where this controller left it costs one query. Otherwise it loads
//! what the sequence does not say: the policy when its revision moved, every agent, the
//! generation of every host (then the view and the missed deltas of each host whose
//! generation moved), and the credentials; the deltas go to this controller's watchers
//! as if it had committed them, a host whose missed deltas are no longer stored gets its
//! view as a snapshot, and an agent revoked elsewhere loses its watch streams here.
//!
//! A change is made under the database's write lock (an advisory lock, so the
//! controllers of one database make their changes one at a time: [`State::lock_writing`])
//! from the state synced after taking it, and committed only if the sequence did not
//! move in between (a connection lost and reopened loses the lock; the check does not
//! depend on it). When it moved, nothing is written and the change is made again from
//! the newer state ([`State::retrying`], a few times, then ABORTED).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use tracing::{debug, info};

use super::agents::HostState;
use super::policy::{HostPlan, next_expiry};
use super::{Inner, State, stored_policy};
use crate::model::ViewDelta;
use crate::store::DELTA_HISTORY;
use crate::{Error, now_unix};

/// The state's lock and, on PostgreSQL, the database's write lock ([`State::lock_writing`]).
pub(super) struct Writing<'a> {
    g: MutexGuard<'a, Inner>,
    locked: bool,
}

impl std::ops::Deref for Writing<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.g
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.g
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.locked
            && let Err(e) = self.g.store.write_unlock()
        {
            debug!(error = %e, "releasing the database's write lock failed (a closed connection released it)");
        }
    }
}

/// How many times a change is made again after another controller's commit got in
/// between.
const ATTEMPTS: usize = 4;

impl State {
    /// Catches up with the changes other controllers committed to the database (see the
    /// module docs); true when there were any. Blocking.
    pub fn sync(&self) -> Result<bool, Error> {
        let mut g = self.lock();
        self.sync_locked(&mut g)
    }

    /// The state's lock, synced with the database.
    pub(super) fn lock_synced(&self) -> Result<MutexGuard<'_, Inner>, Error> {
        let mut g = self.lock();
        self.sync_locked(&mut g)?;
        Ok(g)
    }

    /// The state's lock for making a change: on PostgreSQL the database's write lock
    /// too ([`crate::store::Store::write_lock`], released with the guard), then synced.
    pub(super) fn lock_writing(&self) -> Result<Writing<'_>, Error> {
        let g = self.lock();
        let locked = g.store.write_lock()?;
        let mut w = Writing { g, locked };
        self.sync_locked(&mut w.g)?;
        Ok(w)
    }

    /// The state's lock, synced with the database when it answers (a controller whose
    /// database is down still serves what it holds).
    pub(super) fn lock_fresh(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.lock();
        if let Err(e) = self.sync_locked(&mut g) {
            debug!(error = %e, "catching up with the database failed: serving what this controller holds");
        }
        g
    }

    /// Runs the change `f` (which takes [`State::lock_writing`]) again when another
    /// controller committed in between (`Error::Aborted`), at most [`ATTEMPTS`] times.
    pub(super) fn retrying<T>(&self, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut n = 1;
        loop {
            match f() {
                Err(Error::Aborted(m)) if n < ATTEMPTS => {
                    debug!(attempt = n, reason = %m, "a change met another controller's: made again");
                    n += 1;
                }
                other => return other,
            }
        }
    }

    pub(super) fn sync_locked(&self, g: &mut Inner) -> Result<bool, Error> {
        let stored = g.store.stored_seq()?;
        if stored == g.store.seq {
            return Ok(false);
        }
        // What is loaded below is at least as new as `stored`: a change committed while
        // it loads is loaded again (idempotently) at the next sync.
        let from = g.store.seq;
        let policy_changed = self.sync_policy(g)?;
        let revoked = Self::sync_agents(g)?;
        let hosts = self.sync_hosts(g)?;
        let (keys, users) = (g.store.api_keys()?, g.store.users()?);
        self.creds().reload(keys, users);
        g.store.seq = stored;
        info!(
            from_change = from,
            to_change = stored,
            policy_changed,
            hosts_changed = hosts,
            agents_revoked = revoked,
            "caught up with changes committed by another controller"
        );
        Ok(true)
    }

    /// Loads the policy when its stored revision is not this controller's.
    fn sync_policy(&self, g: &mut Inner) -> Result<bool, Error> {
        let (revision, objects) = g.store.objects()?;
        if revision == g.revision && objects == g.objects {
            return Ok(false);
        }
        let now = now_unix();
        let (policy, broken) = stored_policy(&objects, revision, now);
        g.next_expiry = if broken.is_some() {
            None
        } else {
            next_expiry(&policy, now)
        };
        g.objects = objects;
        g.revision = revision;
        g.policy = Arc::new(policy);
        g.broken = broken;
        let applied = g.store.applied_text()?.map(Arc::new);
        self.publish_with(g, applied);
        Ok(true)
    }

    /// Loads every agent (keeping the later of the two last-seen times); ends the watch
    /// streams of agents revoked elsewhere. Returns how many were.
    fn sync_agents(g: &mut Inner) -> Result<usize, Error> {
        let mut agents = HashMap::new();
        let mut revoked = Vec::new();
        for mut a in g.store.agents()? {
            if let Some(old) = g.agents.get(&a.id) {
                a.last_seen_ms = a.last_seen_ms.max(old.last_seen_ms);
                a.acked_generation = a.acked_generation.max(old.acked_generation);
                if old.revoked_ms.is_none() && a.revoked_ms.is_some() {
                    revoked.push(a.id.clone());
                }
            }
            agents.insert(a.id.clone(), a);
        }
        g.agents = agents;
        if !revoked.is_empty() {
            // Dropping the senders ends the streams.
            for ws in g.watchers.values_mut() {
                ws.retain(|w| !revoked.contains(&w.agent_id));
            }
        }
        Ok(revoked.len())
    }

    /// Loads the views the changes after this controller's sequence wrote, with their
    /// deltas (two queries), and sends the deltas to this controller's watchers. Returns
    /// how many hosts changed.
    fn sync_hosts(&self, g: &mut Inner) -> Result<usize, Error> {
        let since = g.store.seq;
        let rows = g.store.hosts_since(since)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut deltas: HashMap<String, Vec<(u64, u64, ViewDelta)>> = HashMap::new();
        for (host, generation, base, delta) in g.store.deltas_since(since)? {
            deltas
                .entry(host)
                .or_default()
                .push((generation, base, delta));
        }
        let mut changed = 0;
        for row in rows {
            let host = row.host;
            let mine = g.hosts.get(&host).map(|h| h.generation);
            if mine.is_some_and(|m| m >= row.generation) {
                continue;
            }
            changed += 1;
            let view = Arc::new(row.view);
            // The missed deltas, in order, from this controller's generation to the view's.
            let missed: Vec<_> = deltas
                .remove(&host)
                .unwrap_or_default()
                .into_iter()
                .filter(|d| mine.is_some_and(|m| d.0 > m) && d.0 <= row.generation)
                .collect();
            let chained = mine.is_some_and(|m| {
                missed.first().is_some_and(|d| d.1 == m)
                    && missed.windows(2).all(|w| w[1].1 == w[0].0)
                    && missed.last().is_some_and(|d| d.0 == row.generation)
            });
            let plans: Vec<HostPlan> = if chained {
                missed
                    .into_iter()
                    .map(|(generation, base, delta)| HostPlan {
                        host: host.clone(),
                        base,
                        generation,
                        view: view.clone(),
                        delta,
                    })
                    .collect()
            } else {
                // The missed deltas are not all stored (or the host is new here): its
                // watchers get the view, and resuming agents the deltas still stored.
                vec![HostPlan {
                    host: host.clone(),
                    base: 0,
                    generation: row.generation,
                    view: view.clone(),
                    delta: ViewDelta::between(&view, &view),
                }]
            };
            let hs = g
                .hosts
                .entry(host.clone())
                .or_insert_with(|| HostState::new(0, view.clone()));
            if chained {
                for p in &plans {
                    hs.deltas.push_back((p.generation, p.base, p.delta.clone()));
                }
            } else {
                hs.deltas = g
                    .store
                    .host_deltas(&host, 0, row.generation)?
                    .into_iter()
                    .collect();
            }
            while hs.deltas.len() > DELTA_HISTORY as usize {
                hs.deltas.pop_front();
            }
            hs.set_view(row.generation, view);
            for p in &plans {
                Self::fan_out(g, p);
            }
        }
        Ok(changed)
    }
}
